"""Benchmark delivery to many destinations, and fairness to a slow one (issue 17).

Run by hand, as root on a Debian-like machine with the `postfix` package installed
(never by pytest)::

    python3 bench/destinations.py                          # 10,000 msgs, 1,000 domains
    python3 bench/destinations.py --rounds 3 --messages 5000 --domains 500
    python3 bench/destinations.py --cases fairness --slow-messages 2000

Reuses bench/delivery.py (runs, counters, the Postfix relay it fills and flushes, the
report's tables) and bench/server.py (processes, Postfix instance, CPU meters).

**many**: N messages of 2 KiB, one recipient each, to D domains (u<i>@d<i mod D>.test:
arrival order interleaves the domains, so a claim in arrival order spans them all).
Every domain has its own MX host with its own loopback address (d<k>.test MX
mx<k>.test, A 127.0.<1 + k/250>.<1 + k mod 250>): D destinations for both MTAs. One
sink process (an asyncio SMTP sink in this file, `--sink`, as smtp-sink behaves:
PIPELINING, discards, prints smtp-sink's counters) listens on the same port on all D
addresses, so both MTAs' connections are counted by the same meter.
- mailgate: the queue filled before the clock starts, then the DeliveryEngine in this
  process until every recipient has its outcome committed; it resolves through the
  tests' DNS server (tests/support/dnsserver.py) run in a process of its own, every
  domain once before the clock starts (`warm`: that server drops queries under a
  burst, and Postfix looks nothing up here).
- Postfix: bench/delivery.py's PostfixRelay (filled while `defer_transports = smtp`
  holds delivery, timed from `postqueue -f` until the queue is empty), with a
  `transport_maps` entry per domain naming the same address as the MX record
  (`smtp:[127.0.x.y]:PORT`): Postfix cannot be pointed at a DNS server on another port,
  and a distinct next hop per domain gives it the same D destinations. Filled over SMTP
  by this script (smtp-source sends to one domain only).

**fairness** (mailgate only): the same fast load, alone and then with S messages for
slow.test queued first, whose server (another sink process, on 127.0.9.1) waits
`--slow-delay` seconds before each reply (or never answers, `--slow-delay -1`). Timed
until the fast sink has all N; the slow destination's connections are counted. Target:
the fast rate with the slow destination at most 10 % below the rate without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import os
import signal
import smtplib
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path

from delivery import (
    PAYLOAD,
    POSTFIX_CONCURRENCY,
    PostfixRelay,
    Run,
    _log_to,
    _self_cpu,
    all_runs,
    best,
    counters,
    engine_config,
    payload,
    postfix_round,
    rate_shown,
    settled_counters,
    table,
    timed_delivery,
)
from server import (
    HOST,
    POSTFIX,
    ForeignLoad,
    HarnessError,
    PostfixServer,
    Runner,
    SinkServer,
    add_run_arguments,
    free_port,
    fs_type,
    machine,
    run_and_report,
    start_harness,
    wait_greeting,
    wait_quiet,
)

from mailgate.config import DNSConfig
from mailgate.delivery.engine import DeliveryEngine
from mailgate.dns import Resolver, TempFail
from mailgate.queue import NewMessage, NewRecipient
from mailgate.queue.sqlite import SQLiteQueue

REPO = Path(__file__).resolve().parent.parent
SENDER = "a@bench.test"
SLOW_DOMAIN = "slow.test"
SLOW_ADDRESS = "127.0.9.1"
TARGET_MANY = 1.5  # issue 17: at least 1.5x Postfix
TARGET_FAIR = 0.10  # issue 17: a slow destination costs the others at most 10 %


def address(k: int) -> str:
    return f"127.0.{1 + k // 250}.{1 + k % 250}"


def domain(k: int) -> str:
    return f"d{k}.test"


# --------------------------------------------------------------------------- the sink


async def _sink(addresses: Sequence[str], port: int, delay: float) -> None:
    """An SMTP sink on `port` of every address: answers as smtp-sink does (PIPELINING,
    every command 250, DATA 354), discards, and prints smtp-sink's counters line.
    `delay` > 0: that many seconds before each reply; < 0: never a greeting."""
    stats = {"sess": 0, "quit": 0, "mesg": 0}

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.t = transport
            self.buf = b""
            self.data = False
            self.replies: asyncio.Queue[bytes] | None = None
            if delay > 0:
                self.replies = asyncio.Queue()
                self.writer = asyncio.ensure_future(self._paced())
            if delay >= 0:
                self.say(b"220 sink.bench.test ESMTP\r\n")

        def connection_lost(self, exc: Exception | None) -> None:
            stats["sess"] += 1
            if self.replies is not None:
                self.writer.cancel()

        async def _paced(self) -> None:
            assert self.replies is not None
            while True:
                reply = await self.replies.get()
                await asyncio.sleep(delay)
                if not self.t.is_closing():
                    self.t.write(reply)
                    if reply.startswith(b"221"):
                        self.t.close()

        def say(self, reply: bytes) -> None:
            if self.replies is not None:
                self.replies.put_nowait(reply)
                return
            self.t.write(reply)
            if reply.startswith(b"221"):
                self.t.close()

        def data_received(self, chunk: bytes) -> None:
            if delay < 0:
                return
            self.buf += chunk
            while True:
                if self.data:
                    end = self.buf.find(b"\r\n.\r\n")
                    if end < 0:
                        self.buf = self.buf[-4:]
                        return
                    self.buf = self.buf[end + 5:]
                    self.data = False
                    stats["mesg"] += 1
                    self.say(b"250 2.0.0 Ok: queued\r\n")
                    continue
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                line, self.buf = self.buf[:end], self.buf[end + 2:]
                verb = line[:4].upper()
                if verb == b"EHLO":
                    self.say(b"250-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                             b"250 SIZE 0\r\n")
                elif verb == b"DATA":
                    self.data = True
                    self.buf = b"\r\n" + self.buf  # the terminator may follow at once
                    self.say(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                elif verb == b"QUIT":
                    stats["quit"] += 1
                    self.say(b"221 2.0.0 Bye\r\n")
                else:
                    self.say(b"250 2.0.0 Ok\r\n")

    loop = asyncio.get_running_loop()
    for a in addresses:
        await loop.create_server(Sink, a, port, backlog=1000, reuse_address=True)
    print("listening", flush=True)
    while True:
        await asyncio.sleep(0.2)
        sys.stdout.write(f"sess={stats['sess']} quit={stats['quit']} mesg={stats['mesg']}\r")
        sys.stdout.flush()


class MultiSink(SinkServer):
    """The sink process on `addresses`:PORT (and 127.0.0.1, for Postfix's relayhost)."""

    def __init__(self, runner: Runner, name: str, addresses: Sequence[str],
                 delay: float = 0.0, port: int = 0) -> None:
        super().__init__(runner, name=name)
        # The slow sink shares the fast one's port (mailgate's smtp_port), on an address
        # of its own; 127.0.0.1 is the fast one's.
        self.addresses = [HOST, *addresses] if not port else list(addresses)
        self.delay = delay
        self.fixed_port = port
        self.label = f"{name} ({len(addresses):,} addresses)"

    def start(self) -> None:
        self.port = self.fixed_port or free_port()
        listing = self.dir / "addresses"
        listing.write_text("\n".join(self.addresses))
        self.proc = self.runner.spawn(
            [sys.executable, __file__, "--sink", str(listing), str(self.port),
             str(self.delay)], self.log)
        deadline = time.monotonic() + 30
        while b"listening" not in self.log.read_bytes():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise HarnessError(f"{self.name} did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.05)
        if self.delay >= 0 and HOST in self.addresses:
            wait_greeting(self.port, 10, self.proc, self.log)


class DNSProcess:
    """tests/support/dnsserver.py's server with the bench's zone, in its own process."""

    def __init__(self, runner: Runner, zone: str) -> None:
        self.runner = runner
        self.dir = runner.root / "dns"
        self.dir.mkdir(exist_ok=True)
        (self.dir / "zone").write_text(zone)
        self.log = self.dir / "dns.out"
        self.proc = runner.spawn([sys.executable, __file__, "--dns", str(self.dir / "zone")],
                                 self.log)
        deadline = time.monotonic() + 30
        while True:
            text = self.log.read_text()
            if text.startswith("port "):
                self.port = int(text.split()[1])
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise HarnessError(f"DNS server did not start: {text[-500:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.runner.stop_proc(self.proc)


def _dns_main(zone_file: str) -> None:
    sys.path.insert(0, str(REPO))
    from tests.support.dnsserver import DNSServer

    server = DNSServer(Path(zone_file).read_text()).start()
    print(f"port {server.port}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def zone(domains: int) -> str:
    lines = ["test. SOA ns.test. hostmaster.test. 1 3600 600 86400 60"]
    for k in range(domains):
        lines += [f"{domain(k)}. MX 10 mx{k}.test.", f"mx{k}.test. A {address(k)}"]
    lines += [f"{SLOW_DOMAIN}. MX 10 mx-slow.test.", f"mx-slow.test. A {SLOW_ADDRESS}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- mailgate


def message(i: int, rcpt: str, body: bytes, now: float) -> NewMessage:
    head = (f"Received: from bench.test (localhost [127.0.0.1])\r\n"
            f"\tby mailgate.bench.test with ESMTP id bench{i:06d}\r\n"
            f"\tfor <{rcpt}>; {formatdate(now, localtime=True)}\r\n"
            f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nDate: {formatdate(now, localtime=True)}\r\n"
            f"Message-Id: <{i}.bench@bench.test>\r\n\r\n").encode()
    return NewMessage(sender=SENDER, recipients=[NewRecipient(rcpt)], content=head + body,
                      received_at=now, client_address="127.0.0.1", client_helo="bench.test")


async def fill(queue: SQLiteQueue, rcpts: Sequence[str]) -> None:
    body = payload(PAYLOAD)
    now = time.time()
    for start in range(0, len(rcpts), 2000):
        await asyncio.gather(*(queue.enqueue_async(message(i, rcpts[i], body, now))
                               for i in range(start, min(len(rcpts), start + 2000))))


def _engine(runner: Runner, name: str, dns: DNSProcess, port: int
            ) -> tuple[Path, DeliveryEngine, SQLiteQueue]:
    work = runner.root / f"{name}-{time.monotonic_ns()}"
    work.mkdir()
    config = engine_config(work, f"concurrency_per_destination = {POSTFIX_CONCURRENCY}\n"
                           f"smtp_port = {port}\nretry_schedule = [600]", "",
                           "bench/destinations.py")
    config = replace(config, dns=DNSConfig(((HOST, dns.port),)))
    queue = SQLiteQueue(config.data_dir / "queue.db")
    return work, DeliveryEngine(config, queue, Resolver(config.dns.nameservers)), queue


async def warm(engine: DeliveryEngine, domains: int, slow: bool = False) -> None:
    """Every domain resolved once before the clock starts, 20 at a time: the tests' DNS
    server (dnslib, in Python) drops queries when 1,000 domains ask at once, and Postfix
    here looks nothing up (transport_maps), so neither pays for DNS while timed."""
    names = [domain(k) for k in range(domains)] + ([SLOW_DOMAIN] if slow else [])
    for _try in range(3):
        routes = []
        for start in range(0, len(names), 20):
            routes += await asyncio.gather(*(engine.resolver.resolve(d)
                                             for d in names[start:start + 20]))
        if not any(isinstance(r, TempFail) for r in routes):
            return
        engine.resolver.clear_cache()
    raise HarnessError("the DNS server did not answer for every domain")


def fast_rcpts(n: int, domains: int) -> list[str]:
    return [f"u{i}@{domain(i % domains)}" for i in range(n)]


async def mailgate_many(runner: Runner, sink: MultiSink, dns: DNSProcess, n: int,
                        domains: int, timeout: float, log_level: str) -> Run:
    run = Run("mailgate", f"mailgate, claim by destination ({domains:,} domains)")
    work, engine, queue = _engine(runner, "mailgate", dns, sink.port)
    _log_to(work / "mailgate.log", log_level)
    try:
        await fill(queue, fast_rcpts(n, domains))
        await warm(engine, domains)
        await timed_delivery(run, engine, queue, sink, n, timeout)
        run.own = f"engine: {engine.stats.connections:,} connections"
    finally:
        queue.close()
        _log_to(None, log_level)
    return run


async def mailgate_fair(runner: Runner, sink: MultiSink, slow: MultiSink | None,
                        dns: DNSProcess, n: int, domains: int, slow_n: int,
                        timeout: float, log_level: str) -> Run:
    """The fast load's rate with `engine.run()` as `mailgate serve` runs it, with the
    slow destination's messages queued first (or without them)."""
    label = (f"mailgate, {slow_n:,} messages for a slow destination queued first"
             if slow is not None else "mailgate, fast destinations alone")
    run = Run("fair-slow" if slow is not None else "fair-alone", label)
    work, engine, queue = _engine(runner, run.name, dns, sink.port)
    _log_to(work / "mailgate.log", log_level)
    task = None
    try:
        if slow is not None:
            await fill(queue, [f"s{i}@{SLOW_DOMAIN}" for i in range(slow_n)])
        await fill(queue, fast_rcpts(n, domains))
        await warm(engine, domains, slow is not None)
        gc.collect()
        await asyncio.to_thread(wait_quiet, 0.2, 10.0)
        before = settled_counters(sink, quiet=0.5)
        slow_before = counters(slow) if slow is not None else None
        cpu0 = _self_cpu()
        other = ForeignLoad()
        other.start()
        started = time.perf_counter()
        task = asyncio.create_task(engine.run())
        deadline = time.monotonic() + timeout
        while counters(sink).messages - before.messages < n:
            if time.monotonic() > deadline:
                run.error = f"not done within {timeout:g} s"
                break
            if task.done():
                run.error = f"engine ended: {task.exception()!r}"
                break
            await asyncio.sleep(0.01)
        run.seconds = time.perf_counter() - started
        run.cpu = _self_cpu() - cpu0
        run.foreign = other.stop()
        run.messages = counters(sink).messages - before.messages
        notes = []
        if slow is not None and slow_before is not None:
            state = await asyncio.to_thread(queue.counts)
            slow_now = counters(slow) - slow_before
            notes.append(f"slow destination meanwhile: {slow.proc_connections()} "
                         f"connection(s) open, {slow_now.messages:,} of {slow_n:,} "
                         f"delivered; queue {state}")
        run.own = "; ".join(notes)
    finally:
        if task is not None:
            engine.stop()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 5.0)
        queue.close()
        _log_to(None, log_level)
    run.sink = settled_counters(sink, quiet=0.5) - before
    return run


def _open_connections(self: MultiSink) -> int:
    """Established TCP connections to the slow sink (from /proc/net/tcp)."""
    a, b, c, d = (int(x) for x in SLOW_ADDRESS.split("."))
    local = f"{d:02X}{c:02X}{b:02X}{a:02X}:{self.port:04X}"
    count = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "01":
                count += 1
    return count


MultiSink.proc_connections = _open_connections  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- Postfix


class PostfixMany(PostfixRelay):
    """bench/delivery.py's Postfix relay, with one next hop per domain."""

    def __init__(self, runner: Runner, sink: MultiSink, domains: int) -> None:
        self.sink = sink
        self.domains = domains
        transport = runner.root / "transport"
        transport.write_text("".join(f"{domain(k)} smtp:[{address(k)}]:{sink.port}\n"
                                     for k in range(domains)))
        self.server = PostfixServer(runner, sink=sink, main_cf=f"""\
# bench/destinations.py
default_destination_concurrency_limit = {POSTFIX_CONCURRENCY}
smtp_connection_cache_on_demand = yes
transport_maps = texthash:{transport}
defer_transports = smtp
""")
        self.server.label = (f"Postfix, {domains:,} next hops, "
                             f"default_destination_concurrency_limit = {POSTFIX_CONCURRENCY}")
        runner.servers.append(self.server)

    def fill(self, n: int, timeout: float) -> None:
        """N messages over SMTP, 8 connections, one recipient each, interleaved domains
        as mailgate's; then wait until all sit in the deferred queue."""
        started = time.perf_counter()
        body = payload(PAYLOAD)
        rcpts = fast_rcpts(n, self.domains)
        port = self.server.port

        def send(part: int) -> None:
            with smtplib.SMTP(HOST, port, timeout=60) as c:
                for i in range(part, n, 8):
                    now = time.time()
                    head = (f"From: <{SENDER}>\r\nTo: <{rcpts[i]}>\r\nDate: "
                            f"{formatdate(now, localtime=True)}\r\n"
                            f"Message-Id: <{i}.bench@bench.test>\r\n\r\n").encode()
                    c.sendmail(SENDER, [rcpts[i]], head + body)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(8)))
        accepted = time.perf_counter() - started
        deadline = time.monotonic() + timeout
        while True:
            busy = self.count("maildrop", "incoming", "active")
            if not busy and self.count("deferred") >= n:
                break
            if time.monotonic() > deadline:
                raise HarnessError(f"Postfix queue not settled within {timeout:g} s")
            time.sleep(0.2)
        print(f"   queued {n:,} in {accepted:.1f} s, all deferred after "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- report


def report(many: dict[str, list[Run]], fair: dict[str, list[Run]], args: argparse.Namespace,
           started: datetime.datetime, elapsed: float, root: Path) -> str:
    lines = [f"# Many destinations and a slow one, {started:%Y-%m-%d %H:%M}", "",
             "`python3 bench/destinations.py` " + " ".join(args.argv), "", *machine(),
             f"- queues on {fs_type(root)}; everything on loopback",
             *(f"- {note}" for note in args.note),
             f"- run took {elapsed / 60:.1f} min; best of {args.rounds} round"
             f"{'s' if args.rounds != 1 else ''} per row", ""]
    if many:
        lines += ["## Many destinations", "",
                  f"{args.messages:,} messages of {PAYLOAD:,} bytes, one recipient each, to "
                  f"{args.domains:,} domains ({args.messages // args.domains} each, arrival "
                  "order interleaving the domains), each domain its own MX address.", "",
                  *table(many), ""]
        if many.get("postfix") and many.get("mailgate"):
            m, p = best(many["mailgate"]), best(many["postfix"])
            if m.rate and p.rate:
                ratio = m.rate / p.rate
                lines += [f"- mailgate {ratio:.2f}x Postfix (target ≥ {TARGET_MANY}x): "
                          f"{'met' if ratio >= TARGET_MANY else 'MISSED'}", ""]
        lines += ["### All runs", "", *all_runs(many), ""]
    if fair:
        lines += ["## A slow destination", "",
                  f"{args.messages:,} messages to {args.domains:,} fast domains; the slow "
                  f"destination's server waits {args.slow_delay:g} s before each reply"
                  f"{' (never answers)' if args.slow_delay < 0 else ''}; "
                  f"{args.slow_messages:,} messages for it queued before the fast ones. "
                  "Timed until the fast sink has every fast message (`engine.run()`).", ""]
        rates = {name: [r.rate for r in runs if r.rate] for name, runs in fair.items()}
        lines += ["| case | msgs/s (each run) | best |", "|---|---|---:|"]
        for name, runs in fair.items():
            each = ", ".join(f"{x:,.0f}" for x in rates[name]) or "error"
            top = max(rates[name], default=0)
            lines.append(f"| {runs[0].label} | {each} | {top:,.0f} |")
        if rates.get("fair-alone") and rates.get("fair-slow"):
            alone, slow = max(rates["fair-alone"]), max(rates["fair-slow"])
            cost = 1 - slow / alone
            lines += ["", f"- the slow destination costs the others {cost:.1%} of their "
                      f"rate (best against best; target ≤ {TARGET_FAIR:.0%}): "
                      f"{'met' if cost <= TARGET_FAIR else 'MISSED'}"]
        lines += ["", "### All runs", "", *all_runs(fair), ""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        addrs = Path(sys.argv[2]).read_text().split()
        asyncio.run(_sink(addrs, int(sys.argv[3]), float(sys.argv[4])))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--dns":
        _dns_main(sys.argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--domains", type=int, default=1_000)
    parser.add_argument("--cases", default="many,fairness")
    parser.add_argument("--servers", default="mailgate,postfix")
    parser.add_argument("--slow-messages", type=int, default=2_000)
    parser.add_argument("--slow-delay", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--note", action="append", default=[])
    add_run_arguments(parser, "destinations")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    cases = set(args.cases.split(","))
    servers = set(args.servers.split(","))
    if "postfix" in servers and (os.geteuid() != 0 or not Path(POSTFIX).exists()):
        print("Postfix cannot run here: skipping it (no ratio)", file=sys.stderr)
        servers.discard("postfix")
    started, t0 = start_harness(use_uvloop=True)
    runner = Runner(args.dir, args.keep)
    many: dict[str, list[Run]] = {}
    fair: dict[str, list[Run]] = {}

    def measure() -> str:
        dns = DNSProcess(runner, zone(args.domains))
        sink = MultiSink(runner, "sink", [address(k) for k in range(args.domains)])
        runner.servers.append(sink)
        sink.start()
        slow = None
        if "fairness" in cases:
            slow = MultiSink(runner, "slow-sink", [SLOW_ADDRESS], delay=args.slow_delay,
                             port=sink.port)
            runner.servers.append(slow)
            slow.start()
        postfix = None
        if "many" in cases and "postfix" in servers:
            postfix = PostfixMany(runner, sink, args.domains)
            postfix.start()
        try:
            for rnd in range(args.rounds):
                print(f"\n== round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
                if "many" in cases and "mailgate" in servers:
                    run = asyncio.run(mailgate_many(runner, sink, dns, args.messages,
                                                    args.domains, args.timeout,
                                                    args.log_level))
                    many.setdefault("mailgate", []).append(run)
                    _show(run)
                if postfix is not None:
                    run = postfix_round(postfix, args.messages, args.timeout)
                    many.setdefault("postfix", []).append(run)
                    _show(run)
                if slow is not None:
                    for with_slow in (False, True):
                        run = asyncio.run(mailgate_fair(
                            runner, sink, slow if with_slow else None, dns, args.messages,
                            args.domains, args.slow_messages, args.timeout, args.log_level))
                        fair.setdefault(run.name, []).append(run)
                        _show(run)
        finally:
            dns.stop()
        return report(many, fair, args, started, time.monotonic() - t0, runner.root)

    return run_and_report(runner, measure, args.out, "destinations", started)


def _show(run: Run) -> None:
    print(f"   {run.label}: {rate_shown(run)}; sink {run.sink.sessions:,} sessions; {run.own}",
          file=sys.stderr, flush=True)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
