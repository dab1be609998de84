//! The fast JSON writer for [`Event`]: the hot path of every JSON sink.
//!
//! It writes the same bytes as `serde_json::to_writer(event)` through the `Serialize` impls in
//! `event.rs` (the reference), but without serde's map machinery: the envelope's keys are
//! constant bytes, integers go through `itoa`, positions and timestamps are formatted on the
//! stack, and strings are escaped by serde_json's own escaper.

use crate::event::{Event, Row, Value, bytea_hex};

/// A JSON string, escaped exactly as serde_json escapes: `"` and backslash, the short escapes
/// for backspace, form feed, newline, return and tab, other control characters as `\u00xx`;
/// everything else verbatim.
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    match first_escape(bytes) {
        None => out.extend_from_slice(bytes),
        Some(at) => escape_from(out, bytes, at),
    }
    out.push(b'"');
}

/// The index of the first byte JSON needs escaped (`"`, backslash, below 0x20), if any.
/// Most strings have none, so eight bytes are checked at a time (the classic SWAR tests: a
/// word's "some byte is below n" and "some byte is zero"), then the last few one by one.
fn first_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut at = 0;
    for word in bytes.chunks_exact(8) {
        let w = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]));
        let below_space = w.wrapping_sub(ONES * 0x20) & !w;
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let zero_in = |x: u64| x.wrapping_sub(ONES) & !x;
        if (below_space | zero_in(quote) | zero_in(backslash)) & HIGH != 0 {
            break;
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .map(|i| at + i)
}

/// Appends `bytes`, escaped, knowing that nothing before `first` needs it.
fn escape_from(out: &mut Vec<u8>, bytes: &[u8], first: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&bytes[..first]);
    let mut start = first;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// `{"schema":...,"table":...}`: how events name a table (`partition_of`).
pub(crate) fn table_name(out: &mut Vec<u8>, t: &crate::event::TableName) {
    out.extend_from_slice(b"{\"schema\":");
    string(out, &t.schema);
    out.extend_from_slice(b",\"table\":");
    string(out, &t.table);
    out.push(b'}');
}

pub(crate) fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

fn row(out: &mut Vec<u8>, r: &Row) {
    out.push(b'{');
    for (i, c) in r.columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, &c.name);
        out.push(b':');
        value(out, &c.value);
    }
    out.push(b'}');
}

pub(crate) fn opt_row(out: &mut Vec<u8>, r: Option<&Row>) {
    match r {
        Some(r) => row(out, r),
        None => out.extend_from_slice(b"null"),
    }
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => int(out, *i),
        Value::Float(_) => {
            // Rare enough to go through serde (non-finite values become strings there).
            let _ = serde_json::to_writer(&mut *out, v);
        }
        Value::Bytea(b) => string(out, &bytea_hex(b)),
        Value::Json(j) => out.extend_from_slice(j.get().as_bytes()),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value(out, item);
            }
            out.push(b']');
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
        | Value::Other(t) => string(out, t),
    }
}

