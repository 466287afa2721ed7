"""The engine under the PostgreSQL queue: connections, group commit, the node's heartbeat.

Group commit. With `synchronous_commit = on` a COMMIT returns once the WAL record is
flushed on the server (and on a synchronous standby, where one is configured), so a
message is durable when COMMIT returns, and only then does the session answer `250`.
One flush costs milliseconds; one per message would bound a node by the disk's flush
rate. As in the SQLite backend, one writer thread per node owns a connection, takes
every write that is waiting (up to a cap), runs them in ONE transaction, commits once,
and only then answers each caller: the sessions of a node that end DATA together share
one commit. Nodes commit independently; PostgreSQL groups their flushes in turn.

A write that fails on its own (an unknown recipient id) makes the batch roll back, and
each write of the batch then runs in a transaction of its own, so only that one fails.
When the connection breaks (the server restarts, the network fails) every write of the
batch fails with QueueError: the session answers `451 4.3.0`, never `250` for a message
whose commit was not confirmed; the next batch reconnects.

Everything else (claims, administration, reads) runs on a small pool of connections,
each call in its own transaction.

The node thread keeps one autocommit connection that LISTENs for work queued anywhere
in the cluster (wakes the delivery workers at once instead of at their next poll) and
every `heartbeat` seconds marks this node alive and takes back the claims of nodes whose
heartbeat is older than `stale` seconds: a killed node's work is due again within seconds,
never while its heartbeat goes on. Then it runs the queue's upkeep (folding the kept
counts' deltas, schema.py).
"""

from __future__ import annotations

import logging
import os
import queue as stdqueue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg_pool

from mailgate.queue import NotFound, QueueError, QueueFull, QueueUnavailable
from mailgate.queue.handover import LoopSlot, hand_over

if TYPE_CHECKING:
    import asyncio

__all__ = ["CHANNEL", "Engine", "describe"]

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]
log = logging.getLogger("mailgate.queue")

CHANNEL = "mailgate_work"  # NOTIFY'd when work is queued or made due now
_STOP = object()
_ACTIVE = "('queued', 'deferred')"


def describe(dsn: str) -> str:
    """Where a DSN points, for sentences: "host:port/dbname", never user or password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unreadable dsn)"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


def _reason(exc: BaseException, dsn: str) -> str:
    """psycopg's sentence, first line, with the DSN's password taken out should any
    message ever quote it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    with suppress(psycopg.ProgrammingError):
        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
        if password:
            text = text.replace(str(password), "***")
    return text


@dataclass(slots=True, eq=False)
class _Request:
    op: Callable[[Conn], Any]
    future: Future[Any] | LoopSlot[Any]
    doing: str


