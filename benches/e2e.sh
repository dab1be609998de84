#!/usr/bin/env bash
# End-to-end drain benchmark: walwatch vs pg_recvlogical on identical slots, in the same run.
#
#   bash benches/e2e.sh [REPS]        (default 3 repetitions; medians are reported)
#
# Starts a throwaway PostgreSQL (wal_level=logical, TCP + SCRAM), creates
#   orders(id bigserial pk, user_id int, item text, status text, amount numeric(10,2), created_at timestamptz)
# and for each workload -- one 1,000,000-row transaction, and 100,000 single-row transactions --
# creates both slots BEFORE the workload, runs it, then times:
#   pg_recvlogical -P pgoutput (same protocol options) draining its slot to /dev/null
#   walwatch --endpos draining its slot to a JSONL file (typed decode + JSON + write)
# and walwatch's peak RSS. Target: walwatch within 1.25x of pg_recvlogical.
# With WALWATCH_BASELINE=<an older walwatch binary>, the same drains also run that binary on a
# third identical slot in every repetition (alternating which walwatch goes first), and its
# medians are printed beside this build's: a baseline measured in the same run.
# Then the memory bound of bounded-memory CDC: one HUGE_ROWS-row transaction (default
# 5,000,000; 0 skips it) drained by walwatch at its default spill threshold (64 MB); the script
# fails unless every line arrived and the peak RSS stayed under 200 MB.
# Then Kafka throughput: KAFKA_ROWS changes (default 1,000,000, in 1,000-row transactions; 0
# skips it) drained by walwatch into a Tansu broker (tests/install-tansu.sh), against a plain
# rdkafka producer (benches/kafka_producer.rs) sending as many messages of the same average size
# to the same broker, in the same run.
# Then the Arrow sink: ARROW_ROWS changes (default 1,000,000, in 1,000-row transactions; 0 skips
# it) drained by walwatch into JSONL, Parquet and Arrow IPC from three identical slots: time and
# size of each; the Parquet rows are counted with pyarrow (tests/install-pytools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
ROWS_BIG=${ROWS_BIG:-1000000}
TXNS_SMALL=${TXNS_SMALL:-100000}
HUGE_ROWS=${HUGE_ROWS:-5000000}
KAFKA_ROWS=${KAFKA_ROWS:-1000000}
ARROW_ROWS=${ARROW_ROWS:-1000000}

bash tests/install-postgres.sh
cargo build --release --quiet
WALWATCH=$PWD/target/release/walwatch
BASELINE=${WALWATCH_BASELINE:-}
BIN=${WALWATCH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}

WORK=$(mktemp -d /tmp/walwatch-e2e.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TANSU_PID=
cleanup() {
  if [ -n "$TANSU_PID" ]; then kill "$TANSU_PID" 2>/dev/null || true; fi
  as_pg "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== starting PostgreSQL ($BIN, port $PORT)" >&2
as_pg "$BIN/initdb" -D "$WORK/data" -U postgres -E UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 >/dev/null
cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
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
psql_admin() { "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$WORK" -p "$PORT" -U postgres -d bench "$@"; }
"$BIN/psql" -X -q -h "$WORK" -p "$PORT" -U postgres -d postgres -c "CREATE ROLE bench LOGIN REPLICATION SUPERUSER PASSWORD 'bench'" -c "CREATE DATABASE bench OWNER bench"
psql_admin -c "CREATE TABLE orders (id bigserial PRIMARY KEY, user_id int, item text, status text, amount numeric(10,2), created_at timestamptz)"
DSN="postgres://bench:bench@127.0.0.1:$PORT/bench"
export PGPASSWORD=bench

# run_timed OUTFILE CMD...: wall seconds and the child's peak RSS (MB), as "secs rss".
run_timed() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
dt = time.monotonic() - t
if r.returncode != 0:
    sys.exit(f"command failed ({r.returncode}): {sys.argv[1:]}")
print(f"{dt:.3f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024}")
PY
}

workload() {
  case "$1" in
    big) psql_admin -c "INSERT INTO orders (user_id, item, status, amount, created_at)
           SELECT g % 1000, 'item-' || g, 'new', (g % 100000) / 100.0, now() FROM generate_series(1, $ROWS_BIG) g" ;;
    small) psql_admin -c "DO \$\$ BEGIN FOR i IN 1..$TXNS_SMALL LOOP
           INSERT INTO orders (user_id, item, status, amount, created_at) VALUES (i % 1000, 'item-' || i, 'new', 12.50, now());
           COMMIT; END LOOP; END \$\$" ;;
  esac
}

