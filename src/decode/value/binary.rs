//! Binary send formats (pgoutput's `binary` option) -> [`Value`], formatted exactly as the text
//! path formats the same value.
//!
//! Every format is big-endian with a fixed layout (the types' `*_send` functions in the server
//! source, network byte order as in 55.6 "Message Data Types"). Lengths are checked exactly: a
//! short or long buffer is not that type and the caller keeps the bytes as hex.

use std::fmt::Write;

use super::{Builtin, temporal};
use crate::event::{JsonText, Value};

fn be<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    b.try_into().ok()
}

/// `None` when `b` is not the send format of type `t` (or walwatch does not decode it: money,
/// whose text depends on the server's lc_monetary, stays hex).
pub(super) fn parse(t: Builtin, b: &[u8]) -> Option<Value> {
    Some(match t {
        Builtin::Bool => match b {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            _ => return None,
        },
        Builtin::Int2 => Value::Int(i16::from_be_bytes(be(b)?).into()),
        Builtin::Int4 => Value::Int(i32::from_be_bytes(be(b)?).into()),
        Builtin::Int8 => Value::Int(i64::from_be_bytes(be(b)?)),
        Builtin::Oid => Value::Int(u32::from_be_bytes(be(b)?).into()),
        // Via the shortest decimal, so float4 1.1 is 1.1 as in text, not 1.100000023841858.
        Builtin::Float4 => {
            let f = f32::from_be_bytes(be(b)?);
            Value::Float(if f.is_finite() {
                f.to_string().parse().ok()?
            } else {
                f64::from(f)
            })
        }
        Builtin::Float8 => Value::Float(f64::from_be_bytes(be(b)?)),
        Builtin::Numeric => Value::Numeric(numeric(b)?),
        // textsend/varcharsend/bpcharsend/namesend/xml_send: the bytes in the client encoding.
        Builtin::Text => Value::Text(std::str::from_utf8(b).ok()?.to_owned()),
        // charsend: the one byte. charout prints the zero byte as an empty string and bytes
        // >= 0x80 as `\ooo` (PostgreSQL 15).
        Builtin::Char => match b {
            [] | [0] => Value::Text(String::new()),
            [c] if c.is_ascii() => Value::Text(char::from(*c).to_string()),
            [c] => Value::Text(format!("\\{c:03o}")),
            _ => return None,
        },
        Builtin::Bytea => Value::Bytea(b.to_vec()),
        Builtin::Uuid => Value::Uuid(uuid(be(b)?)),
        Builtin::Json => Value::Json(JsonText::new(std::str::from_utf8(b).ok()?.to_owned()).ok()?),
        // jsonb_send: a version byte (1) then the JSON text.
        Builtin::Jsonb => match b.split_first() {
            Some((1, rest)) => {
                Value::Json(JsonText::new(std::str::from_utf8(rest).ok()?.to_owned()).ok()?)
            }
            _ => return None,
        },
        Builtin::Date => Value::Date(temporal::date_binary(i32::from_be_bytes(be(b)?))),
        Builtin::Time => Value::Time(temporal::time_binary(i64::from_be_bytes(be(b)?))?),
        Builtin::TimeTz => {
            let (us, zone) = b.split_at_checked(8)?;
            Value::TimeTz(temporal::timetz_binary(
                i64::from_be_bytes(be(us)?),
                i32::from_be_bytes(be(zone)?),
            )?)
        }
        Builtin::Timestamp => Value::Timestamp(temporal::timestamp_binary(
            i64::from_be_bytes(be(b)?),
            false,
        )),
        Builtin::TimestampTz => {
            Value::TimestampTz(temporal::timestamp_binary(i64::from_be_bytes(be(b)?), true))
        }
        Builtin::Interval => {
            let b: [u8; 16] = be(b)?;
            let us = i64::from_be_bytes(b[..8].try_into().ok()?);
            let days = i32::from_be_bytes(b[8..12].try_into().ok()?);
            let months = i32::from_be_bytes(b[12..].try_into().ok()?);
            Value::Interval(temporal::interval_binary(us, days, months))
        }
        // macaddr_send / macaddr8_send: the raw bytes; printed as lower-case `xx:xx:...`.
        Builtin::Macaddr | Builtin::Macaddr8 if matches!(b.len(), 6 | 8) => {
            if (t == Builtin::Macaddr) != (b.len() == 6) {
                return None;
            }
            let mut s = String::with_capacity(b.len() * 3);
            for (i, x) in b.iter().enumerate() {
                if i > 0 {
                    s.push(':');
                }
                let _ = write!(s, "{x:02x}");
            }
            Value::Text(s)
        }
        Builtin::Inet => Value::Text(inet(b)?),
        Builtin::Macaddr | Builtin::Macaddr8 | Builtin::Money => return None,
    })
}

/// inet_send / cidr_send: family (2 = IPv4, 3 = IPv6), mask bits, is-cidr flag, address length,
/// address bytes. Printed as network_out does (9.12 Network Address Functions and Operators,
/// 8.9 Network Address Types): the full address, `/bits` when the mask is not the whole address
/// or the value is a cidr; IPv6 with the longest run of two or more zero groups as `::`, and an
/// embedded IPv4 for `::ffff:a.b.c.d` and `::a.b.c.d`.
fn inet(b: &[u8]) -> Option<String> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let [family, bits, is_cidr, nb, addr @ ..] = b else {
        return None;
    };
    let mut s = String::with_capacity(48);
    let max = match (family, nb) {
        (2, 4) => {
            let _ = write!(s, "{}", Ipv4Addr::from(<[u8; 4]>::try_from(addr).ok()?));
            32
        }
        (3, 16) => {
            let a: [u8; 16] = addr.try_into().ok()?;
            let ip = Ipv6Addr::from(a);
            let seg = ip.segments();
            // Rust prints IPv4-mapped addresses with the dotted quad already; the server also
            // does so for IPv4-compatible ones (six zero groups, then a non-zero group).
            if seg[..6] == [0; 6] && seg[6] != 0 {
                let _ = write!(s, "::{}", Ipv4Addr::new(a[12], a[13], a[14], a[15]));
            } else {
                let _ = write!(s, "{ip}");
            }
            128
        }
        _ => return None,
    };
    if *bits > max || *is_cidr > 1 {
        return None;
    }
    if *is_cidr == 1 || *bits != max {
        let _ = write!(s, "/{bits}");
    }
    Some(s)
}

