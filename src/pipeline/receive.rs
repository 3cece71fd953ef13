//! The receivers: wait for room in the window, long-poll SQS, run the pure transform on each
//! message, and hand the result to the batcher through a bounded channel; in `run`, only as
//! many poll as full receives call for ([`Active`]); in `drain`, they decide when the queue is
//! drained.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::{self, HeldBody, Processed};
use super::lease::{Admission, Leases};
use super::sink::{finish_attempt, AttemptLog};
use super::{Mode, PipelineError, PipelineSettings};
use crate::error::{fate, Fate, Outcome};
use crate::keys::BodySealer;
use crate::kind::{Delivery, Message, MessageKind, Rejection, Transformed};
use crate::retry::Backoff;
use crate::sqs::{Envelope, MessageSource, QueueCounts, ReceiveRequest, Received, SQS_BATCH_LIMIT};

/// SQS's default visibility timeout, for a run that was given none (the pipeline is normally
/// given the queue's own).
const DEFAULT_QUEUE_VISIBILITY: Duration = Duration::from_secs(30);

/// The long-poll wait of every `drain` poll but the first: long enough to be a long poll
/// (which, unlike a short one, asks every SQS server, so an empty answer means an empty
/// queue), short enough that a drain ends about a second after its last delete.
pub const DRAIN_CONFIRM_WAIT: Duration = Duration::from_secs(1);

/// One receiver's task: wait for room in the window, long-poll, transform, hand over; stop on
/// shutdown, or in drain mode when a long poll started while the run held nothing comes back
/// empty.
///
/// In `drain`, receiver 0 polls first, alone, with the full `--wait-time-secs` (a drain of an
/// empty queue waits that long for messages to arrive); every later poll waits
/// [`DRAIN_CONFIRM_WAIT`]. A poll that comes back empty does not count if the run held
/// messages at any time during it (on a FIFO queue our own in-flight messages hide the rest of
/// their group): the receiver waits until the run holds nothing, then confirms with one more
/// poll. Such a poll counts only if the queue's counts (visible, in flight, delayed), read as
/// it starts and again when it ends, are all zero ([`Stage::confirms_empty`]): messages that
/// another consumer holds are waited for, until they are deleted there or come back here. The
/// first receiver to see the queue empty that way ends the drain for all.
pub(super) struct Receiver<S> {
    /// Which receiver this is (receiver 0 polls first in `drain`).
    pub id: usize,
    pub source: Arc<S>,
    /// Where what is received is held, and the window that admits receives.
    pub leases: Arc<Leases>,
    /// To the batcher.
    pub items: mpsc::Sender<Processed>,
    /// What every receiver shares: the kind, the sealer, the settings and the counters.
    pub stage: Arc<Stage>,
    /// Cancelled on shutdown and by any task that must stop the run.
    pub stop: CancellationToken,
}

/// What a step of a receiver's loop says to do next.
enum Step<T = ()> {
    /// Go on, with this.
    Go(T),
    /// Start over: wait for a turn and poll again.
    Again,
    /// The receiver is done.
    Done(Result<(), PipelineError>),
}

/// A [`Step`]'s value, or else `continue` or `return` in the loop that took the step.
macro_rules! step {
    ($step:expr) => {
        match $step {
            Step::Go(value) => value,
            Step::Again => continue,
            Step::Done(result) => return result,
        }
    };
}

/// What a receiver carries from one poll to the next.
struct Polls {
    /// Failed receives in a row.
    failures: Backoff,
    /// A receive whose answer was lost is retried as the same attempt (on FIFO queues, the
    /// same `ReceiveRequestAttemptId`), so SQS hands out what it took for it again.
    retrying: Option<ReceiveRequest>,
    /// When the receive (or the first try of one retried as the same attempt, whose
    /// messages' visibility may have started then) was sent.
    asked: Instant,
    /// `drain`: the queue's counts read last, and the receives this run had made by then. A
    /// read with nothing received since serves as the next poll's opening read.
    last_counts: Option<(QueueCounts, u64)>,
}

