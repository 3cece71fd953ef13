//! Leases: every message received and not yet deleted or released, the heartbeat that keeps
//! them invisible while they wait (in the channel, in an open batch, in a slow COPY, in a
//! retry), and their release at the end of a run.
//!
//! Without a heartbeat, a message held longer than its visibility timeout reappears and is
//! processed again elsewhere: no second row (the ledger sees to that), but wasted work, a rising
//! receive count and, eventually, a false `poison:receive_count`. The heartbeat extends every
//! lease older than half the timeout with `ChangeMessageVisibilityBatch`; it ticks every quarter
//! timeout, so a lease is extended between 1/2 and 3/4 of the way to expiry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sqs::{AckHandle, MessageSource, SQS_BATCH_LIMIT};

/// ChangeMessageVisibilityBatch calls in flight at once (heartbeat and release).
const CONCURRENT_CALLS: usize = 8;
/// The longest the final release may take when no shutdown deadline bounds it.
pub const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

/// A held message, known by its receipt handle (so the map keeps one copy of each handle).
#[derive(Debug)]
struct Held(AckHandle);

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.0.receipt_handle == other.0.receipt_handle
    }
}

impl Eq for Held {}

impl std::hash::Hash for Held {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.receipt_handle.hash(state);
    }
}

impl std::borrow::Borrow<str> for Held {
    fn borrow(&self) -> &str {
        &self.0.receipt_handle
    }
}

/// The messages we hold, by receipt handle, with when their visibility was last set. Every
/// message passes through here twice (held, then forgotten), so the map hashes with foldhash
/// (receipt handles come from SQS, not from message senders).
#[derive(Debug, Default)]
pub struct Leases {
    held: Mutex<HashMap<Held, Instant, foldhash::fast::RandomState>>,
}

impl Leases {
    /// Records freshly received messages (their visibility was just set by the receive).
    pub fn hold<'a>(&self, acks: impl IntoIterator<Item = &'a AckHandle>) {
        let now = Instant::now();
        let mut held = self.held.lock().expect("lease lock");
        for ack in acks {
            held.insert(Held(ack.clone()), now);
        }
        crate::telemetry::metrics::record_in_flight(held.len());
    }

    /// True when nothing is held: everything received was deleted or given up on.
    pub fn is_empty(&self) -> bool {
        self.held.lock().expect("lease lock").is_empty()
    }

    /// Forgets messages that were deleted (or given up on).
    pub fn forget(&self, acks: &[AckHandle]) {
        let mut held = self.held.lock().expect("lease lock");
        for ack in acks {
            held.remove(ack.receipt_handle.as_str());
        }
        crate::telemetry::metrics::record_in_flight(held.len());
    }

    /// Leases last set before `before`.
    fn due(&self, before: Instant) -> Vec<AckHandle> {
        let held = self.held.lock().expect("lease lock");
        held.iter()
            .filter(|(_, at)| **at < before)
            .map(|(lease, _)| lease.0.clone())
            .collect()
    }

    fn extended(&self, acks: &[AckHandle], at: Instant) {
        let mut held = self.held.lock().expect("lease lock");
        for ack in acks {
            if let Some(last_set) = held.get_mut(ack.receipt_handle.as_str()) {
                *last_set = at;
            }
        }
    }

    fn take_all(&self) -> Vec<AckHandle> {
        let mut held = self.held.lock().expect("lease lock");
        crate::telemetry::metrics::record_in_flight(0);
        held.drain().map(|(lease, _)| lease.0).collect()
    }
}

/// Extends held leases until `done` is cancelled. Failures are logged and tried again on the
/// next tick; a message whose lease lapses anyway comes back and is skipped by the ledger.
pub async fn heartbeat<S: MessageSource>(
    source: Arc<S>,
    leases: Arc<Leases>,
    visibility: Duration,
    done: CancellationToken,
) -> u64 {
    let mut extended = 0u64;
    let mut tick = tokio::time::interval((visibility / 4).max(Duration::from_millis(250)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return extended,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        // Early after boot the monotonic clock may be younger than half the timeout.
        let Some(cutoff) = now.checked_sub(visibility / 2) else {
            continue;
        };
        let due = leases.due(cutoff);
        let chunks: Vec<Vec<AckHandle>> = due.chunks(SQS_BATCH_LIMIT).map(<[_]>::to_vec).collect();
        let mut calls = stream::iter(chunks)
            .map(|chunk| {
                let source = source.clone();
                async move {
                    let result = source.change_visibility(&chunk, visibility).await;
                    (chunk, result)
                }
            })
            .buffer_unordered(CONCURRENT_CALLS);
        loop {
            // Stop at once when told, even mid-round: a call to an unreachable SQS can take a
            // minute, and a shutdown deadline must not wait for it.
            let next = tokio::select! {
                _ = done.cancelled() => return extended,
                next = calls.next() => next,
            };
            let Some((chunk, result)) = next else { break };
            match result {
                Ok(refused) => {
                    // Refused entries (usually deleted meanwhile) are tried again next tick;
                    // the deleter or the final release forgets them.
                    let ok: Vec<AckHandle> =
                        chunk.into_iter().filter(|a| !refused.contains(a)).collect();
                    extended += ok.len() as u64;
                    leases.extended(&ok, now);
                }
                Err(error) => {
                    tracing::warn!(%error, messages = chunk.len(), "visibility heartbeat failed")
                }
            }
        }
        if !due.is_empty() {
            tracing::debug!(messages = due.len(), "visibility extended");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(n: u32) -> AckHandle {
        AckHandle {
            message_id: format!("m{n}"),
            receipt_handle: format!("r{n}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leases_fall_due_after_half_the_timeout() {
        let leases = Leases::default();
        leases.hold(&[ack(1), ack(2)]);
        let half = Duration::from_secs(15);
        assert!(leases.due(Instant::now() - half).is_empty());
        tokio::time::advance(Duration::from_secs(16)).await;
        assert_eq!(leases.due(Instant::now() - half).len(), 2);
        leases.extended(&[ack(1)], Instant::now());
        assert_eq!(leases.due(Instant::now() - half), vec![ack(2)]);
        leases.forget(&[ack(2)]);
        assert!(leases.due(Instant::now() - half).is_empty());
        assert_eq!(leases.take_all(), vec![ack(1)]);
        assert!(leases.take_all().is_empty());
    }
}
