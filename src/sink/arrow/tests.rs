//! The Arrow sink on events built by hand: schemas, values, windows, schema changes, resume.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Int16Type, Int32Type, Int64Type, IntervalMonthDayNanoType,
    Time64MicrosecondType, TimestampMicrosecondType, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_buffer::IntervalMonthDayNano;
use arrow_schema::{DataType, IntervalUnit, TimeUnit};

use super::*;
use crate::event::{
    Column, ColumnKind, JsonText, Op, Relation, RelationColumn, ReplicaIdentity, Row, Timestamp,
    Value,
};

fn rel(oid: u32, cols: &[(&str, ColumnKind, i32, bool)]) -> Arc<Relation> {
    Arc::new(Relation {
        oid,
        namespace: Arc::from("public"),
        name: Arc::from("t"),
        replica_identity: ReplicaIdentity::Default,
        columns: cols
            .iter()
            .map(|(n, k, m, key)| RelationColumn {
                name: Arc::from(*n),
                type_oid: 0,
                type_modifier: *m,
                kind: k.clone(),
                is_key: *key,
            })
            .collect(),
        key_count: cols.iter().filter(|c| c.3).count(),
    })
}

fn row(rel: &Relation, values: Vec<(&str, Value)>) -> Row {
    Row {
        columns: values
            .into_iter()
            .map(|(n, value)| Column {
                name: rel
                    .columns
                    .iter()
                    .find(|c| &*c.name == n)
                    .map(|c| c.name.clone())
                    .unwrap_or_else(|| Arc::from(n)),
                value,
            })
            .collect(),
    }
}

fn ev(op: Op, rel: &Arc<Relation>, commit: u64, lsn: u64, data: Option<Row>) -> Event {
    let mut e = Event::new(op, Lsn(lsn));
    e.commit_lsn = Lsn(commit);
    e.xid = Some(700);
    e.ts = Some(Timestamp::from_unix_micros(1_795_317_721_123_456));
    e.schema = Some(rel.namespace.clone());
    e.table = Some(rel.name.clone());
    e.relation = Some(rel.clone());
    e.data = data;
    e
}

/// numeric(10,2)'s typmod.
const NUMERIC_10_2: i32 = (10 << 16 | 2) + 4;

fn every_kind() -> Arc<Relation> {
    rel(
        1,
        &[
            ("id", ColumnKind::Int4, -1, true),
            ("small", ColumnKind::Int2, -1, false),
            ("big", ColumnKind::Int8, -1, false),
            ("amount", ColumnKind::Numeric, NUMERIC_10_2, false),
            ("exact", ColumnKind::Numeric, -1, false),
            ("name", ColumnKind::Text, -1, false),
            ("blob", ColumnKind::Bytea, -1, false),
            ("u", ColumnKind::Uuid, -1, false),
            ("day", ColumnKind::Date, -1, false),
            ("at", ColumnKind::Time, -1, false),
            ("ts", ColumnKind::Timestamp, -1, false),
            ("tstz", ColumnKind::TimestampTz, -1, false),
            ("span", ColumnKind::Interval, -1, false),
            ("doc", ColumnKind::Jsonb, -1, false),
            ("mood", ColumnKind::Enum, -1, false),
            (
                "tags",
                ColumnKind::Array(Box::new(ColumnKind::Int4)),
                -1,
                false,
            ),
            ("addr", ColumnKind::Other, -1, false),
        ],
    )
}

fn collect(options: ArrowOptions) -> (ArrowSink, Receiver<TableBatch>) {
    ArrowSink::channel(options, 64)
}

