#!/usr/bin/env bash
# The demo: builds the release binary and runs the reference pipeline for one day.
#
#   1. build        cargo build --release --locked
#   2. lint         check, list, graph, and what check says about a bad job file
#   3. events       start tansu (Kafka) and garage (S3) with scripts/services.sh (installed on first use),
#                   produce DAY's app events and partner API requests (with late and malformed records),
#                   run events_hourly for DAY's 24 hours: hourly folders in S3, dead letters, manifests
#   4. production   seed the product database (users, channels, recipes) in MariaDB `test`
#   5. warehouse    create the warehouse tables in PostgreSQL `test` (schema analytics), and run
#                   product_daily for DAY: MySQL → S3 exports (mysql_to_s3), S3 → warehouse merges
#                   (s3_to_redshift)
#   6. run          cranium clear + run of events_daily for DAY: its loads from S3, the Lua check, the rollups
#   7. rollups      daily active users, recipe runs per channel, partner API health, channel alarms
#   8. verify       a row changed in production after the export; verify_daily catches it (summary,
#                   differing row, the alert); the next export and load; verify_daily passes
#   9. daemon       cranium daemon runs the reference project: the day's jobs paused, a demo job on a
#                   5-second schedule added by hot reload, status and /health, a refused reload, a
#                   clean stop with SIGTERM
#  10. fleet        two daemons on one PostgreSQL store (a throwaway schema): one leads, both run steps;
#                   the leader is SIGKILLed and the other leads within a second; runs show their daemon
#  11. dashboard    cranium ui over the demo's store: the jobs, the day's grid, the failed verification
#                   and its rerun, the lag, the validation reports; with --serve it keeps serving
#                   until Ctrl-C and prints the URL
#
# Usage: bash scripts/demo.sh [--serve]
#
# Needs: PostgreSQL on 127.0.0.1:5432 (user postgres, trust, db test), MariaDB on 127.0.0.1:3306 (root, no
# password, db test), their clients (psql, mariadb), python3. The same URLs as cranium.yaml can be overridden
# with WAREHOUSE_URL and PRODUCTION_MYSQL_URL. Rerunnable: every run gives the same data and rollups.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n======== %s\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }

serve=0
for arg in "$@"; do
  case $arg in
    --serve) serve=1 ;;
    *) die "unknown argument '$arg' (usage: bash scripts/demo.sh [--serve])" ;;
  esac
done

for tool in cargo python3 psql; do
  command -v "$tool" >/dev/null || die "'$tool' is not installed"
done
mysql_client=$(command -v mariadb || command -v mysql) || die "neither 'mariadb' nor 'mysql' client is installed"

DAY=${DEMO_DAY:-2026-03-01}  # the day whose events are generated and rolled up (UTC, like events_daily)
NEXT=$(python3 -c 'import datetime,sys; print(datetime.date.fromisoformat(sys.argv[1]) + datetime.timedelta(days=1))' "$DAY") \
  || die "DEMO_DAY must be a date, YYYY-MM-DD"

