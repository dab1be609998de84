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
/// A mark for one recorder or watch has `@` and that one's scope (its slot name) after it:
/// `walwatch.mark@walwatch_1234_5f3a`. One without a scope is for every recorder.
pub const MARK_PREFIX: &str = "walwatch.mark";
/// The prefix of a fence; the content is a unique id. Scoped like a mark.
pub const FENCE_PREFIX: &str = "walwatch.fence";
/// The prefix of a snapshot's watermarks (`pipeline::backfill`), scoped to the slot; the
/// content says which run and chunk, low or high.
pub const BACKFILL_PREFIX: &str = "walwatch.backfill";
/// The prefix of the first line `walwatch record` writes: who is recording
/// ([`RecorderInfo`], as JSON). Never sent through the database.
pub const RECORDER_PREFIX: &str = "walwatch.recorder";

/// `prefix`, scoped to `scope` when there is one: `walwatch.fence@walwatch_1234_5f3a`.
pub fn scoped(prefix: &str, scope: Option<&str>) -> String {
    match scope {
        Some(scope) => format!("{prefix}@{scope}"),
        None => prefix.to_string(),
    }
}

/// The kind prefix of a marker message's prefix and its scope: `("walwatch.mark",
/// Some("slot"))`. `None` when the message is not walwatch's.
fn parse_prefix(prefix: &str) -> Option<(&str, Option<&str>)> {
    let (kind, scope) = match prefix.split_once('@') {
        Some((kind, scope)) => (kind, Some(scope)),
        None => (prefix, None),
    };
    match kind {
        MARK_PREFIX | FENCE_PREFIX | BACKFILL_PREFIX => Some((kind, scope)),
        RECORDER_PREFIX if scope.is_none() => Some((kind, None)),
        _ => None,
    }
}

/// Whether the event is one of walwatch's markers (assertions never match these): fences,
/// marks and the recorder's first line, through the database or the fault proxy.
pub fn is_marker(e: &Event) -> bool {
    if e.op == Op::Proxy {
        return mark_name(e).is_some();
    }
    e.op == Op::Message
        && e.message
            .as_ref()
            .is_some_and(|m| parse_prefix(&m.prefix).is_some())
}

/// The scope a marker is for (`None`: every recorder, or not a marker).
pub fn scope_of(e: &Event) -> Option<&str> {
    let m = e.message.as_ref().filter(|_| e.op == Op::Message)?;
    parse_prefix(&m.prefix)?.1
}

/// Whether a marker is for the recorder or watch with this scope: its own, or everyone's.
pub fn is_for(e: &Event, scope: Option<&str>) -> bool {
    match scope_of(e) {
        None => true,
        Some(s) => Some(s) == scope,
    }
}

/// A snapshot watermark's content, when `e` is one.
pub fn backfill_content(e: &Event) -> Option<&str> {
    content_with_prefix(e, BACKFILL_PREFIX)
}

fn content_with_prefix<'e>(e: &'e Event, prefix: &str) -> Option<&'e str> {
    let m = e.message.as_ref()?;
    if e.op == Op::Message && parse_prefix(&m.prefix).is_some_and(|(kind, _)| kind == prefix) {
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

/// Who wrote a recording: the first line of `walwatch record`'s output, a MESSAGE event with
/// prefix [`RECORDER_PREFIX`] and this as its JSON content. `walwatch mark --input` reads the
/// scope to address its mark to this recorder only; `walwatch assert` reads the envelope the
/// predicate must be compiled for, and checks that the recorder is still alive.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecorderInfo {
    /// The recorder's slot, which is also the scope of the marks addressed to it.
    pub slot: String,
    /// Whether the slot is temporary: then it exists exactly as long as the recorder streams.
    pub temporary: bool,
    /// The recorder's process id, host name and pid namespace (`/proc/self/ns/pid`): a pid
    /// is checked only on the same host in the same namespace (containers of one pod share a
    /// host name, not their pids).
    pub pid: u32,
    pub host: String,
    #[serde(default)]
    pub pid_ns: String,
    /// `native` or `nested`.
    pub envelope: String,
}

impl RecorderInfo {
    /// The recorder line's event.
    pub fn to_event(&self, lsn: crate::event::Lsn) -> Event {
        let mut e = Event::new(Op::Message, lsn);
        e.commit_lsn = lsn;
        e.message = Some(crate::event::LogicalMessage {
            transactional: false,
            prefix: RECORDER_PREFIX.into(),
            content: serde_json::to_vec(self).unwrap_or_default(),
        });
        e
    }

    /// Whether the recorder's pid means the same process here.
    pub fn is_on_this_machine(&self) -> bool {
        !self.pid_ns.is_empty() && self.host == this_host() && self.pid_ns == this_pid_namespace()
    }

    /// The envelope the recording's lines are in.
    pub fn envelope(&self) -> crate::event_read::Envelope {
        match self.envelope.as_str() {
            "nested" => crate::event_read::Envelope::Nested,
            _ => crate::event_read::Envelope::Native,
        }
    }

