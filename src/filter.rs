//! Event filters: the fast paths by table and operation.
//!
//! Table patterns are resolved against the catalog once at start-up (so a missing table is an
//! error, not silence) and pushed into the publication, so the server does not even send
//! changes of other tables. The filter here still checks every event, because an existing
//! publication (`--publication`) or `FOR ALL TABLES` may publish more than was asked for.

use std::collections::{HashMap, HashSet};
use std::fmt;

use std::sync::Arc;

use crate::event::{Event, Op};
use crate::expr::{EvalError, Expr};
use crate::marker;

/// The set of operations to emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpSet(u16);

fn bit(op: Op) -> u16 {
    1 << match op {
        Op::Begin => 0,
        Op::Insert => 1,
        Op::Update => 2,
        Op::Delete => 3,
        Op::Truncate => 4,
        Op::Message => 5,
        Op::Commit => 6,
        Op::Proxy => 7,
        Op::Read => 8,
    }
}

impl OpSet {
    pub fn empty() -> OpSet {
        OpSet(0)
    }
    pub fn all() -> OpSet {
        OpSet(0x7f | bit(Op::Read))
    }
    pub fn insert(&mut self, op: Op) {
        self.0 |= bit(op);
    }
    pub fn contains(self, op: Op) -> bool {
        self.0 & bit(op) != 0
    }

    /// The operations a table without a replica identity can be published for: INSERT and
    /// TRUNCATE (PostgreSQL refuses UPDATE and DELETE on a table whose publication publishes
    /// them without one), and the non-row operations.
    pub fn without_identity(self) -> OpSet {
        OpSet(self.0 & !(bit(Op::Update) | bit(Op::Delete)))
    }

    /// The `publish` option of CREATE PUBLICATION for the row ops in this set (PostgreSQL docs,
    /// CREATE PUBLICATION: `publish` takes insert, update, delete, truncate).
    pub fn publish_option(self) -> String {
        [
            (Op::Insert, "insert"),
            (Op::Update, "update"),
            (Op::Delete, "delete"),
            (Op::Truncate, "truncate"),
        ]
        .iter()
        .filter(|(op, _)| self.contains(*op))
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// One `--tables` item: `orders`, `sales.orders`, `sales.*`, `"Mixed Case".t?`.
///
/// Unquoted parts fold to lower case, as SQL identifiers do; `*` and `?` are globs. An
/// unqualified pattern matches tables in the schemas on the role's search path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablePattern {
    pub schema: Option<String>,
    pub table: String,
}

impl TablePattern {
    pub fn parse(text: &str) -> Result<TablePattern, String> {
        let parts = split_identifier(text)?;
        match parts.as_slice() {
            [table] => Ok(TablePattern {
                schema: None,
                table: table.clone(),
            }),
            [schema, table] => Ok(TablePattern {
                schema: Some(schema.clone()),
                table: table.clone(),
            }),
            _ => Err(format!(
                "`{text}` is not a table name: expected table or schema.table"
            )),
        }
    }

    /// Whether this pattern matches `schema.table`; `search_path` is used when unqualified.
    /// True when the table part names one table (no `*` or `?`): only such a name selects a
    /// single partition; a glob matches tables that are not partitions.
    pub fn is_exact(&self) -> bool {
        !self.table.contains(['*', '?'])
    }

    pub fn matches(&self, schema: &str, table: &str, search_path: &[String]) -> bool {
        let schema_ok = match &self.schema {
            Some(p) => glob_match(p, schema),
            None => search_path.iter().any(|s| s == schema),
        };
        schema_ok && glob_match(&self.table, table)
    }
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.table),
            None => f.write_str(&self.table),
        }
    }
}

/// Splits `a.b` on dots outside double quotes; unquoted parts are lower-cased.
fn split_identifier(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted_part = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted_part = true;
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            cur.push('"');
                        }
                        Some('"') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("`{text}`: unterminated double quote")),
                    }
                }
            }
            '.' => {
                if cur.is_empty() {
                    return Err(format!("`{text}`: empty name part"));
                }
                parts.push(std::mem::take(&mut cur));
                quoted_part = false;
            }
            c if c.is_whitespace() => return Err(format!("`{text}`: unexpected space")),
            _ if quoted_part => return Err(format!("`{text}`: text after a closing quote")),
            c => cur.extend(c.to_lowercase()),
        }
    }
    if cur.is_empty() {
        return Err(format!("`{text}`: empty name part"));
    }
    parts.push(cur);
    Ok(parts)
}

