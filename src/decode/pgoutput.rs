//! Zero-copy parser for every `pgoutput` message of logical replication protocol v1..v4.
//!
//! Byte layouts follow the PostgreSQL docs, "Logical Replication Message Formats"
//! (protocol-logicalrep-message-formats; chapter 55.9 in PG 15/16). All integers are big-endian;
//! `String` is a NUL-terminated C string. Parsing borrows from the message: names, prefixes and
//! column values are slices of the input, and tuple data is validated once here and walked again
//! lazily by the decoder, so a row costs no allocation until it becomes an [`crate::Event`].
//!
//! Parsing is strict: a message must be consumed exactly (trailing bytes are an error, because
//! they mean the decoder and server disagree about the protocol version or options).

use super::error::DecodeError;
use crate::event::{Lsn, Timestamp};

/// What the parser must know that the message does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseContext {
    /// Between Stream Start and Stream Stop: Relation, Type, Insert, Update, Delete, Truncate
    /// and Message carry a leading Int32 xid ("only present for streamed transactions", v2+).
    pub in_stream: bool,
    /// Stream Abort carries abort LSN and timestamp (v4, only with `streaming = parallel`).
    pub abort_info: bool,
}

/// One pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin<'a>),
    Relation(RelationMsg<'a>),
    Type(TypeMsg<'a>),
    Insert(Insert<'a>),
    Update(Update<'a>),
    Delete(Delete<'a>),
    Truncate(Truncate<'a>),
    Message(LogicalMsg<'a>),
    StreamStart(StreamStart),
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
    BeginPrepare(BeginPrepare<'a>),
    Prepare(Prepare<'a>),
    CommitPrepared(CommitPrepared<'a>),
    RollbackPrepared(RollbackPrepared<'a>),
    StreamPrepare(Prepare<'a>),
}

/// 'B': Int64 final LSN, Int64 commit timestamp, Int32 xid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Begin {
    pub final_lsn: Lsn,
    pub commit_ts: Timestamp,
    pub xid: u32,
}

/// 'C': Int8 flags (unused), Int64 commit LSN, Int64 end LSN, Int64 commit timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_ts: Timestamp,
}

/// 'O': Int64 commit LSN on the origin server, String origin name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    pub lsn: Lsn,
    pub name: &'a str,
}

/// 'R': [Int32 xid], Int32 OID, String namespace ("" = pg_catalog), String name, Int8 replica
/// identity, Int16 column count, then per column Int8 flags (1 = part of the key), String name,
/// Int32 type OID, Int32 type modifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelationMsg<'a> {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: &'a str,
    pub name: &'a str,
    pub replica_identity: u8,
    pub ncols: u16,
    /// The validated column definitions, walked by [`RelationMsg::columns`].
    cols: &'a [u8],
}

/// One column definition of a Relation message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelColumnDef<'a> {
    pub flags: u8,
    pub name: &'a str,
    pub type_oid: u32,
    pub type_modifier: i32,
}

impl<'a> RelationMsg<'a> {
    /// The column definitions, in table order.
    pub fn columns(&self) -> impl Iterator<Item = RelColumnDef<'a>> + 'a {
        let mut r = Reader::new(self.cols, "Relation");
        let mut left = self.ncols;
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            // Validated by `parse`: cannot fail, but stop rather than panic if it did.
            read_rel_column(&mut r).ok()
        })
    }
}

fn read_rel_column<'a>(r: &mut Reader<'a>) -> Result<RelColumnDef<'a>, DecodeError> {
    Ok(RelColumnDef {
        flags: r.u8("column flags")?,
        name: r.cstr("column name")?,
        type_oid: r.u32("column type OID")?,
        type_modifier: r.i32("column type modifier")?,
    })
}

/// 'Y': [Int32 xid], Int32 type OID, String namespace ("" = pg_catalog), String name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeMsg<'a> {
    pub xid: Option<u32>,
    pub oid: u32,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// 'I': [Int32 xid], Int32 relation OID, Byte1 'N', TupleData.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insert<'a> {
    pub xid: Option<u32>,
    pub oid: u32,
    pub new: TupleData<'a>,
}

/// Which old tuple an Update or Delete carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldKind {
    /// 'K': the replica identity key; non-key columns are sent as null.
    Key,
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// 'U': [Int32 xid], Int32 relation OID, optional ('K' | 'O') TupleData, Byte1 'N', TupleData.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update<'a> {
    pub xid: Option<u32>,
    pub oid: u32,
    pub old: Option<(OldKind, TupleData<'a>)>,
    pub new: TupleData<'a>,
}

/// 'D': [Int32 xid], Int32 relation OID, ('K' | 'O') TupleData.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delete<'a> {
    pub xid: Option<u32>,
    pub oid: u32,
    pub kind: OldKind,
    pub old: TupleData<'a>,
}

