//! Snapshots on demand (`walwatch snapshot --slot S --tables t`): a request that the walwatch
//! streaming slot S finds in its own stream, as a transactional logical message with the
//! slot's snapshot prefix (`walwatch.backfill@S`). It goes through the stream, not a table or
//! a socket, because:
//! - the source needs nothing writable (Debezium's incremental snapshots need a signal table);
//! - it reaches the walwatch on the slot wherever that runs, or the next one to run: the slot
//!   keeps it until a walwatch confirms a position past it;
//! - it is ordered with the changes, so the tables are read after every change before it.
//!
//! The walwatch takes a request into the slot's record before its stream goes past it
//! (`pipeline::backfill`), so a stop does not lose it, and reads the tables between
//! watermarks while it streams. The record is also where the requester sees the tables done
//! (`--wait`).

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::event::Lsn;
use crate::marker;
use crate::pg::catalog::{self, column};
use crate::pg::publication::{self, TableBackfill};

/// A request's content.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// Unique: the record marks each table with the request that asked for it.
    pub request: String,
    /// (schema, table)
    pub tables: Vec<(String, String)>,
}

/// A request that was sent.
#[derive(Clone, Debug)]
pub struct Sent {
    pub id: String,
    /// Where it is in the stream.
    pub lsn: Lsn,
    /// A walwatch is streaming the slot now (else the next one to stream it takes it).
    pub active: bool,
    /// The slot has walwatch's own publications, whose record shows the request's progress
    /// ([`progress`]); not with `--publication`.
    pub recorded: bool,
}

/// Asks the walwatch on slot `slot` to read `tables` (resolved names) while it streams.
pub async fn send(client: &Client, slot: &str, tables: &[(String, String)]) -> Result<Sent> {
    let row = check_slot(client, slot).await?;
    let version: i32 = column(
        &client
            .query_one("SELECT current_setting('server_version_num')::int4", &[])
            .await?,
        "snapshot_request::send",
        0,
    )?;
    if version < 140_000 {
        return Err(Error::Snapshot(
            "a snapshot request needs PostgreSQL 14 or later: it reaches walwatch as a \
             logical message, which pgoutput sends from 14 on"
                .into(),
        ));
    }
    let main = publication::main_name(slot);
    let recorded = publication::read_record(client, &main)
        .await?
        .is_some_and(|r| r.slot == slot);
    if recorded {
        let publications = [main.clone(), publication::companion_name(&main)];
        let missing = unpublished(client, &publications, tables).await?;
        if !missing.is_empty() {
            return Err(Error::Snapshot(format!(
                "slot {slot} does not watch {}: a snapshot request reads only tables the slot \
                 streams. Restart the walwatch on slot {slot} with them in --tables (their \
                 changes stream from then on), then ask again",
                missing.join(", ")
            )));
        }
    }
    let request = Request {
        request: new_id(),
        tables: tables.to_vec(),
    };
    let content = serde_json::to_string(&request)
        .map_err(|e| Error::Setup(format!("cannot write the request: {e}")))?;
    let prefix = marker::scoped(marker::BACKFILL_PREFIX, Some(slot));
    let lsn = marker::emit(client, &prefix, &content).await?;
    Ok(Sent {
        id: request.request,
        lsn,
        active: row.active_pid.is_some(),
        recorded,
    })
}

/// The progress of request `sent` on slot `slot`, table by table, as the slot's record has it
/// (what is durable in every output): `None` while the slot's walwatch has not taken the
/// request (the record keeps the ids of the last few taken); empty when it took it and
/// streams none of its tables.
pub async fn progress(
    client: &Client,
    slot: &str,
    sent: &Sent,
) -> Result<Option<Vec<TableBackfill>>> {
    let main = publication::main_name(slot);
    let Some(record) = publication::read_record(client, &main).await? else {
        return Err(Error::Snapshot(format!(
            "slot {slot}'s publication {main} is gone: the request's progress cannot be seen"
        )));
    };
    let Some(backfill) = record.backfill else {
        return Ok(None);
    };
    if !backfill.requests.contains(&sent.id) {
        return Ok(None);
    }
    Ok(Some(
        backfill
            .tables
            .into_iter()
            .filter(|t| t.requests.contains(&sent.id))
            .collect(),
    ))
}

/// The slot, checked to be a logical slot of this database.
async fn check_slot(client: &Client, slot: &str) -> Result<catalog::SlotRow> {
    let Some(row) = catalog::slot_row(client, slot).await? else {
        return Err(Error::Snapshot(format!(
            "there is no replication slot `{slot}`: name the --slot of a walwatch that streams \
             (walwatch slots lists them)"
        )));
    };
    let here: String = column(
        &client
            .query_one("SELECT current_database()::text", &[])
            .await?,
        "snapshot_request::check_slot",
        0,
    )?;
    if row.kind != "logical" || row.database.as_deref() != Some(here.as_str()) {
        return Err(Error::Snapshot(format!(
            "slot `{slot}` is not a logical slot of database {here}: connect to the database \
             the walwatch on it streams from"
        )));
    }
    Ok(row)
}

/// The tables of `tables` that none of `publications` publishes (itself, a partition of it or
/// the partitioned table it is part of: which one depends on `publish_via_partition_root`).
async fn unpublished(
    client: &Client,
    publications: &[String],
    tables: &[(String, String)],
) -> Result<Vec<String>> {
    let (schemas, names): (Vec<&str>, Vec<&str>) =
        tables.iter().map(|(s, t)| (s.as_str(), t.as_str())).unzip();
    let rows = client
        .query(
            "SELECT format('%I.%I', w.s, w.t)::text \
             FROM unnest($2::text[], $3::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s \
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t \
             WHERE NOT EXISTS ( \
                 SELECT 1 FROM pg_publication_tables pt \
                 JOIN pg_namespace pn ON pn.nspname = pt.schemaname \
                 JOIN pg_class pc ON pc.relnamespace = pn.oid AND pc.relname = pt.tablename \
                 WHERE pt.pubname = ANY($1) \
                   AND (pc.oid IN (SELECT relid FROM pg_partition_tree(c.oid)) \
                        OR pc.oid IN (SELECT relid FROM pg_partition_ancestors(c.oid)) \
                        OR pc.oid = c.oid)) \
             ORDER BY 1",
            &[&publications, &schemas, &names],
        )
        .await?;
    rows.iter()
        .map(|r| column(r, "snapshot_request::unpublished", 0))
        .collect()
}

/// A request id: this process and the time, unique enough to tell requests apart.
fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips() {
        let r = Request {
            request: "1-2".into(),
            tables: vec![("public".into(), "orders".into())],
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            "{\"request\":\"1-2\",\"tables\":[[\"public\",\"orders\"]]}"
        );
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
    }
}
