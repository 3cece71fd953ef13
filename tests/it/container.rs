//! The container image as a user runs it (slow tier, after `scripts/container.sh build`; run
//! by `scripts/container.sh test`): `--version` names the commit, the process runs as a user
//! of its own, and `setup` then `drain` against the tests' PostgreSQL and SQS server over the
//! host network load the 100 sample messages as 99 rows and 1 rejection.
//!
//! The engine is `SQS2PG_CONTAINER_ENGINE` (podman unless said; `container.sh` says which it
//! built with), the image `SQS2PG_IMAGE` (default `localhost/sqs2pg:latest`).

use std::process::{Command, Output};

use crate::harness::{assert_no_personal_data, sqs2pg, stderr, TestDb, TestQueue};

fn engine() -> String {
    std::env::var("SQS2PG_CONTAINER_ENGINE").unwrap_or_else(|_| "podman".into())
}

fn image() -> String {
    std::env::var("SQS2PG_IMAGE").unwrap_or_else(|_| "localhost/sqs2pg:latest".into())
}

/// `ENGINE run --rm --network=host` of the image with `env` and `args`.
fn run_image(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(engine());
    c.args(["run", "--rm", "--network=host"]);
    for (name, value) in env {
        c.arg("-e").arg(format!("{name}={value}"));
    }
    c.arg(image()).args(args);
    c.output()
        .unwrap_or_else(|e| panic!("{} could not start: {e}", engine()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: needs the image (scripts/container.sh test)"]
async fn the_image_sets_up_and_drains_the_sample_as_a_user_of_its_own() {
    let version = run_image(&["--version"], &[]);
    assert!(version.status.success(), "{}", stderr(&version));
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    // `sqs2pg 0.1.0 (commit <40 hex digits>)`, the commit the image was built from.
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("no commit in {version:?}"));
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{version:?}"
    );
    assert!(version.starts_with(&format!("sqs2pg {} ", env!("CARGO_PKG_VERSION"))));

    // Not root: the image's own user.
    let user = Command::new(engine())
        .args(["image", "inspect", "--format", "{{.Config.User}}"])
        .arg(image())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "10001:10001");

    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    // The messages go in with the binary under test; the image does the rest.
    let send = sqs2pg(&["send", "--file", crate::harness::SAMPLE], &env);
    assert!(send.status.success(), "{}", stderr(&send));

    let setup = run_image(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    assert!(
        String::from_utf8_lossy(&setup.stdout).contains("table public.user_logins created"),
        "{}",
        String::from_utf8_lossy(&setup.stdout)
    );
    let drain = run_image(&["drain"], &env);
    let (out, err) = (String::from_utf8_lossy(&drain.stdout), stderr(&drain));
    assert!(drain.status.success(), "{err}");
    assert_no_personal_data(&out);
    assert_no_personal_data(&err);
    let count = |label: &str| -> String {
        out.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in {out}"))
            .split_whitespace()
            .last()
            .unwrap()
            .to_owned()
    };
    assert_eq!(count("loaded"), "99");
    assert_eq!(count("rejected"), "1");
    let client = db.client().await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM public.user_logins", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 99);
    assert_eq!(queue.queue.approximate_depth().await.unwrap(), (0, 0));
}

/// `sqs2pg run` in the image, as the Deployment runs it: its probes answer on the port and
/// paths the manifest names, it loads what arrives, and a stop (SIGTERM, as `podman stop` and
/// Kubernetes send) ends it cleanly with no message left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: needs the image (scripts/container.sh test)"]
async fn the_image_serves_its_probes_loads_and_stops_on_sigterm_holding_nothing() {
    use crate::harness::{free_port, http_get, metric, wait_until};
    use std::time::Duration;

    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    crate::harness::setup(&db).await;
    let key = sqs2pg::login::MaskKey::generate_base64().unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let name = crate::harness::unique("sqs2pg-run");
    let mut c = Command::new(engine());
    c.args(["run", "-d", "--network=host", "--name", &name]);
    for (var, value) in [
        ("DATABASE_URL", db.url.as_str()),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        ("SQS2PG_METRICS_ADDR", &addr),
        ("SQS2PG_SHUTDOWN_TIMEOUT_SECS", "25"),
        ("SQS2PG_LOG_FORMAT", "json"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        c.arg("-e").arg(format!("{var}={value}"));
    }
    let started = c.arg(image()).arg("run").output().unwrap();
    assert!(started.status.success(), "{}", stderr(&started));
    // Removed however the test ends.
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new(engine()).args(["rm", "-f", &self.0]).output();
        }
    }
    let _remove = Remove(name.clone());

    wait_until("/readyz answers 200", Duration::from_secs(60), || {
        http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    })
    .await;
    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200));

    queue.send(&crate::harness::sample_bodies()).await;
    wait_until("99 rows and 1 rejection", Duration::from_secs(120), || {
        http_get(port, "/metrics").is_some_and(|(_, text)| {
            metric(&text, "sqs2pg_rows_loaded_total", &[]) == Some(99.0)
                && metric(&text, "sqs2pg_messages_rejected_total", &[]) == Some(1.0)
        })
    })
    .await;
    let rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM public.user_logins", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 99);

    // SIGTERM, up to 30 s before SIGKILL (the manifest's grace period).
    let stop = Command::new(engine())
        .args(["stop", "-t", "30", &name])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{}", stderr(&stop));
    let exit = Command::new(engine())
        .args(["inspect", "--format", "{{.State.ExitCode}}", &name])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&exit.stdout).trim(), "0");
    let logs = Command::new(engine())
        .args(["logs", &name])
        .output()
        .unwrap();
    let logs = format!("{}{}", String::from_utf8_lossy(&logs.stdout), stderr(&logs));
    assert_no_personal_data(&logs);
    // Nothing held: every message was deleted, none is in flight.
    assert_eq!(queue.queue.approximate_depth().await.unwrap(), (0, 0));
}
