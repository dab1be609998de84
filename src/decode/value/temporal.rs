//! Date/time values: the server's ISO text -> ISO-8601 strings, and the binary send formats ->
//! the same strings.
//!
//! With `DateStyle=ISO` (8.5.2 Date/Time Output) the server prints `YYYY-MM-DD`,
//! `HH:MM:SS[.ffffff]`, `YYYY-MM-DD HH:MM:SS[.ffffff]` and for timestamptz/timetz a numeric UTC
//! offset `+HH[:MM[:SS]]` (with `TimeZone=UTC` every timestamptz prints `+00`). Trailing zeros of
//! the fraction are dropped and a zero fraction is omitted. Years before 1 AD print as the
//! positive year with a trailing ` BC` (8.5.1.1 Dates; there is no year 0); years past 9999
//! print with more digits (EncodeDateOnly/EncodeDateTime in src/backend/utils/adt/datetime.c).
//! `infinity` and `-infinity` are special values (8.5.1.4 Special Values).
//!
//! Output here: ISO-8601 with the proleptic Gregorian year numbering of its expanded
//! representation (ISO 8601-1:2019, 4.3.2 and 5.2.2.3): year 0 is 1 BC and year -N is N+1 BC, so
//! `4714-11-24 BC` is `-4713-11-24`; years 0 to 9999 have exactly four digits (`0001-01-01`,
//! `0000-01-01` for 1 BC), years before 0 a `-` and at least four digits, years after 9999 a
//! `+` and their digits (`+10000-01-01`, `+294276-12-31`). This is what chrono, Java's
//! `java.time` and Python's `datetime.fromisoformat` (for 1 to 9999) read. `T` separates date
//! and time, `Z` is a zero offset, other offsets are `+HH:MM` (`+HH:MM:SS` only for a seconds
//! part, which ISO-8601 cannot express); the infinities are kept as the words. A timestamptz with
//! a non-zero offset (not possible under the pinned TimeZone, but handled) is converted to UTC.

use std::fmt::Write;

use crate::event::{civil_from_days, days_from_civil};

/// Days from 1970-01-01 to 2000-01-01, the PostgreSQL epoch of the binary formats.
const PG_EPOCH_DAYS: i64 = 10_957;
const USECS_PER_DAY: i64 = 86_400_000_000;

/// Exactly `n` ASCII digits at `b[at..]`.
fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let d = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in d {
        let x = c.wrapping_sub(b'0');
        if x > 9 {
            return None;
        }
        v = v * 10 + u32::from(x);
    }
    Some(v)
}

/// A scanned `YYYY-MM-DD` (year of 4 or more digits).
pub(crate) struct Ymd {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
}

/// `YYYY-MM-DD` at the start of `b` (the server's text: an unsigned year of 4 to 7 digits, not
/// 0); returns it and the bytes used.
pub(crate) fn scan_date(b: &[u8]) -> Option<(Ymd, usize)> {
    let (ymd, used) = scan_ymd_digits(b)?;
    (ymd.year != 0).then_some((ymd, used))
}

/// `[+|-]YYYY-MM-DD` at the start of `b`, as this module prints it (the ISO-8601 expanded year,
/// see the module doc): the proleptic year (0 = 1 BC), month, day and the bytes used.
pub(crate) fn scan_iso_date(b: &[u8]) -> Option<(Ymd, usize)> {
    let (sign, skip) = match b.first() {
        Some(b'+') => (1, 1),
        Some(b'-') => (-1, 1),
        _ => (1, 0),
    };
    let (mut ymd, used) = scan_ymd_digits(&b[skip..])?;
    ymd.year *= sign;
    Some((ymd, skip + used))
}

