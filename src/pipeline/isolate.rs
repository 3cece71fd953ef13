//! One batch's load, made safe against its rows: each part retried with backoff while the
//! failure is transient, and a part that fails for the sake of some row split until that row
//! is alone, to be quarantined (the table refuses it), found to be poison, or left for
//! redelivery, while the rest loads.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::batch::{Batch, Row};
use super::lease::Leases;
use super::sink::BatchLoader;
use super::PipelineSettings;
use super::{PipelineError, Summary};
use crate::error::{fate, may_blame_rows, Fate, Outcome};
use crate::keys::BodySealer;
use crate::kind::{LoadClass, LoadFailure, LoadReport, Reject, Rejection, ServerError};
use tokio_util::sync::CancellationToken;

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
    /// The durable record of attempts, where messages that stall the database alone are
    /// counted across deliveries and processes.
    pub attempts: Option<&'a dyn super::sink::AttemptLog>,
    /// Messages that stalled alone here, loaded alone on their next delivery.
    pub stallers: &'a super::batch::Stallers,
    /// The longest one attempt at a part may take (see [`load_with_retry`]): generous for a whole
    /// batch, short once a part has stalled while the database took other work.
    pub stall: std::time::Duration,
    /// Per target table (its own name, without schema): the columns the rows fill (the
    /// kind's) or the table computes (generated). Empty when unknown.
    pub written: &'a [(String, Vec<String>)],
}

/// The longest one load attempt of a whole batch (or one check of the database) may take
/// before it counts as a transient failure and its connection is dropped: a body that stalls
/// the database is then found like one that fails it. Generous, since a slow database stalls
/// every load; a table held locked meanwhile makes the check fail too, so no row is blamed.
pub(super) const STALL: Duration = Duration::from_secs(60);

/// The bound of a suspect's load alone, and of every part of a batch that stalled while the
/// database took other work: such a part loads in milliseconds unless the stalling body is in
/// it. Short, so that finding a body that stalls the database costs seconds per level of its
/// search, not minutes.
const STALL_ALONE: Duration = Duration::from_secs(10);

/// Failed attempts at a part before the loader asks whether the database takes other work.
const BLAME_AFTER: u32 = 2;

/// Why a part did not commit.
pub(super) enum Failure {
    /// The table refuses it for the sake of some row (fate: quarantine).
    Refused(LoadFailure),
    /// It failed again right after the database committed an empty transaction on the same
    /// connection: something in the part, not the database, is at fault.
    Blamed(LoadFailure),
    /// The run cannot go on.
    Fatal(PipelineError),
}

/// What became of the rows of a batch that did not load.
#[derive(Default)]
pub(super) struct NotLoaded {
    /// Quarantined instead: refused by the table, or poison.
    pub refused: Vec<Reject>,
    /// Left for SQS to redeliver: the `ack_index` of each (its message is not deleted).
    pub left: Vec<usize>,
}

/// How many parts a part that stalled is cut into.
const STALLED_PARTS: usize = 16;

