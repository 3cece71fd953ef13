//! The fate policy: for every kind of failure, one decision (ack, quarantine, retry or stop),
//! made here and nowhere else. Every stage asks [`fate_of_load`] / [`fate_of_source`] /
//! [`Fate::for_rejection`] instead of deciding for itself.
//!
//! | fate       | when                                                    | what happens                                   |
//! |------------|---------------------------------------------------------|------------------------------------------------|
//! | ack        | row committed, or duplicate of a committed message      | delete from SQS                                |
//! | quarantine | the message itself is bad (not JSON, invalid field)     | commit a rejection with its reason, then delete |
//! | retry      | the world is bad (database down, network, throttling)   | back off with jitter and try again; never drop |
//! | stop       | our configuration is bad (password, missing table, ...) | stop with a clear message; nothing is deleted  |

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::login::Rejection;
use crate::postgres::LoadError;
use crate::sqs::{SourceError, SourceErrorKind};

/// What happens to the messages affected by an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Delete from SQS: the message's row or rejection is committed (or was already).
    Ack,
    /// Commit a rejection for the message, then delete it.
    Quarantine,
    /// Keep the messages, back off, try again; SQS redelivers whatever is not deleted.
    Retry,
    /// Give up the run: retrying cannot help until an operator changes something.
    Stop,
}

impl Fate {
    /// A bad message is always quarantined, never retried and never dropped.
    pub fn for_rejection(_: &Rejection) -> Fate {
        Fate::Quarantine
    }
}

/// The fate of a batch whose load failed.
pub fn fate_of_load(err: &LoadError) -> Fate {
    match err {
        LoadError::Injected(_) => Fate::Retry,
        _ => match err.postgres() {
            Some(pg) => fate_of_postgres(pg),
            // A malformed URL or an unreadable certificate does not fix itself.
            None => Fate::Stop,
        },
    }
}

/// PostgreSQL errors by SQLSTATE: connection trouble, restarts, serialization failures and
/// resource shortages are transient; anything else (authentication, missing objects,
/// privileges, data the table refuses) needs an operator.
pub fn fate_of_postgres(err: &tokio_postgres::Error) -> Fate {
    let Some(state) = err.code() else {
        // No SQLSTATE: an I/O error, a closed connection or a timeout.
        return Fate::Retry;
    };
    let code = state.code();
    let transient = code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
        || *state == SqlState::T_R_SERIALIZATION_FAILURE
        || *state == SqlState::T_R_DEADLOCK_DETECTED
        || *state == SqlState::LOCK_NOT_AVAILABLE
        || *state == SqlState::QUERY_CANCELED;
    if transient {
        Fate::Retry
    } else {
        Fate::Stop
    }
}

/// The fate of a failed SQS call.
pub fn fate_of_source(err: &SourceError) -> Fate {
    match err.kind {
        SourceErrorKind::Transient => Fate::Retry,
        SourceErrorKind::Permanent => Fate::Stop,
    }
}

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
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let cap = exp.min(self.max_delay);
        cap.mul_f64(fastrand::f64())
    }

    /// Whether another attempt is allowed after `attempts` failures.
    pub fn allows(&self, attempts: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempts < max)
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
    fn source_errors_map_to_fates() {
        let e = |kind| SourceError {
            kind,
            operation: "ReceiveMessage",
            message: String::new(),
        };
        assert_eq!(fate_of_source(&e(SourceErrorKind::Transient)), Fate::Retry);
        assert_eq!(fate_of_source(&e(SourceErrorKind::Permanent)), Fate::Stop);
        assert_eq!(fate_of_load(&LoadError::Injected("x".into())), Fate::Retry);
    }
}
