"""Delivery that no message can stop: a poison message is held with its reason while
the rest keeps moving, and a crashed delivery task is restarted.

The engine runs its real loop (`DeliveryEngine.run`) against a real SQLite queue and a
real receiving MTA (aiosmtpd, tests/support/fakemx.py). The poison messages are queued directly
through the queue API, as if they had slipped past the SMTP server's checks (or were
queued by an older mailgate).
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailgate import metrics
from mailgate import serve as app_module
from mailgate.delivery import engine as engine_module
from mailgate.delivery import local as local_module
from mailgate.delivery.engine import DeliveryEngine
from mailgate.delivery.local import LocalDelivery
from mailgate.delivery.maildir import deliver as maildir_deliver
from mailgate.queue import NewMessage, NewRecipient, RecipientState
from mailgate.queue.report import show_json, show_text
from mailgate.queue.sqlite import SQLiteQueue
from tests import test_delivery
from tests.support.fakemx import MX1, FakeMX
from tests.support.live import LiveServer
from tests.support.smtpwire import loopback_config, wait_until
from tests.test_delivery import CONTENT, Outbound

pytest_plugins = ["tests.support.dnsserver", "tests.support.fakemx"]

outbound = test_delivery.outbound  # test_delivery.py's fixture, found here by name

HELD = RecipientState.HELD
DELIVERED = RecipientState.DELIVERED
FAILED = RecipientState.FAILED

BAD_ENVIDS = ["\r\n", "\x00", "caf\u00e9", "\x7f", "a" * 101]


def _submit(out: Outbound, rcpt: str, envid: str | None = None) -> str:
    return out.queue.enqueue(NewMessage(
        sender="alice@localhost", recipients=[NewRecipient(rcpt)], content=CONTENT,
        received_at=out.clock(), client_address="127.0.0.1", client_helo="client.test",
        envid=envid))


async def _run_until(engine: DeliveryEngine, done: Callable[[], bool],
                     timeout: float = 20.0) -> None:
    """Run the engine's real loop until `done()`; fail if the loop ends by itself."""
    task = asyncio.create_task(engine.run())
    try:
        async with asyncio.timeout(timeout):
            while not done():
                if task.done():
                    exc = task.exception()
                    raise AssertionError(f"the delivery loop ended: {exc!r}") from exc
                await asyncio.sleep(0.05)
    finally:
        engine.stop()
        await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("envid", BAD_ENVIDS)
def test_a_bad_stored_envid_no_longer_stops_delivery(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX],
        envid: str) -> None:
    """Found by an attacker: one message whose ENVID decoded to CR LF (or NUL, DEL,
    non-ASCII) killed the outbound task for good. Now it goes without the ENVID, which
    the next hop could not be given, and the messages around it go too."""
    mx = fake_mx(MX1)
    out = outbound()
    good = [_submit(out, f"before{i}@one.test") for i in range(3)]
    bad = _submit(out, "victim@one.test", envid=envid)
    bounced = _submit(out, "refuse-550@one.test", envid=envid)
    good += [_submit(out, f"after{i}@one.test") for i in range(3)]

    def settled() -> bool:
        return all(r.state in (DELIVERED, FAILED) for q in [*good, bad, bounced]
                   for r in out.queue.show(q).recipients)

    asyncio.run(_run_until(out.engine, settled))
    assert sorted(mx.all_rcpts()) == sorted(
        [f"before{i}@one.test" for i in range(3)] + ["victim@one.test"]
        + [f"after{i}@one.test" for i in range(3)])
    assert out.queue.show(bad).recipients[0].state == DELIVERED
    # The failure notice quotes the ENVID as RFC 3461 xtext: no raw control character
    # reaches the report's header fields.
    assert len(out.bounces) == 1
    report = out.bounces[0].content
    field = next(line for line in report.split(b"\r\n")
                 if line.startswith(b"Original-Envelope-Id:"))
    assert all(0x21 <= b <= 0x7E or b == 0x20 for b in field), field
    assert field.split(b":", 1)[1].strip() == "".join(
        c if 0x21 <= ord(c) <= 0x7E and c not in "+=" else
        "".join(f"+{b:02X}" for b in c.encode()) for c in envid).encode()


