"""Benchmark the server side by side: mailgate, Postfix, aiosmtpd and smtp-sink.

Run by hand, as root on a Debian-like machine with the `postfix` package installed
(never by pytest)::

    python3 bench/server.py --rounds 2       # everything, about 25 minutes
    python3 bench/server.py --servers postfix,mailgate-w1 --sizes 2048 --concurrency 20 \
        --seconds 3 --idle 2000 --idle-servers mailgate-w1
    python3 bench/server.py --src old=/tmp/old/src --servers postfix,mailgate-w1,mailgate-w1@old

The headline is end to end, as a user lives it: mailgate and Postfix each accept mail
and relay all of it to a local `smtp-sink`, and a run lasts from smtp-source's first
connection until the server's queue is empty again (polled every 10 ms); the CPU of the
server's whole process tree (its reaped children included: Postfix's smtpd, cleanup, smtp)
is taken over the same span and given per message. Rates of acceptance alone (the
queue-only rows, and the relaying servers' smtp-source runs) are a diagnosis below it.

Every server runs on 127.0.0.1 from a private temporary directory (on disk, not tmpfs:
durability costs what the disk's fsync costs) and is measured in the same run:

- mailgate, `python -m mailgate serve --config FILE`, with `[server] workers = 1` and
  `workers = 2` (`-dkim`, `-dkim2`: with [dkim] keys for the sender's domain, each
  message DKIM-signed with RSA 2048, or RSA 2048 and Ed25519, at queue time); the
  queue is SQLite WAL with synchronous=FULL and a 250 is sent only after the group
  commit's fsync. Recipients are in a domain that is not local, relayed
  for loopback clients, so the messages stay queued and no delivery work competes:
  measured is acceptance. (`[delivery] relayhost` points at a socket that never answers,
  so the outbound engine holds its first batch and sends nothing.) One more run delivers
  into local Maildirs while accepting, and one relays everything to a local smtp-sink, as
  Postfix does (when mailgate has an outbound engine). `mailgate-w2-stuck` relays as
  well, with 20,000 messages held for a destination that never answers (`[routes]` to
  a socket that never accepts), queued before the cells: what a full destination's
  backlog costs the mail that flows. `mailgate-w2-lmtp` takes mail for a local domain
  and hands it by LMTP to an `smtp-sink -L`, as to Dovecot; `postfix-lmtp` does the
  same with Postfix's lmtp client (the ratios of a run without `postfix` are to it).
  `--src NAME=PATH` adds the same
  rows for another mailgate tree (servers `mailgate-w1@NAME`): before/after figures;
- Postfix (the Debian package) in a private config/queue/data directory, listening on a
  chosen port and relaying everything to a local `smtp-sink`: its real pipeline, queue
  files fsync'd before the 250;
- aiosmtpd with a handler that writes each message to a file and fsyncs it (in a thread)
  before answering 250, and the same without fsync;
- `smtp-sink` itself: the ceiling of the load generator;
- `python-floor` (not in the default set): uvloop and a protocol that answers each
  command and drops the message, the ceiling of any server written in Python here.

Load: Postfix's `smtp-source`, one new connection per message (its default; `--reuse`
keeps connections open, `-d`), for 2 KiB and 100 KiB messages at 1, 20 and 100
concurrent sessions. All servers run at once and each cell is measured for every server
in turn, so the figures of a cell are taken close together; a short probe run (also the
warm-up) sizes the measured run to last about `--seconds`, and the whole smtp-source run
is timed. With `--rounds N` every cell is measured N times and the best run counts; the
report also gives each round's ratio to Postfix in that round, side by side.

Shared machines: before each run the harness waits (a while) until other programs are
quiet, and it records the CPU they used during the run; runs they disturbed are marked.
A server that stopped answering (another user's pkill) is started again and noted.

Memory: `--idle` connections (10,000) each read their 220 greeting and then stay idle;
the server's RSS and PSS (smaps_rollup, summed over its processes) minus its idle
baseline, per connection. Postfix greets only as many clients as it has smtpd processes.

The tables go to stdout and to bench/results/server-YYYYMMDD.md. Every process started
is stopped at the end, also on Ctrl-C, SIGTERM or an error. Exits 0 unless the harness
itself failed (targets are reported, not asserted).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import ctypes
import datetime
import importlib.util
import math
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SIZES = (2048, 102400)
CONCURRENCY = (1, 20, 100)
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SENDER = "from@client.bench.test"
REMOTE_RCPT = "to@remote.bench.test"
LOCAL_RCPT = "to@local.bench.test"

# Targets from issue 4 ("Speed and memory").
TARGET_2K_20 = 2.0
TARGET_100K = 1.5
TARGET_IDLE_BYTES = 8 * 1024
BUSY = 0.25  # CPUs used by other programs during a run that earn it an asterisk


class HarnessError(RuntimeError):
    """The benchmark could not run a server or a measurement."""


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def descendants(root: int) -> list[int]:
    """Every live process below `root` in the process tree (not `root` itself)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = _ppid(int(entry))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def memory(pids: Sequence[int]) -> tuple[int, int]:
    """(RSS, PSS) in bytes, summed over `pids` (smaps_rollup)."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss += int(rest.split()[0]) * 1024
            elif key == "Pss":
                pss += int(rest.split()[0]) * 1024
    return rss, pss


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap()
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


def reap() -> None:
    """Collect zombie children that are not ours through Popen (orphans handed to us as
    the subreaper, such as Postfix's daemonized master)."""
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break


def become_subreaper() -> None:
    """Orphans of our children (a daemon's double fork) become our children, so the
    cleanup finds and collects every process this run started."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def start_harness(use_uvloop: bool = False) -> tuple[datetime.datetime, float]:
    """What every benchmark's main does first: SIGTERM and SIGHUP end the run through
    its cleanup, orphans of our children become ours (`become_subreaper`), uvloop when
    asked and installed; returns (wall-clock start, monotonic start)."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    become_subreaper()
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return datetime.datetime.now(), time.monotonic()


def say_where(runner: Runner) -> None:
    """Name the working folder and its filesystem; warn when fsync costs nothing there."""
    kind = fs_type(runner.root)
    print(f"working in {runner.root} ({kind})", file=sys.stderr)
    if kind.startswith("tmpfs"):
        print("warning: tmpfs makes fsync free; use --dir on a disk", file=sys.stderr)


def wait_greeting(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None,
                  log: Path | None = None) -> None:
    """Until the server on `port` answers 220, or fail saying why."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise HarnessError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                s.settimeout(5)
                line = s.recv(512)
                if line.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                    return
                last = HarnessError(f"greeting {line!r}")
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise HarnessError(f"no 220 on port {port} within {timeout:g} s ({last})\n{tail}")


def tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds used by these processes (a server's tree) and the children they have
    reaped: a Postfix smtpd or cleanup that exited counts in its master's cutime."""
    jiffies = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        jiffies += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return jiffies / os.sysconf("SC_CLK_TCK")


def drain(server: Server, timeout: float, poll: float = 0.01) -> int:
    """Wait until `server` has passed on every message it accepted; 0, or how many were
    left when `timeout` ran out. Polled every `poll` s (the end of an end-to-end run)."""
    deadline = time.monotonic() + timeout
    left = server.pending() or 0
    while left and time.monotonic() < deadline:
        time.sleep(poll)
        left = server.pending() or 0
    return left


# --------------------------------------------------------------------------- servers


class Runner:
    """Owns the temporary directory and every process; `cleanup()` undoes it all."""

    def __init__(self, base: Path | None, keep: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-bench-", dir=base))
        self.root.chmod(0o755)  # Postfix's unprivileged daemons must reach their queue
        self.keep = keep
        self.procs: list[subprocess.Popen[bytes]] = []
        self.servers: list[Server] = []

    def spawn(self, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop_proc(self, proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        # Whatever is left in its session (workers of a crashed parent) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def cleanup(self) -> None:
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        for proc in self.procs:
            with contextlib.suppress(Exception):
                self.stop_proc(proc, grace=5.0)
        # Anything still below us (a daemon that escaped its session) is killed.
        for pid in descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        reap()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)


class Server(abc.ABC):
    """One server under test; subclasses start it in `start()`."""

    name = ""
    label = ""
    durable = ""
    port = 0
    note = ""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.dir = runner.root / self.name
        n = 1
        while self.dir.exists():  # the same server again (the idle test): a fresh directory
            n += 1
            self.dir = runner.root / f"{self.name}.{n}"
        self.dir.mkdir()

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def pids(self) -> list[int]: ...

    def settle(self, timeout: float) -> str | None:
        """Wait for background work a cell left behind (relaying, delivery)."""
        return None

    def pending(self) -> int | None:
        """Messages accepted and not yet relayed or delivered, for a server that passes
        mail on (end to end: the run lasts until this is 0); None for one that does not."""
        return None

    def healthy(self) -> bool:
        try:
            wait_greeting(self.port, 3)
        except HarnessError:
            return False
        return True

    def stored(self) -> int | None:
        """Messages the server says it took (queued, written, relayed), if it can say."""
        return None

    def extra(self) -> str:
        return ""


class SinkServer(Server):
    """`smtp-sink -c 127.0.0.1:PORT 1000`: accepts and discards (`lmtp`: speaks LMTP,
    `-L`, as a mail store such as Dovecot would)."""

    def __init__(self, runner: Runner, name: str = "smtp-sink", lmtp: bool = False) -> None:
        self.name = name
        self.lmtp = lmtp
        self.label = "smtp-sink (load ceiling)"
        self.durable = "no"
        super().__init__(runner)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "sink.out"

    def start(self) -> None:
        self.port = free_port()
        cmd = [SMTP_SINK]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]  # it refuses to run as root
        cmd += ["-L"] if self.lmtp else []
        cmd += ["-c", f"{HOST}:{self.port}", "1000"]
        self.proc = self.runner.spawn(cmd, self.log)
        wait_greeting(self.port, 10, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            self.runner.stop_proc(self.proc)
            self.proc = None

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def stored(self) -> int | None:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return None
        i = text.rfind("mesg=")
        if i == -1:
            return 0
        digits = ""
        for ch in text[i + 5:]:
            if not ch.isdigit():
                break
            digits += ch
        return int(digits or 0)


class BlackHole:
    """A listening socket that never accepts: a relay that never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(4096)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


class MailgateServer(Server):
    """`python -m mailgate serve --config FILE` from this repository."""

    def __init__(self, runner: Runner, workers: int, mode: str, log_level: str,
                 src: tuple[str, Path] | None = None, message_size: str | None = None
                 ) -> None:
        """`message_size`: `[limits] message_size` (the default when None)."""
        self.workers = workers
        self.message_size = message_size
        self.mode = mode  # queue | maildir | lmtp | relay | stuck | dkim | dkim2
        self.name = f"mailgate-w{workers}" + ("" if mode == "queue" else f"-{mode}")
        what = {"queue": "queue only", "maildir": "+ Maildir delivery",
                "lmtp": "+ LMTP to smtp-sink -L",
                "relay": "+ relay to smtp-sink",
                "stuck": f"+ relay to smtp-sink, {STUCK_BACKLOG:,} held for a dead "
                         "destination",
                "dkim": "queue only, DKIM-signed: RSA 2048",
                "dkim2": "queue only, DKIM-signed twice: RSA 2048 + Ed25519"}[mode]
        self.label = f"mailgate workers={workers} ({what})"
        self.src = REPO / "src"
        if src is not None:  # another tree of mailgate, to compare (--src NAME=PATH)
            self.name += f"@{src[0]}"
            self.label += f" [{src[0]}]"
            self.src = src[1]
        self.durable = "yes (SQLite WAL, synchronous=FULL, group commit)"
        self.log_level = log_level
        super().__init__(runner)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "mailgate.log"
        self.db = self.dir / "data" / "queue.db"
        self.hole: BlackHole | None = None
        self.sink: SinkServer | None = None

    def rcpt(self) -> str:
        return LOCAL_RCPT if self.mode in ("maildir", "lmtp") else REMOTE_RCPT

    def start(self) -> None:
        self.port = free_port()
        if self.mode in ("relay", "stuck", "lmtp"):
            self.sink = SinkServer(self.runner, name=f"{self.name}-sink",
                                   lmtp=self.mode == "lmtp")
            self.sink.start()
            relay_port = self.sink.port
        if self.mode != "relay":
            self.hole = BlackHole()
        if self.mode not in ("relay", "stuck"):
            assert self.hole is not None
            relay_port = self.hole.port
        # stuck: one destination routed to a socket that never answers, its backlog
        # queued before the cells (_hold_backlog); the mail measured goes to smtp-sink.
        routes = (f'\n[routes]\n"{STUCK_DOMAIN}" = "smtp:[{HOST}]:{self.hole.port}"\n'
                  if self.mode == "stuck" and self.hole is not None else "")
        if self.mode == "lmtp" and self.sink is not None:  # the local domain, to the store
            routes = f'\n[routes]\n"local.bench.test" = "lmtp:[{HOST}]:{self.sink.port}"\n'
        config = self.dir / "mailgate.toml"
        config.write_text(f"""\
hostname = "mailgate.bench.test"
data_dir = "data"

[[listen]]
role = "mx"
address = "{HOST}:{self.port}"

[domains]
local = ["local.bench.test"]
catch_all = true  # the maildir mode writes to to@local.bench.test, no user of that name

[relay]
networks = ["127.0.0.0/8"]

[limits]
connections = 20000
connections_per_ip = 20000
{f'message_size = "{self.message_size}"' if self.message_size else ""}

[policy]
# No DNS on this machine's loopback benchmark (Postfix does none by default either).
sender_null_mx_check = false
recipient_null_mx_check = false

[delivery]
relayhost = "[{HOST}]:{relay_port}"
{routes}
[web]
address = ""

[server]
workers = {self.workers}

[log]
level = "{self.log_level}"

{self._dkim()}""")
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.src) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = self.runner.spawn(
            [sys.executable, "-m", "mailgate", "serve", "--config", str(config)],
            self.log, env=env, cwd=self.dir,
        )
        wait_greeting(self.port, 60, self.proc, self.log)
        if self.workers > 1:  # every worker up, not just the first to greet
            deadline = time.monotonic() + 30
            while len(self.pids()) < self.workers + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
        if self.mode == "stuck":
            self._hold_backlog()

    def _hold_backlog(self) -> None:
        """Queue STUCK_BACKLOG messages for the dead destination; wait until its
        connections are open and waiting (the destination full, the rest held)."""
        smtp_source(self.port, 1024, 20, STUCK_BACKLOG, f"held@{STUCK_DOMAIN}", False, 600)
        time.sleep(2.0)

    def _dkim(self) -> str:
        """The [dkim] tables of the dkim modes: keys for the sender's domain (smtp-source
        writes From: with the envelope sender), made by `mailgate dkim keygen`."""
        if not self.mode.startswith("dkim"):
            return ""
        algorithms = ["rsa-sha256"] + (["ed25519-sha256"] if self.mode == "dkim2" else [])
        domain = SENDER.rpartition("@")[2]
        tables = []
        for n, algorithm in enumerate(algorithms):
            key = self.dir / f"dkim{n}.key"
            subprocess.run([sys.executable, "-m", "mailgate", "dkim", "keygen", domain,
                            "--selector", f"s{n}", "--algorithm", algorithm, "--out",
                            str(key)], env={**os.environ, "PYTHONPATH": str(self.src)},
                           check=True, capture_output=True)
            tables.append(f'[[dkim."{domain}"]]\nselector = "s{n}"\nkey_file = "{key}"\n'
                          f'algorithm = "{algorithm}"\n')
        return "\n".join(tables)

    def stop(self) -> None:
        if self.hole is not None:  # pending outbound connections fail at once
            self.hole.close()
            self.hole = None
        if self.proc is not None:
            self.runner.stop_proc(self.proc, grace=40.0)
            self.proc = None
        if self.sink is not None:
            self.sink.stop()

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]

    def _query(self, sql: str) -> list[tuple[object, ...]]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)
        try:
            return list(conn.execute(sql))
        finally:
            conn.close()

    def pending(self) -> int | None:
        if self.mode == "queue":
            return None
        rows = self._query(  # the held backlog of `stuck` never drains: not counted
            "SELECT count(*) FROM recipients WHERE state IN ('queued', 'deferred') "
            f"AND domain != '{STUCK_DOMAIN}'")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def settle(self, timeout: float) -> str | None:
        if self.mode in ("queue", "dkim", "dkim2"):  # nothing is delivered: nothing to wait
            return None
        left = drain(self, timeout)
        return (f"{left} recipients still queued after {timeout:g} s" if left else "drained")

    def stored(self) -> int | None:
        rows = self._query("SELECT count(*) FROM messages")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def extra(self) -> str:
        rows = self._query("SELECT state, count(*) FROM recipients GROUP BY state")
        states = ", ".join(f"{s} {n}" for s, n in rows)
        relayed = ""
        if self.sink is not None:
            relayed = f"; smtp-sink received {self.sink.stored()}"
        return f"recipients by state: {states or 'none'}{relayed}"


class PostfixServer(Server):
    """A private Postfix instance relaying everything to a local smtp-sink."""

    name = "postfix"
    durable = "yes (queue files fsync'd)"

    def __init__(self, runner: Runner, sink: SinkServer | None = None,
                 main_cf: str = "", master_cf: str = "", lmtp: bool = False) -> None:
        """`sink`: relay to this running smtp-sink (left running at stop) instead of one
        of its own; `main_cf`: more main.cf lines (settings not written below);
        `master_cf`: more master.cf lines (services not listed below); `lmtp`: hand
        everything by LMTP (its lmtp client) to an smtp-sink -L of its own."""
        super().__init__(runner)
        self.lmtp = lmtp
        if lmtp:
            self.name = "postfix-lmtp"
            main_cf = "default_transport = lmtp\n" + main_cf
            master_cf = "lmtp      unix  -       -       n       -       -       lmtp\n" + master_cf
        self.label = f"Postfix {postfix_version()} " + (
            "(LMTP to smtp-sink -L)" if lmtp else "(relays to smtp-sink)")
        self.etc = self.dir / "etc"
        self.spool = self.dir / "spool"
        self.data = self.dir / "data"
        self.maillog = self.dir / "maillog"
        self.sink: SinkServer | None = sink
        self.own_sink = sink is None
        self.main_cf = main_cf
        self.master_cf = master_cf
        self.started = False

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([POSTFIX, "-c", str(self.etc), *args], capture_output=True,
                                text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        if check and result.returncode != 0:
            tail = self.maillog.read_text(errors="replace")[-3000:] if self.maillog.exists() \
                else ""
            raise HarnessError(f"postfix {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}\n{tail}")
        return result

    def start(self) -> None:
        if self.own_sink:
            self.sink = SinkServer(self.runner, name=f"{self.name}-sink", lmtp=self.lmtp)
            self.sink.start()
        assert self.sink is not None
        self.port = free_port()
        for d in (self.etc, self.spool, self.data):
            d.mkdir(exist_ok=True)
        owner = _postconf_default("mail_owner") or "postfix"
        group = _postconf_default("setgid_group") or "postdrop"
        pw = pwd.getpwnam(owner)
        os.chown(self.data, pw.pw_uid, pw.pw_gid)
        (self.etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {self.data}
mail_owner = {owner}
setgid_group = {group}
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [{HOST}]:{self.sink.port}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
maillog_file_prefixes = {self.dir}
maillog_file = {self.maillog}
smtpd_tls_security_level = none
smtp_tls_security_level = none
biff = no
# Defaults, written out: 100 processes per service, fsync'd queue files.
default_process_limit = 100
{self.main_cf}""")
        # No chroot (the Debian default master.cf chroots); everything else as shipped.
        (self.etc / "master.cf").write_text(f"""\
{HOST}:{self.port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
{self.master_cf}""")
        self._postfix("check")
        self._postfix("start")
        self.started = True
        wait_greeting(self.port, 30, None, self.maillog)

    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if self.started:
            self.started = False
            pids = self.pids()
            self._postfix("stop", check=False)
            if not wait_gone(pids, 20):
                self._postfix("abort", check=False)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                wait_gone(pids, 5)
        if self.sink is not None and self.own_sink:
            self.sink.stop()

    def pids(self) -> list[int]:
        master = self.master_pid()
        if master is None or not alive(master):
            return []
        return [master, *descendants(master)]

    def queued(self) -> int:
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.spool / sub):
                n += len(files)
        return n

    def pending(self) -> int | None:
        return self.queued()

    def settle(self, timeout: float) -> str | None:
        left = drain(self, timeout)
        return f"{left} messages still queued after {timeout:g} s" if left else "drained"

    def stored(self) -> int | None:
        """Messages relayed to the sink (status=sent in its log)."""
        try:
            with self.maillog.open(errors="replace") as f:
                return sum(1 for line in f if "status=sent" in line)
        except OSError:
            return None

    def extra(self) -> str:
        return f"still queued {self.queued()}"


