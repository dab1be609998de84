//! An event's variables as CEL reads them, built per evaluation without copying the event.
//!
//! Why not bind a `HashMap` per variable (as this did before): binding `data` meant a map of
//! every column with a `String` for each column name and text value, which the `cel` crate then
//! copied again into its own value types; per event that cost ~6 µs, nearly all of an
//! evaluation. Here instead:
//!
//! * **Answered on demand.** The scope is a [`VariableResolver`]: only the variables the
//!   expression reads are built, once per event, in an array (no name-keyed map, no `String`).
//! * **Borrowed, not copied.** Text values, column names, the schema and table are `CelString`s
//!   and map keys borrowing the event for `'e`. Column-name keys therefore need no interning per
//!   relation: a key is a borrow of the `Arc<str>` the row already shares with the relation.
//! * **Lazy rows where nobody can tell.** When an expression only ever selects fields of a row
//!   (`data.status`, `has(data.status)`), as decided once at compile time ([`Plan`]), the row is
//!   a [`LazyRow`]: a select looks up its one column and converts that value alone. A row used
//!   any other way (`"x" in data`, `data == {...}`, `size(data)`, iterated, passed to a
//!   function) is a full `CelMap` as before: a lazy value has no `Value` form for functions to
//!   take, and cannot be compared, iterated or shown. The nested envelope's `data` is lazy on
//!   the same condition ([`LazyNested`]), and its rows in turn.
//! * **Paths answered whole.** CEL asks for `data.status` before `data`: for a lazy row the
//!   scope answers the column straight away ([`Scope::path`]), skipping the select. The WAL
//!   program names such paths as identifiers to make the most of it (`plain.rs`).
//!
//! What a variable holds, and its CEL type, is exactly what the former maps held: the values of
//! rarely read fields (`lsn`, `ts`, a message's `data`, proxy events) are still built by
//! [`variable`] and converted as `Context::add_variable_from_value` converted them, and the
//! test `the_lazy_scope_agrees_with_full_maps` (expr.rs) evaluates many expressions on many
//! events both ways, against the former implementation kept in `expr/reference.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{Expr as Node, IdedExpr};
use cel::common::traits::Indexer;
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, MAP_TYPE, Type,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::objects::Key;
use cel::{ExecutionError, Value as Cel};

use super::{Envelope, NESTED_DATA_FIELDS, VARIABLES, walk};
use crate::event::{Event, Row, Value, bytea_hex};

/// The row images, in the order of [`Plan::rows`].
const IMAGES: [&str; 3] = ["data", "old", "key"];

/// How an expression's variables are bound: decided once, at compile time.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    envelope: Envelope,
    /// The variables the expression reads (free ones): only those are built per event.
    vars: Vec<&'static str>,
    /// Native `data`, `old`, `key` (nested: `data.data`, `data.old`, `data.key`): lazy when the
    /// expression only ever selects fields of it.
    pub(super) rows: [bool; 3],
    /// Nested: `data` itself only ever has fields selected.
    pub(super) nested: bool,
}

impl Plan {
    pub(super) fn new(
        root: &IdedExpr,
        envelope: Envelope,
        vars: impl IntoIterator<Item = &'static str>,
    ) -> Plan {
        let vars = vars.into_iter().collect();
        match envelope {
            Envelope::Native => Plan {
                envelope,
                vars,
                rows: IMAGES.map(|image| only_selected(root, &[image])),
                nested: false,
            },
            Envelope::Nested => {
                let nested = only_selected(root, &["data"]);
                // An eager nested `data` may be compared or shown whole: its rows must be maps.
                let rows = IMAGES.map(|image| nested && only_selected(root, &["data", image]));
                Plan {
                    envelope,
                    vars,
                    rows,
                    nested,
                }
            }
        }
    }

    /// The variables the expression reads.
    #[cfg(test)]
    pub(super) fn vars(&self) -> &[&'static str] {
        &self.vars
    }
}

