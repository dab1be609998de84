//! walwatch's own publications, made so that watching never makes an application statement
//! fail.
//!
//! PostgreSQL refuses an UPDATE or DELETE on a table that a publication publishes those
//! operations of when the table has no replica identity ("cannot update table … because it
//! does not have a replica identity and publishes updates": `CheckCmdReplicaIdentity` in
//! src/backend/executor/execReplication.c). A table has one when it is `REPLICA IDENTITY FULL`,
//! or its identity index exists (the primary key under `DEFAULT`, the chosen index under
//! `USING INDEX`); for a partitioned table, what counts is each leaf partition, where the
//! statement runs. So walwatch publishes with two publications:
//!
//! * the main one (`walwatch_<slot>`, or a fresh name for a temporary slot) publishes every
//!   requested operation of the watched tables that have a replica identity;
//! * its companion (`<main>_noident`) publishes only INSERT and TRUNCATE (which never need an
//!   identity) of the others; when every table is watched it is `FOR ALL TABLES`, so a table
//!   created later is seen too, and no `CREATE TABLE` without a key turns into failing UPDATEs.
//!
//! pgoutput unions the actions of all publications a table is in (pgoutput.c,
//! `get_rel_sync_entry`), and sends each change once.
//!
//! Both are created before the slot and kept for its life: pgoutput reads publications with
//! the catalog as of the WAL it decodes, so a publication created after a slot's position is
//! "publication … does not exist" to it (PostgreSQL 15 to 17). A permanent slot made by a
//! walwatch before this scheme has no companion; it keeps its one publication, and walwatch
//! says which of its tables' statements that publication makes fail.
//!
//! Each walwatch publication carries a [`Record`] as its comment (`COMMENT ON PUBLICATION`):
//! which slot it serves and which server process made it, so a publication whose run was
//! killed can be told from a live one ([`orphans`]); and, for a permanent slot, the user types
//! walwatch has resolved, so a type dropped after its changes were written still renders as
//! it did ([`Record::types`]).

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::decode::TypeRegistry;
use crate::error::{Error, Result};
use crate::filter::OpSet;
use crate::pg::catalog::{ServerInfo, column};
use crate::pg::quote::{quote_ident, quote_literal};

/// The companion publication's suffix.
const COMPANION: &str = "_noident";

/// The longest slot name whose publications fit PostgreSQL's 63-byte names.
pub const MAX_SLOT_FOR_PUBLICATION: usize = 63 - "walwatch_".len() - COMPANION.len();

/// The main publication of a permanent slot.
pub fn main_name(slot: &str) -> String {
    format!("walwatch_{slot}")
}

/// The companion of a main publication.
pub fn companion_name(main: &str) -> String {
    format!("{main}{COMPANION}")
}

/// A watched table whose UPDATEs and DELETEs walwatch does not publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoIdentity {
    pub schema: String,
    pub table: String,
    /// `schema.table`, quoted where SQL needs it.
    pub display: String,
    /// The leaf partitions (or the table itself) without a replica identity, as
    /// `schema.table` with their `relreplident`.
    pub leaves: Vec<(String, char)>,
}

impl NoIdentity {
    fn qualified(&self) -> &str {
        &self.display
    }

    /// Why, in words, with what would give it one.
    fn why(&self) -> String {
        let Some((leaf, ident)) = self.leaves.first() else {
            return String::new();
        };
        let what = match ident {
            'n' => "is REPLICA IDENTITY NOTHING".to_string(),
            'i' => "has REPLICA IDENTITY USING INDEX, but that index is gone".to_string(),
            _ => "has no primary key".to_string(),
        };
        let me = self.qualified();
        if leaf == me {
            format!("{me} {what}")
        } else {
            format!("its partition {leaf} {what}")
        }
    }
}

