//! The commands, one file each, built from checked settings. `main` parses the command line
//! and hands the command to [`run`]; the integration tests call the same functions, so tests
//! run exactly what users run.

use crate::cli::{Command, ConfigArgs, ConfigCommand, MappingArgs};
use crate::config::{self, ConfigError};
use crate::pipeline::PipelineError;
use crate::postgres::schema::NotReady;
use crate::postgres::ConnectError;
use crate::sqs::queue::SqsSettings;
use crate::sqs::{Queue, SourceError};

mod check;
mod keys;
pub mod mapping;
mod process;
mod rejects;
mod rekey;
mod report;
mod send;
mod setup;
pub mod target;
mod unmask;
pub use check::{check, CheckItem};
pub use keys::{keygen, keygen_ring};
pub use mapping::{draft_mapping, load_mapping, preview, write_new_file, Preview};
pub use process::{process, process_with};
pub use rejects::{rejects_list, rejects_replay, rejects_show, ReplayReport};
pub use rekey::{rekey, RekeyReport};
pub use report::report;
pub use send::send;
pub use setup::{evolve_for, setup, setup_for};
pub use unmask::{query_unmasked, unmask_query};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("database not ready: {0}")]
    NotReady(#[from] NotReady),
    #[error("setup failed: {}", crate::postgres::describe(.0))]
    Setup(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("database query failed: {}", crate::postgres::describe(.0))]
    Query(#[source] tokio_postgres::Error),
    #[error("{0}")]
    Quarantine(String),
    #[error("{0} check(s) failed; see the list above")]
    Check(usize),
    #[error(transparent)]
    Evolve(#[from] crate::postgres::evolve::EvolveError),
    /// `mapping diff` found differences (exit 1, as `diff` does).
    #[error("{0} table(s) differ from their mapping; see the plan above")]
    Differ(usize),
    /// A failure of a command whose exit 1 means "differences found" (`mapping diff`): 2.
    #[error(transparent)]
    Trouble(Box<AppError>),
    #[error("{path}: {error}")]
    File {
        path: String,
        #[source]
        error: std::io::Error,
    },
}

impl AppError {
    /// Exit code: 2 for configuration mistakes, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) | AppError::Trouble(_) => 2,
            _ => 1,
        }
    }
}

/// Runs a command of the command line (all but `keygen`, which needs no runtime: see
/// [`keygen`]).
pub async fn run(command: Command) -> Result<(), AppError> {
    match command {
        Command::Keygen(args) => keygen(&args),
        Command::Setup(args) => setup::command(args).await,
        Command::Drain(args) => process::drain(args).await,
        Command::Run(args) => process::run(args).await,
        Command::Check(args) => check::command(args).await,
        Command::Rejects(args) => rejects::command(args.command).await,
        Command::Unmask(args) => unmask::command(args).await,
        Command::Rekey(args) => rekey::command(args).await,
        Command::Report(args) => report::command(args).await,
        Command::Config(ConfigArgs {
            command: ConfigCommand::Print(args),
        }) => {
            print!("{}", config::file::effective(&args));
            Ok(())
        }
        Command::Mapping(MappingArgs { command }) => mapping::command(command).await,
        Command::Send(args) => send::command(args).await,
    }
}

/// Connects to the queue and resolves a queue given by name to its URL.
pub async fn open_queue(settings: &SqsSettings) -> Result<Queue, AppError> {
    let mut queue = Queue::connect(settings).await.map_err(ConfigError::from)?;
    queue.locate().await?;
    Ok(queue)
}
