//! Retrying: the backoff policy and the one attempt counter every retry loop uses (connecting,
//! reading the queue's settings, receiving, loading, deleting, sending). Whether a failure is
//! worth retrying at all is the fate policy's decision (`error::fate`); this module only says
//! how long to wait and when the attempts are spent.

use std::time::Duration;

/// Exponential backoff with full jitter, capped; `max_attempts: None` retries forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_delay: Duration,
    pub max_attempts: Option<u32>,
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based): uniformly random in
    /// `[0, min(max_delay, initial * 2^(attempt-1))]`, so many replicas do not retry in step.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.full_delay(attempt).mul_f64(fastrand::f64())
    }

    /// Whether another attempt is allowed after `attempts` failures.
    pub fn allows(&self, attempts: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempts < max)
    }

    /// A counter of failed attempts under this policy.
    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            attempts: 0,
            jitter: true,
        }
    }

    /// A counter that waits the full delay each time, without jitter (`send`, one caller,
    /// where nothing retries in step with it).
    pub fn steady_backoff(self) -> Backoff {
        Backoff {
            jitter: false,
            ..self.backoff()
        }
    }

    /// The delay before retry number `attempt` without jitter: `min(max_delay, initial *
    /// 2^(attempt-1))`.
    fn full_delay(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay)
    }
}

/// The failed attempts of one operation so far. A loop calls [`Backoff::failed`] after each
/// failure the fate policy calls transient, and waits the delay it returns or gives up.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    attempts: u32,
    jitter: bool,
}

impl Backoff {
    /// Counts a failure: the delay before the next attempt, or `None` when the policy's
    /// attempts are spent.
    pub fn failed(&mut self) -> Option<Duration> {
        self.attempts += 1;
        let attempt = self.attempts;
        self.policy.allows(attempt).then(|| {
            if self.jitter {
                self.policy.delay(attempt)
            } else {
                self.policy.full_delay(attempt)
            }
        })
    }

    /// Failed attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The operation succeeded: the next failure is the first again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_bounded() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: Some(3),
        };
        for attempt in 1..40 {
            let d = p.delay(attempt);
            assert!(d <= Duration::from_secs(5));
            assert!(d <= Duration::from_millis(100) * 2u32.pow(attempt.min(20) - 1));
        }
        assert!(p.allows(2));
        assert!(!p.allows(3));
        assert!(RetryPolicy {
            max_attempts: None,
            ..p
        }
        .allows(u32::MAX));
    }

    #[test]
    fn a_backoff_counts_failures_until_the_attempts_are_spent() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: Some(3),
        };
        let mut b = p.backoff();
        assert!(b.failed().is_some());
        assert!(b.failed().is_some());
        assert_eq!(b.failed(), None);
        assert_eq!(b.attempts(), 3);
        b.reset();
        assert!(b.failed().is_some());
        let mut steady = p.steady_backoff();
        assert_eq!(steady.failed(), Some(Duration::from_millis(100)));
        assert_eq!(steady.failed(), Some(Duration::from_millis(200)));
        assert_eq!(steady.failed(), None);
    }
}
