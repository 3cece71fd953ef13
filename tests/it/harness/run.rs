//! The login pipeline run in process, as the tests set it up: arguments as a user gives them
//! (short waits), a fresh database and queue, `setup`, drains, and counts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqs2pg::app::{self};
use sqs2pg::cli::{DatabaseArgs, KeyArgs, PipelineArgs, QueueArgs};
use sqs2pg::config;
use sqs2pg::keys::MaskKey;
use sqs2pg::pipeline::{Mode, PipelineError, Summary};
use sqs2pg::postgres::{Database, TableName};
use tokio_util::sync::CancellationToken;

use crate::harness::{key_file, Sqs, TestDb, TestQueue};

/// Drain arguments as a user would give them, with short waits for tests.
pub fn args(db: &TestDb, queue: &TestQueue, key: PathBuf) -> PipelineArgs {
    PipelineArgs {
        database: DatabaseArgs {
            connection: sqs2pg::cli::ConnectionArgs {
                database_url: Some(db.url.clone()),
            },
            table: "public.user_logins".into(),
            mapping_file: sqs2pg::cli::MappingFileArgs::default(),
        },
        queue: QueueArgs {
            queue_url: Some(queue.url.clone()),
            endpoint_url: Some(queue.endpoint.clone()),
            sqs_protocol: queue.protocol,
        },
        key: KeyArgs {
            mask_key: None,
            mask_key_file: Some(key),
            mask_key_ring: None,
        },
        receivers: 4,
        loaders: 2,
        wait_time_secs: 1,
        visibility_timeout_secs: None,
        batch_max_rows: 1000,
        batch_max_age_ms: 200,
        max_body_bytes: sqs2pg::config::DEFAULT_MAX_BODY_BYTES,
        max_attempts: 3,
        max_receive_count: 25,
        max_crashes: sqs2pg::config::DEFAULT_MAX_CRASHES,
        ledger_retention_days: 30,
        shutdown_timeout_secs: 25,
        max_in_flight_bytes: 64 << 20,
        max_in_flight_messages: sqs2pg::config::DEFAULT_MAX_IN_FLIGHT_MESSAGES,
        metrics_addr: None,
        ip: sqs2pg::cli::IpMaskArgs {
            ip_mask: sqs2pg::mask::MaskMode::Hmac,
        },
        device_id_mask: sqs2pg::mask::MaskMode::Hmac,
        key_rotation_intended: false,
    }
}

/// A fresh database (set up) and a fresh queue on moto, spoken to in JSON.
pub async fn fixture() -> (TestDb, TestQueue) {
    fixture_on(Sqs::MotoJson).await
}

/// A fresh database (set up) and a fresh queue on the given SQS server.
pub async fn fixture_on(sqs: Sqs) -> (TestDb, TestQueue) {
    let (db, queue) = (TestDb::new().await, TestQueue::on(sqs).await);
    setup(&db).await;
    (db, queue)
}

/// Drain arguments with a freshly generated masking key.
pub fn fresh_args(db: &TestDb, queue: &TestQueue) -> PipelineArgs {
    args(db, queue, key_file(&MaskKey::generate_base64().unwrap()))
}

pub async fn setup(db: &TestDb) {
    let database = Database::parse(&db.url).unwrap();
    app::setup(&database, &TableName::parse("public.user_logins").unwrap())
        .await
        .unwrap();
}

pub async fn count(db: &TestDb, sql: &str) -> i64 {
    one(db, sql).await
}

/// The one value a query returns.
pub async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(db: &TestDb, sql: &str) -> T {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// Drains through `source` until the queue holds nothing, visible or in flight, in as many
/// runs as that takes (bounded); their counts added up.
pub async fn drain_until_empty<S: sqs2pg::sqs::MessageSource>(
    args: &PipelineArgs,
    source: &Arc<S>,
    queue: &TestQueue,
) -> Summary {
    let mut total = Summary::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let settings = config::pipeline(args, Mode::Drain).unwrap();
        let s = match app::process_with(settings, source.clone(), CancellationToken::new(), |l| l)
            .await
        {
            Ok(s) => s,
            // A delete SQS refused makes a drain incomplete (exit 1): the message comes back
            // and the next run skips it. moto also refuses the handle of a delivery it handed
            // out while another handle deleted the message (its receive and delete race), so a
            // refused delete is one more reason to run again, not a failure here; the loop
            // ends only when the queue holds nothing, and the callers count rows and ledger.
            Err(app::AppError::Pipeline(PipelineError::Incomplete(s)))
                if s.md5_mismatches == 0 && s.left_for_redelivery == 0 =>
            {
                *s
            }
            Err(e) => panic!("drain failed: {e:?}"),
        };
        total.loaded += s.loaded;
        total.rows += s.rows;
        total.duplicates += s.duplicates;
        total.redelivered_while_held += s.redelivered_while_held;
        total.rejected.extend(s.rejected);
        if queue.depth().await == 0 {
            return total;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redeliveries not all seen: {total:?}"
        );
    }
}

pub async fn drain(args: &PipelineArgs) -> Summary {
    let settings = config::pipeline(args, Mode::Drain).unwrap();
    app::process(settings, CancellationToken::new())
        .await
        .unwrap()
}
