#!/usr/bin/env bash
# Benchmark (issue 6): `cranium diff` against reladiff 0.6.0 (hashdiff: checksums of key ranges, bisected where
#  they differ), comparing a MariaDB table with its PostgreSQL copy, on the same pair of tables.
#  Data: ROWS (default 10,000,000; BENCH_ROWS) rows of id BIGINT PK, a INT, b INT NULL, c BIGINT,
#  amount DECIMAL(12,2), name VARCHAR(64), created_at TIMESTAMP NULL, note TEXT NULL, generated inside each server
#  from the same integer expressions by validate/data.sh (MariaDB's sequence engine and generate_series, both
#  servers in parallel), in mysql://root@127.0.0.1:3306/test and postgres://postgres@127.0.0.1:5432/test.
#  ASCII text only, no 4-byte characters: reladiff opens MySQL connections as 3-byte utf8 (utf8mb3) and sets UTC on
#  one pooled connection only. This script runs reladiff through validate/reladiff_mb4.py, which forces utf8mb4
#  (utf8mb4_general_ci) and UTC on every connection of both servers (on this ASCII data and a UTC server, plain
#  reladiff should report the same keys).
#  reladiff is installed with its MySQL and PostgreSQL drivers, pinned (validate/requirements.txt), into
#  ~/.cache/cranium/bench/reladiff-venv (once; again when requirements.txt changes).
#  Run 1, 0 differences: both tools on the identical pair; both must report nothing.
#  Run 2, 10 differences seeded on the PostgreSQL side (a, amount, name, created_at changed; note NULL -> '' and
#        non-NULL -> NULL; b -> NULL; a case-only name change, equal under utf8mb4_general_ci; a missing row; an
#        extra row): both must report exactly the 10 expected keys (same_keys).
#  Both tools with THREADS (default 4; BENCH_THREADS): `cranium diff --threads N`, reladiff `-j N` (threads per
#  database); cranium first each time, run 1 also warms the caches. Wall clock of each process, release build.
#  Last line (X, Y: run 2; A, B: run 1):
#  {"bench":"validate","rows":N,"seconds":X,"reladiff_seconds":Y,"ratio":X/Y,"same_keys":true,
#   "zero_diff_seconds":A,"zero_diff_reladiff_seconds":B}
#  Exit 1 when same_keys is false or run 1 was not clean (after the last line), or when a tool fails.
# env: BENCH_ROWS, BENCH_THREADS, CRANIUM_BIN (this binary instead of the release build; no cargo build),
#      PRODUCTION_MYSQL_URL, WAREHOUSE_URL (the two servers), BENCH_RELADIFF_VENV (the virtualenv's directory)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${BENCH_ROWS:-10000000}
THREADS=${BENCH_THREADS:-4}
if ! [[ $ROWS =~ ^[0-9]+$ ]] || ((ROWS < 1000)); then echo "BENCH_ROWS must be a number >= 1000" >&2; exit 2; fi
[[ $THREADS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_THREADS must be a positive number" >&2; exit 2; }
here=scripts/bench/validate
if [ -n "${CRANIUM_BIN:-}" ]; then
  bin=$CRANIUM_BIN
else
  cargo build --release --locked -q --bin cranium
  bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/cranium"
  [ -x "$bin" ] || bin="${CARGO_TARGET_DIR}/release/cranium"
fi
MY=${PRODUCTION_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
PG=${WAREHOUSE_URL:-postgres://postgres@127.0.0.1:5432/test}
export PRODUCTION_MYSQL_URL=$MY WAREHOUSE_URL=$PG # for data.sh
PG_RELADIFF=${PG/#postgres:\/\//postgresql://}   # reladiff knows only the postgresql:// scheme
venv=${BENCH_RELADIFF_VENV:-$HOME/.cache/cranium/bench/reladiff-venv}
table="bench_validate_$$"

dir=$(mktemp -d)
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  bash "$here/data.sh" drop "$table" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.3f", ms / 1000 }'; }

# --- reladiff ---------------------------------------------------------------------------------------
if ! cmp -s "$here/requirements.txt" "$venv/.cranium-requirements.txt"; then
  echo "installing reladiff 0.6.0 into $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$venv/.cranium-requirements.txt"
fi
py="$venv/bin/python"

# --- data -------------------------------------------------------------------------------------------
s=$(now_ms)
bash "$here/data.sh" build "$table" "$ROWS"
echo "built $table: $ROWS identical rows on each side in $(secs $(($(now_ms) - s))) s"

# run_cranium NAME / run_reladiff NAME: one run into $dir/NAME.*; set cranium_ms + cranium_rc / reladiff_ms
run_cranium() {
  local s e
  s=$(now_ms)
  cranium_rc=0
  "$bin" diff "$MY" "$table" "$PG" "$table" --key id --threads "$THREADS" --format json \
    >"$dir/$1.cranium.out" 2>"$dir/$1.cranium.err" || cranium_rc=$?
  e=$(now_ms)
  cranium_ms=$((e - s))
  if ((cranium_rc > 1)); then
    tail -n 30 "$dir/$1.cranium.err" >&2
    echo "cranium diff failed (exit $cranium_rc)" >&2
    exit 1
  fi
}
run_reladiff() {
  local s e
  s=$(now_ms)
  COLUMNS=100000 "$py" "$here/reladiff_mb4.py" "$MY" "$table" "$PG_RELADIFF" "$table" \
    -k id -c '%' -j "$THREADS" --json --skip-sort-results >"$dir/$1.reladiff.jsonl" 2>"$dir/$1.reladiff.err" ||
    { tail -n 30 "$dir/$1.reladiff.err" >&2; echo "reladiff failed" >&2; exit 1; }
  e=$(now_ms)
  reladiff_ms=$((e - s))
}
# compare NAME EXPECTED_KEYS_FILE: prints true/false (same_keys), the details on stderr
compare() {
  "$py" "$here/keys.py" --cranium "$dir/$1.cranium.out" --cranium-exit "$cranium_rc" \
    --reladiff "$dir/$1.reladiff.jsonl" --expected "$2"
}

# --- run 1: 0 differences ---------------------------------------------------------------------------
run_cranium zero
run_reladiff zero
zero_ms=$cranium_ms
zero_reladiff_ms=$reladiff_ms
: >"$dir/none.keys"
zero_clean=$(compare zero "$dir/none.keys")
echo "run 1 (0 differences): cranium diff $(secs "$zero_ms") s, reladiff $(secs "$zero_reladiff_ms") s; both report nothing: $zero_clean"

# --- run 2: 10 differences --------------------------------------------------------------------------
bash "$here/data.sh" seed "$table" "$ROWS" "$dir/expected.keys"
echo "seeded 10 differences on the PostgreSQL side: $(cut -f2 "$dir/expected.keys" | paste -sd' ')"
run_cranium ten
run_reladiff ten
same_keys=$(compare ten "$dir/expected.keys")
x=$(secs "$cranium_ms")
y=$(secs "$reladiff_ms")
r=$(awk -v a="$cranium_ms" -v b="$reladiff_ms" 'BEGIN { printf "%.3f", a / b }')
echo "run 2 (10 differences): cranium diff $x s, reladiff $y s, ratio $r; same keys: $same_keys"

status=0
[ "$zero_clean" = true ] || { echo "FAIL: run 1 (identical tables) reported differences" >&2; status=1; }
[ "$same_keys" = true ] || { echo "FAIL: run 2: the tools' key sets differ from each other or from the 10 expected" >&2; status=1; }
echo "{\"bench\":\"validate\",\"rows\":$ROWS,\"seconds\":$x,\"reladiff_seconds\":$y,\"ratio\":$r,\"same_keys\":$same_keys,\"zero_diff_seconds\":$(secs "$zero_ms"),\"zero_diff_reladiff_seconds\":$(secs "$zero_reladiff_ms")}"
exit $status
