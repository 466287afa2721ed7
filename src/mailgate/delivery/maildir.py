"""Maildir delivery: write to tmp/, fsync, rename into new/, fsync the folder.

One Maildir per recipient address: `data_dir/maildir/<domain>/<local-part>/{tmp,new,cur}`.
File names follow the Maildir convention (`time.M<usec>P<pid>Q<n>.<host>,S=<size>`), unique
per process and per delivery. A delivery counts only once the rename and the directory
fsync have returned: that is when the queue may mark the recipient delivered.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
import time
from pathlib import Path

__all__ = ["MaildirError", "deliver", "mailbox_path"]

_counter = itertools.count(1)
_SAFE = re.compile(r"[A-Za-z0-9._+-]")


class MaildirError(OSError):
    """A Maildir write failed; the message stays queued."""


def _safe(part: str) -> str:
    """A path component from an address part: no separators, no dot-files, no traversal."""
    out = "".join(
        c if _SAFE.match(c) else "".join(f"={b:02X}" for b in c.encode("utf-8")) for c in part
    )
    if out.startswith("."):
        out = "=2E" + out[1:]
    return out or "=00"


def mailbox_path(root: Path, address: str) -> Path:
    """`root/<domain>/<local-part>`, both lower-cased and made safe for the filesystem."""
    local, _, domain = address.rpartition("@")
    if not local:
        local, domain = address, "localhost"
    return root / _safe(domain.lower()) / _safe(local.lower())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure(box: Path) -> None:
    if (box / "new").is_dir():
        return
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    _fsync_dir(box)
    _fsync_dir(box.parent)


def deliver(root: Path, address: str, content: bytes, hostname: str | None = None) -> Path:
    """Write `content` into the recipient's Maildir durably; return the file in new/."""
    box = mailbox_path(root, address)
    host = (hostname or socket.gethostname()).replace("/", "\\057").replace(":", "\\072")
    now = time.time()
    name = f"{int(now)}.M{int((now % 1) * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"
    name += f",S={len(content)}"
    tmp = box / "tmp" / name
    created = False
    try:
        _ensure(box)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
        try:
            view = memoryview(content)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        final = box / "new" / name
        os.rename(tmp, final)
        created = False
        _fsync_dir(box / "new")
    except OSError as exc:
        if created:
            # A partial file would hold on to the space a full disk needs back, and each
            # retry would leave another one.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise MaildirError(exc.errno or 0, f"cannot deliver to {box}: {exc.strerror}") from exc
    return final
