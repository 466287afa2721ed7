"""The sans-I/O SMTP client: scripted servers as data, and the client against ServerSession."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.codes.reply import Reply
from mailgate.smtp import server as srvmod
from mailgate.smtp.address import Address
from mailgate.smtp.client import (
    CONNECTION_LOST,
    NEED_DATA,
    TIMED_OUT,
    Capabilities,
    ClientConfig,
    ClientSession,
    Closed,
    Credentials,
    Envelope,
    Established,
    Event,
    Idle,
    MessageResult,
    Outcome,
    ProtocolUsageError,
    Recipient,
    StartTLS,
    encode_xtext,
)
from mailgate.smtp.params import decode_xtext

EHLO_FULL = (
    b"250-mx.example.test Hello\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-DSN\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n"
)
EHLO_PLAIN = b"250-mx.example.test\r\n250 8BITMIME\r\n"  # no PIPELINING, no SIZE
GREETING = b"220 mx.example.test ESMTP\r\n"
CONTENT = b"Subject: hi\r\n\r\nHello\r\n.dot line\r\n"


def env(*rcpts: str, sender: str = "a@example.org") -> Envelope:
    return Envelope.make(sender, list(rcpts) or ["b@example.net"])


def drain(c: ClientSession) -> list[Event]:
    out: list[Event] = []
    while (ev := c.next_event()) is not NEED_DATA:
        assert isinstance(ev, Event)
        out.append(ev)
    return out


def feed(c: ClientSession, data: bytes) -> list[Event]:
    c.receive_data(data)
    return drain(c)


def results(events: Sequence[Event]) -> list[MessageResult]:
    return [e for e in events if isinstance(e, MessageResult)]


def outcomes(events: Sequence[Event]) -> list[list[tuple[int, str | None, bool]]]:
    """Per message: (code, enhanced, remote) per recipient."""
    return [
        [(r.outcome.reply.code, r.outcome.reply.enhanced, r.outcome.remote) for r in m.results]
        for m in results(events)
    ]


def closed(events: list[Event]) -> Closed:
    found = [e for e in events if isinstance(e, Closed)]
    assert len(found) == 1, events
    return found[0]


def ready(config: ClientConfig | None = None, ehlo: bytes = EHLO_FULL) -> ClientSession:
    """A client past greeting and EHLO (no TLS policy unless the config says so)."""
    c = ClientSession(config or ClientConfig(helo_name="c.example", tls="never"))
    feed(c, GREETING)
    assert c.data_to_send() == b"EHLO c.example\r\n"
    evs = feed(c, ehlo)
    assert any(isinstance(e, Established) for e in evs)
    return c


# --- greeting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting", "quits"),
    [(b"554 5.7.1 No SMTP service here\r\n", True), (b"521 5.3.2 Does not accept mail\r\n", False),
     (b"421 4.3.2 Too busy\r\n", False), (b"450 try later\r\n", True)],
)
def test_greeting_refused(greeting: bytes, quits: bool) -> None:
    c = ClientSession(ClientConfig(helo_name="c.example"))
    c.send(env("x@example.net", "y@example.net"), CONTENT)
    evs = feed(c, greeting)
    code = int(greeting[:3])
    assert outcomes(evs) == [[(code, outcomes(evs)[0][0][1], True)] * 2]
    assert results(evs)[0].results[0].outcome.stage == "greeting"
    if quits:
        assert c.data_to_send() == b"QUIT\r\n"
        assert not any(isinstance(e, Closed) for e in evs)
        assert c.awaiting == "quit"
        ev = closed(feed(c, b"221 bye\r\n"))
    else:
        assert c.data_to_send() == b""
        ev = closed(evs)
    assert ev.reason is not None and ev.reason.reply.code == code and ev.reason.remote
    assert c.closed


def test_greeting_that_is_not_a_refusal_is_a_protocol_error() -> None:
    c = ClientSession()
    c.send(env(), CONTENT)
    evs = feed(c, b"250 hello\r\n")
    assert outcomes(evs) == [[(451, "4.5.0", False)]]
    assert closed(evs).reason is not None


def test_multiline_greeting_and_split_packets() -> None:
    c = ClientSession(ClientConfig(helo_name="c.example", tls="never"))
    for piece in (b"220-mx.exa", b"mple.test\r\n22", b"0 ESMTP\r", b"\n"):
        assert c.data_to_send() == b""
        feed(c, piece)
    assert c.data_to_send() == b"EHLO c.example\r\n"


# --- EHLO / HELO ----------------------------------------------------------------------


def test_capabilities_parsing() -> None:
    from mailgate.codes.reply import parse_reply

    caps = Capabilities.from_ehlo(parse_reply(
        "250-mx Hello\n250-pipelining\n250-SIZE 0\n250-AUTH=LOGIN PLAIN\n250-AUTH CRAM-MD5 plain\n"
        "250-STARTTLS\n250 DSN"
    ))
    assert caps.esmtp and caps.pipelining and caps.size and caps.size_limit is None
    assert caps.auth == {"LOGIN", "PLAIN", "CRAM-MD5"}
    assert caps.starttls and caps.dsn and not caps.chunking and not caps.smtputf8
    caps = Capabilities.from_ehlo(parse_reply("250-mx\n250 SIZE 1000"))
    assert caps.size_limit == 1000


@pytest.mark.parametrize("refusal", [b"500 5.5.1 What?\r\n", b"502 Not implemented\r\n"])
def test_ehlo_falls_back_to_helo(refusal: bytes) -> None:
    c = ClientSession(ClientConfig(helo_name="c.example", tls="never"))
    feed(c, GREETING)
    assert c.data_to_send() == b"EHLO c.example\r\n"
    feed(c, refusal)
    assert c.data_to_send() == b"HELO c.example\r\n"
    evs = feed(c, b"250 mx.example.test\r\n")
    est = [e for e in evs if isinstance(e, Established)]
    assert est and not est[0].capabilities.esmtp
    c.send(env(), CONTENT)
    # No PIPELINING, no parameters: one command at a time.
    assert c.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    feed(c, b"250 ok\r\n")
    assert c.data_to_send() == b"RCPT TO:<b@example.net>\r\n"
    # 8-bit content cannot go to a HELO server (RFC 6152): refused locally, no MAIL.
    c.send(env(), "Subject: é\r\n\r\n".encode())
    feed(c, b"250 ok\r\n")
    assert c.data_to_send() == b"DATA\r\n"
    feed(c, b"354 go\r\n")
    assert c.data_to_send().endswith(b"\r\n.\r\n")
    evs = feed(c, b"250 queued\r\n")
    assert outcomes(evs) == [[(250, None, True)], [(554, "5.6.3", False)]]


def test_ehlo_refused_otherwise_is_an_outcome() -> None:
    c = ClientSession()
    c.send(env(), CONTENT)
    feed(c, GREETING)
    c.data_to_send()
    evs = feed(c, b"550 5.7.1 Go away\r\n")
    assert outcomes(evs) == [[(550, "5.7.1", True)]]
    assert results(evs)[0].results[0].outcome.stage == "ehlo"
    assert c.data_to_send() == b"QUIT\r\n"
    assert closed(feed(c, b"")).reason is not None  # closing without 221 is fine


# --- STARTTLS -------------------------------------------------------------------------


def test_starttls_flow_discards_injected_replies() -> None:
    c = ClientSession(ClientConfig(helo_name="c.example"))  # tls="may" is the default
    feed(c, GREETING)
    c.data_to_send()
    evs = feed(c, b"250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
    assert not evs
    assert c.data_to_send() == b"STARTTLS\r\n"
    # A man in the middle appends a reply after 220: it must not survive the handshake.
    evs = feed(c, b"220 2.0.0 Go ahead\r\n250 injected\r\n")
    assert evs == [StartTLS()]
    assert c.awaiting == "tls"
    feed(c, b"250 more injected\r\n")  # read before the handshake: ignored
    c.tls_established()
    assert c.data_to_send() == b"EHLO c.example\r\n"
    evs = feed(c, b"250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n")
    est = [e for e in evs if isinstance(e, Established)]
    assert est == [Established(est[0].capabilities, tls=True, authenticated=False)]
    assert est[0].capabilities.auth == {"PLAIN"}
    assert any(isinstance(e, Idle) for e in evs)
    c.quit()
    assert c.data_to_send() == b"QUIT\r\n"
    assert closed(feed(c, b"221 bye\r\n")).reason is None


def test_starttls_required_but_not_offered() -> None:
    c = ClientSession(ClientConfig(tls="require"))
    c.send(env(), CONTENT)
    feed(c, GREETING)
    c.data_to_send()
    evs = feed(c, b"250-mx\r\n250 PIPELINING\r\n")
    assert outcomes(evs) == [[(451, "4.7.4", False)]]
    assert c.data_to_send() == b"QUIT\r\n"


def test_starttls_required_after_helo_fallback() -> None:
    c = ClientSession(ClientConfig(tls="require"))
    c.send(env(), CONTENT)
    feed(c, GREETING)
    feed(c, b"502 no\r\n")
    evs = feed(c, b"250 mx\r\n")
    assert outcomes(evs) == [[(451, "4.7.4", False)]]


def test_starttls_refused() -> None:
    strict = ClientSession(ClientConfig(tls="require"))
    strict.send(env(), CONTENT)
    feed(strict, GREETING)
    feed(strict, b"250-mx\r\n250 STARTTLS\r\n")
    evs = feed(strict, b"454 4.7.0 TLS not available\r\n")
    assert outcomes(evs) == [[(451, "4.7.4", False)]]
    assert "454 4.7.0 TLS not available" in results(evs)[0].results[0].outcome.reply.text

    relaxed = ClientSession(ClientConfig(tls="may"))
    relaxed.send(env(), CONTENT)
    feed(relaxed, GREETING)
    feed(relaxed, b"250-mx\r\n250 STARTTLS\r\n")
    relaxed.data_to_send()
    evs = feed(relaxed, b"454 4.7.0 TLS not available\r\n")
    assert next(e for e in evs if isinstance(e, Established)).tls is False
    assert relaxed.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"


def test_tls_handshake_failure_and_eof_during_handshake() -> None:
    for how in ("failed", "eof"):
        c = ClientSession()
        c.send(env(), CONTENT)
        feed(c, GREETING)
        feed(c, b"250-mx\r\n250 STARTTLS\r\n")
        assert feed(c, b"220 go\r\n") == [StartTLS()]
        if how == "failed":
            c.tls_failed("certificate verify failed")
            evs = drain(c)
            assert outcomes(evs) == [[(451, "4.7.5", False)]]
            assert "certificate verify failed" in results(evs)[0].results[0].outcome.reply.text
        else:
            evs = feed(c, b"")
            assert outcomes(evs) == [[(451, "4.4.2", False)]]
        assert closed(evs).reason is not None
    with pytest.raises(ProtocolUsageError):
        ClientSession().tls_established()


def test_implicit_tls_skips_starttls() -> None:
    c = ClientSession(ClientConfig(tls="require"), tls_active=True)
    feed(c, GREETING)
    c.data_to_send()
    evs = feed(c, b"250-mx\r\n250 STARTTLS\r\n")
    assert next(e for e in evs if isinstance(e, Established)).tls


# --- AUTH -----------------------------------------------------------------------------


def auth_client(mechs: tuple[str, ...] = ("PLAIN", "LOGIN")) -> ClientSession:
    cfg = ClientConfig(helo_name="c.example", tls="never", auth_without_tls=True,
                       credentials=Credentials("user", "sécret"), auth_mechanisms=mechs)
    c = ClientSession(cfg)
    c.send(env(), CONTENT)
    feed(c, GREETING)
    c.data_to_send()
    assert feed(c, b"250-mx\r\n250 AUTH LOGIN PLAIN\r\n") == []
    return c


def test_auth_plain_success() -> None:
    c = auth_client()
    line = c.data_to_send()
    assert line.startswith(b"AUTH PLAIN ") and line.endswith(b"\r\n")
    assert base64.b64decode(line[11:-2]) == "\0user\0sécret".encode()
    evs = feed(c, b"235 2.7.0 ok\r\n")
    assert next(e for e in evs if isinstance(e, Established)).authenticated
    assert c.authenticated
    assert c.data_to_send().startswith(b"MAIL FROM:")


def test_auth_login_success() -> None:
    c = auth_client(("LOGIN",))
    assert c.data_to_send() == b"AUTH LOGIN\r\n"
    feed(c, b"334 VXNlcm5hbWU6\r\n")
    assert base64.b64decode(c.data_to_send()[:-2]) == b"user"
    feed(c, b"334 UGFzc3dvcmQ6\r\n")
    assert base64.b64decode(c.data_to_send()[:-2]) == "sécret".encode()
    feed(c, b"235 2.7.0 ok\r\n")
    assert c.authenticated


def test_auth_failure_is_a_remote_outcome() -> None:
    c = auth_client()
    c.data_to_send()
    evs = feed(c, b"535 5.7.8 Authentication credentials invalid\r\n")
    assert outcomes(evs) == [[(535, "5.7.8", True)]]
    assert results(evs)[0].results[0].outcome.stage == "auth"
    assert c.data_to_send() == b"QUIT\r\n"


def test_auth_unexpected_challenge_closes() -> None:
    c = auth_client()
    c.data_to_send()
    evs = feed(c, b"334 \r\n")
    assert outcomes(evs) == [[(451, "4.5.0", False)]]
    assert c.data_to_send() == b""  # QUIT would be read as a SASL response
    assert closed(evs)


def test_auth_impossible() -> None:
    # Not offered.
    c = ClientSession(ClientConfig(tls="never", credentials=Credentials("u", "p"),
                                   auth_without_tls=True))
    c.send(env(), CONTENT)
    feed(c, GREETING)
    evs = feed(c, b"250-mx\r\n250 AUTH CRAM-MD5\r\n")
    assert outcomes(evs) == [[(451, "4.7.0", False)]]
    # Offered, but only in the clear: the password is not sent.
    c = ClientSession(ClientConfig(tls="may", credentials=Credentials("u", "p")))
    c.send(env(), CONTENT)
    feed(c, GREETING)
    c.data_to_send()
    evs = feed(c, b"250-mx\r\n250 AUTH PLAIN\r\n")
    assert outcomes(evs) == [[(451, "4.7.0", False)]]
    assert c.data_to_send() == b"QUIT\r\n"


# --- transactions ---------------------------------------------------------------------


def test_pipelined_batch_with_mixed_recipients() -> None:
    c = ready()
    h = c.send(env("r1@example.net", "r2@example.net", "r3@example.net"), CONTENT)
    batch = c.data_to_send()
    assert batch == (
        b"MAIL FROM:<a@example.org> SIZE=33\r\n"
        b"RCPT TO:<r1@example.net>\r\nRCPT TO:<r2@example.net>\r\nRCPT TO:<r3@example.net>\r\n"
        b"DATA\r\n"
    )
    evs = feed(c, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 No such user\r\n250 2.1.5 ok\r\n")
    assert evs == [] and c.data_to_send() == b""
    feed(c, b"354 go ahead\r\n")
    assert c.data_to_send() == b"Subject: hi\r\n\r\nHello\r\n..dot line\r\n.\r\n"
    assert c.awaiting == "end-of-data"
    evs = feed(c, b"250 2.0.0 queued as X\r\n")
    (m,) = results(evs)
    assert m.handle == h
    assert outcomes(evs) == [[(250, "2.0.0", True), (550, "5.1.1", True), (250, "2.0.0", True)]]
    assert [r.outcome.stage for r in m.results] == ["end-of-data", "rcpt", "end-of-data"]
    assert any(isinstance(e, Idle) for e in evs)


STUFFED = b"Subject: hi\r\n\r\nHello\r\n..dot line\r\n.\r\n"


def test_the_next_message_rides_behind_the_content() -> None:
    """RFC 2920 3.1: the content may lead a group, so the next message's MAIL, RCPT and
    DATA go in the same write as the content before them; the end-of-data reply ends
    that transaction whatever it says, so no RSET comes between."""
    c = ready()
    h1 = c.send(env("r1@example.net"), CONTENT)
    h2 = c.send(env("r2@example.net", "r3@example.net"), CONTENT)
    c.quit()
    assert c.data_to_send().endswith(b"RCPT TO:<r1@example.net>\r\nDATA\r\n")
    assert results(feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n")) == []
    assert c.data_to_send() == STUFFED + (
        b"MAIL FROM:<a@example.org> SIZE=33\r\n"
        b"RCPT TO:<r2@example.net>\r\nRCPT TO:<r3@example.net>\r\nDATA\r\n")
    assert c.awaiting == "end-of-data"
    evs = feed(c, b"550 5.7.1 content refused\r\n")
    assert [m.handle for m in results(evs)] == [h1]
    assert outcomes(evs) == [[(550, "5.7.1", True)]] and c.data_to_send() == b""
    assert [c.awaiting] == ["mail"]  # (a list: mypy still holds "end-of-data" above)
    evs = feed(c, b"250 ok\r\n250 ok\r\n452 4.2.2 full\r\n354 go\r\n")
    assert results(evs) == [] and c.data_to_send() == STUFFED  # nothing more to send
    evs = feed(c, b"250 2.0.0 queued\r\n")
    assert [m.handle for m in results(evs)] == [h2]
    assert outcomes(evs) == [[(250, "2.0.0", True), (452, "4.2.2", True)]]
    assert c.data_to_send() == b"QUIT\r\n"


def test_a_message_behind_the_content_shares_its_fate_on_failure() -> None:
    """Both transactions on the wire are decided when the connection ends or the server
    says 421 at the end of data: nothing is lost, nothing is called delivered."""
    for ending in (b"", b"421 4.3.0 shutting down\r\n"):
        c = ready()
        c.send(env("r1@example.net"), CONTENT)
        c.send(env("r2@example.net"), CONTENT)
        c.send(env("r3@example.net"), CONTENT)
        c.data_to_send()
        feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n")
        assert c.data_to_send().endswith(b"RCPT TO:<r2@example.net>\r\nDATA\r\n")
        evs = feed(c, ending)
        code = 421 if ending else CONNECTION_LOST.code
        assert [[o[0] for o in m] for m in outcomes(evs)] == [[code]] * 3, evs
        assert all(o[0] // 100 == 4 for m in outcomes(evs) for o in m)


def test_all_recipients_refused_then_rset_before_next() -> None:
    c = ready()
    c.send(env("r1@example.net", "r2@example.net"), CONTENT)
    c.send(env("r3@example.net"), CONTENT)
    c.quit()
    assert c.data_to_send().count(b"\r\n") == 4
    evs = feed(c, b"250 ok\r\n550 5.1.1 no\r\n551 5.1.6 moved\r\n554 5.5.1 No valid recipients\r\n")
    assert outcomes(evs) == [[(550, "5.1.1", True), (551, "5.1.6", True)]]
    assert c.data_to_send() == b"RSET\r\n"  # no content was sent
    feed(c, b"250 2.0.0 reset\r\n")
    assert c.data_to_send().startswith(b"MAIL FROM:")
    evs = feed(c, b"250 ok\r\n250 ok\r\n354 go\r\n")
    c.data_to_send()
    evs = feed(c, b"250 queued\r\n")
    assert outcomes(evs) == [[(250, None, True)]]
    assert c.data_to_send() == b"QUIT\r\n"
    assert closed(feed(c, b"221 2.0.0 bye\r\n")).reason is None


def test_server_says_354_with_nobody_accepted() -> None:
    c = ready()
    c.send(env(), CONTENT)
    c.data_to_send()
    feed(c, b"250 ok\r\n550 no\r\n354 go\r\n")
    assert c.data_to_send() == b".\r\n"
    evs = feed(c, b"554 no valid recipients\r\n")
    assert outcomes(evs) == [[(550, None, True)]]


def test_unpipelined_one_command_at_a_time_and_mail_refused() -> None:
    c = ready(ehlo=EHLO_PLAIN)
    c.send(env("r1@example.net", "r2@example.net"), CONTENT)
    c.send(env("r3@example.net"), CONTENT)
    assert c.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    evs = feed(c, b"553 5.1.8 Bad sender\r\n")
    assert outcomes(evs) == [[(553, "5.1.8", True)] * 2]
    assert results(evs)[0].results[0].outcome.stage == "mail"
    # The transaction failed part-way: RSET first (RFC 5321 4.1.1.5).
    assert c.data_to_send() == b"RSET\r\n"
    feed(c, b"250 ok\r\n")
    assert c.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    feed(c, b"250 ok\r\n")
    assert c.data_to_send() == b"RCPT TO:<r3@example.net>\r\n"
    feed(c, b"250 ok\r\n")
    assert c.data_to_send() == b"DATA\r\n"


def test_completed_transaction_needs_no_rset() -> None:
    c = ready(ehlo=EHLO_PLAIN)
    c.send(env(), CONTENT)
    c.send(env(), CONTENT)
    for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
        c.data_to_send()
        feed(c, reply)
    # Without PIPELINING the next message waits for the end-of-data reply.
    assert c.data_to_send() == STUFFED
    evs = feed(c, b"550 5.7.1 content refused\r\n")  # a final reply also ends it
    assert outcomes(evs) == [[(550, "5.7.1", True)]]
    assert c.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"


def test_rset_refused_ends_the_session() -> None:
    c = ready(ehlo=EHLO_PLAIN)
    c.send(env(), CONTENT)
    c.send(env(), CONTENT)
    c.data_to_send()
    feed(c, b"451 later\r\n")
    assert c.data_to_send() == b"RSET\r\n"
    evs = feed(c, b"500 what\r\n")
    assert outcomes(evs) == [[(451, "4.5.0", False)]]
    assert c.data_to_send() == b"QUIT\r\n"


def test_local_replies_quote_server_text_without_control_characters() -> None:
    """Found by fuzzing (bench/fuzz/fuzz_client.py): a reply mailgate makes up quoted
    the server's text as it came, backspaces, ESC and NUL included, on into bounces and
    logs. The server's own replies are kept as they are; mailgate's are clean."""
    c = ready(ehlo=EHLO_PLAIN)
    c.send(env(), CONTENT)
    c.send(env(), CONTENT)
    c.data_to_send()
    feed(c, b"451 later\r\n")
    evs = feed(c, b"500 \x1b[2Jwhat\x08\x00\xc2\x85!\r\n")
    text = results(evs)[0].results[0].outcome.reply.text
    assert text == "The server refused RSET: 500 \\x1b[2Jwhat\\x08\\x00\\x85!"

    strict = ClientSession(ClientConfig(tls="require"))
    strict.send(env(), CONTENT)
    feed(strict, GREETING)
    feed(strict, b"250-mx\r\n250 STARTTLS\r\n")
    evs = feed(strict, b"454 4.7.0 no\x1b]0;TLS\x07\r\n")
    text = results(evs)[0].results[0].outcome.reply.text
    assert text.endswith("refused STARTTLS: 454 4.7.0 no\\x1b]0;TLS\\x07")


def test_size_too_big_is_not_sent() -> None:
    c = ready()
    c.send(env(), b"x" * 10001 + b"\r\n")
    c.send(env(), CONTENT)
    out = c.data_to_send()
    assert out.startswith(b"MAIL FROM:<a@example.org> SIZE=33\r\n")
    assert b"10003" not in out
    evs = drain(c)
    assert outcomes(evs) == [[(552, "5.3.4", False)]]


def test_parameters_utf8_8bit_dsn() -> None:
    c = ready()
    e = Envelope(
        Address("a", "example.org"),
        (Recipient(Address("ü", "exämple.net"), notify=("success", "FAILURE"),
                   orcpt=("rfc822", "ü+x=y@exämple.net")),),
        ret="HDRS", envid="id +1=2",
    )
    c.send(e, "Subject: é\r\n".encode())
    mail, rcpt, data, _ = c.data_to_send().split(b"\r\n")
    assert mail == b"MAIL FROM:<a@example.org> SIZE=13 BODY=8BITMIME SMTPUTF8 RET=HDRS " \
                   b"ENVID=id+20+2B1+3D2"
    assert rcpt == "RCPT TO:<ü@exämple.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;".encode() + \
        encode_xtext("ü+x=y@exämple.net").encode()
    assert decode_xtext(encode_xtext("a+b=c d")) == "a+b=c d"
    assert data == b"DATA"


def test_utf8_without_smtputf8_and_dsn_params_dropped() -> None:
    c = ready(ehlo=b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
    c.send(Envelope.make("a@example.org", ["ü@example.net"]), CONTENT)
    c.send(Envelope(Address("a", "example.org"), (Recipient(Address("b", "example.net")),),
                    smtputf8=True), CONTENT)
    e = Envelope(Address("", ""), (Recipient(Address("b", "example.net"), notify=("NEVER",)),),
                 ret="FULL")
    c.send(e, CONTENT)
    evs = drain(c)
    assert outcomes(evs) == [[(553, "5.6.7", False)], [(550, "5.6.9", False)]]
    assert c.data_to_send() == b"MAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"


def test_421_mid_transaction_decides_everyone() -> None:
    c = ready()
    c.send(env("r1@example.net", "r2@example.net"), CONTENT)
    c.send(env("r3@example.net"), CONTENT)
    c.data_to_send()
    evs = feed(c, b"250 ok\r\n550 no\r\n421 4.3.2 Shutting down\r\n354 ignored\r\n")
    assert outcomes(evs) == [[(550, None, True), (421, "4.3.2", True)], [(421, "4.3.2", True)]]
    assert closed(evs).reason == Outcome(Reply.make(421, "4.3.2", "Shutting down"), True, "rcpt")
    assert c.data_to_send() == b""
    assert c.closed


def test_421_while_idle() -> None:
    c = ready()
    evs = feed(c, b"421 4.4.2 Idle timeout\r\n")
    assert closed(evs).reason is not None
    # A message given after the failure, before the shell saw it, still gets its result.
    evs2 = [e for e in [c.next_event()] if e is not NEED_DATA]
    assert evs2 == []
    c.send(env(), CONTENT)
    assert outcomes(drain(c)) == [[(421, "4.4.2", True)]]


@pytest.mark.parametrize(
    "garbage",
    [b"hello there\r\n", b"250-continued\r\n251 mixed codes\r\n", b"2\r\n", b"250 a\rb\r\n",
     b"\r\n", b"999 no\r\n"],
)
def test_garbage_is_a_local_transient_failure(garbage: bytes) -> None:
    c = ready()
    c.send(env(), CONTENT)
    c.data_to_send()
    evs = feed(c, garbage)
    assert outcomes(evs) == [[(451, "4.5.0", False)]]
    assert closed(evs).reason is not None
    assert c.data_to_send() == b""


def test_reply_nobody_asked_for() -> None:
    c = ready()
    reason = closed(feed(c, b"250 surprise\r\n")).reason
    assert reason is not None and not reason.remote and reason.stage == "connection"
    assert reason.reply.code == 451 and "a reply to no command" in reason.reply.text


def test_long_reply_lines() -> None:
    c = ready()
    c.send(env(), CONTENT)
    c.data_to_send()
    # Over RFC 5321's 512 octets but under the cap: accepted, text kept.
    long_ok = b"250 " + b"x" * 1000 + b"\r\n"
    feed(c, long_ok)
    assert c.buffered == 0
    # Past the cap without a line end: the session fails before buffering more.
    evs = feed(c, b"250 " + b"y" * 5000)
    assert outcomes(evs) == [[(451, "4.5.0", False)]]
    assert c.buffered == 0 and c.closed


def test_too_many_reply_lines() -> None:
    c = ready()
    c.send(env(), CONTENT)
    c.data_to_send()
    evs = feed(c, b"250-x\r\n" * 200)
    assert outcomes(evs) == [[(451, "4.5.0", False)]]


def test_non_utf8_reply_text_is_kept_readable() -> None:
    c = ready()
    c.send(env(), CONTENT)
    c.data_to_send()
    evs = feed(c, b"250 ok\r\n550 5.1.1 Unbekannter Empf\xe4nger\r\n554 no\r\n")
    (m,) = results(evs)
    assert m.results[0].outcome.reply.code == 550
    assert "Unbekannter" in m.results[0].outcome.reply.text


def test_eof_mid_conversation() -> None:
    c = ready()
    c.send(env("r1@example.net", "r2@example.net"), CONTENT)
    c.data_to_send()
    feed(c, b"250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n")
    c.data_to_send()
    evs = feed(c, b"")
    assert outcomes(evs) == [[(550, None, True), (451, "4.4.2", False)]]
    assert results(evs)[0].results[1].outcome.stage == "end-of-data"
    assert closed(evs).reason == Outcome(CONNECTION_LOST, False, "end-of-data")


def test_abort_on_timeout() -> None:
    c = ready()
    c.send(env(), CONTENT)
    assert c.awaiting == "mail"
    c.abort()
    evs = drain(c)
    assert outcomes(evs) == [[(451, "4.4.2", False)]]
    assert closed(evs).reason == Outcome(TIMED_OUT, False, "mail")


def test_usage_errors() -> None:
    c = ready()
    c.quit()
    with pytest.raises(ProtocolUsageError):
        c.send(env(), CONTENT)
    feed(c, b"221 bye\r\n")
    with pytest.raises(ProtocolUsageError):
        c.send(env(), CONTENT)
    with pytest.raises(ValueError, match="NOTIFY"):
        Recipient(Address("a", "b.example"), notify=("NEVER", "DELAY"))
    with pytest.raises(ValueError, match="recipient"):
        Envelope.make("a@b.example", [])
    with pytest.raises(ValueError):
        Envelope.make("a@b.example", ["not an address"])
    with pytest.raises(ValueError):
        ClientConfig(tls="sometimes")  # type: ignore[arg-type]


def test_bdat() -> None:
    cfg = ClientConfig(helo_name="c.example", tls="never", prefer_bdat=True, bdat_chunk_size=10)
    content = b"bare\nLF and\rCR\r\n.dot\r\n"  # 22 octets, sent raw
    c = ready(cfg)
    c.send(env("r1@example.net", "r2@example.net"), content)
    assert c.data_to_send() == (
        b"MAIL FROM:<a@example.org> SIZE=22\r\nRCPT TO:<r1@example.net>\r\n"
        b"RCPT TO:<r2@example.net>\r\n"
    )
    feed(c, b"250 ok\r\n250 ok\r\n452 4.2.2 full\r\n")
    # Content only once someone will take it; then every chunk in one go, raw.
    assert c.data_to_send() == (
        b"BDAT 10\r\nbare\nLF anBDAT 10\r\nd\rCR\r\n.dotBDAT 2 LAST\r\n\r\n"
    )
    evs = feed(c, b"250 2.0.0 10 octets\r\n250 2.0.0 20 octets\r\n250 2.0.0 queued\r\n")
    assert outcomes(evs) == [[(250, "2.0.0", True), (452, "4.2.2", True)]]
    assert results(evs)[0].results[0].outcome.stage == "bdat"
    c.send(env(), b"")
    assert c.data_to_send().startswith(b"MAIL FROM:")  # no RSET: it completed
    feed(c, b"250 ok\r\n250 ok\r\n")
    assert c.data_to_send() == b"BDAT 0 LAST\r\n"


def test_bdat_everyone_refused_sends_no_content() -> None:
    cfg = ClientConfig(helo_name="c.example", tls="never", prefer_bdat=True)
    c = ready(cfg)
    c.send(env("r1@example.net"), CONTENT)
    c.send(env("r2@example.net"), CONTENT)
    assert c.data_to_send().endswith(b"RCPT TO:<r1@example.net>\r\n")
    evs = feed(c, b"250 ok\r\n550 5.1.1 no\r\n")
    assert outcomes(evs) == [[(550, "5.1.1", True)]]
    assert c.data_to_send() == b"RSET\r\n"


def test_bdat_unpipelined_chunk_refused() -> None:
    cfg = ClientConfig(tls="never", helo_name="c.example", prefer_bdat=True, bdat_chunk_size=4)
    c = ready(cfg, ehlo=b"250-mx\r\n250 CHUNKING\r\n")
    c.send(env(), b"abcdefgh")
    c.send(env(), b"x")
    for reply in (b"250 ok\r\n", b"250 ok\r\n"):
        c.data_to_send()
        feed(c, reply)
    assert c.data_to_send() == b"BDAT 4\r\nabcd"
    feed(c, b"250 ok\r\n")
    assert c.data_to_send() == b"BDAT 4 LAST\r\nefgh"
    evs = feed(c, b"554 5.6.0 refused\r\n")
    assert outcomes(evs) == [[(554, "5.6.0", True)]]
    assert c.data_to_send() == b"RSET\r\n"


def test_default_is_data_even_with_chunking() -> None:
    c = ready()
    c.send(env(), CONTENT)
    assert c.data_to_send().endswith(b"DATA\r\n")


# --- fuzz: whatever the server sends, nothing is lost and memory stays bounded --------


@settings(max_examples=150, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.sampled_from([b"220 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"550 no\r\n",
                             b"421 bye\r\n", b"250-PIPELINING\r\n", b"250-x\r\n",
                             b"220 2.0.0 tls\r\n", b"250 STARTTLS\r\n", b"x" * 2000]),
        ),
        max_size=30,
    ),
    n_messages=st.integers(0, 3),
    pipelining=st.booleans(),
    bdat=st.booleans(),
)
def test_any_server_input_ends_every_message(
    chunks: list[bytes], n_messages: int, pipelining: bool, bdat: bool
) -> None:
    cfg = ClientConfig(pipelining=pipelining, prefer_bdat=bdat, max_reply_line=1024,
                       max_reply_lines=8)
    c = ClientSession(cfg)
    handles = [c.send(env("r1@example.net", "r2@example.net"), CONTENT)
               for _ in range(n_messages)]
    c.quit()
    events: list[Event] = []
    for chunk in chunks:
        c.receive_data(chunk)
        c.data_to_send()
        assert c.buffered <= 1024
        for ev in drain(c):
            events.append(ev)
            if isinstance(ev, StartTLS):
                c.tls_established()
    c.receive_data(b"")
    events += drain(c)
    assert c.closed
    done = [m.handle for m in results(events)]
    assert sorted(done) == handles
    assert all(len(m.results) == 2 for m in results(events))
    assert sum(isinstance(e, Closed) for e in events) == 1
    assert isinstance(events[-1], Closed)


# --- the client against mailgate's own ServerSession ------------------------------------


@dataclass
class Wire:
    """Moves bytes between a ClientSession and a ServerSession until the client closes."""

    client: ClientSession
    server: srvmod.ServerSession
    refuse: frozenset[str] = frozenset()  # local parts the server refuses at RCPT
    received: list[bytes] = field(default_factory=list)
    results: list[MessageResult] = field(default_factory=list)
    client_events: list[Event] = field(default_factory=list)

    def run(self) -> None:
        current = bytearray()
        self.server.greet()
        # Bounded, but generously: BDAT in 1-octet chunks takes one round per octet.
        for _ in range(1_000_000):
            srv_tls = False
            while (ev := self.server.next_event()) is not srvmod.NEED_DATA:
                if isinstance(ev, srvmod.RcptTo) and ev.recipient.local in self.refuse:
                    self.server.respond(Reply.make(550, "5.1.1", "No such user"))
                elif isinstance(ev, srvmod.Event) and ev.needs_decision:
                    self.server.respond(None)
                if isinstance(ev, srvmod.MessageStart):
                    current.clear()
                elif isinstance(ev, srvmod.MessageData):
                    current += ev.data
                elif isinstance(ev, srvmod.MessageComplete):
                    self.received.append(bytes(current))
                elif isinstance(ev, srvmod.StartTLS):
                    srv_tls = True
            to_client = self.server.data_to_send()
            if srv_tls:
                self.server.tls_established()  # its 220 is on the way to the client
            if to_client:
                self.client.receive_data(to_client)
            elif self.server.closed:
                self.client.receive_data(b"")
            while (cev := self.client.next_event()) is not NEED_DATA:
                assert isinstance(cev, Event)
                self.client_events.append(cev)
                if isinstance(cev, StartTLS):
                    self.client.tls_established()
                elif isinstance(cev, MessageResult):
                    self.results.append(cev)
            if self.client.closed:
                return
            to_server = self.client.data_to_send()
            if to_server:
                self.server.receive_data(to_server)
        raise AssertionError("the dialogue did not finish")


def pair(cfg: ClientConfig, scfg: srvmod.SessionConfig | None = None,
         refuse: frozenset[str] = frozenset()) -> Wire:
    return Wire(ClientSession(cfg), srvmod.ServerSession(scfg), refuse)


def test_pair_starttls_and_auth() -> None:
    scfg = srvmod.SessionConfig(hostname="mx.example.test", starttls=True, auth=True)
    for mech in ("PLAIN", "LOGIN"):
        cfg = ClientConfig(helo_name="c.example", tls="require",
                           credentials=Credentials("user", "pw"), auth_mechanisms=(mech,))
        w = pair(cfg, scfg)
        w.client.send(env(), CONTENT)
        w.client.quit()
        w.run()
        assert w.received == [CONTENT]
        assert w.server.authenticated == "user"
        est = [e for e in w.client_events if isinstance(e, Established)]
        assert est[0].tls and est[0].authenticated
        assert closed(w.client_events).reason is None


def test_pair_mixed_recipients_and_rset() -> None:
    w = pair(ClientConfig(helo_name="c.example", tls="never"), refuse=frozenset({"bad", "worse"}))
    w.client.send(env("bad@example.net", "worse@example.net"), CONTENT)  # all refused
    w.client.send(env("good@example.net", "bad@example.net"), CONTENT)
    w.client.quit()
    w.run()
    assert w.received == [CONTENT]
    assert [[(o[0], o[2]) for o in m] for m in outcomes(w.results)] == [
        [(550, True), (550, True)], [(250, True), (550, True)]
    ]


def test_pair_size_refused_by_server_declared_limit() -> None:
    scfg = srvmod.SessionConfig(max_message_size=100)
    w = pair(ClientConfig(tls="never"), scfg)
    w.client.send(env(), b"x" * 200 + b"\r\n")
    w.client.send(env(), CONTENT)
    w.client.quit()
    w.run()
    assert outcomes(w.results) == [[(552, "5.3.4", False)], [(250, "2.0.0", True)]]
    assert w.received == [CONTENT]


_LINE_BYTES = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_LINE = st.one_of(
    _LINE_BYTES,
    _LINE_BYTES.map(lambda b: b"." + b),
    st.just(b"."),
    st.just(b".."),
    st.just(b""),
    st.builds(lambda c: bytes([c]) * 998, st.integers(33, 255)),
    st.just(b"." * 998),
)
_BODY = st.lists(_LINE, max_size=12).map(lambda ls: b"".join(line + b"\r\n" for line in ls))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(
        st.tuples(st.lists(st.sampled_from(["good", "ok", "bad", "fine"]), min_size=1,
                           max_size=4, unique=True), _BODY),
        min_size=1, max_size=3,
    ),
    pipelining=st.booleans(),
    bdat=st.booleans(),
    chunk=st.integers(1, 3000),
    starttls=st.booleans(),
)
def test_pair_content_arrives_byte_for_byte(
    messages: list[tuple[list[str], bytes]], pipelining: bool, bdat: bool, chunk: int,
    starttls: bool,
) -> None:
    cfg = ClientConfig(helo_name="c.example", pipelining=pipelining, prefer_bdat=bdat,
                       bdat_chunk_size=chunk)
    w = pair(cfg, srvmod.SessionConfig(starttls=starttls), refuse=frozenset({"bad"}))
    for locals_, body in messages:
        w.client.send(env(*(f"{lp}@example.net" for lp in locals_)), body)
    w.client.quit()
    w.run()
    expected = [body for locals_, body in messages if set(locals_) - {"bad"}]
    assert w.received == expected
    assert [m.handle for m in w.results] == list(range(1, len(messages) + 1))
    for (locals_, _), m in zip(messages, w.results, strict=True):
        for lp, r in zip(locals_, m.results, strict=True):
            assert r.outcome.remote
            assert r.outcome.reply.code == (550 if lp == "bad" else 250), r
    est = [e for e in w.client_events if isinstance(e, Established)]
    assert est[0].tls is starttls
    assert closed(w.client_events).reason is None


# --- bugs found on the way (in framing.py and address.py) -------------------------------


@pytest.mark.parametrize("line", [b"." * 998, b"." + b"x" * 997], ids=["dots", "dot-x"])
def test_server_accepts_dot_stuffed_998_octet_line(line: bytes) -> None:
    """RFC 5321 4.5.3.1.6: the dot doubled for transparency does not count toward 1000.

    DataReader used to measure the stuffed line (999 octets + CRLF) and refuse it.
    """
    from mailgate.smtp.framing import DataReader, dot_stuff

    body = b"head\r\n" + line + b"\r\n" + line + b"\r\n"
    wire = dot_stuff(body)
    for step in (len(wire), 7, 1000, 1001):
        reader = DataReader(10**6)
        got = b""
        for i in range(0, len(wire), step):
            content, _ = reader.feed(wire[i : i + step])
            got += content
        assert reader.error is None and got == body
    # One octet more is still too long, stuffed or not.
    for bad in (b"." + line, b"x" + line):
        reader = DataReader(10**6)
        reader.feed(dot_stuff(bad + b"\r\n"))
        assert reader.error is not None


def test_utf8_local_part_is_not_quoted() -> None:
    """RFC 6531 3.3: UTF-8 is atext, so `ü@exämple.net` is a dot-string, no quotes."""
    assert Address("ü.ö", "exämple.net").path == "<ü.ö@exämple.net>"
    assert Address("ü ö", "exämple.net").path == '<"ü ö"@exämple.net>'


def test_local_replies_use_registered_codes() -> None:
    from mailgate.codes.registry import registry
    from mailgate.smtp import client as cmod

    known = registry()
    for name in cmod.__all__:
        value = getattr(cmod, name)
        if isinstance(value, Reply):
            assert value.enhanced is not None, name
            assert "X." + value.enhanced.split(".", 1)[1] in known, name
            assert str(value.code) in known, name
