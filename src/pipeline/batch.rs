//! The batch: masked rows and rejections that are committed together, with the ack handles that
//! ride along and are deleted from SQS only after that commit.

use std::collections::HashSet;
use std::time::SystemTime;

use crate::login::{MaskedLogin, Rejection, SealedBody};
use crate::sqs::AckHandle;

/// What is kept of a message in case it is quarantined: delivery metadata and the body,
/// sealed (encrypted) so only key holders can read it.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub received_at: SystemTime,
    pub receive_count: i32,
    /// The SentTimestamp the message was dated by, so a replay keeps its `create_date`.
    pub sent_timestamp: i64,
    pub sealed_body: SealedBody,
}

/// A masked row and the message it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub message_id: String,
    pub login: MaskedLogin,
    pub evidence: Evidence,
}

impl Row {
    /// The row's message quarantined instead (the database refused the row).
    pub fn into_reject(self, rejection: Rejection) -> Reject {
        Reject {
            message_id: self.message_id,
            rejection,
            evidence: self.evidence,
        }
    }
}

/// A quarantined message: its id, why, and its evidence. No field values in the clear.
#[derive(Debug, Clone)]
pub struct Reject {
    pub message_id: String,
    pub rejection: Rejection,
    pub evidence: Evidence,
}

/// What one received message became, on its way to the batcher.
#[derive(Debug)]
pub struct Processed {
    pub ack: AckHandle,
    /// The id the ledger (and the rows and rejections) know the message by.
    pub ledger_id: String,
    pub outcome: Result<MaskedLogin, Rejection>,
    pub evidence: Evidence,
    pub unknown_fields: u32,
    /// The message's share of the in-flight byte budget, given back when its batch is done.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
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
    ids: HashSet<String>,
    /// In-flight budget held by the batch's messages; released when the batch is dropped.
    permits: Vec<tokio::sync::OwnedSemaphorePermit>,
}

impl Batch {
    /// Adds one processed message.
    pub fn push(&mut self, mut p: Processed) {
        self.unknown_fields += u64::from(p.unknown_fields);
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
        self.acks.push(p.ack);
        match p.outcome {
            Ok(login) => self.rows.push(Row {
                message_id,
                login,
                evidence: p.evidence,
            }),
            Err(rejection) => self.rejects.push(Reject {
                message_id,
                rejection,
                evidence: p.evidence,
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
