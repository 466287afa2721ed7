"""Command lines, both ways: the server parses them, the client formats them.

The server's side is what `ServerSession` does with a line before any state is looked
at: the verb and its argument, the path and the parameters of MAIL and RCPT, the size of
BDAT, the name of EHLO/HELO. Each parser returns the values, or the reply that refuses
the line's syntax; sequence (MAIL before RCPT, ...) stays the session's business.

The client's side writes the same lines (`mail_command`, `rcpt_command`,
`bdat_command`). Keeping both here is what lets a test check that whatever the client
writes, the server reads back as the same values.
"""

from __future__ import annotations

import re

from mailgate.codes.reply import Reply
from mailgate.smtp import replies as R
from mailgate.smtp._common import escape_controls
from mailgate.smtp.address import NULL_PATH, Address, AddressError, parse_path
from mailgate.smtp.params import (
    MailParams,
    ParamError,
    RcptParams,
    parse_mail_params,
    parse_rcpt_params,
)

__all__ = [
    "bdat_command",
    "encode_xtext",
    "format_path",
    "mail_command",
    "parse_bdat",
    "parse_mail",
    "parse_rcpt",
    "rcpt_command",
    "split_command",
    "split_path",
    "valid_helo",
]

_BDAT_RE = re.compile(r"([0-9]{1,20})(?: +(LAST))? *\Z", re.IGNORECASE)
# Printable ASCII, or any non-ASCII but the C1 controls (U+0085 is a line break to Python,
# U+009B a terminal's CSI): the name is echoed in the 250 reply, logged and written into
# the Received header.
_HELO_RE = re.compile(r"[\x21-\x7e\u00a0-\U0010ffff]+\Z")
_PARAMS_NEED_EHLO = Reply.make(555, "5.5.4", "Parameters need EHLO")
_MAIL_SYNTAX = Reply.make(501, "5.5.4", "Syntax: MAIL FROM:<address>")
_RCPT_SYNTAX = Reply.make(501, "5.5.4", "Syntax: RCPT TO:<address>")


# --- the server's side: parsing ---------------------------------------------------------


def split_command(line: str) -> tuple[str, str]:
    """`verb arg` -> (VERB in upper case, the argument as sent, spaces included)."""
    verb, _, arg = line.partition(" ")
    return verb.upper(), arg


def valid_helo(domain: str) -> bool:
    """Is this (stripped) EHLO/HELO argument a name the server can echo and log?"""
    return bool(domain) and _HELO_RE.match(domain) is not None


def parse_bdat(arg: str) -> tuple[int, bool] | None:
    """`size [LAST]` -> (size, last); None when the syntax is wrong."""
    m = _BDAT_RE.match(arg.strip())
    if m is None:
        return None
    return int(m.group(1)), m.group(2) is not None


def split_path(arg: str, prefix: str) -> tuple[str, list[str]] | None:
    """`FROM:<path> params` -> (path, params), tolerating a space after the colon."""
    if arg[: len(prefix)].upper() != prefix:
        return None
    rest = arg[len(prefix) :].lstrip(" ")
    if not rest.startswith("<"):
        path, _, tail = rest.partition(" ")
        return path, tail.split()
    i, quoted = 1, False
    while i < len(rest):
        ch = rest[i]
        if ch == "\\" and quoted:
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            break
        i += 1
    path, tail = rest[: i + 1], rest[i + 1 :]
    if tail and not tail.startswith(" "):
        return path + tail, []
    return path, tail.split()


