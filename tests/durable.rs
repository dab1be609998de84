//! Durable CDC with faults injected for real: `kill -9` of walwatch, the walsender terminated,
//! the server stopped as in a crash, a full disk, slots dropped or invalidated behind
//! walwatch's back, an idle slot among busy tables. The file must end up holding every
//! committed change exactly once, and the slot must never be confirmed past what the file holds.

mod harness;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use harness::{
    Proc, drop_slot, dsn, parse_jsonl, slot_confirmed, slot_field, spawn_logged, sql, wait_active,
    walwatch,
};
use support::{ScratchCluster, ScratchOptions, wait_until, wait_until_or};

/// A small deterministic generator (xorshift), so a failure can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn wait_exit(child: &mut Child, within: Duration, log: &Path) -> i32 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "walwatch did not exit within {within:?}; stderr:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// walwatch streaming `table` from permanent slot `slot` into a JSONL file, with `extra`
/// arguments; its stderr goes to a log. Returns the run, the file, the log, and the directory
/// holding both (removed when dropped).
fn spawn_into_file(
    table: &str,
    slot: &str,
    extra: &[&str],
) -> (Proc, PathBuf, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join(format!("{slot}.log"));
    let out = dir.path().join(format!("{slot}.jsonl"));
    let dsn = dsn();
    let args = [
        "--dsn",
        &dsn,
        "--slot",
        slot,
        "--tables",
        table,
        "--output",
        out.to_str().unwrap(),
    ];
    let child = spawn_logged(&[&args[..], extra].concat(), &log);
    wait_active(support::cluster(), slot);
    (child, out, log, dir)
}

/// The events of a JSONL file (whole lines only; each validated against the schema).
fn read_events(path: &Path) -> Vec<Value> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    parse_jsonl(&bytes[..end])
}

/// `op id v` for every row change of `table` in a list of events.
fn row_changes(events: &[Value], table: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["table"] == table)
        .map(|e| match e["op"].as_str().unwrap() {
            "DELETE" => format!("DELETE {}", e["data"]["id"]),
            op => format!("{op} {} {}", e["data"]["id"], e["data"]["v"]),
        })
        .collect()
}

/// Panics listing what is missing and what is duplicated unless `seen` holds every `expected`
/// change exactly once (and nothing else).
fn assert_exactly_once(expected: &[String], seen: &[String]) {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for s in seen {
        *counts.entry(s).or_default() += 1;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|e| !counts.contains_key(e.as_str()))
        .collect();
    let dup: Vec<(&str, i64)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, n)| (*k, *n))
        .collect();
    let expected_set: std::collections::HashSet<&str> =
        expected.iter().map(String::as_str).collect();
    let extra: Vec<&str> = counts
        .keys()
        .filter(|k| !expected_set.contains(*k))
        .copied()
        .collect();
    assert!(
        missing.is_empty() && dup.is_empty() && extra.is_empty(),
        "expected {} changes exactly once, saw {} lines: {} missing (first: {:?}), {} duplicated \
         (first: {:?}), {} unexpected (first: {:?})",
        expected.len(),
        seen.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        dup.len(),
        dup.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>(),
    );
}

/// BEGIN and COMMIT come in pairs, one per transaction (by commit_lsn), none repeated.
fn assert_transactions_once(events: &[Value]) {
    let mut begins: BTreeMap<String, u32> = BTreeMap::new();
    let mut commits: BTreeMap<String, u32> = BTreeMap::new();
    for e in events {
        let key = e["commit_lsn"].as_str().unwrap_or_default().to_string();
        match e["op"].as_str() {
            Some("BEGIN") => *begins.entry(key).or_default() += 1,
            Some("COMMIT") => *commits.entry(key).or_default() += 1,
            _ => {}
        }
    }
    let repeated: Vec<_> = begins
        .iter()
        .chain(commits.iter())
        .filter(|(_, n)| **n != 1)
        .collect();
    assert!(repeated.is_empty(), "BEGIN/COMMIT repeated: {repeated:?}");
    assert_eq!(
        begins.keys().collect::<Vec<_>>(),
        commits.keys().collect::<Vec<_>>(),
        "every BEGIN has its COMMIT"
    );
}

/// The last `n` whole lines of a JSONL file as JSON (not validated: for polling a big file).
fn tail_events(path: &Path, n: usize) -> Vec<Value> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&bytes[..end]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {dsn}: {e}"));
    tokio::spawn(conn);
    client
}

