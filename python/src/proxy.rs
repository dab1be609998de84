//! `walwatch.proxy(...)`: the fault proxy ([`walwatch::proxy::Proxy`]) for Python, and its
//! rules (`walwatch.error`, `delay`, `drop`).
//!
//! A rule is checked when it is made, so a bad SQLSTATE or glob fails at the line that wrote
//! it. A fault is removed explicitly (`remove()`, or leaving its `with` block), not when the
//! Python object is collected: a fault that vanished at some garbage collection would make
//! tests flaky.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::prelude::*;
use walwatch::proxy::{self as rules, EventLog, Proxy, RuleSet, RuleSpec};

use crate::errors;
use crate::event::PyEvent;
use crate::runtime::block_on;

/// A fault rule: what to do to the statements matching a glob.
#[pyclass(frozen, name = "Rule", module = "walwatch")]
pub struct PyRule {
    spec: RuleSpec,
}

#[pymethods]
impl PyRule {
    /// The rule as `walwatch proxy --fault` writes it: `error:INSERT*:disk full`.
    fn __str__(&self) -> String {
        self.spec.to_spec_string()
    }
    fn __repr__(&self) -> String {
        format!("<walwatch.Rule {}>", self.spec.to_spec_string())
    }
}

/// The options every rule takes.
#[derive(Default)]
struct Options {
    times: Option<u64>,
    after: Option<u64>,
    probability: Option<f64>,
    database: Option<String>,
    user: Option<String>,
    application_name: Option<String>,
}

impl Options {
    fn apply(self, py: Python<'_>, mut spec: RuleSpec) -> PyResult<PyRule> {
        spec.times = self.times;
        spec.after = self.after;
        spec.probability = self.probability;
        spec.database = self.database;
        spec.user = self.user;
        spec.application_name = self.application_name;
        spec.compile()
            .map_err(|e| errors::new(py, "ProxyError", e.to_string()))?;
        Ok(PyRule { spec })
    }
}

/// Matching statements fail with `message` (SQLSTATE `sqlstate`, default XX000), raised by the
/// server itself so the client sees a real error.
#[pyfunction]
#[pyo3(signature = (query, message, sqlstate=None, times=None, after=None, probability=None,
                    database=None, user=None, application_name=None))]
#[allow(clippy::too_many_arguments)]
pub fn error(
    py: Python<'_>,
    query: &str,
    message: &str,
    sqlstate: Option<&str>,
    times: Option<u64>,
    after: Option<u64>,
    probability: Option<f64>,
    database: Option<String>,
    user: Option<String>,
    application_name: Option<String>,
) -> PyResult<PyRule> {
    let mut spec = rules::error(query, message);
    if let Some(code) = sqlstate {
        spec = spec.sqlstate(code);
    }
    let opts = Options {
        times,
        after,
        probability,
        database,
        user,
        application_name,
    };
    opts.apply(py, spec)
}

/// Matching statements are held `seconds` before they are relayed.
#[pyfunction]
#[pyo3(signature = (query, seconds, times=None, after=None, probability=None,
                    database=None, user=None, application_name=None))]
#[allow(clippy::too_many_arguments)]
pub fn delay(
    py: Python<'_>,
    query: &str,
    seconds: f64,
    times: Option<u64>,
    after: Option<u64>,
    probability: Option<f64>,
    database: Option<String>,
    user: Option<String>,
    application_name: Option<String>,
) -> PyResult<PyRule> {
    let held = crate::runtime::seconds("seconds", seconds)?;
    let opts = Options {
        times,
        after,
        probability,
        database,
        user,
        application_name,
    };
    opts.apply(py, rules::delay(query, held))
}

/// The client's connection is closed when a matching statement arrives.
#[pyfunction]
#[pyo3(signature = (query, times=None, after=None, probability=None,
                    database=None, user=None, application_name=None))]
#[allow(clippy::too_many_arguments)]
pub fn drop(
    py: Python<'_>,
    query: &str,
    times: Option<u64>,
    after: Option<u64>,
    probability: Option<f64>,
    database: Option<String>,
    user: Option<String>,
    application_name: Option<String>,
) -> PyResult<PyRule> {
    let opts = Options {
        times,
        after,
        probability,
        database,
        user,
        application_name,
    };
    opts.apply(py, rules::drop(query))
}

/// An active fault: `remove()` (or the end of its `with` block) takes the rule out.
#[pyclass(frozen, name = "Fault", module = "walwatch")]
pub struct PyFault {
    id: u64,
    rules: Arc<RuleSet>,
    removed: AtomicBool,
}

