//! The one tokio runtime of the extension, and how Python threads wait on it.
//!
//! Why a multi-threaded runtime: a watch's session streams in a background task all the time,
//! not only while Python waits on an assertion, so its tasks need worker threads of their own.
//! The future of an assertion itself runs on the calling thread (`block_on`), with the GIL
//! released, so a Python predicate it calls takes the GIL on the thread that asked.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// How often a waiting call looks for a pending signal (Ctrl-C) to raise.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The extension's runtime, built on first use.
pub fn runtime() -> PyResult<&'static Runtime> {
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("walwatch")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start walwatch's tokio runtime: {e}"))
    });
    rt.as_ref().map_err(|e| PyRuntimeError::new_err(e.clone()))
}

/// Runs the future `make` returns to completion with the GIL released. The future is made and
/// polled on this thread, so it need not be `Send` (the library's futures hold non-`Sync`
/// state across awaits). A signal handler that raises (Ctrl-C's KeyboardInterrupt) ends the
/// wait with its exception; the future is dropped then.
pub fn block_on<T, F, M>(py: Python<'_>, make: M) -> PyResult<T>
where
    M: FnOnce() -> F + Send,
    F: Future<Output = T>,
    T: Send,
{
    let rt = runtime()?;
    // A `where=` predicate runs inside an assertion's `block_on`: a walwatch call from it would
    // start a runtime within the runtime, which tokio forbids with a panic.
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(crate::errors::new(
            py,
            "ConfigError",
            "walwatch cannot be called from inside a where= predicate (it runs while an \
             assertion waits): compute what the predicate needs before the assertion",
        ));
    }
    py.detach(move || {
        rt.block_on(async move {
            let fut = make();
            tokio::pin!(fut);
            let mut tick = tokio::time::interval(SIGNAL_POLL);
            tick.tick().await;
            loop {
                tokio::select! {
                    out = &mut fut => return Ok(out),
                    _ = tick.tick() => Python::attach(|py| py.check_signals())?,
                }
            }
        })
    })
}

/// The longest wait a call takes: a year, as `walwatch assert` allows.
const MAX_SECONDS: f64 = 365.0 * 86_400.0;

/// Seconds from Python as a duration; negative, non-finite and absurdly long values are
/// refused (a deadline past the clock's range would overflow).
pub fn seconds(what: &str, secs: f64) -> PyResult<Duration> {
    if secs > MAX_SECONDS {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{what}={secs}: at most {MAX_SECONDS} seconds (a year)"
        )));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "{what}={secs}: give a number of seconds, 0 or more"
        ))
    })
}
