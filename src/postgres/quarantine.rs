//! Reading and marking the quarantine (`sqs2pg.rejected_messages`) for the operator commands
//! `rejects list`, `rejects show` and `rejects replay`.

use std::time::SystemTime;

use tokio_postgres::{Client, Transaction};

/// One rejection as `rejects list` shows it: no body, no field values.
#[derive(Debug, Clone)]
pub struct RejectEntry {
    pub message_id: String,
    pub reason: String,
    pub detail: Option<String>,
    pub received_at: SystemTime,
    pub receive_count: i32,
    pub replayed_at: Option<SystemTime>,
}

/// A rejection with its sealed body, for `show` and `replay`.
#[derive(Debug, Clone)]
pub struct SealedReject {
    pub message_id: String,
    pub reason: String,
    pub body_sealed: Option<Vec<u8>>,
    pub seal_key_id: Option<String>,
    /// Message attributes and FIFO ids, sealed like the body (under the same key); `None`
    /// when the message carried none, or was quarantined before they were kept.
    pub envelope_sealed: Option<Vec<u8>>,
}

/// Rejections per reason code, most frequent first.
pub async fn counts_by_reason(
    client: &Client,
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT reason, count(*) FROM sqs2pg.rejected_messages
              GROUP BY reason ORDER BY count(*) DESC, reason",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The most recent rejections.
pub async fn recent(
    client: &Client,
    limit: i64,
) -> Result<Vec<RejectEntry>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT message_id, reason, detail, received_at, receive_count, replayed_at
               FROM sqs2pg.rejected_messages ORDER BY rejected_at DESC, message_id LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RejectEntry {
            message_id: r.get(0),
            reason: r.get(1),
            detail: r.get(2),
            received_at: r.get(3),
            receive_count: r.get(4),
            replayed_at: r.get(5),
        })
        .collect())
}

/// One rejection with its sealed body.
pub async fn sealed(
    client: &Client,
    message_id: &str,
) -> Result<Option<SealedReject>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT message_id, reason, body_sealed, seal_key_id, envelope_sealed
               FROM sqs2pg.rejected_messages WHERE message_id = $1",
            &[&message_id],
        )
        .await?;
    Ok(row.map(|r| SealedReject {
        message_id: r.get(0),
        reason: r.get(1),
        body_sealed: r.get(2),
        seal_key_id: r.get(3),
        envelope_sealed: r.get(4),
    }))
}

/// A rejection selected for replay, with what the ledger knows of its latest replay.
#[derive(Debug, Clone)]
pub struct ReplayCandidate {
    pub sealed: SealedReject,
    pub sent_timestamp: Option<i64>,
    /// Replay ids issued so far (replay N is ledgered as `message_id#replayN`).
    pub replay_count: i32,
    /// The ledger outcome of replay `replay_count`: loaded, rejected, or not processed yet.
    pub last_outcome: Option<String>,
}

/// Which rejections to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplaySelection {
    /// A reason code, or the start of some (`table_refused` takes `table_refused:orders_pkey`
    /// and `table_refused:not_null:email`; `poison` every `poison:` code).
    pub reason: Option<String>,
    pub ids: Vec<String>,
    /// Also rejections replayed before.
    pub again: bool,
}

/// The ledger id of replay `n` of a message.
pub fn replay_ledger_id(message_id: &str, n: i32) -> String {
    format!("{message_id}#replay{n}")
}

/// Locks (skipping rows another replay holds) and returns up to `limit` rejections to replay,
/// leaving out `done`. The caller marks them with [`mark_replayed`] in the same transaction.
pub async fn lock_for_replay(
    tx: &Transaction<'_>,
    selection: &ReplaySelection,
    done: &[String],
    limit: i64,
) -> Result<Vec<ReplayCandidate>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT r.message_id, r.reason, r.body_sealed, r.seal_key_id, r.sent_timestamp,
                    r.replay_count, p.outcome, r.envelope_sealed
               FROM sqs2pg.rejected_messages r
               LEFT JOIN sqs2pg.ledger p
                      ON p.sent_ms = 0 AND p.message_id = r.message_id || '#replay' || r.replay_count
              WHERE ($1::text IS NULL OR r.reason = $1 OR starts_with(r.reason, $1 || ':'))
                AND (cardinality($2::text[]) = 0 OR r.message_id = ANY($2))
                AND ($3 OR r.replayed_at IS NULL)
                AND NOT (r.message_id = ANY($4))
              ORDER BY r.received_at, r.message_id
              LIMIT $5
                FOR UPDATE OF r SKIP LOCKED",
            &[
                &selection.reason,
                &selection.ids,
                &selection.again,
                &done,
                &limit,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ReplayCandidate {
            sealed: SealedReject {
                message_id: r.get(0),
                reason: r.get(1),
                body_sealed: r.get(2),
                seal_key_id: r.get(3),
                envelope_sealed: r.get(7),
            },
            sent_timestamp: r.get(4),
            replay_count: r.get(5),
            last_outcome: r.get(6),
        })
        .collect())
}

/// Records that these rejections were sent to `queue_url` under replay numbers `counts`.
pub async fn mark_replayed(
    tx: &Transaction<'_>,
    ids: &[String],
    counts: &[i32],
    queue_url: &str,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "UPDATE sqs2pg.rejected_messages r
            SET replayed_at = now(), replayed_to = $3, replay_count = u.n
           FROM unnest($1::text[], $2::int4[]) AS u(id, n)
          WHERE r.message_id = u.id",
        &[&ids, &counts, &queue_url],
    )
    .await
}
