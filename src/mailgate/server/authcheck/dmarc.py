"""DMARC (RFC 7489) on top of the public suffix list shipped in `publicsuffixlist`.

Written here rather than taken from `authheaders`, whose evaluator fits a server badly:
its DNS callback returns a single TXT string (so two DMARC records, which RFC 7489
6.6.3 says mean "no policy", cannot be seen), a DNS failure looks like "no record" (so a
passing SERVFAIL would turn p=reject into acceptance instead of `temperror`), the
public suffix list comes from `publicsuffix2` (a 2019 copy), and `pct` is ignored.

What is evaluated (6.6): the RFC 5322 From domain(s); the policy record at
`_dmarc.<From domain>`, else at `_dmarc.<Organizational Domain>` (6.6.3), where the
organizational domain is the public suffix plus one label; identifier alignment of
SPF's domain and of every passing DKIM signature's d= (3.1, relaxed or strict); the
policy (`p`, or `sp` for a subdomain found through its organizational domain) and
`pct` (6.6.4: outside the sampled share the policy is one step milder).
"""

from __future__ import annotations

import contextlib
import email.utils
import random
from collections.abc import Sequence
from dataclasses import dataclass

from mailgate.idn import DomainError, canonical_domain, organizational_domain
from mailgate.server.authcheck.dkimcheck import DKIMResult
from mailgate.server.authcheck.lookup import DNSBridge, DNSTempError
from mailgate.server.authcheck.spfcheck import SPFResult

__all__ = ["DMARCResult", "check_dmarc", "from_domains", "organizational_domain"]

POLICIES = ("none", "quarantine", "reject")
MAX_FROM_DOMAINS = 4  # a From field naming more domains is evaluated for these only


@dataclass(frozen=True, slots=True)
class DMARCResult:
    """`result` pass, fail, none, temperror or permerror (RFC 8601 2.7.1). `policy` is
    what the domain owner asked (p, or sp), `disposition` what applies after pct;
    `uncertain` is set when a failure may be DNS's fault (an SPF or DKIM temperror);
    `strict_pass` when an identifier passed that aligns in any mode."""

    result: str
    domain: str
    policy: str = ""
    disposition: str = "none"
    reason: str = ""
    uncertain: bool = False
    strict_pass: bool = False


def from_domains(message: bytes) -> list[str]:
    """The domains (A-labels) of the addresses in the From field(s) of `message`'s
    header section."""
    values: list[str] = []
    name = b""
    for line in _header_lines(message):
        if line[:1] in (b" ", b"\t"):
            if name == b"from" and values:
                values[-1] += line.decode("utf-8", "replace")
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"from":
            values.append(value.decode("utf-8", "replace"))
    domains: list[str] = []
    for _display, address in email.utils.getaddresses(values):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        with contextlib.suppress(DomainError):
            domain = canonical_domain(domain)  # A-labels, as DKIM's d= and SPF have them
        if "@" in address and domain and domain not in domains:
            domains.append(domain)
    return domains


def _header_lines(message: bytes) -> list[bytes]:
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[:end]
    return head.split(b"\r\n")


def _records(bridge: DNSBridge, domain: str) -> list[str]:
    texts = bridge.txt(f"_dmarc.{domain}")
    out = []
    for raw in texts:
        text = raw.decode("utf-8", "replace").strip()
        if text.startswith("v=DMARC1") and text[8:].lstrip()[:1] in ("", ";"):
            out.append(text)
    return out


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def _aligned(a: str, b: str, mode: str) -> bool:
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


def check_dmarc(bridge: DNSBridge, domain: str, spf: SPFResult | None,
                dkims: Sequence[DKIMResult], rng: random.Random | None = None,
                ) -> DMARCResult:
    """DMARC for one From domain, given the SPF and DKIM results of the message."""
    strict_pass = bool(
        (spf is not None and spf.result == "pass" and spf.domain == domain)
        or any(d.result == "pass" and d.domain == domain for d in dkims))
    org = organizational_domain(domain)
    try:
        records = _records(bridge, domain)
        found_at = domain
        if not records and org != domain:
            records, found_at = _records(bridge, org), org
    except DNSTempError as exc:
        return DMARCResult("temperror", domain, reason=f"DNS: {exc}",
                           strict_pass=strict_pass)
    if len(records) != 1:
        why = "no DMARC record" if not records else "several DMARC records (RFC 7489 6.6.3)"
        return DMARCResult("none", domain, reason=why, strict_pass=strict_pass)
    tags = _tags(records[0])
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        if "rua" not in tags:
            return DMARCResult("permerror", domain, reason="the DMARC record has no valid p=",
                               strict_pass=strict_pass)
        policy = "none"  # 6.6.3 step 6: a record with reports but no valid policy
    sub = tags.get("sp", "").lower()
    if found_at != domain and sub in POLICIES:
        policy = sub
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    spf_ok = (spf is not None and spf.result == "pass" and bool(spf.domain)
              and _aligned(spf.domain, domain, aspf))
    dkim_ok = any(d.result == "pass" and d.domain and _aligned(d.domain, domain, adkim)
                  for d in dkims)
    if spf_ok or dkim_ok:
        how = " and ".join(n for n, ok in (("SPF", spf_ok), ("DKIM", dkim_ok)) if ok)
        return DMARCResult("pass", domain, policy, "none", f"aligned {how}",
                           strict_pass=strict_pass)
    disposition = policy
    pct = _pct(tags.get("pct", "100"))
    if pct < 100 and disposition != "none" and (rng or random).randrange(100) >= pct:
        disposition = POLICIES[POLICIES.index(disposition) - 1]  # 6.6.4 sampling
    uncertain = ((spf is not None and spf.result == "temperror")
                 or any(d.result == "temperror" for d in dkims))
    return DMARCResult("fail", domain, policy, disposition,
                       "neither SPF nor DKIM passed aligned with the From domain",
                       uncertain=uncertain)


def _pct(text: str) -> int:
    try:
        return max(0, min(100, int(text)))
    except ValueError:
        return 100
