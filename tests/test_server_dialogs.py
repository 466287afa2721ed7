"""The protocol dialogs (tests/dialogs/*.dialog) against the live server, over TCP.

The same files test_dialogs.py plays against the sans-I/O session are played here
against a real `mailgate serve` (in a thread): sockets, the asyncio listener, real TLS
after STARTTLS (and on the implicit-TLS listener), the policy module and the durable
queue. M: lines are checked against the queue: the stored content, less the Received
header the server prepends.

Each dialog's `#!` options are mapped onto the server:
- hostname `mx.test`, `max_message_size`, `max_recipients` and `bare_newlines` onto the
  Config (limits.message_size, limits.recipients, policy.bare_newlines);
- `tls_active=true` onto the implicit-TLS (smtps) listener, `auth=true` onto the
  submission listener, other dialogs onto the MX listener;
- `auth` onto the policy (which decides where AUTH is offered), and the dialog test
  policy (`unknown` -> 550 5.1.1, `later` -> 450 4.2.1, sender `blocked` -> 550 5.7.1,
  AUTH alice/secret) onto a Policy subclass;
- every other option (`starttls`, the error limit, the extension allowance, line
  limits, SMTPUTF8/DSN/CHUNKING off, AUTH in plaintext, the banner) onto the listener's
  session settings, which the configuration file does not reach: the listener, its
  I/O and the policy are the production code, the SessionConfig is the dialog's. (Without
  STARTTLS a listener runs as SMTPServer does when it is given no TLS context; mailgate
  itself always has a certificate, a self-signed one at least.)
Dialogs sharing their options share one server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import select
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest

from mailgate.codes.reply import Reply
from mailgate.config import Config, Submission
from mailgate.dns import Resolver
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.server.policy import ConnectionInfo, Policy
from mailgate.smtp.server import AuthAttempt, MailFrom, RcptTo, SessionConfig
from mailgate.users import UserDB
from tests.support.dialog import (
    HOSTNAME,
    Dialog,
    TestPolicy,
    load_dialog,
    run_dialog,
    session_options,
)
from tests.support.live import LiveServer
from tests.support.smtpwire import loopback_config, unverified_context

DIALOGS = Path(__file__).resolve().parent / "dialogs"
FILES = sorted(DIALOGS.glob("*.dialog"))

WAIT = 5.0  # seconds to wait for output the dialog expects


class DialogPolicy(Policy):
    """The real policy, with the fixed decisions the dialogs are written against."""

    # Dialogs with wrong passwords run one after another from one address; the per-IP
    # limit of failed AUTH is the security tests' business, not theirs.
    AUTH_FAILS_PER_IP = 10**6

    def __init__(self, config: Config, resolver: Resolver | None, users: UserDB,
                 auth: bool) -> None:
        super().__init__(config, resolver, users)
        self.auth = auth

    def auth_offered(self, role: str) -> bool:
        return self.auth

    def mail_from_sync(self, conn: ConnectionInfo, ev: MailFrom) -> Reply | bool | None:
        if ev.sender.local == "blocked":
            return TestPolicy.BLOCKED_SENDER
        return super().mail_from_sync(conn, ev)

    def rcpt_to_sync(self, conn: ConnectionInfo, ev: RcptTo) -> Reply | bool | None:
        if ev.recipient.local == "unknown":
            return TestPolicy.UNKNOWN_USER
        if ev.recipient.local == "later":
            return TestPolicy.TRY_LATER
        return super().rcpt_to_sync(conn, ev)

    def check_password(self, ev: AuthAttempt) -> bool:
        return ev.username == "alice" and ev.password == "secret" and not ev.authzid


@dataclasses.dataclass(frozen=True)
class Setup:
    """What one live server is configured with; dialogs with equal setups share it."""

    role: str  # the listener the dialog talks to
    session: SessionConfig  # the dialog's options, as that listener's session settings


def setup_for(dialog: Dialog) -> Setup:
    """The server setup a dialog needs."""
    wanted, tls_active = session_options(dialog)
    role = "smtps" if tls_active else "submission" if wanted.auth else "mx"
    return Setup(role, wanted)


class Servers:
    """Live servers by setup, started when first needed, stopped at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stack = ExitStack()
        self.running: dict[Setup, tuple[LiveServer, SQLiteQueue]] = {}

    def get(self, setup: Setup) -> tuple[LiveServer, SQLiteQueue]:
        if setup not in self.running:
            self.running[setup] = self._start(setup)
        return self.running[setup]

    def _start(self, setup: Setup) -> tuple[LiveServer, SQLiteQueue]:
        wanted = setup.session
        base = loopback_config(self.root / f"server{len(self.running)}", hostname=HOSTNAME)
        config = dataclasses.replace(
            base,
            limits=dataclasses.replace(base.limits, message_size=wanted.max_message_size,
                                       recipients=wanted.max_recipients),
            policy=dataclasses.replace(base.policy, bare_newlines=wanted.bare_newlines),
            # The dialogs' AUTH user sends as sender@example.org: granted, as an operator
            # would for a user who sends as the domain's addresses.
            submission=Submission(sender_addresses={"alice": ("@example.org",)}),
        )

        def policy(config: Config, resolver: Resolver, users: UserDB) -> Policy:
            return DialogPolicy(config, resolver, users, auth=wanted.auth)

        srv = self.stack.enter_context(LiveServer(config, policy=policy))
        assert srv.server is not None
        sessions = srv.server._session_configs
        # What the configuration and the policy reach, the server must have made itself;
        # the rest of the dialog's options go straight into the listener's settings.
        made = sessions[setup.role]
        for name in ("hostname", "max_message_size", "max_recipients", "bare_newlines",
                     "auth"):
            assert getattr(made, name) == getattr(wanted, name), (
                f"the live server made {name}={getattr(made, name)!r} from its "
                f"configuration, where the dialog asks for {getattr(wanted, name)!r}")
        sessions[setup.role] = wanted
        queue = SQLiteQueue(config.data_dir / "queue.db")
        self.stack.callback(queue.close)
        return srv, queue

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    s = Servers(tmp_path_factory.mktemp("dialogs"))
    try:
        yield s
    finally:
        s.close()


