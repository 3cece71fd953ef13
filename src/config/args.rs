//! The settings the commands share, each declared once (see [`super::setting`]): its flag,
//! environment variable, default and help (clap derive) and its configuration file key. The
//! file reader and `config print` work from these declarations; `config` checks the values
//! into `Settings`.

use std::path::PathBuf;

use clap::Args;

use crate::settings;

settings! {
/// Where the database is.
#[derive(Debug, Args, Clone, Default)]
pub struct ConnectionArgs {
    /// libpq-style URL, e.g. postgres://user:password@localhost:5432/db?sslmode=require.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    [file database.url, redacted]
    pub database_url: Option<String>,
}
}

settings! {
/// Which mapping, if any, says how messages become rows.
#[derive(Debug, Args, Clone, Default)]
pub struct MappingFileArgs {
    /// A mapping file (see `sqs2pg mapping`): the table it names, how each message becomes its
    /// rows, and which columns hold tokens. Several: repeat the flag, separate them with commas,
    /// or name a directory (its `*.toml`, in name order); each takes the messages its `match`
    /// says. Without one: the built-in login pipeline and its table (--table).
    #[arg(long, env = "SQS2PG_MAPPING", value_delimiter = ',')]
    [file mapping.file]
    pub mapping: Vec<std::path::PathBuf>,
}
}

settings! {
/// How `ip` is masked (runs write with it; `unmask` needs it to open ipcrypt addresses).
#[derive(Debug, Args, Clone)]
pub struct IpMaskArgs {
    /// How `ip` is masked: `hmac` (one-way), `siv` (deterministic encryption: key holders can
    /// recover it with `sqs2pg unmask`), `ipcrypt` (format-preserving: still an IP address) or
    /// `ipcrypt-pfx` (prefix-preserving: subnets stay subnets).
    /// `unmask` needs the mode the tokens were written with.
    #[arg(long, env = "SQS2PG_IP_MASK", value_enum, default_value_t = crate::mask::MaskMode::Hmac)]
    [file masking.ip_mask]
    pub ip_mask: crate::mask::MaskMode,
}
}

settings! {
#[derive(Debug, Args, Clone)]
pub struct DatabaseArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Target table, `table` or `schema.table`; each part is quoted as an identifier.
    #[arg(long, env = "SQS2PG_TABLE", default_value = super::DEFAULT_TABLE)]
    [file database.table]
    pub table: String,

    #[command(flatten)]
    pub mapping_file: MappingFileArgs,
}
}

settings! {
#[derive(Debug, Args, Clone)]
pub struct QueueArgs {
    // The text is `--help`'s, where URLs are plain text: not links.
    #[allow(rustdoc::bare_urls)]
    /// The queue's URL, e.g. http://localhost:4566/000000000000/login-queue or
    /// https://sqs.us-east-1.amazonaws.com/123456789012/login-queue; or just its name (resolved
    /// with GetQueueUrl on --endpoint-url, or on the region's SQS).
    #[arg(long, env = "SQS2PG_QUEUE_URL")]
    [file sqs.queue_url]
    pub queue_url: Option<String>,

    /// SQS endpoint override. Defaults to the queue URL's origin when that is not an AWS host.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    [file sqs.endpoint_url]
    pub endpoint_url: Option<String>,

    /// SQS wire protocol: `auto` speaks JSON and switches to query if the server speaks only
    /// that (LocalStack 0.14, the exercise's image); `json`; `query`.
    #[arg(long, env = "SQS2PG_SQS_PROTOCOL", value_enum, default_value_t = crate::sqs::Protocol::Auto)]
    [file sqs.protocol]
    pub sqs_protocol: crate::sqs::Protocol,
}
}