class Engine:
    """Connections to one database for one node; see the module docstring."""

    def __init__(self, dsn: str, *, node: str = "", heartbeat: float = 2.0,
                 stale: float = 10.0, batch_limit: int = 256,
                 prepare: Callable[[Conn, str], None] | None = None,
                 recover: Callable[[Conn, float], int] | None = None,
                 upkeep: Callable[[Conn], object] | None = None) -> None:
        self.dsn = dsn
        self.where = describe(dsn)
        self.node_name = node or socket.gethostname()
        self.node_id = secrets.token_hex(8)
        self.heartbeat = heartbeat
        self.stale = stale
        self._batch_limit = max(1, batch_limit)
        self._recover = recover
        self._upkeep = upkeep
        self._lock = threading.Lock()
        self._closed = False
        self._watchers: list[Callable[[], None]] = []
        self._requests: stdqueue.SimpleQueue[_Request | object] = stdqueue.SimpleQueue()
        self._settled: list[LoopSlot[Any]] = []  # the writer thread's, between batches
        self._wconn: Conn | None = None
        self.commits = 0
        self.committed_requests = 0
        self.alive_at = time.monotonic()  # last heartbeat that reached the database
        # The first connection says at once whether the database is there at all.
        try:
            first = self.connect()
        except QueueError:
            raise
        try:
            if prepare is not None:
                prepare(first, self.where)
        except psycopg.Error as exc:
            first.close()
            raise self.translate(exc, "open the queue") from exc
        except BaseException:
            first.close()
            raise
        self._wconn = first
        # The server process of the writer's connection: the NOTIFYs of this node's own
        # enqueues come from it, and the server already woke its workers for those.
        self._writer_pid = first.info.backend_pid
        self._pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            dsn, min_size=1, max_size=8, open=False, configure=self._configure,
            check=psycopg_pool.ConnectionPool.check_connection, timeout=30.0,
            reconnect_timeout=0, name=f"mailgate-{self.node_name}")
        self._pool.open(wait=False)
        self._writer = threading.Thread(target=self._run_writer, daemon=True,
                                        name=f"queue-writer {self.where}")
        self._writer.start()
        self._node_stop = threading.Event()
        self._node_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ connections

    @staticmethod
    def _configure(conn: Conn) -> None:
        # Durable at COMMIT whatever the server's or role's default says.
        conn.execute("SET synchronous_commit = on")
        conn.commit()

    def connect(self, autocommit: bool = False) -> Conn:
        """A new connection; QueueError naming the host (never the password) if none."""
        try:
            conn = psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=5,
                                   application_name=f"mailgate {self.node_name}")
        except psycopg.Error as exc:
            # Refused for good (a wrong password, no such database or role): waiting would
            # not help, so that is a plain QueueError; anything else may pass.
            refused = (exc.sqlstate or "")[:2] in ("28", "3D") or any(
                words in str(exc) for words in ("authentication failed", "does not exist",
                                                "no pg_hba.conf entry"))
            kind = QueueError if refused else QueueUnavailable
            raise kind(
                f"cannot reach the queue database at {self.where}: {_reason(exc, self.dsn)}"
            ) from exc
        try:
            if autocommit:
                conn.execute("SET synchronous_commit = on")
            else:
                self._configure(conn)
        except psycopg.Error as exc:
            conn.close()
            raise self.translate(exc, "open the queue") from exc
        return conn

    def translate(self, exc: BaseException, doing: str) -> QueueError:
        """A psycopg error as a sentence that says what failed and where."""
        if isinstance(exc, QueueError):
            return exc
        if isinstance(exc, psycopg.errors.DiskFull | psycopg.errors.OutOfMemory):
            return QueueFull(f"could not {doing}: the queue database at {self.where} is "
                             f"out of space ({_reason(exc, self.dsn)}); nothing already "
                             "queued was lost")
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError
                      | psycopg_pool.PoolTimeout):
            return QueueUnavailable(f"could not {doing}: the queue database at {self.where} "
                                    f"is unreachable ({_reason(exc, self.dsn)}); try again")
        return QueueError(f"could not {doing}: {_reason(exc, self.dsn)} ({self.where})")

    @contextmanager
    def _pooled(self, doing: str) -> Iterator[Conn]:
        with self._lock:
            if self._closed:
                raise QueueError(f"could not {doing}: the queue is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except (NotFound, QueueError):
            raise
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise self.translate(exc, doing) from exc

    def run(self, doing: str, fn: Callable[[Conn], T]) -> T:
        """`fn` on a pooled connection in one transaction (committed when it returns)."""
        with self._pooled(doing) as conn, conn.transaction():
            return fn(conn)

    # ------------------------------------------------------------------ group commit

    def submit(self, op: Callable[[Conn], T], doing: str) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise QueueError(f"could not {doing}: the queue is closed")
            self._requests.put(_Request(op, future, doing))
        return future

    def submit_async(self, op: Callable[[Conn], T], doing: str) -> asyncio.Future[T]:
        """`submit` for a caller on an event loop: an asyncio future the writer settles
        with the rest of its batch, one call into the loop for all (`hand_over`), not a
        concurrent Future wrapped for asyncio each."""
        import asyncio

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise QueueError(f"could not {doing}: the queue is closed")
            self._requests.put(_Request(op, LoopSlot(loop, waiter, self._settled), doing))
        return waiter

    def call(self, op: Callable[[Conn], T], doing: str) -> T:
        return self.submit(op, doing).result()

    def _run_writer(self) -> None:
        stop = False
        while not stop:
            first = self._requests.get()
            if first is _STOP:
                break
            assert isinstance(first, _Request)
            batch = [first]
            while len(batch) < self._batch_limit:
                try:
                    more = self._requests.get_nowait()
                except stdqueue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                assert isinstance(more, _Request)
                batch.append(more)
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if batch:
                try:
                    self._execute(batch)
                except Exception as exc:  # a bug fails the callers, never the writer
                    self._drop_writer()
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(self.translate(exc, r.doing))
                hand_over(self._settled)
        self._drop_writer()

    def _drop_writer(self) -> None:
        if self._wconn is not None:
            with suppress(Exception):
                self._wconn.close()
            self._wconn = None

    def _writer_conn(self) -> Conn:
        if self._wconn is None or self._wconn.closed or self._wconn.broken:
            self._drop_writer()
            self._wconn = self.connect()
            self._writer_pid = self._wconn.info.backend_pid
        return self._wconn

    def _execute(self, batch: list[_Request]) -> None:
        try:
            conn = self._writer_conn()
        except QueueError as exc:
            for r in batch:
                r.future.set_exception(QueueUnavailable(f"could not {r.doing}: {exc}"))
            time.sleep(0.2)  # the database is down: do not spin on the next request
            return
        values: list[Any] = []
        try:
            with conn.pipeline():
                # Two-step writes send their statements first, all of them in one go,
                # and read the answers after: one round trip for the lot. Those whose
                # kind has `start_all` (the enqueues) send one statement for all of them.
                groups: dict[Any, list[Any]] = {}
                for r in batch:
                    start_all = getattr(type(r.op), "start_all", None)
                    if start_all is not None:
                        groups.setdefault(start_all, []).append(r.op)
                        continue
                    start = getattr(r.op, "start", None)
                    if start is not None:
                        start(conn)
                for start_all, ops in groups.items():
                    start_all(conn, ops)
                for r in batch:
                    finish = getattr(r.op, "finish", None)
                    values.append(finish(conn) if finish is not None else r.op(conn))
                # Three-step writes (the records) end with one `settle` for all of the
                # batch's ops of their kind: a few statements for the lot.
                settles: dict[Any, list[Any]] = {}
                for r in batch:
                    settle = getattr(type(r.op), "settle", None)
                    if settle is not None:
                        settles.setdefault(settle, []).append(r.op)
                for settle, ops in settles.items():
                    settle(conn, ops)
            conn.commit()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # The connection broke: whether the commit happened is unknown, so nobody
            # is told it did (a client then sends again: at worst a duplicate).
            self._drop_writer()
            for r in batch:
                r.future.set_exception(self.translate(exc, r.doing))
            return
        except Exception:
            with suppress(psycopg.Error):
                conn.rollback()
            if len(batch) > 1:
                for r in batch:
                    self._execute_alone(r)
                return
            self._execute_alone(batch[0], again=False)
            return
        self.commits += 1
        self.committed_requests += len(batch)
        for r, value in zip(batch, values, strict=True):
            r.future.set_result(value)

    def _execute_alone(self, r: _Request, again: bool = True) -> None:
        try:
            conn = self._writer_conn()
            value = r.op(conn)
            conn.commit()
        except Exception as exc:
            if self._wconn is not None and not self._wconn.broken:
                with suppress(psycopg.Error):
                    self._wconn.rollback()
            else:
                self._drop_writer()
            r.future.set_exception(self.translate(exc, r.doing)
                                   if isinstance(exc, psycopg.Error) else exc)
            return
        self.commits += 1
        self.committed_requests += 1
        r.future.set_result(value)

    # ------------------------------------------------------------------ the node

    def watch(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._watchers.append(wake)
        self.start_node()

    def start_node(self) -> None:
        """Register this node and start its thread (heartbeat, LISTEN) once."""
        with self._lock:
            if self._node_thread is not None or self._closed:
                return
            self._node_thread = threading.Thread(target=self._run_node, daemon=True,
                                                 name=f"queue-node {self.node_name}")
        self.run("register the node", self.register)
        self.alive_at = time.monotonic()
        self._node_thread.start()

    def register(self, conn: Conn) -> None:
        conn.execute(
            "INSERT INTO nodes (id, name, host, pid) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            (self.node_id, self.node_name, socket.gethostname(), os.getpid()))

    def _run_node(self) -> None:
        conn: Conn | None = None
        delay = 0.5
        next_beat = 0.0
        while not self._node_stop.is_set():
            try:
                if conn is None:
                    conn = self.connect(autocommit=True)
                    conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    next_beat = 0.0
                    self._wake_all()  # work may have come while we were away
                now = time.monotonic()
                if now >= next_beat:
                    self._beat(conn)
                    next_beat = now + self.heartbeat
                timeout = max(0.05, min(next_beat - time.monotonic(), 1.0))
                woken = False
                for note in conn.notifies(timeout=timeout, stop_after=1):
                    woken = woken or note.pid != self._writer_pid
                if woken:
                    self._wake_all()
            except (QueueError, psycopg.Error) as exc:
                if conn is not None:
                    with suppress(Exception):
                        conn.close()
                    conn = None
                log.warning("queue node %s: lost the queue database (%s); trying again "
                            "in %g s", self.node_name, _reason(exc, self.dsn), delay)
                self._node_stop.wait(delay)
                delay = min(delay * 2, 10.0)
        if conn is not None:
            with suppress(Exception):
                conn.close()

    def _beat(self, conn: Conn) -> None:
        with conn.transaction():
            updated = conn.execute("UPDATE nodes SET heartbeat_at = now() WHERE id = %s",
                                   (self.node_id,)).rowcount
            if not updated:
                # Declared dead while away (its claims were taken back): a new start.
                self.register(conn)
        self.alive_at = time.monotonic()
        if self._recover is not None:
            with conn.transaction():
                back = self._recover(conn, self.stale)
            if back:
                log.warning("queue: took back %d recipient(s) claimed by node(s) whose "
                            "heartbeat stopped", back)
                self._wake_all()
        if self._upkeep is not None:
            with conn.transaction():
                self._upkeep(conn)

    def healthy(self) -> bool:
        """Whether this node's heartbeat reached the database lately: a node whose own
        heartbeat is stale may have been declared dead, so it takes no new work."""
        return self._node_thread is None or (
            time.monotonic() - self.alive_at < self.stale / 2)

    def _wake_all(self) -> None:
        with self._lock:
            watchers = list(self._watchers)
        for wake in watchers:
            with suppress(Exception):
                wake()

    # ------------------------------------------------------------------ closing

    def close(self, final: Callable[[Conn], object] | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if final is not None:
                self._requests.put(_Request(final, Future(), "finish"))
            self._requests.put(_STOP)
        self._writer.join()
        self._node_stop.set()
        if self._node_thread is not None:
            self._node_thread.join()
        self._pool.close()
