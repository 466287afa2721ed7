"""The server side of SMTP as a pure state machine (bytes in, events and bytes out).

Usage, h11-style::

    s = ServerSession(SessionConfig(hostname="mx.example.test"))
    s.greet()
    s.receive_data(data)                 # b"" means the client closed
    while (ev := s.next_event()) is not NEED_DATA:
        if ev.needs_decision:
            s.respond(policy(ev))        # a Reply, or None for the protocol's default
        ...
    write(s.data_to_send())

The session decides everything the protocol decides (framing, limits, sequence,
syntax) and nothing that policy decides: for EHLO/HELO, MAIL, RCPT, AUTH and the end of
a message it emits an event and waits for the shell's `respond()`. Replies to pipelined
commands collect in the output buffer and leave together (RFC 2920).
"""

from __future__ import annotations

import enum
import functools
from collections import deque
from collections.abc import Callable

from mailgate.codes.reply import Reply
from mailgate.smtp import replies as R
from mailgate.smtp._common import NEED_DATA, ProtocolUsageError
from mailgate.smtp._common import NeedData as _NeedData
from mailgate.smtp.commands import (
    parse_bdat,
    parse_mail,
    parse_rcpt,
    split_command,
    valid_helo,
)
from mailgate.smtp.framing import ChunkReader, DataReader
from mailgate.smtp.sasl import Exchange
from mailgate.smtp.server_events import (
    AuthAttempt,
    ConnectionLost,
    Ehlo,
    Event,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageData,
    MessageStart,
    Quit,
    RcptTo,
    Reset,
    SessionClosed,
    SessionConfig,
    SessionObserver,
    StartTLS,
)

__all__ = [
    "NEED_DATA",
    "AuthAttempt",
    "ConnectionLost",
    "Ehlo",
    "Event",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "MessageData",
    "MessageStart",
    "ProtocolUsageError",
    "Quit",
    "RcptTo",
    "Reset",
    "ServerSession",
    "SessionClosed",
    "SessionConfig",
    "SessionObserver",
    "StartTLS",
]


class _Phase(enum.Enum):
    START = "start"  # greeting not yet sent
    COMMAND = "command"
    DATA = "data"
    BDAT = "bdat"
    AUTH = "auth"
    TLS = "tls"  # 220 sent for STARTTLS, waiting for the handshake
    CLOSED = "closed"


_UNIMPLEMENTED = frozenset({"TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML", "XCLIENT", "XFORWARD"})
# Replies as sent, shared by every session of the process: the greeting, 250 OK, 354 and
# the rest go to every client alike, and formatting them anew was a noticeable part of a
# short session's cost. Replies made once (a queue id) fill it up; it then starts over.
_WIRE: dict[tuple[Reply, bool], bytes] = {}
_WIRE_MAX = 256


