"""A real DNS server on loopback for tests: zones as data, faults on demand.

`DNSServer` answers on 127.0.0.1, UDP and TCP on one ephemeral port, from records given
in zone-file syntax. It answers the way a recursive resolver would to a stub (which is
what mailgate talks to): CNAME chains inside the data are followed into the answer, an
unknown name is NXDOMAIN and a known name without the asked type is NODATA, both with
the covering SOA in the authority section so negative answers can be cached (RFC 2308).
Names can be made to answer SERVFAIL or REFUSED, or not to answer at all.

Use it from any test file: `pytest_plugins` brings in the fixtures (importing them by
name would shadow them, which ruff rightly flags); import the class for type hints only,
so pytest imports the module first, as a plugin:

    if TYPE_CHECKING:
        from tests.support.dnsserver import DNSServer

    pytest_plugins = ["tests.support.dnsserver"]

    def test_something(dns_server: DNSServer) -> None:
        resolver = Resolver([dns_server.nameserver])

`dns_server` serves `ROUTING_ZONE` (every routing case of the delivery issue, with
`servfail.test`, `refused.test` and `timeout.test` faulted); `dns_server_factory(zone,
...)` starts servers with other data; `dead_nameserver` is a loopback (host, port) where
nothing listens. Every query received is logged in `queries` (see `count()`); data can
change while the server runs (`add`, `remove`), e.g. a null MX published after a message
was accepted.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, DNSError
from dnslib.server import DNSLogger
from dnslib.server import DNSServer as _LibServer

HOST = "127.0.0.1"
DEFAULT_TTL = 300
NEGATIVE_TTL = 60
MAX_CHAIN = 8

ROUTING_ZONE = """
test.               SOA   ns.test. hostmaster.test. 1 3600 600 86400 60
ns.test.            A     127.0.0.1
; MX hosts: two "machines" on loopback, one name that is an alias, one with v6 too
mx1.test.           A     127.0.0.2
mx2.test.           A     127.0.0.3
mx-alias.test.      CNAME mx1.test.
dual.test.          AAAA  ::1
dual.test.          A     127.0.0.2
; RFC 7505 null MX, alone and mixed with a real MX; an alias of a null-MX domain
null.test.          MX    0 .
mixed.test.         MX    0 .
mixed.test.         MX    10 mx1.test.
alias-null.test.    CNAME null.test.
; ordinary MX routing
one.test.           MX    10 mx1.test.
pref.test.          MX    20 mx2.test.
pref.test.          MX    10 mx1.test.
equal.test.         MX    10 mx1.test.
equal.test.         MX    10 mx2.test.
equal.test.         MX    10 dual.test.
equal.test.         MX    30 mx-alias.test.
cname-target.test.  MX    10 mx-alias.test.
dual-mx.test.       MX    10 dual.test.
dangling.test.      MX    10 nowhere.test.
half.test.          MX    10 nowhere.test.
half.test.          MX    20 mx2.test.
flaky-mx.test.      MX    10 mx-servfail.test.
flaky-mx.test.      MX    20 nowhere.test.
; no MX
implicit.test.      A     127.0.0.2
alias-implicit.test. CNAME implicit.test.
txt-only.test.      TXT   "v=spf1 -all"
; faulted (see ROUTING_FAULTS); the data is there, the server will not give it
servfail.test.      MX    10 mx1.test.
refused.test.       MX    10 mx1.test.
timeout.test.       MX    10 mx1.test.
mx-servfail.test.   A     127.0.0.2
; IDNA: bücher.test
xn--bcher-kva.test. MX    10 mx1.test.
; short TTLs, for the cache
ttl.test.       120 MX    10 mx-ttl.test.
mx-ttl.test.    600 A     127.0.0.3
"""

ROUTING_FAULTS: dict[str, frozenset[str]] = {
    "servfail": frozenset({"servfail.test", "mx-servfail.test"}),
    "refused": frozenset({"refused.test"}),
    "drop": frozenset({"timeout.test"}),
}


@dataclass(frozen=True)
class Query:
    name: str
    qtype: str
    transport: str


class _Drop(DNSError):  # type: ignore[misc]  # dnslib is untyped
    """Raised to make dnslib's handler send nothing (it swallows DNSError)."""


def _key(name: object) -> str:
    return str(name).lower().rstrip(".")


