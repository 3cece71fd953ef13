//! The `sqs2pg` binary: parse the command line, check the configuration, start logging, run
//! the command, map the outcome to an exit code. All logic lives in the library.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use sqs2pg::app::{self, AppError};
use sqs2pg::cli::{
    Cli, Command, ConfigArgs, ConfigCommand, KeygenArgs, MappingArgs, MappingCommand, QueueArgs,
    RejectsCommand,
};
use sqs2pg::config;
use sqs2pg::login::MaskKey;
use sqs2pg::pipeline::{Mode, PipelineError};
use sqs2pg::postgres::quarantine::ReplaySelection;

/// mimalloc, not glibc's malloc: the pipeline allocates a few small strings per message (see
/// the note in Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Keygen(args) = &cli.command {
        return keygen(args);
    }
    sqs2pg::telemetry::init(cli.log_format);
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
    match runtime.block_on(run(cli.command)) {
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

/// The database `unmask --query` reads.
fn unmask_database(url: Option<&str>) -> Result<sqs2pg::postgres::Database, config::ConfigError> {
    let url = url.ok_or_else(|| {
        config::ConfigError("unmask --query needs DATABASE_URL (--database-url)".into())
    })?;
    sqs2pg::postgres::Database::parse(url).map_err(|e| config::ConfigError(e.to_string()))
}

async fn run(command: Command) -> Result<(), AppError> {
    match command {
        Command::Keygen(_) => unreachable!("handled before the runtime starts"),
        Command::Setup(args) => {
            let (database, table, mapping) = config::target(&args)?;
            let shape = app::mapping::shape(mapping.as_ref());
            let report = app::setup_for(&database, &table, &shape).await?;
            let applied = if report.applied.is_empty() {
                "schema sqs2pg already current".to_owned()
            } else {
                format!("applied migration(s) {:?}", report.applied)
            };
            let created = if report.table_created {
                "created"
            } else {
                "exists, left unchanged"
            };
            println!("setup done: {applied}; table {table} {created}");
            Ok(())
        }
        Command::Drain(args) => {
            let settings = config::pipeline(&args, Mode::Drain)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            match app::process(settings, shutdown).await {
                Ok(summary) => {
                    print!("{summary}");
                    Ok(())
                }
                Err(AppError::Pipeline(PipelineError::Incomplete(summary))) => {
                    print!("{summary}");
                    Err(AppError::Pipeline(PipelineError::Incomplete(summary)))
                }
                Err(e) => Err(e),
            }
        }
        Command::Run(args) => {
            let settings = config::pipeline(&args, Mode::Run)?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            let summary = app::process(settings, shutdown).await?;
            print!("{summary}");
            Ok(())
        }
        Command::Check(args) => {
            let settings = config::pipeline(&args, Mode::Run)?;
            let items = app::check(&settings).await;
            for item in &items {
                let mark = if item.ok { " ok " } else { "FAIL" };
                println!("[{mark}] {:<17} {}", item.name, item.detail);
            }
            let failed = items.iter().filter(|i| !i.ok).count();
            if failed == 0 {
                println!("all {} checks passed", items.len());
                Ok(())
            } else {
                Err(AppError::Check(failed))
            }
        }
        Command::Rejects(args) => rejects(args.command).await,
        Command::Unmask(args) if args.mapping.is_some() => {
            let ring = config::key_ring(&args.key)?;
            let path = args.mapping.as_deref().expect("matched above");
            let mapping = config::mapping_file(path)?;
            let unmasker =
                app::mapping::MappedUnmasker::new(&mapping, &ring, args.key_id.as_deref())
                    .ok_or_else(|| {
                        config::ConfigError(format!(
                            "unmask --key-id: no such key in the ring (ids: {})",
                            ring.ids()
                        ))
                    })?;
            let (Some(query), true) = (&args.query, args.tokens.is_empty()) else {
                return Err(config::ConfigError(
                    "unmask --mapping works on --query: a token alone does not say which column (so which scope and mode) it belongs to".into(),
                )
                .into());
            };
            if unmasker.is_empty() {
                eprintln!("note: the mapping has no reversible token column (siv, ipcrypt, ipcrypt-pfx); hmac tokens are one-way");
            }
            let database = unmask_database(args.database_url.as_deref())?;
            eprintln!("warning: the values below are personal data (the mapping's token columns)");
            for line in app::query_unmasked(&database, query, |c, v| unmasker.cell(c, v)).await? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Unmask(args) => {
            let ring = config::key_ring(&args.key)?;
            let unmasker =
                sqs2pg::login::Unmasker::for_ring(&ring, args.ip_mask, args.key_id.as_deref())
                    .ok_or_else(|| {
                        config::ConfigError(format!(
                            "unmask --key-id: no such key in the ring (ids: {})",
                            ring.ids()
                        ))
                    })?;
            eprintln!("warning: the values below are personal data (ip, device_id)");
            let mut failed = 0;
            if let Some(query) = &args.query {
                let database = unmask_database(args.database_url.as_deref())?;
                for line in app::unmask_query(&database, &unmasker, query).await? {
                    println!("{line}");
                }
            }
            for token in &args.tokens {
                match unmasker.unmask(token) {
                    Ok(value) => println!("{token}\t{value}"),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{token}: {e}");
                    }
                }
            }
            if failed == 0 {
                Ok(())
            } else {
                Err(AppError::Quarantine(format!(
                    "{failed} token(s) could not be unmasked"
                )))
            }
        }
        Command::Rekey(args) => {
            // With a mapping, its table (rekey finds the token columns in the bookkeeping).
            let (database, table, _) = config::target(&args.database)?;
            let ring = config::key_ring(&args.key)?;
            let in_ring = |id: &str, flag: &str| {
                ring.get(id).cloned().ok_or_else(|| {
                    config::ConfigError(format!(
                        "rekey {flag} {id}: no such key in the ring (ids: {})",
                        ring.ids()
                    ))
                })
            };
            let to = match &args.to {
                Some(id) => in_ring(id, "--to")?,
                None => ring.active().clone(),
            };
            let from = match (&args.from, &args.from_key_file) {
                (Some(id), _) => in_ring(id, "--from")?,
                (None, Some(file)) => config::mask_key(None, Some(file))?,
                (None, None) => {
                    return Err(config::ConfigError(
                        "rekey: say which key the tokens were written under: --from KEY_ID (a key of the ring in SQS2PG_MASK_KEY_RING) or --from-key-file FILE".into(),
                    )
                    .into())
                }
            };
            let report = app::rekey(&database, &table, &from, &to, args.batch_rows.max(1)).await?;
            if report.address_rows > 0 {
                println!(
                    "rekey: {} row(s) with ipcrypt addresses re-encrypted",
                    report.address_rows
                );
            }
            println!(
                "rekey done: {} token(s) in {} row(s) re-encrypted under key {}",
                report.tokens,
                report.rows,
                sqs2pg::login::Masker::new(&to).key_id()
            );
            if report.one_way_left > 0 {
                println!(
                    "{} row(s) hold hmac tokens of the old key: one-way tokens cannot be re-keyed (nobody can recover their values); keep the old key for comparisons across the change, or let those rows age out",
                    report.one_way_left
                );
            }
            Ok(())
        }
        Command::Report(args) if args.database.mapping.is_some() => {
            let (database, table, mapping) = config::target(&args.database)?;
            if args.html.is_some() {
                return Err(config::ConfigError(
                    "report --html draws the login table's charts; for a mapping's table, drop --html (the text report covers it)".into(),
                )
                .into());
            }
            let mapping = mapping.expect("--mapping is set");
            let report = app::mapping::report(&database, &table, &mapping).await?;
            print!("{}", report.to_text());
            Ok(())
        }
        Command::Report(args) => {
            let (database, table) = config::database(&args.database)?;
            let report = app::report(&database, &table).await?;
            print!("{}", report.to_text());
            if let Some(path) = &args.html {
                std::fs::write(path, sqs2pg::report::html::render(&report)).map_err(|error| {
                    AppError::File {
                        path: path.display().to_string(),
                        error,
                    }
                })?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Config(ConfigArgs {
            command: ConfigCommand::Print(args),
        }) => {
            print!("{}", config::file::effective(&args));
            Ok(())
        }
        Command::Mapping(MappingArgs { command }) => mapping(command),
        Command::Send(args) => {
            let sqs = config::queue(&args.queue)?;
            let sent = app::send(&sqs, &args.file, args.create_queue, args.concurrency).await?;
            println!("sent {sent} message(s) to {}", sqs.queue_url);
            Ok(())
        }
    }
}

fn mapping(command: MappingCommand) -> Result<(), AppError> {
    match command {
        MappingCommand::Check { file } => {
            let mapping = app::load_mapping(&file)?;
            println!(
                "{}: table {}, {} column(s), {} masked",
                file.display(),
                mapping.table,
                mapping.columns.len(),
                mapping.masked().count()
            );
            Ok(())
        }
        MappingCommand::Draft {
            file,
            table,
            output,
        } => {
            let text = app::draft_mapping(&file, &table)?;
            match output {
                None => print!("{text}"),
                Some(path) => {
                    app::write_new_file(&path, &text)?;
                    println!("wrote {}", path.display());
                }
            }
            Ok(())
        }
        MappingCommand::Preview { mapping, file, key } => {
            let mapping = app::load_mapping(&mapping)?;
            let given = key.mask_key.is_some()
                || key.mask_key_file.is_some()
                || key.mask_key_ring.is_some();
            let key = if given {
                config::key(&key)?
            } else {
                eprintln!("no key given: tokens are made under a throwaway key");
                let text = MaskKey::generate_base64().map_err(|error| AppError::File {
                    path: "the system's random source".into(),
                    error,
                })?;
                MaskKey::from_base64(&text).expect("a generated key")
            };
            let seen = app::preview(&mapping, &key, &file, &mut std::io::stdout().lock())?;
            eprintln!(
                "{} message(s): {} row(s), {} rejected",
                seen.messages, seen.rows, seen.rejected
            );
            Ok(())
        }
    }
}

async fn rejects(command: RejectsCommand) -> Result<(), AppError> {
    match command {
        RejectsCommand::List { database, limit } => {
            let (database, _) = config::database(&database)?;
            print!("{}", app::rejects_list(&database, limit).await?);
        }
        RejectsCommand::Show {
            database,
            key,
            message_id,
        } => {
            let (database, _) = config::database(&database)?;
            let keys = config::key_ring(&key)?;
            let body = app::rejects_show(&database, &keys, &message_id).await?;
            eprintln!("warning: the body below is the raw message and may hold personal data (ip, device_id)");
            println!("{body}");
        }
        RejectsCommand::Replay {
            database,
            key,
            queue,
            reason,
            ids,
            to,
            again,
            all,
        } => {
            let (database, _) = config::database(&database)?;
            let keys = config::key_ring(&key)?;
            let target = config::queue(&QueueArgs {
                queue_url: to.or(queue.queue_url),
                endpoint_url: queue.endpoint_url,
                sqs_protocol: queue.sqs_protocol,
            })?;
            if reason.is_none() && ids.is_empty() && !all {
                return Err(config::ConfigError(
                    "rejects replay: say what to replay with --reason CODE, --id ID or --all"
                        .into(),
                )
                .into());
            }
            let selection = ReplaySelection { reason, ids, again };
            let report = app::rejects_replay(&database, &keys, &target, &selection).await?;
            for skipped in &report.skipped {
                eprintln!("skipped {skipped}");
            }
            println!(
                "replayed {} message(s) to {}",
                report.sent, target.queue_url
            );
        }
    }
    Ok(())
}

/// `sqs2pg keygen`: a new key printed, or added to a ring (then only its id is printed).
fn keygen(args: &KeygenArgs) -> ExitCode {
    match &args.ring {
        Some(path) => match app::keygen_ring(path, args.activate) {
            Ok(id) => {
                let active = if args.activate {
                    " and made it active"
                } else {
                    ""
                };
                println!("added key {id} to {}{active}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        None => match MaskKey::generate_base64() {
            Ok(key) => {
                let key = zeroize::Zeroizing::new(key);
                println!("{}", key.as_str());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: no randomness from the operating system: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM; a second signal exits at once (whatever was
/// not committed comes back from SQS after its visibility timeout).
async fn cancel_on_signal(token: CancellationToken) {
    wait_for_signal().await;
    tracing::info!("shutdown requested; finishing the open batch (signal again to exit at once)");
    token.cancel();
    wait_for_signal().await;
    tracing::warn!("second signal; exiting now");
    std::process::exit(130);
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
