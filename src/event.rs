//! The public event model: what every sink and every assertion sees.
//!
//! The JSON form of [`Event`] is a contract (`schemas/event.schema.json`, ARCHITECTURE.md "Event"):
//! field names and value encodings here must not change without changing the schema and the tests
//! that validate real output against it. Serialisation is hand-written so the field order is fixed
//! and no intermediate `serde_json::Value` is built on the hot path.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;

/// A WAL position. Printed as PostgreSQL prints `pg_lsn`: two hex halves, `16/B374D848`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position `0/0`, which START_REPLICATION reads as "where the slot is".
    pub const ZERO: Lsn = Lsn(0);
}

impl Lsn {
    /// Writes the `16/B374D848` form into `buf`, returning the used prefix.
    pub(crate) fn format_into(self, buf: &mut [u8; 17]) -> &str {
        const HEXU: &[u8; 16] = b"0123456789ABCDEF";
        fn half(mut v: u32, out: &mut [u8]) -> usize {
            let mut tmp = [0u8; 8];
            let mut n = 0;
            loop {
                tmp[n] = HEXU[(v & 15) as usize];
                n += 1;
                v >>= 4;
                if v == 0 {
                    break;
                }
            }
            for i in 0..n {
                out[i] = tmp[n - 1 - i];
            }
            n
        }
        let hi = half((self.0 >> 32) as u32, &mut buf[..]);
        buf[hi] = b'/';
        let lo = half(self.0 as u32, &mut buf[hi + 1..]);
        // Only ASCII hex digits and '/' were written.
        std::str::from_utf8(&buf[..hi + 1 + lo]).unwrap_or("0/0")
    }
}

/// Writes `v` into `buf` as exactly `buf.len()` decimal digits, zero-padded (higher digits
/// are dropped, so `v` must fit): positions, timestamps and dates of every event go through
/// here, and `write!` costs several times as much.
pub(crate) fn put_digits(buf: &mut [u8], mut v: u64) {
    for slot in buf.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 17];
        f.write_str(self.format_into(&mut buf))
    }
}

/// The error for a string that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an LSN: expected two hexadecimal halves such as 16/B374D848")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 17];
        s.serialize_str(self.format_into(&mut buf))
    }
}

/// A server timestamp: microseconds since 2000-01-01 00:00:00 UTC (the PostgreSQL epoch, which
/// is what pgoutput's Begin/Commit carry). Printed as ISO-8601 UTC, `2026-11-22T03:22:01.123456Z`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// Seconds between 1970-01-01 and 2000-01-01.
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

impl Timestamp {
    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0 + PG_EPOCH_UNIX_SECS * 1_000_000
    }

    /// The timestamp for a point given as microseconds since the Unix epoch.
    pub fn from_unix_micros(us: i64) -> Timestamp {
        Timestamp(us - PG_EPOCH_UNIX_SECS * 1_000_000)
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm, proleptic Gregorian).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year 0 = 1 BC); the inverse of
/// [`civil_from_days`] (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Timestamp {
    /// Writes `YYYY-MM-DDTHH:MM:SS.ffffffZ` into `buf` (years 0 to 9999; others fall back to
    /// the general formatter, which writes `+10000-...` / `-0001-...`).
    pub(crate) fn format_into(self, buf: &mut [u8; 27]) -> Option<&str> {
        let us = self.unix_micros();
        let secs = us.div_euclid(1_000_000);
        let micros = us.rem_euclid(1_000_000) as u32;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        if !(0..=9999).contains(&y) {
            return None;
        }
        let sod = secs.rem_euclid(86_400) as u32;
        put_digits(&mut buf[0..4], y.unsigned_abs());
        buf[4] = b'-';
        put_digits(&mut buf[5..7], u64::from(m));
        buf[7] = b'-';
        put_digits(&mut buf[8..10], u64::from(d));
        buf[10] = b'T';
        put_digits(&mut buf[11..13], u64::from(sod / 3600));
        buf[13] = b':';
        put_digits(&mut buf[14..16], u64::from((sod / 60) % 60));
        buf[16] = b':';
        put_digits(&mut buf[17..19], u64::from(sod % 60));
        buf[19] = b'.';
        put_digits(&mut buf[20..26], u64::from(micros));
        buf[26] = b'Z';
        std::str::from_utf8(&buf[..]).ok()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 27];
        if let Some(s) = self.format_into(&mut buf) {
            return f.write_str(s);
        }
        let us = self.unix_micros();
        let secs = us.div_euclid(1_000_000);
        let micros = us.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        // ISO-8601 expanded years, as for date and timestamp values (decode::value::temporal).
        match y {
            10_000.. => write!(f, "+{y}")?,
            _ => write!(f, "-{:04}", y.unsigned_abs())?,
        }
        write!(
            f,
            "-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 27];
        match self.format_into(&mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.collect_str(self),
        }
    }
}

