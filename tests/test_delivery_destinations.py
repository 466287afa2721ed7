"""Claiming by destination, and fairness between destinations, through `mailgate serve`
(tests/support/live.py) with real DNS (tests/support/dnsserver.py) and real receiving
MTAs on loopback (aiosmtpd, tests/support/fakemx.py): mx1.test on 127.0.0.2 takes the
fast domains, mx2.test on 127.0.0.3 is the slow one.

Issue 17: a claim used to take messages in arrival order, so with many domains a claim
spanned many of them and each message went over a connection of its own; and a claim
was delivered whole before the next, so one stalled destination held up every other.
Every wait polls with a deadline; nothing asserts on timings.
"""

from __future__ import annotations

import dataclasses
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from mailgate.config import Config, Delivery, DNSConfig
from mailgate.delivery.engine import DeliveryEngine
from mailgate.delivery.schedule import Schedule
from mailgate.queue import NewMessage, NewRecipient, RecipientState
from mailgate.queue.sqlite import SQLiteQueue
from tests.support.fakemx import MX1 as FAST_HOST
from tests.support.fakemx import MX2, FakeMX, wait_until
from tests.support.live import LiveServer, live_config

if TYPE_CHECKING:
    from tests.support.dnsserver import DNSServer

pytest_plugins = ["tests.support.dnsserver", "tests.support.fakemx"]

DELIVERED = RecipientState.DELIVERED
FAST = [f"fast{i}.test" for i in range(4)]
SLOW = "slow.test"
CONTENT = b"Subject: many destinations\r\n\r\nhello\r\n"


@pytest.fixture
def zone(dns_server: DNSServer) -> DNSServer:
    dns_server.add([f"{d}. MX 10 mx1.test." for d in FAST] + [f"{SLOW}. MX 10 mx2.test."])
    return dns_server


def _config(tmp_path: Path, dns: DNSServer, port: int, **delivery: Any) -> Config:
    config = live_config(tmp_path / "data", dns=DNSConfig((dns.nameserver,)),
                         delivery=Delivery(smtp_port=port, retry_schedule=(60.0,),
                                           **delivery))
    return dataclasses.replace(config, policy=dataclasses.replace(
        config.policy, recipient_null_mx_check=False))


def _fill(data_dir: Path, recipients: list[str]) -> list[str]:
    """Queue one message per recipient, in this order, before the server starts (a
    queue that built up while mailgate was down): the first claim sees them all."""
    data_dir.mkdir(parents=True, exist_ok=True)
    queue = SQLiteQueue(data_dir / "queue.db")
    try:
        now = time.time()
        return [queue.enqueue(NewMessage(sender="alice@sender.test",
                                         recipients=[NewRecipient(r)], content=CONTENT,
                                         received_at=now)) for r in recipients]
    finally:
        queue.close()


