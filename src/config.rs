//! A validated run configuration, built from the command line (or the library builder) before
//! any I/O happens: every argument error is reported here, with exit code 2, without touching
//! the network.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::event::{Lsn, Op};
use crate::event_read::Envelope;
use crate::expr::Expr;
use crate::filter::{OpSet, TablePattern};
use crate::pg::params::ConnParams;
use crate::sink::arrow::ArrowSpec;
use crate::sink::kafka::KafkaSpec;

/// Where to stop streaming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndPos {
    /// The server's WAL flush position when walwatch starts.
    Now,
    /// A fixed position.
    At(Lsn),
}

impl std::str::FromStr for EndPos {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("now") {
            return Ok(EndPos::Now);
        }
        s.parse::<Lsn>()
            .map(EndPos::At)
            .map_err(|e| Error::Config(format!("--endpos: {e}, or `now`")))
    }
}

/// How events are printed on standard output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One readable line per change, transaction rules, colour if `color`.
    Terminal { color: bool },
    /// JSONL: one event object per line.
    Json,
}

/// One destination every event reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    Stdout(Format),
    /// JSONL appended to a file, fsync'd before its position is confirmed to the server.
    Jsonl(PathBuf),
    /// Kafka: a topic per table, acknowledged before its position is confirmed.
    Kafka(KafkaSpec),
    /// Arrow IPC or Parquet files, one per closed batch, written before their position counts.
    Arrow(ArrowSpec),
}

impl SinkSpec {
    /// Parse a `--sink` argument: `jsonl:PATH`, `stdout`, `stdout:json`, `stdout:terminal`,
    /// `kafka://BROKERS[?options]`, `arrow:DIR[?options]`.
    pub fn parse(spec: &str, stdout_format: Format) -> Result<SinkSpec> {
        if let Some(rest) = spec.strip_prefix("kafka://") {
            return KafkaSpec::parse(rest).map(SinkSpec::Kafka);
        }
        if let Some(rest) = spec.strip_prefix("arrow:") {
            return ArrowSpec::parse(rest).map(SinkSpec::Arrow);
        }
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        match kind {
            "jsonl" if !rest.is_empty() => Ok(SinkSpec::Jsonl(PathBuf::from(rest))),
            "jsonl" => Err(Error::Config(
                "--sink jsonl needs a path: --sink jsonl:events.jsonl".into(),
            )),
            "stdout" => match rest {
                "" => Ok(SinkSpec::Stdout(stdout_format)),
                "json" => Ok(SinkSpec::Stdout(Format::Json)),
                "terminal" => Ok(SinkSpec::Stdout(Format::Terminal { color: false })),
                other => Err(Error::Config(format!(
                    "--sink stdout:{other}: the format must be json or terminal"
                ))),
            },
            _ => Err(Error::Config(format!(
                "--sink `{spec}`: unknown sink; the sinks are jsonl:PATH, kafka://BROKERS[?options], arrow:DIR[?options] and stdout[:json|:terminal]"
            ))),
        }
    }
}

/// The slot to read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotMode {
    /// A temporary slot, created for this run and gone when the connection closes: sees only
    /// changes committed after start-up.
    Temporary,
    /// A permanent slot by name, created if missing; a restart resumes where it was confirmed.
    Permanent(String),
}

