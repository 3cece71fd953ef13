//! The window: how many messages a run may hold at once (received and not yet deleted or
//! released), and how that number adapts to what the run achieves.
//!
//! Holding a message costs more than memory. Until it is deleted it must be kept invisible, one
//! `ChangeMessageVisibility` entry each half visibility timeout, and a lease that lapses hands
//! the message to another consumer, whose copy is one more lease to keep up. On a slow or
//! rate-limited SQS server those extensions compete with receives and deletes, so holding more
//! than the run can commit within the visibility timeout feeds on itself: more lapses, more
//! redeliveries, rising receive counts (issue 16). A byte budget cannot see that; a count that
//! follows the run's own signals can.
//!
//! The rule is TCP's (additive increase, multiplicative decrease), with SQS's signals:
//! - **grow** by each batch committed and deleted within half the visibility timeout of its
//!   first receipt (none of its messages needed an extension): by the batch's size at first
//!   (slow start, doubling per window), by one receive of 10 per batch once congestion was
//!   seen;
//! - **cut to 70%** (as CUBIC does; halving kept replicas on a shared, capped server far below
//!   what it serves) on congestion: a batch that took longer than that to settle (its messages
//!   needed extending), a lease that lapsed, a heartbeat round that overran, an extension
//!   refused for a message still held. At most once per visibility timeout, because
//!   the signals of that time were caused by the window before the cut (a round "overran" when
//!   it took two ticks, half the timeout: its leases could lapse);
//! - never below one receive (10), never above `--max-in-flight-messages`.

use std::time::Duration;

use tokio::time::Instant;

use crate::sqs::SQS_BATCH_LIMIT;

/// The window a run starts with: enough for a fast server to keep two loaders busy while the
/// first batches commit (slow start takes it to the maximum within a few batches), small
/// enough that a slow server's first visibility timeout is not spent extending thousands.
pub const INITIAL: usize = 1_000;

/// Why the window was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// Held messages whose visibility ran out before the heartbeat extended them.
    Lapsed,
    /// An extension call was still unanswered half a visibility timeout after it was sent.
    HeartbeatOverran,
    /// SQS refused to extend a message we still hold (another consumer has it now).
    ExtensionRefused,
    /// A batch took longer than half the visibility timeout from its first receipt to its
    /// delete: its messages needed extending.
    SettledLate,
}

/// The window's arithmetic; pure, so its rule can be tested on its own.
#[derive(Debug, Clone)]
pub struct Window {
    limit: usize,
    max: usize,
    /// Doubling per window until the first congestion.
    slow_start: bool,
    /// Congestion before this instant is an echo of the last cut.
    calm_until: Option<Instant>,
}

impl Window {
    /// A window that may grow to `max` messages (at least one receive).
    pub fn new(max: usize) -> Self {
        let max = max.max(SQS_BATCH_LIMIT);
        Self {
            limit: INITIAL.min(max),
            max,
            slow_start: true,
            calm_until: None,
        }
    }

    /// The most messages to hold now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A batch of `messages` committed and deleted within half the visibility timeout of its
    /// first receipt.
    pub fn settled_in_time(&mut self, messages: usize) {
        if self.slow_start {
            self.limit = (self.limit + messages).min(self.max);
            return;
        }
        // One receive more per batch settled in time: with a small window (a busy server) a
        // batch is about half of it, so the window grows by about two receives per round trip.
        self.limit = (self.limit + SQS_BATCH_LIMIT).min(self.max);
    }

    /// A congestion signal at `now`; `quiet` is how long later signals are taken as echoes of
    /// this one (the visibility timeout). Returns whether the window was cut.
    pub fn congested(&mut self, now: Instant, quiet: Duration) -> bool {
        if self.calm_until.is_some_and(|until| now < until) {
            return false;
        }
        self.slow_start = false;
        // To 70%, as CUBIC does: halving made windows on a shared, capped server sawtooth far
        // below what it serves (BENCHMARKS.md, run 8).
        self.limit = (self.limit * 7 / 10).max(SQS_BATCH_LIMIT);
        self.calm_until = Some(now + quiet);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_doubles_until_congestion_then_growth_is_additive_and_cuts_multiplicative() {
        let now = Instant::now();
        let quiet = Duration::from_secs(2);
        let mut w = Window::new(20_000);
        assert_eq!(w.limit(), INITIAL);
        w.settled_in_time(1_000);
        assert_eq!(w.limit(), 2_000, "slow start adds what committed");
        w.settled_in_time(50_000);
        assert_eq!(w.limit(), 20_000, "never above the maximum");
        assert!(w.congested(now, quiet));
        assert_eq!(w.limit(), 14_000, "cut to 70%");
        // An echo within the quiet time changes nothing.
        assert!(!w.congested(now + Duration::from_secs(1), quiet));
        assert_eq!(w.limit(), 14_000);
        // Additive: one receive per batch settled in time, whatever its size.
        w.settled_in_time(5_000);
        assert_eq!(w.limit(), 14_010);
        w.settled_in_time(1);
        assert_eq!(w.limit(), 14_020);
        // Repeated congestion cuts down to one receive, never below.
        for i in 0..20 {
            w.congested(now + quiet * (2 + i), quiet);
        }
        assert_eq!(w.limit(), SQS_BATCH_LIMIT);
    }

    #[test]
    fn a_small_maximum_caps_the_start() {
        let w = Window::new(300);
        assert_eq!(w.limit(), 300);
        assert_eq!(Window::new(0).limit(), SQS_BATCH_LIMIT);
    }
}
