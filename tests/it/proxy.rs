//! A slow or unreliable SQS server, made of a real one: an HTTP/1.1 proxy on loopback in front
//! of it. It can let at most `per_second` requests through, whatever the number of connections
//! (the way a throttled queue, a KMS-encrypted one or a busy emulator serves a fleet of
//! consumers); lose answers on the way (the request is served, then the answer is cut after
//! its head and part of its body and the connection reset: what a load balancer or a NAT reset
//! does); and never answer some requests (a black-holed call). It records the
//! `ReceiveRequestAttemptId` of every receive. It runs on a thread and runtime of its own, so it
//! serves while a test blocks on child processes.
//!
//! Our own code (no crate serves): it only has to find where each request ends and where an
//! answer's head ends, and SQS clients (our JSON and query clients, boto3) send a
//! Content-Length with every request. Clients send one request at a time on a connection, so
//! the bytes the server sends after a request are its answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Requests let through per second, at most (none: no limit).
    pub per_second: Option<u32>,
    /// The share (0 to 1) of answers cut short and reset, of the actions in `reset_actions`
    /// (every action when empty).
    pub reset: f64,
    pub reset_actions: Vec<&'static str>,
    /// The share (0 to 1) of requests of the actions in `hang_actions` neither passed on nor
    /// answered.
    pub hang: f64,
    pub hang_actions: Vec<&'static str>,
}

/// One receive as the proxy saw it: its attempt id (if any), and whether its answer was lost.
#[derive(Debug, Clone)]
pub struct SeenReceive {
    pub attempt_id: Option<String>,
    pub answer_lost: bool,
}

/// What the proxy did, so far.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests passed through.
    pub requests: AtomicU64,
    /// Answers cut short and reset.
    pub resets: AtomicU64,
    /// Requests never passed on nor answered.
    pub hung: AtomicU64,
    /// Every receive, in the order they arrived.
    pub receives: Mutex<Vec<SeenReceive>>,
}

/// A running proxy; it stops with the test process.
pub struct Proxy {
    pub port: u16,
    pub counts: Arc<Counts>,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, plan: Plan) -> Self {
        let upstream_port: u16 = upstream
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("an http://127.0.0.1:PORT endpoint");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Shared {
            gap: plan.per_second.map(|n| Duration::from_secs(1) / n),
            next: Mutex::new(Instant::now()),
            rng: Mutex::new(fastrand::Rng::with_seed(7)),
            plan,
            counts: counts.clone(),
        });
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await
                        else {
                            return;
                        };
                        if let Err(e) = relay(client, server, &shared).await {
                            if e.kind() != std::io::ErrorKind::ConnectionReset {
                                eprintln!("proxy: {e}; connection dropped");
                            }
                        }
                    });
                }
            });
        });
        Self { port, counts }
    }

    /// The proxy's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests passed through so far.
    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// Answers reset so far.
    pub fn resets(&self) -> u64 {
        self.counts.resets.load(Ordering::Relaxed)
    }

    /// Requests black-holed so far.
    pub fn hung(&self) -> u64 {
        self.counts.hung.load(Ordering::Relaxed)
    }
}

/// What every connection of one proxy shares.
struct Shared {
    plan: Plan,
    /// The rate limit's spacing, and the next instant a request may pass.
    gap: Option<Duration>,
    next: Mutex<Instant>,
    /// Seeded: a run loses the same share of answers each time.
    rng: Mutex<fastrand::Rng>,
    counts: Arc<Counts>,
}

impl Shared {
    fn roll(&self, share: f64, actions: &[&str], action: &str) -> bool {
        share > 0.0
            && (actions.is_empty() || actions.contains(&action))
            && self.rng.lock().unwrap().f64() < share
    }
}

/// What happens to the answer to the request in flight on a connection.
#[derive(PartialEq, Eq)]
enum Answer {
    Pass,
    Cut,
}

