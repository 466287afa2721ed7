"""Bounces: delivery status notifications (RFC 3464) as bytes, from queue values.

No I/O: `make_dsn` takes the queued message and what happened to some of its
recipients, and returns one whole RFC 5322 message (CRLF line ends) for the engine to
enqueue with the null reverse-path `<>` to the original sender -- or None when no
notice is owed (a bounce is never bounced; NOTIFY asked for none).

The report is `multipart/report; report-type=delivery-status` (RFC 6522):

1. `text/plain; charset=utf-8`, quoted-printable: what happened, in plain words, with the
   knowledge base's explanation of each status code (English, plus the language asked
   for when it is another, such as Chinese for `zh`; the words are in
   codes/data/<lang>/notices.toml);
2. `message/delivery-status`: the machine-readable fields of RFC 3464;
3. the returned original: `message/rfc822` (whole) or `text/rfc822-headers` (headers),
   per RET, the kind of notice and a size cap.

A message that needed SMTPUTF8 gets the internationalised forms of RFC 6533 instead
(`message/global-delivery-status`, `message/global`, `message/global-headers`), with its
UTF-8 addresses as they are; the notice must then travel with SMTPUTF8 and 8BITMIME.
Otherwise everything mailgate writes is 7-bit; the returned original keeps its own bytes
(`Content-Transfer-Encoding: 8bit` when its body was 8-bit, so such a notice travels with
BODY=8BITMIME, as the original did). In short: enqueue the notice with the original's
`smtputf8` and `body_8bit` flags.

The report is written by hand rather than through `email.generator`, because the
returned original must keep its exact bytes and the generator re-folds and re-encodes
what it serialises; the tests parse every notice back with the `email` package.
"""

from __future__ import annotations

import binascii
import email.header
import email.parser
import email.policy
import email.utils
import hashlib
import re
import secrets
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from mailgate.codes import registry as reg
from mailgate.codes.explain import Explanation, explain_code
from mailgate.codes.registry import DataError
from mailgate.codes.reply import ReplyError
from mailgate.queue import Attempt, QueuedMessage, Recipient, RecipientState

__all__ = [
    "MAX_RETURN_SIZE",
    "DSNAction",
    "DSNKind",
    "DSNRecipient",
    "last_attempt",
    "make_dsn",
    "notify_wants",
    "null_mx_attempt",
    "recipient_from_attempt",
]

DSNAction = Literal["failed", "delayed", "delivered", "relayed", "expanded"]
DSNKind = Literal["failure", "delay", "success"]

MAX_RETURN_SIZE = 1 << 20  # originals above this come back as headers only

_ACTIONS: tuple[str, ...] = ("failed", "delayed", "delivered", "relayed", "expanded")
_ACTION_KIND: dict[str, DSNKind] = {
    "failed": "failure",
    "delayed": "delay",
    "delivered": "success",
    "relayed": "success",
    "expanded": "success",
}
# The NOTIFY keyword (RFC 3461 section 4.1) that asks for a notice of each kind.
_KIND_KEYWORD: dict[DSNKind, str] = {"failure": "FAILURE", "delay": "DELAY", "success": "SUCCESS"}
_OUTCOME_ACTION: dict[str, DSNAction] = {"delivered": "delivered", "deferred": "delayed"}
_SEVERITY: dict[DSNKind, int] = {"failure": 2, "delay": 1, "success": 0}

_STATUS_RE = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})\Z")
_NEWLINES = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r\n\r\n")
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
        if not _STATUS_RE.match(self.status):
            raise ValueError(
                f"{self.status!r} is not a DSN status: give an enhanced status code such "
                "as 5.1.1 (RFC 3463; class 2, 4 or 5)."
            )


# ---------------------------------------------------------------------------- helpers


def notify_wants(notify: Sequence[str] | None, action: str) -> bool:
    """Whether a recipient's NOTIFY asks for a notice about this action (RFC 3461 4.1).

    NEVER asks for none; a list asks for exactly its kinds (`relayed` and `expanded`
    are success notices); without NOTIFY, failures and delays are reported, never
    successes.
    """
    kind = _ACTION_KIND.get(action)
    if kind is None:
        raise ValueError(f"{action!r} is not a DSN action.")
    if notify is None or len(notify) == 0:
        return kind != "success"
    words = {w.strip().upper() for w in notify}
    if "NEVER" in words:
        return False
    return _KIND_KEYWORD[kind] in words


