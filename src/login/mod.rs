//! The login messages: the analysts' table `public.user_logins` and what fills it. The
//! mapping engine runs them (`kind.rs`: [`LoginKind`], the built-in mapping
//! `examples/mappings/login.toml` under the run's mask modes); this module keeps what is the
//! login's own: the two token columns' masks and their key commands (`mask.rs`: [`Masker`],
//! [`Unmasker`]), and (in tests) the outcomes the login pipeline gave before the engine took
//! its place (`golden.rs`), which the engine gives byte for byte.
//!
//! Unmasked data cannot reach PostgreSQL: only the engine's `MappedRow`s are encoded, and their
//! token columns are `MaskedToken`s, which only a mask can make.

pub mod kind;
pub mod mask;

#[cfg(test)]
mod golden;

pub use kind::LoginKind;
pub use mask::{MaskModes, Masker, Unmasker};

#[cfg(test)]
mod tests {
    use super::golden::{with_raw, without, FIELDS, GOOD};
    use super::*;
    use crate::app_version::AppVersion;
    use crate::keys::MaskKey;
    use crate::kind::{Message, MessageKind};
    use crate::mapping::Value;
    use proptest::prelude::*;

    const SENT_MS: i64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z

    fn key() -> MaskKey {
        MaskKey::from_base64(&"A".repeat(44)).unwrap()
    }

    fn masker() -> Masker {
        Masker::new(&key())
    }

    fn login() -> LoginKind {
        LoginKind::new(&key(), MaskModes::default())
    }

    /// A body's outcome as the run sees it, sent at `sent_ms`.
    fn transform(body: &str, sent_ms: i64) -> crate::kind::Transformed {
        login().transform(&Message::new(body, "m-1", sent_ms))
    }

    /// A body's row as text, column by column ([`kind::COLUMNS`]), or its rejection.
    fn row(body: &str, sent_ms: i64) -> Result<Vec<Option<String>>, crate::kind::Rejection> {
        let rows = login()
            .mapper()
            .apply(&Message::new(body, "m-1", sent_ms))?;
        assert_eq!(rows.len(), 1);
        Ok(rows[0].values().iter().map(Value::to_text).collect())
    }

    fn reason(body: &str) -> String {
        match transform(body, SENT_MS).outcome {
            Ok(_) => "ok".into(),
            Err(r) => r.reason,
        }
    }

    /// The good body with `field`'s value replaced by a JSON value's text.
    fn with(field: &str, json_value: &str) -> String {
        super::golden::with(field, serde_json::from_str(json_value).unwrap())
    }

    /// The row the analysts get: each column, the tokens the login's own masks make (the
    /// ones `unmask` and `rekey` open and move).
    #[test]
    fn good_login_becomes_a_masked_row() {
        let ip = masker().mask_ip("199.172.111.135".parse().unwrap());
        let device = masker().mask_device_id("593-47-5928").unwrap();
        let want = [
            "424cdd21-063a-43a7-b91b-7ca1a833afae",
            "android",
            ip.as_str(),
            device.as_str(),
            "RU",
            "2003000",
            "2023-11-14",
        ];
        let want: Vec<Option<String>> = want.iter().map(|v| Some((*v).to_owned())).collect();
        assert_eq!(row(GOOD, SENT_MS).unwrap(), want);
        let t = transform(GOOD, SENT_MS);
        assert_eq!(t.outcome.unwrap().rows(), 1);
        assert_eq!(t.unknown_fields, 0);
    }

