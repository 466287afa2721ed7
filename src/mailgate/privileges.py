"""Who `serve` runs as: root only to bind its ports and start the mailbox helper, then
an unprivileged user (docs/security.md).

- Started as root, `serve` runs as `server.user`, "mailgate" by default. It stays root
  only when told so in so many words (`user = "root"`): a server that parses what the
  whole Internet sends must not, by default, be able to write anywhere.
- Started as anyone else, it runs as that user; `server.user` naming another user is
  an error (only root can switch), naming this one is fine.
- Before the switch, the data directory and everything in it is given to that user
  (files made by root earlier, by an administrator's `mailgate queue ...` say, would
  otherwise be unwritable), without following links.

`target_user` decides, `own_data_dir` re-owns, `drop` switches for good: groups, gid,
then uid, and checks that root cannot be taken back.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from mailgate.config import Config
from mailgate.datadir import StartupError

__all__ = ["DEFAULT_USER", "RunAs", "drop", "own_data_dir", "target_user", "warn_root"]

log = logging.getLogger("mailgate")

DEFAULT_USER = "mailgate"


@dataclass(frozen=True, slots=True)
class RunAs:
    name: str
    uid: int
    gid: int


def target_user(config: Config, euid: int | None = None) -> RunAs | None:
    """The user to switch to once the ports are bound; None: stay as we are (not root,
    or root kept on purpose). StartupError when that cannot be."""
    euid = os.geteuid() if euid is None else euid
    wanted = config.server.user
    if euid != 0:
        if wanted is None:
            return None
        try:
            me = pwd.getpwuid(euid).pw_name
        except KeyError:
            me = str(euid)
        if wanted != me:
            raise StartupError(f"server.user is {wanted!r}, but mailgate was started as "
                               f"{me!r}, and only root can switch users; start it as root "
                               f"or as {wanted!r}, or leave server.user out.")
        return None
    name = wanted or DEFAULT_USER
    if name == "root":
        return None  # `run` warns once the ports are bound (`warn_root`)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise StartupError(
            f"mailgate was started as root and drops to the user {name!r} once its ports "
            f"are bound, but there is no such user; create it (useradd --system "
            f"--no-create-home --shell /usr/sbin/nologin {name}), or set server.user to "
            "another one.") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise StartupError(f"server.user {name!r} has uid or gid 0, which is root; name an "
                           "unprivileged user (or \"root\" to keep root on purpose).")
    return RunAs(name, entry.pw_uid, entry.pw_gid)


def warn_root() -> None:
    log.warning('running as root because server.user = "root": every bug in mailgate is '
                "then a bug with root's powers")


def own_data_dir(path: Path, user: RunAs) -> int:
    """Give `path` and everything under it to `user` (links themselves, never what they
    point to); the number of entries changed. Mailgate's own Maildir tree is in it."""
    changed = 0

    def own(p: str) -> None:
        nonlocal changed
        st = os.lstat(p)
        if st.st_uid != user.uid or st.st_gid != user.gid:
            os.chown(p, user.uid, user.gid, follow_symlinks=False)
            changed += 1

    try:
        own(str(path))
        for top, dirs, files in os.walk(path):  # os.walk does not enter linked folders
            for name in (*dirs, *files):
                own(os.path.join(top, name))
    except OSError as exc:
        raise StartupError(f"cannot give the data directory {path} to the user "
                           f"{user.name!r}: {exc.strerror or exc}.") from exc
    if changed:
        log.info("gave %d file(s) in %s to the user %s", changed, path, user.name)
    return changed


def drop(user: RunAs) -> None:
    """Become `user` for good (real, effective and saved ids); StartupError if root
    could be taken back afterwards."""
    code = _code_paths()  # sysconfig itself may be unreadable afterwards
    try:
        os.initgroups(user.name, user.gid)
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
    except OSError as exc:
        raise StartupError(f"cannot switch to the user {user.name!r}: "
                           f"{exc.strerror or exc}.") from exc
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - a kernel that lets this happen is broken
        raise StartupError("switched users, but root could be taken back; stopping.")
    os.environ["HOME"] = pwd.getpwuid(user.uid).pw_dir or "/"
    os.environ["USER"] = os.environ["LOGNAME"] = user.name
    for path in code:
        if not os.access(path, os.R_OK | os.X_OK):
            raise StartupError(
                f"now running as {user.name!r}, mailgate cannot read {path}, where its "
                "Python or its own code is (modules are loaded as they are needed); "
                "install it where every user can read it (like /opt/mailgate, not in "
                "root's home), or set server.user = \"root\".")


def _code_paths() -> list[str]:
    """Where the code `serve` may still import lives: the standard library, the
    installed packages, mailgate itself."""
    import sysconfig

    paths = sysconfig.get_paths()
    return [p for p in (paths.get("stdlib"), paths.get("purelib"),
                        os.path.dirname(os.path.abspath(__file__))) if p]
