//! The Arrow sink against a real server: every mapped type read back value by value, readers
//! no one here wrote (DuckDB and pyarrow, installed by `tests/install-pytools.sh`), a schema
//! change splitting files, kill -9 mid-batch, and the in-process batch stream.

mod harness;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, TimeUnit};

use harness::{Proc, drop_slot, dsn, run_expecting, spawn_logged, sql};
use support::{unique_name, wait_until};

/// Every data file under `dir/<table dir>`, in name (commit) order.
fn files_of(dir: &Path, table_dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir.join(table_dir))
        .unwrap_or_else(|e| panic!("no {table_dir} under {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

fn read_ipc(path: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(path).unwrap();
    arrow_ipc::reader::FileReader::try_new(f, None)
        .unwrap_or_else(|e| panic!("{} is not a complete Arrow file: {e}", path.display()))
        .map(|b| b.unwrap())
        .collect()
}

/// Drains `slot` (created beforehand) up to now into `arrow:<dir>?<options>`.
fn drain_to(slot: &str, tables: &str, dir: &Path, options: &str) {
    let sink = format!("arrow:{}?{options}", dir.display());
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
            "--sink",
            &sink,
        ],
        0,
    );
}

/// A value of an Arrow column rendered as the SQL expression of [`TYPES`] renders the
/// PostgreSQL value, so the two can be compared as text.
fn render(a: &ArrayRef, i: usize) -> String {
    if a.is_null(i) {
        return "NULL".into();
    }
    match a.data_type() {
        DataType::Boolean => a.as_boolean().value(i).to_string(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).to_string(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).to_string(),
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).to_string(),
        DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).to_string(),
        // Floats compare as the shortest text that round-trips (PostgreSQL 12+ prints that
        // too), with PostgreSQL's spellings of the specials.
        DataType::Float32 => float_text(f64::from(a.as_primitive::<Float32Type>().value(i)), true),
        DataType::Float64 => float_text(a.as_primitive::<Float64Type>().value(i), false),
        DataType::Decimal128(_, _) => a.as_primitive::<Decimal128Type>().value_as_string(i),
        DataType::Utf8 => a.as_string::<i32>().value(i).to_string(),
        DataType::Binary => hex(a.as_binary::<i32>().value(i)),
        DataType::FixedSizeBinary(_) => hex(a.as_fixed_size_binary().value(i)),
        DataType::Date32 => match a.as_primitive::<Date32Type>().value(i) {
            i32::MAX => "infinity".into(),
            d if d == -i32::MAX => "-infinity".into(),
            d => d.to_string(),
        },
        DataType::Time64(_) => a
            .as_primitive::<Time64MicrosecondType>()
            .value(i)
            .to_string(),
        DataType::Timestamp(_, _) => match a.as_primitive::<TimestampMicrosecondType>().value(i) {
            i64::MAX => "infinity".into(),
            t if t == -i64::MAX => "-infinity".into(),
            t => t.to_string(),
        },
        DataType::Interval(_) => {
            let v = a.as_primitive::<IntervalMonthDayNanoType>().value(i);
            format!("{} {} {}", v.months, v.days, v.nanoseconds / 1000)
        }
        DataType::Dictionary(key, _) => {
            let (k, values) = if **key == DataType::Int8 {
                let d = a.as_dictionary::<Int8Type>();
                (d.keys().value(i) as usize, d.values().clone())
            } else {
                let d = a.as_dictionary::<Int32Type>();
                (d.keys().value(i) as usize, d.values().clone())
            };
            values.as_string::<i32>().value(k).to_string()
        }
        DataType::List(_) => {
            let items = a.as_list::<i32>().value(i);
            let parts: Vec<String> = (0..items.len()).map(|j| render(&items, j)).collect();
            format!("{{{}}}", parts.join(","))
        }
        other => panic!("no rendering for {other}"),
    }
}

fn float_text(f: f64, single: bool) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return (if f > 0.0 { "Infinity" } else { "-Infinity" }).into();
    }
    let s = if single {
        format!("{:?}", f as f32)
    } else {
        format!("{f:?}")
    };
    s.trim_end_matches(".0").to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Column, type, Arrow type, and the SQL rendering of a value for [`render`] to match.