/// The watched tables split by whether they have a replica identity. `tables: None` is every
/// table of the database (no partitions: they come with their partitioned table; no system
/// schemas); a partition named in `tables` is judged on its own.
pub async fn split_by_identity(
    client: &Client,
    tables: Option<&[(String, String)]>,
) -> Result<(Vec<(String, String)>, Vec<NoIdentity>)> {
    let (schemas, names): (Option<Vec<&str>>, Option<Vec<&str>>) = match tables {
        None => (None, None),
        Some(t) => {
            let (s, n) = t.iter().map(|(s, t)| (s.as_str(), t.as_str())).unzip();
            (Some(s), Some(n))
        }
    };
    // A partitioned table is judged by its leaf partitions (pg_partition_tree, isleaf), where
    // the statements run; a plain table by itself (pg_partition_tree lists nothing for it).
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, format('%I.%I', n.nspname, c.relname), \
                    ARRAY(SELECT format('%I.%I', ln.nspname, l.relname) || ':' || l.relreplident::text \
                          FROM (SELECT c.oid AS relid WHERE c.relkind = 'r' \
                                UNION ALL SELECT pt.relid FROM pg_partition_tree(c.oid) pt \
                                WHERE c.relkind = 'p' AND pt.isleaf) leaf \
                          JOIN pg_class l ON l.oid = leaf.relid \
                          JOIN pg_namespace ln ON ln.oid = l.relnamespace \
                          WHERE NOT (l.relreplident = 'f' OR EXISTS ( \
                                SELECT 1 FROM pg_index i WHERE i.indrelid = l.oid AND i.indisvalid \
                                  AND ((l.relreplident = 'd' AND i.indisprimary) \
                                    OR (l.relreplident = 'i' AND i.indisreplident)))) \
                          ORDER BY 1)::text[] \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') \
               AND (NOT c.relispartition OR $1::text[] IS NOT NULL) \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND ($1::text[] IS NULL OR (n.nspname::text, c.relname::text) IN \
                    (SELECT s, t FROM unnest($1::text[], $2::text[]) AS w(s, t))) \
             ORDER BY 1, 2",
            &[&schemas, &names],
        )
        .await?;
    let mut with = Vec::new();
    let mut without = Vec::new();
    for r in rows {
        let schema: String = column(&r, "split_by_identity", 0)?;
        let table: String = column(&r, "split_by_identity", 1)?;
        let display: String = column(&r, "split_by_identity", 2)?;
        let bad: Vec<String> = column(&r, "split_by_identity", 3)?;
        if bad.is_empty() {
            with.push((schema, table));
        } else {
            let leaves = bad
                .into_iter()
                .map(|b| match b.rsplit_once(':') {
                    Some((leaf, ident)) => (leaf.to_string(), ident.chars().next().unwrap_or('d')),
                    None => (b, 'd'),
                })
                .collect();
            without.push(NoIdentity {
                schema,
                table,
                display,
                leaves,
            });
        }
    }
    Ok((with, without))
}

/// Says once, for each table, which operations walwatch cannot see and why.
pub fn warn_unpublished(without: &[NoIdentity], ops: OpSet) {
    use crate::event::Op;
    if !(ops.contains(Op::Update) || ops.contains(Op::Delete)) {
        return;
    }
    for t in without {
        tracing::warn!(
            "{}: walwatch sees its INSERTs and TRUNCATEs but not its UPDATEs and DELETEs, \
             because {}: a publication of those would make PostgreSQL refuse the application's \
             UPDATE and DELETE statements on it. To see them, give it a replica identity \
             (ALTER TABLE {} ADD PRIMARY KEY (...), or ALTER TABLE {} REPLICA IDENTITY FULL) \
             and restart walwatch",
            t.qualified(),
            t.why(),
            t.qualified(),
            t.qualified()
        );
    }
}

