//! Exactly-once output over an at-least-once stream.
//!
//! After a restart or a reconnect the server replays every transaction that commits at or after
//! the slot's confirmed position, and walwatch confirms a position only after its sinks have
//! made it durable. So a sink may be handed again what it already holds: whole transactions,
//! and the first part of the transaction it was writing when the run stopped.
//!
//! What a sink holds is summed up by one [`Tally`]: the position key of the last event written
//! and how many events with that key precede the end. Keys never go back in a stream, because
//! the server sends transactions in commit order and decodes non-transactional messages in WAL
//! order:
//! * a transactional event's key is its `commit_lsn`, shared by every event of the transaction
//!   (several rows of one multi-row INSERT or COPY may even share one `lsn`, so `lsn` could not
//!   tell them apart, but their rank within the transaction can);
//! * a non-transactional message's key is its own `lsn` (its `commit_lsn` is set to it).
//!
//! The events a sink is given for one key are the same, in the same order, on every replay (the
//! same WAL through the same filter), so skipping the first `count` events of the last key and
//! everything before it writes each event once.

use crate::event::{Event, Lsn};

/// How far a sink got: the last key written, and how many events it wrote with that key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub key: Lsn,
    pub count: u64,
}

impl Tally {
    /// The position key of an event: its transaction's commit LSN.
    pub fn key_of(ev: &Event) -> Lsn {
        ev.commit_lsn
    }

    /// Counts one written event.
    pub fn note(&mut self, ev: &Event) {
        let key = Tally::key_of(ev);
        if key == self.key {
            self.count += 1;
        } else {
            self.key = key;
            self.count = 1;
        }
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Skips the events a sink already holds when the stream replays them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Resume {
    held: Option<Tally>,
    /// Events with the held key seen so far in this replay.
    seen: u64,
}

impl Resume {
    /// Skip everything up to and including `held` (nothing when it is empty).
    pub fn after(held: Tally) -> Resume {
        Resume {
            held: (!held.is_empty()).then_some(held),
            seen: 0,
        }
    }

    /// Whether the replay is still inside what is held.
    #[cfg(test)]
    pub fn active(&self) -> bool {
        self.held.is_some()
    }

    /// True to write `ev`, false when the sink already holds it.
    pub fn admit(&mut self, ev: &Event) -> bool {
        let Some(held) = self.held else {
            return true;
        };
        let key = Tally::key_of(ev);
        if key < held.key {
            return false;
        }
        if key == held.key && self.seen < held.count {
            self.seen += 1;
            return false;
        }
        // Past what is held: from here on everything is new.
        self.held = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Op;

    fn ev(commit: u64, lsn: u64) -> Event {
        let mut e = Event::new(Op::Insert, Lsn(lsn));
        e.commit_lsn = Lsn(commit);
        e
    }

    #[test]
    fn tally_counts_events_of_the_last_key() {
        let mut t = Tally::default();
        assert!(t.is_empty());
        for e in [ev(10, 1), ev(10, 2), ev(20, 15), ev(20, 15), ev(20, 16)] {
            t.note(&e);
        }
        assert_eq!(
            t,
            Tally {
                key: Lsn(20),
                count: 3
            }
        );
    }

    #[test]
    fn replay_skips_what_is_held_even_rows_sharing_an_lsn() {
        // Held: all of txn 10 and the first two rows of txn 20 (a COPY: one lsn for all rows).
        let held = Tally {
            key: Lsn(20),
            count: 2,
        };
        let mut r = Resume::after(held);
        let replay = [
            ev(10, 1),
            ev(10, 2),
            ev(20, 15),
            ev(20, 15),
            ev(20, 15),
            ev(30, 25),
        ];
        let written: Vec<(u64, usize)> = replay
            .iter()
            .enumerate()
            .filter(|(_, e)| r.admit(e))
            .map(|(i, e)| (e.commit_lsn.0, i))
            .collect();
        assert_eq!(written, vec![(20, 4), (30, 5)]);
        assert!(!r.active());
    }

    #[test]
    fn a_complete_last_transaction_is_skipped_whole() {
        let mut r = Resume::after(Tally {
            key: Lsn(20),
            count: 2,
        });
        assert!(!r.admit(&ev(20, 15)));
        assert!(!r.admit(&ev(20, 16)));
        assert!(r.active(), "still inside what is held until a later key");
        assert!(r.admit(&ev(21, 21)));
        // Nothing held: everything is written.
        let mut fresh = Resume::after(Tally::default());
        assert!(fresh.admit(&ev(1, 1)));
    }
}
