"""Trace fields: counting the hops a message has made (RFC 5321 6.3, loop detection).

Every MTA prepends a `Received:` field (RFC 5321 4.4), so a message caught in a loop
carries more of them at each turn. A server refuses it once there are too many
(`554 5.4.6`, Postfix's hopcount_limit of 50). Counting is sans-I/O and streaming: the
content arrives in pieces of any size, and only the start of each header line is looked
at, so a message costs the same memory whatever its header section holds.

The same pass notes whether the message has a `Date:` and a `Message-ID:` field: a
submission server adds those a client left out (RFC 6409 8.2, 8.3; `missing_fields`).
"""

from __future__ import annotations

__all__ = ["HopCounter", "missing_fields"]

# Received fields are prepended, so a loop's are at the top: after this many header
# lines the count cannot grow by a loop any more, and counting stops.
MAX_LINES = 5000
_PREFIX = 11  # len(b"message-id:"), the longest name looked for


class HopCounter:
    """Feed a message's content in pieces; `hops` is its number of Received: fields."""

    __slots__ = ("_lines", "_partial", "done", "has_date", "has_message_id", "hops")

    def __init__(self) -> None:
        self.hops = 0
        self.has_date = False
        self.has_message_id = False
        self.done = False  # the header section ended (or MAX_LINES were seen)
        self._partial: bytes | None = None  # the start of a line cut by a piece's end
        self._lines = 0

    def feed(self, data: bytes) -> None:
        if self.done or not data:
            return
        pos = 0
        n = len(data)
        if self._partial is not None:
            end = data.find(b"\n")
            if end < 0:
                if len(self._partial) < _PREFIX + 1:
                    self._partial += data[: _PREFIX + 1 - len(self._partial)]
                return
            line = self._partial + data[: min(end, _PREFIX + 1)]
            length = len(self._partial) + end  # at least; only 0 and 1 matter exactly
            self._partial = None
            if self._line(line, length):
                return
            pos = end + 1
        while pos < n:
            end = data.find(b"\n", pos)
            if end < 0:
                self._partial = data[pos : pos + _PREFIX + 1]
                return
            if self._line(data[pos : min(end, pos + _PREFIX + 1)], end - pos):
                return
            pos = end + 1

    def _line(self, start: bytes, length: int) -> bool:
        """One header line (its first bytes, and its length without LF); True when done."""
        if length == 0 or (length == 1 and start == b"\r"):
            self.done = True  # the empty line: the body begins
            return True
        name = start[:_PREFIX].lower()
        if name.startswith(b"received:"):
            self.hops += 1
        elif name.startswith(b"date:"):
            self.has_date = True
        elif name == b"message-id:":
            self.has_message_id = True
        self._lines += 1
        if self._lines >= MAX_LINES:
            self.done = True
            return True
        return False


def missing_fields(seen: HopCounter, hostname: str, now: float | None = None) -> bytes:
    """The `Date:` and `Message-ID:` fields a submitted message lacks, ready to put at
    the top of it (RFC 6409 8.2, 8.3: the MSA may add them; many receivers refuse mail
    without a Message-ID). Nothing when the header section was too long to be read to
    its end: a field may be there, and a second Date would make the message invalid."""
    import email.utils
    import secrets
    import time

    if seen._lines >= MAX_LINES:
        return b""
    out = b""
    if not seen.has_date:
        when = time.time() if now is None else now
        out += f"Date: {email.utils.formatdate(when, localtime=True)}\r\n".encode()
    if not seen.has_message_id:
        ident = f"{int(time.time() * 1000):x}.{secrets.token_hex(8)}"
        out += f"Message-ID: <{ident}@{hostname}>\r\n".encode("utf-8", "surrogateescape")
    return out
