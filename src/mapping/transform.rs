//! A mapping applied to one message: the envelope unwrapped, each column's value found,
//! converted, checked and masked, giving rows ([`MappedRow`], masked by construction) or one
//! [`Rejection`] with a stable reason code naming the column. Pure: no I/O, no clock.
//!
//! Reason codes: `not_json`, `not_an_envelope:{sns,eventbridge,s3}`, `no_mapping` (the
//! mapping's `match` takes none of the message's documents), and per column
//! `missing_field:COL`, `null_field:COL`, `wrong_type:COL`, `invalid_value:COL`,
//! `out_of_range:COL`, `too_long:COL`, `nul_character:COL`, `not_allowed:COL`, `no_match:COL`,
//! `personal_data:COL` (something personal bound for a jsonb column under
//! `rest_personal = "reject"`; see `transform/scrub.rs`), and `unknown_field:NAME` (a top-level
//! field no column takes, under `unknown = "reject"`; `unknown_field` when the name looks like
//! data). Details name kinds, lengths, bounds and pointers, never a value from the message.
//!
//! It also counts the top-level fields no column's pointer takes (they go to `rest`, or
//! nowhere), and names each the first time it is seen, so the pipeline can log the names once.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value as Json};
use time::OffsetDateTime;

use super::column::{compare_decimals, convert, kind, ColumnType, Fault, Value};
use super::file::{
    Bound, Column, Convert, Envelope, Mapping, MappingError, Mask, Match, MatchOn, RestPersonal,
    Source, SqsAttribute, Unknown, EVENTBRIDGE_FIELDS, SNS_FIELDS,
};
use crate::app_version::AppVersion;
use crate::app_version::AppVersionError;
use crate::keys::MaskKey;
use crate::kind::{CopyRows, Message, MessageKind, Rejection, Transformed};
use crate::mask::{ColumnMask, MaskMode};

mod scrub;

/// How many distinct unknown field names a mapper remembers (and so names in the log): past
/// this, a producer whose keys are data would only grow the set.
const UNKNOWN_NAMES_REMEMBERED: usize = 256;

/// A mapping compiled under one key: what runs it (`mapping preview` now, the pipeline next).
/// The mapping and its column masks live together, so masks cannot belong to another mapping.
#[derive(Debug, Clone)]
pub struct Mapper {
    mapping: Mapping,
    /// In column order; one per column that makes tokens, and one (`hmac`, under the
    /// column's name) per scanned jsonb column.
    masks: Vec<Option<ColumnMask>>,
    /// In column order: each column's wire type for COPY.
    types: Vec<tokio_postgres::types::Type>,
    /// Whether some column takes the whole message (then no field is unknown).
    takes_all: bool,
    /// The unknown field names already reported, shared by the mapper's clones.
    reported: Arc<Mutex<HashSet<String>>>,
}

impl Mapper {
    /// Derives every masked column's subkey (per scope and mode) from `key`.
    pub fn new(mapping: Mapping, key: &MaskKey) -> Self {
        let scanned: HashSet<&str> = mapping.scanned().map(|c| c.name.as_str()).collect();
        let masks = mapping
            .columns
            .iter()
            .map(|c| match c.mask {
                Some(Mask::Token(mode)) => Some(ColumnMask::new(key, mode, &c.mask_scope)),
                None if scanned.contains(c.name.as_str()) => {
                    Some(ColumnMask::new(key, MaskMode::Hmac, &c.mask_scope))
                }
                _ => None,
            })
            .collect();
        let takes_all = mapping.columns.iter().any(|c| {
            matches!(&c.source, Source::Body) || c.source == Source::Pointer(String::new())
        });
        let mut types: Vec<_> = mapping
            .columns
            .iter()
            .map(|c| super::encode::wire_type(c.column_type))
            .collect();
        if mapping.write.keyed() {
            use tokio_postgres::types::Type;
            types.extend([Type::BOOL, Type::INT8, Type::TEXT]);
        }
        Self {
            mapping,
            masks,
            types,
            takes_all,
            reported: Arc::default(),
        }
    }

