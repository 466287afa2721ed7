"""Find the reply in what people paste: log lines, DSN fields, NDR text, web copies.

People rarely paste a clean reply. They paste a Postfix log line (`host mx[1.2.3.4]
said: 550 5.1.1 ... (in reply to RCPT TO command)`), an Exim one, a `Diagnostic-Code:`
or `Status:` field of a bounce, Exchange's `Remote Server returned '550 5.1.10 ...'`,
`#5.7.1` forms, a code written twice (`554 554 5.7.1`), one line of a multi-line reply
(`550-5.7.26 ...`), or a whole reply copied from a web page with its line breaks lost.
`read_paste` finds the parts (remote host and address, the command answered, the basic
code, the enhanced code, the text) and says where each was found.

Hostile input is expected: at most `MAX_PASTE` characters are read, every pattern is
linear (no nested repetition, every run bounded), and the reply text kept is bounded.
Nothing here knows any vendor; that is `vendors.py`.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass

from mailgate.codes.reply import Reply, ReplyError

__all__ = ["MAX_PASTE", "Found", "Pasted", "read_paste"]

MAX_PASTE = 64 * 1024  # characters read; the rest of a longer paste is ignored (noted)
MAX_TEXT = 4096  # characters of reply text kept
MAX_LINES = 64  # reply lines kept

# Where a reply starts: markers that the sender's software writes before it.
_POSTFIX_SAID = re.compile(
    r"\bhost\s{1,8}([A-Za-z0-9][A-Za-z0-9.\-]{0,253})\[([0-9A-Fa-f:.]{2,45})\]"
    r"(?::[0-9]{1,5})?\s{1,8}said:\s{0,8}"
)
_POSTFIX_SMTPD = re.compile(
    r"\breject:\s{1,8}([A-Z]{4})\s{1,8}from\s{1,8}([A-Za-z0-9][A-Za-z0-9.\-]{0,253})"
    r"\[([0-9A-Fa-f:.]{2,45})\](?::[0-9]{1,5})?:\s{0,8}"
)
_EXIM_AFTER = re.compile(
    r"SMTP error from remote mail server after\s{1,8}(?:pipelined\s{1,8})?"
    r"(RCPT TO|MAIL FROM|end of data|DATA|EHLO|HELO|STARTTLS|AUTH|BDAT|QUIT|RSET|"
    r"initial connection)\b",
    re.IGNORECASE,
)
_EXIM_HOST = re.compile(
    r"\b(?:H=|host\s{1,8})([A-Za-z0-9][A-Za-z0-9.\-]{0,253})\s{1,8}\[([0-9A-Fa-f:.]{2,45})\]"
    r"(?::[0-9]{1,5})?:\s{0,8}"
)
_DIAGNOSTIC = re.compile(
    r"^[ \t]{0,8}Diagnostic-Code:[ \t]{0,8}[A-Za-z0-9\-]{1,20}[ \t]{0,8};[ \t]{0,8}",
    re.IGNORECASE | re.MULTILINE,
)
_STATUS = re.compile(r"^[ \t]{0,8}Status:[ \t]{0,8}([245])\.([0-9]{1,3})\.([0-9]{1,3})\b",
                     re.IGNORECASE | re.MULTILINE)
_REMOTE_MTA = re.compile(r"^[ \t]{0,8}Remote-MTA:[ \t]{0,8}[A-Za-z]{1,10}[ \t]{0,8};[ \t]{0,8}"
                         r"([A-Za-z0-9][A-Za-z0-9.\-]{0,253})", re.IGNORECASE | re.MULTILINE)
_RECIPIENT = re.compile(r"^[ \t]{0,8}Final-Recipient:[ \t]{0,8}[A-Za-z0-9\-]{1,20}[ \t]{0,8};"
                        r"[ \t]{0,8}([^\s<>]{1,320})", re.IGNORECASE | re.MULTILINE)
_EXCHANGE = re.compile(r"Remote Server returned\s{0,8}'\s{0,8}", re.IGNORECASE)
_SMTP_SEMI = re.compile(r"\bsmtp;\s{0,8}", re.IGNORECASE)
_RESPONSE = re.compile(
    r"\b(?:The response (?:from the remote server )?was|The error that the other server "
    r"returned was|Server response|Remote server said|server replied):\s{0,8}",
    re.IGNORECASE,
)
_IN_REPLY_TO = re.compile(r"\(in\s{1,8}reply\s{1,8}to\s{1,8}([A-Za-z][A-Za-z ]{0,30}?)\s{1,8}"
                          r"command\)", re.IGNORECASE)
_HASH_ENHANCED = re.compile(r"(?<![\w.])#\s?([245])\.([0-9]{1,3})\.([0-9]{1,3})(?![\w.])")
# A basic code where a reply can start: not inside a word, a number, an address or a
# time; followed by a space, a hyphen or the end.
_CODE = re.compile(r"(?<![\w.\-\[/:=+@])([1-5][0-9]{2})(?=[ \-]|$)", re.MULTILINE)
_ENHANCED_AT = re.compile(r"#?([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=[\s;:,)\]>'\"]|$)")
_LINE_LEAD = re.compile(r"[ '\"<>]{0,8}")
_EXIM_TAIL = re.compile(r"[^\n]{0,400}?:\s{1,8}(?=[1-5][0-9]{2}[ \-])")
_LEAD = re.compile(r"[\s<#'\"]{0,8}")
_BARE_ENHANCED = re.compile(r"#?\s?([245])\.([0-9]{1,3})\.([0-9]{1,3})\Z")
_COMMANDS = {
    "rcpt to": "RCPT TO", "mail from": "MAIL FROM", "end of data": "end of DATA",
    "data": "DATA", "ehlo": "EHLO", "helo": "HELO", "starttls": "STARTTLS", "auth": "AUTH",
    "bdat": "BDAT", "quit": "QUIT", "rset": "RSET", "initial connection": "connect",
    "rcpt": "RCPT TO", "mail": "MAIL FROM", "connect": "connect",
}


@dataclass(frozen=True, slots=True)
class Found:
    """One part found in the paste, and where: line and column (1-based), and the
    form that showed it (`postfix`, `dsn-status`, `exchange`, ...)."""

    # host | client | ip | remote_mta | command | code | enhanced | text | status | recipient
    part: str
    value: str
    source: str
    line: int
    column: int

    def to_json(self) -> dict[str, object]:
        return {"part": self.part, "value": self.value, "source": self.source,
                "line": self.line, "column": self.column}


@dataclass(frozen=True, slots=True)
class Pasted:
    """What `read_paste` made of a paste. `reply` is None when no SMTP reply was found
    (a `Status:` field alone, or a code outside SMTP such as 101); `code` and
    `enhanced` are then what was found, if anything."""

    # reply | fragment | joined | postfix | postfix-smtpd | exim | dsn | exchange |
    # exchange-smtp | exchange-hash | response | text | status | code | unknown
    form: str
    reply: Reply | None
    code: int | None
    enhanced: str | None
    text: str
    host: str | None
    ip: str | None
    command: str | None
    found: tuple[Found, ...]
    # keys: truncated, doubled_code, fragment, joined, class_mismatch, status_used,
    # status_differs, no_reply (their words: data/<lang>/vendors/words.toml [notes])
    notes: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return self.code is None and self.enhanced is None

    def to_json(self) -> dict[str, object]:
        return {
            "form": self.form, "code": self.code, "enhanced": self.enhanced, "text": self.text,
            "host": self.host, "ip": self.ip, "command": self.command,
            "found": [f.to_json() for f in self.found], "notes": list(self.notes),
        }


class _Where:
    """Offsets in the paste -> (line, column)."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def __call__(self, pos: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.starts, pos) - 1
        return i + 1, pos - self.starts[i] + 1


