"""SPF (RFC 7208) with pyspf, its DNS answered by mailgate's resolver.

pyspf asks DNS through one module-level function, `spf.DNSLookup`. It is replaced once
(at import) by `_lookup`, which answers through the `DNSBridge` of the check running in
the calling thread and falls back to pyspf's own function for any other caller. pyspf
keeps RFC 7208's limits itself (10 mechanisms that cost a lookup, 2 void lookups, 10 MX
or PTR names: 4.6.4) and answers permerror past them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import spf as pyspf

from mailgate.server.authcheck.lookup import DNSBridge, DNSTempError

__all__ = ["SPFResult", "check_spf"]

# RFC 7208 4.6.4 recommends at least 20 seconds for the whole evaluation.
SPF_TIME = 20.0

_local = threading.local()
_pyspf_lookup = pyspf.DNSLookup


def _lookup(name: str, qtype: str, strict: object = True, timeout: object = None,
            ) -> list[tuple[tuple[str, str], Any]]:
    bridge: DNSBridge | None = getattr(_local, "bridge", None)
    if bridge is None:
        return _pyspf_lookup(name, qtype, strict, timeout)  # type: ignore[no-any-return]
    if qtype not in ("A", "AAAA", "MX", "TXT", "PTR"):
        return []  # the obsolete SPF type (99): never asked by RFC 7208
    try:
        answer = bridge.query(name, qtype)
    except DNSTempError as exc:
        raise pyspf.TempError(f"DNS {exc}") from None
    key = (name, qtype)
    if qtype == "TXT":  # pyspf joins a record's strings itself: give it one, joined
        return [(key, (text.encode("utf-8"),)) for text in answer.txt]
    if qtype == "MX":
        return [(key, mx) for mx in answer.mx]
    if qtype == "PTR":
        return [(key, target.rstrip(".").lower()) for target in answer.addresses]
    return [(key, value) for value in answer.addresses]


pyspf.DNSLookup = _lookup


@dataclass(frozen=True, slots=True)
class SPFResult:
    """`result` is one of RFC 7208 2.6: none neutral pass fail softfail temperror
    permerror. `identity` is mailfrom or helo (RFC 7208 2.3, 2.4), `domain` its domain."""

    result: str
    identity: str
    domain: str
    explanation: str


def check_spf(bridge: DNSBridge, ip: str, sender: str, helo: str) -> SPFResult:
    """check_host() for the MAIL FROM identity, or for HELO when the sender is null."""
    identity = "mailfrom" if sender else "helo"
    domain = sender.rpartition("@")[2] if sender else helo
    if not domain:
        return SPFResult("none", identity, "", "no domain to check")
    _local.bridge = bridge
    try:
        result, explanation = pyspf.check2(i=ip, s=sender, h=helo, querytime=SPF_TIME)
    except Exception as exc:  # pyspf parses strangers' records: no crash is theirs to cause
        return SPFResult("permerror", identity, domain, f"cannot evaluate: {exc}")
    finally:
        _local.bridge = None
    return SPFResult(str(result), identity, domain.lower(), str(explanation))
