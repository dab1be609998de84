//! What real schemas and workloads do to walwatch, against the real server: large transactions
//! streamed by the server while in progress, types dropped before walwatch reads their
//! changes, tables without a replica identity, orphaned publications.
//!
//! Each test works in a schema of its own, owned by a role of its own. A "streaming" role has
//! `logical_decoding_work_mem = 64kB` (ALTER ROLE ... SET applies to the walsender too), so the
//! server streams any transaction past 64 kB before it commits (protocol v2+); tests that rely
//! on that check `pg_stat_replication_slots.stream_txns`, so the streamed path is certain.

mod harness;
mod support;

use serde_json::{Value, json};

use harness::{changes, parse_jsonl, run_expecting};
use support::unique_name;
use walwatch::scratch::TEST_PASSWORD;

/// A role owning a schema of the same name, and the DSN that logs in as it.
struct Owner {
    name: String,
    dsn: String,
}

impl Owner {
    /// `streaming`: the walsender of this role streams transactions past 64 kB.
    fn new(prefix: &str, streaming: bool) -> Owner {
        let name = unique_name(prefix);
        let setting = if streaming {
            format!("ALTER ROLE {name} SET logical_decoding_work_mem = '64kB';")
        } else {
            String::new()
        };
        admin(&format!(
            "CREATE ROLE {name} LOGIN REPLICATION PASSWORD '{TEST_PASSWORD}';
             {setting}
             -- GRANTs on the database from tests running at once update one pg_database
             -- row: serialised, or one fails with tuple concurrently updated.
             BEGIN; SELECT pg_advisory_xact_lock(1313);
             GRANT CREATE ON DATABASE walwatch TO {name};
             COMMIT;
             CREATE SCHEMA {name} AUTHORIZATION {name};
             ALTER ROLE {name} SET search_path = {name};"
        ));
        let dsn = support::cluster().dsn_for(&name, "walwatch");
        Owner { name, dsn }
    }

    /// Runs SQL as this role, in its schema.
    fn sql(&self, statements: &str) -> String {
        admin(&format!(
            "SET ROLE {0}; SET search_path = {0};\n{statements}",
            self.name
        ))
    }

    /// walwatch as this role; panics unless it exits with `code`.
    fn walwatch(&self, args: &[&str], code: i32) -> std::process::Output {
        let mut all = vec!["--dsn", self.dsn.as_str()];
        all.extend_from_slice(args);
        run_expecting(&all, code)
    }

    /// Transactions the server streamed to `slot` while in progress.
    fn streamed_txns(&self, slot: &str) -> i64 {
        admin(&format!(
            "SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots \
             WHERE slot_name = '{slot}'"
        ))
        .parse()
        .unwrap()
    }

    fn drop_slot(&self, slot: &str) {
        admin(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = '{slot}';
             DROP PUBLICATION IF EXISTS walwatch_{slot};
             DROP PUBLICATION IF EXISTS walwatch_{slot}_noident;"
        ));
    }
}

fn admin(statements: &str) -> String {
    support::cluster()
        .psql("walwatch", statements)
        .unwrap_or_else(|e| panic!("SQL failed: {e}\n--- SQL ---\n{statements}"))
}

/// The JSON events of a drain of `slot` to the current WAL position.
fn drain(owner: &Owner, slot: &str, tables: &str) -> Vec<Value> {
    let out = owner.walwatch(
        &[
            "--slot", slot, "--tables", tables, "--endpos", "now", "--format", "json",
        ],
        0,
    );
    parse_jsonl(&out.stdout)
}

/// Issue 13's first defect: a relation the server described inside a streamed transaction is
/// never described again after that transaction commits, so walwatch must keep it. Before the
/// fix the UPDATE failed ("refers to relation OID …, which no Relation message has described"),
/// on every restart: the slot was stuck for good.
#[test]
fn a_table_first_written_by_a_streamed_transaction_stays_decodable() {
    let owner = Owner::new("strm", true);
    let slot = unique_name("strm_slot");
    owner.sql("CREATE TABLE t (id int PRIMARY KEY, v text);");
    owner.walwatch(&["--slot", &slot, "--tables", "t", "--endpos", "now"], 0);
    owner.sql(
        "INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 200) g;
         UPDATE t SET v = 'y' WHERE id = 1;
         DELETE FROM t WHERE id = 2;",
    );
    let events = drain(&owner, &slot, "t");
    assert!(
        owner.streamed_txns(&slot) >= 1,
        "the server did not stream the 200-row transaction, so this test proves nothing"
    );
    let rows = changes(&events);
    let ops: Vec<&str> = rows.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops.len(),
        202,
        "expected 200 INSERTs, an UPDATE and a DELETE: {ops:?}"
    );
    assert!(ops[..200].iter().all(|op| *op == "INSERT"), "{ops:?}");
    assert_eq!(rows[200]["op"], "UPDATE");
    assert_eq!(rows[200]["data"], json!({"id": 1, "v": "y"}));
    assert_eq!(rows[201]["op"], "DELETE");
    assert_eq!(rows[201]["key"], json!({"id": 2}));

    // A restart on the same slot (the server re-sends everything after the confirmed position)
    // works too: nothing is left that a new walsender would not describe again.
    owner.sql("UPDATE t SET v = 'z' WHERE id = 3;");
    let events = drain(&owner, &slot, "t");
    let rows = changes(&events);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["data"], json!({"id": 3, "v": "z"}));
    owner.drop_slot(&slot);
}