def _normalise(text: str) -> tuple[str, bool]:
    cut = len(text) > MAX_PASTE
    text = text[:MAX_PASTE]
    # NFKC: full-width digits and letters become ASCII; it can lengthen text, so cut again.
    text = unicodedata.normalize("NFKC", text)[:MAX_PASTE]
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    # Zero-width and other format characters copied from web pages.
    text = re.sub("[\u200b-\u200f\u2060\ufeff]", "", text)
    return text, cut


def _command(raw: str) -> str:
    key = " ".join(raw.split()).lower()
    return _COMMANDS.get(key, " ".join(raw.split()))


@dataclass
class _Start:
    pos: int  # where the reply's code is
    end: int  # where its region ends
    source: str
    wrapped: bool  # lines of the region are one reply wrapped (join them), not reply lines


def _line_end(text: str, pos: int) -> int:
    n = text.find("\n", pos)
    return len(text) if n < 0 else n


def _first_code(text: str, pos: int, limit: int) -> re.Match[str] | None:
    """The code right at `pos` (after spaces, `<`, `#` or a quote), or None."""
    m = _LEAD.match(text, pos, limit)
    at = m.end() if m else pos
    return _CODE.match(text, at, limit)


def _end_of_field(text: str, pos: int) -> int:
    """The end of a header field starting on this line: folded lines (starting with
    white space) belong to it."""
    end = _line_end(text, pos)
    while end < len(text) and text[end + 1:end + 2] in (" ", "\t") and text[end + 1:end + 2]:
        end = _line_end(text, end + 1)
    return end


