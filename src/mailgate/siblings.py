"""What the worker processes of one `mailgate serve` share (`[server] workers = N`).

Each worker is a process with its own event loop; without this module each would keep
the server's limits for itself, and a client would get N times its share. `Board` is a
piece of shared memory that `serve.run` makes before it forks the workers; every worker
keeps there what must hold for the server as a whole:

- connection admission: `limits.connections` and `limits.connections_per_ip` count the
  connections of every worker, exactly (`admit` / `leave`, under the board's lock);
- connection slots per destination: `delivery.concurrency_per_destination` is the
  server's in all, as a cluster's is on PostgreSQL (`take_slot` / `give_slot`, the
  shape of `Queue.take_slot`);
- AUTH failure counts: each worker adds its own (in buckets of a minute) and reads the
  others' (`share_counts`, the shape of `Queue.share_counts`), so a client that failed
  too often is refused by every worker, within the second or so the sharing takes.

How: `os.memfd_create` and one MAP_SHARED mmap; a lock with `fcntl.lockf` on the same
descriptor (POSIX record locks belong to a process, so they exclude the forked workers
from each other, and the kernel lets go of one whose holder dies: no worker that crashes
at the wrong moment can stop the others), with a `threading.Lock` in front of it for the
threads of one process, which lockf does not separate. A table keeps fixed-size keys
(16 bytes of BLAKE2b of the name) apart from their counts, as a hash table: a key's
row is found from its own bytes in a probe or two, and by `mmap.find` at C speed should
a run of taken rows be long (a scan of the whole table at every connection cost the
listener a sixth of its time with `limits.connections` at 20,000). Every count has one
column per worker, so when a worker ends (a crash, kill -9), `forget` (called by the
parent) drops what it held and its connections and slots come free.

`Link` carries the rest between the first worker (the one that delivers and serves the
web page) and each other one (which take mail in) over a socketpair made before the
fork: "wake" (an admin made work due) and "report" (the sibling's counters, metrics and
listening sockets, which the first one adds to its own). A `Doorbell` (a pipe) tells the
first worker that the others queued mail.

This module imports nothing of mailgate (a leaf).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["Board", "Doorbell", "Link", "SharedCounts"]

KEY = 16
ZERO = bytes(KEY)  # a free row: a probe stops here
PROBES = 32  # rows a lookup tries one by one before it asks mmap.find
INT = 8  # bytes of one count (signed 64-bit)
BUCKET = 60  # seconds of AUTH failures in one bucket
AUTH_ROWS = 8192  # AUTH failure keys (addresses and user names) the board holds at once


def digest(kind: str, key: str) -> bytes:
    """The table key of (kind, key); never ZERO, which marks a free row."""
    raw = hashlib.blake2b(f"{kind}\0{key}".encode("utf-8", "surrogateescape"),
                          digest_size=KEY).digest()
    return raw if raw != ZERO else b"\x01" + raw[1:]


class _Table:
    """`rows` keys of KEY bytes, then for each row `cols` signed 64-bit counts."""

    def __init__(self, mm: mmap.mmap, offset: int, rows: int, cols: int) -> None:
        self.mm, self.k0, self.rows, self.cols = mm, offset, rows, cols
        self.k1 = offset + rows * KEY
        self.size = rows * KEY + rows * cols * INT
        self.counts = memoryview(mm)[self.k1:self.k1 + rows * cols * INT].cast("q")

    def _key(self, row: int) -> bytes:
        at = self.k0 + row * KEY
        return self.mm[at:at + KEY]

    def _scan(self, key: bytes, row: int) -> int:
        """The first row from `row` on, wrapping round, that holds `key`, or -1 (a match
        counts only at a row's start)."""
        for lo, hi in ((row, self.rows), (0, row)):
            start, end = self.k0 + lo * KEY, self.k0 + hi * KEY
            while (at := self.mm.find(key, start, end)) >= 0:
                if (at - self.k0) % KEY == 0:
                    return (at - self.k0) // KEY
                start = at + 1
        return -1

    def _home(self, key: bytes) -> int:
        return int.from_bytes(key[:8], "little") % self.rows

    def _probe(self, key: bytes) -> tuple[int, bool]:
        """Where the probe for `key` ends: the row holding it (and True), or the free
        row where it would go (and False); (-1, False) when the table is full. Linear
        probing from the key's home row: no free row lies between a key and its home
        (`free` keeps it so)."""
        row = self._home(key)
        for _ in range(min(PROBES, self.rows)):
            k = self._key(row)
            if k == key:
                return row, True
            if k == ZERO:
                return row, False
            row = row + 1 if row + 1 < self.rows else 0
        # A long run of taken rows: the rest at C speed. The key, if held, comes before
        # the first free row.
        at, zero = self._scan(key, row), self._scan(ZERO, row)
        if at >= 0 and (zero < 0 or (at - row) % self.rows < (zero - row) % self.rows):
            return at, True
        return zero, False

    def find(self, key: bytes) -> int:
        """The row of `key`, or -1."""
        row, found = self._probe(key)
        return row if found else -1

    def claim(self, key: bytes) -> int:
        """A free row given to `key`, which the table does not hold (`find` said so),
        its counts zero; -1 when the table is full."""
        row, found = self._probe(key)
        assert not found, "claim of a key the table holds"
        if row >= 0:
            self.mm[self.k0 + row * KEY:self.k0 + (row + 1) * KEY] = key
            base = row * self.cols
            for i in range(base, base + self.cols):
                self.counts[i] = 0
        return row

    def free(self, row: int) -> None:
        """Empty `row`, moving back into it the keys further on that a probe would no
        longer reach across a free row (deletion from a linear-probing table without
        markers). A key's row may change: hold keys, not rows, across a `free`."""
        hole, j, cols = row, row, self.cols
        for _ in range(self.rows - 1):
            j = j + 1 if j + 1 < self.rows else 0
            k = self._key(j)
            if k == ZERO:
                break
            # It stays when its home lies in (hole, j], cyclically: the probe from there
            # reaches j without passing the hole.
            home = self._home(k)
            if (hole < home <= j) if hole <= j else (home > hole or home <= j):
                continue
            self.mm[self.k0 + hole * KEY:self.k0 + (hole + 1) * KEY] = k
            self.counts[hole * cols:(hole + 1) * cols] = self.counts[j * cols:(j + 1) * cols]
            hole = j
        self.mm[self.k0 + hole * KEY:self.k0 + (hole + 1) * KEY] = ZERO

    def used(self) -> Iterator[int]:
        for row in range(self.rows):
            if self._key(row) != ZERO:
                yield row

    def held(self) -> list[bytes]:
        """The keys held now (rows move when one is freed: go by these)."""
        return [self._key(row) for row in self.used()]

    def total(self, row: int) -> int:
        base = row * self.cols
        return sum(self.counts[base:base + self.cols])

    def take(self, key: bytes, col: int, limit: int) -> bool:
        """One more for `key` in column `col`, unless its total is `limit` already or
        the table is full (then False and nothing counted)."""
        row = self.find(key)
        if row >= 0 and self.total(row) >= limit:
            return False
        if row < 0 and (row := self.claim(key)) < 0:
            return False
        self.counts[row * self.cols + col] += 1
        return True

    def give(self, key: bytes, col: int) -> bool:
        """One fewer for `key` in column `col`, its row freed at a total of zero; False
        (nothing changed) when that column held none."""
        row = self.find(key)
        at = row * self.cols + col
        if row < 0 or self.counts[at] <= 0:
            return False
        self.counts[at] -= 1
        if self.total(row) <= 0:
            self.free(row)
        return True


class SharedCounts:
    """The other workers' AUTH failures in the window, by (kind, key): what
    `Board.share_counts` returns and `Policy.others` asks with `get`."""

    def __init__(self, by_digest: dict[bytes, int]) -> None:
        self._by = by_digest

    def get(self, key: tuple[str, str], default: int = 0) -> int:
        return self._by.get(digest(*key), default)

    def __len__(self) -> int:
        return len(self._by)


class Board:
    """Shared memory for `workers` processes; see the module's docstring. Made in the
    parent before the fork; each worker calls `attach(index)` first."""

    def __init__(self, workers: int, connections: int, slots: int,
                 window: float = 600.0) -> None:
        self.workers = workers
        self.me = -1
        self.buckets = int(window // BUCKET) + 2  # the window's, and the one filling
        fd = os.memfd_create("mailgate-siblings", os.MFD_CLOEXEC)
        try:
            n = workers
            # Twice the rows that can be taken at once: probes stay short.
            conn_rows, slot_rows = 2 * connections + 1, 2 * slots + 1
            sizes = [n * INT,  # open connections, by worker
                     conn_rows * (KEY + n * INT),  # admission, by address
                     slot_rows * (KEY + n * INT),  # connection slots, by destination
                     AUTH_ROWS * (KEY + n * self.buckets * 2 * INT)]  # AUTH failures
            os.ftruncate(fd, sum(sizes))
            self.mm = mmap.mmap(fd, sum(sizes), mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.open = memoryview(self.mm)[:sizes[0]].cast("q")
        at = sizes[0]
        self.conns = _Table(self.mm, at, conn_rows, n)
        at += sizes[1]
        self.slots = _Table(self.mm, at, slot_rows, n)
        at += sizes[2]
        self.auth = _Table(self.mm, at, AUTH_ROWS, n * self.buckets * 2)
        self._thread_lock = threading.Lock()

    def attach(self, index: int) -> None:
        """This process is worker `index` (0 ... workers - 1)."""
        self.me = index

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    # --- connections --------------------------------------------------------------

    def admit(self, ip: str, limit: int, per_ip: int) -> str | None:
        """Count a new connection from `ip`, or say why not: "limit" (the server has
        `limit` open) or "per_ip" (this address has `per_ip`)."""
        with self._lock():
            if sum(self.open) >= limit:
                return "limit"
            # The table has more rows than `limit` and fewer than `limit` are open, so
            # it is never full here: a refusal is this address's count.
            if not self.conns.take(digest("ip", ip), self.me, per_ip):
                return "per_ip"
            self.open[self.me] += 1
        return None

    def leave(self, ip: str) -> None:
        """A connection `admit` counted has ended."""
        with self._lock():
            if self.conns.give(digest("ip", ip), self.me):
                self.open[self.me] -= 1

    def open_connections(self) -> int:
        """The server's open SMTP connections, every worker's."""
        return sum(self.open)

    # --- connection slots per destination ------------------------------------------

    def take_slot(self, key: str, limit: int, lease: float = 0.0) -> str | None:
        """One of `limit` slots for destination `key` across the workers; its token, or
        None while all are taken (or the table is full). `lease` is not needed: a
        worker that ends has its slots dropped by `forget`."""
        with self._lock():
            return key if self.slots.take(digest("slot", key), self.me, limit) else None

    def give_slot(self, token: str) -> None:
        with self._lock():
            self.slots.give(digest("slot", token), self.me)

    def slots_held(self, key: str) -> int:
        t = self.slots
        row = t.find(digest("slot", key))
        return t.total(row) if row >= 0 else 0

    # --- AUTH failures ----------------------------------------------------------------

    def share_counts(self, deltas: Mapping[tuple[str, str], int], window: float,
                     now: float | None = None) -> SharedCounts:
        """Add this worker's counts (AUTH failures by ("ip", address) and ("user",
        name); releases are negative) to the board, and return every other worker's
        within the last `window` seconds. When the board is full (AUTH_ROWS keys live
        in the window), a new key's count stays this worker's own."""
        now = time.time() if now is None else now
        bucket = int(now // BUCKET)
        oldest = int((now - window) // BUCKET) + 1
        t, nb = self.auth, self.buckets
        mine = self.me * nb * 2
        with self._lock():
            for (kind, key), n in deltas.items():
                if not n:
                    continue
                d = digest(kind, key)
                row = t.find(d)
                if row < 0 and n > 0:
                    row = t.claim(d)
                    if row < 0:
                        self._expire(oldest)
                        row = t.claim(d)
                if row < 0:
                    continue
                at = row * t.cols + mine + (bucket % nb) * 2
                if t.counts[at] != bucket:
                    t.counts[at], t.counts[at + 1] = bucket, 0
                t.counts[at + 1] += n
            out: dict[bytes, int] = {}
            for row in t.used():
                base = row * t.cols
                total = 0
                for worker in range(self.workers):
                    if worker == self.me:
                        continue
                    at = base + worker * nb * 2
                    for i in range(at, at + nb * 2, 2):
                        if t.counts[i] >= oldest:
                            total += t.counts[i + 1]
                if total > 0:
                    at = t.k0 + row * KEY
                    out[bytes(self.mm[at:at + KEY])] = total
        return SharedCounts(out)

    def _expire(self, oldest: int) -> None:
        """Free every AUTH row whose buckets all fell out of the window (lock held)."""
        t = self.auth
        for key in t.held():
            row = t.find(key)
            base = row * t.cols
            if all(t.counts[i] < oldest or t.counts[i + 1] == 0
                   for i in range(base, base + t.cols, 2)):
                t.free(row)

    # --- the parent -----------------------------------------------------------------

    def forget(self, worker: int) -> None:
        """Worker `worker` has ended: its connections, slots and AUTH counts go."""
        with self._lock():
            self.open[worker] = 0
            for t in (self.conns, self.slots):
                for key in t.held():
                    row = t.find(key)
                    t.counts[row * t.cols + worker] = 0
                    if t.total(row) <= 0:
                        t.free(row)
            t = self.auth
            width = self.buckets * 2
            for row in t.used():
                base = row * t.cols + worker * width
                for i in range(base, base + width):
                    t.counts[i] = 0


class Link:
    """One end of the socketpair between the first worker and a sibling.

    The first worker calls `ask("report")` (an answer: one JSON line) and `tell("wake")`
    (none); the sibling runs `answer(handlers)`. Each question carries a number its
    answer repeats, so an answer that came too late is told from the next one's and
    skipped. A sibling that ended answers nothing and is left out."""

    TIMEOUT = 2.0

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._busy: asyncio.Lock | None = None
        self._asked = 0

    @staticmethod
    def pairs(n: int) -> list[tuple[Link, Link]]:
        return [(Link(a), Link(b)) for a, b in (socket.socketpair() for _ in range(n))]

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
        else:
            self.sock.close()

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(sock=self.sock, limit=1 << 24)
        return self._streams

    async def tell(self, what: str) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            _, writer = await self._open()
            writer.write(f"{what} 0\n".encode())
            await writer.drain()

    async def ask(self, what: str) -> Any:
        """The sibling's answer, or None when it gives none within TIMEOUT."""
        if self._busy is None:
            self._busy = asyncio.Lock()
        async with self._busy:
            self._asked += 1
            number = self._asked
            try:
                reader, writer = await self._open()
                writer.write(f"{what} {number}\n".encode())
                await writer.drain()
                async with asyncio.timeout(self.TIMEOUT):
                    while line := await reader.readline():
                        answer = json.loads(line)
                        if answer.get("number") == number:
                            return answer.get("answer")
            except (OSError, ConnectionError, TimeoutError, ValueError, AttributeError):
                pass
            return None

    async def answer(self, handlers: Mapping[str, Callable[[], Any]]) -> None:
        """Serve the first worker's requests until it goes (the sibling's side)."""
        reader, writer = await self._open()
        try:
            while line := await reader.readline():
                what, _, number = line.decode("ascii", "replace").strip().partition(" ")
                handler = handlers.get(what)
                if handler is None:
                    continue
                result = handler()
                if number not in ("", "0"):
                    writer.write(json.dumps({"number": int(number), "answer": result},
                                            default=str).encode() + b"\n")
                    await writer.drain()
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()


class Doorbell:
    """A pipe made before the fork: the workers that take mail in `ring` it after each
    message they queue, and the worker that delivers wakes its engines when it can read
    (`answer`). Non-blocking both ways: a full pipe means a wake is pending already, so
    a ring that does not fit is dropped.

    After each wake the deliverer stops listening for `REST` seconds. While mail flows,
    every message rang, and each ring woke the deliverer's loop and made the ringer's
    write pay for waking another process, for engines that were gathering mail anyway
    (their GATHER is 20 ms). A ring in the rest stays in the pipe and wakes them when it
    ends: late by at most REST, never lost. Measured one connection at a time (2 KiB):
    +6 % end to end over four alternating rounds, the deliverer's CPU -7 %."""

    REST = 0.005

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def answer(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        """Call `wake` on `loop` whenever the bell rang, at most once every REST."""
        def rung() -> None:
            self.drain()
            wake()
            loop.remove_reader(self.read_fd)
            loop.call_later(self.REST, listen)

        def listen() -> None:
            if not loop.is_closed():
                loop.add_reader(self.read_fd, rung)

        listen()

    def ring(self) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.write_fd, b"!")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read_fd, 4096):
                pass