/// One poll's answer, and what the run held when it started.
struct Poll<'a> {
    admission: Admission<'a>,
    messages: Vec<Received>,
    /// `drain`: the queue's counts as the poll started, when it started with nothing held.
    opening_counts: Option<QueueCounts>,
    held_before: bool,
    receives_before: u64,
}

impl<S: MessageSource> Receiver<S> {
    pub(super) async fn run(self) -> Result<(), PipelineError> {
        let settings = &self.stage.settings;
        let drain = settings.mode == Mode::Drain;
        let mut polls = Polls {
            failures: settings.source_retry.backoff(),
            retrying: None,
            asked: Instant::now(),
            last_counts: None,
        };
        if drain && self.id > 0 {
            tokio::select! {
                _ = self.stage.first_poll_done.cancelled() => {}
                _ = self.stop.cancelled() => return Ok(()),
            }
        }
        loop {
            step!(self.take_turn(drain).await);
            let poll = step!(self.receive(&mut polls, drain).await);
            let (messages, corrupted_only) = self.set_aside_corrupted(poll.messages);
            // One lease per message: a delivery of a message already held only renews its lease.
            let fresh = poll.admission.hold(&messages, polls.asked);
            let joined = fresh.iter().filter(|new| !**new).count();
            if joined > 0 {
                self.stage
                    .redelivered_while_held
                    .fetch_add(joined as u64, Ordering::Relaxed);
                tracing::debug!(messages = joined, "redelivered while held; lease renewed");
            }
            if self.stop.is_cancelled() {
                return Ok(());
            }
            if corrupted_only {
                // Not an empty queue: poll on.
                continue;
            }
            if messages.is_empty() {
                step!(
                    self.after_empty_poll(
                        &mut polls,
                        drain,
                        poll.held_before,
                        poll.receives_before,
                        poll.opening_counts
                    )
                    .await
                );
                continue;
            }
            self.stage.waiting_elsewhere(0);
            tracing::trace!(count = messages.len(), "received");
            step!(self.pass_on(messages, fresh).await);
        }
    }

    /// Whether this receiver polls now: not once stopped, nor once a drain has ended and
    /// nothing is held; in `run`, a receiver beyond the active count waits until receives
    /// come back full.
    async fn take_turn(&self, drain: bool) -> Step {
        if self.stop.is_cancelled() {
            return Step::Done(Ok(()));
        }
        if drain && self.stage.drained.is_cancelled() && self.leases.is_empty() {
            return Step::Done(Ok(()));
        }
        if !drain && !self.stage.active.admits(self.id) {
            let more = self.stage.active.more.notified();
            if !self.stage.active.admits(self.id) {
                tokio::select! {
                    _ = more => {}
                    _ = self.stop.cancelled() => return Step::Done(Ok(())),
                }
            }
            return Step::Again;
        }
        Step::Go(())
    }

