"""The mailbox helper: the one part of mailgate that keeps root, to write Maildirs as
their owners.

`serve` started as root binds its ports, forks this helper, and drops to its own user
(`privileges.py`). The server then cannot write a file as bob or vmail, and should not
be able to: it parses every byte the network sends. So a Maildir that a [maildir]
entry gives to another owner is written by the helper, as Postfix's `local` and
`virtual` do, on the server's request over a socket pair (docs/security.md):

- the request names only the recipient address and carries the content; where the
  Maildir is and whose it is, the helper works out from its own copy of the
  configuration, read before the fork. A server taken over can make the helper write
  messages into the mailboxes the configuration names, in Maildir form, and nothing
  else: no other path, never as root (uid or gid 0 is refused), never outside a local
  domain, and not mailgate's own tree (the server writes that itself);
- for each delivery the helper takes the owner's gid, groups and uid as its effective
  ids (seteuid, like Postfix's set_eugid), writes with the same code the server uses
  (`maildir.deliver_to`: no symbolic link followed below the base, files 0600), and
  returns to root; it is single-threaded, so nothing else runs meanwhile;
- a request is bounded: one header line of at most 4 KiB, content of at most the
  message size limit plus 1 MiB; anything else ends the helper's side, and the server
  defers the mail (the helper ends with the server, when its socket closes).

The exchange: `{"address": ..., "size": N, "hostname": ...}\\n` then N octets; the answer
`{"ok": true, "path": ...}\\n` or `{"ok": false, "errno": E, "why": ..., "permanent": P}\\n`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from mailgate.config import Config
from mailgate.delivery.maildir import (
    Mailbox,
    MaildirError,
    NoMailbox,
    deliver_to,
    mailbox_for,
)

__all__ = ["HelperClient", "start_helper"]

log = logging.getLogger("mailgate.local")

MAX_HEADER = 4096
REPLY_TIMEOUT = 300.0  # seconds for one delivery: a slow disk, a large message


class HelperClient:
    """The server's end: one delivery at a time (a lock), MaildirError when the helper
    refuses or has gone (the recipient is then deferred, or failed when permanent)."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._lock = threading.Lock()
        self._broken: str | None = None

    def deliver(self, address: str, content: bytes, hostname: str) -> Path:
        with self._lock:
            if self._broken is not None:
                raise MaildirError(errno.EPIPE, self._broken)
            try:
                return self._exchange(address, content, hostname)
            except (OSError, ValueError) as exc:
                if isinstance(exc, MaildirError):
                    raise
                self._broken = ("the mailbox helper has ended (restart mailgate to start "
                                f"it again): {exc}")
                with contextlib.suppress(OSError):
                    self.sock.close()
                raise MaildirError(errno.EPIPE, self._broken) from exc

    def _exchange(self, address: str, content: bytes, hostname: str) -> Path:
        head = json.dumps({"address": address, "size": len(content), "hostname": hostname})
        self.sock.settimeout(REPLY_TIMEOUT)
        self.sock.sendall(head.encode() + b"\n" + content)
        line = _read_line(self.sock, MAX_HEADER)
        answer = json.loads(line)
        if answer.get("ok"):
            return Path(str(answer["path"]))
        why = str(answer.get("why", "refused"))
        if answer.get("permanent"):
            raise NoMailbox(why)
        raise MaildirError(int(answer.get("errno", 0)), why)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _read_line(sock: socket.socket, limit: int) -> bytes:
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("the mailbox helper closed its socket")
        data += chunk
        if len(data) > limit:
            raise ValueError("an answer line too long")
    return bytes(data)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(1 << 20, size - len(data)))
        if not chunk:
            raise ConnectionError("the server closed its socket mid-message")
        data += chunk
    return bytes(data)


def start_helper(config: Config, close: Iterable[socket.socket] = ()) -> HelperClient:
    """Fork the helper (the caller is root) and return the server's end of its socket.
    `close` are sockets the helper must not keep (the listening ports)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # the helper
        status = 0
        try:
            ours.close()
            for sock in close:
                sock.close()
            _serve(config, theirs)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    theirs.close()
    return HelperClient(ours, pid)


def _serve(config: Config, sock: socket.socket) -> None:
    """The helper's loop: one request after the other, until the server goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the server's
    os.umask(0o077)
    os.chdir("/")
    limit = config.limits.message_size + (1 << 20)
    root = config.data_dir / "maildir"
    while True:
        try:
            head = json.loads(_read_line(sock, MAX_HEADER))
            address, size = str(head["address"]), int(head["size"])
            hostname = str(head.get("hostname") or config.hostname)
            if not 0 <= size <= limit:
                raise ValueError("content too large")
            content = _read_exact(sock, size)
        except (OSError, ValueError, KeyError, TypeError):
            return  # the server has gone, or speaks nonsense: stop either way
        try:
            path = _deliver(config, root, address, content, hostname)
        except MaildirError as exc:
            answer = {"ok": False, "errno": exc.errno or 0, "why": exc.strerror or str(exc),
                      "permanent": exc.permanent}
        except Exception as exc:  # never die on one message: the server defers it
            answer = {"ok": False, "errno": 0, "why": f"{type(exc).__name__}: {exc}",
                      "permanent": False}
        else:
            answer = {"ok": True, "path": str(path)}
        try:
            sock.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            return


def _deliver(config: Config, root: Path, address: str, content: bytes,
             hostname: str) -> Path:
    domain = address.rpartition("@")[2]
    owner = config.maildir_owner(address)
    if not config.domains.is_local(domain) or owner is None:
        raise MaildirError(errno.EPERM, f"{address} has no [maildir] entry; the mailbox "
                           "helper writes only the Maildirs that entries give an owner")
    box = mailbox_for(owner, root, address)
    return as_owner(box, lambda: deliver_to(box, content, hostname))


def as_owner(box: Mailbox, write: Callable[[], Path]) -> Path:
    """Run `write` with the owner's effective ids, then return to root."""
    uid, gid = box.uid, box.gid
    if not uid or not gid:
        raise NoMailbox("mailgate never writes mail as root")
    groups = os.getgrouplist(box.user, gid) if box.user else [gid]
    os.setgroups(groups)
    os.setegid(gid)
    os.seteuid(uid)
    try:
        return write()
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups([])
