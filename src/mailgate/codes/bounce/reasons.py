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

__all__ = ["REASONS", "classify", "default_status", "tables"]

MAX_TEXT = 4096  # characters of reply text matched

# Every reason mailgate gives (Sisimai's names). `feedback` and `vacation` are given to
# the recipients of complaint reports and auto-replies, never as failures.
REASONS = (
    "blocked", "contenterror", "delivered", "exceedlimit", "expired", "feedback", "filtered",
    "hasmoved", "hostunknown", "mailboxfull", "mailererror", "mesgtoobig", "networkerror",
    "norelaying", "notaccept", "onhold", "policyviolation", "rejected", "securityerror",
    "spamdetected", "suspend", "syntaxerror", "systemerror", "systemfull", "toomanyconn",
    "undefined", "userunknown", "vacation", "virusdetected",
)

# The status a recipient is given when the bounce gives none (its reason's usual code).
_DEFAULT_STATUS = {
    "userunknown": "5.1.1", "hostunknown": "5.1.2", "hasmoved": "5.1.6", "rejected": "5.1.8",
    "notaccept": "5.1.10", "filtered": "5.2.0", "suspend": "5.2.1", "mailboxfull": "5.2.2",
    "mesgtoobig": "5.3.4", "exceedlimit": "5.2.3", "systemfull": "5.3.1",
    "systemerror": "5.3.0", "networkerror": "5.4.0", "expired": "5.4.7",
    "toomanyconn": "5.5.3", "syntaxerror": "5.5.2", "contenterror": "5.6.0",
    "securityerror": "5.7.0", "blocked": "5.7.1", "spamdetected": "5.7.1",
    "policyviolation": "5.7.1", "virusdetected": "5.7.1", "norelaying": "5.7.1",
    "mailererror": "5.3.0",
}


@functools.cache
def tables() -> dict[str, Any]:
    """The reason tables, with each reason's patterns compiled into one expression."""
    raw = reg._load_toml(reg.data_root() / "bounce" / "reasons.toml")
    compiled = {}
    for name in raw["order"]:
        pats = raw["patterns"].get(name, {}).get("text", [])
        if pats:
            compiled[name] = re.compile("|".join(f"(?:{p})" for p in pats))
    late = set(raw["late"])
    return {
        "first": [(n, compiled[n]) for n in raw["order"] if n in compiled and n not in late],
        "late": [(n, compiled[n]) for n in raw["order"] if n in compiled and n in late],
        "status": dict(raw["status"]),
        "prefix": dict(raw["status_prefix"]),
        "uncertain": set(raw["uncertain"]),
        "actors": {k: tuple(v) for k, v in raw.get("actors", {}).items()},
    }


def _match(rules: list[tuple[str, re.Pattern[str]]], text: str) -> str | None:
    for name, rx in rules:
        if rx.search(text):
            return name
    return None


def classify(status: str | None, text: str, action: str | None = None,
             command: str | None = None, diagnostic_type: str | None = None,
             code: int | None = None) -> str:
    """The reason for one recipient: its status, its reply text, what else is known."""
    if status and status.startswith("2."):
        return "delivered"
    t = tables()
    low = text[:MAX_TEXT].lower()
    found = _match(t["first"], low) if low else None
    if found:
        return found
    by_status = None
    if status and not status.endswith(".0.0"):
        by_status = t["status"].get(status) or t["prefix"].get(status.rsplit(".", 1)[0])
    if by_status and by_status not in t["uncertain"]:
        return str(by_status)
    late = _match(t["late"], low) if low else None
    if late:
        return late
    if by_status:
        return str(by_status)
    if action == "delayed" or (status or "").startswith("4.4"):
        return "expired"
    if command in ("EHLO", "HELO"):
        return "blocked"
    if (diagnostic_type or "").upper() in ("X-UNIX", "X-POSTFIX"):
        return "mailererror"
    if status and status.startswith(("4.6", "5.6")):
        return "contenterror"
    return "onhold" if low.strip() or code else "undefined"


def default_status(reason: str, temporary: bool = False) -> str | None:
    """The enhanced code a reason usually comes with, when a bounce gives none."""
    s = _DEFAULT_STATUS.get(reason)
    if s is None:
        return None
    return "4" + s[1:] if temporary else s
