//! Catalog work on the metadata connection (tokio-postgres, separate from the replication
//! connection): checking the server is set up for logical decoding, resolving `--tables`,
//! managing the publication and loading user types.
//!
//! Every query here casts each column it selects to the SQL type of the Rust type it is read as
//! (`int4` for `i32`, `int8` for `i64`, `text` for `String`, `bool`, `oid` for `u32`; the
//! tokio-postgres `FromSql` table), and reads it with [`column`] (`Row::try_get`), never
//! `Row::get`: catalog column types change between server versions (`pg_attribute.attndims` is
//! `int4` up to PostgreSQL 16 and `int2` from 17 on, see the `pg_attribute` page of each
//! version's docs), and a type surprise must be an error naming the query
//! ([`Error::CatalogType`]), not a panic in whichever thread ran it. tests/catalog.rs runs each
//! of them on every server of the test matrix.

use crate::pg::quote::quote_ident;
use tokio_postgres::types::FromSql;
use tokio_postgres::{Client, Row};

use crate::decode::TypeRegistry;
use crate::decode::value::TYPE_QUERY;
use crate::error::{Error, Result};
use crate::event::{Lsn, TableName};
use crate::filter::TablePattern;

/// Column `idx` of a row of catalog query `query` (its function's name), as `T`: an
/// [`Error::CatalogType`] naming the query when the column is not of `T`'s type.
pub fn column<'a, T: FromSql<'a>>(row: &'a Row, query: &'static str, idx: usize) -> Result<T> {
    row.try_get(idx)
        .map_err(|source| Error::CatalogType { query, source })
}

/// Facts about the server and the connected role, read once at start-up.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    pub version_num: u32,
    pub database: String,
    pub user: String,
    pub is_superuser: bool,
    pub search_path: Vec<String>,
}

/// Reads server facts and refuses a server that cannot do logical decoding.
pub async fn check_server(client: &Client) -> Result<ServerInfo> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level')::text, \
                    current_setting('server_version_num')::int4, \
                    current_database()::text, current_user::text, \
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)::bool, \
                    current_schemas(false)::text[]",
            &[],
        )
        .await?;
    const Q: &str = "check_server";
    let wal_level: String = column(&row, Q, 0)?;
    let version_num: i32 = column(&row, Q, 1)?;
    let info = ServerInfo {
        version_num: version_num as u32,
        database: column(&row, Q, 2)?,
        user: column(&row, Q, 3)?,
        is_superuser: column::<Option<bool>>(&row, Q, 4)?.unwrap_or(false),
        search_path: column(&row, Q, 5)?,
    };
    if wal_level != "logical" {
        return Err(Error::Setup(format!(
            "the server's wal_level is `{wal_level}`, and logical decoding needs `logical`: \
             run ALTER SYSTEM SET wal_level = logical (or set it in postgresql.conf) and restart the server"
        )));
    }
    if info.version_num < 100_000 {
        return Err(Error::Setup(format!(
            "PostgreSQL {} is too old: walwatch needs the pgoutput plugin of PostgreSQL 10 or later",
            info.version_num
        )));
    }
    Ok(info)
}

/// Resolves `--tables` patterns to concrete (schema, table) pairs. A pattern that matches no
/// table is an error naming what exists instead.
pub async fn resolve_tables(
    client: &Client,
    patterns: &[TablePattern],
    search_path: &[String],
) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relispartition::bool FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    const Q: &str = "resolve_tables";
    let all = rows
        .iter()
        .map(|r| Ok((column(r, Q, 0)?, column(r, Q, 1)?, column(r, Q, 2)?)))
        .collect::<Result<Vec<(String, String, bool)>>>()?;
    let mut out: Vec<(String, String)> = Vec::new();
    for p in patterns {
        let mut matched = false;
        // A partition is watched through its partitioned table; by its own name only when
        // named exactly (a glob such as `sales.*` would otherwise list every partition too).
        for (s, t, _) in all.iter().filter(|(_, _, part)| !part || p.is_exact()) {
            if p.matches(s, t, search_path) {
                matched = true;
                if !out.iter().any(|(os, ot)| os == s && ot == t) {
                    out.push((s.clone(), t.clone()));
                }
            }
        }
        if !matched {
            let elsewhere: Vec<String> = all
                .iter()
                .filter(|(_, t, _)| crate::filter::glob_match(&p.table, t))
                .map(|(s, t, _)| format!("{s}.{t}"))
                .take(5)
                .collect();
            let scope = match &p.schema {
                Some(s) => format!("schema `{s}`"),
                None => format!("the search path ({})", search_path.join(", ")),
            };
            let mut msg = format!("--tables: no table matches `{p}` in {scope}");
            if elsewhere.is_empty() {
                msg.push_str("; check the name and the database in --dsn");
            } else {
                msg.push_str(&format!(
                    "; did you mean {}? (qualify it with its schema)",
                    elsewhere.join(", ")
                ));
            }
            return Err(Error::NoSuchTable(msg));
        }
    }
    Ok(out)
}

