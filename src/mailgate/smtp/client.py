"""The client side of SMTP as a pure state machine (bytes in, events and bytes out).

The mirror of `server.ServerSession`, for delivery. Usage, h11-style::

    c = ClientSession(ClientConfig(helo_name="relay.example.test"))
    h = c.send(envelope, content)        # queue messages (any time before quit())
    c.quit()                             # QUIT once the queue is empty
    while not closed:
        c.receive_data(read())           # b"" when the server closed the connection
        write(c.data_to_send())
        while (ev := c.next_event()) is not NEED_DATA:
            if isinstance(ev, StartTLS):   # flush, handshake, then:
                c.tls_established()        # (or c.tls_failed("why"))
            elif isinstance(ev, MessageResult): record(ev)
            elif isinstance(ev, Idle): c.send(...) or c.quit()
            elif isinstance(ev, Closed): closed = True
        write(c.data_to_send())

The session decides everything about the protocol: what to send and when (EHLO or HELO,
STARTTLS, AUTH, pipelined batches, DATA or BDAT, RSET, QUIT), and what every reply means
for every recipient. The shell only moves bytes, does the TLS handshake when told, keeps
the clock (`awaiting` names the step whose timeout applies; `abort()` ends the session on
a timeout) and maps outcomes to the queue.

Every message given to `send()` ends in exactly one `MessageResult`, with one `Outcome` per
recipient, whatever the server does: a misbehaving server is an outcome, never an
exception (the replies mailgate makes up, and why each code: `smtp/client_events.py`).

Memory is bounded: the input buffer holds at most one reply line (`max_reply_line`), a
reply at most `max_reply_lines` lines, and replies are consumed as they arrive; a reply
nobody asked for ends the session. Only output (the messages the shell queued) grows
with what the shell gives.
"""

from __future__ import annotations

import enum
from collections import deque

from mailgate.codes.reply import Reply
from mailgate.smtp import sasl
from mailgate.smtp._common import NEED_DATA, ProtocolUsageError
from mailgate.smtp._common import NeedData as _NeedData
from mailgate.smtp._common import escape_controls as _printable
from mailgate.smtp.client_events import (
    AUTH_IMPOSSIBLE,
    CONNECTION_LOST,
    EIGHTBIT_UNSUPPORTED,
    PROTOCOL_ERROR,
    REPLY_TOO_LONG,
    SIZE_TOO_BIG,
    TIMED_OUT,
    TLS_FAILED,
    TLS_NOT_OFFERED,
    UTF8_ADDRESS_UNSUPPORTED,
    UTF8_HEADERS_UNSUPPORTED,
    Capabilities,
    ClientConfig,
    ClientObserver,
    Closed,
    Credentials,
    Envelope,
    Established,
    Event,
    Idle,
    MessageResult,
    Outcome,
    Recipient,
    RecipientResult,
    Stage,
    StartTLS,
)
from mailgate.smtp.commands import encode_xtext
from mailgate.smtp.framing import ReplyReader, ReplyStreamError
from mailgate.smtp.transaction import Message, Transaction

__all__ = [
    "AUTH_IMPOSSIBLE",
    "CONNECTION_LOST",
    "EIGHTBIT_UNSUPPORTED",
    "NEED_DATA",
    "PROTOCOL_ERROR",
    "REPLY_TOO_LONG",
    "SIZE_TOO_BIG",
    "TIMED_OUT",
    "TLS_FAILED",
    "TLS_NOT_OFFERED",
    "UTF8_ADDRESS_UNSUPPORTED",
    "UTF8_HEADERS_UNSUPPORTED",
    "Capabilities",
    "ClientConfig",
    "ClientObserver",
    "ClientSession",
    "Closed",
    "Credentials",
    "Envelope",
    "Established",
    "Event",
    "Idle",
    "MessageResult",
    "Outcome",
    "ProtocolUsageError",
    "Recipient",
    "RecipientResult",
    "Stage",
    "StartTLS",
    "encode_xtext",
]

# --- internals --------------------------------------------------------------------------


class _Phase(enum.Enum):
    GREETING = "greeting"
    HELLO = "hello"  # EHLO / HELO sent
    STARTTLS = "starttls"  # STARTTLS sent
    TLS = "tls"  # handshake in the shell's hands
    AUTH = "auth"
    READY = "ready"  # transactions
    QUIT = "quit"
    CLOSED = "closed"


