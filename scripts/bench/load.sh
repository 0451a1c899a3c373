#!/usr/bin/env bash
# Benchmark: warehouse exports and loads, each against a baseline in the same script, on the same rows.
#  Data: ROWS (default 5,000,000) event rows (id, user_id, event_type, platform, event_time), written
#  as CSV by Python and loaded into MariaDB with LOAD DATA.
#  Export: `mysql_to_s3` of the table (jsonl.gz, gzip level 6, keyset pages of 50,000, into garage)
#          against `mariadb -B -N -e 'SELECT … ORDER BY id' | gzip -6` (the client and gzip in two
#          processes, writing a local file).
#  Load:   `s3_to_redshift` (dialect postgres, append) of the export's objects into PostgreSQL
#          (download, gunzip, JSON decode, COPY FROM STDIN) against
#          `psql -c "\copy … FROM PROGRAM 'zcat rows.csv.gz' CSV"` (the server's COPY limit).
#  Wall clock, release build. Last line:
#  {"bench":"load","rows":N,"rows_per_s":X,"baseline_rows_per_s":Y,"ratio":X/Y,
#   "export_rows_per_s":E,"export_baseline_rows_per_s":F,"export_ratio":E/F}
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${BENCH_ROWS:-5000000}
bash scripts/services.sh up >/dev/null
eval "$(bash scripts/services.sh env)"
cargo build --release --locked -q --bin cranium
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/cranium"
[ -x "$bin" ] || bin="${CARGO_TARGET_DIR}/release/cranium"
MY=${PRODUCTION_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
PG=${WAREHOUSE_URL:-postgres://postgres@127.0.0.1:5432/test}
table="bench_load_$$"

dir=$(mktemp -d)
cleanup() {
  mariadb --protocol=tcp -h127.0.0.1 -uroot test -e "DROP TABLE IF EXISTS $table" 2>/dev/null || true
  psql -X -q "$PG" -c "DROP TABLE IF EXISTS public.$table; DELETE FROM cranium_loaded_objects WHERE target = 'public.$table'" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
now_ms() { date +%s%3N; }
rate() { awk -v n="$1" -v ms="$2" 'BEGIN { printf "%.0f", n * 1000 / ms }'; }

python3 - "$ROWS" "$dir/rows.csv" <<'PY'
import sys, datetime as dt
n, path = int(sys.argv[1]), sys.argv[2]
types = ["applet_run", "applet_enabled", "page_view", "login", "search"]
plats = ["ios", "android", "web"]
start = dt.datetime(2026, 3, 1)
with open(path, "w") as f:
    for i in range(1, n + 1):
        t = start + dt.timedelta(milliseconds=i * 86_400_000 // n)
        f.write(f"{i},{(i * 7919) % 250000},{types[i % 5]},{plats[i % 3]},{t:%Y-%m-%d %H:%M:%S.%f}\n")
PY
gzip -1 -k "$dir/rows.csv"
echo "generated $ROWS rows ($(du -h "$dir/rows.csv" | cut -f1) CSV)"

mariadb --protocol=tcp -h127.0.0.1 -uroot --local-infile=1 test -e "
  CREATE TABLE $table (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, event_type VARCHAR(32) NOT NULL,
                       platform VARCHAR(16) NOT NULL, event_time DATETIME(6) NOT NULL);
  LOAD DATA LOCAL INFILE '$dir/rows.csv' INTO TABLE $table FIELDS TERMINATED BY ',';"
psql -X -q "$PG" -c "CREATE TABLE public.$table (id bigint, user_id bigint, event_type text, platform text, event_time timestamp)"

# --- export ---------------------------------------------------------------------------------------
s=$(now_ms)
mariadb --protocol=tcp -h127.0.0.1 -uroot -B -N test -e "SELECT * FROM $table ORDER BY id" | gzip -6 > "$dir/export.tsv.gz"
e=$(now_ms); export_base_ms=$((e - s))
echo "export baseline (mariadb -B | gzip -6): ${export_base_ms} ms"

mkdir -p "$dir/p/jobs"
cat > "$dir/p/cranium.yaml" <<YAML
connections:
  production: { kind: mysql, url: "$MY" }
  warehouse: { kind: postgres, url: "$PG" }
  lake:
    kind: s3
    endpoint: $S3_ENDPOINT
    region: $S3_REGION
    path_style: true
    access_key_id: $S3_ACCESS_KEY_ID
    secret_access_key: $S3_SECRET_ACCESS_KEY
    bucket: $S3_BUCKET
YAML
cat > "$dir/p/jobs/bench.yaml" <<YAML
job: bench
schedule: "@daily"
start: 2026-01-01
steps:
  - id: export
    kind: mysql_to_s3
    connection: production
    table: $table
    s3: lake
    prefix: bench/$table
  - id: load
    kind: s3_to_redshift
    after: [export]
    connection: warehouse
    s3: lake
    source:
      manifests_from: export
    target: public.$table
    analyze: false
YAML
s=$(now_ms)
"$bin" --project "$dir/p" run bench --at 2026-03-01 --steps export > "$dir/export.out" 2>&1 || { cat "$dir/export.out"; exit 1; }
e=$(now_ms); export_ms=$((e - s))
echo "export cranium (mysql_to_s3): ${export_ms} ms"

# --- load -----------------------------------------------------------------------------------------
s=$(now_ms)
psql -X -q "$PG" -c "\\copy public.$table FROM PROGRAM 'zcat $dir/rows.csv.gz' CSV"
e=$(now_ms); load_base_ms=$((e - s))
echo "load baseline (psql \\copy FROM PROGRAM zcat, CSV): ${load_base_ms} ms"
psql -X -q "$PG" -c "TRUNCATE public.$table"

s=$(now_ms)
"$bin" --project "$dir/p" run bench --at 2026-03-01 --steps load > "$dir/load.out" 2>&1 || { cat "$dir/load.out"; exit 1; }
e=$(now_ms); load_ms=$((e - s))
loaded=$(psql -X -q -t -A "$PG" -c "SELECT count(*) FROM public.$table")
echo "load cranium (s3_to_redshift, postgres): ${load_ms} ms, $loaded rows"
[ "$loaded" = "$ROWS" ] || { cat "$dir/load.out"; echo "loaded $loaded rows, not $ROWS" >&2; exit 1; }

x=$(rate "$ROWS" "$load_ms"); y=$(rate "$ROWS" "$load_base_ms")
ex=$(rate "$ROWS" "$export_ms"); ey=$(rate "$ROWS" "$export_base_ms")
r=$(awk -v a="$x" -v b="$y" 'BEGIN { printf "%.3f", a / b }')
er=$(awk -v a="$ex" -v b="$ey" 'BEGIN { printf "%.3f", a / b }')
echo "{\"bench\":\"load\",\"rows\":$ROWS,\"rows_per_s\":$x,\"baseline_rows_per_s\":$y,\"ratio\":$r,\"export_rows_per_s\":$ex,\"export_baseline_rows_per_s\":$ey,\"export_ratio\":$er}"
