//! Pure decoding of the `pgoutput` stream: bytes in, typed [`Event`]s out. No I/O, no tokio.
//!
//! ```ignore
//! let mut dec = Decoder::new(TypeRegistry::new()).with_protocol(4);
//! dec.decode(wal_start, &xlogdata_payload, &mut |event| sink(event))?;
//! ```
//!
//! Why it is shaped this way:
//!
//! * [`pgoutput`] parses one message without copying; this module keeps the state the protocol
//!   leaves to the client: the relation cache (a Relation message is sent once and then only
//!   referred to by OID), the open transaction, and the transactions whose outcome is not known
//!   yet (streamed, v2+; prepared, v3+), which are buffered as raw bytes ([`txbuf`]) and decoded
//!   only when they commit, so a huge transaction costs ~its wire size, not its event size.
//! * Streamed and prepared transactions carry their own copy of every relation shape they use
//!   (the Relation messages the server sent for them, or a snapshot of the cache taken the first
//!   time they touch a relation). Replaying a transaction therefore never sees another
//!   transaction's later ALTER TABLE.
//! * A decoder holds per-connection state: create a new one (or call [`Decoder::reset`]) for
//!   each START_REPLICATION, since the server re-sends every Relation and every transaction not
//!   yet confirmed.
//!
//! LSNs of synthesised events (streamed and prepared transactions replayed at commit):
//! BEGIN's `lsn` is the WAL start of the transaction's first Stream Start (or Begin Prepare),
//! which is where the server would have put a Begin (the transaction's first LSN); every change
//! keeps the WAL start it arrived with; COMMIT's `lsn` is the WAL start of Stream Commit
//! (or Commit Prepared), `commit_lsn`/`end_lsn`/`ts` come from that message.

pub mod copy_text;
pub mod error;
pub mod pgoutput;
mod txbuf;
pub mod value;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

pub use error::DecodeError;
pub use pgoutput::{Message, ParseContext, parse, parse_in};
pub use value::{TypeKind, TypeRegistry};

use crate::event::{Column, Event, LogicalMessage, Lsn, Op, Row, Timestamp, Value};
pub use crate::event::{ColumnKind, Relation, RelationColumn, ReplicaIdentity};
use pgoutput::{ColumnData, OldKind, RelationMsg, TupleData};
use txbuf::TxBuf;
pub use txbuf::{Spill, SpillStore};

/// Maps keyed by OID or xid: looked up once per message, so SipHash (built for untrusted keys)
/// would be a visible share of the per-event cost. Keys come from the server.
pub(crate) type OidMap<V> = HashMap<u32, V, BuildHasherDefault<OidHasher>>;

/// A multiplicative (Fx-style) hash for u32 keys.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OidHasher(u64);

impl Hasher for OidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(n)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Relation {
    fn from_msg(r: &RelationMsg<'_>, types: &TypeRegistry) -> Relation {
        // "The namespace (empty string for pg_catalog)" (Relation message).
        let namespace = if r.namespace.is_empty() {
            "pg_catalog"
        } else {
            r.namespace
        };
        let columns: Vec<RelationColumn> = r
            .columns()
            .map(|c| RelationColumn {
                name: Arc::from(c.name),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                kind: types.kind_of(c.type_oid),
                // "Flags for the column. Currently can be either 0 for no flags or 1 which
                // marks the column as part of the key."
                is_key: c.flags & 1 != 0,
            })
            .collect();
        Relation {
            oid: r.oid,
            namespace: Arc::from(namespace),
            name: Arc::from(r.name),
            replica_identity: replica_identity(r.replica_identity),
            key_count: columns.iter().filter(|c| c.is_key).count(),
            columns,
        }
    }
}

/// `relreplident` as the Relation message sends it.
fn replica_identity(b: u8) -> ReplicaIdentity {
    match b {
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        // The parser admits only d, n, f, i.
        _ => ReplicaIdentity::Default,
    }
}

/// A type as its Type message named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

/// The transaction context changes are stamped with.
#[derive(Clone, Copy, Debug)]
struct TxCtx {
    xid: u32,
    commit_lsn: Lsn,
    ts: Timestamp,
}

/// A two-phase transaction between Begin Prepare and Prepare.
#[derive(Debug)]
struct Preparing {
    gid: String,
    buf: TxBuf,
}

