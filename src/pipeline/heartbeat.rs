//! The heartbeat, which keeps held messages invisible while they wait, extending every lease
//! older than half the visibility timeout (see [`super::lease`] for why and how it feeds the
//! window), and the release of whatever is still held at the end of a run.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::{Leases, CONCURRENT_CALLS};
use super::window::Congestion;
use crate::sqs::{AckHandle, MessageSource, SQS_BATCH_LIMIT};

/// The longest the final release may take when no shutdown deadline bounds it.
pub const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

/// The heartbeat's task: extends held leases until `done` is cancelled, and tells the window what it sees. Failures
/// are logged and tried again on the next tick; a message whose lease lapses anyway comes
/// back, joins its lease if we still hold it, or is skipped by the ledger.
pub struct Heartbeat<S> {
    pub source: Arc<S>,
    /// The leases it extends, and whose window it tells what it sees.
    pub leases: Arc<Leases>,
    /// The queue's visibility timeout: leases older than half of it are extended, every
    /// quarter of it.
    pub visibility: Duration,
    /// Cancelled once every delete is done.
    pub done: CancellationToken,
}

impl<S: MessageSource> Heartbeat<S> {
    /// Runs until `done`; returns how many leases it extended.
    pub async fn run(self) -> u64 {
        let Heartbeat {
            source,
            leases,
            visibility,
            done,
        } = self;
        let mut extended = 0u64;
        let period = (visibility / 4).max(Duration::from_millis(250));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = done.cancelled() => return extended,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let due = leases.due(now, visibility);
            if due.lapsed > 0 {
                crate::telemetry::metrics::record_lapsed(due.lapsed as u64);
                tracing::debug!(messages = due.lapsed, "leases lapsed");
                leases.congested(Congestion::Lapsed);
            }
            // The last round did not reach some leases in time: receive nothing more until this
            // one has.
            leases.set_behind(due.lapsed + due.overdue > 0);
            let chunks: Vec<Vec<AckHandle>> = due
                .extend
                .chunks(SQS_BATCH_LIMIT)
                .map(<[_]>::to_vec)
                .collect();
            let mut calls = stream::iter(chunks)
                .map(|chunk| {
                    let source = source.clone();
                    async move {
                        let result = source.change_visibility(&chunk, visibility).await;
                        (chunk, result)
                    }
                })
                .buffer_unordered(CONCURRENT_CALLS);
            // Overrun: the round is still going when the leases it started with could lapse (a
            // lease due at half its timeout, extended only after two more ticks, has a quarter
            // left). Receiving pauses at once (the heartbeat is behind) and the window is cut.
            let overrun = tokio::time::sleep_until(now + 2 * period);
            tokio::pin!(overrun);
            let mut overran = false;
            loop {
                // Stop at once when told, even mid-round: a call to an unreachable SQS can take a
                // minute, and a shutdown deadline must not wait for it.
                let next = tokio::select! {
                    _ = done.cancelled() => return extended,
                    () = &mut overrun, if !overran => {
                        overran = true;
                        leases.set_behind(true);
                        leases.congested(Congestion::HeartbeatOverran);
                        continue;
                    }
                    next = calls.next() => next,
                };
                let Some((chunk, result)) = next else { break };
                match result {
                    Ok(refused) => {
                        let ok: Vec<AckHandle> =
                            chunk.into_iter().filter(|a| !refused.contains(a)).collect();
                        extended += ok.len() as u64;
                        leases.extended(&ok, now);
                        if leases.refused(&refused) > 0 {
                            leases.congested(Congestion::ExtensionRefused);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, messages = chunk.len(), "visibility heartbeat failed")
                    }
                }
            }
            leases.set_behind(false);
            if !due.extend.is_empty() {
                tracing::debug!(messages = due.extend.len(), "visibility extended");
            }
        }
    }
}

/// Makes every message still held visible again at once (visibility 0), so that messages
/// received but never committed are not stuck until their timeout. Best effort, within
/// `bound` ([`RELEASE_DEADLINE`], or what a shutdown deadline leaves). Returns how many were
/// released.
pub async fn release_all<S: MessageSource>(source: &S, leases: &Leases, bound: Duration) -> u64 {
    let held = leases.take_all();
    let mut released = 0;
    let calls = stream::iter(held.chunks(SQS_BATCH_LIMIT))
        .map(|chunk| async move {
            let result = source.change_visibility(chunk, Duration::ZERO).await;
            (chunk.len(), result)
        })
        .buffer_unordered(CONCURRENT_CALLS)
        .for_each(|(n, result)| {
            match result {
                Ok(refused) => released += (n - refused.len()) as u64,
                Err(error) => tracing::warn!(%error, messages = n, "could not release messages; they come back after their visibility timeout"),
            }
            std::future::ready(())
        });
    // A dead SQS must not hold up the exit: what is not released comes back on its own.
    if tokio::time::timeout(bound, calls).await.is_err() {
        tracing::warn!("releasing held messages took too long; the rest come back after their visibility timeout");
    }
    released
}
