"""Routing (mailgate.dns) against a real DNS server on loopback: no mocks of dnspython."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import dns.message
import dns.query
import pytest

from mailgate.dns import (
    KINDS,
    ImplicitMX,
    MXHost,
    MXHosts,
    NullMX,
    PermFail,
    Resolver,
    Route,
    TempFail,
)

if TYPE_CHECKING:  # imported at run time by pytest_plugins, so pytest can rewrite it first
    from tests.support.dnsserver import DNSServer

pytest_plugins = ["tests.support.dnsserver"]  # dns_server, dns_server_factory, dead_nameserver
T = TypeVar("T")
SHORT = 0.5  # seconds: the timeout in tests, so "no answer" costs little


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    """A monotonic clock the test moves by hand, for the cache."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_resolver(
    server: DNSServer, *, seed: int = 0, clock: Callable[[], float] | None = None, **kw: Any
) -> Resolver:
    if clock is not None:
        kw["clock"] = clock
    return Resolver([server.nameserver], timeout=SHORT, rng=random.Random(seed), **kw)


def resolve(server: DNSServer, domain: str, **kw: Any) -> Route:
    return run(make_resolver(server, **kw).resolve(domain))


def names(route: Route) -> list[str]:
    assert isinstance(route, MXHosts), route
    return [h.name for h in route.hosts]


# -- null MX (RFC 7505) ----------------------------------------------------------------


def test_single_null_mx(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "null.test")
    assert route == NullMX("null.test")
    reply = route.reply()
    assert (reply.code, reply.enhanced) == (556, "5.1.10")
    # Null MX needs no host lookups: there is nowhere to connect.
    assert dns_server.count(qtype="A") == dns_server.count(qtype="AAAA") == 0


def test_null_mx_mixed_with_real_mx_is_null_mx(dns_server: DNSServer) -> None:
    assert resolve(dns_server, "mixed.test") == NullMX("mixed.test")
    assert dns_server.count("mx1.test") == 0


def test_cname_to_null_mx_domain_is_null_mx(dns_server: DNSServer) -> None:
    assert resolve(dns_server, "alias-null.test") == NullMX("alias-null.test")


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("null.test", True),
        ("mixed.test", True),
        ("alias-null.test", True),
        ("one.test", False),
        ("implicit.test", False),
        ("nxdomain.test", False),
        ("[192.0.2.1]", False),
        ("servfail.test", None),
        ("refused.test", None),
    ],
)
def test_is_null_mx(dns_server: DNSServer, domain: str, expected: bool | None) -> None:
    assert run(make_resolver(dns_server).is_null_mx(domain)) is expected


def test_is_null_mx_looks_up_only_the_mx(dns_server: DNSServer) -> None:
    assert run(make_resolver(dns_server).is_null_mx("one.test")) is False
    assert dns_server.count() == dns_server.count("one.test", "MX") == 1


# -- MX and implicit MX ------------------------------------------------------------------


def test_cname_mx_target_resolves_to_the_targets_addresses(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "cname-target.test")
    assert route == MXHosts("cname-target.test", (MXHost("mx-alias.test", 10, ("127.0.0.2",)),))


def test_mx_host_without_address_is_unable_to_route(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "dangling.test")
    assert isinstance(route, PermFail)
    assert route.enhanced == "5.4.4"
    assert "nowhere.test" in route.reason
    reply = route.reply()
    assert (reply.code, reply.enhanced) == (550, "5.4.4")


def test_mx_host_without_address_is_left_out(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "half.test")
    assert route == MXHosts("half.test", (MXHost("mx2.test", 20, ("127.0.0.3",)),))


def test_mx_host_failing_temporarily_makes_the_route_temporary(dns_server: DNSServer) -> None:
    # One host SERVFAILs, the other does not exist: we cannot say "never" yet.
    route = resolve(dns_server, "flaky-mx.test")
    assert isinstance(route, TempFail)
    assert "mx-servfail.test" in route.reason
    assert "SERVFAIL" in route.reason


