//! The decode thread: frames in, batches of filtered events out to every sink.
//!
//! It decodes each frame, fills in what is looked up once per relation (`lookups.rs`),
//! filters, drops walwatch's own BEGIN/COMMIT around markers, skips what a new connection
//! replays of what the sinks were already given, and cuts what passes into batches: when its
//! input runs dry between transactions (so a quiet stream's events go out at once), at least
//! every [`FLUSH_EVERY`] while busy, and whenever a batch reaches [`BATCH_EVENTS`] events or
//! [`BATCH_BYTES`] (a streamed transaction of millions of rows goes out in pieces; memory
//! stays bounded).

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::budget::footprint;
use super::lookups::{Partitions, PrimaryKeys};
use super::sinks::SinkSet;
use super::windows::{Note, Ready, Seen, Windows};
use super::{Frame, Frames, KeyLookup, PartitionLookup, Progress, StreamSetup, Tap, TypeLoader};
use crate::decode::{Decoder, TypeRegistry};
use crate::error::{Error, Result};
use crate::event::{Event, Lsn, Op};
use crate::filter::Filter;
use crate::marker;
use crate::pg::snapshot::SnapshotRows;
use crate::pg::stream::ReplMessage;
use crate::sink::resume::{Resume, Tally};
use crate::snapshot_request::Request;

/// How long the decode thread may hold events back while busy.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// A batch is handed on once it holds this many events...
const BATCH_EVENTS: usize = 4096;

/// ... or this many bytes (estimated, `budget::footprint`).
const BATCH_BYTES: usize = 1 << 20;

/// Where a run with a backfill has the decode thread report the snapshot rows it hands on and
/// the requests it finds, the run's id in its watermarks, and the slot requests are for.
pub(super) struct Reports {
    pub notes: tokio::sync::mpsc::UnboundedSender<Note>,
    pub run: String,
    pub slot: String,
}

/// Starts the decode thread: it decodes, filters and batches what `rx` brings, and publishes
/// on `progress` that it stopped when it ends (what is durable, the sinks publish).
pub(super) fn spawn(
    setup: StreamSetup,
    reports: Option<Reports>,
    rx: mpsc::Receiver<Frames>,
    progress: Arc<watch::Sender<Progress>>,
) -> Result<thread::JoinHandle<Result<u64>>> {
    let mut fanout = Fanout::new(setup, reports, Arc::clone(&progress))?;
    thread::Builder::new()
        .name("walwatch-decode".into())
        .spawn(move || {
            let res = fanout.run(rx);
            progress.send_modify(|p| p.stopped = true);
            res.map(|()| fanout.events)
        })
        .map_err(|e| Error::Setup(format!("cannot start the decode thread: {e}")))
}

/// The decode thread's state: the decoder, and everything its events flow into.
pub(super) struct Fanout {
    decoder: Decoder,
    tap: Option<Box<dyn Tap>>,
    load_types: Option<TypeLoader>,
    /// Type OIDs already looked up, found or not: each is looked up once.
    looked_up: HashSet<u32>,
    pub(super) out: Output,
    pub(super) events: u64,
}

/// Filter, batches and positions: separate from the decoder so the decoder's emit callback can
/// borrow it while the decoder is borrowed too.
pub(super) struct Output {
    filter: Filter,
    partitions: Partitions,
    keys: PrimaryKeys,
    endpos: Option<Lsn>,
    progress: Arc<watch::Sender<Progress>>,
    /// BEGIN held back until the transaction's first accepted change, so transactions with
    /// nothing to show (filtered out, or empty) print nothing.
    pending_begin: Option<Event>,
    begun: bool,
    /// End of the last transaction decoded, or an idle keepalive position: what the next
    /// batch's `end` is.
    candidate: Lsn,
    /// The `end` of the last batch handed on.
    sent: Lsn,
    batch: Vec<Event>,
    batch_bytes: usize,
    /// `None` once the sinks are finished or abandoned.
    sinks: Option<SinkSet>,
    pub(super) done: bool,
    written: u64,
    /// What the sinks were given, and what to skip when a new connection replays it.
    tally: Tally,
    resume: Resume,
    error: Option<Error>,
    /// A snapshot read while the stream runs: its chunks and watermarks.
    windows: Windows,
    /// Where the snapshot's rows handed on are reported (`backfill.rs`).
    notes: Option<tokio::sync::mpsc::UnboundedSender<Note>>,
}

