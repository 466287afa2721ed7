"""SMTP conversations as data: the `.dialog` format, its parser, and a runner.

A dialog file is a short conversation that checks one behaviour of the server (model:
chasquid's `test/t-12-minor_dialogs`). Each line is one of:

    # text            a comment; the first one says what the dialog checks, citing the RFC
    #! key=value ...  options (only before the first step): SessionConfig fields, plus
                      `tls_active=true` for an implicit-TLS session; the host is `mx.test`
    C: text           a line the client sends; CRLF is appended
    R: text           raw bytes the client sends, with Python escapes (\\r \\n \\t \\0
                      \\xHH \\\\); nothing is appended
    S: text           a line the server must send (without its CRLF), compared exactly; a
                      trailing `*` matches the rest of the line (write `\\*` for a literal
                      final asterisk)
    S: <ehlo NAME>    the rest of an EHLO reply: the extension lines of the listing NAME
                      in tests/dialogs/ehlo.listings, each one compared exactly as if it
                      were spelled here (the `250-... Hello ...` line is written out)
    M: text           the next completed message's content, with Python escapes as in R:
    X: closed         the server must have closed the session by now

Consecutive C:/R: lines are sent together, as one chunk (pipelined). The S: lines that
follow are matched, in order, against what the server has sent so far. Output the dialog
does not match before the next chunk is sent, or at the end of the file, is an error.
Blank lines are ignored. No dialog spells an EHLO listing: the listings live in one
file, `ehlo.listings`, each with the options under which the session advertises it
(test_dialogs.py checks that it does), so adding an extension edits that file alone.
Parsing (`parse_dialog`) is separate from running
(`run_dialog`), so the same files drive the sans-I/O `ServerSession` (`SessionPeer`, with
the fixed test policy below) and a live server over TCP (any `DialogPeer`).

The test policy of `SessionPeer`: accept everything, except
- RCPT to a local part `unknown`          -> 550 5.1.1
- RCPT to a local part `later`            -> 450 4.2.1
- MAIL FROM a local part `blocked`        -> 550 5.7.1
- AUTH: user `alice`, password `secret`   -> 235 2.7.0; anything else 535 5.7.8
- a complete message                      -> 250 2.0.0 Ok: queued as N (N = 1, 2, ...)
- STARTTLS: the handshake is simulated (`tls_established()` at once).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from mailgate.codes.reply import Reply
from mailgate.smtp import replies
from mailgate.smtp.server import (
    NEED_DATA,
    AuthAttempt,
    MailFrom,
    MessageAborted,
    MessageComplete,
    MessageData,
    MessageStart,
    RcptTo,
    Reset,
    ServerSession,
    SessionConfig,
    StartTLS,
)

__all__ = [
    "HOSTNAME",
    "Dialog",
    "DialogFailure",
    "DialogPeer",
    "DialogSyntaxError",
    "EhloListing",
    "Expect",
    "ExpectClosed",
    "ExpectMessage",
    "MessageSource",
    "Send",
    "SessionPeer",
    "Step",
    "TestPolicy",
    "ehlo_listings",
    "load_dialog",
    "load_listings",
    "parse_dialog",
    "parse_listings",
    "run_dialog",
    "session_config",
    "session_options",
    "unescape",
]

HOSTNAME = "mx.test"
LISTINGS = Path(__file__).resolve().parent.parent / "dialogs" / "ehlo.listings"


# --- the format ------------------------------------------------------------------------


class DialogSyntaxError(ValueError):
    """A dialog file that does not follow the format; the message names file and line."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes the client sends in one chunk (one or more consecutive C:/R: lines)."""

    data: bytes
    line: int


@dataclass(frozen=True, slots=True)
class Expect:
    """One line the server must send; `prefix` means the rest of the line is free.

    `listing` names the EHLO listing the line comes from (`S: <ehlo NAME>`), if any.
    """

    text: str
    prefix: bool
    line: int
    listing: str = ""

    def matches(self, got: str) -> bool:
        return got.startswith(self.text) if self.prefix else got == self.text

    def __str__(self) -> str:
        return self.text + ("*" if self.prefix else "")


