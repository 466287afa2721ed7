"""Time the pages that count the queue with a queue of a million messages.

Run by hand: `python3 bench/big_queue.py [--messages N] [--domains D] [--db PATH] [--runs R]`,
or on PostgreSQL: `python3 bench/big_queue.py --backend postgresql [--dsn DSN]` (without
--dsn a private cluster is started as the tests start theirs, tests/support/postgres.py,
and removed at the end; with it, the database must be empty or a queue filled before).

Filling: a million messages over SMTP takes a quarter of an hour; this fills in about a
minute with SQL, straight into a queue file that SQLiteQueue made (so the schema, its
indexes and its triggers are the real ones: the kept counts are filled by the same
triggers an enqueue fires). One transaction, rows made by a recursive CTE: messages
spread over the last two days with a short body (the pages never read bodies), one
recipient each to D domains (10,000 by default), 94 % deferred with one 450 attempt in
the last day, 5 % queued, 1 % held; 2.5 % of them bounces (null sender). An existing
--db is reused.

Then, with the file open as `mailgate serve` has it: `counts()`, the dashboard's three
`activity()` calls, the pages through the ASGI app in process (httpx's ASGITransport: no
sockets) — `/admin` (the dashboard), `/admin/queue`, `/api/queue`, `/metrics` — and
`queue list` (its first 100 messages, text and JSON, in process; and the whole command
as a user runs it, which adds Python's start). Each is also timed the way it was counted
before the kept counts (SQLite schema 5, PostgreSQL schema 2): the full GROUP BY over
recipients and the dashboard's counts of index ranges, on the same data, in the same run.
On PostgreSQL the fill is the same rows by `generate_series`, through the real schema and
its triggers (whose deltas are folded once before timing, as a node's heartbeat would).

Median and 95th percentile per request. The goal: each page under 100 ms at 1M. Exits 0
either way (tests never assert on timings).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the test extras install it (starlette.testclient uses it)

from mailgate.config import Config
from mailgate.queue import Queue, RecipientState
from mailgate.queue.report import stream_list
from mailgate.queue.sqlite import SQLiteQueue
from mailgate.web.app import WebContext, create_app
from mailgate.web.auth import AdminAuth

PASSWORD = "bench password"

FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
INSERT INTO messages (seq, id, sender, received_at, queued_at, size, client_address,
                      client_helo, protocol, smtputf8, body_8bit)
SELECT i, printf('%012x%010x', CAST((:now - (:count - i) * :step) * 1000 AS INTEGER), i),
       CASE WHEN i % 40 = 0 THEN '' ELSE 'user' || (i % 100) || '@sender.example' END,
       :now - (:count - i) * :step, :now - (:count - i) * :step, 300, '192.0.2.1',
       'client.example', 'ESMTP', 0, 0
FROM n
"""
FILL_CONTENTS = "INSERT INTO contents (seq, content) SELECT seq, :body FROM messages"
# 94 % deferred (due within the next 4 hours), 5 % queued (due now), 1 % held.
FILL_RECIPIENTS = """
INSERT INTO recipients (msg_seq, address, domain, state, attempts, next_attempt, due_at,
                        last_code, last_text, updated_at, held_reason)
SELECT seq, 'rcpt' || seq || '@d' || (seq % :domains) || '.example',
       'd' || (seq % :domains) || '.example',
       CASE WHEN seq % 100 = 7 THEN 'held' WHEN seq % 100 < 6 AND seq % 100 != 1
            THEN 'queued' ELSE 'deferred' END,
       CASE WHEN seq % 100 < 6 THEN 0 ELSE 1 END,
       CASE WHEN seq % 100 = 7 THEN NULL WHEN seq % 100 < 6 THEN :now
            ELSE :now + (seq % 14400) END,
       CASE WHEN seq % 100 = 7 THEN NULL WHEN seq % 100 < 6 THEN :now
            ELSE :now + (seq % 14400) END,
       CASE WHEN seq % 100 < 6 THEN NULL ELSE 450 END,
       CASE WHEN seq % 100 < 6 THEN NULL ELSE 'Mailbox busy, try again later' END,
       :now, CASE WHEN seq % 100 = 7 THEN 'bench' END
FROM messages
"""
FILL_ATTEMPTS = """
INSERT INTO attempts (recipient_id, at, host, code, enhanced, text, outcome, remote)
SELECT id, :now - (id % 86400), 'mx.' || domain || '[192.0.2.25]:25', 450, '4.2.1',
       'Mailbox busy, try again later', 'deferred', 1
FROM recipients WHERE attempts = 1
"""

