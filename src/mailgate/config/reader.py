"""Walking the TOML document: `_Reader` collects every problem, each one sentence that
names the file, the key as a dotted path (`limits.recipients`, `listen[0].role`,
`routes."example.org"`), the value as written and what is allowed; the converters turn
one TOML value into a typed value or raise `_Bad` with the reason.

`_SECTIONS` is the list of sections and their keys, which unknown keys are checked and
"did you mean" hints drawn against.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, time
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mailgate.config.syntax import (
    _DURATION_HELP,
    _SIZE_HELP,
    _Bad,
    _domain,
    _ip_hostport,
    _nexthop,
    parse_duration,
    parse_size,
)

if TYPE_CHECKING:  # values.py, with its dozens of classes, is loaded only when needed
    from mailgate.config.values import Network, Relayhost

_T = TypeVar("_T")

_SECTIONS: dict[str, tuple[str, ...]] = {
    "listen": ("role", "address"),
    "tls": ("cert", "key"),
    "domains": ("local", "catch_all", "mailboxes", "postmaster", "recipient_delimiter",
                "aliases_file"),
    "relay": ("networks",),
    "limits": ("message_size", "recipients", "connections", "connections_per_ip", "hops"),
    "timeouts": ("command", "data_block", "min_data_rate", "tls_handshake", "stress_command",
                 "stress_data_block"),
    "submission": ("sender_login_check", "sender_addresses"),
    "dns": ("nameservers",),
    "policy": ("sender_null_mx_check", "recipient_null_mx_check", "bare_newlines"),
    "auth_checks": ("spf", "dkim", "dmarc", "arc", "dmarc_reject", "spf_reject"),
    "delivery": ("smtp_port", "retry_schedule", "max_queue_lifetime", "concurrency",
                 "concurrency_per_destination", "relayhost", "relayhost_username",
                 "relayhost_password_file", "delay_warning", "tls_security_level",
                 "tls_ca_file", "connection_cache_time"),
    "routes": (),  # keys are domains
    "tls_policy": (),  # keys are domains or next hops
    "web": ("address", "allowed_hosts"),
    "server": ("workers", "user"),
    "log": ("level", "format"),
    "aliases": (),  # keys are local parts or addresses
    "queue": ("keep_records", "backend", "dsn", "dsn_file", "node", "secure_delete"),
    "maildir": (),  # keys are domains or addresses
    "auth": ("backend", "dovecot_socket", "timeout"),
    "dkim": (),  # keys are signing domains (config/dkim.py)
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
            shown = part if _BARE_KEY_RE.match(part) else _quoted(part)
            out += f".{shown}" if out else shown
    return out


def _quoted(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's), for the sentences of problems:
    json is loaded only when there is one to write."""
    import json

    return json.dumps(text, ensure_ascii=False)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quoted(value)
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


def _close(word: str, options: Sequence[str]) -> list[str]:
    """The option closest to a misspelt `word`, if any (difflib is loaded only when a
    configuration has a mistake, not on every start)."""
    import difflib

    return difflib.get_close_matches(word, options, n=1)


def _one_of(options: Iterable[str], given: str) -> str:
    options = list(options)
    text = "must be one of " + ", ".join(options)
    close = _close(given.lower(), options)
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
        close = _close(name, allowed)
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
        if name not in ("routes", "tls_policy", "aliases", "maildir", "dkim"):
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


RouteHop = tuple[str, int, bool, bool, bool, str | None]
LMTP_PORT = 24  # RFC 2033 has no port of its own; 24 is what Dovecot and Cyrus use


def _route(default_port: int) -> Callable[[object], RouteHop]:
    """(host, port, mx_lookup, implicit_tls, lmtp, unix socket path)."""
    def convert(value: object) -> RouteHop:
        text = _string(value)
        if text.startswith("lmtp:unix:"):
            path = text[10:]
            if not path.startswith("/"):
                raise _Bad('the LMTP socket must be an absolute path, like '
                           '"lmtp:unix:/run/dovecot/lmtp"')
            return ("localhost", 0, False, False, True, path)
        if text.startswith("lmtp:"):
            host, port, _ = _nexthop(text[5:], LMTP_PORT, "lmtp:[127.0.0.1]:24")
            return (host, port, False, False, True, None)  # never an MX look-up
        if not text.startswith(("smtp:", "smtps:")):
            raise _Bad('must look like "smtp:[host]:port" or "smtp:host:port" '
                       '(brackets: connect to host as is; none: look up its MX; '
                       '"smtps:" for TLS from the first byte), or "lmtp:unix:/path" or '
                       '"lmtp:[host]:port" for a local domain')
        rest, port, implicit = _scheme(text, default_port)
        return (*_nexthop(rest, port, "smtp:[127.0.0.2]:2526"), implicit, False, None)
    return convert


def _relayhost(default_port: int) -> Callable[[object], Relayhost | None]:
    from mailgate.config.values import Relayhost

    def convert(value: object) -> Relayhost | None:
        rest, port, implicit = _scheme(_string(value), default_port)
        if not rest:
            return None
        return Relayhost(*_nexthop(rest, port, "smtp.provider.example:587"),
                         implicit_tls=implicit)
    return convert
