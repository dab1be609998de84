//! Reading the watched tables' rows for `--snapshot`: which relations and columns the
//! publications publish, and their rows, read in chunks inside one snapshot, as READ events
//! shaped exactly like the stream's.
//!
//! Why it looks like this:
//! - The rows are read with `COPY (SELECT …) TO STDOUT`, the server's fastest way out, and
//!   turned into events on the decode thread ([`SnapshotRows::events`]).
//! - The rows must meet the stream exactly, so they are read in the snapshot the slot exported
//!   when it was created (`CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')`, imported with `SET
//!   TRANSACTION SNAPSHOT`, docs 55.4 and "SET TRANSACTION"): every change committed before the
//!   slot's consistent point is in the rows, every later one comes from the stream.
//! - A READ row must be what an INSERT of it would have carried, so a consumer applies both the
//!   same way: the same relations (a partitioned table's rows under the name pgoutput reports
//!   them under: the root with `publish_via_partition_root`, else each partition), the same
//!   published columns (`pg_publication_tables.attnames`, which follows column lists and, on
//!   PostgreSQL 18, `publish_generated_columns`), the same row filter, the same key flags
//!   (pgoutput.c `logicalrep_write_attrs`: the replica identity index's columns, or every
//!   column under FULL), and values read as text under the replication connection's pinned
//!   settings and decoded by the same [`TypeRegistry`].

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_postgres::Client;

use crate::decode::{TypeRegistry, copy_text};
use crate::error::{Error, Result};
use crate::event::{Column, Event, Lsn, Op, Relation, RelationColumn, ReplicaIdentity, Row};
use crate::event::{TableName, Timestamp, Value};
use crate::pg::catalog::column;
use crate::pg::quote::{quote_ident, quote_literal};

/// The session settings the replication connection pins in its startup packet
/// (`pg::conn::PINNED`): text values depend on them, and READ rows must read like the stream.
const PINNED_SQL: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; SET TimeZone = UTC; \
     SET extra_float_digits = 3; SET client_encoding = UTF8; SET bytea_output = hex";

/// One published relation to read: the rows of `relation` (and, for a partitioned table
/// published via its root, of its partitions).
#[derive(Clone, Debug)]
pub struct SnapshotTable {
    pub relation: Arc<Relation>,
    /// The publications' row filter (their `WHERE`s, OR'ed as pgoutput does), if every
    /// publication of the table has one.
    pub row_filter: Option<String>,
    /// `pg_class.reltuples`: the planner's estimate of the row count (-1 when unknown).
    pub estimate: i64,
}

impl SnapshotTable {
    pub fn name(&self) -> TableName {
        TableName {
            schema: self.relation.namespace.clone(),
            table: self.relation.name.clone(),
        }
    }

    /// The query that reads every row: the published columns, in table order.
    fn select_sql(&self) -> String {
        let cols: Vec<String> = self
            .relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        // No published column (a table of no columns): an empty select list, whose COPY lines
        // are empty, one per row, as its Relation message has no columns.
        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            cols.join(", "),
            quote_ident(&self.relation.namespace),
            quote_ident(&self.relation.name)
        );
        if let Some(f) = &self.row_filter {
            sql.push_str(&format!(" WHERE {f}"));
        }
        sql
    }
}

