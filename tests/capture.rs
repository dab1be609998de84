//! Capture against a real PostgreSQL: every column type decoded to its exact JSON value,
//! replica identities, filters, schema changes mid-stream, rollbacks, logical messages.
//!
//! Each test owns its tables and slot, so the tests share one cluster and run in parallel.
//! The flow is the scripted one a user would run: create a slot (`--endpos now` exits at
//! once), run a workload, drain the slot up to the current position (`--endpos now`).

mod harness;
mod support;

use harness::{changes, create_slot, drain, sql, summary};
use serde_json::{Value, json};

#[test]
fn every_type_is_decoded_to_its_exact_value() {
    let t = support::unique_name("types");
    let slot = support::unique_name("slot");
    sql(&format!(
        "CREATE TYPE {t}_mood AS ENUM ('sad', 'ok', 'happy');
         CREATE DOMAIN {t}_pos AS int CHECK (VALUE > 0);
         CREATE TABLE {t} (
            id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
            f8n float8, f8i float8, n numeric(12,4), nn numeric, t text, vc varchar(10), bp char(5),
            nm name, ch \"char\", by bytea, u uuid, j json, jb jsonb, d date, dbc date, tm time,
            ttz timetz, ts timestamp, tstz timestamptz, tsinf timestamptz, iv interval, ip inet,
            cid cidr, mac macaddr, mon money, o oid, ai int[], at text[], a2 int[][],
            atz timestamptz[], mood {t}_mood, pos {t}_pos, big text, note text);
         ALTER TABLE {t} ALTER COLUMN big SET STORAGE EXTERNAL;"
    ));
    create_slot(&slot, &t);
    sql(&format!(
        r#"INSERT INTO {t} VALUES (1, true, -32768, 2147483647, 9223372036854775807, 1.5,
            0.1, 'NaN', '-Infinity', 12.5, 'NaN', 'héllo "wörld" it''s ✓', 'short', 'ab',
            'nm', 'x', '\xdeadbeef', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"a": [1, 2]}}',
            '{{"b": {{"c": null}}}}', '2026-11-22', '0044-03-15 BC', '03:22:01.5', '03:22:01+05:30',
            '2026-11-22 03:22:01.123456', '2026-11-22 05:22:01.123456+02', 'infinity',
            '1 year 2 months 3 days 04:05:06', '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03',
            12.5, 42, '{{1,NULL,3}}', '{{"a,b","c\"d",NULL,"NULL",""}}', '{{{{1,2}},{{3,4}}}}',
            '{{"2026-11-22 03:22:01+00"}}', 'happy', 7, repeat(md5('x'), 400), 'first');
         INSERT INTO {t} (id) VALUES (2);
         UPDATE {t} SET note = 'second' WHERE id = 1;
         DELETE FROM {t} WHERE id = 2;
         TRUNCATE {t};"#
    ));
    let events = drain(&slot, &t, &[]);
    let ch = changes(&events);
    assert_eq!(
        summary(&ch.iter().map(|e| (*e).clone()).collect::<Vec<_>>()),
        vec![
            format!("INSERT public.{t}"),
            format!("INSERT public.{t}"),
            format!("UPDATE public.{t}"),
            format!("DELETE public.{t}"),
            format!("TRUNCATE public.{t}"),
        ]
    );
    let big = "9dd4e461268c8034f5c8564e155c67a6".repeat(400);
    let expected = json!({
        "id": 1, "b": true, "i2": -32768, "i4": 2147483647, "i8": 9223372036854775807i64,
        "f4": 1.5, "f8": 0.1, "f8n": "NaN", "f8i": "-Infinity", "n": "12.5000", "nn": "NaN",
        "t": "héllo \"wörld\" it's ✓", "vc": "short", "bp": "ab   ", "nm": "nm", "ch": "x",
        "by": "\\xdeadbeef", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "j": {"a": [1, 2]}, "jb": {"b": {"c": null}}, "d": "2026-11-22", "dbc": "-0043-03-15",
        "tm": "03:22:01.5", "ttz": "03:22:01+05:30", "ts": "2026-11-22T03:22:01.123456",
        "tstz": "2026-11-22T03:22:01.123456Z", "tsinf": "infinity",
        "iv": "1 year 2 mons 3 days 04:05:06", "ip": "192.168.0.1/24", "cid": "10.0.0.0/8",
        "mac": "08:00:2b:01:02:03", "mon": "$12.50", "o": 42, "ai": [1, null, 3],
        "at": ["a,b", "c\"d", null, "NULL", ""], "a2": [[1, 2], [3, 4]],
        "atz": ["2026-11-22T03:22:01Z"], "mood": "happy", "pos": 7, "big": big, "note": "first"
    });
    let insert = ch[0];
    assert_eq!(insert["data"], expected, "first INSERT data");
    assert_eq!(insert["key"], json!({"id": 1}));
    assert_eq!(insert["old"], Value::Null);
    assert_eq!(insert["unchanged"], json!([]));

    // The NULL row: every column present and null.
    let nulls = ch[1]["data"].as_object().unwrap();
    assert_eq!(nulls.len(), expected.as_object().unwrap().len());
    assert!(
        nulls.iter().all(|(k, v)| k == "id" || v.is_null()),
        "{nulls:?}"
    );

    // The UPDATE left the TOASTed `big` unchanged: listed, and absent from data (not null).
    let update = ch[2];
    assert_eq!(update["unchanged"], json!(["big"]));
    assert!(update["data"].get("big").is_none(), "{update}");
    assert_eq!(update["data"]["note"], "second");
    assert_eq!(
        update["old"],
        Value::Null,
        "REPLICA IDENTITY DEFAULT sends no old row"
    );

    // DELETE under REPLICA IDENTITY DEFAULT: only the key.
    assert_eq!(ch[3]["data"], json!({"id": 2}));
    assert_eq!(ch[3]["key"], json!({"id": 2}));
    assert_eq!(ch[4]["data"], Value::Null);

    // Transactions bracket the changes, with xid, commit time and commit LSN.
    // (Other tests' logical messages reach every slot, in transactions of their own: only
    // the transactions of this table's changes count.)
    let xids: std::collections::BTreeSet<u64> =
        ch.iter().map(|e| e["xid"].as_u64().unwrap()).collect();
    assert_eq!(xids.len(), 5, "one transaction per statement");
    let begins = events
        .iter()
        .filter(|e| e["op"] == "BEGIN" && xids.contains(&e["xid"].as_u64().unwrap()))
        .count();
    assert_eq!(begins, 5, "each transaction begins once");
    for e in &events {
        assert!(e["xid"].is_u64(), "{e}");
        assert!(e["ts"].is_string(), "{e}");
    }
}

