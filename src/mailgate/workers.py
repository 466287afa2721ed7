"""`[server] workers = N`: N processes serving one server, and what they share.

The first worker delivers (local, LMTP, SMTP out) and serves the web page; the other
N - 1 take mail in, each on listening sockets of its own (SO_REUSEPORT, so the kernel
spreads the connections), and ring the first's `Doorbell` after each message they
queue. Measured against N workers that each did both, the split was faster in every
case: delivery never holds up a client waiting for its reply, and the deliverer claims
the mail of all the listeners together, in larger batches.

`fork` starts the workers (each runs `serve` with its own event loop) and waits for
them, forwarding the signals it gets.
Before the fork it makes what they share (siblings.py): a `Board` in shared memory
for the limits that must hold for the server as a whole, and a `Link` from the first
worker (the one that serves the web page) to each of the others. When a worker ends,
the parent drops what it held on the board, so its connections and slots come free.

Lives between the faces and `serve`: it imports only the leaf `siblings`, and `serve`
hands it the function that runs one worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailgate.siblings import Board, Doorbell, Link

__all__ = ["Siblings", "fork"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
log = logging.getLogger("mailgate")


@dataclass
class Siblings:
    """What worker `index` of `count` shares with the others.

    The first worker delivers and serves the web page; the others listen (`delivers`,
    `listens`). `links`: for the first worker, one to each other worker; for the
    others, the one to the first. `doorbell`: rung by the listeners, read by the first.
    `shares_queue`: the queue is SQLite, whose `take_slot` and
    `share_counts` see one process only, so connection slots and AUTH failure counts
    go through the board; PostgreSQL shares them between processes already."""

    index: int
    count: int
    board: Board
    links: list[Link]
    shares_queue: bool
    doorbell: Doorbell
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def delivers(self) -> bool:
        return self.first

    @property
    def listens(self) -> bool:
        return not self.first

    async def reports(self) -> list[dict[str, Any]]:
        """Each other worker's report (first worker only); none from one that ended."""
        if not self.first:
            return []
        answers = await asyncio.gather(*(link.ask("report") for link in self.links))
        return [a for a in answers if isinstance(a, dict)]

    def wake(self) -> None:
        """Tell the other workers that work is due (an admin's retry or release)."""
        if not self.first:
            return
        for link in self.links:
            task = asyncio.get_running_loop().create_task(link.tell("wake"))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def answer(self, wake: Callable[[], None],
                     report: Callable[[], dict[str, Any]]) -> None:
        """Answer the first worker until it goes (every other worker runs this)."""
        if not self.first and self.links:
            await self.links[0].answer({"wake": wake, "report": report})


def fork(board: Board, shares_queue: bool, run_worker: Callable[[Siblings], int],
         in_parent: Callable[[], None] = lambda: None) -> int:
    """Start `board.workers` processes, each `run_worker(siblings)` (its return value is
    the process's exit status); then, in this process, `in_parent()` (close what only
    the workers need) and wait for them all. Returns the first non-zero exit status."""
    count = board.workers
    pairs = Link.pairs(count - 1)
    doorbell = Doorbell()
    children: dict[int, int] = {}
    parent = os.getpid()
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                _die_with_parent(parent)
                board.attach(index)
                mine = [a for a, _ in pairs] if index == 0 else [pairs[index - 1][1]]
                for a, b in pairs:
                    for link in (a, b):
                        if link not in mine:
                            link.sock.close()
                status = run_worker(Siblings(index, count, board, mine, shares_queue,
                                               doorbell))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        children[pid] = index
    for a, b in pairs:
        a.sock.close()
        b.sock.close()
    in_parent()

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its own copy
    status = 0
    while children:
        try:
            pid, st = os.wait()
        except ChildProcessError:
            break
        index = children.pop(pid, -1)
        if index < 0:
            continue  # a mailbox helper
        board.forget(index)  # its connections, slots and AUTH counts come free
        code = os.waitstatus_to_exitcode(st)
        code = 128 - code if code < 0 else code  # killed by signal -code, as a shell says
        status = status or code
        if not stopping:
            # A worker ended on its own (a crash, a fatal error it has said): the
            # server stops as a whole, with that worker's status, so that the
            # supervisor (systemd) restarts all of it rather than leave it serving
            # with fewer workers than configured and nobody told.
            how = f"killed by signal {code - 128}" if code > 128 else f"exit status {code}"
            log.error("worker %d (pid %d) ended on its own (%s): stopping the server",
                      index + 1, pid, how)
            status = status or 1
            forward(signal.SIGTERM, None)
    return status


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker when the process that forked it dies (even SIGKILLed),
    so no worker goes on serving, unsupervised, after its parent is gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took hold
        os.kill(os.getpid(), signal.SIGTERM)
