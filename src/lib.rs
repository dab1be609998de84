//! walwatch: PostgreSQL WAL capture. Opens a logical replication connection, decodes `pgoutput`
//! into typed row events, filters them and fans them out to sinks.

pub mod decode;
pub mod event;
mod event_json;
pub mod event_read;
pub mod expr;
pub mod pg;
pub mod scratch;

pub use event::{
    Column, ColumnKind, Event, JsonText, LogicalMessage, Lsn, Op, Relation, RelationColumn, Row,
    Timestamp, Value,
};
pub mod assert;
#[doc(hidden)]
pub mod cli;
pub mod config;
pub mod error;
pub mod filter;
/// Fuzz-target entry points (`fuzz/`); not part of the library face.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod marker;
pub mod pipeline;
pub mod proxy;
pub mod recording;
pub mod replay;
pub mod session;
pub mod sink;
pub mod snapshot_request;
pub mod spill;
mod watch;

pub use assert::{Predicate, Report, named};
pub use error::{Error, Result};
pub use expr::Expr;
pub use watch::{Mark, Until, Watch, WatchBuilder, report_of, run_until};
