//! The fate policy: for every outcome of a message or a call (committed, rejected, a failed
//! load, a failed SQS call), one decision, made in [`fate`] and nowhere else. The pipeline,
//! the start-up checks and `send` all ask it instead of deciding for themselves.
//!
//! | fate       | when                                                    | what happens                                   |
//! |------------|---------------------------------------------------------|------------------------------------------------|
//! | ack        | row committed, or duplicate of a committed message      | delete from SQS                                |
//! | quarantine | the message itself is bad, or the table refuses its row | commit a rejection with its reason, then delete |
//! | retry      | the world is bad (database down, network, throttling)   | back off with jitter and try again; never drop |
//! | stop       | our configuration is bad (password, missing table, TLS) | stop with a clear message; nothing is deleted  |
//!
//! Poison is a quarantine with evidence: a message received more often than
//! `--max-receive-count` is only a suspect (leases lapse on a slow server, and each lapse is a
//! delivery). It is loaded alone, and quarantined as `poison:receive_count` once loading it has
//! failed [`SUSPECT_ATTEMPTS`] times, each right after the database committed an empty
//! transaction ([`Outcome::FailedAlone`]). Below the limit such a message is left for SQS to
//! redeliver, so one that fails every time reaches the limit.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use crate::kind::Rejection;
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

/// Everything whose consequence for the messages needs deciding.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// A batch committed: its rows and rejections are in, duplicates were skipped by the ledger.
    Committed,
    /// A message failed validation.
    Rejected(&'a Rejection),
    /// A batch load did not commit.
    LoadFailed(&'a LoadError),
    /// Connecting to or querying PostgreSQL failed outside a load (start-up checks).
    Postgres(&'a tokio_postgres::Error),
    /// An SQS call failed.
    Sqs(&'a SourceError),
    /// Loading one message alone failed `failures` times, each right after an empty
    /// transaction on the same connection committed (so the database works); the message was
    /// received more often than `--max-receive-count` or not.
    FailedAlone {
        failures: u32,
        over_receive_limit: bool,
    },
}

/// Failures of a suspect's lone load, each while the database committed other work, that make
/// it poison. Three: one failure can be bad luck, three in a row with the database working in
/// between are the message.
pub const SUSPECT_ATTEMPTS: u32 = 3;

/// The one decision table.
pub fn fate(outcome: Outcome<'_>) -> Fate {
    match outcome {
        Outcome::Committed => Fate::Ack,
        // A bad message is always kept as a rejection, never retried and never dropped.
        Outcome::Rejected(_) => Fate::Quarantine,
        Outcome::LoadFailed(LoadError::Injected(_) | LoadError::TimedOut(_)) => Fate::Retry,
        Outcome::LoadFailed(err) => match err.postgres() {
            // The table refused a row for reasons of its own: find that row (the pipeline
            // bisects the batch) and quarantine it; the rest of the batch loads.
            Some(pg) if refused_by_table(pg) => Fate::Quarantine,
            Some(pg) => fate_of_postgres(pg),
            // A malformed URL or an unreadable certificate does not fix itself.
            None => Fate::Stop,
        },
        Outcome::Postgres(pg) => fate_of_postgres(pg),
        Outcome::Sqs(err) => match err.kind {
            SourceErrorKind::Transient => Fate::Retry,
            SourceErrorKind::Permanent => Fate::Stop,
        },
        // Retry here means: leave it for SQS to redeliver (or try it alone again, when it is
        // over the limit and short of the attempts).
        Outcome::FailedAlone {
            failures,
            over_receive_limit,
        } => {
            if over_receive_limit && failures >= SUSPECT_ATTEMPTS {
                Fate::Quarantine
            } else {
                Fate::Retry
            }
        }
    }
}

/// Whether a transient load failure could be the fault of the rows loaded, so that the
/// pipeline may look for one (see `pipeline::load`): anything but waiting for a lock, which
/// says someone else holds the table or a row (another replica loading the same message), not
/// that a message is bad.
pub fn may_blame_rows(err: &LoadError) -> bool {
    !err.postgres()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|state| *state == SqlState::LOCK_NOT_AVAILABLE)
}

/// PostgreSQL errors by SQLSTATE: connection trouble, restarts, serialization failures and
/// resource shortages are transient; anything else (authentication, missing objects,
/// privileges) needs an operator. (Rows the table refuses are sorted out before this, in
/// [`fate`].) Without a SQLSTATE the error is on
/// the way to the server: a TLS failure (untrusted certificate, wrong host name) is
/// configuration; anything else (refused, reset, timed out) is transient.
fn fate_of_postgres(err: &tokio_postgres::Error) -> Fate {
    let Some(state) = err.code() else {
        return if is_tls_failure(err) {
            Fate::Stop
        } else {
            Fate::Retry
        };
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

/// SQLSTATE classes that mean "this row is not acceptable": data exceptions (22: value out of
/// range, bad encoding), integrity constraints (23: CHECK, foreign key, unique), triggered data
/// change (27), WITH CHECK OPTION (44), and errors raised by trigger code (P0, 39).
fn refused_by_table(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(|state| {
        ["22", "23", "27", "44", "P0", "39"]
            .iter()
            .any(|class| state.code().starts_with(class))
    })
}

/// True when a rustls error is anywhere in the cause chain (tokio-rustls wraps it in io::Error).
pub(crate) fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if e.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>()) {
            return true;
        }
        cause = e.source();
    }
    false
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
    fn outcomes_map_to_fates() {
        let e = |kind| SourceError::new(kind, "ReceiveMessage", "");
        assert_eq!(
            fate(Outcome::Sqs(&e(SourceErrorKind::Transient))),
            Fate::Retry
        );
        assert_eq!(
            fate(Outcome::Sqs(&e(SourceErrorKind::Permanent))),
            Fate::Stop
        );
        let injected = LoadError::Injected("x".into());
        assert_eq!(fate(Outcome::LoadFailed(&injected)), Fate::Retry);
        assert_eq!(fate(Outcome::Committed), Fate::Ack);
        let bad = Rejection::bare("not_json");
        assert_eq!(fate(Outcome::Rejected(&bad)), Fate::Quarantine);
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(is_tls_failure(&tls));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_tls_failure(&refused));
    }
}