@dataclass(frozen=True, slots=True)
class ExpectMessage:
    """The content of the next completed message."""

    content: bytes
    line: int


@dataclass(frozen=True, slots=True)
class ExpectClosed:
    """The server has closed the session."""

    line: int


Step = Send | Expect | ExpectMessage | ExpectClosed


@dataclass(frozen=True, slots=True)
class Dialog:
    name: str
    description: str
    options: dict[str, str]
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class EhloListing:
    """A named EHLO listing: the extensions the session offers under `options`."""

    name: str
    options: dict[str, str]
    extensions: tuple[str, ...]
    line: int

    def replies(self) -> tuple[str, ...]:
        """The reply lines after the first: `250-EXT`, and `250 EXT` for the last."""
        last = len(self.extensions) - 1
        return tuple(("250 " if i == last else "250-") + ext
                     for i, ext in enumerate(self.extensions))


_OPTION_RE = re.compile(r"([a-z_][a-z0-9_]*)=(\S+)\Z")
_LISTING_NAME_RE = re.compile(r"\[([a-z0-9][a-z0-9-]*)\]\Z")
_EHLO_STEP_RE = re.compile(r"<ehlo ([^>]*)>\Z")
_ESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "t": "\t", "0": "\0", '"': '"', "'": "'"}


