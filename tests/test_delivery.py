"""The outbound engine against real DNS (tests/support/dnsserver.py) and real receiving MTAs
(aiosmtpd on 127.0.0.2 / 127.0.0.3, tests/support/fakemx.py).

Each test queues messages in a real SQLite queue, runs `DeliveryEngine.run_once()` and
looks at what mailgate decided (the recipient's state, the reply and the attempt it
recorded, the DSN it queued) and at what the fake MX hosts saw. Time is the engine's
clock, moved by hand, so retries need no sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pytest

from mailgate.config import Config, Delivery, Route
from mailgate.delivery.engine import DeliveryEngine
from mailgate.dns import Resolver
from mailgate.queue import Attempt, NewMessage, NewRecipient, Recipient, RecipientState
from mailgate.queue.sqlite import SQLiteQueue
from tests.support.fakemx import DSN, MX1, MX2, FakeMX, parse_dsn

if TYPE_CHECKING:
    from tests.support.dnsserver import DNSServer

pytest_plugins = ["tests.support.dnsserver", "tests.support.fakemx"]

DNS_TIMEOUT = 0.5  # seconds: "no answer" costs this much
RETRY = (60.0, 120.0)
CONTENT = (b"From: Alice <alice@localhost>\r\nTo: someone\r\nSubject: delivery test\r\n"
           b"Message-ID: <delivery-test@localhost>\r\n\r\nHello.\r\n")

DELIVERED = RecipientState.DELIVERED
DEFERRED = RecipientState.DEFERRED
FAILED = RecipientState.FAILED


class Clock:
    """The engine's clock: real time (the queue stamps new work with it) plus whatever
    the test moved it forward by."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Outbound:
    """A queue, a resolver on the test DNS server and an engine, run one round at a time."""

    def __init__(self, tmp_path: Path, dns_server: DNSServer, port: int, **changes: Any
                 ) -> None:
        routes = changes.pop("routes", {})
        delivery = Delivery(smtp_port=port, retry_schedule=RETRY,
                            **changes.pop("delivery", {}))
        self.config = Config(hostname="mailgate.test", data_dir=tmp_path, delivery=delivery,
                             routes=MappingProxyType(routes), **changes)
        self.queue = SQLiteQueue(tmp_path / "queue.db")
        self.clock = Clock()
        self.resolver = Resolver([dns_server.nameserver], timeout=DNS_TIMEOUT)
        self.bounces: list[NewMessage] = []
        self.engine = DeliveryEngine(self.config, self.queue, self.resolver, self._enqueue,
                                     clock=self.clock)

    async def _enqueue(self, message: NewMessage) -> str:
        self.bounces.append(message)
        return await self.queue.enqueue_async(message)

    def submit(self, *recipients: str, sender: str = "alice@localhost",
               content: bytes = CONTENT) -> str:
        return self.queue.enqueue(NewMessage(
            sender=sender, recipients=[NewRecipient(r) for r in recipients], content=content,
            received_at=self.clock(), client_address="127.0.0.1", client_helo="client.test"))

    def run(self) -> int:
        """One round: claim what is due now and deliver it; how many messages."""
        return asyncio.run(self.engine.run_once())

    def recipients(self, qid: str) -> dict[str, Recipient]:
        return {r.address: r for r in self.queue.show(qid).recipients}

    def attempts(self, qid: str, address: str) -> list[Attempt]:
        shown = self.queue.show(qid)
        rid = next(r.id for r in shown.recipients if r.address == address)
        return [a for i, a in shown.attempts if i == rid]

    def dsn(self) -> DSN:
        """The one DSN queued so far, checked for the envelope every DSN must have."""
        assert len(self.bounces) == 1, [b.recipients for b in self.bounces]
        bounce = self.bounces[0]
        assert bounce.sender == ""  # RFC 3464 / RFC 5321 4.5.5: a DSN is sent from <>
        assert [r.address for r in bounce.recipients] == ["alice@localhost"]
        return parse_dsn(bounce.content)


