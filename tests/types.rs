//! `TYPE_QUERY` and the type registry against a real server: domains (chains, over arrays),
//! enums, composites and `box[]` (a `;` delimiter) decode through the registry the metadata
//! connection fills. And the JSON of dates and timestamps at the ends of PostgreSQL's ranges.

mod harness;
mod support;

use walwatch::Value;
use walwatch::decode::value::TYPE_QUERY;
use walwatch::decode::{TypeKind, TypeRegistry};

fn t(s: &str) -> Value {
    Value::Text(s.into())
}
fn other(s: &str) -> Value {
    Value::Other(s.into())
}
fn arr(v: Vec<Value>) -> Value {
    Value::Array(v)
}

#[test]
fn type_query_against_a_server() {
    let dsn = support::cluster().admin_dsn("walwatch");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let tx = client.transaction().await.unwrap();
        tx.batch_execute(
            "SET LOCAL DateStyle=ISO; SET LOCAL IntervalStyle=postgres; SET LOCAL TimeZone=UTC;
             SET LOCAL extra_float_digits=3;
             CREATE TYPE ww_mood AS ENUM ('happy', 'so sad');
             CREATE DOMAIN ww_pos AS int CHECK (VALUE > 0);
             CREATE DOMAIN ww_pos2 AS ww_pos;
             CREATE DOMAIN ww_ints AS int[];
             CREATE TYPE ww_pair AS (a int, b text);
             CREATE TABLE ww_t (m ww_mood[], p ww_pos2[], d ww_ints[], c ww_pair[], b box[],
                                e ww_mood, q ww_pos2, ts timestamptz[]);
             INSERT INTO ww_t VALUES ('{happy,\"so sad\",NULL}', '{1,2}', '{\"{1,2}\",\"{3}\"}',
                 ARRAY[ROW(1, 'x,\"y')::ww_pair], ARRAY[box '(1,1),(0,0)', box '(2,2),(1,1)'],
                 'so sad', 7, '{\"2026-11-22 03:22:01.5+00\",infinity}');",
        )
        .await
        .unwrap();
        let mut reg = TypeRegistry::new();
        for row in tx.query(TYPE_QUERY, &[]).await.unwrap() {
            reg.insert_row(row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        }
        let oid = |name: &'static str| {
            let tx = &tx;
            async move {
                let row = tx
                    .query_one("SELECT $1::text::regtype::oid", &[&name])
                    .await
                    .unwrap();
                row.get::<_, u32>(0)
            }
        };
        assert_eq!(reg.get(oid("ww_mood").await), Some(&TypeKind::Enum));
        assert_eq!(
            reg.get(oid("ww_pos2").await),
            Some(&TypeKind::Domain {
                base: oid("ww_pos").await
            })
        );
        assert_eq!(
            reg.get(oid("box[]").await),
            Some(&TypeKind::Array {
                elem: 603,
                delim: b';'
            })
        );
        assert_eq!(reg.get(oid("ww_pair").await), Some(&TypeKind::Other));
        // int2vector has an element type but is not an array type.
        assert_eq!(reg.get(22), None);

        let row = tx
            .query_one(
                "SELECT m::text, pg_typeof(m)::oid, p::text, pg_typeof(p)::oid, d::text,
                        pg_typeof(d)::oid, c::text, pg_typeof(c)::oid, b::text, e::text,
                        pg_typeof(e)::oid, q::text, pg_typeof(q)::oid, ts::text FROM ww_t",
                &[],
            )
            .await
            .unwrap();
        let col = |i: usize, j: usize| reg.parse_text(row.get(j), row.get(i));
        assert_eq!(col(0, 1), arr(vec![t("happy"), t("so sad"), Value::Null]));
        assert_eq!(col(2, 3), arr(vec![Value::Int(1), Value::Int(2)]));
        assert_eq!(
            col(4, 5),
            arr(vec![
                arr(vec![Value::Int(1), Value::Int(2)]),
                arr(vec![Value::Int(3)])
            ])
        );
        assert_eq!(col(6, 7), arr(vec![other("(1,\"x,\"\"y\")")]));
        assert_eq!(
            reg.parse_text(oid("box[]").await, row.get(8)),
            arr(vec![other("(1,1),(0,0)"), other("(2,2),(1,1)")])
        );
        assert_eq!(col(9, 10), t("so sad"));
        assert_eq!(col(11, 12), Value::Int(7));
        assert_eq!(
            reg.parse_text(1185, row.get(13)),
            arr(vec![
                Value::TimestampTz("2026-11-22T03:22:01.5Z".into()),
                Value::TimestampTz("infinity".into())
            ])
        );
        tx.rollback().await.unwrap();
    });
}

