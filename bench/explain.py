"""Wall time of one `mailgate explain` call, end to end, for what people paste.

Run by hand: `python3 bench/explain.py [-n 20]`. Each call is a fresh process, as a
user runs it (`python -m mailgate`, with this checkout's `src` first on the path). The
first run warms the data cache, as a user's first call does once. Uses hyperfine when
it is installed, repeated subprocess timing otherwise. Prints the median and max wall
time and (without hyperfine) the median CPU time in ms: on a shared, loaded machine
the CPU time is the steadier figure. Issue 12 asks for under 150 ms per call.
`--src DIR` times another checkout's `src` (to compare with main).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = [
    ["explain", "556"],
    ["explain", "556 5.1.10 Recipient address has null MX"],
    ["explain", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found"],
    ["explain", "host mx.example.com[192.0.2.1] said: 550 5.1.1 <u@example.com>: Recipient "
                "address rejected: User unknown (in reply to RCPT TO command)"],
    ["explain", "--lang", "zh", "Remote Server returned '550 5.4.1 Recipient address "
                "rejected: Access denied. AS(201806281)'"],
    ["explain", "--format", "json", "550-5.7.26 Unauthenticated email from example.com is "
                "not accepted due to 550-5.7.26 domain's DMARC policy. 550 5.7.26 - gsmtp"],
]


SRC = [ROOT / "src"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC[0])}


CPU: list[float] = []  # CPU time (user + system) of the last case's runs, in ms


def _with_subprocess(cmd: list[str], n: int) -> list[float]:
    times = []
    CPU.clear()
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True, env=_env())
        times.append((time.perf_counter() - t) * 1000)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        CPU.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    return times


def _with_hyperfine(cmd: list[str], n: int) -> list[float]:
    import json
    import shlex
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(["hyperfine", "-N", "--runs", str(n), "--export-json", out.name,
                        shlex.join(cmd)], capture_output=True, check=True, env=_env())
        data = json.loads(Path(out.name).read_text())
    return [t * 1000 for t in data["results"][0]["times"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=20, help="runs per case")
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the src folder to time")
    args = ap.parse_args()
    SRC[0] = args.src
    base = [sys.executable, "-m", "mailgate"]
    subprocess.run([*base, "explain", "250 ok"], capture_output=True, check=True, env=_env())
    run = _with_hyperfine if shutil.which("hyperfine") else _with_subprocess
    print(f"timing with {'hyperfine' if run is _with_hyperfine else 'subprocess'}, "
          f"{args.n} runs each")
    print(f"{'case':<70} {'median ms':>9} {'max ms':>7} {'cpu ms':>7}")
    for case in CASES:
        try:
            times = run([*base, *case], args.n)
        except subprocess.CalledProcessError:
            print(f"{' '.join(case)[:68]:<70} {'refused (exit 2)':>17}")
            continue
        label = " ".join(case)
        label = label if len(label) <= 68 else label[:65] + "..."
        cpu = f"{statistics.median(CPU):7.0f}" if CPU else f"{'-':>7}"
        print(f"{label:<70} {statistics.median(times):9.0f} {max(times):7.0f} {cpu}")


if __name__ == "__main__":
    main()
