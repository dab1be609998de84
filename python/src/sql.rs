//! `walwatch._walwatch.execute(dsn, sql)`: one SQL string on a fresh connection.
//!
//! The pytest plugin creates and drops its databases with this, so it needs no driver of its
//! own, and connects exactly as a watch does (same DSN parsing, pgpass, TLS), through the
//! library's metadata connection.

use pyo3::prelude::*;
use walwatch::config::Config;
use walwatch::pg::params::ConnParams;

use crate::errors::{self, IntoPyResult};
use crate::runtime::block_on;

/// Runs `sql` (one or more statements, as a simple query) and returns the rows of its results
/// as lists of text (None for NULL). Several statements in one string run as one transaction,
/// so `CREATE DATABASE` must come alone.
#[pyfunction]
pub fn execute(py: Python<'_>, dsn: String, sql: String) -> PyResult<Vec<Vec<Option<String>>>> {
    let env = |name: &str| std::env::var(name).ok();
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let conn = ConnParams::resolve(Some(&dsn), &env, home.as_deref())
        .map_err(|e| errors::to_py(py, e.into()))?;
    let config = Config::new(conn);
    let rows = block_on(py, move || async move {
        let client = walwatch::session::connect_meta(&config).await?;
        let messages = client.simple_query(&sql).await?;
        Ok::<_, walwatch::Error>(rows_of(messages))
    })?;
    rows.py(py)
}

fn rows_of(messages: Vec<tokio_postgres::SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
