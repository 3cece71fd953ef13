//! The batcher and the loaders: cut batches by size or age, load each in one transaction (up to
//! `loaders` at once), isolate rows the table refuses, retry transient failures, and hand each
//! committed batch's acks to the deleter.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::{Batch, Committed, Processed, Reject, Row};
use super::lease::Leases;
use super::sink::BatchLoader;
use super::{PipelineError, PipelineSettings, Summary};
use crate::error::{fate, may_blame_rows, Fate, Outcome};
use crate::keys::BodySealer;
use crate::kind::Rejection;
use crate::postgres::{LoadError, LoadReport};
use crate::sqs::AckHandle;

/// What the batcher does next.
enum Next {
    /// Nothing to load yet.
    Wait,
    /// Cut the open batch and load it.
    Cut,
    /// Load this suspect alone (see [`load_isolating`]).
    Alone(Batch),
}

/// Cuts batches by size, window or age and loads each in one transaction, up to `loaders` at
/// once (each on its own connection, see [`BatchLoader::fork`]); each batch's acks go to the
/// deleter when it has committed. When every loader is busy the next batch waits, and so,
/// through the bounded channel, do the receivers.
///
/// A batch is cut at `batch_max_rows`, at half the in-flight bytes or half the window (so one
/// loads while the next fills), or when its first message has waited `batch_max_age` or an
/// eighth of the visibility timeout, whichever is first: a message is committed and deleted
/// before it needs its lease extended.
pub(super) async fn batch_loop<L: BatchLoader>(
    mut items: mpsc::Receiver<Processed>,
    loader: L,
    acks: mpsc::Sender<Committed>,
    context: LoadContext<'_>,
    shutdown: &CancellationToken,
    summary: &mut Summary,
) -> Result<(), PipelineError> {
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
                Some(p) if p.is_suspect_row() => {
                    summary.received += 1;
                    summary.suspects += 1;
                    let mut alone = Batch::with_capacity(1);
                    alone.push(p);
                    Next::Alone(alone)
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
            Next::Alone(one) => one,
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
/// refuses, the leases (whose window learns from each commit), and the signal that a load has
/// failed for good (cancelled at the first such failure: the other loads stop retrying, so the
/// run ends and reports instead of waiting on them).
#[derive(Clone, Copy)]
pub(super) struct LoadContext<'a> {
    pub settings: &'a PipelineSettings,
    pub sealer: &'a BodySealer,
    pub leases: &'a Leases,
    pub abandon: &'a CancellationToken,
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Loads one batch (isolating rows that fail, see [`load_isolating`]),
/// then tells the window and hands the batch's acks to the deleter.
async fn load_batch<L: BatchLoader>(
    loader: &mut L,
    mut batch: Batch,
    acks: &mpsc::Sender<Committed>,
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
        .min();
    let whole = Batch::part(
        std::mem::take(&mut batch.rows),
        std::mem::take(&mut batch.rejects),
    );
    // Messages that give rows (an S3 test event gives none, and no table can refuse it).
    let rows = whole.rows.iter().filter(|r| r.rows.rows() > 0).count();
    let mut not_loaded = NotLoaded::default();
    let mut report = load_isolating(loader, whole, &mut not_loaded, context, summary).await?;
    let NotLoaded { refused, left } = not_loaded;
    let verdict = fate(Outcome::RowsRefused {
        refused: refused.len(),
        with_rows: rows,
    });
    if verdict == Fate::Stop {
        // Not one row passes: the table is the problem (a trigger or constraint nothing
        // meets), not the messages. Quarantining them all would empty the queue into the
        // reject table; stop instead, and leave them in SQS. (Rows left for redelivery are
        // not quarantined, so they do not count here.)
        return Err(PipelineError::TableRefusesEverything {
            rows,
            detail: refused[0].rejection.detail.clone().unwrap_or_default(),
        });
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
        batch.acks = kept;
    }
    crate::telemetry::metrics::record_batch(
        messages as u64,
        report.loaded,
        report.rows,
        &report.rejected,
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

/// The longest one load attempt (or check of the database) may take before it counts as a
/// transient failure and its connection is dropped: a body that stalls the database is then
/// found like one that fails it. Generous, since a slow database stalls every load; a table
/// held locked meanwhile makes the check fail too, so no row is blamed for it.
const STALL: Duration = Duration::from_secs(60);

/// Failed attempts at a part before the loader asks whether the database takes other work.
const BLAME_AFTER: u32 = 2;

/// Why a part did not commit.
enum Failure {
    /// The table refuses it for the sake of some row (fate: quarantine).
    Refused(LoadError),
    /// It failed again right after the database committed an empty transaction on the same
    /// connection: something in the part, not the database, is at fault.
    Blamed(LoadError),
    /// The run cannot go on.
    Fatal(PipelineError),
}

/// What became of the rows of a batch that did not load.
#[derive(Default)]
struct NotLoaded {
    /// Quarantined instead: refused by the table, or poison.
    refused: Vec<Reject>,
    /// Left for SQS to redeliver: the `ack_index` of each (its message is not deleted).
    left: Vec<usize>,
}

/// Loads `part`; when it fails for the sake of some row (the table refuses it, or it fails
/// while the database takes other work), splits it until the failing rows are alone and loads
/// the rest. Rejections are loaded apart from rows first, so a failure of the rejections
/// themselves stops the run instead of blaming a row. Each part is its own transaction; the
/// acks wait until all have committed. Cost per bad row: about 2 log2(n) extra transactions
/// for a refused one; for one that fails while the database works, at each halving about three
/// failed attempts, one check and a backoff.
///
/// A row that fails alone:
/// - refused by the table: quarantined as `rejected_by_database`;
/// - failing while the database works, received more often than `--max-receive-count`: tried
///   alone until it has failed so [`crate::error::SUSPECT_ATTEMPTS`] times, then quarantined as
///   `poison:receive_count` (the policy's `Outcome::FailedAlone`);
/// - failing while the database works, not received that often yet: left for redelivery. Its
///   lease is dropped, so SQS hands it out again after the visibility timeout, one receive
///   more; a message that fails every time thus reaches the limit and is quarantined, while
///   one that failed by bad luck loads next time.
fn load_isolating<'a, L: BatchLoader>(
    loader: &'a mut L,
    part: Batch,
    not_loaded: &'a mut NotLoaded,
    context: LoadContext<'a>,
    summary: &'a mut Summary,
) -> Pin<Box<dyn Future<Output = Result<LoadReport, PipelineError>> + Send + 'a>> {
    Box::pin(async move {
        let failure = match load_with_retry(loader, &part, context, summary).await {
            Ok(report) => return Ok(report),
            Err(Failure::Fatal(error)) => return Err(error),
            Err(failure) => failure,
        };
        let Batch {
            mut rows, rejects, ..
        } = part;
        if rows.is_empty() {
            // The rejections themselves fail: nothing to blame on a message.
            let (Failure::Refused(source) | Failure::Blamed(source)) = failure else {
                unreachable!("fatal failures returned above")
            };
            return Err(PipelineError::Load {
                attempts: 1,
                source,
            });
        }
        let mut report = LoadReport::default();
        if !rejects.is_empty() {
            for part in [
                Batch::part(Vec::new(), rejects),
                Batch::part(rows, Vec::new()),
            ] {
                let r = load_isolating(loader, part, not_loaded, context, summary).await?;
                report.merge(r);
            }
        } else if rows.len() == 1 {
            // Found one; its rejection is loaded once the whole batch has been sorted out.
            let row = rows.pop().expect("one row");
            match failure {
                Failure::Refused(error) => {
                    let detail = refusal_detail(&error);
                    tracing::warn!(message_id = %row.message_id, %detail, "row refused by the database");
                    not_loaded.refused.push(
                        row.into_reject(Rejection::rejected_by_database(detail), context.sealer),
                    );
                }
                Failure::Blamed(error) => {
                    return blame_alone(loader, row, error, not_loaded, context, summary).await;
                }
                Failure::Fatal(_) => unreachable!("fatal failures returned above"),
            }
        } else {
            let second = rows.split_off(rows.len() / 2);
            for half in [rows, second] {
                let half = Batch::part(half, Vec::new());
                let r = load_isolating(loader, half, not_loaded, context, summary).await?;
                report.merge(r);
            }
        }
        Ok(report)
    })
}

/// A row that failed alone while the database took other work: poison if it was received
/// too often and keeps failing, otherwise left for redelivery (see [`load_isolating`]).
async fn blame_alone<L: BatchLoader>(
    loader: &mut L,
    row: Row,
    mut error: LoadError,
    not_loaded: &mut NotLoaded,
    context: LoadContext<'_>,
    summary: &mut Summary,
) -> Result<LoadReport, PipelineError> {
    let (count, limit) = (
        row.delivery.receive_count,
        context.settings.max_receive_count,
    );
    let over_limit = count > limit;
    let mut failures = 1;
    let one = Batch::part(vec![row], Vec::new());
    loop {
        match fate(Outcome::FailedAlone {
            failures,
            over_receive_limit: over_limit,
        }) {
            Fate::Quarantine => {
                let row = one.rows.into_iter().next().expect("one row");
                tracing::warn!(message_id = %row.message_id, receive_count = count, %error, "loading the message alone keeps failing while the database takes other work: poison");
                not_loaded.refused.push(row.into_reject(
                    Rejection::poison(
                        format!(
                            "received {count} times, limit {limit}; loading it alone failed {failures} times, each right after the database showed it takes writes; last: {}",
                            refusal_detail(&error)
                        ),
                    ),
                    context.sealer,
                ));
                return Ok(LoadReport::default());
            }
            _ if !over_limit => {
                let row = &one.rows[0];
                tracing::warn!(message_id = %row.message_id, receive_count = count, %error, "loading the message fails while the database takes other work; leaving it for redelivery");
                not_loaded.left.push(row.ack_index);
                return Ok(LoadReport::default());
            }
            _ => {}
        }
        match load_with_retry(loader, &one, context, summary).await {
            Ok(report) => return Ok(report),
            Err(Failure::Blamed(again)) => {
                failures += 1;
                error = again;
            }
            Err(Failure::Refused(refusal)) => {
                let row = one.rows.into_iter().next().expect("one row");
                let detail = refusal_detail(&refusal);
                not_loaded
                    .refused
                    .push(row.into_reject(Rejection::rejected_by_database(detail), context.sealer));
                return Ok(LoadReport::default());
            }
            Err(Failure::Fatal(fatal)) => return Err(fatal),
        }
    }
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

/// One part, one transaction, retried with backoff while the failure is transient. After
/// [`BLAME_AFTER`] failures the loader commits an empty transaction on the same connection:
/// if that works, the part is tried once more at once, and if it fails again the part is
/// blamed ([`Failure::Blamed`]). Each attempt may take at most [`STALL`] (then its connection
/// is dropped and the attempt counts as a transient failure).
async fn load_with_retry<L: BatchLoader>(
    loader: &mut L,
    part: &Batch,
    LoadContext {
        settings, abandon, ..
    }: LoadContext<'_>,
    summary: &mut Summary,
) -> Result<LoadReport, Failure> {
    let mut backoff = settings.load_retry.backoff();
    let mut database_works = false;
    loop {
        let error = match attempt(loader, part).await {
            Ok(report) => return Ok(report),
            Err(error) => error,
        };
        let delay = backoff.failed();
        let attempts = backoff.attempts();
        match fate(Outcome::LoadFailed(&error)) {
            Fate::Retry => {}
            Fate::Quarantine => return Err(Failure::Refused(error)),
            _ => {
                return Err(Failure::Fatal(PipelineError::Load {
                    attempts,
                    source: error,
                }))
            }
        }
        summary.load_retries += 1;
        crate::telemetry::metrics::record_load_retry();
        if database_works {
            return Err(Failure::Blamed(error));
        }
        if attempts >= BLAME_AFTER && !part.is_empty() && may_blame_rows(&error) {
            if probe(loader).await.is_ok() {
                // The database takes writes without this part: try the part once more, now.
                database_works = true;
                continue;
            }
            // The check failed too, and is tried again with the part: the database.
            summary.load_retries += 1;
            crate::telemetry::metrics::record_load_retry();
        }
        let (Some(delay), false) = (delay, abandon.is_cancelled()) else {
            return Err(Failure::Fatal(PipelineError::Load {
                attempts,
                source: error,
            }));
        };
        tracing::warn!(attempt = attempts, messages = part.len(), %error, "load failed; retrying");
        // Also during a shutdown: the open batch is worth committing until the deadline,
        // which abandons it if the database does not come back in time. Not once another
        // load has failed for good: the run is ending.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = abandon.cancelled() => {}
        }
    }
}

/// [`BatchLoader::probe`], within [`STALL`].
async fn probe<L: BatchLoader>(loader: &mut L) -> Result<(), LoadError> {
    match tokio::time::timeout(STALL, loader.probe()).await {
        Ok(result) => result,
        Err(_) => {
            loader.reset();
            Err(LoadError::TimedOut(STALL))
        }
    }
}

/// One load of `part`, within [`STALL`].
async fn attempt<L: BatchLoader>(loader: &mut L, part: &Batch) -> Result<LoadReport, LoadError> {
    match tokio::time::timeout(STALL, loader.load(part)).await {
        Ok(result) => result,
        Err(_) => {
            loader.reset();
            Err(LoadError::TimedOut(STALL))
        }
    }
}
