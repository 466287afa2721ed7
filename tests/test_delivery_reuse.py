"""Connection reuse (delivery/connections.py), against a live `mailgate serve` relaying to
a recording aiosmtpd sink that counts its connections and the QUITs it gets:

- mail that comes one message at a time goes over one kept connection, not one each;
- `connection_cache_time = 0` says QUIT after every conversation;
- a kept connection the server timed out meanwhile (closed, or only a 421 sent) is
  dropped, and the message goes over a new connection at once, never deferred for it;
- an idle connection is closed with QUIT when its time is up, and at shutdown;
- a connection kept after STARTTLS carries the next message encrypted.
"""

from __future__ import annotations

import signal
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakemx import FakeMX
from tests.support.smtpwire import wait_until
from tests.support.tlscerts import TestCA, server_context
from tests.test_server_durability import Serve, free_port, queue_list, write_config

TIMEOUT = 30.0


@pytest.fixture
def sink() -> Iterator[FakeMX]:
    mx = FakeMX("127.0.0.1", free_port(), name="sink.test", idle_timeout=300.0).start()
    try:
        yield mx
    finally:
        mx.stop()


def serve(tmp_path: Path, sink: FakeMX, **delivery: Any) -> Serve:
    port = free_port()
    config = write_config(tmp_path, port, relayhost=f"[127.0.0.1]:{sink.port}",
                          delivery=delivery)
    return Serve(config, port, tmp_path / "serve.log")


def send_one(port: int, i: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.sendmail("alice@example.org", [f"bob{i}@example.net"],
                        f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode())


def one_at_a_time(server: Serve, sink: FakeMX, count: int, pause: float = 0.0) -> None:
    """Send `count` messages, each once the one before has reached the sink."""
    def arrived(n: int) -> Callable[[], bool | None]:
        return lambda: len(sink.received) >= n or None

    for i in range(count):
        send_one(server.port, i)
        wait_until(f"message {i} at the sink", arrived(i + 1), TIMEOUT, 0.01)
        time.sleep(pause)


def test_mail_that_comes_one_message_at_a_time_shares_one_connection(
        tmp_path: Path, sink: FakeMX) -> None:
    with serve(tmp_path, sink, connection_cache_time="30s") as server:
        one_at_a_time(server, sink, 5, pause=0.2)
        assert sink.connections == 1
        assert [m.connection for m in sink.received] == [1] * 5
        assert sink.quits == 0  # still kept


def test_without_a_cache_time_every_conversation_ends_with_quit(
        tmp_path: Path, sink: FakeMX) -> None:
    with serve(tmp_path, sink, connection_cache_time=0) as server:
        one_at_a_time(server, sink, 3)
        wait_until("three QUITs", lambda: sink.quits == 3 or None, TIMEOUT)
        assert sink.connections == 3


@pytest.mark.parametrize("notice", [False, True], ids=["hangs-up", "says-421"])
def test_a_kept_connection_the_server_timed_out_is_replaced_not_deferred(
        tmp_path: Path, notice: bool) -> None:
    # The server hangs up on a connection idle for 0.3 s, or says 421 and waits; mailgate
    # would keep it for 30 s. The next message must not be deferred for that.
    mx = FakeMX("127.0.0.1", free_port(), name="sink.test", idle_timeout=0.3,
                idle_notice=notice).start()
    try:
        with serve(tmp_path, mx, connection_cache_time="30s") as server:
            one_at_a_time(server, mx, 1)
            wait_until("the sink to end the idle connection",
                       lambda: mx.idle_ended == 1 or None, TIMEOUT, 0.01)
            started = time.monotonic()
            send_one(server.port, 1)
            wait_until("the second message at the sink",
                       lambda: len(mx.received) == 2 or None, TIMEOUT, 0.01)
            assert time.monotonic() - started < 10  # not after a retry (5 minutes)
            assert [m.connection for m in mx.received] == [1, 2]
            listed = queue_list(server.config)
            states = [r["state"] for m in listed["messages"] for r in m["recipients"]]
            assert states == ["delivered", "delivered"], listed
            attempts = [r["attempts"] for m in listed["messages"] for r in m["recipients"]]
            assert attempts == [1, 1], listed
    finally:
        mx.stop()


def test_an_idle_connection_is_closed_with_quit_when_its_time_is_up(
        tmp_path: Path, sink: FakeMX) -> None:
    with serve(tmp_path, sink, connection_cache_time="0.5s") as server:
        one_at_a_time(server, sink, 1)
        wait_until("the QUIT after 0.5 s idle", lambda: sink.quits == 1 or None, TIMEOUT)
        send_one(server.port, 1)  # the next goes over a new connection
        wait_until("the second message", lambda: len(sink.received) == 2 or None, TIMEOUT)
        assert [m.connection for m in sink.received] == [1, 2]


def test_shutdown_says_quit_on_the_connections_kept(tmp_path: Path, sink: FakeMX) -> None:
    with serve(tmp_path, sink, connection_cache_time="10m") as server:
        one_at_a_time(server, sink, 2)
        assert sink.quits == 0
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(TIMEOUT) == 0
        wait_until("the QUIT at shutdown", lambda: sink.quits == 1 or None, TIMEOUT)


def test_a_kept_connection_stays_encrypted(tmp_path: Path) -> None:
    # STARTTLS once: the next message goes over the same TLS session, not in the clear.
    ca = TestCA.create(tmp_path / "ca")
    cert, key = ca.issue("127.0.0.1")
    mx = FakeMX("127.0.0.1", free_port(), name="sink.test",
                tls_context=server_context(cert, key)).start()
    try:
        with serve(tmp_path, mx, connection_cache_time="30s",
                   tls_security_level="encrypt") as server:
            one_at_a_time(server, mx, 3)
            assert [(m.connection, m.tls) for m in mx.received] == [(1, True)] * 3
    finally:
        mx.stop()