/// A mixed workload on `table (id bigint primary key, v bigint)` until `target` row changes
/// have committed: multi-row INSERTs, COPY (many rows per WAL record), UPDATEs, DELETEs, and
/// rolled-back transactions that must never appear. Returns every committed change as
/// `op id v` (`DELETE id`), each unique.
async fn mixed_workload(dsn: &str, table: &str, target: usize, seed: u64) -> Vec<String> {
    use futures_util::SinkExt;
    let mut c = connect(dsn).await;
    let mut rng = Rng(seed);
    let mut next_id: i64 = 1;
    let mut next_v: i64 = 1;
    let mut live: Vec<i64> = Vec::new();
    let mut done: Vec<String> = Vec::new();
    while done.len() < target {
        let kind = rng.below(100);
        let tx = c.transaction().await.unwrap();
        let mut changes = Vec::new();
        if kind < 35 || live.len() < 50 {
            let n = 1 + rng.below(40) as i64;
            let mut values = Vec::new();
            for _ in 0..n {
                values.push(format!("({next_id},{next_v})"));
                changes.push(format!("INSERT {next_id} {next_v}"));
                live.push(next_id);
                next_id += 1;
                next_v += 1;
            }
            tx.batch_execute(&format!("INSERT INTO {table} VALUES {}", values.join(",")))
                .await
                .unwrap();
        } else if kind < 55 {
            let n = 200 + rng.below(800) as i64;
            let mut text = String::new();
            for _ in 0..n {
                text.push_str(&format!("{next_id}\t{next_v}\n"));
                changes.push(format!("INSERT {next_id} {next_v}"));
                live.push(next_id);
                next_id += 1;
                next_v += 1;
            }
            let sink = tx
                .copy_in(&format!("COPY {table} (id, v) FROM STDIN"))
                .await
                .unwrap();
            futures_util::pin_mut!(sink);
            sink.send(bytes::Bytes::from(text)).await.unwrap();
            sink.close().await.unwrap();
        } else if kind < 80 {
            let n = 1 + rng.below(20);
            let mut values = Vec::new();
            for _ in 0..n {
                let id = live[rng.below(live.len() as u64) as usize];
                if values.iter().any(|(i, _)| *i == id) {
                    continue;
                }
                values.push((id, next_v));
                next_v += 1;
            }
            for (id, v) in &values {
                changes.push(format!("UPDATE {id} {v}"));
            }
            let list: Vec<String> = values.iter().map(|(i, v)| format!("({i},{v})")).collect();
            tx.batch_execute(&format!(
                "UPDATE {table} SET v = d.v FROM (VALUES {}) d(id, v) WHERE {table}.id = d.id",
                list.join(",")
            ))
            .await
            .unwrap();
        } else if kind < 95 {
            let n = 1 + rng.below(20) as usize;
            let mut ids = Vec::new();
            for _ in 0..n.min(live.len()) {
                let at = rng.below(live.len() as u64) as usize;
                ids.push(live.swap_remove(at));
            }
            for id in &ids {
                changes.push(format!("DELETE {id}"));
            }
            tx.execute(&format!("DELETE FROM {table} WHERE id = ANY($1)"), &[&ids])
                .await
                .unwrap();
        } else {
            // Rolled back: ids and values are burnt, nothing may appear.
            tx.batch_execute(&format!(
                "INSERT INTO {table} VALUES ({next_id}, -1), ({}, -1)",
                next_id + 1
            ))
            .await
            .unwrap();
            next_id += 2;
            tx.rollback().await.unwrap();
            continue;
        }
        tx.commit().await.unwrap();
        done.extend(changes);
        // Paced (about 10 s in all), so that the kills land while changes are flowing.
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    done
}

/// The headline promise: `kill -9` at random points while a 200,000-change workload runs,
/// five times over, and the file still holds every committed change exactly once. Then one
/// more kill with confirmations held back, so a restart certainly finds the file ahead of the
/// slot and must skip what the server replays.
#[test]
fn serial_kill_9_at_random_points_loses_and_repeats_nothing() {
    let t = support::unique_name("kill");
    let slot = support::unique_name("kslot");
    sql(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, v bigint);"
    ));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cdc.jsonl");
    let out_s = out.to_str().unwrap().to_string();
    let dsn = dsn();
    let args = [
        "--dsn",
        &dsn,
        "--slot",
        &slot,
        "--tables",
        &t,
        "--output",
        &out_s,
        "--status-interval",
        "0.2",
    ];
    // Create the slot first, so every change of the workload is in it.
    let log0 = dir.path().join("create.log");
    let mut first = spawn_logged(&[&args[..], &["--endpos", "now"]].concat(), &log0);
    assert_eq!(wait_exit(&mut first, Duration::from_secs(60), &log0), 0);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("workload seed {seed}");
    let workload = {
        let (dsn, t) = (dsn.clone(), t.clone());
        std::thread::spawn(move || tokio_rt().block_on(mixed_workload(&dsn, &t, 200_000, seed)))
    };
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut killed_with_lines = Vec::new();
    let mut during_workload = 0;
    let mut logs = Vec::new();
    for round in 0..5 {
        // Down for a while, so a backlog builds up; killed while catching up on it, when the
        // file is most likely ahead of the slot's confirmed position (mid-transaction).
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
        let log = dir.path().join(format!("run{round}.log"));
        let mut child = spawn_logged(&args, &log);
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
        killed_with_lines.push(read_events(&out).len());
        during_workload += usize::from(!workload.is_finished());
        logs.push(log);
    }
    let mut expected = workload.join().expect("workload");

    // The case this test exists for, made certain rather than likely: a restart that finds
    // the file ahead of the slot's confirmed position must skip the replay of what the file
    // holds. Random kills reach it only sometimes (the file is ahead only between an fsync
    // and the next status update), so one more round holds confirmations back
    // (WALWATCH_TEST_HOLD_CONFIRM, test only): walwatch writes and fsyncs a known
    // transaction, the slot stays behind it, and walwatch is killed -9 there.
    let log = dir.path().join("held.log");
    let mut held = Proc(
        walwatch()
            .args(args)
            .env("WALWATCH_TEST_HOLD_CONFIRM", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn walwatch"),
    );
    wait_active(support::cluster(), &slot);
    // Ids far above the workload's, in one transaction.
    let batch: Vec<String> = (1_000_000_001..=1_000_000_100_i64)
        .map(|id| format!("INSERT {id} {id}"))
        .collect();
    sql(&format!(
        "INSERT INTO {t} SELECT g, g FROM generate_series(1000000001, 1000000100) g;"
    ));
    let batch_commit: walwatch::Lsn = support::wait_until(
        "the held walwatch to write the batch's transaction to the file",
        Duration::from_secs(60),
        || {
            let tail = tail_events(&out, 300);
            let last_row = tail
                .iter()
                .find(|e| e["table"] == t.as_str() && e["data"]["id"] == 1_000_000_100_i64)?;
            let lsn = &last_row["commit_lsn"];
            tail.iter()
                .any(|e| e["op"] == "COMMIT" && e["commit_lsn"] == *lsn)
                .then(|| lsn.as_str()?.parse().ok())?
        },
    );
    let confirmed = slot_confirmed(&slot);
    assert!(
        confirmed < batch_commit,
        "confirmations were held, yet the slot is confirmed at {confirmed}, not behind the \
         batch the file holds (commit {batch_commit}); held run's log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(held.id() as i32, libc::SIGKILL) };
    let _ = held.wait();
    logs.push(log);
    expected.extend(batch.iter().cloned());
    // A change after the batch: the restart gets past the replay, which is when the sink logs
    // how much of it was skipped.
    sql(&format!("INSERT INTO {t} VALUES (1000000101, 1000000101);"));
    expected.push("INSERT 1000000101 1000000101".into());

    // Drain the rest after the last kill; walwatch waits for the dead one's slot to be freed.
    let log = dir.path().join("final.log");
    let mut last = spawn_logged(&[&args[..], &["--endpos", "now"]].concat(), &log);
    assert_eq!(
        wait_exit(&mut last, Duration::from_secs(120), &log),
        0,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    eprintln!("lines in the file after each kill: {killed_with_lines:?}");
    eprintln!("kills while the workload ran: {during_workload} of 5");
    // Restarts that found the file ahead of the slot (events written, not yet confirmed)
    // skipped the replay, seen in the logs of the runs. The random rounds may or may not have
    // some; the run after the held round must.
    let skipped = |log: &Path| -> Vec<u64> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|x| {
                let (_, rest) = x.split_once("skipped ")?;
                let (n, rest) = rest.split_once(' ')?;
                rest.starts_with("replayed events")
                    .then(|| n.parse().ok())?
            })
            .collect()
    };
    let earlier_skips: Vec<Vec<u64>> = logs.iter().map(|l| skipped(l)).collect();
    eprintln!(
        "replayed events skipped by the run of each random round, then the held round: \
         {earlier_skips:?}"
    );
    let final_skips = skipped(&log);
    eprintln!("replayed events skipped by the run after the held round: {final_skips:?}");
    // At least the batch's 100 rows, its BEGIN and COMMIT.
    assert!(
        final_skips.iter().sum::<u64>() >= 102,
        "the restart after the held round (file ahead of the slot by the 100-row batch) did \
         not skip the replay of the batch: skipped {final_skips:?}; its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    logs.push(log);
    assert!(
        during_workload >= 3 && killed_with_lines.windows(2).filter(|w| w[0] < w[1]).count() >= 2,
        "the kills did not land while changes were flowing ({during_workload} during the \
         workload; lines after each kill: {killed_with_lines:?})"
    );

    let events = read_events(&out);
    assert_exactly_once(&expected, &row_changes(&events, &t));
    assert_transactions_once(&events);
    // The ground truth query: replaying the file gives the table as it is.
    let mut replayed: BTreeMap<i64, i64> = BTreeMap::new();
    for e in events.iter().filter(|e| e["table"] == t.as_str()) {
        let id = e["data"]["id"].as_i64().unwrap();
        match e["op"].as_str().unwrap() {
            "DELETE" => {
                replayed.remove(&id);
            }
            _ => {
                replayed.insert(id, e["data"]["v"].as_i64().unwrap());
            }
        }
    }
    let table = sql(&format!("SELECT id || ' ' || v FROM {t} ORDER BY id"));
    let replayed_text: Vec<String> = replayed.iter().map(|(i, v)| format!("{i} {v}")).collect();
    assert!(
        table.lines().eq(replayed_text.iter().map(String::as_str)),
        "replaying the file does not give the table: {} rows in the table, {} replayed",
        table.lines().count(),
        replayed_text.len()
    );
    drop_slot(&slot);
}

/// How many events `out` holds, and walwatch's log: what a timed-out wait prints.
fn seen_and_log(out: &std::path::Path, log: &std::path::Path) -> String {
    format!(
        "{} events in the file; walwatch's log:\n{}",
        read_events(out).len(),
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

/// Inserts ten rows of `rc` at a time until `stop`, reconnecting and retrying through faults;
/// returns the next id it would have written (every id below it is in the table).
fn spawn_retrying_writer(
    dsn: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<i64> {
    std::thread::spawn(move || {
        tokio_rt().block_on(async move {
            let mut next = 1i64;
            let mut client: Option<tokio_postgres::Client> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                        .await
                        .ok()
                        .map(|(c, conn)| {
                            tokio::spawn(conn);
                            c
                        });
                }
                let Some(c) = &client else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let sql =
                    format!("INSERT INTO rc SELECT g, g FROM generate_series({next}, {}) g ON CONFLICT DO NOTHING", next + 9);
                if c.batch_execute(&sql).await.is_ok() {
                    next += 10;
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            next
        })
    })
}

/// A live run survives the walsender being terminated and the server stopping as in a crash:
/// it reconnects (one log line per attempt) and the file holds every row exactly once.
#[test]
fn serial_reconnects_after_terminate_backend_and_a_server_crash() {
    let cluster = ScratchCluster::start(ScratchOptions::default()).expect("own cluster");
    let h = cluster.handle();
    let dsn = cluster.dsn("walwatch");
    cluster
        .psql(
            "walwatch",
            "SET ROLE walwatch; CREATE TABLE rc (id bigint PRIMARY KEY, v bigint);",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rc.jsonl");
    let log = dir.path().join("rc.log");
    let mut child = spawn_logged(
        &[
            "--dsn",
            &dsn,
            "--slot",
            "rc_slot",
            "--tables",
            "rc",
            "--output",
            out.to_str().unwrap(),
            "--status-interval",
            "0.2",
            "--retry-for",
            "60s",
        ],
        &log,
    );
    wait_active(h, "rc_slot");
    // A writer that keeps inserting through both faults; a statement that fails while the
    // server is down is retried, so the table is the ground truth.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_retrying_writer(dsn.clone(), stop.clone());
    let lines = |n: usize| read_events(&out).len() >= n;
    wait_until("rows in the file", Duration::from_secs(30), || {
        lines(200).then_some(())
    });
    // Fault 1: the walsender is terminated mid-stream. pg_terminate_backend only signals; the
    // loss is seen in walwatch's log (signalled again, rarely, if the walsender lived on).
    let losses = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("lost the replication connection")
            .count()
    };
    wait_until(
        "walwatch to lose the terminated walsender",
        Duration::from_secs(30),
        || {
            let pid = slot_field(h, "rc_slot", "active_pid");
            if !pid.is_empty() {
                cluster
                    .psql("walwatch", &format!("SELECT pg_terminate_backend({pid})"))
                    .unwrap();
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < deadline {
                if losses() >= 1 {
                    return Some(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            None
        },
    );
    let after_first = read_events(&out).len();
    wait_until_or(
        "rows after the terminate",
        Duration::from_secs(60),
        || seen_and_log(&out, &log),
        || lines(after_first + 500).then_some(()),
    );
    // Fault 2: the server stops as in a crash and comes back.
    h.stop_immediately().expect("pg_ctl stop -m immediate");
    std::thread::sleep(Duration::from_millis(500));
    h.start_server_again().expect("start again");
    let after_second = read_events(&out).len();
    wait_until_or(
        "rows after the crash",
        Duration::from_secs(60),
        || seen_and_log(&out, &log),
        || lines(after_second + 500).then_some(()),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    // Everything committed reaches the file: wait until it holds the table's row count.
    let rows: usize = cluster
        .psql("walwatch", "SELECT count(*) FROM rc")
        .unwrap()
        .parse()
        .unwrap();
    wait_until(
        "every committed row in the file",
        Duration::from_secs(60),
        || (row_changes(&read_events(&out), "rc").len() >= rows).then_some(()),
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30), &log), 0);
    let stderr = std::fs::read_to_string(&log).unwrap();
    let table: Vec<String> = cluster
        .psql("walwatch", "SELECT 'INSERT ' || id || ' ' || v FROM rc")
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let events = read_events(&out);
    assert_exactly_once(&table, &row_changes(&events, "rc"));
    assert_transactions_once(&events);
    assert!(
        stderr.matches("lost the replication connection").count() >= 2
            && stderr.contains("reconnect attempt")
            && stderr.matches("reconnected (attempt").count() >= 2,
        "expected a line per loss and per attempt:\n{stderr}"
    );
    cluster.stop().unwrap();
}

/// What the file made durable is confirmed to the server within moments (a status update when
/// the durable position moves, at most one per 100 ms), not at the status interval, here a
/// minute (the server asks for a reply only at `wal_sender_timeout / 2`, 30 s). Then a burst
/// of 50 transactions, whose reports fall inside that pacing: the last one is confirmed too.
#[test]
fn durable_changes_are_confirmed_promptly_not_at_the_status_interval() {
    let table = support::unique_name("prompt");
    let slot = support::unique_name("prompt");
    sql(&format!("CREATE TABLE {table} (id int PRIMARY KEY);"));
    let (mut child, out, log, _dir) = spawn_into_file(&table, &slot, &["--status-interval", "60"]);
    // The commit record's position of the last transaction in the file, once it holds `rows`
    // rows: what is confirmed once that transaction is durable is its end, past it.
    let last_commit = |rows: usize| -> walwatch::Lsn {
        wait_until(
            &format!("{rows} rows in {}", out.display()),
            Duration::from_secs(30),
            || {
                let events = read_events(&out);
                let inserts = events.iter().filter(|e| e["op"] == "INSERT").count();
                let commit = events.iter().rev().find(|e| e["op"] == "COMMIT")?;
                (inserts == rows).then(|| commit["commit_lsn"].as_str().unwrap().parse().unwrap())
            },
        )
    };
    let confirmed_past = |commit: walwatch::Lsn, what: &str| {
        let started = Instant::now();
        let mut seen = slot_confirmed(&slot);
        while seen <= commit {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{what}: the slot's confirmed position is {seen}, still not past the commit at \
                 {commit} 5 s after the file held it; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
            seen = slot_confirmed(&slot);
        }
        started.elapsed()
    };
    sql(&format!("INSERT INTO {table} VALUES (0);"));
    let first = confirmed_past(last_commit(1), "one change");
    let burst: String = (1..=50)
        .map(|i| format!("INSERT INTO {table} VALUES ({i});"))
        .collect();
    sql(&burst);
    let last = confirmed_past(last_commit(51), "the last of a burst");
    eprintln!("confirmed {first:?} and {last:?} after the file held the change");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30), &log), 0);
    drop_slot(&slot);
}

/// Writes to tables walwatch does not watch, and to another database, must not pin WAL: the
/// keepalive's position is confirmed while nothing is pending.
#[test]
fn an_idle_slot_does_not_hold_back_wal() {
    let cluster = support::cluster();
    let watched = support::unique_name("watched");
    let busy = support::unique_name("busy");
    let slot = support::unique_name("idle");
    let other_db = support::unique_name("otherdb");
    sql(&format!(
        "CREATE TABLE {watched} (id int PRIMARY KEY);
         CREATE TABLE {busy} (id bigint, pad text);"
    ));
    cluster.create_database(&other_db).unwrap();
    cluster
        .psql(&other_db, "CREATE TABLE busy (id bigint, pad text);")
        .unwrap();
    let (mut child, out, log, _dir) =
        spawn_into_file(&watched, &slot, &["--status-interval", "0.5"]);
    sql(&format!("INSERT INTO {watched} VALUES (1);"));
    // Ten minutes of a busy neighbour (a 1,000-row transaction a second), compressed.
    let start_lsn = cluster
        .psql("walwatch", "SELECT pg_current_wal_lsn()")
        .unwrap();
    for i in 0..60 {
        sql(&format!(
            "INSERT INTO {busy} SELECT g, repeat('x', 200) FROM generate_series(1, 1000) g;"
        ));
        if i % 10 == 0 {
            cluster
                .psql(
                    &other_db,
                    "INSERT INTO busy SELECT g, repeat('y', 200) FROM generate_series(1, 1000) g;",
                )
                .unwrap();
        }
    }
    let written: i64 = cluster
        .psql(
            "walwatch",
            &format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start_lsn}')::int8"),
        )
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        written > 10 << 20,
        "the workload wrote only {written} bytes of WAL"
    );
    // The confirmed position catches up with the server's, though nothing was watched.
    let lag_sql = format!(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 \
         FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let mut last_lag = 0;
    wait_until(
        "the idle slot's confirmed position to catch up",
        Duration::from_secs(30),
        || {
            last_lag = cluster.psql("walwatch", &lag_sql).ok()?.parse().ok()?;
            (last_lag < 256 << 10).then_some(())
        },
    );
    // And with a checkpoint (which logs the running transactions a slot can restart from),
    // the WAL the slot retains is small too.
    let retained_sql = format!(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 \
         FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let mut retained = 0i64;
    wait_until(
        "the slot's restart_lsn to advance",
        Duration::from_secs(30),
        || {
            cluster.psql("walwatch", "CHECKPOINT").ok()?;
            std::thread::sleep(Duration::from_millis(600));
            retained = cluster.psql("walwatch", &retained_sql).ok()?.parse().ok()?;
            (retained < 2 << 20).then_some(())
        },
    );
    eprintln!("WAL written {written} B; slot lag {last_lag} B; retained {retained} B");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30), &log), 0);
    let events = read_events(&out);
    assert_eq!(row_changes(&events, &watched), vec!["INSERT 1 null"]);
    drop_slot(&slot);
}

/// A tmpfs mounted for the test: the output's disk, small enough to fill.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs (needs root with CAP_SYS_ADMIN); `None` where mounting is not allowed
    /// (or `WALWATCH_TEST_NO_MOUNT` is set, to exercise the fallback here).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new(if std::env::var_os("WALWATCH_TEST_NO_MOUNT").is_some() {
            "false"
        } else {
            "mount"
        })
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .ok()?;
        if !out.status.success() {
            eprintln!(
                "cannot mount a tmpfs on {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount failed");
    }
}

