"""mailgate-sendmail: the command line programs hand mail to, with a real server (or
none), and `mailq` in Postfix's format.

The command runs as a separate process, as cron runs it: through a script named
`sendmail` (or `mailq`, which changes what it does) that calls the installed entry point.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.cli.sendmail import (
    EX_CONFIG,
    EX_DATAERR,
    EX_NOUSER,
    EX_USAGE,
    parse_args,
)
from mailgate.config import Domains, Relayhost
from mailgate.queue import RecipientState
from mailgate.queue.sqlite import SQLiteQueue
from tests.support.live import LiveServer, live_config
from tests.support.smtpwire import wait_for_files, wait_until

CRON_ARGS = ["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"]
MESSAGE = b"To: bob@localhost\nSubject: x\n\nhi\n"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """`sendmail` and `mailq`: the entry point under the names programs call it by."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("sendmail", "mailq", "newaliases"):
        script = folder / name
        script.write_text(f"#!{sys.executable}\nimport sys\n"
                          "from mailgate.cli.sendmail import main\nsys.exit(main())\n")
        script.chmod(0o755)
    return folder


def run(bin_dir: Path, name: str, *args: str, stdin: bytes = b"",
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(bin_dir / name), *args], input=stdin, capture_output=True,
                          timeout=60, check=False, env={**os.environ, **(env or {})})


