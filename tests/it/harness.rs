//! Real servers for the integration tests: one PostgreSQL cluster and one moto SQS server per
//! test process, on free loopback ports, started on first use, and LocalStack 0.14.3 (the
//! exercise's own, query-only SQS) when a test asks for it; a fresh database and a fresh queue
//! for each test. A watchdog process stops the servers when the test process exits.
//!
//! Overrides: `SQS2PG_TEST_PG_BINDIR` (PostgreSQL's bin directory, default the newest under
//! /usr/lib/postgresql), `SQS2PG_TEST_MOTO` (the moto_server command) and
//! `SQS2PG_TEST_LOCALSTACK` (LocalStack 0.14.3's `localstack` command, default the one
//! `scripts/install-deps.sh` installs).

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqs2pg::sqs::queue::SqsSettings;
use sqs2pg::sqs::{Protocol, Queue};

pub struct Servers {
    pub pg_port: u16,
    pub sqs_endpoint: String,
    /// The CA that signed the PostgreSQL server's certificate (the server also accepts TLS).
    pub pg_ca: PathBuf,
}

static SERVERS: OnceLock<Servers> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The shared servers, started on first call (which also starts the log capture).
pub fn servers() -> &'static Servers {
    SERVERS.get_or_init(|| {
        capture_logs();
        start_servers()
    })
}

/// Every log line of this test process, as the binary's filter would pass them but with our
/// own crate at `trace`.
static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A global subscriber, not a scoped one: tracing caches per-callsite interest process-wide, so
// a thread-local subscriber can miss events whose callsites another test thread hit first.
fn capture_logs() {
    let buffer = LOGS.get_or_init(Arc::default).clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{},sqs2pg=trace",
            sqs2pg::telemetry::DEFAULT_FILTER
        )))
        .with_writer(move || Captured(buffer.clone()))
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
}

