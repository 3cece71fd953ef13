//! The batch: masked rows and rejections that are committed together, with the ack handles that
//! ride along and are deleted from SQS only after that commit.

use std::collections::HashSet;
use std::time::SystemTime;

use crate::login::{MaskedLogin, Rejection};
use crate::sqs::AckHandle;

/// A masked row and the message it came from.
#[derive(Debug)]
pub struct Row {
    pub message_id: String,
    pub login: MaskedLogin,
}

/// A quarantined message: its id, why, and its delivery metadata. No body, no field values.
#[derive(Debug)]
pub struct Reject {
    pub message_id: String,
    pub rejection: Rejection,
    pub received_at: SystemTime,
    pub receive_count: i32,
}

/// What one received message became, on its way to the batcher.
#[derive(Debug)]
pub struct Processed {
    pub ack: AckHandle,
    pub outcome: Result<MaskedLogin, Rejection>,
    pub received_at: SystemTime,
    pub receive_count: i32,
    pub unknown_fields: u32,
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
    ids: HashSet<String>,
}

impl Batch {
    /// Adds one processed message.
    pub fn push(&mut self, p: Processed) {
        self.unknown_fields += u64::from(p.unknown_fields);
        if !self.ids.insert(p.ack.message_id.clone()) {
            self.duplicates_in_batch += 1;
            self.acks.push(p.ack);
            return;
        }
        let message_id = p.ack.message_id.clone();
        self.acks.push(p.ack);
        match p.outcome {
            Ok(login) => self.rows.push(Row { message_id, login }),
            Err(rejection) => self.rejects.push(Reject {
                message_id,
                rejection,
                received_at: p.received_at,
                receive_count: p.receive_count,
            }),
        }
    }

    /// Number of messages (deliveries) in the batch.
    pub fn len(&self) -> usize {
        self.acks.len()
    }

    /// True when nothing has been pushed.
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }
}