/// [`spawn`] with the output's size limited (RLIMIT_FSIZE) and SIGXFSZ ignored, so a write past
/// the limit fails with EFBIG instead of killing the process.
fn spawn_with_file_size_limit(args: &[&str], log: &Path, bytes: u64) -> Proc {
    use std::os::unix::process::CommandExt;
    let mut cmd = walwatch();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("log file"));
    // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    Proc(cmd.spawn().expect("spawn walwatch"))
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The output's disk fills: walwatch exits 2 saying so, the slot is not confirmed past what the
/// file holds, and once space is freed a restart completes the file with nothing lost.
#[test]
fn a_full_disk_stops_walwatch_and_a_restart_completes_the_file() {
    let t = support::unique_name("full");
    let slot = support::unique_name("fslot");
    sql(&format!(
        "CREATE TABLE {t} (id bigint PRIMARY KEY, v bigint, pad text);"
    ));
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    // A 1 MB tmpfs for the output (ENOSPC). Where mounting is not allowed (a container without
    // CAP_SYS_ADMIN), the same bytes are refused by a 1 MB file-size limit instead (EFBIG): the
    // same failed write, the same promises.
    let tmpfs = Tmpfs::mount(&disk, "1m");
    if tmpfs.is_none() {
        eprintln!("falling back to RLIMIT_FSIZE = 1 MB for the output");
    }
    let out = disk.join("cdc.jsonl");
    let dsn = dsn();
    let args = [
        "--dsn",
        &dsn,
        "--slot",
        &slot,
        "--tables",
        &t,
        "--output",
        out.to_str().unwrap(),
        "--endpos",
        "now",
    ];
    let log = dir.path().join("create.log");
    let mut c = spawn_logged(&args, &log);
    assert_eq!(wait_exit(&mut c, Duration::from_secs(60), &log), 0);
    // About 4 MB of JSON in 200 transactions, for a 1 MB disk.
    for i in 0..200 {
        sql(&format!(
            "INSERT INTO {t} SELECT g, g, repeat('p', 60) FROM generate_series({}, {}) g;",
            i * 50 + 1,
            i * 50 + 50
        ));
    }
    let log = dir.path().join("full.log");
    let mut c = if tmpfs.is_some() {
        spawn_logged(&args, &log)
    } else {
        spawn_with_file_size_limit(&args, &log, 1 << 20)
    };
    let code = wait_exit(&mut c, Duration::from_secs(60), &log);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 2, "a full disk is an error:\n{stderr}");
    let says = if tmpfs.is_some() {
        "the disk is full"
    } else {
        "size limit"
    };
    assert!(
        stderr.contains(says) && stderr.contains("nothing past the last durable event"),
        "{stderr}"
    );
    // Nothing confirmed past the file: every transaction that commits before the slot's
    // confirmed position has its COMMIT line in the file.
    let confirmed: walwatch::Lsn = slot_field(support::cluster(), &slot, "confirmed_flush_lsn")
        .parse()
        .unwrap();
    let partial = read_events(&out);
    let committed_in_file: std::collections::HashSet<String> = partial
        .iter()
        .filter(|e| e["op"] == "COMMIT")
        .map(|e| e["commit_lsn"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !partial.is_empty(),
        "the disk held some events before filling"
    );
    let torn = std::fs::read(&out).unwrap().last() != Some(&b'\n');

    // Free space (or lift the limit) and run again.
    if let Some(t) = &tmpfs {
        t.resize("64m");
    }
    let log = dir.path().join("resume.log");
    let mut c = spawn_logged(&args, &log);
    let code = wait_exit(&mut c, Duration::from_secs(60), &log);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stderr.contains("cut off"),
        torn,
        "a torn last line is repaired (and only then):\n{stderr}"
    );
    let events = read_events(&out);
    let expected: Vec<String> = (1..=10_000).map(|i| format!("INSERT {i} {i}")).collect();
    assert_exactly_once(&expected, &row_changes(&events, &t));
    assert_transactions_once(&events);
    for e in events.iter().filter(|e| e["op"] == "COMMIT") {
        let commit: walwatch::Lsn = e["commit_lsn"].as_str().unwrap().parse().unwrap();
        if commit < confirmed {
            assert!(
                committed_in_file.contains(e["commit_lsn"].as_str().unwrap()),
                "the slot was confirmed to {confirmed}, past transaction {commit}, which was \
                 not in the file when the disk filled"
            );
        }
    }
    drop(tmpfs);
    drop_slot(&slot);
}

