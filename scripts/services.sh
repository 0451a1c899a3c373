#!/usr/bin/env bash
# Local services for cranium's integration tests, on loopback only:
#   kafka  tansu (Kafka protocol, in-memory storage)  127.0.0.1:9092, topics app_events, api_requests
#   s3     garage (single node)                        http://127.0.0.1:3900, bucket cranium-lake
#
# usage: scripts/services.sh up|down|stop SERVICE|status|reset|env
#   up      install a missing binary (cargo install, ~10 min each, once), start what is not running,
#           wait until both answer, create topics, layout, key and bucket; prints where they listen
#           and the settings cranium.yaml reads. Idempotent: a second `up` changes nothing.
#   down    stop both (SIGTERM, SIGKILL after a timeout), by the pid files in the state directory
#   stop    stop one: `stop s3` (garage, keeping its data) or `stop kafka` (tansu); the fault tests
#           stop a server under a running step this way, and `up` starts it again
#   status  pid and answer of each; exit 0 when both are up and answering, 3 otherwise
#   reset   down, delete the state directory (garage data, logs), up
#   env     only the `export VAR=value` lines, for `eval "$(scripts/services.sh env)"`
#
# Environment:
#   CRANIUM_SERVICES_DIR      state directory (default ~/.cache/cranium/services): pids, logs, the
#                             rendered garage config, garage metadata and data
#   CRANIUM_SERVICES_TIMEOUT  seconds to wait for a service to answer (default 60)
#   TANSU_BIN, GARAGE_BIN     binaries to use instead of the ones on PATH or in ~/.cargo/bin
#   CRANIUM_TANSU_VERSION, CRANIUM_GARAGE_VERSION
#                             versions `cargo install` fetches when a binary is missing
#                             (default 0.6.0 and 2.5.0, the versions this script was written for)
# tansu keeps topics in memory: records are gone when it stops, and `up` recreates the topics.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SVC=$HERE/services
STATE_DIR=${CRANIUM_SERVICES_DIR:-$HOME/.cache/cranium/services}
STATE_DIR=${STATE_DIR%/}
TIMEOUT=${CRANIUM_SERVICES_TIMEOUT:-60}
TANSU_VERSION=${CRANIUM_TANSU_VERSION:-0.6.0}
GARAGE_VERSION=${CRANIUM_GARAGE_VERSION:-2.5.0}

KAFKA_ADDR=127.0.0.1:9092
KAFKA_TOPICS=(app_events api_requests)
KAFKA_PARTITIONS=4
S3_ADDR=127.0.0.1:3900
GARAGE_RPC_ADDR=127.0.0.1:3901
GARAGE_ADMIN_ADDR=127.0.0.1:3903
S3_REGION=garage
# The test credentials that are the defaults in cranium.yaml.
S3_KEY_ID=GK31c2f218a2e44f485b94239e
S3_SECRET=b892c0665f0ada8a4755dae98baa3b133590e11dae3bcc1f9d769d67f16c3835
S3_KEY_NAME=cranium-test
S3_BUCKET=cranium-lake
# The bucket where the fault tests' own tansu keeps its topics (a broker that survives a restart).
S3_BROKER_BUCKET=cranium-broker

