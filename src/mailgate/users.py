"""AUTH users: names and scrypt password hashes in `data_dir/users.json`.

Passwords are never stored, only `scrypt` hashes (RFC 7914; n=2**14, r=8, p=1, a 16-byte
salt), compared in constant time. The file is rewritten atomically (temp file, fsync,
rename) and readable by its owner only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path

from mailgate.secretfile import write_private_json

__all__ = ["UserDB", "UserError"]

_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
_NAME_RE = re.compile(r"[A-Za-z0-9._@+-]{1,64}\Z")


class UserError(ValueError):
    """A bad user name or password, or an unknown user; the message says which."""


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN,
                          maxmem=64 * 1024 * 1024)


class UserDB:
    """The user database of one data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, str] = {}
        self._mtime: float | None = None
        self._load()

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._users, self._mtime = {}, None
            return
        if st.st_mtime == self._mtime:
            return
        data = json.loads(self.path.read_text(encoding="utf-8"))
        self._users = {str(k): str(v) for k, v in data.get("users", {}).items()}
        self._mtime = st.st_mtime

    def _save(self) -> None:
        write_private_json(self.path, {"users": self._users})
        self._mtime = self.path.stat().st_mtime

    def reload(self) -> None:
        """Read the file again even if its modification time looks unchanged."""
        self._mtime = None
        self._load()

    def names(self) -> list[str]:
        self._load()
        return sorted(self._users)

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and name.lower() in self._users

    def set_password(self, name: str, password: str) -> None:
        if not _NAME_RE.match(name):
            raise UserError(
                f"user name {name!r} is not allowed: use 1 to 64 letters, digits and . _ @ + -"
            )
        if len(password) < 8:
            raise UserError("the password is too short: use at least 8 characters.")
        self._load()
        salt = secrets.token_bytes(16)
        digest = _hash(password, salt)
        salt_b64, digest_b64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
        self._users[name.lower()] = f"scrypt${_N}${_R}${_P}${salt_b64}${digest_b64}"
        self._save()

    def delete(self, name: str) -> None:
        self._load()
        if self._users.pop(name.lower(), None) is None:
            raise UserError(f"there is no user {name!r}.")
        self._save()

    def verify(self, name: str, password: str) -> bool:
        """True when the password is right; slow on purpose (scrypt), even for no user."""
        self._load()
        stored = self._users.get(name.lower())
        if stored is None:
            _hash(password, b"\0" * 16)  # same cost whether or not the user exists
            return False
        try:
            _, n, r, p, salt_b64, digest_b64 = stored.split("$")
            salt, digest = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
            got = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=int(n), r=int(r),
                                 p=int(p), dklen=len(digest), maxmem=64 * 1024 * 1024)
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(got, digest)
