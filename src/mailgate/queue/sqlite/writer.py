"""The engine under the SQLite queue: one writer thread with group commit, a pool of
read connections, and a checkpoint thread, on one SQLite file in WAL mode. It runs
whatever writes it is given (callables on a connection) and knows nothing of messages;
`SQLiteQueue` (this package's __init__) is built on it.

Durability comes from WAL mode with `synchronous=FULL`: a transaction is on stable
storage when COMMIT returns. An fsync costs milliseconds, so paying one per message would
cap a server at a few hundred messages a second whatever its CPU. Instead one writer
thread owns the write connection, takes every request that is waiting (up to a cap),
runs them in ONE transaction, commits once, and only then answers each caller. The more
sessions finish DATA at the same moment, the more messages share each fsync.

A batch of ops with a `linger` (seconds; async delivery reports) waits that long for
more, and stops when an op without one comes (an enqueue's client waits for its 250).

A batch of requests that promise nothing (claims: leases that a crash only makes due
again) commits at `synchronous=NORMAL`, without an fsync of its own. Its WAL frames come
before those of any later commit, and the next durable commit syncs the whole WAL file,
so they become durable with it.

Several processes may open the same file (workers behind SO_REUSEPORT): each has its own
writer thread, and every transaction starts with BEGIN IMMEDIATE, so SQLite's file lock
serialises the writers and `busy_timeout` makes a writer wait for the lock instead of
failing. Reads use a small pool of separate connections; in WAL mode they never block the
writer and always see a consistent snapshot.

Requests of one `Joinable` class that wait next to each other in a batch run in one go
(`run_together`), each in its own savepoint otherwise; a failure of the joint run falls
back to the one-by-one path, which finds the request at fault.

An op may have an `after_commit(conn, value)`: its caller gets what that reads after the
COMMIT (`_after_commit`), such as the messages a claim took, with the write lock free.

Checkpoints (copying committed pages from the WAL into the database file, then syncing
that) run in a thread of their own with their own connection. Left to SQLite, one would
run inside a COMMIT every 1000 pages of WAL, that is every 40 messages of 100 KiB, and
every session waiting for that commit would wait for the copy and its fsync as well. A
commit is durable once its WAL frames are synced, whatever the checkpoints do.
"""

from __future__ import annotations

import os
import queue as stdqueue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, cast

from mailgate.queue import QueueError, QueueFull
from mailgate.queue.handover import LoopSlot, hand_over

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future

__all__ = ["GroupCommitWriter", "Joinable"]

T = TypeVar("T")

_STORAGE_ERRORS = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_NOMEM})
_LOCK_ERRORS = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_IDLE_READERS = 8
# WAL growth (pages, estimated from the commits) after which the checkpoint thread copies
# the WAL into the database: 4x SQLite's default, so pages freed by mail delivered within
# one interval are reused and copied once (100 KiB messages relayed: 207-212 KiB written
# a message at 1,000 pages, 166-172 at 4,000, no less at 10,000).
_CHECKPOINT_PAGES = 4000
# The writer checkpoints by itself, inside a COMMIT, only if the WAL grows this large
# (the checkpoint thread fell behind or failed): the WAL stays bounded either way.
_WAL_FALLBACK_PAGES = 16000
# WAL frames a commit appends, measured: 12 for the batch (table and index pages, the
# commit frame), 1 more per request, and the content's own pages.
_PAGES_PER_COMMIT = 12
_PAGES_PER_REQUEST = 1


def _future() -> Future[Any]:
    """A concurrent.futures.Future, its module (it loads `logging`) loaded on the first
    write: a `queue` command that only reads never needs it."""
    from concurrent.futures import Future

    return Future()


class Joinable(Generic[T]):
    """A write that may run in one go with the writes of its class queued right after it
    (enqueues, delivery reports). Calling it runs it alone; `run_together` runs several
    and returns their values in order, or raises, and then each runs alone."""

    __slots__ = ()

    def __call__(self, conn: sqlite3.Connection) -> T:
        raise NotImplementedError

    @classmethod
    def run_together(cls, conn: sqlite3.Connection, ops: Sequence[Self]) -> list[T]:
        raise NotImplementedError


