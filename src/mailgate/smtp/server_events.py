"""What a `ServerSession` and its shell say to each other: the configuration it is
built with, the observer it reports to, and the events it emits.

`smtp/server.py` imports these and exports them as its own, so callers import from
there; they live apart so that the session module holds the state machine only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

from mailgate.codes.reply import Reply
from mailgate.smtp.address import Address
from mailgate.smtp.params import MailParams, RcptParams

__all__ = [
    "AuthAttempt",
    "ConnectionLost",
    "Ehlo",
    "Event",
    "MailFrom",
    "MessageAborted",
    "MessageComplete",
    "MessageData",
    "MessageStart",
    "Quit",
    "RcptTo",
    "Reset",
    "SessionClosed",
    "SessionConfig",
    "SessionObserver",
    "StartTLS",
]


class SessionObserver(Protocol):
    """Counts what a session does (metrics); called synchronously, so keep it cheap."""

    def command(self, verb: str) -> None: ...

    def reply(self, code: int) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Protocol limits and offered extensions. Floors are RFC 5321's minimums."""

    hostname: str = "localhost"
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100  # RFC 5321 4.5.3.1.8: at least 100
    max_errors: int = 20  # like Postfix's smtpd_hard_error_limit
    command_line_limit: int = 512  # RFC 5321 4.5.3.1.4, CRLF included
    extension_allowance: int = 1024  # room for MAIL/RCPT parameters (RFC 5321 4.5.3.1.4)
    data_line_limit: int = 1000  # RFC 5321 4.5.3.1.6, CRLF included
    auth_line_limit: int = 12288  # RFC 4954 4
    bare_newlines: Literal["normalize", "reject"] = "normalize"
    starttls: bool = False  # TLS can be offered (a certificate is configured)
    auth: bool = False  # AUTH can be offered
    auth_requires_tls: bool = True  # AUTH only over TLS (RFC 4954 4, RFC 8314)
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    chunking: bool = True
    smtputf8: bool = True
    dsn: bool = True
    banner: str = "ESMTP mailgate"

    def __post_init__(self) -> None:
        floors = {
            "max_recipients": 100,
            "command_line_limit": 512,
            "data_line_limit": 1000,
            "auth_line_limit": 12288,
            "max_errors": 1,
            "max_message_size": 1,
        }
        for name, floor in floors.items():
            if getattr(self, name) < floor:
                raise ValueError(
                    f"{name} = {getattr(self, name)} is below the minimum of {floor} "
                    "(RFC 5321 sets the floor)."
                )
        if self.bare_newlines not in ("normalize", "reject"):
            raise ValueError(f"bare_newlines = {self.bare_newlines!r}: use normalize or reject.")
        for m in self.auth_mechanisms:
            if m not in ("PLAIN", "LOGIN"):
                raise ValueError(f"auth mechanism {m!r} is not supported: use PLAIN or LOGIN.")


@dataclass(frozen=True, slots=True)
class Event:
    needs_decision: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Ehlo(Event):
    """EHLO (extended) or HELO. Default decision: accept, listing extensions."""

    needs_decision: ClassVar[bool] = True
    domain: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """MAIL FROM. Default decision: `250 2.1.0`."""

    needs_decision: ClassVar[bool] = True
    sender: Address
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """RCPT TO. Default decision: `250 2.1.5`."""

    needs_decision: ClassVar[bool] = True
    recipient: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class MessageStart(Event):
    """Message data begins (after 354, or with the first BDAT chunk)."""

    chunking: bool


@dataclass(frozen=True, slots=True)
class MessageData(Event):
    """A piece of message content: unstuffed, CRLF line ends."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageComplete(Event):
    """The whole message arrived. The shell must answer (queued, or refused)."""

    needs_decision: ClassVar[bool] = True
    size: int
    # Every line end of the content is CRLF: true after DATA (the reader normalizes or
    # refuses bare CR and LF), false after BDAT (chunks are taken as they are).
    crlf: bool = False


@dataclass(frozen=True, slots=True)
class MessageAborted(Event):
    """The session refused the message itself (size, line length, bare LF); discard it."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """The mail transaction was abandoned (RSET, EHLO, STARTTLS)."""


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """220 was queued: flush, handshake, then call `tls_established()`."""


@dataclass(frozen=True, slots=True)
class AuthAttempt(Event):
    """Credentials to check. Default decision: `235 2.7.0` (authenticated)."""

    needs_decision: ClassVar[bool] = True
    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """221 was queued; the session is closed once the output is flushed."""


@dataclass(frozen=True, slots=True)
class SessionClosed(Event):
    """The session closed itself with `reply` (421 on errors, shutdown, timeout)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class ConnectionLost(Event):
    """The client closed the connection (EOF)."""
