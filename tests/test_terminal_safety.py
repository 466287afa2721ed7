"""What a stranger writes never reaches the admin's terminal or log as control characters.

The hostile message goes into the queue through the queue API (the SMTP server refuses
control characters in ENVID at the door), then `mailgate queue list/show` run as real
processes; the log formatter is checked on its own and on a live server's log.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailgate.logformat import SafeFormatter
from mailgate.queue import NewMessage, NewRecipient
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.textsafe import json_printable, printable
from tests.support.live import LiveServer, live_config
from tests.support.smtpwire import Wire

SRC = str(Path(__file__).resolve().parent.parent / "src")
ESC, BEL, CSI = "\x1b", "\x07", "\x9b"
TITLE = f"{ESC}]0;owned{BEL}"


def mailgate(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    env.update(PYTHONPATH=SRC, PYTHONUTF8="1")
    return subprocess.run([sys.executable, "-m", "mailgate", *args], capture_output=True,
                          env=env, timeout=60, check=False)


def assert_inert(out: bytes) -> None:
    for bad in (b"\x1b", b"\x07", b"\r", b"\x00", b"\x7f", CSI.encode(), "\u202e".encode()):
        assert bad not in out, (bad, out)


@pytest.fixture
def hostile_queue(tmp_path: Path) -> tuple[Path, str]:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "mailgate.toml"
    config.write_text(f'data_dir = "{data}"\n')
    content = (f"Subject: [bold]hi[/bold] {TITLE}\r\n"
               f"X-Evil: a{ESC}[2Jb{CSI}31mc\u202ed\x7f\x00\r\n"
               " folded\r\n\r\nbody\r\n").encode()
    q = SQLiteQueue(data / "queue.db")
    try:
        qid = q.enqueue(NewMessage(
            sender=f"x{ESC}[31m@example.org", content=content, received_at=time.time(),
            recipients=[NewRecipient(f"bob{BEL}@localhost")],
            client_address="127.0.0.2", client_helo=f"helo{ESC}]2;t{BEL}\r\nfake line",
            envid=f"+1B]0;owned+07{TITLE}", authenticated_as=f"u{ESC}c"))
    finally:
        q.close()
    return config, qid


def test_queue_show_escapes_control_characters(hostile_queue: tuple[Path, str]) -> None:
    config, qid = hostile_queue
    done = mailgate("queue", "show", qid, "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert_inert(done.stdout)
    text = done.stdout.decode()
    assert "envid=+1B]0;owned+07\\x1b]0;owned\\x07" in text
    assert "Subject: [bold]hi[/bold] \\x1b]0;owned\\x07" in text  # no markup either
    assert "X-Evil: a\\x1b[2Jb\\x9b31mc\\u202ed\\x7f\\x00 folded" in text
    assert "helo\\x1b]2;t\\x07\\r\\nfake line" in text
    assert not any(line.startswith("fake line") for line in text.splitlines())


def test_queue_show_json_is_valid_and_inert(hostile_queue: tuple[Path, str]) -> None:
    config, qid = hostile_queue
    done = mailgate("queue", "show", qid, "--config", str(config), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert_inert(done.stdout)
    data = json.loads(done.stdout)
    assert data["dsn"]["envid"] == f"+1B]0;owned+07{TITLE}"  # the same data, escaped


def test_queue_list_escapes_control_characters(hostile_queue: tuple[Path, str]) -> None:
    config, _ = hostile_queue
    for fmt in ("text", "json"):
        done = mailgate("queue", "list", "--config", str(config), "--format", fmt)
        assert done.returncode == 0, done.stderr
        assert_inert(done.stdout)
        assert (b"<x\\x1b[31m@example.org>" in done.stdout) == (fmt == "text")


def test_printable() -> None:
    assert printable("a\tb\x1b[1m\x00\x7f\x85\u202e\u2067ok é 中") == \
        "a\\tb\\x1b[1m\\x00\\x7f\\x85\\u202e\\u2067ok é 中"
    assert printable("a\tb\nc", keep="\t\n") == "a\tb\nc"
    assert json.loads(json_printable(json.dumps("\x9b\x7f é", ensure_ascii=False))) == \
        "\x9b\x7f é"


def _formatted(message: str, *args: object, exc: BaseException | None = None) -> str:
    record = logging.LogRecord("mailgate.test", logging.INFO, __file__, 1, message, args,
                               (type(exc), exc, None) if exc else None)
    return SafeFormatter("%(name)s: %(message)s").format(record)


def test_log_formatter_escapes_client_strings() -> None:
    line = _formatted("connect from %s[%s]", f"evil{ESC}]0;x{BEL}\nforged: line", "127.0.0.2")
    assert line == "mailgate.test: connect from evil\\x1b]0;x\\x07\\nforged: line[127.0.0.2]"
    text = _formatted("failed", exc=ValueError(f"bad {ESC}[2J"))
    assert ESC not in text and "ValueError: bad \\x1b[2J" in text


def test_log_time_is_formatted_once_a_second_and_reads_the_same() -> None:
    """The formatter keeps the last second's time text: a record in the same second reads
    it, one in another second (or with another format) gets its own, and each reads as
    logging's own formatter reads it."""
    ours = SafeFormatter("%(asctime)s %(message)s", "%b %d %H:%M:%S")
    plain = logging.Formatter("%(asctime)s %(message)s", "%b %d %H:%M:%S")
    base = 1_765_000_000.0
    for created, datefmt in [(base + 0.1, "%b %d %H:%M:%S"), (base + 0.9, "%b %d %H:%M:%S"),
                             (base + 1.0, "%b %d %H:%M:%S"), (base + 1.5, "%H:%M:%S"),
                             (base + 1.6, "%b %d %H:%M:%S"), (base - 3600, "%b %d %H:%M:%S"),
                             (base + 2.0, None)]:
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.formatTime(record, datefmt) == plain.formatTime(record, datefmt), created
    assert ours.format(record) == plain.format(record)


def test_live_server_log_carries_no_raw_escape(tmp_path: Path) -> None:
    """The AUTH user name reaches the log as the client sent it: escaped there."""
    from mailgate.serve import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    switches = logging._srcfile, logging.logThreads, logging.logMultiprocessing
    root.handlers.clear()
    token = base64.b64encode(f"\0ev{ESC}]0;owned{BEL}il\r\nforged\0secret".encode()).decode()
    try:
        configure_logging("info", stream=stream)
        with LiveServer(live_config(tmp_path / "data")) as live, \
                Wire(live.port("smtps"), source="127.0.0.2", tls=True) as w:
            w.greeting()
            assert w.cmd("EHLO client.example").startswith("250")
            assert w.cmd(f"AUTH PLAIN {token}").startswith("535")
            w.cmd("QUIT")
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
        logging._srcfile, logging.logThreads, logging.logMultiprocessing = switches
    log = stream.getvalue()
    assert "user=ev\\x1b]0;owned\\x07il\\r\\nforged" in log, log
    assert f" mailgate[{os.getpid()}]: " in log, log  # the pid is still taken
    assert ESC not in log and BEL not in log and "\r" not in log
