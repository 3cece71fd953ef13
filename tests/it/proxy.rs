//! A slow SQS server, made of a real one: an HTTP/1.1 proxy on loopback that lets at most
//! `per_second` requests through to the server behind it, whatever the number of connections
//! (the way a throttled queue, a KMS-encrypted one or a busy emulator serves a fleet of
//! consumers). Requests wait their turn; none is refused or changed. It runs on a thread and
//! runtime of its own, so it serves while a test blocks on child processes.
//!
//! Our own code (no crate serves): it only has to find where each request ends, and SQS
//! clients (the official SDK, our query client, boto3) send a Content-Length with every
//! request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A running proxy; it stops with the test process.
pub struct RateLimited {
    pub port: u16,
    /// Requests passed through so far.
    pub requests: Arc<AtomicU64>,
}

impl RateLimited {
    /// A proxy on a free loopback port in front of `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, per_second: u32) -> Self {
        let upstream_port: u16 = upstream
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("an http://127.0.0.1:PORT endpoint");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicU64::new(0));
        let gap = Duration::from_secs(1) / per_second;
        let counted = requests.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                // The next instant a request may pass.
                let next = Arc::new(Mutex::new(Instant::now()));
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let (next, counted) = (next.clone(), counted.clone());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await
                        else {
                            return;
                        };
                        let _ = relay(client, server, gap, next, counted).await;
                    });
                }
            });
        });
        Self { port, requests }
    }

    /// The proxy's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Answers flow back as they come; each request waits for its turn, then goes on whole.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    gap: Duration,
    next: Arc<Mutex<Instant>>,
    counted: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_in, &mut client_out).await;
        let _ = client_out.shutdown().await;
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // One whole request: the head, then Content-Length bytes of body.
        let request_len = loop {
            match request_length(&pending) {
                Ok(Some(len)) => break len,
                Ok(None) => {}
                Err(e) => {
                    eprintln!("rate-limiting proxy: {e}; connection dropped");
                    answers.abort();
                    return Ok(());
                }
            }
            let n = client_in.read(&mut buf).await?;
            if n == 0 {
                answers.abort();
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
        };
        while pending.len() < request_len {
            let n = client_in.read(&mut buf).await?;
            if n == 0 {
                answers.abort();
                return Ok(());
            }
            pending.extend_from_slice(&buf[..n]);
        }
        let slot = {
            let mut next = next.lock().unwrap();
            let slot = (*next).max(Instant::now());
            *next = slot + gap;
            slot
        };
        tokio::time::sleep_until(slot).await;
        counted.fetch_add(1, Ordering::Relaxed);
        let rest = pending.split_off(request_len);
        server_out.write_all(&pending).await?;
        pending = rest;
    }
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
