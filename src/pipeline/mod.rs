//! The pipeline: receivers -> transform -> batcher/loader -> deleter.
//!
//! ```text
//!  receiver x N ──Processed──▶ batcher+loader ──ack handles──▶ deleter
//!  (long poll, transform)      (rows|bytes|age, one tx)        (DeleteMessageBatch x10)
//! ```
//!
//! - Receivers long-poll SQS (10 per call; in `run`, only as many as full receives call for,
//!   see `Active`), run the pure transform (read, check, mask) and
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
mod delete;
pub mod heartbeat;
mod isolate;
pub mod lease;
mod load;
mod metered;
mod receive;
mod sink;
pub mod summary;
#[cfg(test)]
mod tests;
pub mod window;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::keys::BodySealer;
use crate::kind::MessageKind;
use crate::retry::RetryPolicy;
use crate::sqs::{MessageSource, SourceError};
pub use crate::telemetry::progress::Progress;
use batch::Processed;
use lease::Leases;
pub use metered::Requests;
use receive::Stage;
pub use sink::{AttemptLog, BatchLoader};
pub use summary::Summary;

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
    /// Messages received more often than this are suspects: loaded alone, and quarantined as
    /// `poison:receive_count` only if that keeps failing (see `load`).
    pub max_receive_count: i32,
    /// A suspect whose processing ended the process this many times (attempts recorded in the
    /// database that never finished) is quarantined unparsed as `poison:crashed`.
    pub max_crashes: u32,
    pub delete_concurrency: usize,
    pub load_retry: RetryPolicy,
    pub source_retry: RetryPolicy,
    /// After a shutdown request, the longest the run takes to flush, commit, delete and
    /// release before it gives up on what is left (which SQS then redelivers).
    pub shutdown_timeout: Duration,
    /// Messages held at most (received and not yet deleted or released): the ceiling of the
    /// adaptive window (see [`window`]).
    pub max_in_flight_messages: usize,
    /// Body bytes received and not yet committed, at most (plus one receive per receiver):
    /// receiving pauses at this budget, so memory stays bounded however deep the queue is.
    /// A batch is cut at half of it, so one batch can load while the next fills.
    pub max_in_flight_bytes: usize,
    /// Live counts, for whoever wants to show progress.
    pub progress: Arc<Progress>,
    /// What each target table fills itself (in the kind's target order), learnt at start-up:
    /// a NOT NULL refusal of a column outside the rows is structural only on these tables and
    /// for a column neither the rows nor the table fill.
    pub table_facts: Vec<TableFacts>,
    /// The run's metrics, labelled with its queue and target tables; set when the run starts
    /// (after the recorder is installed). The default records nothing.
    pub meter: crate::telemetry::metrics::Meter,
    /// One per process, shared by every queue's pipeline (see [`batch::SuspectTurn`]).
    pub suspect_turn: batch::SuspectTurn,
}

/// The target table as PostgreSQL names it in its errors, and the columns it computes itself
/// (generated columns). Empty when unknown: then no NOT NULL refusal is taken as structural.
#[derive(Debug, Clone, Default)]
pub struct TableFacts {
    /// The table's own name, without its schema (as an error's `table` field gives it).
    pub table: String,
    pub generated: Vec<String>,
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
        source: crate::kind::LoadFailure,
    },
    #[error("SQS failed after {attempts} attempt(s): {source}")]
    Source {
        attempts: u32,
        #[source]
        source: SourceError,
    },
    #[error("the shutdown deadline ({} s) passed before everything was committed and deleted; uncommitted messages were released and will be redelivered, and committed ones not yet deleted will come back and be skipped as duplicates", .timeout.as_secs())]
    ShutdownDeadline { timeout: Duration },
    /// `drain` committed everything it could, but left messages behind: some could not be
    /// deleted (they come back and the next run deletes them as duplicates; the ledger keeps
    /// them out of the table), some failed their MD5 check, or some failed to load while the
    /// database took other work (they come back and are processed by a later run).
    #[error("{}", incomplete(.0))]
    Incomplete(Box<Summary>),
    /// The table refused rows for a NOT NULL column the rows never fill: every row would be
    /// refused, so nothing is quarantined.
    #[error("the table refuses every row: its column {column} is NOT NULL without a default, and the rows do not fill it; give it a DEFAULT, drop its NOT NULL, or map it (nothing was quarantined or deleted)")]
    TableNeedsColumn { column: String },
}