# The warehouse (PostgreSQL standing in for Redshift) and production (MariaDB), as cranium.yaml sees them.
export WAREHOUSE_URL=${WAREHOUSE_URL:-postgres://postgres@127.0.0.1:5432/test}
export PRODUCTION_MYSQL_URL=${PRODUCTION_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
export PGTZ=UTC  # warehouse timestamps print in UTC, and MySQL DATETIMEs (UTC) load as such
psql_() { psql -X -q -v ON_ERROR_STOP=1 "$WAREHOUSE_URL" "$@"; }
[[ $PRODUCTION_MYSQL_URL =~ ^mysql://([^:@/]+)(:([^@]*))?@([^:/]+)(:([0-9]+))?/([^?]+) ]] \
  || die "PRODUCTION_MYSQL_URL must look like mysql://user[:password]@host[:port]/db"
my_user=${BASH_REMATCH[1]} my_password=${BASH_REMATCH[3]} my_host=${BASH_REMATCH[4]}
my_port=${BASH_REMATCH[6]:-3306} my_db=${BASH_REMATCH[7]}
if [ -n "$my_password" ]; then export MYSQL_PWD="$my_password"; fi
mysql_() {
  "$mysql_client" --protocol=tcp -h "$my_host" -P "$my_port" -u "$my_user" --default-character-set=utf8mb4 \
    "$my_db" "$@"
}

psql_ -c 'SELECT 1' >/dev/null || die "cannot reach PostgreSQL at $WAREHOUSE_URL"
mysql_ -e 'SELECT 1' >/dev/null || die "cannot reach MariaDB at $my_host:$my_port (database $my_db)"

section "1. build (cargo build --release --locked; the first build takes several minutes)"
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-target}/release/cranium"
"$bin" --version
started=$(date +%s)

section "2. lint: cranium check, list, graph events_daily"
"$bin" check
echo
"$bin" list
echo
"$bin" graph events_daily

echo
echo "-- a job file with a typo, an impossible day of week and broken SQL; cranium check says:"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r cranium.yaml jobs sql scripts "$tmp"/
cat > "$tmp/jobs/typo.yaml" <<'YAML'
job: typo
schedule: "0 3 * * 8"
start: 2026-01-01
steps:
  - id: a
    kind: sql
    connection: warehouse
    retires: 3
    query: SELECT FROM WHERE
YAML
if "$bin" check --project "$tmp"; then
  die "cranium check accepted a broken job file"
else
  echo "(check exited $?, as it should)"
fi

section "3. events: Kafka (tansu) and S3 (garage) on loopback; a day of events; events_hourly for its 24 hours"
bash scripts/services.sh up | sed -n '1,4p'
eval "$(bash scripts/services.sh env)"
cargo build --release --locked -q --example kafka_produce
produce="${CARGO_TARGET_DIR:-target}/release/examples/kafka_produce"
for topic in app_events api_requests; do
  python3 scripts/demo/generate.py events-jsonl --day "$DAY" --topic "$topic" > "$tmp/$topic.jsonl"
  # The topics live in the broker's memory: a second demo run against the same broker adds nothing.
  "$produce" --brokers "$KAFKA_BROKERS" --topic "$topic" --jsonl "$tmp/$topic.jsonl" --if-empty > "$tmp/produced.json"
  # Freshly produced (a new broker): extract the day again. Object keys come from offsets, and the
  # generator and the partitioning are deterministic, so the objects are rewritten, not added.
  grep -q skipped "$tmp/produced.json" || "$bin" clear events_hourly --from "$DAY" --to "$NEXT" >/dev/null
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("skipped") or "{topic}: produced {records:,} records ({mb:.1f} MB) in {seconds:.1f}s".format(mb=r["bytes"]/1e6, **r))' "$tmp/produced.json"
done
echo
echo "\$ cranium backfill events_hourly --from $DAY --to $NEXT --max-active-runs 1"
"$bin" backfill events_hourly --from "$DAY" --to "$NEXT" --max-active-runs 1 | tail -n 3
echo
echo "\$ cranium logs events_hourly ${DAY}T20:00 extract_app_events"
"$bin" logs events_hourly "${DAY}T20:00" extract_app_events | grep -E "batch|succeeded" | cut -c1-260
echo
echo "-- what landed in S3 (manifests of the 24 runs, from the metadata store):"
python3 - "$DAY" "$NEXT" <<'PY'
import json, sqlite3, sys
db = sqlite3.connect(".cranium/state.db")
rows = db.execute(
    "SELECT step, outputs FROM step_intervals WHERE job = 'events_hourly' AND state = 'success' "
    "AND interval_start >= ? AND interval_start < ? ORDER BY step, interval_start", sys.argv[1:3]).fetchall()
by_step = {}
for step, outputs in rows:
    o = json.loads(outputs) or {}
    s = by_step.setdefault(step, {"runs": 0, "records": 0, "objects": 0, "dead": 0, "bytes": 0, "hours": set()})
    s["runs"] += 1
    s["records"] += o.get("records", 0)
    s["objects"] += o.get("objects", 0)
    s["dead"] += o.get("dead_letters", 0)
    s["bytes"] += o.get("stored_bytes", 0)
    for m in o.get("manifests", []):
        for obj in m.get("objects", []):
            s["hours"].add("/".join(obj["key"].split("/")[-5:-1]))
for step, s in by_step.items():
    print(f"{step}: {s['runs']} runs, {s['records']:,} records in {s['objects']} objects "
          f"({s['bytes']/1e6:.1f} MB gzip) over {len(s['hours'])} hour folders, {s['dead']} dead letters")
PY

section "4. production: seed the product database in MariaDB (users, channels, recipes)"
python3 scripts/demo/generate.py product | mysql_
mysql_ -t -e "
  SELECT (SELECT COUNT(*) FROM users) AS users, (SELECT COUNT(*) FROM channels) AS channels,
         (SELECT COUNT(*) FROM recipes) AS recipes, (SELECT COUNT(*) FROM recipes WHERE enabled) AS enabled;
  SELECT r.id, u.display_name AS owner, r.name AS recipe
  FROM recipes r JOIN users u ON u.id = r.user_id
  WHERE LENGTH(u.display_name) - CHAR_LENGTH(u.display_name) >= 3   -- 4-byte characters: emoji
    AND LENGTH(r.name) - CHAR_LENGTH(r.name) > 2 ORDER BY r.id LIMIT 3;" \
  || die "cannot query the seeded product database"

section "5. warehouse: analytics.* in PostgreSQL; product_daily: MySQL → S3 → warehouse"
python3 scripts/demo/generate.py warehouse-ddl | psql_
"$bin" clear product_daily --from "$DAY" --to "$NEXT" >/dev/null
"$bin" clear verify_daily --from "$DAY" --to "$NEXT" >/dev/null
echo "\$ cranium run product_daily --at $DAY"
"$bin" run product_daily --at "$DAY"
for step in export_users export_channels export_recipes load_users load_channels load_recipes; do
  "$bin" logs product_daily "$DAY" "$step" | grep -E "exported|loaded" | sed 's/^[^ ]* [A-Z]* *//' | cut -c1-200
done

section "6. run: events_daily for $DAY: the loads from S3 (events_hourly's files), then the rollups"
echo "\$ cranium clear events_daily --from $DAY --to $NEXT"
"$bin" clear events_daily --from "$DAY" --to "$NEXT"
echo
echo "\$ cranium run events_daily --at $DAY"
"$bin" run events_daily --at "$DAY"
psql_ -P footer=off -c "
  SELECT (SELECT COUNT(*) FROM analytics.users) AS users, (SELECT COUNT(*) FROM analytics.channels) AS channels,
         (SELECT COUNT(*) FROM analytics.recipes) AS recipes, (SELECT COUNT(*) FROM analytics.app_events) AS app_events,
         (SELECT COUNT(*) FROM analytics.api_requests) AS api_requests" \
  -c "SELECT event_type, platform, event_time, properties FROM analytics.app_events
      WHERE properties::text LIKE '%<email>%' ORDER BY event_time LIMIT 2"
echo "(e-mail addresses replaced on the way to S3 by events_hourly's transform, scripts/lua/scrub_emails.lua)"
echo
echo "\$ cranium runs events_daily --limit 5"
"$bin" runs events_daily --limit 5
echo
echo "\$ cranium logs events_daily $DAY check_volume"
"$bin" logs events_daily "$DAY" check_volume

section "7. rollups (psql)"
psql_ -P footer=off <<SQL
\\echo 'daily active users by platform (analytics.daily_active_users)'
SELECT platform, users, events, round(events::numeric / users, 1) AS events_per_user
FROM analytics.daily_active_users WHERE day = '$DAY'
ORDER BY platform = 'all', users DESC;

\\echo 'top 10 channels by recipe runs (analytics.recipe_runs_per_channel)'
SELECT channel_name AS channel,
       SUM(runs) AS runs,
       SUM(runs) FILTER (WHERE role = 'trigger') AS as_trigger,
       SUM(runs) FILTER (WHERE role = 'action') AS as_action,
       SUM(recipes) AS recipes
FROM analytics.recipe_runs_per_channel WHERE day = '$DAY'
GROUP BY channel_name ORDER BY runs DESC, channel LIMIT 10;

\\echo 'partner API health: the 10 channels with the highest error rate (analytics.api_health_hourly)'
SELECT channel_name AS channel,
       SUM(requests) AS requests,
       SUM(errors) AS errors,
       to_char(100.0 * SUM(errors) / SUM(requests), 'FM990.00') || '%' AS error_rate,
       to_char(100.0 * MAX(error_rate), 'FM990.0') || '%' AS worst_hour,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY p95_ms)::numeric) AS p95_ms_median_hour,
       round(MAX(p95_ms)::numeric) AS p95_ms_worst_hour