#[test]
fn replica_identity_full_sends_old_rows() {
    let t = support::unique_name("full");
    let d = support::unique_name("dflt");
    let slot = support::unique_name("slot");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, status text, qty int);
         ALTER TABLE {t} REPLICA IDENTITY FULL;
         CREATE TABLE {d} (id int PRIMARY KEY, status text);
         INSERT INTO {t} VALUES (1, 'new', 5);
         INSERT INTO {d} VALUES (1, 'new');"
    ));
    let tables = format!("{t},{d}");
    create_slot(&slot, &tables);
    sql(&format!(
        "UPDATE {t} SET status = 'paid' WHERE id = 1;
         DELETE FROM {t} WHERE id = 1;
         UPDATE {d} SET status = 'paid' WHERE id = 1;
         UPDATE {d} SET id = 2 WHERE id = 1;
         DELETE FROM {d} WHERE id = 2;"
    ));
    let events = drain(&slot, &tables, &[]);
    let ch = changes(&events);
    assert_eq!(ch.len(), 5, "{ch:#?}");
    // FULL: the whole old row on UPDATE, the whole row as data on DELETE.
    assert_eq!(ch[0]["old"], json!({"id": 1, "status": "new", "qty": 5}));
    assert_eq!(ch[0]["data"], json!({"id": 1, "status": "paid", "qty": 5}));
    assert_eq!(ch[1]["data"], json!({"id": 1, "status": "paid", "qty": 5}));
    assert_eq!(ch[1]["old"], Value::Null);
    // DEFAULT: no old row unless the key changed, then only the old key.
    assert_eq!(ch[2]["old"], Value::Null);
    assert_eq!(ch[2]["key"], json!({"id": 1}));
    assert_eq!(ch[3]["old"], json!({"id": 1}));
    assert_eq!(ch[3]["key"], json!({"id": 2}));
    assert_eq!(ch[4]["data"], json!({"id": 2}));
}