def unescape(text: str) -> bytes:
    """Python-style escapes to bytes: \\r \\n \\t \\0 \\xHH \\\\ \\" \\'; other text is UTF-8.

    Raises ValueError naming the bad escape.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in _ESCAPES:
            out += _ESCAPES[nxt].encode("ascii")
            i += 2
        elif nxt == "x":
            hexdigits = text[i + 2 : i + 4]
            if len(hexdigits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in hexdigits):
                raise ValueError(f"\\x needs two hex digits, got {text[i : i + 4]!r}")
            out.append(int(hexdigits, 16))
            i += 4
        elif not nxt:
            raise ValueError("a lone backslash ends the line (write \\\\ for a backslash)")
        else:
            raise ValueError(
                f"unknown escape \\{nxt} (use \\r \\n \\t \\0 \\xHH \\\\ \\\" or \\')"
            )
    return bytes(out)


def _parse_options(line: str, options: dict[str, str], name: str, number: int) -> None:
    """Add the key=value words of a `#!` line to `options`."""
    for word in line[2:].split():
        m = _OPTION_RE.match(word)
        if m is None:
            raise DialogSyntaxError(
                name, number, f"option {word!r} is not key=value (e.g. starttls=true)."
            )
        key, value = m.groups()
        if key in options:
            raise DialogSyntaxError(name, number, f"option {key} is set twice.")
        options[key] = value


def parse_listings(text: str, name: str = "<listings>") -> dict[str, EhloListing]:
    """Parse an EHLO listings file (see tests/dialogs/ehlo.listings) into listings by name."""
    found: dict[str, EhloListing] = {}
    current: tuple[str, int] | None = None
    options: dict[str, str] = {}
    extensions: list[str] = []

    def close(number: int) -> None:
        if current is None:
            return
        listing, start = current
        if not extensions:
            raise DialogSyntaxError(name, number, f"the listing [{listing}] has no extensions.")
        found[listing] = EhloListing(listing, dict(options), tuple(extensions), start)

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or (line.startswith("#") and not line.startswith("#!")):
            continue
        m = _LISTING_NAME_RE.match(line)
        if m is not None:
            close(number)
            listing = m.group(1)
            if listing in found:
                raise DialogSyntaxError(name, number, f"the listing [{listing}] is defined twice.")
            current = (listing, number)
            options.clear()
            extensions.clear()
        elif current is None:
            raise DialogSyntaxError(
                name, number, "a listing starts with its name in brackets, e.g. [default]."
            )
        elif line.startswith("#!"):
            if extensions:
                raise DialogSyntaxError(name, number, "option lines (#!) go before the extensions.")
            _parse_options(line, options, name, number)
        elif line != line.strip() or not line.isprintable():
            raise DialogSyntaxError(name, number, f"an extension line is one keyword and its "
                                                  f"parameters, not {line!r}.")
        else:
            extensions.append(line)
    close(len(text.splitlines()) + 1)
    return found


def load_listings(path: Path) -> dict[str, EhloListing]:
    return parse_listings(path.read_text(encoding="utf-8"), path.name)


@functools.cache
def ehlo_listings() -> dict[str, EhloListing]:
    """The listings of tests/dialogs/ehlo.listings (read once)."""
    return load_listings(LISTINGS)


def parse_dialog(text: str, name: str = "<dialog>",
                 listings: dict[str, EhloListing] | None = None) -> Dialog:
    """Parse a dialog; DialogSyntaxError names the line and what is wrong with it.

    `S: <ehlo NAME>` lines are looked up in `listings`, by default those of
    tests/dialogs/ehlo.listings.
    """
    description = ""
    options: dict[str, str] = {}
    steps: list[Step] = []
    pending = bytearray()
    pending_line = 0

    def flush() -> None:
        nonlocal pending_line
        if pending_line:
            steps.append(Send(bytes(pending), pending_line))
            pending.clear()
            pending_line = 0

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("#!"):
            if steps or pending_line:
                raise DialogSyntaxError(name, number, "option lines (#!) go before the first step.")
            _parse_options(line, options, name, number)
            continue
        if line.startswith("#"):
            if not description:
                description = line[1:].strip()
            continue
        kind, colon, rest = line.partition(":")
        if not colon or kind not in ("C", "R", "S", "M", "X"):
            raise DialogSyntaxError(
                name, number,
                f"cannot read {line[:40]!r}: a line is a comment (#) or starts with "
                "C:, R:, S:, M: or X:.",
            )
        if rest and not rest.startswith(" "):
            raise DialogSyntaxError(name, number, f"put a space after '{kind}:'.")
        body = rest[1:]
        if kind in ("C", "R"):
            if not pending_line:
                pending_line = number
            if kind == "C":
                pending += body.encode("utf-8") + b"\r\n"
            else:
                try:
                    pending += unescape(body)
                except ValueError as exc:
                    raise DialogSyntaxError(name, number, str(exc)) from None
            continue
        flush()
        if kind == "S":
            ehlo = _EHLO_STEP_RE.match(body)
            if ehlo is not None:
                known = ehlo_listings() if listings is None else listings
                listing = known.get(ehlo.group(1))
                if listing is None:
                    raise DialogSyntaxError(
                        name, number, f"no EHLO listing named {ehlo.group(1)!r}; the "
                        f"listings are: {', '.join(sorted(known))}."
                    )
                steps.extend(Expect(text, False, number, listing.name)
                             for text in listing.replies())
            elif body.endswith("\\*"):
                steps.append(Expect(body[:-2] + "*", False, number))
            elif body.endswith("*"):
                steps.append(Expect(body[:-1], True, number))
            else:
                steps.append(Expect(body, False, number))
        elif kind == "M":
            try:
                steps.append(ExpectMessage(unescape(body), number))
            except ValueError as exc:
                raise DialogSyntaxError(name, number, str(exc)) from None
        else:
            if body.strip() != "closed":
                raise DialogSyntaxError(name, number, "the only X: line is 'X: closed'.")
            steps.append(ExpectClosed(number))
    flush()
    if not steps:
        raise DialogSyntaxError(name, 1, "the dialog has no steps.")
    first = steps[0]
    if not isinstance(first, Expect) or not first.text.startswith("220"):
        raise DialogSyntaxError(
            name, first.line, "a dialog starts with the greeting, S: 220 ..."
        )
    return Dialog(name, description, options, tuple(steps))


def load_dialog(path: Path) -> Dialog:
    return parse_dialog(path.read_text(encoding="utf-8"), path.name)


def session_options(dialog: Dialog) -> tuple[SessionConfig, bool]:
    """The dialog's options as (SessionConfig, tls_active); ValueError when one is bad."""
    return session_config(dialog.options, dialog.name)