_RECEIVED = re.compile(rb"Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")
_QUEUED = re.compile(rb"\r\n250[ -](?:2\.0\.0 )?Ok: queued as ([0-9a-f]+)\r\n")


class TCPPeer:
    """A DialogPeer over a real socket; TLS after STARTTLS's 220, or from the start."""

    def __init__(self, port: int, tls: bool, queue: SQLiteQueue) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        if tls:
            self.sock = unverified_context().wrap_socket(self.sock)
        self.queue = queue
        self.eof = False
        self.early = bytearray()  # read by is_closed(), not yet given to the runner
        self.seen = bytearray(b"\r\n")  # everything the server sent, to find queue ids
        self.starttls_sent = False
        self.since_starttls = bytearray()

    def close(self) -> None:
        self.sock.close()

    # --- DialogPeer -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if any(line.upper().startswith(b"STARTTLS") for line in data.split(b"\r\n")):
            self.starttls_sent = True
            self.since_starttls.clear()
        with contextlib.suppress(OSError):  # closed: the dialog says if it should be
            self.sock.sendall(data)

    def receive(self, wait: bool) -> bytes:
        if self.early:
            out = bytes(self.early)
            self.early.clear()
            return out
        deadline = time.monotonic() + (WAIT if wait else 0.0)
        while True:
            data = self._read(max(0.0, deadline - time.monotonic()))
            if data or self.eof or time.monotonic() >= deadline:
                return data

    def is_closed(self) -> bool:
        deadline = time.monotonic() + WAIT
        while not self.eof and time.monotonic() < deadline:
            self.early += self._read(deadline - time.monotonic())
        return self.eof

    # --- MessageSource ----------------------------------------------------------------

    def messages(self) -> Sequence[bytes]:
        out = []
        for qid in _QUEUED.findall(bytes(self.seen)):
            content = self.queue.show(qid.decode(), content=True).content
            assert content is not None
            received = _RECEIVED.match(content)
            assert received is not None, f"{qid!r} does not start with a Received header"
            out.append(content[received.end():])
        return out

    # --- the socket -------------------------------------------------------------------

    def _read(self, timeout: float) -> bytes:
        if self.eof:
            return b""
        pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
        if not pending and not select.select([self.sock], [], [], timeout)[0]:
            return b""
        self.sock.settimeout(0)  # readable may mean a TLS record with no data in it
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            return b""  # a session ticket, or part of a record; more comes later
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        finally:
            self.sock.settimeout(WAIT)
        if not data:
            self.eof = True
            return b""
        self.seen += data
        if self.starttls_sent:
            self.since_starttls += data
            if re.search(rb"(?:^|\r\n)220 [^\r\n]*\r\n\Z", self.since_starttls):
                # The server's 220 to STARTTLS: it sends nothing more in plaintext.
                self.starttls_sent = False
                self.sock = unverified_context().wrap_socket(self.sock)
        return data


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_dialog_against_the_live_server(servers: Servers, path: Path) -> None:
    dialog = load_dialog(path)
    setup = setup_for(dialog)
    srv, queue = servers.get(setup)
    peer = TCPPeer(srv.port(setup.role), setup.role == "smtps", queue)
    try:
        run_dialog(dialog, peer)
    finally:
        peer.close()