const TYPES: &[(&str, &str, &str, &str)] = &[
    ("b", "boolean", "Boolean", "b::text"),
    ("i2", "int2", "Int16", "i2::text"),
    ("i4", "int4", "Int32", "i4::text"),
    ("i8", "int8", "Int64", "i8::text"),
    ("f4", "float4", "Float32", "f4::text"),
    ("f8", "float8", "Float64", "f8::text"),
    (
        "money_like",
        "numeric(38,10)",
        "Decimal128(38, 10)",
        "money_like::text",
    ),
    ("dec", "numeric(12,2)", "Decimal128(12, 2)", "dec::text"),
    ("exact", "numeric", "Utf8", "exact::text"),
    ("t", "text", "Utf8", "t"),
    ("vc", "varchar(20)", "Utf8", "vc::text"),
    // A cast to text would strip char(n)'s padding; its output function keeps it.
    (
        "bc",
        "char(5)",
        "Utf8",
        "CASE WHEN bc IS NOT NULL THEN concat(bc) END",
    ),
    ("by", "bytea", "Binary", "encode(by, 'hex')"),
    (
        "u",
        "uuid",
        "FixedSizeBinary(16)",
        "replace(u::text, '-', '')",
    ),
    (
        "d",
        "date",
        "Date32",
        "CASE WHEN isfinite(d) THEN (d - date '1970-01-01')::text ELSE d::text END",
    ),
    (
        "tm",
        "time",
        "Time64(µs)",
        "(extract(epoch from tm) * 1000000)::bigint::text",
    ),
    (
        "ts",
        "timestamp",
        "Timestamp(µs)",
        "CASE WHEN isfinite(ts) THEN (extract(epoch from ts) * 1000000)::bigint::text ELSE ts::text END",
    ),
    (
        "tz",
        "timestamptz",
        "Timestamp(µs, \"UTC\")",
        "CASE WHEN isfinite(tz) THEN (extract(epoch from tz) * 1000000)::bigint::text ELSE tz::text END",
    ),
    (
        "iv",
        "interval",
        "Interval(MonthDayNano)",
        "(extract(year from iv) * 12 + extract(month from iv))::int || ' ' || extract(day from iv)::int || ' ' || (extract(hour from iv) * 3600000000 + extract(minute from iv) * 60000000 + extract(microseconds from iv))::bigint",
    ),
    ("j", "json", "Utf8", "j::text"),
    ("jb", "jsonb", "Utf8", "jb::text"),
    (
        "mood",
        "arrow_mood",
        "Dictionary(Int32, Utf8)",
        "mood::text",
    ),
    ("ints", "int4[]", "List(Int32)", "ints::text"),
    ("grid", "int8[][]", "List(List(Int64))", "grid::text"),
    ("names", "text[]", "List(Utf8)", "names::text"),
    (
        "decs",
        "numeric(6,3)[]",
        "List(Decimal128(6, 3))",
        "decs::text",
    ),
    // inet's output function (what the server sends) omits a full mask; ::text keeps it.
    (
        "ip",
        "inet",
        "Utf8",
        "CASE WHEN ip IS NOT NULL THEN concat(ip) END",
    ),
];