/// A slot dropped while walwatch was stopped: the next run refuses to start over silently.
#[test]
fn a_slot_dropped_while_stopped_is_a_named_error() {
    let t = support::unique_name("dropped");
    let slot = support::unique_name("dslot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.jsonl");
    let dsn = dsn();
    let args = [
        "--dsn",
        &dsn,
        "--slot",
        &slot,
        "--tables",
        &t,
        "--output",
        out.to_str().unwrap(),
        "--endpos",
        "now",
    ];
    harness::run_expecting(&args, 0);
    sql(&format!("INSERT INTO {t} VALUES (1), (2);"));
    harness::run_expecting(&args, 0);
    assert_eq!(row_changes(&read_events(&out), &t).len(), 2);
    drop_slot(&slot);
    let run = harness::run_expecting(&args, 2);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!("replication slot `{slot}` does not exist"))
            && stderr.contains("was dropped")
            && stderr.contains("move"),
        "{stderr}"
    );
    assert_eq!(
        slot_field(support::cluster(), &slot, "slot_name"),
        "",
        "no slot was created"
    );
    drop_slot(&slot);
}

/// A slot invalidated by max_slot_wal_keep_size while walwatch was stopped (wal_status = lost):
/// a named error, not a silent jump over the lost changes.
#[test]
fn an_invalidated_slot_is_a_named_error() {
    let cluster = ScratchCluster::start(ScratchOptions {
        extra_conf: vec![("max_slot_wal_keep_size".into(), "1MB".into())],
        ..ScratchOptions::default()
    })
    .expect("own cluster");
    let dsn = cluster.dsn("walwatch");
    cluster
        .psql(
            "walwatch",
            "SET ROLE walwatch; CREATE TABLE inv (id bigint, pad text);",
        )
        .unwrap();
    let args = [
        "--dsn", &dsn, "--slot", "inv_slot", "--tables", "inv", "--endpos", "now", "--format",
        "json",
    ];
    harness::run_expecting(&args, 0);
    let h = cluster.handle();
    wait_until(
        "the slot to be invalidated",
        Duration::from_secs(60),
        || {
            cluster
                .psql(
                    "walwatch",
                    "INSERT INTO inv SELECT g, repeat('z', 500) FROM generate_series(1, 20000) g;
                 SELECT pg_switch_wal(); CHECKPOINT;",
                )
                .ok()?;
            (slot_field(h, "inv_slot", "wal_status") == "lost").then_some(())
        },
    );
    let run = harness::run_expecting(&args, 2);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("invalidated (wal_status = lost)") && stderr.contains("drop it"),
        "{stderr}"
    );
    cluster.stop().unwrap();
}

