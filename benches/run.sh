#!/usr/bin/env bash
# Retry throughput benchmark: BullMQ retryJobs / job.retry vs our engine and controller.
#
# Usage: benches/run.sh [STATE_DIR]          (default /tmp/jr-bench)
#
# Sets everything up and prints one results table:
#   * a dedicated redis-server on a free port (STATE_DIR/redis), used by nothing else;
#     its data dir keeps the seeded snapshot (db 1, saved to bench.rdb) so a second
#     invocation skips the ~1 min seeding. JR_BENCH_RESEED=1 seeds again.
#   * npm ci in tests/bullmq when node_modules is missing
#   * cargo build --release (the operator binary for c2) and the bench target
#   * the local control plane (tests/platform/up.sh STATE_DIR/platform) for c2, s1, s2, s1a;
#     JR_BENCH_PATHS without them skips it
# Everything it started is stopped on exit. Knobs (see benches/retry.rs):
#   JR_BENCH_PATHS (default a,b,c1-500,c1-1000,c1-2000,c2,s1,s2), JR_BENCH_RUNS (5),
#   JR_BENCH_JOBS (100000), JR_BENCH_CHECK_VARIANTS (1), JR_BENCH_PROBE (1: a BullMQ Worker
#   on another queue times its own Redis commands during every run).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tests/platform/lib.sh
. "$REPO/tests/platform/lib.sh" # wait_established (its log() is replaced just below)
STATE=${1:-/tmp/jr-bench}
mkdir -p "$STATE/redis"
STATE=$(cd "$STATE" && pwd)
PATHS=${JR_BENCH_PATHS:-a,b,c1-500,c1-1000,c1-2000,c2,s1,s2}
log() { printf '[run.sh %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

REDIS_PID=""
PLATFORM=""
cleanup() {
  if [[ -n $REDIS_PID ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
  fi
  if [[ -n $PLATFORM ]]; then
    "$REPO/tests/platform/down.sh" "$PLATFORM" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# ---- dependencies and builds --------------------------------------------------------
command -v redis-server >/dev/null || "$REPO/tests/platform/install-deps.sh"
if [[ ! -d $REPO/tests/bullmq/node_modules/bullmq ]]; then
  log "npm ci in tests/bullmq"
  (cd "$REPO/tests/bullmq" && npm ci --no-audit --no-fund >&2)
fi
log "cargo build --release"
(cd "$REPO" && cargo build --release --bin jobretry-operator >&2)
(cd "$REPO" && cargo bench --bench retry --no-run >&2)

# ---- dedicated redis ------------------------------------------------------------------
[[ ${JR_BENCH_RESEED:-0} == 1 ]] && rm -f "$STATE/redis/bench.rdb"
PORT=$(free_port)
# The bench's redis-server runs at the highest CPU priority when the machine allows it
# (JR_BENCH_REDIS_NICE, default -20), the same for every path: on a small shared machine,
# SLOWLOG (which times calls by the wall clock) then measures the scripts, not how often the
# scheduler preempts Redis for the operator, the control plane or the probe.
NICE=${JR_BENCH_REDIS_NICE:--20}
export JR_BENCH_REDIS_NICE=$NICE JR_BENCH_REDIS_NICE_FELL_BACK=0
# GNU nice runs the command even when it cannot set the priority (a warning only): ask the
# niceness a child really gets.
if [[ $(nice -n "$NICE" nice 2>/dev/null) != "$NICE" ]]; then
  NICE=0
  JR_BENCH_REDIS_NICE_FELL_BACK=1
  log "the machine refused nice $JR_BENCH_REDIS_NICE for redis-server: it runs at 0 (the results file says so)"
fi
log "redis-server at nice $NICE"
nice -n "$NICE" redis-server --port "$PORT" --bind 127.0.0.1 --protected-mode no \
  --save "" --appendonly no --dir "$STATE/redis" --dbfilename bench.rdb \
  --daemonize no >"$STATE/redis/redis.log" 2>&1 &
REDIS_PID=$!
export JR_BENCH_REDIS_PID=$REDIS_PID
for _ in $(seq 1 600); do
  [[ $(redis-cli -p "$PORT" ping 2>/dev/null) == PONG ]] && break
  sleep 0.1
done
[[ $(redis-cli -p "$PORT" ping 2>/dev/null) == PONG ]] || { log "redis did not start"; exit 1; }
log "bench redis-server $(redis-server --version | awk '{print $3}') on port $PORT (pid $REDIS_PID)"

# ---- control plane for c2, s1, s2 ------------------------------------------------------
export JR_BENCH_KUBECONFIG="" JR_BENCH_PLATFORM_STATE=""
if [[ ,$PATHS, =~ ,(c2|s1|s2|s1a), ]]; then
  PLATFORM="$STATE/platform"
  log "starting the control plane (tests/platform/up.sh $PLATFORM)"
  "$REPO/tests/platform/up.sh" "$PLATFORM"
  # shellcheck disable=SC1091
  . "$PLATFORM/env"
  kubectl apply --server-side --force-conflicts -f "$REPO/crds/jobretries.jobretry.io.yaml" >&2
  wait_established jobretries.jobretry.io >&2
  JR_BENCH_KUBECONFIG=$KUBECONFIG
  JR_BENCH_PLATFORM_STATE=$PLATFORM
fi

export JR_BENCH_REDIS="redis://127.0.0.1:$PORT" JR_BENCH_PATHS="$PATHS"
export JR_BENCH_OPERATOR="${CARGO_TARGET_DIR:-$REPO/target}/release/jobretry-operator"
export JR_BENCH_JSON="$STATE/results.json"
cd "$REPO"
cargo bench --bench retry 2> >(tee "$STATE/bench.log" >&2) | tee "$STATE/results.txt"
log "results: $STATE/results.txt (json: $STATE/results.json, log: $STATE/bench.log)"
