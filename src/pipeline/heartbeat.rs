//! The heartbeat, which keeps held messages invisible while they wait, extending every lease
//! older than half the visibility timeout (see [`super::lease`] for why and how it feeds the
//! window), and the release of whatever is still held at the end of a run.
//!
//! Every extension call is in flight on its own: the heartbeat ticks on whatever the calls
//! before it do. A call that gets no answer (a lost request, a connection a proxy holds) delays
//! only the messages it carries, and those are sent again in a call of their own once the call
//! has gone unanswered for longer than calls take (a retransmission timeout, `Rto`), not when
//! the lost call gives up.
//!
//! What the heartbeat asks of a server is bounded whatever happens to the answers, as TCP's
//! is: at most `CALLS_OPEN` (16) calls are open at once, unanswered ones included (a call is
//! given up after the visibility timeout or 15 s, whichever is shorter, when its answer could
//! no longer help, and abandoned at once when it was taken as lost and a call sent after it
//! has been answered); while the server answers nothing, each loss or failure doubles the
//! retransmission timeout (RFC 6298's back-off, once per event, not once per call of a burst);
//! and a failed call's leases wait that timeout before they are sent again. A server that slows
//! down under load therefore gets fewer calls, not more: leases it cannot keep up with lapse,
//! and the window shrinks to what it can serve. The bound is on calls (and so connections),
//! not on the work each asks of the server: a call carries up to ten leases.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lease::{Leases, CONCURRENT_CALLS};
use super::window::Congestion;
use crate::sqs::{AckHandle, MessageSource, SourceError, SourceErrorKind, SQS_BATCH_LIMIT};

/// The longest the final release may take when no shutdown deadline bounds it.
pub const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

/// Extension calls open at once, unanswered ones included: a burst of due leases is sent a few
/// calls at a time, a handful of calls that get no answer cannot stop the others, and a server
/// that stops answering gets no more than this many connections from one heartbeat.
const CALLS_OPEN: usize = 2 * CONCURRENT_CALLS;

/// A failed call's place in [`InFlight::carried`]: no call carries its leases, which wait a
/// retransmission timeout before they are sent again.
const FAILED: u64 = u64::MAX;

/// The heartbeat's task: extends held leases until `done` is cancelled, and tells the window
/// what it sees. Failures are logged and the leases tried again after the retransmission
/// timeout; a message whose lease lapses anyway comes back, joins its lease if we still hold
/// it, or is skipped by the ledger.
pub struct Heartbeat<S> {
    pub source: Arc<S>,
    /// The leases it extends, and whose window it tells what it sees.
    pub leases: Arc<Leases>,
    /// The queue's visibility timeout: leases older than half of it are extended, looked at
    /// every eighth of it.
    pub visibility: Duration,
    /// Cancelled once every delete is done.
    pub done: CancellationToken,
}

/// One extension call's answer: its number, the leases it carried, when it was sent, and what
/// the server said (`None` when the call was abandoned).
type Answer = (
    u64,
    Vec<AckHandle>,
    Instant,
    Option<Result<Vec<AckHandle>, SourceError>>,
);

/// When an unanswered extension call counts as lost: TCP's retransmission timeout (RFC 6298:
/// smoothed latency plus four times its variation), over the answers so far, no shorter than a
/// twentieth of the visibility timeout, doubled for every loss or failure while the server
/// answers nothing (once per event: see [`Rto::lost`]), and never longer than the timeout
/// itself. A server that answers in milliseconds gets
/// a lost call's leases sent again within a tenth of a second at a 2 s timeout, several tries
/// before they lapse; a slow server's late answers are expected, not duplicated (sending again
/// to a server that is merely slow only makes it slower). Our own few lines: no crate offers
/// the estimator alone.
struct Rto {
    smoothed: Option<Duration>,
    variation: Duration,
    floor: Duration,
    ceiling: Duration,
    /// Back-offs since the last answer: the timeout doubles for each.
    backoff: u32,
    /// Counts the back-offs: a call sent before the latest one is part of an event already
    /// counted (a burst of calls lost together doubles the timeout once, as in TCP).
    epoch: u64,
    /// When the latest call to be answered was sent: a call sent no later that goes
    /// unanswered is a lone loss, not a sign that the server is behind.
    answered_sent: Option<Instant>,
}

