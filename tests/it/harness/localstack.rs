//! LocalStack 0.14.3 (the exercise's query-only SQS) and 4.0.3 (for volume), started on
//! first use with their own watchdogs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::*;

/// The command in `var`, or else where `scripts/install-deps.sh` installs it under
/// `~/.cache/sqs2pg/`.
pub fn installed(var: &str, under_cache: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{}/.cache/sqs2pg/{under_cache}",
                std::env::var("HOME").unwrap_or_default()
            )
        })
}

pub static LOCALSTACK_4: OnceLock<String> = OnceLock::new();

/// The endpoint of LocalStack 4.0.3, started on first call with its own watchdog.
pub fn localstack_4() -> &'static str {
    sqs2pg::sqs::queue::use_test_credentials();
    LOCALSTACK_4.get_or_init(|| {
        let python = installed(
            "SQS2PG_TEST_LOCALSTACK4",
            "localstack-4.0.3-venv/bin/python",
        );
        let port = free_port();
        start_localstack(
            "LocalStack 4.0.3",
            &python,
            &["-m", "localstack.runtime.main"],
            &[
                ("GATEWAY_LISTEN", format!("127.0.0.1:{port}")),
                // Without it the gateway ignores the bind address.
                ("GATEWAY_SERVER", "hypercorn".into()),
                ("SERVICES", "sqs".into()),
                ("EAGER_SERVICE_LOADING", "1".into()),
            ],
            port,
        )
    })
}

pub static LOCALSTACK_014: OnceLock<String> = OnceLock::new();

/// The endpoint of LocalStack 0.14.3, started on first call (about 5 s) with its own watchdog.
pub fn localstack_014() -> &'static str {
    sqs2pg::sqs::queue::use_test_credentials();
    LOCALSTACK_014.get_or_init(start_localstack_014)
}

pub fn start_localstack_014() -> String {
    let command = installed(
        "SQS2PG_TEST_LOCALSTACK",
        "localstack-0.14.3-venv/bin/localstack",
    );
    let port = free_port();
    start_localstack(
        "LocalStack 0.14.3",
        &command,
        &["start", "--host", "--no-banner"],
        &[
            ("SERVICES", "sqs".into()),
            ("EDGE_PORT", port.to_string()),
            ("EDGE_BIND_HOST", "127.0.0.1".into()),
            ("HOSTNAME_EXTERNAL", "127.0.0.1".into()),
            ("LOCALSTACK_HOSTNAME", "127.0.0.1".into()),
            ("DISABLE_EVENTS", "1".into()),
            ("SKIP_SSL_CERT_DOWNLOAD", "1".into()),
            ("DNS_ADDRESS", "0".into()),
            ("EAGER_SERVICE_LOADING", "1".into()),
        ],
        port,
    )
}

/// Starts a LocalStack in its own process group with a watchdog, waits until it logs
/// "Ready." and returns its endpoint.
// The server and its watchdog outlive this process by design; the watchdog reaps them.
#[allow(clippy::zombie_processes)]
pub fn start_localstack(
    what: &str,
    command: &str,
    args: &[&str],
    env: &[(&str, String)],
    port: u16,
) -> String {
    use std::os::unix::process::CommandExt;
    assert!(
        Path::new(command).exists(),
        "{what} not found at {command}: run scripts/install-deps.sh (see its header for the variable that overrides the path)"
    );
    let root = std::env::temp_dir().join(unique("sqs2pg-localstack"));
    std::fs::create_dir_all(&root).unwrap();
    let log_path = root.join("localstack.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let server = Command::new(command)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("TMPDIR", &root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what} ({command}): {e}"));
    // It can take 15 s to stop on TERM, and once ignored it: TERM the group, then KILL.
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill -TERM -{ls} 2>/dev/null; \
         for i in $(seq 1 15); do kill -0 {ls} 2>/dev/null || break; sleep 1; done; \
         kill -KILL -{ls} 2>/dev/null; rm -rf {root}",
        pid = std::process::id(),
        ls = server.id(),
        root = root.display()
    );
    spawn_watchdog(&script);
    // "Ready." is logged once SQS is loaded (eager loading); the port alone opens earlier.
    wait_for(
        &format!("{what} to be ready"),
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&log_path)
                .is_ok_and(|l| l.lines().any(|l| l.trim() == "Ready."))
        },
    );
    format!("http://127.0.0.1:{port}")
}