#[test]
fn every_mapped_type_round_trips_value_by_value() {
    let table = unique_name("arrow_types");
    let slot = unique_name("arrow_types");
    let cols: Vec<String> = TYPES
        .iter()
        .map(|(c, t, _, _)| format!("{c} {t}"))
        .collect();
    sql(&format!(
        "DO $$ BEGIN CREATE TYPE arrow_mood AS ENUM ('sad', 'ok', 'happy ☺'); \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE TABLE {table} (id int PRIMARY KEY, {});",
        cols.join(", ")
    ));
    harness::create_slot(&slot, &table);
    let names: Vec<&str> = TYPES.iter().map(|t| t.0).collect();
    sql(&format!(
        "INSERT INTO {table} (id, {cols}) VALUES
         (1, true, -32768, 2147483647, -9223372036854775808, 1.5, 2.718281828459045,
          '1234567890123456789012345678.0123456789', -9999999999.99,
          '3.14159265358979323846264338327950288419716939937510582097494459',
          'Grüße, 世界 🦀', 'varchar', 'ab', '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          '2026-11-22', '13:14:15.123456', '2026-11-22 03:22:01.123456',
          '2026-03-01 12:00:00.5+05:30', '1 year 2 mons 3 days 04:05:06.789',
          '{{\"a\": [1, 2.50]}}', '{{\"b\": {{\"c\": null}}, \"a\": \"ü\"}}', 'happy ☺',
          '{{1,NULL,3}}', '{{{{1,2}},{{3,4}}}}', '{{ä,b}}', '{{1.500,-2.250}}', '10.1.2.3/32'),
         (2, false, 0, 0, 0, 'NaN', '-Infinity', 0, 0.01, 'NaN', '', '', '', '', 
          '00000000-0000-0000-0000-000000000000', '0044-03-15 BC', '00:00:00',
          '1999-12-31 23:59:59.999999', '1969-07-20 20:17:40-04', '-1 mons +2 days -00:00:00.000001',
          '[]', '{{}}', 'sad', '{{}}', '{{}}', '{{}}', '{{}}', '::1'),
         (3, NULL, NULL, NULL, NULL, 'Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
          NULL, 'infinity', NULL, '-infinity', 'infinity', NULL, NULL, NULL, NULL, NULL, NULL,
          NULL, NULL, NULL);",
        cols = names.join(", ")
    ));
    let dir = tempfile::tempdir().unwrap();
    drain_to(&slot, &table, dir.path(), "");
    let files = files_of(dir.path(), &format!("public.{table}"));
    assert_eq!(files.len(), 1, "one batch, one file: {files:?}");
    let batches = read_ipc(&files[0]);
    let batch = &batches[0];
    assert_eq!(batch.num_rows(), 3);

    let schema = batch.schema();
    for (c, _, arrow, _) in TYPES {
        let got = schema.field_with_name(c).unwrap().data_type();
        let got = match got {
            DataType::Timestamp(TimeUnit::Microsecond, None) => "Timestamp(µs)".to_string(),
            DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) => {
                format!("Timestamp(µs, \"{tz}\")")
            }
            DataType::Time64(TimeUnit::Microsecond) => "Time64(µs)".to_string(),
            DataType::List(f) => match f.data_type() {
                DataType::List(g) => format!("List(List({}))", g.data_type()),
                t => format!("List({t})"),
            },
            t => t.to_string(),
        };
        assert_eq!(&got, arrow, "the Arrow type of column {c}");
    }
    for (c, ext) in [
        ("u", "arrow.uuid"),
        ("j", "arrow.json"),
        ("jb", "arrow.json"),
    ] {
        assert_eq!(
            schema.field_with_name(c).unwrap().extension_type_name(),
            Some(ext),
            "extension of {c}"
        );
    }

    let exprs: Vec<&str> = TYPES.iter().map(|t| t.3).collect();
    let expected = sql(&format!(
        "SELECT concat_ws(E'\\x1f', {}) FROM (SELECT {} FROM {table} ORDER BY id) s",
        (0..TYPES.len())
            .map(|i| format!("coalesce(v{i}, 'NULL')"))
            .collect::<Vec<_>>()
            .join(", "),
        exprs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} AS v{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    let expected: Vec<Vec<&str>> = expected
        .lines()
        .map(|l| l.split('\x1f').collect())
        .collect();
    assert_eq!(expected.len(), 3, "{expected:?}");
    for (row, want) in expected.iter().enumerate() {
        for (k, (c, _, _, _)) in TYPES.iter().enumerate() {
            let got = render(batch.column_by_name(c).unwrap(), row);
            assert_eq!(got, want[k], "row {} column {c}", row + 1);
        }
    }
    let ops = render(batch.column_by_name("_op").unwrap(), 0);
    assert_eq!(ops, "INSERT");
    drop_slot(&slot);
}

/// The python with DuckDB and pyarrow (`tests/install-pytools.sh`; `tests/run.sh` exports it).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WALWATCH_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pytools/venv/bin/python");
    assert!(
        p.exists(),
        "no python with duckdb and pyarrow: run `bash tests/install-pytools.sh` (tests/run.sh \
         does) or set WALWATCH_PYTHON"
    );
    p
}

/// Runs a Python script with `dir` as argv[1]; returns its stdout as JSON.
fn py_json(script: &str, dir: &Path) -> serde_json::Value {
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Orders: 2,000 inserted in 4 transactions, 300 updated (paid, amount doubled), 100 deleted.
fn orders_workload(table: &str) {
    sql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, customer text, amount numeric(12,2), \
         status text, created timestamptz);"
    ));
}

