"""The settings as values: frozen dataclasses, one per section, and `Config` holding
them all, with the few questions they answer (is this domain local, may this client
relay, which TLS level for mail to that domain). What the file may say about them, and
how it is checked, is in reader.py and sections.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from mailgate.config.aliases import Aliases, QueueConfig
from mailgate.config.dkimkey import DKIMKey
from mailgate.config.syntax import _join_hostport, _lookup_domain

# What `mailgate.config` offers of this module, loaded on first use (its __getattr__).
__all__ = [
    "AUTH_BACKENDS", "AUTO_WORKERS_MAX", "BARE_NEWLINES", "DEFAULT_LISTENERS", "LOG_FORMATS",
    "LOG_LEVELS", "MIN_MESSAGE_SIZE", "MIN_RECIPIENTS", "ROLES", "TLS_LEVELS", "AuthBackend",
    "AuthChecks", "AuthConfig", "BareNewlines", "Config", "DNSConfig", "Delivery", "Domains",
    "KiB", "Limits", "Listener", "LogConfig", "LogFormat", "LogLevel", "MaildirOwner", "MiB",
    "Network", "Policy", "Relay", "Relayhost", "Role", "Route", "ServerConfig", "Submission",
    "TLSConfig", "TLSLevel", "Timeouts", "WebConfig", "auto_workers",
]

Role = Literal["mx", "submission", "smtps"]
BareNewlines = Literal["normalize", "reject"]
LogLevel = Literal["debug", "info", "warning", "error"]
# Outbound TLS, as Postfix's smtp_tls_security_level: none (never STARTTLS), may
# (opportunistic, unverified), encrypt (TLS required, unverified), verify (TLS required,
# the certificate must chain to a trusted CA and name the host connected to).
TLSLevel = Literal["none", "may", "encrypt", "verify"]
Network = IPv4Network | IPv6Network

ROLES: tuple[Role, ...] = ("mx", "submission", "smtps")
BARE_NEWLINES: tuple[BareNewlines, ...] = ("normalize", "reject")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TLS_LEVELS: tuple[TLSLevel, ...] = ("none", "may", "encrypt", "verify")  # weakest first

KiB = 1024
MiB = 1024 * KiB
# RFC 5321 4.5.3.1.7: a server must accept messages of at least 64K octets.
MIN_MESSAGE_SIZE = 64 * KiB
# RFC 5321 4.5.3.1.8: a server must accept at least 100 recipients per message.
MIN_RECIPIENTS = 100


# --- the settings -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening socket: `role` decides the policy, `host` is an IP address."""

    role: Role
    host: str
    port: int

    @property
    def address(self) -> str:
        """`127.0.0.1:2525` or `[::1]:2525`, as it is written in the file."""
        return _join_hostport(self.host, self.port)


DEFAULT_LISTENERS: tuple[Listener, ...] = (
    Listener("mx", "127.0.0.1", 2525),
    Listener("submission", "127.0.0.1", 2587),
)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Certificate and key (PEM, absolute paths); None -> self-signed in data_dir."""

    cert: Path | None = None
    key: Path | None = None  # equals cert when the key is inside the certificate file

    @property
    def self_signed(self) -> bool:
        return self.cert is None


@dataclass(frozen=True, slots=True)
class Domains:
    """Local domains (delivered to Maildirs) and who in them exists."""

    # lower-case A-labels. localhost.localdomain too: programs that insist on a dot in
    # the domain of an address (git send-email) can then address local mail.
    local: tuple[str, ...] = ("localhost", "localhost.localdomain")
    catch_all: bool = True
    mailboxes: frozenset[str] = frozenset()  # "user@domain", lower case
    # Where mail for <postmaster> and postmaster@<any local domain> goes (RFC 5321 4.5.1);
    # None: postmaster@<the first local domain>, a Maildir of its own.
    postmaster: str | None = None
    # Local domains that accept any local part, besides all of them when `catch_all`.
    catch_all_domains: frozenset[str] = frozenset()
    # `bob+tag@` is bob's (his aliases, his mailbox) unless bob+tag is known itself;
    # "" turns plus-addressing off.
    recipient_delimiter: str = "+"
    aliases_file: Path | None = None  # aliases(5) format, read with the configuration

    def catches_all(self, domain: str) -> bool:
        """Whether every local part at this local domain is accepted (catch-all)."""
        return self.catch_all or _lookup_domain(domain) in self.catch_all_domains

    @property
    def postmaster_mailbox(self) -> str:
        """The local address that receives the postmaster's mail."""
        return self.postmaster or f"postmaster@{self.local[0]}"

    def is_local(self, domain: str) -> bool:
        """Whether mail for `domain` is delivered here (any case, U- or A-label)."""
        name = _lookup_domain(domain)
        return name is not None and name in self.local

    def has_mailbox(self, local_part: str, domain: str) -> bool:
        """Whether the address is listed in `mailboxes`, or is a local postmaster.

        Case does not matter. With `catch_all` off, a recipient is accepted when this
        is true or the AUTH user database knows the address; that check is the server's.
        """
        name = _lookup_domain(domain)
        if name is None or name not in self.local:
            return False
        local_part = local_part.lower()
        return local_part == "postmaster" or f"{local_part}@{name}" in self.mailboxes