@pytest.mark.parametrize("domain", ["implicit.test", "alias-implicit.test"])
def test_no_mx_but_an_address_is_implicit_mx(dns_server: DNSServer, domain: str) -> None:
    route = resolve(dns_server, domain)
    assert route == ImplicitMX(domain, ("127.0.0.2",))
    assert isinstance(route, ImplicitMX)
    assert route.hosts == (MXHost(domain, 0, ("127.0.0.2",)),)
    assert route.reply() is None


def test_aaaa_and_a_addresses_are_both_kept(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "dual-mx.test")
    assert route == MXHosts("dual-mx.test", (MXHost("dual.test", 10, ("::1", "127.0.0.2")),))


def test_mx_hosts_ordered_by_preference(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "pref.test")
    assert route == MXHosts(
        "pref.test",
        (MXHost("mx1.test", 10, ("127.0.0.2",)), MXHost("mx2.test", 20, ("127.0.0.3",))),
    )


def test_equal_preferences_are_shuffled_repeatably(dns_server: DNSServer) -> None:
    # equal.test: mx1, mx2, dual at 10; mx-alias at 30.
    def orders(seed: int) -> list[list[str]]:
        resolver = make_resolver(dns_server, seed=seed)

        async def many() -> list[list[str]]:
            return [names(await resolver.resolve("equal.test")) for _ in range(30)]

        return run(many())

    seen = orders(7)
    assert seen == orders(7)  # the shuffle is the injected rng's: a seed repeats it
    assert all(order[-1] == "mx-alias.test" for order in seen)
    assert all(sorted(order[:3]) == ["dual.test", "mx1.test", "mx2.test"] for order in seen)
    # Each resolve shuffles afresh (from cached answers), so the order varies.
    assert len({tuple(order) for order in seen}) > 1
    firsts = {order[0] for order in seen}
    assert firsts == {"dual.test", "mx1.test", "mx2.test"}


# -- permanent and temporary failures ------------------------------------------------------


def test_name_with_only_txt_is_permfail(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "txt-only.test")
    assert isinstance(route, PermFail)
    assert route.enhanced == "5.4.4"


def test_nxdomain_is_permfail(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "nxdomain.test")
    assert isinstance(route, PermFail)
    assert route.enhanced == "5.1.2"
    assert "does not exist" in route.reason
    # No point asking for addresses of a name that does not exist.
    assert dns_server.count() == 1


@pytest.mark.parametrize(
    ("domain", "rcode"), [("servfail.test", "SERVFAIL"), ("refused.test", "REFUSED")]
)
def test_server_failure_is_tempfail(dns_server: DNSServer, domain: str, rcode: str) -> None:
    route = resolve(dns_server, domain)
    assert isinstance(route, TempFail)
    assert rcode in route.reason
    reply = route.reply()
    assert (reply.code, reply.enhanced) == (451, "4.4.3")


def test_no_answer_is_tempfail(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "timeout.test")
    assert isinstance(route, TempFail)
    assert route.enhanced == "4.4.3"
    assert f"within {SHORT:g} s" in route.reason


def test_unreachable_nameserver_is_tempfail(dead_nameserver: tuple[str, int]) -> None:
    resolver = Resolver([dead_nameserver], timeout=SHORT)
    route = run(resolver.resolve("example.test"))
    assert isinstance(route, TempFail)


def test_tempfail_is_not_cached_unless_asked(dns_server: DNSServer) -> None:
    clock = Clock()
    resolver = make_resolver(dns_server, clock=clock)
    run(resolver.resolve("servfail.test"))
    run(resolver.resolve("servfail.test"))
    assert dns_server.count("servfail.test") == 2

    dns_server.reset_counts()
    resolver = make_resolver(dns_server, clock=clock, tempfail_ttl=5)
    run(resolver.resolve("servfail.test"))
    clock.now += 4
    run(resolver.resolve("servfail.test"))
    assert dns_server.count("servfail.test") == 1
    clock.now += 2
    run(resolver.resolve("servfail.test"))
    assert dns_server.count("servfail.test") == 2