POISON = "poison@one.test"


def _poison_envelope(monkeypatch: pytest.MonkeyPatch) -> str:
    """A bug that one message triggers while its envelope is made."""
    real = engine_module._path

    def path(addr: str, allow_null: bool = False) -> Any:
        if addr == POISON:
            raise RuntimeError("poisoned\r\nenvelope")
        return real(addr, allow_null)

    monkeypatch.setattr(engine_module, "_path", path)
    return POISON


def _poison_record(monkeypatch: pytest.MonkeyPatch) -> str:
    """A bug that one message triggers once its replies are in, mid-connection."""
    real = DeliveryEngine._decide

    async def decide(self: DeliveryEngine, unit: Any, rcpt: Any, *args: Any) -> str:
        if rcpt.address == POISON:
            raise KeyError("poisoned outcome")
        return await real(self, unit, rcpt, *args)

    monkeypatch.setattr(DeliveryEngine, "_decide", decide)
    return POISON


def _poison_grouping(monkeypatch: pytest.MonkeyPatch) -> str:
    """A bug that one message's domain triggers while the round is grouped, before any
    destination is delivered: the whole round goes one message at a time."""
    real = DeliveryEngine._destination

    def destination(self: DeliveryEngine, domain: str) -> Any:
        if domain == "poison.test":
            raise UnicodeError("poisoned domain")
        return real(self, domain)

    monkeypatch.setattr(DeliveryEngine, "_destination", destination)
    return "someone@poison.test"


@pytest.mark.parametrize("poison", [_poison_envelope, _poison_record, _poison_grouping])
def test_a_poison_message_is_held_with_its_reason_and_the_rest_moves(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        poison: Callable[[pytest.MonkeyPatch], str]) -> None:
    address = poison(monkeypatch)
    mx = fake_mx(MX1)
    out = outbound()
    good = [_submit(out, f"before{i}@one.test") for i in range(3)]
    bad = _submit(out, address)
    good += [_submit(out, f"after{i}@one.test") for i in range(3)]
    errors = _worker_errors()

    def settled() -> bool:
        return all(r.state == DELIVERED for q in good for r in out.queue.show(q).recipients) \
            and out.queue.show(bad).recipients[0].state == HELD

    with caplog.at_level(logging.ERROR, logger="mailgate.delivery"):
        asyncio.run(_run_until(out.engine, settled))
    # Each good message went exactly once, in spite of the one that broke its connection.
    assert sorted(r for r in mx.all_rcpts() if r != address) == sorted(
        [f"before{i}@one.test" for i in range(3)] + [f"after{i}@one.test" for i in range(3)])
    [rcpt] = out.queue.show(bad).recipients
    assert rcpt.held_reason is not None and "internal error" in rcpt.held_reason
    assert "poisoned" in rcpt.held_reason and "\r" not in rcpt.held_reason
    assert _worker_errors() > errors
    # Logged with its traceback, naming the queue id.
    logged = [r for r in caplog.records if bad in r.getMessage() and r.exc_info]
    assert logged, [r.getMessage() for r in caplog.records]
    # Held means held: the engine leaves it alone from now on.
    assert out.run() == 0
    # And it shows where an administrator looks.
    shown = json.loads(show_json(out.queue.show(bad)))
    assert "poisoned" in shown["recipients"][0]["held_reason"]
    assert "held: delivery failed with an internal error" in show_text(out.queue.show(bad))


def _worker_errors() -> float:
    value = metrics.REGISTRY.get_sample_value(
        "mailgate_delivery_worker_errors_total", {"worker": "outbound"})
    return value or 0.0


