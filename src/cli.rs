//! Subcommands and flags (clap derive). Every flag can also come from the environment variable
//! named beside it; those names are part of the contract. Raw arguments are turned into checked
//! `config::Settings` in a second step (`config`), never used directly.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Moves JSON login messages from an SQS queue into PostgreSQL, masking ip and device_id.
#[derive(Debug, Parser)]
#[command(name = "sqs2pg", version, about, max_term_width = 100)]
pub struct Cli {
    /// A TOML configuration file whose values are the defaults of the flags (environment
    /// variables and flags override it); see examples/sqs2pg.example.toml.
    #[arg(long, global = true, env = "SQS2PG_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Log format on stderr: `text` for people, `json` (one object per line) for log shippers.
    #[arg(long, global = true, env = "SQS2PG_LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the `sqs2pg` bookkeeping schema and create the target table if missing.
    Setup(DatabaseArgs),
    /// Process until the queue has been empty for one long poll, print a summary, exit.
    Drain(PipelineArgs),
    /// Process as a long-running service until SIGINT or SIGTERM.
    Run(PipelineArgs),
    /// Check, without processing anything, that the queue, the database, the table and the key
    /// are all usable; print a pass/fail list; exit 0 only if everything passes.
    Check(PipelineArgs),
    /// Make a new random masking key (32 bytes): print it as base64 for SQS2PG_MASK_KEY, or add
    /// it to a key ring file with --ring (existing keys are never overwritten).
    Keygen(KeygenArgs),
    /// Send one message per line of a file to the queue (SendMessageBatch, 10 per call).
    Send(SendArgs),
    /// Inspect and replay quarantined messages.
    Rejects(RejectsArgs),
    /// Show the configuration.
    Config(ConfigArgs),
    /// Print the values behind `siv` tokens, for key holders. The output is personal data.
    Unmask(UnmaskArgs),
    /// Re-encrypt the `siv` tokens written under an old key with the current key, in place, in
    /// batches; resumable. `hmac` tokens cannot be re-keyed (see the README).
    Rekey(RekeyArgs),
    /// What the analysts' table holds, in aggregates: rows per day and device type, distinct
    /// and repeated masked values, rejections by reason.
    Report(ReportArgs),
    /// Check a declarative mapping and try it on sample bodies, offline (no SQS, no
    /// PostgreSQL). See examples/mappings/.
    Mapping(MappingArgs),
}

#[derive(Debug, Args)]
pub struct MappingArgs {
    #[command(subcommand)]
    pub command: MappingCommand,
}

#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Check a mapping file: every mistake names its line or column and key.
    Check {
        /// The mapping file (TOML).
        file: PathBuf,
    },
    /// Write a first mapping from sample bodies (one per line): columns, types, nullability
    /// and lengths inferred, masks proposed for values that look personal, each with a comment
    /// saying why. SNS, EventBridge and S3 envelopes are recognised by their shape.
    Draft {
        /// File with one message body per line (blank lines are skipped).
        #[arg(long)]
        file: PathBuf,
        /// The table the mapping writes to.
        #[arg(long, default_value = "public.messages")]
        table: String,
        /// Write the mapping here instead of to standard output (never over an existing file).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Map sample bodies (one per line) and print, per line, each row as it would be stored,
    /// masked, or the rejection with its reason, as JSON lines. Without a key, tokens are made
    /// under a throwaway key.
    Preview {
        /// The mapping file (TOML).
        #[arg(long, env = "SQS2PG_MAPPING")]
        mapping: PathBuf,
        /// File with one message body per line (blank lines are skipped).
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        key: KeyArgs,
    },
}

#[derive(Debug, Args)]
pub struct UnmaskArgs {
    #[command(flatten)]
    pub key: KeyArgs,

    /// Tokens as stored in masked_ip / masked_device_id. A token can start with `-` (key ids
    /// are base64url): put `--` before the tokens.
    #[arg(required_unless_present = "query", conflicts_with = "query")]
    pub tokens: Vec<String>,

