//! The domain: a login message from body text to a row that is safe to store. Pure functions
//! and types, no I/O.
//!
//! Each stage has its own type, and each type can only be made from the one before it:
//!
//! ```text
//! &str body --LoginEvent::parse--> LoginEvent --validate--> ValidLogin --mask--> MaskedLogin
//! ```
//!
//! Only [`MaskedLogin`] reaches the loader, and its personal columns are [`MaskedToken`]s, which
//! only the [`Masker`] can make: unmasked data cannot reach PostgreSQL by construction.

pub mod kind;
pub mod mask;
pub mod reject;
pub mod validate;
pub mod wire;

#[cfg(test)]
mod parity;

use time::Date;

use crate::mask::MaskedToken;

pub use kind::LoginKind;
pub use mask::{MaskModes, Masker, Unmasker};
pub use reject::{Field, Reason, Rejection};
pub use validate::{validate, ValidLogin};
pub use wire::LoginEvent;

/// A login ready for the table: personal fields replaced by tokens.
#[derive(Debug, Clone)]
pub struct MaskedLogin {
    pub user_id: String,
    pub device_type: String,
    pub masked_ip: MaskedToken,
    pub masked_device_id: MaskedToken,
    pub locale: Option<String>,
    pub app_version: i32,
    pub create_date: Date,
}

impl ValidLogin {
    /// Replaces `ip` and `device_id` by their tokens; the raw values are dropped here. Fails
    /// only for a device id too long for `siv` mode.
    pub fn mask(self, masker: &Masker) -> Result<MaskedLogin, Rejection> {
        let masked_device_id = masker
            .mask_device_id(&self.device_id.0)
            .map_err(|e| Rejection::with_detail(Reason::TooLong(Field::DeviceId), e.to_string()))?;
        Ok(MaskedLogin {
            masked_ip: masker.mask_ip(self.ip.0),
            masked_device_id,
            user_id: self.user_id,
            device_type: self.device_type,
            locale: self.locale,
            app_version: self.app_version.encode(),
            create_date: self.create_date,
        })
    }
}

/// What a body turned into: a row, or a rejection; plus the count of unknown fields seen.
#[derive(Debug)]
pub struct Transformed {
    pub outcome: Result<MaskedLogin, Rejection>,
    pub unknown_fields: u32,
}