# The same rows on PostgreSQL.
PG_FILL = (
    """INSERT INTO messages (id, sender, received_at, queued_at, size, client_address,
                             client_helo, protocol, smtputf8, body_8bit)
    SELECT lpad(to_hex(((%(now)s - (%(count)s - i) * %(step)s) * 1000)::bigint), 12, '0')
           || lpad(to_hex(i), 10, '0'),
           CASE WHEN i %% 40 = 0 THEN '' ELSE 'user' || (i %% 100) || '@sender.example' END,
           %(now)s - (%(count)s - i) * %(step)s, %(now)s - (%(count)s - i) * %(step)s, 300,
           '192.0.2.1', 'client.example', 'ESMTP', false, false
    FROM generate_series(1, %(count)s) AS i""",
    "INSERT INTO contents (seq, n, data) SELECT seq, 0, %(body)s FROM messages",
    FILL_RECIPIENTS.replace(":now", "%(now)s").replace(":domains", "%(domains)s")
    .replace("%", "%%").replace("%%(", "%("),
    FILL_ATTEMPTS.replace(":now", "%(now)s").replace("%", "%%").replace("%%(", "%(")
    .replace("'deferred', 1", "'deferred', true"),
)


def fill_pg(dsn: str, count: int, domains: int) -> None:
    import psycopg

    from mailgate.queue.postgres import PostgresQueue

    with PostgresQueue(dsn) as q:  # the real schema, indexes and triggers
        q.counts()
    now = time.time()
    args = {"count": count, "now": now, "step": 172800 / count, "domains": domains,
            "body": b"Subject: bench\r\n\r\n" + b"x" * 280}
    with psycopg.connect(dsn) as conn:
        conn.execute("SET synchronous_commit = off")
        for sql in PG_FILL:
            conn.execute(sql, args)
    import mailgate.queue.postgres as pg

    fold = getattr(pg, "fold_now", None)  # (none before schema 2: a "before" run)
    if fold is not None:
        with PostgresQueue(dsn) as q:
            fold(q)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def fill(db: Path, count: int, domains: int) -> None:
    SQLiteQueue(db).close()  # the real schema, indexes and triggers
    now = time.time()
    args = {"count": count, "now": now, "step": 172800 / count, "domains": domains,
            "body": b"Subject: bench\r\n\r\n" + b"x" * 280}
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    for sql in (FILL, FILL_CONTENTS, FILL_RECIPIENTS, FILL_ATTEMPTS):
        conn.execute(sql, args)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("ANALYZE")
    conn.close()


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, math.ceil(len(times) * 0.95) - 1)]


def _connect(where: Path | str) -> Any:
    """A DB-API connection to the queue's data (qmark or format placeholders: `?`)."""
    if isinstance(where, Path):
        return sqlite3.connect(where)
    import psycopg

    class Conn:  # `?` as psycopg's `%s`, INDEXED BY (SQLite's) left out
        def __init__(self) -> None:
            self.conn = psycopg.connect(where, autocommit=True)

        def execute(self, sql: str, args: tuple[object, ...] = ()) -> Any:
            sql = re.sub(r"INDEXED BY \w+ ", "", sql).replace("?", "%s")
            return self.conn.execute(sql, args)
    return Conn()


def old_counts(db: Path | str) -> Callable[[], object]:
    """counts() as it was before the kept counts: every recipient's index entry read."""
    conn = _connect(db)

    def run() -> object:
        return conn.execute("SELECT state, count(*) FROM recipients GROUP BY state").fetchall()
    return run


def old_activity(db: Path | str) -> Callable[[], object]:
    """The dashboard's three activity() calls as they were before the kept counts: every
    series' index range counted, a day of rows each time."""
    conn = _connect(db)
    sqls = [("SELECT count(*) FROM messages INDEXED BY messages_queued "
             "WHERE queued_at >= ? AND queued_at < ?", ()),
            ("SELECT count(*) FROM messages INDEXED BY messages_bounces "
             "WHERE sender = '' AND queued_at >= ? AND queued_at < ?", ())]
    sqls += [("SELECT count(*) FROM attempts INDEXED BY attempts_outcome "
              "WHERE outcome = ? AND at >= ? AND at < ?", (o,))
             for o in ("delivered", "deferred", "failed")]

    def run() -> object:
        now = time.time()
        first = math.floor(now / 3600) * 3600 - 23 * 3600
        spans = [(now - 3600, now), (now - 86400, now)]
        spans += [(first + h * 3600, min(now, first + (h + 1) * 3600)) for h in range(24)]
        return [conn.execute(sql, (*pre, lo, hi)).fetchone()[0]
                for lo, hi in spans for sql, pre in sqls]
    return run