    /// The mapping it runs.
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Maps one message: its rows (none for an S3 test event, several for several S3
    /// records), or why it gives none. All rows or none: one bad record rejects the message.
    pub fn apply(&self, message: &Message<'_>) -> Result<Vec<MappedRow>, Rejection> {
        self.apply_counting(message).0
    }

    /// [`Mapper::apply`], and the top-level fields of the message that no column's pointer
    /// takes: how many, and the names not reported before (each once per mapper).
    pub fn apply_counting(
        &self,
        message: &Message<'_>,
    ) -> (Result<Vec<MappedRow>, Rejection>, u32, Vec<String>) {
        let mut unknown = (0u32, Vec::new());
        let rows = self.mapping.apply(&self.masks, message, |doc| {
            if !self.takes_all {
                self.count_unknown(doc, &mut unknown)
            }
        });
        (rows, unknown.0, unknown.1)
    }

    fn count_unknown(&self, doc: &Json, (count, new): &mut (u32, Vec<String>)) {
        let Json::Object(map) = doc else { return };
        let mut reported = None;
        for key in map
            .keys()
            .filter(|k| !self.mapping.taken.contains(k.as_str()))
        {
            *count += 1;
            let reported = reported.get_or_insert_with(|| {
                self.reported
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            });
            // Looked up before inserting: a name seen before costs no allocation.
            if reported.len() < UNKNOWN_NAMES_REMEMBERED
                && !reported.contains(key.as_str())
                && reported.insert(key.clone())
            {
                // A key that is itself data (an address, an id) is counted, never named.
                new.push(if scrub::safe_name(key) {
                    key.clone()
                } else {
                    "(a name that looks like data)".into()
                });
            }
        }
    }
}

impl MessageKind for Mapper {
    fn writes(&self) -> Vec<crate::kind::TableWrite> {
        vec![self.mapping.table_write()]
    }

    fn name(&self) -> &str {
        &self.mapping.table
    }

    fn transform(&self, message: &Message<'_>) -> Transformed {
        let (rows, unknown_fields, new_unknown) = self.apply_counting(message);
        Transformed {
            outcome: rows.and_then(|rows| self.encode(&rows, message)),
            unknown_fields,
            new_unknown,
        }
    }
}

impl Mapper {
    /// The rows in binary COPY form (under a keyed write mode, each followed by
    /// `kind::KEYED_FIELDS`: what a keyed load resolves a batch by).
    fn encode(&self, rows: &[MappedRow], message: &Message<'_>) -> Result<CopyRows, Rejection> {
        let mut copy = CopyRows::with_capacity(rows.len() * 32 * self.types.len());
        let keyed = self.mapping.write.keyed();
        for row in rows {
            let mut values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                .values()
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let deleted = row.is_delete();
            if keyed {
                values.extend([
                    &deleted as &(dyn tokio_postgres::types::ToSql + Sync),
                    &message.sent_timestamp_ms,
                    &message.message_id,
                ]);
            }
            copy.push(&values, &self.types).map_err(|e| {
                // The conversions make only values their column's type takes; this is a
                // bug, kept as a rejection rather than a panic.
                Rejection::new("invalid_value", format!("encoding failed: {e}"))
            })?;
        }
        Ok(copy)
    }

    /// The rows (as values) of the documents of an unwrapped message it takes; `None` when
    /// it takes none (what `mapping preview` shows for several mappings).
    pub(super) fn rows_from(
        &self,
        documents: &[Json],
        fields: &EnvelopeFields,
        message: &Message<'_>,
    ) -> Result<Option<Vec<MappedRow>>, Rejection> {
        self.mapping
            .take(&self.masks, documents, fields, message, |_| {})
    }

    /// What the router asks of each mapping: the encoded rows of the documents it takes of an
    /// unwrapped message (`None`: it takes none), counting the fields it does not know into
    /// `unknown`.
    pub(super) fn take_from(
        &self,
        documents: &[Json],
        fields: &EnvelopeFields,
        message: &Message<'_>,
        unknown: &mut (u32, Vec<String>),
    ) -> Result<Option<CopyRows>, Rejection> {
        let rows = self
            .mapping
            .take(&self.masks, documents, fields, message, |doc| {
                if !self.takes_all {
                    self.count_unknown(doc, unknown)
                }
            })?;
        rows.map(|rows| self.encode(&rows, message)).transpose()
    }
}

/// A converted number, for the bounds check.
enum Number {
    /// A whole number or numeric, as a plain decimal.
    Exact(String),
    /// A real or double precision.
    Float(f64),
}

/// A row ready to store: every personal column masked. Only [`Mapper::apply`] makes one.
/// Debug shows the value kinds only.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedRow(Vec<Value>, bool);

impl MappedRow {
    /// The values, in the mapping's column order.
    pub fn values(&self) -> &[Value] {
        &self.0
    }

