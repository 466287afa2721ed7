"""Framing: message data (the DATA terminator, dot-(un)stuffing, bare CR/LF, limits), BDAT
chunks, counted rather than framed (`ChunkReader`), and the client's reading of server
replies (`ReplyReader`).

The end of DATA is only `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4). Any other spelling —
`<LF>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR>`, `<CRLF>.<LF>` — is content, never an end: that is
what makes mailgate immune to SMTP smuggling (CVE-2023-51764/51765/51766 class).

Work is done on whole buffers with `bytes.find`/`replace`/`count`, never line by line in
Python, so framing streams at hundreds of MB/s. Memory held is bounded by the size of
the last incomplete line, itself bounded by the line limit.
"""

from __future__ import annotations

import re

from mailgate.codes.reply import Reply, ReplyError, parse_reply_line, reply_from_lines
from mailgate.smtp import replies

__all__ = [
    "ChunkReader", "DataReader", "ReplyReader", "ReplyStreamError", "all_crlf", "dot_stuff",
    "stuffed_size",
]

_END = b"\r\n.\r\n"
# A line that starts with a dot. re finds this three-octet literal in about half the time
# of bytes.find or bytes.replace (CPython 3.11, 100 KiB: 38 against 70 µs; 64 KiB with a
# dot starting one line in four, finditer 51 against 72), and both DATA's reader and
# dot-stuffing scan every octet of every message for it.
_DOT_LINE = re.compile(rb"\r\n\.")
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")
_NOT_NEWLINE = bytes(b for b in range(256) if b not in (10, 13))


class DataReader:
    """Decodes the bytes after `354` into message content, chunk by chunk.

    `feed(data)` returns `(content, rest)`: unstuffed content to store, and — once the
    terminator has been seen — the bytes that followed it (pipelined commands), else None.
    After a problem (size, line length, bare CR/LF in reject mode) `error` holds the reply
    to give at the end of data, and content is no longer returned.
    """

    __slots__ = ("_buf", "_first", "bare_newlines", "error", "max_line", "max_size", "size")

    def __init__(self, max_size: int, max_line: int = 1000, bare_newlines: str = "normalize"):
        self.max_size = max_size
        self.max_line = max_line  # octets including CRLF
        self.bare_newlines = bare_newlines
        # The CRLF that ended the DATA command line: the first line starts after it.
        self._buf = b"\r\n"
        self._first = True
        self.size = 0
        self.error: Reply | None = None

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        old = self._buf
        buf = old + data if old else data
        # One pass over every "<CRLF>." (`_DOT_LINE`) finds both the terminator and the
        # lines to unstuff; what is left over from the last call is at most one line, so
        # it is searched again rather than tracked.
        dots: list[int] = []
        n = len(buf)
        i = -1
        for match in _DOT_LINE.finditer(buf):
            i = match.start()
            if i + 5 > n:
                break  # too near the end to tell a terminator from a stuffed dot
            if buf[i + 3] == 13 and buf[i + 4] == 10:  # "\r\n.\r\n": the end
                was_first = self._first
                content = self._take(buf, i, dots)
                # The CRLF before the final dot ends the last line, unless there was none.
                if self.error is None and not (was_first and i == 0):
                    content += b"\r\n"
                    self._count(2)
                self._buf = b""
                return (b"" if self.error is not None else content), buf[i + 5 :]
            dots.append(i + 2)
        else:
            i = -1
        # Take everything up to the last line end: a CRLF, or a bare LF (not a CR: its LF
        # may be in the next chunk). A bare-LF line is a line too (normalized or refused
        # later), so where the chunks happen to end cannot change what is accepted.
        cut = buf.rfind(b"\r\n")
        lf = buf.rfind(b"\n")
        if lf > cut + 1:
            cut = lf
            if i != -1 and i + 2 < lf:
                # The "<CRLF>." the loop left undecided (too near the end to see whether
                # a terminator follows) is followed by that LF: a stuffed dot, not an end.
                dots.append(i + 2)
        content = b""
        if cut > 0:
            content = self._take(buf, cut, dots, cr=buf[cut] == 13)
            buf = buf[cut:]
        # The buffer is the line end before the unfinished line (CRLF, or a bare LF), then
        # the line; a dot doubled for transparency does not count toward the limit (RFC
        # 5321 4.5.3.1.6), and after a bare LF no dot is undoubled.
        end = 2 if buf[:2] == b"\r\n" else 1
        if len(buf) > self.max_line - 1 + end + (end == 2 and buf[2:3] == b"."):
            # A line longer than the limit, its end not yet seen: refuse the message and
            # keep only the bytes that could begin the terminator, so memory stays bounded.
            self._fail(replies.DATA_LINE_TOO_LONG)
            buf = buf[-4:]
        self._buf = buf
        return content, None

    def _take(self, buf: bytes, upto: int, dots: list[int], cr: bool = True) -> bytes:
        """Content of `buf[:upto]` without the dots at `dots`; `buf` starts with a line end.
        `cr`: the line end at `upto` is a CRLF (else a bare LF, one octet shorter).

        Checks work on ranges of `buf` with C-level scans (translate, count, rfind), so
        the content is copied once.
        """
        if self.error is not None:
            return b""
        if upto >= self.max_line - 1 and _has_long_line(buf, upto, self.max_line, cr):
            self._fail(replies.DATA_LINE_TOO_LONG)
            return b""
        start = 2 if self._first else 0
        self._first = False
        parts = []
        p = start
        for d in dots:
            if d >= upto:
                break
            parts.append(buf[p:d])
            p = d + 1
        parts.append(buf[p:upto])
        seg = b"".join(parts) if len(parts) > 1 else parts[0]
        newlines = len(seg.translate(None, _NOT_NEWLINE))
        if newlines != 2 * seg.count(b"\r\n"):
            if self.bare_newlines == "reject":
                self._fail(replies.DATA_BARE_LF)
                return b""
            # Only lines ended by a real CRLF were unstuffed (a bare-LF line "." stays
            # content); now every line end becomes CRLF.
            seg = _ANY_NEWLINE.sub(b"\r\n", seg)
        self._count(len(seg))
        return b"" if self.error is not None else seg

    def _count(self, n: int) -> None:
        self.size += n
        if self.size > self.max_size:
            self._fail(replies.SIZE_EXCEEDED)

    def _fail(self, reply: Reply) -> None:
        if self.error is None:
            self.error = reply


