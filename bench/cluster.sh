#!/usr/bin/env bash
# bench/cluster.sh: many channels on one Redis against a 3-primary Redis Cluster, with
# classic and with sharded pub/sub (docs/BENCHMARKS.md, "Redis Cluster: sharded pub/sub").
#
# N WebSocket clients on K channels over 2 release nodes; a backend's publishes go
# straight into Redis from herald-bench (--via redis: PUBLISH, or SPUBLISH with
# --redis-sharded, pipelined, each to the primary owning the channel's slot) at a fixed
# RATE. Per run: deliveries/s, latency, loss, and the CPU (utime + stime from
# /proc/PID/stat over herald-bench's publish window) of every redis-server, divided by
# the publishes; per shard (primary + replica) also by the publishes its primary took
# (INFO commandstats). Modes, run in turn within each repeat so that each cluster run
# has a single-Redis baseline of the same minutes:
#   single   one redis-server, classic pub/sub (redis.pubsub = "classic")
#   classic  the cluster, redis.pubsub = "classic" (PUBLISH crosses the cluster bus)
#   sharded  the cluster, redis.pubsub = "sharded" (SPUBLISH stays in its shard)
#   single3  one redis-server at RATE/3, one shard's share (a control: what a lower
#            rate alone does to Redis's cost per publish)
#
# Starts its own redis-servers (free ports, never 6379) and nodes, kills everything it
# started on exit, writes OUT/results.md. All traffic stays on 127.0.0.0/8.
#
#   bench/cluster.sh                       # 5 repeats at 10,000 publishes/s, ~10 minutes
#   RATE=20000 bench/cluster.sh            # the same at 20,000/s
#   REPEAT=3 MODES="single sharded" bench/cluster.sh
#   QUICK=1 bench/cluster.sh               # smoke run: 2,000 clients, 1 repeat, ~2 minutes
set -euo pipefail
cd "$(dirname "$0")/.."

REPEAT=${REPEAT:-5}
N=${N:-10000}
K=${K:-5000}
# Publishes/s: what these 2 shared cores sustain in every mode with room to spare (at
# 20,000/s one run fell seconds behind while other work shared the machine).
RATE=${RATE:-10000}
DURATION=${DURATION:-10s}
DRAIN=${DRAIN:-5s}
MODES=${MODES:-"single classic sharded single3"}
REDIS_PUBLISHERS=${REDIS_PUBLISHERS:-8}
REDIS_PIPELINE=${REDIS_PIPELINE:-32}
TOOL_THREADS=${TOOL_THREADS:-2}
# Redis's CPU with the nodes up and nothing published, over this many seconds before
# each run (cluster gossip, the nodes' shard probes): reported, not subtracted.
IDLE_SECS=${IDLE_SECS:-5}
CONFIG=${CONFIG:-bench/bench.toml}
if [[ ${QUICK:-0} == 1 ]]; then
  REPEAT=1 N=2000 K=1000 RATE=4000 DURATION=4s IDLE_SECS=2
fi
OUT=${OUT:-target/bench/cluster-$(date +%Y%m%d-%H%M%S)}

mkdir -p "$OUT/cluster" "$OUT/bin"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/run.log"
echo "bench/cluster.sh: results in $OUT" | tee -a "$LOG"
{
  echo "start: $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
  nproc
  grep -m1 'model name' /proc/cpuinfo
  redis-server --version
  echo "N=$N K=$K RATE=$RATE DURATION=$DURATION REPEAT=$REPEAT MODES=$MODES"
  echo "REDIS_PUBLISHERS=$REDIS_PUBLISHERS REDIS_PIPELINE=$REDIS_PIPELINE TOOL_THREADS=$TOOL_THREADS"
} >>"$LOG"

