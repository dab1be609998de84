//! The replication side of a snapshot's progress: how far each table is durable in every sink,
//! kept in the slot's record; for a snapshot continued after a stop, and for tables asked for
//! while streaming (`walwatch snapshot`, `crate::snapshot_request`), the reading of the rows
//! between watermarks while the stream runs (the decode side is `windows.rs`).
//!
//! Why it looks like this:
//! - Progress must never be ahead of the output. The decode thread says which batch holds
//!   each table's rows up to which key ([`Note::Rows`]); the sinks say how many batches are
//!   durable in all of them (`Progress::batches`; the rows of a snapshot all share one
//!   position, so the confirmed position cannot say it). Only then is the record written.
//! - The record lives in walwatch's publications' comment with the rest of what walwatch keeps
//!   for the slot (`pg::publication::Record`): one place for every sink, on the server the
//!   slot is on, dropped with the slot's publications. A sink's own state could not serve a
//!   run of several sinks, and a local file would not follow the slot to another machine.
//! - A continued snapshot cannot use the slot's exported snapshot (it died with the run that
//!   created the slot), so each chunk is read in a snapshot of its own between a low and a high
//!   watermark, in key order from the last durable key (`WHERE (key) > (…) ORDER BY key
//!   LIMIT n`), or by heap pages for a table without a key.
//! - One chunk is in flight at a time: the decode thread holds it until its high watermark.
//! - A request is taken into the record before the decode thread goes past it in the stream
//!   (it waits), so no stop can lose it once the slot could be confirmed past it; the record
//!   also remembers the last one taken, so one the server sends again is not taken twice.
//! - A requested table that cannot be read (dropped, not readable by the role) is recorded
//!   as failed and left out: a request never stops the stream. A table of the slot's own
//!   snapshot that cannot be read stops the run, as at its start.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::Client;

use super::progress::SnapshotProgress;
use super::windows::{Note, Watermark};
use super::{Frame, Frames, Progress};
use crate::error::{Error, Result};
use crate::event::Lsn;
use crate::pg::catalog;
use crate::pg::publication::{self, BackfillRecord, Record, TAKEN_KEPT, TableBackfill};
use crate::pg::snapshot::{self, ChunkReader, Range, SnapshotTable};
use crate::snapshot_request::Request;

/// The slot's record, shared by everything that writes it (the type loader, the backfill).
pub type SharedRecord = Arc<tokio::sync::Mutex<Record>>;

/// Opens a connection for the backfill's reader, when it first needs one (most runs never
/// read a snapshot, and should not hold a connection for it).
pub type Connect =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Client>> + Send>> + Send + Sync>;

/// How often, at most, progress is written to the record while a snapshot is read: what a
/// stop makes read again (a record write is a catalog update, so not at every chunk).
const RECORD_EVERY: Duration = Duration::from_millis(250);

/// Pages per chunk of a table without a key whose size is not known.
const DEFAULT_PAGES: u64 = 64;

/// See [`Keeper::gate_open`]. Never set it outside tests.
const GATE_ENV: &str = "WALWATCH_TEST_BACKFILL_GATE";

/// The request ids kept per table.
const REQUESTS_PER_TABLE: usize = 8;

/// A snapshot's progress to keep, the tables to read between watermarks if any, and what
/// tables asked for while streaming are planned with.
pub struct Backfill {
    /// The slot's record and the publications whose comment holds it. None for a temporary
    /// slot or with `--publication`: progress is not kept, and a stop loses it.
    pub record: Option<(SharedRecord, Vec<String>)>,
    /// Its own connection: the record is written with it, and chunks read. Opened with
    /// `connect` when first needed.
    pub reader: Option<ChunkReader>,
    pub connect: Connect,
    /// What the stream reads: the tables a request can ask for are the publications' among
    /// the watched ones (`None`: every table the publications publish).
    pub publications: Vec<String>,
    pub watched: Option<Vec<(String, String)>>,
    pub server_version: u32,
    pub tables: Vec<SnapshotTable>,
    /// How far each of `tables` is (same order).
    pub state: Vec<TableBackfill>,
    /// The record's other tables, kept as they are (the unfinished snapshot of the slot's own
    /// on a run without `--snapshot`), until a request asks for one.
    pub others: Vec<TableBackfill>,
    /// The slot was created with a snapshot (the record's `initial`), and its tables are
    /// listed (`planned`: false while a stop right after the slot's creation left them to
    /// list).
    pub initial: bool,
    pub planned: bool,
    /// The position of the last request taken, and the ids of the last ones.
    pub taken: Lsn,
    pub requests: Vec<String>,
    /// Read what `state` says is not done, between watermarks (a continued snapshot); else
    /// the slot's exported snapshot is being read by the replication task, and this only
    /// keeps its progress.
    pub read: bool,
    pub chunk: usize,
    /// `--snapshot only`: the run stops once every table is durable.
    pub only: bool,
    pub progress: bool,
    /// The slot: watermarks and requests carry its name.
    pub slot: String,
    /// This run's id in its watermarks.
    pub run: String,
}

