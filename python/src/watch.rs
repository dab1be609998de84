//! `walwatch.watch(...)`: a [`walwatch::Watch`] for Python, and its marks.
//!
//! Each method blocks with the GIL released while the library waits (fences, deadlines); the
//! assertion semantics, windows and reports are the library's, unchanged. What is added here:
//! `assert_count` (the library counts; the report of a wrong count is built from the same
//! window's events with the library's `Observer`), and a per-watch mark prefix, so the pytest
//! plugin can name each test's marks after the test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use walwatch::{Mark, Watch};

use crate::errors::{self, IntoPyResult};
use crate::event::PyEvent;
use crate::predicate::Where;
use crate::proxy::{PyFault, PyProxy, PyRule};
use crate::runtime::{block_on, seconds};

/// A named point in the stream (`Watch.mark`).
#[pyclass(frozen, name = "Mark", module = "walwatch")]
pub struct PyMark {
    inner: Mark,
}

#[pymethods]
impl PyMark {
    #[getter]
    fn name(&self) -> &str {
        &self.inner.name
    }
    /// The WAL position of the mark's message, as PostgreSQL prints a `pg_lsn`.
    #[getter]
    fn lsn(&self) -> String {
        self.inner.lsn.to_string()
    }
    fn __repr__(&self) -> String {
        format!(
            "<walwatch.Mark {:?} at {}>",
            self.inner.name, self.inner.lsn
        )
    }
}

/// A live watch on a database: every transaction committed after it started.
#[pyclass(frozen, name = "Watch", module = "walwatch")]
pub struct PyWatch {
    inner: Mutex<Option<Arc<Watch>>>,
    proxy: Option<Py<PyProxy>>,
    mark_prefix: String,
    fence_timeout: Duration,
    slot: String,
    publications: Vec<String>,
    database: String,
}

/// Starts a watch; see `walwatch.watch` in `walwatch/__init__.py` for the arguments.
#[pyfunction]
#[pyo3(signature = (dsn, tables=None, ops=None, publication=None, proxy=None,
                    retain=1_000_000, fence_timeout=30.0, mark_prefix=String::new()))]
#[allow(clippy::too_many_arguments)]
pub fn watch(
    py: Python<'_>,
    dsn: String,
    tables: Option<Vec<String>>,
    ops: Option<Vec<String>>,
    publication: Option<String>,
    proxy: Option<Bound<'_, PyProxy>>,
    retain: usize,
    fence_timeout: f64,
    mark_prefix: String,
) -> PyResult<PyWatch> {
    let fence_timeout = seconds("fence_timeout", fence_timeout)?;
    let mut builder = Watch::builder(dsn)
        .tables(tables.unwrap_or_default())
        .ops(ops.unwrap_or_default())
        .retain(retain)
        .fence_timeout(fence_timeout);
    if let Some(name) = publication {
        builder = builder.publication(name);
    }
    if let Some(p) = &proxy {
        builder = p.get().with_proxy(|p| builder.proxy(p))?;
    }
    let watch = block_on(py, move || builder.start())?.py(py)?;
    let started = watch.started().clone();
    Ok(PyWatch {
        inner: Mutex::new(Some(Arc::new(watch))),
        proxy: proxy.map(Bound::unbind),
        mark_prefix,
        fence_timeout,
        slot: started.slot,
        publications: started.publications,
        database: started.database,
    })
}

impl PyWatch {
    fn get(&self, py: Python<'_>) -> PyResult<Arc<Watch>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.clone().ok_or_else(|| {
            errors::new(
                py,
                "ConfigError",
                "this watch was stopped: start another with walwatch.watch(...)",
            )
        })
    }

    /// Runs `op(watch, pred)` with the GIL released; a raising Python predicate becomes
    /// `PredicateError`.
    fn run<T, F, M>(&self, py: Python<'_>, pred: &Arc<Where>, op: M) -> PyResult<T>
    where
        M: FnOnce(Arc<Watch>, Arc<Where>) -> F + Send,
        F: std::future::Future<Output = walwatch::Result<T>>,
        T: Send,
    {
        let w = self.get(py)?;
        let p = pred.clone();
        block_on(py, move || op(w, p))?.map_err(|e| pred.error(py, e))
    }
}