/// `walwatch slots` lists the slot with its retained WAL; `slots drop` refuses an active slot
/// without --force, and drops it with --force.
#[test]
fn slots_lists_and_drops() {
    let cluster = support::cluster();
    let t = support::unique_name("slots");
    let slot = support::unique_name("lslot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    harness::create_slot(&slot, &t);
    let admin = dsn();
    let list = harness::run_expecting(&["slots", "--dsn", &admin, "--format", "json"], 0);
    let all: Value = serde_json::from_slice(&list.stdout).unwrap();
    let rows = all["slots"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["name"] == slot.as_str())
        .unwrap_or_else(|| panic!("{slot} not listed: {rows:?}"));
    assert_eq!(row["plugin"], "pgoutput");
    assert_eq!(row["kind"], "logical");
    assert!(row["retained_bytes"].as_i64().is_some(), "{row}");
    // Its publications, in use.
    for name in [
        format!("walwatch_{slot}"),
        format!("walwatch_{slot}_noident"),
    ] {
        let p = all["publications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} not listed: {all}"));
        assert_eq!(
            (&p["slot"], &p["slot_exists"], &p["orphan"]),
            (
                &Value::from(slot.as_str()),
                &Value::from(true),
                &Value::from(false)
            ),
            "{p}"
        );
    }
    let table = harness::run_expecting(&["slots", "--dsn", &admin], 0);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("SLOT") && text.contains(&slot), "{text}");

    // Active: refused without --force.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("active.log");
    let dsn = dsn();
    let mut child = spawn_logged(
        &[
            "--dsn", &dsn, "--slot", &slot, "--tables", &t, "--format", "json",
        ],
        &log,
    );
    wait_active(cluster, &slot);
    let refused = harness::run_expecting(&["slots", "drop", &slot, "--dsn", &admin], 2);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("in use") && stderr.contains("--force"),
        "{stderr}"
    );
    harness::run_expecting(&["slots", "drop", &slot, "--dsn", &admin, "--force"], 0);
    assert_eq!(slot_field(cluster, &slot, "slot_name"), "");
    assert_eq!(
        sql(&format!(
            "SELECT count(*) FROM pg_publication \
             WHERE pubname IN ('walwatch_{slot}', 'walwatch_{slot}_noident')"
        )),
        "0",
        "walwatch's publications for the slot go with it"
    );
    let _ = child.kill();
    let _ = child.wait();
    let missing = harness::run_expecting(&["slots", "drop", &slot, "--dsn", &admin], 2);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no replication slot named"));
    drop_slot(&slot);
}

