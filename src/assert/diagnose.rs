//! Why an expected event may be missing: checks against the server, run only when an
//! assertion fails (they cost a few catalog queries).
//!
//! Each finding is one sentence that says what to do. The checks follow what the predicate
//! reads: the table it names (does it exist in this database, is it in the publication, is the
//! operation published), the columns it reads from `old` or from a DELETE (does the replica
//! identity carry them), and what holds changes back (transactions still open in other sessions,
//! a slot behind the server).

use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, Row};

use super::Predicate;
use crate::pg::catalog;

/// Column `idx` of a row of diagnostics query `query`. Each query casts its columns to the
/// types read here (as the catalog queries do, src/pg/catalog.rs); should one still come back
/// as another type, the check is left out (the report must not fail) and the error is logged:
/// it is a walwatch bug.
fn col<'a, T: FromSql<'a>>(row: &'a Row, query: &'static str, idx: usize) -> Option<T> {
    catalog::column(row, query, idx)
        .inspect_err(|e| tracing::warn!("{e}"))
        .ok()
}

/// What the failing assertion was watching.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// The publications the stream reads, when known (empty: unknown).
    pub publications: Vec<String>,
    /// The slot the stream reads, when known.
    pub slot: Option<String>,
}

/// Runs the checks; a check whose query fails is left out (the report must not fail).
pub async fn diagnose(client: &Client, pred: &dyn Predicate, scope: &Scope) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(x) = pred.expr() {
        let op = x.wanted("op");
        if let Some(table) = x.wanted("table") {
            let schema = x.wanted("schema");
            table_checks(
                client,
                scope,
                &table,
                schema.as_deref(),
                op.as_deref(),
                x,
                &mut out,
            )
            .await;
        }
    }
    open_transactions(client, &mut out).await;
    if let Some(slot) = &scope.slot {
        slot_lag(client, slot, &mut out).await;
    }
    out
}

/// Whether the table (or one of its leaf partitions) has no replica identity.
async fn lacks_identity(client: &Client, schema: &str, table: &str) -> bool {
    let one = [(schema.to_string(), table.to_string())];
    crate::pg::publication::split_by_identity(client, Some(&one))
        .await
        .is_ok_and(|(_, without)| !without.is_empty())
}

/// The table a predicate names, as the server knows it.
struct Table<'a> {
    /// The name the predicate gave.
    name: &'a str,
    /// Its schema (the one given, else the first on the search path that has it).
    nsp: String,
    /// `relreplident`: d, n, f or i.
    ident: String,
    oid: i64,
    /// `schema.name`, as findings spell it.
    qualified: String,
}

/// The checks on the table the predicate names, in order: does it exist, do the stream's
/// publications carry it (and the operation), does its replica identity carry the columns read.
async fn table_checks(
    client: &Client,
    scope: &Scope,
    table: &str,
    schema: Option<&str>,
    op: Option<&str>,
    x: &crate::expr::Expr,
    out: &mut Vec<String>,
) {
    let Some(t) = find_table(client, table, schema, out).await else {
        return;
    };
    if scope.publications.is_empty() {
        in_any_publication(client, &t, out).await;
    } else if in_publication(client, &scope.publications, &t, out).await
        && let Some(op) = op
    {
        operation_published(client, &scope.publications, &t, op, out).await;
    }
    replica_identity_columns(client, &t, op, x, out).await;
}

/// Whether the named table exists in this database (in `schema`, else on the search path):
/// when it does not, that is the finding.
async fn find_table<'a>(
    client: &Client,
    table: &'a str,
    schema: Option<&str>,
    out: &mut Vec<String>,
) -> Option<Table<'a>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relreplident::text, current_database()::text, \
                    c.oid::int8 \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = $1 AND c.relkind IN ('r', 'p') \
               AND (n.nspname = $2 OR ($2 IS NULL AND n.nspname = ANY (current_schemas(false))))",
            &[&table, &schema],
        )
        .await
        .ok()?;
    let Some(row) = rows.first() else {
        let db: String = client
            .query_one("SELECT current_database()::text", &[])
            .await
            .ok()
            .and_then(|r| col(&r, "diagnose: current_database", 0))
            .unwrap_or_default();
        out.push(format!(
            "there is no table `{table}` in database `{db}`{}: is the name right, and is the \
             watch connected to the database the application writes to?",
            schema.map(|s| format!(" (schema {s})")).unwrap_or_default()
        ));
        return None;
    };
    const TABLE: &str = "diagnose: table";
    let (Some(nsp), Some(ident), Some(oid)) = (
        col::<String>(row, TABLE, 0),
        col::<String>(row, TABLE, 1),
        col::<i64>(row, TABLE, 3),
    ) else {
        return None;
    };
    let qualified = format!("{nsp}.{table}");
    Some(Table {
        name: table,
        nsp,
        ident,
        oid,
        qualified,
    })
}