# -- the cache -------------------------------------------------------------------------------


def test_answers_are_cached_for_their_ttl(dns_server: DNSServer) -> None:
    # ttl.test MX (120 s) -> mx-ttl.test A (600 s), AAAA absent (negative: SOA minimum 60 s).
    clock = Clock()
    resolver = make_resolver(dns_server, clock=clock)
    first = run(resolver.resolve("ttl.test"))
    assert names(first) == ["mx-ttl.test"]
    assert dns_server.count() == 3

    clock.now += 59
    assert run(resolver.resolve("ttl.test")) == first
    assert dns_server.count() == 3  # all from the cache
    assert resolver.cache_hits == 3

    clock.now += 2  # 61 s: the negative AAAA answer has expired, nothing else
    run(resolver.resolve("ttl.test"))
    assert dns_server.count("mx-ttl.test", "AAAA") == 2
    assert dns_server.count() == 4

    # The MX changes in the zone; mailgate sees it once the 120 s are up, not before.
    dns_server.remove("ttl.test", "MX")
    dns_server.add("ttl.test. 120 MX 0 .")
    clock.now += 50  # 111 s
    assert names(run(resolver.resolve("ttl.test"))) == ["mx-ttl.test"]
    clock.now += 10  # 121 s
    assert run(resolver.resolve("ttl.test")) == NullMX("ttl.test")
    assert dns_server.count("ttl.test", "MX") == 2
    assert dns_server.count("mx-ttl.test", "A") == 1


@pytest.mark.parametrize("domain", ["nxdomain.test", "txt-only.test"])
def test_negative_answers_are_cached_for_the_soa_minimum(
    dns_server: DNSServer, domain: str
) -> None:
    # The zone's SOA has TTL 300 and minimum 60: RFC 2308 says the lesser, 60 s.
    clock = Clock()
    resolver = make_resolver(dns_server, clock=clock)
    first = run(resolver.resolve(domain))
    assert isinstance(first, PermFail)
    sent = dns_server.count()
    clock.now += 59
    assert run(resolver.resolve(domain)) == first
    assert dns_server.count() == sent
    clock.now += 2
    run(resolver.resolve(domain))
    assert dns_server.count() == 2 * sent


def test_zero_ttl_is_not_cached(dns_server_factory: Callable[..., DNSServer]) -> None:
    server = dns_server_factory("zero.test. 0 MX 10 mx.zero.test.\nmx.zero.test. 0 A 127.0.0.2")
    resolver = make_resolver(server)
    run(resolver.resolve("zero.test"))
    run(resolver.resolve("zero.test"))
    assert server.count("zero.test", "MX") == 2


def test_cache_is_keyed_by_lowercase_a_label(dns_server: DNSServer) -> None:
    resolver = make_resolver(dns_server)
    for domain in ("bücher.test", "BÜCHER.test", "xn--bcher-kva.test", "XN--BCHER-KVA.TEST."):
        route = run(resolver.resolve(domain))
        assert isinstance(route, MXHosts)
        assert route.domain == domain  # the Route keeps the domain as given
    assert dns_server.count("xn--bcher-kva.test", "MX") == 1
    assert dns_server.count() == 3  # one MX, mx1's AAAA and A


def test_concurrent_resolves_share_one_lookup(dns_server: DNSServer) -> None:
    resolver = make_resolver(dns_server)

    async def together() -> list[Route]:
        return list(await asyncio.gather(*(resolver.resolve("one.test") for _ in range(10))))

    routes = run(together())
    assert len(set(routes)) == 1
    assert dns_server.count("one.test", "MX") == 1
    assert dns_server.count("mx1.test", "A") == 1


