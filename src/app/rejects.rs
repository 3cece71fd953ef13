//! `sqs2pg rejects`: the quarantine, listed, opened and replayed.

use super::{open_queue, send::send_chunk, AppError};
use crate::cli::RejectsCommand;
use crate::config::args::QueueArgs;
use crate::keys::{BodySealer, KeyRing};
use crate::postgres::quarantine::{self, ReplaySelection};
use crate::postgres::{self as pg, Database};
use crate::sqs::queue::SqsSettings;
use crate::sqs::{Outgoing, ReplayTag, SQS_BATCH_LIMIT};

/// `sqs2pg rejects ...`, as the command line runs it.
pub async fn command(command: RejectsCommand) -> Result<(), AppError> {
    match command {
        RejectsCommand::List { database, limit } => {
            let (database, _) = crate::config::database(&database)?;
            print!("{}", rejects_list(&database, limit).await?);
        }
        RejectsCommand::Show {
            database,
            key,
            message_id,
        } => {
            let (database, _) = crate::config::database(&database)?;
            let keys = crate::config::key_ring(&key)?;
            let body = rejects_show(&database, &keys, &message_id).await?;
            eprintln!("warning: the body below is the raw message and may hold personal data (ip, device_id)");
            println!("{body}");
        }
        RejectsCommand::Replay {
            database,
            key,
            queue,
            reason,
            ids,
            to,
            again,
            all,
        } => {
            let (database, _) = crate::config::database(&database)?;
            let keys = crate::config::key_ring(&key)?;
            let target = crate::config::queue(&QueueArgs {
                queue_url: to.or(queue.queue_url),
                endpoint_url: queue.endpoint_url,
                sqs_protocol: queue.sqs_protocol,
            })?;
            if reason.is_none() && ids.is_empty() && !all {
                return Err(crate::config::ConfigError(
                    "rejects replay: say what to replay with --reason CODE, --id ID or --all"
                        .into(),
                )
                .into());
            }
            let selection = ReplaySelection { reason, ids, again };
            let report = rejects_replay(&database, &keys, &target, &selection).await?;
            for skipped in &report.skipped {
                eprintln!("skipped {skipped}");
            }
            println!(
                "replayed {} message(s) to {}",
                report.sent, target.queue_url
            );
        }
    }
    Ok(())
}

/// `sqs2pg rejects list`: counts by reason and the most recent rejections, as text. Ids,
/// reasons, value-free details and times only.
pub async fn rejects_list(database: &Database, limit: i64) -> Result<String, AppError> {
    use std::fmt::Write as _;
    let client = database.connect().await?;
    pg::check_ready_schema(&client).await?;
    let counts = quarantine::counts_by_reason(&client)
        .await
        .map_err(AppError::Query)?;
    let recent = quarantine::recent(&client, limit)
        .await
        .map_err(AppError::Query)?;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let mut out = format!("rejected messages: {total}\n");
    for (reason, n) in &counts {
        let _ = writeln!(out, "  {reason:<32}{n:>8}");
    }
    if !recent.is_empty() {
        let _ = writeln!(out, "most recent {}:", recent.len());
    }
    for r in &recent {
        let replayed = if r.replayed_at.is_some() {
            "  [replayed]"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {}  {}  {}  receives={}  {}{replayed}",
            rfc3339(r.received_at),
            r.message_id,
            r.reason,
            r.receive_count,
            r.detail.as_deref().unwrap_or("-"),
        );
    }
    Ok(out)
}

/// `sqs2pg rejects show ID`: the decrypted body of one rejected message.
pub async fn rejects_show(
    database: &Database,
    keys: &KeyRing,
    message_id: &str,
) -> Result<String, AppError> {
    let client = database.connect().await?;
    pg::check_ready_schema(&client).await?;
    let reject = quarantine::sealed(&client, message_id)
        .await
        .map_err(AppError::Query)?
        .ok_or_else(|| AppError::Quarantine(format!("no rejected message with id {message_id}")))?;
    open_reject(&Sealers::new(keys), &reject)
}

/// What `rejects replay` did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub sent: u64,
    /// Message ids left alone, each with why (already loaded, no body, another key).
    pub skipped: Vec<String>,
}

