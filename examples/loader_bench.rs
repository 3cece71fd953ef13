//! The loader alone, for `scripts/bench.py loader`: the real pipeline and PostgreSQL loader
//! (transform, ledger and binary COPY into the table, one transaction per batch)
//! fed by an in-process source at the pipeline's seam (`app::process_with`), so no SQS server
//! is in the way.
//!
//! ```text
//! DATABASE_URL=... SQS2PG_MASK_KEY=... cargo run --release --example loader_bench -- 1000000
//! ```
//!
//! The source makes synthetic login bodies on the fly (no memory held for them): users, ips and
//! device ids repeat from pools of 5,000, 2,100 and 3,000 values, and 1 message in 100 is not
//! a login. Message ids are random UUIDs, sent 10 per millisecond. Deletes succeed at once.
//! Prints `rows N rejected N seconds S`: S runs from the start (connection included) to the
//! COMMIT that completes the last message, so the drain's closing empty polls (about 2 s) are
//! not counted.
//!
//! With `SQS2PG_BENCH_WIDE=1` the messages are wide events of about 600 bytes loaded through
//! the mapping `benches/wide.toml` (20 columns, jsonb and timestamptz among them) into
//! `public.wide_events`, which the bench creates; 1 in 100 has a kind the mapping refuses.
//!
//! With `SQS2PG_BENCH_KEYED=append|upsert|latest` the messages are the states of 100,000 users
//! (each message a later version of its user) loaded through `benches/keyed-MODE.toml` into
//! `public.bench_users_MODE`: the write modes on the same rows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sqs2pg::cli::{DatabaseArgs, KeyArgs, PipelineArgs, QueueArgs};
use sqs2pg::pipeline::Mode;
use sqs2pg::sqs::{
    AckHandle, DeleteOutcome, MessageSource, QueueCounts, ReceiveRequest, Received, SourceError,
};

/// The queue was filled at 10,000 messages a second (10 per millisecond of SentTimestamp), and
/// is received in send order, as a backlog roughly is.
const SENT_PER_MS: u64 = 10;

/// The same allocator as the sqs2pg binary (mimalloc; see the note in Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Synthetic {
    next: AtomicU64,
    total: u64,
    sent: i64,
    wide: bool,
    keyed: bool,
}

impl Synthetic {
    fn body(&self, i: u64) -> String {
        if self.wide {
            return Self::wide_body(i);
        }
        if self.keyed {
            return Self::user_body(i);
        }
        Self::login_body(i)
    }

    /// A wide event for `benches/wide.toml`.
    fn wide_body(i: u64) -> String {
        let kind = if i % 100 == 99 {
            "z"
        } else {
            ["a", "b", "c"][(i % 3) as usize]
        };
        format!(
            r#"{{"id": "{}", "kind": "{kind}", "user": {{"id": "u-{}", "email": "user{}@example.com", "ip": "10.{}.{}.{}", "country": "GB"}}, "amount": "{}.{:02}", "qty": {}, "big": {}, "ratio": 0.25, "flag": {}, "at": "2026-12-04T10:{:02}:{:02}.123456+01:00", "day": "2026-12-04", "local": "2026-12-04 10:00:00", "host": "2001:db8::{:x}", "tags": ["x", "y", "z"], "version": "2.3.{}", "code": "ABC-{i}", "note": "free text", "meta": {{"a": {i}, "b": [1, 2]}}}}"#,
            uuid_like(i ^ 0x5eed),
            i % 5_000,
            i % 5_000,
            (i / 65_536) % 256,
            (i / 256) % 256,
            i % 256,
            i % 10_000,
            i % 100,
            i % 7,
            i * 1_000_003,
            i % 2 == 0,
            (i / 60) % 60,
            i % 60,
            i % 65_536,
            i % 10,
        )
    }

    /// A user's state for the keyed benchmark: 100,000 users, each message a later version of
    /// its user (so under upsert and latest, past the first 100,000 every row replaces one).
    fn user_body(i: u64) -> String {
        format!(
            r#"{{"type": "user.updated", "version": {}, "user": {{"id": "user-{:06}", "email": "user{}@example.com", "plan": "plan-{}"}}}}"#,
            i / 100_000,
            i % 100_000,
            i % 100_000,
            i % 7
        )
    }

