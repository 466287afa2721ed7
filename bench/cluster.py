"""Benchmark the cluster queue: one node on SQLite, one, two and three nodes on
PostgreSQL, and Postfix, in one run.

Run by hand, as root on a Debian-like machine with the `postgresql` and `postfix`
packages installed (never by pytest)::

    python3 bench/cluster.py                          # 4,000 messages per row
    python3 bench/cluster.py --messages 10000 --rows sqlite-1,pg-1,pg-3 --rounds 2

Every row takes the same load: `--messages` messages of `--size` bytes (smtp-source's
payload), sent by Postfix's `smtp-source` over `--sessions` concurrent sessions in all,
split evenly over the nodes (each node its own smtp-source), to a recipient in a domain
relayed to one local `smtp-sink`. Measured:

- accepted/s: messages over the wall time until every smtp-source has its last 250;
- end-to-end/s: messages over the time from the first message sent until the queue
  says every recipient is delivered (to the sink) — acceptance and delivery together;
- CPU per message: each node's own CPU time (utime + stime from /proc) over the row,
  and PostgreSQL's (every backend of the private cluster), divided by the messages.
  On a 2-core machine the nodes share the cores, so the rows cannot scale with the
  nodes; the CPU per message says what a node costs, from which the scaling on machines
  of their own can be read off.

PostgreSQL is a private cluster of its own (initdb in a temporary directory, its own
port, `synchronous_commit = on`, fsync on), a fresh database per row. mailgate nodes run
`python -m mailgate serve` from this checkout with `[server] workers = 1`, log level
warning, `[queue] backend = "postgresql"` (or the default SQLite). Postfix is
bench/server.py's private instance relaying to the same sink (accepted/s from
smtp-source, end-to-end until its queue is empty).

The tables go to stdout and to bench/results/cluster-YYYYMMDD.md. Every process started
is stopped at the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _load_server_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_server", REPO / "bench" / "server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_server"] = module
    spec.loader.exec_module(module)
    return module


bs = _load_server_bench()
RCPT = "user@sink.test"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    row: str
    nodes: int
    messages: int
    accepted_s: float
    e2e_s: float | None
    node_cpu_ms: list[float] = field(default_factory=list)  # per message, per node
    pg_cpu_ms: float | None = None
    note: str = ""


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def pg_pids(cluster: object) -> list[int]:
    data = Path(cluster.data)  # type: ignore[attr-defined]
    try:
        master = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [master, *bs.descendants(master)]


def node_config(folder: Path, port: int, sink_port: int, dsn: str | None, node: str) -> Path:
    lines = [
        'hostname = "bench.test"',
        f'data_dir = "{folder / "data"}"',
        "[[listen]]", 'role = "mx"', f'address = "127.0.0.1:{port}"',
        "[policy]", "sender_null_mx_check = false", "recipient_null_mx_check = false",
        "[dns]", 'nameservers = ["127.0.0.1:1"]',
        "[delivery]", f'relayhost = "[127.0.0.1]:{sink_port}"',
        "[web]", 'address = ""',
        "[log]", 'level = "warning"',
        "[server]", "workers = 1",
    ]
    if os.geteuid() == 0:
        lines.append('user = "root"')
    if dsn is not None:
        lines += ["[queue]", 'backend = "postgresql"', f'dsn = "{dsn}"', f'node = "{node}"']
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mailgate.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def delivered_pg(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM recipients WHERE state = 'delivered'"
                           ).fetchone()
    return int(row[0]) if row else 0


def delivered_sqlite(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM recipients WHERE state = 'delivered'"
                                ).fetchone()[0])
    finally:
        conn.close()


def send(ports: list[int], messages: int, size: int, sessions: int, timeout: float) -> float:
    """smtp-source against every port at once, the load split evenly; the wall time."""
    errors: list[BaseException] = []
    per = [messages // len(ports) + (1 if i < messages % len(ports) else 0)
           for i in range(len(ports))]
    sess = max(1, sessions // len(ports))

    def one(port: int, n: int) -> None:
        try:
            bs.smtp_source(port, size, sess, n, RCPT, False, timeout)
        except BaseException as exc:
            errors.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(p, n)) for p, n in zip(ports, per,
                                                                         strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def run_mailgate(runner: object, pg: object | None, sink_port: int, row: str, nodes: int,
                 args: argparse.Namespace) -> Result:
    dsn = pg.createdb() if pg is not None else None  # type: ignore[attr-defined]
    root = runner.root / f"{row}-{time.monotonic_ns()}"  # type: ignore[attr-defined]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    procs, ports = [], []
    for i in range(nodes):
        port = bs.free_port()
        config = node_config(root / f"node{i}", port, sink_port, dsn, f"node{i}")
        proc = runner.spawn([sys.executable, "-m", "mailgate", "serve", "--config",  # type: ignore[attr-defined]
                             str(config)], root / f"node{i}" / "serve.log", env=env)
        bs.wait_greeting(port, 60, proc)
        procs.append(proc)
        ports.append(port)
    try:
        pids = [p.pid for p in procs]
        node_before = [cpu_seconds([pid]) for pid in pids]
        pg_before = cpu_seconds(pg_pids(pg)) if pg is not None else 0.0
        spies = [profile(runner, pid, args.profile / f"{row}-node{i}-{time.monotonic_ns()}.txt")
                 for i, pid in enumerate(pids)] if args.profile else []
        started = time.perf_counter()
        took = send(ports, args.messages, args.size, args.sessions, args.timeout)

        def delivered() -> int:
            if dsn is not None:
                return delivered_pg(dsn)
            return delivered_sqlite(root / "node0" / "data" / "queue.db")

        deadline = time.perf_counter() + args.timeout
        done = delivered()
        while done < args.messages and time.perf_counter() < deadline:
            time.sleep(0.05)
            done = delivered()
        e2e = time.perf_counter() - started if done >= args.messages else None
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(30)
        node_cpu = [(cpu_seconds([pid]) - b) / args.messages * 1000
                    for pid, b in zip(pids, node_before, strict=True)]
        pg_cpu = ((cpu_seconds(pg_pids(pg)) - pg_before) / args.messages * 1000
                  if pg is not None else None)
        note = "" if e2e is not None else f"only {done} delivered within {args.timeout:g} s"
        return Result(row, nodes, args.messages, args.messages / took,
                      None if e2e is None else args.messages / e2e, node_cpu, pg_cpu, note)
    finally:
        for proc in procs:
            runner.stop_proc(proc)  # type: ignore[attr-defined]


def profile(runner: object, pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling a node until SIGINT: collapsed stacks (one line per stack with its
    count) with thread names, for `--profile`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return runner.spawn(["py-spy", "record", "--pid", str(pid), "--rate", "250",  # type: ignore[attr-defined]
                         "--format", "raw", "--threads", "--nonblocking", "--output",
                         str(out)], out.with_suffix(".log"))


def run_postfix(runner: object, sink: object, args: argparse.Namespace) -> Result:
    server = bs.PostfixServer(runner, sink=sink)
    runner.servers.append(server)  # type: ignore[attr-defined]
    server.start()
    try:
        started = time.perf_counter()
        took = send([server.port], args.messages, args.size, args.sessions, args.timeout)
        left = server.settle(args.timeout)
        failed = bool(left and "still queued" in left)
        # Relayed: the sink took them ("status=sent" in Postfix's log, which may lag).
        deadline = time.perf_counter() + args.timeout
        while not failed and (server.stored() or 0) < args.messages:
            if time.perf_counter() > deadline:
                failed, left = True, f"only {server.stored()} relayed"
                break
            time.sleep(0.05)
        e2e = None if failed else time.perf_counter() - started
        return Result("postfix", 1, args.messages, args.messages / took,
                      None if e2e is None else args.messages / e2e,
                      note=left if failed and left else "")
    finally:
        server.stop()


LABELS = {"sqlite-1": "mailgate, 1 node, SQLite", "pg-1": "mailgate, 1 node, PostgreSQL",
          "pg-2": "mailgate, 2 nodes, PostgreSQL", "pg-3": "mailgate, 3 nodes, PostgreSQL",
          "postfix": "Postfix (one instance)"}


def report(results: list[Result], args: argparse.Namespace, seconds: float) -> str:
    best: dict[str, Result] = {}
    for r in results:
        if r.row not in best or r.accepted_s > best[r.row].accepted_s:
            best[r.row] = r
    base = best.get("sqlite-1")
    lines = [f"# Cluster benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}", "",
             f"`python3 bench/cluster.py --messages {args.messages} --size {args.size} "
             f"--sessions {args.sessions} --rows {args.rows} --rounds {args.rounds}`", "",
             f"- {os.cpu_count()} CPUs, Linux {platform.release()}, Python "
             f"{platform.python_version()}",
             f"- PostgreSQL: {args.pg_version}, private cluster, synchronous_commit = on, "
             "fsync on; every node and the database on this machine (shared cores)",
             f"- load: smtp-source, {args.sessions} sessions in all split over the nodes, "
             f"one connection per message, {args.size}-byte payload; relayed to smtp-sink",
             f"- run took {seconds / 60:.1f} min; best of {args.rounds} round(s) per row",
             "", "| row | accepted/s | end-to-end/s | accepted vs SQLite | "
             "node CPU ms/msg (each node) | PostgreSQL CPU ms/msg |",
             "|---|---:|---:|---:|---|---:|"]
    for row in args.rows.split(","):
        r = best.get(row)
        if r is None:
            continue
        ratio = f"{r.accepted_s / base.accepted_s:.2f}" if base else "–"
        e2e = f"{r.e2e_s:,.0f}" if r.e2e_s is not None else f"– ({r.note})"
        cpu = ", ".join(f"{c:.2f}" for c in r.node_cpu_ms) or "–"
        pgc = f"{r.pg_cpu_ms:.2f}" if r.pg_cpu_ms is not None else "–"
        lines.append(f"| {LABELS.get(row, row)} | {r.accepted_s:,.0f} | {e2e} | {ratio} | "
                     f"{cpu} | {pgc} |")
    lines += ["", "All runs:", ""]
    lines += [f"- {r.row}: accepted {r.accepted_s:,.0f}/s, end-to-end "
              f"{'–' if r.e2e_s is None else f'{r.e2e_s:,.0f}'}/s {r.note}" for r in results]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--rows", default="sqlite-1,pg-1,pg-2,pg-3,postfix")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--profile", type=Path, default=None,
                    help="sample each mailgate node with py-spy into this folder")
    args = ap.parse_args()
    from tests.support.postgres import PgCluster, _binaries

    bindir = _binaries()
    if bindir is None:
        print("needs PostgreSQL's initdb (Debian package postgresql)", file=sys.stderr)
        return 2
    args.pg_version = subprocess.run([str(bindir / "postgres"), "--version"],
                                     capture_output=True, text=True, check=False
                                     ).stdout.strip()
    runner = bs.Runner(None, keep=False)
    pg = None
    results: list[Result] = []
    began = time.perf_counter()
    try:
        sink = bs.SinkServer(runner)
        runner.servers.append(sink)
        sink.start()
        pg = PgCluster(bindir)
        pg.start()
        for _ in range(args.rounds):
            for row in args.rows.split(","):
                if row == "postfix":
                    results.append(run_postfix(runner, sink, args))
                else:
                    kind, _, n = row.partition("-")
                    results.append(run_mailgate(runner, pg if kind == "pg" else None,
                                                sink.port, row, int(n), args))
                print(results[-1], file=sys.stderr, flush=True)
    finally:
        runner.cleanup()
        if pg is not None:
            pg.remove()
    text = report(results, args, time.perf_counter() - began)
    print(text)
    out = args.out or REPO / "bench" / "results" / f"cluster-{datetime.date.today():%Y%m%d}.md"
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
