//! The durable count of attempts at suspects (messages received more often than
//! `--max-receive-count`), in `sqs2pg.attempts`: one more is recorded before a suspect is
//! processed, and counted finished once its processing returned, each in its own committed
//! statement, so that a body which kills the process (an abort, an OOM kill, a stack overflow
//! in a dependency) leaves a trace that outlives it: an attempt that never finished. A message
//! whose fate is already in the ledger is not counted. The deliveries whose load alone stalled
//! the database are counted here too, so that such a body is found across deliveries and
//! processes.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use super::Database;

/// The longest recording may take; a database that does not answer in time is not waited
/// for (the suspect is processed as if it had no record).
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts one more attempt at `$1` (a ledger id, sent at `$2` as the ledger keys it) and
/// returns the attempts before it that never finished; no row if the message's fate is
/// already in the ledger (a duplicate, which its load skips).
const BEGIN: &str = "
WITH finished AS (
    SELECT 1 FROM sqs2pg.ledger WHERE sent_ms = $2 AND message_id = $1
    UNION ALL
    SELECT 1 FROM sqs2pg.processed_messages WHERE message_id = $1
)
INSERT INTO sqs2pg.attempts AS a (message_id, sent_ms, started)
SELECT $1, $2, 1 WHERE NOT EXISTS (SELECT 1 FROM finished)
ON CONFLICT (message_id) DO UPDATE SET started = a.started + 1, last_at = now()
RETURNING started - 1 - finished";

/// Counts an attempt at `$1` finished: its processing returned.
const FINISH: &str =
    "UPDATE sqs2pg.attempts SET finished = finished + 1, last_at = now() WHERE message_id = $1";

/// Counts one more delivery of `$1` (sent at `$2`) whose load alone stalled the database;
/// returns how many so far.
const STALLED: &str = "
INSERT INTO sqs2pg.attempts AS a (message_id, sent_ms, started, stalled) VALUES ($1, $2, 0, 1)
ON CONFLICT (message_id) DO UPDATE SET stalled = a.stalled + 1, last_at = now()
RETURNING stalled";

/// Records attempts over a connection of its own, opened on first use and again after a
/// failure. Suspects are few: two statements each.
pub struct AttemptRecorder {
    database: Database,
    client: Mutex<Option<Client>>,
}

impl AttemptRecorder {
    pub fn new(database: Database) -> Self {
        Self {
            database,
            client: Mutex::new(None),
        }
    }

    /// Records an attempt at `message_id`: the attempts before it that never finished, or
    /// `None` when the message is already in the ledger. Errors (no connection, a timeout)
    /// are the caller's to weigh: the record is a safeguard, not a precondition.
    pub async fn begin(&self, message_id: &str, ledger_ms: i64) -> Result<Option<u32>, String> {
        let rows = self.query(BEGIN, &[&message_id, &ledger_ms]).await?;
        Ok(rows.first().map(|r| r.get::<_, i32>(0).max(0) as u32))
    }

    /// Counts the attempt at `message_id` begun last as finished.
    pub async fn finish(&self, message_id: &str) -> Result<(), String> {
        self.query(FINISH, &[&message_id]).await.map(|_| ())
    }

    /// Counts a delivery of `message_id` whose load alone stalled the database: how many so
    /// far, this one included.
    pub async fn stalled(&self, message_id: &str, ledger_ms: i64) -> Result<u32, String> {
        let rows = self.query(STALLED, &[&message_id, &ledger_ms]).await?;
        Ok(rows.first().map_or(1, |r| r.get::<_, i32>(0).max(0) as u32))
    }

    /// Runs one statement on the recorder's connection, within [`RECORD_TIMEOUT`]; a failure
    /// drops the connection, so the next statement opens a fresh one.
    async fn query(
        &self,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        let mut client = self.client.lock().await;
        let attempt = async {
            if client.as_ref().is_none_or(Client::is_closed) {
                *client = Some(self.database.connect().await.map_err(|e| e.to_string())?);
            }
            let c = client.as_ref().expect("connected above");
            c.query(statement, params)
                .await
                .map_err(|e| super::describe(&e))
        };
        let result = tokio::time::timeout(RECORD_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {RECORD_TIMEOUT:?}")));
        if result.is_err() {
            *client = None;
        }
        result
    }
}
