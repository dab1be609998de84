//! CEL expressions over events: `--where`, `--until`, `walwatch assert --where` and the
//! library's `*_expr` assertions all compile through here.
//!
//! Why a layer over the `cel` crate:
//!
//! * **Errors before I/O.** Syntax errors and unknown variables are reported at compile time,
//!   with the line and column, so a typo fails before any connection is opened (exit 2).
//! * **No silent false.** Plain CEL says `"12.50" == 12.5` is simply false. Events carry
//!   numeric, date and uuid columns as strings (the JSON contract), so that comparison is almost
//!   always a mistake; here `==`, `!=` and `in` between a string and a number (or any two
//!   different kinds) are a runtime *error* naming both values, as `<` already is in CEL.
//! * **Absent is not an error.** A column the event does not have (`data.status` on a BEGIN, on
//!   a DELETE that only carries the key, or on another table) makes the expression false for that
//!   event, as `has()` would. Which fields were missing is kept for the failure report, so a
//!   misspelt column is still pointed out.
//! * **Values as in JSON.** An event's variables are exactly its JSON form (ARCHITECTURE.md
//!   "Event"): numbers as numbers, numeric/temporal/uuid as strings, json/jsonb as maps and
//!   lists, NaN/Infinity as strings. An expression means the same on a live stream and on a
//!   recorded JSONL file.
//! * **In the envelope the user sees.** Events written with `--envelope nested` read
//!   `{"type": ..., "data": {"op": ..., "table": ..., "data": {row}}}`, and Python harnesses see
//!   that shape too; an expression compiled for [`Envelope::Nested`] reads the same paths
//!   (`data.table`, `data.data.status`), so what the user reads in the file is what they write.
//! * **Cheap per event.** Nothing is built that the expression does not read: leading
//!   `field == literal` conjuncts are decided on the event (`expr/quick.rs`); otherwise CEL asks
//!   for variables and fields as it needs them, answered from the event without copying it
//!   (`expr/scope.rs`), and on WAL events runs a program where what cannot differ there is done
//!   the cheap way (`expr/plain.rs`). About 1 µs an event for a four-conjunct predicate through
//!   CEL (`benches/decode.rs`).

mod plain;
mod quick;
#[cfg(test)]
mod reference;
mod scope;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr, LiteralValue};
use cel::common::functions::Function;
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelUInt, DYN_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::objects::Key;
use cel::{Context, Env, ExecutionError, Program, Value as Cel};

use crate::event::Event;
pub use crate::event_read::Envelope;

/// The variables an expression may use, one per field of the event's JSON form.
pub const VARIABLES: &[&str] = &[
    "type",
    "op",
    "schema",
    "table",
    "partition_of",
    "lsn",
    "commit_lsn",
    "xid",
    "ts",
    "data",
    "old",
    "key",
    "unchanged",
    "seq",
];

/// The variables of the nested envelope: `data` holds every other field of a WAL event (its
/// native variables but `type`); a proxy event's `seq`, `ts` and `data` are where they are in
/// the native form too.
pub const NESTED_VARIABLES: &[&str] = &["type", "data", "seq", "ts"];

/// The native variables a nested `data` holds for a WAL event, in the order the JSON writes
/// them: what Python's `Event.data` holds too.
pub const NESTED_DATA_FIELDS: &[&str] = &[
    "op",
    "schema",
    "table",
    "partition_of",
    "lsn",
    "commit_lsn",
    "xid",
    "ts",
    "data",
    "old",
    "key",
    "unchanged",
];

/// Why an expression could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct CompileError {
    pub expression: String,
    /// 1-based line and column of the problem, when known.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl CompileError {
    fn describe(&self) -> String {
        format!(
            "`{}`: line {}, column {}: {}",
            self.expression, self.line, self.column, self.message
        )
    }
}

/// An expression that failed on an event: a type error the user has to fix, never a silent
/// false.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{expr}` failed on {event}: {message}")]
pub struct EvalError {
    pub expr: String,
    /// `INSERT public.orders at 0/1A2B3C8`.
    pub event: String,
    pub message: String,
}

/// A compiled expression. Cheap to share (`Arc`) across threads.
pub struct Expr {
    source: String,
    /// The program with `==`, `!=` and `in` made strict (see the module docs).
    root: IdedExpr,
    /// `root` as evaluated on WAL events: the strict comparisons that cannot fail there made
    /// plain, the fields of lazy rows named as identifiers ([`plain`]).
    wal_root: IdedExpr,
    /// The top-level `&&` operands, for near-miss reports.
    conjuncts: Vec<IdedExpr>,
    envelope: Envelope,
    /// How the variables are bound per event ([`scope`]).
    plan: scope::Plan,
    /// The conjuncts decided without CEL ([`quick`]).
    quick: Vec<Option<quick::QuickEq>>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Match,
    NoMatch,
    /// False because the event lacks a field the expression reads (named here).
    Missing(String),
}

impl Verdict {
    pub fn is_match(&self) -> bool {
        *self == Verdict::Match
    }
}

const STRICT_EQ: &str = "__walwatch_eq";
const STRICT_NE: &str = "__walwatch_ne";
const STRICT_IN: &str = "__walwatch_in";

impl Expr {
    /// Compiles `source` for native events; checks its syntax and that it uses only the
    /// event's variables.
    pub fn compile(source: &str) -> Result<Expr, CompileError> {
        Expr::compile_in(source, Envelope::Native)
    }

    /// Compiles `source` for events in `envelope` (module docs).
    pub fn compile_in(source: &str, envelope: Envelope) -> Result<Expr, CompileError> {
        let known = match envelope {
            Envelope::Native => VARIABLES,
            Envelope::Nested => NESTED_VARIABLES,
        };
        let program = Program::compile(source).map_err(|errs| {
            let first = errs.errors.first();
            let (line, column) = first
                .map(|e| (e.pos.0.max(1) as usize, e.pos.1.max(1) as usize))
                .unwrap_or((1, 1));
            let message = first
                .map(|e| e.msg.clone())
                .unwrap_or_else(|| "syntax error".into());
            CompileError {
                expression: source.to_string(),
                line,
                column,
                message,
            }
        })?;
        let mut vars = BTreeSet::new();
        let mut unknown = None;
        free_variables(
            program.expression(),
            &mut Vec::new(),
            &mut |name, id| match known.iter().find(|v| **v == name) {
                Some(v) => {
                    vars.insert(*v);
                }
                None if unknown.is_none() => unknown = Some((name.to_string(), id)),
                None => {}
            },
        );
        if let Some((name, id)) = unknown {
            let (line, column) = position(source, program.source_info().offset_for(id));
            return Err(CompileError {
                expression: source.to_string(),
                line,
                column,
                message: format!(
                    "unknown variable `{name}`: the variables are {}{}",
                    known.join(", "),
                    match envelope {
                        Envelope::Nested if VARIABLES.contains(&name.as_str()) =>
                            format!(" (these events are nested: write `data.{name}`)"),
                        _ => String::new(),
                    }
                ),
            });
        }
        let mut root = program.expression().clone();
        make_strict(&mut root);
        let mut conjuncts = Vec::new();
        split_and(&root, &mut conjuncts);
        let plan = scope::Plan::new(&root, envelope, vars.iter().copied());
        Ok(Expr {
            source: source.to_string(),
            quick: quick::plan(&conjuncts, envelope),
            wal_root: plain::for_wal(&root, envelope, &plan),
            plan,
            root,
            conjuncts,
            envelope,
        })
    }

