//! The scan of a value bound for an unmasked jsonb column: what in it looks personal
//! ([`crate::mapping::personal`]), found without copying anything, and a masked copy made only
//! when something is found. A value is personal by its content (an address, a phone, card or
//! id number) or by a key on its way down whose name says so (everything under `address` or
//! `contact_email`); a key is personal by its content alone (an object keyed by e-mail
//! addresses).

use std::borrow::Cow;

use serde_json::{Map, Value as Json};

use crate::login::ColumnMask;
use crate::mapping::file::RestMask;
use crate::mapping::personal::{self, Personal};

/// The first personal thing in `value` (depth first, in key order), and where: a pointer
/// whose keys that look like data are written `*`, so it never holds a value.
pub(super) fn first(value: &Json) -> Option<(Personal, String)> {
    let mut path = Vec::new();
    find(value, false, &mut path).map(|why| {
        let pointer: String = path.iter().map(|p| format!("/{p}")).collect();
        (why, pointer)
    })
}

/// Whether a key is safe to show as a name: not an address or a number of a personal kind,
/// not long, not mostly digits (an id).
pub(super) fn safe_name(key: &str) -> bool {
    let digits = key.bytes().filter(u8::is_ascii_digit).count();
    personal::content(key).is_none() && key.len() <= 40 && (digits == 0 || digits * 2 < key.len())
}

/// A step of a pointer that is safe to show.
fn step(key: &str) -> String {
    if safe_name(key) {
        key.replace('~', "~0").replace('/', "~1")
    } else {
        "*".into()
    }
}

fn find(value: &Json, under_personal: bool, path: &mut Vec<String>) -> Option<Personal> {
    match value {
        Json::String(s) if under_personal => Some(personal_name_or(personal::content(s))),
        Json::String(s) => personal::content(s),
        Json::Number(_) if under_personal => Some(Personal::Name),
        Json::Null | Json::Bool(_) | Json::Number(_) => None,
        Json::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            path.push(i.to_string());
            let found = find(item, under_personal, path);
            if found.is_none() {
                path.pop();
            }
            found
        }),
        Json::Object(map) => map.iter().find_map(|(key, item)| {
            path.push(step(key));
            let found = personal::content(key)
                .or_else(|| find(item, under_personal || personal::name(key), path));
            if found.is_none() {
                path.pop();
            }
            found
        }),
    }
}

/// Under a personal name, the content's own reason if it has one.
fn personal_name_or(content: Option<Personal>) -> Personal {
    content.unwrap_or(Personal::Name)
}

/// `value` with everything personal in it replaced: values by their `hmac` token under
/// `mask` (or `null` under [`RestMask::Redact`]), keys by their `hmac` token. Borrowed when
/// nothing is personal.
pub(super) fn masked<'v>(value: &'v Json, mask: &ColumnMask, how: RestMask) -> Cow<'v, Json> {
    if first(value).is_none() {
        return Cow::Borrowed(value);
    }
    Cow::Owned(copy(value, false, mask, how))
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
        Json::Number(n) if under_personal => replace(&n.to_string()),
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
    use crate::login::{MaskKey, MaskMode};

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
        let (why, at) = first(&value).unwrap();
        // Keys in order: `Email` (by name) before the rest.
        assert_eq!((why, at.as_str()), (Personal::Email, "/Email"));
        let mask = mask();
        let out = masked(&value, &mask, RestMask::Hmac).into_owned();
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
        let redacted = masked(&value, &mask, RestMask::Redact).into_owned();
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
        assert!(first(&plain).is_none());
        assert!(matches!(
            masked(&plain, &mask(), RestMask::Hmac),
            Cow::Borrowed(_)
        ));
        let keyed: Json =
            serde_json::from_str(r#"{"by_id":{"12345678":{"ip":"10.0.0.1"}}}"#).unwrap();
        let (why, at) = first(&keyed).unwrap();
        assert_eq!((why, at.as_str()), (Personal::Ip, "/by_id/*/ip"));
    }
}