#[test]
fn tables_across_schemas_globs_and_ops_filter() {
    let s = support::unique_name("sales");
    let o = support::unique_name("other");
    let slot = support::unique_name("slot");
    sql(&format!(
        "CREATE SCHEMA {s}; CREATE SCHEMA {o};
         CREATE TABLE {s}.orders (id int PRIMARY KEY);
         CREATE TABLE {s}.refunds (id int PRIMARY KEY);
         CREATE TABLE {o}.orders (id int PRIMARY KEY);"
    ));
    let pattern = format!("{s}.*");
    create_slot(&slot, &pattern);
    sql(&format!(
        "INSERT INTO {s}.orders VALUES (1); INSERT INTO {s}.refunds VALUES (1);
         INSERT INTO {o}.orders VALUES (1);
         UPDATE {s}.orders SET id = 2; DELETE FROM {s}.refunds;"
    ));
    let events = drain(&slot, &pattern, &["--ops", "insert,delete"]);
    assert_eq!(
        summary(&events),
        vec![
            format!("INSERT {s}.orders"),
            format!("INSERT {s}.refunds"),
            format!("DELETE {s}.refunds"),
        ],
        "only {s}.* tables, only inserts and deletes, no BEGIN/COMMIT with --ops"
    );
}

#[test]
fn dsn_options_set_the_search_path_and_cannot_unpin_decoding_settings() {
    let s = support::unique_name("opts");
    let slot = support::unique_name("slot");
    let table = support::unique_name("t");
    sql(&format!(
        "CREATE SCHEMA {s}; CREATE TABLE {s}.{table} (id int PRIMARY KEY, at timestamptz, d date, \
                                                     i interval, f float8);"
    ));
    // `{table}` alone is only found on the search path the options set; the DateStyle,
    // TimeZone, IntervalStyle and extra_float_digits there would change every value if they
    // were not overridden by walwatch's pinned startup parameters.
    let dsn = format!(
        "{}?options={}",
        harness::dsn(),
        format!(
            "-c search_path={s} -c DateStyle=SQL,DMY -c TimeZone=Asia/Tokyo \
             -c IntervalStyle=iso_8601 -c extra_float_digits=0"
        )
        .replace(' ', "%20")
        .replace('=', "%3D")
        .replace(',', "%2C")
    );
    harness::run_expecting(
        &[
            "--dsn", &dsn, "--slot", &slot, "--tables", &table, "--endpos", "now",
        ],
        0,
    );
    sql(&format!(
        "INSERT INTO {s}.{table} VALUES \
         (1, '2024-03-05 06:07:08.5+00', '2024-03-05', '1 day 02:03:04', 0.1::float8 + 0.2::float8);"
    ));
    let out = harness::run_expecting(
        &[
            "--dsn", &dsn, "--slot", &slot, "--tables", &table, "--endpos", "now", "--format",
            "json", "--ops", "insert",
        ],
        0,
    );
    harness::drop_slot(&slot);
    let events = harness::parse_jsonl(&out.stdout);
    let [insert] = &events[..] else {
        panic!("expected the one insert into {s}.{table}, got {events:#?}");
    };
    assert_eq!(insert["schema"], s.as_str(), "{insert:#}");
    assert_eq!(insert["table"], table.as_str(), "{insert:#}");
    assert_eq!(
        insert["data"],
        json!({"id": 1, "at": "2024-03-05T06:07:08.5Z", "d": "2024-03-05",
               "i": "1 day 02:03:04", "f": 0.30000000000000004}),
        "values decoded with the pinned settings, whatever the options say"
    );
}

