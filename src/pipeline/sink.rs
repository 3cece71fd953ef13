//! The pipeline's seam to the sink: [`BatchLoader`], which commits a batch or fails without
//! committing any of it. The PostgreSQL loader is one; test doubles at this seam inject faults.

use std::future::Future;

use super::batch::{Batch, Row};
use crate::kind::CopyRows;
use crate::postgres::{LedgeredRows, LoadError, LoadReport, TableLoader};

/// Commits a batch, or fails without committing any of it.
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

    /// Drops the connection after a load that was abandoned midway (it stalled), so the next
    /// load starts on a fresh one; the server rolls the abandoned transaction back.
    fn reset(&mut self) {}

    /// Whether the sink takes writes now, without writing anything: the pipeline asks when a
    /// part of a batch keeps failing, to tell a bad message from a bad database. By default an
    /// empty load.
    fn probe(&mut self) -> impl Future<Output = Result<(), LoadError>> + Send {
        async {
            self.load(&Batch::default()).await?;
            Ok(())
        }
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
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadError> {
        self.commit(&batch.rows, &batch.rejects).await
    }

    fn fork(&self) -> Option<Self> {
        Some(self.clone())
    }

    fn reset(&mut self) {
        self.drop_connection();
    }

    /// A transaction that takes the locks a load takes without waiting (see
    /// [`TableLoader::check_writable`]).
    async fn probe(&mut self) -> Result<(), LoadError> {
        self.check_writable().await
    }
}
