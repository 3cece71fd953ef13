//! The batcher and the loaders: cut batches by size or age, load each in one transaction (up to
//! `loaders` at once), isolate rows the table refuses, retry transient failures, and hand each
//! committed batch's acks to the deleter.

use std::collections::HashSet;

use futures_util::stream::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::{Batch, Committed, Processed};
use super::isolate::{load_isolating, load_with_retry, Failure, LoadContext, NotLoaded};
use super::sink::BatchLoader;
use super::{PipelineError, Summary};
use crate::sqs::AckHandle;

/// What the batcher does next.
enum Next {
    /// Nothing to load yet.
    Wait,
    /// Cut the open batch and load it.
    Cut,
    /// Load this suspect alone (see [`load_isolating`]); its turn
    /// (`batch::SuspectTurn`) is held until the load has ended.
    Alone(Box<Batch>, Option<tokio::sync::OwnedMutexGuard<()>>),
}

/// The batcher and loaders' task: cuts batches by size, window or age and loads each in one
/// transaction, up to `loaders` at once (each on its own connection, see
/// [`BatchLoader::fork`]); each batch's acks go to the
/// deleter when it has committed. When every loader is busy the next batch waits, and so,
/// through the bounded channel, do the receivers.
///
/// A batch is cut at `batch_max_rows`, at half the in-flight bytes or half the window (so one
/// loads while the next fills), or when its first message has waited `batch_max_age` or an
/// eighth of the visibility timeout, whichever is first: a message is committed and deleted
/// before it needs its lease extended.
pub(super) struct Batcher<'a, L> {
    /// From the receivers.
    pub items: mpsc::Receiver<Processed>,
    /// The first loader; forked into `loaders` connections.
    pub loader: L,
    /// Committed batches' acks, to the deleter.
    pub acks: mpsc::Sender<Committed>,
    pub context: LoadContext<'a>,
    /// The run's shutdown request: the open batch is cut and loaded at once.
    pub shutdown: &'a CancellationToken,
}

impl<L: BatchLoader> Batcher<'_, L> {
    pub(super) async fn run(self, summary: &mut Summary) -> Result<(), PipelineError> {
        let Batcher {
            mut items,
            loader,
            acks,
            context,
            shutdown,
        } = self;
        let settings = context.settings;
        let mut idle = vec![loader];
        while idle.len() < settings.loaders.max(1) {
            match idle[0].fork() {
                Some(more) => idle.push(more),
                None => break,
            }
        }
        let acks = &acks;
        let abandon = context.abandon;
        let max_age = match settings.visibility_timeout {
            Some(visibility) => settings.batch_max_age.min(visibility / 8),
            None => settings.batch_max_age,
        };
        let mut loading = futures_util::stream::FuturesUnordered::new();
        let mut failed: Option<PipelineError> = None;
        // Room for a typical batch; a full one grows past it once.
        let capacity = settings.batch_max_rows.min(1_000);
        let mut batch = Batch::with_capacity(capacity);
        let mut deadline: Option<Instant> = None;
        let mut flushed_at_shutdown = false;
        let mut input_done = false;
        while !(input_done && batch.is_empty()) && failed.is_none() {
            let next = tokio::select! {
                biased;
                // A finished load gives its connection back (and its counts).
                Some(done) = loading.next(), if !loading.is_empty() => {
                    finish_load(done, &mut idle, summary, &mut failed, abandon);
                    continue;
                }
                // Age first: a batch never waits longer than its age limit however busy the input.
                _ = sleep_until_some(deadline) => Next::Cut,
                // On shutdown the open batch is committed at once, not after the receivers' last
                // polls; what those bring is committed when they are done.
                _ = shutdown.cancelled(), if !flushed_at_shutdown && !batch.is_empty() => {
                    flushed_at_shutdown = true;
                    Next::Cut
                }
                item = items.recv(), if !input_done => match item {
                    Some(mut p) if p.is_suspect_row() => {
                        summary.received += 1;
                        summary.suspects += 1;
                        let turn = p.turn.take();
                        let mut alone = Batch::with_capacity(1);
                        alone.push(p);
                        Next::Alone(Box::new(alone), turn)
                    }
                    Some(p) => {
                        summary.received += 1;
                        if batch.is_empty() {
                            deadline = Some(Instant::now() + max_age);
                        }
                        batch.push(p);
                        if batch.len() >= settings.batch_max_rows
                            || batch.bytes >= settings.max_in_flight_bytes / 2
                            || batch.len() >= (context.leases.limit() / 2).max(1)
                        {
                            Next::Cut
                        } else {
                            Next::Wait
                        }
                    }
                    None => {
                        input_done = true;
                        Next::Cut
                    }
                },
            };
            let to_load = match next {
                Next::Wait => continue,
                Next::Cut if batch.is_empty() => continue,
                Next::Cut => {
                    deadline = None;
                    std::mem::replace(&mut batch, Batch::with_capacity(capacity))
                }
                Next::Alone(one, turn) => {
                    // A suspect loads with no other load of this queue in flight, from its
                    // attempt's record to its finish (see `load_batch`): a death meanwhile is
                    // its own (or, in a run over several queues, perhaps another queue's
                    // first delivery, which comes back and is charged its own attempts then).
                    // The receivers fill the channel meanwhile; suspects are rare. The turn is
                    // held until this load has ended: during a database outage that is its
                    // retries, and other suspects wait for it.
                    while let Some(done) = loading.next().await {
                        finish_load(done, &mut idle, summary, &mut failed, abandon);
                    }
                    if failed.is_some() {
                        break;
                    }
                    let mut loader = idle.pop().expect("every loader is idle");
                    let mut part = Summary::default();
                    let result = load_batch(&mut loader, *one, acks, context, &mut part).await;
                    finish_load(
                        (loader, part, result),
                        &mut idle,
                        summary,
                        &mut failed,
                        abandon,
                    );
                    drop(turn);
                    continue;
                }
            };
            // Every connection busy: this batch waits for one (the receivers meanwhile fill the
            // channel and then wait too).
            while idle.is_empty() {
                let done = loading.next().await.expect("a load is running");
                finish_load(done, &mut idle, summary, &mut failed, abandon);
            }
            if failed.is_some() {
                break;
            }
            let mut loader = idle.pop().expect("an idle loader");
            loading.push(async move {
                let mut part = Summary::default();
                let result = load_batch(&mut loader, to_load, acks, context, &mut part).await;
                (loader, part, result)
            });
        }
        // Whatever is loading still commits (and is deleted) or fails, before the run goes on.
        while let Some(done) = loading.next().await {
            finish_load(done, &mut idle, summary, &mut failed, abandon);
        }
        failed.map_or(Ok(()), Err)
    }
}

