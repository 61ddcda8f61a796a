#!/usr/bin/env bash
# Throughput benchmark of audit-consumer against a real nats-server (see docs/benchmarks.md).
#
# Preloads EVENTS ~200-byte CloudEvents into a file-backed stream, then drains it three times
# with separate durable consumers: once with a bare async-nats pull-and-ack loop (the
# ceiling: no parsing, no output), and twice with the real audit-consumer binary writing to
# /dev/null, without and with --integrity (hash-chained lines, signed heads published to a
# witness stream at the default checkpoint settings), all with the same batch and max-bytes
# settings and explicit per-message acks; then once more with --output archive into a local
# versitygw object store (the operator's defaults: 100000-line segments, gzip, maxAckPending
# for two segments), whose events
# are acked only once their segment is stored. Prints events/s for each, the ratios, and the
# peak RSS of each process.
#
# Environment: EVENTS (default 1000000), BATCH (256), MAX_BYTES (4194304), ROUNDS (1),
# NATS_PORT (14333), HEALTH_PORT (18333), S3_PORT (19333). Only 127.0.0.1 is used.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=hack/lib/bench-nats.sh
source hack/lib/bench-nats.sh
EVENTS=${EVENTS:-1000000}
BATCH=${BATCH:-256}
MAX_BYTES=${MAX_BYTES:-4194304}
ROUNDS=${ROUNDS:-1}
NATS_PORT=${NATS_PORT:-14333}
HEALTH_PORT=${HEALTH_PORT:-18333}
S3_PORT=${S3_PORT:-19333}
URL="nats://127.0.0.1:${NATS_PORT}"

bin_dir=$(bash hack/testenv.sh | tail -1)
cargo build --release --quiet -p audit-consumer --bin audit-consumer --example ceiling --example preload \
    --example witness_setup --example await_acked --example durable_setup
target=${CARGO_TARGET_DIR:-target}/release

work=$(mktemp -d)
nats_pid=""
consumer_pid=""
store_pid=""
cleanup() {
    [[ -n "$consumer_pid" ]] && kill "$consumer_pid" 2>/dev/null || true
    [[ -n "$store_pid" ]] && kill "$store_pid" 2>/dev/null && wait "$store_pid" 2>/dev/null || true
    [[ -n "$nats_pid" ]] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start_bench_nats "$bin_dir" "$work" "$NATS_PORT"

# The object store: versitygw's posix backend, where a bucket is a directory of its root.
mkdir -p "$work/s3/root/bench" "$work/s3/versions"
printf 'benchkey' >"$work/s3-id"
printf 'benchsecretbenchsecret' >"$work/s3-secret"
ROOT_ACCESS_KEY_ID=benchkey ROOT_SECRET_ACCESS_KEY=benchsecretbenchsecret \
    "$bin_dir/versitygw" --port "127.0.0.1:${S3_PORT}" --region us-east-1 --quiet \
    posix --versioning-dir "$work/s3/versions" "$work/s3/root" >"$work/s3.log" 2>&1 &
store_pid=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/${S3_PORT}") 2>/dev/null && break
    sleep 0.1
done

"$target/examples/preload" "$URL" BENCH bench.events "$EVENTS"
"$target/examples/witness_setup" "$URL" BENCH_INTEGRITY 'bench-integrity.>' "$work/seed.nk" >/dev/null

# Peak RSS in KiB of a running process.
peak_rss() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }

