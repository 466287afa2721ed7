"""Where the listener's time goes: mailgate accepting mail with parts of its work removed.

Run by hand (never by pytest), on a machine with Postfix's smtp-source::

    python3 bench/ablation.py --rounds 3
    python3 bench/ablation.py --variants full,no-store --concurrency 1 --seconds 3

mailgate (`[server] workers = 2`, queue only: `relayhost` is a socket that never
answers, so nothing is delivered and the deliverer stays idle) accepts 2 KiB messages from
smtp-source, one new connection per message, one session at a time and twenty. It runs
in variants, each with one part of its work removed, and the variants of a cell are
measured one after the other in each round, so that they share the machine's moment:

- `full`: as shipped;
- `no-fsync`: enqueues commit at synchronous=NORMAL, with no fdatasync before the 250
  (what the durable commit's flush costs);
- `no-store`: the enqueue returns an id and writes nothing (what the queue costs);
- `no-metrics`: every function of `mailgate.metrics` does nothing;
- `warning-logs`: `[log] level = "warning"`: no log line for each message;
- `bare`: no-store, no-metrics and warning logs together: the SMTP dialogue, the
  policy and the rest of the listener's own work;
- `python-floor` (bench/server.py's): uvloop and a protocol that answers each command
  and drops the message: the dialogue alone, the ceiling of a Python server here.

The variants other than the floor and the log level are made in the server's processes
by a `sitecustomize` module that this script writes into its working directory and puts
on the server's PYTHONPATH (after the mailgate tree), reading the variant from
MAILGATE_BENCH_ABLATE. Nothing in mailgate knows of them.

Each cell gives messages a second (smtp-source's run) and the CPU of the server's whole
process tree a message. The report goes to bench/results/ablation-YYYYMMDD.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server import (
    REMOTE_RCPT,
    Cell,
    FloorServer,
    HarnessError,
    MailgateServer,
    Runner,
    Server,
    add_run_arguments,
    measure_cell,
    run_and_report,
    say_where,
    start_harness,
    wait_quiet,
)

VARIANTS = ("full", "no-fsync", "no-store", "no-metrics", "warning-logs", "bare",
            "python-floor")
# What each variant removes, in the server's sitecustomize.
_REMOVES = {"no-fsync": {"fsync"}, "no-store": {"store"}, "no-metrics": {"metrics"},
            "bare": {"store", "metrics"}}

SITECUSTOMIZE = '''\
"""bench/ablation.py: parts of mailgate's work removed, as MAILGATE_BENCH_ABLATE says."""
import os

_what = set(filter(None, os.environ.get("MAILGATE_BENCH_ABLATE", "").split(",")))
if "store" in _what:
    from mailgate.queue import new_queue_id
    from mailgate.queue.sqlite import SQLiteQueue

    async def _enqueue_async(self, message):
        return message.id or new_queue_id()

    SQLiteQueue.enqueue_async = _enqueue_async
if "fsync" in _what:
    from mailgate.queue.sqlite.writer import GroupCommitWriter

    _submit = GroupCommitWriter._submit_async

    def _submit_async(self, op, doing, weight=0, durable=True, shortcut=None):
        return _submit(self, op, doing, weight, False, shortcut)

    GroupCommitWriter._submit_async = _submit_async
if "metrics" in _what:
    import mailgate.metrics as _metrics

    for _name in dir(_metrics):
        _f = getattr(_metrics, _name)
        if (callable(_f) and not isinstance(_f, type) and not _name.startswith("_")
                and getattr(_f, "__module__", "") == "mailgate.metrics"):
            setattr(_metrics, _name, lambda *a, **k: None)