/// The captured log text so far.
pub fn captured_logs() -> String {
    let buffer = LOGS.get().expect("servers() starts the capture");
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("SQS2PG_TEST_PG_BINDIR") {
        return dir.into();
    }
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server not installed (apt-get install postgresql), or set SQS2PG_TEST_PG_BINDIR")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let v = versions
        .last()
        .expect("no PostgreSQL version under /usr/lib/postgresql");
    PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root (the server refuses root).
fn pg_command(bindir: &Path, tool: &str, as_postgres: bool) -> Command {
    let exe = bindir.join(tool);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn run_ok(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// The servers and the watchdog outlive this process by design; the watchdog reaps them.
#[allow(clippy::zombie_processes)]
fn start_servers() -> Servers {
    // The SDK reads these; set once, before any test talks to SQS.
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_ENDPOINT_URL");
    std::env::remove_var("AWS_PROFILE");

    let root = std::env::temp_dir().join(unique("sqs2pg-it"));
    std::fs::create_dir_all(&root).unwrap();
    let as_postgres = is_root();
    if as_postgres {
        run_ok(
            {
                let mut c = Command::new("chown");
                c.arg("postgres:").arg(&root);
                c
            },
            "chown test dir",
        );
    }
    let bindir = pg_bindir();
    let data = root.join("pgdata");
    let mut initdb = pg_command(&bindir, "initdb", as_postgres);
    initdb.arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
        "--no-instructions",
    ]);
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

/// A PostgreSQL cluster of its own, for tests that stop and start the server. Stopped and
/// removed when dropped (and by a watchdog if the test process dies).
pub struct OwnPostgres {
    bindir: PathBuf,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl OwnPostgres {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A cluster where TCP connections need `password` (SCRAM) for user `postgres`.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(Some(password))
    }

    // The watchdog outlives this process by design.
    #[allow(clippy::zombie_processes)]
    fn start_with(password: Option<&str>) -> Self {
        servers();
        let root = std::env::temp_dir().join(unique("sqs2pg-ownpg"));
        std::fs::create_dir_all(&root).unwrap();
        let as_postgres = is_root();
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.arg("postgres:").arg(&root);
            run_ok(chown, "chown own cluster dir");
        }
        let bindir = pg_bindir();
        let data = root.join("pgdata");
        let mut initdb = pg_command(&bindir, "initdb", as_postgres);
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]);
        match password {
            None => {
                initdb.arg("--auth=trust");
            }
            Some(password) => {
                let file = root.join("pwfile");
                std::fs::write(&file, password).unwrap();
                if as_postgres {
                    let mut chown = Command::new("chown");
                    chown.arg("postgres:").arg(&file);
                    run_ok(chown, "chown pwfile");
                }
                initdb
                    .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                    .arg(format!("--pwfile={}", file.display()));
            }
        }
        run_ok(initdb, "initdb (own cluster)");
        let cluster = Self {
            bindir,
            root,
            data,
            port: free_port(),
            as_postgres,
        };
        cluster.start_again();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {root}",
            pid = std::process::id(),
            stop = cluster.stop_command("immediate"),
            root = cluster.root.display()
        );
        spawn_watchdog(&script);
        cluster
    }

    /// A URL of the `postgres` database on this cluster.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// The same with a password.
    pub fn url_with_password(&self, password: &str) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut start = pg_command(&self.bindir, "pg_ctl", self.as_postgres);
        start
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.root.join("postgres.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.root.display()
            ))
            .arg("start");
        run_ok(start, "pg_ctl start (own cluster)");
    }

    /// Stops the server (fast shutdown: sessions are cut, as in a database restart).
    pub fn stop(&self) {
        let mut stop = pg_command(&self.bindir, "pg_ctl", self.as_postgres);
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        run_ok(stop, "pg_ctl stop (own cluster)");
    }

    fn stop_command(&self, mode: &str) -> String {
        let pg_ctl = self.bindir.join("pg_ctl");
        let runuser = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        format!(
            "{runuser}{} -D {} -m {mode} stop",
            pg_ctl.display(),
            self.data.display()
        )
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!("{} >/dev/null 2>&1", self.stop_command("immediate")),
            ])
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs a shell `script` that cleans up after this test process (it waits for the process to
/// end first), in its own process group so it outlives the process.
// The watchdog outlives this process by design.
#[allow(clippy::zombie_processes)]
fn spawn_watchdog(script: &str) {
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

/// Starts a moto server on a free port with extra environment; its log goes under `dir`.
fn spawn_moto(dir: &Path, env: &[(&str, &str)]) -> (std::process::Child, u16) {
    let port = free_port();
    let command = std::env::var("SQS2PG_TEST_MOTO").unwrap_or_else(|_| "moto_server".into());
    let log = std::fs::File::create(dir.join(format!("moto-{port}.log"))).unwrap();
    let child = Command::new(&command)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_ACCOUNT_ID", "000000000000")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command} (pip install 'moto[server]'): {e}"));
    (child, port)
}

