//! Metric names, in one place, and the functions that record them.
//!
//! Everything goes through the `metrics` facade; it costs nothing until a recorder is
//! installed (`--metrics-addr` installs the Prometheus one, see [`super::http`]). A pipeline
//! records through its [`Meter`], which labels every series with its `queue`. Labels are
//! low-cardinality by construction: `queue` is a queue's name, `mapping` a target table,
//! `reason` a reason code from a fixed set, `state` `visible` or `in_flight`, `kind` `login`
//! or a mapping's table; never a value from a message.

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
/// Committed messages whose delete SQS refused as a stale receipt handle (received again since,
/// or already deleted): their later delivery deletes them; not a failure.
pub const DELETES_SUPERSEDED: &str = "sqs2pg_deletes_superseded_total";
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

/// Label of the series of a target table, [`ROWS_LOADED`] and [`KEYED_ROWS_SKIPPED`]: the
/// table a mapping writes (`schema.table`).
pub const MAPPING_LABEL: &str = "mapping";

/// Times a queue of a run over several failed and was tried again, labelled `queue` (its name).
pub const QUEUE_DEGRADED: &str = "sqs2pg_queue_degraded_total";
/// Label of every series of a pipeline (see [`Meter`]) and of [`QUEUE_DEGRADED`]: the queue's
/// name.
pub const QUEUE_LABEL: &str = "queue";

/// Every metric's help text, as `/metrics` shows it on its `# HELP` line.
pub const DESCRIPTIONS: [(&str, &str); 21] = [
    (MESSAGES_RECEIVED, "Deliveries received from SQS, counted when their batch is done (loaded, quarantined, skipped as duplicates or left for redelivery)."),
    (ROWS_LOADED, "Rows committed to the target table (a mapped message can give none or several)."),
    (MESSAGES_LOADED, "Messages whose rows were committed (received = loaded + rejected + duplicates + left for redelivery)."),
    (MESSAGES_REJECTED, "Messages quarantined in sqs2pg.rejected_messages, by reason code."),
    (DUPLICATES_SKIPPED, "Deliveries skipped because their message was already committed."),
    (LOAD_RETRIES, "Failed load attempts that were retried."),
    (RECEIVE_RETRIES, "Failed receive calls that were retried."),
    (DELETE_FAILURES, "Committed messages whose delete failed for good (they come back and are skipped as duplicates)."),
    (DELETES_SUPERSEDED, "Committed messages whose delete was refused as a stale receipt handle (received again since, or already deleted); their later delivery deletes them."),
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

/// One committed batch, as [`Meter::record_batch`] counts it.
#[derive(Debug, Default)]
pub struct BatchCounts<'a> {
    /// Deliveries in the batch.
    pub received: u64,
    /// Messages whose rows were committed.
    pub loaded: u64,
    /// Reason codes of the rejections committed.
    pub rejected: &'a [String],
    /// Deliveries skipped (by the ledger or within the batch).
    pub duplicates: u64,
    /// Per target table, in the kind's order: rows written, and rows of a keyed table that
    /// changed nothing (`duplicate_key`, `stale`).
    pub targets: &'a [(u64, u64, u64)],
    /// From the first load attempt to COMMIT.
    pub took: Duration,
    /// The send time (milliseconds since the epoch) of the batch's oldest message, when known.
    pub oldest_sent_ms: Option<i64>,
}

/// The metrics of one queue's pipeline: every series carries label `queue` (the queue's
/// name), and those of a target table `mapping` too (the table a mapping writes, as
/// `schema.table`). Handles are taken once, when the run starts (after the recorder is
/// installed), so counting costs no label lookup on the message path. Cheap to clone; the
/// default records nothing.
#[derive(Clone)]
pub struct Meter(std::sync::Arc<Handles>);

struct Handles {
    /// `None` for the default meter, whose handles are no-ops.
    queue: Option<String>,
    received: metrics::Counter,
    loaded: metrics::Counter,
    duplicates: metrics::Counter,
    load_retries: metrics::Counter,
    receive_retries: metrics::Counter,
    delete_failures: metrics::Counter,
    deletes_superseded: metrics::Counter,
    md5_mismatches: metrics::Counter,
    lapsed: metrics::Counter,
    batch_messages: metrics::Histogram,
    load_seconds: metrics::Histogram,
    in_flight: metrics::Gauge,
    window: metrics::Gauge,
    oldest_age: metrics::Gauge,
    depth_visible: metrics::Gauge,
    depth_in_flight: metrics::Gauge,
    /// By action: receive, delete, change_visibility, get_queue_attributes.
    requests: [metrics::Counter; 4],
    /// Per target: rows, duplicate_key, stale.
    targets: Vec<[metrics::Counter; 3]>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Meter")
            .field(&self.0.queue.as_deref())
            .finish()
    }
}

