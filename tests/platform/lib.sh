# shellcheck shell=bash
# Shared helpers for the local test platform scripts. Source it; do not run it.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Versions of the control plane we build. etcd v3.6.5 is the server version
# Kubernetes v1.34.4 itself tests against (hack/lib/etcd.sh: ETCD_VERSION).
# shellcheck disable=SC2034 # used by the scripts that source this file
K8S_VERSION="v1.34.4"
# shellcheck disable=SC2034
K8S_STAGING_VERSION="v0.34.4" # staging modules (k8s.io/api, ...) are tagged v0.<minor>.<patch>
# shellcheck disable=SC2034
ETCD_VERSION="v3.6.5"

# Where built binaries are cached, outside the repo and keyed by version.
# shellcheck disable=SC2034
PLATFORM_BIN_DIR="${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/control-plane/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"

# Where build-kubectl.sh caches the kubectl it builds (only when none is on PATH).
# shellcheck disable=SC2034
KUBECTL_BIN_DIR="${JOBRETRY_CACHE:-$HOME/.cache/jobretry-operator}/kubectl/${K8S_VERSION}"

# Every module under kubernetes' staging/src/k8s.io. k8s.io/kubernetes requires them at
# v0.0.0 with replace => ./staging/..., replaces which do not apply outside its own module,
# so k8s_go_mod pins them to the published v0.x tags.
K8S_STAGING_MODULES=(
  api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
  cloud-provider cluster-bootstrap code-generator component-base
  component-helpers controller-manager cri-api cri-client csi-translation-lib
  dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
  mount-utils pod-security-admission sample-apiserver sample-cli-plugin
  sample-controller
)

# k8s_go_mod MODULE : prints a go.mod for module MODULE that builds commands of
# k8s.io/kubernetes ${K8S_VERSION} (k8s.io/kubernetes/cmd/...), staging modules pinned.
k8s_go_mod() {
  local m
  echo "module $1"
  echo
  echo "go 1.24.0"
  echo
  echo "godebug default=go1.24" # same as k8s.io/kubernetes' own go.mod
  echo
  echo "require k8s.io/kubernetes ${K8S_VERSION}"
  echo
  for m in "${K8S_STAGING_MODULES[@]}"; do
    echo "replace k8s.io/${m} => k8s.io/${m} ${K8S_STAGING_VERSION}"
  done
}

# k8s_ldflags : the -ldflags that stamp ${K8S_VERSION} into a k8s.io/kubernetes command,
# as kubernetes' hack/lib/version.sh does it (`--version`, `kubectl version`).
k8s_ldflags() {
  local minor=${K8S_VERSION#v1.} ldflags="-s -w" pkg
  minor=${minor%%.*}
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldflags"
}

# log MSG... : timestamped message on stderr.
log() { printf '[platform %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# die MSG... : log and exit non-zero.
die() { log "ERROR: $*"; exit 1; }

# free_ports N : print N distinct free TCP ports on 127.0.0.1, one per line.
# All sockets are held open until every port is picked, so the N are distinct.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
EOF
}

# wait_for TIMEOUT_SECONDS DESCRIPTION CMD... : retry CMD (quietly) every
# 0.5s until it succeeds; return 1 after the timeout.
wait_for() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for ${what}"
      return 1
    fi
    sleep 0.5
  done
}

# start_bg STATE_DIR NAME CMD... : run CMD in the background in its own
# session, stdout+stderr to STATE_DIR/NAME.log, pid to STATE_DIR/NAME.pid.
start_bg() {
  local dir=$1 name=$2
  shift 2
  setsid "$@" >"${dir}/${name}.log" 2>&1 </dev/null &
  echo $! >"${dir}/${name}.pid"
}

# proc_running PID : true if PID is a live (not zombie) process.
proc_running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# pid_alive PIDFILE : true if the pid file names a running process.
pid_alive() {
  local pid
  [[ -f $1 ]] || return 1
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] && proc_running "$pid"
}

# stop_pidfiles PATTERN PIDFILE... : send TERM to the process of every pid file
# that is still running and whose command line matches PATTERN (grep; guards
# against pid reuse), wait up to 15s for all of them together, KILL the ones
# left, and remove the pid files. Missing pid files are skipped. Never fails.
stop_pidfiles() {
  local pattern=$1 f pid i any
  shift
  local -a pids=() names=()
  for f in "$@"; do
    pid_alive "$f" || continue
    pid=$(cat "$f")
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$(basename "$f" .pid)")
    fi
  done
  for ((i = 0; i < 30; i++)); do
    any=0
    for pid in "${pids[@]}"; do
      if proc_running "$pid"; then any=1; fi
    done
    ((any)) || break
    sleep 0.5
  done
  for i in "${!pids[@]}"; do
    if proc_running "${pids[i]}"; then
      log "${names[i]} (pid ${pids[i]}) ignored TERM; killing"
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
    log "stopped ${names[i]} (pid ${pids[i]})"
  done
  rm -f "$@"
  return 0
}

# env_set FILE NAME VALUE : make FILE (a sourceable env file, created if
# missing) export NAME='VALUE'. An earlier `export NAME=` line is replaced;
# every other line is kept.
env_set() {
  local file=$1 name=$2 value=$3
  env_unset "$file" "$name"
  printf "export %s='%s'\n" "$name" "${value//\'/\'\\\'\'}" >>"$file"
}

# env_unset FILE NAME : drop `export NAME=` lines from FILE (if it exists).
env_unset() {
  local file=$1 name=$2 tmp
  [[ -f $file ]] || return 0
  tmp="$file.tmp.$$"
  grep -v -- "^export ${name}=" "$file" >"$tmp" || true
  mv -f "$tmp" "$file"
}

# wait_established CRD: waits until the CRD is Established. Right after it is created its status
# has no conditions yet and `kubectl wait` fails at once instead of waiting, so ask again.
wait_established() {
  local crd=$1 i
  for i in $(seq 1 30); do
    kubectl wait --for=condition=Established --timeout=10s "crd/$crd" >/dev/null 2>&1 && return 0
    sleep 1
  done
  kubectl wait --for=condition=Established --timeout=10s "crd/$crd"
}

# go_tool_env TOOL : checks that Go is there, and sets up `go install pkg@version` outside
# any module (which ignores the current module anyway) with the installed Go and no cgo.
go_tool_env() {
  command -v go >/dev/null || die "go is required to build $1"
  export GOTOOLCHAIN=local CGO_ENABLED=0
  unset GOFLAGS
}

# go_install BIN PKG@VERSION LDFLAGS [TAGS] : builds the command with `go install` in BIN's
# folder (under .build), with build tags TAGS if given, and moves it to BIN.
go_install() {
  local bin=$1 pkg=$2 ldflags=$3 tags=${4:-} build
  build="$(dirname "$bin")/.build"
  mkdir -p "$build"
  (cd "$build" && GOBIN="$build" go install -p 2 -trimpath -tags "$tags" -ldflags "$ldflags" "$pkg")
  mv -f "$build/$(basename "$bin")" "$bin"
}

# ensure_kubectl : makes sure `kubectl` runs: the one on PATH if there is one, else the one
# build-kubectl.sh builds from k8s.io/kubernetes at the control plane's version (cached in
# KUBECTL_BIN_DIR), whose folder is put first on PATH (exported, for the tests it starts).
ensure_kubectl() {
  command -v kubectl >/dev/null && return 0
  local dir
  dir=$("$(dirname "${BASH_SOURCE[0]}")/build-kubectl.sh") || die "could not build kubectl"
  export PATH="$dir:$PATH"
}
