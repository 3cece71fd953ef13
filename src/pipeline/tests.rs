//! The shutdown deadline and the retry bounds, on tokio's paused clock: an in-memory source
//! and loaders at the pipeline's seams, no network, no sleeping for real.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::SystemTime;

use super::batch::Batch;
use super::receive::DRAIN_CONFIRM_WAIT;
use super::*;
use crate::keys::MaskKey;
use crate::kind::{LoadClass, LoadFailure, LoadReport};
use crate::login::{LoginKind, MaskModes};
use crate::sqs::{AckHandle, QueueCounts, ReceiveRequest, SQS_BATCH_LIMIT};
use crate::sqs::{DeleteOutcome, Received, SourceErrorKind};

/// Hands out its messages, then answers every receive with an empty long poll. Records
/// deletes and releases (visibility 0).
#[derive(Default)]
struct Scripted {
    messages: Mutex<Vec<Received>>,
    /// Every receive fails transiently instead.
    failing: bool,
    /// Visibility extensions never answer (an SQS that stopped answering).
    hanging_heartbeat: bool,
    receives: Mutex<u32>,
    deleted: Mutex<Vec<String>>,
    released: Mutex<Vec<String>>,
    /// Messages another consumer holds: in flight until the instant given, then visible again
    /// (that consumer died without deleting them).
    elsewhere: Mutex<Vec<(Instant, Received)>>,
    /// Reading the queue's counts is denied (a policy without sqs:GetQueueAttributes).
    counts_denied: bool,
    /// Messages handed out come back (received once more) when their visibility timeout, as
    /// received or as last changed, runs out before they are deleted, as SQS does.
    redelivers: bool,
    /// With `redelivers`: by message id, when each message handed out comes back.
    outstanding: Mutex<std::collections::HashMap<String, (Instant, Received)>>,
}

/// Another delivery of `m`.
fn delivered_again(m: &Received) -> Received {
    Received {
        ack: m.ack.clone(),
        ledger_id: m.ledger_id.clone(),
        body: m.body.clone(),
        sent_timestamp: m.sent_timestamp,
        receive_count: m.receive_count + 1,
        group_id: m.group_id.clone(),
        deduplication_id: m.deduplication_id.clone(),
        attributes: m.attributes.clone(),
        received_at: m.received_at,
        md5_mismatch: m.md5_mismatch,
    }
}

impl Scripted {
    fn with(n: usize) -> Self {
        let body = r#"{"user_id": "u", "app_version": "2.3.0", "device_type": "android", "ip": "10.0.0.1", "locale": null, "device_id": "593-47-5928"}"#;
        let messages = (0..n)
            .map(|i| Received {
                ack: AckHandle {
                    message_id: format!("m{i}"),
                    receipt_handle: format!("r{i}"),
                },
                ledger_id: format!("m{i}"),
                body: body.to_owned(),
                sent_timestamp: 1_700_000_000_000,
                receive_count: 1,
                group_id: None,
                deduplication_id: None,
                attributes: Vec::new(),
                received_at: SystemTime::now(),
                md5_mismatch: false,
            })
            .collect();
        Self {
            messages: Mutex::new(messages),
            ..Self::default()
        }
    }
}

impl MessageSource for Scripted {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Received>, SourceError> {
        let (max, wait) = (request.max_messages, request.wait);
        *self.receives.lock().unwrap() += 1;
        if self.failing {
            return Err(SourceError::new(
                SourceErrorKind::Transient,
                "ReceiveMessage",
                "connection refused",
            ));
        }
        let batch: Vec<Received> = {
            let mut messages = self.messages.lock().unwrap();
            let mut elsewhere = self.elsewhere.lock().unwrap();
            let now = Instant::now();
            while let Some(i) = elsewhere.iter().position(|(back, _)| *back <= now) {
                messages.push(elsewhere.remove(i).1);
            }
            let mut outstanding = self.outstanding.lock().unwrap();
            let back: Vec<String> = outstanding
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            for id in back {
                messages.push(outstanding.remove(&id).expect("listed").1);
            }
            let n = messages.len().min(max as usize);
            let batch: Vec<Received> = messages.drain(..n).collect();
            if self.redelivers {
                let visibility = request
                    .visibility_timeout
                    .unwrap_or(Duration::from_secs(30));
                for m in &batch {
                    outstanding.insert(
                        m.ack.message_id.clone(),
                        (now + visibility, delivered_again(m)),
                    );
                }
            }
            batch
        };
        if batch.is_empty() {
            tokio::time::sleep(wait).await;
        }
        Ok(batch)
    }

