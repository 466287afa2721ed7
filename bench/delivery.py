"""Benchmark delivery: mailgate's outbound engine against Postfix, both to smtp-sink.

Run by hand, as root on a Debian-like machine with the `postfix` package installed
(never by pytest)::

    python3 bench/delivery.py                       # 10,000 messages, ~2 minutes
    python3 bench/delivery.py --rounds 3 --concurrency 1,5,20
    python3 bench/delivery.py --servers mailgate --concurrency 20 --profile /tmp/prof

Issue 5 ("Speed"): delivery throughput to a local sink for 10,000 queued 2 KiB messages
to one destination, side by side with Postfix relaying the same load to the same sink;
target at least 1.5x Postfix messages per second, with connection reuse visible.

One `smtp-sink -c` on 127.0.0.1 receives everything; its running counters (sessions
ended, messages received) are read before and after each run, so both MTAs' connection
counts come from the same meter.

- mailgate: a fresh SQLite queue (WAL, synchronous=FULL, on disk) is filled with N
  messages from a@bench.test, one recipient each, rcptK@sink.test, before the clock
  starts (all enqueued at once, so they share group commits). Then the DeliveryEngine
  runs in this process (uvloop when installed) with `[routes] "sink.test" =
  "smtp:[127.0.0.1]:SINK"`, claim after claim (`run_once`, as `run` does) until every
  recipient has its attempt recorded; the time ends when the last record has been
  committed, and `queue.counts()` must then say all N are delivered. Once per
  `[delivery] concurrency_per_destination` in `--concurrency`.
- Postfix: a private instance (bench/server.py's PostfixServer) with `relayhost =
  [127.0.0.1]:SINK`, `default_destination_concurrency_limit = 20` and connection caching
  on demand (its default). smtp-source fills it with the same N messages over 20 reused
  connections while `defer_transports = smtp` holds delivery back; once all N sit in
  the deferred queue, defer_transports is emptied (postfix reload) and the clock runs
  from `postqueue -f` until smtp-sink has all N messages and the queue is empty.

Messages: smtp-source's shape, From/To/Date/Message-Id headers and a 2,048-byte payload
of 79-character lines; mailgate's also carry the Received header its server would have
added (Postfix adds its own), so both deliver about 2.4 KiB per message.

The table goes to stdout and to bench/results/delivery-YYYYMMDD.md. Every process
started is stopped at the end, also on Ctrl-C, SIGTERM or an error; every wait is
bounded. Exits 0 unless the harness itself failed (the target is reported, not asserted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import gc
import io
import logging
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from server import (
    HOST,
    POSTFIX,
    SMTP_SINK,
    SMTP_SOURCE,
    ForeignLoad,
    HarnessError,
    PostfixServer,
    Runner,
    SinkServer,
    _proc_table,
    add_run_arguments,
    fs_type,
    machine,
    run_and_report,
    say_where,
    start_harness,
    wait_quiet,
)

import mailgate
from mailgate.config import Config, parse_config
from mailgate.delivery.engine import DeliveryEngine
from mailgate.dns import Resolver
from mailgate.queue import NewMessage, NewRecipient
from mailgate.queue.sqlite import SQLiteQueue

SENDER = "a@bench.test"
DOMAIN = "sink.test"
PAYLOAD = 2048
TARGET = 1.5  # issue 5: mailgate at least 1.5x Postfix's messages per second
POSTFIX_CONCURRENCY = 20
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


# --------------------------------------------------------------------------- smtp-sink


@dataclass(frozen=True)
class Counters:
    """smtp-sink's running counters: sessions ended, QUITs, messages received."""

    sessions: int = 0
    quits: int = 0
    messages: int = 0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.sessions - other.sessions, self.quits - other.quits,
                        self.messages - other.messages)


def counters(sink: SinkServer) -> Counters:
    """The last counters `smtp-sink -c` printed (it rewrites one line with CR)."""
    try:
        with sink.log.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 512))
            tail = f.read()
    except OSError:
        return Counters()
    found = _COUNTERS.findall(tail)
    if not found:
        return Counters()
    s, q, m = found[-1]
    return Counters(int(s), int(q), int(m))


