"""The client's verify-only mode (`mailgate probe`): MAIL and RCPT, never DATA, then RSET."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.smtp import server as srvmod
from mailgate.smtp.client import (
    NEED_DATA,
    ClientConfig,
    ClientSession,
    Closed,
    Event,
    Idle,
    MessageResult,
    StartTLS,
)
from tests.test_smtp_client import (
    CONTENT,
    EHLO_PLAIN,
    closed,
    env,
    feed,
    outcomes,
    pair,
    ready,
    results,
)

VERIFY = ClientConfig(helo_name="c.example", tls="never", verify_only=True)


def test_pipelined_verify_stops_after_rcpt_and_resets() -> None:
    c = ready(VERIFY)
    h = c.send(env("r1@example.net", "r2@example.net"), CONTENT)
    # No DATA in the batch, and no SIZE: there is no message to size.
    assert c.data_to_send() == (
        b"MAIL FROM:<a@example.org>\r\nRCPT TO:<r1@example.net>\r\nRCPT TO:<r2@example.net>\r\n"
    )
    evs = feed(c, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 No such user\r\n")
    (m,) = results(evs)
    assert m.handle == h
    assert outcomes(evs) == [[(250, "2.1.5", True), (550, "5.1.1", True)]]
    assert [r.outcome.stage for r in m.results] == ["rcpt", "rcpt"]
    assert c.data_to_send() == b"RSET\r\n"
    assert c.awaiting == "rset"
    evs = feed(c, b"250 2.0.0 reset\r\n")
    assert any(isinstance(e, Idle) for e in evs)
    c.quit()
    assert c.data_to_send() == b"QUIT\r\n"
    assert closed(feed(c, b"221 2.0.0 bye\r\n")).reason is None


def test_unpipelined_verify_one_command_at_a_time() -> None:
    c = ready(VERIFY, ehlo=EHLO_PLAIN)
    c.send(env("r1@example.net"), CONTENT)
    c.quit()
    assert c.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    feed(c, b"250 ok\r\n")
    assert c.data_to_send() == b"RCPT TO:<r1@example.net>\r\n"
    evs = feed(c, b"250 2.1.5 ok\r\n")
    assert outcomes(evs) == [[(250, "2.1.5", True)]]
    assert c.data_to_send() == b"RSET\r\n"  # not DATA
    feed(c, b"250 ok\r\n")
    assert c.data_to_send() == b"QUIT\r\n"


def test_verify_mail_refused_decides_everyone_then_resets() -> None:
    c = ready(VERIFY)
    c.send(env("r1@example.net", "r2@example.net"), CONTENT)
    c.quit()
    c.data_to_send()
    evs = feed(c, b"553 5.1.8 Bad sender\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n")
    assert outcomes(evs) == [[(553, "5.1.8", True)] * 2]
    assert results(evs)[0].results[0].outcome.stage == "mail"
    assert c.data_to_send() == b"RSET\r\n"
    feed(c, b"250 ok\r\n")
    assert c.data_to_send() == b"QUIT\r\n"


def test_verify_ignores_content_and_never_uses_bdat() -> None:
    """Content a real send would refuse locally (too big, 8-bit) plays no part."""
    cfg = ClientConfig(helo_name="c.example", tls="never", verify_only=True, prefer_bdat=True)
    c = ready(cfg, ehlo=b"250-mx\r\n250-PIPELINING\r\n250-SIZE 10\r\n250 CHUNKING\r\n")
    c.send(env(), b"\xc3\xa9" * 100 + b"\r\n")
    assert c.data_to_send() == b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
    evs = feed(c, b"250 ok\r\n250 ok\r\n")
    assert outcomes(evs) == [[(250, None, True)]]
    assert c.data_to_send() == b"RSET\r\n"


def test_verify_several_messages_each_reset() -> None:
    c = ready(VERIFY)
    c.send(env("r1@example.net"), CONTENT)
    c.send(env("r2@example.net"), CONTENT)
    c.quit()
    sent = [c.data_to_send()]
    for reply in (b"250 ok\r\n250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n452 4.2.2 full\r\n",
                  b"250 ok\r\n"):
        feed(c, reply)
        sent.append(c.data_to_send())
    assert sent[1:] == [b"RSET\r\n", b"MAIL FROM:<a@example.org>\r\nRCPT TO:<r2@example.net>\r\n",
                        b"RSET\r\n", b"QUIT\r\n"]


def test_verify_rset_refused_ends_the_session_after_the_results() -> None:
    c = ready(VERIFY)
    c.send(env(), CONTENT)
    c.data_to_send()
    evs = feed(c, b"250 ok\r\n250 ok\r\n")
    assert outcomes(evs) == [[(250, None, True)]]
    assert c.data_to_send() == b"RSET\r\n"
    evs = feed(c, b"500 what\r\n")
    assert results(evs) == []  # the message had its result already
    assert c.data_to_send() == b"QUIT\r\n"
    reason = closed(feed(c, b"221 bye\r\n")).reason
    assert reason is not None and reason.stage == "rset"


def test_default_config_still_sends_data() -> None:
    c = ready(ClientConfig(helo_name="c.example", tls="never"))
    c.send(env(), CONTENT)
    assert c.data_to_send().endswith(b"DATA\r\n")


@pytest.mark.parametrize("pipelining", [True, False])
def test_verify_against_server_session_delivers_nothing(pipelining: bool) -> None:
    cfg = ClientConfig(helo_name="c.example", verify_only=True, pipelining=pipelining)
    w = pair(cfg, srvmod.SessionConfig(starttls=True), refuse=frozenset({"bad"}))
    w.client.send(env("good@example.net", "bad@example.net"), CONTENT)
    w.client.quit()
    w.run()
    assert w.received == []
    assert [[(o[0], o[2]) for o in m] for m in outcomes(w.results)] == [[(250, True), (550, True)]]
    assert closed(w.client_events).reason is None


@settings(max_examples=150, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([b"220 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"550 no\r\n",
                             b"421 bye\r\n", b"250-PIPELINING\r\n", b"250-CHUNKING\r\n",
                             b"220 2.0.0 tls\r\n", b"250 STARTTLS\r\n"]),
        ),
        max_size=30,
    ),
    n_messages=st.integers(0, 2),
    pipelining=st.booleans(),
)
def test_verify_never_sends_data_whatever_the_server_says(
    chunks: list[bytes], n_messages: int, pipelining: bool
) -> None:
    c = ClientSession(ClientConfig(verify_only=True, pipelining=pipelining, prefer_bdat=True))
    handles = [c.send(env("r1@example.net", "r2@example.net"), CONTENT)
               for _ in range(n_messages)]
    c.quit()
    out = bytearray()
    events: list[Event] = []
    for chunk in [*chunks, b""]:
        c.receive_data(chunk)
        out += c.data_to_send()
        while (ev := c.next_event()) is not NEED_DATA:
            assert isinstance(ev, Event)
            events.append(ev)
            if isinstance(ev, StartTLS):
                c.tls_established()
        out += c.data_to_send()
    commands = [line.split(b" ")[0].split(b":")[0].upper() for line in bytes(out).split(b"\r\n")]
    assert b"DATA" not in commands and b"BDAT" not in commands
    assert CONTENT not in out
    assert c.closed
    assert sorted(m.handle for m in events if isinstance(m, MessageResult)) == handles
    assert sum(isinstance(e, Closed) for e in events) == 1
