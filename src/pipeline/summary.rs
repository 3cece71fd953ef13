//! The run summary: counts kept by the loader and deleter tasks, printed on one screen at exit.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What a `drain` or `run` did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Deliveries received from SQS (a message delivered twice counts twice, unless the second
    /// delivery joined the lease of the first: see `redelivered_while_held`).
    pub received: u64,
    /// Messages whose rows were committed to the target table.
    pub loaded: u64,
    /// Rows committed to the target table: as many as `loaded` for logins; for a mapping, a
    /// message may give none (an S3 test event) or several (an S3 notification's records).
    pub rows: u64,
    /// Rejections committed, by reason code.
    pub rejected: BTreeMap<String, u64>,
    /// Deliveries skipped because their message was already committed (ledger or same batch).
    pub duplicates: u64,
    /// Rows of keyed tables that changed nothing: a key already held (`ignore`), a row already
    /// applied (`upsert`), or superseded by a later row of their batch.
    pub duplicate_keys: u64,
    /// Rows of `latest` tables that lost to a greater version or a tombstone.
    pub stale: u64,
    /// Unknown JSON fields seen (ignored).
    pub unknown_fields: u64,
    /// Messages deleted from SQS.
    pub deleted: u64,
    /// Deletes that failed for good (those messages come back and are deleted as duplicates).
    pub delete_failures: u64,
    /// Deletes refused as stale handles: the message was received again (here or by another
    /// consumer) or already deleted, and its later delivery deletes it (not a failure).
    pub deletes_superseded: u64,
    /// Batches committed.
    pub batches: u64,
    /// Load attempts that failed and were retried.
    pub load_retries: u64,
    /// Visibility extensions sent by the heartbeat.
    pub visibility_extended: u64,
    /// Messages received but not committed, made visible again at the end of the run.
    pub released: u64,
    /// Deliveries whose body did not match its MD5: not processed, left for SQS to redeliver.
    pub md5_mismatches: u64,
    /// Valid messages received more often than `--max-receive-count`, loaded alone (a high
    /// receive count alone is no poison).
    pub suspects: u64,
    /// Messages whose load failed while the database took other work, left for SQS to
    /// redeliver (not deleted): they come back with one receive more (see `pipeline::load`).
    pub left_for_redelivery: u64,
    /// Deliveries of a message the run already held (a lapsed lease, or a server handing it
    /// out twice): they renewed its lease and went no further.
    pub redelivered_while_held: u64,
    /// Requests sent to SQS, by action: the run's SQS bill.
    pub requests: super::Requests,
    pub elapsed: Duration,
    /// From the last delete to the end of the run (how long a drain idles at its end).
    pub after_last_delete: Option<Duration>,
    /// A run over several queues: each queue's own summary, by queue name (these counts are
    /// their sums).
    pub queues: Vec<(String, Summary)>,
}

impl Summary {
    /// Adds what one batch's load counted (see `pipeline::load_batch`) to this summary.
    pub(crate) fn absorb_load(&mut self, part: Summary) {
        self.loaded += part.loaded;
        self.rows += part.rows;
        self.duplicates += part.duplicates;
        self.duplicate_keys += part.duplicate_keys;
        self.stale += part.stale;
        self.unknown_fields += part.unknown_fields;
        self.batches += part.batches;
        self.load_retries += part.load_retries;
        self.left_for_redelivery += part.left_for_redelivery;
        for (reason, n) in part.rejected {
            *self.rejected.entry(reason).or_default() += n;
        }
    }

