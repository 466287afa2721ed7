"""`mailgate explain --bounce` side by side with Sisimai, on Sisimai's own corpus.

Run by hand:

    python3 bench/bounce_sisimai.py CORPUS [--runs 3] [--out bench/results/bounce-DATE.md]

CORPUS is a folder of bounces, one message per `*.eml` file: Sisimai's public corpus
(the `maildir/bsd` folder of the repository sisimai/set-of-emails). It is Sisimai's
data: it is read from where it is given and never copied into this repository.

Both run in the same run on the same files, each as one process over the whole corpus:
Debian's Sisimai (`libsisimai-perl`: `perl -MSisimai`, `Sisimai->make` per file,
`delivered` and `vacation` on, every recipient printed as JSON) and `mailgate explain
--bounce FILE... --format json`. Reported: the share of Sisimai's recipients mailgate
finds, of those with the same status (Sisimai's made-up `X.0.9NN` codes count as no
status, which is what mailgate reports then) and the same reason, complaints and auto-replies
read as failures, the differences by kind, and the wall and CPU time of each (median
of `--runs`), as ratios. Then the time of one 100 KiB bounce (an ordinary one and a
hostile one with hundreds of recipients), in-process and as a command.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

SISIMAI = r"""
use strict; use warnings; use Sisimai; use JSON::PP;
my $js = JSON::PP->new->canonical;
for my $path (@ARGV) {
  my $v = Sisimai->make($path, delivered => 1, vacation => 1) || [];
  (my $name = $path) =~ s{.*/}{};
  for my $e (@$v) {
    print $js->encode({file => $name, address => lc $e->recipient->address,
      action => $e->action, status => $e->deliverystatus, reason => $e->reason,
      rhost => $e->rhost, diag => $e->diagnosticcode, command => $e->smtpcommand}), "\n";
  }
}
"""


CPU: dict[str, list[float]] = {"perl": [], "python": []}  # CPU seconds of each child


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall time and output of one child; its CPU time (user + system) goes to CPU:
    on a shared machine the wall time carries the other processes' load, the CPU time
    much less."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU["perl" if cmd[0] == "perl" else "python"].append(cpu)
    if r.returncode not in (0, 2):
        sys.exit(f"{cmd[0]} failed ({r.returncode}): {r.stderr[-2000:]}")
    return elapsed, r.stdout


def _env() -> dict[str, str]:
    """mailgate from this tree, with its bytecode cached as an installed package has it
    (a machine with PYTHONDONTWRITEBYTECODE set would compile every module on every
    run: Perl has no such step to pay, so that would not compare the readers)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "mailgate-bench-pycache")
    return env


def run_sisimai(files: list[str]) -> tuple[float, list[dict[str, str]]]:
    t, out = _timed(["perl", "-e", SISIMAI, *files])
    return t, [json.loads(line) for line in out.splitlines() if line.strip()]


def run_mailgate(files: list[str]) -> tuple[float, list[dict[str, object]]]:
    cmd = [sys.executable, "-m", "mailgate", "explain", "--bounce", *files, "--format", "json"]
    t, out = _timed(cmd, _env())
    rows: list[dict[str, object]] = []
    dec, pos, objs = json.JSONDecoder(), 0, []
    while pos < len(out):  # JSON Lines, or one indented object for one file
        if out[pos].isspace():
            pos += 1
            continue
        obj, pos = dec.raw_decode(out, pos)
        objs.append(obj)
    for obj in objs:
        name = Path(str(obj["file"])).name
        for r in obj["recipients"]:
            rows.append({"file": name, "kind": obj.get("kind"), **r})
        if not obj["recipients"]:
            rows.append({"file": name, "kind": obj.get("kind") or "error", "address": None})
    return t, rows


def sisimai_status(status: str) -> str:
    """Sisimai's status, with its own `X.0.9NN` codes read as what they stand for: the
    bounce gave no status, and Sisimai made one up from its reason (they are in no
    registry)."""
    parts = (status or "").split(".")
    if len(parts) == 3 and parts[1] == "0" and len(parts[2]) == 3 and parts[2][0] == "9":
        return ""
    return status or ""


