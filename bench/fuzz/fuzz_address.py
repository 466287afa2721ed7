"""Fuzz the address parsers (`mailgate.smtp.address.parse_path` and `parse_mailbox`).

Input: one header byte, then the address text (UTF-8; invalid octets become U+FFFD, as
the server never passes invalid UTF-8 on).

- byte 0: 1 utf8 (SMTPUTF8), 2 allow_null, 4 allow_postmaster, 8 parse_mailbox instead
  of parse_path

Checked beyond "no exception": only AddressError escapes; an address that parses
round-trips (parsing its written form gives an equal Address) and its domain has no
control characters (C0, DEL, C1), its local part no CR, LF or NUL.
"""

from __future__ import annotations

from fuzzlib import FuzzFinding, allowed, controls

from mailgate.smtp.address import Address, AddressError, parse_mailbox, parse_path


def _parse(text: str, flags: int) -> Address:
    utf8 = bool(flags & 1)
    if flags & 8:
        return parse_mailbox(text, utf8=utf8)
    return parse_path(text, utf8=utf8, allow_null=bool(flags & 2),
                      allow_postmaster=bool(flags & 4))


def one_input(data: bytes) -> None:
    if not data:
        return
    flags = data[0]
    text = data[1:].decode("utf-8", errors="replace")
    try:
        addr = _parse(text, flags)
    except AddressError:
        return
    if controls(addr.domain) and not allowed("address-controls"):
        raise FuzzFinding(f"{text!r} parsed with control characters in the domain: {addr!r}")
    if any(c in addr.local for c in "\r\n\0") and not allowed("address-controls"):
        raise FuzzFinding(f"{text!r} parsed with CR, LF or NUL in the local part: {addr!r}")
    written = str(addr) if flags & 8 else addr.path
    try:
        again = _parse(written, flags)
    except AddressError as exc:
        raise FuzzFinding(
            f"{text!r} parsed as {addr!r}, but its written form {written!r} does not: {exc}"
        ) from exc
    if again != addr:
        raise FuzzFinding(f"{text!r} -> {addr!r} -> {written!r} -> {again!r}: not equal")


if __name__ == "__main__":
    from fuzzlib import main

    main("fuzz_address")
