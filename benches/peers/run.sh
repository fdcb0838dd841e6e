#!/usr/bin/env bash
# The peers comparison and the scale figures, with one command.
#
#   benches/peers/run.sh            # peers: every system, workload and concurrency, 3 rounds
#   benches/peers/run.sh scale      # scale figures (1M and 10M live keys; takes long)
#   benches/peers/run.sh all        # both
#   QUICK=1 benches/peers/run.sh    # a 1-round, 1-second smoke run of the harness
#
# Knobs (environment): ROUNDS (3), DURATION seconds per cell (5), WARMUP (1), CONCURRENCY
# (1,16,64,256), WORKLOADS (flow,storm,replay90), SYSTEMS (all nine), SCALE_KEYS
# ("1000000 10000000"), RESULTS (benches/peers/results), SVG_DIR (the plots: RESULTS; set
# SVG_DIR=docs/peers to refresh the ones the docs show), KEEP=1 keeps the temporary directory,
# REDIS_SERVER (redis-server; a valkey-server path for idemstore-redis-always-waitaof1, which
# needs WAITAOF), PEERS_REDIS_CONNECTIONS (the Redis engine's connections, 4).
#
# Installs redis-server and PostgreSQL from Debian's packages if they are missing, starts them
# on 127.0.0.1 in a temporary directory, and stops exactly the processes it started (by PID) on
# exit, whatever the exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
MODE=${1:-peers}
RESULTS=${RESULTS:-$HERE/results}
SVG_DIR=${SVG_DIR:-$RESULTS}
if [[ -n "${QUICK:-}" ]]; then
  ROUNDS=${ROUNDS:-1}; DURATION=${DURATION:-1}; WARMUP=${WARMUP:-0.3}; CONCURRENCY=${CONCURRENCY:-1,16}
  SCALE_KEYS=${SCALE_KEYS:-20000}; RESULTS=${RESULTS_QUICK:-/tmp/idemstore-peers-quick}; SVG_DIR=$RESULTS
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
CONCURRENCY=${CONCURRENCY:-1,16,64,256}
WORKLOADS=${WORKLOADS:-flow,storm,replay90}
SYSTEMS=${SYSTEMS:-idemstore-immediate,idemstore-buffered,idemstore-memory,redb-naive,redis-always,redis-everysec,redis-none,pg-sync-on,pg-sync-off}
SCALE_KEYS=${SCALE_KEYS:-1000000 10000000}
REDIS_PORTS=(6391 6392 6393)
REPLICA_PORT=6394
PG_PORT=5441

log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

WORK=$(mktemp -d /tmp/idemstore-peers.XXXXXX)
PIDS=()
PGDATA=""
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  if [[ -n "$PGDATA" && -f "$PGDATA/postmaster.pid" ]]; then
    kill -INT "$(head -1 "$PGDATA/postmaster.pid")" 2>/dev/null || true
  fi
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  if [[ -n "$PGDATA" ]]; then
    for _ in $(seq 100); do [[ -f "$PGDATA/postmaster.pid" ]] || break; sleep 0.1; done
  fi
  if [[ -z "${KEEP:-}" ]]; then rm -rf "$WORK"; else log "kept $WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