/// An unsigned `YYYY-MM-DD` (4 to 7 year digits, year 0 allowed) at the start of `b`.
fn scan_ymd_digits(b: &[u8]) -> Option<(Ymd, usize)> {
    let ylen = b.iter().take_while(|c| c.is_ascii_digit()).count();
    // PostgreSQL's largest year is 5874897 (date); 4 digits minimum.
    if !(4..=7).contains(&ylen) {
        return None;
    }
    let year = i64::from(digits(b, 0, ylen)?);
    if b.get(ylen) != Some(&b'-') || b.get(ylen + 3) != Some(&b'-') {
        return None;
    }
    let month = digits(b, ylen + 1, 2)?;
    let day = digits(b, ylen + 4, 2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some((Ymd { year, month, day }, ylen + 6))
}

/// Append a proleptic year (0 = 1 BC) the ISO-8601 way: `0000` to `9999` as four digits, earlier
/// years as `-` and at least four digits, later ones as `+` and their digits.
fn push_year(out: &mut String, year: i64) {
    match year {
        0..=9999 => push_digits(out, year.unsigned_abs(), 4),
        10_000.. => {
            let _ = write!(out, "+{year}");
        }
        _ => {
            let _ = write!(out, "-{:04}", year.unsigned_abs());
        }
    }
}

/// Append `v` as exactly `width` (at most 20) decimal digits, zero-padded.
fn push_digits(out: &mut String, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    crate::event::put_digits(&mut buf[..width], v);
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[..width]).unwrap_or_default());
}

/// Append `[+|-]YYYY-MM-DD` for a proleptic year.
fn push_ymd(out: &mut String, year: i64, month: u32, day: u32) {
    push_year(out, year);
    out.push('-');
    push_digits(out, u64::from(month), 2);
    out.push('-');
    push_digits(out, u64::from(day), 2);
}

/// The proleptic year of a date the server printed: `Y BC` is `1 - Y`.
fn proleptic(ymd: &Ymd, bc: bool) -> i64 {
    if bc { 1 - ymd.year } else { ymd.year }
}

