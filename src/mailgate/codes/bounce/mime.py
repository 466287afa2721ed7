"""A bounce as a mail message: its header, its parts, the text meant for people.

The standard library's `email` package parses the message (the compat32 policy: the
fastest, and forgiving of broken mail). Everything is bounded: the bytes read
(`MAX_BOUNCE`), the parts walked (`MAX_PARTS`), how deep they nest (`MAX_DEPTH`) and
the text decoded from any one part (`MAX_PART_TEXT`).
"""

from __future__ import annotations

import binascii
import contextlib
import email.errors
import email.message
import email.parser
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.policy import compat32

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
_B64_PIECE = re.compile(rb"(?<==)(?=[^=])")  # after a padding that does not end the data
_ISO2022JP = re.compile(r"iso[-_]?2022[-_]?jp")
_JIS_CUT_ESCAPE = re.compile(rb"\x1b[\r\n\t ]*([$(])[\r\n\t ]*([@BJI])")
_JIS_TWO_BYTE = re.compile(rb"(\x1b\$[@B])([^\x1b]*)")  # up to the next escape
_JIS_BREAKS = re.compile(rb"[\r\n\t ]+")
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
    except (ValueError, LookupError, UnicodeError, AssertionError, email.errors.MessageError):
        return value


def _raw_header(value: str) -> str:
    """A field's value as the parser kept it (8-bit bytes as surrogates): raw UTF-8, or
    raw ISO-2022-JP (old Japanese mailers wrote Subject: so), read as text; the standard
    library would show each such byte as U+FFFD, or keep the escape sequences."""
    raw = value[:MAX_HEADER * 4].encode("utf-8", "surrogateescape")
    if raw.isascii() and b"\x1b" not in raw:
        return value
    return _to_text(raw, None)


def html_to_text(html: str) -> str:
    text = _BR.sub("\n", html)
    text = _TAGS.sub("", text)
    for k, v in _ENTITIES.items():
        text = text.replace(k, v)
    return text


def _parse_head(head: bytes) -> email.message.Message:
    """The message's own header fields, parsed by the standard library."""
    return email.parser.BytesHeaderParser(policy=compat32).parsebytes(head + b"\n\n")


class _Head:
    """A part's header fields: what the walk asks of them (content type and its
    parameters, charset, transfer encoding), read here. The standard library's feed
    parser, run once per part, was most of the time of reading a corpus of bounces;
    the message's own header is still parsed by it (`_parse_head`)."""

    __slots__ = ("ctype", "fields", "params")

    def __init__(self, head: bytes, fields: dict[str, str] | None = None) -> None:
        self.fields: dict[str, str] = dict(fields or {})
        last = None
        for raw in head.decode("latin-1").split("\n")[:200] if fields is None else ():
            if raw[:1] in (" ", "\t") and last is not None:
                self.fields[last] += " " + raw.strip()
                continue
            name, sep, value = raw.partition(":")
            if sep and name and " " not in name.strip():
                last = name.strip().lower()
                self.fields.setdefault(last, value.strip()[:MAX_HEADER])
        ctype, _, rest = self.fields.get("content-type", "").partition(";")
        ctype = ctype.strip().lower()
        self.ctype = ctype if "/" in ctype and " " not in ctype else "text/plain"
        self.params = _params(rest)

    def get_content_type(self) -> str:
        return self.ctype

    def get_param(self, name: str) -> str | None:
        return self.params.get(name)

    def get_content_charset(self) -> str | None:
        charset = self.params.get("charset")
        return charset.lower() if charset else None

    def get(self, name: str, default: str = "") -> str:
        return self.fields.get(name.lower(), default)


_PARAM = re.compile(r'\s*([A-Za-z0-9\-_.*]{1,60})\s*=\s*'
                    r'(?:"((?:[^"\\]|\\.){0,1000})"|([^;\s]{0,1000}))')


def _params(text: str) -> dict[str, str]:
    """`; boundary="x"; charset=utf-8` -> {"boundary": "x", "charset": "utf-8"}."""
    out: dict[str, str] = {}
    for m in _PARAM.finditer(text[:2000]):
        key = m.group(1).lower().rstrip("*")
        value = m.group(2) if m.group(2) is not None else (m.group(3) or "")
        out.setdefault(key, value.replace('\\"', '"'))
    return out


