//! `where=`: a Python callable or a CEL string, as a [`walwatch::Predicate`].
//!
//! A CEL string is compiled for the nested envelope (`data.op`, `data.data.amount`), the shape
//! Python sees, and evaluated entirely in Rust: no Python per event. A callable is called with
//! an [`Event`](crate::event::PyEvent) per event, taking the GIL for that call only. If it
//! raises, the exception is kept, the scan stops with an error naming the event, and the caller
//! raises `walwatch.PredicateError` from it: a broken predicate is not a failed assertion.

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use walwatch::event_read::Envelope;
use walwatch::expr::{EvalError, Verdict, describe_event};
use walwatch::{Event, Expr, Predicate};

use crate::errors;
use crate::event::PyEvent;

/// A predicate given as `where=`.
pub enum Where {
    Cel(Arc<Expr>),
    Py(PyPredicate),
}

/// A Python callable as a predicate.
pub struct PyPredicate {
    func: Py<PyAny>,
    name: String,
    /// The exception the callable raised, for the caller to chain.
    raised: Mutex<Option<PyErr>>,
}

impl Where {
    /// Reads `where=`: a `str` (CEL) or a callable.
    pub fn parse(obj: &Bound<'_, PyAny>) -> PyResult<Where> {
        if let Ok(s) = obj.cast::<pyo3::types::PyString>() {
            return compile_cel(obj.py(), s.to_str()?).map(Where::Cel);
        }
        if !obj.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "where= takes a callable (lambda e: ...) or a CEL string, not {}",
                obj.get_type().name()?
            )));
        }
        Ok(Where::Py(PyPredicate {
            func: obj.clone().unbind(),
            name: describe_callable(obj),
            raised: Mutex::new(None),
        }))
    }

    /// The exception a Python predicate raised, if it did.
    pub fn take_raised(&self) -> Option<PyErr> {
        match self {
            Where::Py(p) => p.raised.lock().unwrap_or_else(|e| e.into_inner()).take(),
            Where::Cel(_) => None,
        }
    }

    /// Turns a library error into Python's: a predicate that raised an `Exception` becomes
    /// `PredicateError` from it. KeyboardInterrupt and SystemExit (not `Exception`s) go on
    /// as they are: Ctrl-C while a predicate runs must stop the run, not fail one test.
    pub fn error(&self, py: Python<'_>, err: walwatch::Error) -> PyErr {
        match (self.take_raised(), &err) {
            (Some(cause), walwatch::Error::Expr(_))
                if !cause.is_instance_of::<pyo3::exceptions::PyException>(py) =>
            {
                cause
            }
            (Some(cause), walwatch::Error::Expr(e)) => {
                let exc = errors::new(
                    py,
                    "PredicateError",
                    format!(
                        "the predicate {} raised on {}: {}",
                        e.expr, e.event, e.message
                    ),
                );
                exc.set_cause(py, Some(cause));
                exc
            }
            _ => errors::to_py(py, err),
        }
    }
}

/// Compiles a CEL string for the nested envelope.
pub fn compile_cel(py: Python<'_>, source: &str) -> PyResult<Arc<Expr>> {
    Expr::compile_in(source, Envelope::Nested)
        .map(Arc::new)
        .map_err(|e| errors::new(py, "ExprError", format!("expression {e}")))
}

/// `walwatch.compile(expr)`: checks a CEL string now (syntax, variables); returns it.
#[pyfunction]
pub fn compile(py: Python<'_>, expr: &str) -> PyResult<String> {
    compile_cel(py, expr).map(|_| expr.to_string())
}

/// `python predicate <lambda> (test_orders.py:12)`, for reports.
fn describe_callable(obj: &Bound<'_, PyAny>) -> String {
    let name = obj
        .getattr("__qualname__")
        .and_then(|n| n.extract::<String>())
        .unwrap_or_else(|_| "callable".into());
    let place = obj.getattr("__code__").ok().and_then(|code| {
        let file: String = code.getattr("co_filename").ok()?.extract().ok()?;
        let line: u32 = code.getattr("co_firstlineno").ok()?.extract().ok()?;
        let base = std::path::Path::new(&file)
            .file_name()
            .map_or(file.clone(), |b| b.to_string_lossy().into_owned());
        Some(format!(" ({base}:{line})"))
    });
    format!("python predicate {name}{}", place.unwrap_or_default())
}

impl PyPredicate {
    /// Calls the callable with `e`, shared with the `Event` Python sees (never copied).
    fn call(&self, e: &Arc<Event>) -> PyResult<bool> {
        Python::attach(|py| {
            let ev = Py::new(py, PyEvent::new(e.clone()))?;
            self.func.bind(py).call1((ev,))?.is_truthy()
        })
    }
}

impl Predicate for PyPredicate {
    fn test(&self, e: &Event) -> Result<Verdict, EvalError> {
        self.test_shared(&Arc::new(e.clone()))
    }
    fn test_shared(&self, e: &Arc<Event>) -> Result<Verdict, EvalError> {
        match self.call(e) {
            Ok(true) => Ok(Verdict::Match),
            Ok(false) => Ok(Verdict::NoMatch),
            Err(err) => {
                let message = err.to_string();
                *self.raised.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                Err(EvalError {
                    expr: self.name.clone(),
                    event: describe_event(e),
                    message,
                })
            }
        }
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
    fn envelope(&self) -> Envelope {
        Envelope::Nested
    }
}

impl Predicate for Where {
    fn test(&self, e: &Event) -> Result<Verdict, EvalError> {
        match self {
            Where::Cel(x) => x.eval(e),
            Where::Py(p) => p.test(e),
        }
    }
    fn test_shared(&self, e: &Arc<Event>) -> Result<Verdict, EvalError> {
        match self {
            Where::Cel(x) => x.eval(e),
            Where::Py(p) => p.test_shared(e),
        }
    }
    fn describe(&self) -> String {
        match self {
            Where::Cel(x) => x.source().to_string(),
            Where::Py(p) => p.describe(),
        }
    }
    fn expr(&self) -> Option<&Expr> {
        match self {
            Where::Cel(x) => Some(x),
            Where::Py(_) => None,
        }
    }
    fn envelope(&self) -> Envelope {
        Envelope::Nested
    }
}
