//! Checked settings. Raw CLI/env arguments (`cli`) become these types in one step that fails
//! with a message naming the setting and the fix, before any message is touched.

pub mod args;
pub mod file;
pub mod setting;

use std::path::Path;
use std::time::Duration;

use crate::keys::{KeyError, MaskKey};
use crate::keys::{KeyRing, KeyText};
use crate::pipeline::{Mode, PipelineSettings};
use crate::postgres::{Database, TableName};
use crate::retry::RetryPolicy;
use crate::sqs::name::is_queue_name;
use crate::sqs::queue::SqsSettings;
use args::{DatabaseArgs, KeyArgs, PipelineArgs, QueueArgs};
use zeroize::Zeroizing;

/// Four receivers keep a few long polls in flight: against a nearby SQS each returns up to 10
/// messages in tens of milliseconds, and `run` drops to one while the queue is idle. Against a
/// distant region, 16 to 32 pay off (BENCHMARKS.md, run 5).
pub const DEFAULT_RECEIVERS: usize = 4;
/// Two loader connections: while one waits for PostgreSQL to claim ids and COMMIT, the other
/// writes its batch, so the database's work and ours overlap (measured in BENCHMARKS.md); more
/// than two gains little on a database with a few cores and costs a connection each.
pub const DEFAULT_LOADERS: usize = 2;
/// SQS's maximum long poll: fewest empty receives (SQS bills per request), and `drain` ends
/// after one wait this long with nothing to receive.
pub const DEFAULT_WAIT_TIME_SECS: u64 = 20;
/// Each transaction has a fixed cost (a commit, a few round trips, statement start-up); with two
/// loaders, 5,000 rows per transaction loads a deep queue about a third faster than 1,000
/// (BENCHMARKS.md, loader alone), while a batch stays small enough to retry or bisect
/// quickly. A trickle is cut by age long before this.
pub const DEFAULT_BATCH_MAX_ROWS: usize = 5_000;
/// A trickle of messages is still committed (and deleted) within half a second.
pub const DEFAULT_BATCH_MAX_AGE_MS: u64 = 500;
/// SQS's own message size limit: 1 MiB since August 2025 (256 KiB before). A valid message
/// of any size SQS accepts is loaded by default; memory stays bounded by
/// [`DEFAULT_MAX_IN_FLIGHT_BYTES`], which receiving waits for.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Three: one process death while a suspect was processed can be the machine's doing (an OOM
/// kill of a busy process, a node drained), three in a row are the message's.
pub const DEFAULT_MAX_CRASHES: u32 = 3;
/// With 100 ms initial backoff doubling to a 10 s cap, eight attempts span about half a minute:
/// long enough to ride out a database restart, short enough for `drain` to report failure.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
/// A message that keeps coming back is stopped from looping forever. The visibility heartbeat
/// keeps the messages we hold from coming back, so a receive count this high means it failed
/// (or its holder died) 25 times; generous, because a poisoned valid message costs a replay.
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 25;
/// Docker and Kubernetes send SIGKILL 30 s after SIGTERM by default; 25 s leaves time to
/// release what could not be committed (the last 5 s are kept for that) and to exit cleanly.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 25;
/// 64 MiB of bodies in flight: about 400,000 logins of 160 bytes, far more than two loaders'
/// batches of 5,000 need to keep the database busy, yet small next to any machine this runs on;
/// at the 1 MiB SQS maximum it still holds 64 bodies. A batch is also cut at half of it.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 64 << 20;
/// The window's ceiling: four batches of 5,000, two loading while two fill, about what the
/// bounded channel let a run hold before the window existed, so a deep backlog on a fast
/// database loads as fast as before (BENCHMARKS.md, run 3). A nearby SQS hands out a few
/// thousand messages a second and a batch is cut after half a second, so a fast run holds far
/// fewer; the window (see `pipeline::window`) stays lower still when the run cannot commit what
/// it holds within the visibility timeout.
pub const DEFAULT_MAX_IN_FLIGHT_MESSAGES: usize = 20_000;
/// Above the longest time SQS can still deliver a message id (14 days of retention, up to 14
/// more after a FIFO dead-letter move, plus a 12-hour visibility timeout); see
/// `postgres::ledger`.
pub const DEFAULT_LEDGER_RETENTION_DAYS: u64 = 30;
/// DeleteMessageBatch calls in flight at once, at least; a run with more receivers deletes with
/// as many calls at once as it has receivers, since each receive of 10 needs one delete of 10
/// and, against a distant SQS, a delete takes a round trip as long as a receive.
pub const DEFAULT_DELETE_CONCURRENCY: usize = 4;

