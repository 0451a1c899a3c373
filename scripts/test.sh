#!/usr/bin/env bash
# The test command: installs and starts what the tests need (graphviz, promtool, aiosmtpd, chromium,
# playwright-core, tansu, garage), then formatting, lints, every cargo test and the browser tests.
# Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Graphviz renders `cranium graph --format dot` in the CLI tests.
if ! command -v dot >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing graphviz" >&2
    (apt-get install -y -q graphviz >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q graphviz >/dev/null 2>&1; }) \
      || echo "test.sh: could not install graphviz; the dot rendering test will fail" >&2
  fi
fi

# promtool (Debian's prometheus package) checks the daemon's /metrics in tests/daemon_cli.rs.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing prometheus (for promtool)" >&2
    (apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; }) \
      || echo "test.sh: could not install prometheus; the /metrics test will fail" >&2
  fi
fi

# A real SMTP server for the e-mail alert test (Python's aiosmtpd, from PyPI).
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  echo "test.sh: installing aiosmtpd" >&2
  python3 -m pip install -q aiosmtpd >/dev/null 2>&1 \
    || echo "test.sh: could not install aiosmtpd; the e-mail alert test will fail" >&2
fi

# Debian's Chromium and playwright-core (from npm, pinned by tests/browser/package-lock.json) for the
# dashboard's browser tests.
if ! [ -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing chromium" >&2
    (apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; }) \
      || echo "test.sh: could not install chromium; the browser tests will fail" >&2
  fi
fi
if ! [ -d tests/browser/node_modules/playwright-core ]; then
  echo "test.sh: installing playwright-core" >&2
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || echo "test.sh: could not install playwright-core; the browser tests will fail" >&2
fi

# The Kafka broker and the S3 server (installed on first use, ~20 minutes once; then seconds).
bash scripts/services.sh up >/dev/null
eval "$(bash scripts/services.sh env)"

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
# The dashboard in headless Chromium, against the binary the tests above built.
CRANIUM_BIN="${CARGO_TARGET_DIR:-target}/debug/cranium" node --test tests/browser/