/// A slot moved past what walwatch confirmed while it was reconnecting (here with
/// `pg_replication_slot_advance`, the moment its walsender is gone): a named error, not a
/// silent jump over the skipped changes.
#[test]
fn a_slot_moved_while_reconnecting_is_a_named_error() {
    let cluster = support::cluster();
    let t = support::unique_name("moved");
    let slot = support::unique_name("mslot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let (mut child, _out, log, _dir) = spawn_into_file(&t, &slot, &[]);
    // Terminate the walsender, write, and advance the slot as soon as it is free: walwatch's
    // first reconnect attempt comes at least 100 ms later.
    cluster
        .psql(
            "walwatch",
            &format!(
                "DO $$
                 DECLARE pid int;
                 BEGIN
                   SELECT active_pid INTO pid FROM pg_replication_slots WHERE slot_name = '{slot}';
                   PERFORM pg_terminate_backend(pid);
                   PERFORM pg_logical_emit_message(false, 'test', 'move past this');
                   -- The advance stops at the flushed WAL: flush past the message.
                   PERFORM pg_switch_wal();
                   FOR i IN 1..5000 LOOP
                     BEGIN
                       PERFORM pg_replication_slot_advance('{slot}', pg_current_wal_lsn());
                       RETURN;
                     EXCEPTION WHEN object_in_use THEN PERFORM pg_sleep(0.001);
                     END;
                   END LOOP;
                   RAISE 'the slot stayed in use';
                 END $$;"
            ),
        )
        .unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(30), &log);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("slot `{slot}` was moved to"))
            && stderr.contains("changes in between were skipped"),
        "{stderr}"
    );
    drop_slot(&slot);
}

