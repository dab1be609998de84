//! One table version's changes -> one typed Arrow [`RecordBatch`].
//!
//! The schema comes from the relation (the Relation message's columns, with domains resolved),
//! never from the values: an all-null column still has its type, and two batches of one table
//! version have the same schema. The type mapping is the README's "Arrow type mapping" table;
//! a value that cannot be represented in its column's type (NaN in a Decimal128 column, an
//! array nested deeper than the column declares) is written as null and counted, and the sink
//! warns with the count when the batch closes.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, FixedSizeBinaryBuilder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder,
    IntervalMonthDayNanoBuilder, ListBuilder, StringBuilder, StringDictionaryBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::types::{Int8Type, Int32Type};
use arrow_array::{ArrayRef, ListArray, RecordBatch};
use arrow_buffer::{IntervalMonthDayNano, NullBufferBuilder, OffsetBuffer};
use arrow_schema::extension::{Json, Uuid};
use arrow_schema::{DataType, Field, FieldRef, IntervalUnit, Schema, SchemaRef, TimeUnit};

use super::convert;
use crate::error::{Error, Result};
use crate::event::{ColumnKind, Event, Lsn, Op, Relation, Row, Value, bytea_hex};

/// The change columns every batch has after the table's own columns.
pub(crate) const META_COLUMNS: [&str; 6] = [
    "_op",
    "_lsn",
    "_commit_lsn",
    "_xid",
    "_commit_ts",
    "_unchanged",
];

/// The prefix of the previous-value columns (`old=true`).
pub(crate) const OLD_PREFIX: &str = "_old_";

/// The Arrow type of a column of `kind`. `typmod` is `atttypmod` (numeric precision and
/// scale; for arrays, of the elements); `dims` is how many list levels an array column has.
pub(crate) fn data_type(kind: &ColumnKind, typmod: i32, dims: usize) -> DataType {
    match kind {
        ColumnKind::Bool => DataType::Boolean,
        ColumnKind::Int2 => DataType::Int16,
        ColumnKind::Int4 => DataType::Int32,
        ColumnKind::Int8 => DataType::Int64,
        ColumnKind::Oid => DataType::UInt32,
        ColumnKind::Float4 => DataType::Float32,
        ColumnKind::Float8 => DataType::Float64,
        // Declared numeric(p, s) with 1 <= p <= 38 and 0 <= s <= p fits Decimal128 exactly;
        // plain numeric (any precision) and negative or oversized scales are kept as exact text.
        ColumnKind::Numeric => match convert::numeric_typmod(typmod) {
            Some((p, s)) if (1..=38).contains(&p) && s >= 0 && s as u8 <= p => {
                DataType::Decimal128(p, s)
            }
            _ => DataType::Utf8,
        },
        ColumnKind::Bytea => DataType::Binary,
        ColumnKind::Uuid => DataType::FixedSizeBinary(16),
        ColumnKind::Date => DataType::Date32,
        ColumnKind::Time => DataType::Time64(TimeUnit::Microsecond),
        ColumnKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnKind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnKind::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
        ColumnKind::Enum => {
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
        }
        ColumnKind::Array(elem) => {
            let mut t = field("item", elem, typmod, 1).data_type().clone();
            for _ in 0..dims.max(1) {
                t = DataType::List(Arc::new(item_field(elem, t)));
            }
            t
        }
        ColumnKind::Text
        | ColumnKind::Json
        | ColumnKind::Jsonb
        | ColumnKind::TimeTz
        | ColumnKind::Other => DataType::Utf8,
    }
}

/// A list's element field, carrying the element's extension type.
fn item_field(elem: &ColumnKind, t: DataType) -> Field {
    let f = Field::new("item", t.clone(), true);
    // Only the innermost level is the element itself.
    if matches!(t, DataType::List(_)) {
        return f;
    }
    with_extension(f, elem)
}

/// The field of a column: its type, nullable (any column can be null in a change row: a
/// DELETE carries only the key), and the canonical extension name for uuid and json.
pub(crate) fn field(name: &str, kind: &ColumnKind, typmod: i32, dims: usize) -> Field {
    let f = Field::new(name, data_type(kind, typmod, dims), true);
    with_extension(f, kind)
}

