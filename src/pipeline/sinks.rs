//! Fan-out: every sink on a thread of its own, fed by a bounded queue of batches, and the
//! acknowledgement board that turns what each sink acknowledged into the durable position.
//!
//! The decode thread hands one `Arc<Batch>` to every sink's queue. A sink thread writes each
//! batch it takes and acknowledges ([`Sink::acknowledge`]) when its queue runs dry (group
//! commit: one fsync or one broker round trip covers whatever queued meanwhile), at least
//! every [`ACK_EVERY`] while busy, and every [`IDLE_TICK`] while idle. The durable position is
//! the least position every sink has acknowledged. So a slow sink delays only its own
//! acknowledgements, and the others keep writing until its queue (bounded in batches, and all
//! queues together in bytes by the [`Budget`]) is full; then the decode thread waits.
//!
//! The last sink to drop a batch sends its events back to the decode thread, which frees them
//! before it hands on the next batch: freeing on the thread that allocated keeps glibc's
//! allocator on its fast thread-local path, where a sink thread freeing another thread's
//! memory took the arena's lock and consolidated (issue 16's note has the figures). The
//! budget is given back when the batch is dropped, so what waits to be freed is at most what
//! the sinks dropped since the decode thread last handed on a batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError};
use tokio::sync::watch;

use super::Progress;
use super::budget::Budget;
use crate::error::{Error, Result};
use crate::event::{Event, Lsn};
use crate::sink::{Batch, Sink};

/// Batches queued per sink.
const QUEUE_BATCHES: usize = 64;

/// Bytes (estimated) of batches in flight between the decode thread and all sinks.
pub(super) const BATCH_BUDGET: usize = 8 << 20;

/// How often a busy sink acknowledges at least.
const ACK_EVERY: Duration = Duration::from_millis(250);

/// How often an idle sink is asked to acknowledge (a sink that batches by time closes what is
/// due).
const IDLE_TICK: Duration = Duration::from_millis(250);

/// Turns acknowledgements into the durable position, published on `progress`.
struct AckBoard {
    acks: Mutex<Vec<Lsn>>,
    /// Batches each sink has made durable, every event of them (counted from the run's
    /// first): what tells a snapshot's rows durable, which all share one position.
    batches: Mutex<Vec<u64>>,
    progress: Arc<watch::Sender<Progress>>,
}

impl AckBoard {
    fn ack(&self, sink: usize, at: Lsn) {
        if let Some(least) = raise(&self.acks, sink, at) {
            publish_durable(&self.progress, least);
        }
    }

    fn ack_batches(&self, sink: usize, n: u64) {
        if let Some(least) = raise(&self.batches, sink, n) {
            publish_batches(&self.progress, least);
        }
    }
}

/// Raises `sink`'s entry of `acks` to `to`: the least entry after, when it was raised.
fn raise<T: Copy + Ord>(acks: &Mutex<Vec<T>>, sink: usize, to: T) -> Option<T> {
    let mut acks = acks.lock().unwrap_or_else(|p| p.into_inner());
    if to <= acks[sink] {
        return None;
    }
    acks[sink] = to;
    acks.iter().copied().min()
}

/// Raises the count of batches durable in every sink.
fn publish_batches(progress: &watch::Sender<Progress>, n: u64) {
    progress.send_if_modified(|p| {
        let raise = n > p.batches;
        if raise {
            p.batches = n;
        }
        raise
    });
}

/// Raises the durable position (never lowers it).
pub(super) fn publish_durable(progress: &watch::Sender<Progress>, at: Lsn) {
    progress.send_if_modified(|p| {
        let raise = at > p.durable;
        if raise {
            p.durable = at;
        }
        raise
    });
}

