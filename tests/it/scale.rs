//! Holding up at scale (issue 16), with real processes on real servers: 20,000 messages, short
//! visibility timeouts, several replicas, a server that serves 50 requests a second, a table
//! locked in the middle, a poison message among valid ones. The slow tier: `#[ignore]`d here,
//! run by `scripts/test.sh` (and so by CI) with `--ignored`, one at a time.
//!
//! Each test prints what it measured (`cargo test -- --ignored --nocapture`); BENCHMARKS.md has
//! the figures of a recorded run.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::harness::{args, count, setup};
use crate::harness::{command, sqs2pg, stderr, Sqs, TestDb, TestQueue};
use sqs2pg::app;
use sqs2pg::config;
use sqs2pg::pipeline::Mode;

const MESSAGES: usize = 20_000;

/// A queue holding the 20,000 synthetic logins, and a database set up for them.
async fn filled(queue: TestQueue) -> (TestDb, TestQueue) {
    let db = TestDb::new().await;
    setup(&db).await;
    let file = crate::harness::synthetic_logins(MESSAGES);
    let sent = sqs2pg(
        &["send", "--file", file.to_str().unwrap()],
        &[
            ("SQS2PG_QUEUE_URL", &queue.url),
            ("AWS_ENDPOINT_URL", &queue.endpoint),
        ],
    );
    assert!(sent.status.success(), "{}", stderr(&sent));
    let _ = std::fs::remove_file(&file);
    (db, queue)
}

/// `processes` drains at once, reaching SQS through `endpoint`; returns their outputs and the
/// time until the last one exited.
fn drains(
    processes: usize,
    db: &TestDb,
    queue: &TestQueue,
    endpoint: &str,
    extra: &[(&str, &str)],
) -> (Vec<Output>, Duration) {
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let mut env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("AWS_ENDPOINT_URL", endpoint),
        ("SQS2PG_MASK_KEY", &key),
    ];
    env.extend_from_slice(extra);
    let started = Instant::now();
    let children: Vec<_> = (0..processes)
        .map(|_| {
            command(&["drain"], &env)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (outputs, ended) = ended_apart(children);
    LAST_SPREAD.store(ended.as_millis() as u64, Ordering::SeqCst);
    (outputs, started.elapsed())
}

/// The time between the first and the last exit of the last [`drains`], in milliseconds.
static LAST_SPREAD: AtomicU64 = AtomicU64::new(0);

/// Waits for every child, each on a thread of its own; their outputs and the time between
/// the first exit and the last.
fn ended_apart(children: Vec<std::process::Child>) -> (Vec<Output>, Duration) {
    let waits: Vec<_> = children
        .into_iter()
        .map(|c| std::thread::spawn(move || (c.wait_with_output().unwrap(), Instant::now())))
        .collect();
    let ended: Vec<(Output, Instant)> = waits.into_iter().map(|w| w.join().unwrap()).collect();
    let first = ended.iter().map(|(_, at)| *at).min().unwrap();
    let last = ended.iter().map(|(_, at)| *at).max().unwrap();
    (ended.into_iter().map(|(o, _)| o).collect(), last - first)
}

/// A number from a summary line such as `  loaded      20000`, summed over the outputs.
fn summed(outputs: &[Output], label: &str) -> f64 {
    outputs
        .iter()
        .filter_map(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                let rest = l.trim().strip_prefix(label)?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
        })
        .sum()
}

/// Every process exited 0; the table holds each of the 20,000 logins once; nothing was
/// rejected; the queue is empty.
async fn assert_all_loaded_once(outputs: &[Output], db: &TestDb, queue: &TestQueue) {
    for out in outputs {
        assert!(out.status.success(), "{}", stderr(out));
        assert!(!stderr(out).contains("message rejected"), "{}", stderr(out));
    }
    let count = |sql| count(db, sql);
    assert_eq!(
        count("SELECT count(*) FROM public.user_logins").await,
        MESSAGES as i64
    );
    assert_eq!(
        count("SELECT count(DISTINCT user_id) FROM public.user_logins").await,
        MESSAGES as i64,
        "every user_id once"
    );
    assert_eq!(
        count("SELECT count(*) FROM sqs2pg.rejected_messages").await,
        0
    );
    assert_eq!(queue.depth().await, 0);
}