    /// The recorder for reports: `walwatch record (slot walwatch_1234_5f3a, pid 1234 on ci-7)`.
    pub fn describe(&self) -> String {
        let host = if self.host.is_empty() {
            String::new()
        } else {
            format!(" on {}", self.host)
        };
        format!(
            "`walwatch record` (slot {}, pid {}{host})",
            self.slot, self.pid
        )
    }

    /// The recorder line's information, if `e` is one.
    pub fn of(e: &Event) -> Option<RecorderInfo> {
        let m = e.message.as_ref().filter(|_| e.op == Op::Message)?;
        if m.prefix != RECORDER_PREFIX {
            return None;
        }
        serde_json::from_slice(&m.content).ok()
    }
}

/// This machine's name, for the recorder line (Linux's `/proc/sys/kernel/hostname`; empty
/// where there is none). Read once: liveness checks ask for it every 0.25 s.
pub fn this_host() -> String {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    })
    .clone()
}

/// This process's pid namespace (`pid:[4026531836]`; empty where /proc does not say). Read
/// once, like [`this_host`].
pub fn this_pid_namespace() -> String {
    static NS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NS.get_or_init(|| {
        std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    })
    .clone()
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

/// Emits `prefix` scoped to each of `scopes` ([`scoped`]; `None` for every recorder) with the
/// same content, in one transaction on `client`; returns the position of the first. One
/// transaction, so every recorder addressed sees the marker at the same point of the commit
/// order (module docs).
pub async fn emit_scoped(
    client: &tokio_postgres::Client,
    prefix: &str,
    scopes: &[Option<String>],
    content: &str,
) -> crate::error::Result<crate::event::Lsn> {
    let prefixes: Vec<String> = if scopes.is_empty() {
        vec![prefix.to_string()]
    } else {
        scopes
            .iter()
            .map(|s| scoped(prefix, s.as_deref()))
            .collect()
    };
    if let [only] = prefixes.as_slice() {
        return emit(client, only, content).await;
    }
    // `WITH ORDINALITY` keeps the messages in the order given; the first one's LSN is returned.
    let row = client
        .query_one(
            "SELECT (array_agg(pg_logical_emit_message(true, p, $2)::text ORDER BY n))[1] \
             FROM unnest($1::text[]) WITH ORDINALITY AS u(p, n)",
            &[&prefixes, &content],
        )
        .await?;
    let text: String = crate::pg::catalog::column(&row, "marker::emit_scoped", 0)?;
    text.parse()
        .map_err(|e: crate::event::LsnParseError| crate::error::Error::Setup(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{LogicalMessage, Lsn};

    fn message(prefix: &str, content: &str) -> Event {
        let mut e = Event::new(Op::Message, Lsn(1));
        e.message = Some(LogicalMessage {
            transactional: true,
            prefix: prefix.into(),
            content: content.as_bytes().to_vec(),
        });
        e
    }

    #[test]
    fn scoped_markers_are_for_their_scope_and_unscoped_ones_for_everyone() {
        let mine = message(&scoped(MARK_PREFIX, Some("slot_a")), "phase");
        let everyone = message(MARK_PREFIX, "phase");
        let fence = message(&scoped(FENCE_PREFIX, Some("slot_b")), "f1");
        for e in [&mine, &everyone, &fence] {
            assert!(is_marker(e));
        }
        assert_eq!(mark_name(&mine), Some("phase"));
        assert_eq!(fence_id(&fence), Some("f1"));
        assert!(is_for(&mine, Some("slot_a")) && !is_for(&mine, Some("slot_b")));
        assert!(is_for(&everyone, Some("slot_b")) && is_for(&everyone, None));
        assert!(!is_for(&fence, Some("slot_a")));
        // Another application's messages are not walwatch's, whatever they start with.
        for prefix in ["walwatch.markers", "walwatch.recorder@x", "app"] {
            assert!(!is_marker(&message(prefix, "x")), "{prefix}");
        }
    }

    #[test]
    fn the_recorder_line_round_trips_and_is_a_marker() {
        let info = RecorderInfo {
            slot: "walwatch_1_a".into(),
            temporary: true,
            pid: 42,
            host: "ci".into(),
            pid_ns: "pid:[1]".into(),
            envelope: "nested".into(),
        };
        let e = info.to_event(Lsn(5));
        assert!(is_marker(&e));
        assert_eq!(RecorderInfo::of(&e), Some(info.clone()));
        assert_eq!(info.envelope(), crate::event_read::Envelope::Nested);
        assert_eq!(
            info.describe(),
            "`walwatch record` (slot walwatch_1_a, pid 42 on ci)"
        );
        let read = crate::event_read::parse_line(&e.to_json()).unwrap();
        assert_eq!(RecorderInfo::of(&read), Some(info));
    }
}
