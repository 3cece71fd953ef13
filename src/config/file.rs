//! The optional configuration file (`--config FILE` or `SQS2PG_CONFIG`): one TOML tree whose
//! keys are the command-line settings, grouped. Its values become the defaults of the matching
//! flags, so the precedence is the usual one: a flag beats its environment variable, which
//! beats the file, which beats the built-in default. Unknown keys and ill-typed values are
//! errors that name the key. `examples/sqs2pg.example.toml` documents every key.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::setting::{FileKind, FileSetting, FileText};
use super::ConfigError;

/// Where the file's path can come from besides `--config`.
pub const CONFIG_ENV: &str = "SQS2PG_CONFIG";

/// The file's values, by the id of the command-line setting each stands for. Every key is
/// optional; which keys exist, in which section, and of which kind comes from the settings'
/// declarations ([`super::args::file_keys`]).
#[derive(Debug, Default)]
pub struct FileSettings {
    values: Vec<(&'static str, OsString)>,
}

/// The file as TOML: sections of keys, each value with where it stands in the text.
type Sections = BTreeMap<String, BTreeMap<String, toml::Spanned<toml::Value>>>;

impl FileSettings {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "--config ({CONFIG_ENV}) {} cannot be read: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text)
            .map_err(|e| ConfigError(format!("--config ({CONFIG_ENV}) {}: {e}", path.display())))
    }

