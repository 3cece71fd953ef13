//! The body parsed into its wire shape: which of our six fields are present, and as what JSON
//! type, without judging them yet (that is `validate`'s job).
//!
//! Parsing is a hand-written serde visitor rather than `#[derive(Deserialize)]` because we need
//! more than derive reports: the exact field that is missing, null, duplicated or of the wrong
//! type, and a count of unknown fields. It borrows string values from the body where the JSON has
//! no escapes, so the hot path allocates little. serde_json's recursion limit (128) bounds nesting
//! inside unknown fields, so a hostile body cannot overflow the stack.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::reject::{Field, JsonKind, Reason, Rejection};

/// A field's value as far as validation cares: a string, or the kind of JSON it was instead.
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    NotString(JsonKind),
}

/// The body's wire shape: one slot per known field, plus what else the object held.
#[derive(Default)]
pub struct LoginEvent<'a> {
    slots: [Option<Scalar<'a>>; 6],
    /// The first of our fields that appeared more than once, if any.
    pub duplicate: Option<Field>,
    /// How many keys the object had that are not ours (ignored, but counted).
    pub unknown_fields: u32,
}

impl<'a> LoginEvent<'a> {
    /// Parses a body; any JSON that is not an object is a rejection here.
    pub fn parse(body: &'a str) -> Result<Self, Rejection> {
        let mut de = serde_json::Deserializer::from_str(body);
        let parsed = BodySeed
            .deserialize(&mut de)
            .and_then(|event| de.end().map(|()| event));
        match parsed {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(kind)) => Err(Rejection::with_detail(
                Reason::NotAnObject,
                format!("top-level value is {}", kind.name()),
            )),
            Err(err) => Err(not_json(&err)),
        }
    }

    /// Takes the value of one field out of the event.
    pub fn take(&mut self, field: Field) -> Option<Scalar<'a>> {
        self.slots[field as usize].take()
    }
}

/// serde_json's messages for syntax errors carry no input text, but to be certain no value from
/// the body is ever stored or logged, the detail is built from the category and position only
/// (the mapping engine's words, `kind::Rejection::unreadable_json`).
fn not_json(err: &serde_json::Error) -> Rejection {
    let rejection = crate::kind::Rejection::unreadable_json(err, "");
    let reason = match rejection.reason.as_str() {
        "invalid_utf16_escape" => Reason::InvalidUtf16Escape,
        _ => Reason::NotJson,
    };
    Rejection {
        reason,
        detail: rejection.detail,
    }
}

/// Deserializes the top-level value: an object becomes a `LoginEvent`, anything else is reported
/// as the kind of JSON it was (after consuming it, so trailing garbage is still detected).
struct BodySeed;

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = Result<LoginEvent<'de>, JsonKind>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> Visitor<'de> for BodyVisitor {
    type Value = Result<LoginEvent<'de>, JsonKind>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut event = LoginEvent::default();
        let mut first = true;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                // A number, not an object (see `NUMBER_TOKEN`).
                Key::Number if first => {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    return Ok(Err(JsonKind::Number));
                }
                Key::Known(field) => {
                    let value = map.next_value::<ScalarOf<'de>>()?.0;
                    let slot = &mut event.slots[field as usize];
                    if slot.is_some() {
                        event.duplicate.get_or_insert(field);
                    } else {
                        *slot = Some(value);
                    }
                }
                Key::Unknown | Key::Number => {
                    map.next_value::<IgnoredAny>()?;
                    event.unknown_fields += 1;
                }
            }
            first = false;
        }
        Ok(Ok(event))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(JsonKind::Array))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(JsonKind::String))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(JsonKind::Bool))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(JsonKind::Number))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(JsonKind::Number))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(JsonKind::Number))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(JsonKind::Null))
    }
}

/// The one key of the map serde_json hands a number as, with `arbitrary_precision` on (the
/// mapping needs it to keep a number's every digit): `{TOKEN: "digits"}`. serde_json does not
/// export it; `numbers_are_numbers` below fails should it change.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// An object key: one of our fields, serde_json's number token, or anything else.
enum Key {
    Known(Field),
    Number,
    Unknown,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, key: &str) -> Result<Key, E> {
                Ok(match Field::from_name(key) {
                    Some(field) => Key::Known(field),
                    None if key == NUMBER_TOKEN => Key::Number,
                    None => Key::Unknown,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// A field value: a (borrowed where possible) string, or the JSON kind it was instead.
struct ScalarOf<'a>(Scalar<'a>);

impl<'de> de::Deserialize<'de> for ScalarOf<'de> {
    // Inlined into the field loop of `LoginEvent::parse`, once per field: left to itself the
    // compiler stopped inlining it when the crate's code-generation units were re-cut (issue
    // 19), which cost the transform about 1% of its instructions (measured with callgrind).
    #[inline]
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor).map(ScalarOf)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::NotString(JsonKind::Null))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::NotString(JsonKind::Bool))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Scalar::NotString(JsonKind::Number))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Scalar::NotString(JsonKind::Number))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::NotString(JsonKind::Number))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::NotString(JsonKind::Array))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // A number comes as a map of one (see `NUMBER_TOKEN`).
        let kind = match map.next_key::<Key>()? {
            None => return Ok(Scalar::NotString(JsonKind::Object)),
            Some(Key::Number) => JsonKind::Number,
            Some(_) => JsonKind::Object,
        };
        map.next_value::<IgnoredAny>()?;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::NotString(kind))
    }
}
