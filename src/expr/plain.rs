//! The program evaluated on WAL events: the strict expression with what cannot differ on a
//! WAL event done the cheaper way. Why: in the `cel` interpreter a function call (each strict
//! `==`) and a qualified name (each `data.status`) cost more than the work they stand for, and a
//! harness predicate is made of little else.
//!
//! * **Plain comparisons.** `op == "INSERT"`, `table == "orders"`: a field that on a WAL event
//!   is always a string (or null) against a string literal, or `xid` against an int. A strict
//!   comparison only adds an error when the two sides are of different kinds and neither is
//!   null, so there it never fires, and CEL's own `==` (special-cased, no call) gives the same
//!   answer (string equality, null equal to nothing but null) after resolving the operands in
//!   the same order. `type` is always `"wal"`: `type == "wal"` is decided here, once.
//! * **Fields as identifiers.** CEL resolves the select `data.status` as a qualified name,
//!   building its segments and their joined text (two allocations) before asking the scope for
//!   `data.status`, then `data`, then selecting. The identifier `data.status` is asked for at
//!   once, and the scope answers it from the row (`scope::Scope::path`). A missing column has
//!   no answer, and CEL fails on an unknown identifier rather than a missing field: a failure
//!   all the same, and CEL's `&&`, `||` and `?:` look at whether an operand failed, never at
//!   how.
//!
//! So this program gives the strict program's answer whenever it gives one; when it fails (or
//! finds a field missing) the strict program is evaluated to say why
//! ([`super::Expr::eval_by_cel`]). Proxy events always get the strict program: their fields are
//! JSON of any kind (`data.op` may be a number). Comprehensions are left as written: a macro
//! variable may shadow a field (`[1].exists(op, op == "x")`).

use cel::common::ast::{EntryExpr, Expr as Node, IdedExpr, LiteralValue};

use super::scope::Plan;
use super::{Envelope, NESTED_DATA_FIELDS, STRICT_EQ, STRICT_NE, path_text};

/// `root` (strict) with the comparisons that cannot fail on a WAL event made plain, and the
/// fields of lazy rows named as identifiers.
pub(super) fn for_wal(root: &IdedExpr, envelope: Envelope, plan: &Plan) -> IdedExpr {
    let mut root = root.clone();
    relax(&mut root, envelope);
    name_fields(&mut root, &|path| lazy_path(path, envelope, plan));
    root
}

/// Whether the scope answers `path` (`["data", "status"]`) as one identifier: a column of a
/// lazy row, or (nested) a field of a lazy `data`.
fn lazy_path(path: &[&str], envelope: Envelope, plan: &Plan) -> bool {
    let image = |name: &str| ["data", "old", "key"].iter().position(|i| *i == name);
    match (envelope, path) {
        (Envelope::Native, [row, _]) => image(row).is_some_and(|i| plan.rows[i]),
        (Envelope::Nested, ["data", _]) => plan.nested,
        (Envelope::Nested, ["data", row, _]) => {
            plan.nested && image(row).is_some_and(|i| plan.rows[i])
        }
        _ => false,
    }
}

/// Replaces each select the scope answers whole (`lazy`) by an identifier of its path, the
/// longest first. Not in comprehensions (a macro variable may shadow a row) nor under `has()`
/// (which must select, to test).
fn name_fields(node: &mut IdedExpr, lazy: &dyn Fn(&[&str]) -> bool) {
    match &mut node.expr {
        Node::Select(sel) if !sel.test => {
            let path = select_path(node).filter(|p| lazy(p)).map(|p| p.join("."));
            if let Some(path) = path {
                node.expr = Node::Ident(path);
            } else if let Node::Select(sel) = &mut node.expr {
                name_fields(&mut sel.operand, lazy);
            }
        }
        Node::Call(call) => {
            if let Some(t) = &mut call.target {
                name_fields(t, lazy);
            }
            call.args.iter_mut().for_each(|a| name_fields(a, lazy));
        }
        Node::List(l) => l.elements.iter_mut().for_each(|e| name_fields(e, lazy)),
        Node::Map(m) => {
            for e in &mut m.entries {
                if let EntryExpr::MapEntry(me) = &mut e.expr {
                    name_fields(&mut me.key, lazy);
                    name_fields(&mut me.value, lazy);
                }
            }
        }
        _ => {}
    }
}

