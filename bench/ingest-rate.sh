#!/usr/bin/env bash
# Ingest throughput: ENTRIES entries XADDed by redis-cli into a stream that 3 release
# nodes ingest (ordered, then unordered); prints entries/s until every entry was read,
# published and acknowledged. Uses its own Redis on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${ENTRIES:-20000}
[ -x target/release/herald ] || cargo build --release --bin herald
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
python3 -c "
for i in range($ENTRIES): print(f'XADD orders.events * customer {i%50} data {i}')" > "$dir/xadd.txt"
run() { # $1: ordered true|false
  cat > "$dir/herald.toml" <<TOML
[namespaces.orders]
history_size = 50000
[[ingest]]
stream = "orders.events"
channel = "orders:{customer}"
start = "0"
batch = 200
ordered = $1
TOML
  RP=$(port)
  redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --logfile "$dir/redis.log"
  for _ in $(seq 50); do redis-cli -p "$RP" ping >/dev/null 2>&1 && break; sleep 0.1; done
  pids=()
  for i in 1 2 3; do
    RUST_LOG=error target/release/herald --listen 127.0.0.1:$(port) --redis redis://127.0.0.1:$RP --config "$dir/herald.toml" --node-id n$i 2>/dev/null &
    pids+=($!)
  done
  sleep 1.5
  start=$(date +%s.%N)
  redis-cli -p "$RP" < "$dir/xadd.txt" > /dev/null
  for _ in $(seq 2400); do
    info=$(redis-cli -p "$RP" XINFO GROUPS orders.events | tr '\n' ' ')
    read_=$(echo "$info" | grep -oE 'entries-read [0-9]+' | awk '{print $2}')
    pend=$(echo "$info" | grep -oE 'pending [0-9]+' | awk '{print $2}')
    [ "$read_" = "$ENTRIES" ] && [ "$pend" = "0" ] && break
    sleep 0.05
  done
  end=$(date +%s.%N)
  python3 -c "print(f'ordered=$1: $ENTRIES entries in {$end-$start:.2f} s: {$ENTRIES/($end-$start):.0f} entries/s')"
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  redis-cli -p "$RP" shutdown nosave >/dev/null 2>&1 || true
}
run true
run false
