#!/usr/bin/env bash
# Start the local test platform in the background: etcd, a real
# kube-apiserver, a kube-controller-manager running only the garbage collector
# (owner references: deleting a JobRetryPolicy deletes its runs, as in a real
# cluster; no scheduler, no kubelet) and a redis-server, each on a free
# 127.0.0.1 port.
#
# Usage: up.sh STATE_DIR
#
# STATE_DIR receives: *.log and *.pid per process (etcd, kube-apiserver,
# redis), pki/ (generated certs), etcd-data/, kubeconfig (admin,
# system:masters, embedded certs) and `env`, a sourceable file exporting
#   KUBECONFIG, JOBRETRY_TEST_KUBECONFIG (same), JOBRETRY_TEST_REDIS_URL,
#   JOBRETRY_TEST_REDIS_PORT, JOBRETRY_TEST_STATE_DIR, and PATH with the kubectl
#   build-kubectl.sh built when none was on PATH (lib.sh's ensure_kubectl).
# Stop everything with down.sh STATE_DIR. Anything still running from an
# earlier up.sh on the same STATE_DIR is stopped first.
#
# With JOBRETRY_PLATFORM_TOPOLOGIES=1 it also runs redis-cluster-up.sh and
# redis-sentinel-up.sh on STATE_DIR at the end (a Redis Cluster, and a
# master + replica + sentinel; see those scripts for the JOBRETRY_TEST_CLUSTER_*
# and JOBRETRY_TEST_SENTINEL_* lines they add to `env`).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/platform/lib.sh
. "$HERE/lib.sh"

