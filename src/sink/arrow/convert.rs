//! Decoded values -> Arrow's native representations.
//!
//! The decoder keeps temporal and numeric values as the exact text the server printed (with
//! the startup parameters pinned: `DateStyle=ISO`, `IntervalStyle=postgres`, `TimeZone=UTC`;
//! ARCHITECTURE.md "Protocol facts"), normalised to ISO-8601 (`T`, `Z`, and the expanded years
//! `-4713-11-24` / `+10000-01-01` of `decode::value::temporal`). These functions
//! turn that text into the integers Arrow stores. Each returns `None` for text it cannot
//! represent exactly; the caller decides what to do (the sink writes null and warns).
//!
//! PostgreSQL's infinities have no Arrow value. They become the values DuckDB uses for its own
//! infinities (`i32::MAX` / `-i32::MAX` days, `i64::MAX` / `-i64::MAX` µs), which DuckDB reads
//! back as `infinity` / `-infinity`.

use crate::decode::value::temporal::scan_iso_date;
use crate::event::days_from_civil;

pub(crate) const DATE_INFINITY: i32 = i32::MAX;
pub(crate) const TIMESTAMP_INFINITY: i64 = i64::MAX;

/// `n` ASCII digits at the start of `b`.
fn num(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 18 {
        return None;
    }
    let mut v = 0i64;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + i64::from(d);
    }
    Some(v)
}

/// `[.ffffff]` (1 to 6 digits, as the server prints µs precision): microseconds.
fn micros_frac(b: &[u8]) -> Option<i64> {
    match b {
        [] => Some(0),
        [b'.', rest @ ..] if (1..=6).contains(&rest.len()) => {
            Some(num(rest)? * 10i64.pow(6 - rest.len() as u32))
        }
        _ => None,
    }
}

/// `[+|-]YYYY-MM-DD` at the start of `b`, as the decoder prints it (4 to 7 year digits:
/// PostgreSQL's last year is 5874897, which keeps the day arithmetic far from overflow; the
/// proleptic year, 0 = 1 BC): days since 1970 and the bytes used.
fn ymd(b: &[u8]) -> Option<(i64, usize)> {
    let (d, used) = scan_iso_date(b)?;
    Some((days_from_civil(d.year, d.month, d.day), used))
}

/// A date (`[+|-]YYYY-MM-DD`, `infinity`, `-infinity`) as days since 1970-01-01 (Date32).
pub(crate) fn date32(text: &str) -> Option<i32> {
    match text {
        "infinity" => return Some(DATE_INFINITY),
        "-infinity" => return Some(-DATE_INFINITY),
        _ => {}
    }
    let b = text.as_bytes();
    let (days, used) = ymd(b)?;
    if used != b.len() {
        return None;
    }
    i32::try_from(days).ok()
}

/// `HH:MM:SS[.ffffff]` as microseconds; hours may exceed 24 only for intervals (`max_hours`).
fn hms(b: &[u8], max_hours: i64) -> Option<i64> {
    let colon = b.iter().position(|&c| c == b':')?;
    let h = num(&b[..colon])?;
    let rest = &b[colon + 1..];
    if rest.len() < 5 || rest[2] != b':' {
        return None;
    }
    let m = num(&rest[..2])?;
    let s = num(&rest[3..5])?;
    if h > max_hours || m > 59 || s > 60 {
        return None;
    }
    Some(((h * 60 + m) * 60 + s) * 1_000_000 + micros_frac(&rest[5..])?)
}

/// A time of day (`HH:MM:SS[.ffffff]`, up to `24:00:00`) as microseconds since midnight
/// (Time64(µs)).
pub(crate) fn time64(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 8 || b[2] != b':' {
        return None;
    }
    hms(b, 24)
}

/// A timestamp as the decoder prints it (`[+|-]YYYY-MM-DDTHH:MM:SS[.ffffff][Z]`, `infinity`,
/// `-infinity`) as microseconds since 1970-01-01 00:00 (UTC for timestamptz, which the decoder
/// always prints in UTC).
pub(crate) fn timestamp_us(text: &str) -> Option<i64> {
    match text {
        "infinity" => return Some(TIMESTAMP_INFINITY),
        "-infinity" => return Some(-TIMESTAMP_INFINITY),
        _ => {}
    }
    let b = text.as_bytes();
    let b = b.strip_suffix(b"Z").unwrap_or(b);
    let (days, used) = ymd(b)?;
    if b.get(used) != Some(&b'T') {
        return None;
    }
    let t = &b[used + 1..];
    if t.len() < 8 || t[2] != b':' {
        return None;
    }
    let tod = hms(t, 24)?;
    days.checked_mul(86_400_000_000)?.checked_add(tod)
}

