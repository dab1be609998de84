//! source -> decode -> filter -> fan-out, and the flush position every sink holds.
//!
//! Two halves joined by a bounded channel:
//!
//! * the replication task (async) owns the socket. It `select!`s over incoming frames, the
//!   status timer, progress from the decode thread and shutdown. It forwards XLogData and
//!   keepalives in order; when the channel is full it stops reading the socket, which is the
//!   backpressure a slow sink applies (memory does not grow).
//! * the decode thread (blocking) decodes, filters and writes to every sink, flushes them, and
//!   only then publishes the new durable position. The replication task reports that position
//!   as `flush` in standby status updates: never a position whose data is not durable.

use std::future::Future;
use std::pin::Pin;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::decode::{Decoder, TypeRegistry};
use crate::error::{Error, Result};
use crate::event::{Event, Lsn, Op, Relation, TableName};
use crate::filter::Filter;
use crate::marker;
use crate::pg::stream::{ReplMessage, ReplStream};
use crate::sink::Sink;
use crate::sink::resume::{Resume, Tally};

/// One frame forwarded from the socket to the decode thread, in stream order (or read from a
/// raw recording by [`replay`]).
pub enum Frame {
    /// XLogData or a keepalive, as the server sent it.
    Message(ReplMessage),
    /// A new connection follows: forget the old one's partial state and skip what the server
    /// replays of what was already written.
    Reset,
    /// Time passes: sinks that batch by time (Arrow) close what is due.
    Tick,
}

/// Sees every frame the decode thread handles, in the order it handles them, and the end of
/// the run: a raw recording (`walwatch record --raw`, src/recording). Ticks are left out (they
/// are the local clock, not the stream).
pub trait Tap: Send {
    fn frame(&mut self, frame: &Frame) -> Result<()>;
    /// Called at each flush of the sinks: what was seen so far reaches the disk.
    fn sync(&mut self) -> Result<()>;
    /// The run ended, with this result.
    fn finish(&mut self, outcome: &Result<()>) -> Result<()>;
}

/// What the decode thread tells the replication task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// Every event before this position is durable in every sink.
    durable: Lsn,
    /// The end position was reached: stop.
    done: bool,
    /// The thread stopped (finished or failed); its result is in the join handle.
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
}

/// Frames buffered between the socket and the decoder. Each is one pgoutput message (usually
/// tens to hundreds of bytes), so this bounds memory at a few MB.
const CHANNEL_FRAMES: usize = 8192;

/// How long the decode thread may go without flushing its sinks while busy.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// How often the decode thread is told the time, so batching sinks close time windows on an
/// idle stream too.
const TICK_EVERY: Duration = Duration::from_millis(250);

/// Reopens the replication stream after a transient failure, from the given position (what is
/// durable). It checks the slot first: a slot dropped, invalidated or moved meanwhile is a
/// definite error, never a silent jump.
pub type Reopen =
    Box<dyn FnMut(Lsn) -> Pin<Box<dyn Future<Output = Result<ReplStream>> + Send>> + Send>;

/// Reconnecting after a lost connection (permanent slots only: a temporary slot is gone with
/// its connection).
pub struct Retry {
    pub reopen: Reopen,
    /// How long to keep trying after a failure; `None` for ever.
    pub retry_for: Option<Duration>,
}

/// First and largest delay between reconnection attempts.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The delay before attempt `n` (1-based): exponential, capped, with "full jitter" in its
/// upper half so that many clients cut off together do not reconnect in lockstep.
fn backoff(n: u32) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // 0.5 .. 1.0 of the base, from the clock's low bits (no need for a random generator).
    let frac = 0.5 + f64::from(nanos % 1000) / 2000.0;
    base.mul_f64(frac)
}

/// Test only: with `WALWATCH_TEST_HOLD_CONFIRM=1` in its environment, walwatch writes and
/// flushes its sinks as always but never confirms more than where the run started, so the
/// slot stays behind the files. Tests use it to make a restart certainly replay what a file
/// already holds (tests/durable.rs). Not a feature: it makes the server keep WAL for ever.
const HOLD_CONFIRM_ENV: &str = "WALWATCH_TEST_HOLD_CONFIRM";

