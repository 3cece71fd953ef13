//! Unit tests of `pipeline::heartbeat`, on tokio's paused clock.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::SystemTime;

use super::*;
use crate::sqs::{DeleteOutcome, QueueCounts, ReceiveRequest, Received};

/// A queue whose extension calls carrying `hung` never answer; the rest answer at once.
struct HangsSome {
    hung: String,
    calls: Mutex<u32>,
    hung_calls: Mutex<u32>,
}

impl MessageSource for HangsSome {
    async fn receive(&self, _: &ReceiveRequest) -> Result<Vec<Received>, SourceError> {
        Ok(Vec::new())
    }

    async fn counts(&self) -> Result<QueueCounts, SourceError> {
        Ok(QueueCounts::default())
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        Ok(DeleteOutcome {
            deleted: acks.len(),
            ..DeleteOutcome::default()
        })
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        _: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        *self.calls.lock().unwrap() += 1;
        // Only its first call hangs: a lost request, not a message the server refuses.
        if acks.iter().any(|a| a.message_id == self.hung) {
            let first = {
                let mut hung = self.hung_calls.lock().unwrap();
                *hung += 1;
                *hung == 1
            };
            if first {
                std::future::pending::<()>().await;
            }
        }
        Ok(Vec::new())
    }
}

fn received(i: usize) -> Received {
    Received {
        ack: AckHandle {
            message_id: format!("m{i}"),
            receipt_handle: format!("r{i}"),
        },
        ledger_id: format!("m{i}"),
        body: String::new(),
        sent_timestamp: 0,
        receive_count: 1,
        group_id: None,
        deduplication_id: None,
        attributes: Vec::new(),
        received_at: SystemTime::now(),
        md5_mismatch: false,
    }
}

#[tokio::test(start_paused = true)]
async fn an_extension_that_never_answers_holds_up_no_other_lease_nor_its_own() {
    let visibility = Duration::from_secs(2);
    let leases = Arc::new(Leases::new(Some(visibility), 1000));
    let messages: Vec<Received> = (0..25).map(received).collect();
    leases
        .admit(messages.len())
        .await
        .hold(&messages, Instant::now());
    let source = Arc::new(HangsSome {
        hung: "m0".into(),
        calls: Mutex::new(0),
        hung_calls: Mutex::new(0),
    });
    let done = CancellationToken::new();
    let heartbeat = tokio::spawn(
        Heartbeat {
            source: source.clone(),
            leases: leases.clone(),
            visibility,
            done: done.clone(),
        }
        .run(),
    );
    // Ten visibility timeouts, looked at every 50 ms: no lease ever lapses, the hung call's
    // messages included.
    let mut lapsed = HashSet::new();
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let due = leases.due(Instant::now(), visibility);
        if due.lapsed > 0 {
            lapsed.insert(Instant::now());
        }
    }
    done.cancel();
    let extended = heartbeat.await.unwrap();
    assert!(lapsed.is_empty(), "leases lapsed {} times", lapsed.len());
    assert!(*source.hung_calls.lock().unwrap() > 1, "sent again");
    // 25 leases, each extended once it is half a timeout old, within a tick (1 to 1.5 s),
    // for 20 s.
    assert!(extended >= 25 * 13, "{extended}");
}

/// Feeds `rto` an answer that took `latency`, to a call sent now.
fn answer(rto: &mut Rto, latency: Duration) {
    let sent = Instant::now();
    rto.observe(sent, rto.epoch, sent + latency);
}

#[test]
fn a_call_counts_as_lost_after_what_calls_take_within_bounds() {
    let visibility = Duration::from_secs(2);
    let mut rto = Rto::new(visibility);
    assert_eq!(
        rto.timeout(),
        Duration::from_millis(500),
        "nothing seen: a quarter of the visibility timeout"
    );
    for _ in 0..20 {
        answer(&mut rto, Duration::from_millis(5));
    }
    assert_eq!(rto.timeout(), Duration::from_millis(100), "fast: the floor");
    let later = Instant::now() + Duration::from_secs(1);
    rto.lost(later, rto.epoch);
    rto.lost(later, rto.epoch);
    assert_eq!(
        rto.timeout(),
        Duration::from_millis(400),
        "two losses in a row: four times as patient"
    );
    for _ in 0..10 {
        rto.lost(later, rto.epoch);
    }
    assert_eq!(rto.timeout(), visibility, "never past the timeout itself");
    for _ in 0..40 {
        answer(&mut rto, Duration::from_millis(700));
    }
    let t = rto.timeout();
    assert!(
        t >= Duration::from_millis(700) && t < Duration::from_millis(800),
        "slow: what calls take, however short the timeout ({t:?})"
    );
    let mut steady = Rto::new(Duration::from_secs(60));
    for _ in 0..50 {
        answer(&mut steady, Duration::from_millis(4000));
    }
    let t = steady.timeout();
    assert!(
        t >= Duration::from_millis(4000) && t < Duration::from_millis(4500),
        "{t:?}"
    );
}

