//! How a mapping's rows reach its table (`write`) and which messages delete (`delete`): the
//! checked form of the two keys, what the loader needs to resolve a batch by key.
//!
//! ```toml
//! write = { mode = "latest", key = ["user_id"], version = "version" }
//! delete = { field = "/type", equals = "user.deleted" }
//! ```
//!
//! - `append` (the default): every row is inserted;
//! - `ignore`: the first row for a key stays, a later one is counted as `duplicate_key`;
//! - `upsert`: the last row processed for a key replaces it whole; a row identical to the
//!   key's current row (a producer's resend, a dead-letter redrive of that row; the delivery's
//!   own SQS and envelope ids and times are not compared) is counted as `duplicate_key` and
//!   changes nothing; an older state sent again after a newer one replaces it (deletes are
//!   always applied);
//! - `latest`: the row with the greatest `version` wins, equal versions broken by
//!   SentTimestamp, then message id; a loser is counted as `stale`.
//!
//! `delete` (for `upsert` and `latest`) names the documents that remove their key's row; only
//! the key (and, under `latest`, the version) columns are read from them, and they are the
//! mapping's whatever its `match` says. At equal versions under `latest` a delete wins.

use serde::Deserialize;

use super::column::ColumnType;
use super::file::{Column, Mask, Match};

pub use crate::kind::WriteMode as Mode;

/// A checked `write` (and `delete`): the mode, the key's columns and the version's, by index
/// into the mapping's columns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Write {
    pub mode: Mode,
    /// The key's columns, in the order `key` lists them (empty under `append`).
    pub key: Vec<usize>,
    /// The version column (under `latest` only).
    pub version: Option<usize>,
    /// Which documents delete their key's row (`upsert` and `latest` only).
    pub delete: Option<Match>,
}

impl Write {
    /// Whether rows go through the keyed path (every mode but `append`).
    pub fn keyed(&self) -> bool {
        self.mode != Mode::Append
    }
}

/// `write` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWrite {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    key: Vec<String>,
    version: Option<String>,
}

