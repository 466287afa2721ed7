"""The statements a queue's operations share (postgres/__init__.py): the states and
claim columns in SQL, NOTIFY, taking back a dead node's claims, the batched record of
outcomes (`RecordOp`), finishing messages, and the claim by destination."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from mailgate.queue import Attempt, NotFound, RecipientState
from mailgate.queue.postgres.engine import CHANNEL, Conn
from mailgate.queue.postgres.rows import CLAIM_BYTES

_ACTIVE = "('queued', 'deferred')"
_DUE_NOW = "CASE WHEN claim_until > %(now)s THEN claim_until ELSE %(now)s END"
_OUTCOMES = frozenset({RecipientState.DELIVERED, RecipientState.DEFERRED,
                       RecipientState.FAILED})
_UNCLAIM = (f"claim_token = NULL, claim_until = NULL, claim_owner = NULL, "
            f"due_at = CASE WHEN state IN {_ACTIVE} THEN next_attempt END")


def _notify(conn: Conn) -> None:
    """Wake idle workers on every node once this transaction commits."""
    conn.execute(f"NOTIFY {CHANNEL}")


def recover_stale(conn: Conn, stale: float) -> int:
    """Claims of nodes whose heartbeat is older than `stale` seconds (and of nodes no
    longer registered at all) due again now; how many recipients."""
    conn.execute("DELETE FROM nodes WHERE heartbeat_at < now() - make_interval(secs => %s)",
                 (stale,))
    back = conn.execute(
        f"UPDATE recipients r SET {_UNCLAIM} WHERE claim_owner IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM nodes n WHERE n.id = r.claim_owner)").rowcount
    if back:
        _notify(conn)
    return back


def _within_budget(conn: Conn, seqs: dict[int, None]) -> dict[int, None]:
    """The first of `seqs` whose content adds up to at most CLAIM_BYTES (at least one)."""
    if len(seqs) <= 1:
        return seqs
    sizes: dict[int, Any] = dict(conn.execute(
        "SELECT seq, size FROM messages WHERE seq = ANY(%s)", (list(seqs),)).fetchall())
    kept: dict[int, None] = {}
    total = 0
    for seq in seqs:
        total += int(sizes.get(seq, 0))
        if kept and total > CLAIM_BYTES:
            break
        kept[seq] = None
    return kept


# record() in one statement: the recipient locked, the attempt stored, the new state
# decided as the SQLite backend decides it (a final state stays, a held recipient stays
# held after a deferral, a claim another worker has since taken stays theirs).
_RECORD = """
WITH old AS (
    SELECT id, msg_seq, state, claim_token, claim_until,
        (%(token)s::text IS NOT NULL AND claim_token IS NOT NULL
         AND claim_token <> %(token)s AND claim_until > %(now)s) AS theirs,
        CASE WHEN state NOT IN ('delivered', 'failed', 'held')
             AND %(outcome)s = 'deferred' THEN %(next)s::double precision END AS next
    FROM recipients WHERE id = %(id)s FOR UPDATE),
a AS (INSERT INTO attempts (recipient_id, at, host, code, enhanced, text, outcome, remote,
                            tls)
      SELECT id, %(at)s, %(host)s, %(code)s, %(enhanced)s, %(text)s, %(outcome)s,
             %(remote)s, %(tls)s FROM old)
UPDATE recipients r SET
    state = CASE WHEN old.state IN ('delivered', 'failed') THEN old.state
                 WHEN %(outcome)s <> 'deferred' THEN %(outcome)s
                 WHEN old.state = 'held' THEN 'held' ELSE 'deferred' END,
    attempts = r.attempts + 1, next_attempt = old.next,
    due_at = CASE WHEN old.theirs THEN (CASE WHEN old.next IS NOT NULL THEN old.claim_until END)
                  ELSE old.next END,
    last_code = %(code)s, last_enhanced = %(enhanced)s, last_text = %(text)s,
    claim_token = CASE WHEN old.theirs THEN old.claim_token END,
    claim_until = CASE WHEN old.theirs THEN old.claim_until END,
    claim_owner = CASE WHEN old.theirs THEN r.claim_owner END,
    updated_at = %(now)s
