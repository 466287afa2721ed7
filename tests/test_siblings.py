"""The board the workers of one server share (siblings.py), between real processes.

Each test forks: the child is one worker, this process the other (or the parent that
`forget`s a worker that ended). What one process counts, the other must see.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import time
from collections.abc import Callable

import pytest

from mailgate import siblings
from mailgate.siblings import AUTH_ROWS, KEY, Board, Doorbell, Link, _Table, digest


def in_child(board: Board, index: int, work: Callable[[], object]) -> int:
    """Run `work` as worker `index` in a child process; its pid once it has ended
    (exit status 0 unless `work` raised)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            board.attach(index)
            work()
            status = 0
        finally:
            os._exit(status)
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 0
    return pid


def test_admission_counts_every_worker_s_connections() -> None:
    board = Board(2, connections=5, slots=4)
    board.attach(0)
    in_child(board, 1, lambda: [board.admit("192.0.2.1", 5, 3) for _ in range(2)])
    assert board.open_connections() == 2
    assert board.admit("192.0.2.1", 5, 3) is None  # the third from this address
    assert board.admit("192.0.2.1", 5, 3) == "per_ip"
    assert board.admit("192.0.2.2", 5, 3) is None
    assert board.admit("192.0.2.2", 5, 3) is None  # five in all now
    assert board.admit("192.0.2.3", 5, 3) == "limit"
    board.leave("192.0.2.2")
    assert board.admit("192.0.2.3", 5, 3) is None


def test_a_worker_that_ended_is_forgotten() -> None:
    """Its connections and slots were never given back (kill -9): `forget` frees them."""
    board = Board(2, connections=3, slots=2)
    board.attach(0)

    def hold() -> None:
        assert board.admit("192.0.2.1", 3, 3) is None
        assert board.take_slot("mx.example", 1) is not None
        board.share_counts({("ip", "192.0.2.9"): 4}, 600)

    in_child(board, 1, hold)
    assert board.take_slot("mx.example", 1) is None
    assert board.share_counts({}, 600).get(("ip", "192.0.2.9"), 0) == 4
    board.forget(1)
    assert board.open_connections() == 0
    assert board.take_slot("mx.example", 1) is not None
    assert board.share_counts({}, 600).get(("ip", "192.0.2.9"), 0) == 0
    assert [board.admit("192.0.2.1", 3, 3) for _ in range(4)] == [None, None, None, "limit"]


