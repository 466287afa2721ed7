"""Idle SMTP connections kept for the next message to the same place (as Postfix's
connection cache, smtp_connection_cache_time_limit).

When a conversation has carried its messages, the delivery engine does not say QUIT at
once: the connection waits, idle, for up to `[delivery] connection_cache_time` seconds
(2 by default) for more mail to the same destination, MX host, address, port and TLS
level. Mail that comes one message at a time (a web application's, a mailing list's
trickle) then skips the TCP handshake, the greeting, EHLO, STARTTLS and AUTH, and the
QUIT, which cost more than the message itself. Before it carries anything, a kept
connection is checked with RSET (`transport.resume_client`): one the server closed or
timed out meanwhile is dropped and the message goes over a new one, never deferred for it.

Bounds: at most `per_key` idle connections per destination (its
`concurrency_per_destination`), `total` in all (the oldest is closed for a new one); no
connection is kept past `max_age` seconds after it opened (Postfix's
smtp_connection_reuse_time_limit, 300 s), nor once it has carried `max_messages` (the
engine's messages per connection, 100: some servers end a connection after so many).
`close()` says QUIT on every idle one (shutdown). `release` hears of every connection
closed here (the engine gives back the cluster connection slot it held).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

from mailgate.delivery.transport import Kept, quit_client

__all__ = ["ConnectionCache"]


class ConnectionCache:
    def __init__(self, idle_time: float, per_key: int, max_messages: int,
                 release: Callable[[Kept], Awaitable[None]] | None = None,
                 total: int = 100, max_age: float = 300.0) -> None:
        self.release = release  # told of each connection closed here, once QUIT is sent
        self.idle_time = idle_time
        self.per_key = per_key
        self.max_messages = max_messages
        self.total = total
        self.max_age = max_age
        self._by_key: dict[Hashable, list[Kept]] = {}
        # Every idle connection, oldest first: its key and the timer that closes it.
        self._idle: dict[Kept, tuple[Hashable, asyncio.TimerHandle]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.reused = 0  # connections taken again (for the stats and the tests)

    def __len__(self) -> int:
        return len(self._idle)

    def keep(self, key: Hashable, conn: Kept) -> bool:
        """Take `conn`, now idle, for later mail to `key`; False: the caller says QUIT."""
        loop = asyncio.get_running_loop()
        if (self.idle_time <= 0 or conn.writer.is_closing()
                or conn.messages >= self.max_messages
                or loop.time() - conn.opened >= self.max_age):
            return False
        kept = self._by_key.setdefault(key, [])
        if len(kept) >= self.per_key:
            return False
        if len(self._idle) >= self.total:
            self._drop(next(iter(self._idle)))
        kept.append(conn)
        self._idle[conn] = (key, loop.call_later(self.idle_time, self._drop, conn))
        return True

    def take(self, key: Hashable) -> Kept | None:
        """The most recently used idle connection for `key`, or None."""
        kept = self._by_key.get(key)
        while kept:
            conn = kept.pop()
            self._forget(conn)
            if conn.writer.is_closing() or conn.reader.at_eof():
                self._quit_later(conn)
                continue
            self.reused += 1
            return conn
        return None

    async def close(self) -> None:
        """QUIT every idle connection, and wait for those going to be closed."""
        for conn in list(self._idle):
            self._drop(conn)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _forget(self, conn: Kept) -> None:
        key, timer = self._idle.pop(conn)
        timer.cancel()
        kept = self._by_key.get(key)
        if kept is not None:
            if conn in kept:
                kept.remove(conn)
            if not kept:
                del self._by_key[key]

    async def _retire(self, conn: Kept) -> None:
        try:
            await quit_client(conn)
        finally:
            if self.release is not None:
                await self.release(conn)

    def _drop(self, conn: Kept) -> None:
        if conn in self._idle:
            self._forget(conn)
            self._quit_later(conn)

    def _quit_later(self, conn: Kept) -> None:
        task = asyncio.get_running_loop().create_task(self._retire(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