/// A scanned `HH:MM:SS[.f+]`: seconds of the day and the bytes used.
fn scan_time(b: &[u8]) -> Option<(i64, usize)> {
    let h = digits(b, 0, 2)?;
    let m = digits(b, 3, 2)?;
    let s = digits(b, 6, 2)?;
    if b[2] != b':' || b[5] != b':' || m > 59 || s > 60 || h > 24 {
        return None;
    }
    let mut used = 8;
    if b.get(8) == Some(&b'.') {
        let n = b[9..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        used = 9 + n;
    }
    Some((i64::from(h * 3600 + m * 60 + s), used))
}

/// A UTC offset `+HH[:MM[:SS]]` filling all of `b`: seconds east of Greenwich.
fn scan_offset(b: &[u8]) -> Option<i32> {
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let h = digits(b, 1, 2)?;
    let (m, s) = match b.len() {
        3 => (0, 0),
        6 if b[3] == b':' => (digits(b, 4, 2)?, 0),
        9 if b[3] == b':' && b[6] == b':' => (digits(b, 4, 2)?, digits(b, 7, 2)?),
        _ => return None,
    };
    if m > 59 || s > 59 {
        return None;
    }
    Some(sign * (h * 3600 + m * 60 + s) as i32)
}

/// Append an offset as `+HH:MM`, or `+HH:MM:SS` when it has seconds.
fn push_offset(out: &mut String, east: i32) {
    let a = east.unsigned_abs();
    let _ = write!(
        out,
        "{}{:02}:{:02}",
        if east < 0 { '-' } else { '+' },
        a / 3600,
        a / 60 % 60
    );
    if !a.is_multiple_of(60) {
        let _ = write!(out, ":{:02}", a % 60);
    }
}

/// date: `YYYY-MM-DD[ BC]` -> `[+|-]YYYY-MM-DD`; `infinity`, `-infinity` -> unchanged.
pub(super) fn date_text(text: &str) -> Option<String> {
    if matches!(text, "infinity" | "-infinity") {
        return Some(text.to_owned());
    }
    let b = text.as_bytes();
    let (ymd, n) = scan_date(b)?;
    let bc = match &b[n..] {
        b"" => false,
        b" BC" => true,
        _ => return None,
    };
    let mut out = String::with_capacity(text.len());
    push_ymd(&mut out, proleptic(&ymd, bc), ymd.month, ymd.day);
    Some(out)
}

/// time: `HH:MM:SS[.f]` -> unchanged.
pub(super) fn time_text(text: &str) -> Option<String> {
    let (_, n) = scan_time(text.as_bytes())?;
    (n == text.len()).then(|| text.to_owned())
}

/// timetz: `HH:MM:SS[.f]+HH[:MM[:SS]]` -> the offset as `+HH:MM`.
pub(super) fn timetz_text(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let (_, n) = scan_time(b)?;
    let east = scan_offset(&b[n..])?;
    let mut out = String::with_capacity(n + 6);
    out.push_str(&text[..n]);
    push_offset(&mut out, east);
    Some(out)
}

/// timestamp `YYYY-MM-DD HH:MM:SS[.f][ BC]` -> `[+|-]YYYY-MM-DDTHH:MM:SS[.f]`;
/// timestamptz `... HH:MM:SS[.f]+00[ BC]` -> `...THH:MM:SS[.f]Z` (converted to UTC when the
/// offset is not zero).
pub(super) fn timestamp_text(text: &str, tz: bool) -> Option<String> {
    if matches!(text, "infinity" | "-infinity") {
        return Some(text.to_owned());
    }
    let b = text.as_bytes();
    let (ymd, d) = scan_date(b)?;
    if b.get(d) != Some(&b' ') {
        return None;
    }
    let (sod, t) = scan_time(&b[d + 1..])?;
    let t = d + 1 + t;
    let (body, bc) = match b.strip_suffix(b" BC") {
        Some(body) => (body, true),
        None => (b, false),
    };
    if body.len() < t {
        return None;
    }
    let year = proleptic(&ymd, bc);
    let mut out = String::with_capacity(text.len() + 2);
    if !tz {
        if body.len() != t {
            return None;
        }
        push_ymd(&mut out, year, ymd.month, ymd.day);
        out.push('T');
        out.push_str(&text[d + 1..t]);
        return Some(out);
    }
    let east = scan_offset(&body[t..])?;
    if east == 0 {
        push_ymd(&mut out, year, ymd.month, ymd.day);
        out.push('T');
        out.push_str(&text[d + 1..t]);
        out.push('Z');
        return Some(out);
    }
    // Not UTC: shift by the offset (whole seconds, so the fraction is unchanged).
    let secs = days_from_civil(year, ymd.month, ymd.day) * 86_400 + sod - i64::from(east);
    push_datetime(
        &mut out,
        secs.div_euclid(86_400),
        secs.rem_euclid(86_400),
        |o| {
            // The fraction, as printed, follows the seconds.
            let frac_start = d + 1 + 8;
            o.push_str(&text[frac_start..t]);
        },
        true,
    );
    Some(out)
}

/// Append `[+|-]YYYY-MM-DD` for days since 1970.
fn push_date(out: &mut String, days: i64) {
    let (y, m, d) = civil_from_days(days);
    push_ymd(out, y, m, d);
}

/// Append `[+|-]YYYY-MM-DDTHH:MM:SS`, the fraction, then `Z` when `tz`.
fn push_datetime(out: &mut String, days: i64, sod: i64, frac: impl FnOnce(&mut String), tz: bool) {
    push_date(out, days);
    let sod = sod.unsigned_abs();
    out.push('T');
    push_digits(out, sod / 3600, 2);
    out.push(':');
    push_digits(out, sod / 60 % 60, 2);
    out.push(':');
    push_digits(out, sod % 60, 2);
    frac(out);
    if tz {
        out.push('Z');
    }
}

/// Append `.ffffff` without trailing zeros, or nothing for 0 (the server's AppendSeconds).
fn push_frac(out: &mut String, micros: i64) {
    if micros == 0 {
        return;
    }
    let mut buf = [0u8; 7];
    buf[0] = b'.';
    let mut v = micros;
    for i in (1..7).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let mut end = 7;
    while buf[end - 1] == b'0' {
        end -= 1;
    }
    // Only ASCII digits and '.' were written.
    out.push_str(std::str::from_utf8(&buf[..end]).unwrap_or_default());
}

/// Binary date (date_send): int4 days since 2000-01-01; `i32::MAX`/`MIN` are ±infinity.
pub(super) fn date_binary(days: i32) -> String {
    match days {
        i32::MAX => "infinity".to_owned(),
        i32::MIN => "-infinity".to_owned(),
        _ => {
            let mut out = String::with_capacity(13);
            push_date(&mut out, i64::from(days) + PG_EPOCH_DAYS);
            out
        }
    }
}

/// Append `HH:MM:SS[.f]` for microseconds of the day (24:00:00 allowed).
fn push_time(out: &mut String, us: i64) {
    let s = us / 1_000_000;
    let _ = write!(out, "{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    push_frac(out, us % 1_000_000);
}

/// Binary time (time_send): int8 microseconds since midnight.
pub(super) fn time_binary(us: i64) -> Option<String> {
    if !(0..=USECS_PER_DAY).contains(&us) {
        return None;
    }
    let mut out = String::with_capacity(15);
    push_time(&mut out, us);
    Some(out)
}

/// Binary timetz (timetz_send): int8 microseconds, then int4 zone in seconds *west* of UTC.
pub(super) fn timetz_binary(us: i64, west: i32) -> Option<String> {
    // TZDISP_LIMIT: offsets are within ±15:59:59.
    if !(-57_599..=57_599).contains(&west) {
        return None;
    }
    let mut out = time_binary(us)?;
    push_offset(&mut out, -west);
    Some(out)
}

/// Binary timestamp/timestamptz (timestamp_send): int8 microseconds since 2000-01-01 00:00 (UTC
/// for timestamptz); `i64::MAX`/`MIN` are ±infinity.
pub(super) fn timestamp_binary(us: i64, tz: bool) -> String {
    match us {
        i64::MAX => "infinity".to_owned(),
        i64::MIN => "-infinity".to_owned(),
        _ => {
            let secs = us.div_euclid(1_000_000);
            let micros = us.rem_euclid(1_000_000);
            let mut out = String::with_capacity(28);
            push_datetime(
                &mut out,
                secs.div_euclid(86_400) + PG_EPOCH_DAYS,
                secs.rem_euclid(86_400),
                |o| push_frac(o, micros),
                tz,
            );
            out
        }
    }
}

/// Binary interval (interval_send): int8 microseconds, int4 days, int4 months, printed in the
/// `postgres` IntervalStyle as the server's EncodeInterval does (8.5.5 Interval Output):
/// `1 year 2 mons -3 days +04:05:06.5`. A field is signed only when it is negative or follows a
/// negative field; the time is printed when non-zero or when everything is zero.
pub(super) fn interval_binary(us: i64, days: i32, months: i32) -> String {
    fn part(out: &mut String, v: i64, unit: &str, is_before: &mut bool) {
        if v == 0 {
            return;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        let plus = if *is_before && v > 0 { "+" } else { "" };
        let s = if v != 1 { "s" } else { "" };
        let _ = write!(out, "{plus}{v} {unit}{s}");
        *is_before = v < 0;
    }
    let mut out = String::with_capacity(32);
    let mut is_before = false;
    let months = i64::from(months);
    part(&mut out, months / 12, "year", &mut is_before);
    part(&mut out, months % 12, "mon", &mut is_before);
    part(&mut out, i64::from(days), "day", &mut is_before);
    if out.is_empty() || us != 0 {
        if !out.is_empty() {
            out.push(' ');
        }
        if us < 0 {
            out.push('-');
        } else if is_before {
            out.push('+');
        }
        let a = us.unsigned_abs();
        let s = a / 1_000_000;
        let _ = write!(out, "{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
        push_frac(&mut out, (a % 1_000_000) as i64);
    }
    out
}