def session_config(options: dict[str, str], source: str) -> tuple[SessionConfig, bool]:
    """`#!` options (of a dialog or a listing) as (SessionConfig, tls_active).

    ValueError names `source` and the bad option.
    """
    fields = {f.name: f for f in dataclasses.fields(SessionConfig)}
    defaults = SessionConfig()
    kwargs: dict[str, object] = {"hostname": HOSTNAME}
    tls_active = False
    for key, value in options.items():
        if key == "tls_active":
            tls_active = _parse_bool(source, key, value)
            continue
        if key not in fields or key == "hostname":
            known = ", ".join(sorted({*fields, "tls_active"} - {"hostname"}))
            raise ValueError(f"{source}: unknown option {key!r}; options are: {known}.")
        default = getattr(defaults, key)
        if isinstance(default, bool):
            kwargs[key] = _parse_bool(source, key, value)
        elif isinstance(default, int):
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ValueError(
                    f"{source}: option {key} needs a number, not {value!r}."
                ) from None
        elif isinstance(default, tuple):
            kwargs[key] = tuple(value.split(","))
        else:
            kwargs[key] = value
    try:
        config = SessionConfig(**kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return config, tls_active


def _parse_bool(source: str, key: str, value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise ValueError(f"{source}: option {key} is true or false, not {value!r}.")


# --- running ---------------------------------------------------------------------------


class DialogPeer(Protocol):
    """The server under test, as the runner sees it.

    `receive(wait)` returns the bytes the server sent since the last call. With `wait`
    the runner needs more output to match the dialog, and a live peer may block a while
    for it; without, it returns what has already arrived (b"" if nothing). `is_closed()`
    says whether the server has closed the session; a live peer may wait briefly to see
    the close, and must keep any bytes that arrive meanwhile for the next `receive()`.
    """

    def send(self, data: bytes) -> None: ...

    def receive(self, wait: bool) -> bytes: ...

    def is_closed(self) -> bool: ...


@runtime_checkable
class MessageSource(Protocol):
    """A peer that can show the content of the messages it accepted (for M: lines)."""

    def messages(self) -> Sequence[bytes]: ...


class DialogFailure(AssertionError):
    """The server did not behave as the dialog says; the message shows the transcript."""


@dataclass
class _Transcript:
    lines: list[str] = field(default_factory=list)

    def client(self, data: bytes) -> None:
        parts = data.split(b"\r\n")
        if len(parts) > 1 and not parts[-1]:
            parts.pop()  # the CRLF that ended the last line
        self.lines.extend("C: " + repr(part)[2:-1] for part in parts)

    def server(self, line: str) -> None:
        self.lines.append("S: " + line)

    def tail(self, n: int = 25) -> str:
        shown = [_clip(x) for x in self.lines[-n:]]
        more = ["   ..."] if len(self.lines) > n else []
        return "\n".join(more + ["   " + x for x in shown])


def _clip(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[:width] + f"... ({len(text)} chars)"


def run_dialog(dialog: Dialog, peer: DialogPeer, *, skip_messages: bool = False) -> None:
    """Play `dialog` against `peer`; raise DialogFailure at the first difference.

    M: lines need a peer that is a `MessageSource`, unless `skip_messages` (e.g. for a
    live server whose queue the runner cannot see).
    """
    transcript = _Transcript()
    pending = bytearray()  # server output not yet matched
    checked_messages = 0

    def fail(step_line: int, message: str) -> DialogFailure:
        return DialogFailure(
            f"{dialog.name}:{step_line}: {message}\ntranscript so far:\n{transcript.tail()}"
        )

    def next_line(step: Expect) -> str:
        while True:
            crlf = pending.find(b"\r\n")
            if crlf != -1:
                raw = bytes(pending[:crlf])
                del pending[: crlf + 2]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise fail(
                        step.line, f"the server sent a line that is not UTF-8: {raw!r}"
                    ) from None
                transcript.server(text)
                return text
            more = peer.receive(wait=True)
            if not more:
                left = f" (it left {bytes(pending)!r} without CRLF)" if pending else ""
                raise fail(
                    step.line, f"expected S: {step}, but the server sent nothing more{left}."
                )
            pending.extend(more)

    def check_idle(step_line: int, when: str) -> None:
        pending.extend(peer.receive(wait=False))
        if pending:
            raise fail(step_line, f"the server sent {_clip(repr(bytes(pending)))} {when}, "
                                  "which the dialog does not expect.")

    for step in dialog.steps:
        if isinstance(step, Send):
            check_idle(step.line, "before this was sent")
            transcript.client(step.data)
            peer.send(step.data)
        elif isinstance(step, Expect):
            got = next_line(step)
            if not step.matches(got):
                origin = f" (from <ehlo {step.listing}>)" if step.listing else ""
                raise fail(step.line, f"expected S: {step}{origin}\n          got S: {got}")
        elif isinstance(step, ExpectMessage):
            if skip_messages:
                continue
            if not isinstance(peer, MessageSource):
                raise fail(step.line, "M: needs a peer that records messages (MessageSource).")
            messages = peer.messages()
            if checked_messages >= len(messages):
                raise fail(step.line, f"expected message #{checked_messages + 1}, but only "
                                      f"{len(messages)} completed.")
            content = messages[checked_messages]
            checked_messages += 1
            if content != step.content:
                raise fail(step.line, f"message #{checked_messages} differs:\n"
                                      f"  expected {step.content!r}\n       got {content!r}")
        elif not peer.is_closed():
            raise fail(step.line, "expected the server to have closed the session.")
    last = dialog.steps[-1].line
    check_idle(last, "at the end of the dialog")


# --- the sans-I/O peer -----------------------------------------------------------------


class TestPolicy:
    """The fixed decisions the dialogs are written against (see the module docstring)."""

    __test__ = False  # not a pytest class

    UNKNOWN_USER = Reply.make(550, "5.1.1", "Mailbox unknown")
    TRY_LATER = Reply.make(450, "4.2.1", "Mailbox busy, try again later")
    BLOCKED_SENDER = Reply.make(550, "5.7.1", "Sender blocked by policy")

    def __init__(self) -> None:
        self.queued = 0

    def mail(self, ev: MailFrom) -> Reply | None:
        return self.BLOCKED_SENDER if ev.sender.local == "blocked" else None

    def rcpt(self, ev: RcptTo) -> Reply | None:
        if ev.recipient.local == "unknown":
            return self.UNKNOWN_USER
        if ev.recipient.local == "later":
            return self.TRY_LATER
        return None

    def auth(self, ev: AuthAttempt) -> Reply | None:
        if ev.username == "alice" and ev.password == "secret":
            return None
        return replies.AUTH_FAILED

    def message(self, ev: MessageComplete) -> Reply:
        self.queued += 1
        return Reply.make(250, "2.0.0", f"Ok: queued as {self.queued}")


class SessionPeer:
    """A `ServerSession` driven in-process with `TestPolicy`; records message contents."""

    def __init__(self, config: SessionConfig, tls_active: bool = False) -> None:
        self.session = ServerSession(config, tls_active=tls_active)
        self.policy = TestPolicy()
        self._messages: list[bytes] = []
        self._current: bytearray | None = None
        self.session.greet()

    @classmethod
    def for_dialog(cls, dialog: Dialog) -> SessionPeer:
        config, tls_active = session_options(dialog)
        return cls(config, tls_active)

    def send(self, data: bytes) -> None:
        self.session.receive_data(data)
        self._drive()

    def receive(self, wait: bool) -> bytes:
        return self.session.data_to_send()

    def is_closed(self) -> bool:
        return self.session.closed

    def messages(self) -> Sequence[bytes]:
        return self._messages

    def _drive(self) -> None:
        s = self.session
        while True:
            ev = s.next_event()
            if ev is NEED_DATA:
                return
            if isinstance(ev, MessageStart):
                self._current = bytearray()
            elif isinstance(ev, MessageData):
                if self._current is not None:
                    self._current += ev.data
            elif isinstance(ev, MessageAborted | Reset):
                self._current = None
            elif isinstance(ev, StartTLS):
                s.tls_established()
            elif isinstance(ev, MailFrom):
                s.respond(self.policy.mail(ev))
            elif isinstance(ev, RcptTo):
                s.respond(self.policy.rcpt(ev))
            elif isinstance(ev, AuthAttempt):
                s.respond(self.policy.auth(ev))
            elif isinstance(ev, MessageComplete):
                reply = self.policy.message(ev)
                self._messages.append(bytes(self._current or b""))
                self._current = None
                s.respond(reply)
            elif ev.needs_decision:
                s.respond(None)
