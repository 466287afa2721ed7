"""Fuzz the SMTP server session (`mailgate.smtp.server.ServerSession`) with client bytes.

Input: three header bytes, then the bytes a client sends.

- byte 0, configuration: 1 starttls, 2 auth, 4 auth without TLS, 8 bare LF rejected,
  16 no CHUNKING, 32 no SMTPUTF8, 64 no DSN, 128 implicit TLS (session starts with TLS)
- byte 1, policy: 1 refuse RCPT (550), 2 refuse MAIL (550), 4 refuse AUTH (535),
  8 refuse the message (554), 16 greet with 554, 32 the TLS handshake "fails" (EOF),
  64 shutdown() half way, 128 small limits (2000-octet messages, 3 errors)
- byte 2: chunk size the bytes arrive in (0: all at once)

Checked beyond "no exception": the output is only well-formed reply lines, and no
control character a client sent comes back in a reply; the buffered input stays bounded;
the content events of a message add up to the size its completion reports; the session
ends closed after EOF.
"""

from __future__ import annotations

from fuzzlib import FuzzFinding, allowed, check_replies

from mailgate.codes.reply import Reply
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

REFUSE_RCPT = Reply.make(550, "5.1.1", "No such user")
REFUSE_MAIL = Reply.make(550, "5.7.1", "Sender blocked")
REFUSE_AUTH = Reply.make(535, "5.7.8", "Authentication credentials invalid")
REFUSE_MESSAGE = Reply.make(554, "5.7.1", "Message refused")
REFUSE_SERVICE = Reply.make(554, None, "mx.test No service")


def _config(flags: int, small: bool) -> SessionConfig:
    return SessionConfig(
        hostname="mx.test",
        starttls=bool(flags & 1),
        auth=bool(flags & 2),
        auth_requires_tls=not flags & 4,
        bare_newlines="reject" if flags & 8 else "normalize",
        chunking=not flags & 16,
        smtputf8=not flags & 32,
        dsn=not flags & 64,
        max_message_size=2000 if small else 25 * 1024 * 1024,
        max_errors=3 if small else 1000,
    )


class _Driver:
    def __init__(self, session: ServerSession, policy: int) -> None:
        self.s = session
        self.policy = policy
        self.out = bytearray()
        self.in_message = False
        self.message_size = 0
        self.closed_seen = False

    def drain(self) -> None:
        s, policy = self.s, self.policy
        while (ev := s.next_event()) is not NEED_DATA:
            if self.closed_seen:
                raise FuzzFinding(f"event {ev!r} after the session ended")
            if isinstance(ev, MessageStart):
                if self.in_message:
                    raise FuzzFinding("MessageStart inside a message")
                self.in_message, self.message_size = True, 0
            elif isinstance(ev, MessageData):
                if not self.in_message:
                    raise FuzzFinding("MessageData outside a message")
                self.message_size += len(ev.data)
            elif isinstance(ev, MessageAborted | Reset):
                self.in_message = False
            elif isinstance(ev, MessageComplete):
                if not self.in_message:
                    raise FuzzFinding("MessageComplete outside a message")
                if ev.size != self.message_size:
                    raise FuzzFinding(
                        f"MessageComplete says {ev.size} octets, data events gave "
                        f"{self.message_size}"
                    )
                if ev.size > s.config.max_message_size:
                    raise FuzzFinding(f"a {ev.size}-octet message passed the size limit")
                self.in_message = False
                s.respond(REFUSE_MESSAGE if policy & 8 else None)
            elif isinstance(ev, StartTLS):
                if policy & 32:
                    s.receive_data(b"")  # the handshake failed: the shell closes
                else:
                    s.tls_established()
            elif isinstance(ev, MailFrom):
                s.respond(REFUSE_MAIL if policy & 2 else None)
            elif isinstance(ev, RcptTo):
                s.respond(REFUSE_RCPT if policy & 1 else None)
            elif isinstance(ev, AuthAttempt):
                s.respond(REFUSE_AUTH if policy & 4 else None)
            elif isinstance(ev, Ehlo):
                s.respond(None)
            elif isinstance(ev, ConnectionLost | SessionClosed | Quit):
                self.in_message = False
                self.closed_seen = True
            elif ev.needs_decision:
                s.respond(None)
        self.out += s.data_to_send()
        limit = max(s.config.auth_line_limit,
                    s.config.command_line_limit + s.config.extension_allowance)
        if s.buffered > limit:
            raise FuzzFinding(f"{s.buffered} octets buffered after draining (limit {limit})")


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    flags, policy, chunk = data[0], data[1], data[2]
    wire = data[3:]
    session = ServerSession(_config(flags, bool(policy & 128)), tls_active=bool(flags & 128))
    session.greet(REFUSE_SERVICE if policy & 16 else None)
    d = _Driver(session, policy)
    d.drain()
    step = chunk or len(wire) or 1
    half = len(wire) // 2
    for i in range(0, len(wire), step):
        if policy & 64 and i <= half < i + step:
            session.shutdown()
            d.drain()
        session.receive_data(wire[i : i + step])
        d.drain()
    session.receive_data(b"")
    d.drain()
    if not session.closed:
        raise FuzzFinding("the session is not closed after EOF")
    check_replies(bytes(d.out), allow_controls=allowed("session-controls"))


if __name__ == "__main__":
    from fuzzlib import main

    main("fuzz_session")