/// The partitioned tables relation `oid` is a partition of, nearest first, up to the root
/// of its partition tree (`pg_partition_ancestors`, PostgreSQL 12+, lists the relation itself
/// first); empty for a table that is not a partition, or that no longer exists.
pub async fn partition_ancestors(client: &Client, oid: u32) -> Result<Vec<TableName>> {
    const Q: &str = "partition_ancestors";
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text \
             FROM pg_partition_ancestors($1::oid::regclass) WITH ORDINALITY AS a(relid, depth) \
             JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.relid <> $1::oid ORDER BY a.depth",
            &[&oid],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(TableName {
                schema: column::<String>(r, Q, 0)?.into(),
                table: column::<String>(r, Q, 1)?.into(),
            })
        })
        .collect()
}

/// The (schema, table) pairs a publication publishes, sorted.
pub async fn publication_tables(client: &Client, name: &str) -> Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&name],
        )
        .await?;
    const Q: &str = "publication_tables";
    rows.iter()
        .map(|r| Ok((column(r, Q, 0)?, column(r, Q, 1)?)))
        .collect()
}

/// Checks that the role may read every watched table. Logical decoding itself checks no table
/// privilege (a REPLICATION role sees every published row), so walwatch refuses to stream a
/// table its role could not `SELECT`: the change stream never shows more than the role may
/// read, and a missing grant is a message that names it.
pub async fn check_select(
    client: &Client,
    info: &ServerInfo,
    tables: &[(String, String)],
) -> Result<()> {
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        tables.iter().map(|(s, t)| (s.as_str(), t.as_str())).unzip();
    let rows = client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname)::text \
             FROM unnest($1::text[], $2::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t \
             WHERE NOT has_table_privilege(c.oid, 'SELECT') ORDER BY 1",
            &[&schemas, &names],
        )
        .await?;
    let denied = rows
        .iter()
        .map(|r| column(r, "check_select", 0))
        .collect::<Result<Vec<String>>>()?;
    if denied.is_empty() {
        return Ok(());
    }
    Err(Error::Setup(format!(
        "role `{}` may not read {}: walwatch streams only tables its role can SELECT. An \
         administrator can grant it: GRANT SELECT ON {} TO {};",
        info.user,
        denied.join(", "),
        denied.join(", "),
        quote_ident(&info.user)
    )))
}

/// The tables a publication publishes, and the partitioned tables it publishes partitions of
/// (without `publish_via_partition_root`, `pg_publication_tables` lists the partitions, not
/// the table named in CREATE PUBLICATION; `pg_partition_ancestors`, PostgreSQL 12+, lists a
/// partition itself and its ancestors, and nothing for a table that is not a partition).
async fn published_or_partitioned(client: &Client, name: &str) -> Result<Vec<(String, String)>> {
    const Q: &str = "published_or_partitioned";
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = $1 \
             UNION \
             SELECT an.nspname::text, ac.relname::text \
             FROM pg_publication_tables pt \
             JOIN pg_namespace n ON n.nspname = pt.schemaname \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
             CROSS JOIN LATERAL pg_partition_ancestors(c.oid) a \
             JOIN pg_class ac ON ac.oid = a.relid \
             JOIN pg_namespace an ON an.oid = ac.relnamespace \
             WHERE pt.pubname = $1",
            &[&name],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((column(r, Q, 0)?, column(r, Q, 1)?)))
        .collect()
}

