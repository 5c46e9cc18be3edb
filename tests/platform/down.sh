#!/usr/bin/env bash
# Stop everything up.sh, redis-cluster-up.sh and redis-sentinel-up.sh started
# in STATE_DIR (by their pid files). Idempotent: succeeds when nothing is
# running or STATE_DIR does not exist. Logs, certs and data are left in place
# for inspection.
#
# Usage: down.sh STATE_DIR
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# == 1)) || die "usage: $0 STATE_DIR"
STATE=$1
[[ -d $STATE ]] || exit 0

# stop NAME BINARY : TERM the pid in NAME.pid (only if it is still BINARY,
# to be safe against pid reuse), wait up to 15s, then KILL.
stop() {
  local pidfile="$STATE/$1.pid" pid i
  if pid_alive "$pidfile"; then
    pid=$(cat "$pidfile")
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"; then
      kill -TERM "$pid" 2>/dev/null || true
      for ((i = 0; i < 30; i++)); do
        proc_running "$pid" || break
        sleep 0.5
      done
      if proc_running "$pid"; then
        log "$1 (pid $pid) ignored TERM; killing"
        kill -KILL "$pid" 2>/dev/null || true
      fi
      log "stopped $1 (pid $pid)"
    fi
  fi
  rm -f "$pidfile"
}

# Clients first, storage last. The optional topologies (redis-sentinel-up.sh,
# redis-cluster-up.sh) go first: the sentinel before its data nodes, so it
# does not start a failover while they stop; cluster nodes all at once.
shopt -s nullglob
stop_pidfiles redis- "$STATE/redis-sentinel.pid"
stop_pidfiles redis-server "$STATE/redis-sentinel-replica.pid" "$STATE/redis-sentinel-master.pid"
stop_pidfiles redis-server "$STATE"/redis-cluster-*.pid
stop redis redis-server
stop kube-controller-manager kube-controller-manager
stop kube-apiserver kube-apiserver
stop etcd etcd
