//! The deleter: deletes committed messages from SQS, 10 per call, several calls at once, and
//! forgets their leases.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::Committed;
use super::lease::Leases;
use super::{PipelineError, PipelineSettings};
use crate::error::{fate, Fate, Outcome};
use crate::retry::RetryPolicy;
use crate::sqs::{AckHandle, MessageSource, SQS_BATCH_LIMIT};

/// What the deleter did.
#[derive(Debug, Default)]
pub(super) struct Deleted {
    pub deleted: u64,
    /// Committed messages whose delete failed for good.
    pub failed: u64,
    /// Committed messages whose handle SQS no longer took: a later delivery (here or at
    /// another consumer) deletes them, as a duplicate.
    pub superseded: u64,
    /// When the last delete call answered.
    pub last_at: Option<Instant>,
}

/// The deleter's task: deletes committed messages, 10 per call, several calls at once;
/// retries what SQS refuses transiently. Each message's latest receipt handle is the one that
/// counts; handles of earlier deliveries while it was held are deleted too, best effort (SQS may
/// have retired them).
pub(super) struct Deleter<S> {
    pub source: Arc<S>,
    /// Forgotten once deleted (or given up on).
    pub leases: Arc<Leases>,
    /// Committed batches' ack handles, from the loaders.
    pub batches: mpsc::Receiver<Committed>,
    pub settings: Arc<PipelineSettings>,
    /// Cancelled when a delete fails for good, to stop the run.
    pub stop: CancellationToken,
}

impl<S: MessageSource> Deleter<S> {
    pub(super) async fn run(self) -> Result<Deleted, PipelineError> {
        let Deleter {
            source,
            leases,
            mut batches,
            settings,
            stop,
        } = self;
        let mut done = Deleted::default();
        while let Some(Committed { acks, first_held }) = batches.recv().await {
            let messages = acks.len();
            let (latest, older) = leases.deleting(acks);
            let mut seen = HashSet::with_capacity(latest.len() + older.len());
            let mut chunks = |acks: Vec<AckHandle>| {
                let mut chunks: Vec<Vec<AckHandle>> =
                    Vec::with_capacity(acks.len() / SQS_BATCH_LIMIT + 1);
                for ack in acks {
                    if !seen.insert(ack.receipt_handle.clone()) {
                        continue;
                    }
                    match chunks.last_mut() {
                        Some(chunk) if chunk.len() < SQS_BATCH_LIMIT => chunk.push(ack),
                        _ => chunks.push(vec![ack]),
                    }
                }
                chunks
            };
            let (counted, best_effort) = (chunks(latest), chunks(older));
            let retry = settings.source_retry;
            let calls = counted
                .into_iter()
                .map(|chunk| (chunk, true))
                .chain(best_effort.into_iter().map(|chunk| (chunk, false)));
            let mut results = stream::iter(calls)
                .map(|(chunk, counts)| {
                    delete_chunk(source.clone(), leases.clone(), chunk, retry, counts)
                })
                .buffer_unordered(settings.delete_concurrency.max(1));
            while let Some(result) = results.next().await {
                match result {
                    Ok(tally) => {
                        done.deleted += tally.deleted;
                        done.failed += tally.failed;
                        done.superseded += tally.superseded;
                        done.last_at = Some(Instant::now());
                    }
                    Err(e) => {
                        stop.cancel();
                        return Err(e);
                    }
                }
            }
            if let Some(first_held) = first_held {
                leases.settled(messages, first_held);
            }
        }
        Ok(done)
    }
}

/// What deleting one chunk did.
#[derive(Debug, Default)]
struct Tally {
    deleted: u64,
    /// Refused for good, or given up on: they come back (and are skipped by the ledger).
    failed: u64,
    /// Refused as stale handles (see [`crate::sqs::DeleteOutcome::superseded`]).
    superseded: u64,
}

