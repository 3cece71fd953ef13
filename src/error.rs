//! The fate policy: for every outcome of a message or a call (committed, rejected, a failed
//! load, a failed SQS call), one decision, made in [`fate`] and nowhere else. The pipeline,
//! the start-up checks and `send` all ask it instead of deciding for themselves. The adapters
//! classify their own errors (`sqs::SourceErrorKind`, `postgres::ErrorClass`); this table says
//! what each class does to the messages.
//!
//! | fate       | when                                                    | what happens                                   |
//! |------------|---------------------------------------------------------|------------------------------------------------|
//! | ack        | row committed, or duplicate of a committed message      | delete from SQS                                |
//! | quarantine | the message itself is bad, or the table refuses its row | commit a rejection with its reason, then delete |
//! | retry      | the world is bad (database down, network, throttling)   | back off with jitter and try again; never drop |
//! | redeliver  | trying again now cannot help, later can                 | let go without deleting: SQS delivers it again |
//! | stop       | our configuration is bad (password, missing table, TLS) | stop with a clear message; nothing is deleted  |
//!
//! The decisions beyond the error classes, each a row of [`fate`]:
//!
//! - A body that fails its MD5 check is redelivered (a copy can arrive intact) until it has
//!   come back more often than `--max-receive-count`; then it is quarantined as poison.
//! - A row the table refuses for a data reason (NOT NULL, CHECK, no partition, a unique key, a
//!   trigger's error) is quarantined as `table_refused:RULE`, even when the table refuses every
//!   row of a batch: the run goes on, and a replay loads them once the table is fixed. Only a
//!   structural refusal (missing objects, privileges, a type that cannot read the rows, a NOT
//!   NULL column of the table itself that neither the rows nor the table fill) stops.
//! - A delete that fails transiently is retried at most [`DELETE_ATTEMPTS`] times, then the
//!   messages are redelivered: SQS delivers them again and they are deleted as duplicates.
//! - The SQS adapter classifies a queue that disappears after this run has seen it as
//!   transient (an emulator restarted without its state), and a message without a
//!   SentTimestamp as permanent (the server lacks what dating rows needs).
//!
//! - A suspect whose earlier attempts, recorded in the database before each, never finished
//!   `--max-crashes` times (the process died processing it: an abort, an OOM kill) is
//!   quarantined unparsed as `poison:crashed`.
//! - A message whose load alone stalled the database (while it took other work) on
//!   `--max-crashes` deliveries, counted in the database, is quarantined as `poison:stalled`.
//!
//! Poison is a quarantine with evidence: a message received more often than
//! `--max-receive-count` is only a suspect (leases lapse on a slow server, and each lapse is a
//! delivery). It is loaded alone, and quarantined as `poison:receive_count` once loading it has
//! failed [`SUSPECT_ATTEMPTS`] times, each right after the database committed an empty
//! transaction ([`Outcome::FailedAlone`]). Below the limit such a message is left for SQS to
//! redeliver, so one that fails every time reaches the limit.

use crate::kind::{LoadClass, LoadFailure, Rejection};
use crate::postgres::ErrorClass;
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
    /// Let the messages go without deleting them: SQS delivers them again after their
    /// visibility timeout, when they load (or are skipped as duplicates).
    Redeliver,
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
    LoadFailed(&'a LoadFailure),
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
    /// Transforming a message received more often than `--max-receive-count` panicked (the
    /// transform is pure and fuzzed, so this is the message's doing).
    TransformPanicked,
    /// A suspect (received more often than `--max-receive-count`) is about to be processed;
    /// `unfinished` earlier attempts at it, recorded in the database, never finished: the
    /// process died while processing it. `limit` is `--max-crashes`.
    UnfinishedAttempts { unfinished: u32, limit: u32 },
    /// Loading a message alone stalled the database (no answer within the bound, while an
    /// empty transaction committed), on `stalls` deliveries so far, counted in the database;
    /// `limit` is `--max-crashes`.
    StalledAlone { stalls: u32, limit: u32 },
    /// A received body does not match its MD5 (corrupted on the way); the message was received
    /// more often than `--max-receive-count` or not.
    CorruptBody { over_receive_limit: bool },
    /// The table refused a row because a NOT NULL column without a default is not among the
    /// columns the rows fill: every row would be refused alike (structural).
    UnfilledNotNull,
    /// A DeleteMessageBatch call failed (`error`), or SQS refused some of its entries
    /// transiently (`None`), for the `attempts`th time.
    DeleteFailed {
        error: Option<&'a SourceError>,
        attempts: u32,
    },
}

