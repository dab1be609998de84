//! Rewriting a DSN's host, port or database, keeping everything else (user, password, TLS
//! settings, options): the plugin's per-worker databases and `Proxy.dsn()` need the user's
//! DSN pointed elsewhere, in whichever of libpq's two forms it was written.

use pyo3::prelude::*;

/// `dsn` with the given parts replaced. A URI (`postgres://...`) is rewritten in place; a
/// `key=value` string gets the new settings appended (libpq and walwatch both let the last
/// setting of a key win); a bare `host:port` becomes a URI.
pub fn rewrite(dsn: &str, dbname: Option<&str>, host: Option<&str>, port: Option<u16>) -> String {
    let dsn = dsn.trim();
    if let Some((scheme, rest)) = dsn.split_once("://") {
        return rewrite_uri(scheme, rest, dbname, host, port);
    }
    if !dsn.contains('=') && !dsn.is_empty() {
        return rewrite_uri("postgresql", dsn, dbname, host, port);
    }
    let mut out = dsn.to_string();
    let mut set = |key: &str, value: &str| {
        let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("{key}='{quoted}'"));
    };
    if let Some(h) = host {
        set("host", h);
    }
    if let Some(p) = port {
        set("port", &p.to_string());
    }
    if let Some(d) = dbname {
        set("dbname", d);
    }
    out
}

fn rewrite_uri(
    scheme: &str,
    rest: &str,
    dbname: Option<&str>,
    host: Option<&str>,
    port: Option<u16>,
) -> String {
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match main.split_once('/') {
        Some((a, p)) => (a, p.to_string()),
        None => (main, String::new()),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h.to_string()),
        None => (None, authority.to_string()),
    };
    let hostport = match (host, port) {
        (None, None) => hostport,
        (h, p) => {
            let h = h.map_or_else(|| "127.0.0.1".to_string(), bracket);
            match p {
                Some(p) => format!("{h}:{p}"),
                None => h,
            }
        }
    };
    let path = dbname.map_or(path, walwatch::pg::params::percent_encode);
    let mut out = format!("{scheme}://");
    if let Some(u) = userinfo {
        out.push_str(u);
        out.push('@');
    }
    out.push_str(&hostport);
    if !path.is_empty() {
        out.push('/');
        out.push_str(&path);
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// An IPv6 address in brackets, as URIs write it.
fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `walwatch.dsn_with(dsn, dbname=None, host=None, port=None)`: see [`rewrite`].
#[pyfunction]
#[pyo3(signature = (dsn, dbname=None, host=None, port=None))]
pub fn dsn_with(dsn: &str, dbname: Option<&str>, host: Option<&str>, port: Option<u16>) -> String {
    rewrite(dsn, dbname, host, port)
}