def _region_end(text: str, start: int, source: str) -> int:
    limit = min(len(text), start + MAX_TEXT * 2)
    if source in ("postfix", "postfix-smtpd", "exim", "response"):
        m = _IN_REPLY_TO.search(text, start, limit)
        if source == "postfix-smtpd":
            semi = text.find("; from=<", start, limit)
            if semi >= 0:
                return semi
        if m is not None:
            return m.start()
        # Postfix wraps its bounce text; a blank line ends the reply.
        blank = text.find("\n\n", start, limit)
        return blank if blank >= 0 and source == "postfix" else _line_end(text, start)
    if source == "dsn":
        return min(_end_of_field(text, start), limit)
    line_end = min(_line_end(text, start), limit)
    if source == "exchange":
        q = text.rfind("'", start, line_end)
        return q if q > start else line_end
    if source == "exchange-smtp":
        gt = text.rfind(">", start, line_end)
        hashes = text.find("##", start, line_end)
        if hashes >= 0:
            return hashes
        return gt if gt > start else line_end
    if source == "exchange-hash":
        hashes = text.find("##", start, line_end)
        return hashes if hashes >= 0 else line_end
    return _more_lines(text, start, line_end)


def _more_lines(text: str, start: int, end: int) -> int:
    """A reply written over several lines: while a line continues (`550-`), the next
    line that starts with the same code belongs to it."""
    code = text[start:start + 3]
    lines = 1
    while end < len(text) and lines < MAX_LINES:
        line_start = text.rfind("\n", 0, end) + 1
        lead = _LINE_LEAD.match(text, line_start)
        at = lead.end() if lead else line_start
        if text[at:at + 4] != code + "-":
            break
        nxt = _LINE_LEAD.match(text, end + 1)
        at = nxt.end() if nxt else end + 1
        if text[at:at + 3] != code or text[at + 3:at + 4] not in ("-", " ", "\n", ""):
            break
        end = _line_end(text, at)
        lines += 1
    return end


def _starts(text: str) -> tuple[list[_Start], list[Found], str | None, str | None, str | None]:
    """Reply starts that markers point at, best first; and the context they give."""
    where = _Where(text)
    found: list[Found] = []
    starts: list[_Start] = []
    host = ip = command = None

    def note(part: str, value: str, source: str, pos: int) -> None:
        line, col = where(pos)
        found.append(Found(part, value, source, line, col))

    for m in _POSTFIX_SAID.finditer(text):
        c = _first_code(text, m.end(), len(text))
        if c is None:
            continue
        host, ip = m.group(1), m.group(2)
        note("host", host, "postfix", m.start(1))
        note("ip", ip, "postfix", m.start(2))
        starts.append(_Start(c.start(), _region_end(text, c.start(), "postfix"), "postfix", True))
        break
    if not starts:
        for m in _POSTFIX_SMTPD.finditer(text):
            c = _first_code(text, m.end(), len(text))
            if c is None:
                continue
            command = _command(m.group(1))
            host, ip = m.group(2), m.group(3)
            note("command", command, "postfix-smtpd", m.start(1))
            note("client", host, "postfix-smtpd", m.start(2))
            note("ip", ip, "postfix-smtpd", m.start(3))
            starts.append(_Start(c.start(), _region_end(text, c.start(), "postfix-smtpd"),
                                 "postfix-smtpd", False))
            host = None  # the client, not a remote server
            break
    after = _EXIM_AFTER.search(text)
    if after is not None:
        command = _command(after.group(1))
        note("command", command, "exim", after.start(1))
    if not starts:
        for i, m in enumerate(_EXIM_HOST.finditer(text)):
            c = _first_code(text, m.end(), len(text))
            if c is None and (i or after is None):
                continue
            host, ip = m.group(1), m.group(2)
            note("host", host, "exim", m.start(1))
            note("ip", ip, "exim", m.start(2))
            if c is not None:
                starts.append(_Start(c.start(), _region_end(text, c.start(), "exim"), "exim",
                                     False))
            break
    if after is not None and not starts:
        tail = _EXIM_TAIL.match(text, after.end())
        if tail is not None:
            pos = tail.end()
            starts.append(_Start(pos, _region_end(text, pos, "exim"), "exim", False))
    for rx, source, wrapped in ((_DIAGNOSTIC, "dsn", True), (_EXCHANGE, "exchange", False),
                                (_RESPONSE, "response", True)):
        for m in rx.finditer(text):
            c = _first_code(text, m.end(), len(text))
            if c is not None:
                starts.append(_Start(c.start(), _region_end(text, c.start(), source), source,
                                     wrapped))
                break
    for m in _SMTP_SEMI.finditer(text):
        c = _first_code(text, m.end(), len(text))
        if c is not None and all(s.pos != c.start() for s in starts):
            starts.append(_Start(c.start(), _region_end(text, c.start(), "exchange-smtp"),
                                 "exchange-smtp", False))
            break
    for m in _IN_REPLY_TO.finditer(text):
        if command is None:
            command = _command(m.group(1))
            note("command", command, "postfix", m.start(1))
        break
    mta = _REMOTE_MTA.search(text)
    if mta is not None:
        note("host" if host is None else "remote_mta", mta.group(1), "dsn-remote-mta",
             mta.start(1))
        host = host or mta.group(1)
    rcpt = _RECIPIENT.search(text)
    if rcpt is not None:
        note("recipient", rcpt.group(1), "dsn-final-recipient", rcpt.start(1))
    return starts, found, host, ip, command


