//! The command line, as clap sees it. Nothing here does I/O: [`Cli::try_parse_checked`] parses
//! and checks the arguments, [`WatchArgs::to_config`] turns them into a validated [`Config`].
//!
//! `--dsn`, `-v` and `-q` are global: they may come before or after the subcommand
//! (`walwatch --dsn X slots drop N`, `walwatch slots drop N --dsn X`, `walwatch -v assert ...`).
//! The default command's other options (`walwatch --tables t`) may not be mixed with a
//! subcommand, and that is checked after parsing (see [`Cli::try_parse_checked`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use std::sync::Arc;

use crate::assert::parse_duration;
use crate::config::{self, Config, EndPos, Format, SinkSpec, SlotMode};
use crate::error::{Error, Result};
use crate::event_read::Envelope;
use crate::expr::Expr;
use crate::pg::params::ConnParams;

const ABOUT: &str =
    "Watch PostgreSQL row changes live from the WAL (logical replication, pgoutput).";

const AFTER_HELP: &str = r#"Examples:
  walwatch demo                                    try it on a throwaway local PostgreSQL
  walwatch --dsn postgres://u:p@127.0.0.1/shop --tables orders,users
  walwatch --tables orders --format json > events.jsonl
  walwatch --tables 'sales.*' --ops insert,delete --where 'data.amount != "0.00"'
  walwatch --slot bench --tables orders --endpos now --format json > out.jsonl
  walwatch watch --tables orders --until 'op == "INSERT"' --within 5s
  walwatch record --tables orders --output run.jsonl --ready-file ready &
  walwatch mark fault-start
  walwatch assert never --input run.jsonl --since fault-start --where 'op == "INSERT"'
  walwatch --slot orders_cdc --tables orders --output orders.jsonl   durable CDC, resumable
  walwatch slots                                   slots, retained WAL, lag
  walwatch --slot orders_cdc --tables orders --sink kafka://127.0.0.1:9092
  walwatch --slot cdc --sink 'kafka://b1:9092?topic={schema}.{table}&envelope=debezium' -X compression.type=lz4
  walwatch --slot lake --tables orders,users --sink arrow:./changes          Arrow IPC files
  walwatch --slot lake --sink 'arrow:./changes?format=parquet&rows=100000&seconds=30'

Without --dsn, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and
~/.pgpass apply, as for psql. Exit codes: 0 ok (assertion satisfied), 1 assertion failed,
2 error."#;

#[derive(Debug, Parser)]
#[command(name = "walwatch", version, about = ABOUT, after_help = AFTER_HELP)]
// Not `args_conflicts_with_subcommands`: clap counts global options as arguments of the
// command they are given to, so `walwatch -v assert ...` would be refused. The same rule,
// less the global options, is applied by `Cli::try_parse_checked`.
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub watch: WatchArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

impl Cli {
    /// Parses `args` (the program name first) like [`Parser::try_parse_from`], then refuses
    /// what clap's own `args_conflicts_with_subcommands` would, without counting the global
    /// options: an option of a command together with a subcommand of it (`walwatch --tables t
    /// slots`, `walwatch slots --format json drop N`), and `--dsn` with `demo`, which starts a
    /// server of its own. The errors are clap's usage errors (exit code 2).
    pub fn try_parse_checked<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cmd = Cli::command().mut_subcommand("record", |record| {
            RECORD_IGNORES
                .iter()
                .fold(record, |c, id| c.mut_arg(*id, |a| a.hide(true)))
        });
        let matches = cmd.try_get_matches_from_mut(args)?;
        no_options_with_subcommands(&mut cmd, &matches)?;
        if let Some(("record", record)) = matches.subcommand()
            && let Some(id) = RECORD_IGNORES
                .iter()
                .find(|id| record.value_source(id) == Some(ValueSource::CommandLine))
        {
            return Err(cmd.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "`walwatch record` does not take --{}: it records until stopped; wait for \
                     an event with `walwatch watch --until`, or assert with `walwatch assert`",
                    id.replace('_', "-")
                ),
            ));
        }
        if let Some(("demo", demo)) = matches.subcommand()
            && demo.value_source("dsn") == Some(ValueSource::CommandLine)
        {
            return Err(cmd.error(
                clap::error::ErrorKind::ArgumentConflict,
                "`walwatch demo` starts a PostgreSQL of its own: --dsn does not apply to it",
            ));
        }
        Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
    }
}

/// The options of `watch` that `record` shares the struct of but does not take: hidden from
/// its help and refused.
const RECORD_IGNORES: &[&str] = &["until", "within", "report", "proxy_events"];

