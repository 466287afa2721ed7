"""Messages into rows and back, for the PostgreSQL queue.

Content is stored in pieces (`contents`, one row per piece of at most PIECE bytes): a
spooled message is read from its file piece by piece and each piece inserted, so a
24 MiB message never sits whole in the node's memory on the way in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.rows import dict_row

from mailgate.queue import (
    FINAL_STATES,
    Attempt,
    NewMessage,
    NotFound,
    QueuedMessage,
    Recipient,
    RecipientState,
    domain_of,
    new_queue_id,
)

__all__ = [
    "CLAIM_BYTES",
    "PIECE",
    "load_attempts",
    "load_messages",
    "message_seq",
    "store_message",
]

Conn = psycopg.Connection[tuple[Any, ...]]
PIECE = 256 * 1024
CLAIM_BYTES = 32 * 1024 * 1024  # content one claim may load (as the SQLite backend)

_MESSAGE_COLUMNS = (
    "seq, id, sender, received_at, size, client_address, client_helo, protocol, "
    "authenticated_as, envid, ret, smtputf8, body_8bit, finished_at, crlf"
)
_RECIPIENT_COLUMNS = (
    "id, msg_seq, address, state, attempts, next_attempt, orcpt, notify, "
    "last_code, last_enhanced, last_text, updated_at, delay_notified, held_reason"
)


def _pieces(message: NewMessage) -> Sequence[bytes] | None:
    """Content held in memory, cut in pieces; None for a spool that went to a file."""
    if message.spool is not None:
        if message.spool.spilled:
            return None
        data = b"".join(message.spool.chunks())
    else:
        data = bytes(message.content)
    return [data[i:i + PIECE] for i in range(0, len(data), PIECE)] or [b""]


def store_message(conn: Conn, message: NewMessage) -> tuple[str, NewMessage]:
    """Insert one message (envelope, content, recipients) in the open transaction; its
    queue id and the message as stored (under a fresh id if the caller's was taken)."""
    now = time.time()
    while True:
        queue_id = message.id or new_queue_id(now)
        row = conn.execute(
            "INSERT INTO messages (id, sender, received_at, queued_at, size, client_address, "
            "client_helo, protocol, authenticated_as, envid, ret, smtputf8, body_8bit, "
            "crlf) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING RETURNING seq",
            (queue_id, message.sender, message.received_at, now, message.size,
             message.client_address, message.client_helo, message.protocol,
             message.authenticated_as, message.envid, message.ret, message.smtputf8,
             message.body_8bit, message.crlf)).fetchone()
        if row is not None:
            break
        if message.id:
            # Taken: a fresh id, the trace field rewritten to match (never an error).
            message = message.with_id(new_queue_id(now))
    seq = row[0]
    pieces = _pieces(message)
    with conn.cursor() as cur:
        if pieces is not None:
            cur.executemany("INSERT INTO contents (seq, n, data) VALUES (%s, %s, %s)",
                            [(seq, n, p) for n, p in enumerate(pieces)])
        else:
            assert message.spool is not None
            n = 0
            for chunk in message.spool.chunks(PIECE):
                for i in range(0, len(chunk), PIECE):
                    cur.execute("INSERT INTO contents (seq, n, data) VALUES (%s, %s, %s)",
                                (seq, n, chunk[i:i + PIECE]))
                    n += 1
        cur.executemany(
            "INSERT INTO recipients (msg_seq, address, domain, orcpt, notify, state, "
            "next_attempt, due_at, updated_at) VALUES (%s, %s, %s, %s, %s, 'queued', %s, "
            "%s, %s)",
            [(seq, r.address, domain_of(r.address), r.orcpt,
              None if r.notify is None else ",".join(r.notify), now, now, now)
             for r in message.recipients])
    return queue_id, message


# One statement stores every message of a group commit held in memory: envelopes,
# contents and recipients as arrays (unnest), joined on the queue id, and the NOTIFY
# that wakes the nodes' workers (once per statement: an InitPlan).
# One statement, not one per message: a message costs the node a few array elements to
# send instead of a statement's conversion, and PostgreSQL one plan and one firing of
# each counting trigger (schema.py) per batch. A message whose id is taken comes back
# without its row, and nothing of it is stored.
_STORE_MANY = (
    "WITH x AS (SELECT * FROM unnest(%(id)s::text[], %(sender)s::text[], "
    "%(received)s::float8[], %(size)s::bigint[], %(addr)s::text[], %(helo)s::text[], "
    "%(proto)s::text[], %(auth)s::text[], %(envid)s::text[], %(ret)s::text[], "
    "%(utf8)s::bool[], %(8bit)s::bool[], %(crlf)s::bool[]) WITH ORDINALITY AS x (id, "
    "sender, received_at, size, client_address, client_helo, protocol, authenticated_as, "
    "envid, ret, smtputf8, body_8bit, crlf, k)), "
    "m AS (INSERT INTO messages (id, sender, received_at, queued_at, size, client_address, "
    "client_helo, protocol, authenticated_as, envid, ret, smtputf8, body_8bit, crlf) "
    "SELECT id, sender, received_at, %(now)s, size, client_address, client_helo, protocol, "
    "authenticated_as, envid, ret, smtputf8, body_8bit, crlf FROM x ORDER BY k "
    "ON CONFLICT (id) DO NOTHING RETURNING seq, id), "
    "c AS (INSERT INTO contents (seq, n, data) SELECT m.seq, p.n, p.data FROM m JOIN "
    "unnest(%(cid)s::text[], %(cn)s::int[], %(cdata)s::bytea[]) AS p (id, n, data) "
    "ON p.id = m.id), "
    "r AS (INSERT INTO recipients (msg_seq, address, domain, orcpt, notify, state, "
    "next_attempt, due_at, updated_at) SELECT m.seq, y.a, y.d, y.o, y.n, 'queued', "
    "%(now)s, %(now)s, %(now)s FROM m JOIN unnest(%(rid)s::text[], %(ra)s::text[], "
    "%(rd)s::text[], %(ro)s::text[], %(rn)s::text[]) WITH ORDINALITY AS y (id, a, d, o, n, k) "
    "ON y.id = m.id ORDER BY m.seq, y.k) "
    "SELECT id, (SELECT pg_notify('mailgate_work', '')) FROM m"
)


class _Stored:
    """The answer of one _STORE_MANY: the ids it stored, read once by whichever of its
    messages' `finish` comes first."""

    __slots__ = ("cursor", "ids")

    def __init__(self, cursor: psycopg.Cursor[tuple[Any, ...]]) -> None:
        self.cursor: psycopg.Cursor[tuple[Any, ...]] | None = cursor
        self.ids: set[str] = set()

    def stored(self, queue_id: str) -> bool:
        if self.cursor is not None:
            cur, self.cursor = self.cursor, None
            self.ids = {row[0] for row in cur.fetchall()}
            cur.close()
        return queue_id in self.ids


class EnqueueOp:
    """What enqueue() writes, in two steps so that a batch's messages go to the server
    in one statement (psycopg's pipeline mode): `start_all` sends the batch's messages
    held in memory as one _STORE_MANY, `finish` reads whether its own was stored. A
    message whose id is taken (or appears twice in the batch), or whose content went to
    a spool file (stored in pieces as it is read), takes the slow path, `store_message`,
    in `finish`. Calling the op does both steps."""

    __slots__ = ("_stored", "message")

    def __init__(self, message: NewMessage) -> None:
        self.message = message
        self._stored: _Stored | None = None

    @staticmethod
    def start_all(conn: Conn, ops: Sequence[EnqueueOp]) -> None:
        now = time.time()
        cols: dict[str, list[Any]] = {k: [] for k in (
            "id", "sender", "received", "size", "addr", "helo", "proto", "auth", "envid",
            "ret", "utf8", "8bit", "crlf", "cid", "cn", "cdata", "rid", "ra", "rd", "ro",
            "rn")}
        batch: list[EnqueueOp] = []
        seen: set[str] = set()
        for op in ops:
            op._stored = None
            m = op.message
            pieces = _pieces(m)
            queue_id = m.id or new_queue_id(now)
            if pieces is None or queue_id in seen:
                continue
            seen.add(queue_id)
            if m.id is None:
                op.message = m = replace_id(m, queue_id)
            batch.append(op)
            for key, value in (("id", queue_id), ("sender", m.sender),
                               ("received", m.received_at), ("size", m.size),
                               ("addr", m.client_address), ("helo", m.client_helo),
                               ("proto", m.protocol), ("auth", m.authenticated_as),
                               ("envid", m.envid), ("ret", m.ret), ("utf8", m.smtputf8),
                               ("8bit", m.body_8bit), ("crlf", m.crlf)):
                cols[key].append(value)
            for n, piece in enumerate(pieces):
                cols["cid"].append(queue_id)
                cols["cn"].append(n)
                cols["cdata"].append(piece)
            for r in m.recipients:
                cols["rid"].append(queue_id)
                cols["ra"].append(r.address)
                cols["rd"].append(domain_of(r.address))
                cols["ro"].append(r.orcpt)
                cols["rn"].append(None if r.notify is None else ",".join(r.notify))
        if not batch:
            return
        cur = conn.cursor()
        cur.execute(_STORE_MANY, {**cols, "now": now})
        stored = _Stored(cur)
        for op in batch:
            op._stored = stored

    def finish(self, conn: Conn) -> str:
        stored, self._stored = self._stored, None
        if stored is not None:
            assert self.message.id is not None
            if stored.stored(self.message.id):
                return self.message.id
        # Taken (or spooled): the careful path, which draws a fresh id until one is free.
        queue_id, self.message = store_message(conn, self.message)
        conn.execute("NOTIFY mailgate_work")
        return queue_id

    def __call__(self, conn: Conn) -> str:
        self.start_all(conn, [self])
        return self.finish(conn)


def replace_id(message: NewMessage, queue_id: str) -> NewMessage:
    """The message with the id the queue chose for it (no trace field names it yet)."""
    return replace(message, id=queue_id)


def message_seq(conn: Conn, message_id: str) -> int:
    row = conn.execute("SELECT seq FROM messages WHERE id = %s", (message_id,)).fetchone()
    if row is None:
        raise NotFound(f"message {message_id} is not in the queue")
    return int(row[0])


def _recipient(row: dict[str, Any], message_id: str) -> Recipient:
    notify = row["notify"]
    return Recipient(
        id=row["id"], message_id=message_id, address=row["address"],
        state=RecipientState(row["state"]), attempts=row["attempts"],
        next_attempt=row["next_attempt"], orcpt=row["orcpt"],
        notify=None if notify is None else tuple(n for n in notify.split(",") if n),
        last_code=row["last_code"], last_enhanced=row["last_enhanced"],
        last_text=row["last_text"], updated_at=row["updated_at"],
        delay_notified=bool(row["delay_notified"]), held_reason=row["held_reason"])


def load_messages(conn: Conn, seqs: Sequence[int], *, content: bool) -> list[QueuedMessage]:
    """The messages with these seqs, in the order given, with all their recipients."""
    if not seqs:
        return []
    wanted = list(seqs)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {r["seq"]: r for r in cur.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq = ANY(%s)", (wanted,))}
        recipients: dict[int, list[dict[str, Any]]] = {seq: [] for seq in seqs}
        for r in cur.execute(f"SELECT {_RECIPIENT_COLUMNS} FROM recipients "
                             "WHERE msg_seq = ANY(%s) ORDER BY msg_seq, id", (wanted,)):
            recipients[r["msg_seq"]].append(r)
    bodies: dict[int, bytearray] = {}
    if content:
        for seq, data in conn.execute("SELECT seq, data FROM contents WHERE seq = ANY(%s) "
                                      "ORDER BY seq, n", (wanted,)):
            bodies.setdefault(seq, bytearray()).extend(data)
    out = []
    for seq in seqs:
        m = rows.get(seq)
        if m is None:  # deleted meanwhile
            continue
        body = bodies.get(seq)
        out.append(QueuedMessage(
            id=m["id"], sender=m["sender"], received_at=m["received_at"], size=m["size"],
            recipients=tuple(_recipient(r, m["id"]) for r in recipients[seq]),
            client_address=m["client_address"], client_helo=m["client_helo"],
            protocol=m["protocol"], authenticated_as=m["authenticated_as"],
            envid=m["envid"], ret=m["ret"], smtputf8=bool(m["smtputf8"]),
            body_8bit=bool(m["body_8bit"]), crlf=bool(m["crlf"]),
            content=(bytes(body) if body is not None else None) if content else None,
            finished_at=m["finished_at"]))
    return out


def load_attempts(conn: Conn, seq: int) -> tuple[tuple[int, Attempt], ...]:
    with conn.cursor(row_factory=dict_row) as cur:
        return tuple(
            (a["recipient_id"], Attempt(at=a["at"], host=a["host"], code=a["code"],
                                        enhanced=a["enhanced"], text=a["text"],
                                        outcome=a["outcome"], remote=bool(a["remote"]),
                                        tls=a["tls"]))
            for a in cur.execute(
                "SELECT a.* FROM attempts a JOIN recipients r ON r.id = a.recipient_id "
                "WHERE r.msg_seq = %s ORDER BY a.at, a.id", (seq,)))


def restore_message(conn: Conn, m: QueuedMessage) -> bool:
    """`Queue.restore` in SQL: the message as exported, unclaimed; False if its id is
    taken. Recipients get new ids here; the attempts follow them."""
    row = conn.execute(
        "INSERT INTO messages (id, sender, received_at, queued_at, size, client_address, "
        "client_helo, protocol, authenticated_as, envid, ret, smtputf8, body_8bit, "
        "finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (id) DO NOTHING RETURNING seq",
        (m.id, m.sender, m.received_at, m.received_at, m.size, m.client_address,
         m.client_helo, m.protocol, m.authenticated_as, m.envid, m.ret, m.smtputf8,
         m.body_8bit, m.finished_at)).fetchone()
    if row is None:
        return False
    seq = row[0]
    with conn.cursor() as cur:
        if m.content is not None and m.finished_at is None:
            data = m.content
            cur.executemany("INSERT INTO contents (seq, n, data) VALUES (%s, %s, %s)",
                            [(seq, n, data[i:i + PIECE]) for n, i in
                             enumerate(range(0, max(len(data), 1), PIECE))])
        ids: dict[int, int] = {}
        for r in m.recipients:
            active = r.state in (RecipientState.QUEUED, RecipientState.DEFERRED)
            got = cur.execute(
                "INSERT INTO recipients (msg_seq, address, domain, orcpt, notify, state, "
                "attempts, next_attempt, due_at, last_code, last_enhanced, last_text, "
                "updated_at, delay_notified, held_reason) VALUES (%s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (seq, r.address, domain_of(r.address), r.orcpt,
                 None if r.notify is None else ",".join(r.notify), r.state.value,
                 r.attempts, None if r.state in FINAL_STATES else r.next_attempt,
                 r.next_attempt if active else None, r.last_code, r.last_enhanced,
                 r.last_text, r.updated_at, r.delay_notified, r.held_reason)).fetchone()
            assert got is not None
            ids[r.id] = got[0]
        rows = [(ids[rid], a.at, a.host, a.code, a.enhanced, a.text, a.outcome, a.remote,
                 a.tls) for rid, a in m.attempts if rid in ids]
        if rows:
            cur.executemany(
                "INSERT INTO attempts (recipient_id, at, host, code, enhanced, text, "
                "outcome, remote, tls) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", rows)
    return True