/// A slot that holds back more WAL than --warn-retained-wal is reported.
#[test]
fn retained_wal_above_the_threshold_is_a_warning() {
    let cluster = support::cluster();
    let t = support::unique_name("retained");
    let slot = support::unique_name("rslot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    harness::create_slot(&slot, &t);
    // A transaction left open from before the WAL below: the slot's restart_lsn cannot pass
    // its start however fast walwatch confirms, so the retained WAL stays above the threshold
    // whenever walwatch looks (it looks 1 s after start, then every 30 s).
    let rt = tokio_rt();
    let open = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&dsn(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("BEGIN; INSERT INTO {t} VALUES (0);"))
            .await
            .unwrap();
        client
    });
    sql(&format!(
        "INSERT INTO {t} SELECT generate_series(1, 20000);"
    ));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("retained.log");
    let dsn = dsn();
    let _child = spawn_logged(
        &[
            "--dsn",
            &dsn,
            "--slot",
            &slot,
            "--tables",
            &t,
            "--format",
            "json",
            "--warn-retained-wal",
            "64kB",
        ],
        &log,
    );
    wait_until("the retained-WAL warning", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains(&format!("slot {slot} holds back"))
            .then_some(())
    });
    let _ = cluster;
    drop(_child);
    drop(open);
    drop(rt);
    drop_slot(&slot);
}

