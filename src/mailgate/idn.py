"""One canonical form for domain names: lower-case A-labels, by UTS #46 and IDNA 2008.

Every domain mailgate compares or routes on goes through `canonical_domain` first, so
two spellings that name the same domain are the same string: `EXAMPLE.test`,
fullwidth `ｅｘａｍｐｌｅ.test`, `example。test` (ideographic full stop), `exam<SHY>ple.test`
(a soft hyphen, which UTS #46 maps to nothing) all become `example.test`, and `bücher.test`
becomes `xn--bcher-kva.test`. A name the mapping cannot make valid (a joiner out of
context, a symbol, a bad A-label) raises `DomainError` with the reason.

The processing is non-transitional, as IDNA 2008 and today's browsers do it: `faß.example`
stays a name of its own (`xn--fa-hia.example`), where Python's built-in IDNA 2003 codec
turns it into `fass.example`, somebody else's domain.

`organizational_domain` is the registrable domain by the public suffix list (the one
`publicsuffixlist` ships): DMARC's organizational domain (RFC 7489 3.2), for the
inbound checks and for `mailgate check` alike.

This module imports nothing of mailgate's, so the configuration and the protocol core
can both use it.
"""

from __future__ import annotations

import re
from functools import cache, lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList

__all__ = ["DomainError", "canonical_domain", "organizational_domain", "unicode_domain"]

MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2, octets
_LDH_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


class DomainError(ValueError):
    """The name is not a valid domain name, even after UTS #46 mapping."""


@lru_cache(maxsize=4096)
def canonical_domain(domain: str) -> str:
    """`domain` as lower-case A-labels; DomainError naming what is wrong.

    Plain ASCII names of letters, digits and hyphens take a fast path; an `xn--` label
    is checked to be a valid A-label; anything else is mapped by UTS #46 (non-
    transitional, STD3 rules) and encoded by IDNA 2008."""
    if not domain:
        raise DomainError("the domain is empty.")
    name = domain.lower() if domain.isascii() else domain
    labels = name.split(".")
    if name.isascii() and all(_LDH_LABEL_RE.match(label) for label in labels):
        if "xn--" in name:
            for label in labels:
                if label.startswith("xn--"):
                    import idna

                    try:
                        idna.decode(label)
                    except (idna.IDNAError, UnicodeError) as exc:
                        raise DomainError(f"{label!r} is not a valid A-label: {exc}.") from None
        if len(name) > MAX_DOMAIN:
            raise DomainError(f"the domain is longer than {MAX_DOMAIN} octets.")
        return name
    import idna  # here: plain ASCII names (every name of most configurations) never need it

    try:
        mapped = idna.uts46_remap(name, std3_rules=True, transitional=False)
        ascii_form = idna.encode(mapped, uts46=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as exc:
        raise DomainError(f"{_printable(domain)} is not a valid domain name: "
                          f"{_printable(str(exc))}.") from None
    if len(ascii_form) > MAX_DOMAIN:
        raise DomainError(f"the domain is longer than {MAX_DOMAIN} octets as A-labels.")
    return ascii_form.lower()


def unicode_domain(domain: str) -> str:
    """The U-label form of a canonical domain, for people to read; as given if it fails."""
    if "xn--" not in domain:
        return domain
    import idna

    try:
        return str(idna.decode(domain))
    except (idna.IDNAError, UnicodeError):
        return domain


@cache
def _psl() -> PublicSuffixList:
    from publicsuffixlist import PublicSuffixList  # read when first needed, not at import

    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registrable domain of `domain` (example.co.uk for a.b.example.co.uk); a
    public suffix is its own."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def _printable(text: str) -> str:
    """Quote `text` with every non-printable character escaped, so a reason can be shown."""
    return ascii(text) if not text.isprintable() else repr(text)
