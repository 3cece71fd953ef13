//! The pipeline: receivers -> transform -> batcher/loader -> deleter.
//!
//! ```text
//!  receiver x N ──Processed──▶ batcher+loader ──ack handles──▶ deleter
//!  (long poll, transform)      (rows|bytes|age, one tx)        (DeleteMessageBatch x10)
//! ```
//!
//! - Receivers long-poll SQS (10 per call; in `run`, only as many as full receives call for,
//!   see `Active`), run the pure transform (parse, validate, mask) and
//!   send each result into a bounded channel: when the loader is slow, receivers wait, so memory
//!   stays bounded however deep the queue is.
//! - The batcher cuts a batch at `batch_max_rows` or `batch_max_age`, whichever comes first, and
//!   the loader commits it in one transaction, retrying transient failures with backoff.
//! - Only after COMMIT are the batch's ack handles handed to the deleter, which deletes them
//!   concurrently with the next load. A failed load deletes nothing.
//! - Shutdown (a cancelled token, or a drained queue: an empty long poll while the run holds
//!   nothing, so a FIFO group blocked by our own in-flight messages is not taken for empty)
//!   stops the receivers; the loader flushes what it holds, the deleter deletes what was
//!   committed, then the run returns its summary.

pub mod batch;
pub mod lease;
pub mod summary;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{fate, Fate, Outcome, RetryPolicy};
use crate::login::{transform, BodySealer, Masker, Reason, Rejection, Transformed};
use crate::postgres::{BatchLoader, LoadError, LoadReport};
use crate::sqs::{AckHandle, MessageSource, Received, SourceError, SQS_BATCH_LIMIT};
use batch::{Batch, Delivery, HeldBody, Processed, Reject};
use lease::Leases;
pub use summary::{Progress, Summary};

/// Whether the pipeline stops when the queue is empty (`drain`) or runs until shut down (`run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Drain,
    Run,
}

/// Tuning of the pipeline; see `config` for the defaults and why.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub mode: Mode,
    pub receivers: usize,
    /// Batches loading at once, each over its own connection (see `BatchLoader::fork`).
    pub loaders: usize,
    pub wait_time: Duration,
    pub visibility_timeout: Option<Duration>,
    pub batch_max_rows: usize,
    pub batch_max_age: Duration,
    pub max_body_bytes: usize,
    /// Messages received more often than this are quarantined as `poison:receive_count`.
    pub max_receive_count: i32,
    pub delete_concurrency: usize,
    pub load_retry: RetryPolicy,
    pub source_retry: RetryPolicy,
    /// After a shutdown request, the longest the run takes to flush, commit, delete and
    /// release before it gives up on what is left (which SQS then redelivers).
    pub shutdown_timeout: Duration,
    /// Body bytes received and not yet committed, at most (plus one receive per receiver):
    /// receiving pauses at this budget, so memory stays bounded however deep the queue is.
    /// A batch is cut at half of it, so one batch can load while the next fills.
    pub max_in_flight_bytes: usize,
    /// Live counts, for whoever wants to show progress.
    pub progress: Arc<Progress>,
}

impl PipelineSettings {
    /// The last part of the shutdown budget, kept for releasing held messages.
    fn release_reserve(&self) -> Duration {
        (self.shutdown_timeout / 5).min(Duration::from_secs(5))
    }

    /// How long a receiver's in-flight long poll may run on after shutdown: its wait plus a
    /// little, but at most half the time left for flushing, so an idle poll never holds up
    /// the exit. (A poll dropped mid-flight on an idle queue brings nothing; on a busy one it
    /// returns at once.)
    fn receive_grace(&self) -> Duration {
        let flushing = self.shutdown_timeout.saturating_sub(self.release_reserve());
        (self.wait_time + Duration::from_secs(5)).min(flushing / 2)
    }
}

/// Why a run could not finish. Whatever was not committed stays in SQS and is redelivered.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("loading into PostgreSQL failed after {attempts} attempt(s): {source}")]
    Load {
        attempts: u32,
        #[source]
        source: LoadError,
    },
    #[error("SQS failed after {attempts} attempt(s): {source}")]
    Source {
        attempts: u32,
        #[source]
        source: SourceError,
    },
    #[error("the shutdown deadline ({} s) passed before everything was committed and deleted; uncommitted messages were released and will be redelivered, and committed ones not yet deleted will come back and be skipped as duplicates", .timeout.as_secs())]
    ShutdownDeadline { timeout: Duration },
    #[error("PostgreSQL refused every one of the {rows} rows of a batch ({detail}): the table has a rule no row meets; fix the table (the refused rows were not quarantined, and nothing was deleted)")]
    TableRefusesEverything { rows: usize, detail: String },
    /// `drain` committed everything it could, but left messages behind: some could not be
    /// deleted (they come back and the next run deletes them as duplicates; the ledger keeps
    /// them out of the table), or some failed their MD5 check (they come back and are processed
    /// by a later run).
    #[error("{}", incomplete(.0))]
    Incomplete(Box<Summary>),
}