/// The position confirmations are held at, when [`HOLD_CONFIRM_ENV`] asks for it.
fn held_confirm(start: Lsn) -> Option<Lsn> {
    let hold = std::env::var_os(HOLD_CONFIRM_ENV).is_some_and(|v| v == "1");
    if hold {
        tracing::warn!(
            "{HOLD_CONFIRM_ENV}=1 (for tests only): confirming nothing past {start}, so the slot \
             keeps all WAL after it"
        );
    }
    hold.then_some(start)
}

/// Sends a standby status update: `write` is what was received, `flush` and `apply` what is
/// durable in every sink (or less, when confirmations are held). For a logical slot the
/// server advances `confirmed_flush_lsn` from `flush` only (src/backend/replication/
/// walsender.c, ProcessStandbyReplyMessage() -> LogicalConfirmReceivedLocation()).
async fn report(
    stream: &mut ReplStream,
    received: Lsn,
    durable: Lsn,
    hold: Option<Lsn>,
    reply_requested: bool,
) -> std::result::Result<(), crate::pg::error::PgError> {
    let confirm = hold.map_or(durable, |h| h.min(durable));
    stream
        .send_status(received.max(durable), confirm, confirm, reply_requested)
        .await
}

/// Whether a failure of the replication stream is worth reconnecting for.
fn retryable(e: &Error) -> bool {
    e.is_transient() || matches!(e, Error::SlotInUse(_))
}

/// Runs the stream until the end position, shutdown, server close, or an error; with `retry`,
/// reconnects after transient failures. Sends a final status update with the durable position
/// and ends the copy before returning.
pub async fn run_stream(
    stream: ReplStream,
    setup: StreamSetup,
    mut retry: Option<Retry>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<StreamOutcome> {
    let (tx, rx) = mpsc::channel::<Frame>(CHANNEL_FRAMES);
    let (progress_tx, progress_rx) = watch::channel(Progress {
        durable: setup.start,
        ..Progress::default()
    });
    let mut pump = Pump::new(&setup, tx, progress_rx);
    let worker = spawn_decoder(setup, rx, progress_tx)?;

    tokio::pin!(shutdown);
    let mut stream = Some(stream);
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
            .filter(|_| thread_alive && retryable(&failure))
        else {
            break Err(failure);
        };
        // The old connection is gone; what the decode thread still has queued is written, and
        // the new stream starts from what is durable now. The overlap (what was written but
        // not yet confirmed) is replayed by the server and skipped by the pipeline.
        stream = None;
        tracing::warn!("lost the replication connection: {failure}");
        match reconnect(retry, &pump.progress, &mut shutdown, failure).await {
            Ok(Some(s)) => {
                // The decoder forgets the dead connection's state before the new frames.
                pump.send_reset().await;
                stream = Some(s);
            }
            Ok(None) => break Ok(StopReason::Shutdown),
            Err(e) => break Err(e),
        }
    };
    pump.conclude(worker, stream, ended).await
}

/// Starts the decode thread: it decodes, filters and writes what `rx` brings, and publishes
/// what is durable on `progress`, marking it stopped when it ends.
fn spawn_decoder(
    setup: StreamSetup,
    rx: mpsc::Receiver<Frame>,
    progress: watch::Sender<Progress>,
) -> Result<thread::JoinHandle<Result<u64>>> {
    thread::Builder::new()
        .name("walwatch-decode".into())
        .spawn(move || {
            let mut fanout = Fanout::new(setup, progress.clone());
            let res = fanout.run(rx);
            let mut p = *progress.borrow();
            p.stopped = true;
            progress.send_replace(p);
            res.map(|()| fanout.events)
        })
        .map_err(|e| Error::Setup(format!("cannot start the decode thread: {e}")))
}

/// After a lost connection: waits (backing off) and reopens the stream from what is durable,
/// until it works, `retry_for` passes (`Err(failure)`), or shutdown (`Ok(None)`).
async fn reconnect(
    retry: &mut Retry,
    progress: &watch::Receiver<Progress>,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    failure: Error,
) -> Result<Option<ReplStream>> {
    let gave_up_at = retry.retry_for.map(|d| Instant::now() + d);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let delay = backoff(attempt);
        if gave_up_at.is_some_and(|t| Instant::now() + delay > t) {
            return Err(failure);
        }
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        let from = progress.borrow().durable;
        match (retry.reopen)(from).await {
            Ok(s) => {
                tracing::info!("reconnected (attempt {attempt}); resuming from {from}");
                return Ok(Some(s));
            }
            Err(e) if retryable(&e) => {
                tracing::warn!(
                    "reconnect attempt {attempt} failed: {e}; next in about {:.1?}",
                    backoff(attempt + 1)
                );
            }
            Err(e) => return Err(e),
        }
    }
}

