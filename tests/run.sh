#!/usr/bin/env bash
# The full test suite, on a fresh machine or a warm one:
#   installs Redis (Debian) and the BullMQ fixtures (npm ci), builds the control plane from
#   its Go modules (cached outside the repo), starts etcd + kube-apiserver + redis-server on
#   loopback, then runs format and lint checks and every test, and stops the platform.
# Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '[tests %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
START=$SECONDS

tests/platform/install-deps.sh
log "npm ci (BullMQ fixtures)"
(cd tests/bullmq && npm ci --no-audit --no-fund --loglevel=error)
tests/platform/build-control-plane.sh >/dev/null
# The PyPI bullmq client, in a venv cached outside the repo, keyed by its pinned version.
VENV="${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/venv-$(tr -c 'a-z0-9.=\n' _ <tests/bullmq/py/requirements.txt | tr -d '\n')"
if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import bullmq' 2>/dev/null; then
  log "pip install -r tests/bullmq/py/requirements.txt into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/bullmq/py/requirements.txt
fi
export JOBRETRY_TEST_PYTHON="$VENV/bin/python"
export JOBRETRY_PLATFORM_TOPOLOGIES=1
JOBRETRY_TEST_HELM=$(tests/platform/build-helm.sh); export JOBRETRY_TEST_HELM # tests/e2e_chart.rs

STATE=$(mktemp -d "${TMPDIR:-/tmp}/jobretry-tests.XXXXXX")
trap 'tests/platform/down.sh "$STATE" >/dev/null 2>&1 || true' EXIT
tests/platform/up.sh "$STATE"
# shellcheck source=/dev/null
. "$STATE/env"

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test --locked"
cargo test --locked "$@" -- --show-output 2>&1 | tee "$STATE/cargo-test.log"
log "all checks passed in $((SECONDS - START))s"
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$STATE/cargo-test.log"
