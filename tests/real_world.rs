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
             GRANT CREATE ON DATABASE walwatch TO {name};
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
             DROP PUBLICATION IF EXISTS walwatch_{slot};"
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