/// The SQS actions [`Meter::record_sqs_request`] counts, in [`Handles::requests`]'s order.
const ACTIONS: [&str; 4] = [
    "receive",
    "delete",
    "change_visibility",
    "get_queue_attributes",
];

impl Default for Meter {
    /// Records nothing, whatever recorder is installed.
    fn default() -> Self {
        let mut meter =
            metrics::with_local_recorder(&metrics::NoopRecorder, || Meter::new("", &[]));
        std::sync::Arc::get_mut(&mut meter.0)
            .expect("not shared yet")
            .queue = None;
        meter
    }
}

impl Meter {
    /// The meter of the pipeline of `queue` (its name) writing `targets` (in the kind's
    /// target order).
    pub fn new(queue: &str, targets: &[String]) -> Self {
        let q = queue.to_owned();
        let label = || (QUEUE_LABEL, q.clone());
        let counter = |name: &'static str| metrics::counter!(name, &[label()]);
        let gauge = |name: &'static str| metrics::gauge!(name, &[label()]);
        let histogram = |name: &'static str| metrics::histogram!(name, &[label()]);
        let depth = |state: &'static str| metrics::gauge!(QUEUE_MESSAGES, QUEUE_LABEL => q.clone(), STATE_LABEL => state);
        let requests = ACTIONS.map(|action| {
            metrics::counter!(SQS_REQUESTS, QUEUE_LABEL => q.clone(), ACTION_LABEL => action)
        });
        let targets = targets
            .iter()
            .map(|mapping| {
                let labels = |name: &'static str, outcome: Option<&'static str>| {
                    let mut labels =
                        vec![(QUEUE_LABEL, q.clone()), (MAPPING_LABEL, mapping.clone())];
                    labels.extend(outcome.map(|o| (OUTCOME_LABEL, o.to_owned())));
                    metrics::counter!(name, &labels)
                };
                [
                    labels(ROWS_LOADED, None),
                    labels(KEYED_ROWS_SKIPPED, Some("duplicate_key")),
                    labels(KEYED_ROWS_SKIPPED, Some("stale")),
                ]
            })
            .collect();
        Meter(std::sync::Arc::new(Handles {
            received: counter(MESSAGES_RECEIVED),
            loaded: counter(MESSAGES_LOADED),
            duplicates: counter(DUPLICATES_SKIPPED),
            load_retries: counter(LOAD_RETRIES),
            receive_retries: counter(RECEIVE_RETRIES),
            delete_failures: counter(DELETE_FAILURES),
            deletes_superseded: counter(DELETES_SUPERSEDED),
            md5_mismatches: counter(MD5_MISMATCHES),
            lapsed: counter(LEASES_LAPSED),
            batch_messages: histogram(BATCH_MESSAGES),
            load_seconds: histogram(LOAD_SECONDS),
            in_flight: gauge(MESSAGES_IN_FLIGHT),
            window: gauge(WINDOW_MESSAGES),
            oldest_age: gauge(OLDEST_MESSAGE_AGE_SECONDS),
            depth_visible: depth("visible"),
            depth_in_flight: depth("in_flight"),
            requests,
            targets,
            queue: Some(q),
        }))
    }

    /// Counts one committed batch.
    pub fn record_batch(&self, batch: &BatchCounts<'_>) {
        let h = &self.0;
        h.batch_messages.record(batch.received as f64);
        h.load_seconds.record(batch.took.as_secs_f64());
        if let Some(sent) = batch.oldest_sent_ms {
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i128);
            h.oldest_age
                .set((now_ms - i128::from(sent)).max(0) as f64 / 1000.0);
        }
        h.received.increment(batch.received);
        h.loaded.increment(batch.loaded);
        h.duplicates.increment(batch.duplicates);
        for (handles, &(rows, duplicate_keys, stale)) in h.targets.iter().zip(batch.targets) {
            handles[0].increment(rows);
            handles[1].increment(duplicate_keys);
            handles[2].increment(stale);
        }
        let Some(queue) = &h.queue else { return };
        for reason in batch.rejected {
            // Rare, and the reasons are not known in advance: looked up each time.
            metrics::counter!(MESSAGES_REJECTED, QUEUE_LABEL => queue.clone(), REASON_LABEL => reason.clone())
                .increment(1);
        }
    }

    /// The counter of fields no column of `kind` takes (labelled `kind` and `queue`): taken
    /// once per run, so counting a delivery's costs no label lookup or allocation.
    pub fn unknown_fields(&self, kind: &str) -> metrics::Counter {
        match &self.0.queue {
            Some(queue) => {
                metrics::counter!(UNKNOWN_FIELDS, QUEUE_LABEL => queue.clone(), KIND_LABEL => kind.to_owned())
            }
            None => metrics::Counter::noop(),
        }
    }

    /// Counts one retried load attempt.
    pub fn record_load_retry(&self) {
        self.0.load_retries.increment(1);
    }

    /// Counts one retried receive.
    pub fn record_receive_retry(&self) {
        self.0.receive_retries.increment(1);
    }

    /// Counts deletes that failed for good.
    pub fn record_delete_failures(&self, n: u64) {
        self.0.delete_failures.increment(n);
    }

    /// Counts deletes refused as stale handles (see [`DELETES_SUPERSEDED`]).
    pub fn record_deletes_superseded(&self, n: u64) {
        self.0.deletes_superseded.increment(n);
    }

    /// Counts bodies that failed their MD5 check.
    pub fn record_md5_mismatches(&self, n: u64) {
        self.0.md5_mismatches.increment(n);
    }

    /// Counts one SQS request of `action` (`receive`, `delete`, `change_visibility`,
    /// `get_queue_attributes`).
    pub fn record_sqs_request(&self, action: &'static str) {
        if let Some(i) = ACTIONS.iter().position(|a| *a == action) {
            self.0.requests[i].increment(1);
        }
    }

    /// Sets the adaptive window.
    pub fn record_window(&self, n: usize) {
        self.0.window.set(n as f64);
    }

    /// Counts leases that lapsed.
    pub fn record_lapsed(&self, n: u64) {
        self.0.lapsed.increment(n);
    }

    /// Sets the number of messages held.
    pub fn record_in_flight(&self, n: usize) {
        self.0.in_flight.set(n as f64);
    }

    /// Sets the queue's depth as last polled.
    pub fn record_queue_depth(&self, visible: u64, in_flight: u64) {
        self.0.depth_visible.set(visible as f64);
        self.0.depth_in_flight.set(in_flight as f64);
    }
}