    /// Room in the window for what a receive may bring, then one receive (in `drain`, with
    /// the queue's counts as it starts when it starts with nothing held). A failed receive is
    /// retried with backoff, as the same attempt, while the policy says so; then the run stops.
    async fn receive(&self, polls: &mut Polls, drain: bool) -> Step<Poll<'_>> {
        let (stage, settings) = (&self.stage, &self.stage.settings);
        let source = &self.source;
        let admission = tokio::select! {
            admission = self.leases.admit(SQS_BATCH_LIMIT) => admission,
            _ = self.stop.cancelled() => return Step::Done(Ok(())),
        };
        // Not dropped as soon as `stop` fires: a receive dropped mid-flight would leave the
        // messages SQS handed out invisible until their timeout. It gets the receive grace
        // (one long poll plus a few seconds, within the shutdown budget) to finish; what it
        // brings is held, then released at the end of the run.
        let grace = async {
            self.stop.cancelled().await;
            tokio::time::sleep(settings.receive_grace()).await;
        };
        let held_before = !self.leases.is_empty();
        let receives_before = self.leases.receives();
        let first = drain && !stage.first_poll_done.is_cancelled();
        let wait = if drain && !first {
            settings.wait_time.min(DRAIN_CONFIRM_WAIT)
        } else {
            settings.wait_time
        };
        let request = match polls.retrying.take() {
            Some(request) => request,
            None => {
                polls.asked = Instant::now();
                ReceiveRequest::new(SQS_BATCH_LIMIT as i32, wait, settings.visibility_timeout)
            }
        };
        // `drain`: a poll that starts with nothing held may end the drain; the queue's
        // counts are read as it starts (or the last read is reused) and again when it ends.
        let opening = (drain && !held_before).then(|| {
            polls
                .last_counts
                .filter(|(_, receives)| *receives == receives_before)
                .map(|(counts, _)| counts)
        });
        let call = async {
            match opening {
                Some(None) => {
                    let (received, counts) =
                        tokio::join!(source.receive(&request), source.counts());
                    (received, stage.counts_read(counts))
                }
                Some(Some(counts)) => (source.receive(&request).await, Some(counts)),
                None => (source.receive(&request).await, None),
            }
        };
        let (received, opening_counts) = tokio::select! {
            r = call => r,
            _ = grace => return Step::Done(Ok(())),
        };
        if first {
            stage.first_poll_done.cancel();
        }
        match received {
            Ok(messages) => {
                polls.failures.reset();
                Step::Go(Poll {
                    admission,
                    messages,
                    opening_counts,
                    held_before,
                    receives_before,
                })
            }
            Err(error) => {
                drop(admission);
                *stage.receive_failed_at.lock().expect("not poisoned") = Some(Instant::now());
                polls.retrying = Some(request);
                let delay = polls.failures.failed();
                if let (Fate::Retry, Some(delay)) = (fate(Outcome::Sqs(&error)), delay) {
                    tracing::warn!(attempt = polls.failures.attempts(), %error, "receive failed; retrying");
                    settings.meter.record_receive_retry();
                    tokio::select! {
                        _ = self.stop.cancelled() => return Step::Done(Ok(())),
                        _ = tokio::time::sleep(delay) => return Step::Again,
                    }
                }
                self.stop.cancel();
                Step::Done(Err(PipelineError::Source {
                    attempts: polls.failures.attempts(),
                    source: error,
                }))
            }
        }
    }

    /// A body that failed its MD5 check is not processed: not held (so not kept invisible by
    /// the heartbeat), just counted; SQS delivers it again after its visibility timeout. Only
    /// once it has come back too often is it passed on, to be quarantined as poison. Answers
    /// the messages to hold, and whether the poll brought nothing else.
    fn set_aside_corrupted(&self, messages: Vec<Received>) -> (Vec<Received>, bool) {
        let (stage, settings) = (&self.stage, &self.stage.settings);
        let mismatched = messages.iter().filter(|m| m.md5_mismatch).count();
        settings.meter.record_md5_mismatches(mismatched as u64);
        let (corrupted, messages): (Vec<Received>, Vec<Received>) =
            messages.into_iter().partition(|m| {
                m.md5_mismatch
                    && fate(Outcome::CorruptBody {
                        over_receive_limit: m.receive_count > settings.max_receive_count,
                    }) == Fate::Redeliver
            });
        if !corrupted.is_empty() {
            stage
                .md5_mismatches
                .fetch_add(corrupted.len() as u64, Ordering::Relaxed);
            self.leases
                .let_go(corrupted.iter().map(|m| m.ack.message_id.as_str()));
        }
        let corrupted_only = messages.is_empty() && !corrupted.is_empty();
        stage.active.observe(messages.len() + corrupted.len());
        (messages, corrupted_only)
    }

    /// A poll that brought nothing. In `drain`, it may end the drain (see [`Receiver`]);
    /// otherwise, short polling on an empty queue waits a second, not to spin.
    async fn after_empty_poll(
        &self,
        polls: &mut Polls,
        drain: bool,
        held_before: bool,
        receives_before: u64,
        opening_counts: Option<QueueCounts>,
    ) -> Step {
        let (stage, leases) = (&self.stage, &self.leases);
        if drain {
            // Counts only if the run held nothing all through the poll: nothing when it
            // started, nothing when it ended, and no other receive brought anything in
            // between (whose messages could have hidden the rest of a FIFO group and been
            // deleted before this poll ended).
            if let Some(until) = stage.lost_messages_hidden_until() {
                // A failed receive may have been served: wait until what it took is visible
                // again, then poll on.
                tracing::debug!(
                    "queue looks empty, but a failed receive may hide messages; waiting"
                );
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    _ = self.stop.cancelled() => return Step::Done(Ok(())),
                }
                return Step::Again;
            }
            if !held_before && leases.is_empty() && leases.receives() == receives_before {
                // The poll saw nothing visible; the queue is empty only if nothing is in
                // flight elsewhere or delayed either, by two reads of its counts (SQS updates
                // them with some lag), one as the poll started and one now.
                let closing = stage.counts_read(self.source.counts().await);
                polls.last_counts = closing.map(|c| (c, receives_before));
                if stage.confirms_empty(opening_counts, closing, leases.let_go_hidden()) {
                    stage.drained.cancel();
                    return Step::Done(Ok(()));
                }
                return Step::Again;
            }
            // Messages we hold can hide others: on a FIFO queue SQS hands out none of a group
            // while part of it is in flight (and moto decides that once, when a poll starts),
            // so only a poll started after they were deleted counts.
            tokio::select! {
                () = leases.emptied() => {}
                _ = self.stop.cancelled() => return Step::Done(Ok(())),
            }
        } else if self.stage.settings.wait_time.is_zero() {
            // Short polling on an empty queue would spin (and SQS bills per request).
            tokio::select! {
                _ = self.stop.cancelled() => return Step::Done(Ok(())),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        Step::Again
    }

    /// Each message newly held, transformed (a suspect through its recorded attempt) and
    /// handed to the batcher, within the in-flight budget.
    async fn pass_on(&self, messages: Vec<Received>, fresh: Vec<bool>) -> Step {
        let (stage, settings) = (&self.stage, &self.stage.settings);
        let held_since = Instant::now();
        for (m, new) in messages.into_iter().zip(fresh) {
            if !new {
                continue;
            }
            // Backpressure: wait for this body's share of the in-flight budget. While the
            // database is slow or down the budget stays spent and receiving pauses here; what
            // we hold meanwhile is kept invisible by the heartbeat.
            let bytes = m.body.len().clamp(1, settings.max_in_flight_bytes) as u32;
            let permit = tokio::select! {
                permit = stage.budget.clone().acquire_many_owned(bytes) => {
                    permit.expect("the budget is never closed")
                }
                _ = self.stop.cancelled() => return Step::Done(Ok(())),
            };
            let mut processed = match &stage.attempts {
                Some(log)
                    if m.receive_count > settings.max_receive_count
                        || stage.stallers.contains(&m.ledger_id) =>
                {
                    stage.process_suspect(log.as_ref(), m, held_since).await
                }
                _ => stage.process(m, held_since, None),
            };
            processed.permit = Some(permit);
            if self.items.send(processed).await.is_err() {
                // The loader has stopped; what we hold was not committed and is released.
                return Step::Done(Ok(()));
            }
        }
        Step::Go(())
    }
}