@pytest.fixture
def outbound(tmp_path: Path, dns_server: DNSServer, mx_port: int
             ) -> Iterator[Callable[..., Outbound]]:
    made: list[Outbound] = []

    def make(**changes: Any) -> Outbound:
        out = Outbound(tmp_path / f"q{len(made)}", dns_server, mx_port, **changes)
        made.append(out)
        return out

    yield make
    for out in made:
        out.queue.close()


@pytest.fixture
def mxs(fake_mx: Callable[..., FakeMX]) -> tuple[FakeMX, FakeMX]:
    """Both fake MX hosts up: mx1.test (127.0.0.2) and mx2.test (127.0.0.3)."""
    return fake_mx(MX1), fake_mx(MX2)


def host(name: str, address: str, port: int) -> str:
    return f"{name}[{address}]:{port}"


def assert_null_mx_dsn(dsn: DSN, address: str, domain: str) -> None:
    """RFC 3464 + RFC 7505: Status 5.1.10; a Diagnostic-Code of mailgate's own type (not
    `smtp;`: no remote server said it) that carries 556 5.1.10 and names the null MX."""
    [rcpt] = dsn.recipients
    assert rcpt["final-recipient"].lower() == f"rfc822; {address}"
    assert rcpt["action"] == "failed"
    assert rcpt["status"] == "5.1.10"
    kind, _, diagnostic = rcpt["diagnostic-code"].partition(";")
    assert kind.strip().lower() != "smtp", rcpt["diagnostic-code"]
    assert kind.strip() and " " not in kind.strip(), rcpt["diagnostic-code"]
    assert "556 5.1.10" in diagnostic
    assert "null MX" in diagnostic and domain in diagnostic
    assert "remote-mta" not in rcpt  # nothing remote was involved


# --- null MX (RFC 7505): never connected to ------------------------------------------


@pytest.mark.parametrize("domain", ["null.test", "mixed.test", "alias-null.test"])
def test_null_mx_fails_556_at_once_without_any_connection(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX], dns_server: DNSServer,
        domain: str) -> None:
    out = outbound()
    address = f"user@{domain}"
    qid = out.submit(address)
    assert out.run() == 1
    rcpt = out.recipients(qid)[address]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (FAILED, 556, "5.1.10")
    assert rcpt.last_text is not None and "null MX" in rcpt.last_text
    [attempt] = out.attempts(qid, address)
    assert attempt.host == "" and attempt.remote is False and attempt.outcome == "failed"
    # Not a single connection, not even an address lookup for mixed.test's real MX host.
    assert [mx.connections for mx in mxs] == [0, 0]
    assert dns_server.count("mx1.test") == 0
    assert_null_mx_dsn(out.dsn(), address, domain)
    assert out.run() == 0  # final: never tried again


def test_null_mx_recipient_fails_while_the_other_is_delivered(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.submit("bob@one.test", "carol@null.test")
    out.run()
    states = {a: r.state for a, r in out.recipients(qid).items()}
    assert states == {"bob@one.test": DELIVERED, "carol@null.test": FAILED}
    assert mxs[0].all_rcpts() == ["bob@one.test"] and mxs[0].connections == 1
    dsn = out.dsn()
    assert_null_mx_dsn(dsn, "carol@null.test", "null.test")  # only the failed one


def test_null_mx_published_after_acceptance(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX],
        dns_server: DNSServer) -> None:
    dns_server.servfail.add("later.test")
    out = outbound()
    qid = out.submit("dave@later.test")
    out.run()
    rcpt = out.recipients(qid)["dave@later.test"]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 451, "4.4.3")
    dns_server.add("later.test. MX 0 .")
    dns_server.servfail.discard("later.test")
    out.clock.advance(RETRY[0])
    assert out.run() == 1
    rcpt = out.recipients(qid)["dave@later.test"]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (FAILED, 556, "5.1.10")
    assert [mx.connections for mx in mxs] == [0, 0]
    assert_null_mx_dsn(out.dsn(), "dave@later.test", "later.test")


# --- the routing zone, end to end through the engine ---------------------------------


