"""mailgate beside a real Dovecot (started by the tests, in a temporary folder):

1. started as root, `mailgate serve` runs as the mailgate user, and its mailbox helper
   writes a Maildir owned by a mail user, which Dovecot serves over IMAP byte for byte;
2. a local domain routed "lmtp:" is delivered into Dovecot by LMTP, one reply per
   recipient: one delivered, one failed (and bounced into the sender's mailbox);
3. submission AUTH is checked by Dovecot's auth service: right password 235, wrong
   535 5.7.8; Dovecot unreachable 454 4.7.0.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from mailgate.config import AuthConfig, Route
from mailgate.queue.sqlite import SQLiteQueue
from tests.support.dovecot import (
    TEST_USER,
    Dovecot,
    MailUser,
    ensure_system_user,
    free_port,
    need_dovecot,
)
from tests.support.live import LiveServer, live_config
from tests.support.needs import need
from tests.support.smtpwire import wait_until

SRC = str(Path(__file__).resolve().parent.parent / "src")
PASSWORD = "correct horse battery"
CONTENT = (b"From: Alice <alice@example.org>\r\nTo: mgtest@localhost\r\n"
           b"Subject: through Dovecot\r\nMessage-ID: <dovecot-test@example.org>\r\n\r\n"
           b"Hello over IMAP.\r\n.a line with a leading dot\r\nCaf\xc3\xa9.\r\n")


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder every user can enter (pytest's own are root's only): Dovecot's mail
    processes and the mailgate user must reach what is in it."""
    path = Path(tempfile.mkdtemp(prefix="mg-dovecot-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def mail_user(folder: Path) -> MailUser:
    need_dovecot()
    entry = ensure_system_user(TEST_USER)
    home = folder / "home"
    home.mkdir()
    os.chown(home, entry.pw_uid, entry.pw_gid)
    os.chmod(home, 0o700)
    return MailUser("mgtest", PASSWORD, entry.pw_uid, entry.pw_gid, home)


@pytest.fixture
def dovecot_dir(folder: Path) -> Path:
    (folder / "dovecot").mkdir()
    return folder / "dovecot"


@pytest.fixture
def dovecot(dovecot_dir: Path, mail_user: MailUser) -> Iterator[Dovecot]:
    with Dovecot(dovecot_dir, [mail_user]) as server:
        yield server


def _status_ids(pid: int) -> dict[str, list[int]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: [int(x) for x in v.split()] for k, _, v in (line.partition(":\t")
                                                           for line in lines)
            if k in ("Uid", "Gid")}


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _readable_by(user: str) -> bool:
    """Whether `user` can run this Python and import mailgate (a Python under root's
    home, as pyenv puts it, is not: serve then refuses to drop, saying so)."""
    done = subprocess.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
         sys.executable, "-c", "import sqlite3, mailgate.serve"],
        env={**os.environ, "PYTHONPATH": SRC}, cwd="/", capture_output=True, check=False)
    return done.returncode == 0


