"""Benchmark the sans-I/O protocol core: DATA framing, command parsing, session steps.

Run by hand: `python3 bench/smtp_core.py`. Prints figures and the targets from the
protocol issue; exits 0 either way (tests never assert on timings).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from mailgate.smtp.address import parse_path
from mailgate.smtp.framing import DataReader, dot_stuff
from mailgate.smtp.params import parse_mail_params, parse_rcpt_params
from mailgate.smtp.server import NEED_DATA, ServerSession, SessionConfig


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def make_body(size: int, dot_every: int = 500) -> bytes:
    """A body of 76-column text lines; one line in `dot_every` starts with a dot.

    Real mail rarely has lines starting with a dot (only those need unstuffing); the
    benchmark reports a dot-heavy body too (`dot_every=4`), the worst realistic case.
    """
    rnd = random.Random(1)
    words = [b"mail", b"gate", b"smtp", b"relay", b"queue", b"deliver", b"header", b"MIME"]
    lines = []
    total = 0
    while total < size:
        line = b" ".join(rnd.choice(words) for _ in range(12))[:76]
        if rnd.randrange(dot_every) == 0:
            line = b"." + line[1:]
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def bench_framing(size_mb: int, chunk: int, dot_every: int) -> float:
    body = make_body(size_mb * 1024 * 1024, dot_every)
    wire = dot_stuff(body)
    chunks = [wire[i : i + chunk] for i in range(0, len(wire), chunk)]

    def run() -> None:
        r = DataReader(max_size=len(body) * 2)
        out = []
        for c in chunks:
            content, rest = r.feed(c)
            out.append(content)
        assert rest is not None and b"".join(out) == body

    secs = best_of(run, 5)
    return len(body) / secs / 1e6


COMMANDS = [
    "MAIL FROM:<alice@example.org> SIZE=2048 BODY=8BITMIME",
    "RCPT TO:<bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net",
    "RCPT TO:<carol@example.net>",
    "MAIL FROM:<>",
    "RCPT TO:<postmaster>",
]


def bench_parsing(n: int) -> float:
    """Parsing alone: verb split, path, parameters, as the session does for each line."""
    lines = [c.encode() + b"\r\n" for c in COMMANDS] * (n // len(COMMANDS))

    def run() -> None:
        for raw in lines:
            line = raw[:-2].decode("utf-8")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            rest = arg[arg.index(":") + 1 :]
            path, _, params = rest.partition(" ")
            if verb == "MAIL":
                parse_mail_params(params.split())
                parse_path(path, allow_null=True)
            else:
                parse_rcpt_params(params.split())
                parse_path(path, allow_postmaster=True)

    secs = best_of(run, 3)
    return len(lines) / secs


def bench_session(transactions: int) -> float:
    """Whole session steps: bytes in, parse, state, default decisions, reply bytes out."""
    tx = (
        b"MAIL FROM:<alice@example.org> SIZE=2048\r\n"
        b"RCPT TO:<bob@example.net>\r\nRCPT TO:<carol@example.net>\r\n"
        b"NOOP\r\nRSET\r\n"
    )
    per_tx = 5

    def run() -> None:
        s = ServerSession(SessionConfig(hostname="mx.test"))
        s.greet()
        s.receive_data(b"EHLO client.test\r\n")
        while (ev := s.next_event()) is not NEED_DATA:
            if ev.needs_decision:
                s.respond(None)
        s.data_to_send()
        for _ in range(transactions):
            s.receive_data(tx)
            while (ev := s.next_event()) is not NEED_DATA:
                if ev.needs_decision:
                    s.respond(None)
            s.data_to_send()

    secs = best_of(run, 3)
    return transactions * per_tx / secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mb", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=65536, help="bytes per feed (socket read)")
    args = ap.parse_args()
    mbps = bench_framing(args.size_mb, args.chunk, 500)
    worst = bench_framing(args.size_mb, args.chunk, 4)
    lps = bench_parsing(200_000)
    cps = bench_session(20_000)
    print(f"DATA framing+unstuffing, {args.size_mb} MB body, {args.chunk} B reads: "
          f"{mbps:8.0f} MB/s   (target >= 300)")
    print(f"  the same, one line in four starting with a dot:         {worst:8.0f} MB/s")
    print(f"command-line parsing:                                   "
          f"{lps:8.0f} lines/s (target >= 300000)")
    print(f"server session steps:                                   "
          f"{cps:8.0f} cmds/s  (target >= 100000)")


if __name__ == "__main__":
    main()