def test_a_worker_killed_holding_the_lock_stops_no_one() -> None:
    board = Board(2, connections=3, slots=2)
    board.attach(0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        board.attach(1)
        with board._lock():
            os.write(w, b"x")
            time.sleep(60)
        os._exit(0)
    os.read(r, 1)  # the child holds the lock now
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert board.admit("192.0.2.1", 3, 3) is None  # the kernel let go of its lock


def test_slots_are_shared_per_destination() -> None:
    board = Board(2, connections=3, slots=4)
    board.attach(0)
    in_child(board, 1, lambda: [board.take_slot("mx.example", 2) for _ in range(2)])
    assert board.take_slot("mx.example", 2) is None  # two in all, not two per worker
    assert board.take_slot("mx.example", 3) is not None  # a raised limit
    assert board.take_slot("other.example", 2) is not None  # per destination
    in_child(board, 1, lambda: board.give_slot("mx.example"))
    assert board.slots_held("mx.example") == 2
    board.give_slot("mx.example")
    board.give_slot("mx.example")  # one more than this worker holds: ignored
    assert board.slots_held("mx.example") == 1


def test_auth_failures_are_the_other_workers_within_the_window() -> None:
    board = Board(2, connections=3, slots=2, window=600)
    board.attach(0)
    t = 1_000_000.0
    in_child(board, 1, lambda: board.share_counts(
        {("ip", "192.0.2.7"): 3, ("user", "carol"): 2}, 600, now=t))
    in_child(board, 1, lambda: board.share_counts(
        {("ip", "192.0.2.7"): 2, ("user", "carol"): -1}, 600, now=t + 120))
    mine = board.share_counts({("ip", "192.0.2.7"): 9}, 600, now=t + 130)
    assert mine.get(("ip", "192.0.2.7"), 0) == 5  # the other worker's, not its own
    assert mine.get(("user", "carol"), 0) == 1
    assert mine.get(("ip", "192.0.2.8"), 0) == 0
    later = board.share_counts({}, 600, now=t + 650)  # the first bucket fell out
    assert later.get(("ip", "192.0.2.7"), 0) == 2
    assert board.share_counts({}, 600, now=t + 800).get(("ip", "192.0.2.7"), 0) == 0


def test_a_full_auth_table_makes_room_from_expired_keys() -> None:
    board = Board(2, connections=3, slots=2, window=600)
    board.attach(1)
    t = 1_000_000.0
    board.share_counts({("user", f"u{i}"): 1 for i in range(AUTH_ROWS)}, 600, now=t)
    board.share_counts({("user", "late"): 1}, 600, now=t + 1)  # full: stays its own
    board.attach(0)
    assert board.share_counts({}, 600, now=t + 2).get(("user", "late"), 0) == 0
    board.attach(1)
    board.share_counts({("user", "later"): 1}, 600, now=t + 700)  # the others expired
    board.attach(0)
    assert board.share_counts({}, 600, now=t + 701).get(("user", "later"), 0) == 1


def test_a_key_is_found_only_at_a_row_s_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search at C speed (every lookup's, with PROBES at 0) counts a match only at a
    row's start."""
    monkeypatch.setattr(siblings, "PROBES", 0)
    board = Board(1, connections=3, slots=2)
    table: _Table = board.conns
    target = digest("ip", "192.0.2.1")
    # Two rows whose bytes, read across the boundary, spell the key.
    table.mm[table.k0:table.k0 + KEY] = b"\x01" * (KEY - 5) + target[:5]
    table.mm[table.k0 + KEY:table.k0 + 2 * KEY] = target[5:] + b"\x01" * 5
    assert table.find(target) == -1
    row = table.claim(target)
    assert row not in (0, 1) and table.find(target) == row


def crowd(n: int, home: bytes = b"") -> list[bytes]:
    """`n` distinct keys; with `home`, all starting with those 8 bytes, so they all
    want the same row and each probe runs past the others."""
    keys = [digest("k", str(i)) for i in range(n)]
    return [home + k[8:] for k in keys] if home else keys


@pytest.mark.parametrize("probes", [32, 3, 0])
@pytest.mark.parametrize("colliding", [False, True])
def test_the_table_keeps_every_key_it_was_given_through_takes_and_gives(
        monkeypatch: pytest.MonkeyPatch, probes: int, colliding: bool) -> None:
    """Thousands of random takes and gives against a dict: every key the model holds
    is found with its count, no other, and the rows in use are the model's. Keys that
    all want one row make runs far longer than PROBES, so probes go on at C speed, and
    frees inside runs move the keys after them back."""
    import random

    monkeypatch.setattr(siblings, "PROBES", probes)
    board = Board(1, connections=20, slots=2)
    table: _Table = board.conns  # 41 rows
    keys = crowd(60, home=b"\x07" * 8 if colliding else b"")
    model: dict[bytes, int] = {}
    rng = random.Random(17)
    for step in range(4000):
        key = rng.choice(keys)
        if rng.random() < 0.55:
            ok = table.take(key, 0, limit=3)
            full = len(model) >= table.rows and key not in model
            assert ok == (model.get(key, 0) < 3 and not full), step
            if ok:
                model[key] = model.get(key, 0) + 1
        else:
            assert table.give(key, 0) == (key in model), step
            if key in model:
                model[key] -= 1
                if not model[key]:
                    del model[key]
        if step % 97 == 0 or step > 3900:
            for k in keys:
                row = table.find(k)
                assert (row >= 0) == (k in model), (step, k)
                if row >= 0:
                    assert table.total(row) == model[k]
            assert sorted(table.used()) == sorted(table.find(k) for k in model)
    for key, n in list(model.items()):
        for _ in range(n):
            assert table.give(key, 0)
    assert list(table.used()) == []
    assert all(table._key(r) == siblings.ZERO for r in range(table.rows))


def test_a_full_table_refuses_and_takes_again_once_a_row_is_free() -> None:
    board = Board(1, connections=2, slots=2)
    table: _Table = board.conns  # 5 rows
    keys = crowd(6, home=b"\x01" * 8)
    assert [table.take(k, 0, limit=1) for k in keys] == [True] * 5 + [False]
    assert table.give(keys[2], 0)  # a free row inside the run: the later keys move back
    assert table.find(keys[5]) == -1 and table.take(keys[5], 0, limit=1)
    assert all(table.find(k) >= 0 for k in keys if k != keys[2])


@pytest.mark.parametrize("what", ["report", "wake"])
def test_a_link_carries_reports_and_wake_ups(what: str) -> None:
    [(first, other)] = Link.pairs(1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        first.sock.close()

        async def serve() -> None:
            await other.answer({"wake": lambda: os.write(w, b"w") and None,
                                "report": lambda: {"stats": {"accepted": 7}}})

        asyncio.run(serve())
        os._exit(0)
    other.sock.close()

    async def ask() -> object:
        if what == "wake":
            await first.tell("wake")
            return await asyncio.to_thread(os.read, r, 1)
        return await first.ask("report")

    try:
        answer = asyncio.run(ask())
        assert answer == (b"w" if what == "wake" else {"stats": {"accepted": 7}})
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_a_sibling_that_ended_answers_nothing() -> None:
    a, b = socket.socketpair()
    b.close()
    assert asyncio.run(Link(a).ask("report")) is None


def test_the_doorbell_never_blocks_the_ringer_and_drains_to_silence() -> None:
    bell = Doorbell()

    def readable() -> bool:
        return bool(select.select([bell.read_fd], [], [], 0)[0])

    try:
        assert not readable()
        for _ in range(200_000):  # far more than a pipe holds: a full pipe drops the ring
            bell.ring()
        assert readable()
        bell.drain()
        assert not readable()
        pid = os.fork()
        if pid == 0:  # a listener rings from another process
            bell.ring()
            os._exit(0)
        os.waitpid(pid, 0)
        assert readable()
    finally:
        os.close(bell.read_fd)
        os.close(bell.write_fd)


def test_the_doorbell_wakes_at_once_then_rests_and_keeps_the_rings_of_its_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first ring wakes the deliverer at once; rings in the rest after it wake it
    once, when the rest ends; a quiet bell wakes nobody. (A long rest here, so that a
    slow machine cannot end it before the test looks.)"""
    monkeypatch.setattr(Doorbell, "REST", 0.5)
    bell = Doorbell()
    wakes: list[float] = []

    async def until(n: int) -> None:
        for _ in range(500):
            if len(wakes) >= n:
                return
            await asyncio.sleep(0.01)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        bell.answer(loop, lambda: wakes.append(loop.time()))
        await asyncio.sleep(0.05)
        assert wakes == []
        bell.ring()
        await until(1)
        assert len(wakes) == 1
        for _ in range(3):
            bell.ring()  # in the rest: one wake for the three, when it ends
        await asyncio.sleep(0.05)
        assert len(wakes) == 1
        await until(2)
        assert len(wakes) == 2 and wakes[1] - wakes[0] >= Doorbell.REST * 0.9
        await asyncio.sleep(Doorbell.REST * 1.5)
        assert len(wakes) == 2  # drained: nothing left to wake for
        bell.ring()  # the rest is over: at once again
        await until(3)
        assert len(wakes) == 3

    try:
        asyncio.run(run())
    finally:
        os.close(bell.read_fd)
        os.close(bell.write_fd)
