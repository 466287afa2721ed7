"""Fuzz the ESMTP parameter parsers (`mailgate.smtp.params`).

Input: one header byte, then text (UTF-8, invalid octets as U+FFFD). For MAIL and RCPT
the text is split on whitespace, as the server splits a command's parameters.

- byte 0, bits 0-1: 0 and 3 `parse_mail_params`, 1 `parse_rcpt_params`, 2 `decode_xtext`
- byte 0, bits 2-7: 4 smtputf8, 8 dsn, 16 auth, 32 SIZE, 64 8BITMIME (MAIL); 128 utf8
  (RCPT: the transaction has SMTPUTF8)

Checked beyond "no exception": only ParamError escapes, carrying a 5xx reply that goes
on the wire well-formed; what parses is sane: ENVID, ORCPT and AUTH= values hold no
control characters (C0, DEL, C1), an ENVID is one the delivery side can relay
(`client.Envelope` takes it) and xtext decoding round-trips through the client's
`encode_xtext`.
"""

from __future__ import annotations

from fuzzlib import FuzzFinding, allowed, check_replies, controls

from mailgate.smtp.address import NULL_PATH, Address
from mailgate.smtp.client import Envelope, Recipient, encode_xtext
from mailgate.smtp.params import (
    ParamError,
    decode_xtext,
    parse_mail_params,
    parse_rcpt_params,
)

_RCPT = Address("user", "example.org")


def _no_controls(what: str, value: str | None, text: str) -> None:
    if value is not None and controls(value) and not allowed("params-controls"):
        raise FuzzFinding(f"{text!r}: {what} {value!r} carries control characters")


def _xtext_roundtrip(value: str, text: str) -> None:
    """A decoded xtext value, encoded as the client relays it, decodes to itself."""
    again = decode_xtext(encode_xtext(value))
    if again != value and not allowed("xtext-roundtrip"):
        raise FuzzFinding(
            f"{text!r}: decoded {value!r}, relayed as {encode_xtext(value)!r}, "
            f"which decodes to {again!r}"
        )


def _check(data: bytes) -> None:
    flags = data[0]
    text = data[1:].decode("utf-8", errors="replace")
    mode = flags & 3
    if mode == 2:
        value = decode_xtext(text)
        _xtext_roundtrip(value, text)
        return
    params = text.split()
    if mode == 1:
        rp = parse_rcpt_params(params, dsn=bool(flags & 8), utf8=bool(flags & 128))
        if rp.notify is not None and rp.notify != ("NEVER",) and not set(rp.notify) <= {
            "SUCCESS", "FAILURE", "DELAY"
        }:
            raise FuzzFinding(f"{text!r}: NOTIFY {rp.notify!r}")
        if rp.orcpt is not None:
            _no_controls("ORCPT", rp.orcpt[1], text)
            try:
                Recipient(_RCPT, notify=rp.notify, orcpt=rp.orcpt)
            except ValueError as exc:
                if allowed("params-envelope"):
                    return
                raise FuzzFinding(f"{text!r}: the delivery side refuses it: {exc}") from exc
        return
    mp = parse_mail_params(
        params, smtputf8=bool(flags & 4), dsn=bool(flags & 8), auth=bool(flags & 16),
        size_ext=bool(flags & 32), eightbit=bool(flags & 64),
    )
    if mp.size is not None and mp.size < 0:
        raise FuzzFinding(f"{text!r}: SIZE {mp.size}")
    if mp.body not in (None, "7BIT", "8BITMIME"):
        raise FuzzFinding(f"{text!r}: BODY {mp.body!r}")
    _no_controls("ENVID", mp.envid, text)
    _no_controls("AUTH=", mp.auth, text)
    if mp.envid is not None and not allowed("params-envelope"):
        try:
            Envelope(NULL_PATH, (Recipient(_RCPT),), envid=mp.envid)
        except ValueError as exc:
            raise FuzzFinding(
                f"{text!r}: ENVID {mp.envid!r} is accepted, but the delivery side refuses "
                f"it: {exc}"
            ) from exc


def one_input(data: bytes) -> None:
    if not data:
        return
    try:
        _check(data)
    except ParamError as exc:
        if exc.reply.code // 100 != 5:
            raise FuzzFinding(f"ParamError with a non-5xx reply: {exc.reply}") from exc
        check_replies(exc.reply.to_bytes(), allow_controls=allowed("params-controls"))


if __name__ == "__main__":
    from fuzzlib import main

    main("fuzz_params")
