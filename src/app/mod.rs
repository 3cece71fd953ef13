//! The commands, built from checked settings: the one place that wires the source, the masker,
//! the loader and the pipeline together. `main` and the integration tests both call these, so
//! tests run exactly what users run.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::error::{fate, Fate, Outcome};
use crate::kind::MessageKind;
use crate::login::{BodySealer, KeyRing, Masker};
use crate::pipeline::{self, PipelineError, Summary};
use crate::postgres::schema::{NotReady, SetupReport};
use crate::postgres::{self as pg, quarantine, ConnectError, Database, TableLoader, TableName};
use crate::retry::RetryPolicy;
use crate::sqs::queue::{is_fifo, SqsSettings};
use crate::sqs::{Outgoing, Queue, ReplayTag, SourceError, SourceErrorKind, SQS_BATCH_LIMIT};

mod keys;
pub mod mapping;
mod rekey;
pub use keys::keygen_ring;
pub use mapping::{draft_mapping, load_mapping, preview, write_new_file, Preview};
pub use rekey::{rekey, RekeyReport};

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
            AppError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// `sqs2pg setup`.
pub async fn setup(database: &Database, table: &TableName) -> Result<SetupReport, AppError> {
    setup_for(database, table, &pg::schema::TableShape::login()).await
}

/// `sqs2pg setup` for a table of the given shape (a mapping's).
pub async fn setup_for(
    database: &Database,
    table: &TableName,
    shape: &pg::schema::TableShape,
) -> Result<SetupReport, AppError> {
    let mut client = database.connect().await?;
    pg::setup(&mut client, table, shape)
        .await
        .map_err(AppError::Setup)
}

/// `sqs2pg drain` / `sqs2pg run`: checks the database, connects to the queue, runs the pipeline.
pub async fn process(
    mut settings: Settings,
    shutdown: CancellationToken,
) -> Result<Summary, AppError> {
    let queue = Arc::new(open_queue(&settings.sqs).await?);
    let endpoint = match settings.metrics_addr {
        Some(addr) => Some(start_endpoint(addr, &settings, queue.clone(), shutdown.clone()).await?),
        None => None,
    };
    if settings.pipeline.visibility_timeout.is_none() {
        // The heartbeat needs the timeout the queue gives messages.
        let retry = settings.pipeline.source_retry;
        let mut attempts = 0;
        settings.pipeline.visibility_timeout = loop {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return Ok(stopped_before_start()),
                answer = queue.visibility_timeout() => answer,
            };
            match answer {
                Ok(timeout) => break Some(timeout),
                Err(e) => {
                    attempts += 1;
                    if fate(Outcome::Sqs(&e)) != Fate::Retry || !retry.allows(attempts) {
                        return Err(e.into());
                    }
                    tracing::warn!(attempt = attempts, error = %e, "cannot read the queue's visibility timeout; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(stopped_before_start()),
                        _ = tokio::time::sleep(retry.delay(attempts)) => {}
                    }
                }
            }
        };
    }
    let progress_done = CancellationToken::new();
    let mut progress_line = None;
    if settings.show_progress {
        let (progress, queue) = (settings.pipeline.progress.clone(), queue.clone());
        progress_line = Some(tokio::spawn(crate::telemetry::progress::show(
            progress,
            move || {
                let queue = queue.clone();
                async move {
                    let (visible, in_flight) = queue.approximate_depth().await.ok()?;
                    Some(visible + in_flight)
                }
            },
            progress_done.clone(),
        )));
    }
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

/// Starts the `/metrics`, `/healthz`, `/readyz` endpoint and the queue-depth poller; returns
/// the token that stops both.
async fn start_endpoint(
    addr: std::net::SocketAddr,
    settings: &Settings,
    queue: Arc<Queue>,
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
        let (database, queue) = (settings.database.clone(), queue.clone());
        Arc::new(move || {
            let (database, queue) = (database.clone(), queue.clone());
            Box::pin(async move {
                let client = database
                    .connect()
                    .await
                    .map_err(|e| format!("PostgreSQL: {e}"))?;
                client
                    .simple_query("SELECT 1")
                    .await
                    .map_err(|e| format!("PostgreSQL: {}", pg::describe(&e)))?;
                queue
                    .approximate_depth()
                    .await
                    .map_err(|e| format!("SQS: {e}"))?;
                Ok(())
            })
        })
    };
    let stop = CancellationToken::new();
    tokio::spawn(http::serve(listener, handle, ready, shutdown, stop.clone()));
    tokio::spawn(poll_queue_depth(queue, stop.clone()));
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(stop)
}