FROM analytics.api_health_hourly
WHERE hour >= '$DAY' AND hour < '$NEXT'
GROUP BY channel_name ORDER BY SUM(errors)::float / SUM(requests) DESC, channel LIMIT 10;

\\echo 'channel alarms: hours whose error rate jumped above the day''s mean (analytics.channel_alarms)'
SELECT to_char(hour, 'YYYY-MM-DD HH24:MI') AS hour_utc, channel_name AS channel, requests,
       to_char(100 * error_rate, 'FM990.0') || '%' AS error_rate,
       to_char(100 * day_mean, 'FM990.0') || '%' AS day_mean
FROM analytics.channel_alarms
WHERE hour >= '$DAY' AND hour < '$NEXT'
ORDER BY hour, channel;
SQL

section "8. verify: production MySQL against the warehouse (verify_daily)"
# Production changes after the export without touching updated_at (a job that bypasses the
# application, say): the warehouse copy is now wrong, and only a comparison can tell.
user_id=$(mysql_ -B -N -e "SELECT id FROM users ORDER BY id LIMIT 1 OFFSET 41")
echo "-- in production: UPDATE users SET plan = 'enterprise' WHERE id = $user_id (updated_at unchanged)"
mysql_ -e "UPDATE users SET plan = 'enterprise', updated_at = updated_at WHERE id = $user_id"
echo "\$ cranium run verify_daily --at $DAY"
if "$bin" run verify_daily --at "$DAY"; then
  die "verify_daily passed although production and the warehouse differ"
