"""SASL PLAIN and LOGIN for AUTH (RFC 4954, RFC 4616): the server's side of an exchange
and the responses the client writes.

No secret is logged or kept here beyond the exchange: the server's `Exchange` hands the
credentials to the session, which hands them to the shell's policy in an `AuthAttempt`.
"""

from __future__ import annotations

import base64
import binascii

from mailgate.codes.reply import Reply
from mailgate.smtp import replies as R

__all__ = ["Exchange", "encode", "plain_response"]

Credentials = tuple[str, str, str]
"""(authzid, username, password) as the client gave them."""


class Exchange:
    """One AUTH exchange on the server's side, after the AUTH command was accepted.

    `start()` is the first challenge when the command carried no initial response;
    `step(line)` takes each client line and returns the next challenge (bytes to send),
    the credentials, or the reply that ends the exchange unauthenticated.
    """

    __slots__ = ("_user", "mechanism")

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism  # "PLAIN" or "LOGIN"
        self._user: str | None = None  # LOGIN: the username, once given

    def start(self) -> bytes:
        if self.mechanism == "PLAIN":
            return b"334 \r\n"
        return b"334 VXNlcm5hbWU6\r\n"  # "Username:"

    def step(self, line: str, initial: bool = False) -> bytes | Credentials | Reply:
        """`initial`: the line is the AUTH command's initial response (`=` is empty)."""
        if line == "*":
            return R.AUTH_CANCELLED
        if initial and line == "=":
            decoded = b""
        else:
            try:
                decoded = base64.b64decode(line.encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError, ValueError):
                return R.AUTH_BAD_BASE64
        if self.mechanism == "PLAIN":
            parts = decoded.split(b"\0")
            if len(parts) != 3 or not parts[1]:
                return R.AUTH_MALFORMED
            return _credentials(parts[0], parts[1], parts[2])
        # LOGIN: username, then password
        if self._user is None:
            try:
                self._user = decoded.decode("utf-8")
            except UnicodeDecodeError:
                return R.AUTH_MALFORMED
            return b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
        return _credentials(b"", self._user.encode("utf-8"), decoded)


def _credentials(authzid: bytes, user: bytes, password: bytes) -> Credentials | Reply:
    try:
        return authzid.decode("utf-8"), user.decode("utf-8"), password.decode("utf-8")
    except UnicodeDecodeError:
        return R.AUTH_MALFORMED


def encode(text: str) -> str:
    """A client response: the UTF-8 of `text` in base64."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def plain_response(username: str, password: str) -> str:
    """PLAIN's initial response (RFC 4616), the authzid left empty."""
    return encode(chr(0) + username + chr(0) + password)
