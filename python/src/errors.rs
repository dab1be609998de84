//! walwatch's errors as Python exceptions.
//!
//! The classes live in Python (`walwatch/errors.py`) so that they can carry attributes
//! (`AssertionFailed.report`) and be documented and subclassed there; Rust looks them up once.
//! The message of each is the library's own, which says what to do.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use walwatch::Error;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The exception class `name` of `walwatch.errors`.
pub fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let module = MODULE.get_or_try_init(py, || {
        PyModule::import(py, "walwatch.errors").map(Bound::unbind)
    })?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// An instance of `walwatch.errors.<name>` with `message`.
pub fn new(py: Python<'_>, name: &str, message: impl Into<String>) -> PyErr {
    match class(py, name) {
        Ok(cls) => PyErr::from_type(cls, message.into()),
        Err(e) => e,
    }
}

/// The Python exception for a library error.
pub fn to_py(py: Python<'_>, err: Error) -> PyErr {
    let name = match &err {
        Error::Assertion(report) => return assertion_failed(py, report),
        Error::Config(_) | Error::Params(_) => "ConfigError",
        Error::Expr(_) => "ExprError",
        Error::FenceTimeout(_) => "FenceTimeout",
        Error::Proxy(_) => "ProxyError",
        Error::Scratch(_) => "ScratchError",
        Error::Setup(_) | Error::NoSuchTable(_) | Error::CatalogType { .. } => "SetupError",
        Error::Pg(_)
        | Error::Meta(_)
        | Error::StreamEnded
        | Error::SlotInUse(_)
        | Error::SlotLost(_)
        | Error::Decode(_) => "DatabaseError",
        _ => "Error",
    };
    new(py, name, err.to_string())
}

/// `AssertionFailed(text, report)`: the text is the report as `Display` prints it, the second
/// argument its JSON form as a dict.
pub fn assertion_failed(py: Python<'_>, report: &walwatch::Report) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let cls = class(py, "AssertionFailed")?;
        let json = serde_json::to_string(report).unwrap_or_else(|_| "{}".into());
        let dict = PyModule::import(py, "json")?.call_method1("loads", (json,))?;
        let exc = cls.call1((report.to_string(), dict))?;
        Ok(PyErr::from_value(exc))
    };
    build().unwrap_or_else(|e| e)
}

/// Converts a library result, naming the Python exception on error.
pub trait IntoPyResult<T> {
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}