#[test]
fn a_missing_table_is_an_error_not_silence() {
    let missing = support::unique_name("nosuch");
    let out = harness::run_expecting(&["--dsn", &harness::dsn(), "--tables", &missing], 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&missing) && err.contains("no table matches"),
        "expected an error naming {missing}, got: {err}"
    );
}

#[test]
fn alter_table_mid_stream_changes_the_shape() {
    let t = support::unique_name("alter");
    let slot = support::unique_name("slot");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, a text, b text);"
    ));
    create_slot(&slot, &t);
    sql(&format!(
        "INSERT INTO {t} VALUES (1, 'a1', 'b1');
         ALTER TABLE {t} ADD COLUMN c int DEFAULT 7;
         INSERT INTO {t} VALUES (2, 'a2', 'b2', 8);
         ALTER TABLE {t} DROP COLUMN a;
         INSERT INTO {t} VALUES (3, 'b3', 9);"
    ));
    let events = drain(&slot, &t, &[]);
    let ch = changes(&events);
    assert_eq!(ch.len(), 3, "{ch:#?}");
    assert_eq!(ch[0]["data"], json!({"id": 1, "a": "a1", "b": "b1"}));
    assert_eq!(
        ch[1]["data"],
        json!({"id": 2, "a": "a2", "b": "b2", "c": 8})
    );
    assert_eq!(ch[2]["data"], json!({"id": 3, "b": "b3", "c": 9}));
}