/// Issue 13's third defect: watching must never make the application's statements fail.
/// PostgreSQL refuses UPDATE and DELETE on a table without a replica identity while a
/// publication publishes them; walwatch publishes such a table for INSERT and TRUNCATE only,
/// says so once, and sees everything of the tables that have one.
#[test]
fn tables_without_a_replica_identity_keep_working_while_watched() {
    let owner = Owner::new("noid", false);
    let slot = unique_name("noid_slot");
    owner.sql(
        "CREATE TABLE keyed (id int PRIMARY KEY, v text);
         CREATE TABLE nokey (v text);
         CREATE TABLE nothing (id int PRIMARY KEY, v text);
         ALTER TABLE nothing REPLICA IDENTITY NOTHING;
         CREATE TABLE full_row (v text);
         ALTER TABLE full_row REPLICA IDENTITY FULL;
         INSERT INTO nokey VALUES ('before'); INSERT INTO nothing VALUES (1, 'before');",
    );
    let created = owner.walwatch(
        &[
            "--slot",
            &slot,
            "--tables",
            "keyed,nokey,nothing,full_row",
            "--endpos",
            "now",
        ],
        0,
    );
    let stderr = String::from_utf8_lossy(&created.stderr);
    for table in ["nokey", "nothing"] {
        assert!(
            stderr.contains(&format!(
                "{}.{table}: walwatch sees its INSERTs and TRUNCATEs",
                owner.name
            )),
            "no warning for {table}:\n{stderr}"
        );
    }
    assert!(stderr.contains("has no primary key"), "{stderr}");
    assert!(stderr.contains("is REPLICA IDENTITY NOTHING"), "{stderr}");
    assert!(!stderr.contains("keyed: walwatch sees"), "{stderr}");
    assert!(!stderr.contains("full_row: walwatch sees"), "{stderr}");

    // The application's statements: every one must succeed while the slot exists.
    owner.sql(
        "INSERT INTO keyed VALUES (1, 'a'); UPDATE keyed SET v = 'b'; DELETE FROM keyed;
         INSERT INTO nokey VALUES ('x'); UPDATE nokey SET v = 'y'; DELETE FROM nokey;
         UPDATE nothing SET v = 'z'; DELETE FROM nothing; INSERT INTO nothing VALUES (2, 'n');
         INSERT INTO full_row VALUES ('f'); UPDATE full_row SET v = 'g'; DELETE FROM full_row;
         TRUNCATE nokey;",
    );
    let events = drain(&owner, &slot, "keyed,nokey,nothing,full_row");
    let seen: Vec<String> = changes(&events)
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["op"].as_str().unwrap(),
                e["table"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "INSERT keyed",
            "UPDATE keyed",
            "DELETE keyed",
            "INSERT nokey",
            "INSERT nothing",
            "INSERT full_row",
            "UPDATE full_row",
            "DELETE full_row",
            "TRUNCATE nokey",
        ]
    );
    owner.drop_slot(&slot);
}