# BEGIN + rows + COMMIT per transaction.
expected_lines() {
  case "$1" in
    big) echo $((ROWS_BIG + 2)) ;;
    small) echo $((TXNS_SMALL * 3)) ;;
  esac
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

results=()
# drain BINARY SLOT END: times BINARY draining SLOT to a file and checks every line came.
drain() {
  local secs mb lines
  read -r secs mb < <(run_timed "$1" -q --dsn "$DSN" --slot "$2" --tables orders --endpos "$3" --output "$WORK/out.jsonl")
  lines=$(wc -l <"$WORK/out.jsonl")
  rm -f "$WORK/out.jsonl"
  if [ "$lines" != "$(expected_lines "$w")" ]; then
    echo "e2e: $1 wrote $lines lines for '$w', expected $(expected_lines "$w")" >&2
    exit 1
  fi
  echo "$secs $mb $lines"
}

for w in big small; do
  ww_times=(); pr_times=(); bl_times=(); rss=()
  for rep in $(seq 1 "$REPS"); do
    psql_admin -c "TRUNCATE orders" >/dev/null
    "$WALWATCH" -q --dsn "$DSN" --slot ww_$w --tables orders --endpos now
    if [ -n "$BASELINE" ]; then "$BASELINE" -q --dsn "$DSN" --slot bl_$w --tables orders --endpos now; fi
    "$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PORT" -U bench -d bench --slot pr_$w --create-slot -P pgoutput
    workload "$w" >/dev/null
    # The insert position: with synchronous_commit=off the flush position can lag the last
    # commits, and both drains must include every transaction of the workload.
    END=$(psql_admin -c "SELECT pg_current_wal_insert_lsn()")
    read -r pr _ < <(run_timed "$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PORT" -U bench -d bench --slot pr_$w --start --no-loop \
        -E "$END" -o proto_version=3 -o publication_names=walwatch_ww_$w -o messages=true -o streaming=on -f /dev/null)
    bl=
    if [ -n "$BASELINE" ] && [ $((rep % 2)) = 0 ]; then out=$(drain "$BASELINE" bl_$w "$END") || exit 1; bl=${out%% *}; fi
    out=$(drain "$WALWATCH" ww_$w "$END") || exit 1
    read -r ww mb lines <<<"$out"
    if [ -n "$BASELINE" ] && [ -z "$bl" ]; then out=$(drain "$BASELINE" bl_$w "$END") || exit 1; bl=${out%% *}; fi
    psql_admin -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ('ww_$w', 'pr_$w', 'bl_$w')" >/dev/null
    echo "$w rep $rep: pg_recvlogical ${pr}s, walwatch ${ww}s${bl:+, baseline ${bl}s} (${lines} lines, peak RSS ${mb} MB)" >&2
    ww_times+=("$ww"); pr_times+=("$pr"); rss+=("$mb")
    if [ -n "$bl" ]; then bl_times+=("$bl"); fi
  done
  ww_med=$(printf '%s\n' "${ww_times[@]}" | median)
  pr_med=$(printf '%s\n' "${pr_times[@]}" | median)
  rss_max=$(printf '%s\n' "${rss[@]}" | sort -n | tail -n 1)
  ratio=$(python3 -c "print(f'{$ww_med/$pr_med:.2f}')")
  line=$(printf '%-6s pg_recvlogical %7.2fs  walwatch %7.2fs  ratio %5sx  walwatch peak RSS %4s MB' "$w" "$pr_med" "$ww_med" "$ratio" "$rss_max")
  if [ -n "$BASELINE" ]; then
    bl_med=$(printf '%s\n' "${bl_times[@]}" | median)
    line+=$(printf '  baseline %7.2fs (ratio %sx)' "$bl_med" "$(python3 -c "print(f'{$bl_med/$pr_med:.2f}')")")
  fi
  results+=("$line")