/// What a publication's comment says about the walwatch run it serves.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Always 1: marks the comment as walwatch's.
    pub walwatch: u32,
    /// The slot this publication serves.
    pub slot: String,
    pub temporary: bool,
    /// The server process of the metadata connection of the run that last wrote this record,
    /// and when it started (`pg_stat_activity.backend_start`), so a reused pid is not taken
    /// for the run.
    pub backend_pid: i32,
    pub backend_start: String,
    /// User types resolved on this slot (permanent slots only): OID and kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<(u32, crate::decode::TypeKind)>,
    /// The slot's snapshot (`--snapshot`) and the tables asked for since (`walwatch
    /// snapshot`), while and after they are read: how far each table is durable in every
    /// sink, so a run that stops mid-snapshot continues it, not redoes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillRecord>,
}

/// How far a slot's snapshot got, table by table. Written only once what it says is durable
/// in every sink (`pipeline::backfill`), so it is never ahead of the output.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackfillRecord {
    /// The tables are listed (false from before the slot is created until its snapshot's
    /// tables are known: a stop then leaves every table to read).
    #[serde(default)]
    pub planned: bool,
    /// The slot was created with a snapshot (`--snapshot`); false when every table here was
    /// asked for later (`walwatch snapshot`).
    #[serde(default = "created_with_snapshot")]
    pub initial: bool,
    /// The stream position of the last request taken (`walwatch snapshot`): one the server
    /// sends again after a stop is not taken twice.
    #[serde(default)]
    pub taken: u64,
    /// The ids of the last requests taken ([`TAKEN_KEPT`]), for whoever follows one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<String>,
    pub tables: Vec<TableBackfill>,
}

/// How many request ids a record keeps.
pub const TAKEN_KEPT: usize = 32;

/// A record from before requests existed was made by `--snapshot`.
fn created_with_snapshot() -> bool {
    true
}

impl BackfillRecord {
    /// Whether every table is read.
    pub fn complete(&self) -> bool {
        self.planned && self.tables.iter().all(|t| t.done)
    }

    /// Whether a table asked for with `walwatch snapshot` is not read yet.
    pub fn requests_left(&self) -> bool {
        self.tables
            .iter()
            .any(|t| !t.requests.is_empty() && !t.done)
    }
}

/// One table of a snapshot: done, or read up to a key (in key order).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableBackfill {
    pub schema: String,
    pub table: String,
    /// The chunk key's values (text, as the server prints them) of the last row durable, for
    /// a table read in key order; `None` before its first chunk, or for a table without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Vec<String>>,
    /// Rows durable so far.
    pub rows: u64,
    pub done: bool,
    /// The ids of the requests that asked for it (`walwatch snapshot`), the last few; none
    /// for the slot's own snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<String>,
    /// Why a requested table could not be read (it was dropped, the role may not read it):
    /// it is done, without its rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl Record {
    /// A record for this connection's run.
    pub async fn for_run(client: &Client, slot: &str, temporary: bool) -> Result<Record> {
        let row = client
            .query_one(
                "SELECT pg_backend_pid()::int4, backend_start::text FROM pg_stat_activity \
                 WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok(Record {
            walwatch: 1,
            slot: slot.to_string(),
            temporary,
            backend_pid: column(&row, "Record::for_run", 0)?,
            backend_start: column(&row, "Record::for_run", 1)?,
            types: Vec::new(),
            backfill: None,
        })
    }

    fn comment_sql(&self, publication: &str) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        format!(
            "COMMENT ON PUBLICATION {} IS {}",
            quote_ident(publication),
            quote_literal(&json)
        )
    }

    /// The user types of `types` added to this record's; whether any was new.
    pub fn remember_types(&mut self, types: &TypeRegistry) -> bool {
        let before = self.types.len();
        for (oid, kind) in types.user_types() {
            if !self.types.iter().any(|(o, _)| *o == oid) {
                self.types.push((oid, kind.clone()));
            }
        }
        self.types.sort_by_key(|(oid, _)| *oid);
        self.types.len() != before
    }

    /// Adds the remembered types that `types` (today's catalog) no longer has.
    pub fn restore_types(&self, types: &mut TypeRegistry) {
        for (oid, kind) in &self.types {
            if types.get(*oid).is_none() {
                types.insert(*oid, kind.clone());
            }
        }
    }
}