/// The environment variable holding the base64 masking key itself.
pub const MASK_KEY_ENV: &str = "SQS2PG_MASK_KEY";

/// A setting that is missing or malformed; the message names it and says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl From<crate::sqs::queue::SettingsError> for ConfigError {
    fn from(e: crate::sqs::queue::SettingsError) -> Self {
        Self(e.0)
    }
}

/// Everything `drain` and `run` need, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: Database,
    pub table: TableName,
    pub sqs: SqsSettings,
    pub mask_key: MaskKey,
    /// Ledger entries older than this are pruned in the background.
    pub ledger_retention: Duration,
    pub pipeline: PipelineSettings,
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; off when unset.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Draw a live progress line on stderr (`drain` on a terminal).
    pub show_progress: bool,
    /// How each personal field is masked.
    pub mask_modes: crate::login::MaskModes,
    /// A key or mode change since the last run is on purpose.
    pub key_rotation_intended: bool,
    /// How messages become rows, one mapping per table; the built-in login pipeline when
    /// there is none.
    pub mappings: Vec<crate::mapping::Mapping>,
}

/// Database connection target and `--table`, checked, for the commands that serve the login
/// table only (`report` without a mapping) or no table (`rejects`): a mapping is not read.
pub fn database(args: &DatabaseArgs) -> Result<(Database, TableName), ConfigError> {
    connection(args)
}

/// The table `--table` names when it is not given.
pub const DEFAULT_TABLE: &str = "public.user_logins";

/// Database connection target, table and mappings, checked: the mapping files are read and
/// checked here, so a bad one stops the run before anything is touched, and the first one's
/// table is the target (a `--table` naming another one is refused rather than silently
/// overridden; with several mappings, each names its own table and `--table` is refused).
pub fn target(
    args: &DatabaseArgs,
) -> Result<(Database, TableName, Vec<crate::mapping::Mapping>), ConfigError> {
    let (database, table) = connection(args)?;
    if args.mapping_file.mapping.is_empty() {
        return Ok((database, table, Vec::new()));
    }
    let mappings = mapping_files(&args.mapping_file.mapping)?;
    let mut tables: Vec<(std::path::PathBuf, TableName)> = Vec::with_capacity(mappings.len());
    for (path, mapping) in &mappings {
        let mapped = TableName::parse(&mapping.table).map_err(|e| {
            ConfigError(format!(
                "{} {}: `table`: {e}",
                args::flag("mapping"),
                path.display()
            ))
        })?;
        if let Some((other, _)) = tables.iter().find(|(_, t)| *t == mapped) {
            return Err(ConfigError(format!(
                "{} {} and {} both write to {mapped}: give each table one mapping (one `match` takes several types: `in = [\"a\", \"b\"]`)",
                args::flag("mapping"),
                other.display(),
                path.display()
            )));
        }
        tables.push((path.clone(), mapped));
    }
    let first = tables[0].1.clone();
    if args.table != DEFAULT_TABLE
        && (tables.len() > 1 || TableName::parse(&args.table).ok().as_ref() != Some(&first))
    {
        return Err(ConfigError(format!(
            "{} names {table} but the mapping {} writes to {first}: drop --table (a mapping names its own table) or change the mapping's `table`",
            args::flag("table"),
            tables[0].0.display()
        )));
    }
    Ok((
        database,
        first,
        mappings.into_iter().map(|(_, m)| m).collect(),
    ))
}

/// Reads and checks the mapping files `--mapping` names, a directory standing for its
/// `*.toml` files in name order; each with the path it came from.
pub fn mapping_files(
    paths: &[std::path::PathBuf],
) -> Result<Vec<(std::path::PathBuf, crate::mapping::Mapping)>, ConfigError> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<std::path::PathBuf> = std::fs::read_dir(path)
                .map_err(|e| {
                    ConfigError(format!(
                        "{} {} cannot be read: {e}",
                        args::flag("mapping"),
                        path.display()
                    ))
                })?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
                .collect();
            inside.sort();
            if inside.is_empty() {
                return Err(ConfigError(format!(
                    "{} {} is a directory without mapping files (*.toml); put mappings there or name a file",
                    args::flag("mapping"),
                    path.display()
                )));
            }
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    files
        .into_iter()
        .map(|path| mapping_file(&path).map(|m| (path, m)))
        .collect()
}

