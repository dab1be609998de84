//! Debezium's change-event envelope (the PostgreSQL connector's value, schemaless JSON as with
//! `value.converter.schemas.enable=false`), so consumers written against Debezium read
//! walwatch's messages unchanged. `schemas/debezium.schema.json` is its machine-readable form.
//!
//! ```json
//! {"before":null,"after":{"id":1,...},
//!  "source":{"version":"walwatch-0.1.0","connector":"postgresql","name":"walwatch",
//!            "ts_ms":1795316521123,"snapshot":"false","db":"shop","sequence":null,
//!            "schema":"public","table":"orders","txId":751,"lsn":27411400,"xmin":null},
//!  "op":"c","ts_ms":1795316521200,"transaction":null}
//! ```
//!
//! * `op`: `c` INSERT, `u` UPDATE, `d` DELETE, `t` TRUNCATE, `m` MESSAGE.
//! * `before`: the old row under REPLICA IDENTITY FULL (or the old key when an UPDATE changed
//!   it), the old row / key of a DELETE; `after`: the new row. As in Debezium, what the replica
//!   identity does not send is null, not guessed.
//! * Column values are walwatch's typed JSON (numeric as an exact string, like Debezium's
//!   `decimal.handling.mode=string`; dates and times as ISO-8601 strings). Unchanged TOASTed
//!   columns are left out rather than given Debezium's placeholder string.
//! * `source.partition_of` is walwatch's addition: for a change reported under a partition's
//!   name (`--partitions leaf`), the partitioned table it belongs to, as in the native event.

use crate::event::{Event, Op};
use crate::event_json::{int, opt_row, string, table_name};

/// What `source.version` says.
pub const VERSION: &str = concat!("walwatch-", env!("CARGO_PKG_VERSION"));

/// The Debezium `op` letter of an event, if it has one.
pub fn op_letter(op: Op) -> Option<&'static str> {
    Some(match op {
        Op::Insert => "c",
        Op::Update => "u",
        Op::Delete => "d",
        Op::Truncate => "t",
        Op::Message => "m",
        Op::Read => "r",
        _ => return None,
    })
}

fn source(out: &mut Vec<u8>, ev: &Event, db: &str, name: &str) {
    out.extend_from_slice(b"{\"version\":");
    string(out, VERSION);
    out.extend_from_slice(b",\"connector\":\"postgresql\",\"name\":");
    string(out, name);
    out.extend_from_slice(b",\"ts_ms\":");
    match ev.ts {
        Some(ts) => int(out, ts.unix_micros().div_euclid(1000)),
        None => out.extend_from_slice(b"null"),
    }
    // Debezium's `source.snapshot`: "true" on a row a snapshot read, "false" on a change.
    out.extend_from_slice(if ev.op == Op::Read {
        b",\"snapshot\":\"true\",\"db\":"
    } else {
        b",\"snapshot\":\"false\",\"db\":"
    });
    string(out, db);
    out.extend_from_slice(b",\"sequence\":null,\"schema\":");
    string(out, ev.schema());
    out.extend_from_slice(b",\"table\":");
    string(out, ev.table());
    out.extend_from_slice(b",\"txId\":");
    match ev.xid {
        Some(x) => int(out, x),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"lsn\":");
    int(out, ev.lsn.0);
    out.extend_from_slice(b",\"xmin\":null");
    if let Some(p) = &ev.partition_of {
        out.extend_from_slice(b",\"partition_of\":");
        table_name(out, p);
    }
    out.push(b'}');
}

/// Writes the envelope of a row change, TRUNCATE or MESSAGE; false (nothing written) for BEGIN
/// and COMMIT, which Debezium puts on its transaction topic in another shape.
pub fn write(ev: &Event, db: &str, name: &str, now_ms: i64, out: &mut Vec<u8>) -> bool {
    let Some(op) = op_letter(ev.op) else {
        return false;
    };
    let (before, after) = match ev.op {
        Op::Insert | Op::Read => (None, ev.data.as_ref()),
        Op::Update => (ev.old.as_ref(), ev.data.as_ref()),
        Op::Delete => (ev.data.as_ref(), None),
        _ => (None, None),
    };
    out.push(b'{');
    if let Some(m) = &ev.message {
        // Debezium's logical decoding message event: no before/after, a `message` block.
        out.extend_from_slice(b"\"message\":{\"prefix\":");
        string(out, &m.prefix);
        out.extend_from_slice(b",\"content\":");
        match m.content_str() {
            Some(text) => string(out, text),
            None => string(out, &crate::event::bytea_hex(&m.content)),
        }
        out.extend_from_slice(b"},");
    } else {
        out.extend_from_slice(b"\"before\":");
        opt_row(out, before);
        out.extend_from_slice(b",\"after\":");
        opt_row(out, after);
        out.push(b',');
    }
    out.extend_from_slice(b"\"source\":");
    source(out, ev, db, name);
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b"\",\"ts_ms\":");
    int(out, now_ms);
    out.extend_from_slice(b",\"transaction\":null}");
    true
}

