"""The `mailgate` command: parse arguments, call the library, print.

Each group of commands lives in its own module; importing them registers them on
`main`. Imports of anything heavy happen inside the commands, so that `mailgate
explain` does not pay for the server or the web stack.
"""

from __future__ import annotations

from mailgate.cli import (  # noqa: F401  (registers commands)
    admin,
    codes,
    diag,
    dkim,
    queue,
    run,
    users,
)
from mailgate.cli._common import EXIT_USAGE, default_lang, fail, main

__all__ = ["EXIT_USAGE", "default_lang", "fail", "main"]