/// The relations the publications publish, among those `watched` accepts (by schema and
/// name, its own or a partitioned table's it is a partition of: a publication without
/// `publish_via_partition_root` lists partitions), each described as the stream's Relation
/// message would describe it.
pub async fn plan(
    client: &Client,
    publications: &[String],
    server_version: u32,
    types: &TypeRegistry,
    watched: impl Fn(&str, &str) -> bool,
) -> Result<Vec<SnapshotTable>> {
    const Q: &str = "snapshot::plan";
    // attnames and rowfilter are PostgreSQL 15's (column lists and row filters).
    let (attnames, rowfilter) = if server_version >= 150_000 {
        ("pt.attnames::text[]", "pt.rowfilter::text")
    } else {
        ("NULL::text[]", "NULL::text")
    };
    let rows = client
        .query(
            &format!(
                "SELECT c.oid, pt.schemaname::text, pt.tablename::text, c.relreplident::text, \
                        {attnames}, {rowfilter}, c.reltuples::int8, \
                        ARRAY(SELECT an.nspname::text FROM pg_partition_ancestors(c.oid) a \
                              JOIN pg_class ac ON ac.oid = a.relid \
                              JOIN pg_namespace an ON an.oid = ac.relnamespace), \
                        ARRAY(SELECT ac.relname::text FROM pg_partition_ancestors(c.oid) a \
                              JOIN pg_class ac ON ac.oid = a.relid) \
                 FROM pg_publication_tables pt \
                 JOIN pg_namespace n ON n.nspname = pt.schemaname \
                 JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename \
                 WHERE pt.pubname = ANY($1) ORDER BY 2, 3"
            ),
            &[&publications],
        )
        .await?;
    let mut out: Vec<SnapshotTable> = Vec::new();
    let mut filters: Vec<(u32, Option<String>)> = Vec::new();
    for r in &rows {
        let oid: u32 = column(r, Q, 0)?;
        let schema: String = column(r, Q, 1)?;
        let table: String = column(r, Q, 2)?;
        // pg_partition_ancestors (PostgreSQL 12+) lists a partition and its ancestors, and
        // nothing for a table that is not a partition.
        let schemas: Vec<String> = column(r, Q, 7)?;
        let names: Vec<String> = column(r, Q, 8)?;
        if !watched(&schema, &table) && !schemas.iter().zip(&names).any(|(s, t)| watched(s, t)) {
            continue;
        }
        let filter: Option<String> = column(r, Q, 5)?;
        filters.push((oid, filter));
        if out.iter().any(|t| t.relation.oid == oid) {
            continue; // in several publications
        }
        let identity: String = column(r, Q, 3)?;
        let published: Option<Vec<String>> = column(r, Q, 4)?;
        let relation = describe(
            client,
            oid,
            (&schema, &table),
            &identity,
            published,
            server_version,
            types,
        )
        .await?;
        out.push(SnapshotTable {
            relation: Arc::new(relation),
            row_filter: None,
            estimate: column(r, Q, 6)?,
        });
    }
    // pgoutput ORs the row filters of a table's publications, and a publication without one
    // publishes every row (pgoutput.c `pgoutput_row_filter_init`).
    for t in &mut out {
        let mine: Vec<&Option<String>> = filters
            .iter()
            .filter(|(oid, _)| *oid == t.relation.oid)
            .map(|(_, f)| f)
            .collect();
        if mine.iter().all(|f| f.is_some()) {
            let parts: Vec<String> = mine
                .iter()
                .filter_map(|f| f.as_deref())
                .map(|f| format!("({f})"))
                .collect();
            t.row_filter = Some(parts.join(" OR "));
        }
    }
    Ok(out)
}

/// The relation as a Relation message would describe it: its published columns in table
/// order, typed, with the replica identity's columns flagged.
async fn describe(
    client: &Client,
    oid: u32,
    (schema, table): (&str, &str),
    identity: &str,
    published: Option<Vec<String>>,
    server_version: u32,
    types: &TypeRegistry,
) -> Result<Relation> {
    const Q: &str = "snapshot::describe";
    let replica_identity = match identity {
        "f" => ReplicaIdentity::Full,
        "n" => ReplicaIdentity::Nothing,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };
    // The replica identity index: the primary key under DEFAULT, the chosen index under
    // USING INDEX (relcache.c `RelationGetIdentityKeyBitmap`).
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, a.attgenerated::text <> '', \
                    COALESCE((SELECT a.attnum = ANY(i.indkey) FROM pg_index i \
                      WHERE i.indrelid = a.attrelid AND CASE $2::text \
                        WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident \
                        ELSE false END LIMIT 1), false) \
             FROM pg_attribute a \
             WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid, &identity],
        )
        .await?;
    let mut columns = Vec::new();
    for r in &rows {
        let name: String = column(r, Q, 0)?;
        let generated: bool = column(r, Q, 3)?;
        // pgoutput sends generated columns from PostgreSQL 18 on, when the publication says
        // so (`publish_generated_columns`, which attnames then follows); before 18 never
        // (`logicalrep_should_publish_column`), though 15-17 list them in attnames.
        let sent = match &published {
            Some(list) => list.contains(&name) && (server_version >= 180_000 || !generated),
            None => !generated,
        };
        if !sent {
            continue;
        }
        let type_oid: u32 = column(r, Q, 1)?;
        columns.push(RelationColumn {
            name: Arc::from(name.as_str()),
            type_oid,
            type_modifier: column(r, Q, 2)?,
            kind: types.kind_of(type_oid),
            is_key: replica_identity == ReplicaIdentity::Full || column::<bool>(r, Q, 4)?,
        });
    }
    let key_count = columns.iter().filter(|c| c.is_key).count();
    Ok(Relation {
        oid,
        namespace: Arc::from(schema),
        name: Arc::from(table),
        replica_identity,
        columns,
        key_count,
    })
}

