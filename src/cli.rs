//! The command line, as clap sees it. Nothing here does I/O: [`WatchArgs::to_config`] turns
//! the raw arguments into a validated [`Config`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config, EndPos, Format, SinkSpec, SlotMode};
use crate::error::{Error, Result};
use crate::pg::params::ConnParams;

const ABOUT: &str =
    "Watch PostgreSQL row changes live from the WAL (logical replication, pgoutput).";

const AFTER_HELP: &str = "\
Examples:
  walwatch demo                                    try it on a throwaway local PostgreSQL
  walwatch --dsn postgres://u:p@127.0.0.1/shop --tables orders,users
  walwatch --tables orders --format json > events.jsonl
  walwatch --tables 'sales.*' --ops insert,delete
  walwatch --slot bench --tables orders --endpos now --format json > out.jsonl

Without --dsn, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE and
~/.pgpass apply, as for psql. Exit codes: 0 ok, 2 error.";

#[derive(Debug, Parser)]
#[command(name = "walwatch", version, about = ABOUT, after_help = AFTER_HELP)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub watch: WatchArgs,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a throwaway local PostgreSQL, write a little traffic to it and watch it live.
    /// Ctrl-C stops and removes everything it created.
    Demo(DemoArgs),
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
    /// Connection string: a URI (postgres://user:pass@host:port/db) or key=value pairs.
    #[arg(long, value_name = "DSN")]
    pub dsn: Option<String>,

    /// Tables to watch, comma-separated: orders, sales.orders, 'sales.*'. Default: every table.
    #[arg(short, long, value_name = "TABLES")]
    pub tables: Vec<String>,

    /// Operations to show, comma-separated: insert, update, delete, truncate, message, begin,
    /// commit. Default: all.
    #[arg(long, value_name = "OPS")]
    pub ops: Vec<String>,

    /// Use (or create) this permanent replication slot; a restart resumes where it left off.
    /// Default: a temporary slot that sees changes from start-up on.
    #[arg(long, value_name = "NAME")]
    pub slot: Option<String>,

    /// Use this existing publication instead of creating one.
    #[arg(long, value_name = "NAME")]
    pub publication: Option<String>,

    /// Stop once every change committed before this position has been written: an LSN
    /// (0/16B3748) or `now` (the server's position at start-up).
    #[arg(long, value_name = "LSN|now")]
    pub endpos: Option<String>,

    /// Output format on stdout. Default: terminal on a TTY, json otherwise.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,

    /// Colour in the terminal format.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: ColorArg,

    /// Append JSONL to this file (short for --sink jsonl:PATH).
    #[arg(short, long, value_name = "PATH")]
    pub output: Vec<PathBuf>,

    /// Where events go (repeatable; every event reaches every sink): jsonl:PATH, stdout,
    /// stdout:json, stdout:terminal. Default: stdout.
    #[arg(long, value_name = "SPEC")]
    pub sink: Vec<String>,

    /// Seconds between standby status updates to the server.
    #[arg(long, value_name = "SECS", default_value = "10")]
    pub status_interval: f64,
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
        let env = |name: &str| std::env::var(name).ok();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let conn = ConnParams::resolve(self.dsn.as_deref(), &env, home.as_deref())?;
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
        if !(self.status_interval > 0.0 && self.status_interval <= 3600.0) {
            return Err(Error::Config(
                "--status-interval must be between 0 and 3600 seconds".into(),
            ));
        }
        Ok(Config {
            conn,
            tables,
            ops,
            slot,
            publication: self.publication.clone(),
            endpos,
            sinks,
            status_interval: Duration::from_secs_f64(self.status_interval),
        })
    }
}
