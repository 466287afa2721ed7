"""ESMTP parameters of MAIL and RCPT (RFC 5321 4.1.2, RFC 1870, 6152, 6531, 3461, 4954).

Parsing turns `SIZE=1000 BODY=8BITMIME RET=HDRS` into typed values, refusing unknown,
repeated or malformed parameters with the reply RFC 5321 prescribes.

Everything is validated here, when the command arrives, and never later: a value this
module accepted is stored in the queue, written into DSNs and sent on to the next hop, so
it must be safe for all of them. Decoded xtext (ENVID, ORCPT, AUTH=) may hold only the
characters RFC 3461 allows: printable US-ASCII (`utf-8` ORCPTs: any printable Unicode),
never a control character, CR, LF, NUL or ESC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.codes.reply import Reply

__all__ = ["MailParams", "ParamError", "RcptParams", "decode_xtext", "parse_mail_params",
           "parse_rcpt_params"]

_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_XTEXT_RE = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_GRAPHIC_RE = re.compile(r"[\x21-\x7e]+\Z")  # RFC 3461 4.4: ENVID, "printable (graphic)"
_PRINTABLE_RE = re.compile(r"[\x20-\x7e]+\Z")  # an rfc822 address may hold a quoted space
# RFC 6533 utf-8-addr-xtext: printable ASCII and UTF-8, no controls (C0, DEL, C1).
_UTF8_ADDR_RE = re.compile(r"[^\x00-\x20\x7f-\x9f]+\Z")


class ParamError(Exception):
    """A parameter problem, carrying the reply to send."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _unknown(keyword: str) -> ParamError:
    return ParamError(Reply.make(555, "5.5.4", f"Unsupported parameter {keyword}"))


def _bad(text: str) -> ParamError:
    return ParamError(Reply.make(501, "5.5.4", text))


def decode_xtext(value: str) -> str:
    """RFC 3461 xtext: `+XX` hex escapes; ParamError when malformed."""
    if not _XTEXT_RE.match(value):
        raise _bad("Malformed xtext value")
    if "+" not in value:
        return value
    # xtext escapes octets: decode them as the octets they are (UTF-8, unpaired bytes
    # kept as surrogates), so that encoding again for the next hop gives the same octets.
    octets = re.sub(rb"\+([0-9A-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                    value.encode("ascii"))
    return octets.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class MailParams:
    """MAIL FROM parameters; None where the client gave none."""

    size: int | None = None
    body: str | None = None  # 7BIT | 8BITMIME
    smtputf8: bool = False
    ret: str | None = None  # FULL | HDRS (DSN)
    envid: str | None = None  # decoded xtext (DSN)
    auth: str | None = None  # RFC 4954 AUTH= (decoded), informative only


@dataclass(frozen=True, slots=True)
class RcptParams:
    """RCPT TO parameters (DSN, RFC 3461)."""

    notify: tuple[str, ...] | None = None  # ("NEVER",) or some of SUCCESS FAILURE DELAY
    orcpt: tuple[str, str] | None = None  # (addr-type, decoded address)


_NO_MAIL_PARAMS = MailParams()
_NO_RCPT_PARAMS = RcptParams()


def _split(params: list[str]) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for p in params:
        key, eq, value = p.partition("=")
        if not _KEYWORD_RE.match(key):
            raise _bad(f"Malformed parameter {p!r}")
        k = key.upper()
        if k in seen:
            raise _bad(f"Parameter {k} given twice")
        seen.add(k)
        out.append((k, value if eq else None))
    return out


def parse_mail_params(
    params: list[str], *, size_ext: bool = True, eightbit: bool = True, smtputf8: bool = True,
    dsn: bool = True, auth: bool = False,
) -> MailParams:
    if not params:
        return _NO_MAIL_PARAMS
    size = body = ret = envid = auth_value = None
    utf8 = False
    for key, value in _split(params):
        if key == "SIZE" and size_ext:
            if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
                raise _bad("SIZE needs a number of octets")
            size = int(value)
        elif key == "BODY" and eightbit:
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise _bad("BODY must be 7BIT or 8BITMIME")
            body = value.upper()
        elif key == "SMTPUTF8" and smtputf8:
            if value is not None:
                raise _bad("SMTPUTF8 takes no value")
            utf8 = True
        elif key == "RET" and dsn:
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise _bad("RET must be FULL or HDRS")
            ret = value.upper()
        elif key == "ENVID" and dsn:
            if not value:
                raise _bad("ENVID needs a value")
            envid = decode_xtext(value)
            if len(envid) > 100:
                raise _bad("ENVID is longer than 100 characters (RFC 3461)")
            if not _GRAPHIC_RE.match(envid):
                raise _bad("ENVID must decode to printable US-ASCII without spaces "
                           "(RFC 3461 4.4)")
        elif key == "AUTH" and auth:
            if not value:
                raise _bad("AUTH= needs a mailbox or <>")
            auth_value = decode_xtext(value)
            if not _GRAPHIC_RE.match(auth_value):
                raise _bad("AUTH= must decode to a mailbox or <> (RFC 4954 5)")
        else:
            raise _unknown(key)
    return MailParams(size=size, body=body, smtputf8=utf8, ret=ret, envid=envid, auth=auth_value)


_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")


def parse_rcpt_params(params: list[str], *, dsn: bool = True, utf8: bool = False) -> RcptParams:
    if not params:
        return _NO_RCPT_PARAMS
    notify: tuple[str, ...] | None = None
    orcpt: tuple[str, str] | None = None
    for key, value in _split(params):
        if key == "NOTIFY" and dsn:
            if not value:
                raise _bad("NOTIFY needs NEVER or a list of SUCCESS, FAILURE, DELAY")
            items = tuple(v.upper() for v in value.split(","))
            unique = len(set(items)) == len(items)
            if items == ("NEVER",) or (unique and all(i in _NOTIFY for i in items)):
                notify = items
            else:
                raise _bad("NOTIFY is NEVER alone, or a list of SUCCESS, FAILURE, DELAY")
        elif key == "ORCPT" and dsn:
            kind, semi, addr = (value or "").partition(";")
            if not semi or not _KEYWORD_RE.match(kind) or not addr:
                raise _bad("ORCPT must be addr-type;address, e.g. rfc822;user@example.org")
            if kind.lower() == "utf-8" and utf8:
                decoded = addr  # RFC 6533 utf-8-addr-xtext; kept as given
                if not _UTF8_ADDR_RE.match(decoded):
                    raise _bad("ORCPT must not hold spaces or control characters (RFC 6533)")
            else:
                decoded = decode_xtext(addr)
                if not _PRINTABLE_RE.match(decoded):
                    raise _bad("ORCPT must decode to printable US-ASCII (RFC 3461 4.2)")
            if len(decoded) > 500:
                raise _bad("ORCPT is longer than 500 characters (RFC 3461 4.2)")
            orcpt = (kind.lower(), decoded)
        else:
            raise _unknown(key)
    return RcptParams(notify=notify, orcpt=orcpt)
