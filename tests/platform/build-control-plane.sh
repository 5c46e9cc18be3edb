#!/usr/bin/env bash
# Build a real kube-apiserver, kube-controller-manager (its garbage collector
# deletes what owner references tie to a deleted object) and etcd from their
# published Go modules and cache them outside the repo, keyed by version:
#
#   ${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/control-plane/k8s-<v>-etcd-<v>/{kube-apiserver,kube-controller-manager,etcd}
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

# Whether binary $1 is cached and runs.
runs() { [[ -x $OUT/$1 ]] && "$OUT/$1" --version >/dev/null 2>&1; }

cached_ok() { runs kube-apiserver && runs kube-controller-manager && runs etcd; }

if [[ ${FORCE_REBUILD:-0} != 1 ]] && cached_ok; then
  log "control plane cached: $("$OUT/kube-apiserver" --version), etcd ${ETCD_VERSION}"
  echo "$OUT"
  exit 0
fi

if [[ ${FORCE_REBUILD:-0} == 1 ]]; then
  rm -f "$OUT/etcd" "$OUT/kube-apiserver" "$OUT/kube-controller-manager"
fi
command -v go >/dev/null || die "go is required to build the control plane"
mkdir -p "$BUILD/kube-apiserver" "$BUILD/kube-controller-manager" "$BUILD/etcd"

# Use the installed Go; both modules declare go 1.24, which it satisfies.
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

# Builds k8s.io/kubernetes/cmd/$1 into $OUT/$1.
build_k8s() {
  local bin=$1 dir="$BUILD/$1" start=$SECONDS ldflags
  log "building ${bin} ${K8S_VERSION} in ${dir}"
  k8s_go_mod "jobretry.local/build/${bin}" >"$dir/go.mod"
  ldflags=$(k8s_ldflags)
  (cd "$dir" && go build -p 2 -trimpath -ldflags "$ldflags" \
    -o "$dir/${bin}.new" "k8s.io/kubernetes/cmd/${bin}")
  mv -f "$dir/${bin}.new" "$OUT/${bin}"
  log "${bin} built in $((SECONDS - start))s"
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

runs etcd || build_etcd
runs kube-apiserver || build_k8s kube-apiserver
runs kube-controller-manager || build_k8s kube-controller-manager
cached_ok || die "built binaries do not run --version"
log "control plane ready in ${OUT}"
echo "$OUT"
