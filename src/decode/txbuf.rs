//! The buffer for a transaction whose changes arrive before its outcome is known: a streamed
//! transaction (protocol v2+, between Stream Start/Stop segments until Stream Commit/Abort) or a
//! prepared one (v3, until Commit/Rollback Prepared).
//!
//! Why raw bytes and not events: a 1,000,000-row transaction must stay far below the server's
//! own spill size (~186 MB for that case measured here). A decoded `Event` costs several
//! allocations per column; the pgoutput message is ~100 bytes for a typical row. So each
//! change is kept as its message bytes plus its WAL position, and decoded once, at commit.
//!
//! Layout: fixed-size chunks (no doubling: a `Vec` grown by doubling can hold twice what it
//! uses, and a realloc of a large buffer may briefly need both copies), each holding whole
//! records `[u32 LE length][u64 LE lsn][message bytes]`. Records never straddle chunks, so a
//! later change can spill full chunks to disk without touching this API (`push`, `iter`,
//! `retain`, `bytes`).

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use super::OidHasher;

use crate::event::Lsn;

/// Chunk size: large enough that the per-chunk overhead is noise, small enough that the last,
/// partly filled chunk wastes little.
const CHUNK: usize = 256 * 1024;
const HEADER: usize = 4 + 8;

/// One buffered transaction.
#[derive(Debug)]
pub(crate) struct TxBuf {
    chunks: Vec<Vec<u8>>,
    /// The top-level xid.
    pub(crate) xid: u32,
    /// Where the transaction started (the first Stream Start's or Begin Prepare's WAL start),
    /// reported as the BEGIN event's `lsn` at replay.
    pub(crate) first_lsn: Lsn,
    /// Whether records were taken inside stream blocks and so carry a leading xid.
    pub(crate) streamed: bool,
    /// Relation OIDs whose shape is recorded in the buffer (a Relation record precedes every
    /// change to them), so replay never depends on the shared cache.
    pub(crate) pinned: HashSet<u32, BuildHasherDefault<OidHasher>>,
}

impl TxBuf {
    pub(crate) fn new(xid: u32, first_lsn: Lsn, streamed: bool) -> TxBuf {
        TxBuf {
            chunks: Vec::new(),
            xid,
            first_lsn,
            streamed,
            pinned: HashSet::default(),
        }
    }

    /// Appends one message. Messages are at most 1 GB (a PostgreSQL allocation limit), so the
    /// length always fits in a u32; anything larger is refused rather than truncated.
    pub(crate) fn push(&mut self, lsn: Lsn, msg: &[u8]) -> bool {
        let Ok(len) = u32::try_from(msg.len()) else {
            return false;
        };
        let need = HEADER + msg.len();
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= need);
        if !fits {
            self.chunks.push(Vec::with_capacity(CHUNK.max(need)));
        }
        if let Some(c) = self.chunks.last_mut() {
            c.extend_from_slice(&len.to_le_bytes());
            c.extend_from_slice(&lsn.0.to_le_bytes());
            c.extend_from_slice(msg);
        }
        true
    }

    /// The records in order: (WAL start, message bytes).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Lsn, &[u8])> {
        self.chunks.iter().flat_map(|c| Records { buf: c, pos: 0 })
    }

    /// Keeps only the records for which `keep` is true, compacting in place.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        for c in &mut self.chunks {
            let mut read = 0;
            let mut write = 0;
            while let Some((_, msg, next)) = record_at(c, read) {
                if keep(msg) {
                    if write != read {
                        c.copy_within(read..next, write);
                    }
                    write += next - read;
                }
                read = next;
            }
            c.truncate(write);
        }
        self.chunks.retain(|c| !c.is_empty());
    }

    /// Memory held, including the unused tail of each chunk.
    pub(crate) fn bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

/// Decodes the record at `pos`: (lsn, message, end of record).
fn record_at(c: &[u8], pos: usize) -> Option<(Lsn, &[u8], usize)> {
    let head = c.get(pos..pos.checked_add(HEADER)?)?;
    let (len, lsn) = head.split_at(4);
    let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
    let lsn = Lsn(u64::from_le_bytes(lsn.try_into().ok()?));
    let start = pos + HEADER;
    let end = start.checked_add(len)?;
    Some((lsn, c.get(start..end)?, end))
}

struct Records<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = (Lsn, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (lsn, msg, next) = record_at(self.buf, self.pos)?;
        self.pos = next;
        Some((lsn, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_retain_compacts() {
        let mut b = TxBuf::new(7, Lsn(1), true);
        for i in 0..10_000u32 {
            assert!(b.push(Lsn(u64::from(i)), &i.to_be_bytes()[..(i % 4 + 1) as usize]));
        }
        assert_eq!(b.iter().count(), 10_000);
        assert!(b.chunks.len() == 1);
        let big = vec![9u8; CHUNK * 2];
        assert!(b.push(Lsn(99_999), &big));
        assert_eq!(b.iter().count(), 10_001);
        b.retain(|m| m.len() != 2);
        assert_eq!(b.iter().count(), 7_501);
        let lsns: Vec<u64> = b.iter().map(|(l, _)| l.0).take(3).collect();
        assert_eq!(lsns, [0, 2, 3]);
        assert_eq!(b.iter().last().map(|(_, m)| m.len()), Some(CHUNK * 2));
        b.retain(|_| false);
        assert_eq!((b.iter().count(), b.bytes()), (0, 0));
    }
}