/// Whether every occurrence of `path` (`data`, `data.old`) in the tree is the operand of a
/// select (`path.f` or `has(path.f)`). Occurrences bound by a comprehension count too, which
/// only ever makes the answer `false`, the safe one.
fn only_selected(root: &IdedExpr, path: &[&str]) -> bool {
    let (mut uses, mut selects) = (0usize, 0usize);
    walk(root, &mut |node| {
        uses += usize::from(is_path(node, path));
        if let Node::Select(sel) = &node.expr {
            selects += usize::from(is_path(&sel.operand, path));
        }
    });
    uses == selects
}

/// Whether `node` spells `path`: `data` is an identifier, `data.old` a select on it.
fn is_path(node: &IdedExpr, path: &[&str]) -> bool {
    match (&node.expr, path) {
        (Node::Ident(name), [only]) => name == only,
        (Node::Select(sel), [init @ .., last]) if !sel.test && !init.is_empty() => {
            sel.field == *last && is_path(&sel.operand, init)
        }
        _ => false,
    }
}

/// The variables of one evaluation, resolved by name (one slot per [`VARIABLES`] entry; the
/// nested names are a subset).
pub(super) struct Scope<'e> {
    slots: [Slot<'e>; VARIABLES.len()],
}

impl<'e> Scope<'e> {
    /// Builds the variables `plan` says the expression reads, for `event`.
    pub(super) fn new(event: &'e Event, plan: &Plan) -> Scope<'e> {
        let mut slots = std::array::from_fn(|_| Slot::Unbound);
        for var in &plan.vars {
            if let Some(i) = index(var) {
                slots[i] = match plan.envelope {
                    Envelope::Native => native(event, var, plan.rows),
                    Envelope::Nested => nested(event, var, plan),
                };
            }
        }
        Scope { slots }
    }

    /// `head.rest` read straight from the event, when `head` is lazy and has it: the value
    /// selecting `rest` on `head` gives, without building `head` or selecting. `Unbound`
    /// leaves it to CEL, which then resolves `head` and selects (and says what is missing).
    fn path(&self, head: &str, rest: &str) -> Slot<'e> {
        let Some(i) = index(head) else {
            return Slot::Unbound;
        };
        match (&self.slots[i], split_dot(rest)) {
            (Slot::Row(row), None) => row.column(rest),
            (Slot::Nested(data), None) => data.field(rest),
            (Slot::Nested(data), Some((image, column))) if split_dot(column).is_none() => {
                match data.field(image) {
                    Slot::Row(row) => row.column(column),
                    _ => Slot::Unbound,
                }
            }
            _ => Slot::Unbound,
        }
    }
}

/// `a.b` split at its first dot. A byte search: these names are a few bytes long, and this
/// runs on every lookup.
fn split_dot(s: &str) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == b'.')?;
    Some((&s[..i], &s[i + 1..]))
}

/// Where a variable's slot is.
fn index(name: &str) -> Option<usize> {
    VARIABLES.iter().position(|v| *v == name)
}

/// CEL asks for a qualified name (`data.status`) whole before asking for its prefixes (`data`)
/// and selecting the rest: the whole name is answered when that is cheaper ([`Scope::path`]).
/// Either way the value is the same, and a missing field is reported by CEL's own select.
impl VariableResolver for Scope<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        match split_dot(name) {
            None => self.slots[index(name)?].val().map(CowVal::Borrowed),
            Some((head, rest)) => self.path(head, rest).into_option().map(CowVal::Owned),
        }
    }
}

