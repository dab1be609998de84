//! A 1,000,000-row single transaction, streamed by the server (protocol v2+, `streaming on`):
//! every row arrives, and with a 16 MB spill threshold walwatch's peak RSS stays under 80 MB
//! (held in memory, the buffered transaction alone is about 105 MB: the bound fails if
//! spilling breaks). The 5,000,000-row bound of 200 MB at the default threshold is measured by
//! `benches/e2e.sh`.
//!
//! Peak RSS is measured exactly: `getrusage(RUSAGE_CHILDREN)` after walwatch exits gives the
//! largest resident set of any waited-for child of this test process (nextest runs each test
//! in its own process; the only other children are short psql runs).

mod harness;
mod support;

use std::io::{BufRead, BufReader};

use harness::{create_slot, drop_slot, run_expecting, sql};

const ROWS: i64 = 1_000_000;
const RSS_LIMIT_MB: i64 = 80;

fn children_max_rss_kb() -> i64 {
    // SAFETY: getrusage writes into the struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage), 0);
        usage.ru_maxrss
    }
}

#[test]
fn serial_a_million_row_transaction_streams_in_bounded_memory() {
    let t = support::unique_name("big");
    let slot = support::unique_name("slot");
    sql(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, user_id int, item text, status text,
                           amount numeric(10,2), created_at timestamptz);"
    ));
    create_slot(&slot, &t);
    sql(&format!(
        "INSERT INTO {t} SELECT g, g % 1000, 'item-' || g, 'new', (g % 10000) / 100.0,
                '2026-11-22 03:22:01+00'::timestamptz + g * interval '1 second'
         FROM generate_series(1, {ROWS}) g;"
    ));
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.jsonl");
    let before = children_max_rss_kb();
    let run = run_expecting(
        &[
            "--dsn",
            &harness::dsn(),
            "--slot",
            &slot,
            "--tables",
            &t,
            "--endpos",
            "now",
            "--output",
            out_path.to_str().unwrap(),
            "--spill-threshold",
            "16MB",
            "--spill-dir",
            dir.path().to_str().unwrap(),
        ],
        0,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("spilling it to a temporary file"),
        "the transaction was not spilled:\n{stderr}"
    );
    let peak_kb = children_max_rss_kb();
    drop_slot(&slot);

    // Every row arrived once, in order, inside one BEGIN..COMMIT.
    let file = std::fs::File::open(&out_path).unwrap();
    let (mut begins, mut commits, mut next_id) = (0, 0, 1i64);
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line.unwrap();
        if line.contains("\"op\":\"BEGIN\"") {
            begins += 1;
            continue;
        }
        if line.contains("\"op\":\"COMMIT\"") {
            commits += 1;
            continue;
        }
        let e: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["op"], "INSERT", "{line}");
        assert_eq!(e["data"]["id"], next_id, "rows out of order or missing");
        next_id += 1;
    }
    assert_eq!(next_id - 1, ROWS, "rows received");
    assert_eq!((begins, commits), (1, 1));

    let peak_mb = peak_kb / 1024;
    eprintln!(
        "walwatch peak RSS: {peak_mb} MB (children max before: {} MB)",
        before / 1024
    );
    assert!(
        peak_mb < RSS_LIMIT_MB,
        "walwatch's peak RSS was {peak_mb} MB draining a {ROWS}-row transaction; the limit is {RSS_LIMIT_MB} MB"
    );
}
