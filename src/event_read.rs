//! Reading events back from JSONL (`walwatch assert --input`), in either envelope, and the
//! nested envelope itself.
//!
//! A recorded event turns back into an [`Event`] whose JSON form is the line it was read from,
//! so an expression or a report means the same on a recording as on a live stream. What JSON
//! does not keep (that a string was a numeric or a date) is not needed for either: expressions
//! see those values as strings anyway (`expr.rs`).

use std::sync::Arc;

use serde_json::Value as Json;

use crate::event::{
    Column, Event, JsonText, LogicalMessage, Lsn, Op, Row, Timestamp, Value, days_from_civil,
};

/// How an event line is wrapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Envelope {
    /// `{"type":"wal","op":...,"data":{row},...}`: the contract in `schemas/`.
    #[default]
    Native,
    /// `{"type":"wal","data":{"op":...,"data":{row},...}}`: the generic `{type, data}` shape
    /// event-driven harnesses consume.
    Nested,
}

impl Envelope {
    /// `native` or `nested`, as `--envelope` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Envelope::Native => "native",
            Envelope::Nested => "nested",
        }
    }
}

/// The start every native line has; the nested form moves the rest under `data`.
const NATIVE_HEAD: &[u8] = b"{\"type\":\"wal\",";

/// Rewrites one native JSON event (as written by [`Event::write_json`]) into `envelope` in place.
pub fn wrap(line: &mut Vec<u8>, envelope: Envelope) {
    if envelope == Envelope::Nested && line.starts_with(NATIVE_HEAD) {
        let mut nested = Vec::with_capacity(line.len() + 12);
        nested.extend_from_slice(b"{\"type\":\"wal\",\"data\":{");
        nested.extend_from_slice(&line[NATIVE_HEAD.len()..]);
        nested.push(b'}');
        *line = nested;
    }
}

/// A `walwatch proxy` event line: `{"type":"proxy","seq":N,"ts":"...","data":{...}}`.
fn proxy_event(o: &serde_json::Map<String, Json>) -> Result<Event, ReadError> {
    let seq = o
        .get("seq")
        .and_then(Json::as_u64)
        .ok_or_else(|| ReadError("a proxy event without a numeric `seq`".into()))?;
    let ts = o
        .get("ts")
        .and_then(Json::as_str)
        .and_then(parse_timestamp)
        .ok_or_else(|| ReadError("a proxy event without a valid `ts`".into()))?;
    let data = match o.get("data") {
        Some(Json::Object(d)) if d.get("action").is_some_and(Json::is_string) => d.clone(),
        _ => return Err(ReadError("a proxy event's `data` needs an `action`".into())),
    };
    Ok(Event::from_proxy(
        crate::event::ProxyFields { seq, data },
        ts,
    ))
}

/// Why a line is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a walwatch event: {0}")]
pub struct ReadError(pub String);

/// Parses one JSONL line, native or nested.
pub fn parse_line(line: &str) -> Result<Event, ReadError> {
    let v: Json = serde_json::from_str(line).map_err(|e| ReadError(e.to_string()))?;
    let obj = match &v {
        Json::Object(o) if o.get("type").and_then(Json::as_str) == Some("wal") => o,
        Json::Object(o) if o.get("type").and_then(Json::as_str) == Some("proxy") => {
            return proxy_event(o);
        }
        _ => {
            return Err(ReadError(
                "expected an object with \"type\": \"wal\" or \"proxy\"".into(),
            ));
        }
    };
    let obj = match obj.get("data") {
        Some(Json::Object(inner)) if !obj.contains_key("op") && inner.contains_key("op") => inner,
        _ => obj,
    };
    let field = |name: &str| obj.get(name).unwrap_or(&Json::Null);
    let text = |name: &str| -> Result<Option<&str>, ReadError> {
        match field(name) {
            Json::Null => Ok(None),
            Json::String(s) => Ok(Some(s)),
            other => Err(ReadError(format!(
                "`{name}` should be a string, not {other}"
            ))),
        }
    };
    let op: Op = text("op")?
        .ok_or_else(|| ReadError("no `op`".into()))?
        .parse()
        .map_err(|e: crate::event::OpParseError| ReadError(e.to_string()))?;
    let lsn = |name: &str| -> Result<Lsn, ReadError> {
        match text(name)? {
            Some(s) => s
                .parse()
                .map_err(|e: crate::event::LsnParseError| ReadError(e.to_string())),
            None => Ok(Lsn::ZERO),
        }
    };
    let mut e = Event::new(op, lsn("lsn")?);
    e.commit_lsn = lsn("commit_lsn")?;
    e.schema = text("schema")?.map(Arc::from);
    e.table = text("table")?.map(Arc::from);
    e.xid = field("xid").as_u64().and_then(|x| u32::try_from(x).ok());
    e.ts = match text("ts")? {
        Some(s) => Some(parse_timestamp(s).ok_or_else(|| ReadError(format!("bad `ts` {s:?}")))?),
        None => None,
    };
    match (op, field("data")) {
        (Op::Message, Json::Object(m)) => {
            let content = m.get("content").and_then(Json::as_str).unwrap_or("");
            e.message = Some(LogicalMessage {
                transactional: m
                    .get("transactional")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
                prefix: m
                    .get("prefix")
                    .and_then(Json::as_str)
                    .unwrap_or("")
                    .to_string(),
                content: content.as_bytes().to_vec(),
            });
        }
        (_, data) => e.data = row(data),
    }
    if let Json::Object(p) = field("partition_of")
        && let (Some(schema), Some(table)) = (
            p.get("schema").and_then(Json::as_str),
            p.get("table").and_then(Json::as_str),
        )
    {
        e.partition_of = Some(Arc::new(crate::event::TableName {
            schema: schema.into(),
            table: table.into(),
        }));
    }
    e.old = row(field("old"));
    e.key = row(field("key"));
    if let Json::Array(cols) = field("unchanged") {
        e.unchanged = cols
            .iter()
            .filter_map(Json::as_str)
            .map(Arc::from)
            .collect();
    }
    Ok(e)
}

