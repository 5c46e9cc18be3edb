#!/usr/bin/env bash
# Build kstatus-read (tests/platform/kstatus/main.go), a tiny program around
# sigs.k8s.io/cli-utils' kstatus, the status library Flux uses for health checks,
# and cache it outside the repo, keyed by the cli-utils version:
#
#   ${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/kstatus/<version>/kstatus-read
#
# Usage: build-kstatus.sh      (prints the binary path on stdout)
# Env:   JOBRETRY_CACHE  cache root (default ~/.cache/jobretry-operator)
#        FORCE_REBUILD=1 rebuild even if a cached binary exists
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLI_UTILS_VERSION="v0.37.2"
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/kstatus" && pwd)"
OUT="${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/kstatus/${CLI_UTILS_VERSION}"
BIN="$OUT/kstatus-read"
# The cached binary is rebuilt when the program's source changes.
STAMP="$OUT/source.sha256"
want_stamp=$(cat "$SRC/main.go" "$SRC/go.mod" | sha256sum | cut -d' ' -f1)

if [[ ${FORCE_REBUILD:-0} != 1 && -x $BIN && -f $STAMP && $(cat "$STAMP") == "$want_stamp" ]]; then
  log "kstatus-read cached (cli-utils ${CLI_UTILS_VERSION})"
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || die "go is required to build kstatus-read"
rm -rf "$OUT/.build" && mkdir -p "$OUT/.build"
cp "$SRC/main.go" "$SRC/go.mod" "$OUT/.build/"
export GOTOOLCHAIN=local CGO_ENABLED=0
unset GOFLAGS
start=$SECONDS
log "building kstatus-read with sigs.k8s.io/cli-utils ${CLI_UTILS_VERSION} into ${OUT}"
(cd "$OUT/.build" && sed -i "s|^require sigs.k8s.io/cli-utils .*|require sigs.k8s.io/cli-utils ${CLI_UTILS_VERSION}|" go.mod &&
  go mod tidy && go build -p 2 -trimpath -ldflags "-s -w" -o "$BIN" .)
echo "$want_stamp" >"$STAMP"
log "kstatus-read built in $((SECONDS - start))s"
echo "$BIN"