fn run_orders(table: &str) {
    for k in 0..4 {
        sql(&format!(
            "INSERT INTO {table} SELECT g, 'customer ' || (g % 37), g * 1.25, 'new', \
             timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute 0.5 second' \
             FROM generate_series({}, {}) g;",
            k * 500 + 1,
            k * 500 + 500
        ));
    }
    sql(&format!(
        "UPDATE {table} SET status = 'paid', amount = amount * 2 WHERE id % 7 = 0 AND id <= 2100;
         DELETE FROM {table} WHERE id % 20 = 1;"
    ));
}

#[test]
fn duckdb_and_pyarrow_read_the_files_and_agree_with_postgres() {
    let table = unique_name("arrow_orders");
    let (parquet_slot, ipc_slot) = (unique_name("arrow_pq"), unique_name("arrow_ipc"));
    orders_workload(&table);
    harness::create_slot(&parquet_slot, &table);
    harness::create_slot(&ipc_slot, &table);
    run_orders(&table);
    // Every seventh order was updated, some of them deleted later.
    let updated = (1..=2000).filter(|id| id % 7 == 0).count();
    let deleted = 100;

    let pq = tempfile::tempdir().unwrap();
    drain_to(&parquet_slot, &table, pq.path(), "format=parquet&rows=700");
    drop_slot(&parquet_slot);
    let files = files_of(pq.path(), &format!("public.{table}"));
    assert!(
        files.len() >= 4,
        "2,400 changes at 700 rows a file: {files:?}"
    );

    // DuckDB rebuilds the table from the change stream (the last change per key, deletes
    // dropped), and the result must equal the table itself.
    let duck = py_json(
        &format!(
            r#"
import duckdb, json, sys
glob = sys.argv[1] + "/public.{table}/*.parquet"
con = duckdb.connect()
types = dict((r[0], r[1]) for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{{glob}}')").fetchall())
ops = dict(con.execute(f"SELECT _op, count(*) FROM read_parquet('{{glob}}') GROUP BY _op").fetchall())
row = con.execute(f"""
  WITH latest AS (
    SELECT *, row_number() OVER (PARTITION BY id ORDER BY _commit_lsn DESC, _lsn DESC) AS rn
    FROM read_parquet('{{glob}}'))
  SELECT count(*), sum(amount)::VARCHAR, count(*) FILTER (WHERE status = 'paid'),
         epoch_us(max(created)), string_agg(DISTINCT customer, ',' ORDER BY customer)
  FROM latest WHERE rn = 1 AND _op <> 'DELETE'""").fetchone()
print(json.dumps({{"types": types, "ops": ops, "state": list(row)}}))
"#
        ),
        pq.path(),
    );
    assert_eq!(duck["types"]["amount"], "DECIMAL(12,2)", "{duck}");
    assert_eq!(
        duck["types"]["created"], "TIMESTAMP WITH TIME ZONE",
        "{duck}"
    );
    assert_eq!(duck["types"]["_lsn"], "UBIGINT", "{duck}");
    assert_eq!(
        duck["ops"],
        serde_json::json!({"INSERT": 2000, "UPDATE": updated, "DELETE": deleted}),
        "change counts by op"
    );
    let pg = sql(&format!(
        "SELECT concat_ws('|', count(*), sum(amount), count(*) FILTER (WHERE status = 'paid'), \
         (extract(epoch from max(created)) * 1000000)::bigint, \
         string_agg(DISTINCT customer, ',' ORDER BY customer)) FROM {table}"
    ));
    let state = duck["state"].as_array().unwrap();
    let duck_state: Vec<String> = state
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .collect();
    assert_eq!(
        duck_state.join("|"),
        pg,
        "DuckDB's rebuilt table vs PostgreSQL's"
    );

    let ipc = tempfile::tempdir().unwrap();
    drain_to(&ipc_slot, &table, ipc.path(), "rows=1000");
    drop_slot(&ipc_slot);
    let pa = py_json(
        &format!(
            r#"
import glob, json, sys
import pyarrow as pa, pyarrow.compute as pc
files = sorted(glob.glob(sys.argv[1] + "/public.{table}/*.arrow"))
t = pa.concat_tables([pa.ipc.open_file(f).read_all() for f in files])
ins = t.filter(pc.equal(t["_op"].cast(pa.string()), "INSERT"))
dels = t.filter(pc.equal(t["_op"].cast(pa.string()), "DELETE"))
print(json.dumps({{
  "files": len(files), "rows": t.num_rows,
  "amount_type": str(t.schema.field("amount").type),
  "insert_sum": str(pc.sum(ins["amount"]).as_py()),
  "deleted_ids": sorted(dels["id"].to_pylist()),
  "deleted_amounts_null": dels["amount"].null_count,
  "first_created": ins["created"][0].as_py().isoformat(),
}}))
"#
        ),
        ipc.path(),
    );
    assert_eq!(pa["rows"], 2000 + updated + deleted, "{pa}");
    assert_eq!(pa["amount_type"], "decimal128(12, 2)");
    // 1.25 * (1 + ... + 2000)
    assert_eq!(pa["insert_sum"], "2501250.00");
    let want_deleted: Vec<i64> = (1..=2000).filter(|id| id % 20 == 1).collect();
    assert_eq!(pa["deleted_ids"], serde_json::json!(want_deleted));
    // A DELETE carries the key only (REPLICA IDENTITY DEFAULT).
    assert_eq!(pa["deleted_amounts_null"], deleted);
    assert_eq!(pa["first_created"], "2026-01-01T00:01:00.500000+00:00");
}

#[test]
fn a_schema_change_mid_stream_splits_the_files() {
    let table = unique_name("arrow_alter");
    let slot = unique_name("arrow_alter");
    sql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, a text);"
    ));
    harness::create_slot(&slot, &table);
    sql(&format!(
        "INSERT INTO {table} VALUES (1, 'one'), (2, 'two'), (3, 'three');
         ALTER TABLE {table} ADD COLUMN b numeric(5,1);
         INSERT INTO {table} VALUES (4, 'four', 4.5), (5, NULL, -5.0);
         UPDATE {table} SET b = 1.5 WHERE id = 1;"
    ));
    let dir = tempfile::tempdir().unwrap();
    drain_to(&slot, &table, dir.path(), "");
    drop_slot(&slot);
    let files = files_of(dir.path(), &format!("public.{table}"));
    assert_eq!(files.len(), 2, "one file per table version: {files:?}");
    let before = &read_ipc(&files[0])[0];
    let after = &read_ipc(&files[1])[0];
    let names = |b: &RecordBatch| -> Vec<String> {
        b.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .take_while(|n| !n.starts_with('_'))
            .collect()
    };
    assert_eq!(names(before), ["id", "a"]);
    assert_eq!(names(after), ["id", "a", "b"]);
    let rows = |b: &RecordBatch| -> Vec<String> {
        (0..b.num_rows())
            .map(|i| {
                (0..b.num_columns())
                    .take(names(b).len())
                    .map(|c| render(b.column(c), i))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(rows(before), ["1 one", "2 two", "3 three"]);
    assert_eq!(rows(after), ["4 four 4.5", "5 NULL -5.0", "1 one 1.5"]);
    assert_eq!(
        after.schema().field_with_name("b").unwrap().data_type(),
        &DataType::Decimal128(5, 1)
    );
}

/// `--snapshot only` on a new slot writes READ rows typed as the stream's changes: the file of
/// the rows and the file of the changes streamed after them have the same schema (the
/// snapshot describes each table as its Relation message does), and `_op` says READ.
#[test]
fn snapshot_rows_have_the_stream_schema_and_op_read() {
    let table = unique_name("arrow_snap");
    let slot = unique_name("arrow_snap");
    sql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, a text, b numeric(5,1), t timestamptz);
         INSERT INTO {table} VALUES (1, 'one', 1.5, '2026-01-01 00:00:00+00'),
           (2, NULL, NULL, NULL), (3, 'three', -3.0, '2026-03-03 03:03:03.5+00');"
    ));
    let rows_dir = tempfile::tempdir().unwrap();
    let sink = format!("arrow:{}", rows_dir.path().display());
    run_expecting(
        &[
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &table,
            "--snapshot",
            "only",
            "--sink",
            &sink,
        ],
        0,
    );
    sql(&format!(
        "INSERT INTO {table} VALUES (4, 'four', 4.5, now());"
    ));
    let changes_dir = tempfile::tempdir().unwrap();
    drain_to(&slot, &table, changes_dir.path(), "");
    drop_slot(&slot);
    let read = &read_ipc(&files_of(rows_dir.path(), &format!("public.{table}"))[0])[0];
    let changed = &read_ipc(&files_of(changes_dir.path(), &format!("public.{table}"))[0])[0];
    assert_eq!(
        read.schema().fields(),
        changed.schema().fields(),
        "the snapshot's rows and the stream's changes have one schema"
    );
    let op_names = |b: &RecordBatch| -> Vec<String> {
        let ops = b.column_by_name("_op").unwrap();
        let ops = ops.as_dictionary::<Int8Type>();
        (0..b.num_rows())
            .map(|i| {
                let k = ops.keys().value(i) as usize;
                ops.values().as_string::<i32>().value(k).to_string()
            })
            .collect()
    };
    assert_eq!(op_names(read), ["READ", "READ", "READ"]);
    let rows: Vec<String> = (0..read.num_rows())
        .map(|i| {
            (0..4)
                .map(|c| render(read.column(c), i))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(rows[0].starts_with("1 one 1.5"), "{rows:?}");
    assert!(rows[1].starts_with("2 NULL NULL NULL"), "{rows:?}");
    assert!(rows[2].starts_with("3 three -3.0"), "{rows:?}");
    assert_eq!(op_names(changed), ["INSERT"]);
}

#[test]
fn serial_kill_9_mid_batch_then_restart_loses_nothing() {
    let table = unique_name("arrow_kill");
    let slot = unique_name("arrow_kill");
    sql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, pad text);"
    ));
    harness::create_slot(&slot, &table);
    let dir = tempfile::tempdir().unwrap();
    // 130 rows a file against transactions of 100 rows: most files end mid-transaction, so a
    // restart must skip the part of a transaction the files already hold.
    let sink = format!("arrow:{}?rows=130&seconds=0.3", dir.path().display());
    let dsn = dsn();
    let args = [
        "--dsn", &dsn, "--slot", &slot, "--tables", &table, "--sink", &sink,
    ];
    const ROWS: usize = 30_000;
    let writer = {
        let table = table.clone();
        std::thread::spawn(move || {
            for k in 0..ROWS / 100 {
                sql(&format!(
                    "INSERT INTO {table} SELECT g, repeat('x', 50) FROM generate_series({}, {}) g;",
                    k * 100 + 1,
                    k * 100 + 100
                ));
            }
        })
    };
    let logs = tempfile::tempdir().unwrap();
    let mut round = 0;
    while !writer.is_finished() || round < 2 {
        let log = logs.path().join(format!("round{round}.log"));
        let mut p: Proc = spawn_logged(&args, &log);
        harness::wait_active(support::cluster(), &slot);
        // Let it write some files, then kill it wherever it is: mid-batch, mid-file.
        std::thread::sleep(Duration::from_millis(400 + 150 * (round % 4)));
        p.kill().unwrap();
        p.wait().unwrap();
        round += 1;
    }
    writer.join().unwrap();
    drain_to(&slot, &table, dir.path(), "rows=130&seconds=0.3");
    drop_slot(&slot);

    let files = files_of(dir.path(), &format!("public.{table}"));
    let mut seen: BTreeMap<i32, usize> = BTreeMap::new();
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        assert!(
            !name.ends_with(".tmp"),
            "a temp file survived the final run: {name}"
        );
        for b in read_ipc(f) {
            let ids = b.column(0).as_primitive::<Int32Type>();
            for i in 0..ids.len() {
                *seen.entry(ids.value(i)).or_default() += 1;
            }
        }
    }
    let missing: Vec<i32> = (1..=ROWS as i32)
        .filter(|id| !seen.contains_key(id))
        .collect();
    let twice: Vec<(&i32, &usize)> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
    let skipped: Vec<String> = (0..round)
        .flat_map(|r| {
            std::fs::read_to_string(logs.path().join(format!("round{r}.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("skipped"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {ROWS} rows are in no complete file after {round} kills, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(seen.len(), ROWS);
    assert!(
        twice.is_empty(),
        "rows written twice: {twice:?}; skips: {skipped:?}"
    );
    assert!(
        !skipped.is_empty(),
        "no restart skipped a replayed change, so the resume was never exercised ({round} kills)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_consumers_get_typed_batches_per_table() {
    use walwatch::config::{self, Config};
    use walwatch::pg::params::ConnParams;
    use walwatch::session::{Hooks, run_with};
    use walwatch::sink::arrow::{ArrowOptions, ArrowSink};

    let table = unique_name("arrow_chan");
    sql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, qty int2);"
    ));
    let env = |_: &str| None;
    let conn = ConnParams::resolve(Some(&dsn()), &env, None).unwrap();
    let mut cfg = Config::new(conn);
    cfg.tables = config::parse_tables(std::slice::from_ref(&table)).unwrap();
    let (sink, batches) = ArrowSink::channel(
        ArrowOptions {
            rows: 50,
            window: Duration::from_millis(200),
            ..ArrowOptions::default()
        },
        4,
    );
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hooks = Hooks {
        sinks: vec![Box::new(sink)],
        started: Some(started_tx),
    };
    let session = tokio::spawn(run_with(cfg, hooks, async {
        let _ = stop_rx.await;
    }));
    tokio::time::timeout(Duration::from_secs(30), started_rx)
        .await
        .expect("the session starts within 30 s")
        .expect("the session reports its start");
    sql(&format!(
        "INSERT INTO {table} SELECT g, g FROM generate_series(1, 120) g;
         UPDATE {table} SET qty = -1 WHERE id = 7;"
    ));
    let got = tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        let mut sizes = Vec::new();
        wait_until("121 rows in batches", Duration::from_secs(30), || {
            while let Ok(b) = batches.try_recv() {
                assert_eq!(&*b.table, table.as_str());
                assert_eq!(
                    b.batch.schema().field_with_name("qty").unwrap().data_type(),
                    &DataType::Int16
                );
                sizes.push(b.batch.num_rows());
                for i in 0..b.batch.num_rows() {
                    rows.push(format!(
                        "{} {} {}",
                        render(b.batch.column_by_name("_op").unwrap(), i),
                        render(b.batch.column(0), i),
                        render(b.batch.column(1), i)
                    ));
                }
            }
            (rows.len() >= 121).then_some(())
        });
        (rows, sizes)
    })
    .await
    .unwrap();
    let _ = stop_tx.send(());
    session.await.unwrap().expect("the session ends cleanly");
    let (rows, sizes) = got;
    assert_eq!(
        sizes[..2],
        [50, 50],
        "batches close at the row bound: {sizes:?}"
    );
    assert_eq!(rows.len(), 121);
    assert_eq!(rows[0], "INSERT 1 1");
    assert_eq!(rows[119], "INSERT 120 120");
    assert_eq!(rows[120], "UPDATE 7 -1");
}

