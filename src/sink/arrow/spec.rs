//! `--sink arrow:DIR[?options]`: what an Arrow sink is asked to do, validated before any I/O.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::parse_size;
use crate::error::{Error, Result};

/// The file format of an Arrow sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArrowFormat {
    /// Arrow IPC files (`.arrow`, the "Feather v2" file format).
    Ipc,
    /// Parquet files (`.parquet`, Snappy-compressed).
    Parquet,
}

impl ArrowFormat {
    pub(crate) fn extension(self) -> &'static str {
        match self {
            ArrowFormat::Ipc => "arrow",
            ArrowFormat::Parquet => "parquet",
        }
    }
}

/// When a table's batch closes, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrowOptions {
    /// Close a batch at this many rows.
    pub rows: usize,
    /// Close a batch at about this many bytes of values (a memory bound for wide rows).
    pub bytes: usize,
    /// Close a batch this long after its first row.
    pub window: Duration,
    /// Add `_old_<col>` columns with an UPDATE's previous values (when the server sends them).
    pub old: bool,
}

impl Default for ArrowOptions {
    fn default() -> Self {
        ArrowOptions {
            rows: 100_000,
            bytes: 64 << 20,
            window: Duration::from_secs(10),
            old: false,
        }
    }
}

/// A parsed `arrow:` sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrowSpec {
    pub dir: PathBuf,
    pub format: ArrowFormat,
    pub options: ArrowOptions,
}

impl ArrowSpec {
    /// Parses `DIR[?format=ipc|parquet&rows=N&seconds=S&bytes=SIZE&old=true|false]` (without
    /// the `arrow:`).
    pub fn parse(rest: &str) -> Result<ArrowSpec> {
        let bad = |msg: String| Error::Config(format!("--sink arrow:{rest}: {msg}"));
        let (dir, query) = rest.split_once('?').unwrap_or((rest, ""));
        if dir.is_empty() {
            return Err(bad("name a directory: arrow:./changes".into()));
        }
        let mut spec = ArrowSpec {
            dir: PathBuf::from(dir),
            format: ArrowFormat::Ipc,
            options: ArrowOptions::default(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("option `{pair}` needs a value (key=value)")))?;
            match k {
                "format" => {
                    spec.format = match v {
                        "ipc" | "arrow" => ArrowFormat::Ipc,
                        "parquet" => ArrowFormat::Parquet,
                        _ => return Err(bad(format!("format `{v}`: ipc or parquet"))),
                    }
                }
                "rows" => {
                    spec.options.rows = v
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| bad(format!("rows `{v}`: a positive whole number")))?;
                }
                "bytes" => {
                    let n = parse_size("bytes", v).map_err(|e| bad(e.to_string()))?;
                    spec.options.bytes = usize::try_from(n)
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| bad(format!("bytes `{v}`: more than 0")))?;
                }
                "seconds" => {
                    let s: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e9)
                        .ok_or_else(|| bad(format!("seconds `{v}`: a positive number")))?;
                    spec.options.window = Duration::from_secs_f64(s);
                }
                "old" => {
                    spec.options.old = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(format!("old `{v}`: true or false"))),
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown option `{k}`; the options are format, rows, seconds, bytes, old"
                    )));
                }
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_readme_forms() {
        let s = ArrowSpec::parse("./changes").unwrap();
        assert_eq!(s.dir, PathBuf::from("./changes"));
        assert_eq!(s.format, ArrowFormat::Ipc);
        assert_eq!(s.options, ArrowOptions::default());
        let s = ArrowSpec::parse("./changes?format=parquet&rows=100000&seconds=30").unwrap();
        assert_eq!(s.format, ArrowFormat::Parquet);
        assert_eq!(s.options.rows, 100_000);
        assert_eq!(s.options.window, Duration::from_secs(30));
        let s = ArrowSpec::parse("d?bytes=1MB&old=true&seconds=0.5").unwrap();
        assert_eq!(s.options.bytes, 1 << 20);
        assert!(s.options.old);
        assert_eq!(s.options.window, Duration::from_millis(500));
    }

    #[test]
    fn bad_options_say_what_is_allowed() {
        for (spec, says) in [
            ("", "name a directory"),
            ("d?format=csv", "ipc or parquet"),
            ("d?rows=0", "positive whole number"),
            ("d?seconds=-1", "positive number"),
            ("d?old=yes", "true or false"),
            ("d?colour=red", "the options are format, rows"),
            ("d?rows", "needs a value"),
        ] {
            let err = ArrowSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec}: {err}");
        }
    }
}
