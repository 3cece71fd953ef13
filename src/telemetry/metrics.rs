//! Metric names, in one place, and the functions that record them.
//!
//! Everything goes through the `metrics` facade; it costs nothing until a recorder is
//! installed (`--metrics-addr` installs the Prometheus one, see [`super::http`]). Labels are
//! low-cardinality by construction: `reason` is a reason code from a fixed set and `state` is
//! `visible` or `in_flight`, `kind` is `login` or a mapping's table; never a value from a message.

use std::time::{Duration, SystemTime};

/// Deliveries received from SQS.
pub const MESSAGES_RECEIVED: &str = "sqs2pg_messages_received_total";
/// Rows committed to the target table.
pub const ROWS_LOADED: &str = "sqs2pg_rows_loaded_total";
/// Messages whose rows were committed (one row each for logins).
pub const MESSAGES_LOADED: &str = "sqs2pg_messages_loaded_total";
/// Rejections committed, labelled by `reason` code.
pub const MESSAGES_REJECTED: &str = "sqs2pg_messages_rejected_total";
/// Deliveries skipped because their message was already committed.
pub const DUPLICATES_SKIPPED: &str = "sqs2pg_duplicates_skipped_total";
/// Failed load attempts that were retried.
pub const LOAD_RETRIES: &str = "sqs2pg_load_retries_total";
/// Label of [`MESSAGES_REJECTED`].
pub const REASON_LABEL: &str = "reason";
/// Failed receive calls that were retried.
pub const RECEIVE_RETRIES: &str = "sqs2pg_receive_retries_total";
/// Committed messages whose delete failed for good (they come back as duplicates).
pub const DELETE_FAILURES: &str = "sqs2pg_delete_failures_total";
/// Histogram: messages per committed batch.
pub const BATCH_MESSAGES: &str = "sqs2pg_batch_messages";
/// Histogram: seconds from a batch's first load attempt to its COMMIT, retries included.
pub const LOAD_SECONDS: &str = "sqs2pg_load_duration_seconds";
/// Gauge: messages received and not yet deleted or released.
pub const MESSAGES_IN_FLIGHT: &str = "sqs2pg_messages_in_flight";
/// Gauge: the queue's approximate depth, labelled `state` = `visible` / `in_flight` (polled).
pub const QUEUE_MESSAGES: &str = "sqs2pg_queue_messages";
/// Label of [`QUEUE_MESSAGES`].
pub const STATE_LABEL: &str = "state";
/// Gauge: at the last COMMIT, seconds since the oldest message of the batch was sent (now minus
/// its SentTimestamp): how far behind the queue the pipeline runs.
pub const OLDEST_MESSAGE_AGE_SECONDS: &str = "sqs2pg_oldest_message_age_seconds";
/// Deliveries whose body did not match the MD5 the server sent with it (see `sqs::accept`).
pub const MD5_MISMATCHES: &str = "sqs2pg_sqs_md5_mismatches_total";
/// SQS requests sent by the pipeline, labelled `action` = `receive` / `delete` /
/// `change_visibility` / `get_queue_attributes`: SQS bills per request, so this over rows loaded is the bill per row.
pub const SQS_REQUESTS: &str = "sqs2pg_sqs_requests_total";
/// Label of [`SQS_REQUESTS`].
pub const ACTION_LABEL: &str = "action";
/// Gauge: the most messages the run may hold now (the adaptive window, see `pipeline::window`).
pub const WINDOW_MESSAGES: &str = "sqs2pg_window_messages";
/// Held messages whose visibility timeout ran out before the heartbeat extended it.
pub const LEASES_LAPSED: &str = "sqs2pg_leases_lapsed_total";

/// Top-level fields of transformed deliveries that no column takes, labelled `kind` (`login`
/// or a mapping's table).
pub const UNKNOWN_FIELDS: &str = "sqs2pg_unknown_fields_total";
/// Label of [`UNKNOWN_FIELDS`].
pub const KIND_LABEL: &str = "kind";

/// Rows of keyed tables (write modes ignore, upsert, latest) that changed nothing, labelled
/// `outcome` = `duplicate_key` (a key already held, a row already applied, or superseded in
/// its batch) / `stale` (lost to a greater version or a tombstone).
pub const KEYED_ROWS_SKIPPED: &str = "sqs2pg_keyed_rows_skipped_total";
/// Label of [`KEYED_ROWS_SKIPPED`].
pub const OUTCOME_LABEL: &str = "outcome";

/// Times a queue of a run over several failed and was tried again, labelled `queue` (its name).
pub const QUEUE_DEGRADED: &str = "sqs2pg_queue_degraded_total";
/// Label of [`QUEUE_DEGRADED`].
pub const QUEUE_LABEL: &str = "queue";