/// At each level of `matches` that has a subcommand: no option of that level's own (a global
/// one aside) was given on the command line.
fn no_options_with_subcommands(
    cmd: &mut clap::Command,
    matches: &ArgMatches,
) -> std::result::Result<(), clap::Error> {
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(());
    };
    let given = cmd.get_arguments().find(|a| {
        !a.is_global_set()
            && matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine)
    });
    if let Some(arg) = given {
        let msg = format!("the subcommand '{name}' cannot be used with '{arg}'");
        return Err(cmd.error(clap::error::ErrorKind::ArgumentConflict, msg));
    }
    match cmd.find_subcommand_mut(name) {
        Some(sub_cmd) => no_options_with_subcommands(sub_cmd, sub),
        None => Ok(()),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a throwaway local PostgreSQL, write a little traffic to it and watch it live.
    /// Ctrl-C stops and removes everything it created.
    Demo(DemoArgs),
    /// Watch row changes (the default command); with --until, exit once an event matches.
    Watch(WatchArgs),
    /// Record events (and walwatch's markers) as JSONL for `walwatch assert`; stdout unless
    /// --output is given.
    Record(WatchArgs),
    /// Put a named marker into the stream (a transactional logical message), for
    /// `walwatch assert --since NAME`, and print its WAL position (LSN) on stdout. With
    /// --input or --recorder the mark is for that recorder alone: other recorders on the
    /// database never see it.
    Mark(MarkArgs),
    /// Check a recording: exit 0 when the assertion holds, 1 when it fails (report on stderr).
    Assert(AssertArgs),
    /// List the server's replication slots with the WAL each holds back; `slots drop NAME`
    /// drops one.
    Slots(SlotsArgs),
    /// Decode a raw recording (`walwatch record --raw FILE`) offline into any sinks, as the
    /// run that recorded it did: no server needed. For bug reports and regression tests.
    Replay(ReplayArgs),
    /// Relay the PostgreSQL protocol to --upstream, injecting faults (errors, delays, dropped
    /// connections) into the statements that match a rule; every action is a "proxy" event.
    Proxy(ProxyArgs),
    /// Add, remove or list the fault rules of a running `walwatch proxy` (its --control API).
    Fault(FaultArgs),
    /// Ask the walwatch streaming --slot to read the rows the tables hold now (a snapshot on
    /// demand, or backfill) while it goes on streaming; print the request's WAL position.
    /// The rows arrive as READ events, between the stream's changes.
    Snapshot(SnapshotArgs),
}

#[derive(Debug, Args, Clone)]
pub struct SnapshotArgs {
    /// The slot of the walwatch to ask (its --slot). A request made while none runs waits in
    /// the slot for the next one.
    #[arg(long, value_name = "NAME")]
    pub slot: String,

    /// Tables to read, comma-separated: orders, sales.orders, 'sales.*'. The slot must
    /// stream them (they are in its walwatch's --tables).
    #[arg(short, long, value_name = "TABLES", required = true)]
    pub tables: Vec<String>,

    /// Connection string (else the libpq variables).
    #[arg(long, value_name = "DSN", global = true)]
    pub dsn: Option<String>,

    /// Wait until every table's rows are durable in the walwatch's outputs; exit 2 if one
    /// could not be read. Needs walwatch's own publications (not --publication), whose
    /// record shows the progress.
    #[arg(long)]
    pub wait: bool,

    /// With --wait, give up after this long (5m, 1h): exit 2, the request goes on.
    #[arg(long, value_name = "DURATION", requires = "wait")]
    pub timeout: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct ProxyArgs {
    /// Where clients connect.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6432")]
    pub listen: std::net::SocketAddr,

    /// The server: host:port or a libpq DSN (its sslmode decides TLS to the server).
    #[arg(long, value_name = "DSN")]
    pub upstream: String,

    /// A rule, repeatable: error:QUERY:MESSAGE, delay:QUERY:DURATION or drop:QUERY, with
    /// options ;sqlstate= ;times= ;after= ;probability= ;database= ;user= ;application_name=.
    /// QUERY is a glob (* and ?) on the statement, leading comments and whitespace stripped,
    /// case-insensitive. Example: --fault 'error:INSERT*:disk full;sqlstate=53100'.
    #[arg(long = "fault", value_name = "RULE")]
    pub faults: Vec<String>,

    /// Rules from a JSON (array of rules) or TOML ([[fault]] tables) file.
    #[arg(long, value_name = "FILE")]
    pub rules: Vec<PathBuf>,

    /// The seed of probability= draws, for reproducible runs.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Append every event to this JSONL file (fsync'd before each action).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    /// Also record every statement relayed unchanged (action "pass", with its duration).
    #[arg(long)]
    pub log_queries: bool,

    /// Threads relaying connections. One (the default) relays with no wake-ups across threads,
    /// which costs the machine the least where the database and its clients share its cores
    /// (benches/proxy.sh measures it); more for many busy clients on a larger machine.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// Terminate clients' TLS with this certificate (PEM); without, clients asking for TLS
    /// are answered N.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Serve the control API (HTTP + JSON) here, for `walwatch fault`. Loopback only unless
    /// --control-token is given.
    #[arg(long, value_name = "ADDR")]
    pub control: Option<std::net::SocketAddr>,

    /// A token every control request must carry (Authorization: Bearer TOKEN).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "WALWATCH_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub control_token: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct FaultArgs {
    #[command(subcommand)]
    pub action: FaultAction,

    /// The proxy's control address (its --control).
    #[arg(
        long,
        value_name = "ADDR",
        global = true,
        default_value = "127.0.0.1:6433"
    )]
    pub proxy: String,

    /// The proxy's --control-token.
    #[arg(
        long,
        value_name = "TOKEN",
        global = true,
        env = "WALWATCH_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand, Clone)]
