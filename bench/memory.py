"""Benchmark memory under large messages: 100 clients each send one 24 MiB message at once.

Run by hand, as root on a Debian-like machine with the `postfix` package installed
(never by pytest)::

    python3 bench/memory.py                                  # Postfix, aiosmtpd, mailgate
    python3 bench/memory.py --servers mailgate --mailgate-src fix=../other-checkout
    python3 bench/memory.py --servers mailgate,mailgate@fix --mailgate-src fix=DIR
    python3 bench/memory.py --clients 20 --mib 8             # a quick look

Issue 11 ("security-hardening"): a receiving server must not hold whole messages in
memory, or a hundred clients sending large messages at once exhaust it. Target:
mailgate's resident memory rises by less than 200 MiB under this load.

Each server runs alone, in turn, on 127.0.0.1 from a private temporary directory, and
receives the same load:

- mailgate, `python -m mailgate serve --config FILE` (bench/server.py's MailgateServer,
  `[server] workers = 1` unless `--workers`), `[limits] message_size = "32MiB"`, the
  recipient a user of a local domain, so every message is queued (SQLite) and then
  delivered into a Maildir by the same process tree. `--mailgate-src NAME=DIR` adds a
  row for another source tree (its checkout or its `src/`), imported through
  PYTHONPATH: a server named `mailgate@NAME`;
- Postfix (the Debian package), a private instance (bench/server.py's PostfixServer, no
  chroot, `default_process_limit = 100`), `message_size_limit = 32 MiB`, delivering the
  recipient's domain into a Maildir with virtual(8);
- aiosmtpd with bench/server.py's handler that writes each message to a file and fsyncs
  it before the 250: a baseline Python peer (aiosmtpd keeps a whole message in memory).

Load: `--clients` (100) threads, each with its own connection and a raw SMTP client:
EHLO, MAIL FROM with SIZE=, RCPT TO; then all wait at a barrier so that every DATA runs
at the same time, send the message (multipart/mixed: a short text part and a base64
attachment, lines of 76 characters and CRLF, `--mib` (24) MiB in all; every message
has its own headers, the body is shared by the threads so the load generator stays
small), and wait for the 250.

Memory: before the load, one small message goes through (imports, caches, the
delivery path), then the baseline is the median VmRSS of the server's whole process
tree (the main process and every descendant, from /proc/PID/status) over a second.
During the run VmRSS is sampled every `--interval` (50 ms; the tree itself is found
again every 4th sample), and PSS (smaps_rollup) every `--pss-interval` (250 ms) in
another thread, both by a process of its own (so the load generator's threads cannot
hold it up), until every accepted message is delivered; reported are the peak while
receiving, the peak until delivered, and what stays after delivery. Summed RSS counts
shared pages once per process, which weighs heavily on Postfix's 100 smtpd and 100
cleanup processes: PSS shares them out, and is the fairer figure across designs.

Counted: the 250s after DATA, and the messages delivered (Maildir files, or aiosmtpd's
files), complete ones being at least as large as the body sent (its CRLFs counted as
one byte each: Postfix stores LF). Timed: from the barrier to the last reply, and to
the last delivery.

The tables go to stdout and to bench/results/memory-YYYYMMDD.md. Every wait is bounded,
and every process started is stopped at the end, also on Ctrl-C, SIGTERM or an error.
Exits 0 unless the harness itself failed (the target is reported, not asserted).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import itertools
import os
import pwd
import random
import re
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from server import (
    HOST,
    REPO,
    AiosmtpdServer,
    HarnessError,
    MailgateServer,
    PostfixServer,
    Runner,
    Server,
    _postconf_default,
    add_run_arguments,
    descendants,
    fs_type,
    machine,
    memory,
    postfix_version,
    run_and_report,
    start_harness,
)

MIB = 1 << 20
TARGET_RISE = 200 * MIB  # issue 11: mailgate's RSS rises by less than this
DOMAIN = "local.bench.test"
USER = "to"
RCPT = f"{USER}@{DOMAIN}"
SENDER = "sender@client.bench.test"
SIZE_LIMIT = 32 * MIB  # every server's message size limit (24 MiB and headers fit)
BOUNDARY = "=_bench_memory_boundary"
SERVERS = ("postfix", "aiosmtpd", "mailgate")


# --------------------------------------------------------------------------- messages


TEXT = """\
Hello,

