"""Fuzz the reply parser (`mailgate.codes.reply`): whole replies, lines and codes.

Input: one header byte, then the bytes a server sends.

- byte 0, bits 0-1: 0 and 3 `parse_reply` (bytes), 1 `parse_reply_line`,
  2 `parse_basic_code` (strict when bit 2 is set), or `parse_enhanced_code` with bit 3

Checked beyond "no exception": only ReplyError escapes; a parsed reply is valid, goes on
the wire as well-formed lines and parses back to itself (with and without its enhanced
code), and its one-line form (`str`, used in logs and bounces) has no CR or LF.
"""

from __future__ import annotations

from fuzzlib import FuzzFinding, check_replies

from mailgate.codes.reply import (
    Reply,
    ReplyError,
    parse_basic_code,
    parse_enhanced_code,
    parse_reply,
    parse_reply_line,
)


def _check_reply(reply: Reply, data: bytes) -> None:
    wire = reply.to_bytes()
    check_replies(wire, allow_nul=True)  # received text is kept as it came
    again = parse_reply(wire)
    if again != reply:
        raise FuzzFinding(f"{data[:200]!r} -> {reply!r} -> {wire!r} -> {again!r}")
    plain = parse_reply(reply.to_bytes(enhanced=False))
    if plain.code != reply.code or (reply.enhanced is None and plain != reply):
        raise FuzzFinding(f"{reply!r} without its enhanced code reads as {plain!r}")
    one_line = str(reply)
    if "\r" in one_line or "\n" in one_line:
        raise FuzzFinding(f"str({reply!r}) spans lines")


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 3 == 1:
        # One line, as the client hands it over: split at LF, its CR removed.
        raw = body.split(b"\n", 1)[0].removesuffix(b"\r")
        try:
            code, last, text = parse_reply_line(raw.decode("utf-8", errors="replace"))
        except ReplyError:
            return
        if not 200 <= code <= 599 or "\n" in text:
            raise FuzzFinding(f"{raw!r} -> {(code, last, text)!r}")
    elif mode & 3 == 2:
        text = body.decode("utf-8", errors="replace")
        if mode & 8:
            try:
                enhanced = parse_enhanced_code(text)
            except ReplyError:
                return
            if parse_enhanced_code(str(enhanced)) != enhanced:
                raise FuzzFinding(f"{text!r} -> {enhanced!r} does not round-trip")
            return
        strict = bool(mode & 4)
        try:
            code = parse_basic_code(text, strict=strict)
        except ReplyError:
            return
        if not 200 <= code <= 599 or (strict and code % 100 > 59):
            raise FuzzFinding(f"{text!r} -> code {code} (strict={strict})")
    else:
        try:
            reply = parse_reply(body)
        except ReplyError:
            return
        _check_reply(reply, body)


if __name__ == "__main__":
    from fuzzlib import main

    main("fuzz_reply")
