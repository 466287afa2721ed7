"""The Authentication-Results header field (RFC 8601): written, and forgeries removed.

`results_header` writes the one field mailgate adds: its authserv-id (the server's host
name), then one result per method, each on its own folded line. Every value that came
from the message or from DNS is made safe first (RFC 2045 token, or a quoted string;
comments stripped of parentheses, control characters and non-ASCII).

`ResultsFilter` removes, while the message streams in, any Authentication-Results field
that already claims mailgate's authserv-id (RFC 8601 5: a verdict only this server may
write); fields of other servers stay. It holds at most one field in memory
(`MAX_FIELD`): a longer field is passed on unchanged, being no field this server wrote.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["MAX_FIELD", "ResultsFilter", "authserv_id_of", "comment", "results_header",
           "value"]

MAX_FIELD = 64 * 1024
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+\Z")
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]*@?[A-Za-z0-9.-]+\Z")
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def value(text: str) -> str:
    """A property value: as it is when it is a token or address, else quoted."""
    text = _UNSAFE.sub("", text)[:255]
    if text and (_TOKEN.match(text) or _ADDRESS.match(text)):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str) -> str:
    """` (text)`, or "" for none: no parentheses or backslashes inside, at most 120
    characters."""
    text = _UNSAFE.sub(" ", text).replace("(", "[").replace(")", "]").replace("\\", "/")
    text = " ".join(text.split())[:120]
    return f" ({text})" if text else ""


def results_header(authserv_id: str, results: Sequence[str]) -> bytes:
    """`Authentication-Results: <id>;\\r\\n\\t<result>;...` (or `; none` for no result)."""
    body = ";\r\n\t".join(results) if results else "none"
    return f"Authentication-Results: {authserv_id};\r\n\t{body}\r\n".encode("ascii")


def authserv_id_of(field_value: str) -> str:
    """The authserv-id an Authentication-Results value starts with, lower-cased."""
    text = field_value
    while True:
        text = text.lstrip(" \t\r\n")
        if not text.startswith("("):
            break
        depth, i = 0, 0
        for i, ch in enumerate(text):  # noqa: B007 - i is used after the loop
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
        text = text[i + 1:]
    if text.startswith('"'):
        end = text.find('"', 1)
        return text[1:end if end > 0 else None].lower()
    return re.split(r"[\s;(]", text, maxsplit=1)[0].lower()


class ResultsFilter:
    """Feed the message in pieces; what comes out lacks the fields forged with our id."""

    __slots__ = ("_field", "_line", "_passing", "authserv_id", "done", "removed")

    def __init__(self, authserv_id: str) -> None:
        self.authserv_id = authserv_id.lower()
        self.done = False  # the header section ended: the rest passes as it is
        self.removed = 0
        self._field = bytearray()  # the current field's complete lines
        self._line = bytearray()  # a line cut by the end of a piece
        self._passing = False  # the current field was too long to hold: it passes

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        out = bytearray()
        pos, n = 0, len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) + len(self._field) > MAX_FIELD:
                    out += self._field + self._line
                    self._field.clear()
                    self._line.clear()
                    self._passing = True
                break
            line: bytes = bytes(self._line) + data[pos:nl + 1]
            self._line.clear()
            pos = nl + 1
            if line in (b"\r\n", b"\n"):  # the empty line: the body follows
                out += self._close() + line + data[pos:]
                self.done = True
                return bytes(out)
            if line[:1] in (b" ", b"\t"):  # a continuation of the current field
                if self._passing:
                    out += line
                    continue
                self._field += line
                if len(self._field) > MAX_FIELD:
                    out += self._field
                    self._field.clear()
                    self._passing = True
                continue
            out += self._close()
            self._passing = False
            self._field += line
        return bytes(out)

    def finish(self) -> bytes:
        """What is still held, at the end of a message that is all header section."""
        if self.done:
            return b""
        if bytes(self._line[:1]) in (b" ", b"\t") and not self._passing:
            self._field += self._line
            self._line.clear()
        out = self._close() + bytes(self._line)
        self._line.clear()
        self.done = True
        return out

    def _close(self) -> bytes:
        field = bytes(self._field)
        self._field.clear()
        name, colon, rest = field.partition(b":")
        if (colon and name.strip().lower() == b"authentication-results"
                and authserv_id_of(rest.decode("latin-1")) == self.authserv_id):
            self.removed += 1
            return b""
        return field
