//! A snapshot's progress on a terminal: per table being read, rows done of the planner's
//! estimate (`pg_class.reltuples`), the rate and the time left, drawn on stderr by indicatif.
//! Nothing is drawn when stderr is not a terminal or with `-q` (`Config::progress`): the log
//! line each table gets when it is done says the same for a file or a pipe.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pg::snapshot::SnapshotTable;

/// Rows per second, whole.
fn rate(state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.0} rows/s", state.per_sec());
}

pub(super) struct SnapshotProgress {
    multi: MultiProgress,
    /// One per table, made at its first chunk (so a hundred small tables are not a hundred
    /// bars at once), gone once it is done.
    bars: Vec<Option<ProgressBar>>,
    estimates: Vec<u64>,
    names: Vec<String>,
}

impl SnapshotProgress {
    pub(super) fn new(shown: bool, tables: &[SnapshotTable]) -> SnapshotProgress {
        let target = if shown {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        SnapshotProgress {
            multi: MultiProgress::with_draw_target(target),
            bars: tables.iter().map(|_| None).collect(),
            // reltuples is -1 for a table never analysed or vacuumed: no estimate.
            estimates: tables
                .iter()
                .map(|t| u64::try_from(t.estimate).unwrap_or(0))
                .collect(),
            names: tables
                .iter()
                .map(|t| format!("{}.{}", t.relation.namespace, t.relation.name))
                .collect(),
        }
    }

    /// A table more, read later (a snapshot request).
    pub(super) fn add(&mut self, table: &SnapshotTable) {
        self.bars.push(None);
        self.estimates
            .push(u64::try_from(table.estimate).unwrap_or(0));
        self.names.push(format!(
            "{}.{}",
            table.relation.namespace, table.relation.name
        ));
    }

    /// `rows` more rows of table `i` were handed on.
    pub(super) fn advance(&mut self, i: usize, rows: u64) {
        let bar = self.bars[i].get_or_insert_with(|| {
            let bar = match self.estimates[i] {
                0 => ProgressBar::no_length().with_style(
                    ProgressStyle::with_template(
                        "{prefix} {spinner} {human_pos} rows, {rate}, {elapsed}",
                    )
                    .expect("a valid template")
                    .with_key("rate", rate),
                ),
                n => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {human_pos}/~{human_len} rows, {rate}, {eta} left",
                    )
                    .expect("a valid template")
                    .with_key("rate", rate)
                    .progress_chars("=> "),
                ),
            };
            self.multi.add(bar.with_prefix(self.names[i].clone()))
        });
        bar.inc(rows);
        // The estimate is the planner's: the table may hold more.
        if bar.length().is_some_and(|len| bar.position() > len) {
            bar.set_length(bar.position());
        }
    }

    /// Table `i` is read: its bar goes, and `log` (its log line) is written without tearing
    /// the bars still drawn.
    pub(super) fn finish(&mut self, i: usize, log: impl FnOnce()) {
        if let Some(bar) = self.bars[i].take() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.multi.suspend(log);
    }
}
