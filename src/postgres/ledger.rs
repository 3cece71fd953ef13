//! Ledger retention: pruning `sqs2pg.processed_messages` so it does not grow without bound.
//!
//! Why a horizon is safe: the ledger only has to recognise a message id while SQS can still
//! deliver that message. SQS keeps a message at most 14 days (`MessageRetentionPeriod`); a move
//! to a FIFO dead-letter queue restarts that clock for up to 14 more; and a received message is
//! back at most 12 hours later (the longest visibility timeout). So an id older than about 28.5
//! days can never be delivered again: the horizon may not be set below 29 days (default 30).
//! Replay ids (`...#replayN`) are kept forever: `rejects replay --again` consults them to never
//! load a replayed login twice, and there is one per replay, so they stay few.

use std::time::Duration;

use tokio_postgres::Client;

/// Deletes ledger entries older than `horizon`, `batch` rows per statement (short transactions,
/// little lock time), until none are left. Returns how many were deleted.
pub async fn prune(
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
