//! `--snapshot`: the watched tables' rows as READ events, meeting the stream of changes with
//! no gap and no overlap while a writer changes the tables the whole time.
//!
//! Each test replays what walwatch wrote, per table, into a state (READ and INSERT add a row,
//! UPDATE replaces it, DELETE removes it), refusing an INSERT or READ of a row already there
//! (overlap) and an UPDATE or DELETE of a row not there (gap), and compares the state with
//! the table read by psql at the end.

mod harness;
mod support;
mod workload;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use harness::{drop_slot, dsn, parse_jsonl, run_expecting, slot_confirmed, sql, walwatch};
use serde_json::Value;
use workload::{
    Tables, Writer, assert_replays_to_tables, assert_upserts_replay_to_tables, lines,
    replay_upsert, table_lines,
};

/// The lines of the JSONL file at `path`, each validated against the schema.
fn read_jsonl(path: &Path) -> Vec<Value> {
    parse_jsonl(&std::fs::read(path).expect("read the output"))
}

/// How many of walwatch's snapshot readers the server shows in the middle of a COPY now.
fn copying_readers() -> Option<usize> {
    support::cluster()
        .psql(
            "walwatch",
            "SELECT count(*) FROM pg_stat_activity \
             WHERE application_name = 'walwatch-meta' AND query LIKE 'COPY%';",
        )
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `--snapshot initial` on a new slot while a writer inserts, updates and deletes in all three
/// tables (keyed with TOASTed values, keyless, partitioned) the whole time: replaying READ and
/// changes gives exactly each table's rows, and the writer's changes both preceded the
/// snapshot and touched rows it read (asserted, so the interleaving is certain).
#[test]
fn initial_snapshot_meets_the_stream_exactly_while_a_writer_runs() {
    let t = Tables::create("snap");
    let slot = support::unique_name("snap");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let ready = dir.path().join("ready");
    let log = dir.path().join("walwatch.log");
    let writer = Writer::start(&t, 0x9E37_79B9_7F4A_7C15);
    writer.wait_for(50);
    let before_snapshot = writer.committed();
    let mut proc = harness::spawn_logged(
        &[
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &t.list(),
            "--snapshot",
            "initial",
            "--snapshot-chunk",
            "97",
            "--snapshot-parallel",
            "2",
            "--output",
            out.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
        &log,
    );
    support::wait_until("walwatch streaming", Duration::from_secs(60), || {
        ready.exists().then_some(())
    });
    // Let the writer run on through the snapshot and after it.
    let at_ready = writer.committed();
    writer.wait_for(at_ready + 200);
    let committed = writer.finish();
    let end = harness::current_lsn();
    support::wait_until(
        "the slot confirmed every change",
        Duration::from_secs(60),
        || (slot_confirmed(&slot) >= end).then_some(()),
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(proc.id() as i32, libc::SIGTERM) };
    let status = proc.wait().expect("wait for walwatch");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM is a clean stop; log:\n{log_text}"
    );
    let events = read_jsonl(&out);
    let (reads, changed) = assert_replays_to_tables(&events, &t);
    assert!(
        reads > 3000 && changed > 0,
        "the snapshot should have read the ~3,500 rows and the stream changed some of them \
         (reads {reads}, changes to read rows {changed}; writer: {before_snapshot} commits \
         before walwatch started, {committed} in all)\nlog:\n{log_text}"
    );
    drop_slot(&slot);
    t.drop();
}

/// `--snapshot only` on a new permanent slot ends (exit 0) after the rows; a later run on the
/// slot without --snapshot streams from where the rows were read: together, no gap and no
/// overlap, with the writer running across both.
#[test]
fn snapshot_only_then_streaming_on_the_slot_has_no_gap_or_overlap() {
    let t = Tables::create("snaponly");
    let slot = support::unique_name("snaponly");
    let dir = tempfile::tempdir().unwrap();
    let rows_file = dir.path().join("rows.jsonl");
    let changes_file = dir.path().join("changes.jsonl");
    let writer = Writer::start(&t, 0xD1B5_4A32_D192_ED03);
    writer.wait_for(50);
    let only = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &t.list(),
            "--snapshot",
            "only",
            "--output",
            rows_file.to_str().unwrap(),
        ],
        0,
    );
    let at_end = writer.committed();
    writer.wait_for(at_end + 100);
    writer.finish();
    run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &t.list(),
            "--endpos",
            "now",
            "--output",
            changes_file.to_str().unwrap(),
        ],
        0,
    );
    let rows = read_jsonl(&rows_file);
    assert!(
        rows.iter().all(|e| e["op"] == "READ"),
        "--snapshot only writes READ rows only; stderr:\n{}",
        harness::stderr(&only)
    );
    let mut events = rows;
    events.extend(read_jsonl(&changes_file));
    let (reads, changed) = assert_replays_to_tables(&events, &t);
    assert!(
        reads > 3000 && changed > 0,
        "reads {reads}, changes to read rows {changed}"
    );
    drop_slot(&slot);
    t.drop();
}

/// `--snapshot initial --endpos now` on a new slot: the rows, then the run ends (the slot was
/// created now, so no change is before the end).
#[test]
fn initial_with_endpos_now_on_a_new_slot_gives_the_rows_and_ends() {
    let t = support::unique_name("snapend");
    let slot = support::unique_name("snapend");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY);
         INSERT INTO {t} SELECT generate_series(1, 10);"
    ));
    let out = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &t,
            "--snapshot",
            "initial",
            "--endpos",
            "now",
            "--format",
            "json",
        ],
        0,
    );
    let events = parse_jsonl(&out.stdout);
    assert_eq!(events.len(), 10, "{}", harness::stderr(&out));
    assert!(events.iter().all(|e| e["op"] == "READ"));
    drop_slot(&slot);
    sql(&format!("DROP TABLE {t};"));
}

/// A table with no columns still has rows: each is a READ event with empty `data`.
#[test]
fn a_table_without_columns_is_read_row_by_row() {
    let t = support::unique_name("snapnocol");
    sql(&format!(
        "CREATE TABLE {t} (); INSERT INTO {t} DEFAULT VALUES; INSERT INTO {t} DEFAULT VALUES;"
    ));
    let out = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--tables",
            &t,
            "--snapshot",
            "only",
            "--format",
            "json",
        ],
        0,
    );
    let events = parse_jsonl(&out.stdout);
    assert_eq!(events.len(), 2, "{}", harness::stderr(&out));
    assert!(
        events
            .iter()
            .all(|e| e["op"] == "READ" && e["data"] == serde_json::json!({}))
    );
    sql(&format!("DROP TABLE {t};"));
}