/// What the backfill tells the run, when it should stop for it.
pub enum Verdict {
    /// `--snapshot only`: every table is durable.
    Done,
    Failed(Error),
}

/// A batch's rows waiting to be durable.
struct Waiting {
    seq: u64,
    table: usize,
    rows: u64,
    after: Option<Vec<String>>,
    done: bool,
}

/// How reading a table ended.
enum Reading {
    /// Every row is handed on.
    Handed,
    /// The decode thread stopped.
    Stopped,
    /// The table could not be read (dropped, not readable by the role).
    Unreadable(Error),
}

/// A request heard from the decode thread, to take.
struct Heard {
    request: Request,
    at: Lsn,
    taken: oneshot::Sender<()>,
}

/// The running backfill.
struct Keeper {
    b: Backfill,
    notes: mpsc::UnboundedReceiver<Note>,
    progress: watch::Receiver<Progress>,
    waiting: Vec<Waiting>,
    /// Per table: this run reads it (else the replication task does, from the exported
    /// snapshot), and all its rows are handed on.
    reads: Vec<bool>,
    handed: Vec<bool>,
    requests: VecDeque<Heard>,
    dirty: bool,
    written: tokio::time::Instant,
    bars: SnapshotProgress,
    /// Writes what became durable when the sinks go quiet.
    tick: tokio::time::Interval,
    /// Every table is durable, and that was said.
    settled: bool,
    /// Rows read again after a discarded chunk, chunks discarded, and rows of chunks the
    /// stream's changes stood for.
    reread: u64,
    discarded: u64,
    superseded: u64,
}

impl Backfill {
    /// Runs until the decode thread stops: keeps the progress of every table, reads those it
    /// reads with `frames`, and takes the requests the decode thread hears. Says so on
    /// `verdict` when the run should stop for it.
    pub(super) async fn run(
        self,
        notes: mpsc::UnboundedReceiver<Note>,
        progress: watch::Receiver<Progress>,
        frames: Option<mpsc::WeakSender<Frames>>,
        verdict: oneshot::Sender<Verdict>,
    ) {
        let bars = SnapshotProgress::new(self.progress, &self.tables);
        let n = self.tables.len();
        let read = self.read;
        let mut k = Keeper {
            b: self,
            notes,
            progress,
            waiting: Vec::new(),
            reads: vec![read; n],
            handed: vec![!read; n],
            requests: VecDeque::new(),
            dirty: false,
            written: tokio::time::Instant::now(),
            bars,
            tick: tokio::time::interval(RECORD_EVERY),
            settled: false,
            reread: 0,
            discarded: 0,
            superseded: 0,
        };
        let mut verdict = Some(verdict);
        let res = k.work(frames, &mut verdict).await;
        // What became durable meanwhile is recorded even when the run stops.
        let kept = k.settle().await;
        if let Err(e) = res.and(kept) {
            match verdict.take() {
                Some(v) => {
                    let _ = v.send(Verdict::Failed(e));
                }
                None => tracing::error!("snapshot: {e}"),
            }
        }
    }
}

