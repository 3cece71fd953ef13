//! Leases: every message received and not yet deleted or released, one lease per message; the
//! window that bounds how many the run holds ([`super::window`]); the heartbeat that keeps them
//! invisible while they wait (in the channel, in an open batch, in a slow COPY, in a retry);
//! and their release at the end of a run.
//!
//! Without a heartbeat, a message held longer than its visibility timeout reappears and is
//! processed again elsewhere: no second row (the ledger sees to that), but wasted work and a
//! rising receive count. The heartbeat extends every lease older than half the timeout with
//! `ChangeMessageVisibilityBatch`; it ticks every quarter timeout, so a lease is extended between
//! 1/2 and 3/4 of the way to expiry. What it sees feeds the window: a lease that lapsed, a round
//! that overran its tick, an extension refused for a message still held. While a round is
//! behind, receiving pauses (see [`Leases::admit`]).
//!
//! A message delivered again while held (its lease lapsed, or the server handed it out twice)
//! does not become a second lease: the new receipt handle joins the lease and becomes the one
//! extended, the delivery goes no further, and after COMMIT every handle of the message is
//! deleted ([`Leases::deleting`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::window::{Congestion, Window};
use crate::sqs::{AckHandle, MessageSource, Received, SQS_BATCH_LIMIT};

/// ChangeMessageVisibilityBatch calls in flight at once (heartbeat and release).
const CONCURRENT_CALLS: usize = 8;
/// The longest the final release may take when no shutdown deadline bounds it.
pub const RELEASE_DEADLINE: Duration = Duration::from_secs(10);
/// Quiet time after a window cut when the visibility timeout is not known.
const DEFAULT_QUIET: Duration = Duration::from_secs(30);

/// One held message.
#[derive(Debug)]
struct Lease {
    /// The newest receipt handle: the one SQS extends.
    latest: String,
    /// Handles of earlier deliveries of the same message while it was held; deleted with it.
    older: Vec<String>,
    /// When its visibility was last set (by a receive or an extension).
    set_at: Instant,
    /// Committed and being deleted: no longer extended.
    deleting: bool,
    /// SQS refused to extend it: another consumer holds the message now (our copy is still
    /// loaded; the ledger keeps one row). Not extended again unless delivered to us anew.
    lost: bool,
    /// Handles of deliveries that arrived while it was being deleted, after the deleter had
    /// taken its handles: deleted once that delete is done (see [`Leases::forget`]).
    late: Vec<String>,
}

#[derive(Debug)]
struct State {
    /// By SQS message id (foldhash: ids come from SQS, not from message senders).
    held: HashMap<String, Lease, foldhash::fast::RandomState>,
    window: Window,
    /// Room taken by receives in flight (10 each).
    reserved: usize,
    /// The heartbeat is behind: receiving waits.
    behind: bool,
}

/// The messages a run holds, and the window that bounds them.
#[derive(Debug)]
pub struct Leases {
    state: Mutex<State>,
    /// Woken when room may have opened: a lease forgotten, a reservation returned, the window
    /// grew, the heartbeat caught up.
    room: Notify,
    /// Woken when the last lease is forgotten.
    emptied: Notify,
    /// The window's limit, for reads without the lock.
    limit: AtomicUsize,
    /// The queue's visibility timeout, when known.
    visibility: Option<Duration>,
    /// Receives that brought messages so far (see [`Leases::receives`]).
    receives: std::sync::atomic::AtomicU64,
}

/// What a heartbeat round finds to do.
#[derive(Debug, Default)]
struct Due {
    /// Latest handles of the leases to extend.
    extend: Vec<AckHandle>,
    /// Leases whose visibility already ran out.
    lapsed: usize,
    /// Leases past 3/4 of their timeout: the last round did not reach them in time.
    overdue: usize,
}

