"""The SQLite queue's kept counts (recipients per state, activity per minute) are exactly
what a full count of the rows gives, after every kind of change: enqueue (alone and in
group-committed batches), claim, record of each outcome, hold, release, retry, delete,
purge, recovery of a killed process's claims, a process killed mid-write, and the
migration of a file from before the counts were kept."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailgate.queue import Attempt, NewMessage, NewRecipient, Queue, RecipientState
from mailgate.queue.sqlite import SQLiteQueue


def message(*recipients: str, sender: str = "alice@example.org") -> NewMessage:
    return NewMessage(sender=sender, recipients=[NewRecipient(r) for r in recipients],
                      content=b"Subject: hi\r\n\r\nhello\r\n", received_at=time.time())


def attempt(outcome: str, at: float | None = None) -> Attempt:
    code = {"delivered": 250, "deferred": 450, "failed": 550}[outcome]
    return Attempt(at=time.time() if at is None else at, host="mx.example.net[192.0.2.9]:25",
                   code=code, enhanced=None, text="reply", outcome=outcome)


def full_states(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        found = dict(conn.execute("SELECT state, count(*) FROM recipients GROUP BY state"))
    return {s.value: found.get(s.value, 0) for s in RecipientState}


def full_minutes(db: Path) -> set[tuple[str, int, int]]:
    with sqlite3.connect(db) as conn:
        return minutes_in_rows(conn)


def minutes_in_rows(conn: Any) -> set[tuple[str, int, int]]:
    """(series, minute, rows) from the rows themselves, minute = whole seconds // 60,
    computed here in Python, not with the schema's SQL; `conn`: SQLite or PostgreSQL."""
    rows = [("accepted", int(t)) for (t,) in conn.execute("SELECT queued_at FROM messages")]
    rows += [("bounced", int(t)) for (t,) in conn.execute(
        "SELECT queued_at FROM messages WHERE sender = ''")]
    rows += [(o, int(t)) for o, t in conn.execute("SELECT outcome, at FROM attempts")]
    tally: dict[tuple[str, int], int] = {}
    for series, t in rows:
        key = (series, t // 60)
        tally[key] = tally.get(key, 0) + 1
    return {(s, m, n) for (s, m), n in tally.items()}


def kept_minutes(db: Path) -> set[tuple[str, int, int]]:
    with sqlite3.connect(db) as conn:
        return set(conn.execute("SELECT series, minute, n FROM activity_minutes"))


def check(q: SQLiteQueue, db: Path) -> None:
    assert q.counts() == full_states(db)
    assert kept_minutes(db) == full_minutes(db)


def test_counts_follow_every_state_change(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    with SQLiteQueue(db) as q:
        every_change(q, lambda: check(q, db))
        assert q.integrity_check() == ["ok"]


def every_change(q: Queue, check: Callable[[], None]) -> None:
    """Every kind of change a queue's own operations make, `check` after each: the
    scenario both backends' kept counts are held to (test_queue_counts_postgres.py)."""
    check()
    assert q.counts() == {s.value: 0 for s in RecipientState}
    ids = [q.enqueue(message(f"r{i}@a.example", f"s{i}@b.example")) for i in range(6)]
    bounce = q.enqueue(message("alice@example.org", sender=""))
    check()
    assert q.counts()["queued"] == 13

    # Many at once: the batch path (multi-row INSERTs in one transaction).
    async def burst() -> list[str]:
        return await asyncio.gather(*(q.enqueue_async(message(f"x{i}@c.example"))
                                      for i in range(50)))
    burst_ids = asyncio.run(burst())
    check()
    assert q.counts()["queued"] == 63

    now = time.time()
    items = q.claim(now, limit=100, lease=60)
    check()  # a claim changes no state
    by_id = {item.message.id: item for item in items}
    first, second, third = (by_id[i] for i in ids[:3])
    r1, r2 = first.recipients
    q.record(r1.id, attempt("delivered"), claim_token=first.claim_token)
    q.record(r2.id, attempt("delivered"), claim_token=first.claim_token)  # finishes it
    check()
    for r in second.recipients:
        q.record(r.id, attempt("deferred"), next_attempt=now + 600,
                 claim_token=second.claim_token)
    q.record(third.recipients[0].id, attempt("failed"), claim_token=third.claim_token)
    check()
    # A late report for a recipient already final changes no state, but is an attempt.
    q.record(r1.id, attempt("deferred"), next_attempt=now + 600)
    check()
    for item in items:
        q.release(item.claim_token)
    check()

    assert q.hold(ids[3], reason="looks odd") == 2
    assert q.hold(ids[1]) == 2  # deferred ones too
    check()
    assert q.counts()["held"] == 4
    # A deferral reported for a held recipient leaves it held (no state change).
    q.record(q.show(ids[3]).recipients[0].id, attempt("deferred"), next_attempt=now + 60)
    check()
    assert q.release_hold(ids[3]) == 2
    check()
    assert q.retry(None, time.time()) > 0
    check()

    q.delete(ids[4])
    q.delete(bounce)
    check()

    # Finish a batch of the burst, then purge every finished record.
    for item in q.claim(time.time(), limit=20, lease=60):
        for r in item.recipients:
            q.record(r.id, attempt(random.choice(["delivered", "failed"])),
                     claim_token=item.claim_token)
    check()
    assert q.purge(time.time() + 1, limit=5) == 5
    check()
    while q.purge(time.time() + 1):
        pass
    check()
    assert q.counts()["delivered"] == q.counts()["failed"] == 0
    assert len(burst_ids) == 50


def test_counts_survive_changes_made_in_sql(tmp_path: Path) -> None:
    """The triggers keep the counts whoever changes the rows: an administrator's own SQL,
    or a benchmark that fills a queue directly (bench/big_queue.py)."""
    db = tmp_path / "queue.db"
    with SQLiteQueue(db) as q:
        for i in range(5):
            q.enqueue(message(f"r{i}@a.example", sender="" if i % 2 else "a@b.example"))
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE messages SET queued_at = queued_at - 86400 * seq")
            conn.execute("UPDATE messages SET sender = 'x@y.example' WHERE seq = 2")
            conn.execute("UPDATE recipients SET state = 'deferred' WHERE id % 2 = 0")
            conn.execute("INSERT INTO attempts (recipient_id, at, host, code, text, outcome, "
                         "remote) VALUES (1, 1000.5, '', 450, 'x', 'deferred', 1)")
            conn.execute("UPDATE attempts SET outcome = 'failed', at = 5000")
            conn.execute("DELETE FROM recipients WHERE id = 3")
        check(q, db)


def test_activity_matches_a_full_count_at_any_edges(tmp_path: Path) -> None:
    """Whole minutes come from the kept table, the partial ones at the edges from the
    rows: together exactly what counting every row gives, wherever the edges fall."""
    db = tmp_path / "queue.db"
    rng = random.Random(17)
    now = time.time()
    with SQLiteQueue(db) as q:
        for i in range(120):
            q.enqueue(message(f"r{i}@a.example", sender="" if i % 3 == 0 else "a@b.example"))
        with sqlite3.connect(db) as conn:
            spread_over_hours(conn, "?", now, rng)
        record_at_random(q, now, rng)
        check(q, db)
        with sqlite3.connect(db) as conn:
            assert activity_as_rows_say(q, conn, "?", now, rng) > 0


def spread_over_hours(conn: Any, mark: str, now: float, rng: random.Random) -> None:
    """The messages' arrival spread over 3 hours, some exactly on a minute's edge
    (`mark`: the connection's parameter marker)."""
    seqs = [s for (s,) in conn.execute("SELECT seq FROM messages ORDER BY seq")]
    for k, seq in enumerate(seqs, 1):
        t = now - rng.uniform(0, 3 * 3600) if k % 4 else float(int(now / 60) * 60 - 60 * k)
        conn.execute(f"UPDATE messages SET queued_at = {mark} WHERE seq = {mark}", (t, seq))


def record_at_random(q: Queue, now: float, rng: random.Random) -> None:
    """Every due recipient claimed and given a random outcome in the last 3 hours."""
    for item in q.claim(now, limit=200, lease=60):
        for r in item.recipients:
            outcome = rng.choice(["delivered", "deferred", "failed"])
            q.record(r.id, attempt(outcome, at=now - rng.uniform(0, 3 * 3600)),
                     next_attempt=now + 60, claim_token=item.claim_token)


def activity_as_rows_say(q: Queue, conn: Any, mark: str, now: float,
                         rng: random.Random) -> int:
    """`q.activity` for buckets with edges anywhere equals counting the rows through
    `conn`; how many events the buckets held in all."""
    def one(sql: str, *args: object) -> int:
        return int(str(conn.execute(sql.replace("?", mark), args).fetchone()[0]))

    def by_rows(lo: float, hi: float) -> dict[str, int]:
        got = {"accepted": one("SELECT count(*) FROM messages WHERE queued_at >= ? "
                               "AND queued_at < ?", lo, hi),
               "bounced": one("SELECT count(*) FROM messages WHERE sender = '' AND "
                              "queued_at >= ? AND queued_at < ?", lo, hi)}
        for o in ("delivered", "deferred", "failed"):
            got[o] = one("SELECT count(*) FROM attempts WHERE outcome = ? AND "
                         "at >= ? AND at < ?", o, lo, hi)
        return got

    edges = [(now - 3600, 3600.0), (now - 86400, 86400.0), (now - 4 * 3600, 600.0),
             (int(now / 60) * 60 - 7200, 60.0), (now - 7200, 0.5 * 60 + 0.25),
             (now - 100, 30.0)]
    edges += [(now - rng.uniform(0, 4 * 3600), rng.uniform(1, 5000)) for _ in range(20)]
    seen = 0
    for since, seconds in edges:
        for b in q.activity(since, seconds, now):
            expected = by_rows(b.start, min(now, b.start + seconds))
            got = {k: getattr(b, k) for k in expected}
            assert got == expected, (since, seconds, b.start)
            seen += sum(got.values())
    return seen


CHILD = textwrap.dedent(
    """
    import sys, threading, time
    from mailgate.queue import Attempt, NewMessage, NewRecipient
    from mailgate.queue.sqlite import SQLiteQueue

    queue = SQLiteQueue(sys.argv[1])

    def enqueue(n):
        i = 0
        while True:
            i += 1
            queue.enqueue(NewMessage(
                sender="" if i % 5 == 0 else "a@example.org",
                recipients=[NewRecipient(f"t{n}-{i}@example.net"),
                            NewRecipient(f"u{n}-{i}@example.com")],
                content=b"x" * 3000, received_at=0.0))

    def deliver():
        while True:
            for item in queue.claim(time.time(), 50, 60):
                for k, r in enumerate(item.recipients):
                    outcome = ("delivered", "deferred", "failed")[r.id % 3]
                    queue.record(r.id, Attempt(time.time(), "", 250, None, "", outcome),
                                 next_attempt=time.time() + 600, claim_token=item.claim_token)

    for n in range(3):
        threading.Thread(target=enqueue, args=(n,), daemon=True).start()
    threading.Thread(target=deliver, daemon=True).start()
    time.sleep(0.3)
    print("running", flush=True)
    threading.Event().wait()
    """
)


def test_counts_are_right_after_a_process_is_killed_mid_write(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db)], stdout=subprocess.PIPE,
                             text=True, env={**os.environ})
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "running"
    time.sleep(0.5)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    with SQLiteQueue(db) as q:
        assert q.recover_claims() >= 0  # the dead process's claims come back
        check(q, db)
        assert sum(q.counts().values()) > 0
        assert q.counts()["delivered"] > 0
        assert q.integrity_check() == ["ok"]


@pytest.mark.parametrize("states", [["queued"], ["queued", "deferred", "held", "delivered"]])
def test_a_version_4_file_gets_its_counts(tmp_path: Path, states: list[str]) -> None:
    db = tmp_path / "queue.db"
    with SQLiteQueue(db) as q:
        for i in range(12):
            q.enqueue(message(f"r{i}@a.example", sender="" if i % 4 == 0 else "a@b.example"))
        for item in q.claim(time.time(), limit=3, lease=60):
            for r in item.recipients:
                q.record(r.id, attempt("deferred"), next_attempt=time.time() + 60,
                         claim_token=item.claim_token)
    # As a mailgate before version 5 left it: no kept counts, rows changed meanwhile.
    with sqlite3.connect(db) as conn:
        for (trigger,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE state_counts")
        conn.execute("DROP TABLE activity_minutes")
        conn.execute("ALTER TABLE messages DROP COLUMN crlf")  # (version 6)
        for i, state in enumerate(states):
            conn.execute("UPDATE recipients SET state = ? WHERE id % ? = ?",
                         (state, len(states), i))
        conn.execute("PRAGMA user_version = 4")
    with SQLiteQueue(db) as q:
        check(q, db)
        q.enqueue(message("late@a.example"))
        check(q, db)
