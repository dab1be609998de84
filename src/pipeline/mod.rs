//! source -> decode -> filter -> fan-out, and the position every sink has made durable.
//!
//! Three stages, each on its own thread, joined by queues bounded in bytes and in count:
//!
//! * the replication task (async, `replication.rs`) owns the socket. It reads frames in
//!   batches, answers keepalives and sends status updates (`feedback.rs`, the one place that
//!   does), also while it waits for room downstream: that wait is the backpressure a slow sink
//!   applies, and it never starves the server of replies. After a lost connection it
//!   reconnects from what is durable (`retry.rs`).
//! * the decode thread (`fanout.rs`) decodes, looks up what it needs once per relation
//!   (`lookups.rs`), filters, and cuts what passes into batches, handed to every sink at once.
//! * every sink runs on a thread of its own (`sinks.rs`) behind one contract
//!   ([`crate::sink::Sink`]): write a batch, later acknowledge a position. The least position
//!   every sink acknowledged is what the replication task reports as `flush`: never a
//!   position whose data is not durable.

mod backfill;
mod budget;
mod fanout;
mod feedback;
mod lookups;
mod progress;
mod replication;
mod retry;
mod sinks;
mod windows;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};

pub use backfill::{Backfill, Connect, SharedRecord};
pub use budget::Reservation;
pub use retry::{Reopen, Retry};

use crate::decode::{Decoder, TypeRegistry};
use crate::error::{Error, Result};
use crate::event::{Lsn, TableName};
use crate::filter::Filter;
use crate::pg::stream::{ReplMessage, ReplStream};
use crate::sink::Sink;
use fanout::Fanout;
use replication::Pump;

/// One frame handed to the decode thread, in stream order (or read from a raw recording by
/// [`replay`]).
pub enum Frame {
    /// XLogData or a keepalive, as the server sent it.
    Message(ReplMessage),
    /// A new connection follows: forget the old one's partial state and skip what the server
    /// replays of what was already written.
    Reset,
    /// Rows a snapshot read (`--snapshot`), as COPY sent them: before the stream's first
    /// frame, they become READ events and go through the same lookups, filter and batches as
    /// decoded changes.
    Rows(crate::pg::snapshot::SnapshotRows),
}

/// Frames crossing from the socket to the decode thread together, with the bytes they hold in
/// the hand-off's budget (given back once they are handled).
pub(crate) struct Frames {
    frames: Vec<Frame>,
    permit: Option<OwnedSemaphorePermit>,
}

/// Sees every frame the decode thread handles, in the order it handles them, and the end of
/// the run: a raw recording (`walwatch record --raw`, src/recording).
pub trait Tap: Send {
    fn frame(&mut self, frame: &Frame) -> Result<()>;
    /// Called before each batch is handed to the sinks: what was seen so far reaches the disk.
    fn sync(&mut self) -> Result<()>;
    /// The run ended, with this result.
    fn finish(&mut self, outcome: &Result<()>) -> Result<()>;
}

/// What the pipeline's stages tell the replication task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// Every event before this position is durable in every sink (published by the sinks'
    /// acknowledgements).
    durable: Lsn,
    /// Every event of the first `batches` batches handed on is durable in every sink.
    batches: u64,
    /// The end position was reached: stop.
    done: bool,
    /// The decode thread stopped (finished or failed); its result is in the join handle.
    stopped: bool,
}

/// Why a run ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `--endpos` was reached.
    EndPos,
    /// Ctrl-C / SIGTERM, or the library caller asked.
    Shutdown,
    /// The server ended the stream.
    ServerClosed,
    /// Standard output was closed (`walwatch | head`).
    OutputClosed,
    /// A replayed recording ended (`walwatch replay`).
    RecordingEnded,
    /// `--snapshot only`: the snapshot's rows were handed on.
    SnapshotTaken,
}

/// A snapshot to read before the stream (`--snapshot`), in the slot's exported snapshot.
pub struct SnapshotFeed {
    /// `--snapshot-parallel` readers, each in the slot's exported snapshot.
    pub readers: Vec<crate::pg::snapshot::SnapshotReader>,
    pub tables: Vec<crate::pg::snapshot::SnapshotTable>,
    /// Rows per chunk handed on.
    pub chunk: usize,
    /// `--snapshot only`: the run ends once the rows are handed on.
    pub only: bool,
    /// Draw the progress on stderr (a terminal, not `-q`).
    pub progress: bool,
}

/// What a finished stream reports.
#[derive(Clone, Copy, Debug)]
pub struct StreamOutcome {
    pub reason: StopReason,
    pub events: u64,
    pub durable: Lsn,
}

/// Reloads the type registry from the catalog (a blocking call on the decode thread).
pub type TypeLoader = Box<dyn FnMut() -> Result<TypeRegistry> + Send>;