@pytest.mark.parametrize(
    ("domain", "state", "code", "enhanced", "where"),
    [
        # A CNAME'd MX target: followed to mx1.test's address.
        ("cname-target.test", DELIVERED, 250, "2.0.0", ("mx-alias.test", MX1)),
        # No MX, an A record: the domain is its own MX (RFC 5321 5.1).
        ("implicit.test", DELIVERED, 250, "2.0.0", ("implicit.test", MX1)),
        ("alias-implicit.test", DELIVERED, 250, "2.0.0", ("alias-implicit.test", MX1)),
        ("one.test", DELIVERED, 250, "2.0.0", ("mx1.test", MX1)),
        # The MX host does not resolve: unable to route.
        ("dangling.test", FAILED, 550, "5.4.4", None),
        # Neither MX nor address: unable to route.
        ("txt-only.test", FAILED, 550, "5.4.4", None),
        # NXDOMAIN: the destination system does not exist (docs/routing.md).
        ("nosuch.test", FAILED, 550, "5.1.2", None),
    ],
)
def test_routing_zone_outcomes(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX], mx_port: int,
        domain: str, state: RecipientState, code: int, enhanced: str,
        where: tuple[str, str] | None) -> None:
    out = outbound()
    address = f"user@{domain}"
    qid = out.submit(address)
    out.run()
    rcpt = out.recipients(qid)[address]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (state, code, enhanced)
    [attempt] = out.attempts(qid, address)
    if where is None:
        assert [mx.connections for mx in mxs] == [0, 0]
        assert attempt.host == "" and attempt.remote is False
        assert rcpt.last_text is not None and domain in rcpt.last_text
        [dsn_rcpt] = out.dsn().recipients
        assert dsn_rcpt["status"] == enhanced
        assert not dsn_rcpt["diagnostic-code"].lower().startswith("smtp;")
    else:
        name, ip = where
        assert attempt.host == host(name, ip, mx_port) and attempt.remote is True
        mx = mxs[0] if ip == MX1 else mxs[1]
        assert mx.all_rcpts() == [address] and mx.received[0].content == CONTENT
        assert out.bounces == []


@pytest.mark.parametrize(
    ("domain", "fault"),
    [("servfail.test", "servfail"), ("refused.test", "refused"), ("timeout.test", "drop")],
)
def test_dns_trouble_defers_4_4_3_and_is_retried(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX], dns_server: DNSServer,
        mx_port: int, domain: str, fault: str) -> None:
    out = outbound()
    address = f"user@{domain}"
    qid = out.submit(address)
    out.run()
    rcpt = out.recipients(qid)[address]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 451, "4.4.3")
    assert rcpt.next_attempt == pytest.approx(out.clock() + RETRY[0], abs=2)
    assert [mx.connections for mx in mxs] == [0, 0]
    assert out.bounces == []
    assert out.run() == 0  # not due yet
    getattr(dns_server, fault).discard(domain)  # the DNS trouble is over
    out.clock.advance(RETRY[0])
    assert out.run() == 1
    rcpt = out.recipients(qid)[address]
    assert (rcpt.state, rcpt.attempts) == (DELIVERED, 2)
    assert out.attempts(qid, address)[-1].host == host("mx1.test", MX1, mx_port)
    assert mxs[0].all_rcpts() == [address]


# --- MX hosts in order ---------------------------------------------------------------


def test_the_preferred_mx_gets_the_mail(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.submit("bob@pref.test")
    out.run()
    assert out.recipients(qid)["bob@pref.test"].state == DELIVERED
    assert (mxs[0].all_rcpts(), mxs[1].connections) == (["bob@pref.test"], 0)


def test_first_mx_down_delivers_to_the_second(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], mx_port: int
        ) -> None:
    mx2 = fake_mx(MX2)  # nothing listens on 127.0.0.2
    out = outbound()
    qid = out.submit("bob@pref.test")
    out.run()
    assert out.recipients(qid)["bob@pref.test"].state == DELIVERED
    assert mx2.all_rcpts() == ["bob@pref.test"]
    assert out.attempts(qid, "bob@pref.test")[-1].host == host("mx2.test", MX2, mx_port)


def test_first_mx_greeting_421_delivers_to_the_second(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX]) -> None:
    busy = fake_mx(MX1, greeting="421")
    mx2 = fake_mx(MX2)
    out = outbound()
    qid = out.submit("bob@pref.test")
    out.run()
    assert out.recipients(qid)["bob@pref.test"].state == DELIVERED
    assert (busy.connections, mx2.all_rcpts()) == (1, ["bob@pref.test"])