def compare(sis: list[dict[str, str]], mg: list[dict[str, object]]) -> dict[str, object]:
    ours = {(r["file"], r["address"]): r for r in mg if r.get("address")}
    n = len(sis)
    found = same_status = same_reason = 0
    missing, statuses, reasons = [], [], []
    for s in sis:
        m = ours.get((s["file"], s["address"]))
        if m is None:
            missing.append(s)
            continue
        found += 1
        if (m.get("status") or "") == sisimai_status(s["status"]):
            same_status += 1
        else:
            statuses.append((s, m))
        if m.get("reason") == s["reason"]:
            same_reason += 1
        else:
            reasons.append((s, m))
    not_failures = {s["file"] for s in sis if s["reason"] in ("feedback", "vacation")}
    as_failure = [r for r in mg if r["file"] in not_failures
                  and r.get("action") in ("failed", "delayed")]
    return {"n": n, "found": found, "status": same_status, "reason": same_reason,
            "missing": missing, "statuses": statuses, "reasons": reasons,
            "as_failure": as_failure, "not_failure_files": len(not_failures)}


def _big_bounce(hostile: bool) -> bytes:
    head = (b"From: MAILER-DAEMON@mail.example.org\nTo: alice@example.org\n"
            b"Subject: Undelivered Mail Returned to Sender\n\n"
            b"This is the mail system at host mail.example.org.\n\n")
    if hostile:
        body = b"".join(b"<user%d@example.net>: host mx.example.net[192.0.2.25] said: 550 "
                        b"5.1.1 <user%d@example.net>: Recipient address rejected: User "
                        b"unknown (in reply to RCPT TO command)\n" % (i, i) for i in range(700))
    else:
        body = (b"<carol@example.net>: host mx.example.net[192.0.2.25] said: 552 5.2.2 "
                b"Mailbox full (in reply to RCPT TO command)\n\n"
                b"--- Undelivered Message Headers follows ---\nFrom: alice@example.org\n\n"
                + b"Quarterly figures, line after line of an attached report.\n" * 1800)
    return (head + body)[:100 * 1024]


def bench_one(runs: int) -> list[tuple[str, float, float, float]]:
    """(case, mailgate in-process median ms, mailgate command ms, Sisimai command ms)."""
    sys.path.insert(0, str(SRC))
    from mailgate.codes.bounce import read_bounce

    out = []
    for name, hostile in (("100 KiB bounce, one recipient", False),
                          ("100 KiB hostile bounce, 700 recipients", True)):
        data = _big_bounce(hostile)
        times = []
        for _ in range(max(runs, 5)):
            t = time.perf_counter()
            read_bounce(data)
            times.append((time.perf_counter() - t) * 1000)
        with tempfile.NamedTemporaryFile(suffix=".eml", delete=False) as f:
            f.write(data)
        try:
            cmd_mg = statistics.median(run_mailgate([f.name])[0] for _ in range(runs)) * 1000
            cmd_sis = statistics.median(run_sisimai([f.name])[0] for _ in range(runs)) * 1000
        finally:
            os.unlink(f.name)
        out.append((name, statistics.median(times), cmd_mg, cmd_sis))
    return out


