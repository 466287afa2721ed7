"""Benchmark the admin's queue page (and its API twin) with 100,000 queued messages.

Run by hand: `python3 bench/web_queue.py [--messages N] [--db PATH] [--runs R]`. It fills
a queue (once: an existing --db is reused) with N messages from 100 senders to 50
domains, a tenth of them deferred with a recorded 450 4.2.1 attempt, some held, some
bounces (null sender), spread over the last two days. Then it logs in and times the page
through the ASGI app in process (httpx's ASGITransport: routing, session, SQLite reads,
template rendering; no sockets), for the first page, a page deep in the queue (keyed
pagination), each filter, the dashboard and `/api/queue`, and prints median and 95th
percentile per request. The goal is under 100 ms for the queue page.

Exits 0 either way (tests never assert on timings).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx2 as httpx  # the test extras install it (starlette.testclient uses it)

from mailgate.config import Config
from mailgate.queue import Attempt, NewMessage, NewRecipient
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.web.app import WebContext, create_app
from mailgate.web.auth import AdminAuth

PASSWORD = "bench password"
CONTENT = (b"From: Sender <s@example.com>\r\nTo: r@example.org\r\nSubject: bench\r\n"
           b"Message-ID: <bench@example.com>\r\n\r\n" + b"x" * 1500 + b"\r\n")


def _message(i: int, now: float) -> NewMessage:
    return NewMessage(
        sender="" if i % 40 == 0 else f"user{i % 100}@sender{i % 10}.example",
        recipients=[NewRecipient(f"rcpt{i}@domain{i % 50}.example")]
        + ([NewRecipient(f"cc{i}@domain{(i + 7) % 50}.example")] if i % 5 == 0 else []),
        content=CONTENT, received_at=now, client_address="192.0.2.1",
        client_helo="client.example",
    )


async def fill(q: SQLiteQueue, n: int) -> None:
    now = time.time()
    ids: list[str] = []
    for start in range(0, n, 5000):
        batch = [_message(i, now) for i in range(start, min(n, start + 5000))]
        ids += await asyncio.gather(*(q.enqueue_async(m) for m in batch))
    # Spread the messages over the last two days, oldest first, as a real queue would be.
    with sqlite3.connect(q.path) as db:
        db.execute("UPDATE messages SET queued_at = ? - (? - seq) * ?, received_at = "
                   "? - (? - seq) * ?", (now, n, 172800 / n, now, n, 172800 / n))
    deferred = [m.id for m in q.list(limit=n // 10, recipient_domain="domain3.example")]
    deferred += [m.id for k, m in enumerate(q.list(limit=n)) if k % 10 == 1]
    tasks = []
    for qid in deferred[: n // 10]:
        for r in q.show(qid).recipients:
            tasks.append(q.record_async(r.id, Attempt(
                at=now - 600, host="mx.domain3.example[192.0.2.25]:25", code=450,
                enhanced="4.2.1", text="Mailbox busy, try again later", outcome="deferred",
            ), next_attempt=now + 1800))
    for start in range(0, len(tasks), 5000):
        await asyncio.gather(*tasks[start:start + 5000])
    for qid in ids[: n // 100 : 7]:
        q.hold(qid)


async def timed(client: httpx.AsyncClient, path: str, runs: int) -> tuple[float, float, int]:
    r = await client.get(path)  # warm: template compiled, reader connections open
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = await client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200
    times.sort()
    if path.startswith("/api/"):
        rows = len(r.json()["messages"])
    else:
        rows = len(re.findall(r'<a href="/admin/message/[^"]+"><code>', r.text))
    return statistics.median(times), times[int(len(times) * 0.95) - 1], rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--db", type=Path, default=None, help="queue.db to fill (or reuse)")
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    data_dir = args.db.parent if args.db else Path(tmp.name)
    db = args.db or data_dir / "queue.db"
    fresh = not db.exists()
    q = SQLiteQueue(db)
    if fresh:
        t0 = time.perf_counter()
        await fill(q, args.messages)
        print(f"filled {args.messages} messages in {time.perf_counter() - t0:.1f} s")
    counts = q.counts()
    print("recipients by state:", ", ".join(f"{k} {v}" for k, v in counts.items()))
    auth = AdminAuth(data_dir)
    auth.set_password(PASSWORD)
    app = create_app(WebContext(config=Config(data_dir=data_dir), queue=q, auth=auth))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8025") as c:
        page = await c.get("/admin/login")
        m = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert m
        r = await c.post("/admin/login", data={"password": PASSWORD, "csrf": m.group(1)})
        assert r.status_code == 303, r.text
        newest = q.list(limit=1)[0]
        deep = q.list(limit=1, offset=args.messages * 9 // 10)[0]
        cases = [
            ("first page", "/admin/queue"),
            ("page 90% deep (before=)", f"/admin/queue?before={deep.id}"),
            ("newer page (after=)", f"/admin/queue?after={deep.id}"),
            ("state=deferred", "/admin/queue?state=deferred"),
            ("state=held", "/admin/queue?state=held"),
            ("domain=domain17.example", "/admin/queue?domain=domain17.example"),
            ("sender=user42@sender2.example", "/admin/queue?sender=user42%40sender2.example"),
            ("sender=<> (bounces)", "/admin/queue?sender=%3C%3E"),
            ("older_than=24 (hours)", "/admin/queue?older_than=24"),
            ("state+domain+older_than", "/admin/queue?state=queued&domain=domain17.example"
             "&older_than=12"),
            ("worst: state=queued+rare sender", "/admin/queue?state=queued"
             "&sender=nobody%40nowhere.example"),
            ("worst: older_than=47.9 (few match)", "/admin/queue?older_than=47.9"),
            ("limit=500", "/admin/queue?limit=500"),
            ("API /api/queue", "/api/queue"),
            ("API /api/queue?state=deferred", "/api/queue?state=deferred"),
            ("message page", f"/admin/message/{newest.id}"),
            ("dashboard", "/admin"),
        ]
        print(f"\n{'request':<34} {'median':>9} {'p95':>9}  rows  ({args.runs} runs each)")
        for name, path in cases:
            med, p95, rows = await timed(c, path, args.runs)
            print(f"{name:<34} {med:7.1f}ms {p95:7.1f}ms  {rows:>4}")
    q.close()
    tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