def settled_counters(sink: SinkServer, quiet: float = 3.0, timeout: float = 30.0) -> Counters:
    """The counters once nothing has changed for `quiet` seconds: connections a client
    keeps open for reuse (Postfix's cache, 2 s by default) are counted when they end."""
    deadline = time.monotonic() + timeout
    last = counters(sink)
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = counters(sink)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


# --------------------------------------------------------------------------- results


@dataclass
class Run:
    name: str
    label: str
    messages: int = 0
    seconds: float = 0.0
    sink: Counters = field(default_factory=Counters)
    cpu: float = 0.0  # CPU seconds the MTA used during the timed part
    sink_cpu: float = 0.0
    foreign: float = 0.0  # CPUs other programs used meanwhile
    own: str = ""  # the MTA's own account of its connections
    error: str | None = None

    @property
    def rate(self) -> float | None:
        if self.error is not None or self.seconds <= 0:
            return None
        return self.messages / self.seconds

    @property
    def per_connection(self) -> float | None:
        return self.sink.messages / self.sink.sessions if self.sink.sessions else None


def _cpu(pids: Sequence[int]) -> float:
    """CPU seconds (with reaped children) of these processes, as far as they live."""
    table = _proc_table()
    ticks = sum(table[p][1] for p in pids if p in table)
    return ticks / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- mailgate


def payload(size: int) -> bytes:
    """smtp-source's body: numbered lines of 79 characters, `size` octets in all."""
    lines = []
    total = 0
    n = 1
    while total < size:
        line = f"{n}".ljust(79, "X")[: max(0, size - total - 2)] + "\r\n"
        lines.append(line)
        total += len(line)
        n += 1
    return "".join(lines).encode()


def make_message(i: int, body: bytes, now: float) -> NewMessage:
    rcpt = f"rcpt{i}@{DOMAIN}"
    head = (
        f"Received: from bench.test (localhost [127.0.0.1])\r\n"
        f"\tby mailgate.bench.test with ESMTP id bench{i:06d}\r\n"
        f"\tfor <{rcpt}>; {formatdate(now, localtime=True)}\r\n"
        f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nDate: {formatdate(now, localtime=True)}\r\n"
        f"Message-Id: <{i}.bench@bench.test>\r\n\r\n"
    ).encode()
    return NewMessage(sender=SENDER, recipients=[NewRecipient(rcpt)], content=head + body,
                      received_at=now, client_address="127.0.0.1", client_helo="bench.test")


async def fill_queue(queue: SQLiteQueue, n: int) -> None:
    """All N submitted at once: the writer thread packs them into few commits."""
    body = payload(PAYLOAD)
    now = time.time()
    step = 2000
    for start in range(0, n, step):
        await asyncio.gather(*(queue.enqueue_async(make_message(i, body, now))
                               for i in range(start, min(n, start + step))))


def engine_config(work: Path, delivery: str, more: str, source: str) -> Config:
    """The engine's configuration in the delivery benchmarks: data in `work`, no web
    page, `[delivery] concurrency = 100` and the `delivery` lines, then `more`."""
    return parse_config(f"""\
hostname = "mailgate.bench.test"
data_dir = "data"

[delivery]
concurrency = 100
{delivery}

{more}

[web]
address = ""
""", source, base_dir=work)


async def timed_delivery(run: Run, engine: DeliveryEngine, queue: SQLiteQueue,
                         sink: SinkServer, n: int, timeout: float,
                         prof: cProfile.Profile | None = None) -> None:
    """Deliver the `n` queued messages with the clock running, once the machine is quiet:
    `run` gets the seconds, this process's CPU and the sink's, what other programs used
    meanwhile, how many were delivered (an error when not all) and what the sink saw."""
    gc.collect()
    await asyncio.to_thread(wait_quiet, 0.2, 10.0)
    before = settled_counters(sink, quiet=0.5)
    sink_cpu0, cpu0 = _cpu(sink.pids()), _self_cpu()
    other = ForeignLoad()
    other.start()
    if prof is not None:
        prof.enable()
    started = time.perf_counter()
    try:
        await asyncio.wait_for(_deliver_all(engine, n), timeout)
    except TimeoutError:
        run.error = f"not done within {timeout:g} s"
    run.seconds = time.perf_counter() - started
    if prof is not None:
        prof.disable()
    run.cpu = _self_cpu() - cpu0
    run.foreign = other.stop()
    run.sink_cpu = _cpu(sink.pids()) - sink_cpu0
    states = await asyncio.to_thread(queue.counts)
    run.messages = states.get("delivered", 0)
    if run.messages != n and run.error is None:
        run.error = f"only {run.messages:,} of {n:,} delivered: {states}"
    run.sink = settled_counters(sink, quiet=0.5) - before


