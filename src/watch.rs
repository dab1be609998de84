//! The library face for test harnesses: start a watch, act, then assert on what reached the
//! WAL.
//!
//! ```no_run
//! # async fn demo(dsn: &str) -> walwatch::Result<()> {
//! use std::time::Duration;
//! use walwatch::{Op, Watch};
//!
//! let watch = Watch::builder(dsn).tables(["orders"]).start().await?;
//! // ... the application writes ...
//! watch.eventually(|e: &walwatch::Event| e.is_insert() && e.table() == "orders",
//!                  Duration::from_secs(5)).await?;
//! watch.never(|e: &walwatch::Event| e.op() == Op::Insert, Duration::from_secs(2)).await?;
//! # Ok(()) }
//! ```
//!
//! The watch sees every transaction that commits after [`WatchBuilder::start`] returns, through
//! its own temporary slot and publication (both gone when it stops). Assertions that must know
//! they have seen *everything* up to a point (`never`, `count`, `sync`, `mark`) fence: they
//! emit a transactional logical message on a separate connection and wait for it to come back
//! through the stream ([`crate::marker`]). No sleeps decide anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::assert::diagnose::{self, Scope};
use crate::assert::{Observer, Predicate, Report, human};
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::event::{Event, Lsn, Op};
use crate::expr::Expr;
use crate::marker::{self, FENCE_PREFIX, MARK_PREFIX};
use crate::pg::params::ConnParams;
use crate::proxy::EventLog as ProxyLog;
use crate::session::{self, Hooks, Started};
use crate::sink::{AssertSink, EventLog};

/// How often `run_until` reads the proxy events files it follows.
const FILE_POLL: Duration = Duration::from_millis(20);

/// Configures a [`Watch`]; see [`Watch::builder`].
#[derive(Clone, Debug)]
pub struct WatchBuilder {
    dsn: String,
    tables: Vec<String>,
    ops: Vec<String>,
    publication: Option<String>,
    partitions: crate::config::Partitions,
    retain: usize,
    fence_timeout: Duration,
    proxies: Vec<ProxyEvents>,
}

/// A fault proxy's event log, as a builder holds it.
#[derive(Clone)]
struct ProxyEvents(Arc<ProxyLog>);

impl std::fmt::Debug for ProxyEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyEvents(last seq {})", self.0.last_seq())
    }
}

/// A named point in the stream, made by [`Watch::mark`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub name: String,
    /// The WAL position of the mark's message.
    pub lsn: Lsn,
    seq: u64,
    /// Where the proxies' events after the mark start in the log.
    proxy_from: u64,
}

/// A live watch on a database; see the module docs.
pub struct Watch {
    log: Arc<EventLog>,
    merged: Merged,
    meta: tokio_postgres::Client,
    started: Started,
    fence_timeout: Duration,
    stop: Option<oneshot::Sender<()>>,
    task: Option<SessionTask>,
}