def _split(data: bytes) -> tuple[bytes, bytes]:
    """A part -> (its header, its body), at the first empty line."""
    if data.startswith(b"\n"):
        return b"", data[1:]
    end = data.find(b"\n\n")
    if end < 0:
        return data, b""
    return data[:end], data[end + 2:]


def _decode(body: bytes, msg: _Head) -> bytes:
    cte = str(msg.get("content-transfer-encoding", "")).strip().lower()
    body = body[:MAX_PART_TEXT * 4]
    try:
        if cte == "base64":
            # Some mailers encode each line on its own, padding and all: a2b_base64
            # stops at the first padding, so each padded piece is decoded by itself.
            pieces = _B64_PIECE.split(b"".join(body.split()))
            return b"".join(binascii.a2b_base64(piece) for piece in pieces)
        if cte == "quoted-printable":
            return binascii.a2b_qp(body)
    except (binascii.Error, ValueError):
        return body
    return body


def _text(body: bytes, msg: _Head) -> str:
    return _to_text(_decode(body, msg), msg.get_content_charset())[:MAX_PART_TEXT]


def _to_text(raw: bytes, charset: str | None) -> str:
    """`raw` in its charset (UTF-8 when none is said), with two exceptions Japanese
    bounces need. ISO-2022-JP's escape sequences are read as such wherever they are
    (written without a charset, in a header field too: `_jis`). A text labelled
    ISO-2022-JP, a 7-bit charset, whose bytes are 8-bit was converted and kept its
    label (a bounce saved or pasted from a mail program): it is read as what it is,
    UTF-8, else EUC-JP, else Shift_JIS; decoded as ISO-2022-JP every byte would be lost.
    The same three are tried for 8-bit text with no label at all (a delivery-status part
    of such a copy: RFC 3464 says 7-bit, the copy is not), keeping EUC-JP or Shift_JIS
    only when the result reads as Japanese (`_reads_japanese`)."""
    if charset is None and not raw.isascii() and b"\x1b$" not in raw[:MAX_PART_TEXT]:
        with contextlib.suppress(UnicodeDecodeError):
            return raw.decode("utf-8")
        for guess in ("euc-jp", "cp932"):
            with contextlib.suppress(UnicodeDecodeError):
                text = raw.decode(guess)
                if _reads_japanese(text):
                    return text
    charset = charset or "utf-8"
    japanese = _ISO2022JP.match(charset) is not None
    if b"\x1b$" in raw[:MAX_PART_TEXT] or (japanese and raw.isascii()):
        return _jis(raw)
    if japanese:
        for guess in ("utf-8", "euc-jp", "cp932"):
            with contextlib.suppress(UnicodeDecodeError):
                return raw.decode(guess)
    try:
        return raw.decode(charset, errors="replace")
    except (LookupError, ValueError):
        return raw.decode("utf-8", errors="replace")


def _reads_japanese(text: str) -> bool:
    """Japanese prose writes kana: at least a fifth of the text's non-ASCII characters
    are hiragana or katakana. Latin-1 or Windows-1252 bytes that happen to decode as
    EUC-JP or Shift_JIS come out as kanji and half-width katakana, almost never as
    these (their bytes would be C1 controls, or rare signs such as ¤ and ¥)."""
    wide = [c for c in text if ord(c) > 0x7F]
    kana = sum(1 for c in wide if "\u3040" <= c <= "\u30ff")
    return bool(wide) and kana * 5 >= len(wide)


def _jis(raw: bytes) -> str:
    """ISO-2022-JP, mended where a mailer wrapped a line at a fixed width: a line ends
    in ASCII (RFC 1468), so a line break (and a header field's folding) inside an escape
    sequence or in two-byte mode is no part of the text. Left there, it puts the decoder
    out of step, and every character after it, the SMTP reply too, comes out garbled."""
    raw = _JIS_CUT_ESCAPE.sub(lambda m: b"\x1b" + m[1] + m[2], raw)
    raw = _JIS_TWO_BYTE.sub(lambda m: m[1] + _JIS_BREAKS.sub(b"", m[2]), raw)
    return raw.decode("iso-2022-jp", errors="replace")


