//! The loader: one batch, one transaction.
//!
//! 1. binary `COPY` of the batch's rows into a temporary staging table (per connection,
//!    `ON COMMIT DELETE ROWS`, the contract's column types; `check_ready` made sure the target
//!    has the same);
//! 2. one statement that inserts the staged message ids into the ledger
//!    `sqs2pg.processed_messages` with `ON CONFLICT DO NOTHING` and inserts into the target table
//!    only the rows whose ids were new;
//! 3. the same for rejections into `sqs2pg.rejected_messages`;
//! 4. `COMMIT`.
//!
//! So a message already committed (a redelivery, a crash between COMMIT and delete, another
//! replica) is skipped inside the same transaction, and a concurrent duplicate waits on the
//! ledger's primary key until the first transaction ends, then skips.

use std::future::Future;
use std::pin::pin;
use std::time::SystemTime;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::connect::{ConnectError, Database};
use super::schema::TableName;
use crate::pipeline::batch::Batch;

/// What a committed batch (or part of one) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Rows inserted into the target table.
    pub loaded: u64,
    /// Reason codes of the rejections inserted (one entry per rejected message).
    pub rejected: Vec<String>,
    /// Messages skipped because the ledger already held their id.
    pub duplicates: u64,
}

impl LoadReport {
    /// Adds another part's report to this one.
    pub fn merge(&mut self, other: LoadReport) {
        self.loaded += other.loaded;
        self.rejected.extend(other.rejected);
        self.duplicates += other.duplicates;
    }
}

/// A load that did not commit. Nothing of the batch is in the database; nothing may be deleted.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("database error while loading: {}", super::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A fault injected by a test double at the loader seam.
    #[error("injected fault: {0}")]
    Injected(String),
}

impl LoadError {
    /// The PostgreSQL error behind this failure, if any.
    pub fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            LoadError::Postgres(e) => Some(e),
            LoadError::Connect(e) => e.postgres(),
            LoadError::Injected(_) => None,
        }
    }
}

/// The pipeline's seam to the sink: commit a batch or fail without committing any of it.
pub trait BatchLoader: Send + 'static {
    fn load(&mut self, batch: &Batch)
        -> impl Future<Output = Result<LoadReport, LoadError>> + Send;
}

const STAGING_COLUMNS: &str = "message_id, user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date";
const STAGING_TYPES: [Type; 8] = [
    Type::TEXT,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::INT4,
    Type::DATE,
];

const INSERT_REJECTS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int4[],
                         $6::bytea[], $8::int8[])
        AS t(message_id, reason, detail, received_at, receive_count, body_sealed, sent_timestamp)
), fresh AS (
    INSERT INTO sqs2pg.processed_messages (message_id, outcome)
    SELECT message_id, 'rejected' FROM input
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
)
INSERT INTO sqs2pg.rejected_messages
       (message_id, reason, detail, received_at, receive_count, body_sealed, seal_key_id,
        sent_timestamp)
SELECT i.message_id, i.reason, i.detail, i.received_at, i.receive_count, i.body_sealed, $7,
       i.sent_timestamp
  FROM input i JOIN fresh USING (message_id)
RETURNING reason";

/// Loads batches into the target table over one connection, reconnecting when it drops.
pub struct LoginLoader {
    database: Database,
    client: Option<Client>,
    insert_rows: String,
    seal_key_id: String,
}

impl LoginLoader {
    /// A loader for `table`; connects on first use. `seal_key_id` names the key that sealed the
    /// bodies of the rejections it stores.
    pub fn new(database: Database, table: TableName, seal_key_id: String) -> Self {
        let insert_rows = format!(
            "WITH fresh AS (
                INSERT INTO sqs2pg.processed_messages (message_id, outcome)
                SELECT message_id, 'loaded' FROM pg_temp.sqs2pg_staging
                ON CONFLICT (message_id) DO NOTHING
                RETURNING message_id
            )
            INSERT INTO {} (user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date)
            SELECT s.user_id, s.device_type, s.masked_ip, s.masked_device_id, s.locale, s.app_version, s.create_date
              FROM pg_temp.sqs2pg_staging s JOIN fresh USING (message_id)",
            table.quoted()
        );
        Self {
            database,
            client: None,
            insert_rows,
            seal_key_id,
        }
    }
}