/// `sqs2pg rejects replay`: sends the original bodies of the selected rejections to `to`, ten
/// at a time, each ten locked, sent and marked in one transaction.
///
/// Idempotent: replay N of a message carries the ledger id `message_id#replayN` (and its
/// original SentTimestamp) as message attributes, so a replay sent twice (a crash between
/// sending and COMMIT, a partly refused batch, a second replay) is still loaded at most once. A
/// new number is issued only when the previous replay was quarantined again; a rejection whose
/// replay was loaded is skipped.
pub async fn rejects_replay(
    database: &Database,
    keys: &KeyRing,
    to: &SqsSettings,
    selection: &quarantine::ReplaySelection,
) -> Result<ReplayReport, AppError> {
    let sealer = Sealers::new(keys);
    let mut client = database.connect().await?;
    pg::check_ready_schema(&client).await?;
    let queue = open_queue(to).await?;
    let mut report = ReplayReport::default();
    let mut done: Vec<String> = Vec::new();
    loop {
        let tx = client.transaction().await.map_err(AppError::Query)?;
        let candidates = quarantine::lock_for_replay(&tx, selection, &done, SQS_BATCH_LIMIT as i64)
            .await
            .map_err(AppError::Query)?;
        if candidates.is_empty() {
            tx.commit().await.map_err(AppError::Query)?;
            return Ok(report);
        }
        let (mut outgoing, mut ids, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for c in candidates {
            let id = c.sealed.message_id.clone();
            done.push(id.clone());
            let n = match (c.replay_count, c.last_outcome.as_deref()) {
                (n, Some("loaded")) if n > 0 => {
                    report
                        .skipped
                        .push(format!("{id}: already loaded by replay {n}"));
                    continue;
                }
                // Never replayed, or the last replay was quarantined again: a new number.
                (0, _) | (_, Some(_)) => c.replay_count + 1,
                // Sent before but not processed yet: the same number, so it loads once.
                (n, None) => n,
            };
            match open_reject(&sealer, &c.sealed).and_then(|body| {
                let envelope = open_envelope(&sealer, &c.sealed)?;
                // SQS takes 10 message attributes; a replay adds two of its own.
                if envelope.attributes.len() + 2 > MAX_ATTRIBUTES {
                    return Err(AppError::Quarantine(format!(
                        "rejected message {id} carried {} message attributes; its replay would \
                         carry two more, beyond the {MAX_ATTRIBUTES} SQS takes",
                        envelope.attributes.len()
                    )));
                }
                Ok((body, envelope))
            }) {
                Ok((body, envelope)) => {
                    outgoing.push(Outgoing::replay(
                        body,
                        ReplayTag {
                            ledger_id: quarantine::replay_ledger_id(&id, n),
                            sent_timestamp: c.sent_timestamp,
                        },
                        envelope,
                    ));
                    ids.push(id);
                    counts.push(n);
                }
                Err(e) => report.skipped.push(e.to_string()),
            }
        }
        if !outgoing.is_empty() {
            report.sent += send_chunk(&queue, outgoing).await?;
            quarantine::mark_replayed(&tx, &ids, &counts, queue.queue_url())
                .await
                .map_err(AppError::Query)?;
        }
        tx.commit().await.map_err(AppError::Query)?;
    }
}

/// A body sealer per key of the ring, to open bodies sealed under any of them.
struct Sealers {
    sealers: Vec<BodySealer>,
    active: usize,
}

impl Sealers {
    fn new(keys: &KeyRing) -> Self {
        let sealers: Vec<BodySealer> = keys
            .keys()
            .iter()
            .map(|k| BodySealer::new(&k.key))
            .collect();
        let active = sealers
            .iter()
            .position(|s| s.key_id() == keys.active_id())
            .unwrap_or(0);
        Self { sealers, active }
    }
}

/// The most message attributes SQS takes on one message.
const MAX_ATTRIBUTES: usize = 10;

fn open_reject(sealers: &Sealers, reject: &quarantine::SealedReject) -> Result<String, AppError> {
    let id = &reject.message_id;
    let sealed = reject.body_sealed.as_deref().ok_or_else(|| {
        AppError::Quarantine(format!("rejected message {id} was stored without its body"))
    })?;
    sealer_of(sealers, reject)?
        .open(id, sealed)
        .map_err(|e| AppError::Quarantine(format!("rejected message {id}: {e}")))
}

/// The message attributes and FIFO ids a rejected message arrived with (none for one that
/// carried none, or was quarantined before they were kept).
fn open_envelope(
    sealers: &Sealers,
    reject: &quarantine::SealedReject,
) -> Result<crate::sqs::Envelope, AppError> {
    let Some(sealed) = reject.envelope_sealed.as_deref() else {
        return Ok(crate::sqs::Envelope::default());
    };
    let id = &reject.message_id;
    crate::pipeline::batch::open_envelope(sealer_of(sealers, reject)?, id, sealed)
        .map_err(|e| AppError::Quarantine(format!("rejected message {id}: {e}")))
}

/// The sealer of the key a rejected message was sealed under.
fn sealer_of<'a>(
    sealers: &'a Sealers,
    reject: &quarantine::SealedReject,
) -> Result<&'a BodySealer, AppError> {
    let id = &reject.message_id;
    // Rows from before key ids were recorded were sealed under the key of that time: try the
    // active one.
    let sealer = match reject.seal_key_id.as_deref() {
        None => &sealers.sealers[sealers.active],
        Some(kid) => sealers
            .sealers
            .iter()
            .find(|s| s.key_id() == kid)
            .ok_or_else(|| {
                let given: Vec<&str> = sealers.sealers.iter().map(|s| s.key_id()).collect();
                AppError::Quarantine(format!(
                    "rejected message {id} was sealed under key {kid}, which is not among the keys given ({})",
                    given.join(", ")
                ))
            })?,
    };
    Ok(sealer)
}

pub(super) fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}