attached is the quarterly archive you asked for: the scanned contracts, the
spreadsheets with this year's figures and the photographs from the site visit.
It is rather large, so please tell me if it does not arrive in one piece and I
will split it into smaller parts.

Best regards,
the benchmark
"""


def make_body(size: int, seed: int = 11) -> bytes:
    """The shared part of every message: the MIME body (a text part and a base64
    attachment of pseudo-random bytes), CRLF line ends, lines of 76 characters, about
    `size` bytes; no line starts with a dot."""
    head = (
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{BOUNDARY}"\r\n'
        "\r\n"
        "This is a multi-part message in MIME format.\r\n"
        "\r\n"
        f"--{BOUNDARY}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        + TEXT.replace("\n", "\r\n")
        + "\r\n"
        f"--{BOUNDARY}\r\n"
        "Content-Type: application/octet-stream; name=archive.bin\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=archive.bin\r\n"
        "\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    lines = max(1, (size - len(head) - len(tail) - 600) // 78)  # 600: per-message headers
    raw = random.Random(seed).randbytes(lines * 57)  # 57 bytes: one 76-character line
    encoded = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    assert not encoded.startswith(b".") and b"\n." not in encoded
    return head + encoded.removesuffix(b"\r\n") + tail


def make_header(n: int, tag: str) -> bytes:
    return (
        f"From: Bench Sender <{SENDER}>\r\n"
        f"To: <{RCPT}>\r\n"
        f"Subject: archive {n} of the memory benchmark\r\n"
        f"Date: {formatdate(localtime=False)}\r\n"
        f"Message-ID: <{tag}.{n}@client.bench.test>\r\n"
    ).encode()


# --------------------------------------------------------------------------- load


@dataclass
class Outcome:
    accepted: bool = False
    reply: str = ""
    error: str = ""
    done: float = 0.0  # monotonic time of the final reply


class Refused(Exception):
    """The server answered with another code than expected."""


def send_one(port: int, header: bytes, body: bytes, timeout: float,
             barrier: threading.Barrier | None, out: Outcome,
             sockets: list[socket.socket]) -> None:
    """One SMTP transaction on its own connection; what happened goes into `out`."""
    waited = False
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sockets.append(sock)
            reader = sock.makefile("rb")

            def reply(expect: int) -> str:
                lines: list[bytes] = []
                while True:
                    line = reader.readline(2048)
                    if not line:
                        raise Refused("connection closed" + (
                            f" after {b''.join(lines)!r}" if lines else ""))
                    lines.append(line)
                    if line[3:4] != b"-":
                        break
                text = b" / ".join(x.strip() for x in lines).decode(errors="replace")
                if not line[:3].isdigit() or int(line[:3]) != expect:
                    raise Refused(text)
                return text

            def command(line: str, expect: int) -> str:
                sock.sendall(line.encode() + b"\r\n")
                return reply(expect)

            size = len(header) + len(body)
            reply(220)
            command("EHLO client.bench.test", 250)
            command(f"MAIL FROM:<{SENDER}> SIZE={size}", 250)
            command(f"RCPT TO:<{RCPT}>", 250)
            if barrier is not None:
                waited = True
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout)
            command("DATA", 354)
            sock.sendall(header)
            sock.sendall(memoryview(body))
            sock.sendall(b".\r\n")
            out.reply = reply(250)
            out.accepted = True
            out.done = time.monotonic()
            with contextlib.suppress(OSError, Refused):
                command("QUIT", 221)
    except (OSError, Refused) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:300]
        out.done = time.monotonic()
    finally:
        if barrier is not None and not waited:  # the others need not wait for us
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout)


def run_load(port: int, clients: int, body: bytes, timeout: float, deadline: float
             ) -> tuple[list[Outcome], float]:
    """`clients` threads at once; returns their outcomes and the barrier's release
    time. Connections still open at `deadline` (monotonic) are shut down."""
    barrier = threading.Barrier(clients + 1)
    outcomes = [Outcome() for _ in range(clients)]
    sockets: list[socket.socket] = []
    tag = f"{time.time():.0f}"
    threads = [threading.Thread(target=send_one, daemon=True, args=(
        port, make_header(i, tag), body, timeout, barrier, outcomes[i], sockets))
        for i in range(clients)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(max(1.0, min(timeout, deadline - time.monotonic())))
    released = time.monotonic()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        for sock in list(sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
        for o in outcomes:
            if not o.accepted and not o.error:
                o.error = "no reply before the deadline"
    return outcomes, released


# --------------------------------------------------------------------------- memory


def vmrss(pid: int) -> int:
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)
        try:
            text = os.read(fd, 8192)
        finally:
            os.close(fd)
        i = text.find(b"VmRSS:")
        if i != -1:
            return int(text[i + 6:text.index(b"kB", i)]) * 1024
    except (OSError, ValueError):
        pass
    return 0  # gone, or a zombie (no VmRSS line)


def sample(root: int, interval: float, pss_interval: float, out: Path) -> None:
    """The sampler process: lines `R time rss processes` every `interval` and `P time
    pss` every `pss_interval` (two threads, so slow smaps_rollup reads of hundreds of
    processes never delay the RSS samples) into `out`, until SIGTERM. A process of its
    own, so the load generator's threads do not hold it up."""
    with contextlib.suppress(OSError):
        os.nice(-10)  # root: ahead of the load it measures
    halt = threading.Event()
    lock = threading.Lock()
    signal.signal(signal.SIGTERM, lambda *_: halt.set())

    with out.open("w", buffering=1) as f:

        def write(line: str) -> None:
            with lock:
                f.write(line)

        def pss_loop() -> None:
            while not halt.is_set():
                now = time.monotonic()
                write(f"P {now:.4f} {memory([root, *descendants(root)])[1]}\n")
                halt.wait(max(0.0, pss_interval - (time.monotonic() - now)))

        thread = threading.Thread(target=pss_loop, daemon=True)
        thread.start()
        i = 0
        pids: list[int] = []
        while not halt.is_set():
            now = time.monotonic()
            if i % 4 == 0:  # the whole of /proc every 4th sample: Postfix runs 200 more
                pids = [root, *descendants(root)]
            i += 1
            write(f"R {now:.4f} {sum(vmrss(p) for p in pids)} {len(pids)}\n")
            halt.wait(max(0.0, interval - (time.monotonic() - now)))
        thread.join(10)


