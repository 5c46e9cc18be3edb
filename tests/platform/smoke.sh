#!/usr/bin/env bash
# Smoke-test a platform started by up.sh: namespaces, RBAC + service-account
# impersonation, a CRD with an x-kubernetes-validations (CEL) rule, and redis.
#
# Usage: smoke.sh STATE_DIR
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# == 1)) || die "usage: $0 STATE_DIR"
# shellcheck disable=SC1091 # written by up.sh
. "$1/env"

kubectl get namespace default >/dev/null || die "no default namespace"

# The admin (system:masters) may impersonate a service account; RBAC denies
# that account everything. `auth can-i` exits 1 when the answer is "no".
answer=$(kubectl --as=system:serviceaccount:default:smoke auth can-i list pods || true)
[[ $answer == no ]] || die "expected 'no' from impersonated can-i, got '$answer'"

# CEL validation on a CRD.
kubectl apply -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: smokes.platform.jobretry.test
spec:
  group: platform.jobretry.test
  scope: Namespaced
  names: {plural: smokes, singular: smoke, kind: Smoke}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.minRetries <= self.maxRetries"
              message: "minRetries must not exceed maxRetries"
            properties:
              minRetries: {type: integer}
              maxRetries: {type: integer}
EOF
kubectl wait --for condition=Established --timeout 30s crd/smokes.platform.jobretry.test >/dev/null

smoke() {
  kubectl apply -f - 2>&1 <<EOF
apiVersion: platform.jobretry.test/v1
kind: Smoke
metadata: {name: $1, namespace: default}
spec: {minRetries: $2, maxRetries: $3}
EOF
}
smoke ok 1 3 >/dev/null || die "valid object refused"
if out=$(smoke bad 5 1); then die "CEL rule not enforced: $out"; fi
[[ $out == *"minRetries must not exceed maxRetries"* ]] || die "unexpected error: $out"
kubectl delete crd smokes.platform.jobretry.test --wait=false >/dev/null

[[ $(redis-cli -p "$JOBRETRY_TEST_REDIS_PORT" ping) == PONG ]] || die "redis PING failed"
log "smoke OK: namespaces, impersonation+RBAC, CEL, redis"
