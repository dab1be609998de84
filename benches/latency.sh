#!/usr/bin/env bash
# Latency under a steady load (issue 16): from a transaction's COMMIT to its event in the JSONL
# file a running walwatch writes, and to its message in Kafka.
#
#   bash benches/latency.sh [SECONDS]        (default 20)
#   RATE=1000 KAFKA=1 PG=18 bash benches/latency.sh 20
#
# RATE single-row transactions a second (default 1,000) for SECONDS, on a fixed schedule (the
# writer catches up on a slow transaction rather than drifting). The server and connection are
# benches/e2e.sh's (benches/cluster.sh: PG unset = Debian's PostgreSQL 15 over TCP, PG=18 over
# the Unix socket, CONN=tcp|unix); the writer's transactions run with synchronous_commit=on.
# Two walwatch processes run throughout, each on a temporary slot of its own:
#   walwatch --tables orders --output FILE                     (the JSONL file)
#   walwatch --tables orders --sink kafka://127.0.0.1:PORT     (a Tansu broker; KAFKA=0 skips it)
# and benches/latency.rs writes and observes: for the file, the time a COMMIT line was read
# (inotify on the file) minus the event's commit timestamp `ts`: the line is visible once
# written, walwatch's fsync before confirming to the server is not waited for; for Kafka, the
# time a consumer of the topic received the message minus its `ts`. One machine, one clock.
# Prints p50/p99/max in ms, and how far the writer ran behind its schedule.
# WALWATCH=<binary> uses that binary instead of building target/release/walwatch.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
DURATION=${1:-20}
RATE=${RATE:-1000}
KAFKA=${KAFKA:-1}

. benches/cluster.sh
if [ -z "${WALWATCH:-}" ]; then
  cargo build --release --quiet
  WALWATCH=$PWD/target/release/walwatch
fi
LATENCY=$(bench_bin latency)

start_cluster latency
psql_admin -c "CREATE TABLE orders (id bigserial PRIMARY KEY, user_id int, item text, status text, amount numeric(10,2), created_at timestamptz)"
BROKERS=-
if [ "$KAFKA" = 1 ]; then start_tansu; BROKERS=127.0.0.1:$KPORT; fi

"$WALWATCH" -q --dsn "$DSN" --tables orders --output "$WORK/latency.jsonl" --ready-file "$WORK/ready.file" &
on_exit_kill $!
waits=("$WORK/ready.file")
if [ "$KAFKA" = 1 ]; then
  "$WALWATCH" -q --dsn "$DSN" --tables orders --sink "kafka://$BROKERS" --ready-file "$WORK/ready.kafka" &
  on_exit_kill $!
  waits+=("$WORK/ready.kafka")
fi
for f in "${waits[@]}"; do
  for _ in $(seq 1 600); do [ -s "$f" ] && break; sleep 0.1; done
  if [ ! -s "$f" ]; then echo "latency: walwatch did not start streaming (no $f within 60 s)" >&2; exit 1; fi
done

echo "server: $SERVER_DESC"
echo "walwatch: $WALWATCH"
"$LATENCY" "$DSN" "$WORK/latency.jsonl" "$BROKERS" "$RATE" "$DURATION"
