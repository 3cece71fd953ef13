//! Test doubles at the pipeline's seams: wrappers around the real SQS client and the real
//! loader that lose deletes, count calls or fail loads.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqs2pg::pipeline::batch::Batch;
use sqs2pg::postgres::{BatchLoader, LoadError, LoadReport};
use sqs2pg::sqs::{AckHandle, DeleteOutcome, MessageSource, Received, SourceError};

/// Passes receives through; "loses" the first delete of each message (reports success without
/// deleting), as if the process died between COMMIT and DeleteMessageBatch. Later deletes of
/// the same message go through. Counts the deletes it swallowed.
pub struct LosesFirstDeletes<S> {
    pub inner: Arc<S>,
    pub swallowed: AtomicU64,
    pub seen: Mutex<HashSet<String>>,
}

impl<S> LosesFirstDeletes<S> {
    pub fn new(inner: Arc<S>) -> Self {
        Self {
            inner,
            swallowed: AtomicU64::new(0),
            seen: Mutex::default(),
        }
    }
}

impl<S: MessageSource> MessageSource for LosesFirstDeletes<S> {
    async fn receive(
        &self,
        max: i32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, SourceError> {
        self.inner.receive(max, wait, visibility).await
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        self.inner.change_visibility(acks, timeout).await
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        let again: Vec<AckHandle> = {
            let mut seen = self.seen.lock().unwrap();
            acks.iter()
                .filter(|a| !seen.insert(a.message_id.clone()))
                .cloned()
                .collect()
        };
        let lost = acks.len() - again.len();
        self.swallowed.fetch_add(lost as u64, Ordering::SeqCst);
        let mut outcome = if again.is_empty() {
            DeleteOutcome::default()
        } else {
            self.inner.delete(&again).await?
        };
        outcome.deleted += lost;
        Ok(outcome)
    }
}

/// Passes receives through, refusing every delete for good (as SQS does for an expired receipt
/// handle).
pub struct RefusesDeletes<S> {
    pub inner: Arc<S>,
}

impl<S: MessageSource> MessageSource for RefusesDeletes<S> {
    async fn receive(
        &self,
        max: i32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, SourceError> {
        self.inner.receive(max, wait, visibility).await
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        self.inner.change_visibility(acks, timeout).await
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        Ok(DeleteOutcome {
            failed: acks.len(),
            ..DeleteOutcome::default()
        })
    }
}

/// Rewrites every message's SentTimestamp to a fixed value (milliseconds since the epoch).
pub struct FixedSentTimestamp<S> {
    pub inner: Arc<S>,
    pub sent_timestamp: i64,
}

impl<S: MessageSource> MessageSource for FixedSentTimestamp<S> {
    async fn receive(
        &self,
        max: i32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, SourceError> {
        let mut messages = self.inner.receive(max, wait, visibility).await?;
        for m in &mut messages {
            m.sent_timestamp = self.sent_timestamp;
        }
        Ok(messages)
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        self.inner.change_visibility(acks, timeout).await
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        self.inner.delete(acks).await
    }
}

/// Passes everything through and counts delete calls.
pub struct CountsDeletes<S> {
    pub inner: Arc<S>,
    pub deletes: AtomicU64,
}

impl<S: MessageSource> MessageSource for CountsDeletes<S> {
    async fn receive(
        &self,
        max: i32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, SourceError> {
        self.inner.receive(max, wait, visibility).await
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        self.inner.change_visibility(acks, timeout).await
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(acks).await
    }
}

/// A loader that fails its first `failures` loads (transiently), then delegates.
pub struct FailingLoader<L> {
    pub inner: L,
    pub failures: u32,
    pub attempts: Arc<AtomicU64>,
}

impl<L: BatchLoader> BatchLoader for FailingLoader<L> {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadError> {
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        if n < u64::from(self.failures) {
            return Err(LoadError::Injected(format!("load {n} fails")));
        }
        self.inner.load(batch).await
    }
}

/// A loader whose first load takes `delay` longer (a slow COPY, a database under load).
pub struct SlowFirstLoad<L> {
    pub inner: L,
    pub delay: Duration,
    pub slowed: bool,
}

impl<L: BatchLoader> BatchLoader for SlowFirstLoad<L> {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadError> {
        if !self.slowed {
            self.slowed = true;
            tokio::time::sleep(self.delay).await;
        }
        self.inner.load(batch).await
    }
}