class ScriptServer(Server):
    """A peer this script runs in a process of its own (`serve_args`: its hidden
    command-line option and arguments), logging to `self.log`."""

    log: Path

    def __init__(self, runner: Runner) -> None:
        super().__init__(runner)
        self.proc: subprocess.Popen[bytes] | None = None

    @abc.abstractmethod
    def serve_args(self) -> list[str]: ...

    def start(self) -> None:
        self.port = free_port()
        cmd = [sys.executable, str(Path(__file__).resolve()), *self.serve_args()]
        self.proc = self.runner.spawn(cmd, self.log)
        wait_greeting(self.port, 30, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            self.runner.stop_proc(self.proc)
            self.proc = None

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []


class AiosmtpdServer(ScriptServer):
    """aiosmtpd with a handler that writes each message to a file (fsync or not)."""

    def __init__(self, runner: Runner, fsync: bool) -> None:
        self.fsync = fsync
        self.name = "aiosmtpd-fsync" if fsync else "aiosmtpd-nofsync"
        self.label = f"aiosmtpd {aiosmtpd_version()} " + (
            "(file + fsync before 250)" if fsync else "(file, no fsync)")
        self.durable = "yes (fsync per message)" if fsync else "no"
        super().__init__(runner)
        self.log = self.dir / "aiosmtpd.log"
        self.spool = self.dir / "messages"
        self.spool.mkdir()

    def serve_args(self) -> list[str]:
        return ["--serve-aiosmtpd", str(self.port), str(self.spool),
                "fsync" if self.fsync else "nofsync"]

    def stored(self) -> int | None:
        return sum(1 for _ in os.scandir(self.spool))


class FloorServer(ScriptServer):
    """The least a Python SMTP server can do here: uvloop, a protocol that answers every
    command, reads DATA to its end and stores nothing. Its rate is the ceiling of any
    server written in Python on this machine with this load generator; its CPU a message
    is what the dialogue alone costs."""

    name = "python-floor"
    label = "Python floor (uvloop, answers, stores nothing)"
    durable = "no (nothing stored)"

    def __init__(self, runner: Runner) -> None:
        super().__init__(runner)
        self.log = self.dir / "floor.log"
        self.count = self.dir / "count"

    def serve_args(self) -> list[str]:
        return ["--serve-floor", str(self.port), str(self.count)]

    def stored(self) -> int | None:
        time.sleep(0.3)  # the count is written every 0.2 s
        try:
            return int(self.count.read_text() or 0)
        except (OSError, ValueError):
            return None


def _postconf_default(name: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["postconf", "-dh", name], capture_output=True, text=True,
                             timeout=30, check=True).stdout.strip()
        return out or None
    return None


def postfix_version() -> str:
    return _postconf_default("mail_version") or "?"


def aiosmtpd_version() -> str:
    try:
        from importlib.metadata import version

        return version("aiosmtpd")
    except Exception:
        return "?"


# --------------------------------------------------------------------------- aiosmtpd


def serve_aiosmtpd(port: int, spool: Path, fsync: bool) -> None:
    """The aiosmtpd peer (run in its own process by the benchmark)."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    def write(path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    class Handler:
        def __init__(self) -> None:
            self.count = 0

        async def handle_DATA(self, server: SMTP, session: Session,
                              envelope: Envelope) -> str:
            self.count += 1
            path = spool / f"{self.count:09d}.eml"
            data = envelope.original_content or b""
            if fsync:  # off the event loop, so other sessions go on meanwhile
                await asyncio.to_thread(write, path, data)
            else:
                write(path, data)
            return "250 2.0.0 Ok: queued"

    handler = Handler()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.bench.test"), HOST, port, backlog=1024,
        reuse_address=True))
    serve_until_signal(loop, server)


def serve_until_signal(loop: asyncio.AbstractEventLoop, server: asyncio.Server,
                       at_end: Callable[[], object] | None = None) -> None:
    """A peer's process: run `loop` until SIGTERM or SIGINT, then close `server`, call
    `at_end` and close the loop."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()
        if at_end is not None:
            at_end()
        loop.close()


def serve_floor(port: int, count_file: Path) -> None:
    """The python-floor peer (its own process): replies by the command's first four
    letters, DATA read up to "<CRLF>.<CRLF>" and dropped; the count of messages is
    written to `count_file` at most every 0.2 s, for the report's check."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    messages = [0]
    replies = {b"EHLO": b"250-floor.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                        b"250 SIZE 104857600\r\n",
               b"HELO": b"250 floor.bench.test\r\n", b"DATA": b"354 End with .\r\n",
               b"QUIT": b"221 2.0.0 Bye\r\n"}

    class Floor(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is not one
            self.buf = b""
            self.in_data = False
            self.transport.write(b"220 floor.bench.test ESMTP\r\n")

        def data_received(self, data: bytes) -> None:
            buf, out = self.buf + data, []
            while True:
                if self.in_data:
                    end = buf.find(b"\r\n.\r\n")
                    if end < 0:
                        buf = buf[-4:]
                        break
                    buf, self.in_data = buf[end + 5:], False
                    messages[0] += 1
                    out.append(b"250 2.0.0 Ok: dropped\r\n")
                    continue
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                verb, buf = buf[:4].upper(), buf[end + 2:]
                out.append(replies.get(verb, b"250 2.0.0 Ok\r\n"))
                if verb == b"DATA":
                    buf, self.in_data = b"\r\n" + buf, True
                elif verb == b"QUIT":
                    self.transport.write(b"".join(out))
                    self.transport.close()
                    return
            self.buf = buf
            if out:
                self.transport.write(b"".join(out))

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(Floor, HOST, port, backlog=1024,
                                                        reuse_address=True))

    def write_count() -> None:
        count_file.write_text(str(messages[0]))
        loop.call_later(0.2, write_count)

    write_count()
    serve_until_signal(loop, server, lambda: count_file.write_text(str(messages[0])))


# --------------------------------------------------------------------------- other load


def _kernel_thread(pid: int, ppid: int) -> bool:
    return pid == 2 or ppid == 2


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, CPU jiffies of it and its reaped children)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # after the comm: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
        jiffies = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        table[int(entry)] = (int(fields[1]), jiffies)
    return table


def _foreign(table: dict[int, tuple[int, int]], ours: set[int]) -> int:
    return sum(j for pid, (ppid, j) in table.items()
               if pid not in ours and not _kernel_thread(pid, ppid))


def _ours(table: dict[int, tuple[int, int]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    me = os.getpid()
    out = {me}
    todo = [me]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


class ForeignLoad:
    """CPU used by processes that are not this benchmark's (other users of a shared
    machine), in CPUs, between `start()` and `stop()`; kernel threads are not counted."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self._table: dict[int, tuple[int, int]] = {}

    def start(self) -> None:
        self._table = _proc_table()
        self._t0 = time.monotonic()

    def stop(self) -> float:
        table = _proc_table()
        ours = _ours(table) | _ours(self._table)
        used = _foreign(table, ours) - _foreign(self._table, ours)
        wall = max(time.monotonic() - self._t0, 1e-3)
        return max(0.0, used / os.sysconf("SC_CLK_TCK") / wall)


