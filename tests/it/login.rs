//! The login pipeline end to end on real servers: the sample on every SQS server, a queue
//! given by name, create_date, masks per key, a key change.

use std::sync::Arc;

use sqs2pg::app::{self};
use sqs2pg::cli::DatabaseArgs;
use sqs2pg::config;
use sqs2pg::keys::MaskKey;
use sqs2pg::login::Masker;
use sqs2pg::pipeline::Mode;
use tokio_util::sync::CancellationToken;

use crate::faults::FaultySource;
use crate::harness::{args, count, drain, fixture, fixture_on, fresh_args};
use crate::harness::{key_file, sample_bodies, Sqs};

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
        let encoded = sqs2pg::app_version::AppVersion::parse(version).unwrap();
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
    siv.ip.ip_mask = sqs2pg::mask::MaskMode::Siv;
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
        connection: sqs2pg::cli::ConnectionArgs {
            database_url: Some(db.url.clone()),
        },
        table: "public.other_logins".into(),
        mapping_file: sqs2pg::cli::MappingFileArgs::default(),
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
