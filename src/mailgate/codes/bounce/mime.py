"""A bounce as a mail message: its header, its parts, the text meant for people.

The standard library's `email` package parses the message (the compat32 policy: the
fastest, and forgiving of broken mail). Everything is bounded: the bytes read
(`MAX_BOUNCE`), the parts walked (`MAX_PARTS`), how deep they nest (`MAX_DEPTH`) and
the text decoded from any one part (`MAX_PART_TEXT`).
"""

from __future__ import annotations

import email
import email.message
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header

__all__ = ["MAX_BOUNCE", "BounceError", "Mail", "read_mail"]

MAX_BOUNCE = 4 * 1024 * 1024  # bytes read; a longer bounce is cut (and says so)
MAX_PARTS = 200
MAX_DEPTH = 12
MAX_PART_TEXT = 256 * 1024  # characters of decoded text kept from one part
MAX_HEADER = 2000  # characters of one header field kept

_REPORT_TYPES = ("message/delivery-status", "message/global-delivery-status",
                 "text/delivery-status", "message/x-delivery-status")
_ORIGINAL_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers",
                   "message/rfc822-headers", "message/partial", "text/rfc822")
_TAGS = re.compile(r"<[^<>]{0,2000}>")
_BR = re.compile(r"<(?:br|p|div|tr|li|/p|/div|/tr|/h[1-6])\b[^<>]{0,200}>", re.IGNORECASE)
_ENTITIES = {"&nbsp;": " ", "&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"',
             "&#39;": "'", "&#160;": " "}


class BounceError(ValueError):
    """The input cannot be read as a bounce; `str()` is one sentence for people.
    `key` names it in the words files (`errors.<key>`), `values` fill its template."""

    def __init__(self, message: str, key: str = "unreadable", **values: object) -> None:
        super().__init__(message)
        self.key = key
        self.values = values


@dataclass
class Mail:
    """What the reader needs of a parsed bounce."""

    headers: dict[str, str]  # lower-case name -> first value, decoded, bounded
    content_type: str
    report_type: str
    texts: list[str] = field(default_factory=list)  # parts for people, in order
    reports: list[str] = field(default_factory=list)  # delivery-status parts, raw text
    feedback: list[str] = field(default_factory=list)  # message/feedback-report parts
    original: list[str] = field(default_factory=list)  # returned message headers (text)
    truncated: bool = False
    parts: int = 0

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


def _decode_header(value: str) -> str:
    value = value[:MAX_HEADER]
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, AssertionError):
        return value


def _text_of(part: email.message.Message) -> str:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        payload = part.get_payload()
        return payload[:MAX_PART_TEXT] if isinstance(payload, str) else ""
    raw = raw[:MAX_PART_TEXT * 4]
    charset = part.get_content_charset() or "utf-8"
    try:
        text = raw.decode(charset, errors="replace")
    except LookupError:
        text = raw.decode("utf-8", errors="replace")
    return text[:MAX_PART_TEXT]


def html_to_text(html: str) -> str:
    text = _BR.sub("\n", html)
    text = _TAGS.sub("", text)
    for k, v in _ENTITIES.items():
        text = text.replace(k, v)
    return text


def _payload_text(part: email.message.Message) -> str:
    """A message/* part's content as text: the parser made it sub-messages."""
    payload = part.get_payload()
    if isinstance(payload, list):
        out = []
        for sub in payload[:MAX_PARTS]:
            if isinstance(sub, email.message.Message):
                block = "\n".join(f"{k}: {v}" for k, v in sub.items()[:200])
                body = sub.get_payload()
                if isinstance(body, str) and body.strip():
                    block += "\n\n" + body
                out.append(block)
        return "\n\n".join(out)[:MAX_PART_TEXT]
    return _text_of(part)


def read_mail(data: bytes) -> Mail:
    """Parse a bounce. BounceError when it is not a mail message at all."""
    truncated = len(data) > MAX_BOUNCE
    data = data[:MAX_BOUNCE]
    if not data.strip():
        raise BounceError("The input is empty: give a whole bounce message.", key="empty")
    if b"\x00" in data[:4096] and data.count(b"\x00") > 16:
        raise BounceError("The input is binary data, not a mail message.", key="binary")
    try:
        msg = email.message_from_bytes(data)
    except (RecursionError, ValueError, TypeError, LookupError, IndexError) as exc:
        raise BounceError(f"The input cannot be read as a mail message ({type(exc).__name__}).",
                          key="unreadable") from None
    headers: dict[str, str] = {}
    for k, v in msg.items()[:500]:
        headers.setdefault(k.lower(), _decode_header(str(v)))
    mail = Mail(headers=headers, content_type=msg.get_content_type(),
                report_type=str(msg.get_param("report-type") or "").lower(),
                truncated=truncated)
    try:
        _walk(msg, mail, 0, inside_original=False)
    except RecursionError:
        raise BounceError("The message nests its parts too deeply to be a bounce.",
                          key="unreadable") from None
    if not headers and not mail.texts:
        raise BounceError("The input is not a mail message: it has no header fields.",
                          key="not_mail")
    return mail


def _walk(part: email.message.Message, mail: Mail, depth: int, inside_original: bool) -> None:
    mail.parts += 1
    if mail.parts > MAX_PARTS or depth > MAX_DEPTH:
        return
    ctype = part.get_content_type()
    if ctype in _REPORT_TYPES:
        mail.reports.append(_payload_text(part))
        return
    if ctype == "message/feedback-report":
        mail.feedback.append(_payload_text(part))
        return
    if ctype in _ORIGINAL_TYPES:
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
            sub = payload[0]
            mail.original.append("\n".join(f"{k}: {v}" for k, v in sub.items()[:200]))
            # A bounce wrapped in another: walk it for its own report (forwarded NDRs).
            if not inside_original and depth < 3 and not mail.reports:
                _walk_original(sub, mail, depth + 1)
        else:
            mail.original.append(_text_of(part)[:64 * 1024])
        return
    if part.is_multipart():
        parts = part.get_payload()
        if isinstance(parts, list):
            for item in parts[:MAX_PARTS]:
                if isinstance(item, email.message.Message):
                    _walk(item, mail, depth + 1, inside_original)
        return
    if ctype == "text/plain" or (ctype.startswith("text/") and "html" not in ctype
                                 and ctype != "text/calendar"):
        mail.texts.append(_text_of(part))
    elif ctype == "text/html":
        mail.texts.append("\x00html\x00" + _text_of(part))


def _walk_original(sub: email.message.Message, mail: Mail, depth: int) -> None:
    inner = Mail(headers={}, content_type="", report_type="")
    _walk(sub, inner, depth, inside_original=True)
    mail.parts += inner.parts
    mail.reports.extend(inner.reports)