class Sampler:
    """Runs `sample()` in its own process on the server's process tree and reads what it
    wrote (times are CLOCK_MONOTONIC, the same in every process)."""

    def __init__(self, runner: Runner, server: Server, interval: float,
                 pss_interval: float) -> None:
        pids = server.pids()
        if not pids:
            raise HarnessError(f"{server.label} is not running")
        self.runner = runner
        self.file = server.dir / "samples.txt"
        self.proc = runner.spawn(
            [sys.executable, str(Path(__file__).resolve()), "--sample", str(pids[0]),
             str(interval), str(pss_interval), str(self.file)], server.dir / "sampler.log")
        self.rss: list[tuple[float, int, int]] = []  # (time, bytes, processes)
        self.pss: list[tuple[float, int]] = []

    def read(self) -> None:
        self.rss, self.pss = [], []
        with contextlib.suppress(FileNotFoundError), self.file.open() as f:
            for line in f:
                parts = line.split()
                if not line.endswith("\n"):
                    break  # being written
                if parts[0] == "R" and len(parts) == 4:
                    self.rss.append((float(parts[1]), int(parts[2]), int(parts[3])))
                elif parts[0] == "P" and len(parts) == 3:
                    self.pss.append((float(parts[1]), int(parts[2])))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.runner.stop_proc(self.proc, grace=15.0)
        self.read()

    def peak(self, start: float, end: float) -> tuple[int, int]:
        """(peak RSS, peak PSS) between two monotonic times."""
        rss = [r for t, r, _ in self.rss if start <= t <= end]
        pss = [p for t, p in self.pss if start <= t <= end]
        return max(rss, default=0), max(pss, default=0)

    def median(self, start: float, end: float) -> tuple[int, int]:
        self.read()
        rss = [r for t, r, _ in self.rss if start <= t <= end]
        pss = [p for t, p in self.pss if start <= t <= end]
        return (int(statistics.median(rss)) if rss else 0,
                int(statistics.median(pss)) if pss else 0)

    def processes(self, start: float, end: float) -> int:
        return max((n for t, _, n in self.rss if start <= t <= end), default=0)

    def largest_gap(self) -> tuple[float, float]:
        """The longest time between two RSS samples, and between two PSS samples."""
        def gap(times: list[float]) -> float:
            return max((b - a for a, b in itertools.pairwise(times)), default=0.0)
        return gap([t for t, _, _ in self.rss]), gap([t for t, _ in self.pss])


