//! `walwatch._walwatch`: the walwatch engine for Python, through PyO3.
//!
//! Why an extension module and not a wrapper around the `walwatch` binary: a test harness asks
//! many small questions (an event arrived, none arrived since a mark, how many) and each answer
//! needs the watch's in-memory log and its fences. Here the Python objects *are* the Rust
//! library's [`walwatch::Watch`], [`walwatch::proxy::Proxy`] and
//! [`walwatch::scratch::ScratchCluster`], driven by one tokio runtime inside the extension.
//!
//! Rules this crate keeps:
//! * Every blocking call releases the GIL ([`runtime::block_on`]); a Python predicate takes it
//!   back only for the call itself, once per event.
//! * Events reach Python lazily ([`event`]): nothing is converted until a predicate reads it.
//! * CEL predicates never touch Python: they are evaluated by [`walwatch::Expr`] in the nested
//!   envelope, the shape Python sees.
//! * Errors become the classes of `walwatch.errors` ([`errors`]), whose messages are the
//!   library's: they say what to do.

mod convert;
mod dsn;
mod errors;
mod event;
mod predicate;
mod proxy;
mod runtime;
mod scratch;
mod sql;
mod watch;

use pyo3::prelude::*;

#[pymodule]
fn _walwatch(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event::PyEvent>()?;
    m.add_class::<event::Data>()?;
    m.add_class::<watch::PyWatch>()?;
    m.add_class::<watch::PyMark>()?;
    m.add_class::<proxy::PyProxy>()?;
    m.add_class::<proxy::PyRule>()?;
    m.add_class::<proxy::PyFault>()?;
    m.add_class::<scratch::PyScratchCluster>()?;
    m.add_function(wrap_pyfunction!(watch::watch, m)?)?;
    m.add_function(wrap_pyfunction!(proxy::proxy, m)?)?;
    m.add_function(wrap_pyfunction!(proxy::error, m)?)?;
    m.add_function(wrap_pyfunction!(proxy::delay, m)?)?;
    m.add_function(wrap_pyfunction!(proxy::drop, m)?)?;
    m.add_function(wrap_pyfunction!(scratch::scratch_cluster, m)?)?;
    m.add_function(wrap_pyfunction!(sql::execute, m)?)?;
    m.add_function(wrap_pyfunction!(dsn::dsn_with, m)?)?;
    m.add_function(wrap_pyfunction!(predicate::compile, m)?)?;
    Ok(())
}
