//! The Arrow sink: each table's changes as typed Arrow record batches, written as Arrow IPC or
//! Parquet files (`--sink arrow:DIR[?options]`), or handed to an in-process consumer.
//!
//! Why it is shaped this way:
//!
//! * Columns are typed from the relation (Relation message + type registry), not from values,
//!   so every batch of one table version has one schema ([`batch`], README "Arrow type
//!   mapping"). A new Relation with other columns (ALTER TABLE) closes the open batch: the next
//!   file has the new schema.
//! * A batch closes at `rows`, at about `bytes` of values, `seconds` after its first row, at a
//!   schema change and at the end of the run. Until then its rows are only in memory, so the
//!   sink reports the oldest transaction it holds ([`Sink::holding`]) and the pipeline confirms
//!   no position past it: an open batch pins WAL for at most one window.
//! * Files are complete or absent ([`files`]); each carries the table's running tally, so a
//!   restart skips exactly the replayed changes the files already hold (per table: tables
//!   close their batches at different times).

mod batch;
mod convert;
mod files;
mod spec;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_array::RecordBatch;
use crossbeam_channel::{Receiver, Sender};

pub use spec::{ArrowFormat, ArrowOptions, ArrowSpec};

use crate::error::{Error, Result};
use crate::event::{Event, Lsn};
use crate::sink::resume::{Resume, Tally};
use crate::sink::{Batch, Sink};
use batch::{Dims, TableBuilder};

/// Runs every conversion of decoded text to Arrow values on `v` (for the fuzz targets).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn fuzz_convert(v: &crate::event::Value) {
    if let Some(t) = v.as_str() {
        std::hint::black_box((
            convert::date32(t),
            convert::time64(t),
            convert::timestamp_us(t),
            convert::interval(t),
            convert::uuid(t),
            convert::decimal(t, 0),
            convert::decimal(t, 38),
            convert::decimal(t, -5),
        ));
    }
}

/// One closed batch of one table's changes, for in-process consumers
/// ([`ArrowSink::channel`]).
#[derive(Clone, Debug)]
pub struct TableBatch {
    pub schema: Arc<str>,
    pub table: Arc<str>,
    /// The rows: the table's columns, then `_op`, `_lsn`, `_commit_lsn`, `_xid`, `_commit_ts`,
    /// `_unchanged` (and `_old_<col>` with `old=true`).
    pub batch: RecordBatch,
    /// Commit positions of the first and last row.
    pub first_commit_lsn: Lsn,
    pub last_commit_lsn: Lsn,
}

/// Looks up the array dimensions of a table's columns (`pg_attribute.attndims`).
pub type DimsLookup = Box<dyn FnMut(&str, &str) -> Result<HashMap<String, usize>> + Send>;

enum Target {
    Files { dir: PathBuf, format: ArrowFormat },
    Channel(Sender<TableBatch>),
}

/// Builds per-table batches and writes each closed one out.
pub struct ArrowSink {
    target: Target,
    options: ArrowOptions,
    /// Open batches by table directory name (`schema.table`).
    open: HashMap<String, TableBuilder>,
    /// What each table's output holds: the last commit position and how many of its rows.
    tallies: HashMap<String, Tally>,
    /// Per table, the replay to skip after a restart, and how much of it was skipped.
    resume: HashMap<String, (Resume, u64)>,
    held: Option<Tally>,
    dims: Option<DimsLookup>,
    dims_cache: HashMap<String, Dims>,
    /// `write` calls so far (`Sink::held_from`).
    writes: u64,
}

impl ArrowSink {
    /// A sink writing files under `spec.dir` (created if missing). Incomplete files an earlier
    /// run left are removed. With `resume` (a permanent slot), what the files already hold is
    /// read back and skipped when the server replays it.
    pub fn files(spec: &ArrowSpec, resume: bool) -> Result<ArrowSink> {
        std::fs::create_dir_all(&spec.dir).map_err(|source| Error::File {
            path: spec.dir.clone(),
            source,
        })?;
        let tallies = files::scan(&spec.dir, spec.format, resume)?;
        let held = tallies.values().copied().max_by_key(|t| (t.key, t.count));
        let resume = tallies
            .iter()
            .map(|(k, t)| (k.clone(), (Resume::after(*t), 0)))
            .collect();
        Ok(ArrowSink {
            target: Target::Files {
                dir: spec.dir.clone(),
                format: spec.format,
            },
            options: spec.options.clone(),
            open: HashMap::new(),
            writes: 0,
            tallies,
            resume,
            held,
            dims: None,
            dims_cache: HashMap::new(),
        })
    }

