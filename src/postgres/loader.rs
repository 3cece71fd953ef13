//! The loader: one batch, one transaction.
//!
//! 1. one statement claims the batch's message ids in the ledger `sqs2pg.processed_messages`
//!    (`INSERT ... ON CONFLICT DO NOTHING RETURNING`), which says which ids are new;
//! 2. binary `COPY` of the new ids' rows straight into the target table (the contract's column
//!    types; `check_ready` made sure the table has them);
//! 3. the same claim-then-insert for rejections into `sqs2pg.rejected_messages`;
//! 4. `COMMIT`.
//!
//! So a message already committed (a redelivery, a crash between COMMIT and delete, another
//! replica) is skipped inside the same transaction, and a concurrent duplicate waits on the
//! ledger's primary key until the first transaction ends, then skips. Ids are claimed in
//! sorted order, so two loaders whose rows overlap wait for each other instead of deadlocking
//! (one batch's row being another's rejection can still deadlock, very rarely: PostgreSQL
//! breaks it and the load is retried). The statements are
//! prepared once per connection. The ledger's unique index is the price of "never a second
//! row": it is most of the database's work per message (see BENCHMARKS.md, loader alone).

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::time::SystemTime;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

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

    /// Another loader to the same sink, over its own connection, so batches can load at once;
    /// `None` (the default) if this loader cannot be duplicated (test doubles at the seam).
    fn fork(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }
}

const TARGET_COLUMNS: &str =
    "user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date";
const TARGET_TYPES: [Type; 7] = [
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::INT4,
    Type::DATE,
];

const CLAIM_ROWS: &str = "INSERT INTO sqs2pg.processed_messages (message_id, outcome)
SELECT id, 'loaded' FROM unnest($1::text[]) AS t(id) ORDER BY id
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id";

const INSERT_REJECTS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int4[],
                         $6::bytea[], $8::int8[])
        AS t(message_id, reason, detail, received_at, receive_count, body_sealed, sent_timestamp)
), fresh AS (
    INSERT INTO sqs2pg.processed_messages (message_id, outcome)
    SELECT message_id, 'rejected' FROM input ORDER BY message_id
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
    connection: Option<Connection>,
    copy_rows: String,
    seal_key_id: String,
}

impl Clone for LoginLoader {
    /// The same sink, not yet connected.
    fn clone(&self) -> Self {
        Self {
            database: self.database.clone(),
            connection: None,
            copy_rows: self.copy_rows.clone(),
            seal_key_id: self.seal_key_id.clone(),
        }
    }
}

/// An open connection and its prepared statements.
struct Connection {
    client: Client,
    claim_rows: Statement,
    copy_rows: Statement,
    insert_rejects: Statement,
}

impl LoginLoader {
    /// A loader for `table`; connects on first use. `seal_key_id` names the key that sealed the
    /// bodies of the rejections it stores.
    pub fn new(database: Database, table: TableName, seal_key_id: String) -> Self {
        Self {
            database,
            connection: None,
            copy_rows: format!(
                "COPY {} ({TARGET_COLUMNS}) FROM STDIN (FORMAT binary)",
                table.quoted()
            ),
            seal_key_id,
        }
    }
}

/// The open connection in `slot`, (re)connecting and preparing the statements when there is
/// none or it was closed.
async fn connected<'a>(
    slot: &'a mut Option<Connection>,
    database: &Database,
    copy_rows: &str,
) -> Result<&'a mut Connection, LoadError> {
    if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
        *slot = None;
    }
    if slot.is_none() {
        let client = database.connect().await?;
        let (claim_rows, copy_rows, insert_rejects) = tokio::try_join!(
            client.prepare(CLAIM_ROWS),
            client.prepare(copy_rows),
            client.prepare(INSERT_REJECTS),
        )?;
        *slot = Some(Connection {
            client,
            claim_rows,
            copy_rows,
            insert_rejects,
        });
    }
    Ok(slot.as_mut().expect("connected above"))
}

impl BatchLoader for LoginLoader {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadError> {
        let connection = connected(&mut self.connection, &self.database, &self.copy_rows).await?;
        let result = load_in_transaction(connection, &self.seal_key_id, batch).await;
        if result.is_err()
            && self
                .connection
                .as_ref()
                .is_some_and(|c| c.client.is_closed())
        {
            self.connection = None;
        }
        result
    }

    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }
}

async fn load_in_transaction(
    connection: &mut Connection,
    seal_key_id: &str,
    batch: &Batch,
) -> Result<LoadReport, LoadError> {
    let tx = connection.client.transaction().await?;
    let mut report = LoadReport::default();
    if !batch.rows.is_empty() {
        let ids: Vec<&str> = batch.rows.iter().map(|r| r.message_id.as_str()).collect();
        let claimed = tx.query(&connection.claim_rows, &[&ids]).await?;
        // Usually every id is new; otherwise only the rows of the ids this claim won.
        let fresh: Option<HashSet<&str>> = (claimed.len() < ids.len())
            .then(|| claimed.iter().map(|r| r.get::<_, &str>(0)).collect());
        let sink = tx.copy_in(&connection.copy_rows).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &TARGET_TYPES));
        for row in &batch.rows {
            if fresh
                .as_ref()
                .is_some_and(|f| !f.contains(row.message_id.as_str()))
            {
                continue;
            }
            let l = &row.login;
            writer
                .as_mut()
                .write(&[
                    &l.user_id as &(dyn ToSql + Sync),
                    &l.device_type,
                    &l.masked_ip.as_str(),
                    &l.masked_device_id.as_str(),
                    &l.locale,
                    &l.app_version,
                    &l.create_date,
                ])
                .await?;
        }
        report.loaded = writer.finish().await?;
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
                &connection.insert_rejects,
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
