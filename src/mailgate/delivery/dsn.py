"""The parts of a delivery status notification (RFC 3464), and the encoding they share.

`bounce.make_dsn` decides what a notice holds and assembles it; this module writes its
first two parts from `DSNRecipient` values: the text for people (`human_part`: what
happened, with the knowledge base's explanation of each status code, in the words of
codes/data/<lang>/notices.toml) and the machine-readable fields (`status_part`), plus
the field encodings both need (folding, RFC 6533 `\\x{HEX}`, xtext, quoted-printable).
No I/O.
"""

from __future__ import annotations

import binascii
import email.utils
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from mailgate.codes import registry as reg
from mailgate.codes.explain import Explanation, explain_code
from mailgate.codes.registry import DataError
from mailgate.codes.reply import ReplyError
from mailgate.queue import Attempt, QueuedMessage, domain_of

__all__ = [
    "STATUS_RE",
    "DSNAction",
    "DSNKind",
    "DSNRecipient",
    "fold",
    "human_part",
    "idna",
    "printable",
    "qp",
    "rfc5322_date",
    "status_part",
    "words",
]

DSNAction = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
DSNKind = Literal["failure", "delay", "success"]

_ACTIONS: tuple[str, ...] = ("failed", "delayed", "delivered", "relayed", "expanded")
STATUS_RE = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})\Z")
_SPACES = re.compile(r"[ \t]+")
_RFC_NUMBER = re.compile(r"RFC ([0-9])")

# Field lines are folded near 78 characters (RFC 5322 2.1.1 SHOULD) and never reach 998
# octets (MUST); a word too long for one line is split, which adds a space when unfolded.
_SOFT_LIMIT = 78
_HARD_LIMIT = 900


@dataclass(frozen=True, slots=True)
class DSNRecipient:
    """What a notice says about one recipient.

    `status` is the enhanced status code (`5.1.10`); `remote_mta` the host name of the
    server that was talking when the outcome was decided, None when no server was
    contacted; `diagnostic` the attempt whose reply is reported (`remote` True for a
    reply a server really sent, False for a decision mailgate took itself);
    `notify` the recipient's DSN NOTIFY (None: not given, the default applies; when
    None, `make_dsn` also looks for the NOTIFY of the message's recipient of the same
    address).
    """

    address: str
    orcpt: str | None
    action: DSNAction
    status: str
    remote_mta: str | None = None
    diagnostic: Attempt | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None
    notify: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(
                f"{self.action!r} is not a DSN action: use failed, delayed, delivered, "
                "relayed or expanded (RFC 3464 section 2.3.3)."
            )
        if not STATUS_RE.match(self.status):
            raise ValueError(
                f"{self.status!r} is not a DSN status: give an enhanced status code such "
                "as 5.1.1 (RFC 3463; class 2, 4 or 5)."
            )


# ------------------------------------------------------------------ encoding helpers


def rfc5322_date(t: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(t, UTC))


def printable(text: str, ascii_only: bool) -> str:
    """Text safe inside a field: controls (and, for 7-bit parts, anything not ASCII)
    written as RFC 6533 `\\x{HEX}`; runs of blanks made one space."""
    out = []
    for ch in text:
        if ch == "\t":
            out.append(" ")
        elif (ascii_only and ord(ch) > 0x7E) or not ch.isprintable():
            out.append(f"\\x{{{ord(ch):02X}}}")
        else:
            out.append(ch)
    return _SPACES.sub(" ", "".join(out)).strip()


def _utf8_addr(address: str, unitext: bool) -> str:
    """RFC 6533 utf-8-addr-xtext (7-bit) or utf-8-addr-unitext (UTF-8 kept): QCHARs as
    they are, everything else as `\\x{HEX}`."""
    out = []
    for ch in address:
        o = ord(ch)
        if (0x21 <= o <= 0x7E and ch not in "\\+=") or (unitext and o > 0x7F and ch.isprintable()):
            out.append(ch)
        else:
            out.append(f"\\x{{{o:02X}}}")
    return "".join(out)


def _xtext(value: str) -> str:
    """A printable-ASCII value as is; anything else encoded as RFC 3461 xtext `+XX`."""
    if all(0x21 <= ord(c) <= 0x7E for c in value):
        return value
    return "".join(
        c if 0x21 <= ord(c) <= 0x7E and c not in "+=" else
        "".join(f"+{b:02X}" for b in c.encode("utf-8"))
        for c in value
    )


