//! Test doubles at the pipeline's seams: wrappers around the real SQS client and the real
//! loader that lose deletes, count calls or fail loads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqs2pg::pipeline::batch::Batch;
use sqs2pg::postgres::{BatchLoader, LoadError, LoadReport};
use sqs2pg::sqs::{AckHandle, DeleteOutcome, MessageSource, Received, SourceError};

/// Passes receives through; "loses" every delete (reports success without deleting), as if the
/// process died between COMMIT and DeleteMessageBatch. Counts the deletes it swallowed.
pub struct LosesDeletes<S> {
    pub inner: Arc<S>,
    pub swallowed: AtomicU64,
}

impl<S: MessageSource> MessageSource for LosesDeletes<S> {
    async fn receive(
        &self,
        max: i32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Received>, SourceError> {
        self.inner.receive(max, wait, visibility).await
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        self.swallowed
            .fetch_add(acks.len() as u64, Ordering::SeqCst);
        Ok(DeleteOutcome {
            deleted: acks.len(),
            ..DeleteOutcome::default()
        })
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
