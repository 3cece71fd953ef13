//! The `sqs2pg` binary: parse the command line, check the configuration, start logging, run
//! the command (`app::run`), map the outcome to an exit code. All logic lives in the library.

use std::process::ExitCode;

use sqs2pg::app;
use sqs2pg::cli::{Cli, Command};
use sqs2pg::config;

/// mimalloc, not glibc's malloc: the pipeline allocates a few small strings per message (see
/// the note in Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    without_huge_pages();
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Keygen(args) = &cli.command {
        return exit_code(app::keygen(args));
    }
    sqs2pg::telemetry::init(cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    exit_code(runtime.block_on(app::run(cli.command)))
}

/// Transparent huge pages off for this process. With them, each 2 MiB region of mimalloc's
/// arenas that is touched at all is resident whole: a drain of 20,000 messages peaked at 50 MiB
/// with them, 23 without (BENCHMARKS.md, issue 29). mimalloc's `no_thp` build (Cargo.toml) only
/// stops it asking for them (`madvise` mode, Debian's default); a host in `always` mode gives
/// them unasked, and this flag refuses them there too. Best effort: a kernel without the flag
/// leaves the process as it was.
fn without_huge_pages() {
    // The flag is the process's (its memory map's), set here before any other thread starts.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// 0, or the error on stderr and its exit code.
fn exit_code(outcome: Result<(), app::AppError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Parses the command line with the configuration file's values (if any) as defaults.
fn parse_command_line() -> Result<Cli, config::ConfigError> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    if let Some(path) = config::file::path_from(&args) {
        let file = config::file::FileSettings::load(&path)?;
        command = config::file::apply(command, &file.defaults());
    }
    let matches = command.get_matches_from(args);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}