impl WatchBuilder {
    /// Tables to watch (`orders`, `sales.orders`, `sales.*`); default: every table, which
    /// needs a superuser (a publication FOR ALL TABLES).
    pub fn tables<I, S>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.tables
            .extend(tables.into_iter().map(|t| t.as_ref().to_string()));
        self
    }

    /// Row operations to publish (`insert`, `update`, ...); default: all.
    pub fn ops<I, S>(mut self, ops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.ops
            .extend(ops.into_iter().map(|o| o.as_ref().to_string()));
        self
    }

    /// Read an existing publication instead of creating one.
    pub fn publication(mut self, name: impl Into<String>) -> Self {
        self.publication = Some(name.into());
        self
    }

    /// How a partitioned table's changes are reported (default: under its own name). See
    /// [`Partitions`](crate::config::Partitions).
    pub fn partitions(mut self, mode: crate::config::Partitions) -> Self {
        self.partitions = mode;
        self
    }

    /// How many events the watch keeps in memory (default 1,000,000). An assertion that needs
    /// an event already dropped fails with an error saying so.
    pub fn retain(mut self, events: usize) -> Self {
        self.retain = events;
        self
    }

    /// Merges the events of a fault proxy (`proxy::Proxy`) into the watch's: every assertion
    /// sees them beside the WAL's (`type == "proxy"`), from those recorded after
    /// [`WatchBuilder::start`] returns. A proxy event is in an assertion's window when the
    /// proxy recorded it between the window's opening and its close, and the proxy records
    /// an action before it acts, so `never` over proxy events is exact without a fence.
    /// Repeatable, for several proxies.
    pub fn proxy(mut self, proxy: &crate::proxy::Proxy) -> Self {
        self.proxies.push(ProxyEvents(proxy.events().clone()));
        self
    }

    /// How long a fence may take to come back through the stream (default 30 s).
    pub fn fence_timeout(mut self, timeout: Duration) -> Self {
        self.fence_timeout = timeout;
        self
    }

    /// Connects, creates the publication and a temporary slot, and starts streaming. Every
    /// transaction that commits after this returns is seen. Creating the slot waits for
    /// transactions already writing to finish; walwatch logs which ones after 2 s.
    pub async fn start(self) -> Result<Watch> {
        let env = |name: &str| std::env::var(name).ok();
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let conn = ConnParams::resolve(Some(&self.dsn), &env, home.as_deref())?;
        let mut ops = config::parse_ops(&self.ops)?;
        // Fences are logical messages: they must come through whatever ops are watched.
        ops.insert(Op::Message);
        let mut config = Config::new(conn);
        config.tables = config::parse_tables(&self.tables)?;
        config.ops = ops;
        config.publication = self.publication.clone();
        config.partitions = self.partitions;
        config.keep_markers = true;
        config.status_interval = Duration::from_secs(2);
        if let Some(p) = &config.publication {
            config::validate_publication_name(p)?;
        }
        let meta = session::connect_meta(&config).await?;

        let log = EventLog::new(self.retain);
        let (started, stop_tx, task) = spawn_session(config, log.clone()).await?;
        let merged = Merged::new(self.proxies.into_iter().map(|p| p.0).collect());
        Ok(Watch {
            log,
            merged,
            meta,
            started,
            fence_timeout: self.fence_timeout,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// Where a scan stopped.
struct Scanned {
    /// The number of the event `f` stopped at, if it did.
    stopped_at: Option<u64>,
    /// Where to continue.
    next: u64,
}

impl Watch {
    /// A watch on the database at `dsn` (a URI or `key=value` string; libpq variables fill in
    /// what it leaves out).
    pub fn builder(dsn: impl Into<String>) -> WatchBuilder {
        WatchBuilder {
            dsn: dsn.into(),
            tables: Vec::new(),
            ops: Vec::new(),
            publication: None,
            partitions: crate::config::Partitions::Root,
            retain: 1_000_000,
            fence_timeout: Duration::from_secs(30),
            proxies: Vec::new(),
        }
    }

    /// The slot, publication and tables this watch reads.
    pub fn started(&self) -> &Started {
        &self.started
    }

    fn scope(&self) -> Scope {
        Scope {
            publications: self.started.publications.clone(),
            slot: Some(self.started.slot.clone()),
        }
    }

    /// Feeds events numbered `from` on to `f` until it returns true, or `deadline` passes.
    async fn scan(
        &self,
        from: u64,
        deadline: Instant,
        mut f: impl FnMut(u64, &Arc<Event>) -> Result<bool>,
    ) -> Result<Scanned> {
        let mut next = from;
        loop {
            self.merged.pull(&self.log)?;
            let slice = self.log.since(next);
            if slice.dropped > 0 {
                return Err(Error::Config(format!(
                    "{} event(s) this assertion needed were already dropped from the watch's \
                     memory: raise WatchBuilder::retain",
                    slice.dropped
                )));
            }
            let base = slice.next - slice.events.len() as u64;
            for (i, e) in slice.events.iter().enumerate() {
                if f(base + i as u64, e)? {
                    return Ok(Scanned {
                        stopped_at: Some(base + i as u64),
                        next: base + i as u64 + 1,
                    });
                }
            }
            next = slice.next;
            if let Some(why) = slice.ended {
                return Err(Error::Setup(format!(
                    "the watch's stream has ended ({why}): no further events can arrive"
                )));
            }
            if Instant::now() >= deadline {
                return Ok(Scanned {
                    stopped_at: None,
                    next,
                });
            }
            tokio::select! {
                () = self.log.wait_past(next, deadline) => {}
                () = self.merged.changed(deadline) => {}
            }
        }
    }

    /// Emits a fence; returns its id. Events before it are numbered below `log.next_seq()`
    /// taken before this call.
    async fn emit_fence(&self) -> Result<String> {
        let id = marker::new_fence_id();
        marker::emit(&self.meta, &self.scoped(FENCE_PREFIX), &id).await?;
        Ok(id)
    }

    /// A marker prefix addressed to this watch alone: other watches and recorders on the
    /// database never see its fences and marks (their filters drop them, `crate::marker`).
    fn scoped(&self, prefix: &str) -> String {
        marker::scoped(prefix, Some(&self.started.slot))
    }

    /// Waits for fence `id`, scanning from `from` and feeding `f` every event before it.
    /// Returns the fence's number.
    async fn await_fence(
        &self,
        id: &str,
        from: u64,
        mut f: impl FnMut(u64, &Arc<Event>) -> Result<()>,
    ) -> Result<u64> {
        let deadline = deadline_in(self.fence_timeout);
        let scanned = self
            .scan(from, deadline, |pos, e| {
                if marker::fence_id(e) == Some(id) {
                    return Ok(true);
                }
                f(pos, e)?;
                Ok(false)
            })
            .await?;
        match scanned.stopped_at {
            Some(seq) => Ok(seq),
            None => {
                let always = |_: &Event| true;
                let diagnostics = diagnose::diagnose(&self.meta, &always, &self.scope()).await;
                Err(Error::FenceTimeout(format!(
                    "the fence did not come back through the stream within {}: the stream is \
                     behind or stalled{}",
                    human(self.fence_timeout),
                    if diagnostics.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", diagnostics.join("; "))
                    }
                )))
            }
        }
    }

    /// Returns once every change committed before this call has been seen by the watch.
    pub async fn sync(&self) -> Result<()> {
        let from = self.merged.pull(&self.log)?;
        let id = self.emit_fence().await?;
        self.await_fence(&id, from, |_, _| Ok(())).await.map(|_| ())
    }

    /// Puts a named marker into the stream and returns once it has been seen: events after it
    /// in [`Watch::events_since`] committed after this call.
    pub async fn mark(&self, name: &str) -> Result<Mark> {
        let from = self.merged.pull(&self.log)?;
        let lsn = marker::emit(&self.meta, &self.scoped(MARK_PREFIX), name).await?;
        let id = self.emit_fence().await?;
        let mut found = None;
        self.await_fence(&id, from, |pos, e| {
            if marker::mark_name(e) == Some(name) {
                found = Some(pos);
            }
            Ok(())
        })
        .await?;
        let seq = found.ok_or_else(|| {
            Error::Setup(format!(
                "the mark `{name}` did not come through the stream before the fence after it"
            ))
        })?;
        Ok(Mark {
            name: name.to_string(),
            lsn,
            seq,
            proxy_from: from,
        })
    }

    /// The events seen after `mark` so far (walwatch's markers left out). Call
    /// [`Watch::sync`] first to be sure everything committed until now is included.
    pub fn events_since(&self, mark: &Mark) -> Vec<Event> {
        // A proxy's memory overflowing is reported by the assertions; here what is left is shown.
        let _ = self.merged.pull(&self.log);
        let window = Window::after(mark, None);
        let slice = self.log.since(window.first());
        let base = slice.next - slice.events.len() as u64;
        slice
            .events
            .iter()
            .enumerate()
            .filter(|(i, e)| window.admits(base + *i as u64, e) && !marker::is_marker(e))
            .map(|(_, e)| (**e).clone())
            .collect()
    }

    /// Every event seen so far (walwatch's markers left out).
    pub fn events(&self) -> Vec<Event> {
        let _ = self.merged.pull(&self.log);
        self.log
            .since(0)
            .events
            .iter()
            .filter(|e| !marker::is_marker(e))
            .map(|e| (**e).clone())
            .collect()
    }

    /// Passes with the first matching event committed since the watch started (a watch is its
    /// owner's: one per test); fails `within` after the call with a report (nearest miss, last
    /// events of the table, diagnostics). [`Watch::eventually_since`] looks after a mark.
    pub async fn eventually<P: Predicate>(&self, pred: P, within: Duration) -> Result<Event> {
        let window = Window {
            wal_after: None,
            proxy_from: 0,
            proxy_end: None,
        };
        self.eventually_in(window, "since the watch started", pred, within)
            .await
    }

    /// [`Watch::eventually`] over the events after `mark`.
    pub async fn eventually_since<P: Predicate>(
        &self,
        mark: &Mark,
        pred: P,
        within: Duration,
    ) -> Result<Event> {
        let since = format!("after mark `{}` ({})", mark.name, mark.lsn);
        self.eventually_in(Window::after(mark, None), &since, pred, within)
            .await
    }

    async fn eventually_in<P: Predicate>(
        &self,
        window: Window,
        since: &str,
        pred: P,
        within: Duration,
    ) -> Result<Event> {
        let deadline = deadline_in(within);
        let mut obs = Observer::new(&pred);
        let mut hit = None;
        let scanned = self
            .scan(window.first(), deadline, |pos, e| {
                let m = window.admits(pos, e) && obs.observe(e)?;
                if m {
                    hit = Some(e.clone());
                }
                Ok(m)
            })
            .await?;
        if scanned.stopped_at.is_some()
            && let Some(e) = hit
        {
            return Ok((*e).clone());
        }
        let mut report = obs.report(
            "eventually",
            false,
            format!("changes {since}, until {} after the call", human(within)),
            format!("no matching event arrived within {}", human(within)),
        );
        report.diagnostics = diagnose::diagnose(&self.meta, &pred, &self.scope()).await;
        Err(Error::Assertion(Box::new(report)))
    }

    /// [`Watch::eventually`] with a CEL expression.
    pub async fn eventually_expr(&self, expr: &str, within: Duration) -> Result<Event> {
        self.eventually(compile(expr)?, within).await
    }

    /// Fails if a matching change commits during the next `during`. The window is fenced at
    /// both ends: a start marker, then after `during` an end fence that must come back through
    /// the stream, so "never" means no matching change committed in between, not "none seen
    /// yet". Fails as soon as a violation is seen.
    pub async fn never<P: Predicate>(&self, pred: P, during: Duration) -> Result<()> {
        let from = self.merged.pull(&self.log)?;
        let start_id = self.emit_fence().await?;
        let window_end = deadline_in(during);
        // A proxy event is in the window when it was merged after `from` and before the close.
        let proxy_end = std::cell::Cell::new(None::<u64>);
        let mut obs = Observer::new(&pred);
        let mut inside = false;
        let mut check = |pos: u64, e: &Arc<Event>| -> Result<bool> {
            if e.proxy().is_some() {
                let open = pos >= from && proxy_end.get().is_none_or(|end| pos < end);
                return Ok(open && obs.observe(e)?);
            }
            if !inside {
                inside = marker::fence_id(e) == Some(start_id.as_str());
                return Ok(false);
            }
            Ok(obs.observe(e)?)
        };
        let scanned = self.scan(from, window_end, &mut check).await?;
        let mut violated = scanned.stopped_at.is_some();
        if !violated {
            proxy_end.set(Some(self.merged.pull(&self.log)?));
            let end_id = self.emit_fence().await?;
            let mut first = false;
            self.await_fence(&end_id, scanned.next, |pos, e| {
                if check(pos, e)? {
                    first = true;
                }
                Ok(())
            })
            .await?;
            violated = first;
        }
        if !violated {
            return Ok(());
        }
        let report = obs.report(
            "never",
            false,
            format!(
                "changes committed during the {} after the call (fenced at both ends)",
                human(during)
            ),
            "a matching change was committed inside the window".into(),
        );
        Err(Error::Assertion(Box::new(report)))
    }

    /// [`Watch::never`] with a CEL expression.
    pub async fn never_expr(&self, expr: &str, during: Duration) -> Result<()> {
        self.never(compile(expr)?, during).await
    }

    /// Fails if a matching change committed between `mark` and now (fenced): the fault
    /// injection pattern, `let m = watch.mark("fault").await?; inject(); ...;
    /// watch.never_since(&m, pred).await?`.
    pub async fn never_since<P: Predicate>(&self, mark: &Mark, pred: P) -> Result<()> {
        let mut obs = Observer::new(&pred);
        let window = Window::after(mark, Some(self.merged.pull(&self.log)?));
        let id = self.emit_fence().await?;
        let mut err = None;
        self.await_fence(&id, window.first(), |pos, e| {
            if err.is_none()
                && window.admits(pos, e)
                && let Err(e) = obs.observe(e)
            {
                err = Some(e);
            }
            Ok(())
        })
        .await?;
        if let Some(e) = err {
            return Err(e.into());
        }
        if obs.matched() == 0 {
            return Ok(());
        }
        let report = obs.report(
            "never",
            false,
            format!("between mark `{}` ({}) and a fence", mark.name, mark.lsn),
            format!(
                "{} matching change(s) were committed after the mark",
                obs.matched()
            ),
        );
        Err(Error::Assertion(Box::new(report)))
    }

    /// How many matching events committed since the watch started, counted up to a fence so
    /// that every change committed before the call is included. `within` bounds the wait for
    /// the fence.
    pub async fn count<P: Predicate>(&self, pred: P, within: Duration) -> Result<usize> {
        let window = Window {
            wal_after: None,
            proxy_from: 0,
            proxy_end: Some(self.merged.pull(&self.log)?),
        };
        let (n, _) = self.count_in(window, pred, within, None).await?;
        Ok(n)
    }

    /// [`Watch::count`] (without `since`) or [`Watch::count_since`], with the report of what
    /// was counted (the matching events, the nearest miss, the last events): for a caller that
    /// asserts on the count and shows the report when it is not the expected one. The report
    /// says `passed`; set it, and its `outcome`, to the caller's verdict.
    pub async fn count_with_report<P: Predicate>(
        &self,
        since: Option<&Mark>,
        pred: P,
    ) -> Result<(usize, Report)> {
        let end = Some(self.merged.pull(&self.log)?);
        let (window, text) = match since {
            Some(mark) => (
                Window::after(mark, end),
                format!("between mark `{}` ({}) and a fence", mark.name, mark.lsn),
            ),
            None => (
                Window {
                    wal_after: None,
                    proxy_from: 0,
                    proxy_end: end,
                },
                "since the watch started, up to a fence".to_string(),
            ),
        };
        let (n, report) = self
            .count_in(window, pred, self.fence_timeout, Some(text))
            .await?;
        match report {
            Some(report) => Ok((n, report)),
            None => Err(Error::Setup(
                "count: the report of the count was not made; this is a walwatch bug".into(),
            )),
        }
    }

    /// [`Watch::count`] with a CEL expression.
    pub async fn count_expr(&self, expr: &str, within: Duration) -> Result<usize> {
        self.count(compile(expr)?, within).await
    }

    /// [`Watch::count`] over the changes committed after `mark`.
    pub async fn count_since<P: Predicate>(&self, mark: &Mark, pred: P) -> Result<usize> {
        let window = Window::after(mark, Some(self.merged.pull(&self.log)?));
        let (n, _) = self
            .count_in(window, pred, self.fence_timeout, None)
            .await?;
        Ok(n)
    }

    /// Counts the matching events of `window` up to a fence; with `report` (the window's text),
    /// also the report of what was counted.
    async fn count_in<P: Predicate>(
        &self,
        window: Window,
        pred: P,
        within: Duration,
        report: Option<String>,
    ) -> Result<(usize, Option<Report>)> {
        let mut obs = Observer::new(&pred);
        let id = self.emit_fence().await?;
        let deadline = deadline_in(within);
        let scanned = self
            .scan(window.first(), deadline, |pos, e| {
                if marker::fence_id(e) == Some(id.as_str()) {
                    return Ok(true);
                }
                if window.admits(pos, e) {
                    obs.observe(e)?;
                }
                Ok(false)
            })
            .await?;
        if scanned.stopped_at.is_none() {
            return Err(Error::FenceTimeout(format!(
                "count: the fence did not come back through the stream within {}",
                human(within)
            )));
        }
        let n = obs.matched() as usize;
        let report = report.map(|window| {
            obs.report(
                "count",
                true,
                window,
                format!("counted {n} matching event(s)"),
            )
        });
        Ok((n, report))
    }

    /// Stops streaming and removes the watch's slot and publication.
    pub async fn stop(mut self) -> Result<()> {
        self.stop.take();
        match self.task.take() {
            Some(task) => match task.await {
                Ok(res) => res.map(|_| ()),
                Err(e) => Err(Error::Setup(format!("the watch's task failed: {e}"))),
            },
            None => Ok(()),
        }
    }
}

impl Drop for Watch {
    /// Dropping a watch stops its stream (in the background; [`Watch::stop`] waits for it).
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// Which events of the log an assertion over a closed window examines, by their position: a
/// WAL event after the mark (`wal_after`; the fence that ends the scan ends it), a proxy event
/// merged between the window's opening (`proxy_from`) and its close (`proxy_end`).
struct Window {
    wal_after: Option<u64>,
    proxy_from: u64,
    proxy_end: Option<u64>,
}

impl Window {
    /// From `mark` on.
    fn after(mark: &Mark, proxy_end: Option<u64>) -> Window {
        Window {
            wal_after: Some(mark.seq),
            proxy_from: mark.proxy_from,
            proxy_end,
        }
    }

    /// Where a scan of the window starts.
    fn first(&self) -> u64 {
        self.proxy_from.min(self.wal_after.map_or(0, |seq| seq + 1))
    }

    fn admits(&self, pos: u64, e: &Event) -> bool {
        if e.proxy().is_some() {
            pos >= self.proxy_from && self.proxy_end.is_none_or(|end| pos < end)
        } else {
            self.wal_after.is_none_or(|seq| pos > seq)
        }
    }
}

/// The fault proxies' events merged into a watch's log ([`WatchBuilder::proxy`]).
///
/// Copying happens only in [`Merged::pull`], under one lock, which returns the log's next
/// position: every proxy event recorded before the call is then below it, and every event
/// recorded after it lands at or above it. That position is how a window's opening and close
/// are marked for proxy events.
struct Merged {
    sources: Vec<Arc<ProxyLog>>,
    /// Per source, the sequence number of the last event copied.
    copied: std::sync::Mutex<Vec<u64>>,
}

impl Merged {
    /// Events the proxies recorded before this are not the watch's.
    fn new(sources: Vec<Arc<ProxyLog>>) -> Merged {
        let copied = sources.iter().map(|s| s.last_seq()).collect();
        Merged {
            sources,
            copied: std::sync::Mutex::new(copied),
        }
    }

    /// Copies what the proxies recorded since the last call into `log`; returns the log's
    /// next position.
    fn pull(&self, log: &EventLog) -> Result<u64> {
        let mut copied = self.copied.lock().unwrap_or_else(|p| p.into_inner());
        for (source, last) in self.sources.iter().zip(copied.iter_mut()) {
            let (events, missing) = source.since(*last);
            if missing > 0 {
                return Err(Error::Config(format!(
                    "{missing} proxy event(s) were dropped from the proxy's memory before the \
                     watch read them: raise ProxyBuilder::retain"
                )));
            }
            for e in events {
                *last = e.seq;
                log.push(e.to_event());
            }
        }
        Ok(log.next_seq())
    }

    /// Waits until a proxy records an event not yet copied, or `deadline` (at once when there
    /// is nothing to wait for, never: with no proxy it waits for the deadline).
    async fn changed(&self, deadline: Instant) {
        let last: Vec<u64> = self
            .copied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if self.sources.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        let waits = self
            .sources
            .iter()
            .zip(last)
            .map(|(s, after)| Box::pin(s.changed_past(after, deadline)));
        futures_util::future::select_all(waits).await;
    }
}

type SessionTask = tokio::task::JoinHandle<Result<session::Outcome>>;

/// Runs a session feeding `log` in a task; returns once it streams (or with its error). Dropping
/// the returned sender stops it.
async fn spawn_session(
    config: Config,
    log: Arc<EventLog>,
) -> Result<(Started, oneshot::Sender<()>, SessionTask)> {
    let (started_tx, started_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let hooks = Hooks {
        sinks: vec![Box::new(AssertSink(log.clone()))],
        started: Some(started_tx),
    };
    let task = tokio::spawn(async move {
        let res = session::run_with(config, hooks, async {
            let _ = stop_rx.await;
        })
        .await;
        log.end(match &res {
            Ok(o) => format!("the stream stopped ({:?})", o.reason),
            Err(e) => format!("the stream failed: {e}"),
        });
        res
    });
    match started_rx.await {
        Ok(started) => Ok((started, stop_tx, task)),
        // The session ended before streaming: its error says why.
        Err(_) => Err(match task.await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => Error::Setup("the watch stopped before it started".into()),
            Err(e) => Error::Setup(format!("the watch's task failed: {e}")),
        }),
    }
}

/// What `walwatch watch --until` waits for.
pub struct Until {
    /// The event to wait for.
    pub expr: Arc<Expr>,
    pub within: Duration,
    /// `walwatch proxy --events` files whose events appended from start-up on are matched too.
    pub proxy_events: Vec<std::path::PathBuf>,
}

/// `walwatch watch --until EXPR --within D`: runs `config` like a plain watch (its sinks get
/// every event) until an event matches `expr` (the report passes), `within` passes (it fails,
/// with diagnostics) or `shutdown` resolves (an error: the question was not answered).
pub async fn run_until(
    config: Config,
    until: Until,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Report> {
    let meta = session::connect_meta(&config).await?;
    // What the files hold already happened before start-up.
    let mut files = Vec::new();
    for path in &until.proxy_events {
        let mut file = crate::assert::file::Recording::open(path)?;
        file.read_events()?;
        files.push(file);
    }
    let log = EventLog::new(100_000);
    let (started, stop_tx, task) = spawn_session(config, log.clone()).await?;
    let within = until.within;
    let deadline = deadline_in(within);
    let pred: &dyn Predicate = &*until.expr;
    let mut obs = Observer::new(pred);
    let mut next = 0;
    let mut interrupted = false;
    let mut matched = false;
    let mut failure = None;
    tokio::pin!(shutdown);
    'outer: loop {
        let slice = log.since(next);
        let mut events = slice.events;
        for file in &mut files {
            match file.read_events() {
                Ok(more) => events.extend(more),
                Err(e) => {
                    failure = Some(e);
                    break 'outer;
                }
            }
        }
        for e in &events {
            match obs.observe(e) {
                Ok(true) => {
                    matched = true;
                    break 'outer;
                }
                Ok(false) => {}
                Err(err) => {
                    failure = Some(Error::Expr(err));
                    break 'outer;
                }
            }
        }
        next = slice.next;
        if slice.ended.is_some() || Instant::now() >= deadline {
            break;
        }
        // Files are polled; the watch's own events wake this at once.
        let wake = if files.is_empty() {
            deadline
        } else {
            deadline.min(Instant::now() + FILE_POLL)
        };
        tokio::select! {
            _ = log.wait_past(next, wake) => {}
            _ = &mut shutdown => { interrupted = true; break; }
        }
    }
    drop(stop_tx);
    let outcome = task
        .await
        .map_err(|e| Error::Setup(format!("the watch's task failed: {e}")))?;
    if let Some(e) = failure {
        return Err(e);
    }
    outcome?;
    if matched {
        return Ok(obs.report(
            "eventually",
            true,
            format!("within {}", human(within)),
            "a matching event arrived".into(),
        ));
    }
    if interrupted {
        return Err(Error::Setup(
            "stopped before a matching event arrived or the deadline passed".into(),
        ));
    }
    let mut report = obs.report(
        "eventually",
        false,
        format!("within {} of start-up", human(within)),
        format!("no matching event arrived within {}", human(within)),
    );
    let scope = Scope {
        publications: started.publications.clone(),
        slot: None,
    };
    report.diagnostics = diagnose::diagnose(&meta, pred, &scope).await;
    Ok(report)
}

/// `now + d`, at most a year ahead: a caller's huge timeout must not overflow the clock.
fn deadline_in(d: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 86_400);
    Instant::now() + d.min(YEAR)
}

fn compile(expr: &str) -> Result<Expr> {
    Expr::compile(expr).map_err(|e| Error::Config(format!("expression {e}")))
}

/// The report of a failed assertion, if that is what `err` is.
pub fn report_of(err: &Error) -> Option<&Report> {
    match err {
        Error::Assertion(r) => Some(r),
        _ => None,
    }
}
