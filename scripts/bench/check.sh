#!/usr/bin/env bash
# Benchmark: `cranium check` on a generated project of 1,000 job files with 10 SQL steps each.
# Target (issue 2): under 1 s on a 2-core machine, release build.
# Last line: {"bench":"check","jobs":1000,"steps":10000,"seconds":S}
set -euo pipefail
cd "$(dirname "$0")/../.."
JOBS=${JOBS:-1000}
STEPS=${STEPS:-10}
RUNS=${RUNS:-5}

cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-target}/release/cranium"

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" "$JOBS" "$STEPS" <<'PY'
import os, sys
root, jobs, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(f"{root}/jobs"); os.makedirs(f"{root}/sql")
open(f"{root}/cranium.yaml", "w").write("""connections:
  warehouse:
    kind: postgres
    url: postgres://postgres@127.0.0.1:5432/test
  production:
    kind: mysql
    url: mysql://root@127.0.0.1:3306/test
""")
for j in range(jobs):
    lines = [f"job: job_{j:04d}", 'schedule: "15 * * * *"' if j % 2 else 'schedule: "@daily"',
             "timezone: Europe/Berlin" if j % 3 == 0 else "timezone: UTC",
             "start: 2026-01-01", "params:", f"  region: eu-{j % 7}", "steps:"]
    for s in range(steps):
        conn = "production" if (j + s) % 5 == 0 else "warehouse"
        src = f"bench.t_{j}_{s - 1}" if s else "bench.source"
        sql = f"""-- step {s} of job {j}
DELETE FROM bench.t_{j}_{s} WHERE day = {{{{ ds | sql_literal }}}};
INSERT INTO bench.t_{j}_{s} (day, region, n, total)
SELECT {{{{ ds | sql_literal }}}}, {{{{ params.region | sql_literal }}}}, COUNT(*), SUM(amount)
FROM {src} AS s
JOIN bench.dim_{s} AS d ON d.id = s.dim_id
WHERE s.created_at >= {{{{ interval_start | sql_literal }}}}
  AND s.created_at < {{{{ interval_end | sql_literal }}}}
GROUP BY 1, 2;
"""
        if s % 2 == 0:
            path = f"sql/job_{j:04d}_{s}.sql"
            open(f"{root}/{path}", "w").write(sql)
            body = f"    file: {path}"
        else:
            body = "    query: |\n" + "".join(f"      {l}\n" for l in sql.splitlines())
        after = f"    after: [s{s - 1}]\n" if s else ""
        lines.append(f"  - id: s{s}\n    kind: sql\n{after}    connection: {conn}\n{body.rstrip()}")
    open(f"{root}/jobs/job_{j:04d}.yaml", "w").write("\n".join(lines) + "\n")
PY

# Warm the file cache once, and check the generated project is clean.
"$bin" check --project "$dir" > "$dir.out" 2>&1 || { tail -20 "$dir.out"; echo "generated project did not check clean" >&2; exit 1; }
tail -1 "$dir.out"
rm -f "$dir.out"

times=()
for _ in $(seq "$RUNS"); do
  s=$(date +%s%N)
  "$bin" check --project "$dir" > /dev/null
  e=$(date +%s%N)
  t=$(( (e - s) / 1000000 ))
  echo "run: ${t} ms"
  times+=("$t")
done
# The median of the runs, in seconds.
median_ms=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
seconds=$(awk -v m="$median_ms" 'BEGIN { printf "%.3f", m / 1000 }')
echo "{\"bench\":\"check\",\"jobs\":$JOBS,\"steps\":$((JOBS * STEPS)),\"seconds\":$seconds}"