pub(crate) fn write_event(e: &Event, out: &mut Vec<u8>) {
    if e.proxy.is_some() {
        // Rare (assertion reports), so serde's writer: the hot path is WAL events.
        let _ = serde_json::to_writer(&mut *out, e);
        return;
    }
    out.extend_from_slice(b"{\"type\":\"wal\",\"op\":\"");
    out.extend_from_slice(e.op.as_str().as_bytes());
    out.extend_from_slice(b"\",\"schema\":");
    opt_string(out, e.schema.as_deref());
    out.extend_from_slice(b",\"table\":");
    opt_string(out, e.table.as_deref());
    if let Some(p) = &e.partition_of {
        out.extend_from_slice(b",\"partition_of\":");
        table_name(out, p);
    }
    let mut lsn = [0u8; 17];
    out.extend_from_slice(b",\"lsn\":\"");
    out.extend_from_slice(e.lsn.format_into(&mut lsn).as_bytes());
    out.extend_from_slice(b"\",\"commit_lsn\":\"");
    out.extend_from_slice(e.commit_lsn.format_into(&mut lsn).as_bytes());
    out.extend_from_slice(b"\",\"xid\":");
    match e.xid {
        Some(x) => int(out, x),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"ts\":");
    match e.ts {
        Some(ts) => {
            let mut buf = [0u8; 27];
            match ts.format_into(&mut buf) {
                Some(text) => {
                    out.push(b'"');
                    out.extend_from_slice(text.as_bytes());
                    out.push(b'"');
                }
                None => string(out, &ts.to_string()),
            }
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"data\":");
    match &e.message {
        Some(m) => {
            let _ = serde_json::to_writer(&mut *out, m);
        }
        None => opt_row(out, e.data.as_ref()),
    }
    out.extend_from_slice(b",\"old\":");
    opt_row(out, e.old.as_ref());
    out.extend_from_slice(b",\"key\":");
    opt_row(out, e.key.as_ref());
    out.extend_from_slice(b",\"unchanged\":[");
    for (i, name) in e.unchanged.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, name);
    }
    out.extend_from_slice(b"]}");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::event::{Column, Event, JsonText, LogicalMessage, Lsn, Op, Row, Timestamp, Value};

    fn row(cols: Vec<(&str, Value)>) -> Row {
        Row {
            columns: cols
                .into_iter()
                .map(|(n, value)| Column {
                    name: Arc::from(n),
                    value,
                })
                .collect(),
        }
    }

    /// The fast writer and the serde reference agree on every kind of value and field.
    #[test]
    fn fast_writer_matches_the_serde_reference() {
        let values = vec![
            ("null", Value::Null),
            ("t", Value::Bool(true)),
            ("f", Value::Bool(false)),
            ("min", Value::Int(i64::MIN)),
            ("max", Value::Int(i64::MAX)),
            ("float", Value::Float(0.1)),
            ("neg0", Value::Float(-0.0)),
            ("nan", Value::Float(f64::NAN)),
            ("inf", Value::Float(f64::INFINITY)),
            ("num", Value::Numeric("-12.50".into())),
            (
                "text",
                Value::Text("quote \" backslash \\ nl \n tab \t ctrl \u{1} é ✓".into()),
            ),
            ("bytea", Value::Bytea(vec![0, 0xff, 0x10])),
            (
                "json",
                Value::Json(JsonText::new("{\"a\":[1,{\"b\":null}]}".into()).unwrap()),
            ),
            (
                "uuid",
                Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ),
            ("date", Value::Date("-0043-03-15".into())),
            ("tstz", Value::TimestampTz("2026-11-22T03:22:01.5Z".into())),
            (
                "arr",
                Value::Array(vec![Value::Int(1), Value::Null, Value::Array(vec![])]),
            ),
            ("other", Value::Other("(1,2)".into())),
            ("名前 \"q\"", Value::Text(String::new())),
        ];
        let mut events = Vec::new();
        for op in [
            Op::Insert,
            Op::Update,
            Op::Delete,
            Op::Truncate,
            Op::Begin,
            Op::Commit,
        ] {
            let mut e = Event::new(op, Lsn(0xFFFF_FFFF_0000_0010));
            e.commit_lsn = Lsn(0x1_0000_0000);
            e.xid = Some(u32::MAX);
            e.ts = Some(Timestamp::from_unix_micros(1_795_317_721_000_001));
            if op.is_change() {
                e.schema = Some(Arc::from("pub\"lic"));
                e.table = Some(Arc::from("orders"));
                e.data = Some(row(values.clone()));
                e.key = Some(row(vec![("id", Value::Int(1))]));
                e.old = Some(row(vec![("id", Value::Int(0))]));
                e.unchanged = vec![Arc::from("big"), Arc::from("b\"ig")];
            }
            if op == Op::Update {
                e.partition_of = Some(Arc::new(crate::event::TableName {
                    schema: Arc::from("Sales \"Dept\""),
                    table: Arc::from("meas"),
                }));
            }
            events.push(e);
        }
        let mut m = Event::new(Op::Message, Lsn(0));
        m.message = Some(LogicalMessage {
            transactional: false,
            prefix: "p".into(),
            content: vec![0xff, 0],
        });
        events.push(m);
        let mut far = Event::new(Op::Begin, Lsn(1));
        far.ts = Some(Timestamp(i64::MAX / 2)); // beyond year 9999: the general formatter
        events.push(far);
        for e in &events {
            let mut fast = Vec::new();
            e.write_json(&mut fast);
            let reference = serde_json::to_vec(e).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(reference).unwrap()
            );
        }
    }

    /// Every byte JSON escapes, and a few it does not, at every position of strings from 0 to
    /// 40 bytes (so before, inside and after each 8-byte word the scan checks at once), with
    /// multi-byte UTF-8 around it: the writer escapes exactly as serde_json does.
    #[test]
    fn strings_escape_as_serde_json_at_every_position() {
        let mut specials: Vec<char> = (0u8..0x20).map(char::from).collect();
        specials.extend(['"', '\\', ' ', '~', '\u{7f}', 'é', '✓', '/']);
        for len in 0..=40 {
            for at in 0..len.max(1) {
                for &c in &specials {
                    let mut text: String = (0..len)
                        .map(|i| if i % 7 == 3 { 'ü' } else { 'a' })
                        .collect();
                    if len > 0 {
                        let pos = text.char_indices().nth(at).map_or(text.len(), |(i, _)| i);
                        text.insert(pos, c);
                    }
                    let mut fast = Vec::new();
                    super::string(&mut fast, &text);
                    let reference = serde_json::to_vec(&text).unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&fast),
                        String::from_utf8_lossy(&reference),
                        "{c:?} at {at} in {len} chars"
                    );
                }
            }
        }
    }
}
