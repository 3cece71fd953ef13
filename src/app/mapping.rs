//! `sqs2pg mapping check`, `mapping draft` and `mapping preview`: a mapping file checked,
//! drafted from sample bodies, and tried on them, offline (no SQS, no PostgreSQL); and what the
//! key commands take from mappings (the masks' record, `unmask`'s columns).

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{json, Value as Json};

use super::AppError;
use crate::keys::MaskKey;
use crate::mapping::{Mapper, Mapping, Message};

/// The run record of `sqs2pg.mask_keys` (its `ip_mode` and `device_id_mode`) for these token
/// columns: the login pair's modes when they are exactly the login table's two columns under
/// their scopes (the built-in pipeline and `login.toml` record alike, so switching between them
/// does not warn); otherwise `mapping` and `column:mode` for each, so a change of any column's
/// mode warns like a login run that changes `--ip-mask`.
pub fn mask_record(columns: &[crate::postgres::schema::MaskedColumn]) -> (String, String) {
    let mode = |name: &str, scope: &str| {
        columns
            .iter()
            .find(|c| c.column == name && c.scope == scope)
            .map(|c| c.mode.clone())
    };
    match (
        mode("masked_ip", "ip"),
        mode("masked_device_id", "device_id"),
    ) {
        (Some(ip), Some(device)) if columns.len() == 2 => (ip, device),
        _ => (
            "mapping".to_owned(),
            columns
                .iter()
                .map(|c| format!("{}:{}", c.column, c.mode))
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

/// A column name two mappings mask differently (another mode or scope): `unmask` could not
/// tell which a query's column is.
pub fn ambiguous_token_column(mappings: &[Mapping]) -> Option<String> {
    let mut seen: Vec<(&str, &Option<crate::mapping::file::Mask>, &str)> = Vec::new();
    for c in mappings.iter().flat_map(|m| &m.columns) {
        if c.mask.is_none() {
            continue;
        }
        match seen.iter().find(|(name, _, _)| *name == c.name) {
            Some((_, mask, scope)) if *mask != &c.mask || *scope != c.mask_scope => {
                return Some(c.name.clone())
            }
            Some(_) => {}
            None => seen.push((&c.name, &c.mask, &c.mask_scope)),
        }
    }
    None
}

/// Recovers the values behind a mapping's reversible token columns (`siv`, `ipcrypt`,
/// `ipcrypt-pfx`) for `sqs2pg unmask --query --mapping`, under every key of a ring: a `siv`
/// token names its key; addresses (the ipcrypt modes) carry none and are decrypted under one
/// key. A cell of any other column, an `hmac` token, or a token that does not open is shown as
/// it is.
pub struct MappedUnmasker {
    /// Per reversible token column: its name, its mask under each key, and whether its values
    /// are addresses.
    columns: Vec<(String, Vec<crate::mask::ColumnMask>, bool)>,
    /// Which key of each column's masks decrypts addresses.
    address_key: usize,
}

impl MappedUnmasker {
    /// `None` if the ring has no key `address_key` (the ring's active key when not given).
    /// With several mappings, a column is unmasked as the first mapping that names it masks
    /// it (`unmask` refuses mappings that mask one name two ways).
    pub fn new(
        mappings: &[Mapping],
        ring: &crate::keys::KeyRing,
        address_key: Option<&str>,
    ) -> Option<Self> {
        use crate::mapping::column::ColumnType;
        use crate::mapping::file::{Convert, Mask};
        use crate::mask::{ColumnMask, MaskMode};
        let wanted = address_key.unwrap_or(ring.active_id());
        let address_key = ring.keys().iter().position(|k| k.key.key_id() == wanted)?;
        let columns = mappings
            .iter()
            .flat_map(|m| &m.columns)
            .filter_map(|c| match c.mask {
                Some(Mask::Token(mode)) if mode != MaskMode::Hmac => Some((
                    c.name.clone(),
                    ring.keys()
                        .iter()
                        .map(|k| ColumnMask::new(&k.key, mode, &c.mask_scope))
                        .collect(),
                    c.convert == Some(Convert::Ip) || c.column_type == ColumnType::Inet,
                )),
                _ => None,
            })
            .collect();
        Some(Self {
            columns,
            address_key,
        })
    }

    /// True when the mapping has no reversible token column.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// One cell of a query's result.
    pub fn cell(&self, column: &str, value: String) -> String {
        let Some((_, masks, ip)) = self.columns.iter().find(|(name, _, _)| name == column) else {
            return value;
        };
        let opened = if value.trim().parse::<std::net::IpAddr>().is_ok() {
            masks[self.address_key].unmask(&value, *ip).ok()
        } else {
            masks.iter().find_map(|m| m.unmask(&value, *ip).ok())
        };
        opened.unwrap_or(value)
    }
}

/// Reads and checks a mapping file.
pub fn load_mapping(path: &Path) -> Result<Mapping, AppError> {
    let text = std::fs::read_to_string(path).map_err(|error| AppError::File {
        path: path.display().to_string(),
        error,
    })?;
    crate::mapping::parse(&text).map_err(|e| {
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
    mappings: &[Mapping],
    key: &MaskKey,
    bodies: &Path,
    out: &mut impl Write,
) -> Result<Preview, AppError> {
    let file_error = |error| AppError::File {
        path: bodies.display().to_string(),
        error,
    };
    let file = std::fs::File::open(bodies).map_err(file_error)?;
    // One mapping runs as its mapper, several through the router, as a run does.
    let (mapper, router) = match mappings {
        [one] => (Some(Mapper::new(one.clone(), key)), None),
        _ => (
            None,
            Some(
                crate::mapping::Router::new(mappings.to_vec(), key)
                    .map_err(|e| AppError::Config(crate::config::ConfigError(e.to_string())))?,
            ),
        ),
    };
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
        let applied = match (&mapper, &router) {
            (Some(mapper), _) => mapper.apply(&message).map(|rows| vec![(0, rows)]),
            (None, Some(router)) => router.apply(&message),
            (None, None) => unreachable!("a mapper or a router"),
        };
        let printed = match applied {
            Ok(taken) => {
                let mut lines = Vec::new();
                for (index, rows) in taken {
                    let mapping = &mappings[index];
                    seen.rows += rows.len() as u64;
                    // With several mappings, each row names its table.
                    let table = if mappings.len() > 1 {
                        format!("\"table\":{},", Json::from(mapping.table.as_str()))
                    } else {
                        String::new()
                    };
                    for row in &rows {
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
                        let delete = if row.is_delete() {
                            "\"delete\":true,"
                        } else {
                            ""
                        };
                        lines.push(format!(
                            "{{\"line\":{},{table}{delete}\"row\":{{{}}}}}",
                            i + 1,
                            values.join(",")
                        ));
                    }
                }
                lines
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

/// Drafts a mapping for `table` from the JSON Schema in `path`.
pub fn draft_from_schema(path: &Path, table: &str) -> Result<String, AppError> {
    let text = std::fs::read_to_string(path).map_err(|error| AppError::File {
        path: path.display().to_string(),
        error,
    })?;
    crate::mapping::draft::schema::draft_from_schema(table, &text).map_err(|e| {
        AppError::Config(crate::config::ConfigError(format!(
            "mapping draft from the schema {}: {e}",
            path.display()
        )))
    })
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

/// `sqs2pg mapping diff`: each mapping's plan against its live table; `Differ` (exit 1) when
/// there is one, every failure as `Trouble` (exit 2).
async fn diff(args: crate::config::args::DatabaseArgs) -> Result<(), AppError> {
    let trouble = |e: AppError| AppError::Trouble(Box::new(e));
    let (database, table, mappings) =
        crate::config::target(&args).map_err(|e| trouble(e.into()))?;
    if mappings.is_empty() {
        return Err(trouble(
            crate::config::ConfigError(format!(
                "mapping diff: say which mapping(s) to compare with {}",
                crate::config::args::flag("mapping")
            ))
            .into(),
        ));
    }
    let client = database.connect().await.map_err(|e| trouble(e.into()))?;
    let mut differ = 0;
    for target in super::target::Target::of_run(&table, &mappings) {
        let (lines, notes) = super::setup::plan_lines(&client, &target)
            .await
            .map_err(trouble)?;
        if lines.is_empty() {
            println!("{}: as the mapping wants it", target.table);
        } else {
            differ += 1;
        }
        for line in lines.iter().chain(&notes) {
            println!("{line}");
        }
    }
    if differ > 0 {
        return Err(AppError::Differ(differ));
    }
    Ok(())
}

/// `sqs2pg mapping ...`, as the command line runs it (offline: no SQS, no PostgreSQL; but
/// `diff`, which reads the live tables).
pub async fn command(command: crate::cli::MappingCommand) -> Result<(), AppError> {
    match command {
        crate::cli::MappingCommand::Diff(args) => diff(args).await,
        crate::cli::MappingCommand::Check { file } => {
            let mapping = load_mapping(&file)?;
            println!(
                "{}: table {}, {} column(s), {} masked",
                file.display(),
                mapping.table,
                mapping.columns.len(),
                mapping.masked().count()
            );
            Ok(())
        }
        crate::cli::MappingCommand::Draft {
            file,
            schema,
            table,
            output,
        } => {
            let text = match (file, schema) {
                (_, Some(schema)) => draft_from_schema(&schema, &table)?,
                (Some(file), None) => draft_mapping(&file, &table)?,
                (None, None) => return Err(crate::config::ConfigError(
                    "mapping draft: give the sample bodies (--file) or a JSON Schema (--schema)"
                        .into(),
                )
                .into()),
            };
            match output {
                None => print!("{text}"),
                Some(path) => {
                    write_new_file(&path, &text)?;
                    println!("wrote {}", path.display());
                }
            }
            Ok(())
        }
        crate::cli::MappingCommand::Preview { mapping, file, key } => {
            if mapping.mapping.is_empty() {
                return Err(crate::config::ConfigError(format!(
                    "mapping preview: say which mapping(s) to try with {}",
                    crate::config::args::flag("mapping")
                ))
                .into());
            }
            let mappings: Vec<Mapping> = crate::config::mapping_files(&mapping.mapping)?
                .into_iter()
                .map(|(_, m)| m)
                .collect();
            let given = key.mask_key.is_some()
                || key.mask_key_file.is_some()
                || key.mask_key_ring.is_some();
            let key = if given {
                crate::config::key(&key)?
            } else {
                eprintln!("no key given: tokens are made under a throwaway key");
                let text = MaskKey::generate_base64().map_err(|error| AppError::File {
                    path: "the system's random source".into(),
                    error,
                })?;
                MaskKey::from_base64(&text).expect("a generated key")
            };
            let seen = preview(&mappings, &key, &file, &mut std::io::stdout().lock())?;
            eprintln!(
                "{} message(s): {} row(s), {} rejected",
                seen.messages, seen.rows, seen.rejected
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::target::Target;
    use super::*;

    #[test]
    fn the_login_mapping_records_its_masks_as_the_built_in_pipeline_does() {
        let login = Mapping::parse(include_str!("../../examples/mappings/login.toml")).unwrap();
        let modes = crate::login::MaskModes {
            ip: crate::mask::MaskMode::Hmac,
            device_id: crate::mask::MaskMode::Hmac,
        };
        let table = crate::postgres::TableName::parse("public.user_logins").unwrap();
        let built_in = Target::of_run(&table, &[])[0].masked_columns(modes);
        assert_eq!(Target::of_mapping(&login).masked_columns(modes), built_in);
        assert_eq!(mask_record(&built_in), ("hmac".into(), "hmac".into()));
        let orders =
            Mapping::parse(include_str!("../../examples/mappings/orders-sns.toml")).unwrap();
        assert_eq!(
            mask_record(&Target::of_mapping(&orders).masked_columns(modes)),
            (
                "mapping".into(),
                "email_token:hmac,client_ip:ipcrypt-pfx".into()
            )
        );
    }
}