def _fallback_start(text: str) -> _Start | None:
    """No marker: the first code at the start of a line, or one followed by an
    enhanced code of its class, or `#550 ...` (Exchange's older NDRs)."""
    first_line_start: _Start | None = None
    first_any: _Start | None = None
    for m in _CODE.finditer(text):
        pos = m.start()
        line_start = text.rfind("\n", 0, pos) + 1
        lead = text[line_start:pos]
        at_line_start = len(lead) <= 8 and not lead.strip(" '\"<>#*-•")
        after = m.end() + 1
        if text[m.end():m.end() + 5] == f" {m.group(1)} ":  # the code twice: 554 554 5.7.1
            after += 4
        e = _ENHANCED_AT.match(text, after) if m.end() < len(text) else None
        if e is not None and int(e.group(1)) == int(m.group(1)[0]):
            source = "exchange-hash" if lead.rstrip().endswith("#") else (
                "reply" if at_line_start else "text")
            return _Start(pos, _region_end(text, pos, source), source, False)
        if at_line_start and first_line_start is None:
            first_line_start = _Start(pos, _region_end(text, pos, "reply"), "reply", False)
        if first_any is None:
            first_any = _Start(pos, _region_end(text, pos, "text"), "text", False)
    return first_line_start or first_any


def _chunks(region: str, code: str) -> tuple[list[tuple[str, str]], bool]:
    """Split a region into (separator, body) reply lines: `550-a 550-b 550 c` gives three,
    whether the breaks were newlines or lost. Returns the lines and whether any two
    lines shared a physical line (a copy with its line breaks lost)."""
    marks = list(re.finditer(rf"(?:^|(?<=[\s'\"]))({code})([ \-]|$)", region))
    if not marks or marks[0].start() != region.find(code):
        return [], False
    out: list[tuple[str, str]] = []
    joined = False
    i = 0
    while i < len(marks) and len(out) < MAX_LINES:
        m = marks[i]
        sep = m.group(2) or " "
        nxt = i + 1 if sep == "-" and i + 1 < len(marks) else None
        end = marks[nxt].start() if nxt is not None else len(region)
        body = region[m.end():end]
        if nxt is not None and "\n" not in body:
            joined = True
        out.append((sep, " ".join(body.split())))
        if nxt is None:
            break
        i = nxt
    return out, joined


def _enhanced_at(body: str) -> tuple[str | None, str]:
    m = _ENHANCED_AT.match(body)
    if m is None:
        return None, body
    value = f"{int(m.group(1))}.{int(m.group(2))}.{int(m.group(3))}"
    return value, body[m.end():].lstrip()


