//! Sinks: where events go. Each sink is small and in its own file, behind one contract
//! ([`Sink`]): write a batch, later acknowledge a position. The pipeline runs each sink on a
//! thread of its own, so a slow one (an fsync, a broker round trip, Parquet encoding) delays
//! only its own acknowledgements, and confirms to the server what every sink acknowledged.

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

/// A run of events handed to every sink at once, in stream order: whole transactions, or the
/// next part of one too large to hold (a streamed transaction is cut into many batches).
///
/// `end` is the position a sink acknowledges once it has made this batch and every batch
/// before it durable: the end of the last transaction the batch completes, or the previous
/// batch's `end` when it completes none. A batch may hold no events at all: it then only
/// moves `end` (transactions filtered out, an idle server's keepalive).
pub struct Batch {
    pub events: Vec<Event>,
    pub end: Lsn,
    /// Its share of the pipeline's memory budget, given back when the last sink drops it.
    pub(crate) _reserved: Option<crate::pipeline::Reservation>,
    /// Where the events go when the last sink drops the batch: back to the thread that
    /// decoded them, to be freed there (see `pipeline::sinks`).
    pub(crate) recycle: Option<crossbeam_channel::Sender<Vec<Event>>>,
}

impl Batch {
    pub fn new(events: Vec<Event>, end: Lsn) -> Batch {
        Batch {
            events,
            end,
            _reserved: None,
            recycle: None,
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if let Some(back) = &self.recycle
            && !self.events.is_empty()
        {
            // The receiver is gone only once the run is over: the events are freed here then.
            let _ = back.send(std::mem::take(&mut self.events));
        }
    }
}

/// Where events go. One contract for every sink: **write a batch, later acknowledge a
/// position.** Each sink runs on a thread of its own (`pipeline::sinks`), fed by a bounded
/// queue; the pipeline confirms to the server the least position every sink has acknowledged,
/// so a sink that has not made something durable holds the slot before it, and a sink that
/// fails stops the run with nothing it lost confirmed.
pub trait Sink: Send {
    /// Accept a batch (already filtered). May buffer.
    fn write(&mut self, batch: &Batch) -> Result<()>;

    /// Make durable what the sink chooses to now, and say how far that is: every event of the
    /// batches up to the returned position is durable (fsync'd, acknowledged by the broker,
    /// in a closed file). `written` is the `end` of the last batch written; a sink that
    /// makes everything durable returns it, one that still holds rows back (an open Arrow
    /// batch) returns less. Called when the sink's queue runs dry, at least every 250 ms
    /// while it is busy, and a few times a second while idle (a sink that batches by time
    /// closes what is due). A sink that only delivers (stdout, memory) acknowledges at once.
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn>;

    /// The oldest batch (counting `write` calls from 1) some event of which is not durable
    /// yet after the last acknowledgement (in an open Arrow batch, a Kafka message without its
    /// delivery report); `None` when every event written is. The position acknowledged cannot
    /// say so when many batches share it, as a snapshot's rows do; and "some batch is held"
    /// is not enough either: under steady writes some batch always is, and the batches before
    /// it must count as durable.
    fn held_from(&self) -> Option<u64> {
        None
    }

    /// The run ends: write out everything held (partial batches) and make it durable.
    fn finish(&mut self, written: Lsn) -> Result<Lsn> {
        self.acknowledge(written)
    }

    /// A short name for messages: `stdout`, the file path, the broker list.
    fn describe(&self) -> String;

    /// Whether an acknowledgement means durable (a file, a broker), or only delivered
    /// (stdout, memory): a permanent slot warns about the latter.
    fn durable(&self) -> bool {
        false
    }

    /// What the sink already held when it was opened to resume (the last event's position and
    /// how many events of that transaction): the session checks it against the slot.
    fn held(&self) -> Option<Tally> {
        None
    }
}