/// What happened. BEGIN and COMMIT bracket a transaction's changes; MESSAGE is a logical
/// decoding message (`pg_logical_emit_message`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Begin,
    Insert,
    Update,
    Delete,
    Truncate,
    Message,
    Commit,
    /// A row of a table as it was when a snapshot read it (`--snapshot`): not a change, the
    /// state the changes after it apply to. Debezium's `r`.
    Read,
    /// Not a WAL event: a `walwatch proxy` action (`Event::proxy`). Never decoded from the
    /// stream and never given to a sink; assertions see it beside the WAL's events.
    Proxy,
}

impl Op {
    /// The upper-case name used in JSON and on the terminal.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Begin => "BEGIN",
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
            Op::Message => "MESSAGE",
            Op::Commit => "COMMIT",
            Op::Read => "READ",
            Op::Proxy => "PROXY",
        }
    }

    /// Whether this op is about rows of a table: a change (INSERT, UPDATE, DELETE, TRUNCATE)
    /// or a row a snapshot read (READ).
    pub fn is_change(self) -> bool {
        matches!(
            self,
            Op::Insert | Op::Update | Op::Delete | Op::Truncate | Op::Read
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that names no [`Op`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not an operation: expected one of insert, update, delete, truncate, message, begin, commit, read"
)]
pub struct OpParseError(pub String);

impl FromStr for Op {
    type Err = OpParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_uppercase().as_str() {
            "BEGIN" => Op::Begin,
            "INSERT" => Op::Insert,
            "UPDATE" => Op::Update,
            "DELETE" => Op::Delete,
            "TRUNCATE" => Op::Truncate,
            "MESSAGE" => Op::Message,
            "COMMIT" => Op::Commit,
            "READ" => Op::Read,
            _ => return Err(OpParseError(s.to_string())),
        })
    }
}

impl Serialize for Op {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A column value, typed by the column's PostgreSQL type.
///
/// JSON encodings (ARCHITECTURE.md "Types"): integers and floats as numbers (NaN and ±Infinity
/// as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`), numeric as an exact string, json/jsonb
/// embedded, bytea as `\x` hex, temporal types as ISO-8601 strings, arrays as arrays, anything
/// else as its text.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// int2, int4, int8, oid.
    Int(i64),
    /// float4, float8.
    Float(f64),
    /// numeric, exactly as the server printed it (`12.50`, `NaN`, `Infinity`).
    Numeric(String),
    /// text, varchar, bpchar, name, char, enums, inet, cidr, macaddr, money and other
    /// text-like types.
    Text(String),
    Bytea(Vec<u8>),
    /// json and jsonb, kept as the server's JSON text and embedded verbatim.
    Json(JsonText),
    Uuid(String),
    /// `YYYY-MM-DD`, or `infinity` / `-infinity`. Years are ISO-8601 expanded years, as in every
    /// temporal value: `0000` is 1 BC, `-4713` is 4714 BC, years after 9999 are `+10000` etc.
    Date(String),
    /// `HH:MM:SS[.ffffff]`.
    Time(String),
    /// `HH:MM:SS[.ffffff]+HH:MM`.
    TimeTz(String),
    /// `YYYY-MM-DDTHH:MM:SS[.ffffff]` (years as in [`Value::Date`]), or `infinity` / `-infinity`.
    Timestamp(String),
    /// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` (always UTC), or `infinity` / `-infinity`.
    TimestampTz(String),
    /// The server's `postgres` interval style, e.g. `1 year 2 mons 3 days 04:05:06`.
    Interval(String),
    Array(Vec<Value>),
    /// A type walwatch does not map: its text as the server printed it.
    Other(String),
}

impl Value {
    /// The value as text if it is text-like (text, numeric, uuid, temporal, other).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Numeric(s)
            | Value::Text(s)
            | Value::Uuid(s)
            | Value::Date(s)
            | Value::Time(s)
            | Value::TimeTz(s)
            | Value::Timestamp(s)
            | Value::TimestampTz(s)
            | Value::Interval(s)
            | Value::Other(s) => Some(s),
            Value::Json(raw) => Some(raw.get()),
            _ => None,
        }
    }

    /// The value as an integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// Valid JSON text (json or jsonb output), embedded verbatim when an event is serialised.