#[test]
fn rolled_back_work_produces_no_events() {
    let t = support::unique_name("rb");
    let slot = support::unique_name("slot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    create_slot(&slot, &t);
    sql(&format!(
        "BEGIN; INSERT INTO {t} VALUES (1); ROLLBACK;
         BEGIN; INSERT INTO {t} VALUES (2);
           SAVEPOINT s1; INSERT INTO {t} VALUES (3);
             SAVEPOINT s2; INSERT INTO {t} VALUES (4); RELEASE SAVEPOINT s2;
           ROLLBACK TO SAVEPOINT s1;
           INSERT INTO {t} VALUES (5);
         COMMIT;"
    ));
    let events = drain(&slot, &t, &[]);
    let ids: Vec<i64> = changes(&events)
        .iter()
        .map(|e| e["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![2, 5],
        "the rolled-back transaction and subtransactions (3, 4) must not appear"
    );
    assert_eq!(summary(&events).first().map(String::as_str), Some("BEGIN"));
    assert_eq!(summary(&events).last().map(String::as_str), Some("COMMIT"));
}

#[test]
fn logical_messages_arrive_in_order() {
    let t = support::unique_name("msg");
    let slot = support::unique_name("slot");
    // Messages reach every slot of the database: a unique prefix tells ours apart.
    let prefix = support::unique_name("prefix");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    create_slot(&slot, &t);
    sql(&format!(
        "BEGIN;
           SELECT pg_logical_emit_message(true, '{prefix}', 'before');
           INSERT INTO {t} VALUES (1);
           SELECT pg_logical_emit_message(true, '{prefix}', 'after');
         COMMIT;
         SELECT pg_logical_emit_message(true, '{prefix}', '\\xff00'::bytea);"
    ));
    let all = drain(&slot, &t, &[]);
    // Keep our transactions: those holding our messages or our table's rows.
    let mut events = Vec::new();
    let mut txn = Vec::new();
    for e in all {
        let op = e["op"].as_str().unwrap().to_string();
        txn.push(e);
        if op == "COMMIT" {
            let ours = txn
                .iter()
                .any(|e| e["data"]["prefix"] == prefix.as_str() || e["table"] == t.as_str());
            if ours {
                events
                    .extend(txn.drain(..).filter(|e| {
                        e["op"] != "MESSAGE" || e["data"]["prefix"] == prefix.as_str()
                    }));
            }
            txn.clear();
        }
    }
    assert_eq!(
        summary(&events),
        vec![
            "BEGIN".to_string(),
            "MESSAGE".into(),
            format!("INSERT public.{t}"),
            "MESSAGE".into(),
            "COMMIT".into(),
            "BEGIN".into(),
            "MESSAGE".into(),
            "COMMIT".into(),
        ]
    );
    assert_eq!(
        events[1]["data"],
        json!({"prefix": prefix, "content": "before", "transactional": true})
    );
    assert_eq!(events[3]["data"]["content"], "after");
    assert_eq!(
        events[6]["data"]["content"], "\\xff00",
        "non-UTF-8 content as hex"
    );
    // Every event of a transaction carries its commit LSN.
    assert_eq!(events[1]["commit_lsn"], events[4]["commit_lsn"]);
}

#[test]
fn terminal_format_is_one_readable_line_per_change() {
    let t = support::unique_name("term");
    let slot = support::unique_name("slot");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, item text, amount numeric(10,2), status text);
         ALTER TABLE {t} REPLICA IDENTITY FULL;"
    ));
    create_slot(&slot, &t);
    sql(&format!(
        "INSERT INTO {t} VALUES (1, 'book', 12.50, 'new');
         UPDATE {t} SET status = 'shipped' WHERE id = 1;
         DELETE FROM {t} WHERE id = 1;"
    ));
    let dsn = harness::dsn();
    let out = harness::run_expecting(
        &[
            "--dsn", &dsn, "--slot", &slot, "--tables", &t, "--endpos", "now", "--format",
            "terminal",
        ],
        0,
    );
    harness::drop_slot(&slot);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("MESSAGE") && !l.is_empty())
        .collect();
    let changes: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("──"))
        .collect();
    assert_eq!(
        changes,
        vec![
            format!("INSERT public.{t} id=1 item='book' amount=12.50 status='new'"),
            format!("UPDATE public.{t} id=1 status: 'new' → 'shipped'"),
            format!("DELETE public.{t} id=1 item='book' amount=12.50 status='shipped'"),
        ],
        "terminal output:\n{text}"
    );
    assert!(lines[0].starts_with("── BEGIN xid "), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );
}

#[test]
fn an_existing_publication_is_used_and_checked() {
    let t = support::unique_name("pubd");
    let u = support::unique_name("unpub");
    let p = support::unique_name("pub");
    let slot = support::unique_name("slot");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY); CREATE TABLE {u} (id int PRIMARY KEY);
         CREATE PUBLICATION {p} FOR TABLE {t};"
    ));
    // A table the publication does not publish: a definite error naming the fix.
    let out = harness::run_expecting(
        &[
            "--dsn",
            &harness::dsn(),
            "--tables",
            &u,
            "--publication",
            &p,
        ],
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&u) && err.contains("ALTER PUBLICATION"),
        "{err}"
    );
    // A publication that does not exist.
    let out = harness::run_expecting(
        &[
            "--dsn",
            &harness::dsn(),
            "--tables",
            &t,
            "--publication",
            "no_such_pub",
        ],
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no_such_pub") && err.contains("does not exist"),
        "{err}"
    );

    harness::run_expecting(
        &[
            "--dsn",
            &harness::dsn(),
            "--slot",
            &slot,
            "--tables",
            &t,
            "--publication",
            &p,
            "--endpos",
            "now",
        ],
        0,
    );
    sql(&format!(
        "INSERT INTO {t} VALUES (1); INSERT INTO {u} VALUES (1);"
    ));
    let events = drain(&slot, &t, &["--publication", &p]);
    let ch = changes(&events);
    assert_eq!(ch.len(), 1, "{ch:#?}");
    assert_eq!(ch[0]["table"], t.as_str());
    sql(&format!("DROP PUBLICATION {p};"));
}

