//! Unit tests of `mapping::draft`.

use super::*;
use crate::mapping::{Mapper, Mapping, Message};

fn preview(mapping: &str, bodies: &[&str]) -> (usize, usize) {
    let m = Mapping::parse(mapping).unwrap_or_else(|e| panic!("{e}\n{mapping}"));
    let key = crate::keys::MaskKey::from_base64(&crate::keys::MaskKey::generate_base64().unwrap())
        .unwrap();
    let m = Mapper::new(m, &key);
    let (mut rows, mut rejected) = (0, 0);
    for body in bodies {
        let message = Message::new(body, "m", 1_700_000_000_000);
        match m.apply(&message) {
            Ok(r) => rows += r.len(),
            Err(_) => rejected += 1,
        }
    }
    (rows, rejected)
}

#[test]
fn a_draft_of_the_login_sample_masks_ip_and_device_id_and_maps_every_sample() {
    let sample: Vec<&str> = include_str!("../../../examples/login-queue-sample.jsonl")
        .lines()
        .collect();
    let text = draft("public.logins", sample.iter().copied()).unwrap();
    let m = Mapping::parse(&text).unwrap();
    let masked: Vec<&str> = m.masked().map(|c| c.name.as_str()).collect();
    assert_eq!(masked, ["masked_device_id", "masked_ip"], "{text}");
    assert!(text.contains("# Masked: the values are IP addresses."));
    assert!(text.contains("social security"));
    let user_id = m.columns.iter().find(|c| c.name == "user_id").unwrap();
    assert!(!user_id.required, "one sample lacks it");
    assert_eq!(user_id.column_type.to_string(), "uuid");
    // One sample is another kind of message (`foo`, `bar`): nothing is in every sample.
    assert!(m.columns.iter().all(|c| !c.required), "{text}");
    let logins: Vec<&str> = sample
        .iter()
        .copied()
        .filter(|b| b.contains("user_id"))
        .collect();
    let m = Mapping::parse(&draft("public.logins", logins.iter().copied()).unwrap()).unwrap();
    let required: Vec<&str> = m
        .columns
        .iter()
        .filter(|c| c.required)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        required,
        [
            "app_version",
            "masked_device_id",
            "device_type",
            "masked_ip",
            "user_id"
        ],
        "locale is null in some"
    );
    // As it stands, the draft takes every sample.
    assert_eq!(preview(&text, &sample), (100, 0));
}

#[test]
fn envelopes_are_recognised_and_personal_fields_proposed_for_masking() {
    let sample: Vec<&str> = include_str!("../../../examples/mappings/orders-sns.jsonl")
        .lines()
        .collect();
    let text = draft("public.orders", sample.iter().copied()).unwrap();
    assert!(text.contains("envelope = \"sns\""), "{text}");
    let m = Mapping::parse(&text).unwrap();
    let masked: Vec<&str> = m.masked().map(|c| c.name.as_str()).collect();
    assert_eq!(
        masked,
        ["masked_customer_email", "masked_customer_ip"],
        "{text}"
    );
    let ty = |n: &str| {
        m.columns
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("{n} in {text}"))
            .column_type
            .to_string()
    };
    assert_eq!(ty("order_placed_at"), "timestamptz");
    assert_eq!(ty("order_amount"), "jsonb", "numbers and strings mixed");
    assert_eq!(preview(&text, &sample).0, sample.len());
    let cards = [
        r#"{"card": "4111 1111 1111 1111", "phone": "+44 20 7946 0958", "note": "hello"}"#,
        r#"{"card": "5500-0000-0000-0004", "phone": "+1 (555) 010-9999", "note": "bye"}"#,
    ];
    let text = draft("t", cards).unwrap();
    let m = Mapping::parse(&text).unwrap();
    let masked: Vec<&str> = m.masked().map(|c| c.name.as_str()).collect();
    assert_eq!(masked, ["masked_card", "masked_phone"], "{text}");
    // Keys that are values stay inside one jsonb column; a personal name with values
    // that are not text is redacted.
    let keyed = [
        r#"{"visits": {"ada@example.com": 3, "10.0.0.1": 1}, "phone": 4420794609, "email": null}"#,
    ];
    let text = draft("t", keyed).unwrap();
    assert!(
        !text.contains("example") && !text.contains("10_0_0_1"),
        "{text}"
    );
    let m = Mapping::parse(&text).unwrap();
    let visits = m.columns.iter().find(|c| c.name == "visits").unwrap();
    assert_eq!(visits.column_type.to_string(), "jsonb");
    let phone = m.columns.iter().find(|c| c.name == "masked_phone").unwrap();
    assert_eq!(
        phone.mask,
        Some(crate::mapping::file::Mask::Redact),
        "{text}"
    );
    assert!(m.columns.iter().any(|c| c.name == "masked_email"), "{text}");
    assert_eq!(draft("t", ["{", "{}"]), Err(DraftError::NotJson(1)));
    assert_eq!(draft("t", Vec::<&str>::new()), Err(DraftError::Empty));
}

