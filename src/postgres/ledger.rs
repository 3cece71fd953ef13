//! Ledger retention: pruning `sqs2pg.ledger` (and the retired `sqs2pg.processed_messages`) so
//! they do not grow without bound.
//!
//! Why a horizon is safe: the ledger only has to recognise a message while SQS can still
//! deliver it. SQS keeps a message at most 14 days from when it was sent
//! (`MessageRetentionPeriod`); a move to a FIFO dead-letter queue restarts that clock for up to
//! 14 more; and a received message is back at most 12 hours later (the longest visibility
//! timeout). So a message sent more than about 28.5 days ago can never be delivered again: the
//! horizon may not be set below 29 days (default 30). The ledger's key leads with the send
//! time, so pruning walks the front of its primary key. The retired ledger has no send times
//! and is pruned by processing time, which is later. Replays (`...#replayN`, at send time 0) are
//! kept forever: `rejects replay --again` consults them to never load a replayed login twice,
//! and there is one per replay, so they stay few.

use std::time::Duration;

use tokio_postgres::Client;

/// Deletes ledger entries of messages sent longer than `horizon` ago, `batch` rows per
/// statement (short transactions, little lock time), until none are left, and the same of the
/// retired ledger, even if the first part failed (until the retired ledger is empty, every load
/// claims its ids). Returns how many were deleted.
pub async fn prune(
    client: &Client,
    horizon: Duration,
    batch: i64,
) -> Result<u64, tokio_postgres::Error> {
    let current = prune_current(client, horizon, batch).await;
    let retired = prune_retired(client, horizon, batch).await;
    Ok(current? + retired?)
}

/// The ledger's share of [`prune`]: by send time, walking the front of the primary key.
async fn prune_current(
    client: &Client,
    horizon: Duration,
    batch: i64,
) -> Result<u64, tokio_postgres::Error> {
    let horizon_ms = i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX);
    let mut total = 0;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM sqs2pg.ledger
                  WHERE (sent_ms, message_id) IN (
                        SELECT sent_ms, message_id FROM sqs2pg.ledger
                         WHERE sent_ms > 0
                           AND sent_ms < (extract(epoch FROM now()) * 1000)::bigint - $1
                         ORDER BY sent_ms
                         LIMIT $2)",
                &[&horizon_ms, &batch],
            )
            .await?;
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
    }
}

/// The retired ledger's share of [`prune`]: by processing time, as it has no send times.
async fn prune_retired(
    client: &Client,
    horizon: Duration,
    batch: i64,
) -> Result<u64, tokio_postgres::Error> {
    let horizon_secs = horizon.as_secs_f64();
    let mut total = 0;
    loop {
        let deleted = client
            .execute(
                "DELETE FROM sqs2pg.processed_messages
                  WHERE message_id IN (
                        SELECT message_id FROM sqs2pg.processed_messages
                         WHERE processed_at < now() - make_interval(secs => $1)
                           AND message_id NOT LIKE '%#replay%'
                         LIMIT $2)",
                &[&horizon_secs, &batch],
            )
            .await?;
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
    }
}
