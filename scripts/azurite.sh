#!/usr/bin/env bash
# Azurite (the Azure Storage emulator, from npm) for the collector's blob checkpoint tests.
#   bash scripts/azurite.sh install   installs the pinned version into .tools/azurite (idempotent)
#   bash scripts/azurite.sh run       serves blobs on 127.0.0.1:${AZURITE_BLOB_PORT:-10000} in the foreground
# The test suite starts its own instance on a free loopback port (tests/fixtures/azurite.py); `run` is for
# trying the blob store by hand. Telemetry is always off and it never listens beyond loopback.
set -euo pipefail
cd "$(dirname "$0")/.."

# 3.35 is the newest release that runs on Node 20 (later ones need Node 21+).
AZURITE_VERSION=3.35.0
PREFIX=.tools/azurite
STAMP=$PREFIX/.installed-$AZURITE_VERSION

install() {
  if [ -f "$STAMP" ] && [ -x "$PREFIX/node_modules/.bin/azurite-blob" ]; then
    return 0
  fi
  command -v npm >/dev/null || { echo "azurite.sh: npm is needed to install Azurite; install Node.js and npm" >&2; exit 1; }
  mkdir -p "$PREFIX"
  npm install --prefix "$PREFIX" --no-audit --no-fund --no-save --loglevel=error "azurite@$AZURITE_VERSION"
  rm -f "$PREFIX"/.installed-*
  touch "$STAMP"
}

run() {
  install
  local data=.tools/azurite/data
  mkdir -p "$data"
  exec "$PREFIX/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "${AZURITE_BLOB_PORT:-10000}" \
    --location "$data" --disableTelemetry --skipApiVersionCheck --loose --silent
}

case "${1:-}" in
  install) install ;;
  run) run ;;
  *) echo "usage: bash scripts/azurite.sh install|run" >&2; exit 2 ;;
esac