def wait_quiet(limit: float, timeout: float) -> float:
    """Wait (at most `timeout` s) until other programs use less than `limit` CPUs over a
    second; return the last such figure."""
    deadline = time.monotonic() + timeout
    while True:
        probe = ForeignLoad()
        probe.start()
        time.sleep(1.0)
        load = probe.stop()
        if load < limit or time.monotonic() >= deadline:
            return load


# --------------------------------------------------------------------------- load


@dataclass
class Cell:
    size: int
    concurrency: int
    messages: int = 0
    seconds: float = 0.0
    error: str | None = None
    foreign: float = 0.0  # CPUs other programs on this machine used during the run
    # A server that passes mail on: seconds from the last 250 until its queue was empty
    # (None: it keeps what it accepts).
    drain: float | None = None
    cpu: float | None = None  # CPU seconds of the server's process tree, start to drained

    @property
    def rate(self) -> float | None:
        """Messages accepted per second (smtp-source's run)."""
        if self.error is not None or self.seconds <= 0:
            return None
        return self.messages / self.seconds

    @property
    def e2e(self) -> float | None:
        """Messages accepted and passed on per second, until the queue was empty."""
        if self.error is not None or self.drain is None or self.seconds <= 0:
            return None
        return self.messages / (self.seconds + self.drain)

    @property
    def cpu_ms(self) -> float | None:
        """CPU milliseconds per message (accepted, and passed on when it relays)."""
        if self.error is not None or self.cpu is None or not self.messages:
            return None
        return 1000 * self.cpu / self.messages


