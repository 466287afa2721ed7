"""What survives: `kill -9` under load, a full disk, and a graceful shutdown.

The crash and shutdown tests run `python -m mailgate serve --config FILE` as a real
process (signals and all) and read the queue back with `mailgate queue list/show`; the
disk-full test runs the server in a thread on a 3 MiB tmpfs, so it needs root (CI and
the developers' machines run the tests as root).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.delivery.local import LocalDelivery
from tests.support.fakemx import MX1, FakeMX, free_port_pair
from tests.support.live import LiveServer
from tests.support.smtpwire import DEAD_PORT, Wire, loopback_config, parse_delivered, wait_until

TIMEOUT = 30.0


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` different free ports: each socket stays bound until all are chosen, since a
    port given back can be handed out again at once (two nodes of a cluster once drew
    the same port, and one of them could not listen)."""
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]


def write_config(folder: Path, port: int, *, relayhost: str = f"[127.0.0.1]:{DEAD_PORT}",
                 **sections: dict[str, Any]) -> Path:
    """A TOML config: one MX listener, data in `folder`/data, nothing leaves loopback:
    outbound mail goes to `relayhost` (by default a dead port)."""
    lines = [
        'hostname = "localhost"',
        f'data_dir = "{folder / "data"}"',
        "[[listen]]",
        'role = "mx"',
        f'address = "127.0.0.1:{port}"',
        "[policy]",
        "sender_null_mx_check = false",
        "recipient_null_mx_check = false",
        "[dns]",
        f'nameservers = ["127.0.0.1:{DEAD_PORT}"]',
        "[web]",
        'address = ""',
    ]
    # As root, `serve` would drop to the mailgate user, which cannot enter pytest's
    # private temporary folders: these tests are about durability, not privileges.
    sections = {**sections, "delivery": {"relayhost": relayhost, **sections.get("delivery", {})}}
    if os.geteuid() == 0:
        sections = {**sections, "server": {"user": "root", **sections.get("server", {})}}
    # One process unless a test asks for more (the default is one per CPU): these tests
    # kill -9 the server, or count its connections to a sink, as one process's.
    sections = {**sections, "server": {"workers": 1, **sections.get("server", {})}}
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = folder / "mailgate.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Serve:
    """`mailgate serve --config FILE` as a child process."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailgate", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            wait_until(f"mailgate serve to greet on port {port}", self._greets, TIMEOUT, 0.05)
        except AssertionError as exc:
            self.kill()
            raise AssertionError(f"mailgate serve did not start ({exc}); its log:\n"
                                 f"{self.logs()}") from None

    def _greets(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"mailgate serve exited {self.proc.returncode}:\n"
                                 f"{self.logs()}")
        try:
            with Wire(self.port, timeout=2) as w:
                return w.greeting().startswith("220 ")
        except OSError:
            return False

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def mailgate(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "mailgate", *args], capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, f"mailgate {' '.join(args)}: {proc.stderr}"
    return proc


def queue_list(config: Path) -> dict[str, Any]:
    out = mailgate("queue", "list", "--all", "--config", str(config), "--format", "json",
                   "--limit", "100000")
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def queue_message_id(config: Path, qid: str) -> str | None:
    """The Message-ID of queue entry `qid`: from its headers while it is live, from its
    Maildir copy (whose trace field names the id) once delivered and its content gone."""
    out = mailgate("queue", "show", qid, "--config", str(config), "--format", "json")
    data = json.loads(out.stdout)
    if "headers" in data:
        return {k.lower(): v for k, v in data["headers"]}.get("message-id")
    for path in maildir_files(config.parent / "data"):
        got = parse_delivered(path.read_bytes())
        if got.queue_id == qid:
            return message_id(got.content)
    return None


def maildir_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "maildir").glob("*/*/new/*"))


def message_id(content: bytes) -> str | None:
    m = re.search(rb"^Message-ID: (<[^>]+>)\r$", content.split(b"\r\n\r\n", 1)[0], re.M)
    return m.group(1).decode() if m else None


def integrity(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


# --- a. kill -9 under load ------------------------------------------------------------

SENDERS = 10
OVERSIZE = 70 * 1024  # over [limits] message_size below: refused 552 after the data


@dataclasses.dataclass
class Outcomes:
    """What every sender saw, by Message-ID."""

    accepted: dict[str, str] = dataclasses.field(default_factory=dict)  # -> queue id
    content: dict[str, bytes] = dataclasses.field(default_factory=dict)
    refused: set[str] = dataclasses.field(default_factory=set)  # 5xx, or never sent
    unknown: set[str] = dataclasses.field(default_factory=set)  # lost during DATA
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def sender(port: int, n: int, out: Outcomes, stop: threading.Event) -> None:
    """One connection, messages back to back until the server dies (or `stop`)."""
    try:
        client = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
        client.ehlo(f"sender{n}.test")
    except (OSError, smtplib.SMTPException):
        return
    i = 0
    while not stop.is_set() and i < 2000:
        i += 1
        mid = f"<crash-{n}-{i}@durability.test>"
        big = i % 5 == 0
        body = (b"x" * 76 + b"\r\n") * (OVERSIZE // 78 if big else 20)
        content = (f"From: s{n}@example.org\r\nTo: r{n}@localhost\r\nMessage-ID: {mid}\r\n"
                   f"Subject: message {i} of sender {n}\r\n\r\n").encode() + body
        with out.lock:
            out.content[mid] = content
        try:
            code, _ = client.mail(f"s{n}@example.org")
            if code == 250:
                code, _ = client.rcpt(f"r{n}@localhost")
        except (OSError, smtplib.SMTPException):
            with out.lock:
                out.refused.add(mid)  # never got as far as DATA
            return
        if code != 250:
            with out.lock:
                out.refused.add(mid)
            return
        try:
            code, text = client.data(content)
        except (OSError, smtplib.SMTPException):
            with out.lock:
                out.unknown.add(mid)
            return
        with out.lock:
            if code == 250:
                out.accepted[mid] = text.decode().rsplit(" ", 1)[-1]
            else:
                assert code == 552 and big, (code, text)
                out.refused.add(mid)
        if code != 250:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.rset()


def due_and_unclaimed(db: Path) -> int:
    """Recipients the local worker could take now (claimed ones are due only later)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT count(*) FROM recipients WHERE state IN "
                           "('queued', 'deferred') AND due_at <= ?", (time.time(),)).fetchone()
    finally:
        conn.close()
    return int(row[0])


