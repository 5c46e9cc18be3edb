#!/usr/bin/env bash
# Install the OS packages the tests and scripts need (Debian/apt): Redis, lua5.4 for the
# Argo CD health check, buildah and musl-tools for the image (build-image.sh); and, unless
# the tool is already there by another route, curl, openssl, python3 with venv (the PyPI
# bullmq venvs of tests/run.sh), procps (`kill`) and the CA certificates (HTTPS to the Go
# module proxy and PyPI). Idempotent: a quick no-op when everything is already installed;
# `apt-get update` runs only when something is missing.
#
# Not installed here: kubectl (no Debian package is close enough to the control plane; lib.sh's
# ensure_kubectl builds one when none is on PATH), and the toolchains the README lists as
# prerequisites (Rust, Go, Node.js and npm: Debian's are too old).
#
# Usage: install-deps.sh
#
# The tests start their own redis on a free port (see up.sh), so the
# package's own system service must not be running: we keep the package
# scripts from starting it, and stop it if it runs anyway.
set -euo pipefail

# shellcheck source=tests/platform/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Needed as Debian packages.
PACKAGES=(redis-server redis-tools redis-sentinel lua5.4 buildah musl-tools)

missing=()
for p in "${PACKAGES[@]}"; do
  if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

# Needed as tools: the package is installed only when the tool does not work, so one that
# came another way (a pyenv python3, a curl from elsewhere) is used as it is.
TOOLS=(curl openssl python3-venv procps ca-certificates)
# curl: up.sh's etcd health check, the tests' /metrics and /readyz calls.
command -v curl >/dev/null || missing+=(curl)
# openssl: up.sh's certificates, the tests' TLS certificates.
command -v openssl >/dev/null || missing+=(openssl)
# python3 -m venv (tests/run.sh) needs ensurepip, which Debian ships in python3-venv; the
# package brings python3 itself, which lib.sh's free_ports and other helpers run.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# The tests signal processes with the `kill` program (not the shell builtin).
type -P kill >/dev/null || missing+=(procps)
# HTTPS to the Go module proxy and PyPI (Go and pip read the system's CA bundle).
[[ -s /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)

if ((${#missing[@]} == 0)); then
  log "OS packages present: ${PACKAGES[*]}; tools present: ${TOOLS[*]}"
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