impl Rto {
    fn new(visibility: Duration) -> Self {
        let floor = (visibility / 20).max(Duration::from_millis(50));
        Self {
            smoothed: None,
            variation: Duration::ZERO,
            floor,
            ceiling: visibility.max(floor),
            backoff: 0,
            epoch: 0,
            answered_sent: None,
        }
    }

    /// A call sent at `sent`, in back-off `epoch`, was taken as lost or failed: unless a call
    /// sent no earlier has been answered, or this event was already counted, wait twice as
    /// long before the next is taken as lost.
    fn lost(&mut self, sent: Instant, epoch: u64) {
        let lone = self.answered_sent.is_some_and(|answered| sent <= answered);
        if lone || epoch != self.epoch {
            return;
        }
        self.backoff = (self.backoff + 1).min(16);
        self.epoch += 1;
    }

    /// Takes in one answered call, sent at `sent` in back-off `epoch`. The back-off ends only
    /// with an answer to a call sent since it began: a late answer to a call from before an
    /// outage says nothing about the server now.
    fn observe(&mut self, sent: Instant, epoch: u64, now: Instant) {
        let latency = now.saturating_duration_since(sent);
        self.answered_sent = self.answered_sent.max(Some(sent));
        if epoch == self.epoch {
            self.backoff = 0;
        }
        match self.smoothed {
            None => {
                self.smoothed = Some(latency);
                self.variation = latency / 2;
            }
            Some(smoothed) => {
                let deviation = latency.abs_diff(smoothed);
                self.variation = self.variation * 3 / 4 + deviation / 4;
                self.smoothed = Some(smoothed * 7 / 8 + latency / 8);
            }
        }
    }

    /// How long a call may go unanswered before its leases are sent again.
    fn timeout(&self) -> Duration {
        let estimate = match self.smoothed {
            Some(smoothed) => smoothed + 4 * self.variation,
            // Nothing answered yet: a quarter of the timeout, a few tries before a lapse.
            None => self.ceiling / 4,
        };
        estimate
            .max(self.floor)
            .saturating_mul(1 << self.backoff)
            .min(self.ceiling)
    }
}

/// An extension call not answered yet.
struct OpenCall {
    sent: Instant,
    /// Counted as overrunning (unanswered for half the timeout).
    overran: bool,
    /// Late enough for its leases to be sent again, and looked at for that.
    looked_at: bool,
    /// The back-off epoch it was sent in.
    epoch: u64,
    /// Cancelled to abandon it.
    abandon: CancellationToken,
}

/// The extension calls in flight, and for each message the call that carries it now.
struct InFlight {
    calls: FuturesUnordered<Pin<Box<dyn Future<Output = Answer> + Send>>>,
    /// By message id: the latest call carrying it (or [`FAILED`]), and when that call was made.
    carried: HashMap<String, (u64, Instant)>,
    /// Calls made and not answered (nor given up).
    open: HashMap<u64, OpenCall>,
    next_call: u64,
}

impl InFlight {
    fn new() -> Self {
        Self {
            calls: FuturesUnordered::new(),
            carried: HashMap::new(),
            open: HashMap::new(),
            next_call: 0,
        }
    }

    /// Of the leases due at `now`, those to send: not carried by any call, or carried by one
    /// unanswered (or failed) for `resend_after`.
    fn to_send(&self, due: Vec<AckHandle>, now: Instant, resend_after: Duration) -> Vec<AckHandle> {
        due.into_iter()
            .filter(|ack| match self.carried.get(&ack.message_id) {
                None => true,
                Some((_, sent)) => now.saturating_duration_since(*sent) >= resend_after,
            })
            .collect()
    }

    /// The next instant an unanswered call becomes late enough for its leases to be sent
    /// again; calls looked at once are not looked at again.
    fn next_resend(&self, resend_after: Duration) -> Option<Instant> {
        self.open
            .values()
            .filter(|call| !call.looked_at)
            .map(|call| call.sent + resend_after)
            .min()
    }

