"""The one delivery worker loop (`delivery/worker.py`) and the values the borders share.

A stub target on a real SQLite queue shows what the loop does for any target (the
outbound engine and local delivery are tested through their own suites): a message
that breaks delivery is held alone and the rest is delivered; at shutdown, what was
claimed and not decided is given back, what was decided is left alone.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from mailgate.config import Config
from mailgate.delivery.bounce import null_mx_attempt
from mailgate.delivery.engine import DeliveryEngine
from mailgate.delivery.local import LocalDelivery
from mailgate.delivery.worker import Worker
from mailgate.dns import NULL_MX_REPLY, NullMX, Resolver
from mailgate.queue import (
    Attempt,
    NewMessage,
    NewRecipient,
    QueueUnavailable,
    RecipientState,
    WorkItem,
    domain_of,
)
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.server.policy import RECIPIENT_NULL_MX

T = TypeVar("T")


class Stub(Worker):
    """Delivers by recording 250; raises on `poison@`; stops after `stop_after` outcomes."""

    KIND = "stub"
    LEASE = 600.0
    BATCH = 10

    def __init__(self, queue: SQLiteQueue, stop_after: int) -> None:
        super().__init__(Config(), queue, None, logging.getLogger("test.stub"))
        self.stop_after = stop_after
        self.outcomes = 0
        self.rounds: list[int] = []  # messages per call of deliver

    def claim(self, now: float) -> list[WorkItem]:
        return self.queue.claim(now, self.BATCH, self.LEASE)

    async def deliver(self, items: Sequence[WorkItem]) -> None:
        self.rounds.append(len(items))
        for item in items:
            for r in item.recipients:
                if r.address.startswith("poison@"):
                    raise RuntimeError("poisoned")
                self.queue.record(r.id, Attempt(at=time.time(), host="stub", code=250,
                                                enhanced="2.0.0", text="ok",
                                                outcome="delivered", remote=False),
                                  claim_token=item.claim_token)
                self.decided(r.id)
                self.outcomes += 1
                if self.outcomes == self.stop_after:
                    self.stop()
                    return


def _queue(tmp_path: Path, *rcpts: str) -> tuple[SQLiteQueue, list[str]]:
    queue = SQLiteQueue(tmp_path / "queue.db")
    ids = [queue.enqueue(NewMessage(sender="a@example.net", content=b"x",
                                    recipients=[NewRecipient(r)], received_at=time.time()))
           for r in rcpts]
    return queue, ids


def _state(queue: SQLiteQueue, qid: str) -> RecipientState:
    return queue.show(qid).recipients[0].state


def test_a_message_that_breaks_the_round_is_held_alone_and_the_rest_delivered(
        tmp_path: Path) -> None:
    queue, ids = _queue(tmp_path, "one@example.org", "poison@example.org",
                        "two@example.org")
    try:
        worker = Stub(queue, stop_after=2)
        asyncio.run(asyncio.wait_for(worker.run(), 10))
        assert [_state(queue, q) for q in ids] == [
            RecipientState.DELIVERED, RecipientState.HELD, RecipientState.DELIVERED]
        reason = queue.show(ids[1]).recipients[0].held_reason
        assert reason is not None and "RuntimeError: poisoned" in reason
        # The round of three, then one by one: the first was decided and is skipped.
        assert worker.rounds == [3, 1, 1]
    finally:
        queue.close()


def test_stopping_gives_back_the_undecided_work_and_leaves_the_decided(
        tmp_path: Path) -> None:
    queue, ids = _queue(tmp_path, "one@example.org", "two@example.org",
                        "three@example.org")
    try:
        asyncio.run(asyncio.wait_for(Stub(queue, stop_after=1).run(), 10))
        assert _state(queue, ids[0]) == RecipientState.DELIVERED
        # Released: due at once, not after the 600 s lease.
        again = queue.claim(time.time(), 10, 60)
        assert sorted(i.message.id for i in again) == sorted(ids[1:])
    finally:
        queue.close()


class Outage(Stub):
    """The queue goes away after the first outcome of the first round: the second
    record, and the first release after it, raise as a database that restarts would."""

    STORAGE_RETRY = 0.05

    def __init__(self, queue: SQLiteQueue, stop_after: int) -> None:
        super().__init__(queue, stop_after)
        self.failures = {"record": 1, "release": 1}
        real_record, real_release = queue.record, queue.release

        def record(*args: object, **kwargs: object) -> None:
            if self.outcomes == 1 and self.failures["record"]:
                self.failures["record"] -= 1
                raise QueueUnavailable("the queue database is unreachable")
            real_record(*args, **kwargs)  # type: ignore[arg-type]

        def release(claim_token: str) -> None:
            if self.failures["release"]:
                self.failures["release"] -= 1
                raise QueueUnavailable("the queue database is unreachable")
            real_release(claim_token)

        queue.record = record  # type: ignore[method-assign]
        queue.release = release  # type: ignore[method-assign]


def test_work_whose_outcome_could_not_be_stored_is_given_back_when_the_queue_returns(
        tmp_path: Path) -> None:
    """A node that stays alive keeps its claims: without giving them back, the work of a
    round cut by a database restart would wait for the claim's lease (here 600 s)."""
    queue, ids = _queue(tmp_path, "one@example.org", "two@example.org",
                        "three@example.org")
    try:
        worker = Outage(queue, stop_after=3)
        asyncio.run(asyncio.wait_for(worker.run(), 10))
        assert worker.failures == {"record": 0, "release": 0}
        assert [_state(queue, q) for q in ids] == [RecipientState.DELIVERED] * 3
        assert worker.rounds == [3, 2]  # the two left, claimed again at once
    finally:
        queue.close()