(($# == 1)) || die "usage: $0 STATE_DIR"
mkdir -p "$1"
STATE=$(cd "$1" && pwd)
PKI="$STATE/pki"
START=$SECONDS

"$HERE/down.sh" "$STATE" >/dev/null 2>&1 || true
rm -rf "$STATE/etcd-data" "$PKI" "$STATE/env" "$STATE/kubeconfig"
mkdir -p "$PKI"

# What this script runs besides the control plane: install it if any of it is missing.
deps_ok=1
for tool in redis-server redis-cli openssl curl python3; do
  command -v "$tool" >/dev/null || deps_ok=0
done
((deps_ok)) || "$HERE/install-deps.sh"
BIN=$("$HERE/build-control-plane.sh")
ensure_kubectl

# On any failure: show the logs' tails and stop what we started.
on_exit() {
  local rc=$?
  if ((rc != 0)); then
    local f
    for f in "$STATE"/*.log; do
      [[ -f $f ]] || continue
      log "---- tail of $f"
      tail -n 30 "$f" >&2 || true
    done
    "$HERE/down.sh" "$STATE" >/dev/null 2>&1 || true
    log "up.sh failed (exit $rc)"
  fi
}
trap on_exit EXIT

mapfile -t PORTS < <(free_ports 4)
((${#PORTS[@]} == 4)) || die "could not pick free ports"
ETCD_PORT=${PORTS[0]} ETCD_PEER_PORT=${PORTS[1]} API_PORT=${PORTS[2]} REDIS_PORT=${PORTS[3]}

# ---- certificates -------------------------------------------------------
# ECDSA P-256 keys: quick to generate and accepted everywhere we use them.
newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME SUBJECT EXTENSIONS : key + cert NAME.{key,crt} signed by the CA.
sign() {
  local name=$1 subj=$2 ext=$3
  newkey "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
  printf '%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 3650 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
}

newkey "$PKI/ca.key"
openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=jobretry-test-ca" -days 3650 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$PKI/ca.crt"
sign apiserver "/CN=kube-apiserver" "$(printf '%s\n' \
  'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
  'extendedKeyUsage=serverAuth' \
  'subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local')"
sign admin "/O=system:masters/CN=admin" "$(printf '%s\n' \
  'basicConstraints=CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
  'extendedKeyUsage=clientAuth')"
newkey "$PKI/sa.key"
openssl pkey -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub"

# ---- etcd ---------------------------------------------------------------
start_bg "$STATE" etcd "$BIN/etcd" \
  --name default \
  --data-dir "$STATE/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "default=http://127.0.0.1:$ETCD_PEER_PORT" \
  --unsafe-no-fsync \
  --log-level warn
wait_for 30 "etcd health" curl -fsS "http://127.0.0.1:$ETCD_PORT/health" || exit 1

# ---- kube-apiserver -------------------------------------------------------
# No controller-manager runs, so no `default` ServiceAccount ever appears in
# a namespace; the ServiceAccount admission plugin would then refuse every
# Pod, hence it is disabled. The endpoint reconciler is off because it would
# keep failing to publish the loopback advertise address as an Endpoint.
# ValidatingAdmissionPolicy (the chart's tenancy policy, tests/e2e_tenancy.rs) needs no flag:
# its admission plugin and admissionregistration.k8s.io/v1 are on by default since 1.30.
# MutatingAdmissionPolicy (the chart's requester record, tests/e2e_audit.rs) is beta in 1.34,
# off by default: its feature gate and admissionregistration.k8s.io/v1beta1 are turned on.
start_bg "$STATE" kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 \
  --secure-port "$API_PORT" \
  --cert-dir "$PKI" \
  --tls-cert-file "$PKI/apiserver.crt" \
  --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --service-account-key-file "$PKI/sa.pub" \
  --service-account-signing-key-file "$PKI/sa.key" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.0.0.0/24 \
  --authorization-mode Node,RBAC \
  --feature-gates MutatingAdmissionPolicy=true \
  --runtime-config admissionregistration.k8s.io/v1beta1=true \
  --disable-admission-plugins ServiceAccount \
  --endpoint-reconciler-type none \
  --profiling=false \
  --v 1

# Admin kubeconfig with embedded certs.
b64() { base64 -w0 <"$1"; }
cat >"$STATE/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: jobretry-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$PKI/admin.crt")
    client-key-data: $(b64 "$PKI/admin.key")
contexts:
- name: jobretry-test
  context:
    cluster: jobretry-test
    user: admin
current-context: jobretry-test
EOF
chmod 600 "$STATE/kubeconfig"
kc() { kubectl --kubeconfig "$STATE/kubeconfig" --request-timeout 5s "$@"; }

readyz_ok() { [[ $(kc get --raw /readyz 2>/dev/null) == ok ]]; }
wait_for 120 "kube-apiserver /readyz" readyz_ok || exit 1
# The apiserver creates `default` itself shortly after start; create it if not.
if ! wait_for 20 "namespace default" kc get namespace default; then
  kc create namespace default >/dev/null
fi

# ---- kube-controller-manager: the garbage collector only ---------------------
# No HTTPS endpoint (--secure-port 0), no leader election, its own admin
# credentials (no per-controller ServiceAccounts: no token controller runs).
start_bg "$STATE" kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$STATE/kubeconfig" \
  --controllers garbagecollector \
  --leader-elect=false \
  --secure-port 0 \
  --use-service-account-credentials=false \
  --v 1

# ---- redis ----------------------------------------------------------------
start_bg "$STATE" redis redis-server \
  --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode no \
  --save "" --appendonly no --daemonize no --dir "$STATE"
redis_ok() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }
wait_for 30 "redis PING" redis_ok || exit 1

# ---- env file ---------------------------------------------------------------
cat >"$STATE/env" <<EOF
export KUBECONFIG='$STATE/kubeconfig'
export JOBRETRY_TEST_KUBECONFIG='$STATE/kubeconfig'
export JOBRETRY_TEST_REDIS_URL='redis://127.0.0.1:$REDIS_PORT'
export JOBRETRY_TEST_REDIS_PORT='$REDIS_PORT'
export JOBRETRY_TEST_STATE_DIR='$STATE'
EOF
# The kubectl ensure_kubectl built, if it had to, for whoever sources `env`.
if [[ $(command -v kubectl) == "$KUBECTL_BIN_DIR/kubectl" ]]; then
  # shellcheck disable=SC2016 # $PATH is expanded when `env` is sourced
  printf 'export PATH=%q:"$PATH"\n' "$KUBECTL_BIN_DIR" >>"$STATE/env"
fi

# ---- optional Redis topologies -------------------------------------------------
if [[ ${JOBRETRY_PLATFORM_TOPOLOGIES:-0} == 1 ]]; then
  "$HERE/redis-cluster-up.sh" "$STATE"
  "$HERE/redis-sentinel-up.sh" "$STATE"
fi

log "platform up in $((SECONDS - START))s: apiserver https://127.0.0.1:$API_PORT, etcd :$ETCD_PORT, redis :$REDIS_PORT"
log "use: . '$STATE/env'   stop: $HERE/down.sh '$STATE'"
