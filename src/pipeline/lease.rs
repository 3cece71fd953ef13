//! Leases: every message received and not yet deleted or released, one lease per message, and
//! the window that bounds how many the run holds ([`super::window`]). The heartbeat that keeps
//! them invisible while they wait (in the channel, in an open batch, in a slow COPY, in a
//! retry) and their release at the end of a run are in [`super::heartbeat`].
//!
//! Without a heartbeat, a message held longer than its visibility timeout reappears and is
//! processed again elsewhere: no second row (the ledger sees to that), but wasted work and a
//! rising receive count. The heartbeat extends every lease older than half the timeout with
//! `ChangeMessageVisibilityBatch`; it ticks every eighth of the timeout, so a lease is first
//! sent between 1/2 and 5/8 of the way to expiry. Each call is in flight on its own: one that
//! gets no answer holds up only its own messages, which are sent again in a call of their own.
//! What it sees feeds the window: a lease that lapsed, a call unanswered for half the timeout,
//! an extension refused for a message still held. While leases are past 3/4 of their timeout,
//! receiving pauses (see [`Leases::admit`]).
//!
//! A message delivered again while held (its lease lapsed, or the server handed it out twice)
//! does not become a second lease: the new receipt handle joins the lease and becomes the one
//! extended, the delivery goes no further, and after COMMIT every handle of the message is
//! deleted ([`Leases::deleting`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::window::{Congestion, Window};
use crate::sqs::{AckHandle, Received};

/// ChangeMessageVisibilityBatch calls in flight at once when releasing; the heartbeat allows
/// twice as many open, unanswered ones included.
pub(super) const CONCURRENT_CALLS: usize = 8;
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
    /// Until when each message this run let go for redelivery stays invisible at SQS, by id.
    let_go: HashMap<String, Instant, foldhash::fast::RandomState>,
    /// How often each message's delete was refused as a stale handle (see
    /// [`Leases::stale_again`]), by id. Kept for the run: past [`STALE_LIMIT`] every later
    /// refusal of the message is failed for good at once (few: a server that misbehaves).
    stale: HashMap<String, u32, foldhash::fast::RandomState>,
}

/// A message whose delete SQS refuses as a stale handle this many times is taken as failed for
/// good (let go), so a server that refuses every delete that way cannot keep a drain waiting.
pub const STALE_LIMIT: u32 = 3;

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
    /// Where the window and the messages held are shown (see [`Leases::metered`]).
    meter: crate::telemetry::metrics::Meter,
}

/// What a heartbeat round finds to do.
#[derive(Debug, Default)]
pub(super) struct Due {
    /// Latest handles of the leases to extend, oldest lease first (when calls are short, the
    /// leases nearest to lapsing go first).
    pub extend: Vec<AckHandle>,
    /// Leases whose visibility already ran out.
    pub lapsed: usize,
    /// Leases past 3/4 of their timeout: the last round did not reach them in time.
    pub overdue: usize,
}

impl Leases {
    /// Leases of a run whose messages have `visibility` (when known), held at most
    /// `max_messages` at once.
    pub fn new(visibility: Option<Duration>, max_messages: usize) -> Self {
        let window = Window::new(max_messages);
        Self {
            limit: AtomicUsize::new(window.limit()),
            state: Mutex::new(State {
                held: HashMap::default(),
                window,
                reserved: 0,
                behind: false,
                let_go: HashMap::default(),
                stale: HashMap::default(),
            }),
            room: Notify::new(),
            emptied: Notify::new(),
            visibility,
            receives: std::sync::atomic::AtomicU64::new(0),
            meter: Default::default(),
        }
    }

    /// These leases, showing their window and the messages held through `meter`.
    pub fn metered(mut self, meter: crate::telemetry::metrics::Meter) -> Self {
        meter.record_window(self.limit());
        self.meter = meter;
        self
    }

