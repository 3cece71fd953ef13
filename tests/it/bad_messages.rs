//! Bad input is kept, never dropped, and a valid message is never quarantined: every class
//! of bad message with its reason code, rows the table refuses, sealed bodies, messages
//! received too often, a table that refuses every row of a batch, and one that may not be
//! written to.

use std::time::Duration;

use sqs2pg::app::{self};
use sqs2pg::config;
use sqs2pg::keys::MaskKey;
use sqs2pg::pipeline::{Mode, Summary};
use sqs2pg::sqs::ReceiveRequest;
use tokio_util::sync::CancellationToken;

use crate::harness::{args, count, drain, fixture, fixture_on, fresh_args};
use crate::harness::{key_file, sample_bodies, Sqs};

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
    assert_eq!(
        summary.rejected.get("table_refused:no_old_android"),
        Some(&k)
    );
    assert_eq!(summary.rejected.get("missing_field:user_id"), Some(&1));
    assert_eq!(queue.depth().await, 0);
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await as u64,
        99 - k
    );

    // Each refused row is kept with the SQLSTATE and constraint, and its body, sealed.
    let sealer = sqs2pg::keys::BodySealer::new(&MaskKey::from_base64(&key).unwrap());
    let rows = db
        .client()
        .await
        .query(
            "SELECT message_id, detail, body_sealed, seal_key_id FROM sqs2pg.rejected_messages
              WHERE reason = 'table_refused:no_old_android'",
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
    let sealer = |k: &str| sqs2pg::keys::BodySealer::new(&MaskKey::from_base64(k).unwrap());
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

    let sealer = sqs2pg::keys::BodySealer::new(&MaskKey::from_base64(&key).unwrap());
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
        .receive(&ReceiveRequest::new(
            10,
            Duration::from_secs(1),
            Some(Duration::from_secs(1)),
        ))
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

/// Rows the table refuses for a data reason never stop the service, however many there are:
/// a CHECK no row meets refuses a batch of 99, a NOT NULL the logins do not all meet refuses
/// some; each is found by bisection and quarantined as `table_refused:RULE` (before, a batch
/// all refused stopped `run`, which restarted and stopped again until the messages passed
/// the receive limit), `check` names both rules beforehand, and a replay loads them once the
/// table is fixed. A structural refusal (a privilege) still stops, leaving the messages in SQS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_table_refuses_are_quarantined_even_all_of_a_batch_and_a_structural_refusal_stops() {
    let (db, queue) = fixture().await;
    let client = db.client().await;
    client
        .batch_execute(
            "ALTER TABLE public.user_logins ADD CONSTRAINT nothing_passes CHECK (user_id IS NULL)",
        )
        .await
        .unwrap();
    let bodies = sample_bodies();
    let key = MaskKey::generate_base64().unwrap();
    let env = |db: &crate::harness::TestDb| {
        vec![
            ("DATABASE_URL".to_owned(), db.url.clone()),
            ("SQS2PG_QUEUE_URL".to_owned(), queue.url.clone()),
            ("SQS2PG_MASK_KEY".to_owned(), key.clone()),
            ("SQS2PG_WAIT_TIME_SECS".to_owned(), "1".to_owned()),
            ("SQS2PG_SQS_PROTOCOL".to_owned(), queue.protocol.to_string()),
            ("AWS_ENDPOINT_URL".to_owned(), queue.endpoint.clone()),
        ]
    };
    let env = env(&db);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let check = crate::harness::sqs2pg(&["check"], &env);
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        said.contains("CHECK nothing_passes: CHECK ((user_id IS NULL))"),
        "{said}"
    );
    assert!(said.contains("table_refused:RULE"), "{said}");
    assert!(
        check.status.success(),
        "a CHECK is reported, not failed: {said}"
    );

    queue.send(&bodies).await;
    let mut a = args(&db, &queue, key_file(&key));
    // One batch for the whole sample (it closes when the drain ends): a batch is also cut at
    // a quarter of the visibility timeout, so that is long too.
    a.visibility_timeout_secs = Some(300);
    a.batch_max_age_ms = 60_000;
    let summary = drain(&a).await;
    assert_eq!(summary.loaded, 0);
    assert_eq!(
        summary.rejected.get("table_refused:nothing_passes"),
        Some(&99)
    );
    assert_eq!(queue.depth().await, 0);

    // NOT NULL on a column some logins leave NULL: `check` fails on it, naming the fix; the
    // run quarantines just those.
    client
        .batch_execute(
            "ALTER TABLE public.user_logins DROP CONSTRAINT nothing_passes;
             ALTER TABLE public.user_logins ALTER COLUMN locale SET NOT NULL",
        )
        .await
        .unwrap();
    let check = crate::harness::sqs2pg(&["check"], &env);
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(!check.status.success(), "{said}");
    assert!(
        said.contains("column locale is NOT NULL but the rows may leave it NULL"),
        "{said}"
    );
    let replay = crate::harness::sqs2pg(&["rejects", "replay", "--reason", "table_refused"], &env);
    assert!(
        replay.status.success(),
        "{}",
        crate::harness::stderr(&replay)
    );
    let summary = drain(&a).await;
    let null_locales = bodies
        .iter()
        .filter(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v.get("user_id").is_some() && v["locale"].is_null()
        })
        .count() as u64;
    assert!(
        null_locales > 1,
        "the sample has several logins without a locale"
    );
    assert_eq!(
        summary.rejected.get("table_refused:not_null:locale"),
        Some(&null_locales)
    );
    assert_eq!(summary.loaded, 99 - null_locales);
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins").await as u64,
        99 - null_locales
    );

    // A structural refusal: the table may not be written to. The run stops; nothing is
    // quarantined or deleted.
    client
        .batch_execute(
            "ALTER TABLE public.user_logins ALTER COLUMN locale DROP NOT NULL;
",
        )
        .await
        .unwrap();
    // Roles are the cluster's: one of this test's own.
    let role = crate::harness::unique("reader");
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA sqs2pg TO {role};
             GRANT ALL ON ALL TABLES IN SCHEMA sqs2pg TO {role};
             GRANT SELECT ON public.user_logins TO {role};"
        ))
        .await
        .unwrap();
    let rejected_before = count(&db, "SELECT count(*) FROM sqs2pg.rejected_messages").await;
    queue.send(&bodies[..10]).await;
    let mut reader = a.clone();
    reader.database.connection.database_url =
        Some(db.url.replacen("postgres@", &format!("{role}@"), 1));
    let settings = config::pipeline(&reader, Mode::Drain).unwrap();
    let err = app::process(settings, CancellationToken::new())
        .await
        .expect_err("no privilege, no load")
        .to_string();
    assert!(
        err.contains("INSERT") || err.contains("permission"),
        "the stop names what to fix: {err}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM sqs2pg.rejected_messages").await,
        rejected_before
    );
    let left = queue.distinct_ids(10, Duration::from_secs(30)).await;
    assert_eq!(left.len(), 10);
}

