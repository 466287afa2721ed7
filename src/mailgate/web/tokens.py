"""API tokens for the admin JSON API, kept in `data_dir/admin-tokens.json` (mode 0600).

`mailgate admin token` makes one and prints it once; only its SHA-256 is stored. A
token is `mgt_<id>_<secret>`: the id (8 hex digits) names it in listings and for
revoking, the secret is 256 random bits, so a plain hash is as good as a slow one
(nobody can guess their way through 2**256 secrets) and checking one costs microseconds.
The web process rereads the file when it changes, so a new or revoked token counts at once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mailgate.secretfile import write_private_json

__all__ = ["TokenInfo", "TokenStore"]

_TOKEN_RE = re.compile(r"mgt_([0-9a-f]{8})_[A-Za-z0-9_-]{20,100}\Z")


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    name: str
    created: float


class TokenStore:
    """The API tokens of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "admin-tokens.json"
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._tokens: dict[str, dict[str, object]] = {}

    def _load(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._tokens = None, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            tokens = data["tokens"]
            if not isinstance(tokens, dict):
                raise TypeError("tokens is not a table")
        except (OSError, ValueError, KeyError, TypeError):
            tokens = {}  # unreadable: no token is valid (fail closed)
        self._tokens = {str(k): v for k, v in tokens.items() if isinstance(v, dict)}
        self._stamp = stamp

    def _save(self) -> None:
        write_private_json(self.path, {"tokens": self._tokens})
        self._stamp = None

    def create(self, name: str = "") -> tuple[TokenInfo, str]:
        """Make a token; return its description and the token itself (shown once)."""
        with self._lock:
            self._load()
            while True:
                token_id = secrets.token_hex(4)
                if token_id not in self._tokens:
                    break
            token = f"mgt_{token_id}_{secrets.token_urlsafe(32)}"
            created = time.time()
            self._tokens[token_id] = {
                "name": name,
                "sha256": hashlib.sha256(token.encode()).hexdigest(),
                "created": created,
            }
            self._save()
        return TokenInfo(token_id, name, created), token

    def entries(self) -> list[TokenInfo]:
        """Every token (without its secret), oldest first."""
        with self._lock:
            self._load()
            infos = []
            for k, v in self._tokens.items():
                created = v.get("created", 0.0)
                infos.append(TokenInfo(k, str(v.get("name", "")),
                                       float(created) if isinstance(created, int | float) else 0.0))
        return sorted(infos, key=lambda t: t.created)

    def revoke(self, token_id: str) -> bool:
        """Remove a token by id; False when there is none."""
        with self._lock:
            self._load()
            if self._tokens.pop(token_id, None) is None:
                return False
            self._save()
            return True

    def verify(self, token: str) -> str | None:
        """The id of this token when it is valid, else None (constant time per token)."""
        m = _TOKEN_RE.match(token)
        if m is None:
            return None
        with self._lock:
            self._load()
            entry = self._tokens.get(m.group(1))
        if entry is None:
            return None
        digest = hashlib.sha256(token.encode()).hexdigest()
        stored = entry.get("sha256")
        if isinstance(stored, str) and hmac.compare_digest(digest, stored):
            return m.group(1)
        return None