/// What `Stage::begin_attempt` found: whether the attempt is to be finished (it was
/// recorded, or may have been: a record whose answer was lost is finished too, which can only
/// make a crash count one lower), and the attempts before it that never finished, when they
/// make the message `poison:crashed`.
struct Attempt {
    finish: bool,
    crashed: Option<u32>,
}

/// What the receivers share: what turns a received message into a [`Processed`] one, the
/// in-flight byte budget, and the count of bodies that failed their MD5 check.
pub(super) struct Stage {
    kind: Box<dyn MessageKind>,
    pub(super) sealer: BodySealer,
    /// The durable record of attempts at suspects, if the run keeps one.
    pub(super) attempts: Option<Arc<dyn AttemptLog>>,
    /// Messages that stalled the database alone here before: suspects on their next delivery.
    pub(super) stallers: batch::Stallers,
    /// Fields no column of the kind takes (the metric, labelled with the kind).
    unknown_fields: metrics::Counter,
    settings: Arc<PipelineSettings>,
    /// Body bytes in flight ([`PipelineSettings::max_in_flight_bytes`]).
    budget: Arc<tokio::sync::Semaphore>,
    pub(super) md5_mismatches: AtomicU64,
    /// Messages this queue's drain waits for that another consumer holds (its part of
    /// `Progress::waiting_elsewhere`).
    waiting_here: AtomicU64,
    /// Deliveries of messages already held, which renewed their lease and went no further.
    pub(super) redelivered_while_held: AtomicU64,
    /// How many receivers poll now (`run` only; `drain` always polls with all of them).
    active: Active,
    /// `drain`: the first, full-length poll has come back; the other receivers start.
    first_poll_done: CancellationToken,
    /// `drain`: a receiver saw the queue empty with nothing held; the others stop polling
    /// once they hold nothing.
    drained: CancellationToken,
    /// When the last receive failed. A receive that failed (say, it got no answer in time)
    /// may still have been served: its messages are invisible and nobody holds them, so an
    /// empty poll proves nothing until they are visible again.
    receive_failed_at: std::sync::Mutex<Option<Instant>>,
    /// `drain`: the queue's counts were refused for good ([`Stage::counts_read`]).
    counts_unreadable: std::sync::atomic::AtomicBool,
    /// `drain`: a read of the counts failed transiently (said once).
    counts_failing: std::sync::atomic::AtomicBool,
}

