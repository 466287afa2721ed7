"""asyncio listeners around the sans-I/O ServerSession.

One `SMTPConnection` (an asyncio.Protocol) per client: bytes in are fed to the session,
events are answered from the policy, replies are written back. Decisions that wait (DNS,
the queue's group commit, password hashing, the TLS handshake) pause reading until they
are done, so input stays bounded and pipelined commands keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from mailgate import metrics
from mailgate.codes.reply import Reply
from mailgate.config import Config, Listener
from mailgate.queue import NewMessage, NewRecipient, QueueFull, new_queue_id
from mailgate.server.policy import ConnectionInfo, Policy
from mailgate.smtp import replies
from mailgate.smtp.server import (
    NEED_DATA,
    AuthAttempt,
    ConnectionLost,
    Ehlo,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageData,
    MessageStart,
    Quit,
    RcptTo,
    Reset,
    ServerSession,
    SessionClosed,
    SessionConfig,
    StartTLS,
)

__all__ = ["SMTPServer"]

log = logging.getLogger("mailgate.smtpd")

TOO_MANY_CONNECTIONS = Reply.make(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_IP = Reply.make(421, "4.7.0", "Too many connections from your address")
QUEUE_FULL = Reply.make(452, "4.3.1", "Insufficient system storage, try again later")
QUEUE_ERROR = Reply.make(451, "4.3.0", "Local error in processing, try again later")
TLS_FAILED = Reply.make(454, "4.7.0", "TLS not available due to temporary reason")

Enqueue = Callable[[NewMessage], Awaitable[str]]

_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The RFC 5322 date of the Received header, formatted once per second."""
    global _date_cache  # noqa: PLW0603 - a one-entry cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


class _MetricsObserver:
    """Feeds every session's commands and replies to the process's metrics."""

    __slots__ = ()

    def command(self, verb: str) -> None:
        metrics.command(verb)

    def reply(self, code: int) -> None:
        metrics.reply_sent(code)


_OBSERVER = _MetricsObserver()


@dataclass
class Stats:
    """Counters the web page and metrics will read."""

    connections_total: int = 0
    connections_open: int = 0
    accepted: int = 0
    refused: int = 0
    replies: dict[int, int] = field(default_factory=dict)


