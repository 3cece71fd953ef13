//! The batch: each message's rows (as its kind encoded them) and rejections, committed
//! together, with the ack handles that ride along and are deleted from SQS only after that
//! commit.

use std::collections::HashSet;

use zeroize::Zeroizing;

use crate::keys::{BodySealer, SealedBody};
use crate::kind::{CopyRows, Delivery, Reject, Rejection};
use crate::sqs::{AckHandle, Envelope};

/// The time half of a message's ledger key, `sqs2pg.ledger (sent_ms, message_id)`: its
/// SentTimestamp in milliseconds, which every delivery of the message carries unchanged; for a
/// replay (whose ledger id differs from its SQS message id) 0, as replays are kept apart and
/// never pruned, and a replay sent twice carries two SentTimestamps.
pub fn ledger_ms(sent_timestamp: i64, is_replay: bool) -> i64 {
    // Already milliseconds: `sqs::accept` normalised it where the message was received.
    if is_replay {
        0
    } else {
        sent_timestamp
    }
}

/// The raw body of a message whose row is not committed yet. It is kept (and wiped from memory
/// when dropped) so that a row the database refuses can still be quarantined with its body,
/// and sealed only then: sealing every body up front cost more than the whole transform
/// (BENCHMARKS.md). Debug prints nothing of it.
pub struct HeldBody {
    body: Zeroizing<String>,
    /// What SQS carried besides the body; `None` when nothing (the login case costs nothing).
    envelope: Option<Box<Envelope>>,
}

impl HeldBody {
    pub fn new(body: String, envelope: Envelope) -> Self {
        Self {
            body: Zeroizing::new(body),
            envelope: (!envelope.is_empty()).then(|| Box::new(envelope)),
        }
    }
}

impl std::fmt::Debug for HeldBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeldBody({} bytes)", self.body.len())
    }
}

/// A quarantined message's body and envelope, sealed.
#[derive(Debug)]
pub struct SealedMessage {
    pub body: SealedBody,
    pub envelope: Option<SealedBody>,
}

/// What the envelope of message `message_id` is sealed bound to: not the body's binding, so
/// neither opens as the other.
fn envelope_binding(message_id: &str) -> String {
    format!("{message_id}#envelope")
}

/// Seals a message's body and, when it carried any, its envelope (as JSON), both bound to
/// `message_id`.
pub fn seal(
    sealer: &BodySealer,
    message_id: &str,
    body: &str,
    envelope: Option<&Envelope>,
) -> SealedMessage {
    SealedMessage {
        body: sealer.seal(message_id, body),
        envelope: envelope.filter(|e| !e.is_empty()).map(|e| {
            let json = Zeroizing::new(
                serde_json::to_string(e).expect("an envelope of strings serialises"),
            );
            sealer.seal(&envelope_binding(message_id), &json)
        }),
    }
}

/// Opens an envelope sealed by [`seal`].
pub fn open_envelope(
    sealer: &BodySealer,
    message_id: &str,
    sealed: &[u8],
) -> Result<Envelope, String> {
    let json = Zeroizing::new(
        sealer
            .open(&envelope_binding(message_id), sealed)
            .map_err(|e| format!("its envelope: {e}"))?,
    );
    serde_json::from_str(&json).map_err(|e| format!("its envelope is not one: {e}"))
}

/// The rows of one message (none, one or several), masked and encoded by its kind, and the
/// message they came from. The ledger records the message once, with all of them.
#[derive(Debug)]
pub struct Row {
    pub message_id: String,
    pub rows: CopyRows,
    pub delivery: Delivery,
    pub body: HeldBody,
    /// Where the row's delivery is in its batch's `acks` (so a row left for redelivery keeps
    /// its message in SQS).
    pub ack_index: usize,
    /// A suspect's row, loaded alone under the short bound.
    pub suspect: bool,
}