/// Without --tables (every table, as a superuser), a table created after walwatch started and
/// given no key must not turn into failing UPDATEs either; its INSERTs are still seen.
#[test]
fn a_table_created_later_without_a_key_keeps_working_while_everything_is_watched() {
    let owner = Owner::new("noid_all", false);
    let slot = unique_name("noid_all_slot");
    let superuser = support::cluster().admin_dsn("walwatch");
    run_expecting(
        &["--dsn", &superuser, "--slot", &slot, "--endpos", "now"],
        0,
    );
    owner.sql(
        "CREATE TABLE later (v text);
         INSERT INTO later VALUES ('x'); UPDATE later SET v = 'y'; DELETE FROM later;",
    );
    let out = run_expecting(
        &[
            "--dsn", &superuser, "--slot", &slot, "--endpos", "now", "--format", "json",
        ],
        0,
    );
    let events = parse_jsonl(&out.stdout);
    let seen: Vec<String> = changes(&events)
        .iter()
        .filter(|e| e["schema"] == owner.name.as_str())
        .map(|e| {
            format!(
                "{} {}",
                e["op"].as_str().unwrap(),
                e["table"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(seen, ["INSERT later"]);
    owner.drop_slot(&slot);
}

/// Issue 13's second defect: a value's JSON type must not depend on when walwatch reads it.
/// A permanent slot remembers every user type walwatch resolved on it (in its publication's
/// record), so a change written before the type is dropped renders as it did; a type walwatch
/// never remembered renders as text, with a warning naming the column.
#[test]
fn a_dropped_type_renders_as_it_did_and_an_unknown_one_is_named() {
    let owner = Owner::new("types", false);
    let seen = unique_name("types_seen");
    let unseen = unique_name("types_unseen");
    let given = unique_name("types_pub");
    owner.sql(
        "CREATE DOMAIN dd AS bigint; CREATE TYPE ee AS ENUM ('b', 'c');
         CREATE TABLE td (id int PRIMARY KEY, x dd, y ee[]);",
    );
    owner.sql(&format!("CREATE PUBLICATION {given} FOR TABLE td;"));
    // `seen`: a slot of walwatch's own, which remembers the types it resolves. `unseen`: a
    // slot on a publication of the user's, where walwatch keeps no record.
    owner.walwatch(&["--slot", &seen, "--tables", "td", "--endpos", "now"], 0);
    owner.walwatch(
        &[
            "--slot",
            &unseen,
            "--publication",
            &given,
            "--tables",
            "td",
            "--endpos",
            "now",
        ],
        0,
    );
    // The change, then its types gone: the table's columns change type, the types are dropped.
    owner.sql(
        "INSERT INTO td VALUES (1, 3, '{b,c}');
         ALTER TABLE td ALTER x TYPE bigint, ALTER y TYPE text[];
         DROP DOMAIN dd; DROP TYPE ee;
         INSERT INTO td VALUES (2, 4, '{d}');",
    );
    let rows: Vec<Value> = changes(&drain(&owner, &seen, "td"))
        .into_iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(
        rows,
        [
            json!({"id": 1, "x": 3, "y": ["b", "c"]}),
            json!({"id": 2, "x": 4, "y": ["d"]})
        ],
        "the remembered types must render as they did"
    );

    let out = owner.walwatch(
        &[
            "--slot",
            &unseen,
            "--publication",
            &given,
            "--tables",
            "td",
            "--endpos",
            "now",
            "--format",
            "json",
        ],
        0,
    );
    let rows: Vec<Value> = changes(&parse_jsonl(&out.stdout))
        .into_iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(
        rows,
        [
            json!({"id": 1, "x": "3", "y": "{b,c}"}),
            json!({"id": 2, "x": 4, "y": ["d"]})
        ]
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for column in ["td.x", "td.y"] {
        assert!(
            stderr.contains(&format!("column {}.{column} has type", owner.name))
                && stderr.contains("never resolved on this slot"),
            "no warning for {column}:\n{stderr}"
        );
    }
    owner.drop_slot(&seen);
    owner.drop_slot(&unseen);
    admin(&format!("DROP PUBLICATION {given};"));
}

/// One of a slot's two publications dropped by hand (a script that knew only the main one's
/// name, say). Neither can be made again for the slot: pgoutput reads publications as they
/// were when each change was written, so a publication made now would fail (before 18) or be
/// skipped for the WAL from before it. The main one gone is a named error, the slot left as
/// it was; the companion gone leaves its keyless table out (not moved into the main
/// publication, which would make its UPDATEs fail), and walwatch says so.
#[test]
fn a_publication_dropped_by_hand_is_named() {
    let owner = Owner::new("repub", false);
    let slot = unique_name("repub_slot");
    let tables = ["--slot", &slot, "--tables", "t,n", "--endpos", "now"];
    let published = || {
        admin(&format!(
            "SELECT string_agg(pubname || ':' || tablename, ',' ORDER BY pubname) \
             FROM pg_publication_tables WHERE pubname LIKE 'walwatch_{slot}%'"
        ))
    };
    owner.sql("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE n (v text);");
    owner.walwatch(&tables, 0);
    assert_eq!(
        published(),
        format!("walwatch_{slot}:t,walwatch_{slot}_noident:n")
    );
    let seen = |events: &[Value]| -> Vec<String> {
        changes(events)
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["op"].as_str().unwrap(),
                    e["table"].as_str().unwrap()
                )
            })
            .collect()
    };

    admin(&format!("DROP PUBLICATION walwatch_{slot}_noident;"));
    owner.sql("INSERT INTO n VALUES ('x'); INSERT INTO t VALUES (1);");
    let run = owner.walwatch(&tables, 0);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!(
            "{}.n: walwatch does not see it at all",
            owner.name
        )) && stderr.contains(&format!("walwatch slots drop {slot}")),
        "{stderr}"
    );
    assert_eq!(published(), format!("walwatch_{slot}:t"));
    // The application's UPDATE of the keyless table still works.
    owner.sql("INSERT INTO t VALUES (2); UPDATE n SET v = 'y';");
    assert_eq!(seen(&drain(&owner, &slot, "t,n")), ["INSERT t"]);

    admin(&format!("DROP PUBLICATION walwatch_{slot};"));
    let before = admin(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    let run = owner.walwatch(&tables, 2);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains(&format!(
            "slot `{slot}` exists, but walwatch's publication for it, `walwatch_{slot}`, does not"
        )) && stderr.contains(&format!("walwatch slots drop {slot}")),
        "{stderr}"
    );
    assert_eq!(published(), "", "no publication is made for the slot");
    let after = admin(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ));
    assert_eq!(before, after, "the slot is left where it was");
    owner.drop_slot(&slot);
}