/// The record in a publication's comment, if it is walwatch's.
pub async fn read_record(client: &Client, publication: &str) -> Result<Option<Record>> {
    let row = client
        .query_opt(
            "SELECT obj_description(oid, 'pg_publication')::text FROM pg_publication \
             WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    let comment: Option<String> = match row {
        Some(r) => column(&r, "read_record", 0)?,
        None => None,
    };
    Ok(comment.and_then(|c| parse_record(&c)))
}

fn parse_record(comment: &str) -> Option<Record> {
    serde_json::from_str::<Record>(comment)
        .ok()
        .filter(|r| r.walwatch == 1)
}

/// Writes `record` as the comment of each of `publications`.
pub async fn write_record(client: &Client, publications: &[String], record: &Record) -> Result<()> {
    let sql: Vec<String> = publications.iter().map(|p| record.comment_sql(p)).collect();
    client.batch_execute(&sql.join(";\n")).await?;
    Ok(())
}

/// The publications a stream reads, and which of them this run created.
#[derive(Clone, Debug, Default)]
pub struct Publications {
    pub names: Vec<String>,
    /// Made by this run (a temporary slot's): dropped when it ends.
    pub created: Vec<String>,
    /// The record their comments hold (none for a publication given with --publication).
    pub record: Option<Record>,
}

/// What to publish.
pub struct Want<'a> {
    pub main: &'a str,
    pub slot: &'a str,
    pub temporary: bool,
    pub tables: Option<&'a [(String, String)]>,
    pub ops: OpSet,
    /// `publish_via_partition_root`: a partitioned table's changes under its own name.
    pub via_root: bool,
    /// `server_version_num`: what the publications can be asked for.
    pub server_version: u32,
}

/// Creates (or re-targets) walwatch's publications for `want`, with their record.
pub async fn ensure(client: &Client, info: &ServerInfo, want: &Want<'_>) -> Result<Publications> {
    if want.tables.is_none() && !info.is_superuser {
        return Err(Error::Setup(format!(
            "watching every table needs a publication FOR ALL TABLES, which only a superuser can \
             create (role `{}` is not one): name the tables with --tables, or have an \
             administrator create a publication and pass it with --publication",
            info.user
        )));
    }
    let publish = want.ops.publish_option();
    if publish.is_empty() {
        return Err(Error::Config(
            "--ops selects no row operation (insert, update, delete, truncate): nothing would be published"
                .into(),
        ));
    }
    let (with, without) = split_by_identity(client, want.tables).await?;
    let companion = companion_name(want.main);
    let main_exists = exists(client, want.main).await?;
    if !main_exists
        && !want.temporary
        && crate::pg::catalog::slot_row(client, want.slot)
            .await?
            .is_some()
    {
        return Err(dropped_under_slot(want));
    }
    if main_exists && !exists(client, &companion).await? {
        return legacy(client, info, want, &with, &without).await;
    }
    warn_unpublished(&without, want.ops);
    let noident: Vec<(String, String)> = without
        .iter()
        .map(|t| (t.schema.clone(), t.table.clone()))
        .collect();
    let companion_target = match want.tables {
        None => Target::All,
        Some(_) => Target::Tables(&noident),
    };
    let companion_publish = want.ops.without_identity().publish_option();
    let record = refreshed_record(client, want, read_record(client, want.main).await?).await?;
    let mut sql = Vec::new();
    let mut created = Vec::new();
    for (name, target, publish) in [
        (want.main, Target::Tables(&with), publish.as_str()),
        (
            companion.as_str(),
            companion_target,
            companion_publish.as_str(),
        ),
    ] {
        // Each on its own: one of the two may have been dropped by hand (or by a script that
        // knew only the main one's name) while the other stayed.
        let this_exists = if name == want.main {
            main_exists
        } else {
            exists(client, name).await?
        };
        if this_exists {
            sql.extend(retarget(client, name, &target, publish, want).await?);
        } else {
            sql.push(format!(
                "CREATE PUBLICATION {} {} WITH ({})",
                quote_ident(name),
                target.create_clause(),
                with_options(publish, want.via_root, want.server_version)
            ));
            created.push(name.to_string());
        }
        sql.push(record.comment_sql(name));
    }
    // One simple-query batch is one transaction: both publications and their records appear
    // together, or not at all.
    client
        .batch_execute(&sql.join(";\n"))
        .await
        .map_err(|e| publication_error(e, want.main, info))?;
    Ok(Publications {
        names: vec![want.main.to_string(), companion],
        created: if want.temporary { created } else { Vec::new() },
        record: Some(record),
    })
}

