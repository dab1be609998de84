//! The decode thread's half of reading a snapshot while the stream runs: chunks read between
//! a low and a high watermark, reconciled with the changes the stream brings between them
//! (DBLog, Andreakis and Papapanagiotou, 2020). The other half, which reads the chunks and
//! emits the watermarks, is `backfill.rs`.
//!
//! A watermark is a transactional logical message, decoded at its commit in commit order with
//! every other transaction. The chunk is read in a snapshot taken after the low watermark
//! committed and before the high one did, so:
//! * a change the stream brings before the low watermark is in the chunk's rows, and was
//!   handed on before them; one after the high watermark is not, and goes after them;
//! * a change between the two may or may not be: the chunk's row of every key changed there is
//!   dropped, and that key's changes stand for it (they were handed on in stream order).
//!
//! The chunk's remaining rows go out as READ events at the high watermark, as part of its
//! transaction: the sinks acknowledge them with it, and the slot's confirmed position passes
//! the high watermark only once they are durable.
//!
//! The chunk is discarded (read again) when that would not be exact:
//! * the table has no key: a change in the window cannot be matched to a row;
//! * the table was truncated in the window;
//! * an UPDATE in the window left a TOASTed value out (it was unchanged): a consumer that
//!   never had the row would never get that value;
//! * a transaction the decode thread saw commit before the low watermark was still in
//!   progress in the chunk's snapshot. A commit record is written before the transaction
//!   becomes visible (xact.c `RecordTransactionCommit`, then `ProcArrayEndTransaction`), so a
//!   snapshot taken just after the low watermark can miss one that the stream put before it.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::event::{Event, Lsn, Op, Row, Timestamp};
use crate::pg::snapshot::SnapshotRows;
use crate::snapshot_request::Request;

/// Transactions remembered as committed before a low watermark (the race above is between
/// transactions committing at the same moment, so the last few thousand cover it).
const RECENT_XIDS: usize = 4096;

/// A watermark's content: which run and chunk, low or high, and the table's relation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Watermark {
    pub run: String,
    pub chunk: u64,
    pub high: bool,
    pub rel: u32,
}

/// What the decode thread tells the backfill: the rows it handed on, and the requests for
/// more it found in the stream.
#[derive(Debug)]
pub enum Note {
    /// Rows of the plan's table `table` were handed on, `rows` of them, up to the chunk key
    /// `after` (`done`: its last); every one is in batch `seq` or an earlier one. `chunk` is
    /// the watermarked chunk they came from, if they did.
    Rows {
        table: usize,
        chunk: Option<u64>,
        rows: u64,
        /// Rows of the chunk dropped because the stream changed them in the window.
        dropped: u64,
        after: Option<Vec<String>>,
        done: bool,
        seq: u64,
    },
    /// The watermarked chunk `chunk` of table `table` was discarded, for `why`: read it again.
    Discarded {
        table: usize,
        chunk: u64,
        why: &'static str,
    },
    /// A snapshot request for this slot (`walwatch snapshot`), committed at `at`. The decode
    /// thread waits for `taken` before it goes on, so the stream cannot be confirmed past the
    /// request before the backfill has it in the slot's record.
    Request {
        request: Request,
        at: Lsn,
        taken: tokio::sync::oneshot::Sender<()>,
    },
}

/// What a decoded event was to the windows.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// Not one of walwatch's snapshot messages: it goes on.
    Other,
    /// A watermark, or a request for another slot: for no one else to see.
    Own,
    /// A request for this slot, committed at the position.
    Request(Request, Lsn),
}

/// A window open between a low watermark and its high one.
#[derive(Debug, Default)]
pub(super) struct Window {
    chunk: u64,
    rel: u32,
    /// Keys of the table's rows changed in the window.
    keys: HashSet<String>,
    /// Keys whose change in the window left a TOASTed value out.
    toasted: HashSet<String>,
    changed: bool,
    truncated: bool,
    /// Transactions that committed before the low watermark.
    before: HashSet<u32>,
}

/// A chunk whose high watermark arrived: its rows, its window, and the high watermark's
/// place in the stream, which the READ events take.
pub(super) struct Ready {
    pub rows: SnapshotRows,
    pub window: Window,
    pub lsn: Lsn,
    pub commit_lsn: Lsn,
    pub ts: Option<Timestamp>,
}

/// What the decode thread knows of the watermarked chunks of this run.
#[derive(Default)]
pub(super) struct Windows {
    /// This run's watermarks say this: others' (a run before a crash) are ignored.
    pub run: Option<String>,
    /// The slot: requests for it are taken, others' ignored.
    pub slot: Option<String>,
    /// Chunks read, waiting for their high watermark.
    pending: HashMap<u64, SnapshotRows>,
    open: Option<Window>,
    /// Transactions decoded, most recent last.
    recent: VecDeque<u32>,
    xid: Option<u32>,
    /// A chunk whose high watermark was just decoded.
    pub ready: Option<Ready>,
    /// A chunk (table, chunk) whose high watermark came without its low one.
    pub lost: Option<(usize, u64)>,
}

