//! `walwatch.Event` and its lazy `data` mapping.
//!
//! Why lazy: a Python predicate is called once per event, over watches that hold hundreds of
//! thousands of them, and typically reads two or three fields. Building a dict of the whole
//! event each time would cost more than the rest of the call, so `Event.data` is a [`Data`]
//! over the Rust event that converts a field only when it is read, then keeps the Python
//! object (a second read is a lookup). The shape is the nested envelope's
//! (`{"type": "wal", "data": {"op": ..., "table": ..., "data": {row}}}`, as written by
//! `walwatch --envelope nested`), the same paths CEL strings use.

use std::sync::Arc;

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use pyo3::{IntoPyObjectExt, intern};
use walwatch::event_read::{Envelope, wrap};
use walwatch::expr::describe_event;
use walwatch::{Event, Row, Value};

use crate::convert;

/// One event as Python sees it: `e.type` (`"wal"` or `"proxy"`), `e.data`, `e.seq`, `e.ts`.
#[pyclass(frozen, name = "Event", module = "walwatch")]
pub struct PyEvent {
    ev: Arc<Event>,
    data: PyOnceLock<Py<PyAny>>,
}

impl PyEvent {
    pub fn new(ev: Arc<Event>) -> PyEvent {
        PyEvent {
            ev,
            data: PyOnceLock::new(),
        }
    }

    /// The event's JSON in the nested envelope.
    fn nested_json(&self) -> String {
        let mut json = self.ev.to_json().into_bytes();
        wrap(&mut json, Envelope::Nested);
        String::from_utf8_lossy(&json).into_owned()
    }

    fn data_obj(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let obj = self.data.get_or_try_init(py, || match &self.ev.proxy {
            Some(p) => convert::json_object(py, &p.data),
            None => Data::new(self.ev.clone(), Source::Envelope).into_py_any(py),
        })?;
        Ok(obj.clone_ref(py))
    }
}

#[pymethods]
impl PyEvent {
    /// `"wal"` or `"proxy"`.
    #[getter]
    fn r#type<'py>(&self, py: Python<'py>) -> &Bound<'py, PyString> {
        if self.ev.proxy.is_some() {
            intern!(py, "proxy")
        } else {
            intern!(py, "wal")
        }
    }

    /// WAL events: op, schema, table, lsn, commit_lsn, xid, ts, data (the row), old, key,
    /// unchanged (and partition_of). Proxy events: action, query, rule, message, ...
    #[getter]
    fn data(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.data_obj(py)
    }

    /// A proxy event's sequence number; None for a WAL event.
    #[getter]
    fn seq(&self) -> Option<u64> {
        self.ev.proxy.as_ref().map(|p| p.seq)
    }

    /// The commit time (WAL) or when the proxy recorded it, as an aware datetime.
    #[getter]
    fn ts(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.ev.ts {
            Some(ts) => convert::value(py, &Value::TimestampTz(ts.to_string())),
            None => Ok(py.None()),
        }
    }

    /// `INSERT`, `UPDATE`, ... (`PROXY` for a proxy event): `e.data["op"]` without the lookup.
    #[getter]
    fn op(&self) -> &'static str {
        self.ev.op.as_str()
    }

    /// The table (None for BEGIN, COMMIT, MESSAGE and proxy events).
    #[getter]
    fn table(&self) -> Option<&str> {
        self.ev.table.as_deref()
    }

    /// The event as one line of JSON, in the nested envelope.
    fn to_json(&self) -> String {
        self.nested_json()
    }

    /// The whole event as plain Python objects (dicts all the way down, values typed).
    fn as_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let dict = PyDict::new(py);
        dict.set_item("type", self.r#type(py))?;
        if let Some(p) = &self.ev.proxy {
            dict.set_item("seq", p.seq)?;
            dict.set_item("ts", self.ts(py)?)?;
        }
        dict.set_item("data", deep(py, self.data_obj(py)?.bind(py))?)?;
        Ok(dict.into_any().unbind())
    }

    fn __repr__(&self) -> String {
        format!("<walwatch.Event {}>", describe_event(&self.ev))
    }

    fn __str__(&self) -> String {
        describe_event(&self.ev)
    }
}

