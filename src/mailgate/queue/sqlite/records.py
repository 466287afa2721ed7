"""What a delivery attempt writes: its row in `attempts`, the recipient's new state, and,
once no recipient of the message is left to deliver, the message finished.

A deliverer reports its attempts one by one and the writer commits the reports that
are waiting together. Alone (`RecordOp.__call__`), a report reads its recipient's row,
applies the rules in Python and writes it back: four to six statements. A batch
(`RecordOp.run_together`) of up to 50 is two statements, four when a message may
finish, and reads nothing back: the rules are written out in SQL in its UPDATE. That
matters more than the statements' own cost: each SQLite step gives the GIL up and,
while the write lock is held, waits to win it back from the deliverer's busy event
loop, and a SELECT is a step per row. Reading the rows first made a batch of five
0.41 ms on a quiet connection against 0.34 now, and one connection at a time the
server went 4-6 % faster in three alternating rounds, its deliverer using 5 % less
CPU. Anything unusual in a batch (two reports for one recipient, a recipient gone)
makes it give up, and the writer runs the reports one by one, which finds the one at
fault.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from mailgate.queue import FINAL_STATES, Attempt, NotFound, RecipientState
from mailgate.queue.sqlite.rows import chunks, insert_rows
from mailgate.queue.sqlite.writer import Joinable

__all__ = ["RecordOp", "finish_if_done"]

_ATTEMPT_INSERT = (
    "INSERT INTO attempts (recipient_id, at, host, code, enhanced, text, outcome, remote, "
    "tls) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
    9,
)
# One UPDATE for many recipients, each with its own values (UPDATE ... FROM, SQLite 3.33).
# The rules of `RecordOp._values` are written out in SQL, so that a batch reads nothing
# back: every SET expression sees the row as it was before the statement.
_LIVE = "recipients.state NOT IN ('delivered', 'failed')"
_DEFERS = f"({_LIVE} AND recipients.state <> 'held' AND v.outcome = 'deferred')"
_THEIRS = (  # another worker claimed the recipient since, and its claim still runs
    "(v.token IS NOT NULL AND recipients.claim_token IS NOT NULL "
    "AND recipients.claim_token <> v.token AND recipients.claim_until > v.now)"
)
_UPDATE_HEAD = "WITH v (id, outcome, next_attempt, code, enhanced, text, token, now) AS (VALUES "
_UPDATE_ROW = "(?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_TAIL = (
    ") UPDATE recipients SET "
    f"state = CASE WHEN NOT {_LIVE} THEN recipients.state "
    "WHEN v.outcome <> 'deferred' THEN v.outcome "
    "WHEN recipients.state = 'held' THEN 'held' ELSE 'deferred' END, "
    "attempts = recipients.attempts + 1, "
    f"next_attempt = CASE WHEN {_DEFERS} THEN v.next_attempt END, "
    f"due_at = CASE WHEN NOT {_THEIRS} THEN CASE WHEN {_DEFERS} THEN v.next_attempt END "
    f"WHEN {_DEFERS} AND v.next_attempt IS NOT NULL THEN recipients.claim_until END, "
    "last_code = v.code, last_enhanced = v.enhanced, last_text = v.text, "
    f"claim_token = CASE WHEN {_THEIRS} THEN recipients.claim_token END, "
    f"claim_until = CASE WHEN {_THEIRS} THEN recipients.claim_until END, "
    f"claim_owner = CASE WHEN {_THEIRS} THEN recipients.claim_owner END, "
    "updated_at = v.now "
    "FROM v WHERE recipients.id = v.id"
)
_PER_UPDATE = 50  # rows per UPDATE: 400 variables, under SQLite's limit of 999 (old builds)
_update_sql: dict[int, str] = {}
_UPDATE_ONE = (  # one recipient, its values worked out by `RecordOp._values`
    "UPDATE recipients SET state = ?, attempts = attempts + 1, next_attempt = ?, "
    "due_at = ?, last_code = ?, last_enhanced = ?, last_text = ?, claim_token = ?, "
    "claim_until = ?, updated_at = ?, "
    "claim_owner = CASE WHEN ? IS NULL THEN NULL ELSE claim_owner END WHERE id = ?"
)
# The messages of the recipients just reported delivered or failed whose last live
# recipient that was: their content goes, and they are finished. One step each.
_DONE = (
    "{seq} IN (SELECT msg_seq FROM recipients WHERE id IN ({marks})) "
    "AND NOT EXISTS (SELECT 1 FROM recipients AS r INDEXED BY recipients_message "
    "WHERE r.msg_seq = {seq} AND r.state NOT IN ('delivered', 'failed'))"
)


@dataclass(slots=True, eq=False)
class RecordOp(Joinable[None]):
    """One attempt's report. A recipient already delivered or failed stays so (a late
    report from a worker whose lease ran out must not send it back to the queue), and a
    held one stays held after a deferral. A claim is cleared when `claim_token` is None or
    its own, but not when another worker has since claimed the recipient and is still
    on it."""

    # An async report waits up to 3 ms for others to share its commit (the writer's
    # `linger`): a conversation reports its messages one by one, a few tenths of a
    # millisecond apart, and nobody waits on the write (the deliverer goes on sending).
    # One connection at a time, the deliverer wrote 17 % fewer WAL bytes per message. A
    # blocking caller (local delivery, a thread that records message after message)
    # would only wait: its reports do not linger.
    LINGER: ClassVar[float] = 0.003

    recipient_id: int
    attempt: Attempt
    outcome: RecipientState  # delivered, deferred or failed (checked by the caller)
    next_attempt: float | None  # set for a deferral
    claim_token: str | None
    linger: float = 0.0

    def _values(self, row: sqlite3.Row, now: float) -> tuple[RecipientState, tuple[object, ...]]:
        """The recipient's new state, and its values in `_UPDATE_ROW`'s order."""
        state = RecipientState(row["state"])
        new_next: float | None = None
        if state in FINAL_STATES:
            new_state = state
        elif self.outcome is not RecipientState.DEFERRED:
            new_state = self.outcome
        elif state is RecipientState.HELD:
            new_state = state
        else:
            new_state, new_next = RecipientState.DEFERRED, self.next_attempt
        theirs = (
            self.claim_token is not None
            and row["claim_token"] not in (None, self.claim_token)
            and row["claim_until"] is not None
            and row["claim_until"] > now
        )
        if theirs:
            token, until = row["claim_token"], row["claim_until"]
            due = until if new_next is not None else None
        else:
            token, until, due = None, None, new_next
        a = self.attempt
        return new_state, (self.recipient_id, new_state.value, new_next, due, a.code,
                           a.enhanced, a.text, token, until)

    def _attempt_row(self) -> tuple[object, ...]:
        a = self.attempt
        return (self.recipient_id, a.at, a.host, a.code, a.enhanced, a.text,
                self.outcome.value, a.remote, a.tls)

    def _report_row(self, now: float) -> tuple[object, ...]:
        """The report's values in `_UPDATE_ROW`'s order."""
        a = self.attempt
        return (self.recipient_id, self.outcome.value, self.next_attempt, a.code, a.enhanced,
                a.text, self.claim_token, now)

    def __call__(self, conn: sqlite3.Connection) -> None:
        """Alone: read the row, apply the rules in Python (`_values`), write it back. Kept
        apart from `run_together`'s SQL on purpose: the tests hold each to the other."""
        now = time.time()
        row = conn.execute(
            "SELECT msg_seq, state, claim_token, claim_until FROM recipients WHERE id = ?",
            (self.recipient_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"recipient {self.recipient_id} is not in the queue")
        insert_rows(conn, _ATTEMPT_INSERT, [self._attempt_row()])
        new_state, (rid, state, new_next, due, code, enhanced, text, token, until) = (
            self._values(row, now))
        conn.execute(_UPDATE_ONE, (state, new_next, due, code, enhanced, text, token, until,
                                   now, token, rid))
        if new_state in FINAL_STATES and RecipientState(row["state"]) not in FINAL_STATES:
            finish_if_done(conn, [row["msg_seq"]], now)

    @classmethod
    def run_together(cls, conn: sqlite3.Connection, ops: Sequence[Self]) -> list[None]:
        """The whole batch in two to four statements that read nothing back: each
        statement is one step of SQLite's, and every step gives the GIL up and waits to
        win it back from the event loop while the write lock is held. Reading the rows
        first, as `__call__` does, was a step per recipient."""
        ids = [op.recipient_id for op in ops]
        if len(set(ids)) != len(ids):
            # Each report must see the one before it: the one-by-one path does that.
            raise ValueError("two reports for one recipient in a batch")
        now = time.time()
        # A recipient that is not in the queue fails this INSERT (attempts.recipient_id
        # references recipients, and the writer turns foreign keys on); the writer then
        # runs the reports one by one, and the one at fault gets its NotFound.
        insert_rows(conn, _ATTEMPT_INSERT, [op._attempt_row() for op in ops])
        for i in range(0, len(ops), _PER_UPDATE):
            chunk = ops[i : i + _PER_UPDATE]
            sql = _update_sql.get(len(chunk))
            if sql is None:
                sql = _update_sql[len(chunk)] = (
                    _UPDATE_HEAD + ", ".join([_UPDATE_ROW] * len(chunk)) + _UPDATE_TAIL
                )
            conn.execute(sql, [value for op in chunk for value in op._report_row(now)])
        # A late report on a recipient already final probes a finished message again:
        # both statements leave it as it is.
        final = [op.recipient_id for op in ops if op.outcome in FINAL_STATES]
        for part in chunks(final):
            marks = ", ".join("?" * len(part))
            conn.execute("DELETE FROM contents WHERE "
                         + _DONE.format(marks=marks, seq="contents.seq"), part)
            conn.execute("UPDATE messages SET finished_at = ? WHERE finished_at IS NULL AND "
                         + _DONE.format(marks=marks, seq="messages.seq"), [now, *part])
        return [None] * len(ops)


def finish_if_done(conn: sqlite3.Connection, seqs: Sequence[int], now: float) -> None:
    """Retention: a message none of whose recipients is left to deliver loses its content
    (it is what takes the space) and is finished as of now; the record stays for the
    listings until `purge`. One probe of the messages' own recipients."""
    for chunk in chunks(seqs):
        marks = ", ".join("?" * len(chunk))
        live = {
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT msg_seq FROM recipients INDEXED BY recipients_message "
                f"WHERE msg_seq IN ({marks}) AND state NOT IN ('delivered', 'failed')",
                chunk,
            )
        }
        done = [seq for seq in chunk if seq not in live]
        if not done:
            continue
        marks = ", ".join("?" * len(done))
        conn.execute(
            f"UPDATE messages SET finished_at = ? WHERE seq IN ({marks}) "
            "AND finished_at IS NULL", [now, *done])
        conn.execute(f"DELETE FROM contents WHERE seq IN ({marks})", done)