def _status_for(code: int | None, enhanced: str | None, action: str) -> str:
    """The Status field: the reply's enhanced code when it has a sound one, else the
    class of its basic code (2.0.0 / 4.0.0 / 5.0.0), else the class of the action."""
    if enhanced:
        m = _STATUS_RE.match(enhanced.strip())
        if m and (code is None or int(m.group(1)) == code // 100):
            return f"{int(m.group(1))}.{int(m.group(2))}.{int(m.group(3))}"
    if code is not None and code // 100 in (2, 4, 5):
        return f"{code // 100}.0.0"
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")


def _remote_mta(attempt: Attempt) -> str | None:
    """`mx1.example.org` from `mx1.example.org[192.0.2.1]:25`; None unless a server sent
    the reply (a local decision, a Maildir, or no host at all)."""
    if not attempt.remote:
        return None
    host = attempt.host.strip()
    if not host or host in ("maildir", "local"):
        return None
    if "[" in host:
        name, _, rest = host.partition("[")
        if name:
            return name.rstrip(".")
        literal = rest.partition("]")[0]
        return f"[{literal}]" if literal else None
    if host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.partition(":")[0]
    return host.rstrip(".") or None


def last_attempt(message: QueuedMessage, recipient: Recipient) -> Attempt | None:
    """The latest attempt recorded for a recipient (`Queue.show` returns them)."""
    found = [a for rid, a in message.attempts if rid == recipient.id]
    return max(found, key=lambda a: a.at) if found else None


def recipient_from_attempt(
    recipient: Recipient,
    attempt: Attempt | None = None,
    *,
    action: DSNAction | None = None,
    will_retry_until: float | None = None,
) -> DSNRecipient:
    """A DSNRecipient from the queue's recipient and its latest attempt.

    The action follows the attempt's outcome (delivered / deferred -> delayed / failed)
    or, without an attempt, the recipient's state; `action` overrides it (`relayed`,
    `expanded`). Status is the reply's enhanced code, or 2.0.0 / 4.0.0 / 5.0.0 from its
    basic code when it had none. Remote-MTA is named only when a remote server sent the
    reply.
    """
    if action is None:
        if attempt is not None:
            action = _OUTCOME_ACTION.get(attempt.outcome, "failed")
        elif recipient.state == RecipientState.DELIVERED:
            action = "delivered"
        elif recipient.state == RecipientState.FAILED:
            action = "failed"
        else:
            action = "delayed"
    assert action is not None
    if attempt is not None:
        status = _status_for(attempt.code, attempt.enhanced, action)
        remote = _remote_mta(attempt)
        at: float | None = attempt.at
    else:
        status = _status_for(recipient.last_code, recipient.last_enhanced, action)
        remote = None
        at = recipient.updated_at or None
    return DSNRecipient(
        address=recipient.address,
        orcpt=recipient.orcpt,
        action=action,
        status=status,
        remote_mta=remote,
        diagnostic=attempt,
        last_attempt=at,
        will_retry_until=will_retry_until if action == "delayed" else None,
        notify=recipient.notify,
    )


def null_mx_attempt(domain: str, now: float) -> Attempt:
    """The attempt recorded for a recipient whose domain publishes a null MX (RFC 7505):
    decided here, no connection made, `556 5.1.10`."""
    return Attempt(
        at=now,
        host="",
        code=556,
        enhanced="5.1.10",
        text=(
            f"Recipient address has null MX: {domain} publishes a null MX record "
            "(RFC 7505) and accepts no mail; no connection was attempted"
        ),
        outcome="failed",
        remote=False,
    )


# ------------------------------------------------------------------ encoding helpers


def _rfc5322_date(t: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(t, UTC))


def _printable(text: str, ascii_only: bool) -> str:
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


def _fold(name: str, value: str) -> list[str]:
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


def _qp(text: str) -> str:
    """Quoted-printable (RFC 2045 6.7) of UTF-8 text, lines joined by CRLF later."""
    data = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return data.decode("ascii")


def _split_original(content: bytes) -> tuple[bytes, bytes]:
    """(header block, whole message), both with CRLF line ends and a final CRLF."""
    data = _NEWLINES.sub(b"\r\n", content)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"\r\n"):
        return b"", data
    m = _HEADER_END.search(data)
    head = data if m is None else data[: m.start() + 2]
    return head, data