#[test]
fn one_personal_value_masks_a_field_and_what_stays_jsonb_is_noted_as_scanned() {
    let bodies = [
        r#"{"contact": "call me", "verified_email": true, "tags": ["a"], "people": [{"name": "x"}]}"#,
        r#"{"contact": "ann@example.com", "verified_email": false, "tags": ["bob@example.org"], "people": []}"#,
        r#"{"contact": "later", "verified_email": true, "tags": [], "people": []}"#,
    ];
    let text = draft("t", bodies).unwrap();
    let m = Mapping::parse(&text).unwrap();
    let column = |n: &str| {
        m.columns
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("{n} in {text}"))
    };
    assert!(
        text.contains("# Masked: 1 of 3 values are e-mail addresses."),
        "{text}"
    );
    assert!(column("masked_contact").mask.is_some());
    // True or false identifies no one, whatever the field is called.
    assert!(column("verified_email").mask.is_none(), "{text}");
    // An array of strings holding an address goes to jsonb, scanned.
    assert_eq!(column("tags").column_type.to_string(), "jsonb");
    assert!(
        text.contains("some of its elements look personal (an e-mail address)"),
        "{text}"
    );
    assert!(text.contains("(at /*/name)"), "{text}");
    assert!(text.contains("rest_personal = \"mask\""), "{text}");
    assert_eq!(preview(&text, &bodies), (3, 0));
}

#[test]
fn objects_keyed_by_names_that_change_from_sample_to_sample_stay_one_jsonb_column() {
    let bodies = [
        r#"{"scores": {"ada_lovelace": 3, "grace_hopper": 1}, "meta": {"a": 1, "b": 2, "c": 3, "d": 4}}"#,
        r#"{"scores": {"katherine_johnson": 2, "hedy_lamarr": 5}, "meta": {"a": 3, "b": 4, "c": 5, "d": 6}}"#,
        r#"{"scores": {"alan_turing": 7}, "meta": {"a": 5, "b": 1, "c": 1}}"#,
    ];
    let text = draft("t", bodies).unwrap();
    for name in ["ada_lovelace", "hopper", "johnson", "lamarr", "turing"] {
        assert!(!text.contains(name), "{name} in {text}");
    }
    let m = Mapping::parse(&text).unwrap();
    let column = |n: &str| m.columns.iter().find(|c| c.name == n);
    assert_eq!(
        column("scores")
            .map(|c| c.column_type.to_string())
            .as_deref(),
        Some("jsonb"),
        "{text}"
    );
    // A record's four fields recur: they stay columns.
    for field in ["meta_a", "meta_b", "meta_c", "meta_d"] {
        assert!(column(field).is_some(), "{field} in {text}");
    }
    // Two samples of two user-keyed entries each: at most half of the objects hold a key.
    let pairs = [
        r#"{"scores": {"ada_lovelace": 3, "grace_hopper": 1}}"#,
        r#"{"scores": {"katherine_johnson": 2, "hedy_lamarr": 5}}"#,
    ];
    let text = draft("t", pairs).unwrap();
    assert!(
        !text.contains("lovelace") && !text.contains("lamarr"),
        "{text}"
    );
}

#[test]
fn the_draft_sees_what_the_scan_sees() {
    let bodies = [
        r#"{"contact": "Ada <ada@example.org>", "peer": "203.0.113.9:443", "ni": "AB123456C", "pan": 4111111111111111, "n": 7}"#,
    ];
    let text = draft("t", bodies).unwrap();
    let m = Mapping::parse(&text).unwrap();
    let masked: Vec<&str> = m.masked().map(|c| c.name.as_str()).collect();
    assert_eq!(
        masked,
        ["masked_contact", "masked_ni", "masked_pan", "masked_peer"],
        "{text}"
    );
    assert!(text.contains("National Insurance numbers"), "{text}");
    // A card sent as a number is not text: redacted, not tokenised.
    let pan = m.columns.iter().find(|c| c.name == "masked_pan").unwrap();
    assert_eq!(pan.mask, Some(crate::mapping::file::Mask::Redact));
    assert!(m.columns.iter().any(|c| c.name == "n" && c.mask.is_none()));
}
