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
//! records `[u32 LE length][u64 LE lsn][message bytes]`. Records never straddle chunks, so full
//! chunks can be spilled whole.
//!
//! Spilling (bounded memory): once the decoder's buffers hold more than a threshold, every full
//! chunk is appended to a [`SpillStore`] (a temporary file, supplied by the caller so this
//! module does no I/O of its own) and read back one chunk at a time at commit. Memory then
//! stays near the threshold whatever the transaction's size.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::io;
use std::sync::Arc;

use super::error::DecodeError;
use super::{OidHasher, OidMap};

use crate::event::{Lsn, Relation};

/// Chunk size: large enough that the per-chunk overhead is noise, small enough that the last,
/// partly filled chunk wastes little.
pub(crate) const CHUNK: usize = 256 * 1024;
const HEADER: usize = 4 + 8;

/// Append-only storage for spilled chunks of one transaction; dropped with it.
pub trait SpillStore: Send + std::fmt::Debug {
    /// Appends `chunk` and returns its offset.
    fn append(&mut self, chunk: &[u8]) -> io::Result<u64>;
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// When and where buffered transactions spill.
pub trait Spill: Send + Sync + std::fmt::Debug {
    /// Buffered bytes (all transactions together) above which full chunks are spilled.
    fn threshold(&self) -> usize;
    /// A new store for one transaction.
    fn create(&self) -> io::Result<Box<dyn SpillStore>>;
}

#[derive(Debug)]
enum Chunk {
    Mem(Vec<u8>),
    Disk { offset: u64, len: usize },
}

/// One buffered transaction.
#[derive(Debug)]
pub(crate) struct TxBuf {
    chunks: Vec<Chunk>,
    /// Bytes held in memory (chunk capacities).
    mem: usize,
    spilled: u64,
    store: Option<Box<dyn SpillStore>>,
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
    /// The relations the server itself described inside this streamed transaction (its
    /// Relation messages, not the shapes pinned from the cache): the server counts them as
    /// sent once the transaction commits, so the decoder adopts them then (see
    /// `Decoder::decode_one`, Stream Commit).
    pub(crate) described: OidMap<Arc<Relation>>,
}

fn spill_error(action: &'static str, e: &io::Error) -> DecodeError {
    DecodeError::Spill {
        action,
        reason: e.to_string(),
    }
}

impl TxBuf {
    pub(crate) fn new(xid: u32, first_lsn: Lsn, streamed: bool) -> TxBuf {
        TxBuf {
            chunks: Vec::new(),
            mem: 0,
            spilled: 0,
            store: None,
            xid,
            first_lsn,
            streamed,
            pinned: HashSet::default(),
            described: OidMap::default(),
        }
    }

    /// Appends one message. Messages are at most 1 GB (a PostgreSQL allocation limit), so the
    /// length always fits in a u32; anything larger is refused rather than truncated.
    pub(crate) fn push(&mut self, lsn: Lsn, msg: &[u8]) -> bool {
        let Ok(len) = u32::try_from(msg.len()) else {
            return false;
        };
        let need = HEADER + msg.len();
        let fits =
            matches!(self.chunks.last(), Some(Chunk::Mem(c)) if c.capacity() - c.len() >= need);
        if !fits {
            let c = Vec::with_capacity(CHUNK.max(need));
            self.mem += c.capacity();
            self.chunks.push(Chunk::Mem(c));
        }
        if let Some(Chunk::Mem(c)) = self.chunks.last_mut() {
            c.extend_from_slice(&len.to_le_bytes());
            c.extend_from_slice(&lsn.0.to_le_bytes());
            c.extend_from_slice(msg);
        }
        true
    }

    /// Moves every chunk but the one being filled to the spill store; returns the bytes freed.
    pub(crate) fn spill(&mut self, spill: &Arc<dyn Spill>) -> Result<usize, DecodeError> {
        let last = self.chunks.len().saturating_sub(1);
        let mut freed = 0;
        for i in 0..last {
            let Chunk::Mem(c) = &self.chunks[i] else {
                continue;
            };
            if self.store.is_none() {
                self.store = Some(spill.create().map_err(|e| spill_error("create", &e))?);
            }
            let Some(store) = self.store.as_mut() else {
                continue;
            };
            let offset = store.append(c).map_err(|e| spill_error("write", &e))?;
            let len = c.len();
            freed += c.capacity();
            self.spilled += len as u64;
            self.chunks[i] = Chunk::Disk { offset, len };
        }
        self.mem -= freed;
        Ok(freed)
    }

    /// Calls `f` with every record in order: (WAL start, message bytes). Spilled chunks are
    /// read back one at a time.
    pub(crate) fn for_each(
        &mut self,
        mut f: impl FnMut(Lsn, &[u8]) -> Result<(), DecodeError>,
    ) -> Result<(), DecodeError> {
        let mut scratch = Vec::new();
        for chunk in &self.chunks {
            let c: &[u8] = match chunk {
                Chunk::Mem(c) => c,
                Chunk::Disk { offset, len } => {
                    read_chunk(&mut self.store, *offset, *len, &mut scratch)?;
                    &scratch
                }
            };
            for (lsn, msg) in (Records { buf: c, pos: 0 }) {
                f(lsn, msg)?;
            }
        }
        Ok(())
    }

