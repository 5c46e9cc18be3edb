#!/usr/bin/env bash
# Start a Sentinel-managed Redis on 127.0.0.1: a master, one replica of it and
# one sentinel (quorum 1) monitoring it as `mymaster`, each on a free port, no
# persistence.
#
# Usage: redis-sentinel-up.sh STATE_DIR
# Env:   SENTINEL_REDIS_PASSWORD  if set: requirepass + masterauth on the master
#                                 and the replica, `sentinel auth-pass` on the
#                                 sentinel (the sentinel itself has no password)
#
# STATE_DIR receives redis-sentinel-master, redis-sentinel-replica and
# redis-sentinel {pid,log} files, and sentinel/ (the data dirs master/ and
# replica/, and sentinel.conf, which the sentinel rewrites as it learns). These
# lines are set in STATE_DIR/env (created if missing; other lines are kept):
#   JOBRETRY_TEST_SENTINEL_URL          redis://127.0.0.1:SENTINELPORT
#   JOBRETRY_TEST_SENTINEL_MASTER       mymaster
#   JOBRETRY_TEST_SENTINEL_MASTER_URL   redis://127.0.0.1:MASTERPORT
#   JOBRETRY_TEST_SENTINEL_REPLICA_URL  redis://127.0.0.1:REPLICAPORT
#   JOBRETRY_TEST_SENTINEL_REDIS_PASSWORD  (only with SENTINEL_REDIS_PASSWORD;
#                                          the two data URLs then carry it too)
# Processes still running from an earlier run on the same STATE_DIR are
# stopped first. down.sh STATE_DIR stops them.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/platform/lib.sh
. "$HERE/lib.sh"

