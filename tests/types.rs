//! `TYPE_QUERY` and the type registry against a real server: domains (chains, over arrays),
//! enums, composites and `box[]` (a `;` delimiter) decode through the registry the metadata
//! connection fills.

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