/// `--where` and `--ops` apply to READ rows as to changes; READ rows carry the key, the
/// position the snapshot is consistent with, and no xid.
#[test]
fn filters_apply_to_snapshot_rows() {
    let t = support::unique_name("snapf");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, n int);
         INSERT INTO {t} SELECT g, g % 7 FROM generate_series(1, 100) g;"
    ));
    let out = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--tables",
            &t,
            "--snapshot",
            "only",
            "--where",
            "data.n == 3",
            "--format",
            "json",
        ],
        0,
    );
    let events = parse_jsonl(&out.stdout);
    let ids: Vec<i64> = events
        .iter()
        .map(|e| e["data"]["id"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = (1..=100).filter(|i| i % 7 == 3).collect();
    assert_eq!(ids, want, "READ rows passing --where 'data.n == 3'");
    for e in &events {
        assert_eq!(e["op"], "READ");
        assert_eq!(e["key"], serde_json::json!({"id": e["data"]["id"]}));
        assert_eq!(e["lsn"], e["commit_lsn"]);
        assert!(e["xid"].is_null(), "a READ row has no xid: {e}");
    }
    let none = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--tables",
            &t,
            "--snapshot",
            "only",
            "--ops",
            "insert",
            "--format",
            "json",
        ],
        0,
    );
    assert!(
        none.stdout.is_empty(),
        "--ops insert leaves out READ rows, got:\n{}",
        harness::stdout(&none)
    );
    sql(&format!("DROP TABLE {t};"));
}

/// A snapshot needs the slot's exported snapshot, which only its creation gives: asking for
/// one on an existing slot is a named error (exit 2) that leaves the slot where it was.
#[test]
fn a_snapshot_on_an_existing_slot_is_refused_with_the_fix() {
    let t = support::unique_name("snapx");
    let slot = support::unique_name("snapx");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    harness::create_slot(&slot, &t);
    let before = slot_confirmed(&slot);
    sql(&format!("INSERT INTO {t} VALUES (1);"));
    let out = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &t,
            "--snapshot",
            "initial",
        ],
        2,
    );
    let err = harness::stderr(&out);
    assert!(
        err.contains("already exists") && err.contains("without --snapshot"),
        "the error names the problem and the fix: {err}"
    );
    assert_eq!(slot_confirmed(&slot), before, "the slot did not move");
    drop_slot(&slot);
    sql(&format!("DROP TABLE {t};"));
}

/// `--snapshot-parallel 2` reads two tables at the same time, on two connections in the same
/// snapshot: the server shows both readers in the middle of their COPYs at one instant (one
/// reader never could), and every row of both tables arrives.
#[test]
fn parallel_readers_read_two_tables_at_once() {
    let (a, b) = (
        support::unique_name("snappa"),
        support::unique_name("snappb"),
    );
    sql(&format!(
        "CREATE TABLE {a} (id int PRIMARY KEY, v text);
         CREATE TABLE {b} (id int PRIMARY KEY, v text);
         INSERT INTO {a} SELECT g, repeat('a', 50) FROM generate_series(1, 150000) g;
         INSERT INTO {b} SELECT g, repeat('b', 50) FROM generate_series(1, 150000) g;"
    ));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let log = dir.path().join("walwatch.log");
    let tables = format!("{a},{b}");
    let mut proc = harness::spawn_logged(
        &[
            "--dsn",
            &dsn(),
            "--tables",
            &tables,
            "--snapshot",
            "only",
            "--snapshot-chunk",
            "50",
            "--snapshot-parallel",
            "2",
            "--output",
            out.to_str().unwrap(),
        ],
        &log,
    );
    let both = support::wait_until_or(
        "two readers copying at once",
        Duration::from_secs(60),
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || copying_readers().filter(|n| *n >= 2),
    );
    assert!(both >= 2);
    let status = proc.wait().expect("walwatch ends");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "log:\n{log_text}");
    let text = std::fs::read_to_string(&out).unwrap();
    let rows_of = |t: &str| text.matches(&format!("\"table\":\"{t}\"")).count();
    assert_eq!(
        (rows_of(&a), rows_of(&b)),
        (150_000, 150_000),
        "log:\n{log_text}"
    );
    sql(&format!("DROP TABLE {a}, {b};"));
}

/// On a terminal, the snapshot draws each table's progress on stderr (rows of the estimate,
/// the rate); into a file or a pipe it draws nothing, and the log line says when each table is
/// done. The terminal is a pseudo-terminal made by `script` (util-linux).
#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let t = support::unique_name("snapprog");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, v text);
         INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 5000) g;
         ANALYZE {t};"
    ));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let args = format!(
        "'{}' --dsn '{}' --tables {t} --snapshot only --snapshot-chunk 100 --output '{}'",
        env!("CARGO_BIN_EXE_walwatch"),
        dsn(),
        out.display()
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &args, "/dev/null"])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script(1) from util-linux");
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert_eq!(tty.status.code(), Some(0), "{screen}");
    assert!(
        screen.contains("rows/s") && screen.contains("/~5,000 rows"),
        "a progress bar with the estimate and the rate on the terminal:\n{screen}"
    );
    let piped = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--tables",
            &t,
            "--snapshot",
            "only",
            "--snapshot-chunk",
            "100",
            "--output",
            out.to_str().unwrap(),
        ],
        0,
    );
    let err = harness::stderr(&piped);
    assert!(
        !err.contains("rows/s"),
        "no progress bar into a pipe:\n{err}"
    );
    assert!(
        err.contains(&format!("snapshot of public.{t}: 5000 rows")),
        "{err}"
    );
    sql(&format!("DROP TABLE {t};"));
}

