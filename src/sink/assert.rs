//! The assertion sink: every event the session emits, kept in memory for [`crate::Watch`]'s
//! assertions, with a wake-up for whoever waits on new events.
//!
//! Written from the sink's thread in the pipeline, read from async tasks. Memory is bounded: past
//! `retain` events the oldest are dropped, and an assertion that still needed them is told
//! so instead of silently examining fewer events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{Batch, Sink};
use crate::error::Result;
use crate::event::{Event, Lsn};

/// The events of one watch, numbered from 0 in stream order.
pub struct EventLog {
    inner: Mutex<Inner>,
    notify: Notify,
}

struct Inner {
    events: VecDeque<Arc<Event>>,
    /// The number of the oldest event still held.
    first: u64,
    retain: usize,
    /// Why the stream ended, once it has.
    ended: Option<String>,
}

/// The events from a position on, and where the next read starts.
pub struct Slice {
    pub events: Vec<Arc<Event>>,
    pub next: u64,
    /// Events that were wanted but already dropped (the `retain` limit).
    pub dropped: u64,
    pub ended: Option<String>,
}

impl EventLog {
    pub fn new(retain: usize) -> Arc<EventLog> {
        Arc::new(EventLog {
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                first: 0,
                retain: retain.max(1),
                ended: None,
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (pushes are single steps).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, e: Event) {
        self.push_all(std::slice::from_ref(&e));
    }

    /// Appends events in order, under one lock, with one wake-up.
    pub fn push_all(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        {
            let mut inner = self.lock();
            for e in events {
                if inner.events.len() == inner.retain {
                    inner.events.pop_front();
                    inner.first += 1;
                }
                inner.events.push_back(Arc::new(e.clone()));
            }
        }
        self.notify.notify_waiters();
    }

    /// Marks the stream as ended (`why` is told to waiting assertions).
    pub fn end(&self, why: String) {
        self.lock().ended.get_or_insert(why);
        self.notify.notify_waiters();
    }

    /// The number the next event will get.
    pub fn next_seq(&self) -> u64 {
        let inner = self.lock();
        inner.first + inner.events.len() as u64
    }

    /// Events numbered `from` up to the newest.
    pub fn since(&self, from: u64) -> Slice {
        let inner = self.lock();
        let start = from.max(inner.first);
        let skip = (start - inner.first) as usize;
        Slice {
            events: inner.events.iter().skip(skip).cloned().collect(),
            next: inner.first + inner.events.len() as u64,
            dropped: start - from,
            ended: inner.ended.clone(),
        }
    }

    /// Waits until an event numbered `seq` or later exists, the stream ends, or `deadline`.
    pub async fn wait_past(&self, seq: u64, deadline: tokio::time::Instant) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let inner = self.lock();
            if inner.first + inner.events.len() as u64 > seq || inner.ended.is_some() {
                return;
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// The sink that feeds an [`EventLog`].
pub struct AssertSink(pub Arc<EventLog>);

impl Sink for AssertSink {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        self.0.push_all(&batch.events);
        Ok(())
    }

    /// Memory is delivered, not durable: it acknowledges at once.
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
        Ok(written)
    }

    fn describe(&self) -> String {
        "the watch's event log".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Lsn, Op};

    #[test]
    fn retains_a_bounded_window_and_says_what_was_dropped() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.push(Event::new(Op::Insert, Lsn(i)));
        }
        let s = log.since(0);
        assert_eq!(s.dropped, 2);
        assert_eq!(s.next, 5);
        let lsns: Vec<u64> = s.events.iter().map(|e| e.lsn.0).collect();
        assert_eq!(lsns, vec![2, 3, 4]);
        assert_eq!(log.since(4).events.len(), 1);
        assert!(log.since(5).events.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_a_push_from_another_thread() {
        let log = EventLog::new(10);
        let writer = log.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            writer.push(Event::new(Op::Insert, Lsn(1)));
        });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        log.wait_past(0, deadline).await;
        assert_eq!(log.next_seq(), 1, "woke before the push or timed out");
        t.join().unwrap();
    }
}
