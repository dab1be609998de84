//! Memory in flight between the decode thread and the sinks, counted in bytes.
//!
//! A batch reserves its estimated size before it is queued and gives it back when the last
//! sink drops it, so however large the rows (1 MB each, or a streamed transaction of millions)
//! and however slow a sink, what waits between the stages stays under the cap: the decode
//! thread blocks instead, which stops it taking frames, which stops the socket reads.
//! (The socket-to-decoder hand-off, on the async side, counts its bytes with a tokio
//! semaphore instead: `replication.rs`.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::event::{Column, Event, Row, Value};

/// A cap on bytes in flight, with blocking reservations.
pub struct Budget {
    cap: usize,
    used: Mutex<usize>,
    freed: Condvar,
    /// Set when the run is being abandoned (a sink failed): nobody waits for room any more.
    aborted: AtomicBool,
}

/// Bytes held in a [`Budget`], given back on drop.
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: usize,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({} bytes)", self.bytes)
    }
}

impl Budget {
    pub fn new(cap: usize) -> Arc<Budget> {
        Arc::new(Budget {
            cap: cap.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
            aborted: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `bytes` fit, then holds them. One reservation larger than the whole cap
    /// waits for an empty budget and takes all of it (a single huge row still goes through,
    /// alone). `None` when the budget was aborted while waiting.
    pub fn reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let bytes = bytes.min(self.cap);
        let mut used = self.lock();
        while *used + bytes > self.cap {
            if self.aborted.load(Ordering::Acquire) {
                return None;
            }
            // A timeout as well as the wake-up: an abort from a thread that could not take
            // the lock is still seen.
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += bytes;
        Some(Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Stops every wait for room, now and later.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        let _guard = self.lock();
        self.freed.notify_all();
    }

    /// Bytes reserved now.
    #[cfg(test)]
    fn used(&self) -> usize {
        *self.lock()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.budget.lock();
        *used -= self.bytes;
        drop(used);
        self.budget.freed.notify_all();
    }
}

/// An estimate of the memory an event holds: the struct, its rows' columns and the values'
/// heap data. Cheap (no allocation, one pass over the columns); it undercounts allocator
/// overhead, which the caps leave room for.
pub fn footprint(ev: &Event) -> usize {
    fn value(v: &Value) -> usize {
        match v {
            Value::Bytea(b) => b.len(),
            Value::Json(j) => j.get().len(),
            Value::Array(items) => items
                .iter()
                .map(|i| std::mem::size_of::<Value>() + value(i))
                .sum(),
            other => other.as_str().map_or(0, str::len),
        }
    }
    fn row(r: &Option<Row>) -> usize {
        r.as_ref().map_or(0, |r| {
            r.columns
                .iter()
                .map(|c| std::mem::size_of::<Column>() + value(&c.value))
                .sum()
        })
    }
    std::mem::size_of::<Event>()
        + row(&ev.data)
        + row(&ev.old)
        + row(&ev.key)
        + ev.message
            .as_ref()
            .map_or(0, |m| m.prefix.len() + m.content.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_reservation_waits_for_room_and_gives_it_back_on_drop() {
        let b = Budget::new(100);
        let first = b.reserve(60).unwrap();
        assert_eq!(b.used(), 60);
        let waiter = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let r = b.reserve(60).unwrap();
                (Instant::now(), r.bytes)
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            b.used(),
            60,
            "the second reservation must wait while the first holds"
        );
        let released = Instant::now();
        drop(first);
        let (got, bytes) = waiter.join().unwrap();
        assert!(
            got >= released,
            "the waiter went before the room was given back"
        );
        assert_eq!(bytes, 60);
        assert_eq!(b.used(), 0, "a dropped reservation gives its bytes back");
    }

    #[test]
    fn one_item_larger_than_the_cap_goes_alone() {
        let b = Budget::new(100);
        let huge = b.reserve(1_000_000).unwrap();
        assert_eq!(b.used(), 100);
        drop(huge);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn abort_frees_a_waiter() {
        let b = Budget::new(10);
        let _hold = b.reserve(10).unwrap();
        let waiter = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || b.reserve(5).is_none())
        };
        b.abort();
        assert!(
            waiter.join().unwrap(),
            "an aborted wait gives no reservation"
        );
    }
}
