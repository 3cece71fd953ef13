//! What operators look at: `/metrics`, `/healthz` and `/readyz` during a run, `check`, and
//! `report` (text and the HTML page, rendered in Chromium).

use std::process::{Command, Output};

use crate::harness::{
    assert_no_personal_data, command, key_file, sqs2pg, stderr, TestDb, TestQueue,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_during_a_run() {
    use crate::harness::{free_port, http_get, wait_until, OwnPostgres};
    let pg = OwnPostgres::start();
    let db = TestDb { url: pg.url() };
    crate::harness::setup(&db).await;
    let queue = TestQueue::new().await;
    queue.send(&crate::harness::sample_bodies()).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
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

    // Scrape until the sample is in, then read the counts back: every series of the run is
    // labelled with its queue, rows with their mapping (the table).
    let queue_name = queue.url.rsplit('/').next().unwrap().to_owned();
    let q = ("queue", queue_name.as_str());
    let table = ("mapping", "public.user_logins");
    let metric = |text: &str, name: &str| crate::harness::metric(text, name, &[q]);
    let scrape = || {
        http_get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    wait_until(
        "the sample to be loaded",
        std::time::Duration::from_secs(60),
        || crate::harness::metric(&scrape(), "sqs2pg_rows_loaded_total", &[q, table]) == Some(99.0),
    )
    .await;
    let text = scrape();
    assert!(
        metric(&text, "sqs2pg_messages_received_total").unwrap() >= 100.0,
        "{text}"
    );
    assert_eq!(
        crate::harness::metric(
            &text,
            "sqs2pg_messages_rejected_total",
            &[q, ("reason", "missing_field:user_id")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        crate::harness::metric(&text, "sqs2pg_rows_loaded_total", &[("queue", "another")]),
        None,
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
        let counted =
            crate::harness::metric(&text, "sqs2pg_sqs_requests_total", &[q, ("action", action)]);
        assert!(counted.unwrap_or(0.0) >= 1.0, "{text}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_good_setup_and_names_each_problem() {
    let (db, queue) = crate::harness::fixture().await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
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
    assert!(text.contains("all 6 checks passed"), "{text}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_what_was_loaded_and_its_page_renders_in_chromium() {
    let (db, queue) = crate::harness::fixture().await;
    let bodies = crate::harness::sample_bodies();
    queue.send(&bodies).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    crate::harness::drain(&crate::harness::args(&db, &queue, key_file(&key))).await;

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