    /// The envelope the expression reads events in.
    pub fn envelope(&self) -> Envelope {
        self.envelope
    }

    /// Where a native field sits in this expression's envelope: `table` or `data.table`.
    fn path_of(&self, field: &str) -> String {
        match self.envelope {
            Envelope::Native => field.to_string(),
            Envelope::Nested => format!("data.{field}"),
        }
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether `event` matches. A type error is an `Err`; a missing field is no match.
    pub fn matches(&self, event: &Event) -> Result<bool, EvalError> {
        self.eval(event).map(|v| v.is_match())
    }

    /// Evaluates on `event`, telling a missing field apart from a plain no-match.
    pub fn eval(&self, event: &Event) -> Result<Verdict, EvalError> {
        if let Some(verdict) = quick::verdict(&self.quick, event) {
            return Ok(verdict);
        }
        self.eval_by_cel(event)
    }

    /// [`Expr::eval`] through CEL alone: the reference its fast path is checked against in
    /// tests, and the baseline `benches/decode.rs` measures it beside.
    #[doc(hidden)]
    pub fn eval_by_cel(&self, event: &Event) -> Result<Verdict, EvalError> {
        with_scope(self, event, |ctx| {
            if event.proxy.is_none() {
                // The WAL program gives the strict one's answer when it gives one ([`plain`]);
                // a failure, or a missing field, is told by the strict program.
                if let Ok(v @ (Verdict::Match | Verdict::NoMatch)) = judge(&self.wal_root, ctx) {
                    return Ok(v);
                }
            }
            judge(&self.root, ctx)
        })
        .map_err(|message| self.eval_error(event, message))
    }

    fn eval_error(&self, event: &Event, message: String) -> EvalError {
        EvalError {
            expr: self.source.clone(),
            event: describe_event(event),
            message,
        }
    }

    /// The literal a top-level `&&` operand compares `field` with (`table == "orders"` gives
    /// `orders` for `table`): what the expression is looking for, for reports and diagnostics.
    pub fn wanted(&self, field: &str) -> Option<String> {
        let field = self.path_of(field);
        let field = field.as_str();
        self.conjuncts.iter().find_map(|c| {
            let Node::Call(call) = &c.expr else {
                return None;
            };
            if call.func_name != STRICT_EQ || call.args.len() != 2 {
                return None;
            }
            let (a, b) = (&call.args[0], &call.args[1]);
            for (path, lit) in [(a, b), (b, a)] {
                if path_text(path).as_deref() == Some(field)
                    && let Node::Literal(LiteralValue::String(s)) = &lit.expr
                {
                    return Some(s.inner().to_string());
                }
            }
            None
        })
    }

    /// Every `data.X`, `old.X`, `key.X` path the expression reads, as `(variable, column)`.
    pub fn columns_read(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let nested = self.envelope == Envelope::Nested;
        walk(&self.root, &mut |node| {
            let Node::Select(sel) = &node.expr else {
                return;
            };
            // Native `data.X`; nested `data.data.X`.
            let var = match &sel.operand.expr {
                Node::Ident(var) if !nested => var.as_str(),
                Node::Select(inner) if nested => match &inner.operand.expr {
                    Node::Ident(top) if top == "data" => inner.field.as_str(),
                    _ => return,
                },
                _ => return,
            };
            if matches!(var, "data" | "old" | "key")
                && !out.iter().any(|(v, c)| v == var && *c == sel.field)
            {
                out.push((var.to_string(), sel.field.clone()));
            }
        });
        out
    }

    /// For a non-matching event: each top-level `&&` operand that does not hold, written out,
    /// with the values its fields had (`data.status == "shipped"  (data.status is "paid")`).
    /// Returns how many operands held, and the failing ones.
    pub fn explain(&self, event: &Event) -> (usize, Vec<String>) {
        let res = with_scope(self, event, |ctx| {
            let mut held = 0;
            let mut failed = Vec::new();
            for c in &self.conjuncts {
                match judge(c, ctx) {
                    Ok(Verdict::Match) => held += 1,
                    Ok(Verdict::Missing(field)) => {
                        failed.push(format!("{}  ({field} is absent)", unparse(c)))
                    }
                    Ok(Verdict::NoMatch) => {
                        let mut seen = Vec::new();
                        operand_values(c, ctx, &mut seen);
                        if seen.is_empty() {
                            failed.push(unparse(c));
                        } else {
                            failed.push(format!("{}  ({})", unparse(c), seen.join(", ")));
                        }
                    }
                    Err(e) => failed.push(format!("{}  (error: {e})", unparse(c))),
                }
            }
            Ok((held, failed))
        });
        res.unwrap_or_else(|e| (0, vec![e]))
    }
}

/// `INSERT public.orders at 0/1A2B3C8`.
pub fn describe_event(e: &Event) -> String {
    if let Some(p) = &e.proxy {
        let field = |k: &str| {
            p.data
                .get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
        };
        return format!("proxy {} #{} `{}`", field("action"), p.seq, field("query"));
    }
    match (&e.schema, &e.table) {
        (Some(s), Some(t)) => format!("{} {s}.{t} at {}", e.op, e.lsn),
        _ => format!("{} at {}", e.op, e.lsn),
    }
}

thread_local! {
    /// The root context with walwatch's strict operators, built once per thread: building the
    /// CEL standard environment per event would dominate the cost of an evaluation.
    static ROOT: RefCell<Option<Context<'static, 'static>>> = const { RefCell::new(None) };
}

fn root_context() -> Context<'static, 'static> {
    // As overloads of the environment, called with the resolved arguments themselves: a
    // function added to the context would be looked for after the overloads, and be given
    // `Value` copies (a string argument allocated twice over).
    let mut env = Env::stdlib();
    let strict: [(&str, &str, Function); 3] = [
        (STRICT_EQ, "walwatch_eq", |args| {
            strict_eq_val(&*args[0], &*args[1], "==").map(cel_bool)
        }),
        (STRICT_NE, "walwatch_ne", |args| {
            strict_eq_val(&*args[0], &*args[1], "!=").map(|eq| cel_bool(!eq))
        }),
        (STRICT_IN, "walwatch_in", |args| {
            strict_in_val(&*args[0], &*args[1]).map(cel_bool)
        }),
    ];
    for (name, id, op) in strict {
        // Names that no standard overload uses, so adding them cannot fail. Declared for two
        // arguments of any type: only `make_strict` writes these calls, always with two.
        let _ = env.add_overload(name, id, vec![DYN_TYPE, DYN_TYPE], op);
    }
    Context::with_env(Arc::new(env))
}

fn cel_bool<'c, 'k>(b: bool) -> CowVal<'c, 'k> {
    CowVal::Borrowed(if b { &CelBool::TRUE } else { &CelBool::FALSE })
}

/// Runs `f` in a scope holding the event's variables ([`scope`]).
fn with_scope<T>(
    expr: &Expr,
    event: &Event,
    f: impl FnOnce(&Context) -> Result<T, String>,
) -> Result<T, String> {
    let scope = scope::Scope::new(event, &expr.plan);
    ROOT.with(|root| {
        let mut root = root.borrow_mut();
        let root = root.get_or_insert_with(root_context);
        f(&child(root, &scope))
    })
}

/// A child of `root` resolving variables with `resolver`. The root's `'static` values outlive
/// any `'s`, so it reads as a context of the resolver's lifetime.
fn child<'b, 's: 'b>(
    root: &'b Context<'b, 's>,
    resolver: &'s dyn VariableResolver,
) -> Context<'b, 's> {
    let mut ctx = root.new_inner_scope();
    ctx.set_variable_resolver(resolver);
    ctx
}

