//! The source: receiving messages from SQS, deleting them once their fate is committed, and
//! sending bodies (for `sqs2pg send`). The pipeline talks to SQS only through the
//! [`MessageSource`] trait, so a second client (the query-protocol one for old LocalStack) or a
//! fault-injecting test double can stand in for the AWS SDK client in [`sdk`].

pub mod sdk;

use std::future::Future;
use std::time::{Duration, SystemTime};

pub use sdk::SdkQueue;

/// SQS's own limit on messages per receive and entries per batch call.
pub const SQS_BATCH_LIMIT: usize = 10;

/// Message attribute carried by replayed messages: the id to ledger them under (the original
/// message id plus a replay number), so a replay sent twice is still loaded once.
pub const LEDGER_ID_ATTRIBUTE: &str = "sqs2pg-ledger-id";
/// Message attribute carried by replayed messages: the original `SentTimestamp`, so a replayed
/// login keeps the `create_date` of the day it was first sent.
pub const SENT_TIMESTAMP_ATTRIBUTE: &str = "sqs2pg-sent-timestamp";

/// A message to send: a body, and for replays the ledger id and original send time.
#[derive(Clone)]
pub struct Outgoing {
    pub body: String,
    pub replay: Option<ReplayTag>,
}

/// What a replayed message carries besides its body.
#[derive(Debug, Clone)]
pub struct ReplayTag {
    pub ledger_id: String,
    pub sent_timestamp: Option<i64>,
}

/// One message we hold a lease on: its body, its metadata and the handle to delete it.
pub struct Received {
    pub ack: AckHandle,
    /// The id the ledger knows this message by: the SQS message id, or for a replay the id it
    /// was replayed under.
    pub ledger_id: String,
    pub body: String,
    /// `SentTimestamp` attribute as sent (milliseconds on SQS; see `login::validate`).
    pub sent_timestamp: i64,
    /// `ApproximateReceiveCount`: 1 on first delivery.
    pub receive_count: i32,
    pub received_at: SystemTime,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body is personal data: never printed.
        f.debug_struct("Received")
            .field("message_id", &self.ack.message_id)
            .field("body_bytes", &self.body.len())
            .field("receive_count", &self.receive_count)
            .finish_non_exhaustive()
    }
}

/// What is needed to delete (acknowledge) one received message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AckHandle {
    pub message_id: String,
    pub receipt_handle: String,
}

/// Outcome of one `DeleteMessageBatch` call (at most [`SQS_BATCH_LIMIT`] entries).
#[derive(Debug, Default)]
pub struct DeleteOutcome {
    pub deleted: usize,
    /// Entries SQS refused, worth another try (not the sender's fault).
    pub retryable: Vec<AckHandle>,
    /// Entries SQS refused for good (e.g. an expired receipt handle). The message comes back
    /// after its visibility timeout and the ledger turns it into a duplicate that is deleted then.
    pub failed: usize,
}

/// Whether an SQS error is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceErrorKind {
    /// Network trouble, timeouts, throttling, 5xx.
    Transient,
    /// Wrong queue, wrong credentials, no permission, malformed request.
    Permanent,
}

/// An SQS call that failed. The message describes the call and SQS's error code, never a body.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {message}")]
pub struct SourceError {
    pub kind: SourceErrorKind,
    pub operation: &'static str,
    pub message: String,
}

/// The calls the pipeline makes on a queue.
pub trait MessageSource: Send + Sync + 'static {
    /// One long-polling receive of up to `max_messages` (at most 10).
    fn receive(
        &self,
        max_messages: i32,
        wait: Duration,
        visibility_timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<Received>, SourceError>> + Send;

    /// Deletes up to 10 messages whose fate is committed. Entries must have distinct receipt
    /// handles.
    fn delete(
        &self,
        acks: &[AckHandle],
    ) -> impl Future<Output = Result<DeleteOutcome, SourceError>> + Send;

    /// Sets the visibility timeout of up to 10 held messages (`ChangeMessageVisibilityBatch`):
    /// the heartbeat extends it, a release sets 0. Returns the entries SQS refused.
    fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<AckHandle>, SourceError>> + Send;
}
