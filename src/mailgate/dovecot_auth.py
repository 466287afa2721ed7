"""SMTP AUTH checked by Dovecot's auth service, as Postfix's `smtpd_sasl_type = dovecot`
does: one user database for IMAP and submission.

The Dovecot authentication protocol, version 1 (Dovecot's design notes, "Dovecot
Authentication Protocol"), over the auth-client Unix socket: lines of TAB-separated
fields ending in LF. Per check, one connection:

    C: VERSION 1 2 / CPID <pid>
    S: VERSION 1 x / MECH ... / SPID / CUID / COOKIE / DONE
    C: AUTH <id> PLAIN service=smtp nologin [secured] lip=.. rip=.. resp=<base64>
    S: OK <id> user=... | FAIL <id> [temp] [reason=...] | CONT <id> <base64>

mailgate always speaks PLAIN to Dovecot, whatever mechanism the SMTP client used
(LOGIN gives the same name and password): the secret crosses a local socket once.
Fields are checked for TAB, LF and NUL before they are sent, so a client cannot
smuggle a field of its own into the line; what comes back is bounded (a line of at
most 16 KiB, the whole exchange within `timeout` seconds).

`DovecotAuth.verify` answers True (right password), False (refused) or None (Dovecot
could not say: not running, a timeout, `FAIL temp`): the server then answers 454 4.7.0
and counts no failure against the client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import os
from pathlib import Path

__all__ = ["DovecotAuth"]

log = logging.getLogger("mailgate.auth")

MAX_LINE = 16384  # the protocol's own expectation (Dovecot's design notes)
MAX_HANDSHAKE_LINES = 64


class _Broken(Exception):
    """The conversation cannot go on: Dovecot said something we cannot use."""


class DovecotAuth:
    """Asks Dovecot's auth service whether a user name and password are right."""

    def __init__(self, socket_path: Path, timeout: float = 10.0, service: str = "smtp"
                 ) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.service = service
        self._ids = itertools.count(1)

    async def verify(self, username: str, password: str, *, authzid: str = "",
                     local_ip: str = "", remote_ip: str = "", secured: bool = False,
                     ) -> bool | None:
        if any(c in text for text in (username, password, authzid) for c in "\0"):
            return False  # PLAIN cannot carry a NUL inside a field (RFC 4616)
        fields = ["service=" + self.service, "nologin"]
        if secured:
            fields.append("secured")
        for name, value in (("lip", local_ip), ("rip", remote_ip)):
            if value and _clean(value):
                fields.append(f"{name}={value}")
        resp = base64.b64encode(
            f"{authzid}\0{username}\0{password}".encode("utf-8", "surrogateescape")).decode()
        request_id = next(self._ids)
        try:
            return await asyncio.wait_for(self._ask(request_id, fields, resp, username),
                                          self.timeout)
        except TimeoutError:
            log.error("Dovecot auth at %s did not answer within %g s", self.socket_path,
                      self.timeout)
        except OSError as exc:
            log.error("cannot reach Dovecot auth at %s: %s", self.socket_path,
                      exc.strerror or exc)
        except _Broken as exc:
            log.error("Dovecot auth at %s: %s", self.socket_path, exc)
        return None

    async def _ask(self, request_id: int, fields: list[str], resp: str, username: str
                   ) -> bool | None:
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path),
                                                            limit=MAX_LINE)
        try:
            writer.write(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
            mechanisms = await _handshake(reader)
            if "PLAIN" not in mechanisms:
                raise _Broken("it does not offer PLAIN (auth_mechanisms in dovecot.conf)")
            line = "\t".join(["AUTH", str(request_id), "PLAIN", *fields, "resp=" + resp])
            writer.write(line.encode() + b"\n")
            await writer.drain()
            while True:
                words = await _line(reader)
                if len(words) < 2 or words[1] != str(request_id):
                    raise _Broken(f"an answer to no request: {words[:2]}")
                verb, params = words[0], _params(words[2:])
                if verb == "OK":
                    return True
                if verb == "FAIL":
                    if "temp" in params:
                        log.error("Dovecot auth failed temporarily for %s: %s", username,
                                  params.get("reason", "no reason given"))
                        return None
                    return False
                if verb == "CONT":
                    raise _Broken("it asked PLAIN for more (CONT)")
                raise _Broken(f"an unknown answer {verb[:20]!r}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _handshake(reader: asyncio.StreamReader) -> set[str]:
    """Read the server's handshake up to DONE; its mechanisms."""
    mechanisms: set[str] = set()
    for _ in range(MAX_HANDSHAKE_LINES + 1):
        words = await _line(reader)
        if words[0] == "VERSION":
            if len(words) < 2 or words[1] != "1":
                raise _Broken(f"protocol version {words[1:2]} (mailgate speaks 1)")
        elif words[0] == "MECH" and len(words) > 1:
            mechanisms.add(words[1].upper())
        elif words[0] == "DONE":
            return mechanisms
    raise _Broken("a handshake without end")


async def _line(reader: asyncio.StreamReader) -> list[str]:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise _Broken("it closed the connection") from None
    except asyncio.LimitOverrunError:
        raise _Broken(f"a line longer than {MAX_LINE} octets") from None
    return [_unescape(w) for w in raw[:-1].decode("utf-8", "replace").split("\t")]


def _params(words: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for word in words:
        name, _, value = word.partition("=")
        out[name] = value
    return out


_ESCAPES = {"0": "\0", "1": "\x01", "t": "\t", "r": "\r", "n": "\n", "l": "\n"}


def _unescape(word: str) -> str:
    """Dovecot's tab-escaping: \\x01 then a letter."""
    if "\x01" not in word:
        return word
    out, chars = [], iter(word)
    for c in chars:
        if c == "\x01":
            after = next(chars, "")
            out.append(_ESCAPES.get(after, after))
        else:
            out.append(c)
    return "".join(out)


def _clean(value: str) -> bool:
    """A field value safe to send as it is: printable, no TAB, LF, CR or \\x01."""
    return value.isprintable() and not any(c in value for c in "\t\r\n\x01")
