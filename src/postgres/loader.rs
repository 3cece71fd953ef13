//! The loader: one batch, one transaction.
//!
//! 1. the batch's rows are recorded in the ledger `sqs2pg.ledger`, keyed by (send time, message
//!    id), which says which of them are new;
//! 2. binary `COPY` of the new messages' rows straight into the target table: the rows come
//!    encoded by their message kind (`kind::CopyRows`, none or several per message), so this
//!    only frames and streams them (`check_ready` made sure the table has the kind's columns);
//! 3. the same for rejections into `sqs2pg.rejected_messages`;
//! 4. `COMMIT`.
//!
//! Step 1 has two ways. Usually every id is new, so the ids go into the ledger by binary `COPY`,
//! sorted by key: the cheapest insert PostgreSQL has. If one is already there (a redelivery,
//! a crash between COMMIT and delete, another replica) the COPY fails on the ledger's primary
//! key, nothing of the transaction stays, and the batch is loaded again the careful way: one
//! statement claims the ids (`INSERT ... ON CONFLICT DO NOTHING RETURNING`) and only the rows of
//! the ids it won are copied. The loader keeps claiming until a batch claims every id again, so
//! a stream of redeliveries costs one failed COPY, not one per batch. Rejections (few) are
//! always claimed. While the retired ledger `sqs2pg.processed_messages` still holds ids (from
//! before schema version 8, until pruning empties it), every load claims, and the claim also
//! skips the ids found there.
//!
//! So a message already committed is skipped inside the same transaction, and a concurrent
//! duplicate waits on the ledger's primary key until the first transaction ends, then skips.
//! Keys are written in sorted order, so two loaders whose rows overlap wait for each other
//! instead of deadlocking (one batch's row being another's rejection can still deadlock, very
//! rarely: PostgreSQL breaks it and the load is retried). The statements are prepared once per
//! connection. The ledger's unique index is the price of "never a second row": it is most of
//! the database's work per message (see BENCHMARKS.md, loader alone).

use std::collections::HashSet;
use std::pin::pin;
use std::time::{Duration, Instant, SystemTime};

use bytes::{BufMut, BytesMut};
use futures_util::SinkExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

use super::connect::{ConnectError, Database};
use super::keyed::KeyedSql;
use super::schema::TableName;
use super::ErrorClass;
use crate::keys::SealedBody;
use crate::kind::{
    CopyRows, LoadClass, LoadFailure, LoadReport, Reject, ServerError, TableWrite, WriteMode,
};

/// A load that did not commit. Nothing of the batch is in the database; nothing may be deleted.
/// The pipeline sees it as a [`LoadFailure`] (`From`), classified here.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("database error while loading: {}", super::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl LoadError {
    /// The PostgreSQL error behind this failure, if any.
    pub fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            LoadError::Postgres(e) => Some(e),
            LoadError::Connect(e) => e.postgres(),
        }
    }
}

impl From<LoadError> for LoadFailure {
    /// The failure in the pipeline's words: its class ([`super::classify`]; a failure with no
    /// PostgreSQL error behind it, a malformed URL or an unreadable certificate, does not fix
    /// itself), and the server's codes and names.
    fn from(error: LoadError) -> Self {
        let class = match error.postgres().map(super::classify) {
            Some(ErrorClass::RowRefused) => LoadClass::RowRefused,
            Some(ErrorClass::LockWait) => LoadClass::LockWait,
            Some(ErrorClass::Transient) => LoadClass::Transient,
            Some(ErrorClass::Permanent) | None => LoadClass::Permanent,
        };
        let server = error
            .postgres()
            .and_then(tokio_postgres::Error::as_db_error)
            .map(|db| ServerError {
                sqlstate: db.code().code().to_owned(),
                constraint: db.constraint().map(str::to_owned),
                table: db.table().map(str::to_owned),
                column: db.column().map(str::to_owned),
            });
        LoadFailure::new(class, error.to_string()).with_server(server)
    }
}

/// One message's rows as the loader writes them: the ledger key it is recorded under and its
/// rows, already encoded for binary COPY by its kind. (The pipeline's batch row implements it;
/// the loader needs nothing else of it.)
pub trait LedgeredRows {
    /// The id the ledger knows the message by.
    fn message_id(&self) -> &str;
    /// The time half of the ledger key (see `pipeline::batch::ledger_ms`).
    fn ledger_ms(&self) -> i64;
    /// The message's rows (zero or more COPY tuples).
    fn rows(&self) -> &CopyRows;
}

