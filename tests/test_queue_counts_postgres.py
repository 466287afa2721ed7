"""The PostgreSQL queue's kept counts (recipients per state, activity per minute: totals
plus deltas not yet folded, schema.py) are exactly what a full count of the rows gives,
after every kind of change, before and after a fold: enqueue (alone and in group-committed
batches), claim, record of each outcome, hold, release, retry, delete, purge, changes made
in SQL, two nodes writing and folding at once, and the migration of a version 1 database.
The twin of tests/test_queue_counts.py, on a real PostgreSQL (tests/support/postgres.py).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from mailgate.queue import RecipientState
from mailgate.queue.postgres import SCHEMA_VERSION, PostgresQueue, fold_now, migrate
from tests.test_queue_counts import (
    activity_as_rows_say,
    attempt,
    every_change,
    message,
    minutes_in_rows,
    record_at_random,
    spread_over_hours,
)

pytest_plugins = ["tests.support.postgres"]


@pytest.fixture
def q(pg_dsn: str) -> Iterator[PostgresQueue]:
    with PostgresQueue(pg_dsn, node="test") as queue:
        yield queue


def full_states(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        found: dict[str, int] = dict(conn.execute(
            "SELECT state, count(*) FROM recipients GROUP BY state").fetchall())
    return {s.value: int(found.get(s.value, 0)) for s in RecipientState}


def full_minutes(dsn: str) -> set[tuple[str, int, int]]:
    with psycopg.connect(dsn) as conn:
        return minutes_in_rows(conn)


def kept_minutes(dsn: str) -> set[tuple[str, int, int]]:
    with psycopg.connect(dsn) as conn:
        return {(s, int(m), int(n)) for s, m, n in conn.execute(
            "SELECT series, minute, sum(n) FROM (SELECT series, minute, n FROM "
            "activity_minutes UNION ALL SELECT series, minute, n FROM activity_deltas) k "
            "GROUP BY 1, 2 HAVING sum(n) <> 0")}


def check(q: PostgresQueue, dsn: str) -> None:
    """Kept equals full, before a fold and after one; after it no delta is left and no
    minute totals zero."""
    for _ in range(2):
        assert q.counts() == full_states(dsn)
        assert kept_minutes(dsn) == full_minutes(dsn)
        assert fold_now(q)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM state_deltas").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM activity_deltas").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM activity_minutes WHERE n <= 0"
                            ).fetchone() == (0,)


def test_counts_follow_every_state_change(q: PostgresQueue, pg_dsn: str) -> None:
    every_change(q, lambda: check(q, pg_dsn))
    assert q.integrity_check() == ["ok"]


def test_counts_before_a_fold_are_in_the_deltas(q: PostgresQueue, pg_dsn: str) -> None:
    for i in range(6):
        q.enqueue(message(f"r{i}@a.example", f"s{i}@b.example"))
    q.enqueue(message("alice@example.org", sender=""))
    with psycopg.connect(pg_dsn) as conn:  # not yet folded: the deltas carry the counts
        assert conn.execute("SELECT sum(n) FROM state_deltas").fetchone() == (13,)
    assert q.counts()["queued"] == 13
    check(q, pg_dsn)


def test_counts_survive_changes_made_in_sql(q: PostgresQueue, pg_dsn: str) -> None:
    for i in range(5):
        q.enqueue(message(f"r{i}@a.example", sender="" if i % 2 else "a@b.example"))
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE messages SET queued_at = queued_at - 86400 * seq")
        conn.execute("UPDATE messages SET sender = 'x@y.example' WHERE seq = 2")
        conn.execute("UPDATE recipients SET state = 'deferred' WHERE id % 2 = 0")
        rid = conn.execute("SELECT min(id) FROM recipients").fetchone()
        assert rid is not None
        conn.execute("INSERT INTO attempts (recipient_id, at, host, code, text, outcome, "
                     "remote) VALUES (%s, 1000.5, '', 450, 'x', 'deferred', true)", rid)
        conn.execute("UPDATE attempts SET outcome = 'failed', at = 5000")
        conn.execute("DELETE FROM recipients WHERE id = %s", rid)
    check(q, pg_dsn)


def test_activity_matches_a_full_count_at_any_edges(q: PostgresQueue, pg_dsn: str) -> None:
    rng = random.Random(17)
    now = time.time()
    for i in range(120):
        q.enqueue(message(f"r{i}@a.example", sender="" if i % 3 == 0 else "a@b.example"))
    with psycopg.connect(pg_dsn) as conn:
        spread_over_hours(conn, "%s", now, rng)
    fold_now(q)  # some minutes folded, the attempts' still in deltas
    record_at_random(q, now, rng)
    with psycopg.connect(pg_dsn) as conn:
        assert activity_as_rows_say(q, conn, "%s", now, rng) > 0
    check(q, pg_dsn)


def test_two_nodes_writing_and_folding_at_once(pg_dsn: str) -> None:
    """Two nodes (each its own connections) queue, claim, record, hold and release at
    once while both fold: no delta is lost or folded twice."""
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0, 0]

    def node(k: int, queue: PostgresQueue) -> None:
        rng = random.Random(k)
        try:
            while not stop.is_set():
                ids = [queue.enqueue(message(f"a{k}@x.example", f"b{k}@y.example",
                                             sender="" if rng.random() < 0.2 else "s@z.example"))
                       for _ in range(5)]
                for item in queue.claim(time.time(), limit=4, lease=60):
                    for r in item.recipients:
                        queue.record(r.id, attempt(rng.choice(["delivered", "deferred",
                                                                "failed"])),
                                     next_attempt=time.time() + 600,
                                     claim_token=item.claim_token)
                if rng.random() < 0.3:
                    queue.hold(ids[0])
                    queue.release_hold(ids[0])
                if rng.random() < 0.3:
                    queue.purge(time.time() + 1, limit=3)
                fold_now(queue)
                done[k] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with PostgresQueue(pg_dsn, node="one") as one, PostgresQueue(pg_dsn, node="two") as two:
        threads = [threading.Thread(target=node, args=(k, queue))
                   for k, queue in enumerate((one, two))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while min(done) < 15 and time.monotonic() < deadline and not errors:
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors
        assert min(done) >= 15
        check(one, pg_dsn)
        counts = one.counts()
        assert counts == two.counts()
        assert counts["queued"] > 0 and counts["delivered"] + counts["failed"] > 0


def test_a_version_1_database_gets_its_counts(q: PostgresQueue, pg_dsn: str) -> None:
    for i in range(12):
        q.enqueue(message(f"r{i}@a.example", sender="" if i % 4 == 0 else "a@b.example"))
    for item in q.claim(time.time(), limit=3, lease=60):
        for r in item.recipients:
            q.record(r.id, attempt("deferred"), next_attempt=time.time() + 60,
                     claim_token=item.claim_token)
    # As a mailgate of version 1 left it: no kept counts, rows changed meanwhile.
    with psycopg.connect(pg_dsn) as conn:
        for table, trigger in conn.execute(
                "SELECT event_object_table, trigger_name FROM information_schema.triggers "
                "WHERE trigger_name LIKE '%%counted'").fetchall():
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
        conn.execute("DROP FUNCTION mailgate_messages_in, mailgate_messages_out, "
                     "mailgate_messages_moved, mailgate_recipients_in, mailgate_recipients_out, "
                     "mailgate_recipients_moved, mailgate_attempts_in, mailgate_attempts_out, "
                     "mailgate_attempts_moved CASCADE")
        conn.execute("DROP TABLE state_counts, activity_minutes, state_deltas, activity_deltas")
        conn.execute("DROP INDEX messages_bounces")
        conn.execute("UPDATE recipients SET state = 'held' WHERE id % 3 = 0")
        conn.execute("ALTER TABLE messages DROP COLUMN crlf")  # schema 3
        conn.execute("UPDATE mailgate_schema SET version = 1")
    with psycopg.connect(pg_dsn) as conn:
        assert migrate(conn, "here") == (1, SCHEMA_VERSION)
    check(q, pg_dsn)
    q.enqueue(message("late@a.example"))
    check(q, pg_dsn)