    /// The mode `ip` was masked with, needed for the ipcrypt modes (whose tokens are bare
    /// addresses); the same setting as for `run`.
    #[arg(long, env = "SQS2PG_IP_MASK", value_enum, default_value_t = crate::login::MaskMode::Hmac)]
    pub ip_mask: crate::login::MaskMode,

    /// For tokens that are bare addresses (ipcrypt modes, which carry no key id): the ring key
    /// they were written under; the active key if not given.
    #[arg(long, value_name = "KEY_ID", allow_hyphen_values = true)]
    pub key_id: Option<String>,

    /// A query whose result is printed with every token column unmasked, e.g. "SELECT user_id,
    /// masked_ip FROM user_logins WHERE create_date = '2026-11-25'" (needs DATABASE_URL).
    #[arg(long)]
    pub query: Option<String>,

    /// The database for --query.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// With --query: unmask the reversible token columns of this mapping (`siv`, `ipcrypt`,
    /// `ipcrypt-pfx`) instead of the login table's masked_ip and masked_device_id.
    #[arg(long, env = "SQS2PG_MAPPING")]
    pub mapping: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Add the key to this ring file (created with mode 600 if missing) instead of printing it;
    /// prints the new key's id.
    #[arg(long, value_name = "FILE")]
    pub ring: Option<std::path::PathBuf>,

    /// Make the new key the ring's active key (a new ring's first key always is).
    #[arg(long, requires = "ring")]
    pub activate: bool,
}

#[derive(Debug, Args)]
pub struct RekeyArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// The new key (becomes the tokens' key).
    #[command(flatten)]
    pub key: KeyArgs,

    /// The id of the old key, in the key ring (SQS2PG_MASK_KEY_RING), whose tokens are
    /// re-encrypted.
    #[arg(
        long,
        value_name = "KEY_ID",
        conflicts_with = "from_key_file",
        allow_hyphen_values = true
    )]
    pub from: Option<String>,

    /// File holding the old base64 key (mode 600), when the keys are single keys, not a ring.
    #[arg(long)]
    pub from_key_file: Option<std::path::PathBuf>,

    /// The id of the new key in the ring; the ring's active key if not given.
    #[arg(long, value_name = "KEY_ID", allow_hyphen_values = true)]
    pub to: Option<String>,

    /// Rows per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch_rows: i64,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Also write the report as a self-contained HTML page with charts to this file.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective settings (file, environment and flags applied) as TOML, with the
    /// database password and the masking key hidden.
    Print(PipelineArgs),
}

#[derive(Debug, Args, Clone)]
pub struct DatabaseArgs {
    /// libpq-style URL, e.g. postgres://user:password@localhost:5432/db?sslmode=require.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Target table, `table` or `schema.table`; each part is quoted as an identifier.
    #[arg(long, env = "SQS2PG_TABLE", default_value = crate::config::DEFAULT_TABLE)]
    pub table: String,

    /// A mapping file (see `sqs2pg mapping`): the table it names, and how each message becomes
    /// its rows. Without one, the built-in login pipeline writes to --table.
    #[arg(long, env = "SQS2PG_MAPPING")]
    pub mapping: Option<std::path::PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct QueueArgs {
    // The text is `--help`'s, where URLs are plain text: not links.
    #[allow(rustdoc::bare_urls)]
    /// The queue's URL, e.g. http://localhost:4566/000000000000/login-queue or
    /// https://sqs.us-east-1.amazonaws.com/123456789012/login-queue; or just its name (resolved
    /// with GetQueueUrl on --endpoint-url, or on the region's SQS).
    #[arg(long, env = "SQS2PG_QUEUE_URL")]
    pub queue_url: Option<String>,

    /// SQS endpoint override. Defaults to the queue URL's origin when that is not an AWS host.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,

    /// SQS wire protocol: `auto` speaks JSON and switches to query if the server speaks only
    /// that (LocalStack 0.14, the exercise's image); `json`; `query`.
    #[arg(long, env = "SQS2PG_SQS_PROTOCOL", value_enum, default_value_t = crate::sqs::Protocol::Auto)]
    pub sqs_protocol: crate::sqs::Protocol,
}

#[derive(Debug, Args, Clone)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub key: KeyArgs,

