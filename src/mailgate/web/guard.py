"""Connection limits for the web port, in front of uvicorn's HTTP protocol.

uvicorn accepts every connection: its `limit_concurrency` answers 503 only to requests,
and a connection that never sends one is kept open for ever. So one address could hold
every descriptor of the process. `Guard` wraps uvicorn's protocol (`uvicorn.Config(http=
Guard.factory(...))`) and, at accept:

- refuses a connection beyond `MAX_CONNECTIONS_PER_IP` from one address, or beyond
  `MAX_CONNECTIONS` in all, with a short 503 and a close, and logs it;
- closes a connection whose first request head has not arrived within `HEAD_TIMEOUT`.

Between requests uvicorn closes an idle connection after `KEEP_ALIVE_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mailgate.server.admission import Local
from mailgate.web.security import SECURITY_HEADERS

__all__ = ["HEAD_TIMEOUT", "KEEP_ALIVE_TIMEOUT", "MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_IP",
           "Counter", "Guard"]

log = logging.getLogger("mailgate.web")

MAX_CONNECTIONS = 256  # open web connections in all; a browser uses about 6 per site ...
MAX_CONNECTIONS_PER_IP = 16  # ... so this leaves room for a few behind one NAT
HEAD_TIMEOUT = 10.0  # seconds from accept to the end of the first request's head
KEEP_ALIVE_TIMEOUT = 5  # seconds an idle keep-alive connection is kept (uvicorn)


def _busy(text: str) -> bytes:
    body = text.encode() + b"\n"
    head = [b"HTTP/1.1 503 Service Unavailable", b"Content-Type: text/plain; charset=utf-8",
            b"Content-Length: " + str(len(body)).encode(), b"Connection: close",
            b"Retry-After: 10", *(k + b": " + v for k, v in SECURITY_HEADERS)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


TOO_MANY = _busy("Too many connections to this server; try again later.")
TOO_MANY_FROM_IP = _busy("Too many connections from your address; try again later.")


class Counter:
    """Open web connections, in all and per client address: the SMTP listener's
    `admission.Local` count, answered with the 503 to send."""

    def __init__(self, limit: int = MAX_CONNECTIONS,
                 per_ip: int = MAX_CONNECTIONS_PER_IP) -> None:
        self.count = Local(limit, per_ip)

    @property
    def open(self) -> int:
        return self.count.open

    def admit(self, ip: str) -> bytes | None:
        """None when the connection may stay (and is counted), else the 503 to send."""
        why = self.count.admit(ip)
        if why is None:
            return None
        return TOO_MANY_FROM_IP if why == "per_ip" else TOO_MANY

    def release(self, ip: str) -> None:
        self.count.leave(ip)


class Guard(asyncio.Protocol):
    """One web connection: admitted or refused here, then served by uvicorn's protocol."""

    def __init__(self, inner: asyncio.Protocol, counter: Counter,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.inner, self.counter, self.loop = inner, counter, loop
        self.ip: str | None = None  # None: refused (or not yet admitted)
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""  # the last 3 bytes of the first request head so far

    @classmethod
    def factory(cls, protocol: Callable[..., asyncio.Protocol],
                counter: Counter) -> Callable[..., asyncio.Protocol]:
        """What uvicorn.Config(http=...) takes: it calls it as it would its protocol."""

        def make(**kwargs: Any) -> asyncio.Protocol:
            loop = kwargs.get("_loop") or asyncio.get_running_loop()
            return cls(protocol(**kwargs), counter, loop)

        return make

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        refusal = self.counter.admit(ip)
        if refusal is not None:
            log.info("web: refused connection from [%s]: %s", ip,
                     refusal.rpartition(b"\r\n\r\n")[2].decode().strip())
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(refusal)
            transport.close()
            return
        self.ip, self.transport = ip, transport
        self.timer = self.loop.call_later(HEAD_TIMEOUT, self._too_slow)
        self.inner.connection_made(transport)

    def _too_slow(self) -> None:
        self.timer = None
        if self.transport is not None and not self.transport.is_closing():
            log.info("web: closed connection from [%s]: no request within %g s",
                     self.ip, HEAD_TIMEOUT)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.ip is None:
            return
        if self.timer is not None:
            seen = self.tail + data
            if b"\r\n\r\n" in seen:
                self.timer.cancel()
                self.timer, self.tail = None, b""
            else:
                self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.ip is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ip is None:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.counter.release(self.ip)
        self.ip = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.ip is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.ip is not None:
            self.inner.resume_writing()
