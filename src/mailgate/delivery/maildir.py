"""Maildir delivery: write to tmp/, fsync, rename into new/, fsync the folder.

By default one Maildir per recipient address under mailgate's own data directory:
`data_dir/maildir/<domain>/<local-part>/{tmp,new,cur}`. A [maildir] entry puts a
domain's or an address's Maildir elsewhere, owned by someone else (`Mailbox`,
`mailbox_for`): a system user's `~/Maildir`, or a template like `/var/vmail/%d/%n`;
writing as that owner is the privileged helper's job (`delivery/helper.py`).

The file is what Dovecot, Postfix's `virtual` and mail readers expect: LF line ends
(the queue keeps CRLF, the wire form), mode 0600, and a name in Dovecot's form,
`time.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<size with CRLF>`, unique per process and
per delivery (S= is the file's size, W= the RFC 822 size an IMAP server reports, so
Dovecot need not read the file to know either). A delivery counts only once the rename
and the directory fsync have returned: that is when the queue may mark the recipient
delivered.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import pwd
import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from mailgate.config import MaildirOwner

__all__ = ["Mailbox", "MaildirError", "deliver", "deliver_to", "mailbox_for", "mailbox_path",
           "stored_form"]

_counter = itertools.count(1)
_SAFE = re.compile(r"[A-Za-z0-9._+-]")


class MaildirError(OSError):
    """A Maildir write failed; the message stays queued, unless `permanent` (there is
    no such mailbox: the recipient fails and the sender is told)."""

    permanent: bool = False


class NoMailbox(MaildirError):
    """The address names no mailbox mailgate may write (no such system user, root)."""

    permanent = True

    def __init__(self, why: str) -> None:
        super().__init__(errno.ENOENT, why)


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


@dataclass(frozen=True, slots=True)
class Mailbox:
    """Where one recipient's Maildir is, and whose it is.

    `base` is opened as it is (the administrator's choice: a home directory may be a
    link); each of `parts` below it is opened without following links and made 0700
    when missing. `uid`/`gid` None: the writing process's own."""

    base: Path
    parts: tuple[str, ...]
    uid: int | None = None
    gid: int | None = None
    user: str | None = None  # the owner's name, for its supplementary groups

    @property
    def path(self) -> Path:
        return self.base.joinpath(*self.parts)


def mailbox_for(owner: MaildirOwner | None, root: Path, address: str) -> Mailbox:
    """The Maildir of `address`: under `root` (mailgate's own tree) without a [maildir]
    entry, else as the entry says. NoMailbox when the entry names a system user that
    does not exist, or root."""
    local, _, domain = address.rpartition("@")
    if not local:
        local, domain = address, "localhost"
    local_safe, domain_safe = _safe(local.lower()), _safe(domain.lower())
    if owner is None:
        return Mailbox(root.parent, (root.name, domain_safe, local_safe))
    user = local.lower() if owner.system else owner.user
    uid, gid, home = owner.uid, owner.gid, None
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except (KeyError, UnicodeError, ValueError):
            raise NoMailbox(f"no system user {user!r} owns a mailbox here") from None
        uid, gid, home = entry.pw_uid, entry.pw_gid, entry.pw_dir
    if not uid or not gid:
        raise NoMailbox("mailgate never writes mail as root (uid or gid 0); alias the "
                        "address to a person")
    template = owner.path or "~/Maildir"
    if template.startswith("~/"):
        if not home or not home.startswith("/"):
            raise NoMailbox(f"the system user {user!r} has no home directory")
        base, rest = Path(home), template[2:]
    else:
        base, rest = Path("/"), template[1:]
    words = [w for w in rest.split("/") if w]
    parts = [w.replace("%d", "\0d").replace("%n", "\0n").replace("%%", "%") for w in words]
    filled = [p.replace("\0d", domain_safe).replace("\0n", local_safe) for p in parts]
    # Components before the first placeholder are the administrator's (followed as
    # they are); those from it on, and always the last, are mailgate's own.
    fixed = next((i for i, p in enumerate(parts) if "\0" in p), len(parts) - 1)
    fixed = max(0, min(fixed, len(parts) - 1))
    return Mailbox(base.joinpath(*filled[:fixed]), tuple(filled[fixed:]), uid, gid, user)


def stored_form(content: bytes) -> bytes:
    """The message as a Maildir file holds it: LF line ends (the queue keeps CRLF)."""
    return content.replace(b"\r\n", b"\n")


class _Dirs:
    """Directory descriptors opened one component at a time, never through a link.

    A link anywhere under the Maildir root (maildir/localhost/bob -> /etc, bob/new ->
    elsewhere), planted by whoever could write there or left by a mistake, would
    otherwise make mailgate write where it points. Each component is opened with
    O_NOFOLLOW relative to its parent's descriptor, so what was checked is what is
    written to; a missing one is made 0700 with mkdir relative to the parent too."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.fds: list[int] = []
        self.created: list[int] = []  # parents of new directories, to fsync

    def __enter__(self) -> _Dirs:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def open_base(self) -> int:
        # The base (the data directory, a home) is the admin's choice and may be a
        # link; everything below it is mailgate's own and is not.
        fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.fds.append(fd)
        return fd

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
    """Write `content` (as queued, CRLF) into the recipient's Maildir under `root`
    durably; return the file in new/.

    Raises MaildirError (the recipient is deferred) when it cannot, among others when a
    component of the path under `root` is a symbolic link."""
    return deliver_to(mailbox_for(None, root, address), content, hostname)


def deliver_to(box: Mailbox, content: bytes, hostname: str | None = None) -> Path:
    """Write `content` (as queued, CRLF) into the Maildir `box` durably, as the process
    is (the helper switches to the owner first); return the file in new/."""
    host = (hostname or socket.gethostname()).replace("/", "\\057").replace(":", "\\072")
    now = time.time()
    data = stored_form(content)
    name = f"{int(now)}.M{int((now % 1) * 1e6)}P{os.getpid()}Q{next(_counter)}.{host}"
    rfc822_size = len(data) + data.count(b"\n")  # each LF is CRLF on the wire
    name += f",S={len(data)},W={rfc822_size}"
    shown = box.base
    try:
        with _Dirs(box.base) as dirs:
            fd = dirs.open_base()
            for part in box.parts:
                shown = shown / part
                fd = dirs.sub(fd, part, shown)
            tmp_fd, new_fd, _ = (dirs.sub(fd, sub, shown / sub)
                                 for sub in ("tmp", "new", "cur"))
            for parent in dirs.created:
                os.fsync(parent)
            _write(tmp_fd, new_fd, name, data)
    except MaildirError:
        raise
    except OSError as exc:
        raise MaildirError(exc.errno or 0,
                           f"cannot deliver to {box.path}: {exc.strerror}") from exc
    return box.path / "new" / name
