# syntax=docker/dockerfile:1
# The jobretry-operator image, built from source by people who have Docker (or Podman or
# buildah) but no Rust toolchain:
#   docker build -t jobretry-operator:0.1.0 .
#
# What it makes: one static binary (target x86_64-unknown-linux-musl; TLS by rustls, with the
# Mozilla CA roots compiled in, so no OS trust store is needed) on an empty base (`scratch`),
# running as UID/GID 65532. About 12 MiB. The chart (charts/jobretry-operator) runs it with a
# read-only root file system; the binary writes no files.
#
# tests/platform/build-image.sh builds the same image without Docker and without a Rust
# container: it compiles the binary with the host's toolchain and packs it with
# Dockerfile.prebuilt (buildah). tests/e2e_image.rs keeps the two files' final stages alike
# and checks that the rust image below is the crate's rust-version and that VERSION is the
# crate's version.

# The crate's rust-version (Cargo.toml): the oldest toolchain that builds it.
FROM rust:1.89-bookworm AS builder
RUN rustup target add x86_64-unknown-linux-musl \
    && apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole workspace: Cargo.toml names targets (e.g. benches/) that must exist to build.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin jobretry-operator \
    && cp target/x86_64-unknown-linux-musl/release/jobretry-operator /jobretry-operator

FROM scratch
# The crate's version (Cargo.toml), and where its source is published.
ARG VERSION=0.1.0
ARG SOURCE=https://github.com/jobretry/jobretry-operator
LABEL org.opencontainers.image.title="jobretry-operator" \
      org.opencontainers.image.description="Kubernetes operator that retries BullMQ jobs in Redis exactly as BullMQ's Job.retry() would" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /jobretry-operator /jobretry-operator
USER 65532:65532
# /healthz, /readyz, /metrics (--http-addr, default 0.0.0.0:8080)
EXPOSE 8080
ENTRYPOINT ["/jobretry-operator"]
