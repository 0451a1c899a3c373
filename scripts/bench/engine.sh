#!/usr/bin/env bash
# Benchmark: the run engine's own overhead, with every state change persisted in the SQLite store.
#  1. one run of a job of 1,000 `noop` steps in 10 layers (each step waits for 3 of the layer before):
#     wall time of `cranium run` divided by the steps (target under 2 ms per step);
#  2. a 365-interval backfill of a 20-step `noop` job (target under 15 s).
# Release build. Last line: {"bench":"engine","steps":1000,"ms_per_step":X,"backfill_intervals":365,"backfill_seconds":Y}
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked -q
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/cranium"
[ -x "$bin" ] || bin="${CARGO_TARGET_DIR}/release/cranium"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import os, sys
root = sys.argv[1]
os.makedirs(f"{root}/jobs")
open(f"{root}/cranium.yaml", "w").write("connections: {}\n")
layers, width = 10, 100
lines = ["job: wide", 'schedule: "@daily"', "start: 2026-01-01", "steps:"]
for l in range(layers):
    for w in range(width):
        lines.append(f"  - id: s{l}_{w}\n    kind: noop")
        if l:
            deps = sorted({f"s{l-1}_{(w + k * 37) % width}" for k in range(3)})
            lines.append(f"    after: [{', '.join(deps)}]")
open(f"{root}/jobs/wide.yaml", "w").write("\n".join(lines) + "\n")
lines = ["job: twenty", 'schedule: "@daily"', "start: 2025-01-01", "max_active_runs: 4", "steps:"]
for i in range(20):
    lines.append(f"  - id: t{i}\n    kind: noop")
    if i >= 5:
        lines.append(f"    after: [t{i - 5}]")
open(f"{root}/jobs/twenty.yaml", "w").write("\n".join(lines) + "\n")
PY

now_ms() { date +%s%3N; }

"$bin" check --project "$dir" --strict > /dev/null

s=$(now_ms)
"$bin" --project "$dir" run wide --at 2026-01-01 > "$dir/run.out"
e=$(now_ms)
grep -q "success in" "$dir/run.out" || { cat "$dir/run.out"; echo "the 1,000-step run failed" >&2; exit 1; }
run_ms=$((e - s))
ms_per_step=$(awk -v t="$run_ms" 'BEGIN { printf "%.3f", t / 1000 }')
echo "1,000-step run: ${run_ms} ms wall (process start, check, store, 1,000 steps) = ${ms_per_step} ms/step"

s=$(now_ms)
"$bin" --project "$dir" backfill twenty --from 2025-01-01 --to 2026-01-01 > "$dir/bf.out"
e=$(now_ms)
grep -q "365 interval(s) succeeded, 0 failed" "$dir/bf.out" || { tail -5 "$dir/bf.out"; echo "the backfill failed" >&2; exit 1; }
bf_s=$(awk -v t="$((e - s))" 'BEGIN { printf "%.2f", t / 1000 }')
echo "365-interval backfill of 20 steps (7,300 step runs): ${bf_s} s"
echo "{\"bench\":\"engine\",\"steps\":1000,\"ms_per_step\":$ms_per_step,\"backfill_intervals\":365,\"backfill_seconds\":$bf_s}"
