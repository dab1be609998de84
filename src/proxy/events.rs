//! "proxy" events: what the proxy did to which statement, for assertions beside the WAL's
//! events.
//!
//! Each event gets the proxy's own sequence number when it is recorded, and an action event
//! (error, delay, drop) is recorded — written and fsync'd to `--events FILE` — *before* the
//! proxy acts on the statement. That is what fences `never` over proxy events: once a window
//! has closed, every action taken inside it is already in the file and in memory.
//!
//! Statement text is redacted before it is recorded: `PASSWORD '…'` literals (CREATE/ALTER
//! ROLE) never reach a file or a log. The startup and authentication exchange is relayed and
//! never recorded at all.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::event::Timestamp;

/// Statement text longer than this is cut (with `…`) in events: a multi-megabyte COPY or
/// generated INSERT would otherwise be written whole for every action.
pub const MAX_QUERY_CHARS: usize = 16 * 1024;

/// What the proxy did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyAction {
    /// Answered with an injected error (or the proxy's own error: bad message, upstream gone).
    Error,
    /// Held the statement before relaying it.
    Delay,
    /// Closed the client's connection instead of relaying it.
    Drop,
    /// Relayed it unchanged (`--log-queries`).
    Pass,
    /// Not a statement: a named mark (`walwatch mark NAME --proxy ADDR`, [`crate::proxy::Proxy::mark`])
    /// whose name is in `message`, so that `walwatch assert --since NAME` can find where a
    /// window starts in a proxy events file as it does in a WAL recording.
    Mark,
}

/// One event's `data`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyData {
    pub action: ProxyAction,
    /// The statement, redacted and cut to [`MAX_QUERY_CHARS`]; `None` for a connection-level
    /// event (the upstream unreachable, a malformed message).
    pub query: Option<String>,
    /// The rule that acted, in its `--fault` form; `None` for the proxy's own errors and passes.
    pub rule: Option<Arc<str>>,
    /// The error message sent to the client, or what went wrong.
    pub message: Option<String>,
    /// The SQLSTATE of an error.
    pub sqlstate: Option<String>,
    /// The proxy's number for the client connection (also its BackendKeyData process id).
    pub connection: u64,
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub application_name: Arc<str>,
    /// The delay held, or for a pass how long the statement took upstream.
    pub duration_ms: Option<f64>,
}

/// A recorded event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProxyEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The proxy's sequence: 1, 2, 3... in the order recorded.
    pub seq: u64,
    pub ts: Timestamp,
    pub data: ProxyData,
}

impl ProxyEvent {
    /// The event as assertions see it, beside the WAL's events.
    pub fn to_event(&self) -> crate::event::Event {
        let data = match serde_json::to_value(&self.data) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        crate::event::Event::from_proxy(
            crate::event::ProxyFields {
                seq: self.seq,
                data,
            },
            self.ts,
        )
    }
}

/// Where events go: memory (for the Rust API and tests) and optionally a JSONL file.
pub struct EventLog {
    seq: AtomicU64,
    inner: Mutex<Inner>,
    grew: Condvar,
    /// The same wake-up for async waiters ([`EventLog::changed_past`]).
    notify: tokio::sync::Notify,
    path: Option<PathBuf>,
}

struct Inner {
    events: Vec<Arc<ProxyEvent>>,
    /// How many of the first events were dropped from memory to respect `retain`.
    dropped: u64,
    retain: usize,
    file: Option<File>,
    /// The first write error: later events are still kept in memory.
    failed: Option<String>,
}