    /// Marks the calls late at `now` as looked at, and tells `rto` of each (a call taken as
    /// lost).
    fn looked_at(&mut self, now: Instant, resend_after: Duration, rto: &mut Rto) {
        for call in self.open.values_mut() {
            if !call.looked_at && call.sent + resend_after <= now {
                call.looked_at = true;
                rto.lost(call.sent, call.epoch);
            }
        }
    }

    /// Abandons the calls taken as lost that were sent before `answered`, when a later call
    /// was answered: they are lost, not slow, and their leases went again in later calls. Each
    /// frees its place at once instead of holding it until it is given up.
    fn abandon_lost(&mut self, answered: Instant) {
        self.open.retain(|_, call| {
            let lost = call.looked_at && call.sent < answered;
            if lost {
                call.abandon.cancel();
            }
            !lost
        });
    }

    /// Sends as many of `acks` as [`CALLS_OPEN`] leaves room for, in calls of up to ten, each
    /// on its own and given up after `visibility` (an extension answered later than that can
    /// no longer help); returns whether some were left for lack of room.
    fn send<S: MessageSource>(
        &mut self,
        source: &Arc<S>,
        acks: Vec<AckHandle>,
        visibility: Duration,
        now: Instant,
        epoch: u64,
    ) -> bool {
        for chunk in acks.chunks(SQS_BATCH_LIMIT) {
            if !self.has_room() {
                return true;
            }
            let call = self.next_call;
            self.next_call += 1;
            for ack in chunk {
                self.carried.insert(ack.message_id.clone(), (call, now));
            }
            let abandon = CancellationToken::new();
            self.open.insert(
                call,
                OpenCall {
                    sent: now,
                    overran: false,
                    looked_at: false,
                    epoch,
                    abandon: abandon.clone(),
                },
            );
            let (source, chunk) = (source.clone(), chunk.to_vec());
            self.calls.push(Box::pin(async move {
                let extension = source.change_visibility(&chunk, visibility);
                let result = tokio::select! {
                    // Abandoned wins over an answer that arrives at the same moment: the
                    // call's place and its leases were already given to later calls.
                    biased;
                    () = abandon.cancelled() => None,
                    result = tokio::time::timeout(visibility, extension) => {
                        Some(result.unwrap_or_else(|_| {
                            Err(SourceError::new(
                                SourceErrorKind::Transient,
                                "ChangeMessageVisibilityBatch",
                                "no answer within the visibility timeout; given up",
                            ))
                        }))
                    }
                };
                (call, chunk, now, result)
            }));
        }
        false
    }

    /// Room for another call.
    fn has_room(&self) -> bool {
        self.open.len() < CALLS_OPEN
    }

    /// Forgets an answered (or abandoned) call; returns it if it was still open. The leases of
    /// one that `failed` and that no later call carries wait from `now` before they are sent
    /// again.
    fn answered(
        &mut self,
        call: u64,
        chunk: &[AckHandle],
        failed: bool,
        now: Instant,
    ) -> Option<OpenCall> {
        let open = self.open.remove(&call);
        for ack in chunk {
            if let Some(carried) = self.carried.get_mut(&ack.message_id) {
                if carried.0 == call {
                    if failed {
                        *carried = (FAILED, now);
                    } else {
                        self.carried.remove(&ack.message_id);
                    }
                }
            }
        }
        open
    }

    /// Forgets the failed marks of leases no longer due (deleted, released or lost).
    fn forget_failed(&mut self, due: &[AckHandle]) {
        if self.carried.values().any(|(call, _)| *call == FAILED) {
            let due: std::collections::HashSet<&str> =
                due.iter().map(|a| a.message_id.as_str()).collect();
            self.carried
                .retain(|id, (call, _)| *call != FAILED || due.contains(id.as_str()));
        }
    }

