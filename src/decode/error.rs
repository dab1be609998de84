//! Decoding errors.
//!
//! Every error says what was wrong with the bytes (which message, which field, which table and
//! column when known) and what the operator can do about it. A malformed message is never a panic:
//! the stream is untrusted input as far as this module is concerned.

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "cannot {action} the spill file of a large transaction: {reason}; free disk space where \
         spill files go (--spill-dir, else $TMPDIR or /tmp), or raise --spill-threshold"
    )]
    Spill {
        action: &'static str,
        reason: String,
    },

    #[error(
        "empty pgoutput message: the server sent an XLogData frame with no payload; \
         this is a protocol error, restart the stream and report it if it recurs"
    )]
    Empty,

    #[error(
        "unknown pgoutput message tag 0x{tag:02X} ({}): the server speaks a newer protocol than \
         walwatch negotiated, or the stream is corrupt; check proto_version in START_REPLICATION",
        printable(*tag)
    )]
    UnknownTag { tag: u8 },

    #[error(
        "truncated {msg} message: {field} needs {needed} byte(s) at offset {offset} but the \
         message is {len} bytes long; the frame was cut short (corrupt stream), restart the stream"
    )]
    Truncated {
        msg: &'static str,
        field: &'static str,
        offset: usize,
        needed: usize,
        len: usize,
    },

    #[error(
        "{msg} message has {extra} unexpected trailing byte(s): the server speaks a different \
         protocol version or option set than the decoder was built for \
         (check proto_version and the streaming option)"
    )]
    TrailingBytes { msg: &'static str, extra: usize },

    #[error("{msg} message: string field {field} has no NUL terminator (corrupt stream)")]
    UnterminatedString {
        msg: &'static str,
        field: &'static str,
    },

    #[error(
        "{msg} message: {field} is not valid UTF-8 (corrupt stream, or client_encoding is not UTF8)"
    )]
    InvalidUtf8 {
        msg: &'static str,
        field: &'static str,
    },

    #[error("{msg} message: {field} has invalid value {value} (corrupt stream)")]
    BadValue {
        msg: &'static str,
        field: &'static str,
        value: i64,
    },

    #[error(
        "{msg} message: column {column} has unknown tuple data kind 0x{kind:02X} ({}); expected \
         n, u, t or b (corrupt stream, or a newer protocol)",
        printable(*kind)
    )]
    UnknownTupleKind {
        msg: &'static str,
        column: usize,
        kind: u8,
    },

    #[error(
        "{msg} message: expected tuple tag {expected} but found 0x{found:02X} ({})",
        printable(*found)
    )]
    BadTupleTag {
        msg: &'static str,
        expected: &'static str,
        found: u8,
    },

    #[error(
        "{msg} message refers to relation OID {oid}, which no Relation message has described: \
         the stream was started mid-transaction or a message was lost; restart from the slot's \
         confirmed position"
    )]
    UnknownRelation { msg: &'static str, oid: u32 },

    #[error(
        "{msg} message for {schema}.{table} has {got} column(s) but its Relation message \
         described {expected}: the table changed without a new Relation message (corrupt stream)"
    )]
    ColumnCount {
        msg: &'static str,
        schema: String,
        table: String,
        expected: usize,
        got: usize,
    },

    #[error(
        "column {schema}.{table}.{column} holds text that is not valid UTF-8: walwatch pins \
         client_encoding=UTF8, so check the connection's startup parameters"
    )]
    ColumnUtf8 {
        schema: String,
        table: String,
        column: String,
    },

    #[error(
        "{msg} message arrived {state}: the stream is out of order (corrupt stream or a decoder reused across reconnects; create a new Decoder for each START_REPLICATION)"
    )]
    Unexpected {
        msg: &'static str,
        state: &'static str,
    },

    #[error(
        "{msg} message for streamed transaction {xid}, which no first Stream Start opened: \
         earlier segments were lost; create a new Decoder for each START_REPLICATION"
    )]
    UnknownStream { msg: &'static str, xid: u32 },

    #[error(
        "Commit Prepared for transaction {gid:?} (xid {xid}), whose prepared changes were never \
         received: the slot was confirmed past its Prepare; its changes cannot be recovered from \
         this slot (check the pipeline's flush position for prepared transactions)"
    )]
    UnknownPrepared { gid: String, xid: u32 },

    #[error(
        "Stream Abort is {len} bytes: {hint}; build the decoder with \
         Decoder::with_parallel_streaming matching the START_REPLICATION streaming option"
    )]
    StreamAbortLength { len: usize, hint: &'static str },
}

fn printable(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        "non-printable".to_string()
    }
}