class _Exp(enum.Enum):
    """What a pending reply answers."""

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    RSET = "rset"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    DATA_END = "end-of-data"
    BDAT = "bdat"
    QUIT = "quit"


class ClientSession:
    """One SMTP client conversation. See the module docstring for the calling pattern."""

    def __init__(self, config: ClientConfig | None = None, *, tls_active: bool = False,
                 observer: ClientObserver | None = None) -> None:
        self.config = config or ClientConfig()
        self._observer = observer
        self.tls_active = tls_active  # implicit TLS (RFC 8314): no STARTTLS
        self.capabilities = Capabilities()
        self.authenticated = False
        self._phase = _Phase.GREETING
        self._replies = ReplyReader(self.config.max_reply_line, self.config.max_reply_lines)
        # What to write, in pieces joined by data_to_send: a message's content is
        # copied once on its way out (a lone piece not at all), not into a buffer and
        # out again.
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._pending: deque[tuple[_Exp, int]] = deque([(_Exp.GREETING, 0)])
        self._queue: deque[Message] = deque()
        self._txn: Transaction | None = None
        self._next_txn: Transaction | None = None  # begun behind the content of `_txn`
        self._next_handle = 1
        self._quitting = False
        self._idle_announced = False
        self._needs_rset = False
        self._tls_declined = False  # STARTTLS refused under "may": go on in the clear
        self._auth_mech = ""
        self._auth_step = 0
        self._end_reason: Outcome | None = None

    # --- the shell's side -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def awaiting(self) -> Stage | None:
        """The step whose reply is awaited (for the shell's timeouts), or None."""
        if self._phase is _Phase.TLS:
            return "tls"
        if not self._pending:
            return None
        return _STAGES[self._pending[0][0]]

    @property
    def buffered(self) -> int:
        """Unparsed input held, in octets (at most `max_reply_line`)."""
        return self._replies.buffered

    def send(self, envelope: Envelope, content: bytes) -> int:
        """Queue a message; return its handle, repeated in its `MessageResult`.

        `content` is the message as stored (RFC 5322, CRLF line ends); dot-stuffing and
        the terminator are the session's business.
        """
        ended = self._end_reason
        if (self._quitting or self._phase is _Phase.CLOSED) and ended is None:
            raise ProtocolUsageError("send() after quit() or after the session closed.")
        handle = self._next_handle
        self._next_handle += 1
        if ended is not None:
            # The session failed before the shell saw it: the message shares the fate of
            # the others, so that every send() still ends in one MessageResult.
            self._events.append(Message(handle, envelope, b"").result(ended))
            return handle
        self._queue.append(Message(handle, envelope, bytes(content)))
        self._idle_announced = False
        if self._phase is _Phase.READY and self._txn is None and not self._pending:
            self._advance()
        return handle

    def quit(self) -> None:
        """Say QUIT once every queued message is done."""
        if self._phase is _Phase.CLOSED or self._quitting:
            return
        self._quitting = True
        if self._phase is _Phase.READY and self._txn is None and not self._pending:
            self._advance()

    def probe(self) -> None:
        """Say RSET on an idle session, before a kept connection carries more mail: its
        250 (then `Idle`) says the server is still there and in a clean state; anything
        else (a 421 left from an idle timeout, a closed connection) ends the session, with
        nothing lost since nothing is queued."""
        if (self._phase is not _Phase.READY or self._txn is not None or self._pending
                or self._queue or self._quitting):
            raise ProtocolUsageError("probe() is for an idle session.")
        self._needs_rset = False
        self._idle_announced = False
        self._command("RSET", _Exp.RSET)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the server; `b""` when it closed the connection."""
        if self._phase is _Phase.CLOSED:
            return
        if not data:
            self._eof()
            return
        if self._phase is _Phase.TLS:
            return  # after 220 to STARTTLS nothing is read until the handshake is done
        self._replies.feed(data)
        self._parse()

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA when the session waits for the server (or idles)."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def tls_established(self) -> None:
        """The handshake after STARTTLS succeeded: start over with EHLO (RFC 3207 4.2)."""
        if self._phase is not _Phase.TLS:
            raise ProtocolUsageError("tls_established() follows a StartTLS event.")
        self.tls_active = True
        self.capabilities = Capabilities()
        self._replies.clear()
        self._hello(extended=True)

    def tls_failed(self, reason: str = "") -> None:
        """The handshake failed: every undecided recipient gets 451 4.7.5; close."""
        if self._phase is not _Phase.TLS:
            raise ProtocolUsageError("tls_failed() follows a StartTLS event.")
        text = TLS_FAILED.text + (f": {reason}" if reason else "")
        self._fail(Outcome(Reply.make(451, "4.7.5", text), False, "tls"), quit=False)

    def abort(self, reply: Reply = TIMED_OUT) -> None:
        """The shell gives up (a timeout): undecided recipients get `reply`, locally."""
        if self._phase is _Phase.CLOSED:
            return
        if self._phase is _Phase.QUIT:  # every message is decided; 221 does not matter
            self._close(self._end_reason)
            return
        stage = self.awaiting or "connection"
        self._fail(Outcome(reply, False, stage), quit=False)

    # --- output ---------------------------------------------------------------------

    def _command(self, line: str, exp: _Exp, arg: int = 0, shown: str | None = None) -> None:
        """Write a command line awaiting `exp`; `shown` is what the observer sees instead."""
        self._out.append(line.encode("utf-8") + b"\r\n")
        self._pending.append((exp, arg))
        if self._observer is not None:
            self._observer.command(line if shown is None else shown, _STAGES[exp])

    # --- input ----------------------------------------------------------------------

    def _parse(self) -> None:
        """Consume whole replies; the reader holds at most one partial line."""
        while self._phase is not _Phase.CLOSED and self._phase is not _Phase.TLS:
            try:
                reply = self._replies.read()
            except ReplyStreamError as exc:
                base = REPLY_TOO_LONG if exc.too_long else PROTOCOL_ERROR
                self._protocol_error(base, exc.why, exc.seen)
                return
            if reply is None:
                return
            self._reply(reply)
        self._replies.clear()  # RFC 3207 5: nothing sent before the handshake is kept

    def _eof(self) -> None:
        if self._phase is _Phase.QUIT:
            self._close(self._end_reason)  # closing without 221 is fine
            return
        stage = self.awaiting or "connection"
        self._fail(Outcome(CONNECTION_LOST, False, stage), quit=False)

    def _protocol_error(
        self, base: Reply, why: str, seen: str = "", stage: Stage | None = None
    ) -> None:
        """The server broke the protocol: fail locally and close (QUIT could be misread)."""
        text = f"{base.text} ({why})"
        if seen:
            text += f": {seen[:200]!r}"
        reply = Reply.make(base.code, base.enhanced, text)
        self._fail(Outcome(reply, False, stage or self.awaiting or "connection"), quit=False)

    # --- replies --------------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        if self._observer is not None:
            self._observer.reply(reply, _STAGES[self._pending[0][0]] if self._pending
                                 else "connection")
        if not self._pending:
            if reply.code == 421:  # the usual "closing idle connection" notice
                self._fail(Outcome(reply, True, "connection"), quit=False)
            else:
                self._protocol_error(PROTOCOL_ERROR, "a reply to no command", str(reply))
            return
        exp, arg = self._pending.popleft()
        stage = _STAGES[exp]
        if exp is _Exp.QUIT:
            self._close(self._end_reason)
            return
        if reply.code == 421:
            # RFC 5321 3.8: the server is closing; whatever it said next is moot.
            self._fail(Outcome(reply, True, stage), quit=False)
            return
        handler = _HANDLERS[exp]
        handler(self, reply, arg)

    def _on_greeting(self, reply: Reply, _: int) -> None:
        if reply.code == 220:
            name = reply.lines[0].split(" ", 1)[0] if reply.lines else ""
            if self.config.loop_name and name.lower() == self.config.loop_name.lower():
                self._fail(Outcome(Reply.make(
                    554, "5.4.6", f"Mail loops back to myself: {name} greeted with this "
                    "server's own name (a route or MX record points here)"),
                    False, "greeting"), quit=True)
                return
            self._hello(extended=True)
            return
        if reply.code < 400:
            self._protocol_error(PROTOCOL_ERROR, "a greeting that is neither 220 nor a refusal",
                                 str(reply), "greeting")
            return
        # 554 (RFC 5321 3.1): the client should QUIT and wait; 521 (RFC 7504) closes.
        self._fail(Outcome(reply, True, "greeting"), quit=reply.code != 521)

    def _hello(self, extended: bool) -> None:
        self._phase = _Phase.HELLO
        verb, exp = ("EHLO", _Exp.EHLO) if extended else ("HELO", _Exp.HELO)
        if self.config.lmtp:
            verb = "LHLO"  # RFC 2033 4.1
        self._command(f"{verb} {self.config.helo_name}", exp)

    def _on_ehlo(self, reply: Reply, _: int) -> None:
        if reply.is_success:
            self.capabilities = Capabilities.from_ehlo(reply)
            self._after_hello()
        elif reply.code in (500, 502) and not self.config.lmtp:  # RFC 5321 4.1.4: try HELO
            self._hello(extended=False)
        else:
            self._fail(Outcome(reply, True, "ehlo"), quit=True)

    def _on_helo(self, reply: Reply, _: int) -> None:
        if reply.is_success:
            self.capabilities = Capabilities()
            self._after_hello()
        else:
            self._fail(Outcome(reply, True, "helo"), quit=True)

    def _after_hello(self) -> None:
        c = self.config
        caps = self.capabilities
        if not self.tls_active and c.tls != "never":
            if caps.starttls and not self._tls_declined:
                self._phase = _Phase.STARTTLS
                self._command("STARTTLS", _Exp.STARTTLS)
                return
            if c.tls == "require":
                self._fail(Outcome(TLS_NOT_OFFERED, False, "starttls"), quit=True)
                return
        if c.credentials is not None and not self.authenticated:
            mech = next((m for m in c.auth_mechanisms if m in caps.auth), None)
            if mech is None or not (self.tls_active or c.auth_without_tls):
                why = (
                    "it offers none of " + ", ".join(c.auth_mechanisms)
                    if mech is None
                    else "not over an unencrypted connection"
                )
                r = Reply.make(451, "4.7.0", f"{AUTH_IMPOSSIBLE.text} ({why})")
                self._fail(Outcome(r, False, "auth"), quit=True)
                return
            self._start_auth(mech, c.credentials)
            return
        self._phase = _Phase.READY
        self._events.append(Established(caps, self.tls_active, self.authenticated))
        self._advance()

    def _on_starttls(self, reply: Reply, _: int) -> None:
        if reply.code == 220:
            self._phase = _Phase.TLS
            self._events.append(StartTLS())
            return
        if self.config.tls == "require":
            r = Reply.make(
                451, "4.7.4",
                f"TLS is required, but the server refused STARTTLS: {_printable(str(reply))}",
            )
            self._fail(Outcome(r, False, "starttls"), quit=True)
            return
        self._tls_declined = True  # opportunistic: carry on in the clear
        self._after_hello()

    def _start_auth(self, mech: str, cred: Credentials) -> None:
        self._phase = _Phase.AUTH
        self._auth_mech = mech
        self._auth_step = 0
        if mech == "PLAIN":
            # RFC 4954 4: the initial response saves a round trip; authzid left empty.
            self._command(f"AUTH PLAIN {sasl.plain_response(cred.username, cred.password)}",
                          _Exp.AUTH, shown="AUTH PLAIN *****")
        else:
            self._command("AUTH LOGIN", _Exp.AUTH)

    def _on_auth(self, reply: Reply, _: int) -> None:
        cred = self.config.credentials
        assert cred is not None
        if reply.code == 235:
            self.authenticated = True
            self._after_hello()
            return
        if reply.code == 334:
            self._auth_step += 1
            if self._auth_mech == "LOGIN" and self._auth_step <= 2:
                secret = cred.username if self._auth_step == 1 else cred.password
                # A SASL response: the observer sees stars, never the secret.
                self._command(sasl.encode(secret), _Exp.AUTH, shown="*****")
                return
            # A challenge the mechanism has no answer for: the exchange cannot finish,
            # and QUIT would be read as a SASL response, so just close.
            self._protocol_error(PROTOCOL_ERROR, f"an unexpected AUTH {self._auth_mech} "
                                 "challenge", str(reply), "auth")
            return
        self._fail(Outcome(reply, True, "auth"), quit=True)

    # --- transactions -----------------------------------------------------------------

    def _advance(self) -> None:
        """In READY with nothing pending: start the next message, QUIT, or go idle."""
        if self._queue and self._needs_rset:
            self._needs_rset = False
            self._command("RSET", _Exp.RSET)
            return
        txn = self._take()
        if txn is not None:
            self._txn = txn
            self._begin(txn)
            return
        if self._quitting:
            self._phase = _Phase.QUIT
            self._command("QUIT", _Exp.QUIT)
            return
        if not self._idle_announced:
            self._idle_announced = True
            self._events.append(Idle())

    def _take(self) -> Transaction | None:
        """The next queued message as a transaction; those refused locally end here."""
        while self._queue:
            txn = Transaction.prepare(self._queue.popleft(), self.capabilities,
                                      verify_only=self.config.verify_only,
                                      prefer_bdat=self.config.prefer_bdat)
            if not isinstance(txn, MessageResult):
                return txn
            self._events.append(txn)
        return None

    @property
    def _pipelined(self) -> bool:
        return self.config.pipelining and self.capabilities.pipelining

    def _begin(self, txn: Transaction) -> None:
        self._command(txn.mail_cmd, _Exp.MAIL)
        if not self._pipelined:
            return
        # RFC 2920: MAIL, every RCPT and DATA in one group, DATA last. BDAT chunks could
        # join the group (RFC 3030 4.2), but a server that refused everyone would answer
        # each with 503 and count them as errors until it hangs up (Postfix's
        # hard_error_limit, mailgate's max_errors), and the content would cross the wire
        # for nobody. So the chunks wait for the RCPT replies: the same two round trips
        # as DATA's MAIL..DATA / content.
        for i in range(len(txn.results)):
            self._command(txn.rcpt_cmd(i, self.capabilities.dsn), _Exp.RCPT, i)
        if not txn.use_bdat and not self.config.verify_only:
            self._command("DATA", _Exp.DATA)

    def _send_chunks(self, txn: Transaction, all_of_them: bool) -> None:
        while True:
            head, data, last = txn.chunk(self.config.bdat_chunk_size)
            self._out.append(head.encode("ascii") + b"\r\n")
            self._out.append(data)
            self._pending.append((_Exp.BDAT, int(last)))
            if self._observer is not None:
                self._observer.command(head, "bdat")
            if last or not all_of_them:
                return

    def _on_rset(self, reply: Reply, _: int) -> None:
        if reply.is_success:
            self._advance()
            return
        # Our reply quotes the server's: its control characters go as \xNN, not raw.
        r = Reply.make(451, "4.5.0", f"The server refused RSET: {_printable(str(reply))}")
        self._fail(Outcome(r, False, "rset"), quit=True)

    def _on_mail(self, reply: Reply, _: int) -> None:
        txn = self._txn
        assert txn is not None
        if reply.is_success:
            txn.mail_ok = True
            if not self._pipelined:
                self._command(txn.rcpt_cmd(0, self.capabilities.dsn), _Exp.RCPT, 0)
            return
        # A refused MAIL decides every recipient; pipelined replies still to come are moot.
        txn.decide_all(Outcome(reply, True, "mail"))
        txn.data_decided = True
        self._txn_step(txn)

    def _on_rcpt(self, reply: Reply, i: int) -> None:
        txn = self._txn
        assert txn is not None
        if not txn.mail_ok:  # pipelined after a refused MAIL: already decided
            self._txn_step(txn)
            return
        if reply.is_success:
            txn.accepted.append(i)
            if self.config.verify_only:  # the RCPT reply is all there will be
                txn.decide([i], Outcome(reply, True, "rcpt"))
        else:
            txn.decide([i], Outcome(reply, True, "rcpt"))
        pipelined = self._pipelined
        if i < len(txn.results) - 1:
            if not pipelined:
                self._command(txn.rcpt_cmd(i + 1, self.capabilities.dsn), _Exp.RCPT, i + 1)
            return
        # The last RCPT is answered.
        if not txn.accepted or self.config.verify_only:
            # Every RCPT refused (a pipelined DATA's reply is moot), or verifying only.
            txn.data_decided = True
        elif txn.use_bdat:
            self._send_chunks(txn, all_of_them=pipelined)
        elif not pipelined:
            self._command("DATA", _Exp.DATA)
        self._txn_step(txn)

    def _on_data(self, reply: Reply, _: int) -> None:
        txn = self._txn
        assert txn is not None
        if reply.code == 354:
            early = bool(txn.accepted) and not txn.data_decided
            if early:
                self._out.append(txn.payload)
            else:
                # A server that says 354 with nobody to deliver to: end the (empty)
                # message at once, there is no other way out of DATA.
                self._out.append(b".\r\n")
            # LMTP (RFC 2033 4.2): one reply per accepted recipient, in RCPT order.
            replies = len(txn.accepted) if self.config.lmtp and not txn.data_decided else 1
            self._pending.extend((_Exp.DATA_END, k) for k in range(max(1, replies)))
            if early and self._pipelined:
                # RFC 2920 3.1: content may lead a group. The end of data ends the
                # transaction whatever its reply, so the next message's MAIL, RCPT and
                # DATA go in the same write: one round trip a message instead of two.
                self._next_txn = self._take()
                if self._next_txn is not None:
                    self._begin(self._next_txn)
            return
        if not txn.data_decided:
            txn.decide(txn.accepted, Outcome(reply, True, "data"))
            txn.data_decided = True
        self._txn_step(txn)

    def _on_data_end(self, reply: Reply, k: int) -> None:
        txn = self._txn
        assert txn is not None
        if self.config.lmtp and not txn.data_decided and k < len(txn.accepted):
            txn.decide([txn.accepted[k]], Outcome(reply, True, "end-of-data"))
        elif not txn.data_decided:
            txn.decide(txn.accepted, Outcome(reply, True, "end-of-data"))
            txn.data_decided = True
        txn.completed = True  # after the end-of-data reply the server has reset
        nxt = self._next_txn
        if nxt is None:
            self._txn_step(txn)
        elif not self._pending or self._pending[0][0] is not _Exp.DATA_END:  # the last
            self._next_txn = None
            self._finish(txn)
            self._txn = nxt  # already under way: its replies come next

    def _on_bdat(self, reply: Reply, last: int) -> None:
        txn = self._txn
        assert txn is not None
        if not txn.data_decided:
            if not reply.is_success or last:
                txn.decide(txn.accepted, Outcome(reply, True, "bdat"))
                txn.data_decided = True
                txn.completed = bool(last) and reply.is_success
            elif not self._pipelined:
                self._send_chunks(txn, all_of_them=False)
                return
        self._txn_step(txn)

    def _txn_step(self, txn: Transaction) -> None:
        """Finish the transaction once no reply of its batch is outstanding."""
        if self._pending:
            return
        self._finish(txn)
        if self.config.verify_only:
            # Verifying leaves no transaction open on the server, whatever comes next.
            self._needs_rset = False
            self._command("RSET", _Exp.RSET)
            return
        self._needs_rset = not txn.completed
        self._advance()

    def _finish(self, txn: Transaction) -> None:
        for i, r in enumerate(txn.results):
            if r is None:  # defensive: every path above decides; never lose a recipient
                txn.results[i] = Outcome(
                    Reply.make(451, "4.5.0", "No final reply for this recipient"), False, "data"
                )
        self._events.append(txn.result())
        self._txn = None

    # --- ending -----------------------------------------------------------------------

    def _fail(self, out: Outcome, quit: bool) -> None:
        """End the session: every undecided recipient (queued ones too) gets `out`."""
        for txn in (self._txn, self._next_txn):
            if txn is not None:
                txn.decide_all(out)
                self._events.append(txn.result())
        self._txn = self._next_txn = None
        while self._queue:
            self._events.append(self._queue.popleft().result(out))
        self._end_reason = out
        self._pending.clear()
        self._replies.drop_reply()
        if quit:
            self._quitting = True
            self._phase = _Phase.QUIT
            self._command("QUIT", _Exp.QUIT)
        else:
            self._close(out)

    def _close(self, reason: Outcome | None) -> None:
        self._phase = _Phase.CLOSED
        self._pending.clear()
        self._replies.clear()
        self._quitting = True
        self._events.append(Closed(reason))


# Each reply awaited is named as its stage (the values of _Exp are the Stage names).
_STAGES: dict[_Exp, Stage] = {exp: exp.value for exp in _Exp}

_HANDLERS = {
    _Exp.GREETING: ClientSession._on_greeting,
    _Exp.EHLO: ClientSession._on_ehlo,
    _Exp.HELO: ClientSession._on_helo,
    _Exp.STARTTLS: ClientSession._on_starttls,
    _Exp.AUTH: ClientSession._on_auth,
    _Exp.RSET: ClientSession._on_rset,
    _Exp.MAIL: ClientSession._on_mail,
    _Exp.RCPT: ClientSession._on_rcpt,
    _Exp.DATA: ClientSession._on_data,
    _Exp.DATA_END: ClientSession._on_data_end,
    _Exp.BDAT: ClientSession._on_bdat,
}