/// Whether the table is in one of the publications the stream reads (a failed query counts
/// as yes): when it is not, that is the finding.
async fn in_publication(
    client: &Client,
    publications: &[String],
    t: &Table<'_>,
    out: &mut Vec<String>,
) -> bool {
    let listed = client
        .query(
            "SELECT 1 FROM pg_publication_tables \
             WHERE pubname = ANY ($1) AND schemaname = $2 AND tablename = $3",
            &[&publications, &t.nsp, &t.name],
        )
        .await
        .map(|r| !r.is_empty())
        .unwrap_or(true);
    if !listed {
        let (qualified, names) = (&t.qualified, publications.join(", "));
        out.push(format!(
            "table {qualified} is not in the publication ({names}) the stream reads, so \
             the server never sends its changes: add it to the watched tables \
             (--tables {qualified}, or .tables([\"{qualified}\"]))"
        ));
    }
    listed
}

/// Whether any publication that has the table publishes the operation: when none does, the
/// finding says why (no replica identity for UPDATE and DELETE, else the publish list).
async fn operation_published(
    client: &Client,
    publications: &[String],
    t: &Table<'_>,
    op: &str,
    out: &mut Vec<String>,
) {
    let Ok(r) = client
        .query_one(
            "SELECT coalesce(bool_or(p.pubinsert), false), \
                    coalesce(bool_or(p.pubupdate), false), \
                    coalesce(bool_or(p.pubdelete), false), \
                    coalesce(bool_or(p.pubtruncate), false) \
             FROM pg_publication p JOIN pg_publication_tables t ON t.pubname = p.pubname \
             WHERE p.pubname = ANY ($1) AND t.schemaname = $2 AND t.tablename = $3",
            &[&publications, &t.nsp, &t.name],
        )
        .await
    else {
        return;
    };
    let column = match op {
        "INSERT" => Some(0),
        "UPDATE" => Some(1),
        "DELETE" => Some(2),
        "TRUNCATE" => Some(3),
        _ => None,
    };
    let published = column
        .is_none_or(|i| col::<bool>(&r, "diagnose: publication operations", i).unwrap_or(true));
    if published {
        return;
    }
    let qualified = &t.qualified;
    if matches!(op, "UPDATE" | "DELETE") && lacks_identity(client, &t.nsp, t.name).await {
        out.push(format!(
            "table {qualified} has no replica identity, so walwatch does not publish \
             its {op}s (publishing them would make PostgreSQL refuse the application's \
             {op} statements): give it a primary key, or ALTER TABLE {qualified} \
             REPLICA IDENTITY FULL, and start the watch again"
        ));
    } else {
        let names = publications.join(", ");
        out.push(format!(
            "the publication ({names}) does not publish {op} of {qualified}: the \
             server never sends it (include it in --ops / the publication's publish list)"
        ));
    }
}

/// Without known publications: whether any publication has the table (a failed query counts
/// as yes); when none does, that is the finding.
async fn in_any_publication(client: &Client, t: &Table<'_>, out: &mut Vec<String>) {
    let in_any = client
        .query(
            "SELECT 1 FROM pg_publication_tables WHERE schemaname = $1 AND tablename = $2",
            &[&t.nsp, &t.name],
        )
        .await
        .map(|r| !r.is_empty())
        .unwrap_or(true);
    if !in_any {
        let qualified = &t.qualified;
        out.push(format!(
            "table {qualified} is in no publication, so no stream carries its changes: \
             the recorder must watch it (walwatch record --tables {qualified})"
        ));
    }
}

