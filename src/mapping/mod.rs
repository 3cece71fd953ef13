//! Declarative mappings: any JSON message (bare, or inside an SNS, EventBridge or S3 envelope)
//! into rows of any table, with per-column types, checks and masks, from a small TOML file.
//!
//! This module owns the mapping file (`file`: its shape and its checks), the column types and
//! the conversion of JSON values to them (`column`), and the transform of one message into
//! masked rows or a rejection (`transform`), and the first draft of a mapping from sample
//! bodies (`draft`). It is pure, like `login`: no I/O, no clock, no
//! SQS or PostgreSQL types; `sqs2pg mapping check` and `sqs2pg mapping preview` run it
//! offline. Loading mapped rows (binary COPY per type, the ledger with several rows per
//! message) comes next; until then `drain` and `run` serve the built-in login pipeline.

pub mod column;
pub mod draft;
pub mod file;
pub mod transform;

pub use column::{ColumnType, Value};
pub use file::{Envelope, Mapping, MappingError};
pub use transform::{MappedRow, Mapper, Message, Rejection};