/// 'T': [Int32 xid], Int32 relation count, Int8 options (1 = CASCADE, 2 = RESTART IDENTITY),
/// Int32 OID per relation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncate<'a> {
    pub xid: Option<u32>,
    pub options: u8,
    oids: &'a [u8],
}

impl<'a> Truncate<'a> {
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }

    /// The truncated relations' OIDs.
    pub fn relation_ids(&self) -> impl Iterator<Item = u32> + 'a {
        self.oids
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// 'M': [Int32 xid], Int8 flags (1 = transactional), Int64 LSN, String prefix, Int32 length,
/// Byte(n) content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogicalMsg<'a> {
    pub xid: Option<u32>,
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: &'a str,
    pub content: &'a [u8],
}

/// 'S': Int32 xid, Int8 1 if this is the transaction's first segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamStart {
    pub xid: u32,
    pub first_segment: bool,
}

/// 'c': Int32 xid, Int8 flags (unused), Int64 commit LSN, Int64 end LSN, Int64 commit timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_ts: Timestamp,
}

/// 'A': Int32 xid, Int32 subtransaction xid (== xid for the whole transaction), and, in v4 with
/// `streaming = parallel`, Int64 abort LSN and Int64 abort timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamAbort {
    pub xid: u32,
    pub subxid: u32,
    pub abort_lsn: Option<Lsn>,
    pub abort_ts: Option<Timestamp>,
}

/// 'b': Int64 prepare LSN, Int64 end LSN, Int64 prepare timestamp, Int32 xid, String gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeginPrepare<'a> {
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_ts: Timestamp,
    pub xid: u32,
    pub gid: &'a str,
}

/// 'P' (Prepare) and 'p' (Stream Prepare): Int8 flags, Int64 prepare LSN, Int64 end LSN,
/// Int64 prepare timestamp, Int32 xid, String gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepare<'a> {
    pub flags: u8,
    pub prepare_lsn: Lsn,
    pub end_lsn: Lsn,
    pub prepare_ts: Timestamp,
    pub xid: u32,
    pub gid: &'a str,
}

/// 'K': Int8 flags, Int64 commit LSN, Int64 end LSN, Int64 commit timestamp, Int32 xid,
/// String gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitPrepared<'a> {
    pub flags: u8,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_ts: Timestamp,
    pub xid: u32,
    pub gid: &'a str,
}

/// 'r': Int8 flags, Int64 end LSN of the prepared transaction, Int64 end LSN of the rollback,
/// Int64 prepare timestamp, Int64 rollback timestamp, Int32 xid, String gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollbackPrepared<'a> {
    pub flags: u8,
    pub prepare_end_lsn: Lsn,
    pub rollback_end_lsn: Lsn,
    pub prepare_ts: Timestamp,
    pub rollback_ts: Timestamp,
    pub xid: u32,
    pub gid: &'a str,
}

/// TupleData: Int16 column count, then per column Byte1 kind: 'n' null, 'u' unchanged TOAST
/// (value not sent), 't' text or 'b' binary, each of the latter followed by Int32 length and
/// the bytes. Validated by `parse`; walk it with [`TupleData::iter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TupleData<'a> {
    pub ncols: u16,
    bytes: &'a [u8],
}

/// One column of a TupleData.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnData<'a> {
    Null,
    UnchangedToast,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

