#!/usr/bin/env bash
# Benchmark: Kafka → S3 extraction throughput against the physical limit of this broker and compressor.
#  Data: 1,000,000 JSON app events (~300 bytes each) over 4 partitions of a fresh topic on the local
#  tansu broker (scripts/services.sh up starts it and garage).
#  Baseline: examples/kafka_baseline.rs, a minimal consumer on the same librdkafka that reads the same
#  partitions and writes one gzip file at level 6 (cranium's default for jsonl.gz) on one core.
#  cranium: `cranium run` of one kafka_to_s3 step (jsonl.gz, default level) for the hour that holds
#  the events: parse, route into hour folders, compress, upload to garage, manifest, commit.
#  Both: wall clock, release build; MB are the records' uncompressed bytes (10^6).
# Target: ratio >= 1.0. Last line:
#  {"bench":"kafka_to_s3","records":1000000,"mb_per_s":X,"baseline_mb_per_s":Y,"ratio":X/Y}
set -euo pipefail
cd "$(dirname "$0")/../.."
RECORDS=${BENCH_RECORDS:-1000000}
bash scripts/services.sh up >/dev/null
eval "$(bash scripts/services.sh env)"
cargo build --release --locked -q --bin cranium --example kafka_produce --example kafka_baseline
target=${CARGO_TARGET_DIR:-target}
bin="$target/release/cranium"
produce="$target/release/examples/kafka_produce"
baseline="$target/release/examples/kafka_baseline"

dir=$(mktemp -d)
topic="bench_k2s_$(date +%s)_$$"
prefix="bench/$topic"
# The broker keeps topics in memory: drop this one (~270 MB) when done.
trap '"$produce" --brokers "$KAFKA_BROKERS" --topic "$topic" --delete >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
"$produce" --brokers "$KAFKA_BROKERS" --topic "$topic" --create 4 \
  --synthetic "$RECORDS" --start 2026-03-01T10:00:00Z --hours 1 > "$dir/produce.json"
echo "produced: $(cat "$dir/produce.json")"

now_ms() { date +%s%3N; }

# Baseline, twice (the first run also warms the broker's and the OS's caches); the faster counts.
best_base=""
for i in 1 2; do
  "$baseline" --brokers "$KAFKA_BROKERS" --topic "$topic" --out "$dir/baseline.jsonl.gz" > "$dir/base.json"
  echo "baseline run $i: $(cat "$dir/base.json")"
  s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"])' "$dir/base.json")
  if [ -z "$best_base" ] || python3 -c "import sys; sys.exit(0 if $s < $best_base else 1)"; then best_base=$s; fi
done
base_bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$dir/base.json")
base_records=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["records"])' "$dir/base.json")
[ "$base_records" = "$RECORDS" ] || { echo "baseline read $base_records records, not $RECORDS" >&2; exit 1; }

# cranium: a project with one kafka_to_s3 step; each run has a project (store) and a group of its own,
# so both read everything.
best=""
for i in 1 2; do
  p="$dir/p$i"
  mkdir -p "$p/jobs"
  cat > "$p/cranium.yaml" <<YAML
connections:
  events:
    kind: kafka
    brokers: $KAFKA_BROKERS
  lake:
    kind: s3
    endpoint: $S3_ENDPOINT
    region: $S3_REGION
    path_style: true
    access_key_id: $S3_ACCESS_KEY_ID
    secret_access_key: $S3_SECRET_ACCESS_KEY
    bucket: $S3_BUCKET
YAML
  cat > "$p/jobs/extract.yaml" <<YAML
job: extract
schedule: "@hourly"
start: 2026-01-01
steps:
  - id: copy
    kind: kafka_to_s3
    connection: events
    topic: $topic
    group: bench-$topic-$i
    s3: lake
    prefix: $prefix/run$i
YAML
  s=$(now_ms)
  "$bin" --project "$p" run extract --at 2026-03-01T10:00 > "$dir/run.out" 2>&1 ||
    { cat "$dir/run.out"; exit 1; }
  e=$(now_ms)
  grep -rqs "committed: $RECORDS records" "$p/.cranium/logs/extract" ||
    { cat "$dir/run.out"; echo "cranium did not copy $RECORDS records" >&2; exit 1; }
  secs=$(awk -v t="$((e - s))" 'BEGIN { printf "%.3f", t / 1000 }')
  echo "cranium run $i: ${secs}s"
  if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $secs < $best else 1)"; then best=$secs; fi
done
python3 - "$RECORDS" "$base_bytes" "$best_base" "$best" <<'PY'
import json, sys
records, nbytes, base_s, cr_s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
mb = nbytes / 1e6
x, y = mb / cr_s, mb / base_s
print(f"{records} records, {mb:.1f} MB: cranium {cr_s:.2f}s = {x:.1f} MB/s, {records / cr_s:,.0f} records/s; "
      f"baseline {base_s:.2f}s = {y:.1f} MB/s, {records / base_s:,.0f} records/s")
print(json.dumps({"bench": "kafka_to_s3", "records": records, "mb_per_s": round(x, 2),
                  "baseline_mb_per_s": round(y, 2), "ratio": round(x / y, 3)}, separators=(",", ":")))
PY