done

echo
echo "medians of $REPS (big = one ${ROWS_BIG}-row transaction, small = ${TXNS_SMALL} single-row transactions):"
printf '%s\n' "${results[@]}"

if [ "$HUGE_ROWS" -gt 0 ]; then
  psql_admin -c "TRUNCATE orders" >/dev/null
  "$WALWATCH" -q --dsn "$DSN" --slot ww_huge --tables orders --endpos now
  psql_admin -c "INSERT INTO orders (user_id, item, status, amount, created_at)
         SELECT g % 1000, 'item-' || g, 'new', (g % 100000) / 100.0, now() FROM generate_series(1, $HUGE_ROWS) g" >/dev/null
  END=$(psql_admin -c "SELECT pg_current_wal_insert_lsn()")
  read -r secs mb < <(run_timed "$WALWATCH" -q --dsn "$DSN" --slot ww_huge --tables orders --endpos "$END" --output "$WORK/huge.jsonl" --spill-dir "$WORK")
  lines=$(wc -l <"$WORK/huge.jsonl")
  rm -f "$WORK/huge.jsonl"
  psql_admin -c "SELECT pg_drop_replication_slot('ww_huge')" >/dev/null
  echo "huge   one ${HUGE_ROWS}-row transaction: walwatch ${secs}s, ${lines} lines, peak RSS ${mb} MB (spill threshold 64 MB)"
  if [ "$lines" != "$((HUGE_ROWS + 2))" ]; then
    echo "e2e: walwatch wrote $lines lines for the huge transaction, expected $((HUGE_ROWS + 2))" >&2
    exit 1
  fi
  if [ "$mb" -ge 200 ]; then
    echo "e2e: walwatch's peak RSS was $mb MB for the huge transaction; the bound is 200 MB" >&2
    exit 1
  fi
fi

if [ "$KAFKA_ROWS" -gt 0 ]; then
  TANSU=$(bash tests/install-tansu.sh)
  cargo bench --quiet --bench kafka_producer --no-run 2>/dev/null
  KPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$TANSU" broker --listener-url "tcp://127.0.0.1:$KPORT" --advertised-listener-url "tcp://127.0.0.1:$KPORT" \
    --storage-engine memory://tansu/ >"$WORK/tansu.log" 2>&1 &
  TANSU_PID=$!
  for _ in $(seq 1 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$KPORT))" 2>/dev/null && break; sleep 0.1; done
  psql_admin -c "TRUNCATE orders" >/dev/null
  "$WALWATCH" -q --dsn "$DSN" --slot ww_kafka --tables orders --endpos now
  "$WALWATCH" -q --dsn "$DSN" --slot ww_ksize --tables orders --endpos now
  "$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PORT" -U bench -d bench --slot pr_kafka --create-slot -P pgoutput
  psql_admin -c "DO \$\$ BEGIN FOR i IN 0..$((KAFKA_ROWS / 1000 - 1)) LOOP
         INSERT INTO orders (user_id, item, status, amount, created_at)
         SELECT g % 1000, 'item-' || g, 'new', (g % 100000) / 100.0, now() FROM generate_series(i * 1000 + 1, i * 1000 + 1000) g;
         COMMIT; END LOOP; END \$\$" >/dev/null
  END=$(psql_admin -c "SELECT pg_current_wal_insert_lsn()")
  # The average message: the JSON of a change, as walwatch writes it.
  "$WALWATCH" -q --dsn "$DSN" --slot ww_ksize --tables orders --endpos "$END" --ops insert --output "$WORK/ksize.jsonl"
  SIZE=$(python3 -c "import os; n=sum(1 for _ in open('$WORK/ksize.jsonl')); print(os.path.getsize('$WORK/ksize.jsonl') // n - 1)")
  # What the server alone needs to decode and send the same changes.
  read -r pr _ < <(run_timed "$BIN/pg_recvlogical" -h 127.0.0.1 -p "$PORT" -U bench -d bench --slot pr_kafka --start --no-loop \
      -E "$END" -o proto_version=3 -o publication_names=walwatch_ww_kafka -o messages=true -o streaming=on -f /dev/null)
  read -r ww mb < <(run_timed "$WALWATCH" -q --dsn "$DSN" --slot ww_kafka --tables orders --endpos "$END" --sink "kafka://127.0.0.1:$KPORT")
  read -r plain _ < <(cargo bench --quiet --bench kafka_producer -- "127.0.0.1:$KPORT" plain.orders "$KAFKA_ROWS" "$SIZE")
  psql_admin -c "SELECT pg_drop_replication_slot('ww_kafka'), pg_drop_replication_slot('ww_ksize'), pg_drop_replication_slot('pr_kafka')" >/dev/null
  rate() { python3 -c "print(f'{$KAFKA_ROWS/$1:,.0f}')"; }
  echo "kafka  ${KAFKA_ROWS} changes (~${SIZE}-byte values) to Tansu: walwatch end to end ${ww}s ($(rate "$ww") changes/s, peak RSS ${mb} MB); plain rdkafka producer ${plain}s ($(rate "$plain") msgs/s); pg_recvlogical alone draining the same changes to /dev/null ${pr}s"