class ChunkReader:
    """The octets of one message's BDAT chunks (RFC 3030), beside `DataReader` for DATA.

    `chunk(size, last)` starts a chunk once its command is read; `feed(buf)` then takes
    the chunk's octets from the front of `buf` (consumed in place) and returns the
    content to keep, or None when there is none. `left` is what the chunk still owes.
    A chunk started with `discard` is read for nothing (RFC 3030 2: a chunk with no
    transaction is read, then refused). Once the message passes `max_size`, `error` holds
    the reply and the rest is discarded.
    """

    __slots__ = ("discarding", "error", "last", "left", "max_size", "size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0  # octets of the message so far
        self.left = 0
        self.last = False
        self.discarding = False
        self.error: Reply | None = None

    def chunk(self, size: int, last: bool, discard: bool = False) -> None:
        self.left = size
        self.last = last
        self.discarding = discard or self.error is not None

    def feed(self, buf: bytearray) -> bytes | None:
        take = min(self.left, len(buf))
        piece = bytes(buf[:take])
        del buf[:take]
        self.left -= take
        if self.discarding:
            return None
        self.size += take
        if self.size > self.max_size:
            self.discarding = True
            self.error = replies.SIZE_EXCEEDED
            return None
        return piece


class ReplyStreamError(Exception):
    """The server sent something that is not a reply; `too_long`: a line over the limit."""

    def __init__(self, why: str, seen: str = "", too_long: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.seen = seen
        self.too_long = too_long


# One-line replies already read, by their bytes (without the line end): most replies
# a server sends are the same few ("250 2.1.0 Ok", "354 End data with..."), and reading
# one (decoding, the code, the enhanced code, a checked Reply) was a tenth of the
# deliverer's time. A Reply is immutable, and the same bytes always read the same.
_ONE_LINE: dict[bytes, Reply] = {}
_ONE_LINE_MAX = 256
_ONE_LINE_LONGEST = 200


class ReplyReader:
    """Server replies out of the bytes received: lines, grouped into (multi-line) replies.

    `feed(data)` adds bytes; `read()` returns the next whole reply, None when more bytes
    are needed, and raises ReplyStreamError when the server broke the protocol. Memory
    is bounded: at most one partial line of `max_line` octets, a reply of `max_lines`.
    """

    __slots__ = ("_buf", "_lines", "max_line", "max_lines")

    def __init__(self, max_line: int, max_lines: int) -> None:
        self.max_line = max_line
        self.max_lines = max_lines
        self._buf = bytearray()
        # The lines of the reply being read, each parsed once: (line, code, text).
        self._lines: list[tuple[str, int, str]] = []

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        """Forget everything received (RFC 3207 5: nothing from before a handshake)."""
        self._buf.clear()
        self._lines.clear()

    def drop_reply(self) -> None:
        """Forget the lines of a reply begun, keep the bytes not yet read."""
        self._lines.clear()

    def read(self) -> Reply | None:
        buf = self._buf
        limit = self.max_line
        lines = self._lines
        while True:
            nl = buf.find(b"\n")
            if nl == -1:
                if len(buf) > limit:
                    raise ReplyStreamError(f"longer than {limit} octets", too_long=True)
                return None
            raw = bytes(buf[:nl])
            del buf[: nl + 1]
            if len(raw) + 1 > limit:
                raise ReplyStreamError(f"longer than {limit} octets", too_long=True)
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if not lines and (known := _ONE_LINE.get(raw)) is not None:
                return known
            # Text is for people: a stray non-UTF-8 octet must not cost a delivery.
            line = raw.decode("utf-8", errors="replace")
            try:
                code, last, body = parse_reply_line(line)
            except ReplyError as exc:
                raise ReplyStreamError(str(exc), line) from None
            lines.append((line, code, body))
            if not last:
                if len(lines) >= self.max_lines:
                    raise ReplyStreamError(f"a reply of more than {len(lines)} lines")
                continue
            try:
                reply = reply_from_lines([(c, b) for _, c, b in lines])
            except ReplyError as exc:
                raise ReplyStreamError(str(exc), "\n".join(raw for raw, _, _ in lines)) from None
            finally:
                single = len(lines) == 1
                lines.clear()
            if single and len(raw) <= _ONE_LINE_LONGEST:
                if len(_ONE_LINE) >= _ONE_LINE_MAX:
                    _ONE_LINE.clear()  # a server whose every reply differs: start again
                _ONE_LINE[raw] = reply
            return reply


def _has_long_line(buf: bytes, n: int, limit: int, cr: bool = True) -> bool:
    """Does `buf[:n]` (followed by a CRLF, or by a bare LF when not `cr`) hold a line
    longer than `limit` with its line end?

    Jumps from line end to the last line end within reach: one `rfind` in C per
    `limit` octets, instead of one Python step per line.
    """
    run = limit - 1  # octets before the LF (CR included) that already break the limit
    pos = 0
    rfind = buf.rfind
    tail = 1 if cr else 0  # the CR of the line end after buf[:n]
    while n - pos + tail > run:  # the rest, with the CR that may follow it, may be too long
        # A line after a CRLF that starts with a dot was dot-stuffed: RFC 5321 4.5.3.1.6
        # does not count the doubled dot, so such a line may be one octet longer.
        extra = 1 if pos >= 2 and buf[pos] == 46 and buf[pos - 2 : pos] == b"\r\n" else 0
        if n - pos + tail <= run + extra:
            return False
        nl = rfind(b"\n", pos, min(pos + run + 1 + extra, n))
        if nl == -1:
            return True
        pos = nl + 1
    return False


def dot_stuff(content: bytes) -> bytes:
    """Content ready to send after DATA: CRLF line ends, leading dots doubled, terminator.

    Bare CR and LF become CRLF so that no receiver can be smuggled a terminator.
    """
    return dot_stuff_sized(content)[0]


def all_crlf(data: bytes) -> bool:
    """Does every CR and LF in `data` belong to a CRLF pair?

    Three C-level counts (the CRLF count is the slow one, a two-octet search: about
    75 µs per 100 KiB against 24 for each one-octet count)."""
    lf = data.count(b"\n")
    return data.count(b"\r") == lf and data.count(b"\r\n") == lf


def dot_stuff_sized(content: bytes, crlf: bool = False) -> tuple[bytes, int]:
    """`dot_stuff(content)`, and its size as the server counts it (`stuffed_size`), from
    the one pass: the content with its line ends made CRLF is what the server reads back.

    `crlf`: the caller knows every line end is already CRLF (the queue's flag for
    content that came in by DATA, whose reader made it so), and the check is skipped:
    at 100 KiB it was half of this function's time. Otherwise `all_crlf` decides, and
    the regex that rewrites line ends rarely runs."""
    if not crlf and not all_crlf(content):
        content = _ANY_NEWLINE.sub(b"\r\n", content)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    # Most content has no line that starts with a dot: one search, and no copy.
    body = content.replace(b"\r\n.", b"\r\n..") if _DOT_LINE.search(content) else content
    if body.startswith(b"."):
        body = b"." + body
    return body + b".\r\n", len(content)


def stuffed_size(wire: bytes) -> int:
    """Octets of `dot_stuff` output as the server counts them (unstuffed, no terminator)."""
    body = wire[:-3]
    return len(body) - body.count(b"\r\n.") - (1 if body.startswith(b".") else 0)