const LEDGER_TYPES: [Type; 2] = [Type::INT8, Type::TEXT];

/// Bytes of rows sent to COPY at a time.
const COPY_CHUNK: usize = 64 * 1024;

/// The primary key of `sqs2pg.ledger`, whose violation sends a batch the careful way.
const LEDGER_KEY: &str = "ledger_pkey";

const COPY_LEDGER: &str = "COPY sqs2pg.ledger (sent_ms, message_id) FROM STDIN (FORMAT binary)";

const CLAIM_ROWS: &str = "INSERT INTO sqs2pg.ledger (sent_ms, message_id)
SELECT ms, id FROM unnest($1::int8[], $2::text[]) AS t(ms, id)
 WHERE NOT EXISTS (SELECT 1 FROM sqs2pg.processed_messages p WHERE p.message_id = t.id)
 ORDER BY ms, id COLLATE \"C\"
ON CONFLICT (sent_ms, message_id) DO NOTHING
RETURNING message_id";

const INSERT_REJECTS: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int4[],
                         $6::bytea[], $8::int8[], $9::int8[], $10::bytea[])
        AS t(message_id, reason, detail, received_at, receive_count, body_sealed, sent_timestamp,
             ledger_ms, envelope_sealed)
), fresh AS (
    INSERT INTO sqs2pg.ledger (sent_ms, message_id, outcome)
    SELECT ledger_ms, message_id, 'rejected' FROM input i
     WHERE NOT EXISTS (SELECT 1 FROM sqs2pg.processed_messages p
                        WHERE p.message_id = i.message_id)
     ORDER BY ledger_ms, message_id COLLATE \"C\"
    ON CONFLICT (sent_ms, message_id) DO NOTHING
    RETURNING message_id
)
INSERT INTO sqs2pg.rejected_messages
       (message_id, reason, detail, received_at, receive_count, body_sealed, seal_key_id,
        sent_timestamp, envelope_sealed)
SELECT i.message_id, i.reason, i.detail, i.received_at, i.receive_count, i.body_sealed, $7,
       i.sent_timestamp, i.envelope_sealed
  FROM input i JOIN fresh USING (message_id)
RETURNING reason";

/// Whether the retired ledger still holds ids, asked again this often (pruning empties it
/// within the retention horizon; until then every load claims).
const RETIRED_LEDGER_RECHECK: Duration = Duration::from_secs(600);

/// How one of the kind's tables is written: straight by COPY (append), or staged and
/// resolved by key.
#[derive(Debug, Clone)]
struct TargetSql {
    /// The table, as `row_versions` names it.
    name: String,
    /// `COPY` into the table (append) or into its staging table (keyed).
    copy: String,
    keyed: Option<KeyedSql>,
}

/// Loads batches into the target tables over one connection, reconnecting when it drops.
pub struct TableLoader {
    database: Database,
    connection: Option<Connection>,
    targets: Vec<TargetSql>,
    /// Takes, without waiting, the locks a load takes (see [`TableLoader::check_writable`]).
    probe: String,
    seal_key_id: String,
    /// Put the next batch's ids into the ledger by COPY (every id new), not by claiming them;
    /// off after a COPY met an id already there, on again when a claim finds none.
    copy_ledger: bool,
}

impl Clone for TableLoader {
    /// The same sink, not yet connected.
    fn clone(&self) -> Self {
        Self {
            database: self.database.clone(),
            connection: None,
            targets: self.targets.clone(),
            probe: self.probe.clone(),
            seal_key_id: self.seal_key_id.clone(),
            copy_ledger: true,
        }
    }
}

/// A keyed target's prepared statements: the resolving one and, with deletes, the deleting one.
type KeyedStatements = (Statement, Option<Statement>);

/// An open connection and its prepared statements.
struct Connection {
    client: Client,
    copy_ledger: Statement,
    claim_rows: Statement,
    /// Per target: its COPY, and its resolving statement when keyed.
    copy_rows: Vec<(Statement, Option<KeyedStatements>)>,
    insert_rejects: Statement,
    /// The retired ledger held ids when last asked, at that time.
    retired_ledger: (bool, Instant),
}

