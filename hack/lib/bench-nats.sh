# shellcheck shell=bash
# Sourced by the benchmark scripts: a JetStream nats-server of their own on 127.0.0.1.
#
# start_bench_nats BIN_DIR WORK PORT starts it with its store and log under WORK, sets nats_pid
# (for the caller's cleanup trap) and returns once the port accepts connections.
start_bench_nats() {
    local bin_dir=$1 work=$2 port=$3
    "$bin_dir/nats-server" -js -sd "$work/js" -a 127.0.0.1 -p "$port" >"$work/nats.log" 2>&1 &
    # shellcheck disable=SC2034 # read by the caller's cleanup
    nats_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nats-server did not open port $port; its log:" >&2
    cat "$work/nats.log" >&2
    return 1
}