(($# == 1)) || die "usage: $0 STATE_DIR"
mkdir -p "$1"
STATE=$(cd "$1" && pwd)
SDIR="$STATE/sentinel"
NAME=mymaster
PASSWORD=${SENTINEL_REDIS_PASSWORD:-}
# Sentinel writes auth-pass back unquoted when it rewrites its config, so a
# password with blanks, quotes or backslashes would not survive a restart.
if [[ $PASSWORD =~ [[:space:][:cntrl:]\"\'\\] ]]; then
  die "SENTINEL_REDIS_PASSWORD must not contain blanks, quotes or backslashes"
fi
START=$SECONDS

if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  "$HERE/install-deps.sh"
fi
# The Debian redis-sentinel package provides `redis-sentinel`; redis-server
# --sentinel is the same thing.
if command -v redis-sentinel >/dev/null; then
  SENTINEL_CMD=(redis-sentinel)
else
  SENTINEL_CMD=(redis-server)
fi

stop_all() {
  stop_pidfiles redis- "$STATE/redis-sentinel.pid"
  stop_pidfiles redis-server "$STATE/redis-sentinel-replica.pid" "$STATE/redis-sentinel-master.pid"
}
stop_all
rm -rf "$SDIR" "$STATE"/redis-sentinel*.log
mkdir -p "$SDIR/master" "$SDIR/replica"

on_exit() {
  local rc=$?
  if ((rc != 0)); then
    local f
    for f in "$STATE"/redis-sentinel*.log; do
      [[ -f $f ]] || continue
      log "---- tail of $f"
      tail -n 30 "$f" >&2 || true
    done
    stop_all >/dev/null 2>&1 || true
    log "redis-sentinel-up.sh failed (exit $rc)"
  fi
}
trap on_exit EXIT

mapfile -t PORTS < <(free_ports 3)
((${#PORTS[@]} == 3)) || die "could not pick free ports"
MASTER_PORT=${PORTS[0]} REPLICA_PORT=${PORTS[1]} SENTINEL_PORT=${PORTS[2]}

# redis-cli against a data node (AUTH from the environment, so no warning).
data_cli() {
  local port=$1
  shift
  if [[ -n $PASSWORD ]]; then
    REDISCLI_AUTH=$PASSWORD redis-cli -h 127.0.0.1 -p "$port" "$@"
  else
    redis-cli -h 127.0.0.1 -p "$port" "$@"
  fi
}
sentinel_cli() { redis-cli -h 127.0.0.1 -p "$SENTINEL_PORT" "$@"; }

AUTH_ARGS=()
if [[ -n $PASSWORD ]]; then AUTH_ARGS=(--requirepass "$PASSWORD" --masterauth "$PASSWORD"); fi
data_node() { # NAME PORT DIR [extra args]
  local name=$1 port=$2 dir=$3
  shift 3
  start_bg "$STATE" "$name" redis-server \
    --port "$port" --bind 127.0.0.1 --protected-mode no \
    --save "" --appendonly no --repl-diskless-sync-delay 0 --daemonize no --dir "$dir" \
    "${AUTH_ARGS[@]}" "$@"
}

# ---- master, then the replica ------------------------------------------------
ping_ok() { [[ $(data_cli "$1" ping 2>/dev/null) == PONG ]]; }
data_node redis-sentinel-master "$MASTER_PORT" "$SDIR/master"
wait_for 30 "sentinel master :$MASTER_PORT PING" ping_ok "$MASTER_PORT" || exit 1
data_node redis-sentinel-replica "$REPLICA_PORT" "$SDIR/replica" --replicaof 127.0.0.1 "$MASTER_PORT"
link_up() {
  [[ $(data_cli "$REPLICA_PORT" info replication 2>/dev/null | tr -d '\r' |
    sed -n 's/^master_link_status://p') == up ]]
}
wait_for 30 "replica :$REPLICA_PORT master_link_status:up" link_up || exit 1

# ---- sentinel ------------------------------------------------------------------
# Started once the replica is linked, so the sentinel's first INFO of the master
# already lists it (otherwise it is found only at the next 10s INFO round).
# Config values are double-quoted with \ and " escaped (redis config syntax).
conf_quote() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
{
  echo "port $SENTINEL_PORT"
  echo "bind 127.0.0.1"
  echo "protected-mode no"
  echo "daemonize no"
  echo "dir $(conf_quote "$SDIR")"
  echo "sentinel resolve-hostnames no"
  echo "sentinel monitor $NAME 127.0.0.1 $MASTER_PORT 1"
  echo "sentinel down-after-milliseconds $NAME 2000"
  echo "sentinel failover-timeout $NAME 10000"
  if [[ -n $PASSWORD ]]; then echo "sentinel auth-pass $NAME $(conf_quote "$PASSWORD")"; fi
} >"$SDIR/sentinel.conf"
chmod 600 "$SDIR/sentinel.conf"
start_bg "$STATE" redis-sentinel "${SENTINEL_CMD[@]}" "$SDIR/sentinel.conf" --sentinel

master_known() {
  [[ $(sentinel_cli sentinel get-master-addr-by-name "$NAME" 2>/dev/null | tr -d '\r' | paste -sd:) == "127.0.0.1:$MASTER_PORT" ]]
}
wait_for 30 "sentinel :$SENTINEL_PORT to report master 127.0.0.1:$MASTER_PORT" master_known || exit 1
# The sentinel must also know the replica (for failovers) and see quorum.
replica_known() {
  sentinel_cli sentinel replicas "$NAME" 2>/dev/null | tr -d '\r' | grep -qx "127.0.0.1:$REPLICA_PORT" &&
    sentinel_cli sentinel ckquorum "$NAME" 2>/dev/null | grep -q '^OK'
}
wait_for 30 "sentinel to know replica 127.0.0.1:$REPLICA_PORT" replica_known || exit 1

# ---- env file ------------------------------------------------------------------
USERINFO=
if [[ -n $PASSWORD ]]; then
  USERINFO=":$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$PASSWORD")@"
fi
env_set "$STATE/env" JOBRETRY_TEST_SENTINEL_URL "redis://127.0.0.1:$SENTINEL_PORT"
env_set "$STATE/env" JOBRETRY_TEST_SENTINEL_MASTER "$NAME"
env_set "$STATE/env" JOBRETRY_TEST_SENTINEL_MASTER_URL "redis://${USERINFO}127.0.0.1:$MASTER_PORT"
env_set "$STATE/env" JOBRETRY_TEST_SENTINEL_REPLICA_URL "redis://${USERINFO}127.0.0.1:$REPLICA_PORT"
if [[ -n $PASSWORD ]]; then
  env_set "$STATE/env" JOBRETRY_TEST_SENTINEL_REDIS_PASSWORD "$PASSWORD"
else
  # A password from an earlier run on this STATE_DIR no longer applies.
  env_unset "$STATE/env" JOBRETRY_TEST_SENTINEL_REDIS_PASSWORD
fi

log "redis sentinel up in $((SECONDS - START))s: sentinel :$SENTINEL_PORT ($NAME), master :$MASTER_PORT, replica :$REPLICA_PORT"
