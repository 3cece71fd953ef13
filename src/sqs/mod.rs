//! The source: receiving messages from SQS, deleting them once their fate is committed, and
//! sending bodies (for `sqs2pg send`). The pipeline talks to SQS only through the
//! [`MessageSource`] trait, so a fault-injecting test double can stand in for the real client.
//!
//! The real client is [`Queue`] ([`queue`]): it speaks the JSON protocol ([`json`]) or the
//! query protocol ([`query`]; old LocalStack, the exercise's own image, speaks nothing else)
//! over one signed request path of our own ([`transport`]), and in `auto` mode picks the one
//! the server answers. What both clients hand over goes through the same checks here (`accept`): MD5 of
//! the body, the attributes the pipeline needs, one delivery per message id per answer.

pub mod json;
pub mod name;
pub mod query;
pub mod queue;
pub mod transport;
mod xml;

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, SystemTime};

use md5::{Digest, Md5};

pub use json::JsonQueue;
pub use queue::Queue;

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
    /// Message attributes to send, as `String` attributes (name, value).
    pub attributes: Vec<(String, String)>,
    /// Group and deduplication ids, set by [`Queue`] when the queue is a FIFO queue.
    pub(crate) fifo: Option<FifoTag>,
}

impl Outgoing {
    /// A plain message.
    pub fn new(body: String) -> Self {
        Self {
            body,
            replay: None,
            attributes: Vec::new(),
            fifo: None,
        }
    }

    /// A replay of a rejected message, with the message attributes it was sent with and, for
    /// a FIFO queue, its group (deduplicated by the replay's ledger id: the original's own
    /// deduplication id would let SQS drop the replay within five minutes of the original).
    pub fn replay(body: String, tag: ReplayTag, original: Envelope) -> Self {
        let fifo = original.group_id.map(|group_id| FifoTag {
            group_id,
            deduplication_id: tag.ledger_id.clone(),
        });
        Self {
            body,
            replay: Some(tag),
            attributes: original.attributes,
            fifo,
        }
    }

    /// The message in FIFO group `group_id`, deduplicated by `deduplication_id`.
    pub fn in_group(mut self, group_id: &str, deduplication_id: &str) -> Self {
        self.fifo = Some(FifoTag {
            group_id: group_id.to_owned(),
            deduplication_id: deduplication_id.to_owned(),
        });
        self
    }
}

/// What SQS carried besides the body, kept (sealed) with a quarantined message so that a
/// replay is the message it replays: its message attributes, and on FIFO its group and
/// deduplication ids. Debug shows counts only: attribute values can be personal.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deduplication_id: Option<String>,
}

impl Envelope {
    /// Nothing to keep (a standard queue's message without attributes: the login case).
    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty() && self.group_id.is_none() && self.deduplication_id.is_none()
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("attributes", &self.attributes.len())
            .field("fifo", &self.group_id.is_some())
            .finish()
    }
}

/// What a message sent to a FIFO queue must carry.
#[derive(Debug, Clone)]
pub(crate) struct FifoTag {
    pub group_id: String,
    pub deduplication_id: String,
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
    /// `SentTimestamp` in milliseconds (LocalStack 0.14's seconds converted on receipt; a
    /// replay's is its original message's).
    pub sent_timestamp: i64,
    /// `ApproximateReceiveCount`: 1 on first delivery.
    pub receive_count: i32,
    /// `MessageGroupId` (FIFO queues only).
    pub group_id: Option<String>,
    /// `MessageDeduplicationId` (FIFO queues only): kept, sealed, with a rejection.
    pub deduplication_id: Option<String>,
    /// The message attributes with a string value, by name (ours, for replays, left out):
    /// what a mapping's `attr:NAME` columns take.
    pub attributes: Vec<(String, String)>,
    pub received_at: SystemTime,
    /// The body does not match the MD5 the server sent with it (corrupted on the way): the
    /// pipeline does not process it (see `pipeline`).
    pub md5_mismatch: bool,
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
    /// Entries SQS refused for good (e.g. access denied; not a stale handle, see `superseded`).
    /// The message comes back after its visibility timeout and the ledger turns it into a
    /// duplicate that is deleted then.
    pub failed: usize,
    /// The handles of those refused for good that the answer names.
    pub refused: Vec<AckHandle>,
    /// Entries refused because the handle is no longer the message's (`ReceiptHandleIsInvalid`):
    /// it was received again, here or by another consumer, or is already deleted. Its latest
    /// delivery decides its fate, so it is neither counted as failed nor let go.
    pub superseded: Vec<AckHandle>,
}

