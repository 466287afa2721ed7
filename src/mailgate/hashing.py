"""Password checks (scrypt) in their own small pool of threads.

A password check costs tens of milliseconds of CPU and 16 MiB on purpose. Run in the
event loop's default executor (`asyncio.to_thread`), a burst of logins took every thread
that local delivery needs and stalled it for seconds. Here at most `WORKERS` checks run
at once, in threads named `mailgate-hash-N`, and whatever else uses the default executor
keeps going. The web login and SMTP AUTH both use `check`.

The pool is made on first use, per process: a forked worker makes its own (threads do
not survive `fork`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["WORKERS", "check"]

WORKERS = 2  # password checks at once, per process

T = TypeVar("T")


class _Pool:
    """The process's password pool, made on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None

    def get(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.executor is None:
                self.executor = ThreadPoolExecutor(max_workers=WORKERS,
                                                   thread_name_prefix="mailgate-hash")
            return self.executor

    def forget(self) -> None:
        """In a forked child: the parent's threads are not there, make a new pool."""
        self.lock, self.executor = threading.Lock(), None


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.forget)


async def check(fn: Callable[..., T], *args: object) -> T:
    """`fn(*args)` (a slow password check) in the password pool; waits its turn."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_POOL.get(), functools.partial(fn, *args))
