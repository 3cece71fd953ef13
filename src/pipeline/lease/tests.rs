//! Unit tests of `pipeline::lease`.

use std::sync::Arc;
use std::time::SystemTime;

use super::*;

fn received(id: u32, handle: &str) -> Received {
    Received {
        ack: AckHandle {
            message_id: format!("m{id}"),
            receipt_handle: handle.to_owned(),
        },
        ledger_id: format!("m{id}"),
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

fn ack(id: u32, handle: &str) -> AckHandle {
    received(id, handle).ack
}

async fn hold(leases: &Leases, messages: &[Received]) -> Vec<bool> {
    leases
        .admit(messages.len())
        .await
        .hold(messages, Instant::now())
}

#[tokio::test(start_paused = true)]
async fn leases_fall_due_after_half_the_timeout_and_lapse_after_all_of_it() {
    let visibility = Duration::from_secs(30);
    let leases = Leases::new(Some(visibility), 100);
    hold(&leases, &[received(1, "r1"), received(2, "r2")]).await;
    assert!(leases.due(Instant::now(), visibility).extend.is_empty());
    tokio::time::advance(Duration::from_secs(16)).await;
    let due = leases.due(Instant::now(), visibility);
    assert_eq!((due.extend.len(), due.lapsed, due.overdue), (2, 0, 0));
    leases.extended(&[ack(1, "r1")], Instant::now());
    tokio::time::advance(Duration::from_secs(7)).await;
    let due = leases.due(Instant::now(), visibility);
    assert_eq!(due.extend, vec![ack(2, "r2")]);
    assert_eq!(due.overdue, 1, "23 s of 30: past three quarters");
    tokio::time::advance(Duration::from_secs(8)).await;
    assert_eq!(leases.due(Instant::now(), visibility).lapsed, 1);
    leases.forget(&[ack(2, "r2")]);
    assert_eq!(leases.take_all(), vec![ack(1, "r1")]);
    assert!(leases.take_all().is_empty());
}

/// A lease starts when the server took its message, which is somewhere during the receive:
/// a slow answer (400 ms at a 2 s timeout) counts from when the receive was sent; a long poll
/// that waited 20 s for its message (at 30 s) counts from a quarter of the timeout before its
/// answer, not from its start (it would be due at once).
#[tokio::test(start_paused = true)]
async fn a_lease_starts_within_its_receive_and_no_earlier_than_a_quarter_timeout_back() {
    let visibility = Duration::from_secs(2);
    let leases = Leases::new(Some(visibility), 100);
    let asked = Instant::now();
    let admission = leases.admit(1).await;
    tokio::time::advance(Duration::from_millis(400)).await;
    admission.hold(&[received(1, "r1")], asked);
    tokio::time::advance(Duration::from_millis(600)).await;
    assert_eq!(
        leases.due(Instant::now(), visibility).extend.len(),
        1,
        "due half a timeout after the receive was sent, not after its answer"
    );

    let visibility = Duration::from_secs(30);
    let leases = Leases::new(Some(visibility), 100);
    let asked = Instant::now();
    let admission = leases.admit(1).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    admission.hold(&[received(1, "r1")], asked);
    assert!(leases.due(Instant::now(), visibility).extend.is_empty());
    tokio::time::advance(Duration::from_millis(7_500)).await;
    assert_eq!(leases.due(Instant::now(), visibility).extend.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_second_delivery_joins_its_lease_and_every_handle_is_deleted() {
    let leases = Leases::new(Some(Duration::from_secs(2)), 100);
    assert_eq!(hold(&leases, &[received(1, "r1")]).await, [true]);
    assert_eq!(
        hold(&leases, &[received(1, "r1-again"), received(2, "r2")]).await,
        [false, true]
    );
    // The newest handle is the one extended.
    tokio::time::advance(Duration::from_secs(1)).await;
    let due = leases.due(Instant::now(), Duration::from_secs(2));
    let mut extend: Vec<&str> = due
        .extend
        .iter()
        .map(|a| a.receipt_handle.as_str())
        .collect();
    extend.sort_unstable();
    assert_eq!(extend, ["r1-again", "r2"]);
    // After COMMIT both handles of m1 are deleted, the newest as the one that counts.
    let (latest, older) = leases.deleting(vec![ack(1, "r1")]);
    assert_eq!(latest, [ack(1, "r1-again")]);
    assert_eq!(older, [ack(1, "r1")]);
    // Being deleted, it is no longer extended.
    let due = leases.due(Instant::now(), Duration::from_secs(2));
    assert_eq!(due.extend, [ack(2, "r2")]);
}

#[tokio::test(start_paused = true)]
async fn receiving_waits_for_room_in_the_window_and_for_the_heartbeat() {
    let leases = Arc::new(Leases::new(Some(Duration::from_secs(30)), 20));
    assert_eq!(leases.limit(), 20);
    let first = leases.admit(10).await;
    let second = leases.admit(10).await;
    let third = tokio::spawn({
        let leases = leases.clone();
        async move {
            let admission = leases.admit(10).await;
            drop(admission);
        }
    });
    tokio::task::yield_now().await;
    assert!(!third.is_finished(), "the window is full");
    drop(second);
    first.hold(&[received(1, "r1")], Instant::now());
    // 1 held + 10 reserved by the third: room, once it was given back.
    tokio::time::timeout(Duration::from_secs(1), third)
        .await
        .expect("room came back")
        .unwrap();
    leases.set_behind(true);
    let blocked = tokio::time::timeout(Duration::from_secs(1), leases.admit(1)).await;
    assert!(blocked.is_err(), "no receive while the heartbeat is behind");
    leases.set_behind(false);
    drop(leases.admit(1).await);
    // A lapse cuts the window (to 70% of 20: 14); the lease it was is lost when an
    // extension is refused.
    leases.congested(Congestion::Lapsed);
    assert_eq!(leases.limit(), 14);
    assert_eq!(leases.refused(&[ack(1, "r1")]), 1);
    assert!(leases
        .due(
            Instant::now() + Duration::from_secs(20),
            Duration::from_secs(30)
        )
        .extend
        .is_empty());
}

#[test]
fn a_message_refused_as_stale_again_and_again_is_failed_from_the_limit_on() {
    let leases = Leases::new(None, 100);
    let verdicts: Vec<bool> = (0..STALE_LIMIT + 1)
        .map(|_| leases.stale_again("m1"))
        .collect();
    let mut want = vec![false; STALE_LIMIT as usize - 1];
    want.extend([true, true]);
    assert_eq!(
        verdicts, want,
        "superseded below the limit, failed from it on"
    );
    assert!(!leases.stale_again("m2"), "counted per message");
}