/// The code SQS gives a delete whose receipt handle is not the message's latest (or whose
/// message is gone).
pub const STALE_HANDLE: &str = "ReceiptHandleIsInvalid";

/// One entry a batch call refused, as either protocol reports it.
pub(crate) struct BatchFailure<'a> {
    pub id: &'a str,
    pub code: &'a str,
    pub sender_fault: bool,
}

/// The request item a batch result entry names: entries are sent with their index as id.
pub(crate) fn batch_entry<'a, T>(items: &'a [T], id: &str) -> Option<&'a T> {
    id.parse::<usize>().ok().and_then(|i| items.get(i))
}

/// A `DeleteMessageBatch` answer: refusals that are not the sender's fault are worth another
/// try; the rest failed for good (the message comes back and is deleted as a duplicate).
pub(crate) fn delete_outcome<'a>(
    acks: &[AckHandle],
    deleted: usize,
    failures: impl IntoIterator<Item = BatchFailure<'a>>,
) -> DeleteOutcome {
    let mut outcome = DeleteOutcome {
        deleted,
        ..DeleteOutcome::default()
    };
    for failure in failures {
        match batch_entry(acks, failure.id) {
            Some(ack) if !failure.sender_fault => outcome.retryable.push(ack.clone()),
            Some(ack) if failure.code.ends_with(STALE_HANDLE) => {
                outcome.superseded.push(ack.clone())
            }
            entry => {
                // Logged by the caller, who knows whether the handle mattered.
                tracing::debug!(code = %failure.code, "delete refused by sqs");
                outcome.failed += 1;
                outcome.refused.extend(entry.cloned());
            }
        }
    }
    outcome
}

/// A `SendMessageBatch` answer: the messages to send again, or an error for a refusal that is
/// the sender's fault.
pub(crate) fn send_retries<'a>(
    messages: &[Outgoing],
    failures: impl IntoIterator<Item = BatchFailure<'a>>,
) -> Result<Vec<Outgoing>, SourceError> {
    let mut retry = Vec::new();
    for failure in failures {
        if failure.sender_fault {
            return Err(SourceError::new(
                SourceErrorKind::Permanent,
                "SendMessageBatch",
                format!("entry refused: {}", failure.code),
            ));
        }
        retry.extend(batch_entry(messages, failure.id).cloned());
    }
    Ok(retry)
}

/// The credentials chain found nothing usable: what to set. `why` is what the chain said, in
/// words (see [`in_words`]), when it said more than "nothing found".
pub(crate) fn no_credentials(operation: &'static str, why: Option<String>) -> SourceError {
    let why = why.map(|w| format!(" ({w})")).unwrap_or_default();
    SourceError::new(
        SourceErrorKind::Permanent,
        operation,
        format!(
            "no AWS credentials could be loaded{why}: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (any values for LocalStack or moto), or AWS_PROFILE, or run \
             with an IAM role"
        ),
    )
}

/// An error and its causes in words: each one's `Display`, joined with ": ", leaving out a
/// cause whose text its parent already says (hyper's and the credentials chain's errors often
/// repeat themselves down the chain). Never `Debug`: a dump of nested structs.
pub(crate) fn in_words(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
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
    /// The HTTP status, when the server answered at all.
    pub status: Option<u16>,
    /// SQS's error code, when the server answered with an error we could read.
    pub code: Option<String>,
    /// The answer to a JSON request looked like a query-protocol-only server's (see
    /// [`json`]): `auto` checks whether the server speaks query.
    pub query_only_hint: bool,
}

