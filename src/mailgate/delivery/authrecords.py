"""`mailgate check DOMAIN`'s second half: the records receivers use to authenticate mail
from DOMAIN, read from DNS and explained (read-only: nothing is fetched but TXT records).

- SPF (RFC 7208): one `v=spf1` record; its DNS-querying terms counted through every
  include and redirect against the limit of 10 (4.6.4), void lookups against 2; `+all`,
  `?all`, no `all`, `ptr`, includes of domains without SPF.
- DKIM (RFC 6376): the key record of each selector asked (`--selector`) and of each key
  in [dkim] for the domain: its syntax, kind and size (RFC 8301: RSA under 1024 bits is
  ignored by receivers), testing or revoked, and whether it is the configured key.
- DMARC (RFC 7489): the record at `_dmarc.DOMAIN` (or its organizational domain's, by
  the public suffix list), its policy (`p=none` only monitors), `pct`, report addresses.
- MTA-STS (RFC 8461) and TLS-RPT (RFC 8460): their TXT records, optional.

Each finding has a status (ok, info, warn, error, temp), a sentence saying what it means
and, when something is wrong, how to fix it; the words are data (codes/data/<lang>/
diagnostics.toml, `[words.records]`), in every language the knowledge base has.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mailgate.delivery.diagnostics import _label, _t
from mailgate.dns import Resolver, TXTAnswer
from mailgate.idn import organizational_domain
from mailgate.textsafe import printable

if TYPE_CHECKING:
    from mailgate.config import Config

__all__ = ["KINDS", "SPF_LOOKUP_LIMIT", "AuthReport", "Finding", "check_records"]

Status = Literal["ok", "info", "warn", "error", "temp"]
STATUSES: tuple[Status, ...] = ("ok", "info", "warn", "error", "temp")  # mildest first
KINDS = ("spf", "dkim", "dmarc", "mta_sts", "tls_rpt")
SPF_LOOKUP_LIMIT = 10  # RFC 7208 4.6.4
SPF_VOID_LIMIT = 2  # RFC 7208 4.6.4
_SPF_MAX_DEPTH = 10  # includes within includes followed at most this deep
_RECORD_SHOWN = 300  # characters of a record shown in the text report


@dataclass
class Finding:
    """One thing found: `code` picks its words (`records.<kind>.<code>.text` / `.fix`)."""

    kind: str  # one of KINDS
    name: str  # the DNS name asked
    status: Status
    code: str
    params: dict[str, Any] = field(default_factory=dict)
    record: str | None = None  # the record as published, when there is one

    def text(self, lang: str) -> str:
        return _t(lang, f"records.{self.kind}.{self.code}.text", name=self.name, **self.params)

    def fix(self, lang: str) -> str | None:
        if self.status not in ("warn", "error"):
            return None
        return _t(lang, f"records.{self.kind}.{self.code}.fix", name=self.name, **self.params)

    def to_json(self, lang: str) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "status": self.status, "code": self.code,
                "record": self.record, "text": self.text(lang), "fix": self.fix(lang)}


@dataclass
class AuthReport:
    domain: str
    findings: list[Finding] = field(default_factory=list)

    def status(self, kind: str) -> Status:
        found = [f.status for f in self.findings if f.kind == kind]
        return max(found, key=STATUSES.index) if found else "ok"

    def to_json(self, lang: str = "en") -> list[dict[str, Any]]:
        return [f.to_json(lang) for f in self.findings]

    def lines(self, lang: str = "en") -> list[str]:
        """The text report's lines; what DNS said (records, names in them) is hostile
        text: its control characters are shown as escapes, never sent to the terminal."""
        out = [_label(lang, "records.heading").rstrip()]
        shown: set[tuple[str, str]] = set()
        for f in self.findings:
            status = _t(lang, f"records.status.{f.status}")
            out.append(f"  {_t(lang, f'records.{f.kind}.title')} [{status}] {f.text(lang)}")
            if f.record is not None and (f.name, f.record) not in shown:
                shown.add((f.name, f.record))
                record = f.record if len(f.record) <= _RECORD_SHOWN else (
                    f.record[:_RECORD_SHOWN] + "...")
                out.append(f"      {_label(lang, 'records.record')}{f.name} \"{record}\"")
            fix = f.fix(lang)
            if fix:
                out.append(f"      {_label(lang, 'fix')}{fix}")
        return [printable(line) for line in out]


async def check_records(domain: str, resolver: Resolver, config: Config | None = None,
                        selectors: Sequence[str] = ()) -> AuthReport:
    """Read and judge `domain`'s SPF, DKIM (the `selectors` and the keys [dkim] has for
    it), DMARC, MTA-STS and TLS-RPT records; the lookups run side by side."""
    domain = domain.rstrip(".").lower()
    keys: dict[str, Any] = {}
    if config is not None:
        from mailgate.config.dkim import keys_for

        for key in keys_for(config.dkim, domain):
            keys[key.selector] = key
    wanted = list(dict.fromkeys([*selectors, *keys]))
    parts = await asyncio.gather(
        _spf(domain, resolver),
        *(_dkim(domain, s, resolver, keys.get(s)) for s in wanted),
        _dmarc(domain, resolver),
        _mta_sts(domain, resolver),
        _tls_rpt(domain, resolver),
    )
    report = AuthReport(domain)
    if not wanted:
        report.findings.append(Finding("dkim", f"_domainkey.{domain}", "info", "no_selector"))
    spf, *rest = parts
    report.findings.extend(spf)
    for found in rest:
        report.findings.extend(found)
    order = {kind: i for i, kind in enumerate(KINDS)}
    report.findings.sort(key=lambda f: order[f.kind])
    return report


def _select(answer: TXTAnswer, prefix: str) -> list[str]:
    """The records that start with `prefix` (a version tag), case-insensitively."""
    p = prefix.lower()
    return [r for r in answer.records
            if r.lower().startswith(p) and (len(r) == len(p) or r[len(p)] in " ;\t")]


def _temp(kind: str, name: str, answer: TXTAnswer) -> Finding:
    return Finding(kind, name, "temp", "temp", {"reason": answer.reason})


def _tags(text: str) -> dict[str, str] | None:
    """A tag=value list (RFC 6376 3.2): lower-case tag -> value; None when malformed."""
    tags: dict[str, str] = {}
    for raw in text.split(";"):
        part = raw.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if not eq or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in tags:
            return None
        tags[name] = re.sub(r"\s+", "", value) if name in ("p", "bh", "b") else value.strip()
    return tags


# --- SPF ------------------------------------------------------------------------------


@dataclass
class _SPFWalk:
    lookups: int = 0
    void: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # include targets without SPF
    loops: list[str] = field(default_factory=list)
    ptr: bool = False
    bad: list[str] = field(default_factory=list)  # terms not understood
    temp: str = ""
    seen: set[str] = field(default_factory=set)


_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists")


async def _spf(domain: str, resolver: Resolver) -> list[Finding]:
    answer = await resolver.txt(domain)
    if answer.status == "error":
        return [_temp("spf", domain, answer)]
    records = _select(answer, "v=spf1")
    if not records:
        return [Finding("spf", domain, "warn", "missing", {"domain": domain})]
    if len(records) > 1:
        return [Finding("spf", domain, "error", "multiple", {"count": len(records)},
                        " | ".join(records))]
    record = records[0]
    walk = _SPFWalk(seen={domain})
    final_all = await _spf_terms(record, domain, resolver, walk, 0)
    out: list[Finding] = []

    def add(status: Status, code: str, **params: Any) -> None:
        out.append(Finding("spf", domain, status, code, params, record))

    if walk.temp:
        add("temp", "temp", reason=walk.temp)
    if walk.bad:
        add("error", "syntax", terms=" ".join(walk.bad))
    if walk.lookups > SPF_LOOKUP_LIMIT:
        add("error", "too_many_lookups", count=walk.lookups, limit=SPF_LOOKUP_LIMIT)
    if len(walk.void) > SPF_VOID_LIMIT:
        add("error", "void_lookups", count=len(walk.void), names=", ".join(walk.void))
    for target in walk.missing:
        add("error", "include_missing", target=target)
    for target in walk.loops:
        add("error", "loop", target=target)
    if final_all == "+":
        add("error", "pass_all")
    elif final_all == "?":
        add("warn", "neutral_all")
    elif final_all is None:
        add("warn", "no_all")
    if walk.ptr:
        add("warn", "ptr")
    if not any(f.status in ("error", "temp") for f in out):
        shown = {"-": "-all", "~": "~all", "?": "?all", "+": "+all"}.get(final_all or "", "")
        add("ok", "ok", count=walk.lookups, limit=SPF_LOOKUP_LIMIT, all=shown or "-")
    order = {"ok": 0, "temp": 1, "error": 2, "warn": 3}
    out.sort(key=lambda f: order.get(f.status, 4))
    return out


async def _spf_terms(record: str, domain: str, resolver: Resolver, walk: _SPFWalk,
                     depth: int) -> str | None:
    """Count the lookups of one record's terms, following include and redirect; the
    qualifier of its `all` ("+", "-", "~", "?"), or None without one (or a redirect's)."""
    final: str | None = None
    redirect: str | None = None
    for term in record.split()[1:]:
        name = re.split(r"[:=/]", term, maxsplit=1)[0]
        if "=" in term and (":" not in term or term.index("=") < term.index(":")):
            modifier, _, value = term.partition("=")
            if modifier.lower() == "redirect":
                redirect = value
            elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", modifier):
                walk.bad.append(term)
            continue  # exp= and unknown modifiers are allowed (RFC 7208 6)
        qualifier = "+"
        if name[:1] in "+-~?":
            qualifier, name = name[0], name[1:]
        mechanism = name.lower()
        if mechanism not in _MECHANISMS:
            walk.bad.append(term)
            continue
        if mechanism in _LOOKUP_TERMS:
            walk.lookups += 1
        if mechanism == "ptr":
            walk.ptr = True
        if mechanism == "all":
            final = qualifier
        elif mechanism == "include":
            target = term.split(":", 1)[1] if ":" in term else ""
            await _spf_follow(target, resolver, walk, depth, include=True)
    if redirect is not None and final is None:
        walk.lookups += 1
        return await _spf_follow(redirect, resolver, walk, depth, include=False)
    return final


async def _spf_follow(target: str, resolver: Resolver, walk: _SPFWalk, depth: int, *,
                      include: bool) -> str | None:
    target = target.rstrip(".").lower()
    if not target or "%" in target:  # a macro: depends on the message, not followed
        return "?" if not include else None
    if target in walk.seen:
        walk.loops.append(target)
        return None
    if depth >= _SPF_MAX_DEPTH or walk.lookups > 2 * SPF_LOOKUP_LIMIT:
        return None  # far past the limit already: counting further changes nothing
    walk.seen.add(target)
    answer = await resolver.txt(target)
    if answer.status == "error":
        walk.temp = walk.temp or answer.reason
        return None
    if answer.status in ("nxdomain", "nodata"):
        walk.void.append(target)
    records = _select(answer, "v=spf1")
    if len(records) != 1:
        walk.missing.append(target)
        return None
    return await _spf_terms(records[0], target, resolver, walk, depth + 1)


# --- DKIM -----------------------------------------------------------------------------


async def _dkim(domain: str, selector: str, resolver: Resolver, key: Any) -> list[Finding]:
    name = key.record_name if key is not None else f"{selector}._domainkey.{domain}"
    answer = await resolver.txt(name)
    params: dict[str, Any] = {"selector": selector}
    if key is not None:
        from mailgate.config.dkim import public_record, zone_line

        params |= {"key_file": str(key.key_file),
                   "zone_line": zone_line(key.record_name, public_record(key))}
    if answer.status == "error":
        return [_temp("dkim", name, answer)]
    if not answer.records:
        code = "missing_configured" if key is not None else "missing"
        return [Finding("dkim", name, "error", code, params)]
    if len(answer.records) > 1:
        return [Finding("dkim", name, "error", "multiple",
                        params | {"count": len(answer.records)}, " | ".join(answer.records))]
    record = answer.records[0]
    out: list[Finding] = []

    def add(status: Status, code: str, **more: Any) -> None:
        out.append(Finding("dkim", name, status, code, params | more, record))

    tags = _tags(record)
    if tags is None or "p" not in tags or tags.get("v", "DKIM1") != "DKIM1":
        why = ("v= is not DKIM1" if tags is not None and "p" in tags else "no p= tag"
               if tags is not None else "not a tag=value list")
        add("error", "syntax", why=why)
        return out
    key_type = tags.get("k", "rsa").lower()
    public = tags["p"]
    if not public:
        add("warn", "revoked")
        return out
    bits = _key_bits(key_type, public)
    if bits is None:
        add("error", "bad_key", key_type=key_type)
        return out
    if "y" in [f.strip() for f in tags.get("t", "").split(":")]:
        add("warn", "testing")
    if key_type == "rsa" and bits < 1024:
        add("error", "weak", bits=bits)
    elif key_type == "rsa" and bits < 2048:
        add("warn", "short", bits=bits)
    if key is not None:
        if public == key.public:
            add("ok", "matches")
        else:
            add("error", "mismatch")
    if not any(f.status == "error" for f in out):
        add("ok", "ok", key_type=key_type, bits=bits)
    out.sort(key=lambda f: f.status != "ok")
    return out


def _key_bits(key_type: str, public: str) -> int | None:
    """The size of a published key (p=), None when it is not one of that kind."""
    try:
        der = base64.b64decode(public, validate=True)
    except (binascii.Error, ValueError):
        return None
    if key_type == "ed25519":
        return 256 if len(der) == 32 else None
    if key_type != "rsa":
        return None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    for load in (serialization.load_der_public_key, _load_pkcs1):
        try:
            loaded = load(der)
        except (ValueError, TypeError):
            continue
        if isinstance(loaded, rsa.RSAPublicKey):
            return loaded.key_size
    return None


def _load_pkcs1(der: bytes) -> object:
    """An RSAPublicKey structure (RFC 3447), which RFC 6376 3.6.1 also allows in p=."""
    from cryptography.hazmat.primitives import serialization

    b64 = base64.encodebytes(der).decode()
    pem = f"-----BEGIN RSA PUBLIC KEY-----\n{b64}-----END RSA PUBLIC KEY-----\n"
    return serialization.load_pem_public_key(pem.encode())


# --- DMARC, MTA-STS, TLS-RPT --------------------------------------------------------


async def _dmarc(domain: str, resolver: Resolver) -> list[Finding]:
    name = f"_dmarc.{domain}"
    answer = await resolver.txt(name)
    if answer.status == "error":
        return [_temp("dmarc", name, answer)]
    records = _select(answer, "v=DMARC1")
    inherited = None
    org = organizational_domain(domain)
    if not records and org != domain:
        # No record of its own: the organizational domain's applies, and no other
        # parent's (RFC 7489 6.6.3): the public suffix list says which, as receivers
        # (and mailgate's own inbound checks) read it.
        up = await resolver.txt(f"_dmarc.{org}")
        if up.status == "error":
            return [_temp("dmarc", f"_dmarc.{org}", up)]
        found = _select(up, "v=DMARC1")
        if found:
            records, inherited, name = found, org, f"_dmarc.{org}"
    if not records:
        return [Finding("dmarc", name, "warn", "missing", {"domain": domain})]
    if len(records) > 1:
        return [Finding("dmarc", name, "error", "multiple", {"count": len(records)},
                        " | ".join(records))]
    record = records[0]
    out: list[Finding] = []

    def add(status: Status, code: str, **params: Any) -> None:
        out.append(Finding("dmarc", name, status, code, {"domain": domain} | params, record))

    if inherited is not None:
        add("info", "inherited", org=inherited)
    tags = _tags(record)
    policy = (tags or {}).get("p", "").lower()
    if tags is None or policy not in ("none", "quarantine", "reject"):
        add("error", "syntax", policy=policy or "-")
        return out
    if inherited is not None and "sp" in tags:
        policy = tags["sp"].lower() if tags["sp"].lower() in (
            "none", "quarantine", "reject") else policy
    add("warn" if policy == "none" else "ok", f"p_{policy}")
    pct = tags.get("pct", "100")
    if pct.isdigit() and int(pct) < 100 and policy != "none":
        add("info", "pct", pct=int(pct))
    if not tags.get("rua"):
        add("warn" if policy == "none" else "info", "no_rua")
    out.sort(key=lambda f: STATUSES.index(f.status) if f.status != "info" else -1)
    return out


async def _mta_sts(domain: str, resolver: Resolver) -> list[Finding]:
    name = f"_mta-sts.{domain}"
    answer = await resolver.txt(name)
    if answer.status == "error":
        return [_temp("mta_sts", name, answer)]
    records = _select(answer, "v=STSv1")
    if not records:
        return [Finding("mta_sts", name, "info", "missing", {"domain": domain})]
    if len(records) > 1:
        return [Finding("mta_sts", name, "error", "multiple", {"count": len(records)},
                        " | ".join(records))]
    tags = _tags(records[0])
    ident = (tags or {}).get("id", "")
    if tags is None or not re.fullmatch(r"[A-Za-z0-9]{1,32}", ident):
        return [Finding("mta_sts", name, "error", "syntax", {"domain": domain}, records[0])]
    return [Finding("mta_sts", name, "ok", "ok", {"domain": domain, "id": ident}, records[0])]


async def _tls_rpt(domain: str, resolver: Resolver) -> list[Finding]:
    name = f"_smtp._tls.{domain}"
    answer = await resolver.txt(name)
    if answer.status == "error":
        return [_temp("tls_rpt", name, answer)]
    records = _select(answer, "v=TLSRPTv1")
    if not records:
        return [Finding("tls_rpt", name, "info", "missing", {"domain": domain})]
    if len(records) > 1:
        return [Finding("tls_rpt", name, "error", "multiple", {"count": len(records)},
                        " | ".join(records))]
    tags = _tags(records[0])
    rua = [u.strip() for u in (tags or {}).get("rua", "").split(",") if u.strip()]
    if tags is None or not rua or not all(u.lower().startswith(("mailto:", "https:"))
                                          for u in rua):
        return [Finding("tls_rpt", name, "error", "syntax", {"domain": domain}, records[0])]
    return [Finding("tls_rpt", name, "ok", "ok", {"rua": ", ".join(rua)}, records[0])]