/// Reads and checks one mapping file.
pub fn mapping_file(path: &std::path::Path) -> Result<crate::mapping::Mapping, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "{} {} cannot be read: {e}; give the path of a mapping file (`sqs2pg mapping draft` writes a first one)",
            args::flag("mapping"),
            path.display()
        ))
    })?;
    crate::mapping::parse(&text)
        .map_err(|e| ConfigError(format!("{} {}: {e}", args::flag("mapping"), path.display())))
}

fn connection(args: &DatabaseArgs) -> Result<(Database, TableName), ConfigError> {
    let url = args.connection.database_url.as_deref().filter(|u| !u.trim().is_empty()).ok_or_else(|| {
        ConfigError(format!(
            "{} is not set: set it to a PostgreSQL URL, e.g. postgres://user:password@localhost:5432/db",
            args::variable("database_url")
        ))
    })?;
    let database = Database::parse(url).map_err(|e| ConfigError(e.to_string()))?;
    let table = TableName::parse(&args.table).map_err(ConfigError)?;
    Ok((database, table))
}

/// Queue URL (or name), endpoint and protocol, checked.
pub fn queue(args: &QueueArgs) -> Result<SqsSettings, ConfigError> {
    let queue_url = args.queue_url.as_deref().map(str::trim).filter(|u| !u.is_empty()).ok_or_else(|| {
        ConfigError(format!(
            "{} is not set: set it to the queue's URL, e.g. http://localhost:4566/000000000000/login-queue, or to its name",
            args::variable("queue_url")
        ))
    })?;
    check_queue_url(queue_url, &args::variable("queue_url"))?;
    let is_http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    if let Some(endpoint) = args.endpoint_url.as_deref().filter(|e| !is_http(e)) {
        return Err(ConfigError(format!(
            "{} must be an http(s) URL, e.g. http://localhost:4566; got {endpoint:?}",
            args::variable("endpoint_url")
        )));
    }
    queue_rest(args, queue_url)
}

/// A queue's URL or name as `what` (a setting, or a mapping's `queue`) gives it: an http(s) URL
/// ending in the queue's name, or a valid queue name.
pub fn check_queue_url(queue_url: &str, what: &str) -> Result<(), ConfigError> {
    let is_http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    if queue_url.contains("://") {
        let has_path = queue_url
            .split_once("://")
            .and_then(|(_, rest)| rest.trim_end_matches('/').split_once('/'))
            .is_some_and(|(host, path)| !host.is_empty() && !path.is_empty());
        if !is_http(queue_url) || !has_path {
            return Err(ConfigError(format!(
                "{what} must be an http(s) URL ending in the queue name, e.g. http://localhost:4566/000000000000/login-queue, or a queue name; got {queue_url:?}"
            )));
        }
    } else if !is_queue_name(queue_url) {
        return Err(ConfigError(format!(
            "{what} {queue_url:?} is neither a URL nor a queue name (1 to 80 letters, digits, '-' or '_', optionally ending in .fifo): give the queue's URL, e.g. http://localhost:4566/000000000000/login-queue"
        )));
    }
    Ok(())
}

fn queue_rest(args: &QueueArgs, queue_url: &str) -> Result<SqsSettings, ConfigError> {
    Ok(SqsSettings {
        queue_url: queue_url.trim_end_matches('/').to_owned(),
        endpoint_url: args.endpoint_url.clone(),
        protocol: args.sqs_protocol,
    })
}

/// The key runs mask and seal with: the only key, or the ring's active key.
pub fn key(args: &KeyArgs) -> Result<MaskKey, ConfigError> {
    Ok(key_ring(args)?.active().clone())
}

/// Every key the operator gave: a ring from `SQS2PG_MASK_KEY_RING`, or a ring of the one key
/// from `SQS2PG_MASK_KEY` / `SQS2PG_MASK_KEY_FILE`. Exactly one of the three must be set.
pub fn key_ring(args: &KeyArgs) -> Result<KeyRing, ConfigError> {
    let Some(path) = &args.mask_key_ring else {
        return mask_key(
            args.mask_key.as_ref().map(KeyText::expose),
            args.mask_key_file.as_deref(),
        )
        .map(KeyRing::single);
    };
    if args
        .mask_key
        .as_ref()
        .is_some_and(|k| !k.expose().is_empty())
        || args.mask_key_file.is_some()
    {
        return Err(ConfigError(format!(
            "{} is set together with {MASK_KEY_ENV} or SQS2PG_MASK_KEY_FILE: keep only one source of keys",
            args::variable("mask_key_ring")
        )));
    }
    let shown = format!("{} {}", args::variable("mask_key_ring"), path.display());
    let text = read_key_file(path, &shown)?;
    KeyRing::parse(&text).map_err(|e| {
        ConfigError(format!(
            "{shown}: {e} (add keys with `sqs2pg keygen --ring {}`)",
            path.display()
        ))
    })
}