/// A temporary run killed with SIGKILL cannot drop its publication. The next walwatch start on
/// the database does, because the publication's record names a slot and a process that are
/// both gone; the publication of a live run in another process is untouched. `walwatch slots`
/// flags the orphan, and `walwatch slots prune` drops it.
#[test]
fn a_killed_temporary_run_leaves_no_publication_behind() {
    let owner = Owner::new("orph", false);
    owner.sql("CREATE TABLE t (id int PRIMARY KEY);");
    let dir = tempfile::tempdir().unwrap();
    let live = |name: &str| {
        let log = dir.path().join(name);
        let proc = harness::spawn_logged(&["--dsn", &owner.dsn, "--tables", "t"], &log);
        // A temporary run's slot and publication are both `walwatch_<pid>_<hex>`.
        let prefix = format!("walwatch_{}_", proc.id());
        let slot = support::wait_until_or(
            "the temporary run's slot to be in use",
            std::time::Duration::from_secs(30),
            || std::fs::read_to_string(&log).unwrap_or_default(),
            || {
                let name = admin(&format!(
                    "SELECT slot_name FROM pg_replication_slots \
                     WHERE slot_name LIKE '{prefix}%' AND active AND confirmed_flush_lsn IS NOT NULL"
                ));
                (!name.is_empty()).then_some(name)
            },
        );
        (proc, slot)
    };
    let publication_exists = |name: &str| {
        admin(&format!(
            "SELECT count(*) FROM pg_publication WHERE pubname = '{name}'"
        )) == "1"
    };
    let listed = || -> Vec<Value> {
        let out = owner.walwatch(&["slots", "--format", "json"], 0);
        let all: Value = serde_json::from_slice(&out.stdout).unwrap();
        all["publications"].as_array().unwrap().clone()
    };
    let status = |name: &str| -> Value {
        listed()
            .into_iter()
            .find(|p| p["name"] == name)
            .unwrap_or(Value::Null)
    };
    // The server drops a temporary slot, and ends the run's metadata session, once it notices
    // the connections are gone: then the publication is an orphan.
    let kill = |mut proc: harness::Proc, slot: &str| {
        proc.kill().unwrap();
        proc.wait().unwrap();
        support::wait_until_or(
            &format!("{slot} to be listed as an orphan"),
            std::time::Duration::from_secs(30),
            || format!("{:?}", listed()),
            || (status(slot)["orphan"] == true).then_some(()),
        );
    };

    let (a, a_slot) = live("a.log");
    let (b, b_slot) = live("b.log");
    assert!(publication_exists(&a_slot) && publication_exists(&b_slot));
    assert_eq!(
        status(&a_slot)["orphan"],
        false,
        "a live run's: {:?}",
        listed()
    );
    kill(a, &a_slot);
    assert_eq!(status(&a_slot)["slot_exists"], false);
    assert_eq!(status(&b_slot)["orphan"], false, "{:?}", listed());
    let table = owner.walwatch(&["slots"], 0);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&a_slot) && l.contains("orphan")),
        "{text}"
    );

    // The next start removes it, and only it.
    let other = unique_name("orph_next");
    let next = owner.walwatch(&["--slot", &other, "--tables", "t", "--endpos", "now"], 0);
    owner.drop_slot(&other);
    let stderr = String::from_utf8_lossy(&next.stderr);
    assert!(
        stderr.contains(&format!(
            "dropped publication {a_slot}: the temporary walwatch run that made it is gone"
        )),
        "{stderr}"
    );
    assert!(!publication_exists(&a_slot), "the orphan is gone");
    assert!(publication_exists(&b_slot), "the live run's is untouched");
    assert!(
        !stderr.contains(&format!("dropped publication {b_slot}")),
        "{stderr}"
    );

    // `walwatch slots prune` does the same on demand.
    kill(b, &b_slot);
    let pruned = owner.walwatch(&["slots", "prune"], 0);
    let stderr = String::from_utf8_lossy(&pruned.stderr);
    assert!(
        stderr.contains(&format!("dropped orphaned publication {b_slot}")),
        "{stderr}"
    );
    assert!(!publication_exists(&b_slot));
}

/// One line per row event: `OP table[<partition_of] data`, for comparing whole streams.
fn rows_with_partitions(events: &[Value]) -> Vec<String> {
    changes(events)
        .iter()
        .map(|e| {
            let of = match &e["partition_of"] {
                Value::Null => String::new(),
                p => format!("<{}", p["table"].as_str().unwrap()),
            };
            format!(
                "{} {}{of} {}",
                e["op"].as_str().unwrap(),
                e["table"].as_str().unwrap(),
                if e["op"] == "DELETE" {
                    &e["key"]
                } else {
                    &e["data"]
                }
            )
        })
        .collect()
}

/// Issue 13: a partitioned table watched by its name captures every change of every partition
/// (a default partition, a sub-partitioned one, one attached after start-up), reported under
/// its own name by default and under the partitions' names with `--partitions leaf`; a single
/// partition can be watched by its own name. A partition detached before walwatch reads its
/// earlier changes keeps them: the publication of when they were written decides.
#[test]
fn partitioned_tables_are_watched_whole_by_their_name() {
    partitioned_tables(false);
}

/// The same with the first transaction streamed by the server while in progress (its
/// Relation messages inside the stream).
#[test]
fn partitioned_tables_are_watched_whole_by_their_name_when_streamed() {
    partitioned_tables(true);
}