@dataclass(frozen=True, slots=True)
class Relay:
    """Networks whose clients may relay without AUTH."""

    networks: tuple[Network, ...] = (ip_network("127.0.0.0/8"), ip_network("::1/128"))
    # Asked several times a message (MAIL, each RCPT, the checks): parsing the address
    # each time was 4 % of the listener's time, and a cache keyed on the networks too
    # hashed every network each time. So each Relay keeps the last few thousand answers.
    _answers: dict[object, bool] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def allows(self, ip: str | IPv4Address | IPv6Address) -> bool:
        """Whether a client at `ip` may relay; an unparsable address may not."""
        answer = self._answers.get(ip)
        if answer is None:
            if len(self._answers) >= 4096:
                self._answers.clear()
            answer = self._answers[ip] = _relay_allows(self.networks, ip)
        return answer


def _relay_allows(networks: tuple[Network, ...], ip: str | IPv4Address | IPv6Address) -> bool:
    try:
        addr = ip_address(ip) if isinstance(ip, str) else ip
    except ValueError:
        return False
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


@dataclass(frozen=True, slots=True)
class Limits:
    message_size: int = 25 * MiB  # bytes; advertised as SIZE (RFC 1870)
    recipients: int = 100  # per message
    connections: int = 1000  # concurrent, all clients
    connections_per_ip: int = 50  # concurrent, one client address
    hops: int = 50  # Received: headers a message may carry; more is a loop (554 5.4.6)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Server-side timeouts in seconds (RFC 5321 4.5.3.2)."""

    command: float = 300.0  # for a whole command line, from the moment we are ready for it
    data_block: float = 180.0  # for the first chunk of DATA, and grace for the rate below
    min_data_rate: int = 500  # bytes/s a message must keep up on average (Postfix's value)
    tls_handshake: float = 10.0  # for a whole TLS handshake (STARTTLS or implicit TLS)
    # When the open connections reach 80 % of limits.connections, these replace the
    # timeouts above (Postfix's stress mode): idle clients give up their slots sooner.
    stress_command: float = 10.0
    stress_data_block: float = 30.0


@dataclass(frozen=True, slots=True)
class Submission:
    """Who may use which envelope sender after AUTH (Postfix's sender login maps).

    A user named `alice` owns `alice@` at every local domain; a user named
    `alice@example.org` owns that address; `sender_addresses` grants more: user name ->
    addresses, where `@example.org` stands for every address at that domain."""

    sender_login_check: bool = True
    sender_addresses: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class DNSConfig:
    """Nameservers as (IP address, port); empty -> the system resolver."""

    nameservers: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    sender_null_mx_check: bool = True  # MAIL FROM a null-MX domain -> 550 5.7.27 (MX role)
    recipient_null_mx_check: bool = True  # RCPT TO a null-MX domain -> 556 5.1.10 (relay)
    bare_newlines: BareNewlines = "normalize"  # bare CR or LF in DATA: fix to CRLF, or 5xx


@dataclass(frozen=True, slots=True)
class AuthChecks:
    """[auth_checks]: what is verified of mail from clients that are neither
    authenticated nor in [relay] networks (docs/authentication.md, "Verifying")."""

    spf: bool = True  # RFC 7208, at MAIL FROM
    dkim: bool = True  # RFC 6376, every signature
    dmarc: bool = True  # RFC 7489, needs spf and dkim results
    arc: bool = True  # RFC 8617 chain validation
    dmarc_reject: bool = True  # a p=reject failure: 550 5.7.1 at the end of DATA
    spf_reject: bool = False  # an SPF fail (-all): 550 5.7.23 at MAIL FROM

    @property
    def any(self) -> bool:
        return self.spf or self.dkim or self.dmarc or self.arc


