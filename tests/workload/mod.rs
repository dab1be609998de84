//! The snapshot tests' workload, shared by the test binaries that check a snapshot against
//! it through a sink (JSONL, Arrow, Kafka): three tables (keyed with TOASTed values, keyless,
//! partitioned), a writer changing them at random the whole time, and the replay of what a
//! sink holds (READ and changes) into each table's rows, compared with the table.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{dsn, sql};
use crate::support;

/// The three tables of a test: keyed with a TOASTed column, keyless (REPLICA IDENTITY FULL),
/// and partitioned by list (two partitions, rows moving between them).
pub struct Tables {
    pub keyed: String,
    pub keyless: String,
    pub part: String,
}

impl Tables {
    pub fn create(prefix: &str) -> Tables {
        let t = Tables {
            keyed: support::unique_name(&format!("{prefix}_k")),
            keyless: support::unique_name(&format!("{prefix}_nk")),
            part: support::unique_name(&format!("{prefix}_p")),
        };
        let (k, nk, p) = (&t.keyed, &t.keyless, &t.part);
        // doc: about 9.6 KB of hex, stored out of line (TOAST) even compressed; an UPDATE
        // that leaves it alone sends it as unchanged.
        sql(&format!(
            "CREATE TABLE {k} (id int PRIMARY KEY, n int, doc text);
             ALTER TABLE {k} ALTER COLUMN doc SET STORAGE EXTERNAL;
             CREATE TABLE {nk} (a int, b text);
             ALTER TABLE {nk} REPLICA IDENTITY FULL;
             CREATE TABLE {p} (id int, region text, v int, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
             CREATE TABLE {p}_a PARTITION OF {p} FOR VALUES IN ('a');
             CREATE TABLE {p}_b PARTITION OF {p} FOR VALUES IN ('b');
             INSERT INTO {k} SELECT g, g, CASE WHEN g % 10 = 0 THEN
                 (SELECT string_agg(md5(g::text || '-' || i), '') FROM generate_series(1, 300) i)
               ELSE 'short ' || g END FROM generate_series(1, 2000) g;
             INSERT INTO {nk} SELECT g % 100, 'b' || g FROM generate_series(1, 500) g;
             INSERT INTO {p} SELECT g, CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, g
               FROM generate_series(1, 1000) g;"
        ));
        t
    }

    pub fn list(&self) -> String {
        format!("{},{},{}", self.keyed, self.keyless, self.part)
    }

    pub fn drop(&self) {
        sql(&format!(
            "DROP TABLE IF EXISTS {}, {}, {};",
            self.keyed, self.keyless, self.part
        ));
    }
}

/// A writer changing the three tables at random, one statement per transaction, until
/// `stop`; counts the transactions it committed.
pub struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(t: &Tables, seed: u64) -> Writer {
        Writer::start_with(t, seed, true)
    }

    /// A writer that leaves the keyless table alone when `keyless` is false.
    pub fn start_with(t: &Tables, seed: u64, keyless: bool) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (k, nk, p) = (t.keyed.clone(), t.keyless.clone(), t.part.clone());
        let (stop2, committed2) = (stop.clone(), committed.clone());
        let dsn = dsn();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                    .await
                    .expect("writer connects");
                tokio::spawn(conn);
                let mut rng = seed;
                let mut next_id = 100_000;
                while !stop2.load(Ordering::Relaxed) {
                    // xorshift64: deterministic for a seed, no dependency.
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let r = (rng % 2000) as i64 + 1;
                    next_id += 1;
                    let mut pick = rng % 11;
                    if !keyless && (4..=6).contains(&pick) {
                        pick = 1;
                    }
                    let stmt = match pick {
                        0 => format!("INSERT INTO {k} VALUES ({next_id}, 0, 'new')"),
                        1 => format!("UPDATE {k} SET n = n + 1 WHERE id = {r}"),
                        2 => format!("UPDATE {k} SET doc = doc || 'x' WHERE id = {r}"),
                        3 => format!("DELETE FROM {k} WHERE id = {r}"),
                        4 => format!("INSERT INTO {nk} VALUES ({}, 'w{next_id}')", r % 100),
                        5 => format!(
                            "UPDATE {nk} SET b = b || 'u' WHERE ctid = \
                             (SELECT ctid FROM {nk} WHERE a = {} LIMIT 1)",
                            r % 100
                        ),
                        6 => format!(
                            "DELETE FROM {nk} WHERE ctid = \
                             (SELECT ctid FROM {nk} WHERE a = {} LIMIT 1)",
                            r % 100
                        ),
                        7 => format!("INSERT INTO {p} VALUES ({next_id}, 'a', 0)"),
                        8 => format!("UPDATE {p} SET v = v + 1 WHERE id = {}", r % 1000),
                        9 => format!(
                            "UPDATE {p} SET region = CASE region WHEN 'a' THEN 'b' ELSE 'a' END \
                             WHERE id = {}",
                            r % 1000
                        ),
                        _ => format!("DELETE FROM {p} WHERE id = {}", r % 1000),
                    };
                    c.batch_execute(&stmt).await.expect("writer statement");
                    committed2.fetch_add(1, Ordering::Relaxed);
                }
            });
        });
        Writer {
            stop,
            committed,
            thread: Some(thread),
        }
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Waits until the writer has committed `n` transactions in all.
    pub fn wait_for(&self, n: u64) {
        support::wait_until(
            &format!("the writer's first {n} commits"),
            Duration::from_secs(60),
            || (self.committed() >= n).then_some(()),
        );
    }

    /// Stops the writer and waits for it.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("writer thread");
        }
        self.committed()
    }
}

