"""The cluster queue backend: one PostgreSQL database shared by several mailgate nodes.

`PostgresQueue` is the `Queue` protocol in SQL on PostgreSQL, on the engine in engine.py
(group commit, a pool for everything else, the node's heartbeat and LISTEN):

  schema.py   tables, SCHEMA_VERSION, `mailgate queue migrate`
  rows.py     messages into rows (content in pieces) and back
  engine.py   connections, group commit, heartbeats, NOTIFY, errors as sentences
  ops.py      statements the operations share: recording outcomes in batches,
              finishing messages, the claim by destination, a dead node's claims

Claims take rows with `FOR UPDATE SKIP LOCKED`, so nodes claiming at once never take the
same recipient and never wait for each other; a claim names its node (`claim_owner`),
whose heartbeat says it is alive. docs/cluster.md tells the whole story.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import secrets
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
)
from mailgate.queue.postgres.engine import Conn, Engine, describe
from mailgate.queue.postgres.ops import (
    _ACTIVE,
    _DUE_NOW,
    _OUTCOMES,
    _UNCLAIM,
    RecordOp,
    _by_destination,
    _notify,
    _within_budget,
    recover_stale,
)
from mailgate.queue.postgres.rows import (
    EnqueueOp,
    load_attempts,
    load_messages,
    message_seq,
    restore_message,
)
from mailgate.queue.postgres.schema import SCHEMA_VERSION, check_schema, fold_counts, migrate
from mailgate.queue.sqlite.schema import whole_minutes  # the same minutes as SQLite's

__all__ = ["SCHEMA_VERSION", "PostgresQueue", "describe", "fold_now", "migrate",
           "migrate_database"]

COUNT_BUCKET = 10.0  # seconds per bucket of shared counts
COUNT_KEYS = 10_000  # the most keys share_counts returns (the busiest)


class PostgresQueue:
    """The `Queue` protocol on PostgreSQL; see the package docstring.

    `node` names this node in the `nodes` table (default: the host name); `heartbeat`
    is how often it says it is alive, `stale` how long without a heartbeat before other
    nodes take its claims back."""

    def __init__(self, dsn: str, *, node: str = "", heartbeat: float = 2.0,
                 stale: float = 10.0, batch_limit: int = 256) -> None:
        self._engine = Engine(dsn, node=node, heartbeat=heartbeat, stale=stale,
                              batch_limit=batch_limit, prepare=check_schema,
                              recover=recover_stale, upkeep=fold_counts)
        self._claimed_ever = False
        # Tokens of a claim whose commit was never confirmed (the database went away
        # mid-claim): it may have committed, and this node, alive, would hold that work
        # until the lease ends. Given back before the next claim.
        self._unconfirmed: set[str] = set()
        self._slot_keys: dict[str, int] = {}  # destinations whose slot rows exist

    @property
    def node_id(self) -> str:
        return self._engine.node_id

    @property
    def commit_count(self) -> int:
        return self._engine.commits

    @property
    def committed_requests(self) -> int:
        return self._engine.committed_requests

    # ------------------------------------------------------------------ enqueue

    @staticmethod
    def _enqueue_op(message: NewMessage) -> EnqueueOp:
        if not message.recipients:
            raise QueueError("could not queue the message: it has no recipients")
        return EnqueueOp(message)

    def enqueue(self, message: NewMessage) -> str:
        return self._engine.call(self._enqueue_op(message), "queue the message")

    async def enqueue_async(self, message: NewMessage) -> str:
        return await self._engine.submit_async(self._enqueue_op(message), "queue the message")

    def watch(self, wake: Callable[[], None]) -> None:
        self._engine.watch(wake)

    # ------------------------------------------------------------------ delivery side

    def claim(self, now: float, limit: int, lease: float, domains: Sequence[str] | None = None,
              exclude_domains: Sequence[str] | None = None,
              per_domain: int | None = None) -> list[WorkItem]:
        if limit <= 0 or (domains is not None and not domains):
            return []
        cap = per_domain if per_domain is not None and per_domain > 0 else None
        engine = self._engine
        engine.start_node()
        if not engine.healthy():
            raise QueueError(f"could not claim work: this node's heartbeat has not reached "
                             f"the queue database at {engine.where} lately")
        self._claimed_ever = True
        if self._unconfirmed:
            lost = sorted(self._unconfirmed)
            engine.run("give back an unconfirmed claim", lambda conn: conn.execute(
                f"UPDATE recipients SET {_UNCLAIM} WHERE claim_token = ANY(%s)", (lost,)))
            self._unconfirmed.difference_update(lost)
        made: list[str] = []
        where, params = "", []
        if domains is not None:
            where += " AND domain = ANY(%s)"
            params.append(sorted({d.lower() for d in domains}))
        if exclude_domains:
            where += " AND NOT (domain = ANY(%s))"
            params.append(sorted({d.lower() for d in exclude_domains}))
        until = now + lease

        def op(conn: Conn) -> list[WorkItem]:
            # Due recipients in due order, locked; rows another node is claiming right
            # now are skipped, not waited for.
            if cap is None:
                rows = conn.execute(
                    "SELECT id, msg_seq FROM recipients WHERE due_at <= %s AND state IN "
                    f"{_ACTIVE}{where} ORDER BY due_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (now, *params, limit * 8)).fetchall()
            else:
                rows = _by_destination(conn, now, where, params, limit, cap)
            seqs: dict[int, None] = {}
            for _, seq in rows:
                seqs[seq] = None
                if cap is None and len(seqs) >= limit:
                    break
            seqs = _within_budget(conn, seqs)
            if not seqs:
                return []
            # The other due recipients of those messages (beyond the first query's rows).
            more = conn.execute(
                "SELECT id, msg_seq FROM recipients WHERE msg_seq = ANY(%s) AND due_at <= %s "
                f"AND state IN {_ACTIVE}{where} FOR UPDATE SKIP LOCKED",
                (list(seqs), now, *params)).fetchall()
            ids: dict[int, set[int]] = {seq: set() for seq in seqs}
            for rid, seq in [*rows, *more]:
                if seq in ids:
                    ids[seq].add(rid)
            tokens = {seq: secrets.token_hex(8) for seq in seqs}
            made.extend(tokens.values())
            # One statement for the lot (not one per message): recipient ids and tokens.
            claimed = sorted((rid, tokens[seq]) for seq in seqs for rid in ids[seq])
            conn.execute(
                "UPDATE recipients r SET claim_token = u.token, claim_until = %s, "
                "due_at = %s, claim_owner = %s FROM unnest(%s::bigint[], %s::text[]) "
                "AS u (id, token) WHERE r.id = u.id",
                (until, until, engine.node_id, [c[0] for c in claimed],
                 [c[1] for c in claimed]))
            messages = load_messages(conn, list(seqs), content=True)
            by_seq = dict(zip(seqs, messages, strict=False))
            return [WorkItem(message=m,
                             recipients=tuple(r for r in m.recipients if r.id in ids[seq]),
                             claim_token=tokens[seq])
                    for seq, m in by_seq.items()]

        try:
            return engine.run("claim work", op)
        except QueueError:
            self._unconfirmed.update(made)
            raise

    def recover_claims(self) -> int:
        self._engine.start_node()
        return self._engine.run("recover the claims of ended nodes",
                                lambda conn: recover_stale(conn, self._engine.stale))

    async def claim_async(self, now: float, limit: int, lease: float,
                          domains: Sequence[str] | None = None,
                          exclude_domains: Sequence[str] | None = None,
                          per_domain: int | None = None) -> list[WorkItem]:
        # A claim here is several round trips on one connection (see `claim`): a thread.
        return await asyncio.to_thread(self.claim, now, limit, lease, domains,
                                       exclude_domains, per_domain)

    def record(self, recipient_id: int, attempt: Attempt, next_attempt: float | None = None,
               claim_token: str | None = None) -> None:
        self._engine.call(self._record_op(recipient_id, attempt, next_attempt, claim_token),
                          "record the attempt")

    async def record_async(self, recipient_id: int, attempt: Attempt,
                           next_attempt: float | None = None,
                           claim_token: str | None = None) -> None:
        op = self._record_op(recipient_id, attempt, next_attempt, claim_token)
        await self._engine.submit_async(op, "record the attempt")

    @staticmethod
    def _record_op(recipient_id: int, attempt: Attempt, next_attempt: float | None,
                   claim_token: str | None) -> RecordOp:
        """As the SQLite backend's: a final recipient stays final, a held one held after
        a deferral, and a claim another worker has since taken stays theirs."""
        try:
            outcome: RecipientState | None = RecipientState(attempt.outcome)
        except ValueError:
            outcome = None
        if outcome not in _OUTCOMES:
            raise QueueError(
                f"could not record the attempt: outcome {attempt.outcome!r} is not one of "
                "delivered, deferred, failed")
        if outcome is RecipientState.DEFERRED and next_attempt is None:
            raise QueueError("could not record the attempt: a deferral needs next_attempt")
        assert outcome is not None
        return RecordOp(recipient_id, attempt, outcome.value, next_attempt, claim_token)

    def release(self, claim_token: str) -> None:
        def op(conn: Conn) -> None:
            if conn.execute(f"UPDATE recipients SET {_UNCLAIM} WHERE claim_token = %s",
                            (claim_token,)).rowcount:
                _notify(conn)

        self._engine.run("release the claim", op)

    def mark_delay_notified(self, recipient_ids: Sequence[int]) -> builtins.list[int]:
        if not recipient_ids:
            return []
        return self._engine.call(self._mark_op(recipient_ids), "note the delay notice")

    async def mark_delay_notified_async(self, recipient_ids: Sequence[int]
                                        ) -> builtins.list[int]:
        if not recipient_ids:
            return []
        return await self._engine.submit_async(self._mark_op(recipient_ids),
                                               "note the delay notice")

    @staticmethod
    def _mark_op(recipient_ids: Sequence[int]) -> Callable[[Conn], builtins.list[int]]:
        ids = sorted(set(recipient_ids))

        def op(conn: Conn) -> builtins.list[int]:
            # Test and set in one statement: only the caller that changed them gets ids.
            return sorted(r[0] for r in conn.execute(
                "UPDATE recipients SET delay_notified = true WHERE id = ANY(%s) "
                "AND NOT delay_notified RETURNING id", (ids,)).fetchall())

        return op

    # ------------------------------------------------------------------ administration

    def list(self, state: RecipientState | None = None, limit: int = 100, offset: int = 0,
             sender: str | None = None, recipient_domain: str | None = None, *,
             queued_before: float | None = None, before: str | None = None,
             after: str | None = None, live_only: bool = False
             ) -> builtins.list[QueuedMessage]:
        rcpt: builtins.list[str] = []
        params: builtins.list[object] = []
        if state is not None:
            rcpt.append("r.state = %s")
            params.append(RecipientState(state).value)
        if recipient_domain is not None:
            rcpt.append("r.domain = %s")
            params.append(recipient_domain.lower())
        key = "r.msg_seq" if rcpt else "m.seq"
        where = list(rcpt)
        if sender is not None:
            where.append("lower(m.sender) = lower(%s)")
            params.append(sender)
        if queued_before is not None:
            where.append("m.queued_at < %s")
            params.append(queued_before)
        if live_only:
            where.append("m.finished_at IS NULL")
        newer = after is not None
        order = "ASC" if newer else "DESC"
        if rcpt:
            join = " JOIN messages m ON m.seq = r.msg_seq" if len(where) > len(rcpt) else ""
            base = f"SELECT DISTINCT r.msg_seq FROM recipients r{join}"
        else:
            base = "SELECT m.seq FROM messages m"

        def read(conn: Conn) -> builtins.list[QueuedMessage]:
            conds, args = list(where), list(params)
            if before is not None:
                conds.append(f"{key} < %s")
                args.append(message_seq(conn, before))
            if after is not None:
                conds.append(f"{key} > %s")
                args.append(message_seq(conn, after))
            sql = base + (f" WHERE {' AND '.join(conds)}" if conds else "")
            sql += f" ORDER BY {key} {order} LIMIT %s OFFSET %s"
            args += [max(0, limit), max(0, offset)]
            seqs = [row[0] for row in conn.execute(sql, args)]
            if newer:
                seqs.reverse()
            return load_messages(conn, seqs, content=False)

        return self._engine.run("list the queue", read)

    def show(self, message_id: str, content: bool = False) -> QueuedMessage:
        def read(conn: Conn) -> QueuedMessage:
            seq = message_seq(conn, message_id)
            found = load_messages(conn, [seq], content=content)
            if not found:
                raise NotFound(f"message {message_id} is not in the queue")
            return replace(found[0], attempts=load_attempts(conn, seq))

        return self._engine.run("show the message", read)

    def delete(self, message_id: str) -> None:
        def op(conn: Conn) -> None:
            if not conn.execute("DELETE FROM messages WHERE id = %s", (message_id,)).rowcount:
                raise NotFound(f"message {message_id} is not in the queue")

        self._engine.run("delete the message", op)

    def hold(self, message_id: str, reason: str | None = None) -> int:
        def op(conn: Conn) -> int:
            seq = message_seq(conn, message_id)
            return conn.execute(
                "UPDATE recipients SET state = 'held', next_attempt = NULL, due_at = NULL, "
                "claim_token = NULL, claim_until = NULL, claim_owner = NULL, "
                f"held_reason = %s, updated_at = %s WHERE msg_seq = %s AND state IN {_ACTIVE}",
                (reason, time.time(), seq)).rowcount

        return self._engine.run("hold the message", op)

    def release_hold(self, message_id: str) -> int:
        def op(conn: Conn) -> int:
            seq = message_seq(conn, message_id)
            n = conn.execute(
                "UPDATE recipients SET state = 'queued', next_attempt = %(now)s, "
                f"due_at = {_DUE_NOW}, updated_at = %(now)s, held_reason = NULL "
                "WHERE msg_seq = %(seq)s AND state = 'held'",
                {"now": time.time(), "seq": seq}).rowcount
            if n:
                _notify(conn)
            return n

        return self._engine.run("release the hold", op)

    def retry(self, message_id: str | None, now: float) -> int:
        def op(conn: Conn) -> int:
            args: dict[str, object] = {"now": now}
            which = ""
            if message_id is not None:
                args["seq"] = message_seq(conn, message_id)
                which = " AND msg_seq = %(seq)s"
            n = conn.execute(
                f"UPDATE recipients SET next_attempt = %(now)s, due_at = {_DUE_NOW} "
                f"WHERE state IN {_ACTIVE}{which}", args).rowcount
            if n:
                _notify(conn)
            return int(n)

        return self._engine.run("retry", op)

    def counts(self) -> dict[str, int]:
        """Recipients per state, every state present: the totals the triggers keep plus
        the deltas not yet folded (schema.py), in one statement, at any queue size."""

        def read(conn: Conn) -> dict[str, int]:
            result = {s.value: 0 for s in RecipientState}
            for state, n in conn.execute(
                    "SELECT state, sum(n) FROM (SELECT state, n FROM state_counts UNION ALL "
                    "SELECT state, n FROM state_deltas) AS k GROUP BY state"):
                if state in result:
                    result[state] = int(n)
            return result

        return self._engine.run("count the queue", read)

    def purge(self, finished_before: float, limit: int = 1000) -> int:
        if limit <= 0:
            return 0
        return self._engine.run("purge finished messages", lambda conn: conn.execute(
            "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE "
            "finished_at < %s ORDER BY finished_at LIMIT %s)",
            (finished_before, limit)).rowcount)

    def activity(self, since: float, bucket_seconds: float, until: float | None = None
                 ) -> builtins.list[ActivityBucket]:
        """Messages queued and attempts by outcome per bucket; see `Queue.activity`.

        As in the SQLite backend, the whole minutes of a bucket come from the kept
        per-minute counts (totals and unfolded deltas, schema.py) and only the partial
        minutes at the buckets' edges are counted in the rows' own indexes: per series
        one statement for the minutes and one for every edge at once."""
        if not bucket_seconds > 0:
            raise ValueError("bucket_seconds must be positive")
        end = time.time() if until is None else until
        n = int(-(-(end - since) // bucket_seconds)) if end > since else 0
        if n > 1000:
            raise ValueError("at most 1000 buckets: choose longer buckets")
        edges = [(since + i * bucket_seconds, min(end, since + (i + 1) * bucket_seconds))
                 for i in range(n)]
        # Per bucket: its whole minutes [first, last), and the partial ranges at its ends
        # (the whole bucket when it holds no whole minute), each tagged with its bucket.
        whole: builtins.list[tuple[int, int]] = []
        parts: builtins.list[tuple[int, float, float]] = []
        for i, (lo, hi) in enumerate(edges):
            first, last = whole_minutes(lo, hi)
            if first >= last:
                whole.append((0, 0))
                parts.append((i, lo, hi))
                continue
            whole.append((first, last))
            if lo < first * 60:
                parts.append((i, lo, first * 60.0))
            if last * 60 < hi:
                parts.append((i, last * 60.0, hi))
        ranges = {
            "accepted": "messages WHERE queued_at >= e.lo AND queued_at < e.hi",
            "bounced": "messages WHERE sender = '' AND queued_at >= e.lo AND queued_at < e.hi",
        }
        for outcome in ("delivered", "deferred", "failed"):
            ranges[outcome] = (f"attempts WHERE outcome = '{outcome}' AND at >= e.lo "
                               "AND at < e.hi")
        lo_minute = min((f for f, la in whole if f < la), default=0)
        hi_minute = max((la for f, la in whole if f < la), default=0)

        def read(conn: Conn) -> builtins.list[ActivityBucket]:
            totals = {name: [0] * n for name in ranges}
            if hi_minute > lo_minute:
                # Buckets do not overlap and are in order: a minute's bucket by bisection.
                holding = [i for i, (f, la) in enumerate(whole) if f < la]
                firsts = [whole[i][0] for i in holding]
                for series, minute, c in conn.execute(
                        "SELECT series, minute, sum(n) FROM (SELECT series, minute, n FROM "
                        "activity_minutes WHERE minute >= %(lo)s AND minute < %(hi)s "
                        "UNION ALL SELECT series, minute, n FROM activity_deltas WHERE "
                        "minute >= %(lo)s AND minute < %(hi)s) AS k GROUP BY 1, 2",
                        {"lo": lo_minute, "hi": hi_minute}):
                    k = bisect.bisect_right(firsts, minute) - 1
                    i = holding[k] if k >= 0 else -1
                    if series in totals and i >= 0 and minute < whole[i][1]:
                        totals[series][i] += int(c)
            if parts:
                args = ([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])
                for name, sql in ranges.items():
                    for i, c in conn.execute(
                            f"SELECT e.i, (SELECT count(*) FROM {sql}) FROM unnest("
                            "%s::int[], %s::float8[], %s::float8[]) AS e (i, lo, hi)", args):
                        totals[name][i] += int(c)
            return [ActivityBucket(start=lo, seconds=bucket_seconds,
                                   **{name: totals[name][i] for name in ranges})
                    for i, (lo, _) in enumerate(edges)]

        return self._engine.run("count the queue's activity", read)

    def take_slot(self, key: str, limit: int, lease: float) -> str | None:
        """One of `limit` slots for `key` across the cluster; see `Queue.take_slot`."""
        engine = self._engine
        engine.start_node()
        token = secrets.token_hex(8)
        now = time.time()

        def op(conn: Conn) -> str | None:
            if key not in self._slot_keys or self._slot_keys[key] < limit:
                conn.execute("INSERT INTO slots (key, slot) SELECT %s, s FROM "
                             "generate_series(0, %s - 1) s ON CONFLICT DO NOTHING",
                             (key, limit))
            row = conn.execute(
                "UPDATE slots SET holder = %(token)s, node = %(node)s, until = %(until)s "
                "WHERE (key, slot) = (SELECT key, slot FROM slots s WHERE key = %(key)s "
                "AND slot < %(limit)s AND (holder IS NULL OR until < %(now)s OR NOT EXISTS "
                "(SELECT 1 FROM nodes n WHERE n.id = s.node)) ORDER BY slot LIMIT 1 "
                "FOR UPDATE SKIP LOCKED) RETURNING slot",
                {"token": token, "node": engine.node_id, "until": now + lease, "key": key,
                 "limit": limit, "now": now}).fetchone()
            return None if row is None else token

        got = engine.run("take a connection slot", op)
        self._slot_keys[key] = max(limit, self._slot_keys.get(key, 0))
        return got

    def give_slot(self, token: str) -> None:
        self._engine.run("give back a connection slot", lambda conn: conn.execute(
            "UPDATE slots SET holder = NULL, node = NULL, until = NULL WHERE holder = %s",
            (token,)))

    def share_counts(self, deltas: Mapping[tuple[str, str], int], window: float
                     ) -> dict[tuple[str, str], int]:
        """This node's counts added, the other nodes' read; see `Queue.share_counts`."""
        engine = self._engine
        engine.start_node()
        now = time.time()
        bucket = int(now // COUNT_BUCKET)
        oldest = int((now - window) // COUNT_BUCKET) + 1
        items = [(kind, key, n) for (kind, key), n in deltas.items() if n]

        def op(conn: Conn) -> dict[tuple[str, str], int]:
            if items:
                conn.execute(
                    "INSERT INTO counts (node, kind, key, bucket, n) SELECT %s, k, v, %s, d "
                    "FROM unnest(%s::text[], %s::text[], %s::int[]) AS x (k, v, d) "
                    "ON CONFLICT (node, kind, key, bucket) DO UPDATE "
                    "SET n = counts.n + EXCLUDED.n",
                    (engine.node_id, bucket, [i[0] for i in items], [i[1] for i in items],
                     [i[2] for i in items]))
            if bucket % 6 == 0:  # now and then: what no window reaches any more
                conn.execute("DELETE FROM counts WHERE bucket < %s", (oldest,))
            return {(kind, key): int(n) for kind, key, n in conn.execute(
                "SELECT kind, key, sum(n) FROM counts WHERE node <> %s AND bucket >= %s "
                "GROUP BY kind, key HAVING sum(n) > 0 ORDER BY sum(n) DESC LIMIT %s",
                (engine.node_id, oldest, COUNT_KEYS))}

        return engine.run("share counts", op)

    def restore(self, message: QueuedMessage) -> bool:
        """Store a message as exported from another queue; see `Queue.restore`."""

        def op(conn: Conn) -> bool:
            stored = restore_message(conn, message)
            if stored and message.finished_at is None:
                _notify(conn)
            return stored

        return self._engine.run("restore the message", op)

    def integrity_check(self) -> builtins.list[str]:
        """The queue's own invariants (PostgreSQL looks after its pages): ["ok"], or one
        sentence per broken one. A live message has content, a finished one none, and
        the sizes add up."""

        def read(conn: Conn) -> builtins.list[str]:
            problems = []
            for sql, what in (
                ("SELECT count(*) FROM messages m WHERE finished_at IS NULL AND NOT EXISTS "
                 "(SELECT 1 FROM contents c WHERE c.seq = m.seq)", "live messages without content"),
                ("SELECT count(*) FROM messages m WHERE finished_at IS NOT NULL AND EXISTS "
                 "(SELECT 1 FROM contents c WHERE c.seq = m.seq)",
                 "finished messages still with content"),
                ("SELECT count(*) FROM messages m WHERE finished_at IS NULL AND size <> "
                 "(SELECT coalesce(sum(length(data)), 0) FROM contents c WHERE c.seq = m.seq)",
                 "live messages whose content is not their size"),
            ):
                n = conn.execute(sql).fetchone()
                if n and n[0]:
                    problems.append(f"{n[0]} {what}")
            return problems or ["ok"]

        return self._engine.run("check the queue", read)

    def close(self) -> None:
        node = self._engine.node_id

        def final(conn: Conn) -> None:
            # What this node still has claimed is unfinished: due again at once.
            if conn.execute(f"UPDATE recipients SET {_UNCLAIM} WHERE claim_owner = %s",
                            (node,)).rowcount:
                _notify(conn)
            conn.execute("UPDATE slots SET holder = NULL, node = NULL, until = NULL "
                         "WHERE node = %s", (node,))
            conn.execute("DELETE FROM nodes WHERE id = %s", (node,))

        self._engine.close(final)

    def __enter__(self) -> PostgresQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def fold_now(queue: PostgresQueue) -> bool:
    """Fold the kept counts' deltas into their totals now (a node's thread does it every
    heartbeat); False when another node was folding. For tests and benchmarks: outside
    the `Queue` protocol, which both backends share method for method."""
    return queue._engine.run("fold the counts", fold_counts)


def migrate_database(dsn: str) -> tuple[int, int]:
    """`mailgate queue migrate` on PostgreSQL: (version before, version after)."""
    import psycopg

    where = describe(dsn)
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return migrate(conn, where)
    except psycopg.OperationalError as exc:
        raise QueueError(f"cannot reach the queue database at {where}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
                         ) from exc
