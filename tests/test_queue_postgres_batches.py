"""The PostgreSQL queue's group commit writes a batch's enqueues as one statement and its
records as one statement (rows.py `_STORE_MANY`, `_RECORD_MANY`): what is in one batch
comes out as if each had been written alone, also for the odd cases — a queue id twice
in one batch, an id already taken, a recipient recorded twice in one batch, a recipient
that is not there (only its caller fails)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import Any

import psycopg
import pytest

from mailgate.queue import NewMessage, NotFound, RecipientState
from mailgate.queue.postgres import PostgresQueue
from tests.test_queue_counts import attempt
from tests.test_queue_sqlite import message

pytest_plugins = ["tests.support.postgres"]


@pytest.fixture
def q(pg_dsn: str) -> Iterator[PostgresQueue]:
    with PostgresQueue(pg_dsn, node="test") as queue:
        yield queue


def in_one_batch(q: PostgresQueue, calls: Sequence[Callable[[], Awaitable[Any]]],
                 commits: int = 1) -> list[Any]:
    """Run the calls while the writer is busy with something else, so that they all
    wait and go in its next batch; their results (or exceptions). The batch is checked
    to have made `commits` commits (one, unless a call failed and the rest went alone)."""
    started, release = threading.Event(), threading.Event()

    def block(conn: object) -> None:
        started.set()
        release.wait(10)

    blocker = q._engine.submit(block, "wait")
    assert started.wait(10)  # the writer has taken it, alone, and waits
    before = q.commit_count

    async def run() -> list[Any]:
        tasks = [asyncio.ensure_future(c()) for c in calls]
        await asyncio.sleep(0.2)  # every call has been submitted and waits
        release.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(run())
    blocker.result()
    assert q.commit_count == before + 1 + commits  # the blocker's, then theirs
    return results


def test_enqueues_in_one_batch_with_clashing_ids(q: PostgresQueue, pg_dsn: str) -> None:
    taken = q.enqueue(message("first@example.net"))
    mine = "0123456789abcdef012345"
    msgs: list[NewMessage] = [
        message("a@example.net", "b@example.org"),
        message("c@example.net").with_id(mine),
        message("d@example.net").with_id(mine),  # the same id twice in the batch
        message("e@example.net").with_id(taken),  # an id already stored
        *(message(f"x{i}@example.com") for i in range(20)),
    ]
    ids = in_one_batch(q, [partial(q.enqueue_async, m) for m in msgs])
    assert all(isinstance(i, str) for i in ids), ids
    assert len(set(ids) | {taken}) == len(msgs) + 1  # every one stored, under its own id
    assert mine in ids
    for queue_id, m in zip(ids, msgs, strict=True):
        shown = q.show(queue_id, content=True)
        assert [r.address for r in shown.recipients] == [r.address for r in m.recipients]
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT id FROM messages ORDER BY seq").fetchall()
    assert [r[0] for r in rows][1:2] == [ids[0]]  # seq in the batch's order
    assert q.counts()["queued"] == 1 + sum(len(m.recipients) for m in msgs)
    assert q.integrity_check() == ["ok"]


def test_records_in_one_batch(q: PostgresQueue) -> None:
    ids = [q.enqueue(message(f"r{i}@example.net", f"s{i}@example.org")) for i in range(5)]
    items = {i.message.id: i for i in q.claim(time.time(), limit=10, lease=60)}
    now = time.time()
    one, two, three = (items[i] for i in ids[:3])
    calls: list[Callable[[], Awaitable[Any]]] = [
        # Both of a message's recipients: it finishes (its content goes).
        *(partial(q.record_async, r.id, attempt("delivered"), None, one.claim_token)
          for r in one.recipients),
        # One recipient deferred, then delivered, in the same batch: in that order.
        lambda: q.record_async(two.recipients[0].id, attempt("deferred"), now + 600,
                               two.claim_token),
        lambda: q.record_async(two.recipients[0].id, attempt("delivered"), None,
                               two.claim_token),
        lambda: q.record_async(three.recipients[0].id, attempt("failed"), None,
                               three.claim_token),
        lambda: q.record_async(10**12, attempt("delivered"), None, None),  # not there
    ]
    results = in_one_batch(q, calls, commits=5)  # the batch failed: five alone
    assert results[:5] == [None] * 5
    assert isinstance(results[5], NotFound)
    # The unknown recipient made the batch run again one by one: the rest is recorded.
    first = q.show(ids[0])
    assert [r.state for r in first.recipients] == [RecipientState.DELIVERED] * 2
    assert first.finished_at is not None
    second = q.show(ids[1])
    assert second.recipients[0].state is RecipientState.DELIVERED
    assert [a.outcome for _, a in second.attempts] == ["deferred", "delivered"]
    assert q.show(ids[2]).recipients[0].state is RecipientState.FAILED
    assert q.counts()["delivered"] == 3 and q.counts()["failed"] == 1


def test_records_in_one_batch_without_a_stranger(q: PostgresQueue) -> None:
    """The same without the unknown recipient: one statement did it all."""
    ids = [q.enqueue(message(f"r{i}@example.net", f"s{i}@example.org")) for i in range(3)]
    items = list(q.claim(time.time(), limit=10, lease=60))
    calls = [partial(q.record_async, r.id, attempt("delivered"), None, it.claim_token)
             for it in items for r in it.recipients]
    calls.append(partial(q.record_async, items[0].recipients[0].id, attempt("failed"), None,
                         items[0].claim_token))  # late: stays delivered
    assert in_one_batch(q, calls) == [None] * 7
    for queue_id in ids:
        shown = q.show(queue_id)
        assert {r.state for r in shown.recipients} == {RecipientState.DELIVERED}
        assert shown.finished_at is not None
    assert len(q.show(items[0].message.id).attempts) == 3
    assert q.integrity_check() == ["ok"]