fi
echo
echo "\$ cranium logs verify_daily $DAY verify_users"
"$bin" logs verify_daily "$DAY" verify_users | grep -E "ERROR mismatch|^ *key" | sed "s/^[^ ]* //" | tail -2
echo
echo "-- the full report (reports/verify_users/$DAY.json):"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: r[k] for k in ("equal","source_rows","target_rows","differing","missing_in_target","only_in_target","seconds","source_bytes","target_bytes")}, indent=1, ensure_ascii=False))' "reports/verify_users/$DAY.json"
echo
echo "-- the alert: verify_daily's channel (alerts: [data-oncall], the command scripts/alert.sh in"
echo "   cranium.yaml) received it during the run; its line, [alert:data-oncall], is above."
echo
echo "-- the next export and load carry the change; verify_daily passes:"
echo "\$ cranium clear product_daily --from $DAY --to $NEXT --steps 'export_users' --downstream"
"$bin" clear product_daily --from "$DAY" --to "$NEXT" --steps export_users --downstream >/dev/null
"$bin" run product_daily --at "$DAY" >/dev/null
"$bin" clear verify_daily --from "$DAY" --to "$NEXT" >/dev/null
echo "\$ cranium run verify_daily --at $DAY"
"$bin" run verify_daily --at "$DAY"
for step in verify_users verify_recipes; do
  "$bin" logs verify_daily "$DAY" "$step" | grep -E "equal" | sed 's/^[^ ]* [A-Z]* *//' | tail -1
done
# (Section 4 seeds production afresh on the next run of the demo.)

section "9. daemon: cranium daemon runs the reference project"
# The reference jobs' real intervals (today's hours and days) are not the demo's data: they are
# paused, and a demo job on a seconds-level schedule runs beside them, added while the daemon runs.
port=${CRANIUM_DEMO_PORT:-8181}
export CRANIUM_LISTEN=127.0.0.1:$port
tick_job=jobs/demo_tick.yaml
daemon_pid=
stop_daemon() {
  [[ -n $daemon_pid ]] && kill -KILL "$daemon_pid" 2>/dev/null || true
  rm -f "$tick_job"
}
trap stop_daemon EXIT
for j in events_hourly events_daily product_daily verify_daily; do
  "$bin" pause "$j" >/dev/null
done
echo "\$ cranium pause events_hourly events_daily product_daily verify_daily"
psql_ -c "CREATE TABLE IF NOT EXISTS analytics.demo_ticks (interval_start timestamptz, ran_at timestamptz DEFAULT now())"
psql_ -c "TRUNCATE analytics.demo_ticks"
echo "\$ cranium daemon &   (log: .cranium/daemon.log)"
"$bin" daemon >.cranium/daemon.log 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat .cranium/daemon.log; die "the daemon did not start"; }
  sleep 0.1
