//! `walwatch.scratch_cluster()`: a throwaway local PostgreSQL ([`ScratchCluster`]) for tests:
//! `initdb` in a temporary directory, `wal_level = logical`, loopback only. Stopping it (or
//! leaving its `with` block) stops the server and removes the directory.

use std::sync::Mutex;

use pyo3::prelude::*;
use walwatch::scratch::{ClusterHandle, ScratchCluster, ScratchOptions};

use crate::errors;

/// A running throwaway cluster.
#[pyclass(frozen, name = "ScratchCluster", module = "walwatch")]
pub struct PyScratchCluster {
    inner: Mutex<Option<ScratchCluster>>,
    handle: ClusterHandle,
}

fn scratch_err(py: Python<'_>, e: walwatch::scratch::ScratchError) -> PyErr {
    errors::to_py(py, walwatch::Error::Scratch(e))
}

/// Starts a cluster (server binaries from WALWATCH_PG_BIN, else the highest
/// /usr/lib/postgresql/*/bin, else pg_config, else PATH). `settings` are extra
/// postgresql.conf lines.
#[pyfunction]
#[pyo3(signature = (settings=None))]
pub fn scratch_cluster(
    py: Python<'_>,
    settings: Option<Vec<(String, String)>>,
) -> PyResult<PyScratchCluster> {
    let opts = ScratchOptions {
        extra_conf: settings.unwrap_or_default(),
        ..ScratchOptions::default()
    };
    let cluster = py
        .detach(move || ScratchCluster::start(opts))
        .map_err(|e| scratch_err(py, e))?;
    Ok(PyScratchCluster {
        handle: cluster.handle().clone(),
        inner: Mutex::new(Some(cluster)),
    })
}

#[pymethods]
impl PyScratchCluster {
    /// `postgres://walwatch:PASSWORD@127.0.0.1:PORT/DBNAME`: TCP, SCRAM, the role `walwatch`
    /// (LOGIN REPLICATION CREATEDB).
    #[pyo3(signature = (dbname="walwatch"))]
    fn dsn(&self, dbname: &str) -> String {
        self.handle.dsn(dbname)
    }

    /// The superuser `postgres` over the unix socket (trust), as a key=value DSN.
    #[pyo3(signature = (dbname="postgres"))]
    fn admin_dsn(&self, dbname: &str) -> String {
        self.handle.admin_dsn(dbname)
    }

    /// Creates database `name`, owned by `walwatch`.
    fn create_database(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let h = self.handle.clone();
        py.detach(move || h.create_database(&name))
            .map_err(|e| scratch_err(py, e))
    }

    /// Runs `sql` through psql as the superuser; returns its output (unaligned, tuples only).
    fn psql(&self, py: Python<'_>, dbname: String, sql: String) -> PyResult<String> {
        let h = self.handle.clone();
        py.detach(move || h.psql(&dbname, &sql))
            .map_err(|e| scratch_err(py, e))
    }

    #[getter]
    fn port(&self) -> u16 {
        self.handle.port()
    }
    #[getter]
    fn data_dir(&self) -> std::path::PathBuf {
        self.handle.data_dir().to_path_buf()
    }
    #[getter]
    fn root_dir(&self) -> std::path::PathBuf {
        self.handle.root_dir().to_path_buf()
    }
    #[getter]
    fn bin_dir(&self) -> std::path::PathBuf {
        self.handle.bin_dir().to_path_buf()
    }
    /// Whether the cluster is still running (not stopped by this object).
    #[getter]
    fn running(&self) -> bool {
        self.inner.lock().map(|i| i.is_some()).unwrap_or(false)
    }

    /// Stops the server and removes its directory.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(c) => py.detach(move || c.stop()).map_err(|e| scratch_err(py, e)),
            None => Ok(()),
        }
    }

    /// Leaves the server running and its directory on disk when this object goes: whoever
    /// detaches owns the cleanup (the pytest plugin hands it to a watchdog process).
    fn detach(&self) {
        if let Some(c) = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take() {
            c.detach();
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
    fn __repr__(&self) -> String {
        format!(
            "<walwatch.ScratchCluster 127.0.0.1:{} in {}>",
            self.handle.port(),
            self.handle.root_dir().display()
        )
    }
}
