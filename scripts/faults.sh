#!/usr/bin/env bash
# The fault tests, one after another, with one line per fault: `survived`, or what went wrong.
# They talk to the real services (PostgreSQL, MariaDB, garage; started by scripts/services.sh).
# Last line: {"faults":N,"survived":M,"fuzz_targets":K}
#
# Today (issue 15, in progress): the warehouse PostgreSQL restarted during a sql step and during a
# COPY, the warehouse session of a running sql step terminated, the
# production MySQL export connection killed, and corrupt objects in the lake (truncated gzip, bad
# zstd frames, invalid UTF-8, NUL, deep nesting, a 200 MB line, an object changed after its
# manifest), Lua limits exhausted inside the daemon, hostile alert text, MariaDB restarted during an
# export. S3 and the broker stopped mid-batch, the metadata store stopped under a daemon and the fuzz targets are still
# to come.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up >/dev/null
eval "$(bash scripts/services.sh env)"
cargo build --tests --locked -q

# name | test binary | test name | `ignored` for tests kept out of the default run (a restart of
# the machine's PostgreSQL ends every other test's sessions)
faults=(
  "the warehouse PostgreSQL restarted during a sql step|faults_restart|the_warehouse_restarted_during_a_sql_step|ignored"
  "the warehouse PostgreSQL restarted during an s3_to_redshift COPY|faults_restart|the_warehouse_restarted_during_an_s3_to_redshift_copy|ignored"
  "production MariaDB restarted during a mysql_to_s3 export|faults_restart|production_mysql_restarted_during_an_export|ignored"
  "warehouse session terminated during a sql step|faults|a_sql_step_whose_warehouse_session_dies_is_retried_and_applied_once"
  "production MySQL export connection killed|faults|a_mysql_export_whose_connection_is_killed_leaves_no_manifest_and_the_retry_matches"
  "corrupt objects in the lake (gzip, zstd, UTF-8, NUL, nesting, 200 MB line)|s3_to_redshift|corrupt_objects_are_errors_naming_the_object_and_line_and_load_nothing"
  "an object changed after its manifest was written|s3_to_redshift|mysql_through_s3_into_postgres_with_equal_values_and_reruns_add_nothing"
  "Lua scripts exhausting their instruction and memory limits inside the daemon|daemon|a_lua_script_that_exhausts_its_limits_fails_its_attempt_and_the_daemon_runs_on"
  "shell metacharacters and CRLF header lines in alert text and webhook headers|alerts|hostile_alert_text_changes_nothing_that_runs_or_is_sent"
)
n=0
ok=0
for f in "${faults[@]}"; do
  IFS='|' read -r name bin test ignored <<<"$f"
  n=$((n + 1))
  log=$(mktemp)
  extra=()
  [[ ${ignored:-} == ignored ]] && extra=(--ignored)
  if cargo test --locked -q --test "$bin" -- --exact "$test" "${extra[@]}" >"$log" 2>&1; then
    ok=$((ok + 1))
    echo "fault: $name: survived"
  else
    echo "fault: $name: FAILED: $(grep -m1 -A2 'panicked at' "$log" | tr '\n' ' ' | cut -c1-400)"
  fi
  rm -f "$log"
done
fuzz=0
[ -d fuzz/fuzz_targets ] && fuzz=$(find fuzz/fuzz_targets -name '*.rs' | wc -l)
echo "{\"faults\":$n,\"survived\":$ok,\"fuzz_targets\":$fuzz}"