def test_mx_host_without_address_is_skipped(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.submit("bob@half.test")  # MX 10 nowhere.test (no address), MX 20 mx2.test
    out.run()
    assert out.recipients(qid)["bob@half.test"].state == DELIVERED
    assert (mxs[0].connections, mxs[1].all_rcpts()) == (0, ["bob@half.test"])


def test_only_mx_greeting_421_defers_with_its_reply(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX], mx_port: int
        ) -> None:
    busy = fake_mx(MX1, greeting="421")
    out = outbound()
    qid = out.submit("bob@one.test")
    out.run()
    rcpt = out.recipients(qid)["bob@one.test"]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 421, "4.3.2")
    [attempt] = out.attempts(qid, "bob@one.test")
    # The server said it: the attempt records the remote reply, and where it came from.
    assert attempt.remote is True and attempt.host == host("mx1.test", MX1, mx_port)
    assert busy.connections == 1 and out.bounces == []


def test_every_mx_down_defers_4_4_1(outbound: Callable[..., Outbound], mx_port: int) -> None:
    out = outbound()
    qid = out.submit("bob@pref.test")
    out.run()
    rcpt = out.recipients(qid)["bob@pref.test"]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 451, "4.4.1")
    [attempt] = out.attempts(qid, "bob@pref.test")
    assert attempt.host == host("mx2.test", MX2, mx_port) and attempt.remote is False
    assert out.bounces == []


def test_route_override_goes_where_it_says(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX], mx_port: int) -> None:
    # elsewhere.test is not in DNS at all: the [routes] entry is all there is.
    route = Route("elsewhere.test", MX2, mx_port, mx_lookup=False)
    out = outbound(routes={"elsewhere.test": route})
    qid = out.submit("bob@elsewhere.test")
    out.run()
    assert out.recipients(qid)["bob@elsewhere.test"].state == DELIVERED
    assert (mxs[0].connections, mxs[1].all_rcpts()) == (0, ["bob@elsewhere.test"])


# --- what the receiving MTA says -----------------------------------------------------


@pytest.mark.parametrize(
    ("local", "state", "code", "enhanced"),
    [
        ("refuse-550", FAILED, 550, "5.1.1"),
        ("refuse-552", FAILED, 552, "5.2.2"),
        ("defer-450", DEFERRED, 450, "4.2.1"),
        ("defer-421", DEFERRED, 421, "4.3.2"),
    ],
)
def test_remote_replies_decide(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX], mx_port: int,
        local: str, state: RecipientState, code: int, enhanced: str) -> None:
    out = outbound()
    address = f"{local}@one.test"
    qid = out.submit(address)
    out.run()
    rcpt = out.recipients(qid)[address]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (state, code, enhanced)
    [attempt] = out.attempts(qid, address)
    assert attempt.remote is True and attempt.host == host("mx1.test", MX1, mx_port)
    assert mxs[0].received == [] and mxs[1].connections == 0  # a reply is no reason to
    if state is DEFERRED:                                       # try another host
        assert out.bounces == []
        assert rcpt.next_attempt == pytest.approx(out.clock() + RETRY[0], abs=2)
        return
    [dsn_rcpt] = out.dsn().recipients
    assert dsn_rcpt["status"] == enhanced
    assert dsn_rcpt["remote-mta"].lower() == "dns; mx1.test"
    assert dsn_rcpt["diagnostic-code"].startswith(f"smtp; {code} {enhanced} ")


