//! The pipeline end to end on real servers: the sample, redelivery, loader failure, replicas.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqs2pg::app::{self, AppError};
use sqs2pg::cli::{DatabaseArgs, KeyArgs, PipelineArgs, QueueArgs};
use sqs2pg::config;
use sqs2pg::login::{MaskKey, Masker};
use sqs2pg::pipeline::{Mode, PipelineError, Summary};
use sqs2pg::postgres::{Database, TableName};
use tokio_util::sync::CancellationToken;

use crate::faults::{CountingLoader, DeleteFault, FailingLoader, FaultySource};
use crate::harness::{
    key_file, sample_bodies, wait_until, OwnMoto, OwnPostgres, Sqs, TestDb, TestQueue,
};

/// Drain arguments as a user would give them, with short waits for tests.
pub fn args(db: &TestDb, queue: &TestQueue, key: PathBuf) -> PipelineArgs {
    PipelineArgs {
        database: DatabaseArgs {
            database_url: Some(db.url.clone()),
            table: "public.user_logins".into(),
            mapping: None,
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
        max_body_bytes: 256 * 1024,
        max_attempts: 3,
        max_receive_count: 25,
        ledger_retention_days: 30,
        shutdown_timeout_secs: 25,
        max_in_flight_bytes: 64 << 20,
        max_in_flight_messages: sqs2pg::config::DEFAULT_MAX_IN_FLIGHT_MESSAGES,
        metrics_addr: None,
        ip_mask: sqs2pg::login::MaskMode::Hmac,
        device_id_mask: sqs2pg::login::MaskMode::Hmac,
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
fn fresh_args(db: &TestDb, queue: &TestQueue) -> PipelineArgs {
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
        let s = app::process_with(settings, source.clone(), CancellationToken::new(), |l| l)
            .await
            .unwrap();
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

on_every_sqs!(sample_gives_99_rows_1_rejection_and_an_empty_queue_without_pii_in_logs);
async fn sample_gives_99_rows_1_rejection_and_an_empty_queue_without_pii_in_logs(sqs: Sqs) {
    let (db, queue) = fixture_on(sqs).await;
    match sqs {
        // `auto` found out, on creating the queue, that this server speaks only query...
        Sqs::LocalStack014 => {
            assert_eq!(queue.queue.protocol_in_use(), sqs2pg::sqs::Protocol::Query)
        }
        // ...and stays on JSON where JSON works.
        Sqs::LocalStack4 => assert_eq!(queue.queue.protocol_in_use(), sqs2pg::sqs::Protocol::Json),
        Sqs::MotoJson | Sqs::MotoQuery => {}
    }
    let bodies = sample_bodies();
    assert_eq!(bodies.len(), 100);
    let day_before = time::OffsetDateTime::now_utc().date();
    queue.send(&bodies).await;
    let key = MaskKey::generate_base64().unwrap();
    let summary = drain(&args(&db, &queue, key_file(&key))).await;
    let day_after = time::OffsetDateTime::now_utc().date();

    // moto sometimes hands one message to two concurrent receivers: every extra delivery must
    // show up as a duplicate, never as a row.
    assert!(summary.received >= 100, "{summary:?}");
    assert_eq!(summary.received - summary.duplicates, 100, "{summary:?}");
    assert_eq!(summary.loaded, 99);
    assert_eq!(summary.rejected.get("missing_field:user_id"), Some(&1));
    assert_eq!(summary.rejected_total(), 1);
    assert!(summary.deleted >= 100, "{summary:?}");
    assert_eq!(queue.depth().await, 0);

    let client = db.client().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        99
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.user_logins WHERE locale IS NULL"
        )
        .await,
        29
    );
    assert_eq!(count(&db, "SELECT count(*) FROM sqs2pg.ledger").await, 100);
    let reject = client
        .query_one(
            "SELECT reason, receive_count FROM sqs2pg.rejected_messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(reject.get::<_, String>(0), "missing_field:user_id");
    assert_eq!(reject.get::<_, i32>(1), 1);

    // create_date is the UTC day the messages were sent.
    let dates = client
        .query("SELECT DISTINCT create_date FROM public.user_logins", &[])
        .await
        .unwrap();
    for row in dates {
        let d: time::Date = row.get(0);
        assert!(d == day_before || d == day_after, "{d}");
    }

    // Every row matches its source body: masks are the keyed tokens, never raw values.
    let masker = Masker::new(&MaskKey::from_base64(&key).unwrap());
    for body in &bodies {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let Some(user_id) = v["user_id"].as_str() else {
            continue;
        };
        let row = client
            .query_one(
                "SELECT masked_ip, masked_device_id, app_version, sqs2pg.app_version_text(app_version), device_type
                   FROM public.user_logins WHERE user_id = $1",
                &[&user_id],
            )
            .await
            .unwrap();
        let ip = v["ip"].as_str().unwrap();
        let device_id = v["device_id"].as_str().unwrap();
        assert_eq!(
            row.get::<_, String>(0),
            masker.mask_ip(ip.parse().unwrap()).as_str()
        );
        assert_eq!(
            row.get::<_, String>(1),
            masker.mask_device_id(device_id).unwrap().as_str()
        );
        assert!(!row.get::<_, String>(0).contains(ip));
        let version = v["app_version"].as_str().unwrap();
        let encoded = sqs2pg::login::AppVersion::parse(version).unwrap();
        assert_eq!(row.get::<_, i32>(2), encoded.encode());
        assert_eq!(row.get::<_, String>(3), encoded.to_string());
        assert_eq!(row.get::<_, String>(4), v["device_type"].as_str().unwrap());
    }

    // Nothing personal reached the logs (of every test so far), though they recorded the run.
    let text = crate::harness::captured_logs();
    assert!(
        text.contains("message rejected") && text.contains("missing_field:user_id"),
        "{text}"
    );
    for body in &bodies {
        assert!(!text.contains(body.as_str()), "a body reached the logs");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        for field in ["ip", "device_id"] {
            if let Some(value) = v[field].as_str() {
                assert!(!text.contains(value), "a raw {field} reached the logs");
            }
        }
    }
    assert!(!text.contains(&key), "the key reached the logs");
}

on_every_sqs!(redelivery_after_a_lost_delete_adds_no_second_row);
async fn redelivery_after_a_lost_delete_adds_no_second_row(sqs: Sqs) {
    let (db, queue) = fixture_on(sqs).await;
    queue.send(&sample_bodies()).await;
    let mut a = fresh_args(&db, &queue);
    a.visibility_timeout_secs = Some(1);

    // Every message's first delete is lost (a crash between COMMIT and delete), so after the
    // 1 s visibility timeout SQS redelivers them. Drain until the queue holds nothing, visible
    // or in flight, in as many runs as that takes (bounded).
    let lossy = Arc::new(FaultySource::new(queue.queue.clone()).deletes(DeleteFault::LoseFirst));
    let total = drain_until_empty(&a, &lossy, &queue).await;
    assert!(lossy.swallowed.load(Ordering::SeqCst) >= 100);
    // Each message whose delete was lost came back and was skipped as a duplicate, unless it
    // came back while still held (a slow server at a 1 s timeout): then its older receipt
    // handle, deleted too, removed it for good.
    assert!(
        total.duplicates + total.redelivered_while_held >= 100,
        "{total:?}"
    );
    assert!(total.duplicates > 0, "{total:?}");
    assert_eq!(total.loaded, 99);
    assert_eq!(total.rejected_total(), 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        99
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM sqs2pg.rejected_messages").await,
        1
    );
    assert_eq!(count(&db, "SELECT count(*) FROM sqs2pg.ledger").await, 100);
    // The redeliveries were deleted for real.
    assert_eq!(queue.distinct_ids(1, Duration::from_secs(3)).await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_ledger_upgrade_ids_in_the_retired_ledger_are_not_loaded_again() {
    use sqs2pg::sqs::MessageSource;
    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    let mut client = db.client().await;
    let table = TableName::parse("public.user_logins").unwrap();
    // The schema as a build before version 8 left it...
    sqs2pg::postgres::schema::setup_up_to(
        &mut client,
        &table,
        &sqs2pg::postgres::schema::TableShape::login(),
        7,
    )
    .await
    .unwrap();
    let logins: Vec<String> = sample_bodies()
        .into_iter()
        .filter(|b| b.contains("device_id"))
        .take(3)
        .collect();
    queue.send(&logins).await;
    let mut held = Vec::new();
    while held.len() < 3 {
        held.extend(
            queue
                .queue
                .receive(10, Duration::from_secs(1), Some(Duration::from_secs(60)))
                .await
                .unwrap(),
        );
    }
    // ...with two of these messages committed by it (their deletes lost) and a replay loaded.
    let (done, fresh): (Vec<_>, Vec<_>) = held
        .iter()
        .partition(|m| m.ack.message_id != held[2].ack.message_id);
    let done_ids: Vec<String> = done.iter().map(|m| m.ack.message_id.clone()).collect();
    client
        .execute(
            "INSERT INTO sqs2pg.processed_messages (message_id, outcome)
             SELECT unnest($1::text[]), 'loaded' UNION ALL SELECT 'x#replay1', 'loaded'",
            &[&done_ids],
        )
        .await
        .unwrap();
    assert_eq!(fresh.len(), 1);
    let acks: Vec<_> = held.iter().map(|m| m.ack.clone()).collect();
    queue
        .queue
        .change_visibility(&acks, Duration::ZERO)
        .await
        .unwrap();

    setup(&db).await;
    // The replay moved to the new ledger (at send time 0); the other ids stay where they were.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqs2pg.ledger WHERE sent_ms = 0 AND message_id = 'x#replay1'"
        )
        .await,
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM sqs2pg.processed_messages").await,
        2
    );
    // An older build still running cannot add to the retired ledger.
    let refused = client
        .execute(
            "INSERT INTO sqs2pg.processed_messages (message_id, outcome) VALUES ('late', 'loaded')",
            &[],
        )
        .await
        .expect_err("the retired ledger takes no new ids");
    assert!(
        sqs2pg::postgres::describe(&refused).contains("schema version 8"),
        "{refused:?}"
    );

    let summary = drain(&fresh_args(&db, &queue)).await;
    assert_eq!((summary.loaded, summary.duplicates), (1, 2), "{summary:?}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        1
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM sqs2pg.ledger WHERE sent_ms > 0").await,
        1
    );
    assert_eq!(queue.distinct_ids(1, Duration::from_secs(3)).await.len(), 0);
}

/// A batch of the sample's logins under the given ledger ids, sent at millisecond `i` of each.
fn login_batch(ids: &[&str], sent_ms: i64) -> sqs2pg::pipeline::batch::Batch {
    use sqs2pg::pipeline::batch::{Batch, Delivery, HeldBody, Row};
    let masker = Masker::new(&MaskKey::from_base64(&MaskKey::generate_base64().unwrap()).unwrap());
    let body = sample_bodies()
        .into_iter()
        .find(|b| b.contains("device_id"))
        .unwrap();
    let rows = ids
        .iter()
        .enumerate()
        .map(|(ack_index, id)| Row {
            ack_index,
            message_id: (*id).to_owned(),
            rows: sqs2pg::login::transform(&masker, 1 << 20, &body, sent_ms)
                .outcome
                .unwrap()
                .encode(),
            delivery: Delivery {
                received_at: std::time::SystemTime::now(),
                receive_count: 1,
                sent_timestamp: sent_ms,
                ledger_ms: sent_ms,
            },
            body: HeldBody::new(body.clone()),
        })
        .collect();
    Batch::part(rows, Vec::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_copies_new_ids_and_claims_them_after_meeting_a_known_one() {
    use sqs2pg::pipeline::BatchLoader;
    use sqs2pg::postgres::TableLoader;
    let db = TestDb::new().await;
    setup(&db).await;
    let table = TableName::parse("public.user_logins").unwrap();
    let columns: Vec<String> = sqs2pg::login::kind::COLUMNS
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    let mut loader = TableLoader::new(
        Database::parse(&db.url).unwrap(),
        table,
        &columns,
        "k".into(),
    );
    let sent = 1_700_000_000_000;
    assert!(loader.copies_ledger());
    let report = loader
        .load(&login_batch(&["a", "b", "c"], sent))
        .await
        .unwrap();
    assert_eq!((report.loaded, report.duplicates), (3, 0));
    assert!(loader.copies_ledger(), "every id was new");

    // "c" again: the COPY fails on the ledger's key, and the batch is claimed instead.
    let report = loader.load(&login_batch(&["c", "d"], sent)).await.unwrap();
    assert_eq!((report.loaded, report.duplicates), (1, 1));
    assert!(!loader.copies_ledger(), "it met a known id");
    // Claimed while ids repeat...
    let report = loader.load(&login_batch(&["d", "e"], sent)).await.unwrap();
    assert_eq!((report.loaded, report.duplicates), (1, 1));
    assert!(!loader.copies_ledger());
    // ...and copied again after a batch of new ids only.
    let report = loader.load(&login_batch(&["f"], sent)).await.unwrap();
    assert_eq!((report.loaded, report.duplicates), (1, 0));
    assert!(loader.copies_ledger());
    // The same message id sent at another time is another message (SQS never does this).
    let report = loader.load(&login_batch(&["a"], sent + 1)).await.unwrap();
    assert_eq!((report.loaded, report.duplicates), (1, 0));
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        7
    );
    assert_eq!(count(&db, "SELECT count(*) FROM sqs2pg.ledger").await, 7);

    // While the retired ledger holds ids, every load claims, skipping those ids too.
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE sqs2pg.processed_messages DISABLE TRIGGER processed_messages_retired;
             INSERT INTO sqs2pg.processed_messages (message_id, outcome) VALUES ('old', 'loaded');
             ALTER TABLE sqs2pg.processed_messages ENABLE TRIGGER processed_messages_retired;",
        )
        .await
        .unwrap();
    let mut loader = loader.fork().unwrap();
    let report = loader
        .load(&login_batch(&["old", "g"], sent))
        .await
        .unwrap();
    assert_eq!((report.loaded, report.duplicates), (1, 1));
    assert!(!loader.copies_ledger(), "the retired ledger holds ids");
}

on_every_sqs!(a_fifo_queue_is_loaded_once_in_send_order);
async fn a_fifo_queue_is_loaded_once_in_send_order(sqs: Sqs) {
    let db = TestDb::new().await;
    setup(&db).await;
    let queue = TestQueue::fifo_on(sqs).await;
    let bodies = sample_bodies();
    // One message group (what `send` does on a FIFO queue): SQS hands out the group's next
    // messages only once the ones in flight are deleted, so receives see the send order.
    queue.send(&bodies).await;
    let recording = Arc::new(FaultySource::new(queue.queue.clone()));
    let settings = config::pipeline(&fresh_args(&db, &queue), Mode::Drain).unwrap();
    let summary = app::process_with(settings, recording.clone(), CancellationToken::new(), |l| l)
        .await
        .unwrap();
    assert_eq!(summary.loaded, 99, "{summary:?}");
    assert_eq!(summary.rejected_total(), 1, "{summary:?}");
    assert_eq!(queue.depth().await, 0);
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT user_id) FROM public.user_logins"
        )
        .await,
        99
    );
    let received = recording.received_bodies.lock().unwrap().clone();
    assert_eq!(received, bodies, "received in send order, each once");
}