/// Relays one client connection: requests go on whole (each in its turn under a rate limit),
/// answers come back as they come, or are cut and reset, or never come.
async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut answer = Vec::new();
    let mut fate = Answer::Pass;
    let mut hung = false;
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = client.read(&mut from_client) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                if hung {
                    // The client waits for an answer that never comes; nothing more is sent on.
                    continue;
                }
                pending.extend_from_slice(&from_client[..n]);
                while let Some(len) = request_length(&pending).map_err(std::io::Error::other)? {
                    if pending.len() < len {
                        break;
                    }
                    let rest = pending.split_off(len);
                    let request = std::mem::replace(&mut pending, rest);
                    let action = action_of(&request);
                    if shared.roll(shared.plan.hang, &shared.plan.hang_actions, &action) {
                        shared.counts.hung.fetch_add(1, Ordering::Relaxed);
                        hung = true;
                        break;
                    }
                    fate = if shared.roll(shared.plan.reset, &shared.plan.reset_actions, &action) {
                        Answer::Cut
                    } else {
                        Answer::Pass
                    };
                    if action == "ReceiveMessage" {
                        shared.counts.receives.lock().unwrap().push(SeenReceive {
                            attempt_id: attempt_id(&request),
                            answer_lost: fate == Answer::Cut,
                        });
                    }
                    if let Some(gap) = shared.gap {
                        let slot = {
                            let mut next = shared.next.lock().unwrap();
                            let slot = (*next).max(Instant::now());
                            *next = slot + gap;
                            slot
                        };
                        tokio::time::sleep_until(slot).await;
                    }
                    shared.counts.requests.fetch_add(1, Ordering::Relaxed);
                    server.write_all(&request).await?;
                }
            }
            n = server.read(&mut from_server) => {
                let n = n?;
                if n == 0 {
                    client.shutdown().await?;
                    return Ok(());
                }
                if fate == Answer::Pass {
                    client.write_all(&from_server[..n]).await?;
                    continue;
                }
                // Served, and lost on the way: the head and part of the body, then a reset.
                answer.extend_from_slice(&from_server[..n]);
                let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let body = answer.len() - (head_end + 4);
                if body == 0 {
                    continue;
                }
                client.write_all(&answer[..head_end + 4 + body / 2]).await?;
                client.flush().await?;
                shared.counts.resets.fetch_add(1, Ordering::Relaxed);
                client.set_zero_linger()?;
                return Ok(());
            }
        }
    }
}

/// The SQS action of a request: the JSON protocol's `X-Amz-Target: AmazonSQS.ACTION`, or the
/// query protocol's `Action=ACTION` form field.
fn action_of(request: &[u8]) -> String {
    let text = String::from_utf8_lossy(request);
    for line in text.split("\r\n") {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("x-amz-target") {
                return value.trim().trim_start_matches("AmazonSQS.").to_owned();
            }
        }
    }
    form_field(&text, "Action").unwrap_or_default()
}

/// A receive's `ReceiveRequestAttemptId`, in either protocol.
fn attempt_id(request: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(request);
    let body = text.split_once("\r\n\r\n")?.1;
    if body.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        return json["ReceiveRequestAttemptId"].as_str().map(str::to_owned);
    }
    form_field(&text, "ReceiveRequestAttemptId")
}

/// A field of a form body.
fn form_field(request: &str, name: &str) -> Option<String> {
    let body = request.split_once("\r\n\r\n")?.1;
    form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The length of the first request in `bytes`, head and body, once its head is complete.
fn request_length(bytes: &[u8]) -> Result<Option<usize>, String> {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head_end = head_end + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|_| "a head that is not text")?;
    let mut body = 0;
    for line in head.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked request, which this proxy does not relay".into());
        }
        if name.eq_ignore_ascii_case("content-length") {
            body = value
                .trim()
                .parse()
                .map_err(|_| "a Content-Length that is not a number")?;
        }
    }
    Ok(Some(head_end + body))
}

#[test]
fn requests_are_framed_by_their_content_length() {
    let two = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n";
    let first = request_length(two).unwrap().unwrap();
    assert_eq!(&two[first - 3..first], b"abc");
    assert_eq!(
        request_length(&two[first..]).unwrap(),
        Some(two.len() - first)
    );
    assert_eq!(
        request_length(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n").unwrap(),
        None
    );
    assert!(request_length(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
}

#[test]
fn the_action_and_attempt_id_are_read_in_both_protocols() {
    let json = b"POST / HTTP/1.1\r\nX-Amz-Target: AmazonSQS.ReceiveMessage\r\nContent-Length: 35\r\n\r\n{\"ReceiveRequestAttemptId\": \"abc1\"}";
    assert_eq!(action_of(json), "ReceiveMessage");
    assert_eq!(attempt_id(json).as_deref(), Some("abc1"));
    let query = b"POST / HTTP/1.1\r\nContent-Length: 52\r\n\r\nAction=ReceiveMessage&ReceiveRequestAttemptId=abc2&x=1";
    assert_eq!(action_of(query), "ReceiveMessage");
    assert_eq!(attempt_id(query).as_deref(), Some("abc2"));
    assert_eq!(
        action_of(b"POST / HTTP/1.1\r\n\r\nAction=DeleteMessageBatch"),
        "DeleteMessageBatch"
    );
}
