//! Column values as Python objects.
//!
//! Python types where Python has one: int, float, bool, str, None, `decimal.Decimal` for
//! numeric (NaN and ±Infinity too: Decimal has them), `datetime.datetime` (aware, UTC, for
//! timestamptz), `datetime.date`, `datetime.time`, `uuid.UUID`, `bytes`, dict/list for
//! json/jsonb, lists for arrays. A value Python cannot represent (a date BC or after 9999,
//! `infinity`, an interval, inet, ...) stays the server's text, so nothing is lost. Conversion
//! runs only when a predicate or test reads the value (see `event.rs`).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString};
use walwatch::Value;

/// A Python callable looked up once: `decimal.Decimal`, `uuid.UUID`, ...
struct Import {
    module: &'static str,
    path: &'static [&'static str],
    cell: PyOnceLock<Py<PyAny>>,
}

impl Import {
    const fn new(module: &'static str, path: &'static [&'static str]) -> Import {
        Import {
            module,
            path,
            cell: PyOnceLock::new(),
        }
    }

    fn get<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyAny>> {
        let obj = self.cell.get_or_try_init(py, || {
            let mut obj = PyModule::import(py, self.module)?.into_any();
            for attr in self.path {
                obj = obj.getattr(*attr)?;
            }
            Ok::<_, PyErr>(obj.unbind())
        })?;
        Ok(obj.bind(py))
    }
}

static DECIMAL: Import = Import::new("decimal", &["Decimal"]);
static UUID: Import = Import::new("uuid", &["UUID"]);
static DATE: Import = Import::new("datetime", &["date", "fromisoformat"]);
static TIME: Import = Import::new("datetime", &["time", "fromisoformat"]);
static DATETIME: Import = Import::new("datetime", &["datetime", "fromisoformat"]);
static JSON_LOADS: Import = Import::new("json", &["loads"]);

/// `value` as a Python object.
pub fn value(py: Python<'_>, value: &Value) -> PyResult<Py<PyAny>> {
    let obj = match value {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        Value::Float(f) => f.into_pyobject(py)?.into_any().unbind(),
        Value::Numeric(s) => or_text(py, &DECIMAL, s, s)?,
        Value::Uuid(s) => or_text(py, &UUID, s, s)?,
        Value::Json(raw) => JSON_LOADS.get(py)?.call1((raw.get(),))?.unbind(),
        Value::Bytea(b) => PyBytes::new(py, b).into_any().unbind(),
        Value::Date(s) if plain_year(s) => or_text(py, &DATE, s, s)?,
        Value::Time(s) | Value::TimeTz(s) => or_text(py, &TIME, s, s)?,
        Value::Timestamp(s) if plain_year(s) => or_text(py, &DATETIME, s, s)?,
        Value::TimestampTz(s) if plain_year(s) => {
            // Python before 3.11 does not read `Z`.
            let iso = match s.strip_suffix('Z') {
                Some(head) => format!("{head}+00:00"),
                None => s.clone(),
            };
            or_text(py, &DATETIME, &iso, s)?
        }
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|v| self::value(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any().unbind()
        }
        other => text(py, other.as_str().unwrap_or("")),
    };
    Ok(obj)
}

/// A Python `str`.
pub fn text(py: Python<'_>, s: &str) -> Py<PyAny> {
    PyString::new(py, s).into_any().unbind()
}

/// Whether an ISO date or timestamp has a year Python's `datetime` can hold (0001 to 9999;
/// not `infinity`, not an expanded year such as `+10000` or `-0044`, not year 0000 = 1 BC).
fn plain_year(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && &b[..4] != b"0000"
}

/// `parse(arg)`, or the text `fallback` when Python refuses it (`24:00:00`, a leap second).
fn or_text(py: Python<'_>, parse: &Import, arg: &str, fallback: &str) -> PyResult<Py<PyAny>> {
    match parse.get(py)?.call1((arg,)) {
        Ok(obj) => Ok(obj.unbind()),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyValueError>(py) => Ok(text(py, fallback)),
        Err(e) => Err(e),
    }
}

/// A `serde_json` value as Python (proxy events' data, reports).
pub fn json(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => py.None(),
        J::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.into_pyobject(py)?.into_any().unbind(),
            (_, Some(u), _) => u.into_pyobject(py)?.into_any().unbind(),
            (_, _, Some(f)) => f.into_pyobject(py)?.into_any().unbind(),
            _ => text(py, &n.to_string()),
        },
        J::String(s) => text(py, s),
        J::Array(items) => {
            let items = items
                .iter()
                .map(|v| json(py, v))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any().unbind()
        }
        J::Object(map) => json_object(py, map)?,
    })
}

/// A JSON object as a Python dict.
pub fn json_object(
    py: Python<'_>,
    map: &serde_json::Map<String, serde_json::Value>,
) -> PyResult<Py<PyAny>> {
    let dict = pyo3::types::PyDict::new(py);
    for (k, v) in map {
        dict.set_item(k, json(py, v)?)?;
    }
    Ok(dict.into_any().unbind())
}
