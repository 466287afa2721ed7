"""The delivery-status part of an RFC 3464 DSN: per-message and per-recipient fields.

Read from the part's text, not through `email`'s header objects: real DSNs put
recipients in one block, fold fields oddly and mix encodings, and a field-by-field
reading of our own survives all of that. RFC 6533's `utf-8` address type and its
`\\x{HEX}` escapes are decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DSNField", "clean_address", "parse_report"]

MAX_BLOCKS = 500
_FIELD = re.compile(r"([A-Za-z][A-Za-z0-9\-]{0,60})[ \t]{0,8}:[ \t]{0,8}(.*)")
_HEX = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_ADDR = re.compile(r"[^\s<>\"'(),;:\[\]]{1,64}@[A-Za-z0-9][A-Za-z0-9.\-]{0,252}")
_QUOTED = re.compile(r"\"[^\"\n]{1,64}\"@[A-Za-z0-9][A-Za-z0-9.\-]{0,252}")
_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")


@dataclass
class DSNField:
    """One recipient's fields (lower-case names), with the message's fields beside."""

    fields: dict[str, str]
    message: dict[str, str]


def _unhex(s: str) -> str:
    def one(m: re.Match[str]) -> str:
        try:
            return chr(int(m.group(1), 16))
        except (ValueError, OverflowError):
            return ""
    return _HEX.sub(one, s) if "\\x{" in s else s


def clean_address(value: str) -> str:
    """`rfc822; <u@d>` -> `u@d`; an address found in odd forms, or the value as is."""
    v = value.split(";", 1)[1] if ";" in value[:30] else value
    v = _unhex(v).strip().strip("<> ")
    if v.lower().startswith("mailto:"):
        v = v[7:]
    q = _QUOTED.search(v)
    if q:  # a quoted local part: "first..last"@example.org
        return q.group(0)[:320].lower()
    v = v.strip("\"' ")
    m = _ADDR.search(v)
    return (m.group(0) if m else v)[:320].strip(".").lower() if (m or v) else ""


def status_of(value: str) -> str | None:
    m = _STATUS.search(value or "")
    if not m:
        return None
    return ".".join(str(int(g)) for g in m.groups())


def _blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last: str | None = None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            if cur:
                blocks.append(cur)
                if len(blocks) >= MAX_BLOCKS:
                    return blocks
            cur, last = {}, None
            continue
        if line[:1] in (" ", "\t") and last is not None:
            if len(cur[last]) < 4000:
                cur[last] += " " + line.strip()
            continue
        m = _FIELD.match(line)
        if not m:
            if last is not None and len(cur[last]) < 4000:
                cur[last] += " " + line.strip()  # a continuation line not indented
            continue
        name = m.group(1).lower()
        if name in ("final-recipient", "original-recipient") and name in cur:
            blocks.append(cur)  # recipients run together without a blank line
            cur = {}
        if name in cur:
            last = name
            continue
        cur[name] = m.group(2).strip()
        last = name
    if cur:
        blocks.append(cur)
    return blocks


_RECIPIENT_KEYS = ("final-recipient", "original-recipient", "x-actual-recipient")


def parse_report(text: str) -> list[DSNField]:
    """The recipients of one delivery-status part, each with the message's fields."""
    message: dict[str, str] = {}
    out: list[DSNField] = []
    for block in _blocks(text):
        if any(k in block for k in _RECIPIENT_KEYS) or ("action" in block and "status" in block):
            out.append(DSNField(fields=block, message=message))
        else:
            message.update({k: v for k, v in block.items() if k not in message})
    return out