/// The sinks of a run, each on its thread.
pub(super) struct SinkSet {
    queues: Vec<Sender<Arc<Batch>>>,
    threads: Vec<(String, JoinHandle<Result<()>>)>,
    budget: Arc<Budget>,
    progress: Arc<watch::Sender<Progress>>,
    /// Set by a sink thread that failed: the others stop taking batches.
    failed: Arc<AtomicBool>,
    /// Events of dropped batches, sent back to be freed on this (the decode) thread.
    recycler: Sender<Vec<Event>>,
    recycled: Receiver<Vec<Event>>,
    /// Batches handed on.
    sent: u64,
}

impl SinkSet {
    /// Starts a thread per sink. `start` is durable from the outset.
    pub(super) fn start(
        sinks: Vec<Box<dyn Sink>>,
        start: Lsn,
        progress: Arc<watch::Sender<Progress>>,
    ) -> Result<SinkSet> {
        let board = Arc::new(AckBoard {
            acks: Mutex::new(vec![start; sinks.len()]),
            batches: Mutex::new(vec![0; sinks.len()]),
            progress: Arc::clone(&progress),
        });
        let budget = Budget::new(BATCH_BUDGET);
        let failed = Arc::new(AtomicBool::new(false));
        let (recycler, recycled) = crossbeam_channel::unbounded();
        let mut set = SinkSet {
            queues: Vec::new(),
            threads: Vec::new(),
            budget,
            progress,
            failed,
            recycler,
            recycled,
            sent: 0,
        };
        for (i, sink) in sinks.into_iter().enumerate() {
            let (tx, rx) = crossbeam_channel::bounded(QUEUE_BATCHES);
            let name = sink.describe();
            let runner = Runner {
                sink,
                rx,
                slot: i,
                board: Arc::clone(&board),
                failed: Arc::clone(&set.failed),
                budget: Arc::clone(&set.budget),
                written: start,
                batches: 0,
            };
            let handle = thread::Builder::new()
                .name(format!("walwatch-sink-{i}"))
                .spawn(move || runner.run())
                .map_err(|e| Error::Setup(format!("cannot start a thread for {name}: {e}")))?;
            set.queues.push(tx);
            set.threads.push((name, handle));
        }
        Ok(set)
    }

    /// Hands `events` (whole transactions up to `end`, or part of one) to every sink, waiting
    /// while the budget or a queue is full. An error is the first failed sink's.
    pub(super) fn send(&mut self, events: Vec<Event>, bytes: usize, end: Lsn) -> Result<()> {
        self.sent += 1;
        if self.queues.is_empty() {
            publish_durable(&self.progress, end);
            publish_batches(&self.progress, self.sent);
            return Ok(());
        }
        self.free_recycled();
        let Some(reserved) = self.budget.reserve(bytes) else {
            return Err(self.failure());
        };
        // What the sinks dropped while the budget was full.
        self.free_recycled();
        let batch = Arc::new(Batch {
            events,
            end,
            _reserved: Some(reserved),
            recycle: Some(self.recycler.clone()),
        });
        for i in 0..self.queues.len() {
            let mut item = Arc::clone(&batch);
            loop {
                if self.failed.load(Ordering::Acquire) {
                    return Err(self.failure());
                }
                match self.queues[i].send_timeout(item, Duration::from_millis(100)) {
                    Ok(()) => break,
                    Err(SendTimeoutError::Timeout(back)) => item = back,
                    Err(SendTimeoutError::Disconnected(_)) => return Err(self.failure()),
                }
            }
        }
        Ok(())
    }

    /// Batches handed on so far: the next one handed on is `sent() + 1`.
    pub(super) fn sent(&self) -> u64 {
        self.sent
    }

    /// Frees the events the sinks are done with.
    fn free_recycled(&self) {
        self.recycled.try_iter().for_each(drop);
    }

    /// Batches whose events came back and are not freed yet.
    #[cfg(test)]
    pub(super) fn waiting_to_be_freed(&self) -> usize {
        self.recycled.len()
    }