pub enum FaultAction {
    /// Add a rule (the --fault form); prints its id.
    Add {
        #[arg(value_name = "RULE")]
        rule: String,
    },
    /// Remove a rule by id.
    Rm {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// List the rules with how often each matched and fired (JSON).
    Ls,
    /// Remove every rule.
    Clear,
}

#[derive(Debug, Args, Clone)]
pub struct ReplayArgs {
    /// The raw recording.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Operations to show, comma-separated (as for watch). Default: all.
    #[arg(long, value_name = "OPS")]
    pub ops: Vec<String>,

    /// Only events matching this CEL expression (as for watch).
    #[arg(long = "where", value_name = "EXPR")]
    pub where_: Option<String>,

    #[command(flatten)]
    pub out: OutputArgs,
}

/// Where events go and how they look: shared by watch, record and replay.
#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// Output format on stdout. Default: terminal on a TTY, json otherwise.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,

    /// Colour in the terminal format.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: ColorArg,

    /// Append JSONL to this file (short for --sink jsonl:PATH).
    #[arg(short, long, value_name = "PATH")]
    pub output: Vec<PathBuf>,

    /// Where events go (repeatable; every event reaches every sink): jsonl:PATH,
    /// kafka://BROKERS[?topic=..&envelope=native|debezium&tombstones=true&tx_topic=..
    /// &message_topic=..&name=..], arrow:DIR[?format=ipc|parquet&rows=N&seconds=S&bytes=SIZE
    /// &old=true], stdout, stdout:json, stdout:terminal. Default: stdout.
    #[arg(long, value_name = "SPEC")]
    pub sink: Vec<String>,

    /// How JSON lines are wrapped: native (the schema) or nested ({"type":"wal","data":{...}}).
    #[arg(long, value_enum, default_value = "native")]
    pub envelope: EnvelopeArg,

    /// A librdkafka property for the Kafka sinks (repeatable), e.g. -X compression.type=lz4,
    /// -X security.protocol=SASL_SSL.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka_property: Vec<String>,
}

impl OutputArgs {
    /// The sinks named, stdout when none is.
    fn sinks(&self) -> Result<Vec<SinkSpec>> {
        let fmt = stdout_format(self.format, self.color);
        let mut sinks: Vec<SinkSpec> = self
            .sink
            .iter()
            .map(|s| SinkSpec::parse(s, fmt))
            .collect::<Result<_>>()?;
        sinks.extend(self.output.iter().cloned().map(SinkSpec::Jsonl));
        if sinks.is_empty() {
            sinks.push(SinkSpec::Stdout(fmt));
        }
        if sinks
            .iter()
            .filter(|s| matches!(s, SinkSpec::Stdout(_)))
            .count()
            > 1
        {
            return Err(Error::Config(
                "stdout is named as a sink more than once".into(),
            ));
        }
        Ok(sinks)
    }

    fn envelope(&self) -> Envelope {
        match self.envelope {
            EnvelopeArg::Native => Envelope::Native,
            EnvelopeArg::Nested => Envelope::Nested,
        }
    }
}

impl ReplayArgs {
    pub fn to_config(&self) -> Result<config::ReplayConfig> {
        Ok(config::ReplayConfig {
            input: self.file.clone(),
            sinks: self.out.sinks()?,
            envelope: self.out.envelope(),
            ops: config::parse_ops(&self.ops)?,
            filter: self
                .where_
                .as_deref()
                .map(|w| config::compile_expr("--where", w))
                .transpose()?,
            kafka_props: config::parse_kafka_props(&self.out.kafka_property)?,
        })
    }
}

#[derive(Debug, Args, Clone)]
pub struct SlotsArgs {
    #[command(subcommand)]
    pub action: Option<SlotsAction>,

