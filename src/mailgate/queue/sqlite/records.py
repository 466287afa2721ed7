"""What a delivery attempt writes: its row in `attempts`, the recipient's new state, and,
once no recipient of the message is left to deliver, the message finished.

A deliverer reports its attempts one by one and the writer commits the reports that
are waiting together. Alone (`RecordOp.__call__`), a report is four to six statements in
a savepoint of its own, so a batch of 20 was about 120 statements, and every one is a
trip through the sqlite3 module, which gives up the GIL and must win it back from the
busy event loop while the write lock is held. `RecordOp.run_together` writes the whole
batch with a handful of statements, as `EnqueueOp.run_together` does for messages: a
report in a batch of 20 costs 83 us of CPU instead of 97, too little to see in a whole
server's figures. (The deliverer's commits still hold the lock about 1.7 ms one
connection at a time: their fsync, and the wake-ups of a thread on a machine whose two
cores are busy, are most of it.) Anything unusual in a batch (two
reports for one recipient, a recipient gone) makes it give up, and the writer runs the
reports one by one, which finds the one at fault.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

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
_UPDATE_HEAD = (
    "WITH v (id, state, next_attempt, due_at, code, enhanced, text, token, until) AS "
    "(VALUES "
)
_UPDATE_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_TAIL = (
    ") UPDATE recipients SET state = v.state, attempts = recipients.attempts + 1, "
    "next_attempt = v.next_attempt, due_at = v.due_at, last_code = v.code, "
    "last_enhanced = v.enhanced, last_text = v.text, claim_token = v.token, "
    "claim_until = v.until, updated_at = ?, "
    "claim_owner = CASE WHEN v.token IS NULL THEN NULL ELSE recipients.claim_owner END "
    "FROM v WHERE recipients.id = v.id"
)
_UPDATE_WIDTH = 9
_PER_UPDATE = 50  # rows per UPDATE: 450 variables, under SQLite's limit of 999 (old builds)
_update_sql: dict[int, str] = {}


@dataclass(slots=True, eq=False)
class RecordOp(Joinable[None]):
    """One attempt's report. A recipient already delivered or failed stays so (a late
    report from a worker whose lease ran out must not send it back to the queue), and a
    held one stays held after a deferral. A claim is cleared when `claim_token` is None or
    its own, but not when another worker has since claimed the recipient and is still
    on it."""

    recipient_id: int
    attempt: Attempt
    outcome: RecipientState  # delivered, deferred or failed (checked by the caller)
    next_attempt: float | None  # set for a deferral
    claim_token: str | None

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

    def __call__(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        row = conn.execute(
            "SELECT msg_seq, state, claim_token, claim_until FROM recipients WHERE id = ?",
            (self.recipient_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"recipient {self.recipient_id} is not in the queue")
        insert_rows(conn, _ATTEMPT_INSERT, [self._attempt_row()])
        new_state, values = self._values(row, now)
        _update(conn, [values], now)
        if new_state in FINAL_STATES and RecipientState(row["state"]) not in FINAL_STATES:
            finish_if_done(conn, [row["msg_seq"]], now)

    @classmethod
    def run_together(cls, conn: sqlite3.Connection, ops: Sequence[Self]) -> list[None]:
        ids = [op.recipient_id for op in ops]
        if len(set(ids)) != len(ids):
            # Each report must see the one before it: the one-by-one path does that.
            raise ValueError("two reports for one recipient in a batch")
        now = time.time()
        rows: dict[int, sqlite3.Row] = {}
        for chunk in chunks(ids):
            marks = ", ".join("?" * len(chunk))
            for row in conn.execute(
                "SELECT id, msg_seq, state, claim_token, claim_until FROM recipients "
                f"WHERE id IN ({marks})", chunk,
            ):
                rows[row["id"]] = row
        if len(rows) != len(ids):
            raise NotFound("a recipient reported on is not in the queue")
        insert_rows(conn, _ATTEMPT_INSERT, [op._attempt_row() for op in ops])
        updates: list[tuple[object, ...]] = []
        finishing: list[int] = []
        for op in ops:
            row = rows[op.recipient_id]
            new_state, values = op._values(row, now)
            updates.append(values)
            if new_state in FINAL_STATES and RecipientState(row["state"]) not in FINAL_STATES:
                finishing.append(row["msg_seq"])
        _update(conn, updates, now)
        if finishing:
            finish_if_done(conn, sorted(set(finishing)), now)
        return [None] * len(ops)


def _update(conn: sqlite3.Connection, updates: Sequence[tuple[object, ...]], now: float) -> None:
    for i in range(0, len(updates), _PER_UPDATE):
        chunk = updates[i : i + _PER_UPDATE]
        sql = _update_sql.get(len(chunk))
        if sql is None:
            sql = _update_sql[len(chunk)] = (
                _UPDATE_HEAD + ", ".join([_UPDATE_ROW] * len(chunk)) + _UPDATE_TAIL
            )
        conn.execute(sql, [value for row in chunk for value in row] + [now])


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
