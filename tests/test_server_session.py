"""Properties of the sans-I/O server session: any input, well-formed output, bounded memory.

Behaviour command by command is covered by the dialogue files (tests/dialogs/); these
tests throw generated input at the session and check what must hold for every input.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.smtp.server import (
    NEED_DATA,
    Event,
    MessageComplete,
    ServerSession,
    SessionConfig,
    StartTLS,
)

ENVELOPE = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]*\Z|[2-5][0-9][0-9]\Z")
CONFIG = SessionConfig(hostname="mx.test", starttls=True, auth=True, auth_requires_tls=False,
                       max_message_size=2000, max_errors=1000)


def events(s: ServerSession, data: bytes) -> list[Event]:
    """Feed `data`; the events it makes, every decision answered with the default and
    every STARTTLS handshake taken as done."""
    s.receive_data(data)
    seen = []
    while (ev := s.next_event()) is not NEED_DATA:
        seen.append(ev)
        if ev.needs_decision:
            s.respond(None)
        elif isinstance(ev, StartTLS):
            s.tls_established()
    return seen


def drive(s: ServerSession, data: bytes) -> bytes:
    events(s, data)
    return s.data_to_send()


def assert_well_formed(out: bytes) -> None:
    assert out == b"" or out.endswith(b"\r\n")
    for line in out.split(b"\r\n")[:-1]:
        assert REPLY_LINE.match(line), line


def answers(setup: bytes, data: bytes) -> bytes:
    """A fresh session fed `setup`, then `data`: the replies to `data`, checked to be
    well-formed reply lines."""
    s = ServerSession(CONFIG)
    s.greet()
    drive(s, setup)
    out = drive(s, data)
    assert_well_formed(out)
    return out


commands = st.sampled_from([
    b"EHLO c.test", b"HELO c.test", b"MAIL FROM:<a@b.test>", b"MAIL FROM:<>", b"RCPT TO:<x@y.test>",
    b"RCPT TO:<postmaster>", b"DATA", b"RSET", b"NOOP", b"VRFY x", b"EXPN x", b"HELP", b"QUIT",
    b"STARTTLS", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"AUTH LOGIN", b"BDAT 5", b"BDAT 3 LAST",
    b"hello", b".", b"", b"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME",
    b"RCPT TO:<x@y.test> NOTIFY=NEVER",
])
endings = st.sampled_from([b"\r\n", b"\n", b"\r", b""])


@settings(max_examples=300)
@given(st.lists(st.one_of(st.tuples(commands, endings).map(lambda t: t[0] + t[1]),
                          st.binary(max_size=40)), max_size=30),
       st.integers(1, 64))
def test_any_input_gives_well_formed_replies_and_no_exception(parts: list[bytes],
                                                             chunk: int) -> None:
    s = ServerSession(CONFIG)
    s.greet()
    data = b"".join(parts)
    out = s.data_to_send()
    for i in range(0, len(data), chunk):
        out += drive(s, data[i : i + chunk])
    out += drive(s, b"")
    assert_well_formed(out)


simple = st.sampled_from([b"NOOP", b"RSET", b"HELP", b"VRFY someone", b"EXPN list", b"FOO",
                          b"MAIL FROM:<a@b.test>", b"RCPT TO:<c@d.test>", b"MAIL x", b"EHLO",
                          b"RCPT TO:<bad", b"STARTTLS now", b"AUTH X"])


@settings(max_examples=200)
@given(st.lists(simple, min_size=1, max_size=40))
def test_every_command_line_gets_exactly_one_reply(lines: list[bytes]) -> None:
    s = ServerSession(CONFIG)
    s.greet()
    s.data_to_send()
    drive(s, b"EHLO c.test\r\n")
    out = drive(s, b"".join(line + b"\r\n" for line in lines))
    finals = [ln for ln in out.split(b"\r\n")[:-1] if ln[3:4] != b"-"]
    assert len(finals) == len(lines)


@settings(max_examples=100)
@given(st.lists(st.binary(min_size=1, max_size=5000), max_size=40))
def test_memory_held_stays_within_limits(chunks: list[bytes]) -> None:
    s = ServerSession(CONFIG)
    s.greet()
    limit = CONFIG.command_line_limit + CONFIG.extension_allowance
    for c in chunks:
        drive(s, c)
        assert s.buffered <= limit
        reader = s._reader
        if reader is not None:
            assert len(reader._buf) <= CONFIG.data_line_limit + 2


def test_megabytes_without_line_end_are_answered_and_cut_off() -> None:
    s = ServerSession(SessionConfig(hostname="mx.test", max_errors=3))
    s.greet()
    s.data_to_send()
    out = b""
    for _ in range(200):
        out += drive(s, b"A" * 65536)
        assert s.buffered <= 2048
        if s.closed:
            break
    assert out.startswith((b"500 5.5.2", b"500 Line too long"))
    out += drive(s, b"\r\nNOOP\r\n")
    assert b"250" in out


def test_pipelined_transaction_replies_in_order() -> None:
    s = ServerSession(CONFIG)
    s.greet()
    s.data_to_send()
    out = drive(s, ENVELOPE + b"DATA\r\n"
                   b"Subject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    codes = [ln[:3] for ln in out.split(b"\r\n")[:-1] if ln[3:4] != b"-"]
    assert codes == [b"250", b"250", b"250", b"354", b"250", b"221"]
    assert s.closed


def test_decision_events_block_until_answered() -> None:
    s = ServerSession(CONFIG)
    s.greet()
    s.receive_data(b"EHLO c.test\r\nNOOP\r\n")
    ev = s.next_event()
    assert ev.needs_decision  # type: ignore[union-attr]
    try:
        s.next_event()
    except RuntimeError as exc:
        assert "respond" in str(exc)
    else:
        raise AssertionError("next_event() before respond() must fail")
    s.respond(None)
    assert s.next_event() is NEED_DATA


def test_shutdown_finishes_the_message_in_flight() -> None:
    s = ServerSession(CONFIG)
    s.greet()
    drive(s, ENVELOPE + b"DATA\r\npart")
    s.data_to_send()
    s.shutdown()
    assert not s.closed
    assert any(isinstance(e, MessageComplete) for e in events(s, b"ial\r\n.\r\n"))
    out = s.data_to_send()
    assert out.startswith(b"250 2.0.0") and b"421 4.3.2" in out
    assert s.closed


def test_data_vouches_for_crlf_line_ends_and_bdat_does_not() -> None:
    # MessageComplete.crlf is what the queue stores, so that delivery skips its check of
    # the line ends: only DATA's reader makes every line end CRLF; BDAT's octets are
    # taken as they come, a bare LF included.
    def completes(data: bytes) -> list[MessageComplete]:
        s = ServerSession(CONFIG)
        s.greet()
        return [e for e in events(s, ENVELOPE + data) if isinstance(e, MessageComplete)]

    [by_data] = completes(b"DATA\r\nSubject: x\n\nbare\rends\r\n.\r\n")
    [by_bdat] = completes(b"BDAT 17 LAST\r\nSubject: x\n\nbare\n")
    assert (by_data.crlf, by_bdat.crlf) == (True, False)


def test_timeout_and_idle_shutdown() -> None:
    s = ServerSession(CONFIG)
    s.greet()
    s.data_to_send()
    s.timeout()
    assert s.data_to_send() == b"421 Timeout exceeded, closing connection\r\n" and s.closed
    s = ServerSession(CONFIG)
    s.greet()
    drive(s, b"EHLO c.test\r\n")
    s.shutdown()
    assert s.data_to_send().endswith(b"421 4.3.2 Service shutting down, closing connection\r\n")


# Found by fuzzing (bench/fuzz/fuzz_session.py): an address error quoted the client's
# bytes into the reply as they were. A CR in an address literal made the reply invalid
# (ReplyError escaped the session: the connection died without an answer), and NUL or
# other control characters went back on the wire and into logs.
def test_cr_in_an_address_literal_gets_a_501_not_an_exception() -> None:
    out = answers(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n",
                  b"RCPT TO:<a@[IPv6:\r]>\r\nMAIL FROM:<x@[IPv6:1\r2]>\r\nNOOP\r\n")
    lines = out.split(b"\r\n")
    assert lines[0].startswith(b"501 5.1.3") and b"\\x0d" in lines[0]
    assert lines[1].startswith(b"503 5.5.1")  # nested MAIL: the session goes on
    assert lines[2].startswith(b"250 2.0.0")


def test_control_characters_of_an_address_are_not_reflected() -> None:
    out = answers(b"EHLO c.test\r\n",
                  b"MAIL FROM:<a@[1\x00\x1b[31m.2]>\r\nMAIL FROM:<a@[1\xc2\x85.2]> SMTPUTF8\r\n")
    assert out.count(b"501 5.1.7") == 2
    assert b"\x00" not in out and b"\x1b" not in out and b"\xc2\x85" not in out
    assert b"\\x00\\x1b[31m" in out and b"\\x85" in out


def test_ehlo_name_with_c1_control_characters_is_refused() -> None:
    """Found by fuzzing: EHLO/HELO took any non-ASCII character, C1 controls included
    (U+0085 is a line break to Python, U+009B a terminal's CSI), and echoed it in the
    250 reply; the name also goes into logs and the Received header."""
    for name in ("a\u0085b.test", "a\u009b2Jb.test", "\u0080"):
        s = ServerSession(CONFIG)
        s.greet()
        s.data_to_send()
        for verb in ("EHLO", "HELO"):
            out = drive(s, f"{verb} {name}\r\n".encode())
            assert out.startswith(b"501 ") and b"Syntax" in out, out
            assert name.encode() not in out
    s = ServerSession(CONFIG)
    s.greet()
    s.data_to_send()
    out = drive(s, "EHLO bücher.test\r\n".encode())  # U-labels are still fine
    assert out.startswith("250-mx.test Hello bücher.test\r\n".encode())