/// The segments of a chain of plain selects on an identifier: `["data", "status"]`.
fn select_path(node: &IdedExpr) -> Option<Vec<&str>> {
    match &node.expr {
        Node::Ident(name) => Some(vec![name.as_str()]),
        Node::Select(sel) if !sel.test => {
            let mut path = select_path(&sel.operand)?;
            path.push(&sel.field);
            Some(path)
        }
        _ => None,
    }
}

fn relax(node: &mut IdedExpr, envelope: Envelope) {
    if let Some(holds) = type_test(node) {
        node.expr = Node::Literal(LiteralValue::Boolean(holds.into()));
        return;
    }
    match &mut node.expr {
        Node::Call(call) => {
            if call.target.is_none() && call.args.len() == 2 && cannot_fail(&call.args, envelope) {
                match call.func_name.as_str() {
                    STRICT_EQ => call.func_name = "_==_".into(),
                    STRICT_NE => call.func_name = "_!=_".into(),
                    _ => {}
                }
            }
            if let Some(t) = &mut call.target {
                relax(t, envelope);
            }
            call.args.iter_mut().for_each(|a| relax(a, envelope));
        }
        Node::List(l) => l.elements.iter_mut().for_each(|e| relax(e, envelope)),
        Node::Map(m) => {
            for e in &mut m.entries {
                if let EntryExpr::MapEntry(me) = &mut e.expr {
                    relax(&mut me.key, envelope);
                    relax(&mut me.value, envelope);
                }
            }
        }
        Node::Select(s) => relax(&mut s.operand, envelope),
        // Comprehensions stay strict (module docs); nothing else holds a comparison.
        _ => {}
    }
}

/// What `type == "..."` (or `!=`) gives on a WAL event, whose `type` is always `"wal"`.
fn type_test(node: &IdedExpr) -> Option<bool> {
    let Node::Call(call) = &node.expr else {
        return None;
    };
    let eq = match call.func_name.as_str() {
        STRICT_EQ => true,
        STRICT_NE => false,
        _ => return None,
    };
    if call.target.is_some() || call.args.len() != 2 {
        return None;
    }
    match (&call.args[0].expr, &call.args[1].expr) {
        (Node::Ident(var), Node::Literal(LiteralValue::String(s)))
        | (Node::Literal(LiteralValue::String(s)), Node::Ident(var))
            if var == "type" =>
        {
            Some((s.inner() == "wal") == eq)
        }
        _ => None,
    }
}

/// Whether `[a, b]` is a field and a literal of the one kind that field always has on a WAL
/// event (or null), in either order.
fn cannot_fail(args: &[IdedExpr], envelope: Envelope) -> bool {
    let (field, literal) = match (&args[0].expr, &args[1].expr) {
        (_, Node::Literal(l)) => (&args[0], l),
        (Node::Literal(l), _) => (&args[1], l),
        _ => return false,
    };
    let kind = match literal {
        LiteralValue::String(_) => Kind::String,
        LiteralValue::Int(_) => Kind::Int,
        _ => return false,
    };
    wal_field_kind(field, envelope) == Some(kind)
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    String,
    Int,
}

/// The kind a field always has on a WAL event, null aside (`scope::variable`): `type`, `op`,
/// `lsn` and `commit_lsn` are strings, `schema`, `table` and `ts` strings or null, `xid` an int
/// or null. Natively they are variables; nested, `type` is and the rest are fields of `data`.
fn wal_field_kind(field: &IdedExpr, envelope: Envelope) -> Option<Kind> {
    let path = path_text(field)?;
    let name = match envelope {
        Envelope::Native => path.as_str(),
        Envelope::Nested if path == "type" => "type",
        Envelope::Nested => path
            .strip_prefix("data.")
            .filter(|f| NESTED_DATA_FIELDS.contains(f))?,
    };
    match name {
        "type" | "op" | "schema" | "table" | "lsn" | "commit_lsn" | "ts" => Some(Kind::String),
        "xid" => Some(Kind::Int),
        _ => None,
    }
}
