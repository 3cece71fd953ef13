//! The outcomes the login pipeline gave, before the mapping engine took its place, and the
//! login kind held to them byte for byte: the same rows (their binary COPY form, tokens
//! included) under every pair of mask modes, and the same reason codes and details, for every
//! bad body of the login tests and the adversarial corpus and for bodies generated and edited
//! from a fixed seed. `golden.txt` was written by the login pipeline's own transform (parse,
//! validate, mask, encode) at the commit that switched; a unit test had held the engine to that
//! transform over the same bodies and thousands of random ones first.

use proptest::prelude::*;

use super::{LoginKind, MaskModes};
use crate::keys::MaskKey;
use crate::kind::{CopyRows, Message, MessageKind, Rejection};
use crate::mask::MaskMode;

const SENT_MS: i64 = 1_700_000_000_000;
/// A valid login, its fields in the producer's order.
pub(super) const GOOD: &str = r#"{"user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae", "app_version": "2.3.0", "device_type": "android", "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928"}"#;

/// The pairs of modes (address, device id) the login pipeline can run under.
const MODES: [(MaskMode, MaskMode); 4] = [
    (MaskMode::Hmac, MaskMode::Hmac),
    (MaskMode::Siv, MaskMode::Siv),
    (MaskMode::Ipcrypt, MaskMode::Hmac),
    (MaskMode::IpcryptPfx, MaskMode::Siv),
];

/// The login kind under one pair of modes.
fn kind(ip: MaskMode, device_id: MaskMode) -> LoginKind {
    let key = MaskKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    LoginKind::new(&key, MaskModes { ip, device_id })
}

fn outcome(kind: &dyn MessageKind, body: &str, sent_ms: i64) -> Result<CopyRows, Rejection> {
    kind.transform(&Message::new(body, "m-1", sent_ms)).outcome
}

/// The good body with `field`'s value replaced.
pub(super) fn with(field: &str, value: serde_json::Value) -> String {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    v[field] = value;
    v.to_string()
}

/// The good body with `field`'s value replaced by raw JSON text (which may be invalid).
pub(super) fn with_raw(field: &str, raw: &str) -> String {
    with(field, "@@".into()).replace("\"@@\"", raw)
}

/// The good body without `field`.
pub(super) fn without(field: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
    v.as_object_mut().unwrap().remove(field);
    v.to_string()
}

/// The six fields of a login body, in the order they are checked and reported.
pub(super) const FIELDS: [&str; 6] = [
    "user_id",
    "app_version",
    "device_type",
    "ip",
    "locale",
    "device_id",
];

