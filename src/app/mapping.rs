//! `sqs2pg mapping check`, `mapping draft` and `mapping preview`: a mapping file checked,
//! drafted from sample bodies, and tried on them, offline (no SQS, no PostgreSQL); and what a
//! run, `setup` and `check` take from a mapping: its table's shape and its masks' record.

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{json, Value as Json};

use super::AppError;
use crate::login::MaskKey;
use crate::mapping::{Mapper, Mapping, Message};

/// The columns a run writes: the mapping's (a required one is created NOT NULL), or the
/// analysts' login table when there is no mapping.
pub fn shape(mapping: Option<&Mapping>) -> crate::postgres::schema::TableShape {
    use crate::postgres::schema::{ShapeColumn, TableShape};
    match mapping {
        None => TableShape::login(),
        Some(m) => TableShape {
            columns: m
                .columns
                .iter()
                .map(|c| ShapeColumn {
                    name: c.name.clone(),
                    catalog_type: c.column_type.catalog_name(),
                    not_null: c.required,
                })
                .collect(),
        },
    }
}

/// How a mapping masks, as `sqs2pg.mask_keys` records it until masks are recorded per column:
/// `column:mode` for each column that makes tokens, so a run that changes a column's mode
/// warns like a login run that changes `--ip-mask`.
pub fn mask_record(mapping: &Mapping) -> String {
    mapping
        .columns
        .iter()
        .filter_map(|c| match c.mask {
            Some(crate::mapping::file::Mask::Token(mode)) => Some(format!("{}:{mode}", c.name)),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads and checks a mapping file.
pub fn load_mapping(path: &Path) -> Result<Mapping, AppError> {
    let text = std::fs::read_to_string(path).map_err(|error| AppError::File {
        path: path.display().to_string(),
        error,
    })?;
    Mapping::parse(&text).map_err(|e| {
        AppError::Config(crate::config::ConfigError(format!(
            "mapping {}: {e}",
            path.display()
        )))
    })
}

/// What a preview saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Preview {
    pub messages: u64,
    pub rows: u64,
    pub rejected: u64,
}

/// Maps every non-blank line of `bodies` as one message and writes, per line, a JSON object:
/// `{"line": N, "row": {column: value, ...}}` for each row (values as PostgreSQL's text input
/// takes them, masked columns as their tokens, NULL as null), or `{"line": N, "rejected":
/// reason, "detail": ...}`. SQS's attributes are stand-ins: message id `preview-N`, sent now,
/// received once, no group, no message attributes.
pub fn preview(
    mapping: &Mapping,
    key: &MaskKey,
    bodies: &Path,
    out: &mut impl Write,
) -> Result<Preview, AppError> {
    let file_error = |error| AppError::File {
        path: bodies.display().to_string(),
        error,
    };
    let file = std::fs::File::open(bodies).map_err(file_error)?;
    let mapper = Mapper::new(mapping.clone(), key);
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let mut seen = Preview::default();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(file_error)?;
        if line.trim().is_empty() {
            continue;
        }
        seen.messages += 1;
        let id = format!("preview-{}", i + 1);
        let message = Message::new(&line, &id, now_ms);
        let printed = match mapper.apply(&message) {
            Ok(rows) => {
                seen.rows += rows.len() as u64;
                rows.iter()
                    .map(|row| {
                        // By hand, to keep the columns in the mapping's order.
                        let values: Vec<String> = mapping
                            .columns
                            .iter()
                            .zip(row.values())
                            .map(|(c, v)| {
                                format!(
                                    "{}:{}",
                                    Json::from(c.name.as_str()),
                                    v.to_text().map_or(Json::Null, Json::from)
                                )
                            })
                            .collect();
                        format!("{{\"line\":{},\"row\":{{{}}}}}", i + 1, values.join(","))
                    })
                    .collect::<Vec<_>>()
            }
            Err(rejection) => {
                seen.rejected += 1;
                vec![json!({"line": i + 1, "rejected": rejection.reason, "detail": rejection.detail})
                    .to_string()]
            }
        };
        for object in printed {
            match writeln!(out, "{object}") {
                Ok(()) => {}
                // The reader has seen enough (`| head`).
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(seen),
                Err(error) => {
                    return Err(AppError::File {
                        path: "standard output".into(),
                        error,
                    })
                }
            }
        }
    }
    Ok(seen)
}

/// Drafts a mapping for `table` from the bodies in `path` (one per line).
pub fn draft_mapping(path: &Path, table: &str) -> Result<String, AppError> {
    let text = std::fs::read_to_string(path).map_err(|error| AppError::File {
        path: path.display().to_string(),
        error,
    })?;
    crate::mapping::draft::draft(table, text.lines().filter(|l| !l.trim().is_empty())).map_err(
        |e| {
            AppError::Config(crate::config::ConfigError(format!(
                "mapping draft from {}: {e}",
                path.display()
            )))
        },
    )
}

/// Writes `text` to a file that must not exist yet.
pub fn write_new_file(path: &Path, text: &str) -> Result<(), AppError> {
    let file_error = |error| AppError::File {
        path: path.display().to_string(),
        error,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(file_error)?;
    file.write_all(text.as_bytes()).map_err(file_error)
}
