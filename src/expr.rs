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

mod quick;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr, LiteralValue};
use cel::objects::Key;
use cel::{Context, ExecutionError, Program, Value as Cel};

use crate::event::{Event, Value, bytea_hex};
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
    /// The top-level `&&` operands, for near-miss reports.
    conjuncts: Vec<IdedExpr>,
    /// Which event variables the expression reads: only those are built per event.
    vars: BTreeSet<&'static str>,
    envelope: Envelope,
    /// Nested: the fields of a WAL event's `data` the expression reads, when it only ever
    /// selects fields of `data` (`data.op`); `None` builds them all.
    nested_fields: Option<Vec<&'static str>>,
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
        let nested_fields = match envelope {
            Envelope::Nested => fields_selected_from_data(&root),
            Envelope::Native => None,
        };
        Ok(Expr {
            source: source.to_string(),
            quick: quick::plan(&conjuncts, envelope),
            root,
            conjuncts,
            vars,
            envelope,
            nested_fields,
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
        with_scope(self, event, |ctx| judge(&self.root, ctx))
            .map_err(|message| self.eval_error(event, message))
    }

    /// [`Expr::eval`] through CEL alone: the reference its fast path is checked against in
    /// tests, and the baseline `benches/decode.rs` measures it beside.
    #[doc(hidden)]
    pub fn eval_by_cel(&self, event: &Event) -> Result<Verdict, EvalError> {
        with_scope(self, event, |ctx| judge(&self.root, ctx))
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
    let mut ctx = Context::default();
    // Names that no standard overload uses, so adding them cannot fail.
    let _ = ctx.add_function(STRICT_EQ, |a: Cel, b: Cel| strict_eq(&a, &b, "=="));
    let _ = ctx.add_function(STRICT_NE, |a: Cel, b: Cel| {
        strict_eq(&a, &b, "!=").map(|eq| !eq)
    });
    let _ = ctx.add_function(STRICT_IN, strict_in);
    ctx
}

/// Runs `f` in a scope holding the event's variables.
fn with_scope<T>(
    expr: &Expr,
    event: &Event,
    f: impl FnOnce(&Context) -> Result<T, String>,
) -> Result<T, String> {
    ROOT.with(|root| {
        let mut root = root.borrow_mut();
        let root = root.get_or_insert_with(root_context);
        let mut scope = root.new_inner_scope();
        for var in &expr.vars {
            let value = match expr.envelope {
                Envelope::Native => variable(event, var),
                Envelope::Nested => nested_variable(event, var, expr.nested_fields.as_deref()),
            };
            scope.add_variable_from_value(*var, value);
        }
        f(&scope)
    })
}

/// Evaluates a node to a verdict: `Err` for a type error, `Missing` for an absent field.
fn judge(node: &IdedExpr, ctx: &Context) -> Result<Verdict, String> {
    match Cel::resolve(node, ctx) {
        Ok(Cel::Bool(true)) => Ok(Verdict::Match),
        Ok(Cel::Bool(false)) => Ok(Verdict::NoMatch),
        Ok(other) => Err(format!(
            "the expression must be true or false, but gave {}",
            show(&other)
        )),
        Err(e) => match missing_field(&e) {
            Some(field) => Ok(Verdict::Missing(field)),
            None => Err(explain_error(&e)),
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

// ---- event -> CEL values, mirroring the JSON contract ----------------------------------------

fn string(s: &str) -> Cel {
    Cel::String(Arc::new(s.to_string()))
}

fn opt_string(s: Option<&str>) -> Cel {
    s.map(string).unwrap_or(Cel::Null)
}

fn variable(e: &Event, name: &str) -> Cel {
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

/// A variable of the nested envelope: `data` of a WAL event holds its native fields (only
/// `fields` of them, when given); a proxy event reads as in the native form.
fn nested_variable(e: &Event, name: &str, fields: Option<&[&'static str]>) -> Cel {
    if e.proxy.is_some() {
        return variable(e, name);
    }
    match name {
        "type" => string("wal"),
        "data" => {
            let fields = fields.unwrap_or(NESTED_DATA_FIELDS);
            let map: HashMap<Key, Cel> = fields
                .iter()
                // The JSON form has `partition_of` only when it is set.
                .filter(|f| **f != "partition_of" || e.partition_of.is_some())
                .map(|f| (key(f), variable(e, f)))
                .collect();
            map.into()
        }
        // A WAL event's `seq` and `ts` are not at the top of the nested form.
        _ => Cel::Null,
    }
}

/// The fields of `data` an expression reads, when it uses `data` only as `data.FIELD` (with
/// FIELD a field of the nested `data`); `None` when it uses `data` otherwise (`"op" in data`,
/// `data` passed whole), so every field must be there.
fn fields_selected_from_data(root: &IdedExpr) -> Option<Vec<&'static str>> {
    let (mut uses, mut selects) = (0usize, Vec::new());
    walk(root, &mut |node| match &node.expr {
        Node::Ident(name) if name == "data" => uses += 1,
        Node::Select(sel) => {
            if let Node::Ident(name) = &sel.operand.expr
                && name == "data"
            {
                selects.push(sel.field.clone());
            }
        }
        _ => {}
    });
    if selects.len() != uses {
        return None;
    }
    let mut fields: Vec<&'static str> = Vec::new();
    for field in selects {
        // An unknown field must still be absent (a missing field, not a wrong answer).
        let known = NESTED_DATA_FIELDS.iter().find(|f| **f == field)?;
        if !fields.contains(known) {
            fields.push(known);
        }
    }
    Some(fields)
}

fn key(s: &str) -> Key {
    Key::String(Arc::new(s.to_string()))
}

fn row_value(row: &crate::event::Row) -> Cel {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, JsonText, Lsn, Op, Row};

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