/// A table dropped while the snapshot reads another is a named error (exit 2), and the slot
/// stays at its consistent point. The drop is certain to come first: walwatch's stdout is not
/// read, so it stalls in the first table (27 MB of JSON, more than every queue holds) until
/// the second one is gone.
#[test]
fn a_table_dropped_mid_snapshot_is_a_named_error() {
    let (a, b) = (
        support::unique_name("sdrop_a"),
        support::unique_name("sdrop_b"),
    );
    let slot = support::unique_name("sdrop");
    sql(&format!(
        "CREATE TABLE {a} (id int PRIMARY KEY, v text);
         CREATE TABLE {b} (id int PRIMARY KEY);
         INSERT INTO {a} SELECT g, repeat('a', 40) FROM generate_series(1, 300000) g;
         INSERT INTO {b} VALUES (1);"
    ));
    let tables = format!("{a},{b}");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("walwatch.log");
    let mut child = harness::KillOnDrop(
        walwatch()
            .args([
                "--dsn",
                &dsn(),
                "--slot",
                &slot,
                "--tables",
                &tables,
                "--snapshot",
                "only",
                "--snapshot-chunk",
                "100",
                "--format",
                "json",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    support::wait_until(
        "the snapshot reading the first table",
        Duration::from_secs(60),
        || copying_readers().filter(|n| *n >= 1),
    );
    sql(&format!("DROP TABLE {b};"));
    let mut stdout = child.0.stdout.take().unwrap();
    let drained = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let status = child.0.wait().unwrap();
    let read = drained.join().unwrap().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("could not read public.{b} for the snapshot"))
            && err.contains("dropped while the snapshot was being taken"),
        "the error names the table and what happened: {err}"
    );
    assert!(
        read > 20_000_000,
        "the first table's rows came out first ({read} bytes)"
    );
    let at: walwatch::Lsn = err
        .split("snapshot at ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the log names the snapshot's position: {err}"));
    assert_eq!(
        slot_confirmed(&slot),
        at,
        "nothing is confirmed past the slot's consistent point"
    );
    drop_slot(&slot);
    sql(&format!("DROP TABLE {a};"));
}

/// A table that does not exist is the usual named error, before any slot is made.
#[test]
fn a_snapshot_of_a_missing_table_is_a_named_error() {
    let out = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--tables",
            "no_such_table_for_snapshot",
            "--snapshot",
            "only",
        ],
        2,
    );
    let err = harness::stderr(&out);
    assert!(
        err.contains("no table matches `no_such_table_for_snapshot`"),
        "{err}"
    );
}

/// A READ row is exactly what the INSERT of the same row carries on the stream, for values that
/// are awkward to carry as text: tabs, newlines, backslashes, quotes, `\N`, empty strings and
/// NULLs, bytea, arrays with quotes and NULLs, json, intervals, the infinities, NaN, BC dates,
/// enums and domains (through the type registry), and a generated column.
#[test]
fn read_rows_equal_the_stream_s_inserts_value_for_value() {
    let t = support::unique_name("snapeq");
    let slot = support::unique_name("snapeq");
    let (mood, pos) = (format!("{t}_mood"), format!("{t}_pos"));
    sql(&format!(
        "CREATE TYPE {mood} AS ENUM ('ok', 'so sad');
         CREATE DOMAIN {pos} AS int CHECK (VALUE > 0);
         CREATE TABLE {t} (id int PRIMARY KEY, s text, b bytea, a text[], j jsonb, iv interval,
             ts timestamptz, d date, f float8, n numeric, m {mood}, p {pos}, u uuid,
             g int GENERATED ALWAYS AS (id * 2) STORED);"
    ));
    harness::create_slot(&slot, &t);
    let rows = r#"INSERT INTO TABLE (id, s, b, a, j, iv, ts, d, f, n, m, p, u) VALUES
         (1, E'tab\there\nnew line \\ back\\slash', '\x00ff0a09',
          ARRAY['x,y', 'q"uote', NULL, '', 'back\slash'], '{"k": [1, "t\tab"]}',
          '1 year 2 mons -3 days 04:05:06.5', 'infinity', '0044-03-15 BC', 'NaN', 'NaN',
          'so sad', 7, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
         (2, '\N', '', '{}', 'null', '0', '-infinity', '5874897-12-31', '-Infinity', '-0.000',
          'ok', 1, NULL),
         (3, '', NULL, NULL, NULL, NULL, '2026-11-22 03:22:01.000001+05:30', NULL, 1e-300,
          '123456789012345678901234567890.123', NULL, NULL, NULL);"#;
    sql(&rows.replace("TABLE", &t));
    let inserts = harness::drain(&slot, &t, &["--ops", "insert"]);
    let out = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--tables",
            &t,
            "--snapshot",
            "only",
            "--format",
            "json",
        ],
        0,
    );
    let reads = parse_jsonl(&out.stdout);
    let data = |events: &[Value]| -> Vec<Value> {
        let mut v: Vec<Value> = events.iter().map(|e| e["data"].clone()).collect();
        v.sort_by_key(|d| d["id"].as_i64());
        v
    };
    assert_eq!(inserts.len(), 3, "{inserts:?}");
    assert_eq!(
        data(&reads),
        data(&inserts),
        "READ rows against the stream's INSERTs"
    );
    sql(&format!(
        "DROP TABLE {t}; DROP TYPE {mood}; DROP DOMAIN {pos};"
    ));
}

/// With a given publication that lists a partitioned table's partitions (no
/// `publish_via_partition_root`), the snapshot reads each partition under its own name, as the
/// stream reports their changes, with the watched table in `partition_of`.
#[test]
fn a_given_publication_s_partitions_are_read_under_their_own_names() {
    let t = support::unique_name("snappub");
    let publication = support::unique_name("snappub");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE {t}_lo PARTITION OF {t} FOR VALUES FROM (MINVALUE) TO (10);
         CREATE TABLE {t}_hi PARTITION OF {t} FOR VALUES FROM (10) TO (MAXVALUE);
         INSERT INTO {t} VALUES (1), (2), (11);
         CREATE PUBLICATION {publication} FOR TABLE {t};"
    ));
    let out = run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--tables",
            &t,
            "--publication",
            &publication,
            "--snapshot",
            "only",
            "--format",
            "json",
        ],
        0,
    );
    let mut got: Vec<(String, i64, String)> = parse_jsonl(&out.stdout)
        .iter()
        .map(|e| {
            (
                e["table"].as_str().unwrap().to_string(),
                e["data"]["id"].as_i64().unwrap(),
                e["partition_of"]["table"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    got.sort();
    let (lo, hi) = (format!("{t}_hi"), format!("{t}_lo"));
    assert_eq!(
        got,
        [
            (lo.clone(), 11, t.clone()),
            (hi.clone(), 1, t.clone()),
            (hi, 2, t.clone())
        ],
        "each partition's rows under its own name, with partition_of"
    );
    sql(&format!("DROP PUBLICATION {publication}; DROP TABLE {t};"));
}

/// `--raw` records the stream's bytes, which hold no snapshot rows: refused before any I/O.
#[test]
fn raw_recording_with_a_snapshot_is_refused() {
    let out = walwatch()
        .args([
            "--dsn",
            "host=/nonexistent",
            "--snapshot",
            "initial",
            "--raw",
            "x.raw",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--raw"));
}

/// The snapshot progress walwatch keeps in its publication's record for `slot`: whether the
/// tables are listed, and per table (name, rows durable, done, last key durable), or `None`
/// before any.
type Recorded = Option<(bool, Vec<(String, u64, bool, Option<Vec<String>>)>)>;

fn recorded_progress(slot: &str) -> Recorded {
    let comment = sql(&format!(
        "SELECT obj_description(oid, 'pg_publication') FROM pg_publication \
         WHERE pubname = 'walwatch_{slot}';"
    ));
    let record: Value = serde_json::from_str(comment.trim()).ok()?;
    let b = record.get("backfill")?;
    let tables = b["tables"]
        .as_array()?
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap_or("").to_string(),
                t["rows"].as_u64().unwrap_or(0),
                t["done"].as_bool().unwrap_or(false),
                t["after"].as_array().map(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap_or("").to_string())
                        .collect()
                }),
            )
        })
        .collect();
    Some((b["planned"].as_bool().unwrap_or(false), tables))
}

