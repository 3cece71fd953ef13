//! The sink: connecting (with TLS where asked), the bookkeeping schema and its migrations, the
//! readiness check of the analysts' table, a mapped table evolved in place, the loader that
//! commits each batch in one transaction, and the quarantine queries behind the `rejects`
//! commands.

pub mod aggregates;
pub mod attempts;
pub mod connect;
pub mod evolve;
pub mod failure;
pub mod inspect;
pub mod keyed;
pub mod ledger;
pub mod loader;
pub mod mask_record;
mod migrations;
pub mod quarantine;
pub mod rekey;
pub mod schema;

pub use connect::{connect, ConnectError, Database};
pub use failure::{classify, ErrorClass};
pub use loader::{LedgeredRows, LoadError, TableLoader};
pub use schema::{check_ready, check_ready_schema, check_shape, setup, TableName};

/// A PostgreSQL error as one line for logs and messages: the server's message and SQLSTATE, or
/// the client-side cause chain (`tokio_postgres::Error` alone displays only "db error"). The
/// server's DETAIL is left out on purpose: it can quote row values ("Failing row contains ...").
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