GARAGE_CONFIG=$STATE_DIR/garage.toml
TANSU= # the binaries, resolved (and installed when missing) by `up`
GARAGE=
CARGO_BIN_DIR=${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin

log() { printf 'services: %s\n' "$*" >&2; }
die() {
  printf 'services: error: %s\n' "$*" >&2
  exit 1
}

# The interpreter itself, not a pyenv/asdf shim (a shim costs ~0.3 s a call); -I -S: the probes
# use the standard library only.
# Resolved in the main shell (see the end of the file), once.
PY=
find_python() {
  command -v python3 >/dev/null 2>&1 || die "python3 is required"
  PY=$(python3 -c 'import sys; print(sys.executable)')
}
py() { "$PY" -I -S "$@"; }
probe() { py "$SVC/probe.py" "$@"; }

# The last lines of a log, indented, for error messages.
log_tail() {
  if [[ -s $1 ]]; then
    printf '\n--- last lines of %s ---\n' "$1"
    tail -n "${2:-25}" "$1" | sed 's/\x1b\[[0-9;]*m//g; s/^/  /'
  else
    printf '\n(%s is empty or missing)\n' "$1"
  fi
}

# --- binaries --------------------------------------------------------------------------------

# find_bin NAME OVERRIDE: the override, else NAME on PATH, else cargo's bin directory.
find_bin() {
  local name=$1 override=$2
  if [[ -n $override ]]; then
    [[ -x $override ]] || die "${name^^}_BIN=$override is not an executable"
    printf '%s\n' "$override"
  elif command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  elif [[ -x $CARGO_BIN_DIR/$name ]]; then
    printf '%s\n' "$CARGO_BIN_DIR/$name"
  else
    return 1
  fi
}

# cargo_install CRATE VERSION [cargo args...]: a build of several minutes, with a heartbeat.
cargo_install() {
  local crate=$1 version=$2
  shift 2
  command -v cargo >/dev/null 2>&1 ||
    die "$crate is not installed and cargo is not on PATH (install Rust from https://rustup.rs)"
  mkdir -p "$STATE_DIR"
  local ilog=$STATE_DIR/install-$crate.log
  log "installing $crate $version: cargo install $crate --version $version --locked $* (about 10 minutes on 2 cores; log: $ilog)"
  # CARGO_TARGET_DIR would keep gigabytes of build output around (cargo install otherwise uses
  # a temporary directory).
  env -u CARGO_TARGET_DIR cargo install "$crate" --version "$version" --locked "$@" >"$ilog" 2>&1 </dev/null 9>&- &
  local cpid=$! waited=0
  while kill -0 "$cpid" 2>/dev/null; do
    sleep 5
    waited=$((waited + 5))
    if ((waited % 60 == 0)); then
      log "  still building $crate (${waited}s): $(tail -n 1 "$ilog" | cut -c1-120)"
    fi
  done
  if ! wait "$cpid"; then
    die "cargo install $crate failed$(log_tail "$ilog" 30)"
  fi
  log "installed $crate $version in ${waited}s"
}

tansu_bin() {
  local bin
  if ! bin=$(find_bin tansu "${TANSU_BIN:-}"); then
    # dynostore is the storage engine behind memory://
    cargo_install tansu "$TANSU_VERSION" --features dynostore
    bin=$(find_bin tansu "") || die "tansu is still not found after cargo install (is $CARGO_BIN_DIR writable?)"
  fi
  printf '%s\n' "$bin"
}

garage_bin() {
  local bin
  if ! bin=$(find_bin garage "${GARAGE_BIN:-}"); then
    # Only the sqlite metadata engine (the config uses it): no metrics, lmdb or k2v to build.
    cargo_install garage "$GARAGE_VERSION" --no-default-features --features bundled-libs,sqlite
    bin=$(find_bin garage "") || die "garage is still not found after cargo install (is $CARGO_BIN_DIR writable?)"
  fi
  # The CLI below (json-api, node id, key import --yes) is garage 2.x.
  local v
  v=$("$bin" --version 2>/dev/null | head -n 1 || true)
  [[ $v =~ [^0-9.]2\.[0-9]+ ]] ||
    die "$bin is '$v'; this script needs garage 2.x (set GARAGE_BIN, or: cargo install garage --version $GARAGE_VERSION --locked)"
  printf '%s\n' "$bin"
}

# --- processes -------------------------------------------------------------------------------

# running NAME: prints the pid when the pid file names a live process of that program.
running() {
  local name=$1 pidfile=$STATE_DIR/$1.pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # A service that died while the `up` that started it still runs is a zombie until that exits.
  if [[ -r /proc/$pid/stat ]]; then
    local stat
    stat=$(<"/proc/$pid/stat")
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]] || return 1
  fi
  # Guard against a recycled pid (sh and env: the moment before they exec the service).
  if [[ -r /proc/$pid/comm ]]; then
    case $(<"/proc/$pid/comm") in
      "$name"* | sh | env) ;;
      *) return 1 ;;
    esac
  fi
  printf '%s\n' "$pid"
}