def _original_subject(head: bytes) -> str | None:
    try:
        parsed = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        subject = parsed.get("Subject")
    except Exception:  # the stdlib parser has raised on broken headers; this is a courtesy
        return None
    if subject is None:
        return None
    text = _printable(str(subject), ascii_only=False)
    return text if len(text) <= 200 else text[:199] + "…"


# ------------------------------------------------------------------------ the words

# The words are data: codes/data/<lang>/notices.toml, read through the registry; its
# `wrap` says whether the language's lines are wrapped at spaces.


def _words(lang: str) -> dict[str, str]:
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
        out.append((head + _printable(t, ascii_only)).rstrip())
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


def _human_part(
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
    w = _words(lang)
    lines: list[str] = []
    if w.get("heading"):
        lines += [w["heading"], ""]
    lines.append(w["greeting"].format(mta=_printable(reporting_mta, ascii_only=False)))
    lines.append("")
    lines += _wrap(w[f"intro_{kind}"], lang, "")
    lines.append("")
    queue_id = _printable(message.id, ascii_only=False)
    lines += _wrap(
        w["message_line"].format(id=queue_id, date=_rfc5322_date(message.received_at)),
        lang, "",
    )
    if subject:
        lines.append(w["subject_line"].format(subject=subject))
    lines.append("")
    for r in recipients:
        lines.append(f"<{_printable(r.address, ascii_only=False)}>")
        if r.action == "delayed" and r.will_retry_until is not None:
            what = w["delayed_until"].format(date=_rfc5322_date(r.will_retry_until))
        else:
            what = w[r.action]
        lines += _wrap(what, lang, "    ")
        if _is_null_mx(r):
            domain = _printable(r.address.rpartition("@")[2] or r.address, ascii_only=False)
            lines += _wrap(w["null_mx"].format(domain=domain), lang, "    ")
        d = r.diagnostic
        if d is not None:
            if d.remote and d.host:
                host = _printable(d.host, ascii_only=False)
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
            lines += _wrap(w["last_attempt"].format(date=_rfc5322_date(when)), lang, "    ")
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
        return f"{kind}; {_printable(address, ascii_only=True)}"
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
        return f"utf-8; {_printable(addr, ascii_only=not global_)}"
    if not addr.isascii() and not global_:
        return f"utf-8; {_utf8_addr(addr, unitext=False)}"
    return f"{kind}; {_printable(addr, ascii_only=not global_)}"


def _diagnostic_field(d: Attempt, global_: bool) -> str:
    """`smtp; 550 5.1.1 ...` for a reply a server sent; `X-mailgate; 556 5.1.10 ...` for
    a decision mailgate took (RFC 3464 2.3.6: the type says what kind of diagnostic it
    is, and a local decision is no SMTP reply). Multi-line replies keep each line's code,
    joined by spaces, as the wire had them."""
    kind = "smtp" if d.remote else "X-mailgate"
    text = " ".join(_reply_lines(d, ascii_only=not global_))
    return f"{kind}; {text}"


def _status_part(
    message: QueuedMessage,
    recipients: Sequence[DSNRecipient],
    reporting_mta: str,
    global_: bool,
) -> list[str]:
    lines: list[str] = []
    mta = reporting_mta if global_ or reporting_mta.isascii() else _idna(reporting_mta)
    lines += _fold("Reporting-MTA", f"dns; {mta}")
    lines += _fold("X-Mailgate-Queue-ID", _printable(message.id, ascii_only=True))
    if message.client_helo:
        peer = f" ([{message.client_address}])" if message.client_address else ""
        lines += _fold("Received-From-MTA",
                       _printable(f"dns; {message.client_helo}{peer}", not global_))
    if message.envid is not None:
        lines += _fold("Original-Envelope-Id", _xtext(message.envid))
    lines += _fold("Arrival-Date", _rfc5322_date(message.received_at))
    for r in recipients:
        lines.append("")
        if r.orcpt:
            lines += _fold("Original-Recipient", _orcpt_field(r.orcpt, global_))
        lines += _fold("Final-Recipient", _address_field("rfc822", r.address, global_))
        lines += _fold("Action", r.action)
        lines += _fold("Status", r.status)
        if r.remote_mta:
            lines += _fold("Remote-MTA", f"dns; {_printable(r.remote_mta, not global_)}")
        if r.diagnostic is not None:
            lines += _fold("Diagnostic-Code", _diagnostic_field(r.diagnostic, global_))
        when = r.last_attempt if r.last_attempt is not None else (
            r.diagnostic.at if r.diagnostic is not None else None
        )
        if when is not None:
            lines += _fold("Last-Attempt-Date", _rfc5322_date(when))
        if r.action == "delayed" and r.will_retry_until is not None:
            lines += _fold("Will-Retry-Until", _rfc5322_date(r.will_retry_until))
    return lines


def _idna(host: str) -> str:
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return _printable(host, ascii_only=True)


def _subject_field(kind: DSNKind, lang: str) -> list[str]:
    en = _words("en")[f"subject_{kind}"]
    if lang == "en":
        return [f"Subject: {en}"]
    text = f"{en} / {_words(lang)[f'subject_{kind}']}"
    encoded = email.header.Header(text, "utf-8", header_name="Subject").encode(linesep="\r\n")
    return f"Subject: {encoded}".split("\r\n")


def make_dsn(
    message: QueuedMessage,
    recipients: Sequence[DSNRecipient],
    *,
    reporting_mta: str,
    kind: DSNKind,
    now: float,
    lang: str = "en",
    max_return_size: int = MAX_RETURN_SIZE,
    message_id: str | None = None,
) -> bytes | None:
    """One delivery status notification for `message` about `recipients`, or None.

    None when no notice is owed: the original came from the null sender `<>` (a bounce
    is never bounced, RFC 5321 6.1), or no recipient's NOTIFY asks for a notice about
    what happened to it (each recipient is judged by its own action: failed needs
    FAILURE, delayed DELAY, delivered/relayed/expanded SUCCESS; without NOTIFY failures
    and delays are reported). Recipients NOTIFY excludes are left out of the report.

    `kind` names the event being reported; the subject and what is returned follow the
    most serious action left in the report (failure, then delay, then success), which
    is `kind` when the recipients match it. The original comes back whole for failures
    (unless RET=HDRS, or it is over `max_return_size` bytes) and as headers only for
    delays and successes.

    `lang` is one of the registry's languages (`codes.registry.languages()`): `en`, or
    another, and then the text part is English followed by that language (`zh`).
    `message_id` (without angle brackets) replaces the generated Message-ID.
    """
    languages = reg.languages()
    if lang not in languages:
        raise ValueError(
            f"{lang!r} is not a language for notices: use one of {', '.join(languages)}."
        )
    if kind not in _KIND_KEYWORD:
        raise ValueError(f"{kind!r} is not a kind of notice: use failure, delay or success.")
    sender = message.sender.strip()
    if sender in ("", "<>"):
        return None
    sender = sender.removeprefix("<").removesuffix(">")

    notify_by_address: dict[str, tuple[str, ...]] = {}
    for q in message.recipients:
        if q.notify is not None:
            notify_by_address.setdefault(q.address.lower(), q.notify)
    chosen: list[DSNRecipient] = []
    for r in recipients:
        notify = r.notify if r.notify is not None else notify_by_address.get(r.address.lower())
        if notify_wants(notify, r.action):
            chosen.append(r)
    if not chosen:
        return None

    # The subject and what comes back follow the most serious outcome reported, which is
    # `kind` whenever the recipients match it; a mismatch must not give a failure notice
    # the subject of a success report, or a delay notice whose only failure was dropped.
    kind = max({_ACTION_KIND[r.action] for r in chosen}, key=lambda k: _SEVERITY[k])

    global_ = (
        message.smtputf8
        or not sender.isascii()
        or any(not r.address.isascii() for r in chosen)
    )

    # What comes back of the original.
    head = whole = b""
    returned = "none"
    if message.content is not None:
        head, whole = _split_original(message.content)
        ret = (message.ret or "").strip().upper()
        if kind != "failure":
            returned = "headers"
        elif ret == "HDRS":
            returned = "hdrs_asked"
        elif len(whole) > max_return_size:
            returned = "too_big"
        else:
            returned = "full"
    size = len(message.content) if message.content is not None else message.size
    subject = _original_subject(head) if head else None

    # Part 1: for people.
    text_lines = _human_part("en", message, chosen, kind, reporting_mta, subject, returned,
                             size, max_return_size)
    content_language = "en"
    if lang != "en":
        text_lines += ["", ""]
        text_lines += _human_part(lang, message, chosen, kind, reporting_mta, subject,
                                  returned, size, max_return_size)
        content_language = f"en, {lang}"
    human = _qp("\n".join(text_lines) + "\n").replace("\n", "\r\n").encode("ascii")
    part1 = (
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n"
        f"Content-Language: {content_language}\r\n"
        "Content-Description: Notification\r\n"
        "\r\n"
    ).encode("ascii") + human

    # Part 2: for programs.
    status_lines = _status_part(message, chosen, reporting_mta, global_)
    status_type = "message/global-delivery-status" if global_ else "message/delivery-status"
    status_cte = "Content-Transfer-Encoding: 8bit\r\n" if global_ else ""
    part2 = (
        f"Content-Type: {status_type}\r\n{status_cte}"
        "Content-Description: Delivery report\r\n\r\n"
        + "\r\n".join(status_lines)
        + "\r\n"
    ).encode("utf-8")

    # Part 3: the original, or its headers.
    part3: bytes | None = None
    if returned != "none":
        if returned == "full":
            ctype = "message/global" if global_ else "message/rfc822"
            body = whole
            desc = "Undelivered message"
            cte = "" if body.isascii() else "Content-Transfer-Encoding: 8bit\r\n"
        else:
            body = head
            desc = "Message headers"
            if global_:
                ctype = "message/global-headers"
                cte = "" if body.isascii() else "Content-Transfer-Encoding: 8bit\r\n"
            else:
                ctype = "text/rfc822-headers"
                cte = ""
                if not body.isascii():  # 8-bit headers without SMTPUTF8: keep the part 7-bit
                    cte = "Content-Transfer-Encoding: quoted-printable\r\n"
                    body = binascii.b2a_qp(body.replace(b"\r\n", b"\n"), istext=True)
                    body = body.replace(b"\n", b"\r\n")
        part3 = f"Content-Type: {ctype}\r\n{cte}Content-Description: {desc}\r\n\r\n".encode(
            "ascii"
        ) + body

    parts = [p for p in (part1, part2, part3) if p is not None]

    if message_id is None:
        message_id = f"{int(now * 1000):x}.{secrets.token_hex(8)}@{_idna(reporting_mta)}"
    boundary = _boundary(message_id, parts)

    eight_bit = any(not p.isascii() for p in parts)
    mta = reporting_mta if global_ else _idna(reporting_mta)
    head_lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{sender}>",
        *_subject_field(kind, lang),
        f"Date: {_rfc5322_date(now)}",
        f"Message-ID: <{message_id}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
    ]
    if eight_bit:
        head_lines.append("Content-Transfer-Encoding: 8bit")
    out = bytearray("\r\n".join(head_lines).encode("utf-8"))
    out += b"\r\n\r\nThis is a MIME-formatted delivery status notification (RFC 3464).\r\n"
    for p in parts:
        out += b"\r\n--" + boundary.encode("ascii") + b"\r\n" + p
        if not p.endswith(b"\r\n"):
            out += b"\r\n"
    out += b"\r\n--" + boundary.encode("ascii") + b"--\r\n"
    return bytes(out)


def _boundary(seed: str, parts: Sequence[bytes]) -> str:
    """A boundary that occurs in no part (RFC 2046 5.1.1), stable for a given seed."""
    n = 0
    while True:
        digest = hashlib.sha256(f"{seed}/{n}".encode()).hexdigest()[:32]
        boundary = f"=_mailgate_{digest}"
        marker = b"--" + boundary.encode("ascii")
        if not any(marker in p for p in parts):
            return boundary
        n += 1
