"""Receiving MTAs for the delivery tests: `aiosmtpd` servers on loopback aliases.

mailgate connects to every MX host on one port (`[delivery] smtp_port`), so the fake MX
hosts share one port number, on different addresses: 127.0.0.2 (`mx1.test` in
tests/support/dnsserver.py's ROUTING_ZONE) and 127.0.0.3 (`mx2.test`). Loopback aliases need no
setup on Linux. The port is picked once per test run (`mx_port`), free on both.

What a fake MX answers depends on the recipient's local part, so one message can mix
outcomes:

    refuse-550@...   RCPT: 550 5.1.1          refuse-552@...  RCPT: 552 5.2.2
    defer-450@...    RCPT: 450 4.2.1          defer-421@...   RCPT: 421 4.3.2, then it hangs up
    drop@...         DATA: the connection is cut before the reply to the end of data
    anything else    250

and `FakeMX.script[address]` holds one-shot actions taken before those rules, in turn
("450 4.2.1 ...", "421 ...", "drop"), e.g. a recipient deferred once, then accepted.
`greeting="421"` makes a host that answers every connection with 421 and hangs up;
`ehlo_gate` (a threading.Event) one that answers no EHLO until the event is set.
`stalling[address]` (a threading.Event) holds the reply to the end of data of a message
to that recipient until the event is set: a message in flight, for as long as a test
needs.
`idle_timeout` (seconds) makes it hang up on a connection idle that long (aiosmtpd's
`timeout`), or with `idle_notice` only say `421` then and keep the connection open;
`idle_ended` counts those connections and `quits` the QUIT commands it got.
`tls_context` makes it offer STARTTLS with that server context, `implicit_tls` speak TLS
from the first byte (RFC 8314) with that one; `auth` (user -> password)
makes it a smarthost that wants AUTH (over TLS only) before MAIL, and `auth_logins` lists
every login tried, with "ok" or "bad".

A plain module (no fixtures, so importing its names shadows nothing): a test file makes
its `mx_port` fixture with `free_port_pair()` and its `fake_mx` fixture with `FakeMXs`.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import socket
import socketserver
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_T = TypeVar("_T")

MX1 = "127.0.0.2"
MX2 = "127.0.0.3"

__all__ = ["DSN", "MX1", "MX2", "FakeMX", "FakeMXs", "Received", "free_port_pair", "parse_dsn",
           "wait_until"]


def wait_until(check: Callable[[], _T | None], timeout: float = 10.0, what: str = "",
               interval: float = 0.02) -> _T:
    """Poll `check` until it returns something truthy (returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or check}")
        time.sleep(interval)


def free_port_pair(hosts: tuple[str, ...] = (MX1, MX2)) -> int:
    """A TCP port number free on every one of `hosts` (bound on the first, checked on the
    others)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port: int = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no port free on all of {', '.join(hosts)}")


@dataclass(frozen=True)
class DSN:
    """A delivery status notification (RFC 3464) taken apart."""

    message: email.message.Message
    human: str  # the first part: what happened, in plain words
    per_message: dict[str, str]  # Reporting-MTA, Arrival-Date, ...
    recipients: list[dict[str, str]]  # per recipient: Final-Recipient, Status, ...
    returned: email.message.Message | None  # the third part: the original or its headers


def _parts(msg: email.message.Message) -> list[email.message.Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list), payload
    parts: list[email.message.Message] = []
    for part in payload:
        assert isinstance(part, email.message.Message), part
        parts.append(part)
    return parts


def parse_dsn(data: bytes) -> DSN:
    """Parse a DSN; field names are lower-cased, folded values unfolded."""
    msg = email.message_from_bytes(data)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    parts = _parts(msg)
    assert len(parts) >= 2, parts
    human = parts[0].get_payload(decode=True)
    assert isinstance(human, bytes)
    assert parts[1].get_content_type() == "message/delivery-status"
    groups = _parts(parts[1])  # per-message fields, then one group per recipient
    assert len(groups) >= 2, groups

    def fields(group: email.message.Message) -> dict[str, str]:
        return {k.lower(): " ".join(str(v).split()) for k, v in group.items()}

    returned = None
    if len(parts) > 2:
        third = parts[2]
        returned = _parts(third)[0] if third.get_content_type() == "message/rfc822" else third
    return DSN(msg, human.decode("utf-8", "replace"), fields(groups[0]),
               [fields(g) for g in groups[1:]], returned)


@dataclass(frozen=True)
class Received:
    """One message a fake MX accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    connection: int  # which connection (1, 2, ...) carried it
    tls: bool = False  # whether it came over TLS (STARTTLS)
    authenticated: str | None = None  # the AUTH login, when there was one