#[test]
fn columns_are_typed_from_the_relation_and_values_convert_exactly() {
    let r = every_kind();
    let (mut sink, rx) = collect(ArrowOptions::default());
    let full = row(
        &r,
        vec![
            ("id", Value::Int(1)),
            ("small", Value::Int(-2)),
            ("big", Value::Int(i64::MAX)),
            ("amount", Value::Numeric("12345678.90".into())),
            (
                "exact",
                Value::Numeric("3.14159265358979323846264338327950288419716939937510".into()),
            ),
            ("name", Value::Text("Grüße, 世界".into())),
            ("blob", Value::Bytea(vec![0, 1, 255])),
            (
                "u",
                Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ),
            ("day", Value::Date("2026-11-22".into())),
            ("at", Value::Time("13:14:15.5".into())),
            ("ts", Value::Timestamp("2026-11-22T03:22:01.123456".into())),
            (
                "tstz",
                Value::TimestampTz("2026-11-22T03:22:01.123456Z".into()),
            ),
            (
                "span",
                Value::Interval("1 year 2 mons 3 days 04:05:06".into()),
            ),
            (
                "doc",
                Value::Json(JsonText::new(r#"{"a": [1, 2]}"#.into()).unwrap()),
            ),
            ("mood", Value::Text("happy".into())),
            (
                "tags",
                Value::Array(vec![Value::Int(1), Value::Null, Value::Int(3)]),
            ),
            ("addr", Value::Other("192.168.0.1/32".into())),
        ],
    );
    sink.put(&ev(Op::Insert, &r, 0x100, 0xF0, Some(full)))
        .unwrap();
    let nulls = row(&r, vec![("id", Value::Int(2))]);
    sink.put(&ev(Op::Insert, &r, 0x100, 0xF8, Some(nulls)))
        .unwrap();
    assert_eq!(sink.holding(), Some(Lsn(0x100)));
    sink.close_all().unwrap();
    assert_eq!(sink.holding(), None);
    let b = rx.try_recv().expect("one batch at finish");
    assert!(rx.try_recv().is_err(), "exactly one batch");
    assert_eq!((&*b.schema, &*b.table), ("public", "t"));
    let batch = b.batch;
    assert_eq!(batch.num_rows(), 2);
    let schema = batch.schema();
    let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    assert_eq!(ty("small"), DataType::Int16);
    assert_eq!(ty("amount"), DataType::Decimal128(10, 2));
    assert_eq!(ty("exact"), DataType::Utf8);
    assert_eq!(ty("u"), DataType::FixedSizeBinary(16));
    assert_eq!(
        schema.field_with_name("u").unwrap().extension_type_name(),
        Some("arrow.uuid")
    );
    assert_eq!(
        schema.field_with_name("doc").unwrap().extension_type_name(),
        Some("arrow.json")
    );
    assert_eq!(
        ty("tstz"),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(ty("ts"), DataType::Timestamp(TimeUnit::Microsecond, None));
    assert_eq!(ty("span"), DataType::Interval(IntervalUnit::MonthDayNano));
    assert!(matches!(ty("mood"), DataType::Dictionary(_, _)));
    assert!(matches!(ty("tags"), DataType::List(_)));
    let col = |name: &str| batch.column_by_name(name).unwrap().clone();
    assert_eq!(col("small").as_primitive::<Int16Type>().value(0), -2);
    assert_eq!(col("big").as_primitive::<Int64Type>().value(0), i64::MAX);
    assert_eq!(
        col("amount").as_primitive::<Decimal128Type>().value(0),
        1_234_567_890
    );
    assert_eq!(
        col("exact").as_string::<i32>().value(0),
        "3.14159265358979323846264338327950288419716939937510"
    );
    assert_eq!(col("name").as_string::<i32>().value(0), "Grüße, 世界");
    assert_eq!(col("blob").as_binary::<i32>().value(0), &[0, 1, 255]);
    assert_eq!(col("u").as_fixed_size_binary().value(0)[0], 0xa0);
    assert_eq!(col("day").as_primitive::<Date32Type>().value(0), 20_779);
    assert_eq!(
        col("at").as_primitive::<Time64MicrosecondType>().value(0),
        47_655_500_000
    );
    assert_eq!(
        col("tstz")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_795_317_721_123_456
    );
    assert_eq!(
        col("span")
            .as_primitive::<IntervalMonthDayNanoType>()
            .value(0),
        IntervalMonthDayNano::new(14, 3, 14_706_000_000_000)
    );
    assert_eq!(col("doc").as_string::<i32>().value(0), r#"{"a": [1, 2]}"#);
    let tags = col("tags");
    let tags = tags.as_list::<i32>();
    let first = tags.value(0);
    let first = first.as_primitive::<Int32Type>();
    assert_eq!(first.len(), 3);
    assert_eq!(
        (first.value(0), first.is_null(1), first.value(2)),
        (1, true, 3)
    );
    assert_eq!(col("addr").as_string::<i32>().value(0), "192.168.0.1/32");
    // The second row: every column but the key is null, and of its own type.
    for f in schema.fields().iter().take(r.columns.len()).skip(1) {
        assert!(col(f.name()).is_null(1), "{} should be null", f.name());
    }
    assert_eq!(
        col("_commit_lsn").as_primitive::<UInt64Type>().value(1),
        0x100
    );
    assert_eq!(col("_lsn").as_primitive::<UInt64Type>().value(1), 0xF8);
}

#[test]
fn deletes_truncates_and_unchanged_toast_values() {
    let r = rel(
        2,
        &[
            ("id", ColumnKind::Int8, -1, true),
            ("body", ColumnKind::Text, -1, false),
        ],
    );
    let (mut sink, rx) = collect(ArrowOptions {
        old: true,
        ..ArrowOptions::default()
    });
    let mut up = ev(
        Op::Update,
        &r,
        0x200,
        0x1F0,
        Some(row(&r, vec![("id", Value::Int(7))])),
    );
    up.unchanged = vec![r.columns[1].name.clone()];
    up.old = Some(row(&r, vec![("id", Value::Int(6))]));
    sink.put(&up).unwrap();
    let del = ev(
        Op::Delete,
        &r,
        0x200,
        0x1F8,
        Some(row(&r, vec![("id", Value::Int(7))])),
    );
    sink.put(&del).unwrap();
    sink.put(&ev(Op::Truncate, &r, 0x300, 0x2F0, None)).unwrap();
    sink.close_all().unwrap();
    let batch = rx.try_recv().unwrap().batch;
    let ops = batch.column_by_name("_op").unwrap();
    let ops = ops.as_dictionary::<arrow_array::types::Int8Type>();
    let names: Vec<&str> = (0..3)
        .map(|i| {
            let k = ops.keys().value(i) as usize;
            ops.values().as_string::<i32>().value(k)
        })
        .collect();
    assert_eq!(names, ["UPDATE", "DELETE", "TRUNCATE"]);
    let id = batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>()
        .clone();
    assert_eq!((id.value(0), id.value(1), id.is_null(2)), (7, 7, true));
    let body = batch.column_by_name("body").unwrap();
    assert!(body.is_null(0) && body.is_null(1) && body.is_null(2));
    let unchanged = batch.column_by_name("_unchanged").unwrap();
    let unchanged = unchanged.as_list::<i32>();
    assert_eq!(unchanged.value(0).as_string::<i32>().value(0), "body");
    assert_eq!(unchanged.value(1).len(), 0);
    let old_id = batch.column_by_name("_old_id").unwrap();
    let old_id = old_id.as_primitive::<Int64Type>();
    assert_eq!((old_id.value(0), old_id.is_null(1)), (6, true));
}

/// `--partitions leaf`: partitions of one table whose columns are in other orders (one made on
/// its own, then attached) share its one schema, each value in its own column.
#[test]
fn partitions_with_columns_in_another_order_share_one_batch() {
    let a = rel(
        4,
        &[
            ("id", ColumnKind::Int4, -1, true),
            ("note", ColumnKind::Text, -1, false),
        ],
    );
    let b = rel(
        5,
        &[
            ("note", ColumnKind::Text, -1, false),
            ("id", ColumnKind::Int4, -1, true),
        ],
    );
    let parent = Arc::new(crate::event::TableName {
        schema: Arc::from("public"),
        table: Arc::from("parent"),
    });
    let (mut sink, rx) = collect(ArrowOptions::default());
    for (i, r) in [&a, &b, &a].into_iter().enumerate() {
        let data = row(
            r,
            vec![
                ("id", Value::Int(i as i64)),
                ("note", Value::Text(format!("n{i}"))),
            ],
        );
        // Each row in its relation's own column order.
        let data = Row {
            columns: r
                .columns
                .iter()
                .map(|c| {
                    data.columns
                        .iter()
                        .find(|d| d.name == c.name)
                        .unwrap()
                        .clone()
                })
                .collect(),
        };
        let mut e = ev(Op::Insert, r, 0x10, 0x8 + i as u64, Some(data));
        e.partition_of = Some(parent.clone());
        sink.put(&e).unwrap();
    }
    sink.close_all().unwrap();
    let batch = rx.try_recv().expect("one batch");
    assert!(rx.try_recv().is_err(), "the batch was split");
    assert_eq!(batch.batch.num_rows(), 3);
    let ids = batch
        .batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int32Type>();
    let notes = batch
        .batch
        .column_by_name("note")
        .unwrap()
        .as_string::<i32>();
    for i in 0..3 {
        assert_eq!(
            (ids.value(i), notes.value(i)),
            (i as i32, format!("n{i}").as_str())
        );
    }
    // Not partitions: another column order is a schema change.
    let (mut sink, rx) = collect(ArrowOptions::default());
    for (i, r) in [&a, &b].into_iter().enumerate() {
        let data = row(r, vec![("id", Value::Int(i as i64))]);
        sink.put(&ev(Op::Insert, r, 0x10, 0x8 + i as u64, Some(data)))
            .unwrap();
    }
    sink.close_all().unwrap();
    assert_eq!(rx.try_iter().count(), 2);
}

#[test]
fn a_schema_change_closes_the_batch_and_the_next_has_the_new_columns() {
    let v1 = rel(3, &[("id", ColumnKind::Int4, -1, true)]);
    let v2 = rel(
        3,
        &[
            ("id", ColumnKind::Int4, -1, true),
            ("note", ColumnKind::Text, -1, false),
        ],
    );
    let (mut sink, rx) = collect(ArrowOptions::default());
    for i in 0..2 {
        let data = row(&v1, vec![("id", Value::Int(i))]);
        sink.put(&ev(Op::Insert, &v1, 0x10, 0x8 + i as u64, Some(data)))
            .unwrap();
    }
    // The same columns in a new Relation message (a reconnect) keep the batch open.
    let v1_again = rel(3, &[("id", ColumnKind::Int4, -1, true)]);
    let data = row(&v1_again, vec![("id", Value::Int(2))]);
    sink.put(&ev(Op::Insert, &v1_again, 0x10, 0xA, Some(data)))
        .unwrap();
    assert!(rx.try_recv().is_err(), "no schema change yet");
    let data = row(
        &v2,
        vec![("id", Value::Int(3)), ("note", Value::Text("x".into()))],
    );
    sink.put(&ev(Op::Insert, &v2, 0x20, 0x18, Some(data)))
        .unwrap();
    let first = rx.try_recv().expect("the old schema's batch closed");
    assert_eq!(first.batch.num_rows(), 3);
    assert!(first.batch.column_by_name("note").is_none());
    assert_eq!(sink.holding(), Some(Lsn(0x20)));
    sink.close_all().unwrap();
    let second = rx.try_recv().unwrap();
    assert_eq!(second.batch.num_rows(), 1);
    assert_eq!(
        second
            .batch
            .column_by_name("note")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "x"
    );
}

#[test]
fn batches_close_at_the_row_bound_and_after_the_window() {
    let r = rel(4, &[("id", ColumnKind::Int4, -1, true)]);
    let (mut sink, rx) = collect(ArrowOptions {
        rows: 2,
        window: Duration::from_millis(20),
        ..ArrowOptions::default()
    });
    for i in 0..3 {
        let data = row(&r, vec![("id", Value::Int(i))]);
        sink.put(&ev(Op::Insert, &r, 0x10 + i as u64, 0x8, Some(data)))
            .unwrap();
    }
    assert_eq!(rx.try_recv().unwrap().batch.num_rows(), 2);
    assert_eq!(sink.holding(), Some(Lsn(0x12)));
    sink.close_due().unwrap();
    assert!(rx.try_recv().is_err(), "the window has not passed");
    std::thread::sleep(Duration::from_millis(30));
    sink.close_due().unwrap();
    let last = rx.try_recv().expect("closed by the window");
    assert_eq!(last.batch.num_rows(), 1);
    assert_eq!(last.first_commit_lsn, Lsn(0x12));
    assert_eq!(sink.holding(), None);
}

/// What the sink holds back is said by the oldest write it still holds rows of: the writes
/// before it are durable once acknowledged, even while another table's batch stays open.
#[test]
fn the_oldest_write_held_back_is_that_of_the_oldest_open_row() {
    let a = rel(4, &[("id", ColumnKind::Int4, -1, true)]);
    let b = Arc::new(Relation {
        oid: 5,
        name: Arc::from("u"),
        ..(*a).clone()
    });
    let (mut sink, _rx) = collect(ArrowOptions {
        rows: 2,
        ..ArrowOptions::default()
    });
    let write = |sink: &mut ArrowSink, r: &Arc<Relation>, i: i64| {
        let data = row(r, vec![("id", Value::Int(i))]);
        let e = ev(Op::Insert, r, 0x10 + i as u64, 0x8, Some(data));
        sink.write(&Batch::new(vec![e], Lsn(0x10 + i as u64)))
            .unwrap();
    };
    assert_eq!(sink.held_from(), None);
    write(&mut sink, &a, 1);
    assert_eq!(sink.held_from(), Some(1));
    write(&mut sink, &b, 2);
    assert_eq!(
        sink.held_from(),
        Some(1),
        "table t's open row is the oldest"
    );
    write(&mut sink, &a, 3);
    assert_eq!(
        sink.held_from(),
        Some(2),
        "t's batch closed at 2 rows: u's row is held"
    );
    write(&mut sink, &b, 4);
    assert_eq!(sink.held_from(), None, "both batches closed");
    write(&mut sink, &a, 5);
    assert_eq!(sink.held_from(), Some(5));
}

#[test]
fn a_nan_in_a_decimal_column_is_null_not_a_failure() {
    let r = rel(5, &[("n", ColumnKind::Numeric, NUMERIC_10_2, false)]);
    let (mut sink, rx) = collect(ArrowOptions::default());
    for v in ["NaN", "1.50"] {
        let data = row(&r, vec![("n", Value::Numeric(v.into()))]);
        sink.put(&ev(Op::Insert, &r, 0x10, 0x8, Some(data)))
            .unwrap();
    }
    sink.close_all().unwrap();
    let batch = rx.try_recv().unwrap().batch;
    let n = batch.column(0).as_primitive::<Decimal128Type>();
    assert!(n.is_null(0));
    assert_eq!(n.value(1), 150);
}

#[test]
fn a_reserved_column_name_is_refused_with_what_to_do() {
    let r = rel(6, &[("_lsn", ColumnKind::Int4, -1, false)]);
    let (mut sink, _rx) = collect(ArrowOptions::default());
    let data = row(&r, vec![("_lsn", Value::Int(1))]);
    let err = sink
        .put(&ev(Op::Insert, &r, 0x10, 0x8, Some(data)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("rename the column"), "{err}");
}

fn read_ipc(path: &std::path::Path) -> RecordBatch {
    let f = std::fs::File::open(path).unwrap();
    let mut r = arrow_ipc::reader::FileReader::try_new(f, None).unwrap();
    r.next().unwrap().unwrap()
}

fn data_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir.join("public.t"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

#[test]
fn files_resume_exactly_after_a_crash_mid_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = ArrowSpec::parse(&format!("{}?rows=2", tmp.path().display())).unwrap();
    let r = rel(7, &[("id", ColumnKind::Int4, -1, true)]);
    // One transaction of 3 rows then one of 2: commits 0x100 and 0x200.
    let events: Vec<Event> = (0..5)
        .map(|i| {
            let commit = if i < 3 { 0x100 } else { 0x200 };
            let data = row(&r, vec![("id", Value::Int(i))]);
            ev(Op::Insert, &r, commit, 0x10 + i as u64, Some(data))
        })
        .collect();
    let mut sink = ArrowSink::files(&spec, true).unwrap();
    for e in &events[..3] {
        sink.put(e).unwrap();
    }
    // Rows 0 and 1 are in a file; row 2 was only in memory when the process died. A crash
    // also left a temp file behind.
    assert_eq!(sink.holding(), Some(Lsn(0x100)));
    drop(sink);
    let stray = tmp
        .path()
        .join("public.t/.0000000000000100-0000000000000100_9.arrow.tmp");
    std::fs::write(&stray, b"half").unwrap();
    // The server replays from 0x100: the whole first transaction, then the second.
    let mut sink = ArrowSink::files(&spec, true).unwrap();
    assert!(!stray.exists(), "the temp file is removed at start");
    assert_eq!(
        sink.held(),
        Some(Tally {
            key: Lsn(0x100),
            count: 2
        })
    );
    for e in &events {
        sink.put(e).unwrap();
    }
    sink.close_all().unwrap();
    let ids: Vec<i32> = data_files(tmp.path())
        .iter()
        .flat_map(|p| {
            let b = read_ipc(p);
            let ids = b.column(0).as_primitive::<Int32Type>().clone();
            (0..ids.len()).map(move |i| ids.value(i))
        })
        .collect();
    assert_eq!(
        ids,
        [0, 1, 2, 3, 4],
        "every row exactly once, in commit order"
    );
}

#[test]
fn parquet_files_keep_intervals_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = ArrowSpec::parse(&format!("{}?format=parquet", tmp.path().display())).unwrap();
    let r = rel(8, &[("span", ColumnKind::Interval, -1, false)]);
    let mut sink = ArrowSink::files(&spec, false).unwrap();
    let data = row(
        &r,
        vec![(
            "span",
            Value::Interval("-1 mons +2 days 00:00:00.000001".into()),
        )],
    );
    sink.put(&ev(Op::Insert, &r, 0x10, 0x8, Some(data)))
        .unwrap();
    sink.close_all().unwrap();
    let files = data_files(tmp.path());
    assert_eq!(files.len(), 1);
    assert!(files[0].to_string_lossy().ends_with(".parquet"));
    let f = std::fs::File::open(&files[0]).unwrap();
    let mut reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let batch = reader.next().unwrap().unwrap();
    let span = batch.column_by_name("span").unwrap().as_struct().clone();
    let field = |n: &str| span.column_by_name(n).unwrap().clone();
    assert_eq!(field("months").as_primitive::<Int32Type>().value(0), -1);
    assert_eq!(field("days").as_primitive::<Int32Type>().value(0), 2);
    assert_eq!(
        field("nanoseconds").as_primitive::<Int64Type>().value(0),
        1000
    );
}