class _Looking(Protocol):
    looks: int

    def wake(self) -> None: ...


async def _burst_of_rings(target: _Looking, gap: float) -> tuple[int, float]:
    """Wait for the target's first look (at once: nothing there), then ring it 50 times
    `gap` seconds apart: the looks the burst made, and how long it took."""
    while target.looks < 1:
        await asyncio.sleep(0.001)
    start = time.monotonic()
    for _ in range(50):
        target.wake()
        await asyncio.sleep(gap)
    return target.looks - 1, time.monotonic() - start


class Counting(Stub):
    """A stub that counts its looks at the queue."""

    looks = 0

    def claim(self, now: float) -> list[WorkItem]:
        self.looks += 1
        return super().claim(now)


def test_wake_ups_close_together_share_one_look(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message queued rings every worker, its target's or not: fifty rings in a
    burst make a look or two, not fifty, and what they rang for is still delivered."""
    monkeypatch.setattr(Worker, "PACE", 0.5)
    queue, _ = _queue(tmp_path)
    try:
        worker = Counting(queue, stop_after=1)

        async def main() -> int:
            task = asyncio.create_task(worker.run())
            burst, took = await _burst_of_rings(worker, 0.002)
            # One look a PACE at most, however long the burst took on this machine.
            allowed = 2 + int(took / Worker.PACE)
            qid = queue.enqueue(NewMessage(sender="a@example.net", content=b"x",
                                           recipients=[NewRecipient("late@example.org")],
                                           received_at=time.time()))
            worker.wake()
            await asyncio.wait_for(task, 10)  # delivered: the last ring was not lost
            assert _state(queue, qid) is RecipientState.DELIVERED
            assert burst <= allowed, (burst, allowed)  # without pacing: 50
            return burst

        asyncio.run(main())
    finally:
        queue.close()


class CostlyLooks(DeliveryEngine):
    """An engine whose every look takes LOOK seconds and finds nothing: the look that
    walks past thousands of due messages of a destination that is full."""

    LOOK = 0.05
    looks = 0

    async def claim_async(self, now: float) -> list[WorkItem]:
        self.looks += 1
        await asyncio.sleep(self.LOOK)
        return []


def test_costly_looks_that_find_nothing_are_paced_by_their_cost(tmp_path: Path) -> None:
    """With mail arriving (a ring for each message) and every look costly and empty,
    the engine looks about once per LOOK_SHARE looks' time, not once per ring; a ring
    after the burst is still answered by a look."""
    queue, _ = _queue(tmp_path)
    # Nothing is ever claimed, so nothing is resolved: the resolver's server is unused.
    engine = CostlyLooks(Config(), queue, Resolver([("127.0.0.1", 53)], timeout=1))

    async def main() -> tuple[int, int]:
        task = asyncio.create_task(engine.run())
        try:
            burst, took = await _burst_of_rings(engine, 0.01)
            # A look costs at least LOOK, so the next waits LOOK_SHARE * LOOK at least:
            # one look per such span, however slowly this machine ran the burst.
            allowed = 2 + int(took / (DeliveryEngine.LOOK_SHARE * CostlyLooks.LOOK))
            seen = engine.looks
            engine.wake()
            async with asyncio.timeout(10):  # the last ring was not lost
                while engine.looks == seen:
                    await asyncio.sleep(0.01)
            return burst, allowed
        finally:
            engine.stop()
            engine.wake()
            await asyncio.wait_for(task, 10)

    burst, allowed = asyncio.run(main())
    queue.close()
    assert burst <= allowed, (burst, allowed)  # one look per ring: about 9


def test_both_targets_run_the_one_loop() -> None:
    for target in (DeliveryEngine, LocalDelivery):
        assert issubclass(target, Worker)
        for name in ("run", "run_once", "stop", "wake", "quarantine", "notice_guarded",
                     "_release_claims", "_deliver_one_by_one"):
            assert name not in vars(target), f"{target.__name__} has its own {name}"


def test_every_null_mx_reply_has_one_source() -> None:
    """556 5.1.10 and its words, from dns.NULL_MX_REPLY, at every border; the texts
    are the ones mailgate always sent."""
    route, domain = NullMX("nullmx.example"), "nullmx.example"
    attempt = null_mx_attempt(domain, 0.0)
    replies = [RECIPIENT_NULL_MX, route.reply(), route.undelivered()]
    for code, enhanced, text in [(r.code, r.enhanced, r.text) for r in replies] + [
            (attempt.code, attempt.enhanced, attempt.text)]:
        assert (code, enhanced) == (556, "5.1.10") == (NULL_MX_REPLY.code,
                                                       NULL_MX_REPLY.enhanced)
        assert text.startswith(NULL_MX_REPLY.text + ": ")
    assert RECIPIENT_NULL_MX.text == ("Recipient address has null MX: its domain accepts "
                                      "no mail (RFC 7505)")
    assert route.reply().text == "Recipient address has null MX: nullmx.example"
    assert attempt.text == route.undelivered().text == (
        "Recipient address has null MX: nullmx.example publishes MX 0 . and accepts no "
        "mail (RFC 7505); no connection was attempted")


def test_domain_of_a_stored_address() -> None:
    assert domain_of("bob@Example.ORG") == "example.org"
    assert domain_of('"a@b"@xn--bcher-kva.example') == "xn--bcher-kva.example"
    assert domain_of("") == ""
    assert domain_of("postmaster") == ""


def queue_for_mailboxes(queue: SQLiteQueue, n: int) -> list[str]:
    """`n` messages queued, one for each of u0@localhost, u1@localhost, ..."""
    return [queue.enqueue(NewMessage(sender="a@example.net", content=b"Subject: x\r\n\r\nx\r\n",
                                     recipients=[NewRecipient(f"u{i}@localhost")],
                                     received_at=time.time()))
            for i in range(n)]


def all_at_once(fn: Callable[..., T], parties: int) -> Callable[..., T]:
    """`fn`, called only once `parties` threads are in it at the same moment: one after
    the other, the first would wait alone until the barrier broke (20 s), and raise."""
    together = threading.Barrier(parties, timeout=20)

    def wrapped(*args: Any) -> T:
        together.wait()
        return fn(*args)

    return wrapped


def test_local_delivery_writes_several_messages_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local delivery writes CONCURRENCY messages at once: every one of their writes is
    under way at the same moment, and all are delivered (one after the other, the first
    message would be held with the broken barrier as its reason)."""
    from tests.support.smtpwire import loopback_config

    config = loopback_config(tmp_path / "data")
    queue = SQLiteQueue(config.data_dir / "queue.db")
    try:
        ids = queue_for_mailboxes(queue, LocalDelivery.CONCURRENCY * 2)
        local = LocalDelivery(config, queue)
        monkeypatch.setattr(local, "_write", all_at_once(local._write, local.CONCURRENCY))
        assert asyncio.run(local.run_once()) == len(ids)
        assert [_state(queue, q) for q in ids] == [RecipientState.DELIVERED] * len(ids)
        assert local.delivered == len(ids)
        boxes = config.data_dir / "maildir" / "localhost"
        assert sorted(len(list((boxes / f"u{i}" / "new").iterdir()))
                      for i in range(len(ids))) == [1] * len(ids)
    finally:
        queue.close()