/// Decodes pgoutput messages into events, keeping the relation cache and buffered transactions.
#[derive(Debug)]
pub struct Decoder {
    types: TypeRegistry,
    proto: u32,
    abort_info: bool,
    relations: OidMap<Arc<Relation>>,
    type_names: OidMap<TypeName>,
    /// A non-streamed transaction between Begin and Commit.
    tx: Option<TxCtx>,
    preparing: Option<Preparing>,
    /// The xid of the open stream block (between Stream Start and Stream Stop).
    stream: Option<u32>,
    streams: OidMap<TxBuf>,
    prepared: HashMap<String, TxBuf>,
    scratch: Vec<u8>,
    /// User types named by Type messages that the registry does not know (created after the
    /// registry was loaded), for the caller to look up.
    unknown_types: Vec<u32>,
    /// Where large buffered transactions go; `None` keeps them in memory.
    spill: Option<Arc<dyn Spill>>,
    /// Columns of user types the registry cannot resolve (dropped before walwatch ever saw
    /// them), each reported once: their values are the server's text.
    unresolved: Vec<UnresolvedColumn>,
    reported: std::collections::HashSet<(u32, Arc<str>)>,
}

/// A column whose type walwatch cannot resolve: its values are written as the server's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnresolvedColumn {
    pub schema: Arc<str>,
    pub table: Arc<str>,
    pub column: Arc<str>,
    pub type_oid: u32,
}

/// The first OID of user-defined objects (FirstNormalObjectId): types below are built in.
const FIRST_NORMAL_OID: u32 = 16384;

/// The highest pgoutput protocol version this decoder understands.
pub const MAX_PROTOCOL: u32 = 4;

impl Decoder {
    /// A decoder for the highest protocol version ([`MAX_PROTOCOL`]), without the
    /// parallel-streaming fields of Stream Abort.
    pub fn new(types: TypeRegistry) -> Decoder {
        Decoder {
            types,
            proto: MAX_PROTOCOL,
            abort_info: false,
            relations: OidMap::default(),
            type_names: OidMap::default(),
            tx: None,
            preparing: None,
            stream: None,
            streams: OidMap::default(),
            prepared: HashMap::new(),
            scratch: Vec::new(),
            unknown_types: Vec::new(),
            spill: None,
            unresolved: Vec::new(),
            reported: std::collections::HashSet::new(),
        }
    }

    /// The `proto_version` given to START_REPLICATION (clamped to 1..=4). Streaming messages
    /// are refused below v2 and two-phase messages below v3.
    pub fn with_protocol(mut self, version: u32) -> Decoder {
        self.proto = version.clamp(1, MAX_PROTOCOL);
        self
    }

    /// Whether START_REPLICATION asked for `streaming 'parallel'` (v4+): only then does Stream
    /// Abort carry the abort LSN and timestamp ("present only when streaming is set to
    /// parallel", Stream Abort message). Ignored below v4.
    pub fn with_parallel_streaming(mut self, parallel: bool) -> Decoder {
        self.abort_info = parallel;
        self
    }

    pub fn protocol(&self) -> u32 {
        self.proto
    }

    pub fn types(&self) -> &TypeRegistry {
        &self.types
    }

    pub fn types_mut(&mut self) -> &mut TypeRegistry {
        &mut self.types
    }