class SMTPServer:
    """All listeners of one process, their connections, limits and shutdown."""

    def __init__(
        self,
        config: Config,
        policy: Policy,
        enqueue: Enqueue,
        tls_context: ssl.SSLContext | None,
        on_queued: Callable[[str, list[str]], None] | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.enqueue = enqueue
        self.tls_context = tls_context
        self.on_queued = on_queued
        self.stats = Stats()
        self.connections: set[SMTPConnection] = set()
        self.per_ip: dict[str, int] = {}
        self.servers: list[asyncio.Server] = []
        self.closing = False
        self._session_configs: dict[str, SessionConfig] = {}
        limits = config.limits
        for role in ("mx", "submission", "smtps"):
            self._session_configs[role] = SessionConfig(
                hostname=config.hostname,
                max_message_size=limits.message_size,
                max_recipients=limits.recipients,
                bare_newlines=config.policy.bare_newlines,
                starttls=tls_context is not None and role != "smtps",
                auth=policy.auth_offered(role),
                auth_requires_tls=True,
            )

    async def start(self, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.config.listen:
            ssl_ctx = self.tls_context if listener.role == "smtps" else None
            if listener.role == "smtps" and ssl_ctx is None:
                raise ValueError("an smtps listener needs a TLS certificate")
            server = await loop.create_server(
                self._factory(listener), host=listener.host, port=listener.port,
                ssl=ssl_ctx, reuse_address=True, reuse_port=reuse_port or None,
                backlog=1024, ssl_handshake_timeout=30.0 if ssl_ctx else None,
            )
            self.servers.append(server)

    def sockets(self) -> list[tuple[str, str, int]]:
        """(role, host, port) actually bound, in listener order (ports may be 0 in tests)."""
        out: list[tuple[str, str, int]] = []
        for listener, server in zip(self.config.listen, self.servers, strict=True):
            for sock in server.sockets:
                addr = sock.getsockname()
                out.append((listener.role, str(addr[0]), int(addr[1])))
        return out

    def _factory(self, listener: Listener) -> Callable[[], SMTPConnection]:
        def make() -> SMTPConnection:
            return SMTPConnection(self, listener.role)

        return make

    async def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting; 421 to idle clients at once, the rest after their message."""
        self.closing = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()


class SMTPConnection(asyncio.Protocol):
    """One client conversation."""

    def __init__(self, server: SMTPServer, role: str) -> None:
        self.server = server
        self.role = role
        self.transport: asyncio.Transport | None = None
        self.session = ServerSession(server._session_configs[role], tls_active=role == "smtps",
                                     observer=_OBSERVER)
        self.info = ConnectionInfo(role=role, ip="", port=0, tls=role == "smtps")
        self._waiting = False
        self._paused = False
        self._closed = False
        self._chunks: list[bytes] = []
        self._sender: MailFrom | None = None
        self._rcpts: list[RcptTo] = []
        self._pending_rcpt: RcptTo | None = None
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # While start_tls() runs, data_received is fed by the TLS layer: it may hand over
        # the client's first encrypted command (sent with its Finished, as GnuTLS does)
        # before start_tls() returns. Kept here and given to the session after the reset.
        self._tls_early: bytearray | None = None

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        srv = self.server
        peer = transport.get_extra_info("peername") or ("", 0)
        self.info.ip, self.info.port = str(peer[0]), int(peer[1])
        if self.info.tls:
            self._note_tls(transport)
        # No TCP_NODELAY here: asyncio and uvloop set it on every TCP transport already.
        srv.stats.connections_total += 1
        metrics.connection_opened()
        limits = srv.config.limits
        refusal = None
        if srv.closing:
            refusal = replies.SHUTDOWN
        elif len(srv.connections) >= limits.connections:
            refusal = TOO_MANY_CONNECTIONS
        elif srv.per_ip.get(self.info.ip, 0) >= limits.connections_per_ip:
            refusal = TOO_MANY_FROM_IP
        if refusal is not None:
            log.info("refused connection from [%s]: %s", self.info.ip, refusal)
            transport.write(refusal.to_bytes(enhanced=False))
            self._closed = True
            transport.close()
            metrics.connection_closed()
            return
        srv.connections.add(self)
        srv.per_ip[self.info.ip] = srv.per_ip.get(self.info.ip, 0) + 1
        srv.stats.connections_open = len(srv.connections)
        self.session.greet()
        self._flush()
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        self._last_activity = time.monotonic()
        if self._tls_early is not None:
            self._tls_early += data
            return
        self.session.receive_data(data)
        if not self._waiting:
            self._pump()
        elif self.session.buffered > 65536:
            self._pause()

    def eof_received(self) -> bool | None:
        self.session.receive_data(b"")
        if not self._waiting:
            self._pump()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        srv = self.server
        if self in srv.connections:
            metrics.connection_closed()
            srv.connections.discard(self)
            n = srv.per_ip.get(self.info.ip, 1) - 1
            if n:
                srv.per_ip[self.info.ip] = n
            else:
                srv.per_ip.pop(self.info.ip, None)
            srv.stats.connections_open = len(srv.connections)

    # --- timeouts and shutdown ----------------------------------------------------

    def _arm_timer(self) -> None:
        t = self.server.config.timeouts
        timeout = t.data_block if self.session.in_data else t.command
        self._timer = asyncio.get_running_loop().call_later(timeout, self._check_timeout)

    def _check_timeout(self) -> None:
        """Re-armed lazily: one timer per connection, not one per packet."""
        if self._closed:
            return
        t = self.server.config.timeouts
        timeout = t.data_block if self.session.in_data else t.command
        idle = time.monotonic() - max(self._last_activity, 0.0)
        if self._last_activity and idle < timeout:
            self._timer = asyncio.get_running_loop().call_later(timeout - idle,
                                                                 self._check_timeout)
            return
        if self._waiting:  # our own decision is slow (DNS): not the client's fault
            self._timer = asyncio.get_running_loop().call_later(timeout, self._check_timeout)
            return
        log.info("timeout from %s[%s]", self.info.helo or "unknown", self.info.ip)
        self.session.timeout()
        self._pump()

    def shutdown(self) -> None:
        self.session.shutdown()
        if not self._waiting:
            self._pump()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- the event pump -------------------------------------------------------------

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out and self.transport is not None and not self._closed:
            self.transport.write(out)
        if self.session.closed and not self._closed and self.transport is not None:
            self._closed = True
            self.transport.close()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self._closed:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self._closed:
            self._paused = False
            self.transport.resume_reading()

    def _wait(self, coro: Awaitable[Reply | None], after: Callable[[Reply | None], None]) -> None:
        """Answer the pending event when `coro` is done; meanwhile read nothing more."""
        self._waiting = True
        self._flush()

        async def run() -> None:
            try:
                reply = await coro
            except Exception:
                log.exception("decision failed for [%s]", self.info.ip)
                reply = QUEUE_ERROR
            if self._closed:
                return
            after(reply)
            self._waiting = False
            self._pump()
            if not self._waiting:
                self._resume()

        asyncio.get_running_loop().create_task(run())

    def _pump(self) -> None:
        s = self.session
        policy = self.server.policy
        while not self._waiting:
            ev = s.next_event()
            if ev is NEED_DATA:
                break
            t = type(ev)
            if t is MessageData:
                assert isinstance(ev, MessageData)
                self._chunks.append(ev.data)
            elif t is RcptTo:
                assert isinstance(ev, RcptTo)
                self._pending_rcpt = ev
                r = policy.rcpt_to_sync(self.info, ev)
                if r is True:
                    self._wait(policy.rcpt_to(self.info, ev), self._answer_rcpt)
                else:
                    self._answer_rcpt(r if isinstance(r, Reply) else None)
            elif t is MailFrom:
                assert isinstance(ev, MailFrom)
                r = policy.mail_from_sync(self.info, ev)
                if r is True:
                    self._wait(policy.mail_from(self.info, ev), self._answer_mail(ev))
                else:
                    self._answer_mail(ev)(r if isinstance(r, Reply) else None)
            elif t is MessageComplete:
                assert isinstance(ev, MessageComplete)
                self._wait(self._queue_message(ev), self._answer_message)
            elif t is MessageStart:
                self._chunks = []
            elif t is Ehlo:
                assert isinstance(ev, Ehlo)
                self.info.helo, self.info.esmtp = ev.domain, ev.extended
                s.respond(None)
            elif t is Reset or t is MessageAborted:
                if isinstance(ev, MessageAborted):
                    self.server.stats.refused += 1
                    metrics.message_refused()
                    log.info("message refused for %s[%s]: %s", self.info.helo, self.info.ip,
                             ev.reply)
                self._reset_envelope()
            elif t is AuthAttempt:
                assert isinstance(ev, AuthAttempt)
                self._wait(self._auth(ev), self._answer_auth(ev))
            elif t is StartTLS:
                self._starttls()
            elif t is Quit or t is SessionClosed or t is ConnectionLost:
                self._reset_envelope()
        self._flush()
        if s.buffered > 65536:
            self._pause()

    # --- answers --------------------------------------------------------------------

    def _answer_mail(self, ev: MailFrom) -> Callable[[Reply | None], None]:
        def answer(reply: Reply | None) -> None:
            if reply is None or reply.code // 100 == 2:
                self._sender = ev
                self._rcpts = []
            self.session.respond(reply)

        return answer

    def _answer_rcpt(self, reply: Reply | None) -> None:
        ev = self._pending_rcpt
        self._pending_rcpt = None
        if (reply is None or reply.code // 100 == 2) and ev is not None:
            self._rcpts.append(ev)
        elif reply is not None:
            log.info("reject: RCPT from %s[%s]: %s; from=<%s> to=<%s>", self.info.helo,
                     self.info.ip, reply, self._sender.sender if self._sender else "",
                     ev.recipient if ev else "")
        self.session.respond(reply)

    def _answer_message(self, reply: Reply | None) -> None:
        self.session.respond(reply)
        self._reset_envelope()

    def _answer_auth(self, ev: AuthAttempt) -> Callable[[Reply | None], None]:
        def answer(reply: Reply | None) -> None:
            self.session.respond(reply)
            if reply is None:
                self.info.authenticated = ev.username
            elif reply.code == 421:
                self.session.timeout()  # closes; the 421 below is what the client sees
        return answer

    def _reset_envelope(self) -> None:
        self._sender = None
        self._rcpts = []
        self._chunks = []

    # --- decisions that wait ------------------------------------------------------

    async def _auth(self, ev: AuthAttempt) -> Reply | None:
        policy = self.server.policy
        if policy.auth_blocked(self.info):
            return policy.auth_failed(self.info) or replies.AUTH_FAILED
        ok = await asyncio.to_thread(policy.check_password, ev)
        if ok:
            log.info("auth: %s[%s] authenticated as %s", self.info.helo, self.info.ip,
                     ev.username)
            return None
        log.info("auth failed: %s[%s] user=%s", self.info.helo, self.info.ip, ev.username)
        return policy.auth_failed(self.info) or replies.AUTH_FAILED

    async def _queue_message(self, ev: MessageComplete) -> Reply | None:
        sender = self._sender
        if sender is None or not self._rcpts:
            return QUEUE_ERROR
        srv = self.server
        qid = new_queue_id()
        content = self._received_header(qid) + b"".join(self._chunks)
        self._chunks = []
        msg = NewMessage(
            id=qid,
            sender=str(sender.sender),
            recipients=[
                NewRecipient(
                    address=str(r.recipient),
                    orcpt=f"{r.params.orcpt[0]};{r.params.orcpt[1]}" if r.params.orcpt else None,
                    notify=r.params.notify,
                )
                for r in self._rcpts
            ],
            content=content,
            received_at=time.time(),
            client_address=self.info.ip,
            client_helo=self.info.helo,
            protocol=self.info.protocol,
            authenticated_as=self.info.authenticated,
            envid=sender.params.envid,
            ret=sender.params.ret,
            smtputf8=sender.params.smtputf8,
            body_8bit=sender.params.body == "8BITMIME",
        )
        try:
            qid = await srv.enqueue(msg)
        except QueueFull as exc:
            log.error("queue full, refusing message from [%s]: %s", self.info.ip, exc)
            srv.stats.refused += 1
            metrics.message_refused()
            return QUEUE_FULL
        srv.stats.accepted += 1
        metrics.message_accepted()
        rcpts = [r.address for r in msg.recipients]
        log.info("%s: from=<%s>, size=%d, nrcpt=%d, client=%s[%s], proto=%s%s", qid,
                 msg.sender, len(content), len(rcpts), self.info.helo, self.info.ip,
                 msg.protocol, f", sasl_username={msg.authenticated_as}"
                 if msg.authenticated_as else "")
        if srv.on_queued is not None:
            srv.on_queued(qid, rcpts)
        return Reply.make(250, "2.0.0", f"Ok: queued as {qid}")

    def _received_header(self, qid: str) -> bytes:
        """RFC 5321 4.4 trace header; the TLS part follows Postfix's habit."""
        info = self.info
        ip = info.ip
        literal = f"IPv6:{ip}" if ":" in ip else ip
        tls = f"\r\n\t(using {info.tls_version} with cipher {info.tls_cipher})" if info.tls else ""
        rcpt = f"\r\n\tfor <{self._rcpts[0].recipient}>" if len(self._rcpts) == 1 else ""
        date = _date_now()
        hdr = (f"Received: from {info.helo or 'unknown'} ([{literal}]){tls}\r\n"
               f"\tby {self.server.config.hostname} (mailgate) with {info.protocol} "
               f"id {qid}{rcpt};\r\n\t{date}\r\n")
        return hdr.encode("utf-8", "surrogateescape")

    def _starttls(self) -> None:
        ctx = self.server.tls_context
        assert ctx is not None
        self._waiting = True
        self._flush()
        transport = self.transport
        assert transport is not None

        async def handshake() -> None:
            loop = asyncio.get_running_loop()
            # Plaintext pipelined after STARTTLS reached the session before this point and
            # was discarded; from here on only the TLS layer calls data_received.
            self._tls_early = bytearray()
            try:
                new = await loop.start_tls(transport, self, ctx, server_side=True,
                                           ssl_handshake_timeout=30.0)
            except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
                log.info("TLS handshake failed with [%s]: %s", self.info.ip, exc)
                self._closed = True
                transport.abort()
                return
            finally:
                early, self._tls_early = self._tls_early, None
            if new is None or self._closed:
                return
            self.transport = new
            self.info.tls = True
            self._note_tls(new)
            self.session.tls_established()
            if early:
                self.session.receive_data(bytes(early))
            self._waiting = False
            self._pump()

        asyncio.get_running_loop().create_task(handshake())

    def _note_tls(self, transport: asyncio.BaseTransport) -> None:
        obj = transport.get_extra_info("ssl_object")
        if obj is not None:
            cipher = obj.cipher()
            self.info.tls_version = str(obj.version() or "")
            self.info.tls_cipher = str(cipher[0]) if cipher else ""
