#!/usr/bin/env bash
# Requests per second of the demo service (`idemstore serve --durability memory`) with and
# without the idempotency layer, measured with wrk (Debian package `wrk`). Not a test: it prints
# one RESULT line per run. Usage: benches/serve.sh [rounds]; DURATION, CONNS, THREADS override
# wrk's settings (10s, 32, 1).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${DURATION:-10s}
conns=${CONNS:-32}
threads=${THREADS:-1}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
cargo build --release -p idemstore-cli --bin idemstore >&2
bin=${CARGO_TARGET_DIR:-target}/release/idemstore

run() { # label, mode, serve flags...
    local label=$1 mode=$2
    shift 2
    local out pid addr
    out=$(mktemp)
    "$bin" serve --durability memory --addr 127.0.0.1:0 "$@" >"$out" 2>/dev/null &
    pid=$!
    until grep -q 'http://' "$out"; do
        kill -0 "$pid" 2>/dev/null || { echo "serve exited" >&2; exit 1; }
        sleep 0.05
    done
    addr=$(grep -o 'http://[0-9.:]*' "$out")
    printf '%-16s load %s  ' "$label" "$(cut -d' ' -f1-3 /proc/loadavg)"
    wrk -t"$threads" -c"$conns" -d"$duration" -s benches/serve.lua "$addr" -- "$mode" | grep RESULT
    kill -TERM "$pid"
    wait "$pid" || true
    rm -f "$out"
}

for round in $(seq "$rounds"); do
    echo "round $round"
    run "without layer" new --without-idempotency
    run "with layer" new
    run "replays" replay
done
