//! The replication side of a snapshot's progress: how far each table is durable in every sink,
//! kept in the slot's record, and, for a snapshot continued after a stop, the reading of the
//! rest between watermarks while the stream runs (the decode side is `windows.rs`).
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

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::progress::SnapshotProgress;
use super::windows::{Note, Watermark};
use super::{Frame, Frames, Progress};
use crate::error::{Error, Result};
use crate::pg::publication::{self, BackfillRecord, Record, TableBackfill};
use crate::pg::snapshot::{ChunkReader, Range, SnapshotTable};

/// The slot's record, shared by everything that writes it (the type loader, the backfill).
pub type SharedRecord = Arc<tokio::sync::Mutex<Record>>;

/// How often, at most, progress is written to the record while a snapshot is read: what a
/// stop makes read again (a record write is a catalog update, so not at every chunk).
const RECORD_EVERY: Duration = Duration::from_millis(250);

/// Pages per chunk of a table without a key whose size is not known.
const DEFAULT_PAGES: u64 = 64;

/// A snapshot's progress to keep, and the tables to read between watermarks if any.
pub struct Backfill {
    pub record: SharedRecord,
    /// The publications whose comment holds the record.
    pub publications: Vec<String>,
    /// Its own connection: the record is written with it, and chunks read.
    pub reader: ChunkReader,
    pub tables: Vec<SnapshotTable>,
    /// How far each of `tables` is (same order).
    pub state: Vec<TableBackfill>,
    /// Read what `state` says is not done, between watermarks (a continued snapshot); else
    /// the slot's exported snapshot is being read by the replication task, and this only
    /// keeps its progress.
    pub read: bool,
    pub chunk: usize,
    /// `--snapshot only`: the run stops once every table is durable.
    pub only: bool,
    pub progress: bool,
    /// The watermarks' prefix, scoped to the slot.
    pub prefix: String,
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

/// The running backfill.
struct Keeper {
    b: Backfill,
    notes: mpsc::UnboundedReceiver<Note>,
    progress: watch::Receiver<Progress>,
    waiting: Vec<Waiting>,
    dirty: bool,
    written: tokio::time::Instant,
    bars: SnapshotProgress,
    /// Writes what became durable when the sinks go quiet.
    tick: tokio::time::Interval,
    /// Rows read again after a discarded chunk, and chunks discarded.
    reread: u64,
    discarded: u64,
}

impl Backfill {
    /// Runs until every table is durable and recorded (or the decode thread stops), reading
    /// with `frames` when it reads. Says so on `verdict` when the run should stop for it.
    pub(super) async fn run(
        self,
        notes: mpsc::UnboundedReceiver<Note>,
        progress: watch::Receiver<Progress>,
        frames: Option<mpsc::WeakSender<Frames>>,
        verdict: oneshot::Sender<Verdict>,
    ) {
        let bars = SnapshotProgress::new(self.progress && self.read, &self.tables);
        let mut k = Keeper {
            b: self,
            notes,
            progress,
            waiting: Vec::new(),
            dirty: false,
            written: tokio::time::Instant::now(),
            bars,
            tick: tokio::time::interval(RECORD_EVERY),
            reread: 0,
            discarded: 0,
        };
        let res = k.work(frames).await;
        // What became durable meanwhile is recorded even when the run stops.
        let kept = k.settle().await;
        let res = match (res, kept) {
            (Ok(done), Ok(())) => Ok(done),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match res {
            Ok(true) => {
                if k.reread > 0 {
                    tracing::info!(
                        "snapshot: {} chunks read again ({} rows) after changes in their window",
                        k.discarded,
                        k.reread
                    );
                }
                if k.b.only {
                    let _ = verdict.send(Verdict::Done);
                }
            }
            Ok(false) => {}
            Err(e) => {
                let _ = verdict.send(Verdict::Failed(e));
            }
        }
    }
}

impl Keeper {
    /// Reads what there is to read, then waits for it all to be durable: `true` once every
    /// table is recorded done.
    async fn work(&mut self, frames: Option<mpsc::WeakSender<Frames>>) -> Result<bool> {
        if self.b.read
            && let Some(frames) = frames
        {
            let mut chunk = 0;
            for i in 0..self.b.tables.len() {
                if !self.b.state[i].done && !self.read_table(i, &frames, &mut chunk).await? {
                    return Ok(false);
                }
            }
        }
        // Every row is handed on (or the exported snapshot is being read): wait until it is
        // durable.
        while !self.complete() {
            if !self.step().await? {
                return Ok(false);
            }
        }
        self.write().await?;
        Ok(true)
    }

    /// Whether every table is recorded done.
    fn complete(&self) -> bool {
        self.b.state.iter().all(|t| t.done)
    }

    /// Reads table `i` chunk after chunk from where it is durable; `false` when the decode
    /// thread stopped.
    async fn read_table(
        &mut self,
        i: usize,
        frames: &mpsc::WeakSender<Frames>,
        chunk: &mut u64,
    ) -> Result<bool> {
        let table = self.b.tables[i].clone();
        let mut after = self.b.state[i].after.clone();
        let limit = self.b.chunk;
        let keyless = table.key.is_empty();
        let (pages, per_chunk) = if keyless {
            let pages = self.b.reader.pages(&table).await?;
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
            let mut rows = self.b.reader.read(i, &table, range, *chunk).await?;
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
            let Some(frames) = frames.upgrade() else {
                return Ok(false);
            };
            if frames.send(frame).await.is_err() {
                return Ok(false);
            }
            drop(frames);
            self.watermark(*chunk, table.relation.oid, true).await?;
            match self.outcome(*chunk).await? {
                None => return Ok(false),
                Some(true) => {
                    if last {
                        return Ok(true);
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

    async fn watermark(&self, chunk: u64, rel: u32, high: bool) -> Result<()> {
        let w = Watermark {
            run: self.b.run.clone(),
            chunk,
            high,
            rel,
        };
        let content = serde_json::to_string(&w).unwrap_or_default();
        self.b.reader.watermark(&self.b.prefix, &content).await
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
            if let Some(verdict) = self.take(note, chunk) {
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
                dropped: _,
                after,
                done,
                seq,
            } => {
                self.bars.advance(table, rows);
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
        }
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
        self.written = tokio::time::Instant::now() - RECORD_EVERY;
        self.durable().await?;
        if self.dirty {
            self.write().await?;
        }
        Ok(())
    }

    /// Writes the state into the record.
    async fn write(&mut self) -> Result<()> {
        let mut record = self.b.record.lock().await;
        record.backfill = Some(BackfillRecord {
            planned: true,
            tables: self.b.state.clone(),
        });
        publication::write_record(self.b.reader.client(), &self.b.publications, &record).await?;
        self.dirty = false;
        self.written = tokio::time::Instant::now();
        Ok(())
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