#[derive(Clone, Debug)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// Checks that `text` is one JSON value; returns the text back if it is not.
    pub fn new(text: String) -> Result<JsonText, String> {
        match serde_json::from_str::<&RawValue>(&text) {
            Ok(_) => Ok(JsonText(
                RawValue::from_string(text).map_err(|_| String::new())?,
            )),
            Err(_) => Err(text),
        }
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Lower-case hex digits, for bytea.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// `\x` followed by lower-case hex: PostgreSQL's `bytea_output = hex` form.
pub(crate) fn bytea_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) if f.is_nan() => s.serialize_str("NaN"),
            Value::Float(f) if f.is_infinite() => {
                s.serialize_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
            }
            Value::Float(f) => s.serialize_f64(*f),
            Value::Bytea(b) => s.serialize_str(&bytea_hex(b)),
            Value::Json(raw) => raw.serialize(s),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Numeric(t)
            | Value::Text(t)
            | Value::Uuid(t)
            | Value::Date(t)
            | Value::Time(t)
            | Value::TimeTz(t)
            | Value::Timestamp(t)
            | Value::TimestampTz(t)
            | Value::Interval(t)
            | Value::Other(t) => s.serialize_str(t),
        }
    }
}

/// One column of a [`Row`]. The name is shared with the relation cache, so a row costs no
/// string allocation per column name.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: Arc<str>,
    pub value: Value,
}

/// A row's columns in table order. Serialised as a JSON object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub columns: Vec<Column>,
}

impl Row {
    /// The value of the named column, if the row has that column.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.columns
            .iter()
            .find(|c| &*c.name == name)
            .map(|c| &c.value)
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.columns.iter().map(|c| (&*c.name, &c.value))
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.columns.len()))?;
        for c in &self.columns {
            map.serialize_entry(&*c.name, &c.value)?;
        }
        map.end()
    }
}

/// A table as its last Relation message described it: the shape every row event of it was
/// decoded with. Shared (one `Arc` per table version) by every event of that version, so a sink
/// that needs column types (Arrow) sees a schema change as a new relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// The schema; the wire's "" (pg_catalog) is stored as `pg_catalog`.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in table order (what tuple data is laid out by).
    pub columns: Vec<RelationColumn>,
    pub(crate) key_count: usize,
}

impl Relation {
    /// Whether any column is part of the replica identity key.
    pub fn has_key(&self) -> bool {
        self.key_count > 0
    }

    /// Whether `other` has the same columns (names, types, modifiers, key flags): rows of both
    /// fit one typed schema.
    pub fn same_columns(&self, other: &Relation) -> bool {
        self.columns == other.columns
    }

    /// The same columns, perhaps in another order: partitions of one partitioned table whose
    /// columns were created in another order (a table made on its own, then attached).
    pub fn same_column_set(&self, other: &Relation) -> bool {
        self.columns.len() == other.columns.len()
            && self.columns.iter().all(|c| other.columns.contains(c))
    }
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn {
    /// Shared with every [`Row`] decoded for this relation.
    pub name: Arc<str>,
    pub type_oid: u32,
    /// `atttypmod`: for numeric `((precision << 16) | scale) + 4`, -1 when unconstrained; for
    /// an array column it applies to the elements.
    pub type_modifier: i32,
    /// What the type is, domains resolved (from the type registry when the Relation arrived).
    pub kind: ColumnKind,
    /// Part of the replica identity key (Relation column flag bit 1).
    pub is_key: bool,
}

/// `pg_class.relreplident`, as sent in the Relation message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// 'd': the primary key.
    Default,
    /// 'n': nothing; updates and deletes carry no old values.
    Nothing,
    /// 'f': the whole row.
    Full,
    /// 'i': a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    pub(crate) fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// A column's type as walwatch maps it, domains resolved to their base type. The [`Value`]
/// variant a column's values decode to follows from it (int2/int4/int8 are all [`Value::Int`],
/// for example); typed sinks need the declared type itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar, name, xml, `"char"`.
    Text,
    Bytea,
    Uuid,
    Json,
    Jsonb,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Enum,
    /// An array of the element kind.
    Array(Box<ColumnKind>),
    /// Anything else (inet, money, composite, range, extension types): kept as text.
    Other,
}

/// The payload of a MESSAGE event (`pg_logical_emit_message`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessage {
    pub transactional: bool,
    pub prefix: String,
    pub content: Vec<u8>,
}

impl LogicalMessage {
    /// The content as text when it is valid UTF-8.
    pub fn content_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.content).ok()
    }
}

