#!/usr/bin/env bash
# Benchmark: the dashboard over a store of 50 jobs x 2,000 intervals x 20 steps (SQLite, seeded by
# scripts/bench/dashboard/seed.py through the binary's own schema), served by `cranium ui`
# (release build), measured on the server and in headless Chromium (Debian's chromium,
# playwright-core from tests/browser):
#   grid_p95_ms     the job page with a grid of 1,000 intervals: p95 of the server's own time
#                   (its Server-Timing header) over 60 requests across the jobs
#   grid_kb_gzip    that page's size gzipped, as served
#   grid_dom_nodes  the grid's elements in the browser (it is SVG paths per state)
#   cell_click_ms   p95: a click on a cell until its attempts show (one request)
#   live_update_ms  p95: a step record changed in the store until its cell is repainted (SSE)
#   log_tail_ms     p95: opening a 50 MB log's page until its last 1,000 lines show
# Targets (issue 14): grid_p95_ms < 100, grid_kb_gzip < 150, a few hundred DOM nodes at most,
# cell_click_ms < 150, live_update_ms < 1000, log_tail_ms < 300.
# Last line: {"bench":"dashboard","grid_p95_ms":A,"grid_kb_gzip":B,"grid_dom_nodes":C,"cell_click_ms":D,"live_update_ms":E,"log_tail_ms":F}
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${JOBS:-50}
INTERVALS=${INTERVALS:-2000}
STEPS=${STEPS:-20}
LOG_MB=${LOG_MB:-50}

cargo build --release --locked -q
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/cranium"
[[ ${CARGO_TARGET_DIR:-} == /* ]] && bin="$CARGO_TARGET_DIR/release/cranium"
[ -x /usr/bin/chromium ] || { echo "dashboard.sh: needs /usr/bin/chromium (apt-get install chromium)" >&2; exit 2; }
[ -d tests/browser/node_modules/playwright-core ] || (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

dir=$(mktemp -d)
ui_pid=
cleanup() {
  [[ -n $ui_pid ]] && kill "$ui_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
printf 'state: sqlite://.cranium/state.db\n' >"$dir/cranium.yaml"
mkdir -p "$dir/.cranium"
t0=$(date +%s)
python3 scripts/bench/dashboard/seed.py "$bin" "$dir" "$JOBS" "$INTERVALS" "$STEPS" "$LOG_MB"
echo "dashboard.sh: seeded in $(( $(date +%s) - t0 )) s"
read -r until newest < <(python3 -c '
import datetime as dt, sys
s = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
n = int(sys.argv[1])
f = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
print(f(s + dt.timedelta(hours=n)), f(s + dt.timedelta(hours=n - 1)))' "$INTERVALS")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
"$bin" --project "$dir" ui --listen "127.0.0.1:$port" >"$dir/ui.log" 2>&1 &
ui_pid=$!
for _ in $(seq 1 100); do curl -sf "$base/" -o /dev/null && break; sleep 0.1; done

# Server time of the job page with 1,000 intervals, across the jobs (one warm-up each first).
for j in $(seq 0 $((JOBS - 1))); do curl -s -o /dev/null "$base/jobs/job_$(printf %02d "$j")?n=1000&until=$until"; done
times=()
for i in $(seq 0 59); do
  j=$(printf %02d $((i % JOBS)))
  d=$(curl -s -o /dev/null -D - "$base/jobs/job_$j?n=1000&until=$until" | tr -d '\r' | sed -n 's/^server-timing: app;dur=//Ip')
  times+=("$d")
done
grid_p95=$(printf '%s\n' "${times[@]}" | python3 -c 'import math,sys; v=sorted(float(x) for x in sys.stdin if x.strip()); print(round(v[math.ceil(0.95*len(v))-1], 1))')
curl -s -H 'Accept-Encoding: gzip' -o "$dir/grid.gz" "$base/jobs/job_00?n=1000&until=$until"
grid_kb=$(python3 -c 'import os,sys; print(round(os.path.getsize(sys.argv[1]) / 1024, 1))' "$dir/grid.gz")
echo "dashboard.sh: job page with 1,000 intervals: server p95 ${grid_p95} ms, ${grid_kb} KB gzipped"

browser=$(node scripts/bench/dashboard/bench.mjs "$base" "$until" "$dir/.cranium/state.db" "$newest" "$STEPS")
echo "dashboard.sh: browser: $browser"
python3 -c '
import json, sys
b = json.loads(sys.argv[3])
print(json.dumps({"bench": "dashboard", "grid_p95_ms": float(sys.argv[1]), "grid_kb_gzip": float(sys.argv[2]),
                  "grid_dom_nodes": b["grid_dom_nodes"], "cell_click_ms": b["cell_click_ms"],
                  "live_update_ms": b["live_update_ms"], "log_tail_ms": b["log_tail_ms"]}))' "$grid_p95" "$grid_kb" "$browser"