/// One variable's value. The common ones are held inline, so binding them allocates nothing.
enum Slot<'e> {
    /// Not read by the expression.
    Unbound,
    Null,
    Str(CelString<'e>),
    Int(CelInt),
    Row(LazyRow<'e>),
    Nested(LazyNested<'e>),
    Val(Box<dyn Val + 'e>),
}

impl<'e> Slot<'e> {
    fn val(&self) -> Option<&(dyn Val + 'e)> {
        Some(match self {
            Slot::Unbound => return None,
            Slot::Null => &CelNull,
            Slot::Str(s) => s,
            Slot::Int(i) => i,
            Slot::Row(r) => r,
            Slot::Nested(n) => n,
            Slot::Val(v) => v.as_ref(),
        })
    }

    /// The value, boxed; `None` for `Unbound`.
    fn into_option(self) -> Option<Box<dyn Val + 'e>> {
        match self {
            Slot::Unbound => None,
            slot => Some(slot.into_val()),
        }
    }

    fn into_val(self) -> Box<dyn Val + 'e> {
        match self {
            Slot::Unbound | Slot::Null => Box::new(CelNull),
            Slot::Str(s) => Box::new(s),
            Slot::Int(i) => Box::new(i),
            Slot::Row(r) => Box::new(r),
            Slot::Nested(n) => Box::new(n),
            Slot::Val(v) => v,
        }
    }
}

/// A native variable; `lazy` says which rows may be [`LazyRow`]s.
fn native<'e>(e: &'e Event, name: &str, lazy: [bool; 3]) -> Slot<'e> {
    let str_or_null = |s: Option<&'e str>| s.map_or(Slot::Null, |s| Slot::Str(s.into()));
    let row = |row: Option<&'e Row>, lazy: bool| match row {
        None => Slot::Null,
        Some(row) if lazy => Slot::Row(LazyRow(row)),
        Some(row) => Slot::Val(Box::new(eager_row(row))),
    };
    if e.proxy.is_some() {
        return from_value(variable(e, name));
    }
    match name {
        "type" => Slot::Str("wal".into()),
        "op" => Slot::Str(e.op.as_str().into()),
        "schema" => str_or_null(e.schema.as_deref()),
        "table" => str_or_null(e.table.as_deref()),
        "xid" => e.xid.map_or(Slot::Null, |x| Slot::Int(i64::from(x).into())),
        // A message's `data` is the message (built by `variable`), not a row.
        "data" if e.message.is_none() => row(e.data.as_ref(), lazy[0]),
        "old" => row(e.old.as_ref(), lazy[1]),
        "key" => row(e.key.as_ref(), lazy[2]),
        // Rarely read, and formatted anyway (lsn, ts) or small: built as they always were.
        _ => from_value(variable(e, name)),
    }
}

/// A variable of the nested envelope: `data` of a WAL event holds its native fields; a proxy
/// event reads as in the native form.
fn nested<'e>(e: &'e Event, name: &str, plan: &Plan) -> Slot<'e> {
    if e.proxy.is_some() {
        return native(e, name, [false; 3]);
    }
    match name {
        "type" => Slot::Str("wal".into()),
        "data" if plan.nested => Slot::Nested(LazyNested {
            event: e,
            rows: plan.rows,
        }),
        "data" => {
            let map: HashMap<CelMapKey<'e>, Box<dyn Val + 'e>> = NESTED_DATA_FIELDS
                .iter()
                .filter(|f| has_nested_field(e, f))
                .map(|f| (CelMapKey::from(*f), native(e, f, [false; 3]).into_val()))
                .collect();
            Slot::Val(Box::new(CelMap::from(map)))
        }
        // A WAL event's `seq` and `ts` are not at the top of the nested form.
        _ => Slot::Null,
    }
}

/// Whether the nested `data` of a WAL event has `field`: the JSON form has `partition_of` only
/// when it is set.
fn has_nested_field(e: &Event, field: &str) -> bool {
    field != "partition_of" || e.partition_of.is_some()
}

/// A value built the former way, converted as `Context::add_variable_from_value` did.
fn from_value<'e>(v: Cel) -> Slot<'e> {
    match v {
        Cel::Null => Slot::Null,
        v => Slot::Val(Box::<dyn Val>::try_from(v).expect("event values are plain data")),
    }
}

/// A row as a CEL map, keys and text values borrowing the row.
fn eager_row(row: &Row) -> CelMap<'_> {
    let map: HashMap<CelMapKey<'_>, Box<dyn Val + '_>> = row
        .columns
        .iter()
        .map(|c| (CelMapKey::from(&*c.name), column_val(&c.value)))
        .collect();
    CelMap::from(map)
}

/// A column value as [`column_val`] gives it, the common kinds held inline.
fn column_slot(v: &Value) -> Slot<'_> {
    match v {
        Value::Null => Slot::Null,
        Value::Int(i) => Slot::Int(CelInt::from(*i)),
        Value::Json(_) | Value::Array(_) | Value::Bytea(_) | Value::Float(_) | Value::Bool(_) => {
            Slot::Val(column_val(v))
        }
        text => match text.as_str() {
            Some(s) => Slot::Str(s.into()),
            None => Slot::Null,
        },
    }
}