    /// A delete (the mapping's `delete` takes its document): only the key and version columns
    /// hold values, the others are NULL.
    pub fn is_delete(&self) -> bool {
        self.1
    }
}

/// What the envelope contributes besides the documents to map.
pub(super) type EnvelopeFields = Map<String, Json>;

/// Where an SNS notification's `MessageAttributes` are kept among the envelope's fields (not a
/// column source: `sns:` sources name the four fields of [`SNS_FIELDS`]).
const SNS_ATTRIBUTES: &str = "sns:MessageAttributes";

/// A value as a match compares it: a string as it is, another JSON value as JSON writes it;
/// `None` for a missing or null one.
fn as_text(value: Option<&Json>) -> Option<Cow<'_, str>> {
    match value? {
        Json::Null => None,
        Json::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Whether `matcher` takes `doc`: the field's or attribute's value as text (a string as it is,
/// another JSON value as JSON writes it) is one of its values. A missing one takes nothing.
fn takes(matcher: &Match, doc: &Json, fields: &EnvelopeFields, message: &Message<'_>) -> bool {
    let is_one = |text: &str| matcher.values.iter().any(|v| v == text);
    match &matcher.on {
        MatchOn::Field(pointer) => as_text(doc.pointer(pointer)).is_some_and(|t| is_one(&t)),
        MatchOn::Envelope(field) => as_text(fields.get(field)).is_some_and(|t| is_one(&t)),
        MatchOn::Attribute(name) => {
            let sqs = message
                .attributes
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            let sns = || {
                fields
                    .get(SNS_ATTRIBUTES)
                    .and_then(|a| a.get(name.as_str()))
                    .and_then(|a| a.get("Value"))
                    .and_then(Json::as_str)
            };
            sqs.or_else(sns).is_some_and(is_one)
        }
    }
}

/// The envelope's own fields, as `{kind}:{name}` sources.
fn take_fields(outer: &mut Map<String, Json>, kind: &str, names: &[&str]) -> EnvelopeFields {
    names
        .iter()
        .filter_map(|k| outer.remove(*k).map(|v| (format!("{kind}:{k}"), v)))
        .collect()
}

/// The message's body as JSON, or `not_json` with where it stops being JSON.
pub(super) fn parse_body(message: &Message<'_>) -> Result<Json, Rejection> {
    serde_json::from_str(message.body).map_err(|e| {
        Rejection::new(
            "not_json",
            format!("line {}, column {}", e.line(), e.column()),
        )
    })
}

/// The documents an envelope holds (one, or an S3 notification's records) and its own fields.
pub(super) fn unwrap(
    envelope: Envelope,
    body: Json,
) -> Result<(Vec<Json>, EnvelopeFields), Rejection> {
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
            let mut fields = take_fields(&mut outer, "sns", &SNS_FIELDS);
            // The notification's own message attributes, for `match = { attribute = ... }`.
            if let Some(attributes) = outer.remove("MessageAttributes") {
                fields.insert(SNS_ATTRIBUTES.to_owned(), attributes);
            }
            Ok((vec![inner], fields))
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
    /// Converts, once, every unmasked column whose value does not come from the message: a
    /// constant as it is, an SQS field as a representative one (a UUID message id, a
    /// SentTimestamp of 2023 in milliseconds, a receive count of 1, a group id `group-1`). One
    /// that fails would quarantine every message, so the mapping is refused instead, naming
    /// the column and what to change.
    pub fn check_fixed_columns(&self) -> Result<(), MappingError> {
        let probe = Message {
            body: "{}",
            message_id: "8f3a1d2e-5b6c-4d7e-9f80-112233445566",
            sent_timestamp_ms: 1_700_000_000_000,
            receive_count: 1,
            group_id: Some("group-1"),
            attributes: &[],
        };
        for (i, column) in self.columns.iter().enumerate() {
            let what = match &column.source {
                Source::Constant(_) => "its constant `value`".to_owned(),
                Source::Sqs(attribute) => format!("`from = \"sqs:{attribute:?}\"`"),
                _ => continue,
            };
            if column.mask.is_some() {
                continue;
            }
            if let Err(rejection) = self.value(column, None, &Json::Null, &Map::new(), &probe) {
                return Err(MappingError(format!(
                    "column {} (`{}`): {what} can never be stored as {} ({}{}); change the \
                     column's `type`{}",
                    i + 1,
                    column.name,
                    column.column_type,
                    rejection.reason,
                    rejection
                        .detail
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default(),
                    match column.source {
                        Source::Constant(_) => " or the `value`",
                        _ => " (or `convert`)",
                    },
                )));
            }
        }
        Ok(())
    }

    /// Maps one message: parses it, unwraps its envelope and takes its documents (see
    /// [`Mapping::take`]); a message none of whose documents the `match` takes is `no_mapping`.
    fn apply(
        &self,
        masks: &[Option<ColumnMask>],
        message: &Message<'_>,
        seen: impl FnMut(&Json),
    ) -> Result<Vec<MappedRow>, Rejection> {
        let (documents, fields) = unwrap(self.envelope, parse_body(message)?)?;
        self.take(masks, &documents, &fields, message, seen)?
            .ok_or_else(|| self.not_taken())
    }

    /// Why this mapping took none of a message's documents (`no_mapping`).
    pub(super) fn not_taken(&self) -> Rejection {
        let Some(matcher) = &self.matcher else {
            return Rejection::new("no_mapping", "no document");
        };
        Rejection::new(
            "no_mapping",
            format!(
                "the mapping for {} takes messages whose {} is one of {} value(s)",
                self.table,
                match &matcher.on {
                    MatchOn::Field(p) => format!("field {p}"),
                    MatchOn::Envelope(f) => format!("envelope field {f}"),
                    MatchOn::Attribute(a) => format!("attribute {a}"),
                },
                matcher.values.len()
            ),
        )
    }

    /// The rows of the documents this mapping's `match` takes (all when it has none), each
    /// converted, checked and masked; all or none: one bad document rejects the message.
    /// `None` when there were documents and it took none of them (an S3 test event has none
    /// and gives no row). `seen` is shown each document taken for its values.
    pub(super) fn take(
        &self,
        masks: &[Option<ColumnMask>],
        documents: &[Json],
        fields: &EnvelopeFields,
        message: &Message<'_>,
        mut seen: impl FnMut(&Json),
    ) -> Result<Option<Vec<MappedRow>>, Rejection> {
        let mut taken = 0usize;
        let rows = documents
            .iter()
            .filter(|doc| {
                // A document the `delete` takes is the mapping's even if its `match` does not
                // name the delete's type.
                self.matcher
                    .as_ref()
                    .is_none_or(|m| takes(m, doc, fields, message))
                    || self
                        .write
                        .delete
                        .as_ref()
                        .is_some_and(|d| takes(d, doc, fields, message))
            })
            .map(|doc| {
                taken += 1;
                let delete = self
                    .write
                    .delete
                    .as_ref()
                    .is_some_and(|d| takes(d, doc, fields, message));
                if delete {
                    // Only the key and the version name what is deleted; the rest is not read.
                    let values = self
                        .columns
                        .iter()
                        .zip(masks)
                        .enumerate()
                        .map(|(i, (column, mask))| {
                            if self.write.key.contains(&i) || self.write.version == Some(i) {
                                self.value(column, mask.as_ref(), doc, fields, message)
                            } else {
                                Ok(Value::Null)
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    return Ok(MappedRow(values, true));
                }
                seen(doc);
                if self.unknown == Unknown::Reject {
                    self.refuse_unknown(doc)?;
                }
                let values = self
                    .columns
                    .iter()
                    .zip(masks)
                    .map(|(column, mask)| self.value(column, mask.as_ref(), doc, fields, message))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, Rejection>(MappedRow(values, false))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((taken > 0 || documents.is_empty()).then_some(rows))
    }

    /// Under `unknown = "reject"`: the first top-level field of `doc` no column takes, as
    /// `unknown_field:NAME` (a name that looks like data is not written into the reason).
    fn refuse_unknown(&self, doc: &Json) -> Result<(), Rejection> {
        let Json::Object(map) = doc else {
            return Ok(());
        };
        let takes_all = self.columns.iter().any(|c| {
            matches!(&c.source, Source::Body) || c.source == Source::Pointer(String::new())
        });
        match map.keys().find(|k| !self.taken.contains(k.as_str())) {
            Some(key) if !takes_all => Err(if scrub::safe_name(key) {
                Rejection::new(
                    format!("unknown_field:{key}"),
                    "a field no column takes (the mapping's unknown is \"reject\")",
                )
            } else {
                Rejection::new(
                    "unknown_field",
                    "a field whose name looks like data, which no column takes (the mapping's unknown is \"reject\")",
                )
            }),
            _ => Ok(()),
        }
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

    /// One column's value: found, present (or null), checked as sent, then made into what the
    /// column holds: a date from an epoch, a version's integer, a token, an address, or the
    /// column's type (jsonb scanned for personal data first), within its bounds.
    fn convert_column(
        &self,
        column: &Column,
        mask: Option<&ColumnMask>,
        doc: &Json,
        fields: &EnvelopeFields,
        message: &Message<'_>,
    ) -> Result<Value, Rejection> {
        let found = self.find(column, doc, fields, message);
        let Some(value) = present(column, found)? else {
            return Ok(Value::Null);
        };
        let value: &Json = &value;
        as_sent(column, value)?;
        if let Some(ms_per_unit) = epoch_unit(column) {
            return from_epoch(column, value, ms_per_unit);
        }
        if column.convert == Some(Convert::Version) {
            return self.version(column, value);
        }
        let ip = address(column, value)?;
        match (column.mask, mask) {
            (Some(Mask::Token(_)), Some(mask)) => return token(column, mask, ip, value),
            (Some(Mask::Token(_)), None) => unreachable!("Mapper::new makes one per token column"),
            // Redacted columns ended in `present`.
            (Some(Mask::Redact) | None, _) => {}
        }
        if let Some(ip) = ip {
            return Ok(match column.column_type {
                ColumnType::Inet => Value::Inet(ip),
                _ => Value::Text(ip.to_string()),
            });
        }
        let value = self.scrubbed(column, mask, value)?;
        let converted = convert(&value, column.column_type).map_err(|f| rejected(column, f))?;
        // Whole numbers and numerics are compared with the bounds digit by digit (an f64 would
        // round a long numeric onto its bound); real and double precision as the floats they are.
        let number = match &converted {
            Value::SmallInt(n) => Some(Number::Exact(n.to_string())),
            Value::Integer(n) => Some(Number::Exact(n.to_string())),
            Value::BigInt(n) => Some(Number::Exact(n.to_string())),
            Value::Numeric(s) => Some(Number::Exact(s.clone())),
            Value::Real(x) => Some(Number::Float(f64::from(*x))),
            Value::Double(x) => Some(Number::Float(*x)),
            _ => None,
        };
        if let Some(number) = number {
            self.bounds(column, number)
                .map_err(|f| rejected(column, f))?;
        }
        Ok(converted)
    }

    /// Where the column's value is, borrowed from the document where it can be: only what a
    /// column makes is allocated.
    #[inline]
    fn find<'a>(
        &self,
        column: &'a Column,
        doc: &'a Json,
        fields: &'a EnvelopeFields,
        message: &Message<'_>,
    ) -> Option<Cow<'a, Json>> {
        match &column.source {
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
        }
    }

    /// A version (`1.2.3`) as its integer, within the column's bounds.
    fn version(&self, column: &Column, value: &Json) -> Result<Value, Rejection> {
        let s = string(column, value)?;
        let encoded = AppVersion::parse(s)
            .map_err(|e| {
                rejected(
                    column,
                    match e {
                        AppVersionError::Invalid => {
                            Fault::Invalid("not one to three dot-separated whole numbers".into())
                        }
                        AppVersionError::OutOfRange => {
                            Fault::OutOfRange("a part beyond the version encoding's bounds".into())
                        }
                    },
                )
            })?
            .encode();
        self.bounds(column, Number::Exact(encoded.to_string()))
            .map_err(|f| rejected(column, f))?;
        Ok(match column.column_type {
            ColumnType::BigInt => Value::BigInt(encoded.into()),
            _ => Value::Integer(encoded),
        })
    }

    /// What no column foresaw, bound for jsonb, scanned (see `scrub`) as `rest_personal` says:
    /// kept, refused, or with what looks personal masked.
    #[inline]
    fn scrubbed<'v>(
        &self,
        column: &Column,
        mask: Option<&ColumnMask>,
        value: &'v Json,
    ) -> Result<Cow<'v, Json>, Rejection> {
        if column.column_type != ColumnType::Jsonb || column.mask.is_some() {
            return Ok(Cow::Borrowed(value));
        }
        match self.rest_personal {
            RestPersonal::Keep => Ok(Cow::Borrowed(value)),
            RestPersonal::Reject => match scrub::first(
                value,
                column.named_personal,
                false,
                // The message itself, or its `rest`: its keys are field names, safe to show.
                matches!(column.source, Source::Rest | Source::Body)
                    || column.source == Source::Pointer(String::new()),
            ) {
                Some((why, at)) => Err(Rejection::new(
                    code(column, "personal_data"),
                    format!("{why} at `{at}` (the mapping's rest_personal is \"reject\")"),
                )),
                None => Ok(Cow::Borrowed(value)),
            },
            RestPersonal::Mask => Ok(match mask {
                Some(mask) => scrub::masked(value, column.named_personal, mask, self.rest_mask),
                // A constant checked when the mapping is read: the mapping's own text.
                None => Cow::Borrowed(value),
            }),
        }
    }

    fn bounds(&self, column: &Column, number: Number) -> Result<(), Fault> {
        use std::cmp::Ordering;
        // Whole numbers and numerics against the bound's exact text; floats as floats.
        let beyond = |bound: &Option<Bound>, side: Ordering| {
            bound.as_ref().is_some_and(|b| match &number {
                Number::Float(x) => x.partial_cmp(&b.float) == Some(side),
                Number::Exact(text) => compare_decimals(text, &b.text) == Some(side),
            })
        };
        if beyond(&column.min, Ordering::Less) || beyond(&column.max, Ordering::Greater) {
            fn bound(b: &Option<Bound>) -> &str {
                b.as_ref().map_or("none", |b| b.text.as_str())
            }
            return Err(Fault::OutOfRange(format!(
                "outside the column's bounds (min {}, max {})",
                bound(&column.min),
                bound(&column.max)
            )));
        }
        Ok(())
    }
}

/// A column's reason code: `what:column`.
fn code(column: &Column, what: &str) -> String {
    format!("{what}:{}", column.name)
}

/// A conversion's fault as the column's rejection.
fn rejected(column: &Column, fault: Fault) -> Rejection {
    match fault {
        Fault::WrongType { expected, got } => Rejection::new(
            code(column, "wrong_type"),
            format!("expected {expected}, got {got}"),
        ),
        Fault::Invalid(why) => Rejection::new(code(column, "invalid_value"), why),
        Fault::OutOfRange(why) => Rejection::new(code(column, "out_of_range"), why),
        Fault::TooLong { chars, max } => Rejection::new(
            code(column, "too_long"),
            format!("{chars} characters, limit {max}"),
        ),
        Fault::NulCharacter => Rejection::new(code(column, "nul_character"), "U+0000 in the text"),
    }
}

/// The value a column found, if it is there and not null; a required column's missing or null
/// value refused. A redacted column keeps nothing of the value, whatever it would make of it.
#[inline]
fn present<'d>(
    column: &Column,
    found: Option<Cow<'d, Json>>,
) -> Result<Option<Cow<'d, Json>>, Rejection> {
    match found {
        None if column.required => Err(Rejection {
            reason: code(column, "missing_field"),
            detail: None,
        }),
        Some(v) if v.is_null() && column.required => Err(Rejection {
            reason: code(column, "null_field"),
            detail: None,
        }),
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(_) if column.mask == Some(Mask::Redact) => Ok(None),
        Some(v) => Ok(Some(v)),
    }
}

/// The value as text, or `wrong_type`.
#[inline]
fn string<'v>(column: &Column, value: &'v Json) -> Result<&'v str, Rejection> {
    match value {
        Json::String(s) => Ok(s),
        other => Err(rejected(
            column,
            Fault::WrongType {
                expected: "string",
                got: kind(other),
            },
        )),
    }
}

/// The checks on the value as sent: `max_length`, `allowed`, `pattern`.
#[inline]
fn as_sent(column: &Column, value: &Json) -> Result<(), Rejection> {
    if let (Some(max), Json::String(s)) = (column.max_length, value) {
        let chars = s.chars().count();
        if chars > max as usize {
            return Err(rejected(column, Fault::TooLong { chars, max }));
        }
    }
    if let Some(allowed) = &column.allowed {
        let found = match value {
            Json::String(s) => allowed.iter().any(|a| a == s),
            other => allowed.contains(&other.to_string()),
        };
        if !found {
            return Err(Rejection::new(
                code(column, "not_allowed"),
                format!("not one of the {} allowed values", allowed.len()),
            ));
        }
    }
    if let Some(pattern) = &column.pattern {
        if !pattern.is_match(string(column, value)?) {
            return Err(Rejection::new(
                code(column, "no_match"),
                "does not match the column's pattern",
            ));
        }
    }
    Ok(())
}

/// Milliseconds per unit when the column makes a date or timestamp of an epoch number:
/// `convert = "epoch_ms"` or `"epoch_s"`, or the SentTimestamp into a date or timestamp.
#[inline]
fn epoch_unit(column: &Column) -> Option<i64> {
    match column.convert {
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
    }
}

/// An epoch number as the column's date or timestamp, within the years 1 to 9999.
fn from_epoch(column: &Column, value: &Json, ms_per_unit: i64) -> Result<Value, Rejection> {
    let units = value.as_i64().ok_or_else(|| {
        rejected(
            column,
            Fault::WrongType {
                expected: "whole number",
                got: kind(value),
            },
        )
    })?;
    let at = units
        .checked_mul(ms_per_unit)
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
        .filter(|at| crate::mapping::column::in_years(at.year()).is_ok())
        .ok_or_else(|| {
            rejected(
                column,
                Fault::OutOfRange("outside the years 1 to 9999".into()),
            )
        })?;
    Ok(match column.column_type {
        ColumnType::Date => Value::Date(at.date()),
        ColumnType::Timestamp => {
            Value::Timestamp(time::PrimitiveDateTime::new(at.date(), at.time()))
        }
        _ => Value::Timestamptz(at),
    })
}

/// The address of an `inet` or `convert = "ip"` column (canonical: an IPv4-mapped IPv6
/// address as IPv4); `None` for any other column.
#[inline]
fn address(column: &Column, value: &Json) -> Result<Option<IpAddr>, Rejection> {
    if column.convert != Some(Convert::Ip) && column.column_type != ColumnType::Inet {
        return Ok(None);
    }
    let s = string(column, value)?;
    s.parse::<IpAddr>()
        .map(|ip| Some(ip.to_canonical()))
        .map_err(|_| rejected(column, Fault::Invalid("not an IP address".into())))
}

/// The column's token: of the address, or of the text as sent (another kind would have more
/// than one spelling, 1.0 and 1, hence more than one token).
fn token(
    column: &Column,
    mask: &ColumnMask,
    ip: Option<IpAddr>,
    value: &Json,
) -> Result<Value, Rejection> {
    let token = match ip {
        Some(ip) => mask.mask_ip(ip),
        None => mask
            .mask_bytes(string(column, value)?.as_bytes())
            .map_err(|e| Rejection::new(code(column, "too_long"), e.to_string()))?,
    };
    Ok(match column.column_type {
        ColumnType::Inet => Value::Inet(
            token
                .as_str()
                .parse()
                .expect("ipcrypt tokens are addresses (the mapping checks the mode)"),
        ),
        _ => Value::Text(token.as_str().to_owned()),
    })
}

#[cfg(test)]
mod tests;
