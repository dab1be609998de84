//! walwatch's own markers in the stream: transactional logical messages
//! (`pg_logical_emit_message`) that fences and named marks are made of.
//!
//! A transactional message is decoded at its transaction's commit, in commit order with every
//! other transaction (PostgreSQL docs, 49.6.4 "Logical Decoding Output Plugins", message
//! callback). So once a marker committed at time T arrives through the stream, every change
//! committed before T has arrived too: that is what makes `never` and `count` exact.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::{Event, Op};

/// The prefix of a named mark (`walwatch mark NAME`, `Watch::mark`); the content is the name.
pub const MARK_PREFIX: &str = "walwatch.mark";
/// The prefix of a fence; the content is a unique id.
pub const FENCE_PREFIX: &str = "walwatch.fence";

/// Whether the event is one of walwatch's markers (assertions never match these): fences and
/// marks, through the database or the fault proxy.
pub fn is_marker(e: &Event) -> bool {
    if e.op == Op::Proxy {
        return mark_name(e).is_some();
    }
    e.op == Op::Message
        && e.message
            .as_ref()
            .is_some_and(|m| m.prefix == MARK_PREFIX || m.prefix == FENCE_PREFIX)
}

fn content_with_prefix<'e>(e: &'e Event, prefix: &str) -> Option<&'e str> {
    let m = e.message.as_ref()?;
    if e.op == Op::Message && m.prefix == prefix {
        m.content_str()
    } else {
        None
    }
}

/// The name of a mark event: a mark through the database (a logical message), or one the
/// fault proxy recorded in its events (`{"type":"proxy","data":{"action":"mark","message":
/// NAME}}`, `walwatch mark NAME --proxy ADDR`).
pub fn mark_name(e: &Event) -> Option<&str> {
    if let Some(p) = e.proxy() {
        return match p.data.get("action").and_then(|a| a.as_str()) {
            Some("mark") => p.data.get("message").and_then(|m| m.as_str()),
            _ => None,
        };
    }
    content_with_prefix(e, MARK_PREFIX)
}

/// The id of a fence event.
pub fn fence_id(e: &Event) -> Option<&str> {
    content_with_prefix(e, FENCE_PREFIX)
}

/// A fence id no other process or call uses: `<pid>-<nanoseconds>-<counter>`.
pub fn new_fence_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Emits a transactional message in its own transaction on `client`; returns its WAL position.
pub async fn emit(
    client: &tokio_postgres::Client,
    prefix: &str,
    content: &str,
) -> crate::error::Result<crate::event::Lsn> {
    let row = client
        .query_one(
            "SELECT pg_logical_emit_message(true, $1, $2)::text",
            &[&prefix, &content],
        )
        .await?;
    let text: String = crate::pg::catalog::column(&row, "marker::emit", 0)?;
    text.parse()
        .map_err(|e: crate::event::LsnParseError| crate::error::Error::Setup(e.to_string()))
}