impl TableLoader {
    /// A loader for the kind's tables: per target, the table and how the kind writes it (see
    /// `kind::MessageKind::writes`; columns quoted here); connects on first use. `seal_key_id`
    /// names the key that sealed the bodies of the rejections it stores.
    pub fn new(
        database: Database,
        targets: &[(TableName, TableWrite)],
        seal_key_id: String,
    ) -> Self {
        let targets: Vec<TargetSql> = targets
            .iter()
            .enumerate()
            .map(|(i, (table, write))| {
                let keyed =
                    (write.mode != WriteMode::Append).then(|| KeyedSql::new(table, write, i));
                TargetSql {
                    name: table.to_string(),
                    copy: match &keyed {
                        Some(k) => k.copy.clone(),
                        None => format!(
                            "COPY {} ({}) FROM STDIN (FORMAT binary)",
                            table.quoted(),
                            write
                                .columns
                                .iter()
                                .map(|c| super::schema::quote_ident(c))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    },
                    keyed,
                }
            })
            .collect();
        let mut tables: Vec<String> = targets_tables(&targets);
        tables.dedup();
        Self {
            database,
            connection: None,
            probe: format!(
                "LOCK TABLE {}, sqs2pg.ledger, sqs2pg.rejected_messages IN ROW EXCLUSIVE MODE NOWAIT",
                tables.join(", ")
            ),
            targets,
            seal_key_id,
            copy_ledger: true,
        }
    }

    /// Whether the next batch's ids go into the ledger by COPY (see the module docs): false
    /// after a COPY met an id already there, and while the retired ledger still holds ids.
    pub fn copies_ledger(&self) -> bool {
        self.copy_ledger && !self.connection.as_ref().is_some_and(|c| c.retired_ledger.0)
    }
}

/// The open connection in `slot`, (re)connecting and preparing the statements when there is
/// none or it was closed.
/// A load that waits this long for a lock (a table held locked, another replica's
/// uncommitted entry for the same message) fails as a lock wait, which is retried and never
/// blamed on a row: below the pipeline's shortest bound on a load (10 s), so a lock wait is
/// never taken for a body that stalls the database.
///
/// And UTC, so the text of a timestamp in a keyed table's key (`postgres::keyed`) never moves.
const LOCK_WAIT_BOUND: &str = "SET lock_timeout = '8s'; SET TimeZone = 'UTC'";

/// The tables' quoted names, in target order (a table written by two mappings twice).
fn targets_tables(targets: &[TargetSql]) -> Vec<String> {
    let mut tables: Vec<String> = targets
        .iter()
        .map(|t| {
            TableName::parse(&t.name)
                .map(|n| n.quoted())
                .unwrap_or_else(|_| t.name.clone())
        })
        .collect();
    tables.sort();
    tables
}

async fn connected<'a>(
    slot: &'a mut Option<Connection>,
    database: &Database,
    targets: &[TargetSql],
) -> Result<&'a mut Connection, LoadError> {
    if slot.as_ref().is_some_and(|c| c.client.is_closed()) {
        *slot = None;
    }
    if slot.is_none() {
        let client = database.connect().await?;
        for target in targets {
            if let Some(keyed) = &target.keyed {
                client.batch_execute(&keyed.create_stage).await?;
            }
        }
        let prepare_targets = async {
            let mut prepared = Vec::with_capacity(targets.len());
            for target in targets {
                let copy = client.prepare(&target.copy).await?;
                let resolve = match &target.keyed {
                    Some(keyed) => {
                        let delete = match &keyed.delete {
                            Some(sql) => Some(client.prepare(sql).await?),
                            None => None,
                        };
                        Some((client.prepare(&keyed.resolve).await?, delete))
                    }
                    None => None,
                };
                prepared.push((copy, resolve));
            }
            Ok::<_, tokio_postgres::Error>(prepared)
        };
        let (_, copy_ledger, claim_rows, copy_rows, insert_rejects, retired) = tokio::try_join!(
            client.batch_execute(LOCK_WAIT_BOUND),
            client.prepare(COPY_LEDGER),
            client.prepare(CLAIM_ROWS),
            prepare_targets,
            client.prepare(INSERT_REJECTS),
            retired_ledger_in_use(&client),
        )?;
        *slot = Some(Connection {
            client,
            copy_ledger,
            claim_rows,
            copy_rows,
            insert_rejects,
            retired_ledger: (retired, Instant::now()),
        });
    }
    let connection = slot.as_mut().expect("connected above");
    if connection.retired_ledger.0 && connection.retired_ledger.1.elapsed() > RETIRED_LEDGER_RECHECK
    {
        connection.retired_ledger = (
            retired_ledger_in_use(&connection.client).await?,
            Instant::now(),
        );
    }
    Ok(connection)
}

