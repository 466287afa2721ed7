"""The value syntaxes of the configuration file, apart from any section: sizes
("25MiB"), durations ("1h20m"), domain names, host:port and next hops ("[host]:port").

Each parser returns the typed value or raises `_Bad`, a ValueError whose text says what
is wrong and what is allowed; the reader puts the file name and the key in front of it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from ipaddress import ip_address

from mailgate.idn import DomainError, canonical_domain


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one sentence per problem."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


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
    from fractions import Fraction  # only a size written with a unit needs it

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


@functools.lru_cache(maxsize=4096)
def _lookup_domain(domain: str) -> str | None:
    """`domain` as the configuration writes domains, or None: asked for every recipient
    (is it local?), so the last few thousand answers are kept."""
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