def test_connection_dropped_mid_data_defers(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.submit("drop@one.test")
    out.run()
    rcpt = out.recipients(qid)["drop@one.test"]
    # No reply to the end of data: the message may or may not have arrived, so it is
    # sent again later (a duplicate at worst, never a loss; RFC 5321 6.1).
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (DEFERRED, 451, "4.4.2")
    [attempt] = out.attempts(qid, "drop@one.test")
    assert attempt.remote is False  # mailgate's own words: the server said nothing
    assert mxs[0].received == [] and out.bounces == []


@pytest.mark.parametrize("first", ["450 4.2.1 Mailbox busy", "421 4.3.2 Going down", "drop"])
def test_deferred_then_delivered_on_retry(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX], first: str) -> None:
    mxs[0].once("bob@one.test", first)
    out = outbound()
    qid = out.submit("bob@one.test")
    out.run()
    assert out.recipients(qid)["bob@one.test"].state == DEFERRED
    out.clock.advance(RETRY[0] - 1)
    assert out.run() == 0  # not yet
    out.clock.advance(1)
    assert out.run() == 1
    rcpt = out.recipients(qid)["bob@one.test"]
    assert (rcpt.state, rcpt.attempts, rcpt.last_code) == (DELIVERED, 2, 250)
    assert mxs[0].all_rcpts() == ["bob@one.test"] and out.bounces == []


