#!/usr/bin/env bash
# Starts the loopback services the test suite needs (if their installers are present), then runs the
# given test command. Each service script prints the environment the tests read and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
if [ -x scripts/azurite.sh ]; then
  eval "$(scripts/azurite.sh start)"
  pids+=("${AZURITE_PID:-}")
fi
"$@"