#[test]
fn a_burst_of_losses_backs_off_once_and_a_lone_loss_not_at_all() {
    let mut rto = Rto::new(Duration::from_secs(2));
    for _ in 0..20 {
        answer(&mut rto, Duration::from_millis(5));
    }
    let floor = rto.timeout();
    // Sixteen calls sent together, all lost: one event.
    let sent = Instant::now() + Duration::from_secs(1);
    let epoch = rto.epoch;
    for _ in 0..16 {
        rto.lost(sent, epoch);
    }
    assert_eq!(rto.timeout(), floor * 2, "a burst doubles the timeout once");
    // A call sent with one that was answered: the server answers, this one call was lost.
    let mut rto = Rto::new(Duration::from_secs(2));
    let sent = Instant::now();
    rto.observe(sent, rto.epoch, sent + Duration::from_millis(5));
    let floor = rto.timeout();
    rto.lost(sent, rto.epoch);
    assert_eq!(rto.timeout(), floor, "a lone loss changes nothing");
    // An outage: the late answer to a call sent before it does not end the back-off; an
    // answer to a call sent since does.
    let before = rto.epoch;
    let later = sent + Duration::from_secs(1);
    rto.lost(later, rto.epoch);
    rto.observe(sent, before, sent + Duration::from_millis(5));
    assert_eq!(
        rto.timeout(),
        floor * 2,
        "a late answer from before the outage"
    );
    rto.observe(later, rto.epoch, later + Duration::from_millis(5));
    assert_eq!(rto.timeout(), floor, "an answer to a call sent since");
}

/// A queue whose extension calls take `latency` or, if `fail`, fail at once, and of which
/// every `hang_every`th never answers; it counts the calls, the most open at once, and the
/// calls that carried a message another open call carried too.
struct Server {
    latency: Duration,
    fail: bool,
    hang_every: Option<u32>,
    calls: Mutex<u32>,
    open: Mutex<(usize, usize)>,
    carried: Mutex<HashSet<String>>,
    doubled: Mutex<u32>,
}

impl Server {
    fn new(latency: Duration, fail: bool) -> Self {
        Self {
            latency,
            fail,
            hang_every: None,
            calls: Mutex::new(0),
            open: Mutex::new((0, 0)),
            carried: Mutex::new(HashSet::new()),
            doubled: Mutex::new(0),
        }
    }
}

impl MessageSource for Server {
    async fn receive(&self, _: &ReceiveRequest) -> Result<Vec<Received>, SourceError> {
        Ok(Vec::new())
    }

    async fn counts(&self) -> Result<QueueCounts, SourceError> {
        Ok(QueueCounts::default())
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        Ok(DeleteOutcome {
            deleted: acks.len(),
            ..DeleteOutcome::default()
        })
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        _: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            *calls += 1;
            *calls
        };
        if self.hang_every.is_some_and(|every| call % every == 0) {
            std::future::pending::<()>().await;
        }
        if self.fail {
            return Err(SourceError::new(
                SourceErrorKind::Transient,
                "ChangeMessageVisibilityBatch",
                "connection refused",
            ));
        }
        {
            let mut open = self.open.lock().unwrap();
            open.0 += 1;
            open.1 = open.1.max(open.0);
            let mut carried = self.carried.lock().unwrap();
            if !acks.iter().all(|a| carried.insert(a.message_id.clone())) {
                *self.doubled.lock().unwrap() += 1;
            }
        }
        tokio::time::sleep(self.latency).await;
        self.open.lock().unwrap().0 -= 1;
        let mut carried = self.carried.lock().unwrap();
        for a in acks {
            carried.remove(&a.message_id);
        }
        Ok(Vec::new())
    }
}

/// What [`heartbeat_against`] saw.
struct Held {
    extended: u64,
    /// Times, looked at every 50 ms, that some lease had lapsed.
    lapsed: u32,
}