/// A finished load: its connection goes back to `idle` and its counts into `summary`; the
/// first failure is kept, and tells the other loads to stop retrying.
fn finish_load<L>(
    (loader, part, result): (L, Summary, Result<(), PipelineError>),
    idle: &mut Vec<L>,
    summary: &mut Summary,
    failed: &mut Option<PipelineError>,
    abandon: &CancellationToken,
) {
    idle.push(loader);
    summary.absorb_load(part);
    if let Err(e) = result {
        abandon.cancel();
        failed.get_or_insert(e);
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Loads one batch (isolating rows that fail, see [`load_isolating`]),
/// then tells the window and hands the batch's acks to the deleter.
///
/// A suspect's batch of one is an attempt of its own, recorded in the attempt log before the
/// load and finished as soon as the load has ended (committed, quarantined or left), before
/// anything else: the batcher runs it with no other load of its queue in flight, so a body
/// that kills the process in COPY or in the driver leaves only its own attempt unfinished.
async fn load_batch<L: BatchLoader>(
    loader: &mut L,
    batch: Batch,
    acks: &mpsc::Sender<Committed>,
    context: LoadContext<'_>,
    summary: &mut Summary,
) -> Result<(), PipelineError> {
    let suspect = match batch.rows.as_slice() {
        [row] if row.suspect => Some((row.message_id.clone(), row.delivery.ledger_ms)),
        _ => None,
    };
    let mut begun = None;
    if let Some((ledger_id, ledger_ms)) = suspect {
        // A suspect that stalled here before is tried alone now; should it stall again, it
        // is remembered again (see `isolate`).
        context.stallers.forget(&ledger_id);
        if let Some(log) = context.attempts {
            match log.begin(&ledger_id, ledger_ms).await {
                Ok(Some(_)) => begun = Some((log, ledger_id)),
                // Its fate is committed already: nothing to count.
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not record an attempt at loading a suspect; loading it anyway");
                    begun = Some((log, ledger_id));
                }
            }
        }
    }
    #[cfg(feature = "test-support")]
    batch.crash_if_told();
    load_and_hand_over(loader, batch, acks, context, summary, begun).await
}

async fn load_and_hand_over<L: BatchLoader>(
    loader: &mut L,
    mut batch: Batch,
    acks: &mpsc::Sender<Committed>,
    context: LoadContext<'_>,
    summary: &mut Summary,
    begun: Option<(&dyn super::sink::AttemptLog, String)>,
) -> Result<(), PipelineError> {
    let started = Instant::now();
    let messages = batch.len();
    let oldest_sent_ms = batch
        .rows
        .iter()
        .map(|r| r.delivery.sent_timestamp)
        .chain(batch.rejects.iter().map(|r| r.delivery.sent_timestamp))
        .min();
    let loaded = load_whole(loader, &mut batch, context, summary).await;
    if let Some((log, ledger_id)) = begun {
        super::sink::finish_attempt(log, &ledger_id).await;
    }
    let report = loaded?;
    context
        .settings
        .meter
        .record_batch(&crate::telemetry::metrics::BatchCounts {
            received: messages as u64,
            loaded: report.loaded,
            rejected: &report.rejected,
            duplicates: report.duplicates + batch.duplicates_in_batch,
            targets: &report.targets,
            took: started.elapsed(),
            oldest_sent_ms,
        });
    summary.batches += 1;
    summary.duplicate_keys += report.duplicate_keys;
    summary.stale += report.stale;
    context.settings.progress.add(
        messages as u64,
        report.loaded,
        report.rejected.len() as u64,
        report.duplicates + batch.duplicates_in_batch,
    );
    summary.loaded += report.loaded;
    summary.rows += report.rows;
    summary.duplicates += report.duplicates + batch.duplicates_in_batch;
    summary.unknown_fields += batch.unknown_fields;
    for reason in report.rejected {
        *summary.rejected.entry(reason).or_default() += 1;
    }
    tracing::debug!(
        rows = report.loaded,
        duplicates = report.duplicates,
        messages,
        millis = started.elapsed().as_millis() as u64,
        "batch committed"
    );
    // Only now, after every part has committed, may the batch's messages be deleted.
    let committed = Committed {
        acks: batch.acks,
        first_held: batch.first_held,
    };
    if acks.send(committed).await.is_err() {
        tracing::warn!(
            "deleter stopped; committed messages will come back and be skipped as duplicates"
        );
    }
    Ok(())
}

/// Loads `batch`'s rows and rejects, isolating what fails, quarantines the rows the table
/// refuses and lets go of those left for redelivery (their acks leave the batch).
async fn load_whole<L: BatchLoader>(
    loader: &mut L,
    batch: &mut Batch,
    context: LoadContext<'_>,
    summary: &mut Summary,
) -> Result<crate::kind::LoadReport, PipelineError> {
    let whole = Batch::part(
        std::mem::take(&mut batch.rows),
        std::mem::take(&mut batch.rejects),
    );
    // Messages that give rows (an S3 test event gives none, and no table can refuse it).
    let rows = whole.rows.iter().filter(|r| r.rows.rows() > 0).count();
    let mut not_loaded = NotLoaded::default();
    let mut report = load_isolating(loader, whole, &mut not_loaded, context, summary).await?;
    let NotLoaded { refused, left } = not_loaded;
    if rows > 1 && refused.len() == rows {
        // Not one row passes: likely a rule nothing meets. They are data refusals all the
        // same (a structural one stops before this): kept, sealed, for a replay once the
        // table is fixed.
        tracing::error!(
            rows,
            reason = %refused[0].rejection.reason,
            "the table refused every row of a batch; quarantined: fix the table, then `sqs2pg rejects replay --reason table_refused`"
        );
    }
    if !refused.is_empty() {
        tracing::warn!(rows = refused.len(), "quarantining refused rows");
        let rejects = Batch::part(Vec::new(), refused);
        match load_with_retry(loader, &rejects, context, summary).await {
            Ok(r) => report.merge(r),
            Err(Failure::Fatal(error)) => return Err(error),
            Err(Failure::Refused(source) | Failure::Blamed(source)) => {
                return Err(PipelineError::Load {
                    attempts: 1,
                    source,
                })
            }
        }
    }
    if !left.is_empty() {
        summary.left_for_redelivery += left.len() as u64;
        // Their messages stay in SQS: not deleted, no longer extended, back after the
        // visibility timeout with one receive more.
        let left: HashSet<String> = left
            .iter()
            .map(|&i| batch.acks[i].message_id.clone())
            .collect();
        let (kept, gone): (Vec<AckHandle>, Vec<AckHandle>) = std::mem::take(&mut batch.acks)
            .into_iter()
            .partition(|a| !left.contains(a.message_id.as_str()));
        context.leases.forget(&gone);
        context.leases.let_go(left.iter().map(String::as_str));
        batch.acks = kept;
    }
    Ok(report)
}