#[test]
fn watching_every_table_needs_a_superuser_or_a_publication() {
    // The test role is not a superuser: a clear error naming both ways out.
    let out = harness::run_expecting(&["--dsn", &harness::dsn()], 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FOR ALL TABLES") && err.contains("--tables") && err.contains("--publication"),
        "{err}"
    );

    // A superuser may: every table's changes arrive, and the publication is dropped after.
    let c = support::cluster();
    let admin = c.admin_dsn("walwatch");
    let t = support::unique_name("anyt");
    let slot = support::unique_name("slot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    harness::run_expecting(&["--dsn", &admin, "--slot", &slot, "--endpos", "now"], 0);
    sql(&format!("INSERT INTO {t} VALUES (42);"));
    let out = harness::run_expecting(
        &[
            "--dsn", &admin, "--slot", &slot, "--endpos", "now", "--format", "json", "--ops",
            "insert",
        ],
        0,
    );
    harness::drop_slot(&slot);
    let events = harness::parse_jsonl(&out.stdout);
    assert!(
        events
            .iter()
            .any(|e| e["table"] == t.as_str() && e["data"]["id"] == 42),
        "the insert into {t} is missing from {events:#?}"
    );
}

/// Drains `slot` up to `endpos` without dropping it.
fn drain_keep(slot: &str, table: &str, endpos: &str) -> Vec<Value> {
    let dsn = harness::dsn();
    let out = harness::run_expecting(
        &[
            "--dsn", &dsn, "--slot", slot, "--tables", table, "--endpos", endpos, "--format",
            "json", "--ops", "insert",
        ],
        0,
    );
    harness::parse_jsonl(&out.stdout)
}

fn ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["data"]["id"].as_i64().unwrap())
        .collect()
}

#[test]
fn a_permanent_slot_resumes_where_the_last_run_stopped() {
    let t = support::unique_name("resume");
    let slot = support::unique_name("slot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    create_slot(&slot, &t);
    sql(&format!(
        "INSERT INTO {t} VALUES (1); INSERT INTO {t} VALUES (2);"
    ));
    assert_eq!(ids(&drain_keep(&slot, &t, "now")), vec![1, 2]);
    sql(&format!("INSERT INTO {t} VALUES (3);"));
    assert_eq!(
        ids(&drain_keep(&slot, &t, "now")),
        vec![3],
        "the second run must start after what the first confirmed: no loss, no repeat"
    );
    // Nothing new: a run with nothing to do ends at once with no output.
    assert_eq!(ids(&drain_keep(&slot, &t, "now")), Vec::<i64>::new());
    harness::drop_slot(&slot);
}

#[test]
fn an_explicit_end_position_splits_the_backlog() {
    let t = support::unique_name("endpos");
    let slot = support::unique_name("slot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    create_slot(&slot, &t);
    sql(&format!("INSERT INTO {t} VALUES (1);"));
    let middle = sql("SELECT pg_current_wal_insert_lsn();");
    let middle = middle.lines().last().unwrap().trim().to_string();
    sql(&format!("INSERT INTO {t} VALUES (2);"));
    assert_eq!(
        ids(&drain_keep(&slot, &t, &middle)),
        vec![1],
        "--endpos {middle}: only what committed before it"
    );
    assert_eq!(
        ids(&drain_keep(&slot, &t, "now")),
        vec![2],
        "the rest, on resume"
    );
    harness::drop_slot(&slot);
}