done
echo "-- hot reload: jobs/demo_tick.yaml appears while the daemon runs"
cat >"$tick_job" <<'YAML'
job: demo_tick
description: A demo job on a 5-second schedule (scripts/demo.sh writes and removes it).
schedule: "*/5 * * * * *"
start: 2026-01-01
steps:
  - id: tick
    kind: sql
    connection: warehouse
    query: INSERT INTO analytics.demo_ticks (interval_start) VALUES ({{ interval_start | sql_literal }})
  - id: done
    kind: noop
    after: [tick]
YAML
sleep 12
grep -m1 "reloaded the project" .cranium/daemon.log | sed 's/^[^ ]* *//' || die "the daemon did not reload"
echo
echo "\$ cranium status"
"$bin" status
echo
echo "\$ curl -s http://127.0.0.1:$port/health"
curl -s "http://127.0.0.1:$port/health" | python3 -c 'import json,sys; h=json.load(sys.stdin); print(json.dumps({k: h[k] for k in ("version","store","project_hash","jobs","paused","last_tick","active_runs","running_steps","max_running_steps","pools","reload_errors")}, indent=1))'
echo
echo "-- a broken edit is refused; the previous version keeps running"
sed -i 's/^schedule:/schedul:/' "$tick_job"
sleep 3
curl -s "http://127.0.0.1:$port/health" | python3 -c 'import json,sys; print("reload_errors:", json.load(sys.stdin)["reload_errors"])'
sed -i 's/^schedul:/schedule:/' "$tick_job"
sleep 6
echo
echo "\$ kill -TERM $daemon_pid   (a clean stop: running steps finish, leases are released)"
kill -TERM "$daemon_pid"
wait "$daemon_pid" || die "the daemon did not stop cleanly"
daemon_pid=
grep -E "stopping|daemon stopped" .cranium/daemon.log | sed 's/^[^ ]* *//'
psql_ -At -c "SELECT 'demo_tick ran ' || count(*) || ' intervals, ' || count(DISTINCT interval_start) || ' distinct, the last at ' || to_char(max(interval_start), 'HH24:MI:SS') FROM analytics.demo_ticks"
"$bin" runs demo_tick --limit 3 2>/dev/null || true
rm -f "$tick_job"
for j in events_hourly events_daily product_daily verify_daily; do
  "$bin" unpause "$j" >/dev/null
done

section "10. fleet: two daemons on one PostgreSQL store"
# A small project of its own beside the reference one: the same files would do on two machines.
fleet_dir=$(mktemp -d)
fleet_schema="demo_fleet"
fleet_pids=()
stop_fleet() {
  for p in "${fleet_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$fleet_dir"
}
trap 'stop_daemon; stop_fleet' EXIT
psql_ -c "DROP SCHEMA IF EXISTS $fleet_schema CASCADE" >/dev/null
psql_ -c "CREATE TABLE IF NOT EXISTS analytics.demo_fleet (interval_start timestamptz, step text)"
psql_ -c "TRUNCATE analytics.demo_fleet"
mkdir -p "$fleet_dir/jobs"
cat >"$fleet_dir/cranium.yaml" <<YAML
name: fleet
state: $WAREHOUSE_URL?schema=$fleet_schema
connections:
  warehouse:
    kind: postgres
    url: $WAREHOUSE_URL
daemon:
  listen: off
  lease_ttl: 6s
YAML
cat >"$fleet_dir/jobs/fleet_tick.yaml" <<'YAML'
job: fleet_tick
schedule: "*/2 * * * * *"
start: 2026-01-01
max_active_runs: 4
steps:
  - id: a
    kind: sql
    connection: warehouse
    # Idempotent per interval, as every step should be (README: several daemons).
    query: |
      SELECT pg_sleep(0.3);
      DELETE FROM analytics.demo_fleet WHERE interval_start = {{ interval_start | sql_literal }} AND step = 'a';
      INSERT INTO analytics.demo_fleet VALUES ({{ interval_start | sql_literal }}, 'a')
  - id: b
    kind: sql
    connection: warehouse
    after: [a]
    # Idempotent per interval, as every step should be (README: several daemons).
    query: |
      SELECT pg_sleep(0.3);
      DELETE FROM analytics.demo_fleet WHERE interval_start = {{ interval_start | sql_literal }} AND step = 'b';
      INSERT INTO analytics.demo_fleet VALUES ({{ interval_start | sql_literal }}, 'b')
