# Two images from one build: `--target operator` (audit-operator) and `--target consumer`
# (audit-consumer, what AuditConsumer pods run). Both run as a numeric non-root user on a
# distroless base with no shell and no package manager, and need no writable filesystem.
#
#   docker build --target operator -t audit-operator:0.1.0 .
#   docker build --target consumer -t audit-consumer:0.1.0 .
#
# The base images are build arguments so that a machine without a registry can substitute
# local images with the same content (hack/images.sh does); the defaults are the public
# images. No `# syntax=` line: `RUN --mount` is part of the Dockerfile syntax built into
# BuildKit (Docker 20.10 and later), and the directive would make BuildKit pull a frontend
# image from a registry before building anything.

ARG RUST_VERSION=1.95
ARG BUILDER_IMAGE=rust:${RUST_VERSION}-bookworm
# glibc of distroless cc-debian12 matches the bookworm builder's.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
# Only the two shipped binaries, not the test harness or the examples. The release profile in
# Cargo.toml (thin LTO, one codegen unit) applies here.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p audit-operator -p audit-consumer \
 && install -D -m 0755 target/release/audit-operator /out/audit-operator \
 && install -D -m 0755 target/release/audit-consumer /out/audit-consumer

FROM ${RUNTIME_IMAGE} AS consumer
COPY --from=build /out/audit-consumer /usr/local/bin/audit-consumer
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/audit-consumer"]

FROM ${RUNTIME_IMAGE} AS operator
COPY --from=build /out/audit-operator /usr/local/bin/audit-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/audit-operator"]
