"""SMTP replies as values: parse what a server sends, build what mailgate sends.

A reply is a basic code (RFC 5321 section 4.2), an optional enhanced status code
(RFC 3463, advertised with ENHANCEDSTATUSCODES, RFC 2034) and one or more lines of
text. The same `Reply` value is sent on the wire, logged, stored on a delivery attempt
and explained by the knowledge base.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "EnhancedCode",
    "Reply",
    "ReplyClass",
    "ReplyError",
    "Subject",
    "parse_basic_code",
    "parse_enhanced_code",
    "parse_reply",
    "parse_reply_line",
    "reply_from_lines",
]


# An error message shows at most this much of the input it is about (an input may be
# 100,000 characters long; the message must still be one short sentence).
ECHO_LIMIT = 40


def _short(value: object) -> object:
    if isinstance(value, str) and len(value) > ECHO_LIMIT:
        return value[:ECHO_LIMIT] + "\u2026"
    return value


class ReplyError(ValueError):
    """Input that is not a well-formed SMTP reply or code; the message says why.

    The words are data: `key` names a template of the `[errors]` table of ui.toml and
    `params` fill it in (string values cut to `ECHO_LIMIT` characters). `str()` is the
    English text; `text(lang)` the same in another language. A plain message (no key)
    is kept as given, for callers outside this package.
    """

    def __init__(self, message: str = "", *, key: str = "", **params: object) -> None:
        self.key = key
        self.params = {name: _short(value) for name, value in params.items()}
        super().__init__(message or (self.text("en") if key else ""))

    def text(self, lang: str) -> str:
        """The message in `lang` (its `[errors]` template), or as given without a key."""
        if not self.key:
            return str(self)
        from mailgate.codes import registry

        try:
            return str(registry.ui(lang)["errors"][self.key]).format(**self.params)
        except (KeyError, IndexError, ValueError, OSError, registry.DataError):
            # A data root without this template (an old copy, a half-made language)
            # must not turn a refused input into a crash: say which error it was.
            args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
            return f"{self.key}({args})"


class ReplyClass(enum.IntEnum):
    """The first digit of a basic reply code (RFC 5321 section 4.2.1)."""

    POSITIVE_COMPLETION = 2
    POSITIVE_INTERMEDIATE = 3
    TRANSIENT_NEGATIVE = 4
    PERMANENT_NEGATIVE = 5

    @property
    def outcome(self) -> str:
        """`success`, `intermediate`, `transient` or `permanent`."""
        return _OUTCOMES[self]


_OUTCOMES = {
    ReplyClass.POSITIVE_COMPLETION: "success",
    ReplyClass.POSITIVE_INTERMEDIATE: "intermediate",
    ReplyClass.TRANSIENT_NEGATIVE: "transient",
    ReplyClass.PERMANENT_NEGATIVE: "permanent",
}


class Subject(enum.IntEnum):
    """The middle number of an enhanced status code (RFC 3463 section 3)."""

    OTHER = 0
    ADDRESSING = 1
    MAILBOX = 2
    MAIL_SYSTEM = 3
    NETWORK_ROUTING = 4
    DELIVERY_PROTOCOL = 5
    CONTENT = 6
    SECURITY_POLICY = 7

    @property
    def slug(self) -> str:
        return self.name.lower().replace("_", "-")


# RFC 5321 section 4.2: Reply-code = %x32-35 %x30-35 %x30-39. Codes with a second digit
# of 6 to 9 (471, 571) break that grammar but are seen in the wild; a received reply
# carrying one is still a reply, so only `strict` parsing refuses them.
_BASIC_RE = re.compile(r"[2-5][0-5][0-9]\Z")
_LOOSE_BASIC_RE = re.compile(r"[2-5][0-9][0-9]\Z")
# RFC 3463 / RFC 2034: class "." 1*3digit "." 1*3digit, and (RFC 3463 section 2) "each
# numeric sub-code within the status-code MUST be expressed without leading zero digits".
_NUM = r"(0|[1-9][0-9]{0,2})"
_ENHANCED_RE = re.compile(rf"([245])\.{_NUM}\.{_NUM}\Z")
_ENHANCED_PREFIX_RE = re.compile(rf"([245])\.{_NUM}\.{_NUM}(?: |\Z)")


@dataclass(frozen=True, slots=True, order=True)
class EnhancedCode:
    """An enhanced status code such as 5.1.10: class, subject, detail."""

    klass: int
    subject: int
    detail: int

    def __str__(self) -> str:
        return f"{self.klass}.{self.subject}.{self.detail}"

    @property
    def key(self) -> str:
        """The registry form, class written as X: `X.1.10`."""
        return f"X.{self.subject}.{self.detail}"

    @property
    def subject_kind(self) -> Subject | None:
        """The subject as an enum, or None for a subject RFC 3463 does not define."""
        try:
            return Subject(self.subject)
        except ValueError:
            return None


def parse_basic_code(text: str, strict: bool = True) -> int:
    """Parse a three-digit reply code, naming what is wrong when it is not one.

    `strict=False` also takes a second digit of 6 to 9, as receivers must.
    """
    s = text.strip()
    if not s.isascii() or not s.isdigit():
        raise ReplyError(key="basic_not_digits", text=text)
    if len(s) != 3:
        raise ReplyError(key="basic_length", text=s)
    if not (_BASIC_RE if strict else _LOOSE_BASIC_RE).match(s):
        if s[0] not in "2345":
            raise ReplyError(key="basic_first_digit", text=s)
        raise ReplyError(key="basic_second_digit", text=s)
    return int(s)


def parse_enhanced_code(text: str) -> EnhancedCode:
    """Parse `class.subject.detail` (RFC 3463), naming what is wrong when it is not one."""
    s = text.strip()
    m = _ENHANCED_RE.match(s)
    if m is None:
        parts = s.split(".")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            raise ReplyError(key="enhanced_form", text=text)
        if parts[0] not in ("2", "4", "5"):
            raise ReplyError(key="enhanced_class", text=s)
        if any(len(p) > 1 and p.startswith("0") for p in parts[1:]):
            raise ReplyError(key="enhanced_leading_zero", text=s)
        raise ReplyError(key="enhanced_digits", text=s)
    return EnhancedCode(int(m.group(1)), int(m.group(2)), int(m.group(3)))


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: `Reply(556, "5.1.10", ("Recipient address has null MX",))`."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    def __post_init__(self) -> None:
        # Every reply read or made passes here: the usual forms are checked without
        # building anything, the rest as parse_enhanced_code says.
        if not (type(self.code) is int and 200 <= self.code <= 599):
            raise ReplyError(key="reply_code", code=self.code)
        e = self.enhanced
        if e is not None:
            klass = ord(e[0]) - 48 if _ENHANCED_RE.match(e) else parse_enhanced_code(e).klass
            if klass != self.code // 100:
                raise ReplyError(key="reply_class_mismatch", enhanced=self.enhanced,
                                 code=self.code)
        if not self.lines:
            raise ReplyError(key="reply_no_lines")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ReplyError(key="reply_line_break")

    @classmethod
    def make(cls, code: int, enhanced: str | None, text: str = "") -> Reply:
        """Build a reply whose text may span several lines (split on newlines)."""
        return cls(code, enhanced, tuple(text.split("\n")))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def reply_class(self) -> ReplyClass:
        return ReplyClass(self.code // 100)

    @property
    def outcome(self) -> str:
        """`success`, `intermediate`, `transient` or `permanent`."""
        return self.reply_class.outcome

    @property
    def is_success(self) -> bool:
        return self.code < 300

    @property
    def is_intermediate(self) -> bool:
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    @property
    def enhanced_code(self) -> EnhancedCode | None:
        return None if self.enhanced is None else parse_enhanced_code(self.enhanced)

    @property
    def subject(self) -> Subject | None:
        """The enhanced code's subject (addressing, mailbox, ...), when there is one."""
        e = self.enhanced_code
        return None if e is None else e.subject_kind

    def to_bytes(self, enhanced: bool = True) -> bytes:
        """The reply as sent on the wire, CRLF after every line.

        `enhanced=False` leaves the enhanced code out, for sessions that did not see
        ENHANCEDSTATUSCODES advertised (a HELO session).
        """
        prefix = self.enhanced if enhanced and self.enhanced else ""
        last = len(self.lines) - 1
        out = []
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            if prefix:
                body = f"{prefix} {line}" if line else prefix
            else:
                body = line
            out.append(f"{self.code}{sep}{body}\r\n" if body or sep == "-" else f"{self.code}\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        head = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        return (head + " / ".join(self.lines)).rstrip()


def parse_reply_line(line: str) -> tuple[int, bool, str]:
    """Split one reply line into (code, is_last, text), or raise ReplyError.

    RFC 5321 section 4.2: the code, then a space (last line) or a hyphen
    (continuation), then text; a last line may be the bare code.
    """
    if len(line) < 3:
        raise ReplyError(key="line_short", text=line)
    head = line[:3]
    if not head.isdigit():
        raise ReplyError(key="line_no_code", text=line)
    # The usual code at once; parse_basic_code names what is wrong with any other.
    code = (int(head) if head.isascii() and "2" <= head[0] <= "5"
            else parse_basic_code(head, strict=False))
    if len(line) == 3:
        return code, True, ""
    sep = line[3]
    if sep not in " -":
        raise ReplyError(key="line_separator", text=line)
    return code, sep == " ", line[4:]


def parse_reply(data: str | bytes) -> Reply:
    """Parse a whole reply, single- or multi-line, as a server sends it.

    Lines may end in CRLF or LF. Every line must carry the same code, every line but
    the last a hyphen, the last a space. An enhanced code is recognised when the first
    line's text starts with one whose class equals the reply's first digit; it is
    removed from every line that repeats it (RFC 2034 puts it on each line).
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReplyError(key="reply_not_utf8") from exc
    text = data.replace("\r\n", "\n")
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ReplyError(key="reply_empty")
    if "\r" in text:
        raise ReplyError(key="reply_bare_cr")
    raw = text.split("\n")
    lines: list[tuple[int, str]] = []
    for i, line in enumerate(raw):
        c, last, body = parse_reply_line(line)
        if last != (i == len(raw) - 1):
            if last:
                raise ReplyError(key="reply_ends_early", line=i + 1)
            raise ReplyError(key="reply_continues")
        lines.append((c, body))
    return reply_from_lines(lines)


def reply_from_lines(lines: Sequence[tuple[int, str]]) -> Reply:
    """The reply whose lines, parsed by `parse_reply_line`, are (code, text) in order,
    every one but the last a continuation: the part of `parse_reply` after the split,
    for a reader that has parsed each line as it came (`smtp.framing.ReplyReader`)."""
    code = lines[0][0]
    bodies: list[str] = []
    for c, body in lines:
        if c != code:
            raise ReplyError(key="reply_mixed_codes", a=code, b=c)
        if "\r" in body:
            raise ReplyError(key="reply_bare_cr")
        bodies.append(body)
    enhanced: str | None = None
    m = _ENHANCED_PREFIX_RE.match(bodies[0])
    if m and int(m.group(1)) == code // 100:
        enhanced = f"{int(m.group(1))}.{int(m.group(2))}.{int(m.group(3))}"
        bodies = [_strip_enhanced(b, m.group(0).rstrip(" ")) for b in bodies]
    return Reply(code, enhanced, tuple(bodies))


def _strip_enhanced(body: str, token: str) -> str:
    if body == token:
        return ""
    if body.startswith(token + " "):
        return body[len(token) + 1 :]
    return body