/// Loads `part`; when it fails for the sake of some row (the table refuses it, or it fails
/// while the database takes other work), splits it until the failing rows are alone and loads
/// the rest. Rejections are loaded apart from rows first, so a failure of the rejections
/// themselves stops the run instead of blaming a row. Each part is its own transaction; the
/// acks wait until all have committed. Cost per bad row: about 2 log2(n) extra transactions
/// for a refused one; for one that fails while the database works, at each halving about three
/// failed attempts, one check and a backoff; for one that stalls it, one stall (60 s for the
/// whole batch, then [`STALL_ALONE`] for the part holding it at each level of a sixteen-way
/// cut) and one check.
///
/// A row that fails alone:
/// - refused by the table for a data reason: quarantined as `table_refused:RULE` (see
///   [`refusal_rule`]);
/// - failing while the database works, received more often than `--max-receive-count`: tried
///   alone until it has failed so [`crate::error::SUSPECT_ATTEMPTS`] times, then quarantined as
///   `poison:receive_count` (the policy's `Outcome::FailedAlone`);
/// - stalling the database alone, on its `--max-crashes`th delivery to do so (counted in the
///   database): quarantined as `poison:stalled`;
/// - failing while the database works, not received that often yet: left for redelivery. Its
///   lease is dropped, so SQS hands it out again after the visibility timeout, one receive
///   more; a message that fails every time thus reaches the limit and is quarantined, while
///   one that failed by bad luck loads next time.
pub(super) fn load_isolating<'a, L: BatchLoader>(
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
        // A part that stalled while the database worked: what it is cut into gets the short
        // bound.
        let context = match failure {
            Failure::Blamed(LoadFailure {
                class: LoadClass::TimedOut,
                ..
            }) => LoadContext {
                stall: STALL_ALONE,
                ..context
            },
            _ => context,
        };
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
                    let rejection = table_refusal(&error);
                    tracing::warn!(message_id = %row.message_id, reason = %rejection.reason, detail = rejection.detail.as_deref().unwrap_or_default(), "row refused by the table");
                    not_loaded
                        .refused
                        .push(row.into_reject(rejection, context.sealer));
                }
                Failure::Blamed(error) => {
                    return blame_alone(loader, row, error, not_loaded, context, summary).await;
                }
                Failure::Fatal(_) => unreachable!("fatal failures returned above"),
            }
        } else {
            // A part that stalled while the database worked is cut in sixteen, not two. The parts without the body commit at once and
            // only the one with it waits out its bound, so a level costs one bound either way
            // and sixteen-way needs four levels for 5,000 rows where halving needs thirteen.
            // Rows the table refuses answer at once, so halving costs nothing there.
            let parts = match failure {
                Failure::Blamed(LoadFailure {
                    class: LoadClass::TimedOut,
                    ..
                }) => STALLED_PARTS,
                _ => 2,
            };
            let size = rows.len().div_ceil(parts);
            let mut cut = Vec::with_capacity(parts);
            while rows.len() > size {
                cut.push(rows.split_off(rows.len() - size));
            }
            cut.push(rows);
            cut.reverse();
            for part in cut {
                let part = Batch::part(part, Vec::new());
                let r = load_isolating(loader, part, not_loaded, context, summary).await?;
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
    mut error: LoadFailure,
    not_loaded: &mut NotLoaded,
    context: LoadContext<'_>,
    summary: &mut Summary,
) -> Result<LoadReport, PipelineError> {
    let (count, limit) = (
        row.delivery.receive_count,
        context.settings.max_receive_count,
    );
    let over_limit = count > limit;
    if let (LoadClass::TimedOut, Some(log)) = (error.class, context.attempts) {
        // Counted in the database, once per delivery: a body that stalls the database alone
        // is found across deliveries and processes, whatever its receive count.
        match log.stalled(&row.message_id, row.delivery.ledger_ms).await {
            Ok(stalls) => {
                let crashes = context.settings.max_crashes;
                if fate(Outcome::StalledAlone {
                    stalls,
                    limit: crashes,
                }) == Fate::Quarantine
                {
                    tracing::warn!(message_id = %row.message_id, stalls, "loading the message alone stalled the database on delivery after delivery: poison");
                    not_loaded.refused.push(row.into_reject(
                        Rejection::stalled(format!(
                            "loading it alone stalled the database (no answer within {} s while it took other work) on {stalls} deliveries, limit {crashes}",
                            STALL_ALONE.as_secs()
                        )),
                        context.sealer,
                    ));
                    return Ok(LoadReport::default());
                }
            }
            Err(e) => {
                tracing::warn!(message_id = %row.message_id, error = %e, "could not record a stalled load")
            }
        }
    }
    let stalled = error.class == LoadClass::TimedOut;
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
            Fate::Redeliver => {
                let row = &one.rows[0];
                tracing::warn!(message_id = %row.message_id, receive_count = count, %error, "loading the message fails while the database takes other work; leaving it for redelivery");
                if stalled {
                    // Its next delivery here is loaded alone at once.
                    context.stallers.insert(&row.message_id);
                }
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
                not_loaded
                    .refused
                    .push(row.into_reject(table_refusal(&refusal), context.sealer));
                return Ok(LoadReport::default());
            }
            Err(Failure::Fatal(fatal)) => return Err(fatal),
        }
    }
}

/// The rejection of a row the table refused: `table_refused:RULE` with
/// [`refusal_detail`].
fn table_refusal(err: &LoadFailure) -> Rejection {
    Rejection::table_refused(&refusal_rule(err), refusal_detail(err))
}

/// The rule a refused row broke, as a reason code's last part: the constraint's name where
/// PostgreSQL gives one (a CHECK, a unique key, a foreign key), `not_null:COLUMN`,
/// `no_partition` (a row no partition takes), otherwise the SQLSTATE (`22001`, `P0001`).
/// Never the server's message: it can quote the row.
fn refusal_rule(err: &LoadFailure) -> String {
    let Some(db) = err.server.as_deref() else {
        return "unknown".into();
    };
    if let Some(constraint) = &db.constraint {
        return constraint.clone();
    }
    match db.sqlstate.as_str() {
        NOT_NULL_VIOLATION => format!("not_null:{}", db.column.as_deref().unwrap_or("?")),
        // PostgreSQL names no constraint when no partition takes a row.
        CHECK_VIOLATION => "no_partition".into(),
        state => state.to_owned(),
    }
}

