#!/usr/bin/env bash
# Build a real `promtool` (Prometheus' rule checker and rule unit-test runner) from its
# published Go module and cache it outside the repo, keyed by version:
#
#   ${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/promtool/<version>/promtool
#
# Usage: build-promtool.sh        (prints the binary path on stdout)
# Env:   JOBRETRY_CACHE  cache root (default ~/.cache/jobretry-operator)
#        FORCE_REBUILD=1 rebuild even if a cached binary exists
#
# github.com/prometheus/prometheus has no replace directives, so
# `go install module/cmd/promtool@version` builds exactly the released dependency graph.
# Its Go module versions are v0.<minor>.<patch> for Prometheus 3.<minor>.<patch>. A cold
# build takes a few minutes on 2 cores; with the binary cached it exits at once.
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# v0.316.0 is Prometheus 3.16.0; it declares go 1.26.7 and builds with the installed Go.
PROM_MODULE_VERSION="v0.316.0"
PROM_VERSION="3.16.0"
OUT="${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/promtool/${PROM_MODULE_VERSION}-nosd"
BIN="$OUT/promtool"

cached_ok() {
  [[ -x $BIN ]] && "$BIN" --version 2>/dev/null | grep -qF "version ${PROM_VERSION}"
}

if [[ ${FORCE_REBUILD:-0} != 1 ]] && cached_ok; then
  log "promtool cached: $("$BIN" --version 2>&1 | head -n 1)"
  echo "$BIN"
  exit 0
fi

go_tool_env promtool

start=$SECONDS
# Version stamping, as Prometheus' promu build does it (`promtool --version`).
LDFLAGS="-s -w -X github.com/prometheus/common/version.Version=${PROM_VERSION}"
LDFLAGS+=" -X github.com/prometheus/common/version.Branch=HEAD"
LDFLAGS+=" -X github.com/prometheus/common/version.BuildUser=jobretry-operator"
log "building promtool ${PROM_VERSION} (go install) into ${OUT}"
# remove_all_sd leaves out the service-discovery plugins (AWS, Azure, GCE, Kubernetes, ...),
# most of the dependency graph; rule checks and rule unit tests do not use them.
go_install "$BIN" "github.com/prometheus/prometheus/cmd/promtool@${PROM_MODULE_VERSION}" "$LDFLAGS" remove_all_sd
cached_ok || die "built promtool does not report ${PROM_VERSION}: $("$BIN" --version 2>&1 || true)"
log "promtool built in $((SECONDS - start))s: $("$BIN" --version 2>&1 | head -n 1)"
echo "$BIN"
