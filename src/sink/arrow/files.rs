//! Arrow IPC and Parquet files: named by table and commit range, written whole and atomically,
//! and read back at start-up to resume.
//!
//! Layout: `DIR/<schema>.<table>/<first>-<last>.arrow` (or `.parquet`), where `<first>` and
//! `<last>` are the commit LSNs of the file's first and last rows as 16 hex digits, so names
//! sort in commit order; a second file with the same range (a huge transaction split by the
//! row bound) gets `_1`, `_2`... before the extension. Schema and table names are
//! percent-encoded outside `[A-Za-z0-9_-]`, so the `.` between them is unambiguous.
//!
//! A file is encoded in memory, written to `.<name>.tmp`, fsync'd, renamed to its name and the
//! directory fsync'd: a file with a final name is complete, and a crash leaves at most a hidden
//! `.tmp`, which the next start removes. Each file's schema metadata carries the table's running
//! [`Tally`] (`walwatch.resume`), so a restart knows exactly which of the replayed changes the
//! files already hold.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, IntervalMonthDayNanoArray, ListArray, RecordBatch, StructArray,
};
use arrow_array::{Int32Array, Int64Array};
use arrow_schema::{DataType, Field, Fields, IntervalUnit, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::spec::ArrowFormat;
use crate::error::{Error, Result};
use crate::event::Lsn;
use crate::sink::resume::Tally;

/// Schema metadata key: the table's running tally, `<commit_lsn> <count>`.
pub(crate) const RESUME_KEY: &str = "walwatch.resume";

/// The directory name of a table: `schema.table`, each percent-encoded.
pub(crate) fn table_dir_name(schema: &str, table: &str) -> String {
    format!("{}.{}", encode(schema), encode(table))
}

fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `<first>-<last>[_k].<ext>` -> (first, last).
fn parse_name(name: &str, ext: &str) -> Option<(Lsn, Lsn)> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    let range = stem.split_once('_').map_or(stem, |(r, _)| r);
    let (a, b) = range.split_once('-')?;
    if a.len() != 16 || b.len() != 16 {
        return None;
    }
    Some((
        Lsn(u64::from_str_radix(a, 16).ok()?),
        Lsn(u64::from_str_radix(b, 16).ok()?),
    ))
}

pub(crate) fn tally_text(t: Tally) -> String {
    format!("{} {}", t.key, t.count)
}

fn parse_tally(s: &str) -> Option<Tally> {
    let (k, c) = s.split_once(' ')?;
    Some(Tally {
        key: k.parse().ok()?,
        count: c.parse().ok()?,
    })
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Sink {
        target: path.display().to_string(),
        source,
    }
}

fn encode_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Arrow {
        target: path.display().to_string(),
        message: e.to_string(),
    }
}

/// fsync a directory, so a rename or a new entry in it survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `batch` as a complete file of `format` for the table `dir_name` under `root`;
/// returns its path. Only after this returns is the batch durable.
pub(crate) fn write(
    root: &Path,
    dir_name: &str,
    format: ArrowFormat,
    batch: &RecordBatch,
    first: Lsn,
    last: Lsn,
) -> Result<PathBuf> {
    let dir = root.join(dir_name);
    if !dir.is_dir() {
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        sync_dir(root).map_err(|e| io_error(root, e))?;
    }
    let ext = format.extension();
    let base = format!("{:016X}-{:016X}", first.0, last.0);
    let mut name = format!("{base}.{ext}");
    let mut k = 0;
    while dir.join(&name).exists() {
        k += 1;
        name = format!("{base}_{k}.{ext}");
    }
    let path = dir.join(&name);
    let bytes = match format {
        ArrowFormat::Ipc => ipc_bytes(batch).map_err(|e| encode_error(&path, e))?,
        ArrowFormat::Parquet => parquet_bytes(batch).map_err(|e| encode_error(&path, e))?,
    };
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(&dir)
    })();
    if let Err(e) = written {
        // Best effort: a full disk should not also leave a half file behind.
        let _ = fs::remove_file(&tmp);
        return Err(io_error(&path, e));
    }
    Ok(path)
}

fn ipc_bytes(batch: &RecordBatch) -> std::result::Result<Vec<u8>, arrow_schema::ArrowError> {
    let mut w = arrow_ipc::writer::FileWriter::try_new(Vec::new(), &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    w.into_inner()
}

fn parquet_bytes(
    batch: &RecordBatch,
) -> std::result::Result<Vec<u8>, parquet::errors::ParquetError> {
    let batch = for_parquet(batch)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.into_inner()
}

/// Parquet has no interval with nanoseconds (its INTERVAL is months, days, milliseconds), so
/// MonthDayNano columns are written as `struct<months: int32, days: int32, nanoseconds: int64>`,
/// which keeps every value exactly.
fn for_parquet(batch: &RecordBatch) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = batch.schema();
    if !schema.fields().iter().any(|f| has_interval(f.data_type())) {
        return Ok(batch.clone());
    }
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, a)| convert(f, a))
        .unzip();
    RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone())),
        arrays,
    )
}

