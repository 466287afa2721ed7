"""LMTP (RFC 2033): the client session's LHLO and per-recipient replies, as data; and
the LMTP target against a scripted LMTP server on a Unix socket, where one message's
recipients end three ways: delivered, deferred, failed."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from mailgate.config import Route, parse_config
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.smtp.address import parse_path
from mailgate.smtp.client import (
    NEED_DATA,
    ClientConfig,
    ClientSession,
    Closed,
    Envelope,
    MessageResult,
    Recipient,
)
from tests.support.live import LiveServer, live_config
from tests.support.smtpwire import wait_until


def _env(*rcpts: str) -> Envelope:
    return Envelope(sender=parse_path("<a@example.org>"),
                    recipients=tuple(Recipient(parse_path(f"<{r}>")) for r in rcpts))


def _events(c: ClientSession) -> list[object]:
    out: list[object] = []
    while (ev := c.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def test_lmtp_says_lhlo_and_reads_one_reply_per_accepted_recipient() -> None:
    c = ClientSession(ClientConfig(helo_name="mx.test", tls="never", lmtp=True))
    c.send(_env("a@local.test", "b@local.test", "c@local.test", "d@local.test"),
           b"Subject: x\r\n\r\nhi\r\n")
    c.quit()
    c.receive_data(b"220 store.test LMTP ready\r\n")
    assert c.data_to_send() == b"LHLO mx.test\r\n"
    c.receive_data(b"250-store.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
    sent = c.data_to_send()
    assert sent.startswith(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<a@local.test>\r\n")
    assert sent.endswith(b"DATA\r\n")
    c.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"
                   b"550 5.1.1 <c@local.test> no such user\r\n250 2.1.5 ok\r\n"
                   b"354 go\r\n")
    assert c.data_to_send() == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    # One reply per accepted recipient (a, b, d), in RCPT order (RFC 2033 4.2).
    c.receive_data(b"250 2.0.0 <a@local.test> saved\r\n")
    assert not [e for e in _events(c) if isinstance(e, MessageResult)]  # two to come
    c.receive_data(b"452 4.2.2 <b@local.test> over quota\r\n"
                   b"250 2.0.0 <d@local.test> saved\r\n")
    [result] = [e for e in _events(c) if isinstance(e, MessageResult)]
    got = {str(r.recipient.address): (r.outcome.reply.code, r.outcome.stage)
           for r in result.results}
    assert got == {"a@local.test": (250, "end-of-data"), "b@local.test": (452, "end-of-data"),
                   "c@local.test": (550, "rcpt"), "d@local.test": (250, "end-of-data")}
    assert c.data_to_send() == b"QUIT\r\n"


def test_lmtp_reads_every_reply_of_a_message_before_the_next_ones() -> None:
    """The next message rides behind the content (RFC 2920 3.1); its MAIL reply comes
    only after one end-of-data reply per accepted recipient of the one before."""
    c = ClientSession(ClientConfig(helo_name="mx.test", tls="never", lmtp=True))
    c.send(_env("a@local.test", "b@local.test"), b"Subject: x\r\n\r\nhi\r\n")
    c.send(_env("d@local.test"), b"Subject: y\r\n\r\nho\r\n")
    c.quit()
    c.receive_data(b"220 store.test LMTP ready\r\n"
                   b"250-store.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
    c.data_to_send()
    c.receive_data(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert c.data_to_send() == (b"Subject: x\r\n\r\nhi\r\n.\r\nMAIL FROM:<a@example.org>\r\n"
                                b"RCPT TO:<d@local.test>\r\nDATA\r\n")
    c.receive_data(b"250 2.0.0 <a@local.test> saved\r\n")
    assert not [e for e in _events(c) if isinstance(e, MessageResult)]  # b's reply to come
    c.receive_data(b"452 4.2.2 <b@local.test> over quota\r\n250 2.1.0 ok\r\n")
    [first] = [e for e in _events(c) if isinstance(e, MessageResult)]
    assert [r.outcome.reply.code for r in first.results] == [250, 452]
    c.receive_data(b"250 2.1.5 ok\r\n354 go\r\n")
    assert c.data_to_send() == b"Subject: y\r\n\r\nho\r\n.\r\n"
    c.receive_data(b"250 2.0.0 <d@local.test> saved\r\n")
    [second] = [e for e in _events(c) if isinstance(e, MessageResult)]
    assert [r.outcome.reply.code for r in second.results] == [250]
    assert c.data_to_send() == b"QUIT\r\n"


def test_lmtp_has_no_helo_fallback() -> None:
    c = ClientSession(ClientConfig(helo_name="mx.test", tls="never", lmtp=True))
    c.send(_env("a@local.test"), b"x\r\n")
    c.receive_data(b"220 store.test\r\n")
    assert c.data_to_send() == b"LHLO mx.test\r\n"
    c.receive_data(b"500 5.5.1 unknown command\r\n")
    assert b"HELO" not in c.data_to_send()
    [result] = [e for e in _events(c) if isinstance(e, MessageResult)]
    assert result.results[0].outcome.reply.code == 500


def test_a_connection_lost_between_per_recipient_replies_keeps_those_decided() -> None:
    c = ClientSession(ClientConfig(helo_name="mx.test", tls="never", lmtp=True,
                                   pipelining=False))
    c.send(_env("a@local.test", "b@local.test"), b"x\r\n")
    for reply in (b"220 s\r\n", b"250 s\r\n", b"250 ok\r\n", b"250 ok\r\n", b"250 ok\r\n",
                  b"354 go\r\n", b"250 2.0.0 a saved\r\n"):
        c.receive_data(reply)
    c.receive_data(b"")
    events = _events(c)
    [result] = [e for e in events if isinstance(e, MessageResult)]
    codes = [r.outcome.reply.code for r in result.results]
    assert codes[0] == 250 and codes[1] // 100 == 4  # b: connection lost, try again
    assert any(isinstance(e, Closed) for e in events)


def test_lmtp_routes_are_read_from_the_config() -> None:
    config = parse_config('[domains]\nlocal = ["localhost", "lists.test"]\n'
                          '[routes]\n"lists.test" = "lmtp:[127.0.0.1]:2424"\n'
                          '"localhost" = "lmtp:unix:/run/dovecot/lmtp"\n', "m.toml")
    tcp, unix = config.lmtp_route("lists.test"), config.lmtp_route("localhost")
    assert tcp is not None and (tcp.host, tcp.port, tcp.unix) == ("127.0.0.1", 2424, None)
    assert unix is not None and unix.unix == "/run/dovecot/lmtp"
    assert unix.nexthop == "lmtp:unix:/run/dovecot/lmtp"
    assert tcp.nexthop == "lmtp:[127.0.0.1]:2424"


# --- the target, against a scripted LMTP server ---------------------------------------


class ScriptedLMTP:
    """An LMTP server on a Unix socket: per recipient, the reply its local part names
    (`ok`, `full`: 452, `gone`: 550 at RCPT); what it received is kept."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: TCP on a free loopback port (`port`)
        self.port = 0
        self.received: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_unix_server(self._client, str(self.path)) if self.path is not None
            else asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = int(server.sockets[0].getsockname()[1]) if self.path is None else 0
        self.server = server
        self.ready.set()
        self.loop.run_forever()
        server.close()

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 store.test LMTP\r\n")
        rcpts: list[str] = []
        while line := await r.readline():
            verb = line[:4].upper()
            if verb == b"LHLO":
                w.write(b"250-store.test\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb == b"MAIL":
                rcpts = []
                w.write(b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                who = line.split(b"<", 1)[1].split(b"@", 1)[0].decode()
                if who == "gone":
                    w.write(b"550 5.1.1 no such user\r\n")
                else:
                    rcpts.append(who)
                    w.write(b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                w.write(b"354 go\r\n")
                await w.drain()
                body = await r.readuntil(b"\r\n.\r\n")
                self.received.append(body)
                for who in rcpts:
                    w.write(b"452 4.2.2 mailbox full\r\n" if who == "full"
                            else b"250 2.0.0 saved\r\n")
            elif verb == b"QUIT":
                w.write(b"221 bye\r\n")
                await w.drain()
                break
            else:
                w.write(b"250 ok\r\n")
            await w.drain()
        w.close()

    def __enter__(self) -> ScriptedLMTP:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(params=["unix", "tcp"])
def lmtp_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ScriptedLMTP]:
    with ScriptedLMTP(tmp_path / "lmtp.sock" if request.param == "unix" else None) as server:
        yield server


def test_one_message_three_outcomes_recorded_per_recipient(
        tmp_path: Path, lmtp_server: ScriptedLMTP) -> None:
    import smtplib

    route = (Route("localhost", "localhost", 0, False, lmtp=True, unix=str(lmtp_server.path))
             if lmtp_server.path is not None else
             Route("localhost", "127.0.0.1", lmtp_server.port, False, lmtp=True))
    config = dataclasses.replace(live_config(tmp_path / "data"),
                                 routes=MappingProxyType({"localhost": route}))
    with LiveServer(config) as live:
        with smtplib.SMTP("127.0.0.1", live.port("mx"), timeout=10) as client:
            client.sendmail("", ["ok@localhost", "full@localhost", "gone@localhost"],
                            b"Subject: three ways\r\n\r\nhi\r\n")
        with SQLiteQueue(config.data_dir / "queue.db") as queue:
            def states() -> dict[str, tuple[str, int | None]] | None:
                [msg] = queue.list()
                got = {r.address: (str(r.state), r.last_code) for r in msg.recipients}
                return got if all(code for _, code in got.values()) else None

            got = wait_until("every recipient tried", states, 20)
            [msg] = queue.list()
            full = next(r for r in msg.recipients if r.address == "full@localhost")
    assert got == {"ok@localhost": ("delivered", 250), "full@localhost": ("deferred", 452),
                   "gone@localhost": ("failed", 550)}
    assert full.next_attempt is not None and full.last_text is not None
    assert "mailbox full" in full.last_text
    [body] = lmtp_server.received
    # No Return-Path from mailgate: the store is the final delivery and adds its own.
    assert body.startswith(b"Received: ") and b"Return-Path" not in body
    assert not (config.data_dir / "maildir").exists()  # nothing went to a Maildir


def test_the_outcomes_of_one_connection_are_recorded_side_by_side(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the LMTP session, its messages' outcomes are recorded in the Maildir
    target's threads, CONCURRENCY at once (so their records share commits; one after
    the other each paid a commit and its fsync): every decision of the first
    CONCURRENCY is under way at the same moment."""
    from mailgate.delivery.lmtp import LMTPDelivery
    from mailgate.queue import RecipientState
    from tests.test_delivery_worker import all_at_once, queue_for_mailboxes

    with ScriptedLMTP(None) as store:
        route = Route("localhost", "127.0.0.1", store.port, False, lmtp=True)
        config = dataclasses.replace(live_config(tmp_path / "data"),
                                     routes=MappingProxyType({"localhost": route}))
        config.data_dir.mkdir(parents=True)
        with SQLiteQueue(config.data_dir / "queue.db") as queue:
            ids = queue_for_mailboxes(queue, LMTPDelivery.CONCURRENCY * 2)
            lmtp = LMTPDelivery(config, queue)
            monkeypatch.setattr(lmtp, "_decide_each",
                                all_at_once(lmtp._decide_each, lmtp.CONCURRENCY))
            assert asyncio.run(lmtp.run_once()) == len(ids)
            states = [queue.show(q).recipients[0].state for q in ids]
        assert states == [RecipientState.DELIVERED] * len(ids)
        assert len(store.received) == len(ids)