/// The mark of `since=`, if given.
fn mark_of(since: &Option<Bound<'_, PyMark>>) -> Option<Mark> {
    since.as_ref().map(|m| m.get().inner.clone())
}

#[pymethods]
impl PyWatch {
    /// Passes with the first matching event committed since the watch started, or after
    /// `since` (a mark), and returns it; raises AssertionFailed when none arrives within
    /// `within` seconds of the call.
    #[pyo3(signature = (r#where, within=5.0, since=None))]
    fn assert_eventually(
        &self,
        py: Python<'_>,
        r#where: &Bound<'_, PyAny>,
        within: f64,
        since: Option<Bound<'_, PyMark>>,
    ) -> PyResult<PyEvent> {
        let pred = Arc::new(Where::parse(r#where)?);
        let within = seconds("within", within)?;
        let mark = mark_of(&since);
        let e = self.run(py, &pred, move |w, p| async move {
            match mark {
                Some(m) => w.eventually_since(&m, p, within).await,
                None => w.eventually(p, within).await,
            }
        })?;
        Ok(PyEvent::new(Arc::new(e)))
    }

    /// Raises AssertionFailed if a matching change commits during the next `during` seconds,
    /// or (with `since=mark`) committed between the mark and now. Both ends are fenced.
    #[pyo3(signature = (r#where, during=None, since=None))]
    fn assert_never(
        &self,
        py: Python<'_>,
        r#where: &Bound<'_, PyAny>,
        during: Option<f64>,
        since: Option<Bound<'_, PyMark>>,
    ) -> PyResult<()> {
        let pred = Arc::new(Where::parse(r#where)?);
        match (during, mark_of(&since)) {
            (Some(d), None) => {
                let during = seconds("during", d)?;
                self.run(
                    py,
                    &pred,
                    move |w, p| async move { w.never(p, during).await },
                )
            }
            (None, Some(m)) => {
                self.run(
                    py,
                    &pred,
                    move |w, p| async move { w.never_since(&m, p).await },
                )
            }
            _ => Err(PyValueError::new_err(
                "assert_never needs exactly one of during=SECONDS (a window from now) or \
                 since=MARK (from a mark until now)",
            )),
        }
    }

    /// How many matching changes committed since `since` (a mark; None: since the watch
    /// started), counted up to a fence: everything committed before the call is included.
    #[pyo3(signature = (r#where, since=None))]
    fn count(
        &self,
        py: Python<'_>,
        r#where: &Bound<'_, PyAny>,
        since: Option<Bound<'_, PyMark>>,
    ) -> PyResult<usize> {
        let pred = Arc::new(Where::parse(r#where)?);
        self.count_with(py, &pred, mark_of(&since))
    }

    /// Raises AssertionFailed unless `count(where, since)` equals `equals` (or is at least
    /// `at_least` / at most `at_most`). Returns the count.
    #[pyo3(signature = (r#where, since=None, equals=None, at_least=None, at_most=None))]
    fn assert_count(
        &self,
        py: Python<'_>,
        r#where: &Bound<'_, PyAny>,
        since: Option<Bound<'_, PyMark>>,
        equals: Option<usize>,
        at_least: Option<usize>,
        at_most: Option<usize>,
    ) -> PyResult<usize> {
        let expected = expectation(equals, at_least, at_most)?;
        let pred = Arc::new(Where::parse(r#where)?);
        let mark = mark_of(&since);
        let (n, mut report) = self.run(py, &pred, move |w, p| async move {
            w.count_with_report(mark.as_ref(), p).await
        })?;
        let holds = equals.is_none_or(|x| n == x)
            && at_least.is_none_or(|x| n >= x)
            && at_most.is_none_or(|x| n <= x);
        if holds {
            return Ok(n);
        }
        report.passed = false;
        report.outcome = format!("expected {expected} matching change(s), counted {n}");
        Err(errors::assertion_failed(py, &report))
    }

    /// Puts a named marker into the stream and returns once the watch has seen it.
    fn mark(&self, py: Python<'_>, name: &str) -> PyResult<PyMark> {
        let w = self.get(py)?;
        let name = format!("{}{name}", self.mark_prefix);
        let inner = block_on(py, move || async move { w.mark(&name).await })?.py(py)?;
        Ok(PyMark { inner })
    }

    /// Returns once every change committed before the call has been seen.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        let w = self.get(py)?;
        block_on(py, move || async move { w.sync().await })?.py(py)
    }

    /// The events seen so far (since a mark, when given); walwatch's markers left out. Call
    /// `sync()` first to be sure everything committed until now is in.
    #[pyo3(signature = (since=None))]
    fn events(&self, py: Python<'_>, since: Option<Bound<'_, PyMark>>) -> PyResult<Vec<PyEvent>> {
        let w = self.get(py)?;
        let events = match mark_of(&since) {
            Some(m) => w.events_since(&m),
            None => w.events(),
        };
        Ok(events
            .into_iter()
            .map(|e| PyEvent::new(Arc::new(e)))
            .collect())
    }

    /// Adds a fault rule to the watch's proxy until the returned Fault is removed (or its
    /// `with` block ends).
    fn fault(&self, py: Python<'_>, rule: &Bound<'_, PyRule>) -> PyResult<PyFault> {
        match &self.proxy {
            Some(p) => p.get().add_fault(py, rule.get()),
            None => Err(errors::new(
                py,
                "ConfigError",
                "this watch has no proxy: start it with walwatch.watch(dsn, proxy=walwatch.proxy(...))",
            )),
        }
    }

    /// Stops streaming and removes the watch's slot and publication.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(arc) = taken else {
            return Ok(());
        };
        match Arc::try_unwrap(arc) {
            Ok(w) => block_on(py, move || w.stop())?.py(py),
            // Still used by another thread: dropping it stops the stream in the background.
            Err(_) => Ok(()),
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    /// The watch's temporary replication slot.
    #[getter]
    fn slot(&self) -> &str {
        &self.slot
    }
    /// The publications the watch reads.
    #[getter]
    fn publications(&self) -> Vec<String> {
        self.publications.clone()
    }
    /// The database watched.
    #[getter]
    fn database(&self) -> &str {
        &self.database
    }
    /// The proxy whose events are merged, if any.
    #[getter]
    fn proxy(&self, py: Python<'_>) -> Option<Py<PyProxy>> {
        self.proxy.as_ref().map(|p| p.clone_ref(py))
    }
    /// What `mark(name)` puts before `name`.
    #[getter]
    fn mark_prefix(&self) -> &str {
        &self.mark_prefix
    }

    fn __repr__(&self) -> String {
        let state = if self.inner.lock().map(|i| i.is_some()).unwrap_or(false) {
            "streaming"
        } else {
            "stopped"
        };
        format!(
            "<walwatch.Watch {} on {} ({state})>",
            self.slot, self.database
        )
    }
}

impl PyWatch {
    fn count_with(&self, py: Python<'_>, pred: &Arc<Where>, mark: Option<Mark>) -> PyResult<usize> {
        let within = self.fence_timeout;
        self.run(py, pred, move |w, p| async move {
            match mark {
                Some(m) => w.count_since(&m, p).await,
                None => w.count(p, within).await,
            }
        })
    }
}

/// What `assert_count` expects, in words; at least one bound is needed.
fn expectation(
    equals: Option<usize>,
    at_least: Option<usize>,
    at_most: Option<usize>,
) -> PyResult<String> {
    let mut parts = Vec::new();
    if let Some(x) = equals {
        parts.push(format!("exactly {x}"));
    }
    if let Some(x) = at_least {
        parts.push(format!("at least {x}"));
    }
    if let Some(x) = at_most {
        parts.push(format!("at most {x}"));
    }
    if parts.is_empty() {
        return Err(PyValueError::new_err(
            "assert_count needs equals=N, at_least=N or at_most=N",
        ));
    }
    Ok(parts.join(" and "))
}
