//! The binary's life as processes: setup, send and drain; `run` as a service until SIGTERM;
//! the shutdown deadline; a signal while waiting for the database; several processes at once;
//! and (slow tier) a drain killed again and again.

use std::process::{Command, Output};

use crate::harness::{assert_no_personal_data, command, sqs2pg, stderr, TestDb, TestQueue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_send_drain_as_processes() {
    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
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
    let rows = crate::harness::count(&db, "SELECT count(*) FROM public.user_logins").await;
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
    crate::harness::setup(db).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
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
    let rows = crate::harness::count(&db, "SELECT count(*) FROM public.user_logins").await;
    assert_eq!(rows, 0, "nothing is committed before the batch closes");
    // Transparent huge pages are off for the process (their 2 MiB regions doubled its memory).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    if status.contains("THP_enabled:") {
        assert!(
            status.contains("THP_enabled:\t0"),
            "transparent huge pages are on for the run"
        );
    }

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
    let rows = crate::harness::count(&db, "SELECT count(*) FROM public.user_logins").await;
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
    let rows = crate::harness::count(&db, "SELECT count(*) FROM public.user_logins").await;
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_while_waiting_for_the_database_at_start_exits_cleanly() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let queue = TestQueue::new().await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
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
async fn three_processes_with_a_short_visibility_load_each_message_once() {
    let (db, queue) = crate::harness::fixture().await;
    queue.send(&crate::harness::sample_bodies()).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
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
    let count = |sql| crate::harness::count(&db, sql);
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
