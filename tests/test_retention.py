"""Queue retention: content goes when every recipient is final, the record stays for
[queue] keep_records, then the server (or `mailgate queue purge`) removes it; listings
show live mail unless asked for history. And `queue list` streams: memory stays bounded
whatever --limit says."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import smtplib
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate import serve
from mailgate.config import QueueConfig
from mailgate.queue import Attempt, NewMessage, NewRecipient, RecipientState
from mailgate.queue.report import stream_list
from mailgate.queue.sqlite import SQLiteQueue
from tests.support.live import LiveServer, live_config, mailgate_cli
from tests.support.smtpwire import wait_for_files, wait_until
from tests.test_web_admin import Env, _bearer
from tests.test_web_admin import env as admin_env  # noqa: F401  (a fixture)


def message(*rcpts: str, body: bytes = b"Subject: x\r\n\r\nhello\r\n") -> NewMessage:
    return NewMessage(sender="alice@example.org", recipients=[NewRecipient(r) for r in rcpts],
                      content=body, received_at=time.time())


def attempt(outcome: str, code: int = 250) -> Attempt:
    return Attempt(at=time.time(), host="mx.example", code=code, enhanced=None, text="t",
                   outcome=outcome)


@pytest.fixture
def q(tmp_path: Path) -> Iterator[SQLiteQueue]:
    with SQLiteQueue(tmp_path / "queue.db") as queue:
        yield queue


def test_content_goes_when_the_last_recipient_is_final(q: SQLiteQueue) -> None:
    qid = q.enqueue(message("a@x.example", "b@y.example", "c@z.example"))
    (item,) = q.claim(time.time(), 10, 60)
    a, b, c = item.recipients
    q.record(a.id, attempt("delivered"), claim_token=item.claim_token)
    q.record(b.id, attempt("deferred", 451), next_attempt=time.time() - 1,
             claim_token=item.claim_token)
    live = q.show(qid, content=True)
    assert live.content is not None and live.finished_at is None
    q.record(c.id, attempt("failed", 550))
    q.hold(qid)  # held is not final: still live
    assert q.show(qid, content=True).content is not None
    q.release_hold(qid)
    (again,) = q.claim(time.time(), 10, 60)
    before = time.time()
    q.record(again.recipients[0].id, attempt("delivered"), claim_token=again.claim_token)
    done = q.show(qid, content=True)
    assert done.content is None and done.finished_at is not None
    assert before <= done.finished_at <= time.time()
    assert [r.state for r in done.recipients] == [RecipientState.DELIVERED] * 2 + [
        RecipientState.FAILED]
    assert len(done.attempts) == 4  # the record keeps every attempt
    assert q.list(live_only=True) == []
    assert [m.id for m in q.list()] == [qid]
    assert q.integrity_check() == ["ok"]


def test_purge_removes_only_records_finished_before_the_cutoff(q: SQLiteQueue) -> None:
    old, new, live = (q.enqueue(message(f"{n}@x.example")) for n in ("old", "new", "live"))
    items = {item.message.id: item for item in q.claim(time.time(), 10, 60)}
    q.record(items[old].recipients[0].id, attempt("delivered"))
    cutoff = time.time()
    time.sleep(0.01)
    q.record(items[new].recipients[0].id, attempt("failed", 550))
    assert q.purge(cutoff) == 1
    assert {m.id for m in q.list()} == {new, live}
    assert q.purge(time.time(), limit=0) == 0
    assert q.purge(time.time() + 1) == 1
    assert [m.id for m in q.list()] == [live]  # live mail is never purged
    assert q.purge(time.time() + 10**9) == 0


def test_queue_list_loads_no_server_part(tmp_path: Path) -> None:
    """`mailgate queue list` is a command people run in a loop (watch, scripts): it must
    not pay for what only the server needs. asyncio, the e-mail parser, socket, secrets'
    hashing, difflib, fractions and idna cost it about 30 ms of a ~140 ms start here; the
    settings classes of the whole server (config/values.py) and the code registry
    (for --lang) about 20 ms more: it reads only data_dir and [queue]; and `logging`
    (which concurrent.futures and the log formatters load) 5 ms."""
    data = tmp_path / "data"
    with SQLiteQueue(data / "queue.db") as q:
        qid = q.enqueue(message("carol@remote.example"))
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{data}"\n')
    probe = ("import runpy, sys\n"
             f"sys.argv = ['mailgate', 'queue', 'list', '--config', {str(config)!r}]\n"
             "try:\n    runpy.run_module('mailgate', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in ('asyncio', 'email.parser', 'socket', 'hashlib', "
             "'difflib', 'fractions', 'idna', 'mailgate.config.values', "
             "'mailgate.config.sections', 'mailgate.codes.registry', 'logging', 'json') "
             "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert qid in out and out.splitlines()[-1] == "[]", out


def test_the_cli_lists_live_mail_and_history_and_purges(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LiveServer(live_config(data)) as srv, smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
        c.sendmail("a@example.org", ["bob@localhost"], b"Subject: x\r\n\r\nx\r\n")
        wait_for_files(srv.maildir / "localhost" / "bob" / "new", 1)
    with SQLiteQueue(data / "queue.db") as q:
        wait_until("finished", lambda: q.list()[0].finished_at is not None or None)
        live = q.enqueue(message("carol@remote.example"))
    listed = json.loads(mailgate_cli(data, "queue", "list", "--format", "json").stdout)
    assert [m["id"] for m in listed["messages"]] == [live]
    history = json.loads(mailgate_cli(data, "queue", "list", "--all", "--format",
                                      "json").stdout)
    assert len(history["messages"]) == 2
    text = mailgate_cli(data, "queue", "list", "--all").stdout
    assert "delivered <bob@localhost>" in " ".join(text.split())
    done = next(m for m in history["messages"] if m["id"] != live)
    assert done["finished_at"] is not None
    shown = mailgate_cli(data, "queue", "show", done["id"]).stdout
    assert "finished " in shown and "content deleted" in shown and "headers" not in shown
    kept = mailgate_cli(data, "queue", "purge")  # keep_records: 7 days
    assert kept.returncode == 0 and kept.stdout == "0 finished message record(s) purged\n"
    gone = mailgate_cli(data, "queue", "purge", "--older-than", "0")
    assert gone.stdout == "1 finished message record(s) purged\n"
    history = json.loads(mailgate_cli(data, "queue", "list", "--all", "--format",
                                      "json").stdout)
    assert [m["id"] for m in history["messages"]] == [live]
    bad = mailgate_cli(data, "queue", "purge", "--older-than", "soon")
    assert bad.returncode == 2 and bad.stderr.startswith("mailgate: --older-than 'soon'")


def test_the_server_purges_records_past_keep_records(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "PURGE_EVERY", 0.1)
    config = dataclasses.replace(live_config(tmp_path / "data"),
                                 queue=QueueConfig(keep_records=0.0))
    with LiveServer(config) as srv, smtplib.SMTP("127.0.0.1", srv.port("mx")) as c:
        c.sendmail("a@example.org", ["bob@localhost"], b"Subject: x\r\n\r\nx\r\n")
        wait_for_files(srv.maildir / "localhost" / "bob" / "new", 1)
        with SQLiteQueue(config.data_dir / "queue.db") as q:
            wait_until("the record purged", lambda: q.list() == [] or None, 20)


# --------------------------------------------------------------------- streaming


def fill(q: SQLiteQueue, n: int) -> None:
    """n messages with two recipients each, through the group-committing writer."""
    async def go() -> None:
        for start in range(0, n, 1000):
            await asyncio.gather(*(q.enqueue_async(message(
                f"u{i}@a.example", f"u{i}@b.example", body=b"Subject: s\r\n\r\n" + b"x" * 500))
                for i in range(start, min(n, start + 1000))))
    asyncio.run(go())


def peak_while_listing(q: SQLiteQueue, limit: int) -> tuple[int, int]:
    """tracemalloc's peak while `queue list --format json` output is written to a sink
    that keeps nothing, and the number of bytes written."""
    written = 0
    tracemalloc.start()
    try:
        for piece in stream_list(q, limit, "json", live_only=False):
            written += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, written


def test_queue_list_streams_with_bounded_memory(tmp_path: Path) -> None:
    n = 12_000
    with SQLiteQueue(tmp_path / "queue.db") as q:
        fill(q, n)
        small_peak, small = peak_while_listing(q, 1_000)
        full_peak, full = peak_while_listing(q, 100_000_000)
        out = io.StringIO()
        for piece in stream_list(q, 100_000_000, "json", live_only=False):
            out.write(piece)
    listed = json.loads(out.getvalue())
    assert len(listed["messages"]) == n and listed["counts"]["queued"] == 2 * n
    assert full > 10 * small  # twelve times the output...
    # ...in about the memory of one page: a list built whole would hold 12,000 messages
    # (each some KB as objects, and again as text).
    assert full_peak < 2 * small_peak, (small_peak, full_peak)
    assert full_peak < 16 * 1024 * 1024


# --------------------------------------------------------------------- the admin and API


def test_the_admin_and_api_show_live_mail_unless_asked_for_history(
        admin_env: Env) -> None:  # noqa: F811  (the fixture imported above)
    env = admin_env
    done, live = env.enqueue(), env.enqueue()
    (item,) = [i for i in env.queue.claim(time.time(), 10, 60) if i.message.id == done]
    env.queue.record(item.recipients[0].id, attempt("delivered"))
    auth = _bearer(env)
    ids = [m["id"] for m in env.client.get("/api/queue", headers=auth).json()["messages"]]
    assert ids == [live]
    history = env.client.get("/api/queue?all=1", headers=auth).json()
    assert [m["id"] for m in history["messages"]] == [live, done]
    assert history["filters"]["all"] is True
    assert env.client.get("/api/queue?all=maybe", headers=auth).status_code == 400
    env.login()
    page = env.client.get("/admin/queue").text
    assert live in page and done not in page
    page = env.client.get("/admin/queue?all=on").text
    assert live in page and done in page and 'name="all" value="1" checked' in page


def test_a_version_3_queue_gets_its_finished_messages_finished(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "queue.db"
    with SQLiteQueue(db) as q:
        done, live = q.enqueue(message("a@x.example")), q.enqueue(message("b@x.example"))
    # Back to version 3, as an older mailgate left it: no finished_at, a delivered
    # message still holding its content.
    with sqlite3.connect(db) as conn:
        # (Version 5's kept counts go too.)
        for (trigger,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE state_counts")
        conn.execute("DROP TABLE activity_minutes")
        conn.execute("DROP INDEX messages_live")
        conn.execute("DROP INDEX messages_finished")
        conn.execute("ALTER TABLE messages DROP COLUMN finished_at")
        conn.execute("ALTER TABLE messages DROP COLUMN crlf")  # (version 6)
        conn.execute("UPDATE recipients SET state = 'delivered', updated_at = 1000.0 "
                     "WHERE address = 'a@x.example'")
        conn.execute("PRAGMA user_version = 3")
    with SQLiteQueue(db) as q:
        old = q.show(done, content=True)
        assert old.finished_at == 1000.0 and old.content is None
        assert q.show(live, content=True).content is not None
        assert [m.id for m in q.list(live_only=True)] == [live]
        assert q.purge(2000.0) == 1 and q.integrity_check() == ["ok"]