# stopped_state NAME: for status, when `running` says no.
stopped_state() {
  if [[ -f $STATE_DIR/$1.pid ]]; then echo "stale pid file"; else echo stopped; fi
}

# port_in_use HOST:PORT
port_in_use() {
  py -c 'import socket,sys; h,p=sys.argv[1].rsplit(":",1); socket.create_connection((h,int(p)),1).close()' "$1" 2>/dev/null
}

# start NAME BIN ARGS...: detached (own session, stdin closed), pid and log in the state dir.
start() {
  local name=$1 logf=$STATE_DIR/$1.log
  shift
  [[ -f $logf ]] && mv -f "$logf" "$logf.1"
  rm -f "$STATE_DIR/$name.pid"
  # The child writes its own pid, then execs: right even when setsid has to fork. fd 9 is the
  # lock of this script: a daemon holding it would block every later `up` and `down`.
  setsid nohup sh -c 'echo $$ >"$0"; exec "$@"' "$STATE_DIR/$name.pid" "$@" >"$logf" 2>&1 </dev/null 9>&- &
  local i
  for i in $(seq 50); do
    [[ -s $STATE_DIR/$name.pid ]] && break
    sleep 0.1
  done
  [[ -s $STATE_DIR/$name.pid ]] || die "$name did not start$(log_tail "$logf")"
}

# wait_until NAME WHAT COMMAND...: retries COMMAND until it succeeds; fails early when the
# process exits, and after $TIMEOUT seconds, with the end of the service's log.
wait_until() {
  local name=$1 what=$2 deadline=$((SECONDS + TIMEOUT)) out
  shift 2
  while true; do
    if out=$("$@" 2>&1); then
      return 0
    fi
    if ! running "$name" >/dev/null; then
      die "$name exited while waiting for $what$(log_tail "$STATE_DIR/$name.log")"
    fi
    if ((SECONDS >= deadline)); then
      die "$name: timed out after ${TIMEOUT}s waiting for $what; last check: ${out:-no output}$(log_tail "$STATE_DIR/$name.log")"
    fi
    sleep 0.2
  done
}

