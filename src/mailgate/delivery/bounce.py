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

This module decides what a notice holds and assembles it, with the third part; the
first two, and the field encodings, are written by `delivery/dsn.py`.

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
from collections.abc import Sequence

from mailgate.codes import registry as reg
from mailgate.delivery.dsn import (
    STATUS_RE,
    DSNAction,
    DSNKind,
    DSNRecipient,
    human_part,
    idna,
    printable,
    qp,
    rfc5322_date,
    status_part,
    words,
)
from mailgate.dns import NullMX
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


MAX_RETURN_SIZE = 1 << 20  # originals above this come back as headers only

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

_NEWLINES = re.compile(rb"\r\n|\r|\n")
_HEADER_END = re.compile(rb"\r\n\r\n")


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
        m = STATUS_RE.match(enhanced.strip())
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
    decided here, no connection made, `556 5.1.10`, as the outbound engine records it."""
    reply = NullMX(domain).undelivered()
    return Attempt(at=now, host="", code=reply.code, enhanced=reply.enhanced,
                   text=reply.text, outcome="failed", remote=False)




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
    text = printable(str(subject), ascii_only=False)
    return text if len(text) <= 200 else text[:199] + "…"




def _subject_field(kind: DSNKind, lang: str) -> list[str]:
    en = words("en")[f"subject_{kind}"]
    if lang == "en":
        return [f"Subject: {en}"]
    text = f"{en} / {words(lang)[f'subject_{kind}']}"
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
    text_lines = human_part("en", message, chosen, kind, reporting_mta, subject, returned,
                             size, max_return_size)
    content_language = "en"
    if lang != "en":
        text_lines += ["", ""]
        text_lines += human_part(lang, message, chosen, kind, reporting_mta, subject,
                                  returned, size, max_return_size)
        content_language = f"en, {lang}"
    human = qp("\n".join(text_lines) + "\n").replace("\n", "\r\n").encode("ascii")
    part1 = (
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n"
        f"Content-Language: {content_language}\r\n"
        "Content-Description: Notification\r\n"
        "\r\n"
    ).encode("ascii") + human

    # Part 2: for programs.
    status_lines = status_part(message, chosen, reporting_mta, global_)
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
        message_id = f"{int(now * 1000):x}.{secrets.token_hex(8)}@{idna(reporting_mta)}"
    boundary = _boundary(message_id, parts)

    eight_bit = any(not p.isascii() for p in parts)
    mta = reporting_mta if global_ else idna(reporting_mta)
    head_lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: <{sender}>",
        *_subject_field(kind, lang),
        f"Date: {rfc5322_date(now)}",
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