/// Checks that an existing publication exists and publishes every watched table.
pub async fn check_publication(
    client: &Client,
    info: &ServerInfo,
    name: &str,
    tables: Option<&[(String, String)]>,
) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT puballtables::bool FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else {
        return Err(Error::Setup(format!(
            "publication `{name}` does not exist in database `{}`: create it (CREATE PUBLICATION {} FOR TABLE ...) \
             or leave out --publication and walwatch creates one",
            info.database,
            quote_ident(name)
        )));
    };
    let all: bool = column(&row, "check_publication", 0)?;
    if let (false, Some(list)) = (all, tables) {
        let published = published_or_partitioned(client, name).await?;
        let missing: Vec<String> = list
            .iter()
            .filter(|t| !published.contains(t))
            .map(|(s, t)| format!("{s}.{t}"))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Setup(format!(
                "publication `{name}` does not publish {}: add it (ALTER PUBLICATION {} ADD TABLE ...) \
                 or leave out --publication",
                missing.join(", "),
                quote_ident(name)
            )));
        }
    }
    Ok(())
}

pub async fn drop_publication(client: &Client, name: &str) -> Result<()> {
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await?;
    Ok(())
}

/// Loads user-defined types (domains, enums, arrays of them) so they decode as their base
/// types: pgoutput's Type message names a type but does not say what it is built on (PostgreSQL
/// docs, 55.9 "Logical Replication Message Formats").
pub async fn load_types(client: &Client) -> Result<TypeRegistry> {
    let rows = client.query(TYPE_QUERY, &[]).await?;
    let mut reg = TypeRegistry::new();
    const Q: &str = "load_types";
    for r in rows {
        let typtype: String = column(&r, Q, 1)?;
        let delim: String = column(&r, Q, 4)?;
        reg.insert_row(
            column(&r, Q, 0)?,
            &typtype,
            column(&r, Q, 2)?,
            column(&r, Q, 3)?,
            &delim,
        );
    }
    Ok(reg)
}

/// The server's WAL insert position: what `--endpos now` means. Insert, not flush: with
/// `synchronous_commit = off` a commit returns before its WAL is flushed, and "now" must still
/// include it. The walsender sends it once the WAL writer has flushed it (within
/// 3 x wal_writer_delay).
pub async fn current_wal_lsn(client: &Client) -> Result<Lsn> {
    let row = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?;
    let text: String = column(&row, "current_wal_lsn", 0)?;
    text.parse()
        .map_err(|e| Error::Setup(format!("the server returned a bad LSN: {e}")))
}

/// The primary-key columns of a table, in key order (empty when it has none).
pub async fn primary_key(client: &Client, schema: &str, table: &str) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT a.attname::text \
             FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&schema, &table],
        )
        .await?;
    rows.iter().map(|r| column(r, "primary_key", 0)).collect()
}

/// The primary-key columns of the table with OID `oid`, in key order (empty without one, or
/// when the table no longer exists).
pub async fn primary_key_of(client: &Client, oid: u32) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::oid AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&oid],
        )
        .await?;
    rows.iter()
        .map(|r| column(r, "primary_key_of", 0))
        .collect()
}

/// How many dimensions each array column of a table declares (`pg_attribute.attndims`: 2 for
/// `int[][]`), for the columns that declare more than one. PostgreSQL does not enforce it on
/// values; the Arrow sink uses it as the list nesting of the column.
///
/// `attndims` is `int4` up to PostgreSQL 16 and `int2` from 17 on (docs, "pg_attribute" of each
/// version; src/include/catalog/pg_attribute.h); it is cast to `int4` to read the same on all.
pub async fn array_dims(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<std::collections::HashMap<String, usize>> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.attndims::int4 \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 \
               AND NOT a.attisdropped AND a.attndims > 1",
            &[&schema, &table],
        )
        .await?;
    const Q: &str = "array_dims";
    rows.iter()
        .map(|r| {
            let dims: i32 = column(r, Q, 1)?;
            Ok((column(r, Q, 0)?, usize::try_from(dims).unwrap_or(1)))
        })
        .collect()
}

