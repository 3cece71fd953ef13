//! The scan of a value bound for an unmasked jsonb column: what in it looks personal
//! ([`crate::mapping::personal`]), found without copying anything, and a masked copy made only
//! when something is found. A value is personal by its content (an address, a phone, card,
//! IBAN or id number; a card sent as a number too), by a key on its way down whose name says
//! so (everything under `address` or `contact_email`), or by the column's own field when that
//! or a field above it is named as personal data (`from = "/customer/name"`: all of it); a key
//! is personal by its content alone (an object keyed by e-mail addresses).

use std::borrow::Cow;

use serde_json::{Map, Value as Json};

use crate::mapping::file::RestMask;
use crate::mapping::personal;
pub(super) use crate::mapping::personal::{first_in as first, safe_name};
use crate::mask::ColumnMask;

/// `value` with everything personal in it replaced: values by their `hmac` token under
/// `mask` (or `null` under [`RestMask::Redact`]), keys by their `hmac` token. Borrowed when
/// nothing is personal.
pub(super) fn masked<'v>(
    value: &'v Json,
    named_personal: bool,
    mask: &ColumnMask,
    how: RestMask,
) -> Cow<'v, Json> {
    if first(value, named_personal, false, false).is_none() {
        return Cow::Borrowed(value);
    }
    Cow::Owned(copy(value, named_personal, mask, how))
}

fn token(text: &str, mask: &ColumnMask) -> String {
    mask.mask_bytes(text.as_bytes())
        .map(|t| t.as_str().to_owned())
        // Only reversible modes have a length limit; the scan's mask is hmac. Should that
        // ever change, nothing of the value is kept.
        .unwrap_or_default()
}

fn copy(value: &Json, under_personal: bool, mask: &ColumnMask, how: RestMask) -> Json {
    let replace = |text: &str| match how {
        RestMask::Hmac => Json::String(token(text, mask)),
        RestMask::Redact => Json::Null,
    };
    match value {
        Json::String(s) if under_personal || personal::content(s).is_some() => replace(s),
        Json::Number(n) if under_personal || personal::number_is_card(n) => replace(&n.to_string()),
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|item| copy(item, under_personal, mask, how))
                .collect(),
        ),
        Json::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, item) in map {
                let key_out = match personal::content(key) {
                    Some(_) => token(key, mask),
                    None => key.clone(),
                };
                let below = under_personal || personal::name(key);
                out.insert(key_out, copy(item, below, mask, how));
            }
            Json::Object(out)
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MaskKey;
    use crate::mapping::personal::Personal;
    use crate::mask::MaskMode;

    fn mask() -> ColumnMask {
        let key = MaskKey::from_base64(&MaskKey::generate_base64().unwrap()).unwrap();
        ColumnMask::new(&key, MaskMode::Hmac, "rest")
    }

    #[test]
    fn personal_values_keys_and_names_are_found_and_replaced_and_the_rest_is_kept() {
        let value: Json = serde_json::from_str(
            r#"{"Email":"Ann@Example.com","note":"call the number in contacts",
                "contacts":[{"kind":"home","phone":"+44 20 7946 0958"}],
                "visits_by_user":{"bob@example.org":{"visits":3}},
                "address":{"street":"1 High St","number":12},
                "amount":12.50,"ok":true,"tags":["a","b"]}"#,
        )
        .unwrap();
        let (why, at) = first(&value, false, false, true).unwrap();
        // Keys in order: `Email` (by name) before the rest.
        assert_eq!((why, at.as_str()), (Personal::Email, "/Email"));
        let mask = mask();
        let out = masked(&value, false, &mask, RestMask::Hmac).into_owned();
        let text = out.to_string();
        for raw in [
            "Ann@Example.com",
            "7946",
            "bob@example.org",
            "High St",
            "\"number\":12",
        ] {
            assert!(!text.contains(raw), "{raw} in {text}");
        }
        assert_eq!(out["Email"], Json::String(token("Ann@Example.com", &mask)));
        // Free text is not scanned for what it mentions.
        assert_eq!(out["note"], value["note"]);
        assert_eq!(out["contacts"][0]["kind"], "home");
        assert_eq!(out["visits_by_user"].as_object().unwrap().len(), 1);
        assert_eq!(
            out["visits_by_user"][token("bob@example.org", &mask)]["visits"],
            3
        );
        for kept in ["amount", "ok", "tags"] {
            assert_eq!(out[kept], value[kept], "{kept}");
        }
        let redacted = masked(&value, false, &mask, RestMask::Redact).into_owned();
        assert_eq!(redacted["Email"], Json::Null);
        assert_eq!(redacted["address"]["number"], Json::Null);
        // Keys are tokens under redact too: they must stay distinct.
        assert!(redacted["visits_by_user"]
            .as_object()
            .unwrap()
            .contains_key(&token("bob@example.org", &mask)));
    }

    #[test]
    fn nothing_personal_is_borrowed_and_paths_never_show_data_keys() {
        let plain: Json =
            serde_json::from_str(r#"{"a":{"b":[1,"x",null]},"product_name":"tea"}"#).unwrap();
        assert!(first(&plain, false, false, true).is_none());
        assert!(matches!(
            masked(&plain, false, &mask(), RestMask::Hmac),
            Cow::Borrowed(_)
        ));
        let keyed: Json =
            serde_json::from_str(r#"{"by_id":{"12345678":{"ip":"10.0.0.1"}}}"#).unwrap();
        let (why, at) = first(&keyed, false, false, true).unwrap();
        assert_eq!((why, at.as_str()), (Personal::Ip, "/by_id/*/ip"));
        let listed: Json =
            serde_json::from_str(r#"{"c":[{"k":1},{"phone":"+1 555 0100 22"}]}"#).unwrap();
        assert_eq!(first(&listed, false, false, true).unwrap().1, "/c/1/phone");
        assert_eq!(first(&listed, false, true, true).unwrap().1, "/c/*/phone");
        // A key below the top that is no personal field's name may be data (a user name):
        // never shown.
        let by_user: Json =
            serde_json::from_str(r#"{"scores":{"ada_lovelace":{"email":"x@y.org"}}}"#).unwrap();
        assert_eq!(
            first(&by_user, false, false, true).unwrap().1,
            "/scores/*/email"
        );
        // Below the message (a column from `/scores`), its first keys may be data too.
        let scores = &by_user["scores"];
        assert_eq!(first(scores, false, false, false).unwrap().1, "/*/email");
        let uuid_keyed: Json =
            serde_json::from_str(r#"{"c0a8d2a4-1f2e-4b3c-9d8e-7f6a5b4c3d2e":{"tel":"x"}}"#)
                .unwrap();
        assert_eq!(first(&uuid_keyed, false, false, true).unwrap().1, "/*/tel");
        // A card sent as a number is a card.
        let card: Json = serde_json::from_str(r#"{"cc":4111111111111111,"n":17}"#).unwrap();
        assert_eq!(first(&card, false, false, true).unwrap().0, Personal::Card);
        let out = masked(&card, false, &mask(), RestMask::Hmac).into_owned();
        assert!(out["cc"].is_string() && out["n"] == 17, "{out}");
        // The field a column takes may itself be named as personal data: all of it is.
        let named: Json = serde_json::from_str(r#"{"first":"Ada","last":"Lovelace"}"#).unwrap();
        assert!(first(&named, false, false, true).is_none());
        assert_eq!(first(&named, true, false, true).unwrap().0, Personal::Name);
        let out = masked(&named, true, &mask(), RestMask::Hmac).into_owned();
        assert!(!out.to_string().contains("Lovelace"), "{out}");
    }
}