/// Dates and timestamps BC and past 9999, inserted on a real server and captured by the
/// walwatch binary: the JSON carries ISO-8601 expanded years (1 BC is year 0, 4714 BC is
/// -4713, years after 9999 have a `+`), the infinities stay the words.
#[test]
fn bc_and_far_future_dates_and_timestamps_are_iso_8601_in_json() {
    let table = support::unique_name("years");
    let slot = support::unique_name("slot");
    harness::sql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, d date, ts timestamp, tz timestamptz, \
                               ds date[]);"
    ));
    harness::create_slot(&slot, &table);
    // (id, date, timestamp, timestamptz): PostgreSQL's first values (4714-11-24 BC, Julian
    // day 0), 4713 BC, the last second of 1 BC, 1 AD, the ends of 9999 and 10000, and the last
    // timestamp (294276 AD) and date (5874897 AD) it has (8.5 Date/Time Types, table 8.9).
    let rows: [(i32, &str, &str, &str); 8] = [
        (
            1,
            "4714-11-24 BC",
            "4714-11-24 00:00:00 BC",
            "4714-11-24 00:00:00+00 BC",
        ),
        (
            2,
            "4713-01-01 BC",
            "4713-12-31 23:59:59.999999 BC",
            "4713-06-30 12:00:00+00 BC",
        ),
        (
            3,
            "0001-12-31 BC",
            "0001-12-31 23:59:59.999999 BC",
            "0001-12-31 23:59:59.5+00 BC",
        ),
        (
            4,
            "0001-01-01",
            "0001-01-01 00:00:00",
            "0001-01-01 00:00:00+00",
        ),
        (
            5,
            "9999-12-31",
            "9999-12-31 23:59:59.999999",
            "9999-12-31 23:59:59.999999+00",
        ),
        (
            6,
            "10000-01-01",
            "10000-01-01 00:00:00",
            "10000-01-01 00:00:00+00",
        ),
        (
            7,
            "5874897-12-31",
            "294276-12-31 23:59:59.999999",
            "294276-12-31 23:59:59.999999+00",
        ),
        (8, "infinity", "-infinity", "infinity"),
    ];
    let values: Vec<String> = rows
        .iter()
        .map(|(id, d, ts, tz)| format!("({id}, '{d}', '{ts}', '{tz}', ARRAY['{d}'::date])"))
        .collect();
    harness::sql(&format!(
        "INSERT INTO {table} VALUES {};",
        values.join(", ")
    ));
    let events = harness::drain(&slot, &table, &["--ops", "insert"]);
    let got: Vec<serde_json::Value> = events.iter().map(|e| e["data"].clone()).collect();
    let want: Vec<serde_json::Value> = [
        (
            1,
            "-4713-11-24",
            "-4713-11-24T00:00:00",
            "-4713-11-24T00:00:00Z",
        ),
        (
            2,
            "-4712-01-01",
            "-4712-12-31T23:59:59.999999",
            "-4712-06-30T12:00:00Z",
        ),
        (
            3,
            "0000-12-31",
            "0000-12-31T23:59:59.999999",
            "0000-12-31T23:59:59.5Z",
        ),
        (
            4,
            "0001-01-01",
            "0001-01-01T00:00:00",
            "0001-01-01T00:00:00Z",
        ),
        (
            5,
            "9999-12-31",
            "9999-12-31T23:59:59.999999",
            "9999-12-31T23:59:59.999999Z",
        ),
        (
            6,
            "+10000-01-01",
            "+10000-01-01T00:00:00",
            "+10000-01-01T00:00:00Z",
        ),
        (
            7,
            "+5874897-12-31",
            "+294276-12-31T23:59:59.999999",
            "+294276-12-31T23:59:59.999999Z",
        ),
        (8, "infinity", "-infinity", "infinity"),
    ]
    .iter()
    .map(|(id, d, ts, tz)| serde_json::json!({"id": id, "d": d, "ts": ts, "tz": tz, "ds": [d]}))
    .collect();
    assert_eq!(
        got, want,
        "the inserted rows, in order, with ISO-8601 expanded years"
    );
}
