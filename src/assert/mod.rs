//! Assertions over a stream of events: predicates, what an assertion remembers while it
//! watches, and the report a failure carries.
//!
//! This part is pure: it is fed events and never waits. Two drivers feed it: the library's
//! [`crate::Watch`] (events from a live session) and `walwatch assert` (events from a JSONL
//! recording another process writes). Both fence with [`crate::marker`], and both ask
//! [`diagnose`] why an event may be missing.

pub mod diagnose;
pub mod file;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::event::Event;
use crate::event_read::{self, Envelope};
use crate::expr::{EvalError, Expr, Verdict, describe_event};
use crate::marker;

/// Something an event matches or not: a Rust closure, a compiled [`Expr`], or either under a
/// name ([`named`]) for reports.
pub trait Predicate: Send + Sync {
    /// Whether `e` matches. An expression's type error is an `Err`.
    fn test(&self, e: &Event) -> Result<Verdict, EvalError>;
    /// [`Predicate::test`] on a shared event: what assertions call. A predicate that keeps or
    /// hands on the event (the Python binding's) takes the `Arc` instead of copying the event.
    fn test_shared(&self, e: &Arc<Event>) -> Result<Verdict, EvalError> {
        self.test(e)
    }
    /// What it looks for, in reports.
    fn describe(&self) -> String;
    /// The expression, when there is one: reports then explain near misses.
    fn expr(&self) -> Option<&Expr> {
        None
    }
    /// The shape the predicate sees events in, which is the shape reports print them in.
    fn envelope(&self) -> Envelope {
        self.expr().map_or(Envelope::Native, Expr::envelope)
    }
}

impl<F: Fn(&Event) -> bool + Send + Sync> Predicate for F {
    fn test(&self, e: &Event) -> Result<Verdict, EvalError> {
        Ok(if self(e) {
            Verdict::Match
        } else {
            Verdict::NoMatch
        })
    }
    fn describe(&self) -> String {
        "a Rust closure (name it with walwatch::named for clearer reports)".into()
    }
}

impl Predicate for Expr {
    fn test(&self, e: &Event) -> Result<Verdict, EvalError> {
        self.eval(e)
    }
    fn describe(&self) -> String {
        self.source().to_string()
    }
    fn expr(&self) -> Option<&Expr> {
        Some(self)
    }
}

