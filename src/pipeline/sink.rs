//! The pipeline's seams to the database: [`BatchLoader`], which commits a batch or fails
//! without committing any of it, and [`AttemptLog`], the durable record of attempts at
//! suspects. The PostgreSQL loader and recorder are one each; test doubles at these seams
//! inject faults.

use std::future::Future;
use std::pin::Pin;

use super::batch::{Batch, Row};
use crate::kind::{CopyRows, LoadFailure, LoadReport};
use crate::postgres::attempts::AttemptRecorder;
use crate::postgres::{LedgeredRows, TableLoader};

/// Commits a batch, or fails without committing any of it.
pub trait BatchLoader: Send + 'static {
    fn load(
        &mut self,
        batch: &Batch,
    ) -> impl Future<Output = Result<LoadReport, LoadFailure>> + Send;

    /// Another loader to the same sink, over its own connection, so batches can load at once;
    /// `None` (the default) if this loader cannot be duplicated (test doubles at the seam).
    fn fork(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// Drops the connection after a load that was abandoned midway (it stalled), so the next
    /// load starts on a fresh one; the server rolls the abandoned transaction back.
    fn reset(&mut self) {}

    /// Whether the sink takes writes now, without writing anything: the pipeline asks when a
    /// part of a batch keeps failing, to tell a bad message from a bad database. By default an
    /// empty load.
    fn probe(&mut self) -> impl Future<Output = Result<(), LoadFailure>> + Send {
        async {
            self.load(&Batch::default()).await?;
            Ok(())
        }
    }
}

/// The durable record of attempts at suspects (see `postgres::attempts`): one is begun before
/// a suspect is processed and finished once its processing returned, and another around a
/// valid one's load alone, so a body that kills the process leaves attempts that never
/// finished. Object-safe (suspects are few, so a boxed
/// future each costs nothing that matters).
pub trait AttemptLog: Send + Sync + 'static {
    /// Records an attempt: the earlier ones that never finished, or `None` if the message's
    /// fate is already committed.
    fn begin<'a>(
        &'a self,
        ledger_id: &'a str,
        ledger_ms: i64,
    ) -> Pin<Box<dyn Future<Output = Result<Option<u32>, String>> + Send + 'a>>;

    /// Counts the attempt begun last as finished.
    fn finish<'a>(
        &'a self,
        ledger_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

    /// Counts a delivery whose load alone stalled the database: how many so far.
    fn stalled<'a>(
        &'a self,
        ledger_id: &'a str,
        ledger_ms: i64,
    ) -> Pin<Box<dyn Future<Output = Result<u32, String>> + Send + 'a>>;
}

/// Counts a suspect's attempt finished, tried three times (an attempt left unfinished counts
/// against the message).
pub(super) async fn finish_attempt(log: &dyn AttemptLog, ledger_id: &str) {
    let mut error = None;
    for wait in [0, 200, 1_000] {
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        match log.finish(ledger_id).await {
            Ok(()) => return,
            Err(e) => error = Some(e),
        }
    }
    if let Some(error) = error {
        tracing::warn!(%error, "could not record a finished attempt at a suspect");
    }
}

impl AttemptLog for AttemptRecorder {
    fn begin<'a>(
        &'a self,
        ledger_id: &'a str,
        ledger_ms: i64,
    ) -> Pin<Box<dyn Future<Output = Result<Option<u32>, String>> + Send + 'a>> {
        Box::pin(AttemptRecorder::begin(self, ledger_id, ledger_ms))
    }

    fn finish<'a>(
        &'a self,
        ledger_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(AttemptRecorder::finish(self, ledger_id))
    }

    fn stalled<'a>(
        &'a self,
        ledger_id: &'a str,
        ledger_ms: i64,
    ) -> Pin<Box<dyn Future<Output = Result<u32, String>> + Send + 'a>> {
        Box::pin(AttemptRecorder::stalled(self, ledger_id, ledger_ms))
    }
}

impl LedgeredRows for Row {
    fn message_id(&self) -> &str {
        &self.message_id
    }

    fn ledger_ms(&self) -> i64 {
        self.delivery.ledger_ms
    }

    fn rows(&self) -> &CopyRows {
        &self.rows
    }
}

impl BatchLoader for TableLoader {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        Ok(self.commit(&batch.rows, &batch.rejects).await?)
    }

    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn reset(&mut self) {
        self.drop_connection();
    }

    /// A transaction that takes the locks a load takes without waiting (see
    /// [`TableLoader::check_writable`]).
    async fn probe(&mut self) -> Result<(), LoadFailure> {
        Ok(self.check_writable().await?)
    }
}