    /// User types that Type messages named and the registry does not know, since the last call.
    /// pgoutput sends a Type message before the first use of a non-built-in type in each
    /// transaction (docs, 55.9 "Logical Replication Message Formats"), so a caller that looks
    /// them up and updates [`types_mut`](Self::types_mut) before the next message decodes
    /// values of types created after start-up as their base types.
    pub fn take_unknown_types(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.unknown_types)
    }

    /// Columns of types the registry could not resolve when their Relation message arrived
    /// (after the caller's look-up of new types), since the last call; each once.
    pub fn take_unresolved(&mut self) -> Vec<UnresolvedColumn> {
        std::mem::take(&mut self.unresolved)
    }

    fn check_resolved(&mut self, rel: &Relation) {
        for c in &rel.columns {
            if c.type_oid >= FIRST_NORMAL_OID
                && self.types.get(c.type_oid).is_none()
                && self.reported.insert((rel.oid, c.name.clone()))
            {
                self.unresolved.push(UnresolvedColumn {
                    schema: rel.namespace.clone(),
                    table: rel.name.clone(),
                    column: c.name.clone(),
                    type_oid: c.type_oid,
                });
            }
        }
    }

    fn note_type(&mut self, oid: u32) {
        if oid >= FIRST_NORMAL_OID
            && self.types.get(oid).is_none()
            && !self.unknown_types.contains(&oid)
        {
            self.unknown_types.push(oid);
        }
    }

    /// The cached relation with this OID.
    pub fn relation(&self, oid: u32) -> Option<&Relation> {
        self.relations.get(&oid).map(|r| &**r)
    }

    /// The type named by the last Type message for this OID.
    pub fn type_name(&self, oid: u32) -> Option<&TypeName> {
        self.type_names.get(&oid)
    }

    /// Between a non-streamed Begin and its Commit, or a Begin Prepare and its Prepare.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some() || self.preparing.is_some()
    }

    /// Streamed transactions not yet committed or aborted, plus prepared transactions not yet
    /// committed or rolled back.
    pub fn open_streams(&self) -> usize {
        self.streams.len() + self.prepared.len()
    }

    /// Memory held by buffered (streamed, preparing and prepared) transactions.
    pub fn buffered_bytes(&self) -> usize {
        self.streams.values().map(TxBuf::bytes).sum::<usize>()
            + self.prepared.values().map(TxBuf::bytes).sum::<usize>()
            + self.preparing.as_ref().map_or(0, |p| p.buf.bytes())
    }

    /// The WAL start of the oldest buffered transaction (streamed, preparing or prepared), if
    /// any. A prepared transaction is only re-sent after a restart if the slot's confirmed
    /// position is before its Prepare, so the pipeline must not confirm past this LSN while
    /// prepared transactions are buffered (see [`DecodeError::UnknownPrepared`]).
    pub fn oldest_buffered_lsn(&self) -> Option<Lsn> {
        self.streams
            .values()
            .chain(self.prepared.values())
            .chain(self.preparing.as_ref().map(|p| &p.buf))
            .map(|b| b.first_lsn)
            .min()
    }

    /// Forgets all per-connection state (open and buffered transactions, relation and type
    /// caches), keeping the type registry and the protocol settings.
    pub fn reset(&mut self) {
        let types = std::mem::take(&mut self.types);
        let spill = self.spill.take();
        *self = Decoder::new(types)
            .with_protocol(self.proto)
            .with_parallel_streaming(self.abort_info);
        self.spill = spill;
    }

    /// Decodes one pgoutput message (the payload of one XLogData 'w' frame) whose WAL start is
    /// `lsn`, emitting zero or more events in stream order.
    pub fn decode<F: FnMut(Event)>(
        &mut self,
        lsn: Lsn,
        msg: &[u8],
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        self.decode_one(lsn, msg, emit)?;
        if self.spill.is_some() {
            self.spill_if_over()?;
        }
        Ok(())
    }

    /// With a spill policy: once buffered transactions hold more than its threshold, moves
    /// their full chunks to spill stores, so memory stays near the threshold.
    fn spill_if_over(&mut self) -> Result<(), DecodeError> {
        let Some(spill) = &self.spill else {
            return Ok(());
        };
        if self.buffered_bytes() <= spill.threshold() {
            return Ok(());
        }
        let bufs = self
            .streams
            .values_mut()
            .chain(self.prepared.values_mut())
            .chain(self.preparing.as_mut().map(|p| &mut p.buf));
        for buf in bufs {
            let first = buf.spilled_bytes() == 0;
            let freed = buf.spill(spill)?;
            if first && freed > 0 {
                tracing::info!(
                    "transaction {} holds over {} MB in memory: spilling it to a temporary file",
                    buf.xid,
                    spill.threshold() >> 20
                );
            }
        }
        Ok(())
    }

    /// Bytes of buffered transactions written to spill stores so far (still held there).
    pub fn spilled_bytes(&self) -> u64 {
        self.streams
            .values()
            .chain(self.prepared.values())
            .map(TxBuf::spilled_bytes)
            .sum()
    }

    /// Spill buffered transactions above the policy's threshold (see [`Spill`]). Without a
    /// policy everything stays in memory.
    pub fn with_spill(mut self, spill: impl Spill + 'static) -> Decoder {
        self.spill = Some(Arc::new(spill));
        self
    }

    /// Decides which part of the decoder a message belongs to: the open stream block takes
    /// everything between Stream Start and Stream Stop; otherwise each message family goes to
    /// its handler below.
    fn decode_one<F: FnMut(Event)>(
        &mut self,
        lsn: Lsn,
        msg: &[u8],
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        let ctx = ParseContext {
            in_stream: self.stream.is_some(),
            abort_info: self.abort_info && self.proto >= 4,
        };
        let m = parse_in(msg, ctx)?;
        self.check_version(&m)?;
        if let Some(sxid) = self.stream {
            return self.in_stream_block(sxid, lsn, msg, m, emit);
        }
        match m {
            // Transaction boundaries.
            Message::Begin(b) => self.begin(lsn, &b, emit),
            Message::Commit(c) => self.commit(lsn, &c, emit),
            // Origin: which upstream a replicated transaction came from; not part of the event.
            Message::Origin(_) => Ok(()),
            // Schema.
            Message::Relation(r) => self.relation_msg(lsn, msg, &r),
            Message::Type(t) => self.type_msg(lsn, msg, &t),
            // Row changes and logical messages.
            Message::Message(lm) if !lm.transactional => {
                emit(logical_message(lsn, &lm, None));
                Ok(())
            }
            Message::Insert(_)
            | Message::Update(_)
            | Message::Delete(_)
            | Message::Truncate(_)
            | Message::Message(_) => self.tx_content(lsn, msg, &m, emit),
            // Streamed transactions (v2+); the messages inside a block go to `in_stream_block`.
            Message::StreamStart(s) => self.stream_start(lsn, &s),
            Message::StreamStop => Err(unexpected("Stream Stop", "outside a stream block")),
            Message::StreamCommit(c) => self.stream_commit(lsn, &c, emit),
            Message::StreamAbort(a) => self.stream_abort(&a),
            // Two-phase transactions (v3+).
            Message::BeginPrepare(b) => self.begin_prepare(lsn, &b),
            Message::Prepare(p) => self.prepare(&p),
            Message::StreamPrepare(p) => self.stream_prepare(&p),
            Message::CommitPrepared(c) => self.commit_prepared(lsn, &c, emit),
            Message::RollbackPrepared(r) => {
                // The server may roll back a transaction whose prepare it never sent (prepared
                // before the slot's two_phase_at): nothing to drop then.
                self.prepared.remove(r.gid);
                Ok(())
            }
        }
    }

    // Transaction boundaries (outside a stream block).

    /// Begin: opens a non-streamed transaction, unless one (or a Begin Prepare) is open.
    #[inline]
    fn begin<F: FnMut(Event)>(
        &mut self,
        lsn: Lsn,
        b: &pgoutput::Begin,
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        if self.in_transaction() {
            return Err(unexpected("Begin", "inside another transaction"));
        }
        let tx = TxCtx {
            xid: b.xid,
            commit_lsn: b.final_lsn,
            ts: b.commit_ts,
        };
        self.tx = Some(tx);
        emit(boundary(Op::Begin, lsn, tx, None));
        Ok(())
    }

    /// Commit: closes the open non-streamed transaction, stamped with the commit's LSNs and
    /// timestamp.
    #[inline]
    fn commit<F: FnMut(Event)>(
        &mut self,
        lsn: Lsn,
        c: &pgoutput::Commit,
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        let tx = self
            .tx
            .take()
            .ok_or_else(|| unexpected("Commit", "outside a transaction"))?;
        let tx = TxCtx {
            commit_lsn: c.commit_lsn,
            ts: c.commit_ts,
            ..tx
        };
        emit(boundary(Op::Commit, lsn, tx, Some(c.end_lsn)));
        Ok(())
    }

    // Schema messages (outside a stream block).

    /// Relation: replaces the cached shape; inside a Begin Prepare it is also buffered, and
    /// counts as the transaction's own description of the relation.
    fn relation_msg(
        &mut self,
        lsn: Lsn,
        msg: &[u8],
        r: &RelationMsg<'_>,
    ) -> Result<(), DecodeError> {
        let rel = Arc::new(Relation::from_msg(r, &self.types));
        self.check_resolved(&rel);
        self.relations.insert(r.oid, rel);
        if let Some(p) = &mut self.preparing {
            p.buf.pinned.insert(r.oid);
            push(&mut p.buf, lsn, msg)?;
        }
        Ok(())
    }

    /// Type: remembers the type's name (and whether the registry lacks it); inside a Begin
    /// Prepare it is also buffered.
    fn type_msg(
        &mut self,
        lsn: Lsn,
        msg: &[u8],
        t: &pgoutput::TypeMsg<'_>,
    ) -> Result<(), DecodeError> {
        self.note_type(t.oid);
        self.remember_type(t);
        if let Some(p) = &mut self.preparing {
            push(&mut p.buf, lsn, msg)?;
        }
        Ok(())
    }

    // Row changes and transactional messages (outside a stream block): the hot path.

    /// A change or transactional message: buffered inside a Begin Prepare, emitted inside a
    /// transaction, refused outside both.
    #[inline]
    fn tx_content<F: FnMut(Event)>(
        &mut self,
        lsn: Lsn,
        msg: &[u8],
        m: &Message<'_>,
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        if let Some(p) = &mut self.preparing {
            pin_and_push(&self.relations, &mut self.scratch, &mut p.buf, lsn, msg, m)
        } else if let Some(tx) = self.tx {
            self.change(m, lsn, tx, None, emit)
        } else {
            Err(unexpected(m.name(), "outside a transaction"))
        }
    }

    // Streamed transactions (v2+), outside a stream block.

    /// Stream Start: opens a stream block, starting a buffer for the transaction's first
    /// segment and refusing a later segment of a transaction never started.
    fn stream_start(&mut self, lsn: Lsn, s: &pgoutput::StreamStart) -> Result<(), DecodeError> {
        if self.in_transaction() {
            return Err(unexpected("Stream Start", "inside a transaction"));
        }
        if s.first_segment {
            if self.streams.contains_key(&s.xid) {
                return Err(unexpected(
                    "Stream Start",
                    "marked first segment for a transaction already streaming",
                ));
            }
            self.streams.insert(s.xid, TxBuf::new(s.xid, lsn, true));
        } else if !self.streams.contains_key(&s.xid) {
            return Err(DecodeError::UnknownStream {
                msg: "Stream Start",
                xid: s.xid,
            });
        }
        self.stream = Some(s.xid);
        Ok(())
    }

    /// Stream Commit: replays the streamed transaction and adopts the relation descriptions it
    /// carried into the cache.
    fn stream_commit<F: FnMut(Event)>(
        &mut self,
        lsn: Lsn,
        c: &pgoutput::StreamCommit,
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        if self.in_transaction() {
            return Err(unexpected("Stream Commit", "inside a transaction"));
        }
        let mut buf = self
            .streams
            .remove(&c.xid)
            .ok_or(DecodeError::UnknownStream {
                msg: "Stream Commit",
                xid: c.xid,
            })?;
        let tx = TxCtx {
            xid: c.xid,
            commit_lsn: c.commit_lsn,
            ts: c.commit_ts,
        };
        self.replay(&mut buf, tx, lsn, c.end_lsn, emit)?;
        // pgoutput marks every relation it described inside a streamed transaction
        // as sent when that transaction commits, and never describes it again until
        // it changes (pgoutput.c, cleanup_rel_sync_cache(xid, is_commit = true) in
        // pgoutput_stream_commit). So the committed descriptions become the cache's,
        // or the next change to such a table would refer to a relation we forgot.
        // Not on abort (the server forgets them too) and not on Stream Prepare
        // (pgoutput_stream_prepare_txn cleans nothing up: the server describes the
        // relation again before the next change that needs it).
        self.relations.extend(buf.described.drain());
        Ok(())
    }

    /// Stream Abort: drops the whole streamed transaction, or only a subtransaction's changes.
    fn stream_abort(&mut self, a: &pgoutput::StreamAbort) -> Result<(), DecodeError> {
        // An abort for a transaction never streamed to us drops nothing: ignore it.
        if a.subxid == a.xid {
            self.streams.remove(&a.xid);
        } else if let Some(buf) = self.streams.get_mut(&a.xid) {
            // Drop the subtransaction's changes; keep schema records (Relation, Type):
            // the server will not re-send a relation it already sent in this txn.
            buf.retain(|rec| {
                !(matches!(rec.first(), Some(b'I' | b'U' | b'D' | b'T' | b'M'))
                    && record_xid(rec) == Some(a.subxid))
            })?;
        }
        Ok(())
    }

    // Two-phase transactions (v3+).

    /// Begin Prepare: starts buffering a two-phase transaction, unless a transaction is open.
    fn begin_prepare(
        &mut self,
        lsn: Lsn,
        b: &pgoutput::BeginPrepare<'_>,
    ) -> Result<(), DecodeError> {
        if self.in_transaction() {
            return Err(unexpected("Begin Prepare", "inside another transaction"));
        }
        self.preparing = Some(Preparing {
            gid: b.gid.to_string(),
            buf: TxBuf::new(b.xid, lsn, false),
        });
        Ok(())
    }

    /// Prepare: the buffered transaction, if its gid matches its Begin Prepare's, waits as
    /// prepared for its Commit Prepared or Rollback Prepared.
    fn prepare(&mut self, p: &pgoutput::Prepare<'_>) -> Result<(), DecodeError> {
        let pr = self
            .preparing
            .take()
            .ok_or_else(|| unexpected("Prepare", "without Begin Prepare"))?;
        if pr.gid != p.gid {
            return Err(unexpected(
                "Prepare",
                "with a gid different from its Begin Prepare",
            ));
        }
        self.prepared.insert(pr.gid, pr.buf);
        Ok(())
    }

    /// Stream Prepare: a streamed transaction becomes a prepared one.
    fn stream_prepare(&mut self, p: &pgoutput::Prepare<'_>) -> Result<(), DecodeError> {
        let buf = self
            .streams
            .remove(&p.xid)
            .ok_or(DecodeError::UnknownStream {
                msg: "Stream Prepare",
                xid: p.xid,
            })?;
        self.prepared.insert(p.gid.to_string(), buf);
        Ok(())
    }

    /// Commit Prepared: replays the prepared transaction with this gid.
    fn commit_prepared<F: FnMut(Event)>(
        &mut self,
        lsn: Lsn,
        c: &pgoutput::CommitPrepared<'_>,
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        let mut buf = self
            .prepared
            .remove(c.gid)
            .ok_or_else(|| DecodeError::UnknownPrepared {
                gid: c.gid.to_string(),
                xid: c.xid,
            })?;
        let tx = TxCtx {
            xid: c.xid,
            commit_lsn: c.commit_lsn,
            ts: c.commit_ts,
        };
        self.replay(&mut buf, tx, lsn, c.end_lsn, emit)
    }

    /// Refuses messages the negotiated protocol version cannot carry.
    fn check_version(&self, m: &Message<'_>) -> Result<(), DecodeError> {
        let needs = match m {
            Message::StreamStart(_)
            | Message::StreamStop
            | Message::StreamCommit(_)
            | Message::StreamAbort(_) => 2,
            Message::BeginPrepare(_)
            | Message::Prepare(_)
            | Message::CommitPrepared(_)
            | Message::RollbackPrepared(_)
            | Message::StreamPrepare(_) => 3,
            _ => 1,
        };
        if self.proto < needs {
            return Err(DecodeError::Unexpected {
                msg: m.name(),
                state: if needs == 2 {
                    "but protocol v1 has no streaming (the decoder was built for v1; match proto_version)"
                } else {
                    "but two-phase messages need protocol v3 (match the decoder to proto_version)"
                },
            });
        }
        Ok(())
    }

    /// A message between Stream Start and Stream Stop.
    fn in_stream_block<F: FnMut(Event)>(
        &mut self,
        sxid: u32,
        lsn: Lsn,
        msg: &[u8],
        m: Message<'_>,
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        if let Message::Type(t) = &m {
            self.note_type(t.oid);
        }
        match m {
            Message::StreamStop => {
                self.stream = None;
                Ok(())
            }
            // pgoutput sends the origin right after Stream Start.
            Message::Origin(_) => Ok(()),
            Message::Message(lm) if !lm.transactional => {
                // It carries the stream's xid itself (leading Int32 inside a stream block).
                emit(logical_message(lsn, &lm, None));
                Ok(())
            }
            Message::Relation(r) => {
                let rel = Arc::new(Relation::from_msg(&r, &self.types));
                self.check_resolved(&rel);
                let buf = self
                    .streams
                    .get_mut(&sxid)
                    .ok_or(DecodeError::UnknownStream {
                        msg: "Relation",
                        xid: sxid,
                    })?;
                buf.described.insert(r.oid, rel);
                pin_and_push(&self.relations, &mut self.scratch, buf, lsn, msg, &m)
            }
            Message::Type(_)
            | Message::Insert(_)
            | Message::Update(_)
            | Message::Delete(_)
            | Message::Truncate(_)
            | Message::Message(_) => {
                let buf = self
                    .streams
                    .get_mut(&sxid)
                    .ok_or(DecodeError::UnknownStream {
                        msg: m.name(),
                        xid: sxid,
                    })?;
                pin_and_push(&self.relations, &mut self.scratch, buf, lsn, msg, &m)
            }
            other => Err(unexpected(other.name(), "inside a stream block")),
        }
    }

    fn remember_type(&mut self, t: &pgoutput::TypeMsg<'_>) {
        let namespace = if t.namespace.is_empty() {
            "pg_catalog"
        } else {
            t.namespace
        };
        self.type_names.insert(
            t.oid,
            TypeName {
                namespace: Arc::from(namespace),
                name: Arc::from(t.name),
            },
        );
    }

    /// Emits BEGIN, the buffered changes decoded one by one, and COMMIT.
    fn replay<F: FnMut(Event)>(
        &mut self,
        buf: &mut TxBuf,
        tx: TxCtx,
        lsn: Lsn,
        end_lsn: Lsn,
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        emit(boundary(Op::Begin, buf.first_lsn, tx, None));
        // This transaction's own relation shapes: every relation it touches was pinned by a
        // Relation record before its first change (see `pin_and_push`).
        let mut overlay: OidMap<Arc<Relation>> = OidMap::default();
        let ctx = ParseContext {
            in_stream: buf.streamed,
            abort_info: false,
        };
        buf.for_each(|rlsn, rec| {
            match parse_in(rec, ctx)? {
                Message::Relation(r) => {
                    overlay.insert(r.oid, Arc::new(Relation::from_msg(&r, &self.types)));
                }
                Message::Type(t) => self.remember_type(&t),
                m => self.change(&m, rlsn, tx, Some(&overlay), emit)?,
            }
            Ok(())
        })?;
        emit(boundary(Op::Commit, lsn, tx, Some(end_lsn)));
        Ok(())
    }

    fn lookup<'s>(
        &'s self,
        overlay: Option<&'s OidMap<Arc<Relation>>>,
        oid: u32,
        msg: &'static str,
    ) -> Result<&'s Arc<Relation>, DecodeError> {
        let found = match overlay {
            Some(o) => o.get(&oid),
            None => self.relations.get(&oid),
        };
        found.ok_or(DecodeError::UnknownRelation { msg, oid })
    }

    /// Turns one change (or transactional message) into events stamped with `tx`.
    fn change<F: FnMut(Event)>(
        &self,
        m: &Message<'_>,
        lsn: Lsn,
        tx: TxCtx,
        overlay: Option<&OidMap<Arc<Relation>>>,
        emit: &mut F,
    ) -> Result<(), DecodeError> {
        match m {
            Message::Insert(ins) => {
                let rel = self.lookup(overlay, ins.oid, "Insert")?;
                let mut ev = change_event(Op::Insert, lsn, tx, rel);
                self.full_row(rel, "Insert", &ins.new, &mut ev)?;
                emit(ev);
            }
            Message::Update(up) => {
                let rel = self.lookup(overlay, up.oid, "Update")?;
                let mut ev = change_event(Op::Update, lsn, tx, rel);
                let mut ignore = Vec::new();
                let old = match &up.old {
                    Some((OldKind::Key, t)) => {
                        Some(self.row(rel, "Update", t, true, None, &mut ignore)?)
                    }
                    Some((OldKind::Full, t)) => {
                        Some(self.row(rel, "Update", t, false, None, &mut ignore)?)
                    }
                    None => None,
                };
                let mut key = key_vec(rel);
                let data = self.row(
                    rel,
                    "Update",
                    &up.new,
                    false,
                    key.as_mut(),
                    &mut ev.unchanged,
                )?;
                if let (Some(k), Some(old)) = (&mut key, &old)
                    && k.len() < rel.key_count
                {
                    // A key column was an unchanged TOAST value in the new row: take it
                    // from the old tuple, keeping table order.
                    *k = fill_key(rel, k, old);
                }
                ev.data = Some(data);
                ev.old = old;
                ev.key = key.map(|columns| Row { columns });
                emit(ev);
            }
            Message::Delete(del) => {
                let rel = self.lookup(overlay, del.oid, "Delete")?;
                let mut ev = change_event(Op::Delete, lsn, tx, rel);
                match del.kind {
                    OldKind::Key => {
                        // 'K': non-key columns are sent as null; leave them out.
                        let data =
                            self.row(rel, "Delete", &del.old, true, None, &mut ev.unchanged)?;
                        if rel.has_key() {
                            ev.key = Some(data.clone());
                        }
                        ev.data = Some(data);
                    }
                    OldKind::Full => self.full_row(rel, "Delete", &del.old, &mut ev)?,
                }
                emit(ev);
            }
            Message::Truncate(tr) => {
                for oid in tr.relation_ids() {
                    let rel = self.lookup(overlay, oid, "Truncate")?;
                    emit(change_event(Op::Truncate, lsn, tx, rel));
                }
            }
            Message::Message(lm) => emit(logical_message(lsn, lm, Some(tx))),
            // Callers pass only changes; anything else here is a decoder bug, not bad input.
            other => return Err(unexpected(other.name(), "where a change was expected")),
        }
        Ok(())
    }

    /// Decodes a tuple into a row of `rel`. `keys_only` keeps only key columns; `key` collects
    /// copies of the key columns; unchanged TOAST columns are left out and named in `unchanged`.
    /// A whole row into `ev.data`, and its key columns (collected in the same pass) into
    /// `ev.key`.
    fn full_row(
        &self,
        rel: &Relation,
        msg: &'static str,
        t: &TupleData<'_>,
        ev: &mut Event,
    ) -> Result<(), DecodeError> {
        let mut key = key_vec(rel);
        ev.data = Some(self.row(rel, msg, t, false, key.as_mut(), &mut ev.unchanged)?);
        ev.key = key.map(|columns| Row { columns });
        Ok(())
    }

    fn row(
        &self,
        rel: &Relation,
        msg: &'static str,
        t: &TupleData<'_>,
        keys_only: bool,
        mut key: Option<&mut Vec<Column>>,
        unchanged: &mut Vec<Arc<str>>,
    ) -> Result<Row, DecodeError> {
        if usize::from(t.ncols) != rel.columns.len() {
            return Err(DecodeError::ColumnCount {
                msg,
                schema: rel.namespace.to_string(),
                table: rel.name.to_string(),
                expected: rel.columns.len(),
                got: usize::from(t.ncols),
            });
        }
        let cap = if keys_only {
            rel.key_count
        } else {
            rel.columns.len()
        };
        let mut columns = Vec::with_capacity(cap);
        for (col, data) in rel.columns.iter().zip(t.iter()) {
            if keys_only && !col.is_key {
                continue;
            }
            let value = match data {
                ColumnData::Null => Value::Null,
                ColumnData::UnchangedToast => {
                    unchanged.push(col.name.clone());
                    continue;
                }
                ColumnData::Text(bytes) => {
                    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::ColumnUtf8 {
                        schema: rel.namespace.to_string(),
                        table: rel.name.to_string(),
                        column: col.name.to_string(),
                    })?;
                    self.types.parse_text(col.type_oid, text)
                }
                ColumnData::Binary(bytes) => self.types.parse_binary(col.type_oid, bytes),
            };
            if col.is_key
                && let Some(k) = key.as_deref_mut()
            {
                k.push(Column {
                    name: col.name.clone(),
                    value: value.clone(),
                });
            }
            columns.push(Column {
                name: col.name.clone(),
                value,
            });
        }
        Ok(Row { columns })
    }
}