def report(corpus: Path, files: list[str], runs: int) -> str:
    sis_times, mg_times = [], []
    run_sisimai(files[:5])  # warm both: the page cache, and mailgate's bytecode cache
    run_mailgate(files[:5])
    CPU["perl"].clear()
    CPU["python"].clear()
    sis: list[dict[str, str]] = []
    mg: list[dict[str, object]] = []
    for _ in range(runs):  # alternate, so that both see the same machine load
        t, sis = run_sisimai(files)
        sis_times.append(t)
        t, mg = run_mailgate(files)
        mg_times.append(t)
    cs, cm = statistics.median(CPU["perl"]), statistics.median(CPU["python"])
    c = compare(sis, mg)
    n = int(c["n"])  # type: ignore[call-overload]

    def pct(k: str) -> str:
        return f"{int(c[k]) / n:.1%}"  # type: ignore[call-overload]

    ts, tm = statistics.median(sis_times), statistics.median(mg_times)
    lines = [
        "# `mailgate explain --bounce` against Sisimai",
        "",
        f"Corpus: {len(files)} messages (`{corpus.name}` of sisimai/set-of-emails); "
        f"Sisimai {_sisimai_version()} (Debian libsisimai-perl), Python "
        f"{sys.version.split()[0]}; median of {runs} runs, both in the same run.",
        "",
        "| measure | result | target |",
        "| --- | --- | --- |",
        f"| Sisimai's recipients found | {c['found']}/{n} = {pct('found')} | ≥ 95 % |",
        f"| … with the same status | {c['status']}/{n} = {pct('status')} | ≥ 95 % |",
        f"| … with the same reason | {c['reason']}/{n} = {pct('reason')} | ≥ 85 % |",
        f"| complaints/auto-replies read as failures | {len(c['as_failure'])} of "  # type: ignore[arg-type]
        f"{c['not_failure_files']} files | 0 |",
        f"| whole corpus, one process each: wall time | mailgate {tm * 1000:.0f} ms, Sisimai "
        f"{ts * 1000:.0f} ms: ratio {tm / ts:.2f} | ≤ 1.00 |",
        f"| … CPU time (user + system) | mailgate {cm * 1000:.0f} ms, Sisimai "
        f"{cs * 1000:.0f} ms: ratio {cm / cs:.2f} | ≤ 1.00 |",
        f"| mailgate recipients in all | {sum(1 for r in mg if r.get('address'))} "
        f"(Sisimai {n}) | |",
        "",
        "## One 100 KiB bounce",
        "",
        "| case | mailgate in-process | mailgate command | Sisimai command | target |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, inproc, cmd_mg, cmd_sis in bench_one(runs):
        lines.append(f"| {name} | {inproc:.1f} ms | {cmd_mg:.0f} ms | {cmd_sis:.0f} ms "
                     f"| < 300 ms |")
    lines += ["", "## Differences", ""]
    pairs = collections.Counter((s["reason"], m["reason"]) for s, m in c["reasons"])  # type: ignore[union-attr]
    lines.append("Reasons (Sisimai → mailgate), by count: " + ", ".join(
        f"{a} → {b} ({k})" for (a, b), k in pairs.most_common()) + ".")
    lines += ["", "| file | recipient | Sisimai status / reason | mailgate status / reason "
              "| Sisimai's diagnostic |", "| --- | --- | --- | --- | --- |"]
    seen = set()
    for s, m in list(c["reasons"]) + list(c["statuses"]):  # type: ignore[operator]
        key = (s["file"], s["address"])
        if key in seen:
            continue
        seen.add(key)
        diag = " ".join(str(s.get("diag") or "").split())[:90].replace("|", "/")
        lines.append(f"| {s['file']} | {s['address']} | {s['status'] or '-'} / {s['reason']} "
                     f"| {m.get('status') or '-'} / {m.get('reason')} | {diag} |")
    if c["missing"]:
        lines += ["", "Not found: " + ", ".join(
            f"{s['file']} {s['address']}" for s in c["missing"]) + "."]  # type: ignore[union-attr]
    return "\n".join(lines) + "\n"


def _sisimai_version() -> str:
    r = subprocess.run(["perl", "-MSisimai", "-e", "print $Sisimai::VERSION"],
                       capture_output=True, text=True, check=False)
    return r.stdout.strip() or "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, help="folder of *.eml bounces (maildir/bsd)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write the report here as well")
    args = ap.parse_args()
    if subprocess.run(["perl", "-MSisimai", "-e", "1"], capture_output=True,
                      check=False).returncode:
        sys.exit("Sisimai is missing: apt-get install libsisimai-perl")
    files = sorted(str(p) for p in args.corpus.glob("*.eml"))
    if not files:
        sys.exit(f"no *.eml files in {args.corpus}")
    text = report(args.corpus, files, args.runs)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