    async fn counts(&self) -> Result<QueueCounts, SourceError> {
        if self.counts_denied {
            return Err(SourceError::new(
                SourceErrorKind::Permanent,
                "GetQueueAttributes",
                "AccessDenied",
            ));
        }
        let now = Instant::now();
        let elsewhere = self.elsewhere.lock().unwrap();
        Ok(QueueCounts {
            visible: (self.messages.lock().unwrap().len()
                + elsewhere.iter().filter(|(back, _)| *back <= now).count())
                as u64,
            in_flight: elsewhere.iter().filter(|(back, _)| *back > now).count() as u64,
            delayed: 0,
        })
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        let mut deleted = self.deleted.lock().unwrap();
        deleted.extend(acks.iter().map(|a| a.message_id.clone()));
        let mut outstanding = self.outstanding.lock().unwrap();
        for a in acks {
            outstanding.remove(&a.message_id);
        }
        Ok(DeleteOutcome {
            deleted: acks.len(),
            ..DeleteOutcome::default()
        })
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        if timeout.is_zero() {
            let mut released = self.released.lock().unwrap();
            released.extend(acks.iter().map(|a| a.message_id.clone()));
        } else if self.hanging_heartbeat {
            std::future::pending::<()>().await;
        }
        let mut outstanding = self.outstanding.lock().unwrap();
        for a in acks {
            if let Some((back, _)) = outstanding.get_mut(&a.message_id) {
                *back = Instant::now() + timeout;
            }
        }
        Ok(Vec::new())
    }
}

/// Commits every batch at once.
struct Committing;
impl BatchLoader for Committing {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        Ok(LoadReport {
            loaded: batch.rows.len() as u64,
            rows: batch.rows.iter().map(|r| u64::from(r.rows.rows())).sum(),
            rejected: batch
                .rejects
                .iter()
                .map(|r| r.rejection.reason.clone())
                .collect(),
            ..LoadReport::default()
        })
    }
}

/// Fails its first `failures` loads (transiently), then commits.
struct FailingFirst {
    failures: u32,
}
impl BatchLoader for FailingFirst {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(LoadFailure::new(LoadClass::Transient, "connection reset"));
        }
        Committing.load(batch).await
    }
}

/// The first connection fails for good (a configuration error); its forks fail
/// transiently, forever.
struct OneFailsForGood {
    fork: bool,
}
impl BatchLoader for OneFailsForGood {
    async fn load(&mut self, _: &Batch) -> Result<LoadReport, LoadFailure> {
        Err(if self.fork {
            LoadFailure::new(LoadClass::Transient, "connection reset")
        } else {
            LoadFailure::from(crate::postgres::LoadError::Connect(
                crate::postgres::ConnectError::BadUrl("test".into()),
            ))
        })
    }
    fn fork(&self) -> Option<Self> {
        Some(Self { fork: true })
    }
}

/// A COPY that never finishes.
struct Hanging;
impl BatchLoader for Hanging {
    async fn load(&mut self, _: &Batch) -> Result<LoadReport, LoadFailure> {
        std::future::pending().await
    }
}

fn settings(mode: Mode) -> PipelineSettings {
    let retry = RetryPolicy {
        initial: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        max_attempts: Some(4),
    };
    PipelineSettings {
        mode,
        receivers: 2,
        loaders: 1,
        wait_time: Duration::from_secs(20),
        visibility_timeout: Some(Duration::from_secs(120)),
        batch_max_rows: 1000,
        batch_max_age: Duration::from_millis(100),
        max_body_bytes: 1 << 16,
        max_receive_count: 25,
        max_crashes: 3,
        delete_concurrency: 2,
        load_retry: retry,
        source_retry: retry,
        shutdown_timeout: Duration::from_secs(25),
        max_in_flight_bytes: 64 << 20,
        max_in_flight_messages: 10_000,
        progress: Arc::default(),
        table_facts: Default::default(),
        meter: Default::default(),
        suspect_turn: Default::default(),
    }
}