def write_config(path: Path, data_dir: Path, port: int, extra: str = "") -> Path:
    path.write_text(f'data_dir = "{data_dir}"\n[[listen]]\nrole = "submission"\n'
                    f'address = "127.0.0.1:{port}"\n'
                    "[policy]\nsender_null_mx_check = false\nrecipient_null_mx_check = false\n"
                    + extra)
    return path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port where nothing listens while the test runs (bound, not listening:
    connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def queued(data_dir: Path) -> list[tuple[str, list[tuple[str, RecipientState]]]]:
    with SQLiteQueue(data_dir / "queue.db") as q:
        return [(m.id, [(r.address, r.state) for r in m.recipients])
                for m in q.list(limit=100)]


# --------------------------------------------------------------------- command line


def test_the_command_lines_programs_use_parse() -> None:
    cron = parse_args(CRON_ARGS)
    assert (cron.extract, cron.dot_ends, cron.sender, cron.full_name) == (
        True, False, "root", "CronDaemon")
    git = parse_args(["-i", "bob@example.org", "carol@example.org"])
    assert git.recipients == ["bob@example.org", "carol@example.org"] and not git.extract
    php = parse_args(["-t", "-i", "-fwww-data@example.org"])
    assert php.sender == "www-data@example.org"
    dsn = parse_args(["-N", "failure,delay", "-R", "hdrs", "-V", "env-1", "-B", "8BITMIME",
                      "-oi", "-om", "-o7", "-v", "-U", "-G", "-n", "-m", "-h", "10",
                      "-L", "label", "-X", "/dev/null", "-O", "x=y", "-Am", "bob"])
    assert (dsn.notify, dsn.ret, dsn.envid, dsn.recipients) == (
        ("FAILURE", "DELAY"), "HDRS", "env-1", ["bob"])
    assert parse_args([], "mailq").mode == "p" and parse_args(["-bp"]).mode == "p"
    assert parse_args(["-q"]).mode == "q" and parse_args(["-qIabc"]).flush_id == "abc"
    assert parse_args([], "/usr/bin/newaliases").mode == "i"
    assert parse_args(["-C", "/etc/x.toml"]).config == Path("/etc/x.toml")
    assert parse_args(["-f", "", "bob"]).sender == ""


def test_the_sendmail_interface_does_not_load_the_mailgate_command() -> None:
    """Programs start mailgate-sendmail once per message: it must not pay for click and
    every `mailgate` command (about 35 ms), which `mailgate.cli` loads only when `main`
    is asked for. The `mailgate` command itself still has all of them."""
    probe = ("import sys, mailgate.cli.sendmail; "
             "print(sorted(m for m in ('click', 'mailgate.cli.admin', 'mailgate.cli.run') "
             "if m in sys.modules)); "
             "from mailgate.cli import main; print(len(main.commands) > 10)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split("\n")
    assert out[:2] == ["[]", "True"], out


def test_bad_command_lines_exit_64(bin_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", tmp_path / "data", 1)
    for args, said in [(["-Z"], "unknown option -Z"), (["-bs"], "-bs is not supported"),
                       (["-bd"], "mailgate serve"), (["-f"], "-f needs a value"),
                       (["-N", "sometimes"], "-N 'sometimes'")]:
        out = run(bin_dir, "sendmail", "-C", str(config), *args)
        assert out.returncode == EX_USAGE, (args, out)
        assert said in out.stderr.decode() and b"Traceback" not in out.stderr
    out = run(bin_dir, "sendmail", "-C", str(config), "-t", stdin=b"Subject: none\n\nx\n")
    assert out.returncode == EX_USAGE and b"no recipient addresses" in out.stderr
    out = run(bin_dir, "sendmail", "-C", str(tmp_path / "missing.toml"), "bob")
    assert out.returncode == EX_CONFIG and b"cannot read" in out.stderr


# --------------------------------------------------------------------- through the server


def test_sendmail_t_i_queues_through_the_server_with_date_and_message_id(
        bin_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LiveServer(live_config(data)) as srv:
        config = write_config(tmp_path / "c.toml", data, srv.port("submission"))
        out = run(bin_dir, "sendmail", "-t", "-i", stdin=MESSAGE,
                  env={"MAILGATE_CONFIG": str(config)})
        assert out.returncode == 0, out.stderr
        [path] = wait_for_files(srv.maildir / "localhost" / "bob" / "new", 1)
    delivered = path.read_bytes()
    head = delivered.split(b"\n\n")[0]
    # Through the submission listener (a Received field of its own), from the user who ran
    # it; the fields the message lacked were added, once.
    assert re.search(rb"^Received: from localhost \(\[127.0.0.1\]\)\n"
                     rb"\tby localhost \(mailgate\) with ESMTP id", head, re.M)
    assert len(re.findall(rb"^Date: ", head, re.M)) == 1
    assert len(re.findall(rb"^Message-ID: <[^@>]+@localhost>$", head, re.M)) == 1
    assert re.search(rb"^From: \S+@localhost$", head, re.M)
    assert delivered.endswith(b"\n\nhi\n")


def test_a_line_with_a_dot_ends_the_message_without_i(bin_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LiveServer(live_config(data)) as srv:
        config = write_config(tmp_path / "c.toml", data, srv.port("submission"))
        out = run(bin_dir, "sendmail", "-C", str(config), "-F", "Cron Daemon",
                  "carol", stdin=b"Subject: x\n\nfirst\n.\nnot sent\n")
        assert out.returncode == 0, out.stderr
        [path] = wait_for_files(srv.maildir / "localhost" / "carol" / "new", 1)
    delivered = path.read_bytes()
    assert delivered.endswith(b"\n\nfirst\n") and b"not sent" not in delivered
    assert b"\nFrom: Cron Daemon <" in delivered


def test_an_unknown_local_user_exits_67(bin_dir: Path, tmp_path: Path,
                                        closed_port: int) -> None:
    data = tmp_path / "data"
    domains = '[domains]\nlocal = ["localhost"]\n'  # named: no catch-all
    base = live_config(data)
    with LiveServer(dataclasses.replace(base, domains=Domains(catch_all=False))) as srv:
        config = write_config(tmp_path / "c.toml", data, srv.port("submission"), domains)
        out = run(bin_dir, "sendmail", "-C", str(config), "nobody@localhost",
                  "postmaster@localhost", stdin=b"Subject: x\n\nhi\n")
        assert out.returncode == EX_NOUSER, out
        assert b"<nobody@localhost>: 550 5.1.1" in out.stderr
        wait_for_files(srv.maildir / "localhost" / "postmaster" / "new", 1)
    # The same without a server: refused for nobody, queued for the postmaster.
    config = write_config(tmp_path / "d.toml", data, closed_port, domains)
    out = run(bin_dir, "sendmail", "-C", str(config), "nobody@localhost", "abuse",
              stdin=b"Subject: y\n\nhi\n")
    assert out.returncode == EX_NOUSER and b"<nobody@localhost>: 550 5.1.1" in out.stderr
    newest = queued(data)[0]
    assert newest[1] == [("postmaster@localhost", RecipientState.QUEUED)]


def test_a_message_over_the_size_limit_exits_65(bin_dir: Path, tmp_path: Path,
                                                closed_port: int) -> None:
    config = write_config(tmp_path / "c.toml", tmp_path / "data", closed_port,
                          '[limits]\nmessage_size = "64KiB"\n')
    out = run(bin_dir, "sendmail", "-C", str(config), "bob",
              stdin=b"Subject: x\n\n" + b"y" * 70_000 + b"\n")
    assert out.returncode == EX_DATAERR and b"larger than the limit" in out.stderr


# --------------------------------------------------------------------- with the server down


def test_cron_style_use_with_the_server_stopped_loses_nothing(
        bin_dir: Path, tmp_path: Path, closed_port: int) -> None:
    data = tmp_path / "data"
    with LiveServer(live_config(data)):  # the queue exists, then the server stops
        pass
    config = write_config(tmp_path / "c.toml", data, closed_port)
    out = run(bin_dir, "sendmail", *CRON_ARGS, "-C", str(config),
              stdin=b"To: bob@localhost\nSubject: cron\n\nran\n")
    assert out.returncode == 0, out.stderr
    [(qid, rcpts)] = queued(data)
    assert rcpts == [("bob@localhost", RecipientState.QUEUED)]
    listing = run(bin_dir, "mailq", "-C", str(config)).stdout.decode()
    assert qid in listing and "root@localhost" in listing and "1 Request." in listing
    with LiveServer(live_config(data)) as srv:  # started again: it delivers
        [path] = wait_for_files(srv.maildir / "localhost" / "bob" / "new", 1)
    delivered = path.read_bytes()
    assert f"(mailgate-sendmail, from userid {os.getuid()})".encode() in delivered
    assert f"id {qid};".encode() in delivered
    assert re.search(rb"^Message-ID: <.+@localhost>$", delivered, re.M)
    assert re.search(rb"^Date: ", delivered, re.M)
    assert run(bin_dir, "mailq", "-C", str(config)).stdout == b"Mail queue is empty\n"


def test_the_direct_path_expands_aliases(bin_dir: Path, tmp_path: Path,
                                         closed_port: int) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "c.toml", data, closed_port,
                          '[domains]\nlocal = ["localhost"]\n'
                          '[aliases]\nroot = ["alice", "ops@example.net"]\n')
    out = run(bin_dir, "sendmail", "-C", str(config), "root", stdin=b"Subject: x\n\nhi\n")
    assert out.returncode == 0, out.stderr
    [(_, rcpts)] = queued(data)
    assert rcpts == [("alice@localhost", RecipientState.QUEUED),
                     ("ops@example.net", RecipientState.QUEUED)]


# --------------------------------------------------------------------- mailq and -q


def test_mailq_prints_what_postfix_prints(bin_dir: Path, tmp_path: Path,
                                          closed_port: int) -> None:
    data = tmp_path / "data"
    base = live_config(data)
    relay = Relayhost("127.0.0.1", closed_port, False)  # nobody there: deferred
    with LiveServer(dataclasses.replace(
            base, delivery=dataclasses.replace(base.delivery, relayhost=relay))) as srv:
        config = write_config(tmp_path / "c.toml", data, srv.port("submission"))
        out = run(bin_dir, "sendmail", "-C", str(config), "-f", "", "bob@remote.example",
                  "carol@remote.example", stdin=b"Subject: x\n\nhi\n")
        assert out.returncode == 0, out.stderr
        wait_until("a deferral", lambda: queued(data)[0][1][0][1] is RecipientState.DEFERRED
                   or None, 20)
        listing = run(bin_dir, "mailq", "-C", str(config)).stdout.decode()
        same = run(bin_dir, "sendmail", "-bp", "-C", str(config)).stdout.decode()
        assert run(bin_dir, "sendmail", "-q", "-C", str(config)).returncode == 0
    lines = listing.splitlines()
    assert lines[0] == "-Queue ID- --Size-- ----Arrival Time---- -Sender/Recipient-------"
    qid = queued(data)[0][0]
    assert re.fullmatch(rf"{qid} +\d+ \w{{3}} \w{{3}} [ \d]\d \d\d:\d\d:\d\d  MAILER-DAEMON",
                        lines[1]), lines[1]
    assert lines[2].strip().startswith("(4") and lines[2].endswith(")")  # the reason
    assert lines[3] == " " * 41 + "bob@remote.example"
    assert lines[4] == " " * 41 + "carol@remote.example"  # same reason: not repeated
    assert lines[-2:] == ["", "-- 0 Kbytes in 1 Request."]
    assert same == listing


def test_newaliases_checks_the_aliases(bin_dir: Path, tmp_path: Path) -> None:
    good = write_config(tmp_path / "c.toml", tmp_path / "data", 1,
                        '[aliases]\nroot = "alice"\n')
    assert run(bin_dir, "newaliases", "-C", str(good)).returncode == 0
    loop = write_config(tmp_path / "d.toml", tmp_path / "data", 1,
                        '[aliases]\na = "b"\nb = "a"\n')
    out = run(bin_dir, "newaliases", "-C", str(loop))
    assert out.returncode == EX_CONFIG and b"loop" in out.stderr


def test_mailq_and_flush_read_only_where_the_queue_is(bin_dir: Path, tmp_path: Path) -> None:
    """-bp and -q read data_dir and [queue] as `mailgate queue` does: a mistake in
    another section (an alias loop) stops sending and newaliases, not a look at the
    queue; a mistake in [queue] stops them too."""
    data = tmp_path / "data"
    with SQLiteQueue(data / "queue.db"):
        pass
    loop = write_config(tmp_path / "c.toml", data, 1, '[aliases]\na = "b"\nb = "a"\n')
    for args in (["mailq"], ["sendmail", "-bp"], ["sendmail", "-q"]):
        out = run(bin_dir, *args, "-C", str(loop))
        assert out.returncode == 0, (args, out.stderr)
    assert b"Mail queue is empty" in run(bin_dir, "mailq", "-C", str(loop)).stdout
    assert run(bin_dir, "sendmail", "-C", str(loop), "bob",
               stdin=b"Subject: x\n\nx\n").returncode == EX_CONFIG
    bad = write_config(tmp_path / "d.toml", data, 1, '[queue]\nbackend = "mysql"\n')
    out = run(bin_dir, "mailq", "-C", str(bad))
    assert out.returncode == EX_CONFIG and b"queue.backend" in out.stderr


def test_root_queues_directly_as_the_owner_of_the_data_directory(
        bin_dir: Path, closed_port: int) -> None:
    """The server runs as its own user: files sendmail (run by root's cron) makes in the
    queue must stay that user's, or the server could not open its queue again."""
    if os.geteuid() != 0:
        pytest.skip("needs root: checks that root's sendmail writes as the queue's owner")
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="mailgate-owner-"))
    try:
        top.chmod(0o755)  # the owner below must reach its data directory
        data = top / "data"
        data.mkdir(mode=0o700)
        os.chown(data, 65534, 65534)
        config = write_config(top / "c.toml", data, closed_port)
        bin_dir.parent.chmod(0o755)
        out = run(bin_dir, "sendmail", "-C", str(config), "bob@localhost",
                  stdin=b"Subject: x\n\nhi\n")
        assert out.returncode == 0, out.stderr
        owners = {p.name: p.stat().st_uid for p in data.iterdir()}
        assert owners and set(owners.values()) == {65534}, owners
        [(_, rcpts)] = queued(data)
        assert rcpts == [("bob@localhost", RecipientState.QUEUED)]
    finally:
        shutil.rmtree(top)