impl Serialize for LogicalMessage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("prefix", &self.prefix)?;
        match self.content_str() {
            Some(text) => map.serialize_entry("content", text)?,
            None => map.serialize_entry("content", &bytea_hex(&self.content))?,
        }
        map.serialize_entry("transactional", &self.transactional)?;
        map.end()
    }
}

/// A table by schema and name, as events name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct TableName {
    pub schema: Arc<str>,
    pub table: Arc<str>,
}

/// One decoded change, transaction boundary or logical message.
///
/// * `lsn`: the WAL position of this message (the XLogData start the server sent it at).
/// * `commit_lsn`: the position of the commit record of the transaction it belongs to, so a
///   consumer can deduplicate after an at-least-once redelivery. For a non-transactional MESSAGE
///   it equals `lsn`.
/// * `end_lsn`: for COMMIT, the position just past the commit record: what walwatch confirms to
///   the server once the transaction is durable. Not part of the JSON contract.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub op: Op,
    pub schema: Option<Arc<str>>,
    pub table: Option<Arc<str>>,
    pub lsn: Lsn,
    pub commit_lsn: Lsn,
    pub end_lsn: Option<Lsn>,
    pub xid: Option<u32>,
    /// The transaction's commit time.
    pub ts: Option<Timestamp>,
    /// The new row (INSERT, UPDATE) or the old row / key columns (DELETE).
    pub data: Option<Row>,
    /// Previous values, when the server sent them (REPLICA IDENTITY FULL, or a key change).
    pub old: Option<Row>,
    /// The primary key of the row when the table has one (set by the pipeline whatever the
    /// replica identity), else its replica-identity key columns (what the decoder sets).
    pub key: Option<Row>,
    /// Columns holding an unchanged TOASTed value the server did not send.
    pub unchanged: Vec<Arc<str>>,
    /// MESSAGE events only.
    pub message: Option<LogicalMessage>,
    /// For a row event reported under a partition's name: the partitioned table it belongs to
    /// (the topmost watched ancestor, else the partition tree's root). JSON `partition_of`,
    /// present only then.
    pub partition_of: Option<Arc<TableName>>,
    /// The relation a row event (INSERT, UPDATE, DELETE, TRUNCATE) was decoded with; `None`
    /// for BEGIN, COMMIT, MESSAGE and for events read back from JSON. Not part of the JSON.
    pub relation: Option<Arc<Relation>>,
    /// `Op::Proxy` only: what the fault proxy did.
    pub proxy: Option<Arc<ProxyFields>>,
}