def fold(name: str, value: str) -> list[str]:
    """`Name: value` folded at spaces into lines near 78 characters, never over 998
    octets. Folding only inserts CRLF before an existing space, so unfolding gives the
    value back; a single word longer than a line is split (unfolding adds a space)."""
    words = [w for w in value.split(" ") if w]
    lines: list[str] = []
    cur = f"{name}:"
    for word in words:
        piece = " " + word
        if len(cur) > len(name) + 1 and len((cur + piece).encode("utf-8")) > _SOFT_LIMIT:
            lines.append(cur)
            cur = ""
        while len((cur + piece).encode("utf-8")) > _HARD_LIMIT:
            room = _HARD_LIMIT - len(cur.encode("utf-8"))
            cut = _utf8_prefix(piece, room)
            if cut <= 1:  # the line so far leaves no room: start a fresh one
                lines.append(cur)
                cur = ""
                continue
            lines.append(cur + piece[:cut])
            cur = ""
            piece = " " + piece[cut:]
        cur += piece
    lines.append(cur)
    return lines


def _utf8_prefix(text: str, octets: int) -> int:
    """How many characters of `text` fit in `octets` bytes of UTF-8."""
    n = 0
    used = 0
    for ch in text:
        size = len(ch.encode("utf-8"))
        if used + size > octets:
            break
        used += size
        n += 1
    return n


def qp(text: str) -> str:
    """Quoted-printable (RFC 2045 6.7) of UTF-8 text, lines joined by CRLF later."""
    data = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return data.decode("ascii")


# ------------------------------------------------------------------------ the words

# The words are data: codes/data/<lang>/notices.toml, read through the registry; its
# `wrap` says whether the language's lines are wrapped at spaces.


def words(lang: str) -> dict[str, str]:
    return reg.words(lang, "notices")


def _wraps(lang: str) -> bool:
    return bool(reg.word_file(lang, "notices").get("wrap", True))


def _explanation(r: DSNRecipient, lang: str) -> Explanation | None:
    """The knowledge base on the recipient's status; for a generic X.0.0 status, on the
    reply's basic code instead, which says more."""
    code = r.status
    d = r.diagnostic
    if code.endswith(".0.0") and d is not None and d.code // 100 == int(code[0]):
        code = str(d.code)
    try:
        return explain_code(code, lang)
    except (ReplyError, DataError, LookupError):
        return None


def _reply_lines(d: Attempt, ascii_only: bool) -> list[str]:
    """The reply as the server sent it (or mailgate decided it), one string per line,
    each with its code as on the wire: `550-5.1.1 first`, `550 5.1.1 last`."""
    texts = d.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    last = len(texts) - 1
    out = []
    for i, t in enumerate(texts):
        head = f"{d.code:03d}{' ' if i == last else '-'}"
        if d.enhanced:
            head += d.enhanced + " "
        out.append((head + printable(t, ascii_only)).rstrip())
    return out


def _is_null_mx(r: DSNRecipient) -> bool:
    """A null-MX failure decided here (RFC 7505): X.1.10 and no server's reply."""
    return r.status.endswith(".1.10") and (r.diagnostic is None or not r.diagnostic.remote)


def _wrap(text: str, lang: str, indent: str) -> list[str]:
    """Wrapped at 76 columns (never inside "RFC 7505") when the language's notices.toml
    says `wrap = true` (English); Chinese has no spaces to wrap at, so it stays one line
    (quoted-printable keeps the encoded lines short)."""
    if not _wraps(lang):
        return [indent + text]
    text = _RFC_NUMBER.sub("RFC\u00a0\\1", text)
    lines = textwrap.wrap(text, 76, initial_indent=indent, subsequent_indent=indent,
                          break_long_words=False, break_on_hyphens=False)
    return [line.replace("\u00a0", " ") for line in lines] or [indent]


def human_part(
    lang: str,
    message: QueuedMessage,
    recipients: Sequence[DSNRecipient],
    kind: DSNKind,
    reporting_mta: str,
    subject: str | None,
    returned: str,
    size: int,
    cap: int,
) -> list[str]:
    w = words(lang)
    lines: list[str] = []
    if w.get("heading"):
        lines += [w["heading"], ""]
    lines.append(w["greeting"].format(mta=printable(reporting_mta, ascii_only=False)))
    lines.append("")
    lines += _wrap(w[f"intro_{kind}"], lang, "")
    lines.append("")
    queue_id = printable(message.id, ascii_only=False)
    lines += _wrap(
        w["message_line"].format(id=queue_id, date=rfc5322_date(message.received_at)),
        lang, "",
    )
    if subject:
        lines.append(w["subject_line"].format(subject=subject))
    lines.append("")
    for r in recipients:
        lines.append(f"<{printable(r.address, ascii_only=False)}>")
        if r.action == "delayed" and r.will_retry_until is not None:
            what = w["delayed_until"].format(date=rfc5322_date(r.will_retry_until))
        else:
            what = w[r.action]
        lines += _wrap(what, lang, "    ")
        if _is_null_mx(r):
            domain = printable(domain_of(r.address) or r.address, ascii_only=False)
            lines += _wrap(w["null_mx"].format(domain=domain), lang, "    ")
        d = r.diagnostic
        if d is not None:
            if d.remote and d.host:
                host = printable(d.host, ascii_only=False)
                lines += _wrap(w["remote_said"].format(host=host), lang, "    ")
            else:
                lines += _wrap(w["local_said"], lang, "    ")
            lines += ["        " + line for line in _reply_lines(d, ascii_only=False)]
        e = _explanation(r, lang)
        if e is not None:
            lines += _wrap(
                w["code_means"].format(code=e.code, title=e.title, summary=e.summary),
                lang, "    ",
            )
            if r.action in ("failed", "delayed") and e.fix:
                lines += _wrap(w["how_to_fix"].format(fix=e.fix), lang, "    ")
        when = r.last_attempt if r.last_attempt is not None else (d.at if d else None)
        if when is not None and r.action in ("failed", "delayed"):
            lines += _wrap(w["last_attempt"].format(date=rfc5322_date(when)), lang, "    ")
        lines.append("")
    note = {
        "full": w["returned_full"],
        "headers": w["returned_headers"],
        "hdrs_asked": w["returned_hdrs_asked"],
        "too_big": w["too_big"].format(size=size, cap=cap),
        "none": w["no_original"],
    }[returned]
    lines += _wrap(note, lang, "")
    lines += _wrap(w["machine"], lang, "")
    return lines