def smtp_source(port: int, size: int, sessions: int, messages: int, rcpt: str, reuse: bool,
                timeout: float) -> float:
    """Run smtp-source once; return its wall time. Raises HarnessError on failure."""
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
           "-M", "client.bench.test", "-f", SENDER, "-t", rcpt]
    if reuse:
        cmd.append("-d")
    cmd.append(f"{HOST}:{port}")
    started = time.perf_counter()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"smtp-source did not finish within {timeout:g} s") from exc
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise HarnessError(f"smtp-source failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-500:]}")
    return elapsed


def measure_cell(server: Server, rcpt: str, size: int, sessions: int, seconds: float,
                 reuse: bool, known_rate: float | None = None,
                 drain_timeout: float = 180.0) -> tuple[Cell, int]:
    """A probe run (the warm-up) sizes the measured run to last about `seconds`, unless
    an earlier round measured the rate. Returns the cell and the messages sent in all.

    A server that passes mail on (`pending()` is not None) is measured end to end: the
    run lasts until its queue is empty again (the probe's backlog is drained first), and
    the CPU of its whole process tree is taken over the same span."""
    cell = Cell(size, sessions)
    sent = 0
    relays = server.pending() is not None

    def drained() -> None:
        if relays and drain(server, drain_timeout):
            raise HarnessError(f"the queue was not empty {drain_timeout:g} s after the run")

    try:
        probe = max(4 * sessions, 40)
        while True:
            elapsed = smtp_source(server.port, size, sessions, probe, rcpt, reuse, 120)
            sent += probe
            drained()
            if known_rate or elapsed >= min(1.0, seconds / 4) or probe >= 1_000_000:
                break
            probe = min(1_000_000, probe * max(2, math.ceil(1.0 / max(elapsed, 0.01))))
        rate = known_rate or probe / elapsed
        for _ in range(3):
            messages = max(2 * sessions, math.ceil(rate * seconds / sessions) * sessions)
            other = ForeignLoad()
            other.start()
            cpu = tree_cpu(server.pids())
            start = time.perf_counter()
            cell.seconds = smtp_source(server.port, size, sessions, messages, rcpt, reuse,
                                       max(120.0, 10 * seconds))
            drained()
            if relays:
                cell.drain = max(0.0, time.perf_counter() - start - cell.seconds)
            cell.cpu = tree_cpu(server.pids()) - cpu
            cell.foreign = other.stop()
            cell.messages = messages
            sent += messages
            if cell.seconds >= seconds / 2:
                break
            # The probe met a slow moment: size again from this run (a warm-up too).
            rate = messages / cell.seconds
    except HarnessError as exc:
        cell.error = str(exc)
    return cell, sent