impl SourceError {
    /// An error that did not come from a server answer (no status, no code).
    pub fn new(kind: SourceErrorKind, operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            operation,
            message: message.into(),
            status: None,
            code: None,
            query_only_hint: false,
        }
    }

    /// An error answer from the server: retryable for 5xx, 429 and throttling codes.
    pub fn answered(
        operation: &'static str,
        status: u16,
        code: Option<String>,
        message: String,
    ) -> Self {
        let throttled = code.as_deref().is_some_and(|code| {
            matches!(
                code,
                "ThrottlingException"
                    | "RequestThrottled"
                    | "ServiceUnavailable"
                    | "InternalError"
                    | "InternalFailure"
                    | "KmsThrottled"
            )
        });
        Self {
            kind: if status >= 500 || status == 429 || throttled {
                SourceErrorKind::Transient
            } else {
                SourceErrorKind::Permanent
            },
            operation,
            message,
            status: Some(status),
            code,
            query_only_hint: false,
        }
    }
}

/// The wire protocol to speak to SQS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// JSON first; switch to query for the rest of the run if the server turns out to speak
    /// only that.
    #[default]
    Auto,
    /// The AWS JSON 1.0 protocol: real SQS, LocalStack 1.0 and later, moto.
    Json,
    /// The query protocol (form POST, XML answers): real SQS, moto, and old LocalStack (0.14,
    /// the exercise's image), which speaks nothing else.
    Query,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Auto => "auto",
            Protocol::Json => "json",
            Protocol::Query => "query",
        })
    }
}

/// One message as either protocol reads it off the wire, before [`accept`] checks it.
#[derive(Default)]
pub(crate) struct WireMessage {
    pub message_id: Option<String>,
    pub receipt_handle: Option<String>,
    pub body: String,
    pub md5_of_body: Option<String>,
    /// System attributes `SentTimestamp` and `ApproximateReceiveCount`, as text.
    pub sent_timestamp: Option<String>,
    pub receive_count: Option<String>,
    /// Our replay attributes ([`LEDGER_ID_ATTRIBUTE`], [`SENT_TIMESTAMP_ATTRIBUTE`]).
    pub replay_ledger_id: Option<String>,
    pub replay_sent_timestamp: Option<String>,
    /// System attribute `MessageGroupId`.
    pub group_id: Option<String>,
    /// System attribute `MessageDeduplicationId` (FIFO queues only).
    pub deduplication_id: Option<String>,
    /// The other message attributes with a string value (`String` and `Number` types).
    pub attributes: Vec<(String, String)>,
}

/// Turns one receive answer into held messages: checks each body against its MD5 (a mismatch
/// is flagged, counted and logged), keeps one delivery per message id (old LocalStack can
/// repeat a message within one answer), reads the attributes the pipeline needs, and dates and
/// ledgers a replay by its original.
pub(crate) fn accept(wire: Vec<WireMessage>) -> Result<Vec<Received>, SourceError> {
    let received_at = SystemTime::now();
    let mut seen = HashSet::with_capacity(wire.len());
    let mut messages = Vec::with_capacity(wire.len());
    for m in wire {
        let (Some(message_id), Some(receipt_handle)) = (m.message_id, m.receipt_handle) else {
            // Every real SQS message has both; without them we could neither ledger nor
            // delete it, so leave it to come back (and be seen in the server's own metrics).
            tracing::warn!("received a message without id or receipt handle; skipped");
            continue;
        };
        if !seen.insert(message_id.clone()) {
            continue;
        }
        let md5_mismatch = m.md5_of_body.as_deref().is_some_and(|expected| {
            let actual = Md5::digest(m.body.as_bytes());
            !hex_eq(expected, &actual)
        });
        if md5_mismatch {
            tracing::warn!(
                message_id,
                "message body does not match its MD5OfBody (corrupted on the way)"
            );
        }
        // Asked for on every receive. Without it create_date is unknown; that is the server's
        // fault, not the message's, so stop rather than quarantine valid logins.
        let Some(sent_timestamp) = m.sent_timestamp.and_then(|t| t.parse::<i64>().ok()) else {
            return Err(SourceError::new(
                SourceErrorKind::Permanent,
                "ReceiveMessage",
                format!(
                    "message {message_id} came without a numeric SentTimestamp attribute; this SQS server does not support it"
                ),
            ));
        };
        let sent_timestamp = match (&m.replay_ledger_id, m.replay_sent_timestamp) {
            (Some(_), Some(original)) => original.parse().unwrap_or(sent_timestamp),
            _ => sent_timestamp,
        };
        // Milliseconds from here on, whatever unit the server sent (see `kind::sent_millis`).
        let sent_timestamp =
            i64::try_from(crate::kind::sent_millis(sent_timestamp)).unwrap_or(i64::MAX);
        messages.push(Received {
            ledger_id: m.replay_ledger_id.unwrap_or_else(|| message_id.clone()),
            ack: AckHandle {
                message_id,
                receipt_handle,
            },
            body: m.body,
            sent_timestamp,
            receive_count: m.receive_count.and_then(|c| c.parse().ok()).unwrap_or(1),
            group_id: m.group_id,
            deduplication_id: m.deduplication_id,
            attributes: m.attributes,
            received_at,
            md5_mismatch,
        });
    }
    Ok(messages)
}

