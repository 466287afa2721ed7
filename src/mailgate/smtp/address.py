"""RFC 5321 addresses: `Reverse-path`, `Forward-path`, `Mailbox`, with the RFC's limits.

    Path           = "<" [ A-d-l ":" ] Mailbox ">"
    Mailbox        = Local-part "@" ( Domain / address-literal )
    Local-part     = Dot-string / Quoted-string
    address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
                            General-address-literal ) "]"

Source routes (`<@a.example,@b.example:user@c.example>`) are accepted and ignored, as
RFC 5321 section 4.1.1.3 says servers should. With SMTPUTF8 (RFC 6531), local parts and
domains may be UTF-8; domains are also kept as A-labels for routing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from mailgate.idn import DomainError, canonical_domain, unicode_domain

__all__ = ["NULL_PATH", "Address", "AddressError", "parse_mailbox", "parse_path"]

MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 256  # RFC 5321 4.5.3.1.3


class AddressError(ValueError):
    """An address that breaks RFC 5321; `utf8` is set when SMTPUTF8 was the problem."""

    def __init__(self, message: str, utf8: bool = False) -> None:
        super().__init__(message)
        self.utf8 = utf8


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox. `local` is as sent (quotes removed); `domain` is canonical: lower-case
    A-labels (or an address literal), whatever spelling the client used.

    The null reverse-path `<>` is `Address("", "")`; `<postmaster>` has an empty domain.
    """

    local: str
    domain: str

    @property
    def is_null(self) -> bool:
        return not self.local and not self.domain

    @property
    def is_postmaster(self) -> bool:
        return self.local.lower() == "postmaster" and not self.domain

    @property
    def is_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def is_utf8(self) -> bool:
        return not (self.local.isascii() and self.domain.isascii())

    @property
    def ascii_domain(self) -> str:
        """The domain as A-labels (IDNA), for DNS; literals unchanged."""
        if self.domain.isascii() or self.is_literal:
            return self.domain
        return to_ascii_domain(self.domain)

    @property
    def unicode_domain(self) -> str:
        """The domain as U-labels, for people to read."""
        return unicode_domain(self.domain)

    def __str__(self) -> str:
        if self.is_null:
            return ""
        local = self.local
        # RFC 6531 3.3 adds UTF-8 to atext: a non-ASCII dot-string needs no quotes.
        pattern = _DOT_STRING_RE if local.isascii() else _DOT_STRING_UTF8_RE
        if not pattern.fullmatch(local):
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local

    @property
    def path(self) -> str:
        """As written in MAIL FROM / RCPT TO: `<user@example.org>`."""
        return f"<{self}>"


NULL_PATH = Address("", "")

