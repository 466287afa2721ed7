"""Outbound TLS levels (none, may, encrypt, verify), AUTH at the relayhost, and giving
back claimed work on shutdown: the engine against real DNS and real receiving MTAs
(aiosmtpd with STARTTLS and AUTH, certificates from a throwaway CA).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mailgate.config import Relayhost, parse_config
from mailgate.queue import RecipientState
from mailgate.queue.report import show_text
from tests import test_delivery
from tests.support.fakemx import MX1, MX2, FakeMX
from tests.support.tlscerts import TestCA, server_context
from tests.test_delivery import Outbound, host

pytest_plugins = ["tests.support.dnsserver", "tests.support.fakemx"]

# The engine harness of tests/test_delivery.py: a real SQLite queue, the test DNS server.
outbound = test_delivery.outbound

DELIVERED = RecipientState.DELIVERED
DEFERRED = RecipientState.DEFERRED


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


def tls_mx(fake_mx: Callable[..., FakeMX], ca: TestCA, address: str, *names: str,
           self_signed: bool = False, **options: object) -> FakeMX:
    """A fake MX offering STARTTLS with a certificate for `names`."""
    cert, key = ca.issue(*names, self_signed=self_signed)
    return fake_mx(address, tls_context=server_context(cert, key), **options)


def verify(ca: TestCA, default: str = "may", **policy: str) -> dict[str, object]:
    """Outbound settings: trust the test CA, `default` as tls_security_level, `policy` as
    [tls_policy] (domain -> level)."""
    return {"delivery": {"tls_ca_file": ca.ca_file, "tls_security_level": default},
            "tls_policy": policy}


# --- verify ---------------------------------------------------------------------------


def test_verify_delivers_over_tls_to_a_certificate_naming_the_mx_host(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA,
        mx_port: int) -> None:
    mx = tls_mx(fake_mx, ca, MX1, "mx1.test")
    out = outbound(**verify(ca, **{"one.test": "verify"}))
    qid = out.submit("bob@one.test")
    out.run()
    assert out.recipients(qid)["bob@one.test"].state == DELIVERED
    [msg] = mx.received
    assert msg.tls
    [attempt] = out.attempts(qid, "bob@one.test")
    assert attempt.tls is not None and attempt.tls.startswith("TLSv1.")
    assert attempt.host == host("mx1.test", MX1, mx_port)
    assert f"[delivered, {attempt.tls}]" in show_text(out.queue.show(qid))


@pytest.mark.parametrize(("names", "self_signed", "why"), [
    (("mx9.test",), False, "mx1.test"),  # the certificate names another host
    (("mx1.test",), True, "certificate verify failed"),  # nobody vouches for it
])
def test_verify_defers_when_the_certificate_does_not_check_out(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA,
        names: tuple[str, ...], self_signed: bool, why: str) -> None:
    mx = tls_mx(fake_mx, ca, MX1, *names, self_signed=self_signed)
    out = outbound(**verify(ca, **{"one.test": "verify"}))
    qid = out.submit("bob@one.test")
    out.run()
    rcpt = out.recipients(qid)["bob@one.test"]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 451, "4.7.5")
    assert rcpt.last_text is not None and why in rcpt.last_text
    assert mx.received == [] and mx.rcpts == []  # not a word of the envelope was sent
    assert out.bounces == []  # deferred, not bounced


def test_verify_failure_at_the_first_mx_moves_on_to_the_second(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA
        ) -> None:
    bad = tls_mx(fake_mx, ca, MX1, "mx1.test", self_signed=True)
    good = tls_mx(fake_mx, ca, MX2, "mx2.test")
    out = outbound(**verify(ca, "verify"))
    qid = out.submit("bob@pref.test")
    out.run()
    assert out.recipients(qid)["bob@pref.test"].state == DELIVERED
    assert bad.connections == 1 and bad.received == []
    assert [m.tls for m in good.received] == [True]


def test_verify_against_the_system_store_refuses_a_private_ca(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA
        ) -> None:
    # Without tls_ca_file the system's CAs are trusted, and they never signed ours.
    mx = tls_mx(fake_mx, ca, MX1, "mx1.test")
    out = outbound(tls_policy={"one.test": "verify"})
    qid = out.submit("bob@one.test")
    out.run()
    rcpt = out.recipients(qid)["bob@one.test"]
    assert (rcpt.state, rcpt.last_enhanced) == (DEFERRED, "4.7.5")
    assert mx.received == []


# --- encrypt, may, none ---------------------------------------------------------------


def test_encrypt_takes_any_certificate_but_insists_on_tls(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA
        ) -> None:
    tls = tls_mx(fake_mx, ca, MX1, "unrelated.example", self_signed=True)
    out = outbound(tls_policy={"one.test": "encrypt"})
    qid = out.submit("bob@one.test")
    out.run()
    assert out.recipients(qid)["bob@one.test"].state == DELIVERED
    assert [m.tls for m in tls.received] == [True]


def test_encrypt_defers_4_7_4_when_starttls_is_not_offered(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX]) -> None:
    plain = fake_mx(MX1)
    out = outbound(tls_policy={"one.test": "encrypt"})
    qid = out.submit("bob@one.test")
    out.run()
    rcpt = out.recipients(qid)["bob@one.test"]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 451, "4.7.4")
    assert plain.connections == 1 and plain.rcpts == []


def test_a_domain_policy_applies_to_that_domain_only(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX]) -> None:
    plain = fake_mx(MX1)
    out = outbound(tls_policy={"one.test": "encrypt"})
    strict = out.submit("bob@one.test")
    relaxed = out.submit("bob@implicit.test")  # same host (127.0.0.2), default "may"
    out.run()
    assert out.recipients(strict)["bob@one.test"].state == DEFERRED
    assert out.recipients(relaxed)["bob@implicit.test"].state == DELIVERED
    assert plain.all_rcpts() == ["bob@implicit.test"]


def test_may_uses_starttls_when_offered_and_records_it(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA
        ) -> None:
    mx = tls_mx(fake_mx, ca, MX1, "mx1.test", self_signed=True)
    out = outbound()
    qid = out.submit("bob@one.test")
    out.run()
    assert [m.tls for m in mx.received] == [True]
    assert out.attempts(qid, "bob@one.test")[0].tls is not None


def test_may_falls_back_to_plaintext_when_the_handshake_fails(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA
        ) -> None:
    # A server whose TLS cannot agree on a protocol version with any current client.
    cert, key = ca.issue("mx1.test")
    broken = fake_mx(MX1, tls_context=server_context(cert, key,
                                                      maximum=ssl.TLSVersion.TLSv1))
    out = outbound()
    qid = out.submit("bob@one.test")
    out.run()
    assert out.recipients(qid)["bob@one.test"].state == DELIVERED
    assert broken.connections == 2  # the failed handshake, then in the clear
    assert [m.tls for m in broken.received] == [False]
    assert out.attempts(qid, "bob@one.test")[0].tls is None


def test_encrypt_does_not_fall_back_when_the_handshake_fails(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA
        ) -> None:
    cert, key = ca.issue("mx1.test")
    broken = fake_mx(MX1, tls_context=server_context(cert, key,
                                                      maximum=ssl.TLSVersion.TLSv1))
    out = outbound(tls_policy={"one.test": "encrypt"})
    qid = out.submit("bob@one.test")
    out.run()
    rcpt = out.recipients(qid)["bob@one.test"]
    assert (rcpt.state, rcpt.last_enhanced) == (DEFERRED, "4.7.5")
    assert broken.connections == 1 and broken.received == []


def test_none_never_sends_starttls(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA
        ) -> None:
    mx = tls_mx(fake_mx, ca, MX1, "mx1.test")
    out = outbound(tls_policy={"one.test": "none"})
    qid = out.submit("bob@one.test")
    out.run()
    assert out.recipients(qid)["bob@one.test"].state == DELIVERED
    assert [m.tls for m in mx.received] == [False]


# --- the relayhost with AUTH ----------------------------------------------------------


def relayhost(mx_port: int, password: str = "s3cret") -> dict[str, object]:
    return {"relayhost": Relayhost(MX1, mx_port, False, username="bob", password=password)}


def test_relayhost_auth_over_starttls(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA,
        mx_port: int) -> None:
    smarthost = tls_mx(fake_mx, ca, MX1, "smtp.provider.test", self_signed=True,
                       auth={"bob": "s3cret"})
    out = outbound(delivery=relayhost(mx_port))
    qid = out.submit("carol@elsewhere.example", "dave@one.test")
    out.run()
    assert {r.state for r in out.recipients(qid).values()} == {DELIVERED}
    [msg] = smarthost.received  # both recipients, one transaction, whatever their domain
    assert sorted(msg.rcpt_tos) == ["carol@elsewhere.example", "dave@one.test"]
    assert (msg.tls, msg.authenticated) == (True, "bob")
    assert smarthost.auth_logins == ["bob PLAIN ok"]


def test_relayhost_refusing_the_password_defers_and_does_not_bounce(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA,
        mx_port: int) -> None:
    # A 535 is about mailgate's credentials, not the message: keep the mail queued
    # until someone fixes the password (Postfix's smtp_sasl_auth_soft_bounce).
    smarthost = tls_mx(fake_mx, ca, MX1, "smtp.provider.test", self_signed=True,
                       auth={"bob": "s3cret"})
    out = outbound(delivery=relayhost(mx_port, password="wrong"))
    qid = out.submit("carol@elsewhere.example")
    out.run()
    rcpt = out.recipients(qid)["carol@elsewhere.example"]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 451, "4.7.8")
    assert rcpt.last_text is not None and "535" in rcpt.last_text
    assert smarthost.auth_logins == ["bob PLAIN bad"] and smarthost.received == []
    assert out.bounces == []


def test_relayhost_password_never_goes_in_the_clear(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX],
        mx_port: int) -> None:
    plain = fake_mx(MX1)  # no STARTTLS: the credentials make TLS required
    out = outbound(delivery=relayhost(mx_port))
    qid = out.submit("carol@elsewhere.example")
    out.run()
    rcpt = out.recipients(qid)["carol@elsewhere.example"]
    assert (rcpt.state, rcpt.last_enhanced) == (DEFERRED, "4.7.4")
    assert plain.auth_logins == [] and plain.rcpts == []


def test_relayhost_credentials_from_the_configuration_file(tmp_path: Path) -> None:
    (tmp_path / "relay.secret").write_text("pa ss\n", encoding="utf-8")
    config = parse_config(
        '[delivery]\nrelayhost = "smtp.provider.test:587"\nrelayhost_username = "bob"\n'
        'relayhost_password_file = "relay.secret"\n', "mailgate.toml", tmp_path)
    relay = config.delivery.relayhost
    assert relay is not None and (relay.username, relay.password) == ("bob", "pa ss")
    assert "pa ss" not in repr(config)
    assert config.tls_level_for("anywhere.example") == "encrypt"


# --- "smtps:" next hops: TLS from the first byte (RFC 8314) ---------------------------


def smtps_relay(mx_port: int, username: str | None = None, password: str | None = None
                ) -> dict[str, object]:
    return {"relayhost": Relayhost(MX1, mx_port, False, username=username, password=password,
                                   implicit_tls=True)}


def test_relayhost_over_implicit_tls_with_auth(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA,
        mx_port: int) -> None:
    cert, key = ca.issue("smtp.provider.test", self_signed=True)
    smarthost = fake_mx(MX1, implicit_tls=server_context(cert, key),
                        auth={"bob": "s3cret"})
    out = outbound(delivery=smtps_relay(mx_port, username="bob", password="s3cret"))
    qid = out.submit("carol@elsewhere.example")
    out.run()
    assert out.recipients(qid)["carol@elsewhere.example"].state == DELIVERED
    [msg] = smarthost.received
    assert (msg.tls, msg.authenticated) == (True, "bob")
    [attempt] = out.attempts(qid, "carol@elsewhere.example")
    assert attempt.tls is not None and attempt.tls.startswith("TLSv1.")


def test_implicit_tls_route_with_verify(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA,
        mx_port: int) -> None:
    cert, key = ca.issue("127.0.0.2")  # an IP next hop is checked against the IP SANs
    mx = fake_mx(MX1, implicit_tls=server_context(cert, key))
    route = parse_config(f'[routes]\n"one.test" = "smtps:[127.0.0.2]:{mx_port}"\n',
                         "t.toml").routes["one.test"]
    assert route.implicit_tls and route.nexthop == f"smtps:[127.0.0.2]:{mx_port}"
    out = outbound(routes={"one.test": route}, **verify(ca, **{"one.test": "verify"}))
    qid = out.submit("bob@one.test")
    out.run()
    assert out.recipients(qid)["bob@one.test"].state == DELIVERED
    assert [m.tls for m in mx.received] == [True]


def test_implicit_tls_that_fails_verify_defers_4_7_5(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], ca: TestCA,
        mx_port: int) -> None:
    cert, key = ca.issue("smtp.provider.test", self_signed=True)
    smarthost = fake_mx(MX1, implicit_tls=server_context(cert, key))
    out = outbound(delivery={**smtps_relay(mx_port), "tls_security_level": "verify"})
    qid = out.submit("carol@elsewhere.example")
    out.run()
    rcpt = out.recipients(qid)["carol@elsewhere.example"]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 451, "4.7.5")
    assert rcpt.last_text is not None and "certificate verify failed" in rcpt.last_text
    assert smarthost.received == []


# --- shutdown gives claimed work back -------------------------------------------------


def test_stop_releases_claimed_work_for_the_next_start(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX]) -> None:
    gate = threading.Event()
    slow = fake_mx(MX1, ehlo_gate=gate)  # takes the connection, never answers EHLO
    out = outbound()
    qid = out.submit("bob@one.test")

    async def run_then_stop() -> None:
        task = asyncio.create_task(out.engine.run())
        while slow.connections == 0:
            await asyncio.sleep(0.01)
        out.engine.stop()
        # As `mailgate serve` does: a grace period, then the conversation is cut off.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(task, 0.2)

    try:
        asyncio.run(run_then_stop())
        # Due again at once, not after the 15-minute lease: another engine claims it.
        [item] = out.queue.claim(time.time(), 10, 60.0)
        assert item.message.id == qid
        assert out.recipients(qid)["bob@one.test"].state != DELIVERED
    finally:
        gate.set()