/// Holds `messages` leases at `visibility` for `seconds` against `server`.
async fn heartbeat_against(
    server: &Arc<Server>,
    visibility: Duration,
    messages: usize,
    seconds: u64,
) -> Held {
    let leases = Arc::new(Leases::new(Some(visibility), 10_000));
    let messages: Vec<Received> = (0..messages).map(received).collect();
    leases
        .admit(messages.len())
        .await
        .hold(&messages, Instant::now());
    let done = CancellationToken::new();
    let heartbeat = tokio::spawn(
        Heartbeat {
            source: server.clone(),
            leases: leases.clone(),
            visibility,
            done: done.clone(),
        }
        .run(),
    );
    let mut lapsed = 0;
    for _ in 0..seconds * 20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if leases.due(Instant::now(), visibility).lapsed > 0 {
            lapsed += 1;
        }
    }
    done.cancel();
    Held {
        extended: heartbeat.await.unwrap(),
        lapsed,
    }
}

/// A tenth of the calls never answer, at a 2 s visibility timeout with 100 leases and at
/// 30 s with 1,000: no lease lapses. At 30 s a lost call is given up only after 30 s, so
/// without abandoning lost calls once later ones are answered they would fill every place
/// (about 0.7 lost a second, each held 30 s, against 16 places).
#[tokio::test(start_paused = true)]
async fn calls_that_never_answer_let_no_lease_lapse() {
    for (visibility, leases, seconds) in [(2, 100, 30), (30, 1000, 240)] {
        let mut server = Server::new(Duration::from_millis(20), false);
        server.hang_every = Some(10);
        let server = Arc::new(server);
        let held =
            heartbeat_against(&server, Duration::from_secs(visibility), leases, seconds).await;
        let calls = *server.calls.lock().unwrap();
        println!(
            "{visibility} s: {calls} calls, {} extended, lapsed {} times",
            held.extended, held.lapsed
        );
        assert_eq!(held.lapsed, 0, "leases lapsed at {visibility} s");
        assert!(calls >= 10, "{calls} calls");
    }
}

/// A server that answers in 600 ms, at a 1 s visibility timeout, while 400 leases are held:
/// slower than the heartbeat needs. It gets at most `CALLS_OPEN` calls at once, and once its
/// pace is known no lease is sent again while a call carrying it is still open: sending more
/// to a slow server only makes it slower (five drains at 1 s once flooded LocalStack this way,
/// 40 calls per message, until it refused connections).
#[tokio::test(start_paused = true)]
async fn a_slow_server_is_not_sent_more_than_it_can_answer() {
    let server = Arc::new(Server::new(Duration::from_millis(600), false));
    let extended = heartbeat_against(&server, Duration::from_secs(1), 400, 30)
        .await
        .extended;
    let calls = *server.calls.lock().unwrap();
    let most_open = server.open.lock().unwrap().1;
    let doubled = *server.doubled.lock().unwrap();
    println!("{calls} calls, at most {most_open} open, {doubled} doubled, {extended} extended");
    assert!(most_open <= CALLS_OPEN, "{most_open} calls open at once");
    // Before its first answer the server's pace is unknown: a few calls may be doubled then.
    assert!(
        doubled <= CALLS_OPEN as u32,
        "{doubled} calls carried leases another open call did"
    );
    // Every call but the few sent before the server's pace was known extended ten leases.
    assert!(
        u64::from(calls) * 10 <= extended + 10 * CALLS_OPEN as u64,
        "{calls} calls, {extended} extended"
    );
}

/// A server whose every extension call fails at once: the heartbeat backs off instead of
/// sending the same leases again on every tick.
#[tokio::test(start_paused = true)]
async fn a_failing_server_is_asked_less_and_less_often() {
    let server = Arc::new(Server::new(Duration::ZERO, true));
    heartbeat_against(&server, Duration::from_secs(1), 100, 30).await;
    let calls = *server.calls.lock().unwrap();
    println!("{calls} calls in 30 s");
    // Ten calls carry the 100 leases; with the retransmission timeout doubled by every failure
    // up to the visibility timeout, each is sent again at most about once a second (a tick,
    // 125 ms, every time before).
    assert!(calls <= 10 * 35, "{calls} calls in 30 s");
    assert!(
        calls >= 10 * 10,
        "{calls} calls in 30 s: the heartbeat gave up"
    );
}