/// Runs the pipeline until the queue is drained (`Mode::Drain`) or `shutdown` is cancelled.
pub async fn run<S: MessageSource, L: BatchLoader>(
    source: Arc<S>,
    loader: L,
    masker: Masker,
    sealer: BodySealer,
    settings: PipelineSettings,
    shutdown: CancellationToken,
) -> Result<Summary, PipelineError> {
    let started = Instant::now();
    // Cancelled on shutdown, and by any stage that must stop the run.
    let stop = shutdown.child_token();
    let settings = Arc::new(settings);
    let (item_tx, item_rx) = mpsc::channel::<Processed>(settings.batch_max_rows.max(10) * 2);
    let (ack_tx, ack_rx) = mpsc::channel::<Vec<AckHandle>>(4);
    let leases = Arc::new(Leases::default());

    // The heartbeat runs until every delete is done; it needs to know the visibility timeout.
    let heartbeat_done = CancellationToken::new();
    let heartbeat = settings.visibility_timeout.map(|visibility| {
        tokio::spawn(lease::heartbeat(
            source.clone(),
            leases.clone(),
            visibility,
            heartbeat_done.clone(),
        ))
    });

    let stage = Arc::new(Stage {
        masker,
        sealer,
        settings: settings.clone(),
        budget: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight_bytes)),
        md5_mismatches: std::sync::atomic::AtomicU64::new(0),
        active: Active::new(settings.receivers.max(1)),
    });
    let receivers: Vec<_> = (0..settings.receivers.max(1))
        .map(|id| {
            tokio::spawn(receive_loop(
                id,
                source.clone(),
                leases.clone(),
                item_tx.clone(),
                stage.clone(),
                stop.clone(),
            ))
        })
        .collect();
    drop(item_tx);
    let deleter = tokio::spawn(delete_loop(
        source.clone(),
        leases.clone(),
        ack_rx,
        settings.clone(),
        stop.clone(),
    ));
    let aborts: Vec<_> = receivers
        .iter()
        .map(tokio::task::JoinHandle::abort_handle)
        .chain([deleter.abort_handle()])
        .collect();

    let mut summary = Summary::default();
    let graceful = async {
        let loaded = batch_loop(
            item_rx,
            loader,
            ack_tx,
            &settings,
            &stage.sealer,
            &shutdown,
            &mut summary,
        )
        .await;
        if loaded.is_err() {
            stop.cancel();
        }
        let mut first_error = loaded.err();
        for receiver in receivers {
            if let Err(e) = receiver.await.expect("receiver task panicked") {
                first_error.get_or_insert(e);
            }
        }
        match deleter.await.expect("deleter task panicked") {
            Ok((deleted, failures)) => {
                summary.deleted = deleted;
                summary.delete_failures = failures;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        first_error
    };
    // After a shutdown request the run has `shutdown_timeout`: flushing gets all of it but the
    // release reserve; then whatever is still running is abandoned.
    let deadline = async {
        shutdown.cancelled().await;
        let flushing = settings
            .shutdown_timeout
            .saturating_sub(settings.release_reserve());
        tokio::time::sleep(flushing).await;
    };
    let first_error = tokio::select! {
        first_error = graceful => first_error,
        () = deadline => {
            // Dropping `graceful` dropped the open load: unless its COMMIT was already on the
            // wire, it never commits (and if it was, the ledger makes the redelivery harmless).
            for abort in &aborts {
                abort.abort();
            }
            // Abort takes effect at the tasks' next await; wait for that (briefly), so no
            // receiver records a lease after the release below has collected them.
            let settled = async {
                while !aborts.iter().all(tokio::task::AbortHandle::is_finished) {
                    tokio::task::yield_now().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), settled).await;
            tracing::warn!(timeout_secs = settings.shutdown_timeout.as_secs(), "shutdown deadline reached; abandoning what is not committed");
            Some(PipelineError::ShutdownDeadline { timeout: settings.shutdown_timeout })
        }
    };
    heartbeat_done.cancel();
    if let Some(heartbeat) = heartbeat {
        summary.visibility_extended = heartbeat.await.expect("heartbeat task panicked");
    }
    // Whatever is still held was received but not committed (a failed or interrupted load):
    // make it visible now rather than after its timeout.
    let release_bound = if shutdown.is_cancelled() {
        settings.release_reserve()
    } else {
        lease::RELEASE_DEADLINE
    };
    summary.released = lease::release_all(&*source, &leases, release_bound).await;
    summary.md5_mismatches = stage
        .md5_mismatches
        .load(std::sync::atomic::Ordering::Relaxed);
    summary.elapsed = started.elapsed();
    match first_error {
        Some(e) => Err(e),
        None if settings.mode == Mode::Drain
            && (summary.delete_failures > 0 || summary.md5_mismatches > 0) =>
        {
            Err(PipelineError::Incomplete(Box::new(summary)))
        }
        None => Ok(summary),
    }
}

/// What `drain` left behind, in words.
fn incomplete(summary: &Summary) -> String {
    let mut parts = Vec::new();
    if summary.delete_failures > 0 {
        parts.push(format!(
            "{} committed message(s) could not be deleted from SQS; they will come back and be skipped as duplicates on the next run",
            summary.delete_failures
        ));
    }
    if summary.md5_mismatches > 0 {
        parts.push(format!(
            "{} message(s) failed their MD5 check and were not processed; SQS redelivers them after their visibility timeout",
            summary.md5_mismatches
        ));
    }
    parts.join("; ")
}

/// One receiver: long-poll, transform, hand over; stop on shutdown, or in drain mode when a long
/// poll comes back empty while the run holds nothing.
async fn receive_loop<S: MessageSource>(
    id: usize,
    source: Arc<S>,
    leases: Arc<Leases>,
    items: mpsc::Sender<Processed>,
    stage: Arc<Stage>,
    stop: CancellationToken,
) -> Result<(), PipelineError> {
    let settings = &stage.settings;
    let mut failures = 0u32;
    // In drain mode, after an empty poll that does not count (it started while we held
    // messages), the next one only confirms: a short wait is enough to see a queue is empty.
    let mut confirming = false;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        // In `run`, a receiver beyond the active count waits until receives come back full.
        if settings.mode == Mode::Run && !stage.active.admits(id) {
            let more = stage.active.more.notified();
            if !stage.active.admits(id) {
                tokio::select! {
                    _ = more => {}
                    _ = stop.cancelled() => return Ok(()),
                }
            }
            continue;
        }
        // Not dropped as soon as `stop` fires: a receive dropped mid-flight would leave the
        // messages SQS handed out invisible until their timeout. It gets the receive grace
        // (one long poll plus a few seconds, within the shutdown budget) to finish; what it
        // brings is held, then released at the end of the run.
        let grace = async {
            stop.cancelled().await;
            tokio::time::sleep(settings.receive_grace()).await;
        };
        let held_before = !leases.is_empty();
        let wait = if confirming {
            settings.wait_time.min(Duration::from_secs(1))
        } else {
            settings.wait_time
        };
        let received = tokio::select! {
            r = source.receive(SQS_BATCH_LIMIT as i32, wait, settings.visibility_timeout) => r,
            _ = grace => return Ok(()),
        };
        let messages = match received {
            Ok(messages) => {
                failures = 0;
                messages
            }
            Err(error) => {
                failures += 1;
                if fate(Outcome::Sqs(&error)) == Fate::Retry
                    && settings.source_retry.allows(failures)
                {
                    tracing::warn!(receiver = id, attempt = failures, %error, "receive failed; retrying");
                    crate::telemetry::metrics::record_receive_retry();
                    let delay = settings.source_retry.delay(failures);
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
                stop.cancel();
                return Err(PipelineError::Source {
                    attempts: failures,
                    source: error,
                });
            }
        };
        // A body that failed its MD5 check is not processed: not held (so not kept invisible
        // by the heartbeat), just counted; SQS delivers it again after its visibility timeout.
        // Only once it has come back too often is it passed on, to be quarantined as poison.
        let (corrupted, messages): (Vec<Received>, Vec<Received>) = messages
            .into_iter()
            .partition(|m| m.md5_mismatch && m.receive_count <= settings.max_receive_count);
        if !corrupted.is_empty() {
            stage
                .md5_mismatches
                .fetch_add(corrupted.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        let corrupted_only = messages.is_empty() && !corrupted.is_empty();
        stage.active.observe(messages.len() + corrupted.len());
        leases.hold(messages.iter().map(|m| &m.ack));
        if stop.is_cancelled() {
            return Ok(());
        }
        if corrupted_only {
            // Not an empty queue: poll on.
            continue;
        }
        if messages.is_empty() {
            // Drained: a whole long poll came back empty while this run held nothing. Messages
            // we hold (in a batch, being deleted) can hide others: on a FIFO queue SQS hands
            // out none of a group while part of it is in flight (and moto decides that once,
            // when a poll starts), so only a poll started after they were deleted counts.
            if settings.mode == Mode::Drain && !held_before && leases.is_empty() {
                tracing::debug!(
                    receiver = id,
                    "queue empty for one long poll with nothing held; receiver done"
                );
                return Ok(());
            }
            confirming = settings.mode == Mode::Drain;
            if settings.wait_time.is_zero() {
                // Short polling on an empty queue would spin (and SQS bills per request).
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            continue;
        }
        confirming = false;
        tracing::trace!(receiver = id, count = messages.len(), "received");
        for m in messages {
            // Backpressure: wait for this body's share of the in-flight budget. While the
            // database is slow or down the budget stays spent and receiving pauses here; what
            // we hold meanwhile is kept invisible by the heartbeat.
            let bytes = m.body.len().clamp(1, settings.max_in_flight_bytes) as u32;
            let permit = tokio::select! {
                permit = stage.budget.clone().acquire_many_owned(bytes) => {
                    permit.expect("the budget is never closed")
                }
                _ = stop.cancelled() => return Ok(()),
            };
            let mut processed = stage.process(m);
            processed.permit = Some(permit);
            if items.send(processed).await.is_err() {
                // The loader has stopped; what we hold was not committed and is released.
                return Ok(());
            }
        }
    }
}

/// What the receivers share: what turns a received message into a [`Processed`] one, the
/// in-flight byte budget, and the count of bodies that failed their MD5 check.
struct Stage {
    masker: Masker,
    sealer: BodySealer,
    settings: Arc<PipelineSettings>,
    /// Body bytes in flight ([`PipelineSettings::max_in_flight_bytes`]).
    budget: Arc<tokio::sync::Semaphore>,
    md5_mismatches: std::sync::atomic::AtomicU64,
    /// How many receivers poll now (`run` only; `drain` always polls with all of them).
    active: Active,
}

/// Adaptive receive concurrency for `run`: a full receive (10 messages) lets one more receiver
/// poll, an empty one sends one back to wait, never below one. A busy queue gets every
/// receiver; an idle one is long-polled by one, since SQS bills per request.
struct Active {
    receivers: std::sync::atomic::AtomicUsize,
    max: usize,
    more: tokio::sync::Notify,
}

impl Active {
    fn new(max: usize) -> Self {
        Self {
            receivers: std::sync::atomic::AtomicUsize::new(max),
            max,
            more: tokio::sync::Notify::new(),
        }
    }

    /// True while receiver `id` may poll.
    fn admits(&self, id: usize) -> bool {
        id < self.receivers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adjusts to what a receive brought.
    fn observe(&self, received: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if received >= SQS_BATCH_LIMIT {
            let grew = self
                .receivers
                .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
                .is_ok();
            if grew {
                self.more.notify_waiters();
            }
        } else if received == 0 {
            let _ = self
                .receivers
                .fetch_update(Relaxed, Relaxed, |n| (n > 1).then_some(n - 1));
        }
    }
}

impl Stage {
    /// Poison check, the pure transform, and the evidence (sealed body) kept for quarantine.
    fn process(&self, m: Received) -> Processed {
        let limit = self.settings.max_receive_count;
        let t = if m.receive_count > limit {
            Transformed {
                outcome: Err(Rejection::with_detail(
                    Reason::PoisonReceiveCount,
                    if m.md5_mismatch {
                        format!(
                            "received {} times, limit {limit}; its body fails its MD5 check",
                            m.receive_count
                        )
                    } else {
                        format!("received {} times, limit {limit}", m.receive_count)
                    },
                )),
                unknown_fields: 0,
            }
        } else {
            transform(
                &self.masker,
                self.settings.max_body_bytes,
                &m.body,
                m.sent_timestamp,
            )
        };
        if let Err(rejection) = &t.outcome {
            let fate = fate(Outcome::Rejected(rejection));
            tracing::info!(message_id = %m.ack.message_id, reason = %rejection.reason, ?fate, "message rejected");
        }
        let delivery = Delivery {
            received_at: m.received_at,
            receive_count: m.receive_count,
            sent_timestamp: m.sent_timestamp,
            ledger_ms: batch::ledger_ms(m.sent_timestamp, m.ledger_id != m.ack.message_id),
        };
        // A rejection's body is sealed now; a row's is held, to be sealed only if the
        // database refuses the row.
        let outcome = match t.outcome {
            Ok(login) => Ok((login, HeldBody::new(m.body))),
            Err(rejection) => Err((rejection, self.sealer.seal(&m.ledger_id, &m.body))),
        };
        Processed {
            ack: m.ack,
            ledger_id: m.ledger_id,
            outcome,
            delivery,
            unknown_fields: t.unknown_fields,
            permit: None,
        }
    }
}

/// Cuts batches by size or age and loads each in one transaction, up to `loaders` at once
/// (each on its own connection, see [`BatchLoader::fork`]); each batch's acks go to the
/// deleter when it has committed. When every loader is busy the next batch waits, and so,
/// through the bounded channel, do the receivers.
async fn batch_loop<L: BatchLoader>(
    mut items: mpsc::Receiver<Processed>,
    loader: L,
    acks: mpsc::Sender<Vec<AckHandle>>,
    settings: &PipelineSettings,
    sealer: &BodySealer,
    shutdown: &CancellationToken,
    summary: &mut Summary,
) -> Result<(), PipelineError> {
    let mut idle = vec![loader];
    while idle.len() < settings.loaders.max(1) {
        match idle[0].fork() {
            Some(more) => idle.push(more),
            None => break,
        }
    }
    let acks = &acks;
    // Cancelled at the first failed load: the others stop retrying, so the run ends and
    // reports instead of waiting on them.
    let abandon = CancellationToken::new();
    let abandon = &abandon;
    let context = LoadContext {
        settings,
        sealer,
        abandon,
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
        let flush = tokio::select! {
            biased;
            // A finished load gives its connection back (and its counts).
            Some(done) = loading.next(), if !loading.is_empty() => {
                finish_load(done, &mut idle, summary, &mut failed, abandon);
                continue;
            }
            // Age first: a batch never waits longer than batch_max_age however busy the input.
            _ = sleep_until_some(deadline) => true,
            // On shutdown the open batch is committed at once, not after the receivers' last
            // polls; what those bring is committed when they are done.
            _ = shutdown.cancelled(), if !flushed_at_shutdown && !batch.is_empty() => {
                flushed_at_shutdown = true;
                true
            }
            item = items.recv(), if !input_done => match item {
                Some(p) => {
                    summary.received += 1;
                    if batch.is_empty() {
                        deadline = Some(Instant::now() + settings.batch_max_age);
                    }
                    batch.push(p);
                    batch.len() >= settings.batch_max_rows
                        || batch.bytes >= settings.max_in_flight_bytes / 2
                }
                None => {
                    input_done = true;
                    true
                }
            },
        };
        if !flush || batch.is_empty() {
            continue;
        }
        deadline = None;
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
        let batch = std::mem::replace(&mut batch, Batch::with_capacity(capacity));
        loading.push(async move {
            let mut part = Summary::default();
            let result = load_batch(&mut loader, batch, acks, context, &mut part).await;
            (loader, part, result)
        });
    }
    // Whatever is loading still commits (and is deleted) or fails, before the run goes on.
    while let Some(done) = loading.next().await {
        finish_load(done, &mut idle, summary, &mut failed, abandon);
    }
    failed.map_or(Ok(()), Err)
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

/// What every load of a run shares: the settings, the sealer for bodies of rows the table
/// refuses, and the signal that another load has failed for good.
#[derive(Clone, Copy)]
struct LoadContext<'a> {
    settings: &'a PipelineSettings,
    sealer: &'a BodySealer,
    abandon: &'a CancellationToken,
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Loads one batch (isolating rows the table refuses), then hands its acks to the deleter.
async fn load_batch<L: BatchLoader>(
    loader: &mut L,
    mut batch: Batch,
    acks: &mpsc::Sender<Vec<AckHandle>>,
    context: LoadContext<'_>,
    summary: &mut Summary,
) -> Result<(), PipelineError> {
    let started = Instant::now();
    let messages = batch.len();
    let oldest_sent_ms = batch
        .rows
        .iter()
        .map(|r| r.delivery.sent_timestamp)
        .chain(batch.rejects.iter().map(|r| r.delivery.sent_timestamp))
        .map(crate::login::validate::sent_millis)
        .min();
    let whole = Batch::part(
        std::mem::take(&mut batch.rows),
        std::mem::take(&mut batch.rejects),
    );
    let rows = whole.rows.len();
    let mut refused = Vec::new();
    let mut report = load_isolating(loader, whole, &mut refused, context, summary).await?;
    if !refused.is_empty() {
        if rows > 1 && refused.len() == rows {
            // Not one row passes: the table is the problem (a trigger or constraint nothing
            // meets), not the messages. Quarantining them all would empty the queue into the
            // reject table; stop instead, and leave them in SQS.
            return Err(PipelineError::TableRefusesEverything {
                rows,
                detail: refused[0].rejection.detail.clone().unwrap_or_default(),
            });
        }
        tracing::warn!(
            rows = refused.len(),
            "quarantining rows refused by the database"
        );
        let rejects = Batch::part(Vec::new(), refused);
        report.merge(load_with_retry(loader, &rejects, context, summary).await?);
    }
    crate::telemetry::metrics::record_batch(
        messages as u64,
        &report,
        report.duplicates + batch.duplicates_in_batch,
        started.elapsed(),
        oldest_sent_ms,
    );
    summary.batches += 1;
    context.settings.progress.add(
        messages as u64,
        report.loaded,
        report.rejected.len() as u64,
        report.duplicates + batch.duplicates_in_batch,
    );
    summary.loaded += report.loaded;
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
    if acks.send(batch.acks).await.is_err() {
        tracing::warn!(
            "deleter stopped; committed messages will come back and be skipped as duplicates"
        );
    }
    Ok(())
}

/// Loads `part`; when the table refuses it for the sake of some row (fate: quarantine), splits
/// it until the refused rows are alone, quarantines each of them as `rejected_by_database`, and
/// loads the rest. Rejections are loaded apart from rows first, so a refusal of the rejections
/// themselves stops the run instead of blaming a row. Each part is its own transaction; the
/// acks wait until all have committed. Cost: about 2 log2(n) extra transactions per bad row.
fn load_isolating<'a, L: BatchLoader>(
    loader: &'a mut L,
    part: Batch,
    refused: &'a mut Vec<Reject>,
    context: LoadContext<'a>,
    summary: &'a mut Summary,
) -> Pin<Box<dyn Future<Output = Result<LoadReport, PipelineError>> + Send + 'a>> {
    Box::pin(async move {
        let error = match load_with_retry(loader, &part, context, summary).await {
            Ok(report) => return Ok(report),
            Err(error) => error,
        };
        let cause = match &error {
            PipelineError::Load { source, .. }
                if fate(Outcome::LoadFailed(source)) == Fate::Quarantine =>
            {
                source
            }
            _ => return Err(error),
        };
        let detail = refusal_detail(cause);
        let Batch {
            mut rows, rejects, ..
        } = part;
        if rows.is_empty() {
            // The rejections themselves are refused: nothing to blame on a message.
            return Err(error);
        }
        let mut report = LoadReport::default();
        if !rejects.is_empty() {
            for part in [
                Batch::part(Vec::new(), rejects),
                Batch::part(rows, Vec::new()),
            ] {
                let r = load_isolating(loader, part, refused, context, summary).await?;
                report.merge(r);
            }
        } else if rows.len() == 1 {
            // Found one; its rejection is loaded once the whole batch has been sorted out.
            let row = rows.pop().expect("one row");
            tracing::warn!(message_id = %row.message_id, %detail, "row refused by the database");
            refused.push(row.into_reject(
                Rejection::with_detail(Reason::RejectedByDatabase, detail),
                context.sealer,
            ));
        } else {
            let second = rows.split_off(rows.len() / 2);
            for half in [rows, second] {
                let half = Batch::part(half, Vec::new());
                let r = load_isolating(loader, half, refused, context, summary).await?;
                report.merge(r);
            }
        }
        Ok(report)
    })
}

/// The SQLSTATE and, where PostgreSQL names them, the constraint, table and column. Not the
/// server's message or DETAIL: those can quote row values.
fn refusal_detail(err: &LoadError) -> String {
    let Some(db) = err.postgres().and_then(|pg| pg.as_db_error()) else {
        return err.to_string();
    };
    let mut detail = format!("SQLSTATE {}", db.code().code());
    for (label, value) in [
        ("constraint", db.constraint()),
        ("table", db.table()),
        ("column", db.column()),
    ] {
        if let Some(value) = value {
            detail.push_str(&format!(", {label} {value}"));
        }
    }
    detail
}

/// One part, one transaction, retried with backoff while the failure is transient.
async fn load_with_retry<L: BatchLoader>(
    loader: &mut L,
    part: &Batch,
    LoadContext {
        settings, abandon, ..
    }: LoadContext<'_>,
    summary: &mut Summary,
) -> Result<LoadReport, PipelineError> {
    let mut attempts = 0u32;
    loop {
        let error = match loader.load(part).await {
            Ok(report) => return Ok(report),
            Err(error) => error,
        };
        attempts += 1;
        if fate(Outcome::LoadFailed(&error)) != Fate::Retry
            || !settings.load_retry.allows(attempts)
            || abandon.is_cancelled()
        {
            return Err(PipelineError::Load {
                attempts,
                source: error,
            });
        }
        summary.load_retries += 1;
        crate::telemetry::metrics::record_load_retry();
        tracing::warn!(attempt = attempts, messages = part.len(), %error, "load failed; retrying");
        // Also during a shutdown: the open batch is worth committing until the deadline,
        // which abandons it if the database does not come back in time. Not once another
        // load has failed for good: the run is ending.
        tokio::select! {
            _ = tokio::time::sleep(settings.load_retry.delay(attempts)) => {}
            _ = abandon.cancelled() => {}
        }
    }
}

/// Deletes committed messages, 10 per call, several calls at once; retries what SQS refuses
/// transiently. Returns (deleted, failed for good).
async fn delete_loop<S: MessageSource>(
    source: Arc<S>,
    leases: Arc<Leases>,
    mut batches: mpsc::Receiver<Vec<AckHandle>>,
    settings: Arc<PipelineSettings>,
    stop: CancellationToken,
) -> Result<(u64, u64), PipelineError> {
    let (mut deleted, mut failed) = (0u64, 0u64);
    while let Some(acks) = batches.recv().await {
        let mut seen = HashSet::with_capacity(acks.len());
        let mut chunks: Vec<Vec<AckHandle>> = Vec::with_capacity(acks.len() / SQS_BATCH_LIMIT + 1);
        for ack in acks {
            if !seen.insert(ack.receipt_handle.clone()) {
                continue;
            }
            match chunks.last_mut() {
                Some(chunk) if chunk.len() < SQS_BATCH_LIMIT => chunk.push(ack),
                _ => chunks.push(vec![ack]),
            }
        }
        let retry = settings.source_retry;
        let mut results = stream::iter(chunks)
            .map(|chunk| delete_chunk(source.clone(), leases.clone(), chunk, retry))
            .buffer_unordered(settings.delete_concurrency.max(1));
        while let Some(result) = results.next().await {
            match result {
                Ok((d, f)) => {
                    deleted += d;
                    failed += f;
                }
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
    }
    Ok((deleted, failed))
}

async fn delete_chunk<S: MessageSource>(
    source: Arc<S>,
    leases: Arc<Leases>,
    chunk: Vec<AckHandle>,
    retry: RetryPolicy,
) -> Result<(u64, u64), PipelineError> {
    let result = delete_with_retry(&*source, chunk.clone(), retry).await;
    // Deleted, or given up on (then it comes back and the ledger skips it): no longer held.
    leases.forget(&chunk);
    result
}

async fn delete_with_retry<S: MessageSource>(
    source: &S,
    mut pending: Vec<AckHandle>,
    retry: RetryPolicy,
) -> Result<(u64, u64), PipelineError> {
    let (mut deleted, mut failed) = (0u64, 0u64);
    let mut attempts = 0u32;
    // Deletes are retried a bounded number of times even when receives retry forever: a message
    // whose delete is lost comes back and is deleted as a duplicate, never loaded twice.
    let max_attempts = retry.max_attempts.unwrap_or(u32::MAX).min(5);
    while !pending.is_empty() {
        attempts += 1;
        match source.delete(&pending).await {
            Ok(outcome) => {
                deleted += outcome.deleted as u64;
                failed += outcome.failed as u64;
                crate::telemetry::metrics::record_delete_failures(outcome.failed as u64);
                pending = outcome.retryable;
            }
            Err(error) if fate(Outcome::Sqs(&error)) == Fate::Retry => {
                tracing::warn!(attempt = attempts, %error, "delete failed; retrying");
            }
            Err(error) => {
                return Err(PipelineError::Source {
                    attempts,
                    source: error,
                })
            }
        }
        if !pending.is_empty() {
            if attempts >= max_attempts {
                tracing::warn!(
                    messages = pending.len(),
                    "giving up deleting; they will come back and be skipped as duplicates"
                );
                failed += pending.len() as u64;
                crate::telemetry::metrics::record_delete_failures(pending.len() as u64);
                break;
            }
            tokio::time::sleep(retry.delay(attempts)).await;
        }
    }
    Ok((deleted, failed))
}

#[cfg(test)]
mod tests {
    //! The shutdown deadline and the retry bounds, on tokio's paused clock: an in-memory source
    //! and loaders at the pipeline's seams, no network, no sleeping for real.

    use std::sync::Mutex;
    use std::time::SystemTime;

    use super::*;
    use crate::login::MaskKey;
    use crate::postgres::LoadReport;
    use crate::sqs::{DeleteOutcome, Received, SourceErrorKind};

    /// Hands out its messages, then answers every receive with an empty long poll. Records
    /// deletes and releases (visibility 0).
    #[derive(Default)]
    struct Scripted {
        messages: Mutex<Vec<Received>>,
        /// Every receive fails transiently instead.
        failing: bool,
        /// Visibility extensions never answer (an SQS that stopped answering).
        hanging_heartbeat: bool,
        receives: Mutex<u32>,
        deleted: Mutex<Vec<String>>,
        released: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn with(n: usize) -> Self {
            let body = r#"{"user_id": "u", "app_version": "2.3.0", "device_type": "android", "ip": "10.0.0.1", "locale": null, "device_id": "593-47-5928"}"#;
            let messages = (0..n)
                .map(|i| Received {
                    ack: AckHandle {
                        message_id: format!("m{i}"),
                        receipt_handle: format!("r{i}"),
                    },
                    ledger_id: format!("m{i}"),
                    body: body.to_owned(),
                    sent_timestamp: 1_700_000_000_000,
                    receive_count: 1,
                    received_at: SystemTime::now(),
                    md5_mismatch: false,
                })
                .collect();
            Self {
                messages: Mutex::new(messages),
                ..Self::default()
            }
        }
    }

    impl MessageSource for Scripted {
        async fn receive(
            &self,
            max: i32,
            wait: Duration,
            _visibility: Option<Duration>,
        ) -> Result<Vec<Received>, SourceError> {
            *self.receives.lock().unwrap() += 1;
            if self.failing {
                return Err(SourceError::new(
                    SourceErrorKind::Transient,
                    "ReceiveMessage",
                    "connection refused",
                ));
            }
            let batch: Vec<Received> = {
                let mut messages = self.messages.lock().unwrap();
                let n = messages.len().min(max as usize);
                messages.drain(..n).collect()
            };
            if batch.is_empty() {
                tokio::time::sleep(wait).await;
            }
            Ok(batch)
        }

        async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
            let mut deleted = self.deleted.lock().unwrap();
            deleted.extend(acks.iter().map(|a| a.message_id.clone()));
            Ok(DeleteOutcome {
                deleted: acks.len(),
                ..DeleteOutcome::default()
            })
        }

        async fn change_visibility(
            &self,
            acks: &[AckHandle],
            timeout: Duration,
        ) -> Result<Vec<AckHandle>, SourceError> {
            if timeout.is_zero() {
                let mut released = self.released.lock().unwrap();
                released.extend(acks.iter().map(|a| a.message_id.clone()));
            } else if self.hanging_heartbeat {
                std::future::pending::<()>().await;
            }
            Ok(Vec::new())
        }
    }

    /// Commits every batch at once.
    struct Committing;
    impl BatchLoader for Committing {
        async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadError> {
            Ok(LoadReport {
                loaded: batch.rows.len() as u64,
                ..LoadReport::default()
            })
        }
    }

    /// Fails its first `failures` loads (transiently), then commits.
    struct FailingFirst {
        failures: u32,
    }
    impl BatchLoader for FailingFirst {
        async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadError> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(LoadError::Injected("connection reset".into()));
            }
            Committing.load(batch).await
        }
    }

    /// The first connection fails for good (a configuration error); its forks fail
    /// transiently, forever.
    struct OneFailsForGood {
        fork: bool,
    }
    impl BatchLoader for OneFailsForGood {
        async fn load(&mut self, _: &Batch) -> Result<LoadReport, LoadError> {
            Err(if self.fork {
                LoadError::Injected("connection reset".into())
            } else {
                LoadError::Connect(crate::postgres::ConnectError::BadUrl("test".into()))
            })
        }
        fn fork(&self) -> Option<Self> {
            Some(Self { fork: true })
        }
    }

    /// A COPY that never finishes.
    struct Hanging;
    impl BatchLoader for Hanging {
        async fn load(&mut self, _: &Batch) -> Result<LoadReport, LoadError> {
            std::future::pending().await
        }
    }

    fn settings(mode: Mode) -> PipelineSettings {
        let retry = RetryPolicy {
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: Some(4),
        };
        PipelineSettings {
            mode,
            receivers: 2,
            loaders: 1,
            wait_time: Duration::from_secs(20),
            visibility_timeout: Some(Duration::from_secs(120)),
            batch_max_rows: 1000,
            batch_max_age: Duration::from_millis(100),
            max_body_bytes: 1 << 16,
            max_receive_count: 25,
            delete_concurrency: 2,
            load_retry: retry,
            source_retry: retry,
            shutdown_timeout: Duration::from_secs(25),
            max_in_flight_bytes: 64 << 20,
            progress: Arc::default(),
        }
    }

    async fn run_until_signal<L: BatchLoader>(
        source: Arc<Scripted>,
        loader: L,
        mode: Mode,
        signal_after: Option<Duration>,
    ) -> (Result<Summary, PipelineError>, Duration) {
        run_with(source, loader, settings(mode), signal_after).await
    }

    async fn run_with<L: BatchLoader>(
        source: Arc<Scripted>,
        loader: L,
        settings: PipelineSettings,
        signal_after: Option<Duration>,
    ) -> (Result<Summary, PipelineError>, Duration) {
        let key = MaskKey::from_base64(&"A".repeat(44)).unwrap();
        let shutdown = CancellationToken::new();
        if let Some(after) = signal_after {
            let token = shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                token.cancel();
            });
        }
        let started = Instant::now();
        let result = run(
            source,
            loader,
            Masker::new(&key),
            BodySealer::new(&key),
            settings,
            shutdown,
        )
        .await;
        (result, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_load_that_never_ends_is_abandoned_at_the_shutdown_deadline() {
        let source = Arc::new(Scripted::with(3));
        let signal = Duration::from_secs(1);
        let (result, elapsed) =
            run_until_signal(source.clone(), Hanging, Mode::Run, Some(signal)).await;
        assert!(
            matches!(result, Err(PipelineError::ShutdownDeadline { .. })),
            "{result:?}"
        );
        // Flushing gets the budget minus the 5 s release reserve; the release is immediate.
        assert_eq!(elapsed, signal + Duration::from_secs(20), "{elapsed:?}");
        let mut released = source.released.lock().unwrap().clone();
        released.sort();
        assert_eq!(released, ["m0", "m1", "m2"], "held messages are released");
        assert!(
            source.deleted.lock().unwrap().is_empty(),
            "nothing uncommitted is deleted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_long_poll_does_not_hold_up_a_clean_shutdown() {
        let source = Arc::new(Scripted::with(3));
        let signal = Duration::from_secs(1);
        let (result, elapsed) =
            run_until_signal(source.clone(), Committing, Mode::Run, Some(signal)).await;
        let summary = result.unwrap();
        assert_eq!((summary.loaded, summary.deleted), (3, 3), "{summary:?}");
        // The receivers' 20 s polls are cut after half the 20 s flushing budget.
        assert!(elapsed <= signal + Duration::from_secs(10), "{elapsed:?}");
        assert!(source.released.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn receiving_pauses_when_the_in_flight_byte_budget_is_spent() {
        let source = Arc::new(Scripted::with(2000));
        let body = source.messages.lock().unwrap()[0].body.len();
        let budget = 100 * body;
        let settings = PipelineSettings {
            max_in_flight_bytes: budget,
            ..settings(Mode::Run)
        };
        // The loader never finishes, so nothing is ever given back: after a minute, what was
        // received is what the budget allowed, plus at most one receive per receiver.
        let (result, _) = run_with(
            source.clone(),
            Hanging,
            settings.clone(),
            Some(Duration::from_secs(60)),
        )
        .await;
        assert!(matches!(
            result,
            Err(PipelineError::ShutdownDeadline { .. })
        ));
        let taken = 2000 - source.messages.lock().unwrap().len();
        let bound = budget / body + settings.receivers * SQS_BATCH_LIMIT;
        assert!(taken >= budget / body, "the budget was used: {taken}");
        assert!(taken <= bound, "{taken} received, bound {bound}");
    }

    #[tokio::test(start_paused = true)]
    async fn drain_confirms_an_empty_queue_with_a_short_poll() {
        let source = Arc::new(Scripted::with(3));
        let (result, elapsed) =
            run_until_signal(source.clone(), Committing, Mode::Drain, None).await;
        let summary = result.unwrap();
        assert_eq!((summary.loaded, summary.deleted), (3, 3), "{summary:?}");
        // The polls that started while the three were held do not count; the 1 s confirming
        // poll after them does, instead of another 20 s one.
        assert!(elapsed <= Duration::from_secs(22), "{elapsed:?}");
        assert!(elapsed >= Duration::from_secs(20), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_receive_backs_off_within_its_caps_and_drain_gives_up() {
        let source = Arc::new(Scripted {
            failing: true,
            ..Scripted::default()
        });
        let (result, elapsed) =
            run_until_signal(source.clone(), Committing, Mode::Drain, None).await;
        assert!(
            matches!(result, Err(PipelineError::Source { attempts: 4, .. })),
            "{result:?}"
        );
        // Two receivers, four attempts each; delays of at most 0.1, 0.2 and 0.4 s between them,
        // and not none (a retry loop without backoff would take no time at all).
        assert!(*source.receives.lock().unwrap() <= 8);
        assert!(elapsed <= Duration::from_millis(700), "{elapsed:?}");
        assert!(elapsed > Duration::ZERO, "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_loads_back_off_and_the_batch_commits_once_the_database_is_back() {
        let source = Arc::new(Scripted::with(3));
        let (result, elapsed) = run_until_signal(
            source.clone(),
            FailingFirst { failures: 3 },
            Mode::Drain,
            None,
        )
        .await;
        let summary = result.unwrap();
        assert_eq!(
            (summary.loaded, summary.load_retries),
            (3, 3),
            "{summary:?}"
        );
        assert_eq!(source.deleted.lock().unwrap().len(), 3);
        // Some backoff (0 to 0.1 + 0.2 + 0.4 s) came on top of the polls.
        assert!(elapsed > Duration::from_secs(20), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_queue_is_long_polled_by_one_receiver_and_a_busy_one_by_all() {
        // Idle: 4 receivers, 20 s polls, 10 minutes. Without adapting that is 4 x 30 polls.
        let idle = Arc::new(Scripted::with(0));
        let mut s = settings(Mode::Run);
        s.receivers = 4;
        let (result, _) =
            run_with(idle.clone(), Committing, s, Some(Duration::from_secs(600))).await;
        result.unwrap();
        let polls = *idle.receives.lock().unwrap();
        assert!((30..=36).contains(&polls), "{polls} receives");
        // Busy: every message is received and committed, and the receivers that were sent
        // back to wait are called up again (more than one poll at a time while it is full).
        let busy = Arc::new(Scripted::with(500));
        let mut s = settings(Mode::Run);
        s.receivers = 4;
        let (result, _) =
            run_with(busy.clone(), Committing, s, Some(Duration::from_secs(60))).await;
        assert_eq!(result.unwrap().loaded, 500);
        assert_eq!(busy.deleted.lock().unwrap().len(), 500);
    }

    #[tokio::test]
    async fn full_receives_call_waiting_receivers_back_and_empty_ones_send_them_away() {
        let active = Arc::new(Active::new(4));
        for _ in 0..10 {
            active.observe(0);
        }
        assert!(active.admits(0) && !active.admits(1), "never below one");
        let waiting = {
            let active = active.clone();
            tokio::spawn(async move {
                let more = active.more.notified();
                if !active.admits(1) {
                    more.await;
                }
                active.admits(1)
            })
        };
        tokio::task::yield_now().await;
        active.observe(7);
        assert!(!active.admits(1), "a partial receive changes nothing");
        active.observe(10);
        assert!(waiting.await.unwrap(), "a full receive calls one more back");
        for _ in 0..10 {
            active.observe(10);
        }
        assert!(
            active.admits(3) && !active.admits(4),
            "never above the configured count"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_load_that_fails_for_good_stops_the_other_loaders_retrying() {
        let source = Arc::new(Scripted::with(3));
        let mut s = settings(Mode::Run);
        // One message per batch, so both loaders hold one; retries without limit, as in `run`.
        s.loaders = 2;
        s.batch_max_rows = 1;
        s.load_retry.max_attempts = None;
        let (result, _) = tokio::time::timeout(
            Duration::from_secs(3600),
            run_with(source.clone(), OneFailsForGood { fork: false }, s, None),
        )
        .await
        .expect("the run ends instead of retrying forever");
        assert!(
            matches!(result, Err(PipelineError::Load { .. })),
            "{result:?}"
        );
        assert!(
            source.deleted.lock().unwrap().is_empty(),
            "nothing committed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_stuck_on_a_dead_sqs_does_not_hold_up_the_deadline() {
        let source = Arc::new(Scripted {
            hanging_heartbeat: true,
            ..Scripted::with(3)
        });
        let settings = PipelineSettings {
            visibility_timeout: Some(Duration::from_secs(4)),
            ..settings(Mode::Run)
        };
        let signal = Duration::from_secs(5);
        let run = run_with(source.clone(), Hanging, settings, Some(signal));
        let (result, elapsed) = tokio::time::timeout(Duration::from_secs(600), run)
            .await
            .expect("the run hung on its heartbeat");
        assert!(
            matches!(result, Err(PipelineError::ShutdownDeadline { .. })),
            "{result:?}"
        );
        assert_eq!(elapsed, signal + Duration::from_secs(20), "{elapsed:?}");
        assert_eq!(source.released.lock().unwrap().len(), 3);
    }
}
