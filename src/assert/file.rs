//! `walwatch assert` on files other processes keep appending to: WAL recordings that
//! `walwatch record` writes, and the events files of `walwatch proxy --events`.
//!
//! Files are followed as they grow. `never` and `count` are exact up to the end of their
//! window, and each kind of file is fenced its own way:
//! - **A WAL recording**: they emit a fence marker through the database, and the recorder
//!   writes it into the file when it arrives, after every change committed before it. The
//!   window ends at the fence.
//! - **A proxy events file**: the proxy writes (and fsyncs) an action's event *before* it acts
//!   on the statement (`crate::proxy::events`). So every action taken before the window
//!   closes is in the file when it closes: the window ends at the file's length then, and a
//!   `--during` window starts at its length when it opens. No database is needed.
//!
//! `--since NAME` starts a file's window after its latest mark of that name: a mark through
//! the database in a recording, a mark the proxy recorded (`walwatch mark NAME --proxy ADDR`)
//! in an events file. `eventually` looks only after the call unless told otherwise
//! ([`Since`]): a recorder is shared by the tests of a run, and an earlier test's row must not
//! make a later assertion pass.
//!
//! A recording made by `walwatch record` starts with a line saying who records it
//! ([`marker::RecorderInfo`]): its slot, which is the scope of the fences and marks addressed
//! to it (other recorders on the database never see them), its envelope, which the predicate
//! is compiled for, and its process. While waiting, the assertion checks every
//! [`LIVENESS_CHECK`] that the recorder's slot is still being streamed, so an assertion on a
//! recording whose recorder is gone fails at once instead of at the fence timeout.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::time::Instant;

use super::diagnose::{self, Scope};
use super::{Observer, Report, human};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::event_read::{self, Envelope};
use crate::expr::Expr;
use crate::marker;

/// How often a followed recording is checked for new lines.
const POLL: Duration = Duration::from_millis(20);
/// How often an assertion that waits checks that the recorders of its recordings still run.
pub const LIVENESS_CHECK: Duration = Duration::from_millis(250);

/// Where an assertion's window opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    /// When the assertion is called: a fence in each recording, each proxy events file's
    /// length. `eventually`'s default.
    Call,
    /// The beginning of each file (`--since start`; `never` and `count` without `--since`).
    Start,
    /// After the latest mark of this name (`--since NAME`).
    Mark(String),
}

impl Since {
    /// The name `--since` reserves for the beginning of the files.
    pub const START: &'static str = "start";

    /// `--since VALUE`, or `default` without one.
    pub fn from_arg(arg: Option<&str>, default: Since) -> Since {
        match arg {
            None => default,
            Some(Since::START) => Since::Start,
            Some(name) => Since::Mark(name.to_string()),
        }
    }
}

/// A recording being followed.
pub struct Recording {
    path: PathBuf,
    reader: BufReader<File>,
    /// A line read before its newline was written.
    partial: String,
    /// Where `partial` starts in the file.
    partial_at: u64,
    line_no: u64,
    /// Bytes read so far.
    consumed: u64,
}