# ---- processes we start, and their end --------------------------------------------
STARTED=()
cleanup() {
  local pid
  for pid in "${STARTED[@]:-}"; do
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pid in "${STARTED[@]:-}"; do
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every redis-cli call is bounded, so that a stuck server cannot stall the run.
rcli() { timeout 10 redis-cli "$@"; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A free port below the ephemeral range (32768+) whose +10000 (a cluster bus port)
# stays below it too and is free as well.
free_port() {
  local p
  while :; do
    p=$((17000 + RANDOM % 5500))
    if ! port_busy "$p" && ! port_busy $((p + 10000)); then
      echo "$p"
      return
    fi
  done
}
wait_ping() { # PORT
  for _ in $(seq 100); do
    rcli -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis-server on $1 did not answer" >&2
  exit 1
}

# ---- build (a copy, so that later builds in the tree do not change a running bench) --
echo "== build" | tee -a "$LOG"
cargo build --release --bin herald --bin herald-bench 2>&1 | tail -1 | tee -a "$LOG"
cp target/release/herald target/release/herald-bench "$OUT/bin/"
HERALD=$OUT/bin/herald
BENCH=$OUT/bin/herald-bench
git rev-parse --short HEAD >>"$LOG" 2>/dev/null || true

# ---- one Redis --------------------------------------------------------------------
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize no --dir "$OUT" >"$OUT/redis-single.log" 2>&1 &
SINGLE_PID=$!
STARTED+=("$SINGLE_PID")
wait_ping "$REDIS_PORT"
echo "single redis-server pid $SINGLE_PID on 127.0.0.1:$REDIS_PORT" | tee -a "$LOG"

# ---- the cluster: 3 primaries, 3 replicas -----------------------------------------
declare -A PID_OF
CLUSTER_PORTS=()
for _ in 1 2 3 4 5 6; do
  for _try in 1 2 3 4 5; do
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --daemonize no --cluster-enabled yes --cluster-config-file "nodes-$port.conf" \
      --dir "$OUT/cluster" >"$OUT/cluster/redis-$port.log" 2>&1 &
    pid=$!
    STARTED+=("$pid")
    sleep 0.3
    kill -0 "$pid" 2>/dev/null && break # else a port was taken meanwhile: another one
  done
  wait_ping "$port"
  PID_OF[$port]=$pid
  CLUSTER_PORTS+=("$port")
done
seeds=()
for port in "${CLUSTER_PORTS[@]}"; do seeds+=("127.0.0.1:$port"); done
timeout 60 redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes \
  >"$OUT/cluster/create.log" 2>&1 || { cat "$OUT/cluster/create.log" >&2; exit 1; }
settled=0
for _ in $(seq 300); do
  settled=1
  for port in "${CLUSTER_PORTS[@]}"; do
    # (Read whole before grep: with pipefail, grep -q leaving early would fail the pipe.)
    info=$(rcli -p "$port" cluster info 2>&1 || true)
    [[ $info == *cluster_state:ok* ]] || settled=0
    info=$(rcli -p "$port" info replication 2>&1 || true)
    if [[ $info == *role:slave* && $info != *master_link_status:up* ]]; then settled=0; fi
  done
  [[ $settled == 1 ]] && break
  sleep 0.2
done
[[ $settled == 1 ]] || { echo "the cluster did not settle" >&2; exit 1; }
CLUSTER_URL="redis-cluster://${seeds[0]}?$(
  IFS='&'
  rest=("${seeds[@]:1}")
  echo "${rest[*]/#/node=}"
)"
# Shards in primary order: "PRIMARY_PORT REPLICA_PORT", from CLUSTER NODES.
SHARDS=()
nodes=$(rcli -p "${CLUSTER_PORTS[0]}" cluster nodes)
while read -r id addr flags _rest; do
  [[ $flags == *master* ]] || continue
  pport=${addr%%@*}
  pport=${pport##*:}
  rport=$(awk -v id="$id" '$4 == id { a = $2; sub(/@.*/, "", a); sub(/.*:/, "", a); print a }' <<<"$nodes" | head -1)
  SHARDS+=("$pport $rport")
done < <(sort -t: -k2 -n <<<"$nodes")
[[ ${#SHARDS[@]} == 3 ]] || { echo "expected 3 shards: ${SHARDS[*]}" >&2; exit 1; }
{
  echo "cluster: $CLUSTER_URL"
  for i in "${!SHARDS[@]}"; do
    read -r p r <<<"${SHARDS[$i]}"
    echo "shard $((i + 1)): primary $p (pid ${PID_OF[$p]}), replica $r (pid ${PID_OF[$r]})"
  done
} | tee -a "$LOG"

# ---- nodes --------------------------------------------------------------------------
NODE_PIDS=()
NODE_ADDRS=()
start_nodes() { # URL CONFIG
  local url=$1 config=$2 i port pid addr
  NODE_PIDS=()
  NODE_ADDRS=()
  for i in 1 2; do
    for _ in 1 2 3 4 5; do
      port=$(free_port)
      RUST_LOG=${NODE_LOG:-warn} "$HERALD" --listen "127.0.0.1:$port" --redis "$url" \
        --node-id "n$i" --config "$config" --drain-period 200ms --log-format text \
        >>"$OUT/node-n$i.log" 2>&1 &
      pid=$!
      STARTED+=("$pid")
      sleep 0.3
      kill -0 "$pid" 2>/dev/null && break
    done
    NODE_PIDS+=("$pid")
    NODE_ADDRS+=("127.0.0.1:$port")
  done
  for addr in "${NODE_ADDRS[@]}"; do
    for _ in $(seq 150); do
      curl -fsS "http://$addr/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    curl -fsS "http://$addr/readyz" >/dev/null || { echo "node $addr not ready" >&2; exit 1; }
  done
  sleep 0.5
}
stop_nodes() {
  local pid
  for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${NODE_PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  NODE_PIDS=()
  sleep 1
}
join() { local IFS=,; echo "$*"; }
cpu_ticks() { # PID: utime + stime, in clock ticks
  awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
# Connections subscribed to anything on a server (the nodes' subscribers), and to how
# many channels in all: "CLIENTS CHANNELS".
pubsub_clients() { # PORT
  rcli -p "$1" client list | awk '{
    n = 0
    for (i = 1; i <= NF; i++) if ($i ~ /^s?sub=/) { split($i, kv, "="); n += kv[2] }
    if (n > 0) { c++; t += n }
  } END { print c + 0, t + 0 }'
}
# Publishes a server took (PUBLISH and SPUBLISH calls), from INFO commandstats.
publish_calls() { # PORT
  rcli -p "$1" info commandstats |
    awk -F'[:=,]' '/^cmdstat_(s?publish):/ { n += $3 } END { print n + 0 }'
}

SRC_SEQ=0
SOURCES=
next_sources() {
  SRC_SEQ=$((SRC_SEQ + 1))
  local a=$(((SRC_SEQ * 2) % 250 + 2))
  SOURCES="127.0.$((SRC_SEQ / 125 + 20)).$a,127.0.$((SRC_SEQ / 125 + 20)).$((a + 1))"
}

# Node configurations: bench/bench.toml with the pub/sub mode set.
for pubsub in classic sharded; do
  { cat "$CONFIG"; printf '\n[redis]\npubsub = "%s"\n' "$pubsub"; } >"$OUT/node-$pubsub.toml"
done

# One run of MODE: fresh nodes, an idle sample of Redis, herald-bench, the counts.
run_mode() { # MODE REP
  local mode=$1 rep=$2 url pubsub rate=$RATE extra=() aux=() servers=() names=() i p r
  case $mode in
  single | single3)
    url="redis://127.0.0.1:$REDIS_PORT" pubsub=classic
    servers=("$REDIS_PORT") names=(redis)
    [[ $mode == single3 ]] && rate=$((RATE / 3))
    ;;
  classic | sharded)
    url=$CLUSTER_URL pubsub=$mode
    [[ $mode == sharded ]] && extra=(--redis-sharded)
    for i in "${!SHARDS[@]}"; do
      read -r p r <<<"${SHARDS[$i]}"
      servers+=("$p" "$r")
      names+=("s$((i + 1))-primary" "s$((i + 1))-replica")
    done
    ;;
  *)
    echo "unknown mode $mode" >&2
    exit 2
    ;;
  esac
  local pids=()
  for p in "${servers[@]}"; do
    if [[ $p == "$REDIS_PORT" ]]; then pids+=("$SINGLE_PID"); else pids+=("${PID_OF[$p]}"); fi
  done
  for i in "${!servers[@]}"; do aux+=("${names[$i]}=${pids[$i]}"); done

  start_nodes "$url" "$OUT/node-$pubsub.toml"
  echo "== $mode (run $rep/$REPEAT): $rate publishes/s, redis.pubsub = $pubsub" | tee -a "$LOG"
  # Idle: the nodes up, no clients, nothing published.
  local idle_before=() idle_after=() calls_before=() calls_after=()
  for p in "${pids[@]}"; do idle_before+=("$(cpu_ticks "$p")"); done
  sleep "$IDLE_SECS"
  for p in "${pids[@]}"; do idle_after+=("$(cpu_ticks "$p")"); done
  for p in "${servers[@]}"; do calls_before+=("$(publish_calls "$p")"); done
  next_sources
  "$BENCH" --label "$mode" --nodes "$(join "${NODE_ADDRS[@]}")" \
    --pids "$(join "${NODE_PIDS[@]}")" --aux-pids "$(join "${aux[@]}")" \
    --source-ips "$SOURCES" --threads "$TOOL_THREADS" -n "$N" --channels "$K" \
    --rate "$rate" --duration "$DURATION" --drain "$DRAIN" --via redis --redis "$url" \
    --publishers "$REDIS_PUBLISHERS" --redis-pipeline "$REDIS_PIPELINE" "${extra[@]}" \
    --json "$OUT/$mode.$rep.json" 2>>"$OUT/$mode.$rep.progress" | tee -a "$LOG"
  # Still subscribed: the nodes unsubscribe only after unsubscribe_grace (2 s).
  local subs=()
  for p in "${servers[@]}"; do
    calls_after+=("$(publish_calls "$p")")
    subs+=("$(pubsub_clients "$p")")
  done
  stop_nodes
  # What the summary needs besides herald-bench's report.
  local servers_json=()
  for i in "${!servers[@]}"; do
    servers_json+=("$(jq -n --arg name "${names[$i]}" --argjson port "${servers[$i]}" \
      --argjson idle "$((idle_after[i] - idle_before[i]))" \
      --argjson calls "$((calls_after[i] - calls_before[i]))" \
      --argjson subscribers "${subs[$i]% *}" --argjson channels "${subs[$i]#* }" \
      '{name: $name, port: $port, idle_ticks: $idle, publish_calls: $calls,
        subscriber_connections: $subscribers, subscribed_channels: $channels}')")
  done
  printf '%s\n' "${servers_json[@]}" |
    jq -s --arg mode "$mode" --argjson rep "$rep" --argjson idle_secs "$IDLE_SECS" \
      --argjson clk "$(getconf CLK_TCK)" --argjson rate "$rate" \
      '{mode: $mode, rep: $rep, rate: $rate, idle_secs: $idle_secs, clk_tck: $clk, servers: .}' \
      >"$OUT/$mode.$rep.meta.json"
}

for rep in $(seq "$REPEAT"); do
  for mode in $MODES; do
    run_mode "$mode" "$rep"
  done
done

python3 bench/cluster-summary.py "$OUT" >"$OUT/results.md"
cat "$OUT/results.md"