class ServerSession:
    """One SMTP server conversation. See the module docstring for the calling pattern."""

    def __init__(self, config: SessionConfig | None = None, *, tls_active: bool = False,
                 observer: SessionObserver | None = None) -> None:
        self.config = config or SessionConfig()
        self._observer = observer
        self.tls_active = tls_active  # implicit TLS (RFC 8314) starts with it on
        self._phase = _Phase.START
        self._in = bytearray()
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._pending: Event | None = None
        self._eof = False
        self._discarding = False  # skipping the rest of an over-long command line
        self._errors = 0
        self._refusing: Reply | None = None  # greeting refused (554): only QUIT works
        self._shutting_down = False
        self.helo: str | None = None
        self.esmtp = False
        self.authenticated: str | None = None
        self._mail: MailFrom | None = None
        self.recipients = 0
        self._rcpt_tried = False  # a RCPT was given in this transaction (DATA: 503 or 554)
        self._reader: DataReader | None = None
        self._chunks: ChunkReader | None = None  # BDAT was used in this transaction
        self._sasl: Exchange | None = None  # the AUTH exchange under way

    # --- the shell's side ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def in_transaction(self) -> bool:
        return self._mail is not None

    @property
    def in_data(self) -> bool:
        """True while message content is being received (the shell's data timeout)."""
        return self._phase in (_Phase.DATA, _Phase.BDAT)

    @property
    def buffered(self) -> int:
        """Unparsed input held, in octets (the shell may pause reading when large)."""
        return len(self._in)

    def greet(self, reply: Reply | None = None) -> None:
        """Queue the greeting: 220 by default; 554 refuses service, 521 closes."""
        if self._phase is not _Phase.START:
            raise ProtocolUsageError("greet() is called once, first.")
        reply = reply or _greeting(self.config.hostname, self.config.banner)
        self._send(reply)
        if reply.code == 521:
            self._phase = _Phase.CLOSED
            return
        if reply.code == 554:
            self._refusing = reply
        self._phase = _Phase.COMMAND

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; `b""` when it closed the connection."""
        if not data:
            self._eof = True
            return
        if self._phase in (_Phase.CLOSED, _Phase.TLS):
            return  # nothing more is read; pipelined bytes after STARTTLS are discarded
        self._in += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | _NeedData:
        if self._pending is not None:
            raise ProtocolUsageError(f"answer {self._pending!r} with respond() first.")
        while True:
            if self._events:
                ev = self._events.popleft()
                if ev.needs_decision:
                    self._pending = ev
                return ev
            if self._phase is _Phase.CLOSED or self._phase is _Phase.TLS:
                if self._eof and self._phase is _Phase.TLS:
                    self._phase = _Phase.CLOSED
                    return ConnectionLost()
                return NEED_DATA
            if not self._step():
                if self._eof:
                    self._phase = _Phase.CLOSED
                    if self._mail is not None or self._reader is not None:
                        self._events.append(Reset())
                    self._events.append(ConnectionLost())
                    continue
                return NEED_DATA

    def respond(self, reply: Reply | None = None) -> None:
        """Answer the event that needs a decision; None takes the protocol's default."""
        ev = self._pending
        if ev is None:
            raise ProtocolUsageError("no event is waiting for a decision.")
        self._pending = None
        if isinstance(ev, Ehlo):
            self._decide_ehlo(ev, reply)
        elif isinstance(ev, MailFrom):
            reply = reply or R.SENDER_OK
            if reply.code // 100 == 2:
                self._mail = ev
            self._send(reply)
        elif isinstance(ev, RcptTo):
            reply = reply or R.RECIPIENT_OK
            if reply.code // 100 == 2:
                self.recipients += 1
            self._send(reply)
        elif isinstance(ev, MessageComplete):
            self._send(reply or R.OK)
            self._end_transaction()
        elif isinstance(ev, AuthAttempt):
            reply = reply or R.AUTH_OK
            if reply.code == 235:
                self.authenticated = ev.username
            # Back to commands before sending: a failure that reaches max_errors closes
            # the session in _send(), and that must stick.
            self._phase = _Phase.COMMAND
            self._send(reply)

    def tls_established(self) -> None:
        """The handshake after STARTTLS succeeded: start over, as RFC 3207 4.2 says."""
        if self._phase is not _Phase.TLS:
            raise ProtocolUsageError("tls_established() follows a StartTLS event.")
        self.tls_active = True
        self._in.clear()
        self.helo = None
        self.esmtp = False
        self.authenticated = None
        self._phase = _Phase.COMMAND

    def shutdown(self) -> None:
        """Stop: 421 4.3.2 now when idle, else after the message in flight is answered."""
        self._shutting_down = True
        if self._phase is _Phase.COMMAND and self._pending is None and not self._in:
            self._close(R.SHUTDOWN)

    def timeout(self) -> None:
        """The client was idle too long: 421 4.4.2 and close."""
        if self._phase is not _Phase.CLOSED:
            self._close(R.TIMEOUT)

    # --- output -------------------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        key = (reply, self.esmtp)
        wire = _WIRE.get(key)
        if wire is None:
            wire = reply.to_bytes(enhanced=self.esmtp)
            if len(_WIRE) >= _WIRE_MAX:
                _WIRE.clear()
            _WIRE[key] = wire
        self._out += wire
        if self._observer is not None:
            self._observer.reply(reply.code)
        if reply.code == 421:
            # 421 always closes the channel (RFC 5321 3.8), whoever chose to send it.
            if self._phase is not _Phase.CLOSED:
                self._phase = _Phase.CLOSED
                self._in.clear()
                self._events.append(SessionClosed(reply))
            return
        if reply.code >= 400 and reply.code != 452:
            self._errors += 1
            if self._errors >= self.config.max_errors and self._phase is not _Phase.CLOSED:
                self._close(R.TOO_MANY_ERRORS)

    def _close(self, reply: Reply) -> None:
        if reply.code != 421:
            raise ProtocolUsageError("a session closes itself only with a 421 reply.")
        self._send(reply)

    # --- input --------------------------------------------------------------------

    def _step(self) -> bool:
        """Parse one unit of input; False when more bytes are needed."""
        phase = self._phase
        if phase is _Phase.COMMAND or phase is _Phase.AUTH:
            return self._step_line()
        if phase is _Phase.DATA:
            return self._step_data()
        if phase is _Phase.BDAT:
            return self._step_bdat()
        return False

    def _line_limit(self) -> int:
        if self._phase is _Phase.AUTH:
            return self.config.auth_line_limit
        return self.config.command_line_limit + self.config.extension_allowance

    def _step_line(self) -> bool:
        buf = self._in
        nl = buf.find(b"\n")
        limit = self._line_limit()
        if nl == -1:
            if len(buf) > limit:
                # Over-long line: answer once, then skip to its end without buffering it.
                if not self._discarding:
                    self._discarding = True
                    self._line_error(too_long=True)
                del buf[:]
            return False
        raw = bytes(buf[:nl])
        del buf[: nl + 1]
        if self._discarding:
            self._discarding = False
            return True
        if len(raw) + 1 > limit:
            self._line_error(too_long=True)
            return True
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        elif self.config.bare_newlines == "reject":
            self._send(R.BARE_LF_COMMAND)
            return True
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._send(R.BAD_UTF8_COMMAND)
            return True
        if self._phase is _Phase.AUTH:
            self._auth_line(line)
        else:
            self._command(line)
        return True

    def _line_error(self, too_long: bool) -> None:
        if self._phase is _Phase.AUTH:
            self._phase = _Phase.COMMAND
            self._send(R.AUTH_LINE_TOO_LONG)
        else:
            self._send(R.LINE_TOO_LONG)

    # --- commands -----------------------------------------------------------------

    def _command(self, line: str) -> None:
        verb, arg = split_command(line)
        if self._observer is not None:
            self._observer.command(verb)
        if self._shutting_down:
            self._close(R.SHUTDOWN)
            return
        if self._refusing is not None and verb != "QUIT":
            self._send(Reply.make(503, "5.5.1", "Service refused; only QUIT is accepted"))
            return
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._send(R.NOT_IMPLEMENTED if verb in _UNIMPLEMENTED else R.UNKNOWN_COMMAND)
            return
        handler(self, arg)

    def _no_args(self, arg: str) -> bool:
        if arg.strip():
            self._send(R.NO_ARGS_ALLOWED)
            return False
        return True

    def _cmd_ehlo(self, arg: str, extended: bool = True) -> None:
        domain = arg.strip()
        if not valid_helo(domain):
            verb = "EHLO" if extended else "HELO"
            self._send(Reply.make(501, "5.5.4", f"Syntax: {verb} hostname"))
            return
        self._events.append(Ehlo(domain, extended))

    def _cmd_helo(self, arg: str) -> None:
        self._cmd_ehlo(arg, extended=False)

    def _decide_ehlo(self, ev: Ehlo, reply: Reply | None) -> None:
        if reply is not None and reply.code // 100 != 2:
            self._send(reply)
            return
        if self._mail is not None:
            self._events.append(Reset())
        self._reset_transaction()
        self.helo = ev.domain
        self.esmtp = ev.extended
        if reply is not None:
            self._send(reply)
            return
        first = f"{self.config.hostname} Hello {ev.domain}"
        if not ev.extended:
            self._send(Reply.make(250, None, first))
            return
        self._send(Reply(250, None, (first, *_extensions(self.config, self.tls_active,
                                                          self._auth_offered()))))

    def extensions(self) -> list[str]:
        """The EHLO keywords offered now (they change with TLS and AUTH)."""
        return list(_extensions(self.config, self.tls_active, self._auth_offered()))

    def _auth_offered(self) -> bool:
        c = self.config
        return c.auth and (self.tls_active or not c.auth_requires_tls) and not self.authenticated

    def _cmd_mail(self, arg: str) -> None:
        if self.helo is None:
            self._send(R.NEED_HELO)
            return
        if self._mail is not None:
            self._send(R.NESTED_MAIL)
            return
        parsed = parse_mail(
            arg, esmtp=self.esmtp, smtputf8=self.config.smtputf8, dsn=self.config.dsn,
            auth=self._auth_offered() or self.authenticated is not None,
            max_size=self.config.max_message_size,
        )
        if isinstance(parsed, Reply):
            self._send(parsed)
            return
        self._events.append(MailFrom(*parsed))

    def _cmd_rcpt(self, arg: str) -> None:
        if self._mail is None:
            self._send(R.NEED_MAIL if self.helo is not None else R.NEED_HELO)
            return
        self._rcpt_tried = True
        parsed = parse_rcpt(arg, esmtp=self.esmtp, utf8=self._mail.params.smtputf8,
                            dsn=self.config.dsn)
        if isinstance(parsed, Reply):
            self._send(parsed)
            return
        if self.recipients >= self.config.max_recipients:
            self._send(R.TOO_MANY_RECIPIENTS)
            return
        self._events.append(RcptTo(*parsed))

    def _cmd_data(self, arg: str) -> None:
        if not self._no_args(arg):
            return
        if self._mail is None:
            self._send(R.NEED_MAIL_FOR_DATA if self.helo is not None else R.NEED_HELO)
            return
        if self._chunks is not None:
            self._send(R.DATA_AFTER_BDAT)
            return
        if self.recipients == 0:
            # RFC 5321 3.3: no RCPT at all is a bad sequence (503); RCPTs that were all
            # refused leave no valid recipients (554).
            self._send(R.NO_VALID_RECIPIENTS if self._rcpt_tried else R.NEED_RCPT)
            return
        self._send(R.START_DATA)
        self._reader = DataReader(
            self.config.max_message_size, self.config.data_line_limit, self.config.bare_newlines
        )
        self._phase = _Phase.DATA
        self._events.append(MessageStart(chunking=False))

    def _cmd_bdat(self, arg: str) -> None:
        if not (self.config.chunking and self.esmtp):
            self._send(R.UNKNOWN_COMMAND)
            return
        parsed = parse_bdat(arg)
        if parsed is None:
            self._send(Reply.make(501, "5.5.4", "Syntax: BDAT size [LAST]"))
            return
        size, last = parsed
        self._phase = _Phase.BDAT
        if self._mail is None or self.recipients == 0:
            # RFC 3030 2: read the chunk, then refuse it. (With no recipient, BDAT was
            # not used in this transaction: nothing is overwritten.)
            self._chunks = ChunkReader(0)
            self._chunks.chunk(size, last, discard=True)
            return
        if self._chunks is None:
            self._chunks = ChunkReader(self.config.max_message_size)
            self._events.append(MessageStart(chunking=True))
        self._chunks.chunk(size, last)

    def _cmd_rset(self, arg: str) -> None:
        if not self._no_args(arg):
            return
        if self._mail is not None:
            self._events.append(Reset())
        self._reset_transaction()
        self._send(R.RESET_OK)

    def _cmd_noop(self, arg: str) -> None:
        self._send(R.NOOP_OK)

    def _cmd_quit(self, arg: str) -> None:
        if not self._no_args(arg):
            return
        self._send(R.CLOSING)
        self._phase = _Phase.CLOSED
        self._in.clear()
        if self._mail is not None:
            self._events.append(Reset())
        self._events.append(Quit())

    def _cmd_vrfy(self, arg: str) -> None:
        if not arg.strip():
            self._send(Reply.make(501, "5.5.4", "Syntax: VRFY address"))
            return
        self._send(R.VRFY_CANNOT)

    def _cmd_expn(self, arg: str) -> None:
        self._send(R.NOT_IMPLEMENTED)

    def _cmd_help(self, arg: str) -> None:
        self._send(R.HELP)

    def _cmd_starttls(self, arg: str) -> None:
        if not self._no_args(arg):
            return
        if self.tls_active:
            self._send(R.TLS_ALREADY)
            return
        if not self.config.starttls:
            self._send(R.TLS_NOT_AVAILABLE)
            return
        if self.helo is None:
            self._send(R.NEED_HELO)
            return
        if self._mail is not None:
            self._send(Reply.make(503, "5.5.1", "STARTTLS not allowed during a mail transaction"))
            return
        self._send(R.READY_TLS)
        # Whatever the client pipelined after STARTTLS was sent in plaintext: drop it,
        # never run it after the handshake (CVE-2011-0411).
        self._in.clear()
        self._phase = _Phase.TLS
        self._events.append(StartTLS())

    def _cmd_auth(self, arg: str) -> None:
        c = self.config
        if not c.auth:
            self._send(R.AUTH_NOT_ENABLED)
            return
        if self.helo is None or not self.esmtp:
            self._send(R.NEED_HELO)
            return
        if self.authenticated:
            self._send(R.AUTH_ALREADY)
            return
        if self._mail is not None:
            self._send(R.AUTH_IN_TRANSACTION)
            return
        parts = arg.split()
        if not parts or len(parts) > 2:
            self._send(Reply.make(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return
        mech = parts[0].upper()
        if mech not in c.auth_mechanisms:
            self._send(R.AUTH_UNKNOWN_MECHANISM)
            return
        if c.auth_requires_tls and not self.tls_active:
            self._send(R.AUTH_NEEDS_TLS)
            return
        self._sasl = Exchange(mech)
        self._phase = _Phase.AUTH
        if len(parts) == 2:
            self._auth_line(parts[1], initial=True)
        else:
            self._out += self._sasl.start()

    def _auth_line(self, line: str, initial: bool = False) -> None:
        sasl = self._sasl
        assert sasl is not None
        got = sasl.step(line, initial)
        if isinstance(got, bytes):
            self._out += got  # the next challenge
        elif isinstance(got, Reply):
            self._phase = _Phase.COMMAND
            self._send(got)
        else:
            self._events.append(AuthAttempt(sasl.mechanism, *got))

    # --- message content ------------------------------------------------------------

    def _step_data(self) -> bool:
        if not self._in:
            return False
        reader = self._reader
        assert reader is not None
        chunk = bytes(self._in)
        self._in.clear()
        content, rest = reader.feed(chunk)
        if content:
            self._events.append(MessageData(content))
        if rest is None:
            return True
        self._in += rest
        self._phase = _Phase.COMMAND
        self._reader = None
        if reader.error is not None:
            self._events.append(MessageAborted(reader.error))
            self._send(reader.error)
            self._end_transaction()
        else:
            self._events.append(MessageComplete(reader.size, crlf=True))
        return True

    def _step_bdat(self) -> bool:
        reader = self._chunks
        assert reader is not None
        if reader.left:
            if not self._in:
                return False
            error = reader.error
            piece = reader.feed(self._in)
            if piece is not None:
                self._events.append(MessageData(piece))
            elif reader.error is not error:
                self._events.append(MessageAborted(R.SIZE_EXCEEDED))
            if reader.left:
                return True
        # chunk complete
        self._phase = _Phase.COMMAND
        if reader.discarding:
            if reader.error is not None:
                self._send(reader.error)
                self._end_transaction()
            else:
                self._chunks = None
                self._send(R.BDAT_NO_RECIPIENTS)
            return True
        if reader.last:
            self._events.append(MessageComplete(reader.size))
        else:
            self._send(Reply.make(250, "2.0.0", f"{reader.size} octets received"))
        return True

    def _reset_transaction(self) -> None:
        self._mail = None
        self.recipients = 0
        self._rcpt_tried = False
        self._reader = None
        self._chunks = None

    def _end_transaction(self) -> None:
        self._reset_transaction()
        if self._shutting_down and self._phase is _Phase.COMMAND:
            self._close(R.SHUTDOWN)


@functools.lru_cache(maxsize=64)
def _greeting(hostname: str, banner: str) -> Reply:
    return Reply.make(220, None, f"{hostname} {banner}")


@functools.lru_cache(maxsize=64)
def _extensions(c: SessionConfig, tls_active: bool, auth_offered: bool) -> tuple[str, ...]:
    """The EHLO keywords for a configuration and the session's TLS and AUTH state."""
    ext = ["PIPELINING", f"SIZE {c.max_message_size}", "8BITMIME", "ENHANCEDSTATUSCODES"]
    if c.smtputf8:
        ext.append("SMTPUTF8")
    if c.dsn:
        ext.append("DSN")
    if c.chunking:
        ext.append("CHUNKING")
    if c.starttls and not tls_active:
        ext.append("STARTTLS")
    if auth_offered:
        ext.append("AUTH " + " ".join(c.auth_mechanisms))
    return tuple(ext)


_HANDLERS: dict[str, Callable[[ServerSession, str], None]] = {
    "EHLO": ServerSession._cmd_ehlo,
    "HELO": ServerSession._cmd_helo,
    "MAIL": ServerSession._cmd_mail,
    "RCPT": ServerSession._cmd_rcpt,
    "DATA": ServerSession._cmd_data,
    "BDAT": ServerSession._cmd_bdat,
    "RSET": ServerSession._cmd_rset,
    "NOOP": ServerSession._cmd_noop,
    "QUIT": ServerSession._cmd_quit,
    "VRFY": ServerSession._cmd_vrfy,
    "EXPN": ServerSession._cmd_expn,
    "HELP": ServerSession._cmd_help,
    "STARTTLS": ServerSession._cmd_starttls,
    "AUTH": ServerSession._cmd_auth,
}