/// The replication task's side of one run: forwards frames to the decode thread and keeps
/// the server told of what was received and what is durable.
struct Pump {
    /// `None` once the decode thread has stopped taking frames.
    tx: Option<mpsc::Sender<Frame>>,
    progress: watch::Receiver<Progress>,
    endpos: Option<Lsn>,
    hold: Option<Lsn>,
    status: tokio::time::Interval,
    /// With an end position, ask the server for a keepalive now and then: on an idle server it
    /// tells us how far WAL has been decoded, which is how an idle stream learns it is done.
    poke: tokio::time::Interval,
    tick: tokio::time::Interval,
    received: Lsn,
    reported: Lsn,
}

impl Pump {
    fn new(
        setup: &StreamSetup,
        tx: mpsc::Sender<Frame>,
        progress: watch::Receiver<Progress>,
    ) -> Pump {
        let mut status = tokio::time::interval(setup.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pump {
            tx: Some(tx),
            progress,
            endpos: setup.endpos,
            hold: held_confirm(setup.start),
            status,
            poke: tokio::time::interval(Duration::from_millis(500)),
            tick,
            received: Lsn::ZERO,
            reported: Lsn::ZERO,
        }
    }

    fn durable(&self) -> Lsn {
        self.progress.borrow().durable
    }

    /// Sends a status update with what is durable now.
    async fn report_now(
        &mut self,
        stream: &mut ReplStream,
        reply_requested: bool,
    ) -> std::result::Result<(), crate::pg::error::PgError> {
        let durable = self.durable();
        report(stream, self.received, durable, self.hold, reply_requested).await?;
        self.reported = durable;
        Ok(())
    }

    /// Pumps one connection until it ends (`ServerClosed`), the decode thread is done
    /// (`EndPos`, refined from its result later), shutdown, or a failure.
    async fn pump(
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
                    if p.durable > self.reported {
                        self.report_now(stream, false).await?;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg? else { return Ok(StopReason::ServerClosed) };
                    if self.forward(stream, msg, shutdown).await? {
                        return Ok(StopReason::Shutdown);
                    }
                }
                _ = self.status.tick() => self.report_now(stream, false).await?,
                _ = self.tick.tick() => {
                    // Skipped when the channel is full: the thread is busy and flushes anyway.
                    if let Some(sender) = &self.tx {
                        let _ = sender.try_send(Frame::Tick);
                    }
                }
                _ = self.poke.tick(), if self.endpos.is_some() => {
                    let durable = self.durable();
                    report(stream, self.received, durable, self.hold, true).await?;
                }
            }
        }
    }

    /// Hands one message to the decode thread, waiting for room (backpressure from a slow
    /// sink) while still sending status updates, so the server does not time us out, and still
    /// heeding shutdown: `true` when shutdown came first.
    async fn forward(
        &mut self,
        stream: &mut ReplStream,
        msg: ReplMessage,
        shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool> {
        match &msg {
            ReplMessage::XLogData { wal_end, .. } => self.received = self.received.max(*wal_end),
            ReplMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.received = self.received.max(*wal_end);
                if *reply_requested {
                    // The server asks for a reply now (docs, 55.4 "Primary keepalive
                    // message"): not answering gets the connection closed at
                    // wal_sender_timeout.
                    let durable = self.durable();
                    report(stream, self.received, durable, self.hold, false).await?;
                }
            }
        }
        let Some(sender) = self.tx.clone() else {
            return Ok(false);
        };
        let permit = loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Ok(true),
                permit = sender.reserve() => break permit,
                _ = self.status.tick() => self.report_now(stream, false).await?,
            }
        };
        match permit {
            Ok(permit) => permit.send(Frame::Message(msg)),
            Err(_) => self.tx = None, // the thread stopped; its result says why
        }
        Ok(false)
    }

    /// Tells the decode thread a new connection follows.
    async fn send_reset(&mut self) {
        if let Some(sender) = &self.tx
            && sender.send(Frame::Reset).await.is_err()
        {
            self.tx = None;
        }
    }

    /// Stops the decode thread (closing the channel ends its loop after what is queued: on
    /// shutdown, that is still written and flushed, and only then confirmed), confirms what is
    /// durable, ends the copy, and says how the run ended.
    async fn conclude(
        mut self,
        worker: thread::JoinHandle<Result<u64>>,
        stream: Option<ReplStream>,
        ended: Result<StopReason>,
    ) -> Result<StreamOutcome> {
        self.tx = None;
        let joined = tokio::task::spawn_blocking(move || worker.join())
            .await
            .map_err(|e| Error::Setup(format!("decode thread join failed: {e}")))?;
        let (events, thread_err) = match joined {
            Ok(Ok(n)) => (n, None),
            Ok(Err(e)) => (0, Some(e)),
            Err(_) => {
                return Err(Error::Setup(
                    "the decode thread panicked: this is a bug in walwatch, please report it"
                        .into(),
                ));
            }
        };
        let durable = self.durable();
        // Confirm what is durable (even on a broken pipe: everything before it was written),
        // then end the copy. A temporary slot is dropped by the server with the connection.
        if let Some(mut s) = stream {
            let _ = report(&mut s, self.received, durable, self.hold, false).await;
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
}

/// How many replayed frames go between two flushes of the sinks.
const REPLAY_FLUSH_FRAMES: u32 = 4096;

/// Decodes frames from somewhere other than a live server (a raw recording, `walwatch
/// replay`) into the sinks, on the calling thread, the way [`run_stream`]'s decode thread does:
/// the same decoder, filter, lookups and sinks, frame after frame until `next` has no more or
/// the end position is reached.
pub fn replay(
    setup: StreamSetup,
    mut next: impl FnMut() -> Result<Option<Frame>>,
) -> Result<StreamOutcome> {
    let (progress, _rx) = watch::channel(Progress {
        durable: setup.start,
        ..Progress::default()
    });
    let mut fanout = Fanout::new(setup, progress);
    let mut drive = || -> Result<()> {
        let mut since_flush = 0;
        while !fanout.out.done {
            let Some(frame) = next()? else { break };
            fanout.handle(frame)?;
            since_flush += 1;
            if since_flush == REPLAY_FLUSH_FRAMES {
                fanout.flush(false)?;
                since_flush = 0;
            }
        }
        fanout.out.finish()
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
        durable: fanout.out.durable,
    })
}

