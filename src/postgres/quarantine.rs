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
            "SELECT message_id, reason, body_sealed, seal_key_id
               FROM sqs2pg.rejected_messages WHERE message_id = $1",
            &[&message_id],
        )
        .await?;
    Ok(row.map(|r| SealedReject {
        message_id: r.get(0),
        reason: r.get(1),
        body_sealed: r.get(2),
        seal_key_id: r.get(3),
    }))
}

/// Locks and returns the rejections to replay: by reason and/or ids, and only those never
/// replayed unless `again`. The caller marks them with [`mark_replayed`] in the same transaction.
pub async fn lock_for_replay(
    tx: &Transaction<'_>,
    reason: Option<&str>,
    ids: &[String],
    again: bool,
) -> Result<Vec<SealedReject>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT message_id, reason, body_sealed, seal_key_id
               FROM sqs2pg.rejected_messages
              WHERE ($1::text IS NULL OR reason = $1)
                AND (cardinality($2::text[]) = 0 OR message_id = ANY($2))
                AND ($3 OR replayed_at IS NULL)
              ORDER BY received_at, message_id
                FOR UPDATE",
            &[&reason, &ids, &again],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SealedReject {
            message_id: r.get(0),
            reason: r.get(1),
            body_sealed: r.get(2),
            seal_key_id: r.get(3),
        })
        .collect())
}

/// Records that these rejections were sent to `queue_url`.
pub async fn mark_replayed(
    tx: &Transaction<'_>,
    ids: &[String],
    queue_url: &str,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "UPDATE sqs2pg.rejected_messages SET replayed_at = now(), replayed_to = $2
          WHERE message_id = ANY($1)",
        &[&ids, &queue_url],
    )
    .await
}