# --------------------------------------------------------------------------- servers


class PostfixMaildir(PostfixServer):
    """A private Postfix delivering DOMAIN into Maildirs with virtual(8)."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(runner)
        self.label = f"Postfix {postfix_version()} (virtual(8) to Maildir)"
        self.mail = self.dir / "mail"

    def start(self) -> None:
        owner = pwd.getpwnam(_postconf_default("mail_owner") or "postfix")
        self.mail.mkdir(exist_ok=True)
        os.chown(self.mail, owner.pw_uid, owner.pw_gid)
        self.etc.mkdir(exist_ok=True)
        (self.etc / "vmailbox").write_text(f"{RCPT} {DOMAIN}/{USER}/\n")
        self.main_cf = f"""\
message_size_limit = {SIZE_LIMIT}
virtual_mailbox_limit = {SIZE_LIMIT}
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {self.mail}
virtual_mailbox_maps = texthash:{self.etc}/vmailbox
virtual_minimum_uid = 1
virtual_uid_maps = static:{owner.pw_uid}
virtual_gid_maps = static:{owner.pw_gid}
smtpd_peername_lookup = no
"""
        self.master_cf = "virtual   unix  -       n       n       -       -       virtual\n"
        super().start()

    def maildir(self) -> Path:
        return self.mail / DOMAIN / USER


def maildir_of(server: Server) -> Path:
    """Where `server` puts the messages for RCPT."""
    if isinstance(server, PostfixMaildir):
        return server.maildir()
    if isinstance(server, MailgateServer):
        return server.dir / "data" / "maildir" / DOMAIN / USER
    if isinstance(server, AiosmtpdServer):
        return server.spool
    raise HarnessError(f"no mailbox known for {server.name}")


def delivered(server: Server, body: int) -> tuple[int, int]:
    """(files, files at least `body` bytes long) in the recipient's mailbox."""
    top = maildir_of(server)
    dirs = [top] if isinstance(server, AiosmtpdServer) else [top / "new", top / "cur"]
    files = complete = 0
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(d):
                with contextlib.suppress(OSError):
                    files += 1
                    complete += entry.stat().st_size >= body
    return files, complete