    /// Concurrent long-polling receivers.
    #[arg(long, env = "SQS2PG_RECEIVERS", default_value_t = crate::config::DEFAULT_RECEIVERS)]
    pub receivers: usize,

    /// Loader connections to PostgreSQL: a batch loads on each at once, so one commits while
    /// the next is written (1 for a FIFO queue, whatever is set, to keep order to COMMIT).
    #[arg(long, env = "SQS2PG_LOADERS", default_value_t = crate::config::DEFAULT_LOADERS)]
    pub loaders: usize,

    /// Long-poll wait per receive, 0 to 20 seconds.
    #[arg(long, env = "SQS2PG_WAIT_TIME_SECS", default_value_t = crate::config::DEFAULT_WAIT_TIME_SECS)]
    pub wait_time_secs: u64,

    /// How `ip` is masked: `hmac` (one-way), `siv` (deterministic encryption: key holders can
    /// recover it with `sqs2pg unmask`), `ipcrypt` (format-preserving: still an IP address) or
    /// `ipcrypt-pfx` (prefix-preserving: subnets stay subnets).
    #[arg(long, env = "SQS2PG_IP_MASK", value_enum, default_value_t = crate::login::MaskMode::Hmac)]
    pub ip_mask: crate::login::MaskMode,

    /// How `device_id` is masked: `hmac` (one-way) or `siv` (recoverable by key holders).
    #[arg(long, env = "SQS2PG_DEVICE_ID_MASK", value_enum, default_value_t = crate::login::MaskMode::Hmac)]
    pub device_id_mask: crate::login::MaskMode,

    /// Say that a masking key or mode other than the last run's is on purpose (a rotation):
    /// the start-up warning about tokens that no longer match becomes a note.
    #[arg(long, env = "SQS2PG_KEY_ROTATION_INTENDED")]
    pub key_rotation_intended: bool,

    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this address (IP:PORT), e.g.
    /// 127.0.0.1:9187; off when not given.
    #[arg(long, env = "SQS2PG_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Messages held at most (received and not yet deleted): the ceiling of the window, which
    /// adapts below it to what the run commits and deletes within the visibility timeout.
    #[arg(long, env = "SQS2PG_MAX_IN_FLIGHT_MESSAGES", default_value_t = crate::config::DEFAULT_MAX_IN_FLIGHT_MESSAGES)]
    pub max_in_flight_messages: usize,

    /// Body bytes received and not yet committed, at most: receiving pauses at this budget
    /// (while the database is slow or down), so memory stays bounded.
    #[arg(long, env = "SQS2PG_MAX_IN_FLIGHT_BYTES", default_value_t = crate::config::DEFAULT_MAX_IN_FLIGHT_BYTES)]
    pub max_in_flight_bytes: usize,

    /// After SIGTERM/SIGINT, the longest the run takes to flush, commit, delete and release
    /// before it exits anyway (keep it below the container's grace period).
    #[arg(long, env = "SQS2PG_SHUTDOWN_TIMEOUT_SECS", default_value_t = crate::config::DEFAULT_SHUTDOWN_TIMEOUT_SECS)]
    pub shutdown_timeout_secs: u64,

    /// Visibility timeout asked for on receive; the queue's own setting when not given.
    #[arg(long, env = "SQS2PG_VISIBILITY_TIMEOUT_SECS")]
    pub visibility_timeout_secs: Option<u64>,

    /// Most messages per load transaction.
    #[arg(long, env = "SQS2PG_BATCH_MAX_ROWS", default_value_t = crate::config::DEFAULT_BATCH_MAX_ROWS)]
    pub batch_max_rows: usize,

    /// Longest a message waits in an open batch before it is loaded, in milliseconds.
    #[arg(long, env = "SQS2PG_BATCH_MAX_AGE_MS", default_value_t = crate::config::DEFAULT_BATCH_MAX_AGE_MS)]
    pub batch_max_age_ms: u64,

