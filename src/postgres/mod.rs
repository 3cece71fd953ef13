//! The sink: connecting (with TLS where asked), the bookkeeping schema and its migrations, the
//! readiness check of the analysts' table, and the loader that commits each batch in one
//! transaction.

pub mod connect;
pub mod loader;
pub mod schema;

pub use connect::{connect, ConnectError, Database};
pub use loader::{BatchLoader, LoadError, LoadReport, LoginLoader};
pub use schema::{check_ready, setup, TableName};
