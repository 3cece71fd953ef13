//! Declarative mappings: any JSON message (bare, or inside an SNS, EventBridge or S3 envelope)
//! into rows of any table, with per-column types, checks and masks, from a small TOML file.
//!
//! This module owns the mapping file (`file`: its shape and its checks), the column types and
//! the conversion of JSON values to them (`column`), and the transform of one message into
//! masked rows or a rejection (`transform`, reading each message through `document`: only what
//! the mapping's pointers name, borrowed from its text), and the first draft of a mapping from sample
//! bodies (`draft`), what looks like personal data (`personal`, which the draft and the
//! transform's scan of jsonb values share), and each value's binary COPY encoding (`encode`). It is pure, like
//! `login`: no I/O, no clock, no SQS; `sqs2pg mapping check` and `sqs2pg mapping preview` run
//! it offline, and a [`Mapper`] is a message kind (`kind::MessageKind`) the pipeline runs.

pub mod column;
pub mod convert;
pub mod document;
pub mod draft;
pub mod encode;
pub mod file;
pub mod personal;
pub mod router;
pub mod transform;
pub mod write;

pub use crate::kind::{Message, Rejection};
pub use column::{ColumnType, Value};
pub use file::{Envelope, Mapping, MappingError};
pub use router::Router;
pub use transform::{MappedRow, Mapper};

/// Reads a mapping file's text: its shape and checks ([`Mapping::parse`]), and the columns
/// whose value is fixed converted once ([`Mapping::check_fixed_columns`]): what every command
/// that takes `--mapping` loads.
pub fn parse(text: &str) -> Result<Mapping, MappingError> {
    let mapping = Mapping::parse(text)?;
    mapping.check_fixed_columns()?;
    Ok(mapping)
}
