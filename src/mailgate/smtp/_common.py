"""What the server and the client session share: the NEED_DATA sentinel, the error for
a shell that uses a session wrongly, and how client text is quoted in a reply.

Both `smtp/server.py` and `smtp/client.py` import it (and export NEED_DATA and
ProtocolUsageError as their own), so neither session imports the other.
"""

from __future__ import annotations

import enum
import re
from typing import Final

__all__ = ["NEED_DATA", "NeedData", "ProtocolUsageError", "escape_controls"]


class ProtocolUsageError(RuntimeError):
    """The shell used the session wrongly (e.g. read an event before answering one)."""


class NeedData(enum.Enum):
    """A one-member enum, so that `ev is not NEED_DATA` narrows the type for mypy."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """Client text quoted in a reply, its control characters (C0, DEL, C1) as `\\xNN`.

    A CR or LF would break the reply (and the session with it); a NUL, ESC or NEL would
    go back to the client and on into logs and terminals.
    """
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
