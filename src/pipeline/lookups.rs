//! What the decode thread looks up in the catalog once per relation: `partition_of` for
//! changes reported under a partition's name, and `key` as the primary key.

use std::sync::Arc;

use super::{KeyLookup, PartitionLookup};
use crate::decode::OidMap;
use crate::error::Result;
use crate::event::{Event, Relation, TableName};
use crate::filter::Filter;

/// A value looked up once per Relation message: the server describes a relation again after
/// DDL on it (an ATTACH, a DETACH, a new key), which makes a new `Arc<Relation>`.
struct PerRelation<T> {
    /// By relation OID, looked up for every change (so not SipHash).
    known: OidMap<(Arc<Relation>, T)>,
}

impl<T> Default for PerRelation<T> {
    fn default() -> Self {
        PerRelation {
            known: OidMap::default(),
        }
    }
}

impl<T> PerRelation<T> {
    fn get_or(&mut self, rel: &Arc<Relation>, look_up: impl FnOnce() -> Result<T>) -> Result<&T> {
        let fresh = self
            .known
            .get(&rel.oid)
            .is_some_and(|(seen, _)| Arc::ptr_eq(seen, rel));
        if !fresh {
            self.known.insert(rel.oid, (rel.clone(), look_up()?));
        }
        Ok(&self.known[&rel.oid].1)
    }
}

/// `partition_of` for each relation the server reports changes under.
#[derive(Default)]
pub(super) struct Partitions {
    pub(super) lookup: Option<PartitionLookup>,
    known: PerRelation<Option<Arc<TableName>>>,
}

impl Partitions {
    /// The partitioned table `rel`'s changes belong to: its topmost watched ancestor, else the
    /// root of its tree; `None` for a table that is not a partition (or is one no more).
    pub(super) fn of(
        &mut self,
        rel: &Arc<Relation>,
        filter: &Filter,
    ) -> Result<Option<Arc<TableName>>> {
        let Some(lookup) = &mut self.lookup else {
            return Ok(None);
        };
        let chosen = self.known.get_or(rel, || {
            let ancestors = lookup(rel.oid)?;
            Ok(ancestors
                .iter()
                .rev()
                .find(|a| filter.watches(&a.schema, &a.table))
                .or(ancestors.last())
                .cloned()
                .map(Arc::new))
        })?;
        Ok(chosen.clone())
    }
}

/// `key` is the primary key whatever the replica identity. The server flags the replica
/// identity's columns (Relation message), which under REPLICA IDENTITY FULL is every column
/// and under USING INDEX that index's; where the table has a primary key and the row carries
/// its columns, `key` is those instead.
#[derive(Default)]
pub(super) struct PrimaryKeys {
    pub(super) lookup: Option<KeyLookup>,
    known: PerRelation<Vec<String>>,
}

impl PrimaryKeys {
    pub(super) fn apply(&mut self, rel: &Arc<Relation>, ev: &mut Event) -> Result<()> {
        use crate::event::{ReplicaIdentity, Row};
        if rel.replica_identity == ReplicaIdentity::Default || !ev.op.is_change() {
            return Ok(());
        }
        let Some(lookup) = &mut self.lookup else {
            return Ok(());
        };
        let pk = self.known.get_or(rel, || lookup(rel.oid))?;
        if pk.is_empty() {
            return Ok(());
        }
        // The row in table order: the new one (INSERT, UPDATE) or the old one (DELETE).
        let pick = |row: &Option<Row>| {
            let row = row.as_ref()?;
            let columns: Vec<_> = row
                .columns
                .iter()
                .filter(|c| pk.iter().any(|k| **k == *c.name))
                .cloned()
                .collect();
            (columns.len() == pk.len()).then_some(Row { columns })
        };
        if let Some(key) = pick(&ev.data).or_else(|| pick(&ev.old)) {
            ev.key = Some(key);
        }
        Ok(())
    }
}