/// `*` matches any run of characters, `?` any one character; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The per-event filter, built from resolved tables and the op set.
#[derive(Clone, Debug)]
pub struct Filter {
    /// schema -> tables; None = every table.
    tables: Option<HashMap<String, HashSet<String>>>,
    ops: OpSet,
    /// `--where`, run after the fast paths.
    expr: Option<Arc<Expr>>,
    /// The publications are walwatch's own, made for exactly the watched tables: the server
    /// decides which tables' changes come (with the publication as it was when each change was
    /// written), so a change it sends passes the table check. That is what keeps the changes
    /// of a partition detached since (no longer a partition of a watched table in today's
    /// catalog) and of a table renamed since.
    server_scoped: bool,
    /// Let walwatch's markers through whatever the ops and the expression say.
    keep_markers: bool,
    /// Whose markers are let through: this scope's and everyone's (`crate::marker`).
    marker_scope: Option<String>,
}

impl Filter {
    pub fn new(tables: Option<&[(String, String)]>, ops: OpSet) -> Filter {
        let tables = tables.map(|list| {
            let mut map: HashMap<String, HashSet<String>> = HashMap::new();
            for (s, t) in list {
                map.entry(s.clone()).or_default().insert(t.clone());
            }
            map
        });
        Filter {
            tables,
            ops,
            expr: None,
            server_scoped: false,
            keep_markers: false,
            marker_scope: None,
        }
    }

    /// Trust the server for the table check: the publications are walwatch's own.
    pub fn server_scoped(mut self, yes: bool) -> Filter {
        self.server_scoped = yes;
        self
    }

    /// Adds a `--where` expression; `keep_markers` lets walwatch's own markers through.
    pub fn with_where(mut self, expr: Option<Arc<Expr>>, keep_markers: bool) -> Filter {
        self.expr = expr;
        self.keep_markers = keep_markers;
        self
    }

    /// Markers scoped to another recorder or watch than `scope` are dropped, not kept.
    pub fn marker_scope(mut self, scope: Option<String>) -> Filter {
        self.marker_scope = scope;
        self
    }

    /// Whether `e` (one of walwatch's markers) goes to the sinks: markers are kept for
    /// recorders and watches (never for people watching), and only those for them.
    pub fn keeps_marker(&self, e: &Event) -> bool {
        self.keep_markers && marker::is_for(e, self.marker_scope.as_deref())
    }

    /// Whether `schema.table` is among the watched tables (every table is, without a list).
    pub fn watches(&self, schema: &str, table: &str) -> bool {
        match &self.tables {
            Some(map) => map.get(schema).is_some_and(|set| set.contains(table)),
            None => true,
        }
    }