    /// Calls unanswered for `limit`, not counted before: each is a sign the server is
    /// behind (or lost the call).
    fn newly_overrun(&mut self, now: Instant, limit: Duration) -> usize {
        let mut overrun = 0;
        for call in self.open.values_mut() {
            if !call.overran && now.saturating_duration_since(call.sent) >= limit {
                call.overran = true;
                overrun += 1;
            }
        }
        overrun
    }
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
        // Every eighth of the timeout: a lease is first sent between 1/2 and 5/8 of the way to
        // expiry, which leaves time for several more tries should its call be lost.
        let period = (visibility / 8).max(Duration::from_millis(125));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut in_flight = InFlight::new();
        // A call unanswered for the retransmission timeout is taken as lost for its leases,
        // which go out again in a call of their own (the first stays in flight: a late answer
        // still counts).
        let mut rto = Rto::new(visibility);
        // Due leases were left unsent for lack of room: the next answer makes room for them.
        let mut starved = false;
        loop {
            let resend_after = rto.timeout();
            let resend = in_flight.next_resend(resend_after);
            // Stop at once when told, even with calls in flight: a call to an unreachable SQS
            // can take a minute, and a shutdown deadline must not wait for it.
            let (answer, full_round) = tokio::select! {
                _ = done.cancelled() => return extended,
                _ = tick.tick() => (None, true),
                () = tokio::time::sleep_until(resend.unwrap_or_else(Instant::now)), if resend.is_some() => (None, false),
                Some(answer) = in_flight.calls.next(), if !in_flight.calls.is_empty() => (Some(answer), false),
            };
            if let Some((call, chunk, sent, result)) = answer {
                let now = Instant::now();
                let failed = matches!(result, Some(Err(_)));
                let open = in_flight.answered(call, &chunk, failed, now);
                match result {
                    // Abandoned: its leases are free to go in the next call.
                    None => {}
                    Some(Ok(refused)) => {
                        let epoch = open.map_or(rto.epoch, |call| call.epoch);
                        rto.observe(sent, epoch, now);
                        in_flight.abandon_lost(sent);
                        let ok: Vec<AckHandle> =
                            chunk.into_iter().filter(|a| !refused.contains(a)).collect();
                        extended += ok.len() as u64;
                        leases.extended(&ok, sent);
                        if leases.refused(&refused) > 0 {
                            leases.congested(Congestion::ExtensionRefused);
                        }
                    }
                    Some(Err(error)) => {
                        // A quick refusal is an answer too: the server is reachable, so calls
                        // sent before it and taken as lost are lost (a call given up after
                        // its timeout is no answer).
                        if now.saturating_duration_since(sent) < rto.timeout() {
                            in_flight.abandon_lost(sent);
                        }
                        if let Some(open) = open {
                            rto.lost(open.sent, open.epoch);
                        }
                        tracing::warn!(%error, messages = chunk.len(), "visibility heartbeat failed")
                    }
                }
                if !starved {
                    continue;
                }
            }
            let resend_after = rto.timeout();
            let now = Instant::now();
            let due = leases.due(now, visibility);
            // Calls taken as lost: unless the server answers others, be slower to take the
            // next ones so (a server that is only slow is not sent more).
            in_flight.looked_at(now, resend_after, &mut rto);
            if full_round {
                in_flight.forget_failed(&due.extend);
                if due.lapsed > 0 {
                    leases.meter().record_lapsed(due.lapsed as u64);
                    tracing::debug!(messages = due.lapsed, "leases lapsed");
                    leases.congested(Congestion::Lapsed);
                }
                if in_flight.newly_overrun(now, visibility / 2) > 0 {
                    // A call still unanswered when the leases it carries could lapse (a lease
                    // due at half its timeout, unanswered half a timeout later, has lapsed or
                    // nearly): the window is cut.
                    leases.congested(Congestion::HeartbeatOverran);
                }
                // Leases at risk: receive nothing more until they are extended.
                leases.set_behind(due.lapsed + due.overdue > 0);
            }
            let send = in_flight.to_send(due.extend, now, resend_after);
            starved = !send.is_empty() && {
                tracing::debug!(messages = send.len(), "extending visibility");
                in_flight.send(&source, send, visibility, now, rto.epoch)
            };
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
mod tests;