/// Every metric's help text, as `/metrics` shows it on its `# HELP` line.
pub const DESCRIPTIONS: [(&str, &str); 20] = [
    (MESSAGES_RECEIVED, "Deliveries received from SQS, counted when their batch is done (loaded, quarantined, skipped as duplicates or left for redelivery)."),
    (ROWS_LOADED, "Rows committed to the target table (a mapped message can give none or several)."),
    (MESSAGES_LOADED, "Messages whose rows were committed (received = loaded + rejected + duplicates + left for redelivery)."),
    (MESSAGES_REJECTED, "Messages quarantined in sqs2pg.rejected_messages, by reason code."),
    (DUPLICATES_SKIPPED, "Deliveries skipped because their message was already committed."),
    (LOAD_RETRIES, "Failed load attempts that were retried."),
    (RECEIVE_RETRIES, "Failed receive calls that were retried."),
    (DELETE_FAILURES, "Committed messages whose delete failed for good (they come back and are skipped as duplicates)."),
    (BATCH_MESSAGES, "Messages per committed batch."),
    (LOAD_SECONDS, "Seconds from a batch's first load attempt to its COMMIT, retries included."),
    (MESSAGES_IN_FLIGHT, "Messages received and not yet deleted or released."),
    (QUEUE_MESSAGES, "The queue's approximate depth by state (visible, in_flight), polled every 15 s."),
    (OLDEST_MESSAGE_AGE_SECONDS, "At the last COMMIT, seconds since the oldest message of the batch was sent."),
    (MD5_MISMATCHES, "Deliveries whose body did not match its MD5 (left for SQS to redeliver)."),
    (SQS_REQUESTS, "SQS requests sent by the pipeline, by action (receive, delete, change_visibility, get_queue_attributes)."),
    (WINDOW_MESSAGES, "The most messages the run may hold now (adapts to what commits within the visibility timeout)."),
    (LEASES_LAPSED, "Held messages whose visibility timeout ran out before the heartbeat extended it."),
    (UNKNOWN_FIELDS, "Top-level fields of transformed deliveries that no column takes (kept in rest or dropped), by kind (login or the mapping's table); their names are logged once each."),
    (QUEUE_DEGRADED, "Times a queue of a run over several failed (access revoked, deleted, unreachable) and was tried again while the other queues kept loading, by queue name."),
    (KEYED_ROWS_SKIPPED, "Rows of keyed tables that changed nothing, by outcome: duplicate_key (key already held, row already applied, or superseded in its batch) or stale (lost to a greater version or a tombstone)."),
];

/// Gives every metric its help text; call once, after installing a recorder.
pub fn describe() {
    for (name, help) in DESCRIPTIONS {
        // The kind only decides which describe call the recorder gets; Prometheus's exporter
        // keeps one description per name whatever the kind.
        match name {
            BATCH_MESSAGES | LOAD_SECONDS => metrics::describe_histogram!(name, help),
            MESSAGES_IN_FLIGHT | QUEUE_MESSAGES | OLDEST_MESSAGE_AGE_SECONDS | WINDOW_MESSAGES => {
                metrics::describe_gauge!(name, help)
            }
            _ => metrics::describe_counter!(name, help),
        }
    }
}

/// Bucket bounds of [`BATCH_MESSAGES`].
pub const BATCH_MESSAGES_BUCKETS: [f64; 8] = [1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];
/// Bucket bounds of [`LOAD_SECONDS`].
pub const LOAD_SECONDS_BUCKETS: [f64; 10] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// Counts one committed batch: `received` deliveries, the messages `loaded` and the `rows` they
/// gave, the report's rejections, and
/// `duplicates` skipped (by the ledger or within the batch); its size, how long it took to
/// commit and, when known, the send time (milliseconds since the epoch) of its oldest message.
pub fn record_batch(
    received: u64,
    loaded: u64,
    rows: u64,
    rejected: &[String],
    duplicates: u64,
    took: Duration,
    oldest_sent_ms: Option<i64>,
) {
    metrics::histogram!(BATCH_MESSAGES).record(received as f64);
    metrics::histogram!(LOAD_SECONDS).record(took.as_secs_f64());
    if let Some(sent) = oldest_sent_ms {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i128);
        metrics::gauge!(OLDEST_MESSAGE_AGE_SECONDS)
            .set((now_ms - i128::from(sent)).max(0) as f64 / 1000.0);
    }
    metrics::counter!(MESSAGES_RECEIVED).increment(received);
    metrics::counter!(ROWS_LOADED).increment(rows);
    metrics::counter!(MESSAGES_LOADED).increment(loaded);
    metrics::counter!(DUPLICATES_SKIPPED).increment(duplicates);
    for reason in rejected {
        metrics::counter!(MESSAGES_REJECTED, REASON_LABEL => reason.clone()).increment(1);
    }
}

/// Counts one failure of a queue of a run over several (see [`QUEUE_DEGRADED`]).
pub fn record_queue_degraded(queue: &str) {
    metrics::counter!(QUEUE_DEGRADED, QUEUE_LABEL => queue.to_owned()).increment(1);
}