def test_serve_started_as_root_runs_as_mailgate_and_dovecot_reads_the_maildir(
        folder: Path, mail_user: MailUser, dovecot_dir: Path) -> None:
    mailgate = ensure_system_user("mailgate")
    need(_readable_by("mailgate"), f"a Python the mailgate user can read ({sys.prefix} "
         "is not; install mailgate where every user can read it)")
    port = free_port()
    config = folder / "mailgate.toml"
    config.write_text(f"""\
hostname = "mx.mailgate.test"
data_dir = "{folder / 'data'}"
[[listen]]
role = "mx"
address = "127.0.0.1:{port}"
[web]
address = ""
[policy]
sender_null_mx_check = false
[server]
workers = 2
[maildir]
"mgtest@localhost" = {{ owner = "{TEST_USER}", path = "{mail_user.maildir}" }}
""")
    log = folder / "mailgate.log"
    with log.open("ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mailgate", "serve", "--config",
                                 str(config)], env={**os.environ, "PYTHONPATH": SRC},
                                cwd="/", stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        def greets() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=5):
                    return True
            except OSError:
                return False

        wait_until("mailgate to listen", greets, 30)
        # The server process and its two workers are the mailgate user, real,
        # effective, saved and fs ids; the mailbox helper of the worker that delivers
        # kept root (the other worker takes mail in and delivers nothing).
        children = _children(proc.pid)
        kept_root = [pid for pid in children if _status_ids(pid)["Uid"][1] == 0]
        workers = [pid for pid in children if pid not in kept_root]
        assert (len(kept_root), len(workers)) == (1, 2), children
        for pid in [proc.pid, *workers]:
            ids = _status_ids(pid)
            assert ids["Uid"] == [mailgate.pw_uid] * 4, ids
            assert ids["Gid"] == [mailgate.pw_gid] * 4, ids
        assert (folder / "data").stat().st_uid == mailgate.pw_uid
        assert (folder / "data" / "queue.db").stat().st_uid == mailgate.pw_uid

        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("client.test")
            client.sendmail("alice@example.org", ["mgtest@localhost"], CONTENT)
        new = mail_user.maildir / "new"
        [file] = wait_until("the message in the user's Maildir",
                            lambda: (list(new.iterdir()) or None) if new.is_dir() else None,
                            30)
        st = file.stat()
        assert (st.st_uid, st.st_gid) == (mail_user.uid, mail_user.gid)
        assert st.st_mode & 0o777 == 0o600
        assert (mail_user.maildir.stat().st_uid, mail_user.maildir.stat().st_mode & 0o777) \
            == (mail_user.uid, 0o700)
        stored = file.read_bytes()
        assert b"\r" not in stored  # LF line ends, as Dovecot and mail readers expect
        rfc822_size = len(stored) + stored.count(b"\n")
        assert file.name.endswith(f",S={len(stored)},W={rfc822_size}")

        with Dovecot(dovecot_dir, [mail_user]) as server:
            [(fetched, size)] = server.fetch_all(mail_user)
        # IMAP sends CRLF; the file holds the same message with LF.
        assert fetched.replace(b"\r\n", b"\n") == stored
        assert fetched.endswith(CONTENT)
        assert fetched.startswith(b"Return-Path: <alice@example.org>\r\nReceived: from "
                                  b"client.test")
        assert size == rfc822_size == len(fetched)
        assert proc.poll() is None  # still serving
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, log.read_text()


def test_lmtp_delivers_into_dovecot_with_one_reply_per_recipient(
        tmp_path: Path, dovecot: Dovecot, mail_user: MailUser) -> None:
    route = Route("localhost", "localhost", 0, False, lmtp=True,
                  unix=str(dovecot.lmtp_socket))
    config = dataclasses.replace(live_config(tmp_path / "data"),
                                 routes=MappingProxyType({"localhost": route}))
    with LiveServer(config) as live:
        with smtplib.SMTP("127.0.0.1", live.port("mx"), timeout=10) as client:
            client.ehlo("client.test")
            refused = client.sendmail("mgtest@localhost",
                                      ["mgtest@localhost", "nobody@localhost"], CONTENT)
        assert refused == {}  # both accepted here: the store decides at delivery
        with SQLiteQueue(config.data_dir / "queue.db") as queue:
            def outcomes() -> dict[str, tuple[str, int | None]] | None:
                [msg] = [m for m in queue.list() if m.sender == "mgtest@localhost"]
                got = {r.address: (str(r.state), r.last_code) for r in msg.recipients}
                return got if all(s in ("delivered", "failed") for s, _ in got.values()) \
                    else None

            got = wait_until("both recipients decided", outcomes, 30)
        assert got == {"mgtest@localhost": ("delivered", 250),
                       "nobody@localhost": ("failed", 550)}, got
        # The bounce for nobody goes back to the sender, mgtest, by LMTP too.
        def both() -> list[tuple[bytes, int]] | None:
            got = dovecot.fetch_all(mail_user)
            return got if len(got) == 2 else None

        messages = wait_until("the message and its bounce in Dovecot", both, 30)
    bodies = [body for body, _ in messages]
    [original] = [b for b in bodies if b.endswith(CONTENT)]
    # Dovecot adds Return-Path (the final delivery, RFC 5321 4.4); mailgate does not.
    assert original.startswith(b"Return-Path: <mgtest@localhost>\r\n")
    assert original.count(b"Return-Path:") == 1
    [bounce] = [b for b in bodies if b is not original]
    assert bounce.startswith(b"Return-Path: <>\r\n")
    assert b"nobody@localhost" in bounce and b"5.1.1" in bounce