/// A column value as [`value`] gives it, borrowing text rather than copying it.
fn column_val(v: &Value) -> Box<dyn Val + '_> {
    match v {
        Value::Null => Box::new(CelNull),
        Value::Bool(b) => Box::new(CelBool::from(*b)),
        Value::Int(i) => Box::new(CelInt::from(*i)),
        Value::Float(f) if f.is_nan() => Box::new(CelString::from("NaN")),
        Value::Float(f) if f.is_infinite() => Box::new(CelString::from(if *f > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        })),
        Value::Float(f) => Box::new(CelDouble::from(*f)),
        Value::Bytea(b) => Box::new(CelString::from(bytea_hex(b))),
        Value::Array(items) => Box::new(CelList::from(
            items.iter().map(column_val).collect::<Vec<_>>(),
        )),
        // Parsed into maps and lists: rare enough to build the former way.
        Value::Json(_) => from_value(value(v)).into_val(),
        // Every other kind is text in JSON (numeric, temporal, uuid, other).
        text => match text.as_str() {
            Some(s) => Box::new(CelString::from(s)),
            None => Box::new(CelNull),
        },
    }
}

/// The name a select asks a lazy value for. A lazy value is only ever the operand of a select
/// ([`Plan`]), which indexes it with the field name as a string.
fn field_name(idx: &dyn Val) -> Result<&str, ExecutionError> {
    idx.downcast_ref::<CelString>()
        .map(|s| s.inner())
        .ok_or_else(|| ExecutionError::UnexpectedType {
            got: idx.get_type().name().to_owned(),
            want: "map key".to_owned(),
        })
}

/// What a map says of a key it lacks: the error `has()` reads as false, and the evaluation as
/// a missing field.
fn no_such_key(name: &str) -> ExecutionError {
    ExecutionError::NoSuchKey(Arc::new(name.to_owned()))
}

/// A row read a column at a time: `data.status` converts that one value.
#[derive(Debug, Clone, Copy)]
pub(super) struct LazyRow<'e>(&'e Row);

impl Val for LazyRow<'_> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(*self)
    }
}

impl<'e> LazyRow<'e> {
    /// The column's value; `Unbound` if the row has no such column.
    fn column(&self, name: &str) -> Slot<'e> {
        let row: &'e Row = self.0;
        // The last of a repeated name, as collecting the columns into a map kept.
        match row.columns.iter().rev().find(|c| &*c.name == name) {
            Some(c) => column_slot(&c.value),
            None => Slot::Unbound,
        }
    }
}

impl<'e> Indexer for LazyRow<'e> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = field_name(idx)?;
        match self.column(name).into_option() {
            Some(v) => Ok(CowVal::Owned(v)),
            None => Err(no_such_key(name)),
        }
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

/// The nested envelope's `data` of a WAL event, read a field at a time: `data.table` builds the
/// table name alone.
#[derive(Debug, Clone, Copy)]
pub(super) struct LazyNested<'e> {
    event: &'e Event,
    /// Which of its rows may be lazy in turn.
    rows: [bool; 3],
}

impl Val for LazyNested<'_> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(*self)
    }
}

impl<'e> LazyNested<'e> {
    /// The field's value; `Unbound` if the nested `data` has no such field.
    fn field(&self, name: &str) -> Slot<'e> {
        let event: &'e Event = self.event;
        match NESTED_DATA_FIELDS.iter().find(|f| **f == name) {
            Some(f) if has_nested_field(event, f) => native(event, f, self.rows),
            _ => Slot::Unbound,
        }
    }
}

impl<'e> Indexer for LazyNested<'e> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = field_name(idx)?;
        match self.field(name).into_option() {
            Some(v) => Ok(CowVal::Owned(v)),
            None => Err(no_such_key(name)),
        }
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

// ---- the values as `Value`s: what fields are, in the JSON contract's terms ------------------

pub(super) fn string(s: &str) -> Cel {
    Cel::String(Arc::new(s.to_string()))
}

fn opt_string(s: Option<&str>) -> Cel {
    s.map(string).unwrap_or(Cel::Null)
}

