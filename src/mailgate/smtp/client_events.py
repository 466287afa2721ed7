"""What a `ClientSession` and its shell say to each other: the configuration, the
messages to send (`Envelope`, `Recipient`), what became of each recipient (`Outcome`),
the server's capabilities, the events, and the replies mailgate makes up.

`smtp/client.py` imports these and exports them as its own, so callers import from
there; they live apart so that the session module holds the state machine only.

Every message given to `send()` ends in exactly one `MessageResult`, with one `Outcome` per
recipient, whatever the server does: a misbehaving server is an outcome, never an
exception. An outcome's `remote` flag says whether the server really sent the reply (a bounce
then says `smtp; 550 5.1.1 ...`) or mailgate made it up (`Reply.make` with a code from the
registry) because the server said nothing usable. Local replies:

- connection lost (EOF)           451 4.4.2  X.4.2 "Bad connection"
- not an SMTP reply, reply line   451 4.5.0  X.5.0 "Other or undefined protocol status":
  too long, reply out of turn                 the server broke the protocol, which is neither
                                              a statement about the message nor about the
                                              server's availability. 451 is what RFC 5321
                                              uses for "local error, try again" at any step;
                                              421 would claim the server announced closing,
                                              which it did not. Transient, because another
                                              attempt (or another MX) may well succeed.
- TLS required, not offered or    451 4.7.4  X.7.4 "Security features not supported"
  refused                                     (what Postfix says too); transient because a
                                              stripped STARTTLS is often an attack or a fault
                                              that passes
- TLS handshake failed            451 4.7.5  X.7.5 "Cryptographic failure"
- credentials given, AUTH not     451 4.7.0  a configuration problem: keep the mail queued
  possible
- message larger than SIZE        552 5.3.4  RFC 1870 6.1: do not send it
- non-ASCII address, no SMTPUTF8  553 5.6.7  RFC 6531 3.2 (no downgrade is attempted)
- UTF-8 headers, no SMTPUTF8      550 5.6.9  RFC 6531 3.2
- 8-bit content, no 8BITMIME      554 5.6.3  RFC 6152 3: "conversion required but not
                                              supported" (mailgate does not convert)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from mailgate.codes.reply import Reply
from mailgate.smtp.address import Address, AddressError, parse_path

__all__ = [
    "AUTH_IMPOSSIBLE",
    "CONNECTION_LOST",
    "EIGHTBIT_UNSUPPORTED",
    "PROTOCOL_ERROR",
    "REPLY_TOO_LONG",
    "SIZE_TOO_BIG",
    "TIMED_OUT",
    "TLS_FAILED",
    "TLS_NOT_OFFERED",
    "UTF8_ADDRESS_UNSUPPORTED",
    "UTF8_HEADERS_UNSUPPORTED",
    "Capabilities",
    "ClientConfig",
    "ClientObserver",
    "Closed",
    "Credentials",
    "Envelope",
    "Established",
    "Event",
    "Idle",
    "MessageResult",
    "Outcome",
    "Recipient",
    "RecipientResult",
    "Stage",
    "StartTLS",
]


# --- local replies (see the module docstring for why each code) ----------------------

CONNECTION_LOST = Reply.make(451, "4.4.2", "Connection lost")
TIMED_OUT = Reply.make(451, "4.4.2", "Timed out waiting for the server")
PROTOCOL_ERROR = Reply.make(451, "4.5.0", "The server sent something that is not an SMTP reply")
REPLY_TOO_LONG = Reply.make(451, "4.5.0", "The server sent a reply line that is too long")
TLS_NOT_OFFERED = Reply.make(451, "4.7.4", "TLS is required, but was not offered by the server")
TLS_FAILED = Reply.make(451, "4.7.5", "TLS handshake failed")
AUTH_IMPOSSIBLE = Reply.make(
    451, "4.7.0", "Credentials are configured, but the server offers no usable AUTH"
)
SIZE_TOO_BIG = Reply.make(552, "5.3.4", "Message is larger than the server's SIZE limit")
UTF8_ADDRESS_UNSUPPORTED = Reply.make(
    553, "5.6.7", "Non-ASCII address, but the server does not offer SMTPUTF8"
)
UTF8_HEADERS_UNSUPPORTED = Reply.make(
    550, "5.6.9", "Message needs SMTPUTF8, but the server does not offer it"
)
EIGHTBIT_UNSUPPORTED = Reply.make(
    554, "5.6.3", "8-bit message content, but the server does not offer 8BITMIME"
)

Stage = Literal[
    "connection", "greeting", "ehlo", "helo", "starttls", "tls", "auth", "rset", "mail",
    "rcpt", "data", "end-of-data", "bdat", "quit",
]
"""Where in the conversation an outcome was decided (or the shell is waiting)."""

_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


class ClientObserver(Protocol):
    """Sees a client conversation as it goes: probe transcripts, logs, metrics.

    Called synchronously, so keep it cheap. `command` gets each command line as written
    (no CRLF; a BDAT line without its chunk; message content is not a command), with the
    stage of the reply it waits for. A SASL response is shown as `*****`, never as
    written: transcripts and logs must not carry a password. `reply` gets each reply as
    read, with the stage it answers ("connection" for one that answers nothing).
    """

    def command(self, line: str, stage: Stage) -> None: ...

    def reply(self, reply: Reply, stage: Stage) -> None: ...


# --- values ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """Username and password for AUTH PLAIN / LOGIN (RFC 4954)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How the client behaves; defaults suit MX delivery on port 25."""

    helo_name: str = "localhost"
    # "never", "may" (opportunistic: STARTTLS when offered), "require" (fail without TLS)
    tls: Literal["never", "may", "require"] = "may"
    credentials: Credentials | None = None
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")  # in order of preference
    # Never send a password in the clear, unless told to (a trusted loopback relay).
    auth_without_tls: bool = False
    pipelining: bool = True  # use PIPELINING when offered (RFC 2920)
    # Use BDAT when CHUNKING is offered (RFC 3030): the content goes raw, with its exact
    # octet count, no dot-stuffing and no line-end repair. Off by default: DATA is what
    # every server handles best.
    prefer_bdat: bool = False
    bdat_chunk_size: int = 1024 * 1024
    # Verify only (`mailgate probe`): every transaction stops after its RCPT replies and is
    # reset with RSET. No DATA or BDAT is ever sent and the content given to send() is
    # ignored (no SIZE, no BODY); an accepted recipient's outcome is its RCPT reply.
    verify_only: bool = False
    # RFC 5321 4.5.3.1.5 says 512 octets; real servers overshoot, so allow a generous cap.
    max_reply_line: int = 4096
    max_reply_lines: int = 128
    # This MTA's own name: a server that greets with it is this MTA again, and the mail
    # would loop (Postfix: "mail for X loops back to myself"). None: no such check.
    loop_name: str | None = None
    # LMTP (RFC 2033): LHLO instead of EHLO (no HELO fallback), and after the message
    # one reply per accepted recipient instead of one for the whole message.
    lmtp: bool = False

    def __post_init__(self) -> None:
        if self.tls not in ("never", "may", "require"):
            raise ValueError(f"tls = {self.tls!r}: use never, may or require.")
        for m in self.auth_mechanisms:
            if m not in ("PLAIN", "LOGIN"):
                raise ValueError(f"auth mechanism {m!r} is not supported: use PLAIN or LOGIN.")
        if self.bdat_chunk_size < 1:
            raise ValueError("bdat_chunk_size must be at least 1 octet.")
        if self.max_reply_line < 512:
            raise ValueError("max_reply_line must be at least 512 (RFC 5321 4.5.3.1.5).")
        if self.max_reply_lines < 1:
            raise ValueError("max_reply_lines must be at least 1.")
        if not self.helo_name or any(c in self.helo_name for c in " \r\n\t"):
            raise ValueError(f"helo_name {self.helo_name!r} must be one word (a host name).")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server's EHLO reply offers. A HELO session offers nothing."""

    esmtp: bool = False
    keywords: tuple[tuple[str, str], ...] = ()  # (KEYWORD, parameters) as advertised
    pipelining: bool = False
    size: bool = False
    size_limit: int | None = None  # None: SIZE without a (non-zero) limit, or no SIZE
    eightbitmime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    chunking: bool = False
    starttls: bool = False
    auth: frozenset[str] = frozenset()
    enhanced_status_codes: bool = False

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        """Parse the keyword lines of a 250 EHLO reply (RFC 5321 4.1.1.1).

        Lenient where servers differ harmlessly: keywords in any case, the old
        `AUTH=LOGIN PLAIN` spelling, SIZE without a number.
        """
        keywords: list[tuple[str, str]] = []
        auth: set[str] = set()
        size = False
        size_limit: int | None = None
        for line in reply.lines[1:]:
            word, _, params = line.strip().partition(" ")
            key = word.upper()
            if not key:
                continue
            if key.startswith("AUTH="):  # pre-RFC 4954 servers
                auth.update(p.upper() for p in [key[5:], *params.split()] if p)
                continue
            keywords.append((key, params.strip()))
            if key == "AUTH":
                auth.update(p.upper() for p in params.split())
            elif key == "SIZE":
                size = True
                value = params.strip()
                if value.isascii() and value.isdigit() and len(value) <= 20 and int(value) > 0:
                    size_limit = int(value)
        keys = {k for k, _ in keywords}
        return cls(
            esmtp=True,
            keywords=tuple(keywords),
            pipelining="PIPELINING" in keys,
            size=size,
            size_limit=size_limit,
            eightbitmime="8BITMIME" in keys,
            smtputf8="SMTPUTF8" in keys,
            dsn="DSN" in keys,
            chunking="CHUNKING" in keys,
            starttls="STARTTLS" in keys,
            auth=frozenset(auth),
            enhanced_status_codes="ENHANCEDSTATUSCODES" in keys,
        )


