//! Outages and faults: PostgreSQL stopped mid-drain, the SQS server restarted, loads that
//! fail, corrupted bodies, and the leases the heartbeat keeps and a failed run releases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqs2pg::app::{self, AppError};
use sqs2pg::cli::PipelineArgs;
use sqs2pg::config;
use sqs2pg::pipeline::{Mode, PipelineError};
use tokio_util::sync::CancellationToken;

use crate::faults::{CountingLoader, FailingLoader, FaultySource};
use crate::harness::{count, fixture, fresh_args, setup};
use crate::harness::{
    sample_bodies, wait_until, wait_until_async, OwnMoto, OwnPostgres, TestDb, TestQueue,
};

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
    // Logged in the loader's span, which names the task without a field of its own.
    assert!(
        crate::harness::captured_logs()
            .lines()
            .any(|l| l.contains("loader:") && l.contains("load failed; retrying")),
        "no retry line in the loader's span"
    );
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
    // Logged in the receiver's span: which receiver retried.
    assert!(
        crate::harness::captured_logs()
            .lines()
            .any(|l| l.contains("receiver{id=") && l.contains("receive failed; retrying")),
        "no retry line in a receiver's span"
    );
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
    let watch = queue.visible_again_until(&done);
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
