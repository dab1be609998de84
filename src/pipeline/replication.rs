//! The replication task: owns the socket, reads frames in batches and hands them to the
//! decode thread, and keeps the server told what was received and what is durable.
//!
//! Reading: after each frame the socket had to be waited for, every frame already read
//! (`Framed`'s buffer, refilled in large reads) is taken too, up to [`HANDOFF_FRAMES`] or
//! [`HANDOFF_BYTES`], and the lot crosses to the decode thread as one message: one wake-up per
//! batch, not per frame. The hand-off is bounded in batches ([`HANDOFF_BATCHES`]) and in bytes
//! (a semaphore of [`FRAME_BUDGET`] permits, one per byte, held until the decode thread has
//! handled the frames), so a stalled sink stops the socket reads with bounded memory whatever
//! the row size. While it waits for room it still sends status updates and heeds shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Semaphore, mpsc, watch};

use super::feedback::Feedback;
use super::{Frame, Frames, Progress, SnapshotFeed, StopReason, StreamSetup};
use crate::error::Result;
use crate::event::Lsn;
use crate::pg::error::PgError;
use crate::pg::snapshot::Chunk;
use crate::pg::stream::{ReplMessage, ReplStream};

/// Batches of frames queued for the decode thread.
pub(super) const HANDOFF_BATCHES: usize = 64;

/// Frames per batch, at most.
const HANDOFF_FRAMES: usize = 2048;

/// Bytes per batch, at most (a single larger frame goes alone).
const HANDOFF_BYTES: usize = 1 << 20;

/// Bytes of frames between the socket and the decode thread, at most (one frame larger than
/// this goes alone).
const FRAME_BUDGET: usize = 4 << 20;

/// How often, at most, the durable position moving sends a status update of its own. The
/// first move after a quiet spell is reported at once; while sinks acknowledge batch after
/// batch, one update per interval carries the latest. Each update costs the walsender (the
/// drain's bottleneck) a message to read and the slot's state to update: draining 100,000
/// single-row transactions sent about 2,000 of them, one per fsync of the JSONL file; paced,
/// that drain was 13 % faster in an interleaved A/B (issue 16's note).
const DURABLE_REPORT_EVERY: Duration = Duration::from_millis(100);

/// How a read of what the socket has ready ended.
enum Tail {
    /// Nothing more is ready now.
    More,
    /// The server ended the copy.
    Closed,
    /// The connection failed after the frames read.
    Failed(PgError),
}

/// The replication task's side of one run.
pub(super) struct Pump {
    /// `None` once the decode thread has stopped taking frames.
    pub(super) tx: Option<mpsc::Sender<Frames>>,
    budget: Arc<Semaphore>,
    pub(super) progress: watch::Receiver<Progress>,
    endpos: Option<Lsn>,
    feedback: Feedback,
    status: tokio::time::Interval,
    /// Paces the updates that report the durable position moving ([`DURABLE_REPORT_EVERY`]).
    durable_report: tokio::time::Interval,
    /// With an end position, ask the server for a keepalive now and then: on an idle server it
    /// tells us how far WAL has been decoded, which is how an idle stream learns it is done.
    poke: tokio::time::Interval,
}

impl Pump {
    pub(super) fn new(
        setup: &StreamSetup,
        tx: mpsc::Sender<Frames>,
        progress: watch::Receiver<Progress>,
    ) -> Pump {
        let mut status = tokio::time::interval(setup.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Delay: after a quiet spell the next tick is due at once, then one per interval.
        let mut durable_report = tokio::time::interval(DURABLE_REPORT_EVERY);
        durable_report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pump {
            tx: Some(tx),
            budget: Arc::new(Semaphore::new(FRAME_BUDGET)),
            progress,
            endpos: setup.endpos,
            feedback: Feedback::new(setup.start),
            status,
            durable_report,
            poke: tokio::time::interval(Duration::from_millis(500)),
        }
    }

    pub(super) fn durable(&self) -> Lsn {
        self.progress.borrow().durable
    }

    /// Sends a status update with what is durable now.
    pub(super) async fn report(
        &mut self,
        stream: &mut ReplStream,
        reply_requested: bool,
    ) -> std::result::Result<(), PgError> {
        let durable = self.durable();
        self.feedback.send(stream, durable, reply_requested).await
    }

    /// Pumps one connection until it ends (`ServerClosed`), the decode thread is done
    /// (`EndPos`, refined from its result later), shutdown, or a failure.
    pub(super) async fn pump(
        &mut self,
        stream: &mut ReplStream,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<StopReason> {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Ok(StopReason::Shutdown),
                changed = self.progress.changed() => {
                    let p = *self.progress.borrow_and_update();
                    if changed.is_err() || p.stopped || p.done {
                        return Ok(StopReason::EndPos);
                    }
                }
                _ = self.durable_report.tick(), if self.feedback.behind(self.durable()) => {
                    self.report(stream, false).await?;
                }
                msg = stream.next() => {
                    let Some(msg) = msg? else { return Ok(StopReason::ServerClosed) };
                    let (frames, bytes, tail) = self.gather(stream, msg).await?;
                    if self.forward(stream, frames, bytes, shutdown).await? {
                        return Ok(StopReason::Shutdown);
                    }
                    match tail {
                        Tail::More => {}
                        Tail::Closed => return Ok(StopReason::ServerClosed),
                        Tail::Failed(e) => return Err(e.into()),
                    }
                }
                _ = self.status.tick() => self.report(stream, false).await?,
                _ = self.poke.tick(), if self.endpos.is_some() => self.report(stream, true).await?,
            }
        }
    }