def _parts(body: bytes, boundary: str) -> list[bytes]:
    """The parts of a multipart body, between its boundary lines (bounded)."""
    delim = b"--" + boundary.encode("utf-8", "replace")
    out: list[bytes] = []
    pos = 0 if body.startswith(delim) else body.find(b"\n" + delim)
    if pos < 0:
        return out
    if pos > 0 or not body.startswith(delim):
        pos += 1
    while pos >= 0 and len(out) < MAX_PARTS:
        line_end = body.find(b"\n", pos)
        if body[pos + len(delim):pos + len(delim) + 2] == b"--":
            break  # the close delimiter
        if line_end < 0:
            break
        nxt = body.find(b"\n" + delim, line_end)
        out.append(body[line_end + 1:nxt if nxt >= 0 else len(body)])
        pos = nxt + 1 if nxt >= 0 else -1
    return out


def read_mail(data: bytes) -> Mail:
    """Parse a bounce. BounceError when it is not a mail message at all.

    The message's header fields are parsed (and their encoded words decoded) by the
    standard library; the parts are found by their boundaries here, with `bytes.find`,
    and their headers read by `_Head`, which is what keeps a corpus of bounces fast
    (the feed parser reads line by line, and `Message.get` walks every field).
    """
    truncated = len(data) > MAX_BOUNCE
    data = data[:MAX_BOUNCE]
    if not data.strip():
        raise BounceError("The input is empty: give a whole bounce message.", key="empty")
    if data.count(b"\x00", 0, 4096) > 16:
        raise BounceError("The input is binary data, not a mail message.", key="binary")
    data = data.replace(b"\r\n", b"\n")
    if data.startswith(b"From "):  # an mbox separator line
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    head, body = _split(data)
    try:
        msg = _parse_head(head)
    except (RecursionError, ValueError, TypeError, LookupError, IndexError) as exc:
        raise BounceError(f"The input cannot be read as a mail message ({type(exc).__name__}).",
                          key="unreadable") from None
    headers: dict[str, str] = {}
    for k, v in list(msg.raw_items())[:500]:
        headers.setdefault(k.lower(), _decode_header(_raw_header(str(v))))
    if not headers:
        raise BounceError("The input is not a mail message: it has no header fields.",
                          key="not_mail")
    # The fields the walk needs, as the standard library read them.
    top = _Head(b"", {k: str(msg.get(k, "")) for k in ("content-type",
                                                       "content-transfer-encoding")})
    mail = Mail(headers=headers, content_type=top.get_content_type(),
                report_type=str(top.get_param("report-type") or "").lower(),
                truncated=truncated)
    try:
        _walk(top, body, mail, 0, inside_original=False)
    except (RecursionError, ValueError, TypeError, LookupError, IndexError):
        raise BounceError("The message's parts cannot be read.", key="unreadable") from None
    return mail


def _walk(msg: _Head, body: bytes, mail: Mail, depth: int,
          inside_original: bool) -> None:
    mail.parts += 1
    if mail.parts > MAX_PARTS or depth > MAX_DEPTH:
        return
    ctype = msg.get_content_type()
    if ctype in _REPORT_TYPES:
        mail.reports.append(_text(body, msg))
        return
    if ctype == "message/feedback-report":
        mail.feedback.append(_text(body, msg))
        return
    if ctype in _ORIGINAL_TYPES:
        inner = _decode(body, msg)
        head, rest = _split(inner)
        mail.original.append(head[:64 * 1024].decode("utf-8", "replace"))
        if ctype in ("message/rfc822", "message/global") and not inside_original \
                and depth < 3 and not mail.reports:
            # A bounce wrapped in another (a forwarded NDR): its own report counts.
            sub = Mail(headers={}, content_type="", report_type="")
            _walk(_Head(head), rest, sub, depth + 1, inside_original=True)
            mail.parts += sub.parts
            mail.reports.extend(sub.reports)
        return
    if ctype.startswith("multipart/"):
        boundary = msg.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            mail.texts.append(_text(body, msg))
            return
        parts = _parts(body, boundary[:200])
        if not parts:  # announced as multipart, written as one text (old Sendmail)
            mail.texts.append(_text(body, msg))
        for part in parts:
            head, rest = _split(part)
            _walk(_Head(head), rest, mail, depth + 1, inside_original)
            if mail.parts > MAX_PARTS:
                return
        return
    if ctype == "text/html":
        mail.texts.append("\x00html\x00" + _text(body, msg))
    elif ctype.startswith("text/") and ctype != "text/calendar":
        mail.texts.append(_text(body, msg))
