"""What a test needs from the machine, said once.

`need_tool("swaks")` returns the tool's path. When the tool is missing, a local run
skips the test with a sentence naming the tool and the Debian package that brings it;
under CI (`CI` set to anything but "" or "false") a missing tool fails the test,
because `.ci/run` installs everything and a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["in_ci", "need", "need_tool"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need(ok: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) unless `ok`; `what` names what is missing."""
    if ok:
        return
    message = f"{what} (.ci/run installs it)"
    if in_ci():
        pytest.fail(f"missing in CI: {message}", pytrace=False)
    pytest.skip(f"needs {message}")


def need_tool(name: str, package: str | None = None, *, path: str | None = None) -> str:
    """The path of the program `name` (or the fixed `path`), else skip/fail naming it."""
    found = path if path is not None and Path(path).exists() else None
    if path is None:
        found = shutil.which(name)
    need(found is not None, f"{name} (Debian package {package or name})")
    assert found is not None
    return found