fi

if [ "$ARROW_ROWS" -gt 0 ]; then
  PY=$(bash tests/install-pytools.sh)
  psql_admin -c "TRUNCATE orders" >/dev/null
  for f in jsonl parquet ipc; do "$WALWATCH" -q --dsn "$DSN" --slot "ww_a$f" --tables orders --endpos now; done
  psql_admin -c "DO \$\$ BEGIN FOR i IN 0..$((ARROW_ROWS / 1000 - 1)) LOOP
         INSERT INTO orders (user_id, item, status, amount, created_at)
         SELECT g % 1000, 'item-' || g, 'new', (g % 100000) / 100.0, now() FROM generate_series(i * 1000 + 1, i * 1000 + 1000) g;
         COMMIT; END LOOP; END \$\$" >/dev/null
  END=$(psql_admin -c "SELECT pg_current_wal_insert_lsn()")
  read -r tj mj < <(run_timed "$WALWATCH" -q --dsn "$DSN" --slot ww_ajsonl --tables orders --endpos "$END" --output "$WORK/arrow.jsonl")
  read -r tp mp < <(run_timed "$WALWATCH" -q --dsn "$DSN" --slot ww_aparquet --tables orders --endpos "$END" --sink "arrow:$WORK/pq?format=parquet")
  read -r ti mi < <(run_timed "$WALWATCH" -q --dsn "$DSN" --slot ww_aipc --tables orders --endpos "$END" --sink "arrow:$WORK/ipc")
  psql_admin -c "SELECT pg_drop_replication_slot('ww_ajsonl'), pg_drop_replication_slot('ww_aparquet'), pg_drop_replication_slot('ww_aipc')" >/dev/null
  sj=$(du -sb "$WORK/arrow.jsonl" | cut -f1); sp=$(du -sb "$WORK/pq" | cut -f1); si=$(du -sb "$WORK/ipc" | cut -f1)
  rows=$("$PY" -c "import glob, pyarrow.parquet as pq; print(sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob('$WORK/pq/*/*.parquet')))")
  files=$(ls "$WORK"/pq/*/*.parquet | wc -l)
  rm -rf "$WORK/arrow.jsonl" "$WORK/pq" "$WORK/ipc"
  if [ "$rows" != "$ARROW_ROWS" ]; then
    echo "e2e: the Parquet files hold $rows rows, expected $ARROW_ROWS" >&2
    exit 1
  fi
  mb() { python3 -c "print(f'{$1/1e6:.1f}')"; }
  echo "arrow  ${ARROW_ROWS} changes: JSONL ${tj}s $(mb "$sj") MB (RSS ${mj} MB); Parquet ${tp}s $(mb "$sp") MB in ${files} files (RSS ${mp} MB, $(python3 -c "print(f'{$sp/$sj:.3f}')")x the JSONL size); Arrow IPC ${ti}s $(mb "$si") MB (RSS ${mi} MB)"
fi
