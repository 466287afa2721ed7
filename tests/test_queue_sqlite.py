"""The SQLite queue: durability, group commit, full disks, claims and leases, many processes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest

from mailgate.queue import (
    Attempt,
    NewMessage,
    NewRecipient,
    NotFound,
    QueueError,
    QueueFull,
    RecipientState,
    WorkItem,
)
from mailgate.queue.spool import SpoolFile
from mailgate.queue.sqlite import SCHEMA_VERSION, SQLiteQueue, new_queue_id
from mailgate.queue.sqlite.rows import ClaimFloor, ClaimOp

QUEUED = RecipientState.QUEUED
DEFERRED = RecipientState.DEFERRED
HELD = RecipientState.HELD
DELIVERED = RecipientState.DELIVERED
FAILED = RecipientState.FAILED


def message(
    *recipients: str,
    sender: str = "alice@example.org",
    content: bytes = b"Subject: hi\r\n\r\nhello\r\n",
) -> NewMessage:
    return NewMessage(
        sender=sender,
        recipients=[NewRecipient(r) for r in recipients or ("bob@example.net",)],
        content=content,
        received_at=1_700_000_000.0,
        client_address="192.0.2.1",
        client_helo="client.example.org",
    )


def attempt(outcome: str, code: int = 250, text: str = "ok") -> Attempt:
    return Attempt(
        at=time.time(), host="mx.example.net[192.0.2.9]:25", code=code, enhanced="2.0.0",
        text=text, outcome=outcome,
    )


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


@pytest.fixture
def q(db: Path) -> Iterator[SQLiteQueue]:
    queue = SQLiteQueue(db)
    yield queue
    queue.close()


def raw_count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def count_calls_into(loop: asyncio.AbstractEventLoop) -> Callable[[], int]:
    """Count the loop's call_soon_threadsafe from now on: how many times a writer thread
    called into it. Returns the count, read when called."""
    calls = 0
    threadsafe = loop.call_soon_threadsafe

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return threadsafe(*args, **kwargs)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign,assignment]
    return lambda: calls


def blocked_writer(queue: SQLiteQueue) -> threading.Event:
    """Park the writer thread inside a batch until the event is set, so that everything
    submitted meanwhile lands together in the next batch."""
    gate = threading.Event()
    entered = threading.Event()

    def op(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    queue._submit(op, "wait")
    assert entered.wait(10)
    return gate


# ---------------------------------------------------------------------- ids and storage


def test_ids_are_short_file_safe_time_ordered_and_unique() -> None:
    ids = [new_queue_id(1_700_000_000.0 + i / 1000) for i in range(1000)]
    assert all(re.fullmatch(r"[0-9a-f]{22}", i) for i in ids)
    assert len(set(ids)) == 1000
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)


def test_enqueue_then_show_returns_everything(q: SQLiteQueue) -> None:
    msg = NewMessage(
        sender="alice@example.org",
        recipients=[
            NewRecipient("bob@Example.NET", orcpt="rfc822;bob@example.net",
                         notify=("SUCCESS", "FAILURE")),
            NewRecipient("carol@example.com", notify=("NEVER",)),
            NewRecipient("postmaster"),
        ],
        content=b"Subject: x\r\n\r\n\xe2\x82\xac\r\n",
        received_at=1_700_000_123.5,
        client_address="2001:db8::1",
        client_helo="mail.example.org",
        protocol="ESMTPSA",
        authenticated_as="alice",
        envid="env-1",
        ret="HDRS",
        smtputf8=True,
        body_8bit=True,
    )
    qid = q.enqueue(msg)
    shown = q.show(qid, content=True)
    assert shown.id == qid
    assert (shown.sender, shown.received_at, shown.size) == (msg.sender, msg.received_at, 19)
    assert (shown.client_address, shown.client_helo, shown.protocol) == (
        "2001:db8::1", "mail.example.org", "ESMTPSA")
    assert (shown.authenticated_as, shown.envid, shown.ret) == ("alice", "env-1", "HDRS")
    assert shown.smtputf8 and shown.body_8bit
    assert shown.content == msg.content
    assert [(r.address, r.orcpt, r.notify, r.state, r.attempts) for r in shown.recipients] == [
        ("bob@Example.NET", "rfc822;bob@example.net", ("SUCCESS", "FAILURE"), QUEUED, 0),
        ("carol@example.com", None, ("NEVER",), QUEUED, 0),
        ("postmaster", None, None, QUEUED, 0),
    ]
    assert all(r.message_id == qid and r.next_attempt is not None for r in shown.recipients)
    assert q.show(qid).content is None


def test_message_without_recipients_is_refused(q: SQLiteQueue) -> None:
    with pytest.raises(QueueError, match="no recipients"):
        q.enqueue(NewMessage(sender="", recipients=[], content=b"x", received_at=0.0))


def test_durable_across_reopen(db: Path) -> None:
    with SQLiteQueue(db) as first:
        ids = [first.enqueue(message(f"u{i}@example.net")) for i in range(5)]
    with SQLiteQueue(db) as second:
        assert [m.id for m in second.list()] == ids[::-1]
        assert second.show(ids[2], content=True).content == message().content
        assert second.integrity_check() == ["ok"]


def test_pragmas_and_schema_version(q: SQLiteQueue, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(db: Path) -> None:
    SQLiteQueue(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(QueueError, match="schema version"):
        SQLiteQueue(db)


# The schema of version 1, as the release before delay notices created it: a file it wrote
# must open in this one with all its mail.
SCHEMA_V1 = (
    """CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        sender TEXT NOT NULL,
        received_at REAL NOT NULL,
        queued_at REAL NOT NULL,
        size INTEGER NOT NULL,
        client_address TEXT NOT NULL,
        client_helo TEXT NOT NULL,
        protocol TEXT NOT NULL,
        authenticated_as TEXT,
        envid TEXT,
        ret TEXT,
        smtputf8 INTEGER NOT NULL,
        body_8bit INTEGER NOT NULL
    )""",
    "CREATE INDEX messages_sender ON messages (sender COLLATE NOCASE, seq)",
    """CREATE TABLE contents (
        seq INTEGER PRIMARY KEY REFERENCES messages (seq) ON DELETE CASCADE,
        content BLOB NOT NULL
    )""",
    """CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        msg_seq INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        orcpt TEXT,
        notify TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL,
        due_at REAL,
        last_code INTEGER,
        last_enhanced TEXT,
        last_text TEXT,
        claim_token TEXT,
        claim_until REAL,
        updated_at REAL NOT NULL
    )""",
    "CREATE INDEX recipients_due ON recipients (due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX recipients_message ON recipients (msg_seq)",
    "CREATE INDEX recipients_state ON recipients (state, msg_seq)",
    "CREATE INDEX recipients_domain ON recipients (domain, msg_seq)",
    "CREATE INDEX recipients_domain_due ON recipients (domain, due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX recipients_claim ON recipients (claim_token) WHERE claim_token IS NOT NULL",
    """CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        recipient_id INTEGER NOT NULL REFERENCES recipients (id) ON DELETE CASCADE,
        at REAL NOT NULL,
        host TEXT NOT NULL,
        code INTEGER NOT NULL,
        enhanced TEXT,
        text TEXT NOT NULL,
        outcome TEXT NOT NULL,
        remote INTEGER NOT NULL,
        tls TEXT
    )""",
    "CREATE INDEX attempts_recipient ON attempts (recipient_id)",
)


def write_v1_queue(db: Path, now: float) -> None:
    """A queue file as version 1 left it: one message from alice, to bob (deferred after
    one attempt, due at `now`) and carol (queued), rows written as that release wrote them."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in SCHEMA_V1:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO messages (seq, id, sender, received_at, queued_at, size, "
            "client_address, client_helo, protocol, authenticated_as, envid, ret, smtputf8, "
            "body_8bit) VALUES (1, '018f0000000aabbcc', 'alice@example.org', ?, ?, 24, "
            "'192.0.2.1', 'client.example.org', 'ESMTPS', 'alice', 'env-1', 'HDRS', 0, 0)",
            (now - 7200, now - 7200))
        conn.execute("INSERT INTO contents (seq, content) VALUES "
                     "(1, CAST('Subject: hi\r\n\r\nhello\r\n' AS BLOB))")
        conn.execute(
            "INSERT INTO recipients (id, msg_seq, address, domain, orcpt, notify, state, "
            "attempts, next_attempt, due_at, last_code, last_enhanced, last_text, "
            "updated_at) VALUES (1, 1, 'bob@example.net', 'example.net', "
            "'rfc822;bob@example.net', 'FAILURE,DELAY', 'deferred', 1, ?, ?, 450, '4.2.1', "
            "'Mailbox busy', ?)", (now, now, now - 3600))
        conn.execute(
            "INSERT INTO recipients (id, msg_seq, address, domain, state, next_attempt, "
            "due_at, updated_at) VALUES (2, 1, 'carol@example.com', 'example.com', "
            "'queued', ?, ?, ?)", (now, now, now - 7200))
        conn.execute(
            "INSERT INTO attempts (recipient_id, at, host, code, enhanced, text, outcome, "
            "remote, tls) VALUES (1, ?, 'mx.example.net[192.0.2.9]:25', 450, '4.2.1', "
            "'Mailbox busy', 'deferred', 1, NULL)", (now - 3600,))
        conn.execute("PRAGMA user_version = 1")


