"""Helpers for the tests that talk to a live mailgate over real sockets.

A raw line-level SMTP client (`Wire`) for conversations no library would hold (pipelined
STARTTLS injection, smuggling, slow or idle clients), a TLS context that accepts the
self-signed certificate, waiting for Maildir files, a config that keeps every lookup
and every outbound attempt on loopback, and a parser for what local delivery writes
(`Return-Path:` + `Received:` + the message as the client sent it).
"""

from __future__ import annotations

import dataclasses
import re
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mailgate.config import Config, DNSConfig, Relayhost
from tests.support.live import live_config

__all__ = [
    "DEAD_PORT",
    "Delivered",
    "Wire",
    "loopback_config",
    "parse_delivered",
    "unverified_context",
    "wait_for_files",
    "wait_until",
]

T = TypeVar("T")

# Nothing listens on port 1 of loopback: DNS queries and outbound SMTP attempts sent there
# fail at once, and no traffic ever leaves the machine.
DEAD_PORT = 1


def loopback_config(data_dir: Path, **changes: Any) -> Config:
    """`live_config`, with DNS and outbound delivery pointed at a dead loopback port."""
    config = live_config(data_dir, dns=DNSConfig(nameservers=(("127.0.0.1", DEAD_PORT),)),
                         **changes)
    delivery = dataclasses.replace(
        config.delivery, relayhost=Relayhost("127.0.0.1", DEAD_PORT, mx_lookup=False))
    return dataclasses.replace(config, delivery=delivery)


def unverified_context() -> ssl.SSLContext:
    """A client context that accepts mailgate's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 10.0,
               interval: float = 0.02) -> T:
    """Poll `check` until it returns something other than None/False; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_for_files(folder: Path, n: int, timeout: float = 10.0) -> list[Path]:
    """The files in `folder` once there are at least `n` of them."""

    def files() -> list[Path] | None:
        found = sorted(folder.glob("*")) if folder.is_dir() else []
        return found if len(found) >= n else None

    return wait_until(f"{n} file(s) in {folder}", files, timeout)


_RECEIVED = re.compile(
    rb"Received: from (?P<helo>\S+) \(\[(?P<ip>[^\]]+)\]\)\r\n"
    rb"(?:\t\(using (?P<tls>[^)]*)\)\r\n)?"
    rb"\tby (?P<host>\S+) \(mailgate\) with (?P<proto>[A-Z]+) id (?P<qid>[0-9a-f]+)"
    rb"(?:\r\n\tfor <(?P<rcpt>[^>]*)>)?;\r\n"
    rb"\t[^\r\n]+\r\n"
)


@dataclasses.dataclass(frozen=True)
class Delivered:
    """A Maildir file split into what mailgate added and what the client sent."""

    return_path: str
    helo: str
    proto: str
    queue_id: str
    tls: str | None
    rcpt: str | None
    content: bytes


def wire_form(data: bytes) -> bytes:
    """A Maildir file's bytes (LF line ends, docs/delivery.md) back in the form the
    queue and the wire have them, CRLF; AssertionError if the file has CRLF itself."""
    assert b"\r\n" not in data, f"a Maildir file with CRLF line ends: {data[:200]!r}"
    return data.replace(b"\n", b"\r\n")


def parse_delivered(data: bytes) -> Delivered:
    """Split a delivered file; AssertionError when the trace headers are not as expected.

    Maildir files have LF line ends (docs/delivery.md); `content` is given back in the
    wire form, CRLF, as the client sent it."""
    data = wire_form(data)
    first, sep, rest = data.partition(b"\r\n")
    assert sep and first.startswith(b"Return-Path: <") and first.endswith(b">"), data[:200]
    m = _RECEIVED.match(rest)
    assert m is not None, f"no Received: header as mailgate writes it in {rest[:300]!r}"
    tls = m.group("tls")
    rcpt = m.group("rcpt")
    return Delivered(
        return_path=first[len(b"Return-Path: <"):-1].decode(),
        helo=m.group("helo").decode(),
        proto=m.group("proto").decode(),
        queue_id=m.group("qid").decode(),
        tls=tls.decode() if tls is not None else None,
        rcpt=rcpt.decode() if rcpt is not None else None,
        content=rest[m.end():],
    )


class Wire:
    """A raw SMTP client socket: send bytes, read whole replies, see the server close."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0,
                 tls: bool = False, source: str | None = None) -> None:
        self.timeout = timeout
        self.sock: socket.socket = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source, 0) if source is not None else None)
        if tls:
            self.sock = unverified_context().wrap_socket(self.sock)
        self.buffer = bytearray()
        self.eof = False

    @classmethod
    def from_socket(cls, sock: socket.socket, timeout: float = 5.0) -> Wire:
        """A Wire around a socket that is already connected."""
        w = cls.__new__(cls)
        w.timeout, w.sock, w.buffer, w.eof = timeout, sock, bytearray(), False
        return w

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> bool:
        """Read once; False on timeout, sets `eof` when the server closed."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""
        finally:
            self.sock.settimeout(self.timeout)
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def line(self, timeout: float | None = None) -> str:
        """One line the server sent, without its CRLF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            crlf = self.buffer.find(b"\r\n")
            if crlf != -1:
                raw = bytes(self.buffer[:crlf])
                del self.buffer[: crlf + 2]
                return raw.decode("utf-8", "replace")
            left = deadline - time.monotonic()
            if self.eof or left <= 0 or not self._fill(left):
                if self.eof:
                    raise ConnectionError(f"the server closed the connection; "
                                          f"unread: {bytes(self.buffer)!r}")
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no complete line from the server within the "
                                       f"timeout; unread: {bytes(self.buffer)!r}")

    def reply(self, timeout: float | None = None) -> str:
        """One whole reply (all lines of a multi-line one), lines joined with \\n."""
        lines = [self.line(timeout)]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self.line(timeout))
        return "\n".join(lines)

    def cmd(self, line: str) -> str:
        """Send a command line, return its reply."""
        self.send(line.encode("utf-8") + b"\r\n")
        return self.reply()

    def greeting(self) -> str:
        return self.reply()

    def ehlo(self, name: str = "client.test") -> str:
        reply = self.cmd(f"EHLO {name}")
        assert reply.startswith("250"), reply
        return reply

    def starttls(self) -> None:
        """Wrap the socket in TLS (after the server's 220 to STARTTLS)."""
        assert not self.buffer, f"the server sent more than its 220: {bytes(self.buffer)!r}"
        self.sock = unverified_context().wrap_socket(self.sock)

    def closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (within `timeout`)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._fill(left)
        return True

    def pending(self, timeout: float = 0.2) -> bytes:
        """Whatever the server has sent (waiting up to `timeout` for something)."""
        self._fill(timeout)
        out = bytes(self.buffer)
        self.buffer.clear()
        return out
