#!/usr/bin/env bash
# The demo: builds the release binary and shows cranium on the reference project.
# What exists so far: lint the project, list the jobs, draw the DAG, plan a backfill across a DST change.
# (Later issues make it run the pipeline end to end.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
bin=target/release/cranium
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release/cranium"

echo "== cranium check"
"$bin" check
echo
echo "== cranium list"
"$bin" list
echo
echo "== cranium graph"
"$bin" graph
echo
echo "== cranium plan events_daily (Europe/Berlin would shift here; the reference runs in UTC)"
"$bin" plan events_daily --from 2026-03-27 --to 2026-04-01
echo
echo "== a bad job file, and what check says about it"
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
"$bin" check --project "$tmp" || echo "(check exited $? as it should)"
