//! A mapping applied to one message: the envelope unwrapped, each column's value found,
//! converted, checked and masked, giving rows ([`MappedRow`], masked by construction) or one
//! [`Rejection`] with a stable reason code naming the column. Pure: no I/O, no clock.
//!
//! Reason codes: `not_json`, `not_an_envelope:{sns,eventbridge,s3}`, and per column
//! `missing_field:COL`, `null_field:COL`, `wrong_type:COL`, `invalid_value:COL`,
//! `out_of_range:COL`, `too_long:COL`, `nul_character:COL`, `not_allowed:COL`, `no_match:COL`.
//! Details name kinds, lengths and bounds, never a value from the message.

use std::borrow::Cow;
use std::net::IpAddr;

use serde_json::{Map, Value as Json};
use time::OffsetDateTime;

use super::column::{convert, kind, ColumnType, Fault, Value};
use super::file::{
    Column, Convert, Envelope, Mapping, Mask, Source, SqsAttribute, EVENTBRIDGE_FIELDS, SNS_FIELDS,
};
use crate::kind::{CopyRows, Message, MessageKind, Rejection, Transformed};
use crate::login::app_version::AppVersionError;
use crate::login::{AppVersion, ColumnMask, MaskKey};

/// A mapping compiled under one key: what runs it (`mapping preview` now, the pipeline next).
/// The mapping and its column masks live together, so masks cannot belong to another mapping.
#[derive(Debug, Clone)]
pub struct Mapper {
    mapping: Mapping,
    /// In column order; one per column that makes tokens.
    masks: Vec<Option<ColumnMask>>,
    /// In column order: each column's wire type for COPY.
    types: Vec<tokio_postgres::types::Type>,
}

impl Mapper {
    /// Derives every masked column's subkey (per scope and mode) from `key`.
    pub fn new(mapping: Mapping, key: &MaskKey) -> Self {
        let masks = mapping
            .columns
            .iter()
            .map(|c| match c.mask {
                Some(Mask::Token(mode)) => Some(ColumnMask::new(key, mode, &c.mask_scope)),
                _ => None,
            })
            .collect();
        let types = mapping
            .columns
            .iter()
            .map(|c| super::encode::wire_type(c.column_type))
            .collect();
        Self {
            mapping,
            masks,
            types,
        }
    }

    /// The mapping it runs.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Maps one message: its rows (none for an S3 test event, several for several S3
    /// records), or why it gives none. All rows or none: one bad record rejects the message.
    pub fn apply(&self, message: &Message<'_>) -> Result<Vec<MappedRow>, Rejection> {
        self.mapping.apply(&self.masks, message)
    }
}

