//! Logging and metrics. Logging: `tracing` to stderr, filtered by `RUST_LOG` on top of a default that keeps our own
//! events at info and the chattier dependencies at warn.
//!
//! The rule for every event in this crate: message ids, counts, durations, reason codes and
//! error texts; never a message body, an `ip` or a `device_id`. Raising dependency levels (e.g.
//! `RUST_LOG=hyper=trace`) can make those crates log wire content; do that only against test
//! data.

pub mod http;
pub mod metrics;
pub mod progress;

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is not set. `aws_config` only at error: its providers warn
/// on every source of credentials or region they try and do not find (instance metadata off
/// EC2, say), with a debug dump; what matters reaches the user in the error of the call
/// that needed them.
pub const DEFAULT_FILTER: &str = "info,aws_config=error,aws_smithy_runtime=warn,aws_smithy_runtime_api=warn,hyper=warn,hyper_util=warn,tokio_postgres=warn,rustls=warn";

/// The filter for a run: `RUST_LOG` if set and valid, else [`DEFAULT_FILTER`].
pub fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, message and fields.
    Json,
}

/// Installs the global subscriber on stderr. Call once, from `main`.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}