/// The main publication of an existing slot is gone. pgoutput reads publications as they were
/// when each change was written (with the historic snapshot of the WAL it decodes), so one
/// made now is "not there" for the WAL between the slot's position and now: before
/// PostgreSQL 18 decoding fails on it at every start ("publication ... does not exist",
/// pgoutput.c `LoadPublications`), from 18 on the server skips it and the changes of that
/// stretch are not sent. Either way, no silent recovery is possible.
fn dropped_under_slot(want: &Want<'_>) -> Error {
    Error::Setup(format!(
        "slot `{slot}` exists, but walwatch's publication for it, `{main}`, does not: it was \
         dropped, or the slot was made with --publication (then pass that again). \
         PostgreSQL cannot decode the slot's WAL from before a publication made now, so \
         walwatch cannot go on from where the slot is with one. Drop the slot and start \
         again (walwatch slots drop {slot}; the changes since the slot's last confirmed \
         position are not seen), or restore the publication from a backup of the catalog",
        main = want.main,
        slot = want.slot,
    ))
}

/// A permanent slot whose main publication has no companion: one from before the companion
/// existed, or one whose companion was dropped by hand. Naming a publication created now would
/// fail while decoding WAL from before it, so the slot keeps its one publication. Tables
/// without a replica identity stay in it only if they already were (an old slot's, whose
/// UPDATEs PostgreSQL already refuses; walwatch says so); none is added, for that would make
/// the application's statements fail.
async fn legacy(
    client: &Client,
    info: &ServerInfo,
    want: &Want<'_>,
    with: &[(String, String)],
    without: &[NoIdentity],
) -> Result<Publications> {
    use crate::event::Op;
    // An old slot's one publication lists every table (FOR ALL TABLES without --tables).
    let (mut kept, mut unseen): (Vec<&NoIdentity>, _) = (without.iter().collect(), Vec::new());
    if want.tables.is_some() {
        let current = crate::pg::catalog::publication_tables(client, want.main).await?;
        let mut list = with.to_vec();
        (kept, unseen) = without
            .iter()
            .partition(|t| current.contains(&(t.schema.clone(), t.table.clone())));
        list.extend(kept.iter().map(|t| (t.schema.clone(), t.table.clone())));
        let publish = want.ops.publish_option();
        let sql = retarget(client, want.main, &Target::Tables(&list), &publish, want).await?;
        if !sql.is_empty() {
            client
                .batch_execute(&sql.join(";\n"))
                .await
                .map_err(|e| publication_error(e, want.main, info))?;
        }
    }
    let companion = companion_name(want.main);
    for t in &unseen {
        tracing::warn!(
            "{}: walwatch does not see it at all on slot {}: {}, and the slot's publication \
             for such tables ({companion}) is missing (a publication made now cannot be read \
             from where the slot is). Recreate the slot (walwatch slots drop {}, then run \
             again) to see its INSERTs and TRUNCATEs",
            t.qualified(),
            want.slot,
            t.why(),
            want.slot
        );
    }
    if want.ops.contains(Op::Update) || want.ops.contains(Op::Delete) {
        for t in kept {
            tracing::warn!(
                "slot {} was created by an earlier walwatch with one publication, {}, which \
                 publishes UPDATE and DELETE of {}: {}, so PostgreSQL refuses the application's \
                 UPDATE and DELETE statements on it while that publication exists. Recreate the \
                 slot with this walwatch (walwatch slots drop {}, then run again) to watch it \
                 without that",
                want.slot,
                want.main,
                t.qualified(),
                t.why(),
                want.slot
            );
        }
    }
    let record = refreshed_record(client, want, read_record(client, want.main).await?).await?;
    write_record(client, &[want.main.to_string()], &record).await?;
    Ok(Publications {
        names: vec![want.main.to_string()],
        created: Vec::new(),
        record: Some(record),
    })
}