def test_kill_9_under_load_loses_no_accepted_message(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, limits={"message_size": "64KiB"})
    data = tmp_path / "data"
    out = Outcomes()
    stop = threading.Event()
    log = tmp_path / "serve.log"
    with Serve(config, port, log) as server:
        threads = [threading.Thread(target=sender, args=(port, n, out, stop))
                   for n in range(SENDERS)]
        for t in threads:
            t.start()
        try:
            wait_until("40 accepted messages", lambda: len(out.accepted) >= 40 or None,
                       TIMEOUT)
            os.kill(server.proc.pid, signal.SIGKILL)  # mid-load: sessions are in DATA
            server.proc.wait(TIMEOUT)
        finally:
            stop.set()
            for t in threads:
                t.join(TIMEOUT)
    assert server.proc.returncode == -signal.SIGKILL
    assert out.refused, "some oversized messages should have been refused"

    with Serve(config, port, log):
        db = data / "queue.db"
        wait_until("local delivery of everything due", lambda: due_and_unclaimed(db) == 0,
                   TIMEOUT)
        queue = queue_list(config)
    assert integrity(db) == ["ok"]

    in_queue = {m["id"] for m in queue["messages"]}
    delivered: dict[str, bytes] = {}
    for path in maildir_files(data):
        got = parse_delivered(path.read_bytes())
        mid = message_id(got.content)
        assert mid is not None, path
        assert got.content == out.content[mid], f"{path} is not the message that was sent"
        delivered[mid] = got.content
    # Zero lost: every 250 is in the queue (any state) or in a Maildir.
    lost = [(mid, qid) for mid, qid in out.accepted.items()
            if qid not in in_queue and mid not in delivered]
    assert not lost, f"accepted with 250 but gone after the crash: {lost}"
    # Nothing refused came in: not in a Maildir, and no queue entry holds it.
    assert not out.refused & set(delivered)
    accepted_ids = set(out.accepted.values())
    for qid in in_queue - accepted_ids:  # entries no client heard 250 for
        mid = queue_message_id(config, qid)
        assert mid in out.unknown, f"{qid} holds {mid}, which no client was told is queued"
    assert len(in_queue - accepted_ids) <= len(out.unknown)


