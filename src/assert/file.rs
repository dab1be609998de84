//! `walwatch assert` on a recording: a JSONL file that `walwatch record` (another process,
//! maybe another language's harness) keeps appending to.
//!
//! The recording is followed as it grows. `never` and `count` fence through the database: they
//! emit a fence marker, and the recorder writes it into the file when it arrives, after every
//! change committed before it. So a check on the file up to the fence is exact.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::diagnose::{self, Scope};
use super::{Observer, Report, human};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::event_read;
use crate::expr::Expr;
use crate::marker;

/// How often a followed recording is checked for new lines.
const POLL: Duration = Duration::from_millis(20);

/// A recording being followed.
pub struct Recording {
    path: PathBuf,
    reader: BufReader<File>,
    /// A line read before its newline was written.
    partial: String,
    line_no: u64,
}

impl Recording {
    /// Opens a recording; it must exist (the recorder creates it when it starts).
    pub fn open(path: &Path) -> Result<Recording> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::Config(format!(
                    "{}: no such recording: start `walwatch record --output {}` first",
                    path.display(),
                    path.display()
                ))
            } else {
                Error::File {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(Recording {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            partial: String::new(),
            line_no: 0,
        })
    }

    /// The complete lines written since the last call, as events.
    fn read_available(&mut self) -> Result<Vec<Arc<Event>>> {
        let mut out = Vec::new();
        loop {
            let n = self
                .reader
                .read_line(&mut self.partial)
                .map_err(|source| Error::File {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 || !self.partial.ends_with('\n') {
                return Ok(out);
            }
            self.line_no += 1;
            let line = std::mem::take(&mut self.partial);
            if line.trim().is_empty() {
                continue;
            }
            let e = event_read::parse_line(line.trim_end()).map_err(|e| {
                Error::Config(format!("{}:{}: {e}", self.path.display(), self.line_no))
            })?;
            out.push(Arc::new(e));
        }
    }

    /// Feeds events to `f` until it returns true (Ok(true)), or, at the end of what is
    /// written, `deadline` has passed (Ok(false)). With no deadline, stops at the end.
    pub async fn follow(
        &mut self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&Arc<Event>) -> Result<bool>,
    ) -> Result<bool> {
        loop {
            for e in self.read_available()? {
                if f(&e)? {
                    return Ok(true);
                }
            }
            match deadline {
                Some(d) if Instant::now() < d => {
                    tokio::time::sleep(POLL.min(d - Instant::now())).await
                }
                _ => return Ok(false),
            }
        }
    }
}

/// What `walwatch assert` checks and where.
pub struct FileCheck {
    pub input: PathBuf,
    pub pred: Arc<Expr>,
    /// Only events after the latest mark of this name count.
    pub since: Option<String>,
    /// The metadata connection, for fences and diagnostics (`None`: `--no-fence`).
    pub db: Option<tokio_postgres::Client>,
    /// How long a fence may take to appear in the recording.
    pub fence_timeout: Duration,
}

/// The expected count of `walwatch assert count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Equals(u64),
    AtLeast(u64),
    AtMost(u64),
}

impl Expect {
    fn holds(self, n: u64) -> bool {
        match self {
            Expect::Equals(x) => n == x,
            Expect::AtLeast(x) => n >= x,
            Expect::AtMost(x) => n <= x,
        }
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Equals(x) => write!(f, "exactly {x}"),
            Expect::AtLeast(x) => write!(f, "at least {x}"),
            Expect::AtMost(x) => write!(f, "at most {x}"),
        }
    }
}

/// Tracks `--since`: whether the window has begun, restarting at each new mark of the name.
struct Since<'a> {
    name: Option<&'a str>,
    inside: bool,
    seen_mark: bool,
    /// A fence that opens the window instead (`never --during`).
    start_fence: Option<String>,
}