apt_install() {
  log "installing $* from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

start_servers() {
  [[ -n "${REDIS_SERVER:-}" ]] || command -v redis-server >/dev/null || apt_install redis-server
  local server=${REDIS_SERVER:-redis-server}
  [[ -n "$(pg_bin)" && -x "$(pg_bin)/initdb" ]] || apt_install postgresql
  local PGBIN; PGBIN=$(pg_bin)
  local modes=(always everysec none)
  for i in 0 1 2; do
    local d="$WORK/redis-${modes[$i]}"; mkdir -p "$d"
    {
      echo "bind 127.0.0.1"; echo "port ${REDIS_PORTS[$i]}"; echo "dir $d"; echo "daemonize no"
      echo "save \"\""; echo "auto-aof-rewrite-percentage 0"; echo "logfile $d/redis.log"
      case ${modes[$i]} in
        always) echo "appendonly yes"; echo "appendfsync always"; echo "repl-diskless-sync-delay 0" ;;
        everysec) echo "appendonly yes"; echo "appendfsync everysec" ;;
        none) echo "appendonly no" ;;
      esac
    } > "$d/redis.conf"
    "$server" "$d/redis.conf" >/dev/null 2>&1 &
    PIDS+=($!)
  done
  # A replica of the `always` server, for the system that waits for one (only when it runs:
  # replication costs the primary work that the other systems would then share).
  if [[ ",$SYSTEMS," == *",idemstore-redis-always-wait1,"* || ",$SYSTEMS," == *",idemstore-redis-always-waitaof1,"* ]]; then
    local d="$WORK/redis-replica"; mkdir -p "$d"
    "$server" --port "$REPLICA_PORT" --bind 127.0.0.1 --dir "$d" --save "" \
      --appendonly yes --appendfsync always --replicaof 127.0.0.1 "${REDIS_PORTS[0]}" \
      --logfile "$d/redis.log" >/dev/null 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
      redis-cli -p "$REPLICA_PORT" info replication 2>/dev/null | grep -q 'master_link_status:up' && break
      sleep 0.1
    done
  fi
  # PostgreSQL refuses to run as root: initdb and the server run as the postgres user.
  PGDATA="$WORK/pg"; mkdir -p "$PGDATA"
  local as=()
  if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$WORK" postgres
    chown postgres "$WORK" "$PGDATA"; chmod 755 "$WORK"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$PGBIN/initdb" -D "$PGDATA" --auth=trust -U postgres -E UTF8 --locale=C.UTF-8 >"$WORK/initdb.log" 2>&1
  "${as[@]}" "$PGBIN/postgres" -D "$PGDATA" -c listen_addresses=127.0.0.1 -c port=$PG_PORT \
    -c unix_socket_directories="$PGDATA" -c max_connections=300 >"$WORK/pg.log" 2>&1 &
  PIDS+=($!)
  for port in "${REDIS_PORTS[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$port" ping >/dev/null
  done
  for _ in $(seq 200); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p $PG_PORT && break; sleep 0.1; done
  "$PGBIN/pg_isready" -q -h 127.0.0.1 -p $PG_PORT
  log "redis $("$server" --version | awk '{print $3}') on ${REDIS_PORTS[*]}, postgres $("$PGBIN/postgres" --version | awk '{print $3}') on $PG_PORT"
}

build() {
  log "building the load generator (release)"
  cargo build --release --quiet --manifest-path "$HERE/Cargo.toml"
  BIN="$HERE/target/release/idemstore-peers"
}

machine() {
  {
    echo "date_utc: $(date -u +%FT%TZ)"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "kernel: $(uname -r)"
    echo "fs: $(df -T "$WORK" | awk 'NR==2{print $2" on "$1}')"
    echo "uptime: $(uptime)"
  } >"$1"
}

peers() {
  start_servers
  build
  mkdir -p "$RESULTS" "$SVG_DIR"
  local csv="$RESULTS/peers.csv"
  [[ -n "${APPEND:-}" ]] || rm -f "$csv"
  machine "$RESULTS/peers-machine.txt"
  log "peers: rounds=$ROUNDS duration=${DURATION}s concurrency=$CONCURRENCY workloads=$WORKLOADS"
  "$BIN" bench --systems "$SYSTEMS" --workloads "$WORKLOADS" --concurrency "$CONCURRENCY" \
    --rounds "$ROUNDS" --duration "$DURATION" --warmup "$WARMUP" --out "$csv" \
    --data-dir "$WORK/cells" \
    --redis-always "redis://127.0.0.1:${REDIS_PORTS[0]}/" \
    --redis-everysec "redis://127.0.0.1:${REDIS_PORTS[1]}/" \
    --redis-none "redis://127.0.0.1:${REDIS_PORTS[2]}/" \
    --pg "host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"
  echo "uptime_end: $(uptime)" >>"$RESULTS/peers-machine.txt"
  "$BIN" report --in "$csv" --md "$RESULTS/peers.md" --svg-dir "$SVG_DIR"
}

scale() {
  build
  mkdir -p "$RESULTS"
  local csv="$RESULTS/scale.csv"
  [[ -n "${APPEND:-}" ]] || rm -f "$csv"
  machine "$RESULTS/scale-machine.txt"
  for keys in $SCALE_KEYS; do
    log "scale: loading $keys records"
    "$BIN" scale --phase load --keys "$keys" --dir "$WORK/scale-$keys" --out "$csv"
    # The compaction phase removes every loaded record; at 10M that is kept out (it would take
    # most of an hour here): the issue asks for it at 1M.
    local fg=10; [[ $keys -le 1000000 ]] || fg=0
    log "scale: opening $keys records"
    "$BIN" scale --phase open --keys "$keys" --dir "$WORK/scale-$keys" --out "$csv" --foreground-secs $fg
    rm -rf "$WORK/scale-$keys"
  done
}

case "$MODE" in
  peers) peers ;;
  scale) scale ;;
  all) peers; scale ;;
  *) echo "usage: $0 [peers|scale|all]" >&2; exit 2 ;;
esac
log "done; results in $RESULTS"