@dataclass(frozen=True, slots=True)
class Relayhost:
    """The smarthost all non-local mail goes to; `mx_lookup` False for `[host]`."""

    host: str
    port: int
    mx_lookup: bool
    # AUTH (RFC 4954) at the smarthost: the password is read from `password_file` when
    # the configuration is loaded, and only ever sent over TLS.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: Path | None = None
    implicit_tls: bool = False  # "smtps:": TLS from the first byte (RFC 8314), no STARTTLS

    @property
    def address(self) -> str:
        return _join_hostport(self.host, self.port, brackets=not self.mx_lookup)


@dataclass(frozen=True, slots=True)
class Route:
    """A per-domain override: mail for `domain` goes to `host`:`port`.

    As in Postfix's transport map, `[host]` (and an IP address) is connected to as it
    is; a bare host name is resolved like a mail domain (MX, then A/AAAA).
    """

    domain: str
    host: str
    port: int
    mx_lookup: bool
    implicit_tls: bool = False  # "smtps:": TLS from the first byte (RFC 8314), no STARTTLS
    # "lmtp:" (RFC 2033), for a local domain: delivered by LMTP to `host`:`port`, or to
    # the Unix socket `unix` when that is set ("lmtp:unix:/path").
    lmtp: bool = False
    unix: str | None = None

    @property
    def nexthop(self) -> str:
        """`smtp:[host]:port`, `smtps:host:port`, `lmtp:unix:/path`, as in the file."""
        if self.unix is not None:
            return f"lmtp:unix:{self.unix}"
        scheme = "lmtp:" if self.lmtp else "smtps:" if self.implicit_tls else "smtp:"
        return scheme + _join_hostport(self.host, self.port, brackets=not self.mx_lookup)


@dataclass(frozen=True, slots=True)
class Delivery:
    smtp_port: int = 25  # port of remote MX hosts
    retry_schedule: tuple[float, ...] = (300.0, 600.0, 1200.0, 2400.0, 4800.0, 7200.0)
    max_queue_lifetime: float = 5 * 86400.0  # seconds; then the message bounces
    concurrency: int = 100  # outbound connections in all
    concurrency_per_destination: int = 20
    relayhost: Relayhost | None = None
    delay_warning: float = 4 * 3600.0  # seconds; 0 = no delay notices
    tls_security_level: TLSLevel = "may"  # for destinations [tls_policy] does not name
    tls_ca_file: Path | None = None  # trusted CAs for "verify"; None: the system's store
    connection_cache_time: float = 2.0  # seconds an idle connection waits for more; 0 off

    def retry_delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt; the last step repeats."""
        index = min(max(failures, 1), len(self.retry_schedule)) - 1
        return self.retry_schedule[index]


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The web page and JSON API; `enabled` False when the address is "".

    `allowed_hosts`: names (lower case) that a request's Host header may give besides
    the address itself (and localhost for a loopback address, `hostname` always)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8025
    allowed_hosts: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return _join_hostport(self.host, self.port) if self.enabled else ""


AUTO_WORKERS_MAX = 4  # each worker is a writer to the one SQLite queue: measured to 2


def auto_workers() -> int:
    """`[server] workers = "auto"` (the default): one worker per CPU this process may
    run on (its affinity, so a container's or taskset's limit counts), at most
    AUTO_WORKERS_MAX."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, AUTO_WORKERS_MAX))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    # Processes serving on the same ports, sharing the server's limits (workers.py);
    # by default ("auto") one per CPU this process may run on, up to AUTO_WORKERS_MAX.
    workers: int = field(default_factory=auto_workers)
    # The user `serve` runs as once its ports are bound, when started as root; None:
    # "mailgate". "root" keeps root (said explicitly, never by default).
    user: str | None = None


@dataclass(frozen=True, slots=True)
class MaildirOwner:
    """A [maildir] entry: whose Maildir it is and where (docs/delivery.md).

    `user` is a system user (looked up when delivering) or None with `uid`/`gid`;
    `system` makes each local part a system user with its own `~/Maildir`. `path` is
    a template: `%d` the domain, `%n` the local part, `~/` the owner's home; None:
    `~/Maildir` of a named owner."""

    key: str  # a domain or an address (lower case, A-labels)
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    path: str | None = None
    system: bool = False