# ------------------------------------------------------------------------ the report


def _address_field(kind: str, address: str, global_: bool) -> str:
    """`rfc822; user@example.org`, or RFC 6533 `utf-8; ...` for a non-ASCII address."""
    if address.isascii():
        return f"{kind}; {printable(address, ascii_only=True)}"
    return f"utf-8; {_utf8_addr(address, unitext=global_)}"


def _orcpt_field(orcpt: str, global_: bool) -> str:
    kind, sep, addr = orcpt.partition(";")
    if not sep:  # a bare address: rfc822 is the only type an address alone can have
        kind, addr = "rfc822", orcpt
    kind = kind.strip().lower() or "rfc822"
    addr = addr.strip()
    if kind == "utf-8":
        # Stored as the client sent it: utf-8-addr-xtext, or unitext under SMTPUTF8.
        # A 7-bit report needs the xtext form: write what is not ASCII as \x{HEX}.
        if not global_:
            addr = "".join(c if ord(c) < 0x80 else f"\\x{{{ord(c):02X}}}" for c in addr)
        return f"utf-8; {printable(addr, ascii_only=not global_)}"
    if not addr.isascii() and not global_:
        return f"utf-8; {_utf8_addr(addr, unitext=False)}"
    return f"{kind}; {printable(addr, ascii_only=not global_)}"


def _diagnostic_field(d: Attempt, global_: bool) -> str:
    """`smtp; 550 5.1.1 ...` for a reply a server sent; `X-mailgate; 556 5.1.10 ...` for
    a decision mailgate took (RFC 3464 2.3.6: the type says what kind of diagnostic it
    is, and a local decision is no SMTP reply). Multi-line replies keep each line's code,
    joined by spaces, as the wire had them."""
    kind = "smtp" if d.remote else "X-mailgate"
    text = " ".join(_reply_lines(d, ascii_only=not global_))
    return f"{kind}; {text}"


def status_part(
    message: QueuedMessage,
    recipients: Sequence[DSNRecipient],
    reporting_mta: str,
    global_: bool,
) -> list[str]:
    lines: list[str] = []
    mta = reporting_mta if global_ or reporting_mta.isascii() else idna(reporting_mta)
    lines += fold("Reporting-MTA", f"dns; {mta}")
    lines += fold("X-Mailgate-Queue-ID", printable(message.id, ascii_only=True))
    if message.client_helo:
        peer = f" ([{message.client_address}])" if message.client_address else ""
        lines += fold("Received-From-MTA",
                       printable(f"dns; {message.client_helo}{peer}", not global_))
    if message.envid is not None:
        lines += fold("Original-Envelope-Id", _xtext(message.envid))
    lines += fold("Arrival-Date", rfc5322_date(message.received_at))
    for r in recipients:
        lines.append("")
        if r.orcpt:
            lines += fold("Original-Recipient", _orcpt_field(r.orcpt, global_))
        lines += fold("Final-Recipient", _address_field("rfc822", r.address, global_))
        lines += fold("Action", r.action)
        lines += fold("Status", r.status)
        if r.remote_mta:
            lines += fold("Remote-MTA", f"dns; {printable(r.remote_mta, not global_)}")
        if r.diagnostic is not None:
            lines += fold("Diagnostic-Code", _diagnostic_field(r.diagnostic, global_))
        when = r.last_attempt if r.last_attempt is not None else (
            r.diagnostic.at if r.diagnostic is not None else None
        )
        if when is not None:
            lines += fold("Last-Attempt-Date", rfc5322_date(when))
        if r.action == "delayed" and r.will_retry_until is not None:
            lines += fold("Will-Retry-Until", rfc5322_date(r.will_retry_until))
    return lines


def idna(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return printable(host, ascii_only=True)
