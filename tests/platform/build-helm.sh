#!/usr/bin/env bash
# Build a real `helm` (v3) from its published Go module and cache it outside the
# repo, keyed by version:
#
#   ${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/helm/<version>/helm
#
# Usage: build-helm.sh        (prints the binary path on stdout)
# Env:   JOBRETRY_CACHE  cache root (default ~/.cache/jobretry-operator)
#        FORCE_REBUILD=1 rebuild even if a cached binary exists
#
# helm.sh/helm/v3 has no replace directives, so `go install module/cmd/helm@version`
# builds exactly the released dependency graph. A cold build takes a few minutes on
# 2 cores; with the binary cached it exits at once.
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# helm v3.22.0 declares go 1.26.0 and builds with the installed Go (GOTOOLCHAIN=local).
HELM_VERSION="v3.22.0"
OUT="${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/helm/${HELM_VERSION}"
BIN="$OUT/helm"

cached_ok() {
  [[ -x $BIN ]] && "$BIN" version --short 2>/dev/null | grep -qF "$HELM_VERSION"
}

if [[ ${FORCE_REBUILD:-0} != 1 ]] && cached_ok; then
  log "helm cached: $("$BIN" version --short)"
  echo "$BIN"
  exit 0
fi

go_tool_env helm

start=$SECONDS
# Version stamping, as helm's Makefile does it. Besides `helm version`, this sets the
# Kubernetes version helm assumes without a cluster (`helm template`'s
# .Capabilities.KubeVersion, `helm lint`'s deprecated-API check): 1.<minor of the
# k8s.io/client-go helm is built with>, instead of the source's fallback 1.20.
GOMOD=$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[[ -f $GOMOD ]] || die "cannot download helm.sh/helm/v3@${HELM_VERSION}"
CLIENT_GO=$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$GOMOD") # e.g. v0.37.0
K8S_MINOR=$(cut -d. -f2 <<<"$CLIENT_GO")
[[ $K8S_MINOR =~ ^[0-9]+$ ]] || die "cannot read k8s.io/client-go's version from $GOMOD"
LDFLAGS="-s -w"
LDFLAGS+=" -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
LDFLAGS+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  LDFLAGS+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${K8S_MINOR}"
done

log "building helm ${HELM_VERSION} (go install) into ${OUT}"
go_install "$BIN" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" "$LDFLAGS"
cached_ok || die "built helm does not report ${HELM_VERSION}: $("$BIN" version 2>&1 || true)"
log "helm built in $((SECONDS - start))s: $("$BIN" version --short)"
echo "$BIN"