# -- names ---------------------------------------------------------------------------------


def test_idna_domain_is_resolved_by_its_a_label(dns_server: DNSServer) -> None:
    route = resolve(dns_server, "bücher.test")
    assert route == MXHosts("bücher.test", (MXHost("mx1.test", 10, ("127.0.0.2",)),))
    assert dns_server.count("xn--bcher-kva.test", "MX") == 1


def test_case_and_final_dot_do_not_matter(dns_server: DNSServer) -> None:
    assert resolve(dns_server, "NULL.Test.") == NullMX("NULL.Test.")


@pytest.mark.parametrize(
    ("domain", "address"),
    [
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:db8::1]", "2001:db8::1"),
        ("[ipv6:2001:DB8:0:0:0:0:0:1]", "2001:db8::1"),
    ],
)
def test_address_literal_needs_no_dns(dns_server: DNSServer, domain: str, address: str) -> None:
    assert resolve(dns_server, domain) == ImplicitMX(domain, (address,))
    assert dns_server.count() == 0


@pytest.mark.parametrize(
    "domain",
    [
        "[2001:db8::1]",
        "[IPv6:192.0.2.1]",
        "[192.0.2.256]",
        "[192.0.2.1",
        "[tag:x]",
        "",
        "a..test",
        "x" * 64 + ".test",
    ],
)
def test_invalid_destination_is_permfail_without_dns(dns_server: DNSServer, domain: str) -> None:
    route = resolve(dns_server, domain)
    assert isinstance(route, PermFail)
    assert route.enhanced == "5.1.3"
    assert dns_server.count() == 0


# -- the values and the resolver's face --------------------------------------------------


def test_every_route_has_a_kind_and_a_description(dns_server: DNSServer) -> None:
    resolver = make_resolver(dns_server)
    domains = ["one.test", "implicit.test", "null.test", "servfail.test", "nxdomain.test"]

    async def all_routes() -> list[Route]:
        return [await resolver.resolve(d) for d in domains]

    routes = run(all_routes())
    assert [r.kind for r in routes] == list(KINDS)
    assert KINDS == ("mx", "implicit_mx", "null_mx", "temp_fail", "perm_fail")
    for route, domain in zip(routes, domains, strict=True):
        assert domain in route.describe()
    assert "null MX" in routes[2].describe()
    assert resolver.lookups == dict.fromkeys(KINDS, 1)


def test_counters_count_results_cached_or_not(dns_server: DNSServer) -> None:
    resolver = make_resolver(dns_server)

    async def lookups() -> None:
        for domain in ("null.test", "null.test", "one.test", "nxdomain.test"):
            await resolver.resolve(domain)

    run(lookups())
    assert resolver.lookups == {
        "mx": 1,
        "implicit_mx": 0,
        "null_mx": 2,
        "temp_fail": 0,
        "perm_fail": 1,
    }
    # null.test MX; one.test MX, mx1.test AAAA and A; nxdomain.test MX.
    assert resolver.queries == dns_server.count() == 5
    assert resolver.cache_hits == 1


@pytest.mark.parametrize(
    ("nameservers", "message"),
    [([("localhost", 53)], "not an IP address"), ([("127.0.0.1", 0)], "between 1 and 65535")],
)
def test_bad_nameserver_is_refused_clearly(
    nameservers: list[tuple[str, int]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Resolver(nameservers)


def test_test_server_answers_over_tcp_too(dns_server: DNSServer) -> None:
    query = dns.message.make_query("one.test", "MX")
    response = dns.query.tcp(query, dns_server.nameserver[0], port=dns_server.port, timeout=2)
    assert [rr.to_text() for rr in response.answer[0]] == ["10 mx1.test."]
    assert dns_server.count("one.test", "MX") == 1
    assert dns_server.queries[0].transport == "tcp"
