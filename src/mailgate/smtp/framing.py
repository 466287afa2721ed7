"""Message data framing: the DATA terminator, dot-(un)stuffing, bare CR/LF, limits.

The end of DATA is only `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4). Any other spelling —
`<LF>.<LF>`, `<LF>.<CRLF>`, `<CR>.<CR>`, `<CRLF>.<LF>` — is content, never an end: that is
what makes mailgate immune to SMTP smuggling (CVE-2023-51764/51765/51766 class).

Work is done on whole buffers with `bytes.find`/`replace`/`count`, never line by line in
Python, so framing streams at hundreds of MB/s. Memory held is bounded by the size of
the last incomplete line, itself bounded by the line limit.
"""

from __future__ import annotations

import re

from mailgate.codes.reply import Reply
from mailgate.smtp import replies

__all__ = ["DataReader", "dot_stuff"]

_END = b"\r\n.\r\n"
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


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
        self._buf = bytearray(b"\r\n")
        self._first = True
        self.size = 0
        self.error: Reply | None = None

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        buf = self._buf
        start = max(0, len(buf) - 4)
        buf += data
        end = buf.find(_END, start)
        if end != -1:
            was_first = self._first
            content = self._take(end)
            # The CRLF before the final dot ends the last line, unless there was none.
            if self.error is None and not (was_first and end == 0):
                content += b"\r\n"
                self._count(2)
            rest = bytes(buf[end + 5 :])
            self._buf = bytearray()
            return (b"" if self.error is not None else content), rest
        cut = buf.rfind(b"\r\n")
        content = b""
        if cut > 0:
            content = self._take(cut)
            del buf[:cut]
        if len(buf) > self.max_line + 1:
            # A line longer than the limit, its end not yet seen: refuse the message and
            # keep only the bytes that could begin the terminator, so memory stays bounded.
            self._fail(replies.DATA_LINE_TOO_LONG)
            del buf[: len(buf) - 4]
        return content, None

    def _take(self, upto: int) -> bytes:
        """Content of the buffer before `upto`; the buffer starts with a line's CRLF."""
        if self.error is not None:
            return b""
        seg = bytes(self._buf[:upto])
        if len(seg) >= self.max_line and _longest_line(seg) > self.max_line - 1:
            self._fail(replies.DATA_LINE_TOO_LONG)
            return b""
        # Unstuff first, so that only lines ended by a real CRLF lose their leading dot;
        # a bare-LF line "." stays content.
        seg = seg.replace(b"\r\n.", b"\r\n")
        crlf = seg.count(b"\r\n")
        if seg.count(b"\r") != crlf or seg.count(b"\n") != crlf:
            if self.bare_newlines == "reject":
                self._fail(replies.DATA_BARE_LF)
                return b""
            seg = _ANY_NEWLINE.sub(b"\r\n", seg)
        if self._first:
            seg = seg[2:]
            self._first = False
        self._count(len(seg))
        return b"" if self.error is not None else seg

    def _count(self, n: int) -> None:
        self.size += n
        if self.size > self.max_size:
            self._fail(replies.SIZE_EXCEEDED)

    def _fail(self, reply: Reply) -> None:
        if self.error is None:
            self.error = reply


def _longest_line(seg: bytes) -> int:
    """Longest line in `seg`, counting one octet of line end (the CR, or a bare LF).

    `seg` is followed by a CRLF, so its last run counts one octet for that CR.
    """
    longest = 0
    pos = 0
    find = seg.find
    while True:
        nxt = find(b"\n", pos)
        if nxt == -1:
            return max(longest, len(seg) - pos + 1)
        longest = max(longest, nxt - pos)
        pos = nxt + 1


def dot_stuff(content: bytes) -> bytes:
    """Content ready to send after DATA: CRLF line ends, leading dots doubled, terminator.

    Bare CR and LF become CRLF so that no receiver can be smuggled a terminator.
    """
    if content.count(b"\r") != content.count(b"\n") or content.count(b"\r\n") != content.count(
        b"\n"
    ):
        content = _ANY_NEWLINE.sub(b"\r\n", content)
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    body = content.replace(b"\r\n.", b"\r\n..")
    if body.startswith(b"."):
        body = b"." + body
    return body + b".\r\n"