async def mailgate_run(runner: Runner, sink: SinkServer, concurrency: int, n: int,
                       timeout: float, log_level: str, profile: Path | None) -> Run:
    run = Run(f"mailgate-c{concurrency}",
              f"mailgate, concurrency_per_destination = {concurrency}")
    work = runner.root / f"mailgate-c{concurrency}-{time.monotonic_ns()}"
    work.mkdir()
    config = engine_config(work, f"concurrency_per_destination = {concurrency}",
                           f'[routes]\n"{DOMAIN}" = "smtp:[{HOST}]:{sink.port}"',
                           "bench/delivery.py")
    _log_to(work / "mailgate.log", log_level)
    queue = SQLiteQueue(config.data_dir / "queue.db")
    try:
        t = time.perf_counter()
        await fill_queue(queue, n)
        print(f"   queued {n:,} in {time.perf_counter() - t:.1f} s "
              f"({queue.commit_count} commits)", file=sys.stderr, flush=True)
        engine = DeliveryEngine(config, queue, Resolver())
        prof = cProfile.Profile() if profile is not None else None
        await timed_delivery(run, engine, queue, sink, n, timeout, prof)
        per = engine.stats.messages_per_connection
        run.own = (f"engine: {engine.stats.connections} connections, messages per "
                   f"connection {min(per, default=0)}–{max(per, default=0)} (median "
                   f"{statistics.median(per) if per else 0:g})")
        if prof is not None and profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            path = profile / f"{run.name}.prof"
            prof.dump_stats(path)
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue(), file=sys.stderr)
            print(f"   profile written to {path}", file=sys.stderr)
    finally:
        queue.close()
        _log_to(None, log_level)
    return run


async def _deliver_all(engine: DeliveryEngine, n: int) -> None:
    """What `DeliveryEngine.run` does, until every recipient has an outcome recorded
    (run_once returns after the records of all it claimed are committed)."""
    s = engine.stats
    while s.delivered + s.deferred + s.failed < n:
        if await engine.run_once() == 0:
            break  # nothing due: something was deferred; the caller reports it


def _log_to(path: Path | None, level: str) -> None:
    """mailgate logs one line per recipient, as `mailgate serve` does (Postfix too)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    if path is None:
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s mailgate[%(process)d]: %(name)s: %(message)s", "%b %d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


# --------------------------------------------------------------------------- Postfix


class PostfixRelay:
    """The private Postfix relaying to the shared sink, filled while delivery is held."""

    def __init__(self, runner: Runner, sink: SinkServer) -> None:
        self.sink = sink
        self.server = PostfixServer(runner, sink=sink, main_cf=f"""\
