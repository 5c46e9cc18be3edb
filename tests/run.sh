#!/usr/bin/env bash
# The full test suite, on a fresh machine or a warm one:
#   installs Redis and the other OS packages the tests use (Debian, install-deps.sh) and the
#   BullMQ fixtures (npm ci), builds the control plane from its Go modules (cached outside the
#   repo), and kubectl too when none is on PATH, starts etcd + kube-apiserver + redis-server
#   on loopback, and runs every test, then stops the platform. Format, lint and unit tests
#   run first, before anything is installed.
# Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=tests/platform/lib.sh
. tests/platform/lib.sh # ensure_kubectl (its log and die are replaced here)
log() { printf '[tests %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
START=$SECONDS

# Fast checks first: a formatting, lint or unit-test slip fails in seconds, before anything
# is installed or started.
log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
log "cargo test --lib --bins --locked (unit tests)"
UNIT_LOG=$(mktemp "${TMPDIR:-/tmp}/jobretry-unit.XXXXXX")
cargo test --lib --bins --locked 2>&1 | tee "$UNIT_LOG"

tests/platform/install-deps.sh
log "npm ci (BullMQ fixtures)"
(cd tests/bullmq && npm ci --no-audit --no-fund --loglevel=error)
tests/platform/build-control-plane.sh >/dev/null
ensure_kubectl # the kubectl on PATH, else one built at the control plane's version
# The PyPI bullmq clients (3.x, and 2.x for the differential tests), each in a venv cached
# outside the repo, keyed by its pinned version. The venvs are made by plain statements, never
# inside $(...): bash does not apply set -e in a command substitution, so a failed venv or
# pip install there would go unnoticed.
venv_dir() { # REQUIREMENTS_FILE : prints the venv's folder
  local key
  key=$(tr -c 'a-z0-9.=\n' _ <"$1" | tr -d '\n') || return 1
  echo "${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/venv-$key"
}
make_venv() { # REQUIREMENTS_FILE : makes the venv unless it already imports bullmq
  local req=$1 venv
  venv=$(venv_dir "$req")
  if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import bullmq' 2>/dev/null; then
    return 0
  fi
  log "pip install -r $req into $venv"
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  "$venv/bin/python" -c 'import bullmq'
}
make_venv tests/bullmq/py/requirements.txt
make_venv tests/bullmq/py/requirements-2.txt
JOBRETRY_TEST_PYTHON="$(venv_dir tests/bullmq/py/requirements.txt)/bin/python"
JOBRETRY_TEST_PYTHON2="$(venv_dir tests/bullmq/py/requirements-2.txt)/bin/python"
export JOBRETRY_TEST_PYTHON JOBRETRY_TEST_PYTHON2
export JOBRETRY_PLATFORM_TOPOLOGIES=1
JOBRETRY_TEST_HELM=$(tests/platform/build-helm.sh); export JOBRETRY_TEST_HELM # tests/e2e_chart.rs, e2e_tenancy.rs
JOBRETRY_TEST_KSTATUS=$(tests/platform/build-kstatus.sh); export JOBRETRY_TEST_KSTATUS # tests/e2e_flux.rs
# tests/e2e_observability.rs: promtool checks and unit-tests the chart's alerting rules.
JOBRETRY_TEST_PROMTOOL=$(tests/platform/build-promtool.sh); export JOBRETRY_TEST_PROMTOOL
# tests/e2e_fault_suite.rs: toxiproxy drops and delays the operator's traffic.
JOBRETRY_TEST_TOXIPROXY=$(tests/platform/build-toxiproxy.sh); export JOBRETRY_TEST_TOXIPROXY
# tests/e2e_image.rs builds the image (a release musl build, then buildah) and runs it.
export JOBRETRY_TEST_IMAGE=${JOBRETRY_TEST_IMAGE:-1} # 0 skips it

STATE=$(mktemp -d "${TMPDIR:-/tmp}/jobretry-tests.XXXXXX")
trap 'tests/platform/down.sh "$STATE" >/dev/null 2>&1 || true' EXIT
tests/platform/up.sh "$STATE"
# shellcheck source=/dev/null
. "$STATE/env"

log "cargo test --locked --test '*' (end-to-end)"
cargo test --locked --no-fail-fast --test '*' "$@" -- --show-output 2>&1 | tee "$STATE/cargo-test.log"
cat "$UNIT_LOG" >>"$STATE/cargo-test.log" && rm -f "$UNIT_LOG"
log "all checks passed in $((SECONDS - START))s"
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$STATE/cargo-test.log"