/// A value looked up once per Relation message: the server describes a relation again after
/// DDL on it (an ATTACH, a DETACH, a new key), which makes a new `Arc<Relation>`.
struct PerRelation<T> {
    known: HashMap<u32, (Arc<Relation>, T)>,
}

impl<T> Default for PerRelation<T> {
    fn default() -> Self {
        PerRelation {
            known: HashMap::new(),
        }
    }
}

impl<T> PerRelation<T> {
    fn get_or(&mut self, rel: &Arc<Relation>, look_up: impl FnOnce() -> Result<T>) -> Result<&T> {
        let fresh = self
            .known
            .get(&rel.oid)
            .is_some_and(|(seen, _)| Arc::ptr_eq(seen, rel));
        if !fresh {
            self.known.insert(rel.oid, (rel.clone(), look_up()?));
        }
        Ok(&self.known[&rel.oid].1)
    }
}

/// `partition_of` for each relation the server reports changes under.
#[derive(Default)]
struct Partitions {
    lookup: Option<PartitionLookup>,
    known: PerRelation<Option<Arc<TableName>>>,
}

impl Partitions {
    /// The partitioned table `rel`'s changes belong to: its topmost watched ancestor, else the
    /// root of its tree; `None` for a table that is not a partition (or is one no more).
    fn of(&mut self, rel: &Arc<Relation>, filter: &Filter) -> Result<Option<Arc<TableName>>> {
        let Some(lookup) = &mut self.lookup else {
            return Ok(None);
        };
        let chosen = self.known.get_or(rel, || {
            let ancestors = lookup(rel.oid)?;
            Ok(ancestors
                .iter()
                .rev()
                .find(|a| filter.watches(&a.schema, &a.table))
                .or(ancestors.last())
                .cloned()
                .map(Arc::new))
        })?;
        Ok(chosen.clone())
    }
}