async fn run_until_signal<L: BatchLoader>(
    source: Arc<Scripted>,
    loader: L,
    mode: Mode,
    signal_after: Option<Duration>,
) -> (Result<Summary, PipelineError>, Duration) {
    run_with(source, loader, settings(mode), signal_after).await
}

async fn run_with<L: BatchLoader>(
    source: Arc<Scripted>,
    loader: L,
    settings: PipelineSettings,
    signal_after: Option<Duration>,
) -> (Result<Summary, PipelineError>, Duration) {
    let key = MaskKey::from_base64(&"A".repeat(44)).unwrap();
    let shutdown = CancellationToken::new();
    if let Some(after) = signal_after {
        let token = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            token.cancel();
        });
    }
    let started = Instant::now();
    let result = run(
        source,
        loader,
        Box::new(LoginKind::new(&key, MaskModes::default())),
        BodySealer::new(&key),
        None,
        settings,
        shutdown,
    )
    .await;
    (result, started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn a_load_that_never_ends_is_abandoned_at_the_shutdown_deadline() {
    let source = Arc::new(Scripted::with(3));
    let signal = Duration::from_secs(1);
    let (result, elapsed) =
        run_until_signal(source.clone(), Hanging, Mode::Run, Some(signal)).await;
    assert!(
        matches!(result, Err(PipelineError::ShutdownDeadline { .. })),
        "{result:?}"
    );
    // Flushing gets the budget minus the 5 s release reserve; the release is immediate.
    assert_eq!(elapsed, signal + Duration::from_secs(20), "{elapsed:?}");
    let mut released = source.released.lock().unwrap().clone();
    released.sort();
    assert_eq!(released, ["m0", "m1", "m2"], "held messages are released");
    assert!(
        source.deleted.lock().unwrap().is_empty(),
        "nothing uncommitted is deleted"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_long_poll_does_not_hold_up_a_clean_shutdown() {
    let source = Arc::new(Scripted::with(3));
    let signal = Duration::from_secs(1);
    let (result, elapsed) =
        run_until_signal(source.clone(), Committing, Mode::Run, Some(signal)).await;
    let summary = result.unwrap();
    assert_eq!((summary.loaded, summary.deleted), (3, 3), "{summary:?}");
    // The receivers' 20 s polls are cut after half the 20 s flushing budget.
    assert!(elapsed <= signal + Duration::from_secs(10), "{elapsed:?}");
    assert!(source.released.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn receiving_pauses_when_the_in_flight_byte_budget_is_spent() {
    let source = Arc::new(Scripted::with(2000));
    let body = source.messages.lock().unwrap()[0].body.len();
    let budget = 100 * body;
    let settings = PipelineSettings {
        max_in_flight_bytes: budget,
        ..settings(Mode::Run)
    };
    // The loader never finishes, so nothing is ever given back: after a minute, what was
    // received is what the budget allowed, plus at most one receive per receiver.
    let (result, _) = run_with(
        source.clone(),
        Hanging,
        settings.clone(),
        Some(Duration::from_secs(60)),
    )
    .await;
    assert!(matches!(
        result,
        Err(PipelineError::ShutdownDeadline { .. })
    ));
    let taken = 2000 - source.messages.lock().unwrap().len();
    let bound = budget / body + settings.receivers * SQS_BATCH_LIMIT;
    assert!(taken >= budget / body, "the budget was used: {taken}");
    assert!(taken <= bound, "{taken} received, bound {bound}");
}

#[tokio::test(start_paused = true)]
async fn drain_ends_about_a_second_after_its_last_delete() {
    let source = Arc::new(Scripted::with(3));
    let (result, elapsed) = run_until_signal(source.clone(), Committing, Mode::Drain, None).await;
    let summary = result.unwrap();
    assert_eq!((summary.loaded, summary.deleted), (3, 3), "{summary:?}");
    // The first poll brings the three; the polls that start while they are held do not count;
    // one 1 s poll started after their delete does. Not another 20 s long poll.
    let tail = summary.after_last_delete.expect("a delete");
    assert!(tail >= DRAIN_CONFIRM_WAIT, "{tail:?}");
    assert!(tail <= 2 * DRAIN_CONFIRM_WAIT, "{tail:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_messages_another_consumer_holds() {
    let source = Arc::new(Scripted::with(8));
    // Another consumer took three and died: they come back 30 s from now.
    {
        let mut messages = source.messages.lock().unwrap();
        let back = Instant::now() + Duration::from_secs(30);
        let taken: Vec<Received> = messages.drain(5..).collect();
        source
            .elsewhere
            .lock()
            .unwrap()
            .extend(taken.into_iter().map(|m| (back, m)));
    }
    let settings = settings(Mode::Drain);
    let progress = settings.progress.clone();
    let waited = tokio::spawn(async move {
        // The live line's count, seen while the drain waits (0 if never, within a minute).
        for _ in 0..600 {
            let waiting = progress.waiting_elsewhere.load(Ordering::Relaxed);
            if waiting > 0 {
                return waiting;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        0
    });
    let (result, elapsed) = run_with(source.clone(), Committing, settings, None).await;
    let summary = result.unwrap();
    assert_eq!((summary.loaded, summary.deleted), (8, 8), "{summary:?}");
    assert!(elapsed >= Duration::from_secs(30), "{elapsed:?}");
    assert!(elapsed <= Duration::from_secs(33), "{elapsed:?}");
    assert_eq!(
        waited.await.unwrap(),
        3,
        "the live line says what it waits for"
    );
    assert!(source.elsewhere.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_drain_denied_the_queue_counts_ends_at_its_first_empty_poll() {
    let source = Arc::new(Scripted {
        counts_denied: true,
        ..Scripted::with(3)
    });
    source.elsewhere.lock().unwrap().push((
        Instant::now() + Duration::from_secs(30),
        Scripted::with(1).messages.lock().unwrap().remove(0),
    ));
    let (result, elapsed) = run_until_signal(source.clone(), Committing, Mode::Drain, None).await;
    let summary = result.unwrap();
    assert_eq!(summary.loaded, 3, "{summary:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn drain_of_an_empty_queue_waits_one_full_long_poll() {
    let source = Arc::new(Scripted::with(0));
    let (result, elapsed) = run_until_signal(source.clone(), Committing, Mode::Drain, None).await;
    assert_eq!(result.unwrap().received, 0);
    // One receiver polls for the whole 20 s wait, alone; its empty answer ends the drain, so the
    // others never poll.
    assert!(elapsed >= Duration::from_secs(20), "{elapsed:?}");
    assert!(elapsed <= Duration::from_secs(22), "{elapsed:?}");
    assert!(*source.receives.lock().unwrap() <= 2, "one poll each");
}

#[tokio::test(start_paused = true)]
async fn a_failing_receive_backs_off_within_its_caps_and_drain_gives_up() {
    let source = Arc::new(Scripted {
        failing: true,
        ..Scripted::default()
    });
    let (result, elapsed) = run_until_signal(source.clone(), Committing, Mode::Drain, None).await;
    assert!(
        matches!(result, Err(PipelineError::Source { attempts: 4, .. })),
        "{result:?}"
    );
    // Two receivers, four attempts each; delays of at most 0.1, 0.2 and 0.4 s between them,
    // and not none (a retry loop without backoff would take no time at all).
    assert!(*source.receives.lock().unwrap() <= 8);
    assert!(elapsed <= Duration::from_millis(700), "{elapsed:?}");
    assert!(elapsed > Duration::ZERO, "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn failed_loads_back_off_and_the_batch_commits_once_the_database_is_back() {
    let source = Arc::new(Scripted::with(3));
    let (result, elapsed) = run_until_signal(
        source.clone(),
        FailingFirst { failures: 3 },
        Mode::Drain,
        None,
    )
    .await;
    let summary = result.unwrap();
    assert_eq!(
        (summary.loaded, summary.load_retries),
        (3, 3),
        "{summary:?}"
    );
    assert_eq!(source.deleted.lock().unwrap().len(), 3);
    // The backoff stays within its caps (0.1 + 0.2 + 0.4 s) on top of a prompt drain.
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_queue_is_long_polled_by_one_receiver_and_a_busy_one_by_all() {
    // Idle: 4 receivers, 20 s polls, 10 minutes. Without adapting that is 4 x 30 polls.
    let idle = Arc::new(Scripted::with(0));
    let mut s = settings(Mode::Run);
    s.receivers = 4;
    let (result, _) = run_with(idle.clone(), Committing, s, Some(Duration::from_secs(600))).await;
    result.unwrap();
    let polls = *idle.receives.lock().unwrap();
    assert!((30..=36).contains(&polls), "{polls} receives");
    // Busy: every message is received and committed, and the receivers that were sent
    // back to wait are called up again (more than one poll at a time while it is full).
    let busy = Arc::new(Scripted::with(500));
    let mut s = settings(Mode::Run);
    s.receivers = 4;
    let (result, _) = run_with(busy.clone(), Committing, s, Some(Duration::from_secs(60))).await;
    assert_eq!(result.unwrap().loaded, 500);
    assert_eq!(busy.deleted.lock().unwrap().len(), 500);
}

#[tokio::test(start_paused = true)]
async fn a_load_that_fails_for_good_stops_the_other_loaders_retrying() {
    let source = Arc::new(Scripted::with(3));
    let mut s = settings(Mode::Run);
    // One message per batch, so both loaders hold one; retries without limit, as in `run`.
    s.loaders = 2;
    s.batch_max_rows = 1;
    s.load_retry.max_attempts = None;
    let (result, _) = tokio::time::timeout(
        Duration::from_secs(3600),
        run_with(source.clone(), OneFailsForGood { fork: false }, s, None),
    )
    .await
    .expect("the run ends instead of retrying forever");
    assert!(
        matches!(result, Err(PipelineError::Load { .. })),
        "{result:?}"
    );
    assert!(
        source.deleted.lock().unwrap().is_empty(),
        "nothing committed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_stuck_on_a_dead_sqs_does_not_hold_up_the_deadline() {
    let source = Arc::new(Scripted {
        hanging_heartbeat: true,
        ..Scripted::with(3)
    });
    let settings = PipelineSettings {
        visibility_timeout: Some(Duration::from_secs(4)),
        ..settings(Mode::Run)
    };
    let signal = Duration::from_secs(5);
    let run = run_with(source.clone(), Hanging, settings, Some(signal));
    let (result, elapsed) = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the run hung on its heartbeat");
    assert!(
        matches!(result, Err(PipelineError::ShutdownDeadline { .. })),
        "{result:?}"
    );
    assert_eq!(elapsed, signal + Duration::from_secs(20), "{elapsed:?}");
    assert_eq!(source.released.lock().unwrap().len(), 3);
}

/// Fails, transiently, every load holding the row of message `poison`; an empty check and
/// every other load commit.
struct FailsWith {
    poison: &'static str,
    failed: Arc<std::sync::atomic::AtomicU32>,
}
impl BatchLoader for FailsWith {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        if batch.rows.iter().any(|r| r.message_id == self.poison) {
            self.failed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(LoadFailure::new(
                LoadClass::Transient,
                "the server process crashed",
            ));
        }
        Committing.load(batch).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_message_that_fails_while_the_database_works_is_found_and_left_for_redelivery() {
    let source = Arc::new(Scripted::with(20));
    let failed = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let loader = FailsWith {
        poison: "m7",
        failed: failed.clone(),
    };
    let (result, _) = run_with(source.clone(), loader, settings(Mode::Drain), None).await;
    // The drain says it left one behind.
    let Err(PipelineError::Incomplete(summary)) = result else {
        panic!("{result:?}")
    };
    assert_eq!(
        (
            summary.loaded,
            summary.left_for_redelivery,
            summary.rejected_total()
        ),
        (19, 1, 0),
        "{summary:?}"
    );
    let mut deleted = source.deleted.lock().unwrap().clone();
    deleted.sort();
    assert_eq!(deleted.len(), 19, "{deleted:?}");
    assert!(!deleted.contains(&"m7".to_owned()), "it stays in SQS");
    assert!(failed.load(std::sync::atomic::Ordering::SeqCst) >= 3);
}

#[tokio::test(start_paused = true)]
async fn over_the_receive_limit_it_is_poison_after_failing_alone_three_times() {
    let source = Arc::new(Scripted::with(20));
    source.messages.lock().unwrap()[7].receive_count = 26;
    let failed = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let loader = FailsWith {
        poison: "m7",
        failed: failed.clone(),
    };
    let (result, _) = run_with(source.clone(), loader, settings(Mode::Drain), None).await;
    let summary = result.unwrap();
    assert_eq!(summary.loaded, 19, "{summary:?}");
    assert_eq!(
        summary.rejected.get("poison:receive_count"),
        Some(&1),
        "{summary:?}"
    );
    assert_eq!(source.deleted.lock().unwrap().len(), 20, "all deleted");
    // Alone from the start (a suspect): three rounds of failing twice and once more after
    // the database showed it takes writes.
    assert_eq!(failed.load(std::sync::atomic::Ordering::SeqCst), 9);
}

#[tokio::test(start_paused = true)]
async fn a_valid_message_over_the_receive_limit_is_loaded() {
    let source = Arc::new(Scripted::with(5));
    source.messages.lock().unwrap()[2].receive_count = 1000;
    let (result, _) = run_with(source.clone(), Committing, settings(Mode::Drain), None).await;
    let summary = result.unwrap();
    assert_eq!(
        (summary.loaded, summary.rejected_total()),
        (5, 0),
        "{summary:?}"
    );
    assert_eq!(summary.suspects, 1, "{summary:?}");
}

/// Says that `crashed` was begun `unfinished` times before without finishing (and that a
/// stalling message stalled `unfinished` times before); records every begin, finish and
/// stall.
struct Attempts {
    crashed: &'static str,
    unfinished: u32,
    begun: Mutex<Vec<String>>,
    finished: Mutex<Vec<String>>,
    stalled: Mutex<Vec<String>>,
}

impl Attempts {
    /// A log in which `crashed` has `unfinished` attempts that never finished (and, for
    /// stalls, every message that many stalls before).
    fn new(crashed: &'static str, unfinished: u32) -> Arc<Self> {
        Arc::new(Self {
            crashed,
            unfinished,
            begun: Mutex::new(Vec::new()),
            finished: Mutex::new(Vec::new()),
            stalled: Mutex::new(Vec::new()),
        })
    }
}

impl AttemptLog for Attempts {
    fn begin<'a>(
        &'a self,
        ledger_id: &'a str,
        _: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<u32>, String>> + Send + 'a>>
    {
        self.begun.lock().unwrap().push(ledger_id.to_owned());
        let unfinished = if ledger_id == self.crashed {
            self.unfinished
        } else {
            0
        };
        Box::pin(async move { Ok(Some(unfinished)) })
    }

    fn finish<'a>(
        &'a self,
        ledger_id: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        self.finished.lock().unwrap().push(ledger_id.to_owned());
        Box::pin(async { Ok(()) })
    }

    fn stalled<'a>(
        &'a self,
        ledger_id: &'a str,
        _: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, String>> + Send + 'a>> {
        let mut stalled = self.stalled.lock().unwrap();
        stalled.push(ledger_id.to_owned());
        // As if it had stalled alone on the deliveries before this one too.
        let stalls = self.unfinished + stalled.len() as u32;
        Box::pin(async move { Ok(stalls) })
    }
}

/// Never answers a load holding `message_id` (a body that stalls the database); commits the
/// rest, and empty transactions.
struct StallsOn {
    message_id: &'static str,
}
impl BatchLoader for StallsOn {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        if batch.rows.iter().any(|r| r.message_id == self.message_id) {
            std::future::pending::<()>().await;
        }
        Committing.load(batch).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_the_database_is_found_in_seconds_per_halving_and_kept_aside() {
    let source = Arc::new(Scripted::with(64));
    // Its third delivery that stalls alone (two counted before, in the database).
    let attempts = Attempts::new("none", 2);
    let key = MaskKey::from_base64(&"A".repeat(44)).unwrap();
    let started = Instant::now();
    let summary = run(
        source.clone(),
        StallsOn { message_id: "m37" },
        Box::new(LoginKind::new(&key, MaskModes::default())),
        BodySealer::new(&key),
        Some(attempts.clone()),
        PipelineSettings {
            batch_max_age: Duration::from_secs(1),
            ..settings(Mode::Drain)
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.loaded, 63, "{summary:?}");
    assert_eq!(
        summary.rejected.get("poison:stalled"),
        Some(&1),
        "{summary:?}"
    );
    assert_eq!(*attempts.stalled.lock().unwrap(), ["m37"]);
    // The whole batch stalls once (60 s), then each of six halvings once (10 s each), each
    // checked against the database at once; before, three 60 s stalls per halving.
    let took = started.elapsed();
    println!("a stalling body among 64 found and kept aside in {took:?} (virtual)");
    assert!(took < Duration::from_secs(150), "{took:?}");
}

/// The same body among 5,000 at the defaults (batches of 5,000, a 30 s visibility timeout,
/// kept aside on its third stall), with a queue that delivers it again after each stall: the
/// first delivery finds it (a 60 s stall, then four levels of a sixteen-way cut at 10 s); the
/// next two are loaded alone at once, 10 s each, because this process remembers it stalled.
/// Before (halving, nothing remembered): 312 s, each later delivery stalling a batch of its
/// own for 60 s (and on a busy queue a whole batch and its halvings again).
#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_the_database_is_kept_aside_within_minutes_at_the_defaults() {
    let source = Arc::new(Scripted {
        redelivers: true,
        ..Scripted::with(5_000)
    });
    let attempts = Attempts::new("none", 0);
    let key = MaskKey::from_base64(&"A".repeat(44)).unwrap();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let watch = {
        let (source, stop) = (source.clone(), stop.clone());
        tokio::spawn(async move {
            // Bounded: an hour of virtual time.
            for _ in 0..3_600 {
                let deleted = source.deleted.lock().unwrap().len();
                if deleted >= 5_000 {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let took = started.elapsed();
            stop.cancel();
            took
        })
    };
    let summary = run(
        source.clone(),
        StallsOn { message_id: "m37" },
        Box::new(LoginKind::new(&key, MaskModes::default())),
        BodySealer::new(&key),
        Some(attempts.clone()),
        PipelineSettings {
            batch_max_rows: 5_000,
            batch_max_age: Duration::from_secs(1),
            visibility_timeout: Some(Duration::from_secs(30)),
            ..settings(Mode::Run)
        },
        stop,
    )
    .await
    .unwrap();
    let took = watch.await.unwrap();
    println!("a stalling body among 5,000 kept aside in {took:?} (virtual), {summary:?}");
    assert_eq!(summary.loaded, 4_999, "{summary:?}");
    assert_eq!(
        summary.rejected.get("poison:stalled"),
        Some(&1),
        "{summary:?}"
    );
    assert_eq!(attempts.stalled.lock().unwrap().len(), 3);
    assert!(took < Duration::from_secs(200), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_suspect_that_ended_the_process_too_often_is_quarantined_unparsed() {
    let source = Arc::new(Scripted::with(4));
    for m in source.messages.lock().unwrap().iter_mut().take(2) {
        m.receive_count = 30;
    }
    let attempts = Attempts::new("m0", 3);
    let key = MaskKey::from_base64(&"A".repeat(44)).unwrap();
    let summary = run(
        source.clone(),
        Committing,
        Box::new(LoginKind::new(&key, MaskModes::default())),
        BodySealer::new(&key),
        Some(attempts.clone()),
        settings(Mode::Drain),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.loaded, 3, "{summary:?}");
    assert_eq!(
        summary.rejected.get("poison:crashed"),
        Some(&1),
        "{summary:?}"
    );
    // Only the suspects (received 30 times, limit 25) are recorded, each begun and finished:
    // m0 once (kept aside unparsed), m1 twice (its transform, then its load alone).
    let mut begun = attempts.begun.lock().unwrap().clone();
    begun.sort();
    assert_eq!(begun, ["m0", "m1", "m1"]);
    let mut finished = attempts.finished.lock().unwrap().clone();
    finished.sort();
    assert_eq!(finished, ["m0", "m1", "m1"]);
}