/// Evaluates a node to a verdict: `Err` for a type error, `Missing` for an absent field.
fn judge(node: &IdedExpr, ctx: &Context) -> Result<Verdict, String> {
    let failed = |e: ExecutionError| match missing_field(&e) {
        Some(field) => Ok(Verdict::Missing(field)),
        None => Err(explain_error(&e)),
    };
    // The result is looked at in place: only a non-boolean one is copied, to be shown.
    let result = match Cel::resolve_val(node, ctx) {
        Ok(v) => v,
        Err(e) => return failed(e),
    };
    match result.downcast_ref::<CelBool>() {
        Some(b) if *b.inner() => Ok(Verdict::Match),
        Some(_) => Ok(Verdict::NoMatch),
        None => match Cel::try_from(&*result) {
            Ok(other) => Err(format!(
                "the expression must be true or false, but gave {}",
                show(&other)
            )),
            Err(e) => failed(e),
        },
    }
}

/// The field an error says is absent, if that is what it says.
fn missing_field(e: &ExecutionError) -> Option<String> {
    match e {
        ExecutionError::NoSuchKey(k) => Some(k.to_string()),
        ExecutionError::NoSuchOverload(o)
            if matches!(o.function(), "_._" | "_[_]")
                && o.argument_types().first().is_some_and(|t| t == "null_type") =>
        {
            Some("a field of null".into())
        }
        _ => None,
    }
}

fn explain_error(e: &ExecutionError) -> String {
    match e {
        ExecutionError::NoSuchOverload(o) => {
            let types = o.argument_types();
            let mut msg = e.to_string();
            if types.iter().any(|t| t == "string")
                && types
                    .iter()
                    .any(|t| matches!(t.as_str(), "int" | "uint" | "double"))
            {
                msg.push_str(
                    ": numeric, date, time and uuid columns are strings in events; convert with \
                     double(...) or int(...), or compare with a string",
                );
            }
            msg
        }
        ExecutionError::FunctionError { message, .. } if message.starts_with("walwatch:") => {
            message.trim_start_matches("walwatch: ").to_string()
        }
        ExecutionError::UndeclaredReference(name) => format!(
            "unknown function `{name}` (see the CEL language definition for the standard ones)"
        ),
        other => other.to_string(),
    }
}

/// What kind of value, for strict comparisons: numbers are one kind.
fn kind(v: &Cel) -> &'static str {
    match v {
        Cel::Int(_) | Cel::UInt(_) | Cel::Float(_) => "number",
        Cel::String(_) => "string",
        Cel::Bool(_) => "bool",
        Cel::Bytes(_) => "bytes",
        Cel::List(_) => "list",
        Cel::Map(_) => "map",
        Cel::Null => "null",
        _ => "other",
    }
}

/// A value as it would be written in an expression.
fn show(v: &Cel) -> String {
    match v {
        Cel::String(s) => format!("{:?}", s.as_str()),
        Cel::Int(i) => i.to_string(),
        Cel::UInt(u) => format!("{u}u"),
        Cel::Float(f) => format!("{f:?}"),
        Cel::Bool(b) => b.to_string(),
        Cel::Null => "null".into(),
        Cel::List(items) => {
            let inner: Vec<String> = items.iter().take(5).map(show).collect();
            let more = if items.len() > 5 { ", ..." } else { "" };
            format!("[{}{more}]", inner.join(", "))
        }
        Cel::Map(m) => format!("{{map of {}}}", m.map.len()),
        other => format!("{other:?}"),
    }
}

/// [`strict_eq`] on resolved values, comparing the common ones (two strings, two numbers of
/// one type, two booleans, null) in place rather than as `Value` copies.
fn strict_eq_val(a: &dyn Val, b: &dyn Val, op: &str) -> Result<bool, ExecutionError> {
    match scalar_eq(a, b) {
        Some(eq) => Ok(eq),
        None => strict_eq(&Cel::try_from(a)?, &Cel::try_from(b)?, op),
    }
}

/// `a == b` where [`strict_eq`] cannot fail and `Value`'s equality is the plain one: both of
/// one scalar type, or null and a scalar. `None` for everything else.
fn scalar_eq(a: &dyn Val, b: &dyn Val) -> Option<bool> {
    fn same<'b, T: cel::common::value::FromVal<'b, 'b> + 'b, U: PartialEq + ?Sized>(
        a: &'b dyn Val,
        b: &'b dyn Val,
        inner: impl Fn(&T) -> &U,
    ) -> Option<bool> {
        Some(inner(a.downcast_ref::<T>()?) == inner(b.downcast_ref::<T>()?))
    }
    same::<CelString, str>(a, b, |s| s.inner())
        .or_else(|| same::<CelInt, i64>(a, b, |i| i.inner()))
        .or_else(|| same::<CelBool, bool>(a, b, |x| x.inner()))
        .or_else(|| same::<CelDouble, f64>(a, b, |f| f.inner()))
        .or_else(|| same::<CelUInt, u64>(a, b, |u| u.inner()))
        .or_else(|| {
            let null = |v: &dyn Val| v.downcast_ref::<CelNull>().is_some();
            let scalar = |v: &dyn Val| {
                null(v)
                    || v.downcast_ref::<CelString>().is_some()
                    || v.downcast_ref::<CelInt>().is_some()
                    || v.downcast_ref::<CelBool>().is_some()
                    || v.downcast_ref::<CelDouble>().is_some()
                    || v.downcast_ref::<CelUInt>().is_some()
            };
            let (na, nb) = (null(a), null(b));
            ((na && scalar(b)) || (nb && scalar(a))).then_some(na && nb)
        })
}

/// [`strict_in`] on resolved values: a string or int looked for in a list of that type only,
/// or a string key in a map, is answered in place; the rest as `Value`s.
fn strict_in_val(needle: &dyn Val, haystack: &dyn Val) -> Result<bool, ExecutionError> {
    if let Some(list) = haystack.downcast_ref::<CelList>() {
        let items = list.inner();
        // All of one type with the needle: the kind check cannot fail.
        if let Some(s) = needle.downcast_ref::<CelString>()
            && items
                .iter()
                .all(|i| i.downcast_ref::<CelString>().is_some())
        {
            return Ok(items.iter().any(|i| {
                i.downcast_ref::<CelString>()
                    .is_some_and(|i| i.inner() == s.inner())
            }));
        }
        if let Some(n) = needle.downcast_ref::<CelInt>()
            && items.iter().all(|i| i.downcast_ref::<CelInt>().is_some())
        {
            return Ok(items.iter().any(|i| {
                i.downcast_ref::<CelInt>()
                    .is_some_and(|i| i.inner() == n.inner())
            }));
        }
    }
    if let (Some(map), Some(s)) = (
        haystack.downcast_ref::<CelMap>(),
        needle.downcast_ref::<CelString>(),
    ) {
        // Keys match by type and value, as `Key::String` did.
        return Ok(map.inner().contains_key(&CelMapKey::from(s.inner())));
    }
    strict_in(Cel::try_from(needle)?, Cel::try_from(haystack)?)
}