class _Handler:
    def __init__(self, mx: FakeMX) -> None:
        self.mx = mx

    def _action(self, address: str) -> str | None:
        queued = self.mx.script.get(address.lower())
        if queued:
            return queued.pop(0)
        return None

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        gate = self.mx.ehlo_gate
        while gate is not None and not gate.is_set():  # a slow server: work piles up
            await asyncio.sleep(0.01)
        session.host_name = hostname
        return responses

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mx.quits += 1
        return "221 Bye"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        self.mx.rcpts.append(address)
        self.mx.rcpt_options.append(list(rcpt_options))
        local = address.rpartition("@")[0].lower()
        action = self._action(address)
        if action == "drop":
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK (will drop at DATA)"
        if action is not None:
            reply = action
        elif local == "refuse-550":
            reply = "550 5.1.1 No such user here"
        elif local == "refuse-552":
            reply = "552 5.2.2 Mailbox full"
        elif local == "defer-450":
            reply = "450 4.2.1 Mailbox busy, try again later"
        elif local == "defer-421":
            reply = "421 4.3.2 Service shutting down, try again later"
        else:
            reply = "250 2.1.5 OK"
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        elif reply.startswith("421"):
            # RFC 5321 3.8: a 421 closes the connection; the reply goes out first.
            transport = server.transport
            assert transport is not None
            asyncio.get_running_loop().call_later(0.01, transport.close)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for address in envelope.rcpt_tos:  # a slow end of data: held until the test says
            gate = self.mx.stalling.get(address.lower())
            while gate is not None and not gate.is_set():
                await asyncio.sleep(0.01)
        drop = any(a.rpartition("@")[0].lower() == "drop" for a in envelope.rcpt_tos)
        drop = drop or any(self.mx.dropping.pop(a.lower(), False) for a in envelope.rcpt_tos)
        if drop:
            # The whole message came in, but no reply to the end of data ever will.
            transport = server.transport
            assert isinstance(transport, asyncio.Transport)
            transport.abort()
            return "250 2.0.0 never sent"
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        login = session.auth_data if session.authenticated else None
        self.mx.received.append(Received(
            envelope.mail_from or "", tuple(envelope.rcpt_tos), content,
            getattr(server, "connection_number", 0),
            tls=server.transport is not None
            and server.transport.get_extra_info("ssl_object") is not None,
            authenticated=login.decode() if isinstance(login, bytes) else None))
        return f"250 2.0.0 Ok: queued at {self.mx.host}"


class _IdleCounting(SMTP):
    """Counts the connections idle past `timeout` (`FakeMX.idle_ended`); with
    `idle_notice` says 421 on them and leaves them open instead of hanging up."""

    mx: FakeMX

    def _timeout_cb(self) -> None:
        self.mx.idle_ended += 1
        if not self.mx.idle_notice:
            super()._timeout_cb()  # type: ignore[no-untyped-call]
            return
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.write(b"421 4.4.2 idle for too long\r\n")


class _CountingController(Controller):
    def __init__(self, mx: FakeMX, **kwargs: Any) -> None:
        super().__init__(_Handler(mx), hostname=mx.host, port=mx.port, **kwargs)
        self.mx = mx

    def factory(self) -> SMTP:
        self.mx.connections += 1  # one SMTP instance per connection
        mx = self.mx
        auth = mx.auth is not None
        with warnings.catch_warnings():
            # aiosmtpd counts only STARTTLS as TLS and warns about AUTH without it; over
            # implicit TLS every connection is encrypted already.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            smtp = _IdleCounting(self.handler, hostname=mx.name, decode_data=False,
                        enable_SMTPUTF8=True, tls_context=mx.tls_context, auth_required=auth,
                        auth_require_tls=mx.implicit_tls is None,
                        authenticator=self._authenticate if auth else None,
                        timeout=mx.idle_timeout)
        smtp.connection_number = self.mx.connections  # type: ignore[attr-defined]
        smtp.mx = mx
        return smtp

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, data: Any) -> AuthResult:
        assert self.mx.auth is not None and isinstance(data, LoginPassword)
        user, password = data.login.decode(), data.password.decode()
        ok = self.mx.auth.get(user) == password
        self.mx.auth_logins.append(f"{user} {mechanism} {'ok' if ok else 'bad'}")
        return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)