impl<'a> TupleData<'a> {
    /// The columns, in table order.
    pub fn iter(&self) -> TupleIter<'a> {
        TupleIter {
            r: Reader::new(self.bytes, "tuple"),
            left: self.ncols,
        }
    }

    /// Reads and validates a TupleData starting at the reader's position.
    fn read(r: &mut Reader<'a>) -> Result<TupleData<'a>, DecodeError> {
        let ncols = r.u16("tuple column count")?;
        let start = r.pos;
        for column in 0..usize::from(ncols) {
            read_column(r, column)?;
        }
        Ok(TupleData {
            ncols,
            bytes: r.buf.get(start..r.pos).unwrap_or_default(),
        })
    }
}

fn read_column<'a>(r: &mut Reader<'a>, column: usize) -> Result<ColumnData<'a>, DecodeError> {
    match r.u8("column kind")? {
        b'n' => Ok(ColumnData::Null),
        b'u' => Ok(ColumnData::UnchangedToast),
        b't' => Ok(ColumnData::Text(
            r.len_bytes("column value length", "column value")?,
        )),
        b'b' => Ok(ColumnData::Binary(
            r.len_bytes("column value length", "column value")?,
        )),
        kind => Err(DecodeError::UnknownTupleKind {
            msg: r.msg,
            column,
            kind,
        }),
    }
}

/// Iterator over a validated [`TupleData`].
pub struct TupleIter<'a> {
    r: Reader<'a>,
    left: u16,
}

impl<'a> Iterator for TupleIter<'a> {
    type Item = ColumnData<'a>;

    fn next(&mut self) -> Option<ColumnData<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Validated by `parse`, so this cannot fail; end the iteration rather than panic.
        read_column(&mut self.r, 0).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(usize::from(self.left)))
    }
}

/// Parses one message; `in_stream` says whether it arrived between Stream Start and Stream
/// Stop. Stream Abort is parsed without the v4 parallel-streaming fields; use [`parse_in`] to
/// say otherwise.
pub fn parse(msg: &[u8], in_stream: bool) -> Result<Message<'_>, DecodeError> {
    parse_in(
        msg,
        ParseContext {
            in_stream,
            abort_info: false,
        },
    )
}

/// Parses one message in the given context: decides the message family by its tag, then that
/// the message was consumed exactly.
pub fn parse_in(msg: &[u8], ctx: ParseContext) -> Result<Message<'_>, DecodeError> {
    let (&tag, _) = msg.split_first().ok_or(DecodeError::Empty)?;
    let name = tag_name(tag).ok_or(DecodeError::UnknownTag { tag })?;
    let mut r = Reader::new(msg, name);
    r.pos = 1;
    // Each family parser is given only its own tags; its `_` arm answers like the one here.
    let m = match tag {
        b'B' | b'C' | b'O' => parse_boundary(tag, &mut r)?,
        b'R' | b'Y' => parse_schema(tag, &mut r, ctx)?,
        b'I' | b'U' | b'D' | b'T' | b'M' => parse_change(tag, &mut r, ctx)?,
        b'S' | b'E' | b'c' | b'A' => parse_streaming(tag, &mut r, ctx)?,
        b'b' | b'P' | b'p' | b'K' | b'r' => parse_two_phase(tag, &mut r)?,
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    let extra = msg.len().saturating_sub(r.pos);
    if extra != 0 {
        if tag == b'A' {
            return Err(stream_abort_len(msg.len(), ctx.abort_info));
        }
        return Err(DecodeError::TrailingBytes { msg: name, extra });
    }
    Ok(m)
}

/// The leading Int32 xid of Relation, Type, Insert, Update, Delete, Truncate and Message: sent
/// only between Stream Start and Stream Stop.
#[inline]
fn stream_xid(r: &mut Reader<'_>, ctx: ParseContext) -> Result<Option<u32>, DecodeError> {
    if ctx.in_stream {
        Ok(Some(r.u32("xid")?))
    } else {
        Ok(None)
    }
}