/// Runs the pipeline until the queue is drained (`Mode::Drain`) or `shutdown` is cancelled.
pub async fn run<S: MessageSource, L: BatchLoader>(
    source: Arc<S>,
    loader: L,
    kind: Box<dyn MessageKind>,
    sealer: BodySealer,
    attempts: Option<Arc<dyn AttemptLog>>,
    settings: PipelineSettings,
    shutdown: CancellationToken,
) -> Result<Summary, PipelineError> {
    let started = Instant::now();
    // Cancelled on shutdown, and by any stage that must stop the run.
    let stop = shutdown.child_token();
    let settings = Arc::new(settings);
    // Every request to SQS is counted here, the run's SQS bill.
    let source = Arc::new(metered::Metered::new(source, settings.meter.clone()));
    let (item_tx, item_rx) = mpsc::channel::<Processed>(settings.batch_max_rows.max(10) * 2);
    let (ack_tx, ack_rx) = mpsc::channel::<batch::Committed>(4);
    let leases = Arc::new(
        Leases::new(settings.visibility_timeout, settings.max_in_flight_messages)
            .metered(settings.meter.clone()),
    );
    let heartbeat = Heartbeat::start(&source, &leases, &settings);
    let written = written_columns(&settings.table_facts, kind.as_ref());
    let stage = Arc::new(Stage::new(kind, sealer, attempts, settings.clone()));
    let crew = Crew::start(&source, &leases, &stage, item_tx, ack_rx, &settings, &stop);

    let mut summary = Summary::default();
    // Cancelled at the first load that fails for good: the others stop retrying.
    let abandon = CancellationToken::new();
    let batcher = load::Batcher {
        items: item_rx,
        loader,
        acks: ack_tx,
        context: isolate::LoadContext {
            settings: &settings,
            sealer: &stage.sealer,
            leases: &leases,
            abandon: &abandon,
            attempts: stage.attempts.as_deref(),
            stallers: &stage.stallers,
            stall: isolate::STALL,
            written: &written,
        },
        shutdown: &shutdown,
    };
    let aborts = crew.aborts();
    let tracker = crew.tracker.clone();
    let graceful = async {
        let loaded = batcher
            .run(&mut summary)
            .instrument(tracing::error_span!("loader"))
            .await;
        if loaded.is_err() {
            stop.cancel();
        }
        crew.join(loaded.err(), &mut summary).await
    };
    let (first_error, last_delete) = tokio::select! {
        ended = graceful => ended,
        () = deadline(&settings, &shutdown) => {
            // Dropping `graceful` dropped the open load: unless its COMMIT was already on the
            // wire, it never commits (and if it was, the ledger makes the redelivery harmless).
            for abort in &aborts {
                abort.abort();
            }
            // Abort takes effect at the tasks' next await; wait for that (briefly), so no
            // receiver records a lease after the release below has collected them.
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
            tracing::warn!(timeout_secs = settings.shutdown_timeout.as_secs(), "shutdown deadline reached; abandoning what is not committed");
            (Some(PipelineError::ShutdownDeadline { timeout: settings.shutdown_timeout }), None)
        }
    };
    summary.visibility_extended = heartbeat.stop().await;
    // Whatever is still held was received but not committed (a failed or interrupted load):
    // make it visible now rather than after its timeout.
    let release_bound = if shutdown.is_cancelled() {
        settings.release_reserve()
    } else {
        heartbeat::RELEASE_DEADLINE
    };
    summary.released = heartbeat::release_all(&*source, &leases, release_bound).await;
    summary.md5_mismatches = stage.md5_mismatches.load(Ordering::Relaxed);
    summary.redelivered_while_held = stage.redelivered_while_held.load(Ordering::Relaxed);
    summary.requests = source.requests();
    summary.elapsed = started.elapsed();
    summary.after_last_delete = last_delete.map(|at| at.elapsed());
    outcome(summary, first_error, settings.mode)
}

/// The columns each table's rows fill, or the table computes: a NOT NULL column of the table
/// outside them refuses every row (structural).
fn written_columns(facts: &[TableFacts], kind: &dyn MessageKind) -> Vec<(String, Vec<String>)> {
    facts
        .iter()
        .zip(kind.writes())
        .map(|(facts, write)| {
            let mut columns = write.columns;
            columns.extend(facts.generated.iter().cloned());
            (facts.table.clone(), columns)
        })
        .collect()
}

/// The heartbeat task, when there is a visibility timeout to extend; it runs until every
/// delete is done.
struct Heartbeat {
    task: Option<JoinHandle<u64>>,
    done: CancellationToken,
}

