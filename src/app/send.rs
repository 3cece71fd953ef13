//! `sqs2pg send`: one message per line of a file into the queue (also how `rejects replay`
//! sends).

use std::io::BufRead;
use std::path::Path;

use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use super::AppError;
use crate::cli::SendArgs;
use crate::config::ConfigError;
use crate::error::{fate, Fate, Outcome};
use crate::retry::RetryPolicy;
use crate::sqs::name::is_fifo;
use crate::sqs::queue::SqsSettings;
use crate::sqs::{Outgoing, Queue, SourceError, SourceErrorKind, SQS_BATCH_LIMIT};

/// `sqs2pg send`, as the command line runs it.
pub async fn command(args: SendArgs) -> Result<(), AppError> {
    let sqs = crate::config::queue(&args.queue)?;
    let sent = send(&sqs, &args.file, args.create_queue, args.concurrency).await?;
    println!("sent {sent} message(s) to {}", sqs.queue_url);
    Ok(())
}

/// `sqs2pg send`: one message per non-blank line, 10 per SendMessageBatch, `concurrency` calls
/// in flight; entries SQS refuses transiently are retried. Returns the number sent.
pub async fn send(
    settings: &SqsSettings,
    file: &Path,
    create_queue: bool,
    concurrency: usize,
) -> Result<u64, AppError> {
    let file_error = |error| AppError::File {
        path: file.display().to_string(),
        error,
    };
    let reader = std::io::BufReader::new(std::fs::File::open(file).map_err(file_error)?);
    let mut bodies = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(file_error)?;
        if !line.trim().is_empty() {
            bodies.push(Outgoing::new(line));
        }
    }
    let mut queue = Queue::connect(settings).await.map_err(ConfigError::from)?;
    if create_queue {
        queue.create_queue().await?;
    } else {
        queue.locate().await?;
    }
    let chunks: Vec<Vec<Outgoing>> = bodies
        .chunks(SQS_BATCH_LIMIT)
        .map(<[Outgoing]>::to_vec)
        .collect();
    // A FIFO queue keeps the order messages arrive in: one call at a time, each chunk (and
    // its retries) done before the next.
    let concurrency = if is_fifo(queue.queue_url()) {
        1
    } else {
        concurrency.max(1)
    };
    let results: Vec<Result<u64, SourceError>> = stream::iter(chunks)
        .map(|chunk| send_chunk(&queue, chunk))
        .buffered(concurrency)
        .collect()
        .await;
    let mut sent = 0;
    for r in results {
        sent += r?;
    }
    Ok(sent)
}

/// Attempts a batch of sends gets: 200, 400, 800 and 1,600 ms between them.
const SEND_RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(200),
    max_delay: Duration::from_millis(1600),
    max_attempts: Some(5),
};

/// Sends one batch of up to 10, again and again for what SQS refuses transiently.
pub(super) async fn send_chunk(
    queue: &Queue,
    mut chunk: Vec<Outgoing>,
) -> Result<u64, SourceError> {
    let total = chunk.len() as u64;
    let mut backoff = SEND_RETRY.steady_backoff();
    loop {
        let error = match queue.send_batch(&chunk).await {
            Ok(refused) if refused.is_empty() => return Ok(total),
            Ok(refused) => {
                chunk = refused;
                None
            }
            Err(e) if fate(Outcome::Sqs(&e)) == Fate::Retry => Some(e),
            Err(e) => return Err(e),
        };
        let Some(delay) = backoff.failed() else {
            return Err(error.unwrap_or_else(|| {
                SourceError::new(
                    SourceErrorKind::Transient,
                    "SendMessageBatch",
                    format!(
                        "{} entries still refused after {} attempts",
                        chunk.len(),
                        backoff.attempts()
                    ),
                )
            }));
        };
        tokio::time::sleep(delay).await;
    }
}