/// `key` is the primary key whatever the replica identity. The server flags the replica
/// identity's columns (Relation message), which under REPLICA IDENTITY FULL is every column
/// and under USING INDEX that index's; where the table has a primary key and the row carries
/// its columns, `key` is those instead.
#[derive(Default)]
struct PrimaryKeys {
    lookup: Option<KeyLookup>,
    known: PerRelation<Vec<String>>,
}

impl PrimaryKeys {
    fn apply(&mut self, rel: &Arc<Relation>, ev: &mut Event) -> Result<()> {
        use crate::event::{ReplicaIdentity, Row};
        if rel.replica_identity == ReplicaIdentity::Default || !ev.op.is_change() {
            return Ok(());
        }
        let Some(lookup) = &mut self.lookup else {
            return Ok(());
        };
        let pk = self.known.get_or(rel, || lookup(rel.oid))?;
        if pk.is_empty() {
            return Ok(());
        }
        // The row in table order: the new one (INSERT, UPDATE) or the old one (DELETE).
        let pick = |row: &Option<Row>| {
            let row = row.as_ref()?;
            let columns: Vec<_> = row
                .columns
                .iter()
                .filter(|c| pk.iter().any(|k| **k == *c.name))
                .cloned()
                .collect();
            (columns.len() == pk.len()).then_some(Row { columns })
        };
        if let Some(key) = pick(&ev.data).or_else(|| pick(&ev.old)) {
            ev.key = Some(key);
        }
        Ok(())
    }
}

/// The decode thread's state: the decoder, and everything its events flow into.
struct Fanout {
    decoder: Decoder,
    tap: Option<Box<dyn Tap>>,
    load_types: Option<TypeLoader>,
    /// Type OIDs already looked up, found or not: each is looked up once.
    looked_up: HashSet<u32>,
    out: Output,
    events: u64,
}

/// Filter, sinks and positions: separate from the decoder so the decoder's emit callback can
/// borrow it while the decoder is borrowed too.
struct Output {
    filter: Filter,
    partitions: Partitions,
    keys: PrimaryKeys,
    sinks: Vec<Box<dyn Sink>>,
    endpos: Option<Lsn>,
    progress: watch::Sender<Progress>,
    /// BEGIN held back until the transaction's first accepted change, so transactions with
    /// nothing to show (filtered out, or empty) print nothing.
    pending_begin: Option<Event>,
    begun: bool,
    /// End of the last transaction handed to the sinks, or an idle keepalive position.
    candidate: Lsn,
    durable: Lsn,
    done: bool,
    written: u64,
    /// What the sinks were given, and what to skip when a new connection replays it.
    tally: Tally,
    resume: Resume,
    error: Option<Error>,
}

impl Fanout {
    fn new(setup: StreamSetup, progress: watch::Sender<Progress>) -> Fanout {
        Fanout {
            decoder: setup.decoder,
            tap: setup.tap,
            load_types: setup.load_types,
            looked_up: HashSet::new(),
            out: Output::new(setup.filter, setup.sinks, setup.endpos, progress)
                .starting_at(setup.start)
                .with_lookups(setup.partitions, setup.primary_keys),
            events: 0,
        }
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Frame>) -> Result<()> {
        let res = self.run_inner(&mut rx);
        self.end(res)
    }

    /// The run's result, once the tap has seen it too.
    fn end(&mut self, res: Result<()>) -> Result<()> {
        self.events = self.out.written;
        let tapped = match &mut self.tap {
            Some(tap) => tap.finish(&res),
            None => Ok(()),
        };
        res.and(tapped)
    }

    /// Flushes the sinks (and the tap): the end of a batch of frames.
    fn flush(&mut self, only_ticks: bool) -> Result<()> {
        if only_ticks {
            // Nothing was written since the last flush: what a tick closed is durable
            // already (a batching sink makes a batch durable when it closes it).
            self.out.publish();
            return Ok(());
        }
        if let Some(tap) = &mut self.tap {
            tap.sync()?;
        }
        self.out.flush()
    }

