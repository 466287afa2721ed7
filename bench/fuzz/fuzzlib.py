"""Shared pieces of the fuzz harnesses: invariant checks and the atheris entry point.

Every harness is a module with `one_input(data: bytes) -> None` that raises on a broken
invariant and returns otherwise. The input is plain bytes (a few header bytes choose
options, the rest is what the network would send), so the same files replay without
atheris: `tests/test_fuzz_corpus.py` does exactly that. atheris is imported only by
`main()`, which the harnesses call from their `__main__` block.

`MAILGATE_FUZZ_ALLOW` (comma-separated names) relaxes invariants that are known to fail
on the current code, so a long run can look past them; `run.sh` leaves it empty.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable

__all__ = ["FuzzFinding", "allowed", "check_replies", "controls", "main"]

# RFC 5321 4.2: code, then space or hyphen and text, or the bare code; we also refuse any
# NUL in the text (it ends strings in C clients and loggers).
_REPLY_LINE = re.compile(rb"[2-5][0-9][0-9](?:[ -][^\r\n\x00]*)?\Z")
# C0 controls, DEL and C1 controls: never legitimate in an address, an ENVID or a reply
# that reflects client input (C1 U+0085 is a line break to Python's str.splitlines()).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class FuzzFinding(AssertionError):
    """An invariant the harness checks did not hold; the message says which and why."""


def allowed(name: str) -> bool:
    """Is the invariant `name` relaxed for this run (MAILGATE_FUZZ_ALLOW)?"""
    return name in os.environ.get("MAILGATE_FUZZ_ALLOW", "").split(",")


def controls(text: str) -> list[str]:
    """The control characters (C0, DEL, C1) in `text`, in order."""
    return _CONTROL_RE.findall(text)


def check_replies(out: bytes, *, allow_controls: bool = True, allow_nul: bool = False) -> None:
    """`out` is a run of well-formed SMTP reply lines, each ended by CRLF.

    `allow_nul` is for replies a server sent, which mailgate keeps as they came.
    """
    if not out:
        return
    if not out.endswith(b"\r\n"):
        raise FuzzFinding(f"output does not end with CRLF: {out[-80:]!r}")
    for line in out[:-2].split(b"\r\n"):
        if not _REPLY_LINE.match(line.replace(b"\0", b" ") if allow_nul else line):
            raise FuzzFinding(f"malformed reply line: {line[:200]!r}")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FuzzFinding(f"reply line is not UTF-8: {line[:200]!r}") from exc
        if not allow_controls and controls(text):
            raise FuzzFinding(f"reply line carries control characters: {line[:200]!r}")


def main(module_name: str) -> None:
    """Fuzz `module_name.one_input` with atheris, mailgate instrumented for coverage.

    The harness that calls this was run as `__main__` and has imported mailgate without
    instrumentation; the mailgate modules are dropped and the harness is imported again,
    under its own name, inside atheris' import hook (regex matches are hooked too, so
    the fuzzer learns what the parsers' patterns want).
    """
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    atheris.enabled_hooks.add("RegEx")
    atheris.enabled_hooks.add("str")
    for name in [m for m in sys.modules if m == "mailgate" or m.startswith("mailgate.")]:
        del sys.modules[name]
    with atheris.instrument_imports(include=["mailgate", module_name]):
        module = importlib.import_module(module_name)
    one_input: Callable[[bytes], None] = module.one_input
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