/// uuid_send: 16 bytes, printed as the canonical lower-case `8-4-4-4-12`.
fn uuid(b: [u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// numeric_send: int16 ndigits, int16 weight, uint16 sign, uint16 dscale, then ndigits base-10000
/// digits, the first worth 10000^weight. Printed like the server's get_str_from_var: the integer
/// part without leading zeros (`0` when weight < 0), then exactly dscale fraction digits.
/// Special signs: 0xC000 NaN, 0xD000 Infinity, 0xF000 -Infinity.
fn numeric(b: &[u8]) -> Option<String> {
    let (head, rest) = b.split_at_checked(8)?;
    let ndigits = i16::from_be_bytes([head[0], head[1]]);
    let weight = i32::from(i16::from_be_bytes([head[2], head[3]]));
    let sign = u16::from_be_bytes([head[4], head[5]]);
    let dscale = u16::from_be_bytes([head[6], head[7]]);
    let ndigits = usize::try_from(ndigits).ok()?;
    if rest.len() != ndigits * 2 || dscale > 0x3FFF {
        return None;
    }
    let neg = match sign {
        0x0000 => false,
        0x4000 => true,
        0xC000 => return Some("NaN".to_owned()),
        0xD000 => return Some("Infinity".to_owned()),
        0xF000 => return Some("-Infinity".to_owned()),
        _ => return None,
    };
    let digit = |d: i32| -> Option<u16> {
        let Ok(i) = usize::try_from(d) else {
            return Some(0);
        };
        if i >= ndigits {
            return Some(0);
        }
        let v = u16::from_be_bytes([rest[2 * i], rest[2 * i + 1]]);
        (v < 10_000).then_some(v)
    };
    let mut out = String::with_capacity(2 + 4 * (weight.max(0) as usize + 1) + dscale as usize);
    if neg {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        let _ = write!(out, "{}", digit(0)?);
        for d in 1..=weight {
            let _ = write!(out, "{:04}", digit(d)?);
        }
    }
    if dscale > 0 {
        out.push('.');
        let end = out.len() + usize::from(dscale);
        let mut d = weight + 1;
        while out.len() < end {
            let _ = write!(out, "{:04}", digit(d)?);
            d += 1;
        }
        out.truncate(end);
    }
    // Every digit must be valid, including those beyond what dscale prints.
    for d in 0..ndigits as i32 {
        digit(d)?;
    }
    Some(out)
}

/// array_send (8.15 Arrays): int4 ndim, int4 has-nulls flag, oid element type, then per
/// dimension int4 length and int4 lower bound, then each element as int4 length (-1 for NULL)
/// and its bytes in the element's send format, last dimension fastest. Decoded with the element
/// OID the array names, into nested arrays for more than one dimension.
pub(super) fn array(b: &[u8], elem: &mut dyn FnMut(u32, &[u8]) -> Value) -> Option<Value> {
    let mut r = Reader(b);
    let ndim = usize::try_from(r.i32()?).ok()?;
    let _has_nulls = r.i32()?;
    let elem_oid = r.i32()? as u32;
    // The server's limit is 6 dimensions (MAXDIM); ndim 0 is the empty array.
    if ndim > 6 {
        return None;
    }
    let mut dims = [0usize; 6];
    for d in dims.iter_mut().take(ndim) {
        *d = usize::try_from(r.i32()?).ok()?;
        let _lower_bound = r.i32()?;
    }
    let dims = &dims[..ndim];
    let total = if ndim == 0 {
        0
    } else {
        dims.iter().try_fold(1usize, |a, &n| a.checked_mul(n))?
    };
    // array_send writes an empty array as ndim 0, never as a dimension of length 0; such a
    // header is not from a server, and its other dimensions could claim billions of (empty)
    // sub-arrays for nothing (found by the `values` fuzz target).
    if ndim > 0 && total == 0 {
        return None;
    }
    // Each element takes at least its 4-byte length: bounds the allocation on garbage input.
    if total > r.0.len() / 4 {
        return None;
    }
    let mut flat = Vec::with_capacity(total);
    for _ in 0..total {
        let len = r.i32()?;
        flat.push(if len < 0 {
            Value::Null
        } else {
            elem(elem_oid, r.take(len as usize)?)
        });
    }
    if !r.0.is_empty() {
        return None;
    }
    if dims.is_empty() {
        return Some(Value::Array(flat));
    }
    Some(nest(&mut flat.into_iter(), dims))
}

/// A cursor over a send-format buffer.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(be(self.take(4)?)?))
    }
}

/// Split a flat, row-major element list into nested arrays of the given dimensions.
fn nest(flat: &mut impl Iterator<Item = Value>, dims: &[usize]) -> Value {
    match dims {
        [n] => Value::Array(flat.take(*n).collect()),
        [n, rest @ ..] => Value::Array((0..*n).map(|_| nest(flat, rest)).collect()),
        [] => Value::Array(Vec::new()),
    }
}