# --------------------------------------------------------------------------- idle memory


@dataclass
class Idle:
    server: str
    label: str
    wanted: int
    connected: int = 0
    greeted: int = 0
    rss_base: int = 0
    pss_base: int = 0
    rss: int = 0
    pss: int = 0
    processes: int = 0
    note: str = ""

    @property
    def rss_per(self) -> float | None:
        return (self.rss - self.rss_base) / self.greeted if self.greeted else None

    @property
    def pss_per(self) -> float | None:
        return (self.pss - self.pss_base) / self.greeted if self.greeted else None


async def hold_idle(port: int, n: int, deadline: float,
                    measure: Callable[[int, int], None]) -> tuple[int, int]:
    """Open `n` connections, read each one's 220, call `measure(connected, greeted)`
    while they are all still open, then close them. Returns (connected, greeted)."""
    gate = asyncio.Semaphore(256)  # connects in flight at once
    writers: list[asyncio.StreamWriter] = []
    connected = greeted = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline

    async def one() -> None:
        nonlocal connected, greeted
        async with gate:
            left = end - loop.time()
            if left <= 0:
                return
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, port, limit=4096), min(left, 10.0))
            except (OSError, TimeoutError):
                return
            writers.append(writer)
            connected += 1
        left = end - loop.time()
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            line = await asyncio.wait_for(reader.readline(), max(left, 0.01))
            if line.startswith(b"220"):
                greeted += 1

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    try:
        await asyncio.wait(tasks, timeout=deadline + 1)
        await asyncio.sleep(2.0)  # let the server settle (timers, buffers, allocator)
        measure(connected, greeted)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in writers:
            w.transport.abort()
    return connected, greeted


def measure_idle(server: Server, n: int, deadline: float) -> Idle:
    result = Idle(server.name, server.label, n)
    wait_greeting(server.port, 10)  # one full session first: lazy imports, caches
    time.sleep(1.0)
    result.rss_base, result.pss_base = memory(server.pids())

    def measure(connected: int, greeted: int) -> None:
        pids = server.pids()
        result.processes = len(pids)
        result.rss, result.pss = memory(pids)

    result.connected, result.greeted = asyncio.run(hold_idle(server.port, n, deadline, measure))
    return result


# --------------------------------------------------------------------------- report


def kib(n: float | None) -> str:
    return "–" if n is None else f"{n / 1024:,.1f} KiB"


def mib(n: int) -> str:
    return f"{n / 1048576:,.1f} MiB"


def size_label(size: int) -> str:
    return f"{size // 1024} KiB"


_COLUMNS = [(s, c) for s in SIZES for c in CONCURRENCY]  # --sizes / --concurrency


def cell_columns() -> list[tuple[int, int]]:
    return list(_COLUMNS)


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


@dataclass
class Row:
    server: str
    label: str
    durable: str
    runs: dict[tuple[int, int], list[Cell]] = field(default_factory=dict)
    sent: int = 0
    stored: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def cells(self) -> dict[tuple[int, int], Cell]:
        """The best round of each cell (other programs only ever slow a run down)."""
        best: dict[tuple[int, int], Cell] = {}
        for key, runs in self.runs.items():
            ok = [c for c in runs if c.rate is not None]
            # End to end where the server passes mail on: that is what the row is about.
            best[key] = (max(ok, key=lambda c: (c.e2e or 0.0, c.rate or 0.0)) if ok
                         else runs[-1])
        return best

    @property
    def relays(self) -> bool:
        return any(c.drain is not None for runs in self.runs.values() for c in runs)


def throughput_table(rows: Sequence[Row]) -> list[str]:
    cols = cell_columns()
    head = "| server | durable | " + " | ".join(
        f"{size_label(s)} ×{c}" for s, c in cols) + " |"
    lines = [head, "|---|---|" + "---:|" * len(cols)]
    for row in rows:
        vals = []
        for key in cols:
            cell = row.cells.get(key)
            rate = cell.rate if cell else None
            busy = "*" if cell and cell.foreign > BUSY else ""
            vals.append("error" if cell and cell.error else
                        "–" if rate is None else f"{rate:,.0f}{busy}")
        durable = row.durable.split(" ")[0]
        lines.append(f"| {row.label} | {durable} | " + " | ".join(vals) + " |")
    return lines