/// The masking key from `SQS2PG_MASK_KEY` or `--mask-key-file` / `SQS2PG_MASK_KEY_FILE`.
pub fn mask_key(from_env: Option<&str>, file: Option<&Path>) -> Result<MaskKey, ConfigError> {
    let explain = |source: &str, e: KeyError| ConfigError(format!("{source}: {e}"));
    match (from_env.filter(|k| !k.is_empty()), file) {
        (Some(_), Some(_)) => Err(ConfigError(format!(
            "both {MASK_KEY_ENV} and {} are set: keep only one",
            args::variable("mask_key_file")
        ))),
        (Some(text), None) => MaskKey::from_base64(text).map_err(|e| explain(MASK_KEY_ENV, e)),
        (None, Some(path)) => {
            let shown = path.display();
            let source = format!("{} {shown}", args::variable("mask_key_file"));
            let text = read_key_file(path, &source)?;
            MaskKey::from_base64(&text).map_err(|e| explain(&source, e))
        }
        (None, None) => Err(ConfigError(format!(
            "no masking key: set {MASK_KEY_ENV} to a base64 key of at least 32 bytes, SQS2PG_MASK_KEY_FILE to a file holding one, or SQS2PG_MASK_KEY_RING to a key ring; make one with `sqs2pg keygen` (or `sqs2pg keygen --ring FILE`)"
        ))),
    }
}

/// Reads a key or key ring file into a wiped-on-drop buffer, refusing one that group or others
/// can read or write (checked on the opened file, so it cannot be swapped between the check
/// and the read); `shown` names the setting in messages.
pub fn read_key_file(path: &Path, shown: &str) -> Result<Zeroizing<String>, ConfigError> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)
        .map_err(|e| ConfigError(format!("{shown} cannot be read: {e}")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| ConfigError(format!("{shown} cannot be read: {e}")))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ConfigError(format!(
                "{shown} is readable by group or others (mode {:o}): run `chmod 600 {}`",
                mode & 0o777,
                path.display()
            )));
        }
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)
        .map_err(|e| ConfigError(format!("{shown} cannot be read: {e}")))?;
    Ok(text)
}