    /// Adds the summary of one queue of a run over several (see [`Summary::queues`]).
    pub fn add_queue(&mut self, queue: String, part: Summary) {
        self.received += part.received;
        self.loaded += part.loaded;
        self.rows += part.rows;
        for (reason, n) in &part.rejected {
            *self.rejected.entry(reason.clone()).or_default() += n;
        }
        self.duplicates += part.duplicates;
        self.duplicate_keys += part.duplicate_keys;
        self.stale += part.stale;
        self.unknown_fields += part.unknown_fields;
        self.deleted += part.deleted;
        self.delete_failures += part.delete_failures;
        self.deletes_superseded += part.deletes_superseded;
        self.batches += part.batches;
        self.load_retries += part.load_retries;
        self.visibility_extended += part.visibility_extended;
        self.released += part.released;
        self.md5_mismatches += part.md5_mismatches;
        self.suspects += part.suspects;
        self.left_for_redelivery += part.left_for_redelivery;
        self.redelivered_while_held += part.redelivered_while_held;
        self.requests.receive += part.requests.receive;
        self.requests.delete += part.requests.delete;
        self.requests.change_visibility += part.requests.change_visibility;
        self.requests.get_attributes += part.requests.get_attributes;
        self.elapsed = self.elapsed.max(part.elapsed);
        self.after_last_delete = match (self.after_last_delete, part.after_last_delete) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.queues.push((queue, part));
    }

    /// Total rejections over all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// SQS requests per message committed (loaded or quarantined).
    pub fn requests_per_message(&self) -> Option<f64> {
        let messages = self.loaded + self.rejected_total();
        (messages > 0).then(|| self.requests.total() as f64 / messages as f64)
    }

    /// Received deliveries per second of elapsed time.
    pub fn messages_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.received as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, label: &str, value: u64| {
            writeln!(f, "  {label:<22}{value:>10}")
        };
        writeln!(f, "sqs2pg summary")?;
        row(f, "received", self.received)?;
        row(f, "loaded", self.loaded)?;
        if self.rows != self.loaded {
            row(f, "rows written", self.rows)?;
        }
        row(f, "rejected", self.rejected_total())?;
        for (reason, count) in &self.rejected {
            writeln!(f, "    {reason:<24}{count:>6}")?;
        }
        row(f, "duplicates skipped", self.duplicates)?;
        if self.duplicate_keys > 0 || self.stale > 0 {
            row(f, "duplicate keys", self.duplicate_keys)?;
            row(f, "stale versions", self.stale)?;
        }
        row(f, "deleted from queue", self.deleted)?;
        row(f, "delete failures", self.delete_failures)?;
        if self.deletes_superseded > 0 {
            row(f, "stale handles", self.deletes_superseded)?;
        }
        row(f, "MD5 mismatches", self.md5_mismatches)?;
        row(f, "unknown fields", self.unknown_fields)?;
        row(f, "batches", self.batches)?;
        row(f, "load retries", self.load_retries)?;
        row(f, "visibility extended", self.visibility_extended)?;
        row(f, "released uncommitted", self.released)?;
        row(f, "suspects loaded alone", self.suspects)?;
        row(f, "left for redelivery", self.left_for_redelivery)?;
        row(f, "redelivered while held", self.redelivered_while_held)?;
        row(f, "SQS requests", self.requests.total())?;
        writeln!(
            f,
            "    {:<24}{:>6}\n    {:<24}{:>6}\n    {:<24}{:>6}\n    {:<24}{:>6}",
            "receive",
            self.requests.receive,
            "delete",
            self.requests.delete,
            "change visibility",
            self.requests.change_visibility,
            "queue attributes",
            self.requests.get_attributes
        )?;
        if let Some(per) = self.requests_per_message() {
            writeln!(f, "  {:<22}{:>10.3}", "requests per message", per)?;
        }
        writeln!(
            f,
            "  {:<22}{:>10.2} s",
            "elapsed",
            self.elapsed.as_secs_f64()
        )?;
        if let Some(after) = self.after_last_delete {
            writeln!(
                f,
                "  {:<22}{:>10.2} s",
                "after last delete",
                after.as_secs_f64()
            )?;
        }
        writeln!(
            f,
            "  {:<22}{:>10.1} msg/s",
            "throughput",
            self.messages_per_sec()
        )?;
        for (queue, part) in &self.queues {
            writeln!(
                f,
                "  queue {queue}: received {}, loaded {}, rejected {}, duplicates {}, deleted {}",
                part.received,
                part.loaded,
                part.rejected_total(),
                part.duplicates,
                part.deleted
            )?;
        }
        Ok(())
    }
}
