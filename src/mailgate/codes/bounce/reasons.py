"""Why a recipient bounced, in Sisimai's vocabulary of reasons.

The tables are data (`data/bounce/reasons.toml`: the order, the status codes, the
patterns; docs/bounces.md says how they are used). The words for each reason, in each
language, are `data/<lang>/bounce.toml`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from mailgate.codes import registry as reg

__all__ = ["REASONS", "classify", "tables", "vendor_reason"]

MAX_TEXT = 2048  # characters of reply text matched

# Every reason mailgate gives (Sisimai's names). `feedback` and `vacation` are given to
# the recipients of complaint reports and auto-replies, never as failures.
REASONS = (
    "blocked", "contenterror", "delivered", "exceedlimit", "expired", "feedback", "filtered",
    "hasmoved", "hostunknown", "mailboxfull", "mailererror", "mesgtoobig", "networkerror",
    "norelaying", "notaccept", "onhold", "policyviolation", "rejected", "securityerror",
    "spamdetected", "suspend", "syntaxerror", "systemerror", "systemfull", "toomanyconn",
    "undefined", "userunknown", "vacation", "virusdetected",
)

class _Rule:
    """One reason's patterns, joined into one expression compiled on first use: a call
    that reads one bounce compiles only the reasons it gets to (the whole table costs
    tens of milliseconds to compile, more than reading a bounce)."""

    __slots__ = ("_rx", "name", "source")

    def __init__(self, name: str, patterns: list[str]) -> None:
        self.name = name
        self.source = "|".join(f"(?:{p})" for p in patterns)
        self._rx: re.Pattern[str] | None = None

    def search(self, text: str) -> bool:
        if self._rx is None:
            self._rx = re.compile(self.source)
        return self._rx.search(text) is not None


@functools.cache
def tables() -> dict[str, Any]:
    """The reason tables; each reason's patterns one `_Rule`."""
    raw = reg._load_toml(reg.data_root() / "bounce" / "reasons.toml")
    own, early, at_mail, given_up = {}, {}, [], []
    for name in raw["order"]:
        table = raw["patterns"].get(name, {})
        if table.get("text"):
            own[name] = _Rule(name, table["text"])
        if table.get("early"):
            early[name] = _Rule(name, table["early"])
        if table.get("at_mail"):
            at_mail.append(_Rule(name, table["at_mail"]))
        if table.get("given_up"):
            given_up.append(_Rule(name, table["given_up"]))
    late = set(raw["late"])
    return {
        # The `early` patterns first (they are specific), then each reason's own.
        "first": [early[n] for n in raw["order"] if n in early]
        + [own[n] for n in raw["order"] if n in own and n not in late],
        "late": [own[n] for n in raw["order"] if n in own and n in late],
        "at_mail": at_mail,
        "given_up": given_up,
        "mail_from": set(raw.get("mail_from", ())),
        "status": dict(raw["status"]),
        "prefix": dict(raw["status_prefix"]),
        "uncertain": set(raw["uncertain"]),
        "prefer_status": {tuple(pair) for pair in raw.get("prefer_status", ())},
        "actors": {k: tuple(v) for k, v in raw.get("actors", {}).items()},
    }


class _Vendor:
    """One provider's own codes and words (`[[vendor]]` in reasons.toml)."""

    __slots__ = ("codes", "hosts", "name", "prefixes", "ranges", "rx_code", "text")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.name = str(raw["name"])
        self.hosts = re.compile(raw["hosts"])
        self.rx_code = re.compile(raw["code"]) if raw.get("code") else None
        self.codes = {str(k).lower(): v for k, v in raw.get("codes", {}).items()}
        self.prefixes = sorted(raw.get("code_prefix", {}).items(), key=lambda kv: -len(kv[0]))
        self.ranges = [(int(a), int(b), str(r)) for a, b, r in raw.get("ranges", ())]
        self.text = [(str(p), str(r)) for r, ps in raw.get("text", {}).items() for p in ps]

    def reason(self, low: str) -> str | None:
        if self.rx_code is not None:
            m = self.rx_code.search(low)
            if m:
                code = m.group(1)
                if code in self.codes:
                    return str(self.codes[code])
                for prefix, r in self.prefixes:
                    if code.startswith(prefix):
                        return str(r)
                if code.isdigit():
                    n = int(code)
                    for a, b, r in self.ranges:
                        if a <= n <= b:
                            return r
        for phrase, r in self.text:
            if phrase in low:
                return r
        return None