/// All settings for `drain` (`Mode::Drain`) or `run` (`Mode::Run`).
pub fn pipeline(args: &PipelineArgs, mode: Mode) -> Result<Settings, ConfigError> {
    let (database, table, mappings) = target(&args.database)?;
    for mapping in &mappings {
        if let Some(q) = &mapping.queue {
            check_queue_url(q, &format!("the mapping of {}: `queue`", mapping.table))?;
        }
    }
    // When every mapping names its queue, the run needs no queue of its own.
    let mut queue_args = args.queue.clone();
    let unset = queue_args
        .queue_url
        .as_deref()
        .is_none_or(|u| u.trim().is_empty());
    if unset && !mappings.is_empty() && mappings.iter().all(|m| m.queue.is_some()) {
        queue_args.queue_url = mappings[0].queue.clone();
    }
    let sqs = queue(&queue_args)?;
    let mask_key = key(&args.key)?;
    // Each setting named as its declaration spells it (flag and variable).
    let range = |id: &str, value: u64, lo: u64, hi: u64, why: &str| {
        if (lo..=hi).contains(&value) {
            Ok(())
        } else {
            Err(ConfigError(format!(
                "{} is {value}; it must be between {lo} and {hi} ({why})",
                args::flag(id)
            )))
        }
    };
    range(
        "receivers",
        args.receivers as u64,
        1,
        64,
        "concurrent long polls",
    )?;
    range(
        "loaders",
        args.loaders as u64,
        1,
        16,
        "PostgreSQL connections loading at once",
    )?;
    // drain stops after one empty long poll; an empty *short* poll proves nothing.
    let min_wait = if mode == Mode::Drain { 1 } else { 0 };
    range(
        "wait_time_secs",
        args.wait_time_secs,
        min_wait,
        20,
        "SQS's long-poll limit; drain needs a long poll to know the queue is empty",
    )?;
    if let Some(v) = args.visibility_timeout_secs {
        range(
            "visibility_timeout_secs",
            v,
            1,
            43_200,
            "0 hands every message straight to another consumer; SQS's limit is 12 hours",
        )?;
    }
    range(
        "batch_max_rows",
        args.batch_max_rows as u64,
        1,
        100_000,
        "rows per transaction",
    )?;
    range(
        "batch_max_age_ms",
        args.batch_max_age_ms,
        1,
        600_000,
        "milliseconds",
    )?;
    range(
        "max_body_bytes",
        args.max_body_bytes as u64,
        64,
        16 << 20,
        "bytes",
    )?;
    range(
        "max_attempts",
        u64::from(args.max_attempts),
        1,
        1_000,
        "attempts",
    )?;
    range(
        "ledger_retention_days",
        args.ledger_retention_days,
        29,
        3650,
        "a shorter horizon could forget a message SQS can still deliver: 14 days in the queue, up to 14 more after a FIFO dead-letter move, plus 12 hours of visibility",
    )?;
    range(
        "max_in_flight_bytes",
        args.max_in_flight_bytes as u64,
        args.max_body_bytes as u64,
        u64::from(u32::MAX),
        "body bytes held at once; at least --max-body-bytes, so the largest message fits",
    )?;
    range(
        "max_in_flight_messages",
        args.max_in_flight_messages as u64,
        crate::sqs::SQS_BATCH_LIMIT as u64,
        1_000_000,
        "messages held at once; at least one receive of 10",
    )?;
    range(
        "shutdown_timeout_secs",
        args.shutdown_timeout_secs,
        1,
        3_600,
        "seconds from SIGTERM to exit; keep it below the container's grace period (30 s by default)",
    )?;
    range(
        "max_receive_count",
        u64::from(args.max_receive_count),
        1,
        1_000,
        "receives before a message counts as poison",
    )?;
    range(
        "max_crashes",
        u64::from(args.max_crashes),
        1,
        1_000,
        "process deaths while processing a message before it counts as poison",
    )?;
    let retry = RetryPolicy {
        initial: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        max_attempts: match mode {
            Mode::Drain => Some(args.max_attempts),
            Mode::Run => None,
        },
    };
    if args.device_id_mask.is_ip_only() {
        return Err(ConfigError(format!(
            "{} {}: the ipcrypt modes encrypt IP addresses only; use hmac or siv for device_id",
            args::flag("device_id_mask"),
            args.device_id_mask
        )));
    }
    let metrics_addr = args
        .metrics_addr
        .as_deref()
        .filter(|a| !a.trim().is_empty())
        .map(|a| {
            a.trim().parse().map_err(|_| {
                ConfigError(format!(
                    "{} {a:?} is not an address to listen on: give IP:PORT, e.g. 127.0.0.1:9187 or 0.0.0.0:9187",
                    args::flag("metrics_addr")
                ))
            })
        })
        .transpose()?;
    Ok(Settings {
        mappings,
        key_rotation_intended: args.key_rotation_intended,
        mask_modes: crate::login::MaskModes {
            ip: args.ip.ip_mask,
            device_id: args.device_id_mask,
        },
        show_progress: mode == Mode::Drain && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        metrics_addr,
        database,
        table,
        sqs,
        mask_key,
        ledger_retention: Duration::from_secs(args.ledger_retention_days * 86_400),
        pipeline: PipelineSettings {
            mode,
            receivers: args.receivers,
            loaders: args.loaders,
            wait_time: Duration::from_secs(args.wait_time_secs),
            visibility_timeout: args.visibility_timeout_secs.map(Duration::from_secs),
            batch_max_rows: args.batch_max_rows,
            batch_max_age: Duration::from_millis(args.batch_max_age_ms),
            max_receive_count: args.max_receive_count as i32,
            max_crashes: args.max_crashes,
            max_body_bytes: args.max_body_bytes,
            delete_concurrency: DEFAULT_DELETE_CONCURRENCY.max(args.receivers),
            load_retry: retry,
            source_retry: retry,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
            max_in_flight_bytes: args.max_in_flight_bytes,
            max_in_flight_messages: args.max_in_flight_messages,
            progress: Default::default(),
            table_facts: Default::default(),
            meter: Default::default(),
            suspect_turn: Default::default(),
        },
    })
}

#[cfg(test)]
mod tests;
