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
    "authenticated_as, envid, ret, smtputf8, body_8bit, finished_at"
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
            "client_helo, protocol, authenticated_as, envid, ret, smtputf8, body_8bit) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING RETURNING seq",
            (queue_id, message.sender, message.received_at, now, message.size,
             message.client_address, message.client_helo, message.protocol,
             message.authenticated_as, message.envid, message.ret, message.smtputf8,
             message.body_8bit)).fetchone()
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


# One statement stores a message held in memory: envelope, content, recipients, and the
# NOTIFY that wakes the nodes' workers (collapsed to one per transaction by PostgreSQL).
# No row comes back when the id is taken, and nothing is stored then.
_STORE_ALL = (
    "WITH m AS (INSERT INTO messages (id, sender, received_at, queued_at, size, "
    "client_address, client_helo, protocol, authenticated_as, envid, ret, smtputf8, "
    "body_8bit) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (id) DO NOTHING RETURNING seq), "
    "c AS (INSERT INTO contents (seq, n, data) SELECT m.seq, p.n - 1, p.data FROM m, "
    "unnest(%s::bytea[]) WITH ORDINALITY AS p (data, n)), "
    "r AS (INSERT INTO recipients (msg_seq, address, domain, orcpt, notify, state, "
    "next_attempt, due_at, updated_at) SELECT m.seq, x.a, x.d, x.o, x.n, 'queued', %s, %s, "
    "%s FROM m, unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS x (a, d, o, n)) "
    "SELECT seq, pg_notify('mailgate_work', '') FROM m"
)


class EnqueueOp:
    """What enqueue() writes, in two steps so that a batch's messages go to the server
    in one pipeline (psycopg's pipeline mode) instead of a round trip each: `start` sends
    the one statement, `finish` reads its answer. A message whose id is taken, or whose
    content went to a spool file (stored in pieces as it is read), takes the slow path,
    `store_message`, in `finish`. Calling the op does both steps."""

    __slots__ = ("_cursor", "message")

    def __init__(self, message: NewMessage) -> None:
        self.message = message
        self._cursor: psycopg.Cursor[tuple[Any, ...]] | None = None

    def start(self, conn: Conn) -> None:
        m = self.message
        self._cursor = None
        pieces = _pieces(m)
        if pieces is None:
            return
        now = time.time()
        queue_id = m.id or new_queue_id(now)
        if m.id is None:
            self.message = m = replace_id(m, queue_id)
        rcpts = m.recipients
        cur = conn.cursor()
        cur.execute(_STORE_ALL, (
            queue_id, m.sender, m.received_at, now, m.size, m.client_address, m.client_helo,
            m.protocol, m.authenticated_as, m.envid, m.ret, m.smtputf8, m.body_8bit,
            list(pieces), now, now, now, [r.address for r in rcpts],
            [domain_of(r.address) for r in rcpts], [r.orcpt for r in rcpts],
            [None if r.notify is None else ",".join(r.notify) for r in rcpts]))
        self._cursor = cur

    def finish(self, conn: Conn) -> str:
        cur, self._cursor = self._cursor, None
        if cur is not None:
            row = cur.fetchone()
            cur.close()
            if row is not None:
                assert self.message.id is not None
                return self.message.id
        # Taken (or spooled): the careful path, which draws a fresh id until one is free.
        queue_id, self.message = store_message(conn, self.message)
        conn.execute("NOTIFY mailgate_work")
        return queue_id

    def __call__(self, conn: Conn) -> str:
        self.start(conn)
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
            body_8bit=bool(m["body_8bit"]),
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