def busy(server: Server) -> str | None:
    """What the server still has queued, if it can say (None: nothing)."""
    if isinstance(server, PostfixMaildir):
        n = server.queued()
        return f"{n} in Postfix's queue" if n else None
    if isinstance(server, MailgateServer):
        rows = server._query(
            "SELECT count(*) FROM recipients WHERE state IN ('queued', 'deferred')")
        n = int(rows[0][0]) if rows else 0  # type: ignore[call-overload]
        return f"{n} recipients queued" if n else None
    return None


def resolve_src(spec: str) -> tuple[str, Path]:
    """`NAME=DIR` or `DIR`: DIR holds the mailgate package, or is a checkout whose src/
    does."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = "", spec
    d = Path(path).expanduser().resolve()
    if not (d / "mailgate").is_dir() and (d / "src" / "mailgate").is_dir():
        d = d / "src"
    if not (d / "mailgate").is_dir():
        raise HarnessError(f"--mailgate-src {spec}: no mailgate package in {d} or {d}/src")
    if not name:
        name = d.parent.name if d.name == "src" else d.name
    return name, d


def make_server(runner: Runner, name: str, args: argparse.Namespace) -> Server:
    if name == "postfix":
        return PostfixMaildir(runner)
    if name == "aiosmtpd":
        return AiosmtpdServer(runner, fsync=True)
    if name == "mailgate" or name.startswith("mailgate@"):
        tag = name.partition("@")[2]
        src = None
        if tag:
            if tag not in args.sources:
                raise HarnessError(f"{name}: no --mailgate-src {tag}=DIR given")
            src = (tag, args.sources[tag])
        server = MailgateServer(runner, args.workers, "maildir", args.log_level, src,
                                message_size=f"{SIZE_LIMIT}")
        server.label = f"mailgate workers={args.workers}" + (f" [{tag}]" if tag else "")
        return server
    raise HarnessError(f"unknown server {name!r}; known: {', '.join(SERVERS)}, mailgate@NAME")


# --------------------------------------------------------------------------- one run


@dataclass
class Result:
    name: str
    label: str
    clients: int
    size: int
    accepted: int = 0
    errors: list[str] = field(default_factory=list)
    delivered: int | None = None
    complete: int | None = None
    rss_base: int = 0
    pss_base: int = 0
    rss_peak_recv: int = 0
    pss_peak_recv: int = 0
    rss_peak: int = 0
    pss_peak: int = 0
    rss_after: int = 0
    pss_after: int = 0
    procs_base: int = 0
    procs_peak: int = 0
    recv_seconds: float | None = None  # barrier to the last reply
    deliver_seconds: float | None = None  # barrier to the last delivery
    samples: int = 0
    gap: float = 0.0
    pss_gap: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rise(self) -> int:
        return self.rss_peak - self.rss_base

    @property
    def pss_rise(self) -> int:
        return self.pss_peak - self.pss_base


def wait_delivered(server: Server, want: int, body: int, deadline: float) -> tuple[int, int]:
    """Until `want` complete messages are in the mailbox and the queue is empty, or the
    deadline; returns delivered() then."""
    while True:
        files, complete = delivered(server, body)
        if (complete >= want and busy(server) is None) or time.monotonic() >= deadline:
            return files, complete
        time.sleep(0.2)


def measure(runner: Runner, name: str, body: bytes, args: argparse.Namespace) -> Result:
    server = make_server(runner, name, args)
    result = Result(name, server.label, args.clients, len(body))
    print(f"\n== {server.label}", file=sys.stderr, flush=True)
    runner.servers.append(server)
    sampler: Sampler | None = None
    try:
        server.start()
        # Warm-up: one small message through the whole path, then a quiet second.
        warm = Outcome()
        send_one(server.port, make_header(0, "warm-up"), b"\r\nwarm-up\r\n", 60, None, warm,
                 [])
        if not warm.accepted:
            raise HarnessError(f"the warm-up message was refused: {warm.error}")
        wait_delivered(server, 1, 0, time.monotonic() + 60)
        warm_files = delivered(server, 0)[0]
        sampler = Sampler(runner, server, args.interval, args.pss_interval)
        time.sleep(1.0)
        t0 = time.monotonic()
        time.sleep(1.0)
        result.rss_base, result.pss_base = sampler.median(t0, time.monotonic())
        result.procs_base = sampler.processes(t0, time.monotonic())
        print(f"   baseline RSS {mib(result.rss_base)}, PSS {mib(result.pss_base)}; "
              f"{args.clients} clients × {mib(len(body))}", file=sys.stderr, flush=True)

        outcomes, released = run_load(server.port, args.clients, body, args.timeout,
                                      time.monotonic() + args.deadline)
        result.accepted = sum(o.accepted for o in outcomes)
        last = max((o.done for o in outcomes if o.accepted), default=None)
        received = max(o.done for o in outcomes)
        if last is not None and result.accepted == args.clients:
            result.recv_seconds = last - released
        errors: dict[str, int] = {}
        for o in outcomes:
            if o.error:
                errors[o.error] = errors.get(o.error, 0) + 1
        result.errors = [f"{n}× {e}" for e, n in sorted(errors.items(), key=lambda x: -x[1])]
        print(f"   {result.accepted}/{args.clients} accepted"
              + (f" in {result.recv_seconds:.1f} s" if result.recv_seconds else "")
              + "".join(f"; {e}" for e in result.errors[:3]), file=sys.stderr, flush=True)

        # Complete: at least the body, each CRLF perhaps stored as LF (Postfix does).
        least = len(body) - body.count(b"\r\n")
        files, complete = wait_delivered(server, result.accepted, least,
                                         time.monotonic() + args.deliver_timeout)
        result.delivered = files - warm_files
        result.complete = complete
        done = time.monotonic()
        if complete >= result.accepted and result.accepted:
            result.deliver_seconds = done - released
        left = busy(server)
        if left:
            result.notes.append(f"after {args.deliver_timeout:g} s still {left}")
        time.sleep(1.0)
        t1 = time.monotonic()
        time.sleep(1.0)
        result.rss_after, result.pss_after = sampler.median(t1, time.monotonic())
        sampler.stop()
        # Receiving: from the barrier to the sample just after the last reply.
        result.rss_peak_recv, result.pss_peak_recv = sampler.peak(
            released, received + 2 * args.interval)
        result.rss_peak, result.pss_peak = sampler.peak(t0, done)
        result.procs_peak = sampler.processes(t0, done)
        result.samples = len(sampler.rss)
        result.gap, result.pss_gap = sampler.largest_gap()
        print(f"   RSS {mib(result.rss_base)} → peak {mib(result.rss_peak)} (+"
              f"{mib(result.rise)}), PSS +{mib(result.pss_rise)}; delivered "
              f"{result.complete}/{result.accepted}"
              + (f" in {result.deliver_seconds:.1f} s" if result.deliver_seconds else ""),
              file=sys.stderr, flush=True)
        if not server.pids():
            result.notes.append("the server was gone at the end of the run")
    except HarnessError as exc:
        result.notes.append(f"could not run: {exc}")
        print(f"   could not run: {exc}", file=sys.stderr, flush=True)
    finally:
        if sampler is not None:
            sampler.stop()
        server.stop()
        runner.servers.remove(server)
        if not runner.keep:  # gigabytes of queue and mailbox: gone before the next server
            shutil.rmtree(server.dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- report


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


def secs(s: float | None) -> str:
    return "–" if s is None else f"{s:.1f} s"


def results_table(results: Sequence[Result]) -> list[str]:
    lines = ["| server | accepted | delivered | processes | RSS before | RSS peak (receiving)"
             " | RSS peak (to delivery) | **RSS rise** | PSS rise | RSS after | 250s after"
             " | delivered after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        deliv = "–" if r.complete is None else f"{r.complete}/{r.clients}"
        recv = mib(r.rss_peak_recv) if r.rss_peak_recv else "–"
        lines.append(
            f"| {r.label} | {r.accepted}/{r.clients} | {deliv} | {r.procs_base} → "
            f"{r.procs_peak} | {mib(r.rss_base)} | {recv} | "
            f"{mib(r.rss_peak)} | **{mib(r.rise)}** | {mib(r.pss_rise)} | "
            f"{mib(r.rss_after)} | {secs(r.recv_seconds)} | {secs(r.deliver_seconds)} |")
    return lines


def ratio_table(results: Sequence[Result]) -> list[str]:
    bases = [r for r in results if r.name in ("postfix", "aiosmtpd") and r.rss_peak]
    lines = ["| server | RSS rise ÷ bytes sent | RSS rise per message | "
             + " | ".join(f"RSS rise ÷ {b.name}'s | PSS rise ÷ {b.name}'s" for b in bases)
             + " |", "|---|---:|---:|" + "---:|---:|" * len(bases)]
    for r in results:
        if not r.rss_peak:
            continue
        sent = r.size * r.clients
        cells = []
        for b in bases:
            cells.append(f"{r.rise / b.rise:.2f}x" if b.rise > 0 else "–")
            cells.append(f"{r.pss_rise / b.pss_rise:.2f}x" if b.pss_rise > 0 else "–")
        lines.append(f"| {r.label} | {r.rise / sent:.3f} | {r.rise / r.clients / 1024:,.0f} KiB"
                     f" | " + " | ".join(cells) + " |")
    return lines


def targets(results: Sequence[Result]) -> list[str]:
    out = []
    for r in results:
        if not r.name.startswith("mailgate"):
            continue
        if not r.rss_peak:
            out.append(f"- {r.label}: no figure ({'; '.join(r.notes)})")
            continue
        ok = r.rise < TARGET_RISE
        whole = r.accepted == r.clients and r.complete == r.clients
        out.append(f"- {r.label}: RSS rose {mib(r.rise)} (target < {mib(TARGET_RISE)}): "
                   f"{'met' if ok else 'MISSED'}; {r.accepted}/{r.clients} accepted, "
                   f"{r.complete}/{r.clients} delivered complete"
                   + ("" if whole else " (NOT all)"))
    return out


def where(path: Path) -> str:
    """A source tree, named without this machine's paths."""
    try:
        return f"{path.relative_to(REPO)}/ of this checkout"
    except ValueError:
        return "a tree given by --mailgate-src"


