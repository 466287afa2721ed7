"""The ports `mailgate serve` listens on, and how many connections its descriptors allow.

Bound before anything else starts (as root, for ports below 1024, before privileges
are dropped; or checked once before the worker processes start), so a busy port is one
sentence naming the address, never a traceback from each worker.
"""

from __future__ import annotations

import logging
import resource
import socket
from dataclasses import dataclass

from mailgate.config import Config
from mailgate.datadir import StartupError

__all__ = ["Bound", "bind_all", "bind_socket", "check_ports", "connection_budget", "hostport"]

log = logging.getLogger("mailgate")


@dataclass
class Bound:
    """Sockets bound before `serve` starts (by root, before dropping it): the SMTP
    listeners in `config.listen` order, and the web page's (None: no web page)."""

    smtp: list[socket.socket]
    web: socket.socket | None

    def all(self) -> list[socket.socket]:
        return [*self.smtp, *([self.web] if self.web is not None else [])]


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port (not listening yet); StartupError naming the
    address and the reason if it cannot be."""
    where = hostport(host, port)
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {where}: {exc.strerror}.") from exc
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}.") from exc
    return sock


def check_ports(config: Config, reuse_port: bool) -> None:
    """Bind (and let go of) every address `serve` will listen on: before worker processes
    start, so a busy port is one clear error rather than one per worker."""
    for listener in config.listen:
        bind_socket(listener.host, listener.port, reuse_port).close()
    if config.web.enabled:  # one process serves the web page: its port is not shared
        bind_socket(config.web.host, config.web.port).close()


# Descriptors kept free of SMTP connections: the queue (database, WAL, readers), spool
# and Maildir files being written, outbound connections, DNS sockets, the web port.
_RESERVED_FDS = 256


def connection_budget(config: Config) -> int:
    """Raise the descriptor soft limit to the hard limit, and return how many SMTP
    connections fit in it: `limits.connections`, or fewer (logged) when the descriptors
    would run out first. Running out is worse than refusing: accept() fails for every
    port at once, web included, and nothing says why."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    except (OSError, ValueError) as exc:
        log.warning("cannot raise the open-file limit: %s", exc)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    outbound = config.delivery.concurrency
    room = int(soft) - _RESERVED_FDS - outbound
    wanted = config.limits.connections
    if room < wanted:
        budget = max(1, room)
        log.warning("only %d open files are allowed (ulimit -n): accepting at most %d SMTP "
                    "connections instead of limits.connections = %d", soft, budget, wanted)
        return budget
    return wanted


def bind_all(config: Config, workers: int = 1) -> list[Bound]:
    """Every socket `serve` listens on, bound now (as root, for ports below 1024): one
    `Bound` per worker process. With several workers each has SMTP sockets of its own,
    bound with SO_REUSEPORT, so the kernel spreads new connections evenly over them (one
    socket shared by every worker hands most of them to whichever wakes first); only
    sockets of the same user (root, which bound them) may join that group. The web
    page's socket goes to the first worker, which serves it (and delivers: it takes no
    SMTP connections, workers.py)."""
    made: list[socket.socket] = []
    try:
        out = []
        for index in range(workers):
            # With several workers the first delivers and listens on no SMTP port.
            smtp = [bind_socket(listener.host, listener.port, reuse_port=workers > 1)
                    for listener in config.listen] if workers == 1 or index > 0 else []
            made += smtp
            web = (bind_socket(config.web.host, config.web.port)
                   if config.web.enabled and index == 0 else None)
            if web is not None:
                made.append(web)
            out.append(Bound(smtp, web))
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return out