/// Whether the recorded progress says the snapshot is complete.
fn complete(p: &Recorded) -> bool {
    p.as_ref()
        .is_some_and(|(planned, t)| *planned && t.iter().all(|(_, _, done, _)| *done))
}

/// Rows recorded durable, over every table.
fn recorded_rows(p: &Recorded) -> u64 {
    p.as_ref()
        .map_or(0, |(_, t)| t.iter().map(|(_, rows, _, _)| rows).sum())
}

/// Where each keyed table was durable up to, if it was part of the way: (table, key as (id,
/// region), region empty for the keyed table).
fn part_read(recorded: &Recorded) -> Vec<(String, (i64, String))> {
    let Some((_, tables)) = recorded else {
        return Vec::new();
    };
    tables
        .iter()
        .filter(|(_, rows, done, after)| *rows > 0 && !done && after.is_some())
        .map(|(name, _, _, after)| {
            let k = after.clone().unwrap();
            let region = k.get(1).cloned().unwrap_or_default();
            (name.clone(), (k[0].parse().unwrap(), region))
        })
        .collect()
}

/// Checks that the run whose output starts at line `from` of `out` read each table of
/// `partial` on from its durable key, not from its start (its first READ row of it is past
/// the key); returns how many of them it read.
fn read_on_from_durable_keys(
    out: &Path,
    from: usize,
    partial: &[(String, (i64, String))],
    round: usize,
    log: &str,
) -> usize {
    if partial.is_empty() {
        return 0;
    }
    // A kill mid-write leaves a partial last line (the next run cuts it off).
    let mut bytes = std::fs::read(out).unwrap();
    bytes.truncate(bytes.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1));
    let events = parse_jsonl(&bytes);
    let mut continued = 0;
    for (table, after) in partial {
        let first = events[from.min(events.len())..]
            .iter()
            .find(|e| e["table"] == table.as_str() && e["op"] == "READ")
            .map(|e| {
                let region = e["data"]["region"].as_str().unwrap_or("");
                (e["data"]["id"].as_i64().unwrap(), region.to_string())
            });
        if let Some(first) = first {
            assert!(
                first > *after,
                "round {round} read {table} again from {first:?}, before its durable key \
                 {after:?}; log:\n{log}"
            );
            continued += 1;
        }
    }
    continued
}