/// A native variable as a `Value`: how every variable was built before [`Scope`], and still how
/// the rarely read ones are.
pub(super) fn variable(e: &Event, name: &str) -> Cel {
    if let Some(p) = &e.proxy {
        // A proxy event has `type`, `seq`, `ts` and `data`; every WAL field is absent.
        return match name {
            "type" => string("proxy"),
            "seq" => Cel::Int(i64::try_from(p.seq).unwrap_or(i64::MAX)),
            "ts" => e.ts.map(|t| string(&t.to_string())).unwrap_or(Cel::Null),
            // Null fields (no query on a connection-level event) are absent, so
            // `data.query.startsWith(...)` is no match there rather than a type error.
            "data" => {
                let map: HashMap<Key, Cel> = p
                    .data
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (key(k), json_value(v)))
                    .collect();
                map.into()
            }
            _ => Cel::Null,
        };
    }
    match name {
        "type" => string("wal"),
        "op" => string(e.op.as_str()),
        "schema" => opt_string(e.schema.as_deref()),
        "table" => opt_string(e.table.as_deref()),
        "lsn" => string(&e.lsn.to_string()),
        "commit_lsn" => string(&e.commit_lsn.to_string()),
        "xid" => e.xid.map(|x| Cel::Int(i64::from(x))).unwrap_or(Cel::Null),
        "ts" => e.ts.map(|t| string(&t.to_string())).unwrap_or(Cel::Null),
        "data" => match (&e.message, &e.data) {
            (Some(m), _) => {
                let content = match m.content_str() {
                    Some(text) => text.to_string(),
                    None => bytea_hex(&m.content),
                };
                let mut map: HashMap<Key, Cel> = HashMap::with_capacity(3);
                map.insert(key("prefix"), string(&m.prefix));
                map.insert(key("content"), Cel::String(Arc::new(content)));
                map.insert(key("transactional"), Cel::Bool(m.transactional));
                map.into()
            }
            (None, Some(row)) => row_value(row),
            (None, None) => Cel::Null,
        },
        "old" => e.old.as_ref().map(row_value).unwrap_or(Cel::Null),
        "key" => e.key.as_ref().map(row_value).unwrap_or(Cel::Null),
        "unchanged" => Cel::List(Arc::new(e.unchanged.iter().map(|c| string(c)).collect())),
        "partition_of" => match &e.partition_of {
            Some(p) => {
                let mut map: HashMap<Key, Cel> = HashMap::with_capacity(2);
                map.insert(key("schema"), string(&p.schema));
                map.insert(key("table"), string(&p.table));
                map.into()
            }
            None => Cel::Null,
        },
        _ => Cel::Null,
    }
}

fn key(s: &str) -> Key {
    Key::String(Arc::new(s.to_string()))
}

pub(super) fn row_value(row: &Row) -> Cel {
    let map: HashMap<Key, Cel> = row
        .columns
        .iter()
        .map(|c| (key(&c.name), value(&c.value)))
        .collect();
    map.into()
}

/// A column value as its JSON form would read.
pub(crate) fn value(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Int(i) => Cel::Int(*i),
        Value::Float(f) if f.is_nan() => string("NaN"),
        Value::Float(f) if f.is_infinite() => {
            string(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Float(f) => Cel::Float(*f),
        Value::Bytea(b) => Cel::String(Arc::new(bytea_hex(b))),
        Value::Json(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(json) => json_value(&json),
            Err(_) => string(raw.get()),
        },
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(value).collect())),
        // Every other kind is text in JSON (numeric, temporal, uuid, other).
        text => text.as_str().map(string).unwrap_or(Cel::Null),
    }
}

fn json_value(v: &serde_json::Value) -> Cel {
    match v {
        serde_json::Value::Null => Cel::Null,
        serde_json::Value::Bool(b) => Cel::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Cel::Int(i),
            (None, Some(u), _) => Cel::UInt(u),
            (_, _, Some(f)) => Cel::Float(f),
            _ => string(&n.to_string()),
        },
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(items) => {
            Cel::List(Arc::new(items.iter().map(json_value).collect()))
        }
        serde_json::Value::Object(map) => {
            let m: HashMap<Key, Cel> = map.iter().map(|(k, v)| (key(k), json_value(v))).collect();
            m.into()
        }
    }
}