    fn run_inner(&mut self, rx: &mut mpsc::Receiver<Frame>) -> Result<()> {
        while let Some(frame) = rx.blocking_recv() {
            let mut only_ticks = matches!(frame, Frame::Tick);
            self.handle(frame)?;
            let started = Instant::now();
            while !self.out.done && started.elapsed() < FLUSH_EVERY {
                match rx.try_recv() {
                    Ok(frame) => {
                        only_ticks &= matches!(frame, Frame::Tick);
                        self.handle(frame)?;
                    }
                    Err(_) => break,
                }
            }
            self.flush(only_ticks)?;
            if self.out.done {
                break;
            }
        }
        self.out.finish()
    }

    fn handle(&mut self, frame: Frame) -> Result<()> {
        if self.out.done {
            return Ok(());
        }
        if let Some(tap) = self.tap.as_mut().filter(|_| !matches!(frame, Frame::Tick)) {
            tap.frame(&frame)?;
        }
        match frame {
            Frame::Message(ReplMessage::XLogData {
                wal_start, data, ..
            }) => {
                let out = &mut self.out;
                self.decoder
                    .decode(wal_start, &data, &mut |ev| out.emit(ev))?;
                if let Some(e) = self.out.error.take() {
                    return Err(e);
                }
                self.look_up_new_types()?;
                self.warn_unresolved();
            }
            Frame::Reset => {
                self.decoder.reset();
                self.out.restart();
            }
            Frame::Tick => self.out.tick()?,
            Frame::Message(ReplMessage::Keepalive { wal_end, .. }) => {
                // Idle (no transaction open or buffered) and every sink caught up once flushed:
                // everything the server decoded up to wal_end has been received, so confirming
                // it is safe and keeps an idle slot from pinning WAL.
                if !self.decoder.in_transaction() && self.decoder.open_streams() == 0 {
                    self.out.candidate = self.out.candidate.max(wal_end);
                    if self.out.endpos.is_some_and(|end| wal_end >= end) {
                        self.out.done = true;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Fanout {
    /// Says once per column that its type could not be resolved: the type was dropped before
    /// walwatch ever read the catalog with it (a permanent slot remembers every type it has
    /// resolved, so this is a change written and its type dropped while walwatch was away).
    fn warn_unresolved(&mut self) {
        for c in self.decoder.take_unresolved() {
            let name = self
                .decoder
                .type_name(c.type_oid)
                .map(|t| format!("{}.{}", t.namespace, t.name))
                .unwrap_or_else(|| "?".into());
            tracing::warn!(
                "column {}.{}.{} has type {name} (OID {}), which no longer exists in the \
                 catalog and which walwatch never resolved on this slot: its values are written \
                 as the server's text, not typed",
                c.schema,
                c.table,
                c.column,
                c.type_oid
            );
        }
    }

    /// Types created after start-up (a new enum, or a domain used by an added column): reload
    /// the registry before the next message uses them.
    fn look_up_new_types(&mut self) -> Result<()> {
        let unknown = self.decoder.take_unknown_types();
        if unknown.iter().all(|oid| self.looked_up.contains(oid)) {
            return Ok(());
        }
        self.looked_up.extend(unknown.iter().copied());
        if let Some(load) = &mut self.load_types {
            tracing::debug!(?unknown, "reloading the type registry for new types");
            *self.decoder.types_mut() = load()?;
        }
        Ok(())
    }
}

impl Output {
    fn new(
        filter: Filter,
        sinks: Vec<Box<dyn Sink>>,
        endpos: Option<Lsn>,
        progress: watch::Sender<Progress>,
    ) -> Output {
        Output {
            filter,
            partitions: Partitions::default(),
            keys: PrimaryKeys::default(),
            sinks,
            endpos,
            progress,
            pending_begin: None,
            begun: false,
            candidate: Lsn::ZERO,
            durable: Lsn::ZERO,
            done: false,
            written: 0,
            tally: Tally::default(),
            resume: Resume::default(),
            error: None,
        }
    }

    fn with_lookups(
        mut self,
        partitions: Option<PartitionLookup>,
        keys: Option<KeyLookup>,
    ) -> Output {
        self.partitions.lookup = partitions;
        self.keys.lookup = keys;
        self
    }

    fn starting_at(mut self, start: Lsn) -> Output {
        self.candidate = start;
        self.durable = start;
        self
    }

    /// A new connection: the server replays from the durable position, which may repeat what
    /// was already given to the sinks (written, not yet confirmed). Skip exactly that.
    fn restart(&mut self) {
        self.pending_begin = None;
        self.begun = false;
        self.resume = Resume::after(self.tally);
    }

    /// Called for every decoded event, in order.
    fn emit(&mut self, mut ev: Event) {
        if self.done || self.error.is_some() {
            return;
        }
        if let Some(rel) = ev.relation.clone() {
            let looked_up = self.partitions.of(&rel, &self.filter).and_then(|p| {
                ev.partition_of = p;
                self.keys.apply(&rel, &mut ev)
            });
            if let Err(e) = looked_up {
                self.error = Some(e);
                self.done = true;
                return;
            }
        }
        match ev.op {
            Op::Begin => {
                if self.endpos.is_some_and(|end| ev.commit_lsn >= end) {
                    // Commits at or after the end position are not part of this run.
                    self.done = true;
                    return;
                }
                self.begun = false;
                self.pending_begin = self.accepts(&ev).then_some(ev);
            }
            Op::Commit => {
                let end = ev.end_lsn.unwrap_or(ev.commit_lsn);
                if self.begun && self.accepts(&ev) {
                    self.write(&ev);
                }
                self.begun = false;
                self.pending_begin = None;
                self.candidate = self.candidate.max(end);
                if self.endpos.is_some_and(|e| end >= e) {
                    self.done = true;
                }
            }
            _ if marker::is_marker(&ev) => {
                // walwatch's own fences and marks are transactions of one message: the message
                // goes to recorders and watches alone, and its BEGIN and COMMIT to no one, so
                // no predicate, count or report ever sees walwatch's own traffic.
                if self.filter.keeps_marker(&ev) {
                    self.write(&ev);
                }
            }
            _ => {
                if !self.accepts(&ev) {
                    return;
                }
                if let Some(begin) = self.pending_begin.take() {
                    self.write(&begin);
                }
                self.begun = true;
                self.write(&ev);
            }
        }
    }

    /// The filter's verdict; an expression error stops the run (nothing after it confirmed).
    fn accepts(&mut self, ev: &Event) -> bool {
        match self.filter.accepts(ev) {
            Ok(yes) => yes,
            Err(e) => {
                self.error = Some(Error::Expr(e));
                self.done = true;
                false
            }
        }
    }

    fn write(&mut self, ev: &Event) {
        if !self.resume.admit(ev) {
            return;
        }
        self.tally.note(ev);
        for sink in &mut self.sinks {
            if let Err(e) = sink.write(ev) {
                self.error = Some(e);
                self.done = true;
                return;
            }
        }
        self.written += 1;
    }

    /// Flush every sink, then publish the new durable position.
    fn flush(&mut self) -> Result<()> {
        self.all_then_publish(|sink| sink.flush())
    }

    /// The end of the run: every sink writes out what it still holds, then the final position.
    fn finish(&mut self) -> Result<()> {
        self.all_then_publish(|sink| sink.finish())
    }

    /// Stops at a pending error or the first sink that fails (nothing more is confirmed);
    /// publishes the durable position once every sink has done `f`.
    fn all_then_publish(&mut self, mut f: impl FnMut(&mut dyn Sink) -> Result<()>) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for sink in &mut self.sinks {
            f(sink.as_mut())?;
        }
        self.publish();
        Ok(())
    }

    fn tick(&mut self) -> Result<()> {
        for sink in &mut self.sinks {
            sink.tick()?;
        }
        Ok(())
    }

    /// Publish the durable position: everything flushed up to the candidate, except what a
    /// batching sink still holds. A sink holding events of the transaction that commits at `h`
    /// caps the position at `h`: the server replays every transaction whose commit record is at
    /// or after the position it resumes from (logical decoding skips commits before its
    /// start point, `SnapBuildXactNeedsSkip`), so that transaction comes again.
    fn publish(&mut self) {
        let held = self.sinks.iter().filter_map(|s| s.holding()).min();
        let target = match held {
            Some(h) => self.candidate.min(h),
            None => self.candidate,
        };
        if target > self.durable {
            self.durable = target;
        }
        let p = Progress {
            durable: self.durable,
            done: self.done,
            stopped: false,
        };
        self.progress.send_if_modified(|cur| {
            let changed = *cur != p;
            *cur = p;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::OpSet;
    use std::sync::{Arc, Mutex};

    /// A sink that records what it is given, and can be told to fail.
    struct Collect(Arc<Mutex<Vec<Event>>>);

    impl Sink for Collect {
        fn write(&mut self, e: &Event) -> Result<()> {
            self.0.lock().unwrap().push(e.clone());
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "collect".into()
        }
    }

    fn output(filter: Filter, endpos: Option<Lsn>) -> (Output, Arc<Mutex<Vec<Event>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (progress, _rx) = watch::channel(Progress::default());
        let out = Output::new(
            filter,
            vec![Box::new(Collect(seen.clone()))],
            endpos,
            progress,
        );
        (out, seen)
    }

    fn txn(commit: u64, end: u64, tables: &[&str]) -> Vec<Event> {
        let mut begin = Event::new(Op::Begin, Lsn(commit - 10));
        begin.commit_lsn = Lsn(commit);
        let mut v = vec![begin];
        for (i, t) in tables.iter().enumerate() {
            let mut e = Event::new(Op::Insert, Lsn(commit - 9 + i as u64));
            e.schema = Some(Arc::from("public"));
            e.table = Some(Arc::from(*t));
            e.commit_lsn = Lsn(commit);
            v.push(e);
        }
        let mut c = Event::new(Op::Commit, Lsn(commit));
        c.commit_lsn = Lsn(commit);
        c.end_lsn = Some(Lsn(end));
        v.push(c);
        v
    }

    fn ops(seen: &Arc<Mutex<Vec<Event>>>) -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|e| format!("{} {}", e.op, e.table()))
            .collect()
    }

    #[test]
    fn transactions_with_nothing_accepted_print_nothing() {
        let f = Filter::new(
            Some(&[("public".to_string(), "orders".to_string())]),
            OpSet::all(),
        );
        let (mut out, seen) = output(f, None);
        for e in txn(100, 110, &["users"])
            .into_iter()
            .chain(txn(200, 210, &["orders"]))
        {
            out.emit(e);
        }
        assert_eq!(ops(&seen), vec!["BEGIN ", "INSERT orders", "COMMIT "]);
        // Both transactions count towards the durable position, shown or not.
        out.flush().unwrap();
        assert_eq!(out.durable, Lsn(210));
    }

    #[test]
    fn endpos_stops_before_later_commits() {
        let (mut out, seen) = output(Filter::new(None, OpSet::all()), Some(Lsn(205)));
        for e in txn(100, 110, &["a"])
            .into_iter()
            .chain(txn(200, 210, &["b"]))
            .chain(txn(300, 310, &["c"]))
        {
            out.emit(e);
        }
        assert!(out.done);
        // The commit at 200 is before the end position, so it is included; 300 is not.
        assert_eq!(
            ops(&seen),
            vec![
                "BEGIN ", "INSERT a", "COMMIT ", "BEGIN ", "INSERT b", "COMMIT "
            ]
        );
    }

    #[test]
    fn a_failing_sink_stops_and_confirms_nothing_after_it() {
        struct Broken;
        impl Sink for Broken {
            fn write(&mut self, _: &Event) -> Result<()> {
                Err(Error::Sink {
                    target: "disk".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                })
            }
            fn flush(&mut self) -> Result<()> {
                Ok(())
            }
            fn describe(&self) -> String {
                "broken".into()
            }
        }
        let (mut out, _) = output(Filter::new(None, OpSet::all()), None);
        out.sinks = vec![Box::new(Broken)];
        for e in txn(100, 110, &["a"]) {
            out.emit(e);
        }
        let err = out.flush().unwrap_err().to_string();
        assert!(err.contains("disk is full"), "{err}");
        assert_eq!(
            out.durable,
            Lsn::ZERO,
            "nothing may be confirmed past a failed write"
        );
    }
}
