#!/usr/bin/env bash
# Benchmark: one, two and three `cranium daemon` processes (release build) on one PostgreSQL
# metadata store run the same 1,000 steps: 500 past minutes of a job with a `noop` step and then a
# 50 ms sql step (`SELECT pg_sleep(0.05)` on PostgreSQL), caught up. Each daemon has 4 step slots
# (`daemon.max_running_steps: 4`, the same project file for all), so a second and a third daemon
# add slots; the leader creates the runs and every daemon takes its share from the queue.
#   steps_per_s_N: 1,000 / (last attempt's end - first attempt's start), from the store.
#   claim_p99_ms:  ready to claimed, over the sql steps of all three rounds: from the end of the
#                  noop step before it (when it became ready) to the start of its attempt (the
#                  lease claimed and the attempt recorded).
# Targets (issue 13): steps_per_s_3 >= 1.5 x steps_per_s_1; claim_p99_ms < 100.
# Last line: {"bench":"scale","steps":1000,"steps_per_s_1":A,"steps_per_s_2":B,"steps_per_s_3":C,"claim_p99_ms":D}
set -euo pipefail
cd "$(dirname "$0")/../.."
PG=${PG:-postgres://postgres@127.0.0.1:5432/test}
INTERVALS=${INTERVALS:-500}
SLOTS=${SLOTS:-4}

cargo build --release --locked -q
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/cranium"
[[ ${CARGO_TARGET_DIR:-} == /* ]] && bin="$CARGO_TARGET_DIR/release/cranium"

psql_() { psql "$PG" -v ON_ERROR_STOP=1 -qAtc "$1"; }

dir=$(mktemp -d)
pids=()
schemas=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for s in "${schemas[@]}"; do psql_ "DROP SCHEMA IF EXISTS $s CASCADE" >/dev/null 2>&1 || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

steps=$((INTERVALS * 2))
declare -A rate
for n in 1 2 3; do
  schema="bench_scale_$$_$n"
  schemas+=("$schema")
  root="$dir/p$n"
  python3 - "$root" "$PG" "$schema" "$INTERVALS" "$SLOTS" <<'PY'
import datetime, os, sys
root, pg, schema, intervals, slots = sys.argv[1:6]
os.makedirs(f"{root}/jobs")
open(f"{root}/cranium.yaml", "w").write(
    f"name: scale\nstate: {pg}?schema={schema}\n"
    f"connections:\n  warehouse:\n    kind: postgres\n    url: {pg}\n"
    f"daemon:\n  listen: off\n  max_running_steps: {slots}\n")
end = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
start = end - datetime.timedelta(minutes=int(intervals))
fmt = "%Y-%m-%dT%H:%M:%SZ"
open(f"{root}/jobs/scale.yaml", "w").write(
    f'job: scale\nschedule: "* * * * *"\ncatchup: true\nmax_active_runs: 1000\n'
    f'start: "{start.strftime(fmt)}"\nend: "{end.strftime(fmt)}"\nsteps:\n'
    "  - id: n\n    kind: noop\n"
    "  - id: q\n    kind: sql\n    connection: warehouse\n    after: [n]\n"
    "    query: SELECT pg_sleep(0.05)\n")
PY
  # The store's schema is created (and migrated) once, before the daemons race for the work.
  "$bin" --project "$root" check >/dev/null
  "$bin" --project "$root" runs >/dev/null
  pids=()
  for i in $(seq 1 "$n"); do
    "$bin" --project "$root" daemon --id "bench$n-$i" >"$root/d$i.log" 2>&1 &
    pids+=($!)
  done
  deadline=$((SECONDS + 600))
  while :; do
    done_=$(psql_ "SELECT count(*) FROM $schema.step_intervals WHERE state = 'success'" 2>/dev/null || echo 0)
    [[ $done_ -ge $steps ]] && break
    if ((SECONDS > deadline)); then
      echo "round $n: only $done_/$steps steps succeeded in 600 s" >&2
      tail -20 "$root"/d*.log >&2
      exit 1
    fi
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  r=$(psql_ "SELECT round(count(*) / extract(epoch FROM max(ended_at) - min(started_at))::numeric, 1)
             FROM $schema.step_attempts WHERE state = 'success'")
  shares=$(for i in $(seq 1 "$n"); do grep -c "step succeeded" "$root/d$i.log" || true; done | paste -sd/)
  rate[$n]=$r
  echo "daemons=$n steps=$steps steps_per_s=$r (steps per daemon: $shares)" >&2
done

# Ready (the noop step before it ended) to claimed (its attempt started), every sql step.
union=""
for s in "${schemas[@]}"; do
  [[ -n $union ]] && union+=" UNION ALL "
  union+="SELECT extract(epoch FROM q.started_at - n.ended_at) * 1000 AS ms
          FROM $s.step_attempts q JOIN $s.step_attempts n
            ON n.run_id = q.run_id AND n.step = 'n' AND n.state = 'success'
         WHERE q.step = 'q' AND q.attempt = 1"
done
p99=$(psql_ "SELECT round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) FROM ($union) x")
p50=$(psql_ "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) FROM ($union) x")
echo "claim latency (ready to claimed): p50 ${p50} ms, p99 ${p99} ms" >&2
echo "{\"bench\":\"scale\",\"steps\":$steps,\"steps_per_s_1\":${rate[1]},\"steps_per_s_2\":${rate[2]},\"steps_per_s_3\":${rate[3]},\"claim_p99_ms\":$p99}"