/// Appends a content message to a buffered transaction, first pinning the shape of every
/// relation it touches that the transaction has not described yet.
fn pin_and_push(
    relations: &OidMap<Arc<Relation>>,
    scratch: &mut Vec<u8>,
    buf: &mut TxBuf,
    lsn: Lsn,
    msg: &[u8],
    m: &Message<'_>,
) -> Result<(), DecodeError> {
    let mut pin = |oid: u32, name: &'static str| -> Result<(), DecodeError> {
        if buf.pinned.contains(&oid) {
            return Ok(());
        }
        let rel = relations
            .get(&oid)
            .ok_or(DecodeError::UnknownRelation { msg: name, oid })?;
        scratch.clear();
        pgoutput::write_relation(rel, buf.streamed.then_some(buf.xid), scratch);
        push(buf, lsn, scratch)?;
        buf.pinned.insert(oid);
        Ok(())
    };
    match m {
        Message::Relation(r) => {
            buf.pinned.insert(r.oid);
        }
        Message::Insert(x) => pin(x.oid, "Insert")?,
        Message::Update(x) => pin(x.oid, "Update")?,
        Message::Delete(x) => pin(x.oid, "Delete")?,
        Message::Truncate(t) => {
            for oid in t.relation_ids() {
                pin(oid, "Truncate")?;
            }
        }
        _ => {}
    }
    push(buf, lsn, msg)
}