/// This run's record, keeping the types `old` remembered for the same slot, and how far its
/// snapshot got.
async fn refreshed_record(client: &Client, want: &Want<'_>, old: Option<Record>) -> Result<Record> {
    let (types, backfill) = match old {
        Some(r) if r.slot == want.slot => (r.types, r.backfill),
        _ => (Vec::new(), None),
    };
    Ok(Record {
        types,
        backfill,
        ..Record::for_run(client, want.slot, want.temporary).await?
    })
}

enum Target<'a> {
    All,
    Tables(&'a [(String, String)]),
}

impl Target<'_> {
    /// After `CREATE PUBLICATION name`: nothing (an empty publication), `FOR ALL TABLES` or
    /// `FOR TABLE ...`.
    fn create_clause(&self) -> String {
        match self {
            Target::All => "FOR ALL TABLES".into(),
            Target::Tables([]) => String::new(),
            Target::Tables(list) => format!("FOR TABLE {}", table_list(list)),
        }
    }
}

fn table_list(list: &[(String, String)]) -> String {
    list.iter()
        .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn exists(client: &Client, name: &str) -> Result<bool> {
    Ok(client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await?
        .is_some())
}

/// A publication's WITH options: what it publishes, and how a partitioned table's changes are
/// reported (PostgreSQL 13+; the docs' CREATE PUBLICATION, `publish_via_partition_root`).
/// From PostgreSQL 18, also stored generated columns (`publish_generated_columns`; before 18
/// pgoutput never sends generated columns, `logicalrep_should_publish_column`).
fn with_options(publish: &str, via_root: bool, server_version: u32) -> String {
    let mut with = format!(
        "publish = {}, publish_via_partition_root = {via_root}",
        quote_literal(publish)
    );
    if server_version >= GENERATED_COLUMNS_SINCE {
        with.push_str(", publish_generated_columns = stored");
    }
    with
}

/// The first server version whose publications can publish (stored) generated columns.
pub const GENERATED_COLUMNS_SINCE: u32 = 180_000;

/// The statements that make an existing publication publish `publish` of `target`.
async fn retarget(
    client: &Client,
    name: &str,
    target: &Target<'_>,
    publish: &str,
    want: &Want<'_>,
) -> Result<Vec<String>> {
    let row = client
        .query_one(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await?;
    let all: bool = column(&row, "retarget", 0)?;
    let q = quote_ident(name);
    let mut sql = vec![format!(
        "ALTER PUBLICATION {q} SET ({})",
        with_options(publish, want.via_root, want.server_version)
    )];
    match (target, all) {
        (Target::All, true) => {}
        (Target::All, false) | (Target::Tables(_), true) => {
            return Err(Error::Setup(format!(
                "publication `{name}` was made for {} and cannot be changed to watch {}: use \
                 another --slot for this set of tables",
                if all {
                    "every table"
                } else {
                    "a list of tables"
                },
                if all {
                    "a list of tables"
                } else {
                    "every table"
                },
            )));
        }
        (Target::Tables(list), false) => {
            let current = crate::pg::catalog::publication_tables(client, name).await?;
            let mut want = list.to_vec();
            want.sort();
            if current != want {
                tracing::info!(publication = name, "re-targeting the publication");
                if want.is_empty() {
                    sql.push(format!(
                        "ALTER PUBLICATION {q} DROP TABLE {}",
                        table_list(&current)
                    ));
                } else {
                    sql.push(format!(
                        "ALTER PUBLICATION {q} SET TABLE {}",
                        table_list(&want)
                    ));
                }
            }
        }
    }
    Ok(sql)
}

fn publication_error(e: tokio_postgres::Error, name: &str, info: &ServerInfo) -> Error {
    match e.as_db_error() {
        Some(db) if db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
            Error::Setup(format!(
                "cannot create or change publication `{name}`: {}; role `{}` must own the watched \
                 tables (or be a superuser) and may create in this database, or an \
                 administrator can create the publication and you pass it with --publication",
                db.message(),
                info.user
            ))
        }
        _ => Error::Meta(e),
    }
}

/// For a publication given with --publication: says which application statements it makes
/// fail (it is not walwatch's to change).
pub async fn warn_given(
    client: &Client,
    name: &str,
    tables: Option<&[(String, String)]>,
    server_version: u32,
    partitions: crate::config::Partitions,
) -> Result<()> {
    // pubgencols: PostgreSQL 18 ('n' none, 's' stored); pubviaroot: 13.
    let gencols = if server_version >= GENERATED_COLUMNS_SINCE {
        "pubgencols::text"
    } else {
        "'n'::text"
    };
    let row = client
        .query_one(
            &format!(
                "SELECT pubupdate::bool, pubdelete::bool, pubviaroot::bool, {gencols} \
                 FROM pg_publication WHERE pubname = $1"
            ),
            &[&name],
        )
        .await?;
    let update: bool = column(&row, "warn_given", 0)?;
    let delete: bool = column(&row, "warn_given", 1)?;
    let via_root: bool = column(&row, "warn_given", 2)?;
    let generated: String = column(&row, "warn_given", 3)?;
    report_given_partitions(name, via_root, partitions);
    if server_version >= GENERATED_COLUMNS_SINCE && generated == "n" {
        tracing::info!(
            "publication {name} does not publish generated columns \
             (publish_generated_columns = none): events lack them; ALTER PUBLICATION {name} \
             SET (publish_generated_columns = stored) to see stored ones"
        );
    }
    if !(update || delete) {
        return Ok(());
    }
    let published = crate::pg::catalog::publication_tables(client, name).await?;
    let (_, without) = split_by_identity(client, tables).await?;
    for t in without
        .iter()
        .filter(|t| published.contains(&(t.schema.clone(), t.table.clone())))
    {
        tracing::warn!(
            "publication {name} publishes UPDATE/DELETE of {}, but {}: PostgreSQL refuses the \
             application's UPDATE and DELETE statements on it while that publication exists",
            t.qualified(),
            t.why()
        );
    }
    Ok(())
}

/// Says how a given publication reports partitioned tables: its setting, not --partitions,
/// decides.
fn report_given_partitions(name: &str, via_root: bool, asked: crate::config::Partitions) {
    use crate::config::Partitions;
    let how = if via_root {
        "under the partitioned table's name (publish_via_partition_root = true)"
    } else {
        "under each partition's own name, with the partitioned table in partition_of \
         (publish_via_partition_root = false)"
    };
    match (via_root, asked) {
        (true, Partitions::Leaf) => tracing::warn!(
            "--partitions leaf has no effect on publication {name}: it reports changes of \
             partitioned tables {how}"
        ),
        _ => tracing::info!("publication {name} reports changes of partitioned tables {how}"),
    }
}

/// A walwatch publication, as `walwatch slots` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    pub name: String,
    pub slot: String,
    pub temporary: bool,
    pub slot_exists: bool,
    /// A temporary slot's publication whose slot is gone and whose run is gone (killed before
    /// it could drop it): nothing will ever use or drop it.
    pub orphan: bool,
}