/// What a run cost, for the record.
fn report(what: &str, outputs: &[Output], took: Duration) {
    let loaded = summed(outputs, "loaded");
    let mut line = BTreeMap::new();
    for label in ["receive", "delete", "change visibility"] {
        line.insert(label, summed(outputs, label) / loaded.max(1.0));
    }
    println!(
        "{what}: {:.1} s, {loaded} loaded, requests per message {:.3} ({line:?}), redelivered while held {}, duplicates {}",
        took.as_secs_f64(),
        summed(outputs, "SQS requests") / loaded.max(1.0),
        summed(outputs, "redelivered while held"),
        summed(outputs, "duplicates skipped"),
    );
}

/// One drain alone, then three at once on a fresh copy of the queue, on the same server: all
/// load every message once, the drains end together, and the three take no longer than
/// `bound` times the one.
///
/// The bound guards against collapse (before the window, three processes on a slow server
/// were still running after 10 minutes where one took 37 s), not a timing goal: the ratio
/// itself is a benchmark figure (BENCHMARKS.md, section 8). Each caller's bound leaves
/// room for what this machine adds: the server shares two cores with three debug builds.
async fn three_versus_one(sqs: Option<Sqs>, per_second: Option<u32>, bound: f64) {
    let server = sqs.unwrap_or(Sqs::LocalStack4);
    let proxy = per_second.map(|rate| {
        crate::proxy::Proxy::start(
            &server.endpoint(),
            crate::proxy::Plan {
                per_second: Some(rate),
                ..Default::default()
            },
        )
    });
    let mut took = Vec::new();
    for processes in [1, 3] {
        let (db, queue) = filled(TestQueue::on(server).await).await;
        let endpoint = proxy
            .as_ref()
            .map_or(queue.endpoint.clone(), |p| p.endpoint());
        let (outputs, elapsed) = tokio::task::block_in_place(|| {
            drains(
                processes,
                &db,
                &queue,
                &endpoint,
                &[("SQS2PG_VISIBILITY_TIMEOUT_SECS", "2")],
            )
        });
        report(
            &format!("{server:?}, {processes} process(es), rate {per_second:?}"),
            &outputs,
            elapsed,
        );
        if let Some(proxy) = &proxy {
            // Every request went through the proxy, at its pace.
            // (Besides the pipeline's, each process asks for the queue's attributes at start.)
            let through = proxy.counts.requests.swap(0, Ordering::SeqCst) as f64;
            let billed = summed(&outputs, "SQS requests");
            assert!(
                through >= billed && through <= billed + 10.0 * processes as f64,
                "{through} through the proxy, {billed} counted by the processes"
            );
            println!("  {through} requests through the proxy");
        }
        assert_all_loaded_once(&outputs, &db, &queue).await;
        // Drains end when the queue is empty, not when their own poll is: together, within
        // about two tails (1 to 2 s each) and what a rate-limited server adds to them.
        let spread = Duration::from_millis(LAST_SPREAD.load(Ordering::SeqCst));
        println!("  the drains ended {:.1} s apart", spread.as_secs_f64());
        assert!(
            spread <= Duration::from_secs(5),
            "drains ended {spread:?} apart"
        );
        took.push(elapsed);
    }
    let (one, three) = (took[0], took[1]);
    println!(
        "  three took {:.2} times one",
        three.as_secs_f64() / one.as_secs_f64()
    );
    assert!(
        three.as_secs_f64() <= bound * one.as_secs_f64(),
        "three processes took {three:?}, one alone {one:?} (bound {bound} times)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: scripts/test.sh runs it"]
async fn three_drains_at_two_seconds_visibility_on_localstack_4() {
    // Measured 1.07 times (BENCHMARKS.md, section 8).
    three_versus_one(Some(Sqs::LocalStack4), None, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: scripts/test.sh runs it"]
async fn three_drains_at_two_seconds_visibility_on_localstack_0_14() {
    // Measured 1.06 to 1.61 times: LocalStack 0.14 is single-threaded Python, and
    // with three processes beside it on two cores some extensions are answered after the
    // lease's half-life (a few hundred redeliveries, skipped by the ledger).
    three_versus_one(Some(Sqs::LocalStack014), None, 2.5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: scripts/test.sh runs it"]
async fn three_drains_at_two_seconds_visibility_on_a_server_serving_50_requests_a_second() {
    // The cap binds, not the run: measured 1.005 to 1.02 times.
    three_versus_one(Some(Sqs::LocalStack4), Some(50), 1.5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: scripts/test.sh runs it"]
async fn five_drains_at_one_second_visibility_ride_out_a_table_locked_for_ten_seconds() {
    let (db, queue) = filled(TestQueue::on(Sqs::LocalStack4).await).await;
    let locked = Arc::new(AtomicU64::new(0));
    let locker = {
        let (url, locked) = (db.url.clone(), locked.clone());
        tokio::spawn(async move {
            let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            // In the middle: once some thousands are in.
            loop {
                let row = client
                    .query_one("SELECT count(*) FROM public.user_logins", &[])
                    .await
                    .unwrap();
                if row.get::<_, i64>(0) >= 3_000 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let tx = client.transaction().await.unwrap();
            tx.batch_execute("LOCK TABLE public.user_logins IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            // Rows in when the lock was taken, plus one (so 0 means "never locked").
            let rows: i64 = tx
                .query_one("SELECT count(*) FROM public.user_logins", &[])
                .await
                .unwrap()
                .get(0);
            locked.store(rows as u64 + 1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(10)).await;
            tx.rollback().await.unwrap();
        })
    };
    let (outputs, elapsed) = tokio::task::block_in_place(|| {
        drains(
            5,
            &db,
            &queue,
            &queue.endpoint,
            &[("SQS2PG_VISIBILITY_TIMEOUT_SECS", "1")],
        )
    });
    locker.await.unwrap();
    let rows_at_lock = locked.load(Ordering::SeqCst);
    assert!(rows_at_lock > 0, "the table was locked");
    assert!(
        rows_at_lock - 1 < MESSAGES as u64,
        "locked in the middle of the drains, not after: {} rows were in",
        rows_at_lock - 1
    );
    report("5 processes, visibility 1 s, lock 10 s", &outputs, elapsed);
    assert_all_loaded_once(&outputs, &db, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: scripts/test.sh runs it"]
async fn a_message_the_loader_always_fails_is_poison_and_the_20000_around_it_load() {
    use crate::faults::{FaultySource, PoisonLoader, SlowLoads};
    let (db, queue) = filled(TestQueue::on(Sqs::LocalStack4).await).await;
    // A valid login that the loader fails every time, sent among the 20,000.
    let poison = r#"{"user_id": "poison-pill", "app_version": "2.3.0", "device_type": "android", "ip": "10.0.0.1", "locale": "RU", "device_id": "593-47-5928"}"#;
    queue.send(&[poison.to_owned()]).await;
    let mut a = args(
        &db,
        &queue,
        crate::harness::key_file(&sqs2pg::keys::MaskKey::generate_base64().unwrap()),
    );
    a.visibility_timeout_secs = Some(1);
    a.max_receive_count = 2;
    // Extensions are lost, so whatever waits longer than a second (behind the slow first loads,
    // or beside the poison while it is being found) comes back: valid messages with rising
    // receive counts. However well the window keeps leases from lapsing, a sixteenth of the
    // messages (ids ending in 0) have their first two deliveries lost on the way, as when a
    // replica received them and let them lapse, and reach the pipeline over the limit.
    let source = Arc::new(
        FaultySource::new(queue.queue.clone())
            .losing_extensions()
            .losing_deliveries('0', 2),
    );
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut summaries, mut drains) = (Vec::new(), 0);
    loop {
        // Two pipelines on the queue, as two replicas: what lapses in one is received by the
        // other, which does not hold it, so valid messages reach it with rising receive
        // counts. The first loads of the first round are slow, so messages wait past their
        // visibility.
        let slow = if drains == 0 { 20 } else { 0 };
        let replica = || {
            let settings = config::pipeline(&a, Mode::Drain).unwrap();
            let failed = failed.clone();
            app::process_with(
                settings,
                source.clone(),
                CancellationToken::new(),
                move |l| PoisonLoader {
                    inner: SlowLoads::first(l, slow, Duration::from_millis(1_500)),
                    user_id: "poison-pill".into(),
                    failed,
                },
            )
        };
        let (one, two) = tokio::join!(replica(), replica());
        drains += 2;
        for result in [one, two] {
            // A drain that left the poison for redelivery says so (exit 1); the next takes
            // it up.
            summaries.push(match result {
                Ok(summary) => summary,
                Err(app::AppError::Pipeline(sqs2pg::pipeline::PipelineError::Incomplete(s))) => *s,
                Err(e) => panic!("{e}"),
            });
        }
        let rejected = count(&db, "SELECT count(*) FROM sqs2pg.rejected_messages").await;
        if rejected > 0 && queue.depth().await == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the poison was never quarantined"
        );
    }
    let total = |f: fn(&sqs2pg::pipeline::Summary) -> u64| summaries.iter().map(f).sum::<u64>();
    let redelivered = total(|s| s.redelivered_while_held) + total(|s| s.duplicates);
    println!(
        "{drains} drain(s); {} poison loads failed; {} left for redelivery; {redelivered} redeliveries of held or committed messages; {} suspects loaded alone; {} messages lost on the way",
        failed.load(Ordering::SeqCst),
        total(|s| s.left_for_redelivery),
        total(|s| s.suspects),
        source.lost.lock().unwrap().len(),
    );
    // Valid messages came back past the limit and were loaded alone, not quarantined.
    let over_limit = source
        .lost
        .lock()
        .unwrap()
        .values()
        .filter(|&&count| count == 2)
        .count() as u64;
    assert!(over_limit > 500, "only {over_limit} messages lost twice");
    assert!(
        total(|s| s.suspects) >= over_limit,
        "{} suspects loaded alone, {over_limit} messages came back over the limit",
        total(|s| s.suspects)
    );
    assert!(redelivered > 0, "leases lapsed, and messages came back");
    let (reason, detail): (String, String) = {
        let client = db.client().await;
        let row = client
            .query_one("SELECT reason, detail FROM sqs2pg.rejected_messages", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(reason, "poison:receive_count");
    assert!(
        detail.contains("limit 2") && detail.contains("failed 3 times"),
        "{detail}"
    );
    let count = |sql| count(&db, sql);
    assert_eq!(
        count("SELECT count(*) FROM public.user_logins").await,
        MESSAGES as i64
    );
    assert_eq!(
        count("SELECT count(DISTINCT user_id) FROM public.user_logins").await,
        MESSAGES as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM sqs2pg.rejected_messages").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: scripts/test.sh runs it"]
async fn killed_again_and_again_while_draining_20000_messages_loses_and_doubles_nothing() {
    const TOTAL: usize = 20_000;
    const KILLS: usize = 5;
    let (db, queue) = crate::harness::fixture_on(crate::harness::Sqs::LocalStack4).await;
    let file = crate::harness::synthetic_logins(TOTAL);
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
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
    let ledger = || crate::harness::count(&db, "SELECT count(*) FROM sqs2pg.ledger");

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
    let count = |sql| crate::harness::count(&db, sql);
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

/// The chaos soak (issue 30): three `sqs2pg run` replicas drain 30,000 valid logins and 30
/// invalid bodies from LocalStack 4.0.3 at a 10 s visibility timeout, through a proxy that
/// loses 3% of the answers after the server sent them; one replica is killed with SIGKILL and
/// started again every 4 s, and every PostgreSQL backend of the database is terminated every
/// 3 s. Every valid message gives exactly one row, only the invalid ones are quarantined, the
/// queue ends empty, no replica exits by itself, and each exits 0 on SIGTERM at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: scripts/test.sh runs it"]
async fn chaos_soak_three_replicas_lossy_network_kills_and_terminated_backends() {
    const VALID: usize = 30_000;
    const INVALID: usize = 30;
    let (db, queue) = crate::harness::fixture_on(Sqs::LocalStack4).await;
    let file = crate::harness::synthetic_logins(VALID);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        for i in 0..INVALID {
            writeln!(
                f,
                r#"{{"user_id": "bad-{i}", "app_version": "2.3.0", "device_type": "android", "ip": "not-an-ip", "locale": "RU", "device_id": "593-47-5928"}}"#
            )
            .unwrap();
        }
    }
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let direct: Vec<(&str, &str)> = vec![
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("AWS_ENDPOINT_URL", &queue.endpoint),
    ];
    let sent = sqs2pg(&["send", "--file", file.to_str().unwrap()], &direct);
    assert!(sent.status.success(), "{}", stderr(&sent));
    let _ = std::fs::remove_file(&file);

    let proxy = crate::proxy::Proxy::start(
        &queue.endpoint,
        crate::proxy::Plan {
            reset: 0.03,
            ..Default::default()
        },
    );
    let endpoint = proxy.endpoint();
    let env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("AWS_ENDPOINT_URL", &endpoint),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "5"),
        ("SQS2PG_VISIBILITY_TIMEOUT_SECS", "10"),
    ];
    // Each replica's log goes to a file of its own, read only when it matters: a pipe nobody
    // reads until the end could fill and stall a replica without it exiting.
    let logs = std::env::temp_dir().join(crate::harness::unique("sqs2pg-soak"));
    std::fs::create_dir_all(&logs).unwrap();
    let started_replicas = std::cell::Cell::new(0);
    let start = || {
        let n = started_replicas.get();
        started_replicas.set(n + 1);
        let log = logs.join(format!("replica-{n}.log"));
        let child = command(&["run"], &env)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    };
    let log_of = |log: &std::path::Path| std::fs::read_to_string(log).unwrap_or_default();
    let mut replicas: Vec<(std::process::Child, std::path::PathBuf)> =
        (0..3).map(|_| start()).collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let (mut kills, mut terminated) = (0u64, 0u64);
    let (mut next_kill, mut next_terminate) = (
        started + Duration::from_secs(4),
        started + Duration::from_secs(3),
    );
    let monitor = db.client().await;
    let done = |ledger: i64, depth: u64| ledger == (VALID + INVALID) as i64 && depth == 0;
    loop {
        for (i, (r, log)) in replicas.iter_mut().enumerate() {
            if let Some(status) = r.try_wait().unwrap() {
                panic!("replica {i} exited by itself ({status}): {}", log_of(log));
            }
        }
        let ledger: i64 = monitor
            .query_one("SELECT count(*) FROM sqs2pg.ledger", &[])
            .await
            .unwrap()
            .get(0);
        if done(ledger, queue.depth().await) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ledger} of {} messages in the ledger after 10 minutes",
            VALID + INVALID
        );
        let now = Instant::now();
        if now >= next_kill {
            let victim = (kills % 3) as usize;
            replicas[victim].0.kill().unwrap();
            replicas[victim].0.wait().unwrap();
            replicas[victim] = start();
            kills += 1;
            next_kill = now + Duration::from_secs(4);
        }
        if now >= next_terminate {
            let rows = monitor
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            terminated += rows.len() as u64;
            next_terminate = now + Duration::from_secs(3);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained_in = started.elapsed();
    // SIGTERM to each: every one exits 0 within its shutdown deadline.
    for (r, _) in &replicas {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &r.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    for (i, (mut r, log)) in replicas.into_iter().enumerate() {
        let status = tokio::task::block_in_place(|| r.wait().unwrap());
        assert!(
            status.success(),
            "replica {i} did not exit 0 on SIGTERM ({status}): {}",
            log_of(&log)
        );
    }
    let count = |sql| crate::harness::count(&db, sql);
    assert_eq!(
        count("SELECT count(*) FROM public.user_logins").await,
        VALID as i64,
        "every valid message exactly one row"
    );
    assert_eq!(
        count("SELECT count(DISTINCT user_id) FROM public.user_logins").await,
        VALID as i64
    );
    assert_eq!(
        count("SELECT count(*) FROM public.user_logins WHERE user_id LIKE 'bad-%'").await,
        0
    );
    assert_eq!(
        count("SELECT count(*) FROM sqs2pg.rejected_messages").await,
        INVALID as i64,
        "only the invalid ones quarantined"
    );
    assert_eq!(
        count("SELECT count(*) FROM sqs2pg.rejected_messages WHERE reason LIKE 'poison%'").await,
        0
    );
    assert_eq!(queue.depth().await, 0);
    println!(
        "chaos soak: {} messages in {:.1} s; {kills} SIGKILLs, {terminated} backends terminated, \
         {} of {} answers lost on the way",
        VALID + INVALID,
        drained_in.as_secs_f64(),
        proxy.resets(),
        proxy.requests()
    );
}