/// The open connection in `slot`, (re)connecting and creating the staging table when there is
/// none or it was closed.
async fn connected<'a>(
    slot: &'a mut Option<Client>,
    database: &Database,
) -> Result<&'a mut Client, LoadError> {
    if slot.as_ref().is_some_and(Client::is_closed) {
        *slot = None;
    }
    if slot.is_none() {
        let client = database.connect().await?;
        client
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS sqs2pg_staging (
                     message_id text NOT NULL, user_id varchar(128), device_type varchar(32),
                     masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32),
                     app_version integer, create_date date)
                 ON COMMIT DELETE ROWS",
            )
            .await?;
        *slot = Some(client);
    }
    Ok(slot.as_mut().expect("connected above"))
}

impl BatchLoader for LoginLoader {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadError> {
        let client = connected(&mut self.client, &self.database).await?;
        let result = load_in_transaction(client, &self.insert_rows, &self.seal_key_id, batch).await;
        if result.is_err() && self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        result
    }
}

async fn load_in_transaction(
    client: &mut Client,
    insert_rows: &str,
    seal_key_id: &str,
    batch: &Batch,
) -> Result<LoadReport, LoadError> {
    let tx = client.transaction().await?;
    let mut report = LoadReport::default();
    if !batch.rows.is_empty() {
        let sink = tx
            .copy_in(&format!(
                "COPY pg_temp.sqs2pg_staging ({STAGING_COLUMNS}) FROM STDIN (FORMAT binary)"
            ))
            .await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &STAGING_TYPES));
        for row in &batch.rows {
            let l = &row.login;
            writer
                .as_mut()
                .write(&[
                    &row.message_id as &(dyn ToSql + Sync),
                    &l.user_id,
                    &l.device_type,
                    &l.masked_ip.as_str(),
                    &l.masked_device_id.as_str(),
                    &l.locale,
                    &l.app_version,
                    &l.create_date,
                ])
                .await?;
        }
        writer.finish().await?;
        report.loaded = tx.execute(insert_rows, &[]).await?;
    }
    if !batch.rejects.is_empty() {
        let ids: Vec<&str> = batch
            .rejects
            .iter()
            .map(|r| r.message_id.as_str())
            .collect();
        let reasons: Vec<String> = batch
            .rejects
            .iter()
            .map(|r| r.rejection.reason.to_string())
            .collect();
        let details: Vec<Option<&str>> = batch
            .rejects
            .iter()
            .map(|r| r.rejection.detail.as_deref())
            .collect();
        let received: Vec<SystemTime> = batch
            .rejects
            .iter()
            .map(|r| r.evidence.received_at)
            .collect();
        let counts: Vec<i32> = batch
            .rejects
            .iter()
            .map(|r| r.evidence.receive_count)
            .collect();
        let sent: Vec<i64> = batch
            .rejects
            .iter()
            .map(|r| r.evidence.sent_timestamp)
            .collect();
        let bodies: Vec<&[u8]> = batch
            .rejects
            .iter()
            .map(|r| r.evidence.sealed_body.as_bytes())
            .collect();
        let rows = tx
            .query(
                INSERT_REJECTS,
                &[
                    &ids,
                    &reasons,
                    &details,
                    &received,
                    &counts,
                    &bodies,
                    &seal_key_id,
                    &sent,
                ],
            )
            .await?;
        report.rejected = rows.iter().map(|r| r.get(0)).collect();
    }
    tx.commit().await?;
    let fresh = report.loaded + report.rejected.len() as u64;
    report.duplicates = (batch.rows.len() + batch.rejects.len()) as u64 - fresh;
    Ok(report)
}