impl Keeper {
    /// Reads what there is to read and keeps what becomes durable, until the decode thread
    /// stops.
    async fn work(
        &mut self,
        frames: Option<mpsc::WeakSender<Frames>>,
        verdict: &mut Option<oneshot::Sender<Verdict>>,
    ) -> Result<()> {
        let mut chunk = 0;
        let mut frames = frames;
        loop {
            self.serve().await?;
            if let Some(handoff) = &frames
                && let Some(i) = self.next_table()
            {
                match self.read_table(i, handoff, &mut chunk).await? {
                    Reading::Handed => self.handed[i] = true,
                    // The run is ending: the decode thread still works through what is
                    // queued, and may hear a request there, to take into the record.
                    Reading::Stopped => frames = None,
                    Reading::Unreadable(e) => self.unreadable(i, e)?,
                }
                continue;
            }
            let something = !self.b.state.is_empty() || self.b.only;
            if !self.settled && something && self.complete() {
                self.settled = true;
                self.write().await?;
                if self.reread > 0 || self.superseded > 0 {
                    tracing::info!(
                        "snapshot: {} chunks read again ({} rows) after changes in their \
                         window; {} rows came from the stream, changed while their chunk was read",
                        self.discarded,
                        self.reread,
                        self.superseded
                    );
                }
                if self.b.only
                    && let Some(v) = verdict.take()
                {
                    let _ = v.send(Verdict::Done);
                }
            }
            if !self.step().await? {
                return Ok(());
            }
        }
    }

    /// Whether every table is recorded done.
    fn complete(&self) -> bool {
        self.b.state.iter().all(|t| t.done)
    }

    /// The next table this run reads that is not read yet.
    fn next_table(&self) -> Option<usize> {
        (0..self.b.state.len()).find(|&i| self.reads[i] && !self.handed[i] && !self.b.state[i].done)
    }

    /// The reader, opened on first use.
    async fn reader(&mut self) -> Result<&ChunkReader> {
        let reader = match self.b.reader.take() {
            Some(r) => r,
            None => ChunkReader::open((self.b.connect)().await?).await?,
        };
        Ok(self.b.reader.insert(reader))
    }

    /// Reads table `i` chunk after chunk from where it is durable.
    async fn read_table(
        &mut self,
        i: usize,
        frames: &mpsc::WeakSender<Frames>,
        chunk: &mut u64,
    ) -> Result<Reading> {
        let table = self.b.tables[i].clone();
        let mut after = self.b.state[i].after.clone();
        let limit = self.b.chunk;
        let keyless = table.key.is_empty();
        let (pages, per_chunk) = if keyless {
            let pages = self.reader().await?.pages(&table).await?;
            (pages, pages_per_chunk(&table, pages, limit))
        } else {
            (0, 0)
        };
        if keyless && self.b.state[i].rows > 0 {
            tracing::warn!(
                "snapshot of {}.{} starts again: it has no key to continue after ({} rows \
                 read before are read again)",
                table.relation.namespace,
                table.relation.name,
                self.b.state[i].rows
            );
            self.reread += self.b.state[i].rows;
            self.b.state[i].rows = 0;
        }
        let mut page = 0;
        loop {
            if *chunk > 0 && !self.gate_open().await? {
                return Ok(Reading::Stopped);
            }
            *chunk += 1;
            let range = if keyless {
                Range::Pages {
                    from: page,
                    to: page + per_chunk,
                }
            } else {
                Range::After {
                    after: after.as_deref(),
                    limit,
                }
            };
            self.watermark(*chunk, table.relation.oid, false).await?;
            let mut rows = match self.reader().await?.read(i, &table, range, *chunk).await {
                Ok(rows) => rows,
                Err(e @ Error::Snapshot(_)) => return Ok(Reading::Unreadable(e)),
                Err(e) => return Err(e),
            };
            rows.last = if keyless {
                page + per_chunk >= pages
            } else {
                rows.lines.len() < limit
            };
            let (n, last, next) = (rows.lines.len() as u64, rows.last, rows.after.clone());
            let frame = Frames {
                frames: vec![Frame::Rows(rows)],
                permit: None,
            };
            // Queued before the high watermark exists, so the decode thread has the chunk
            // before it decodes the watermark.
            if !self.queue(frame, frames).await? {
                return Ok(Reading::Stopped);
            }
            self.watermark(*chunk, table.relation.oid, true).await?;
            match self.outcome(*chunk).await? {
                None => return Ok(Reading::Stopped),
                Some(true) => {
                    if last {
                        return Ok(Reading::Handed);
                    }
                    if keyless {
                        page += per_chunk;
                    } else {
                        after = next;
                    }
                }
                Some(false) => {
                    self.discarded += 1;
                    self.reread += n;
                }
            }
        }
    }