/// A complete line of a followed file, as an event.
struct Line {
    /// Its number, from 1.
    no: u64,
    /// Where it starts in the file.
    offset: u64,
    event: Arc<Event>,
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
            partial_at: 0,
            line_no: 0,
            consumed: 0,
        })
    }

    /// The complete lines written since the last call, as events.
    fn read_available(&mut self) -> Result<Vec<Line>> {
        let mut out = Vec::new();
        loop {
            if self.partial.is_empty() {
                self.partial_at = self.consumed;
            }
            let n = self
                .reader
                .read_line(&mut self.partial)
                .map_err(|source| Error::File {
                    path: self.path.clone(),
                    source,
                })?;
            self.consumed += n as u64;
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
            out.push(Line {
                no: self.line_no,
                offset: self.partial_at,
                event: Arc::new(e),
            });
        }
    }

    /// The events of the complete lines written since the last call.
    pub fn read_events(&mut self) -> Result<Vec<Arc<Event>>> {
        Ok(self
            .read_available()?
            .into_iter()
            .map(|l| l.event)
            .collect())
    }

    /// Feeds events to `f` until it returns true (Ok(true)), or, at the end of what is
    /// written, `deadline` has passed (Ok(false)). With no deadline, stops at the end.
    pub async fn follow(
        &mut self,
        deadline: Option<Instant>,
        mut f: impl FnMut(&Arc<Event>) -> Result<bool>,
    ) -> Result<bool> {
        loop {
            for line in self.read_available()? {
                if f(&line.event)? {
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

/// What kind of file an input is: it decides how the window is fenced (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Written by `walwatch record` (`--input`).
    Recording,
    /// Written by `walwatch proxy --events` (`--proxy-events`).
    ProxyEvents,
}

/// One file an assertion reads.
#[derive(Clone, Debug)]
pub struct Input {
    pub path: PathBuf,
    pub kind: Kind,
}

/// What `walwatch assert` checks and where.
pub struct FileCheck {
    pub inputs: Vec<Input>,
    /// Compiled for the recordings' envelope ([`FileCheck::prepare`]).
    pub pred: Arc<Expr>,
    /// Where the window opens (`never --during` opens its own).
    pub since: Since,
    /// The metadata connection, for fences, diagnostics and the recorders' liveness (`None`:
    /// `--no-fence`, or no recording to fence).
    pub db: Option<tokio_postgres::Client>,
    /// How long a fence may take to appear in the recording.
    pub fence_timeout: Duration,
    /// Who records each recording that says so (its first line).
    pub recorders: Vec<(PathBuf, marker::RecorderInfo)>,
}

/// What the head of a recording says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The recorder line, when `walwatch record` wrote one.
    pub recorder: Option<marker::RecorderInfo>,
    /// The envelope its lines are in, when a line shows it.
    pub envelope: Option<Envelope>,
}

/// How many lines [`sniff`] reads at most looking for the first event that shows the envelope.
const SNIFF_LINES: usize = 64;

/// Reads the head of a recording: the recorder line and the envelope of its lines.
pub fn sniff(path: &Path) -> Result<Head> {
    let rec = Recording::open(path)?;
    let mut head = Head::default();
    for line in rec.reader.lines().take(SNIFF_LINES) {
        let line = line.map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })?;
        let Ok(Json::Object(o)) = serde_json::from_str::<Json>(&line) else {
            continue;
        };
        if o.get("type").and_then(Json::as_str) != Some("wal") {
            continue;
        }
        let nested = !o.contains_key("op");
        if let Ok(e) = event_read::parse_line(&line)
            && let Some(info) = marker::RecorderInfo::of(&e)
        {
            head.envelope = Some(info.envelope());
            head.recorder = Some(info);
            return Ok(head);
        }
        head.envelope = Some(if nested {
            Envelope::Nested
        } else {
            Envelope::Native
        });
        return Ok(head);
    }
    Ok(head)
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

/// Where a file's window starts.
enum Start {
    Beginning,
    /// After each mark of this name, the latest so far (`eventually --since`).
    AfterMarks(String),
    /// After this line (the latest mark of `--since`, found by a first pass).
    AfterLine(u64),
    /// After this fence (`never --during`, a recording).
    AfterFence(String),
    /// At this byte (`never --during`, a proxy events file: its length when the window opened).
    AtOffset(u64),
}

/// Where a file's window ends.
#[derive(Clone)]
enum End {
    /// Not yet known: read what there is (to a deadline, or as it is with `--no-fence`).
    Open,
    /// At this fence (a recording).
    Fence(String),
    /// Before this byte (a proxy events file: its length when the window closed).
    Offset(u64),
}

/// One input being read through its window.
struct Source<'i> {
    input: &'i Input,
    rec: Recording,
    start: Start,
    end: End,
    inside: bool,
    ended: bool,
    /// The mark the window starts after (`--since NAME`), once found.
    mark_at: Option<MarkAt>,
}

/// Where a mark is in a file, for reports.
#[derive(Clone, Debug)]
struct MarkAt {
    line: u64,
    /// Its WAL position (a recording) or sequence number (a proxy events file).
    at: String,
}

impl MarkAt {
    fn of(line: &Line) -> MarkAt {
        MarkAt {
            line: line.no,
            at: match line.event.proxy() {
                Some(p) => format!("seq {}", p.seq),
                None => line.event.lsn.to_string(),
            },
        }
    }
}