/// Whether the table's replica identity carries the columns the predicate reads from `old`
/// or from a DELETE: the finding names those it does not.
async fn replica_identity_columns(
    client: &Client,
    t: &Table<'_>,
    op: Option<&str>,
    x: &crate::expr::Expr,
    out: &mut Vec<String>,
) {
    // Columns the server only sends under some replica identities (docs, 31.1 "Publication";
    // ALTER TABLE ... REPLICA IDENTITY): `old` of an UPDATE, and the row of a DELETE.
    let needs_identity: Vec<String> = x
        .columns_read()
        .into_iter()
        .filter(|(var, _)| var == "old" || (op == Some("DELETE") && var != "key"))
        .map(|(var, col)| format!("{var}.{col}"))
        .collect();
    if needs_identity.is_empty() || t.ident == "f" {
        return;
    }
    let key_cols = identity_key_columns(client, t).await;
    let lacking: Vec<&String> = needs_identity
        .iter()
        .filter(|path| {
            let col = path.split_once('.').map(|(_, c)| c).unwrap_or(path);
            path.starts_with("old.") || !key_cols.iter().any(|k| k == col)
        })
        .collect();
    if lacking.is_empty() {
        return;
    }
    let ident_name = match t.ident.as_str() {
        "d" => "DEFAULT",
        "n" => "NOTHING",
        "i" => "USING INDEX",
        _ => "FULL",
    };
    let lacking: Vec<&str> = lacking.iter().map(|s| s.as_str()).collect();
    let qualified = &t.qualified;
    out.push(format!(
        "table {qualified} has REPLICA IDENTITY {ident_name} (key columns: {}), so the server \
         does not send {} (an UPDATE's old row, a DELETE's non-key columns): \
         ALTER TABLE {qualified} REPLICA IDENTITY FULL",
        if key_cols.is_empty() {
            "none".to_string()
        } else {
            key_cols.join(", ")
        },
        lacking.join(", ")
    ));
}

/// The columns of the table's replica identity: the primary key under DEFAULT, the chosen
/// index under USING INDEX, none otherwise (or when the query fails).
async fn identity_key_columns(client: &Client, t: &Table<'_>) -> Vec<String> {
    client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1::int8::oid \
               AND ((($2 = 'd') AND i.indisprimary) OR (($2 = 'i') AND i.indisreplident))",
            &[&t.oid, &t.ident],
        )
        .await
        .ok()
        .and_then(|rows| {
            rows.iter()
                .map(|r| col(r, "diagnose: replica identity columns", 0))
                .collect()
        })
        .unwrap_or_default()
}

/// Transactions of other sessions in this database that have written and not committed: their
/// changes reach the stream only at commit.
async fn open_transactions(client: &Client, out: &mut Vec<String>) {
    let Ok(rows) = client
        .query(
            "SELECT pid::int4, coalesce(application_name, '')::text, coalesce(state, '')::text, \
                    coalesce(to_char(xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '')::text, \
                    left(regexp_replace(coalesce(query, ''), '\\s+', ' ', 'g'), 120)::text \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_xid IS NOT NULL AND backend_type = 'client backend' \
             ORDER BY xact_start LIMIT 5",
            &[],
        )
        .await
    else {
        return;
    };
    const Q: &str = "diagnose: open transactions";
    for r in rows {
        let (Some(pid), Some(app), Some(state), Some(since), Some(query)) = (
            col::<i32>(&r, Q, 0),
            col::<String>(&r, Q, 1),
            col::<String>(&r, Q, 2),
            col::<String>(&r, Q, 3),
            col::<String>(&r, Q, 4),
        ) else {
            continue;
        };
        out.push(format!(
            "a transaction is still open in session {pid}{} ({state} since {since}, last \
             query: {query}): it has written but not committed, and its changes reach the \
             stream only when it commits",
            if app.is_empty() {
                String::new()
            } else {
                format!(" of `{app}`")
            }
        ));
    }
}

/// How far the slot's confirmed position is behind the server's WAL.
async fn slot_lag(client: &Client, slot: &str, out: &mut Vec<String>) {
    let Ok(Some(r)) = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, pg_current_wal_lsn()::text, \
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, active::bool \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
    else {
        return;
    };
    const Q: &str = "diagnose: slot lag";
    let (Some(confirmed), Some(current), Some(behind), Some(active)) = (
        col::<Option<String>>(&r, Q, 0),
        col::<String>(&r, Q, 1),
        col::<Option<i64>>(&r, Q, 2),
        col::<bool>(&r, Q, 3),
    ) else {
        return;
    };
    if !active {
        out.push(format!(
            "slot `{slot}` has no active consumer: the stream is not running"
        ));
    } else if let Some(behind) = behind.filter(|b| *b > 1 << 20) {
        out.push(format!(
            "slot `{slot}` has confirmed {} while the server is at {current}: the stream is \
             {} MB behind",
            confirmed.unwrap_or_default(),
            behind >> 20
        ));
    }
}
