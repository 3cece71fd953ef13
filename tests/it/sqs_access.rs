//! Reaching SQS: credentials missing (a hint), requests really signed, and the exercise's
//! LocalStack with no protocol flag and no region.

use std::process::Output;

use crate::harness::{assert_no_personal_data, command, sqs2pg, stderr, TestDb, TestQueue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_aws_credentials_stop_the_run_with_a_hint() {
    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    crate::harness::setup(&db).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let out = command(
        &["drain"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("SQS2PG_QUEUE_URL", queue.url.as_str()),
            ("SQS2PG_MASK_KEY", key.as_str()),
            ("SQS2PG_WAIT_TIME_SECS", "1"),
        ],
    )
    .env_remove("AWS_ACCESS_KEY_ID")
    .env_remove("AWS_SECRET_ACCESS_KEY")
    .env("HOME", "/nonexistent")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no AWS credentials could be loaded"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("retrying"),
        "not retried: {}",
        stderr(&out)
    );

    // `check` says the same in words: the cause and the hint, no dump of structs or
    // HTTP headers, no warning from inside the credentials chain (which, with instance metadata
    // not turned off, also asks it, as on a fresh machine).
    let out = command(
        &["check"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("SQS2PG_QUEUE_URL", queue.url.as_str()),
            ("SQS2PG_MASK_KEY", key.as_str()),
        ],
    )
    .env_remove("AWS_ACCESS_KEY_ID")
    .env_remove("AWS_SECRET_ACCESS_KEY")
    .env_remove("AWS_EC2_METADATA_DISABLED")
    .env("HOME", "/nonexistent")
    .output()
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("SQS queue"))
        .unwrap_or_else(|| panic!("no queue line: {text}"));
    assert!(
        line.contains("FAIL") && line.contains("no AWS credentials could be loaded"),
        "{text}"
    );
    assert!(line.contains("AWS_ACCESS_KEY_ID"), "the hint: {text}");
    for dump in ["DispatchFailure(", "ConnectorError {", "Some(", "headers"] {
        assert!(!text.contains(dump), "{dump} in: {text}");
    }
    assert!(!text.contains("WARN"), "{text}");
}

#[test]
fn requests_are_really_signed_and_a_wrong_secret_is_refused() {
    let moto = crate::harness::SigningMoto::start();
    let sample = crate::harness::SAMPLE;
    let send = |protocol: &str, secret: &str| {
        sqs2pg(
            &["send", "--sqs-protocol", protocol, "--file", sample],
            &[
                ("SQS2PG_QUEUE_URL", moto.queue_url.as_str()),
                ("AWS_ACCESS_KEY_ID", moto.access_key_id.as_str()),
                ("AWS_SECRET_ACCESS_KEY", secret),
            ],
        )
    };
    // Our query and JSON clients both sign with the key moto's IAM knows.
    for protocol in ["query", "json"] {
        let ok = send(protocol, &moto.secret_access_key);
        assert!(ok.status.success(), "{protocol}: {}", stderr(&ok));
        assert!(
            String::from_utf8_lossy(&ok.stdout).contains("sent 100 message(s)"),
            "{protocol}: {ok:?}"
        );
    }
    // A wrong secret gives a wrong signature, which moto refuses: a clear error, exit 1.
    for protocol in ["query", "json"] {
        let refused = send(protocol, "not-the-secret");
        assert_eq!(refused.status.code(), Some(1), "{protocol}: {refused:?}");
        let text = stderr(&refused);
        assert!(
            text.contains("SignatureDoesNotMatch") && text.contains("HTTP 403"),
            "{protocol}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exercises_localstack_needs_no_protocol_flag_and_no_region() {
    let db = TestDb::new().await;
    let endpoint = crate::harness::localstack_014();
    let queue_url = format!(
        "{endpoint}/000000000000/{}",
        crate::harness::unique("login-queue").replace('_', "-")
    );
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let sample = crate::harness::SAMPLE;
    // What a user of the exercise sets: the database, the queue URL, a key. No protocol, no
    // endpoint, no region.
    let env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue_url),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
    ];
    let run = |args: &[&str]| {
        command(args, &env)
            .env_remove("AWS_REGION")
            .output()
            .unwrap()
    };
    let switched = |o: &Output| {
        stderr(o)
            .matches("speaking the query protocol for the rest of the run")
            .count()
    };
    assert!(run(&["setup"]).status.success());
    let send = run(&["send", "--create-queue", "--file", sample]);
    assert!(send.status.success(), "{}", stderr(&send));
    assert_eq!(switched(&send), 1, "logged once: {}", stderr(&send));
    let drain = run(&["drain"]);
    assert!(drain.status.success(), "{}", stderr(&drain));
    assert_eq!(switched(&drain), 1, "logged once: {}", stderr(&drain));
    assert_no_personal_data(&stderr(&drain));
    let count = |sql| crate::harness::count(&db, sql);
    assert_eq!(count("SELECT count(*) FROM public.user_logins").await, 99);
    assert_eq!(
        count(
            "SELECT count(*) FROM public.user_logins WHERE create_date
               BETWEEN (now() AT TIME ZONE 'UTC')::date - 1 AND (now() AT TIME ZONE 'UTC')::date"
        )
        .await,
        99,
        "SentTimestamp in seconds still gives today's date"
    );
    assert_eq!(
        count("SELECT count(*) FROM sqs2pg.rejected_messages").await,
        1
    );
}