impl<'a> Since<'a> {
    fn new(name: Option<&'a str>) -> Since<'a> {
        Since {
            name,
            inside: name.is_none(),
            seen_mark: false,
            start_fence: None,
        }
    }

    fn after_fence(id: String) -> Since<'a> {
        Since {
            name: None,
            inside: false,
            seen_mark: false,
            start_fence: Some(id),
        }
    }

    /// True when `e` is the mark (or start fence) that (re)starts the window.
    fn restarts(&mut self, e: &Event) -> bool {
        if let Some(id) = &self.start_fence
            && !self.inside
            && marker::fence_id(e) == Some(id.as_str())
        {
            self.inside = true;
            return true;
        }
        if let Some(n) = self.name
            && marker::mark_name(e) == Some(n)
        {
            self.inside = true;
            self.seen_mark = true;
            return true;
        }
        false
    }

    fn window(&self, what: &str) -> String {
        match self.name {
            Some(n) => format!("{what} after the latest mark `{n}`"),
            None => format!("{what} since the recording began"),
        }
    }

    fn check_found(&self, input: &Path) -> Result<()> {
        match self.name {
            Some(n) if !self.seen_mark => Err(Error::Config(format!(
                "there is no mark `{n}` in {}: run `walwatch mark {n}` while the recorder runs",
                input.display()
            ))),
            _ => Ok(()),
        }
    }
}

impl FileCheck {
    fn scope(&self) -> Scope {
        Scope::default()
    }

    async fn diagnose_into(&self, report: &mut Report) {
        if let Some(db) = &self.db {
            report.diagnostics = diagnose::diagnose(db, &*self.pred, &self.scope()).await;
        }
    }

    async fn emit_fence(&self) -> Result<Option<String>> {
        match &self.db {
            Some(db) => {
                let id = marker::new_fence_id();
                marker::emit(db, marker::FENCE_PREFIX, &id).await?;
                Ok(Some(id))
            }
            None => Ok(None),
        }
    }

    fn fence_missing(&self) -> Error {
        Error::FenceTimeout(format!(
            "the fence did not appear in {} within {}: is `walwatch record` running on this \
             database and writing to that file, and is it keeping up?",
            self.input.display(),
            human(self.fence_timeout)
        ))
    }

