#!/usr/bin/env bash
# Build a real `kubectl` from k8s.io/kubernetes at the control plane's version (lib.sh's
# K8S_VERSION, same module setup as build-control-plane.sh) and cache it outside the repo:
#
#   ${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/kubectl/<k8s version>/kubectl
#
# The scripts call it (through lib.sh's ensure_kubectl) only when no `kubectl` is on PATH:
# Debian has no kubectl package close enough to the control plane (bookworm's
# kubernetes-client is 1.20, too old for a 1.34 API server), so a fresh machine builds one.
#
# Usage: build-kubectl.sh        (prints the binary's folder on stdout, to put on PATH)
# Env:   JOBRETRY_CACHE  cache root (default ~/.cache/jobretry-operator)
#        FORCE_REBUILD=1 rebuild even if a cached binary exists
#
# A cold build takes a few minutes on 2 cores (less after the control plane's build, whose
# modules it shares); with the binary cached it exits at once.
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT="$KUBECTL_BIN_DIR"
BIN="$OUT/kubectl"
BUILD="$OUT/.build"

cached_ok() {
  [[ -x $BIN ]] && "$BIN" version --client 2>/dev/null | grep -qxF "Client Version: ${K8S_VERSION}"
}

if [[ ${FORCE_REBUILD:-0} != 1 ]] && cached_ok; then
  log "kubectl cached: ${K8S_VERSION} in ${OUT}"
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || die "go is required to build kubectl"
mkdir -p "$BUILD"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
start=$SECONDS
log "building kubectl ${K8S_VERSION} in ${BUILD}"
k8s_go_mod jobretry.local/build/kubectl >"$BUILD/go.mod"
(cd "$BUILD" && go build -p 2 -trimpath -ldflags "$(k8s_ldflags)" \
  -o "$BUILD/kubectl.new" k8s.io/kubernetes/cmd/kubectl)
mv -f "$BUILD/kubectl.new" "$BIN"
cached_ok || die "built kubectl does not report ${K8S_VERSION}: $("$BIN" version --client 2>&1 || true)"
log "kubectl built in $((SECONDS - start))s"
echo "$OUT"