/// Counts rows of keyed tables that changed nothing (see [`KEYED_ROWS_SKIPPED`]).
pub fn record_keyed_skips(duplicate_keys: u64, stale: u64) {
    if duplicate_keys > 0 {
        metrics::counter!(KEYED_ROWS_SKIPPED, OUTCOME_LABEL => "duplicate_key")
            .increment(duplicate_keys);
    }
    if stale > 0 {
        metrics::counter!(KEYED_ROWS_SKIPPED, OUTCOME_LABEL => "stale").increment(stale);
    }
}

/// The counter of fields no column of `kind` takes: taken once per run, so counting a
/// delivery's costs no label lookup or allocation on the message path.
pub fn unknown_fields(kind: &str) -> metrics::Counter {
    metrics::counter!(UNKNOWN_FIELDS, KIND_LABEL => kind.to_owned())
}

/// Counts one retried load attempt.
pub fn record_load_retry() {
    metrics::counter!(LOAD_RETRIES).increment(1);
}

/// Counts one retried receive.
pub fn record_receive_retry() {
    metrics::counter!(RECEIVE_RETRIES).increment(1);
}

/// Counts deletes that failed for good.
pub fn record_delete_failures(n: u64) {
    metrics::counter!(DELETE_FAILURES).increment(n);
}

/// Counts one body that failed its MD5 check.
pub fn record_md5_mismatch() {
    metrics::counter!(MD5_MISMATCHES).increment(1);
}

/// Counts SQS requests of one action (`receive`, `delete`, `change_visibility`,
/// `get_queue_attributes`).
pub fn record_sqs_requests(action: &'static str, n: u64) {
    metrics::counter!(SQS_REQUESTS, ACTION_LABEL => action).increment(n);
}

/// Sets the adaptive window.
pub fn record_window(n: usize) {
    metrics::gauge!(WINDOW_MESSAGES).set(n as f64);
}

/// Counts leases that lapsed.
pub fn record_lapsed(n: u64) {
    metrics::counter!(LEASES_LAPSED).increment(n);
}

/// Sets the number of messages held.
pub fn record_in_flight(n: usize) {
    metrics::gauge!(MESSAGES_IN_FLIGHT).set(n as f64);
}

/// Sets the queue's depth as last polled.
pub fn record_queue_depth(visible: u64, in_flight: u64) {
    metrics::gauge!(QUEUE_MESSAGES, STATE_LABEL => "visible").set(visible as f64);
    metrics::gauge!(QUEUE_MESSAGES, STATE_LABEL => "in_flight").set(in_flight as f64);
}

/// A recorder for unit tests that keeps counters by `name{label=value,...}`.
#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    #[derive(Default)]
    pub(crate) struct Counters(Mutex<BTreeMap<String, Arc<Value>>>);

    impl Counters {
        /// Every counter so far, by `name{labels}`.
        pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.0.load(Ordering::Relaxed)))
                .collect()
        }
    }

    #[derive(Default)]
    struct Value(AtomicU64);

    impl CounterFn for Value {
        fn increment(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
        fn absolute(&self, n: u64) {
            self.0.store(n, Ordering::Relaxed);
        }
    }

    impl Recorder for Counters {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let value = self.0.lock().unwrap().entry(name).or_default().clone();
            Counter::from_arc(value)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::testing::Counters;
    use super::*;

    #[test]
    fn a_batch_is_counted_by_reason() {
        let recorder = Counters::default();
        let rejected = ["not_json".into(), "invalid_ip".into(), "not_json".into()];
        metrics::with_local_recorder(&recorder, || {
            // 7 messages loaded, giving 9 rows (a mapping can fan out).
            record_batch(11, 7, 9, &rejected, 1, Duration::from_millis(20), None);
            record_load_retry();
        });
        let got = recorder.snapshot();
        let want: BTreeMap<String, u64> = [
            ("sqs2pg_duplicates_skipped_total{}", 1),
            ("sqs2pg_load_retries_total{}", 1),
            ("sqs2pg_messages_loaded_total{}", 7),
            ("sqs2pg_messages_received_total{}", 11),
            ("sqs2pg_messages_rejected_total{reason=invalid_ip}", 1),
            ("sqs2pg_messages_rejected_total{reason=not_json}", 2),
            ("sqs2pg_rows_loaded_total{}", 9),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_fields_are_counted_by_kind_through_one_handle() {
        let recorder = Counters::default();
        metrics::with_local_recorder(&recorder, || {
            let orders = unknown_fields("public.orders");
            orders.increment(2);
            orders.increment(3);
            unknown_fields("login").increment(1);
        });
        let got = recorder.snapshot();
        assert_eq!(got["sqs2pg_unknown_fields_total{kind=public.orders}"], 5);
        assert_eq!(got["sqs2pg_unknown_fields_total{kind=login}"], 1);
    }
}