/// Case-insensitive comparison of a hex string with bytes, without allocating.
fn hex_eq(hex: &str, bytes: &[u8]) -> bool {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    hex.len() == bytes.len() * 2
        && hex.as_bytes().chunks(2).zip(bytes).all(|(pair, b)| {
            pair[0].to_ascii_lowercase() == DIGITS[usize::from(b >> 4)]
                && pair[1].to_ascii_lowercase() == DIGITS[usize::from(b & 15)]
        })
}

/// One `ReceiveMessage` call: how many, how long to wait, the visibility timeout to ask for,
/// and the attempt it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// At most [`SQS_BATCH_LIMIT`].
    pub max_messages: i32,
    /// The long-poll wait (whole seconds, at most 20).
    pub wait: Duration,
    /// The visibility timeout to ask for; the queue's own when `None`.
    pub visibility_timeout: Option<Duration>,
    /// `ReceiveRequestAttemptId`, sent on FIFO queues only. A receive retried after its answer
    /// was lost carries the same id, so SQS hands out the same messages and receipt handles
    /// again instead of keeping them (and, on FIFO, their whole group) hidden for a
    /// visibility timeout. A new receive gets a new id ([`ReceiveRequest::new`]).
    pub attempt_id: String,
}

impl ReceiveRequest {
    /// A new receive, with an attempt id of its own.
    pub fn new(max_messages: i32, wait: Duration, visibility_timeout: Option<Duration>) -> Self {
        // Unique, not secret: SQS accepts up to 128 characters of [A-Za-z0-9] and punctuation.
        let attempt_id = format!("{:032x}", fastrand::u128(..));
        Self {
            max_messages,
            wait,
            visibility_timeout,
            attempt_id,
        }
    }
}

/// A queue's approximate counts (`GetQueueAttributes`): what `drain` reads before it calls a
/// queue empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// `ApproximateNumberOfMessages`: visible, waiting to be received.
    pub visible: u64,
    /// `ApproximateNumberOfMessagesNotVisible`: in flight, held by some consumer.
    pub in_flight: u64,
    /// `ApproximateNumberOfMessagesDelayed`: sent with a delay that has not passed yet.
    pub delayed: u64,
}

impl QueueCounts {
    /// Nothing visible, in flight or delayed.
    pub fn is_empty(&self) -> bool {
        self.visible == 0 && self.in_flight == 0 && self.delayed == 0
    }

    /// The three counts from `GetQueueAttributes` pairs (a count the server leaves out is 0).
    pub fn from_attributes(attrs: &[(String, String)]) -> Self {
        let count = |name: &str| number(attrs, name).unwrap_or(0);
        Self {
            visible: count(QueueCounts::ATTRIBUTES[0]),
            in_flight: count(QueueCounts::ATTRIBUTES[1]),
            delayed: count(QueueCounts::ATTRIBUTES[2]),
        }
    }

    /// The attribute names to ask for.
    pub const ATTRIBUTES: [&'static str; 3] = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ];
}

/// The numeric queue attribute `name` among `attrs`.
pub(crate) fn number(attrs: &[(String, String)], name: &str) -> Option<u64> {
    attrs
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// The calls the pipeline makes on a queue.
pub trait MessageSource: Send + Sync + 'static {
    /// One long-polling receive of up to `request.max_messages` (at most 10).
    fn receive(
        &self,
        request: &ReceiveRequest,
    ) -> impl Future<Output = Result<Vec<Received>, SourceError>> + Send;

    /// The queue's approximate counts: visible, in flight (held by anyone, this run
    /// included) and delayed.
    fn counts(&self) -> impl Future<Output = Result<QueueCounts, SourceError>> + Send;

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

#[cfg(test)]
mod tests;