def report(results: Sequence[Result], args: argparse.Namespace, started: datetime.datetime,
           elapsed: float, root: Path) -> str:
    argv = [re.sub(r"(?<![\w.])(~|\.\.?)?/[^\s,]*", "DIR", a) for a in args.argv]
    lines = [
        f"# Memory benchmark: {args.clients} × {args.mib:g} MiB at once, "
        f"{started:%Y-%m-%d %H:%M}",
        "",
        "`python3 bench/memory.py` " + " ".join(argv),
        "",
        *machine(),
        f"- data on {fs_type(root).split(' on ')[0]}; every server on 127.0.0.1, alone",
        f"- load: {args.clients} connections at once, each one message of "
        f"{mib(results[0].size if results else 0)} body + ~200 bytes of headers "
        "(multipart/mixed, base64 attachment, 76-character lines, CRLF); all DATA "
        "commands start together",
        f"- memory: VmRSS of the server's process tree every {args.interval * 1000:g} ms "
        f"(PSS every {args.pss_interval * 1000:g} ms), in a process of its own; "
        "baseline the median over 1 s after a warm-up message; "
        "peak until the last message is delivered; 'after' is the median 1 s after that",
        "- mailgate: " + "; ".join(
            [f"untagged rows from {where(REPO / 'src')}"]
            + [f"[{tag}] from {where(path)}" for tag, path in args.sources.items()])
        + f"; `[server] workers = {args.workers}`, `[limits] message_size = {SIZE_LIMIT}`,"
        " recipient in a local domain (queue, then Maildir)",
        f"- Postfix: private instance, no chroot, `message_size_limit = {SIZE_LIMIT}`, "
        "virtual(8) into a Maildir; aiosmtpd: writes and fsyncs a file per message",
        f"- run took {elapsed / 60:.1f} min",
        "",
        "## Resident memory",
        "",
        *results_table(results),
        "",
        "RSS is summed over the server's processes (shared pages count once per process);"
        " PSS divides shared pages among them. 'processes': before → most during the run.",
        "",
        "## Ratios",
        "",
        *ratio_table(results),
        "",
        "## Target (issue 11)",
        "",
        *targets(results),
        "",
        "## Notes",
        "",
    ]
    for r in results:
        bits = [f"{r.samples} RSS samples, largest gap {r.gap * 1000:.0f} ms (PSS: "
                f"{r.pss_gap * 1000:.0f} ms)"]
        bits += [f"refused/failed: {e}" for e in r.errors[:5]]
        if r.delivered is not None and r.delivered != r.complete:
            bits.append(f"{r.delivered} files in the mailbox, {r.complete} complete")
        bits += r.notes
        lines.append(f"- {r.label}: " + "; ".join(bits))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=None,
                        help=f"comma-separated, in order, of: {', '.join(SERVERS)}, "
                             "mailgate@NAME (default: all, then every mailgate@NAME)")
    parser.add_argument("--mailgate-src", action="append", default=[],
                        metavar="[NAME=]DIR",
                        help="another mailgate tree (a checkout or its src/), run as "
                             "mailgate@NAME (NAME defaults to the directory's name)")
    parser.add_argument("--clients", type=int, default=100, help="parallel clients")
    parser.add_argument("--mib", type=float, default=24.0, help="message size in MiB")
    parser.add_argument("--workers", type=int, default=1, help="mailgate [server] workers")
    parser.add_argument("--interval", type=float, default=0.05, help="RSS sampling period")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="socket timeout of each client operation, seconds")
    parser.add_argument("--deadline", type=float, default=600.0,
                        help="the whole load's limit, seconds (then connections are cut)")
    parser.add_argument("--deliver-timeout", type=float, default=600.0,
                        help="seconds to wait for delivery after the load")
    parser.add_argument("--pss-interval", type=float, default=0.25,
                        help="PSS sampling period (smaps_rollup is slower to read)")
    parser.add_argument("--sample", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default="info", help="mailgate [log] level")
    add_run_arguments(parser, "memory", gigabytes=True)
    args = parser.parse_args()
    if args.sample:
        root, interval, pss_interval, out = args.sample
        sample(int(root), float(interval), float(pss_interval), Path(out))
        return 0
    args.argv = sys.argv[1:]
    args.sources = {}
    try:
        for spec in args.mailgate_src:
            tag, path = resolve_src(spec)
            args.sources[tag] = path
    except HarnessError as exc:
        parser.error(str(exc))
    names = ([n for n in args.servers.split(",") if n] if args.servers else
             [*SERVERS, *(f"mailgate@{t}" for t in args.sources)])
    if os.geteuid() != 0 and "postfix" in names:
        print("not root: Postfix cannot run, skipping it", file=sys.stderr)
        names.remove("postfix")
    if args.mib * MIB + 4096 > SIZE_LIMIT:
        parser.error(f"--mib: at most {SIZE_LIMIT // MIB - 1} (the servers' size limit)")

    started, t0 = start_harness()
    body = make_body(int(args.mib * MIB))
    runner = Runner(args.dir, args.keep)
    print(f"working in {runner.root} ({fs_type(runner.root)})", file=sys.stderr)

    def measure_all() -> str:
        results = [measure(runner, name, body, args) for name in names]
        return report(results, args, started, time.monotonic() - t0, runner.root)

    return run_and_report(runner, measure_all, args.out, "memory", started)


if __name__ == "__main__":
    sys.exit(main())
