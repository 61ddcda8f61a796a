#!/usr/bin/env bash
# Publish-to-line latency of audit-consumer against a real nats-server, side by side with a
# bare async-nats pull-and-ack loop in the same run (see docs/benchmarks.md and
# consumer/examples/latency.rs for what is measured).
#
# Environment: RATES (default "1000 10000 50000" events/s), PODS ("1 3"), SECONDS_PER_RUN
# (10), NATS_PORT (14334), HEALTH_PORT (18340, and the ports after it). Only 127.0.0.1 is used.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=hack/lib/bench-nats.sh
source hack/lib/bench-nats.sh
RATES=${RATES:-1000 10000 50000}
PODS=${PODS:-1 3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
NATS_PORT=${NATS_PORT:-14334}
HEALTH_PORT=${HEALTH_PORT:-18340}
URL="nats://127.0.0.1:${NATS_PORT}"

bin_dir=$(bash hack/testenv.sh | tail -1)
cargo build --release --quiet --locked -p audit-consumer --bin audit-consumer --example latency
target=${CARGO_TARGET_DIR:-target}/release

work=$(mktemp -d)
nats_pid=""
cleanup() {
    [[ -n "$nats_pid" ]] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start_bench_nats "$bin_dir" "$work" "$NATS_PORT"

echo "| events/s | pods | way | events counted | p50 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|---|"
for rate in $RATES; do
    for pods in $PODS; do
        "$target/examples/latency" "$URL" "$target/audit-consumer" "$rate" "$SECONDS_PER_RUN" "$pods" "$HEALTH_PORT"
    done
done
# What the pull settings trade: the same 10,000 events/s with one pod and a small batch.
for batch in 1 16; do
    "$target/examples/latency" "$URL" "$target/audit-consumer" 10000 "$SECONDS_PER_RUN" 1 "$HEALTH_PORT" --batch "$batch" |
        sed "s/audit-consumer/audit-consumer --batch $batch/"
done