    /// Test only: while the file `WALWATCH_TEST_BACKFILL_GATE` names exists, no chunk after a
    /// run's first is read (progress is still recorded, requests still taken), so a test can
    /// act in the middle of a backfill for certain. `false` when the decode thread stopped.
    async fn gate_open(&mut self) -> Result<bool> {
        let Some(gate) = std::env::var_os(GATE_ENV) else {
            return Ok(true);
        };
        while std::path::Path::new(&gate).exists() {
            if !self.step().await? {
                return Ok(false);
            }
            self.serve().await?;
        }
        Ok(true)
    }

    /// Hands a chunk to the decode thread; `false` when it stopped. While the hand-off is
    /// full, requests are still taken: the decode thread waits for them.
    async fn queue(&mut self, frame: Frames, frames: &mpsc::WeakSender<Frames>) -> Result<bool> {
        let Some(frames) = frames.upgrade() else {
            return Ok(false);
        };
        let permit = loop {
            tokio::select! {
                permit = frames.reserve() => match permit {
                    Ok(p) => break p,
                    Err(_) => return Ok(false),
                },
                note = self.notes.recv() => match note {
                    Some(note) => {
                        self.take(note, 0);
                        self.serve().await?;
                    }
                    None => return Ok(false),
                },
            }
        };
        permit.send(frame);
        Ok(true)
    }

    async fn watermark(&mut self, chunk: u64, rel: u32, high: bool) -> Result<()> {
        let w = Watermark {
            run: self.b.run.clone(),
            chunk,
            high,
            rel,
        };
        let content = serde_json::to_string(&w).unwrap_or_default();
        let prefix = crate::marker::scoped(crate::marker::BACKFILL_PREFIX, Some(&self.b.slot));
        self.reader().await?.watermark(&prefix, &content).await
    }

    /// Waits for the decode thread's word on chunk `chunk`: `Some(true)` handed on,
    /// `Some(false)` discarded (read it again), `None` the decode thread stopped.
    async fn outcome(&mut self, chunk: u64) -> Result<Option<bool>> {
        loop {
            let next = tokio::select! {
                note = self.notes.recv() => note,
                changed = self.progress.changed() => {
                    if changed.is_err() {
                        return Ok(None);
                    }
                    self.durable().await?;
                    continue;
                }
                _ = self.tick.tick() => {
                    self.durable().await?;
                    continue;
                }
            };
            let Some(note) = next else { return Ok(None) };
            let verdict = self.take(note, chunk);
            self.serve().await?;
            if let Some(verdict) = verdict {
                return Ok(Some(verdict));
            }
        }
    }

    /// One note or one move of what is durable; `false` when the decode thread is gone.
    async fn step(&mut self) -> Result<bool> {
        tokio::select! {
            note = self.notes.recv() => match note {
                Some(note) => {
                    self.take(note, 0);
                }
                None => return Ok(false),
            },
            changed = self.progress.changed() => {
                if changed.is_err() {
                    return Ok(false);
                }
                self.durable().await?;
            }
            _ = self.tick.tick() => self.durable().await?,
        }
        Ok(true)
    }

    /// Takes in a note; for chunk `chunk`'s, whether it was handed on.
    fn take(&mut self, note: Note, chunk: u64) -> Option<bool> {
        match note {
            Note::Rows {
                table,
                chunk: c,
                rows,
                dropped,
                after,
                done,
                seq,
            } => {
                self.superseded += dropped;
                // The exported snapshot's reader draws its own.
                if self.reads[table] {
                    self.bars.advance(table, rows);
                }
                self.waiting.push(Waiting {
                    seq,
                    table,
                    rows,
                    after,
                    done,
                });
                (c == Some(chunk)).then_some(true)
            }
            Note::Discarded {
                table,
                chunk: c,
                why,
            } => {
                let t = &self.b.tables[table].relation;
                tracing::info!(
                    "snapshot of {}.{}: chunk read again: {why}",
                    t.namespace,
                    t.name
                );
                (c == chunk).then_some(false)
            }
            Note::Request { request, at, taken } => {
                self.requests.push_back(Heard { request, at, taken });
                None
            }
        }
    }

