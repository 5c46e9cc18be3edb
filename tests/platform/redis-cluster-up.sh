#!/usr/bin/env bash
# Start a Redis Cluster on 127.0.0.1: 3 masters owning all 16384 slots, each a
# redis-server on a free port with an explicit free cluster-bus port
# (--cluster-port, so the usual port+10000 never has to be free or <= 65535),
# no persistence. Every master also gets a replica (6 nodes; about 1s more
# than 3 nodes) unless REDIS_CLUSTER_REPLICAS=0.
#
# Usage: redis-cluster-up.sh STATE_DIR
# Env:   REDIS_CLUSTER_REPLICAS  1 (default) or 0
#
# STATE_DIR receives redis-cluster-N.{pid,log} per node (N = 1..), the
# `redis-cli --cluster create` output in redis-cluster-create.log, and
# cluster/ (nodes-PORT.conf and a data dir PORT/ per node). These lines are set
# in STATE_DIR/env (created if missing; other lines are kept):
#   JOBRETRY_TEST_CLUSTER_URL    redis://127.0.0.1:P1 (a master)
#   JOBRETRY_TEST_CLUSTER_NODES  127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 (the masters)
#   JOBRETRY_TEST_CLUSTER_REPLICA_NODES  the replicas, same format (only
#                                        when there are replicas)
# Cluster nodes still running from an earlier run on the same STATE_DIR are
# stopped first. down.sh STATE_DIR stops the nodes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/platform/lib.sh
. "$HERE/lib.sh"

(($# == 1)) || die "usage: $0 STATE_DIR"
mkdir -p "$1"
STATE=$(cd "$1" && pwd)
CDIR="$STATE/cluster"
START=$SECONDS

REPLICAS=${REDIS_CLUSTER_REPLICAS:-1}
[[ $REPLICAS == 0 || $REPLICAS == 1 ]] || die "REDIS_CLUSTER_REPLICAS must be 0 or 1, got '$REPLICAS'"
MASTERS=3
NODES=$((MASTERS * (1 + REPLICAS)))

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  "$HERE/install-deps.sh"
fi

shopt -s nullglob
stop_cluster() { stop_pidfiles redis-server "$STATE"/redis-cluster-*.pid; }
stop_cluster
rm -rf "$CDIR" "$STATE"/redis-cluster-*.log
mkdir -p "$CDIR"

# On any failure: show the cluster logs' tails and stop the nodes we started.
on_exit() {
  local rc=$?
  if ((rc != 0)); then
    local f
    for f in "$STATE"/redis-cluster-*.log; do
      log "---- tail of $f"
      tail -n 30 "$f" >&2 || true
    done
    stop_cluster >/dev/null 2>&1 || true
    log "redis-cluster-up.sh failed (exit $rc)"
  fi
}
trap on_exit EXIT

# A client port and a cluster-bus port per node, all distinct.
mapfile -t PORTS < <(free_ports $((2 * NODES)))
((${#PORTS[@]} == 2 * NODES)) || die "could not pick free ports"
NODE_PORTS=("${PORTS[@]:0:NODES}")
BUS_PORTS=("${PORTS[@]:NODES}")

for ((i = 0; i < NODES; i++)); do
  p=${NODE_PORTS[i]}
  mkdir -p "$CDIR/$p"
  start_bg "$STATE" "redis-cluster-$((i + 1))" redis-server \
    --port "$p" --cluster-port "${BUS_PORTS[i]}" \
    --cluster-enabled yes --cluster-config-file "$CDIR/nodes-$p.conf" \
    --cluster-node-timeout 5000 \
    --save "" --appendonly no --repl-diskless-sync-delay 0 \
    --bind 127.0.0.1 --protected-mode no --daemonize no --dir "$CDIR/$p"
done

ping_ok() { [[ $(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null) == PONG ]]; }
for p in "${NODE_PORTS[@]}"; do
  wait_for 30 "cluster node :$p PING" ping_ok "$p" || exit 1
done

ADDRS=()
for p in "${NODE_PORTS[@]}"; do ADDRS+=("127.0.0.1:$p"); done
# (On failure on_exit shows the tail of redis-cluster-create.log too.)
redis-cli --cluster create "${ADDRS[@]}" --cluster-replicas "$REPLICAS" --cluster-yes \
  >"$STATE/redis-cluster-create.log" 2>&1 </dev/null || die "redis-cli --cluster create failed"

# Every node must see the whole cluster healthy, and all nodes must agree on
# the slot map (`--cluster check`), before clients are let loose on it.
info_field() { redis-cli -h 127.0.0.1 -p "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }
node_ok() {
  [[ $(info_field "$1" cluster_state) == ok &&
    $(info_field "$1" cluster_slots_assigned) == 16384 &&
    $(info_field "$1" cluster_slots_ok) == 16384 &&
    $(info_field "$1" cluster_known_nodes) == "$NODES" ]]
}
all_ok() {
  local p
  for p in "${NODE_PORTS[@]}"; do node_ok "$p" || return 1; done
  local check
  check=$(redis-cli --cluster check "127.0.0.1:${NODE_PORTS[0]}" 2>&1) || return 1
  [[ $check == *"All 16384 slots covered"* && $check != *"[ERR]"* ]]
}
wait_for 60 "cluster_state:ok with 16384 slots on every node" all_ok || exit 1

# Which nodes ended up masters (redis-cli picks them) and, with replicas, wait
# for every replica's link to its master.
role() { redis-cli -h 127.0.0.1 -p "$1" role 2>/dev/null | head -n 1 | tr -d '\r'; }
link_up() {
  [[ $(redis-cli -h 127.0.0.1 -p "$1" info replication 2>/dev/null | tr -d '\r' |
    sed -n 's/^master_link_status://p') == up ]]
}
MASTER_ADDRS=() REPLICA_ADDRS=()
for p in "${NODE_PORTS[@]}"; do
  case $(role "$p") in
  master) MASTER_ADDRS+=("127.0.0.1:$p") ;;
  slave)
    REPLICA_ADDRS+=("127.0.0.1:$p")
    wait_for 30 "cluster replica :$p master_link_status:up" link_up "$p" || exit 1
    ;;
  *) die "cluster node :$p has no role" ;;
  esac
done
((${#MASTER_ADDRS[@]} == MASTERS)) || die "expected $MASTERS masters, got: ${MASTER_ADDRS[*]}"

join() { local IFS=,; echo "$*"; }
env_set "$STATE/env" JOBRETRY_TEST_CLUSTER_URL "redis://${MASTER_ADDRS[0]}"
env_set "$STATE/env" JOBRETRY_TEST_CLUSTER_NODES "$(join "${MASTER_ADDRS[@]}")"
if ((REPLICAS)); then
  env_set "$STATE/env" JOBRETRY_TEST_CLUSTER_REPLICA_NODES "$(join "${REPLICA_ADDRS[@]}")"
else
  env_unset "$STATE/env" JOBRETRY_TEST_CLUSTER_REPLICA_NODES
fi

log "redis cluster up in $((SECONDS - START))s: masters ${MASTER_ADDRS[*]}${REPLICA_ADDRS[*]:+, replicas ${REPLICA_ADDRS[*]}}"