/// Everything a run needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub conn: ConnParams,
    /// Tables to watch; empty means every table.
    pub tables: Vec<TablePattern>,
    pub ops: OpSet,
    pub slot: SlotMode,
    /// An existing publication to use instead of creating one.
    pub publication: Option<String>,
    /// How walwatch's own publications report a partitioned table's changes.
    pub partitions: Partitions,
    pub endpos: Option<EndPos>,
    pub sinks: Vec<SinkSpec>,
    /// How often a standby status update is sent even when nothing changed. Must be well under
    /// the server's `wal_sender_timeout` (60 s by default).
    pub status_interval: Duration,
    /// `--where`: a CEL expression every event must match, after the table and op fast paths.
    pub filter: Option<Arc<Expr>>,
    /// Let walwatch's own marker messages (fences, marks) through every filter, so a recording
    /// can be fenced by `walwatch assert` (`walwatch record`).
    pub keep_markers: bool,
    /// How JSON lines are wrapped.
    pub envelope: Envelope,
    /// Write who is recording ([`crate::marker::RecorderInfo`]) as the sinks' first event
    /// (`walwatch record` on a temporary slot).
    pub recorder_line: bool,
    /// Written (with the slot name) once streaming has started, for harnesses to wait on.
    pub ready_file: Option<PathBuf>,
    /// With a permanent slot: how long to keep reconnecting after the connection is lost
    /// (`None`: for ever). A temporary slot cannot be resumed, so it never reconnects.
    pub retry_for: Option<Duration>,
    /// A transaction buffered in memory (streamed in progress) is spilled to a temporary file
    /// once buffered transactions hold more than this many bytes.
    pub spill_threshold: usize,
    /// Where spill files go (unlinked on creation); default: the system temp dir.
    pub spill_dir: Option<PathBuf>,
    /// Warn when the slot retains more WAL than this many bytes.
    pub warn_retained_wal: u64,
    /// librdkafka properties for every Kafka sink (`-X key=value`).
    pub kafka_props: Vec<(String, String)>,
    /// `--raw FILE`: also write the raw replication stream there, for `walwatch replay`.
    pub raw: Option<PathBuf>,
    /// `--snapshot`: read the watched tables' rows first.
    pub snapshot: SnapshotMode,
    /// `--snapshot-chunk`: rows per fetch while reading them.
    pub snapshot_chunk: usize,
    /// `--snapshot-parallel`: tables read at the same time, each on a connection of its own.
    pub snapshot_parallel: usize,
    /// Draw progress bars on stderr (the binary sets it when stderr is a terminal and not
    /// `-q`).
    pub progress: bool,
}

/// Default for [`Config::spill_threshold`]: 64 MiB.
pub const DEFAULT_SPILL_THRESHOLD: usize = 64 << 20;
/// Default for [`Config::warn_retained_wal`]: 1 GiB.
pub const DEFAULT_WARN_RETAINED_WAL: u64 = 1 << 30;

impl Config {
    /// A config for `conn` with every other setting at its default: every table, every op, a
    /// temporary slot, no sink.
    pub fn new(conn: ConnParams) -> Config {
        Config {
            conn,
            tables: Vec::new(),
            ops: OpSet::all(),
            slot: SlotMode::Temporary,
            publication: None,
            partitions: Partitions::Root,
            endpos: None,
            sinks: Vec::new(),
            status_interval: Duration::from_secs(10),
            filter: None,
            keep_markers: false,
            envelope: Envelope::Native,
            recorder_line: false,
            ready_file: None,
            retry_for: None,
            spill_threshold: DEFAULT_SPILL_THRESHOLD,
            spill_dir: None,
            warn_retained_wal: DEFAULT_WARN_RETAINED_WAL,
            kafka_props: Vec::new(),
            raw: None,
            snapshot: SnapshotMode::Never,
            snapshot_chunk: DEFAULT_SNAPSHOT_CHUNK,
            snapshot_parallel: 1,
            progress: false,
        }
    }
}

/// What `walwatch replay` needs, validated: the recording and where its events go.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// The raw recording (`walwatch record --raw`).
    pub input: PathBuf,
    pub sinks: Vec<SinkSpec>,
    pub envelope: Envelope,
    pub ops: OpSet,
    pub filter: Option<Arc<Expr>>,
    pub kafka_props: Vec<(String, String)>,
}

/// Parses `-X key=value` librdkafka properties.
pub fn parse_kafka_props(list: &[String]) -> Result<Vec<(String, String)>> {
    list.iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(Error::Config(format!(
                "-X `{p}`: a librdkafka property is key=value, e.g. -X compression.type=lz4"
            ))),
        })
        .collect()
}

/// Parses a byte size: `65536`, `512k`, `64MB`, `64MiB`, `1G` (k/M/G are powers of 1024, as
/// PostgreSQL's memory settings are).
pub fn parse_size(option: &str, value: &str) -> Result<u64> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let bad = || {
        Error::Config(format!(
            "{option} `{value}`: expected a size such as 65536, 512kB, 64MB or 1GB"
        ))
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Compiles a `--where`-style option, naming the option in the error.
pub fn compile_expr(option: &str, source: &str) -> Result<Arc<Expr>> {
    compile_expr_in(option, source, Envelope::Native)
}

/// [`compile_expr`] for events in `envelope` (`crate::expr`).
pub fn compile_expr_in(option: &str, source: &str, envelope: Envelope) -> Result<Arc<Expr>> {
    Expr::compile_in(source, envelope)
        .map(Arc::new)
        .map_err(|e| Error::Config(format!("{option} {e}")))
}

/// Checks a replication slot name as the server would: lower-case letters, digits and
/// underscores, at most 63 bytes (PostgreSQL docs, 27.2.6 "Replication Slots").
pub fn validate_slot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "--slot `{name}`: a slot name may contain only lower-case letters, digits and underscores (at most 63)"
        )))
    }
}