fn row(v: &Json) -> Option<Row> {
    let Json::Object(map) = v else {
        return None;
    };
    Some(Row {
        columns: map
            .iter()
            .map(|(k, v)| Column {
                name: Arc::from(k.as_str()),
                value: value(v),
            })
            .collect(),
    })
}

fn value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => match n.as_f64() {
                Some(f) if n.is_f64() => Value::Float(f),
                _ => Value::Numeric(n.to_string()),
            },
        },
        Json::String(s) => Value::Text(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(value).collect()),
        Json::Object(_) => match JsonText::new(v.to_string()) {
            Ok(raw) => Value::Json(raw),
            Err(text) => Value::Text(text),
        },
    }
}

/// `2026-11-22T03:22:01.123456Z` (what events carry in `ts`).
fn parse_timestamp(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + se);
    Some(Timestamp::from_unix_micros(
        secs * 1_000_000 + i64::from(us),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::new(Op::Update, Lsn(0x1A2B3C8));
        e.schema = Some(Arc::from("public"));
        e.table = Some(Arc::from("orders"));
        e.commit_lsn = Lsn(0x1A2B4F0);
        e.xid = Some(751);
        e.ts = Some(Timestamp::from_unix_micros(1_795_317_721_123_456));
        let cols = vec![
            ("id", Value::Int(1)),
            ("amount", Value::Numeric("12.50".into())),
            ("f", Value::Float(0.5)),
            (
                "tags",
                Value::Array(vec![Value::Text("a".into()), Value::Null]),
            ),
            (
                "doc",
                Value::Json(JsonText::new(r#"{"z":1,"a":[true]}"#.into()).unwrap()),
            ),
            ("zeta", Value::Bool(false)),
        ];
        e.data = Some(Row {
            columns: cols
                .into_iter()
                .map(|(n, v)| Column {
                    name: Arc::from(n),
                    value: v,
                })
                .collect(),
        });
        e.old = e.data.clone();
        e.key = Some(Row {
            columns: vec![Column {
                name: Arc::from("id"),
                value: Value::Int(1),
            }],
        });
        e.unchanged = vec![Arc::from("big")];
        e
    }

    #[test]
    fn a_read_event_writes_back_the_same_line() {
        let line = sample().to_json();
        let back = parse_line(&line).unwrap();
        assert_eq!(back.to_json(), line);
        let mut msg = Event::new(Op::Message, Lsn(9));
        msg.commit_lsn = Lsn(9);
        msg.message = Some(LogicalMessage {
            transactional: true,
            prefix: "walwatch.mark".into(),
            content: b"fault-start".to_vec(),
        });
        let line = msg.to_json();
        assert_eq!(parse_line(&line).unwrap().to_json(), line);
    }

    #[test]
    fn nested_envelope_wraps_and_reads_back() {
        let mut line = Vec::new();
        sample().write_json(&mut line);
        let native = String::from_utf8(line.clone()).unwrap();
        wrap(&mut line, Envelope::Nested);
        let nested: Json = serde_json::from_slice(&line).unwrap();
        assert_eq!(nested["type"], "wal");
        assert_eq!(nested["data"]["op"], "UPDATE");
        assert_eq!(nested["data"]["table"], "orders");
        assert_eq!(nested["data"]["data"]["id"], 1);
        assert!(nested.get("op").is_none());
        let back = parse_line(std::str::from_utf8(&line).unwrap()).unwrap();
        assert_eq!(back.to_json(), native);
    }

    #[test]
    fn timestamps_round_trip() {
        for us in [
            0i64,
            1_795_317_721_123_456,
            -86_400_000_001,
            253_402_300_799_999_999,
        ] {
            let ts = Timestamp::from_unix_micros(us);
            assert_eq!(parse_timestamp(&ts.to_string()), Some(ts), "{ts}");
        }
        assert_eq!(parse_timestamp("2026-11-22 03:22:01"), None);
    }

    #[test]
    fn junk_is_an_error() {
        for bad in [
            "",
            "[]",
            "{\"type\":\"other\"}",
            "{\"type\":\"wal\",\"op\":\"UPSERT\"}",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} parsed");
        }
    }
}
