//! Sinks: where events go. Each sink is small and in its own file.
//!
//! A sink is written to from the pipeline's decode thread. `write` may buffer; `flush` makes
//! everything written so far as durable as the sink can make it (fsync for files). The pipeline
//! confirms a WAL position to the server only after every sink has flushed past it, so a sink
//! that fails to flush stops the run before anything it lost is confirmed. A sink that batches
//! (Arrow) keeps rows in memory across flushes: it reports the oldest transaction it still holds
//! (`holding`), and the pipeline confirms nothing past it until the batch is written.

pub mod arrow;
mod assert;
mod jsonl;
pub mod kafka;
pub(crate) mod resume;
mod terminal;

pub use arrow::{ArrowFormat, ArrowSink, ArrowSpec, TableBatch};
pub use assert::{AssertSink, EventLog, Slice};
pub use jsonl::JsonlSink;
pub use kafka::KafkaSink;
pub use terminal::TerminalSink;

use crate::error::Result;
use crate::event::{Event, Lsn};
pub use resume::Tally;

/// Where the sinks that look things up in the catalog get their lookups: the server, or a
/// raw recording (`walwatch replay`).
pub trait SinkCatalog {
    /// The Kafka sink's primary-key lookup.
    fn kafka_keys(&mut self) -> kafka::KeyLookup;
    /// The Arrow sink's array-dimensions lookup.
    fn array_dims(&mut self) -> arrow::DimsLookup;
}

pub trait Sink: Send {
    /// Accept one event (already filtered).
    fn write(&mut self, event: &Event) -> Result<()>;

    /// Make everything written so far durable (or at least delivered, for stdout).
    fn flush(&mut self) -> Result<()>;

    /// A short name for messages: `stdout`, the file path, the broker list.
    fn describe(&self) -> String;

    /// Whether `flush` makes events durable (a file), or only delivers them (stdout, memory).
    fn durable(&self) -> bool {
        false
    }

    /// The commit position of the oldest transaction whose events the sink was given but has
    /// not made durable yet (an open Arrow batch), after a flush. The pipeline confirms no
    /// position past it. `None` when a flush makes everything durable.
    fn holding(&self) -> Option<Lsn> {
        None
    }

    /// Time passed (called a few times a second): a sink that batches by time closes what is
    /// due and makes it durable.
    fn tick(&mut self) -> Result<()> {
        Ok(())
    }

    /// The run ends: write out everything held (partial batches) and make it durable.
    fn finish(&mut self) -> Result<()> {
        self.flush()
    }

    /// What the sink already held when it was opened to resume (the last event's position and
    /// how many events of that transaction): the session checks it against the slot.
    fn held(&self) -> Option<Tally> {
        None
    }
}