fn strict_eq(a: &Cel, b: &Cel, op: &str) -> Result<bool, ExecutionError> {
    let (ka, kb) = (kind(a), kind(b));
    if ka != kb && ka != "null" && kb != "null" {
        return Err(ExecutionError::function_error(
            "==",
            format!(
                "walwatch: `{op}` compares a {ka} ({}) with a {kb} ({}), which is never equal: \
                 numeric, date, time and uuid columns are strings in events; compare with a {ka} \
                 value, or convert with double(...), int(...) or string(...)",
                show(a),
                show(b)
            ),
        ));
    }
    Ok(a == b)
}

fn strict_in(needle: Cel, haystack: Cel) -> Result<bool, ExecutionError> {
    match &haystack {
        Cel::List(items) => {
            let k = kind(&needle);
            if k != "null"
                && !items.is_empty()
                && items.iter().all(|i| kind(i) != k && kind(i) != "null")
            {
                return Err(ExecutionError::function_error(
                    "in",
                    format!(
                        "walwatch: `in` looks for a {k} ({}) in a list of {}s ({}), which never \
                         matches: compare like with like",
                        show(&needle),
                        kind(&items[0]),
                        show(&haystack)
                    ),
                ));
            }
            Ok(items.contains(&needle))
        }
        Cel::Map(m) => Ok(match &needle {
            Cel::String(s) => m.map.contains_key(&Key::String(s.clone())),
            Cel::Int(i) => m.map.contains_key(&Key::Int(*i)),
            Cel::UInt(u) => m.map.contains_key(&Key::Uint(*u)),
            Cel::Bool(b) => m.map.contains_key(&Key::Bool(*b)),
            _ => false,
        }),
        other => Err(ExecutionError::function_error(
            "in",
            format!(
                "walwatch: `in` needs a list or a map on its right, not {}",
                show(other)
            ),
        )),
    }
}

/// Replaces `==`, `!=` and `in` with their strict forms, everywhere in the tree.
fn make_strict(node: &mut IdedExpr) {
    match &mut node.expr {
        Node::Call(call) => {
            if call.target.is_none() && call.args.len() == 2 {
                let strict = match call.func_name.as_str() {
                    "_==_" => Some(STRICT_EQ),
                    "_!=_" => Some(STRICT_NE),
                    "@in" => Some(STRICT_IN),
                    _ => None,
                };
                if let Some(name) = strict {
                    call.func_name = name.to_string();
                }
            }
            if let Some(t) = &mut call.target {
                make_strict(t);
            }
            for a in &mut call.args {
                make_strict(a);
            }
        }
        Node::Comprehension(c) => {
            make_strict(&mut c.iter_range);
            make_strict(&mut c.accu_init);
            make_strict(&mut c.loop_cond);
            make_strict(&mut c.loop_step);
            make_strict(&mut c.result);
        }
        Node::List(l) => l.elements.iter_mut().for_each(make_strict),
        Node::Map(m) => {
            for e in &mut m.entries {
                if let EntryExpr::MapEntry(me) = &mut e.expr {
                    make_strict(&mut me.key);
                    make_strict(&mut me.value);
                }
            }
        }
        Node::Select(s) => make_strict(&mut s.operand),
        _ => {}
    }
}

fn split_and(node: &IdedExpr, out: &mut Vec<IdedExpr>) {
    match &node.expr {
        Node::Call(call) if call.func_name == "_&&_" && call.args.len() == 2 => {
            split_and(&call.args[0], out);
            split_and(&call.args[1], out);
        }
        _ => out.push(node.clone()),
    }
}

/// Calls `f` on every node, parents first.
fn walk(node: &IdedExpr, f: &mut impl FnMut(&IdedExpr)) {
    f(node);
    match &node.expr {
        Node::Call(call) => {
            if let Some(t) = &call.target {
                walk(t, f);
            }
            call.args.iter().for_each(|a| walk(a, f));
        }
        Node::Comprehension(c) => {
            for n in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                walk(n, f);
            }
        }
        Node::List(l) => l.elements.iter().for_each(|e| walk(e, f)),
        Node::Map(m) => {
            for e in &m.entries {
                if let EntryExpr::MapEntry(me) = &e.expr {
                    walk(&me.key, f);
                    walk(&me.value, f);
                }
            }
        }
        Node::Select(s) => walk(&s.operand, f),
        _ => {}
    }
}

/// Identifiers not bound by an enclosing comprehension (`exists(x, ...)` binds `x`).
fn free_variables<'a>(
    node: &'a IdedExpr,
    bound: &mut Vec<&'a str>,
    f: &mut impl FnMut(&'a str, u64),
) {
    match &node.expr {
        Node::Ident(name) if !bound.contains(&name.as_str()) => f(name, node.id),
        Node::Call(call) => {
            if let Some(t) = &call.target {
                free_variables(t, bound, f);
            }
            for a in &call.args {
                free_variables(a, bound, f);
            }
        }
        Node::Comprehension(c) => {
            free_variables(&c.iter_range, bound, f);
            free_variables(&c.accu_init, bound, f);
            let depth = bound.len();
            bound.push(&c.iter_var);
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2);
            }
            bound.push(&c.accu_var);
            free_variables(&c.loop_cond, bound, f);
            free_variables(&c.loop_step, bound, f);
            free_variables(&c.result, bound, f);
            bound.truncate(depth);
        }
        Node::List(l) => l.elements.iter().for_each(|e| free_variables(e, bound, f)),
        Node::Map(m) => {
            for e in &m.entries {
                if let EntryExpr::MapEntry(me) = &e.expr {
                    free_variables(&me.key, bound, f);
                    free_variables(&me.value, bound, f);
                }
            }
        }
        Node::Select(s) => free_variables(&s.operand, bound, f),
        _ => {}
    }
}