/// Counts one failure of a queue of a run over several (see [`QUEUE_DEGRADED`]).
pub fn record_queue_degraded(queue: &str) {
    metrics::counter!(QUEUE_DEGRADED, QUEUE_LABEL => queue.to_owned()).increment(1);
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

    /// The counters a recorder holds that are not zero.
    fn counted(recorder: &Counters) -> BTreeMap<String, u64> {
        recorder
            .snapshot()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    #[test]
    fn a_batch_is_counted_by_queue_mapping_and_reason() {
        let recorder = Counters::default();
        let rejected = ["not_json".into(), "invalid_ip".into(), "not_json".into()];
        metrics::with_local_recorder(&recorder, || {
            let meter = Meter::new("orders", &["public.users".into(), "public.orders".into()]);
            // 7 messages loaded, giving 9 rows (a mapping can fan out): 4 users (one a
            // duplicate key, two stale), 5 orders.
            meter.record_batch(&BatchCounts {
                received: 11,
                loaded: 7,
                rejected: &rejected,
                duplicates: 1,
                targets: &[(4, 1, 2), (5, 0, 0)],
                took: Duration::from_millis(20),
                oldest_sent_ms: None,
            });
            meter.record_load_retry();
            meter.record_sqs_request("receive");
            meter.record_sqs_request("change_visibility");
            Meter::default().record_load_retry();
        });
        let q = "queue=orders";
        let want: BTreeMap<String, u64> = [
            (format!("sqs2pg_duplicates_skipped_total{{{q}}}"), 1),
            (format!("sqs2pg_keyed_rows_skipped_total{{{q},mapping=public.users,outcome=duplicate_key}}"), 1),
            (format!("sqs2pg_keyed_rows_skipped_total{{{q},mapping=public.users,outcome=stale}}"), 2),
            (format!("sqs2pg_load_retries_total{{{q}}}"), 1),
            (format!("sqs2pg_messages_loaded_total{{{q}}}"), 7),
            (format!("sqs2pg_messages_received_total{{{q}}}"), 11),
            (format!("sqs2pg_messages_rejected_total{{{q},reason=invalid_ip}}"), 1),
            (format!("sqs2pg_messages_rejected_total{{{q},reason=not_json}}"), 2),
            (format!("sqs2pg_rows_loaded_total{{{q},mapping=public.orders}}"), 5),
            (format!("sqs2pg_rows_loaded_total{{{q},mapping=public.users}}"), 4),
            (format!("sqs2pg_sqs_requests_total{{{q},action=change_visibility}}"), 1),
            (format!("sqs2pg_sqs_requests_total{{{q},action=receive}}"), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(counted(&recorder), want);
    }

    #[test]
    fn unknown_fields_are_counted_by_queue_and_kind_through_one_handle() {
        let recorder = Counters::default();
        metrics::with_local_recorder(&recorder, || {
            let meter = Meter::new("events", &[]);
            let orders = meter.unknown_fields("public.orders");
            orders.increment(2);
            orders.increment(3);
            meter.unknown_fields("login").increment(1);
        });
        let got = counted(&recorder);
        assert_eq!(
            got["sqs2pg_unknown_fields_total{queue=events,kind=public.orders}"],
            5
        );
        assert_eq!(
            got["sqs2pg_unknown_fields_total{queue=events,kind=login}"],
            1
        );
    }
}