YAML
"$bin" --project "$fleet_dir" runs >/dev/null  # creates the store's schema once
for id in east west; do
  echo "\$ cranium daemon --id $id &"
  "$bin" --project "$fleet_dir" daemon --id "$id" >"$fleet_dir/$id.log" 2>&1 &
  fleet_pids+=($!)
  sleep 0.5
done
sleep 8
echo
echo "\$ cranium status   (both daemons, their roles and running steps)"
"$bin" --project "$fleet_dir" status | grep -E "^daemon|running" || die "status shows no daemon"
leader=east; leader_pid=${fleet_pids[0]}
grep -q "became the leader" "$fleet_dir/west.log" && { leader=west; leader_pid=${fleet_pids[1]}; }
other=$([[ $leader == east ]] && echo west || echo east)
echo
echo "\$ kill -KILL <$leader's pid>   (the leader dies without a word)"
kill -KILL "$leader_pid"
sleep 8
grep -m1 "became the leader" "$fleet_dir/$other.log" | sed 's/^[^ ]* *//'
grep -m1 "took over a queued run" "$fleet_dir/$other.log" | sed 's/^[^ ]* *//' || true
echo
echo "\$ cranium runs fleet_tick --limit 6"
"$bin" --project "$fleet_dir" runs fleet_tick --limit 6
for p in "${fleet_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${fleet_pids[@]}"; do wait "$p" 2>/dev/null || true; done
fleet_pids=()
psql_ -At -c "SELECT 'fleet_tick: ' || count(DISTINCT interval_start) || ' intervals, each step once: ' || (count(*) = count(DISTINCT (interval_start, step)))::text FROM analytics.demo_fleet"
psql_ -c "DROP SCHEMA IF EXISTS $fleet_schema CASCADE" >/dev/null

section "11. dashboard: cranium ui over the demo's store"
ui_port=${CRANIUM_UI_PORT:-8282}
ui="http://127.0.0.1:$ui_port"
echo "\$ cranium ui --listen 127.0.0.1:$ui_port &"
"$bin" ui --listen "127.0.0.1:$ui_port" >.cranium/ui.log 2>&1 &
ui_pid=$!
stop_ui() { kill "$ui_pid" 2>/dev/null || true; stop_daemon; }
trap stop_ui EXIT
for _ in $(seq 1 100); do curl -sf "$ui/" -o /dev/null && break; sleep 0.1; done
page() {  # what one page shows, in a line: its size gzipped, its server time, and a check
  local path=$1 want=$2 hdr body
  hdr=$(mktemp) body=$(mktemp)
  curl -s --compressed -D "$hdr" -o "$body" "$ui$path"
  local gz; gz=$(curl -s -H 'Accept-Encoding: gzip' "$ui$path" | wc -c)
  local ms; ms=$(tr -d '\r' <"$hdr" | sed -n 's/^server-timing: app;dur=//Ip')
  grep -q -- "$want" "$body" || die "the dashboard's $path does not show '$want'"
  printf '  %-62s %6.1f KB gzipped, %5s ms on the server: shows %s\n' "$path" "$(python3 -c "print($gz / 1024)")" "$ms" "$want"
  rm -f "$hdr" "$body"
}
page "/?until=$NEXT" "verify_daily"
page "/jobs/events_hourly?until=$NEXT&n=100" '<svg class="grid"'
page "/jobs/verify_daily/intervals/${DAY}T00:00:00Z" "failed"
page "/validation?until=$NEXT" "Earlier attempts"
page "/lag" "Consumer lag"
page "/alerts" "<h1>Alerts</h1>"
if [[ $serve == 1 ]]; then
  echo
  echo "The dashboard of the demo's day: $ui/?until=$NEXT"
  echo "  events_hourly's grid:     $ui/jobs/events_hourly?until=$NEXT"
  echo "  the failed verification:  $ui/jobs/verify_daily/intervals/${DAY}T00:00:00Z"
  echo "  validation reports:       $ui/validation?until=$NEXT"
  echo "Serving until Ctrl-C (read-only: set daemon.auth_token to act from it)."
  wait "$ui_pid" || true
else
  kill "$ui_pid" 2>/dev/null || true
  wait "$ui_pid" 2>/dev/null || true
  echo "  (bash scripts/demo.sh --serve keeps it running and prints the URL)"
fi

echo "demo: done in $(( $(date +%s) - started ))s after the build"
