"""Read a whole bounce: who failed (or was delayed), with what reply, and why.

`read_bounce(data)` takes a message's bytes and gives a `Bounce`: what kind of message
it is (an RFC 3464 DSN, a bounce in text, a complaint report, an auto-reply, a success
notice, or no bounce at all), which program wrote it, and one `Recipient` per address
it reports: the action (failed, delayed, delivered, relayed, expanded; none for the
recipients of complaints and auto-replies), the enhanced status code, the remote reply,
the remote server, and the reason in Sisimai's names (`reasons.py`).

The reading is layered: `mime` parses the message with the standard library, `dsn`
reads delivery-status fields, `text` reads the text written for people (qmail, Exim,
Postfix without DSN, Gmail, Exchange, ...), `reasons` says why. Hostile input is
expected: every part is bounded in size and in time, and what cannot be read raises
`BounceError` with one sentence. Explanations in words are `explained.py`.
"""

from __future__ import annotations

import email.errors
import re
from dataclasses import dataclass

from mailgate.codes.bounce import reasons
from mailgate.codes.bounce.dsn import clean_address, parse_report, status_of
from mailgate.codes.bounce.mime import MAX_BOUNCE, BounceError, Mail, read_mail
from mailgate.codes.bounce.text import (
    ADDRESS,
    TextRecipient,
    human_text,
    remote_host,
    scan,
    transcript_reply,
)
from mailgate.codes.paste import read_paste

__all__ = ["ACTIONS", "MAX_BOUNCE", "Bounce", "BounceError", "Recipient", "read_bounce"]

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
MAX_REPLY = 1000  # characters of a remote reply kept

_ADDR = re.compile(ADDRESS)
_BOUNCE_FROM = re.compile(r"mailer[-_ ]?daemon|postmaster|mail delivery|"
                          r"delivery (?:subsystem|system|status)|mdaemon|mail administrator",
                          re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (?:status|failure|failed|notification|report|problem|"
    r"has failed)|failure notice|returned mail|mail delivery|returning message|could not be "
    r"delivered|non[- ]?delivery|delivery error|not delivered|nondeliverable|bounce|"
    r"warning: could not send|delayed mail|message delayed|mail system error|error sending|"
    r"failed mail|rejected|unable to deliver", re.IGNORECASE)
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic)?[ \-]?(?:reply|response|antwort|r\u00e9ponse)|auto:|"
    r"out of (?:the )?office|away|vacation|abwesen|on leave|absence|"
    r"\u81ea\u52d5\u5fdc\u7b54|\u81ea\u52a8\u56de\u590d)",
    re.IGNORECASE)
_DELAY = re.compile(
    r"\bdelayed\b|has not (?:yet )?been delivered|not yet been delivered|will (?:continue|keep) "
    r"(?:trying|to try)|will (?:be )?retr(?:y|ied)|still trying|delivery (?:status )?notification "
    r"\(delay\)|warning: could not send|temporar(?:y|ily) (?:failure|deferred|unable)|"
    r"delivery attempts will continue|\bdeferred\b", re.IGNORECASE)
_PERMANENT = re.compile(r"permanent|gave up|giving up|given up|could not be delivered|"
                        r"undeliverable|failed|fatal|cannot send message for [0-9]",
                        re.IGNORECASE)
