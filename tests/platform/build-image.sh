#!/usr/bin/env bash
# Build the operator's container image without a Docker daemon: the static binary
# (x86_64-unknown-linux-musl, installed with rustup if missing) from the host's toolchain,
# packed by buildah (Debian package, see install-deps.sh) with Dockerfile.prebuilt onto an
# empty base. The image goes into a buildah store of its own (vfs driver), not the system's.
#
# Usage: build-image.sh STORE_DIR
# stdout: the image name, jobretry-operator:<version from Cargo.toml>
# Read the image with: buildah --root STORE_DIR/root --runroot STORE_DIR/run --storage-driver vfs ...
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=tests/platform/lib.sh
. "$HERE/lib.sh"

(($# == 1)) || die "usage: $0 STORE_DIR"
mkdir -p "$1"
STORE=$(cd "$1" && pwd)
TARGET=x86_64-unknown-linux-musl
START=$SECONDS

if ! command -v buildah >/dev/null || ! command -v musl-gcc >/dev/null; then
  "$HERE/install-deps.sh"
fi
if ! rustup target list --installed | grep -qx "$TARGET"; then
  log "rustup target add $TARGET"
  rustup target add "$TARGET" >&2
fi

# Run from a test, cargo test's own variables (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...) are
# set; some build scripts (ring's) watch them and would rebuild half the tree each time.
while read -r var; do unset "$var"; done < <(compgen -e | grep -E '^(CARGO_(PKG_|MANIFEST_|CRATE_|BIN_|TARGET_TMPDIR|PRIMARY_)|OUT_DIR$)')

# The crate's version, and where cargo puts what it builds (target/ unless CARGO_TARGET_DIR or
# a cargo config says otherwise).
{ read -r VERSION && read -r TARGET_DIR; } < <(cd "$ROOT" && cargo metadata --no-deps --format-version 1 --locked |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["packages"][0]["version"]); print(m["target_directory"])')
[[ -n $VERSION && -n $TARGET_DIR ]] || die "cannot read the version and target directory from cargo metadata"
log "cargo build --release --target $TARGET"
(cd "$ROOT" && cargo build --release --locked --target "$TARGET" --bin jobretry-operator >&2)
BUILT=$((SECONDS - START))

CONTEXT="$STORE/context"
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT"
cp "$TARGET_DIR/$TARGET/release/jobretry-operator" "$CONTEXT/"
IMAGE="jobretry-operator:$VERSION"
buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver vfs \
  bud --isolation chroot --quiet -f "$ROOT/Dockerfile.prebuilt" \
  --build-arg "VERSION=$VERSION" -t "$IMAGE" "$CONTEXT" >&2
log "image $IMAGE built in $((SECONDS - START))s (binary ${BUILT}s)"
echo "$IMAGE"
