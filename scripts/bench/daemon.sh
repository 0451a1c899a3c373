#!/usr/bin/env bash
# Benchmark: `cranium daemon` (release build, SQLite store) with 500 jobs of 5 noop steps loaded.
#   1. idle: CPU (percent of one core) and resident memory of the daemon over IDLE_SECONDS (60),
#      with nothing due (the jobs start tomorrow). Targets (issue 11): under 1 % and under 100 MB.
#   2. delay: 10 jobs with seconds-level schedules are added by hot reload beside the 500; over
#      FIRE_SECONDS the delay from each interval's end to the start of its first step, from the
#      store's records, over at least 200 firings. Target: p99 under 500 ms.
# Metrics (/metrics is scraped once in each phase) and alerts (a channel on every job) are on.
# Last line: {"bench":"daemon","jobs":500,"idle_cpu_percent":X,"rss_mb":Y,"delay_p50_ms":A,"delay_p99_ms":B,"firings":N}
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${JOBS:-500}
IDLE_SECONDS=${IDLE_SECONDS:-60}
FIRE_SECONDS=${FIRE_SECONDS:-45}

cargo build --release --locked -q
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/cranium"
[[ ${CARGO_TARGET_DIR:-} == /* ]] && bin="$CARGO_TARGET_DIR/release/cranium"

dir=$(mktemp -d)
pid=
cleanup() {
  [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$dir" "$JOBS" "$port" <<'PY'
import datetime, os, sys
root, jobs, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(f"{root}/jobs")
# Metrics are always on; alerts are on too: every job has a channel (a command), so each step's
# success asks the queue whether a failure condition is to be resolved.
open(f"{root}/cranium.yaml", "w").write(
    f"name: bench\nstate: sqlite://.cranium/state.db\ndaemon:\n  listen: 127.0.0.1:{port}\n  max_running_steps: 32\n"
    "alerts:\n  oncall:\n    kind: command\n    command: [\"true\"]\ndefaults:\n  alerts: [oncall]\n")
tomorrow = (datetime.date.today() + datetime.timedelta(days=2)).isoformat()
for j in range(jobs):
    sched = ['"@hourly"', '"@daily"', '"*/15 * * * *"', '"0 3 * * 1"'][j % 4]
    steps = "".join(
        f"  - id: s{s}\n    kind: noop\n" + (f"    after: [s{s-1}]\n" if s else "") for s in range(5))
    open(f"{root}/jobs/job_{j:04d}.yaml", "w").write(
        f"job: job_{j:04d}\nschedule: {sched}\ntimezone: {'Europe/Berlin' if j % 3 == 0 else 'UTC'}\n"
        f"start: {tomorrow}\nsteps:\n{steps}")
PY

"$bin" --project "$dir" daemon >"$dir/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$dir/daemon.log"; exit 1; }
sleep 3 # let start-up settle

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$pid/status"; }
c0=$(cpu)
t0=$(date +%s.%N)
max_rss=0
end=$(( $(date +%s) + IDLE_SECONDS ))
while (( $(date +%s) < end )); do
  r=$(rss_kb); (( r > max_rss )) && max_rss=$r
  sleep 1
done
c1=$(cpu)
t1=$(date +%s.%N)
idle_cpu=$(python3 -c "print(round(100 * ($c1 - $c0) / $ticks / ($t1 - $t0), 3))")
rss_mb=$(python3 -c "print(round($max_rss / 1024, 1))")
echo "idle: cpu ${idle_cpu}% of one core over ${IDLE_SECONDS}s, max rss ${rss_mb} MB" >&2

# Ten seconds-level jobs, added by hot reload (five on even seconds, five on odd).
start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for j in $(seq 0 9); do
  if (( j % 2 )); then s='"1/2 * * * * *"'; else s='"*/2 * * * * *"'; fi
  {
    printf 'job: fire_%d\nschedule: %s\nstart: "%s"\ncatchup: true\nsteps:\n' "$j" "$s" "$start"
    for k in 0 1 2 3 4; do
      printf '  - id: s%d\n    kind: noop\n' "$k"
      (( k > 0 )) && printf '    after: [s%d]\n' $((k - 1))
    done
  } >"$dir/jobs/fire_$j.yaml"
done
sleep "$FIRE_SECONDS"
curl -sf "http://127.0.0.1:$port/metrics" | grep -c '^cranium_' >&2 || { echo "no /metrics" >&2; exit 1; }
kill -TERM "$pid"
wait "$pid" || { echo "the daemon did not stop cleanly" >&2; tail -20 "$dir/daemon.log" >&2; exit 1; }
pid=

python3 - "$dir/.cranium/state.db" "$JOBS" "$idle_cpu" "$rss_mb" <<'PY'
import datetime, json, sqlite3, sys
db, jobs, idle_cpu, rss_mb = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
c = sqlite3.connect(db)
def ts(s): return datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
rows = c.execute("""
    SELECT r.interval_end, min(a.started_at) FROM runs r JOIN step_attempts a ON a.run_id = r.id
    WHERE r.job LIKE 'fire_%' AND r."trigger" = 'schedule' GROUP BY r.id""").fetchall()
delays = sorted((ts(s) - ts(e)).total_seconds() * 1000 for e, s in rows)
if len(delays) < 200:
    sys.exit(f"only {len(delays)} firings (need at least 200)")
q = lambda p: round(delays[min(len(delays) - 1, int(p * len(delays)))], 1)
print(f"delay over {len(delays)} firings: p50 {q(0.5)} ms, p99 {q(0.99)} ms, max {round(delays[-1], 1)} ms",
      file=sys.stderr)
print(json.dumps({"bench": "daemon", "jobs": jobs, "idle_cpu_percent": idle_cpu, "rss_mb": rss_mb,
                  "delay_p50_ms": q(0.5), "delay_p99_ms": q(0.99), "firings": len(delays)}))
PY
