"""Text from strangers made safe for a terminal and for a log file.

A client chooses its HELO name, its addresses, its DSN ENVID, its AUTH user name and the
headers of its message; a remote server chooses the text of its replies. Written raw to
an admin's terminal, an ESC or a C1 control there is a command to the terminal (set the
window title, rewrite the screen, on some terminals answer back), and a CR or LF in a
log line forges another line. `printable` shows every such character instead as the
escape a Python string literal would use (`\\x1b`, `\\r`, `\\u202e`), so it can be read
and never acts. (The log formatters that use it are in logformat.py: this module is
loaded by commands that have no logging to do, `mailgate queue list`.)
"""

from __future__ import annotations

import re

__all__ = ["json_printable", "printable"]

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