impl Fanout {
    pub(super) fn new(
        setup: StreamSetup,
        reports: Option<Reports>,
        progress: Arc<watch::Sender<Progress>>,
    ) -> Result<Fanout> {
        let sinks = SinkSet::start(setup.sinks, setup.start, Arc::clone(&progress))?;
        Ok(Fanout {
            decoder: setup.decoder,
            tap: setup.tap,
            load_types: setup.load_types,
            looked_up: HashSet::new(),
            out: Output::new(setup.filter, sinks, setup.endpos, progress)
                .starting_at(setup.start)
                .with_lookups(setup.partitions, setup.primary_keys)
                .with_backfill(reports),
            events: 0,
        })
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Frames>) -> Result<()> {
        let res = self.run_inner(&mut rx);
        self.end(res)
    }

    /// The run's result, once the sinks are finished (or abandoned, after an error) and the
    /// tap has seen it too.
    pub(super) fn end(&mut self, res: Result<()>) -> Result<()> {
        let res = match res {
            Ok(()) => self.out.finish(),
            Err(e) => {
                self.out.abandon();
                Err(e)
            }
        };
        self.events = self.out.written;
        let tapped = match &mut self.tap {
            Some(tap) => tap.finish(&res),
            None => Ok(()),
        };
        res.and(tapped)
    }

    /// Hands on what was decoded so far: the tap's frames reach its file first, so a raw
    /// recording holds every frame behind what any sink acknowledges.
    pub(super) fn flush(&mut self) -> Result<()> {
        if let Some(tap) = &mut self.tap {
            tap.sync()?;
        }
        self.out.seal()
    }

    fn run_inner(&mut self, rx: &mut mpsc::Receiver<Frames>) -> Result<()> {
        let mut flushed = Instant::now();
        while let Some(frames) = rx.blocking_recv() {
            for frame in frames.frames {
                self.handle(frame)?;
            }
            // The frames' bytes are free again (the events own what they decoded).
            drop(frames.permit);
            if self.due(rx.is_empty(), flushed) {
                self.flush()?;
                flushed = Instant::now();
            }
            if self.out.done {
                break;
            }
        }
        self.flush()
    }

    /// Whether to hand on what was decoded, after the frames of one hand-off (`dry`: none
    /// are queued behind them). At the end; while busy, at least every [`FLUSH_EVERY`]; and
    /// when the input runs dry, unless that is in the middle of a transaction. Nothing of an
    /// open transaction can be acknowledged before its COMMIT, and the walsender sends a
    /// transaction's changes back to back (it decodes the whole transaction before sending
    /// it, and a streamed one is buffered here until its Stream Commit), so running dry
    /// inside one only means that the server is slower than this thread. Handing on there
    /// woke every sink thread, and fsync'd the JSONL file, about once per socket read (issue
    /// 16's note: 5,000 fsyncs instead of 860 for `benches/e2e.sh`'s 1,000 transactions of
    /// 1,000 rows).
    pub(super) fn due(&self, dry: bool, flushed: Instant) -> bool {
        self.out.done || flushed.elapsed() >= FLUSH_EVERY || (dry && !self.decoder.in_transaction())
    }