    /// The run ends: every sink writes out what it holds and acknowledges it.
    pub(super) fn finish(mut self) -> Result<()> {
        self.queues.clear();
        let mut first = None;
        for (name, handle) in self.threads.drain(..) {
            let res = handle.join().unwrap_or_else(|_| Err(panicked(&name)));
            if let Err(e) = res {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The run is abandoned (the decoder failed, or a sink did): the sinks stop without
    /// writing out what they hold, and nothing more is acknowledged by the ones that fail.
    pub(super) fn abandon(mut self) {
        self.stop_all();
        let _ = self.join_stopped();
    }

    /// A sink failed: stop the others, and its error.
    fn failure(&mut self) -> Error {
        self.stop_all();
        self.join_stopped().unwrap_or_else(|| {
            Error::Setup("a sink stopped without saying why: this is a bug in walwatch".into())
        })
    }

    fn stop_all(&mut self) {
        self.failed.store(true, Ordering::Release);
        self.budget.abort();
        self.queues.clear();
    }

    /// Joins the sink threads that end within a few seconds (one blocked on a broker that is
    /// away may not: it is left behind), and the first error among them.
    fn join_stopped(&mut self) -> Option<Error> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut first = None;
        for (name, handle) in self.threads.drain(..) {
            while !handle.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if !handle.is_finished() {
                tracing::warn!("{name} did not stop within 5 s; leaving it behind");
                continue;
            }
            if let Err(e) = handle.join().unwrap_or_else(|_| Err(panicked(&name))) {
                first.get_or_insert(e);
            }
        }
        first
    }
}

impl Drop for SinkSet {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop_all();
        }
    }
}

fn panicked(name: &str) -> Error {
    Error::Setup(format!(
        "the thread of {name} panicked: this is a bug in walwatch, please report it"
    ))
}

/// One sink's thread.
struct Runner {
    sink: Box<dyn Sink>,
    rx: Receiver<Arc<Batch>>,
    slot: usize,
    board: Arc<AckBoard>,
    failed: Arc<AtomicBool>,
    budget: Arc<Budget>,
    /// The `end` of the last batch written.
    written: Lsn,
    /// Batches written.
    batches: u64,
}

impl Runner {
    fn run(mut self) -> Result<()> {
        match self.drain() {
            Ok(true) => {
                let at = self.sink.finish(self.written)?;
                self.board.ack(self.slot, at);
                self.board.ack_batches(self.slot, self.batches);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                self.budget.abort();
                Err(e)
            }
        }
    }

    /// The queue closed: the end of the run (`true`), or its abandonment.
    fn closed(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }

    /// Writes and acknowledges until the queue closes (`true`: finish) or the run is abandoned
    /// (`false`).
    fn drain(&mut self) -> Result<bool> {
        let mut dirty = false;
        let mut last_ack = Instant::now();
        loop {
            if self.failed.load(Ordering::Acquire) {
                return Ok(false);
            }
            let next = match self.rx.try_recv() {
                Ok(batch) => Some(batch),
                // The queue ran dry: acknowledge what was written (group commit).
                Err(TryRecvError::Empty) if dirty => None,
                Err(TryRecvError::Empty) => match self.rx.recv_timeout(IDLE_TICK) {
                    Ok(batch) => Some(batch),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return Ok(self.closed()),
                },
                Err(TryRecvError::Disconnected) => return Ok(self.closed()),
            };
            let due = match next {
                Some(batch) => {
                    self.sink.write(&batch)?;
                    self.written = batch.end;
                    self.batches += 1;
                    dirty = true;
                    last_ack.elapsed() >= ACK_EVERY
                }
                None => true,
            };
            if due {
                let at = self.sink.acknowledge(self.written)?;
                self.board.ack(self.slot, at);
                // The batches before the oldest one the sink still holds rows of are durable.
                let durable = self
                    .sink
                    .held_from()
                    .map_or(self.batches, |n| n.saturating_sub(1));
                self.board.ack_batches(self.slot, durable);
                dirty = false;
                last_ack = Instant::now();
            }
        }
    }
}