/// Deletes one chunk; when it `counts` (latest handles), forgets their leases after and
/// returns what it did; an earlier delivery's handle counts for nothing either way.
async fn delete_chunk<S: MessageSource>(
    source: Arc<S>,
    leases: Arc<Leases>,
    chunk: Vec<AckHandle>,
    retry: RetryPolicy,
    counts: bool,
) -> Result<Tally, PipelineError> {
    if !counts {
        let _ = source.delete(&chunk).await;
        return Ok(Tally::default());
    }
    let result = delete_with_retry(&*source, chunk.clone(), retry, &leases).await;
    // Deleted, or given up on (then it comes back and the ledger skips it): no longer held.
    let late = leases.forget(&chunk);
    // What failed for good is let go: a drain counts it as its own, coming back. A superseded
    // handle's message is not: it is held elsewhere or gone, and a drain waits for it to
    // leave the queue.
    let result = result.map(|(tally, given_up)| {
        leases.let_go(given_up.iter().map(|a| a.message_id.as_str()));
        tally
    });
    for part in late.chunks(SQS_BATCH_LIMIT) {
        // Deliveries that arrived during the delete: best effort, as older handles are.
        let _ = source.delete(part).await;
    }
    result
}

/// Deletes `pending`, retrying what fails transiently; what it did and the handles refused
/// for good or given up on after the retries.
async fn delete_with_retry<S: MessageSource>(
    source: &S,
    mut pending: Vec<AckHandle>,
    retry: RetryPolicy,
    leases: &Leases,
) -> Result<(Tally, Vec<AckHandle>), PipelineError> {
    let meter = leases.meter();
    let mut tally = Tally::default();
    // Refused for good, or given up on: they come back (and are skipped by the ledger).
    let mut let_go = Vec::new();
    let mut backoff = retry.backoff();
    while !pending.is_empty() {
        let error = match source.delete(&pending).await {
            Ok(outcome) => {
                tally.deleted += outcome.deleted as u64;
                tally.failed += outcome.failed as u64;
                // Refused as stale again and again: a server refusing every delete that way;
                // failed for good, so a drain does not wait for them forever.
                let (again, superseded): (Vec<AckHandle>, Vec<AckHandle>) = outcome
                    .superseded
                    .into_iter()
                    .partition(|a| leases.stale_again(&a.message_id));
                tally.superseded += superseded.len() as u64;
                meter.record_deletes_superseded(superseded.len() as u64);
                if !superseded.is_empty() {
                    tracing::info!(
                        messages = superseded.len(),
                        "delete refused as a stale receipt handle: received again since (here or by another consumer) or already deleted; the later delivery deletes it as a duplicate"
                    );
                }
                if !again.is_empty() {
                    tracing::warn!(
                        messages = again.len(),
                        times = super::lease::STALE_LIMIT,
                        "delete refused as a stale receipt handle on every delivery; taken as failed"
                    );
                    tally.failed += again.len() as u64;
                    meter.record_delete_failures(again.len() as u64);
                    let_go.extend(again);
                }
                if outcome.failed > 0 {
                    tracing::warn!(
                        messages = outcome.failed,
                        "delete refused by sqs; they will come back and be deleted as duplicates"
                    );
                }
                meter.record_delete_failures(outcome.failed as u64);
                let_go.extend(outcome.refused);
                pending = outcome.retryable;
                None
            }
            Err(error) => Some(error),
        };
        if pending.is_empty() {
            break;
        }
        let delay = backoff.failed();
        let attempts = backoff.attempts();
        let fate = fate(Outcome::DeleteFailed {
            error: error.as_ref(),
            attempts,
        });
        match (fate, error) {
            (Fate::Stop, Some(error)) => {
                return Err(PipelineError::Source {
                    attempts,
                    source: error,
                })
            }
            (Fate::Retry, error) if delay.is_some() => {
                if let Some(error) = error {
                    tracing::warn!(attempt = attempts, %error, "delete failed; retrying");
                }
                tokio::time::sleep(delay.unwrap_or_default()).await;
            }
            _ => {
                tracing::warn!(
                    messages = pending.len(),
                    "giving up deleting; they will come back and be skipped as duplicates"
                );
                tally.failed += pending.len() as u64;
                meter.record_delete_failures(pending.len() as u64);
                let_go.extend(pending);
                return Ok((tally, let_go));
            }
        }
    }
    Ok((tally, let_go))
}
