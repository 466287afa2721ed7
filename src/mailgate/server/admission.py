"""Who may open an SMTP connection: `limits.connections` in all, `limits.connections_per_ip`
from one address.

`Local` counts one process's connections. With `[server] workers = N` the workers
share a `siblings.Board` and `Shared` counts every worker's, so the limits stay the
server's and not N times them (docs/server.md).
"""

from __future__ import annotations

from typing import Protocol

from mailgate.siblings import Board

__all__ = ["Admission", "Local", "Shared"]


class Admission(Protocol):
    def admit(self, ip: str) -> str | None:
        """Count a new connection from `ip`; or why not: "limit" or "per_ip"."""

    def leave(self, ip: str) -> None:
        """A connection `admit` counted has ended."""

    @property
    def open(self) -> int:
        """The connections counted now (the stress timeouts read it)."""


class Local:
    """One process's connections."""

    def __init__(self, limit: int, per_ip: int) -> None:
        self.limit, self.per_ip = limit, per_ip
        self.open = 0
        self.by_ip: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        if self.open >= self.limit:
            return "limit"
        if self.by_ip.get(ip, 0) >= self.per_ip:
            return "per_ip"
        self.open += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        return None

    def leave(self, ip: str) -> None:
        self.open -= 1
        n = self.by_ip.get(ip, 1) - 1
        if n > 0:
            self.by_ip[ip] = n
        else:
            self.by_ip.pop(ip, None)


class Shared:
    """Every worker's connections, on the board they share."""

    def __init__(self, board: Board, limit: int, per_ip: int) -> None:
        self.board, self.limit, self.per_ip = board, limit, per_ip

    def admit(self, ip: str) -> str | None:
        return self.board.admit(ip, self.limit, self.per_ip)

    def leave(self, ip: str) -> None:
        self.board.leave(ip)

    @property
    def open(self) -> int:
        return self.board.open_connections()