def test_a_version_1_queue_is_migrated_and_keeps_its_mail(db: Path) -> None:
    now = time.time()
    write_v1_queue(db, now)
    with SQLiteQueue(db) as queue:
        m = queue.show("018f0000000aabbcc", content=True)
        assert (m.sender, m.received_at, m.size, m.protocol, m.authenticated_as) == (
            "alice@example.org", now - 7200, 24, "ESMTPS", "alice")
        assert (m.envid, m.ret, m.content) == ("env-1", "HDRS", b"Subject: hi\r\n\r\nhello\r\n")
        bob, carol = m.recipients
        assert (bob.address, bob.state, bob.attempts, bob.orcpt, bob.notify) == (
            "bob@example.net", DEFERRED, 1, "rfc822;bob@example.net", ("FAILURE", "DELAY"))
        assert (bob.last_code, bob.last_enhanced, bob.last_text) == (450, "4.2.1", "Mailbox busy")
        assert (carol.address, carol.state, carol.attempts) == ("carol@example.com", QUEUED, 0)
        assert bob.delay_notified is False and carol.delay_notified is False
        [(rid, old)] = m.attempts
        assert (rid, old.code, old.outcome, old.remote) == (bob.id, 450, "deferred", True)
        # The old rows work as new ones do: claimed, recorded, marked.
        (item,) = queue.claim(now, limit=10, lease=60)
        assert [r.id for r in item.recipients] == [bob.id, carol.id]
        assert not any(r.delay_notified for r in item.recipients)
        assert queue.mark_delay_notified([bob.id]) == [bob.id]
        queue.record(carol.id, attempt("delivered"), claim_token=item.claim_token)
        assert [(r.state, r.delay_notified) for r in queue.show(m.id).recipients] == [
            (DEFERRED, True), (DELIVERED, False)]
        assert queue.integrity_check() == ["ok"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6


def test_a_version_5_file_gets_the_crlf_column_and_its_mail_is_checked(db: Path) -> None:
    with SQLiteQueue(db) as queue:
        old = queue.enqueue(replace(message(), crlf=True))
    with sqlite3.connect(db) as conn:  # as a mailgate of version 5 left it
        conn.execute("ALTER TABLE messages DROP COLUMN crlf")
        conn.execute("PRAGMA user_version = 5")
    with SQLiteQueue(db) as queue:
        assert queue.show(old, content=True).crlf is False  # unknown: checked, as before
        new = queue.enqueue(replace(message(), crlf=True))
        assert queue.show(new).crlf is True
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6


def test_a_migrated_file_has_the_tables_of_a_new_one(tmp_path: Path) -> None:
    write_v1_queue(tmp_path / "old.db", time.time())
    for name in ("old.db", "new.db"):
        SQLiteQueue(tmp_path / name).close()

    def columns(name: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(tmp_path / name) as conn:
            return [tuple(row) for table in ("messages", "contents", "recipients", "attempts",
                                  "owners")
                    for row in conn.execute(f"PRAGMA table_info({table})")]

    assert columns("old.db") == columns("new.db")


def test_mark_delay_notified_sets_the_flag_once(q: SQLiteQueue) -> None:
    qid = q.enqueue(message("a@example.net", "b@example.net", "c@example.net"))
    a, b, c = q.show(qid).recipients
    assert not any(r.delay_notified for r in (a, b, c))
    assert q.mark_delay_notified([]) == []
    assert q.mark_delay_notified([b.id, a.id, 99999]) == [a.id, b.id]  # unknown ids: left out
    # Whoever marks second gets nothing back: it must not send a second notice.
    assert q.mark_delay_notified([a.id, b.id]) == []
    assert asyncio.run(q.mark_delay_notified_async([b.id, c.id])) == [c.id]
    assert [r.delay_notified for r in q.show(qid).recipients] == [True, True, True]
    (item,) = q.claim(time.time(), limit=1, lease=60)
    assert all(r.delay_notified for r in item.recipients)


def test_closed_queue_refuses_work_and_close_is_idempotent(db: Path) -> None:
    queue = SQLiteQueue(db)
    queue.close()
    queue.close()
    with pytest.raises(QueueError, match="closed"):
        queue.enqueue(message())
    with pytest.raises(QueueError, match="closed"):
        queue.list()


def test_close_finishes_writes_already_asked_for(db: Path) -> None:
    queue = SQLiteQueue(db)
    gate = blocked_writer(queue)
    futures = [queue._submit(queue._enqueue_op(message()), "queue") for _ in range(10)]
    threading.Timer(0.05, gate.set).start()
    queue.close()
    ids = [f.result(0) for f in futures]
    with SQLiteQueue(db) as again:
        assert {m.id for m in again.list()} == set(ids)


# ---------------------------------------------------------------------- crash safety

CHILD = textwrap.dedent(
    """
    import sys, threading
    from mailgate.queue import NewMessage, NewRecipient
    from mailgate.queue.sqlite import SQLiteQueue

    queue = SQLiteQueue(sys.argv[1])
    lock = threading.Lock()

    def loop(n):
        i = 0
        while True:
            i += 1
            qid = queue.enqueue(NewMessage(
                sender="a@example.org", recipients=[NewRecipient(f"t{n}-{i}@example.net")],
                content=b"x" * 3000, received_at=0.0))
            with lock:
                print(qid, flush=True)

    for n in range(4):
        threading.Thread(target=loop, args=(n,), daemon=True).start()
    threading.Event().wait()
    """
)


def test_sigkill_mid_enqueue_loses_nothing_acknowledged(db: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    printed = []
    for line in child.stdout:
        printed.append(line.strip())
        if len(printed) == 300:
            break
    os.kill(child.pid, signal.SIGKILL)
    printed += [line.strip() for line in child.stdout]  # acknowledged before the kill
    child.wait()
    assert child.returncode == -signal.SIGKILL
    with SQLiteQueue(db) as queue:
        assert queue.integrity_check() == ["ok"]
        stored = {m.id for m in queue.list(limit=1_000_000)}
        assert set(printed) <= stored
        # Every stored message is whole: recipients and content went in with it.
        assert raw_count(db, "contents") == raw_count(db, "messages") == len(stored)
        assert raw_count(db, "recipients") == len(stored)


# ---------------------------------------------------------------------- group commit


def test_the_crlf_flag_is_stored_with_the_message(q: SQLiteQueue, tmp_path: Path) -> None:
    """`NewMessage.crlf` (content known to be CRLF throughout, so delivery skips its
    check) comes back as stored, by every way a message goes in: alone, in a batch of
    several, and from a spool file past its memory buffer. False is the default: a
    message nobody vouched for is checked at delivery, as before."""
    alone = {q.enqueue(replace(message("a@example.net"), crlf=flag)): flag
             for flag in (True, False)}

    async def batch() -> dict[str, bool]:
        flags = [i % 2 == 0 for i in range(8)]
        ids = await asyncio.gather(*(q.enqueue_async(replace(message(f"b{i}@example.net"),
                                                            crlf=f))
                                     for i, f in enumerate(flags)))
        return dict(zip(ids, flags, strict=True))

    together = asyncio.run(batch())
    spilled = {}
    for flag in (True, False):
        spool = SpoolFile(tmp_path, f"big{flag}")
        spool.write(b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" * 4000)
        spool.write(b"y" * 300_000 + b"\r\n")
        spool.finish()
        assert spool.spilled
        spilled[q.enqueue(replace(message("c@example.net"), content=b"", spool=spool,
                                  crlf=flag))] = flag
        spool.discard()
    default = q.enqueue(message("d@example.net"))
    assert message("d@example.net").crlf is False
    for qid, flag in {**alone, **together, **spilled, default: False}.items():
        assert q.show(qid).crlf is flag, qid
    claimed = {item.message.id: item.message.crlf
               for item in q.claim(time.time() + 1, limit=100, lease=60)}
    assert claimed == {**alone, **together, **spilled, default: False}


def test_concurrent_async_enqueues_share_commits(q: SQLiteQueue) -> None:
    before = q.commit_count

    async def main() -> list[str]:
        return await asyncio.gather(
            *(q.enqueue_async(message(f"u{i}@example.net")) for i in range(50))
        )

    ids = asyncio.run(main())
    assert len(set(ids)) == 50
    commits = q.commit_count - before
    assert 1 <= commits <= 10
    assert q.committed_requests >= 50
    assert {m.id for m in q.list()} == set(ids)


def test_concurrent_thread_enqueues_share_commits(q: SQLiteQueue) -> None:
    gate = blocked_writer(q)
    before = q.commit_count
    with ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(q.enqueue, message()) for _ in range(40)]
        deadline = time.monotonic() + 10
        while q._requests.qsize() < 40 and time.monotonic() < deadline:
            time.sleep(0.001)
        gate.set()
        ids = [f.result() for f in futures]
    assert len(set(ids)) == 40
    assert q.commit_count - before == 2  # the parked batch, then one for all 40


def test_cancelled_async_enqueue_stores_nothing(q: SQLiteQueue) -> None:
    async def main() -> None:
        gate = blocked_writer(q)
        task = asyncio.create_task(q.enqueue_async(message()))
        await asyncio.sleep(0)  # the request is now waiting behind the parked batch
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        await q.enqueue_async(message("after@example.net"))

    asyncio.run(main())
    assert [r.address for m in q.list() for r in m.recipients] == ["after@example.net"]


def test_a_batch_of_async_writes_is_answered_with_one_call_into_the_loop(
        q: SQLiteQueue) -> None:
    """Twenty enqueues parked behind one batch commit together, and the writer hands
    their answers to the event loop in one call, not twenty."""
    async def main() -> list[str]:
        gate = blocked_writer(q)
        calls = count_calls_into(asyncio.get_running_loop())
        tasks = [asyncio.create_task(q.enqueue_async(message(f"u{i}@example.net")))
                 for i in range(20)]
        await asyncio.sleep(0)  # every request is queued behind the parked batch
        gate.set()
        ids = await asyncio.gather(*tasks)
        assert calls() == 1, calls()
        return ids

    ids = asyncio.run(main())
    assert {m.id for m in q.list()} == set(ids) and len(ids) == 20


def test_async_writes_of_one_batch_fail_alone(db: Path) -> None:
    """A message too big for the space left fails its own caller; the others of the
    batch get their ids, each on its own event loop (two threads share the queue)."""
    with SQLiteQueue(db, max_page_count=60) as queue:
        gate = blocked_writer(queue)
        submitted = threading.Barrier(3)
        answers: dict[str, object] = {}

        def caller(name: str, content: bytes) -> None:
            async def main() -> None:
                task = asyncio.create_task(queue.enqueue_async(message(
                    f"{name}@example.net", content=content)))
                await asyncio.sleep(0)
                submitted.wait(10)
                try:
                    answers[name] = await task
                except QueueFull as exc:
                    answers[name] = exc
            asyncio.run(main())

        threads = [threading.Thread(target=caller, args=("small", b"hi\r\n")),
                   threading.Thread(target=caller, args=("huge", b"z" * 1_000_000))]
        for t in threads:
            t.start()
        submitted.wait(10)
        commits = queue.commit_count
        gate.set()
        for t in threads:
            t.join(10)
        assert isinstance(answers["huge"], QueueFull), answers
        assert [m.id for m in queue.list()] == [answers["small"]]
        assert queue.commit_count == commits + 2  # the parked batch, then both
        assert queue.integrity_check() == ["ok"]


def test_a_caller_whose_loop_closed_does_not_stop_the_writer(q: SQLiteQueue) -> None:
    """The loop that asked is gone when the batch commits (a thread that ran asyncio and
    ended): its answer has nowhere to go, and the next writes are served as before."""
    gate = blocked_writer(q)
    loop = asyncio.new_event_loop()

    async def ask() -> asyncio.Task[str]:
        task = asyncio.ensure_future(q.enqueue_async(message("orphan@example.net")))
        await asyncio.sleep(0)  # the request is in the writer's queue
        return task

    loop.run_until_complete(ask())
    with contextlib.suppress(Exception):  # it complains of the pending task: it was
        loop.close()
    gate.set()
    # (The first may share the orphan's batch, answered before the hand-over.)
    for name in ("next", "then"):
        q._submit(q._enqueue_op(message(f"{name}@example.net")), "queue").result(10)
    addresses = sorted(r.address for m in q.list() for r in m.recipients)
    assert addresses == ["next@example.net", "orphan@example.net", "then@example.net"]


# ---------------------------------------------------------------------- full storage


def test_full_database_raises_queuefull_and_recovers(db: Path) -> None:
    big = b"y" * 20_000
    with SQLiteQueue(db, max_page_count=120) as queue:
        stored: list[str] = []
        with pytest.raises(QueueFull, match="database or disk is full"):
            for _ in range(1000):
                stored.append(queue.enqueue(message(content=big)))
        assert len(stored) > 3
        assert queue.integrity_check() == ["ok"]
        assert {m.id for m in queue.list(limit=1000)} == set(stored)
        assert all(queue.show(i, content=True).content == big for i in stored)
        # A small message may still fit; a big one does not, and it harms nothing.
        with pytest.raises(QueueFull):
            queue.enqueue(message(content=big * 3))
        for qid in stored[:3]:
            queue.delete(qid)
        again = queue.enqueue(message(content=big))
        assert queue.show(again, content=True).content == big
        assert queue.integrity_check() == ["ok"]


def test_one_message_too_big_fails_alone_in_its_batch(db: Path) -> None:
    with SQLiteQueue(db, max_page_count=60) as queue:
        gate = blocked_writer(queue)
        small1 = queue._submit(queue._enqueue_op(message("one@example.net")), "queue")
        huge = queue._submit(queue._enqueue_op(message(content=b"z" * 1_000_000)), "queue")
        small2 = queue._submit(queue._enqueue_op(message("two@example.net")), "queue")
        commits = queue.commit_count
        gate.set()
        ids = [small1.result(10), small2.result(10)]
        with pytest.raises(QueueFull):
            huge.result(10)
        assert queue.commit_count == commits + 2  # the parked batch, then the three
        assert {m.id for m in queue.list()} == set(ids)
        assert queue.integrity_check() == ["ok"]


# ---------------------------------------------------------------------- claims


def test_claim_record_and_schedule(q: SQLiteQueue) -> None:
    qid = q.enqueue(message("a@example.net", "b@example.net", "c@example.com"))
    now = time.time()
    (item,) = q.claim(now, limit=10, lease=60)
    assert item.message.id == qid and item.message.content == message().content
    assert [r.address for r in item.recipients] == ["a@example.net", "b@example.net",
                                                    "c@example.com"]
    assert q.claim(now, limit=10, lease=60) == []  # claimed work is not due
    a, b, c = item.recipients
    q.record(a.id, attempt("delivered"), claim_token=item.claim_token)
    q.record(b.id, attempt("deferred", 451, "try later"), next_attempt=now + 100,
             claim_token=item.claim_token)
    q.record(c.id, attempt("failed", 550, "no such user"), claim_token=item.claim_token)
    shown = q.show(qid)
    assert [(r.state, r.attempts, r.last_code) for r in shown.recipients] == [
        (DELIVERED, 1, 250), (DEFERRED, 1, 451), (FAILED, 1, 550)]
    assert shown.recipients[1].next_attempt == now + 100
    assert shown.recipients[1].last_text == "try later"
    assert [(rid, at.outcome) for rid, at in shown.attempts] == [
        (a.id, "delivered"), (b.id, "deferred"), (c.id, "failed")]
    assert q.claim(now + 50, limit=10, lease=60) == []
    (again,) = q.claim(now + 101, limit=10, lease=60)
    assert [r.id for r in again.recipients] == [b.id]
    assert len(again.message.recipients) == 3  # the whole message, for DSNs
    assert q.counts() == {"queued": 0, "deferred": 1, "held": 0, "delivered": 1, "failed": 1}


def test_a_delivered_message_s_content_is_not_written_again_as_zeros(
        q: SQLiteQueue, db: Path) -> None:
    """secure_delete is FAST whatever SQLite's build says (Debian's says ON): deleting a
    finished message's content frees its pages without writing them again as zeros. With
    ON, the commit of a 200 KiB message's last delivery wrote 65 pages into the WAL (its
    50 pages of content again, as zeros); it now writes 17."""
    assert q._call(lambda conn: int(conn.execute("PRAGMA secure_delete").fetchone()[0]),
                   "look") == 2  # FAST
    body = b"Subject: big\r\n\r\n" + b"x" * 78 * 2600 + b"\r\n"
    qid = q.enqueue(message("a@example.net", content=body))
    (item,) = q.claim(time.time(), limit=10, lease=60)
    wal = db.with_name(db.name + "-wal")
    before = wal.stat().st_size
    q.record(item.recipients[0].id, attempt("delivered"), claim_token=item.claim_token)
    assert q.show(qid, content=True).content is None  # deleted with the last outcome
    frames = (wal.stat().st_size - before) // (4096 + 24)
    assert 0 < frames < 30, frames


@pytest.mark.parametrize("mode", ["fast", "on"])
def test_secure_delete_on_leaves_no_delivered_content_in_the_file(
        tmp_path: Path, mode: str) -> None:
    """`[queue] secure_delete = "on"`: once delivered, a message's content is nowhere in
    queue.db, the free pages it leaves included. With "fast" (the default) those pages
    keep it until the next messages reuse them (docs/security.md)."""
    db = tmp_path / "queue.db"
    marker = b"MARKER-7f3a9c-"
    body = b"Subject: secret\r\n\r\n" + (marker + b"x" * 60 + b"\r\n") * 3000
    q = SQLiteQueue(db, secure_delete=mode)
    try:
        assert q._call(lambda conn: int(conn.execute("PRAGMA secure_delete").fetchone()[0]),
                       "look") == {"fast": 2, "on": 1}[mode]
        q.enqueue(message("a@example.net", content=body))
        (item,) = q.claim(time.time(), limit=10, lease=60)
        q.record(item.recipients[0].id, attempt("delivered"), claim_token=item.claim_token)
    finally:
        q.close()  # the last connection: its checkpoint copies everything into queue.db
    assert not Path(f"{db}-wal").exists()
    assert (marker in db.read_bytes()) is (mode == "fast")


def test_claims_commit_without_their_own_fsync_and_promises_with_one(q: SQLiteQueue) -> None:
    """A claim is a lease, not a promise: lost in a power failure, its work is simply due
    again. So a batch of claims alone commits at synchronous=NORMAL (no fsync of its own;
    the next durable commit syncs its frames too), and any batch holding an enqueue or a
    record commits at FULL."""
    statements: list[str] = []
    q._call(lambda conn: conn.set_trace_callback(statements.append), "trace")

    def before_last_begin() -> str:
        begin = len(statements) - 1 - statements[::-1].index("BEGIN IMMEDIATE")
        return statements[begin - 1]

    def level(durable: bool) -> Future[int]:
        return q._submit(lambda conn: int(conn.execute("PRAGMA synchronous").fetchone()[0]),
                         "look", durable=durable)

    qid = q.enqueue(message("a@example.net"))
    assert "PRAGMA synchronous = NORMAL" not in statements
    (item,) = q.claim(time.time(), limit=10, lease=60)
    assert before_last_begin() == "PRAGMA synchronous = NORMAL"
    assert level(durable=False).result() == 1  # NORMAL
    q.record(item.recipients[0].id, attempt("delivered"), claim_token=item.claim_token)
    assert before_last_begin() == "PRAGMA synchronous = FULL"
    assert level(durable=True).result() == 2  # FULL
    # Mixed in one batch with a durable write, a claim commits at FULL as well.
    gate = blocked_writer(q)
    mixed = [level(durable=False), level(durable=True), level(durable=False)]
    gate.set()
    assert [f.result() for f in mixed] == [2, 2, 2]
    assert q.show(qid).recipients[0].state == DELIVERED
    q._call(lambda conn: conn.set_trace_callback(None), "stop tracing")


def test_a_claim_reads_its_messages_after_its_commit(q: SQLiteQueue, db: Path) -> None:
    """The claim's write (the UPDATEs that take the recipients) holds the write lock; the
    messages it took are read afterwards, in a read transaction of their own, so another
    process's enqueue is not kept waiting while their rows and contents are read."""
    statements: list[str] = []
    q._call(lambda conn: conn.set_trace_callback(statements.append), "trace")
    qid = q.enqueue(message("a@example.net", content=b"Subject: x\r\n\r\nbody\r\n"))
    statements.clear()
    (item,) = q.claim(time.time(), limit=10, lease=60)
    q._call(lambda conn: conn.set_trace_callback(None), "stop tracing")
    assert item.message.id == qid and item.message.content is not None
    assert [r.address for r in item.recipients] == ["a@example.net"]
    commit = statements.index("COMMIT")
    update = next(i for i, st in enumerate(statements) if st.startswith("UPDATE recipients"))
    content = next(i for i, st in enumerate(statements) if "FROM contents" in st)
    assert update < commit < content
    assert statements[content + 1:].count("ROLLBACK") == 1  # the read transaction, ended
    # A message deleted between the claim's commit and that read is left out.
    seq = q._read("seq", lambda conn: conn.execute(
        "SELECT seq FROM messages WHERE id = ?", (qid,)).fetchone()[0])
    claimed = {seq: (item.claim_token, {item.recipients[0].id}), seq + 1000: ("t", {1})}
    items = q._read("load", lambda conn: ClaimOp.after_commit(conn, claimed))
    assert [i.message.id for i in items] == [qid]


def test_after_commit_reads_in_its_own_snapshot_and_its_failure_is_the_callers(
        q: SQLiteQueue) -> None:
    """An op's `after_commit` runs once the write is committed (the lock free), in a read
    transaction; if it fails, its caller gets the error (the write stays done) and the
    writer goes on."""

    class Write:
        def __init__(self, value: int, fail: bool = False) -> None:
            self.value, self.fail = value, fail

        def __call__(self, conn: sqlite3.Connection) -> int:
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            conn.execute("INSERT INTO t VALUES (?)", (self.value,))
            return self.value

        def after_commit(self, conn: sqlite3.Connection, value: int) -> tuple[bool, int]:
            if self.fail:
                raise ValueError("the read failed")
            return conn.in_transaction, conn.execute("SELECT sum(x) FROM t").fetchone()[0]

    def call(op: Write) -> object:  # the caller gets after_commit's value, not the op's
        return q._call(cast(Any, op), "write")

    assert call(Write(2)) == (True, 2)
    with pytest.raises(ValueError, match="the read failed"):
        call(Write(3, fail=True))
    # 3 was written all the same; and the failed read's transaction was ended, or this
    # write's BEGIN would have failed inside it.
    assert call(Write(4)) == (True, 9)


def test_a_claim_that_finds_nothing_due_takes_no_write_lock(q: SQLiteQueue) -> None:
    """A worker claims at every wake-up, and most find nothing: those read the due index
    and answer, with no write transaction (which another process's enqueue would wait
    for). One that finds work claims it as before."""
    statements: list[str] = []
    q._call(lambda conn: conn.set_trace_callback(statements.append), "trace")
    now = time.time()
    assert q.claim(now, limit=10, lease=60) == []
    assert asyncio.run(q.claim_async(now, 10, 60, exclude_domains=["example.net"])) == []
    assert "BEGIN IMMEDIATE" not in statements
    q.enqueue(message("a@example.net"))
    statements.clear()
    assert asyncio.run(q.claim_async(time.time(), 10, 60, ["example.com"])) == []
    assert "BEGIN IMMEDIATE" not in statements
    (item,) = asyncio.run(q.claim_async(time.time(), 10, 60, ["example.net"]))
    assert [r.address for r in item.recipients] == ["a@example.net"]
    assert "BEGIN IMMEDIATE" in statements
    assert q.claim(time.time(), limit=10, lease=60) == []  # claimed: not due
    q._call(lambda conn: conn.set_trace_callback(None), "stop tracing")


def test_a_claim_walks_the_due_index_once_from_the_first_row_it_can_take(
        q: SQLiteQueue) -> None:
    """A destination left out of the claim (full) may hold thousands of due rows before
    the others'. The read before the claim finds the first row the claim can take, and
    the claim's walk starts there instead of passing all of them a second time."""
    statements: list[str] = []
    for i in range(30):
        q.enqueue(message(f"s{i}@slow.example"))
    fast = q.enqueue(message("a@fast.example"))
    q._call(lambda conn: conn.set_trace_callback(statements.append), "trace")
    items = q.claim(time.time(), 10, 60, None, ["slow.example"], per_domain=5)
    q._call(lambda conn: conn.set_trace_callback(None), "stop tracing")
    assert [i.message.id for i in items] == [fast]
    walks = [s for s in statements if s.startswith("SELECT domain FROM recipients")]
    assert walks and all("BETWEEN" in s for s in walks), walks


def test_expired_lease_makes_work_due_again(q: SQLiteQueue) -> None:
    q.enqueue(message())
    now = time.time()
    (first,) = q.claim(now, limit=1, lease=10)
    assert q.claim(now + 9, limit=1, lease=10) == []
    (second,) = q.claim(now + 11, limit=1, lease=10)  # the first worker "crashed"
    assert second.claim_token != first.claim_token
    rid = second.recipients[0].id
    # The first worker turns out to be alive and defers; the second still holds its claim.
    q.record(rid, attempt("deferred", 421), next_attempt=now + 12, claim_token=first.claim_token)
    assert q.claim(now + 15, limit=1, lease=10) == []
    q.record(rid, attempt("delivered"), claim_token=second.claim_token)
    assert q.claim(now + 1000, limit=1, lease=10) == []
    assert q.show(second.message.id).recipients[0].attempts == 2


def test_final_state_is_not_undone_by_a_late_report(q: SQLiteQueue) -> None:
    q.enqueue(message())
    (item,) = q.claim(time.time(), limit=1, lease=60)
    rid = item.recipients[0].id
    q.record(rid, attempt("delivered"))
    q.record(rid, attempt("deferred", 421), next_attempt=time.time())
    assert q.show(item.message.id).recipients[0].state is DELIVERED
    assert q.claim(time.time() + 10, limit=1, lease=60) == []


def test_release_gives_work_back(q: SQLiteQueue) -> None:
    q.enqueue(message())
    now = time.time()
    (item,) = q.claim(now, limit=1, lease=600)
    q.release(item.claim_token)
    (again,) = q.claim(now, limit=1, lease=600)
    assert again.recipients[0].attempts == 0


def test_claim_takes_oldest_due_messages_up_to_limit(q: SQLiteQueue) -> None:
    ids = [q.enqueue(message(f"u{i}@example.net")) for i in range(5)]
    now = time.time()
    items = q.claim(now, limit=2, lease=60)
    assert [i.message.id for i in items] == ids[:2]
    assert len({i.claim_token for i in items}) == 2
    assert [i.message.id for i in q.claim(now, limit=10, lease=60)] == ids[2:]
    assert q.claim(now, limit=0, lease=60) == []


def backdate(db: Path, qid: str, seconds: float) -> None:
    """Make a message's recipients due `seconds` ago, as another process's write could."""
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE recipients SET next_attempt = ?, due_at = CASE WHEN due_at "
                     "IS NOT NULL THEN ? END WHERE msg_seq = (SELECT seq FROM messages "
                     "WHERE id = ?)", (time.time() - seconds,) * 2 + (qid,))


def test_claims_start_past_a_left_out_backlog_and_still_find_what_comes_before(
        q: SQLiteQueue, db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ClaimFloor: a claim leaving out a full destination starts its walk of the due
    index where the last look found the first row it could take (less a margin), not
    past the destination's whole backlog again. What a walk from there would miss is
    found all the same: a domain no longer left out, a claim given back, and (within
    ClaimFloor.TTL) a row another process put further back in time."""
    backlog = [q.enqueue(message(f"u{i}@full.example")) for i in range(20)]
    for qid in backlog:
        backdate(db, qid, 3600)
    full = ["full.example"]
    assert q.claim(time.time(), limit=10, lease=60, exclude_domains=full) == []
    late = q.enqueue(message("a@other.example"))
    backdate(db, late, 600)  # as if another process had put it back
    assert q.claim(time.time(), limit=10, lease=60, exclude_domains=full) == []
    # Other destinations full or free again change nothing: only full.example's rows
    # lie before the floor.
    busy = [*full, "busy.example"]
    assert q.claim(time.time(), limit=10, lease=60, exclude_domains=busy) == []
    assert q.claim(time.time(), limit=10, lease=60, exclude_domains=full) == []
    monkeypatch.setattr(ClaimFloor, "TTL", 0.0)  # the last whole walk was too long ago
    [item] = q.claim(time.time(), limit=10, lease=60, exclude_domains=full)
    assert item.message.id == late
    monkeypatch.undo()
    # A claim given back is due at its own next_attempt, long past: found at once.
    assert q.claim(time.time(), limit=10, lease=60, exclude_domains=full) == []
    q.release(item.claim_token)
    [again] = q.claim(time.time(), limit=10, lease=60, exclude_domains=full)
    assert again.message.id == late
    # A destination left out while the floor moved past its row is a blocker too: free
    # again, it gets its row at once.
    monkeypatch.setattr(ClaimFloor, "MARGIN", 0.0)
    assert q.claim(time.time(), limit=10, lease=60, exclude_domains=full) == []
    slow = q.enqueue(message("b@slow.example"))
    time.sleep(0.01)
    assert q.claim(time.time(), limit=10, lease=60,
                   exclude_domains=[*full, "slow.example"]) == []
    [item] = q.claim(time.time(), limit=10, lease=60, exclude_domains=full)
    assert item.message.id == slow
    # The destination is no longer full: its backlog comes at once (a whole walk).
    assert q.claim(time.time(), limit=10, lease=60, exclude_domains=full) == []
    got = q.claim(time.time(), limit=5, lease=60)
    assert [i.message.id for i in got] == backlog[:5]


def test_claim_by_destination_takes_each_domain_s_due_messages_together(
        q: SQLiteQueue) -> None:
    """`per_domain`: domains in the order their first message came due, each with up to
    that many of its messages at once, though they arrived interleaved with the others';
    the last domain's share is not cut at `limit`, and excluded domains stay queued."""
    ids: dict[str, list[str]] = {d: [] for d in ("a.test", "b.test", "c.test", "d.test")}
    for i in range(5):
        for domain, queued in ids.items():
            queued.append(q.enqueue(message(f"u{i}@{domain}")))
    now = time.time() + 1

    def taken(items: list[WorkItem]) -> list[tuple[str, str]]:
        return [(i.recipients[0].address.partition("@")[2], i.message.id) for i in items]

    first = q.claim(now, limit=6, lease=60, per_domain=4)
    assert taken(first) == [("a.test", m) for m in ids["a.test"][:4]] + [
        ("b.test", m) for m in ids["b.test"][:4]]
    second = q.claim(now, limit=6, lease=60, exclude_domains=["c.test"], per_domain=4)
    assert taken(second) == [("d.test", m) for m in ids["d.test"][:4]] + [
        ("a.test", ids["a.test"][4]), ("b.test", ids["b.test"][4])]
    # Without per_domain, arrival order as ever.
    rest = q.claim(now, limit=100, lease=60)
    assert [i.message.id for i in rest] == ids["c.test"] + [ids["d.test"][4]]
    assert q.claim(now, limit=100, lease=60, per_domain=4) == []


def test_claim_by_destination_looks_past_a_domain_holding_most_of_the_work(
        q: SQLiteQueue) -> None:
    """A destination with far more due work than one share (a slow one, its slots all
    in use) cannot fill the claim: the next domains come in the same claim."""
    for i in range(600):
        q.enqueue(message(f"u{i}@big.test"))
    small = [q.enqueue(message(f"v{i}@small.test")) for i in range(3)]
    now = time.time() + 1
    items = q.claim(now, limit=50, lease=60, per_domain=10)
    domains = [i.recipients[0].address.partition("@")[2] for i in items]
    assert domains == ["big.test"] * 10 + ["small.test"] * 3
    assert [i.message.id for i in items[10:]] == small
    # And with big.test left out (full), only the others.
    more = q.claim(now, limit=50, lease=60, exclude_domains=["big.test"], per_domain=10)
    assert more == []


def test_claim_domain_filters(q: SQLiteQueue) -> None:
    qid = q.enqueue(message("a@Example.NET", "b@example.com", "c@example.org"))
    now = time.time()
    assert q.claim(now, limit=10, lease=60, domains=[]) == []
    (item,) = q.claim(now, limit=10, lease=60, domains=["EXAMPLE.net"])
    assert [r.address for r in item.recipients] == ["a@Example.NET"]
    (item,) = q.claim(now, limit=10, lease=60, exclude_domains=["example.ORG"])
    assert [r.address for r in item.recipients] == ["b@example.com"]
    (item,) = q.claim(now, limit=10, lease=60)
    assert item.message.id == qid and [r.address for r in item.recipients] == ["c@example.org"]


def test_record_checks_its_arguments(q: SQLiteQueue) -> None:
    with pytest.raises(QueueError, match="outcome"):
        q.record(1, attempt("bounced"))
    with pytest.raises(QueueError, match="next_attempt"):
        q.record(1, attempt("deferred"))
    with pytest.raises(NotFound):
        q.record(12345, attempt("delivered"))


# ---------------------------------------------------------------------- administration


def test_hold_release_hold_and_retry(q: SQLiteQueue) -> None:
    qid = q.enqueue(message("a@example.net", "b@example.net"))
    other = q.enqueue(message("c@example.net"))
    now = time.time()
    assert q.hold(qid) == 2
    assert q.counts()["held"] == 2
    (item,) = q.claim(now, limit=10, lease=60)
    assert item.message.id == other
    q.record(item.recipients[0].id, attempt("deferred"), next_attempt=now + 3600,
             claim_token=item.claim_token)
    assert q.claim(time.time(), limit=10, lease=60) == []
    assert q.release_hold(qid) == 2
    assert q.release_hold(qid) == 0
    assert q.retry(None, time.time()) == 3
    items = q.claim(time.time(), limit=10, lease=60)
    assert {i.message.id for i in items} == {qid, other}
    # A deferral reported for a recipient held meanwhile leaves it held.
    held = next(i for i in items if i.message.id == qid)
    assert q.hold(qid) == 2
    q.record(held.recipients[0].id, attempt("deferred"), next_attempt=now,
             claim_token=held.claim_token)
    assert q.show(qid).recipients[0].state is HELD
    for unknown in (q.hold, q.release_hold, q.delete, q.show):
        with pytest.raises(NotFound):
            unknown("000000000000ffffff")
    with pytest.raises(NotFound):
        q.retry("000000000000ffffff", now)


def test_delete_removes_message_recipients_and_attempts(q: SQLiteQueue, db: Path) -> None:
    keep = q.enqueue(message())
    qid = q.enqueue(message("a@example.net", "b@example.net"))
    for item in q.claim(time.time(), limit=10, lease=60):
        for r in item.recipients:
            q.record(r.id, attempt("deferred"), next_attempt=time.time() + 60)
    q.delete(qid)
    with pytest.raises(NotFound):
        q.show(qid)
    assert [m.id for m in q.list()] == [keep]
    assert (raw_count(db, "messages"), raw_count(db, "contents"),
            raw_count(db, "recipients"), raw_count(db, "attempts")) == (1, 1, 1, 1)


def test_list_filters_and_pagination(q: SQLiteQueue) -> None:
    ids = []
    for i in range(12):
        sender = "Bob@Example.org" if i % 3 == 0 else "alice@example.org"
        domain = "example.com" if i % 2 else "example.net"
        ids.append(q.enqueue(message(f"u{i}@{domain}", sender=sender)))
    q.hold(ids[4])
    newest_first = ids[::-1]
    assert [m.id for m in q.list()] == newest_first
    assert [m.id for m in q.list(limit=5, offset=5)] == newest_first[5:10]
    assert [m.id for m in q.list(limit=5, offset=10)] == newest_first[10:]
    assert all(m.content is None and len(m.recipients) == 1 for m in q.list())
    by_sender = [m.id for m in q.list(sender="bob@example.ORG")]
    assert by_sender == [ids[i] for i in (9, 6, 3, 0)]
    assert [m.id for m in q.list(recipient_domain="EXAMPLE.com", limit=2, offset=1)] == [
        ids[9], ids[7]]
    assert [m.id for m in q.list(state=HELD)] == [ids[4]]
    assert [m.id for m in q.list(state=QUEUED, recipient_domain="example.net",
                                 sender="bob@example.org")] == [ids[6], ids[0]]
    assert q.list(state=DELIVERED) == []


def test_list_and_claim_queries_use_indexes(
    q: SQLiteQueue, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No query of claim, list, show or record scans a whole table or sorts its matches:
    both stay fast with 100,000 messages queued."""
    statements: list[str] = []
    connect = SQLiteQueue._connect

    def traced(self: SQLiteQueue) -> sqlite3.Connection:
        conn = connect(self)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(SQLiteQueue, "_connect", traced)
    with SQLiteQueue(db) as queue:
        qid = queue.enqueue(message("a@example.net", "b@example.com"))
        now = time.time()
        for item in queue.claim(now, limit=5, lease=60, domains=["example.net"],
                                exclude_domains=["example.org"]):
            queue.record(item.recipients[0].id, attempt("deferred"), next_attempt=now,
                         claim_token=item.claim_token)
        queue.claim(now, limit=5, lease=60)
        queue.show(qid)
        queue.list(limit=10, offset=10)
        queue.list(state=DEFERRED)
        queue.list(recipient_domain="example.net")
        queue.list(sender="alice@example.org")
        queue.list(state=QUEUED, recipient_domain="example.net", sender="alice@example.org")
        queue.hold(qid)
        queue.release_hold(qid)
        queue.retry(qid, now)
        queue.release("token")
        queue.delete(qid)
    checked = 0
    with sqlite3.connect(db) as conn:
        for sql in statements:
            if not re.match(r"\s*(SELECT|UPDATE|DELETE)\b", sql) or "count(*)" in sql:
                continue
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            # show() sorts the attempts of one message: a handful of rows, not the queue.
            one_message = sql.startswith("SELECT a.* FROM attempts")
            # ClaimFloor's blockers: the set of domains of the rows it passes (one entry
            # per destination), not a sort of the rows.
            domains = sql.startswith("SELECT DISTINCT domain FROM recipients")
            for step in plan:
                assert one_message or "TEMP B-TREE" not in step or (
                    domains and step == "USE TEMP B-TREE FOR DISTINCT"), (sql, plan)
                assert not re.fullmatch(r"SCAN (recipients|attempts|contents|r|a)", step), (
                    sql, plan)
            checked += 1
    assert checked >= 20


# ---------------------------------------------------------------------- many processes


def _enqueue_in_process(
    path: str, tag: str, count: int, start: Any, results: Any, open_first: bool
) -> None:
    """Child process: open the queue, wait for the others, enqueue from 8 threads."""
    if not open_first:
        start.wait(30)  # race to open (and create) the queue too
    with SQLiteQueue(path, busy_timeout=30) as queue, ThreadPoolExecutor(8) as pool:
        if open_first:
            start.wait(30)
        futures: list[Future[str]] = [
            pool.submit(queue.enqueue, message(f"{tag}-{i}@example.net")) for i in range(count)
        ]
        results.put([f.result() for f in futures])


def run_processes(db: Path, count: int, processes: int, open_first: bool) -> list[str]:
    ctx = multiprocessing.get_context("spawn")  # no fork: this process runs threads
    start = ctx.Barrier(processes)
    results = ctx.Queue()
    children = [
        ctx.Process(
            target=_enqueue_in_process,
            args=(str(db), f"p{n}", count, start, results, open_first),
        )
        for n in range(processes)
    ]
    for child in children:
        child.start()
    ids = [i for _ in children for i in results.get(timeout=30)]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    return ids


def test_two_processes_enqueue_at_once(db: Path) -> None:
    ids = run_processes(db, 300, 2, open_first=True)
    assert len(ids) == len(set(ids)) == 600
    with sqlite3.connect(db) as conn:
        stored = [row[0] for row in conn.execute("SELECT id FROM messages")]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        addresses = [row[0] for row in conn.execute("SELECT address FROM recipients")]
    assert sorted(stored) == sorted(ids)
    assert sorted(addresses) == sorted(f"p{p}-{i}@example.net" for p in (0, 1) for i in range(300))


def test_processes_racing_to_create_the_schema(db: Path) -> None:
    ids = run_processes(db, 5, 3, open_first=False)
    with SQLiteQueue(db) as queue:
        assert sorted(m.id for m in queue.list()) == sorted(ids)
        assert queue.integrity_check() == ["ok"]


# --- hold reasons and claim owners (crash recovery) -----------------------------------


def test_hold_keeps_its_reason_until_released(q: SQLiteQueue) -> None:
    qid = q.enqueue(message("a@example.net", "b@example.net"))
    (item,) = q.claim(time.time(), limit=1, lease=600)
    assert q.hold(qid, reason="delivery failed: ValueError") == 2
    a, b = q.show(qid).recipients
    assert (a.state, a.held_reason) == (HELD, "delivery failed: ValueError")
    assert b.held_reason == "delivery failed: ValueError"
    # A held recipient is nobody's claim: its claimant's late report does not unhold it.
    q.record(a.id, attempt("deferred", 451), next_attempt=time.time(),
             claim_token=item.claim_token)
    assert q.show(qid).recipients[0].state == HELD
    assert q.release_hold(qid) == 2
    assert [(r.state, r.held_reason) for r in q.show(qid).recipients] == [
        (RecipientState.QUEUED, None), (RecipientState.QUEUED, None)]
    q.hold(qid)  # an administrator's hold without a reason
    assert [r.held_reason for r in q.show(qid).recipients] == [None, None]


CLAIM_AND_DIE = textwrap.dedent("""
    import os, sys, time
    from mailgate.queue.sqlite import SQLiteQueue
    q = SQLiteQueue(sys.argv[1])
    items = q.claim(time.time(), 100, 900.0)
    print(sum(len(i.recipients) for i in items), flush=True)
    os.kill(os.getpid(), 9)
""")


def test_claims_of_a_killed_process_come_back_at_once(db: Path) -> None:
    with SQLiteQueue(db) as queue:
        ids = [queue.enqueue(message(f"r{i}@example.net")) for i in range(5)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", CLAIM_AND_DIE, str(db)], env=env,
                           capture_output=True, text=True, timeout=30, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.strip() == "5"
    with SQLiteQueue(db) as queue, SQLiteQueue(db) as other:
        # Claimed for 15 minutes by a process that is gone: nothing is due now...
        assert queue.claim(time.time(), 100, 60) == []
        # ...until a (re)started server takes back what the dead process held.
        live = other.claim(time.time(), 100, 60)  # nothing, and `other` is alive
        assert live == []
        assert queue.recover_claims() == 5
        items = queue.claim(time.time(), 100, 60)
        assert sorted(i.message.id for i in items) == sorted(ids)
        # A live process's claims stay its own: `other` finds nothing to take back.
        assert other.recover_claims() == 0
        assert other.claim(time.time(), 100, 60) == []
        assert raw_count(db, "owners") == 2  # the dead one is forgotten
    assert raw_count(db, "owners") == 0  # closed queues retire


def test_close_gives_back_what_it_still_had_claimed(db: Path) -> None:
    with SQLiteQueue(db) as queue:
        queue.enqueue(message())
        assert len(queue.claim(time.time(), 10, 900)) == 1
    with SQLiteQueue(db) as queue:
        assert len(queue.claim(time.time(), 10, 900)) == 1
