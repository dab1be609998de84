#!/usr/bin/env bash
# Snapshot throughput: walwatch --snapshot only against COPY, in one run on one throwaway cluster.
#
#   bash benches/snapshot.sh [REPS]          (default 3; medians reported)
#
# The table is benches/e2e.sh's orders (id bigserial pk, user_id int, item text, status text,
# amount numeric(10,2), created_at timestamptz), ROWS rows (default 10,000,000), and a second one
# of ROWS/2 rows each for the two-table runs. Timed one after the other, each REPS times:
#   copy           psql -c 'COPY orders TO STDOUT' > /dev/null: the server's fastest read path
#   \copy          psql -c '\copy orders to FILE': the same into a file on disk
#   jsonl          walwatch --tables orders --snapshot only --output FILE
#   parquet        walwatch --tables orders --snapshot only --sink arrow:DIR?format=parquet
#   copy x2        COPY of both halves, one after the other
#   parquet x2 p2  walwatch --tables orders_a,orders_b --snapshot-parallel 2 --sink arrow:…parquet
#   continued      walwatch --slot S --tables orders --snapshot only --output FILE on a slot whose
#                  first run was killed as soon as the slot existed: the rows are read between
#                  watermarks in key order, --snapshot-chunk at a time, instead of by one COPY
#                  (rows/s counts the rows this run wrote)
# and prints rows/s, the ratio to COPY's rows/s (jsonl to copy, parquet to copy, the two-table
# run to copy x2), walwatch's user+sys CPU and peak RSS. The issue's targets (issue 17): jsonl
# >= 0.8x copy, parquet x2 with --snapshot-parallel 2 >= 1.0x copy x2, peak RSS <= 150 MB.
#
# Server and connection as benches/cluster.sh (PG=15|17|18, CONN=tcp|unix). WALWATCH=path runs
# that binary instead of building target/release/walwatch.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
ROWS=${ROWS:-10000000}
. benches/cluster.sh
if [ -z "${WALWATCH:-}" ]; then
  cargo build --release --quiet
  WALWATCH=$PWD/target/release/walwatch
fi

start_cluster snapshot
for t in orders orders_a orders_b; do
  psql_admin -c "CREATE TABLE $t (id bigserial PRIMARY KEY, user_id int, item text, status text, amount numeric(10,2), created_at timestamptz)"
done
fill() {
  psql_admin -c "INSERT INTO $1 (user_id, item, status, amount, created_at)
       SELECT g % 1000, 'item-' || g, 'new', (g % 100000) / 100.0, now() FROM generate_series(1, $2) g"
  psql_admin -c "VACUUM ANALYZE $1"
}
echo "== filling orders ($ROWS rows) and orders_a, orders_b ($((ROWS / 2)) each)" >&2
fill orders "$ROWS"
fill orders_a $((ROWS / 2))
fill orders_b $((ROWS / 2))

# run_timed CMD...: "wall_s peak_rss_MB user_s sys_s" of CMD (stdout to /dev/null). With a
# `bash -c` CMD the CPU and RSS are of bash alone (copy_x2: the psql runs are its children).
run_timed() {
  python3 - "$@" <<'PY'
import os, subprocess, sys, time
# The command's own rusage (wait4), so peak RSS is this run's and not the largest so far.
t = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, ru = os.wait4(p.pid, 0)
dt = time.monotonic() - t
code = os.waitstatus_to_exitcode(status)
if code != 0:
    sys.exit(f"command failed ({code}): {sys.argv[1:]}")
print(f"{dt:.3f} {ru.ru_maxrss // 1024} {ru.ru_utime:.3f} {ru.ru_stime:.3f}")
PY
}