    #[test]
    fn null_locale_is_valid_and_unknown_fields_are_counted() {
        let body =
            with("locale", "null").replacen('{', r#"{"extra": [1, {"a": 2}], "more": 1, "#, 1);
        assert_eq!(row(&body, SENT_MS).unwrap()[4], None);
        assert_eq!(transform(&body, SENT_MS).unknown_fields, 2);
        // Counted, never named: a login's extra keys could be data.
        assert!(transform(&body, SENT_MS).new_unknown.is_empty());
    }

    #[test]
    fn the_sample_wrong_message_type_is_missing_user_id() {
        assert_eq!(
            reason(r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#),
            "missing_field:user_id"
        );
    }

    #[test]
    fn every_field_missing_null_or_mistyped_is_named() {
        for name in FIELDS {
            assert_eq!(reason(&without(name)), format!("missing_field:{name}"));
            if name != "locale" {
                assert_eq!(reason(&with(name, "null")), format!("null_field:{name}"));
            }
            for wrong in ["1", "1.5", "true", "[]", "{}"] {
                assert_eq!(
                    reason(&with(name, wrong)),
                    format!("wrong_type:{name}"),
                    "{wrong}"
                );
            }
        }
    }

    /// serde_json hands numbers over as a map of one when `arbitrary_precision` is on (the
    /// mapping keeps digits with it): they must still be numbers here, and a number no f64
    /// holds is not a reason to refuse a body.
    #[test]
    fn numbers_are_numbers() {
        let detail = |body: &str| match transform(body, SENT_MS).outcome {
            Ok(_) => "ok".to_owned(),
            Err(r) => format!("{} {}", r.reason, r.detail.unwrap_or_default()),
        };
        assert_eq!(detail("42"), "not_an_object top-level value is number");
        assert_eq!(detail("-1e400"), "not_an_object top-level value is number");
        assert_eq!(
            detail("{}").split(' ').next(),
            Some("missing_field:user_id")
        );
        for number in ["7", "-2.5", "1e400", "123456789012345678901234567890"] {
            let got = detail(&with_raw("user_id", number));
            assert!(
                got.starts_with("wrong_type:user_id") && got.contains("number"),
                "{number}: {got}"
            );
        }
        assert!(detail(&with_raw("user_id", "{}")).contains("object"));
        assert!(detail(&with_raw("user_id", r#"{"a": 1}"#)).contains("object"));
        let extra = GOOD.replacen(
            '{',
            r#"{"big": 1e400, "n": {"$serde_json::private::Number": 1}, "#,
            1,
        );
        assert_eq!(detail(&extra), "ok");
    }

    #[test]
    fn not_json_and_not_object() {
        assert_eq!(reason("not json"), "not_json");
        assert_eq!(reason(&GOOD[..40]), "not_json");
        assert_eq!(reason(&format!("{GOOD} trailing")), "not_json");
        assert_eq!(reason(""), "not_json");
        assert_eq!(reason("[1,2]"), "not_an_object");
        assert_eq!(reason("\"s\""), "not_an_object");
        assert_eq!(reason("null"), "not_an_object");
        // Deep nesting is skipped iteratively (serde_json's ignore path): no stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(reason(&deep), "not_an_object");
        let deep_inside = GOOD.replacen(
            '{',
            &format!("{{\"x\": {}1{}, ", "[".repeat(100_000), "]".repeat(100_000)),
            1,
        );
        assert_eq!(reason(&deep_inside), "ok");
        let unclosed = format!("{{\"x\": {}", "[".repeat(100_000));
        assert_eq!(reason(&unclosed), "not_json");
    }

    #[test]
    fn lone_surrogate_escapes_are_named() {
        for escape in [r"\ud800", r"\udc00", r"\ud800\u0041", r"x\ud83d"] {
            let body = with_raw("locale", &format!("\"{escape}\""));
            assert_eq!(reason(&body), "invalid_utf16_escape", "{escape}");
        }
        // A proper surrogate pair is fine.
        assert_eq!(reason(&with_raw("locale", r#""\ud83d\ude00""#)), "ok");
    }

    #[test]
    fn duplicate_fields_are_rejected() {
        let body = GOOD.replacen('{', r#"{"ip": "1.2.3.4", "#, 1);
        assert_eq!(reason(&body), "duplicate_field:ip");
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        assert_eq!(
            reason(&with("user_id", &format!("\"{}\"", "é".repeat(128)))),
            "ok"
        );
        assert_eq!(
            reason(&with("user_id", &format!("\"{}\"", "é".repeat(129)))),
            "too_long:user_id"
        );
        assert_eq!(
            reason(&with("device_type", &format!("\"{}\"", "x".repeat(33)))),
            "too_long:device_type"
        );
        assert_eq!(
            reason(&with("locale", &format!("\"{}\"", "日".repeat(32)))),
            "ok"
        );
        assert_eq!(
            reason(&with("locale", &format!("\"{}\"", "日".repeat(33)))),
            "too_long:locale"
        );
    }

    #[test]
    fn nul_ip_app_version_and_size() {
        assert_eq!(
            reason(&with("locale", r#""R\u0000U""#)),
            "nul_character:locale"
        );
        assert_eq!(reason(&with("ip", r#""300.1.1.1""#)), "invalid_ip");
        assert_eq!(reason(&with("ip", r#""2001:db8::1""#)), "ok");
        assert_eq!(
            reason(&with("app_version", r#""1.2.x""#)),
            "invalid_app_version"
        );
        assert_eq!(
            reason(&with("app_version", r#""3000.1""#)),
            "app_version_out_of_range"
        );
    }

    /// The UTC day of the SentTimestamp (in milliseconds: the receive makes LocalStack 0.14's
    /// seconds milliseconds), and a time beyond the year 9999 its own reason.
    #[test]
    fn create_date_is_the_utc_day_it_was_sent() {
        let day = |ts| row(GOOD, ts).unwrap()[6].clone().unwrap();
        assert_eq!(day(1_699_999_199_999), "2023-11-14");
        assert_eq!(day(1_699_920_000_000 - 1), "2023-11-13");
        assert_eq!(day(1_699_920_000_000), "2023-11-14");
        let t = transform(GOOD, i64::MAX);
        assert_eq!(t.outcome.unwrap_err().reason, "invalid_sent_timestamp");
    }

    #[test]
    fn rejection_details_never_carry_values() {
        let secret = "199.172.111.135";
        for body in [
            format!("{{\"ip\": \"{secret}\""),
            format!("[\"{secret}\"]"),
            with("ip", &format!("[\"{secret}\"]")),
            secret.to_string(),
        ] {
            let r = transform(&body, SENT_MS).outcome.unwrap_err();
            assert!(!format!("{r:?}").contains(secret), "{r:?}");
        }
    }

    /// A field's value in a generated body.
    #[derive(Debug, Clone)]
    enum Gen {
        Missing,
        Json(serde_json::Value),
    }

    /// A field value: missing, null, another JSON type, or one of `candidates` (weighted up),
    /// plus `long`, values around the field's length limit.
    fn gen_value(
        candidates: &'static [&'static str],
        long: Vec<String>,
    ) -> impl Strategy<Value = Gen> {
        use serde_json::json;
        let mut candidates: Vec<String> = candidates.iter().map(|s| s.to_string()).collect();
        candidates.extend(long);
        prop_oneof![
            1 => Just(Gen::Missing),
            1 => Just(Gen::Json(json!(null))),
            1 => prop_oneof![Just(json!(7)), Just(json!(true)), Just(json!([1])), Just(json!({"a": 1}))]
                .prop_map(Gen::Json),
            6 => proptest::sample::select(candidates).prop_map(|s| Gen::Json(json!(s))),
        ]
    }

    /// What the validator must answer, written apart from its code: structure first (missing,
    /// null, type) field by field, then content (NUL, length), then app_version, then ip. The
    /// last two take `AppVersion::parse` (tested on its own above) and std's `IpAddr` parser
    /// as their references; this test is about which reason wins, and that every body gets one.
    fn oracle(fields: &[(&str, Gen)]) -> String {
        let limit = |f: &str| match f {
            "user_id" => 128,
            "device_type" | "locale" => 32,
            "ip" => 45,
            "device_id" => 256,
            _ => usize::MAX,
        };
        for (f, g) in fields {
            let name = *f;
            match g {
                Gen::Missing => return format!("missing_field:{name}"),
                Gen::Json(serde_json::Value::Null) if *f == "locale" => {}
                Gen::Json(serde_json::Value::Null) => return format!("null_field:{name}"),
                Gen::Json(serde_json::Value::String(_)) => {}
                Gen::Json(_) => return format!("wrong_type:{name}"),
            }
        }
        let text = |f: &str| match &fields.iter().find(|(name, _)| *name == f).unwrap().1 {
            Gen::Json(serde_json::Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        for (f, _) in fields {
            if let Some(s) = text(f) {
                if s.contains('\0') {
                    return format!("nul_character:{}", f);
                }
                if s.chars().count() > limit(f) {
                    return format!("too_long:{}", f);
                }
            }
        }
        match AppVersion::parse(&text("app_version").unwrap()) {
            Err(crate::app_version::AppVersionError::Invalid) => {
                return "invalid_app_version".into()
            }
            Err(crate::app_version::AppVersionError::OutOfRange) => {
                return "app_version_out_of_range".into()
            }
            Ok(_) => {}
        }
        if text("ip").unwrap().parse::<std::net::IpAddr>().is_err() {
            return "invalid_ip".into();
        }
        "ok".into()
    }

    /// Strings of `unit` repeated to one below, at and one above `limit` characters.
    fn around(unit: &str, limit: usize) -> Vec<String> {
        vec![
            unit.repeat(limit - 1),
            unit.repeat(limit),
            unit.repeat(limit + 1),
        ]
    }

    fn body_strategy() -> impl Strategy<Value = Vec<(&'static str, Gen)>> {
        (
            gen_value(
                &[
                    "u-1",
                    "424cdd21-063a-43a7-b91b-7ca1a833afae",
                    "\u{e9}\u{e9}",
                    "a\0b",
                ],
                around("\u{e9}", 128),
            ),
            gen_value(
                &["2.3.0", "0.96", "3.7", "1.2.x", "3000.1", "", "1.\0"],
                Vec::new(),
            ),
            gen_value(
                &[
                    "ios",
                    "android",
                    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                    "i\0s",
                ],
                around("\u{65e5}", 32),
            ),
            gen_value(
                &[
                    "1.2.3.4",
                    "::ffff:1.2.3.4",
                    "2001:db8::1",
                    "300.1.1.1",
                    "1.2.3.4\0",
                    "localhost",
                ],
                vec![
                    format!("::ffff:{}", "1".repeat(40)),
                    format!("1.2.3.4{}", " ".repeat(41)),
                ],
            ),
            gen_value(
                &[
                    "RU",
                    "",
                    "\u{65e5}\u{672c}",
                    "R\0",
                    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                ],
                around("\u{65e5}", 32),
            ),
            gen_value(&["593-47-5928", "d\0", ""], around("d", 256)),
        )
            .prop_map(|(a, b, c, d, e, f)| FIELDS.into_iter().zip([a, b, c, d, e, f]).collect())
    }

    proptest! {
        #[test]
        fn every_body_gets_exactly_the_expected_outcome(
            fields in body_strategy(),
            extra in proptest::option::of("[a-z]{1,8}"),
        ) {
            let mut map = serde_json::Map::new();
            if let Some(name) = &extra {
                if !FIELDS.contains(&name.as_str()) {
                    map.insert(name.clone(), serde_json::json!({"nested": [1, 2]}));
                }
            }
            for (f, g) in &fields {
                if let Gen::Json(v) = g {
                    map.insert((*f).into(), v.clone());
                }
            }
            let body = serde_json::Value::Object(map).to_string();
            prop_assert_eq!(reason(&body), oracle(&fields), "{}", body);
        }

        #[test]
        fn arbitrary_text_is_a_row_or_one_reason_never_a_panic(body in "\\PC{0,64}") {
            let t = transform(&body, SENT_MS);
            if let Err(r) = t.outcome {
                prop_assert!(!r.reason.is_empty());
            }
        }
    }

    /// The sample under each mode: 99 rows and one rejection, every token the login's own
    /// masks' (the ones `unmask` and `rekey` open and move).
    #[test]
    fn the_samples_tokens_are_the_login_masks_under_every_mode() {
        use crate::mask::MaskMode;
        let sample = include_str!("../../examples/login-queue-sample.jsonl");
        let key = MaskKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        for modes in [
            (MaskMode::Hmac, MaskMode::Hmac),
            (MaskMode::Siv, MaskMode::Siv),
            (MaskMode::Ipcrypt, MaskMode::Hmac),
            (MaskMode::IpcryptPfx, MaskMode::Siv),
        ] {
            let modes = MaskModes {
                ip: modes.0,
                device_id: modes.1,
            };
            let (login, masker) = (LoginKind::new(&key, modes), Masker::with_modes(&key, modes));
            let (mut rows, mut rejected) = (0, 0);
            for body in sample.lines() {
                let message = Message::new(body, "m-1", SENT_MS);
                let Ok(mapped) = login.mapper().apply(&message) else {
                    assert_eq!(
                        login.transform(&message).outcome.unwrap_err().reason,
                        "missing_field:user_id"
                    );
                    rejected += 1;
                    continue;
                };
                let values: Vec<Option<String>> =
                    mapped[0].values().iter().map(Value::to_text).collect();
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                let ip = masker.mask_ip(v["ip"].as_str().unwrap().parse().unwrap());
                let device = masker
                    .mask_device_id(v["device_id"].as_str().unwrap())
                    .unwrap();
                assert_eq!(values[2].as_deref(), Some(ip.as_str()), "{modes:?}");
                assert_eq!(values[3].as_deref(), Some(device.as_str()), "{modes:?}");
                assert_eq!(values[0].as_deref(), v["user_id"].as_str());
                rows += 1;
            }
            assert_eq!((rows, rejected), (99, 1), "{modes:?}");
        }
    }
}