/// A reader of rows inside one snapshot: a transaction on a connection of its own.
pub struct SnapshotReader {
    client: Client,
    /// When the snapshot was taken (the transaction's `now()`): the READ events' `ts`.
    taken: Timestamp,
    /// The position the snapshot is consistent with: the READ events' `lsn` and `commit_lsn`.
    at: Lsn,
    server_version: u32,
}

impl SnapshotReader {
    /// Opens a REPEATABLE READ, read-only transaction on `client` in the exported snapshot
    /// `snapshot` (or a snapshot of its own when `None`). `at` is the position the snapshot is
    /// consistent with.
    pub async fn open(client: Client, snapshot: Option<&str>, at: Lsn) -> Result<SnapshotReader> {
        client.batch_execute(PINNED_SQL).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        if let Some(name) = snapshot {
            // Before any query of the transaction (docs, SET TRANSACTION).
            client
                .batch_execute(&format!("SET TRANSACTION SNAPSHOT {}", quote_literal(name)))
                .await
                .map_err(|e| {
                    Error::Setup(format!(
                        "could not import the slot's snapshot {name}: {e}; it lives only until \
                         the replication connection runs its next command"
                    ))
                })?;
        }
        let row = client
            .query_one(
                "SELECT (extract(epoch FROM now()) * 1000000)::int8, \
                        current_setting('server_version_num')::int4",
                &[],
            )
            .await?;
        let micros: i64 = column(&row, "snapshot::open", 0)?;
        let version: i32 = column(&row, "snapshot::open", 1)?;
        Ok(SnapshotReader {
            client,
            taken: Timestamp::from_unix_micros(micros),
            at,
            server_version: u32::try_from(version).unwrap_or(0),
        })
    }

    /// The reader's connection, inside the snapshot (catalog reads see it too).
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn server_version(&self) -> u32 {
        self.server_version
    }

    /// Ends the transaction (read-only: nothing to keep).
    pub async fn close(self) -> Result<()> {
        self.client.batch_execute("COMMIT").await?;
        Ok(())
    }
}

/// Rows of one table as `COPY … TO STDOUT` sent them (one text line each), and what their
/// READ events carry besides: converted on the decode thread ([`SnapshotRows::events`]), so
/// the task reading the connection only moves bytes.
pub struct SnapshotRows {
    pub relation: Arc<Relation>,
    pub at: Lsn,
    pub taken: Timestamp,
    pub lines: Vec<Bytes>,
}

impl SnapshotRows {
    /// The bytes the lines hold (what the pipeline's budgets count).
    pub fn bytes(&self) -> usize {
        self.lines.iter().map(Bytes::len).sum()
    }

    /// Each line as a READ event: the row in `data`, the replica identity's columns in `key`
    /// (the pipeline makes it the primary key, as for changes), values decoded by `types` as
    /// the stream's are.
    pub fn events(&self, types: &TypeRegistry, mut each: impl FnMut(Event)) -> Result<()> {
        let rel = &self.relation;
        let mut fields = Vec::with_capacity(rel.columns.len());
        for line in &self.lines {
            copy_text::fields(line, rel.columns.len(), &mut fields).map_err(|e| {
                Error::Snapshot(format!(
                    "reading {}.{} for the snapshot: {e}; this is a walwatch bug, please \
                     report it",
                    rel.namespace, rel.name
                ))
            })?;
            let mut columns = Vec::with_capacity(rel.columns.len());
            let mut key = Vec::with_capacity(rel.key_count);
            for (col, text) in rel.columns.iter().zip(fields.drain(..)) {
                let value = match text {
                    Some(text) => types.parse_text(col.type_oid, &text),
                    None => Value::Null,
                };
                if col.is_key {
                    key.push(Column {
                        name: col.name.clone(),
                        value: value.clone(),
                    });
                }
                columns.push(Column {
                    name: col.name.clone(),
                    value,
                });
            }
            let mut ev = Event::new(Op::Read, self.at);
            ev.commit_lsn = self.at;
            ev.ts = Some(self.taken);
            ev.schema = Some(rel.namespace.clone());
            ev.table = Some(rel.name.clone());
            ev.data = Some(Row { columns });
            ev.key = (!key.is_empty()).then_some(Row { columns: key });
            ev.relation = Some(rel.clone());
            each(ev);
        }
        Ok(())
    }
}