def test_only_the_deferred_recipient_is_sent_again(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    mxs[0].once("carol@one.test", "450 4.2.1 Mailbox busy")
    out = outbound()
    qid = out.submit("bob@one.test", "carol@one.test")
    out.run()
    states = {a: r.state for a, r in out.recipients(qid).items()}
    assert states == {"bob@one.test": DELIVERED, "carol@one.test": DEFERRED}
    out.clock.advance(RETRY[0])
    out.run()
    assert {r.state for r in out.recipients(qid).values()} == {DELIVERED}
    assert [m.rcpt_tos for m in mxs[0].received] == [("bob@one.test",), ("carol@one.test",)]


def test_421_mid_connection_defers_what_it_cut_off(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    first = out.submit("defer-421@one.test", "bob@one.test")
    second = out.submit("carol@one.test")
    out.run()
    # The server hung up after its 421: nothing it did not accept is lost or bounced.
    for qid in (first, second):
        for rcpt in out.recipients(qid).values():
            assert rcpt.state in (DEFERRED, DELIVERED), rcpt
    assert out.recipients(first)["defer-421@one.test"].last_code == 421
    assert out.bounces == []
    out.clock.advance(RETRY[0])
    mxs[0].script["defer-421@one.test"] = ["250 2.1.5 OK now"]
    out.run()
    assert {r.state for q in (first, second) for r in out.recipients(q).values()} == {DELIVERED}
    assert sorted(mxs[0].all_rcpts()) == ["bob@one.test", "carol@one.test",
                                          "defer-421@one.test"]


def test_drop_mid_data_loses_nothing_on_a_shared_connection(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    mxs[0].once("bob@one.test", "drop")
    out = outbound()
    first = out.submit("bob@one.test")
    second = out.submit("carol@one.test")
    out.run()
    assert out.recipients(first)["bob@one.test"].state == DEFERRED
    out.clock.advance(RETRY[0])
    out.run()
    assert out.recipients(first)["bob@one.test"].state == DELIVERED
    assert out.recipients(second)["carol@one.test"].state == DELIVERED
    assert sorted(mxs[0].all_rcpts()) == ["bob@one.test", "carol@one.test"]


def test_notify_never_gets_no_dsn(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.queue.enqueue(NewMessage(
        sender="alice@localhost", content=CONTENT, received_at=out.clock(),
        recipients=[NewRecipient("refuse-550@one.test", notify=("NEVER",))]))
    out.run()
    assert out.recipients(qid)["refuse-550@one.test"].state == FAILED
    assert out.bounces == []


def test_orcpt_comes_back_in_the_dsn_but_is_not_sent_without_dsn_support(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    out.queue.enqueue(NewMessage(
        sender="alice@localhost", content=CONTENT, received_at=out.clock(),
        recipients=[NewRecipient("refuse-550@one.test", orcpt="rfc822;Old@one.test",
                                 notify=("FAILURE",))]))
    out.run()
    # aiosmtpd does not announce DSN (RFC 3461): no NOTIFY / ORCPT parameters to it.
    assert mxs[0].rcpt_options == [[]]
    [rcpt] = out.dsn().recipients
    assert rcpt["original-recipient"] == "rfc822; Old@one.test"
    assert rcpt["final-recipient"] == "rfc822; refuse-550@one.test"


def test_notify_success_to_a_next_hop_without_dsn_gets_a_relayed_notice(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    # RFC 3461 5.2.2: aiosmtpd offers no DSN, so NOTIFY cannot travel on and mailgate
    # reports the hand-over itself; a recipient that did not ask gets nothing.
    out = outbound()
    qid = out.queue.enqueue(NewMessage(
        sender="alice@localhost", content=CONTENT, received_at=out.clock(),
        recipients=[NewRecipient("bob@one.test", notify=("SUCCESS", "FAILURE")),
                    NewRecipient("carol@one.test"),
                    NewRecipient("dave@one.test", notify=("FAILURE",))]))
    out.run()
    assert {r.state for r in out.recipients(qid).values()} == {DELIVERED}
    dsn = out.dsn()
    assert dsn.message["Subject"] == "Successful Mail Delivery Report"
    [rcpt] = dsn.recipients
    assert rcpt["final-recipient"] == "rfc822; bob@one.test"
    assert (rcpt["action"], rcpt["status"]) == ("relayed", "2.0.0")
    assert rcpt["remote-mta"] == "dns; mx1.test"
    assert dsn.returned is not None
    assert dsn.returned.get_content_type() == "text/rfc822-headers"  # no body back
    assert out.engine.stats.success_notices == 1


def test_second_deferral_waits_for_the_second_step(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.submit("defer-450@one.test")
    out.run()
    out.clock.advance(RETRY[0])
    out.run()
    rcpt = out.recipients(qid)["defer-450@one.test"]
    assert (rcpt.state, rcpt.attempts) == (DEFERRED, 2)
    assert rcpt.next_attempt == pytest.approx(out.clock() + RETRY[1], abs=2)


def test_queue_lifetime_ends_in_a_bounce(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound(delivery={"max_queue_lifetime": 100.0})
    qid = out.submit("defer-450@one.test")
    out.run()
    out.clock.advance(RETRY[0])
    out.run()
    assert out.recipients(qid)["defer-450@one.test"].state == DEFERRED
    out.clock.advance(RETRY[1])
    out.run()
    rcpt = out.recipients(qid)["defer-450@one.test"]
    assert (rcpt.state, rcpt.last_code, rcpt.last_enhanced) == (FAILED, 554, "5.4.7")
    assert out.dsn().recipients[0]["status"] == "5.4.7"


def test_one_of_two_refused_gives_one_dsn_for_the_failed_one(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.submit("bob@one.test", "refuse-550@one.test")
    out.run()
    states = {a: r.state for a, r in out.recipients(qid).items()}
    assert states == {"bob@one.test": DELIVERED, "refuse-550@one.test": FAILED}
    assert mxs[0].all_rcpts() == ["bob@one.test"]
    dsn = out.dsn()
    [rcpt] = dsn.recipients
    assert rcpt["final-recipient"].lower() == "rfc822; refuse-550@one.test"
    assert (rcpt["action"], rcpt["status"]) == ("failed", "5.1.1")
    assert rcpt["diagnostic-code"] == "smtp; 550 5.1.1 No such user here"
    assert dsn.per_message["reporting-mta"].lower() == "dns; mailgate.test"
    assert "bob@one.test" not in dsn.message.as_string().split("message/rfc822")[0]


def test_failures_at_three_destinations_give_one_dsn_naming_them_all(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    # Three destinations (two MX domains and a null MX), decided by three separate
    # tasks at different moments: the sender still gets one notice for the message.
    out = outbound()
    qid = out.submit("refuse-550@one.test", "bob@one.test", "refuse-552@pref.test",
                     "carol@null.test")
    out.run()
    states = {a: r.state for a, r in out.recipients(qid).items()}
    assert states == {"refuse-550@one.test": FAILED, "bob@one.test": DELIVERED,
                      "refuse-552@pref.test": FAILED, "carol@null.test": FAILED}
    dsn = out.dsn()  # exactly one
    got = {r["final-recipient"].lower(): r["status"] for r in dsn.recipients}
    assert got == {"rfc822; refuse-550@one.test": "5.1.1",
                   "rfc822; refuse-552@pref.test": "5.2.2",
                   "rfc822; carol@null.test": "5.1.10"}


def test_a_failed_bounce_is_not_bounced(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.submit("refuse-550@one.test", sender="")
    out.run()
    assert out.recipients(qid)["refuse-550@one.test"].state == FAILED
    assert out.bounces == []
    assert [m.id for m in out.queue.list()] == [qid]


def test_bounce_for_a_null_mx_of_a_null_sender_is_dropped(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.submit("user@null.test", sender="")
    out.run()
    assert out.recipients(qid)["user@null.test"].state == FAILED
    assert out.bounces == [] and [m.id for m in out.queue.list()] == [qid]


# --- connections ---------------------------------------------------------------------


def test_twenty_messages_share_one_connection(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    ids = [out.submit(f"user{i}@one.test", content=CONTENT + f"{i}\r\n".encode())
           for i in range(20)]
    assert out.run() == 20
    assert all(out.recipients(q)[f"user{i}@one.test"].state == DELIVERED
               for i, q in enumerate(ids))
    assert mxs[0].connections == 1 and len(mxs[0].received) == 20
    assert sorted(m.content for m in mxs[0].received) == sorted(
        CONTENT + f"{i}\r\n".encode() for i in range(20))
    assert out.engine.stats.messages_per_connection == [20]


def test_mail_that_keeps_coming_is_claimed_together(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first message after a quiet spell is claimed at once. While mail is flowing,
    a wake-up waits GATHER before claiming, and what arrives meanwhile goes in the same
    claim and conversation. GATHER is 1.5 s here (0.02 s in use), so a slow machine
    cannot split what the test sends 0.4 s apart."""
    monkeypatch.setattr(DeliveryEngine, "GATHER", 1.5)
    monkeypatch.setattr(DeliveryEngine, "GATHER_AFTER", 5.0)
    out = outbound()
    engine = out.engine

    async def main() -> None:
        task = asyncio.create_task(engine.run())
        try:
            for address in ("a@one.test", "b@one.test", "c@one.test"):
                await asyncio.to_thread(out.submit, address)
                engine.wake()
                await asyncio.sleep(0.4)
            while len(mxs[0].received) < 3:
                await asyncio.sleep(0.02)
        finally:
            engine.stop()
            await task

    asyncio.run(main())
    assert mxs[0].all_rcpts() == ["a@one.test", "b@one.test", "c@one.test"]
    # a alone (claimed at once), then b and c together (b's claim waited for c)
    assert engine.stats.messages_per_connection == [1, 2]


def test_a_connection_carries_at_most_messages_per_connection(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DeliveryEngine, "MESSAGES_PER_CONNECTION", 8)
    out = outbound(delivery={"concurrency_per_destination": 1})
    for i in range(20):
        out.submit(f"user{i}@one.test")
    assert out.run() == 20
    assert mxs[0].connections == 3 and len(mxs[0].received) == 20
    assert sorted(out.engine.stats.messages_per_connection) == [4, 8, 8]


def test_idna_domain_is_routed_by_its_a_label(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.queue.enqueue(NewMessage(
        sender="alice@localhost", content=CONTENT, received_at=out.clock(), smtputf8=True,
        recipients=[NewRecipient("jürgen@bücher.test")]))
    out.run()
    assert out.recipients(qid)["jürgen@bücher.test"].state == DELIVERED
    # The envelope carries the canonical A-label form (mailgate.idn) on the wire too.
    assert mxs[0].all_rcpts() == ["jürgen@xn--bcher-kva.test"]


def test_a_refused_message_does_not_spoil_the_connection_for_the_next(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    first = out.submit("refuse-550@one.test")
    second = out.submit("bob@one.test")
    out.run()
    assert out.recipients(first)["refuse-550@one.test"].state == FAILED
    assert out.recipients(second)["bob@one.test"].state == DELIVERED
    assert mxs[0].connections == 1


def test_destinations_are_separate_connections(
        outbound: Callable[..., Outbound], mxs: tuple[FakeMX, FakeMX]) -> None:
    out = outbound()
    qid = out.submit("a@one.test", "b@implicit.test", "c@pref.test")
    out.run()
    assert {r.state for r in out.recipients(qid).values()} == {DELIVERED}
    # three destinations (domains), each its own conversation, all on mx1's address
    assert mxs[0].connections == 3
    assert sorted(mxs[0].all_rcpts()) == ["a@one.test", "b@implicit.test", "c@pref.test"]

