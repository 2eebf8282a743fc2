#!/usr/bin/env bash
# HTTP publish throughput of one node on Redis: plain, durable and idempotent
# publishes under the same load (wrk, 32 connections, 4 s each, ROUNDS rounds).
# Needs wrk (apt-get install wrk) and redis-server; uses its own Redis on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
command -v wrk >/dev/null || { echo "publish-cost: install wrk (apt-get install wrk)"; exit 1; }
[ -x target/release/herald ] || cargo build --release --bin herald
dir=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(port); HP=$(port)
cat > "$dir/herald.toml" <<'TOML'
[namespaces.bench]
publish = "anyone"
[namespaces.dur]
history_size = 1000
publish = "anyone"
TOML
redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --logfile "$dir/redis.log"
trap 'kill $HPID 2>/dev/null || true; redis-cli -p $RP shutdown nosave >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
RUST_LOG=warn target/release/herald --listen 127.0.0.1:$HP --redis redis://127.0.0.1:$RP --config "$dir/herald.toml" 2>"$dir/herald.log" &
HPID=$!
for _ in $(seq 100); do curl -sf 127.0.0.1:$HP/readyz >/dev/null && break; sleep 0.1; done
for round in $(seq "$ROUNDS"); do
  for kind in plain durable idempotent; do
    rps=$(wrk -t1 -c32 -d4s -s bench/lua/$kind.lua http://127.0.0.1:$HP/api/publish | awk '/Requests\/sec/ {print $2}')
    echo "round $round $kind: $rps publishes/s"
  done
done