    fn login_body(i: u64) -> String {
        if i % 100 == 99 {
            return r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#.to_owned();
        }
        let ip = i % 2_100;
        let device = (i * 7) % 3_000;
        let versions = ["2.3.0", "0.96", "3.7", "5.0.1"];
        format!(
            r#"{{"user_id": "{:08x}-user-{}", "app_version": "{}", "device_type": "{}", "ip": "10.{}.{}.{}", "locale": {}, "device_id": "{:03}-{:02}-{:04}"}}"#,
            (i % 5_000) * 2_654_435_761 % (1 << 32),
            i % 5_000,
            versions[(i % 4) as usize],
            if i % 3 == 0 { "ios" } else { "android" },
            ip / 256,
            ip % 256,
            (ip * 13) % 256,
            if i % 10 == 0 {
                "null".to_owned()
            } else {
                format!("\"{}\"", ["RU", "US", "DE", "IN"][(i % 4) as usize])
            },
            device % 1_000,
            device % 100,
            device * 3 % 10_000,
        )
    }
}

/// A message id shaped like SQS's (a random-looking UUID), the same for the same message number.
fn uuid_like(i: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(i);
    let (a, b) = (rng.u64(..), rng.u64(..));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        (b >> 48) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

impl MessageSource for Synthetic {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Received>, SourceError> {
        let (max_messages, wait) = (request.max_messages, request.wait);
        let start = self.next.fetch_add(max_messages as u64, Ordering::Relaxed);
        if start >= self.total {
            // An empty queue answers a long poll after the wait, as SQS does.
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let end = (start + max_messages as u64).min(self.total);
        Ok((start..end)
            .map(|i| {
                let id = uuid_like(i);
                Received {
                    ack: AckHandle {
                        message_id: id.clone(),
                        receipt_handle: id.clone(),
                    },
                    ledger_id: id,
                    body: self.body(i),
                    sent_timestamp: self.sent + (i / SENT_PER_MS) as i64,
                    receive_count: 1,
                    group_id: None,
                    deduplication_id: None,
                    attributes: Vec::new(),
                    received_at: SystemTime::now(),
                    md5_mismatch: false,
                }
            })
            .collect())
    }

    async fn counts(&self) -> Result<QueueCounts, SourceError> {
        let taken = self.next.load(Ordering::Relaxed);
        Ok(QueueCounts {
            visible: self.total.saturating_sub(taken),
            ..QueueCounts::default()
        })
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        Ok(DeleteOutcome {
            deleted: acks.len(),
            ..DeleteOutcome::default()
        })
    }

    async fn change_visibility(
        &self,
        _acks: &[AckHandle],
        _timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        Ok(Vec::new())
    }
}

/// With `SQS2PG_BENCH_NO_DATABASE` set: a loader that commits nothing, to measure the
/// pipeline's own cost (receive, transform, batch, delete) without PostgreSQL.
struct Discard;

impl sqs2pg::pipeline::BatchLoader for Discard {
    async fn load(
        &mut self,
        batch: &sqs2pg::pipeline::batch::Batch,
    ) -> Result<sqs2pg::kind::LoadReport, sqs2pg::kind::LoadFailure> {
        Ok(sqs2pg::kind::LoadReport {
            loaded: batch.rows.len() as u64,
            rows: batch.rows.iter().map(|r| u64::from(r.rows.rows())).sum(),
            rejected: batch
                .rejects
                .iter()
                .map(|r| r.rejection.reason.clone())
                .collect(),
            ..Default::default()
        })
    }
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_none() {
        // As `scripts/bench.py` runs sqs2pg: warnings only (no line per rejected message).
        std::env::set_var("RUST_LOG", "warn");
    }
    sqs2pg::telemetry::init(sqs2pg::telemetry::LogFormat::Text);
    let wide = std::env::var_os("SQS2PG_BENCH_WIDE").is_some();
    // `append`, `upsert` or `latest`: user events through benches/keyed-MODE.toml.
    let keyed = std::env::var("SQS2PG_BENCH_KEYED").ok();
    let mapping: Option<std::path::PathBuf> = if wide {
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/wide.toml").into())
    } else {
        keyed.as_ref().map(|mode| {
            format!(
                concat!(env!("CARGO_MANIFEST_DIR"), "/benches/keyed-{}.toml"),
                mode
            )
            .into()
        })
    };
    let total: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("a message count"));
    let args = PipelineArgs {
        database: DatabaseArgs {
            connection: sqs2pg::cli::ConnectionArgs {
                database_url: std::env::var("DATABASE_URL").ok(),
            },
            table: "public.user_logins".into(),
            mapping_file: sqs2pg::cli::MappingFileArgs {
                mapping: mapping.into_iter().collect(),
            },
        },
        queue: QueueArgs {
            queue_url: Some("http://127.0.0.1:9/000000000000/in-process".into()),
            endpoint_url: None,
            sqs_protocol: sqs2pg::sqs::Protocol::Json,
        },
        key: KeyArgs {
            mask_key: std::env::var("SQS2PG_MASK_KEY")
                .ok()
                .map(|k| k.parse().expect("infallible")),
            mask_key_file: None,
            mask_key_ring: None,
        },
        receivers: 4,
        loaders: std::env::var("SQS2PG_LOADERS").map_or(sqs2pg::config::DEFAULT_LOADERS, |v| {
            v.parse().expect("SQS2PG_LOADERS: a number")
        }),
        wait_time_secs: 1,
        visibility_timeout_secs: None,
        batch_max_rows: std::env::var("SQS2PG_BATCH_MAX_ROWS")
            .map_or(sqs2pg::config::DEFAULT_BATCH_MAX_ROWS, |v| {
                v.parse().expect("SQS2PG_BATCH_MAX_ROWS: a number")
            }),
        batch_max_age_ms: sqs2pg::config::DEFAULT_BATCH_MAX_AGE_MS,
        max_body_bytes: sqs2pg::config::DEFAULT_MAX_BODY_BYTES,
        max_attempts: 3,
        max_receive_count: 25,
        max_crashes: sqs2pg::config::DEFAULT_MAX_CRASHES,
        ledger_retention_days: 30,
        shutdown_timeout_secs: 25,
        max_in_flight_bytes: sqs2pg::config::DEFAULT_MAX_IN_FLIGHT_BYTES,
        max_in_flight_messages: std::env::var("SQS2PG_MAX_IN_FLIGHT_MESSAGES")
            .map_or(sqs2pg::config::DEFAULT_MAX_IN_FLIGHT_MESSAGES, |v| {
                v.parse().expect("SQS2PG_MAX_IN_FLIGHT_MESSAGES: a number")
            }),
        metrics_addr: None,
        ip: sqs2pg::cli::IpMaskArgs {
            ip_mask: sqs2pg::mask::MaskMode::Hmac,
        },
        device_id_mask: sqs2pg::mask::MaskMode::Hmac,
        key_rotation_intended: false,
    };
    let settings = sqs2pg::config::pipeline(&args, Mode::Drain).expect("settings");
    if wide || keyed.is_some() {
        let shape = sqs2pg::app::target::Target::of_mapping(&settings.mappings[0]).shape(false);
        sqs2pg::app::setup_for(&settings.database, &settings.table, &shape)
            .await
            .expect("the wide table");
    }
    let sent = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
        - (total / SENT_PER_MS) as i64;
    let source = Arc::new(Synthetic {
        next: AtomicU64::new(0),
        total,
        sent,
        wide,
        keyed: keyed.is_some(),
    });
    let progress = settings.pipeline.progress.clone();
    let started = Instant::now();
    let watcher = tokio::spawn(async move {
        loop {
            let (_, loaded, rejected, duplicates) = progress.snapshot();
            if loaded + rejected + duplicates >= total {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let token = tokio_util::sync::CancellationToken::new();
    let summary = if std::env::var_os("SQS2PG_BENCH_NO_DATABASE").is_some() {
        sqs2pg::app::process_with(settings, source, token, |_| Discard).await
    } else {
        sqs2pg::app::process_with(settings, source, token, |loader| loader).await
    }
    .expect("the run");
    let done = watcher.await.expect("the watcher");
    println!(
        "rows {} rejected {} seconds {:.3}",
        summary.loaded,
        summary.rejected.values().sum::<u64>(),
        done.as_secs_f64()
    );
}
