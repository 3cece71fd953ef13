//! Metric names, in one place, and the one function that records a committed batch.
//!
//! Counters go through the `metrics` facade; they cost nothing until a recorder is installed
//! (the Prometheus endpoint of issue 9). Labels are low-cardinality by construction: `reason`
//! is a reason code from a fixed set, never a value from a message.

use crate::postgres::LoadReport;

/// Deliveries received from SQS.
pub const MESSAGES_RECEIVED: &str = "sqs2pg_messages_received_total";
/// Rows committed to the target table.
pub const ROWS_LOADED: &str = "sqs2pg_rows_loaded_total";
/// Rejections committed, labelled by `reason` code.
pub const MESSAGES_REJECTED: &str = "sqs2pg_messages_rejected_total";
/// Deliveries skipped because their message was already committed.
pub const DUPLICATES_SKIPPED: &str = "sqs2pg_duplicates_skipped_total";
/// Failed load attempts that were retried.
pub const LOAD_RETRIES: &str = "sqs2pg_load_retries_total";
/// Label of [`MESSAGES_REJECTED`].
pub const REASON_LABEL: &str = "reason";

/// Counts one committed batch: `received` deliveries, the report's rows and rejections, and
/// `duplicates` skipped (by the ledger or within the batch).
pub fn record_batch(received: u64, report: &LoadReport, duplicates: u64) {
    metrics::counter!(MESSAGES_RECEIVED).increment(received);
    metrics::counter!(ROWS_LOADED).increment(report.loaded);
    metrics::counter!(DUPLICATES_SKIPPED).increment(duplicates);
    for reason in &report.rejected {
        metrics::counter!(MESSAGES_REJECTED, REASON_LABEL => reason.clone()).increment(1);
    }
}

/// Counts one retried load attempt.
pub fn record_load_retry() {
    metrics::counter!(LOAD_RETRIES).increment(1);
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
        let report = LoadReport {
            loaded: 7,
            rejected: vec!["not_json".into(), "invalid_ip".into(), "not_json".into()],
            duplicates: 1,
        };
        metrics::with_local_recorder(&recorder, || {
            record_batch(11, &report, 1);
            record_load_retry();
        });
        let got = recorder.snapshot();
        let want: BTreeMap<String, u64> = [
            ("sqs2pg_duplicates_skipped_total{}", 1),
            ("sqs2pg_load_retries_total{}", 1),
            ("sqs2pg_messages_received_total{}", 11),
            ("sqs2pg_messages_rejected_total{reason=invalid_ip}", 1),
            ("sqs2pg_messages_rejected_total{reason=not_json}", 2),
            ("sqs2pg_rows_loaded_total{}", 7),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got, want);
    }
}
