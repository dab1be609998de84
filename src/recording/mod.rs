//! Raw recordings: the replication stream as the server sent it, written by `walwatch record
//! --raw FILE` (or `watch --raw`) and decoded again offline by `walwatch replay FILE`.
//!
//! Why: a decoding bug seen on someone's server must be reproducible without their server.
//! A recording holds everything the decode thread's output depends on, in the order it was
//! used, so a replay runs the same decoder, filter and sinks over the same input and writes
//! the same events, byte for byte:
//!
//! * every CopyData payload the decode thread handled (XLogData and keepalives, exactly as
//!   [`crate::pg::stream::parse_copy_data`] reads them), numbered in receive order, and where a
//!   reconnection happened;
//! * every catalog answer the run used, right after the frame that asked for it: the type
//!   registry when it was reloaded, a relation's partition ancestors, a table's primary key, and
//!   the sinks' own lookups (Kafka message keys, Arrow array dimensions);
//! * a header with the server version, the pgoutput protocol and START_REPLICATION options, the
//!   slot, the start and end positions, the watched tables and the type registry it started
//!   with; and an end line saying how many frames there were and how the run ended.
//!
//! The format is JSON lines (`"kind"` says which), so a user can read what they attach to a
//! bug report: it holds their rows. Frame payloads are base64. A file without its end line,
//! with a line missing, or cut anywhere is refused before anything is written to a sink.

mod read;
mod record;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::TypeKind;

pub use read::{Reading, Source};
pub use record::Recorder;

/// The format version in [`Header::walwatch_recording`]; a reader refuses any other.
pub const FORMAT: u32 = 1;

/// One line of a recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    /// The first line.
    Header(Header),
    /// One CopyData payload, base64; `n` counts frames from 1 in the order handled.
    Copy { n: u64, data: String },
    /// The connection was lost and a new one opened here (a permanent slot reconnects).
    Reset { n: u64 },
    /// A catalog answer the run used while it handled the frame before it.
    Lookup(Lookup),
    /// The last line.
    End(End),
}

/// What the run knew and asked for before its first frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub walwatch_recording: u32,
    /// The walwatch version that recorded it.
    pub walwatch: String,
    /// `server_version_num`, e.g. 150010.
    pub server_version_num: u32,
    /// The database the slot belongs to (the Kafka sink names messages after it).
    pub database: String,
    /// The pgoutput `proto_version` negotiated.
    pub protocol_version: u32,
    /// The START_REPLICATION options, as sent.
    pub options: Vec<(String, String)>,
    pub slot: String,
    /// Where the stream started (an LSN).
    pub start: String,
    /// Where the run was to stop (an LSN), if it was given one.
    pub endpos: Option<String>,
    /// The watched tables, `(schema, table)`; `None` for every table.
    pub tables: Option<Vec<(String, String)>>,
    /// Whether the server's publication decided which tables were sent (walwatch's own
    /// publications), rather than walwatch's filter (a `--publication`).
    pub server_scoped: bool,
    /// The type registry the decoder started with, by OID.
    pub types: Vec<(u32, TypeKind)>,
}

/// A catalog answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "lookup", rename_all = "snake_case")]
pub enum Lookup {
    /// The whole type registry, reloaded for types the stream named that it did not know.
    Types { answer: Vec<(u32, TypeKind)> },
    /// A relation's partition ancestors, nearest first, as `(schema, table)`.
    Partitions {
        oid: u32,
        answer: Vec<(String, String)>,
    },
    /// A table's primary-key columns, by its OID.
    PrimaryKey { oid: u32, answer: Vec<String> },
    /// The Kafka sink's primary-key lookup, by name.
    KafkaKey {
        schema: String,
        table: String,
        answer: Vec<String>,
    },
    /// The Arrow sink's array dimensions of a table's columns.
    ArrayDims {
        schema: String,
        table: String,
        answer: BTreeMap<String, usize>,
    },
}

/// How the recorded run ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct End {
    /// How many frames (copy and reset lines) came before.
    pub frames: u64,
    /// The run's error, if it ended with one.
    pub error: Option<String>,
}