/// One schema per partitioned table: with `--partitions leaf` the partitions' rows are
/// written under the partitioned table, as under the default `root`.
#[test]
fn a_partitioned_table_is_written_as_one_table_in_both_modes() {
    let table = unique_name("arrow_part");
    sql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, a text) PARTITION BY RANGE (id);
         CREATE TABLE {table}_lo PARTITION OF {table} FOR VALUES FROM (MINVALUE) TO (10);
         CREATE TABLE {table}_hi PARTITION OF {table} FOR VALUES FROM (10) TO (MAXVALUE);"
    ));
    for mode in ["root", "leaf"] {
        let slot = unique_name("arrow_part");
        run_expecting(
            &[
                "--dsn",
                &dsn(),
                "--slot",
                &slot,
                "--tables",
                &table,
                "--partitions",
                mode,
                "--endpos",
                "now",
            ],
            0,
        );
        sql(&format!(
            "TRUNCATE {table}; INSERT INTO {table} VALUES (1, 'lo'), (11, 'hi'), (2, 'lo2');"
        ));
        let dir = tempfile::tempdir().unwrap();
        let sink = format!("arrow:{}", dir.path().display());
        run_expecting(
            &[
                "--dsn",
                &dsn(),
                "--slot",
                &slot,
                "--tables",
                &table,
                "--partitions",
                mode,
                "--endpos",
                "now",
                "--sink",
                &sink,
                "--ops",
                "insert",
            ],
            0,
        );
        drop_slot(&slot);
        let dirs: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(dirs, [format!("public.{table}")], "--partitions {mode}");
        let files = files_of(dir.path(), &format!("public.{table}"));
        assert_eq!(files.len(), 1, "--partitions {mode}: {files:?}");
        let batch = &read_ipc(&files[0])[0];
        let rows: Vec<String> = (0..batch.num_rows())
            .map(|i| {
                format!(
                    "{} {}",
                    render(batch.column(0), i),
                    render(batch.column(1), i)
                )
            })
            .collect();
        assert_eq!(rows, ["1 lo", "11 hi", "2 lo2"], "--partitions {mode}");
        assert_eq!(
            batch.schema().metadata().get("walwatch.table"),
            Some(&format!("public.{table}")),
            "--partitions {mode}"
        );
    }
}