def recipient_states(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {str(a): str(s) for a, s in conn.execute(
            "SELECT address, state FROM recipients")}
    finally:
        conn.close()


def test_kill_9_mid_delivery_resends_only_what_was_in_flight(tmp_path: Path) -> None:
    """Outbound mail after kill -9: what the dead process had claimed is delivered as
    soon as the server is back (not when the 15-minute claims run out), and what the
    next hop had already accepted is not sent again; only the message in flight at the
    moment of the kill may arrive twice."""
    port = free_port()
    mx_port = free_port_pair((MX1,))
    ehlo, in_flight = threading.Event(), threading.Event()
    mx = FakeMX(MX1, mx_port, ehlo_gate=ehlo).start()
    slow = "slow@remote.test"
    mx.stalling[slow] = in_flight  # no reply to its end of data until after the kill
    config = write_config(tmp_path, port, relayhost=f"[{MX1}]:{mx_port}")
    db = tmp_path / "data" / "queue.db"
    log = tmp_path / "serve.log"
    rcpts = [f"r{i}@remote.test" for i in range(30)] + [slow] + [
        f"r{i}@remote.test" for i in range(30, 45)]
    try:
        with Serve(config, port, log) as server:
            # Queued while the next hop does not answer EHLO, so most of it is claimed
            # together and goes over one connection once it does.
            with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
                for rcpt in rcpts:
                    code, text = client.sendmail(
                        "s@example.org", [rcpt],
                        f"Subject: for {rcpt}\r\n\r\nhello\r\n".encode()), ""
                    assert code == {}, (code, text)
            ehlo.set()

            def stalled_with_the_rest_recorded() -> bool:
                if slow not in mx.rcpts:
                    return False
                states = recipient_states(db)
                return sum(s == "delivered" for s in states.values()) == len(mx.received)

            wait_until("delivery to stall on one message, the ones before it recorded",
                       stalled_with_the_rest_recorded, TIMEOUT)
            delivered_before = len(mx.received)
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(TIMEOUT)
        assert 0 < delivered_before < len(rcpts), "the kill should come mid-delivery"
        in_flight.set()  # the dead connection's message completes at the next hop
        with Serve(config, port, log) as again:
            wait_until("every accepted message delivered within 30 s of the restart",
                       lambda: all(s == "delivered" for s in recipient_states(db).values()),
                       30.0)
        assert re.search(r"took back \d+ recipient\(s\) claimed by processes that ended",
                         again.logs()), again.logs()
        received = mx.all_rcpts()
        assert sorted(set(received)) == sorted(rcpts)
        duplicates = len(received) - len(set(received))
        assert duplicates <= 1, f"{duplicates} sent twice; only 1 was in flight"
    finally:
        in_flight.set()
        ehlo.set()
        mx.stop()


# --- b. disk full ---------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a 3 MiB tmpfs at {mnt} ({proc.stderr.strip()}): the "
                    "disk-full test needs root with CAP_SYS_ADMIN, as CI and the developers' "
                    "machines have. Run the tests as root.")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def grow(mnt: Path, size: str) -> None:
    """Make the tmpfs at mnt bigger, as an administrator adds space to a full disk."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True,
                   capture_output=True)


def recipient_state(db: Path, address: str) -> tuple[str, int | None] | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT state, last_code FROM recipients WHERE address = ?",
                           (address,)).fetchone()
    finally:
        conn.close()
    return None if row is None else (str(row[0]), row[1])


def send(w: Wire, rcpt: str, content: bytes) -> str:
    assert w.cmd("MAIL FROM:<filler@example.org>").startswith("250")
    assert w.cmd(f"RCPT TO:<{rcpt}>").startswith("250")
    assert w.cmd("DATA").startswith("354")
    w.send(content + b".\r\n")
    return w.reply(timeout=TIMEOUT)


def body(tag: str, size: int) -> bytes:
    head = f"Message-ID: <{tag}@full.test>\r\nSubject: {tag}\r\n\r\n".encode()
    line = (tag.encode() + b" " + b"y" * 70)[:70] + b"\r\n"
    return head + line * (size // len(line))


def fill(path: Path, leave: int) -> None:
    """Write a file that leaves `leave` bytes free on path's filesystem."""
    st = os.statvfs(path.parent)
    size = st.f_bavail * st.f_frsize - leave
    with path.open("wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * max(size, 0))  # short of space by a block or two is fine too


def test_disk_full_answers_452_and_keeps_what_it_accepted(
        tiny_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = loopback_config(tiny_disk / "data")
    # Retries after a failed Maildir write come quickly, so recovery shows in the test.
    config = dataclasses.replace(config, delivery=dataclasses.replace(
        config.delivery, retry_schedule=(0.2,)))
    monkeypatch.setattr(LocalDelivery, "POLL", 0.5)
    db = config.data_dir / "queue.db"
    ballast = tiny_disk / "ballast"
    ballast.write_bytes(b"\0" * 1024 * 1024)  # given back later, as "freeing space"
    sent: dict[str, bytes] = {}  # recipient -> content, for every 250
    with LiveServer(config) as srv, Wire(srv.port("mx")) as w:
        w.greeting()
        w.ehlo()
        # 1. Fill the disk: the queue and the Maildirs share it.
        reply = ""
        for i in range(200):
            rcpt = f"fill{i}@localhost"
            content = body(f"fill{i}", 60_000)
            reply = send(w, rcpt, content)
            if not reply.startswith("250"):
                break
            sent[rcpt] = content
        assert reply == "452 4.3.1 Insufficient system storage, try again later", reply
        assert len(sent) >= 3, "too few messages fitted on the disk to tell anything"
        # The session is still in step and the server answers.
        assert w.cmd("NOOP") == "250 2.0.0 Ok"
        assert w.cmd("RSET") == "250 2.0.0 Reset state"
        # Nothing is corrupt: the queue is sound, every file in a Maildir is complete and
        # no partial file is left, every accepted message is still in the queue.
        assert integrity(db) == ["ok"]
        check_maildirs(srv, sent, final=False)

        # 2. Free space: the messages left queued are delivered, mail is accepted again.
        # Local delivery may have fallen behind while the disk filled (it takes what is
        # due in batches): the queued messages' Maildir files need room of their own
        # before the next message has any, so the disk grows as well as losing ballast.
        ballast.unlink()
        grow(tiny_disk, "16m")
        content = body("after-free", 20_000)
        assert send(w, "after-free@localhost", content).startswith("250 2.0.0 Ok: queued as ")
        sent["after-free@localhost"] = content
        with contextlib.suppress(AssertionError):
            wait_until("every accepted message to be delivered",
                       lambda: all(recipient_state(db, r) == ("delivered", 250) for r in sent),
                       TIMEOUT)
        check_maildirs(srv, sent, final=True)

        # 3. A Maildir write that fails leaves the message deferred, then it is delivered.
        for path in maildir_files(config.data_dir):
            path.unlink()
        # The queue's copy takes the size and about 60 KB of pages (WAL frames for the
        # rows and indexes); recording the attempt later takes about 50 KB. Leave room for
        # the queue's copy and the record, not for the Maildir file as well. (Smaller
        # than the spool's in-memory buffer: a spool file would need room of its own.)
        size = 200_000
        fill(ballast, leave=size + 200_000)
        content = body("maildir-fails", size)
        assert send(w, "maildir-fails@localhost", content).startswith("250 2.0.0")
        wait_until("the Maildir write to fail and the message to be deferred",
                   lambda: recipient_state(db, "maildir-fails@localhost") == ("deferred", 451),
                   TIMEOUT)
        box = srv.maildir / "localhost" / "maildir-fails"
        assert not list(box.glob("*/*")), "a failed Maildir write must leave no file behind"
        ballast.unlink()
        wait_until("the deferred message to be delivered once there is space",
                   lambda: recipient_state(db, "maildir-fails@localhost") == ("delivered", 250),
                   TIMEOUT)
        (path,) = list((box / "new").glob("*"))
        assert parse_delivered(path.read_bytes()).content == content
        assert w.cmd("QUIT") == "221 2.0.0 Bye"
    assert integrity(db) == ["ok"]


def check_maildirs(srv: LiveServer, sent: dict[str, bytes], final: bool) -> None:
    """Every accepted message is in the queue; files in Maildirs are complete, and there
    is never a partial one in tmp/. With `final`, each was delivered exactly once."""
    db = srv.config.data_dir / "queue.db"
    problems = []
    for rcpt, content in sent.items():
        box = srv.maildir / "localhost" / rcpt.partition("@")[0]
        files = sorted((box / "new").glob("*")) if box.exists() else []
        state = recipient_state(db, rcpt)
        if state is None:
            problems.append(f"{rcpt}: not in the queue")
        elif final and (state != ("delivered", 250) or len(files) != 1):
            problems.append(f"{rcpt}: {state}, {len(files)} file(s)")
        for f in files:
            if parse_delivered(f.read_bytes()).content != content:
                problems.append(f"{f}: not the message sent")
        if box.exists() and not _tmp_empties(box / "tmp"):
            problems.append(f"{box / 'tmp'}: a partial file is left")
    assert not problems, "\n".join(problems)


def _tmp_empties(tmp: Path, within: float = 5.0) -> bool:
    """Whether a Maildir's tmp/ is seen empty within `within` seconds. While the disk is
    full, local delivery keeps retrying (every 0.2 s here), and a write in progress has
    its file in tmp/ for a moment; a partial file that was left behind never goes."""
    deadline = time.monotonic() + within
    while list(tmp.glob("*")):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


# --- c. graceful shutdown -------------------------------------------------------------


def test_sigterm_lets_the_message_in_flight_finish(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    with Serve(config, port, tmp_path / "serve.log") as server, \
            Wire(port) as busy, Wire(port) as idle:
        for w in (busy, idle):
            w.greeting()
            w.ehlo()
        assert busy.cmd("MAIL FROM:<a@example.org>").startswith("250")
        assert busy.cmd("RCPT TO:<inflight@localhost>").startswith("250")
        assert busy.cmd("DATA").startswith("354")
        content = b"Subject: in flight\r\n\r\nfirst half\r\n"
        busy.send(content)

        server.proc.send_signal(signal.SIGTERM)
        # An idle client hears at once that the server is going away.
        assert idle.reply(TIMEOUT) == "421 4.3.2 Service shutting down, closing connection"
        assert idle.closed()
        with pytest.raises(ConnectionRefusedError):  # no new connections
            Wire(port, timeout=2).close()

        busy.send(b"second half\r\n.\r\n")
        reply = busy.reply(TIMEOUT)
        assert reply.startswith("250 2.0.0 Ok: queued as "), reply
        qid = reply.rsplit(" ", 1)[-1]
        assert busy.cmd("NOOP") == "421 4.3.2 Service shutting down, closing connection"
        assert busy.closed()
        try:
            status = server.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mailgate serve did not exit within {TIMEOUT:g} s of SIGTERM")
        assert status == 0, server.logs()
    ids = {m["id"] for m in queue_list(config)["messages"]}
    assert qid in ids