def test_each_outcome_is_recorded_when_its_reply_arrives_not_after_the_connection(
        outbound: Callable[..., Outbound], fake_mx: Callable[..., FakeMX]) -> None:
    """A crash used to resend every message of a connection whose outcomes were not yet
    recorded (116 in one run): now a message is recorded as soon as its 250 is in, so
    while the last message of a shared connection is still in flight the ones before it
    are already delivered in the queue."""
    mx = fake_mx(MX1)
    out = outbound()
    gate = threading.Event()
    mx.stalling["slow@one.test"] = gate
    early = [_submit(out, f"early{i}@one.test") for i in range(5)]
    slow = _submit(out, "slow@one.test")

    def early_recorded() -> bool:
        return all(out.queue.show(q).recipients[0].state == DELIVERED for q in early)

    async def scenario() -> None:
        task = asyncio.create_task(out.engine.run())
        try:
            await _wait(task, early_recorded)
            # One connection, the last message still waiting for its reply.
            assert mx.connections == 1 and not gate.is_set()
            assert out.queue.show(slow).recipients[0].state != DELIVERED
            gate.set()
            await _wait(task, lambda: out.queue.show(slow).recipients[0].state == DELIVERED)
        finally:
            gate.set()
            out.engine.stop()
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert out.engine.stats.messages_per_connection == [6]


async def _wait(task: asyncio.Task[None], done: Callable[[], bool],
                timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            assert not task.done(), task
            await asyncio.sleep(0.02)


# --- local delivery and the supervisor, in the live server -----------------------------


def _send_local(port: int, rcpt: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail("alice@example.org")
        assert code == 250
        code, text = client.rcpt(rcpt)
        assert code == 250, (code, text)
        code, text = client.data(f"Subject: to {rcpt}\r\n\r\nhello\r\n".encode())
        assert code == 250, (code, text)
        return text.decode().rsplit(" ", 1)[-1]


def _state(queue: SQLiteQueue, qid: str) -> tuple[RecipientState, str | None]:
    [r] = queue.show(qid).recipients
    return r.state, r.held_reason


def _sample(name: str, worker: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"worker": worker}) or 0.0


def test_a_poison_message_in_local_delivery_is_held_and_the_rest_delivered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = maildir_deliver

    def deliver(root: Path, address: str, content: bytes, hostname: str | None = None
                ) -> Path:
        if address.startswith("poison@"):
            raise RuntimeError("poisoned mailbox")  # a bug one message triggers
        return real(root, address, content, hostname)

    monkeypatch.setattr(local_module, "deliver", deliver)
    errors = _sample("mailgate_delivery_worker_errors_total", "local")
    with LiveServer(loopback_config(tmp_path / "data")) as srv:
        port = srv.port("mx")
        ids = [_send_local(port, rcpt) for rcpt in
               ("first@localhost", "poison@localhost", "last@localhost")]
        with SQLiteQueue(srv.config.data_dir / "queue.db") as queue:
            wait_until("the good messages delivered and the poison held", lambda: [
                _state(queue, q)[0] for q in ids] == [DELIVERED, HELD, DELIVERED])
            reason = _state(queue, ids[1])[1]
    assert reason is not None and "poisoned mailbox" in reason
    assert _sample("mailgate_delivery_worker_errors_total", "local") == errors + 1
    assert [p.parent.parent.name for p in sorted(
        (tmp_path / "data" / "maildir").glob("*/*/new/*"))] == ["first", "last"]


@pytest.mark.parametrize("how", ["raises", "returns"])
def test_a_delivery_task_that_ends_is_restarted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        how: str) -> None:
    real = LocalDelivery.run
    calls = 0

    async def run(self: LocalDelivery) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            if how == "raises":
                raise RuntimeError("the local task fell over")
            return
        await real(self)

    monkeypatch.setattr(LocalDelivery, "run", run)
    monkeypatch.setattr(app_module, "RESTART_BACKOFF", 0.2)
    restarts = _sample("mailgate_delivery_worker_restarts_total", "local")
    with caplog.at_level(logging.ERROR, logger="mailgate"), \
            LiveServer(loopback_config(tmp_path / "data")) as srv:
        qid = _send_local(srv.port("mx"), "someone@localhost")
        with SQLiteQueue(srv.config.data_dir / "queue.db") as queue:
            wait_until("the message delivered by the restarted task",
                       lambda: _state(queue, qid)[0] == DELIVERED, 20)
    assert calls == 2  # restarted once; the clean stop at the end is not restarted
    assert _sample("mailgate_delivery_worker_restarts_total", "local") == restarts + 1
    [record] = [r for r in caplog.records if "local delivery" in r.getMessage()]
    assert ("unexpected error" in record.getMessage()) == (how == "raises")
    assert (record.exc_info is not None) == (how == "raises")