    /// A sink handing each closed batch to the returned receiver, in the order batches close.
    /// The channel holds `capacity` batches: a consumer that falls behind slows the stream
    /// down (backpressure), it never grows memory.
    ///
    /// ```no_run
    /// # async fn demo(config: walwatch::config::Config) -> walwatch::Result<()> {
    /// use walwatch::session::{Hooks, run_with};
    /// use walwatch::sink::arrow::{ArrowOptions, ArrowSink};
    ///
    /// let (sink, batches) = ArrowSink::channel(ArrowOptions::default(), 4);
    /// std::thread::spawn(move || {
    ///     for b in batches {
    ///         println!("{}.{}: {} rows", b.schema, b.table, b.batch.num_rows());
    ///     }
    /// });
    /// let hooks = Hooks { sinks: vec![Box::new(sink)], ..Hooks::default() };
    /// run_with(config, hooks, std::future::pending()).await?;
    /// # Ok(()) }
    /// ```
    pub fn channel(options: ArrowOptions, capacity: usize) -> (ArrowSink, Receiver<TableBatch>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let sink = ArrowSink {
            target: Target::Channel(tx),
            options,
            open: HashMap::new(),
            writes: 0,
            tallies: HashMap::new(),
            resume: HashMap::new(),
            held: None,
            dims: None,
            dims_cache: HashMap::new(),
        };
        (sink, rx)
    }

    /// Looks up how many list levels each array column has (`int[][]` is two). Without it,
    /// every array column is one level deep.
    pub fn with_dims_lookup(mut self, lookup: DimsLookup) -> ArrowSink {
        self.dims = Some(lookup);
        self
    }

    fn dims_for(&mut self, key: &str, schema: &str, table: &str) -> Result<Dims> {
        if let Some(d) = self.dims_cache.get(key) {
            return Ok(d.clone());
        }
        let d = match &mut self.dims {
            Some(lookup) => lookup(schema, table)?,
            None => Dims::new(),
        };
        self.dims_cache.insert(key.to_string(), d.clone());
        Ok(d)
    }

    /// Closes the open batch of `key` and writes it out (or hands it over).
    fn close(&mut self, key: &str) -> Result<()> {
        let Some(mut b) = self.open.remove(key) else {
            return Ok(());
        };
        if b.rows == 0 {
            return Ok(());
        }
        let (first, last) = (b.first, b.last);
        let tally = self.tallies.get(key).copied().unwrap_or_default();
        let mut meta = HashMap::new();
        meta.insert(files::RESUME_KEY.to_string(), files::tally_text(tally));
        meta.insert(
            "walwatch.table".to_string(),
            format!("{}.{}", b.reported.0, b.reported.1),
        );
        let batch = b.finish(meta)?;
        match &self.target {
            Target::Files { dir, format } => {
                let path = files::write(dir, key, *format, &batch, first, last)?;
                tracing::debug!(rows = batch.num_rows(), "wrote {}", path.display());
            }
            Target::Channel(tx) => {
                let out = TableBatch {
                    schema: b.reported.0.clone(),
                    table: b.reported.1.clone(),
                    batch,
                    first_commit_lsn: first,
                    last_commit_lsn: last,
                };
                tx.send(out).map_err(|_| Error::Arrow {
                    target: "the in-process batch receiver".to_string(),
                    message: "it was dropped; nothing past the last delivered batch was \
                              confirmed"
                        .to_string(),
                })?;
            }
        }
        Ok(())
    }

    pub(crate) fn close_all(&mut self) -> Result<()> {
        let keys: Vec<String> = self.open.keys().cloned().collect();
        for k in keys {
            self.close(&k)?;
        }
        Ok(())
    }
}