impl RawWrite {
    /// Checks it against the mapping's columns (and marks its key and version columns
    /// required: a row without its key has no place in a keyed table).
    pub(super) fn check(
        raw: Option<RawWrite>,
        delete: Option<Match>,
        columns: &mut [Column],
    ) -> Result<Write, String> {
        let raw = raw.unwrap_or(RawWrite {
            mode: Mode::Append,
            key: Vec::new(),
            version: None,
        });
        let mode = raw.mode;
        let find = |name: &str, what: &str| {
            columns.iter().position(|c| c.name == name).ok_or_else(|| {
                format!("key `write`: `{name}` ({what}) is not a column of this mapping")
            })
        };
        let key = raw
            .key
            .iter()
            .map(|k| find(k, "in `key`"))
            .collect::<Result<Vec<_>, _>>()?;
        let version = raw
            .version
            .as_deref()
            .map(|v| find(v, "`version`"))
            .transpose()?;
        match mode {
            Mode::Append if !key.is_empty() || version.is_some() => {
                return Err("key `write`: `append` takes no `key` or `version`; set `mode = \"ignore\"`, \"upsert\" or \"latest\" to write by key".into());
            }
            Mode::Append => {}
            _ if key.is_empty() => {
                return Err(format!(
                    "key `write`: `{}` needs `key`, the columns that name a row (`key = [\"id\"]`)",
                    mode.as_str()
                ));
            }
            Mode::Latest if version.is_none() => {
                return Err("key `write`: `latest` needs `version`, the column whose greatest value wins (`version = \"version\"`)".into());
            }
            Mode::Ignore | Mode::Upsert if version.is_some() => {
                return Err(format!(
                    "key `write`: `{}` takes no `version`; use `mode = \"latest\"` for the greatest version to win",
                    mode.as_str()
                ));
            }
            _ => {}
        }
        if delete.is_some() && !matches!(mode, Mode::Upsert | Mode::Latest) {
            return Err(format!(
                "key `delete`: deletes apply to `upsert` and `latest` tables; this mapping's write mode is `{}`",
                mode.as_str()
            ));
        }
        if mode != Mode::Append {
            // The staging table's and the resolving statement's own columns.
            const INTERNAL: [&str; 10] = [
                "_deleted",
                "_sent_ms",
                "_message_id",
                "_ord",
                "_k",
                "_v",
                "_digest",
                "_prev",
                "_first",
                "_last",
            ];
            if let Some(c) = columns.iter().find(|c| INTERNAL.contains(&c.name.as_str())) {
                return Err(format!(
                    "column `{}`: under a keyed write mode the names {} are sqs2pg's own; rename the column",
                    c.name,
                    INTERNAL.join(", ")
                ));
            }
        }
        let mut seen = Vec::new();
        for &i in &key {
            if seen.contains(&i) {
                return Err(format!(
                    "key `write`: `{}` is in `key` twice",
                    columns[i].name
                ));
            }
            seen.push(i);
            let column = &columns[i];
            if column.mask == Some(Mask::Redact) {
                return Err(format!(
                    "key `write`: key column `{}` is redacted (always NULL), so it names no row; key on another column or mask it with hmac",
                    column.name
                ));
            }
            if matches!(
                column.column_type,
                ColumnType::Real | ColumnType::Double | ColumnType::Jsonb | ColumnType::TextArray
            ) {
                return Err(format!(
                    "key `write`: key column `{}` is {}, which does not name a row reliably; key on text, integer, numeric, uuid, date or timestamp columns",
                    column.name, column.column_type
                ));
            }
        }
        if let Some(v) = version {
            let column = &columns[v];
            if !matches!(
                column.column_type,
                ColumnType::SmallInt
                    | ColumnType::Integer
                    | ColumnType::BigInt
                    | ColumnType::Numeric(_)
                    | ColumnType::Date
                    | ColumnType::Timestamp
                    | ColumnType::Timestamptz
            ) || column.mask.is_some()
            {
                return Err(format!(
                    "key `write`: version column `{}` must be an unmasked integer, numeric, date or timestamp (an ordered type); it is {}{}",
                    column.name,
                    column.column_type,
                    if column.mask.is_some() { ", masked" } else { "" }
                ));
            }
            if key.contains(&v) {
                return Err(format!(
                    "key `write`: `{}` is both the key and the version",
                    column.name
                ));
            }
        }
        for &i in key.iter().chain(&version) {
            if columns[i].nullable {
                return Err(format!(
                    "key `write`: `{}` is nullable, and a key or version needs a value in \
                     every message; remove its `nullable`",
                    columns[i].name
                ));
            }
            columns[i].required = true;
        }
        Ok(Write {
            mode,
            key,
            version,
            delete,
        })
    }
}

impl super::Mapping {
    /// How the loader writes this mapping's rows (see [`crate::kind::TableWrite`]).
    pub fn table_write(&self) -> crate::kind::TableWrite {
        use crate::kind::VersionOrder;
        let name = |i: usize| self.columns[i].name.clone();
        crate::kind::TableWrite {
            columns: self.columns.iter().map(|c| c.name.clone()).collect(),
            compared: self
                .columns
                .iter()
                .filter(|c| !c.source.of_the_delivery())
                .map(|c| c.name.clone())
                .collect(),
            mode: self.write.mode,
            key: self
                .write
                .key
                .iter()
                .map(|&i| {
                    (
                        name(i),
                        matches!(self.columns[i].column_type, ColumnType::Numeric(_)),
                    )
                })
                .collect(),
            version: self.write.version.map(|i| {
                let order = match self.columns[i].column_type {
                    ColumnType::Date => VersionOrder::Date,
                    ColumnType::Timestamp | ColumnType::Timestamptz => VersionOrder::Timestamp,
                    _ => VersionOrder::Number,
                };
                (name(i), order)
            }),
        }
    }
}
