//! The SQS server's own ceiling for `scripts/bench.py sqs`: drains a queue with nothing but
//! ReceiveMessage (10 per call) and DeleteMessageBatch, no database and no transform, with
//! `--concurrency` tasks each doing receive then delete in a loop. It stops, like
//! `sqs2pg drain`, when every task's long poll comes back empty.
//!
//! ```text
//! cargo run --release --example sqs_ceiling -- --queue-url URL [--concurrency 16] [--wait-time-secs 1]
//! ```
//!
//! Prints one line: `received N deleted N seconds S`. It speaks to the queue through the
//! official AWS SDK with the same HTTP client settings as sqs2pg (rustls on ring, so the two
//! pay the same per-request costs). Credentials and region come from the usual chain; the
//! endpoint is the queue URL's origin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// The same allocator as the sqs2pg binary (mimalloc; see the note in Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let queue_url = flag("--queue-url").expect("--queue-url URL");
    let concurrency: usize = flag("--concurrency").map_or(16, |v| v.parse().expect("a number"));
    let wait: i32 = flag("--wait-time-secs").map_or(1, |v| v.parse().expect("a number"));
    let origin = {
        let rest = queue_url.split_once("://").expect("an http(s) URL");
        let host = rest.1.split('/').next().unwrap_or_default();
        format!("{}://{host}", rest.0)
    };
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(origin)
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    // The same client as sqs2pg's, keep-alive request header included.
    let client = sqs2pg::sqs::sdk::client(&config);
    let (received, deleted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url) = (client.clone(), queue_url.clone());
            let (received, deleted) = (received.clone(), deleted.clone());
            tokio::spawn(async move {
                loop {
                    let answer = client
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(10)
                        .wait_time_seconds(wait)
                        .send()
                        .await
                        .expect("receive");
                    let messages = answer.messages.unwrap_or_default();
                    if messages.is_empty() {
                        return;
                    }
                    received.fetch_add(messages.len() as u64, Ordering::Relaxed);
                    let entries: Vec<DeleteMessageBatchRequestEntry> = messages
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            DeleteMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .receipt_handle(m.receipt_handle().unwrap_or_default())
                                .build()
                                .expect("id and handle are set")
                        })
                        .collect();
                    let done = client
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .expect("delete");
                    deleted.fetch_add(done.successful.len() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a drain task");
    }
    println!(
        "received {} deleted {} seconds {:.3}",
        received.load(Ordering::Relaxed),
        deleted.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}
