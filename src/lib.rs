//! walwatch: PostgreSQL WAL capture. Opens a logical replication connection, decodes `pgoutput`
//! into typed row events, filters them and fans them out to sinks.

pub mod decode;
pub mod event;
pub mod expr;
mod event_json;
pub mod event_read;
pub mod pg;
pub mod scratch;

pub use event::{Column, Event, JsonText, LogicalMessage, Lsn, Op, Row, Timestamp, Value};
#[doc(hidden)]
pub mod cli;
pub mod config;
pub mod error;
pub mod filter;
pub mod pipeline;
pub mod session;
pub mod sink;

pub use error::Error;