@functools.cache
def vendors() -> tuple[_Vendor, ...]:
    raw = reg._load_toml(reg.data_root() / "bounce" / "reasons.toml")
    return tuple(_Vendor(v) for v in raw.get("vendor", ()))


def vendor_reason(hosts: tuple[str | None, ...], low: str) -> str | None:
    """The reason a provider's own code or words give, when one of `hosts` (the remote
    server, the recipient's domain) is that provider's."""
    for h in hosts:
        for v in _vendors_of(h) if h else ():
            r = v.reason(low)
            if r:
                return r
    return None


@functools.lru_cache(maxsize=256)
def _vendors_of(host: str) -> tuple[_Vendor, ...]:
    """The providers a host (or domain) is one of; one bounce asks for the same few."""
    name = host.lower().rstrip(".")[:255]
    return tuple(v for v in vendors() if v.hosts.search(name))


_LINE_CODES = re.compile(r"(?<![\w.\-])[245][0-9]{2}[ \-](?:[245]\.[0-9]{1,3}\.[0-9]{1,3}[ ])?")


def _match(rules: list[_Rule], text: str) -> str | None:
    for rule in rules:
        if rule.search(text):
            return rule.name
    return None


def classify(status: str | None, text: str, action: str | None = None,
             command: str | None = None, diagnostic_type: str | None = None,
             code: int | None = None, hosts: tuple[str | None, ...] = ()) -> str:
    """The reason for one recipient: its status, its reply text, what else is known
    (`hosts`: the remote server and the recipient's domain, for the providers' own
    codes)."""
    if status and status.startswith("2."):
        return "delivered"
    t = tables()
    # The codes that start each line of a multi-line reply are not words: drop them.
    low = " ".join(_LINE_CODES.sub(" ", text[:MAX_TEXT].lower()).split())
    if hosts and low:
        own = vendor_reason(hosts, low)
        if own:
            return own
    by_status = None
    if status and not status.endswith(".0.0"):
        by_status = t["status"].get(status) or t["prefix"].get(status.rsplit(".", 1)[0])
    found = _match(t["first"], low) if low else None
    if (diagnostic_type or "").upper() == "X-UNIX":
        # The words of a local delivery program (procmail, a pipe): its own failure,
        # unless what it says is that the mailbox is full.
        return "mailboxfull" if found == "mailboxfull" else "mailererror"
    if found and by_status and (found, by_status) in t["prefer_status"]:
        return str(by_status)
    if found == "userunknown" and command == "DATA":
        return "filtered"
    if command == "MAIL" and (found is None or found in t["mail_from"]
                              or _match(t["at_mail"], low)):
        return "rejected"  # refused at MAIL FROM: the sender (or its domain) was refused
    if found:
        return found
    late = _match(t["late"], low) if low else None
    if action == "delayed":  # still being retried: say why, not that it expired
        return late or by_status or "expired"
    if low and _match(t["given_up"], low):
        return "expired"
    if by_status and by_status not in t["uncertain"]:
        return str(by_status)
    if late:
        return late
    if status in ("4.4.7", "5.4.7"):
        return "expired"
    if by_status:
        return str(by_status)
    if status and status[0] == "4":
        # Given up after temporary failures: expired, unless the report says the
        # delivery failed (a temporary reply taken as final) and names no cause.
        return "onhold" if action == "failed" and low else "expired"
    if command == "MAIL":
        return "rejected"
    if command in ("EHLO", "HELO", "CONNECT"):
        return "blocked"
    if (diagnostic_type or "").upper() in ("X-UNIX", "X-POSTFIX"):
        return "mailererror"
    if status and status.startswith(("4.6", "5.6")):
        return "contenterror"
    return "onhold" if low.strip() or code else "undefined"