/// How [`drive`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum Driven {
    /// The callback said to.
    Stopped,
    /// Every source reached its end.
    Ended,
    /// The deadline passed (or, without one, the files were read as they are).
    OutOfTime,
}

impl<'i> Source<'i> {
    fn open(input: &'i Input) -> Result<Source<'i>> {
        let rec = match (Recording::open(&input.path), input.kind) {
            (Err(Error::Config(_)), Kind::ProxyEvents) => {
                return Err(Error::Config(format!(
                    "{}: no such proxy events file: start `walwatch proxy --events {}` first",
                    input.path.display(),
                    input.path.display()
                )));
            }
            (rec, _) => rec?,
        };
        Ok(Source {
            input,
            rec,
            start: Start::Beginning,
            end: End::Open,
            inside: false,
            ended: false,
            mark_at: None,
        })
    }

    /// Feeds the window's lines written so far to `f`; true when `f` said to stop.
    fn step(&mut self, f: &mut impl FnMut(&Line) -> Result<bool>) -> Result<bool> {
        for line in self.rec.read_available()? {
            if self.at_end(&line) {
                self.ended = true;
                return Ok(false);
            }
            if self.starts(&line) {
                continue;
            }
            if self.inside && f(&line)? {
                return Ok(true);
            }
        }
        if let End::Offset(n) = self.end
            && self.rec.consumed >= n
        {
            self.ended = true;
        }
        Ok(false)
    }

    fn at_end(&self, line: &Line) -> bool {
        match &self.end {
            End::Open => false,
            End::Fence(id) => marker::fence_id(&line.event) == Some(id.as_str()),
            End::Offset(n) => line.offset >= *n,
        }
    }

    /// Updates `inside` for `line`; true when the line is the one that opens the window.
    fn starts(&mut self, line: &Line) -> bool {
        match &self.start {
            Start::Beginning => self.inside = true,
            Start::AfterLine(n) => self.inside = line.no > *n,
            Start::AtOffset(n) => self.inside = line.offset >= *n,
            Start::AfterMarks(name) => {
                if marker::mark_name(&line.event) == Some(name.as_str()) {
                    self.inside = true;
                    self.mark_at = Some(MarkAt::of(line));
                    return true;
                }
            }
            Start::AfterFence(id) => {
                if !self.inside && marker::fence_id(&line.event) == Some(id.as_str()) {
                    self.inside = true;
                    return true;
                }
            }
        }
        false
    }

    fn name(&self) -> String {
        self.input.path.display().to_string()
    }
}

/// Steps every source not yet ended until `f` says to stop, all have ended, or `deadline`
/// passes (without one: after one pass over what is written). With `alive`, checks every
/// [`LIVENESS_CHECK`] that its recorders still run, and fails when one is gone.
async fn drive(
    sources: &mut [Source<'_>],
    deadline: Option<Instant>,
    alive: Option<&FileCheck>,
    mut f: impl FnMut(&Line) -> Result<bool>,
) -> Result<Driven> {
    let mut next_check = Instant::now() + LIVENESS_CHECK;
    loop {
        for s in sources.iter_mut().filter(|s| !s.ended) {
            if s.step(&mut f)? {
                return Ok(Driven::Stopped);
            }
        }
        if sources.iter().all(|s| s.ended) {
            return Ok(Driven::Ended);
        }
        match deadline {
            Some(d) if Instant::now() < d => {
                if let Some(check) = alive
                    && Instant::now() >= next_check
                {
                    check.check_recorders().await?;
                    next_check = Instant::now() + LIVENESS_CHECK;
                }
                tokio::time::sleep(POLL.min(d - Instant::now())).await
            }
            _ => return Ok(Driven::OutOfTime),
        }
    }
}

/// The byte length of a file now.
fn length(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| Error::File {
            path: path.to_path_buf(),
            source,
        })
}

impl FileCheck {
    /// Reads the head of each recording (who records it, its envelope) and compiles `where_`
    /// for that envelope. Whether the recorders still run is checked before each fence and
    /// while waiting, not here: a finished recording may still hold what `eventually` looks
    /// for.
    pub async fn prepare(
        inputs: Vec<Input>,
        where_: &str,
        since: Since,
        db: Option<tokio_postgres::Client>,
        fence_timeout: Duration,
    ) -> Result<FileCheck> {
        let mut recorders = Vec::new();
        let mut envelopes: Vec<(PathBuf, Envelope)> = Vec::new();
        for input in inputs.iter().filter(|i| i.kind == Kind::Recording) {
            let head = sniff(&input.path)?;
            if let Some(envelope) = head.envelope {
                envelopes.push((input.path.clone(), envelope));
            }
            if let Some(info) = head.recorder {
                recorders.push((input.path.clone(), info));
            }
        }
        let envelope = match envelopes.as_slice() {
            [] => Envelope::Native,
            [(_, first), rest @ ..] => match rest.iter().find(|(_, e)| e != first) {
                None => *first,
                Some((path, other)) => {
                    return Err(Error::Config(format!(
                        "{} is in the {} envelope and {} in the {} one: one --where cannot \
                         read both; assert on each recording separately",
                        envelopes[0].0.display(),
                        first.name(),
                        path.display(),
                        other.name()
                    )));
                }
            },
        };
        let pred = crate::config::compile_expr_in("--where", where_, envelope)?;
        Ok(FileCheck {
            inputs,
            pred,
            since,
            db,
            fence_timeout,
            recorders,
        })
    }

