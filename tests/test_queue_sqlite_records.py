"""The SQLite queue writes the delivery reports waiting in one batch with a handful of
statements (records.py `RecordOp.run_together`): the rows come out as if each report had
been written alone and committed on its own, also for the odd cases — a recipient
already delivered, a held one, one another worker has claimed since, a message whose
last recipient is reported — and a batch it cannot take whole (a recipient reported
twice, one that is not there) is written one report at a time instead."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.queue import NotFound, RecipientState
from mailgate.queue.sqlite import SQLiteQueue
from tests.test_queue_counts import attempt
from tests.test_queue_sqlite import blocked_writer, message

Report = tuple[int, str, float | None, str | None]  # recipient, outcome, next_attempt, token


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[SQLiteQueue, SQLiteQueue]]:
    alone, together = SQLiteQueue(tmp_path / "alone.db"), SQLiteQueue(tmp_path / "together.db")
    yield alone, together
    alone.close()
    together.close()


def scene(q: SQLiteQueue, now: float) -> list[Report]:
    """Six messages in every state a report can meet, and the reports to write on them;
    built the same way on every queue, so recipient ids agree."""
    ids = [q.enqueue(message(f"a{i}@example.net", f"b{i}@example.org")) for i in range(6)]
    mine: dict[str, list[int]] = {}
    token: dict[str, str] = {}
    for item in q.claim(now, limit=20, lease=600):  # one work item per destination
        mine.setdefault(item.message.id, []).extend(rc.id for rc in item.recipients)
        token[item.message.id] = item.claim_token
    r = [sorted(mine[i]) for i in ids]
    assert all(len(pair) == 2 for pair in r)
    q.record(r[2][0], attempt("delivered"), claim_token=token[ids[2]])  # already final
    with sqlite3.connect(q.path) as conn:  # another worker claimed r[3][0] since
        conn.execute("UPDATE recipients SET claim_token = 'theirs', claim_until = ? "
                     "WHERE id = ?", (now + 900, r[3][0]))
    q.release(token[ids[4]])
    q.hold(ids[4], "by hand")
    return [
        (r[0][0], "delivered", None, token[ids[0]]),  # both of message 0: it finishes
        (r[0][1], "delivered", None, token[ids[0]]),
        (r[1][0], "deferred", now + 300, token[ids[1]]),
        (r[1][1], "failed", None, token[ids[1]]),
        (r[2][0], "failed", None, token[ids[2]]),  # late: stays delivered
        (r[2][1], "delivered", None, token[ids[2]]),  # the last one left: finishes
        (r[3][0], "deferred", now + 300, token[ids[3]]),  # their claim stays
        (r[3][1], "delivered", None, None),
        (r[4][0], "deferred", now + 300, None),  # held: stays held
        (r[4][1], "failed", None, None),
        (r[5][0], "deferred", now + 60, token[ids[5]]),
    ]


def rows(q: SQLiteQueue) -> dict[str, list[tuple[Any, ...]]]:
    """What the reports wrote, without the times of day they wrote it."""
    with sqlite3.connect(q.path) as conn:
        return {
            "recipients": conn.execute(
                "SELECT id, state, attempts, CASE WHEN attempts > 0 THEN next_attempt END, "
                "CASE WHEN attempts > 0 THEN due_at END, last_code, last_text, "
                "CASE WHEN claim_token IN ('theirs') OR claim_token IS NULL THEN claim_token "
                "ELSE 'ours' END, claim_until, claim_owner IS NULL, held_reason "
                "FROM recipients ORDER BY id").fetchall(),
            "attempts": conn.execute(
                "SELECT id, recipient_id, code, outcome, host FROM attempts ORDER BY id"
            ).fetchall(),
            "messages": conn.execute(
                "SELECT seq, finished_at IS NULL FROM messages ORDER BY seq").fetchall(),
            "contents": conn.execute("SELECT seq FROM contents ORDER BY seq").fetchall(),
            "counts": conn.execute("SELECT state, n FROM state_counts ORDER BY state"
                                   ).fetchall(),
        }


def in_one_batch(q: SQLiteQueue, calls: list[Callable[[], Awaitable[Any]]]
                 ) -> tuple[list[Any], list[str], int]:
    """Run the calls, in order, while the writer is parked, so they all go in its next
    batch: their results (or exceptions), the statements that batch ran, and its
    commits."""
    statements: list[str] = []
    q._call(lambda conn: conn.set_trace_callback(statements.append), "trace")
    before = q.commit_count
    gate = blocked_writer(q)
    statements.clear()

    async def run() -> list[Any]:
        tasks = [asyncio.ensure_future(call()) for call in calls]
        await asyncio.sleep(0)  # each has handed its report to the writer, in order
        assert q._requests.qsize() == len(calls)
        gate.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(run())
    commits = q.commit_count - before - 1  # not the parked batch's
    q._call(lambda conn: conn.set_trace_callback(None), "stop tracing")
    begin = statements.index("BEGIN IMMEDIATE")
    return results, statements[begin : statements.index("COMMIT", begin) + 1], commits


def report(q: SQLiteQueue, rep: Report) -> Callable[[], Awaitable[None]]:
    recipient, outcome, next_attempt, token = rep
    return lambda: q.record_async(recipient, attempt(outcome, at=1_800_000_000.0),
                                  next_attempt, token)


def alone_(q: SQLiteQueue, rep: Report) -> None:
    recipient, outcome, next_attempt, token = rep
    q.record(recipient, attempt(outcome, at=1_800_000_000.0), next_attempt=next_attempt,
             claim_token=token)


def test_a_batch_of_reports_writes_what_each_alone_would(
    two: tuple[SQLiteQueue, SQLiteQueue],
) -> None:
    alone, together = two
    now = time.time() + 5  # past every enqueue of the scenes: all due
    for rep in scene(alone, now):
        alone_(alone, rep)  # each in a batch, and a commit, of its own
    reports = scene(together, now)
    results, statements, commits = in_one_batch(together, [report(together, r) for r in reports])
    assert results == [None] * len(reports)
    assert commits == 1
    # In one go, with no savepoint per report (SQLite's trace repeats a statement for
    # every trigger it runs, so the statements are not counted here). The run is the
    # whole transaction, so the transaction is its savepoint: none of its own either.
    assert not [s for s in statements if s.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK"))]
    # Nothing read back: a SELECT is a step per row, each a wait for the GIL.
    assert not [s for s in statements if s.startswith("SELECT")]
    assert rows(together) == rows(alone)
    got = rows(together)
    assert got["messages"] == [(1, 0), (2, 1), (3, 0), (4, 1), (5, 1), (6, 1)]
    assert got["contents"] == [(2,), (4,), (5,), (6,)]
    states = {row[0]: row[1] for row in got["recipients"]}
    assert states[5] == "delivered"  # the late failure did not undo the delivery
    assert states[9] == "held"
    theirs = next(row for row in got["recipients"] if row[0] == 7)
    assert theirs[7] == "theirs" and theirs[4] == theirs[8] == now + 900
    assert together.integrity_check() == ["ok"]


def test_a_batch_it_cannot_take_whole_is_written_report_by_report(
    two: tuple[SQLiteQueue, SQLiteQueue],
) -> None:
    """A recipient reported twice (deferred, then delivered: in that order) and one that
    is not there: only the stranger's caller fails, and the rest is as if alone."""
    alone, together = two
    now = time.time() + 5  # past every enqueue of the scenes: all due
    for q in (alone, together):
        reports = scene(q, now)
        again = (reports[2][0], "delivered", None, reports[2][3])  # after its deferral
        stranger = (10**12, "delivered", None, None)
        if q is alone:
            for rep in [*reports, again]:
                alone_(q, rep)
            with pytest.raises(NotFound):
                alone_(q, stranger)
            continue
        calls = [report(q, r) for r in [*reports, again, stranger]]
        results, statements, commits = in_one_batch(q, calls)
        assert commits == 1
        assert results[:-1] == [None] * (len(calls) - 1)
        assert isinstance(results[-1], NotFound)
        # The joint run gave up: its transaction, which held nothing else, rolled back,
        # and the reports went in again one by one, each in its savepoint.
        assert statements.count("BEGIN IMMEDIATE") == 2
        assert statements[:statements.index("BEGIN IMMEDIATE", 1)].count("ROLLBACK") == 1
        assert [s for s in statements if s.startswith("SAVEPOINT request")]
    for table, got in rows(together).items():
        assert got == rows(alone)[table], table
    recipient = rows(together)["recipients"][2]
    assert recipient[1] == RecipientState.DELIVERED.value and recipient[2] == 2


