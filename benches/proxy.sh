#!/usr/bin/env bash
# Fault-proxy overhead: pgbench straight to PostgreSQL vs through `walwatch proxy`, in the
# same run, on the same cluster.
#
#   bash benches/proxy.sh [SECONDS]     (default 30 s per run)
#
# Starts a throwaway PostgreSQL (TCP, trust for the bench role), `pgbench -i -s 10`, then for
# select-only (-S) and TPC-B (the default script), 8 clients, 2 threads, extended protocol
# (-M extended): direct, through the proxy with no rules, and through the proxy with 10 rules
# that never match; and through a plain byte relay (examples/tcp_relay.rs: tokio's
# copy_bidirectional, no protocol work), the floor any proxy process in the path costs on this
# machine. Prints tps and the latency percentiles pgbench measured (--log, p50/p99).
# Target (issue 14): through the proxy >= 90 % of direct tps, added p99 <= 0.2 ms.
# WALWATCH_BIN=<binary> uses that walwatch instead of building the release one.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
bash tests/install-postgres.sh
if [ -z "${WALWATCH_BIN:-}" ]; then
  cargo build --release --quiet
  WALWATCH_BIN=$PWD/target/release/walwatch
fi
cargo build --release --quiet --example tcp_relay
RELAY_BIN=$PWD/target/release/examples/tcp_relay
BIN=${WALWATCH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
PGBENCH=$(command -v pgbench || echo "$BIN/pgbench")

WORK=$(mktemp -d /tmp/walwatch-proxy-bench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
PROXY_PID=
cleanup() {
  if [ -n "$PROXY_PID" ]; then kill "$PROXY_PID" 2>/dev/null || true; fi
  as_pg "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

as_pg "$BIN/initdb" -D "$WORK/data" -U postgres -E UTF8 --locale=C --auth=trust >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$WORK'
fsync = off
synchronous_commit = off
CONF
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w start >/dev/null
"$PGBENCH" -h 127.0.0.1 -p "$PORT" -U postgres -i -s 10 -q postgres >/dev/null 2>&1

start_proxy() { # start_proxy RULE-ARGS... (or: start_proxy relay)
  local port
  port=$(free_port)
  : >"$WORK/proxy.err"
  if [ "${1:-}" = relay ]; then
    "$RELAY_BIN" "127.0.0.1:$port" "127.0.0.1:$PORT" 2>"$WORK/proxy.err" &
  else
    "$WALWATCH_BIN" proxy --listen "127.0.0.1:$port" --upstream "127.0.0.1:$PORT" "$@" 2>"$WORK/proxy.err" &
  fi
  PROXY_PID=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$WORK/proxy.err" 2>/dev/null && break
    sleep 0.1
  done
  PROXY_PORT=$port
}
stop_proxy() { kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=; }

# run NAME PORT PGBENCH-ARGS...: prints "NAME tps p50_ms p99_ms".
run() {
  local name=$1 port=$2
  shift 2
  local dir="$WORK/log-$name"
  mkdir -p "$dir"
  local out
  out=$(cd "$dir" && "$PGBENCH" -h 127.0.0.1 -p "$port" -U postgres -c 8 -j 2 -T "$SECS" -M extended -n --log "$@" postgres 2>&1)
  local tps
  tps=$(echo "$out" | sed -nE 's/^tps = ([0-9.]+).*/\1/p' | head -n 1)
  # Per-transaction log lines: client_id transaction_no time_us script_no time_epoch time_us.
  local pct
  pct=$(cat "$dir"/pgbench_log.* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.3f %.3f", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}')
  printf '%-28s tps %10s   p50 %s ms   p99 %s ms\n' "$name" "$tps" ${pct}
}

RULES=()
for i in $(seq 10); do RULES+=(--fault "error:DELETE FROM nowhere_$i*:never"); done

for mode in select-only tpcb; do
  args=()
  [ "$mode" = select-only ] && args=(-S)
  echo "== $mode, 8 clients, ${SECS}s"
  run "$mode direct" "$PORT" "${args[@]}"
  start_proxy relay
  run "$mode plain TCP relay (floor)" "$PROXY_PORT" "${args[@]}"
  stop_proxy
  start_proxy
  run "$mode proxy, no rules" "$PROXY_PORT" "${args[@]}"
  stop_proxy
  start_proxy "${RULES[@]}"
  run "$mode proxy, 10 rules" "$PROXY_PORT" "${args[@]}"
  stop_proxy
done