/// The partitions a relation is part of, nearest first, up to its partition tree's root
/// (empty for a table that is not a partition): a blocking catalog call on the decode thread.
pub type PartitionLookup = Box<dyn FnMut(u32) -> Result<Vec<TableName>> + Send>;

/// A table's primary-key columns by its OID (empty without one): a blocking catalog call on
/// the decode thread.
pub type KeyLookup = Box<dyn FnMut(u32) -> Result<Vec<String>> + Send>;

/// Settings for [`run_stream`].
pub struct StreamSetup {
    pub decoder: Decoder,
    /// Called when Type messages name user types the registry does not know.
    pub load_types: Option<TypeLoader>,
    /// Fills in `partition_of` for events reported under a partition's name.
    pub partitions: Option<PartitionLookup>,
    /// Makes `key` the primary key where the replica identity is another set of columns.
    pub primary_keys: Option<KeyLookup>,
    /// Sees the frames, for a raw recording.
    pub tap: Option<Box<dyn Tap>>,
    pub filter: Filter,
    pub sinks: Vec<Box<dyn Sink>>,
    pub endpos: Option<Lsn>,
    pub status_interval: Duration,
    /// Where the stream starts (the slot's confirmed position or its creation point): durable
    /// from the outset, and what a reconnect before any progress resumes from.
    pub start: Lsn,
    /// Rows to hand on before the stream's first frame.
    pub snapshot: Option<SnapshotFeed>,
    /// A snapshot's progress to keep, and what of it to read while the stream runs.
    pub backfill: Option<Backfill>,
}

/// Runs the stream until the end position, shutdown, server close, or an error; with `retry`,
/// reconnects after transient failures. Sends a final status update with the durable position
/// and ends the copy before returning.
pub async fn run_stream(
    stream: ReplStream,
    mut setup: StreamSetup,
    retry: Option<Retry>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<StreamOutcome> {
    let (tx, rx) = mpsc::channel::<Frames>(replication::HANDOFF_BATCHES);
    let progress = Arc::new(watch::Sender::new(Progress {
        durable: setup.start,
        ..Progress::default()
    }));
    let feed = setup.snapshot.take();
    let backfill = setup.backfill.take();
    let (notes_tx, notes_rx) = mpsc::unbounded_channel();
    let reports = backfill.as_ref().map(|b| fanout::Reports {
        notes: notes_tx,
        run: b.run.clone(),
        slot: b.slot.clone(),
    });
    let mut pump = Pump::new(&setup, tx, progress.subscribe());
    let worker = fanout::spawn(setup, reports, rx, Arc::clone(&progress))?;
    // The backfill runs beside the stream; when it says the run should stop (`--snapshot
    // only` done, or failed), that ends the run as shutdown would, with its verdict.
    let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel();
    let keeper = backfill.map(|b| {
        // Weak: the decode thread's input closes when the run ends, whatever the backfill does.
        let frames = pump.tx.as_ref().map(mpsc::Sender::downgrade);
        tokio::spawn(b.run(notes_rx, progress.subscribe(), frames, verdict_tx))
    });
    let verdict = Arc::new(std::sync::Mutex::new(None));
    let heard = Arc::clone(&verdict);
    let shutdown = async move {
        tokio::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => {}
            v = verdict_rx => match v {
                Ok(v) => *heard.lock().unwrap_or_else(|p| p.into_inner()) = Some(v),
                // The backfill ended without a word (its work is done): only shutdown is left.
                Err(_) => shutdown.await,
            },
        }
    };
    let (stream, ended) = drive(&mut pump, stream, feed, retry, shutdown).await;
    let outcome = conclude(pump, worker, stream, ended).await;
    if let Some(k) = keeper {
        // It records what the end made durable, then ends (the notes' sender is gone).
        let _ = k.await;
    }
    let verdict = verdict.lock().unwrap_or_else(|p| p.into_inner()).take();
    match (verdict, outcome) {
        (Some(backfill::Verdict::Failed(e)), _) => Err(e),
        (Some(backfill::Verdict::Done), Ok(mut o)) if o.reason == StopReason::Shutdown => {
            o.reason = StopReason::SnapshotTaken;
            Ok(o)
        }
        (_, outcome) => outcome,
    }
}

