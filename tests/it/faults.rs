//! Test doubles at the pipeline's seams: wrappers around the real SQS client and the real
//! loader that lose or refuse deletes, rewrite timestamps, count calls, or fail or slow loads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqs2pg::kind::{LoadClass, LoadFailure, LoadReport};
use sqs2pg::pipeline::batch::Batch;
use sqs2pg::pipeline::BatchLoader;
use sqs2pg::sqs::{
    AckHandle, DeleteOutcome, MessageSource, QueueCounts, ReceiveRequest, Received, SourceError,
};

/// What [`FaultySource`] does to deletes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeleteFault {
    /// Pass them through.
    #[default]
    None,
    /// "Lose" the first delete of each message (report success without deleting), as if the
    /// process died between COMMIT and DeleteMessageBatch; later deletes go through.
    LoseFirst,
    /// Refuse every delete for good, as SQS does for an expired receipt handle.
    Refuse,
    /// Refuse the first delete of each message as a stale handle, with the message visible
    /// again (as if its visibility ran out and another consumer received it, then let it go);
    /// later deletes go through.
    StaleFirst,
}

/// The real SQS client with faults injected at the pipeline's seam: deletes lost or refused,
/// SentTimestamp rewritten. Counts delete calls and swallowed deletes, and records the bodies
/// received in order, either way.
pub struct FaultySource<S> {
    inner: Arc<S>,
    deletes: DeleteFault,
    sent_timestamp: Option<i64>,
    pub delete_calls: AtomicU64,
    pub swallowed: AtomicU64,
    seen: Mutex<HashSet<String>>,
    /// Every body received, in the order the receives returned them.
    pub received_bodies: Mutex<Vec<String>>,
    /// When set, receives wait until the gate is opened (see [`FaultySource::gated`]).
    gate: Option<Gate>,
    /// Deliveries of a body containing this are reported as failing their MD5 check, until
    /// [`FaultySource::stop_corrupting`].
    corrupt: Mutex<Option<String>>,
    /// Visibility extensions are answered as done but never sent: leases lapse.
    lose_extensions: bool,
    /// Deliveries of messages whose id ends with this, up to this receive count, are taken
    /// from the server and never handed on (see [`FaultySource::losing_deliveries`]).
    lose_deliveries: Option<(char, i32)>,
    /// Messages whose every delivery up to that count was lost, by id.
    pub lost: Mutex<HashMap<String, i32>>,
}

/// Holds receives back until opened, and tells when one is waiting.
#[derive(Default)]
pub struct Gate {
    pub waiting: AtomicU64,
    open: tokio::sync::Notify,
    opened: std::sync::atomic::AtomicBool,
}

impl Gate {
    pub fn open(&self) {
        self.opened.store(true, Ordering::SeqCst);
        self.open.notify_waiters();
    }

    async fn pass(&self) {
        if self.opened.load(Ordering::SeqCst) {
            return;
        }
        let notified = self.open.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if !self.opened.load(Ordering::SeqCst) {
            notified.await;
        }
    }
}

impl<S> FaultySource<S> {
    /// No faults yet: everything passes through (and delete calls are counted).
    pub fn new(inner: Arc<S>) -> Self {
        Self {
            inner,
            deletes: DeleteFault::None,
            sent_timestamp: None,
            delete_calls: AtomicU64::new(0),
            swallowed: AtomicU64::new(0),
            seen: Mutex::default(),
            received_bodies: Mutex::default(),
            gate: None,
            corrupt: Mutex::default(),
            lose_extensions: false,
            lose_deliveries: None,
            lost: Mutex::default(),
        }
    }

    /// Every visibility extension is reported as done but not sent, so every message held
    /// longer than its visibility timeout comes back (a heartbeat that cannot keep up).
    pub fn losing_extensions(mut self) -> Self {
        self.lose_extensions = true;
        self
    }

    /// The first `times` deliveries of every message whose id ends with `suffix` are lost on
    /// their way (the server counted a receive; the pipeline never sees it), as when another
    /// replica received it and let its lease lapse: it comes back after its visibility timeout
    /// with a receive count of `times + 1`.
    pub fn losing_deliveries(mut self, suffix: char, times: i32) -> Self {
        self.lose_deliveries = Some((suffix, times));
        self
    }