    /// Parses file content; the error names the line and the key, never a value (toml's own
    /// rendering quotes the offending line, which can hold a password).
    pub fn parse(text: &str) -> Result<Self, String> {
        let sections: Sections =
            toml::from_str(text).map_err(|e| crate::toml_error::describe(text, &e))?;
        let line = |span: std::ops::Range<usize>| {
            text[..span.start.min(text.len())].matches('\n').count() + 1
        };
        let mut values = Vec::new();
        for (section, keys) in &sections {
            if !super::args::file_keys().any(|k| k.section == section) {
                return Err(format!(
                    "unknown section [{section}]; the sections are {}",
                    known_sections().join(", ")
                ));
            }
            for (key, value) in keys {
                let at = line(value.span());
                let Some(known) =
                    super::args::file_keys().find(|k| k.section == section && k.key == key)
                else {
                    return Err(format!(
                        "line {at}: unknown key `{key}` in [{section}]; its keys are {}",
                        super::args::file_keys()
                            .filter(|k| k.section == section)
                            .map(|k| k.key)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                };
                let text = match (known.kind, value.get_ref()) {
                    (FileKind::Text, toml::Value::String(v)) => v.clone(),
                    (FileKind::Count, toml::Value::Integer(n)) if *n >= 0 => n.to_string(),
                    (FileKind::Flag, toml::Value::Boolean(b)) => b.to_string(),
                    (FileKind::List, toml::Value::String(v)) => v.clone(),
                    (FileKind::List, toml::Value::Array(items))
                        if !items.is_empty() && items.iter().all(toml::Value::is_str) =>
                    {
                        items
                            .iter()
                            .filter_map(toml::Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    }
                    (kind, _) => {
                        let expected = match kind {
                            FileKind::Text => "a string (in quotes)",
                            FileKind::Count => "a whole number, 0 or more",
                            FileKind::Flag => "true or false",
                            FileKind::List => "a string or a list of strings",
                        };
                        return Err(format!(
                            "line {at}, key `{key}` in [{section}]: expected {expected}"
                        ));
                    }
                };
                values.push((known.id, text.into()));
            }
        }
        Ok(Self { values })
    }

    /// The file's values by the id of the command-line setting they stand for.
    pub fn defaults(&self) -> Vec<(&'static str, OsString)> {
        self.values.clone()
    }
}

/// The sections the file can have, in the order `config print` shows them (within one, the
/// keys come in the order they are declared, which is also `--help`'s).
fn known_sections() -> Vec<&'static str> {
    const ORDER: [&str; 6] = [
        "sqs",
        "database",
        "masking",
        "mapping",
        "pipeline",
        "telemetry",
    ];
    let mut sections: Vec<&'static str> = ORDER.to_vec();
    for key in super::args::file_keys() {
        if !sections.contains(&key.section) {
            sections.push(key.section);
        }
    }
    sections
}

/// The `--config` path from the raw arguments (`--config F` or `--config=F`), else
/// [`CONFIG_ENV`]. Read before clap parses, because the file supplies clap's defaults.
pub fn path_from(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(CONFIG_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Makes the file's values the defaults of the matching arguments, in every subcommand. A
/// secret setting (one whose environment value is hidden, such as `DATABASE_URL`, which can hold
/// a password) gets its default hidden too, so `--help` never shows what the file holds.
pub fn apply(mut command: clap::Command, defaults: &[(&'static str, OsString)]) -> clap::Command {
    for (id, value) in defaults {
        if command.get_arguments().any(|a| a.get_id() == *id) {
            let value: &'static std::ffi::OsStr = Box::leak(value.clone().into_boxed_os_str());
            command = command.mut_arg(*id, |a| {
                let secret = a.is_hide_env_values_set();
                a.default_value(value).hide_default_value(secret)
            });
        }
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| apply(sub, defaults));
    }
    command
}

/// The effective settings of a run as TOML, in the file's shape: what `sqs2pg config print`
/// shows, every setting the file can hold for a run from its declaration. The database
/// password and the masking key are never printed.
pub fn effective(args: &super::args::PipelineArgs) -> String {
    use std::fmt::Write as _;
    let settings: Vec<FileSetting> = [
        args.queue.file_settings(),
        args.database.connection.file_settings(),
        args.database.file_settings(),
        args.database.mapping_file.file_settings(),
        args.key.file_settings(),
        args.ip.file_settings(),
        args.file_settings(),
    ]
    .concat();
    let key_in_environment = args
        .key
        .mask_key
        .as_ref()
        .is_some_and(|k| !k.expose().is_empty());
    let mut out = String::new();
    let mut first = true;
    for section in known_sections() {
        let here: Vec<&FileSetting> = settings
            .iter()
            .filter(|s| s.key.section == section)
            .collect();
        if here.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}[{section}]", if first { "" } else { "\n" });
        first = false;
        for setting in here {
            let name = setting.key.key;
            let _ = match &setting.value {
                // A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
                Some(FileText::Quoted(v)) => writeln!(
                    out,
                    "{name} = {}",
                    serde_json::to_string(v).unwrap_or_default()
                ),
                Some(FileText::Bare(v)) => writeln!(out, "{name} = {v}"),
                None => writeln!(out, "# {name} (not set)"),
            };
            if setting.key.id == "mask_key_ring" && key_in_environment {
                let _ = writeln!(out, "# the key itself is set in SQS2PG_MASK_KEY (hidden)");
            }
        }
    }
    out
}

/// A libpq URL with its password replaced by `****` (in the user-info part and in a
/// `password=` parameter).
pub fn redact_password(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "****");
            }
        }
    }
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=****"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/sqs2pg.example.toml");

    #[test]
    fn the_example_file_parses_and_sets_every_key() {
        let file = FileSettings::parse(EXAMPLE).unwrap();
        let ids: Vec<&str> = file.defaults().iter().map(|(id, _)| *id).collect();
        for id in [
            "queue_url",
            "endpoint_url",
            "sqs_protocol",
            "database_url",
            "table",
            "mask_key_file",
            "receivers",
            "loaders",
            "wait_time_secs",
            "visibility_timeout_secs",
            "batch_max_rows",
            "batch_max_age_ms",
            "max_body_bytes",
            "max_in_flight_bytes",
            "max_in_flight_messages",
            "max_attempts",
            "max_receive_count",
            "max_crashes",
            "ledger_retention_days",
            "shutdown_timeout_secs",
            "metrics_addr",
            "log_format",
            "ip_mask",
            "device_id_mask",
        ] {
            assert!(ids.contains(&id), "the example does not set {id}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = FileSettings::parse("[pipeline]\nrecievers = 4\n").unwrap_err();
        assert!(e.contains("recievers"), "{e}");
        let e = FileSettings::parse("[pipeline]\nreceivers = \"four\"\n").unwrap_err();
        assert!(e.contains("receivers") && e.contains("line 2"), "{e}");
        let e = FileSettings::parse("[masking]\nkey = \"secret\"\n").unwrap_err();
        assert!(e.contains("key"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        // A malformed line holding a password: named, not quoted.
        for text in [
            "[database]\nurl = \"postgres://app:hunter22@db/x\n",
            "[database]\nurl = postgres://app:hunter22@db/x\n",
            "[database]\npassword = \"hunter22\"\n",
            "[pipeline]\nreceivers = \"hunter22\"\n",
        ] {
            let e = FileSettings::parse(text).unwrap_err();
            assert!(!e.contains("hunter22"), "{e}");
            assert!(e.contains("line 2"), "{e}");
        }
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact_password("postgres://u:s3cret@h:5432/db?sslmode=require"),
            "postgres://u:****@h:5432/db?sslmode=require"
        );
        assert_eq!(
            redact_password("postgres://u@h/db?password=s3cret&sslmode=disable"),
            "postgres://u@h/db?password=****&sslmode=disable"
        );
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn the_path_comes_from_the_flag_first() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            path_from(&args(&["sqs2pg", "drain", "--config", "a.toml"])),
            Some(PathBuf::from("a.toml"))
        );
        assert_eq!(
            path_from(&args(&["sqs2pg", "--config=b.toml", "run"])),
            Some(PathBuf::from("b.toml"))
        );
    }
}
