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

# The binaries under test: the release builds by default; HERALD_BIN / SEATS_BIN
# choose others (.ci/test uses the debug builds it has just made, saving a release
# build on a fresh machine). Built here when missing, so that nothing is skipped.
export HERALD_BIN="${HERALD_BIN:-target/release/herald}"
export SEATS_BIN="${SEATS_BIN:-target/release/examples/seats}"
profile_flag() { case "$1" in *release*) echo "--release" ;; *) echo "" ;; esac; }
if [ ! -x "$HERALD_BIN" ]; then
  echo "browser-tests: building $HERALD_BIN"
  cargo build $(profile_flag "$HERALD_BIN") --bin herald
fi
if [ ! -x "$SEATS_BIN" ]; then
  echo "browser-tests: building $SEATS_BIN"
  cargo build $(profile_flag "$SEATS_BIN") --example seats
fi
HERALD_BIN="$(realpath "$HERALD_BIN")"
SEATS_BIN="$(realpath "$SEATS_BIN")"
export HERALD_BIN SEATS_BIN

mkdir -p test-artifacts
node --test tests/js/
node --test tests/browser/