on_every_sqs!(a_queue_given_by_name_is_found_on_the_endpoint);
async fn a_queue_given_by_name_is_found_on_the_endpoint(sqs: Sqs) {
    let (db, queue) = fixture_on(sqs).await;
    let bodies = sample_bodies();
    queue.send(&bodies[..20]).await;
    let name = queue.url.rsplit('/').next().unwrap().to_owned();
    let mut a = fresh_args(&db, &queue);
    a.queue.queue_url = Some(name.clone());
    let summary = drain(&a).await;
    assert_eq!(summary.loaded + summary.rejected_total(), 20, "{summary:?}");
    assert_eq!(queue.depth().await, 0);
    // A name the server does not know is a clear, permanent error.
    a.queue.queue_url = Some(format!("{name}-missing"));
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let e = app::process(settings, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GetQueueUrl") && e.contains("NonExistentQueue"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_drain_loses_nothing_and_doubles_nothing() {
    let pg = OwnPostgres::start();
    let db = TestDb { url: pg.url() };
    setup(&db).await;
    let queue = TestQueue::new().await;
    queue.send(&sample_bodies()).await;
    let mut a = fresh_args(&db, &queue);
    a.max_attempts = 40;
    // The receivers wait at the gate until the database is down, so every load meets the outage.
    let gated = Arc::new(FaultySource::new(queue.queue.clone()).gated());
    let failed = Arc::new(AtomicU64::new(0));
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let counting = failed.clone();
    let drain = app::process_with(
        settings,
        gated.clone(),
        CancellationToken::new(),
        move |inner| CountingLoader {
            inner,
            failed: counting,
        },
    );
    let outage = async {
        wait_until(
            "the receivers to reach the gate",
            Duration::from_secs(30),
            || gated.gate().waiting.load(Ordering::SeqCst) > 0,
        )
        .await;
        tokio::task::block_in_place(|| pg.stop());
        let down_at = std::time::Instant::now();
        gated.gate().open();
        // Down for at least three failed loads and three seconds.
        wait_until("three failed loads", Duration::from_secs(60), || {
            failed.load(Ordering::SeqCst) >= 3
        })
        .await;
        tokio::time::sleep_until((down_at + Duration::from_secs(3)).into()).await;
        tokio::task::block_in_place(|| pg.start_again());
    };
    let (summary, ()) = tokio::join!(drain, outage);
    let summary = summary.unwrap();
    assert_eq!(summary.loaded, 99, "{summary:?}");
    assert_eq!(summary.rejected_total(), 1, "{summary:?}");
    assert!(summary.load_retries >= 3, "{summary:?}");
    assert_eq!(
        summary.load_retries,
        failed.load(Ordering::SeqCst),
        "every failed load was retried"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        99
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT user_id) FROM public.user_logins"
        )
        .await,
        99
    );
    assert_eq!(count(&db, "SELECT count(*) FROM sqs2pg.ledger").await, 100);
    assert_eq!(queue.depth().await, 0);
    assert!(crate::harness::captured_logs().contains("load failed; retrying"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_recovers_by_itself_when_the_sqs_server_restarts() {
    let mut moto = OwnMoto::start();
    let db = TestDb::new().await;
    setup(&db).await;
    let queue = TestQueue::at(&moto.endpoint(), "restarted").await;
    let bodies = sample_bodies();
    let (first, second) = bodies.split_at(50);
    queue.send(first).await;
    let mut a = fresh_args(&db, &queue);
    a.visibility_timeout_secs = Some(30);
    let settings = config::pipeline(&a, Mode::Run).unwrap();
    let shutdown = CancellationToken::new();
    let service = app::process(settings, shutdown.clone());
    let ledger = || count(&db, "SELECT count(*) FROM sqs2pg.ledger");
    let script = async {
        wait_until_async("the first half loaded", || async { ledger().await == 50 }).await;
        wait_until_async("the first half deleted", || async {
            queue.depth().await == 0
        })
        .await;
        // The server dies (its queue with it) and stays away for three seconds.
        tokio::task::block_in_place(|| moto.kill());
        tokio::time::sleep(Duration::from_secs(3)).await;
        tokio::task::block_in_place(|| moto.start_again());
        let again = TestQueue::at(&moto.endpoint(), "restarted").await;
        assert_eq!(again.url, queue.url, "the same queue URL after the restart");
        again.send(second).await;
        wait_until_async("the second half loaded after the restart", || async {
            ledger().await == 100
        })
        .await;
        wait_until_async("the second half deleted", || async {
            again.depth().await == 0
        })
        .await;
        shutdown.cancel();
    };
    let (summary, ()) = tokio::join!(service, script);
    let summary = summary.unwrap();
    assert_eq!(summary.loaded, 99, "{summary:?}");
    assert_eq!(summary.rejected_total(), 1, "{summary:?}");
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT user_id) FROM public.user_logins"
        )
        .await,
        99
    );
    assert!(crate::harness::captured_logs().contains("receive failed; retrying"));
}