impl MessageKind for Mapper {
    fn columns(&self) -> Vec<String> {
        self.mapping
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    fn transform(&self, message: &Message<'_>) -> Transformed {
        let outcome = self.apply(message).and_then(|rows| {
            let mut copy = CopyRows::with_capacity(rows.len() * 32 * self.types.len());
            for row in &rows {
                let values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                    .values()
                    .iter()
                    .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                copy.push(&values, &self.types).map_err(|e| {
                    // The conversions make only values their column's type takes; this is a
                    // bug, kept as a rejection rather than a panic.
                    Rejection::new("invalid_value", format!("encoding failed: {e}"))
                })?;
            }
            Ok(copy)
        });
        Transformed {
            outcome,
            unknown_fields: 0,
        }
    }
}

/// A row ready to store: every personal column masked. Only [`Mapper::apply`] makes one.
/// Debug shows the value kinds only.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedRow(Vec<Value>);

impl MappedRow {
    /// The values, in the mapping's column order.
    pub fn values(&self) -> &[Value] {
        &self.0
    }
}

/// What the envelope contributes besides the documents to map.
type EnvelopeFields = Map<String, Json>;

/// The envelope's own fields, as `{kind}:{name}` sources.
fn take_fields(outer: &mut Map<String, Json>, kind: &str, names: &[&str]) -> EnvelopeFields {
    names
        .iter()
        .filter_map(|k| outer.remove(*k).map(|v| (format!("{kind}:{k}"), v)))
        .collect()
}

fn unwrap(envelope: Envelope, body: Json) -> Result<(Vec<Json>, EnvelopeFields), Rejection> {
    let not = |what: &str, detail: &str| Rejection::new(format!("not_an_envelope:{what}"), detail);
    match envelope {
        Envelope::None => Ok((vec![body], Map::new())),
        Envelope::Sns => {
            let Json::Object(mut outer) = body else {
                return Err(not("sns", "the body is not an object"));
            };
            let Some(Json::String(inner)) = outer.remove("Message") else {
                return Err(not("sns", "no `Message` string"));
            };
            let inner: Json = serde_json::from_str(&inner).map_err(|e| {
                Rejection::new(
                    "not_json",
                    format!(
                        "the SNS `Message`: line {}, column {}",
                        e.line(),
                        e.column()
                    ),
                )
            })?;
            Ok((vec![inner], take_fields(&mut outer, "sns", &SNS_FIELDS)))
        }
        Envelope::Eventbridge => {
            let Json::Object(mut outer) = body else {
                return Err(not("eventbridge", "the body is not an object"));
            };
            let Some(detail) = outer.remove("detail") else {
                return Err(not("eventbridge", "no `detail`"));
            };
            Ok((
                vec![detail],
                take_fields(&mut outer, "eventbridge", &EVENTBRIDGE_FIELDS),
            ))
        }
        Envelope::S3 => {
            let Json::Object(mut outer) = body else {
                return Err(not("s3", "the body is not an object"));
            };
            if outer.get("Event").and_then(Json::as_str) == Some("s3:TestEvent") {
                return Ok((Vec::new(), Map::new()));
            }
            match outer.remove("Records") {
                Some(Json::Array(records)) => Ok((records, Map::new())),
                _ => Err(not("s3", "no `Records` array")),
            }
        }
    }
}

impl Mapping {
    fn apply(
        &self,
        masks: &[Option<ColumnMask>],
        message: &Message<'_>,
    ) -> Result<Vec<MappedRow>, Rejection> {
        let body: Json = serde_json::from_str(message.body).map_err(|e| {
            Rejection::new(
                "not_json",
                format!("line {}, column {}", e.line(), e.column()),
            )
        })?;
        let (documents, fields) = unwrap(self.envelope, body)?;
        documents
            .iter()
            .map(|doc| {
                let values = self
                    .columns
                    .iter()
                    .zip(masks)
                    .map(|(column, mask)| self.value(column, mask.as_ref(), doc, &fields, message))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(MappedRow(values))
            })
            .collect()
    }

    /// [`Mapping::convert_column`], and what it makes checked against a `varchar(n)` (an
    /// address written as text, a token) as PostgreSQL would.
    fn value(
        &self,
        column: &Column,
        mask: Option<&ColumnMask>,
        doc: &Json,
        fields: &EnvelopeFields,
        message: &Message<'_>,
    ) -> Result<Value, Rejection> {
        let value = self.convert_column(column, mask, doc, fields, message)?;
        if let (ColumnType::Varchar(max), Value::Text(text)) = (column.column_type, &value) {
            let chars = text.chars().count();
            if chars > max as usize {
                return Err(Rejection::new(
                    format!("too_long:{}", column.name),
                    format!("{chars} characters, limit {max}"),
                ));
            }
        }
        Ok(value)
    }