fn with_extension(f: Field, kind: &ColumnKind) -> Field {
    match kind {
        ColumnKind::Uuid => f.with_extension_type(Uuid),
        ColumnKind::Json | ColumnKind::Jsonb => f.with_extension_type(Json::default()),
        _ => f,
    }
}

/// A builder for one column.
enum Col {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U32(UInt32Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Decimal(Decimal128Builder, i8),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Uuid(FixedSizeBinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Ts(TimestampMicrosecondBuilder),
    Interval(IntervalMonthDayNanoBuilder),
    Enum(StringDictionaryBuilder<Int32Type>),
    List(Box<ListCol>),
}

struct ListCol {
    field: FieldRef,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
    child: Col,
}

impl Col {
    fn new(t: &DataType) -> Col {
        match t {
            DataType::Boolean => Col::Bool(BooleanBuilder::new()),
            DataType::Int16 => Col::I16(Int16Builder::new()),
            DataType::Int32 => Col::I32(Int32Builder::new()),
            DataType::Int64 => Col::I64(Int64Builder::new()),
            DataType::UInt32 => Col::U32(UInt32Builder::new()),
            DataType::Float32 => Col::F32(Float32Builder::new()),
            DataType::Float64 => Col::F64(Float64Builder::new()),
            DataType::Decimal128(p, s) => Col::Decimal(
                Decimal128Builder::new().with_data_type(DataType::Decimal128(*p, *s)),
                *s,
            ),
            DataType::Binary => Col::Binary(BinaryBuilder::new()),
            DataType::FixedSizeBinary(_) => Col::Uuid(FixedSizeBinaryBuilder::new(16)),
            DataType::Date32 => Col::Date(Date32Builder::new()),
            DataType::Time64(_) => Col::Time(Time64MicrosecondBuilder::new()),
            DataType::Timestamp(_, tz) => {
                Col::Ts(TimestampMicrosecondBuilder::new().with_timezone_opt(tz.clone()))
            }
            DataType::Interval(_) => Col::Interval(IntervalMonthDayNanoBuilder::new()),
            DataType::Dictionary(_, _) => Col::Enum(StringDictionaryBuilder::new()),
            DataType::List(f) => Col::List(Box::new(ListCol {
                field: f.clone(),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
                child: Col::new(f.data_type()),
            })),
            _ => Col::Utf8(StringBuilder::new()),
        }
    }

    fn append_null(&mut self) {
        match self {
            Col::Bool(b) => b.append_null(),
            Col::I16(b) => b.append_null(),
            Col::I32(b) => b.append_null(),
            Col::I64(b) => b.append_null(),
            Col::U32(b) => b.append_null(),
            Col::F32(b) => b.append_null(),
            Col::F64(b) => b.append_null(),
            Col::Decimal(b, _) => b.append_null(),
            Col::Utf8(b) => b.append_null(),
            Col::Binary(b) => b.append_null(),
            Col::Uuid(b) => b.append_null(),
            Col::Date(b) => b.append_null(),
            Col::Time(b) => b.append_null(),
            Col::Ts(b) => b.append_null(),
            Col::Interval(b) => b.append_null(),
            Col::Enum(b) => b.append_null(),
            Col::List(l) => {
                let end = *l.offsets.last().unwrap_or(&0);
                l.offsets.push(end);
                l.nulls.append_null();
            }
        }
    }

    /// Appends exactly one slot: the value, or null. Returns how many values (this one, or
    /// elements of an array) could not be represented and were written as null.
    fn append(&mut self, v: &Value) -> u64 {
        if v.is_null() {
            self.append_null();
            return 0;
        }
        let ok = match (&mut *self, v) {
            (Col::Bool(b), Value::Bool(x)) => {
                b.append_value(*x);
                true
            }
            (Col::I16(b), Value::Int(i)) => put(i16::try_from(*i).ok(), |x| b.append_value(x)),
            (Col::I32(b), Value::Int(i)) => put(i32::try_from(*i).ok(), |x| b.append_value(x)),
            (Col::I64(b), Value::Int(i)) => {
                b.append_value(*i);
                true
            }
            (Col::U32(b), Value::Int(i)) => put(u32::try_from(*i).ok(), |x| b.append_value(x)),
            (Col::F32(b), Value::Float(f)) => {
                // float4 values print with enough digits to round-trip through f32.
                b.append_value(*f as f32);
                true
            }
            (Col::F64(b), Value::Float(f)) => {
                b.append_value(*f);
                true
            }
            (Col::Decimal(b, scale), Value::Numeric(t)) => {
                put(convert::decimal(t, *scale), |x| b.append_value(x))
            }
            (Col::Utf8(b), v) => {
                b.append_value(text_of(v));
                true
            }
            (Col::Binary(b), Value::Bytea(x)) => {
                b.append_value(x);
                true
            }
            (Col::Uuid(b), Value::Uuid(t)) => put(convert::uuid(t), |x| {
                // 16 bytes into a 16-byte builder cannot fail.
                let _ = b.append_value(x);
            }),
            (Col::Date(b), Value::Date(t)) => put(convert::date32(t), |x| b.append_value(x)),
            (Col::Time(b), Value::Time(t)) => put(convert::time64(t), |x| b.append_value(x)),
            (Col::Ts(b), Value::Timestamp(t) | Value::TimestampTz(t)) => {
                put(convert::timestamp_us(t), |x| b.append_value(x))
            }
            (Col::Interval(b), Value::Interval(t)) => put(convert::interval(t), |(m, d, ns)| {
                b.append_value(IntervalMonthDayNano::new(m, d, ns))
            }),
            (Col::Enum(b), Value::Text(t)) => {
                b.append_value(t);
                true
            }
            (Col::List(l), Value::Array(items)) => {
                let mut lost = 0;
                for item in items {
                    lost += l.child.append(item);
                }
                let end = *l.offsets.last().unwrap_or(&0);
                // An array's elements number at most 2^27 (MaxArraySize), far below i32::MAX
                // per batch given the batch byte bound.
                l.offsets.push(end.saturating_add(items.len() as i32));
                l.nulls.append_non_null();
                return lost;
            }
            _ => false,
        };
        if ok {
            0
        } else {
            self.append_null();
            1
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Col::Bool(b) => Arc::new(b.finish()),
            Col::I16(b) => Arc::new(b.finish()),
            Col::I32(b) => Arc::new(b.finish()),
            Col::I64(b) => Arc::new(b.finish()),
            Col::U32(b) => Arc::new(b.finish()),
            Col::F32(b) => Arc::new(b.finish()),
            Col::F64(b) => Arc::new(b.finish()),
            Col::Decimal(b, _) => Arc::new(b.finish()),
            Col::Utf8(b) => Arc::new(b.finish()),
            Col::Binary(b) => Arc::new(b.finish()),
            Col::Uuid(b) => Arc::new(b.finish()),
            Col::Date(b) => Arc::new(b.finish()),
            Col::Time(b) => Arc::new(b.finish()),
            Col::Ts(b) => Arc::new(b.finish()),
            Col::Interval(b) => Arc::new(b.finish()),
            Col::Enum(b) => Arc::new(b.finish()),
            Col::List(l) => {
                let offsets = std::mem::replace(&mut l.offsets, vec![0]);
                let child = l.child.finish();
                let nulls = l.nulls.finish();
                Arc::new(ListArray::new(
                    l.field.clone(),
                    OffsetBuffer::new(offsets.into()),
                    child,
                    nulls,
                ))
            }
        }
    }
}

/// Appends `x` when the conversion worked.
fn put<T>(x: Option<T>, append: impl FnOnce(T)) -> bool {
    match x {
        Some(x) => {
            append(x);
            true
        }
        None => false,
    }
}

/// A value as text for a Utf8 column: text-like values as they are, json as its JSON text,
/// arrays (of a type kept as text) and scalars in their JSON form.
fn text_of(v: &Value) -> Cow<'_, str> {
    match v {
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Bytea(b) => Cow::Owned(bytea_hex(b)),
        Value::Float(_) | Value::Array(_) | Value::Null => {
            Cow::Owned(serde_json::to_string(v).unwrap_or_default())
        }
        other => Cow::Borrowed(other.as_str().unwrap_or_default()),
    }
}

/// A rough size of a value in a batch, for the byte bound.
fn approx_size(v: &Value) -> usize {
    match v {
        Value::Array(items) => 8 + items.iter().map(approx_size).sum::<usize>(),
        Value::Bytea(b) => 4 + b.len(),
        Value::Json(j) => 4 + j.get().len(),
        other => other.as_str().map_or(8, |s| 4 + s.len()),
    }
}

/// The array nesting of each column (`pg_attribute.attndims`), by column name; columns not
/// named have one level.
pub(crate) type Dims = std::collections::HashMap<String, usize>;

/// Changes of one table version, being built into a batch.
pub(crate) struct TableBuilder {
    pub(crate) relation: Arc<Relation>,
    /// The table the batch is written for: the relation's, or the partitioned table its rows
    /// are reported for.
    pub(crate) reported: (Arc<str>, Arc<str>),
    schema: SchemaRef,
    cols: Vec<Col>,
    old: Option<Vec<Col>>,
    op: StringDictionaryBuilder<Int8Type>,
    lsn: UInt64Builder,
    commit_lsn: UInt64Builder,
    xid: UInt32Builder,
    commit_ts: TimestampMicrosecondBuilder,
    unchanged: ListBuilder<StringBuilder>,
    pub(crate) rows: usize,
    pub(crate) bytes: usize,
    pub(crate) opened: Instant,
    /// The sink's `write` call that brought the first row (`Sink::held_from`).
    pub(crate) since: u64,
    /// Commit positions of the first and last row.
    pub(crate) first: Lsn,
    pub(crate) last: Lsn,
    /// Values written as null because their column's type cannot hold them, per column.
    lost: Vec<u64>,
}

impl TableBuilder {
    pub(crate) fn new(relation: Arc<Relation>, dims: &Dims, old: bool) -> Result<TableBuilder> {
        let mut fields: Vec<Field> = relation
            .columns
            .iter()
            .map(|c| {
                let d = dims.get(&*c.name).copied().unwrap_or(1);
                field(&c.name, &c.kind, c.type_modifier, d)
            })
            .collect();
        let table_cols = fields.len();
        for c in &relation.columns {
            if META_COLUMNS.contains(&&*c.name) || c.name.starts_with(OLD_PREFIX) {
                return Err(Error::Setup(format!(
                    "table {}.{} has a column named {}, a name the Arrow sink uses for its own \
                     columns ({} and {OLD_PREFIX}*): rename the column or leave the table out \
                     of --tables",
                    relation.namespace,
                    relation.name,
                    c.name,
                    META_COLUMNS.join(", ")
                )));
            }
        }
        fields.push(Field::new(
            "_op",
            DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8)),
            false,
        ));
        fields.push(Field::new("_lsn", DataType::UInt64, false));
        fields.push(Field::new("_commit_lsn", DataType::UInt64, false));
        fields.push(Field::new("_xid", DataType::UInt32, true));
        fields.push(Field::new(
            "_commit_ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ));
        fields.push(Field::new(
            "_unchanged",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ));
        if old {
            for i in 0..table_cols {
                let f = fields[i].clone();
                fields.push(f.with_name(format!("{OLD_PREFIX}{}", fields[i].name())));
            }
        }
        let cols = fields[..table_cols]
            .iter()
            .map(|f| Col::new(f.data_type()))
            .collect();
        let old_cols = old.then(|| {
            fields[..table_cols]
                .iter()
                .map(|f| Col::new(f.data_type()))
                .collect()
        });
        Ok(TableBuilder {
            schema: Arc::new(Schema::new(fields)),
            lost: vec![0; table_cols],
            reported: (relation.namespace.clone(), relation.name.clone()),
            relation,
            cols,
            old: old_cols,
            op: StringDictionaryBuilder::new(),
            lsn: UInt64Builder::new(),
            commit_lsn: UInt64Builder::new(),
            xid: UInt32Builder::new(),
            commit_ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            unchanged: ListBuilder::new(StringBuilder::new()),
            rows: 0,
            bytes: 0,
            opened: Instant::now(),
            since: 0,
            first: Lsn::ZERO,
            last: Lsn::ZERO,
        })
    }

    /// Adds one row change (INSERT, UPDATE, DELETE, TRUNCATE) of this table version.
    pub(crate) fn push(&mut self, ev: &Event) {
        if self.rows == 0 {
            self.first = ev.commit_lsn;
            self.opened = Instant::now();
        }
        self.last = ev.commit_lsn;
        self.rows += 1;
        // TRUNCATE has no row: every table column is null.
        let data = if ev.op == Op::Truncate {
            None
        } else {
            ev.data.as_ref()
        };
        self.bytes += fill(&self.relation, &mut self.cols, &mut self.lost, data);
        if let Some(old_cols) = &mut self.old {
            let old = if ev.op == Op::Update {
                ev.old.as_ref()
            } else {
                None
            };
            self.bytes += fill(&self.relation, old_cols, &mut self.lost, old);
        }
        self.op.append_value(ev.op.as_str());
        self.lsn.append_value(ev.lsn.0);
        self.commit_lsn.append_value(ev.commit_lsn.0);
        self.xid.append_option(ev.xid);
        self.commit_ts.append_option(ev.ts.map(|t| t.unix_micros()));
        for c in &ev.unchanged {
            self.unchanged.values().append_value(c);
        }
        self.unchanged.append(true);
        self.bytes += 40;
    }

    /// The rows so far as one batch (with `metadata` on its schema); the builder starts over
    /// empty. Logs how many values of which column were written as null for want of a type
    /// that holds them.
    pub(crate) fn finish(
        &mut self,
        metadata: std::collections::HashMap<String, String>,
    ) -> Result<RecordBatch> {
        let mut arrays: Vec<ArrayRef> = self.cols.iter_mut().map(Col::finish).collect();
        arrays.push(Arc::new(self.op.finish()));
        arrays.push(Arc::new(self.lsn.finish()));
        arrays.push(Arc::new(self.commit_lsn.finish()));
        arrays.push(Arc::new(self.xid.finish()));
        arrays.push(Arc::new(self.commit_ts.finish()));
        arrays.push(Arc::new(self.unchanged.finish()));
        if let Some(old) = &mut self.old {
            arrays.extend(old.iter_mut().map(Col::finish));
        }
        for (c, lost) in self.relation.columns.iter().zip(&mut self.lost) {
            if *lost > 0 {
                tracing::warn!(
                    "{lost} value(s) of {}.{}.{} have no {} representation and were written as \
                     null (NaN in a decimal column, or an array nested deeper than declared)",
                    self.relation.namespace,
                    self.relation.name,
                    c.name,
                    self.schema
                        .field_with_name(&c.name)
                        .map_or_else(|_| "Arrow".to_string(), |f| f.data_type().to_string())
                );
                *lost = 0;
            }
        }
        self.rows = 0;
        self.bytes = 0;
        let schema = Arc::new(Schema::new_with_metadata(
            self.schema.fields().clone(),
            metadata,
        ));
        RecordBatch::try_new(schema, arrays).map_err(|e| Error::Arrow {
            target: format!("{}.{}", self.relation.namespace, self.relation.name),
            message: e.to_string(),
        })
    }
}

/// Appends one row's values in table order (null where the row lacks a column: a DELETE's
/// non-key columns, an UPDATE's unchanged TOAST values); returns the approximate bytes.
fn fill(rel: &Relation, cols: &mut [Col], lost: &mut [u64], row: Option<&Row>) -> usize {
    let Some(row) = row else {
        cols.iter_mut().for_each(Col::append_null);
        return cols.len();
    };
    let mut bytes = 0;
    let mut j = 0;
    for (i, c) in rel.columns.iter().enumerate() {
        // Row columns are the relation's, in table order, some left out; names are shared.
        // A row of another partition has the same columns, perhaps in another order: found by
        // name then (rarely: only where the partitions' column orders differ).
        let found = match row.columns.get(j) {
            Some(rc) if Arc::ptr_eq(&rc.name, &c.name) || rc.name == c.name => {
                j += 1;
                Some(rc)
            }
            _ => row.columns.iter().find(|rc| rc.name == c.name),
        };
        match found {
            Some(rc) => {
                lost[i] += cols[i].append(&rc.value);
                bytes += approx_size(&rc.value);
            }
            None => cols[i].append_null(),
        }
    }
    bytes
}
