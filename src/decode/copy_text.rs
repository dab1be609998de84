//! One row of `COPY … TO STDOUT` in text format: the snapshot reads tables this way (the
//! server's fastest way out, measured in benches/snapshot.sh), and its fields are the same text
//! the stream's tuples carry, so they decode through the same [`crate::decode::TypeRegistry`].
//!
//! The format (PostgreSQL docs, COPY, "Text Format"; copyto.c `CopyAttributeOutText`): one
//! line per row ending in `\n`, fields separated by a tab, `\N` for NULL, and in a value a
//! backslash escapes `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, `\v`. The server writes no other
//! escape, but COPY FROM reads `\ooo` (octal) and `\xhh` (hex) too, and so does this.

use std::borrow::Cow;

/// Why a line is not a COPY text row of the expected width.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CopyTextError {
    #[error("a COPY row with {got} fields where the table has {expected}")]
    Width { expected: usize, got: usize },
    #[error("a COPY field that is not UTF-8 text")]
    Utf8,
}

/// The fields of `line` (with or without its final newline): `None` for NULL, the text
/// otherwise, borrowed when it holds no escape. Exactly `width` fields or an error.
pub fn fields<'a>(
    line: &'a [u8],
    width: usize,
    out: &mut Vec<Option<Cow<'a, str>>>,
) -> Result<(), CopyTextError> {
    out.clear();
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    // A table with no published columns still has one line per row: an empty one.
    if width == 0 && line.is_empty() {
        return Ok(());
    }
    // The server sends text in the client encoding (UTF-8) and escapes only ASCII, so a line
    // is valid UTF-8 as a whole: checked once, not field by field (a third of the time spent
    // on short fields was the per-call overhead). A line that is not is taken apart bytewise,
    // where each field's own check names the trouble.
    match std::str::from_utf8(line) {
        Ok(text) => {
            for raw in text.split('\t') {
                out.push(text_field(raw)?);
            }
        }
        Err(_) => {
            for raw in line.split(|&b| b == b'\t') {
                out.push(field(raw)?);
            }
        }
    }
    if out.len() != width {
        return Err(CopyTextError::Width {
            expected: width,
            got: out.len(),
        });
    }
    Ok(())
}

/// A field of a line known to be UTF-8.
fn text_field(raw: &str) -> Result<Option<Cow<'_, str>>, CopyTextError> {
    if raw == "\\N" {
        return Ok(None);
    }
    if !raw.contains('\\') {
        return Ok(Some(Cow::Borrowed(raw)));
    }
    field(raw.as_bytes())
}

fn field(raw: &[u8]) -> Result<Option<Cow<'_, str>>, CopyTextError> {
    if raw == b"\\N" {
        return Ok(None);
    }
    if !raw.contains(&b'\\') {
        return std::str::from_utf8(raw)
            .map(|s| Some(Cow::Borrowed(s)))
            .map_err(|_| CopyTextError::Utf8);
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' || i == raw.len() {
            bytes.push(b);
            continue;
        }
        let c = raw[i];
        i += 1;
        match c {
            b'b' => bytes.push(0x08),
            b'f' => bytes.push(0x0c),
            b'n' => bytes.push(b'\n'),
            b'r' => bytes.push(b'\r'),
            b't' => bytes.push(b'\t'),
            b'v' => bytes.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                bytes.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u8;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d as u8;
                            i += 1;
                        }
                        None => break,
                    }
                }
                bytes.push(v);
            }
            // Any other escaped character stands for itself (`\\` among them).
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes)
        .map(|s| Some(Cow::Owned(s)))
        .map_err(|_| CopyTextError::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[u8], width: usize) -> Result<Vec<Option<String>>, CopyTextError> {
        let mut out = Vec::new();
        fields(line, width, &mut out)?;
        Ok(out.into_iter().map(|f| f.map(Cow::into_owned)).collect())
    }

    #[test]
    fn fields_nulls_and_escapes() {
        let got = parse(b"1\t\\N\t\ttab\\there\\nnl \\\\ bs\t\\\\N\n", 5).unwrap();
        assert_eq!(
            got,
            [
                Some("1".into()),
                None,
                Some(String::new()),
                Some("tab\there\nnl \\ bs".into()),
                Some("\\N".into()),
            ]
        );
    }

    #[test]
    fn every_escape_copy_from_reads() {
        let got = parse(b"\\b\\f\\r\\v\\101\\x41\\x4a\\q\\", 1).unwrap();
        assert_eq!(got, [Some("\u{8}\u{c}\r\u{b}AAJq\\".into())]);
        assert_eq!(parse("é\\t€".as_bytes(), 1).unwrap(), [Some("é\t€".into())]);
    }

    #[test]
    fn width_and_utf8_are_checked() {
        assert_eq!(
            parse(b"1\t2\n", 3),
            Err(CopyTextError::Width {
                expected: 3,
                got: 2
            })
        );
        assert_eq!(parse(b"\xff", 1), Err(CopyTextError::Utf8));
        assert_eq!(parse(b"\\xff", 1), Err(CopyTextError::Utf8));
        assert_eq!(parse(b"\n", 0).unwrap(), Vec::<Option<String>>::new());
        assert_eq!(parse(b"\n", 1).unwrap(), [Some(String::new())]);
    }

    #[test]
    fn unescaped_fields_are_borrowed() {
        let mut out = Vec::new();
        fields(b"plain\tesc\\t", 2, &mut out).unwrap();
        assert!(matches!(out[0], Some(Cow::Borrowed("plain"))));
        assert!(matches!(out[1], Some(Cow::Owned(_))));
    }
}