/// Calls a failing delete gets, at most, even in `run`: a message whose delete is lost is
/// redelivered and skipped as a duplicate, so holding on to it longer only delays the run.
pub const DELETE_ATTEMPTS: u32 = 5;

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
        Outcome::LoadFailed(failure) => match failure.class {
            // The table refused a row for a data reason of its own (NOT NULL, CHECK, no
            // partition, unique): find that row (the pipeline bisects the batch) and quarantine
            // it as `table_refused:RULE`, however many rows it refuses (once the table is fixed,
            // a replay loads them); the rest of the batch loads. A structural refusal (missing
            // column, privilege, type) is Permanent: it stops.
            LoadClass::RowRefused => Fate::Quarantine,
            LoadClass::LockWait | LoadClass::Transient | LoadClass::TimedOut => Fate::Retry,
            // Also a malformed URL or an unreadable certificate: they do not fix themselves.
            LoadClass::Permanent => Fate::Stop,
        },
        Outcome::Postgres(pg) => match crate::postgres::classify(pg) {
            ErrorClass::LockWait | ErrorClass::Transient => Fate::Retry,
            // Outside a load no row is to blame: a refusal there is our own statement's.
            ErrorClass::RowRefused | ErrorClass::Permanent => Fate::Stop,
        },
        Outcome::Sqs(err) => match err.kind {
            SourceErrorKind::Transient => Fate::Retry,
            SourceErrorKind::Permanent => Fate::Stop,
        },
        // Below the limit: leave it for SQS to redeliver (one receive more); over it and short
        // of the attempts: try it alone again.
        Outcome::FailedAlone {
            failures,
            over_receive_limit,
        } => {
            if !over_receive_limit {
                Fate::Redeliver
            } else if failures >= SUSPECT_ATTEMPTS {
                Fate::Quarantine
            } else {
                Fate::Retry
            }
        }
        // A suspect (over the limit) whose transform panics every time would stop every run
        // that receives it: poison.
        Outcome::TransformPanicked => Fate::Quarantine,
        // A body that kills the process is poison once it has done so `limit` times: kept
        // unparsed (parsing it is what kills). Below that, processing it again may work (the
        // process may have died of something else).
        Outcome::UnfinishedAttempts { unfinished, limit } => {
            if unfinished >= limit {
                Fate::Quarantine
            } else {
                Fate::Retry
            }
        }
        // A body that stalls the database alone, delivery after delivery, is poison whatever
        // its receive count: each delivery costs minutes of a stalled connection. Below that,
        // the failure's own verdict (`FailedAlone`) applies.
        Outcome::StalledAlone { stalls, limit } => {
            if stalls >= limit {
                Fate::Quarantine
            } else {
                Fate::Retry
            }
        }
        // A copy can arrive intact; one that never does is poison once over the limit.
        Outcome::CorruptBody { over_receive_limit } => {
            if over_receive_limit {
                Fate::Quarantine
            } else {
                Fate::Redeliver
            }
        }
        // Not the row's doing: the table asks what no row gives. Stop, quarantine nothing.
        Outcome::UnfilledNotNull => Fate::Stop,
        Outcome::DeleteFailed { error, attempts } => match error.map(|e| e.kind) {
            Some(SourceErrorKind::Permanent) => Fate::Stop,
            _ if attempts < DELETE_ATTEMPTS => Fate::Retry,
            _ => Fate::Redeliver,
        },
    }
}

/// Whether a transient load failure could be the fault of the rows loaded, so that the
/// pipeline may look for one (see `pipeline::load`): anything but waiting for a lock, which
/// says someone else holds the table or a row (another replica loading the same message), not
/// that a message is bad.
pub fn may_blame_rows(failure: &LoadFailure) -> bool {
    failure.class != LoadClass::LockWait
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let load = |class| fate(Outcome::LoadFailed(&LoadFailure::new(class, "x")));
        assert_eq!(
            [
                LoadClass::RowRefused,
                LoadClass::LockWait,
                LoadClass::Transient,
                LoadClass::Permanent,
                LoadClass::TimedOut
            ]
            .map(load),
            [
                Fate::Quarantine,
                Fate::Retry,
                Fate::Retry,
                Fate::Stop,
                Fate::Retry
            ]
        );
        assert_eq!(fate(Outcome::Committed), Fate::Ack);
        let bad = Rejection::bare("not_json");
        assert_eq!(fate(Outcome::Rejected(&bad)), Fate::Quarantine);
        let over = |over_receive_limit| fate(Outcome::CorruptBody { over_receive_limit });
        assert_eq!(
            (over(false), over(true)),
            (Fate::Redeliver, Fate::Quarantine)
        );
        let transient = e(SourceErrorKind::Transient);
        let delete = |attempts| {
            fate(Outcome::DeleteFailed {
                error: Some(&transient),
                attempts,
            })
        };
        assert_eq!(delete(DELETE_ATTEMPTS - 1), Fate::Retry);
        assert_eq!(delete(DELETE_ATTEMPTS), Fate::Redeliver);
        let crashed = |unfinished| {
            fate(Outcome::UnfinishedAttempts {
                unfinished,
                limit: 3,
            })
        };
        assert_eq!(
            (crashed(0), crashed(2), crashed(3)),
            (Fate::Retry, Fate::Retry, Fate::Quarantine)
        );
        assert_eq!(fate(Outcome::UnfilledNotNull), Fate::Stop);
        let stalled = |stalls| fate(Outcome::StalledAlone { stalls, limit: 3 });
        assert_eq!((stalled(2), stalled(3)), (Fate::Retry, Fate::Quarantine));
    }
}