/// A "proxy" event's own fields: the proxy's sequence number and its `data` object (action,
/// query, rule, message, connection, ...; `walwatch::proxy::ProxyData`), kept as JSON so the
/// event model does not depend on the proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyFields {
    pub seq: u64,
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    /// An event with only the op and positions set; the decoder fills in the rest.
    pub fn new(op: Op, lsn: Lsn) -> Event {
        Event {
            op,
            schema: None,
            table: None,
            lsn,
            commit_lsn: Lsn::ZERO,
            end_lsn: None,
            xid: None,
            ts: None,
            data: None,
            old: None,
            key: None,
            unchanged: Vec::new(),
            message: None,
            partition_of: None,
            relation: None,
            proxy: None,
        }
    }

    /// A "proxy" event: `ts` is when the proxy recorded it.
    pub fn from_proxy(fields: ProxyFields, ts: Timestamp) -> Event {
        Event {
            ts: Some(ts),
            proxy: Some(Arc::new(fields)),
            ..Event::new(Op::Proxy, Lsn::ZERO)
        }
    }

    /// The proxy's fields, for a "proxy" event.
    pub fn proxy(&self) -> Option<&ProxyFields> {
        self.proxy.as_deref()
    }

    pub fn op(&self) -> Op {
        self.op
    }

    /// The table name, or "" for BEGIN, COMMIT and MESSAGE.
    pub fn table(&self) -> &str {
        self.table.as_deref().unwrap_or("")
    }

    /// The schema name, or "" for BEGIN, COMMIT and MESSAGE.
    pub fn schema(&self) -> &str {
        self.schema.as_deref().unwrap_or("")
    }

    pub fn is_insert(&self) -> bool {
        self.op == Op::Insert
    }

    pub fn is_update(&self) -> bool {
        self.op == Op::Update
    }

    pub fn is_delete(&self) -> bool {
        self.op == Op::Delete
    }

    /// Serialise as one line of JSONL (without the newline) into `out`.
    ///
    /// The hot path of every JSON sink: written directly, with the envelope's keys as constant
    /// bytes and positions formatted without `core::fmt`. It produces exactly what the
    /// `Serialize` impl produces (a test checks both on every kind of value).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        crate::event_json::write_event(self, out);
    }

    /// The event as a JSON string.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(p) = &self.proxy {
            let mut map = s.serialize_map(Some(4))?;
            map.serialize_entry("type", "proxy")?;
            map.serialize_entry("seq", &p.seq)?;
            map.serialize_entry("ts", &self.ts)?;
            map.serialize_entry("data", &p.data)?;
            return map.end();
        }
        let mut map = s.serialize_map(Some(13))?;
        map.serialize_entry("type", "wal")?;
        map.serialize_entry("op", &self.op)?;
        map.serialize_entry("schema", &self.schema.as_deref())?;
        map.serialize_entry("table", &self.table.as_deref())?;
        if let Some(p) = &self.partition_of {
            map.serialize_entry("partition_of", &**p)?;
        }
        map.serialize_entry("lsn", &self.lsn)?;
        map.serialize_entry("commit_lsn", &self.commit_lsn)?;
        map.serialize_entry("xid", &self.xid)?;
        map.serialize_entry("ts", &self.ts)?;
        match &self.message {
            Some(m) => map.serialize_entry("data", m)?,
            None => map.serialize_entry("data", &self.data)?,
        }
        map.serialize_entry("old", &self.old)?;
        map.serialize_entry("key", &self.key)?;
        let unchanged: Vec<&str> = self.unchanged.iter().map(|c| &**c).collect();
        map.serialize_entry("unchanged", &unchanged)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1A2B3C8"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
    }

    #[test]
    fn lsn_rejects_malformed_text() {
        for bad in ["", "0", "/0", "0/", "G/0", "1/2/3", "123456789/0", " 0/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn timestamp_prints_iso_utc() {
        assert_eq!(Timestamp(0).to_string(), "2000-01-01T00:00:00.000000Z");
        // 2026-11-22T03:22:01.123456Z is 1_795_317_721.123456 s after the Unix epoch.
        let ts = Timestamp::from_unix_micros(1_795_317_721_123_456);
        assert_eq!(ts.to_string(), "2026-11-22T03:22:01.123456Z");
        assert_eq!(Timestamp(-1).to_string(), "1999-12-31T23:59:59.999999Z");
        // Outside 0000 to 9999: ISO-8601 expanded years.
        assert_eq!(
            Timestamp(252_455_616_000_000_000).to_string(),
            "+10000-01-01T00:00:00.000000Z"
        );
        // 0001-01-01 BC (year 0) minus 1 µs.
        assert_eq!(
            Timestamp(-63_113_904_000_000_001).to_string(),
            "-0001-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn values_serialise_per_the_contract() {
        let json = |v: Value| serde_json::to_string(&v).unwrap();
        assert_eq!(json(Value::Null), "null");
        assert_eq!(json(Value::Int(-5)), "-5");
        assert_eq!(json(Value::Float(1.5)), "1.5");
        assert_eq!(json(Value::Float(f64::NAN)), "\"NaN\"");
        assert_eq!(json(Value::Float(f64::NEG_INFINITY)), "\"-Infinity\"");
        assert_eq!(json(Value::Numeric("12.50".into())), "\"12.50\"");
        assert_eq!(
            json(Value::Bytea(vec![0xde, 0xad, 0x01])),
            "\"\\\\xdead01\""
        );
        let raw = JsonText::new("{\"a\": [1, 2]}".into()).unwrap();
        assert_eq!(json(Value::Json(raw)), "{\"a\": [1, 2]}");
        assert_eq!(
            json(Value::Array(vec![Value::Int(1), Value::Null])),
            "[1,null]"
        );
    }

    #[test]
    fn event_serialises_with_every_contract_field_in_order() {
        let id: Arc<str> = Arc::from("id");
        let mut e = Event::new(Op::Insert, Lsn(0x1A2B3C8));
        e.schema = Some(Arc::from("public"));
        e.table = Some(Arc::from("orders"));
        e.commit_lsn = Lsn(0x1A2B4F0);
        e.xid = Some(751);
        e.ts = Some(Timestamp::from_unix_micros(1_795_317_721_123_456));
        e.data = Some(Row {
            columns: vec![Column {
                name: id.clone(),
                value: Value::Int(1),
            }],
        });
        e.key = e.data.clone();
        assert_eq!(
            e.to_json(),
            r#"{"type":"wal","op":"INSERT","schema":"public","table":"orders","lsn":"0/1A2B3C8","commit_lsn":"0/1A2B4F0","xid":751,"ts":"2026-11-22T03:22:01.123456Z","data":{"id":1},"old":null,"key":{"id":1},"unchanged":[]}"#
        );
    }
}