/// A NOT NULL column without a default that the rows never fill, added while `run` runs, is
/// structural: every row would be refused alike. The run stops, saying which column and what
/// to do, and quarantines nothing; the messages stay in SQS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_null_column_the_rows_never_fill_stops_the_run_and_quarantines_nothing() {
    let (db, queue) = fixture().await;
    queue.send(&sample_bodies()).await;
    let key = MaskKey::generate_base64().unwrap();
    let a = args(&db, &queue, key_file(&key));
    let settings = config::pipeline(&a, Mode::Run).unwrap();
    let run = tokio::time::timeout(
        Duration::from_secs(120),
        app::process(settings, CancellationToken::new()),
    );
    let meanwhile = async {
        crate::harness::wait_until_async("the sample loaded", || async {
            count(&db, "SELECT count(*) FROM public.user_logins").await == 99
        })
        .await;
        db.client()
            .await
            .batch_execute(
                "ALTER TABLE public.user_logins ADD COLUMN region text NOT NULL DEFAULT 'eu';
                 ALTER TABLE public.user_logins ALTER COLUMN region DROP DEFAULT",
            )
            .await
            .unwrap();
        let more: Vec<String> = sample_bodies()
            .into_iter()
            .filter(|b| b.contains("user_id"))
            .take(10)
            .collect();
        queue.send(&more).await;
    };
    let (ended, ()) = tokio::join!(run, meanwhile);
    let err = ended
        .expect("the run stops")
        .expect_err("no row can be loaded")
        .to_string();
    assert!(
        err.contains("column region is NOT NULL without a default") && err.contains("DEFAULT"),
        "{err}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM sqs2pg.rejected_messages").await,
        1,
        "only the sample's bad message"
    );
    assert_eq!(
        queue.distinct_ids(10, Duration::from_secs(60)).await.len(),
        10
    );
}
