"""Messages into rows and back: what an enqueue writes (alone, or many at once), and
the queries that load messages with their recipients.

Messages queued in the same batch are inserted together, a few multi-row INSERTs for the
whole batch instead of five statements each (`EnqueueOp.run_together`: _insert_many).
Every statement is a trip through the sqlite3 module, which gives up the GIL and must
win it back from the busy event loop; under SMTP load the writer thread, not the disk,
was what limited how many messages a process accepted. Any failure there falls back to
the one-by-one path, which finds the request at fault.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self, cast

from mailgate.queue import (
    FINAL_STATES,
    NewMessage,
    NotFound,
    QueuedMessage,
    Recipient,
    RecipientState,
    WorkItem,
    domain_of,
    new_queue_id,
)
from mailgate.queue.sqlite.owners import ClaimOwner
from mailgate.queue.sqlite.writer import Joinable

__all__ = [
    "CLAIM_BYTES",
    "ClaimFloor",
    "ClaimOp",
    "EnqueueOp",
    "chunks",
    "domain_filter",
    "due_messages",
    "first_due",
    "insert_rows",
    "load_messages",
    "message_seq",
    "restore_message",
    "within_budget",
]


_MESSAGE_COLUMNS = (
    "seq, id, sender, received_at, size, client_address, client_helo, protocol, "
    "authenticated_as, envid, ret, smtputf8, body_8bit, finished_at, crlf"
)
_RECIPIENT_COLUMNS = (
    "id, msg_seq, address, state, attempts, next_attempt, orcpt, notify, "
    "last_code, last_enhanced, last_text, updated_at, delay_notified, held_reason"
)
# Content a claim may load at once (bodies are read whole for delivery): past it, the
# rest waits for the next claim. Bounds delivery's memory whatever the message sizes.
CLAIM_BYTES = 32 * 1024 * 1024
_MAX_VARIABLES = 500  # per IN (...) list: far below SQLite's limit, and plans stay cheap


_MESSAGE_INSERT = (
    "INSERT INTO messages (seq, id, sender, received_at, queued_at, size, client_address, "
    "client_helo, protocol, authenticated_as, envid, ret, smtputf8, body_8bit, crlf) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    15,
)
_CONTENT_INSERT = ("INSERT INTO contents (seq, content) VALUES ", "(?, ?)", 2)
_RECIPIENT_INSERT = (
    "INSERT INTO recipients (msg_seq, address, domain, orcpt, notify, state, next_attempt, "
    "due_at, updated_at) VALUES ",
    "(?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
    8,
)
_multi_sql: dict[tuple[str, int], str] = {}


def insert_rows(conn: sqlite3.Connection, insert: tuple[str, str, int],
                 rows: Sequence[tuple[object, ...]]) -> None:
    """INSERT `rows` with as few statements as the variable limit allows."""
    head, one, width = insert
    per = max(1, _MAX_VARIABLES // width)
    for i in range(0, len(rows), per):
        chunk = rows[i : i + per]
        sql = _multi_sql.get((head, len(chunk)))
        if sql is None:
            sql = _multi_sql[(head, len(chunk))] = head + ", ".join([one] * len(chunk))
        conn.execute(sql, [value for row in chunk for value in row])


@dataclass(slots=True, eq=False)
class EnqueueOp(Joinable[str]):
    """What enqueue() writes; calling it stores the message alone (one request's op),
    `run_together` the messages of several enqueues waiting in one batch."""

    message: NewMessage
    content: bytes
    recipients: list[tuple[str, str, str | None, str | None]]  # address, domain, orcpt, notify

    @property
    def spooled(self) -> bool:
        return self.message.spool is not None

    def store_content(self, conn: sqlite3.Connection, seq: int) -> None:
        """The contents row: inline for bytes; for a spool file, a blob of the right size
        filled piece by piece, so the message is never whole in memory."""
        spool = self.message.spool
        if spool is None or not spool.spilled:
            content = self.content if spool is None else b"".join(spool.chunks())
            conn.execute("INSERT INTO contents (seq, content) VALUES (?, ?)", (seq, content))
            return
        conn.execute("INSERT INTO contents (seq, content) VALUES (?, zeroblob(?))",
                     (seq, spool.size))
        if spool.size:
            with conn.blobopen("contents", "content", seq) as blob:
                for piece in spool.chunks():
                    blob.write(piece)

    def columns(self, now: float) -> tuple[object, ...]:
        """The messages row after seq and id."""
        m = self.message
        return (m.sender, m.received_at, now, m.size, m.client_address,
                m.client_helo, m.protocol, m.authenticated_as, m.envid, m.ret, m.smtputf8,
                m.body_8bit, m.crlf)

    @classmethod
    def run_together(cls, conn: sqlite3.Connection, ops: Sequence[Self]) -> list[str]:
        return _insert_many(conn, ops)

    def __call__(self, conn: sqlite3.Connection) -> str:
        message = self.message
        now = time.time()
        while True:
            queue_id = message.id or new_queue_id(now)
            row = conn.execute(
                "INSERT INTO messages (id, sender, received_at, queued_at, size, "
                "client_address, client_helo, protocol, authenticated_as, envid, ret, "
                "smtputf8, body_8bit, crlf) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING RETURNING seq",
                (queue_id, *self.columns(now)),
            ).fetchone()
            if row is not None:
                break
            if message.id:
                # The caller's id (already in its trace field) is taken: the message
                # goes in under a fresh one, the trace field rewritten to match. Kept
                # on the op, so a rerun of the batch uses the new id too.
                message = self.message = message.with_id(new_queue_id(now))
                if not self.spooled:
                    self.content = bytes(message.content)
        seq = row[0]
        self.store_content(conn, seq)
        conn.executemany(
            "INSERT INTO recipients (msg_seq, address, domain, orcpt, notify, state, "
            "next_attempt, due_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
            [(seq, a, d, o, n, now, now, now) for a, d, o, n in self.recipients],
        )
        return queue_id


def _insert_many(conn: sqlite3.Connection, items: Sequence[EnqueueOp]) -> list[str]:
    """Store several messages with a handful of statements; their ids, in order.

    The seqs are given explicitly, max(seq) + 1 onwards: what SQLite would choose itself,
    and this writer holds the write lock. Any clash (an id taken) raises, and the caller
    undoes the lot and stores the messages one by one instead."""
    now = time.time()
    seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM messages").fetchone()[0])
    ids: list[str] = []
    messages: list[tuple[object, ...]] = []
    contents: list[tuple[object, ...]] = []
    recipients: list[tuple[object, ...]] = []
    for item in items:
        seq += 1
        queue_id = item.message.id or new_queue_id(now)
        ids.append(queue_id)
        messages.append((seq, queue_id, *item.columns(now)))
        if not item.spooled:
            contents.append((seq, item.content))
        recipients += [(seq, a, d, o, n, now, now, now) for a, d, o, n in item.recipients]
    insert_rows(conn, _MESSAGE_INSERT, messages)
    insert_rows(conn, _CONTENT_INSERT, contents)
    first = seq - len(items) + 1
    for offset, item in enumerate(items):
        if item.spooled:
            item.store_content(conn, first + offset)
    insert_rows(conn, _RECIPIENT_INSERT, recipients)
    return ids

def domain_filter(
    domains: Sequence[str] | None, exclude_domains: Sequence[str] | None
) -> tuple[str, list[str]]:
    where = ""
    params: list[str] = []
    if domains is not None:
        wanted = sorted({d.lower() for d in domains})
        where += f" AND domain IN ({', '.join('?' * len(wanted))})"
        params += wanted
    if exclude_domains:
        unwanted = sorted({d.lower() for d in exclude_domains})
        where += f" AND domain NOT IN ({', '.join('?' * len(unwanted))})"
        params += unwanted
    return where, params


def within_budget(conn: sqlite3.Connection, seqs: dict[int, None]) -> dict[int, None]:
    """The first of `seqs` whose content adds up to at most CLAIM_BYTES (at least one):
    a claim loads every body it returns, and 64 messages of 24 MiB would be 1.5 GB."""
    if len(seqs) <= 1:
        return seqs
    sizes: dict[int, int] = {}
    for chunk in chunks(list(seqs)):
        marks = ", ".join("?" * len(chunk))
        sizes.update(conn.execute(f"SELECT seq, size FROM messages WHERE seq IN ({marks})",
                                  chunk).fetchall())
    kept: dict[int, None] = {}
    total = 0
    for seq in seqs:
        total += sizes.get(seq, 0)
        if kept and total > CLAIM_BYTES:
            break
        kept[seq] = None
    return kept


def message_seq(conn: sqlite3.Connection, message_id: str) -> int:
    row = conn.execute("SELECT seq FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise NotFound(f"message {message_id} is not in the queue")
    return int(row[0])


def chunks(seqs: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(seqs), _MAX_VARIABLES):
        yield seqs[i : i + _MAX_VARIABLES]


def _recipient(row: sqlite3.Row, message_id: str) -> Recipient:
    notify = row["notify"]
    return Recipient(
        id=row["id"],
        message_id=message_id,
        address=row["address"],
        state=RecipientState(row["state"]),
        attempts=row["attempts"],
        next_attempt=row["next_attempt"],
        orcpt=row["orcpt"],
        notify=None if notify is None else tuple(n for n in notify.split(",") if n),
        last_code=row["last_code"],
        last_enhanced=row["last_enhanced"],
        last_text=row["last_text"],
        updated_at=row["updated_at"],
        delay_notified=bool(row["delay_notified"]),
        held_reason=row["held_reason"],
    )


def load_messages(
    conn: sqlite3.Connection, seqs: Sequence[int], *, content: bool
) -> list[QueuedMessage]:
    """The messages with these seqs, in the order given, with all their recipients."""
    found = load_by_seq(conn, seqs, content=content)
    return [found[seq] for seq in seqs]


def load_by_seq(
    conn: sqlite3.Connection, seqs: Sequence[int], *, content: bool
) -> dict[int, QueuedMessage]:
    """The messages with these seqs that exist, with all their recipients, by seq."""
    rows: dict[int, sqlite3.Row] = {}
    recipients: dict[int, list[sqlite3.Row]] = {seq: [] for seq in seqs}
    bodies: dict[int, bytes] = {}
    for chunk in chunks(seqs):
        marks = ", ".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq IN ({marks})", chunk
        ):
            rows[row["seq"]] = row
        for row in conn.execute(
            f"SELECT {_RECIPIENT_COLUMNS} FROM recipients WHERE msg_seq IN ({marks}) "
            "ORDER BY msg_seq, id",
            chunk,
        ):
            recipients[row["msg_seq"]].append(row)
        if content:
            for seq, body in conn.execute(
                f"SELECT seq, content FROM contents WHERE seq IN ({marks})", chunk
            ):
                bodies[seq] = body
    result: dict[int, QueuedMessage] = {}
    for seq, m in rows.items():
        result[seq] = (
            QueuedMessage(
                id=m["id"],
                sender=m["sender"],
                received_at=m["received_at"],
                size=m["size"],
                recipients=tuple(_recipient(r, m["id"]) for r in recipients[seq]),
                client_address=m["client_address"],
                client_helo=m["client_helo"],
                protocol=m["protocol"],
                authenticated_as=m["authenticated_as"],
                envid=m["envid"],
                ret=m["ret"],
                smtputf8=bool(m["smtputf8"]),
                body_8bit=bool(m["body_8bit"]),
                content=bodies.get(seq) if content else None,
                crlf=bool(m["crlf"]),
                finished_at=m["finished_at"],
            )
        )
    return result


def restore_message(conn: sqlite3.Connection, m: QueuedMessage) -> bool:
    """`Queue.restore` in SQL: the message as exported, unclaimed; False if its id is
    taken. Recipients get new ids here; the attempts follow them."""
    row = conn.execute(
        "INSERT INTO messages (id, sender, received_at, queued_at, size, client_address, "
        "client_helo, protocol, authenticated_as, envid, ret, smtputf8, body_8bit, "
        "finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING RETURNING seq",
        (m.id, m.sender, m.received_at, m.received_at, m.size, m.client_address,
         m.client_helo, m.protocol, m.authenticated_as, m.envid, m.ret, m.smtputf8,
         m.body_8bit, m.finished_at)).fetchone()
    if row is None:
        return False
    seq = row[0]
    if m.content is not None and m.finished_at is None:
        conn.execute("INSERT INTO contents (seq, content) VALUES (?, ?)", (seq, m.content))
    ids: dict[int, int] = {}
    for r in m.recipients:
        due = r.next_attempt if r.state in (RecipientState.QUEUED,
                                            RecipientState.DEFERRED) else None
        ids[r.id] = conn.execute(
            "INSERT INTO recipients (msg_seq, address, domain, orcpt, notify, state, "
            "attempts, next_attempt, due_at, last_code, last_enhanced, last_text, "
            "updated_at, delay_notified, held_reason) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (seq, r.address, domain_of(r.address), r.orcpt,
             None if r.notify is None else ",".join(r.notify), r.state.value, r.attempts,
             None if r.state in FINAL_STATES else r.next_attempt, due, r.last_code,
             r.last_enhanced, r.last_text, r.updated_at, r.delay_notified,
             r.held_reason)).fetchone()[0]
    conn.executemany(
        "INSERT INTO attempts (recipient_id, at, host, code, enhanced, text, outcome, "
        "remote, tls) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(ids[rid], a.at, a.host, a.code, a.enhanced, a.text, a.outcome, a.remote, a.tls)
         for rid, a in m.attempts if rid in ids])
    return True


# The states claim() may take (as the backend's _ACTIVE).
_DUE_STATES = "('queued', 'deferred')"

# Due rows of domains already taken, skipped in a row, before the walk starts again with
# those domains left out: a destination holding most of the due work costs one restart,
# not a walk past all of its rows.
_SKIP_RESTART = 256


def first_due(conn: sqlite3.Connection, index: str, now: float, where: str,
              params: Sequence[str], start: float | None = None) -> float | None:
    """When the first recipient `due_messages` would find came due; None if there is
    none. One probe of the due index, from `start` (a `ClaimFloor`) when given."""
    due, bounds = ("due_at <= ?", (now,)) if start is None else (
        "due_at BETWEEN ? AND ?", (start, now))
    rows = conn.execute(
        f"SELECT due_at FROM recipients INDEXED BY {index} "
        f"WHERE {due} AND state IN {_DUE_STATES}{where} ORDER BY due_at LIMIT 1",
        (*bounds, *params),
    ).fetchall()  # all: the statement is done, and no read transaction stays open
    return float(rows[0][0]) if rows else None


@dataclass(frozen=True, slots=True)
class ClaimFloor:
    """Where the due walk of the next claim may start, learnt from the last one.

    A destination that is full (slow, or not answering) is left out of every claim, and
    its due messages stay at the front of the due index: tens of thousands, perhaps.
    Each look walked past all of them (about 25 ms per 100,000), and with mail arriving
    one message at a time there is a look for nearly every message: the deliverer's CPU
    per message was four times what it is without such a backlog.

    After a look, every due row before the first one it could take belongs to a domain
    left out (or is not due): the floor's `blockers`. The next look, as long as it leaves
    out every blocker, may start a little before that row: `MARGIN` earlier, for a
    message whose due time was taken before its commit made it visible. (Not "the same
    domains left out": destinations are full and free again all the time, and a floor
    that lasted only while none came free was walked from the start nearly every look.)
    A row that gets a due time further in the past (a claim given back at its old
    next_attempt, a dead process's claims taken back, a clock stepped back) would be
    passed over: this process forgets its floor when it writes one
    (`SQLiteQueue.release`), and for another process's, every look at least `TTL`
    seconds after the last whole walk walks the whole index again. So the worst case is
    a message found a few seconds late, never one lost."""

    MARGIN: ClassVar[float] = 1.0  # seconds, in due_at's clock
    TTL: ClassVar[float] = 5.0  # seconds of time.monotonic() between whole walks

    blockers: frozenset[str]  # the domains of the due rows before `start`
    now: float  # the look's time (due_at's clock)
    start: float  # where the next look may start
    walked: float  # time.monotonic() of the last whole walk

    def start_for(self, excluded: frozenset[str], now: float) -> float | None:
        """Where a look at `now` leaving out `excluded` starts; None: the whole index."""
        if (self.blockers <= excluded and now >= self.now
                and time.monotonic() - self.walked < self.TTL):
            return self.start
        return None

    @classmethod
    def after(cls, conn: sqlite3.Connection, floor: ClaimFloor | None, now: float,
              found: float | None) -> ClaimFloor:
        """The floor a look at `now` makes: it started at `floor` (None: walked the whole
        index), and the first row it could take came due at `found`. The blockers of the
        rows the new floor passes over are read from the due index: all of them after a
        whole walk (as long again as that walk, once per TTL), else only those between
        the old start and the new."""
        at = (now if found is None else found) - cls.MARGIN
        if floor is not None and at <= floor.start:
            return cls(floor.blockers, now, floor.start, floor.walked)
        window, bounds = ("due_at < ?", (at,)) if floor is None else (
            "due_at >= ? AND due_at < ?", (floor.start, at))
        passed = frozenset(domain for (domain,) in conn.execute(
            f"SELECT DISTINCT domain FROM recipients INDEXED BY recipients_due "
            f"WHERE {window} AND state IN {_DUE_STATES}", bounds).fetchall())
        if floor is None:
            return cls(passed, now, at, time.monotonic())
        return cls(floor.blockers | passed, now, at, floor.walked)


def due_messages(conn: sqlite3.Connection, index: str, now: float, where: str,
                 params: Sequence[str], limit: int, cap: int | None,
                 since: float | None = None) -> dict[int, None]:
    """The messages a claim takes, each once. Without `cap`: in the order their first
    due recipient came due. With `cap`, by destination: domains in the order their first
    due recipient came due, and for each, up to `cap` of its due messages at once (from
    its own index), so each domain's work comes out together, ready for one connection.
    The last domain's share is not cut at `limit`: a claim may exceed it by `cap` - 1.
    `since` (from `first_due`): the walk starts there, not past the due rows before it
    that the filter leaves out (a full destination's, thousands perhaps) once more."""
    seqs: dict[int, None] = {}
    due, bounds = ("due_at <= ?", (now,)) if since is None else (
        "due_at BETWEEN ? AND ?", (since, now))
    if cap is None:
        cursor = conn.execute(
            f"SELECT msg_seq FROM recipients INDEXED BY {index} "
            f"WHERE {due} AND state IN {_DUE_STATES}{where} ORDER BY due_at, id",
            (*bounds, *params))
        for (seq,) in cursor:
            seqs[seq] = None
            if len(seqs) >= limit:
                break
        cursor.close()
        return seqs
    picked: dict[str, None] = {}
    while len(seqs) < limit:
        extra = f" AND domain NOT IN ({', '.join('?' * len(picked))})" if picked else ""
        cursor = conn.execute(
            f"SELECT domain FROM recipients INDEXED BY {index} "
            f"WHERE {due} AND state IN {_DUE_STATES}{where}{extra} ORDER BY due_at, id",
            (*bounds, *params, *picked))
        skipped = 0
        restart = False
        for (domain,) in cursor:
            if domain in picked:
                skipped += 1
                if skipped >= _SKIP_RESTART:
                    restart = True
                    break
                continue
            skipped = 0
            picked[domain] = None
            rows = conn.execute(
                "SELECT msg_seq FROM recipients INDEXED BY recipients_domain_due "
                f"WHERE domain = ? AND due_at <= ? AND state IN {_DUE_STATES} "
                "ORDER BY due_at, id LIMIT ?",
                (domain, now, cap * 4)).fetchall()
            taken = 0
            for (seq,) in rows:  # the domain's share whole, even past `limit`
                if seq not in seqs:
                    seqs[seq] = None
                    taken += 1
                    if taken >= cap:
                        break
            if len(seqs) >= limit:
                break
        cursor.close()
        if not restart:
            break
    return seqs


# What a claim took, by message seq: its claim token and the recipient ids it holds.
_Claimed = dict[int, tuple[str, set[int]]]


@dataclass
class ClaimOp:
    """The write behind `SQLiteQueue.claim`, and the read before it (`nothing_due`) that
    finds it has nothing to do, or where its walk of the due index starts."""

    owner: ClaimOwner
    index: str
    now: float
    until: float
    where: str
    params: tuple[str, ...]
    limit: int
    cap: int | None
    since: float | None = None  # when the first due recipient came due (`nothing_due`)
    # Where `nothing_due` starts (ClaimFloor.start_for), and what it tells of its look:
    # (when the first row it could take came due, or None).
    start: float | None = None
    learnt: Callable[[sqlite3.Connection, float | None], None] | None = None

    def nothing_due(self, conn: sqlite3.Connection) -> list[WorkItem] | None:
        """[] when nothing is due (a read: no write lock, no transaction), else None."""
        self.since = first_due(conn, self.index, self.now, self.where, self.params,
                               self.start)
        if self.learnt is not None:
            self.learnt(conn, self.since)
        return [] if self.since is None else None

    def __call__(self, conn: sqlite3.Connection) -> _Claimed:
        owner, where, params, now, until = self.owner, self.where, self.params, self.now, self.until
        owner.register(conn)
        seqs = due_messages(conn, self.index, now, where, params, self.limit, self.cap,
                            self.since)
        seqs = within_budget(conn, seqs)
        claimed: _Claimed = {}
        for seq in seqs:
            token = os.urandom(8).hex()  # secrets.token_hex, without its imports
            # INDEXED BY: a message has a few recipients, but a domain may have
            # thousands, and the planner cannot tell which index narrows more.
            rows = conn.execute(
                "UPDATE recipients INDEXED BY recipients_message "
                "SET claim_token = ?, claim_until = ?, due_at = ?, claim_owner = ? "
                f"WHERE msg_seq = ? AND due_at <= ? AND state IN {_DUE_STATES}{where} "
                "RETURNING id",
                (token, until, until, owner.id, seq, now, *params),
            ).fetchall()
            claimed[seq] = (token, {r[0] for r in rows})
        return claimed

    def as_claim(self) -> Callable[[sqlite3.Connection], list[WorkItem]]:
        """This op as the writer sees it: its caller gets what `after_commit` makes of
        the op's own value (the writer calls it after the COMMIT)."""
        return cast("Callable[[sqlite3.Connection], list[WorkItem]]", self)

    @staticmethod
    def after_commit(conn: sqlite3.Connection, claimed: _Claimed) -> list[WorkItem]:
        """The claimed messages, read after the COMMIT (`GroupCommitWriter`): the write
        lock, which a sibling process's enqueue may be waiting for, is not held while
        their rows and contents are read, a step (and a handover of the GIL) each. What
        this process has claimed nobody else changes but a deletion, and a message
        deleted meanwhile is left out."""
        found = load_by_seq(conn, list(claimed), content=True)
        return [
            WorkItem(
                message=m,
                recipients=tuple(r for r in m.recipients if r.id in claimed[seq][1]),
                claim_token=token,
            )
            for seq, (token, _) in claimed.items()
            if (m := found.get(seq)) is not None
        ]

