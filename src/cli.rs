//! The command line: the subcommands and their command-specific flags (clap derive). The
//! settings they share (database, queue, key, pipeline tuning) are declared once, in
//! `config::args`, and flattened in here. Every flag can also come from the environment
//! variable named beside it; those names are part of the contract. Raw arguments are turned
//! into checked `config::Settings` in a second step (`config`), never used directly.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::config::args::{
    ConnectionArgs, DatabaseArgs, GlobalArgs, IpMaskArgs, KeyArgs, MappingFileArgs, PipelineArgs,
    QueueArgs,
};

/// Moves JSON messages from an SQS queue into PostgreSQL, masking personal data on the way:
/// the exercise's logins built in, any other stream through a mapping file (--mapping).
#[derive(Debug, Parser)]
#[command(name = "sqs2pg", version = version(), about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// What `--version` prints: the crate's version and the commit it was built from, when the
/// build knew it (build.rs: from `.git`, or `SQS2PG_GIT_COMMIT`).
pub fn version() -> &'static str {
    match option_env!("SQS2PG_GIT_COMMIT") {
        Some(commit) if !commit.is_empty() => {
            let line = format!("{} (commit {commit})", env!("CARGO_PKG_VERSION"));
            Box::leak(line.into_boxed_str())
        }
        _ => env!("CARGO_PKG_VERSION"),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the `sqs2pg` bookkeeping schema, create the target table if missing,
    /// and evolve a mapped table that exists for additive changes (new nullable columns, a
    /// varchar widened; anything else is refused, naming the column and the SQL to run).
    Setup(SetupArgs),
    /// Process until the queue is empty (nothing visible, in flight under any consumer, or
    /// delayed) and everything received is committed and deleted; print a summary, exit.
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
    /// Print the values behind `siv` tokens, for key holders, or a query's result (--query) with
    /// its token columns opened (a mapping's with --mapping). The output is personal data.
    Unmask(UnmaskArgs),
    /// Re-encrypt the `siv` tokens written under an old key with the current key, in place, in
    /// batches; resumable. `hmac` tokens cannot be re-keyed (see the README).
    Rekey(RekeyArgs),
    /// What the table holds, in aggregates (the login table: rows per day and device type,
    /// distinct and repeated masked values; a mapping's: per its columns), rejections by reason.
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

/// `sqs2pg setup`'s arguments.
#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Print what setup would do to each table (create it, the columns it would add or widen,
    /// what it would refuse), and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Compare the mappings with their live tables and print the plan: the columns `setup`
    /// would add or widen, and the differences it would refuse (type, nullability), each with
    /// its column. Exit 0 when they match, 1 when there is a plan, 2 for a mistake.
    Diff(DatabaseArgs),
    /// Check a mapping file: every mistake names its line or column and key.
    Check {
        /// The mapping file (TOML).
        file: PathBuf,
    },
    /// Write a first mapping from sample bodies (one per line), or from the producer's JSON
    /// Schema: columns, types, checks and nullability, masks proposed for fields that look
    /// personal, each with a comment saying why. From samples, SNS, EventBridge and S3
    /// envelopes are recognised by their shape.
    Draft {
        /// File with one message body per line (blank lines are skipped).
        #[arg(long, required_unless_present = "schema", conflicts_with = "schema")]
        file: Option<PathBuf>,
        /// A JSON Schema (draft 2020-12 or draft-07) of the messages, instead of samples.
        #[arg(long)]
        schema: Option<PathBuf>,
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
        // The mapping to try: required here (`app::mapping::command` says so when missing).
        #[command(flatten)]
        mapping: MappingFileArgs,
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

    // The mode `ip` was masked with, needed for the ipcrypt modes (whose tokens are bare
    // addresses): the same setting as for `run`.
    #[command(flatten)]
    pub ip: IpMaskArgs,

    /// For tokens that are bare addresses (ipcrypt modes, which carry no key id): the ring key
    /// they were written under; the active key if not given.
    #[arg(long, value_name = "KEY_ID", allow_hyphen_values = true)]
    pub key_id: Option<String>,

    /// A query whose result is printed with every token column unmasked, e.g. "SELECT user_id,
    /// masked_ip FROM user_logins WHERE create_date = '2026-11-25'" (needs DATABASE_URL).
    #[arg(long)]
    pub query: Option<String>,

    // The database for --query.
    #[command(flatten)]
    pub connection: ConnectionArgs,

    // With --query and a mapping: unmask the reversible token columns of the mapping (`siv`,
    // `ipcrypt`, `ipcrypt-pfx`) instead of the login table's masked_ip and masked_device_id.
    #[command(flatten)]
    pub mapping: MappingFileArgs,
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
        /// Only rejections with this reason code, or whose code starts with it and a colon
        /// (`table_refused` takes every `table_refused:RULE`; `poison` every `poison:` code).
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

    #[test]
    fn every_key_the_configuration_file_can_set_is_a_setting_of_some_command() {
        let example = include_str!("../examples/sqs2pg.example.toml");
        let file = crate::config::file::FileSettings::parse(example).unwrap();
        use clap::CommandFactory;
        let command = Cli::command();
        let mut known: Vec<String> = command
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        for sub in command.get_subcommands() {
            known.extend(sub.get_arguments().map(|a| a.get_id().to_string()));
        }
        for (id, _) in file.defaults() {
            assert!(known.iter().any(|k| k == id), "{id} is no setting");
        }
    }
}
