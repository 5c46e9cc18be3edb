#!/usr/bin/env bash
# The demo, on a fresh machine or a warm one: a local control plane (real kube-apiserver +
# etcd) and Redis, real failed BullMQ jobs, a JobRetry applied, its status shown, then checked
# against what the demo promises (tests/demo/check.cjs): it exits 1 when the run ended otherwise.
# Usage: tests/demo.sh          (stops everything at the end)
#        KEEP=1 tests/demo.sh   (leaves the platform and operator running to explore)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/platform/lib.sh
. tests/platform/lib.sh
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

tests/platform/install-deps.sh
ensure_kubectl # the kubectl on PATH, else one built at the control plane's version
(cd tests/bullmq && npm ci --no-audit --no-fund --loglevel=error)
say "building the operator"
cargo build --locked --bin jobretry-operator
# Where cargo put it: target/ unless CARGO_TARGET_DIR (or a cargo config) says otherwise.
OPERATOR=$(cargo metadata --no-deps --format-version 1 --locked |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/jobretry-operator
STATE=$(mktemp -d "${TMPDIR:-/tmp}/jobretry-demo.XXXXXX")
OP_PID=
cleanup() {
  if [[ -n $OP_PID ]]; then kill "$OP_PID" 2>/dev/null || true; fi
  tests/platform/down.sh "$STATE" >/dev/null 2>&1 || true
}
if [[ ${KEEP:-} != 1 ]]; then trap cleanup EXIT; fi
say "starting kube-apiserver, etcd and redis-server on loopback"
tests/platform/up.sh "$STATE"
# shellcheck source=/dev/null
. "$STATE/env"

say "installing the JobRetry and JobRetryPolicy CRDs; namespace payments with the Redis Secret"
kubectl apply --server-side -f crds/
wait_established jobretries.jobretry.io
wait_established jobretrypolicies.jobretry.io
kubectl create namespace payments
kubectl -n payments create secret generic payments-redis --from-literal=url="$JOBRETRY_TEST_REDIS_URL"

say "BullMQ 6.7.0: adding jobs to queue 'payments'; a real Worker fails the charges"
node tests/bullmq/seed.mjs --redis "$JOBRETRY_TEST_REDIS_URL" --queue payments --spec tests/demo/jobs.json >"$STATE/seeded.json" 2>/dev/null
# shellcheck disable=SC2016 # JavaScript, not shell
node -e '
  const s = require(process.argv[1]);
  for (const j of s.jobs) console.log(`  job ${j.id}  ${j.name.padEnd(8)} ${j.state.padEnd(9)} attemptsMade=${j.attemptsMade}  ${j.failedReason ?? ""}`);
' "$STATE/seeded.json"
ids=$(node -e 'const s=require(process.argv[1]); console.log(s.jobs.filter(j=>/ECONNRESET/.test(j.failedReason??"")).map(j=>JSON.stringify(j.id)).concat(["\"9999\"", JSON.stringify(s.jobs.find(j=>j.state==="completed").id)]).join(", "))' "$STATE/seeded.json")

say "starting the operator"
KUBECONFIG="$KUBECONFIG" "$OPERATOR" --http-addr 127.0.0.1:0 >"$STATE/operator.log" 2>&1 &
OP_PID=$!

cat >"$STATE/incident.yaml" <<YAML
apiVersion: jobretry.io/v1alpha1
kind: JobRetry
metadata:
  name: incident-4711-payments
  namespace: payments
spec:
  queue:
    name: payments
  connection:
    secretRef:
      name: payments-redis
  state: failed
  jobIds: [$ids]
  resetAttemptsMade: true
YAML
say "kubectl apply -f incident.yaml"
cat "$STATE/incident.yaml"
kubectl apply -f "$STATE/incident.yaml"
kubectl -n payments wait --for=condition=Complete jobretry/incident-4711-payments --timeout=60s

say "kubectl get jr -n payments"
kubectl get jr -n payments
say "the job rows"
kubectl -n payments get jr incident-4711-payments -o json >"$STATE/jobretry.json"
kubectl -n payments get jr incident-4711-payments -o jsonpath='{range .status.jobs[*]}{.id}{"\t"}{.result}{"\t"}{.code}{"\t"}{.message}{"\n"}{end}' |
  awk -F'\t' 'BEGIN{printf "%-8s %-12s %-5s %s\n","ID","RESULT","CODE","MESSAGE"} {printf "%-8s %-12s %-5s %s\n",$1,$2,$3,$4}'

say "a BullMQ Worker now processes exactly the retried jobs"
node tests/bullmq/process.mjs --redis "$JOBRETRY_TEST_REDIS_URL" --queue payments --expect 3 --settle-ms 1500 \
  >"$STATE/processed.json" 2>"$STATE/process.log"
# shellcheck disable=SC2016 # JavaScript, not shell
node -e 'for (const p of require(process.argv[1]).processed) console.log(`  processed job ${p.id} (${p.name}) attemptsMade=${p.attemptsMade}`)' "$STATE/processed.json"

say "checking the run against what the demo promised"
if ! node tests/demo/check.cjs "$STATE/seeded.json" "$STATE/jobretry.json" "$STATE/processed.json"; then
  echo "the demo did not end as promised; the operator's log: $STATE/operator.log" >&2
  exit 1
fi

if [[ ${KEEP:-} == 1 ]]; then
  say "left running: . $STATE/env; stop with: kill $OP_PID; tests/platform/down.sh $STATE"
fi