impl<P: Predicate + ?Sized> Predicate for Arc<P> {
    fn test(&self, e: &Event) -> Result<Verdict, EvalError> {
        (**self).test(e)
    }
    fn test_shared(&self, e: &Arc<Event>) -> Result<Verdict, EvalError> {
        (**self).test_shared(e)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn expr(&self) -> Option<&Expr> {
        (**self).expr()
    }
    fn envelope(&self) -> Envelope {
        (**self).envelope()
    }
}

/// A predicate with a name for reports: `walwatch::named("order 42 inserted", |e| ...)`.
pub struct Named<P> {
    name: String,
    inner: P,
}

/// Gives a predicate a name for reports.
pub fn named<P: Predicate>(name: impl Into<String>, inner: P) -> Named<P> {
    Named {
        name: name.into(),
        inner,
    }
}

impl<P: Predicate> Predicate for Named<P> {
    fn test(&self, e: &Event) -> Result<Verdict, EvalError> {
        self.inner.test(e)
    }
    fn test_shared(&self, e: &Arc<Event>) -> Result<Verdict, EvalError> {
        self.inner.test_shared(e)
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn expr(&self) -> Option<&Expr> {
        self.inner.expr()
    }
    fn envelope(&self) -> Envelope {
        self.inner.envelope()
    }
}

/// How many recent events an observer keeps for its report.
const RECENT: usize = 64;
/// How many of them a report shows.
const SHOWN: usize = 5;

/// What an assertion remembers of the events it examined.
pub struct Observer<'p> {
    pred: &'p dyn Predicate,
    /// The table the predicate looks for (`table == "orders"`), if it says.
    table: Option<String>,
    op: Option<String>,
    recent: VecDeque<Arc<Event>>,
    examined: u64,
    /// The last events of the predicate's table and op that did not match: the nearest miss
    /// is chosen among them when a report is made, so the scan itself never explains.
    candidates: VecDeque<Arc<Event>>,
    missing: BTreeMap<String, u64>,
    matches: Vec<Arc<Event>>,
    matched: u64,
}

impl<'p> Observer<'p> {
    pub fn new(pred: &'p dyn Predicate) -> Observer<'p> {
        Observer {
            pred,
            table: pred.expr().and_then(|x| x.wanted("table")),
            op: pred.expr().and_then(|x| x.wanted("op")),
            recent: VecDeque::with_capacity(RECENT),
            examined: 0,
            candidates: VecDeque::with_capacity(RECENT),
            missing: BTreeMap::new(),
            matches: Vec::new(),
            matched: 0,
        }
    }

    /// Examines one event; true when it matches. walwatch's own markers never match.
    pub fn observe(&mut self, e: &Arc<Event>) -> Result<bool, EvalError> {
        if marker::is_marker(e) {
            return Ok(false);
        }
        self.examined += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(e.clone());
        match self.pred.test_shared(e)? {
            Verdict::Match => {
                self.matched += 1;
                if self.matches.len() < SHOWN {
                    self.matches.push(e.clone());
                }
                Ok(true)
            }
            Verdict::Missing(field) => {
                if self.same_target(e) {
                    *self.missing.entry(field).or_default() += 1;
                }
                self.consider_near_miss(e);
                Ok(false)
            }
            Verdict::NoMatch => {
                self.consider_near_miss(e);
                Ok(false)
            }
        }
    }

    /// How many matching events were examined.
    pub fn matched(&self) -> u64 {
        self.matched
    }

    fn same_target(&self, e: &Event) -> bool {
        self.table.as_deref().is_none_or(|t| e.table() == t)
            && self.op.as_deref().is_none_or(|o| e.op.as_str() == o)
    }

    /// Keeps `e` as a near-miss candidate. Explaining an event costs several evaluations, so
    /// it waits for a report (the scan of a failing `eventually` may see millions of events).
    fn consider_near_miss(&mut self, e: &Arc<Event>) {
        if self.pred.expr().is_none() || !e.op.is_change() || !self.same_target(e) {
            return;
        }
        if self.candidates.len() == RECENT {
            self.candidates.pop_front();
        }
        self.candidates.push_back(e.clone());
    }

    /// Of the candidates, the one for which most parts of the expression held (the latest of
    /// equals), with the parts that did not.
    fn nearest_miss(&self) -> Option<(Arc<Event>, Vec<String>)> {
        let x = self.pred.expr()?;
        let mut best: Option<(usize, &Arc<Event>, Vec<String>)> = None;
        for e in &self.candidates {
            let (held, failed) = x.explain(e);
            if best.as_ref().is_none_or(|(most, _, _)| held >= *most) {
                best = Some((held, e, failed));
            }
        }
        best.map(|(_, e, failed)| (e.clone(), failed))
    }

    /// The report of this assertion; `diagnostics` come from [`diagnose`].
    pub fn report(&self, assertion: &str, passed: bool, window: String, outcome: String) -> Report {
        let recent: Vec<&Arc<Event>> = self
            .recent
            .iter()
            .rev()
            .filter(|e| self.table.as_deref().is_none_or(|t| e.table() == t))
            .take(SHOWN)
            .collect();
        let envelope = self.pred.envelope();
        let shown = |e: &Arc<Event>| Shown::of(e, envelope);
        Report {
            assertion: assertion.to_string(),
            passed,
            predicate: self.pred.describe(),
            window,
            outcome,
            examined: self.examined,
            table: self.table.clone(),
            matches: self.matches.iter().map(shown).collect(),
            recent: recent.into_iter().rev().map(shown).collect(),
            near_miss: self.nearest_miss().map(|(e, differed)| NearMiss {
                event: shown(&e),
                differed,
            }),
            missing_fields: self
                .missing
                .iter()
                .map(|(f, n)| format!("{n} event(s) had no field `{f}`"))
                .collect(),
            diagnostics: Vec::new(),
        }
    }

    /// The predicate being checked.
    pub fn predicate(&self) -> &dyn Predicate {
        self.pred
    }
}

/// An event in a report: its one-line description and its JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Shown {
    pub summary: String,
    pub event: serde_json::Value,
}

impl Shown {
    /// `e` as the user sees it: its JSON in `envelope`.
    fn of(e: &Event, envelope: Envelope) -> Shown {
        let mut json = e.to_json().into_bytes();
        event_read::wrap(&mut json, envelope);
        Shown {
            summary: describe_event(e),
            event: serde_json::from_slice(&json).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The closest event that did not match, and what differed.
#[derive(Clone, Debug, Serialize)]
pub struct NearMiss {
    pub event: Shown,
    /// Each part of the expression that did not hold, with the values seen.
    pub differed: Vec<String>,
}

/// What an assertion expected, what it saw, and why the event may be missing. `Display` prints
/// it for people; `--report json` serialises it.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `eventually`, `never` or `count`.
    pub assertion: String,
    pub passed: bool,
    pub predicate: String,
    /// The window examined: `within 5.0s`, `between mark "fault-start" (0/1A2B3C8) and the fence (0/1A2C000)`.
    pub window: String,
    /// One sentence: what happened.
    pub outcome: String,
    /// Events examined (walwatch's markers left out).
    pub examined: u64,
    /// The table the predicate looks for, when it says.
    pub table: Option<String>,
    /// Matching events (the violations of `never`; the first few for `count`).
    pub matches: Vec<Shown>,
    /// The last events seen (of the predicate's table, when it names one).
    pub recent: Vec<Shown>,
    pub near_miss: Option<NearMiss>,
    /// Fields the predicate read that events lacked (a misspelt column shows here).
    pub missing_fields: Vec<String>,
    /// Why the event may be missing: checks made against the server.
    pub diagnostics: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "passed" } else { "failed" };
        writeln!(
            f,
            "assertion {} {verdict}: {}",
            self.assertion, self.outcome
        )?;
        writeln!(f, "  predicate: {}", self.predicate)?;
        writeln!(f, "  window:    {}", self.window)?;
        writeln!(f, "  examined:  {} event(s)", self.examined)?;
        if !self.matches.is_empty() {
            writeln!(f, "  matching events:")?;
            for m in &self.matches {
                writeln!(f, "    {}  {}", m.summary, m.event)?;
            }
        }
        if let Some(n) = &self.near_miss {
            writeln!(f, "  nearest miss: {}  {}", n.event.summary, n.event.event)?;
            for d in &n.differed {
                writeln!(f, "    not true: {d}")?;
            }
        }
        if !self.recent.is_empty() && !self.passed {
            match &self.table {
                Some(t) => writeln!(f, "  last events on {t}:")?,
                None => writeln!(f, "  last events:")?,
            }
            for r in &self.recent {
                writeln!(f, "    {}  {}", r.summary, r.event)?;
            }
        } else if self.recent.is_empty() && !self.passed {
            match &self.table {
                Some(t) => writeln!(f, "  no event on {t} was seen")?,
                None => writeln!(f, "  no event was seen")?,
            }
        }
        for m in &self.missing_fields {
            writeln!(f, "  note: {m}")?;
        }
        if !self.diagnostics.is_empty() {
            writeln!(f, "  why it may be missing:")?;
            for d in &self.diagnostics {
                writeln!(f, "    - {d}")?;
            }
        }
        Ok(())
    }
}

/// `5.0s`, `250ms`.
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Parses `5s`, `250ms`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write 5s, 250ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, Lsn, Op, Row, Value};

    fn ev(op: Op, table: &str, status: &str) -> Arc<Event> {
        let mut e = Event::new(op, Lsn(10));
        e.schema = Some(Arc::from("public"));
        e.table = Some(Arc::from(table));
        e.data = Some(Row {
            columns: vec![Column {
                name: Arc::from("status"),
                value: Value::Text(status.into()),
            }],
        });
        Arc::new(e)
    }

    #[test]
    fn the_report_names_the_near_miss_and_recent_events_of_the_table() {
        let x = Expr::compile(r#"op == "UPDATE" && table == "orders" && data.status == "shipped""#)
            .unwrap();
        let mut o = Observer::new(&x);
        for e in [
            ev(Op::Insert, "orders", "new"),
            ev(Op::Update, "users", "shipped"),
            ev(Op::Update, "orders", "paid"),
        ] {
            assert!(!o.observe(&e).unwrap());
        }
        let r = o.report("eventually", false, "within 1.0s".into(), "no match".into());
        let near = r.near_miss.as_ref().expect("a near miss");
        assert!(
            near.event.summary.starts_with("UPDATE public.orders"),
            "{r}"
        );
        assert_eq!(
            near.differed,
            vec![r#"data.status == "shipped"  (data.status is "paid")"#.to_string()]
        );
        assert_eq!(r.recent.len(), 2, "only orders events: {r}");
        let text = r.to_string();
        assert!(text.contains("last events on orders"), "{text}");
        assert!(text.contains("not true: data.status"), "{text}");
    }

    #[test]
    fn markers_never_match_and_closures_work() {
        let any = |_: &Event| true;
        let mut o = Observer::new(&any);
        let mut m = Event::new(Op::Message, Lsn(1));
        m.message = Some(crate::LogicalMessage {
            transactional: true,
            prefix: marker::FENCE_PREFIX.into(),
            content: b"x".to_vec(),
        });
        assert!(!o.observe(&Arc::new(m)).unwrap());
        assert!(o.observe(&ev(Op::Insert, "t", "x")).unwrap());
        assert_eq!(o.matched(), 1);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