fn has_interval(t: &DataType) -> bool {
    match t {
        DataType::Interval(IntervalUnit::MonthDayNano) => true,
        DataType::List(f) => has_interval(f.data_type()),
        _ => false,
    }
}

fn interval_fields() -> Fields {
    Fields::from(vec![
        Field::new("months", DataType::Int32, false),
        Field::new("days", DataType::Int32, false),
        Field::new("nanoseconds", DataType::Int64, false),
    ])
}

fn convert(f: &Field, a: &ArrayRef) -> (Field, ArrayRef) {
    match f.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let Some(iv) = a.as_any().downcast_ref::<IntervalMonthDayNanoArray>() else {
                return (f.clone(), a.clone());
            };
            let months: Int32Array = iv.values().iter().map(|v| v.months).collect();
            let days: Int32Array = iv.values().iter().map(|v| v.days).collect();
            let nanos: Int64Array = iv.values().iter().map(|v| v.nanoseconds).collect();
            let s = StructArray::new(
                interval_fields(),
                vec![Arc::new(months), Arc::new(days), Arc::new(nanos)],
                iv.nulls().cloned(),
            );
            (
                f.clone()
                    .with_data_type(DataType::Struct(interval_fields())),
                Arc::new(s),
            )
        }
        DataType::List(inner) if has_interval(inner.data_type()) => {
            let Some(list) = a.as_any().downcast_ref::<ListArray>() else {
                return (f.clone(), a.clone());
            };
            let (inner_f, values) = convert(inner, list.values());
            let inner_f = Arc::new(inner_f);
            let out = ListArray::new(
                inner_f.clone(),
                list.offsets().clone(),
                values,
                list.nulls().cloned(),
            );
            (
                f.clone().with_data_type(DataType::List(inner_f)),
                Arc::new(out),
            )
        }
        _ => (f.clone(), a.clone()),
    }
}

/// What a start finds in the directory: per table directory name, the tally of the files it
/// holds (the tables with files only).
pub(crate) fn scan(
    root: &Path,
    format: ArrowFormat,
    resume: bool,
) -> Result<HashMap<String, Tally>> {
    let mut out = HashMap::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_error(root, e)),
    };
    let ext = format.extension();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(root, e))?;
        if !entry.file_type().map_err(|e| io_error(root, e))?.is_dir() {
            continue;
        }
        let dir = entry.path();
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        let mut newest: Vec<PathBuf> = Vec::new();
        let mut newest_key = None;
        for f in fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
            let f = f.map_err(|e| io_error(&dir, e))?;
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A file a crash interrupted: never renamed, so never counted as durable.
                tracing::info!(
                    "removing {}, left incomplete by an earlier run",
                    f.path().display()
                );
                fs::remove_file(f.path()).map_err(|e| io_error(&f.path(), e))?;
                continue;
            }
            let Some((_, last)) = parse_name(&name, ext) else {
                continue;
            };
            if newest_key.is_none_or(|k| last > k) {
                newest_key = Some(last);
                newest.clear();
            }
            if newest_key == Some(last) {
                newest.push(f.path());
            }
        }
        if !resume {
            continue;
        }
        let mut best: Option<Tally> = None;
        for path in newest {
            let t = read_tally(&path, format)?;
            if best.is_none_or(|b| (t.key, t.count) > (b.key, b.count)) {
                best = Some(t);
            }
        }
        if let Some(t) = best {
            out.insert(dir_name, t);
        }
    }
    Ok(out)
}

/// The tally in a file's schema metadata.
fn read_tally(path: &Path, format: ArrowFormat) -> Result<Tally> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let schema = match format {
        ArrowFormat::Ipc => arrow_ipc::reader::FileReader::try_new(file, None)
            .map(|r| r.schema())
            .map_err(|e| encode_error(path, e))?,
        ArrowFormat::Parquet => {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .map(|b| b.schema().clone())
                .map_err(|e| encode_error(path, e))?
        }
    };
    schema
        .metadata()
        .get(RESUME_KEY)
        .and_then(|s| parse_tally(s))
        .ok_or_else(|| {
            Error::Config(format!(
                "{} is not a file walwatch wrote (its schema has no {RESUME_KEY} entry): move \
                 it out of the sink's directory, or use another directory",
                path.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_tables_and_sort_by_commit() {
        assert_eq!(table_dir_name("public", "orders"), "public.orders");
        assert_eq!(
            table_dir_name("my.schema", "Öl/x"),
            "my%2Eschema.%C3%96l%2Fx"
        );
        assert_eq!(
            parse_name("00000000016A0F80-00000000016A1000.arrow", "arrow"),
            Some((Lsn(0x16A0F80), Lsn(0x16A1000)))
        );
        assert_eq!(
            parse_name("00000000016A0F80-00000000016A1000_3.parquet", "parquet"),
            Some((Lsn(0x16A0F80), Lsn(0x16A1000)))
        );
        assert_eq!(parse_name("notes.txt", "arrow"), None);
        assert_eq!(parse_name("1-2.arrow", "arrow"), None);
        let t = Tally {
            key: Lsn(0x16A1000),
            count: 7,
        };
        assert_eq!(parse_tally(&tally_text(t)), Some(t));
    }
}