/// An interval in the `postgres` style (8.5.5 Interval Output), e.g.
/// `1 year 2 mons -3 days +04:05:06.5`, as (months, days, nanoseconds): Arrow's MonthDayNano
/// keeps the three fields apart exactly as PostgreSQL does.
pub(crate) fn interval(text: &str) -> Option<(i32, i32, i64)> {
    let mut months: i64 = 0;
    let mut days: i64 = 0;
    let mut micros: i64 = 0;
    let mut words = text.split_ascii_whitespace();
    let mut any = false;
    while let Some(w) = words.next() {
        any = true;
        if w.contains(':') {
            let (neg, body) = match w.as_bytes() {
                [b'-', rest @ ..] => (true, rest),
                [b'+', rest @ ..] => (false, rest),
                rest => (false, rest),
            };
            let us = hms(body, i64::MAX / 3_600_000_000)?;
            micros = if neg { -us } else { us };
            continue;
        }
        let n: i64 = w.parse().ok()?;
        let unit = words.next()?;
        match unit.trim_end_matches('s') {
            "year" => months = months.checked_add(n.checked_mul(12)?)?,
            "mon" => months = months.checked_add(n)?,
            "day" => days = days.checked_add(n)?,
            _ => return None,
        }
    }
    if !any {
        return None;
    }
    Some((
        i32::try_from(months).ok()?,
        i32::try_from(days).ok()?,
        micros.checked_mul(1000)?,
    ))
}

/// A numeric's text (`-12.50`) as an unscaled integer at `scale` (Decimal128): exact or `None`
/// (NaN, Infinity, more fraction digits than the scale that are not zeros, or overflow).
/// `scale` may be negative (numeric(p, -s), PostgreSQL 15+).
pub(crate) fn decimal(text: &str, scale: i8) -> Option<i128> {
    let (neg, body) = match text.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        rest => (false, rest),
    };
    let (int, frac) = match body.iter().position(|&c| c == b'.') {
        Some(dot) => (&body[..dot], &body[dot + 1..]),
        None => (body, &body[..0]),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut v: i128 = 0;
    for &c in int.iter().chain(frac) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i128::from(d))?;
    }
    // v * 10^-frac.len() == result * 10^-scale
    let shift = i32::from(scale) - frac.len() as i32;
    if shift >= 0 {
        v = v.checked_mul(10i128.checked_pow(shift as u32)?)?;
    } else {
        let div = 10i128.checked_pow(shift.unsigned_abs())?;
        if v % div != 0 {
            return None;
        }
        v /= div;
    }
    Some(if neg { -v } else { v })
}