impl Row {
    /// The row's message quarantined instead (the database refused the row): its body is
    /// sealed now.
    pub fn into_reject(self, rejection: Rejection, sealer: &BodySealer) -> Reject {
        let sealed = seal(
            sealer,
            &self.message_id,
            &self.body.body,
            self.body.envelope.as_deref(),
        );
        Reject {
            sealed_body: sealed.body,
            sealed_envelope: sealed.envelope,
            message_id: self.message_id,
            rejection,
            delivery: self.delivery,
        }
    }
}

/// What one received message became, on its way to the batcher.
#[derive(Debug)]
pub struct Processed {
    pub ack: AckHandle,
    /// The id the ledger (and the rows and rejections) know the message by.
    pub ledger_id: String,
    /// A row keeps its raw body until committed; a rejection's body is sealed at once.
    pub outcome: Result<(CopyRows, HeldBody), (Rejection, SealedMessage)>,
    pub delivery: Delivery,
    pub unknown_fields: u32,
    /// The message's share of the in-flight byte budget, given back when its batch is done.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When the run took its lease (the receive's answer).
    pub held_since: tokio::time::Instant,
    /// Received more often than `--max-receive-count`, or known to have stalled the database
    /// alone before ([`Stallers`]): a valid one is loaded alone, where the poison verdict is
    /// made (see `pipeline::load`).
    pub suspect: bool,
    /// A valid suspect's turn ([`SuspectTurn`]), held from its transform's attempt until its
    /// load alone has ended.
    pub turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Held while an attempt at a suspect is open, from the record of its transform's attempt to
/// the end of its load alone: no two suspects' attempts are open at once in the process, so a
/// body that kills the process while a suspect's attempt is open is that suspect's (or a
/// first delivery's in another queue's load, which the attempt log cannot tell apart). One per
/// process, shared by every queue's pipeline (`PipelineSettings::suspect_turn`, cloned with
/// the settings): a death ends every queue's attempts.
pub type SuspectTurn = std::sync::Arc<tokio::sync::Mutex<()>>;

/// At most this many [`Stallers`] are remembered (stalling bodies are rare; this only bounds
/// the memory of ones that went elsewhere).
const STALLERS_KEPT: usize = 10_000;

/// Messages whose load alone stalled the database on an earlier delivery to this process and
/// that are not kept aside yet: each comes back as a suspect, loaded alone under the short
/// bound at once, instead of stalling a whole batch and its search again. Each is forgotten
/// when its next load alone begins (and remembered again if it stalls again); one that never
/// comes back here (another replica took it) stays until the set reaches `STALLERS_KEPT` and
/// is emptied. A replica that did not see the stall finds it the slow way; the count in the
/// database is shared.
#[derive(Debug, Default)]
pub struct Stallers {
    ids: std::sync::Mutex<HashSet<String>>,
    /// Whether `ids` holds any: every message asks, and almost always none does, so the
    /// answer is an atomic load, not a lock.
    any: std::sync::atomic::AtomicBool,
}

impl Stallers {
    pub fn insert(&self, ledger_id: &str) {
        let mut ids = self.lock();
        if ids.len() >= STALLERS_KEPT {
            ids.clear();
        }
        ids.insert(ledger_id.to_owned());
        self.any.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// True for a message known to stall.
    pub fn contains(&self, ledger_id: &str) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed) && self.lock().contains(ledger_id)
    }