fn partitioned_tables(streaming: bool) {
    let owner = Owner::new("part", streaming);
    owner.sql(
        "CREATE TABLE meas (region text NOT NULL, id int NOT NULL, v text,
                            PRIMARY KEY (region, id)) PARTITION BY LIST (region);
         CREATE TABLE meas_eu PARTITION OF meas FOR VALUES IN ('eu');
         CREATE TABLE meas_us PARTITION OF meas FOR VALUES IN ('us') PARTITION BY RANGE (id);
         CREATE TABLE meas_us_lo PARTITION OF meas_us FOR VALUES FROM (MINVALUE) TO (100);
         CREATE TABLE meas_us_hi PARTITION OF meas_us FOR VALUES FROM (100) TO (MAXVALUE);
         CREATE TABLE meas_other PARTITION OF meas DEFAULT;
         CREATE TABLE meas_apac (LIKE meas INCLUDING ALL);",
    );
    let root = unique_name("part_root");
    let leaf = unique_name("part_leaf");
    let one = unique_name("part_one");
    for (slot, args) in [
        (&root, vec!["--tables", "meas"]),
        (&leaf, vec!["--tables", "meas", "--partitions", "leaf"]),
        (&one, vec!["--tables", "meas_eu"]),
    ] {
        let mut all = vec!["--slot", slot.as_str(), "--endpos", "now"];
        all.extend(args);
        owner.walwatch(&all, 0);
    }
    // One transaction past 64 kB: streamed for the streaming role.
    owner.sql(
        "BEGIN;
         INSERT INTO meas SELECT 'us', g, repeat('x', 1000) FROM generate_series(1000, 1199) g;
         INSERT INTO meas VALUES ('eu', 1, 'a'), ('us', 5, 'b'), ('us', 150, 'c'), ('xx', 1, 'd');
         COMMIT;
         UPDATE meas SET v = 'e' WHERE region = 'eu';
         DELETE FROM meas WHERE region = 'us' AND id = 5;
         ALTER TABLE meas ATTACH PARTITION meas_apac FOR VALUES IN ('apac');
         INSERT INTO meas VALUES ('apac', 1, 'f');
         ALTER TABLE meas DETACH PARTITION meas_eu;
         INSERT INTO meas_eu VALUES ('eu', 2, 'g');
         INSERT INTO meas VALUES ('us', 99, 'h');",
    );
    let drain_with = |slot: &str, extra: &[&str]| {
        let mut args = vec!["--slot", slot, "--endpos", "now", "--format", "json"];
        args.extend_from_slice(extra);
        let out = owner.walwatch(&args, 0);
        for e in changes(&parse_jsonl(&out.stdout)) {
            harness::assert_valid(e);
        }
        rows_with_partitions(&parse_jsonl(&out.stdout))
    };
    let row = |r: &str, id: i64, v: &str| json!({"region": r, "id": id, "v": v}).to_string();
    let key = |r: &str, id: i64| json!({"region": r, "id": id}).to_string();
    let x = "x".repeat(1000);
    let bulk = |table: &str| -> Vec<String> {
        (1000..1200)
            .map(|id| format!("INSERT {table} {}", row("us", id, &x)))
            .collect()
    };
    let then = |bulk: Vec<String>, rest: Vec<String>| [bulk, rest].concat();
    let root_rows = drain_with(&root, &["--tables", "meas"]);
    let leaf_rows = drain_with(&leaf, &["--tables", "meas", "--partitions", "leaf"]);
    if streaming {
        for slot in [&root, &leaf] {
            assert!(
                owner.streamed_txns(slot) >= 1,
                "the server did not stream the bulk transaction to {slot}: this test proves nothing"
            );
        }
    }
    assert_eq!(
        root_rows,
        then(
            bulk("meas"),
            vec![
                format!("INSERT meas {}", row("eu", 1, "a")),
                format!("INSERT meas {}", row("us", 5, "b")),
                format!("INSERT meas {}", row("us", 150, "c")),
                format!("INSERT meas {}", row("xx", 1, "d")),
                format!("UPDATE meas {}", row("eu", 1, "e")),
                format!("DELETE meas {}", key("us", 5)),
                format!("INSERT meas {}", row("apac", 1, "f")),
                format!("INSERT meas {}", row("us", 99, "h")),
            ]
        ),
        "--partitions root (the default): under the partitioned table's name"
    );
    assert_eq!(
        leaf_rows,
        then(
            bulk("meas_us_hi<meas"),
            vec![
                // meas_eu was detached before this drain: no longer a partition in today's
                // catalog, so no partition_of, but its changes from before are kept.
                format!("INSERT meas_eu {}", row("eu", 1, "a")),
                format!("INSERT meas_us_lo<meas {}", row("us", 5, "b")),
                format!("INSERT meas_us_hi<meas {}", row("us", 150, "c")),
                format!("INSERT meas_other<meas {}", row("xx", 1, "d")),
                format!("UPDATE meas_eu {}", row("eu", 1, "e")),
                format!("DELETE meas_us_lo<meas {}", key("us", 5)),
                format!("INSERT meas_apac<meas {}", row("apac", 1, "f")),
                format!("INSERT meas_us_lo<meas {}", row("us", 99, "h")),
            ]
        ),
        "--partitions leaf: under each partition's name, with the watched table"
    );
    assert_eq!(
        drain_with(&one, &["--tables", "meas_eu"]),
        [
            format!("INSERT meas_eu {}", row("eu", 1, "a")),
            format!("UPDATE meas_eu {}", row("eu", 1, "e")),
            format!("INSERT meas_eu {}", row("eu", 2, "g")),
        ],
        "one partition by its own name, before and after it was detached"
    );
    for slot in [&root, &leaf, &one] {
        owner.drop_slot(slot);
    }
}

