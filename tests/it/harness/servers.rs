//! The shared servers of a test process: one PostgreSQL cluster and one moto SQS server, on
//! free loopback ports, started on first use, stopped by a watchdog when the process exits.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use super::*;

pub struct Servers {
    pub pg_port: u16,
    pub sqs_endpoint: String,
    /// The CA that signed the PostgreSQL server's certificate (the server also accepts TLS).
    pub pg_ca: PathBuf,
}

pub static SERVERS: OnceLock<Servers> = OnceLock::new();

pub static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The shared servers, started on first call (which also starts the log capture).
pub fn servers() -> &'static Servers {
    // In-process queues sign with static test credentials instead of the environment's chain
    // (the environment is never changed here: other test threads may be reading it). The
    // binary's runs get theirs from `command`.
    sqs2pg::sqs::queue::use_test_credentials();
    SERVERS.get_or_init(|| {
        capture_logs();
        start_servers()
    })
}

/// A name unique in this machine's recent history: pid, counter and clock.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// The servers and the watchdog outlive this process by design; the watchdog reaps them.
#[allow(clippy::zombie_processes)]
pub fn start_servers() -> Servers {
    let (root, bindir, data, as_postgres, mut initdb) = new_cluster("sqs2pg-it");
    initdb.arg("--auth=trust");
    run_ok(initdb, "initdb");

    let pg_ca = make_certificates(&root, as_postgres);
    let pg_port = free_port();
    let mut start = pg_command(&bindir, "pg_ctl", as_postgres);
    start.arg("-D").arg(&data).arg("-l").arg(root.join("postgres.log")).arg("-w").arg("-o").arg(format!(
        "-p {pg_port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200 \
         -c ssl=on -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key",
        dir = root.display()
    )).arg("start");
    run_ok(start, "pg_ctl start");

    let (moto, moto_port) = spawn_moto(&root, &[]);

    // Watchdog: when this test process is gone, stop both servers and remove their files.
    let pg_ctl = bindir.join("pg_ctl");
    let stop_pg = if as_postgres {
        format!(
            "runuser -u postgres -- {} -D {} -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!(
            "{} -D {} -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop_pg} >/dev/null 2>&1; kill {moto} 2>/dev/null; sleep 2; kill -9 {moto} 2>/dev/null; rm -rf {root}",
        pid = std::process::id(),
        moto = moto.id(),
        root = root.display()
    );
    spawn_watchdog(&script);

    let sqs_endpoint = format!("http://127.0.0.1:{moto_port}");
    wait_for_port("moto", moto_port);
    Servers {
        pg_port,
        sqs_endpoint,
        pg_ca,
    }
}

/// Runs a shell `script` that cleans up after this test process (it waits for the process to
/// end first), in its own process group so it outlives the process.
// The watchdog outlives this process by design.
#[allow(clippy::zombie_processes)]
pub fn spawn_watchdog(script: &str) {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("watchdog");
}