settings! {
#[derive(Debug, Args, Clone)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub key: KeyArgs,

    /// Concurrent long-polling receivers.
    #[arg(long, env = "SQS2PG_RECEIVERS", default_value_t = super::DEFAULT_RECEIVERS)]
    [file pipeline.receivers]
    pub receivers: usize,

    /// Loader connections to PostgreSQL: a batch loads on each at once, so one commits while
    /// the next is written (1 for a FIFO queue, whatever is set, to keep order to COMMIT).
    #[arg(long, env = "SQS2PG_LOADERS", default_value_t = super::DEFAULT_LOADERS)]
    [file pipeline.loaders]
    pub loaders: usize,

    /// Long-poll wait per receive, 0 to 20 seconds.
    #[arg(long, env = "SQS2PG_WAIT_TIME_SECS", default_value_t = super::DEFAULT_WAIT_TIME_SECS)]
    [file pipeline.wait_time_secs]
    pub wait_time_secs: u64,

    #[command(flatten)]
    pub ip: IpMaskArgs,

    /// How `device_id` is masked: `hmac` (one-way) or `siv` (recoverable by key holders).
    #[arg(long, env = "SQS2PG_DEVICE_ID_MASK", value_enum, default_value_t = crate::mask::MaskMode::Hmac)]
    [file masking.device_id_mask]
    pub device_id_mask: crate::mask::MaskMode,

    /// Say that a masking key or mode other than the last run's is on purpose (a rotation):
    /// the start-up warning about tokens that no longer match becomes a note.
    #[arg(long, env = "SQS2PG_KEY_ROTATION_INTENDED")]
    pub key_rotation_intended: bool,

    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this address (IP:PORT), e.g.
    /// 127.0.0.1:9187; off when not given.
    #[arg(long, env = "SQS2PG_METRICS_ADDR")]
    [file telemetry.metrics_addr]
    pub metrics_addr: Option<String>,

    /// Messages held at most (received and not yet deleted): the ceiling of the window, which
    /// adapts below it to what the run commits and deletes within the visibility timeout.
    #[arg(long, env = "SQS2PG_MAX_IN_FLIGHT_MESSAGES", default_value_t = super::DEFAULT_MAX_IN_FLIGHT_MESSAGES)]
    [file pipeline.max_in_flight_messages]
    pub max_in_flight_messages: usize,

    /// Body bytes received and not yet committed, at most: receiving pauses at this budget
    /// (while the database is slow or down), so memory stays bounded.
    #[arg(long, env = "SQS2PG_MAX_IN_FLIGHT_BYTES", default_value_t = super::DEFAULT_MAX_IN_FLIGHT_BYTES)]
    [file pipeline.max_in_flight_bytes]
    pub max_in_flight_bytes: usize,

    /// After SIGTERM/SIGINT, the longest the run takes to flush, commit, delete and release
    /// before it exits anyway (keep it below the container's grace period).
    #[arg(long, env = "SQS2PG_SHUTDOWN_TIMEOUT_SECS", default_value_t = super::DEFAULT_SHUTDOWN_TIMEOUT_SECS)]
    [file pipeline.shutdown_timeout_secs]
    pub shutdown_timeout_secs: u64,

    /// Visibility timeout asked for on receive; the queue's own setting when not given.
    #[arg(long, env = "SQS2PG_VISIBILITY_TIMEOUT_SECS")]
    [file pipeline.visibility_timeout_secs]
    pub visibility_timeout_secs: Option<u64>,

    /// Most messages per load transaction.
    #[arg(long, env = "SQS2PG_BATCH_MAX_ROWS", default_value_t = super::DEFAULT_BATCH_MAX_ROWS)]
    [file pipeline.batch_max_rows]
    pub batch_max_rows: usize,

    /// Longest a message waits in an open batch before it is loaded, in milliseconds.
    #[arg(long, env = "SQS2PG_BATCH_MAX_AGE_MS", default_value_t = super::DEFAULT_BATCH_MAX_AGE_MS)]
    [file pipeline.batch_max_age_ms]
    pub batch_max_age_ms: u64,

    /// Bodies longer than this many bytes are rejected as body_too_large.
    #[arg(long, env = "SQS2PG_MAX_BODY_BYTES", default_value_t = super::DEFAULT_MAX_BODY_BYTES)]
    [file pipeline.max_body_bytes]
    pub max_body_bytes: usize,

    /// Attempts for a failing load or receive before `drain` gives up (`run` retries forever).
    #[arg(long, env = "SQS2PG_MAX_ATTEMPTS", default_value_t = super::DEFAULT_MAX_ATTEMPTS)]
    [file pipeline.max_attempts]
    pub max_attempts: u32,

    /// Ledger entries older than this many days are pruned (must exceed SQS's 14-day retention).
    #[arg(long, env = "SQS2PG_LEDGER_RETENTION_DAYS", default_value_t = super::DEFAULT_LEDGER_RETENTION_DAYS)]
    [file pipeline.ledger_retention_days]
    pub ledger_retention_days: u64,

    /// A message received more often than this is quarantined as poison:receive_count.
    #[arg(long, env = "SQS2PG_MAX_RECEIVE_COUNT", default_value_t = super::DEFAULT_MAX_RECEIVE_COUNT)]
    [file pipeline.max_receive_count]
    pub max_receive_count: u32,

    /// A message received more often than --max-receive-count whose processing ended the
    /// process this many times (attempts recorded in the database that never finished) is
    /// quarantined unparsed as poison:crashed; one whose load alone stalled the database on
    /// this many deliveries, as poison:stalled.
    #[arg(long, env = "SQS2PG_MAX_CRASHES", default_value_t = super::DEFAULT_MAX_CRASHES)]
    [file pipeline.max_crashes]
    pub max_crashes: u32,
}
}