def _submit(port: int, user: str, password: str) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.starttls(context=context)
        try:
            code, text = client.login(user, password)
        except smtplib.SMTPAuthenticationError as exc:
            error = exc.smtp_error
            return exc.smtp_code, error if isinstance(error, bytes) else error.encode()
        if code == 235:
            client.sendmail(f"{user}@localhost", ["mgtest@localhost"], CONTENT)
        return code, text


def test_submission_auth_is_checked_by_dovecot(tmp_path: Path, dovecot: Dovecot) -> None:
    config = live_config(tmp_path / "data",
                         auth=AuthConfig("dovecot", dovecot.auth_socket, 10.0))
    with LiveServer(config) as live:
        port = live.port("submission")
        code, _ = _submit(port, "mgtest", PASSWORD)
        assert code == 235
        code, text = _submit(port, "mgtest", "not the password")
        assert code == 535 and text.startswith(b"5.7.8"), (code, text)
        code, text = _submit(port, "nobody", PASSWORD)
        assert code == 535 and text.startswith(b"5.7.8"), (code, text)


def test_auth_with_dovecot_unreachable_is_a_temporary_failure(tmp_path: Path) -> None:
    config = live_config(tmp_path / "data",
                         auth=AuthConfig("dovecot", tmp_path / "no-such-socket", 5.0))
    with LiveServer(config) as live:
        for _ in range(5):  # not counted as failures: the client did nothing wrong
            code, text = _submit(live.port("submission"), "mgtest", PASSWORD)
            assert code == 454 and text.startswith(b"4.7.0"), (code, text)


def test_a_domain_delivered_by_lmtp_accepts_the_users_dovecot_knows_at_rcpt(
        tmp_path: Path, dovecot: Dovecot, mail_user: MailUser) -> None:
    """No catch-all: mgtest exists only in Dovecot's userdb, yet is accepted at RCPT (the
    store is asked over LMTP); a name Dovecot does not know is refused there with 550
    5.1.1, not accepted and bounced later; the store gone is a temporary 451 4.3.0."""
    route = Route("localhost", "localhost", 0, False, lmtp=True,
                  unix=str(dovecot.lmtp_socket))
    base = live_config(tmp_path / "data")
    config = dataclasses.replace(
        base, routes=MappingProxyType({"localhost": route}),
        domains=dataclasses.replace(base.domains, catch_all=False))
    with LiveServer(config) as live, smtplib.SMTP("127.0.0.1", live.port("mx"),
                                                   timeout=20) as client:
        client.ehlo("client.test")
        assert client.mail("sender@client.test")[0] == 250
        assert client.rcpt("mgtest@localhost")[0] == 250
        code, text = client.rcpt("nobody@localhost")
        assert (code, text[:5]) == (550, b"5.1.1"), (code, text)
        assert client.rcpt("postmaster@localhost")[0] == 250  # always (RFC 5321 4.5.1)
        client.rset()
    # A server whose store is not there.
    gone = dataclasses.replace(route, unix=str(tmp_path / "no-such-socket"))
    config = dataclasses.replace(config, routes=MappingProxyType({"localhost": gone}))
    with LiveServer(config) as live, smtplib.SMTP("127.0.0.1", live.port("mx"),
                                                   timeout=20) as client:
        client.ehlo("client.test")
        assert client.mail("sender@client.test")[0] == 250
        code, text = client.rcpt("someone@localhost")
        assert (code, text[:5]) == (451, b"4.3.0"), (code, text)