impl Windows {
    /// A chunk read between watermarks arrived (before its high watermark: it was queued
    /// before the high watermark was emitted).
    pub fn hold(&mut self, rows: SnapshotRows) {
        if let Some(w) = &rows.window {
            self.pending.insert(w.chunk, rows);
        }
    }

    /// Notes what a decoded event says about the open window, and what it is.
    pub fn observe(&mut self, ev: &Event) -> Seen {
        match ev.op {
            Op::Begin => self.xid = ev.xid,
            Op::Commit => {
                if let Some(xid) = self.xid.take() {
                    if self.recent.len() == RECENT_XIDS {
                        self.recent.pop_front();
                    }
                    self.recent.push_back(xid);
                }
            }
            Op::Insert | Op::Update | Op::Delete | Op::Truncate => self.change(ev),
            Op::Message => {
                if let Some(content) = crate::marker::backfill_content(ev) {
                    if let Ok(w) = serde_json::from_str::<Watermark>(content) {
                        self.watermark(ev, w);
                    } else if let Ok(r) = serde_json::from_str::<Request>(content)
                        && self.slot.is_some()
                        && crate::marker::scope_of(ev) == self.slot.as_deref()
                    {
                        return Seen::Request(r, ev.commit_lsn);
                    }
                    return Seen::Own;
                }
            }
            _ => {}
        }
        Seen::Other
    }

    fn change(&mut self, ev: &Event) {
        let Some(w) = &mut self.open else { return };
        if ev.relation.as_ref().is_none_or(|r| r.oid != w.rel) {
            return;
        }
        w.changed = true;
        if ev.op == Op::Truncate {
            w.truncated = true;
            return;
        }
        for key in keys_of(ev) {
            if !ev.unchanged.is_empty() {
                w.toasted.insert(key.clone());
            }
            w.keys.insert(key);
        }
    }

    fn watermark(&mut self, ev: &Event, w: Watermark) {
        if self.run.as_deref() != Some(w.run.as_str()) {
            return;
        }
        if !w.high {
            self.open = Some(Window {
                chunk: w.chunk,
                rel: w.rel,
                before: self.recent.iter().copied().collect(),
                ..Window::default()
            });
            return;
        }
        let window = self.open.take_if(|o| o.chunk == w.chunk);
        let Some(rows) = self.pending.remove(&w.chunk) else {
            return; // a high watermark replayed after a reconnect: its chunk went out
        };
        let Some(window) = window else {
            // A reconnect resumed the stream past the low watermark: the window's changes are
            // not all known.
            self.lost = Some((rows.table, w.chunk));
            return;
        };
        self.ready = Some(Ready {
            rows,
            window,
            lsn: ev.lsn,
            commit_lsn: ev.commit_lsn,
            ts: ev.ts,
        });
    }

    /// A new connection replays the stream from what is durable: a window opened on the old
    /// one opens again with its low watermark.
    pub fn reset(&mut self) {
        self.open = None;
        self.xid = None;
    }
}

impl Window {
    /// Why the whole chunk must be read again, if it must (before looking at its keys).
    pub fn discard(&self, ready: &SnapshotRows) -> Option<&'static str> {
        let w = ready.window.as_ref()?;
        if self.truncated {
            return Some("the table was truncated while the chunk was read");
        }
        if !w.keyed && self.changed {
            return Some("the table, which has no key, changed while the chunk was read");
        }
        if w.in_progress.iter().any(|x| self.before.contains(x)) {
            return Some(
                "a transaction committed just before the chunk's low watermark was not yet \
                 visible to its snapshot",
            );
        }
        None
    }

    /// Whether the chunk's row `ev` is superseded by the window's changes (`Some(true)`), or
    /// discards the chunk (`None`: its key's change left a TOASTed value out).
    pub fn drops(&self, ev: &Event) -> Option<bool> {
        let Some(key) = keys_of(ev).into_iter().next() else {
            return Some(false);
        };
        if self.toasted.contains(&key) {
            return None;
        }
        Some(self.keys.contains(&key))
    }
}

/// The keys (new, and old when it differs) of a row event, comparable between READ rows and
/// changes: both are decoded from the server's text by the same registry into the same values,
/// and `Value`'s Debug form is exact (floats print round-trip).
fn keys_of(ev: &Event) -> Vec<String> {
    let Some(key) = &ev.key else {
        return Vec::new();
    };
    let mut out = vec![key_string(key)];
    if let Some(old) = &ev.old {
        let projected: Option<Vec<String>> = key
            .columns
            .iter()
            .map(|c| {
                old.columns
                    .iter()
                    .find(|o| o.name == c.name)
                    .map(|o| format!("{:?}", o.value))
            })
            .collect();
        if let Some(p) = projected {
            let s = p.join("\u{1f}");
            if s != out[0] {
                out.push(s);
            }
        }
    }
    out
}

fn key_string(key: &Row) -> String {
    key.columns
        .iter()
        .map(|c| format!("{:?}", c.value))
        .collect::<Vec<_>>()
        .join("\u{1f}")
}