fn wait_for_port(what: &str, port: u16) {
    wait_for(
        &format!("{what} to accept connections"),
        Duration::from_secs(60),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// A moto server of its own, for tests that stop and restart it (on the same port; moto keeps
/// its queues in memory, so a restart starts empty). Stopped when dropped.
pub struct OwnMoto {
    child: Option<std::process::Child>,
    dir: PathBuf,
    port: u16,
}

impl OwnMoto {
    pub fn start() -> Self {
        servers();
        let dir = std::env::temp_dir().join(unique("sqs2pg-ownmoto"));
        std::fs::create_dir_all(&dir).unwrap();
        let (child, port) = spawn_moto(&dir, &[]);
        wait_for_port("moto (own)", port);
        Self {
            child: Some(child),
            dir,
            port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL) and waits until its port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for("moto's port to close", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
    }

    /// Starts a fresh server on the same port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        let command = std::env::var("SQS2PG_TEST_MOTO").unwrap_or_else(|_| "moto_server".into());
        let log = std::fs::File::create(self.dir.join("moto-again.log")).unwrap();
        let child = Command::new(&command)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .env("MOTO_ACCOUNT_ID", "000000000000")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port("moto (own, restarted)", self.port);
    }
}

impl Drop for OwnMoto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A moto server of its own that checks signatures: the first few calls (setting up an IAM
/// user with an access key allowed `sqs:*`, and a queue) go unchecked, every later request
/// must be signed with that key. Stopped when dropped.
pub struct SigningMoto {
    child: std::process::Child,
    pub queue_url: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl SigningMoto {
    pub fn start() -> Self {
        servers();
        let dir = std::env::temp_dir().join(unique("sqs2pg-moto-auth"));
        std::fs::create_dir_all(&dir).unwrap();
        // Exactly the four set-up calls below go unchecked.
        let (child, port) = spawn_moto(&dir, &[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]);
        wait_for_port("moto (signature checks on)", port);
        let call = |service: &str, form: &str| unsigned_post(port, service, form);
        call(
            "iam",
            "Action=CreateUser&UserName=sqs2pg&Version=2010-05-08",
        );
        let key = call(
            "iam",
            "Action=CreateAccessKey&UserName=sqs2pg&Version=2010-05-08",
        );
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sqs:*","Resource":"*"}]}"#;
        call(
            "iam",
            &format!(
                "Action=PutUserPolicy&UserName=sqs2pg&PolicyName=sqs&PolicyDocument={}&Version=2010-05-08",
                form_urlencoded::byte_serialize(policy.as_bytes()).collect::<String>()
            ),
        );
        let queue = call(
            "sqs",
            "Action=CreateQueue&QueueName=signed&Version=2012-11-05",
        );
        Self {
            child,
            queue_url: xml_text(&queue, "QueueUrl"),
            access_key_id: xml_text(&key, "AccessKeyId"),
            secret_access_key: xml_text(&key, "SecretAccessKey"),
        }
    }
}

impl Drop for SigningMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One form POST with an Authorization header that names `service` (moto routes by it) but is
/// not a valid signature; returns the answer's body. Panics unless the answer is 200.
fn unsigned_post(port: u16, service: &str, form: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{form}: {answer}");
    answer
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body (or `None` if nothing answers).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The text of the first `<name>` element in `xml` (test set-up only).
fn xml_text(xml: &str, name: &str) -> String {
    let start = xml
        .find(&format!("<{name}>"))
        .unwrap_or_else(|| panic!("no {name} in {xml}"))
        + name.len()
        + 2;
    let end = start + xml[start..].find('<').unwrap();
    xml[start..end].to_owned()
}

/// The command in `var`, or else where `scripts/install-deps.sh` installs it under
/// `~/.cache/sqs2pg/`.
fn installed(var: &str, under_cache: &str) -> String {
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

static LOCALSTACK_4: OnceLock<String> = OnceLock::new();

/// The endpoint of LocalStack 4.0.3, started on first call with its own watchdog.
pub fn localstack_4() -> &'static str {
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

static LOCALSTACK_014: OnceLock<String> = OnceLock::new();

/// The endpoint of LocalStack 0.14.3, started on first call (about 5 s) with its own watchdog.
pub fn localstack_014() -> &'static str {
    LOCALSTACK_014.get_or_init(start_localstack_014)
}

fn start_localstack_014() -> String {
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
fn start_localstack(
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

/// A throwaway CA and a server certificate for `localhost` (not for 127.0.0.1, so host name
/// checks can be seen to fail) signed by it (openssl CLI).
fn make_certificates(root: &Path, as_postgres: bool) -> PathBuf {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout ca.key -out ca.pem -subj /CN=sqs2pg-test-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile server.ext -out server.pem 2>/dev/null
chmod 600 server.key"#;
    run_ok(
        {
            let mut c = Command::new("sh");
            c.args(["-c", script]).current_dir(root);
            c
        },
        "make test certificates",
    );
    if as_postgres {
        run_ok(
            {
                let mut c = Command::new("chown");
                c.arg("postgres:")
                    .arg(root.join("server.key"))
                    .arg(root.join("server.pem"));
                c
            },
            "chown server key",
        );
    }
    root.join("ca.pem")
}

/// Polls `ready` until it holds or `timeout` passes (then panics naming `what`).
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Polls `ready` (without blocking the runtime) until it holds or `timeout` passes (then panics
/// naming `what`).
pub async fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh database; it goes away with the cluster.
pub struct TestDb {
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let s = servers();
        let name = unique("t");
        let admin = connect_url(&format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            s.pg_port
        ))
        .await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Self {
            url: format!(
                "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
                s.pg_port
            ),
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect_url(&self.url).await
    }
}

async fn connect_url(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Runs the core test `$case(sqs: Sqs)` against every SQS server and protocol, as tests
/// `$case::moto_json`, `$case::moto_query`, `$case::localstack_0_14` (query-only, reached
/// with `auto`) and `$case::localstack_4` (JSON, with `auto`).
macro_rules! on_every_sqs {
    ($case:ident) => {
        mod $case {
            use crate::harness::Sqs;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn moto_json() {
                super::$case(Sqs::MotoJson).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn moto_query() {
                super::$case(Sqs::MotoQuery).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn localstack_0_14() {
                super::$case(Sqs::LocalStack014).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn localstack_4() {
                super::$case(Sqs::LocalStack4).await
            }
        }
    };
}

/// The SQS servers (and protocols) the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sqs {
    /// moto, spoken to in JSON (the official SDK).
    MotoJson,
    /// moto, spoken to in the query protocol (our own client).
    MotoQuery,
    /// LocalStack 0.14.3, the exercise's own SQS, which speaks only query; reached with
    /// `--sqs-protocol auto`, as a user with no flags would.
    LocalStack014,
    /// LocalStack 4.0.3, a modern emulator that holds thousands of messages; `auto` (which
    /// must stay on JSON there).
    LocalStack4,
}

impl Sqs {
    pub fn endpoint(self) -> String {
        match self {
            Sqs::MotoJson | Sqs::MotoQuery => servers().sqs_endpoint.clone(),
            Sqs::LocalStack014 => localstack_014().to_owned(),
            Sqs::LocalStack4 => localstack_4().to_owned(),
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Sqs::MotoJson => Protocol::Json,
            Sqs::MotoQuery => Protocol::Query,
            Sqs::LocalStack014 | Sqs::LocalStack4 => Protocol::Auto,
        }
    }
}

/// A fresh queue on one of the SQS servers.
pub struct TestQueue {
    pub url: String,
    pub endpoint: String,
    pub protocol: Protocol,
    pub queue: Arc<Queue>,
}

impl TestQueue {
    /// A fresh queue on moto, in JSON.
    pub async fn new() -> Self {
        Self::on(Sqs::MotoJson).await
    }

    /// A fresh queue on the given server.
    pub async fn on(sqs: Sqs) -> Self {
        Self::named(sqs, &unique("q").replace('_', "-")).await
    }

    /// A queue named `name` on the SQS server at `endpoint`, spoken to in JSON.
    pub async fn at(endpoint: &str, name: &str) -> Self {
        let settings = SqsSettings {
            queue_url: format!("{endpoint}/000000000000/{name}"),
            endpoint_url: Some(endpoint.to_owned()),
            protocol: Protocol::Json,
        };
        let mut queue = Queue::connect(&settings).await.unwrap();
        queue.create_queue().await.unwrap();
        Self {
            url: queue.queue_url().to_owned(),
            endpoint: endpoint.to_owned(),
            protocol: Protocol::Json,
            queue: Arc::new(queue),
        }
    }

    /// A fresh FIFO queue on the given server.
    pub async fn fifo_on(sqs: Sqs) -> Self {
        Self::named(sqs, &format!("{}.fifo", unique("q").replace('_', "-"))).await
    }

    async fn named(sqs: Sqs, name: &str) -> Self {
        servers();
        let endpoint = sqs.endpoint();
        let settings = SqsSettings {
            queue_url: format!("{endpoint}/000000000000/{name}"),
            endpoint_url: Some(endpoint.clone()),
            protocol: sqs.protocol(),
        };
        let mut queue = Queue::connect(&settings).await.unwrap();
        queue.create_queue().await.unwrap();
        Self {
            url: queue.queue_url().to_owned(),
            endpoint,
            protocol: sqs.protocol(),
            queue: Arc::new(queue),
        }
    }

    /// Visible + in-flight messages.
    pub async fn depth(&self) -> u64 {
        let (visible, in_flight) = self.queue.approximate_depth().await.unwrap();
        visible + in_flight
    }

    /// Receives (without deleting) until `expected` distinct message ids were seen or `timeout`
    /// passed; returns the ids seen. Received messages stay invisible for a minute.
    pub async fn distinct_ids(&self, expected: usize, timeout: Duration) -> HashSet<String> {
        use sqs2pg::sqs::MessageSource;
        let deadline = Instant::now() + timeout;
        let mut ids = HashSet::new();
        while ids.len() < expected && Instant::now() < deadline {
            let got = self
                .queue
                .receive(10, Duration::from_secs(1), Some(Duration::from_secs(60)))
                .await
                .unwrap();
            ids.extend(got.into_iter().map(|m| m.ack.message_id));
        }
        ids
    }

    /// Sends bodies, 10 per call.
    pub async fn send(&self, bodies: &[String]) {
        for chunk in bodies.chunks(10) {
            let messages: Vec<sqs2pg::sqs::Outgoing> = chunk
                .iter()
                .map(|body| sqs2pg::sqs::Outgoing::new(body.clone()))
                .collect();
            let refused = self.queue.send_batch(&messages).await.unwrap();
            assert!(refused.is_empty());
        }
    }
}

/// The sample file shipped in the repo: 99 logins and one malformed message.
pub const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/login-queue-sample.jsonl"
);

/// The 100 sample bodies shipped in the repo.
pub fn sample_bodies() -> Vec<String> {
    let text = std::fs::read_to_string(SAMPLE).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// A masking key file (mode 600) in a fresh temp dir; returns its path.
pub fn key_file(key_b64: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(unique("sqs2pg-key"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mask.key");
    std::fs::write(&path, key_b64).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `n` synthetic logins, one per line, each with its own user_id (`user-00000`, ...); ips and
/// devices repeat, as in real traffic. Written to a fresh file, whose path is returned.
pub fn synthetic_logins(n: usize) -> PathBuf {
    let bodies: String = (0..n)
        .map(|i| {
            format!(
                "{{\"user_id\": \"user-{i:05}\", \"app_version\": \"2.{}.{}\", \"device_type\": \"android\", \"ip\": \"10.0.{}.{}\", \"locale\": \"RU\", \"device_id\": \"{:03}-45-6789\"}}\n",
                i % 7,
                i % 11,
                i % 250,
                i % 200,
                i % 997
            )
        })
        .collect();
    let file = std::env::temp_dir()
        .join(unique("logins"))
        .with_extension("jsonl");
    std::fs::write(&file, bodies).unwrap();
    file
}

/// The binary with a clean environment: PATH, HOME, test AWS credentials and region, then `env`.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqs2pg"));
    c.args(args).env_clear();
    for var in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(var) {
            c.env(var, v);
        }
    }
    c.envs([
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    c.envs(env.iter().copied());
    c
}

/// Runs the binary (see [`command`]) to its end.
pub fn sqs2pg(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    command(args, env).output().unwrap()
}

/// A finished process's stderr, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