#[pymethods]
impl PyFault {
    /// The rule's id in the proxy.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }
    /// Removes the rule; statements pass again. Removing twice is harmless.
    fn remove(&self) {
        if !self.removed.swap(true, Ordering::SeqCst) {
            self.rules.remove(self.id);
        }
    }
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.remove();
        false
    }
    fn __repr__(&self) -> String {
        let state = if self.removed.load(Ordering::SeqCst) {
            "removed"
        } else {
            "active"
        };
        format!("<walwatch.Fault {} ({state})>", self.id)
    }
}

/// A running fault proxy.
#[pyclass(frozen, name = "Proxy", module = "walwatch")]
pub struct PyProxy {
    inner: Mutex<Option<Proxy>>,
    addr: SocketAddr,
    upstream: String,
    rules: Arc<RuleSet>,
    events: Arc<EventLog>,
}

/// Starts a proxy in front of `upstream` (a DSN or host:port).
#[pyfunction]
#[pyo3(signature = (upstream, listen="127.0.0.1:0", events_file=None, seed=0, retain=100_000))]
pub fn proxy(
    py: Python<'_>,
    upstream: String,
    listen: &str,
    events_file: Option<std::path::PathBuf>,
    seed: u64,
    retain: usize,
) -> PyResult<PyProxy> {
    let listen: SocketAddr = listen.parse().map_err(|_| {
        errors::new(
            py,
            "ConfigError",
            format!(
                "listen={listen:?}: give an address such as 127.0.0.1:6432 (port 0: any free port)"
            ),
        )
    })?;
    let mut builder = Proxy::builder(upstream.clone())
        .listen(listen)
        .seed(seed)
        .retain(retain);
    if let Some(path) = events_file {
        builder = builder.events_file(path);
    }
    let p = block_on(py, move || builder.start())?
        .map_err(|e| errors::to_py(py, walwatch::Error::Proxy(e)))?;
    Ok(PyProxy {
        addr: p.addr(),
        rules: p.rules().clone(),
        events: p.events().clone(),
        inner: Mutex::new(Some(p)),
        upstream,
    })
}

impl PyProxy {
    /// Runs `f` on the proxy, unless it was stopped.
    pub fn with_proxy<R>(&self, f: impl FnOnce(&Proxy) -> R) -> PyResult<R> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.as_ref() {
            Some(p) => Ok(f(p)),
            None => Python::attach(|py| {
                Err(errors::new(
                    py,
                    "ConfigError",
                    "this proxy was stopped: start another with walwatch.proxy(...)",
                ))
            }),
        }
    }

    /// Adds `rule` until the returned fault is removed.
    pub fn add_fault(&self, py: Python<'_>, rule: &PyRule) -> PyResult<PyFault> {
        self.with_proxy(|_| ())?;
        let id = self
            .rules
            .add(rule.spec.clone())
            .map_err(|e| errors::new(py, "ProxyError", e.to_string()))?;
        Ok(PyFault {
            id,
            rules: self.rules.clone(),
            removed: AtomicBool::new(false),
        })
    }
}

#[pymethods]
impl PyProxy {
    /// Where clients connect: `127.0.0.1:PORT`.
    #[getter]
    fn address(&self) -> String {
        self.addr.to_string()
    }
    #[getter]
    fn host(&self) -> String {
        self.addr.ip().to_string()
    }
    #[getter]
    fn port(&self) -> u16 {
        self.addr.port()
    }
    #[getter]
    fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The upstream DSN pointed at the proxy (same user and password; `dbname` replaces the
    /// database when given): what the application under test connects with.
    #[pyo3(signature = (dbname=None))]
    fn dsn(&self, dbname: Option<&str>) -> String {
        let host = self.addr.ip().to_string();
        crate::dsn::rewrite(&self.upstream, dbname, Some(&host), Some(self.addr.port()))
    }

    /// Adds `rule` until the returned Fault is removed (`with proxy.fault(rule): ...`).
    fn fault(&self, py: Python<'_>, rule: &Bound<'_, PyRule>) -> PyResult<PyFault> {
        self.add_fault(py, rule.get())
    }

    /// Removes every rule; returns how many there were.
    fn clear(&self) -> usize {
        self.rules.clear()
    }

    /// Records a mark in the proxy's events (and events file); returns its sequence number.
    fn mark(&self, py: Python<'_>, name: String) -> PyResult<u64> {
        let events = self.events.clone();
        block_on(py, move || async move { events.mark(&name).await.seq })
    }

    /// The events recorded so far (as far as the proxy keeps them in memory).
    fn events(&self) -> Vec<PyEvent> {
        self.events
            .all()
            .iter()
            .map(|e| PyEvent::new(Arc::new(e.to_event())))
            .collect()
    }

    /// Stops accepting and closes every connection through the proxy.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(p) = taken {
            p.stop();
            // Dropped inside the runtime: its tasks see the stop signal there.
            block_on(py, move || async move { std::mem::drop(p) })?;
        }
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }
    fn __repr__(&self) -> String {
        format!("<walwatch.Proxy {} -> {}>", self.addr, self.upstream)
    }
}
