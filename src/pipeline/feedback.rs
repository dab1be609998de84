//! Standby status updates: the one place that tells the server what was received and what is
//! durable, keeping both monotonic.
//!
//! For a logical slot the server advances `confirmed_flush_lsn` from `flush` only
//! (src/backend/replication/walsender.c, ProcessStandbyReplyMessage() ->
//! LogicalConfirmReceivedLocation()), so `flush` (and `apply`) is what every sink has
//! acknowledged, never more. Updates go out at least every status interval (which must stay
//! under `wal_sender_timeout / 2`), when a keepalive asks for one, and when the durable
//! position moves (at once after a quiet spell, then at most every 100 ms: `replication.rs`).

use crate::event::Lsn;
use crate::pg::error::PgError;
use crate::pg::stream::ReplStream;

/// Test only: with `WALWATCH_TEST_HOLD_CONFIRM=1` in its environment, walwatch writes and
/// acknowledges its sinks as always but never confirms more than where the run started, so
/// the slot stays behind the files. Tests use it to make a restart certainly replay what a file
/// already holds (tests/durable.rs). Not a feature: it makes the server keep WAL for ever.
const HOLD_CONFIRM_ENV: &str = "WALWATCH_TEST_HOLD_CONFIRM";

/// The position confirmations are held at, when [`HOLD_CONFIRM_ENV`] asks for it.
fn held_confirm(start: Lsn) -> Option<Lsn> {
    let hold = std::env::var_os(HOLD_CONFIRM_ENV).is_some_and(|v| v == "1");
    if hold {
        tracing::warn!(
            "{HOLD_CONFIRM_ENV}=1 (for tests only): confirming nothing past {start}, so the slot \
             keeps all WAL after it"
        );
    }
    hold.then_some(start)
}

pub(super) struct Feedback {
    /// The highest WAL end the server has told us of (XLogData or keepalive).
    received: Lsn,
    /// The `flush` last sent.
    flushed: Lsn,
    /// The durable position last reported (what `flush` follows, unless held).
    reported: Lsn,
    hold: Option<Lsn>,
}

impl Feedback {
    pub(super) fn new(start: Lsn) -> Feedback {
        Feedback {
            received: Lsn::ZERO,
            flushed: Lsn::ZERO,
            reported: Lsn::ZERO,
            hold: held_confirm(start),
        }
    }

    /// The server said its WAL reaches `wal_end`.
    pub(super) fn received(&mut self, wal_end: Lsn) {
        self.received = self.received.max(wal_end);
    }

    /// Whether `durable` is news to the server.
    pub(super) fn behind(&self, durable: Lsn) -> bool {
        durable > self.reported
    }

    /// Sends a status update: `write` is what was received, `flush` and `apply` what is
    /// durable in every sink (or less, when confirmations are held). `reply_requested` asks
    /// the server for a keepalive back (how an idle stream learns how far WAL was decoded).
    pub(super) async fn send(
        &mut self,
        stream: &mut ReplStream,
        durable: Lsn,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        let confirm = self.hold.map_or(durable, |h| h.min(durable));
        let flush = self.flushed.max(confirm);
        let write = self.received.max(flush);
        stream
            .send_status(write, flush, flush, reply_requested)
            .await?;
        self.flushed = flush;
        self.reported = self.reported.max(durable);
        Ok(())
    }
}