@pytest.fixture
def short_poll(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(DeliveryEngine, "POLL", 0.1)
    yield


def _states(queue: SQLiteQueue, ids: list[str]) -> Counter[RecipientState]:
    return Counter(r.state for qid in ids for r in queue.show(qid).recipients)


def test_each_domain_s_messages_go_over_one_connection(
        tmp_path: Path, zone: DNSServer, fake_mx: Callable[..., FakeMX], mx_port: int,
        monkeypatch: pytest.MonkeyPatch, short_poll: None) -> None:
    """4 domains x 6 messages, queued interleaved (a, b, c, d, a, b, ...), with a claim
    of 8 messages: by arrival order each claim would span all four domains, 2 messages
    each, 12 connections in all; claimed by destination, one connection per domain."""
    monkeypatch.setattr(DeliveryEngine, "BATCH", 8)
    mx = fake_mx(FAST_HOST)
    rcpts = [f"user{i}@{d}" for i in range(6) for d in FAST]
    ids = _fill(tmp_path / "data", rcpts)
    with LiveServer(_config(tmp_path, zone, mx_port)):
        queue = SQLiteQueue(tmp_path / "data" / "queue.db")
        try:
            wait_until(lambda: _states(queue, ids)[DELIVERED] == len(ids) or None, 20,
                       "every message delivered")
        finally:
            queue.close()
    assert sorted(mx.all_rcpts()) == sorted(rcpts)
    assert mx.connections == len(FAST), mx.connections
    per_connection: dict[int, set[str]] = {}
    for m in mx.received:
        for rcpt in m.rcpt_tos:
            per_connection.setdefault(m.connection, set()).add(rcpt.partition("@")[2])
    # Each connection carried one domain's six messages.
    assert sorted(len(v) for v in per_connection.values()) == [1] * len(FAST)
    assert Counter(m.connection for m in mx.received) == dict.fromkeys(per_connection, 6)


def test_a_stalled_destination_does_not_hold_up_the_others(
        tmp_path: Path, zone: DNSServer, fake_mx: Callable[..., FakeMX], mx_port: int,
        monkeypatch: pytest.MonkeyPatch, short_poll: None) -> None:
    """slow.test's server takes connections and never answers EHLO. Its 30 messages,
    queued first (3 connections' worth: 10 per connection here), get one connection
    (slow start: no more until one delivers) and the rest wait in the queue; the fast
    domains' messages, queued before and after, are all delivered meanwhile, while
    slow.test still holds its connection and has received nothing. Delivered once the
    slow server answers."""
    monkeypatch.setattr(DeliveryEngine, "MESSAGES_PER_CONNECTION", 10)
    gate = threading.Event()
    slow = fake_mx(MX2, ehlo_gate=gate)
    fast = fake_mx(FAST_HOST)
    slow_rcpts = [f"s{i}@{SLOW}" for i in range(30)]
    early = [f"early{i}@{d}" for i in range(3) for d in FAST]
    slow_ids = _fill(tmp_path / "data", slow_rcpts)
    fast_ids = _fill(tmp_path / "data", early)
    config = _config(tmp_path, zone, mx_port, concurrency=4, concurrency_per_destination=4)
    try:
        with LiveServer(config) as live:
            queue = SQLiteQueue(tmp_path / "data" / "queue.db")
            try:
                wait_until(lambda: slow.connections >= 1 or None, 20, "slow.test connected")
                wait_until(lambda: _states(queue, fast_ids)[DELIVERED] == len(fast_ids)
                           or None, 20, "the early fast messages delivered")
                # Mail that arrives now, while slow.test stalls, goes too.
                late = [f"late{i}@{d}" for i in range(3) for d in FAST]
                with smtplib.SMTP("127.0.0.1", live.port("mx"), timeout=10) as c:
                    for rcpt in late:
                        c.sendmail("alice@sender.test", [rcpt], CONTENT)
                known = set(slow_ids + fast_ids)
                late_ids = [m.id for m in queue.list(limit=1000) if m.id not in known]
                assert len(late_ids) == len(late)
                wait_until(lambda: _states(queue, late_ids)[DELIVERED] == len(late_ids)
                           or None, 20, "the late fast messages delivered")
                assert sorted(fast.all_rcpts()) == sorted(early + late)
                # slow.test: still stalled, one connection, nothing delivered, and its
                # messages beyond that connection's still waiting in the queue.
                assert slow.connections == 1
                assert slow.received == []
                assert _states(queue, slow_ids)[DELIVERED] == 0
                gate.set()
                wait_until(lambda: _states(queue, slow_ids)[DELIVERED] == len(slow_ids)
                           or None, 30, "slow.test's messages delivered once it answers")
                assert sorted(slow.all_rcpts()) == sorted(slow_rcpts)
                # The stalled connection carried its 10; the other 20 went 10 a
                # connection once it had delivered, not one each.
                assert slow.connections == 3, slow.connections
                assert Counter(m.connection for m in slow.received) == {1: 10, 2: 10, 3: 10}
            finally:
                queue.close()
    finally:
        gate.set()


def test_the_schedule_s_slow_start_and_shares() -> None:
    """One connection per destination until one delivers, then one more per connection
    that did, up to the limit; back to one after a connection that delivered nothing.
    A destination with half the messages in flight is full, and its domains are left
    out of the next claim; the room for a claim shrinks with what is in flight."""
    s = Schedule(concurrency=10, per_destination=3, batch=500, max_messages=1000,
                 max_bytes=10_000_000)
    one = Counter({"a.test": 10})
    s.add("a.test", one, 1, 10, 1000)
    assert s.full("a.test") and s.excluded() == ["a.test"]
    s.done("a.test", one, 1, 10, 1000)
    assert not s.full("a.test") and s.excluded() == []
    s.feedback("a.test", delivered=True)
    s.feedback("a.test", delivered=True)
    s.feedback("a.test", delivered=True)
    assert s.window("a.test") == 3  # not past per_destination
    s.add("a.test", one, 2, 20, 2000)
    assert not s.full("a.test")
    s.feedback("a.test", delivered=False)
    assert s.window("a.test") == 1 and s.full("a.test")
    s.done("a.test", one, 2, 20, 2000)
    # Half the messages in flight: full, whatever its window.
    s.feedback("b.test", delivered=True)
    big = Counter({"b.test": 500, "c.test": 1})
    s.add("route", big, 1, 500, 5000)
    assert s.full("route") and s.excluded() == ["b.test", "c.test"]
    assert s.room() == 500
    s.add("d.test", Counter({"d.test": 400}), 1, 400, 4000)
    assert s.room() == 100
    s.done("route", big, 1, 500, 5000)
    assert s.excluded() == ["d.test"] and s.room() == 500
