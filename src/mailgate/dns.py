"""Where mail goes: a domain in, a Route value out.

`Resolver.resolve(domain)` asks DNS (dnspython's asyncio resolver) and answers with one
of five frozen values, so delivery, the server's policy and `mailgate check` decide on
data rather than on exceptions:

- `MXHosts`: the domain's MX hosts by preference, equal preferences shuffled (RFC 5321
  5.1), each with its AAAA and A addresses. Hosts without an address are left out.
- `ImplicitMX`: no MX, but the domain itself has an address (RFC 5321 5.1).
- `NullMX`: the domain says it accepts no mail (RFC 7505). That is a single `MX 0 .`, and
  also any MX set with a `.` exchange among real hosts: RFC 7505 leaves that mix
  undefined; its owner published "no mail" and the root can never be a mail host, so
  mailgate honours the "no mail", as Postfix does (docs/routing.md).
- `TempFail`: DNS could not tell now (SERVFAIL, REFUSED, no answer in time, nameserver
  unreachable): delivery is deferred, `4.4.3`.
- `PermFail`: DNS said there is nowhere to go: the domain does not exist (`5.1.2`), has
  neither MX nor address, or none of its MX hosts has an address (`5.4.4`).

Answers are cached per (name, type) for their TTL, negative answers for their SOA
minimum (RFC 2308); a Route is rebuilt from the cached answers on every call, so hosts
of equal preference are shuffled afresh for each delivery attempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeAlias

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TXT import TXT

from mailgate import metrics
from mailgate.codes.reply import Reply

__all__ = [
    "KINDS",
    "NULL_MX_REPLY",
    "ImplicitMX",
    "MXHost",
    "MXHosts",
    "NullMX",
    "PermFail",
    "Records",
    "Resolver",
    "Route",
    "TempFail",
    "null_mx_reply",
]

# RFC 7505 3 and RFC 7504: mail for a domain that publishes a null MX fails with 556
# 5.1.10, wherever that is decided (RCPT at a relay, delivery, `mailgate check`); the
# text is this one, then why (`null_mx_reply`).
NULL_MX_REPLY = Reply.make(556, "5.1.10", "Recipient address has null MX")

DEFAULT_TIMEOUT = 5.0
# Caps on how long answers are kept, whatever their TTL says: a day for data (as common
# resolvers do) and three hours for negative answers (the upper bound RFC 2308 section 5
# suggests), so a fixed mistake in a zone is seen within that time.
MAX_TTL = 86400.0
MAX_NEGATIVE_TTL = 10800.0
# A hostile or broken domain could list hundreds of MX hosts; each costs two lookups.
MAX_MX_HOSTS = 16


@dataclass(frozen=True, slots=True)
class MXHost:
    """One mail exchanger: its name (A-labels), preference and addresses (AAAA, then A)."""

    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MXHosts:
    """Mail for `domain` goes to these hosts, in this order."""

    kind: ClassVar[str] = "mx"
    domain: str
    hosts: tuple[MXHost, ...]

    def describe(self) -> str:
        listed = ", ".join(f"{h.name} (preference {h.preference})" for h in self.hosts)
        return f"mail for {self.domain} goes to its MX hosts: {listed}"

    def reply(self) -> Reply | None:
        return None


@dataclass(frozen=True, slots=True)
class ImplicitMX:
    """`domain` has no MX but has addresses: the domain is its own mail host (RFC 5321 5.1).

    Also the route of an address literal (`[192.0.2.1]`), found without DNS.
    """

    kind: ClassVar[str] = "implicit_mx"
    domain: str
    addresses: tuple[str, ...]

    @property
    def hosts(self) -> tuple[MXHost, ...]:
        """The implicit MX as RFC 5321 5.1 puts it: preference 0, the domain itself."""
        return (MXHost(self.domain, 0, self.addresses),)

    def describe(self) -> str:
        listed = ", ".join(self.addresses)
        if self.domain.startswith("["):
            return f"mail for {self.domain} goes straight to the address {listed}"
        return (
            f"{self.domain} has no MX record, so mail goes to the domain's own address "
            f"({listed}), as RFC 5321 5.1 says (implicit MX)"
        )

    def reply(self) -> Reply | None:
        return None


@dataclass(frozen=True, slots=True)
class NullMX:
    """`domain` publishes a null MX (RFC 7505): it accepts no mail at all.

    Also the route of a domain whose MX set mixes a `.` exchange with real hosts, which
    RFC 7505 leaves undefined: the owner said "no mail", so mailgate (like Postfix)
    honours that rather than trying the other hosts.
    """

    kind: ClassVar[str] = "null_mx"
    domain: str

    def describe(self) -> str:
        return (
            f"{self.domain} publishes a null MX (RFC 7505): it accepts no mail, "
            "so mail to it fails at once, without connecting anywhere"
        )

    def reply(self) -> Reply:
        return null_mx_reply(self.domain)

    def undelivered(self) -> Reply:
        """What delivery records for a recipient in this domain: decided here, no
        connection made."""
        return null_mx_reply(f"{self.domain} publishes MX 0 . and accepts no mail "
                             "(RFC 7505); no connection was attempted")


def null_mx_reply(detail: str) -> Reply:
    """`556 5.1.10 Recipient address has null MX: <detail>`."""
    return Reply.make(NULL_MX_REPLY.code, NULL_MX_REPLY.enhanced,
                      f"{NULL_MX_REPLY.text}: {detail}")


@dataclass(frozen=True, slots=True)
class TempFail:
    """DNS could not say where mail for `domain` goes now; try again later."""

    kind: ClassVar[str] = "temp_fail"
    domain: str
    reason: str
    enhanced: str = "4.4.3"

    def describe(self) -> str:
        return f"where mail for {self.domain} goes is unknown for now ({self.reason})"

    def reply(self) -> Reply:
        return Reply.make(451, self.enhanced, f"DNS lookup failed for {self.domain}: {self.reason}")


@dataclass(frozen=True, slots=True)
class PermFail:
    """There is nowhere to deliver mail for `domain`.

    `enhanced` is `5.1.2` when the domain does not exist (or is not a valid name: `5.1.3`),
    `5.4.4` when it exists but gives no usable route (no MX and no address, or no MX host
    with an address).
    """

    kind: ClassVar[str] = "perm_fail"
    domain: str
    reason: str
    enhanced: str = "5.4.4"

    def describe(self) -> str:
        return f"mail for {self.domain} cannot be delivered: {self.reason}"

    def reply(self) -> Reply:
        return Reply.make(550, self.enhanced, f"Unable to route to {self.domain}: {self.reason}")


Route: TypeAlias = MXHosts | ImplicitMX | NullMX | TempFail | PermFail
KINDS: tuple[str, ...] = tuple(r.kind for r in (MXHosts, ImplicitMX, NullMX, TempFail, PermFail))

_Status = Literal["data", "nodata", "nxdomain", "error"]


@dataclass(frozen=True, slots=True)
class _Answer:
    """One DNS lookup reduced to what routing needs; what the cache holds."""

    status: _Status
    ttl: float
    mx: tuple[tuple[int, str], ...] = ()
    addresses: tuple[str, ...] = ()
    reason: str = ""
    texts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TXTAnswer:
    """`Resolver.txt`: status "data" (with `records`), "nodata", "nxdomain" or "error"
    (with `reason`: a temporary failure, try again later)."""

    status: _Status
    records: tuple[str, ...]
    reason: str = ""


_MX = dns.rdatatype.MX
_TXT = dns.rdatatype.TXT
_A = dns.rdatatype.A
_AAAA = dns.rdatatype.AAAA


class Resolver:
    """Resolves domains to Routes, with its own cache and counters.

    `nameservers` is a list of (IP address, port); empty means the system's resolver
    configuration (/etc/resolv.conf). `timeout` bounds each DNS lookup, all retries
    included. `rng` shuffles hosts of equal preference (pass `random.Random(seed)` for
    repeatable order). `clock` is monotonic seconds, for the cache. A TempFail is kept
    for `tempfail_ttl` seconds (default: not at all), so a queue full of mail for one
    broken domain can be made to cost one lookup instead of one each.
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = 10000,
        tempfail_ttl: float = 0.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"the DNS timeout must be positive, not {timeout}.")
        self.timeout = timeout
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._cache_size = cache_size
        self._tempfail_ttl = tempfail_ttl
        self._cache: dict[tuple[str, int], tuple[float, _Answer]] = {}
        self._inflight: dict[tuple[str, int], asyncio.Future[_Answer]] = {}
        self._config_error = ""
        self.lookups: dict[str, int] = dict.fromkeys(KINDS, 0)
        """resolve() results by Route kind, cached or not."""
        self.queries = 0
        """DNS lookups sent (each may be several packets: retries, TCP fallback)."""
        self.cache_hits = 0
        self._dns = self._make_resolver(nameservers)

    def _make_resolver(self, nameservers: Sequence[tuple[str, int]]) -> dns.asyncresolver.Resolver:
        for host, port in nameservers:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(
                    f"nameserver {host!r} is not an IP address; give it as an IPv4 or IPv6 "
                    "address with a port, e.g. 127.0.0.1:53."
                ) from None
            if not 0 < port < 65536:
                raise ValueError(f"nameserver port {port} is not between 1 and 65535.")
        try:
            res = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:
            # Not fatal here: every lookup will say why it cannot be made.
            self._config_error = "no nameservers are configured on this system (/etc/resolv.conf)"
            res = dns.asyncresolver.Resolver(configure=False)
        if nameservers:
            res.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in nameservers]
        res.timeout = self.timeout
        res.lifetime = self.timeout
        res.cache = None  # ours is keyed and bounded the way routing needs
        return res

    # -- the public face ---------------------------------------------------------------

    async def resolve(self, domain: str) -> Route:
        """Where mail for `domain` (as written in an address, U- or A-labels) goes."""
        route = await self._route(domain)
        self.lookups[route.kind] += 1
        return route

    async def is_null_mx(self, domain: str) -> bool | None:
        """Whether `domain` publishes a null MX; None when DNS cannot tell now.

        Only the MX lookup is made (no host addresses), so it is cheap enough for the
        server to ask at MAIL and RCPT time. A domain that does not exist is not a null MX.
        """
        name = _ascii_name(domain)
        if name is None or name.startswith("["):
            return False
        answer = await self._query(name, _MX)
        if answer.status == "error":
            return None
        return answer.status == "data" and _has_null_mx(answer.mx)

    async def host_route(self, host: str) -> Route:
        """A next hop named directly (a [routes] entry or relayhost in brackets): its own
        addresses, no MX lookup (like Postfix's `[host]`). An IP address needs no DNS."""
        host = host.strip().strip("[]")
        try:
            ipaddress.ip_address(host.removeprefix("IPv6:"))
        except ValueError:
            pass
        else:
            return ImplicitMX(host, (host.removeprefix("IPv6:"),))
        name = _ascii_name(host)
        if name is None:
            return PermFail(host, f"{host!r} is not a valid host name", "5.1.3")
        addresses, failure = await self._addresses(name)
        if addresses:
            return ImplicitMX(host, addresses)
        if failure:
            return TempFail(host, failure)
        return PermFail(host, f"the host {name} has no address", "5.4.4")

    async def txt(self, name: str) -> TXTAnswer:
        """The TXT records at `name` (SPF, DKIM keys, DMARC, MTA-STS, TLS-RPT), each one
        string with its pieces joined (RFC 7208 3.3, RFC 6376 3.6.2.2); cached like the
        routing lookups. A name that is not a domain name is "nxdomain"."""
        qname = _ascii_name(name)
        if qname is None or qname.startswith("["):
            return TXTAnswer("nxdomain", (), f"{name!r} is not a domain name")
        answer = await self._query(qname, _TXT)
        return TXTAnswer(answer.status, answer.texts, answer.reason)

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- routing -------------------------------------------------------------------------

    async def _route(self, domain: str) -> Route:
        domain = domain.strip()
        if domain.startswith("["):
            return _literal_route(domain)
        name = _ascii_name(domain)
        if name is None:
            return PermFail(domain, f"{domain!r} is not a valid domain name", "5.1.3")
        mx = await self._query(name, _MX)
        if mx.status == "error":
            return TempFail(domain, mx.reason)
        if mx.status == "nxdomain":
            return PermFail(domain, f"the domain {name} does not exist (NXDOMAIN)", "5.1.2")
        if mx.status == "data":
            if _has_null_mx(mx.mx):
                return NullMX(domain)
            return await self._mx_route(domain, mx.mx)
        # No MX at all (NODATA): the domain itself is the mail host, if it has an address.
        addresses, failure = await self._addresses(name)
        if addresses:
            return ImplicitMX(domain, addresses)
        if failure:
            return TempFail(domain, failure)
        return PermFail(domain, f"{name} has no MX record and no address record", "5.4.4")

    async def _mx_route(self, domain: str, records: tuple[tuple[int, str], ...]) -> Route:
        best: dict[str, int] = {}
        for pref, host in records:
            if host not in best or pref < best[host]:
                best[host] = pref
        by_pref: dict[int, list[str]] = {}
        for host, pref in best.items():
            by_pref.setdefault(pref, []).append(host)
        ordered: list[tuple[int, str]] = []
        for pref in sorted(by_pref):
            group = sorted(by_pref[pref])  # a fixed start, so a seeded rng repeats
            self._rng.shuffle(group)
            ordered.extend((pref, host) for host in group)
        ordered = ordered[:MAX_MX_HOSTS]
        results = await asyncio.gather(*(self._addresses(host) for _, host in ordered))
        hosts: list[MXHost] = []
        failures: list[str] = []
        unresolved: list[str] = []
        for (pref, host), (addresses, failure) in zip(ordered, results, strict=True):
            if addresses:
                hosts.append(MXHost(host, pref, addresses))
            elif failure:
                failures.append(failure)
            else:
                unresolved.append(host)
        if hosts:
            return MXHosts(domain, tuple(hosts))
        if failures:
            return TempFail(domain, "; ".join(failures))
        return PermFail(
            domain,
            "none of its MX hosts has an address (" + ", ".join(unresolved) + ")",
            "5.4.4",
        )

    async def _addresses(self, name: str) -> tuple[tuple[str, ...], str]:
        """AAAA then A addresses of `name`, and why a lookup failed temporarily ("" if not)."""
        aaaa, a = await asyncio.gather(self._query(name, _AAAA), self._query(name, _A))
        addresses = tuple(dict.fromkeys(aaaa.addresses + a.addresses))
        # One reason is enough: the AAAA and A lookups of a host fail for the same cause.
        failure = next((x.reason for x in (aaaa, a) if x.status == "error"), "")
        return addresses, failure

    # -- any record, for the inbound checks --------------------------------------------

    async def records(self, name: str, rdtype: str) -> Records:
        """Any of A, AAAA, MX, TXT, PTR for `name` (A-labels), through the same cache and
        nameservers as routing: what SPF, DKIM and DMARC verification ask
        (`server/authcheck`). CNAMEs are followed by the resolver."""
        kind = dns.rdatatype.from_text(rdtype)
        ascii_name = _ascii_name(name)
        if ascii_name is None:
            return Records("nxdomain", reason=f"{name!r} is not a valid domain name")
        return _records(await self._query(ascii_name, kind))

    def cached_records(self, name: str, rdtype: str) -> Records | None:
        """`records` from the cache alone, None when it holds no live answer. Only reads
        (no eviction, no lookup), so a worker thread may call it while the event loop
        runs: a cached answer then costs no trip through the loop."""
        ascii_name = _ascii_name(name)
        if ascii_name is None:
            return None
        entry = self._cache.get((ascii_name, int(dns.rdatatype.from_text(rdtype))))
        if entry is None or self._clock() >= entry[0]:
            return None
        return _records(entry[1])

    # -- lookups and the cache -----------------------------------------------------------

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Answer:
        key = (name, int(rdtype))
        cached = self._cache.get(key)
        if cached is not None:
            expires, answer = cached
            if self._clock() < expires:
                self.cache_hits += 1
                return answer
            del self._cache[key]
        # Concurrent deliveries to one domain share one lookup; shield() keeps a caller's
        # cancellation from cancelling the lookup the others wait for.
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._lookup(name, rdtype))
            self._inflight[key] = future
            future.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(future)

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Answer:
        self.queries += 1
        answer = await self._ask(name, rdtype)
        metrics.dns_lookup(answer.status)
        ttl = self._tempfail_ttl if answer.status == "error" else answer.ttl
        if ttl > 0:
            if len(self._cache) >= self._cache_size:
                self._evict()
            self._cache[(name, int(rdtype))] = (self._clock() + ttl, answer)
        return answer

    def _evict(self) -> None:
        now = self._clock()
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]
        while len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]  # the oldest entry

    async def _ask(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Answer:
        what = f"{name} {rdtype.name}"
        if self._config_error:
            return _Answer("error", 0, reason=f"cannot look up {what}: {self._config_error}")
        try:
            qname = dns.name.from_text(name)
            result = await self._dns.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            ttl = _negative_ttl(exc.kwargs.get("responses", {}).values())
            return _Answer("nxdomain", ttl, reason=f"{name} does not exist")
        except dns.exception.Timeout:
            return _Answer("error", 0, reason=f"no DNS answer for {what} within {self.timeout:g} s")
        except dns.resolver.NoNameservers as exc:
            return _Answer("error", 0, reason=f"DNS lookup of {what} failed: {_errors(exc)}")
        except (dns.exception.DNSException, OSError) as exc:
            return _Answer("error", 0, reason=f"DNS lookup of {what} failed: {exc}")
        ttl = float(result.chaining_result.minimum_ttl)
        rrset = result.rrset
        if rrset is None:
            return _Answer("nodata", min(ttl, MAX_NEGATIVE_TTL))
        ttl = min(ttl, MAX_TTL)
        if rdtype == _MX:
            mx = tuple(
                (rd.preference, rd.exchange.to_text(omit_final_dot=True).lower())
                for rd in rrset
                if isinstance(rd, MX)
            )
            return _Answer("data", ttl, mx=mx)
        if rdtype == _TXT:
            texts = tuple(b"".join(rd.strings).decode("utf-8", "replace") for rd in rrset
                          if isinstance(rd, TXT))
            return _Answer("data", ttl, texts=texts)
        return _Answer("data", ttl, addresses=tuple(rd.to_text() for rd in rrset))


@dataclass(frozen=True, slots=True)
class Records:
    """One lookup's answer for `Resolver.records`: `status` is data, nodata, nxdomain or
    error (a temporary failure: `reason` says which). `addresses` holds A and AAAA
    addresses, and PTR targets as written (with the final dot); `txt` each TXT record
    with its strings joined."""

    status: _Status
    mx: tuple[tuple[int, str], ...] = ()
    addresses: tuple[str, ...] = ()
    txt: tuple[str, ...] = ()
    reason: str = ""


def _records(answer: _Answer) -> Records:
    return Records(answer.status, mx=answer.mx, addresses=answer.addresses, txt=answer.texts,
                   reason=answer.reason)


def _has_null_mx(records: Iterable[tuple[int, str]]) -> bool:
    # Any "." exchange, whatever its preference or company: see the module docstring.
    return any(host == "." for _, host in records)


def _ascii_name(domain: str) -> str | None:
    """The lower-cased A-label form of `domain` without the final dot; None if invalid."""
    domain = domain.strip()
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        return None
    try:
        name = domain.encode("idna").decode("ascii").lower()
        dns.name.from_text(name)
    except (UnicodeError, dns.exception.DNSException):
        return None
    return name


def _literal_route(domain: str) -> Route:
    """`[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3): no DNS, the address itself."""
    inner = domain[1:-1] if domain.endswith("]") else ""
    tagged = inner[:5].lower() == "ipv6:"
    try:
        address = ipaddress.ip_address(inner[5:] if tagged else inner)
    except ValueError:
        return PermFail(domain, f"{domain} is not a valid address literal", "5.1.3")
    if (address.version == 6) != tagged:
        return PermFail(
            domain,
            f"{domain} is not a valid address literal (IPv6 needs the IPv6: tag, IPv4 none)",
            "5.1.3",
        )
    return ImplicitMX(domain, (address.compressed,))


def _negative_ttl(responses: Iterable[object]) -> float:
    """How long an NXDOMAIN may be kept: SOA TTL and minimum, CNAMEs on the way (RFC 2308)."""
    ttls = [MAX_NEGATIVE_TTL]
    for response in responses:
        if isinstance(response, dns.message.QueryMessage):
            try:
                ttls.append(float(response.resolve_chaining().minimum_ttl))
            except dns.exception.DNSException:
                continue
    return min(ttls) if len(ttls) > 1 else 0.0


def _errors(exc: dns.resolver.NoNameservers) -> str:
    """`127.0.0.1:5353 answered SERVFAIL`, one per server, from dnspython's error trace."""
    texts: list[str] = []
    for error in exc.kwargs.get("errors", []):
        server, _tcp, port, problem = error[0], error[1], error[2], error[3]
        where = server.removeprefix("Do53:")
        where = where if "@" in where else f"{where}@{port}"
        what = f"answered {problem}" if isinstance(problem, str) else f"failed ({problem})"
        text = f"{where.replace('@', ' port ')} {what}"
        if text not in texts:
            texts.append(text)
    return "; ".join(texts) or "no nameserver answered"
