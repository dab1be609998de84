//! Reconnecting after a lost replication connection: which failures are worth it, how long to
//! wait between attempts, and reopening the stream from what every sink has made durable.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Progress;
use crate::error::{Error, Result};
use crate::event::Lsn;
use crate::pg::stream::ReplStream;

/// Reopens the replication stream after a transient failure, from the given position (what is
/// durable). It checks the slot first: a slot dropped, invalidated or moved meanwhile is a
/// definite error, never a silent jump.
pub type Reopen =
    Box<dyn FnMut(Lsn) -> Pin<Box<dyn Future<Output = Result<ReplStream>> + Send>> + Send>;

/// Reconnecting after a lost connection (permanent slots only: a temporary slot is gone with
/// its connection).
pub struct Retry {
    pub reopen: Reopen,
    /// How long to keep trying after a failure; `None` for ever.
    pub retry_for: Option<Duration>,
}

/// First and largest delay between reconnection attempts.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The delay before attempt `n` (1-based): exponential, capped, with "full jitter" in its
/// upper half so that many clients cut off together do not reconnect in lockstep.
fn backoff(n: u32) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // 0.5 .. 1.0 of the base, from the clock's low bits (no need for a random generator).
    let frac = 0.5 + f64::from(nanos % 1000) / 2000.0;
    base.mul_f64(frac)
}

/// Whether a failure of the replication stream is worth reconnecting for.
pub(super) fn retryable(e: &Error) -> bool {
    e.is_transient() || matches!(e, Error::SlotInUse(_))
}

/// After a lost connection: waits (backing off) and reopens the stream from what is durable,
/// until it works, `retry_for` passes (`Err(failure)`), or shutdown (`Ok(None)`).
pub(super) async fn reconnect(
    retry: &mut Retry,
    progress: &watch::Receiver<Progress>,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    failure: Error,
) -> Result<Option<ReplStream>> {
    let gave_up_at = retry.retry_for.map(|d| Instant::now() + d);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let delay = backoff(attempt);
        if gave_up_at.is_some_and(|t| Instant::now() + delay > t) {
            return Err(failure);
        }
        tokio::select! {
            biased;
            _ = shutdown.as_mut() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        let from = progress.borrow().durable;
        match (retry.reopen)(from).await {
            Ok(s) => {
                tracing::info!("reconnected (attempt {attempt}); resuming from {from}");
                return Ok(Some(s));
            }
            Err(e) if retryable(&e) => {
                tracing::warn!(
                    "reconnect attempt {attempt} failed: {e}; next in about {:.1?}",
                    backoff(attempt + 1)
                );
            }
            Err(e) => return Err(e),
        }
    }
}
