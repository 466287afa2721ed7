"""The default queue backend: one SQLite file (data_dir/queue.db) with group commit.

`SQLiteQueue` is the `Queue` protocol in SQL on top of the generic engine in writer.py
(one writer thread whose batches share one commit and fsync, pooled readers, a
checkpoint thread: why, there). The rest of the package is the queue's own:

  schema.py   tables, migrations, indexes added later, SCHEMA_VERSION
  rows.py     messages into rows (one enqueue, or a batch's in a few INSERTs) and back
  owners.py   who holds a claim, so the claims of a dead process come back at restart
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from mailgate.queue import (
    ActivityBucket,
    Attempt,
    NewMessage,
    NotFound,
    QueuedMessage,
    QueueError,
    RecipientState,
    WorkItem,
    domain_of,
    new_queue_id,
)
from mailgate.queue.sqlite.owners import ClaimOwner
from mailgate.queue.sqlite.records import RecordOp
from mailgate.queue.sqlite.rows import (
    ClaimFloor,
    ClaimOp,
    EnqueueOp,
    chunks,
    domain_filter,
    load_messages,
    message_seq,
    restore_message,
)
from mailgate.queue.sqlite.schema import SCHEMA_VERSION, create_schema, whole_minutes
from mailgate.queue.sqlite.writer import GroupCommitWriter

__all__ = ["SCHEMA_VERSION", "ClaimOwner", "SQLiteQueue", "new_queue_id"]

_ACTIVE = "('queued', 'deferred')"  # the states claim() may take
# When work becomes due again after a change of schedule: at `now`, unless a live claim
# still covers it (the claimant's record() or release() sets the real value).
_DUE_NOW = "CASE WHEN claim_until > :now THEN claim_until ELSE :now END"
_OUTCOMES = frozenset(
    {RecipientState.DELIVERED, RecipientState.DEFERRED, RecipientState.FAILED}
)


class SQLiteQueue(GroupCommitWriter):
    """The `Queue` protocol on one SQLite file; see the package docstring for the design.

    `max_page_count` caps the database size (in pages) for this process, so tests can
    make storage "full" for real. `busy_timeout` is how long to wait for another process
    holding the write lock before giving up with QueueError. A batch holds at most
    `batch_limit` requests and stops growing past `batch_bytes` of message content.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_page_count: int | None = None,
        busy_timeout: float = 30.0,
        batch_limit: int = 512,
        batch_bytes: int = 64 * 1024 * 1024,
        secure_delete: str = "fast",
    ) -> None:
        self.owner = ClaimOwner.this_process()
        self._claimed_ever = False  # whether close() has claims to give back
        # Where the next claim for any domain may start its due walk (ClaimFloor).
        self._floor: ClaimFloor | None = None
        self._floors_forgotten = 0  # how many times release() cleared it
        super().__init__(path, max_page_count=max_page_count, busy_timeout=busy_timeout,
                         batch_limit=batch_limit, batch_bytes=batch_bytes,
                         secure_delete=secure_delete)

    def _prepare(self, conn: sqlite3.Connection) -> None:
        create_schema(conn, self.path)

    def _final_op(self) -> Callable[[sqlite3.Connection], object] | None:
        return self._retire_owner if self._claimed_ever else None

    # ------------------------------------------------------------------ enqueue

    def _enqueue_op(self, message: NewMessage) -> EnqueueOp:
        if not message.recipients:
            raise QueueError("could not queue the message: it has no recipients")
        return EnqueueOp(
            message,
            b"" if message.spool is not None else bytes(message.content),
            [
                (
                    r.address,
                    domain_of(r.address),
                    r.orcpt,
                    None if r.notify is None else ",".join(r.notify),
                )
                for r in message.recipients
            ],
        )

    def enqueue(self, message: NewMessage) -> str:
        """Store durably; return the queue id once the commit holding it has been fsync'd.

        Blocks the calling thread; many threads calling at once share commits."""
        return self._call(self._enqueue_op(message), "queue the message", message.size)

    async def enqueue_async(self, message: NewMessage) -> str:
        """`enqueue` without blocking the event loop: the writer thread completes an
        asyncio future (one call_soon_threadsafe for its batch) after the commit.

        If the awaiting task is cancelled before the writer takes the request, nothing is
        stored; once the writer has it, the message is stored even though this caller
        never learns its id (the client was not told 250, so at worst it sends again)."""
        return await self._submit_async(
            self._enqueue_op(message), "queue the message", message.size
        )

    def watch(self, wake: Callable[[], None]) -> None:
        """Nothing to watch: the server that queues a message wakes its own workers, and
        sibling worker processes on the same file find new work at their next poll."""

    # ------------------------------------------------------------------ delivery side

    def claim(self, now: float, limit: int, lease: float, domains: Sequence[str] | None = None,
              exclude_domains: Sequence[str] | None = None, per_domain: int | None = None,
              ) -> list[WorkItem]:
        """Take up to `limit` messages with due recipients, each under its own claim token
        that lasts until now + lease; see `Queue.claim`."""
        op = self._claim_op(now, limit, lease, domains, exclude_domains, per_domain)
        if op is None:
            return []
        return self._call(op.as_claim(), "claim work", durable=False,
                          shortcut=op.nothing_due)

    async def claim_async(self, now: float, limit: int, lease: float,
                          domains: Sequence[str] | None = None,
                          exclude_domains: Sequence[str] | None = None,
                          per_domain: int | None = None) -> list[WorkItem]:
        """`claim` handed straight to the writer thread, with no thread of its own."""
        op = self._claim_op(now, limit, lease, domains, exclude_domains, per_domain)
        if op is None:
            return []
        return await self._submit_async(op.as_claim(), "claim work", durable=False,
                                        shortcut=op.nothing_due)

    def _claim_op(self, now: float, limit: int, lease: float, domains: Sequence[str] | None,
                  exclude_domains: Sequence[str] | None, per_domain: int | None,
                  ) -> ClaimOp | None:
        """The write behind `claim`; None when there is nothing to ask for."""
        if limit <= 0 or (domains is not None and not domains):
            return None
        where, params = domain_filter(domains, exclude_domains)
        cap = per_domain if per_domain is not None and per_domain > 0 else None
        # INDEXED BY: without statistics the planner may prefer recipients_state and sort
        # every queued recipient. The due index yields recipients in order; a worker for
        # a few domains reads only theirs (and sorts just those when there are several),
        # instead of walking past every other domain's due work.
        index = "recipients_due" if domains is None else "recipients_domain_due"
        self._claimed_ever = True
        if domains is not None:  # a few domains' own index: no backlog of others to pass
            return ClaimOp(self.owner, index, now, now + lease, where, tuple(params), limit,
                           cap)
        excluded = frozenset(d.lower() for d in exclude_domains or ())
        floor = self._floor
        start = floor.start_for(excluded, now) if floor is not None else None
        used = floor if start is not None else None
        forgotten = self._floors_forgotten

        def learnt(conn: sqlite3.Connection, found: float | None) -> None:
            # In the writer thread, after the read; not from a floor release() forgot.
            if self._floors_forgotten == forgotten:
                self._floor = ClaimFloor.after(conn, used, now, found)

        return ClaimOp(self.owner, index, now, now + lease, where, tuple(params), limit, cap,
                       start=start, learnt=learnt)

    def record(
        self,
        recipient_id: int,
        attempt: Attempt,
        next_attempt: float | None = None,
        claim_token: str | None = None,
    ) -> None:
        """Store an attempt and move the recipient on; see `Queue.record`."""
        self._call(self._record_op(recipient_id, attempt, next_attempt, claim_token),
                   "record the attempt")

    async def record_async(
        self,
        recipient_id: int,
        attempt: Attempt,
        next_attempt: float | None = None,
        claim_token: str | None = None,
    ) -> None:
        """`record` without blocking the event loop; concurrent calls share one commit."""
        op = self._record_op(recipient_id, attempt, next_attempt, claim_token)
        op.linger = RecordOp.LINGER
        await self._submit_async(op, "record the attempt")

    def _record_op(
        self,
        recipient_id: int,
        attempt: Attempt,
        next_attempt: float | None,
        claim_token: str | None,
    ) -> RecordOp:
        """The write behind `record` (what it does: see `RecordOp`), once the attempt's
        outcome is known to be one a report may have."""
        try:
            outcome = RecipientState(attempt.outcome)
        except ValueError:
            outcome = None
        if outcome not in _OUTCOMES:
            raise QueueError(
                f"could not record the attempt: outcome {attempt.outcome!r} is not one of "
                "delivered, deferred, failed"
            )
        if outcome is RecipientState.DEFERRED and next_attempt is None:
            raise QueueError("could not record the attempt: a deferral needs next_attempt")
        return RecordOp(recipient_id, attempt, outcome, next_attempt, claim_token)

    def release(self, claim_token: str) -> None:
        """Give claimed work back unchanged: due again at its own next_attempt."""
        self._floors_forgotten += 1  # that may be in the past, before where walks start
        self._floor = None

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE recipients SET claim_token = NULL, claim_until = NULL, "
                f"claim_owner = NULL, due_at = CASE WHEN state IN {_ACTIVE} THEN next_attempt "
                "END WHERE claim_token = ?",
                (claim_token,),
            )

        self._call(op, "release the claim")

    def recover_claims(self) -> int:
        """Take back the claims of processes on this host that have ended (killed, crashed,
        or from before a reboot): due again at once instead of when their lease runs out.
        Return how many recipients came back. See `Queue.recover_claims`."""
        owner = self.owner

        def op(conn: sqlite3.Connection) -> int:
            owner.register(conn)
            dead = [
                row["id"]
                for row in conn.execute(
                    "SELECT id, host, pid, started, boot FROM owners WHERE id != ?",
                    (owner.id,))
                if owner.outlived(row["host"], row["pid"], row["started"], row["boot"])
            ]
            back = 0
            for chunk in chunks(dead):
                marks = ", ".join("?" * len(chunk))
                back += conn.execute(
                    "UPDATE recipients INDEXED BY recipients_owner SET claim_token = NULL, "
                    "claim_until = NULL, claim_owner = NULL, "
                    f"due_at = CASE WHEN state IN {_ACTIVE} THEN next_attempt END "
                    f"WHERE claim_owner IN ({marks})", chunk).rowcount
                conn.execute(f"DELETE FROM owners WHERE id IN ({marks})", chunk)
            return back

        return self._call(op, "recover the claims of ended processes")

    def _retire_owner(self, conn: sqlite3.Connection) -> None:
        """At close: whatever this process still has claimed is unfinished, so it is due
        again at once; and this process no longer owns claims."""
        conn.execute(
            "UPDATE recipients INDEXED BY recipients_owner SET claim_token = NULL, "
            "claim_until = NULL, claim_owner = NULL, "
            f"due_at = CASE WHEN state IN {_ACTIVE} THEN next_attempt END "
            "WHERE claim_owner = ?", (self.owner.id,))
        conn.execute("DELETE FROM owners WHERE id = ?", (self.owner.id,))

    def mark_delay_notified(self, recipient_ids: Sequence[int]) -> builtins.list[int]:
        """Set `delay_notified`; the ids it was not set on before. See
        `Queue.mark_delay_notified`."""
        if not recipient_ids:
            return []
        return self._call(self._mark_delay_notified_op(recipient_ids), "note the delay notice")

    async def mark_delay_notified_async(self, recipient_ids: Sequence[int]
                                        ) -> builtins.list[int]:
        """`mark_delay_notified` without blocking the event loop."""
        if not recipient_ids:
            return []
        op = self._mark_delay_notified_op(recipient_ids)
        return await self._submit_async(op, "note the delay notice")

    def _mark_delay_notified_op(
        self, recipient_ids: Sequence[int]
    ) -> Callable[[sqlite3.Connection], builtins.list[int]]:
        ids = sorted(set(recipient_ids))

        def op(conn: sqlite3.Connection) -> builtins.list[int]:
            # Test and set in one statement: the ids come back only from the one caller
            # that changed them.
            marked: builtins.list[int] = []
            for chunk in chunks(ids):
                marks = ", ".join("?" * len(chunk))
                marked += [row[0] for row in conn.execute(
                    "UPDATE recipients SET delay_notified = 1 "
                    f"WHERE id IN ({marks}) AND delay_notified = 0 RETURNING id",
                    chunk,
                )]
            return sorted(marked)

        return op

    # ------------------------------------------------------------------ administration

    def list(
        self,
        state: RecipientState | None = None,
        limit: int = 100,
        offset: int = 0,
        sender: str | None = None,
        recipient_domain: str | None = None,
        *,
        queued_before: float | None = None,
        before: str | None = None,
        after: str | None = None,
        live_only: bool = False,
    ) -> builtins.list[QueuedMessage]:
        """Messages, most recently queued first, with their recipients (no content).

        `state` and `recipient_domain` keep messages with at least one recipient that
        matches both; `sender` and the domain compare without regard to ASCII case;
        `queued_before`, `before` and `after` as in `Queue.list`.

        Every variant walks one index in seq order (recipients_state / recipients_domain
        when a recipient is filtered, messages_sender for a sender, else the table's own
        key) from the page's first row, and stops after `limit` matches."""
        rcpt: list[str] = []
        params: list[object] = []
        if state is not None:
            rcpt.append("r.state = ?")
            params.append(RecipientState(state).value)
        if recipient_domain is not None:
            rcpt.append("r.domain = ?")
            params.append(recipient_domain.lower())
        key = "r.msg_seq" if rcpt else "m.seq"
        where = list(rcpt)
        if sender is not None:
            where.append("m.sender = ? COLLATE NOCASE")
            params.append(sender)
        if queued_before is not None:
            where.append("m.queued_at < ?")
            params.append(queued_before)
        if live_only:
            where.append("m.finished_at IS NULL")
        newer = after is not None
        order = "ASC" if newer else "DESC"
        if rcpt:
            # Driven by recipients_state / recipients_domain, walked in key order: the
            # page comes out in order without sorting every match.
            join = " JOIN messages m ON m.seq = r.msg_seq" if len(where) > len(rcpt) else ""
            base = f"SELECT DISTINCT r.msg_seq FROM recipients r{join}"
        elif live_only and sender is None:
            # The partial index of live messages, in seq order: finished records,
            # however many, are never stepped over.
            base = "SELECT m.seq FROM messages m INDEXED BY messages_live"
        else:
            base = "SELECT m.seq FROM messages m"

        def read(conn: sqlite3.Connection) -> builtins.list[QueuedMessage]:
            conds, args = list(where), list(params)
            if before is not None:
                conds.append(f"{key} < ?")
                args.append(message_seq(conn, before))
            if after is not None:
                conds.append(f"{key} > ?")
                args.append(message_seq(conn, after))
            if queued_before is not None:
                # Seqs grow with queued_at (nearly: clocks of several processes), so the
                # newest seq queued before the cutoff bounds the walk: an "older than a
                # day" page need not step over the day's messages one by one.
                top = conn.execute(
                    "SELECT max(seq) FROM messages INDEXED BY messages_queued "
                    "WHERE queued_at < ?",
                    (queued_before,),
                ).fetchone()[0]
                if top is None:
                    return []
                conds.append(f"{key} <= ?")
                args.append(top)
            sql = base
            if conds:
                sql += f" WHERE {' AND '.join(conds)}"
            sql += f" ORDER BY {key} {order} LIMIT ? OFFSET ?"
            args += [max(0, limit), max(0, offset)]
            seqs = [row[0] for row in conn.execute(sql, args)]
            if newer:
                seqs.reverse()
            return load_messages(conn, seqs, content=False)

        return self._read("list the queue", read)

    def show(self, message_id: str, content: bool = False) -> QueuedMessage:
        """One message with its recipients and every attempt; NotFound if unknown."""

        def read(conn: sqlite3.Connection) -> QueuedMessage:
            seq = message_seq(conn, message_id)
            (message,) = load_messages(conn, [seq], content=content)
            attempts = tuple(
                (
                    a["recipient_id"],
                    Attempt(
                        at=a["at"],
                        host=a["host"],
                        code=a["code"],
                        enhanced=a["enhanced"],
                        text=a["text"],
                        outcome=a["outcome"],
                        remote=bool(a["remote"]),
                        tls=a["tls"],
                    ),
                )
                for a in conn.execute(
                    "SELECT a.* FROM attempts a JOIN recipients r ON r.id = a.recipient_id "
                    "WHERE r.msg_seq = ? ORDER BY a.at, a.id",
                    (seq,),
                )
            )
            return replace(message, attempts=attempts)

        return self._read("show the message", read)

    def delete(self, message_id: str) -> None:
        """Remove the message, its recipients and their attempts; NotFound if unknown."""

        def op(conn: sqlite3.Connection) -> None:
            # The foreign keys cascade to contents, recipients and attempts.
            if conn.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount == 0:
                raise NotFound(f"message {message_id} is not in the queue")

        self._call(op, "delete the message")

    def hold(self, message_id: str, reason: str | None = None) -> int:
        """Hold every queued or deferred recipient, with `reason` when given (shown by
        `queue show`, the API and the admin page); return how many. A claim on them ends:
        a held recipient is nobody's work."""

        def op(conn: sqlite3.Connection) -> int:
            seq = message_seq(conn, message_id)
            return conn.execute(
                "UPDATE recipients SET state = 'held', next_attempt = NULL, due_at = NULL, "
                "claim_token = NULL, claim_until = NULL, claim_owner = NULL, "
                f"held_reason = ?, updated_at = ? WHERE msg_seq = ? AND state IN {_ACTIVE}",
                (reason, time.time(), seq),
            ).rowcount

        return self._call(op, "hold the message")

    def release_hold(self, message_id: str) -> int:
        """Release held recipients, due now; return how many."""

        def op(conn: sqlite3.Connection) -> int:
            seq = message_seq(conn, message_id)
            return conn.execute(
                "UPDATE recipients SET state = 'queued', next_attempt = :now, "
                f"due_at = {_DUE_NOW}, updated_at = :now, held_reason = NULL "
                "WHERE msg_seq = :seq AND state = 'held'",
                {"now": time.time(), "seq": seq},
            ).rowcount

        return self._call(op, "release the hold")

    def retry(self, message_id: str | None, now: float) -> int:
        """Make queued/deferred recipients of one message (None: all) due now; return how
        many. Recipients a worker has claimed stay with it until it reports."""

        def op(conn: sqlite3.Connection) -> int:
            params: dict[str, object] = {"now": now}
            which = ""
            if message_id is not None:
                params["seq"] = message_seq(conn, message_id)
                which = " AND msg_seq = :seq"
            return conn.execute(
                f"UPDATE recipients SET next_attempt = :now, due_at = {_DUE_NOW} "
                f"WHERE state IN {_ACTIVE}{which}",
                params,
            ).rowcount

        return self._call(op, "retry")

    def counts(self) -> dict[str, int]:
        """Recipients per state, every state present (zero when none): the counts the
        triggers keep (schema.py), one read of a table of five rows at any queue size."""

        def read(conn: sqlite3.Connection) -> dict[str, int]:
            result = {s.value: 0 for s in RecipientState}
            for state, n in conn.execute("SELECT state, n FROM state_counts"):
                if state in result:
                    result[state] = n
            return result

        return self._read("count the queue", read)

    def purge(self, finished_before: float, limit: int = 1000) -> int:
        """Remove the records of up to `limit` messages finished before that time, oldest
        first; see `Queue.purge`. The foreign keys cascade to recipients and attempts."""
        if limit <= 0:
            return 0

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages INDEXED BY "
                "messages_finished WHERE finished_at < ? ORDER BY finished_at LIMIT ?)",
                (finished_before, limit),
            ).rowcount

        return self._call(op, "purge finished messages")

    def activity(
        self, since: float, bucket_seconds: float, until: float | None = None
    ) -> builtins.list[ActivityBucket]:
        """Messages queued and attempts by outcome per bucket; see `Queue.activity`.

        The whole minutes of a bucket come from `activity_minutes` (kept by triggers,
        schema.py): a day is at most 1,440 rows per series whatever the traffic. Only the
        partial minutes at a bucket's edges are counted in the rows' own indexes, so
        the cost no longer grows with how much mail the day saw."""
        if not bucket_seconds > 0:
            raise ValueError("bucket_seconds must be positive")
        end = time.time() if until is None else until
        n = int(-(-(end - since) // bucket_seconds)) if end > since else 0
        if n > 1000:
            raise ValueError("at most 1000 buckets: choose longer buckets")
        edges = [(since + i * bucket_seconds, min(end, since + (i + 1) * bucket_seconds))
                 for i in range(n)]
        series: dict[str, tuple[str, tuple[str, ...]]] = {
            "accepted": ("SELECT count(*) FROM messages INDEXED BY messages_queued "
                         "WHERE queued_at >= ? AND queued_at < ?", ()),
            "bounced": ("SELECT count(*) FROM messages INDEXED BY messages_bounces "
                        "WHERE sender = '' AND queued_at >= ? AND queued_at < ?", ()),
        }
        for outcome in ("delivered", "deferred", "failed"):
            series[outcome] = ("SELECT count(*) FROM attempts INDEXED BY attempts_outcome "
                               "WHERE outcome = ? AND at >= ? AND at < ?", (outcome,))
        minutes = ("SELECT coalesce(sum(n), 0) FROM activity_minutes "
                   "WHERE series = ? AND minute >= ? AND minute < ?")

        def count(conn: sqlite3.Connection, name: str, lo: float, hi: float) -> int:
            sql, pre = series[name]
            first, last = whole_minutes(lo, hi)
            if first >= last:
                return int(conn.execute(sql, (*pre, lo, hi)).fetchone()[0])
            total = int(conn.execute(minutes, (name, first, last)).fetchone()[0])
            if lo < first * 60:
                total += conn.execute(sql, (*pre, lo, first * 60)).fetchone()[0]
            if last * 60 < hi:
                total += conn.execute(sql, (*pre, last * 60, hi)).fetchone()[0]
            return total

        def read(conn: sqlite3.Connection) -> builtins.list[ActivityBucket]:
            return [
                ActivityBucket(start=lo, seconds=bucket_seconds,
                               **{name: count(conn, name, lo, hi) for name in series})
                for lo, hi in edges
            ]

        return self._read("count the queue's activity", read)

    def take_slot(self, key: str, limit: int, lease: float) -> str | None:
        """Always granted: one process delivers from this file at a time per worker, and
        the delivery engine's semaphores hold the limit (see `Queue.take_slot`)."""
        return "local"

    def give_slot(self, token: str) -> None:
        """Nothing was taken."""

    def share_counts(self, deltas: Mapping[tuple[str, str], int], window: float
                     ) -> dict[tuple[str, str], int]:
        """One server per file: nothing to share (see `Queue.share_counts`)."""
        return {}

    def restore(self, message: QueuedMessage) -> bool:
        """Store a message as exported from another queue; see `Queue.restore`."""
        return self._call(lambda conn: restore_message(conn, message), "restore the message")

    def integrity_check(self) -> builtins.list[str]:  # `list` here is the method above
        """SQLite's PRAGMA integrity_check: ["ok"] when the file is sound."""
        return self._read(
            "check the queue",
            lambda conn: [str(row[0]) for row in conn.execute("PRAGMA integrity_check")],
        )