    /// `first`, and every frame the connection has ready after it (up to the batch limits).
    async fn gather(
        &mut self,
        stream: &mut ReplStream,
        first: ReplMessage,
    ) -> Result<(Vec<Frame>, usize, Tail)> {
        let mut frames = Vec::with_capacity(64);
        let mut bytes = 0;
        let mut next = Some(first);
        let tail = loop {
            if let Some(msg) = next.take() {
                bytes += self.note(stream, &msg).await?;
                frames.push(Frame::Message(msg));
            }
            if frames.len() >= HANDOFF_FRAMES || bytes >= HANDOFF_BYTES {
                break Tail::More;
            }
            // `next` is cancel-safe (a frame is taken out of the read buffer only by the poll
            // that returns it), so polling it once and dropping it loses nothing.
            match stream.next().now_or_never() {
                None => break Tail::More,
                Some(Ok(Some(msg))) => next = Some(msg),
                Some(Ok(None)) => break Tail::Closed,
                Some(Err(e)) => break Tail::Failed(e),
            }
        };
        Ok((frames, bytes, tail))
    }

    /// Notes what a frame says of the server's WAL, answers a keepalive that asks for it, and
    /// returns the frame's size.
    async fn note(&mut self, stream: &mut ReplStream, msg: &ReplMessage) -> Result<usize> {
        match msg {
            ReplMessage::XLogData { wal_end, data, .. } => {
                self.feedback.received(*wal_end);
                Ok(data.len())
            }
            ReplMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.feedback.received(*wal_end);
                if *reply_requested {
                    // The server asks for a reply now (docs, 55.4 "Primary keepalive
                    // message"): not answering gets the connection closed at
                    // wal_sender_timeout.
                    self.report(stream, false).await?;
                }
                Ok(0)
            }
        }
    }

    /// Hands frames to the decode thread, waiting for room (backpressure from a slow sink)
    /// while still sending status updates, so the server does not time us out, and still
    /// heeding shutdown: `true` when shutdown came first.
    async fn forward(
        &mut self,
        stream: &mut ReplStream,
        frames: Vec<Frame>,
        bytes: usize,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool> {
        let Some(sender) = self.tx.clone() else {
            return Ok(false);
        };
        let wanted = u32::try_from(bytes.clamp(1, FRAME_BUDGET)).unwrap_or(u32::MAX);
        let permit = loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Ok(true),
                permit = Arc::clone(&self.budget).acquire_many_owned(wanted) => break permit,
                _ = sender.closed() => {
                    self.tx = None;
                    return Ok(false);
                }
                _ = self.status.tick() => self.report(stream, false).await?,
            }
        };
        let Ok(permit) = permit else {
            return Ok(false); // never closed; a closed semaphore would only mean the end
        };
        let slot = loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Ok(true),
                slot = sender.reserve() => break slot,
                _ = self.status.tick() => self.report(stream, false).await?,
            }
        };
        match slot {
            Ok(slot) => slot.send(Frames {
                frames,
                permit: Some(permit),
            }),
            Err(_) => self.tx = None, // the thread stopped; its result says why
        }
        Ok(false)
    }

    /// Hands the snapshot's rows to the decode thread, table after table, chunk after chunk,
    /// before the stream's first frame is read: the server's frames wait in the socket (the
    /// walsender blocks on a full socket, and reads our status updates meanwhile). `Some` when
    /// the run ends here: shutdown, the decode thread stopped, or `--snapshot only`.
    pub(super) async fn snapshot(
        &mut self,
        stream: &mut ReplStream,
        feed: SnapshotFeed,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<StopReason>> {
        let SnapshotFeed {
            readers,
            tables,
            chunk,
            only,
            progress,
        } = feed;
        let mut progress = super::progress::SnapshotProgress::new(progress, &tables);
        let tables = Arc::new(tables);
        let mut chunks = crate::pg::snapshot::read_all(readers, tables.clone(), chunk);
        let mut rows = vec![0u64; tables.len()];
        loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Ok(Some(StopReason::Shutdown)),
                next = chunks.recv() => next,
                _ = self.status.tick() => {
                    self.report(stream, false).await?;
                    continue;
                }
            };
            let (table, batch) = match next.transpose()? {
                None => break,
                Some(Chunk::Done { table, rows, took }) => {
                    let name = tables[table].name();
                    progress.finish(table, || {
                        tracing::info!(
                            "snapshot of {}.{}: {rows} rows in {:.1} s",
                            name.schema,
                            name.table,
                            took.as_secs_f64()
                        );
                    });
                    continue;
                }
                Some(Chunk::Rows { table, rows }) => (table, rows),
            };
            let n = batch.lines.len() as u64;
            rows[table] += n;
            progress.advance(table, n);
            let bytes = batch.bytes();
            let stopped = if self
                .forward(stream, vec![Frame::Rows(batch)], bytes, shutdown)
                .await?
            {
                Some(StopReason::Shutdown)
            } else if self.tx.is_none() {
                Some(StopReason::EndPos) // the decode thread stopped: its result says why
            } else {
                None
            };
            if stopped.is_some() {
                let name = tables[table].name();
                tracing::info!(
                    "snapshot of {}.{} stopped after {} rows",
                    name.schema,
                    name.table,
                    rows[table]
                );
                return Ok(stopped);
            }
        }
        Ok(only.then_some(StopReason::SnapshotTaken))
    }

    /// Tells the decode thread a new connection follows.
    pub(super) async fn send_reset(&mut self) {
        let reset = Frames {
            frames: vec![Frame::Reset],
            permit: None,
        };
        if let Some(sender) = &self.tx
            && sender.send(reset).await.is_err()
        {
            self.tx = None;
        }
    }
}
