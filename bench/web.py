"""Benchmark the public pages: latency at 50 concurrent clients, measured with wrk.

Run by hand: `python3 bench/web.py [--seconds S] [--connections N] [--port P]`. It starts
uvicorn with the web app (no queue, a throw-away data_dir) on 127.0.0.1 in a child
process, one worker, as `mailgate serve` runs it (uvloop when installed; httptools
when installed, else h11), warms each URL up, then runs
`wrk -t1 -c50 -d S --latency` per URL and prints the median and p99 latency and the
requests per second. The target (issue 6): under 10 ms median for the code and
compare pages. Needs Debian's `wrk`. Exits 0 either way: tests never assert on timings.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

URLS = ("/codes/556", "/compare/221/556", "/codes/5.1.10?lang=zh", "/api/codes/556",
        "/codes?q=null+MX")


def serve(port: int, data_dir: str) -> None:
    """The child: the app under uvicorn until killed."""
    import uvicorn

    from mailgate.config import Config
    from mailgate.web.app import WebContext, create_app
    from mailgate.web.auth import AdminAuth

    path = Path(data_dir)
    app = create_app(WebContext(config=Config(data_dir=path), queue=None, auth=AdminAuth(path)))
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop=loop, http="auto", lifespan="off")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(base: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/codes/250", timeout=1) as r:
                r.read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"cannot read a latency from {text!r}")
    return float(m[1]) * _UNITS[m[2]]


def run_wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        check=True, capture_output=True, text=True,
    ).stdout
    found = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.MULTILINE))
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "p50": _ms(found["50"]),
        "p99": _ms(found["99"]),
        "rps": float(rps[1]) if rps else 0.0,
        "non2xx": float(errors[1]) if errors else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--serve", metavar="PORT", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.data_dir)
        return 0
    if shutil.which("wrk") is None:
        print("bench/web.py needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 0
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(port), "--data-dir", data_dir],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_up(base)
            parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
            print(f"uvicorn, one worker, HTTP parser {parser}; wrk -t1 -c{args.connections} "
                  f"-d{args.seconds}s on loopback")
            print(f"{'URL':28} {'median ms':>10} {'p99 ms':>8} {'req/s':>8}")
            for path in URLS:
                run_wrk(base + path, 1, args.connections)  # warm the caches and the JIT-less VM
                r = run_wrk(base + path, args.seconds, args.connections)
                note = f"  ({int(r['non2xx'])} non-2xx)" if r["non2xx"] else ""
                print(f"{path:28} {r['p50']:10.2f} {r['p99']:8.2f} {r['rps']:8.0f}{note}")
        finally:
            child.terminate()
            child.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