def test_an_async_report_waits_for_company_but_a_message_to_queue_ends_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Async reports linger (RecordOp.LINGER) so that a conversation's share a commit;
    an enqueue, whose client is waiting for its 250, cuts the lingering short. The
    linger is made long here, so that only a wait that was ended can finish in time."""
    from mailgate.queue.sqlite.records import RecordOp

    q = SQLiteQueue(tmp_path / "q.db")
    try:
        for i in range(3):
            q.enqueue(message(f"b{i}@example.org"))
        items = q.claim(time.time() + 5, limit=10, lease=600)
        ids = [(rc.id, item.claim_token) for item in items for rc in item.recipients]
        monkeypatch.setattr(RecordOp, "LINGER", 0.4)
        before = q.commit_count

        async def two_reports() -> None:
            first = asyncio.ensure_future(q.record_async(
                ids[0][0], attempt("delivered"), None, ids[0][1]))
            await asyncio.sleep(0.05)  # well inside the linger
            await q.record_async(ids[1][0], attempt("delivered"), None, ids[1][1])
            await first

        asyncio.run(two_reports())
        assert q.commit_count - before == 1  # both in one commit

        monkeypatch.setattr(RecordOp, "LINGER", 600.0)
        before = q.commit_count

        async def report_then_message() -> str:
            report = asyncio.ensure_future(q.record_async(
                ids[2][0], attempt("delivered"), None, ids[2][1]))
            await asyncio.sleep(0.05)
            qid = await asyncio.wait_for(q.enqueue_async(message("c@example.org")), 60)
            await asyncio.wait_for(report, 60)
            return qid

        assert asyncio.run(report_then_message())
        assert q.commit_count - before == 1

        # A blocking caller (local delivery records message after message in a thread)
        # has nobody to wait for: its report does not linger.
        q.enqueue(message("d@example.org"))
        item = next(i for i in q.claim(time.time() + 5, limit=10, lease=600)
                    if i.recipients[0].address == "d@example.org")
        submitted: list[Any] = []
        submit = q._submit

        def watched(op: Any, *args: Any, **kwargs: Any) -> Any:
            submitted.append(op)
            return submit(op, *args, **kwargs)

        monkeypatch.setattr(q, "_submit", watched)
        q.record(item.recipients[0].id, attempt("delivered"), claim_token=item.claim_token)
        assert [(type(op), op.linger) for op in submitted] == [(RecordOp, 0.0)]
        with sqlite3.connect(q.path) as conn:
            states = conn.execute("SELECT state FROM recipients WHERE id IN (?, ?, ?)",
                                  [i for i, _ in ids]).fetchall()
        assert states == [("delivered",)] * 3
    finally:
        q.close()