AuthBackend = Literal["file", "dovecot"]
AUTH_BACKENDS: tuple[AuthBackend, ...] = ("file", "dovecot")


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Whom SMTP AUTH asks: mailgate's users file, or Dovecot's auth service."""

    backend: AuthBackend = "file"
    dovecot_socket: Path = Path("/run/dovecot/auth-client")
    timeout: float = 10.0  # seconds for one whole exchange with Dovecot


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "text"  # json: one object per line, for journald/Loki/Elastic


def _default_data_dir() -> Path:
    return Path.cwd() / "mailgate-data"


def _no_routes() -> Mapping[str, Route]:
    return MappingProxyType({})


def _no_tls_policy() -> Mapping[str, TLSLevel]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Config:
    """All settings. `source` is the file read, None for the zero-config defaults."""

    hostname: str = "localhost"
    data_dir: Path = field(default_factory=_default_data_dir)  # absolute
    listen: tuple[Listener, ...] = DEFAULT_LISTENERS
    tls: TLSConfig = TLSConfig()
    domains: Domains = Domains()
    relay: Relay = Relay()
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    dns: DNSConfig = DNSConfig()
    policy: Policy = Policy()
    auth_checks: AuthChecks = AuthChecks()
    submission: Submission = Submission()
    delivery: Delivery = Delivery()
    routes: Mapping[str, Route] = field(default_factory=_no_routes)  # domain -> Route
    # A mail domain (A-label) or a next hop ("[host]:port", "host:port") -> TLS level
    tls_policy: Mapping[str, TLSLevel] = field(default_factory=_no_tls_policy)
    web: WebConfig = WebConfig()
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    aliases: Aliases = field(default_factory=Aliases)
    queue: QueueConfig = field(default_factory=QueueConfig)
    # [maildir]: a domain or an address -> who owns its Maildir and where it is
    maildir: Mapping[str, MaildirOwner] = field(default_factory=lambda: MappingProxyType({}))
    auth: AuthConfig = AuthConfig()
    # [dkim]: signing domain -> its keys, read at load time (config/dkim.py, keys_for)
    dkim: Mapping[str, tuple[DKIMKey, ...]] = field(
        default_factory=lambda: MappingProxyType({}))
    source: str | None = None

    def maildir_owner(self, address: str) -> MaildirOwner | None:
        """The [maildir] entry for `address` (the address's own, else its domain's)."""
        local, _, domain = address.rpartition("@")
        name = _lookup_domain(domain)
        if name is None:
            return None
        return self.maildir.get(f"{local.lower()}@{name}") or self.maildir.get(name)

    def lmtp_route(self, domain: str) -> Route | None:
        """The "lmtp:" [routes] entry of a local domain, if it has one."""
        route = self.route_for(domain)
        return route if route is not None and route.lmtp else None

    def route_for(self, domain: str) -> Route | None:
        """The [routes] override for `domain` (any case, U- or A-label), if any."""
        name = _lookup_domain(domain)
        return None if name is None else self.routes.get(name)

    def tls_level_for(self, domain: str) -> TLSLevel:
        """The outbound TLS level for mail to `domain`, wherever it is sent.

        The stronger of the [tls_policy] entries for the domain and for its next hop (the
        [routes] target or the relayhost, written as in those settings); with neither,
        `delivery.tls_security_level`. A relayhost that is given a password gets at least
        "encrypt": credentials never travel in the clear.
        """
        name = _lookup_domain(domain)
        keys = [name]
        route = None if name is None else self.routes.get(name)
        relay = self.delivery.relayhost
        hop = route or relay
        if hop is not None:
            keys.append(_join_hostport(hop.host, hop.port, brackets=not hop.mx_lookup))
            keys.append(hop.host.lower())  # a plain name also matches a next hop's host
        found = [self.tls_policy[k] for k in keys if k is not None and k in self.tls_policy]
        level = max(found, key=TLS_LEVELS.index) if found else \
            self.delivery.tls_security_level
        if route is None and relay is not None and relay.username is not None:
            level = max(level, "encrypt", key=TLS_LEVELS.index)
        return level