/// Adaptive receive concurrency for `run`: a full receive (10 messages) lets one more receiver
/// poll, an empty one sends one back to wait, never below one. A busy queue gets every
/// receiver; an idle one is long-polled by one, since SQS bills per request.
pub(super) struct Active {
    receivers: std::sync::atomic::AtomicUsize,
    max: usize,
    more: tokio::sync::Notify,
}

impl Active {
    fn new(max: usize) -> Self {
        Self {
            receivers: std::sync::atomic::AtomicUsize::new(max),
            max,
            more: tokio::sync::Notify::new(),
        }
    }

    /// True while receiver `id` may poll.
    fn admits(&self, id: usize) -> bool {
        id < self.receivers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adjusts to what a receive brought.
    fn observe(&self, received: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if received >= SQS_BATCH_LIMIT {
            let grew = self
                .receivers
                .fetch_update(Relaxed, Relaxed, |n| (n < self.max).then_some(n + 1))
                .is_ok();
            if grew {
                self.more.notify_waiters();
            }
        } else if received == 0 {
            let _ = self
                .receivers
                .fetch_update(Relaxed, Relaxed, |n| (n > 1).then_some(n - 1));
        }
    }
}

impl Stage {
    pub(super) fn new(
        kind: Box<dyn MessageKind>,
        sealer: BodySealer,
        attempts: Option<Arc<dyn AttemptLog>>,
        settings: Arc<PipelineSettings>,
    ) -> Self {
        Self {
            unknown_fields: settings.meter.unknown_fields(kind.name()),
            kind,
            sealer,
            attempts,
            stallers: batch::Stallers::default(),
            budget: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight_bytes)),
            md5_mismatches: AtomicU64::new(0),
            waiting_here: AtomicU64::new(0),
            redelivered_while_held: AtomicU64::new(0),
            active: Active::new(settings.receivers.max(1)),
            first_poll_done: CancellationToken::new(),
            drained: CancellationToken::new(),
            receive_failed_at: std::sync::Mutex::new(None),
            counts_unreadable: std::sync::atomic::AtomicBool::new(false),
            counts_failing: std::sync::atomic::AtomicBool::new(false),
            settings,
        }
    }

    /// Until when an empty poll cannot count as the end of a drain: one visibility timeout
    /// after the last failed receive (whose messages, if it was served, are hidden till then).
    fn lost_messages_hidden_until(&self) -> Option<Instant> {
        let failed = (*self.receive_failed_at.lock().expect("not poisoned"))?;
        let visibility = self
            .settings
            .visibility_timeout
            .unwrap_or(DEFAULT_QUEUE_VISIBILITY);
        Some(failed + visibility).filter(|until| *until > Instant::now())
    }

    /// `drain`: whether a poll that began and ended with nothing held, and came back empty,
    /// ends the drain. It does when the queue's counts, read as the poll began (`opening`)
    /// and after it ended (`closing`), both say nothing is visible, in flight or delayed,
    /// but for the `ours` messages this run let go for redelivery (a drain reports those and
    /// exits 1). Otherwise messages are held by another consumer (they are deleted there, or
    /// come back here once their visibility timeout passes) or delayed (they appear here), and
    /// the drain waits for them: the live line and the log say so.
    fn confirms_empty(
        &self,
        opening: Option<QueueCounts>,
        closing: Option<QueueCounts>,
        ours: u64,
    ) -> bool {
        if self.counts_unreadable.load(Ordering::Relaxed) {
            // Denied for good (see `counts_read`): the empty poll alone ends the drain.
            return true;
        }
        let others = |mut counts: QueueCounts| {
            counts.in_flight = counts.in_flight.saturating_sub(ours);
            counts
        };
        match (opening.map(others), closing.map(others)) {
            (Some(opening), Some(closing)) if opening.is_empty() && closing.is_empty() => {
                tracing::debug!(
                    "queue empty for one long poll with nothing held anywhere; receiver done"
                );
                self.waiting_elsewhere(0);
                true
            }
            (_, Some(closing)) if !closing.is_empty() => {
                self.waiting_elsewhere(closing.in_flight + closing.delayed + closing.visible);
                false
            }
            // Zero now but not (or not known) as the poll began: one more poll confirms.
            _ => false,
        }
    }

    /// The counts a read gave, or `None`. A read refused for good (a policy without
    /// `sqs:GetQueueAttributes`) makes the drain end at its first empty poll, as if the counts
    /// said empty, with a warning: without counts it cannot see what others hold, and waiting
    /// for a read that can never succeed would never end.
    fn counts_read(
        &self,
        read: Result<QueueCounts, crate::sqs::SourceError>,
    ) -> Option<QueueCounts> {
        match read {
            Ok(counts) => Some(counts),
            Err(error) => {
                if error.kind == crate::sqs::SourceErrorKind::Permanent {
                    if !self.counts_unreadable.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            %error,
                            "cannot read the queue's counts: the drain ends at its first empty \
                             poll and does not wait for messages another consumer holds \
                             (allow sqs:GetQueueAttributes to have it wait)"
                        );
                    }
                } else if !self.counts_failing.swap(true, Ordering::Relaxed) {
                    // Said once: the drain polls on, and ends once a read succeeds.
                    tracing::warn!(%error, "cannot read the queue's counts for now; the drain goes on until it can confirm the queue is empty");
                } else {
                    tracing::debug!(%error, "queue counts not read");
                }
                None
            }
        }
    }

    /// Notes how many messages a drain waits for that it does not hold (0: none), for the
    /// live line, and says so in the log when it starts waiting.
    fn waiting_elsewhere(&self, messages: u64) {
        // This queue's part of the live line's count, which sums every queue of the run.
        let before = self.waiting_here.swap(messages, Ordering::Relaxed);
        let shown = &self.settings.progress.waiting_elsewhere;
        if messages >= before {
            shown.fetch_add(messages - before, Ordering::Relaxed);
        } else {
            shown.fetch_sub(before - messages, Ordering::Relaxed);
        }
        if before == 0 && messages > 0 {
            tracing::info!(
                messages,
                "no message visible, but some are in flight under another consumer or delayed; \
                 waiting until they are deleted there or come back"
            );
        }
    }

    /// A suspect (received more often than `--max-receive-count`), processed between a
    /// record of its attempt in the database and a record that the attempt finished, while no
    /// other suspect's attempt is open (its turn): a body that kills the process while it is
    /// parsed then leaves only its own attempt unfinished, never another suspect's. A valid
    /// one's load alone is a second attempt, recorded by the batcher (see `pipeline::load`).
    /// Earlier attempts that never finished (the process died) may make it `poison:crashed`.
    async fn process_suspect(
        &self,
        log: &dyn AttemptLog,
        m: Received,
        held_since: Instant,
    ) -> Processed {
        let turn = self.settings.suspect_turn.clone().lock_owned().await;
        let attempt = self.begin_attempt(log, &m).await;
        let mut processed = self.process(m, held_since, attempt.crashed);
        if attempt.finish {
            finish_attempt(log, &processed.ledger_id).await;
        }
        // A valid one keeps the turn until its load alone has ended (its second attempt, see
        // `pipeline::load`): another suspect's transform killing the process meanwhile would
        // count against this one.
        if processed.is_suspect_row() {
            processed.turn = Some(turn);
        }
        processed
    }

    /// Records an attempt at suspect `m`. A record that cannot be made (the database is away)
    /// is no verdict: the message is processed.
    async fn begin_attempt(&self, log: &dyn AttemptLog, m: &Received) -> Attempt {
        let ledger_ms = batch::ledger_ms(m.sent_timestamp, m.ledger_id != m.ack.message_id);
        match log.begin(&m.ledger_id, ledger_ms).await {
            Ok(Some(unfinished)) => {
                let limit = self.settings.max_crashes;
                let crashed = (fate(Outcome::UnfinishedAttempts { unfinished, limit })
                    == Fate::Quarantine)
                    .then_some(unfinished);
                Attempt {
                    finish: true,
                    crashed,
                }
            }
            Ok(None) => Attempt {
                finish: false,
                crashed: None,
            },
            Err(error) => {
                tracing::warn!(message_id = %m.ack.message_id, %error, "could not record an attempt at a suspect; processing it anyway");
                Attempt {
                    finish: true,
                    crashed: None,
                }
            }
        }
    }

    /// The pure transform, the poison check, and the evidence (sealed body) kept for
    /// quarantine.
    ///
    /// A message received more often than `--max-receive-count` is a suspect, not poison: it
    /// may only have come back because leases lapsed. It is transformed like any other (a
    /// panic in the transform is caught and makes it poison), and a valid one is loaded alone
    /// (see `load::load_isolating`), where the verdict is made. Only a body that fails its MD5
    /// check every time is poison by its receive count alone.
    ///
    /// `crashed`: earlier attempts at it ended the process that many times; it is kept aside
    /// as `poison:crashed` without being parsed.
    pub(super) fn process(
        &self,
        m: Received,
        held_since: Instant,
        crashed: Option<u32>,
    ) -> Processed {
        let limit = self.settings.max_receive_count;
        let over_limit = m.receive_count > limit;
        let suspect = over_limit || self.stallers.contains(&m.ledger_id);
        let poison = |detail: String| Transformed::of(Err(Rejection::poison(detail)));
        let max_body_bytes = self.settings.max_body_bytes;
        let transformed = || {
            if m.body.len() > max_body_bytes {
                return Transformed::of(Err(Rejection::body_too_large(
                    m.body.len(),
                    max_body_bytes,
                )));
            }
            #[cfg(feature = "test-support")]
            batch::crash_if_told(&m.body, "transform");
            self.kind.transform(&Message {
                body: &m.body,
                // A replay (ledger id `ID#replayN`) maps as the message it replays.
                message_id: original_id(&m.ledger_id),
                sent_timestamp_ms: m.sent_timestamp,
                receive_count: m.receive_count,
                group_id: m.group_id.as_deref(),
                attributes: &m.attributes,
            })
        };
        let corrupt_poison = m.md5_mismatch
            && fate(Outcome::CorruptBody {
                over_receive_limit: over_limit,
            }) == Fate::Quarantine;
        let t = if let Some(unfinished) = crashed {
            tracing::warn!(message_id = %m.ack.message_id, receive_count = m.receive_count, unfinished, "processing this message ended the process again and again: poison");
            Transformed::of(Err(Rejection::crashed(format!(
                "received {} times, limit {limit}; {unfinished} attempts at processing it never finished (the process ended), limit {}",
                m.receive_count, self.settings.max_crashes
            ))))
        } else if corrupt_poison {
            poison(format!(
                "received {} times, limit {limit}; its body fails its MD5 check",
                m.receive_count
            ))
        } else if suspect {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(transformed)).unwrap_or_else(
                |panic| match fate(Outcome::TransformPanicked) {
                    Fate::Quarantine => poison(format!(
                        "received {} times, limit {limit}; processing it panicked",
                        m.receive_count
                    )),
                    _ => std::panic::resume_unwind(panic),
                },
            )
        } else {
            transformed()
        };
        if t.unknown_fields > 0 {
            self.unknown_fields.increment(u64::from(t.unknown_fields));
            for field in &t.new_unknown {
                tracing::info!(kind = self.kind.name(), %field, "a field no column takes (named once; its values are never logged)");
            }
        }
        if let Err(rejection) = &t.outcome {
            let fate = fate(Outcome::Rejected(rejection));
            tracing::info!(message_id = %m.ack.message_id, reason = %rejection.reason, ?fate, "message rejected");
        }
        let delivery = Delivery {
            received_at: m.received_at,
            receive_count: m.receive_count,
            sent_timestamp: m.sent_timestamp,
            ledger_ms: batch::ledger_ms(m.sent_timestamp, m.ledger_id != m.ack.message_id),
        };
        // A rejection's body is sealed now; a row's is held, to be sealed only if the
        // database refuses the row.
        let envelope = Envelope {
            attributes: m.attributes,
            group_id: m.group_id,
            deduplication_id: m.deduplication_id,
        };
        let outcome = match t.outcome {
            Ok(rows) => Ok((rows, HeldBody::new(m.body, envelope))),
            Err(rejection) => Err((
                rejection,
                batch::seal(&self.sealer, &m.ledger_id, &m.body, Some(&envelope)),
            )),
        };
        Processed {
            ack: m.ack,
            ledger_id: m.ledger_id,
            outcome,
            delivery,
            unknown_fields: t.unknown_fields,
            permit: None,
            held_since,
            suspect,
            turn: None,
        }
    }
}