impl Heartbeat {
    fn start<S: MessageSource>(
        source: &Arc<metered::Metered<S>>,
        leases: &Arc<Leases>,
        settings: &PipelineSettings,
    ) -> Self {
        let done = CancellationToken::new();
        let task = settings.visibility_timeout.map(|visibility| {
            tokio::spawn(
                heartbeat::Heartbeat {
                    source: source.clone(),
                    leases: leases.clone(),
                    visibility,
                    done: done.clone(),
                }
                .run()
                .instrument(tracing::error_span!("heartbeat")),
            )
        });
        Self { task, done }
    }

    /// Stops the heartbeat; how many visibility extensions it made.
    async fn stop(self) -> u64 {
        self.done.cancel();
        match self.task {
            Some(task) => task.await.expect("heartbeat task panicked"),
            None => 0,
        }
    }
}

/// The tasks of a run besides the loader and the heartbeat: the receivers and the deleter,
/// each in a span of its own, tracked so a deadline can wait for them to end. (Every task's
/// span is at level ERROR so that it is on whenever any of its lines is logged: a span
/// filtered out would take its fields, such as the receiver's id, off the lines.)
struct Crew {
    receivers: Vec<JoinHandle<Result<(), PipelineError>>>,
    deleter: JoinHandle<Result<delete::Deleted, PipelineError>>,
    tracker: TaskTracker,
}

impl Crew {
    fn start<S: MessageSource>(
        source: &Arc<metered::Metered<S>>,
        leases: &Arc<Leases>,
        stage: &Arc<Stage>,
        items: mpsc::Sender<Processed>,
        acks: mpsc::Receiver<batch::Committed>,
        settings: &Arc<PipelineSettings>,
        stop: &CancellationToken,
    ) -> Self {
        let tracker = TaskTracker::new();
        let receivers = (0..settings.receivers.max(1))
            .map(|id| {
                tracker.spawn(
                    receive::Receiver {
                        id,
                        source: source.clone(),
                        leases: leases.clone(),
                        items: items.clone(),
                        stage: stage.clone(),
                        stop: stop.clone(),
                    }
                    .run()
                    .instrument(tracing::error_span!("receiver", id)),
                )
            })
            .collect();
        let deleter = tracker.spawn(
            delete::Deleter {
                source: source.clone(),
                leases: leases.clone(),
                batches: acks,
                settings: settings.clone(),
                stop: stop.clone(),
            }
            .run()
            .instrument(tracing::error_span!("deleter")),
        );
        tracker.close();
        Self {
            receivers,
            deleter,
            tracker,
        }
    }

    fn aborts(&self) -> Vec<AbortHandle> {
        self.receivers
            .iter()
            .map(JoinHandle::abort_handle)
            .chain([self.deleter.abort_handle()])
            .collect()
    }

    /// Waits for the receivers and the deleter; what the deleter did goes into `summary`.
    /// Returns the first error (`first`'s, the loader's; else a receiver's; else the
    /// deleter's) and when the last delete was done.
    async fn join(
        self,
        mut first: Option<PipelineError>,
        summary: &mut Summary,
    ) -> (Option<PipelineError>, Option<Instant>) {
        let mut last_delete = None;
        for receiver in self.receivers {
            if let Err(e) = receiver.await.expect("receiver task panicked") {
                first.get_or_insert(e);
            }
        }
        match self.deleter.await.expect("deleter task panicked") {
            Ok(done) => {
                summary.deleted = done.deleted;
                summary.delete_failures = done.failed;
                summary.deletes_superseded = done.superseded;
                last_delete = done.last_at;
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
        (first, last_delete)
    }
}

/// Ends when a shutdown request's time for flushing is up: all of `shutdown_timeout` but the
/// release reserve. Never ends without a shutdown request.
async fn deadline(settings: &PipelineSettings, shutdown: &CancellationToken) {
    shutdown.cancelled().await;
    let flushing = settings
        .shutdown_timeout
        .saturating_sub(settings.release_reserve());
    tokio::time::sleep(flushing).await;
}

/// The run's result: its first error, or (for a drain that left work behind) `Incomplete`.
fn outcome(
    summary: Summary,
    first_error: Option<PipelineError>,
    mode: Mode,
) -> Result<Summary, PipelineError> {
    match first_error {
        Some(e) => Err(e),
        None if mode == Mode::Drain
            && (summary.delete_failures > 0
                || summary.md5_mismatches > 0
                || summary.left_for_redelivery > 0) =>
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
    if summary.left_for_redelivery > 0 {
        parts.push(format!(
            "{} message(s) failed to load while the database took other work and were left in the queue; they come back to a later run, and one that keeps failing is quarantined as poison:receive_count",
            summary.left_for_redelivery
        ));
    }
    parts.join("; ")
}