/// Which part of an event a [`Data`] shows.
#[derive(Clone, Copy)]
enum Source {
    /// A WAL event's fields (the nested envelope's `data`).
    Envelope,
    /// A row: `data`, `old` or `key`.
    Row(RowKind),
    /// A MESSAGE event's `data`: prefix, content, transactional.
    Message,
}

#[derive(Clone, Copy)]
enum RowKind {
    Data,
    Old,
    Key,
}

/// The fields of a WAL event in the nested envelope, in the JSON's order.
/// A WAL event's fields in the nested envelope: the same list CEL strings read.
const ENVELOPE_KEYS: &[&str] = walwatch::expr::NESTED_DATA_FIELDS;
const MESSAGE_KEYS: [&str; 3] = ["prefix", "content", "transactional"];

/// A read-only mapping over part of an event, converting each value on first read.
#[pyclass(frozen, mapping, name = "Data", module = "walwatch")]
pub struct Data {
    ev: Arc<Event>,
    src: Source,
    cache: Box<[PyOnceLock<Py<PyAny>>]>,
}

impl Data {
    fn new(ev: Arc<Event>, src: Source) -> Data {
        let mut data = Data {
            ev,
            src,
            cache: Box::new([]),
        };
        let slots = match src {
            Source::Envelope => ENVELOPE_KEYS.len(),
            Source::Message => MESSAGE_KEYS.len(),
            Source::Row(_) => data.row().map_or(0, Row::len),
        };
        data.cache = (0..slots).map(|_| PyOnceLock::new()).collect();
        data
    }

    fn row(&self) -> Option<&Row> {
        match self.src {
            Source::Row(RowKind::Data) => self.ev.data.as_ref(),
            Source::Row(RowKind::Old) => self.ev.old.as_ref(),
            Source::Row(RowKind::Key) => self.ev.key.as_ref(),
            _ => None,
        }
    }

    /// Whether slot `i` is a key (an envelope has `partition_of` only for partitions).
    fn present(&self, i: usize) -> bool {
        !matches!(self.src, Source::Envelope)
            || ENVELOPE_KEYS[i] != "partition_of"
            || self.ev.partition_of.is_some()
    }

    fn name(&self, i: usize) -> &str {
        match self.src {
            Source::Envelope => ENVELOPE_KEYS[i],
            Source::Message => MESSAGE_KEYS[i],
            Source::Row(_) => self.row().map_or("", |r| &r.columns[i].name),
        }
    }

    fn index(&self, key: &str) -> Option<usize> {
        let found = match self.src {
            Source::Envelope => ENVELOPE_KEYS.iter().position(|k| *k == key),
            Source::Message => MESSAGE_KEYS.iter().position(|k| *k == key),
            Source::Row(_) => self.row()?.columns.iter().position(|c| &*c.name == key),
        };
        found.filter(|i| self.present(*i))
    }

    /// The slot a Python key names, if any (only `str` keys exist).
    fn index_of(&self, key: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
        match key.cast::<PyString>() {
            Ok(s) => Ok(self.index(s.to_str()?)),
            Err(_) => Ok(None),
        }
    }