/// Every publication of this database whose comment is a walwatch [`Record`].
pub async fn list(client: &Client) -> Result<Vec<Listed>> {
    let rows = client
        .query(
            "SELECT p.pubname::text, obj_description(p.oid, 'pg_publication')::text \
             FROM pg_publication p \
             WHERE obj_description(p.oid, 'pg_publication') LIKE '{\"walwatch\":%' \
             ORDER BY 1",
            &[],
        )
        .await?;
    let live = live_backends(client).await?;
    let slots: Vec<String> = crate::pg::catalog::list_slots(client)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut out = Vec::new();
    for r in rows {
        let name: String = column(&r, "publication::list", 0)?;
        let comment: Option<String> = column(&r, "publication::list", 1)?;
        let Some(rec) = comment.as_deref().and_then(parse_record) else {
            continue;
        };
        let slot_exists = slots.contains(&rec.slot);
        let run_alive = live
            .iter()
            .any(|(pid, start)| *pid == rec.backend_pid && *start == rec.backend_start);
        out.push(Listed {
            name,
            slot_exists,
            // Only a temporary slot's publication is never used again once its slot is gone:
            // a permanent slot's may be waiting for its slot (a failover to a standby whose
            // slots are not synchronised yet), and `walwatch slots drop` removes it.
            orphan: rec.temporary && !slot_exists && !run_alive,
            slot: rec.slot,
            temporary: rec.temporary,
        });
    }
    Ok(out)
}