    /// Whether the event passes. BEGIN, COMMIT and MESSAGE have no table and pass the table
    /// check; the op set and the expression apply to every op. An expression that fails on the
    /// event (a type error) is an error, never a silent no.
    pub fn accepts(&self, e: &Event) -> Result<bool, EvalError> {
        if marker::is_marker(e) {
            return Ok(self.keeps_marker(e));
        }
        if !self.ops.contains(e.op) {
            return Ok(false);
        }
        let table_ok = match (&self.tables, &e.schema, &e.table) {
            (Some(_), Some(s), Some(t)) => {
                self.server_scoped
                    || self.watches(s, t)
                    || e.partition_of
                        .as_ref()
                        .is_some_and(|p| self.watches(&p.schema, &p.table))
            }
            _ => true,
        };
        match &self.expr {
            Some(x) if table_ok => x.matches(e),
            _ => Ok(table_ok),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_partition_passes_through_its_watched_partitioned_table() {
        let f = Filter::new(Some(&[("s".into(), "meas".into())]), OpSet::all());
        let mut e = Event::new(crate::event::Op::Insert, crate::event::Lsn(1));
        e.schema = Some(Arc::from("s"));
        e.table = Some(Arc::from("meas_eu"));
        assert!(!f.accepts(&e).unwrap(), "not watched, and no partition_of");
        e.partition_of = Some(Arc::new(crate::event::TableName {
            schema: Arc::from("s"),
            table: Arc::from("meas"),
        }));
        assert!(f.accepts(&e).unwrap());
        e.partition_of = Some(Arc::new(crate::event::TableName {
            schema: Arc::from("s"),
            table: Arc::from("other"),
        }));
        assert!(!f.accepts(&e).unwrap());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("ord*", "orders"));
        assert!(glob_match("o?ders", "orders"));
        assert!(glob_match("*rs", "orders"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("ord", "orders"));
        assert!(!glob_match("a*b", "acd"));
    }

    #[test]
    fn patterns_parse_and_fold_case() {
        let p = TablePattern::parse("Sales.Orders").unwrap();
        assert_eq!(p.schema.as_deref(), Some("sales"));
        assert_eq!(p.table, "orders");
        let q = TablePattern::parse("\"My.Schema\".\"T\"").unwrap();
        assert_eq!(q.schema.as_deref(), Some("My.Schema"));
        assert_eq!(q.table, "T");
        assert!(TablePattern::parse("a.b.c").is_err());
        assert!(TablePattern::parse("a.").is_err());
        assert!(TablePattern::parse("\"open").is_err());
    }

    #[test]
    fn unqualified_patterns_use_the_search_path() {
        let p = TablePattern::parse("orders").unwrap();
        let sp = vec!["public".to_string()];
        assert!(p.matches("public", "orders", &sp));
        assert!(!p.matches("sales", "orders", &sp));
        let s = TablePattern::parse("sales.*").unwrap();
        assert!(s.matches("sales", "anything", &sp));
    }

    #[test]
    fn filter_checks_tables_and_ops() {
        let mut ops = OpSet::empty();
        ops.insert(Op::Insert);
        let f = Filter::new(Some(&[("public".into(), "orders".into())]), ops);
        let mut e = Event::new(Op::Insert, crate::Lsn(1));
        e.schema = Some(Arc::from("public"));
        e.table = Some(Arc::from("orders"));
        assert_eq!(f.accepts(&e), Ok(true));
        e.table = Some(Arc::from("users"));
        assert_eq!(f.accepts(&e), Ok(false));
        e.table = Some(Arc::from("orders"));
        e.op = Op::Delete;
        assert_eq!(f.accepts(&e), Ok(false));
    }

    #[test]
    fn where_runs_after_the_fast_paths_and_markers_can_pass() {
        let x = Arc::new(Expr::compile(r#"data.id == 2"#).unwrap());
        let f = Filter::new(None, OpSet::all()).with_where(Some(x.clone()), false);
        let mut e = Event::new(Op::Insert, crate::Lsn(1));
        e.table = Some(Arc::from("orders"));
        e.schema = Some(Arc::from("public"));
        e.data = Some(crate::event::Row {
            columns: vec![crate::event::Column {
                name: Arc::from("id"),
                value: crate::Value::Text("2".into()),
            }],
        });
        // A string compared with a number is an error, not a silent false.
        assert!(f.accepts(&e).is_err());
        let mut mark = Event::new(Op::Message, crate::Lsn(2));
        mark.message = Some(crate::LogicalMessage {
            transactional: true,
            prefix: marker::FENCE_PREFIX.into(),
            content: b"1".to_vec(),
        });
        assert_eq!(f.accepts(&mark), Ok(false));
        let keep = Filter::new(None, OpSet::empty()).with_where(Some(x), true);
        assert_eq!(keep.accepts(&mark), Ok(true));
    }

    #[test]
    fn publish_option_lists_row_ops() {
        let mut ops = OpSet::empty();
        ops.insert(Op::Insert);
        ops.insert(Op::Delete);
        assert_eq!(ops.publish_option(), "insert, delete");
    }
}
