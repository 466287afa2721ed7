"""Fuzz DATA framing (`mailgate.smtp.framing`: `DataReader`, `dot_stuff`).

Input: three header bytes, then the bytes a client sends after `354`.

- byte 0: 1 bare CR/LF rejected, 2 small limits (100-octet lines, 3000-octet messages),
  4 fuzz `dot_stuff` instead (the rest is message content, the limits do not apply)
- bytes 1-2: two chunk sizes the bytes arrive in, used in turn (0 counts as 1)

`DataReader` is checked against a plain model of RFC 5321 4.1.1.4 and 4.5.2: the end of
data is the first `<CRLF>.<CRLF>` (the CRLF of the DATA line counts), the bytes after it
come back untouched; content is what lies before it, dots unstuffed at the start of every
CRLF-ended line, bare CR and LF made CRLF; and the result (content, size, error, rest) is
the same whatever the chunking. `dot_stuff` must give bytes that `DataReader` reads back as
the content, with nothing left over.
"""

from __future__ import annotations

import re

from fuzzlib import FuzzFinding, allowed

from mailgate.smtp.framing import DataReader, dot_stuff

_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


def _read(data: bytes, sizes: tuple[int, ...], mode: str, small: bool,
          ) -> tuple[bytes, int, object, bytes | None]:
    reader = DataReader(3000 if small else 1 << 20, 100 if small else 1000, mode)
    content = bytearray()
    rest: bytes | None = None
    i = k = 0
    while i < len(data):
        n = max(sizes[k % len(sizes)], 1)
        k += 1
        piece, rest = reader.feed(data[i : i + n])
        i += n
        content += piece
        if rest is not None:
            rest += data[i:]
            break
    return bytes(content), reader.size, reader.error, rest


def _model_content(data: bytes, end: int) -> bytes:
    """What lies before the terminator at `end` (of CRLF + data), unstuffed, normalised."""
    if end == 0:
        return b""  # ".<CRLF>" at once: no line at all
    lines = data[: end - 2].split(b"\r\n")
    joined = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    return _ANY_NEWLINE.sub(b"\r\n", joined) + b"\r\n"


def _check_reader(data: bytes, sizes: tuple[int, int], mode: str, small: bool) -> None:
    whole = _read(data, (len(data) or 1,), mode, small)
    chunked = _read(data, sizes, mode, small)
    # Content goes out as it arrives; after a refusal the shell discards what it got, so
    # only the refusal and the rest must agree then.
    # Which refusal comes first (bare LF or line length) may depend on where the chunks
    # end; whether the message is refused may not.
    if whole[2] is None or chunked[2] is None:
        same = whole == chunked or allowed("framing-chunking")
    else:
        same = whole[3] == chunked[3]
    if not same:
        raise FuzzFinding(
            f"chunking by {sizes} changes the result: whole {_show(whole)}, "
            f"chunked {_show(chunked)}"
        )
    content, size, error, rest = whole
    end = (b"\r\n" + data).find(b"\r\n.\r\n")
    if end == -1:
        if rest is not None:
            raise FuzzFinding(f"end of data found where there is none: rest {rest[:80]!r}")
        return
    if rest != data[end + 3 :]:
        raise FuzzFinding(f"wrong rest after the end of data: {rest!r}, expected "
                          f"{data[end + 3 :]!r}")
    if error is not None:
        if content:
            raise FuzzFinding("content returned for a refused message")
        return
    if size != len(content):
        raise FuzzFinding(f"size {size} but {len(content)} octets of content")
    expected = _model_content(data, end)
    if content != expected:
        raise FuzzFinding(f"content {content[:200]!r}, expected {expected[:200]!r}")


def _check_stuffing(content: bytes) -> None:
    wire = dot_stuff(content)
    reader = DataReader(1 << 30, 1 << 30, "reject")
    got, rest = reader.feed(wire)
    if rest != b"":
        raise FuzzFinding(f"dot_stuff({content[:80]!r}) does not end once: rest {rest!r}")
    if reader.error is not None:
        raise FuzzFinding(f"dot_stuff({content[:80]!r}) gives bare newlines: {reader.error}")
    expected = _ANY_NEWLINE.sub(b"\r\n", content)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    if got != expected:
        raise FuzzFinding(f"dot_stuff round trip: {content[:80]!r} came back as {got[:80]!r}")


def _show(result: tuple[bytes, int, object, bytes | None]) -> str:
    content, size, error, rest = result
    return f"(content {content[:60]!r}, size {size}, error {error}, rest {rest!r:.60})"


def one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    flags, a, b = data[0], data[1], data[2]
    body = data[3:]
    if flags & 4:
        _check_stuffing(body)
        return
    _check_reader(body, (a, b), "reject" if flags & 1 else "normalize", bool(flags & 2))


if __name__ == "__main__":
    from fuzzlib import main

    main("fuzz_framing")