# Who wrote a bounce, by the words its software always writes (lower case, literal:
# a substring test per marker costs less than a pattern per form).
_FORMS = [
    ("qmail", ("this is the qmail-send program",)),
    ("gmail", ("google tried to deliver", "<mailer-daemon@google")),
    ("exchange", ("microsoft exchange", "diagnostic information for administrators",
                  "remote server returned", "resolver.", "protection.outlook.com")),
    ("yahoo", ("sorry, we were unable to deliver your message", "yahoo")),
    ("exim", ("this message was created automatically by mail delivery software",
              "smtp error from remote mail server", "(exim ")),
    ("postfix", ("this is the mail system at host", "x-postfix", "(postfix)")),
    ("sendmail", ("transcript of session follows",
                  "the following addresses had permanent fatal errors")),
]
_QMAIL_CODE = re.compile(r"\(#[45]\.[0-9]{1,3}\.[0-9]{1,3}\)")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient a bounce reports."""

    address: str
    action: str | None  # one of ACTIONS; None for complaints and auto-replies
    status: str | None  # the enhanced status code
    reply: str | None  # the remote server's reply (or the reporting program's words)
    reason: str  # Sisimai's name for why (reasons.REASONS)
    remote_mta: str | None
    code: int | None = None  # the basic reply code, when a reply was found
    command: str | None = None  # the SMTP command the reply answered
    original_recipient: str | None = None
    diagnostic_type: str | None = None  # smtp, x-unix, ... (DSN's Diagnostic-Code type)
    status_from: str = "none"  # dsn | reply | none: where the status came from

    @property
    def failed(self) -> bool:
        return self.action in ("failed", "delayed")

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address, "action": self.action, "status": self.status,
            "reply": self.reply, "reason": self.reason, "remote_mta": self.remote_mta,
            "code": self.code, "command": self.command,
            "original_recipient": self.original_recipient,
            "diagnostic_type": self.diagnostic_type, "status_from": self.status_from,
        }


@dataclass(frozen=True, slots=True)
class Bounce:
    """What a message reports. `kind`: dsn, bounce (text), complaint (ARF), auto-reply,
    success (every recipient delivered), or none (not a report of any kind)."""

    kind: str
    form: str  # rfc3464, arf, rfc3834, qmail, exim, postfix, sendmail, gmail, exchange, ...
    subject: str
    reporting_mta: str | None
    recipients: tuple[Recipient, ...]
    feedback_type: str | None = None
    truncated: bool = False

    @property
    def failed(self) -> tuple[Recipient, ...]:
        return tuple(r for r in self.recipients if r.failed)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind, "form": self.form, "subject": self.subject,
            "reporting_mta": self.reporting_mta, "feedback_type": self.feedback_type,
            "truncated": self.truncated,
            "recipients": [r.to_json() for r in self.recipients],
        }


def _host(value: str) -> str | None:
    v = value.split(";", 1)[1] if ";" in value[:20] else value
    v = v.strip().strip("[]<> ").split()[0] if v.strip() else ""
    return v.rstrip(".").lower()[:255] or None


def _action(raw: str, status: str | None) -> str:
    word = raw.strip().lower().split(" ")[0].split("(")[0] if raw.strip() else ""
    if word in ACTIONS:
        return word
    if word in ("expired", "deleted", "undeliverable", "failure", "error", "bounced"):
        return "failed"
    if word in ("delay", "deferred", "retry", "retrying"):
        return "delayed"
    if word in ("deliverable", "success", "sent", "succeeded"):
        return "delivered"
    if status and status[0] == "4":
        return "delayed"
    if status and status[0] == "2":
        return "delivered"
    return "failed"


_LEADING_REPLY = re.compile(r"([245][0-9]{2})(?:[ \-]{1,3}#?([245])\.([0-9]{1,3})\.([0-9]{1,3})"
                            r"(?![0-9]|\.[0-9]))?(?=[ \-]|$)")


_CONTINUED = re.compile(r"[245][0-9]{2}-")
_IN_REPLY_TO = re.compile(r"in reply to ([A-Za-z]{4}|end of data)\b", re.IGNORECASE)
_AFTER = re.compile(r"after (RCPT|MAIL|DATA|end of data|EHLO|HELO|initial connection|"
                    r"pipelined)\b|\b(RCPT|MAIL) (?:TO|FROM) (?:command|response)",
                    re.IGNORECASE)


def command_of(raw: str | None) -> str | None:
    """A command as the bounce names it -> RCPT, MAIL, DATA, EHLO, HELO, CONNECT, ..."""
    if not raw:
        return None
    w = raw.strip().upper()
    if w.startswith(("END", "DATA", "BDAT")):
        return "DATA"
    if w.startswith(("INITIAL", "CONNECT", "GREETING")):
        return "CONNECT"
    return w.split()[0][:4] if w.split() else None


_CODE_THEN_ENHANCED = re.compile(r"(?<![0-9.])[245][0-9]{2}[ \-]{1,2}['\"]?([245])\.([0-9]{1,3})\."
                                 r"([0-9]{1,3})(?![0-9]|\.[0-9])")


def _command_near(body: str, address: str) -> str | None:
    """The command a reply answered, as the text for people says it near the address
    ("in reply to RCPT TO command", "after end of data", Sendmail's `>>> RCPT`)."""
    at = body.lower().find(address)
    if at < 0:
        return None
    window = body[at:at + 1500]
    c = _IN_REPLY_TO.search(window) or _AFTER.search(window)
    if c:
        return command_of(next((g for g in c.groups() if g), None))
    m = _TRANSCRIPT.search(window)
    if m is None:
        return None
    command = command_of(m.group(1))
    return "RCPT" if command == "DATA" and _RCPT_FAILED.search(window) else command


_TRANSCRIPT = re.compile(r"^>>> ([A-Za-z]{4})", re.MULTILINE)
_RCPT_FAILED = re.compile(r"need rcpt|no valid recipients|valid rcpt command must precede|"
                          r"all rcpt commands were rejected", re.IGNORECASE)


def _reply_of(diag: str) -> tuple[str | None, str | None, int | None, str | None, str | None]:
    """A Diagnostic-Code value -> (type, reply text, code, enhanced, command)."""
    dtype = None
    text = diag
    m = re.match(r"\s{0,4}([A-Za-z][A-Za-z0-9\-]{0,20})\s{0,4};\s{0,8}", diag)
    if m:
        dtype, text = m.group(1).lower(), diag[m.end():]
    text = " ".join(text.split())[:MAX_REPLY]
    if not text:
        return dtype, None, None, None, None
    m = _LEADING_REPLY.match(text)
    if m:  # the reply as the field begins: its code and enhanced code, as written
        enhanced = ".".join(str(int(g)) for g in m.groups()[1:4]) if m.group(2) else None
        c = _IN_REPLY_TO.search(text) or _AFTER.search(text)
        command = command_of(next((g for g in c.groups() if g), None)) if c else None
        return dtype, text, int(m.group(1)), enhanced, command
    p = read_paste(text)
    enhanced = p.enhanced
    if enhanced is None:  # 5.1.0 - Unknown address error 550-'5.7.1 ...' (Amazon SES)
        m2 = _CODE_THEN_ENHANCED.search(text)
        enhanced = ".".join(str(int(g)) for g in m2.groups()) if m2 else None
    return dtype, text, p.code, enhanced, command_of(p.command)


def _from_dsn(mail: Mail, text_body: str) -> list[Recipient]:
    fields = []
    for report in mail.reports:
        fields.extend(parse_report(report))
    scanned: dict[str, TextRecipient] | None = None
    out: list[Recipient] = []
    for f in fields[:500]:
        d = f.fields
        address = clean_address(d.get("final-recipient") or d.get("original-recipient")
                                or d.get("x-actual-recipient") or "")
        original = clean_address(d.get("original-recipient", "")) or None
        if ("@" not in address or address.startswith("@")) and original and "@" in original \
                and not original.startswith("@"):
            address = original  # Final-Recipient a path or a bare domain: the original
        elif "@" not in address or address.startswith("@"):
            if scanned is None:
                scanned = {r.address: r for r in scan(text_body, set(), [])}
            address = next(iter(scanned), address)
        if not address:
            continue
        status = status_of(d.get("status", ""))
        dtype, reply, code, enhanced, command = _reply_of(d.get("diagnostic-code", ""))
        remote = _host(d["remote-mta"]) if d.get("remote-mta") else None
        t: TextRecipient | None = None
        # A multi-line reply of which the DSN kept only the first line (`550-5.7.1 ...`):
        # the text for people may hold it whole.
        cut = bool(reply and _CONTINUED.match(reply))
        if command is None and reply is not None and code is not None and not cut:
            command = _command_near(text_body, address)  # cheaper than reading the text
        elif reply is None or code is None or command is None or cut:
            if scanned is None:
                scanned = {r.address: r for r in scan(text_body, set(), [address])}
            t = scanned.get(address)
            if t is not None and command is None:
                command = command_of(t.command)
                if command is None:
                    c = _IN_REPLY_TO.search(t.block) or _AFTER.search(t.block)
                    command = command_of(next((g for g in c.groups() if g), None)) if c else None
        whole = t.pasted if t is not None else None
        if cut and (whole is None or whole.code != code) and reply:
            # Sendmail's transcript holds the whole reply (`<<< 550-5.7.1 ...` lines)
            # even where the address is not written near it.
            lines = transcript_reply(text_body)
            if lines and " ".join(lines.split())[:40] == reply[:40]:
                whole = read_paste(lines)
        if cut and whole is not None and whole.code == code and \
                len(whole.text) > len(reply or "") - 10:
            plus = f"{whole.enhanced} " if whole.enhanced else ""
            reply = f"{code} {plus}{' '.join(whole.text.split())}"[:MAX_REPLY]
        if (reply is None or code is None) and t is not None and t.pasted is not None:
            p = t.pasted
            reply = reply or " ".join(p.text.split())[:MAX_REPLY] or None
            if p.code is not None and reply and str(p.code) not in reply[:4]:
                reply = f"{p.code} {reply}"
            code, enhanced = code or p.code, enhanced or p.enhanced
            command = command or command_of(p.command)
            remote = remote or t.remote_mta
        if reply is None and t is not None:  # no reply anywhere: the program's own words
            reply = _program_words(t.block, address, t.before)
        if remote is None and reply:
            remote = remote_host(reply)
        status_from = "dsn" if status else "none"
        # The remote server's own code names the cause more precisely than the
        # reporting server's summary (5.0.0, or 4.4.7 "gave up" over a 4.7.1): it wins
        # when it is of the same class.
        if enhanced and (status is None or (enhanced[0] == status[0] and enhanced != status
                                            and not enhanced.endswith(".0.0"))):
            status, status_from = enhanced, "reply"
        action = _action(d.get("action", ""), status)
        if command is None and d.get("x-postfix-smtp-command"):
            command = d["x-postfix-smtp-command"].split()[0].upper()
        reason = reasons.classify(status, reply or "", action, command, dtype, code,
                                  (remote, _domain(address)))
        if action in ("delivered", "relayed", "expanded"):
            reason = "delivered"
        out.append(Recipient(address=address, action=action, status=status, reply=reply,
                             reason=reason, remote_mta=remote, code=code, command=command,
                             original_recipient=original if original != address else None,
                             diagnostic_type=dtype, status_from=status_from))
    return out


def _domain(address: str) -> str | None:
    return address.rsplit("@", 1)[1] if "@" in address else None


def _addresses(value: str) -> list[str]:
    return [m.group(0).lower() for m in _ADDR.finditer(value or "")]


def _original_to(mail: Mail) -> list[str]:
    for block in mail.original:
        m = re.search(r"^To:[ \t]{0,8}(.{0,400})", block, re.MULTILINE | re.IGNORECASE)
        if m:
            return _addresses(m.group(1))[:50]
    return []


def _from_text(mail: Mail, body: str, delayed: bool) -> list[Recipient]:
    exclude = set(_addresses(mail.header("from")))
    subject = mail.header("subject")[:300]
    failed = _addresses(mail.header("x-failed-recipients"))
    hint = failed or _original_to(mail)
    out: list[Recipient] = []
    for t in scan(body, exclude, hint, frozenset(_addresses(mail.header("to"))),
                  trust_hint=bool(failed)):
        p = t.pasted
        reply = None
        status = None
        code = None
        if p is not None:
            reply = " ".join(p.text.split())[:MAX_REPLY] or None
            code = p.code
            if code is not None:
                reply = f"{code} {p.enhanced + ' ' if p.enhanced else ''}{reply or ''}".strip()
            status = p.enhanced or _enhanced_in(t.block)
        else:
            reply = _program_words(t.block, t.address, t.before)
            status = _enhanced_in(t.block)
        context = " ".join(t.block.split())[:reasons.MAX_TEXT]
        action = "delayed" if delayed or (code is not None and code < 500 and not status
                                          and not _PERMANENT.search(context)
                                          and not _PERMANENT.search(subject)) else "failed"
        if status and status[0] == "4" and not _PERMANENT.search(context):
            action = "delayed"
        command = command_of(t.command)
        if command is None:
            c = _AFTER.search(context)
            command = command_of(next((g for g in c.groups() if g), None)) if c else None
        # With a reply read, its words decide (the block may run on into lines about
        # other recipients); without one, the whole block is the program's words.
        words = f"{reply} {context[:300]}" if code is not None else f"{reply or ''} {context}"
        reason = reasons.classify(status, words, action, command, None, code,
                                  (t.remote_mta, _domain(t.address)))
        status_from = "reply" if status else "none"
        out.append(Recipient(address=t.address, action=action, status=status, reply=reply,
                             reason=reason, remote_mta=t.remote_mta, code=code,
                             command=command, status_from=status_from))
    return out


_ENHANCED = re.compile(r"(?<![0-9.])([245])\.([0-9]{1,3})\.([0-9]{1,3})(?![0-9]|\.[0-9])")


def _enhanced_in(block: str) -> str | None:
    """An enhanced code written on its own in a text bounce (`5.2.2 <u@d>... Mailbox
    Full`, `550: 5.1.1`), when no reply around it was read."""
    m = _ENHANCED.search(block[:4000])
    return ".".join(str(int(g)) for g in m.groups()) if m else None


def _program_words(block: str, address: str, before: str = "") -> str | None:
    """The reporting program's own words about a recipient (no SMTP reply found):
    its lines as far as the next blank line, the address taken out (`pipe to |prog
    u@d`); without any, the paragraph just before the address (Lotus Notes)."""
    para = block.split("\n\n", 1)[0]
    at = para.lower().find(address)
    if at >= 0:
        para = para[:at] + para[at + len(address):]
    words = " ".join(para.replace("<>", " ").strip(">:;,. \t\n").split())[:MAX_REPLY]
    if not words.strip("()[]<>:;,. "):
        # Sendmail names the address alone, then again in its transcript with the
        # words: "<u@d>... Deferred: Name server: d.: host name lookup failure".
        at = block.lower().find(f"<{address}>...", at + 1 if at >= 0 else 0)
        if at >= 0:
            para = block[at + len(address) + 5:].split("\n\n", 1)[0]
            words = " ".join(para.split())[:MAX_REPLY]
    if not words.strip("()[]<>:;,. ") and before.strip():
        words = " ".join(before.split())[:MAX_REPLY]
    return words or None


def _form(mail: Mail, body: str) -> str:
    sample = "\n".join([mail.header("from"), mail.header("x-mailer"),
                        mail.header("received"), body[:2500]]).lower()
    if _QMAIL_CODE.search(sample):
        return "qmail"
    for name, markers in _FORMS:
        if any(m in sample for m in markers):
            return name
    return "rfc3464" if mail.reports else "text"


def _complaint(mail: Mail) -> Bounce:
    fields: dict[str, str] = {}
    rcpt_to: list[str] = []
    for report in mail.feedback:
        for line in report.splitlines():
            k, _, v = line.partition(":")
            key = k.strip().lower()
            if key in ("original-rcpt-to", "removal-recipient"):
                rcpt_to += [a for a in _addresses(v) if a not in rcpt_to]
            elif v and key not in fields:
                fields[key] = v.strip()
    # The complained-about recipient; never the complaint's own To (the sender's
    # feedback address): with neither field nor returned header, none is known.
    addrs = rcpt_to or _original_to(mail)
    mta = fields.get("reporting-mta")
    recips = tuple(Recipient(address=a, action=None, status=None, reply=None,
                             reason="feedback", remote_mta=None) for a in addrs[:50])
    return Bounce(kind="complaint", form="arf", subject=mail.header("subject"),
                  reporting_mta=_host(mta) if mta else None, recipients=recips,
                  feedback_type=(fields.get("feedback-type") or "").lower() or None,
                  truncated=mail.truncated)


_COMPLAINT_SUBJECT = re.compile(r"complaint about message from|abuse report|"
                                r"feedback report|spam report", re.IGNORECASE)
_DSN_IN_TEXT = re.compile(r"^(?:Reporting-MTA|Final-Recipient|Original-Recipient)[ \t]{0,4}:",
                          re.MULTILINE | re.IGNORECASE)


def _reports_in_text(mail: Mail) -> None:
    """Delivery-status fields written into a text part (a DSN that lost its MIME)."""
    for text in mail.texts[:4]:
        m = _DSN_IN_TEXT.search(text)
        if m and re.search(r"^(?:Final|Original)-Recipient[ \t]{0,4}:", text[m.start():],
                           re.MULTILINE | re.IGNORECASE):
            mail.reports.append(text[m.start():])
            return


def _amazon_ses(body: str, mail: Mail) -> Bounce | None:
    """An Amazon SES notification (JSON, often through SNS): bounces, complaints and
    deliveries, as AWS documents them."""
    import json

    end = body.rfind("}")
    raw = body[body.find("{"):end + 1] if end > 0 else ""
    try:
        try:
            data = json.loads(raw) if raw else None
        except ValueError:  # Sendmail breaks lines over 990 characters with "!", LF, space
            data = json.loads(raw.replace("!\n ", ""))
        if isinstance(data, dict) and isinstance(data.get("Message"), str):
            data = json.loads(data["Message"])  # wrapped by SNS
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    kind = str(data.get("notificationType") or data.get("eventType") or "").lower()
    out: list[Recipient] = []
    if kind == "bounce" and isinstance(data.get("bounce"), dict):
        b = data["bounce"]
        for r in b.get("bouncedRecipients", [])[:500]:
            if not isinstance(r, dict) or not r.get("emailAddress"):
                continue
            dtype, reply, code, enhanced, command = _reply_of(str(r.get("diagnosticCode") or ""))
            status = status_of(str(r.get("status") or "")) or enhanced
            action = _action(str(r.get("action") or ""), status)
            address = clean_address(str(r["emailAddress"]))
            reason = reasons.classify(status, reply or "", action, command, dtype, code,
                                      (_domain(address),))
            out.append(Recipient(address=address, action=action,
                                 status=status, reply=reply, reason=reason,
                                 remote_mta=_host(str(b.get("reportingMTA") or "")) or None,
                                 code=code, command=command, diagnostic_type=dtype,
                                 status_from="dsn" if r.get("status") else "none"))
        return Bounce(kind="dsn", form="amazonses", subject=mail.header("subject"),
                      reporting_mta=None, recipients=tuple(out))
    if kind == "complaint" and isinstance(data.get("complaint"), dict):
        for r in data["complaint"].get("complainedRecipients", [])[:500]:
            if isinstance(r, dict) and r.get("emailAddress"):
                out.append(Recipient(address=clean_address(str(r["emailAddress"])),
                                     action=None, status=None, reply=None, reason="feedback",
                                     remote_mta=None))
        return Bounce(kind="complaint", form="amazonses", subject=mail.header("subject"),
                      reporting_mta=None, recipients=tuple(out),
                      feedback_type=str(data["complaint"].get("complaintFeedbackType") or "")
                      or None)
    if kind == "delivery" and isinstance(data.get("delivery"), dict):
        d = data["delivery"]
        reply = str(d.get("smtpResponse") or "") or None
        p = read_paste(reply) if reply else None
        for a in d.get("recipients", [])[:500]:
            out.append(Recipient(address=clean_address(str(a)), action="delivered",
                                 status=(p.enhanced if p else None) or "2.0.0", reply=reply,
                                 reason="delivered",
                                 remote_mta=_host(str(d.get("reportingMTA") or "")) or None,
                                 code=p.code if p else None, status_from="reply"))
        return Bounce(kind="success", form="amazonses", subject=mail.header("subject"),
                      reporting_mta=None, recipients=tuple(out))
    return None


def _is_auto_reply(mail: Mail) -> bool:
    h = mail.header
    auto = h("auto-submitted").lower().startswith("auto-replied")
    marked = bool(h("x-autoreply") or h("x-autorespond") or h("x-autoresponder")
                  or h("precedence").lower() == "auto_reply" or h("x-mail-autoreply"))
    subject = h("subject")
    return (auto or marked or bool(_AUTO_SUBJECT.match(subject))) and \
        not _BOUNCE_FROM.search(h("from")) and not _BOUNCE_SUBJECT.search(subject) \
        and not h("x-failed-recipients")


def _looks_like_bounce(mail: Mail, body: str) -> bool:
    h = mail.header
    if h("x-failed-recipients") or _BOUNCE_FROM.search(h("from")) or \
            _BOUNCE_SUBJECT.search(h("subject")):
        return True
    return bool(re.search(r"could not be delivered|undeliverable|delivery (?:has )?failed|"
                          r"permanent (?:error|failure)|following address(?:es)? failed|"
                          r"failed permanently|unable to deliver|not be delivered", body[:8000],
                          re.IGNORECASE))


def read_bounce(data: bytes) -> Bounce:
    """Read one message. BounceError when it cannot be read as mail at all.

    Hostile input must never escape as a traceback: what the readers below do not
    expect of broken mail (a charset that is no charset, a header the standard library
    refuses) is this one sentence too."""
    try:
        return _read_bounce(data)
    except BounceError:
        raise
    except (ValueError, LookupError, UnicodeError, IndexError, TypeError, RecursionError,
            email.errors.MessageError) as exc:
        raise BounceError(f"The message cannot be read ({type(exc).__name__}).",
                          key="unreadable") from None


def _read_bounce(data: bytes) -> Bounce:
    mail = read_mail(data)
    subject = " ".join(mail.header("subject").split())[:300]
    if mail.feedback or mail.report_type == "feedback-report" or (
            mail.original and _COMPLAINT_SUBJECT.search(subject) and not mail.reports):
        return _complaint(mail)
    body = human_text(mail.texts)
    if not mail.reports:
        _reports_in_text(mail)
    if not mail.reports and body.lstrip().startswith("{"):
        ses = _amazon_ses(body, mail)
        if ses is not None:
            return ses
    mta = None
    for report in mail.reports:
        m = re.search(r"^Reporting-MTA:[ \t]{0,8}(.{1,300})", report, re.MULTILINE | re.IGNORECASE)
        if m:
            mta = _host(m.group(1))
            break
    recips: list[Recipient] = _from_dsn(mail, body) if mail.reports else []
    kind = "dsn" if recips else "none"
    if not recips:
        if _is_auto_reply(mail):
            addrs = _addresses(mail.header("from"))[:1]
            r = tuple(Recipient(address=a, action=None, status=None, reply=None,
                                reason="vacation", remote_mta=None) for a in addrs)
            return Bounce(kind="auto-reply", form="rfc3834", subject=subject,
                          reporting_mta=None, recipients=r, truncated=mail.truncated)
        if _looks_like_bounce(mail, body):
            delayed = bool(_DELAY.search(subject) or (
                _DELAY.search(body[:3000]) and not _PERMANENT.search(body[:3000])
                and not _PERMANENT.search(subject)))
            recips = _from_text(mail, body, delayed)
            kind = "bounce" if recips else "none"
    if recips and all(r.action in ("delivered", "relayed", "expanded") for r in recips):
        kind = "success"
    if mta is None and kind == "bounce":
        mta = remote_host(mail.header("received")) or _host_of_from(mail)
    return Bounce(kind=kind, form=_form(mail, body) if kind != "none" else "none",
                  subject=subject, reporting_mta=mta, recipients=tuple(recips),
                  truncated=mail.truncated)


def _host_of_from(mail: Mail) -> str | None:
    addrs = _addresses(mail.header("from"))
    return addrs[0].split("@", 1)[1] if addrs else None
