"""Wall time of `mailgate explain` and `mailgate compare` as a user runs them.

Run by hand: `python3 bench/cli_latency.py [-n 20]`. Each command runs as a fresh
process (the console script's interpreter, not a shell wrapper); the first run warms
the data cache, as a user's first call does once. Prints median and max in ms; the
knowledge-base issue asks for under 150 ms.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = [
    ["explain", "556"],
    ["explain", "5.1.10"],
    ["explain", "556 5.1.10 Recipient address has null MX"],
    ["compare", "221", "556"],
    ["compare", "221", "556", "--lang", "zh"],
    ["compare", "421", "4.4.2", "--format", "json"],
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=20, help="runs per command")
    args = ap.parse_args()
    base = [sys.executable, "-m", "mailgate"]
    subprocess.run([*base, "explain", "250"], capture_output=True, check=True)  # warm cache
    print(f"{'command':<58} {'median ms':>9} {'max ms':>7}")
    for cmd in COMMANDS:
        times = []
        for _ in range(args.n):
            t = time.perf_counter()
            subprocess.run([*base, *cmd], capture_output=True, check=True)
            times.append((time.perf_counter() - t) * 1000)
        print(f"mailgate {' '.join(cmd):<49} {statistics.median(times):9.0f} {max(times):7.0f}")


if __name__ == "__main__":
    main()