class _Greeting421(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class FakeMX:
    """One fake receiving MTA on `host`:`port`; see the module docstring."""

    def __init__(self, host: str, port: int, *, greeting: str = "220",
                 name: str | None = None, ehlo_gate: threading.Event | None = None,
                 tls_context: ssl.SSLContext | None = None,
                 implicit_tls: ssl.SSLContext | None = None,
                 auth: dict[str, str] | None = None, idle_timeout: float = 300.0,
                 idle_notice: bool = False) -> None:
        self.host = host
        self.idle_timeout = idle_timeout
        self.idle_notice = idle_notice
        self.idle_ended = 0  # connections that stayed idle past idle_timeout
        self.quits = 0
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.auth_logins: list[str] = []
        self.ehlo_gate = ehlo_gate
        self.port = port
        self.greeting = greeting
        self.name = name or {MX1: "mx1.test", MX2: "mx2.test"}.get(host, host)
        self.connections = 0
        self.received: list[Received] = []
        self.rcpts: list[str] = []  # every RCPT TO seen, whatever the answer
        self.rcpt_options: list[list[str]] = []  # and its parameters
        self.script: dict[str, list[str]] = {}
        self.dropping: dict[str, bool] = {}
        # Recipients whose message gets no reply to its end of data until the event is set.
        self.stalling: dict[str, threading.Event] = {}
        self._controller: _CountingController | None = None
        self._raw: _Greeting421 | None = None

    def once(self, address: str, *actions: str) -> None:
        """Answer `address` with these actions first ("450 ...", "421 ...", "drop")."""
        queued = self.script.setdefault(address.lower(), [])
        for action in actions:
            if action == "drop":
                self.dropping[address.lower()] = True
            queued.append(action)

    @property
    def seen_anything(self) -> bool:
        return self.connections > 0

    def start(self) -> FakeMX:
        if self.greeting == "220":
            self._controller = _CountingController(self, ready_timeout=5.0,
                                                   ssl_context=self.implicit_tls)
            self._controller.start()
            self.connections = 0  # start() connects once to check the server is up
            return self
        mx = self

        class Refuse(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                mx.connections += 1
                self.request.sendall(f"{mx.greeting} 4.3.2 {mx.name} is busy, "
                                     "try another host\r\n".encode())

        self._raw = _Greeting421((self.host, self.port), Refuse)
        threading.Thread(target=self._raw.serve_forever, kwargs={"poll_interval": 0.01},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._raw is not None:
            self._raw.shutdown()
            self._raw.server_close()
            self._raw = None

    def all_rcpts(self) -> list[str]:
        return [r for m in self.received for r in m.rcpt_tos]


class FakeMXs:
    """Starts fake MX hosts on one port; stops them all on exit. For a fixture:

        @pytest.fixture
        def fake_mx(mx_port: int) -> Iterator[Callable[..., FakeMX]]:
            with FakeMXs(mx_port) as start:
                yield start
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.started: list[FakeMX] = []

    def start(self, host: str, **options: Any) -> FakeMX:
        mx = FakeMX(host, self.port, **options).start()
        self.started.append(mx)
        return mx

    def __enter__(self) -> Callable[..., FakeMX]:
        return self.start

    def __exit__(self, *exc: object) -> None:
        for mx in self.started:
            mx.stop()


# --- fixtures (use with `pytest_plugins = ["tests.support.fakemx"]`) ---------------------------


@pytest.fixture(scope="module")
def mx_port() -> int:
    """The port every fake MX host listens on (mailgate's [delivery] smtp_port)."""
    return free_port_pair()


@pytest.fixture
def fake_mx(mx_port: int) -> Iterator[Callable[..., FakeMX]]:
    with FakeMXs(mx_port) as start:
        yield start