'''


@contextmanager
def ablated(where: Path, removes: set[str]) -> Iterator[None]:
    """Environment for a server started inside: the sitecustomize on its PYTHONPATH (the
    server puts its own tree first) and what to remove."""
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "MAILGATE_BENCH_ABLATE")}
    os.environ["PYTHONPATH"] = str(where) + (
        os.pathsep + saved["PYTHONPATH"] if saved["PYTHONPATH"] else "")
    os.environ["MAILGATE_BENCH_ABLATE"] = ",".join(sorted(removes))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start(runner: Runner, variant: str, where: Path) -> Server:
    if variant == "python-floor":
        server: Server = FloorServer(runner)
    else:
        logs = "warning" if variant in ("warning-logs", "bare") else "info"
        server = MailgateServer(runner, 2, "queue", logs)
        server.label = f"mailgate workers=2, queue only: {variant}"
    runner.servers.append(server)
    with ablated(where, _REMOVES.get(variant, set())):
        server.start()
    return server


def measure(runner: Runner, args: argparse.Namespace, started: float) -> str:
    where = runner.root / "ablate"
    where.mkdir()
    (where / "sitecustomize.py").write_text(SITECUSTOMIZE)
    servers = {v: start(runner, v, where) for v in args.variants}
    cells = [(2048, c) for c in args.concurrency]
    # results[(variant, concurrency)] = one Cell per round
    results: dict[tuple[str, int], list[Cell]] = {}
    for rnd in range(args.rounds):
        for size, conc in cells:
            for variant, server in servers.items():
                wait_quiet(0.25, args.quiet_timeout)
                cell, _ = measure_cell(server, REMOTE_RCPT, size, conc, args.seconds, False)
                results.setdefault((variant, conc), []).append(cell)
                rate = f"{cell.rate:,.0f}/s" if cell.rate else cell.error
                print(f"round {rnd + 1} x{conc} {variant:14} {rate}", file=sys.stderr,
                      flush=True)
    return report(results, args, time.monotonic() - started)


def _cpu(cell: Cell) -> float | None:
    return cell.cpu / cell.messages * 1000 if cell.cpu is not None and cell.messages else None


def report(results: dict[tuple[str, int], list[Cell]], args: argparse.Namespace,
           took: float) -> str:
    lines = [f"# Where the listener's time goes, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"`python3 bench/ablation.py` {' '.join(sys.argv[1:])}", "",
             f"- {os.cpu_count()} CPUs; run took {took / 60:.1f} min; {args.rounds} "
             "round(s), variants measured one after the other in each",
             "- load: smtp-source, 2 KiB, one new connection per message", "",
             "Messages a second accepted (median of the rounds; each round's figure in "
             "brackets), CPU of the server's process tree a message (median), and the "
             "median of each round's ratio to `full` in that round.", ""]
    for conc in args.concurrency:
        lines += [f"## {conc} session(s) at a time", "",
                  "| variant | msgs/s | rounds | CPU ms/msg | vs full |",
                  "|---|---:|---|---:|---:|"]
        full = results.get(("full", conc), [])
        for variant in args.variants:
            cells = results.get((variant, conc), [])
            rates = [c.rate for c in cells if c.rate]
            cpus = [x for c in cells if (x := _cpu(c)) is not None]
            ratios = [c.rate / f.rate for c, f in zip(cells, full, strict=False)
                      if c.rate and f.rate]
            lines.append(
                f"| {variant} | {statistics.median(rates):,.0f} | "
                f"{', '.join(f'{r:,.0f}' for r in rates)} | "
                f"{statistics.median(cpus):.2f} | {statistics.median(ratios):.2f}x |"
                if rates and cpus and ratios else f"| {variant} | – | – | – | – |")
        lines.append("")
    errors = [f"- {v} ×{c}: {cell.error}" for (v, c), cs in results.items() for cell in cs
              if cell.error]
    if errors:
        lines += ["Errors:", "", *errors, ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of: " + ", ".join(VARIANTS))
    parser.add_argument("--concurrency", default="1,20",
                        help="sessions at a time, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of a run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quiet-timeout", type=float, default=6.0,
                        help="seconds to wait for other programs to go quiet before a run")
    add_run_arguments(parser, "ablation")
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    if "full" not in args.variants:
        args.variants.insert(0, "full")  # the ratios are to it
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    except ValueError:
        parser.error("--concurrency: comma-separated numbers")
    started, t0 = start_harness()
    runner = Runner(args.dir, args.keep)
    say_where(runner)
    try:
        return run_and_report(runner, lambda: measure(runner, args, t0), args.out,
                              "ablation", started)
    except HarnessError as exc:
        print(f"ablation: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
