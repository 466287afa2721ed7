"""Benchmark inbound verification: the server's CPU per message, checks on against off.

Run by hand from the repository root (never by pytest)::

    python3 bench/authcheck.py                  # about a minute
    python3 bench/authcheck.py --messages 600 --rounds 3

Issue 15: "verification costs less than 30 % of inbound throughput with DNS answers
cached". Measured side by side in one run, one mailgate server at a time in this
process (`tests.support.live.LiveServer`: the production `serve()`, a thread with its
own event loop), the same load twice:

- off: `[auth_checks]` all false;
- on: SPF, DKIM, DMARC, ARC all on (the defaults).

Both with `[relay] networks = []`, so the loopback client is a stranger and every check
runs, and otherwise the defaults of an MX (the sender null-MX check on: MAIL FROM asks
DNS in both runs).

The load is real mail of an authenticated domain: From and MAIL FROM alice@good.test,
DKIM-signed (RSA 2048, relaxed/relaxed, dkimpy) with its key published by the tests' DNS
server on loopback (`tests.support.dnsserver`), SPF `ip4:127.0.0.0/8 -all` and DMARC
`p=reject`, so each message costs one SPF, one DKIM and one DMARC evaluation and gets
`spf=pass dkim=pass dmarc=pass`. Bodies of 2 KiB and 100 KiB. A separate process sends
them (`--connections` at once, one message per connection, as strangers' MTAs do), so
its CPU is not counted. A warm-up fills mailgate's DNS cache first (TTL 300 s).

What counts is the CPU time of this process (the server's threads, its delivery into
Maildirs, and the DNS server, which answers nothing once the cache is warm) from the
first message until the last one is delivered, divided by the messages; and the wall
time. The extra CPU per message with the checks on is the cost of verification; the
throughput ratio is on/off. With `--rounds N` each size is run N times as a pair, off
and on back to back (in alternating order), and the pair with the median on/off CPU
ratio is reported: a busy moment of a shared machine then weighs on both halves alike.

The table goes to stdout and to bench/results/authcheck-YYYYMMDD.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import smtplib
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from tests.support.dnsserver import DNSServer  # noqa: E402
from tests.support.live import LiveServer, live_config  # noqa: E402

from mailgate.config import AuthChecks, DNSConfig, Domains, Policy, Relay  # noqa: E402

SIZES = (2048, 102400)
TARGET = 0.30  # at most 30 % less throughput with the checks on


def make_key() -> tuple[bytes, str]:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    record = "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    parts = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    return pem, parts


def messages(pem: bytes, size: int, n: int) -> list[bytes]:
    import dkim

    line = b"x" * 78 + b"\r\n"
    body = line * (size // len(line))
    out = []
    for i in range(n):
        msg = (b"From: Alice <alice@good.test>\r\nTo: bob@example.net\r\n"
               b"Subject: bench\r\nDate: Sat, 05 Dec 2026 06:00:00 +0000\r\n"
               b"Message-ID: <%d.%d@good.test>\r\n\r\n" % (size, i)) + body
        sig = dkim.sign(msg, b"sel", b"good.test", pem, canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        out.append(bytes(sig) + msg)
    return out


def _send(port: int, batch: list[bytes]) -> int:
    sent = 0
    for msg in batch:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as c:
            c.ehlo("client.good.test")
            c.sendmail("alice@good.test", ["bob@example.net"], msg)
            sent += 1
    return sent


def load(pool: ProcessPoolExecutor, port: int, msgs: list[bytes], connections: int) -> None:
    batches = [msgs[i::connections] for i in range(connections)]
    done = sum(f.result() for f in [pool.submit(_send, port, b) for b in batches])
    assert done == len(msgs)


def delivered(srv: LiveServer) -> int:
    folder = srv.maildir / "example.net" / "bob" / "new"
    return len(os.listdir(folder)) if folder.exists() else 0


def wait_delivered(srv: LiveServer, n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while delivered(srv) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {delivered(srv)} of {n} messages were delivered")
        time.sleep(0.01)


@dataclasses.dataclass
class Cell:
    cpu: float  # seconds of this process's CPU
    wall: float
    n: int
    results: str  # the Authentication-Results of one message, for the record
    parts: dict[str, float]  # CPU ms per check, measured apart (checks on only)


def run(dns: DNSServer, pool: ProcessPoolExecutor, checks: AuthChecks, msgs: list[bytes],
        warm: list[bytes], connections: int) -> Cell:
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-auth-") as tmp:
        # An MX as shipped, but for [auth_checks]: the null-MX checks on (live_config
        # turns them off for tests), so MAIL FROM asks DNS in both runs, as it does in
        # production.
        config = live_config(Path(tmp) / "data", hostname="mx.example.net",
                             relay=Relay(networks=()), dns=DNSConfig((dns.nameserver,)),
                             domains=Domains(local=("example.net",), catch_all=True),
                             auth_checks=checks, policy=Policy())
        with LiveServer(config) as srv:
            port = srv.port("mx")
            load(pool, port, warm, min(connections, len(warm)))
            wait_delivered(srv, len(warm))
            cpu0, t0 = time.process_time(), time.perf_counter()
            load(pool, port, msgs, connections)
            wait_delivered(srv, len(warm) + len(msgs))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            folder = srv.maildir / "example.net" / "bob" / "new"
            first = next(iter(sorted(folder.iterdir()))).read_bytes()
            head = first.split(b"\n\n", 1)[0].decode()
            start = head.find("\nAuthentication-Results:")
            results = "" if start < 0 else head[start + 1:].split("\n")[0]
            if results:
                for line in head[start + 1:].split("\n")[1:]:
                    if not line.startswith("\t"):
                        break
                    results += "\n" + line
            parts = breakdown(srv, msgs[0]) if checks.any else {}
    return Cell(cpu, wall, len(msgs), results, parts)


def breakdown(srv: LiveServer, msg: bytes, n: int = 200) -> dict[str, float]:
    """Milliseconds of CPU per call of each check on one message, run here with the
    server's own (warm) DNS cache: where the extra CPU goes."""
    from mailgate.server.authcheck import dkimcheck, dmarc, spfcheck
    from mailgate.server.authcheck.lookup import DNSBridge

    assert srv.server is not None and srv._loop is not None
    verifier = srv.server.policy.verifier
    assert verifier is not None

    def bridge() -> DNSBridge:
        return DNSBridge(verifier.resolver, srv._loop, max_lookups=40,  # type: ignore[arg-type]
                         timeout=30, cache_only=True)

    spf = spfcheck.check_spf(bridge(), "127.0.0.1", "alice@good.test", "client.good.test")
    dkims, _ = dkimcheck.check_dkim(bridge(), msg)
    steps = {
        "SPF (pyspf)": lambda: spfcheck.check_spf(bridge(), "127.0.0.1", "alice@good.test",
                                                  "client.good.test"),
        "DKIM (header: dkimpy; body hash streamed; RSA: OpenSSL)": lambda: (
            dkimcheck.check_dkim(bridge(), msg)),
        "ARC (no ARC-Seal: a header scan)": lambda: dkimcheck.check_arc(bridge(), msg),
        "DMARC (From, record, alignment)": lambda: dmarc.check_dmarc(
            bridge(), dmarc.from_domains(msg)[0], spf, dkims),
    }
    out = {}
    for name, step in steps.items():
        t = time.process_time()
        for _ in range(n):
            step()
        out[name] = (time.process_time() - t) / n * 1000
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=300, help="per cell (default 300)")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()

    pem, record = make_key()
    zone = "\n".join([
        "test. SOA ns.test. hostmaster.test. 1 3600 600 86400 60",
        'good.test. TXT "v=spf1 ip4:127.0.0.0/8 -all"',
        f"sel._domainkey.good.test. TXT {record}",
        '_dmarc.good.test. TXT "v=DMARC1; p=reject"',
    ])
    off = AuthChecks(spf=False, dkim=False, dmarc=False, arc=False)
    on = AuthChecks()
    rows: list[tuple[int, Cell, Cell]] = []
    spreads: dict[int, list[tuple[Cell, Cell]]] = {}
    started = time.time()
    with DNSServer(zone) as dns, ProcessPoolExecutor(args.connections) as pool:
        for size in SIZES:
            msgs = messages(pem, size, args.messages)
            warm = messages(pem, size, 20)
            pairs: list[tuple[Cell, Cell]] = []
            for round_ in range(args.rounds):
                order = [("off", off), ("on", on)]
                cells: dict[str, Cell] = {}
                for name, checks in order if round_ % 2 == 0 else order[::-1]:
                    cell = run(dns, pool, checks, msgs, warm, args.connections)
                    cells[name] = cell
                    print(f"{size} B {name}: {cell.cpu / cell.n * 1000:.2f} ms CPU/msg, "
                          f"{cell.n / cell.wall:.0f} msg/s", flush=True)
                pairs.append((cells["off"], cells["on"]))
            # The round whose on/off CPU ratio is the median: both halves of a pair ran
            # back to back, so a busy moment of the shared machine weighs on both.
            pairs.sort(key=lambda p: p[1].cpu / p[0].cpu)
            median = pairs[len(pairs) // 2]
            rows.append((size, *median))
            spreads[size] = pairs
        dns_queries = dns.count()
    report = render(args, rows, time.time() - started, dns_queries, spreads)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"authcheck-{datetime.date.today():%Y%m%d}.md"
    path.write_text(report, encoding="utf-8")
    print(f"written to {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


def render(args: argparse.Namespace, rows: list[tuple[int, Cell, Cell]], took: float,
           queries: int, spreads: dict[int, list[tuple[Cell, Cell]]] | None = None) -> str:
    now = datetime.datetime.now()
    lines = [
        f"# Inbound verification benchmark, {now:%Y-%m-%d %H:%M}",
        "",
        f"`python3 bench/authcheck.py --messages {args.messages} --connections "
        f"{args.connections} --rounds {args.rounds}`",
        "",
        f"- {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        f"- one mailgate server at a time, in the benchmark's process; {args.connections} "
        "client processes, one message per connection; mail delivered into Maildirs",
        "- messages: DKIM-signed (RSA 2048) by good.test, SPF pass, DMARC p=reject: "
        "every check runs and passes; DNS answers cached after a 20-message warm-up "
        f"({queries} DNS queries in the whole run)",
        f"- run took {took / 60:.1f} min; of {args.rounds} back-to-back off/on pairs, the "
        "one with the median on/off CPU ratio is shown; load average at the end "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other programs share them)",
        "",
        "| message | CPU/msg off | CPU/msg on | extra CPU | msg/s off | msg/s on | "
        "throughput on/off |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size, off, on in rows:
        c_off, c_on = off.cpu / off.n * 1000, on.cpu / on.n * 1000
        r_off, r_on = off.n / off.wall, on.n / on.wall
        lines.append(f"| {size // 1024} KiB | {c_off:.2f} ms | {c_on:.2f} ms | "
                     f"+{(c_on - c_off) / c_off:.0%} | {r_off:.0f} | {r_on:.0f} | "
                     f"{r_on / r_off:.2f} |")
    if spreads:
        lines += ["", f"Every round ({args.rounds} off/on pairs per size), lowest to highest "
                  "extra CPU: the spread of the shared machine.", "",
                  "| message | extra CPU, each round | throughput on/off, each round |",
                  "|---|---|---|"]
        for size, pairs in spreads.items():
            extra = ", ".join(f"+{on.cpu / on.n / (off.cpu / off.n) - 1:.0%}"
                              for off, on in pairs)
            ratio = ", ".join(f"{(on.n / on.wall) / (off.n / off.wall):.2f}"
                              for off, on in pairs)
            lines.append(f"| {size // 1024} KiB | {extra} | {ratio} |")
    lines += ["", "Where the extra CPU goes: each check run alone in the benchmark's "
              "process on one of the messages, from the server's warm DNS cache (ms of "
              "CPU per message):", "",
              "| check | " + " | ".join(f"{size // 1024} KiB" for size, _, _ in rows) + " |",
              "|---|" + "---:|" * len(rows)]
    for name in rows[0][2].parts if rows else []:
        lines.append(f"| {name} | " + " | ".join(f"{on.parts[name]:.2f}"
                                                 for _, _, on in rows) + " |")
    lines += [
        "",
        f"Target (issue 15): verification costs less than {TARGET:.0%}: extra CPU per "
        f"message at most +{TARGET:.0%}, throughput on/off at least {1 - TARGET:.2f}.",
        "",
        "What the checked messages carried:",
        "",
        "```",
        rows[0][2].results if rows else "",
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