/// What replaying a table's events found.
#[derive(Default)]
pub struct Replayed {
    /// Row identity (the key, or the whole row for the keyless table) -> rows.
    pub rows: BTreeMap<String, Vec<BTreeMap<String, Value>>>,
    pub reads: usize,
    /// Changes (UPDATE, DELETE) to rows that came from the snapshot.
    pub changed_read_rows: usize,
}

pub fn object(v: &Value) -> BTreeMap<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("not a row: {v}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The row an UPDATE or DELETE changes: `old` (REPLICA IDENTITY FULL, or a key change), else
/// the new row's key (UPDATE) or `data` (DELETE: the key or the whole old row).
pub fn row_before(e: &Value) -> BTreeMap<String, Value> {
    if e["old"].is_object() {
        object(&e["old"])
    } else if e["op"] == "DELETE" {
        object(&e["data"])
    } else {
        object(&e["key"])
    }
}

/// The identity of a row: its key columns, or all its columns.
pub fn identity(row: &BTreeMap<String, Value>, key: &[&str]) -> String {
    if key.is_empty() {
        serde_json::to_string(row).unwrap()
    } else {
        key.iter()
            .map(|k| row.get(*k).map(Value::to_string).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("|")
    }
}

/// Replays `events` of `table` (key columns `key`, none for a keyless table).
pub fn replay(events: &[Value], table: &str, key: &[&str]) -> Replayed {
    let mut out = Replayed::default();
    let mut from_read: std::collections::HashSet<String> = Default::default();
    for (i, e) in events.iter().enumerate() {
        if e["table"] != table {
            continue;
        }
        let op = e["op"].as_str().unwrap();
        let here = || format!("event {i} ({op} on {table}): {e}");
        match op {
            "READ" | "INSERT" => {
                let row = object(&e["data"]);
                let id = identity(&row, key);
                let rows = out.rows.entry(id.clone()).or_default();
                if !key.is_empty() {
                    assert!(
                        rows.is_empty(),
                        "overlap: the row is already there: {}",
                        here()
                    );
                }
                rows.push(row);
                if op == "READ" {
                    out.reads += 1;
                    from_read.insert(id);
                }
            }
            "UPDATE" | "DELETE" => {
                let before = row_before(e);
                let id = identity(&before, key);
                if from_read.contains(&id) {
                    out.changed_read_rows += 1;
                }
                let rows = out
                    .rows
                    .get_mut(&id)
                    .unwrap_or_else(|| panic!("gap: no such row to change: {}", here()));
                let at = if key.is_empty() {
                    rows.iter()
                        .position(|r| *r == before)
                        .unwrap_or_else(|| panic!("gap: no such row to change: {}", here()))
                } else {
                    0
                };
                let old = rows.remove(at);
                if rows.is_empty() {
                    out.rows.remove(&id);
                }
                if op == "UPDATE" {
                    let mut row = object(&e["data"]);
                    // An unchanged TOASTed value is not sent: it keeps its value.
                    for c in e["unchanged"].as_array().unwrap() {
                        let c = c.as_str().unwrap();
                        row.insert(c.to_string(), old[c].clone());
                    }
                    let new_id = identity(&row, key);
                    let rows = out.rows.entry(new_id).or_default();
                    if !key.is_empty() {
                        assert!(rows.is_empty(), "overlap: updated onto a row: {}", here());
                    }
                    rows.push(row);
                }
            }
            "TRUNCATE" => panic!("no TRUNCATE in this workload: {}", here()),
            _ => {}
        }
    }
    out
}

/// The replayed rows as sorted text lines `c1|c2|…` of `columns`, comparable with psql -At.
pub fn lines(r: &Replayed, columns: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = r
        .rows
        .values()
        .flatten()
        .map(|row| {
            columns
                .iter()
                .map(|c| match &row[*c] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    v => v.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

/// The table's rows as sorted `psql -At` lines of `columns`.
pub fn table_lines(table: &str, columns: &[&str]) -> Vec<String> {
    let out = sql(&format!("SELECT {} FROM {table};", columns.join(", ")));
    let mut v: Vec<String> = out.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Checks each table's replayed events against its rows now; returns (READ rows, changes to
/// rows the snapshot read) over the three tables.
pub fn assert_replays_to_tables(events: &[Value], t: &Tables) -> (usize, usize) {
    let mut reads = 0;
    let mut changed = 0;
    for (table, key, columns) in [
        (&t.keyed, &["id"][..], &["id", "n", "doc"][..]),
        (&t.keyless, &[][..], &["a", "b"][..]),
        (&t.part, &["id", "region"][..], &["id", "region", "v"][..]),
    ] {
        let r = replay(events, table, key);
        let got = lines(&r, columns);
        let want = table_lines(table, columns);
        if got != want {
            let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).take(5).collect();
            let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).take(5).collect();
            panic!(
                "{table}: replaying READ + changes gives {} rows, the table has {}; \
                 missing (first 5): {missing:?}; extra (first 5): {extra:?}",
                got.len(),
                want.len()
            );
        }
        reads += r.reads;
        changed += r.changed_read_rows;
    }
    (reads, changed)
}

/// Replays `events` of `table` as a consumer of a snapshot continued between watermarks must:
/// by key, READ and INSERT set the row, UPDATE replaces it (keeping an unchanged TOASTed value
/// from the row it had, if it had one), DELETE removes it if there. Without a key, as a
/// multiset. Returns the rows and the READ rows that were read more than once.
pub fn replay_upsert(events: &[Value], table: &str, key: &[&str]) -> (Replayed, usize) {
    let mut out = Replayed::default();
    let mut read_keys: std::collections::HashMap<String, usize> = Default::default();
    for e in events.iter().filter(|e| e["table"] == table) {
        let op = e["op"].as_str().unwrap();
        let remove = |out: &mut Replayed, before: &BTreeMap<String, Value>| {
            let id = identity(before, key);
            let rows = out.rows.entry(id.clone()).or_default();
            let old = if key.is_empty() {
                rows.iter()
                    .position(|r| r == before)
                    .map(|at| rows.remove(at))
            } else {
                rows.pop()
            };
            if rows.is_empty() {
                out.rows.remove(&id);
            }
            old
        };
        match op {
            "READ" | "INSERT" => {
                let row = object(&e["data"]);
                let id = identity(&row, key);
                if op == "READ" {
                    out.reads += 1;
                    *read_keys.entry(id.clone()).or_default() += 1;
                }
                let rows = out.rows.entry(id).or_default();
                if !key.is_empty() {
                    rows.clear();
                }
                rows.push(row);
            }
            "UPDATE" | "DELETE" => {
                let before = row_before(e);
                let old = remove(&mut out, &before);
                if op == "UPDATE" {
                    let mut row = object(&e["data"]);
                    for c in e["unchanged"].as_array().unwrap() {
                        let c = c.as_str().unwrap();
                        let value = old.as_ref().and_then(|o| o.get(c)).cloned();
                        row.insert(c.to_string(), value.unwrap_or(Value::Null));
                    }
                    let rows = out.rows.entry(identity(&row, key)).or_default();
                    if !key.is_empty() {
                        rows.clear();
                    }
                    rows.push(row);
                }
            }
            _ => {}
        }
    }
    let reread = read_keys.values().map(|n| n - 1).sum();
    (out, reread)
}

/// Replays `events` by key (`replay_upsert`) and compares each table with its rows now;
/// returns the READ rows read more than once.
pub fn assert_upserts_replay_to_tables(events: &[Value], t: &Tables, logs: &str) -> usize {
    let mut reread = 0;
    let mut failures = Vec::new();
    for (table, key, columns) in [
        (&t.keyed, &["id"][..], &["id", "n", "doc"][..]),
        (&t.keyless, &[][..], &["a", "b"][..]),
        (&t.part, &["id", "region"][..], &["id", "region", "v"][..]),
    ] {
        let (mut r, again) = replay_upsert(events, table, key);
        reread += again;
        if key.is_empty() {
            // A table without a key read again after a stop repeats the rows the output
            // already had (walwatch cannot tell them apart): this one's rows are distinct and
            // unchanged during the test, so a consumer (and this check) drops the repeats.
            for rows in r.rows.values_mut() {
                rows.truncate(1);
            }
        }
        let got = lines(&r, columns);
        let want = table_lines(table, columns);
        if got != want {
            let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).take(3).collect();
            let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).take(3).collect();
            failures.push(format!(
                "{table}: replaying gives {} rows, the table has {}; missing (first 3): \
                 {missing:?}; extra (first 3): {extra:?}",
                got.len(),
                want.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\nlogs:\n{logs}",
        failures.join("\n")
    );
    reread
}