    pub fn deletes(mut self, fault: DeleteFault) -> Self {
        self.deletes = fault;
        self
    }

    /// Every delivery of the message whose body contains `marker` arrives "corrupted" (flagged
    /// as failing its MD5 check, as the real client flags it) until `stop_corrupting`.
    pub fn corrupting(self, marker: &str) -> Self {
        *self.corrupt.lock().unwrap() = Some(marker.to_owned());
        self
    }

    pub fn stop_corrupting(&self) {
        *self.corrupt.lock().unwrap() = None;
    }

    /// Receives wait until [`FaultySource::gate`]'s gate is opened.
    pub fn gated(mut self) -> Self {
        self.gate = Some(Gate::default());
        self
    }

    /// The gate of a [`FaultySource::gated`] source.
    pub fn gate(&self) -> &Gate {
        self.gate.as_ref().expect("a gated source")
    }

    /// Every received message's SentTimestamp becomes `ms` (milliseconds since the epoch).
    pub fn sent_timestamp(mut self, ms: i64) -> Self {
        self.sent_timestamp = Some(ms);
        self
    }
}

impl<S: MessageSource> MessageSource for FaultySource<S> {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Received>, SourceError> {
        if let Some(gate) = &self.gate {
            gate.pass().await;
        }
        let mut messages = self.inner.receive(request).await?;
        if let Some((suffix, times)) = self.lose_deliveries {
            let mut lost = self.lost.lock().unwrap();
            messages.retain(|m| {
                let losing = m.ack.message_id.ends_with(suffix) && m.receive_count <= times;
                if losing {
                    lost.insert(m.ack.message_id.clone(), m.receive_count);
                }
                !losing
            });
        }
        self.received_bodies
            .lock()
            .unwrap()
            .extend(messages.iter().map(|m| m.body.clone()));
        if let Some(marker) = self.corrupt.lock().unwrap().as_deref() {
            for m in &mut messages {
                if m.body.contains(marker) {
                    m.md5_mismatch = true;
                }
            }
        }
        if let Some(ms) = self.sent_timestamp {
            for m in &mut messages {
                m.sent_timestamp = ms;
            }
        }
        Ok(messages)
    }

    async fn counts(&self) -> Result<QueueCounts, SourceError> {
        self.inner.counts().await
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        if self.lose_extensions && !timeout.is_zero() {
            return Ok(Vec::new());
        }
        self.inner.change_visibility(acks, timeout).await
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        self.delete_calls.fetch_add(1, Ordering::SeqCst);
        let passed: Vec<AckHandle> = match self.deletes {
            DeleteFault::None => acks.to_vec(),
            DeleteFault::Refuse => {
                return Ok(DeleteOutcome {
                    failed: acks.len(),
                    refused: acks.to_vec(),
                    ..DeleteOutcome::default()
                })
            }
            DeleteFault::LoseFirst => {
                let mut seen = self.seen.lock().unwrap();
                acks.iter()
                    .filter(|a| !seen.insert(a.message_id.clone()))
                    .cloned()
                    .collect()
            }
            DeleteFault::StaleFirst => {
                let (first, later): (Vec<AckHandle>, Vec<AckHandle>) = {
                    let mut seen = self.seen.lock().unwrap();
                    acks.iter()
                        .cloned()
                        .partition(|a| seen.insert(a.message_id.clone()))
                };
                if !first.is_empty() {
                    self.inner.change_visibility(&first, Duration::ZERO).await?;
                }
                let mut outcome = if later.is_empty() {
                    DeleteOutcome::default()
                } else {
                    self.inner.delete(&later).await?
                };
                outcome.superseded.extend(first);
                return Ok(outcome);
            }
        };
        let lost = acks.len() - passed.len();
        self.swallowed.fetch_add(lost as u64, Ordering::SeqCst);
        let mut outcome = if passed.is_empty() {
            DeleteOutcome::default()
        } else {
            self.inner.delete(&passed).await?
        };
        outcome.deleted += lost;
        Ok(outcome)
    }
}

/// A loader that counts the loads that failed, and delegates.
pub struct CountingLoader<L> {
    pub inner: L,
    pub failed: Arc<AtomicU64>,
}