/// SQLSTATEs a refusal is read by (PostgreSQL's appendix A).
const NOT_NULL_VIOLATION: &str = "23502";
const CHECK_VIOLATION: &str = "23514";

/// The SQLSTATE and, where PostgreSQL names them, the constraint, table and column. Not the
/// server's message or DETAIL: those can quote row values.
fn refusal_detail(err: &LoadFailure) -> String {
    let Some(ServerError {
        sqlstate,
        constraint,
        table,
        column,
    }) = err.server.as_deref()
    else {
        return err.to_string();
    };
    let mut detail = format!("SQLSTATE {sqlstate}");
    for (label, value) in [
        ("constraint", constraint),
        ("table", table),
        ("column", column),
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
/// blamed ([`Failure::Blamed`]). Each attempt may take at most the context's bound ([`STALL`]
/// for a whole batch, [`STALL_ALONE`] for a suspect alone or a part of a batch that stalled);
/// then its connection is dropped and the attempt counts as a transient failure. A part that
/// stalled is checked against the database at once, and blamed if the check passes: a stall
/// costs one bound, not three.
pub(super) async fn load_with_retry<L: BatchLoader>(
    loader: &mut L,
    part: &Batch,
    LoadContext {
        settings,
        abandon,
        stall,
        written,
        ..
    }: LoadContext<'_>,
    summary: &mut Summary,
) -> Result<LoadReport, Failure> {
    let mut backoff = settings.load_retry.backoff();
    let mut database_works = false;
    // A suspect loaded alone gets the short bound; a trickle's one-message batch does not
    // (a busy database may take a while over any batch).
    let suspect_alone = part.len() == 1 && part.rows.first().is_some_and(|r| r.suspect);
    let bound = if suspect_alone {
        stall.min(STALL_ALONE)
    } else {
        stall
    };
    loop {
        let error = match attempt(loader, part, bound).await {
            Ok(report) => return Ok(report),
            Err(error) => error,
        };
        let delay = backoff.failed();
        let attempts = backoff.attempts();
        let unfilled = unfilled_not_null(&error, written);
        let outcome = match unfilled {
            Some(_) => Outcome::UnfilledNotNull,
            None => Outcome::LoadFailed(&error),
        };
        match fate(outcome) {
            Fate::Retry => {}
            Fate::Quarantine => return Err(Failure::Refused(error)),
            _ => {
                return Err(Failure::Fatal(match unfilled {
                    Some(column) => PipelineError::TableNeedsColumn { column },
                    None => PipelineError::Load {
                        attempts,
                        source: error,
                    },
                }))
            }
        }
        summary.load_retries += 1;
        settings.meter.record_load_retry();
        if database_works {
            return Err(Failure::Blamed(error));
        }
        let stalled = error.class == LoadClass::TimedOut;
        if (attempts >= BLAME_AFTER || stalled) && !part.is_empty() && may_blame_rows(&error) {
            if probe(loader).await.is_ok() {
                if stalled {
                    // It stalled, and the database answers at once without it: the part is
                    // to blame, without another stall.
                    return Err(Failure::Blamed(error));
                }
                // The database takes writes without this part: try the part once more, now.
                database_works = true;
                continue;
            }
            // The check failed too, and is tried again with the part: the database.
            summary.load_retries += 1;
            settings.meter.record_load_retry();
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

/// The column of a NOT NULL refusal by a target table itself, when neither the rows nor the
/// table fill it (not one of its `written`): a structural refusal, not a row's. A refusal by
/// another relation (an audit table a trigger writes, a partition) is a row's.
fn unfilled_not_null(error: &LoadFailure, written: &[(String, Vec<String>)]) -> Option<String> {
    let db = error.server.as_deref()?;
    if db.sqlstate != NOT_NULL_VIOLATION {
        return None;
    }
    let (_, columns) = written
        .iter()
        .find(|(t, _)| Some(t.as_str()) == db.table.as_deref())?;
    let column = db.column.as_deref()?;
    (!columns.iter().any(|w| w == column)).then(|| column.to_owned())
}

/// [`BatchLoader::probe`], within [`STALL`].
async fn probe<L: BatchLoader>(loader: &mut L) -> Result<(), LoadFailure> {
    match tokio::time::timeout(STALL, loader.probe()).await {
        Ok(result) => result,
        Err(_) => {
            loader.reset();
            Err(LoadFailure::timed_out(STALL))
        }
    }
}

/// One load of `part`, within `bound`.
async fn attempt<L: BatchLoader>(
    loader: &mut L,
    part: &Batch,
    bound: Duration,
) -> Result<LoadReport, LoadFailure> {
    match tokio::time::timeout(bound, loader.load(part)).await {
        Ok(result) => result,
        Err(_) => {
            loader.reset();
            Err(LoadFailure::timed_out(bound))
        }
    }
}