impl EventLog {
    /// A log keeping the last `retain` events in memory, and writing every event to `path`
    /// (created, or appended to) when given.
    pub fn open(path: Option<&Path>, retain: usize) -> std::io::Result<Arc<EventLog>> {
        let file = match path {
            Some(p) => Some(File::options().create(true).append(true).open(p)?),
            None => None,
        };
        Ok(Arc::new(EventLog {
            seq: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                events: Vec::new(),
                dropped: 0,
                retain: retain.max(1),
                file,
                failed: None,
            }),
            grew: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            path: path.map(Path::to_path_buf),
        }))
    }

    /// Records an event; returns once it is in memory and, with a file, written — and when
    /// `durable`, fsync'd (a blocking write: action events are rare, and durability before
    /// acting is the point; a pass is made durable by the next action's fsync). From async
    /// code use [`EventLog::record_async`].
    pub fn record(&self, data: ProxyData, durable: bool) -> Arc<ProxyEvent> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let event = Arc::new(ProxyEvent {
            kind: "proxy",
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            ts: now(),
            data,
        });
        let Inner { file, failed, .. } = &mut *inner;
        if let (Some(file), None) = (file.as_mut(), &failed) {
            let mut line = serde_json::to_vec(&*event).unwrap_or_default();
            line.push(b'\n');
            let written = file
                .write_all(&line)
                .and_then(|()| if durable { file.sync_data() } else { Ok(()) });
            if let Err(e) = written {
                let path = self.path.as_deref().unwrap_or(Path::new("?"));
                tracing::error!(
                    "cannot write proxy events to {}: {e}; they are kept in memory only",
                    path.display()
                );
                *failed = Some(e.to_string());
            }
        }
        inner.events.push(event.clone());
        if inner.events.len() > inner.retain {
            let excess = inner.events.len() - inner.retain;
            inner.events.drain(..excess);
            inner.dropped += excess as u64;
        }
        drop(inner);
        self.grew.notify_all();
        self.notify.notify_waiters();
        event
    }

    /// [`EventLog::record`] off the async executor's threads.
    pub async fn record_async(self: &Arc<Self>, data: ProxyData, durable: bool) -> Arc<ProxyEvent> {
        if self.path.is_none() {
            return self.record(data, durable);
        }
        let log = self.clone();
        match tokio::task::spawn_blocking(move || log.record(data, durable)).await {
            Ok(e) => e,
            // The blocking pool is shutting down with the runtime: nothing can be recorded.
            Err(_) => Arc::new(ProxyEvent {
                kind: "proxy",
                seq: 0,
                ts: now(),
                data: ProxyData::placeholder(),
            }),
        }
    }

    /// Records a mark named `name` (durably: a window starts there) and returns its event.
    pub async fn mark(self: &Arc<Self>, name: &str) -> Arc<ProxyEvent> {
        let data = ProxyData {
            action: ProxyAction::Mark,
            message: Some(name.to_string()),
            ..ProxyData::placeholder()
        };
        self.record_async(data, true).await
    }

    /// The sequence number of the last event recorded (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Events with a sequence number above `after`, and how many of those were already
    /// dropped from memory.
    pub fn since(&self, after: u64) -> (Vec<Arc<ProxyEvent>>, u64) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let first_kept = inner.dropped + 1;
        let missing = first_kept.saturating_sub(after + 1);
        let skip = after.saturating_sub(inner.dropped) as usize;
        let events = inner.events.iter().skip(skip).cloned().collect();
        (events, missing)
    }

    /// Every event in memory.
    pub fn all(&self) -> Vec<Arc<ProxyEvent>> {
        self.since(0).0
    }

    /// Blocks until an event with a sequence number above `after` is recorded, or `timeout`.
    pub fn wait_past(&self, after: u64, timeout: std::time::Duration) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (_inner, res) = self
            .grew
            .wait_timeout_while(inner, timeout, |_| self.last_seq() <= after)
            .unwrap_or_else(|p| p.into_inner());
        !res.timed_out()
    }
}

