"""mailgate's settings: one TOML file -> typed, validated, frozen values.

`load_config(path)` reads the file (or, given None, returns the zero-config defaults);
`parse_config(text, source)` does the same from text. Every problem found is reported
at once in a `ConfigError`, one line each, naming the file, the key as a dotted path
(`limits.recipients`, `listen[0].role`, `routes."example.org"`), the value given and
what is allowed, so that a bad file stops startup with a message a person can act on.

The keys, their types and defaults are documented in docs/configuration.md.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from fractions import Fraction
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar, cast

from mailgate.idn import DomainError, canonical_domain

__all__ = [
    "DEFAULT_LISTENERS",
    "TLS_LEVELS",
    "Config",
    "ConfigError",
    "DNSConfig",
    "Delivery",
    "Domains",
    "Limits",
    "Listener",
    "LogConfig",
    "Policy",
    "Relay",
    "Relayhost",
    "Route",
    "ServerConfig",
    "Submission",
    "TLSConfig",
    "TLSLevel",
    "Timeouts",
    "WebConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
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
TLS_LEVELS: tuple[TLSLevel, ...] = ("none", "may", "encrypt", "verify")  # weakest first

KiB = 1024
MiB = 1024 * KiB
# RFC 5321 4.5.3.1.7: a server must accept messages of at least 64K octets.
MIN_MESSAGE_SIZE = 64 * KiB
# RFC 5321 4.5.3.1.8: a server must accept at least 100 recipients per message.
MIN_RECIPIENTS = 100


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one sentence per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


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

    local: tuple[str, ...] = ("localhost",)  # lower-case A-labels
    catch_all: bool = True
    mailboxes: frozenset[str] = frozenset()  # "user@domain", lower case
    # Where mail for <postmaster> and postmaster@<any local domain> goes (RFC 5321 4.5.1);
    # None: postmaster@<the first local domain>, a Maildir of its own.
    postmaster: str | None = None

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

    def allows(self, ip: str | IPv4Address | IPv6Address) -> bool:
        """Whether a client at `ip` may relay; an unparsable address may not."""
        try:
            addr = ip_address(ip) if isinstance(ip, str) else ip
        except ValueError:
            return False
        if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
            # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


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

    @property
    def nexthop(self) -> str:
        """`smtp:[host]:port` or `smtps:host:port`, as it is written in the file."""
        scheme = "smtps:" if self.implicit_tls else "smtp:"
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


@dataclass(frozen=True, slots=True)
class ServerConfig:
    workers: int = 1  # processes sharing the listening sockets (SO_REUSEPORT)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: LogLevel = "info"


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
    submission: Submission = Submission()
    delivery: Delivery = Delivery()
    routes: Mapping[str, Route] = field(default_factory=_no_routes)  # domain -> Route
    # A mail domain (A-label) or a next hop ("[host]:port", "host:port") -> TLS level
    tls_policy: Mapping[str, TLSLevel] = field(default_factory=_no_tls_policy)
    web: WebConfig = WebConfig()
    server: ServerConfig = ServerConfig()
    log: LogConfig = LogConfig()
    source: str | None = None

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


# --- entry points -------------------------------------------------------------------


def load_config(path: Path | None) -> Config:
    """Read and validate the TOML file at `path`; None gives the zero-config defaults.

    Relative paths in the file resolve against the file's directory; the default
    data_dir against the current directory.
    """
    if path is None:
        return _build({}, _Reader("(defaults)", Path.cwd()), None)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([f"{path}: cannot read the configuration file: {reason}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([
            f"{path}: not UTF-8 text (byte {exc.start}); TOML files must be UTF-8"
        ]) from None
    return parse_config(text, str(path), base_dir=path.absolute().parent)


def parse_config(text: str, source: str, base_dir: Path | None = None) -> Config:
    """Validate TOML `text`; `source` names it in messages, `base_dir` (default: the
    current directory) is where relative paths resolve."""
    text = text.removeprefix("\ufeff")  # a BOM some editors write; TOML has no use for it
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(source, text, exc)]) from None
    base = (base_dir if base_dir is not None else Path.cwd()).expanduser().absolute()
    return _build(doc, _Reader(source, base), source)


def _syntax_problem(source: str, text: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc)
    lines = text.splitlines()
    at = re.search(r"\s*\(at line (\d+), column (\d+)\)\Z", message)
    if at:
        line, column = int(at.group(1)), int(at.group(2))
        where = f"line {line}, column {column}"
        message = message[: at.start()]
    else:
        message = message.removesuffix(" (at end of document)")
        line = len(lines)
        where = f"line {line} (end of file)"
    shown = lines[line - 1] if 0 < line <= len(lines) else ""
    return f"{source}, {where}: not valid TOML: {message}\n    {line} | {shown}"


# --- value syntaxes -----------------------------------------------------------------


class _Bad(ValueError):
    """One value is wrong; the text says why and what is allowed."""


_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?", re.IGNORECASE)
_SIZE_HELP = 'a number of bytes, or a string like "25MiB", "10MB", "512KiB"'


def parse_size(value: str | int) -> int:
    """Bytes from `1000`, `"1000"`, `"10MB"` (powers of 1000) or `"25MiB"` (of 1024).

    Raises ValueError saying what is wrong.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Bad(f"must be a size: {_SIZE_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise _Bad("must not be negative")
        return value
    match = _SIZE_RE.fullmatch(value.strip())
    if not match:
        raise _Bad(f"is not a size; write {_SIZE_HELP} (KB, MB, GB are powers of 1000, "
                   "KiB, MiB, GiB of 1024)")
    amount = Fraction(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
    if amount.denominator != 1:
        raise _Bad("is not a whole number of bytes")
    return int(amount)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)"
_DURATION_RE = re.compile(rf"(?:{_DURATION_PART}\s*)+")
_DURATION_HELP = 'a number of seconds, or a string like "5m", "90s", "1h20m", "5d", "250ms"'


def parse_duration(value: str | int | float) -> float:
    """Seconds from `90`, `1.5`, `"90"`, `"90s"`, `"5m"`, `"1h20m"`, `"5d"`, `"250ms"`.

    Units: ms, s, m (minutes), h, d, w. Raises ValueError saying what is wrong.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _Bad(f"must be a duration: {_DURATION_HELP}")
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif _DURATION_RE.fullmatch(text):
            seconds = sum(float(n) * _DURATION_UNITS[unit]
                          for n, unit in re.findall(_DURATION_PART, text))
        else:
            raise _Bad(f"is not a duration; write {_DURATION_HELP} "
                       "(units ms, s, m, h, d, w)")
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise _Bad("must be a finite duration")
    if seconds < 0:
        raise _Bad("must not be negative")
    return seconds


_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def _domain(text: str) -> str:
    """A domain name as a lower-case A-label string, without a trailing dot."""
    name = text.removesuffix(".")
    if not name.isascii():
        try:
            name = canonical_domain(name)  # UTS #46 and IDNA 2008, as addresses get
        except DomainError:
            raise _Bad("is not a valid internationalized domain name") from None
    name = name.lower()
    labels = name.split(".")
    if (len(name) > 253 or not all(_LABEL_RE.match(label) for label in labels)
            or labels[-1].isdigit()):
        raise _Bad("is not a domain name (letters, digits, hyphens and dots, "
                   "like mx.example.org)")
    return name


def _lookup_domain(domain: str) -> str | None:
    try:
        return _domain(domain)
    except _Bad:
        return None


def _join_hostport(host: str, port: int, brackets: bool = False) -> str:
    return f"[{host}]:{port}" if brackets or ":" in host else f"{host}:{port}"


def _split_hostport(text: str, default_port: int | None, example: str
                    ) -> tuple[str, int, bool]:
    """`host:port` or `[host]:port` -> (host, port, bracketed)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _Bad(f'has "[" without "]"; write it like "{example}"')
        host, rest, bracketed = text[1:end], text[end + 1 :], True
    else:
        if text.count(":") > 1:
            raise _Bad('an IPv6 address needs brackets, like "[::1]:2525"')
        host, colon, after = text.partition(":")
        rest, bracketed = colon + after, False
    if not host:
        raise _Bad(f'the host is missing; write it like "{example}"')
    if not rest:
        if default_port is None:
            raise _Bad(f'the port is missing; write it like "{example}"')
        return host, default_port, bracketed
    if not rest.startswith(":") or not re.fullmatch(r"\d{1,5}", rest[1:]):
        raise _Bad(f'is not host:port; write it like "{example}"')
    port = int(rest[1:])
    if not 1 <= port <= 65535:
        raise _Bad("the port must be from 1 to 65535")
    return host, port, bracketed


def _ip_hostport(text: str, default_port: int | None, example: str) -> tuple[str, int]:
    """An address to bind or to query: the host must be an IP address."""
    host, port, bracketed = _split_hostport(text, default_port, example)
    try:
        addr = ip_address(host)
    except ValueError:
        raise _Bad(f'the host must be an IP address (0.0.0.0 or [::] for all), not "{host}"'
                   ) from None
    if bracketed and addr.version == 4:
        raise _Bad(f'brackets are for IPv6 addresses only; write "{host}:{port}"')
    return str(addr), port


def _nexthop(text: str, default_port: int, example: str) -> tuple[str, int, bool]:
    """A delivery target -> (host, port, mx_lookup); `[host]` and IPs skip MX lookup."""
    host, port, bracketed = _split_hostport(text, default_port, example)
    literal = host[5:] if host.lower().startswith("ipv6:") else host  # Postfix's [ipv6:...]
    try:
        return str(ip_address(literal)), port, False
    except ValueError:
        return _domain(host), port, not bracketed


# --- reading the document -----------------------------------------------------------

_T = TypeVar("_T")

_SECTIONS: dict[str, tuple[str, ...]] = {
    "listen": ("role", "address"),
    "tls": ("cert", "key"),
    "domains": ("local", "catch_all", "mailboxes", "postmaster"),
    "relay": ("networks",),
    "limits": ("message_size", "recipients", "connections", "connections_per_ip", "hops"),
    "timeouts": ("command", "data_block", "min_data_rate", "tls_handshake", "stress_command",
                 "stress_data_block"),
    "submission": ("sender_login_check", "sender_addresses"),
    "dns": ("nameservers",),
    "policy": ("sender_null_mx_check", "recipient_null_mx_check", "bare_newlines"),
    "delivery": ("smtp_port", "retry_schedule", "max_queue_lifetime", "concurrency",
                 "concurrency_per_destination", "relayhost", "relayhost_username",
                 "relayhost_password_file", "delay_warning", "tls_security_level",
                 "tls_ca_file"),
    "routes": (),  # keys are domains
    "tls_policy": (),  # keys are domains or next hops
    "web": ("address", "allowed_hosts"),
    "server": ("workers",),
    "log": ("level",),
}
_ROOT_KEYS = ("hostname", "data_dir", *_SECTIONS)
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+\Z")


def _key(*parts: str | int) -> str:
    """A dotted TOML key path: limits.recipients, listen[0].role, routes."a.example"."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            shown = part if _BARE_KEY_RE.match(part) else json.dumps(part, ensure_ascii=False)
            out += f".{shown}" if out else shown
    return out


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _show(value: object) -> str:
    text = _toml(value)
    return text if len(text) <= 72 else text[:69] + "..."


def _one_of(options: Iterable[str], given: str) -> str:
    options = list(options)
    text = "must be one of " + ", ".join(options)
    close = difflib.get_close_matches(given.lower(), options, n=1)
    return f'{text}; did you mean "{close[0]}"?' if close else text


class _Reader:
    """Collects every problem in the document, each named by its key path."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base
        self.problems: list[str] = []
        self.bad: set[str] = set()  # key paths with problems, to skip cross-checks

    def report(self, key: str, value: object, why: str) -> None:
        self.bad.add(key)
        self.problems.append(f"{self.source}: {key} = {_show(value)}: {why}")

    def report_key(self, key: str, why: str) -> None:
        self.bad.add(key)
        self.problems.append(f"{self.source}: {key}: {why}")

    def ok(self, *keys: str) -> bool:
        return not self.bad.intersection(keys)

    def check_keys(self, table: Mapping[str, object], path: tuple[str | int, ...],
                   allowed: Sequence[str]) -> None:
        for name, value in table.items():
            if name in allowed:
                continue
            key = _key(*path, name)
            hint = self._suggest(name, path, allowed)
            if not path and isinstance(value, dict):
                self.report_key(key, f"unknown section [{name}]; {hint}")
            elif not path and isinstance(value, list) and value and all(
                    isinstance(item, dict) for item in value):
                self.report_key(key, f"unknown section [[{name}]]; {hint}")
            else:
                self.report(key, value, f"unknown key; {hint}")

    @staticmethod
    def _suggest(name: str, path: tuple[str | int, ...], allowed: Sequence[str]) -> str:
        section = str(path[0]) if path else ""
        close = difflib.get_close_matches(name, allowed, n=1)
        if close and not path and close[0] in _SECTIONS:
            header = f"[[{close[0]}]]" if close[0] == "listen" else f"[{close[0]}]"
            return f"did you mean {header}?"
        if close:
            return f"did you mean {_key(*path, close[0])}?"
        for other, keys in _SECTIONS.items():
            if name in keys and other != section:
                header = f"[[{other}]]" if other == "listen" else f"[{other}]"
                return f"did you mean {other}.{name} (under {header})?"
        where = f"[{section}]" if section else "the top level"
        return f"{where} takes {', '.join(allowed)}"

    def section(self, doc: Mapping[str, object], name: str) -> dict[str, object]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            self.report(name, value, f"must be a table: put its keys under a [{name}] header")
            return {}
        if name not in ("routes", "tls_policy"):
            self.check_keys(value, (name,), _SECTIONS[name])
        return value

    def get(self, table: Mapping[str, object], path: tuple[str | int, ...], name: str,
            convert: Callable[[object], _T], default: _T) -> _T:
        if name not in table:
            return default
        value = table[name]
        try:
            return convert(value)
        except _Bad as exc:
            self.report(_key(*path, name), value, str(exc))
            return default

    def get_list(self, table: Mapping[str, object], path: tuple[str | int, ...], name: str,
                 convert: Callable[[object], _T], default: tuple[_T, ...], *,
                 example: str) -> tuple[_T, ...]:
        if name not in table:
            return default
        value = table[name]
        key = _key(*path, name)
        if not isinstance(value, list):
            self.report(key, value, f"must be a list, like {example}")
            return default
        items: list[_T] = []
        for index, item in enumerate(value):
            try:
                items.append(convert(item))
            except _Bad as exc:
                self.report(_key(*path, name, index), item, str(exc))
                self.bad.add(key)
        return default if key in self.bad else tuple(items)

    def path(self, value: object) -> Path:
        text = _string(value)
        if not text:
            raise _Bad("must not be empty")
        return self.base / Path(text).expanduser()

    def file(self, value: object) -> Path:
        path = self.path(value)
        if not path.is_file():
            raise _Bad(f"no such file: {path}")
        return path


# --- converters: value -> typed value, or _Bad ----------------------------------------


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad("must be a string (in double quotes)")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad("must be true or false (without quotes)")
    return value


def _integer(minimum: int, why: str = "", maximum: int | None = None
             ) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            hint = ""
            if isinstance(value, str) and value.strip().isdigit():
                hint = f" (write it without quotes: {value.strip()})"
            raise _Bad("must be a whole number" + hint)
        if value < minimum:
            raise _Bad(f"must be at least {minimum}{why}")
        if maximum is not None and value > maximum:
            raise _Bad(f"must be at most {maximum}{why}")
        return value
    return convert


_port = _integer(1, " (a TCP port: 1 to 65535)", 65535)


def _size(minimum: int, minimum_text: str, why: str) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if not isinstance(value, int | str):
            raise _Bad(f"must be a size: {_SIZE_HELP}")
        size = parse_size(value)
        if size < minimum:
            raise _Bad(f"must be at least {minimum_text} = {minimum} bytes{why}")
        return size
    return convert


def _duration(allow_zero: bool) -> Callable[[object], float]:
    def convert(value: object) -> float:
        if not isinstance(value, int | float | str):
            raise _Bad(f"must be a duration: {_DURATION_HELP}")
        seconds = parse_duration(value)
        if seconds == 0 and not allow_zero:
            raise _Bad("must be longer than 0 seconds")
        return seconds
    return convert


def _choice(options: Sequence[str]) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = _string(value)
        if text not in options:
            raise _Bad(_one_of(options, text))
        return text
    return convert


def _domain_value(value: object) -> str:
    return _domain(_string(value))


def _mailbox(value: object) -> str:
    text = _string(value)
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise _Bad('must be an address like "user@example.org"')
    if any(c.isspace() or c in '<>"' or not c.isprintable() for c in local):
        raise _Bad("has a space, quote, angle bracket or control character before the @")
    return f"{local.lower()}@{_domain(domain)}"


def _network(value: object) -> Network:
    text = _string(value)
    try:
        return ip_network(text)
    except ValueError:
        pass
    try:
        network = ip_network(text, strict=False)
    except ValueError:
        raise _Bad('is not an IP network; write one like "192.0.2.0/24", "2001:db8::/32" '
                   'or a single address') from None
    raise _Bad(f'has bits set after the prefix length; did you mean "{network}"?')


def _nameserver(value: object) -> tuple[str, int]:
    return _ip_hostport(_string(value), 53, "127.0.0.1:5353")


def _listen_address(value: object) -> tuple[str, int]:
    return _ip_hostport(_string(value), None, "127.0.0.1:2525")


def _web_address(value: object) -> tuple[str, int] | None:
    text = _string(value)
    return _ip_hostport(text, None, "127.0.0.1:8025") if text else None


def _host_name(value: object) -> str:
    """A name for the Host header: a domain name or an IP address, without a port."""
    text = _string(value).strip().lower().rstrip(".")
    try:
        return str(ip_address(text.removeprefix("[").removesuffix("]")))
    except ValueError:
        pass
    if not re.fullmatch(r"(?=.{1,253}\Z)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?"
                        r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)*", text):
        raise _Bad('must be a host name or an IP address without a port, like "mail.example.org"')
    return text


SMTPS_PORT = 465  # RFC 8314 7.3: submission over implicit TLS


def _scheme(text: str, default_port: int) -> tuple[str, int, bool]:
    """"smtp:" / "smtps:" off the front: (rest, the port to assume, implicit TLS)."""
    if text.startswith("smtps:"):
        return text[6:], SMTPS_PORT, True
    return text.removeprefix("smtp:"), default_port, False


def _route(default_port: int) -> Callable[[object], tuple[str, int, bool, bool]]:
    def convert(value: object) -> tuple[str, int, bool, bool]:
        text = _string(value)
        if not text.startswith(("smtp:", "smtps:")):
            raise _Bad('must look like "smtp:[host]:port" or "smtp:host:port" '
                       '(brackets: connect to host as is; none: look up its MX; '
                       '"smtps:" for TLS from the first byte)')
        rest, port, implicit = _scheme(text, default_port)
        return (*_nexthop(rest, port, "smtp:[127.0.0.2]:2526"), implicit)
    return convert


def _relayhost(default_port: int) -> Callable[[object], Relayhost | None]:
    def convert(value: object) -> Relayhost | None:
        rest, port, implicit = _scheme(_string(value), default_port)
        if not rest:
            return None
        return Relayhost(*_nexthop(rest, port, "smtp.provider.example:587"),
                         implicit_tls=implicit)
    return convert


# --- assembling the Config ----------------------------------------------------------


def _build(doc: Mapping[str, object], r: _Reader, source: str | None) -> Config:
    r.check_keys(doc, (), _ROOT_KEYS)
    hostname = r.get(doc, (), "hostname", _domain_value, "localhost")
    data_dir = r.get(doc, (), "data_dir", r.path, r.base / "mailgate-data")
    listeners = _listeners(doc, r)
    tls = _tls(r.section(doc, "tls"), r)
    domains = _domains(r.section(doc, "domains"), r)

    relay_table = r.section(doc, "relay")
    relay = Relay(r.get_list(relay_table, ("relay",), "networks", _network,
                             Relay().networks, example='["127.0.0.0/8", "::1/128"]'))

    limits = _limits(r.section(doc, "limits"), r)

    t = r.section(doc, "timeouts")
    dt = Timeouts()
    timeouts = Timeouts(
        command=r.get(t, ("timeouts",), "command", _duration(False), dt.command),
        data_block=r.get(t, ("timeouts",), "data_block", _duration(False), dt.data_block),
        min_data_rate=r.get(t, ("timeouts",), "min_data_rate", _integer(0), dt.min_data_rate),
        tls_handshake=r.get(t, ("timeouts",), "tls_handshake", _duration(False),
                            dt.tls_handshake),
        stress_command=r.get(t, ("timeouts",), "stress_command", _duration(False),
                             dt.stress_command),
        stress_data_block=r.get(t, ("timeouts",), "stress_data_block", _duration(False),
                                dt.stress_data_block),
    )
    submission = _submission(r.section(doc, "submission"), r, domains)

    dns_table = r.section(doc, "dns")
    dns = DNSConfig(r.get_list(dns_table, ("dns",), "nameservers", _nameserver, (),
                               example='["127.0.0.1:5353"]'))

    p = r.section(doc, "policy")
    policy = Policy(
        sender_null_mx_check=r.get(p, ("policy",), "sender_null_mx_check", _boolean, True),
        recipient_null_mx_check=r.get(p, ("policy",), "recipient_null_mx_check", _boolean,
                                      True),
        bare_newlines=cast(BareNewlines, r.get(p, ("policy",), "bare_newlines",
                                               _choice(BARE_NEWLINES), "normalize")),
    )

    delivery = _delivery(r.section(doc, "delivery"), r)
    routes = _routes(r.section(doc, "routes"), r, delivery.smtp_port)
    tls_policy = _tls_policy(r.section(doc, "tls_policy"), r, delivery)

    w = r.section(doc, "web")
    default_web: tuple[str, int] | None = ("127.0.0.1", 8025)
    web_address = r.get(w, ("web",), "address", _web_address, default_web)
    allowed_hosts = r.get_list(w, ("web",), "allowed_hosts", _host_name, (),
                               example='["mail.example.org"]')
    web = (WebConfig(False, "", 0) if web_address is None
           else WebConfig(True, *web_address, tuple(dict.fromkeys(allowed_hosts))))

    s = r.section(doc, "server")
    server = ServerConfig(r.get(s, ("server",), "workers", _integer(1), 1))

    lg = r.section(doc, "log")
    log = LogConfig(cast(LogLevel, r.get(lg, ("log",), "level", _choice(LOG_LEVELS), "info")))

    if r.problems:
        raise ConfigError(r.problems)
    return Config(hostname=hostname, data_dir=data_dir, listen=listeners, tls=tls,
                  domains=domains, relay=relay, limits=limits, timeouts=timeouts, dns=dns,
                  policy=policy, submission=submission, delivery=delivery, routes=routes,
                  tls_policy=tls_policy, web=web, server=server, log=log, source=source)


def _listeners(doc: Mapping[str, object], r: _Reader) -> tuple[Listener, ...]:
    if "listen" not in doc:
        return DEFAULT_LISTENERS
    value = doc["listen"]
    if isinstance(value, dict):
        r.report_key("listen", "must be written [[listen]] (double brackets), one table per "
                     "listener, each with role and address")
        return DEFAULT_LISTENERS
    if not isinstance(value, list) or not value:
        r.report("listen", value, "must be one or more [[listen]] tables, each with role "
                 "and address")
        return DEFAULT_LISTENERS
    listeners: list[Listener] = []
    seen: dict[tuple[str, int], int] = {}
    for index, table in enumerate(value):
        path: tuple[str | int, ...] = ("listen", index)
        if not isinstance(table, dict):
            r.report(_key(*path), table, "must be a table with role and address")
            continue
        r.check_keys(table, path, _SECTIONS["listen"])
        for name in ("role", "address"):
            if name not in table:
                r.report_key(_key(*path, name), "missing; each [[listen]] needs role "
                             f"({', '.join(ROLES)}) and address (like \"127.0.0.1:2525\")")
        role = r.get(table, path, "role", _choice(ROLES), None)
        address = r.get(table, path, "address", _listen_address, None)
        if address is not None and address in seen:
            r.report(_key(*path, "address"), table["address"],
                     f"already used by {_key('listen', seen[address])}")
        elif address is not None:
            seen[address] = index
        if role is not None and address is not None:
            listeners.append(Listener(cast(Role, role), *address))
    return tuple(listeners)


def _tls(t: Mapping[str, object], r: _Reader) -> TLSConfig:
    cert = r.get(t, ("tls",), "cert", r.file, None)
    key = r.get(t, ("tls",), "key", r.file, None)
    if "key" in t and "cert" not in t:
        r.report_key("tls.key", "is set but tls.cert is not; give the certificate too, or "
                     "neither for a self-signed certificate")
    return TLSConfig(cert, key if key is not None else cert)


def _domains(d: Mapping[str, object], r: _Reader) -> Domains:
    path = ("domains",)
    local = r.get_list(d, path, "local", _domain_value, Domains().local,
                       example='["example.org"]')
    mailboxes = r.get_list(d, path, "mailboxes", _mailbox, (),
                           example='["user@example.org"]')
    if r.ok("domains.local", "domains.mailboxes"):
        written = d.get("mailboxes")
        for index, mailbox in enumerate(mailboxes):
            domain = mailbox.rpartition("@")[2]
            if domain not in local:
                shown = written[index] if isinstance(written, list) else mailbox
                r.report(_key("domains", "mailboxes", index), shown,
                         f"{domain} is not one of domains.local ({', '.join(local)})")
    postmaster = r.get(d, path, "postmaster", _mailbox, None)
    if postmaster is not None and r.ok("domains.local", "domains.postmaster"):
        domain = postmaster.rpartition("@")[2]
        if domain not in local:
            r.report("domains.postmaster", d.get("postmaster"),
                     f"must be a local address: {domain} is not one of domains.local "
                     f"({', '.join(local)})")
    return Domains(
        local=tuple(dict.fromkeys(local)),
        catch_all=r.get(d, path, "catch_all", _boolean, True),
        mailboxes=frozenset(mailboxes),
        postmaster=postmaster,
    )


def _submission(t: Mapping[str, object], r: _Reader, domains: Domains) -> Submission:
    path = ("submission",)
    check = r.get(t, path, "sender_login_check", _boolean, True)
    grants: dict[str, tuple[str, ...]] = {}
    table = t.get("sender_addresses", {})
    if not isinstance(table, dict):
        r.report("submission.sender_addresses", table, 'must be a table of user = '
                 '["address", "@domain", ...]')
        table = {}
    for user, value in table.items():
        key = _key("submission", "sender_addresses", user)
        items = value if isinstance(value, list) else [value]
        out: list[str] = []
        for item in items:
            if isinstance(item, str) and item.startswith("@"):
                try:
                    out.append("@" + _domain(item[1:]))
                except _Bad as exc:
                    r.report(key, item, str(exc))
                continue
            try:
                out.append(_mailbox(item))
            except _Bad as exc:
                r.report(key, item, str(exc))
        grants[str(user).lower()] = tuple(out)
    return Submission(sender_login_check=check,
                      sender_addresses=MappingProxyType(grants))


def _limits(t: Mapping[str, object], r: _Reader) -> Limits:
    path = ("limits",)
    d = Limits()
    limits = Limits(
        message_size=r.get(t, path, "message_size",
                           _size(MIN_MESSAGE_SIZE, "64KiB", " (RFC 5321 4.5.3.1.7)"),
                           d.message_size),
        recipients=r.get(t, path, "recipients",
                         _integer(MIN_RECIPIENTS, " (RFC 5321 4.5.3.1.8)"), d.recipients),
        connections=r.get(t, path, "connections", _integer(1), d.connections),
        connections_per_ip=r.get(t, path, "connections_per_ip", _integer(1),
                                 d.connections_per_ip),
        hops=r.get(t, path, "hops", _integer(1), d.hops),
    )
    if limits.connections_per_ip > limits.connections:
        if "connections_per_ip" not in t:
            # Only the total was lowered: the per-IP default follows it down.
            return replace(limits, connections_per_ip=limits.connections)
        if r.ok("limits.connections", "limits.connections_per_ip"):
            r.report("limits.connections_per_ip", limits.connections_per_ip,
                     f"must not exceed limits.connections ({limits.connections})")
    return limits


def _delivery(t: Mapping[str, object], r: _Reader) -> Delivery:
    path = ("delivery",)
    d = Delivery()
    smtp_port = r.get(t, path, "smtp_port", _port, d.smtp_port)
    schedule = r.get_list(t, path, "retry_schedule", _duration(False), d.retry_schedule,
                          example='["5m", "10m", "20m", "40m", "80m", "2h"]')
    if not schedule:
        r.report("delivery.retry_schedule", t["retry_schedule"],
                 "must have at least one step; the last step repeats")
        schedule = d.retry_schedule
    delivery = Delivery(
        smtp_port=smtp_port,
        retry_schedule=schedule,
        max_queue_lifetime=r.get(t, path, "max_queue_lifetime", _duration(False),
                                 d.max_queue_lifetime),
        concurrency=r.get(t, path, "concurrency", _integer(1), d.concurrency),
        concurrency_per_destination=r.get(t, path, "concurrency_per_destination",
                                          _integer(1), d.concurrency_per_destination),
        relayhost=_relayhost_auth(
            t, r, r.get(t, path, "relayhost", _relayhost(smtp_port), None)),
        delay_warning=r.get(t, path, "delay_warning", _duration(True), d.delay_warning),
        tls_security_level=cast(TLSLevel, r.get(t, path, "tls_security_level",
                                                _choice(TLS_LEVELS), "may")),
        tls_ca_file=r.get(t, path, "tls_ca_file", _ca_file(r), None),
    )
    if delivery.concurrency_per_destination > delivery.concurrency:
        if "concurrency_per_destination" not in t:
            return replace(delivery, concurrency_per_destination=delivery.concurrency)
        if r.ok("delivery.concurrency", "delivery.concurrency_per_destination"):
            r.report("delivery.concurrency_per_destination",
                     delivery.concurrency_per_destination,
                     f"must not exceed delivery.concurrency ({delivery.concurrency})")
    return delivery


def _ca_file(r: _Reader) -> Callable[[object], Path]:
    def convert(value: object) -> Path:
        import ssl  # here: the CLI's start-up time does not pay for it

        path = r.file(value)
        try:
            ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise _Bad(f"is not a PEM file of CA certificates: {exc}") from None
        return path
    return convert


def _relayhost_auth(t: Mapping[str, object], r: _Reader, relay: Relayhost | None
                    ) -> Relayhost | None:
    """relayhost_username and relayhost_password_file: both or neither, with relayhost."""
    path = ("delivery",)
    username = r.get(t, path, "relayhost_username", _string, "")
    password_file = r.get(t, path, "relayhost_password_file", r.file, None)
    if "relayhost_username" in t and not username:
        r.report("delivery.relayhost_username", "", "must not be empty; leave it out for "
                 "a relayhost without AUTH")
    if not r.ok("delivery.relayhost_username", "delivery.relayhost_password_file"):
        return relay
    if not username and password_file is None:
        return relay
    if username and password_file is None:
        r.report_key("delivery.relayhost_password_file", "missing; relayhost_username "
                     "needs the file that holds its password")
        return relay
    if password_file is not None and not username:
        r.report_key("delivery.relayhost_username", "missing; relayhost_password_file "
                     "is set, so give the user name it belongs to")
        return relay
    assert password_file is not None
    if relay is None:
        if r.ok("delivery.relayhost"):
            r.report_key("delivery.relayhost_username", "is set but delivery.relayhost "
                         "is not; AUTH is only used with a relayhost")
        return None
    try:
        text = password_file.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        r.report("delivery.relayhost_password_file", t["relayhost_password_file"],
                 f"cannot be read: {exc}")
        return relay
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        r.report("delivery.relayhost_password_file", t["relayhost_password_file"],
                 "is empty; its first line is the password")
        return relay
    if any(c in username + password for c in "\0\r\n"):
        r.report_key("delivery.relayhost_username", "the user name and password must not "
                     "contain NUL or line breaks (RFC 4616)")
        return relay
    return replace(relay, username=username, password=password, password_file=password_file)


def _tls_policy(t: Mapping[str, object], r: _Reader, delivery: Delivery
                ) -> Mapping[str, TLSLevel]:
    """[tls_policy]: a mail domain or a next hop (as written in [routes] / relayhost,
    without "smtp:") -> none | may | encrypt | verify. A plain name (no port, no
    brackets) matches a recipient domain and any next hop on that host."""
    policy: dict[str, TLSLevel] = {}
    written: dict[str, str] = {}
    relay = delivery.relayhost
    for name, value in t.items():
        key = _key("tls_policy", name)
        try:
            if ":" in name or name.startswith("["):
                host, port, mx = _nexthop(name, delivery.smtp_port, "[mx.example.org]:25")
                target = _join_hostport(host, port, brackets=not mx)
            else:
                target = _domain(name)
        except _Bad as exc:
            r.report(key, value, f"the key {exc}; [tls_policy] keys are mail domains or "
                     'next hops like "[mx.example.org]:25"')
            continue
        level = r.get(t, ("tls_policy",), name, _choice(TLS_LEVELS), None)
        if target in written:
            r.report(key, value, f"repeats the entry {_key('tls_policy', written[target])}")
            continue
        written[target] = name
        if level is None:
            continue
        if (relay is not None and relay.username is not None and target == relay.address
                and TLS_LEVELS.index(level) < TLS_LEVELS.index("encrypt")):
            r.report(key, value, "the relayhost is given a password (relayhost_username), "
                     'which must never travel in the clear: use "encrypt" or "verify"')
            continue
        policy[target] = cast(TLSLevel, level)
    return MappingProxyType(policy)


def _routes(t: Mapping[str, object], r: _Reader, default_port: int) -> Mapping[str, Route]:
    routes: dict[str, Route] = {}
    written: dict[str, str] = {}
    for name, value in t.items():
        key = _key("routes", name)
        try:
            domain = _domain(name)
        except _Bad as exc:
            r.report(key, value, f"the key {exc}; [routes] keys are mail domains")
            continue
        hop = r.get(t, ("routes",), name, _route(default_port), None)
        if domain in written:
            r.report(key, value, f"repeats the route for {_key('routes', written[domain])}")
            continue
        written[domain] = name
        if hop is not None:
            routes[domain] = Route(domain, *hop)
    return MappingProxyType(routes)