/// Polls an async condition every 50 ms for up to 60 s.
async fn wait_until_async<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ready().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_its_md5_check_is_left_for_redelivery_and_loaded_later() {
    let (db, queue) = fixture().await;
    let bodies = sample_bodies();
    queue.send(&bodies).await;
    let marked: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    let user_id = marked["user_id"].as_str().unwrap().to_owned();
    let mut a = fresh_args(&db, &queue);
    a.visibility_timeout_secs = Some(2);
    let source = Arc::new(FaultySource::new(queue.queue.clone()).corrupting(&user_id));
    let run = |a: &PipelineArgs| {
        let settings = config::pipeline(a, Mode::Drain).unwrap();
        app::process_with(settings, source.clone(), CancellationToken::new(), |l| l)
    };
    // The corrupted delivery is not processed: counted, reported, not loaded, not deleted.
    let err = run(&a).await.unwrap_err();
    let AppError::Pipeline(PipelineError::Incomplete(summary)) = &err else {
        panic!("{err}");
    };
    // (It can come back within the run, corrupted again: counted each time.)
    assert!(summary.md5_mismatches >= 1, "{summary:?}");
    assert_eq!(summary.loaded, 98, "{summary:?}");
    assert!(err.to_string().contains("MD5"), "{err}");
    let rows_of = |id: String| {
        let db = &db;
        async move {
            db.client()
                .await
                .query_one(
                    "SELECT count(*) FROM public.user_logins WHERE user_id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(rows_of(user_id.clone()).await, 0);
    // SQS delivers it again after its visibility timeout, intact this time: loaded once.
    source.stop_corrupting();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while rows_of(user_id.clone()).await == 0 {
        assert!(std::time::Instant::now() < deadline, "never loaded");
        run(&a).await.unwrap();
    }
    assert_eq!(rows_of(user_id).await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        99
    );
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_only_against_the_exercises_localstack_says_what_to_change() {
    let (db, queue) = fixture_on(Sqs::LocalStack014).await;
    queue.send(&sample_bodies()[..10]).await;
    let mut a = fresh_args(&db, &queue);
    a.queue.sqs_protocol = sqs2pg::sqs::Protocol::Json;
    a.max_attempts = 2;
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let e = app::process(settings, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("query-protocol-only") && e.contains("--sqs-protocol auto or query"),
        "{e}"
    );
    // Nothing was taken from the queue.
    assert_eq!(queue.depth().await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_date_is_the_utc_day_of_sent_timestamp() {
    let (db, queue) = fixture().await;
    queue.send(&sample_bodies()).await;
    let a = fresh_args(&db, &queue);
    // 2020-02-29T23:59:59.999Z: one millisecond before midnight UTC on a leap day.
    let fixed = Arc::new(FaultySource::new(queue.queue.clone()).sent_timestamp(1_583_020_799_999));
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    app::process_with(settings, fixed, CancellationToken::new(), |l| l)
        .await
        .unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.user_logins WHERE create_date = '2020-02-29'"
        )
        .await,
        99
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_reports_messages_it_could_not_delete() {
    let (db, queue) = fixture().await;
    queue.send(&sample_bodies()).await;
    let a = fresh_args(&db, &queue);
    let refusing = Arc::new(FaultySource::new(queue.queue.clone()).deletes(DeleteFault::Refuse));
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let err = app::process_with(settings, refusing, CancellationToken::new(), |l| l)
        .await
        .expect_err("drain must not report success with undeleted messages");
    let AppError::Pipeline(PipelineError::Incomplete(summary)) = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(summary.loaded, 99);
    assert!(summary.delete_failures >= 100, "{summary:?}");
    assert!(err.to_string().contains("could not be deleted"), "{err}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        99
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_late_in_the_transaction_commits_nothing_and_deletes_nothing() {
    let (db, queue) = fixture().await;
    // Rows and their ledger entries are written first; then the rejection insert fails.
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON sqs2pg.rejected_messages
                 FOR EACH ROW EXECUTE FUNCTION public.refuse();",
        )
        .await
        .unwrap();
    queue.send(&sample_bodies()).await;
    let mut a = fresh_args(&db, &queue);
    // One batch of all 100, cut when the last arrives: a batch cut earlier by age would
    // commit (and delete) rows without the rejection that fails.
    a.batch_max_rows = 100;
    a.batch_max_age_ms = 60_000;
    a.visibility_timeout_secs = Some(300);
    let counting = Arc::new(FaultySource::new(queue.queue.clone()));
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let err = app::process_with(settings, counting.clone(), CancellationToken::new(), |l| l)
        .await
        .expect_err("the load cannot commit")
        .to_string();
    // A refusal by the database is not transient: one attempt, then stop with its message.
    assert!(
        err.contains("after 1 attempt(s)") && err.contains("refused by test"),
        "{err}"
    );
    assert_eq!(
        counting.delete_calls.load(Ordering::SeqCst),
        0,
        "nothing may be deleted"
    );
    for table in [
        "public.user_logins",
        "sqs2pg.ledger",
        "sqs2pg.rejected_messages",
    ] {
        assert_eq!(
            count(&db, &format!("SELECT count(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_loader_deletes_nothing_and_drain_fails() {
    let (db, queue) = fixture().await;
    queue.send(&sample_bodies()).await;
    let mut a = fresh_args(&db, &queue);
    a.visibility_timeout_secs = Some(1);
    // One loader, so the attempts counted are one batch's (with two, a second batch's load
    // may be tried once or twice before the first one's failure stops it).
    a.loaders = 1;
    let counting = Arc::new(FaultySource::new(queue.queue.clone()));
    let attempts = Arc::new(AtomicU64::new(0));
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let result = app::process_with(
        settings,
        counting.clone(),
        CancellationToken::new(),
        |inner| FailingLoader {
            inner,
            failures: u32::MAX,
            attempts: attempts.clone(),
        },
    )
    .await;
    let err = result
        .expect_err("drain must fail when nothing can be loaded")
        .to_string();
    assert!(err.contains("after 3 attempt(s)"), "{err}");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "max_attempts bounds the retries"
    );
    assert_eq!(
        counting.delete_calls.load(Ordering::SeqCst),
        0,
        "nothing may be deleted"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        0
    );
    // Every message is still in the queue (moto's approximate counts can count a message twice,
    // so receive them all again and count distinct ids).
    assert_eq!(
        queue.distinct_ids(100, Duration::from_secs(30)).await.len(),
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_load_failures_are_retried_and_lose_nothing() {
    let (db, queue) = fixture().await;
    queue.send(&sample_bodies()).await;
    let a = fresh_args(&db, &queue);
    let attempts = Arc::new(AtomicU64::new(0));
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let summary = app::process_with(
        settings,
        queue.queue.clone(),
        CancellationToken::new(),
        |inner| FailingLoader {
            inner,
            failures: 2,
            attempts: attempts.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(summary.load_retries, 2);
    assert_eq!(summary.loaded, 99);
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        99
    );
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drains_on_one_queue_and_database_load_each_message_once() {
    let (db, queue) = fixture().await;
    // Same body sent twice under two message ids is two logins; the sample is sent once.
    queue.send(&sample_bodies()).await;
    let a = fresh_args(&db, &queue);
    let (one, two) = tokio::join!(drain(&a), drain(&a));
    assert_eq!(one.loaded + two.loaded, 99);
    assert_eq!(one.rejected_total() + two.rejected_total(), 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        99
    );
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masks_differ_across_keys_and_match_within_a_key() {
    let (db, queue) = fixture().await;
    let bodies = sample_bodies();
    // The same 10 logins twice: duplicates stay visible as equal tokens.
    let ten: Vec<String> = bodies.iter().take(10).cloned().collect();
    queue.send(&ten).await;
    queue.send(&ten).await;
    let summary = drain(&fresh_args(&db, &queue)).await;
    assert_eq!(summary.loaded, 20);
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT masked_ip) FROM public.user_logins"
        )
        .await,
        10
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT masked_device_id) FROM public.user_logins"
        )
        .await,
        10
    );

    // The same logins under another key give other tokens.
    queue.send(&ten).await;
    let summary = drain(&fresh_args(&db, &queue)).await;
    assert_eq!(summary.loaded, 10);
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT masked_ip) FROM public.user_logins"
        )
        .await,
        20
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT split_part(masked_ip, '.', 1)) FROM public.user_logins"
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_table_refuses_are_quarantined_and_the_rest_load() {
    let (db, queue) = fixture().await;
    // An operator's rule the pipeline knows nothing about.
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE public.user_logins ADD CONSTRAINT no_old_android
                 CHECK (device_type <> 'android' OR app_version >= 1000000)",
        )
        .await
        .unwrap();
    let bodies = sample_bodies();
    let refused: Vec<&String> = bodies
        .iter()
        .filter(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["device_type"] == "android"
                && v["app_version"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("0."))
        })
        .collect();
    assert!(
        refused.len() > 1,
        "the sample has several old android logins"
    );
    queue.send(&bodies).await;
    let key = MaskKey::generate_base64().unwrap();
    let summary = drain(&args(&db, &queue, key_file(&key))).await;

    let k = refused.len() as u64;
    assert_eq!(summary.loaded, 99 - k);
    assert_eq!(summary.rejected.get("rejected_by_database"), Some(&k));
    assert_eq!(summary.rejected.get("missing_field:user_id"), Some(&1));
    assert_eq!(queue.depth().await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await as u64,
        99 - k
    );

    // Each refused row is kept with the SQLSTATE and constraint, and its body, sealed.
    let sealer = sqs2pg::login::BodySealer::new(&MaskKey::from_base64(&key).unwrap());
    let rows = db
        .client()
        .await
        .query(
            "SELECT message_id, detail, body_sealed, seal_key_id FROM sqs2pg.rejected_messages
              WHERE reason = 'rejected_by_database'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len() as u64, k);
    let mut opened = Vec::new();
    for row in rows {
        let detail: String = row.get(1);
        assert!(
            detail.contains("SQLSTATE 23514") && detail.contains("constraint no_old_android"),
            "{detail}"
        );
        assert_eq!(row.get::<_, String>(3), sealer.key_id());
        let id: String = row.get(0);
        opened.push(sealer.open(&id, row.get::<_, &[u8]>(2)).unwrap());
    }
    opened.sort();
    let mut expected: Vec<String> = refused.into_iter().cloned().collect();
    expected.sort();
    assert_eq!(opened, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_bodies_are_sealed_for_key_holders_only() {
    let (db, queue) = fixture().await;
    queue.send(&sample_bodies()).await;
    let key = MaskKey::generate_base64().unwrap();
    drain(&args(&db, &queue, key_file(&key))).await;
    let row = db
        .client()
        .await
        .query_one(
            "SELECT message_id, body_sealed FROM sqs2pg.rejected_messages",
            &[],
        )
        .await
        .unwrap();
    let (id, sealed): (String, Vec<u8>) = (row.get(0), row.get(1));
    let malformed = r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#;
    assert!(!String::from_utf8_lossy(&sealed).contains("oops_wrong_msg_type"));
    let sealer = |k: &str| sqs2pg::login::BodySealer::new(&MaskKey::from_base64(k).unwrap());
    assert_eq!(sealer(&key).open(&id, &sealed).unwrap(), malformed);
    let other = MaskKey::generate_base64().unwrap();
    assert!(
        sealer(&other).open(&id, &sealed).is_err(),
        "another key cannot open it"
    );
}

/// Bad bodies of every class, each with the reason code it must get, built from a good login.
fn bad_corpus(good: &str) -> Vec<(String, &'static str)> {
    let base: serde_json::Value = serde_json::from_str(good).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut v = base.clone();
        v[field] = value;
        v.to_string()
    };
    let without = |field: &str| {
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    };
    let raw = |field: &str, text: &str| with(field, "@@".into()).replace("\"@@\"", text);
    use serde_json::json;
    let mut corpus: Vec<(String, &'static str)> = vec![
        ("not json at all".into(), "not_json"),
        (good[..good.len() / 2].into(), "not_json"),
        (format!("{good} trailing"), "not_json"),
        ("[1, 2, 3]".into(), "not_an_object"),
        ("\"just a string\"".into(), "not_an_object"),
        (
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            "not_an_object",
        ),
        (
            good.replacen('{', r#"{"ip": "1.2.3.4", "#, 1),
            "duplicate_field:ip",
        ),
        (with("user_id", json!("é".repeat(129))), "too_long:user_id"),
        (
            with("device_type", json!("x".repeat(33))),
            "too_long:device_type",
        ),
        (with("locale", json!("日".repeat(33))), "too_long:locale"),
        (
            with("device_id", json!("d".repeat(257))),
            "too_long:device_id",
        ),
        (with("locale", json!("R\u{0}U")), "nul_character:locale"),
        (with("user_id", json!("u\u{0}")), "nul_character:user_id"),
        (raw("locale", r#""\ud800""#), "invalid_utf16_escape"),
        (raw("device_id", r#""x\udc00y""#), "invalid_utf16_escape"),
        (with("ip", json!("300.1.1.1")), "invalid_ip"),
        (with("ip", json!("1.2.3")), "invalid_ip"),
        (with("ip", json!("fe80::1%eth0")), "invalid_ip"),
        (with("app_version", json!("1.2.x")), "invalid_app_version"),
        (with("app_version", json!("1..2")), "invalid_app_version"),
        (with("app_version", json!("1.2.3.4")), "invalid_app_version"),
        (
            with("app_version", json!("3000.0")),
            "app_version_out_of_range",
        ),
        (
            with("app_version", json!("1.1000")),
            "app_version_out_of_range",
        ),
        (
            with("app_version", json!("99999999999")),
            "app_version_out_of_range",
        ),
        (with("bar", json!("x".repeat(70_000))), "body_too_large"),
    ];
    let codes = |prefix: &'static str, field: &str| -> &'static str {
        Box::leak(format!("{prefix}:{field}").into_boxed_str())
    };
    for field in [
        "user_id",
        "app_version",
        "device_type",
        "ip",
        "locale",
        "device_id",
    ] {
        corpus.push((without(field), codes("missing_field", field)));
        corpus.push((with(field, json!(42)), codes("wrong_type", field)));
        if field != "locale" {
            corpus.push((with(field, json!(null)), codes("null_field", field)));
        }
    }
    corpus
}

on_every_sqs!(every_class_of_bad_message_is_quarantined_with_its_code_among_good_ones);
async fn every_class_of_bad_message_is_quarantined_with_its_code_among_good_ones(sqs: Sqs) {
    let (db, queue) = fixture_on(sqs).await;
    let sample = sample_bodies();
    let corpus = bad_corpus(&sample[0]);
    let mut expected = std::collections::HashMap::new();
    for (body, code) in &corpus {
        assert!(
            expected.insert(body.clone(), *code).is_none(),
            "corpus bodies are distinct"
        );
    }
    // Good ones that look odd: a multibyte user_id at its exact limit, deep nesting in an
    // unknown field.
    let base: serde_json::Value = serde_json::from_str(&sample[1]).unwrap();
    let mut at_limit = base.clone();
    at_limit["user_id"] = serde_json::json!("é".repeat(128));
    let nested = base.to_string().replacen(
        '{',
        &format!("{{\"extra\": {}1{}, ", "[".repeat(2000), "]".repeat(2000)),
        1,
    );
    let mut goods: Vec<String> = sample
        .iter()
        .filter(|b| !b.contains("oops_wrong_msg_type"))
        .cloned()
        .collect();
    goods.push(at_limit.to_string());
    goods.push(nested);
    // Interleave: bad messages share batches (and SendMessageBatch calls) with good ones.
    let mut all = Vec::new();
    let mut bad = corpus.iter().map(|(b, _)| b.clone());
    for (i, good) in goods.iter().enumerate() {
        all.push(good.clone());
        if i % 2 == 0 {
            all.extend(bad.next());
        }
    }
    all.extend(bad);
    queue.send(&all).await;

    let key = MaskKey::generate_base64().unwrap();
    let mut a = args(&db, &queue, key_file(&key));
    a.max_body_bytes = 64 * 1024;
    let summary = drain(&a).await;
    assert_eq!(summary.loaded, goods.len() as u64, "{summary:?}");
    assert_eq!(summary.rejected_total(), corpus.len() as u64, "{summary:?}");
    assert_eq!(queue.depth().await, 0);

    let sealer = sqs2pg::login::BodySealer::new(&MaskKey::from_base64(&key).unwrap());
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT message_id, reason, coalesce(detail, ''), body_sealed FROM sqs2pg.rejected_messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), corpus.len());
    let secrets: Vec<String> = all
        .iter()
        .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
        .flat_map(|v| ["ip", "device_id"].map(|f| v[f].as_str().map(str::to_owned)))
        .flatten()
        .filter(|s| s.len() >= 7)
        .collect();
    for row in rows {
        let (id, reason, detail): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let body = sealer.open(&id, row.get::<_, &[u8]>(3)).unwrap();
        assert_eq!(
            expected.get(&body).copied(),
            Some(reason.as_str()),
            "{body:.80}"
        );
        // The stored columns carry no values from the message.
        for secret in &secrets {
            assert!(!detail.contains(secret.as_str()) && !reason.contains(secret.as_str()));
        }
    }
    let text = crate::harness::captured_logs();
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a raw ip or device_id reached the logs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_message_received_too_often_is_loaded_not_quarantined() {
    use sqs2pg::sqs::MessageSource;
    let (db, queue) = fixture().await;
    let body = sample_bodies()[0].clone();
    queue.send(std::slice::from_ref(&body)).await;
    // Someone received it and never deleted it (a lapsed lease): it comes back with a receive
    // count of 2, over the limit of 1.
    let first = queue
        .queue
        .receive(10, Duration::from_secs(1), Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let mut a = fresh_args(&db, &queue);
    a.max_receive_count = 1;
    let mut summary = Summary::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while summary.loaded + summary.rejected_total() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the message did not come back"
        );
        summary = drain(&a).await;
    }
    // A high receive count only makes it a suspect: it loaded alone, so it is no poison.
    assert_eq!(
        (summary.loaded, summary.rejected_total()),
        (1, 0),
        "{summary:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        1
    );
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_refuses_every_row_stops_the_run_instead_of_quarantining_all() {
    let (db, queue) = fixture().await;
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE public.user_logins ADD CONSTRAINT nothing_passes CHECK (user_id IS NULL)",
        )
        .await
        .unwrap();
    queue.send(&sample_bodies()).await;
    let mut a = fresh_args(&db, &queue);
    // One batch for the whole sample (it closes when the drain ends): a batch is also cut at
    // a quarter of the visibility timeout, so that is long too.
    a.visibility_timeout_secs = Some(300);
    a.batch_max_age_ms = 60_000;
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let err = app::process(settings, CancellationToken::new())
        .await
        .expect_err("no row can be loaded")
        .to_string();
    assert!(err.contains("refused every one of the 99 rows"), "{err}");
    assert!(err.contains("constraint nothing_passes"), "{err}");
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await,
        0
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqs2pg.rejected_messages WHERE reason = 'rejected_by_database'"
        )
        .await,
        0
    );
    // The logins are all still in the queue.
    let left = queue.distinct_ids(100, Duration::from_secs(30)).await;
    assert!(left.len() >= 99, "{} left", left.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_keeps_held_messages_from_coming_back() {
    let (db, queue) = fixture().await;
    queue.send(&sample_bodies()).await;
    let mut a = fresh_args(&db, &queue);
    a.visibility_timeout_secs = Some(2);
    // One receiver (moto can hand one message to two concurrent receivers).
    a.receivers = 1;
    a.max_receive_count = 1;
    a.wait_time_secs = 8;
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    // While the first load takes 6 s, three times the visibility timeout, the queue is watched:
    // once the messages are taken, none may become visible again before the drain ends.
    let done = CancellationToken::new();
    let drain = async {
        let summary = app::process_with(
            settings,
            queue.queue.clone(),
            CancellationToken::new(),
            |inner| crate::faults::SlowLoads::first(inner, 1, Duration::from_secs(6)),
        )
        .await;
        done.cancel();
        summary
    };
    let watch = async {
        let (mut taken, mut came_back) = (false, 0);
        while !done.is_cancelled() {
            let (visible, _) = queue.queue.approximate_depth().await.unwrap();
            if visible == 0 {
                taken = true;
            } else if taken {
                came_back = came_back.max(visible);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (taken, came_back)
    };
    let (summary, (taken, came_back)) = tokio::join!(drain, watch);
    let summary = summary.unwrap();
    assert!(taken, "the messages were received");
    assert_eq!(came_back, 0, "messages became visible again while held");
    assert_eq!(summary.redelivered_while_held, 0, "{summary:?}");
    assert_eq!(summary.loaded, 99, "{summary:?}");
    assert_eq!(
        summary.rejected.get("poison:receive_count"),
        None,
        "{summary:?}"
    );
    assert_eq!(summary.duplicates, 0, "{summary:?}");
    assert!(summary.visibility_extended > 0, "{summary:?}");
    let counts: i32 = db
        .client()
        .await
        .query_one(
            "SELECT max(receive_count) FROM sqs2pg.rejected_messages",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(counts, 1);
    assert_eq!(queue.depth().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_by_a_failed_run_are_released_at_once() {
    let (db, queue) = fixture().await;
    queue.send(&sample_bodies()).await;
    let mut a = fresh_args(&db, &queue);
    // Long enough that only a release can bring them back within this test's wait.
    a.visibility_timeout_secs = Some(300);
    a.max_attempts = 2;
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let err = app::process_with(
        settings,
        queue.queue.clone(),
        CancellationToken::new(),
        |inner| FailingLoader {
            inner,
            failures: u32::MAX,
            attempts: Arc::new(AtomicU64::new(0)),
        },
    )
    .await
    .expect_err("nothing can be loaded");
    assert!(err.to_string().contains("after 2 attempt(s)"), "{err}");
    let back = queue.distinct_ids(100, Duration::from_secs(20)).await;
    assert_eq!(
        back.len(),
        100,
        "released messages are visible again at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_under_another_key_than_the_last_warns_unless_the_rotation_is_intended() {
    let (db, queue) = fixture().await;
    let bodies = sample_bodies();
    let (key_a, key_b) = (
        MaskKey::generate_base64().unwrap(),
        MaskKey::generate_base64().unwrap(),
    );
    let id = |k: &str| MaskKey::from_base64(k).unwrap().key_id();
    let warning = |from: &str, to: &str| {
        crate::harness::captured_logs().lines().any(|l| {
            l.contains("MASKING KEY OR MODE CHANGED")
                && l.contains(&format!("previous_key_id={from}"))
                && l.contains(&format!("key_id=\"{to}\""))
        })
    };
    queue.send(&bodies[..10]).await;
    drain(&args(&db, &queue, key_file(&key_a))).await;
    queue.send(&bodies[10..20]).await;
    drain(&args(&db, &queue, key_file(&key_b))).await;
    assert!(warning(&id(&key_a), &id(&key_b)), "a key change warns");

    // Back to A, on purpose: a note, not a warning.
    queue.send(&bodies[20..30]).await;
    let mut intended = args(&db, &queue, key_file(&key_a));
    intended.key_rotation_intended = true;
    drain(&intended).await;
    assert!(!warning(&id(&key_b), &id(&key_a)));
    assert!(crate::harness::captured_logs().lines().any(
        |l| l.contains("as intended") && l.contains(&format!("previous_key_id={}", id(&key_b)))
    ));

    // A mode change under the same key warns too.
    queue.send(&bodies[30..40]).await;
    let mut siv = args(&db, &queue, key_file(&key_a));
    siv.ip_mask = sqs2pg::login::MaskMode::Siv;
    drain(&siv).await;
    assert!(warning(&id(&key_a), &id(&key_a)), "a mode change warns");
    let rows = db
        .client()
        .await
        .query(
            "SELECT key_id, ip_mode FROM sqs2pg.mask_keys ORDER BY key_id",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut expected = vec![
        (id(&key_a), "hmac".to_owned()),
        (id(&key_a), "siv".to_owned()),
        (id(&key_b), "hmac".to_owned()),
    ];
    expected.sort();
    let mut recorded_sorted = recorded.clone();
    recorded_sorted.sort();
    assert_eq!(
        recorded_sorted, expected,
        "one row per key id and modes, never the key"
    );

    // The guard is per table: a third key on a new table is no change; on this table it is.
    let key_c = MaskKey::generate_base64().unwrap();
    let (database, other) = sqs2pg::config::database(&DatabaseArgs {
        database_url: Some(db.url.clone()),
        table: "public.other_logins".into(),
        mapping: None,
    })
    .unwrap();
    sqs2pg::app::setup(&database, &other).await.unwrap();
    queue.send(&bodies[40..50]).await;
    let mut elsewhere = args(&db, &queue, key_file(&key_c));
    elsewhere.database.table = "public.other_logins".into();
    assert_eq!(drain(&elsewhere).await.loaded, 10);
    assert!(
        !crate::harness::captured_logs()
            .lines()
            .any(|l| l.contains("MASKING KEY OR MODE CHANGED")
                && l.contains(&format!("key_id=\"{}\"", id(&key_c)))),
        "a new table has no key to differ from"
    );
    queue.send(&bodies[50..60]).await;
    drain(&args(&db, &queue, key_file(&key_c))).await;
    assert!(
        warning(&id(&key_a), &id(&key_c)),
        "this table's last key was A"
    );
    let logs = crate::harness::captured_logs();
    assert!(
        !logs.contains(&key_a) && !logs.contains(&key_b),
        "no key in the logs"
    );
}