async def pages(q: Queue, data_dir: Path, runs: int) -> list[tuple[str, float, float]]:
    auth = AdminAuth(data_dir)
    auth.set_password(PASSWORD)
    app = create_app(WebContext(config=Config(data_dir=data_dir), queue=q, auth=auth))
    transport = httpx.ASGITransport(app=app)
    rows = []
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8025") as c:
        page = await c.get("/admin/login")
        m = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert m
        r = await c.post("/admin/login", data={"password": PASSWORD, "csrf": m.group(1)})
        assert r.status_code == 303, r.text
        for name, path in [("dashboard /admin", "/admin"), ("/admin/queue", "/admin/queue"),
                           ("/admin/queue?state=held", "/admin/queue?state=held"),
                           ("/api/queue", "/api/queue"), ("/metrics", "/metrics")]:
            r = await c.get(path)
            assert r.status_code == 200, (path, r.status_code)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                r = await c.get(path)
                times.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200
            times.sort()
            rows.append((name, statistics.median(times),
                         times[max(0, math.ceil(len(times) * 0.95) - 1)]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--domains", type=int, default=10_000)
    ap.add_argument("--db", type=Path, default=None, help="queue.db to fill (or reuse)")
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--dsn", default=None, help="PostgreSQL database to fill (or reuse)")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    data_dir = args.db.parent if args.db else Path(tmp.name)
    db = args.db or data_dir / "queue.db"
    cluster = None
    try:
        if args.backend == "postgresql":
            dsn = args.dsn
            if dsn is None:
                sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
                from tests.support.postgres import private_cluster

                cluster = private_cluster()
                dsn = cluster.createdb()
            run(args, data_dir, dsn)
        else:
            run(args, data_dir, db)
    finally:
        if cluster is not None:
            cluster.remove()
        with redirect_stdout(io.StringIO()):
            tmp.cleanup()


def run(args: argparse.Namespace, data_dir: Path, where: Path | str) -> None:
    q: Queue
    t0 = time.perf_counter()
    if isinstance(where, Path):
        if not where.exists():
            fill(where, args.messages, args.domains)
            print(f"filled {args.messages:,} messages to {args.domains:,} domains in "
                  f"{time.perf_counter() - t0:.1f} s ({where.stat().st_size / 1e6:.0f} MB)")
        t0 = time.perf_counter()
        q = SQLiteQueue(where)  # (a file from before schema 5 gets its counts here)
        config_text = f'data_dir = "{data_dir}"\n'
    else:
        from mailgate.queue.postgres import PostgresQueue

        if not _connect(where).execute("SELECT to_regclass('messages') IS NOT NULL"
                                       ).fetchone()[0]:
            fill_pg(where, args.messages, args.domains)
            size = _connect(where).execute("SELECT pg_database_size(current_database())"
                                           ).fetchone()[0]
            print(f"filled {args.messages:,} messages to {args.domains:,} domains in "
                  f"{time.perf_counter() - t0:.1f} s ({size / 1e6:.0f} MB)")
        t0 = time.perf_counter()
        q = PostgresQueue(where)
        config_text = (f'data_dir = "{data_dir}"\n[queue]\nbackend = "postgresql"\n'
                       f'dsn = "{where}"\n')
    print(f"opened in {(time.perf_counter() - t0) * 1000:.0f} ms")
    counts = q.counts()
    print("recipients by state:", ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    full = {k: int(v) for k, v in _connect(where).execute(
        "SELECT state, count(*) FROM recipients GROUP BY state").fetchall()}
    assert {k: v for k, v in counts.items() if v} == full, (counts, full)
    kept = "kept, schema 5" if isinstance(where, Path) else "kept, schema 2"

    def dashboard_activity() -> object:
        now = time.time()
        first = math.floor(now / 3600) * 3600 - 23 * 3600
        return (q.activity(now - 3600, 3600.0, now), q.activity(now - 86400, 86400.0, now),
                q.activity(first, 3600.0, first + 24 * 3600))

    def listing(fmt: str) -> Callable[[], object]:
        return lambda: "".join(stream_list(q, 100, fmt, live_only=True))

    rows = [(f"counts() ({kept})", *timed(q.counts, args.runs)),
            ("  before: GROUP BY state", *timed(old_counts(where), args.runs)),
            ("dashboard's activity() x3 (kept)", *timed(dashboard_activity, args.runs)),
            ("  before: index ranges counted",
             *timed(old_activity(where), max(3, args.runs // 5))),
            ("queue list (100, text, in process)", *timed(listing("text"), args.runs)),
            ("queue list (100, json, in process)", *timed(listing("json"), args.runs)),
            ("queue list --state held (100)",
             *timed(lambda: "".join(stream_list(q, 100, "text", state=RecipientState.HELD)),
                    args.runs))]
    rows += asyncio.run(pages(q, data_dir, args.runs))
    config = data_dir / "bench.toml"
    config.write_text(config_text)
    env = dict(os.environ)  # PYTHONPATH as given: the tree under test
    command = [sys.executable, "-m", "mailgate", "queue", "list", "--config", str(config)]

    def whole_command() -> object:
        return subprocess.run(command, env=env, check=True, capture_output=True)

    rows.append(("`mailgate queue list` (whole command)", *timed(whole_command, 5)))
    python = [sys.executable, "-c", "import mailgate.cli"]
    rows.append(("  of it: python + import mailgate.cli",
                 *timed(lambda: subprocess.run(python, env=env, check=True), 5)))
    q.close()
    print(f"\n{args.backend}, {args.messages:,} messages")
    print(f"{'request':<40} {'median':>9} {'p95':>9}  ({args.runs} runs each)")
    for name, med, p95 in rows:
        print(f"{name:<40} {med:7.1f}ms {p95:7.1f}ms")


if __name__ == "__main__":
    main()
