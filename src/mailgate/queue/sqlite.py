"""The default queue backend: one SQLite file (data_dir/queue.db) with group commit.

Durability comes from WAL mode with `synchronous=FULL`: a transaction is on stable
storage when COMMIT returns. An fsync costs milliseconds, so paying one per message would
cap a server at a few hundred messages a second whatever its CPU. Instead one writer
thread owns the write connection, takes every request that is waiting (up to a cap),
runs them in ONE transaction, commits once, and only then answers each caller. The more
sessions finish DATA at the same moment, the more messages share each fsync.

Several processes may open the same file (workers behind SO_REUSEPORT): each has its own
writer thread, and every transaction starts with BEGIN IMMEDIATE, so SQLite's file lock
serialises the writers and `busy_timeout` makes a writer wait for the lock instead of
failing. Reads use a small pool of separate connections; in WAL mode they never block the
writer and always see a consistent snapshot.

Messages queued in the same batch are inserted together, a few multi-row INSERTs for the
whole batch instead of five statements each (_insert_many). Every statement is a trip
through the sqlite3 module, which gives up the GIL and must win it back from the busy
event loop; under SMTP load the writer thread, not the disk, was what limited how many
messages a process accepted. Any failure there falls back to the one-by-one path, which
finds the request at fault.

Checkpoints (copying committed pages from the WAL into the database file, then syncing
that) run in a thread of their own with their own connection. Left to SQLite, one would
run inside a COMMIT every 1000 pages of WAL, that is every 40 messages of 100 KiB, and
every session waiting for that commit would wait for the copy and its fsync as well. A
commit is durable once its WAL frames are synced, whatever the checkpoints do.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import queue as stdqueue
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Self, TypeVar, cast

from mailgate.queue import (
    FINAL_STATES,
    ActivityBucket,
    Attempt,
    NewMessage,
    NotFound,
    QueuedMessage,
    QueueError,
    QueueFull,
    Recipient,
    RecipientState,
    WorkItem,
    new_queue_id,
)

__all__ = ["SCHEMA_VERSION", "ClaimOwner", "SQLiteQueue", "new_queue_id"]

T = TypeVar("T")

SCHEMA_VERSION = 3

# Messages live in `messages` (envelope and metadata, small rows) and their bodies in
# `contents`: list and show scan many message rows, and with bodies inline each row would
# fill a page or more, so the scans would read the whole spool.
#
# `seq` (the rowid) is the join key and "newest first" order: integers index smaller than
# the 18-character queue ids, and rowids grow in commit order across processes.
#
# recipients.due_at is the one column claim() looks at: next_attempt while the recipient is
# queued/deferred and unclaimed, the claim's expiry while claimed, NULL when it is never
# due (held, delivered, failed). Claimed work thus stays out of the way of claim() scans
# and comes back by itself when a crashed worker's lease runs out.
# The processes that claim work (claim owners): a claim names its owner, so a restarted
# server can tell a dead process's claims from a live one's and take them back at once
# (`recover_claims`) instead of waiting out the lease. `boot` is the kernel's boot id (a
# reboot ends every process) and `started` the process's start time, so a pid reused by
# another process is not taken for the old one.
_OWNERS_TABLE = """CREATE TABLE owners (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started TEXT NOT NULL,
        boot TEXT NOT NULL,
        registered_at REAL NOT NULL
    )"""
_OWNER_INDEX = (
    "CREATE INDEX recipients_owner ON recipients (claim_owner) WHERE claim_owner IS NOT NULL")
_SCHEMA = (
    """CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        sender TEXT NOT NULL,
        received_at REAL NOT NULL,
        queued_at REAL NOT NULL,
        size INTEGER NOT NULL,
        client_address TEXT NOT NULL,
        client_helo TEXT NOT NULL,
        protocol TEXT NOT NULL,
        authenticated_as TEXT,
        envid TEXT,
        ret TEXT,
        smtputf8 INTEGER NOT NULL,
        body_8bit INTEGER NOT NULL
    )""",
    "CREATE INDEX messages_sender ON messages (sender COLLATE NOCASE, seq)",
    """CREATE TABLE contents (
        seq INTEGER PRIMARY KEY REFERENCES messages (seq) ON DELETE CASCADE,
        content BLOB NOT NULL
    )""",
    """CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        msg_seq INTEGER NOT NULL REFERENCES messages (seq) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        orcpt TEXT,
        notify TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL,
        due_at REAL,
        last_code INTEGER,
        last_enhanced TEXT,
        last_text TEXT,
        claim_token TEXT,
        claim_until REAL,
        updated_at REAL NOT NULL,
        delay_notified INTEGER NOT NULL DEFAULT 0,
        held_reason TEXT,
        claim_owner TEXT
    )""",
    "CREATE INDEX recipients_due ON recipients (due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX recipients_message ON recipients (msg_seq)",
    "CREATE INDEX recipients_state ON recipients (state, msg_seq)",
    "CREATE INDEX recipients_domain ON recipients (domain, msg_seq)",
    "CREATE INDEX recipients_domain_due ON recipients (domain, due_at) WHERE due_at IS NOT NULL",
    "CREATE INDEX recipients_claim ON recipients (claim_token) WHERE claim_token IS NOT NULL",
    """CREATE TABLE attempts (
        id INTEGER PRIMARY KEY,
        recipient_id INTEGER NOT NULL REFERENCES recipients (id) ON DELETE CASCADE,
        at REAL NOT NULL,
        host TEXT NOT NULL,
        code INTEGER NOT NULL,
        enhanced TEXT,
        text TEXT NOT NULL,
        outcome TEXT NOT NULL,
        remote INTEGER NOT NULL,
        tls TEXT
    )""",
    "CREATE INDEX attempts_recipient ON attempts (recipient_id)",
    _OWNERS_TABLE,
    _OWNER_INDEX,
)
# What takes a file from the version before to each version, run by _create_schema in the
# transaction that opens the file, oldest step first. A step only adds (a column with a
# default, for instance): rows written by the older mailgate stay as they are, and a new
# file made from _SCHEMA ends up with the same tables as a migrated one.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 2: the delay notice is sent at most once per recipient (delivery/notices.py).
    2: ("ALTER TABLE recipients ADD COLUMN delay_notified INTEGER NOT NULL DEFAULT 0",),
    # 3: why a recipient is held (a message that broke delivery is held with the error),
    # and who holds each claim, so a crashed process's claims come back at restart.
    3: ("ALTER TABLE recipients ADD COLUMN held_reason TEXT",
        "ALTER TABLE recipients ADD COLUMN claim_owner TEXT",
        _OWNERS_TABLE,
        _OWNER_INDEX),
}
# Indexes added after version 1 first shipped: made on every open when missing (a file
# written by an older mailgate gets them then; older code ignores them). They cover the
# dashboard's activity() and the age filter of list(): each count reads one index range,
# never the table, so a day with 100,000 messages costs a few milliseconds.
_ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS messages_queued ON messages (queued_at)",
    "CREATE INDEX IF NOT EXISTS messages_bounces ON messages (queued_at) WHERE sender = ''",
    "CREATE INDEX IF NOT EXISTS attempts_outcome ON attempts (outcome, at)",
)

_MESSAGE_COLUMNS = (
    "seq, id, sender, received_at, size, client_address, client_helo, protocol, "
    "authenticated_as, envid, ret, smtputf8, body_8bit"
)
_RECIPIENT_COLUMNS = (
    "id, msg_seq, address, state, attempts, next_attempt, orcpt, notify, "
    "last_code, last_enhanced, last_text, updated_at, delay_notified, held_reason"
)
_ACTIVE = "('queued', 'deferred')"  # the states claim() may take
# When work becomes due again after a change of schedule: at `now`, unless a live claim
# still covers it (the claimant's record() or release() sets the real value).
_DUE_NOW = "CASE WHEN claim_until > :now THEN claim_until ELSE :now END"
_OUTCOMES = frozenset(
    {RecipientState.DELIVERED, RecipientState.DEFERRED, RecipientState.FAILED}
)
# Content a claim may load at once (bodies are read whole for delivery): past it, the
# rest waits for the next claim. Bounds delivery's memory whatever the message sizes.
CLAIM_BYTES = 32 * 1024 * 1024
_MAX_VARIABLES = 500  # per IN (...) list: far below SQLite's limit, and plans stay cheap
_STORAGE_ERRORS = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_NOMEM})
_LOCK_ERRORS = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_IDLE_READERS = 8
# WAL growth, in pages, after which the checkpoint thread copies the WAL into the database
# file (SQLite's own default interval); the writer estimates it from what it commits.
_CHECKPOINT_PAGES = 1000
# The writer checkpoints by itself, inside a COMMIT, only if the WAL grows this large
# (the checkpoint thread fell behind or failed): the WAL stays bounded either way.
_WAL_FALLBACK_PAGES = 16000
# WAL frames a commit appends, measured: 12 for the batch (table and index pages, the
# commit frame), 1 more per request, and the content's own pages.
_PAGES_PER_COMMIT = 12
_PAGES_PER_REQUEST = 1


_MESSAGE_INSERT = (
    "INSERT INTO messages (seq, id, sender, received_at, queued_at, size, client_address, "
    "client_helo, protocol, authenticated_as, envid, ret, smtputf8, body_8bit) VALUES ",
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    14,
)
_CONTENT_INSERT = ("INSERT INTO contents (seq, content) VALUES ", "(?, ?)", 2)
_RECIPIENT_INSERT = (
    "INSERT INTO recipients (msg_seq, address, domain, orcpt, notify, state, next_attempt, "
    "due_at, updated_at) VALUES ",
    "(?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
    8,
)
_multi_sql: dict[tuple[str, int], str] = {}


def _insert_rows(conn: sqlite3.Connection, insert: tuple[str, str, int],
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


def _boot_id() -> str:
    """The kernel's boot id (Linux): differs after every reboot; "" where unknown."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_started(pid: int) -> str:
    """When process `pid` started, in clock ticks since boot (Linux /proc/PID/stat field
    22); "" where unknown. With the boot id it tells a reused pid from the old process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may hold spaces or parentheses.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True, slots=True)
class ClaimOwner:
    """The process that claims work through one SQLiteQueue: a random id per queue
    object, registered in the `owners` table with what tells whether it still runs."""

    id: str
    host: str
    pid: int
    started: str
    boot: str

    @classmethod
    def this_process(cls) -> ClaimOwner:
        pid = os.getpid()
        return cls(secrets.token_hex(8), socket.gethostname(), pid, _process_started(pid),
                   _boot_id())

    def register(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO owners (id, host, pid, started, boot, registered_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self.id, self.host, self.pid, self.started, self.boot, time.time()))

    def outlived(self, host: str, pid: int, started: str, boot: str) -> bool:
        """Whether the owner with these particulars has certainly ended. Only an owner on
        this host can be checked; one elsewhere (a shared disk) waits for its leases."""
        if host != self.host:
            return False
        if boot and self.boot and boot != self.boot:
            return True  # the machine rebooted since
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        now = _process_started(pid)
        return bool(started and now and started != now)  # the pid was reused


@dataclass(slots=True, eq=False)
class _Enqueue:
    """What enqueue() writes; calling it stores the message alone (one request's op)."""

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
                m.body_8bit)

    def __call__(self, conn: sqlite3.Connection) -> str:
        message = self.message
        now = time.time()
        while True:
            queue_id = message.id or new_queue_id(now)
            row = conn.execute(
                "INSERT INTO messages (id, sender, received_at, queued_at, size, "
                "client_address, client_helo, protocol, authenticated_as, envid, ret, "
                "smtputf8, body_8bit) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING RETURNING seq",
                (queue_id, *self.columns(now)),
            ).fetchone()
            if row is not None:
                break
            if message.id:  # the caller's id (already in its Received header) is taken
                raise QueueError(f"could not queue the message: id {message.id} exists")
        seq = row[0]
        self.store_content(conn, seq)
        conn.executemany(
            "INSERT INTO recipients (msg_seq, address, domain, orcpt, notify, state, "
            "next_attempt, due_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
            [(seq, a, d, o, n, now, now, now) for a, d, o, n in self.recipients],
        )
        return queue_id