/// Begin and Commit, the bounds of a non-streamed transaction, and Origin, where it came from.
#[inline]
fn parse_boundary<'a>(tag: u8, r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    Ok(match tag {
        b'B' => Message::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_ts: r.ts("commit timestamp")?,
            xid: r.u32("xid")?,
        }),
        b'C' => Message::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.ts("commit timestamp")?,
        }),
        b'O' => Message::Origin(Origin {
            lsn: r.lsn("origin LSN")?,
            name: r.cstr("origin name")?,
        }),
        _ => return Err(DecodeError::UnknownTag { tag }),
    })
}

/// Relation and Type: the shapes later changes refer to by OID. A Relation's replica identity
/// and every column definition are validated here.
#[inline]
fn parse_schema<'a>(
    tag: u8,
    r: &mut Reader<'a>,
    ctx: ParseContext,
) -> Result<Message<'a>, DecodeError> {
    Ok(match tag {
        b'R' => {
            let xid = stream_xid(r, ctx)?;
            let oid = r.u32("relation OID")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            if !matches!(replica_identity, b'd' | b'n' | b'f' | b'i') {
                return Err(DecodeError::BadValue {
                    msg: name_of(tag),
                    field: "replica identity",
                    value: i64::from(replica_identity),
                });
            }
            let ncols = r.u16("column count")?;
            let start = r.pos;
            for _ in 0..ncols {
                read_rel_column(r)?;
            }
            Message::Relation(RelationMsg {
                xid,
                oid,
                namespace,
                name,
                replica_identity,
                ncols,
                cols: r.buf.get(start..r.pos).unwrap_or_default(),
            })
        }
        b'Y' => Message::Type(TypeMsg {
            xid: stream_xid(r, ctx)?,
            oid: r.u32("type OID")?,
            namespace: r.cstr("namespace")?,
            name: r.cstr("type name")?,
        }),
        _ => return Err(DecodeError::UnknownTag { tag }),
    })
}

/// Insert, Update, Delete and Truncate (row changes) and Message (logical decoding messages).
/// Tuple data is validated here.
#[inline]
fn parse_change<'a>(
    tag: u8,
    r: &mut Reader<'a>,
    ctx: ParseContext,
) -> Result<Message<'a>, DecodeError> {
    Ok(match tag {
        b'I' => {
            let xid = stream_xid(r, ctx)?;
            let oid = r.u32("relation OID")?;
            r.expect_tag("'N'", |t| t == b'N')?;
            Message::Insert(Insert {
                xid,
                oid,
                new: TupleData::read(r)?,
            })
        }
        b'U' => {
            let xid = stream_xid(r, ctx)?;
            let oid = r.u32("relation OID")?;
            let old = read_update_old(r)?;
            Message::Update(Update {
                xid,
                oid,
                old,
                new: TupleData::read(r)?,
            })
        }
        b'D' => {
            let xid = stream_xid(r, ctx)?;
            let oid = r.u32("relation OID")?;
            let kind = match r.expect_tag("'K' or 'O'", |t| matches!(t, b'K' | b'O'))? {
                b'K' => OldKind::Key,
                _ => OldKind::Full,
            };
            Message::Delete(Delete {
                xid,
                oid,
                kind,
                old: TupleData::read(r)?,
            })
        }
        b'T' => {
            let xid = stream_xid(r, ctx)?;
            let n = r.i32("relation count")?;
            let n = usize::try_from(n).map_err(|_| DecodeError::BadValue {
                msg: name_of(tag),
                field: "relation count",
                value: i64::from(n),
            })?;
            let options = r.u8("options")?;
            let oids = r.bytes(n.saturating_mul(4), "relation OIDs")?;
            Message::Truncate(Truncate { xid, options, oids })
        }
        b'M' => {
            let xid = stream_xid(r, ctx)?;
            let flags = r.u8("flags")?;
            Message::Message(LogicalMsg {
                xid,
                transactional: flags & 1 != 0,
                lsn: r.lsn("message LSN")?,
                prefix: r.cstr("prefix")?,
                content: r.len_bytes("content length", "content")?,
            })
        }
        _ => return Err(DecodeError::UnknownTag { tag }),
    })
}