/// 1-based line and column of a byte offset range's start.
fn position(source: &str, offset: Option<(u32, u32)>) -> (usize, usize) {
    let Some((start, _)) = offset else {
        return (1, 1);
    };
    let mut line = 1;
    let mut col = 1;
    for (i, ch) in source.char_indices() {
        if i >= start as usize {
            break;
        }
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// `data.status` for a chain of selects on an identifier.
fn path_text(node: &IdedExpr) -> Option<String> {
    match &node.expr {
        Node::Ident(name) => Some(name.clone()),
        Node::Select(s) if !s.test => Some(format!("{}.{}", path_text(&s.operand)?, s.field)),
        _ => None,
    }
}

/// The values of the field paths a comparison reads, `data.status is "paid"`.
fn operand_values(node: &IdedExpr, ctx: &Context, out: &mut Vec<String>) {
    let Node::Call(call) = &node.expr else {
        return;
    };
    for arg in &call.args {
        if let Some(path) = path_text(arg).filter(|p| p.contains('.') || VARIABLES.contains(&&**p))
        {
            match Cel::resolve(arg, ctx) {
                Ok(v) => out.push(format!("{path} is {}", show(&v))),
                Err(_) => out.push(format!("{path} is absent")),
            }
        }
    }
}

fn literal(l: &LiteralValue) -> String {
    match l {
        LiteralValue::Boolean(b) => b.inner().to_string(),
        LiteralValue::Int(i) => i.inner().to_string(),
        LiteralValue::UInt(u) => format!("{}u", u.inner()),
        LiteralValue::Double(d) => format!("{:?}", d.inner()),
        LiteralValue::String(s) => format!("{:?}", s.inner()),
        LiteralValue::Bytes(_) => "b\"...\"".into(),
        LiteralValue::Null => "null".into(),
    }
}

/// The expression written back as text (for reports).
pub(crate) fn unparse(node: &IdedExpr) -> String {
    match &node.expr {
        Node::Ident(name) => name.clone(),
        Node::Literal(l) => literal(l),
        Node::Select(s) if s.test => format!("has({}.{})", unparse(&s.operand), s.field),
        Node::Select(s) => format!("{}.{}", unparse(&s.operand), s.field),
        Node::List(l) => {
            let items: Vec<String> = l.elements.iter().map(unparse).collect();
            format!("[{}]", items.join(", "))
        }
        Node::Call(call) => {
            let infix = match call.func_name.as_str() {
                STRICT_EQ | "_==_" => Some("=="),
                STRICT_NE | "_!=_" => Some("!="),
                STRICT_IN | "@in" => Some("in"),
                "_<_" => Some("<"),
                "_<=_" => Some("<="),
                "_>_" => Some(">"),
                "_>=_" => Some(">="),
                "_&&_" => Some("&&"),
                "_||_" => Some("||"),
                "_+_" => Some("+"),
                "_-_" => Some("-"),
                "_*_" => Some("*"),
                "_/_" => Some("/"),
                "_%_" => Some("%"),
                _ => None,
            };
            match (infix, call.func_name.as_str(), call.args.as_slice()) {
                (Some(op), _, [a, b]) => {
                    format!("{} {op} {}", unparse_operand(a), unparse_operand(b))
                }
                (_, "!_", [a]) => format!("!{}", unparse_operand(a)),
                (_, "-_", [a]) => format!("-{}", unparse_operand(a)),
                (_, "_[_]", [a, b]) => format!("{}[{}]", unparse(a), unparse(b)),
                (_, "_?_:_", [c, a, b]) => format!(
                    "{} ? {} : {}",
                    unparse_operand(c),
                    unparse_operand(a),
                    unparse_operand(b)
                ),
                (_, name, args) => {
                    let args: Vec<String> = args.iter().map(unparse).collect();
                    match &call.target {
                        Some(t) => format!("{}.{name}({})", unparse_operand(t), args.join(", ")),
                        None => format!("{name}({})", args.join(", ")),
                    }
                }
            }
        }
        Node::Comprehension(_) => "(a macro such as exists() or all())".into(),
        Node::Map(_) => "{...}".into(),
        _ => "...".into(),
    }
}

fn unparse_operand(node: &IdedExpr) -> String {
    let text = unparse(node);
    match &node.expr {
        Node::Call(c) if c.func_name.starts_with('_') || c.func_name.starts_with(STRICT_EQ) => {
            if c.func_name == "_[_]" {
                text
            } else {
                format!("({text})")
            }
        }
        Node::Call(c) if c.func_name.starts_with("__walwatch") || c.func_name == "@in" => {
            format!("({text})")
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::scope::{string, value};
    use super::*;
    use crate::event::{Column, JsonText, Lsn, Op, Row, Value};

    fn col(name: &str, value: Value) -> Column {
        Column {
            name: Arc::from(name),
            value,
        }
    }

    fn order(op: Op, status: &str) -> Event {
        let mut e = Event::new(op, Lsn(0x1A2B3C8));
        e.schema = Some(Arc::from("public"));
        e.table = Some(Arc::from("orders"));
        e.xid = Some(751);
        e.data = Some(Row {
            columns: vec![
                col("id", Value::Int(1)),
                col("status", Value::Text(status.into())),
                col("amount", Value::Numeric("12.50".into())),
                col("score", Value::Float(f64::NAN)),
                col("tags", Value::Array(vec![Value::Text("a".into())])),
                col(
                    "doc",
                    Value::Json(JsonText::new(r#"{"n": 2}"#.into()).unwrap()),
                ),
            ],
        });
        e
    }

    fn m(src: &str, e: &Event) -> Result<bool, EvalError> {
        Expr::compile(src).unwrap().matches(e)
    }

    #[test]
    fn matches_on_every_variable() {
        let e = order(Op::Update, "shipped");
        for src in [
            r#"type == "wal" && op == "UPDATE" && schema == "public" && table == "orders""#,
            r#"data.status == "shipped" && data.id == 1 && data.amount == "12.50""#,
            r#"double(data.amount) > 12.0 && data.score == "NaN" && "a" in data.tags"#,
            r#"data.doc.n == 2 && xid == 751 && lsn == "0/1A2B3C8" && old == null"#,
            r#"size(unchanged) == 0 && ts == null && op in ["INSERT", "UPDATE"]"#,
            r#"data.status.startsWith("ship") && data.status.matches("^s.*d$")"#,
            r#"[1, 2].exists(x, x == data.id)"#,
        ] {
            assert_eq!(m(src, &e), Ok(true), "{src}");
        }
        assert_eq!(m(r#"data.status != "shipped""#, &e), Ok(false));
    }

    #[test]
    fn proxy_events_read_as_type_and_data_beside_wal_events() {
        let line = r#"{"type":"proxy","seq":7,"ts":"2026-12-02T10:00:00.000000Z","data":{"action":"error","query":"INSERT INTO orders VALUES (1)","rule":"error:INSERT*:disk full","message":"disk full","sqlstate":"XX000","connection":3,"database":"app","user":"bob","application_name":"svc","duration_ms":null}}"#;
        let p = crate::event_read::parse_line(line).unwrap();
        let wal = order(Op::Insert, "new");
        let harness =
            r#"type == "proxy" && data.action == "error" && data.query.startsWith("INSERT")"#;
        assert_eq!(m(harness, &p), Ok(true));
        assert_eq!(m(harness, &wal), Ok(false), "a WAL event is no proxy event");
        assert_eq!(m(r#"type == "wal" && op == "INSERT""#, &p), Ok(false));
        assert_eq!(m("seq == 7 && data.connection == 3", &p), Ok(true));
        // A null field is absent: no match, not a type error.
        assert_eq!(m("data.duration_ms > 1.0", &p), Ok(false));
        assert_eq!(m(r#"data.op == "INSERT""#, &p), Ok(false));
        assert_eq!(
            describe_event(&p),
            "proxy error #7 `INSERT INTO orders VALUES (1)`"
        );
        // Its JSON form is the line it was read from.
        let back: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        let want: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(back, want);
        for bad in [
            r#"{"type":"proxy","ts":"2026-12-02T10:00:00Z","data":{"action":"x"}}"#,
            r#"{"type":"proxy","seq":1,"ts":"yesterday","data":{"action":"x"}}"#,
            r#"{"type":"proxy","seq":1,"ts":"2026-12-02T10:00:00Z","data":{}}"#,
        ] {
            assert!(crate::event_read::parse_line(bad).is_err(), "{bad}");
        }
    }

    /// A nested expression reads what a nested line shows, agrees with the native one on every
    /// event, and explains itself with the paths the user wrote.
    #[test]
    fn nested_expressions_read_the_nested_shape() {
        let n = |src: &str| Expr::compile_in(src, Envelope::Nested).unwrap();
        let e = order(Op::Update, "shipped");
        for (nested, native) in [
            (
                r#"type == "wal" && data.op == "UPDATE" && data.table == "orders""#,
                r#"type == "wal" && op == "UPDATE" && table == "orders""#,
            ),
            (
                r#"data.data.status == "shipped" && data.xid == 751"#,
                r#"data.status == "shipped" && xid == 751"#,
            ),
            (r#""op" in data && data.old == null"#, "old == null"),
            (r#"data.data.status == "new""#, r#"data.status == "new""#),
        ] {
            let want = Expr::compile(native).unwrap().matches(&e);
            assert_eq!(n(nested).matches(&e), want, "{nested} vs {native}");
        }
        // A field the nested `data` lacks is absent, not null; a proxy event reads as natively.
        assert!(matches!(
            n("data.nope == 1").eval(&e),
            Ok(Verdict::Missing(f)) if f == "nope"
        ));
        let p = crate::event_read::parse_line(
            r#"{"type":"proxy","seq":7,"ts":"2026-12-02T10:00:00.000000Z","data":{"action":"error"}}"#,
        )
        .unwrap();
        assert_eq!(
            n(r#"type == "proxy" && data.action == "error""#).matches(&p),
            Ok(true)
        );
        assert_eq!(n(r#"data.op == "UPDATE""#).matches(&p), Ok(false));
        // Reports and diagnostics find what it looks for under the nested paths.
        let x = n(r#"data.table == "orders" && data.op == "UPDATE" && data.data.status == "paid""#);
        assert_eq!(x.wanted("table").as_deref(), Some("orders"));
        assert_eq!(x.wanted("op").as_deref(), Some("UPDATE"));
        assert_eq!(
            x.columns_read(),
            [("data".to_string(), "status".to_string())]
        );
        assert_eq!(
            x.explain(&e).1,
            [r#"data.data.status == "paid"  (data.data.status is "shipped")"#]
        );
        // The native names are refused with the nested path to write instead.
        let err = Expr::compile_in(r#"table == "orders""#, Envelope::Nested).unwrap_err();
        assert!(err.to_string().contains("write `data.table`"), "{err}");
    }

    /// The fast path (`quick`) gives what CEL gives, for every envelope, on every kind of
    /// event, for comparisons it decides and those it must hand on (other kinds, absent
    /// fields, nulls, messages), and it does decide the common ones.
    #[test]
    fn the_fast_path_agrees_with_cel_everywhere() {
        let mut events = vec![order(Op::Insert, "new"), order(Op::Update, "shipped")];
        let mut with_old = order(Op::Update, "paid");
        with_old.old = Some(Row {
            columns: vec![col("id", Value::Int(1)), col("status", Value::Null)],
        });
        with_old.key = Some(Row {
            columns: vec![col("id", Value::Int(1))],
        });
        events.push(with_old);
        let mut begin = Event::new(Op::Begin, Lsn(1));
        begin.xid = Some(9);
        events.push(begin);
        let mut msg = Event::new(Op::Message, Lsn(2));
        msg.message = Some(crate::LogicalMessage {
            transactional: true,
            prefix: "app".into(),
            content: b"hi".to_vec(),
        });
        events.push(msg);
        let mut no_table = order(Op::Delete, "x");
        no_table.table = None;
        events.push(no_table);
        events.push(
            crate::event_read::parse_line(
                r#"{"type":"proxy","seq":1,"ts":"2026-12-02T10:00:00.000000Z","data":{"action":"error","op":"INSERT"}}"#,
            )
            .unwrap(),
        );
        let native = [
            r#"type == "wal" && table == "orders" && op == "INSERT""#,
            r#"op == "UPDATE" && data.status == "shipped""#,
            r#"data.id == 1 && data.amount == "12.50""#,
            r#"data.id == "1""#,
            r#""orders" == table && 1 == data.id && data.status != "new""#,
            r#"data.nope == 1 && op == "INSERT""#,
            r#"op == "INSERT" && data.nope == 1"#,
            r#"old.status == "paid" && key.id == 1"#,
            r#"data.id == 1.0"#,
            r#"data.prefix == "app" && op == "MESSAGE""#,
            r#"schema == "public" && table == "orders" && data.score == "NaN""#,
            r#"type == "proxy" && data.action == "error""#,
            r#"data.doc.n == 2"#,
            "true && data.id == 1",
        ];
        let nested = [
            r#"type == "wal" && data.table == "orders" && data.op == "INSERT""#,
            r#"data.data.id == 1 && data.data.status == "new""#,
            r#"data.data.id == "1""#,
            r#"data.old.status == "paid" && data.key.id == 1"#,
            r#"data.op == "INSERT" && data.data.nope == 1"#,
            r#"type == "proxy" && data.op == "INSERT""#,
        ];
        let cases = native
            .iter()
            .map(|s| (*s, Envelope::Native))
            .chain(nested.iter().map(|s| (*s, Envelope::Nested)));
        let mut decided = 0;
        for (src, envelope) in cases {
            let x = Expr::compile_in(src, envelope).unwrap();
            for e in &events {
                let (fast, slow) = (x.eval(e), x.eval_by_cel(e));
                assert_eq!(fast, slow, "{src} ({envelope:?}) on {}", describe_event(e));
                decided += usize::from(quick::verdict(&x.quick, e).is_some());
            }
        }
        assert!(
            decided >= 40,
            "the fast path decided only {decided} evaluations"
        );
    }

    #[test]
    fn a_missing_field_is_no_match_and_says_which() {
        let mut begin = Event::new(Op::Begin, Lsn(1));
        begin.xid = Some(3);
        let x = Expr::compile(r#"data.status == "x""#).unwrap();
        assert!(matches!(x.eval(&begin), Ok(Verdict::Missing(_))));
        let y = Expr::compile(r#"data.stauts == "shipped""#).unwrap();
        assert_eq!(
            y.eval(&order(Op::Insert, "shipped")),
            Ok(Verdict::Missing("stauts".into()))
        );
        assert_eq!(
            m(r#"old.status == "paid""#, &order(Op::Update, "x")),
            Ok(false)
        );
    }

    #[test]
    fn string_number_comparisons_are_errors_not_false() {
        let e = order(Op::Insert, "new");
        for (src, needle) in [
            (
                "data.amount == 12.5",
                "compares a string (\"12.50\") with a number (12.5)",
            ),
            ("data.amount != 12.5", "compares a string"),
            (
                "data.id == \"1\"",
                "compares a number (1) with a string (\"1\")",
            ),
            ("data.id in [\"1\", \"2\"]", "looks for a number"),
            ("data.amount > 10", "_>_"),
        ] {
            let err = m(src, &e).unwrap_err();
            assert!(
                err.message.contains(needle),
                "{src}: expected {needle:?} in: {}",
                err.message
            );
            assert!(err.event.contains("INSERT public.orders"), "{}", err.event);
        }
        // null compares with anything.
        assert_eq!(m("old == null && data.id != null", &e), Ok(true));
        // A non-boolean result is an error too.
        assert!(
            m("data.id + 1", &e)
                .unwrap_err()
                .message
                .contains("true or false")
        );
    }

    #[test]
    fn compile_errors_give_line_and_column() {
        let err = Expr::compile("op == \"INSERT\" &&\n  data.status ==").unwrap_err();
        assert_eq!((err.line, err.column), (2, 17), "{err}");
        let err = Expr::compile(r#"op == "INSERT" && tabel == "orders""#).unwrap_err();
        assert!(err.message.contains("unknown variable `tabel`"), "{err}");
        assert_eq!((err.line, err.column), (1, 19), "{err}");
        assert!(err.to_string().contains("line 1, column 19"), "{err}");
        // Variables bound by a macro are not unknown.
        Expr::compile("unchanged.all(c, c != \"id\")").unwrap();
        assert!(Expr::compile("unchanged.all(c, d != \"id\")").is_err());
    }

    #[test]
    fn explains_which_conjuncts_fail_with_the_values_seen() {
        let x = Expr::compile(
            r#"op == "UPDATE" && table == "orders" && data.status == "shipped" && data.id == 1"#,
        )
        .unwrap();
        let (held, failed) = x.explain(&order(Op::Update, "paid"));
        assert_eq!(held, 3);
        assert_eq!(
            failed,
            vec![r#"data.status == "shipped"  (data.status is "paid")"#.to_string()]
        );
        assert_eq!(x.wanted("table").as_deref(), Some("orders"));
        assert_eq!(x.wanted("op").as_deref(), Some("UPDATE"));
        assert_eq!(x.wanted("schema"), None);
        assert_eq!(
            x.columns_read(),
            vec![
                ("data".to_string(), "status".to_string()),
                ("data".into(), "id".into())
            ]
        );
    }

    /// Every kind of event the lazy scope must read as the former full maps did.
    fn lazy_scope_events() -> Vec<Event> {
        let mut events = vec![order(Op::Insert, "new")];
        let mut update = order(Op::Update, "shipped");
        update.old = Some(Row {
            columns: vec![col("id", Value::Int(1)), col("status", Value::Null)],
        });
        update.key = Some(Row {
            columns: vec![col("id", Value::Int(1))],
        });
        update.unchanged = vec![Arc::from("doc")];
        update.ts = Some(crate::event::Timestamp(848_000_000_000_000));
        update.commit_lsn = Lsn(0x1A2B400);
        events.push(update);
        // A DELETE carrying only the key, as data and key.
        let mut delete = order(Op::Delete, "x");
        let key = Row {
            columns: vec![col("id", Value::Int(7))],
        };
        delete.data = Some(key.clone());
        delete.key = Some(key);
        events.push(delete);
        let mut odd = order(Op::Insert, "odd");
        odd.data = Some(Row {
            columns: vec![
                col("id", Value::Int(-1)),
                col("blob", Value::Bytea(vec![0xde, 0xad])),
                col("inf", Value::Float(f64::NEG_INFINITY)),
                col("ratio", Value::Float(0.5)),
                col("ok", Value::Bool(true)),
                col("nothing", Value::Null),
                col("ids", Value::Array(vec![Value::Int(1), Value::Null])),
                col(
                    "u",
                    Value::Uuid("0b7e0c4a-0000-4000-8000-000000000000".into()),
                ),
                col("day", Value::Date("2026-11-22".into())),
                col(
                    "doc",
                    Value::Json(JsonText::new(r#"[{"a": [1, "x", null]}, 2.5]"#.into()).unwrap()),
                ),
                // A repeated name: the last one counts, as in the map.
                col("dup", Value::Int(1)),
                col("dup", Value::Int(2)),
            ],
        });
        odd.partition_of = Some(Arc::new(crate::event::TableName {
            schema: Arc::from("public"),
            table: Arc::from("orders_all"),
        }));
        events.push(odd);
        let mut empty = order(Op::Update, "x");
        empty.data = Some(Row::default());
        events.push(empty);
        let mut begin = Event::new(Op::Begin, Lsn(1));
        begin.xid = Some(9);
        events.push(begin);
        events.push(Event::new(Op::Commit, Lsn(2)));
        for content in [b"hi".to_vec(), vec![0xff, 0x00]] {
            let mut msg = Event::new(Op::Message, Lsn(3));
            msg.message = Some(crate::LogicalMessage {
                transactional: true,
                prefix: "app".into(),
                content,
            });
            events.push(msg);
        }
        let mut no_table = order(Op::Truncate, "x");
        no_table.table = None;
        no_table.data = None;
        events.push(no_table);
        for line in [
            r#"{"type":"proxy","seq":7,"ts":"2026-12-02T10:00:00.000000Z","data":{"action":"error","query":"INSERT INTO orders VALUES (1)","connection":3,"duration_ms":null,"op":"INSERT"}}"#,
            r#"{"type":"proxy","seq":8,"ts":"2026-12-02T10:00:00.000000Z","data":{"action":"delay","op":5,"xid":"5","table":null}}"#,
            r#"{"type":"wal","op":"INSERT","schema":"public","table":"orders","lsn":"0/10","commit_lsn":"0/20","xid":5,"ts":"2026-12-02T10:00:00.000000Z","data":{"id":3,"status":"new","doc":{"n":2}},"old":null,"key":{"id":3},"unchanged":[]}"#,
        ] {
            events.push(crate::event_read::parse_line(line).unwrap());
        }
        events
    }

    /// Native expressions for `the_lazy_scope_agrees_with_full_maps`.
    const LAZY_NATIVE: &[&str] = &[
        // Rows only selected from: lazy.
        r#"data.status == "new""#,
        r#"data.id == 1 && data.status != "new""#,
        "data.id > 0",
        "data.nope == 1",
        "data.nope.deeper == 1",
        "has(data.status) && !has(data.nope)",
        "has(old.status)",
        "old.status == null",
        "key.id == 1 || key.id == 7",
        "data.doc.n == 2",
        "data.doc.missing == 1",
        "data.doc[0].a[1] == \"x\"",
        r#"data.tags[0] == "a" && "a" in data.tags"#,
        "data.amount == 12.5",
        r#"data.id == "1""#,
        r#"data.score == "NaN" && data.inf == "-Infinity" && data.blob == "\\xdead""#,
        "data.ratio == 0.5 && data.ok && data.nothing == null && data.ids == [1, null]",
        r#"data.u.startsWith("0b7e") && data.day < "2027" && data.dup == 2"#,
        r#"data.status.startsWith("s") && size(data.status) > 1"#,
        "data.id == 1u || data.id == 1.0",
        "data.id != null && null != data.status",
        "[1, 2].exists(x, x == data.id)",
        "data.id in [1, 2] && data.status in [\"new\", 1]",
        "data.status in [1, 2]",
        r#""n" in data.doc"#,
        "data.status",
        "data.tags",
        // Rows used whole: maps.
        r#""status" in data && data.status == "new""#,
        r#""nope" in data"#,
        "data == null",
        "old == null && key != null",
        r#"key == {"id": 1}"#,
        "data != null && size(data) > 2",
        r#"data.exists(k, k == "id")"#,
        "data",
        "data == data",
        // The other variables.
        r#"lsn == "0/1A2B3C8" && commit_lsn != """#,
        "ts == null",
        "xid == 751 && xid in [751, 752]",
        r#"unchanged == [] || "doc" in unchanged"#,
        "size(unchanged) == 0",
        r#"partition_of.table == "orders_all" && has(partition_of.schema)"#,
        "partition_of == null",
        r#"type == "proxy" && seq == 7"#,
        r#"op in ["INSERT", "UPDATE"] && schema == "public" && table == "orders""#,
        "op in [1, 2]",
        "table == null",
        r#"data.prefix == "app" && data.content == "hi" && data.transactional"#,
        r#"has(data.content) && "prefix" in data"#,
        r#"data.action == "error" && data.connection == 3"#,
        "data.duration_ms > 1.0",
        "1u in {1: 'a'} || 2 in [1, 2.0]",
        "[data.status, op]",
        // Comparisons made plain on WAL events (`plain.rs`), and ones that must stay strict.
        r#"table != "orders" && "public" == schema && type != "proxy""#,
        r#"xid == 751 && xid != 9 && ts != "x""#,
        r#"lsn == "0/10" || commit_lsn == "0/20" || op == "DELETE""#,
        "op == 1",
        r#"xid == "751""#,
        r#"[1].exists(op, op == "x")"#,
        r#"[op].exists(x, x == "INSERT")"#,
    ];

    /// Nested expressions for `the_lazy_scope_agrees_with_full_maps`.
    const LAZY_NESTED: &[&str] = &[
        r#"type == "wal" && data.op == "INSERT" && data.table == "orders""#,
        r#"data.data.status == "new""#,
        "data.data.nope == 1",
        "has(data.data.status) && has(data.partition_of)",
        r#"data.partition_of.table == "orders_all""#,
        "data.old.status == null && data.key.id == 1",
        "data.nope == 1",
        "has(data.nope) || has(data.lsn)",
        r#"data.lsn != "" && data.xid == 751 && seq == null && ts == null"#,
        "data.unchanged == [] && data.data.doc.n == 2",
        r#"data.data.prefix == "app""#,
        r#"data.action == "error" && seq == 7"#,
        // Rows or the nested data used whole.
        r#""status" in data.data"#,
        "data.data == null || data.old == null",
        r#""op" in data && data.data.id == 1"#,
        "size(data) > 3",
        r#"data.data.exists(k, k == "id")"#,
        "data.data",
        "data",
        // Plain on WAL events, strict on proxy events (whose `data.op` is 5 in one).
        r#"data.op == "INSERT""#,
        "data.xid == 5",
        r#"data.table != "orders" && data.ts != "x""#,
    ];

    /// The lazy scope (`scope.rs`), the WAL program (`plain.rs`) and the strict operators on
    /// resolved values answer as the former full maps and `Value` operators (`reference.rs`)
    /// did, messages included, for rows read a field at a time and rows used whole, in both
    /// envelopes, on every kind of event.
    #[test]
    fn the_lazy_scope_agrees_with_full_maps() {
        let cases = LAZY_NATIVE
            .iter()
            .map(|s| (*s, Envelope::Native))
            .chain(LAZY_NESTED.iter().map(|s| (*s, Envelope::Nested)));
        let events = lazy_scope_events();
        let (mut lazy, mut eager) = (0, 0);
        for (src, envelope) in cases {
            let x = Expr::compile_in(src, envelope).unwrap();
            if x.plan.rows.iter().any(|r| *r) || x.plan.nested {
                lazy += 1;
            }
            if x.plan.vars().contains(&"data") && !x.plan.rows[0] {
                eager += 1;
            }
            for e in &events {
                let got = x.eval_by_cel(e).map_err(|e| e.message);
                let want = reference::eval(&x, e);
                assert_eq!(got, want, "{src} ({envelope:?}) on {}", describe_event(e));
            }
        }
        assert!(lazy >= 30 && eager >= 15, "lazy {lazy}, eager {eager}");
    }

    /// Which rows are read a field at a time: only those never used whole.
    #[test]
    fn rows_are_lazy_only_when_only_selected_from() {
        let plan = |src: &str, envelope| Expr::compile_in(src, envelope).unwrap().plan;
        let native = |src: &str| plan(src, Envelope::Native).rows;
        assert_eq!(native("data.a == 1 && has(old.b)"), [true, true, true]);
        assert_eq!(native(r#""a" in data && key.id == 1"#), [false, true, true]);
        assert_eq!(native("old == null"), [true, false, true]);
        assert_eq!(native("[1].exists(data, data == 1)"), [false, true, true]);
        let nested = |src: &str| plan(src, Envelope::Nested);
        let s = nested("data.data.a == 1 && data.old.b == 2");
        assert!(s.nested && s.rows == [true, true, true]);
        let s = nested("data.data == null && data.key.id == 1");
        assert!(s.nested && s.rows == [false, true, true]);
        let s = nested(r#""op" in data && data.data.a == 1"#);
        assert!(!s.nested && s.rows == [false; 3]);
    }

    /// On WAL events, a field that is always a string (or an int) or null compared with a
    /// literal of that kind is CEL's own `==`; every other comparison stays strict.
    #[test]
    fn only_comparisons_that_cannot_fail_are_made_plain() {
        let plain = |src: &str, envelope| {
            let x = Expr::compile_in(src, envelope).unwrap();
            let mut names = Vec::new();
            walk(&x.wal_root, &mut |n| {
                if let Node::Call(c) = &n.expr
                    && c.func_name != "_&&_"
                {
                    names.push(c.func_name.clone());
                }
            });
            names
        };
        assert_eq!(
            plain(
                r#"op == "INSERT" && 751 != xid && data.status == "x" && op == 1 && table in ["t"]"#,
                Envelope::Native
            ),
            ["_==_", "_!=_", STRICT_EQ, STRICT_EQ, STRICT_IN]
        );
        assert_eq!(
            plain(
                r#"type == "wal" && data.op == "INSERT" && data.data.op == "x" && ts == "y""#,
                Envelope::Nested
            ),
            ["_==_", STRICT_EQ, STRICT_EQ]
        );
        // `type` is `"wal"` on every WAL event: its tests are decided at compile time.
        let x = Expr::compile(r#"type == "wal" && "proxy" != type && type == 1"#).unwrap();
        assert_eq!(unparse(&x.wal_root), "(true && true) && (type == 1)");
        // A macro's variable may shadow a field: comprehensions stay strict.
        let x = Expr::compile(r#"[1].exists(op, op == "x")"#).unwrap();
        assert_eq!(x.wal_root, x.root);
    }

    /// On WAL events, a select the scope answers whole is an identifier of its path; one on a
    /// row used whole, under `has()` or in a macro stays a select.
    #[test]
    fn fields_of_lazy_rows_are_named_as_identifiers() {
        let idents = |src: &str, envelope| {
            let x = Expr::compile_in(src, envelope).unwrap();
            let mut names = Vec::new();
            walk(&x.wal_root, &mut |n| {
                if let Node::Ident(name) = &n.expr {
                    names.push(name.clone());
                }
            });
            names
        };
        let native = idents(
            "data.doc.n == 1 && has(old.b) && key.id == 1 && [1].exists(x, x == key.id)",
            Envelope::Native,
        );
        for name in ["data.doc", "key.id", "old", "key"] {
            assert!(native.iter().any(|n| n == name), "{name} in {native:?}");
        }
        let eager = idents(r#""a" in data && data.a == 1"#, Envelope::Native);
        assert!(!eager.iter().any(|n| n == "data.a"), "{eager:?}");
        let nested = idents(
            r#"data.op == "x" && data.data.id == 1 && data.old == null"#,
            Envelope::Nested,
        );
        assert_eq!(nested, ["data.op", "data.data.id", "data.old"]);
    }

    #[test]
    fn values_read_as_their_json_form() {
        let cases = [
            (Value::Float(f64::INFINITY), string("Infinity")),
            (Value::Float(1.5), Cel::Float(1.5)),
            (Value::Bytea(vec![0xde, 0xad]), string("\\xdead")),
            (Value::Numeric("1.0".into()), string("1.0")),
            (Value::Null, Cel::Null),
        ];
        for (v, want) in cases {
            assert_eq!(value(&v), want, "{v:?}");
        }
    }
}
