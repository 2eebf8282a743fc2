#!/usr/bin/env bash
# Browser client and demo tests: Node unit tests (tests/js) and Playwright tests in Debian's
# Chromium against real herald nodes and a throwaway redis-server (tests/browser).
# Installs what is missing (chromium, redis-server via apt; npm ci; the release binary and
# the seat service example).
# Never downloads a browser build of Playwright's own.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "browser-tests: $* missing and not root; install it with apt-get" >&2
    exit 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x /usr/bin/chromium ]; then
  echo "browser-tests: installing chromium"
  apt_install chromium
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "browser-tests: installing redis-server"
  apt_install redis-server
fi

# The dependencies exactly as locked; playwright-core ships no browser download step.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund

if [ ! -x target/release/herald ]; then
  echo "browser-tests: building target/release/herald"
  cargo build --release
fi
# The seat-reservation service of the seat demo (tests/browser/seats.test.mjs).
if [ ! -x target/release/examples/seats ]; then
  echo "browser-tests: building target/release/examples/seats"
  cargo build --release --example seats
fi

mkdir -p test-artifacts
node --test tests/js/
node --test tests/browser/