    pub fn forget(&self, ledger_id: &str) {
        if self.any.load(std::sync::atomic::Ordering::Relaxed) {
            let mut ids = self.lock();
            ids.remove(ledger_id);
            self.any
                .store(!ids.is_empty(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Processed {
    /// A valid message received too often: loaded alone.
    pub fn is_suspect_row(&self) -> bool {
        self.suspect && self.outcome.is_ok()
    }
}

/// Rows, rejections and the ack handles of every message in them. One message id appears at
/// most once in `rows` + `rejects` (a second delivery within the batch only adds its handle).
#[derive(Debug, Default)]
pub struct Batch {
    pub rows: Vec<Row>,
    pub rejects: Vec<Reject>,
    pub acks: Vec<AckHandle>,
    /// Messages delivered twice within this batch (their first copy is in the batch).
    pub duplicates_in_batch: u64,
    /// Unknown JSON fields seen in this batch's bodies.
    pub unknown_fields: u64,
    /// Body bytes of the messages in the batch (as counted against the in-flight budget).
    pub bytes: usize,
    /// Ledger ids in the batch (foldhash: ids come from SQS or from replays we sent).
    ids: HashSet<String, foldhash::fast::RandomState>,
    /// In-flight budget held by the batch's messages; released when the batch is dropped.
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    /// When the run took the lease of the batch's first message.
    pub first_held: Option<tokio::time::Instant>,
}

impl Batch {
    /// An empty batch with room for `rows` messages (no reallocation while it fills).
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            rows: Vec::with_capacity(rows),
            acks: Vec::with_capacity(rows),
            ids: HashSet::with_capacity_and_hasher(rows, Default::default()),
            permits: Vec::with_capacity(rows),
            ..Self::default()
        }
    }

    /// Adds one processed message.
    pub fn push(&mut self, mut p: Processed) {
        self.unknown_fields += u64::from(p.unknown_fields);
        self.first_held = Some(
            self.first_held
                .map_or(p.held_since, |t| t.min(p.held_since)),
        );
        if let Some(permit) = p.permit.take() {
            self.bytes += permit.num_permits();
            self.permits.push(permit);
        }
        if !self.ids.insert(p.ledger_id.clone()) {
            self.duplicates_in_batch += 1;
            self.acks.push(p.ack);
            return;
        }
        let message_id = p.ledger_id;
        let ack_index = self.acks.len();
        self.acks.push(p.ack);
        match p.outcome {
            Ok((rows, body)) => self.rows.push(Row {
                message_id,
                rows,
                delivery: p.delivery,
                body,
                ack_index,
                suspect: p.suspect,
            }),
            Err((rejection, sealed)) => self.rejects.push(Reject {
                message_id,
                rejection,
                delivery: p.delivery,
                sealed_body: sealed.body,
                sealed_envelope: sealed.envelope,
            }),
        }
    }

    /// A batch of just these rows and rejects, for loading part of a batch (no ack handles:
    /// those stay with the whole batch and are deleted once every part has committed).
    pub fn part(rows: Vec<Row>, rejects: Vec<Reject>) -> Self {
        Self {
            rows,
            rejects,
            ..Self::default()
        }
    }

    /// Number of messages (deliveries) in the batch, or of rows and rejects in a part.
    pub fn len(&self) -> usize {
        self.acks.len().max(self.rows.len() + self.rejects.len())
    }

    /// True when nothing has been pushed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A committed batch's messages, on their way to be deleted.
#[derive(Debug)]
pub struct Committed {
    pub acks: Vec<AckHandle>,
    /// When the run took the lease of the first of them (the window learns from how long the
    /// batch took to settle).
    pub first_held: Option<tokio::time::Instant>,
}

/// Test support: ends the process at once (an abort, as a crash in a dependency would) when
/// a body contains the text in `SQS2PG_TEST_CRASH_ON` and `place` is where
/// `SQS2PG_TEST_CRASH_AT` says (`transform`, the default, or `load`), so the tests can send a
/// message that kills whatever processes it. Compiled only with the `test-support` feature.
#[cfg(feature = "test-support")]
pub(super) fn crash_if_told(body: &str, place: &str) {
    static TOLD: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();
    let told = TOLD.get_or_init(|| {
        let marker = std::env::var("SQS2PG_TEST_CRASH_ON")
            .ok()
            .filter(|m| !m.is_empty())?;
        let at = std::env::var("SQS2PG_TEST_CRASH_AT").unwrap_or_else(|_| "transform".into());
        Some((marker, at))
    });
    if told
        .as_ref()
        .is_some_and(|(marker, at)| at == place && body.contains(marker.as_str()))
    {
        std::process::abort();
    }
}

#[cfg(feature = "test-support")]
impl Batch {
    /// [`crash_if_told`] for every row's body, as its load begins.
    pub(super) fn crash_if_told(&self) {
        for row in &self.rows {
            crash_if_told(&row.body.body, "load");
        }
    }
}