/// A uuid's text (`a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11`) as its 16 bytes.
pub(crate) fn uuid(text: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut hex = text.bytes().filter(|&c| c != b'-');
    for byte in &mut out {
        let hi = (hex.next()? as char).to_digit(16)?;
        let lo = (hex.next()? as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    hex.next().is_none().then_some(out)
}

/// `((precision << 16) | scale) + VARHDRSZ` (numeric.c, make_numeric_typmod), -1 when the
/// column is plain `numeric`. Scale is an 11-bit signed field since PostgreSQL 15.
pub(crate) fn numeric_typmod(typmod: i32) -> Option<(u8, i8)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = (t >> 16) & 0xffff;
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    Some((u8::try_from(precision).ok()?, i8::try_from(scale).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_count_days_from_the_unix_epoch() {
        assert_eq!(date32("1970-01-01"), Some(0));
        assert_eq!(date32("2000-01-01"), Some(10_957));
        assert_eq!(date32("1969-12-31"), Some(-1));
        // 0000-01-01 (1 BC) is one leap year before 0001-01-01.
        assert_eq!(
            date32("0000-01-01"),
            Some(date32("0001-01-01").unwrap() - 366)
        );
        // PostgreSQL's first date, 4714-11-24 BC, is Julian day 0; 1970-01-01 is day 2440588.
        assert_eq!(date32("-4713-11-24"), Some(-2_440_588));
        assert_eq!(
            date32("-0001-12-31"),
            Some(date32("0000-01-01").unwrap() - 1)
        );
        assert_eq!(
            date32("+10000-01-01"),
            Some(date32("9999-12-31").unwrap() + 1)
        );
        assert_eq!(date32("infinity"), Some(i32::MAX));
        assert_eq!(date32("-infinity"), Some(-i32::MAX));
        assert_eq!(date32("12345-06-07").map(|d| d > 0), Some(true));
        // PostgreSQL's last date: DATE_END_JULIAN (2147483494, 5874898-01-01) - 1 - 2440588.
        assert_eq!(date32("5874897-12-31"), Some(2_145_042_905));
        for bad in [
            "",
            "2026-13-01",
            "2026-1-01",
            "x",
            "2026-01-01T00:00:00",
            "999999999999999999-01-01",
            "+99999999-01-01",
            // The server's own BC form is not what the decoder hands over.
            "0044-03-15 BC",
            "--0044-03-15",
        ] {
            assert_eq!(date32(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_and_timestamps_count_microseconds() {
        assert_eq!(time64("00:00:00"), Some(0));
        assert_eq!(time64("13:14:15.5"), Some(47_655_500_000));
        assert_eq!(time64("24:00:00"), Some(86_400_000_000));
        assert_eq!(time64("25:00:00"), None);
        assert_eq!(timestamp_us("1970-01-01T00:00:00"), Some(0));
        assert_eq!(timestamp_us("1970-01-01T00:00:00.000001Z"), Some(1));
        // 2026-11-22T03:22:01.123456Z is 1_795_317_721.123456 s after the Unix epoch.
        assert_eq!(
            timestamp_us("2026-11-22T03:22:01.123456Z"),
            Some(1_795_317_721_123_456)
        );
        assert_eq!(timestamp_us("1969-12-31T23:59:59.9"), Some(-100_000));
        assert_eq!(timestamp_us("infinity"), Some(i64::MAX));
        assert_eq!(timestamp_us("-infinity"), Some(-i64::MAX));
        assert_eq!(
            timestamp_us("-4713-11-24T00:00:00Z"),
            Some(-2_440_588 * 86_400_000_000)
        );
        // Arrow counts µs from 1970, PostgreSQL from 2000: i64 µs after 1970 end in 294247, so
        // PostgreSQL's last timestamp (294276-12-31 23:59:59.999999, END_TIMESTAMP - 1 in
        // src/include/datatype/timestamp.h) has no Arrow value (the sink writes null and warns).
        assert_eq!(
            timestamp_us("+294246-12-31T00:00:00Z"),
            Some(days_from_civil(294_246, 12, 31) * 86_400_000_000)
        );
        assert_eq!(timestamp_us("+294276-12-31T23:59:59.999999Z"), None);
        assert_eq!(timestamp_us("0044-03-15T12:00:00Z BC"), None);
        assert_eq!(timestamp_us("2026-11-22 03:22:01"), None);
        assert_eq!(timestamp_us("99999999999999-01-01T00:00:00"), None);
    }

    #[test]
    fn intervals_keep_months_days_and_time_apart() {
        assert_eq!(
            interval("1 year 2 mons 3 days 04:05:06.789"),
            Some((14, 3, 14_706_789_000_000))
        );
        assert_eq!(interval("00:00:00"), Some((0, 0, 0)));
        assert_eq!(
            interval("-1 years -2 mons +3 days -04:05:06"),
            Some((-14, 3, -14_706_000_000_000))
        );
        assert_eq!(interval("1 day"), Some((0, 1, 0)));
        assert_eq!(interval("100:00:00"), Some((0, 0, 360_000_000_000_000)));
        assert_eq!(interval("1 fortnight"), None);
        assert_eq!(interval(""), None);
    }

    #[test]
    fn decimals_are_exact_at_the_column_scale() {
        assert_eq!(decimal("12.50", 2), Some(1250));
        assert_eq!(decimal("-0.01", 2), Some(-1));
        assert_eq!(decimal("7", 3), Some(7000));
        assert_eq!(decimal("12300", -2), Some(123));
        assert_eq!(decimal("12345", -2), None);
        assert_eq!(decimal("1.005", 2), None);
        assert_eq!(decimal("1.000", 2), Some(100));
        assert_eq!(decimal("NaN", 2), None);
        let big = "99999999999999999999999999999999999999";
        assert_eq!(decimal(big, 0), Some(big.parse::<i128>().unwrap()));
        assert_eq!(decimal(&format!("{big}9"), 0), None);
    }

    #[test]
    fn numeric_typmods_decode_precision_and_scale() {
        // numeric(10,2): ((10 << 16) | 2) + 4
        assert_eq!(numeric_typmod((10 << 16 | 2) + 4), Some((10, 2)));
        assert_eq!(numeric_typmod(-1), None);
        // numeric(3,-2) stores the scale as an 11-bit two's complement field.
        assert_eq!(
            numeric_typmod((3 << 16 | (0x7ff & -2i32)) + 4),
            Some((3, -2))
        );
    }

    #[test]
    fn uuids_parse_to_bytes() {
        let u = uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        assert_eq!(u[0], 0xa0);
        assert_eq!(u[15], 0x11);
        assert_eq!(uuid("a0eebc99"), None);
        assert_eq!(uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1100"), None);
    }
}
