"""Bounces without a delivery-status part: the text written for people.

qmail, Exim, Postfix without DSN, Sendmail's text, Gmail, Yahoo, Exchange's NDR text,
and the many services that copy one of them all write the same shape: an intro, then
per failed recipient its address on a line of its own (or leading a line), then the
remote server's reply; then the returned message. `scan` finds the recipient lines,
cuts the text into one block per recipient and reads the reply in each block with
`paste.read_paste`. Every pattern is linear and bounded; the text scanned is bounded.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from mailgate.codes.paste import Pasted, read_paste

__all__ = ["ADDRESS", "TextRecipient", "human_text", "scan", "transcript_reply"]

MAX_SCAN = 64 * 1024  # characters of the text for people scanned
MAX_BLOCK = 6 * 1024  # characters of one recipient's block read for its reply
MAX_RECIPIENTS = 500

ADDRESS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,64}@[A-Za-z0-9][A-Za-z0-9.\-]{0,252}[A-Za-z0-9]"
# Lines that name a failed recipient, each capturing the address.
_LEADS = [
    # the address alone on its line, maybe in <> or quotes, maybe a bullet before it and a
    # colon after it (qmail, Exim, Gmail, GMX)
    re.compile(rf"^[ \t]{{0,16}}(?:[*\-+\u2022][ \t]{{1,4}})?(?:\"[^\"\n]{{0,80}}\"[ \t]{{0,4}})?"
               rf"[\"<]{{0,2}}(?:mailto:)?({ADDRESS})[\">]{{0,2}}[ \t]{{0,4}}:?[ \t]{{0,8}}$",
               re.MULTILINE),
    # Postfix's text, qmail on one line: <addr> (expanded from <x>): reason
    re.compile(rf"^[ \t]{{0,16}}<({ADDRESS})>[ \t]{{0,4}}(?:\(expanded from [^)\n]{{0,300}}\))?"
               r"[ \t]{0,4}[:.]", re.MULTILINE),
    # Exchange: Name<mailto:addr>
    re.compile(rf"^[^\n<]{{0,120}}<mailto:({ADDRESS})>", re.MULTILINE),
    # a short label, then the address to the end of the line: Recipient: addr,
    # Delivery failed: addr, User's mailbox is full: <addr> (not a sender's label)
    re.compile(rf"^[ \t]{{0,16}}(?!(?:MAIL FROM|From|Sender|Reply-To|Return-Path|Envelope-From|"
               rf"Sent by|Cc|Bcc|In|Out|Message-ID|In-Reply-To|References|Delivered-To|"
               rf"X-[A-Za-z\-]{{1,40}})\b)[A-Za-z][A-Za-z'/ \-]{{0,40}}:[ \t]{{0,8}}"
               rf"(?:[^<\n]{{0,80}}<)?({ADDRESS})>?[ \t.]{{0,4}}$",
               re.MULTILINE | re.IGNORECASE),
    # the address then its reason on one line: addr: 550 ..., addr (reason), addr [reason]
    re.compile(rf"^[ \t]{{0,16}}[\"<]{{0,2}}({ADDRESS})[\">]{{0,2}}[ \t]{{0,4}}"
               r"(?::|\(|\[|\.\.\.|-{1,2}|on )[ \t]{0,4}(?=\S)", re.MULTILINE),
    # Sendmail's transcript: 554 <addr>... reason; Zoho: addr Invalid Address, ...
    re.compile(rf"^[245][0-9]{{2}}[ \-]<({ADDRESS})>\.\.\.", re.MULTILINE),
    re.compile(rf"^({ADDRESS})[ \t]{{1,4}}(?=[A-Z][a-z])", re.MULTILINE),
]
# Weaker: an address a sentence sends to (used when no line names one).
_SENT_TO = re.compile(rf"(?:RCPT TO:?|to|for|recipient|address)[ \t]{{0,4}}<({ADDRESS})>|"
                      rf"(?:to|for|recipient|address)[ \t]{{1,4}}({ADDRESS})\b",
                      re.IGNORECASE)
# Where the returned message starts: nothing after it is about the failure.
_ORIGINAL = re.compile(
    r"^[ \t]{0,8}(?:-{2,80}|={2,80}|_{2,80}|\*{2,80})?[ \t]{0,4}(?:"
    r"Below this line is a copy of the message|This is a copy of (?:the|your) message|"
    r"Original message(?! was)|The header of the original message|"
    r"(?:Your )?(?:original )?message (?:headers )?follows|Returned message|"
    r"Message Header Follows|Undelivered Message Headers|Original message headers|"
    r"Headers of the original message|Forwarded message|Text of the original message|"
    r"Unsent message below|Original Message Headers|Header of the original message)|"
    r"^Content-Type: message/rfc822|^(?:Return-Path|Received|DKIM-Signature): ",
    re.MULTILINE | re.IGNORECASE)
_HOST_PATTERNS = [
    re.compile(r"connect to ([A-Za-z0-9][A-Za-z0-9.\-]{0,252})\[[0-9A-Fa-f:.]{2,45}\]"),
    re.compile(r"while talking to ([A-Za-z0-9][A-Za-z0-9.\-]{0,252})"),
    re.compile(r"remote host ([A-Za-z0-9][A-Za-z0-9.\-:]{0,252}) said", re.IGNORECASE),
    re.compile(r"\bby ([A-Za-z0-9][A-Za-z0-9.\-]{0,252}[A-Za-z0-9])\.? ?\[[0-9A-Fa-f:.]{2,45}\]"),
    re.compile(r"Generating server: ([A-Za-z0-9][A-Za-z0-9.\-]{0,252})"),
    re.compile(r"Remote Server(?: at)? ([A-Za-z0-9][A-Za-z0-9.\-]{0,252}[A-Za-z0-9])"),
    re.compile(r"\bhost ([A-Za-z0-9][A-Za-z0-9.\-]{0,252}[A-Za-z0-9])\.? ?\[[0-9A-Fa-f:.]{2,45}\]"),
]
_RCPT_FAILED = re.compile(r"need rcpt|no valid recipients|valid rcpt command must precede|"
                          r"all rcpt commands were rejected", re.IGNORECASE)
_TRANSCRIPT_CMD = re.compile(r"^>>> ([A-Za-z]{4})", re.MULTILINE)
_SKIP = re.compile(r"^(?:postmaster|mailer-daemon|mailer_daemon|abuse|noreply|no-reply)@",
                   re.IGNORECASE)


@dataclass
class TextRecipient:
    address: str
    block: str  # the text about this recipient
    pasted: Pasted | None  # the reply found in it, if any
    remote_mta: str | None
    command: str | None
    before: str = ""  # the paragraph before the address (Lotus Notes writes the reason first)


def human_text(texts: list[str]) -> str:
    """The text for people: the first plain part, else the first HTML part as text."""
    from mailgate.codes.bounce.mime import html_to_text

    plain = [t for t in texts if not t.startswith("\x00html\x00")]
    if plain:
        text = plain[0]
        # Some bounces put the notice in a second part (an empty or legal first one).
        if len(text.strip()) < 40 and len(plain) > 1:
            text = "\n".join(plain[:3])
    elif texts:
        text = html_to_text(texts[0][6:])
    else:
        return ""
    return text[:MAX_SCAN].replace("\r\n", "\n").replace("\r", "\n")


def cut_original(text: str) -> str:
    """The text before the returned message (at least its first lines)."""
    for m in _ORIGINAL.finditer(text):
        if m.start() > 40:
            return text[:m.start()]
    return text


def remote_host(text: str) -> str | None:
    for rx in _HOST_PATTERNS:
        m = rx.search(text)
        if m:
            host = m.group(1).rstrip(".").lower()
            if "." in host or ":" in host:
                return host
    return None


def scan(text: str, exclude: set[str], hint: list[str],
         weak_exclude: frozenset[str] = frozenset(),
         trust_hint: bool = False) -> list[TextRecipient]:
    """The recipients the text reports, each with its block and reply.

    `exclude` are addresses that are not recipients (the bounce's own From);
    `weak_exclude` are not taken from a sentence or a guess (the bounce's To: the
    sender, who is a recipient only when a line names it as one);
    `hint` are recipients known from elsewhere (X-Failed-Recipients, the original
    message's To), used when the text names none on a line of its own, and over the
    text's lines when `trust_hint` (they come from X-Failed-Recipients).
    """
    body = cut_original(text)
    found: dict[str, int] = {}
    for rx in _LEADS:
        for m in rx.finditer(body):
            addr = m.group(1).strip(".").lower()
            if addr in exclude or _SKIP.match(addr):
                continue
            line_start = body.rfind("\n", 0, m.start(1)) + 1
            if addr not in found or line_start < found[addr]:
                found[addr] = line_start
            if len(found) >= MAX_RECIPIENTS:
                break
    hinted = [h.lower() for h in hint if h and h.lower() not in exclude]
    if hinted and found and trust_hint and not set(found) & set(hinted):
        # The text's lines name others (the sender, a list): trust X-Failed-Recipients.
        found = {}
    if not found:
        for h in hinted:
            pos = body.lower().find(h)
            found.setdefault(h, body.rfind("\n", 0, pos) + 1 if pos >= 0 else -1)
    if not found:
        hinted = [h for h in _original_to(text, len(body)) if h not in weak_exclude]
        for h in hinted[:1]:
            pos = body.lower().find(h)
            found.setdefault(h, body.rfind("\n", 0, pos) + 1 if pos >= 0 else -1)
    if not found:
        for rx in (_SENT_TO, _ANY_ADDRESS):
            for m in rx.finditer(body):
                addr = next(g for g in m.groups() if g).strip(".").lower()
                if addr not in exclude and addr not in weak_exclude and not _SKIP.match(addr):
                    found.setdefault(addr, body.rfind("\n", 0, m.start()) + 1)
                    break
            if found:
                break
    placed = sorted((pos, addr) for addr, pos in found.items() if pos >= 0)
    unplaced = [addr for addr, pos in found.items() if pos < 0]
    blocks = []
    for i, (pos, addr) in enumerate(placed):
        end = placed[i + 1][0] if i + 1 < len(placed) else len(body)
        blocks.append((addr, body[pos:min(end, pos + MAX_BLOCK)]))
    replies = [_reply(block) for _, block in blocks]
    # One reply for all: only when no recipient's own block holds one (a shared reply
    # after the list of addresses, as Sendmail's transcript or Gmail's notice write it).
    shared = None
    if not any(replies):
        shared = _reply(body[:MAX_BLOCK * 2])
    whole = _Body(body)
    transcript = ">>> " in body
    out = [_recipient(addr, block, p or shared, whole, _before(body, pos),
                      _last_command(body, pos) if transcript else None)
           for ((addr, block), p), (pos, _) in zip(zip(blocks, replies, strict=True), placed,
                                                   strict=True)]
    if unplaced and shared is None and not any(replies):
        shared = _reply(body[:MAX_BLOCK * 2])
    out += [_recipient(addr, body[:MAX_BLOCK], shared, whole) for addr in unplaced]
    return out


_ANY_ADDRESS = re.compile(rf"({ADDRESS})")
_TO_LINE = re.compile(rf"^To:[ \t]{{0,8}}(?:[^<\n]{{0,120}}<)?({ADDRESS})",
                      re.MULTILINE | re.IGNORECASE)


def _original_to(text: str, start: int) -> list[str]:
    """The To of the returned message, when its header follows the notice as text."""
    m = _TO_LINE.search(text, start, start + 32 * 1024)
    return [m.group(1).lower()] if m else []


_CODE_NEAR = re.compile(r"(?<![\w.\-])[245][0-9]{2}(?=[ \-])|[245]\.[0-9]{1,3}\.[0-9]{1,3}")


def _has_code(s: str) -> bool:
    return _CODE_NEAR.search(s) is not None


_TRANSCRIPT_REPLY = re.compile(r"^<<< ([45][0-9]{2}[ \-][^\n]{0,1000})$", re.MULTILINE)
# Postfix's notice of an SMTP server error to the postmaster: " In:  DATA", " Out: 451 ..."
_SERVER_TRANSCRIPT = re.compile(r"^ ?Out: ([45][0-9]{2}[ \-][^\n]{0,1000})$", re.MULTILINE)
_SERVER_COMMAND = re.compile(r"^ ?In: {1,2}([A-Za-z]{4})", re.MULTILINE)


def transcript_reply(block: str, rx: re.Pattern[str] = _TRANSCRIPT_REPLY) -> str | None:
    """Sendmail's transcript: the first error reply the server sent (`<<< 550-...`),
    all its lines."""
    lines: list[str] = []
    expected = -1
    for m in rx.finditer(block):
        if lines and m.start() != expected:
            break
        lines.append(m.group(1))
        expected = m.end() + 1
        if m.group(1)[3] == " ":
            break
    return "\n".join(lines) or None


def _reply(block: str) -> Pasted | None:
    if not _has_code(block):
        return None
    if "<<< " in block:
        whole = transcript_reply(block)
        if whole is not None and whole[3] == "-":  # a multi-line reply: read it whole
            p = read_paste(whole)
            if not p.empty:
                return p
    if " Out: " in block[:MAX_BLOCK]:
        # Postfix's SMTP server transcript: the error it sent, not the 2xx before it,
        # with the command it answered.
        whole = transcript_reply(block, _SERVER_TRANSCRIPT)
        if whole is not None:
            before = block[:block.find(whole.split("\n", 1)[0])]
            commands = _SERVER_COMMAND.findall(before[-4000:])
            p = read_paste(whole)
            if not p.empty:
                if commands and p.command is None:
                    p = dataclasses.replace(p, command=commands[-1].upper())
                return p
    p = read_paste(block)
    return None if p.empty else p


class _Body:
    """What the whole text says, looked for once however many recipients ask."""

    def __init__(self, body: str) -> None:
        self.body = body
        self._host: str | bool | None = False
        self._command: str | bool | None = False

    @property
    def host(self) -> str | None:
        if self._host is False:
            self._host = remote_host(self.body)
        return self._host  # type: ignore[return-value]

    @property
    def command(self) -> str | None:
        if self._command is False:
            m = _TRANSCRIPT_CMD.search(self.body)
            self._command = m.group(1).upper() if m else None
        return self._command  # type: ignore[return-value]


def _before(body: str, pos: int) -> str:
    """The paragraph that ends where a recipient's line starts."""
    end = pos
    while end > 0 and body[end - 1] in "\n \t":  # the blank lines that end it
        end -= 1
        if pos - end > 40:
            break
    start = body.rfind("\n\n", max(0, end - 500), end)
    if start > 0 and body[:end].endswith(":"):
        # "The following recipients did not receive this message:": the reason is
        # the paragraph before that one.
        start = body.rfind("\n\n", max(0, end - 500), start)
    return body[start + 2 if start >= 0 else max(0, end - 500):end]


def _last_command(body: str, pos: int) -> str | None:
    """The last command of a Sendmail transcript written above a recipient's line
    (`>>> RCPT To:<u@d>`, `<<< 550 ...`, then `550 <u@d>... User unknown`)."""
    matches = list(_TRANSCRIPT_CMD.finditer(body, max(0, pos - 2000), pos))
    if not matches:
        return None
    last = matches[-1]
    # Only the server's reply (`<<<` lines) between the command and the recipient's
    # line: a line about another recipient or host ends that command's session.
    between = body[last.end():pos].split("\n")[1:]
    if any(line and not line.startswith("<<< ") for line in between):
        return None
    return last.group(1).upper()


def _recipient(addr: str, block: str, p: Pasted | None, body: _Body,
               before: str = "", above: str | None = None) -> TextRecipient:
    host = p.host if p is not None and p.host else None
    host = host or remote_host(block) or body.host
    command = p.command if p is not None else None
    if command is None and above is not None:
        command = above
    elif command is None:
        m = _TRANSCRIPT_CMD.search(block)
        command = m.group(1).upper() if m else body.command
    if command == "DATA" and _RCPT_FAILED.search(block):
        command = "RCPT"  # a pipelined RCPT's refusal, written under ">>> DATA"
    return TextRecipient(address=addr, block=block, pasted=p, remote_mta=host, command=command,
                         before=before)