/// Whether the retired ledger `sqs2pg.processed_messages` still holds ids loads must skip.
async fn retired_ledger_in_use(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM sqs2pg.processed_messages)",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// How a load puts its rows' ids into the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ledgering {
    /// By COPY: fails on the ledger's key if any id is already there.
    Copy,
    /// By a claim that skips ids already there.
    Claim,
}

/// The load failed because an id was already in the ledger (the COPY way only).
fn ledger_conflict(e: &LoadError) -> bool {
    e.postgres().and_then(|e| e.as_db_error()).is_some_and(|e| {
        *e.code() == SqlState::UNIQUE_VIOLATION
            && e.schema() == Some("sqs2pg")
            && e.table() == Some("ledger")
            && e.constraint() == Some(LEDGER_KEY)
    })
}

impl TableLoader {
    /// Commits `rows` and `rejects` in one transaction (see the module docs), or fails without
    /// committing any of them.
    pub async fn commit<R: LedgeredRows>(
        &mut self,
        rows: &[R],
        rejects: &[Reject],
    ) -> Result<LoadReport, LoadError> {
        connected(&mut self.connection, &self.database, &self.targets).await?;
        let mut ledgering = if self.copies_ledger() {
            Ledgering::Copy
        } else {
            Ledgering::Claim
        };
        let connection = self.connection.as_mut().expect("connected above");
        let targets = &self.targets;
        let mut result = load_in_transaction(
            connection,
            targets,
            &self.seal_key_id,
            rows,
            rejects,
            ledgering,
        )
        .await;
        if ledgering == Ledgering::Copy && result.as_ref().is_err_and(ledger_conflict) {
            tracing::debug!("a message of the batch is in the ledger already: claiming its ids");
            self.copy_ledger = false;
            ledgering = Ledgering::Claim;
            result = load_in_transaction(
                connection,
                targets,
                &self.seal_key_id,
                rows,
                rejects,
                ledgering,
            )
            .await;
        }
        if ledgering == Ledgering::Claim && !rows.is_empty() {
            if let Ok(report) = &result {
                self.copy_ledger = report.loaded == rows.len() as u64;
            }
        }
        // A connection that died in the load is replaced by `connected` on the next one.
        result
    }

    /// Drops the connection after a load that was abandoned midway (it stalled), so the next
    /// load starts on a fresh one; the server rolls the abandoned transaction back.
    pub fn drop_connection(&mut self) {
        self.connection = None;
    }

    /// A transaction that takes the locks a load takes (`ROW EXCLUSIVE` on the table, the
    /// ledger and the reject table) without waiting, then ends: it fails while the database is
    /// down and while someone holds the table locked, and works when a load could.
    pub async fn check_writable(&mut self) -> Result<(), LoadError> {
        let connection = connected(&mut self.connection, &self.database, &self.targets).await?;
        let tx = connection.client.transaction().await?;
        tx.batch_execute(&self.probe).await?;
        tx.rollback().await?;
        Ok(())
    }
}

