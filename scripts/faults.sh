#!/usr/bin/env bash
# The fault tests, one after another, with one line per fault: `survived`, or what went wrong.
# They talk to the real services (PostgreSQL, MariaDB, garage; started by scripts/services.sh).
# Last line: {"faults":N,"survived":M,"fuzz_targets":K}
#
# The servers around a step lost for real: the warehouse PostgreSQL restarted during a sql step and
# a COPY (and a session of it terminated), production MariaDB restarted during an export (and its
# connection killed), the S3 server stopped during a multipart upload and during a manifest write,
# the broker restarted mid-batch, the metadata store stopped for 30 s under a daemon, the SQLite
# store's disk full; and hostile input: corrupt objects in the lake, an object changed after its
# manifest, Lua limits and a panic inside the daemon, hostile alert text and webhook headers, SQL
# injection and ../ through templated fields, and the secrets sweep of the reference pipeline.
# The fuzz targets are counted here and run by scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up >/dev/null
eval "$(bash scripts/services.sh env)"
cargo build --tests --locked -q

# name | test binary (`lib`: the library's unit tests) | test name | `ignored` for tests kept out
# of the default run (a restart of the machine's PostgreSQL ends every other test's sessions;
# stopping the S3 server fails every other test that uses it)
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
  "SQL injection and ../ in templated SQL, Lua and S3 key prefixes|faults|hostile_values_in_templated_fields_change_nothing_that_runs"
  "the S3 server stopped during a multipart upload|faults_services|s3_stopped_during_a_multipart_upload|ignored"
  "the S3 server stopped during a manifest write|faults_services|s3_stopped_during_the_manifest_write|ignored"
  "the broker (tansu on durable storage) restarted during kafka_to_s3|faults_services|the_broker_restarted_during_kafka_to_s3|ignored"
  "the metadata store (PostgreSQL) stopped for 30 s under a running daemon|daemon_cli|the_metadata_store_stopped_for_30s_under_a_running_daemon|ignored"
  "the SQLite store's file system full|store|a_full_disk_under_the_sqlite_store_is_a_clear_error_and_corrupts_nothing"
  "a step that panics inside the engine|lib|engine::tests::a_panicking_step_is_a_failed_attempt_with_the_message"
)
# Whole-pipeline checks that are scripts, not tests: name | command.
scripts=(
  "secrets in every log, report, alert, error, metric and --verbose line of the reference pipeline|bash scripts/secrets_sweep.sh"
)
n=0
ok=0
for f in "${faults[@]}"; do
  IFS='|' read -r name bin test ignored <<<"$f"
  n=$((n + 1))
  log=$(mktemp)
  extra=()
  [[ ${ignored:-} == ignored ]] && extra=(--ignored)
  target=(--test "$bin")
  [[ $bin == lib ]] && target=(--lib)
  if cargo test --locked -q "${target[@]}" -- --exact "$test" "${extra[@]}" >"$log" 2>&1; then
    ok=$((ok + 1))
    echo "fault: $name: survived"
  else
    echo "fault: $name: FAILED: $(grep -m1 -A2 'panicked at' "$log" | tr '\n' ' ' | cut -c1-400)"
  fi
  rm -f "$log"
done
for f in "${scripts[@]}"; do
  IFS='|' read -r name cmd <<<"$f"
  n=$((n + 1))
  log=$(mktemp)
  if $cmd >"$log" 2>&1; then
    ok=$((ok + 1))
    echo "fault: $name: survived"
  else
    echo "fault: $name: FAILED: $(tail -n 5 "$log" | tr '\n' ' ' | cut -c1-400)"
  fi
  rm -f "$log"
done
fuzz=0
[ -d fuzz/fuzz_targets ] && fuzz=$(find fuzz/fuzz_targets -name '*.rs' | wc -l)
echo "{\"faults\":$n,\"survived\":$ok,\"fuzz_targets\":$fuzz}"