/// Debezium's transaction metadata event for BEGIN (`status` BEGIN) or COMMIT (`status` END,
/// with the transaction's event count and the count per table).
pub fn write_tx(ev: &Event, counts: &[(String, u64)], out: &mut Vec<u8>) {
    let end = ev.op == Op::Commit;
    out.extend_from_slice(b"{\"status\":");
    string(out, if end { "END" } else { "BEGIN" });
    out.extend_from_slice(b",\"id\":");
    string(out, &format!("{}:{}", ev.xid.unwrap_or(0), ev.commit_lsn.0));
    out.extend_from_slice(b",\"ts_ms\":");
    match ev.ts {
        Some(ts) => int(out, ts.unix_micros().div_euclid(1000)),
        None => out.extend_from_slice(b"null"),
    }
    if end {
        out.extend_from_slice(b",\"event_count\":");
        int(out, counts.iter().map(|(_, n)| n).sum::<u64>());
        out.extend_from_slice(b",\"data_collections\":[");
        for (i, (table, n)) in counts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"data_collection\":");
            string(out, table);
            out.extend_from_slice(b",\"event_count\":");
            int(out, *n);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
    } else {
        out.extend_from_slice(b",\"event_count\":null,\"data_collections\":null}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, Lsn, Row, Timestamp, Value};
    use std::sync::Arc;

    fn row(cols: &[(&str, i64)]) -> Row {
        Row {
            columns: cols
                .iter()
                .map(|(n, v)| Column {
                    name: Arc::from(*n),
                    value: Value::Int(*v),
                })
                .collect(),
        }
    }

    fn ev(op: Op) -> Event {
        let mut e = Event::new(op, Lsn(0x1A2B3C8));
        e.schema = Some("public".into());
        e.table = Some("orders".into());
        e.commit_lsn = Lsn(0x1A2B4F0);
        e.xid = Some(751);
        e.ts = Some(Timestamp::from_unix_micros(1_795_316_521_123_456));
        e
    }

    fn json(e: &Event) -> serde_json::Value {
        let mut out = Vec::new();
        assert!(write(e, "shop", "walwatch", 42, &mut out));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_partition_names_its_partitioned_table_in_source() {
        let mut ins = ev(Op::Insert);
        ins.table = Some("orders_2026".into());
        ins.data = Some(row(&[("id", 1)]));
        assert!(json(&ins)["source"].get("partition_of").is_none());
        ins.partition_of = Some(std::sync::Arc::new(crate::event::TableName {
            schema: "public".into(),
            table: "orders".into(),
        }));
        let v = json(&ins);
        assert_eq!(v["source"]["table"], "orders_2026");
        assert_eq!(
            v["source"]["partition_of"],
            serde_json::json!({"schema": "public", "table": "orders"})
        );
    }

    #[test]
    fn a_snapshot_row_is_op_r_with_source_snapshot_true() {
        let mut read = ev(Op::Read);
        read.xid = None;
        read.data = Some(row(&[("id", 1), ("qty", 2)]));
        let v = json(&read);
        assert_eq!(v["op"], "r");
        assert_eq!(v["before"], serde_json::Value::Null);
        assert_eq!(v["after"], serde_json::json!({"id": 1, "qty": 2}));
        assert_eq!(v["source"]["snapshot"], "true");
        assert_eq!(v["source"]["txId"], serde_json::Value::Null);
        let mut ins = ev(Op::Insert);
        ins.data = Some(row(&[("id", 1)]));
        assert_eq!(json(&ins)["source"]["snapshot"], "false");
    }

    #[test]
    fn before_and_after_follow_the_op() {
        let mut ins = ev(Op::Insert);
        ins.data = Some(row(&[("id", 1), ("qty", 2)]));
        let v = json(&ins);
        assert_eq!(v["op"], "c");
        assert_eq!(v["before"], serde_json::Value::Null);
        assert_eq!(v["after"], serde_json::json!({"id": 1, "qty": 2}));
        assert_eq!(v["source"]["lsn"], 0x1A2B3C8);
        assert_eq!(v["source"]["txId"], 751);
        assert_eq!(v["source"]["ts_ms"], 1_795_316_521_123i64);
        assert_eq!(v["source"]["db"], "shop");
        assert_eq!(v["source"]["connector"], "postgresql");
        assert_eq!(v["ts_ms"], 42);

        let mut upd = ev(Op::Update);
        upd.data = Some(row(&[("id", 1), ("qty", 3)]));
        assert_eq!(json(&upd)["before"], serde_json::Value::Null);
        upd.old = Some(row(&[("id", 1), ("qty", 2)]));
        assert_eq!(json(&upd)["before"]["qty"], 2);

        let mut del = ev(Op::Delete);
        del.data = Some(row(&[("id", 1)]));
        let v = json(&del);
        assert_eq!(
            (v["op"].as_str(), &v["before"]["id"]),
            (Some("d"), &serde_json::json!(1))
        );
        assert_eq!(v["after"], serde_json::Value::Null);

        let v = json(&ev(Op::Truncate));
        assert_eq!(v["op"], "t");
        assert!(!write(&ev(Op::Begin), "shop", "w", 0, &mut Vec::new()));
    }

    #[test]
    fn transaction_metadata() {
        let mut out = Vec::new();
        let mut c = ev(Op::Commit);
        c.schema = None;
        c.table = None;
        write_tx(
            &c,
            &[("public.orders".into(), 2), ("public.users".into(), 1)],
            &mut out,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["status"], "END");
        assert_eq!(v["event_count"], 3);
        assert_eq!(v["data_collections"][1]["data_collection"], "public.users");
        assert_eq!(v["id"], format!("751:{}", 0x1A2B4F0));
    }
}
