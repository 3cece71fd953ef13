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
    leases.admit(messages.len()).await.hold(&messages);
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

#[test]
fn a_call_counts_as_lost_after_what_calls_take_within_bounds() {
    let visibility = Duration::from_secs(2);
    let mut rto = Rto::new(visibility);
    assert_eq!(
        rto.timeout(),
        Duration::from_millis(500),
        "nothing seen: a tick"
    );
    for _ in 0..20 {
        rto.observe(Duration::from_millis(5));
    }
    assert_eq!(rto.timeout(), Duration::from_millis(100), "fast: the floor");
    for _ in 0..20 {
        rto.observe(Duration::from_millis(700));
    }
    assert_eq!(
        rto.timeout(),
        Duration::from_millis(500),
        "slow: the ceiling"
    );
    let mut steady = Rto::new(Duration::from_secs(60));
    for _ in 0..50 {
        steady.observe(Duration::from_millis(4000));
    }
    let t = steady.timeout();
    assert!(
        t > Duration::from_millis(4000) && t < Duration::from_millis(4500),
        "{t:?}"
    );
}