    pub(super) fn handle(&mut self, frame: Frame) -> Result<()> {
        if self.out.done {
            return Ok(());
        }
        if let Some(tap) = &mut self.tap {
            tap.frame(&frame)?;
        }
        match frame {
            Frame::Message(ReplMessage::XLogData {
                wal_start, data, ..
            }) => {
                let out = &mut self.out;
                self.decoder
                    .decode(wal_start, &data, &mut |ev| out.emit(ev))?;
                // A high watermark was decoded: its chunk's rows go out before its COMMIT.
                if let Some(ready) = self.out.windows.ready.take() {
                    self.out.release(ready, self.decoder.types());
                }
                if let Some((table, chunk)) = self.out.windows.lost.take() {
                    let why = "the stream reconnected after its low watermark";
                    self.out.note(Note::Discarded { table, chunk, why });
                }
                if let Some(e) = self.out.error.take() {
                    return Err(e);
                }
                self.look_up_new_types()?;
                self.warn_unresolved();
            }
            Frame::Reset => {
                self.decoder.reset();
                self.out.windows.reset();
                self.out.restart()?;
            }
            Frame::Rows(rows) if rows.window.is_some() => self.out.windows.hold(rows),
            Frame::Rows(rows) => {
                let out = &mut self.out;
                rows.events(self.decoder.types(), |ev| out.emit(ev))?;
                if let Some(e) = self.out.error.take() {
                    return Err(e);
                }
                let n = rows.lines.len() as u64;
                self.out.note_rows(&rows, None, n, 0);
            }
            Frame::Message(ReplMessage::Keepalive { wal_end, .. }) => {
                // Idle (no transaction open or buffered): everything the server decoded up to
                // wal_end has been received, so once every sink has acknowledged what came
                // before, confirming it is safe and keeps an idle slot from pinning WAL.
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
    pub(super) fn new(
        filter: Filter,
        sinks: SinkSet,
        endpos: Option<Lsn>,
        progress: Arc<watch::Sender<Progress>>,
    ) -> Output {
        Output {
            filter,
            partitions: Partitions::default(),
            keys: PrimaryKeys::default(),
            endpos,
            progress,
            pending_begin: None,
            begun: false,
            candidate: Lsn::ZERO,
            sent: Lsn::ZERO,
            batch: Vec::new(),
            batch_bytes: 0,
            sinks: Some(sinks),
            done: false,
            written: 0,
            tally: Tally::default(),
            resume: Resume::default(),
            error: None,
            windows: Windows::default(),
            notes: None,
        }
    }

    fn with_backfill(mut self, reports: Option<Reports>) -> Output {
        if let Some(r) = reports {
            self.notes = Some(r.notes);
            self.windows.run = Some(r.run);
            self.windows.slot = Some(r.slot);
        }
        self
    }

    /// Tells the backfill that `rows` (of table `rows.table`) were handed on: `n` of them,
    /// `dropped` superseded by the stream. They are all in the batch sealed next or before.
    fn note_rows(&mut self, rows: &SnapshotRows, chunk: Option<u64>, n: u64, dropped: u64) {
        let seq = self.sinks.as_ref().map_or(0, SinkSet::sent) + 1;
        self.note(Note::Rows {
            table: rows.table,
            chunk,
            rows: n,
            dropped,
            after: rows.after.clone(),
            done: rows.last,
            seq,
        });
    }

    /// Hands a snapshot request to the backfill, and waits until it has it in the slot's
    /// record: only then may anything after it in the stream go to the sinks, whose
    /// acknowledgements would let the slot's position pass the request. Requests are rare and
    /// taking one is a catalog write, so the wait is short.
    fn hand_over(&mut self, request: Request, at: Lsn) {
        let (taken, wait) = tokio::sync::oneshot::channel();
        self.note(Note::Request { request, at, taken });
        // Gone without a word: the backfill stopped, and cannot take it. Going on would let
        // the slot be confirmed past the request and lose it.
        if wait.blocking_recv().is_err() {
            self.fail(Error::Snapshot(
                "a snapshot request came while the backfill was stopping: run walwatch again \
                 to take it"
                    .into(),
            ));
        }
    }

    fn note(&mut self, note: Note) {
        if let Some(tx) = &self.notes {
            let _ = tx.send(note);
        }
    }

    /// A chunk's high watermark was decoded: its rows go out as READ events at the high
    /// watermark's place, minus those the window's changes supersede; or, when that would not
    /// be exact, none, and the backfill reads the chunk again (`windows.rs`).
    fn release(&mut self, ready: Ready, types: &TypeRegistry) {
        let Ready {
            mut rows,
            window,
            lsn,
            commit_lsn,
            ts,
        } = ready;
        let chunk = rows.window.as_ref().map_or(0, |w| w.chunk);
        let table = rows.table;
        if let Some(why) = window.discard(&rows) {
            self.note(Note::Discarded { table, chunk, why });
            return;
        }
        rows.at = commit_lsn;
        rows.taken = ts.unwrap_or(rows.taken);
        let mut events = Vec::with_capacity(rows.lines.len());
        if let Err(e) = rows.events(types, |mut ev| {
            ev.lsn = lsn;
            events.push(ev);
        }) {
            self.fail(e);
            return;
        }
        let mut kept = Vec::with_capacity(events.len());
        let mut dropped = 0;
        for mut ev in events {
            if !self.enrich(&mut ev) {
                return;
            }
            match window.drops(&ev) {
                Some(false) => kept.push(ev),
                Some(true) => dropped += 1,
                None => {
                    let why = "a change in the window left a TOASTed value of one of its rows out";
                    self.note(Note::Discarded { table, chunk, why });
                    return;
                }
            }
        }
        let n = kept.len() as u64;
        for ev in kept {
            if self.accepts(&ev) {
                self.write(ev);
            }
        }
        self.note_rows(&rows, Some(chunk), n, dropped);
    }

    /// Fills in what is looked up once per relation (the partitioned table, the primary key);
    /// `false` when a lookup failed (the run stops with its error).
    fn enrich(&mut self, ev: &mut Event) -> bool {
        let Some(rel) = ev.relation.clone() else {
            return true;
        };
        let looked_up = self.partitions.of(&rel, &self.filter).and_then(|p| {
            ev.partition_of = p;
            self.keys.apply(&rel, ev)
        });
        match looked_up {
            Ok(()) => true,
            Err(e) => {
                self.fail(e);
                false
            }
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

    pub(super) fn starting_at(mut self, start: Lsn) -> Output {
        self.candidate = start;
        self.sent = start;
        self
    }

    /// A new connection: the server replays from the durable position, which may repeat what
    /// was already given to the sinks (written, not yet acknowledged). Skip exactly that. What
    /// the old connection brought goes on first: the tally counts it as given.
    fn restart(&mut self) -> Result<()> {
        self.seal()?;
        self.pending_begin = None;
        self.begun = false;
        self.resume = Resume::after(self.tally);
        Ok(())
    }

    /// Called for every decoded event, in order.
    pub(super) fn emit(&mut self, mut ev: Event) {
        if self.done || self.error.is_some() {
            return;
        }
        if !self.enrich(&mut ev) {
            return;
        }
        // Every change counts for an open window, whatever the filter says of it; a
        // watermark is for no one else.
        if self.notes.is_some() {
            match self.windows.observe(&ev) {
                Seen::Other => {}
                Seen::Own => return,
                Seen::Request(request, at) => return self.hand_over(request, at),
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
                    self.write(ev);
                }
                self.begun = false;
                self.pending_begin = None;
                self.candidate = self.candidate.max(end);
                if self.endpos.is_some_and(|e| end >= e) {
                    self.done = true;
                }
            }
            Op::Read => {
                // A snapshot's row: in no transaction, so no BEGIN goes before it.
                if self.accepts(&ev) {
                    self.write(ev);
                }
            }
            _ if marker::is_marker(&ev) => {
                // walwatch's own fences and marks are transactions of one message: the message
                // goes to recorders and watches alone, and its BEGIN and COMMIT to no one, so
                // no predicate, count or report ever sees walwatch's own traffic.
                // A snapshot's watermarks are for no one (those of an earlier run too).
                if self.filter.keeps_marker(&ev) && marker::backfill_content(&ev).is_none() {
                    self.write(ev);
                }
            }
            _ => {
                if !self.accepts(&ev) {
                    return;
                }
                if let Some(begin) = self.pending_begin.take() {
                    self.write(begin);
                }
                self.begun = true;
                self.write(ev);
            }
        }
    }

    /// Stops the run with `e`: nothing after it is handed on, so nothing after it confirmed.
    fn fail(&mut self, e: Error) {
        self.error = Some(e);
        self.done = true;
    }

    /// The filter's verdict; an expression error stops the run (nothing after it confirmed).
    fn accepts(&mut self, ev: &Event) -> bool {
        match self.filter.accepts(ev) {
            Ok(yes) => yes,
            Err(e) => {
                self.fail(Error::Expr(e));
                false
            }
        }
    }

    fn write(&mut self, ev: Event) {
        if !self.resume.admit(&ev) {
            return;
        }
        self.tally.note(&ev);
        self.batch_bytes += footprint(&ev);
        self.batch.push(ev);
        self.written += 1;
        if (self.batch.len() >= BATCH_EVENTS || self.batch_bytes >= BATCH_BYTES)
            && let Err(e) = self.seal()
        {
            self.fail(e);
        }
    }

    /// Hands the events so far to the sinks as one batch ending at the candidate position;
    /// with no events, only when the position moved.
    pub(super) fn seal(&mut self) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.batch.is_empty() && self.candidate <= self.sent {
            return Ok(());
        }
        let Some(sinks) = &mut self.sinks else {
            return Ok(());
        };
        let events = std::mem::take(&mut self.batch);
        let bytes = std::mem::take(&mut self.batch_bytes);
        sinks.send(events, bytes, self.candidate)?;
        self.sent = self.candidate;
        Ok(())
    }

    /// The end of the run: what is left goes out, and every sink writes out what it still
    /// holds and acknowledges it. Then the end position, when reached, is published.
    pub(super) fn finish(&mut self) -> Result<()> {
        let sealed = self.seal();
        if let Err(e) = sealed {
            self.abandon();
            return Err(e);
        }
        if let Some(sinks) = self.sinks.take() {
            sinks.finish()?;
        }
        let done = self.done;
        self.progress.send_if_modified(|p| {
            let changed = p.done != done;
            p.done = done;
            changed
        });
        Ok(())
    }

    /// After an error: the sinks stop without writing out what they hold.
    pub(super) fn abandon(&mut self) {
        if let Some(sinks) = self.sinks.take() {
            sinks.abandon();
        }
    }

    /// Events decoded and not handed on yet.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.batch.len()
    }

    /// What is durable now (every sink acknowledged it).
    pub(super) fn durable(&self) -> Lsn {
        self.progress.borrow().durable
    }
}
