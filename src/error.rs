//! The library's error type, grouped by what the user can do about it.
//!
//! * Definite errors (bad arguments, missing privilege, server misconfigured, table missing) say
//!   what to fix; retrying without a change cannot help.
//! * Transient errors (connection lost, server restarting) may succeed if retried.
//!
//! Every message is one readable sentence (or two: what happened, what to do) because the CLI
//! prints it as-is on stderr before exiting with code 2.

use std::path::PathBuf;

use crate::decode::DecodeError;
use crate::pg::error::PgError;
use crate::pg::params::ParamsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line or builder was given something unusable. Fix the arguments.
    #[error("{0}")]
    Config(String),

    /// Connection parameters could not be resolved (bad DSN, unreadable pgpass...).
    #[error(transparent)]
    Params(#[from] ParamsError),

    /// The replication connection failed or the server refused a command.
    #[error(transparent)]
    Pg(#[from] PgError),

    /// The metadata connection (tokio-postgres) failed.
    #[error("metadata query failed: {}", describe_db_error(.0))]
    Meta(#[from] tokio_postgres::Error),

    /// A catalog query returned a column walwatch cannot read as the type it expects (a server
    /// version whose catalog column has another type, e.g. `pg_attribute.attndims` became
    /// `int2` in PostgreSQL 17). Every catalog query casts its columns to the types it reads, so
    /// this is a walwatch bug: nothing the user can change; report it. Never a panic.
    #[error(
        "catalog query `{query}` returned an unexpected column type: {}; this is a walwatch bug, please report it with the server version (SELECT version())",
        describe_db_error(.source)
    )]
    CatalogType {
        /// The name of the query (its function, e.g. `array_dims`).
        query: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The server's setup does not allow what was asked: the message says what to change.
    #[error("{0}")]
    Setup(String),

    /// The replication slot is in use by another connection. At start-up that is another
    /// consumer (definite); while reconnecting it is usually our own old walsender not yet gone.
    #[error("{0}")]
    SlotInUse(String),

    /// The slot was dropped, invalidated or moved by someone else: changes may have been lost,
    /// and continuing would hide it. The message says what happened and what to do.
    #[error("{0}")]
    SlotLost(String),

    /// A table could not be read for `--snapshot` (no SELECT privilege, dropped meanwhile), or
    /// the snapshot cannot be taken as asked. The message names the table and what to do.
    #[error("{0}")]
    Snapshot(String),

    /// A table named on the command line does not exist.
    #[error("{0}")]
    NoSuchTable(String),

    /// The server ended the replication stream before walwatch was done.
    #[error(
        "the server ended the replication stream (it may be shutting down or restarting); nothing past the last durable event was confirmed: run walwatch again"
    )]
    StreamEnded,

    /// The server sent a pgoutput message walwatch could not decode.
    #[error("cannot decode the replication stream: {0}")]
    Decode(#[from] DecodeError),

    /// A sink could not write. Nothing past the last durable event was confirmed to the server.
    #[error("cannot write to {target}: {source}{hint}", hint = io_hint(.source))]
    Sink {
        target: String,
        #[source]
        source: std::io::Error,
    },

    /// Kafka did not take the changes (a delivery failed after librdkafka's retries). Nothing
    /// past the last acknowledged transaction was confirmed.
    #[error("Kafka: {0}")]
    Kafka(String),

    /// An Arrow or Parquet file could not be encoded, or read back to resume.
    #[error("Arrow sink, {target}: {message}")]
    Arrow { target: String, message: String },

    /// The demo's or a test's throwaway cluster failed.
    #[error(transparent)]
    Scratch(#[from] crate::scratch::ScratchError),

    /// A `--where` / assertion expression failed on an event (a type error): fix the expression.
    #[error("{0}")]
    Expr(#[from] crate::expr::EvalError),

    /// An assertion did not hold. Its report says what was expected, what was seen and why the
    /// event may be missing.
    #[error("{0}")]
    Assertion(Box<crate::assert::Report>),

    /// A fence did not come back through the stream in time: the stream is behind or stalled.
    #[error("{0}")]
    FenceTimeout(String),

    /// A raw recording (`walwatch replay`) cannot be used: cut short, damaged, or of another
    /// format. The message says which line and why.
    #[error("{}: {message}", path.display())]
    Recording { path: PathBuf, message: String },

    /// The fault proxy cannot start, or a fault rule is invalid: the message says what to fix.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),

    /// A file walwatch needs could not be used.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether retrying the same operation unchanged may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Pg(e) => e.is_transient(),
            // A metadata connection refused while the server shuts down, crash-recovers or
            // starts (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now,
            // "the database system is not yet accepting connections") is as transient as
            // the replication connection's own.
            Error::Meta(e) => {
                e.is_closed()
                    || e.as_db_error()
                        .is_none_or(|db| matches!(db.code().code(), "57P01" | "57P02" | "57P03"))
            }
            Error::StreamEnded | Error::FenceTimeout(_) => true,
            _ => false,
        }
    }

    /// True when the error is a closed output pipe (`walwatch ... | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Sink { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// A tokio-postgres error with the server's message, detail and hint when there is one.
fn describe_db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = db.message().to_string();
            if let Some(d) = db.detail() {
                s.push_str(" (");
                s.push_str(d);
                s.push(')');
            }
            if let Some(h) = db.hint() {
                s.push_str("; hint: ");
                s.push_str(h);
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

fn io_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => {
            "; the disk is full: free space and run again (nothing past the last durable event was confirmed)"
        }
        Some(libc::EDQUOT) => "; the disk quota is exceeded: free space and run again",
        Some(libc::EACCES) | Some(libc::EPERM) => "; check the path's permissions",
        Some(libc::EIO) => "; an I/O error: check the device",
        Some(libc::EFBIG) => {
            "; the file reached its size limit (ulimit -f, or the file system's): raise it or write to a new file, then run again (nothing past the last durable event was confirmed)"
        }
        _ => "",
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
