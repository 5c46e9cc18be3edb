# syntax=docker/dockerfile:1
# The jobretry-operator image: the Rust binary (glibc-linked, rustls, no OpenSSL) on
# distroless/cc, which carries glibc and libgcc_s and nothing else.
#   docker build -t jobretry-operator:0.1.0 .
# The chart (charts/jobretry-operator) runs it as UID/GID 65532 with a read-only root file
# system; the binary writes no files.

FROM rust:1-bookworm AS builder
WORKDIR /src
# The whole workspace: Cargo.toml names targets (e.g. benches/) that must exist to build.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jobretry-operator \
    && cp target/release/jobretry-operator /jobretry-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /jobretry-operator /usr/local/bin/jobretry-operator
USER 65532:65532
# /healthz, /readyz, /metrics (--http-addr, default 0.0.0.0:8080)
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/jobretry-operator"]