    /// The run's metrics (see [`Leases::metered`]).
    pub fn meter(&self) -> &crate::telemetry::metrics::Meter {
        &self.meter
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

    /// Notes messages this run let go without deleting them, for SQS to redeliver (a body
    /// that failed its MD5 check, a message that failed alone, a delete given up on): in
    /// flight at SQS until their visibility timeout passes, yet held by nobody. A drain does
    /// not wait for them as it waits for another consumer's. One that comes back to this run
    /// is no longer counted ([`Admission::hold`]).
    pub fn let_go<'a>(&self, message_ids: impl IntoIterator<Item = &'a str>) {
        let until = Instant::now() + self.visibility.unwrap_or(DEFAULT_QUIET);
        let mut state = self.lock();
        let now = Instant::now();
        state.let_go.retain(|_, at| *at > now);
        for id in message_ids {
            state.let_go.insert(id.to_owned(), until);
        }
    }

    /// Counts one delete of `message_id` refused as a stale handle; true from the
    /// [`STALE_LIMIT`]th on, when it is to be taken as failed for good (let go, as a refusal
    /// for good is).
    pub fn stale_again(&self, message_id: &str) -> bool {
        let mut state = self.lock();
        let count = state.stale.entry(message_id.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        *count >= STALE_LIMIT
    }

    /// How many messages this run let go are still invisible at SQS.
    pub fn let_go_hidden(&self) -> u64 {
        let mut state = self.lock();
        let now = Instant::now();
        state.let_go.retain(|_, at| *at > now);
        state.let_go.len() as u64
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
    pub(super) fn congested(&self, why: Congestion) {
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
        self.meter.record_window(limit);
    }

    pub(super) fn set_behind(&self, behind: bool) {
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
        self.meter.record_in_flight(held);
        self.room.notify_waiters();
        if empty {
            self.emptied.notify_waiters();
        }
        late
    }

    /// What the heartbeat round starting at `now` has to do.
    pub(super) fn due(&self, now: Instant, visibility: Duration) -> Due {
        let state = self.lock();
        let mut due = Due::default();
        let mut extend = Vec::new();
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
            extend.push((
                lease.set_at,
                AckHandle {
                    message_id: message_id.clone(),
                    receipt_handle: lease.latest.clone(),
                },
            ));
        }
        drop(state);
        extend.sort_unstable_by_key(|(set_at, _)| *set_at);
        due.extend = extend.into_iter().map(|(_, ack)| ack).collect();
        due
    }

    pub(super) fn extended(&self, acks: &[AckHandle], at: Instant) {
        let mut state = self.lock();
        for ack in acks {
            if let Some(lease) = state.held.get_mut(&ack.message_id) {
                // A late answer to an older call must not take the lease back in time.
                if lease.latest == ack.receipt_handle && at > lease.set_at {
                    lease.set_at = at;
                }
            }
        }
    }

    /// Extensions SQS refused. Those of messages still held, with the same handle and not
    /// being deleted, are lost to another consumer; returns how many.
    pub(super) fn refused(&self, acks: &[AckHandle]) -> usize {
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

    pub(super) fn take_all(&self) -> Vec<AckHandle> {
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
        self.meter.record_in_flight(0);
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
    /// Records freshly received messages, from a receive sent at `asked`. Their visibility
    /// started when the server took them, somewhere between `asked` and now: the lease starts
    /// at the later of `asked` and a quarter of the visibility timeout ago. A slow answer (a
    /// busy server, a slow network: 380 ms at a 2 s timeout was seen) then does not make a
    /// lease look younger than it is and lapse before its first extension; a long poll that
    /// waited for its messages does not make one look older than half the timeout and due at
    /// once. Returns, per message, whether it is new: `false` for a message already held,
    /// whose new receipt handle joined its lease.
    pub fn hold(self, messages: &[Received], asked: Instant) -> Vec<bool> {
        let answered = Instant::now();
        let now = match self.leases.visibility {
            Some(visibility) => answered
                .checked_sub(visibility / 4)
                .map_or(asked, |quarter| quarter.max(asked)),
            None => answered,
        }
        .min(answered);
        let mut fresh = Vec::with_capacity(messages.len());
        let leases = self.leases;
        let mut state = leases.lock();
        state.reserved -= self.reserved;
        if !messages.is_empty() {
            leases.receives.fetch_add(1, Ordering::SeqCst);
        }
        for m in messages {
            if !state.let_go.is_empty() {
                state.let_go.remove(&m.ack.message_id);
            }
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
        leases.meter.record_in_flight(held);
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

#[cfg(test)]
mod tests;
