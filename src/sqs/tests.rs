//! Unit tests of `sqs`.

use super::*;

fn wire(id: &str, body: &str, md5: Option<&str>) -> WireMessage {
    WireMessage {
        message_id: Some(id.into()),
        receipt_handle: Some(format!("rh-{id}")),
        body: body.into(),
        md5_of_body: md5.map(str::to_owned),
        sent_timestamp: Some("1700000000000".into()),
        receive_count: Some("2".into()),
        ..WireMessage::default()
    }
}

#[test]
fn bodies_must_match_their_md5_and_repeats_in_one_answer_are_dropped() {
    // md5("hello") = 5d41402abc4b2a76b9719d911017c592
    // The mismatch is flagged here and counted by the receiver (`Meter::record_md5_mismatches`).
    let got = accept(vec![
        wire("a", "hello", Some("5d41402abc4b2a76b9719d911017c592")),
        wire("b", "hello", Some("5D41402ABC4B2A76B9719D911017C592")),
        wire("c", "hellO", Some("5d41402abc4b2a76b9719d911017c592")),
        wire("a", "hello", Some("5d41402abc4b2a76b9719d911017c592")),
        wire("d", "no md5 sent", None),
    ])
    .unwrap();
    let ids: Vec<&str> = got.iter().map(|m| m.ack.message_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d"], "one delivery per id");
    let flagged: Vec<bool> = got.iter().map(|m| m.md5_mismatch).collect();
    assert_eq!(flagged, [false, false, true, false]);
    assert_eq!(got[0].receive_count, 2);
    assert_eq!(got[0].sent_timestamp, 1_700_000_000_000);
    assert_eq!(got[0].ledger_id, "a");
}

#[test]
fn a_replay_keeps_its_ledger_id_and_original_send_time() {
    let mut m = wire("new-id", "x", None);
    m.replay_ledger_id = Some("old-id#1".into());
    m.replay_sent_timestamp = Some("1600000000000".into());
    let got = accept(vec![m]).unwrap();
    assert_eq!(got[0].ledger_id, "old-id#1");
    assert_eq!(got[0].sent_timestamp, 1_600_000_000_000);
    assert_eq!(got[0].ack.message_id, "new-id");
}

#[test]
fn a_message_without_sent_timestamp_stops_the_run() {
    let mut m = wire("a", "x", None);
    m.sent_timestamp = None;
    let err = accept(vec![m]).unwrap_err();
    assert_eq!(err.kind, SourceErrorKind::Permanent);
    assert!(err.message.contains("SentTimestamp"), "{err}");
}

#[test]
fn errors_are_classified_by_status_and_code() {
    let e = |status, code: Option<&str>| {
        SourceError::answered("X", status, code.map(str::to_owned), String::new())
    };
    assert_eq!(
        e(500, Some("InternalError")).kind,
        SourceErrorKind::Transient
    );
    assert_eq!(
        e(400, Some("RequestThrottled")).kind,
        SourceErrorKind::Transient
    );
    assert_eq!(e(429, None).kind, SourceErrorKind::Transient);
    assert_eq!(
        e(403, Some("SignatureDoesNotMatch")).kind,
        SourceErrorKind::Permanent
    );
}