async fn load_in_transaction<R: LedgeredRows>(
    connection: &mut Connection,
    targets: &[TargetSql],
    seal_key_id: &str,
    rows: &[R],
    rejects: &[Reject],
    ledgering: Ledgering,
) -> Result<LoadReport, LoadError> {
    let tx = connection.client.transaction().await?;
    let mut report = LoadReport::default();
    if !rows.is_empty() {
        let mut keys: Vec<(i64, &str)> = rows
            .iter()
            .map(|r| (r.ledger_ms(), r.message_id()))
            .collect();
        // The ledger's key order (bigint, then bytes: the column is COLLATE "C").
        keys.sort_unstable();
        // None: every row is new; otherwise only the rows of the ids the claim won.
        let fresh: Option<HashSet<String>> = match ledgering {
            Ledgering::Copy => {
                let sink = tx.copy_in(&connection.copy_ledger).await?;
                let mut writer = pin!(BinaryCopyInWriter::new(sink, &LEDGER_TYPES));
                for (ms, id) in &keys {
                    writer
                        .as_mut()
                        .write(&[ms as &(dyn ToSql + Sync), id])
                        .await?;
                }
                writer.finish().await?;
                None
            }
            Ledgering::Claim => {
                let (ms, ids): (Vec<i64>, Vec<&str>) = keys.iter().copied().unzip();
                let claimed = tx.query(&connection.claim_rows, &[&ms, &ids]).await?;
                (claimed.len() < ids.len())
                    .then(|| claimed.iter().map(|r| r.get::<_, String>(0)).collect())
            }
        };
        let fresh_rows: Vec<&CopyRows> = rows
            .iter()
            .filter(|row| fresh.as_ref().is_none_or(|f| f.contains(row.message_id())))
            .map(LedgeredRows::rows)
            .collect();
        report.loaded = fresh_rows.len() as u64;
        for (position, target) in targets.iter().enumerate() {
            let (copy, resolve) = &connection.copy_rows[position];
            let index = u16::try_from(position).expect("fewer than 65536 targets");
            let parts = target_parts(&fresh_rows, index);
            if parts.is_empty() {
                continue;
            }
            let copied = copy_parts(&tx, copy, &parts).await?;
            match (&target.keyed, resolve) {
                (Some(keyed), Some((resolve, delete))) => {
                    let counts = tx.query_one(resolve, &[&target.name]).await?;
                    let (won, written): (i64, i64) = (counts.get(0), counts.get(1));
                    let won = u64::try_from(won).unwrap_or(0);
                    let lost = copied.saturating_sub(won);
                    let (duplicate_keys, stale) = match keyed.mode {
                        WriteMode::Latest => (0, lost),
                        _ => (lost, 0),
                    };
                    let written = u64::try_from(written).unwrap_or(0);
                    report.count_target(position, written, duplicate_keys, stale);
                    let deletes: Option<Vec<i64>> = counts.get(2);
                    if let (Some(delete), Some(deletes)) = (delete, deletes) {
                        report.deleted += tx.execute(delete, &[&target.name, &deletes]).await?;
                    }
                }
                _ => report.count_target(position, copied, 0, 0),
            }
        }
    }
    if !rejects.is_empty() {
        let ids: Vec<&str> = rejects.iter().map(|r| r.message_id.as_str()).collect();
        let reasons: Vec<String> = rejects
            .iter()
            .map(|r| r.rejection.reason.to_string())
            .collect();
        let details: Vec<Option<&str>> = rejects
            .iter()
            .map(|r| r.rejection.detail.as_deref())
            .collect();
        let received: Vec<SystemTime> = rejects.iter().map(|r| r.delivery.received_at).collect();
        let counts: Vec<i32> = rejects.iter().map(|r| r.delivery.receive_count).collect();
        let sent: Vec<i64> = rejects.iter().map(|r| r.delivery.sent_timestamp).collect();
        let bodies: Vec<&[u8]> = rejects.iter().map(|r| r.sealed_body.as_bytes()).collect();
        let ledger_ms: Vec<i64> = rejects.iter().map(|r| r.delivery.ledger_ms).collect();
        let envelopes: Vec<Option<&[u8]>> = rejects
            .iter()
            .map(|r| r.sealed_envelope.as_ref().map(SealedBody::as_bytes))
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
                    &ledger_ms,
                    &envelopes,
                ],
            )
            .await?;
        report.rejected = rows.iter().map(|r| r.get(0)).collect();
    }
    tx.commit().await?;
    let fresh = report.loaded + report.rejected.len() as u64;
    report.duplicates = (rows.len() + rejects.len()) as u64 - fresh;
    Ok(report)
}

/// The encoded rows of `target`, message by message.
fn target_parts<'a>(rows: &[&'a CopyRows], target: u16) -> Vec<&'a [u8]> {
    let mut parts = Vec::with_capacity(rows.len());
    for row in rows {
        for (t, bytes) in row.parts() {
            if t == target {
                parts.push(bytes);
            }
        }
    }
    parts
}

/// Streams encoded tuples into `copy` (binary COPY's framing around them: the signature, no
/// flags, no header extension; the tuples; -1 as the trailer; tokio-postgres's
/// `BinaryCopyInWriter` encodes values as it writes them, ours come encoded, so the framing is
/// done here). Returns the rows copied.
async fn copy_parts(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &Statement,
    parts: &[&[u8]],
) -> Result<u64, tokio_postgres::Error> {
    let mut sink = pin!(tx.copy_in::<_, bytes::Bytes>(copy).await?);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + 1024);
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0);
    buf.put_i32(0);
    for part in parts {
        buf.put_slice(part);
        if buf.len() >= COPY_CHUNK {
            sink.send(buf.split().freeze()).await?;
        }
    }
    buf.put_i16(-1);
    sink.send(buf.freeze()).await?;
    sink.as_mut().finish().await
}