@dataclass(slots=True, eq=False)
class _Request(Generic[T]):
    """One unit of work for the writer thread; its effects commit together with the batch."""

    op: Callable[[sqlite3.Connection], T]
    future: Future[T] | LoopSlot[T]
    doing: str  # "queue the message": completes the error sentences
    weight: int  # bytes it writes, so one batch does not grow without bound
    durable: bool = True  # False: may commit without its own fsync (see `_execute`)
    # A read, outside any transaction, whose answer (not None) is the request's without
    # one: a claim that finds nothing due takes no write lock.
    shortcut: Callable[[sqlite3.Connection], T | None] | None = None


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


class GroupCommitWriter:
    """One SQLite file written by one writer thread with group commit; see the module
    docstring. Subclasses give `_prepare` (the schema) and may give `_final_op`.

    `max_page_count` caps the database size (in pages) for this process, so tests can
    make storage "full" for real. `busy_timeout` is how long to wait for another process
    holding the write lock before giving up with QueueError. A batch holds at most
    `batch_limit` requests and stops growing past `batch_bytes` of written content.
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
        self.path = Path(path)
        self._secure_delete = "ON" if secure_delete == "on" else "FAST"
        self._busy_timeout = busy_timeout
        self._batch_limit = max(1, batch_limit)
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()
        self._closed = False
        self._idle: list[sqlite3.Connection] = []
        self._requests: stdqueue.SimpleQueue[_Request[Any] | object] = stdqueue.SimpleQueue()
        self._settled: list[LoopSlot[Any]] = []  # the writer thread's, between batches
        self._commits = 0
        self._relaxed = False  # the write connection is at synchronous=NORMAL
        self._committed_requests = 0
        self._checkpoints = 0
        self._wal_growth = 0  # pages committed since the checkpoint thread was last asked
        self._checkpoint_wanted = threading.Event()
        self._storage_full = False  # a write failed with SQLITE_FULL since the last TRUNCATE
        self._checkpointer_stop = False
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

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Make or bring up to date what the file holds (tables, indexes), when opening."""

    def _final_op(self) -> Callable[[sqlite3.Connection], object] | None:
        """A write to run after every other one as the writer stops (asked under the
        lock, by close); None for none."""
        return None

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
        # Said here, not left to how SQLite was built (Debian: ON, others: OFF). FAST, the
        # default, zeroes what is deleted in the pages a delete writes anyway (a small
        # message's row, its index entries), not the pages it frees, which the next
        # messages reuse; ON (`[queue] secure_delete = "on"`) zeroes those too, writing a
        # delivered message's content a second time. docs/security.md says so.
        conn.execute(f"PRAGMA secure_delete = {self._secure_delete}")
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
            self._retry_busy(lambda: self._prepare(conn))
            # Lock waits of the writer are _begin_write's (see there).
            conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            conn.close()
            raise self._translate(exc, "open the queue") from exc
        except BaseException:
            conn.close()
            raise
        return conn

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
        self, op: Callable[[sqlite3.Connection], T], doing: str, weight: int = 0,
        durable: bool = True, shortcut: Callable[[sqlite3.Connection], T | None] | None = None,
    ) -> Future[T]:
        future: Future[T] = _future()
        with self._lock:
            # Under the lock so no request can slip in behind the stop marker and wait
            # forever for a writer that has gone.
            if self._closed:
                raise QueueError(f"could not {doing}: the queue is closed")
            self._requests.put(_Request(op, future, doing, weight, durable, shortcut))
        return future

    def _submit_async(
        self, op: Callable[[sqlite3.Connection], T], doing: str, weight: int = 0,
        durable: bool = True, shortcut: Callable[[sqlite3.Connection], T | None] | None = None,
    ) -> asyncio.Future[T]:
        """`_submit` for a caller on an event loop: an asyncio future the writer settles
        after the commit, together with the rest of its batch (see `LoopSlot`). If the
        caller is cancelled before the writer takes the request, nothing is written."""
        import asyncio

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        slot = LoopSlot(loop, waiter, self._settled)
        with self._lock:
            if self._closed:
                raise QueueError(f"could not {doing}: the queue is closed")
            self._requests.put(_Request(op, slot, doing, weight, durable, shortcut))
        return waiter

    def _call(self, op: Callable[[sqlite3.Connection], T], doing: str, weight: int = 0,
              durable: bool = True,
              shortcut: Callable[[sqlite3.Connection], T | None] | None = None) -> T:
        return self._submit(op, doing, weight, durable, shortcut).result()

    def _run_writer(self) -> None:
        stop = False
        while not stop:
            first = self._requests.get()
            if first is _STOP:
                break
            assert isinstance(first, _Request)
            batch, stop = self._gather(first)
            # A caller cancelled before we started (an asyncio task that went away) gets
            # nothing written: it never told its client the message was queued.
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if batch:
                self._execute_guarded(batch)
                hand_over(self._settled)
        with suppress(sqlite3.Error):
            self._wconn.close()

    def _gather(self, first: _Request[Any]) -> tuple[list[_Request[Any]], bool]:
        """`first` and what joins its batch (up to the caps): all that waits, and while all
        of it lingers, what comes within the linger; and whether to stop."""
        batch: list[_Request[Any]] = [first]
        size = first.weight
        linger = getattr(first.op, "linger", 0.0)
        until = time.monotonic() + linger
        while len(batch) < self._batch_limit and size < self._batch_bytes:
            try:
                left = until - time.monotonic() if linger else 0.0
                more = self._requests.get(left > 0, left)  # no wait when not lingering
            except stdqueue.Empty:
                break
            if more is _STOP:
                return batch, True
            assert isinstance(more, _Request)
            batch.append(more)
            size += more.weight
            linger = linger and getattr(more.op, "linger", 0.0)
        return batch, False

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
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                # The disk is full, and the WAL may be what fills it (it only shrinks when
                # a checkpoint empties it): ask for a truncating checkpoint, which gives the
                # space back as soon as there is room to copy the WAL into the database.
                self._storage_full = True
                self._checkpoint_wanted.set()
            exc = self._translate(exc, request.doing)
        request.future.set_exception(exc)

    def _execute(self, batch: list[_Request[Any]]) -> None:
        """Run the batch in one transaction, each request in its own savepoint so that one
        failing (a message too big for the disk left) does not fail the others; runs of
        `Joinable` requests of one class go in together first (`run_together`), and one by one
        if that fails."""
        conn = self._wconn
        batch = self._without_shortcuts(conn, batch)
        if not batch:
            return
        pending = batch
        together = True
        # No fsync for a batch that promises nothing (see the module's docstring): one
        # fewer per message delivered, and the write lock, which a sibling process's
        # enqueue may be waiting for, is held for less.
        relaxed = not any(r.durable for r in batch)
        if relaxed != self._relaxed:
            conn.execute(f"PRAGMA synchronous = {'NORMAL' if relaxed else 'FULL'}")
            self._relaxed = relaxed
        while pending:
            done: list[tuple[_Request[Any], Any, BaseException | None]] = []
            lost: tuple[_Request[Any], BaseException] | None = None
            again = False
            try:
                self._begin_write(conn)
                i = 0
                while i < len(pending) and lost is None:
                    end = i + 1
                    kind = type(pending[i].op)
                    if together and issubclass(kind, Joinable):
                        while end < len(pending) and type(pending[end].op) is kind:
                            end += 1
                    if end - i > 1:
                        run = pending[i:end]
                        values = self._run_together(conn, run, alone=len(run) == len(pending))
                        if values is not None:
                            done += [(r, v, None) for r, v in zip(run, values, strict=True)]
                            i = end
                            continue
                        if not conn.in_transaction:  # the failure took the transaction
                            again = True
                            break
                    for request in pending[i:end]:
                        lost = self._execute_one(conn, request, done, alone=len(pending) == 1)
                        if lost is not None:
                            break
                    i = end
                committed = lost is None and not again and conn.in_transaction
                if committed:  # not after a lone request's failure, rolled back
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
            self._commits += committed
            self._wal_growth += _PAGES_PER_COMMIT + sum(
                _PAGES_PER_REQUEST + request.weight // self._page_size for request, _, _ in done
            )
            if self._wal_growth >= _CHECKPOINT_PAGES or self._storage_full:
                # After a full disk, every commit asks until a TRUNCATE has emptied the
                # WAL: the first write that fits (space was freed) must not be followed
                # by others that fill the space again before the WAL gives its own back.
                self._wal_growth = 0
                self._checkpoint_wanted.set()
            for request, result, error in done:
                if error is None:
                    after = getattr(request.op, "after_commit", None)
                    try:
                        value = result if after is None else self._after_commit(
                            conn, after, result)
                    except Exception as exc:
                        self._fail(request, exc)
                        continue
                    self._committed_requests += 1
                    request.future.set_result(value)
                else:
                    self._fail(request, error)
            return

    def _after_commit(self, conn: sqlite3.Connection,
                      after: Callable[[sqlite3.Connection, Any], Any], value: Any) -> Any:
        """A request's reads that need no write lock, once its transaction has committed,
        in one read transaction (one snapshot). Every SQLite step gives the GIL up, and
        while this process's event loop is busy each waits to get it back: at one
        connection at a time a claim held the write lock about 1 ms with its reads."""
        conn.execute("BEGIN")
        try:
            return after(conn, value)
        finally:
            self._rollback()

    @staticmethod
    def _without_shortcuts(conn: sqlite3.Connection, batch: list[_Request[Any]]
                           ) -> list[_Request[Any]]:
        """Answer the requests whose shortcut has their answer; the others, to run."""
        rest: list[_Request[Any]] = []
        for request in batch:
            value = None
            if request.shortcut is not None:
                with suppress(sqlite3.Error):  # the transaction will meet it, and say so
                    value = request.shortcut(conn)
            if value is None:
                rest.append(request)
            else:
                request.future.set_result(value)
        return rest

    def _execute_one(
        self,
        conn: sqlite3.Connection,
        request: _Request[Any],
        done: list[tuple[_Request[Any], Any, BaseException | None]],
        alone: bool = False,
    ) -> tuple[_Request[Any], BaseException] | None:
        """Run one request in its own savepoint (`alone`: the transaction is, as in
        `_run_together`); the request and its error when that took the transaction."""
        if alone:
            try:
                value = request.op(conn)
            except Exception as exc:
                self._rollback()
                done.append((request, None, exc))
            else:
                done.append((request, value, None))
            return None
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

    def _run_together(
        self, conn: sqlite3.Connection, run: list[_Request[Any]], alone: bool = False
    ) -> list[Any] | None:
        """Several Joinable requests of one class in one go; None (and nothing written)
        if that failed.

        `alone`: the run is the whole transaction, and that is its savepoint: a failure
        rolls it all back (the batch then runs one by one). Two statements fewer, each a
        wait for the GIL (`_after_commit`), in the commonest transactions."""
        if alone:
            kind = cast(type[Joinable[Any]], type(run[0].op))
            try:
                return kind.run_together(conn, [cast(Joinable[Any], r.op) for r in run])
            except Exception:
                self._rollback()
                return None
        conn.execute("SAVEPOINT together")
        try:
            kind = cast(type[Joinable[Any]], type(run[0].op))
            values = kind.run_together(conn, [cast(Joinable[Any], r.op) for r in run])
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO together")
                conn.execute("RELEASE together")
            return None
        conn.execute("RELEASE together")
        return values

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
                    if self._storage_full:
                        # TRUNCATE also empties the WAL file (PASSIVE leaves it its size,
                        # for reuse); busy (a reader still in it) means: at the next failure.
                        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                        if not busy:
                            self._storage_full = False
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

    def close(self) -> None:
        """Finish every write already asked for, then close all connections. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            final = self._final_op()
            if final is not None:  # before the stop marker: it runs with the last batch
                self._requests.put(_Request(final, _future(), "finish", 0))
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


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None