FROM old WHERE r.id = old.id
RETURNING r.msg_seq, r.state, old.state
"""

# The same for every record of a group commit at once, from arrays: one statement per
# batch instead of one per recipient. The recipients are locked in id order (two nodes
# never wait for each other in a circle); a recipient twice in one batch is left to the
# one-row statement for its later records, in order.
_RECORD_MANY = """
WITH x AS (SELECT * FROM unnest(%(id)s::bigint[], %(token)s::text[], %(outcome)s::text[],
        %(next)s::float8[], %(at)s::float8[], %(host)s::text[], %(code)s::int[],
        %(enhanced)s::text[], %(text)s::text[], %(remote)s::bool[], %(tls)s::text[])
    AS x (id, token, outcome, next, at, host, code, enhanced, text, remote, tls)),
old AS (
    SELECT r.id, r.msg_seq, r.state, r.claim_token, r.claim_until, x.outcome, x.code,
        x.enhanced, x.text,
        (x.token IS NOT NULL AND r.claim_token IS NOT NULL
         AND r.claim_token <> x.token AND r.claim_until > %(now)s) AS theirs,
        CASE WHEN r.state NOT IN ('delivered', 'failed', 'held')
             AND x.outcome = 'deferred' THEN x.next END AS next
    FROM recipients r JOIN x ON r.id = x.id ORDER BY r.id FOR UPDATE OF r),
a AS (INSERT INTO attempts (recipient_id, at, host, code, enhanced, text, outcome, remote,
                            tls)
      SELECT x.id, x.at, x.host, x.code, x.enhanced, x.text, x.outcome, x.remote, x.tls
      FROM x JOIN old ON old.id = x.id ORDER BY x.id)
UPDATE recipients r SET
    state = CASE WHEN old.state IN ('delivered', 'failed') THEN old.state
                 WHEN old.outcome <> 'deferred' THEN old.outcome
                 WHEN old.state = 'held' THEN 'held' ELSE 'deferred' END,
    attempts = r.attempts + 1, next_attempt = old.next,
    due_at = CASE WHEN old.theirs THEN (CASE WHEN old.next IS NOT NULL THEN old.claim_until END)
                  ELSE old.next END,
    last_code = old.code, last_enhanced = old.enhanced, last_text = old.text,
    claim_token = CASE WHEN old.theirs THEN old.claim_token END,
    claim_until = CASE WHEN old.theirs THEN old.claim_until END,
    claim_owner = CASE WHEN old.theirs THEN r.claim_owner END,
    updated_at = %(now)s
