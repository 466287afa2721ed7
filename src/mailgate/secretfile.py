"""Small files only the owner may read (users, admin password, API tokens)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_private_json"]


def write_private_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, fsync, rename) with mode 0600.

    A reader sees the old file or the new one, never half of either, and a crash leaves
    one of the two on disk.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # Not through a link planted at the temporary name; and 0600 even if a temporary
    # file left by a crash had another mode (O_CREAT's mode applies to new files only).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
