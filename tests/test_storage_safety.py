"""What mailgate keeps on disk is its own: owner-only modes, no symlinks followed.

A live server (real sockets, real files) receives mail; the tests look at the modes of
everything it wrote, and plant symbolic links in the Maildir tree as an attacker with a
foothold (or an old mistake) would, checking that nothing lands outside it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.datadir import prepare_data_dir
from mailgate.delivery.maildir import MaildirError, deliver, mailbox_path
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.server.tls import ensure_self_signed
from mailgate.users import UserDB
from mailgate.web.auth import AdminAuth
from tests.support.live import LiveServer, live_config
from tests.support.smtpwire import Wire, wait_for_files, wait_until

MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask most daemons inherit: files would come out 0644 unless asked otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def send(port: int, rcpt: str, source: str = "127.0.0.2") -> None:
    with Wire(port, source=source) as w:
        w.greeting()
        for line in ("EHLO client.example", "MAIL FROM:<a@example.org>", f"RCPT TO:<{rcpt}>",
                     "DATA"):
            assert w.cmd(line)[0] in "23", line
        w.send(MESSAGE + b".\r\n")
        assert w.reply().startswith("250")
        w.cmd("QUIT")


# --- modes ----------------------------------------------------------------------------


def test_everything_the_server_writes_is_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LiveServer(live_config(data)) as live:
        send(live.port("mx"), "alice@localhost")
        [msg] = wait_for_files(data / "maildir" / "localhost" / "alice" / "new", 1)
        # -wal and -shm go away when the last connection closes: looked at while open.
        wal = [data / "queue.db", data / "queue.db-wal", data / "queue.db-shm"]
        assert {f.name: oct(mode(f)) for f in wal} == {f.name: "0o600" for f in wal}
    UserDB(data / "users.json").set_password("bob", "a long enough password")
    AdminAuth(data).ensure_password()
    cert, key = ensure_self_signed(data, "localhost")
    assert mode(data) == 0o700
    files = [data / "queue.db", data / "users.json", data / "admin.json",
             data / "admin-password.json", key, cert, msg]
    assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
    dirs = [data / "tls", data / "maildir", data / "maildir" / "localhost",
            data / "maildir" / "localhost" / "alice",
            *(data / "maildir" / "localhost" / "alice" / s for s in ("tmp", "new", "cur"))]
    assert {str(d): oct(mode(d)) for d in dirs} == {str(d): "0o700" for d in dirs}


def test_a_new_queue_is_0600_before_sqlite_writes_it(tmp_path: Path) -> None:
    q = SQLiteQueue(tmp_path / "q" / "queue.db")
    try:
        assert mode(tmp_path / "q") == 0o700
        for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
            assert mode(tmp_path / "q" / name) == 0o600, name
    finally:
        q.close()


def test_a_loose_data_dir_is_tightened_at_start_and_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    SQLiteQueue(data / "queue.db").close()
    for f in data.iterdir():
        os.chmod(f, 0o644)
    (data / "users.json").write_text('{"users": {}}')
    os.chmod(data / "users.json", 0o644)
    caplog.set_level(logging.WARNING, logger="mailgate")
    with LiveServer(live_config(data)):
        pass
    assert mode(data) == 0o700
    assert mode(data / "queue.db") == 0o600 and mode(data / "users.json") == 0o600
    text = caplog.text
    assert str(data) in text and "0755" in text and "0700" in text
    assert "users.json" in text


def test_a_file_that_goes_while_the_data_dir_is_checked_is_no_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two workers start at once: one's probe file (or SQLite's journal) is listed by
    # the other and gone before it is looked at. Seen as "cannot use the data
    # directory: No such file or directory" from the second worker.
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    gone = data / ".probe-1"
    gone.write_text("x")
    real_scandir = os.scandir

    def listing_then_unlink(path: Any) -> Any:
        entries = list(real_scandir(path))
        gone.unlink(missing_ok=True)
        return iter(entries)

    monkeypatch.setattr(os, "scandir", listing_then_unlink)
    prepare_data_dir(data)
    assert not gone.exists() and mode(data) == 0o700


# --- symbolic links in the Maildir tree ---------------------------------------------------


@pytest.mark.parametrize("where", ["maildir", "domain", "box", "new", "tmp"])
def test_maildir_delivery_follows_no_symlink(tmp_path: Path, where: str) -> None:
    root = tmp_path / "data" / "maildir"
    outside = tmp_path / "outside"
    for sub in ("tmp", "new", "cur"):
        (outside / sub).mkdir(parents=True)
    box = root / "localhost" / "bob"
    target = {"maildir": root, "domain": root / "localhost", "box": box,
              "new": box / "new", "tmp": box / "tmp"}[where]
    if where in ("new", "tmp"):
        for sub in ("tmp", "new", "cur"):
            if sub != where:
                (box / sub).mkdir(parents=True, exist_ok=True)
        target.symlink_to(outside / where, target_is_directory=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(outside, target_is_directory=True)
    with pytest.raises(MaildirError) as caught:
        deliver(root, "bob@localhost", MESSAGE, "mx.test")
    assert "symbolic link" in str(caught.value)
    assert [p for p in outside.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("address", [
    "../../etc@localhost", "..@localhost", ".@localhost", "a/b@localhost",
    "a\0b@localhost", ".hidden@localhost", "bob@../../etc", "bob@..", "bob@.", "@localhost",
    "bob@a/b", "bob@.x",
])
def test_an_address_never_names_a_path_outside_its_domain(address: str,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "maildir"
    box = mailbox_path(root, address)
    rel = box.relative_to(root)
    assert len(rel.parts) == 2
    assert all(p not in ("", ".", "..") and not p.startswith(".") and "\0" not in p
               and "/" not in p for p in rel.parts), rel
    deliver(root, address, MESSAGE, "mx.test")
    assert list(tmp_path.iterdir()) == [root]


def test_live_delivery_to_a_symlinked_mailbox_is_deferred_with_the_reason(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    outside = tmp_path / "outside"
    for sub in ("tmp", "new", "cur"):
        (outside / sub).mkdir(parents=True)
    (data / "maildir" / "localhost").mkdir(parents=True)
    (data / "maildir" / "localhost" / "bob").symlink_to(outside, target_is_directory=True)
    with LiveServer(live_config(data)) as live:
        send(live.port("mx"), "bob@localhost")
        q = SQLiteQueue(data / "queue.db")
        try:
            def deferred() -> str | None:
                for m in q.list():
                    for r in m.recipients:
                        if r.last_code == 451:
                            return r.last_text
                return None

            reason = wait_until("bob deferred", deferred)
        finally:
            q.close()
        time.sleep(0.1)
    assert "symbolic link" in reason, reason
    assert [p for p in outside.rglob("*") if p.is_file()] == []


# --- startup: every check before the banner --------------------------------------------

SRC = str(Path(__file__).resolve().parent.parent / "src")


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never the same twice in this process: two
    calls in a row may otherwise get the same port back from the kernel, and a config
    naming it twice is refused for that alone."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def serve_process(tmp_path: Path, data: Path, smtp: int, web: int, workers: int = 1,
                  ) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "mailgate.toml"
    config.write_text(f'data_dir = "{data}"\n'
                      f'[[listen]]\nrole = "mx"\naddress = "127.0.0.1:{smtp}"\n'
                      f'[[listen]]\nrole = "submission"\naddress = "127.0.0.1:{free_port()}"\n'
                      f'[web]\naddress = "127.0.0.1:{web}"\n'
                      f'[server]\nworkers = {workers}\n'
                      # As root, serve would drop to the mailgate user, which cannot
                      # enter pytest's private temporary folders.
                      + ('user = "root"\n' if os.geteuid() == 0 else ''))
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "mailgate", "serve", "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=30, check=False)


def assert_one_sentence(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "mailgate serving" not in done.stderr and "password" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    for needle in needles:
        assert needle.lower() in line.lower(), line


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("busy", ["web", "smtp"])
def test_a_busy_port_is_one_sentence_before_the_banner(tmp_path: Path, busy: str,
                                                       workers: int) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        smtp, web = (free_port(), taken) if busy == "web" else (taken, free_port())
        done = serve_process(tmp_path, tmp_path / "data", smtp, web, workers)
    assert_one_sentence(done, f"127.0.0.1:{taken}", os.strerror(errno.EADDRINUSE))
    # No admin password was made (and printed to no one) for a server that never ran.
    assert not (tmp_path / "data" / "admin-password.json").exists()


@pytest.mark.parametrize("how", ["file", "under a file"])
def test_an_unusable_data_dir_is_one_sentence_naming_it(tmp_path: Path, how: str) -> None:
    (tmp_path / "afile").write_text("")
    data = tmp_path / "afile" if how == "file" else tmp_path / "afile" / "data"
    done = serve_process(tmp_path, data, free_port(), free_port())
    assert_one_sentence(done, str(data), "not a directory")


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[int]:
    """Make `directory` unwritable to this process; yield the errno a write then gets.

    A mode of 0500 stops everyone but root; root (as tests and CI run here) is stopped
    only by the immutable attribute (chattr +i), which gives EPERM instead of EACCES."""
    if os.geteuid() != 0:
        os.chmod(directory, 0o500)
        try:
            yield errno.EACCES
        finally:
            os.chmod(directory, 0o700)
        return
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True,
                          check=False)
    if made.returncode != 0:
        pytest.fail(f"as root, a directory is made unwritable with chattr +i: {made.stderr}")
    try:
        yield errno.EPERM
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_data_dir_without_write_permission_is_one_sentence(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    with unwritable(data) as refused:
        done = serve_process(tmp_path, data, free_port(), free_port())
    assert_one_sentence(done, str(data), os.strerror(refused))