# stop NAME...: SIGTERM to all (each takes 2-3 s to shut down cleanly), then SIGKILL to any
# still alive after 10 seconds.
stop() {
  local name pid i names=() pids=()
  for name in "$@"; do
    if pid=$(running "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      names+=("$name")
      pids+=("$pid")
    else
      rm -f "$STATE_DIR/$name.pid"
      echo "$name: not running"
    fi
  done
  local deadline=$((SECONDS + 10))
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    name=${names[$i]}
    while running "$name" >/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if running "$name" >/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while running "$name" >/dev/null; do sleep 0.1; done
    fi
    rm -f "$STATE_DIR/$name.pid"
    echo "$name: stopped (pid $pid)"
  done
}

# --- tansu -----------------------------------------------------------------------------------

tansu_up() {
  local bin=$TANSU pid
  if pid=$(running tansu); then
    log "tansu: already running (pid $pid)"
  else
    if port_in_use "$KAFKA_ADDR"; then
      die "$KAFKA_ADDR is taken by a process this script did not start (state dir $STATE_DIR); stop it first"
    fi
    log "tansu: starting on $KAFKA_ADDR"
    # tansu reads its settings from these variables too; the flags below are the only settings.
    start tansu env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT -u STORAGE_ENGINE \
      -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u CLUSTER_ID \
      "$bin" broker \
      --cluster-id cranium \
      --listener-url "tcp://$KAFKA_ADDR" \
      --advertised-listener-url "tcp://$KAFKA_ADDR" \
      --storage-engine memory://tansu/
  fi
  wait_until tansu "a Kafka ApiVersions/Metadata answer on $KAFKA_ADDR" probe kafka "$KAFKA_ADDR"

  # tansu does not create topics on first use: create the missing ones.
  local meta topic have
  meta=$(probe kafka "$KAFKA_ADDR")
  for topic in "${KAFKA_TOPICS[@]}"; do
    have=$(topic_partitions "$meta" "$topic")
    if [[ -z $have ]]; then
      local out
      if ! out=$("$bin" topic create --broker "tcp://$KAFKA_ADDR" --partitions "$KAFKA_PARTITIONS" "$topic" 2>&1); then
        # Another `up` may have won the race; the metadata check below decides.
        [[ $out == *"already exists"* ]] || die "tansu topic create $topic failed: $out"
      fi
      log "tansu: created topic $topic ($KAFKA_PARTITIONS partitions)"
    elif [[ $have != "$KAFKA_PARTITIONS" ]]; then
      log "tansu: warning: topic $topic has $have partitions, not $KAFKA_PARTITIONS"
    fi
  done
  meta=$(probe kafka "$KAFKA_ADDR")
  for topic in "${KAFKA_TOPICS[@]}"; do
    [[ -n $(topic_partitions "$meta" "$topic") ]] || die "topic $topic is missing after creation"
  done
}

# topic_partitions METADATA TOPIC: the partition count, empty when the topic is missing.
topic_partitions() {
  awk -v t="$2" '$1 == "topic" && $2 == t { print $3 }' <<<"$1"
}

tansu_status() {
  local pid meta state=0
  if pid=$(running tansu); then
    printf 'kafka  tansu   running  pid %-7s ' "$pid"
  else
    printf 'kafka  tansu   %-20s ' "$(stopped_state tansu)"
    state=3
  fi
  if meta=$(probe kafka "$KAFKA_ADDR" 2>&1); then
    printf '%s answers (Metadata: %s)\n' "$KAFKA_ADDR" \
      "$(awk '$1 == "topic" { printf "%s%s(%s)", n++ ? ", " : "topics ", $2, $3 } END { if (!n) printf "no topics" }' <<<"$meta")"
  else
    printf '%s not answering (%s)\n' "$KAFKA_ADDR" "$meta"
    state=3
  fi
  return $state
}

# --- garage ----------------------------------------------------------------------------------

# Every garage CLI call: our config, and no GARAGE_* variable from the caller's environment
# overriding it.
gcli() {
  env -u GARAGE_CONFIG_FILE -u GARAGE_RPC_HOST -u GARAGE_RPC_SECRET -u GARAGE_RPC_SECRET_FILE \
    -u GARAGE_ADMIN_TOKEN -u GARAGE_ADMIN_TOKEN_FILE -u GARAGE_METRICS_TOKEN -u GARAGE_METRICS_TOKEN_FILE \
    -u GARAGE_ALLOW_WORLD_READABLE_SECRETS \
    timeout 30 "$GARAGE" -c "$GARAGE_CONFIG" "$@"
}

garage_config() {
  local tpl dir
  tpl=$(<"$SVC/garage.toml.in")
  dir=${STATE_DIR//\\/\\\\}
  dir=${dir//\"/\\\"}
  tpl=${tpl//@STATE_DIR@/$dir}
  tpl=${tpl//@RPC_ADDR@/$GARAGE_RPC_ADDR}
  tpl=${tpl//@S3_ADDR@/$S3_ADDR}
  tpl=${tpl//@S3_REGION@/$S3_REGION}
  tpl=${tpl//@ADMIN_ADDR@/$GARAGE_ADMIN_ADDR}
  mkdir -p "$STATE_DIR/garage/meta" "$STATE_DIR/garage/data"
  # garage refuses to read secrets from a file others can read.
  (
    umask 077
    printf '%s\n' "$tpl" >"$GARAGE_CONFIG.tmp"
  )
  mv -f "$GARAGE_CONFIG.tmp" "$GARAGE_CONFIG"
}

garage_up() {
  local pid addr
  garage_config
  if pid=$(running garage); then
    log "garage: already running (pid $pid)"
  else
    for addr in "$S3_ADDR" "$GARAGE_RPC_ADDR" "$GARAGE_ADMIN_ADDR"; do
      if port_in_use "$addr"; then
        die "$addr is taken by a process this script did not start (state dir $STATE_DIR); stop it first"
      fi
    done
    log "garage: starting (S3 $S3_ADDR, rpc $GARAGE_RPC_ADDR, admin $GARAGE_ADMIN_ADDR)"
    start garage env -u GARAGE_RPC_SECRET -u GARAGE_RPC_SECRET_FILE -u GARAGE_ADMIN_TOKEN \
      -u GARAGE_ADMIN_TOKEN_FILE -u GARAGE_METRICS_TOKEN -u GARAGE_METRICS_TOKEN_FILE \
      "$GARAGE" -c "$GARAGE_CONFIG" server
  fi
  wait_until garage "its RPC to answer (garage status)" gcli status

  # Layout: this node, zone dc1, 1 GB, once.
  local node layout
  node=$(gcli node id -q 2>/dev/null | cut -d@ -f1)
  [[ $node =~ ^[0-9a-f]{64}$ ]] || die "garage node id gave '$node'$(log_tail "$STATE_DIR/garage.log")"
  layout=$(gcli json-api GetClusterLayout)
  local state
  state=$(py -c '
import json, sys
l, node = json.loads(sys.argv[1]), sys.argv[2]
if any(r["id"] == node for r in l["roles"]):
    print("applied")
elif any(r["id"] == node for r in l.get("stagedRoleChanges") or []):
    print("staged", l["version"] + 1)
else:
    print("none", l["version"] + 1)
' "$layout" "$node")
  if [[ $state != applied ]]; then
    local version=${state#* }
    if [[ $state == none* ]]; then
      gcli layout assign -z dc1 -c 1G "$node" >/dev/null
    fi
    gcli layout apply --version "$version" >/dev/null
    log "garage: layout version $version applied (node ${node:0:16}, zone dc1, 1 GB)"
  fi
  wait_until garage "a healthy cluster (http://$GARAGE_ADMIN_ADDR/health)" probe http "http://$GARAGE_ADMIN_ADDR/health"

  # Key, bucket and grant.
  if ! gcli key info "$S3_KEY_ID" >/dev/null 2>&1; then
    local out
    out=$(gcli key import --yes -n "$S3_KEY_NAME" "$S3_KEY_ID" "$S3_SECRET" 2>&1) ||
      die "garage key import failed: $out (a deleted key id cannot be imported again: use 'reset')"
    log "garage: imported key $S3_KEY_ID ($S3_KEY_NAME)"
  fi
  local bucket
  for bucket in "$S3_BUCKET" "$S3_BROKER_BUCKET"; do
    if ! gcli bucket info "$bucket" >/dev/null 2>&1; then
      gcli bucket create "$bucket" >/dev/null
      log "garage: created bucket $bucket"
    fi
    if ! gcli bucket info "$bucket" | grep -Eq "^RWO +$S3_KEY_ID"; then
      gcli bucket allow --read --write --owner "$bucket" --key "$S3_KEY_ID" >/dev/null
      log "garage: granted $S3_KEY_NAME read, write and owner on $bucket"
    fi
  done

  wait_until garage "the S3 API on $S3_ADDR" probe s3-anon "http://$S3_ADDR/"
  wait_until garage "a signed ListObjectsV2 on $S3_BUCKET" \
    probe s3-signed "http://$S3_ADDR" "$S3_REGION" "$S3_KEY_ID" "$S3_SECRET" "$S3_BUCKET"
}

garage_status() {
  local pid out health state=0
  if pid=$(running garage); then
    printf 's3     garage  running  pid %-7s ' "$pid"
  else
    printf 's3     garage  %-20s ' "$(stopped_state garage)"
    state=3
  fi
  if out=$(probe s3-anon "http://$S3_ADDR/" 2>&1); then
    printf 'http://%s answers (%s)' "$S3_ADDR" "$out"
  else
    printf 'http://%s not answering (%s)' "$S3_ADDR" "$out"
    state=3
  fi
  if health=$(probe http "http://$GARAGE_ADMIN_ADDR/health" 2>/dev/null); then
    printf ', cluster healthy\n'
  else
    printf ', cluster not healthy (%s)\n' "${health:-admin API not answering}"
    state=3
  fi
  return $state
}

# --- commands --------------------------------------------------------------------------------

print_env() {
  cat <<EOF
export KAFKA_BROKERS=$KAFKA_ADDR
export S3_ENDPOINT=http://$S3_ADDR
export S3_REGION=$S3_REGION
export S3_ACCESS_KEY_ID=$S3_KEY_ID
export S3_SECRET_ACCESS_KEY=$S3_SECRET
export S3_BUCKET=$S3_BUCKET
export S3_BROKER_BUCKET=$S3_BROKER_BUCKET
EOF
}

lock() {
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "$(dirname "$STATE_DIR")"
  exec 9>"$STATE_DIR.lock"
  # Long enough for a first-time install of both binaries by another `up`.
  flock -w 3600 9 || die "timed out waiting for another services.sh (lock $STATE_DIR.lock)"
}

cmd_up() {
  mkdir -p "$STATE_DIR"
  local t0=$SECONDS
  # Both binaries first (installing what is missing), so a failure starts nothing.
  TANSU=$(tansu_bin)
  GARAGE=$(garage_bin)
  tansu_up
  garage_up
  local tv gv
  tv=$("$TANSU" --version 2>/dev/null | head -n 1)
  gv=$("$GARAGE" --version 2>/dev/null | head -n 1 | cut -d' ' -f1-2)
  cat <<EOF
services up in $((SECONDS - t0))s (state and logs: $STATE_DIR)
  kafka  $tv  $KAFKA_ADDR (pid $(running tansu)), topics: ${KAFKA_TOPICS[*]} ($KAFKA_PARTITIONS partitions, in memory)
  s3     $gv  http://$S3_ADDR (pid $(running garage)), region $S3_REGION, path-style, bucket $S3_BUCKET, key $S3_KEY_NAME
         admin API http://$GARAGE_ADMIN_ADDR, CLI: garage -c $GARAGE_CONFIG ...
$(print_env)
EOF
}

cmd_down() {
  stop garage tansu
}

cmd_stop() {
  case ${1:-} in
    s3 | garage) stop garage ;;
    kafka | tansu) stop tansu ;;
    *) die "stop what? 'stop s3' or 'stop kafka'" ;;
  esac
}

cmd_status() {
  local rc=0
  tansu_status || rc=3
  garage_status || rc=3
  echo "state: $STATE_DIR"
  return $rc
}

cmd_reset() {
  cmd_down
  case $STATE_DIR in
    "" | / | "$HOME" | "$HOME/" | /root | /tmp) die "refusing to delete '$STATE_DIR'" ;;
  esac
  rm -rf "$STATE_DIR"
  echo "deleted $STATE_DIR"
  cmd_up
}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

case ${1:-} in
  up | down | stop | reset | status) find_python ;;
esac
case ${1:-} in
  up) lock; cmd_up ;;
  down) lock; cmd_down ;;
  stop) lock; cmd_stop "${2:-}" ;;
  reset) lock; cmd_reset ;;
  status) cmd_status ;;
  env) print_env ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 64
    ;;
esac
