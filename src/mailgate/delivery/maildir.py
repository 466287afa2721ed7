"""Maildir delivery: write to tmp/, fsync, rename into new/, fsync the folder.

One Maildir per recipient address: `data_dir/maildir/<domain>/<local-part>/{tmp,new,cur}`.
File names follow the Maildir convention (`time.M<usec>P<pid>Q<n>.<host>,S=<size>`), unique
per process and per delivery. A delivery counts only once the rename and the directory
fsync have returned: that is when the queue may mark the recipient delivered.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import socket
import stat
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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Dirs:
    """Directory descriptors opened one component at a time, never through a link.

    A link anywhere under the Maildir root (maildir/localhost/bob -> /etc, bob/new ->
    elsewhere), planted by whoever could write there or left by a mistake, would
    otherwise make mailgate write where it points. Each component is opened with
    O_NOFOLLOW relative to its parent's descriptor, so what was checked is what is
    written to; a missing one is made 0700 with mkdir relative to the parent too."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: list[int] = []
        self.created: list[int] = []  # parents of new directories, to fsync

    def __enter__(self) -> _Dirs:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def open_root(self) -> int:
        # The data directory is the admin's choice (it may be a link); `maildir` in it
        # and everything below is mailgate's own and is not.
        parent = os.open(self.root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.fds.append(parent)
        return self.sub(parent, self.root.name, self.root)

    def sub(self, parent: int, name: str, shown: Path) -> int:
        for _ in range(2):
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # another worker made it
                    os.mkdir(name, 0o700, dir_fd=parent)
                    self.created.append(parent)
                continue
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(
                        parent, name):
                    raise MaildirError(
                        errno.ELOOP, f"{shown} is a symbolic link; mailgate does not follow "
                        "links in the Maildir tree") from exc
                raise
            self.fds.append(fd)
            return fd
        raise MaildirError(errno.ENOENT, f"{shown} vanished while being created")


def _is_link(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode)
    except OSError:
        return False


def _write(tmp_fd: int, new_fd: int, name: str, content: bytes) -> None:
    """tmp/name, written and synced, then renamed into new/ and new/ synced."""
    fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=tmp_fd)
    try:
        try:
            view = memoryview(content)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(name, name, src_dir_fd=tmp_fd, dst_dir_fd=new_fd)
    except OSError:
        # A partial file would hold on to the space a full disk needs back, and each
        # retry would leave another one.
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=tmp_fd)
        raise
    os.fsync(new_fd)


def deliver(root: Path, address: str, content: bytes, hostname: str | None = None) -> Path:
    """Write `content` into the recipient's Maildir durably; return the file in new/.

    Raises MaildirError (the recipient is deferred) when it cannot, among others when a
    component of the path under `root` is a symbolic link."""
    box = mailbox_path(root, address)
    domain, local = box.parent.name, box.name
    host = (hostname or socket.gethostname()).replace("/", "\\057").replace(":", "\\072")
    now = time.time()
    name = f"{int(now)}.M{int((now % 1) * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"
    name += f",S={len(content)}"
    try:
        with _Dirs(root) as dirs:
            top = dirs.open_root()
            domain_fd = dirs.sub(top, domain, box.parent)
            box_fd = dirs.sub(domain_fd, local, box)
            tmp_fd, new_fd, _ = (dirs.sub(box_fd, sub, box / sub)
                                 for sub in ("tmp", "new", "cur"))
            for parent in dirs.created:
                os.fsync(parent)
            _write(tmp_fd, new_fd, name, content)
    except MaildirError:
        raise
    except OSError as exc:
        raise MaildirError(exc.errno or 0, f"cannot deliver to {box}: {exc.strerror}") from exc
    return box / "new" / name
