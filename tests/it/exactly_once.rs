//! Exactly one row per message: a lost delete and its redelivery, the ledger's upgrade and
//! its COPY-then-claim way, FIFO order, replicas on one queue, and nothing deleted or
//! committed when a transaction fails late.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sqs2pg::app::{self, AppError};
use sqs2pg::config;
use sqs2pg::keys::MaskKey;
use sqs2pg::pipeline::{Mode, PipelineError};
use sqs2pg::postgres::{Database, TableName};
use sqs2pg::sqs::ReceiveRequest;
use tokio_util::sync::CancellationToken;

use crate::faults::{DeleteFault, FaultySource};
use crate::harness::{count, drain, drain_until_empty, fixture, fixture_on, fresh_args, setup};
use crate::harness::{sample_bodies, Sqs, TestDb, TestQueue};

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
                .receive(&ReceiveRequest::new(
                    10,
                    Duration::from_secs(1),
                    Some(Duration::from_secs(60)),
                ))
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
    use sqs2pg::kind::Delivery;
    use sqs2pg::kind::{Message, MessageKind};
    use sqs2pg::pipeline::batch::{Batch, HeldBody, Row};
    let login = sqs2pg::login::LoginKind::new(
        &MaskKey::from_base64(&MaskKey::generate_base64().unwrap()).unwrap(),
        Default::default(),
    );
    let body = sample_bodies()
        .into_iter()
        .find(|b| b.contains("device_id"))
        .unwrap();
    let rows = ids
        .iter()
        .enumerate()
        .map(|(ack_index, id)| Row {
            ack_index,
            suspect: false,
            message_id: (*id).to_owned(),
            rows: login
                .transform(&Message::new(&body, id, sent_ms))
                .outcome
                .unwrap(),
            delivery: Delivery {
                received_at: std::time::SystemTime::now(),
                receive_count: 1,
                sent_timestamp: sent_ms,
                ledger_ms: sent_ms,
            },
            body: HeldBody::new(body.clone(), Default::default()),
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
    let write = sqs2pg::kind::TableWrite {
        columns: sqs2pg::login::kind::COLUMNS
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
        ..Default::default()
    };
    let mut loader = TableLoader::new(
        Database::parse(&db.url).unwrap(),
        &[(table, write)],
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
async fn a_drain_waits_out_stale_handles_and_succeeds_once_they_are_deleted() {
    // Three drains with a short visibility race: a delete can be refused as a stale handle
    // (the message was received again elsewhere, or already deleted). That is no failure: the
    // drain waits for the message to leave the queue (its later delivery deletes it as a
    // duplicate) and exits 0.
    let (db, queue) = fixture().await;
    queue.send(&sample_bodies()).await;
    let a = fresh_args(&db, &queue);
    let stale = Arc::new(FaultySource::new(queue.queue.clone()).deletes(DeleteFault::StaleFirst));
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let summary = app::process_with(settings, stale, CancellationToken::new(), |l| l)
        .await
        .expect("stale handles whose messages were deleted later are no failure");
    assert_eq!(summary.loaded, 99, "{summary:?}");
    assert_eq!(summary.delete_failures, 0, "{summary:?}");
    assert_eq!(summary.deletes_superseded, 100, "{summary:?}");
    // Each came back (some while still held, deleted with the late handle) and was skipped.
    assert!(summary.duplicates > 0, "{summary:?}");
    assert_eq!(summary.received, 100 + summary.duplicates, "{summary:?}");
    assert_eq!(queue.depth().await, 0, "the drain waited for them");
    assert!(summary.to_string().contains("stale handles"), "{summary}");
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