    /// Takes the requests heard: their tables planned and in the record before the decode
    /// thread goes on. One the record says was taken (sent again after a stop) is not taken
    /// twice.
    async fn serve(&mut self) -> Result<()> {
        while let Some(heard) = self.requests.pop_front() {
            if heard.at > self.b.taken {
                self.accept(&heard.request).await?;
                self.b.taken = heard.at;
                remember(&mut self.b.requests, &heard.request.request, TAKEN_KEPT);
                self.write().await?;
            }
            let _ = heard.taken.send(());
        }
        Ok(())
    }

    /// Plans a request's tables, among those the stream reads.
    async fn accept(&mut self, request: &Request) -> Result<()> {
        let watched = self.b.watched.clone();
        let asked = |s: &str, t: &str| {
            let is = |(ws, wt): &(String, String)| ws == s && wt == t;
            request.tables.iter().any(is) && watched.as_ref().is_none_or(|w| w.iter().any(is))
        };
        let (publications, version) = (self.b.publications.clone(), self.b.server_version);
        let record = self.b.record.as_ref().map(|(r, _)| r.clone());
        let client = self.reader().await?.client();
        let mut types = catalog::load_types(client).await?;
        if let Some(r) = record {
            r.lock().await.restore_types(&mut types);
        }
        let planned = snapshot::plan(client, &publications, version, &types, asked).await?;
        let names: Vec<String> = request
            .tables
            .iter()
            .map(|(s, t)| format!("{s}.{t}"))
            .collect();
        if planned.is_empty() {
            tracing::warn!(
                "snapshot request {}: slot {}'s stream has none of {}: nothing to read",
                request.request,
                self.b.slot,
                names.join(", ")
            );
            return Ok(());
        }
        tracing::info!(
            "snapshot request {}: reading {} while streaming",
            request.request,
            names.join(", ")
        );
        for table in planned {
            self.schedule(table, &request.request);
        }
        Ok(())
    }

    /// Puts `table` on the list to read for request `id`: from its start, or from where an
    /// unfinished read of it is durable.
    fn schedule(&mut self, table: SnapshotTable, id: &str) {
        let (schema, name) = (
            table.relation.namespace.clone(),
            table.relation.name.clone(),
        );
        let fresh = |requests: Vec<String>| TableBackfill {
            schema: schema.to_string(),
            table: name.to_string(),
            requests,
            ..TableBackfill::default()
        };
        self.settled = false;
        // The same table, or one of its name (dropped and made again since).
        let known = self.b.tables.iter().position(|t| {
            t.relation.oid == table.relation.oid
                || (t.relation.namespace == schema && t.relation.name == name)
        });
        if let Some(i) = known {
            let mut requests = std::mem::take(&mut self.b.state[i].requests);
            remember(&mut requests, id, REQUESTS_PER_TABLE);
            if self.b.state[i].done || self.b.tables[i].relation.oid != table.relation.oid {
                // Read again from its start: what was waiting to be durable of the old read
                // must not move the new one.
                self.waiting.retain(|w| w.table != i);
                self.b.state[i] = fresh(requests);
                self.b.tables[i] = table;
                self.reads[i] = true;
                self.handed[i] = false;
            } else {
                // Being read: it goes on to its end.
                self.b.state[i].requests = requests;
            }
            return;
        }
        let left = self
            .b
            .others
            .iter()
            .position(|o| o.schema == *schema && o.table == *name)
            .map(|j| self.b.others.remove(j));
        let state = match left {
            Some(mut o) if !o.done => {
                remember(&mut o.requests, id, REQUESTS_PER_TABLE);
                o.failed = None;
                o
            }
            Some(o) => {
                let mut requests = o.requests;
                remember(&mut requests, id, REQUESTS_PER_TABLE);
                fresh(requests)
            }
            None => fresh(vec![id.to_string()]),
        };
        self.bars.add(&table);
        self.b.tables.push(table);
        self.b.state.push(state);
        self.reads.push(true);
        self.handed.push(false);
    }