impl EventLog {
    /// Waits until an event with a sequence number above `after` is recorded, or `deadline`.
    pub async fn changed_past(&self, after: u64, deadline: tokio::time::Instant) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.last_seq() > after {
            return;
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

impl ProxyData {
    /// An error of the proxy's own (no statement, no rule) on connection `connection`, told
    /// to the client with `sqlstate`; who the client is, when known, is the caller's to add.
    pub fn own_error(connection: u64, sqlstate: &str, message: &str) -> ProxyData {
        ProxyData {
            message: Some(message.to_string()),
            sqlstate: Some(sqlstate.to_string()),
            connection,
            ..ProxyData::placeholder()
        }
    }

    /// An event of the proxy's own, on no connection.
    fn placeholder() -> ProxyData {
        ProxyData {
            action: ProxyAction::Error,
            query: None,
            rule: None,
            message: Some("the proxy is shutting down".into()),
            sqlstate: None,
            connection: 0,
            database: Arc::from(""),
            user: Arc::from(""),
            application_name: Arc::from(""),
            duration_ms: None,
        }
    }
}

fn now() -> Timestamp {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    Timestamp::from_unix_micros(us)
}

/// The statement as events show it: `PASSWORD '…'` literals replaced by `'[redacted]'`, and
/// cut to [`MAX_QUERY_CHARS`].
pub fn redact(statement: &str) -> String {
    let mut out = String::with_capacity(statement.len().min(MAX_QUERY_CHARS + 4));
    let mut rest = statement;
    while let Some(at) = find_keyword(rest, "password") {
        let after_kw = &rest[at + "password".len()..];
        let trimmed = after_kw.trim_start();
        let gap = after_kw.len() - trimmed.len();
        match literal_len(trimmed) {
            Some(n) => {
                out.push_str(&rest[..at + "password".len() + gap]);
                out.push_str("'[redacted]'");
                rest = &trimmed[n..];
            }
            None => {
                out.push_str(&rest[..at + "password".len()]);
                rest = after_kw;
            }
        }
    }
    out.push_str(rest);
    if out.chars().count() > MAX_QUERY_CHARS {
        let cut: String = out.chars().take(MAX_QUERY_CHARS).collect();
        return cut + "…";
    }
    out
}

/// The byte offset of `kw` (lower case) in `s` as a whole word, ASCII case-insensitively.
fn find_keyword(s: &str, kw: &str) -> Option<usize> {
    let b = s.as_bytes();
    let n = kw.len();
    (0..b.len().saturating_sub(n - 1)).find(|&i| {
        b[i..i + n].eq_ignore_ascii_case(kw.as_bytes())
            && (i == 0 || !is_word(b[i - 1]))
            && b.get(i + n).is_none_or(|&c| !is_word(c))
    })
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The length of the string literal at the head of `s`: `'…'` (with `''`), `E'…'` (with
/// backslash escapes too), or `$tag$…$tag$`. `None` when `s` does not start with one.
fn literal_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    match b.first()? {
        b'\'' => quoted_len(b, 0, false),
        b'E' | b'e' if b.get(1) == Some(&b'\'') => quoted_len(b, 1, true),
        b'$' => {
            let close = s[1..].find('$')? + 1;
            let tag = &s[..=close];
            if !tag[1..close]
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_')
            {
                return None;
            }
            let end = s[close + 1..].find(tag)?;
            Some(close + 1 + end + tag.len())
        }
        _ => None,
    }
}

/// A quoted literal starting at `open` (the quote); unterminated: the rest of the text.
fn quoted_len(b: &[u8], open: usize, backslash: bool) -> Option<usize> {
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
    Some(b.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(action: ProxyAction) -> ProxyData {
        ProxyData {
            action,
            query: Some("INSERT INTO t VALUES (1)".into()),
            rule: Some(Arc::from("error:INSERT*:disk full")),
            message: Some("disk full".into()),
            sqlstate: Some("XX000".into()),
            connection: 3,
            database: Arc::from("app"),
            user: Arc::from("bob"),
            application_name: Arc::from("svc"),
            duration_ms: None,
        }
    }

    #[test]
    fn passwords_are_redacted() {
        for (input, want) in [
            (
                "ALTER ROLE bob PASSWORD 'hunter2'",
                "ALTER ROLE bob PASSWORD '[redacted]'",
            ),
            (
                "create user x with password  'a''b' valid until 'x'",
                "create user x with password  '[redacted]' valid until 'x'",
            ),
            (
                "ALTER ROLE bob ENCRYPTED PASSWORD E'a\\'b'; SELECT 1",
                "ALTER ROLE bob ENCRYPTED PASSWORD '[redacted]'; SELECT 1",
            ),
            (
                "ALTER ROLE bob PASSWORD $p$se'cret$p$",
                "ALTER ROLE bob PASSWORD '[redacted]'",
            ),
            (
                "ALTER ROLE bob PASSWORD NULL",
                "ALTER ROLE bob PASSWORD NULL",
            ),
            ("SELECT password FROM users", "SELECT password FROM users"),
            (
                "SELECT 1 WHERE passwords = 'x'",
                "SELECT 1 WHERE passwords = 'x'",
            ),
            (
                "ALTER ROLE a PASSWORD 'unterminated",
                "ALTER ROLE a PASSWORD '[redacted]'",
            ),
        ] {
            assert_eq!(redact(input), want, "for {input:?}");
        }
    }

    #[test]
    fn long_statements_are_cut() {
        let long = "x".repeat(MAX_QUERY_CHARS + 10);
        let r = redact(&long);
        assert_eq!(r.chars().count(), MAX_QUERY_CHARS + 1);
        assert!(r.ends_with('…'));
    }

    #[test]
    fn events_are_numbered_written_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = EventLog::open(Some(&path), 2).unwrap();
        let a = log.record(data(ProxyAction::Error), true);
        log.record(data(ProxyAction::Delay), false);
        log.record(data(ProxyAction::Drop), true);
        assert_eq!(a.seq, 1);
        assert_eq!(log.last_seq(), 3);
        let (kept, missing) = log.since(0);
        assert_eq!(missing, 1, "the first event was dropped from memory");
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(log.since(2).0.len(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["type"], "proxy");
        assert_eq!(lines[0]["seq"], 1);
        assert_eq!(lines[0]["data"]["action"], "error");
        assert_eq!(lines[1]["data"]["action"], "delay");
        assert_eq!(lines[0]["data"]["query"], "INSERT INTO t VALUES (1)");
        assert_eq!(lines[0]["data"]["connection"], 3);
        assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
    }
}