/// SIGKILL five times, during the snapshot and during the stream, while a writer changes the
/// tables, then a run to the end: replaying the output (by key: a snapshot continued between
/// watermarks may bring a change before the row's READ) gives exactly each table. At least one
/// run started from a table read part of the way, and said it continued after its last
/// durable key (made certain: that run is killed only once the record shows progress it made,
/// before the snapshot is complete).
#[test]
fn sigkill_during_the_snapshot_continues_from_the_last_durable_chunk() {
    let t = Tables::create("snapkill");
    // 150,000 rows in the partitioned table, the last read (tables without a key go first,
    // then by name): the first run is killed at its first rows, long before this table is
    // read, and continuing it 50 rows at a time between watermarks takes seconds, so a later
    // run is killed in its middle once its progress is recorded (about once a second).
    sql(&format!(
        "INSERT INTO {} SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, g \
         FROM generate_series(1000001, 1149000) g;",
        t.part
    ));
    let slot = support::unique_name("snapkill");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    // The keyless table is read exactly only in the exported snapshot: left alone here, it can
    // be continued too (the exported-snapshot test changes it throughout).
    let writer = Writer::start_with(&t, 0xA076_1D64_78BD_642F, false);
    writer.wait_for(20);
    let args = |log: &Path| {
        harness::spawn_logged(
            &[
                "--dsn",
                &dsn(),
                "--slot",
                &slot,
                "--tables",
                &t.list(),
                "--snapshot",
                "initial",
                "--snapshot-chunk",
                "50",
                "--output",
                out.to_str().unwrap(),
            ],
            log,
        )
    };
    let mut continued_mid_table = 0;
    let mut logs = String::new();
    for round in 1..=5 {
        let log = dir.path().join(format!("round{round}.log"));
        let before = recorded_progress(&slot);
        let partial = part_read(&before);
        let lines_before = std::fs::read(&out).map_or(0, |b| b.split(|c| *c == b'\n').count() - 1);
        let mut proc = args(&log);
        if round == 1 {
            // In the exported snapshot's rows.
            support::wait_until("the first rows", Duration::from_secs(60), || {
                (std::fs::metadata(&out).map_or(0, |m| m.len()) > 0).then_some(())
            });
        } else if !complete(&before) {
            // Once this run made progress durable, before the snapshot is complete.
            let from = recorded_rows(&before);
            let seen = support::wait_until("progress recorded", Duration::from_secs(120), || {
                let now = recorded_progress(&slot);
                (recorded_rows(&now) > from || complete(&now)).then_some(now)
            });
            assert!(
                !complete(&seen),
                "round {round}: the snapshot completed before it could be killed mid-way \
                 (from {before:?} to {seen:?})"
            );
        } else {
            // Streaming: a while after the writer's next commits.
            let n = writer.committed();
            writer.wait_for(n + 30 * round as u64);
        }
        proc.kill().expect("SIGKILL walwatch");
        proc.wait().expect("reap walwatch");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        continued_mid_table +=
            read_on_from_durable_keys(&out, lines_before, &partial, round, &text);
        logs.push_str(&format!(
            "--- round {round} (record before: {before:?}) ---\n{text}"
        ));
    }
    writer.finish();
    // The last run: to the end of the snapshot and of the writer's changes.
    let log = dir.path().join("last.log");
    let mut proc = args(&log);
    let end = harness::current_lsn();
    support::wait_until(
        "the snapshot complete and every change confirmed",
        Duration::from_secs(180),
        || (complete(&recorded_progress(&slot)) && slot_confirmed(&slot) >= end).then_some(()),
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(proc.id() as i32, libc::SIGTERM) };
    let status = proc.wait().expect("wait for walwatch");
    logs.push_str(&format!(
        "--- last ---\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    ));
    assert_eq!(status.code(), Some(0), "logs:\n{logs}");
    assert!(
        continued_mid_table > 0,
        "no run continued a table from its last durable key; logs:\n{logs}"
    );
    let reread = assert_upserts_replay_to_tables(&read_jsonl(&out), &t, &logs);
    eprintln!(
        "{continued_mid_table} runs continued a table mid-way; {reread} READ rows were read \
         more than once over 5 kills"
    );
    drop_slot(&slot);
    t.drop();
}

/// A table of the slot's record: (table, rows, done, request, failed).
type RecordedTable = (String, u64, bool, Option<String>, Option<String>);

/// The tables of the slot's record.
fn requested(slot: &str) -> Vec<RecordedTable> {
    let comment = sql(&format!(
        "SELECT obj_description(oid, 'pg_publication') FROM pg_publication \
         WHERE pubname = 'walwatch_{slot}';"
    ));
    let Ok(record) = serde_json::from_str::<Value>(comment.trim()) else {
        return Vec::new();
    };
    record["backfill"]["tables"]
        .as_array()
        .map(|tables| {
            tables
                .iter()
                .map(|t| {
                    (
                        t["table"].as_str().unwrap_or("").to_string(),
                        t["rows"].as_u64().unwrap_or(0),
                        t["done"].as_bool().unwrap_or(false),
                        t["requests"]
                            .as_array()
                            .and_then(|r| r.last())
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        t["failed"].as_str().map(str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Starts walwatch streaming `tables` on `slot` into `out` (no snapshot of its own), chunks of
/// 50 rows for what it is asked to read; returns once it streams.
fn stream_into(slot: &str, tables: &str, out: &Path, log: &Path, extra: &[&str]) -> harness::Proc {
    let sink = ["--output", out.to_str().unwrap()];
    stream_gated(slot, tables, &sink, log, extra, None)
}

/// [`stream_into`], reading no chunk after its first while the file `gate` exists (a test-only
/// setting of walwatch's): what a test does then happens in the middle of the reading, for
/// certain.
fn stream_gated(
    slot: &str,
    tables: &str,
    sink: &[&str],
    log: &Path,
    extra: &[&str],
    gate: Option<&Path>,
) -> harness::Proc {
    let ready = log.with_extension("ready");
    let _ = std::fs::remove_file(&ready);
    let dsn = dsn();
    let mut args = vec![
        "--dsn",
        &dsn,
        "--slot",
        slot,
        "--snapshot-chunk",
        "50",
        "--ready-file",
        ready.to_str().unwrap(),
    ];
    args.extend(sink);
    if !tables.is_empty() {
        args.extend(["--tables", tables]);
    }
    args.extend(extra);
    let mut cmd = walwatch();
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"));
    if let Some(gate) = gate {
        cmd.env("WALWATCH_TEST_BACKFILL_GATE", gate);
    }
    let proc = harness::Proc(cmd.spawn().expect("spawn walwatch"));
    support::wait_until_or(
        "walwatch streaming",
        Duration::from_secs(60),
        || std::fs::read_to_string(log).unwrap_or_default(),
        || ready.exists().then_some(()),
    );
    proc
}

/// `walwatch snapshot --slot S --tables ...` asks the walwatch streaming S to read the tables
/// while it streams, and `--wait` follows it to the end. The request survives a SIGKILL of
/// that walwatch in the middle of the reading (made certain: the first run reads one chunk,
/// then waits on a test-only gate until it is killed, once the record shows that chunk
/// durable), the next run continues it from its record, and replaying the output by key
/// gives exactly each table while a writer changed them the whole time.
#[test]
fn a_snapshot_asked_for_while_streaming_is_read_and_survives_a_sigkill() {
    asked_for_while_streaming_survives_a_sigkill(Output::Jsonl);
}

/// [`a_snapshot_asked_for_while_streaming_is_read_and_survives_a_sigkill`] into Arrow files,
/// read back: an Arrow sink holds rows back until it closes a file, so the record moves only
/// then, and the files hold each change once across the kill.
#[test]
fn a_snapshot_asked_for_while_streaming_into_arrow_files_survives_a_sigkill() {
    asked_for_while_streaming_survives_a_sigkill(Output::Arrow);
}

fn asked_for_while_streaming_survives_a_sigkill(output: Output) {
    let t = Tables::create("snapask");
    let slot = support::unique_name("snapask");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let sink = output.args(&out);
    let sink: Vec<&str> = sink.iter().map(String::as_str).collect();
    let gate = dir.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let writer = Writer::start_with(&t, 0x5EED_0F0F_1234_9876, false);
    let first_log = dir.path().join("first.log");
    let mut first = stream_gated(&slot, &t.list(), &sink, &first_log, &[], Some(&gate));
    writer.wait_for(20);
    let asker = walwatch()
        .args([
            "snapshot",
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &t.list(),
            "--wait",
            "--timeout",
            "90s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn walwatch snapshot");
    let mid = support::wait_until(
        "rows of the request durable",
        Duration::from_secs(120),
        || {
            let r = requested(&slot);
            let rows: u64 = r.iter().map(|t| t.1).sum();
            (rows > 0).then_some(r)
        },
    );
    assert!(
        mid.iter().any(|t| !t.2),
        "the request was done before walwatch could be killed in its middle: {mid:?}"
    );
    assert!(mid.iter().all(|t| t.3.is_some()), "{mid:?}");
    first.kill().expect("SIGKILL walwatch");
    first.wait().expect("reap walwatch");
    let second_log = dir.path().join("second.log");
    let mut second = stream_gated(&slot, &t.list(), &sink, &second_log, &[], None);
    let asked = asker.wait_with_output().expect("walwatch snapshot ends");
    let mut logs = format!(
        "--- first ---\n{}\n--- second ---\n{}\n--- snapshot ---\n{}",
        std::fs::read_to_string(&first_log).unwrap_or_default(),
        std::fs::read_to_string(&second_log).unwrap_or_default(),
        String::from_utf8_lossy(&asked.stderr)
    );
    assert_eq!(asked.status.code(), Some(0), "{logs}");
    assert!(
        String::from_utf8_lossy(&asked.stdout)
            .trim()
            .parse::<walwatch::Lsn>()
            .is_ok(),
        "walwatch snapshot prints the request's position: {:?}",
        asked.stdout
    );
    assert!(
        logs.contains("continuing the snapshot of slot"),
        "the second run did not continue the request: {logs}"
    );
    writer.finish();
    let end = harness::current_lsn();
    support::wait_until("every change confirmed", Duration::from_secs(120), || {
        (slot_confirmed(&slot) >= end).then_some(())
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    let status = second.wait().expect("wait for walwatch");
    logs.push_str(&std::fs::read_to_string(&second_log).unwrap_or_default());
    assert_eq!(status.code(), Some(0), "{logs}");
    let done = requested(&slot);
    assert!(
        done.len() == 3 && done.iter().all(|t| t.2 && t.4.is_none()),
        "every table of the request done: {done:?}"
    );
    let reread = assert_upserts_replay_to_tables(&output.events(&out, &t), &t, &logs);
    eprintln!("{reread} READ rows were read more than once after the kill");
    drop_slot(&slot);
    t.drop();
}

/// A table added to a given publication while walwatch streams it is read on request: its
/// rows arrive as READ events between the stream's changes, and replaying gives the table.
/// `--wait` cannot follow a request to a walwatch with --publication: it says so, exit 2,
/// and the request is read all the same.
#[test]
fn a_table_added_to_the_publication_while_streaming_is_backfilled_on_request() {
    let (a, b) = (
        support::unique_name("addpub_a"),
        support::unique_name("addpub_b"),
    );
    let publication = support::unique_name("addpub");
    sql(&format!(
        "CREATE TABLE {a} (id int PRIMARY KEY, v text);
         CREATE TABLE {b} (id int PRIMARY KEY, v text);
         INSERT INTO {b} SELECT g, 'old ' || g FROM generate_series(1, 700) g;
         CREATE PUBLICATION {publication} FOR TABLE {a};"
    ));
    let slot = support::unique_name("addpub");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let log = dir.path().join("walwatch.log");
    let mut proc = stream_into(&slot, "", &out, &log, &["--publication", &publication]);
    sql(&format!(
        "INSERT INTO {a} VALUES (1, 'a');
         ALTER PUBLICATION {publication} ADD TABLE {b};
         UPDATE {b} SET v = 'changed' WHERE id <= 10;
         DELETE FROM {b} WHERE id BETWEEN 11 AND 20;"
    ));
    let asked = harness::run_expecting(
        &[
            "snapshot",
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &b,
            "--wait",
        ],
        2,
    );
    assert!(
        harness::stderr(&asked).contains("--publication"),
        "{}",
        harness::stderr(&asked)
    );
    sql(&format!(
        "UPDATE {b} SET v = 'after' WHERE id BETWEEN 21 AND 30;
         INSERT INTO {b} VALUES (1001, 'new');"
    ));
    let want = table_lines(&b, &["id", "v"]);
    let got = support::wait_until_or(
        "the table's rows replayed from the output",
        Duration::from_secs(60),
        || {
            let (r, _) = replay_upsert(&read_jsonl(&out), &b, &["id"]);
            format!(
                "replayed {} rows, the table has {}; log:\n{}",
                lines(&r, &["id", "v"]).len(),
                want.len(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        },
        || {
            let (r, _) = replay_upsert(&read_jsonl(&out), &b, &["id"]);
            let got = lines(&r, &["id", "v"]);
            (got == want).then_some(got)
        },
    );
    assert_eq!(got.len(), 691);
    // The rows nobody changed came from the request alone, once each.
    let mut reads: BTreeMap<i64, usize> = BTreeMap::new();
    for e in read_jsonl(&out)
        .iter()
        .filter(|e| e["table"] == b.as_str() && e["op"] == "READ")
    {
        *reads.entry(e["data"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    let untouched: Vec<_> = (31..=700).map(|id| reads.get(&id).copied()).collect();
    assert!(
        untouched.iter().all(|n| *n == Some(1)),
        "rows 31..=700 read once each: {reads:?}"
    );
    proc.kill().expect("stop walwatch");
    proc.wait().expect("reap walwatch");
    drop_slot(&slot);
    sql(&format!(
        "DROP PUBLICATION {publication}; DROP TABLE {a}, {b};"
    ));
}

/// Bad requests are named errors, exit 2, and a table that cannot be read any more (dropped
/// while it is read) is left out of the request, reported, while the stream goes on.
#[test]
fn bad_snapshot_requests_are_named_errors_and_never_stop_the_stream() {
    let (watched, other) = (
        support::unique_name("badask_w"),
        support::unique_name("badask_o"),
    );
    sql(&format!(
        "CREATE TABLE {watched} (id int PRIMARY KEY, v text);
         CREATE TABLE {other} (id int PRIMARY KEY);
         INSERT INTO {watched} SELECT g, 'x' FROM generate_series(1, 1000) g;"
    ));
    let slot = support::unique_name("badask");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let log = dir.path().join("walwatch.log");
    let ask = |slot: &str, table: &str| {
        harness::run_expecting(
            &[
                "snapshot",
                "--dsn",
                &dsn(),
                "--slot",
                slot,
                "--tables",
                table,
                "--wait",
            ],
            2,
        )
    };
    let e = ask("no_such_slot", &watched);
    assert!(
        harness::stderr(&e).contains("there is no replication slot `no_such_slot`"),
        "{}",
        harness::stderr(&e)
    );
    let gate = dir.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let mut proc = stream_gated(&slot, &watched, &jsonl(&out), &log, &[], Some(&gate));
    let e = ask(&slot, "no_such_table_anywhere");
    assert!(
        harness::stderr(&e).contains("no_such_table_anywhere"),
        "{}",
        harness::stderr(&e)
    );
    let e = ask(&slot, &other);
    assert!(
        harness::stderr(&e).contains(&format!("does not watch public.{other}")),
        "{}",
        harness::stderr(&e)
    );
    // Dropped while it is read: after its first chunk (the gate holds the second).
    let asker = walwatch()
        .args([
            "snapshot",
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &watched,
            "--wait",
            "--timeout",
            "60s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn walwatch snapshot");
    support::wait_until(
        "rows of the request durable",
        Duration::from_secs(60),
        || requested(&slot).iter().any(|t| t.1 > 0).then_some(()),
    );
    sql(&format!("DROP TABLE {watched};"));
    std::fs::remove_file(&gate).unwrap();
    let asked = asker.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&asked.stderr);
    assert_eq!(asked.status.code(), Some(2), "{text}");
    assert!(
        text.contains("left out") && text.contains(&watched),
        "{text}"
    );
    // The stream goes on: a mark still arrives.
    assert!(proc.try_wait().unwrap().is_none(), "walwatch stopped");
    harness::run_expecting(&["mark", "--dsn", &dsn(), "after-drop"], 0);
    support::wait_until(
        "walwatch confirms past the drop",
        Duration::from_secs(60),
        || {
            let end = harness::current_lsn();
            (slot_confirmed(&slot) >= end).then_some(())
        },
    );
    assert!(
        proc.try_wait().unwrap().is_none(),
        "walwatch stopped: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    proc.kill().unwrap();
    proc.wait().unwrap();
    drop_slot(&slot);
    sql(&format!("DROP TABLE IF EXISTS {other};"));
}

/// The server sends a request again when the slot was not confirmed past it before a stop
/// (made certain: the first run confirms nothing past where it started, a test-only setting).
/// The next run does not take it twice: each row is read once in all.
#[test]
fn a_request_sent_again_after_a_stop_is_not_taken_twice() {
    let table = support::unique_name("askonce");
    sql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text);
         INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 300) g;"
    ));
    let slot = support::unique_name("askonce");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let ready = dir.path().join("ready");
    let first_log = dir.path().join("first.log");
    let mut first = harness::Proc(
        walwatch()
            .args([
                "--dsn",
                &dsn(),
                "--slot",
                &slot,
                "--tables",
                &table,
                "--output",
            ])
            .arg(&out)
            .arg("--ready-file")
            .arg(&ready)
            .env("WALWATCH_TEST_HOLD_CONFIRM", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&first_log).unwrap())
            .spawn()
            .expect("spawn walwatch"),
    );
    support::wait_until("walwatch streaming", Duration::from_secs(60), || {
        ready.exists().then_some(())
    });
    let held_at = slot_confirmed(&slot);
    harness::run_expecting(
        &[
            "snapshot",
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &table,
            "--wait",
            "--timeout",
            "60s",
        ],
        0,
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    assert_eq!(first.wait().unwrap().code(), Some(0));
    assert_eq!(
        slot_confirmed(&slot),
        held_at,
        "the slot was confirmed past the request"
    );
    let second_log = dir.path().join("second.log");
    let mut second = stream_into(&slot, &table, &out, &second_log, &[]);
    let end = harness::current_lsn();
    support::wait_until("the replay confirmed", Duration::from_secs(60), || {
        (slot_confirmed(&slot) >= end).then_some(())
    });
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert_eq!(second.wait().unwrap().code(), Some(0));
    let mut reads: BTreeMap<i64, usize> = BTreeMap::new();
    for e in read_jsonl(&out).iter().filter(|e| e["op"] == "READ") {
        *reads.entry(e["data"]["id"].as_i64().unwrap()).or_default() += 1;
    }
    let logs = format!(
        "{}\n--- second ---\n{}",
        std::fs::read_to_string(&first_log).unwrap_or_default(),
        std::fs::read_to_string(&second_log).unwrap_or_default()
    );
    assert!(
        reads.len() == 300 && reads.values().all(|n| *n == 1),
        "each row read once: {} rows, {} read more than once; logs:\n{logs}",
        reads.len(),
        reads.values().filter(|n| **n > 1).count()
    );
    drop_slot(&slot);
    sql(&format!("DROP TABLE {table};"));
}

/// Two requests for one table, the second made while the first reads it (made certain by the
/// gate): each `--wait` follows its own to the end, and the table is read once more only if
/// it was done.
#[test]
fn two_requests_for_one_table_are_each_followed_to_the_end() {
    let (a, b) = (
        support::unique_name("twoask_a"),
        support::unique_name("twoask_b"),
    );
    sql(&format!(
        "CREATE TABLE {a} (id int PRIMARY KEY); CREATE TABLE {b} (id int PRIMARY KEY);
         INSERT INTO {a} SELECT generate_series(1, 200); INSERT INTO {b} SELECT generate_series(1, 200);"
    ));
    let slot = support::unique_name("twoask");
    let dir = tempfile::tempdir().unwrap();
    let (out, log, gate) = (
        dir.path().join("out.jsonl"),
        dir.path().join("walwatch.log"),
        dir.path().join("gate"),
    );
    std::fs::write(&gate, "").unwrap();
    let tables = format!("{a},{b}");
    let mut proc = stream_gated(&slot, &tables, &jsonl(&out), &log, &[], Some(&gate));
    let ask = |tables: &str| {
        walwatch()
            .args([
                "snapshot",
                "--dsn",
                &dsn(),
                "--slot",
                &slot,
                "--tables",
                tables,
            ])
            .args(["--wait", "--timeout", "60s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn walwatch snapshot")
    };
    let first = ask(&tables);
    support::wait_until("the first request taken", Duration::from_secs(30), || {
        (requested(&slot).len() == 2).then_some(())
    });
    let second = ask(&b);
    support::wait_until("the second request taken", Duration::from_secs(30), || {
        let comment = sql(&format!(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication \
             WHERE pubname = 'walwatch_{slot}';"
        ));
        let record: Value = serde_json::from_str(comment.trim()).ok()?;
        let taken = record["backfill"]["requests"].as_array()?.len();
        (taken == 2).then_some(())
    });
    std::fs::remove_file(&gate).unwrap();
    for (which, child) in [("first", first), ("second", second)] {
        let done = child.wait_with_output().unwrap();
        let state = requested(&slot);
        assert_eq!(
            done.status.code(),
            Some(0),
            "{which}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert!(
            state.iter().all(|t| t.2),
            "the {which} request's --wait ended before every table of it was done: {state:?}"
        );
    }
    let reads = read_jsonl(&out)
        .iter()
        .filter(|e| e["op"] == "READ")
        .count();
    assert_eq!(
        reads, 400,
        "each row read once: b was being read when asked for again"
    );
    proc.kill().unwrap();
    proc.wait().unwrap();
    drop_slot(&slot);
    sql(&format!("DROP TABLE {a}, {b};"));
}

/// `--output FILE` for [`stream_gated`].
fn jsonl(out: &Path) -> [&str; 2] {
    ["--output", out.to_str().unwrap()]
}

/// Where a test's events go, and how they are read back.
#[derive(Clone, Copy)]
enum Output {
    Jsonl,
    /// Arrow IPC files, with the old values of UPDATEs (`old=true`), closed every 300 rows or
    /// second.
    Arrow,
}

impl Output {
    fn args(self, out: &Path) -> Vec<String> {
        match self {
            Output::Jsonl => vec!["--output".into(), out.display().to_string()],
            Output::Arrow => vec![
                "--sink".into(),
                format!("arrow:{}?old=true&rows=300&seconds=1", out.display()),
            ],
        }
    }

    /// The events of `t`'s tables, in the stream's order per table.
    fn events(self, out: &Path, t: &Tables) -> Vec<Value> {
        match self {
            Output::Jsonl => read_jsonl(out),
            Output::Arrow => [&t.keyed, &t.keyless, &t.part]
                .into_iter()
                .flat_map(|table| arrow_events(out, table))
                .collect(),
        }
    }
}

/// The rows an Arrow sink wrote for `table` under `dir`, as the events the JSONL replay reads
/// (`table`, `op`, `data`, `key`, `old`, `unchanged`), in the stream's order: files by their
/// first and last commit position, then the number a same-named file got.
fn arrow_events(dir: &Path, table: &str) -> Vec<Value> {
    let sub = dir.join(format!("public.{table}"));
    let mut files: Vec<((u64, u64, u32), std::path::PathBuf)> = std::fs::read_dir(&sub)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let path = e.ok()?.path();
                    let stem = path
                        .file_name()?
                        .to_str()?
                        .strip_suffix(".arrow")?
                        .to_string();
                    let (range, k) = match stem.split_once('_') {
                        Some((range, k)) => (range.to_string(), k.parse().ok()?),
                        None => (stem, 0),
                    };
                    let (first, last) = range.split_once('-')?;
                    let first = u64::from_str_radix(first, 16).ok()?;
                    let last = u64::from_str_radix(last, 16).ok()?;
                    Some(((first, last, k), path))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for (_, path) in files {
        let file = std::fs::File::open(&path).unwrap();
        let reader = arrow_ipc::reader::FileReader::try_new(file, None)
            .unwrap_or_else(|e| panic!("{} is not a complete Arrow file: {e}", path.display()));
        for batch in reader {
            rows_as_events(&batch.unwrap(), table, &mut out);
        }
    }
    out
}

/// One event per row of `batch` (see [`arrow_events`]).
fn rows_as_events(batch: &arrow_array::RecordBatch, table: &str, out: &mut Vec<Value>) {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int8Type, Int32Type, Int64Type};
    use arrow_array::{Array, ArrayRef};
    use arrow_schema::DataType;
    let value = |col: &ArrayRef, i: usize| -> Value {
        if col.is_null(i) {
            return Value::Null;
        }
        match col.data_type() {
            DataType::Int32 => col.as_primitive::<Int32Type>().value(i).into(),
            DataType::Int64 => col.as_primitive::<Int64Type>().value(i).into(),
            DataType::Utf8 => col.as_string::<i32>().value(i).into(),
            other => panic!("this test reads no {other} column"),
        }
    };
    let schema = batch.schema();
    let ops = batch
        .column_by_name("_op")
        .unwrap()
        .as_dictionary::<Int8Type>();
    let unchanged = batch.column_by_name("_unchanged").unwrap().as_list::<i32>();
    for i in 0..batch.num_rows() {
        let op = ops
            .values()
            .as_string::<i32>()
            .value(ops.keys().value(i) as usize);
        let (mut data, mut old) = (serde_json::Map::new(), serde_json::Map::new());
        for (field, col) in schema.fields().iter().zip(batch.columns()) {
            let name = field.name();
            if let Some(c) = name.strip_prefix("_old_") {
                if !col.is_null(i) {
                    old.insert(c.to_string(), value(col, i));
                }
            } else if !name.starts_with('_') {
                data.insert(name.clone(), value(col, i));
            }
        }
        if op == "DELETE" {
            // The old key (or whole row): the other columns are null.
            data.retain(|_, v| !v.is_null());
        }
        let names = unchanged.value(i);
        let names: Vec<Value> = (0..names.len())
            .map(|j| names.as_string::<i32>().value(j).into())
            .collect();
        out.push(serde_json::json!({
            "table": table,
            "op": op,
            "data": data,
            "key": data,
            "old": if old.is_empty() { Value::Null } else { Value::Object(old) },
            "unchanged": names,
        }));
    }
}

/// `--snapshot initial` into Arrow files while the writer runs: the files read back replay to
/// exactly each table, as the JSONL file does.
#[test]
fn initial_snapshot_into_arrow_files_meets_the_stream_exactly() {
    let t = Tables::create("snaparrow");
    let slot = support::unique_name("snaparrow");
    let dir = tempfile::tempdir().unwrap();
    let (out, log) = (dir.path().join("files"), dir.path().join("walwatch.log"));
    let writer = Writer::start(&t, 0x2545_F491_4F6C_DD1D);
    writer.wait_for(50);
    let sink = Output::Arrow.args(&out);
    let mut args: Vec<&str> = sink.iter().map(String::as_str).collect();
    args.extend(["--snapshot", "initial"]);
    let mut proc = stream_gated(&slot, &t.list(), &[], &log, &args, None);
    let at_ready = writer.committed();
    writer.wait_for(at_ready + 200);
    writer.finish();
    let end = harness::current_lsn();
    support::wait_until(
        "the slot confirmed every change",
        Duration::from_secs(60),
        || (slot_confirmed(&slot) >= end).then_some(()),
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(proc.id() as i32, libc::SIGTERM) };
    let status = proc.wait().expect("wait for walwatch");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "log:\n{log_text}");
    let (reads, changed) = assert_replays_to_tables(&Output::Arrow.events(&out, &t), &t);
    assert!(
        reads > 3000 && changed > 0,
        "reads {reads}, changes to read rows {changed}\nlog:\n{log_text}"
    );
    drop_slot(&slot);
    t.drop();
}