/// `--partitions leaf` on a live stream: partition_of is read when the server describes the
/// partition, so it is there for every partition, including sub-partitions.
#[test]
fn partition_of_names_the_watched_partitioned_table_live() {
    let owner = Owner::new("partlive", false);
    owner.sql(
        "CREATE TABLE m (k int PRIMARY KEY) PARTITION BY RANGE (k);
         CREATE TABLE m_a PARTITION OF m FOR VALUES FROM (0) TO (10) PARTITION BY RANGE (k);
         CREATE TABLE m_a_1 PARTITION OF m_a FOR VALUES FROM (0) TO (5);
         CREATE TABLE m_a_2 PARTITION OF m_a FOR VALUES FROM (5) TO (10);",
    );
    let slot = unique_name("partlive");
    let args = [
        "--slot",
        &slot,
        "--tables",
        "m",
        "--partitions",
        "leaf",
        "--endpos",
        "now",
    ];
    owner.walwatch(&args, 0);
    owner.sql("INSERT INTO m VALUES (1), (7);");
    let out = owner.walwatch(&[&args[..], &["--format", "json"]].concat(), 0);
    let events = parse_jsonl(&out.stdout);
    let rows: Vec<Value> = changes(&events)
        .iter()
        .map(|e| json!([e["table"], e["partition_of"]]))
        .collect();
    let of = json!({"schema": owner.name, "table": "m"});
    assert_eq!(rows, [json!(["m_a_1", of]), json!(["m_a_2", of])]);
    // The expression language sees it too.
    owner.sql("INSERT INTO m VALUES (2);");
    let out = owner.walwatch(
        &[
            &args[..],
            &[
                "--format",
                "json",
                "--where",
                r#"partition_of.table == "m""#,
            ],
        ]
        .concat(),
        0,
    );
    assert_eq!(changes(&parse_jsonl(&out.stdout)).len(), 1);
    owner.drop_slot(&slot);
}

/// Issue 13: `key` is the primary key whatever the replica identity (REPLICA IDENTITY FULL
/// flags every column, USING INDEX that index's), and the identity's columns without one.
#[test]
fn key_is_the_primary_key_whatever_the_replica_identity() {
    let owner = Owner::new("pkey", false);
    owner.sql(
        "CREATE TABLE f (id int PRIMARY KEY, v text);
         ALTER TABLE f REPLICA IDENTITY FULL;
         CREATE TABLE ix (id int PRIMARY KEY, k int NOT NULL, v text);
         CREATE UNIQUE INDEX ix_k ON ix (k);
         ALTER TABLE ix REPLICA IDENTITY USING INDEX ix_k;
         CREATE TABLE nopk (a int, v text);
         ALTER TABLE nopk REPLICA IDENTITY FULL;",
    );
    let slot = unique_name("pkey");
    owner.walwatch(
        &["--slot", &slot, "--tables", "f,ix,nopk", "--endpos", "now"],
        0,
    );
    owner.sql(
        "INSERT INTO f VALUES (1, 'a'); UPDATE f SET v = 'b'; DELETE FROM f;
         INSERT INTO ix VALUES (1, 10, 'a'); UPDATE ix SET v = 'b'; DELETE FROM ix;
         INSERT INTO nopk VALUES (1, 'a'); DELETE FROM nopk;",
    );
    let keys: Vec<String> = changes(&drain(&owner, &slot, "f,ix,nopk"))
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["op"].as_str().unwrap(),
                e["table"].as_str().unwrap(),
                e["key"]
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            r#"INSERT f {"id":1}"#,
            r#"UPDATE f {"id":1}"#,
            r#"DELETE f {"id":1}"#,
            r#"INSERT ix {"id":1}"#,
            r#"UPDATE ix {"id":1}"#,
            // The old tuple of a DELETE under USING INDEX holds that index's columns only.
            r#"DELETE ix {"k":10}"#,
            r#"INSERT nopk {"a":1,"v":"a"}"#,
            r#"DELETE nopk {"a":1,"v":"a"}"#,
        ]
    );
    owner.drop_slot(&slot);
}

/// Issue 13: stored generated columns. From PostgreSQL 18 walwatch's publications publish them
/// (publish_generated_columns = stored) and events carry them; before 18 pgoutput never sends
/// generated columns, and the README says so. Runs on every server of the matrix: each
/// checks its own side.
#[test]
fn stored_generated_columns_are_in_events_where_the_server_can_send_them() {
    let owner = Owner::new("gen", false);
    owner.sql(
        "CREATE TABLE g (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED);",
    );
    let slot = unique_name("gen");
    owner.walwatch(&["--slot", &slot, "--tables", "g", "--endpos", "now"], 0);
    owner.sql("INSERT INTO g (id, a) VALUES (1, 21); UPDATE g SET a = 5;");
    let version: u32 = admin("SHOW server_version_num").parse().unwrap();
    let rows: Vec<Value> = changes(&drain(&owner, &slot, "g"))
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    if version >= 180_000 {
        assert_eq!(
            rows,
            [
                json!({"id": 1, "a": 21, "twice": 42}),
                json!({"id": 1, "a": 5, "twice": 10})
            ]
        );
        let setting = admin(&format!(
            "SELECT pubgencols FROM pg_publication WHERE pubname = 'walwatch_{slot}'"
        ));
        assert_eq!(setting, "s");
    } else {
        assert_eq!(rows, [json!({"id": 1, "a": 21}), json!({"id": 1, "a": 5})]);
    }
    owner.drop_slot(&slot);
}