# psql as walwatch connects (PR_CONN: the socket or 127.0.0.1 with the password).
PSQL=("$BIN/psql" -X -q -At "${PR_CONN[@]}")
RESULTS=$WORK/results.tsv
: >"$RESULTS"
# timed NAME CMD...: appends "NAME wall rss user sys ROWS" (a failing CMD ends the bench;
# N_ROWS, when set, is the row count instead of ROWS).
timed() {
  local name=$1 r
  shift
  r=$(run_timed "$@")
  echo "$name $r ${N_ROWS:-$ROWS}" >>"$RESULTS"
}
# continued OUT: a snapshot of orders continued between watermarks (see the header).
continued() {
  local slot=bench_continued_$$ out=$1 pid
  "$WALWATCH" -q --dsn "$DSN" --slot "$slot" --tables orders --snapshot initial \
    --output "$out/first.jsonl" &
  pid=$!
  until [ "$("${PSQL[@]}" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'")" = 1 ]; do
    sleep 0.01
  done
  kill -9 "$pid"
  wait "$pid" || true
  r=$(run_timed "$WALWATCH" -q --dsn "$DSN" --slot "$slot" --tables orders --snapshot only \
    --output "$out/continued.jsonl")
  echo "continued $r $(wc -l <"$out/continued.jsonl")" >>"$RESULTS"
  "$WALWATCH" -q slots drop "$slot" --dsn "$DSN"
  rm -f "$out/first.jsonl" "$out/continued.jsonl"
}
for rep in $(seq 1 "$REPS"); do
  out=$WORK/out
  rm -rf "$out"; mkdir -p "$out"
  echo "== repetition $rep of $REPS" >&2
  timed copy "${PSQL[@]}" -c 'COPY orders TO STDOUT'
  timed '\copy' "${PSQL[@]}" -c "\\copy orders to '$out/orders.copy'"
  rm -f "$out/orders.copy"
  timed jsonl "$WALWATCH" -q --dsn "$DSN" --tables orders --snapshot only --output "$out/orders.jsonl"
  rm -f "$out/orders.jsonl"
  timed parquet "$WALWATCH" -q --dsn "$DSN" --tables orders --snapshot only --sink "arrow:$out/pq?format=parquet"
  rm -rf "$out/pq"
  timed copy_x2 bash -c "$(printf '%q ' "${PSQL[@]}") -c 'COPY orders_a TO STDOUT' && $(printf '%q ' "${PSQL[@]}") -c 'COPY orders_b TO STDOUT'"
  timed parquet_x2_p2 "$WALWATCH" -q --dsn "$DSN" --tables orders_a,orders_b --snapshot only --snapshot-parallel 2 --sink "arrow:$out/pq2?format=parquet"
  rm -rf "$out/pq2"
  continued "$out"
done

python3 - "$RESULTS" "$SERVER_DESC" "$REPS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for name, wall, rss, user, sys_, n in rows:
    by.setdefault(name, []).append((float(wall), int(rss), float(user), float(sys_), int(n)))
def med(name, i):
    return statistics.median(r[i] for r in by[name])
print(f"server: {sys.argv[2]}; medians of {sys.argv[3]}")
print(f"{'run':<16}{'rows':>12}{'wall s':>9}{'rows/s':>12}{'vs COPY':>9}{'CPU s':>8}{'peak RSS':>10}")
base = {"jsonl": "copy", "parquet": "copy", "\\copy": "copy", "parquet_x2_p2": "copy_x2",
        "continued": "copy"}
for name in ["copy", "\\copy", "jsonl", "parquet", "copy_x2", "parquet_x2_p2", "continued"]:
    wall, n = med(name, 0), by[name][0][4]
    rate = n / wall
    base_rate = by[base[name]][0][4] / med(base[name], 0) if name in base else 0
    ratio = f"{rate / base_rate:.2f}x" if name in base else "-"
    cpu = med(name, 2) + med(name, 3)
    rss = f"{int(med(name, 1))} MB"
    print(f"{name:<16}{n:>12,}{wall:>9.2f}{rate:>12,.0f}{ratio:>9}{cpu:>8.2f}{rss:>10}")
PY