impl Leases {
    /// Leases of a run whose messages have `visibility` (when known), held at most
    /// `max_messages` at once.
    pub fn new(visibility: Option<Duration>, max_messages: usize) -> Self {
        let window = Window::new(max_messages);
        crate::telemetry::metrics::record_window(window.limit());
        Self {
            limit: AtomicUsize::new(window.limit()),
            state: Mutex::new(State {
                held: HashMap::default(),
                window,
                reserved: 0,
                behind: false,
            }),
            room: Notify::new(),
            emptied: Notify::new(),
            visibility,
            receives: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("lease lock")
    }

    /// Waits until the window has room for `want` more messages and the heartbeat is not
    /// behind, then reserves it for one receive.
    pub async fn admit(&self, want: usize) -> Admission<'_> {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if !state.behind && state.held.len() + state.reserved + want <= state.window.limit()
                {
                    state.reserved += want;
                    return Admission {
                        leases: self,
                        reserved: want,
                    };
                }
            }
            notified.await;
        }
    }

    /// True when nothing is held: everything received was deleted or given up on.
    pub fn is_empty(&self) -> bool {
        self.lock().held.is_empty()
    }

    /// Returns once nothing is held.
    pub async fn emptied(&self) {
        loop {
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// How many receives have brought messages so far: a receiver that sees it unchanged over
    /// its own poll knows no other receive brought (and hid) anything meanwhile.
    pub fn receives(&self) -> u64 {
        self.receives.load(Ordering::SeqCst)
    }

    /// The most messages to hold now (the window).
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A batch of `messages` committed and deleted, the first of them received at
    /// `first_received`: in time (within half the visibility timeout, so none needed an
    /// extension) it grows the window; later, it is a sign of congestion (held any longer, the
    /// run would start paying for extensions, which on a busy server slow everything further).
    /// Counted at the delete, not at COMMIT: a message is held until it is deleted, and on a
    /// slow server the delete is what takes the time.
    pub fn settled(&self, messages: usize, first_received: Instant) {
        let in_time = self
            .visibility
            .is_none_or(|v| first_received.elapsed() < v / 2);
        if !in_time {
            self.congested(Congestion::SettledLate);
            return;
        }
        if messages == 0 {
            return;
        }
        let mut state = self.lock();
        let before = state.window.limit();
        state.window.settled_in_time(messages);
        let after = state.window.limit();
        drop(state);
        if after != before {
            self.window_changed(after);
            self.room.notify_waiters();
        }
    }

    /// A congestion signal: the window is cut (unless it was just cut).
    fn congested(&self, why: Congestion) {
        let quiet = self.visibility.unwrap_or(DEFAULT_QUIET);
        let mut state = self.lock();
        if state.window.congested(Instant::now(), quiet) {
            let limit = state.window.limit();
            let held = state.held.len();
            drop(state);
            tracing::info!(?why, window = limit, held, "window cut");
            self.window_changed(limit);
        }
    }

    fn window_changed(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
        crate::telemetry::metrics::record_window(limit);
    }

    fn set_behind(&self, behind: bool) {
        let mut state = self.lock();
        let changed = state.behind != behind;
        state.behind = behind;
        drop(state);
        if changed && !behind {
            self.room.notify_waiters();
        }
    }

    /// Marks committed messages as being deleted (no longer extended) and returns their
    /// receipt handles: the latest of each (in `acks`, updated in place), and those of earlier
    /// deliveries while held.
    pub fn deleting(&self, mut acks: Vec<AckHandle>) -> (Vec<AckHandle>, Vec<AckHandle>) {
        let mut older = Vec::new();
        let mut state = self.lock();
        for ack in &mut acks {
            if let Some(lease) = state.held.get_mut(&ack.message_id) {
                lease.deleting = true;
                if lease.latest != ack.receipt_handle {
                    ack.receipt_handle.clone_from(&lease.latest);
                }
                older.extend(lease.older.iter().map(|handle| AckHandle {
                    message_id: ack.message_id.clone(),
                    receipt_handle: handle.clone(),
                }));
            }
        }
        (acks, older)
    }

    /// Forgets messages that were deleted (or given up on). Returns the handles of deliveries
    /// that arrived while they were being deleted, which are to be deleted too.
    pub fn forget(&self, acks: &[AckHandle]) -> Vec<AckHandle> {
        let mut late = Vec::new();
        let mut state = self.lock();
        for ack in acks {
            if let Some(lease) = state.held.remove(&ack.message_id) {
                late.extend(lease.late.into_iter().map(|receipt_handle| AckHandle {
                    message_id: ack.message_id.clone(),
                    receipt_handle,
                }));
            }
        }
        let (held, empty) = (state.held.len(), state.held.is_empty());
        drop(state);
        crate::telemetry::metrics::record_in_flight(held);
        self.room.notify_waiters();
        if empty {
            self.emptied.notify_waiters();
        }
        late
    }

    /// What the heartbeat round starting at `now` has to do.
    fn due(&self, now: Instant, visibility: Duration) -> Due {
        let state = self.lock();
        let mut due = Due::default();
        for (message_id, lease) in &state.held {
            if lease.deleting || lease.lost {
                continue;
            }
            let age = now.saturating_duration_since(lease.set_at);
            if age < visibility / 2 {
                continue;
            }
            if age >= visibility {
                due.lapsed += 1;
            } else if age >= visibility * 3 / 4 {
                due.overdue += 1;
            }
            due.extend.push(AckHandle {
                message_id: message_id.clone(),
                receipt_handle: lease.latest.clone(),
            });
        }
        due
    }

    fn extended(&self, acks: &[AckHandle], at: Instant) {
        let mut state = self.lock();
        for ack in acks {
            if let Some(lease) = state.held.get_mut(&ack.message_id) {
                if lease.latest == ack.receipt_handle {
                    lease.set_at = at;
                }
            }
        }
    }

    /// Extensions SQS refused. Those of messages still held, with the same handle and not
    /// being deleted, are lost to another consumer; returns how many.
    fn refused(&self, acks: &[AckHandle]) -> usize {
        let mut state = self.lock();
        let mut lost = 0;
        for ack in acks {
            if let Some(lease) = state.held.get_mut(&ack.message_id) {
                if lease.latest == ack.receipt_handle && !lease.deleting && !lease.lost {
                    lease.lost = true;
                    lost += 1;
                }
            }
        }
        lost
    }

    fn take_all(&self) -> Vec<AckHandle> {
        let mut state = self.lock();
        let taken: Vec<AckHandle> = state
            .held
            .drain()
            .map(|(message_id, lease)| AckHandle {
                message_id,
                receipt_handle: lease.latest,
            })
            .collect();
        drop(state);
        crate::telemetry::metrics::record_in_flight(0);
        self.room.notify_waiters();
        self.emptied.notify_waiters();
        taken
    }
}

/// Room reserved in the window for one receive; given back when dropped, or turned into
/// leases by [`Admission::hold`].
#[derive(Debug)]
pub struct Admission<'a> {
    leases: &'a Leases,
    reserved: usize,
}