    /// Emits a fence and reads the recording up to it, observing the events inside the window.
    /// Returns whether there was a fence (`--no-fence`: read to the end as it is).
    async fn observe_to_fence<'p>(
        &self,
        rec: &mut Recording,
        since: &mut Since<'_>,
        obs: &mut Observer<'p>,
        pred: &'p dyn super::Predicate,
    ) -> Result<bool> {
        let fence = self.emit_fence().await?;
        let deadline = fence.as_ref().map(|_| Instant::now() + self.fence_timeout);
        let reached = rec
            .follow(deadline, |e| {
                if let Some(id) = &fence
                    && marker::fence_id(e) == Some(id.as_str())
                {
                    return Ok(true);
                }
                if since.restarts(e) {
                    *obs = Observer::new(pred);
                } else if since.inside {
                    obs.observe(e)?;
                }
                Ok(false)
            })
            .await?;
        if fence.is_some() && !reached {
            return Err(self.fence_missing());
        }
        Ok(fence.is_some())
    }

    /// Passes on the first matching event (after `--since`); fails at `within`.
    pub async fn eventually(&self, within: Duration) -> Result<Report> {
        let mut rec = Recording::open(&self.input)?;
        let deadline = Instant::now() + within;
        let pred: &dyn super::Predicate = &*self.pred;
        let mut obs = Observer::new(pred);
        let mut since = Since::new(self.since.as_deref());
        let found = rec
            .follow(Some(deadline), |e| {
                if since.restarts(e) {
                    obs = Observer::new(pred);
                    return Ok(false);
                }
                Ok(since.inside && obs.observe(e)?)
            })
            .await?;
        let window = since.window(&format!("within {}", human(within)));
        if found {
            return Ok(obs.report(
                "eventually",
                true,
                window,
                "a matching event arrived".into(),
            ));
        }
        let mut report = obs.report(
            "eventually",
            false,
            window,
            format!("no matching event arrived within {}", human(within)),
        );
        self.diagnose_into(&mut report).await;
        Ok(report)
    }

    /// Fails if a matching change is in the window: after `--since` (or, with `during`, from
    /// a start fence on for that long) up to an end fence.
    pub async fn never(&self, during: Option<Duration>) -> Result<Report> {
        let mut rec = Recording::open(&self.input)?;
        let pred: &dyn super::Predicate = &*self.pred;
        let mut obs = Observer::new(pred);
        let mut since = Since::new(self.since.as_deref());
        let mut window = since.window("changes");
        if let Some(during) = during {
            let start = self.emit_fence().await?.ok_or_else(|| {
                Error::Config("--during needs the database to fence: drop --no-fence".into())
            })?;
            window = format!(
                "changes committed during {} (fenced at both ends)",
                human(during)
            );
            since = Since::after_fence(start);
            let violated = rec
                .follow(Some(Instant::now() + during), |e| {
                    if since.restarts(e) {
                        return Ok(false);
                    }
                    Ok(since.inside && obs.observe(e)?)
                })
                .await?;
            if violated {
                return Ok(obs.report(
                    "never",
                    false,
                    window,
                    "a matching change was committed inside the window".into(),
                ));
            }
        }
        let fenced = self
            .observe_to_fence(&mut rec, &mut since, &mut obs, pred)
            .await?;
        if during.is_none() {
            since.check_found(&self.input)?;
        }
        let n = obs.matched();
        let fenced = if fenced {
            " up to a fence"
        } else {
            " (not fenced)"
        };
        let window = format!("{window}{fenced}");
        Ok(if n == 0 {
            obs.report("never", true, window, "no matching change".into())
        } else {
            obs.report(
                "never",
                false,
                window,
                format!("{n} matching change(s) were committed inside the window"),
            )
        })
    }

    /// Counts matching events after `--since`, up to an end fence.
    pub async fn count(&self, expect: Expect) -> Result<Report> {
        let mut rec = Recording::open(&self.input)?;
        let pred: &dyn super::Predicate = &*self.pred;
        let mut obs = Observer::new(pred);
        let mut since = Since::new(self.since.as_deref());
        self.observe_to_fence(&mut rec, &mut since, &mut obs, pred)
            .await?;
        since.check_found(&self.input)?;
        let n = obs.matched();
        let passed = expect.holds(n);
        let window = since.window("events");
        let mut report = obs.report(
            "count",
            passed,
            window,
            format!("counted {n} matching event(s), expected {expect}"),
        );
        if !passed && n < expect_floor(expect) {
            self.diagnose_into(&mut report).await;
        }
        Ok(report)
    }

    /// How many marks named `name` the recording holds now.
    pub async fn count_marks(input: &Path, name: &str) -> Result<u64> {
        let mut rec = Recording::open(input)?;
        let mut n = 0;
        rec.follow(None, |e| {
            n += u64::from(marker::mark_name(e) == Some(name));
            Ok(false)
        })
        .await?;
        Ok(n)
    }

    /// Waits until the recording holds more than `before` marks named `name` (for
    /// `walwatch mark --input`).
    pub async fn await_mark(
        input: &Path,
        name: &str,
        before: u64,
        within: Duration,
    ) -> Result<bool> {
        let mut rec = Recording::open(input)?;
        let deadline = Instant::now() + within;
        let mut n = 0;
        rec.follow(Some(deadline), |e| {
            n += u64::from(marker::mark_name(e) == Some(name));
            Ok(n > before)
        })
        .await
    }
}

fn expect_floor(e: Expect) -> u64 {
    match e {
        Expect::Equals(x) | Expect::AtLeast(x) => x,
        Expect::AtMost(_) => 0,
    }
}
