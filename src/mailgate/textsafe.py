"""Text from strangers made safe for a terminal and for a log file.

A client chooses its HELO name, its addresses, its DSN ENVID, its AUTH user name and the
headers of its message; a remote server chooses the text of its replies. Written raw to
an admin's terminal, an ESC or a C1 control there is a command to the terminal (set the
window title, rewrite the screen, on some terminals answer back), and a CR or LF in a
log line forges another line. `printable` shows every such character instead as the
escape a Python string literal would use (`\\x1b`, `\\r`, `\\u202e`), so it can be read
and never acts.
"""

from __future__ import annotations

import logging
import re

__all__ = ["JSONFormatter", "SafeFormatter", "json_printable", "printable"]

# C0 controls, DEL, C1 controls, and the Unicode bidirectional overrides and isolates
# (which reorder what follows them on screen, "Trojan Source").
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _show(match: re.Match[str]) -> str:
    c = match.group()
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"


def printable(text: str, *, keep: str = "") -> str:
    """`text` with each control character shown as an escape; those in `keep` (say
    "\\t" or "\\t\\n") stay as they are."""
    if not keep:
        return _UNSAFE.sub(_show, text)
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _show(m), text)


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def json_printable(document: str) -> str:
    """JSON text (from json.dumps with ensure_ascii=False) with the controls JSON leaves
    raw (DEL, C1, bidi) written as \\u escapes: the same JSON, safe on a terminal."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", document)


class SafeFormatter(logging.Formatter):
    """A Formatter whose every line is printable: the message (with its arguments, where
    client strings go) on one line, tracebacks with their own line breaks only."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record), keep="\t")

    def formatException(self, ei: object) -> str:
        return printable(super().formatException(ei), keep="\t\n")  # type: ignore[arg-type]

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), keep="\t\n")


class JSONFormatter(logging.Formatter):
    """One JSON object per line (`--log-format json`): time (RFC 3339, UTC), level,
    logger, pid, message, and the traceback as `exc` when there is one. Client strings
    in the message are JSON-escaped, so none breaks the line or the terminal."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime
        import json

        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        doc: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json_printable(json.dumps(doc, ensure_ascii=False))
