//! Text output of built-in scalar types -> [`Value`].
//!
//! Each parser checks the shape of the server's output for its type (so a value that is not what
//! the OID promises is kept as `Other` rather than mislabelled) and allocates at most the one
//! `String` the value owns.

use super::{Builtin, temporal};
use crate::event::{JsonText, Value};

/// `None` when `text` is not output of type `b`.
pub(super) fn parse(b: Builtin, text: &str) -> Option<Value> {
    match b {
        // 8.6 Boolean Type: output is always `t` or `f`.
        Builtin::Bool => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        Builtin::Int2 | Builtin::Int4 | Builtin::Int8 | Builtin::Oid => int(text).map(Value::Int),
        Builtin::Float4 | Builtin::Float8 => float(text).map(Value::Float),
        Builtin::Numeric => numeric(text).then(|| Value::Numeric(text.to_owned())),
        Builtin::Text
        | Builtin::Char
        | Builtin::Inet
        | Builtin::Macaddr
        | Builtin::Macaddr8
        | Builtin::Money => Some(Value::Text(text.to_owned())),
        Builtin::Bytea => bytea(text).map(Value::Bytea),
        Builtin::Uuid => uuid(text.as_bytes()).then(|| Value::Uuid(text.to_owned())),
        Builtin::Json | Builtin::Jsonb => JsonText::new(text.to_owned()).ok().map(Value::Json),
        Builtin::Date => temporal::date_text(text).map(Value::Date),
        Builtin::Time => temporal::time_text(text).map(Value::Time),
        Builtin::TimeTz => temporal::timetz_text(text).map(Value::TimeTz),
        Builtin::Timestamp => temporal::timestamp_text(text, false).map(Value::Timestamp),
        Builtin::TimestampTz => temporal::timestamp_text(text, true).map(Value::TimestampTz),
        // 8.5.5 Interval Output: kept in the pinned `postgres` style, as printed.
        Builtin::Interval => (!text.is_empty()).then(|| Value::Interval(text.to_owned())),
    }
}

/// Decimal integer as int2/int4/int8/oid print it: optional `-`, digits. Hand-rolled so a
/// stray `+` or whitespace is rejected like any other non-output text.
fn int(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let (neg, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulate negatively so i64::MIN parses.
    let mut v: i64 = 0;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(d))?;
    }
    if neg { Some(v) } else { v.checked_neg() }
}

/// float4/float8 output (8.1.3 Floating-Point Types): shortest-exact decimal with
/// extra_float_digits > 0, possibly with an exponent (`1e+300`), or `NaN`, `Infinity`,
/// `-Infinity`. Parsing float4 text as f64 keeps its shortest decimal (`1.1`, not
/// `1.100000023841858`).
fn float(text: &str) -> Option<f64> {
    match text {
        "NaN" => return Some(f64::NAN),
        "Infinity" => return Some(f64::INFINITY),
        "-Infinity" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    // Rust's parser also takes `inf`, `nan` and a leading `+`; the server never prints those.
    let first = *text.as_bytes().first()?;
    if !(first == b'-' || first == b'.' || first.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// numeric output (8.1.2 Arbitrary Precision Numbers): `-`? digits (`.` digits)?, or `NaN`,
/// `Infinity`, `-Infinity`. Never an exponent on output.
fn numeric(text: &str) -> bool {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let b = text.as_bytes();
    let b = b.strip_prefix(b"-").unwrap_or(b);
    let (int, frac) = match b.iter().position(|&c| c == b'.') {
        Some(p) => (&b[..p], Some(&b[p + 1..])),
        None => (b, None),
    };
    !int.is_empty()
        && int.iter().all(u8::is_ascii_digit)
        && frac.is_none_or(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit))
}

/// bytea (8.4 Binary Data Types): hex format `\x0a1b` (8.4.1; the default `bytea_output`), or
/// the traditional escape format (8.4.2) where `\\` is a backslash and `\ooo` an octal byte.
fn bytea(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    if let Some(hex) = b.strip_prefix(b"\\x") {
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        return hex
            .chunks_exact(2)
            .map(|p| Some(hex_val(p[0])? << 4 | hex_val(p[1])?))
            .collect();
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let o = b.get(i + 1..i + 4)?;
            if !(b'0'..=b'3').contains(&o[0]) || !o[1..].iter().all(|c| (b'0'..=b'7').contains(c)) {
                return None;
            }
            out.push((o[0] - b'0') << 6 | (o[1] - b'0') << 3 | (o[2] - b'0'));
            i += 4;
        }
    }
    Some(out)
}

pub(super) fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// uuid output (8.12 UUID Type): always the canonical lower-case `8-4-4-4-12` form.
fn uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}
