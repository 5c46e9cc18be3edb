#!/usr/bin/env bash
# Install the OS packages the tests need (Debian/apt): Redis, lua5.4 for the Argo CD
# health check, buildah and musl-tools for the image (build-image.sh). Idempotent: a quick
# no-op when everything is already installed; `apt-get update` runs only when
# something is missing.
#
# Usage: install-deps.sh
#
# The tests start their own redis on a free port (see up.sh), so the
# package's own system service must not be running: we keep the package
# scripts from starting it, and stop it if it runs anyway.
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(redis-server redis-tools redis-sentinel lua5.4 buildah musl-tools)

missing=()
for p in "${PACKAGES[@]}"; do
  if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  log "OS packages present: ${PACKAGES[*]}"
  exit 0
fi

((EUID == 0)) || die "need root to install: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive

# policy-rc.d exit 101 tells invoke-rc.d not to start services during install
# (the usual container trick); remove it afterwards if we created it.
POLICY=/usr/sbin/policy-rc.d
made_policy=0
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$POLICY"
  chmod +x "$POLICY"
  made_policy=1
fi
cleanup() { if ((made_policy)); then rm -f "$POLICY"; fi; }
trap cleanup EXIT

log "installing: ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# If a system redis/sentinel got started anyway (e.g. under systemd), stop it
# so it does not hold ports 6379/26379.
for svc in redis-server redis-sentinel; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
    systemctl disable "$svc" >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/$svc ]]; then
    /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
  fi
done
log "installed: ${missing[*]}"