# bench/delivery.py
default_destination_concurrency_limit = {POSTFIX_CONCURRENCY}
smtp_connection_cache_on_demand = yes
defer_transports = smtp
""")
        self.server.label = (f"Postfix, default_destination_concurrency_limit = "
                             f"{POSTFIX_CONCURRENCY}")
        runner.servers.append(self.server)

    def start(self) -> None:
        self.server.start()

    def postconf(self, setting: str) -> None:
        _run([POSTCONF, "-c", str(self.server.etc), "-e", setting], 60)

    def reload(self) -> None:
        """`postfix reload`, and wait for a new qmgr: the old one may still hold the old
        settings for a moment."""
        old = self._qmgr()
        self.server._postfix("reload")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid = self._qmgr()
            if pid is not None and pid != old:
                return
            time.sleep(0.1)
        raise HarnessError("no new Postfix qmgr within 30 s after reload")

    def _qmgr(self) -> int | None:
        for pid in self.server.pids():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "qmgr":
                    return pid
        return None

    def count(self, *queues: str) -> int:
        return sum(len(files) for q in queues
                   for _, _, files in os.walk(self.server.spool / q))

    def fill(self, n: int, timeout: float) -> None:
        """smtp-source puts N messages in, 20 sessions reusing their connections; then
        wait until all N sit in the deferred queue (defer_transports = smtp)."""
        started = time.perf_counter()
        _run([SMTP_SOURCE, "-s", "20", "-d", "-m", str(n), "-l", str(PAYLOAD), "-N",
              "-M", "bench.test", "-f", SENDER, "-t", f"rcpt@{DOMAIN}",
              f"{HOST}:{self.server.port}"], timeout)
        accepted = time.perf_counter() - started
        deadline = time.monotonic() + timeout
        while True:
            busy = self.count("maildrop", "incoming", "active")
            deferred = self.count("deferred")
            if not busy and deferred >= n:
                break
            if time.monotonic() > deadline:
                raise HarnessError(f"Postfix queue not settled within {timeout:g} s "
                                   f"({busy} in flight, {deferred} deferred)")
            time.sleep(0.2)
        print(f"   queued {n:,} in {accepted:.1f} s, all deferred after "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)

    def run(self, n: int, timeout: float) -> Run:
        run = Run("postfix", self.server.label)
        self.postconf("defer_transports = smtp")
        self.reload()
        if self.count("maildrop", "incoming", "active", "deferred", "hold"):
            raise HarnessError("Postfix queue not empty before the run")
        self.fill(n, timeout)
        self.postconf("defer_transports =")
        self.reload()
        wait_quiet(0.2, 10.0)
        before = settled_counters(self.sink, quiet=0.5)
        if self.count("maildrop", "incoming", "active") or self.count("deferred") < n:
            raise HarnessError("Postfix began delivering before the flush")
        log_offset = self.server.maillog.stat().st_size if self.server.maillog.exists() else 0
        pids = self.server.pids()
        cpu0 = _proc_table()
        sink_cpu0 = _cpu(self.sink.pids())
        other = ForeignLoad()
        other.start()
        started = time.perf_counter()
        _run([POSTQUEUE, "-c", str(self.server.etc), "-f"], 60)
        deadline = time.monotonic() + timeout
        # Cheap polls of the sink's counter while most is in flight, then of the queue.
        while counters(self.sink).messages - before.messages < n:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        while self.count("incoming", "active", "deferred"):
            if time.monotonic() > deadline:
                run.error = f"not done within {timeout:g} s"
                break
            time.sleep(0.01)
        run.seconds = time.perf_counter() - started
        run.foreign = other.stop()
        cpu1 = _proc_table()
        pids = sorted(set(pids) | set(self.server.pids()))
        run.cpu = sum(cpu1[p][1] - (cpu0[p][1] if p in cpu0 else 0)
                      for p in pids if p in cpu1) / os.sysconf("SC_CLK_TCK")
        run.sink_cpu = _cpu(self.sink.pids()) - sink_cpu0
        run.sink = settled_counters(self.sink) - before
        sent, reused, deferred = self._log_counts(log_offset, n)
        run.messages = sent
        if sent != n and run.error is None:
            run.error = f"only {sent:,} of {n:,} sent ({deferred} deferred)"
        run.own = (f"maillog: {sent:,} sent, {sent - reused:,} on a new connection, "
                   f"{reused:,} on a reused one (conn_use=)")
        return run

    def _log_counts(self, offset: int, n: int) -> tuple[int, int, int]:
        """status=sent lines since `offset`, those with conn_use= (a reused connection),
        and status=deferred lines. postlogd writes asynchronously: wait for it."""
        deadline = time.monotonic() + 10
        while True:
            with self.server.maillog.open("rb") as f:
                f.seek(offset)
                text = f.read()
            sent = text.count(b"status=sent")
            reused = sum(1 for line in text.splitlines()
                         if b"status=sent" in line and b"conn_use=" in line)
            deferred = text.count(b"status=deferred")
            if sent >= n or time.monotonic() > deadline:
                return sent, reused, deferred
            time.sleep(0.2)


def _run(cmd: Sequence[str], timeout: float) -> None:
    try:
        result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{cmd[0]} did not finish within {timeout:g} s") from exc
    if result.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-500:]}")


# --------------------------------------------------------------------------- report


def best(runs: Sequence[Run]) -> Run:
    ok = [r for r in runs if r.rate is not None]
    return max(ok, key=lambda r: r.rate or 0.0) if ok else runs[-1]


def table(rows: dict[str, list[Run]]) -> list[str]:
    base = best(rows["postfix"]) if rows.get("postfix") else None
    lines = ["| server | msgs/s | seconds | connections | msgs/connection | ratio to Postfix "
             "| MTA CPU s | smtp-sink CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for runs in rows.values():
        r = best(runs)
        rate = "error" if r.rate is None else f"{r.rate:,.0f}"
        ratio = ("–" if r.rate is None or base is None or not base.rate
                 else f"{r.rate / base.rate:.2f}x")
        per = "–" if r.per_connection is None else f"{r.per_connection:,.1f}"
        busy = "*" if r.foreign > 0.25 else ""
        lines.append(f"| {r.label} | {rate}{busy} | {r.seconds:.2f} | {r.sink.sessions:,} | "
                     f"{per} | {ratio} | {r.cpu:.1f} | {r.sink_cpu:.1f} |")
    return lines


def all_runs(rows: dict[str, list[Run]]) -> list[str]:
    lines = ["| server | run | msgs/s | seconds | sink sessions / messages | other programs "
             "(CPUs) | notes |", "|---|---:|---:|---:|---:|---:|---|"]
    for runs in rows.values():
        for i, r in enumerate(runs, 1):
            rate = "error" if r.rate is None else f"{r.rate:,.0f}"
            notes = "; ".join(x for x in (r.own, r.error or "") if x)
            lines.append(f"| {r.label} | {i} | {rate} | {r.seconds:.2f} | "
                         f"{r.sink.sessions:,} / {r.sink.messages:,} | {r.foreign:.2f} | "
                         f"{notes} |")
    return lines


def verdict(rows: dict[str, list[Run]]) -> list[str]:
    if not rows.get("postfix"):
        return ["(no Postfix run: no ratio)"]
    base = best(rows["postfix"])
    out = []
    for name, runs in rows.items():
        r = best(runs)
        if name == "postfix" or r.rate is None or not base.rate:
            continue
        ratio = r.rate / base.rate
        out.append(f"- {r.label}: {ratio:.2f}x Postfix (target ≥ {TARGET}x): "
                   f"{'met' if ratio >= TARGET else 'MISSED'}")
    return out


def _where(src: Path) -> str:
    """Where mailgate was imported from, without this machine's paths: the checkout's
    `src/`, or "an installed copy"."""
    here = Path(__file__).resolve().parent.parent
    try:
        return str(src.resolve().relative_to(here)) + "/ of this checkout"
    except ValueError:
        return "an installed copy"


def report(rows: dict[str, list[Run]], args: argparse.Namespace,
           started: datetime.datetime, elapsed: float, root: Path) -> str:
    try:
        import uvloop  # noqa: F401
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    lines = [
        f"# Delivery benchmark, {started:%Y-%m-%d %H:%M}",
        "",
        "`python3 bench/delivery.py` " + " ".join(args.argv),
        "",
        *machine(),
        f"- queues on {fs_type(root)} ({root.parent}); everything on 127.0.0.1",
        f"- load: {args.messages:,} queued messages, one recipient each, all for one "
        f"destination ({DOMAIN} -> one smtp-sink); {PAYLOAD:,}-byte payload plus headers",
        f"- mailgate from {_where(Path(mailgate.__file__).parent.parent)}: DeliveryEngine "
        "in-process"
        f" ({loop}), SQLite WAL synchronous=FULL, "
        f"`[log] level = {args.log_level}` to a file; MESSAGES_PER_CONNECTION = "
        f"{DeliveryEngine.MESSAGES_PER_CONNECTION}, BATCH = {DeliveryEngine.BATCH}",
        f"- Postfix: private instance, relayhost = the sink, "
        f"default_destination_concurrency_limit = {POSTFIX_CONCURRENCY}, "
        "smtp_connection_cache_on_demand = yes; timed from `postqueue -f` to an empty queue",
        *(f"- {note}" for note in args.note),
        f"- run took {elapsed / 60:.1f} min; best of {args.rounds} round"
        f"{'s' if args.rounds != 1 else ''} per row",
        "",
        "## Delivery throughput",
        "",
        *table(rows),
        "",
        "connections and msgs/connection: smtp-sink's own counters (sessions ended, "
        "messages received) for the run. CPU: seconds of CPU the MTA (all its processes and"
        " threads) and the sink used during the timed part. `*`: other programs on this "
        "(shared) machine used more than 0.25 CPU during that run.",
        "",
        "## Target (issue 5)",
        "",
        *verdict(rows),
        "",
        "## All runs",
        "",
        *all_runs(rows),
        "",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--concurrency", type=_int_list, default=(1, 5, 20),
                        help="mailgate [delivery] concurrency_per_destination values")
    parser.add_argument("--servers", default="mailgate,postfix",
                        help="comma-separated subset of: mailgate, postfix")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure everything this many times; the best run counts")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds one fill or one delivery run may take")
    parser.add_argument("--log-level", default="info", help="mailgate's log level")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the report's header (what tree, what change)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="cProfile mailgate's timed runs; .prof files go to this folder")
    add_run_arguments(parser, "delivery")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    servers = {s for s in args.servers.split(",") if s}
    if servers - {"mailgate", "postfix"}:
        parser.error(f"--servers: unknown {', '.join(sorted(servers - {'mailgate', 'postfix'}))}")
    if "postfix" in servers and os.geteuid() != 0:
        print("not root: Postfix cannot run, skipping it (no ratio)", file=sys.stderr)
        servers.discard("postfix")
    for tool in (SMTP_SINK, SMTP_SOURCE, POSTFIX):
        if not Path(tool).exists():
            print(f"{tool} is missing: install the postfix package", file=sys.stderr)
            return 2

    started, t0 = start_harness(use_uvloop=True)
    runner = Runner(args.dir, args.keep)
    say_where(runner)
    rows: dict[str, list[Run]] = {}

    def measure() -> str:
        sink = SinkServer(runner, name="smtp-sink")
        runner.servers.append(sink)
        sink.start()
        postfix = None
        if "postfix" in servers:
            postfix = PostfixRelay(runner, sink)
            postfix.start()
        for rnd in range(args.rounds):
            print(f"\n== round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
            if "mailgate" in servers:
                for c in args.concurrency:
                    print(f" mailgate, concurrency_per_destination = {c}", file=sys.stderr,
                          flush=True)
                    run = asyncio.run(mailgate_run(runner, sink, c, args.messages,
                                                   args.timeout, args.log_level,
                                                   args.profile))
                    rows.setdefault(run.name, []).append(run)
                    _show(run)
            if postfix is not None:
                print(" Postfix", file=sys.stderr, flush=True)
                run = postfix_round(postfix, args.messages, args.timeout)
                rows.setdefault("postfix", []).append(run)
                _show(run)
        return report(rows, args, started, time.monotonic() - t0, runner.root)

    return run_and_report(runner, measure, args.out, "delivery", started)


def postfix_round(postfix: PostfixRelay, messages: int, timeout: float) -> Run:
    """One timed Postfix run; a harness failure is the run's error."""
    try:
        return postfix.run(messages, timeout)
    except HarnessError as exc:
        return Run("postfix", postfix.server.label, error=str(exc))


def rate_shown(run: Run) -> str:
    return (f"{run.rate:8,.0f} msgs/s ({run.messages:,} in {run.seconds:.2f} s)"
            if run.rate else f"ERROR {run.error}")


def _show(run: Run) -> None:
    shown = rate_shown(run)
    print(f"   {shown}; smtp-sink: {run.sink.sessions:,} connections, "
          f"{run.sink.messages:,} messages; CPU {run.cpu:.1f} s (sink {run.sink_cpu:.1f} s); "
          f"other programs {run.foreign:.2f} CPU; {run.own}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