/// Issue 13, scope 4: a `--publication` of the user's that does not publish generated columns
/// (PostgreSQL 18's default, `publish_generated_columns = none`) is named in the log, with the
/// fix; before 18 there is nothing to say (no publication can publish them).
#[test]
fn a_given_publication_without_generated_columns_is_noted() {
    let owner = Owner::new("genp", false);
    let publication = format!("{}_pub", owner.name);
    owner.sql(&format!(
        "CREATE TABLE g (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED);
         CREATE PUBLICATION {publication} FOR TABLE g;"
    ));
    let slot = unique_name("genp");
    let out = owner.walwatch(
        &[
            "--slot",
            &slot,
            "--publication",
            &publication,
            "--tables",
            "g",
            "--endpos",
            "now",
        ],
        0,
    );
    owner.drop_slot(&slot);
    admin(&format!("DROP PUBLICATION {publication};"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let noted = stderr.contains(&format!(
        "publication {publication} does not publish generated columns"
    ));
    let version: u32 = admin("SHOW server_version_num").parse().unwrap();
    assert_eq!(
        noted,
        version >= 180_000,
        "server {version}, log:\n{stderr}"
    );
}

/// Issue 13's test schema, quoted names and awkward values: a mixed-case schema and table
/// with spaces, a column with a space, a 40-digit numeric, a domain over numeric, an enum, a
/// 2-D text array with quotes, NULL and braces, jsonb with escapes, a stored generated column
/// (in events from PostgreSQL 18). Every value of every event is checked, with the server
/// streaming the transaction and without.
#[test]
fn a_quoted_schema_with_awkward_values_is_captured_exactly() {
    awkward_values(false);
}

#[test]
fn a_quoted_schema_with_awkward_values_is_captured_exactly_when_streamed() {
    awkward_values(true);
}

fn awkward_values(streaming: bool) {
    let owner = Owner::new("awk", streaming);
    let schema = format!("Sales Dept {}", owner.name);
    // The owner's role needs CREATE on the database for a schema of its own (granted).
    owner.sql(&format!(
        r#"CREATE SCHEMA "{schema}";
         CREATE DOMAIN "{schema}".amount AS numeric(12,2) CHECK (VALUE >= 0);
         CREATE TYPE "{schema}".status AS ENUM ('new', 'paid');
         CREATE TABLE "{schema}"."Order Items" (
             id int PRIMARY KEY,
             "unit price" numeric(40, 0),
             amount "{schema}".amount,
             status "{schema}".status,
             tags text[][],
             doc jsonb,
             qty int,
             twice int GENERATED ALWAYS AS (qty * 2) STORED,
             pad text);"#
    ));
    let table = format!(r#""{schema}"."Order Items""#);
    let slot = unique_name("awk");
    owner.walwatch(&["--slot", &slot, "--tables", &table, "--endpos", "now"], 0);
    let pad = if streaming {
        "repeat('p', 1000)"
    } else {
        "'p'"
    };
    owner.sql(&format!(
        r#"BEGIN;
         INSERT INTO {table} (id, "unit price", amount, status, tags, doc, qty, pad)
             SELECT g, 1234567890123456789012345678901234567890, 12.5, 'paid',
                    ARRAY[['a"b', NULL], ['{{c}}', 'd,e']],
                    '{{"k": "line\nbreak \"q\" \\ \u00e9", "n": [1.5, null]}}', g, {pad}
             FROM generate_series(1, 200) g;
         UPDATE {table} SET status = 'new', amount = 0 WHERE id = 1;
         DELETE FROM {table} WHERE id = 2;
         COMMIT;"#
    ));
    let out = owner.walwatch(
        &[
            "--slot", &slot, "--tables", &table, "--endpos", "now", "--format", "json",
        ],
        0,
    );
    let events = parse_jsonl(&out.stdout);
    if streaming {
        assert!(
            owner.streamed_txns(&slot) >= 1,
            "the server did not stream the transaction: this test proves nothing"
        );
    }
    let version: u32 = admin("SHOW server_version_num").parse().unwrap();
    let rows = changes(&events);
    assert_eq!(rows.len(), 202, "200 INSERTs, an UPDATE, a DELETE");
    let expected_row = |id: i64, amount: &str, status: &str| {
        let mut row = json!({
            "id": id,
            "unit price": "1234567890123456789012345678901234567890",
            "amount": amount,
            "status": status,
            "tags": [["a\"b", null], ["{c}", "d,e"]],
            "doc": {"k": "line\nbreak \"q\" \\ é", "n": [1.5, null]},
            "qty": id,
        });
        if version >= 180_000 {
            row["twice"] = json!(id * 2);
        }
        row["pad"] = json!(if streaming {
            "p".repeat(1000)
        } else {
            "p".into()
        });
        row
    };
    for (i, e) in rows[..200].iter().enumerate() {
        harness::assert_valid(e);
        assert_eq!(e["op"], "INSERT");
        assert_eq!(e["schema"], schema.as_str());
        assert_eq!(e["table"], "Order Items");
        assert_eq!(
            e["data"],
            expected_row(i as i64 + 1, "12.50", "paid"),
            "row {i}"
        );
        assert_eq!(e["key"], json!({"id": i + 1}));
    }
    assert_eq!(rows[200]["op"], "UPDATE");
    assert_eq!(rows[200]["data"], expected_row(1, "0.00", "new"));
    assert_eq!(rows[201]["op"], "DELETE");
    assert_eq!(rows[201]["key"], json!({"id": 2}));
    owner.drop_slot(&slot);
}

/// Issue 13's golden recordings: the fixed workload of tests/golden/ (every mapped type, TOAST,
/// partitions with one attached and one detached mid-stream, a generated column, streamed
/// transactions committed and rolled back, a prepared one, a table without a replica identity,
/// messages, TRUNCATE) recorded raw on this server, then replayed offline: the replay writes
/// exactly what the live run wrote, byte for byte. With `WALWATCH_GOLDEN_WRITE=1` the recording
/// and its output become `tests/golden/pg<major>/` (that is how the checked-in ones are made).
#[test]
fn a_raw_recording_replays_to_exactly_the_live_output() {
    let owner = Owner::new("gold", true);
    owner.sql(include_str!("golden/schema.sql"));
    let slot = unique_name("gold");
    let tables = format!("{}.*", owner.name);
    owner.walwatch(
        &["--slot", &slot, "--tables", &tables, "--endpos", "now"],
        0,
    );
    owner.sql(&include_str!("golden/workload.sql").replace("{gid}", &slot));
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("recording.jsonl");
    let live = dir.path().join("expected.jsonl");
    let (raw_s, live_s) = (raw.to_str().unwrap(), live.to_str().unwrap());
    owner.walwatch(
        &[
            "record", "--slot", &slot, "--tables", &tables, "--endpos", "now", "--raw", raw_s,
            "--output", live_s,
        ],
        0,
    );
    owner.drop_slot(&slot);
    let (commits, aborts) = streamed_ends(&raw);
    assert!(
        commits >= 2 && aborts >= 1,
        "the recording holds {commits} Stream Commit and {aborts} Stream Abort messages, not \
         two and one: the streamed paths are not in it"
    );
    let live_bytes = std::fs::read(&live).unwrap();
    let replayed = run_expecting(&["replay", raw_s, "--format", "json"], 0).stdout;
    support::assert_same_lines("the replay of the live recording", &live_bytes, &replayed);
    check_golden_events(&parse_jsonl(&live_bytes), &owner.name);

    if std::env::var_os("WALWATCH_GOLDEN_WRITE").is_some_and(|v| v == "1") {
        let major = server_major();
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/golden/pg{major}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(&raw, out.join("recording.jsonl")).unwrap();
        std::fs::copy(&live, out.join("expected.jsonl")).unwrap();
        eprintln!("wrote {}", out.display());
    }
}

/// How many Stream Commit ('c') and Stream Abort ('A') pgoutput messages a raw recording holds
/// (docs, 55.9 "Logical Replication Message Formats"); the XLogData header is 25 bytes.
fn streamed_ends(raw: &std::path::Path) -> (usize, usize) {
    use base64::Engine;
    let text = std::fs::read_to_string(raw).unwrap();
    let mut ends = (0, 0);
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let Some(data) = v["data"].as_str().filter(|_| v["kind"] == "copy") else {
            continue;
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap();
        match (bytes.first(), bytes.get(25)) {
            (Some(b'w'), Some(b'c')) => ends.0 += 1,
            (Some(b'w'), Some(b'A')) => ends.1 += 1,
            _ => {}
        }
    }
    ends
}

/// The tests' server's major version.
fn server_major() -> u32 {
    support::server_bin_dir()
        .and_then(support::server_major_version)
        .expect("the test server's major version (postgres --version)")
}

/// What the golden workload must have produced, whatever the server version.
fn check_golden_events(events: &[Value], schema: &str) {
    let of = |table: &str, op: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e["schema"] == schema && e["table"] == table && e["op"] == op)
            .collect()
    };
    let ids = |table: &str, op: &str| -> Vec<i64> {
        of(table, op)
            .iter()
            .map(|e| {
                e["data"]["id"]
                    .as_i64()
                    .or(e["key"]["id"].as_i64())
                    .unwrap_or(-1)
            })
            .collect()
    };
    // The streamed bulk insert whole, the rolled-back one and subtransaction absent.
    let bulk = ids("bulk", "INSERT");
    let mut want: Vec<i64> = (1..=200).chain(4001..=4201).collect();
    want.extend([1001, 1003, 3001]);
    assert_eq!(bulk, want, "bulk INSERTs");
    assert_eq!(ids("bulk", "UPDATE"), vec![1]);
    assert_eq!(of("bulk", "TRUNCATE").len(), 1, "TRUNCATE bulk");
    // TOAST: the UPDATE that left `label` alone says so, and keeps the other values.
    let upd = of("Order Items", "UPDATE");
    assert_eq!(upd.len(), 1, "{upd:?}");
    assert_eq!(upd[0]["unchanged"], json!(["label"]), "{}", upd[0]);
    assert_eq!(upd[0]["data"]["qty"], json!(4));
    let ins = of("Order Items", "INSERT");
    assert_eq!(ins.len(), 2);
    assert_eq!(ins[0]["data"]["grid"], json!([[1, 2], [3, 4]]));
    assert_eq!(ins[0]["data"]["m"], json!("häppy"));
    assert_eq!(ins[0]["data"]["tags"], json!(["a b", "c\"d", null, "{e}"]));
    assert_eq!(ins[0]["data"]["unit price"], json!("9.99"));
    assert_eq!(ins[0]["data"]["label"].as_str().map(str::len), Some(3200));
    // PostgreSQL 18 publishes the stored generated column; older servers never send it.
    let generated = ins[0]["data"].get("total").is_some();
    let major = server_major();
    assert_eq!(
        generated,
        major >= 18,
        "generated column on PG {major}: {}",
        ins[0]
    );
    // Every partition's change is under the partitioned table, the one attached later too.
    let meas = ids("meas", "INSERT");
    for id in [1, 2, 3, 4] {
        assert!(meas.contains(&id), "meas INSERT {id}: {meas:?}");
    }
    assert!(
        events.iter().all(|e| !e["table"]
            .as_str()
            .is_some_and(|t| t.starts_with("meas_eu"))),
        "a partition's change under its own name"
    );
    assert_eq!(
        ids("nokey", "INSERT").len(),
        1,
        "the table without a replica identity"
    );
    assert_eq!(of("full_ident", "DELETE").len(), 1);
    let messages = events.iter().filter(|e| e["op"] == "MESSAGE").count();
    assert_eq!(messages, 2, "the two logical messages");
}