/// `--snapshot`: whether the watched tables' existing rows are read first, as READ events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Changes only (the default).
    #[default]
    Never,
    /// The rows, then the changes after them.
    Initial,
    /// The rows, then the run ends.
    Only,
}

/// Default for [`Config::snapshot_chunk`].
pub const DEFAULT_SNAPSHOT_CHUNK: usize = 10_000;

/// How a partitioned table's changes are reported (the publications'
/// `publish_via_partition_root`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Partitions {
    /// Under the name of the partitioned table in the publication.
    #[default]
    Root,
    /// Under each partition's own name, with `partition_of`.
    Leaf,
}

/// Checks a publication name: a non-empty identifier of at most 63 bytes.
pub fn validate_publication_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(Error::Config(format!(
            "--publication `{name}`: not a valid name (1 to 63 bytes)"
        )));
    }
    Ok(())
}

/// Parses `--tables a,b,'sales.*'` into patterns.
pub fn parse_tables(list: &[String]) -> Result<Vec<TablePattern>> {
    let mut out = Vec::new();
    for item in list.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        out.push(TablePattern::parse(item).map_err(|e| Error::Config(format!("--tables: {e}")))?);
    }
    Ok(out)
}

/// Parses `--ops insert,delete` into a set; empty input means every op.
pub fn parse_ops(list: &[String]) -> Result<OpSet> {
    let mut ops = OpSet::empty();
    let mut any = false;
    for item in list.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let op: Op = item
            .parse()
            .map_err(|e| Error::Config(format!("--ops: {e}")))?;
        ops.insert(op);
        any = true;
    }
    Ok(if any { ops } else { OpSet::all() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpos_parses_now_and_lsns() {
        assert_eq!("now".parse::<EndPos>().unwrap(), EndPos::Now);
        assert_eq!("NOW".parse::<EndPos>().unwrap(), EndPos::Now);
        assert_eq!(
            "0/16B3748".parse::<EndPos>().unwrap(),
            EndPos::At(Lsn(0x16B3748))
        );
        let err = "later".parse::<EndPos>().unwrap_err().to_string();
        assert!(err.contains("--endpos") && err.contains("now"), "{err}");
    }

    #[test]
    fn slot_names_follow_the_server_rules() {
        assert!(validate_slot_name("orders_cdc_1").is_ok());
        for bad in ["", "Orders", "a-b", "a b", &"x".repeat(64)] {
            assert!(validate_slot_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sink_specs_parse() {
        let term = Format::Terminal { color: false };
        assert_eq!(
            SinkSpec::parse("jsonl:/tmp/x.jsonl", term).unwrap(),
            SinkSpec::Jsonl("/tmp/x.jsonl".into())
        );
        assert_eq!(
            SinkSpec::parse("stdout:json", term).unwrap(),
            SinkSpec::Stdout(Format::Json)
        );
        assert!(SinkSpec::parse("jsonl", term).is_err());
        let err = SinkSpec::parse("carrier-pigeon://x", term)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown sink"), "{err}");
    }

    #[test]
    fn ops_parse_and_default_to_all() {
        let ops = parse_ops(&["insert, DELETE".into()]).unwrap();
        assert!(ops.contains(Op::Insert) && ops.contains(Op::Delete));
        assert!(!ops.contains(Op::Update));
        assert_eq!(parse_ops(&[]).unwrap(), OpSet::all());
        assert!(parse_ops(&["upsert".into()]).is_err());
        let read = parse_ops(&["read".into()]).unwrap();
        assert!(read.contains(Op::Read) && !read.contains(Op::Insert));
        assert!(
            OpSet::all().contains(Op::Read),
            "snapshot rows pass by default"
        );
    }

    #[test]
    fn sizes_parse_in_powers_of_1024() {
        assert_eq!(parse_size("--x", "65536").unwrap(), 65536);
        assert_eq!(parse_size("--x", "512kB").unwrap(), 512 << 10);
        assert_eq!(parse_size("--x", "64MB").unwrap(), 64 << 20);
        assert_eq!(parse_size("--x", "1GiB").unwrap(), 1 << 30);
        for bad in ["", "MB", "12 parsecs", "-1", "99999999999999999999T"] {
            let e = parse_size("--x", bad).unwrap_err().to_string();
            assert!(e.contains("--x"), "{bad}: {e}");
        }
    }

    #[test]
    fn tables_split_on_commas() {
        let t = parse_tables(&["orders,users".into(), "sales.*".into()]).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[2].to_string(), "sales.*");
    }
}