/// Every bad body of the login tests: the integration tests' adversarial corpus (but the size
/// limit, which the pipeline decides before any kind), the unit tests' cases, and more of
/// each class: where a fault is, in a body of one line or of many.
fn corpus() -> Vec<String> {
    use serde_json::json;
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(GOOD).unwrap())
            .unwrap();
    let mut bodies: Vec<String> = vec![
        GOOD.into(),
        pretty.clone(),
        "not json at all".into(),
        "not json".into(),
        "".into(),
        GOOD[..GOOD.len() / 2].into(),
        GOOD[..40].into(),
        pretty[..pretty.len() / 2].into(),
        format!("{GOOD} trailing"),
        format!("{pretty}\n]"),
        "[1, 2, 3]".into(),
        "[1,2]".into(),
        "\"just a string\"".into(),
        "null".into(),
        "true".into(),
        "42".into(),
        "-1e400".into(),
        "{}".into(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!("{{\"x\": {}", "[".repeat(10_000)),
        GOOD.replacen(
            '{',
            &format!("{{\"x\": {}1{}, ", "[".repeat(3000), "]".repeat(3000)),
            1,
        ),
        GOOD.replacen('{', r#"{"ip": "1.2.3.4", "#, 1),
        GOOD.replacen("\"user_id\":", "\"user_id\"", 1),
        GOOD.replacen("\"locale\": \"RU\"", "\"locale\" \"\\ud800\"", 1),
        GOOD.replacen("\"locale\": \"RU\"", "\"locale\" \"R\u{1}\"", 1),
        GOOD.replacen('{', r#"{"locale": null, "#, 1),
        pretty.replacen('{', "{\n  \"device_id\": \"d\",", 1),
        r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#.into(),
        GOOD.replacen("\"user_id\"", r#""us\u0065r_id""#, 1),
        GOOD.replacen("\"ip\"", r#""\ud800""#, 1),
        GOOD.replacen('{', r#"{"extra": "\ud800", "#, 1),
        GOOD.replacen(
            '{',
            r#"{"big": 1e400, "n": {"$serde_json::private::Number": 1}, "#,
            1,
        ),
        with("user_id", json!("é".repeat(128))),
        with("user_id", json!("é".repeat(129))),
        with("device_type", json!("x".repeat(33))),
        with("locale", json!("日".repeat(32))),
        with("locale", json!("日".repeat(33))),
        with("device_id", json!("d".repeat(256))),
        with("device_id", json!("d".repeat(257))),
        with("locale", json!("R\u{0}U")),
        with("user_id", json!("u\u{0}")),
        with("ip", json!("1.2.3.4\u{0}")),
        with("app_version", json!("1.\u{0}")),
        with("device_id", json!("d\u{0}")),
        with("ip", json!("300.1.1.1")),
        with("ip", json!("1.2.3")),
        with("ip", json!("fe80::1%eth0")),
        with("ip", json!("2001:db8::1")),
        with("ip", json!("::ffff:1.2.3.4")),
        with("ip", json!(format!("::ffff:{}", "1".repeat(40)))),
        with("ip", json!(format!("1.2.3.4{}", " ".repeat(41)))),
        with("app_version", json!("1.2.x")),
        with("app_version", json!("1..2")),
        with("app_version", json!("1.2.3.4")),
        with("app_version", json!("3000.0")),
        with("app_version", json!("1.1000")),
        with("app_version", json!("99999999999")),
        with("app_version", json!("")),
        // Several faults: the first field's form, then the first value's, then app_version,
        // then ip.
        with("ip", json!("x")).replace("\"2.3.0\"", "\"1.2.x\""),
        with("user_id", json!("é".repeat(129))).replace("\"android\"", "null"),
        with("device_id", json!(7)).replace("\"RU\"", "\"R\\u0000\""),
        without("device_id").replace("\"2.3.0\"", "7"),
    ];
    for escape in [
        r"\ud800",
        r"\udc00",
        r"\ud800\u0041",
        r"x\ud83d",
        r"\ud83d\ude00",
    ] {
        for field in ["locale", "device_id", "user_id"] {
            bodies.push(with_raw(field, &format!("\"{escape}\"")));
        }
        // In a body of many lines; before a syntax error; twice.
        bodies.push(pretty.replacen("\"RU\"", &format!("\"{escape}\""), 1));
        bodies.push(format!(
            "{}, ]",
            with_raw("locale", &format!("\"{escape}\""))
        ));
        bodies.push(with_raw("locale", &format!("\"{escape}\"")).replacen(
            "\"android\"",
            &format!("\"a{escape}\""),
            1,
        ));
    }
    for field in FIELDS {
        bodies.push(without(field));
        bodies.push(with(field, json!(null)));
        for wrong in [
            json!(42),
            json!(1.5),
            json!(true),
            json!([]),
            json!({}),
            json!({"a": 1}),
        ] {
            bodies.push(with(field, wrong));
        }
        for number in ["7", "-2.5", "1e400", "123456789012345678901234567890"] {
            bodies.push(with_raw(field, number));
        }
        bodies.push(GOOD.replacen('{', &format!("{{\"{field}\": \"again\", "), 1));
    }
    bodies
}

/// A SentTimestamp at the last millisecond of 9999 is a row, one past it `invalid_sent_timestamp`.
#[test]
fn a_sent_time_beyond_9999_is_its_own_reason() {
    // Before a device id too long for siv: the login pipeline masked once all was checked.
    let long_id = with("device_id", "d".repeat(200).into());
    let rejection = outcome(&kind(MaskMode::Siv, MaskMode::Siv), &long_id, i64::MAX).unwrap_err();
    assert_eq!(rejection.reason, "invalid_sent_timestamp");
    let rejection = outcome(&kind(MaskMode::Siv, MaskMode::Siv), &long_id, SENT_MS).unwrap_err();
    assert_eq!(rejection.reason, "too_long:device_id");
    let kind = kind(MaskMode::Hmac, MaskMode::Hmac);
    assert!(outcome(&kind, GOOD, 253_402_300_799_999).is_ok());
    for sent in [253_402_300_800_000, i64::MAX] {
        let rejection = outcome(&kind, GOOD, sent).unwrap_err();
        assert_eq!(rejection.reason, "invalid_sent_timestamp");
        assert_eq!(
            rejection.detail.as_deref(),
            Some("outside the years 1 to 9999")
        );
    }
}

/// A value for one field: missing, null, another JSON type, or text around its limits and
/// faults (the login unit tests' generator, with more of each).
fn field_value(candidates: Vec<String>) -> impl Strategy<Value = Option<serde_json::Value>> {
    use serde_json::json;
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(json!(null))),
        1 => prop_oneof![
            Just(json!(7)), Just(json!(-1.5)), Just(json!(true)), Just(json!([1])), Just(json!({"a": 1}))
        ].prop_map(Some),
        6 => proptest::sample::select(candidates).prop_map(|s| Some(json!(s))),
        2 => "\\PC{0,40}".prop_map(|s| Some(json!(s))),
    ]
}

fn around(unit: &str, limit: usize) -> Vec<String> {
    vec![
        unit.repeat(limit - 1),
        unit.repeat(limit),
        unit.repeat(limit + 1),
    ]
}

fn strings(fixed: &[&str], more: Vec<String>) -> Vec<String> {
    fixed.iter().map(|s| s.to_string()).chain(more).collect()
}

fn body() -> impl Strategy<Value = String> {
    let fields = (
        field_value(strings(
            &["u-1", "\u{e9}\u{e9}", "a\0b"],
            around("\u{e9}", 128),
        )),
        field_value(strings(
            &[
                "2.3.0",
                "0.96",
                "3.7",
                "1.2.x",
                "3000.1",
                "",
                "1.\0",
                "99999999999",
            ],
            Vec::new(),
        )),
        field_value(strings(&["ios", "android", "i\0s"], around("\u{65e5}", 32))),
        field_value(strings(
            &[
                "1.2.3.4",
                "::ffff:1.2.3.4",
                "2001:db8::1",
                "300.1.1.1",
                "1.2.3.4\0",
                "localhost",
                "fe80::1%eth0",
            ],
            vec![
                format!("::ffff:{}", "1".repeat(40)),
                format!("1.2.3.4{}", " ".repeat(41)),
            ],
        )),
        field_value(strings(
            &["RU", "", "\u{65e5}\u{672c}", "R\0"],
            around("\u{65e5}", 32),
        )),
        field_value(strings(&["593-47-5928", "d\0", ""], around("d", 256))),
    );
    (
        fields,
        proptest::option::of("[a-z]{1,8}"),
        any::<bool>(),
        Just((0..6usize).collect::<Vec<_>>()).prop_shuffle(),
        proptest::collection::vec((0..6usize, any::<bool>()), 0..3),
    )
        .prop_map(|((a, b, c, d, e, f), extra, pretty, order, again)| {
            let values = [a, b, c, d, e, f];
            let mut members = Vec::new();
            if let Some(name) = extra.filter(|n| !FIELDS.contains(&n.as_str())) {
                members.push(format!("\"{name}\": {{\"nested\": [1, 2]}}"));
            }
            // In any order (written by hand: a `serde_json::Map` sorts its keys): the
            // faults' precedence is the fields', not the text's.
            for i in order {
                if let Some(v) = &values[i] {
                    members.push(format!("\"{}\": {v}", FIELDS[i]));
                }
            }
            let mut text = match pretty {
                true if !members.is_empty() => format!("{{\n  {}\n}}", members.join(",\n  ")),
                _ => format!("{{{}}}", members.join(", ")),
            };
            // Fields given twice: before the others, or after them.
            for (i, before) in again {
                let field = format!("\"{}\": \"again\"", FIELDS[i]);
                let end = text.rfind('}').unwrap_or(0);
                let empty = text[..end].trim_end().ends_with('{');
                text = match (before, empty) {
                    (_, true) => text.replacen('{', &format!("{{{field}"), 1),
                    (true, false) => text.replacen('{', &format!("{{{field}, "), 1),
                    (false, false) => format!("{}, {field}{}", &text[..end], &text[end..]),
                };
            }
            text
        })
}

/// JSON text broken or bent: a character put in, replaced or taken out, escapes included.
fn edited() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(String::new()),
        proptest::sample::select(vec![
            "{", "}", "[", "]", ",", ":", "\"", "\\", r"\u0000", r"\ud800", r"\udc00", r"\n", "\n",
            " ", "0", "-", "1e5", "null", "true", "\u{1}",
        ])
        .prop_map(str::to_owned),
    ];
    (0..GOOD.len(), 0..3usize, piece).prop_map(|(at, remove, piece)| {
        let at = (0..=at)
            .rev()
            .find(|i| GOOD.is_char_boundary(*i))
            .unwrap_or(0);
        let end = (at + remove).min(GOOD.len());
        let end = (end..=GOOD.len())
            .find(|i| GOOD.is_char_boundary(*i))
            .unwrap();
        format!("{}{piece}{}", &GOOD[..at], &GOOD[end..])
    })
}

/// The file of golden outcomes: what the login pipeline gave each of [`golden_bodies`], under
/// its pair of modes, when its own transform still ran (before the engine took its place).
/// Whatever runs the login messages must give the same, byte for byte.
const GOLDEN: &str = include_str!("golden.txt");

/// The bodies the golden outcomes are of, each with its pair of modes (an index into
/// [`MODES`]): the corpus under every pair, then bodies generated and edited from a fixed seed.
fn golden_bodies() -> Vec<(usize, String)> {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut bodies: Vec<(usize, String)> = corpus()
        .into_iter()
        .flat_map(|b| (0..MODES.len()).map(move |m| (m, b.clone())))
        .collect();
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[29; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let generated = body();
    for i in 0..600 {
        let body = generated.new_tree(&mut runner).unwrap().current();
        bodies.push((i % MODES.len(), body));
    }
    let edits = edited();
    for i in 0..300 {
        bodies.push((
            i % MODES.len(),
            edits.new_tree(&mut runner).unwrap().current(),
        ));
    }
    bodies
}

/// One outcome as the golden file writes it: a row by its bytes' SHA-256 (the bytes are the
/// rows' whole binary COPY form, tokens included), a rejection by its code and detail.
fn golden_line(modes: usize, outcome: &Result<CopyRows, Rejection>) -> String {
    use sha2::{Digest, Sha256};
    let what = match outcome {
        Ok(rows) => {
            let digest = Sha256::digest(rows.encoded());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("{} row(s) {hex}", rows.rows())
        }
        Err(r) => format!("{} | {}", r.reason, r.detail.as_deref().unwrap_or("-")),
    };
    format!("{modes} {what}")
}

/// The login kind gives the golden outcomes. `SQS2PG_BLESS_GOLDEN=1` writes the file afresh
/// from what it gives now instead: only for a change of outcome made on purpose, and said so.
#[test]
fn the_login_kind_gives_the_golden_outcomes() {
    let kinds: Vec<LoginKind> = MODES.iter().map(|(ip, d)| kind(*ip, *d)).collect();
    let got: Vec<String> = golden_bodies()
        .iter()
        .map(|(modes, body)| golden_line(*modes, &outcome(&kinds[*modes], body, SENT_MS)))
        .collect();
    if std::env::var_os("SQS2PG_BLESS_GOLDEN").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/login/golden.txt");
        std::fs::write(path, got.join("\n") + "\n").unwrap();
        return;
    }
    let want: Vec<&str> = GOLDEN.lines().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "the bodies changed: bless on purpose only"
    );
    let rows = want.iter().filter(|l| l.contains(" row(s) ")).count();
    assert!(rows >= 150 && want.len() - rows >= 1000, "{rows} rows");
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "body {i}");
    }
}
