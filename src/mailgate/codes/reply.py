"""SMTP replies as values: parse what a server sends, build what mailgate sends.

A reply is a basic code (RFC 5321 section 4.2), an optional enhanced status code
(RFC 3463, advertised with ENHANCEDSTATUSCODES, RFC 2034) and one or more lines of
text. The same `Reply` value is sent on the wire, logged, stored on a delivery attempt
and explained by the knowledge base.
"""

from __future__ import annotations

import enum
import re
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
]


class ReplyError(ValueError):
    """Input that is not a well-formed SMTP reply or code; the message says why."""


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
# RFC 3463 / RFC 2034: class "." 1*3digit "." 1*3digit
_ENHANCED_RE = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})\Z")
_ENHANCED_PREFIX_RE = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |\Z)")


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
        raise ReplyError(f"{text!r} is not an SMTP reply code: a reply code is three digits.")
    if len(s) != 3:
        raise ReplyError(f"{s} is not an SMTP reply code: a reply code has exactly three digits.")
    if not (_BASIC_RE if strict else _LOOSE_BASIC_RE).match(s):
        if s[0] not in "2345":
            raise ReplyError(
                f"{s} is not an SMTP reply code: the first digit must be 2, 3, 4 or 5."
            )
        raise ReplyError(f"{s} is not an SMTP reply code: the second digit must be 0 to 5.")
    return int(s)


def parse_enhanced_code(text: str) -> EnhancedCode:
    """Parse `class.subject.detail` (RFC 3463), naming what is wrong when it is not one."""
    s = text.strip()
    m = _ENHANCED_RE.match(s)
    if m is None:
        parts = s.split(".")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            raise ReplyError(
                f"{text!r} is not an enhanced status code: it must look like 5.1.10 "
                "(class.subject.detail)."
            )
        if parts[0] not in ("2", "4", "5"):
            raise ReplyError(
                f"{s} is not an enhanced status code: the class must be 2, 4 or 5."
            )
        raise ReplyError(
            f"{s} is not an enhanced status code: subject and detail have 1 to 3 digits each."
        )
    return EnhancedCode(int(m.group(1)), int(m.group(2)), int(m.group(3)))


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: `Reply(556, "5.1.10", ("Recipient address has null MX",))`."""

    code: int
    enhanced: str | None
    lines: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _LOOSE_BASIC_RE.match(str(self.code)):
            raise ReplyError(f"{self.code} is not an SMTP reply code.")
        if self.enhanced is not None:
            e = parse_enhanced_code(self.enhanced)
            if e.klass != self.code // 100:
                raise ReplyError(
                    f"enhanced code {self.enhanced} does not match reply {self.code}: "
                    "its class must equal the reply's first digit."
                )
        if not self.lines:
            raise ReplyError("a reply has at least one line of text (it may be empty).")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ReplyError("reply text lines may not contain CR or LF.")

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
        raise ReplyError(
            f"reply line {line!r} is too short: it must start with a three-digit code."
        )
    code = parse_basic_code(line[:3], strict=False) if line[:3].isdigit() else None
    if code is None:
        raise ReplyError(f"reply line {line!r} does not start with a three-digit reply code.")
    if len(line) == 3:
        return code, True, ""
    sep = line[3]
    if sep not in " -":
        raise ReplyError(
            f"reply line {line!r}: the code must be followed by a space or a hyphen."
        )
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
            raise ReplyError("reply is not valid UTF-8 text.") from exc
    text = data.replace("\r\n", "\n")
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ReplyError("empty reply: expected a three-digit code and text.")
    if "\r" in text:
        raise ReplyError("reply contains a bare carriage return.")
    raw = text.split("\n")
    code: int | None = None
    bodies: list[str] = []
    for i, line in enumerate(raw):
        c, last, body = parse_reply_line(line)
        if code is None:
            code = c
        elif c != code:
            raise ReplyError(f"reply mixes codes {code} and {c} in one reply.")
        if last != (i == len(raw) - 1):
            if last:
                raise ReplyError(
                    f"line {i + 1} of the reply ends it (code then space) but more lines follow."
                )
            raise ReplyError("the last line of the reply continues (code then hyphen).")
        bodies.append(body)
    assert code is not None
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
