#!/usr/bin/env bash
# Build toxiproxy's server (v2.5.0) from its published Go module and cache it outside the
# repo, keyed by version:
#
#   ${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/toxiproxy/<version>/toxiproxy-server
#
# Usage: build-toxiproxy.sh   (prints the binary path on stdout)
# Env:   JOBRETRY_CACHE  cache root (default ~/.cache/jobretry-operator)
#        FORCE_REBUILD=1 rebuild even if a cached binary exists
#
# tests/e2e_fault_suite.rs puts it between the operator and Redis, and between the operator
# and the API server, to drop and delay their traffic.
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="v2.5.0"
OUT="${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/toxiproxy/${VERSION}"
BIN="$OUT/toxiproxy-server"

cached_ok() {
  [[ -x $BIN ]] && "$BIN" -version 2>/dev/null | grep -qF "${VERSION#v}"
}

if [[ ${FORCE_REBUILD:-0} != 1 ]] && cached_ok; then
  log "toxiproxy cached: $BIN"
  echo "$BIN"
  exit 0
fi

go_tool_env toxiproxy
start=$SECONDS
log "building toxiproxy ${VERSION} (go install) into ${OUT}"
go_install "$OUT/server" "github.com/Shopify/toxiproxy/v2/cmd/server@${VERSION}" \
  "-s -w -X github.com/Shopify/toxiproxy/v2.Version=${VERSION#v}"
mv -f "$OUT/server" "$BIN"
cached_ok || die "built toxiproxy does not report ${VERSION}: $("$BIN" -version 2>&1 || true)"
log "toxiproxy built in $((SECONDS - start))s"
echo "$BIN"
