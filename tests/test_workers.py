"""`[server] workers = 3`: the limits are the server's, not each worker's.

A real `mailgate serve` with three worker processes on one SQLite queue: the first
delivers and serves the web page, the other two take mail in. The clients connect many
times, so the kernel hands their connections to both listeners (each has its own
SO_REUSEPORT socket); every limit must still hold for the server as a whole
(siblings.py, workers.py):

- `limits.connections_per_ip` and `limits.connections`: exactly that many admitted;
- AUTH failures: a client that used up its failures is refused by either listener;
- `delivery.concurrency_per_destination`: never more connections at the next hop,
  for the mail both listeners took in;
- `/metrics`: the totals of every worker.

And the processes go together: the workers do not outlive a parent killed with -9, and
a worker that dies on its own stops the server (for its supervisor to restart whole).
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mailgate.server.policy import Policy
from mailgate.users import UserDB
from tests.support.smtpwire import DEAD_PORT, Wire, wait_until
from tests.test_cluster import SlowSink
from tests.test_server_durability import free_ports

TIMEOUT = 60.0
SRC = str(Path(__file__).resolve().parent.parent / "src")


class Workers:
    """`mailgate serve` with workers = 3, in a session of its own (so the workers go
    with it), an MX port, an smtps port and the web page."""

    def __init__(self, folder: Path, *, relay: int = DEAD_PORT, **sections: dict[str, Any]
                 ) -> None:
        self.mx, self.smtps, self.web = free_ports(3)
        sections = {**sections, "server": {"workers": 3, **sections.get("server", {})},
                    "delivery": {"relayhost": f"[127.0.0.1]:{relay}",
                                 **sections.get("delivery", {})}}
        if os.geteuid() == 0:  # root would drop to a user that cannot enter tmp_path
            sections["server"]["user"] = "root"
        lines = ['hostname = "localhost"', f'data_dir = "{folder / "data"}"',
                 "[[listen]]", 'role = "mx"', f'address = "127.0.0.1:{self.mx}"',
                 "[[listen]]", 'role = "smtps"', f'address = "127.0.0.1:{self.smtps}"',
                 "[web]", f'address = "127.0.0.1:{self.web}"',
                 "[policy]", "sender_null_mx_check = false", "recipient_null_mx_check = false",
                 "[dns]", f'nameservers = ["127.0.0.1:{DEAD_PORT}"]']
        for name, values in sections.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "data").mkdir(mode=0o700, exist_ok=True)
        self.config = folder / "mailgate.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = folder / "serve.log"
        self.users = UserDB(folder / "data" / "users.json")

    def __enter__(self) -> Workers:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailgate", "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
                env={**os.environ, "PYTHONPATH": SRC})
        try:
            wait_until("every worker serving", self._up, TIMEOUT, 0.1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _up(self) -> bool | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.logs()}")
        if "mailgate serving" not in self.logs():
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web}/metrics", timeout=2):
                pass
            with Wire(self.mx, timeout=2) as w:
                return w.greeting().startswith("220 ") or None
        except OSError:
            return None

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web}/metrics", timeout=10) as r:
            text = r.read().decode()
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert found, f"{name} not in /metrics"
        return float(found.group(1))

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def greetings(port: int, n: int, source: str = "127.0.0.1"
              ) -> tuple[list[socket.socket], list[str]]:
    """`n` connections from `source`, kept open; and the first line each was sent."""
    socks, first = [], []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10,
                                     source_address=(source, 0))
        socks.append(s)
        first.append(s.makefile("rb").readline().decode())
    return socks, first


@contextlib.contextmanager
def held(socks: list[socket.socket]) -> Iterator[None]:
    try:
        yield
    finally:
        for s in socks:
            s.close()


def test_connection_limits_hold_across_workers(tmp_path: Path) -> None:
    with Workers(tmp_path, limits={"connections": 5, "connections_per_ip": 3}) as srv:
        socks, first = greetings(srv.mx, 8)
        with held(socks):
            assert sum(line.startswith("220 ") for line in first) == 3, first
            assert all(line.startswith("421 Too many connections from your address")
                       for line in first if not line.startswith("220 ")), first
            more, second = greetings(srv.mx, 6, source="127.0.0.2")
            with held(more):
                assert sum(line.startswith("220 ") for line in second) == 2, second
                assert all(line.startswith("421 Too many connections, try again later")
                           for line in second if not line.startswith("220 ")), second
        # Every connection closed is given back, whichever worker held it.

        def admitted_again() -> bool | None:
            socks, lines = greetings(srv.mx, 5, source="127.0.0.3")
            with held(socks):
                return sum(line.startswith("220 ") for line in lines) == 3 or None

        wait_until("the slots given back", admitted_again, 10, 0.2)


def test_auth_failures_count_on_every_worker(tmp_path: Path) -> None:
    bad = base64.b64encode(b"\0carol\0wrong").decode()
    good = base64.b64encode(b"\0carol\0correct horse battery").decode()
    with Workers(tmp_path) as srv:
        srv.users.set_password("carol", "correct horse battery")
        failed = 0
        while failed < Policy.AUTH_FAILS_PER_IP:
            with Wire(srv.smtps, tls=True, source="127.0.0.51", timeout=20) as w:
                w.greeting()
                w.ehlo()
                for _ in range(Policy.AUTH_FAILS_PER_CONNECTION - 1):  # spread them out
                    reply = w.cmd(f"AUTH PLAIN {bad}")
                    assert reply.startswith(("535", "421 4.7.0")), reply
                    failed += 1

        def refused_everywhere() -> bool | None:
            # The right password, on several connections (both listeners): a success adds
            # no failure, so a worker refuses it only if it counts the other's failures.
            for _ in range(6):
                with Wire(srv.smtps, tls=True, source="127.0.0.51", timeout=20) as w:
                    w.greeting()
                    w.ehlo()
                    reply = w.cmd(f"AUTH PLAIN {good}")
                    assert reply.startswith(("235", "421 4.7.0")), reply
                    if reply.startswith("235"):
                        return None
            return True

        wait_until("every worker refusing the client", refused_everywhere, 30, 0.3)
        with Wire(srv.smtps, tls=True, source="127.0.0.52", timeout=20) as w:
            w.greeting()
            w.ehlo()
            assert w.cmd(f"AUTH PLAIN {bad}").startswith("535")  # another client is not


def send(port: int, n: int, tag: str) -> list[str]:
    """`n` messages, each on a connection of its own; their Message-IDs."""
    ids = []
    for i in range(n):
        mid = f"<{tag}-{i}@workers.test>"
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("s@example.org", ["r@example.net"],
                            f"From: s@example.org\r\nTo: r@example.net\r\nMessage-ID: {mid}"
                            f"\r\nSubject: {i}\r\n\r\nhello\r\n")
        ids.append(mid)
    return ids


def test_concurrency_per_destination_is_the_server_s(tmp_path: Path) -> None:
    slow = SlowSink(delay=0.2)
    try:
        with Workers(tmp_path, relay=slow.port,
                        delivery={"concurrency_per_destination": 2}) as srv:
            # Four senders at once, so both listeners accept mail (and ring for its
            # delivery) while the sink is still busy with the first messages.
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                ids = [i for part in pool.map(lambda n: send(srv.mx, 6, f"slots{n}"),
                                              range(4)) for i in part]
            wait_until("every message at the sink",
                       lambda: set(ids) <= set(slow.ids) or None, TIMEOUT, 0.2)
            assert 1 <= slow.peak <= 2, (slow.peak, srv.logs())
    finally:
        slow.stop()


def test_metrics_are_every_workers_totals(tmp_path: Path) -> None:
    with Workers(tmp_path) as srv:
        before = srv.metric("mailgate_messages_accepted_total")
        send(srv.mx, 12, "metrics")
        assert srv.metric("mailgate_messages_accepted_total") - before == 12
        assert srv.metric('mailgate_replies_total{code="354"}') == 12


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (in a container, PID 1 may not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on TCP `port` (/proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            inodes.add(f"socket:[{fields[9]}]")
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    return False


def test_a_parent_killed_with_9_takes_its_workers_with_it(tmp_path: Path) -> None:
    with Workers(tmp_path) as srv:
        children = _children(srv.proc.pid)
        listeners = [pid for pid in children if _listening_on(pid, srv.mx)]
        deliverer = [pid for pid in children if _listening_on(pid, srv.web)]
        # The worker that delivers serves the web page and takes no SMTP connection.
        assert len(listeners) == 2 and len(deliverer) == 1, (children, srv.logs())
        assert not set(listeners) & set(deliverer)
        srv.proc.kill()
        srv.proc.wait(TIMEOUT)
        # Every child (the workers, and as root their mailbox helpers) goes: none keeps
        # serving the port unsupervised, nor keeps root.
        wait_until("the workers to end", lambda: not any(map(_alive, children)) or None,
                   TIMEOUT, 0.1)
        with contextlib.suppress(ConnectionRefusedError), socket.create_connection(
                ("127.0.0.1", srv.mx), timeout=5) as s:
            raise AssertionError(f"still accepting: {s.recv(100)!r}")


def test_a_worker_that_dies_stops_the_whole_server(tmp_path: Path) -> None:
    with Workers(tmp_path) as srv:
        workers = [pid for pid in _children(srv.proc.pid) if _listening_on(pid, srv.mx)
                   or _listening_on(pid, srv.web)]
        assert len(workers) == 3, srv.logs()
        os.kill(workers[1], signal.SIGKILL)
        assert srv.proc.wait(TIMEOUT) != 0, srv.logs()
        assert re.search(r"worker \d \(pid \d+\) ended on its own \(killed by signal 9\): "
                         r"stopping the server", srv.logs()), srv.logs()
        assert not _alive(workers[0]) and not _alive(workers[2])


def test_the_banner_names_the_parent_whose_sighup_reaches_every_worker(tmp_path: Path) -> None:
    with Workers(tmp_path) as srv:
        banner = re.search(r"mailgate serving as \S+ \(pid (\d+), 3 workers\)", srv.logs())
        assert banner, srv.logs()
        assert int(banner.group(1)) == srv.proc.pid  # not the first worker's own pid
        os.kill(int(banner.group(1)), signal.SIGHUP)
        wait_until("every worker to reload", lambda: len(re.findall(
            r"mailgate\[(\d+)\]: mailgate: SIGHUP: reloaded the user file", srv.logs())) == 3
            or None, TIMEOUT, 0.1)
        reloaded = set(re.findall(r"mailgate\[(\d+)\]: mailgate: SIGHUP: reloaded the user",
                                  srv.logs()))
        assert len(reloaded) == 3 and str(srv.proc.pid) not in reloaded, srv.logs()