    /// Table `i` could not be read: a requested one is recorded as failed and left out,
    /// one of the slot's own snapshot stops the run.
    fn unreadable(&mut self, i: usize, e: Error) -> Result<()> {
        let t = &mut self.b.state[i];
        let Some(id) = t.requests.last().cloned() else {
            return Err(e);
        };
        tracing::error!(
            "snapshot request {id}: {e}; {}.{} is left out, streaming goes on",
            t.schema,
            t.table
        );
        t.failed = Some(e.to_string());
        t.done = true;
        self.handed[i] = true;
        self.dirty = true;
        self.written = tokio::time::Instant::now() - RECORD_EVERY;
        Ok(())
    }

    /// Moves what the sinks made durable into the state, and writes it when due.
    async fn durable(&mut self) -> Result<()> {
        let batches = self.progress.borrow_and_update().batches;
        let mut moved = false;
        let mut i = 0;
        while i < self.waiting.len() {
            if self.waiting[i].seq > batches {
                i += 1;
                continue;
            }
            let w = self.waiting.remove(i);
            let t = &mut self.b.state[w.table];
            t.rows += w.rows;
            if w.after.is_some() {
                t.after = w.after;
            }
            if w.done && !t.done {
                t.done = true;
                // At once: a table read again after a stop repeats its rows.
                self.written = tokio::time::Instant::now() - RECORD_EVERY;
                let name = &self.b.tables[w.table].relation;
                let rows = t.rows;
                self.bars.finish(w.table, || {
                    tracing::info!(
                        "snapshot of {}.{}: {rows} rows, durable",
                        name.namespace,
                        name.name
                    );
                });
            }
            moved = true;
        }
        self.dirty |= moved;
        if self.dirty && self.written.elapsed() >= RECORD_EVERY {
            self.write().await?;
        }
        Ok(())
    }

    /// Records what is durable now, after the last notes.
    async fn settle(&mut self) -> Result<()> {
        while let Ok(note) = self.notes.try_recv() {
            self.take(note, 0);
        }
        // The decode thread is gone: a request heard last is left to the next run (the slot
        // is not confirmed past it).
        self.requests.clear();
        self.written = tokio::time::Instant::now() - RECORD_EVERY;
        self.durable().await?;
        if self.dirty {
            self.write().await?;
        }
        Ok(())
    }

    /// Writes the state into the record (when the slot has one).
    async fn write(&mut self) -> Result<()> {
        self.dirty = false;
        self.written = tokio::time::Instant::now();
        let Some((record, publications)) = self.b.record.clone() else {
            return Ok(());
        };
        let backfill = BackfillRecord {
            planned: self.b.planned,
            initial: self.b.initial,
            taken: self.b.taken.0,
            requests: self.b.requests.clone(),
            tables: [self.b.state.as_slice(), self.b.others.as_slice()].concat(),
        };
        let client = self.reader().await?.client();
        let mut record = record.lock().await;
        record.backfill = Some(backfill);
        publication::write_record(client, &publications, &record).await
    }
}

/// Adds `id` to `ids` (once), keeping the last `keep`.
fn remember(ids: &mut Vec<String>, id: &str, keep: usize) {
    ids.retain(|i| i != id);
    ids.push(id.to_string());
    if ids.len() > keep {
        ids.drain(..ids.len() - keep);
    }
}

/// Heap pages per chunk of a table without a key: about `rows` rows, from the planner's
/// estimate of rows per page.
fn pages_per_chunk(table: &SnapshotTable, pages: u64, rows: usize) -> u64 {
    match u64::try_from(table.estimate) {
        Ok(estimate) if estimate > 0 && pages > 0 => {
            (rows as u64 * pages / estimate).clamp(1, pages.max(1))
        }
        _ => DEFAULT_PAGES,
    }
}