def _insert_many(conn: sqlite3.Connection, items: Sequence[_Enqueue]) -> list[str]:
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
    _insert_rows(conn, _MESSAGE_INSERT, messages)
    _insert_rows(conn, _CONTENT_INSERT, contents)
    first = seq - len(items) + 1
    for offset, item in enumerate(items):
        if item.spooled:
            item.store_content(conn, first + offset)
    _insert_rows(conn, _RECIPIENT_INSERT, recipients)
    return ids


@dataclass(slots=True, eq=False)
class _Request(Generic[T]):
    """One unit of work for the writer thread; its effects commit together with the batch."""

    op: Callable[[sqlite3.Connection], T]
    future: Future[T]
    doing: str  # "queue the message": completes the error sentences
    weight: int  # bytes it writes, so one batch does not grow without bound


_STOP = object()


def _private(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it: SQLite gives the -wal and
    -shm files it creates the database file's mode, so they are owner-only too. Files
    an older mailgate left readable by others are made owner-only."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with suppress(FileNotFoundError):
            mode = os.stat(p).st_mode & 0o777
            if mode & 0o077:
                os.chmod(p, mode & 0o700)


class SQLiteQueue:
    """The `Queue` protocol on one SQLite file; see the module docstring for the design.

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
    ) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._batch_limit = max(1, batch_limit)
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()
        self._closed = False
        self._idle: list[sqlite3.Connection] = []
        self._requests: stdqueue.SimpleQueue[_Request[Any] | object] = stdqueue.SimpleQueue()
        self._commits = 0
        self._committed_requests = 0
        self._checkpoints = 0
        self._wal_growth = 0  # pages committed since the checkpoint thread was last asked
        self._checkpoint_wanted = threading.Event()
        self._checkpointer_stop = False
        self.owner = ClaimOwner.this_process()
        self._claimed_ever = False  # whether close() has claims to give back
        self._wconn = self._open_writer(max_page_count)
        self._page_size = int(self._wconn.execute("PRAGMA page_size").fetchone()[0]) or 4096
        self._writer = threading.Thread(
            target=self._run_writer, name=f"queue-writer {self.path.name}", daemon=True
        )
        self._checkpointer = threading.Thread(
            target=self._run_checkpointer, name=f"queue-checkpoint {self.path.name}",
            daemon=True,
        )
        self._writer.start()
        self._checkpointer.start()

    # ------------------------------------------------------------------ setup

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves; the sqlite3 module's
        # implicit BEGIN (DEFERRED) would take the write lock only at the first write and
        # could then fail with SQLITE_BUSY mid-transaction, where busy_timeout cannot help.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def _open_writer(self, max_page_count: int | None) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            _private(self.path)
        except OSError as exc:
            raise QueueError(f"{self.path}: cannot create the queue: {exc.strerror}") from exc
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise self._translate(exc, "open the queue") from exc
        try:
            mode = self._retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise QueueError(
                    f"{self.path}: SQLite could not switch the queue to WAL mode (it stayed "
                    f"{mode!r}); put data_dir on a local file system that supports it"
                )
            # A burst can grow the WAL to gigabytes; without a limit the file keeps that
            # size after the checkpoint until the last connection closes.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_FALLBACK_PAGES}")
            # The per-request savepoints need a statement journal: in memory, not a temporary
            # file created and deleted each time (the WAL alone is what makes data durable).
            conn.execute("PRAGMA temp_store = MEMORY")
            if max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
            self._retry_busy(lambda: self._create_schema(conn))
            # Lock waits of the writer are _begin_write's (see there).
            conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            conn.close()
            raise self._translate(exc, "open the queue") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE: two processes starting together must not both see version 0
        # and both create tables.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif not 1 <= version <= SCHEMA_VERSION:
                raise QueueError(
                    f"{self.path} has queue schema version {version}, but this mailgate "
                    f"knows only versions 1 to {SCHEMA_VERSION}; run the mailgate that "
                    "wrote it"
                )
            elif version < SCHEMA_VERSION:
                # A file from an older mailgate: brought up to date in this transaction,
                # so other processes opening it meanwhile wait and then see the new
                # version; a failure leaves the file as it was.
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[step]:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for statement in _ADDED_INDEXES:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if version == 0:
            # SQLite syncs the directory when it creates the WAL but not when it creates
            # the database file; without this a crash could lose the new file, and with
            # it everything checkpointed into it.
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _begin_write(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE on the writer connection, waiting for another process's writer.

        The writer connection has no busy timeout: SQLite's busy handler sleeps 1, 2, 5,
        10, 15 ms... between tries, so with worker processes committing all the time a
        writer would often sleep for milliseconds after the lock came free. Tries every
        0.1 to 2 ms instead, for at most busy_timeout."""
        deadline: float | None = None
        delay = 0.0001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) not in _LOCK_ERRORS:
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._busy_timeout
                elif now >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 1.5, 0.002)

    def _retry_busy(self, fn: Callable[[], T]) -> T:
        """Run `fn` again while SQLite says the file is locked, up to busy_timeout.

        The busy handler covers the common case, but SQLite returns SQLITE_BUSY at once in
        a few others, such as switching to WAL while another process opens the file or
        a reader meeting another process's WAL recovery. These pass within milliseconds."""
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) not in _LOCK_ERRORS or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _translate(self, exc: sqlite3.Error, doing: str) -> QueueError:
        """An SQLite error as a sentence that says what failed and what to do."""
        primary = _primary_code(exc)
        if primary in _STORAGE_ERRORS:
            return QueueFull(
                f"could not {doing}: the queue's storage failed ({exc}); free space or "
                f"repair the disk holding {self.path}; nothing already queued was lost"
            )
        if primary in _LOCK_ERRORS:
            return QueueError(
                f"could not {doing}: another process kept the queue database locked for "
                f"more than {self._busy_timeout:g} s ({exc}); try again"
            )
        return QueueError(f"could not {doing}: {exc} ({self.path})")

    # ------------------------------------------------------------------ writer thread

    @property
    def commit_count(self) -> int:
        """Transactions this process has committed: with group commit, far fewer than
        the writes it has answered (see `committed_requests`)."""
        return self._commits

    @property
    def committed_requests(self) -> int:
        """Writes (enqueue, claim, record, ...) answered after a successful commit."""
        return self._committed_requests

    def _submit(
        self, op: Callable[[sqlite3.Connection], T], doing: str, weight: int = 0
    ) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            # Under the lock so no request can slip in behind the stop marker and wait
            # forever for a writer that has gone.
            if self._closed:
                raise QueueError(f"could not {doing}: the queue is closed")
            self._requests.put(_Request(op, future, doing, weight))
        return future

    def _call(self, op: Callable[[sqlite3.Connection], T], doing: str, weight: int = 0) -> T:
        return self._submit(op, doing, weight).result()

    def _run_writer(self) -> None:
        stop = False
        while not stop:
            first = self._requests.get()
            if first is _STOP:
                break
            assert isinstance(first, _Request)
            batch: list[_Request[Any]] = [first]
            size = first.weight
            while len(batch) < self._batch_limit and size < self._batch_bytes:
                try:
                    more = self._requests.get_nowait()
                except stdqueue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                assert isinstance(more, _Request)
                batch.append(more)
                size += more.weight
            # A caller cancelled before we started (an asyncio task that went away) gets
            # nothing written: it never told its client the message was queued.
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if batch:
                self._execute_guarded(batch)
        with suppress(sqlite3.Error):
            self._wconn.close()

    def _execute_guarded(self, batch: list[_Request[Any]]) -> None:
        try:
            self._execute(batch)
        except Exception as exc:  # a bug must fail the callers, not kill the writer
            self._rollback()
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)

    def _rollback(self) -> None:
        if self._wconn.in_transaction:
            with suppress(sqlite3.Error):
                self._wconn.execute("ROLLBACK")

    def _fail(self, request: _Request[Any], exc: BaseException) -> None:
        if isinstance(exc, sqlite3.Error):
            exc = self._translate(exc, request.doing)
        request.future.set_exception(exc)

    def _execute(self, batch: list[_Request[Any]]) -> None:
        """Run the batch in one transaction, each request in its own savepoint so that one
        failing (a message too big for the disk left) does not fail the others; runs of
        enqueues go in together first (_insert_many), and one by one if that fails."""
        conn = self._wconn
        pending = batch
        together = True
        while pending:
            done: list[tuple[_Request[Any], Any, BaseException | None]] = []
            lost: tuple[_Request[Any], BaseException] | None = None
            again = False
            try:
                self._begin_write(conn)
                i = 0
                while i < len(pending) and lost is None:
                    end = i + 1
                    if together:
                        while end < len(pending) and isinstance(pending[end].op, _Enqueue):
                            end += 1
                        if not isinstance(pending[i].op, _Enqueue):
                            end = i + 1
                    if end - i > 1:
                        run = pending[i:end]
                        ids = self._insert_together(conn, run)
                        if ids is not None:
                            done += [(r, v, None) for r, v in zip(run, ids, strict=True)]
                            i = end
                            continue
                        if not conn.in_transaction:  # the failure took the transaction
                            again = True
                            break
                    for request in pending[i:end]:
                        lost = self._execute_one(conn, request, done)
                        if lost is not None:
                            break
                    i = end
                if lost is None and not again:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                for request in pending:
                    self._fail(request, exc)
                return
            if again:
                self._rollback()
                together = False
                continue
            if lost is not None:
                # Run the others again without the one that broke the transaction.
                self._fail(*lost)
                pending = [r for r in pending if r is not lost[0]]
                continue
            self._commits += 1
            self._wal_growth += _PAGES_PER_COMMIT + sum(
                _PAGES_PER_REQUEST + request.weight // self._page_size for request, _, _ in done
            )
            if self._wal_growth >= _CHECKPOINT_PAGES:
                self._wal_growth = 0
                self._checkpoint_wanted.set()
            for request, value, error in done:
                if error is None:
                    self._committed_requests += 1
                    request.future.set_result(value)
                else:
                    self._fail(request, error)
            return

    def _execute_one(
        self,
        conn: sqlite3.Connection,
        request: _Request[Any],
        done: list[tuple[_Request[Any], Any, BaseException | None]],
    ) -> tuple[_Request[Any], BaseException] | None:
        """Run one request in its own savepoint; the request and its error when the error
        took the whole transaction with it."""
        conn.execute("SAVEPOINT request")
        try:
            value = request.op(conn)
        except Exception as exc:
            if not conn.in_transaction:
                # On SQLITE_FULL or an I/O error SQLite may roll back the whole
                # transaction, taking the earlier requests' work with it.
                return (request, exc)
            conn.execute("ROLLBACK TO request")
            conn.execute("RELEASE request")
            done.append((request, None, exc))
        else:
            conn.execute("RELEASE request")
            done.append((request, value, None))
        return None

    def _insert_together(
        self, conn: sqlite3.Connection, run: list[_Request[Any]]
    ) -> list[str] | None:
        """Several enqueues in one go; None (and nothing written) if that failed."""
        conn.execute("SAVEPOINT together")
        try:
            ids = _insert_many(conn, [cast(_Enqueue, r.op) for r in run])
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO together")
                conn.execute("RELEASE together")
            return None
        conn.execute("RELEASE together")
        return ids

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_count(self) -> int:
        """Checkpoints the checkpoint thread has run."""
        return self._checkpoints

    def _run_checkpointer(self) -> None:
        """Copy the WAL into the database file whenever the writer says it has grown."""
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._checkpoint_wanted.wait()
                self._checkpoint_wanted.clear()
                if self._checkpointer_stop:
                    return
                try:
                    if conn is None:
                        conn = self._connect()
                    # PASSIVE copies what no reader still needs without waiting for any
                    # lock, and never holds up the writer, which goes on appending.
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self._checkpoints += 1
                except sqlite3.Error:
                    # Nothing is lost: the frames stay in the WAL, the next request copies
                    # them, and past _WAL_FALLBACK_PAGES the writer checkpoints itself.
                    pass
        finally:
            if conn is not None:
                with suppress(sqlite3.Error):
                    conn.close()

    # ------------------------------------------------------------------ readers

    def _read(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a pooled read connection inside one read transaction: all its
        queries see the same snapshot, so a message and its recipients always match."""
        with self._lock:
            if self._closed:
                raise QueueError(f"could not {doing}: the queue is closed")
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self._connect()
                conn.execute("PRAGMA query_only = ON")
            reader = conn

            def attempt() -> T:
                reader.execute("BEGIN")
                try:
                    return fn(reader)
                finally:
                    # Ending the read transaction at once lets checkpoints reach the end
                    # of the WAL; a reader left open would make it grow without bound.
                    reader.execute("ROLLBACK")

            return self._retry_busy(attempt)
        except sqlite3.Error as exc:
            raise self._translate(exc, doing) from exc
        finally:
            if conn is not None:
                with self._lock:
                    keep = not self._closed and len(self._idle) < _IDLE_READERS
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    # ------------------------------------------------------------------ enqueue

    def _enqueue_op(self, message: NewMessage) -> _Enqueue:
        if not message.recipients:
            raise QueueError("could not queue the message: it has no recipients")
        return _Enqueue(
            message,
            b"" if message.spool is not None else bytes(message.content),
            [
                (
                    r.address,
                    r.address.rpartition("@")[2].lower() if "@" in r.address else "",
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
        asyncio future (through call_soon_threadsafe) after the commit.

        If the awaiting task is cancelled before the writer takes the request, nothing is
        stored; once the writer has it, the message is stored even though this caller
        never learns its id (the client was not told 250, so at worst it sends again)."""
        future = self._submit(
            self._enqueue_op(message), "queue the message", message.size
        )
        return await asyncio.wrap_future(future)

    # ------------------------------------------------------------------ delivery side

    def claim(
        self,
        now: float,
        limit: int,
        lease: float,
        domains: Sequence[str] | None = None,
        exclude_domains: Sequence[str] | None = None,
    ) -> list[WorkItem]:
        """Take up to `limit` messages with due recipients, each under its own claim token
        that lasts until now + lease; see `Queue.claim`."""
        if limit <= 0 or (domains is not None and not domains):
            return []
        where, params = _domain_filter(domains, exclude_domains)
        until = now + lease
        # INDEXED BY: without statistics the planner may prefer recipients_state and sort
        # every queued recipient. The due index yields recipients in order; a worker for
        # a few domains reads only theirs (and sorts just those when there are several),
        # instead of walking past every other domain's due work.
        index = "recipients_due" if domains is None else "recipients_domain_due"

        owner = self.owner
        self._claimed_ever = True

        def op(conn: sqlite3.Connection) -> list[WorkItem]:
            owner.register(conn)
            cursor = conn.execute(
                f"SELECT msg_seq FROM recipients INDEXED BY {index} "
                f"WHERE due_at <= ? AND state IN {_ACTIVE}{where} ORDER BY due_at, id",
                (now, *params),
            )
            # Recipients come in due order, several per message: keep each message once,
            # in the order its first due recipient appears.
            seqs: dict[int, None] = {}
            for (seq,) in cursor:
                seqs[seq] = None
                if len(seqs) >= limit:
                    break
            cursor.close()
            seqs = _within_budget(conn, seqs)
            claimed: dict[int, tuple[str, set[int]]] = {}
            for seq in seqs:
                token = secrets.token_hex(8)
                # INDEXED BY: a message has a few recipients, but a domain may have
                # thousands, and the planner cannot tell which index narrows more.
                rows = conn.execute(
                    "UPDATE recipients INDEXED BY recipients_message "
                    "SET claim_token = ?, claim_until = ?, due_at = ?, claim_owner = ? "
                    f"WHERE msg_seq = ? AND due_at <= ? AND state IN {_ACTIVE}{where} "
                    "RETURNING id",
                    (token, until, until, owner.id, seq, now, *params),
                ).fetchall()
                claimed[seq] = (token, {r[0] for r in rows})
            messages = _load_messages(conn, list(seqs), content=True)
            return [
                WorkItem(
                    message=m,
                    recipients=tuple(r for r in m.recipients if r.id in claimed[seq][1]),
                    claim_token=claimed[seq][0],
                )
                for seq, m in zip(seqs, messages, strict=True)
            ]

        return self._call(op, "claim work")

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
        await asyncio.wrap_future(self._submit(op, "record the attempt"))

    def _record_op(
        self,
        recipient_id: int,
        attempt: Attempt,
        next_attempt: float | None,
        claim_token: str | None,
    ) -> Callable[[sqlite3.Connection], None]:
        """The write behind `record`.

        A recipient already delivered or failed stays so (a late report from a worker
        whose lease ran out must not send it back to the queue), and a held one stays
        held after a deferral. A claim is cleared when `claim_token` is None or its own,
        but not when another worker has since claimed the recipient and is still on it.
        """
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

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = conn.execute(
                "SELECT state, claim_token, claim_until FROM recipients WHERE id = ?",
                (recipient_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"recipient {recipient_id} is not in the queue")
            conn.execute(
                "INSERT INTO attempts (recipient_id, at, host, code, enhanced, text, outcome, "
                "remote, tls) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    recipient_id,
                    attempt.at,
                    attempt.host,
                    attempt.code,
                    attempt.enhanced,
                    attempt.text,
                    outcome.value,
                    attempt.remote,
                    attempt.tls,
                ),
            )
            state = RecipientState(row["state"])
            new_next: float | None = None
            if state in FINAL_STATES:
                new_state = state
            elif outcome is not RecipientState.DEFERRED:
                new_state = outcome
            elif state is RecipientState.HELD:
                new_state = state
            else:
                new_state, new_next = RecipientState.DEFERRED, next_attempt
            theirs = (
                claim_token is not None
                and row["claim_token"] not in (None, claim_token)
                and row["claim_until"] is not None
                and row["claim_until"] > now
            )
            if theirs:
                token, until = row["claim_token"], row["claim_until"]
                due = until if new_next is not None else None
            else:
                token, until, due = None, None, new_next
            conn.execute(
                "UPDATE recipients SET state = ?, attempts = attempts + 1, next_attempt = ?, "
                "due_at = ?, last_code = ?, last_enhanced = ?, last_text = ?, "
                "claim_token = ?, claim_until = ?, updated_at = ?, "
                "claim_owner = CASE WHEN ? IS NULL THEN NULL ELSE claim_owner END "
                "WHERE id = ?",
                (
                    new_state.value,
                    new_next,
                    due,
                    attempt.code,
                    attempt.enhanced,
                    attempt.text,
                    token,
                    until,
                    now,
                    token,
                    recipient_id,
                ),
            )

        return op

    def release(self, claim_token: str) -> None:
        """Give claimed work back unchanged: due again at its own next_attempt."""

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
            for chunk in _chunks(dead):
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
        return await asyncio.wrap_future(self._submit(op, "note the delay notice"))

    def _mark_delay_notified_op(
        self, recipient_ids: Sequence[int]
    ) -> Callable[[sqlite3.Connection], builtins.list[int]]:
        ids = sorted(set(recipient_ids))

        def op(conn: sqlite3.Connection) -> builtins.list[int]:
            # Test and set in one statement: the ids come back only from the one caller
            # that changed them.
            marked: builtins.list[int] = []
            for chunk in _chunks(ids):
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
        newer = after is not None
        order = "ASC" if newer else "DESC"
        if rcpt:
            # Driven by recipients_state / recipients_domain, walked in key order: the
            # page comes out in order without sorting every match.
            join = " JOIN messages m ON m.seq = r.msg_seq" if len(where) > len(rcpt) else ""
            base = f"SELECT DISTINCT r.msg_seq FROM recipients r{join}"
        else:
            base = "SELECT m.seq FROM messages m"

        def read(conn: sqlite3.Connection) -> builtins.list[QueuedMessage]:
            conds, args = list(where), list(params)
            if before is not None:
                conds.append(f"{key} < ?")
                args.append(_message_seq(conn, before))
            if after is not None:
                conds.append(f"{key} > ?")
                args.append(_message_seq(conn, after))
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
            return _load_messages(conn, seqs, content=False)

        return self._read("list the queue", read)

    def show(self, message_id: str, content: bool = False) -> QueuedMessage:
        """One message with its recipients and every attempt; NotFound if unknown."""

        def read(conn: sqlite3.Connection) -> QueuedMessage:
            seq = _message_seq(conn, message_id)
            (message,) = _load_messages(conn, [seq], content=content)
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
            seq = _message_seq(conn, message_id)
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
            seq = _message_seq(conn, message_id)
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
                params["seq"] = _message_seq(conn, message_id)
                which = " AND msg_seq = :seq"
            return conn.execute(
                f"UPDATE recipients SET next_attempt = :now, due_at = {_DUE_NOW} "
                f"WHERE state IN {_ACTIVE}{which}",
                params,
            ).rowcount

        return self._call(op, "retry")

    def counts(self) -> dict[str, int]:
        """Recipients per state, every state present (zero when none)."""

        def read(conn: sqlite3.Connection) -> dict[str, int]:
            result = {s.value: 0 for s in RecipientState}
            for state, n in conn.execute("SELECT state, count(*) FROM recipients GROUP BY state"):
                result[state] = n
            return result

        return self._read("count the queue", read)

    def activity(
        self, since: float, bucket_seconds: float, until: float | None = None
    ) -> builtins.list[ActivityBucket]:
        """Messages queued and attempts by outcome per bucket; see `Queue.activity`.

        One count per bucket and series, each over one covering index range: SQLite
        counts a range of index entries far faster than it groups the rows by an
        expression (5 ms against 35 ms for a day of 100,000 messages)."""
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

        def read(conn: sqlite3.Connection) -> builtins.list[ActivityBucket]:
            counts: dict[str, builtins.list[int]] = {}
            for name, (sql, pre) in series.items():
                counts[name] = [conn.execute(sql, (*pre, lo, hi)).fetchone()[0]
                                for lo, hi in edges]
            return [
                ActivityBucket(start=lo, seconds=bucket_seconds,
                               **{name: values[i] for name, values in counts.items()})
                for i, (lo, _) in enumerate(edges)
            ]

        return self._read("count the queue's activity", read)

    def integrity_check(self) -> builtins.list[str]:  # `list` here is the method above
        """SQLite's PRAGMA integrity_check: ["ok"] when the file is sound."""
        return self._read(
            "check the queue",
            lambda conn: [str(row[0]) for row in conn.execute("PRAGMA integrity_check")],
        )

    def close(self) -> None:
        """Finish every write already asked for, then close all connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._claimed_ever:  # before the stop marker: it runs with the last batch
                self._requests.put(_Request(self._retire_owner, Future(), "retire", 0))
            self._requests.put(_STOP)
            idle, self._idle = self._idle, []
        self._writer.join()
        self._checkpointer_stop = True
        self._checkpoint_wanted.set()
        self._checkpointer.join()
        for conn in idle:
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------- helpers


def _domain_filter(
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


def _within_budget(conn: sqlite3.Connection, seqs: dict[int, None]) -> dict[int, None]:
    """The first of `seqs` whose content adds up to at most CLAIM_BYTES (at least one):
    a claim loads every body it returns, and 64 messages of 24 MiB would be 1.5 GB."""
    if len(seqs) <= 1:
        return seqs
    sizes: dict[int, int] = {}
    for chunk in _chunks(list(seqs)):
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


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _message_seq(conn: sqlite3.Connection, message_id: str) -> int:
    row = conn.execute("SELECT seq FROM messages WHERE id = ?", (message_id,)).fetchone()
    if row is None:
        raise NotFound(f"message {message_id} is not in the queue")
    return int(row[0])


def _chunks(seqs: Sequence[int]) -> Iterable[Sequence[int]]:
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


def _load_messages(
    conn: sqlite3.Connection, seqs: Sequence[int], *, content: bool
) -> list[QueuedMessage]:
    """The messages with these seqs, in the order given, with all their recipients."""
    rows: dict[int, sqlite3.Row] = {}
    recipients: dict[int, list[sqlite3.Row]] = {seq: [] for seq in seqs}
    bodies: dict[int, bytes] = {}
    for chunk in _chunks(seqs):
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
    result = []
    for seq in seqs:
        m = rows[seq]
        result.append(
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
            )
        )
    return result

