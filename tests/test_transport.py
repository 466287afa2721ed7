"""delivery/transport.py: the Tap on run_client and the one verifying TLS context.

`mailgate probe` drives run_client as delivery does and sees the conversation through a
Tap; these tests pin what a Tap is told, and in which order, and that delivery has one
place that builds TLS client contexts.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink

import mailgate.delivery
from mailgate.delivery.transport import ClientRun, run_client, verifying_context
from mailgate.smtp.client import TIMED_OUT, ClientConfig, ClientSession, Envelope
from tests.support.tlscerts import TestCA, server_context


class RecordingTap:
    """Every call, in order: ("sent", bytes), ("received", bytes), ("tls", version)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def sent(self, data: bytes) -> None:
        self.calls.append(("sent", data))

    def received(self, data: bytes) -> None:
        self.calls.append(("received", data))

    def tls_up(self, ssl_object: Any) -> None:
        self.calls.append(("tls", ssl_object.version()))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_server(ca: TestCA) -> Iterator[int]:
    """An aiosmtpd server on 127.0.0.1 offering STARTTLS with a certificate `ca` signed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    cert, key = ca.issue("127.0.0.1")
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port,
                     server_hostname="mx.test", tls_context=server_context(cert, key))
    ctl.start()
    yield port
    ctl.stop()


def test_tap_sees_every_byte_and_the_handshake_in_order(ca: TestCA, tls_server: int) -> None:
    session = ClientSession(ClientConfig(helo_name="probe.test", tls="require",
                                         verify_only=True))
    session.quit()
    tap = RecordingTap()
    run = asyncio.run(run_client("127.0.0.1", tls_server, session, [],
                                 tls_context=verifying_context(ca.ca_file), tap=tap))
    assert isinstance(run, ClientRun) and run.tls is not None
    sent = b"".join(d for kind, d in tap.calls if kind == "sent")
    received = b"".join(d for kind, d in tap.calls if kind == "received")
    assert sent == b"EHLO probe.test\r\nSTARTTLS\r\nEHLO probe.test\r\nQUIT\r\n"
    assert received.startswith(b"220 ") and b"\r\n221 " in received
    kinds = [kind for kind, _ in tap.calls]
    assert kinds.count("tls") == 1
    tls_at = kinds.index("tls")
    # After the 220 to STARTTLS arrived, before the EHLO that follows the handshake.
    before = b"".join(d for kind, d in tap.calls[:tls_at] if kind == "received")
    assert re.search(rb"(?m)^220 .*\r\n\Z", before)
    assert tap.calls[tls_at + 1] == ("sent", b"EHLO probe.test\r\n")
    assert str(tap.calls[tls_at][1]).startswith("TLSv1.")


def test_without_a_tap_the_conversation_is_the_same(ca: TestCA, tls_server: int) -> None:
    session = ClientSession(ClientConfig(helo_name="probe.test", tls="require",
                                         verify_only=True))
    session.quit()
    run = asyncio.run(run_client("127.0.0.1", tls_server, session, [],
                                 tls_context=verifying_context(ca.ca_file)))
    assert run.tls is not None and run.established is not None
    assert run.closed is not None and run.closed.reason is None


def test_verifying_context_checks_the_chain_and_the_name(ca: TestCA) -> None:
    ctx = verifying_context(ca.ca_file)
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert verifying_context(ca.ca_file) is not ctx  # the caller keeps the one it made


def test_verifying_context_refuses_a_file_that_is_not_pem(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises((OSError, ssl.SSLError)):
        verifying_context(bad)


def test_delivery_builds_client_tls_contexts_in_transport_only() -> None:
    """One builder: a second copy of the verifying context (as probe once had) fails."""
    root = Path(mailgate.delivery.__file__).parent
    builders = re.compile(r"create_default_context|SSLContext\(")
    offenders = [p.name for p in sorted(root.glob("*.py"))
                 if p.name != "transport.py" and builders.search(p.read_text("utf-8"))]
    assert offenders == []


def test_a_server_that_stops_answering_times_out_at_the_stage_it_stopped() -> None:
    """A real listener that greets, reads EHLO and then says nothing: the stage's
    timeout ends the conversation (451 4.4.2, decided locally, temporary) instead of a
    hang, and the message is not called delivered."""

    async def main() -> ClientRun:
        heard: list[bytes] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 mx.test ESMTP\r\n")
            heard.append(await reader.readline())
            await reader.read()  # until the client gives up and closes
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        session = ClientSession(ClientConfig(helo_name="c.test", tls="never"))
        message = (Envelope.make("a@example.org", ["b@example.net"]), b"Subject: x\r\n\r\nx\r\n")
        async with server:
            run = await asyncio.wait_for(run_client(
                "127.0.0.1", port, session, [message], timeouts={"ehlo": 0.3}), 10)
        assert heard == [b"EHLO c.test\r\n"]
        return run

    run = asyncio.run(main())
    [result] = run.results
    [rcpt] = result.results
    assert rcpt.outcome.reply == TIMED_OUT and rcpt.outcome.stage == "ehlo"
    assert not rcpt.outcome.remote and rcpt.outcome.reply.code == 451