def read_paste(raw: str) -> Pasted:
    """Find the reply and its context in pasted text (see the module's doc)."""
    text, cut = _normalise(raw)
    notes: list[str] = ["truncated"] if cut else []
    starts, found, host, ip, command = _starts(text)
    where = _Where(text)
    form = starts[0].source if starts else ""
    start = starts[0] if starts else _fallback_start(text)
    if start is not None and not form:
        form = start.source
    status = _STATUS.search(text)
    status_value = None
    if status is not None:
        status_value = f"{int(status.group(1))}.{int(status.group(2))}.{int(status.group(3))}"
        line, col = where(status.start(1))
        found.append(Found("status", status_value, "dsn-status", line, col))
    hashed = _HASH_ENHANCED.search(text)
    if hashed is not None and status_value is None:
        status_value = f"{int(hashed.group(1))}.{int(hashed.group(2))}.{int(hashed.group(3))}"
        line, col = where(hashed.start(1))
        found.append(Found("status", status_value, "exchange-hash", line, col))
    if start is None:
        return _without_reply(text, found, host, ip, command, status_value, notes)
    code_s = text[start.pos:start.pos + 3]
    region = text[start.pos:max(start.end, start.pos + 3)][:MAX_TEXT * 2]
    if start.wrapped:
        region = " ".join(region.split())
    lines, joined = _chunks(region, code_s)
    if not lines:
        lines = [(" ", " ".join(region[3:].split()))]
    line, col = where(start.pos)
    found.append(Found("code", code_s, start.source, line, col))
    # The code written twice: `554 554 5.7.1 ...` (some relays prefix their own copy).
    first_sep, first_body = lines[0]
    if re.match(rf"{code_s}(?:[ \-]|$)", first_body):
        notes.append("doubled_code")
        first_sep = first_body[3:4] or first_sep
        first_body = first_body[4:].lstrip()
        lines[0] = (first_sep if first_sep in " -" else " ", first_body)
    enhanced, _ = _enhanced_at(lines[0][1])
    bodies = []
    for _sep, body in lines:
        e, rest = _enhanced_at(body)
        bodies.append(rest if e is not None and e == enhanced else body)
    if enhanced is not None:
        epos = text.find(enhanced.split(".")[0] + ".", start.pos)
        eline, ecol = where(epos if epos >= 0 else start.pos)
        found.append(Found("enhanced", enhanced, start.source, eline, ecol))
    if joined:
        notes.append("joined")
        if form in ("reply", "text"):
            form = "joined"
    if lines[-1][0] == "-":
        notes.append("fragment")
        if form in ("reply", "text"):
            form = "fragment"
    code = int(code_s)
    reply_enhanced = enhanced
    if enhanced is not None and int(enhanced[0]) != code // 100:
        notes.append("class_mismatch")
        reply_enhanced = None
    if status_value is not None:
        if enhanced is None and int(status_value[0]) == code // 100:
            reply_enhanced = enhanced = status_value
            notes.append("status_used")
        elif enhanced is not None and status_value != enhanced:
            notes.append("status_differs")
    total = 0
    kept = []
    for body in bodies:
        cut_body = body[:MAX_TEXT - total]
        total += len(cut_body)
        kept.append(cut_body)
    reply_text = " ".join(b for b in kept if b).strip()
    if reply_text:
        tline, tcol = where(max(0, text.find(reply_text[:20], start.pos)))
        found.append(Found("text", reply_text, start.source, tline, tcol))
    reply: Reply | None = None
    if 200 <= code < 600:
        try:
            reply = Reply(code, reply_enhanced, tuple(kept) or ("",))
        except ReplyError:
            reply = Reply(code, None, tuple(kept) or ("",))
    else:
        notes.append("no_reply")
        form = "code" if form in ("reply", "text") else form
    return Pasted(form=form, reply=reply, code=code, enhanced=enhanced, text=reply_text,
                  host=host, ip=ip, command=command, found=tuple(found), notes=tuple(notes))


def _without_reply(text: str, found: list[Found], host: str | None, ip: str | None,
                   command: str | None, status: str | None, notes: list[str]) -> Pasted:
    """No reply in the paste: a `Status:` field, a bare `#5.7.1`, or a bare three-digit
    number outside SMTP's range (101, 111)."""
    s = text.strip()
    code = None
    form = "status" if status else ""
    enhanced = status
    if status is None:
        m = _BARE_ENHANCED.match(s)
        if m is not None:
            enhanced = f"{int(m.group(1))}.{int(m.group(2))}.{int(m.group(3))}"
            found.append(Found("enhanced", enhanced, "text", 1, 1))
            form = "status"
        else:
            c = re.match(r"([0-9]{3})(?:[ \-:]|\Z)", s)
            if c is not None:
                code = int(c.group(1))
                found.append(Found("code", c.group(1), "text", 1, 1))
                rest = " ".join(s[3:].lstrip(" -:").split())[:MAX_TEXT]
                form = "code"
                if rest:
                    found.append(Found("text", rest, "text", 1, 5))
                notes.append("no_reply")
                return Pasted(form=form, reply=None, code=code, enhanced=None, text=rest,
                              host=host, ip=ip, command=command, found=tuple(found),
                              notes=tuple(notes))
    return Pasted(form=form or "unknown", reply=None, code=None, enhanced=enhanced, text="",
                  host=host, ip=ip, command=command, found=tuple(found), notes=tuple(notes))