# atext of RFC 5322, as RFC 5321 uses it; with SMTPUTF8, any non-ASCII too (RFC 6531).
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING_RE = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_UTEXT = _ATEXT + "\u0080-\U0010ffff"
_DOT_STRING_UTF8_RE = re.compile(rf"[{_UTEXT}]+(?:\.[{_UTEXT}]+)*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LABEL_RE = re.compile(_LABEL + r"\Z")
# The common case in one regex: <dot-string@ascii.domain>, no quotes, literals or routes.
_SIMPLE_PATH_RE = re.compile(
    rf"<([{_ATEXT}]+(?:\.[{_ATEXT}]+)*)@({_LABEL}(?:\.{_LABEL})*)>\Z"
)
_GENERAL_LIT_RE = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+\Z")


def to_ascii_domain(domain: str) -> str:
    """The canonical A-label form (UTS #46, IDNA 2008); AddressError if there is none."""
    try:
        return canonical_domain(domain)
    except DomainError as exc:
        raise AddressError(str(exc)) from None


def _check_domain(domain: str, utf8: bool) -> str:
    if not domain:
        raise AddressError("the domain is empty.")
    if domain.startswith("["):
        return _check_literal(domain)
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        raise AddressError(f"the domain is longer than {MAX_DOMAIN} octets (RFC 5321 4.5.3.1.2).")
    if domain.isascii():
        for label in domain.split("."):
            if not _LABEL_RE.match(label):
                raise AddressError(f"domain label {label!r} is not a valid name.")
    elif not utf8:
        raise AddressError("a non-ASCII domain needs SMTPUTF8.", utf8=True)
    return to_ascii_domain(domain)


def _check_literal(lit: str) -> str:
    if not lit.endswith("]"):
        raise AddressError("an address literal must end with ']'.")
    inner = lit[1:-1]
    if inner[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError as exc:
            raise AddressError(f"{lit} is not a valid IPv6 address literal.") from exc
        return "[IPv6:" + inner[5:].lower() + "]"
    if re.fullmatch(r"[0-9.]+", inner):
        try:
            ipaddress.IPv4Address(inner)
        except ValueError as exc:
            raise AddressError(f"{lit} is not a valid IPv4 address literal.") from exc
        return lit
    if _GENERAL_LIT_RE.match(inner):
        return lit
    raise AddressError(f"{lit} is not a valid address literal.")


def _split_quoted(s: str, utf8: bool) -> tuple[str, str]:
    """Parse a Quoted-string local part at the start of `s`; return (local, rest)."""
    out = []
    i = 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            if i + 1 >= len(s):
                break
            nxt = s[i + 1]
            if not (" " <= nxt <= "~") and not (utf8 and ord(nxt) > 127):
                raise AddressError("a quoted-pair must escape a printable character.")
            out.append(nxt)
            i += 2
            continue
        if c == '"':
            return "".join(out), s[i + 1 :]
        if ord(c) > 127:
            if not utf8:
                raise AddressError("a non-ASCII local part needs SMTPUTF8.", utf8=True)
        elif not (c == " " or "!" <= c <= "~"):
            raise AddressError("a quoted local part has a control character.")
        out.append(c)
        i += 1
    raise AddressError("the quoted local part is not closed.")


def parse_mailbox(s: str, utf8: bool = False) -> Address:
    """Parse `local@domain`; raise AddressError naming what is wrong."""
    if not s:
        raise AddressError("the address is empty.")
    if s.startswith('"'):
        local, rest = _split_quoted(s, utf8)
        if not rest.startswith("@"):
            raise AddressError("the address needs '@' and a domain after the local part.")
        domain = rest[1:]
    else:
        at = s.rfind("@")
        if at <= 0:
            raise AddressError("the address needs a local part, '@' and a domain.")
        local, domain = s[:at], s[at + 1 :]
        if not local.isascii() and not utf8:
            raise AddressError("a non-ASCII local part needs SMTPUTF8.", utf8=True)
        pattern = _DOT_STRING_UTF8_RE if utf8 else _DOT_STRING_RE
        if not pattern.fullmatch(local):
            raise AddressError(f"the local part {local!r} is not a valid dot-string.")
    if len(local.encode("utf-8")) > MAX_LOCAL:
        raise AddressError(
            f"the local part is longer than {MAX_LOCAL} octets (RFC 5321 4.5.3.1.1)."
        )
    if not domain.isascii() and not utf8:
        raise AddressError("a non-ASCII domain needs SMTPUTF8.", utf8=True)
    return Address(local, _check_domain(domain, utf8))


def _strip_source_route(inner: str) -> str:
    """Drop an A-d-l (`@a,@b:`) before the mailbox; RFC 5321 says to ignore it."""
    if not inner.startswith("@"):
        return inner
    colon = inner.find(":")
    if colon == -1:
        raise AddressError("a source route must end with ':' before the mailbox.")
    for hop in inner[:colon].split(","):
        if not hop.startswith("@") or not hop[1:]:
            raise AddressError("each source-route hop is '@' and a domain.")
        _check_domain(hop[1:], utf8=True)
    return inner[colon + 1 :]


def parse_path(s: str, utf8: bool = False, allow_null: bool = False,
               allow_postmaster: bool = False) -> Address:
    """Parse `<...>` as MAIL FROM (allow_null) or RCPT TO (allow_postmaster) take it."""
    if len(s) > MAX_PATH // 4 and len(s.encode("utf-8")) > MAX_PATH:
        raise AddressError(f"the path is longer than {MAX_PATH} octets (RFC 5321 4.5.3.1.3).")
    m = _SIMPLE_PATH_RE.match(s)
    if (m is not None and len(m.group(1)) <= MAX_LOCAL and len(m.group(2)) <= MAX_DOMAIN
            and "xn--" not in m.group(2).lower()):
        return Address(m.group(1), m.group(2).lower())
    if len(s) < 2 or s[0] != "<" or s[-1] != ">":
        raise AddressError("the address must be enclosed in angle brackets: <user@example.org>.")
    inner = s[1:-1]
    if not inner:
        if allow_null:
            return NULL_PATH
        raise AddressError("the null address <> is not allowed here.")
    if allow_postmaster and inner.lower() == "postmaster":
        return Address(inner, "")
    return parse_mailbox(_strip_source_route(inner), utf8)