fn push(buf: &mut TxBuf, lsn: Lsn, msg: &[u8]) -> Result<(), DecodeError> {
    if buf.push(lsn, msg) {
        Ok(())
    } else {
        Err(DecodeError::BadValue {
            msg: "buffered",
            field: "message length",
            value: i64::try_from(msg.len()).unwrap_or(i64::MAX),
        })
    }
}

/// The leading xid of a buffered in-stream record (tag, then Int32 xid).
fn record_xid(rec: &[u8]) -> Option<u32> {
    let b = rec.get(1..5)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn unexpected(msg: &'static str, state: &'static str) -> DecodeError {
    DecodeError::Unexpected { msg, state }
}

fn boundary(op: Op, lsn: Lsn, tx: TxCtx, end_lsn: Option<Lsn>) -> Event {
    let mut ev = Event::new(op, lsn);
    ev.commit_lsn = tx.commit_lsn;
    ev.end_lsn = end_lsn;
    ev.xid = Some(tx.xid);
    ev.ts = Some(tx.ts);
    ev
}

fn change_event(op: Op, lsn: Lsn, tx: TxCtx, rel: &Arc<Relation>) -> Event {
    let mut ev = boundary(op, lsn, tx, None);
    ev.schema = Some(rel.namespace.clone());
    ev.table = Some(rel.name.clone());
    ev.relation = Some(rel.clone());
    ev
}

/// A MESSAGE event: inside a transaction it is stamped like a change; a non-transactional one
/// has `commit_lsn = lsn`, no ts, and the stream's xid if it arrived inside a stream block.
fn logical_message(lsn: Lsn, lm: &pgoutput::LogicalMsg<'_>, tx: Option<TxCtx>) -> Event {
    let mut ev = match tx {
        Some(tx) => boundary(Op::Message, lsn, tx, None),
        None => {
            let mut ev = Event::new(Op::Message, lsn);
            ev.commit_lsn = lsn;
            ev.xid = lm.xid;
            ev
        }
    };
    ev.message = Some(LogicalMessage {
        transactional: lm.transactional,
        prefix: lm.prefix.to_string(),
        content: lm.content.to_vec(),
    });
    ev
}

fn key_vec(rel: &Relation) -> Option<Vec<Column>> {
    rel.has_key().then(|| Vec::with_capacity(rel.key_count))
}

/// The key columns in table order, from `have` where present, else from `old`.
fn fill_key(rel: &Relation, have: &[Column], old: &Row) -> Vec<Column> {
    rel.columns
        .iter()
        .filter(|c| c.is_key)
        .filter_map(|c| {
            have.iter()
                .chain(old.columns.iter())
                .find(|k| Arc::ptr_eq(&k.name, &c.name))
                .cloned()
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
