//! The former evaluation, kept (tests only) as the oracle that the lazy scope (`scope.rs`) and
//! the strict operators on resolved values are checked against: every variable a full `Value`
//! (each row a complete map), bound by name with `add_variable_from_value`, and `==`, `!=`,
//! `in` given `Value` copies of their operands.

use std::collections::HashMap;

use cel::objects::Key;
use cel::{Context, Value as Cel};

use super::scope::variable;
use super::{
    Envelope, Expr, NESTED_DATA_FIELDS, STRICT_EQ, STRICT_IN, STRICT_NE, Verdict, explain_error,
    missing_field, show, strict_eq, strict_in,
};
use crate::event::Event;

fn root() -> Context<'static, 'static> {
    let mut ctx = Context::default();
    let _ = ctx.add_function(STRICT_EQ, |a: Cel, b: Cel| strict_eq(&a, &b, "=="));
    let _ = ctx.add_function(STRICT_NE, |a: Cel, b: Cel| {
        strict_eq(&a, &b, "!=").map(|eq| !eq)
    });
    let _ = ctx.add_function(STRICT_IN, strict_in);
    ctx
}

/// `x` on `e` the former way: what [`Expr::eval_by_cel`] must answer, messages included.
pub(super) fn eval(x: &Expr, e: &Event) -> Result<Verdict, String> {
    let root = root();
    let mut scope = root.new_inner_scope();
    for var in x.plan.vars() {
        let value = match x.envelope {
            Envelope::Native => variable(e, var),
            Envelope::Nested => nested_variable(e, var),
        };
        scope.add_variable_from_value(*var, value);
    }
    match Cel::resolve(&x.root, &scope) {
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

/// A nested variable, `data` holding every field of a WAL event.
fn nested_variable(e: &Event, name: &str) -> Cel {
    if e.proxy.is_some() {
        return variable(e, name);
    }
    match name {
        "type" => variable(e, "type"),
        "data" => {
            let map: HashMap<Key, Cel> = NESTED_DATA_FIELDS
                .iter()
                .filter(|f| **f != "partition_of" || e.partition_of.is_some())
                .map(|f| {
                    (
                        Key::String(std::sync::Arc::new(f.to_string())),
                        variable(e, f),
                    )
                })
                .collect();
            map.into()
        }
        _ => Cel::Null,
    }
}
