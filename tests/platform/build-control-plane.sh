#!/usr/bin/env bash
# Build a real kube-apiserver and etcd from their published Go modules and
# cache them outside the repo, keyed by version:
#
#   ${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/control-plane/k8s-<v>-etcd-<v>/{kube-apiserver,etcd}
#
# Usage: build-control-plane.sh        (prints the binary dir on stdout)
# Env:   JOBRETRY_CACHE  cache root (default ~/.cache/jobretry-operator)
#        FORCE_REBUILD=1 rebuild even if cached binaries exist
#
# A cold build takes many minutes on 2 cores; with binaries cached it exits at
# once. The normal Go module and build caches are used, so a rebuild on a warm
# machine is quicker too.
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT="$PLATFORM_BIN_DIR"
BUILD="$OUT/.build"

cached_ok() {
  [[ -x $OUT/kube-apiserver && -x $OUT/etcd ]] &&
    "$OUT/kube-apiserver" --version >/dev/null 2>&1 &&
    "$OUT/etcd" --version >/dev/null 2>&1
}

if [[ ${FORCE_REBUILD:-0} != 1 ]] && cached_ok; then
  log "control plane cached: $("$OUT/kube-apiserver" --version), etcd ${ETCD_VERSION}"
  echo "$OUT"
  exit 0
fi

command -v go >/dev/null || die "go is required to build the control plane"
mkdir -p "$BUILD/kube-apiserver" "$BUILD/etcd"

# Use the installed Go; both modules declare go 1.24, which it satisfies.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

# Every module under kubernetes' staging/src/k8s.io. k8s.io/kubernetes
# requires them at v0.0.0 with replace => ./staging/..., replaces which do not
# apply outside its own module, so we pin them to the published v0.x tags.
STAGING_MODULES=(
  api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
  cloud-provider cluster-bootstrap code-generator component-base
  component-helpers controller-manager cri-api cri-client csi-translation-lib
  dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin
  sample-controller
)

build_kube_apiserver() {
  local dir="$BUILD/kube-apiserver" start=$SECONDS m
  log "building kube-apiserver ${K8S_VERSION} in ${dir}"
  {
    echo "module jobretry.local/build/kube-apiserver"
    echo
    echo "go 1.24.0"
    echo
    echo "godebug default=go1.24" # same as k8s.io/kubernetes' own go.mod
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    for m in "${STAGING_MODULES[@]}"; do
      echo "replace k8s.io/${m} => k8s.io/${m} ${K8S_STAGING_VERSION}"
    done
  } >"$dir/go.mod"

  # Version stamping, as kubernetes' hack/lib/version.sh does it.
  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local ldflags="-s -w" pkg
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done

  (cd "$dir" && go build -p 2 -trimpath -ldflags "$ldflags" \
    -o "$dir/kube-apiserver.new" k8s.io/kubernetes/cmd/kube-apiserver)
  mv -f "$dir/kube-apiserver.new" "$OUT/kube-apiserver"
  log "kube-apiserver built in $((SECONDS - start))s"
}

build_etcd() {
  local dir="$BUILD/etcd" start=$SECONDS
  log "building etcd ${ETCD_VERSION} in ${dir}"
  cat >"$dir/go.mod" <<EOF
module jobretry.local/build/etcd

go 1.24

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
EOF
  # Same entry point as etcd's own main package (go.etcd.io/etcd/v3).
  cat >"$dir/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (cd "$dir" && go mod tidy && go build -p 2 -trimpath -ldflags "-s -w" -o "$dir/etcd.new" .)
  mv -f "$dir/etcd.new" "$OUT/etcd"
  log "etcd built in $((SECONDS - start))s"
}

build_etcd
build_kube_apiserver
cached_ok || die "built binaries do not run --version"
log "control plane ready in ${OUT}"
echo "$OUT"