/// Pumps the stream (after the snapshot's rows, if any) until it ends, reconnecting when
/// `retry` allows.
async fn drive(
    pump: &mut Pump,
    stream: ReplStream,
    feed: Option<SnapshotFeed>,
    mut retry: Option<Retry>,
    shutdown: impl std::future::Future<Output = ()>,
) -> (Option<ReplStream>, Result<StopReason>) {
    tokio::pin!(shutdown);
    let mut stream = Some(stream);
    if let Some(feed) = feed
        && let Some(s) = stream.as_mut()
    {
        match pump.snapshot(s, feed, &mut shutdown).await {
            Ok(None) => {}
            Ok(Some(reason)) => return (stream, Ok(reason)),
            Err(e) => return (stream, Err(e)),
        }
    }
    let ended: Result<StopReason> = loop {
        let Some(current) = stream.as_mut() else {
            break Err(Error::StreamEnded);
        };
        let failure = match pump.pump(current, &mut shutdown).await {
            Ok(StopReason::ServerClosed) => Error::StreamEnded,
            Ok(reason) => break Ok(reason),
            Err(e) => e,
        };
        let thread_alive = !pump.progress.borrow().stopped && pump.tx.is_some();
        let Some(retry) = retry
            .as_mut()
            .filter(|_| thread_alive && retry::retryable(&failure))
        else {
            break Err(failure);
        };
        // The old connection is gone; what the decode thread still has queued is written, and
        // the new stream starts from what is durable now. The overlap (what was written but
        // not yet acknowledged) is replayed by the server and skipped by the pipeline.
        stream = None;
        tracing::warn!("lost the replication connection: {failure}");
        match retry::reconnect(retry, &pump.progress, &mut shutdown, failure).await {
            Ok(Some(s)) => {
                // The decoder forgets the dead connection's state before the new frames.
                pump.send_reset().await;
                stream = Some(s);
            }
            Ok(None) => break Ok(StopReason::Shutdown),
            Err(e) => break Err(e),
        }
    };
    (stream, ended)
}

/// Stops the decode thread (closing the channel ends its loop after what is queued: on
/// shutdown, that is still written and acknowledged, and only then confirmed), confirms what
/// is durable, ends the copy, and says how the run ended.
async fn conclude(
    mut pump: Pump,
    worker: thread::JoinHandle<Result<u64>>,
    stream: Option<ReplStream>,
    ended: Result<StopReason>,
) -> Result<StreamOutcome> {
    pump.tx = None;
    let joined = tokio::task::spawn_blocking(move || worker.join())
        .await
        .map_err(|e| Error::Setup(format!("decode thread join failed: {e}")))?;
    let (events, thread_err) = match joined {
        Ok(Ok(n)) => (n, None),
        Ok(Err(e)) => (0, Some(e)),
        Err(_) => {
            return Err(Error::Setup(
                "the decode thread panicked: this is a bug in walwatch, please report it".into(),
            ));
        }
    };
    let durable = pump.durable();
    // Confirm what is durable (even on a broken pipe: everything before it was written),
    // then end the copy. A temporary slot is dropped by the server with the connection.
    if let Some(mut s) = stream {
        let _ = pump.report(&mut s, false).await;
        match s.finish().await {
            Ok(conn) => {
                let _ = conn.close().await;
            }
            Err(e) => tracing::debug!("ending the replication stream: {e}"),
        }
    }
    // The thread's error, when it has one, is the cause (a sink, the decoder); a broken
    // stdout pipe is a normal end.
    let reason = match (thread_err, ended) {
        (Some(e), _) if e.is_broken_pipe() => StopReason::OutputClosed,
        (Some(e), _) | (None, Err(e)) => return Err(e),
        (None, Ok(reason)) => reason,
    };
    Ok(StreamOutcome {
        reason,
        events,
        durable,
    })
}

/// How many replayed frames go between two hand-offs to the sinks.
const REPLAY_FLUSH_FRAMES: u32 = 4096;

/// Decodes frames from somewhere other than a live server (a raw recording, `walwatch
/// replay`) into the sinks, on the calling thread, the way [`run_stream`]'s decode thread does:
/// the same decoder, filter, lookups and sinks, frame after frame until `next` has no more or
/// the end position is reached.
pub fn replay(
    setup: StreamSetup,
    mut next: impl FnMut() -> Result<Option<Frame>>,
) -> Result<StreamOutcome> {
    let progress = Arc::new(watch::Sender::new(Progress {
        durable: setup.start,
        ..Progress::default()
    }));
    let mut fanout = Fanout::new(setup, None, Arc::clone(&progress))?;
    let mut drive = || -> Result<()> {
        let mut since_flush = 0;
        while !fanout.out.done {
            let Some(frame) = next()? else { break };
            fanout.handle(frame)?;
            since_flush += 1;
            if since_flush == REPLAY_FLUSH_FRAMES {
                fanout.flush()?;
                since_flush = 0;
            }
        }
        fanout.flush()
    };
    let res = drive();
    let res = fanout.end(res);
    let reason = match res {
        Ok(()) if fanout.out.done => StopReason::EndPos,
        Ok(()) => StopReason::RecordingEnded,
        Err(e) if e.is_broken_pipe() => StopReason::OutputClosed,
        Err(e) => return Err(e),
    };
    Ok(StreamOutcome {
        reason,
        events: fanout.events,
        durable: fanout.out.durable(),
    })
}

#[cfg(test)]
mod tests;