# Drains the stream with the audit-consumer binary as durable consumer $1, extra options
# after it; sets drained="<events/s> <seconds> <peak RSS KiB> <chain heads published
# meanwhile>". Runs in this shell, so that the EXIT trap knows the consumer's pid.
drain() {
    local name=$1
    shift
    local start end rss heads
    start=$(date +%s.%N)
    "$target/audit-consumer" --nats-url "$URL" --stream BENCH --consumer "$name" \
        --create --subjects bench.events --batch "$BATCH" --max-bytes "$MAX_BYTES" \
        --health-listen "127.0.0.1:${HEALTH_PORT}" --log-level warn "$@" \
        >/dev/null 2>"$work/consumer.log" &
    consumer_pid=$!
    # Polls /metrics every 10 ms from one process: cheap, unlike a curl per poll, whose CPU
    # would be taken from the consumer and nats-server under test (see docs/benchmarks.md).
    "$target/examples/await_acked" "127.0.0.1:${HEALTH_PORT}" "$EVENTS" "$consumer_pid" ||
        { cat "$work/consumer.log" >&2; exit 1; }
    end=$(date +%s.%N)
    rss=$(peak_rss "$consumer_pid")
    heads=$(curl -fsS "http://127.0.0.1:${HEALTH_PORT}/metrics" |
        awk '/^audit_consumer_integrity_checkpoints_total\{outcome="published"\}/ { n = $2 } END { print n + 0 }')
    kill -TERM "$consumer_pid"
    wait "$consumer_pid"
    consumer_pid=""
    drained=$(awk -v n="$EVENTS" -v s="$start" -v e="$end" -v r="$rss" -v h="$heads" \
        'BEGIN { printf "%.0f %.2f %d %d\n", n / (e - s), e - s, r, h }')
}

for round in $(seq "$ROUNDS"); do
    ceiling_line=$(/usr/bin/time -f "ceiling_rss_kib=%M" -o "$work/ceiling.time" \
        "$target/examples/ceiling" "$URL" BENCH "ceiling-$round" "$EVENTS" "$BATCH" "$MAX_BYTES")
    ceiling_rate=$(sed -E 's/.*= ([0-9]+) events\/s/\1/' <<<"$ceiling_line")
    ceiling_rss=$(sed -E 's/.*=//' "$work/ceiling.time")
    drain "audit-$round"
    read -r plain_rate plain_secs plain_rss _ <<<"$drained"
    drain "chained-$round" --integrity --integrity-key-file "$work/seed.nk" \
        --integrity-stream BENCH_INTEGRITY --integrity-subject "bench-integrity.chained-$round"
    read -r chained_rate chained_secs chained_rss heads <<<"$drained"
    # The operator's maxAckPending for one archiving pod: two segments' lines and two batches.
    # The last segment of the run is short of 100000 lines and closes by age: 1 s (not the
    # operator's 5m) keeps that tail from dominating a ten-second run.
    "$target/examples/durable_setup" "$URL" BENCH "archived-$round" $((2 * 100000 + 2 * BATCH))
    drain "archived-$round" --output archive --archive-bucket bench \
        --archive-endpoint "http://127.0.0.1:${S3_PORT}" --archive-region us-east-1 \
        --archive-path-style --archive-access-key-id-file "$work/s3-id" \
        --archive-secret-access-key-file "$work/s3-secret" --archive-compression gzip \
        --archive-segment-lines 100000 --archive-segment-age 1s
    read -r archived_rate archived_secs archived_rss _ <<<"$drained"
    segments=$(find "$work/s3/root/bench" -type f -name '*.gz' | wc -l)
    awk -v c="$ceiling_rate" -v cr="$ceiling_rss" -v r="$round" \
        -v p="$plain_rate" -v ps="$plain_secs" -v pr="$plain_rss" \
        -v a="$archived_rate" -v as="$archived_secs" -v ar="$archived_rss" -v g="$segments" \
        -v i="$chained_rate" -v is="$chained_secs" -v ir="$chained_rss" -v h="$heads" 'BEGIN {
        printf "round %d: ceiling %.0f events/s (peak RSS %.1f MiB)\n", r, c, cr / 1024
        printf "  audit-consumer             %.0f events/s (%.2fs, peak RSS %.1f MiB), ratio %.1f%%\n",
            p, ps, pr / 1024, 100 * p / c
        printf "  audit-consumer --integrity %.0f events/s (%.2fs, peak RSS %.1f MiB), ratio %.1f%%, %.1f%% of plain, %d heads\n",
            i, is, ir / 1024, 100 * i / c, 100 * i / p, h
        printf "  audit-consumer --output archive %.0f events/s (%.2fs, peak RSS %.1f MiB), ratio %.1f%%, %.1f%% of plain, %d segments\n",
            a, as, ar / 1024, 100 * a / c, 100 * a / p, g
    }'
done