    fn convert_column(
        &self,
        column: &Column,
        mask: Option<&ColumnMask>,
        doc: &Json,
        fields: &EnvelopeFields,
        message: &Message<'_>,
    ) -> Result<Value, Rejection> {
        let name = &column.name;
        let code = |what: &str| format!("{what}:{name}");
        // Borrowed from the document where it can be: only what a column makes is allocated.
        let found: Option<Cow<'_, Json>> = match &column.source {
            Source::Pointer(p) => doc.pointer(p).map(Cow::Borrowed),
            Source::Body => Some(Cow::Borrowed(doc)),
            Source::Rest => Some(Cow::Owned(Json::Object(match doc {
                Json::Object(map) => map
                    .iter()
                    .filter(|(k, _)| !self.taken.contains(k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                _ => Map::new(),
            }))),
            Source::Sqs(SqsAttribute::MessageId) => Some(Cow::Owned(message.message_id.into())),
            Source::Sqs(SqsAttribute::SentTimestamp) => {
                Some(Cow::Owned(message.sent_timestamp_ms.into()))
            }
            Source::Sqs(SqsAttribute::ApproximateReceiveCount) => {
                Some(Cow::Owned(message.receive_count.into()))
            }
            Source::Sqs(SqsAttribute::MessageGroupId) => {
                message.group_id.map(|g| Cow::Owned(Json::from(g)))
            }
            Source::Attribute(a) => message
                .attributes
                .iter()
                .find(|(k, _)| k == a)
                .map(|(_, v)| Cow::Owned(Json::from(v.as_str()))),
            Source::Envelope(f) => fields.get(f).map(Cow::Borrowed),
            Source::Constant(v) => Some(Cow::Borrowed(v)),
        };
        let value = match found {
            None if column.required => {
                return Err(Rejection {
                    reason: code("missing_field"),
                    detail: None,
                })
            }
            Some(v) if v.is_null() && column.required => {
                return Err(Rejection {
                    reason: code("null_field"),
                    detail: None,
                })
            }
            None => return Ok(Value::Null),
            Some(v) if v.is_null() => return Ok(Value::Null),
            // Redacted: nothing of the value is kept, whatever the column would make of it.
            Some(_) if column.mask == Some(Mask::Redact) => return Ok(Value::Null),
            Some(v) => v,
        };
        let value: &Json = &value;
        let fault = |f: Fault| match f {
            Fault::WrongType { expected, got } => Rejection::new(
                code("wrong_type"),
                format!("expected {expected}, got {got}"),
            ),
            Fault::Invalid(why) => Rejection::new(code("invalid_value"), why),
            Fault::OutOfRange(why) => Rejection::new(code("out_of_range"), why),
            Fault::TooLong { chars, max } => {
                Rejection::new(code("too_long"), format!("{chars} characters, limit {max}"))
            }
            Fault::NulCharacter => Rejection::new(code("nul_character"), "U+0000 in the text"),
        };
        // The checks on the value as sent.
        if let Some(max) = column.max_length {
            if let Json::String(s) = value {
                let chars = s.chars().count();
                if chars > max as usize {
                    return Err(fault(Fault::TooLong { chars, max }));
                }
            }
        }
        if let Some(allowed) = &column.allowed {
            let found = match value {
                Json::String(s) => allowed.iter().any(|a| a == s),
                other => allowed.contains(&other.to_string()),
            };
            if !found {
                return Err(Rejection::new(
                    code("not_allowed"),
                    format!("not one of the {} allowed values", allowed.len()),
                ));
            }
        }
        if let Some(pattern) = &column.pattern {
            let Json::String(s) = value else {
                return Err(fault(Fault::WrongType {
                    expected: "string",
                    got: kind(value),
                }));
            };
            if !pattern.is_match(s) {
                return Err(Rejection::new(
                    code("no_match"),
                    "does not match the column's pattern",
                ));
            }
        }
        let epoch = match column.convert {
            Some(Convert::EpochMs) => Some(1),
            Some(Convert::EpochS) => Some(1_000),
            None if column.source == Source::Sqs(SqsAttribute::SentTimestamp)
                && matches!(
                    column.column_type,
                    ColumnType::Date | ColumnType::Timestamptz | ColumnType::Timestamp
                ) =>
            {
                Some(1)
            }
            _ => None,
        };
        if let Some(ms_per_unit) = epoch {
            let units = value.as_i64().ok_or_else(|| {
                fault(Fault::WrongType {
                    expected: "whole number",
                    got: kind(value),
                })
            })?;
            let at = units
                .checked_mul(ms_per_unit)
                .and_then(|ms| {
                    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                })
                .filter(|at| crate::mapping::column::in_years(at.year()).is_ok())
                .ok_or_else(|| fault(Fault::OutOfRange("outside the years 1 to 9999".into())))?;
            return Ok(match column.column_type {
                ColumnType::Date => Value::Date(at.date()),
                ColumnType::Timestamp => {
                    Value::Timestamp(time::PrimitiveDateTime::new(at.date(), at.time()))
                }
                _ => Value::Timestamptz(at),
            });
        }
        if column.convert == Some(Convert::Version) {
            let Json::String(s) = value else {
                return Err(fault(Fault::WrongType {
                    expected: "string",
                    got: kind(value),
                }));
            };
            let encoded = AppVersion::parse(s)
                .map_err(|e| {
                    fault(match e {
                        AppVersionError::Invalid => {
                            Fault::Invalid("not one to three dot-separated whole numbers".into())
                        }
                        AppVersionError::OutOfRange => {
                            Fault::OutOfRange("a part beyond the version encoding's bounds".into())
                        }
                    })
                })?
                .encode();
            self.bounds(column, f64::from(encoded)).map_err(fault)?;
            return Ok(match column.column_type {
                ColumnType::BigInt => Value::BigInt(encoded.into()),
                _ => Value::Integer(encoded),
            });
        }
        let is_ip = column.convert == Some(Convert::Ip) || column.column_type == ColumnType::Inet;
        let ip = if is_ip {
            let Json::String(s) = value else {
                return Err(fault(Fault::WrongType {
                    expected: "string",
                    got: kind(value),
                }));
            };
            Some(
                s.parse::<IpAddr>()
                    .map_err(|_| fault(Fault::Invalid("not an IP address".into())))?
                    .to_canonical(),
            )
        } else {
            None
        };
        match (column.mask, mask) {
            (Some(Mask::Redact), _) => return Ok(Value::Null),
            (Some(Mask::Token(_)), Some(mask)) => {
                let token = match ip {
                    Some(ip) => mask.mask_ip(ip),
                    None => {
                        // Tokens are made of text as sent: another kind would have more than
                        // one spelling (1.0 and 1), hence more than one token.
                        let Json::String(text) = value else {
                            return Err(fault(Fault::WrongType {
                                expected: "string",
                                got: kind(value),
                            }));
                        };
                        mask.mask_bytes(text.as_bytes())
                            .map_err(|e| Rejection::new(code("too_long"), e.to_string()))?
                    }
                };
                return Ok(match column.column_type {
                    ColumnType::Inet => Value::Inet(
                        token
                            .as_str()
                            .parse()
                            .expect("ipcrypt tokens are addresses (the mapping checks the mode)"),
                    ),
                    _ => Value::Text(token.as_str().to_owned()),
                });
            }
            (Some(Mask::Token(_)), None) => unreachable!("Mapper::new makes one per token column"),
            (None, _) => {}
        }
        if let Some(ip) = ip {
            return Ok(match column.column_type {
                ColumnType::Inet => Value::Inet(ip),
                _ => Value::Text(ip.to_string()),
            });
        }
        let converted = convert(value, column.column_type).map_err(fault)?;
        let number = match &converted {
            Value::SmallInt(n) => Some(f64::from(*n)),
            Value::Integer(n) => Some(f64::from(*n)),
            Value::BigInt(n) => Some(*n as f64),
            Value::Real(x) => Some(f64::from(*x)),
            Value::Double(x) => Some(*x),
            Value::Numeric(s) => s.parse().ok(),
            _ => None,
        };
        if let Some(number) = number {
            self.bounds(column, number).map_err(fault)?;
        }
        Ok(converted)
    }

    fn bounds(&self, column: &Column, number: f64) -> Result<(), Fault> {
        if column.min.is_some_and(|min| number < min) || column.max.is_some_and(|max| number > max)
        {
            let bound = |b: Option<f64>| b.map_or("none".to_owned(), |b| b.to_string());
            return Err(Fault::OutOfRange(format!(
                "outside the column's bounds (min {}, max {})",
                bound(column.min),
                bound(column.max)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::{MaskMode, MaskModes, Masker};

    fn key() -> MaskKey {
        MaskKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    fn message(body: &str) -> Message<'_> {
        Message::new(body, "m-1", 1_700_000_000_000)
    }

    fn apply(mapping: &str, body: &str) -> Result<Vec<Vec<Option<String>>>, Rejection> {
        let m = Mapper::new(Mapping::parse(mapping).unwrap(), &key());
        let rows = m.apply(&message(body))?;
        Ok(rows
            .iter()
            .map(|r| r.values().iter().map(Value::to_text).collect())
            .collect())
    }

    const ORDERS: &str = r#"
table = "public.orders"
envelope = "sns"
columns = [
  { name = "order_id", from = "/order/id", type = "uuid", required = true },
  { name = "email_token", from = "/customer/email", type = "varchar(256)", mask = "hmac" },
  { name = "amount", from = "/order/amount", type = "numeric(12,2)", min = 0 },
  { name = "status", from = "/status", type = "text", allowed = ["new", "paid"] },
  { name = "sent_at", from = "sqs:SentTimestamp", type = "timestamptz" },
  { name = "topic", from = "sns:TopicArn", type = "text" },
  { name = "extra", from = "rest", type = "jsonb" },
]
"#;

    fn sns(inner: &str) -> String {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": "arn:aws:sns:eu-west-1:1:orders",
            "Message": inner,
        })
        .to_string()
    }

    #[test]
    fn an_sns_wrapped_order_maps_to_one_masked_row() {
        let body = sns(
            r#"{"order": {"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "amount": 12.345}, "customer": {"email": "a@example.com"}, "status": "paid", "coupon": "X1"}"#,
        );
        let rows = apply(ORDERS, &body).unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            row[0].as_deref(),
            Some("6f9619ff-8b86-d011-b42d-00c04fc964ff")
        );
        let token = row[1].clone().unwrap();
        assert!(
            token.contains(".h.") && !token.contains("example"),
            "a token"
        );
        assert_eq!(row[2].as_deref(), Some("12.35"));
        assert_eq!(row[3].as_deref(), Some("paid"));
        assert_eq!(row[4].as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(row[5].as_deref(), Some("arn:aws:sns:eu-west-1:1:orders"));
        assert_eq!(
            row[6].as_deref(),
            Some(r#"{"coupon":"X1"}"#),
            "what no column took"
        );
    }

    #[test]
    fn each_bad_value_is_rejected_with_its_column_and_never_its_value() {
        let cases = [
            (r#"{"order": {"amount": 1}}"#, "missing_field:order_id"),
            (r#"{"order": {"id": null}}"#, "null_field:order_id"),
            (r#"{"order": {"id": "nope"}}"#, "invalid_value:order_id"),
            (r#"{"order": {"id": 7}}"#, "wrong_type:order_id"),
            (
                r#"{"order": {"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "amount": -1}}"#,
                "out_of_range:amount",
            ),
            (
                r#"{"order": {"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff"}, "status": "secret-status"}"#,
                "not_allowed:status",
            ),
        ];
        for (inner, reason) in cases {
            let rejection = apply(ORDERS, &sns(inner)).unwrap_err();
            assert_eq!(rejection.reason, reason, "{inner}");
            let detail = rejection.detail.unwrap_or_default();
            assert!(
                !detail.contains("nope") && !detail.contains("secret"),
                "{detail}"
            );
        }
        assert_eq!(apply(ORDERS, "{").unwrap_err().reason, "not_json");
        assert_eq!(
            apply(ORDERS, r#"{"Type": "Notification"}"#)
                .unwrap_err()
                .reason,
            "not_an_envelope:sns"
        );
        assert_eq!(
            apply(ORDERS, &serde_json::json!({"Message": "{"}).to_string())
                .unwrap_err()
                .reason,
            "not_json"
        );
    }

    #[test]
    fn s3_notifications_give_a_row_per_record_and_a_test_event_none() {
        let mapping = r#"
table = "s3_objects"
envelope = "s3"
columns = [
  { name = "bucket", from = "/s3/bucket/name", type = "text", required = true },
  { name = "object_key", from = "/s3/object/key", type = "text", required = true },
  { name = "size", from = "/s3/object/size", type = "bigint" },
  { name = "event_time", from = "/eventTime", type = "timestamptz" },
]
"#;
        let record = |k: &str| serde_json::json!({"eventTime": "2026-12-04T10:00:00.000Z", "s3": {"bucket": {"name": "b"}, "object": {"key": k, "size": 5}}});
        let body =
            serde_json::json!({"Records": [record("a"), record("b"), record("c")]}).to_string();
        let rows = apply(mapping, &body).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2][1].as_deref(), Some("c"));
        assert_eq!(rows[0][3].as_deref(), Some("2026-12-04T10:00:00Z"));
        let test_event = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        assert_eq!(apply(mapping, test_event).unwrap().len(), 0);
        // One bad record rejects the message: all rows or none.
        let bad = serde_json::json!({"Records": [record("a"), {"s3": {}}]}).to_string();
        assert_eq!(
            apply(mapping, &bad).unwrap_err().reason,
            "missing_field:bucket"
        );
    }

    #[test]
    fn eventbridge_detail_and_envelope_fields() {
        let mapping = r#"
table = "signups"
envelope = "eventbridge"
columns = [
  { name = "user_id", from = "/userId", type = "text", required = true, pattern = "u-[0-9]+" },
  { name = "kind", from = "eventbridge:detail-type", type = "text" },
  { name = "at", from = "eventbridge:time", type = "timestamptz" },
  { name = "ip", from = "/ip", type = "text", mask = "redact" },
]
"#;
        let event = |user: &str| {
            serde_json::json!({"id": "e-1", "detail-type": "Signup", "source": "app", "time": "2026-12-04T10:00:00Z", "detail": {"userId": user, "ip": "10.0.0.1"}}).to_string()
        };
        let rows = apply(mapping, &event("u-12")).unwrap();
        assert_eq!(
            rows[0],
            vec![
                Some("u-12".into()),
                Some("Signup".into()),
                Some("2026-12-04T10:00:00Z".into()),
                None
            ]
        );
        assert_eq!(
            apply(mapping, &event("x-12")).unwrap_err().reason,
            "no_match:user_id"
        );
    }

    /// The login columns as a mapping give the login pipeline's values, tokens included, for
    /// every valid message of the sample, under every mode.
    #[test]
    fn the_login_mapping_gives_the_login_pipelines_rows_for_the_sample() {
        let file = include_str!("../../examples/mappings/login.toml");
        let sample = include_str!("../../examples/login-queue-sample.jsonl");
        for mode in [MaskMode::Hmac, MaskMode::Siv] {
            let text = file.replace("mask = \"hmac\"", &format!("mask = \"{mode}\""));
            let m = Mapper::new(Mapping::parse(&text).unwrap(), &key());
            let masker = Masker::with_modes(
                &key(),
                MaskModes {
                    ip: mode,
                    device_id: mode,
                },
            );
            let (mut same, mut both_rejected) = (0, 0);
            for body in sample.lines() {
                let login = crate::login::transform(&masker, 1 << 18, body, 1_700_000_000_000);
                let mapped = m.apply(&message(body));
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