async fn live_backends(client: &Client) -> Result<Vec<(i32, String)>> {
    let rows = client
        .query(
            "SELECT pid::int4, backend_start::text FROM pg_stat_activity \
             WHERE backend_start IS NOT NULL",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                column(r, "live_backends", 0)?,
                column(r, "live_backends", 1)?,
            ))
        })
        .collect()
}

/// Drops the orphaned walwatch publications of this database (their slot is gone and so is
/// the run that made them); returns their names. One that cannot be dropped (another owner)
/// is left, with a warning.
pub async fn prune(client: &Client) -> Result<Vec<String>> {
    let mut dropped = Vec::new();
    for p in list(client).await?.into_iter().filter(|p| p.orphan) {
        match client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(&p.name)
            ))
            .await
        {
            Ok(()) => dropped.push(p.name),
            Err(e) => tracing::warn!("could not drop orphaned publication {}: {e}", p.name),
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_foreign_comments_are_not_records() {
        let r = Record {
            walwatch: 1,
            slot: "s".into(),
            temporary: true,
            backend_pid: 42,
            backend_start: "2026-12-01 00:00:00+00".into(),
            types: vec![(16_400, crate::decode::TypeKind::Enum)],
            backfill: Some(BackfillRecord {
                planned: true,
                initial: false,
                taken: 0x1_0000_0010,
                requests: vec!["r1".into()],
                tables: vec![TableBackfill {
                    schema: "public".into(),
                    table: "orders".into(),
                    after: Some(vec!["42".into()]),
                    rows: 42,
                    done: false,
                    requests: vec!["r1".into()],
                    failed: None,
                }],
            }),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.starts_with("{\"walwatch\":1,"), "{json}");
        assert_eq!(parse_record(&json), Some(r));
        assert_eq!(parse_record("orders for the shop"), None);
        // A record from before requests: its snapshot was the slot's own.
        let old = parse_record(
            "{\"walwatch\":1,\"slot\":\"s\",\"temporary\":false,\"backend_pid\":1,\
             \"backend_start\":\"x\",\"backfill\":{\"planned\":true,\"tables\":[]}}",
        )
        .and_then(|r| r.backfill);
        assert!(old.is_some_and(|b| b.initial && b.taken == 0));
        assert_eq!(parse_record("{\"walwatch\":2,\"slot\":\"s\"}"), None);
    }

    #[test]
    fn names_fit_postgres_identifiers() {
        let slot = "s".repeat(MAX_SLOT_FOR_PUBLICATION);
        assert_eq!(companion_name(&main_name(&slot)).len(), 63);
    }

    #[test]
    fn targets() {
        assert_eq!(Target::All.create_clause(), "FOR ALL TABLES");
        assert_eq!(Target::Tables(&[]).create_clause(), "");
        let t = vec![("public".to_string(), "Orders".to_string())];
        assert_eq!(
            Target::Tables(&t).create_clause(),
            "FOR TABLE \"public\".\"Orders\""
        );
    }
}
