//! Ledger retention: pruning `sqs2pg.ledger` (and the retired `sqs2pg.processed_messages`, the
//! attempts at suspects and the tombstones of `latest` tables) so they do not grow without
//! bound.
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
    let current = delete_in_batches(client, PRUNE_LEDGER, horizon, batch).await;
    let retired = delete_in_batches(client, PRUNE_RETIRED_LEDGER, horizon, batch).await;
    let attempts = delete_in_batches(client, PRUNE_ATTEMPTS, horizon, batch).await;
    // Only `latest` tables use this one; a run's user without rights on it (a login run on
    // a least-privilege account) has nothing there to prune.
    let unless_denied = |r: Result<u64, tokio_postgres::Error>| match r {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Ok(0)
        }
        other => other,
    };
    let tombstones =
        unless_denied(delete_in_batches(client, PRUNE_TOMBSTONES, horizon, batch).await);
    Ok(current? + retired? + attempts? + tombstones?)
}

/// Tombstones of keyed tables (write mode latest) past the horizon: a message older than the
/// delete can no longer be delivered (live entries stay).
/// (The horizon is checked again on the row deleted: a key brought back by a newer update
/// while the prune waited is live, not a tombstone.)
const PRUNE_TOMBSTONES: &str = "DELETE FROM sqs2pg.row_versions
  WHERE deleted_at < now() - make_interval(secs => $1)
    AND (target, key) IN (
        SELECT target, key FROM sqs2pg.row_versions
         WHERE deleted_at < now() - make_interval(secs => $1)
         LIMIT $2)";

/// The attempts at suspects ([`super::attempts`]): by their last attempt, past the same
/// horizon (a message that old can never be delivered again).
const PRUNE_ATTEMPTS: &str = "DELETE FROM sqs2pg.attempts
  WHERE message_id IN (
        SELECT message_id FROM sqs2pg.attempts
         WHERE last_at < now() - make_interval(secs => $1)
         LIMIT $2)";

/// The ledger's share of [`prune`]: by send time, walking the front of the primary key.
/// `$1` is the horizon in seconds, `$2` the rows per statement.
const PRUNE_LEDGER: &str = "DELETE FROM sqs2pg.ledger
  WHERE (sent_ms, message_id) IN (
        SELECT sent_ms, message_id FROM sqs2pg.ledger
         WHERE sent_ms > 0
           AND sent_ms < (extract(epoch FROM now() - make_interval(secs => $1)) * 1000)::bigint
         ORDER BY sent_ms
         LIMIT $2)";

/// The retired ledger's share of [`prune`]: by processing time, as it has no send times.
const PRUNE_RETIRED_LEDGER: &str = "DELETE FROM sqs2pg.processed_messages
  WHERE message_id IN (
        SELECT message_id FROM sqs2pg.processed_messages
         WHERE processed_at < now() - make_interval(secs => $1)
           AND message_id NOT LIKE '%#replay%'
         LIMIT $2)";

/// Runs one of the statements above until it deletes fewer than `batch` rows.
async fn delete_in_batches(
    client: &Client,
    statement: &str,
    horizon: Duration,
    batch: i64,
) -> Result<u64, tokio_postgres::Error> {
    let horizon_secs = horizon.as_secs_f64();
    let mut total = 0;
    loop {
        let deleted = client.execute(statement, &[&horizon_secs, &batch]).await?;
        total += deleted;
        if deleted < batch as u64 {
            return Ok(total);
        }
    }
}
