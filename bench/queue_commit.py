"""Benchmark the queue's group commit: enqueue throughput as concurrency grows.

Run by hand: `python3 bench/queue_commit.py [--dir DIR] [--seconds S]`. Each round opens a
fresh queue.db and has N asyncio tasks enqueue 2 KiB messages as fast as the queue
accepts them, each awaiting its durable commit before sending the next, as SMTP sessions
do. It prints messages/s and messages per commit: with one task every message pays its
own fsync; with many, messages share commits and throughput should rise with N.

Put --dir on the disk the queue will really use: on tmpfs an fsync costs nothing and the
figures say nothing about durability. Exits 0 either way (tests never assert on timings).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from mailgate.queue import NewMessage, NewRecipient
from mailgate.queue.sqlite import SQLiteQueue

CONCURRENCY = (1, 20, 100)


def make_message(i: int) -> NewMessage:
    header = f"From: a@example.org\r\nTo: b@example.net\r\nSubject: bench {i}\r\n\r\n".encode()
    body = b"x" * 74 + b"\r\n"
    content = (header + body * (2048 // len(body) + 1))[:2048]
    return NewMessage(
        sender="a@example.org",
        recipients=[NewRecipient(f"user{i % 7}@example.net")],
        content=content,
        received_at=time.time(),
        client_address="127.0.0.1",
        client_helo="bench.example.org",
    )


async def round_(queue: SQLiteQueue, tasks: int, seconds: float) -> int:
    deadline = time.perf_counter() + seconds
    sent = 0

    async def session(n: int) -> None:
        nonlocal sent
        i = n
        while time.perf_counter() < deadline:
            await queue.enqueue_async(make_message(i))
            sent += 1
            i += tasks

    await asyncio.gather(*(session(n) for n in range(tasks)))
    return sent


def run(directory: Path, tasks: int, seconds: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(dir=directory, prefix="queue-bench-") as tmp:
        queue = SQLiteQueue(Path(tmp) / "queue.db")
        try:
            started = time.perf_counter()
            sent = asyncio.run(round_(queue, tasks, seconds))
            elapsed = time.perf_counter() - started
            per_commit = queue.committed_requests / max(1, queue.commit_count)
        finally:
            queue.close()
    return sent / elapsed, per_commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where queue.db goes")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each round")
    args = parser.parse_args()
    print(f"queue.db in {args.dir.resolve()} ({os.cpu_count()} CPUs), 2 KiB messages")
    print(f"{'tasks':>6} {'messages/s':>12} {'messages/commit':>16} {'vs 1 task':>10}")
    base = None
    for tasks in CONCURRENCY:
        rate, per_commit = run(args.dir, tasks, args.seconds)
        base = base or rate
        print(f"{tasks:>6} {rate:>12,.0f} {per_commit:>16.1f} {rate / base:>9.1f}x")


if __name__ == "__main__":
    main()