    /// Bodies longer than this many bytes are rejected as body_too_large.
    #[arg(long, env = "SQS2PG_MAX_BODY_BYTES", default_value_t = crate::config::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Attempts for a failing load or receive before `drain` gives up (`run` retries forever).
    #[arg(long, env = "SQS2PG_MAX_ATTEMPTS", default_value_t = crate::config::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,

    /// Ledger entries older than this many days are pruned (must exceed SQS's 14-day retention).
    #[arg(long, env = "SQS2PG_LEDGER_RETENTION_DAYS", default_value_t = crate::config::DEFAULT_LEDGER_RETENTION_DAYS)]
    pub ledger_retention_days: u64,

    /// A message received more often than this is quarantined as poison:receive_count.
    #[arg(long, env = "SQS2PG_MAX_RECEIVE_COUNT", default_value_t = crate::config::DEFAULT_MAX_RECEIVE_COUNT)]
    pub max_receive_count: u32,
}

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
    pub mask_key: Option<crate::login::KeyText>,

    /// File holding the base64 masking key (mode 600); instead of SQS2PG_MASK_KEY.
    #[arg(long, env = "SQS2PG_MASK_KEY_FILE")]
    pub mask_key_file: Option<PathBuf>,

    /// Key ring file (TOML, mode 600, written by `sqs2pg keygen --ring`): several keys, one
    /// active; instead of SQS2PG_MASK_KEY(_FILE). Runs use the active key; unmask, rejects and
    /// rekey also read tokens and bodies of the others.
    #[arg(long, env = "SQS2PG_MASK_KEY_RING")]
    pub mask_key_ring: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct RejectsArgs {
    #[command(subcommand)]
    pub command: RejectsCommand,
}

#[derive(Debug, Subcommand, Clone)]
pub enum RejectsCommand {
    /// Counts by reason and the most recent rejections: ids, reasons, details; never values.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// How many recent rejections to list.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Decrypts and prints one rejected message's body. PRINTS PERSONAL DATA.
    Show {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        key: KeyArgs,
        /// The SQS message id (from `rejects list`).
        message_id: String,
    },
    /// Sends rejected bodies back to the queue (or to --to) and marks them replayed.
    Replay {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        queue: QueueArgs,
        /// Only rejections with this reason code (e.g. rejected_by_database).
        #[arg(long)]
        reason: Option<String>,
        /// Only this message id (may be repeated).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Send to this queue URL instead of SQS2PG_QUEUE_URL.
        #[arg(long)]
        to: Option<String>,
        /// Replay also rejections replayed before (one whose replay was loaded is still skipped).
        #[arg(long)]
        again: bool,
        /// Replay every rejection (otherwise --reason or --id is required).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args, Clone)]
pub struct SendArgs {
    #[command(flatten)]
    pub queue: QueueArgs,

    /// File with one message body per line (blank lines are skipped).
    #[arg(long)]
    pub file: PathBuf,

    /// Create the queue first if it does not exist (named by the URL's last path segment).
    #[arg(long)]
    pub create_queue: bool,

    /// SendMessageBatch calls in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn key_ids_and_tokens_that_start_with_a_hyphen_are_values() {
        // Key ids are base64url, so one in 64 starts with `-`.
        let cli =
            Cli::try_parse_from(["sqs2pg", "rekey", "--from", "-AbC12_x", "--to", "-zz"]).unwrap();
        let Command::Rekey(args) = cli.command else {
            panic!("a rekey")
        };
        assert_eq!(
            (args.from.as_deref(), args.to.as_deref()),
            (Some("-AbC12_x"), Some("-zz"))
        );
        let cli =
            Cli::try_parse_from(["sqs2pg", "unmask", "--key-id", "-k", "--", "-t.s.x"]).unwrap();
        let Command::Unmask(args) = cli.command else {
            panic!("an unmask")
        };
        assert_eq!(args.key_id.as_deref(), Some("-k"));
        assert_eq!(args.tokens, ["-t.s.x"]);
    }
}