    /// Keeps only the records for which `keep` is true, compacting in place (a spilled chunk
    /// is read, compacted and appended anew when it loses records).
    pub(crate) fn retain(
        &mut self,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), DecodeError> {
        let mut scratch = Vec::new();
        for i in 0..self.chunks.len() {
            match &mut self.chunks[i] {
                Chunk::Mem(c) => {
                    compact(c, &mut keep);
                }
                Chunk::Disk { offset, len } => {
                    let (offset, len) = (*offset, *len);
                    read_chunk(&mut self.store, offset, len, &mut scratch)?;
                    if compact(&mut scratch, &mut keep) {
                        let new_len = scratch.len();
                        let new_offset = match self.store.as_mut() {
                            Some(store) if new_len > 0 => store
                                .append(&scratch)
                                .map_err(|e| spill_error("write", &e))?,
                            _ => 0,
                        };
                        self.chunks[i] = Chunk::Disk {
                            offset: new_offset,
                            len: new_len,
                        };
                    }
                }
            }
        }
        let mut freed = 0;
        self.chunks.retain(|c| match c {
            Chunk::Mem(v) if v.is_empty() => {
                freed += v.capacity();
                false
            }
            Chunk::Mem(_) => true,
            Chunk::Disk { len, .. } => *len > 0,
        });
        self.mem -= freed;
        Ok(())
    }

    /// Memory held, including the unused tail of each chunk.
    pub(crate) fn bytes(&self) -> usize {
        self.mem
    }

    /// Bytes written to the spill store.
    pub(crate) fn spilled_bytes(&self) -> u64 {
        self.spilled
    }
}

fn read_chunk(
    store: &mut Option<Box<dyn SpillStore>>,
    offset: u64,
    len: usize,
    scratch: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    scratch.clear();
    scratch.resize(len, 0);
    let store = store.as_mut().ok_or(DecodeError::Spill {
        action: "read",
        reason: "the spill store is gone".into(),
    })?;
    store
        .read_at(offset, scratch)
        .map_err(|e| spill_error("read", &e))
}

/// Drops the records `keep` refuses; true when any was dropped.
fn compact(c: &mut Vec<u8>, keep: &mut impl FnMut(&[u8]) -> bool) -> bool {
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
    let dropped = write != c.len();
    c.truncate(write);
    dropped
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

/// An in-memory spill store, for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct MemSpill {
    pub(crate) threshold: usize,
}

#[cfg(test)]
#[derive(Debug, Default)]
struct MemStore(Vec<u8>);

#[cfg(test)]
impl SpillStore for MemStore {
    fn append(&mut self, chunk: &[u8]) -> io::Result<u64> {
        let at = self.0.len() as u64;
        self.0.extend_from_slice(chunk);
        Ok(at)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = offset as usize;
        let src = self
            .0
            .get(at..at + buf.len())
            .ok_or_else(|| io::Error::other("read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

#[cfg(test)]
impl Spill for MemSpill {
    fn threshold(&self) -> usize {
        self.threshold
    }
    fn create(&self) -> io::Result<Box<dyn SpillStore>> {
        Ok(Box::new(MemStore::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(b: &mut TxBuf) -> Vec<(u64, Vec<u8>)> {
        let mut v = Vec::new();
        b.for_each(|l, m| {
            v.push((l.0, m.to_vec()));
            Ok(())
        })
        .unwrap();
        v
    }

    fn fill(b: &mut TxBuf) {
        for i in 0..10_000u32 {
            assert!(b.push(Lsn(u64::from(i)), &i.to_be_bytes()[..(i % 4 + 1) as usize]));
        }
        let big = vec![9u8; CHUNK * 2];
        assert!(b.push(Lsn(99_999), &big));
    }

    #[test]
    fn records_round_trip_and_retain_compacts() {
        let mut b = TxBuf::new(7, Lsn(1), true);
        fill(&mut b);
        assert_eq!(all(&mut b).len(), 10_001);
        assert_eq!(b.chunks.len(), 2);
        b.retain(|m| m.len() != 2).unwrap();
        let recs = all(&mut b);
        assert_eq!(recs.len(), 7_501);
        let lsns: Vec<u64> = recs.iter().map(|(l, _)| *l).take(3).collect();
        assert_eq!(lsns, [0, 2, 3]);
        assert_eq!(recs.last().map(|(_, m)| m.len()), Some(CHUNK * 2));
        b.retain(|_| false).unwrap();
        assert_eq!((all(&mut b).len(), b.bytes()), (0, 0));
    }

    #[test]
    fn spilled_chunks_read_back_the_same_and_retain_works_on_them() {
        let spill: Arc<dyn Spill> = Arc::new(MemSpill { threshold: 0 });
        let mut plain = TxBuf::new(7, Lsn(1), true);
        let mut spilled = TxBuf::new(7, Lsn(1), true);
        for i in 0..200_000u32 {
            let msg = [(i % 251) as u8; 20];
            plain.push(Lsn(u64::from(i)), &msg[..(i % 20) as usize]);
            spilled.push(Lsn(u64::from(i)), &msg[..(i % 20) as usize]);
            if i % 50_000 == 0 {
                spilled.spill(&spill).unwrap();
            }
        }
        let before = spilled.bytes();
        let freed = spilled.spill(&spill).unwrap();
        assert!(freed > 0 && spilled.bytes() == before - freed);
        assert!(spilled.bytes() <= CHUNK, "one chunk left in memory");
        assert!(spilled.spilled_bytes() > 3_000_000);
        assert_eq!(all(&mut plain), all(&mut spilled));
        // Drop the records of a "subtransaction" from spilled and in-memory chunks alike.
        plain.retain(|m| m.len() != 7).unwrap();
        spilled.retain(|m| m.len() != 7).unwrap();
        assert_eq!(all(&mut plain), all(&mut spilled));
        spilled.retain(|_| false).unwrap();
        assert!(all(&mut spilled).is_empty());
    }
}
