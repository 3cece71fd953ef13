//! The SQS server's own ceiling for `scripts/bench.py sqs`: drains a queue with nothing but
//! ReceiveMessage (10 per call) and DeleteMessageBatch, no database and no transform, with
//! `--concurrency` tasks each doing receive then delete in a loop. It stops, like
//! `sqs2pg drain`, when every task's long poll comes back empty.
//!
//! ```text
//! cargo run --release --example sqs_ceiling -- --queue-url URL [--concurrency 16] [--wait-time-secs 1]
//! ```
//!
//! Prints one line: `received N deleted N seconds S`. It speaks to the queue through sqs2pg's
//! own SQS client (JSON protocol, or query with `SQS2PG_SQS_PROTOCOL=query`), so the two pay
//! the same per-request costs. Credentials and region come from the usual chain; the endpoint
//! is the queue URL's origin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqs2pg::sqs::{AckHandle, MessageSource, Protocol, Queue, ReceiveRequest};

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
    let wait: u64 = flag("--wait-time-secs").map_or(1, |v| v.parse().expect("a number"));
    let protocol = match std::env::var("SQS2PG_SQS_PROTOCOL").as_deref() {
        Ok("query") => Protocol::Query,
        _ => Protocol::Json,
    };
    let settings = sqs2pg::sqs::queue::SqsSettings {
        queue_url,
        endpoint_url: None,
        protocol,
    };
    let queue = Arc::new(Queue::connect(&settings).await.expect("an SQS client"));
    let (received, deleted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let queue = queue.clone();
            let (received, deleted) = (received.clone(), deleted.clone());
            tokio::spawn(async move {
                let request = ReceiveRequest::new(10, Duration::from_secs(wait), None);
                loop {
                    let messages = queue.receive(&request).await.expect("receive");
                    if messages.is_empty() {
                        return;
                    }
                    received.fetch_add(messages.len() as u64, Ordering::Relaxed);
                    let acks: Vec<AckHandle> = messages.iter().map(|m| m.ack.clone()).collect();
                    let done = queue.delete(&acks).await.expect("delete");
                    deleted.fetch_add(done.deleted as u64, Ordering::Relaxed);
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
