#!/bin/sh
# Run every fuzz harness (or those named) for a bounded time each; exit 1 if any crashed.
#
#   bench/fuzz/run.sh [-t SECONDS] [TARGET ...]     TARGET: session address params ...
#
# Needs atheris (python3 -m pip install atheris). New corpus entries go to
# bench/fuzz/work/<target>/ and crash inputs to bench/fuzz/crashes/<target>-crash-*
# (both ignored by git); the committed seeds in bench/fuzz/corpus/<target>/ are read, never
# written. Extra libFuzzer flags can be given in FUZZ_FLAGS (e.g. FUZZ_FLAGS=-jobs=2).
set -u
seconds=60
if [ "${1:-}" = "-t" ]; then
    seconds=$2
    shift 2
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
targets=${*:-session address params framing reply client}
mkdir -p "$here/crashes"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
failed=""
for t in $targets; do
    harness="$here/fuzz_$t.py"
    if [ ! -f "$harness" ]; then
        echo "no harness $harness" >&2
        exit 2
    fi
    mkdir -p "$here/work/$t" "$here/corpus/$t"
    echo "== fuzz_$t: ${seconds}s"
    # -rss_limit_mb: the harnesses hold little; more means a memory bug.
    # shellcheck disable=SC2086
    if python3 "$harness" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$here/crashes/$t-" -print_final_stats=1 ${FUZZ_FLAGS:-} \
        "$here/work/$t" "$here/corpus/$t" >"$here/crashes/$t.log" 2>&1; then
        grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)" \
            "$here/crashes/$t.log" | tail -3
    else
        echo "fuzz_$t FAILED; log: $here/crashes/$t.log"
        grep -E -A12 "Uncaught Python exception|FuzzFinding|Test unit written" \
            "$here/crashes/$t.log" | tail -25
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "crashed:$failed (inputs in $here/crashes/)"
    exit 1
fi
echo "no crashes"
