//! `sqs2pg drain` and `sqs2pg run`: the one place that wires the source, the message kind, the
//! loader and the pipeline together, with the database checks, the key record, the metrics
//! endpoint, ledger pruning and the signals around a run.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::target::Target;
use super::{mapping, open_queue, AppError};
use crate::config::args::PipelineArgs;
use crate::config::{ConfigError, Settings};
use crate::error::{fate, Fate, Outcome};
use crate::keys::BodySealer;
use crate::kind::MessageKind;
use crate::login::Masker;
use crate::pipeline::{self, Mode, PipelineError, Summary};
use crate::postgres::{self as pg, ConnectError, Database, TableLoader};
use crate::retry::RetryPolicy;
use crate::sqs::name::{is_fifo, queue_label};
use crate::sqs::Queue;

/// `sqs2pg drain`, as the command line runs it: the summary is printed, also when the run
/// left messages behind.
pub async fn drain(args: PipelineArgs) -> Result<(), AppError> {
    let settings = crate::config::pipeline(&args, Mode::Drain)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match process(settings, shutdown).await {
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

/// `sqs2pg run`, as the command line runs it: until SIGINT or SIGTERM, then the summary.
pub async fn run(args: PipelineArgs) -> Result<(), AppError> {
    let settings = crate::config::pipeline(&args, Mode::Run)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let summary = process(settings, shutdown).await?;
    print!("{summary}");
    Ok(())
}

/// `sqs2pg drain` / `sqs2pg run`: checks the database, connects to the queue, runs the
/// pipeline; with mappings that name several queues (`queue` in a mapping file), a pipeline per
/// queue, each with its own window, heartbeat and loaders, at once (a failing queue retried as
/// degraded while the others load).
pub async fn process(
    mut settings: Settings,
    shutdown: CancellationToken,
) -> Result<Summary, AppError> {
    let mut groups = by_queue(&settings);
    if groups.len() > 1 {
        return several_queues(settings, groups, shutdown).await;
    }
    if let Some((queue_url, _)) = groups.pop() {
        // One queue, perhaps named by the mappings rather than --queue-url.
        settings.sqs.queue_url = queue_url;
    }
    process_queue(settings, shutdown).await
}

/// The run's mappings by the queue each reads (its `queue`, else the run's), in the order the
/// queues are first named.
fn by_queue(settings: &Settings) -> Vec<(String, Vec<crate::mapping::Mapping>)> {
    let mut groups: Vec<(String, Vec<crate::mapping::Mapping>)> = Vec::new();
    for mapping in &settings.mappings {
        let queue = mapping
            .queue
            .as_deref()
            .unwrap_or(&settings.sqs.queue_url)
            .trim_end_matches('/')
            .to_owned();
        match groups.iter_mut().find(|(q, _)| *q == queue) {
            Some((_, group)) => group.push(mapping.clone()),
            None => groups.push((queue, vec![mapping.clone()])),
        }
    }
    groups
}

/// Several queues in one process: a pipeline per queue, over the same database, at once. A
/// queue that fails (access revoked, deleted, unreachable) is reported as degraded and tried
/// again with backoff (under `run`, until the run ends; under `drain`, for the retry policy's
/// attempts), while the other queues keep loading; any other failure (the database, a table)
/// ends the whole run. The summary sums the queues and lists each; one metrics endpoint
/// serves them all (every series labelled with its queue), ready when every queue answers.
async fn several_queues(
    settings: Settings,
    groups: Vec<(String, Vec<crate::mapping::Mapping>)>,
    shutdown: CancellationToken,
) -> Result<Summary, AppError> {
    tracing::info!(
        queues = groups.len(),
        "several queues: one pipeline per queue"
    );
    // One endpoint and one live line for the process: readiness asks every queue, each
    // queue's depth is published under its own label, and the live line counts them all.
    let queues: Vec<Arc<Watched>> = groups
        .iter()
        .map(|(queue_url, _)| {
            let mut sqs = settings.sqs.clone();
            sqs.queue_url = queue_url.clone();
            Arc::new(Watched::new(sqs, None))
        })
        .collect();
    let endpoint = match settings.metrics_addr {
        Some(addr) => {
            Some(start_endpoint(addr, &settings, queues.clone(), shutdown.clone()).await?)
        }
        None => None,
    };
    let line_done = CancellationToken::new();
    let line = settings
        .show_progress
        .then(|| live_line(&settings, queues, line_done.clone()));
    // Cancelled by the first failure that is not a queue's: the other queues stop too.
    let stop_all = shutdown.child_token();
    let runs = groups.into_iter().map(|(queue_url, mappings)| {
        let mut own = settings.clone();
        own.table = crate::postgres::TableName::parse(&mappings[0].table)
            .expect("a mapping's table is checked when the mapping is read");
        own.sqs.queue_url = queue_url.clone();
        own.mappings = mappings;
        own.show_progress = false;
        own.metrics_addr = None;
        let stop_all = stop_all.clone();
        async move {
            let name = queue_label(&queue_url).to_owned();
            let result = serve_queue(own, &name, stop_all.clone()).await;
            if result.is_err() {
                stop_all.cancel();
            }
            (name, result)
        }
    });
    let mut summary = Summary::default();
    let mut failed = None;
    let results = futures_util::future::join_all(runs).await;
    line_done.cancel();
    if let Some(line) = line {
        // Cleared before the summary is printed.
        let _ = line.await;
    }
    if let Some(endpoint) = endpoint {
        endpoint.cancel();
    }
    for (name, result) in results {
        match result {
            Ok(part) => summary.add_queue(name, part),
            Err(error) => {
                tracing::error!(queue = %name, %error, "queue failed");
                failed.get_or_insert(error);
            }
        }
    }
    match failed {
        Some(error) => Err(error),
        None => Ok(summary),
    }
}

/// One queue of several: run, and while the queue itself fails, report it degraded and try
/// again (see [`several_queues`]).
async fn serve_queue(
    settings: Settings,
    name: &str,
    shutdown: CancellationToken,
) -> Result<Summary, AppError> {
    let mut backoff = settings.pipeline.source_retry.backoff();
    loop {
        let error = match process_queue(settings.clone(), shutdown.clone()).await {
            Ok(summary) => return Ok(summary),
            Err(error) => error,
        };
        let the_queue = matches!(
            error,
            AppError::Source(_) | AppError::Pipeline(PipelineError::Source { .. })
        );
        let delay = match settings.pipeline.mode {
            // A service keeps trying, at most a minute apart.
            Mode::Run => Some(
                backoff
                    .failed()
                    .unwrap_or(std::time::Duration::from_secs(60))
                    .min(std::time::Duration::from_secs(60)),
            ),
            Mode::Drain => backoff.failed(),
        };
        let (true, Some(delay), false) = (the_queue, delay, shutdown.is_cancelled()) else {
            return Err(error);
        };
        crate::telemetry::metrics::record_queue_degraded(name);
        tracing::warn!(queue = %name, %error, retry_in_ms = delay.as_millis() as u64, "queue degraded; the other queues keep loading; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return Err(error),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// [`process`] for one queue.
async fn process_queue(
    mut settings: Settings,
    shutdown: CancellationToken,
) -> Result<Summary, AppError> {
    let queue = Arc::new(open_queue(&settings.sqs).await?);
    let watched = Arc::new(Watched::new(settings.sqs.clone(), Some(queue.clone())));
    let endpoint = match settings.metrics_addr {
        Some(addr) => {
            Some(start_endpoint(addr, &settings, vec![watched.clone()], shutdown.clone()).await?)
        }
        None => None,
    };
    if settings.pipeline.visibility_timeout.is_none() {
        // The heartbeat needs the timeout the queue gives messages.
        let mut backoff = settings.pipeline.source_retry.backoff();
        settings.pipeline.visibility_timeout = loop {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return Ok(stopped_before_start()),
                answer = queue.visibility_timeout() => answer,
            };
            let e = match answer {
                Ok(timeout) => break Some(timeout),
                Err(e) => e,
            };
            let delay = backoff.failed();
            let (Fate::Retry, Some(delay)) = (fate(Outcome::Sqs(&e)), delay) else {
                return Err(e.into());
            };
            tracing::warn!(attempt = backoff.attempts(), error = %e, "cannot read the queue's visibility timeout; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(stopped_before_start()),
                _ = tokio::time::sleep(delay) => {}
            }
        };
    }
    let progress_done = CancellationToken::new();
    let progress_line = settings
        .show_progress
        .then(|| live_line(&settings, vec![watched], progress_done.clone()));
    let result = process_with(settings, queue, shutdown, |loader| loader).await;
    progress_done.cancel();
    if let Some(line) = progress_line {
        // Cleared before the summary is printed.
        let _ = line.await;
    }
    if let Some(endpoint) = endpoint {
        endpoint.cancel();
    }
    result
}

/// A queue the endpoint and the live line ask about, located the first time it answers (a
/// queue given by name that failed at start is found once it exists).
struct Watched {
    sqs: crate::sqs::queue::SqsSettings,
    located: tokio::sync::OnceCell<Arc<Queue>>,
}

impl Watched {
    fn new(sqs: crate::sqs::queue::SqsSettings, located: Option<Arc<Queue>>) -> Self {
        Self {
            sqs,
            located: tokio::sync::OnceCell::new_with(located),
        }
    }

    /// Its name, for labels and messages.
    fn name(&self) -> &str {
        queue_label(&self.sqs.queue_url)
    }

    /// `ApproximateNumberOfMessages` and `...NotVisible`, or why not, in words.
    async fn depth(&self) -> Result<(u64, u64), String> {
        let queue = self
            .located
            .get_or_try_init(|| async { open_queue(&self.sqs).await.map(Arc::new) })
            .await
            .map_err(|e| e.to_string())?;
        queue.approximate_depth().await.map_err(|e| e.to_string())
    }
}

/// Shows the live line (see `telemetry::progress`) until `done`: the run's counts, and what is
/// left in `queues` together (those that answer).
fn live_line(
    settings: &Settings,
    queues: Vec<Arc<Watched>>,
    done: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let queues = Arc::new(queues);
    tokio::spawn(crate::telemetry::progress::show(
        settings.pipeline.progress.clone(),
        move || {
            let queues = queues.clone();
            async move {
                let mut left = None;
                for queue in queues.iter() {
                    if let Ok((visible, in_flight)) = queue.depth().await {
                        *left.get_or_insert(0) += visible + in_flight;
                    }
                }
                left
            }
        },
        done,
    ))
}

/// Starts the `/metrics`, `/healthz`, `/readyz` endpoint and a depth poller per queue; returns
/// the token that stops them. Ready when PostgreSQL and every queue answer.
async fn start_endpoint(
    addr: std::net::SocketAddr,
    settings: &Settings,
    queues: Vec<Arc<Watched>>,
    shutdown: CancellationToken,
) -> Result<CancellationToken, AppError> {
    use crate::telemetry::http;
    let listener = http::bind(addr).await.map_err(|e| {
        ConfigError(format!(
            "--metrics-addr (SQS2PG_METRICS_ADDR) {addr} cannot be listened on: {e}; pick a free port"
        ))
    })?;
    let handle = http::install_recorder()
        .map_err(|e| ConfigError(format!("--metrics-addr (SQS2PG_METRICS_ADDR): {e}")))?;
    let ready: http::ReadyCheck = {
        let (database, all) = (settings.database.clone(), queues.clone());
        Arc::new(move || {
            let (database, all) = (database.clone(), all.clone());
            Box::pin(async move {
                let client = database
                    .connect()
                    .await
                    .map_err(|e| format!("PostgreSQL: {e}"))?;
                pg::inspect::ping(&client)
                    .await
                    .map_err(|e| format!("PostgreSQL: {}", pg::describe(&e)))?;
                let several = all.len() > 1;
                for queue in &all {
                    queue.depth().await.map_err(|e| {
                        if several {
                            format!("SQS queue {}: {e}", queue.name())
                        } else {
                            format!("SQS: {e}")
                        }
                    })?;
                }
                Ok(())
            })
        })
    };
    let stop = CancellationToken::new();
    tokio::spawn(http::serve(listener, handle, ready, shutdown, stop.clone()));
    for queue in queues {
        let meter = crate::telemetry::metrics::Meter::new(queue.name(), &[]);
        tokio::spawn(poll_queue_depth(queue, meter, stop.clone()));
    }
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(stop)
}

/// Publishes the queue's approximate depth every 15 s until `stop`.
async fn poll_queue_depth(
    queue: Arc<Watched>,
    meter: crate::telemetry::metrics::Meter,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match queue.depth().await {
            Ok((visible, in_flight)) => meter.record_queue_depth(visible, in_flight),
            Err(error) => tracing::debug!(%error, "queue depth not polled"),
        }
    }
}

/// Like [`process`] but with a given source and a hook around the loader: the seam where tests
/// inject faults (a source that loses deletes, a loader that fails).
pub async fn process_with<S, L, F>(
    mut settings: Settings,
    source: Arc<S>,
    shutdown: CancellationToken,
    wrap_loader: F,
) -> Result<Summary, AppError>
where
    S: crate::sqs::MessageSource,
    L: crate::pipeline::BatchLoader,
    F: FnOnce(TableLoader) -> L,
{
    let masker = Masker::with_modes(&settings.mask_key, settings.mask_modes);
    let fifo = crate::sqs::name::is_fifo(&settings.sqs.queue_url);
    // Per table the run writes: its name, the shape it must have, the token columns recorded.
    let tables: Vec<_> = Target::of_run(&settings.table, &settings.mappings)
        .into_iter()
        .map(|target| {
            let masked = target.masked_columns(settings.mask_modes);
            let shape = target.shape(fifo);
            (target.table, shape, masked)
        })
        .collect();
    // The database's side of starting, on one connection: the schema and tables checked, the
    // writers lock taken, the key recorded. Tried again whole, on a fresh connection, while it
    // fails transiently (a restarting server, a terminated backend), as loads are; a signal
    // meanwhile ends the run, since nothing was received yet.
    let mut backoff = settings.pipeline.load_retry.backoff();
    let (client, checks) = loop {
        let attempt = async {
            let mut client =
                connect_with_retry(&settings.database, &settings.pipeline.load_retry).await?;
            let mut checks = Vec::with_capacity(tables.len());
            for (table, shape, masked_columns) in &tables {
                let table_name = table.to_string();
                pg::check_shape(&client, table, shape).await?;
                // This connection holds "a run writes to this table" (a shared advisory lock)
                // until the run ends, so `rekey` (which takes it exclusively) never re-keys
                // under a running writer; a run starting during a rekey waits for it.
                pg::schema::lock_writers_shared(&client, &table_name)
                    .await
                    .map_err(AppError::Query)?;
                let (ip_mode, device_mode) = mapping::mask_record(masked_columns);
                let check = pg::schema::record_mask_key(
                    &mut client,
                    &table_name,
                    masker.key_id(),
                    &ip_mode,
                    &device_mode,
                    masked_columns,
                )
                .await
                .map_err(AppError::Query)?;
                let generated = pg::schema::generated_columns(&client, table)
                    .await
                    .map_err(AppError::Query)?;
                checks.push((check, generated, ip_mode, device_mode));
            }
            Ok::<_, AppError>((client, checks))
        };
        let error = tokio::select! {
            result = attempt => match result {
                Ok(ready) => break ready,
                Err(error) => error,
            },
            _ = shutdown.cancelled() => return Ok(stopped_before_start()),
        };
        let transient =
            postgres_error(&error).is_some_and(|pg| fate(Outcome::Postgres(pg)) == Fate::Retry);
        let (true, Some(delay)) = (transient, backoff.failed()) else {
            return Err(error);
        };
        tracing::warn!(attempt = backoff.attempts(), %error, "preparing the database for the run failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return Ok(stopped_before_start()),
        }
    };
    let writers_lock = client;
    let mut table_facts = Vec::with_capacity(tables.len());
    for ((table, _, _), (check, generated, ip_mode, device_mode)) in tables.iter().zip(checks) {
        table_facts.push(crate::pipeline::TableFacts {
            table: table.name().to_owned(),
            generated,
        });
        if let pg::schema::KeyCheck::Retired { to } = &check {
            return Err(ConfigError(format!(
                "masking key {} was retired on {table} by `sqs2pg rekey`: its tokens there now belong to key {to}, and writing under it again would mix keys; run with key {to} (the ring's active key, or SQS2PG_MASK_KEY)",
                masker.key_id()
            ))
            .into());
        }
        if let pg::schema::KeyCheck::Changed(change) = check {
            let (previous_ip, previous_device) = &change.previous_modes;
            if settings.key_rotation_intended {
                tracing::info!(
                    %table,
                    previous_key_id = %change.previous_key_id,
                    key_id = masker.key_id(),
                    "masking key or mode changed, as intended: tokens written from now on do not match earlier ones"
                );
            } else {
                tracing::warn!(
                    %table,
                    previous_key_id = %change.previous_key_id,
                    previous_ip_mode = %previous_ip,
                    previous_device_id_mode = %previous_device,
                    key_id = masker.key_id(),
                    ip_mode = %ip_mode,
                    device_id_mode = %device_mode,
                    "MASKING KEY OR MODE CHANGED since the last run: new tokens will not match the ones already in the table, so duplicates across the change go unseen. If this is a rotation, say so with --key-rotation-intended; if not, stop and use the previous key"
                );
            }
        }
    }
    settings.pipeline.table_facts = table_facts;
    // Taken now, after the metrics recorder is installed (see `start_endpoint`): every series
    // of the run is labelled with its queue, and its tables' with their mapping.
    let targets: Vec<String> = tables
        .iter()
        .map(|(table, _, _)| table.to_string())
        .collect();
    settings.pipeline.meter =
        crate::telemetry::metrics::Meter::new(queue_label(&settings.sqs.queue_url), &targets);
    if is_fifo(&settings.sqs.queue_url) {
        // One receiver takes messages in the order SQS hands them out and one loader keeps
        // that order to COMMIT, so no two messages of a group are processed at once, even on a
        // server that does not lock a group while part of it is in flight (LocalStack 0.14).
        if settings.pipeline.receivers > 1 || settings.pipeline.loaders > 1 {
            tracing::info!(
                receivers = settings.pipeline.receivers,
                loaders = settings.pipeline.loaders,
                "FIFO queue: one receiver and one loader, to keep each message group's order"
            );
        }
        settings.pipeline.receivers = 1;
        settings.pipeline.loaders = 1;
    }
    let sealer = BodySealer::new(&settings.mask_key);
    tracing::info!(key_id = masker.key_id(), table = %settings.table, mappings = settings.mappings.len(), mode = ?settings.pipeline.mode, "starting");
    let pruning = CancellationToken::new();
    let pruner = tokio::spawn(prune_ledger(
        settings.database.clone(),
        settings.ledger_retention,
        pruning.clone(),
    ));
    let mappings = std::mem::take(&mut settings.mappings);
    let kind: Box<dyn MessageKind> =
        super::target::kind_of(mappings, &settings.mask_key, settings.mask_modes)?;
    // Before the loader takes the settings: the record of attempts at suspects.
    let attempts: Arc<dyn pipeline::AttemptLog> = Arc::new(pg::attempts::AttemptRecorder::new(
        settings.database.clone(),
    ));
    let targets: Vec<_> = tables
        .into_iter()
        .map(|(table, _, _)| table)
        .zip(kind.writes())
        .collect();
    let loader = wrap_loader(TableLoader::new(
        settings.database,
        &targets,
        sealer.key_id().to_owned(),
    ));
    let result = pipeline::run(
        source,
        loader,
        kind,
        sealer,
        Some(attempts),
        settings.pipeline,
        shutdown,
    )
    .await;
    drop(writers_lock);
    pruning.cancel();
    let _ = pruner.await;
    Ok(result?)
}

/// The summary of a run stopped by a signal before it received anything.
fn stopped_before_start() -> Summary {
    tracing::info!("shutdown requested before the run started; nothing was received");
    Summary::default()
}

/// Prunes the ledger at start and then hourly, on its own connection, until `done`. Failures
/// are logged and tried again next hour: pruning is housekeeping, never a reason to stop.
async fn prune_ledger(database: Database, horizon: std::time::Duration, done: CancellationToken) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
    const ROWS_PER_STATEMENT: i64 = 10_000;
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        let prune = async {
            match database.connect().await {
                Ok(client) => pg::ledger::prune(&client, horizon, ROWS_PER_STATEMENT)
                    .await
                    .map_err(|e| pg::describe(&e)),
                Err(e) => Err(e.to_string()),
            }
        };
        // Housekeeping never holds up a shutdown; an interrupted prune resumes next time.
        let pruned = tokio::select! {
            _ = done.cancelled() => return,
            pruned = prune => pruned,
        };
        match pruned {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "pruned old ledger entries"),
            Err(error) => tracing::warn!(%error, "ledger pruning failed; trying again in an hour"),
        }
    }
}

/// Connects, retrying transient failures (server down or restarting) per the retry policy, so
/// `run` waits for a database that is not up yet and `drain` gives up after its attempts.
/// The PostgreSQL error behind a start-up failure, if one is.
fn postgres_error(error: &AppError) -> Option<&tokio_postgres::Error> {
    match error {
        AppError::Query(pg) | AppError::NotReady(pg::schema::NotReady::Database(pg)) => Some(pg),
        AppError::Connect(connect) => connect.postgres(),
        _ => None,
    }
}

async fn connect_with_retry(
    database: &Database,
    retry: &RetryPolicy,
) -> Result<tokio_postgres::Client, ConnectError> {
    let mut backoff = retry.backoff();
    loop {
        let error = match database.connect().await {
            Ok(client) => return Ok(client),
            Err(error) => error,
        };
        let transient = error
            .postgres()
            .is_some_and(|pg| fate(Outcome::Postgres(pg)) == Fate::Retry);
        let delay = backoff.failed();
        let (true, Some(delay)) = (transient, delay) else {
            return Err(error);
        };
        tracing::warn!(attempt = backoff.attempts(), %error, "cannot reach PostgreSQL; retrying");
        tokio::time::sleep(delay).await;
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