/// Standard output with a permanent slot is not durable, and walwatch says so; a file whose
/// last commit is beyond the server's WAL comes from another server and is refused.
#[test]
fn stdout_with_a_slot_warns_and_a_file_from_another_server_is_refused() {
    let t = support::unique_name("foreign");
    let slot = support::unique_name("fslot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dsn = dsn();
    let run = harness::run_expecting(
        &[
            "--dsn", &dsn, "--slot", &slot, "--tables", &t, "--endpos", "now", "--format", "json",
        ],
        0,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("standard output is not durable") && stderr.contains("--output"),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("foreign.jsonl");
    std::fs::write(
        &out,
        concat!(
            r#"{"type":"wal","op":"INSERT","schema":"public","table":"x","lsn":"FF/10","#,
            r#""commit_lsn":"FF/20","xid":7,"ts":"2026-11-22T03:22:01.000000Z","data":{"id":1},"#,
            r#""old":null,"key":{"id":1},"unchanged":[]}"#,
            "\n"
        ),
    )
    .unwrap();
    let run = harness::run_expecting(
        &[
            "--dsn",
            &dsn,
            "--slot",
            &slot,
            "--tables",
            &t,
            "--endpos",
            "now",
            "--output",
            out.to_str().unwrap(),
        ],
        2,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("holds changes up to commit FF/20, beyond this server's WAL position"),
        "{stderr}"
    );
    drop_slot(&slot);
}