    fn scope(&self) -> Scope {
        Scope::default()
    }

    async fn diagnose_into(&self, report: &mut Report) {
        if let Some(db) = &self.db {
            report.diagnostics = diagnose::diagnose(db, &*self.pred, &self.scope()).await;
        }
    }

    fn has_recordings(&self) -> bool {
        self.inputs.iter().any(|i| i.kind == Kind::Recording)
    }

    fn open_all(&self) -> Result<Vec<Source<'_>>> {
        self.inputs.iter().map(Source::open).collect()
    }

    /// Fails naming the recorder when one of the recordings' recorders is gone: its process
    /// ended (on this machine) or its slot is no longer streamed (through the database).
    /// Without a database (`--no-fence`) the recording is read as it is, ended or not.
    pub async fn check_recorders(&self) -> Result<()> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        for (path, info) in &self.recorders {
            if let Some(why) = recorder_gone(db, info).await? {
                return Err(gone_error(path, info, &why));
            }
        }
        Ok(())
    }

    /// The scopes a fence must be addressed to so that each recording gets it: each recorder's
    /// slot, or everyone for a recording that does not say who records it.
    fn fence_scopes(&self) -> Vec<Option<String>> {
        let mut scopes: Vec<Option<String>> = Vec::new();
        for input in self.inputs.iter().filter(|i| i.kind == Kind::Recording) {
            let scope = self
                .recorders
                .iter()
                .find(|(p, _)| *p == input.path)
                .map(|(_, info)| info.slot.clone());
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        scopes
    }

    /// Emits a fence when there is a recording to fence and a database to fence through,
    /// once the recorders that would write it are known to run.
    async fn emit_fence(&self) -> Result<Option<String>> {
        match &self.db {
            Some(db) if self.has_recordings() => {
                self.check_recorders().await?;
                let id = marker::new_fence_id();
                marker::emit_scoped(db, marker::FENCE_PREFIX, &self.fence_scopes(), &id).await?;
                Ok(Some(id))
            }
            _ => Ok(None),
        }
    }

    /// Closes every source's window now: a recording's at a fence (when there is a database),
    /// a proxy events file's at its length. Returns whether the recordings were fenced.
    async fn close_windows(&self, sources: &mut [Source<'_>]) -> Result<bool> {
        for s in sources.iter_mut() {
            if s.input.kind == Kind::ProxyEvents {
                s.end = End::Offset(length(&s.input.path)?);
            }
        }
        let fence = self.emit_fence().await?;
        for s in sources.iter_mut() {
            if let (Kind::Recording, Some(id)) = (s.input.kind, &fence) {
                s.end = End::Fence(id.clone());
            }
        }
        Ok(fence.is_some())
    }

    /// Opens every source's window now: after a fence in each recording, at each proxy events
    /// file's length. Errors when a recording cannot be fenced (no database).
    async fn open_windows_now(&self, sources: &mut [Source<'_>], option: &str) -> Result<()> {
        for s in sources.iter_mut() {
            if s.input.kind == Kind::ProxyEvents {
                s.start = Start::AtOffset(length(&s.input.path)?);
            }
        }
        if !self.has_recordings() {
            return Ok(());
        }
        let start = self.emit_fence().await?.ok_or_else(|| {
            Error::Config(format!(
                "{option} needs the database to fence a recording: drop --no-fence{}",
                if option == "eventually" {
                    " (after the call), or pass --since start or --since MARK to look back \
                     into a recording that has ended"
                } else {
                    ""
                }
            ))
        })?;
        for s in sources.iter_mut() {
            if s.input.kind == Kind::Recording {
                s.start = Start::AfterFence(start.clone());
            }
        }
        Ok(())
    }

    fn fence_missing(&self, sources: &[Source<'_>]) -> Error {
        let late: Vec<String> = sources
            .iter()
            .filter(|s| !s.ended)
            .map(Source::name)
            .collect();
        Error::FenceTimeout(format!(
            "the fence did not appear in {} within {}: is `walwatch record` running on this \
             database and writing to that file, and is it keeping up?",
            late.join(", "),
            human(self.fence_timeout)
        ))
    }

    /// Reads every source to the end of its window, feeding `f`. Errors when a fence does not
    /// arrive in time, or a recorder is gone.
    async fn read_to_end(
        &self,
        sources: &mut [Source<'_>],
        fenced: bool,
        f: impl FnMut(&Line) -> Result<bool>,
    ) -> Result<Driven> {
        let deadline = fenced.then(|| Instant::now() + self.fence_timeout);
        let driven = drive(sources, deadline, Some(self), f).await?;
        if fenced && driven == Driven::OutOfTime {
            return Err(self.fence_missing(sources));
        }
        Ok(driven)
    }

    /// Closes the windows and, for [`Since::Mark`], starts each source after its latest mark
    /// of the name (a first pass up to the window's end). Returns whether the recordings were
    /// fenced.
    async fn window_since_mark(&self, sources: &mut [Source<'_>]) -> Result<bool> {
        let fenced = self.close_windows(sources).await?;
        let Since::Mark(name) = &self.since else {
            return Ok(fenced);
        };
        let mut first = self.open_all()?;
        for (a, b) in first.iter_mut().zip(sources.iter()) {
            a.end = b.end.clone();
        }
        for (i, s) in first.iter_mut().enumerate() {
            let mut latest = None;
            self.read_to_end(std::slice::from_mut(s), fenced, |line| {
                if marker::mark_name(&line.event) == Some(name) {
                    latest = Some(MarkAt::of(line));
                }
                Ok(false)
            })
            .await?;
            let Some(at) = latest else {
                return Err(no_mark(s.input, name));
            };
            sources[i].start = Start::AfterLine(at.line);
            sources[i].mark_at = Some(at);
        }
        Ok(fenced)
    }

    /// The window's text for reports: `events after the latest mark `m` (0/16B3748 at line
    /// 12 of run.jsonl)`.
    fn window(&self, what: &str, sources: &[Source<'_>]) -> String {
        match &self.since {
            Since::Mark(n) => {
                let at: Vec<String> = sources
                    .iter()
                    .filter_map(|s| {
                        s.mark_at
                            .as_ref()
                            .map(|m| format!("{} at line {} of {}", m.at, m.line, s.name()))
                    })
                    .collect();
                let at = if at.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", at.join(", "))
                };
                format!("{what} after the latest mark `{n}`{at}")
            }
            Since::Start => format!("{what} since the recording began"),
            Since::Call => format!("{what} after the call"),
        }
    }

    /// Passes on the first matching event in the window ([`Since`]; after the call by
    /// default); fails at `within`.
    pub async fn eventually(&self, within: Duration) -> Result<Report> {
        let mut sources = self.open_all()?;
        match &self.since {
            Since::Mark(name) => {
                for s in &mut sources {
                    s.start = Start::AfterMarks(name.clone());
                }
            }
            Since::Call => {
                self.open_windows_now(&mut sources, "eventually").await?;
                // A harness running this in the background waits for this line before it acts.
                tracing::info!("eventually: the window is open for {}", human(within));
            }
            Since::Start => {}
        }
        let deadline = Instant::now() + within;
        let pred: &dyn super::Predicate = &*self.pred;
        let mut obs = Observer::new(pred);
        let driven = drive(&mut sources, Some(deadline), Some(self), |line| {
            Ok(obs.observe(&line.event)?)
        })
        .await?;
        let window = self.window(&format!("within {}", human(within)), &sources);
        if driven == Driven::Stopped {
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
        if let Since::Mark(name) = &self.since
            && let Some(s) = sources.iter().find(|s| s.mark_at.is_none())
        {
            report.diagnostics.push(no_mark(s.input, name).to_string());
        }
        self.diagnose_into(&mut report).await;
        Ok(report)
    }

    /// Fails if a matching event is in the window: after `--since` (or, with `during`, from
    /// now on for that long) up to the window's close (module docs).
    pub async fn never(&self, during: Option<Duration>) -> Result<Report> {
        let pred: &dyn super::Predicate = &*self.pred;
        let mut obs = Observer::new(pred);
        let mut sources = self.open_all()?;
        let (window, fenced) = match during {
            Some(during) => {
                let window = format!("events during {} (fenced at both ends)", human(during));
                if self.watch_during(&mut sources, &mut obs, during).await? {
                    return Ok(obs.report(
                        "never",
                        false,
                        window,
                        "a matching event was in the window".into(),
                    ));
                }
                (window, self.close_windows(&mut sources).await?)
            }
            None => {
                let fenced = self.window_since_mark(&mut sources).await?;
                (self.window("events", &sources), fenced)
            }
        };
        self.read_to_end(&mut sources, fenced, |line| {
            obs.observe(&line.event)?;
            Ok(false)
        })
        .await?;
        let n = obs.matched();
        let closed = match (fenced, self.has_recordings()) {
            (true, _) | (false, false) => " up to the window's close",
            (false, true) => " (not fenced)",
        };
        let window = format!("{window}{closed}");
        Ok(if n == 0 {
            obs.report("never", true, window, "no matching event".into())
        } else {
            obs.report(
                "never",
                false,
                window,
                format!("{n} matching event(s) were in the window"),
            )
        })
    }

    /// `never --during`: opens the window now (a fence in each recording, the length of each
    /// proxy events file) and watches it for `during`; true at the first matching event.
    async fn watch_during(
        &self,
        sources: &mut [Source<'_>],
        obs: &mut Observer<'_>,
        during: Duration,
    ) -> Result<bool> {
        self.open_windows_now(sources, "--during").await?;
        // A harness running this in the background waits for this line before it acts.
        tracing::info!("never: the window is open for {}", human(during));
        let driven = drive(sources, Some(Instant::now() + during), Some(self), |line| {
            Ok(obs.observe(&line.event)?)
        })
        .await?;
        Ok(driven == Driven::Stopped)
    }

    /// Counts matching events after `--since`, up to the window's close.
    pub async fn count(&self, expect: Expect) -> Result<Report> {
        let pred: &dyn super::Predicate = &*self.pred;
        let mut obs = Observer::new(pred);
        let mut sources = self.open_all()?;
        let fenced = self.window_since_mark(&mut sources).await?;
        self.read_to_end(&mut sources, fenced, |line| {
            obs.observe(&line.event)?;
            Ok(false)
        })
        .await?;
        let n = obs.matched();
        let passed = expect.holds(n);
        let window = self.window("events", &sources);
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
    /// `walwatch mark --input`). With `alive`, fails as soon as that recorder is gone.
    pub async fn await_mark(
        input: &Path,
        name: &str,
        before: u64,
        within: Duration,
        alive: Option<(&tokio_postgres::Client, &marker::RecorderInfo)>,
    ) -> Result<bool> {
        let mut rec = Recording::open(input)?;
        let deadline = Instant::now() + within;
        let mut n = 0;
        loop {
            let step = deadline.min(Instant::now() + LIVENESS_CHECK);
            let found = rec
                .follow(Some(step), |e| {
                    n += u64::from(marker::mark_name(e) == Some(name));
                    Ok(n > before)
                })
                .await?;
            if found || Instant::now() >= deadline {
                return Ok(found);
            }
            if let Some((db, info)) = alive
                && let Some(why) = recorder_gone(db, info).await?
            {
                return Err(gone_error(input, info, &why));
            }
        }
    }
}

/// Why the recorder `info` is gone (its process exited, on this machine; its slot is not
/// streamed), or `None` while it runs.
pub async fn recorder_gone(
    db: &tokio_postgres::Client,
    info: &marker::RecorderInfo,
) -> Result<Option<String>> {
    if info.is_on_this_machine() && !crate::scratch::process_alive(info.pid) {
        return Ok(Some(format!("its process {} has exited", info.pid)));
    }
    slot_not_streamed(db, &info.slot).await
}

/// The error of an assertion or a mark on `path`, whose recorder `info` is gone (`why`).
pub fn gone_error(path: &Path, info: &marker::RecorderInfo, why: &str) -> Error {
    Error::Setup(format!(
        "{}: the recorder is gone: {} stopped ({why}), so nothing more will be written to the \
         recording; start `walwatch record` again",
        path.display(),
        info.describe()
    ))
}

/// Why the slot `slot` is not being streamed, or `None` when it is. A recorder's slot is
/// temporary: it exists exactly as long as the recorder's replication connection, and is
/// active all that time (PostgreSQL docs, 54.4 "Replication Slots"; pg_replication_slots).
async fn slot_not_streamed(db: &tokio_postgres::Client, slot: &str) -> Result<Option<String>> {
    let row = db
        .query_opt(
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(match row {
        None => Some(format!("its slot {slot} no longer exists")),
        Some(row) => {
            let active: bool = crate::pg::catalog::column(&row, "slot_not_streamed", 0)?;
            (!active).then(|| format!("its slot {slot} is not being streamed"))
        }
    })
}

/// The error of a `--since NAME` whose mark is not in `input`.
fn no_mark(input: &Input, name: &str) -> Error {
    let how = match input.kind {
        Kind::Recording => format!("run `walwatch mark {name}` while the recorder runs"),
        Kind::ProxyEvents => format!(
            "run `walwatch mark {name} --proxy CONTROL-ADDR` (the proxy's --control address) so \
             the proxy records it"
        ),
    };
    Error::Config(format!(
        "there is no mark `{name}` in {}: {how}",
        input.path.display()
    ))
}

fn expect_floor(e: Expect) -> u64 {
    match e {
        Expect::Equals(x) | Expect::AtLeast(x) => x,
        Expect::AtMost(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const PROXY_LINE: &str = r#"{"type":"proxy","seq":1,"ts":"2026-12-02T10:00:00.000000Z","data":{"action":"error","query":"INSERT 1","message":"m"}}"#;

    /// Lines are numbered and placed by where they start, a line cut in the middle of its
    /// write is read once it is whole.
    #[test]
    fn lines_carry_their_number_and_offset_across_partial_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let mut f = File::create(&path).unwrap();
        writeln!(f, "{PROXY_LINE}").unwrap();
        let (head, tail) = PROXY_LINE.split_at(20);
        write!(f, "{head}").unwrap();
        let mut rec = Recording::open(&path).unwrap();
        let first = rec.read_available().unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].no, first[0].offset), (1, 0));
        assert!(
            rec.read_available().unwrap().is_empty(),
            "half a line is not an event"
        );
        writeln!(f, "{tail}").unwrap();
        let second = rec.read_available().unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].no, 2);
        assert_eq!(second[0].offset, PROXY_LINE.len() as u64 + 1);
        assert_eq!(rec.consumed, 2 * (PROXY_LINE.len() as u64 + 1));
    }

    /// An events file's window ends before the byte it had at the close: later lines are out.
    #[tokio::test]
    async fn an_events_files_window_ends_at_its_length_at_the_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        let mut f = File::create(&path).unwrap();
        writeln!(f, "{PROXY_LINE}").unwrap();
        let input = Input {
            path: path.clone(),
            kind: Kind::ProxyEvents,
        };
        let mut source = Source::open(&input).unwrap();
        source.end = End::Offset(length(&path).unwrap());
        writeln!(f, "{PROXY_LINE}").unwrap();
        let mut seen = 0;
        let driven = drive(std::slice::from_mut(&mut source), None, None, |_| {
            seen += 1;
            Ok(false)
        })
        .await
        .unwrap();
        assert_eq!(driven, Driven::Ended);
        assert_eq!(seen, 1, "the line written after the close is outside");
    }
}