/// The SQS message id behind a ledger id: a replay's (`ID#replayN`) is its original's.
fn original_id(ledger_id: &str) -> &str {
    ledger_id
        .split_once("#replay")
        .map_or(ledger_id, |(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_mapped_under_the_id_of_the_message_it_replays() {
        assert_eq!(original_id("6f1c#replay2"), "6f1c");
        assert_eq!(original_id("6f1c"), "6f1c");
    }

    #[tokio::test]
    async fn full_receives_call_waiting_receivers_back_and_empty_ones_send_them_away() {
        let active = Arc::new(Active::new(4));
        for _ in 0..10 {
            active.observe(0);
        }
        assert!(active.admits(0) && !active.admits(1), "never below one");
        let waiting = {
            let active = active.clone();
            tokio::spawn(async move {
                let more = active.more.notified();
                if !active.admits(1) {
                    more.await;
                }
                active.admits(1)
            })
        };
        tokio::task::yield_now().await;
        active.observe(7);
        assert!(!active.admits(1), "a partial receive changes nothing");
        active.observe(10);
        assert!(waiting.await.unwrap(), "a full receive calls one more back");
        for _ in 0..10 {
            active.observe(10);
        }
        assert!(
            active.admits(3) && !active.admits(4),
            "never above the configured count"
        );
    }
}