impl Admission<'_> {
    /// Records freshly received messages (their visibility was just set by the receive).
    /// Returns, per message, whether it is new: `false` for a message already held, whose new
    /// receipt handle joined its lease.
    pub fn hold(self, messages: &[Received]) -> Vec<bool> {
        let now = Instant::now();
        let mut fresh = Vec::with_capacity(messages.len());
        let leases = self.leases;
        let mut state = leases.lock();
        state.reserved -= self.reserved;
        if !messages.is_empty() {
            leases.receives.fetch_add(1, Ordering::SeqCst);
        }
        for m in messages {
            match state.held.get_mut(&m.ack.message_id) {
                Some(lease) if lease.deleting => {
                    // Committed, and its delete is under way with the handles it had: this one
                    // is deleted after it.
                    lease.late.push(m.ack.receipt_handle.clone());
                    fresh.push(false);
                }
                Some(lease) => {
                    let earlier =
                        std::mem::replace(&mut lease.latest, m.ack.receipt_handle.clone());
                    if earlier != lease.latest {
                        lease.older.push(earlier);
                    }
                    lease.set_at = now;
                    lease.lost = false;
                    fresh.push(false);
                }
                None => {
                    state.held.insert(
                        m.ack.message_id.clone(),
                        Lease {
                            latest: m.ack.receipt_handle.clone(),
                            older: Vec::new(),
                            set_at: now,
                            deleting: false,
                            lost: false,
                            late: Vec::new(),
                        },
                    );
                    fresh.push(true);
                }
            }
        }
        let held = state.held.len();
        drop(state);
        std::mem::forget(self);
        crate::telemetry::metrics::record_in_flight(held);
        leases.room.notify_waiters();
        fresh
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.leases.lock().reserved -= self.reserved;
        self.leases.room.notify_waiters();
    }
}