/// One row of `walwatch slots`: what `pg_replication_slots` says, with the WAL it holds back.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SlotRow {
    pub name: String,
    /// `logical` or `physical`.
    pub kind: String,
    pub plugin: Option<String>,
    pub database: Option<String>,
    pub temporary: bool,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved` or `lost` (docs, 54.19 "pg_replication_slots").
    pub wal_status: Option<String>,
    /// WAL the server keeps for this slot: from `restart_lsn` to the current WAL position.
    pub retained_bytes: Option<i64>,
    /// How far the consumer's confirmed position is behind the current WAL position.
    pub lag_bytes: Option<i64>,
}

/// Every replication slot of the server, largest retained WAL first.
pub async fn list_slots(client: &Client) -> Result<Vec<SlotRow>> {
    slot_rows(client, None).await
}

/// One slot's row, if the slot exists.
pub async fn slot_row(client: &Client, name: &str) -> Result<Option<SlotRow>> {
    Ok(slot_rows(client, Some(name)).await?.pop())
}

async fn slot_rows(client: &Client, name: Option<&str>) -> Result<Vec<SlotRow>> {
    // On a standby pg_current_wal_lsn() fails; use the replay position there.
    let rows = client
        .query(
            "WITH here AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                                       ELSE pg_current_wal_lsn() END AS lsn) \
             SELECT slot_name::text, slot_type::text, plugin::text, database::text, \
                    temporary::bool, active_pid::int4, restart_lsn::text, \
                    confirmed_flush_lsn::text, wal_status::text, \
                    pg_wal_lsn_diff(here.lsn, restart_lsn)::int8, \
                    pg_wal_lsn_diff(here.lsn, confirmed_flush_lsn)::int8 \
             FROM pg_replication_slots, here \
             WHERE $1::text IS NULL OR slot_name = $1 \
             ORDER BY 10 DESC NULLS LAST, 1",
            &[&name],
        )
        .await?;
    const Q: &str = "slot_rows";
    let lsn = |v: Option<String>| v.and_then(|s| s.parse::<Lsn>().ok());
    rows.iter()
        .map(|r| {
            Ok(SlotRow {
                name: column(r, Q, 0)?,
                kind: column(r, Q, 1)?,
                plugin: column(r, Q, 2)?,
                database: column(r, Q, 3)?,
                temporary: column(r, Q, 4)?,
                active_pid: column(r, Q, 5)?,
                restart_lsn: lsn(column(r, Q, 6)?),
                confirmed_flush_lsn: lsn(column(r, Q, 7)?),
                wal_status: column(r, Q, 8)?,
                retained_bytes: column(r, Q, 9)?,
                lag_bytes: column(r, Q, 10)?,
            })
        })
        .collect()
}

/// Drops a replication slot. An active slot is refused unless `force`, which first terminates
/// the walsender using it (`pg_terminate_backend`) and waits for it to let go.
pub async fn drop_slot(client: &Client, name: &str, force: bool) -> Result<()> {
    let Some(slot) = slot_row(client, name).await? else {
        return Err(Error::Config(format!(
            "there is no replication slot named `{name}`: `walwatch slots` lists them"
        )));
    };
    if let Some(pid) = slot.active_pid {
        if !force {
            return Err(Error::SlotInUse(format!(
                "slot `{name}` is in use by server process {pid}: stop its consumer first, or \
                 pass --force to terminate that connection and drop the slot"
            )));
        }
        tracing::warn!("terminating server process {pid}, which uses slot {name}");
        client
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match slot_row(client, name).await? {
                // A temporary slot is dropped when the session that holds it ends (docs,
                // "Replication Management Functions": pg_create_logical_replication_slot's
                // `temporary`; the replication protocol's CREATE_REPLICATION_SLOT TEMPORARY):
                // terminating it was the drop.
                None => return Ok(()),
                Some(s) if s.active_pid.is_none() => break,
                Some(_) => {}
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::SlotInUse(format!(
                    "slot `{name}` is still in use 10 s after terminating process {pid}"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&name])
        .await?;
    Ok(())
}

/// Sessions holding a transaction that has written: a logical slot cannot be created until
/// they finish (it needs a consistent point).
pub async fn open_writers(client: &Client) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT pid::int4, COALESCE(usename::text, '?')::text, \
                    COALESCE(application_name, '')::text, COALESCE(state, '')::text, \
                    left(query, 80)::text \
             FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() ORDER BY xact_start",
            &[],
        )
        .await?;
    const Q: &str = "open_writers";
    rows.iter()
        .map(|r| {
            let pid: i32 = column(r, Q, 0)?;
            let user: String = column(r, Q, 1)?;
            let app: String = column(r, Q, 2)?;
            let state: String = column(r, Q, 3)?;
            let query: Option<String> = column(r, Q, 4)?;
            Ok(format!(
                "pid {pid} (user {user}, {app}, {state}): {}",
                query.unwrap_or_default()
            ))
        })
        .collect()
}