class DNSServer:
    """An authoritative-and-recursive-looking DNS server on 127.0.0.1 (UDP and TCP)."""

    def __init__(
        self,
        zone: str | Iterable[str] = "",
        *,
        servfail: Iterable[str] = (),
        refused: Iterable[str] = (),
        drop: Iterable[str] = (),
        default_ttl: int = DEFAULT_TTL,
        negative_ttl: int = NEGATIVE_TTL,
    ) -> None:
        self.default_ttl = default_ttl
        self.negative_ttl = negative_ttl
        self.servfail = {_key(n) for n in servfail}
        self.refused = {_key(n) for n in refused}
        self.drop = {_key(n) for n in drop}
        self.queries: list[Query] = []
        self._lock = threading.Lock()
        self._records: list[Any] = []  # dnslib RRs
        self._servers: list[Any] = []
        self.port = 0
        self.add(zone)

    # -- data ------------------------------------------------------------------------

    def add(self, zone: str | Iterable[str]) -> None:
        """Add records in zone-file syntax (absolute names; TTL optional)."""
        text = zone if isinstance(zone, str) else "\n".join(zone)
        records = RR.fromZone(text, ttl=self.default_ttl)
        with self._lock:
            self._records.extend(records)

    def remove(self, name: str, qtype: str | None = None) -> None:
        """Remove every record of `name` (or only those of type `qtype`)."""
        key = _key(name)
        with self._lock:
            self._records = [
                rr
                for rr in self._records
                if not (_key(rr.rname) == key and (qtype is None or QTYPE[rr.rtype] == qtype))
            ]

    # -- what tests look at ------------------------------------------------------------

    @property
    def nameserver(self) -> tuple[str, int]:
        """(host, port), as mailgate's Resolver takes it."""
        return (HOST, self.port)

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, as the `[dns] nameservers` setting takes it."""
        return f"{HOST}:{self.port}"

    def count(self, name: str | None = None, qtype: str | None = None) -> int:
        """How many queries arrived (for `name`, of type `qtype`)."""
        key = None if name is None else _key(name)
        with self._lock:
            return sum(
                1
                for q in self.queries
                if (key is None or q.name == key) and (qtype is None or q.qtype == qtype)
            )

    def reset_counts(self) -> None:
        with self._lock:
            self.queries.clear()

    # -- life --------------------------------------------------------------------------

    def start(self) -> DNSServer:
        logger = DNSLogger("-request,-reply,-truncated,-error", prefix=False)
        for _ in range(20):
            udp = _LibServer(self, address=HOST, port=0, logger=logger)
            port = udp.server.server_address[1]
            try:
                tcp = _LibServer(self, address=HOST, port=port, tcp=True, logger=logger)
            except OSError:  # the port is taken for TCP: try another
                udp.server.server_close()
                continue
            self.port = port
            self._servers = [udp, tcp]
            for server in self._servers:
                # A short poll, so stop() (socketserver's shutdown) returns at once.
                thread = threading.Thread(
                    target=server.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
                )
                thread.start()
            return self
        raise RuntimeError("could not find a free port for UDP and TCP on 127.0.0.1")

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()
        self._servers = []

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering (dnslib calls this in its handler threads) --------------------------

    def resolve(self, request: Any, handler: Any) -> Any:
        qname = _key(request.q.qname)
        qtype = request.q.qtype
        with self._lock:
            self.queries.append(Query(qname, QTYPE[qtype], handler.protocol))
            records = list(self._records)
        reply = request.reply()
        name = qname
        for _ in range(MAX_CHAIN):
            if name in self.drop:
                raise _Drop(f"dropping the query for {name}")
            if name in self.servfail or name in self.refused:
                reply = request.reply()
                reply.header.rcode = RCODE.SERVFAIL if name in self.servfail else RCODE.REFUSED
                return reply
            owned = [rr for rr in records if _key(rr.rname) == name]
            matches = [rr for rr in owned if rr.rtype == qtype]
            if matches:
                for rr in matches:
                    reply.add_answer(rr)
                return reply
            cname = [rr for rr in owned if rr.rtype == QTYPE.CNAME]
            if cname and qtype != QTYPE.CNAME:
                reply.add_answer(cname[0])
                name = _key(cname[0].rdata.label)
                continue
            exists = any(
                _key(rr.rname) == name or _key(rr.rname).endswith("." + name) for rr in records
            )
            if not exists:
                reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self._soa(name, records))
            return reply
        reply = request.reply()
        reply.header.rcode = RCODE.SERVFAIL  # a CNAME loop, as a resolver would report
        return reply

    def _soa(self, name: str, records: list[Any]) -> Any:
        """The SOA of the closest enclosing zone in the data, or one made for the TLD."""
        best = None
        for rr in records:
            owner = _key(rr.rname)
            if (
                rr.rtype == QTYPE.SOA
                and (name == owner or name.endswith("." + owner))
                and (best is None or len(owner) > len(_key(best.rname)))
            ):
                best = rr
        if best is not None:
            return best
        tld = name.rsplit(".", 1)[-1] or "."
        n = self.negative_ttl
        return RR.fromZone(f"{tld}. {n} SOA ns.{tld}. hostmaster.{tld}. 1 3600 600 86400 {n}")[0]


def routing_server() -> DNSServer:
    """A server (not started) with ROUTING_ZONE and its faults."""
    return DNSServer(
        ROUTING_ZONE,
        servfail=ROUTING_FAULTS["servfail"],
        refused=ROUTING_FAULTS["refused"],
        drop=ROUTING_FAULTS["drop"],
    )


@pytest.fixture
def dns_server_factory() -> Iterator[Callable[..., DNSServer]]:
    """`make(zone, servfail=..., refused=..., drop=...)` -> a started DNSServer."""
    started: list[DNSServer] = []

    def make(zone: str | Iterable[str] = "", **options: Any) -> DNSServer:
        server = DNSServer(zone, **options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    """A started server with ROUTING_ZONE: every routing case, faults included."""
    with routing_server() as server:
        yield server


@pytest.fixture
def dead_nameserver() -> tuple[str, int]:
    """(host, port) on loopback where nothing answers, for "nameserver unreachable"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return (HOST, port)


__all__ = [
    "ROUTING_FAULTS",
    "ROUTING_ZONE",
    "DNSServer",
    "Query",
    "dead_nameserver",
    "dns_server",
    "dns_server_factory",
    "routing_server",
]
