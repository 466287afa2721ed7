"""The `mailgate` command: parse arguments, call the library, print.

Each group of commands lives in its own module; importing them registers them on
`main`. Imports of anything heavy happen inside the commands, so that `mailgate
explain` does not pay for the server or the web stack.

The command modules (and click) are imported when `main` is first asked for, not when
the package is: `mailgate-sendmail` (`mailgate.cli.sendmail`), which cron jobs and PHP's
`mail()` start once per message, needs none of them, and importing them cost it about
35 ms a message.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailgate.cli._common import EXIT_USAGE, default_lang, fail, main

__all__ = ["EXIT_USAGE", "default_lang", "fail", "main"]

_COMMANDS = ("admin", "codes", "diag", "dkim", "queue", "run", "users")


def __getattr__(name: str) -> Any:
    """`main` and its helpers, with every command registered on it (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in _COMMANDS:
        importlib.import_module(f"{__name__}.{module}")  # registers its commands
    common = importlib.import_module(f"{__name__}._common")
    value = getattr(common, name)
    globals()[name] = value  # asked once
    return value