    fn slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.cache.len()).filter(|i| self.present(*i))
    }

    fn value(&self, py: Python<'_>, i: usize) -> PyResult<Py<PyAny>> {
        let obj = self.cache[i].get_or_try_init(py, || self.compute(py, i))?;
        Ok(obj.clone_ref(py))
    }

    fn compute(&self, py: Python<'_>, i: usize) -> PyResult<Py<PyAny>> {
        match self.src {
            Source::Envelope => self.envelope_field(py, i),
            Source::Message => self.message_field(py, i),
            Source::Row(_) => match self.row() {
                Some(row) => convert::value(py, &row.columns[i].value),
                None => Ok(py.None()),
            },
        }
    }

    fn sub(&self, py: Python<'_>, present: bool, src: Source) -> PyResult<Py<PyAny>> {
        if present {
            Data::new(self.ev.clone(), src).into_py_any(py)
        } else {
            Ok(py.None())
        }
    }

    fn envelope_field(&self, py: Python<'_>, i: usize) -> PyResult<Py<PyAny>> {
        let e = &*self.ev;
        let opt = |s: Option<&str>| s.map_or_else(|| py.None(), |s| convert::text(py, s));
        match ENVELOPE_KEYS[i] {
            "op" => Ok(convert::text(py, e.op.as_str())),
            "schema" => Ok(opt(e.schema.as_deref())),
            "table" => Ok(opt(e.table.as_deref())),
            "partition_of" => match &e.partition_of {
                Some(p) => {
                    let d = PyDict::new(py);
                    d.set_item("schema", &*p.schema)?;
                    d.set_item("table", &*p.table)?;
                    Ok(d.into_any().unbind())
                }
                None => Ok(py.None()),
            },
            "lsn" => Ok(convert::text(py, &e.lsn.to_string())),
            "commit_lsn" => Ok(convert::text(py, &e.commit_lsn.to_string())),
            "xid" => e.xid.into_py_any(py),
            "ts" => match e.ts {
                Some(ts) => convert::value(py, &Value::TimestampTz(ts.to_string())),
                None => Ok(py.None()),
            },
            "data" if e.message.is_some() => self.sub(py, true, Source::Message),
            "data" => self.sub(py, e.data.is_some(), Source::Row(RowKind::Data)),
            "old" => self.sub(py, e.old.is_some(), Source::Row(RowKind::Old)),
            "key" => self.sub(py, e.key.is_some(), Source::Row(RowKind::Key)),
            _ => {
                let cols: Vec<&str> = e.unchanged.iter().map(|c| &**c).collect();
                PyList::new(py, cols)?.into_py_any(py)
            }
        }
    }

    fn message_field(&self, py: Python<'_>, i: usize) -> PyResult<Py<PyAny>> {
        let Some(m) = &self.ev.message else {
            return Ok(py.None());
        };
        match i {
            0 => Ok(convert::text(py, &m.prefix)),
            1 => Ok(match m.content_str() {
                Some(text) => convert::text(py, text),
                None => convert::text(py, &hex(&m.content)),
            }),
            _ => m.transactional.into_py_any(py),
        }
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for i in self.slots() {
            dict.set_item(self.name(i), deep(py, self.value(py, i)?.bind(py))?)?;
        }
        Ok(dict)
    }
}

/// `\x` and lower-case hex, as events write bytes.
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `obj` with every nested [`Data`] made a dict.
fn deep(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    match obj.cast::<Data>() {
        Ok(d) => Ok(d.get().to_dict(py)?.into_any().unbind()),
        Err(_) => Ok(obj.clone().unbind()),
    }
}

#[pymethods]
impl Data {
    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.index_of(key)? {
            Some(i) => self.value(py, i),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    /// The value of `key`, or `default` when there is no such key.
    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match self.index_of(key)? {
            Some(i) => self.value(py, i),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    fn __contains__(&self, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.index_of(key)?.is_some())
    }

    fn __len__(&self) -> usize {
        self.slots().count()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(self.keys(py)?.into_any().try_iter()?.into_any())
    }

    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.slots().map(|i| self.name(i)))
    }

    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let values = self
            .slots()
            .map(|i| self.value(py, i))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, values)
    }

    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .slots()
            .map(|i| PyTuple::new(py, [convert::text(py, self.name(i)), self.value(py, i)?]))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// A plain dict of this mapping (nested mappings too).
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.to_dict(py)
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let mine = self.to_dict(py)?;
        if let Ok(d) = other.cast::<Data>() {
            return mine.eq(d.get().to_dict(py)?);
        }
        if other.cast::<PyDict>().is_ok() {
            return mine.eq(other);
        }
        Ok(false)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.to_dict(py)?.repr()?.to_string())
    }
}