/// The optional old tuple of an Update: 'N' says there is none and the new tuple follows;
/// 'K' (key) or 'O' (whole row) is followed by the old tuple, then 'N' and the new one.
#[inline]
fn read_update_old<'a>(
    r: &mut Reader<'a>,
) -> Result<Option<(OldKind, TupleData<'a>)>, DecodeError> {
    Ok(
        match r.expect_tag("'K', 'O' or 'N'", |t| matches!(t, b'K' | b'O' | b'N'))? {
            b'N' => None,
            t => {
                let kind = if t == b'K' {
                    OldKind::Key
                } else {
                    OldKind::Full
                };
                let old = TupleData::read(r)?;
                r.expect_tag("'N'", |t| t == b'N')?;
                Some((kind, old))
            }
        },
    )
}

/// Stream Start, Stream Stop, Stream Commit and Stream Abort (v2+). Stream Abort has the abort
/// LSN and timestamp only when `ctx.abort_info` says so.
#[inline]
fn parse_streaming<'a>(
    tag: u8,
    r: &mut Reader<'a>,
    ctx: ParseContext,
) -> Result<Message<'a>, DecodeError> {
    Ok(match tag {
        b'S' => Message::StreamStart(StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.u8("first segment flag")? == 1,
        }),
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit(StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.ts("commit timestamp")?,
        }),
        b'A' => {
            let xid = r.u32("xid")?;
            let subxid = r.u32("subtransaction xid")?;
            let (abort_lsn, abort_ts) = if ctx.abort_info {
                (Some(r.lsn("abort LSN")?), Some(r.ts("abort timestamp")?))
            } else {
                (None, None)
            };
            Message::StreamAbort(StreamAbort {
                xid,
                subxid,
                abort_lsn,
                abort_ts,
            })
        }
        _ => return Err(DecodeError::UnknownTag { tag }),
    })
}

/// Begin Prepare, Prepare, Stream Prepare, Commit Prepared and Rollback Prepared (v3+).
#[inline]
fn parse_two_phase<'a>(tag: u8, r: &mut Reader<'a>) -> Result<Message<'a>, DecodeError> {
    Ok(match tag {
        b'b' => Message::BeginPrepare(BeginPrepare {
            prepare_lsn: r.lsn("prepare LSN")?,
            end_lsn: r.lsn("end LSN")?,
            prepare_ts: r.ts("prepare timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        b'P' | b'p' => {
            let p = Prepare {
                flags: r.u8("flags")?,
                prepare_lsn: r.lsn("prepare LSN")?,
                end_lsn: r.lsn("end LSN")?,
                prepare_ts: r.ts("prepare timestamp")?,
                xid: r.u32("xid")?,
                gid: r.cstr("gid")?,
            };
            if tag == b'P' {
                Message::Prepare(p)
            } else {
                Message::StreamPrepare(p)
            }
        }
        b'K' => Message::CommitPrepared(CommitPrepared {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_ts: r.ts("commit timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        b'r' => Message::RollbackPrepared(RollbackPrepared {
            flags: r.u8("flags")?,
            prepare_end_lsn: r.lsn("prepare end LSN")?,
            rollback_end_lsn: r.lsn("rollback end LSN")?,
            prepare_ts: r.ts("prepare timestamp")?,
            rollback_ts: r.ts("rollback timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        _ => return Err(DecodeError::UnknownTag { tag }),
    })
}

fn stream_abort_len(len: usize, abort_info: bool) -> DecodeError {
    DecodeError::StreamAbortLength {
        len,
        hint: if abort_info {
            "expected 25 (with abort LSN and timestamp, streaming = parallel)"
        } else {
            "expected 9; 25 means the server sends abort LSN and timestamp (v4, streaming = parallel)"
        },
    }
}

/// The message name used in errors, by tag.
fn tag_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "Message",
        b'S' => "Stream Start",
        b'E' => "Stream Stop",
        b'c' => "Stream Commit",
        b'A' => "Stream Abort",
        b'b' => "Begin Prepare",
        b'P' => "Prepare",
        b'K' => "Commit Prepared",
        b'r' => "Rollback Prepared",
        b'p' => "Stream Prepare",
        _ => return None,
    })
}

fn name_of(tag: u8) -> &'static str {
    tag_name(tag).unwrap_or("unknown")
}

impl Message<'_> {
    /// The message's name as the protocol docs spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Begin(_) => "Begin",
            Message::Commit(_) => "Commit",
            Message::Origin(_) => "Origin",
            Message::Relation(_) => "Relation",
            Message::Type(_) => "Type",
            Message::Insert(_) => "Insert",
            Message::Update(_) => "Update",
            Message::Delete(_) => "Delete",
            Message::Truncate(_) => "Truncate",
            Message::Message(_) => "Message",
            Message::StreamStart(_) => "Stream Start",
            Message::StreamStop => "Stream Stop",
            Message::StreamCommit(_) => "Stream Commit",
            Message::StreamAbort(_) => "Stream Abort",
            Message::BeginPrepare(_) => "Begin Prepare",
            Message::Prepare(_) => "Prepare",
            Message::CommitPrepared(_) => "Commit Prepared",
            Message::RollbackPrepared(_) => "Rollback Prepared",
            Message::StreamPrepare(_) => "Stream Prepare",
        }
    }
}