settings! {
#[derive(Debug, Args, Clone, Default)]
pub struct KeyArgs {
    /// The base64 masking key (at least 32 bytes). Prefer the environment variable: command-line
    /// arguments are visible to other users of the machine.
    #[arg(
        long,
        env = "SQS2PG_MASK_KEY",
        hide_env_values = true,
        value_name = "BASE64"
    )]
    pub mask_key: Option<crate::keys::KeyText>,

    /// File holding the base64 masking key (mode 600); instead of SQS2PG_MASK_KEY.
    #[arg(long, env = "SQS2PG_MASK_KEY_FILE")]
    [file masking.key_file]
    pub mask_key_file: Option<PathBuf>,

    /// Key ring file (TOML, mode 600, written by `sqs2pg keygen --ring`): several keys, one
    /// active; instead of SQS2PG_MASK_KEY(_FILE). Runs use the active key; unmask, rejects and
    /// rekey also read tokens and bodies of the others.
    #[arg(long, env = "SQS2PG_MASK_KEY_RING")]
    [file masking.key_ring]
    pub mask_key_ring: Option<PathBuf>,
}
}

settings! {
/// The settings every command has: the configuration file and the log format.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// A TOML configuration file whose values are the defaults of the flags (environment
    /// variables and flags override it); see examples/sqs2pg.example.toml.
    #[arg(long, global = true, env = "SQS2PG_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format on stderr: `text` for people, `json` (one object per line) for log shippers.
    #[arg(long, global = true, env = "SQS2PG_LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    [file telemetry.log_format]
    pub log_format: crate::telemetry::LogFormat,
}
}

/// Every setting the configuration file can hold, by group (the order of the keys within a
/// section in `config print` and in error messages).
pub fn file_keys() -> impl Iterator<Item = &'static crate::config::setting::FileKey> {
    [
        QueueArgs::FILE_KEYS,
        ConnectionArgs::FILE_KEYS,
        DatabaseArgs::FILE_KEYS,
        MappingFileArgs::FILE_KEYS,
        KeyArgs::FILE_KEYS,
        IpMaskArgs::FILE_KEYS,
        PipelineArgs::FILE_KEYS,
        GlobalArgs::FILE_KEYS,
    ]
    .into_iter()
    .flatten()
}

/// A setting as messages name it, from its declaration: `--flag (VARIABLE)`.
pub fn flag(id: &str) -> String {
    let (long, env) = spelling(id);
    format!("--{long} ({env})")
}

/// A setting as messages name it when it is usually set in the environment: `VARIABLE
/// (--flag)`.
pub fn variable(id: &str) -> String {
    let (long, env) = spelling(id);
    format!("{env} (--{long})")
}

/// The flag and the environment variable of the setting `id`, as declared.
fn spelling(id: &str) -> (String, String) {
    use clap::Args as _;
    let command =
        GlobalArgs::augment_args(PipelineArgs::augment_args(clap::Command::new("sqs2pg")));
    let arg = command
        .get_arguments()
        .find(|a| a.get_id() == id)
        .unwrap_or_else(|| panic!("{id} is not a declared setting"));
    let long = arg.get_long().unwrap_or(id).to_owned();
    let env = arg
        .get_env()
        .map_or_else(String::new, |e| e.to_string_lossy().into_owned());
    (long, env)
}