/// Publishes the queue's approximate depth every 15 s until `stop`.
async fn poll_queue_depth(queue: Arc<Queue>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match queue.approximate_depth().await {
            Ok((visible, in_flight)) => {
                crate::telemetry::metrics::record_queue_depth(visible, in_flight)
            }
            Err(error) => tracing::debug!(%error, "queue depth not polled"),
        }
    }
}

/// Connects to the queue and resolves a queue given by name to its URL.
pub async fn open_queue(settings: &SqsSettings) -> Result<Queue, AppError> {
    let mut queue = Queue::connect(settings).await.map_err(ConfigError::from)?;
    queue.locate().await?;
    Ok(queue)
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
    // A signal while waiting for the database ends the run: nothing was received yet.
    let mut client = tokio::select! {
        client = connect_with_retry(&settings.database, &settings.pipeline.load_retry) => client?,
        _ = shutdown.cancelled() => return Ok(stopped_before_start()),
    };
    pg::check_shape(
        &client,
        &settings.table,
        &mapping::shape(settings.mapping.as_ref()),
    )
    .await?;
    let masker = Masker::with_modes(&settings.mask_key, settings.mask_modes);
    let masked_columns = mapping::masked_columns(settings.mapping.as_ref(), settings.mask_modes);
    let (ip_mode, device_mode) = mapping::mask_record(&masked_columns);
    // This connection holds "a run writes to this table" (a shared advisory lock) until the
    // run ends, so `rekey` (which takes it exclusively) never re-keys under a running writer;
    // a run starting during a rekey waits for it.
    let table_name = settings.table.to_string();
    let lock_sql = pg::schema::writers_lock_sql("pg_advisory_lock_shared");
    let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&table_name];
    tokio::select! {
        locked = client.execute(&lock_sql, &lock_params) => {
            locked.map_err(AppError::Query)?;
        }
        _ = shutdown.cancelled() => return Ok(stopped_before_start()),
    }
    let check = pg::schema::record_mask_key(
        &mut client,
        &table_name,
        masker.key_id(),
        &ip_mode,
        &device_mode,
        &masked_columns,
    )
    .await
    .map_err(AppError::Query)?;
    let writers_lock = client;
    if let pg::schema::KeyCheck::Retired { to } = &check {
        return Err(ConfigError(format!(
            "masking key {} was retired on {table_name} by `sqs2pg rekey`: its tokens there now belong to key {to}, and writing under it again would mix keys; run with key {to} (the ring's active key, or SQS2PG_MASK_KEY)",
            masker.key_id()
        ))
        .into());
    }
    if let pg::schema::KeyCheck::Changed(change) = check {
        let (previous_ip, previous_device) = &change.previous_modes;
        if settings.key_rotation_intended {
            tracing::info!(
                previous_key_id = %change.previous_key_id,
                key_id = masker.key_id(),
                "masking key or mode changed, as intended: tokens written from now on do not match earlier ones"
            );
        } else {
            tracing::warn!(
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
    tracing::info!(key_id = masker.key_id(), table = %settings.table, mapping = settings.mapping.is_some(), mode = ?settings.pipeline.mode, "starting");
    let pruning = CancellationToken::new();
    let pruner = tokio::spawn(prune_ledger(
        settings.database.clone(),
        settings.ledger_retention,
        pruning.clone(),
    ));
    let kind: Box<dyn MessageKind> = match settings.mapping.take() {
        None => Box::new(crate::login::LoginKind::new(masker)),
        Some(m) => Box::new(crate::mapping::Mapper::new(m, &settings.mask_key)),
    };
    let loader = wrap_loader(TableLoader::new(
        settings.database,
        settings.table,
        &kind.columns(),
        sealer.key_id().to_owned(),
    ));
    let result = pipeline::run(source, loader, kind, sealer, settings.pipeline, shutdown).await;
    drop(writers_lock);
    pruning.cancel();
    let _ = pruner.await;
    Ok(result?)
}

/// `sqs2pg unmask --query`: runs one read-only SELECT and returns its rows as tab-separated
/// lines (a header first). Values in `masked_ip` / `masked_device_id` columns that are tokens of
/// this key, for that column's field, are replaced by what they hide; everything else is shown
/// as it is (an `hmac` token stays a token).
///
/// The query runs as one statement of the extended protocol (which refuses several statements
/// in one string), wrapped as a subquery (so it must be a SELECT), in a read-only transaction
/// with a statement timeout: it cannot change the database. Prefer a SELECT-only role anyway.
pub async fn unmask_query(
    database: &Database,
    unmasker: &crate::login::Unmasker,
    query: &str,
) -> Result<Vec<String>, AppError> {
    query_unmasked(database, query, |column, value| {
        unmask_cell(unmasker, column, value)
    })
    .await
}

/// Runs `query` as [`unmask_query`] does, each non-NULL cell through
/// `unmask_cell(column, value)`.
pub async fn query_unmasked(
    database: &Database,
    query: &str,
    unmask_cell: impl Fn(&str, String) -> String,
) -> Result<Vec<String>, AppError> {
    let mut client = database.connect().await?;
    let tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(AppError::Query)?;
    tx.batch_execute("SET LOCAL statement_timeout = '60s'")
        .await
        .map_err(AppError::Query)?;
    let query = query.trim().trim_end_matches(';');
    let inner = format!("SELECT * FROM ({query}) AS q");
    let statement = tx.prepare(&inner).await.map_err(AppError::Query)?;
    let names: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    // Every value as text, in column order, row by row, whatever the column types.
    let cells = tx
        .query(
            &format!(
                "SELECT r.n, j.value FROM
                   (SELECT row_number() OVER () AS n, row_to_json(q) AS doc FROM ({query}) AS q) AS r,
                   LATERAL json_each_text(r.doc) WITH ORDINALITY AS j(key, value, k)
                 ORDER BY r.n, j.k"
            ),
            &[],
        )
        .await
        .map_err(AppError::Query)?;
    let mut lines = vec![names.join("\t")];
    let mut row: Vec<String> = Vec::with_capacity(names.len());
    let mut current = None;
    let flush = |row: &mut Vec<String>, lines: &mut Vec<String>| {
        if !row.is_empty() {
            lines.push(row.join("\t"));
            row.clear();
        }
    };
    for cell in &cells {
        let n: i64 = cell.get(0);
        if current != Some(n) {
            flush(&mut row, &mut lines);
            current = Some(n);
        }
        let column = names.get(row.len()).map_or("", String::as_str);
        let value: Option<String> = cell.get(1);
        row.push(match value {
            None => "NULL".to_owned(),
            Some(value) => unmask_cell(column, value),
        });
    }
    flush(&mut row, &mut lines);
    tx.rollback().await.map_err(AppError::Query)?;
    Ok(lines)
}

/// A cell of `unmask --query`: unmasked only in a token column, and only to that column's field.
fn unmask_cell(unmasker: &crate::login::Unmasker, column: &str, value: String) -> String {
    use crate::login::mask::Unmasked;
    match (column, unmasker.unmask(&value)) {
        ("masked_ip", Ok(Unmasked::Ip(ip))) => ip.to_string(),
        ("masked_device_id", Ok(Unmasked::DeviceId(id))) => id,
        _ => value,
    }
}

/// `sqs2pg report`: the table's aggregates.
pub async fn report(
    database: &Database,
    table: &TableName,
) -> Result<crate::report::Report, AppError> {
    let client = database.connect().await?;
    crate::report::build(&client, table)
        .await
        .map_err(AppError::Query)
}

/// One line of `sqs2pg check`.
#[derive(Debug, Clone)]
pub struct CheckItem {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// `sqs2pg check`: every dependency of a run, checked without processing anything. Each check
/// runs whatever the others found, so one run shows everything that needs fixing.
pub async fn check(settings: &Settings) -> Vec<CheckItem> {
    let mut items = vec![CheckItem {
        name: "masking key",
        ok: true,
        detail: format!(
            "loads; key id {} (tokens written now start with it)",
            Masker::new(&settings.mask_key).key_id()
        ),
    }];
    items.push(check_queue(&settings.sqs).await);
    items.extend(check_database(settings).await);
    items
}

async fn check_queue(sqs: &SqsSettings) -> CheckItem {
    let item = |ok, detail| CheckItem {
        name: "SQS queue",
        ok,
        detail,
    };
    let queue = match open_queue(sqs).await {
        Ok(queue) => queue,
        Err(e) => return item(false, e.to_string()),
    };
    let attrs = match queue.attributes(&["All"]).await {
        Ok(attrs) => attrs,
        Err(e) => return item(false, e.to_string()),
    };
    let get = |name: &str| {
        attrs
            .iter()
            .find(|(n, _)| n == name)
            .map_or("?", |(_, v)| v.as_str())
    };
    let redrive = match attrs.iter().find(|(n, _)| n == "RedrivePolicy") {
        Some((_, policy)) => format!("redrive policy {policy}"),
        None => {
            "no redrive policy (poison messages are quarantined after --max-receive-count)".into()
        }
    };
    item(
        true,
        format!(
            "{} readable over {}: {} visible, {} in flight; visibility timeout {} s; {redrive}",
            queue.queue_url(),
            queue.protocol_in_use(),
            get("ApproximateNumberOfMessages"),
            get("ApproximateNumberOfMessagesNotVisible"),
            get("VisibilityTimeout"),
        ),
    )
}

async fn check_database(settings: &Settings) -> Vec<CheckItem> {
    let item = |name, ok, detail| CheckItem { name, ok, detail };
    let client = match settings.database.connect().await {
        Ok(client) => client,
        Err(e) => {
            return vec![item("PostgreSQL", false, e.to_string())];
        }
    };
    let mut items = vec![item(
        "PostgreSQL",
        true,
        match client
            .query_one("SELECT current_user::text, version()", &[])
            .await
        {
            Ok(row) => format!(
                "connected as {}: {}",
                row.get::<_, String>(0),
                row.get::<_, String>(1)
            ),
            Err(e) => format!("connected ({})", pg::describe(&e)),
        },
    )];
    let shape = mapping::shape(settings.mapping.as_ref());
    items.push(
        match pg::check_shape(&client, &settings.table, &shape).await {
            Ok(()) => item(
                "schema and table",
                true,
                if settings.mapping.is_some() {
                    format!(
                        "sqs2pg schema current; {} has the mapping's columns",
                        settings.table
                    )
                } else {
                    format!(
                        "sqs2pg schema current; {} matches the analysts' DDL",
                        settings.table
                    )
                },
            ),
            Err(e) => item("schema and table", false, e.to_string()),
        },
    );
    items.push(
        match pg::schema::missing_privileges(&client, &settings.table).await {
            Ok(missing) if missing.is_empty() => item(
                "privileges",
                true,
                "INSERT on the table, the ledger and the reject table; TEMP on the database".into(),
            ),
            Ok(missing) => item(
                "privileges",
                false,
                format!("missing: {}; GRANT them to this user", missing.join(", ")),
            ),
            Err(e) => item("privileges", false, pg::describe(&e)),
        },
    );
    items
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
async fn connect_with_retry(
    database: &Database,
    retry: &RetryPolicy,
) -> Result<tokio_postgres::Client, ConnectError> {
    let mut attempts = 0u32;
    loop {
        let error = match database.connect().await {
            Ok(client) => return Ok(client),
            Err(error) => error,
        };
        attempts += 1;
        let transient = error
            .postgres()
            .is_some_and(|pg| fate(Outcome::Postgres(pg)) == Fate::Retry);
        if !transient || !retry.allows(attempts) {
            return Err(error);
        }
        tracing::warn!(attempt = attempts, %error, "cannot reach PostgreSQL; retrying");
        tokio::time::sleep(retry.delay(attempts)).await;
    }
}

/// `sqs2pg send`: one message per non-blank line, 10 per SendMessageBatch, `concurrency` calls
/// in flight; entries SQS refuses transiently are retried. Returns the number sent.
pub async fn send(
    settings: &SqsSettings,
    file: &Path,
    create_queue: bool,
    concurrency: usize,
) -> Result<u64, AppError> {
    let file_error = |error| AppError::File {
        path: file.display().to_string(),
        error,
    };
    let reader = std::io::BufReader::new(std::fs::File::open(file).map_err(file_error)?);
    let mut bodies = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(file_error)?;
        if !line.trim().is_empty() {
            bodies.push(Outgoing::new(line));
        }
    }
    let mut queue = Queue::connect(settings).await.map_err(ConfigError::from)?;
    if create_queue {
        queue.create_queue().await?;
    } else {
        queue.locate().await?;
    }
    let chunks: Vec<Vec<Outgoing>> = bodies
        .chunks(SQS_BATCH_LIMIT)
        .map(<[Outgoing]>::to_vec)
        .collect();
    // A FIFO queue keeps the order messages arrive in: one call at a time, each chunk (and
    // its retries) done before the next.
    let concurrency = if is_fifo(queue.queue_url()) {
        1
    } else {
        concurrency.max(1)
    };
    let results: Vec<Result<u64, SourceError>> = stream::iter(chunks)
        .map(|chunk| send_chunk(&queue, chunk))
        .buffered(concurrency)
        .collect()
        .await;
    let mut sent = 0;
    for r in results {
        sent += r?;
    }
    Ok(sent)
}

async fn send_chunk(queue: &Queue, mut chunk: Vec<Outgoing>) -> Result<u64, SourceError> {
    const ATTEMPTS: u32 = 5;
    let total = chunk.len() as u64;
    for attempt in 1..=ATTEMPTS {
        let error = match queue.send_batch(&chunk).await {
            Ok(refused) if refused.is_empty() => return Ok(total),
            Ok(refused) => {
                chunk = refused;
                None
            }
            Err(e) if fate(Outcome::Sqs(&e)) == Fate::Retry => Some(e),
            Err(e) => return Err(e),
        };
        if attempt == ATTEMPTS {
            return Err(error.unwrap_or_else(|| {
                SourceError::new(
                    SourceErrorKind::Transient,
                    "SendMessageBatch",
                    format!(
                        "{} entries still refused after {ATTEMPTS} attempts",
                        chunk.len()
                    ),
                )
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
    }
    unreachable!("the last attempt returns")
}

/// `sqs2pg rejects list`: counts by reason and the most recent rejections, as text. Ids,
/// reasons, value-free details and times only.
pub async fn rejects_list(database: &Database, limit: i64) -> Result<String, AppError> {
    use std::fmt::Write as _;
    let client = database.connect().await?;
    pg::check_ready_schema(&client).await?;
    let counts = quarantine::counts_by_reason(&client)
        .await
        .map_err(AppError::Query)?;
    let recent = quarantine::recent(&client, limit)
        .await
        .map_err(AppError::Query)?;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let mut out = format!("rejected messages: {total}\n");
    for (reason, n) in &counts {
        let _ = writeln!(out, "  {reason:<32}{n:>8}");
    }
    if !recent.is_empty() {
        let _ = writeln!(out, "most recent {}:", recent.len());
    }
    for r in &recent {
        let replayed = if r.replayed_at.is_some() {
            "  [replayed]"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {}  {}  {}  receives={}  {}{replayed}",
            rfc3339(r.received_at),
            r.message_id,
            r.reason,
            r.receive_count,
            r.detail.as_deref().unwrap_or("-"),
        );
    }
    Ok(out)
}

/// `sqs2pg rejects show ID`: the decrypted body of one rejected message.
pub async fn rejects_show(
    database: &Database,
    keys: &KeyRing,
    message_id: &str,
) -> Result<String, AppError> {
    let client = database.connect().await?;
    pg::check_ready_schema(&client).await?;
    let reject = quarantine::sealed(&client, message_id)
        .await
        .map_err(AppError::Query)?
        .ok_or_else(|| AppError::Quarantine(format!("no rejected message with id {message_id}")))?;
    open_reject(&Sealers::new(keys), &reject)
}

/// What `rejects replay` did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub sent: u64,
    /// Message ids left alone, each with why (already loaded, no body, another key).
    pub skipped: Vec<String>,
}

/// `sqs2pg rejects replay`: sends the original bodies of the selected rejections to `to`, ten
/// at a time, each ten locked, sent and marked in one transaction.
///
/// Idempotent: replay N of a message carries the ledger id `message_id#replayN` (and its
/// original SentTimestamp) as message attributes, so a replay sent twice (a crash between
/// sending and COMMIT, a partly refused batch, a second replay) is still loaded at most once. A
/// new number is issued only when the previous replay was quarantined again; a rejection whose
/// replay was loaded is skipped.
pub async fn rejects_replay(
    database: &Database,
    keys: &KeyRing,
    to: &SqsSettings,
    selection: &quarantine::ReplaySelection,
) -> Result<ReplayReport, AppError> {
    let sealer = Sealers::new(keys);
    let mut client = database.connect().await?;
    pg::check_ready_schema(&client).await?;
    let queue = open_queue(to).await?;
    let mut report = ReplayReport::default();
    let mut done: Vec<String> = Vec::new();
    loop {
        let tx = client.transaction().await.map_err(AppError::Query)?;
        let candidates = quarantine::lock_for_replay(&tx, selection, &done, SQS_BATCH_LIMIT as i64)
            .await
            .map_err(AppError::Query)?;
        if candidates.is_empty() {
            tx.commit().await.map_err(AppError::Query)?;
            return Ok(report);
        }
        let (mut outgoing, mut ids, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for c in candidates {
            let id = c.sealed.message_id.clone();
            done.push(id.clone());
            let n = match (c.replay_count, c.last_outcome.as_deref()) {
                (n, Some("loaded")) if n > 0 => {
                    report
                        .skipped
                        .push(format!("{id}: already loaded by replay {n}"));
                    continue;
                }
                // Never replayed, or the last replay was quarantined again: a new number.
                (0, _) | (_, Some(_)) => c.replay_count + 1,
                // Sent before but not processed yet: the same number, so it loads once.
                (n, None) => n,
            };
            match open_reject(&sealer, &c.sealed) {
                Ok(body) => {
                    outgoing.push(Outgoing::replay(
                        body,
                        ReplayTag {
                            ledger_id: quarantine::replay_ledger_id(&id, n),
                            sent_timestamp: c.sent_timestamp,
                        },
                    ));
                    ids.push(id);
                    counts.push(n);
                }
                Err(e) => report.skipped.push(e.to_string()),
            }
        }
        if !outgoing.is_empty() {
            report.sent += send_chunk(&queue, outgoing).await?;
            quarantine::mark_replayed(&tx, &ids, &counts, queue.queue_url())
                .await
                .map_err(AppError::Query)?;
        }
        tx.commit().await.map_err(AppError::Query)?;
    }
}

/// A body sealer per key of the ring, to open bodies sealed under any of them.
struct Sealers {
    sealers: Vec<BodySealer>,
    active: usize,
}

impl Sealers {
    fn new(keys: &KeyRing) -> Self {
        let sealers: Vec<BodySealer> = keys
            .keys()
            .iter()
            .map(|k| BodySealer::new(&k.key))
            .collect();
        let active = sealers
            .iter()
            .position(|s| s.key_id() == keys.active_id())
            .unwrap_or(0);
        Self { sealers, active }
    }
}

fn open_reject(sealers: &Sealers, reject: &quarantine::SealedReject) -> Result<String, AppError> {
    let id = &reject.message_id;
    let sealed = reject.body_sealed.as_deref().ok_or_else(|| {
        AppError::Quarantine(format!("rejected message {id} was stored without its body"))
    })?;
    // Rows from before key ids were recorded were sealed under the key of that time: try the
    // active one.
    let sealer = match reject.seal_key_id.as_deref() {
        None => &sealers.sealers[sealers.active],
        Some(kid) => sealers
            .sealers
            .iter()
            .find(|s| s.key_id() == kid)
            .ok_or_else(|| {
                let given: Vec<&str> = sealers.sealers.iter().map(|s| s.key_id()).collect();
                AppError::Quarantine(format!(
                    "rejected message {id} was sealed under key {kid}, which is not among the keys given ({})",
                    given.join(", ")
                ))
            })?,
    };
    sealer
        .open(id, sealed)
        .map_err(|e| AppError::Quarantine(format!("rejected message {id}: {e}")))
}

fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "?".into())
}