    /// Connection string (else the libpq variables).
    #[arg(long, value_name = "DSN", global = true)]
    pub dsn: Option<String>,

    /// A table for people, or JSON for scripts: {"slots": [...], "publications": [...]}.
    #[arg(long, value_enum, default_value = "table")]
    pub format: SlotsFormat,
}

#[derive(Debug, Subcommand, Clone)]
pub enum SlotsAction {
    /// Drop a replication slot (the server frees the WAL it held back).
    Drop {
        /// The slot's name.
        name: String,
        /// Drop it even while a consumer uses it: terminates that connection first.
        #[arg(long)]
        force: bool,
    },
    /// Drop the orphaned walwatch publications: those of temporary runs that were killed
    /// before they could drop their own (their slot and their process are gone). Every
    /// walwatch start does this too.
    Prune,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotArg {
    Never,
    Initial,
    Only,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartitionsArg {
    Root,
    Leaf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlotsFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvelopeArg {
    /// {"type":"wal","op":...,"data":{row},...}: schemas/event.schema.json.
    Native,
    /// {"type":"wal","data":{"op":...,"data":{row},...}}: the generic {type, data} shape.
    Nested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportArg {
    Text,
    Json,
}

#[derive(Debug, Args, Clone)]
pub struct MarkArgs {
    /// The marker's name.
    pub name: String,

    /// Connection string (else the libpq variables).
    #[arg(long, value_name = "DSN", global = true)]
    pub dsn: Option<String>,

    /// Wait until the marker appears in this recording (proves the recorder is running and
    /// has caught up). The mark is for the recorder writing it alone.
    #[arg(long, value_name = "PATH")]
    pub input: Option<PathBuf>,

    /// The mark is for this recorder alone: its slot (the recording's first line, and the
    /// --ready-file, name it). Without it or --input, every recorder on the database sees it.
    #[arg(long, value_name = "SLOT", conflicts_with = "input")]
    pub recorder: Option<String>,

    /// How long to wait for it with --input.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub within: String,

    /// Also record the mark in this fault proxy's events (its --control address), for
    /// `walwatch assert --proxy-events FILE --since NAME`. Repeatable.
    #[arg(long, value_name = "ADDR")]
    pub proxy: Vec<String>,

    /// The proxies' --control-token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "WALWATCH_CONTROL_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct AssertArgs {
    #[command(subcommand)]
    pub kind: AssertKind,
}

#[derive(Debug, Subcommand, Clone)]
pub enum AssertKind {
    /// Pass on the first matching event committed after the call (after --since MARK, or
    /// since the recording began with --since start); fail when --within passes first.
    Eventually {
        #[command(flatten)]
        common: AssertCommon,
        /// How long to wait for a matching event.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        within: String,
    },
    /// Fail if a matching change was committed in the window: after --since (or for --during
    /// from now), up to a fence through the database.
    Never {
        #[command(flatten)]
        common: AssertCommon,
        /// Watch the next DURATION (fenced at both ends) instead of the recording so far.
        #[arg(long, value_name = "DURATION")]
        during: Option<String>,
    },
    /// Count matching events after --since, up to a fence through the database.
    Count {
        #[command(flatten)]
        common: AssertCommon,
        /// Pass when exactly N events match.
        #[arg(long, value_name = "N", group = "expect")]
        equals: Option<u64>,
        /// Pass when N or more events match.
        #[arg(long, value_name = "N", group = "expect")]
        at_least: Option<u64>,
        /// Pass when N or fewer events match.
        #[arg(long, value_name = "N", group = "expect")]
        at_most: Option<u64>,
    },
}

#[derive(Debug, Args, Clone)]
pub struct AssertCommon {
    /// A recording (JSONL written by `walwatch record`), fenced through the database.
    /// Repeatable.
    #[arg(long, value_name = "PATH", required_unless_present = "proxy_events")]
    pub input: Vec<PathBuf>,

    /// An events file of `walwatch proxy --events`, fenced by the proxy writing each action
    /// before it acts (no database needed). Repeatable; checked together with --input.
    #[arg(long, value_name = "PATH")]
    pub proxy_events: Vec<PathBuf>,

    /// The CEL expression an event must match, read in the recording's envelope (native:
    /// type, op, schema, table, data, old, key, xid, lsn, commit_lsn, ts, unchanged; nested:
    /// type and data.op, data.table, data.data.COLUMN...).
    #[arg(long = "where", value_name = "EXPR")]
    pub where_: String,

    /// Only events after the latest marker of this name (`walwatch mark NAME`), or `start`:
    /// every event since the recording began. Without it, `eventually` looks at events
    /// committed after the call, `never` and `count` at the whole recording.
    #[arg(long, value_name = "NAME|start")]
    pub since: Option<String>,

    /// Connection string for the fence and the diagnostics (else the libpq variables).
    #[arg(long, value_name = "DSN", global = true)]
    pub dsn: Option<String>,

    /// Check the recording as it is, without a fence (for a recording that has ended).
    #[arg(long)]
    pub no_fence: bool,

    /// How long the fence may take to appear in the recording.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub fence_timeout: String,

    /// Report format: text on stderr when the assertion fails, or JSON on stdout always.
    #[arg(long, value_enum, default_value = "text")]
    pub report: ReportArg,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// More log output on stderr (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Terminal,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorArg {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Args, Clone)]
pub struct WatchArgs {
    /// Connection string: a URI (postgres://user:pass@host:port/db) or key=value pairs. Global:
    /// also before or after a subcommand (`walwatch --dsn X slots`).
    #[arg(long, value_name = "DSN", global = true)]
    pub dsn: Option<String>,

    /// Tables to watch, comma-separated: orders, sales.orders, 'sales.*'. Default: every table.
    #[arg(short, long, value_name = "TABLES")]
    pub tables: Vec<String>,

    /// Operations to show, comma-separated: insert, update, delete, truncate, message, begin,
    /// commit, read (the rows of --snapshot). Default: all.
    #[arg(long, value_name = "OPS")]
    pub ops: Vec<String>,

    /// Use (or create) this permanent replication slot; a restart resumes where it left off.
    /// Default: a temporary slot that sees changes from start-up on.
    #[arg(long, value_name = "NAME")]
    pub slot: Option<String>,

    /// Use this existing publication instead of creating one.
    #[arg(long, value_name = "NAME")]
    pub publication: Option<String>,

    /// How changes of a partitioned table are reported: `root` under the watched table's
    /// name (publish_via_partition_root), `leaf` under each partition's name, with the
    /// partitioned table in `partition_of`. A --publication's own setting decides for it.
    #[arg(long, value_enum, default_value = "root")]
    pub partitions: PartitionsArg,

    /// Stop once every change committed before this position has been written: an LSN
    /// (0/16B3748) or `now` (the server's position at start-up).
    #[arg(long, value_name = "LSN|now")]
    pub endpos: Option<String>,

    /// Seconds between standby status updates to the server when nothing else sends one
    /// (what the sinks make durable is confirmed as it happens, at most every 100 ms).
    #[arg(long, value_name = "SECS", default_value = "10")]
    pub status_interval: f64,

    /// Only events matching this CEL expression, e.g. 'op == "UPDATE" && data.status ==
    /// "shipped"'. Runs after --tables and --ops.
    #[arg(long = "where", value_name = "EXPR")]
    pub where_: Option<String>,

    /// Write this file (holding the slot name) once streaming has started: from then on every
    /// commit is captured. Harnesses wait for it before acting.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Exit 0 as soon as an event matches this CEL expression (1 if --within passes first).
    #[arg(long, value_name = "EXPR")]
    pub until: Option<String>,

    /// With --until: how long to wait.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        requires = "until"
    )]
    pub within: String,

    /// With --until: the report's format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub report: ReportArg,

    /// With --until: also match the events `walwatch proxy --events` appends to this file
    /// from start-up on (they are matched, not printed). Repeatable.
    #[arg(long, value_name = "PATH", requires = "until")]
    pub proxy_events: Vec<PathBuf>,

    /// Stop (cleanly: the temporary slot is dropped) when the process that started walwatch
    /// exits, even when it is killed: for test harnesses, so no recorder outlives its test run.
    #[arg(long)]
    pub exit_with_parent: bool,

    /// With --slot: how long to keep reconnecting after the connection to the server is lost
    /// (a duration such as 10m, or `forever`).
    #[arg(long, value_name = "DURATION|forever", default_value = "forever")]
    pub retry_for: String,

    /// Spill large in-progress transactions to a temporary file once they hold more than this
    /// much memory (e.g. 64MB).
    #[arg(long, value_name = "SIZE", default_value = "64MB")]
    pub spill_threshold: String,

    /// Directory for spill files (default: $TMPDIR or /tmp).
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,

    /// Log a warning when the slot holds back more WAL than this on the server (e.g. 1GB).
    #[arg(long, value_name = "SIZE", default_value = "1GB")]
    pub warn_retained_wal: String,

    /// Also write the raw replication stream to FILE (what the server sent, with the catalog
    /// answers used), for `walwatch replay FILE` and for bug reports: it holds your rows.
    #[arg(long, value_name = "FILE")]
    pub raw: Option<PathBuf>,

    /// Read the watched tables' existing rows first, as READ events: `initial` then streams
    /// the changes after them, `only` then exits 0, `never` shows changes only. The rows are
    /// read in the snapshot the slot exports when this run creates it (a temporary slot, or a
    /// --slot that does not exist yet), so rows and changes meet with no gap and no overlap.
    #[arg(long, value_enum, default_value = "never")]
    pub snapshot: SnapshotArg,

    /// With --snapshot: rows handed on at a time (at most 1 MB of them).
    #[arg(long, value_name = "ROWS", default_value = "10000")]
    pub snapshot_chunk: usize,

    /// With --snapshot: how many tables are read at the same time, each on a connection of
    /// its own in the same snapshot.
    #[arg(long, value_name = "N", default_value = "1")]
    pub snapshot_parallel: usize,

    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Stop after this many seconds instead of waiting for Ctrl-C.
    #[arg(long, value_name = "SECS")]
    pub seconds: Option<f64>,

    /// Output format on stdout. Default: terminal on a TTY, json otherwise.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,

    /// Colour in the terminal format.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: ColorArg,
}

/// The stdout format: asked for, or terminal on a TTY and JSON otherwise.
pub fn stdout_format(format: Option<FormatArg>, color: ColorArg) -> Format {
    let tty = std::io::stdout().is_terminal();
    let color = match color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => tty && std::env::var_os("NO_COLOR").is_none(),
    };
    match format {
        Some(FormatArg::Json) => Format::Json,
        Some(FormatArg::Terminal) => Format::Terminal { color },
        None if tty => Format::Terminal { color },
        None => Format::Json,
    }
}

impl WatchArgs {
    /// Validates every argument; reads the environment (libpq variables, ~/.pgpass) but opens
    /// no connection.
    pub fn to_config(&self) -> Result<Config> {
        let conn = conn_params(self.dsn.as_deref())?;
        let tables = config::parse_tables(&self.tables)?;
        let ops = config::parse_ops(&self.ops)?;
        let slot = match &self.slot {
            Some(name) => {
                config::validate_slot_name(name)?;
                SlotMode::Permanent(name.clone())
            }
            None => SlotMode::Temporary,
        };
        if let Some(p) = &self.publication {
            config::validate_publication_name(p)?;
        }
        let endpos = self
            .endpos
            .as_deref()
            .map(str::parse::<EndPos>)
            .transpose()?;
        if endpos == Some(EndPos::Now) && slot == SlotMode::Temporary {
            return Err(Error::Config(
                "--endpos now needs --slot: a temporary slot only sees changes made after \
                 walwatch starts, so there is no backlog to drain"
                    .into(),
            ));
        }
        let sinks = self.out.sinks()?;
        if let Some(raw) = &self.raw
            && sinks
                .iter()
                .any(|s| matches!(s, SinkSpec::Jsonl(p) if p == raw))
        {
            return Err(Error::Config(format!(
                "--raw {}: that file is also an event output; give the raw recording a file \
                 of its own",
                raw.display()
            )));
        }
        let snapshot = match self.snapshot {
            SnapshotArg::Never => config::SnapshotMode::Never,
            SnapshotArg::Initial => config::SnapshotMode::Initial,
            SnapshotArg::Only => config::SnapshotMode::Only,
        };
        if snapshot != config::SnapshotMode::Never && self.raw.is_some() {
            return Err(Error::Config(
                "--raw records the replication stream only, not a snapshot's rows: take the \
                 snapshot in a run without --raw"
                    .into(),
            ));
        }
        if !(1..=64).contains(&self.snapshot_parallel) {
            return Err(Error::Config(
                "--snapshot-parallel must be between 1 and 64 connections".into(),
            ));
        }
        if self.snapshot_chunk == 0 {
            return Err(Error::Config(
                "--snapshot-chunk must be at least 1 row".into(),
            ));
        }
        if !(self.status_interval > 0.0 && self.status_interval <= 3600.0) {
            return Err(Error::Config(
                "--status-interval must be between 0 and 3600 seconds".into(),
            ));
        }
        let filter = self
            .where_
            .as_deref()
            .map(|w| config::compile_expr("--where", w))
            .transpose()?;
        Ok(Config {
            conn,
            tables,
            ops,
            slot,
            publication: self.publication.clone(),
            partitions: match self.partitions {
                PartitionsArg::Root => config::Partitions::Root,
                PartitionsArg::Leaf => config::Partitions::Leaf,
            },
            endpos,
            sinks,
            status_interval: Duration::from_secs_f64(self.status_interval),
            filter,
            keep_markers: false,
            envelope: self.out.envelope(),
            recorder_line: false,
            ready_file: self.ready_file.clone(),
            retry_for: match self.retry_for.as_str() {
                "forever" => None,
                d => Some(duration_arg("--retry-for", d)?),
            },
            spill_threshold: usize::try_from(config::parse_size(
                "--spill-threshold",
                &self.spill_threshold,
            )?)
            .map_err(|_| Error::Config("--spill-threshold is too large".into()))?,
            spill_dir: self.spill_dir.clone(),
            warn_retained_wal: config::parse_size("--warn-retained-wal", &self.warn_retained_wal)?,
            kafka_props: config::parse_kafka_props(&self.out.kafka_property)?,
            raw: self.raw.clone(),
            snapshot,
            snapshot_chunk: self.snapshot_chunk,
            snapshot_parallel: self.snapshot_parallel,
            progress: false,
        })
    }

    /// `--until` compiled and `--within` parsed, if --until was given.
    pub fn until(&self) -> Result<Option<(Arc<Expr>, Duration)>> {
        match &self.until {
            None => Ok(None),
            Some(u) => Ok(Some((
                config::compile_expr("--until", u)?,
                duration_arg("--within", &self.within)?,
            ))),
        }
    }

    /// The config for `walwatch record`: JSON (never the terminal view) and markers kept.
    pub fn to_record_config(&self) -> Result<Config> {
        let mut args = self.clone();
        if args.out.format.is_none() {
            args.out.format = Some(FormatArg::Json);
        }
        let mut config = args.to_config()?;
        config.keep_markers = true;
        config.recorder_line = true;
        Ok(config)
    }
}

/// Parses a `5s` / `250ms` / `2m` option.
pub fn duration_arg(option: &str, value: &str) -> Result<Duration> {
    parse_duration(value).map_err(|e| Error::Config(format!("{option}: {e}")))
}

/// Resolves connection parameters from `--dsn` and the libpq environment.
pub fn conn_params(dsn: Option<&str>) -> Result<ConnParams> {
    let env = |name: &str| std::env::var(name).ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    Ok(ConnParams::resolve(dsn, &env, home.as_deref())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_checked(std::iter::once("walwatch").chain(args.iter().copied()))
    }

    /// The DSN each command would connect with.
    fn dsn_of(cli: &Cli) -> Option<&str> {
        match &cli.command {
            None => cli.watch.dsn.as_deref(),
            Some(Command::Watch(w) | Command::Record(w)) => w.dsn.as_deref(),
            Some(Command::Slots(s)) => s.dsn.as_deref(),
            Some(Command::Snapshot(s)) => s.dsn.as_deref(),
            Some(Command::Mark(m)) => m.dsn.as_deref(),
            Some(Command::Assert(a)) => match &a.kind {
                AssertKind::Eventually { common, .. }
                | AssertKind::Never { common, .. }
                | AssertKind::Count { common, .. } => common.dsn.as_deref(),
            },
            Some(Command::Demo(_) | Command::Replay(_) | Command::Proxy(_) | Command::Fault(_)) => {
                None
            }
        }
    }

    #[test]
    fn raw_recordings_and_replays_parse_into_their_configs() {
        let cli = parse(&["record", "--raw", "r.jsonl", "--output", "e.jsonl"]).unwrap();
        let Some(Command::Record(w)) = &cli.command else {
            panic!("{cli:?}")
        };
        let config = w.to_record_config().unwrap();
        assert_eq!(config.raw, Some(PathBuf::from("r.jsonl")));
        // The raw recording and an event output in one file would interleave.
        let cli = parse(&["record", "--raw", "e.jsonl", "--output", "e.jsonl"]).unwrap();
        let Some(Command::Record(w)) = &cli.command else {
            panic!("{cli:?}")
        };
        let err = w.to_record_config().unwrap_err().to_string();
        assert!(err.contains("a file of its own"), "{err}");

        let cli = parse(&[
            "replay",
            "r.jsonl",
            "--ops",
            "insert",
            "--sink",
            "jsonl:o.jsonl",
        ])
        .unwrap();
        let Some(Command::Replay(r)) = &cli.command else {
            panic!("{cli:?}")
        };
        let config = r.to_config().unwrap();
        assert_eq!(config.input, PathBuf::from("r.jsonl"));
        assert_eq!(
            config.sinks,
            vec![SinkSpec::Jsonl(PathBuf::from("o.jsonl"))]
        );
        assert!(config.ops.contains(crate::event::Op::Insert));
        assert!(!config.ops.contains(crate::event::Op::Delete));
        // Replay reads no server: the slot options of watch are refused.
        assert!(parse(&["replay", "r.jsonl", "--slot", "s"]).is_err());
    }

    #[test]
    fn assert_reads_recordings_and_proxy_events_files_one_at_least() {
        let cli = parse(&[
            "assert",
            "never",
            "--input",
            "a.jsonl",
            "--input",
            "b.jsonl",
            "--proxy-events",
            "p.jsonl",
            "--where",
            "true",
        ])
        .unwrap();
        let Some(Command::Assert(AssertArgs {
            kind: AssertKind::Never { common, .. },
        })) = &cli.command
        else {
            panic!("{cli:?}")
        };
        assert_eq!(
            common.input,
            [PathBuf::from("a.jsonl"), PathBuf::from("b.jsonl")]
        );
        assert_eq!(common.proxy_events, [PathBuf::from("p.jsonl")]);
        let only_proxy = [
            "assert",
            "count",
            "--proxy-events",
            "p.jsonl",
            "--where",
            "true",
        ];
        assert!(parse(&[&only_proxy[..], &["--equals", "1"]].concat()).is_ok());
        let err = parse(&["assert", "never", "--where", "true"]).unwrap_err();
        assert!(err.to_string().contains("--input"), "{err}");
        // `watch --proxy-events` only with --until.
        assert!(parse(&["watch", "--proxy-events", "p.jsonl"]).is_err());
        assert!(parse(&["watch", "--proxy-events", "p.jsonl", "--until", "true"]).is_ok());
    }

    #[test]
    fn dsn_verbose_and_quiet_go_before_or_after_the_subcommand() {
        let assert_args = ["never", "--input", "f.jsonl", "--where", "true"];
        let cases: Vec<Vec<&str>> = vec![
            vec!["--dsn", "X", "slots"],
            vec!["slots", "--dsn", "X"],
            vec!["--dsn", "X", "slots", "drop", "s"],
            vec!["slots", "--dsn", "X", "drop", "s"],
            vec!["slots", "drop", "s", "--dsn", "X"],
            vec!["--dsn", "X", "mark", "m"],
            vec!["mark", "m", "--dsn", "X"],
            vec!["--dsn", "X", "watch", "--tables", "t"],
            vec!["watch", "--dsn", "X"],
            vec!["--dsn", "X", "record"],
            [&["--dsn", "X", "assert"][..], &assert_args].concat(),
            [&["assert", "--dsn", "X"][..], &assert_args].concat(),
            [&["assert"][..], &assert_args, &["--dsn", "X"]].concat(),
            vec!["--dsn", "X", "--tables", "t"],
        ];
        for args in &cases {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?} refused: {e}"));
            assert_eq!(dsn_of(&cli), Some("X"), "{args:?}");
        }
        // `slots drop` reads the one --dsn, wherever it was given.
        let cli = parse(&["slots", "drop", "s", "--dsn", "X"]).unwrap();
        let Some(Command::Slots(s)) = &cli.command else {
            panic!("not slots: {cli:?}");
        };
        assert!(matches!(&s.action, Some(SlotsAction::Drop { name, .. }) if name == "s"));
        // -v / -q anywhere.
        for (args, verbose, quiet) in [
            (vec!["-v", "assert"], 1, false),
            (vec!["assert", "-v"], 1, false),
            (vec!["-vv", "assert"], 2, false),
            // clap keeps the count given last, it does not add the two places up.
            (vec!["-v", "assert", "-vv"], 2, false),
            (vec!["-q", "assert"], 0, true),
            (vec!["assert", "-q"], 0, true),
        ] {
            let args = [&args[..], &assert_args].concat();
            let cli = parse(&args).unwrap_or_else(|e| panic!("{args:?} refused: {e}"));
            assert_eq!(
                (cli.log.verbose, cli.log.quiet),
                (verbose, quiet),
                "{args:?}"
            );
        }
        let cli = parse(&["slots", "drop", "s", "-vv"]).unwrap();
        assert_eq!(cli.log.verbose, 2);
    }

    #[test]
    fn other_options_of_a_command_still_exclude_its_subcommands() {
        for (args, needle) in [
            (
                vec!["--tables", "t", "slots"],
                "'slots' cannot be used with '--tables",
            ),
            (
                vec!["--format", "json", "mark", "m"],
                "'mark' cannot be used with '--format",
            ),
            (
                vec!["slots", "--format", "json", "drop", "s"],
                "'drop' cannot be used with '--format",
            ),
            (vec!["demo", "--dsn", "X"], "--dsn does not apply"),
            (vec!["--dsn", "X", "demo"], "--dsn does not apply"),
        ] {
            let e = parse(&args).expect_err(&format!("{args:?} accepted"));
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{args:?}"
            );
            // A usage error: exit code 2, like every other refused command line.
            assert_eq!(e.exit_code(), 2);
            let text = e.to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
        }
        // Defaults of the default command do not count as given.
        assert!(parse(&["slots", "--format", "json"]).is_ok());
        assert!(parse(&["demo", "--seconds", "1"]).is_ok());
    }
}
