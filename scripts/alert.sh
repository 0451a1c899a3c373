#!/usr/bin/env bash
# Alert channel for the reference project: receives the alert as JSON on standard input and prints it.
# Replace with a call to your pager or chat tool.
set -euo pipefail
channel="${1:-alerts}"
payload="$(cat)"
printf '[alert:%s] %s\n' "$channel" "$payload" >&2