/// What a reader sends about the table at `table` (an index into the plan).
pub enum Chunk {
    /// Its next rows.
    Rows { table: usize, rows: SnapshotRows },
    /// Every row is read: how many, and how long it took.
    Done {
        table: usize,
        rows: u64,
        took: std::time::Duration,
    },
}

/// Bytes of rows per chunk, at most (a single larger row goes alone).
const CHUNK_BYTES: usize = 1 << 20;

/// Chunks queued between the readers and their consumer, per reader.
const CHUNKS_AHEAD: usize = 2;

/// Reads `tables` with `readers` (all in the same snapshot), `chunk` rows at a time, each
/// reader on a task of its own taking the next table not yet taken. The chunks arrive on the
/// returned channel, bounded, so a consumer that waits stops the readers; an error is the
/// last message. Dropping the receiver stops the readers (their transactions end with their
/// connections).
pub fn read_all(
    readers: Vec<SnapshotReader>,
    tables: Arc<Vec<SnapshotTable>>,
    chunk: usize,
) -> tokio::sync::mpsc::Receiver<Result<Chunk>> {
    let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD * readers.len().max(1));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for reader in readers {
        let (tx, next, tables) = (tx.clone(), next.clone(), tables.clone());
        tokio::spawn(async move {
            let res = reader.read_tables(&tables, chunk, &next, &tx).await;
            match res {
                Ok(()) => {
                    if let Err(e) = reader.close().await {
                        let _ = tx.send(Err(e)).await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
    }
    rx
}

impl SnapshotReader {
    fn rows(&self, table: &SnapshotTable, lines: Vec<Bytes>) -> SnapshotRows {
        SnapshotRows {
            relation: table.relation.clone(),
            at: self.at,
            taken: self.taken,
            lines,
        }
    }

    /// Reads the tables not yet taken by another reader, one after the other, into `tx`;
    /// returns early (Ok) once the receiver is gone.
    async fn read_tables(
        &self,
        tables: &[SnapshotTable],
        chunk: usize,
        next: &std::sync::atomic::AtomicUsize,
        tx: &tokio::sync::mpsc::Sender<Result<Chunk>>,
    ) -> Result<()> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(table) = tables.get(i) else {
                return Ok(());
            };
            let began = std::time::Instant::now();
            let copy = format!("COPY ({}) TO STDOUT", table.select_sql());
            let stream = self
                .client
                .copy_out(copy.as_str())
                .await
                .map_err(|e| read_error(&table.name(), e))?;
            futures_util::pin_mut!(stream);
            let mut rows = 0u64;
            let mut lines = Vec::with_capacity(chunk);
            let mut bytes = 0;
            loop {
                let line = stream
                    .next()
                    .await
                    .transpose()
                    .map_err(|e| read_error(&table.name(), e))?;
                let end = line.is_none();
                if let Some(line) = line {
                    bytes += line.len();
                    lines.push(line);
                }
                // A chunk is `chunk` rows, or fewer of large rows (1 MB), or the table's last.
                if lines.len() >= chunk || bytes >= CHUNK_BYTES || (end && !lines.is_empty()) {
                    rows += lines.len() as u64;
                    let c = Chunk::Rows {
                        table: i,
                        rows: self.rows(
                            table,
                            std::mem::replace(&mut lines, Vec::with_capacity(chunk)),
                        ),
                    };
                    bytes = 0;
                    if tx.send(Ok(c)).await.is_err() {
                        return Ok(());
                    }
                }
                if end {
                    break;
                }
            }
            let end = Chunk::Done {
                table: i,
                rows,
                took: began.elapsed(),
            };
            if tx.send(Ok(end)).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// A table that could not be read: named, with what to do.
fn read_error(table: &TableName, e: tokio_postgres::Error) -> Error {
    let what = match e.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
            "grant the role SELECT on it"
        }
        Some(c) if *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE => {
            "it was dropped while the snapshot was being taken"
        }
        _ => "see the server's message",
    };
    Error::Snapshot(format!(
        "could not read {}.{} for the snapshot: {e}: {what}",
        table.schema, table.table
    ))
}
