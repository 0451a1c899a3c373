#!/usr/bin/env bash
# The secrets sweep: runs the whole reference pipeline (scripts/demo.sh: extraction, exports, loads,
# rollups, verification, the daemon, two daemons on PostgreSQL, the dashboard) with known secret
# values in every credential, then a project whose steps fail on purpose (a wrong MySQL password, a
# broken query) and alert a webhook that takes a bearer token, with --verbose, the daemon's /metrics,
# /health and the dashboard's pages; and searches every log file, report, alert body, error, metric
# and printed line for the secrets. Zero occurrences, or it fails.
#
#   the warehouse password     in WAREHOUSE_URL (PostgreSQL's trust auth takes any)
#   the production password    a MariaDB user made for the sweep, cranium_sweep
#   a wrong password           the failing project's MySQL connection
#   the S3 secret key          garage's key of scripts/services.sh (every S3 request signs with it)
#   the webhook token          the failing project's alert channel, header Authorization: Bearer …
#
# Usage: bash scripts/secrets_sweep.sh     Last line: {"secrets":N,"places":M,"found":K}
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
die() { echo "secrets_sweep: $*" >&2; exit 1; }

bash scripts/services.sh up >/dev/null
eval "$(bash scripts/services.sh env)"
mysql_client=$(command -v mariadb || command -v mysql) || die "no mariadb client"
work=$(mktemp -d)
hook_pid=
cleanup() {
  [ -n "$hook_pid" ] && kill "$hook_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

rand() { python3 -c 'import secrets; print(secrets.token_hex(12))'; }
PG_PW="sweepPG$(rand)"
MY_PW="sweepMY$(rand)"
BAD_PW="sweepBAD$(rand)"
TOKEN="sweepTOKEN$(rand)"
S3_PW=$S3_SECRET_ACCESS_KEY
secrets=("$PG_PW" "$MY_PW" "$BAD_PW" "$TOKEN" "$S3_PW")

"$mysql_client" --protocol=tcp -h 127.0.0.1 -u root test -e "
  CREATE USER IF NOT EXISTS 'cranium_sweep'@'%' IDENTIFIED BY '$MY_PW';
  ALTER USER 'cranium_sweep'@'%' IDENTIFIED BY '$MY_PW';
  CREATE USER IF NOT EXISTS 'cranium_sweep'@'localhost' IDENTIFIED BY '$MY_PW';
  ALTER USER 'cranium_sweep'@'localhost' IDENTIFIED BY '$MY_PW';
  GRANT ALL ON test.* TO 'cranium_sweep'@'%';
  GRANT ALL ON test.* TO 'cranium_sweep'@'localhost';" || die "cannot create the sweep's MariaDB user"

export WAREHOUSE_URL="postgres://postgres:$PG_PW@127.0.0.1:5432/test"
export PRODUCTION_MYSQL_URL="mysql://cranium_sweep:$MY_PW@127.0.0.1:3306/test"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
bin=$CARGO_TARGET_DIR/release/cranium

echo "sweep: the reference pipeline (scripts/demo.sh) with secret credentials"
if ! bash scripts/demo.sh >"$work/demo.out" 2>&1; then
  tail -n 30 "$work/demo.out" | sed 's/^/  /'
  die "the demo failed with the sweep's credentials (output above)"
fi

echo "sweep: a project whose steps fail, alerting a webhook with a bearer token"
hook_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
daemon_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$hook_port" "$work/hook" <<'PY' &
import http.server, sys, os
port, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        with open(os.path.join(out, "bodies.jsonl"), "ab") as f:
            f.write(body + b"\n")
        with open(os.path.join(out, "..", "hook-headers.txt"), "a") as f:
            f.write(str(self.headers) + "\n")
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
hook_pid=$!
p=$work/project
mkdir -p "$p/jobs"
cat >"$p/cranium.yaml" <<YAML
name: sweep
state: sqlite://.cranium/state.db
connections:
  warehouse: { kind: postgres, url: "\${WAREHOUSE_URL}" }
  production: { kind: mysql, url: "\${PRODUCTION_MYSQL_URL}" }
  wrong: { kind: mysql, url: "mysql://cranium_sweep:\${SWEEP_BAD_PW}@127.0.0.1:3306/test" }
  lake: { kind: s3, endpoint: "\${S3_ENDPOINT}", region: "\${S3_REGION}", path_style: true,
          access_key_id: "\${S3_ACCESS_KEY_ID}", secret_access_key: "\${S3_SECRET_ACCESS_KEY}", bucket: "\${S3_BUCKET}" }
alerts:
  hook:
    kind: webhook
    url: http://127.0.0.1:$hook_port/alerts
    headers: { Authorization: "Bearer \${SWEEP_TOKEN}" }
defaults: { alerts: [hook], retries: 0 }
daemon: { listen: 127.0.0.1:$daemon_port }
YAML
cat >"$p/jobs/sweep.yaml" <<'YAML'
job: sweep
schedule: "@daily"
start: 2026-03-01
catchup: false
steps:
  - id: export_wrong
    kind: mysql_to_s3
    connection: wrong
    table: users
    s3: lake
    prefix: "sweep/users/{{ ds }}"
  - id: export
    kind: mysql_to_s3
    connection: production
    table: users
    s3: lake
    prefix: "sweep/users/{{ ds }}"
  - id: broken
    kind: sql
    connection: warehouse
    query: SELECT no_such_column FROM no_such_table
  - id: lua
    kind: lua
    code: |
      cranium.log("info", "connections are not readable from here")
      cranium.query("production", "SELECT COUNT(*) AS n FROM users")
      error("a failing script")
YAML
export SWEEP_BAD_PW=$BAD_PW SWEEP_TOKEN=$TOKEN
(
  cd "$p"
  "$bin" check || true
  "$bin" --verbose run sweep --at 2026-03-01 || true
  "$bin" runs || true
  for s in export_wrong export broken lua; do "$bin" logs sweep 2026-03-01 "$s" || true; done
  "$bin" alerts || true
  "$bin" daemon >"$work/daemon.out" 2>&1 &
  dpid=$!
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$daemon_port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  sleep 3
  for path in /metrics /health /readyz / /jobs/sweep /alerts; do
    curl -sS "http://127.0.0.1:$daemon_port$path" || true
    echo
  done
  kill -TERM "$dpid" 2>/dev/null || true
  wait "$dpid" 2>/dev/null || true
) >"$work/failing.out" 2>&1
grep -q "Bearer $TOKEN" "$work/hook-headers.txt" 2>/dev/null \
  || die "the webhook never received the token: the sweep proves nothing about it"
grep -q "export_wrong" "$work/hook/bodies.jsonl" \
  || die "no alert about the failing export reached the webhook"
rm -f "$work/hook-headers.txt" # the one place the token belongs

# Everywhere cranium writes or prints: the demo's project state (.cranium: logs, the store, the
# daemon's and the dashboard's logs; reports/), the printed output, alert bodies, the failing project.
places=("$work" "$root/.cranium" "$root/reports")
found=0
for s in "${secrets[@]}"; do
  hits=$(grep -rlaF -- "$s" "${places[@]}" 2>/dev/null || true)
  if [ -n "$hits" ]; then
    found=$((found + $(wc -l <<<"$hits")))
    echo "sweep: a secret (${s:0:9}…) appears in:"
    sed 's/^/  /' <<<"$hits"
    grep -rhaoF -m2 -- "$s" "${places[@]}" >/dev/null 2>&1 || true
  fi
done
files=$(find "${places[@]}" -type f 2>/dev/null | wc -l)
if [ "$found" = 0 ]; then
  echo "sweep: none of ${#secrets[@]} secrets in $files files (logs, reports, the store, alerts, metrics, output)"
fi
echo "{\"secrets\":${#secrets[@]},\"places\":$files,\"found\":$found}"
[ "$found" = 0 ]
