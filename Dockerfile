# syntax=docker/dockerfile:1
# Two images from one build: `--target operator` (audit-operator) and `--target consumer`
# (audit-consumer, what AuditConsumer pods run). Both run as a numeric non-root user on a
# distroless base with no shell and no package manager, and need no writable filesystem.
#
#   docker build --target operator -t audit-operator:0.1.0 .
#   docker build --target consumer -t audit-consumer:0.1.0 .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The release profile in Cargo.toml (thin LTO, one codegen unit) applies here.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && install -D -m 0755 target/release/audit-operator /out/audit-operator \
 && install -D -m 0755 target/release/audit-consumer /out/audit-consumer

# glibc of distroless cc-debian12 matches the bookworm builder's.
FROM gcr.io/distroless/cc-debian12:nonroot AS consumer
COPY --from=build /out/audit-consumer /usr/local/bin/audit-consumer
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/audit-consumer"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/audit-operator /usr/local/bin/audit-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/audit-operator"]