/// Writes a Relation message (with a leading xid when `xid` is given) for a cached relation:
/// used to pin a relation's shape inside a buffered transaction.
pub(crate) fn write_relation(rel: &super::Relation, xid: Option<u32>, out: &mut Vec<u8>) {
    out.push(b'R');
    if let Some(xid) = xid {
        out.extend_from_slice(&xid.to_be_bytes());
    }
    out.extend_from_slice(&rel.oid.to_be_bytes());
    // "" stands for pg_catalog on the wire; writing the name back is equivalent.
    out.extend_from_slice(rel.namespace.as_bytes());
    out.push(0);
    out.extend_from_slice(rel.name.as_bytes());
    out.push(0);
    out.push(rel.replica_identity.as_byte());
    // The cache was built from an Int16 count.
    let n = u16::try_from(rel.columns.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    for c in rel.columns.iter().take(usize::from(n)) {
        out.push(u8::from(c.is_key));
        out.extend_from_slice(c.name.as_bytes());
        out.push(0);
        out.extend_from_slice(&c.type_oid.to_be_bytes());
        out.extend_from_slice(&c.type_modifier.to_be_bytes());
    }
}

/// A bounds-checked big-endian cursor.
#[derive(Clone)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    msg: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], msg: &'static str) -> Self {
        Reader { buf, pos: 0, msg }
    }

    fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                msg: self.msg,
                field,
                offset: self.pos,
                needed: n,
                len: self.buf.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.bytes(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let v = i16::from_be_bytes(self.array(field)?);
        u16::try_from(v).map_err(|_| DecodeError::BadValue {
            msg: self.msg,
            field,
            value: i64::from(v),
        })
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(field)?)))
    }

    fn ts(&mut self, field: &'static str) -> Result<Timestamp, DecodeError> {
        Ok(Timestamp(i64::from_be_bytes(self.array(field)?)))
    }

    /// Int32 length then that many bytes; a negative length is an error (tuple data uses 'n'
    /// for null, never length -1).
    fn len_bytes(
        &mut self,
        len_field: &'static str,
        field: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        let len = self.i32(len_field)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::BadValue {
            msg: self.msg,
            field: len_field,
            value: i64::from(len),
        })?;
        self.bytes(len, field)
    }

    fn cstr(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                msg: self.msg,
                field,
            })?;
        let s = rest.get(..nul).unwrap_or_default();
        self.pos += nul + 1;
        std::str::from_utf8(s).map_err(|_| DecodeError::InvalidUtf8 {
            msg: self.msg,
            field,
        })
    }

    fn expect_tag(
        &mut self,
        expected: &'static str,
        ok: impl Fn(u8) -> bool,
    ) -> Result<u8, DecodeError> {
        let t = self.u8("tuple tag")?;
        if ok(t) {
            Ok(t)
        } else {
            Err(DecodeError::BadTupleTag {
                msg: self.msg,
                expected,
                found: t,
            })
        }
    }
}