def rounds_table(rows: Sequence[Row]) -> list[str]:
    """Every run of every cell: msgs/s (end to end for the relaying servers), and the CPU
    other programs took meanwhile."""
    cols = cell_columns()
    lines = ["| server | " + " | ".join(f"{size_label(s)} ×{c}" for s, c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for row in rows:
        vals = []
        for key in cols:
            runs = row.runs.get(key, [])
            vals.append(", ".join("error" if c.rate is None else
                                  f"{c.e2e or c.rate:,.0f} ({c.foreign:.1f})" for c in runs)
                        or "–")
        lines.append(f"| {row.label} | " + " | ".join(vals) + " |")
    return lines


def round_ratio_table(rows: Sequence[Row], base: Row | None) -> list[str]:
    """Each run's figure (end to end for the relaying servers) over Postfix's in the same
    round, round by round. On a machine whose speed drifts, the rounds side by side say
    more than the best of each, which may come from different rounds."""
    if base is None:
        return ["(no Postfix row: ratios unavailable)"]
    cols = cell_columns()
    lines = ["| server | " + " | ".join(f"{size_label(s)} ×{c}" for s, c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for row in rows:
        if row is base:
            continue
        vals = []
        for key in cols:
            pairs = zip(row.runs.get(key, []), base.runs.get(key, []), strict=False)
            vals.append(", ".join(
                f"{(c.e2e or c.rate) / (b.e2e or b.rate):.2f}x" if c.rate and b.rate else "–"
                for c, b in pairs) or "–")
        lines.append(f"| {row.label} | " + " | ".join(vals) + " |")
    return lines


def ratio_table(rows: Sequence[Row], base: Row | None) -> list[str]:
    cols = cell_columns()
    lines = ["| server | " + " | ".join(f"{size_label(s)} ×{c}" for s, c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for row in rows:
        vals = []
        for key in cols:
            mine = row.cells.get(key)
            theirs = base.cells.get(key) if base else None
            a = mine.rate if mine else None
            b = theirs.rate if theirs else None
            vals.append("–" if a is None or not b else f"{a / b:.2f}x")
        lines.append(f"| {row.label} | " + " | ".join(vals) + " |")
    return lines


def e2e_tables(rows: Sequence[Row], base: Row | None) -> list[str]:
    """The headline: messages per second accepted and passed on (queue empty again),
    for the servers that pass mail on; then the ratio to Postfix's same figure."""
    cols = cell_columns()
    head = "| server | " + " | ".join(f"{size_label(s)} ×{c}" for s, c in cols) + " |"
    rule = "|---|" + "---:|" * len(cols)
    relaying = [r for r in rows if r.relays]
    rates, ratios = [head, rule], [head, rule]
    for row in relaying:
        vals, rel = [], []
        for key in cols:
            cell = row.cells.get(key)
            e2e = cell.e2e if cell else None
            busy = "*" if cell and cell.foreign > BUSY else ""
            vals.append("error" if cell and cell.error else
                        "–" if e2e is None else f"{e2e:,.0f}{busy}")
            theirs = base.cells.get(key) if base else None
            b = theirs.e2e if theirs else None
            rel.append("–" if e2e is None or not b else f"{e2e / b:.2f}x")
        rates.append(f"| {row.label} | " + " | ".join(vals) + " |")
        ratios.append(f"| {row.label} | " + " | ".join(rel) + " |")
    return [*rates, "", "Ratio to Postfix, end to end, in the same run:", "", *ratios]


def cpu_table(rows: Sequence[Row]) -> list[str]:
    """CPU milliseconds per message of each server's whole process tree: accepted and
    passed on for the relaying servers, accepted only for the others."""
    cols = cell_columns()
    lines = ["| server | what | " + " | ".join(f"{size_label(s)} ×{c}" for s, c in cols)
             + " |", "|---|---|" + "---:|" * len(cols)]
    for row in rows:
        vals = []
        for key in cols:
            cell = row.cells.get(key)
            ms = cell.cpu_ms if cell else None
            vals.append("–" if ms is None else f"{ms:.2f}")
        what = "accept + relay" if row.relays else "accept"
        lines.append(f"| {row.label} | {what} | " + " | ".join(vals) + " |")
    return lines


# Targets from issue 17: end to end, side by side with Postfix.
TARGETS_E2E = {(2048, 20): 2.0, (2048, 1): 1.5, (102400, 20): 2.0}
TARGET_CPU_MS = 0.6


def targets_e2e(rows: Sequence[Row], base: Row | None) -> list[str]:
    if base is None:
        return ["(no Postfix row: ratios unavailable)"]
    out = []
    for row in rows:
        if not (row.server.startswith("mailgate") and row.relays):
            continue
        for key, goal in TARGETS_E2E.items():
            mine, theirs = row.cells.get(key), base.cells.get(key)
            a = mine.e2e if mine else None
            b = theirs.e2e if theirs else None
            label = f"{size_label(key[0])} ×{key[1]}"
            if a is None or not b:
                out.append(f"- {row.label}: {label}: no figure")
                continue
            ratio = f"{a / b:.2f}"
            if float(ratio) >= goal > a / b:  # 1.996 is no "2.00x ... MISSED"
                ratio = f"{a / b:.3f}"
            out.append(f"- {row.label}: {label} end to end = {ratio}x Postfix (target ≥ "
                       f"{goal}x): {'met' if a / b >= goal else 'MISSED'}")
        worst = max((c.cpu_ms for c in row.cells.values() if c.cpu_ms is not None),
                    default=None)
        if worst is not None:
            out.append(f"- {row.label}: CPU per message, worst cell {worst:.2f} ms (target "
                       f"≤ {TARGET_CPU_MS} ms): {'met' if worst <= TARGET_CPU_MS else 'MISSED'}")
    return out


def idle_table(results: Sequence[Idle]) -> list[str]:
    lines = ["| server | greeted / opened | processes | RSS idle → loaded | RSS per conn "
             "| PSS idle → loaded | PSS per conn |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r.label} | {r.greeted:,} / {r.wanted:,} | {r.processes} | "
            f"{mib(r.rss_base)} → {mib(r.rss)} | {kib(r.rss_per)} | "
            f"{mib(r.pss_base)} → {mib(r.pss)} | {kib(r.pss_per)} |")
    return lines


def targets(rows: Sequence[Row], idle: Sequence[Idle], base: Row | None) -> list[str]:
    out: list[str] = []
    if base is None:
        return ["(no Postfix row: ratios unavailable)"]

    def ratio(row: Row, key: tuple[int, int]) -> float | None:
        a, b = row.cells.get(key), base.cells.get(key)
        if a is None or b is None or a.rate is None or not b.rate:
            return None
        return a.rate / b.rate

    for row in rows:
        if not row.server.startswith("mailgate") or "-" in row.server.removeprefix("mailgate-"):
            continue  # the queue-only rows are what the targets are about
        r = ratio(row, (2048, 20))
        ok = r is not None and r >= TARGET_2K_20
        out.append(f"- {row.label}: 2 KiB ×20 = {r:.2f}x Postfix (target ≥ {TARGET_2K_20}x): "
                   f"{'met' if ok else 'MISSED'}" if r is not None else
                   f"- {row.label}: 2 KiB ×20: no figure")
        for size, c in cell_columns():
            if size != 102400:
                continue
            r = ratio(row, (size, c))
            if r is not None:
                ok = r >= TARGET_100K
                out.append(f"- {row.label}: 100 KiB ×{c} = {r:.2f}x Postfix "
                           f"(target ≥ {TARGET_100K}x): {'met' if ok else 'MISSED'}")
    for m in idle:
        if m.server.startswith("mailgate") and m.pss_per is not None:
            ok = m.greeted == m.wanted and m.pss_per < TARGET_IDLE_BYTES
            out.append(f"- {m.label}: {m.greeted:,} of {m.wanted:,} idle connections greeted, "
                       f"{kib(m.pss_per)} PSS ({kib(m.rss_per)} RSS) each (target: all, "
                       f"< 8 KiB): {'met' if ok else 'MISSED'}")
    return out


def machine() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return [f"- {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}",
            f"- Python {platform.python_version()}, uvloop "
            f"{'installed' if importlib.util.find_spec('uvloop') else 'absent'}, "
            f"Postfix {postfix_version()}, aiosmtpd {aiosmtpd_version()}"]


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, f"{parts[2]} on {parts[0]}"
    return kind


# --------------------------------------------------------------------------- main


SERVERS = ("smtp-sink", "postfix", "aiosmtpd-fsync", "aiosmtpd-nofsync", "mailgate-w1-relay",
           "mailgate-w2-relay", "mailgate-w1", "mailgate-w2", "mailgate-w2-maildir")
# python-floor (not in the default set): the ceiling of a Python server here.
# mailgate-wN-lmtp and postfix-lmtp (not in the default set): mail for a local domain
# handed by LMTP to an smtp-sink -L, as to a mail store (Dovecot).
# mailgate-wN-stuck (not in the default set): as -relay, with STUCK_BACKLOG messages
# held for STUCK_DOMAIN, routed to a socket that never answers (a full destination the
# claims leave out), queued before the cells.
STUCK_DOMAIN = "stuck.bench.test"
STUCK_BACKLOG = 20_000
IDLE_SERVERS = ("mailgate-w1", "mailgate-w2", "aiosmtpd-fsync", "postfix")


def make_server(runner: Runner, name: str, log_level: str,
                sources: dict[str, Path] | None = None) -> Server:
    if name == "smtp-sink":
        return SinkServer(runner)
    if name in ("postfix", "postfix-lmtp"):
        return PostfixServer(runner, lmtp=name == "postfix-lmtp")
    if name.startswith("aiosmtpd-"):
        return AiosmtpdServer(runner, fsync=name == "aiosmtpd-fsync")
    if name == "python-floor":
        return FloorServer(runner)
    if name.startswith("mailgate-w"):
        rest, _, tree = name.removeprefix("mailgate-w").partition("@")
        workers, _, mode = rest.partition("-")
        src = None
        if tree:
            if tree not in (sources or {}):
                raise HarnessError(f"{name}: no --src {tree}=PATH given")
            src = (tree, (sources or {})[tree])
        return MailgateServer(runner, int(workers), mode or "queue", log_level, src)
    raise HarnessError(f"unknown server {name!r}; known: {', '.join(SERVERS)}")


@contextlib.contextmanager
def running(runner: Runner, server: Server) -> Iterator[Server]:
    runner.servers.append(server)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        runner.servers.remove(server)


def bench_throughput(runner: Runner, names: Sequence[str], args: argparse.Namespace
                     ) -> list[Row]:
    """All servers run at once; each cell is measured for every server in turn, so a
    cell's figures are minutes apart at most, and `--rounds` repeats the whole set."""
    rows: dict[str, Row] = {}
    live: list[Server] = []
    for name in names:
        server = make_server(runner, name, args.log_level, args.sources)
        rows[name] = Row(name, server.label, server.durable)
        runner.servers.append(server)
        try:
            server.start()
            live.append(server)
        except HarnessError as exc:
            rows[name].notes.append(f"could not run: {exc}")
            print(f"{server.label}: could not run: {exc}", file=sys.stderr, flush=True)
            server.stop()
            runner.servers.remove(server)
    for rnd in range(args.rounds):
        for size, conc in cell_columns():
            print(f"\n== round {rnd + 1}/{args.rounds}: {size_label(size)} ×{conc}",
                  file=sys.stderr, flush=True)
            for server in live:
                row = rows[server.name]
                if not server.healthy():
                    # On a shared machine another program may stop our servers (a broad
                    # pkill): start it again and say so.
                    row.notes.append(f"restarted before {size_label(size)} ×{conc} (round "
                                     f"{rnd + 1}): it had stopped answering")
                    print(f"   {server.label}: not answering, restarting", file=sys.stderr)
                    server.stop()
                    try:
                        server.start()
                    except HarnessError as exc:
                        row.notes.append(f"could not restart: {exc}")
                        continue
                rcpt = server.rcpt() if isinstance(server, MailgateServer) else REMOTE_RCPT
                before = wait_quiet(args.quiet_limit, args.quiet_timeout)
                earlier = [c.rate for c in row.runs.get((size, conc), []) if c.rate]
                cell, sent = measure_cell(server, rcpt, size, conc, args.seconds, args.reuse,
                                          known_rate=earlier[-1] if earlier else None,
                                          drain_timeout=args.drain_timeout)
                row.runs.setdefault((size, conc), []).append(cell)
                row.sent += sent
                settled = server.settle(args.drain_timeout)
                e2e = (f", end to end {cell.e2e:,.0f} msgs/s (drained {cell.drain:.2f} s "
                       "later)" if cell.e2e and cell.drain is not None else "")
                cpu = f", {cell.cpu_ms:.2f} ms CPU/msg" if cell.cpu_ms is not None else ""
                shown = (f"{cell.rate:9,.0f} msgs/s accepted ({cell.messages} in "
                         f"{cell.seconds:.2f} s{e2e}{cpu}; other programs "
                         f"{cell.foreign:.2f} CPU, {before:.2f} before)"
                         if cell.rate else f"ERROR {cell.error}")
                print(f"   {server.label:52} {shown}" + (f"; {settled}" if settled else ""),
                      file=sys.stderr, flush=True)
                if cell.error:
                    row.notes.append(f"{size_label(size)} ×{conc}: {cell.error}")
                if settled and "still" in settled:
                    row.notes.append(f"after {size_label(size)} ×{conc}: {settled}")
    for server in live:
        row = rows[server.name]
        row.stored = server.stored()
        extra = server.extra()
        if extra:
            row.notes.append(extra)
    for server in reversed(live):
        server.stop()
        runner.servers.remove(server)
    return list(rows.values())


def bench_idle(runner: Runner, names: Sequence[str], args: argparse.Namespace) -> list[Idle]:
    results = []
    for name in names:
        server = make_server(runner, name, args.log_level, args.sources)
        print(f"\n== idle: {server.label}", file=sys.stderr, flush=True)
        deadline = 30.0 if name == "postfix" else args.idle_deadline
        try:
            with running(runner, server):
                r = measure_idle(server, args.idle, deadline)
        except HarnessError as exc:
            r = Idle(name, server.label, args.idle, note=f"could not run: {exc}")
        if name == "postfix":
            r.note = (f"Postfix greets at most default_process_limit = 100 clients at once "
                      f"(one smtpd process each); {r.greeted:,} greeted within {deadline:g} s")
        print(f"   {r.greeted:,}/{r.wanted:,} greeted; RSS {kib(r.rss_per)}, PSS "
              f"{kib(r.pss_per)} per connection", file=sys.stderr, flush=True)
        results.append(r)
    return results


def report(rows: Sequence[Row], idle: Sequence[Idle], args: argparse.Namespace,
           started: datetime.datetime, elapsed: float, root: Path) -> str:
    # Ratios are to Postfix relaying; in a run without it, to Postfix handing by LMTP.
    base = next((r for r in rows if r.server == "postfix"), None) or next(
        (r for r in rows if r.server == "postfix-lmtp"), None)
    mode = ("persistent connections (smtp-source -d)" if args.reuse else
            "one new connection per message (smtp-source default)")
    lines = [
        f"# Server benchmark, {started:%Y-%m-%d %H:%M}",
        "",
        "`python3 bench/server.py` " + " ".join(args.argv),
        "",
        *machine(),
        f"- data on {fs_type(root)} ({root.parent}); every server on 127.0.0.1",
        f"- load: smtp-source, {mode}; cells sized to ~{args.seconds:g} s after a probe "
        f"run; message sizes are smtp-source `-l` payloads (headers extra)",
        f"- run took {elapsed / 60:.1f} min",
        "- mailgate rows without a [tag]: this checkout's src/",
        *(f"- mailgate rows tagged [{tag}]: {path}" for tag, path in args.sources.items()),
        "",
        "## End to end: messages per second accepted and relayed, queue drained",
        "",
        "From smtp-source's first connection until the server's queue is empty again"
        " (every message passed on to its smtp-sink), for the servers that relay; the best"
        " round counts.",
        "",
        *e2e_tables(rows, base),
        "",
        "## CPU per message (the server's whole process tree, ms)",
        "",
        *cpu_table(rows),
        "",
        "## Diagnosis: messages per second accepted (smtp-source's run alone)",
        "",
        "For the relaying servers, the rate while accepting with relaying under way; the"
        " queue-only rows keep what they accept.",
        "",
        *throughput_table(rows),
        "",
        f"`*`: other programs on this (shared) machine used more than {BUSY} CPU during"
        " that run (see all runs below).",
        "",
        "Ratio to Postfix, accepted:",
        "",
        *ratio_table(rows, base),
        "",
        f"## All runs ({args.rounds} round{'s' if args.rounds != 1 else ''}; the best"
        " counts above), with the CPUs other programs used meanwhile",
        "",
        *rounds_table(rows),
        "",
        "Round by round, over Postfix in the same round:",
        "",
        *round_ratio_table(rows, base),
        "",
    ]
    if idle:
        lines += [f"## Memory: {args.idle:,} idle connections that got their 220", "",
                  *idle_table(idle), ""]
        lines += [f"- {r.label}: {r.note}" for r in idle if r.note]
        lines.append("")
    lines += ["## Targets (issue 17: end to end)", "", *targets_e2e(rows, base), "",
              "## Targets (issue 4: accepted, queue only)", "", *targets(rows, idle, base), "",
              "## Notes", ""]
    for row in rows:
        check = ""
        if row.stored is not None:
            check = f"sent {row.sent:,}, server reports {row.stored:,}"
        lines.append(f"- {row.label}: {check}" + "".join(f"; {n}" for n in row.notes))
    lines += [
        "",
        "Setup: mailgate `python -m mailgate serve --config FILE` with `[limits] connections`"
        " and `connections_per_ip` raised to 20000 (defaults 1000 and 50), DNS policy checks"
        " off (no DNS here), `[log] level` = " + f"`{args.log_level}`"
        + "; queue-only rows send to a non-local domain relayed for 127.0.0.0/8 with"
        " `relayhost` pointing at a socket that never answers, so messages stay queued."
        " Postfix: private instance (no chroot), default process limit 100, relayhost ="
        " a local smtp-sink; a cell's relaying finishes before the next cell starts."
        " aiosmtpd: stock asyncio loop; the fsync variant writes and fsyncs each message in"
        " a worker thread before the 250. Python floor: uvloop and a protocol that answers"
        " each command and drops the message (nothing parsed, checked, stored or logged).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated subset of: " + ", ".join(SERVERS))
    parser.add_argument("--idle-servers", default=",".join(IDLE_SERVERS),
                        help="servers for the idle-connection test ('' for none)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each cell")
    parser.add_argument("--sizes", type=_int_list, default=SIZES,
                        help="message sizes in bytes, comma-separated (2048,102400)")
    parser.add_argument("--concurrency", type=_int_list, default=CONCURRENCY,
                        help="concurrent sessions, comma-separated (1,20,100)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every cell this many times; the best run counts")
    parser.add_argument("--quiet-limit", type=float, default=0.2,
                        help="before each run, wait until other programs use less CPU "
                             "than this (in CPUs) ...")
    parser.add_argument("--quiet-timeout", type=float, default=20.0,
                        help="... but at most this many seconds")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections")
    parser.add_argument("--idle-deadline", type=float, default=90.0,
                        help="seconds to open and greet all idle connections")
    parser.add_argument("--drain-timeout", type=float, default=180.0,
                        help="seconds to wait for relaying/delivery between cells")
    parser.add_argument("--reuse", action="store_true",
                        help="keep connections open between messages (smtp-source -d)")
    parser.add_argument("--log-level", default="info", help="mailgate [log] level")
    parser.add_argument("--src", action="append", default=[], metavar="NAME=PATH",
                        help="another mailgate source tree (its src/ directory), measured "
                             "as servers named like mailgate-w1@NAME")
    add_run_arguments(parser, "server")
    parser.add_argument("--serve-aiosmtpd", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_aiosmtpd:
        port, spool, fsync = args.serve_aiosmtpd
        serve_aiosmtpd(int(port), Path(spool), fsync == "fsync")
        return 0
    if args.serve_floor:
        serve_floor(int(args.serve_floor[0]), Path(args.serve_floor[1]))
        return 0
    args.argv = sys.argv[1:]
    _COLUMNS[:] = [(s, c) for s in args.sizes for c in args.concurrency]
    args.sources = {}
    for spec in args.src:
        tree, _, path = spec.partition("=")
        if not tree or not path or not Path(path, "mailgate").is_dir():
            parser.error(f"--src {spec}: expected NAME=PATH, PATH holding the mailgate package")
        args.sources[tree] = Path(path).resolve()

    names = [n for n in args.servers.split(",") if n]
    idle_names = [n for n in args.idle_servers.split(",") if n]
    if os.geteuid() != 0 and any(n.startswith("postfix") for n in names + idle_names):
        print("not root: Postfix cannot run, skipping it (ratios need it)", file=sys.stderr)
        names = [n for n in names if not n.startswith("postfix")]
        idle_names = [n for n in idle_names if not n.startswith("postfix")]
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not Path(tool).exists():
            print(f"{tool} is missing: install the postfix package", file=sys.stderr)
            return 2

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.idle + 1000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    if hard < need:
        print(f"RLIMIT_NOFILE hard limit {hard} < {need}: fewer idle connections",
              file=sys.stderr)
        args.idle = max(0, hard - 1000)

    started, t0 = start_harness()
    runner = Runner(args.dir, args.keep)
    say_where(runner)

    def measure() -> str:
        rows = bench_throughput(runner, names, args)
        idle = bench_idle(runner, idle_names, args) if args.idle > 0 else []
        return report(rows, idle, args, started, time.monotonic() - t0, runner.root)

    return run_and_report(runner, measure, args.out, "server", started)


def add_run_arguments(parser: argparse.ArgumentParser, kind: str,
                      gigabytes: bool = False) -> None:
    """--dir, --keep and --out, as every benchmark takes them (see run_and_report)."""
    where = "not tmpfs: gigabytes" if gigabytes else "not tmpfs"
    parser.add_argument("--dir", type=Path, default=None,
                        help=f"where the temporary directory goes ({where})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"report file (default bench/results/{kind}-YYYYMMDD.md)")


def run_and_report(runner: Runner, measure: Callable[[], str], out: Path | None, kind: str,
                   started: datetime.datetime) -> int:
    """Every benchmark's end: `measure()` (which returns the report's text), every server
    stopped and the working folder removed whatever happens, then the report written to
    `out` or bench/results/KIND-DATE.md. Exit status: 0, or 130 after Ctrl-C."""
    try:
        text = measure()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every server", file=sys.stderr)
        return 130
    finally:
        runner.cleanup()
    write_report(text, out or REPO / "bench" / "results" / f"{kind}-{started:%Y%m%d}.md")
    return 0


def write_report(text: str, out: Path) -> None:
    """Print the report and keep it in bench/results (or where --out says)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print()
    print(text)
    print(f"(written to {out})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
