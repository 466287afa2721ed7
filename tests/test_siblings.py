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


def test_a_key_is_found_only_at_a_row_s_start() -> None:
    board = Board(1, connections=3, slots=2)
    table: _Table = board.conns
    target = digest("ip", "192.0.2.1")
    # Two rows whose bytes, read across the boundary, spell the key.
    table.mm[table.k0:table.k0 + KEY] = b"\x01" * (KEY - 5) + target[:5]
    table.mm[table.k0 + KEY:table.k0 + 2 * KEY] = target[5:] + b"\x01" * 5
    assert table.find(target) == -1
    row = table.claim(target)
    assert row == 2 and table.find(target) == 2


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
