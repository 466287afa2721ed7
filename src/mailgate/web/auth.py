"""The admin password and the session secret, kept in `data_dir/admin.json` (mode 0600).

The password is stored only as an scrypt hash (as AUTH users are). When none is set,
the first start generates one and prints it once; `mailgate admin set-password`
replaces it. The session secret signs the admin's session cookie; it is random, made
once, and changing the password changes it too, so every open session ends.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from mailgate.secretfile import write_private_json
from mailgate.users import UserDB

__all__ = ["AdminAuth"]


class AdminAuth:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "admin.json"
        self._users = UserDB(data_dir / "admin-password.json")
        self.session_secret = self._secret()

    def _secret(self) -> str:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            secret = str(data["session_secret"])
            if len(secret) >= 32:
                return secret
        except (OSError, ValueError, KeyError):
            pass
        return self._new_secret()

    def _new_secret(self) -> str:
        secret = secrets.token_urlsafe(32)
        write_private_json(self.path, {"session_secret": secret})
        return secret

    @property
    def has_password(self) -> bool:
        return "admin" in self._users

    def set_password(self, password: str) -> None:
        """Set the admin password (UserError if too short) and end every session."""
        self._users.set_password("admin", password)
        self.session_secret = self._new_secret()

    def ensure_password(self) -> str | None:
        """On first start: make a password and return it (to print once); else None."""
        if self.has_password:
            return None
        password = secrets.token_urlsafe(12)
        self.set_password(password)
        return password

    def verify(self, password: str) -> bool:
        return self._users.verify("admin", password)
