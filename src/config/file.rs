//! The optional configuration file (`--config FILE` or `SQS2PG_CONFIG`): one TOML tree whose
//! keys are the command-line settings, grouped. Its values become the defaults of the matching
//! flags, so the precedence is the usual one: a flag beats its environment variable, which
//! beats the file, which beats the built-in default. Unknown keys and ill-typed values are
//! errors that name the key. `examples/sqs2pg.example.toml` documents every key.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// Where the file's path can come from besides `--config`.
pub const CONFIG_ENV: &str = "SQS2PG_CONFIG";

/// The file, as written. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    #[serde(default)]
    sqs: SqsSection,
    #[serde(default)]
    database: DatabaseSection,
    #[serde(default)]
    masking: MaskingSection,
    #[serde(default)]
    pipeline: PipelineSection,
    #[serde(default)]
    telemetry: TelemetrySection,
    #[serde(default)]
    mapping: MappingSection,
}

/// `[mapping] file = "orders.toml"`: the mapping is its own file, so `sqs2pg mapping check`
/// and `preview` work on exactly what runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingSection {
    file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqsSection {
    queue_url: Option<String>,
    endpoint_url: Option<String>,
    protocol: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    url: Option<String>,
    table: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskingSection {
    /// The key itself never goes in this file: only the path of a file holding it.
    key_file: Option<PathBuf>,
    /// Or the path of a key ring file (`sqs2pg keygen --ring`).
    key_ring: Option<PathBuf>,
    ip_mask: Option<String>,
    device_id_mask: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineSection {
    receivers: Option<u64>,
    loaders: Option<u64>,
    wait_time_secs: Option<u64>,
    visibility_timeout_secs: Option<u64>,
    batch_max_rows: Option<u64>,
    batch_max_age_ms: Option<u64>,
    max_body_bytes: Option<u64>,
    max_in_flight_bytes: Option<u64>,
    max_in_flight_messages: Option<u64>,
    max_attempts: Option<u64>,
    max_receive_count: Option<u64>,
    ledger_retention_days: Option<u64>,
    shutdown_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetrySection {
    metrics_addr: Option<String>,
    log_format: Option<String>,
}

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
        toml::from_str(text).map_err(|e| crate::toml_error::describe(text, &e))
    }

    /// The file's values by the id of the command-line setting they stand for.
    pub fn defaults(&self) -> Vec<(&'static str, OsString)> {
        let mut out: Vec<(&'static str, OsString)> = Vec::new();
        let mut text = |id: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                out.push((id, v.into()));
            }
        };
        text("queue_url", &self.sqs.queue_url);
        text("endpoint_url", &self.sqs.endpoint_url);
        text("sqs_protocol", &self.sqs.protocol);
        text("database_url", &self.database.url);
        text("table", &self.database.table);
        text("metrics_addr", &self.telemetry.metrics_addr);
        text("log_format", &self.telemetry.log_format);
        text("ip_mask", &self.masking.ip_mask);
        text("device_id_mask", &self.masking.device_id_mask);
        if let Some(path) = &self.masking.key_file {
            out.push(("mask_key_file", path.into()));
        }
        if let Some(path) = &self.masking.key_ring {
            out.push(("mask_key_ring", path.into()));
        }
        if let Some(path) = &self.mapping.file {
            out.push(("mapping", path.into()));
        }
        let p = &self.pipeline;
        for (id, v) in [
            ("receivers", p.receivers),
            ("loaders", p.loaders),
            ("wait_time_secs", p.wait_time_secs),
            ("visibility_timeout_secs", p.visibility_timeout_secs),
            ("batch_max_rows", p.batch_max_rows),
            ("batch_max_age_ms", p.batch_max_age_ms),
            ("max_body_bytes", p.max_body_bytes),
            ("max_in_flight_bytes", p.max_in_flight_bytes),
            ("max_in_flight_messages", p.max_in_flight_messages),
            ("max_attempts", p.max_attempts),
            ("max_receive_count", p.max_receive_count),
            ("ledger_retention_days", p.ledger_retention_days),
            ("shutdown_timeout_secs", p.shutdown_timeout_secs),
        ] {
            if let Some(v) = v {
                out.push((id, v.to_string().into()));
            }
        }
        out
    }
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
/// shows. The database password and the masking key are never printed.
pub fn effective(args: &super::args::PipelineArgs) -> String {
    use std::fmt::Write as _;
    // A JSON string is a valid TOML basic string (same escapes, \uXXXX included).
    let quoted = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let mut out = String::new();
    let setting = |out: &mut String, name: &str, v: Option<&str>| {
        let _ = match v {
            Some(v) => writeln!(out, "{name} = {}", quoted(v)),
            None => writeln!(out, "# {name} (not set)"),
        };
    };
    let q = &args.queue;
    let _ = writeln!(out, "[sqs]");
    setting(&mut out, "queue_url", q.queue_url.as_deref());
    setting(&mut out, "endpoint_url", q.endpoint_url.as_deref());
    setting(&mut out, "protocol", Some(&q.sqs_protocol.to_string()));
    let _ = writeln!(out, "\n[database]");
    let url = args.database.database_url.as_deref().map(redact_password);
    setting(&mut out, "url", url.as_deref());
    setting(&mut out, "table", Some(&args.database.table));
    let _ = writeln!(out, "\n[masking]");
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    setting(
        &mut out,
        "key_file",
        path(&args.key.mask_key_file).as_deref(),
    );
    setting(
        &mut out,
        "key_ring",
        path(&args.key.mask_key_ring).as_deref(),
    );
    if args
        .key
        .mask_key
        .as_ref()
        .is_some_and(|k| !k.expose().is_empty())
    {
        let _ = writeln!(out, "# the key itself is set in SQS2PG_MASK_KEY (hidden)");
    }
    setting(&mut out, "ip_mask", Some(&args.ip_mask.to_string()));
    setting(
        &mut out,
        "device_id_mask",
        Some(&args.device_id_mask.to_string()),
    );
    let _ = writeln!(out, "\n[mapping]");
    setting(&mut out, "file", path(&args.database.mapping).as_deref());
    let _ = writeln!(out, "\n[pipeline]");
    for (name, value) in [
        ("receivers", Some(args.receivers as u64)),
        ("loaders", Some(args.loaders as u64)),
        ("wait_time_secs", Some(args.wait_time_secs)),
        ("visibility_timeout_secs", args.visibility_timeout_secs),
        ("batch_max_rows", Some(args.batch_max_rows as u64)),
        ("batch_max_age_ms", Some(args.batch_max_age_ms)),
        ("max_body_bytes", Some(args.max_body_bytes as u64)),
        ("max_in_flight_bytes", Some(args.max_in_flight_bytes as u64)),
        (
            "max_in_flight_messages",
            Some(args.max_in_flight_messages as u64),
        ),
        ("max_attempts", Some(u64::from(args.max_attempts))),
        ("max_receive_count", Some(u64::from(args.max_receive_count))),
        ("ledger_retention_days", Some(args.ledger_retention_days)),
        ("shutdown_timeout_secs", Some(args.shutdown_timeout_secs)),
    ] {
        match value {
            Some(v) => {
                let _ = writeln!(out, "{name} = {v}");
            }
            None => {
                let _ = writeln!(out, "# {name} (not set)");
            }
        }
    }
    let _ = writeln!(out, "\n[telemetry]");
    setting(&mut out, "metrics_addr", args.metrics_addr.as_deref());
    out
}

/// A libpq URL with its password replaced by `****` (in the user-info part and in a
/// `password=` parameter).
fn redact_password(url: &str) -> String {
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