/// Extends held leases until `done` is cancelled, and tells the window what it sees. Failures
/// are logged and tried again on the next tick; a message whose lease lapses anyway comes
/// back, joins its lease if we still hold it, or is skipped by the ledger.
pub async fn heartbeat<S: MessageSource>(
    source: Arc<S>,
    leases: Arc<Leases>,
    visibility: Duration,
    done: CancellationToken,
) -> u64 {
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
    use std::time::SystemTime;

    use super::*;

    fn received(id: u32, handle: &str) -> Received {
        Received {
            ack: AckHandle {
                message_id: format!("m{id}"),
                receipt_handle: handle.to_owned(),
            },
            ledger_id: format!("m{id}"),
            body: String::new(),
            sent_timestamp: 0,
            receive_count: 1,
            group_id: None,
            attributes: Vec::new(),
            received_at: SystemTime::now(),
            md5_mismatch: false,
        }
    }

    fn ack(id: u32, handle: &str) -> AckHandle {
        received(id, handle).ack
    }

    async fn hold(leases: &Leases, messages: &[Received]) -> Vec<bool> {
        leases.admit(messages.len()).await.hold(messages)
    }

    #[tokio::test(start_paused = true)]
    async fn leases_fall_due_after_half_the_timeout_and_lapse_after_all_of_it() {
        let visibility = Duration::from_secs(30);
        let leases = Leases::new(Some(visibility), 100);
        hold(&leases, &[received(1, "r1"), received(2, "r2")]).await;
        assert!(leases.due(Instant::now(), visibility).extend.is_empty());
        tokio::time::advance(Duration::from_secs(16)).await;
        let due = leases.due(Instant::now(), visibility);
        assert_eq!((due.extend.len(), due.lapsed, due.overdue), (2, 0, 0));
        leases.extended(&[ack(1, "r1")], Instant::now());
        tokio::time::advance(Duration::from_secs(7)).await;
        let due = leases.due(Instant::now(), visibility);
        assert_eq!(due.extend, vec![ack(2, "r2")]);
        assert_eq!(due.overdue, 1, "23 s of 30: past three quarters");
        tokio::time::advance(Duration::from_secs(8)).await;
        assert_eq!(leases.due(Instant::now(), visibility).lapsed, 1);
        leases.forget(&[ack(2, "r2")]);
        assert_eq!(leases.take_all(), vec![ack(1, "r1")]);
        assert!(leases.take_all().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_delivery_joins_its_lease_and_every_handle_is_deleted() {
        let leases = Leases::new(Some(Duration::from_secs(2)), 100);
        assert_eq!(hold(&leases, &[received(1, "r1")]).await, [true]);
        assert_eq!(
            hold(&leases, &[received(1, "r1-again"), received(2, "r2")]).await,
            [false, true]
        );
        // The newest handle is the one extended.
        tokio::time::advance(Duration::from_secs(1)).await;
        let due = leases.due(Instant::now(), Duration::from_secs(2));
        let mut extend: Vec<&str> = due
            .extend
            .iter()
            .map(|a| a.receipt_handle.as_str())
            .collect();
        extend.sort_unstable();
        assert_eq!(extend, ["r1-again", "r2"]);
        // After COMMIT both handles of m1 are deleted, the newest as the one that counts.
        let (latest, older) = leases.deleting(vec![ack(1, "r1")]);
        assert_eq!(latest, [ack(1, "r1-again")]);
        assert_eq!(older, [ack(1, "r1")]);
        // Being deleted, it is no longer extended.
        let due = leases.due(Instant::now(), Duration::from_secs(2));
        assert_eq!(due.extend, [ack(2, "r2")]);
    }

    #[tokio::test(start_paused = true)]
    async fn receiving_waits_for_room_in_the_window_and_for_the_heartbeat() {
        let leases = Arc::new(Leases::new(Some(Duration::from_secs(30)), 20));
        assert_eq!(leases.limit(), 20);
        let first = leases.admit(10).await;
        let second = leases.admit(10).await;
        let third = tokio::spawn({
            let leases = leases.clone();
            async move {
                let admission = leases.admit(10).await;
                drop(admission);
            }
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished(), "the window is full");
        drop(second);
        first.hold(&[received(1, "r1")]);
        // 1 held + 10 reserved by the third: room, once it was given back.
        tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .expect("room came back")
            .unwrap();
        leases.set_behind(true);
        let blocked = tokio::time::timeout(Duration::from_secs(1), leases.admit(1)).await;
        assert!(blocked.is_err(), "no receive while the heartbeat is behind");
        leases.set_behind(false);
        drop(leases.admit(1).await);
        // A lapse cuts the window (to 70% of 20: 14); the lease it was is lost when an
        // extension is refused.
        leases.congested(Congestion::Lapsed);
        assert_eq!(leases.limit(), 14);
        assert_eq!(leases.refused(&[ack(1, "r1")]), 1);
        assert!(leases
            .due(
                Instant::now() + Duration::from_secs(20),
                Duration::from_secs(30)
            )
            .extend
            .is_empty());
    }
}