@dataclass(frozen=True, slots=True)
class Recipient:
    """A forward path with its DSN parameters (RFC 3461): NOTIFY and ORCPT."""

    address: Address
    notify: tuple[str, ...] | None = None  # ("NEVER",) or some of SUCCESS FAILURE DELAY
    orcpt: tuple[str, str] | None = None  # (addr-type, address), e.g. ("rfc822", "a@b")

    def __post_init__(self) -> None:
        if self.address.is_null:
            raise ValueError("a recipient cannot be the null address <>.")
        if self.notify is not None:
            n = tuple(v.upper() for v in self.notify)
            if n != ("NEVER",) and not (n and len(set(n)) == len(n) and set(n) <= _NOTIFY):
                raise ValueError("NOTIFY is NEVER alone, or a list of SUCCESS, FAILURE, DELAY.")
        if self.orcpt is not None:
            kind, addr = self.orcpt
            if not kind or not kind.isascii() or not kind.replace("-", "").isalnum() or not addr:
                raise ValueError("ORCPT is (addr-type, address), e.g. ('rfc822', 'a@b.example').")


@dataclass(frozen=True, slots=True)
class Envelope:
    """Reverse path, recipients and the message's DSN parameters (RET, ENVID)."""

    sender: Address
    recipients: tuple[Recipient, ...]
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None
    smtputf8: bool = False  # the message needs SMTPUTF8 even if its addresses are ASCII
    # Every line end of the content is CRLF already (the queue's flag for mail that came
    # in by DATA): dot-stuffing skips its check. False makes the session check.
    crlf: bool = False

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("an envelope needs at least one recipient.")
        if self.ret not in (None, "FULL", "HDRS"):
            raise ValueError("RET is FULL or HDRS.")
        if self.envid is not None and (
            not self.envid or len(self.envid) > 100 or not all(" " <= c <= "~" for c in self.envid)
        ):
            raise ValueError("ENVID is 1 to 100 printable ASCII characters (RFC 3461 4.4).")

    @classmethod
    def make(cls, sender: str, recipients: list[str] | tuple[str, ...]) -> Envelope:
        """An envelope from plain addresses (`""` is the null sender); ValueError if bad."""
        try:
            s = parse_path(f"<{sender}>", utf8=True, allow_null=True)
            rs = tuple(
                Recipient(parse_path(f"<{r}>", utf8=True, allow_postmaster=True))
                for r in recipients
            )
        except AddressError as exc:
            raise ValueError(str(exc)) from exc
        return cls(s, rs)

    @property
    def needs_smtputf8(self) -> bool:
        return (
            self.smtputf8
            or self.sender.is_utf8
            or any(r.address.is_utf8 for r in self.recipients)
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """The reply that decided a recipient; `remote` is False when mailgate made it up."""

    reply: Reply
    remote: bool
    stage: Stage

    @property
    def is_success(self) -> bool:
        return self.reply.is_success

    @property
    def is_transient(self) -> bool:
        return self.reply.is_transient

    @property
    def is_permanent(self) -> bool:
        return self.reply.is_permanent


@dataclass(frozen=True, slots=True)
class RecipientResult:
    recipient: Recipient
    outcome: Outcome


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Something the shell should know about or act on."""


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """The server said 220 to STARTTLS: flush output, handshake, then `tls_established()`.

    Bytes the server sent after its 220 were discarded (RFC 3207 5, CVE-2011-0411's
    client side): nothing read before the handshake is trusted after it.
    """


@dataclass(frozen=True, slots=True)
class Established(Event):
    """The session is ready for mail: final capabilities, TLS and AUTH state."""

    capabilities: Capabilities
    tls: bool
    authenticated: bool


@dataclass(frozen=True, slots=True)
class MessageResult(Event):
    """A message given to `send()` is finished: one outcome per recipient, in order."""

    handle: int
    envelope: Envelope
    results: tuple[RecipientResult, ...]


@dataclass(frozen=True, slots=True)
class Idle(Event):
    """Nothing is queued: `send()` another message, or `quit()`."""


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """The session is over: flush `data_to_send()`, then close the connection.

    `reason` is None after a normal QUIT, else the outcome that ended the session.
    """

    reason: Outcome | None
