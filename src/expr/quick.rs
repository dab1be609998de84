//! The fast path of an expression: its leading `field == literal` conjuncts, decided on the
//! event itself, without building CEL values.
//!
//! Why: a harness predicate is nearly always `type == "wal" && table == "orders" && op ==
//! "INSERT" && data.id == 42`, and an assertion over a large recording (or a Python watch
//! holding a million events) rejects almost every event on one of those comparisons. Building
//! the event's CEL variables costs far more than comparing a string.
//!
//! The fast path never disagrees with CEL: it decides only a prefix of the conjuncts, in
//! order, and only when the value and the literal are of the same kind (so the strict
//! comparison could not have been a type error) and the field is present (so it could not have
//! been a missing field). A conjunct it cannot decide hands the whole expression to CEL. A
//! false conjunct after conjuncts that all held is `false` in CEL too: `&&` stops at the first
//! false operand from the left.

use cel::common::ast::{Expr as Node, IdedExpr, LiteralValue};

use super::{Envelope, STRICT_EQ, Verdict, path_text};
use crate::event::{Event, Row, Value};

/// One `path == literal` conjunct.
#[derive(Debug, Clone)]
pub(super) struct QuickEq {
    path: Path,
    literal: Literal,
}

/// The fields the fast path reads.
#[derive(Debug, Clone)]
enum Path {
    Type,
    Op,
    Schema,
    Table,
    /// A column of `data`, `old` or `key`.
    Column(Image, String),
}

#[derive(Debug, Clone, Copy)]
enum Image {
    Data,
    Old,
    Key,
}

#[derive(Debug, Clone)]
enum Literal {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// The fast path of every conjunct, in order (`None` where there is none).
pub(super) fn plan(conjuncts: &[IdedExpr], envelope: Envelope) -> Vec<Option<QuickEq>> {
    conjuncts.iter().map(|c| QuickEq::of(c, envelope)).collect()
}

/// The verdict when the fast path decides it; `None` hands the expression to CEL.
pub(super) fn verdict(plan: &[Option<QuickEq>], e: &Event) -> Option<Verdict> {
    // Proxy events are few; their fields are JSON, read by CEL.
    if e.proxy.is_some() || plan.is_empty() {
        return None;
    }
    for q in plan {
        if !q.as_ref()?.decide(e)? {
            return Some(Verdict::NoMatch);
        }
    }
    Some(Verdict::Match)
}

impl QuickEq {
    fn of(node: &IdedExpr, envelope: Envelope) -> Option<QuickEq> {
        let Node::Call(call) = &node.expr else {
            return None;
        };
        if call.func_name != STRICT_EQ || call.target.is_some() || call.args.len() != 2 {
            return None;
        }
        let (path, literal) = match (&call.args[0].expr, &call.args[1].expr) {
            (_, Node::Literal(l)) => (&call.args[0], l),
            (Node::Literal(l), _) => (&call.args[1], l),
            _ => return None,
        };
        Some(QuickEq {
            path: Path::of(&path_text(path)?, envelope)?,
            literal: match literal {
                LiteralValue::String(s) => Literal::Str(s.inner().to_string()),
                LiteralValue::Int(i) => Literal::Int(*i.inner()),
                LiteralValue::Boolean(b) => Literal::Bool(*b.inner()),
                _ => return None,
            },
        })
    }

    /// Whether the conjunct holds on `e` (a WAL event); `None` when CEL must say.
    fn decide(&self, e: &Event) -> Option<bool> {
        match (&self.path, &self.literal) {
            (Path::Type, Literal::Str(s)) => Some(s == "wal"),
            (Path::Op, Literal::Str(s)) => Some(s == e.op.as_str()),
            (Path::Schema, Literal::Str(s)) => Some(**e.schema.as_ref()? == **s),
            (Path::Table, Literal::Str(s)) => Some(**e.table.as_ref()? == **s),
            (Path::Column(image, name), literal) => {
                // A message's `data` is the message, not a row.
                if e.message.is_some() {
                    return None;
                }
                let row: &Row = match image {
                    Image::Data => e.data.as_ref(),
                    Image::Old => e.old.as_ref(),
                    Image::Key => e.key.as_ref(),
                }?;
                same(row.get(name)?, literal)
            }
            _ => None,
        }
    }
}

impl Path {
    /// The path as the envelope spells it: `table` natively, `data.table` nested.
    fn of(text: &str, envelope: Envelope) -> Option<Path> {
        if text == "type" {
            return Some(Path::Type);
        }
        let field = match envelope {
            Envelope::Native => text,
            Envelope::Nested => text.strip_prefix("data.")?,
        };
        match field {
            "op" => return Some(Path::Op),
            "schema" => return Some(Path::Schema),
            "table" => return Some(Path::Table),
            _ => {}
        }
        let (image, column) = field.split_once('.')?;
        if column.contains('.') {
            return None;
        }
        let image = match image {
            "data" => Image::Data,
            "old" => Image::Old,
            "key" => Image::Key,
            _ => return None,
        };
        Some(Path::Column(image, column.to_string()))
    }
}

/// Whether a column value equals the literal, when both are of one kind as CEL sees them
/// (`crate::expr::scope::value`: numeric, temporal and uuid values are strings there; json is
/// not).
fn same(v: &Value, literal: &Literal) -> Option<bool> {
    match (v, literal) {
        (Value::Int(i), Literal::Int(l)) => Some(i == l),
        (Value::Bool(b), Literal::Bool(l)) => Some(b == l),
        (Value::Json(_), _) => None,
        (v, Literal::Str(l)) => v.as_str().map(|s| s == l),
        _ => None,
    }
}