FROM old WHERE r.id = old.id
RETURNING r.id, r.msg_seq, r.state, old.state
"""
_RECORD_KEYS = ("id", "token", "outcome", "next", "at", "host", "code", "enhanced", "text",
                "remote", "tls")


class _Recorded:
    """The answer of one _RECORD_MANY, read once by the first `finish` that asks."""

    __slots__ = ("cursor", "rows")

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.rows: dict[int, tuple[int, str, str]] = {}

    def row(self, recipient_id: int) -> tuple[int, str, str] | None:
        if self.cursor is not None:
            cur, self.cursor = self.cursor, None
            self.rows = {rid: (seq, state, was) for rid, seq, state, was in cur.fetchall()}
            cur.close()
        return self.rows.get(recipient_id)


class RecordOp:
    """record() as a three-step write for the group commit's pipeline: `start_all` sends
    one statement for the batch's records, `finish` reads what it did to its recipient,
    and `settle` (once for the batch) finishes the messages whose last recipient became
    final: two statements for the batch, not two round trips per message. Calling the op
    does all three."""

    __slots__ = ("_cursor", "_now", "_params", "_recorded", "_seq", "recipient_id")

    def __init__(self, recipient_id: int, attempt: Attempt, outcome: str,
                 next_attempt: float | None, claim_token: str | None) -> None:
        self.recipient_id = recipient_id
        self._params: dict[str, object] = {
            "id": recipient_id, "token": claim_token, "outcome": outcome,
            "next": next_attempt, "at": attempt.at, "host": attempt.host,
            "code": attempt.code, "enhanced": attempt.enhanced, "text": attempt.text,
            "remote": attempt.remote, "tls": attempt.tls}
        self._cursor: Any = None
        self._recorded: _Recorded | None = None
        self._now = 0.0
        self._seq: int | None = None

    @staticmethod
    def start_all(conn: Conn, ops: Sequence[RecordOp]) -> None:
        now = time.time()
        together: list[RecordOp] = []
        alone: list[RecordOp] = []
        seen: set[int] = set()
        for op in ops:
            (alone if op.recipient_id in seen else together).append(op)
            seen.add(op.recipient_id)
        if len(together) == 1:
            alone.insert(0, together.pop())
        if together:
            cur = conn.cursor()
            cur.execute(_RECORD_MANY, {
                **{k: [op._params[k] for op in together] for k in _RECORD_KEYS},
                "now": now})
            recorded = _Recorded(cur)
            for op in together:
                op._now, op._seq, op._cursor, op._recorded = now, None, None, recorded
        for op in alone:
            op.start(conn)

    def start(self, conn: Conn) -> None:
        self._now = time.time()
        self._seq = None
        self._recorded = None
        self._cursor = conn.cursor()
        self._cursor.execute(_RECORD, {**self._params, "now": self._now})

    def finish(self, conn: Conn) -> None:
        row: tuple[int, str, str] | None
        if self._recorded is not None:
            recorded, self._recorded = self._recorded, None
            row = recorded.row(self.recipient_id)
        else:
            cur, self._cursor = self._cursor, None
            row = cur.fetchone()
            cur.close()
        if row is None:
            raise NotFound(f"recipient {self.recipient_id} is not in the queue")
        seq, state, was = row
        final = (RecipientState.DELIVERED.value, RecipientState.FAILED.value)
        if state in final and was not in final:
            self._seq = seq

    @staticmethod
    def settle(conn: Conn, ops: Sequence[RecordOp]) -> None:
        seqs = sorted({op._seq for op in ops if op._seq is not None})
        if seqs:
            _finish_if_done(conn, seqs, max(op._now for op in ops))

    def __call__(self, conn: Conn) -> None:
        self.start(conn)
        self.finish(conn)
        self.settle(conn, [self])


def _finish_if_done(conn: Conn, seqs: Sequence[int], now: float) -> None:
    """Retention: messages with no recipient left to deliver lose their content and are
    finished as of now; the record stays until `purge`. The messages' rows are locked
    first (in seq order, so two nodes never wait for each other in a circle): two nodes
    recording a message's last two recipients at once are serialised here, so the later
    one sees the other's outcome committed and finishes the message."""
    conn.execute("SELECT 1 FROM messages WHERE seq = ANY(%s) ORDER BY seq FOR UPDATE",
                 (list(seqs),))
    # A statement of its own after the lock: it sees what the lock waited for.
    conn.execute(
        "WITH done AS (UPDATE messages m SET finished_at = %(now)s WHERE seq = ANY(%(seqs)s) "
        "AND finished_at IS NULL AND NOT EXISTS (SELECT 1 FROM recipients r WHERE "
        "r.msg_seq = m.seq AND r.state NOT IN ('delivered', 'failed')) RETURNING seq) "
        "DELETE FROM contents WHERE seq IN (SELECT seq FROM done)",
        {"now": now, "seqs": list(seqs)})


def _by_destination(conn: Conn, now: float, where: str, params: Sequence[object],
                    limit: int, cap: int) -> list[tuple[int, int]]:
    """Due recipients (id, msg_seq) for a claim by destination, locked: domains in the
    order their first due recipient came due (looked at unlocked), then for each, up to
    `cap` of its due rows at once (from its own index), skipping rows another node is
    claiming now. Each domain's work comes out together, ready for one connection."""
    domains: dict[str, None] = {}
    for _look in range(4):  # a domain with much due work: look past it, a few times
        extra, more = "", []
        if domains:
            extra = " AND NOT (domain = ANY(%s))"
            more.append(list(domains))
        found = conn.execute(
            f"SELECT domain FROM recipients WHERE due_at <= %s AND state IN {_ACTIVE}"
            f"{where}{extra} ORDER BY due_at, id LIMIT %s",
            (now, *params, *more, limit * 4)).fetchall()
        before = len(domains)
        for (domain,) in found:
            domains[domain] = None
        if len(found) < limit * 4 or len(domains) >= limit or len(domains) == before:
            break
    if not domains:
        return []
    rows = conn.execute(
        "SELECT r.id, r.msg_seq, d.domain "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS d(domain, n) "
        "CROSS JOIN LATERAL (SELECT id, msg_seq, due_at FROM recipients "
        f"WHERE domain = d.domain AND due_at <= %s AND state IN {_ACTIVE} "
        "ORDER BY due_at, id LIMIT %s FOR UPDATE SKIP LOCKED) r ORDER BY d.n, r.due_at, r.id",
        (list(domains)[:limit], now, cap)).fetchall()
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    last = ""
    for rid, seq, domain in rows:  # the last domain's share whole, even past `limit`
        if seq not in seen:
            if len(seen) >= limit and domain != last:
                break
            seen.add(seq)
            last = domain
        out.append((rid, seq))
    return out
