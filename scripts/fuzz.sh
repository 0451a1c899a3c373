#!/usr/bin/env bash
# Run the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer), each for a given time, one after another.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]   (default: every target)
#
# Each target starts from its committed corpus (fuzz/corpus/<target>, read only) plus what earlier
# runs found (a working corpus under the target folder). A panic, a run over 10 s on one input (a
# hang) or over 2 GB of memory is a crash: its input is written to fuzz/artifacts/<target>/; turn it
# into a regression test beside the code it broke. FUZZ_MERGE=1 merges the inputs that reached new
# code back into fuzz/corpus/<target>, for the next run to start from.
#
# One line per target: `fuzz: <target>: clean for Ns (N runs)` or `fuzz: <target>: CRASH <artifact>`;
# last line: {"fuzz_targets":K,"clean":M,"seconds_each":S}. Exit status 1 when any target crashed.
#
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo-fuzz passes. The targets
# are built without a sanitizer (`-s none`; the crate forbids unsafe code, so what is hunted is
# panics, hangs and unbounded allocation) and with debug assertions (arithmetic overflow panics).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/cranium-fuzz-target}
flags=(-s none --debug-assertions)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
  done
fi

# The longest input each target is given: a job file or a project, a cron line, a template, a
# script, an object of JSON lines, COPY text, a partition's records.
max_len() {
  case $1 in
    cron) echo 256 ;;
    template | copy_text) echo 4096 ;;
    sql_split) echo 8192 ;;
    project_check | kafka_route) echo 16384 ;;
    jsonl) echo 65536 ;;
    *) echo 8192 ;;
  esac
}

(cd fuzz && cargo fuzz build "${flags[@]}")

work=$CARGO_TARGET_DIR/corpus
clean=0
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log=$(mktemp)
  status=0
  (cd fuzz && cargo fuzz run "${flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len="$(max_len "$t")" \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1) >"$log" 2>&1 || status=$?
  if [ "$status" -eq 0 ]; then
    clean=$((clean + 1))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    echo "fuzz: $t: clean for ${secs:-$seconds}s (${runs:-?} runs)"
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
      (cd fuzz && cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "$work/$t" -- -merge=1 \
        -max_len="$(max_len "$t")" -rss_limit_mb=2048 -timeout=10) >/dev/null 2>&1 || true
    fi
  else
    failed=$((failed + 1))
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ -n "$artifact" ]; then
      echo "fuzz: $t: CRASH fuzz/$artifact"
    else
      echo "fuzz: $t: CRASH (no artifact; exit $status): $(grep -m1 -E 'panicked|ERROR|error' "$log" | cut -c1-300)"
    fi
    grep -m1 -A3 'panicked at' "$log" | sed 's/^/  /' || true
  fi
  rm -f "$log"
  # The targets that need a project folder keep one per process for its whole life (libFuzzer
  # exits without dropping it): gone with the process, so removed here.
  rm -rf /dev/shm/cranium-fuzz-* "${TMPDIR:-/tmp}"/cranium-fuzz-* 2>/dev/null || true
done
echo "{\"fuzz_targets\":${#targets[@]},\"clean\":$clean,\"seconds_each\":$seconds}"
[ "$failed" -eq 0 ]
