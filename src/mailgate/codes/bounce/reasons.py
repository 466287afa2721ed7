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

__all__ = ["REASONS", "classify", "tables"]

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
    own, early = {}, {}
    for name in raw["order"]:
        table = raw["patterns"].get(name, {})
        if table.get("text"):
            own[name] = _Rule(name, table["text"])
        if table.get("early"):
            early[name] = _Rule(name, table["early"])
    late = set(raw["late"])
    return {
        # The `early` patterns first (they are specific), then each reason's own.
        "first": [early[n] for n in raw["order"] if n in early]
        + [own[n] for n in raw["order"] if n in own and n not in late],
        "late": [own[n] for n in raw["order"] if n in own and n in late],
        "status": dict(raw["status"]),
        "prefix": dict(raw["status_prefix"]),
        "uncertain": set(raw["uncertain"]),
        "prefer_status": {tuple(pair) for pair in raw.get("prefer_status", ())},
        "actors": {k: tuple(v) for k, v in raw.get("actors", {}).items()},
    }


_LINE_CODES = re.compile(r"(?<![\w.\-])[245][0-9]{2}[ \-](?:[245]\.[0-9]{1,3}\.[0-9]{1,3}[ ])?")


def _match(rules: list[_Rule], text: str) -> str | None:
    for rule in rules:
        if rule.search(text):
            return rule.name
    return None


def classify(status: str | None, text: str, action: str | None = None,
             command: str | None = None, diagnostic_type: str | None = None,
             code: int | None = None) -> str:
    """The reason for one recipient: its status, its reply text, what else is known."""
    if status and status.startswith("2."):
        return "delivered"
    t = tables()
    # The codes that start each line of a multi-line reply are not words: drop them.
    low = _LINE_CODES.sub(" ", text[:MAX_TEXT].lower())
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
    if command == "MAIL" and found is None:
        return "rejected"  # refused at MAIL FROM: the sender (or its domain) was refused
    if found:
        return found
    late = _match(t["late"], low) if low else None
    if action == "delayed":  # still being retried: say why, not that it expired
        return late or by_status or "expired"
    if by_status and by_status not in t["uncertain"]:
        return str(by_status)
    if status in ("4.4.7", "5.4.7"):
        return "expired"
    if late:
        return late
    if status and status[0] == "4":
        return "expired"  # given up after temporary failures
    if by_status:
        return str(by_status)
    if command == "MAIL":
        return "rejected"
    if command in ("EHLO", "HELO", "CONNECT"):
        return "blocked"
    if (diagnostic_type or "").upper() in ("X-UNIX", "X-POSTFIX"):
        return "mailererror"
    if status and status.startswith(("4.6", "5.6")):
        return "contenterror"
    return "onhold" if low.strip() or code else "undefined"