def parse_mail(
    arg: str, *, esmtp: bool, smtputf8: bool, dsn: bool, auth: bool, max_size: int
) -> tuple[Address, MailParams] | Reply:
    """The argument of MAIL: the sender and its parameters, or the reply refusing them.

    `esmtp`: the session said EHLO (parameters need it); `auth`: AUTH= is understood;
    `max_size`: a declared SIZE above it is refused here.
    """
    split = split_path(arg, "FROM:")
    if split is None:
        return _MAIL_SYNTAX
    path, params = split
    if params and not esmtp:
        return _PARAMS_NEED_EHLO
    try:
        mp = parse_mail_params(params, smtputf8=smtputf8, dsn=dsn, auth=auth)
    except ParamError as exc:
        return exc.reply
    if mp.size is not None and mp.size > max_size:
        return R.SIZE_EXCEEDED
    try:
        sender = parse_path(path, utf8=mp.smtputf8, allow_null=True)
    except AddressError as exc:
        return _address_reply(exc, 501, "5.1.7", "sender")
    return sender, mp


def parse_rcpt(
    arg: str, *, esmtp: bool, utf8: bool, dsn: bool
) -> tuple[Address, RcptParams] | Reply:
    """The argument of RCPT: the recipient and its parameters, or the reply refusing them.

    `utf8`: the transaction's MAIL said SMTPUTF8.
    """
    split = split_path(arg, "TO:")
    if split is None:
        return _RCPT_SYNTAX
    path, params = split
    if params and not esmtp:
        return _PARAMS_NEED_EHLO
    try:
        rp = parse_rcpt_params(params, dsn=dsn, utf8=utf8)
    except ParamError as exc:
        return exc.reply
    try:
        rcpt = parse_path(path, utf8=utf8, allow_postmaster=True)
    except AddressError as exc:
        return _address_reply(exc, 501, "5.1.3", "recipient")
    return rcpt, rp


def _address_reply(exc: AddressError, code: int, enhanced: str, who: str) -> Reply:
    if exc.utf8:
        return Reply.make(553, "5.6.7", f"Non-ASCII {who} address needs SMTPUTF8")
    # The message may quote the client's text (an address literal) as it came.
    return Reply.make(code, enhanced, f"Bad {who} address syntax: {escape_controls(str(exc))}")


# --- the client's side: formatting ------------------------------------------------------


def format_path(addr: Address) -> str:
    """`<local@domain>`, `<postmaster>`, or `<>` for the null path."""
    return "<>" if addr == NULL_PATH else addr.path


def encode_xtext(value: str) -> str:
    """RFC 3461 xtext: octets outside `!`..`~`, and `+` and `=`, as `+XX` (of UTF-8)."""
    out: list[str] = []
    for b in value.encode("utf-8", "surrogateescape"):
        if 33 <= b <= 126 and b not in (43, 61):
            out.append(chr(b))
        else:
            out.append(f"+{b:02X}")
    return "".join(out)


def mail_command(
    sender: Address, *, size: int | None = None, eightbit: bool = False,
    smtputf8: bool = False, ret: str | None = None, envid: str | None = None,
) -> str:
    """`MAIL FROM:<sender>` with the parameters given (None or False: left out)."""
    parts = [f"MAIL FROM:{format_path(sender)}"]
    if size is not None:
        parts.append(f"SIZE={size}")
    if eightbit:
        parts.append("BODY=8BITMIME")
    if smtputf8:
        parts.append("SMTPUTF8")
    if ret is not None:
        parts.append(f"RET={ret}")
    if envid is not None:
        parts.append(f"ENVID={encode_xtext(envid)}")
    return " ".join(parts)


def rcpt_command(
    recipient: Address, *, notify: tuple[str, ...] | None = None,
    orcpt: tuple[str, str] | None = None,
) -> str:
    """`RCPT TO:<recipient>` with the DSN parameters given (RFC 3461)."""
    parts = [f"RCPT TO:{format_path(recipient)}"]
    if notify is not None:
        parts.append("NOTIFY=" + ",".join(v.upper() for v in notify))
    if orcpt is not None:
        parts.append(f"ORCPT={orcpt[0]};{encode_xtext(orcpt[1])}")
    return " ".join(parts)


def bdat_command(size: int, last: bool) -> str:
    """`BDAT size` or `BDAT size LAST` (RFC 3030)."""
    return f"BDAT {size} LAST" if last else f"BDAT {size}"
