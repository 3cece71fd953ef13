//! moto SQS servers of a test's own: a plain one (to stop and restart) and one that checks
//! request signatures.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

/// Starts a moto server on a free port with extra environment; its log goes under `dir`.
pub fn spawn_moto(dir: &Path, env: &[(&str, &str)]) -> (std::process::Child, u16) {
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
pub fn unsigned_post(port: u16, service: &str, form: &str) -> String {
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

/// The text of the first `<name>` element in `xml` (test set-up only).
pub fn xml_text(xml: &str, name: &str) -> String {
    let start = xml
        .find(&format!("<{name}>"))
        .unwrap_or_else(|| panic!("no {name} in {xml}"))
        + name.len()
        + 2;
    let end = start + xml[start..].find('<').unwrap();
    xml[start..end].to_owned()
}
