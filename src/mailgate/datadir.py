"""The data directory: owner-only, checked before the server says it is up.

Everything in it is private: the queue holds other people's mail, users.json and
admin*.json hold password hashes and the session secret, tls/ the private key. So the
directory is made 0700 and every file in it 0600, whatever the umask; a directory left
looser by an older mailgate or by hand is tightened at start, and the log says so.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "DataDirError", "StartupError", "owner_only",
           "prepare_data_dir"]

log = logging.getLogger("mailgate")

DIR_MODE = 0o700
FILE_MODE = 0o600


class StartupError(Exception):
    """`mailgate serve` cannot start; str() is one sentence naming what and why."""


class DataDirError(StartupError):
    """The data directory cannot be used."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot use the data directory {path}: {reason}.")
        self.path = path


def owner_only(path: Path) -> int | None:
    """Take group and other bits off `path` (not following a link); the old mode if that
    changed anything, else None."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return None
    old = stat.S_IMODE(st.st_mode)
    if old & 0o077 == 0:
        return None
    os.chmod(path, old & 0o700, follow_symlinks=False)
    return old


def prepare_data_dir(path: Path) -> None:
    """Create `path` (0700) or check it: a directory this process can write files in and
    fsync. Tightens a loose directory and the files and folders directly in it.

    Raises DataDirError naming the path and the reason."""
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    except FileExistsError:
        raise DataDirError(path, "it exists and is not a directory") from None
    except OSError as exc:
        raise DataDirError(path, exc.strerror or str(exc)) from exc
    if not path.is_dir():
        raise DataDirError(path, "it is not a directory")
    tightened: list[str] = []
    try:
        old = owner_only(path)
        if old is not None:
            tightened.append(f"{path} {old:04o} -> {old & 0o700:04o}")
        for entry in os.scandir(path):
            if entry.is_symlink():
                continue
            try:
                old = owner_only(Path(entry.path))
            except FileNotFoundError:
                # Gone since the listing: another worker's probe, a SQLite journal.
                continue
            if old is not None:
                tightened.append(f"{entry.name} {old:04o} -> {old & 0o700:04o}")
    except OSError as exc:
        raise DataDirError(path, exc.strerror or str(exc)) from exc
    if tightened:
        log.warning("data directory %s was readable by others; made owner-only: %s",
                    path, ", ".join(tightened))
    probe = path / f".probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.write(fd, b"mailgate\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataDirError(path, f"cannot write a file there ({exc.strerror or exc})") from exc
