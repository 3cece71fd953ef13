//! The `sqs2pg` binary as a user runs it: start-up checks, keygen, and setup/send/drain.

use std::process::{Command, Output};

use base64::Engine as _;

use crate::harness::{command, key_file, sqs2pg, stderr, TestDb, TestQueue};

/// No body, ip or device_id of the sample appears in `text`.
fn assert_no_personal_data(text: &str) {
    for body in crate::harness::sample_bodies() {
        assert!(!text.contains(&body), "a body was printed");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for field in ["ip", "device_id"] {
            if let Some(value) = v[field].as_str() {
                assert!(!text.contains(value), "a raw {field} was printed");
            }
        }
    }
}

#[test]
fn missing_or_bad_settings_fail_at_start_naming_the_setting() {
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let db = "postgres://postgres@127.0.0.1:1/x?sslmode=disable";
    let q = "http://127.0.0.1:1/000000000000/q";
    /// (environment, extra flags, text the error must contain)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        (&[], &[], "DATABASE_URL"),
        (&[("DATABASE_URL", db)], &[], "SQS2PG_QUEUE_URL"),
        (
            &[("DATABASE_URL", db), ("SQS2PG_QUEUE_URL", "not a url")],
            &[],
            "SQS2PG_QUEUE_URL",
        ),
        (
            &[("DATABASE_URL", db), ("SQS2PG_QUEUE_URL", q)],
            &[],
            "sqs2pg keygen",
        ),
        (
            &[
                ("DATABASE_URL", db),
                ("SQS2PG_QUEUE_URL", q),
                ("SQS2PG_MASK_KEY", "c2hvcnQ="),
            ],
            &[],
            "SQS2PG_MASK_KEY",
        ),
        (
            &[
                ("DATABASE_URL", "mysql://x"),
                ("SQS2PG_QUEUE_URL", q),
                ("SQS2PG_MASK_KEY", &key),
            ],
            &[],
            "DATABASE_URL",
        ),
        (
            &[
                ("DATABASE_URL", db),
                ("SQS2PG_QUEUE_URL", q),
                ("SQS2PG_MASK_KEY", &key),
            ],
            &["--wait-time-secs", "30"],
            "--wait-time-secs (SQS2PG_WAIT_TIME_SECS)",
        ),
        (
            &[
                ("DATABASE_URL", db),
                ("SQS2PG_QUEUE_URL", q),
                ("SQS2PG_MASK_KEY", &key),
            ],
            &["--table", "a.b.c"],
            "--table",
        ),
    ];
    for (env, extra, expected) in cases {
        let mut args = vec!["drain"];
        args.extend_from_slice(extra);
        let out = sqs2pg(&args, env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{env:?} {extra:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(expected), "{env:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains(&key), "the key was printed");
    }

    // A key file readable by others is refused with the fix.
    let path = key_file(&key);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sqs2pg(
        &["drain", "--mask-key-file", path.to_str().unwrap()],
        &[("DATABASE_URL", db), ("SQS2PG_QUEUE_URL", q)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

#[test]
fn keygen_prints_a_fresh_32_byte_base64_key() {
    let keys: Vec<String> = (0..2)
        .map(|_| {
            let out = sqs2pg(&["keygen"], &[]);
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    for k in &keys {
        let bytes = base64::engine::general_purpose::STANDARD.decode(k).unwrap();
        assert_eq!(bytes.len(), 32);
    }
    assert_ne!(keys[0], keys[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_send_drain_as_processes() {
    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let sample = crate::harness::SAMPLE;
    let env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
    ];
    // Child processes, run from the test thread: nothing else runs on this runtime meanwhile.
    let setup = sqs2pg(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    let send = sqs2pg(&["send", "--file", sample], &env);
    assert!(send.status.success(), "{}", stderr(&send));
    assert!(String::from_utf8_lossy(&send.stdout).contains("sent 100 message(s)"));

    // Unreachable database: fails before touching a message.
    let unreachable = "postgres://postgres@127.0.0.1:1/x?sslmode=disable";
    let mut bad_env = env.clone();
    bad_env[0] = ("DATABASE_URL", unreachable);
    bad_env.push(("SQS2PG_MAX_ATTEMPTS", "2"));
    let bad = sqs2pg(&["drain"], &bad_env);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("could not connect to PostgreSQL"),
        "{}",
        stderr(&bad)
    );
    // Nothing was received: all 100 visible, none in flight.
    assert_eq!(queue.queue.approximate_depth().await.unwrap(), (100, 0));

    let out = sqs2pg(&["drain"], &env);
    assert_no_personal_data(&stderr(&out));
    assert!(
        !stderr(&out).contains("msg/s"),
        "no progress line when stderr is not a terminal: {}",
        stderr(&out)
    );
    assert_no_personal_data(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |label: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in {stdout}"))
            .split_whitespace()
            .last()
            .unwrap()
            .to_owned()
    };
    // At least 100: moto may hand a message to two receivers (then it is a duplicate).
    assert!(line("received").parse::<u64>().unwrap() >= 100);
    assert_eq!(line("loaded"), "99");
    assert_eq!(line("missing_field:user_id"), "1");
    assert_eq!(queue.depth().await, 0);
    let rows = crate::pipeline::count(&db, "SELECT count(*) FROM public.user_logins").await;
    assert_eq!(rows, 99);
}

/// `sqs2pg run` (10 s shutdown deadline) holding the whole sample in its open batch: batches
/// close only on shutdown, so every row can only come from the final flush.
// The caller waits for the child ([`terminate`]).
#[allow(clippy::zombie_processes)]
async fn run_holding_the_sample(
    db: &TestDb,
    queue: &TestQueue,
    extra_env: &[(&str, &str)],
) -> std::process::Child {
    crate::pipeline::setup(db).await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let mut env = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("SQS2PG_QUEUE_URL", queue.url.as_str()),
        ("SQS2PG_MASK_KEY", key.as_str()),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        ("SQS2PG_BATCH_MAX_AGE_MS", "600000"),
        ("SQS2PG_SHUTDOWN_TIMEOUT_SECS", "10"),
    ];
    env.extend_from_slice(extra_env);
    let child = command(&["run"], &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The service picks up messages sent while it runs and holds them in its open batch.
    queue.send(&crate::harness::sample_bodies()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (visible, in_flight) = queue.queue.approximate_depth().await.unwrap();
        if visible == 0 && in_flight >= 100 {
            return child;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "run did not receive the sample"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// SIGTERM, then the process's output, which must come within its 10 s shutdown deadline
/// (plus slack for a loaded machine).
async fn terminate(child: std::process::Child) -> Output {
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let exited = tokio::task::spawn_blocking(move || child.wait_with_output());
    tokio::time::timeout(std::time::Duration::from_secs(12), exited)
        .await
        .expect("run did not exit within its shutdown deadline")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_sigterm_then_exits_cleanly() {
    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    let child = run_holding_the_sample(&db, &queue, &[]).await;
    let rows = crate::pipeline::count(&db, "SELECT count(*) FROM public.user_logins").await;
    assert_eq!(rows, 0, "nothing is committed before the batch closes");

    let out = terminate(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("shutdown requested"),
        "{}",
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sqs2pg summary"), "{stdout}");
    assert_no_personal_data(&stderr(&out));
    assert_eq!(
        queue.depth().await,
        0,
        "the flushed batch was deleted before exit; the run said:\n{stdout}\n{}",
        stderr(&out)
    );
    let rows = crate::pipeline::count(&db, "SELECT count(*) FROM public.user_logins").await;
    assert_eq!(rows, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_commit_by_the_shutdown_deadline_is_released_for_redelivery() {
    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    let child =
        run_holding_the_sample(&db, &queue, &[("SQS2PG_VISIBILITY_TIMEOUT_SECS", "300")]).await;
    // The table is locked, so the final flush cannot commit: the deadline must cut it off.
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE public.user_logins IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let out = terminate(child).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("shutdown deadline"),
        "{}",
        stderr(&out)
    );
    // Every message is visible again at once (not after the 300 s timeout), none committed.
    assert_eq!(queue.queue.approximate_depth().await.unwrap(), (100, 0));
    lock.rollback().await.unwrap();
    let rows = crate::pipeline::count(&db, "SELECT count(*) FROM public.user_logins").await;
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_aws_credentials_stop_the_run_with_a_hint() {
    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    crate::pipeline::setup(&db).await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
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

    // `check` says the same in words: the cause and the hint, no dump of the SDK's structs or
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

on_every_sqs!(rejects_list_show_and_replay);
async fn rejects_list_show_and_replay(sqs: crate::harness::Sqs) {
    let (db, queue) = crate::pipeline::fixture_on(sqs).await;
    let client = db.client().await;
    client
        .batch_execute(
            "ALTER TABLE public.user_logins ADD CONSTRAINT no_old_android
                 CHECK (device_type <> 'android' OR app_version >= 1000000)",
        )
        .await
        .unwrap();
    queue.send(&crate::harness::sample_bodies()).await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let summary = crate::pipeline::drain(&crate::pipeline::args(&db, &queue, key_file(&key))).await;
    let refused = summary.rejected["rejected_by_database"];
    assert!(refused > 0);
    let protocol = queue.protocol.to_string();
    let env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        ("SQS2PG_SQS_PROTOCOL", &protocol),
        // LocalStack 4 hands out sqs.REGION.localhost.localstack.cloud URLs, which need public
        // DNS; the endpoint says where the server really is.
        ("AWS_ENDPOINT_URL", &queue.endpoint),
    ];

    // list: counts by reason and ids, never values.
    let list = sqs2pg(&["rejects", "list"], &env);
    assert!(list.status.success(), "{}", stderr(&list));
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        text.contains(&format!("rejected messages: {}", refused + 1)),
        "{text}"
    );
    assert!(text.contains("missing_field:user_id"), "{text}");
    assert!(
        text.contains("SQLSTATE 23514, constraint no_old_android"),
        "{text}"
    );
    assert_no_personal_data(&text);

    // show: the original body, with a warning.
    let id: String = client
        .query_one(
            "SELECT message_id FROM sqs2pg.rejected_messages WHERE reason = 'missing_field:user_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let show = sqs2pg(&["rejects", "show", &id], &env);
    assert!(show.status.success(), "{}", stderr(&show));
    assert_eq!(
        String::from_utf8_lossy(&show.stdout).trim(),
        r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#
    );
    assert!(stderr(&show).contains("personal data"));
    let wrong_key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let mut other = env.clone();
    other[2] = ("SQS2PG_MASK_KEY", &wrong_key);
    let refused_show = sqs2pg(&["rejects", "show", &id], &other);
    assert_eq!(refused_show.status.code(), Some(1));
    assert!(
        stderr(&refused_show).contains("sealed under key"),
        "{}",
        stderr(&refused_show)
    );

    // replay: the operator drops the rule, replays what it refused, and drains again.
    client
        .batch_execute(
            "ALTER TABLE public.user_logins DROP CONSTRAINT no_old_android;
             -- as if they had been sent on a leap day: replays keep their original date
             UPDATE sqs2pg.rejected_messages SET sent_timestamp = 1583020799999
              WHERE reason = 'rejected_by_database';",
        )
        .await
        .unwrap();
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let none = sqs2pg(&["rejects", "replay"], &env);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        stderr(&none).contains("--reason CODE, --id ID or --all"),
        "{}",
        stderr(&none)
    );
    let replay_refused = ["rejects", "replay", "--reason", "rejected_by_database"];
    let replay = sqs2pg(&replay_refused, &env);
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert!(
        stdout(&replay).contains(&format!("replayed {refused} message(s)")),
        "{}",
        stdout(&replay)
    );
    // Not again by accident...
    let again = sqs2pg(&replay_refused, &env);
    assert!(
        stdout(&again).contains("replayed 0 message(s)"),
        "{}",
        stdout(&again)
    );
    // ...and on purpose before the first copies were loaded: sent again under the same replay
    // ids, so each login still loads once.
    let mut forced = replay_refused.to_vec();
    forced.push("--again");
    let twice = sqs2pg(&forced, &env);
    assert!(
        stdout(&twice).contains(&format!("replayed {refused} message(s)")),
        "{}",
        stdout(&twice)
    );
    let out = sqs2pg(&["drain"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = crate::pipeline::count(&db, "SELECT count(*) FROM public.user_logins").await;
    assert_eq!(rows, 99, "every refused login is in after the replay, once");
    let leap = crate::pipeline::count(
        &db,
        "SELECT count(*) FROM public.user_logins WHERE create_date = '2020-02-29'",
    )
    .await;
    assert_eq!(
        leap as u64, refused,
        "replays keep their original SentTimestamp"
    );
    // Once loaded, even --again leaves them alone.
    let after = sqs2pg(&forced, &env);
    assert!(
        stdout(&after).contains("replayed 0 message(s)"),
        "{}",
        stdout(&after)
    );
    assert!(
        stderr(&after).contains("already loaded by replay 1"),
        "{}",
        stderr(&after)
    );
    let list = sqs2pg(&["rejects", "list"], &env);
    assert!(String::from_utf8_lossy(&list.stdout).contains("[replayed]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_with_a_short_visibility_load_each_message_once() {
    let (db, queue) = crate::pipeline::fixture().await;
    queue.send(&crate::harness::sample_bodies()).await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        ("SQS2PG_VISIBILITY_TIMEOUT_SECS", "2"),
    ];
    let outputs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| sqs2pg(&["drain"], &env)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outputs {
        assert!(out.status.success(), "{}", stderr(out));
        assert_no_personal_data(&stderr(out));
    }
    let count = |sql| crate::pipeline::count(&db, sql);
    assert_eq!(count("SELECT count(*) FROM public.user_logins").await, 99);
    assert_eq!(
        count("SELECT count(DISTINCT user_id) FROM public.user_logins").await,
        99,
        "every user_id once"
    );
    assert_eq!(
        count("SELECT count(*) FROM sqs2pg.rejected_messages").await,
        1
    );
    assert_eq!(queue.depth().await, 0);
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
    // Our query client and the SDK both sign with the key moto's IAM knows.
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
#[ignore = "slow tier: scripts/test.sh runs it"]
async fn killed_again_and_again_while_draining_20000_messages_loses_and_doubles_nothing() {
    const TOTAL: usize = 20_000;
    const KILLS: usize = 5;
    let (db, queue) = crate::pipeline::fixture_on(crate::harness::Sqs::LocalStack4).await;
    let file = crate::harness::synthetic_logins(TOTAL);
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("AWS_ENDPOINT_URL", &queue.endpoint),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        // Short: what a killed process held comes back within seconds.
        ("SQS2PG_VISIBILITY_TIMEOUT_SECS", "5"),
    ];
    let sent = sqs2pg(&["send", "--file", file.to_str().unwrap()], &env);
    assert!(sent.status.success(), "{}", stderr(&sent));
    let _ = std::fs::remove_file(&file);
    let ledger = || crate::pipeline::count(&db, "SELECT count(*) FROM sqs2pg.ledger");

    // Start, let it commit some more, kill -9 (mid-batch, mid-delete, wherever it is), again.
    for _ in 0..KILLS {
        let before = ledger().await;
        let mut child = command(&["run"], &env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while ledger().await < (before + 1_500).min(TOTAL as i64) {
            assert!(std::time::Instant::now() < deadline, "no progress");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Then drain to the end: runs until every message is in and the queue is empty (messages
    // the killed processes held come back after their visibility timeout).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let (mut drains, mut redelivered) = (0, 0u64);
    loop {
        let out = sqs2pg(&["drain"], &env);
        assert!(out.status.success(), "{}", stderr(&out));
        drains += 1;
        redelivered += String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("duplicates skipped"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if ledger().await == TOTAL as i64 && queue.depth().await == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never drained");
    }
    // For the record (cargo test -- --nocapture): what the kills left to clean up.
    println!(
        "{KILLS} kills, then {drains} drain(s); {redelivered} committed-but-undeleted deliveries skipped by the ledger"
    );
    let count = |sql| crate::pipeline::count(&db, sql);
    assert_eq!(
        count("SELECT count(*) FROM public.user_logins").await,
        TOTAL as i64
    );
    assert_eq!(
        count("SELECT count(DISTINCT user_id) FROM public.user_logins").await,
        TOTAL as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM sqs2pg.rejected_messages").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exercises_localstack_needs_no_protocol_flag_and_no_region() {
    let db = TestDb::new().await;
    let endpoint = crate::harness::localstack_014();
    let queue_url = format!(
        "{endpoint}/000000000000/{}",
        crate::harness::unique("login-queue").replace('_', "-")
    );
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
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
    let count = |sql| crate::pipeline::count(&db, sql);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_during_a_run() {
    use crate::harness::{free_port, http_get, wait_until, OwnPostgres};
    let pg = OwnPostgres::start();
    let db = TestDb { url: pg.url() };
    crate::pipeline::setup(&db).await;
    let queue = TestQueue::new().await;
    queue.send(&crate::harness::sample_bodies()).await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = command(
        &["run"],
        &[
            ("DATABASE_URL", db.url.as_str()),
            ("SQS2PG_QUEUE_URL", queue.url.as_str()),
            ("SQS2PG_MASK_KEY", key.as_str()),
            ("SQS2PG_WAIT_TIME_SECS", "1"),
            ("SQS2PG_METRICS_ADDR", addr.as_str()),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();

    // Scrape until the sample is in, then read the counts back.
    let metric = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    };
    let scrape = || {
        http_get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    wait_until(
        "the sample to be loaded",
        std::time::Duration::from_secs(60),
        || metric(&scrape(), "sqs2pg_rows_loaded_total") == Some(99.0),
    )
    .await;
    let text = scrape();
    assert!(
        metric(&text, "sqs2pg_messages_received_total").unwrap() >= 100.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "sqs2pg_messages_rejected_total{reason=\"missing_field:user_id\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "sqs2pg_batch_messages_count").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "sqs2pg_load_duration_seconds_count").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "sqs2pg_oldest_message_age_seconds").is_some(),
        "{text}"
    );
    assert!(
        metric(&text, "sqs2pg_messages_in_flight").is_some(),
        "{text}"
    );
    // The SQS bill: receives and deletes were counted by action.
    for action in ["receive", "delete"] {
        let line = format!("sqs2pg_sqs_requests_total{{action=\"{action}\"}}");
        assert!(metric(&text, &line).unwrap_or(0.0) >= 1.0, "{text}");
    }
    // Every metric of ours says what it is.
    for line in text.lines().filter(|l| l.starts_with("# TYPE sqs2pg_")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > name.len() + 10),
            "no # HELP for {name}:\n{text}"
        );
    }
    assert_no_personal_data(&text);
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(port, "/readyz").unwrap().0, 200);

    // PostgreSQL stops: not ready (and says why); it comes back: ready again.
    tokio::task::block_in_place(|| pg.stop());
    wait_until(
        "/readyz to turn 503",
        std::time::Duration::from_secs(30),
        || {
            http_get(port, "/readyz")
                .is_some_and(|(s, body)| s == 503 && body.contains("PostgreSQL"))
        },
    )
    .await;
    assert_eq!(
        http_get(port, "/healthz").unwrap().0,
        200,
        "alive all the same"
    );
    // What arrives meanwhile fails to load and is retried, which the metrics show.
    let late: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"user_id": "late-{i}", "app_version": "1.0", "device_type": "ios", "ip": "10.0.0.{i}", "locale": null, "device_id": "111-22-333{i}"}}"#
            )
        })
        .collect();
    queue.send(&late).await;
    wait_until(
        "failed loads to be retried",
        std::time::Duration::from_secs(60),
        || metric(&scrape(), "sqs2pg_load_retries_total").is_some_and(|n| n >= 1.0),
    )
    .await;
    tokio::task::block_in_place(|| pg.start_again());
    wait_until(
        "/readyz to turn 200",
        std::time::Duration::from_secs(30),
        || http_get(port, "/readyz").is_some_and(|(s, _)| s == 200),
    )
    .await;
    wait_until(
        "the late messages to be loaded",
        std::time::Duration::from_secs(60),
        || metric(&scrape(), "sqs2pg_rows_loaded_total") == Some(109.0),
    )
    .await;

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let out = sqs2pg(
        &["--log-format", "json", "drain"],
        &[
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/x?sslmode=disable",
            ),
            ("SQS2PG_QUEUE_URL", "http://127.0.0.1:1/000000000000/q"),
            ("SQS2PG_MASK_KEY", &key),
            ("SQS2PG_MAX_ATTEMPTS", "2"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let retry = events
        .iter()
        .find(|e| e["fields"]["message"] == "cannot read the queue's visibility timeout; retrying")
        .unwrap_or_else(|| panic!("no retry event in {text}"));
    assert_eq!(retry["level"], "WARN");
    assert_eq!(retry["fields"]["attempt"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_good_setup_and_names_each_problem() {
    let (db, queue) = crate::pipeline::fixture().await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let check = |database: &str, queue_url: &str| {
        sqs2pg(
            &["check"],
            &[
                ("DATABASE_URL", database),
                ("SQS2PG_QUEUE_URL", queue_url),
                ("SQS2PG_MASK_KEY", &key),
            ],
        )
    };
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();

    let good = check(&db.url, &queue.url);
    assert_eq!(
        good.status.code(),
        Some(0),
        "{}{}",
        stdout(&good),
        stderr(&good)
    );
    let text = stdout(&good);
    assert!(text.contains("all 5 checks passed"), "{text}");
    assert!(text.contains("visibility timeout 30 s"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");

    // A missing queue.
    let missing = format!("{}-missing", queue.url);
    let out = check(&db.url, &missing);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("[FAIL] SQS queue") && text.contains("NonExistentQueue"),
        "{text}"
    );
    assert!(
        text.contains("[ ok ] schema and table"),
        "the other checks still ran: {text}"
    );

    // One column of another type.
    db.client()
        .await
        .batch_execute("ALTER TABLE public.user_logins ALTER COLUMN app_version TYPE bigint")
        .await
        .unwrap();
    let out = check(&db.url, &queue.url);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("[FAIL] schema and table")
            && text.contains("column app_version is bigint, expected integer"),
        "{text}"
    );

    // A wrong password.
    let pg = crate::harness::OwnPostgres::start_with_password("right-password");
    let out = check(&pg.url_with_password("wrong-password"), &queue.url);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("[FAIL] PostgreSQL") && text.contains("password authentication failed"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-password"),
        "the password is never printed: {text}"
    );
    assert!(text.contains("[ ok ] SQS queue"), "{text}");
}

#[test]
fn a_config_file_is_overridden_by_environment_and_flags() {
    let dir = std::env::temp_dir().join(crate::harness::unique("config"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sqs2pg.toml");
    std::fs::write(
        &file,
        "[database]\nurl = \"postgres://u:s3cret@db.example/x\"\n[pipeline]\nreceivers = 3\nbatch_max_rows = 200\n",
    )
    .unwrap();
    let print = |env: &[(&str, &str)], flags: &[&str]| {
        let mut args = vec!["--config", file.to_str().unwrap(), "config", "print"];
        args.extend_from_slice(flags);
        let out = sqs2pg(&args, env);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let from_file = print(&[], &[]);
    assert!(
        from_file.contains("receivers = 3\n") && from_file.contains("batch_max_rows = 200\n"),
        "{from_file}"
    );
    assert!(
        from_file.contains("postgres://u:****@db.example/x"),
        "{from_file}"
    );
    assert!(
        !from_file.contains("s3cret"),
        "the password is never printed"
    );
    let from_env = print(&[("SQS2PG_RECEIVERS", "5")], &[]);
    assert!(
        from_env.contains("receivers = 5\n") && from_env.contains("batch_max_rows = 200\n"),
        "{from_env}"
    );
    let from_flag = print(&[("SQS2PG_RECEIVERS", "5")], &["--receivers", "7"]);
    assert!(from_flag.contains("receivers = 7\n"), "{from_flag}");
    // The printed settings are a valid file themselves.
    std::fs::write(dir.join("printed.toml"), &from_flag).unwrap();
    let again = sqs2pg(
        &[
            "--config",
            dir.join("printed.toml").to_str().unwrap(),
            "config",
            "print",
        ],
        &[],
    );
    assert!(again.status.success(), "{}", stderr(&again));

    // An unknown key stops everything at start, naming the key and the file.
    std::fs::write(&file, "[pipeline]\nrecievers = 3\n").unwrap();
    let out = sqs2pg(&["--config", file.to_str().unwrap(), "drain"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("recievers") && stderr(&out).contains("sqs2pg.toml"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_command_prints_the_database_password() {
    // The password in the URL's user part (from the file) and as a parameter (from the
    // environment); nothing listens on the port, so every command that connects fails.
    let port = crate::harness::free_port();
    let dir = std::env::temp_dir().join(crate::harness::unique("secret"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sqs2pg.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\nurl = \"postgres://app:Fi1e-pa55word@127.0.0.1:{port}/db?sslmode=disable\"\n"
        ),
    )
    .unwrap();
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let config = file.to_str().unwrap();
    let in_env =
        format!("postgres://app@127.0.0.1:{port}/db?sslmode=disable&password=Env-pa55word");
    let base: Vec<(&str, &str)> = vec![
        ("SQS2PG_QUEUE_URL", "http://127.0.0.1:9/000000000000/q"),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_MAX_ATTEMPTS", "1"),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
    ];
    let with_url: Vec<(&str, &str)> = base
        .iter()
        .copied()
        .chain([("DATABASE_URL", in_env.as_str())])
        .collect();
    let mut commands: Vec<Vec<&str>> = ["drain", "run", "check", "setup", "report", "rekey"]
        .iter()
        .map(|c| vec!["--config", config, c, "--help"])
        .collect();
    commands.push(vec!["--config", config, "--help"]);
    commands.push(vec!["--config", config, "rejects", "list", "--help"]);
    commands.push(vec!["--config", config, "config", "print"]);
    for failing in ["setup", "check", "drain", "report"] {
        commands.push(vec!["--config", config, failing]);
    }
    for env in [&base, &with_url] {
        for args in &commands {
            let out = sqs2pg(args, env);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!text.is_empty(), "{args:?} printed nothing");
            for password in ["Fi1e-pa55word", "Env-pa55word"] {
                assert!(
                    !text.contains(password),
                    "{args:?} printed a password:\n{text}"
                );
            }
        }
    }
    // The failing commands did fail (so their errors were seen), and help still says where
    // the setting comes from.
    let out = sqs2pg(&["--config", config, "setup"], &base);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let help = sqs2pg(&["--config", config, "drain", "--help"], &base);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--database-url"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_while_waiting_for_the_database_at_start_exits_cleanly() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let queue = TestQueue::new().await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let mut child = command(
        &["run"],
        &[
            // Nothing listens there: `run` waits for the database, retrying forever.
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/x?sslmode=disable",
            ),
            ("SQS2PG_QUEUE_URL", queue.url.as_str()),
            ("SQS2PG_MASK_KEY", key.as_str()),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // A reader thread watches stderr for the first retry (and keeps draining the pipe).
    let retrying = std::sync::Arc::new(AtomicBool::new(false));
    let stderr_pipe = child.stderr.take().unwrap();
    let seen = retrying.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr_pipe)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("cannot reach PostgreSQL; retrying") {
                seen.store(true, Ordering::SeqCst);
            }
        }
    });
    crate::harness::wait_until(
        "run to wait for the database",
        std::time::Duration::from_secs(30),
        || retrying.load(Ordering::SeqCst),
    )
    .await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("a signal at start-up is not ignored")
    .unwrap()
    .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_what_was_loaded_and_its_page_renders_in_chromium() {
    let (db, queue) = crate::pipeline::fixture().await;
    let bodies = crate::harness::sample_bodies();
    queue.send(&bodies).await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    crate::pipeline::drain(&crate::pipeline::args(&db, &queue, key_file(&key))).await;

    // What the report must say, worked out from the bodies themselves.
    let logins: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap())
        .filter(|v| v["user_id"].is_string())
        .collect();
    let mut per_device = std::collections::BTreeMap::<String, i64>::new();
    let mut ips = std::collections::HashMap::<String, i64>::new();
    for v in &logins {
        *per_device
            .entry(v["device_type"].as_str().unwrap().to_owned())
            .or_default() += 1;
        *ips.entry(v["ip"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let repeated_ips = ips.values().filter(|n| **n > 1).count();

    let dir = std::env::temp_dir().join(crate::harness::unique("report"));
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
    let out = sqs2pg(
        &["report", "--html", page.to_str().unwrap()],
        &[("DATABASE_URL", db.url.as_str())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("public.user_logins: 99 rows"), "{text}");
    assert!(
        text.contains(&format!("distinct masked ips      {:>10}", ips.len())),
        "{text}"
    );
    assert!(
        text.contains(&format!("seen more than once {repeated_ips:>8}")),
        "{text}"
    );
    assert!(text.contains("missing_field:user_id"), "{text}");
    assert_no_personal_data(&text);

    // The page, rendered by headless Chromium: the script ran and drew every number.
    let chromium =
        std::env::var("SQS2PG_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let profile = dir.join("profile");
    let dom = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| panic!("{chromium} (apt-get install chromium): {e}"));
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "the page's script did not run: {dom:.400}"
    );
    let svg = dom
        .split("<svg id=\"per-device\"")
        .nth(1)
        .and_then(|s| s.split("</svg>").next())
        .expect("the device chart");
    // Pairs of (label, value) as drawn.
    let texts: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>').map(|(_, rest)| rest))
        .filter_map(|rest| rest.split("</text>").next())
        .collect();
    let drawn: std::collections::BTreeMap<String, i64> = texts
        .chunks(2)
        .map(|pair| (pair[0].to_owned(), pair[1].parse().unwrap()))
        .collect();
    assert_eq!(drawn, per_device);
    assert!(
        dom.contains("<td>missing_field:user_id</td><td class=\"n\">1</td>"),
        "{dom:.2000}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siv_masked_rows_unmask_for_key_holders_only() {
    let (db, queue) = crate::pipeline::fixture().await;
    let bodies = crate::harness::sample_bodies();
    queue.send(&bodies).await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let mut args = crate::pipeline::args(&db, &queue, key_file(&key));
    args.ip_mask = sqs2pg::login::MaskMode::Siv;
    args.device_id_mask = sqs2pg::login::MaskMode::Siv;
    let summary = crate::pipeline::drain(&args).await;
    assert_eq!(summary.loaded, 99);

    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    let row = db
        .client()
        .await
        .query_one(
            "SELECT masked_ip, masked_device_id FROM public.user_logins WHERE user_id = $1",
            &[&first["user_id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    let (ip_token, device_token): (String, String) = (row.get(0), row.get(1));
    assert!(ip_token.contains(".s.") && !ip_token.contains(first["ip"].as_str().unwrap()));
    // Duplicates stay visible: the same device id gives the same token in every row.
    let same_device = crate::pipeline::count(
        &db,
        &format!(
            "SELECT count(*) FROM public.user_logins WHERE masked_device_id = '{device_token}'"
        ),
    )
    .await;
    let expected = bodies
        .iter()
        .filter(|b| b.contains(first["device_id"].as_str().unwrap()))
        .count() as i64;
    assert_eq!(same_device, expected);

    let out = sqs2pg(
        &["unmask", "--", &ip_token, &device_token],
        &[("SQS2PG_MASK_KEY", key.as_str())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("{ip_token}\tip {}", first["ip"].as_str().unwrap())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{device_token}\tdevice_id {}",
            first["device_id"].as_str().unwrap()
        )),
        "{text}"
    );
    assert!(stderr(&out).contains("personal data"));

    // A query's result, unmasked.
    let user_id = first["user_id"].as_str().unwrap();
    let query = format!(
        "SELECT user_id, masked_ip, masked_device_id FROM public.user_logins WHERE user_id = '{user_id}'"
    );
    let env = [
        ("SQS2PG_MASK_KEY", key.as_str()),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let out = sqs2pg(&["unmask", "--query", &query], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "user_id\tmasked_ip\tmasked_device_id\n{user_id}\t{}\t{}\n",
            first["ip"].as_str().unwrap(),
            first["device_id"].as_str().unwrap()
        )
    );
    // ...and only ever read: neither a write, nor a second statement, nor a way out of the
    // read-only transaction gets through.
    for attack in [
        "DELETE FROM public.user_logins",
        "COMMIT; DELETE FROM public.user_logins",
        "SET TRANSACTION READ WRITE; DELETE FROM public.user_logins",
        "SELECT 1) AS x; COMMIT; DELETE FROM public.user_logins; SELECT * FROM (SELECT 1",
        "WITH d AS (DELETE FROM public.user_logins RETURNING 1) SELECT * FROM d",
    ] {
        let out = sqs2pg(&["unmask", "--query", attack], &env);
        assert_eq!(out.status.code(), Some(1), "{attack}: {}", stderr(&out));
    }
    assert_eq!(
        crate::pipeline::count(&db, "SELECT count(*) FROM public.user_logins").await,
        99
    );

    // Another key: refused, naming the key ids; an hmac token: refused as one-way.
    let other = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let out = sqs2pg(
        &["unmask", "--", &ip_token],
        &[("SQS2PG_MASK_KEY", other.as_str())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("written under key"),
        "{}",
        stderr(&out)
    );
    let masker = sqs2pg::login::Masker::new(&sqs2pg::login::MaskKey::from_base64(&key).unwrap());
    let hmac = masker.mask_device_id("593-47-5928").unwrap();
    let out = sqs2pg(
        &["unmask", "--", hmac.as_str()],
        &[("SQS2PG_MASK_KEY", key.as_str())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("one-way"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_reencrypts_every_siv_token_in_place_and_explains_hmac() {
    let (db, queue) = crate::pipeline::fixture().await;
    let bodies = crate::harness::sample_bodies();
    queue.send(&bodies).await;
    let old_key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let new_key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let old_file = key_file(&old_key);
    let mut args = crate::pipeline::args(&db, &queue, old_file.clone());
    args.ip_mask = sqs2pg::login::MaskMode::Siv;
    args.device_id_mask = sqs2pg::login::MaskMode::Siv;
    crate::pipeline::drain(&args).await;
    // Ten more rows under the old key in hmac mode: one-way, they cannot be re-keyed.
    let late: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"user_id": "hmac-{i}", "app_version": "1.0", "device_type": "ios", "ip": "10.9.9.{i}", "locale": null, "device_id": "999-00-000{i}"}}"#))
        .collect();
    queue.send(&late).await;
    let mut hmac = crate::pipeline::args(&db, &queue, old_file.clone());
    hmac.key_rotation_intended = true;
    crate::pipeline::drain(&hmac).await;

    let snapshot = |sql: &'static str| {
        let db = &db;
        async move { crate::pipeline::count(db, sql).await }
    };
    let distinct_before = (
        snapshot("SELECT count(DISTINCT masked_ip) FROM public.user_logins").await,
        snapshot("SELECT count(DISTINCT masked_device_id) FROM public.user_logins").await,
    );
    let rekey = |batch: &str| {
        sqs2pg(
            &[
                "rekey",
                "--from-key-file",
                old_file.to_str().unwrap(),
                "--batch-rows",
                batch,
            ],
            &[
                ("DATABASE_URL", db.url.as_str()),
                ("SQS2PG_MASK_KEY", new_key.as_str()),
            ],
        )
    };
    // One row holds its device token in masked_ip too (a bad copy): that row does not re-key,
    // the rest does, and rekey says so and fails.
    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    let first_user = first["user_id"].as_str().unwrap();
    let client = db.client().await;
    let good_ip: String = client
        .query_one(
            "SELECT masked_ip FROM public.user_logins WHERE user_id = $1",
            &[&first_user],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "UPDATE public.user_logins SET masked_ip = masked_device_id WHERE user_id = $1",
            &[&first_user],
        )
        .await
        .unwrap();
    let out = rekey("7");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("1 row(s) still hold siv tokens")
            && stderr(&out).contains("1 that do not re-key"),
        "{}",
        stderr(&out)
    );
    // Put the right token back: the rerun does just that row.
    client
        .execute(
            "UPDATE public.user_logins SET masked_ip = $2 WHERE user_id = $1",
            &[&first_user, &good_ip],
        )
        .await
        .unwrap();
    let out = rekey("7");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("2 token(s) in 1 row(s)"), "{text}");
    // The new key took over the old key's record (no false warning on the next run).
    let new_id_recorded = crate::pipeline::count(
        &db,
        &format!(
            "SELECT count(*) FROM sqs2pg.mask_keys WHERE key_id = '{}'",
            sqs2pg::login::MaskKey::from_base64(&new_key)
                .unwrap()
                .key_id()
        ),
    )
    .await;
    assert_eq!(new_id_recorded, 1);
    assert!(
        text.contains("10 row(s) hold hmac tokens") && text.contains("cannot be re-keyed"),
        "{text}"
    );

    // Every siv token now belongs to the new key, rows and duplicates are as they were, and
    // the new key opens them to the original values.
    let new_id = sqs2pg::login::MaskKey::from_base64(&new_key)
        .unwrap()
        .key_id();
    let new_prefix = format!("{new_id}.s.");
    let rows = db
        .client()
        .await
        .query(
            "SELECT user_id, masked_ip, masked_device_id FROM public.user_logins WHERE user_id NOT LIKE 'hmac-%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 99);
    let unmasker =
        sqs2pg::login::Unmasker::new(&sqs2pg::login::MaskKey::from_base64(&new_key).unwrap());
    let originals: std::collections::HashMap<String, serde_json::Value> = bodies
        .iter()
        .filter_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).ok()?;
            Some((v["user_id"].as_str()?.to_owned(), v))
        })
        .collect();
    for row in &rows {
        let (user, ip, device): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert!(ip.starts_with(&new_prefix) && device.starts_with(&new_prefix));
        assert_eq!(
            unmasker.unmask(&ip).unwrap().value(),
            originals[&user]["ip"].as_str().unwrap()
        );
        assert_eq!(
            unmasker.unmask(&device).unwrap().value(),
            originals[&user]["device_id"].as_str().unwrap()
        );
    }
    assert_eq!(
        snapshot("SELECT count(*) FROM public.user_logins").await,
        109
    );
    assert_eq!(
        (
            snapshot("SELECT count(DISTINCT masked_ip) FROM public.user_logins").await,
            snapshot("SELECT count(DISTINCT masked_device_id) FROM public.user_logins").await,
        ),
        distinct_before,
        "duplicates are kept"
    );
    // Resumable and idempotent: nothing is left to do.
    let again = rekey("1000");
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 token(s) in 0 row(s)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipcrypt_masked_ips_are_addresses_in_the_table_and_unmask_with_the_mode() {
    for mode in [
        sqs2pg::login::MaskMode::Ipcrypt,
        sqs2pg::login::MaskMode::IpcryptPfx,
    ] {
        let (db, queue) = crate::pipeline::fixture().await;
        let bodies = crate::harness::sample_bodies();
        queue.send(&bodies[..20]).await;
        let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
        let mut args = crate::pipeline::args(&db, &queue, key_file(&key));
        args.ip_mask = mode;
        crate::pipeline::drain(&args).await;
        let rows = db
            .client()
            .await
            .query("SELECT user_id, masked_ip FROM public.user_logins", &[])
            .await
            .unwrap();
        assert!(rows.len() >= 19, "{mode}");
        let originals: std::collections::HashMap<String, String> = bodies[..20]
            .iter()
            .filter_map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).ok()?;
                Some((
                    v["user_id"].as_str()?.to_owned(),
                    v["ip"].as_str()?.to_owned(),
                ))
            })
            .collect();
        let tokens: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
        for token in &tokens {
            assert!(
                token.parse::<std::net::IpAddr>().is_ok(),
                "{mode}: {token} is an address"
            );
        }
        let out = sqs2pg(
            &["unmask", "--ip-mask", &mode.to_string(), "--", &tokens[0]],
            &[("SQS2PG_MASK_KEY", key.as_str())],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let user: String = rows[0].get(0);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("ip {}", originals[&user])),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ip_mode: String =
            crate::pipeline::one(&db, "SELECT ip_mode FROM sqs2pg.mask_keys").await;
        assert_eq!(ip_mode, mode.to_string(), "the mode is on record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_ring_rotates_keys_and_rekey_moves_siv_tokens_and_ipcrypt_addresses() {
    use sqs2pg::login::{KeyRing, MaskMode, Unmasker};
    use std::os::unix::fs::PermissionsExt;
    let (db, queue) = crate::pipeline::fixture().await;
    let bodies = crate::harness::sample_bodies();
    queue.send(&bodies).await;
    let dir = std::env::temp_dir().join(crate::harness::unique("sqs2pg-ring"));
    std::fs::create_dir_all(&dir).unwrap();
    let ring = dir.join("ring.toml");
    let ring_path = ring.to_str().unwrap();
    let read_ring = || KeyRing::parse(&std::fs::read_to_string(&ring).unwrap()).unwrap();

    // keygen --ring makes the ring (mode 600) with its first key active, and prints only the id.
    let out = sqs2pg(&["keygen", "--ring", ring_path], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let k1 = read_ring().active_id().to_owned();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("added key {k1} to {ring_path}")
    );
    let k1_text = read_ring().keys()[0].key.clone();
    assert_eq!(
        std::fs::metadata(&ring).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Runs under K1: ip as ipcrypt addresses, device_id as siv tokens.
    let mut args = crate::pipeline::args(&db, &queue, dir.join("unused"));
    args.key.mask_key_file = None;
    args.key.mask_key_ring = Some(ring.clone());
    args.ip_mask = MaskMode::Ipcrypt;
    args.device_id_mask = MaskMode::Siv;
    assert_eq!(crate::pipeline::drain(&args).await.loaded, 99);
    let snapshot = || async {
        let rows = db
            .client()
            .await
            .query(
                "SELECT user_id, masked_ip, masked_device_id FROM public.user_logins ORDER BY user_id, masked_ip, masked_device_id",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect::<Vec<(String, String, String)>>()
    };
    let before = snapshot().await;

    // A second key, made active; K1 stays in the ring, so its tokens still unmask.
    let out = sqs2pg(&["keygen", "--ring", ring_path, "--activate"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let k2 = read_ring().active_id().to_owned();
    assert_ne!(k1, k2);
    assert!(read_ring().get(&k1).is_some(), "K1 kept");
    let ring_env = [("SQS2PG_MASK_KEY_RING", ring_path)];
    let (_, ip1, device1) = &before[0];
    let out = sqs2pg(
        &[
            "unmask",
            "--ip-mask",
            "ipcrypt",
            "--key-id",
            &k1,
            "--",
            ip1,
            device1,
        ],
        &ring_env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let first_user = &before[0].0;
    let original: serde_json::Value = bodies
        .iter()
        .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap())
        .find(|v| v["user_id"].as_str() == Some(first_user))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("{ip1}\tip {}", original["ip"].as_str().unwrap()))
            && text.contains(&format!(
                "{device1}\tdevice_id {}",
                original["device_id"].as_str().unwrap()
            )),
        "{text}"
    );

    // rekey --from K1 moves both the siv tokens and the addresses to the active key (K2).
    let env = [
        ("SQS2PG_MASK_KEY_RING", ring_path),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let out = sqs2pg(&["rekey", "--from", &k1, "--batch-rows", "40"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("99 row(s) with ipcrypt addresses re-encrypted")
            && text.contains("99 token(s) in 99 row(s)"),
        "{text}"
    );
    let after = snapshot().await;
    assert_eq!(after.len(), before.len());
    let k2_only = Unmasker::for_ring(
        &KeyRing::single(read_ring().get(&k2).unwrap().clone()),
        MaskMode::Ipcrypt,
        None,
    )
    .unwrap();
    let k1_only = Unmasker::with_ip_mode(&k1_text, MaskMode::Ipcrypt);
    for ((user, old_ip, old_device), (same_user, ip, device)) in before.iter().zip(&after) {
        assert_eq!(user, same_user);
        assert_ne!(old_ip, ip, "every address changed");
        assert!(device.starts_with(&format!("{k2}.s.")), "{device}");
        assert_eq!(
            k2_only.unmask(ip).unwrap().value(),
            k1_only.unmask(old_ip).unwrap().value()
        );
        assert_eq!(
            k2_only.unmask(device).unwrap().value(),
            k1_only.unmask(old_device).unwrap().value()
        );
    }
    let distinct = |rows: &[(String, String, String)]| {
        let ips: std::collections::HashSet<&String> = rows.iter().map(|r| &r.1).collect();
        let devices: std::collections::HashSet<&String> = rows.iter().map(|r| &r.2).collect();
        (ips.len(), devices.len())
    };
    assert_eq!(distinct(&before), distinct(&after), "duplicates are kept");
    let records = db
        .client()
        .await
        .query(
            "SELECT key_id, ip_mode, device_id_mode, coalesce(retired_to, '-') FROM sqs2pg.mask_keys ORDER BY key_id",
            &[],
        )
        .await
        .unwrap();
    let records: std::collections::HashMap<String, (String, String, String)> = records
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    assert_eq!(
        records[&k2],
        ("ipcrypt".into(), "siv".into(), "-".into()),
        "K2 takes over K1's modes"
    );
    assert_eq!(records[&k1], ("ipcrypt".into(), "siv".into(), k2.clone()));

    // K1 is retired on this table: a run under it again is refused before it touches a
    // message, naming the key to use.
    let k1_file = {
        let text = std::fs::read_to_string(&ring).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("key = "))
            .unwrap()
            .to_owned();
        key_file(line.trim_start_matches("key = ").trim_matches('"'))
    };
    queue.send(&bodies[..1]).await;
    let mut old_key_run = crate::pipeline::args(&db, &queue, k1_file);
    old_key_run.ip_mask = MaskMode::Ipcrypt;
    old_key_run.device_id_mask = MaskMode::Siv;
    let settings = sqs2pg::config::pipeline(&old_key_run, sqs2pg::pipeline::Mode::Drain).unwrap();
    let e = sqs2pg::app::process(settings, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{k1} was retired")) && e.contains(&format!("run with key {k2}")),
        "{e}"
    );
    assert_eq!(
        snapshot().await,
        after,
        "nothing written under the retired key"
    );

    // While a run writes to the table (it holds the writers lock shared), rekey refuses.
    let run = db.client().await;
    run.execute(
        "SELECT pg_advisory_lock_shared(hashtext('sqs2pg.writers:' || 'public.user_logins'))",
        &[],
    )
    .await
    .unwrap();
    let out = sqs2pg(&["rekey", "--from", &k2, "--to", &k1], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("runs are writing"),
        "{}",
        stderr(&out)
    );
    drop(run);

    // Done exactly once: a rerun (as after a crash) re-encrypts nothing a second time.
    let out = sqs2pg(&["rekey", "--from", &k1], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 token(s) in 0 row(s)")
            && !String::from_utf8_lossy(&out.stdout).contains("addresses"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(snapshot().await, after);

    // Addresses written under two modes (or keys) cannot be told apart: once K2 has also
    // written ipcrypt-pfx addresses, rekey refuses, says the order to rotate in, and changes
    // nothing.
    queue.send(&bodies[1..2]).await;
    let mut pfx = args.clone();
    pfx.ip_mask = MaskMode::IpcryptPfx;
    crate::pipeline::drain(&pfx).await;
    let after = snapshot().await;
    let out = sqs2pg(&["rekey", "--from", &k2, "--to", &k1], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("more than one key or mode")
            && stderr(&out).contains(&format!("{k2} (ipcrypt-pfx)"))
            && stderr(&out).contains("stop the runs, rekey, then start"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot().await, after);

    // keygen refuses while another keygen's FILE.new exists, and keeps the ring as it was.
    let pending = dir.join("ring.toml.new");
    std::fs::write(&pending, "").unwrap();
    let out = sqs2pg(&["keygen", "--ring", ring_path], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("another keygen"), "{}", stderr(&out));
    assert_eq!(read_ring().keys().len(), 2);
    std::fs::remove_file(&pending).unwrap();

    // The malformed sample body was sealed under K1; with K2 active the ring still opens it.
    let rejected: String =
        crate::pipeline::one(&db, "SELECT message_id FROM sqs2pg.rejected_messages").await;
    let out = sqs2pg(&["rejects", "show", &rejected], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(bodies.contains(&shown), "{shown}");

    // A ring others can read is refused by every command, naming the fix.
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o640)).unwrap();
    for command in [
        vec!["keygen", "--ring", ring_path],
        vec!["unmask", "--", device1.as_str()],
    ] {
        let out = sqs2pg(&command, &ring_env);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    }
    // No key material in anything printed.
    let ring_text = std::fs::read_to_string(&ring).unwrap();
    for line in ring_text.lines().filter(|l| l.starts_with("key = ")) {
        let key = line.trim_start_matches("key = ").trim_matches('"');
        assert!(!text.contains(key) && !stderr(&out).contains(key));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