impl ArrowSink {
    /// Adds one event to its table's open batch (closing the batch when it is full).
    pub(crate) fn put(&mut self, ev: &Event) -> Result<()> {
        if !ev.op.is_change() {
            // BEGIN and COMMIT are in every row's _xid/_commit_lsn/_commit_ts; MESSAGE events
            // belong to no table.
            return Ok(());
        }
        let Some(rel) = &ev.relation else {
            return Err(Error::Setup(
                "the Arrow sink needs events decoded from a replication stream: this one has no \
                 column types (events read back from JSON do not)"
                    .to_string(),
            ));
        };
        // One schema per partitioned table: a partition's rows (--partitions leaf) go with
        // the partitioned table they are reported for.
        let (namespace, name) = match &ev.partition_of {
            Some(p) => (p.schema.clone(), p.table.clone()),
            None => (rel.namespace.clone(), rel.name.clone()),
        };
        let key = files::table_dir_name(&namespace, &name);
        if let Some((r, skipped)) = self.resume.get_mut(&key) {
            if !r.admit(ev) {
                *skipped += 1;
                return Ok(());
            }
            if *skipped > 0 {
                tracing::info!(
                    "skipped {skipped} replayed change(s) of {}.{} that its Arrow files already \
                     hold",
                    namespace,
                    name
                );
            }
            self.resume.remove(&key);
        }
        // (The key is the reported table's, so a relation of the same columns under it, another
        // partition (its columns perhaps in another order) or the same table described again,
        // continues the batch.)
        if let Some(b) = self.open.get(&key)
            && !Arc::ptr_eq(&b.relation, rel)
            && !b.relation.same_columns(rel)
            && !(ev.partition_of.is_some() && b.relation.same_column_set(rel))
        {
            // A schema change: the rows so far go out with the old schema.
            self.close(&key)?;
            self.dims_cache.remove(&key);
        }
        if !self.open.contains_key(&key) {
            let dims = self.dims_for(&key, &namespace, &name)?;
            let mut b = TableBuilder::new(rel.clone(), &dims, self.options.old)?;
            b.reported = (namespace, name);
            self.open.insert(key.clone(), b);
        }
        let Some(b) = self.open.get_mut(&key) else {
            return Ok(());
        };
        if b.rows == 0 {
            b.since = self.writes;
        }
        b.push(ev);
        let full = b.rows >= self.options.rows || b.bytes >= self.options.bytes;
        self.tallies.entry(key.clone()).or_default().note(ev);
        if full {
            self.close(&key)?;
        }
        Ok(())
    }

    /// Closes the batches whose time window has passed.
    pub(crate) fn close_due(&mut self) -> Result<()> {
        let window = self.options.window;
        let due: Vec<String> = self
            .open
            .iter()
            .filter(|(_, b)| b.rows > 0 && b.opened.elapsed() >= window)
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.close(&k)?;
        }
        Ok(())
    }

    /// The commit position of the oldest transaction with rows in an open batch: nothing from
    /// it on is durable yet.
    pub(crate) fn holding(&self) -> Option<Lsn> {
        self.open
            .values()
            .filter(|b| b.rows > 0)
            .map(|b| b.first)
            .min()
    }
}

impl Sink for ArrowSink {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        self.writes += 1;
        batch.events.iter().try_for_each(|e| self.put(e))
    }

    /// Closed batches were made durable when they closed; the rows of open ones are not, so
    /// the position acknowledged stops at the oldest transaction an open batch holds rows of.
    /// The server replays every transaction whose commit is at or after the position it
    /// resumes from (logical decoding skips commits before its start point,
    /// `SnapBuildXactNeedsSkip`), so that transaction comes again whole.
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
        self.close_due()?;
        Ok(self.holding().map_or(written, |h| h.min(written)))
    }

    fn held_from(&self) -> Option<u64> {
        self.open
            .values()
            .filter(|b| b.rows > 0)
            .map(|b| b.since)
            .min()
    }

    fn finish(&mut self, written: Lsn) -> Result<Lsn> {
        self.close_all()?;
        Ok(written)
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Files { dir, .. } => dir.display().to_string(),
            Target::Channel(_) => "in-process Arrow batches".to_string(),
        }
    }

    fn durable(&self) -> bool {
        matches!(self.target, Target::Files { .. })
    }

    fn held(&self) -> Option<Tally> {
        self.held
    }
}

#[cfg(test)]
mod tests;
