//! PostgreSQL for the tests: finding and running its tools (as `postgres` when we are root),
//! a cluster of a test's own, TLS certificates, and a fresh database per test.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn pg_bindir() -> PathBuf {
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
pub fn pg_command(bindir: &Path, tool: &str, as_postgres: bool) -> Command {
    let exe = bindir.join(tool);
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

pub fn run_ok(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
        let (root, bindir, data, as_postgres, mut initdb) = new_cluster("sqs2pg-ownpg");
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

/// A fresh directory (owned by `postgres` when we are root) and an `initdb` command for a
/// cluster in it, user `postgres`, UTF8, not synced; the caller adds the authentication.
/// Returns (directory, PostgreSQL's bin directory, data directory, whether commands run as
/// `postgres`, the `initdb` command).
pub fn new_cluster(prefix: &str) -> (PathBuf, PathBuf, PathBuf, bool, Command) {
    let root = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&root).unwrap();
    let as_postgres = is_root();
    if as_postgres {
        let mut chown = Command::new("chown");
        chown.arg("postgres:").arg(&root);
        run_ok(chown, "chown cluster dir");
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
    (root, bindir, data, as_postgres, initdb)
}

/// A throwaway CA and a server certificate for `localhost` (not for 127.0.0.1, so host name
/// checks can be seen to fail) signed by it (openssl CLI).
pub fn make_certificates(root: &Path, as_postgres: bool) -> PathBuf {
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

pub async fn connect_url(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}
