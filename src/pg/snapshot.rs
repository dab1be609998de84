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
    /// The columns its rows are read in order of (empty: none, the table is read in
    /// physical order).
    pub key: ChunkKey,
}

/// The columns a table is read in order of, so a read can stop after any chunk and go on
/// from its last row: the primary key, else the replica identity index, when every column of
/// it is published (their values are then in every row read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkKey {
    /// Each column's position among the relation's (published) columns, and its type as SQL
    /// names it (`format_type`), for the literals that resume after a row.
    pub columns: Vec<(usize, String)>,
}

impl ChunkKey {
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

/// Which rows of a table one read takes.
#[derive(Clone, Copy, Debug)]
pub enum Range<'a> {
    /// Every row, in key order when the table has a [`ChunkKey`].
    All,
    /// The first `limit` rows in key order after the key values `after` (from the start
    /// when `None`).
    After {
        after: Option<&'a [String]>,
        limit: usize,
    },
    /// The rows in the heap pages `from..to` (a table without a key).
    Pages { from: u64, to: u64 },
}

impl SnapshotTable {
    pub fn name(&self) -> TableName {
        TableName {
            schema: self.relation.namespace.clone(),
            table: self.relation.name.clone(),
        }
    }

    /// The query that reads the rows of `range`: the published columns, in table order.
    pub fn select_sql(&self, range: Range<'_>) -> String {
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
        let mut conds: Vec<String> = self.row_filter.iter().map(|f| format!("({f})")).collect();
        let keys: Vec<String> = self
            .key
            .columns
            .iter()
            .map(|(i, _)| quote_ident(&self.relation.columns[*i].name))
            .collect();
        match range {
            Range::After {
                after: Some(after), ..
            } if after.len() == keys.len() => {
                // A row comparison walks the key's btree order, as ORDER BY does
                // (docs 9.25.5, "Row Constructor Comparison").
                let lits: Vec<String> = self
                    .key
                    .columns
                    .iter()
                    .zip(after)
                    .map(|((_, ty), v)| format!("{}::{ty}", quote_literal(v)))
                    .collect();
                conds.push(format!("({}) > ({})", keys.join(", "), lits.join(", ")));
            }
            Range::Pages { from, to } => {
                // A TID range scan (PostgreSQL 14+) reads just those pages.
                conds.push(format!(
                    "ctid >= '({from},0)'::tid AND ctid < '({to},0)'::tid"
                ));
            }
            _ => {}
        }
        if !conds.is_empty() {
            sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
        }
        if !keys.is_empty() && !matches!(range, Range::Pages { .. }) {
            sql.push_str(&format!(" ORDER BY {}", keys.join(", ")));
        }
        if let Range::After { limit, .. } = range {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        sql
    }

    /// The chunk key's values in a row as COPY sent it (`None` without a key, or for a line
    /// that is not a row of this table).
    pub fn key_of(&self, line: &[u8]) -> Option<Vec<String>> {
        if self.key.is_empty() {
            return None;
        }
        let mut fields = Vec::with_capacity(self.relation.columns.len());
        copy_text::fields(line, self.relation.columns.len(), &mut fields).ok()?;
        self.key
            .columns
            .iter()
            .map(|(i, _)| fields.get(*i).cloned().flatten().map(|v| v.into_owned()))
            .collect()
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
        let key = chunk_key(client, oid, &relation).await?;
        out.push(SnapshotTable {
            relation: Arc::new(relation),
            row_filter: None,
            estimate: column(r, Q, 6)?,
            key,
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

/// The columns `relation` (table `oid`) is read in order of: its primary key, else its
/// replica identity index, if every column of it is published.
async fn chunk_key(client: &Client, oid: u32, relation: &Relation) -> Result<ChunkKey> {
    const Q: &str = "snapshot::chunk_key";
    // A partitioned table's primary key is a partitioned index, in pg_index too.
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL) \
             FROM (SELECT i.indkey FROM pg_index i \
                   WHERE i.indrelid = $1::oid AND (i.indisprimary OR i.indisreplident) \
                   ORDER BY i.indisprimary DESC LIMIT 1) i, \
                  unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = $1::oid AND a.attnum = k.attnum \
             ORDER BY k.ord",
            &[&oid],
        )
        .await?;
    let mut columns = Vec::with_capacity(rows.len());
    for r in &rows {
        let name: String = column(r, Q, 0)?;
        let Some(i) = relation.columns.iter().position(|c| *c.name == *name) else {
            return Ok(ChunkKey::default()); // a key column is not published
        };
        columns.push((i, column::<String>(r, Q, 1)?));
    }
    Ok(ChunkKey { columns })
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
    /// The table's index in the snapshot's plan.
    pub table: usize,
    pub at: Lsn,
    pub taken: Timestamp,
    pub lines: Vec<Bytes>,
    /// The chunk key's values of the last line (a table read in key order).
    pub after: Option<Vec<String>>,
    /// The table's last rows: it is read once these are.
    pub last: bool,
    /// Read between two watermarks (`pipeline::windows`), by the run `run` as its chunk
    /// `chunk`: the rows are held until the high watermark, and the snapshot's transactions
    /// in progress are what the decode thread checks against the ones it saw commit.
    pub window: Option<ChunkWindow>,
}

/// What a chunk read between watermarks carries besides its rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkWindow {
    pub chunk: u64,
    /// The transactions in progress in the chunk's snapshot (`pg_current_snapshot()`'s
    /// xmin and xip, low 32 bits as pgoutput's BEGIN carries them).
    pub in_progress: Vec<u32>,
    /// Whether the table has a chunk key (else any change in the window discards the chunk).
    pub keyed: bool,
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
    fn rows(&self, i: usize, table: &SnapshotTable, lines: Vec<Bytes>, last: bool) -> SnapshotRows {
        SnapshotRows {
            relation: table.relation.clone(),
            table: i,
            at: self.at,
            taken: self.taken,
            after: lines.last().and_then(|l| table.key_of(l)),
            lines,
            last,
            window: None,
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
            let copy = format!("COPY ({}) TO STDOUT", table.select_sql(Range::All));
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
                // A chunk is `chunk` rows, or fewer of large rows (1 MB), or the table's last
                // (perhaps none: the end of the table is a chunk too).
                if lines.len() >= chunk || bytes >= CHUNK_BYTES || end {
                    rows += lines.len() as u64;
                    let taken = std::mem::replace(&mut lines, Vec::with_capacity(chunk));
                    let c = Chunk::Rows {
                        table: i,
                        rows: self.rows(i, table, taken, end),
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

/// The errors reading a table that are about the table, not the connection or the server.
const TABLE_ERRORS: &[tokio_postgres::error::SqlState] = &[
    tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE,
    tokio_postgres::error::SqlState::UNDEFINED_TABLE,
    tokio_postgres::error::SqlState::UNDEFINED_COLUMN,
    tokio_postgres::error::SqlState::WRONG_OBJECT_TYPE,
];

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

/// The connection a backfill reads its chunks on and emits its watermarks with: each chunk in
/// a transaction of its own, between a low and a high watermark (`pipeline::backfill`).
pub struct ChunkReader {
    client: Client,
}

impl ChunkReader {
    pub async fn open(client: Client) -> Result<ChunkReader> {
        client.batch_execute(PINNED_SQL).await?;
        // A logical walsender sends only WAL flushed to disk (walsender.c, `XLogSendLogical`
        // reads up to `GetFlushRecPtr`): a watermark committed asynchronously would wait for
        // the WAL writer (up to wal_writer_delay) before the stream could bring it back.
        client.batch_execute("SET synchronous_commit = on").await?;
        Ok(ChunkReader { client })
    }

    /// The connection (the backfill also keeps the slot's record with it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Emits a transactional logical message: decoded at its commit, in commit order with
    /// every other transaction (docs 9.28.6, `pg_logical_emit_message`), which is what makes it
    /// a watermark. It returns once the commit is flushed (the session's synchronous_commit).
    pub async fn watermark(&self, prefix: &str, content: &str) -> Result<()> {
        self.client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&prefix, &content],
            )
            .await
            .map_err(|e| match e.code() {
                Some(c) if *c == tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
                    Error::Snapshot(format!(
                        "could not emit a snapshot watermark: {e}; the role needs to be \
                         allowed pg_logical_emit_message (a replication role is)"
                    ))
                }
                _ => Error::Meta(e),
            })?;
        Ok(())
    }

    /// The heap pages of `table` (of its largest partition, for a partitioned table: a TID
    /// range applies to each partition).
    pub async fn pages(&self, table: &SnapshotTable) -> Result<u64> {
        let row = self
            .client
            .query_one(
                "SELECT COALESCE(max(pg_relation_size(relid)), 0)::int8 \
                      / current_setting('block_size')::int8 \
                 FROM pg_partition_tree($1::oid)",
                &[&table.relation.oid],
            )
            .await?;
        let pages: i64 = column(&row, "ChunkReader::pages", 0)?;
        Ok(u64::try_from(pages).unwrap_or(0))
    }

    /// Reads the rows of `range` of table `i` in a snapshot of their own, with the
    /// transactions that snapshot saw in progress.
    pub async fn read(
        &self,
        i: usize,
        table: &SnapshotTable,
        range: Range<'_>,
        chunk: u64,
    ) -> Result<SnapshotRows> {
        self.client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        // The first query takes the transaction's snapshot; the COPY below reads in it.
        let row = self
            .client
            .query_one(
                "SELECT (extract(epoch FROM now()) * 1000000)::int8, \
                        pg_current_snapshot()::text",
                &[],
            )
            .await?;
        let micros: i64 = column(&row, "ChunkReader::read", 0)?;
        let snap: String = column(&row, "ChunkReader::read", 1)?;
        let copy = format!("COPY ({}) TO STDOUT", table.select_sql(range));
        let lines = async {
            let stream = self.client.copy_out(copy.as_str()).await?;
            futures_util::pin_mut!(stream);
            let mut lines = Vec::new();
            while let Some(line) = stream.next().await.transpose()? {
                lines.push(line);
            }
            Ok::<_, tokio_postgres::Error>(lines)
        }
        .await
        .map_err(|e| match e.code() {
            // The table's own trouble (the backfill may leave a requested table out); else the
            // connection's, which ends the run.
            Some(c) if TABLE_ERRORS.contains(c) => read_error(&table.name(), e),
            _ => Error::Meta(e),
        });
        let lines = match lines {
            Ok(lines) => lines,
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        self.client.batch_execute("COMMIT").await?;
        Ok(SnapshotRows {
            relation: table.relation.clone(),
            table: i,
            at: Lsn::ZERO,
            taken: Timestamp::from_unix_micros(micros),
            after: lines.last().and_then(|l| table.key_of(l)),
            lines,
            last: false,
            window: Some(ChunkWindow {
                chunk,
                in_progress: in_progress(&snap),
                keyed: !table.key.is_empty(),
            }),
        })
    }
}

/// The transactions a snapshot (`pg_current_snapshot()`'s text, `xmin:xmax:xip,...`) saw in
/// progress: its xip list. Low 32 bits, as pgoutput's BEGIN messages carry xids.
fn in_progress(snapshot: &str) -> Vec<u32> {
    let xip = snapshot.splitn(3, ':').nth(2).unwrap_or("");
    xip.split(',')
        .filter_map(|x| x.trim().parse::<u64>().ok())
        .map(|x| x as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(key: &[(usize, &str)], filter: Option<&str>) -> SnapshotTable {
        let col = |name: &str| RelationColumn {
            name: Arc::from(name),
            type_oid: 23,
            type_modifier: -1,
            kind: crate::decode::TypeRegistry::default().kind_of(23),
            is_key: false,
        };
        SnapshotTable {
            relation: Arc::new(Relation {
                oid: 1,
                namespace: Arc::from("public"),
                name: Arc::from("Orders"),
                replica_identity: ReplicaIdentity::Default,
                columns: vec![col("id"), col("region"), col("note")],
                key_count: 0,
            }),
            row_filter: filter.map(str::to_string),
            estimate: 0,
            key: ChunkKey {
                columns: key.iter().map(|(i, t)| (*i, t.to_string())).collect(),
            },
        }
    }

    #[test]
    fn keyed_reads_go_in_key_order_and_resume_after_a_row() {
        let t = table(&[(1, "text"), (0, "integer")], Some("id > 0"));
        assert_eq!(
            t.select_sql(Range::All),
            "SELECT \"id\", \"region\", \"note\" FROM \"public\".\"Orders\" WHERE (id > 0) \
             ORDER BY \"region\", \"id\""
        );
        let after = ["it's".to_string(), "7".to_string()];
        assert_eq!(
            t.select_sql(Range::After {
                after: Some(&after),
                limit: 10
            }),
            "SELECT \"id\", \"region\", \"note\" FROM \"public\".\"Orders\" WHERE (id > 0) \
             AND (\"region\", \"id\") > ('it''s'::text, '7'::integer) ORDER BY \"region\", \"id\" \
             LIMIT 10"
        );
        assert_eq!(
            t.key_of(b"7\teu\\tx\t\\N\n"),
            Some(vec!["eu\tx".into(), "7".into()])
        );
    }

    #[test]
    fn keyless_reads_go_by_pages() {
        let t = table(&[], None);
        assert_eq!(
            t.select_sql(Range::All),
            "SELECT \"id\", \"region\", \"note\" FROM \"public\".\"Orders\""
        );
        assert_eq!(
            t.select_sql(Range::Pages { from: 8, to: 16 }),
            "SELECT \"id\", \"region\", \"note\" FROM \"public\".\"Orders\" WHERE \
             ctid >= '(8,0)'::tid AND ctid < '(16,0)'::tid"
        );
        assert_eq!(t.key_of(b"1\t2\t3"), None);
    }

    #[test]
    fn a_snapshot_lists_its_transactions_in_progress() {
        assert_eq!(in_progress("100:105:100,102"), vec![100, 102]);
        assert_eq!(in_progress("100:100:"), Vec::<u32>::new());
        assert_eq!(
            in_progress(&format!("{}:1:", 1u64 << 32)),
            Vec::<u32>::new()
        );
        assert_eq!(in_progress(&format!("1:2:{}", (1u64 << 32) + 5)), vec![5]);
    }
}
