//! Helpers for integration tests that run the `walwatch` binary against the shared test
//! cluster: create a slot, run a workload, drain the slot to JSON, validate against the schema.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::support;

/// The `walwatch` binary built for this test run.
pub fn walwatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walwatch"));
    // Tests must not pick up the developer's libpq settings.
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGPASSFILE",
        "PGSERVICE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// Runs walwatch to completion and returns its output; panics with stderr if it exited
/// with another code than `expect_code`.
pub fn run_expecting(args: &[&str], expect_code: i32) -> Output {
    let out = walwatch().args(args).output().expect("spawn walwatch");
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(
        code,
        expect_code,
        "walwatch {args:?} exited {code}, expected {expect_code}\nstderr:\n{}\nstdout (first 2000 bytes):\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .take(2000)
            .collect::<String>()
    );
    out
}

/// The DSN of the shared cluster's test database, as the non-superuser replication role.
pub fn dsn() -> String {
    support::cluster().dsn("walwatch")
}

/// Runs SQL as the table-owning role `walwatch` (so it may create publications on the tables).
pub fn sql(statements: &str) -> String {
    support::cluster()
        .psql("walwatch", &format!("SET ROLE walwatch;\n{statements}"))
        .unwrap_or_else(|e| panic!("SQL failed: {e}\n--- SQL ---\n{statements}"))
}

/// Creates permanent slot `slot` for `tables` (walwatch --slot S --endpos now exits at once).
pub fn create_slot(slot: &str, tables: &str) {
    run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--slot",
            slot,
            "--tables",
            tables,
            "--endpos",
            "now",
        ],
        0,
    );
}

/// Drains `slot` up to the current WAL position as JSON events (each validated against
/// `schemas/event.schema.json`), then drops the slot and its publication.
pub fn drain(slot: &str, tables: &str, extra: &[&str]) -> Vec<Value> {
    let dsn = dsn();
    let mut args = vec![
        "--dsn", &dsn, "--slot", slot, "--tables", tables, "--endpos", "now", "--format", "json",
    ];
    args.extend_from_slice(extra);
    let out = run_expecting(&args, 0);
    let events = parse_jsonl(&out.stdout);
    drop_slot(slot);
    events
}

/// Parses JSONL and validates every line against the event schema.
pub fn parse_jsonl(bytes: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).expect("output is UTF-8");
    text.lines()
        .map(|line| {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert_valid(&v);
            v
        })
        .collect()
}

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(include_str!("../../schemas/event.schema.json"))
            .expect("schema is JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    })
}

/// Panics with every violation if `event` does not match the schema.
pub fn assert_valid(event: &Value) {
    let errors: Vec<String> = validator()
        .iter_errors(event)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "event violates schemas/event.schema.json:\n{}\nevent: {event}",
        errors.join("\n")
    );
}

/// Drops a slot and walwatch's publication for it, ignoring either being gone.
pub fn drop_slot(slot: &str) {
    support::cluster()
        .psql(
            "walwatch",
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}';
                 DROP PUBLICATION IF EXISTS walwatch_{slot};
                 DROP PUBLICATION IF EXISTS walwatch_{slot}_noident;"
            ),
        )
        .expect("drop slot");
}

/// The row changes (INSERT, UPDATE, DELETE, TRUNCATE) of a list. Logical messages are left
/// out: pgoutput sends every message of the database to every slot, whatever the publication,
/// so other tests' messages can appear.
pub fn changes(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| {
            matches!(
                e["op"].as_str(),
                Some("INSERT" | "UPDATE" | "DELETE" | "TRUNCATE")
            )
        })
        .collect()
}

/// `op table` summaries, for readable assertions on order.
pub fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["table"].as_str() {
            Some(t) => format!(
                "{} {}.{}",
                e["op"].as_str().unwrap(),
                e["schema"].as_str().unwrap(),
                t
            ),
            None => e["op"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// A walwatch process, killed if the test ends (or panics) while it still runs.
pub struct Proc(pub std::process::Child);

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A psql script inserting `rows` rows into `table` in transactions of 1,000 (one statement
/// each), each row `(g, repeat('x', pad))` for g = 1..=rows.
pub fn inserts_in_batches(table: &str, rows: usize, pad: usize) -> String {
    (0..rows.div_ceil(1000))
        .map(|i| {
            format!(
                "INSERT INTO {table} SELECT g, repeat('x', {pad}) FROM generate_series({}, {}) g;\n",
                i * 1000 + 1,
                (i * 1000 + 1000).min(rows)
            )
        })
        .collect()
}

/// Starts walwatch with stdout discarded and stderr going to `log` (read it with
/// `std::fs::read_to_string`); killed when the guard drops (also on a panic).
pub fn spawn_logged(args: &[&str], log: &std::path::Path) -> Proc {
    Proc(
        walwatch()
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn walwatch"),
    )
}

/// One column of `pg_replication_slots` for `slot` ("" when there is no such slot or the value
/// is null).
pub fn slot_field(cluster: &support::ClusterHandle, slot: &str, field: &str) -> String {
    cluster
        .psql(
            "walwatch",
            &format!("SELECT {field} FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        )
        .unwrap()
}

/// The shared cluster's `confirmed_flush_lsn` of `slot`.
pub fn slot_confirmed(slot: &str) -> walwatch::Lsn {
    slot_field(support::cluster(), slot, "confirmed_flush_lsn")
        .parse()
        .unwrap()
}

/// Waits until a walsender holds `slot` (walwatch is streaming from it). A slot being created
/// is listed with its creator's pid before it exists for good (it is dropped if the creator
/// dies before reaching a consistent point), so its `confirmed_flush_lsn`, set once creation is
/// complete, must be there too.
pub fn wait_active(cluster: &support::ClusterHandle, slot: &str) {
    support::wait_until(
        &format!("slot {slot} to be created and in use"),
        std::time::Duration::from_secs(30),
        || {
            let row = slot_field(cluster, slot, "active_pid || ' ' || confirmed_flush_lsn");
            (!row.is_empty()).then_some(())
        },
    );
}

/// The WAL insert position: past every record written so far (the scratch clusters run with
/// `synchronous_commit = off`, so the write position can lag behind a commit that returned).
pub fn current_lsn() -> walwatch::Lsn {
    sql("SELECT pg_current_wal_insert_lsn()").parse().unwrap()
}

/// A child process killed (and reaped) however the test ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `walwatch record` of `table` into `file` and waits for its ready file: from then on
/// every commit is in the recording.
pub fn record(table: &str, file: &Path, ready: &Path) -> Child {
    record_with(table, file, ready, &[])
}

/// [`record`] with more options (`--envelope nested`, ...). Its stderr is not kept.
pub fn record_with(table: &str, file: &Path, ready: &Path, extra: &[&str]) -> Child {
    let child = walwatch()
        .args(["record", "--dsn", &dsn(), "--tables", table, "--output"])
        .arg(file)
        .arg("--ready-file")
        .arg(ready)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn walwatch record");
    support::wait_until("the recorder's ready file", Duration::from_secs(30), || {
        ready.exists().then_some(())
    });
    child
}

/// `walwatch assert KIND --dsn DSN --input FILE ARGS...`, expecting exit `code`.
pub fn assert_on(kind: &str, file: &Path, args: &[&str], code: i32) -> Output {
    let d = dsn();
    let mut all = vec![
        "assert",
        kind,
        "--dsn",
        &d,
        "--input",
        file.to_str().expect("a UTF-8 path"),
    ];
    all.extend_from_slice(args);
    run_expecting(&all, code)
}

/// A finished command's stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A finished command's stdout, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
