"""asyncio listeners around the sans-I/O ServerSession.

One `SMTPConnection` (an asyncio.Protocol) per client: bytes in are fed to the session,
events are answered from the policy, replies are written back. Decisions that wait (DNS,
the queue's group commit, password hashing, the TLS handshake) pause reading until they
are done, so input stays bounded and pipelined commands keep their order.

Every byte comes from a stranger, so each connection is bounded (docs/security.md):
- memory: message content goes to a spool file as it arrives (`queue.spool`, through
  `server/incoming.py`, which also writes the Received header), input is
  read only while the session's buffer is small, and reading stops while the client does
  not read our replies (the transport's write buffer is over its high-water mark);
- time: deadlines, not idle timers. A command must be complete within `timeouts.command`
  of the moment we were ready for it, however slowly its bytes trickle in; a message must
  keep up `timeouts.min_data_rate` on average; a TLS handshake has `timeouts.tls_handshake`.
  When the open connections reach 80 % of the limit, the stress timeouts apply;
- slots: every connection counts from its first byte, implicit-TLS ones included (their
  handshake runs after the count, under its own deadline, never before it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from mailgate import metrics
from mailgate.codes.reply import Reply
from mailgate.config import Config, Listener
from mailgate.queue import Enqueue, QueueError, QueueFull, new_queue_id
from mailgate.queue.spool import SpoolFile
from mailgate.server.admission import Admission, Local
from mailgate.server.dkimsign import sign_spool
from mailgate.server.incoming import Incoming, new_message, received_header
from mailgate.server.policy import AUTH_TOO_MANY, ConnectionInfo, Policy
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
TOO_MANY_HOPS = Reply.make(554, "5.4.6", "Too many hops: the message has passed through too "
                                         "many mail servers, probably a mail loop")
SPOOL_FAILED = Reply.make(452, "4.3.1", "Insufficient system storage, try again later")
STRESS = 0.8  # share of limits.connections from which the stress timeouts apply

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
        spool_dir: Path | None = None,
        max_connections: int | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.config = config
        self.spool_dir = spool_dir if spool_dir is not None else config.data_dir / "spool"
        # The connection limit, lowered by `serve` when the descriptors would run out first.
        self.max_connections = min(config.limits.connections,
                                   max_connections or config.limits.connections)
        self.policy = policy
        self.enqueue = enqueue
        self.tls_context = tls_context
        self.on_queued = on_queued
        self.stats = Stats()
        self.connections: set[SMTPConnection] = set()
        # Who may connect: this process's counts, or (with workers) every worker's.
        self.admission = admission or Local(self.max_connections,
                                            config.limits.connections_per_ip)
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

    async def start(self, reuse_port: bool = False,
                    bound: Sequence[socket.socket] | None = None) -> None:
        """Listen on every configured address; `bound`: on these sockets, already bound
        in listener order (by `serve` as root, before it dropped privileges)."""
        loop = asyncio.get_running_loop()
        for index, listener in enumerate(self.config.listen):
            if listener.role == "smtps" and self.tls_context is None:
                raise ValueError("an smtps listener needs a TLS certificate")
            # No ssl= here, even for smtps: asyncio would run the handshake before the
            # connection is counted, so handshakes in progress would escape the limits.
            # SMTPConnection starts TLS itself once the connection holds a slot.
            if bound is not None:
                server = await loop.create_server(self._factory(listener),
                                                  sock=bound[index], backlog=1024)
            else:
                server = await loop.create_server(
                    self._factory(listener), host=listener.host, port=listener.port,
                    reuse_address=True, reuse_port=reuse_port or None, backlog=1024,
                )
            self.servers.append(server)

    def sockets(self) -> list[tuple[str, str, int]]:
        """(role, host, port) actually bound, in listener order (ports may be 0 in tests);
        none before `start` (or in a worker that only delivers)."""
        out: list[tuple[str, str, int]] = []
        if not self.servers:
            return out
        for listener, server in zip(self.config.listen, self.servers, strict=True):
            for sock in server.sockets:
                addr = sock.getsockname()
                out.append((listener.role, str(addr[0]), int(addr[1])))
        return out

    @property
    def stressed(self) -> bool:
        """Connection slots are running short: the short timeouts apply."""
        return self.admission.open >= STRESS * self.max_connections

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
        self._paused = False  # reading paused because input is waiting to be handled
        self._write_paused = False  # ... because the client does not read our replies
        self._closed = False
        self._incoming: Incoming | None = None  # the message being received
        self._sender: MailFrom | None = None
        self._rcpts: list[RcptTo] = []
        self._pending_rcpt: RcptTo | None = None
        # Deadlines: when we became ready for the command being read (and started the
        # message being read, with its bytes so far); `_check_timeout` judges them.
        self._ready_at = 0.0
        self._data_at = 0.0
        self._data_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stall_at: float | None = None  # since when our replies wait unread
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
        # No TCP_NODELAY here: asyncio and uvloop set it on every TCP transport already.
        srv.stats.connections_total += 1
        metrics.connection_opened()
        refusal = None
        if srv.closing:
            refusal, reason = replies.SHUTDOWN, "shutdown"
        elif (why := srv.admission.admit(self.info.ip)) is not None:
            refusal, reason = (TOO_MANY_FROM_IP if why == "per_ip" else TOO_MANY_CONNECTIONS,
                               why)
        if refusal is not None:
            log.info("refused connection from [%s]: %s", self.info.ip, refusal)
            metrics.connection_refused(reason)
            if self.role != "smtps":  # an implicit-TLS client could not read it
                transport.write(refusal.to_bytes(enhanced=False))
            self._closed = True
            transport.close()
            metrics.connection_closed()
            return
        srv.connections.add(self)
        srv.stats.connections_open = len(srv.connections)
        self._ready_at = time.monotonic()
        if self.role == "smtps":
            self._start_tls(implicit=True)  # the greeting follows the handshake
        else:
            self.session.greet()
            self._flush()
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        if self.session.in_data:
            self._data_bytes += len(data)
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

    def pause_writing(self) -> None:
        """The client is not reading our replies: read nothing more until it does, or a
        client that pipelines without reading would grow our output without bound."""
        self._write_paused = True
        if self.transport is not None and not self._closed and not self._paused:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._stall_at = None
        if self.transport is not None and not self._closed and not self._paused:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._drop_spool()
        srv = self.server
        if self in srv.connections:
            metrics.connection_closed()
            srv.connections.discard(self)
            srv.admission.leave(self.info.ip)
            srv.stats.connections_open = len(srv.connections)

    # --- timeouts and shutdown ----------------------------------------------------

    def _deadline(self) -> float:
        """When the client's time is up for what it is sending now (monotonic clock).

        In a command: `command` seconds from when we were ready for it, however its bytes
        trickle in. In a message: `data_block` seconds of grace plus one second for every
        `min_data_rate` bytes received, so a message must keep up the rate on average.
        Under stress (slots running short) the stress timeouts replace both."""
        t = self.server.config.timeouts
        stressed = self.server.stressed
        if self.session.in_data:
            grace = min(t.data_block, t.stress_data_block) if stressed else t.data_block
            earned = self._data_bytes / t.min_data_rate if t.min_data_rate else float("inf")
            return self._data_at + grace + earned
        timeout = min(t.command, t.stress_command) if stressed else t.command
        return self._ready_at + timeout

    def _arm_timer(self) -> None:
        delay = max(0.05, self._deadline() - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._check_timeout)

    def _check_timeout(self) -> None:
        """One timer per connection, re-armed to the current deadline when it fires."""
        if self._closed:
            return
        now = time.monotonic()
        if self._waiting or self._write_paused:
            # Our own decision is slow (DNS, the queue), or our replies wait in the
            # kernel: give the client a fresh deadline from when we are ready again.
            # A client that never reads our replies is caught by the cap below.
            self._ready_at = max(self._ready_at, now)
            if self.session.in_data:
                self._data_at = max(self._data_at, now - self._data_bytes /
                                    max(1, self.server.config.timeouts.min_data_rate))
            if self._write_paused and self._stalled_since(now):
                self._give_up("not reading replies")
                return
        if now < self._deadline():
            self._arm_timer()
            return
        self._give_up("timeout")

    def _stalled_since(self, now: float) -> bool:
        """A client whose unread replies have waited longer than a command's timeout."""
        if self._stall_at is None:
            self._stall_at = now
        return now - self._stall_at > self.server.config.timeouts.command

    def _give_up(self, why: str) -> None:
        log.info("%s from %s[%s]", why, self.info.helo or "unknown", self.info.ip)
        metrics.connection_timeout()
        if self._tls_early is not None or (self.role == "smtps" and not self.info.tls):
            self.abort()  # in a TLS handshake: nothing can be said in the clear
            return
        self.session.timeout()
        self._waiting = False
        self._pump()
        if not self._closed and self._write_paused:
            self.abort()

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
            self._ready_at = time.monotonic()  # a reply: the next command's time starts
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
            if not self._write_paused:
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
            self._ready_at = time.monotonic()
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
                if self._incoming is not None:
                    self._incoming.write(ev.data)
                continue
            if t is RcptTo:
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
                self._start_message()
            elif t is Ehlo:
                assert isinstance(ev, Ehlo)
                self.info.helo, self.info.esmtp = ev.domain, ev.extended
                s.respond(None)
            elif t is Reset or t is MessageAborted:
                if isinstance(ev, MessageAborted):
                    self._refused(ev.reply)
                    log.info("message refused for %s[%s]: %s", self.info.helo, self.info.ip,
                             ev.reply)
                self._reset_envelope()
            elif t is AuthAttempt:
                assert isinstance(ev, AuthAttempt)
                self._wait(self._auth(ev), self._answer_auth(ev))
            elif t is StartTLS:
                self._start_tls(implicit=False)
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
            # The envelope keeps the recipients as they will be delivered: aliases
            # expanded, the postmaster's mailbox for <postmaster>, bob for bob+tag; the
            # address as given stays the ORCPT (RFC 3461 4.2) for notices.
            finals = self.server.policy.final_recipients(ev.recipient) or [ev.recipient]
            params = ev.params
            if finals != [ev.recipient] and params.orcpt is None:
                params = dataclasses.replace(params, orcpt=("rfc822", str(ev.recipient)))
            for final in finals:
                if all(r.recipient != final for r in self._rcpts):  # one copy per mailbox
                    self._rcpts.append(ev if final is ev.recipient else
                                       dataclasses.replace(ev, recipient=final, params=params))
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
        self._drop_spool()

    # --- message content: to a spool file as it arrives --------------------------------

    def _start_message(self) -> None:
        """DATA (or the first BDAT) begins: open the spool file, trace header first."""
        self._drop_spool()
        self._data_at = time.monotonic()
        self._data_bytes = 0
        qid = new_queue_id()
        trace = received_header(self.info, self.server.config.hostname, qid, self._rcpts)
        self._incoming = Incoming(self.server.spool_dir, qid, trace, self.info.ip,
                                  self.server.config.hostname)

    def _drop_spool(self) -> None:
        if self._incoming is not None:
            self._incoming.discard()
            self._incoming = None

    # --- decisions that wait ------------------------------------------------------

    async def _auth(self, ev: AuthAttempt) -> Reply | None:
        """Check a password under the failure limits, atomically: the failure is counted
        (reserved) before the slow check and given back only on success, so parallel
        attempts cannot all slip under the limit while the first ones are still hashing."""
        policy = self.server.policy
        reservation = policy.auth_reserve(self.info, ev.username)
        if reservation is None:
            log.info("auth refused (too many failures): %s[%s] user=%s", self.info.helo,
                     self.info.ip, ev.username)
            metrics.auth_refused()
            return AUTH_TOO_MANY
        try:
            ok = await policy.authenticate(self.info, ev)
        except BaseException:
            policy.auth_release(reservation)  # our failure, not the client's
            raise
        if ok is None:  # the password database cannot answer now: not the client's fault
            policy.auth_release(reservation)
            return replies.AUTH_TEMPFAIL
        if ok:
            policy.auth_release(reservation)
            log.info("auth: %s[%s] authenticated as %s", self.info.helo, self.info.ip,
                     ev.username)
            return None
        log.info("auth failed: %s[%s] user=%s", self.info.helo, self.info.ip, ev.username)
        return policy.auth_failed(self.info) or replies.AUTH_FAILED

    async def _queue_message(self, ev: MessageComplete) -> Reply | None:
        incoming = self._incoming
        # This task owns the file now; it removes it when done.
        spool = incoming.take() if incoming is not None else None
        if incoming is None or spool is None:
            failed = incoming is not None and incoming.error is not None
            return SPOOL_FAILED if failed else QUEUE_ERROR
        try:
            return await self._store(spool, incoming, ev.crlf)
        finally:
            spool.discard()

    async def _store(self, spool: SpoolFile, incoming: Incoming, crlf: bool) -> Reply | None:
        sender = self._sender
        if sender is None or not self._rcpts:
            return QUEUE_ERROR
        srv = self.server
        if incoming.hops.hops >= srv.config.limits.hops:
            log.info("reject: too many hops (%d Received: fields) from %s[%s]; from=<%s>",
                     incoming.hops.hops, self.info.helo, self.info.ip, sender.sender)
            return self._refused(TOO_MANY_HOPS)
        if self.role != "mx":
            incoming.submission_fixups(spool, srv.config.hostname)
        try:
            spool.finish()
        except OSError as exc:
            log.error("cannot spool the message from [%s]: %s", self.info.ip, exc)
            return SPOOL_FAILED
        verdict = await srv.policy.verify_message(self.info, spool, self._rcpts)
        if verdict is not None:
            log.info("%s: auth: %s; from=<%s> client=%s[%s]%s", incoming.qid, verdict.summary,
                     sender.sender, self.info.helo, self.info.ip,
                     f"; reject: {verdict.reply}" if verdict.reply else "")
            if verdict.reply is not None:
                return self._refused(verdict.reply)
            spool.head += verdict.header
        trusted = srv.policy.trusted(self.info)
        if trusted and (dkim := srv.policy.config.dkim):  # as SIGHUP read them last
            await sign_spool(spool, dkim, incoming.qid)  # once: every retry sends these bytes
        msg = new_message(incoming.qid, self.info, sender, self._rcpts, spool, trusted, crlf)
        try:
            qid = await srv.enqueue(msg)
        except QueueFull as exc:
            log.error("queue full, refusing message from [%s]: %s", self.info.ip, exc)
            return self._refused(QUEUE_FULL)
        except QueueError as exc:
            # The database is unreachable (PostgreSQL restarting): no commit, no 250.
            log.error("cannot queue the message from [%s]: %s", self.info.ip, exc)
            return self._refused(QUEUE_ERROR)
        srv.stats.accepted += 1
        metrics.message_accepted()
        rcpts = [r.address for r in msg.recipients]
        log.info("%s: from=<%s>, size=%d, nrcpt=%d, client=%s[%s], proto=%s%s", qid,
                 msg.sender, msg.size, len(rcpts), self.info.helo, self.info.ip,
                 msg.protocol, f", sasl_username={msg.authenticated_as}"
                 if msg.authenticated_as else "")
        if srv.on_queued is not None:
            srv.on_queued(qid, rcpts)
        return Reply.make(250, "2.0.0", f"Ok: queued as {qid}")

    def _refused(self, reply: Reply) -> Reply:
        """`reply` refuses a message: counted (stats and metrics), then returned."""
        self.server.stats.refused += 1
        metrics.message_refused()
        return reply

    def _start_tls(self, implicit: bool) -> None:
        """The TLS handshake: after STARTTLS, or at once on the smtps port (implicit TLS,
        RFC 8314), where the greeting follows it. Either way under its own deadline."""
        ctx = self.server.tls_context
        assert ctx is not None
        self._waiting = True
        self._flush()
        transport = self.transport
        assert transport is not None
        timeout = self.server.config.timeouts.tls_handshake

        async def handshake() -> None:
            loop = asyncio.get_running_loop()
            # Plaintext pipelined after STARTTLS reached the session before this point and
            # was discarded; from here on only the TLS layer calls data_received.
            self._tls_early = bytearray()
            try:
                new = await loop.start_tls(transport, self, ctx, server_side=True,
                                           ssl_handshake_timeout=timeout)
            except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
                log.info("TLS handshake failed with [%s]: %s", self.info.ip,
                         exc or type(exc).__name__)
                transport.abort()
                # asyncio never tells a protocol whose handshake failed that the
                # connection is gone: give the slot back here, or it leaks for good.
                self.connection_lost(None)
                return
            finally:
                early, self._tls_early = self._tls_early, None
            if new is None or self._closed:
                return
            self.transport = new
            self.info.tls = True
            self._note_tls(new)
            self._ready_at = time.monotonic()
            if implicit:
                self.session.greet()
            else:
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