/// The whole pure transform: size check, parse, validate, mask.
pub fn transform(
    masker: &Masker,
    max_body_bytes: usize,
    body: &str,
    sent_timestamp: i64,
) -> Transformed {
    if body.len() > max_body_bytes {
        return Transformed {
            outcome: Err(Rejection::with_detail(
                Reason::BodyTooLarge,
                format!("{} bytes, limit {max_body_bytes}", body.len()),
            )),
            unknown_fields: 0,
        };
    }
    match LoginEvent::parse(body) {
        Err(rejection) => Transformed {
            outcome: Err(rejection),
            unknown_fields: 0,
        },
        Ok(event) => {
            let unknown_fields = event.unknown_fields;
            Transformed {
                outcome: validate(event, sent_timestamp).and_then(|v| v.mask(masker)),
                unknown_fields,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app_version::AppVersion;
    use crate::keys::MaskKey;
    use proptest::prelude::*;

    const SENT_MS: i64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z
    const GOOD: &str = r#"{"user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae", "app_version": "2.3.0", "device_type": "android", "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928"}"#;

    fn masker() -> Masker {
        Masker::new(&MaskKey::from_base64(&"A".repeat(44)).unwrap())
    }

    fn reason(body: &str) -> String {
        match transform(&masker(), 1 << 20, body, SENT_MS).outcome {
            Ok(_) => "ok".into(),
            Err(r) => r.reason.to_string(),
        }
    }

    fn with(field: &str, json_value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v[field] = serde_json::from_str(json_value).unwrap();
        v.to_string()
    }

    /// The good body with `field`'s value replaced by raw JSON text (which may be invalid).
    fn with_raw(field: &str, raw: &str) -> String {
        let marker = "\"@@@\"";
        with(field, marker).replace(marker, raw)
    }

    fn without(field: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    }

    #[test]
    fn good_login_becomes_a_masked_row() {
        let t = transform(&masker(), 1 << 16, GOOD, SENT_MS);
        let row = t.outcome.unwrap();
        assert_eq!(row.user_id, "424cdd21-063a-43a7-b91b-7ca1a833afae");
        assert_eq!(row.device_type, "android");
        assert_eq!(row.locale.as_deref(), Some("RU"));
        assert_eq!(row.app_version, 2_003_000);
        assert_eq!(row.create_date, time::macros::date!(2023 - 11 - 14));
        assert_eq!(
            row.masked_ip,
            masker().mask_ip("199.172.111.135".parse().unwrap())
        );
        assert_eq!(
            row.masked_device_id,
            masker().mask_device_id("593-47-5928").unwrap()
        );
        assert_eq!(t.unknown_fields, 0);
    }

    #[test]
    fn null_locale_is_valid_and_unknown_fields_are_counted() {
        let body =
            with("locale", "null").replacen('{', r#"{"extra": [1, {"a": 2}], "more": 1, "#, 1);
        let t = transform(&masker(), 1 << 16, &body, SENT_MS);
        assert_eq!(t.outcome.unwrap().locale, None);
        assert_eq!(t.unknown_fields, 2);
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
        for field in Field::ALL {
            let name = field.name();
            assert_eq!(reason(&without(name)), format!("missing_field:{name}"));
            if field != Field::Locale {
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
        let detail = |body: &str| match transform(&masker(), 1 << 20, body, SENT_MS).outcome {
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
        let t = transform(&masker(), 10, GOOD, SENT_MS);
        assert_eq!(t.outcome.unwrap_err().reason, Reason::BodyTooLarge);
    }

    #[test]
    fn sent_timestamp_in_ms_or_seconds_and_missing() {
        let day = |ts| {
            transform(&masker(), 1 << 16, GOOD, ts)
                .outcome
                .unwrap()
                .create_date
        };
        assert_eq!(day(1_700_000_000), day(SENT_MS));
        assert_eq!(day(1_699_999_199_999), time::macros::date!(2023 - 11 - 14));
        assert_eq!(
            day(1_699_920_000_000 - 1),
            time::macros::date!(2023 - 11 - 13)
        );
        let t = transform(&masker(), 1 << 16, GOOD, i64::MAX);
        assert_eq!(t.outcome.unwrap_err().reason, Reason::InvalidSentTimestamp);
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
            let r = transform(&masker(), 1 << 16, &body, SENT_MS)
                .outcome
                .unwrap_err();
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
    fn oracle(fields: &[(Field, Gen)]) -> String {
        let limit = |f: Field| match f {
            Field::UserId => 128,
            Field::DeviceType | Field::Locale => 32,
            Field::Ip => 45,
            Field::DeviceId => 256,
            Field::AppVersion => usize::MAX,
        };
        for (f, g) in fields {
            let name = f.name();
            match g {
                Gen::Missing => return format!("missing_field:{name}"),
                Gen::Json(serde_json::Value::Null) if *f == Field::Locale => {}
                Gen::Json(serde_json::Value::Null) => return format!("null_field:{name}"),
                Gen::Json(serde_json::Value::String(_)) => {}
                Gen::Json(_) => return format!("wrong_type:{name}"),
            }
        }
        let text = |f: Field| match &fields[f as usize].1 {
            Gen::Json(serde_json::Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        for (f, _) in fields {
            if let Some(s) = text(*f) {
                if s.contains('\0') {
                    return format!("nul_character:{}", f.name());
                }
                if s.chars().count() > limit(*f) {
                    return format!("too_long:{}", f.name());
                }
            }
        }
        match AppVersion::parse(&text(Field::AppVersion).unwrap()) {
            Err(crate::app_version::AppVersionError::Invalid) => {
                return "invalid_app_version".into()
            }
            Err(crate::app_version::AppVersionError::OutOfRange) => {
                return "app_version_out_of_range".into()
            }
            Ok(_) => {}
        }
        if text(Field::Ip)
            .unwrap()
            .parse::<std::net::IpAddr>()
            .is_err()
        {
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

    fn body_strategy() -> impl Strategy<Value = Vec<(Field, Gen)>> {
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
            .prop_map(|(a, b, c, d, e, f)| Field::ALL.into_iter().zip([a, b, c, d, e, f]).collect())
    }

    proptest! {
        #[test]
        fn every_body_gets_exactly_the_expected_outcome(
            fields in body_strategy(),
            extra in proptest::option::of("[a-z]{1,8}"),
        ) {
            let mut map = serde_json::Map::new();
            if let Some(name) = &extra {
                if Field::from_name(name).is_none() {
                    map.insert(name.clone(), serde_json::json!({"nested": [1, 2]}));
                }
            }
            for (f, g) in &fields {
                if let Gen::Json(v) = g {
                    map.insert(f.name().into(), v.clone());
                }
            }
            let body = serde_json::Value::Object(map).to_string();
            prop_assert_eq!(reason(&body), oracle(&fields), "{}", body);
        }

        #[test]
        fn arbitrary_text_is_a_row_or_one_reason_never_a_panic(body in "\\PC{0,64}") {
            let t = transform(&masker(), 1 << 20, &body, SENT_MS);
            if let Err(r) = t.outcome {
                prop_assert!(!r.reason.to_string().is_empty());
            }
        }
    }

    /// The mapping engine on `examples/mappings/login.toml` gives this pipeline's rows, tokens
    /// and reason codes, byte for byte, under each mode (the engine is to run login one day).
    #[test]
    fn the_login_mapping_gives_the_login_pipelines_rows_for_the_sample() {
        let file = include_str!("../../examples/mappings/login.toml");
        let sample = include_str!("../../examples/login-queue-sample.jsonl");
        use crate::kind::Message;
        use crate::mapping::{Mapper, Mapping, Value};
        use crate::mask::MaskMode;
        let key = MaskKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        for mode in [MaskMode::Hmac, MaskMode::Siv] {
            let text = file.replace("mask = \"hmac\"", &format!("mask = \"{mode}\""));
            let m = Mapper::new(Mapping::parse(&text).unwrap(), &key);
            let masker = Masker::with_modes(
                &key,
                MaskModes {
                    ip: mode,
                    device_id: mode,
                },
            );
            let (mut same, mut both_rejected) = (0, 0);
            for body in sample.lines() {
                let login = transform(&masker, 1 << 18, body, 1_700_000_000_000);
                let mapped = m.apply(&Message::new(body, "m-1", 1_700_000_000_000));
                match (login.outcome, mapped) {
                    (Ok(row), Ok(rows)) => {
                        let values: Vec<Option<String>> =
                            rows[0].values().iter().map(Value::to_text).collect();
                        let want = vec![
                            Some(row.user_id),
                            Some(row.device_type),
                            Some(row.masked_ip.as_str().to_owned()),
                            Some(row.masked_device_id.as_str().to_owned()),
                            row.locale,
                            Some(row.app_version.to_string()),
                            Some(row.create_date.to_string()),
                        ];
                        assert_eq!(values, want, "{mode}");
                        same += 1;
                    }
                    (Err(login), Err(mapped)) => {
                        // The sample's one bad message lacks user_id: the same code either way.
                        assert_eq!(login.reason.to_string(), mapped.reason);
                        both_rejected += 1;
                    }
                    (login, mapped) => panic!(
                        "login {:?}, mapping {:?}",
                        login.map(|_| ()).map_err(|r| r.reason.to_string()),
                        mapped.map(|_| ()).map_err(|r| r.reason)
                    ),
                }
            }
            assert_eq!((same, both_rejected), (99, 1), "{mode}");
        }
    }
}