impl<L: BatchLoader> BatchLoader for CountingLoader<L> {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        let result = self.inner.load(batch).await;
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    /// Every connection counts into the same total.
    fn fork(&self) -> Option<Self> {
        Some(Self {
            inner: self.inner.fork()?,
            failed: self.failed.clone(),
        })
    }
}

/// A loader that fails its first `failures` loads (transiently), then delegates: a database
/// that is down for a while. An empty transaction (the pipeline's check whether the database
/// takes other work) fails too while it is, without counting as one of the loads.
pub struct FailingLoader<L> {
    pub inner: L,
    pub failures: u32,
    pub attempts: Arc<AtomicU64>,
}

impl<L: BatchLoader> BatchLoader for FailingLoader<L> {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        if batch.is_empty() && self.attempts.load(Ordering::SeqCst) < u64::from(self.failures) {
            return Err(LoadFailure::new(
                LoadClass::Transient,
                "the database is down",
            ));
        }
        if batch.is_empty() {
            return self.inner.load(batch).await;
        }
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        if n < u64::from(self.failures) {
            return Err(LoadFailure::new(
                LoadClass::Transient,
                format!("load {n} fails"),
            ));
        }
        self.inner.load(batch).await
    }

    /// The first `failures` loads over all connections fail.
    fn fork(&self) -> Option<Self> {
        Some(Self {
            inner: self.inner.fork()?,
            failures: self.failures,
            attempts: self.attempts.clone(),
        })
    }
}

/// A loader whose first loads (over all its connections) each take `delay` longer: a slow
/// COPY, a database under load.
pub struct SlowLoads<L> {
    pub inner: L,
    pub delay: Duration,
    /// Loads still to slow down.
    pub remaining: Arc<AtomicU64>,
}

impl<L> SlowLoads<L> {
    /// The first `count` loads are slow.
    pub fn first(inner: L, count: u64, delay: Duration) -> Self {
        Self {
            inner,
            delay,
            remaining: Arc::new(AtomicU64::new(count)),
        }
    }
}

impl<L: BatchLoader> BatchLoader for SlowLoads<L> {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        let slow = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if slow {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.load(batch).await
    }

    fn fork(&self) -> Option<Self> {
        Some(Self {
            inner: self.inner.fork()?,
            delay: self.delay,
            remaining: self.remaining.clone(),
        })
    }
}

/// A loader that fails (transiently, as a crash in a trigger or an extension might look) every
/// load holding the login of user `user_id`, and delegates the rest: a poison message.
pub struct PoisonLoader<L> {
    pub inner: L,
    pub user_id: String,
    /// Loads that failed.
    pub failed: Arc<AtomicU64>,
}

impl<L: BatchLoader> BatchLoader for PoisonLoader<L> {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        if holds_user(batch, &self.user_id) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(LoadFailure::new(
                LoadClass::Transient,
                "the server process crashed",
            ));
        }
        self.inner.load(batch).await
    }

    fn fork(&self) -> Option<Self> {
        Some(Self {
            inner: self.inner.fork()?,
            user_id: self.user_id.clone(),
            failed: self.failed.clone(),
        })
    }
}

/// A loader that never finishes a load holding the login of user `user_id` (as a body that
/// stalls the database would: the pipeline's bound gives up on it and drops the connection),
/// and delegates the rest.
pub struct StallingLoader<L> {
    pub inner: L,
    pub user_id: String,
    /// Loads that stalled.
    pub stalled: Arc<AtomicU64>,
}

impl<L: BatchLoader> BatchLoader for StallingLoader<L> {
    async fn load(&mut self, batch: &Batch) -> Result<LoadReport, LoadFailure> {
        if holds_user(batch, &self.user_id) {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
        self.inner.load(batch).await
    }

    fn fork(&self) -> Option<Self> {
        Some(Self {
            inner: self.inner.fork()?,
            user_id: self.user_id.clone(),
            stalled: self.stalled.clone(),
        })
    }

    fn reset(&mut self) {
        self.inner.reset();
    }
}

/// Whether a row of `batch` holds the login of `user_id`: a row holds the user id as encoded
/// for COPY, its bytes verbatim.
fn holds_user(batch: &Batch, user_id: &str) -> bool {
    let user_id = user_id.as_bytes();
    batch.rows.iter().any(|r| {
        r.rows
            .encoded()
            .windows(user_id.len())
            .any(|w| w == user_id)
    })
}
