#!/usr/bin/env bash
# The `channels` form of POST /api/publish on one node on Redis: REQUESTS publishes in a
# row, each to CHANNELS channels (half of them durable), ROUNDS rounds, each against a
# fresh node. Prints request latency p50/p99 and node CPU per channel published.
# HERALD=path picks another node binary (an A/B against an older build).
# Needs redis-server and python3; uses its own Redis on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
REQUESTS=${REQUESTS:-1000}
CHANNELS=${CHANNELS:-100}
HERALD=${HERALD:-target/release/herald}
[ -x "$HERALD" ] || cargo build --release --bin herald
dir=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(port)
cat >"$dir/herald.toml" <<'TOML'
[default_namespace]
publish = "anyone"
[namespaces.log]
history_size = 100
publish = "anyone"
TOML
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --logfile "$dir/redis.log"
HPID=
trap 'kill $HPID 2>/dev/null || true; redis-cli -p $RP shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
for round in $(seq "$ROUNDS"); do
  redis-cli -p "$RP" flushall >/dev/null
  HP=$(port)
  RUST_LOG=warn "$HERALD" --listen "127.0.0.1:$HP" --redis "redis://127.0.0.1:$RP" \
    --config "$dir/herald.toml" 2>>"$dir/herald.log" &
  HPID=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$HP/readyz" >/dev/null && break; sleep 0.1; done
  echo "round $round: $(python3 bench/multi-publish.py "$HP" "$HPID" "$REQUESTS" "$CHANNELS")"
  kill "$HPID"; wait "$HPID" 2>/dev/null || true
done
