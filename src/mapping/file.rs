//! The mapping file: its TOML shape, and its compilation into a checked [`Mapping`] whose every
//! mistake is found before a message is touched, named by line and key.
//!
//! ```toml
//! table = "public.orders"
//! envelope = "sns"                       # none (default) | sns | eventbridge | s3
//! match = { field = "/type", equals = "order.placed" }   # optional: which messages
//!
//! [[columns]]
//! name = "order_id"
//! from = "/order/id"                     # a JSON pointer (RFC 6901) into the message
//! type = "uuid"
//! required = true
//! ```
//!
//! Per column: `name`, `type` (as PostgreSQL spells it) and either `from` or `value` (a
//! constant); then, all optional, `required` (absent or null is refused instead of stored as
//! NULL), `max_length` (characters of the value as sent; a `varchar(n)` also bounds what is
//! stored), `allowed` (the values it may take), `pattern` (a regular expression the whole value
//! must match), `min` / `max` (numbers, compared exactly: an integer, a float, or a decimal
//! string for more digits than a double keeps), `convert` and `mask` with `mask_scope`.
//!
//! `from` is a JSON pointer (`/order/id`, `""` is the whole message), `body` (the whole message
//! as sent), `rest` (the top-level fields no pointer starts with, as an object), `sqs:MessageId`,
//! `sqs:SentTimestamp` (milliseconds), `sqs:ApproximateReceiveCount`, `sqs:MessageGroupId`,
//! `attr:NAME` (a message attribute), and the envelope's own fields: `sns:MessageId`,
//! `sns:Timestamp`, `sns:TopicArn`, `sns:Subject`; `eventbridge:id`, `eventbridge:source`,
//! `eventbridge:detail-type`, `eventbridge:time`, `eventbridge:account`, `eventbridge:region`.
//!
//! `convert`: `version` ("2.3.0" to the order-preserving integer of `crate::app_version`),
//! `epoch_ms` / `epoch_s` (a number of milliseconds or seconds since 1970 to a date or a
//! timestamp, in UTC; implied for `sqs:SentTimestamp` into a date or timestamp), `ip` (an IP
//! address, canonical: a masked address gets one token however it is spelled).
//!
//! `mask`: `hmac`, `siv`, `ipcrypt`, `ipcrypt-pfx` (IP addresses only: `convert = "ip"` or an
//! `inet` column) or `redact` (store NULL, keep nothing). Tokens are keyed per *scope*, which
//! is the column's name unless `mask_scope` says otherwise: columns (in one table or several)
//! with one scope give one token for one value, so they can be joined; different scopes never
//! do. The login columns use the scopes `ip` and `device_id`.
//!
//! `match` says which messages the mapping takes, evaluated after the envelope on each
//! document: `{ field = "/type", equals = "user.updated" }`, `{ field = "/type", in = ["a",
//! "b"] }`, a field of the envelope (`{ field = "eventbridge:detail-type", equals = "..." }`),
//! or `{ attribute = "kind", equals = "audit" }` (an SQS message attribute, or under an SNS
//! envelope one of the notification's `MessageAttributes`). Values compare as text: a string
//! as it is, a number or boolean as JSON writes it (`equals = 2` takes `2`, not `2.0`); the
//! field is not `rest`'s. A message none of whose
//! documents it takes is quarantined as `no_mapping` (a replay loads it once a mapping takes
//! it); without `match`, every message is taken.
//!
//! `unknown` (optional) says what happens to a document's top-level fields no column takes:
//! `ignore` (the default: counted and named once in the log), `rest` (kept in the jsonb
//! column `rest`, added when no column takes `rest`) or `reject` (quarantined as
//! `unknown_field:NAME`, a data contract).
//!
//! `queue` (optional) names the queue the mapping reads, a URL or a name; without it, the run's
//! queue (`--queue-url`). A run reads every distinct queue its mappings name.
//!
//! `write` and `delete` say how rows reach the table: appended (the default), or by key with
//! `ignore`, `upsert` or `latest`, deletes included (see [`super::write`]).
//!
//! What no column foresaw is never stored in clear by default: every value bound for an
//! unmasked jsonb column (`rest`, `body`, a whole sub-object) is scanned with
//! [`super::personal`], and what looks personal (an e-mail or IP address, a phone, card or
//! `ddd-dd-dddd` number by its content; any value under a key whose name says so, such as
//! `Email`, `contact_email` or `firstName`) is handled as the mapping's top-level
//! `rest_personal` says: `mask` (the default: replaced by its `rest_mask` token, `hmac` by
//! default and keyed under the column's name, or `redact`ed to null), `reject` (the message is
//! quarantined as `personal_data:COLUMN`), or `keep` (stored as sent: an explicit opt-out). A
//! key that is itself an address or a number of that kind is replaced by its `hmac` token
//! under `mask` and `redact` alike.

use std::collections::HashSet;

use serde::Deserialize;

use super::column::ColumnType;
use crate::mask::MaskMode;

/// What the message is wrapped in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// The body is the message.
    #[default]
    None,
    /// An SNS notification (raw delivery off): the message is the JSON text in `Message`.
    Sns,
    /// An EventBridge event: the message is `detail`.
    Eventbridge,
    /// An S3 event notification: one message per entry of `Records`; `s3:TestEvent` is
    /// acknowledged and gives no row.
    S3,
}

/// The fields of an SNS notification a column can take (`sns:NAME`).
pub(super) const SNS_FIELDS: [&str; 4] = ["MessageId", "Timestamp", "TopicArn", "Subject"];
/// The fields of an EventBridge event a column can take (`eventbridge:NAME`).
pub(super) const EVENTBRIDGE_FIELDS: [&str; 6] =
    ["id", "source", "detail-type", "time", "account", "region"];

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A JSON pointer into the (unwrapped) message.
    Pointer(String),
    /// The whole message as sent (after unwrapping).
    Body,
    /// The top-level fields no column's pointer starts with.
    Rest,
    /// An SQS system attribute.
    Sqs(SqsAttribute),
    /// A message attribute, by name.
    Attribute(String),
    /// A field of the envelope (`MessageId` of an SNS notification, ...).
    Envelope(String),
    /// A constant.
    Constant(serde_json::Value),
}

impl Source {
    /// Whether the value is the delivery's own rather than the producer's: the SQS message
    /// id, send time and receive count, and the SNS or EventBridge envelope's id and time. A
    /// producer's retry repeats everything else; these differ each time.
    pub fn of_the_delivery(&self) -> bool {
        match self {
            Source::Sqs(a) => !matches!(a, SqsAttribute::MessageGroupId),
            Source::Envelope(field) => matches!(
                field.as_str(),
                "sns:MessageId" | "sns:Timestamp" | "eventbridge:id" | "eventbridge:time"
            ),
            _ => false,
        }
    }
}

/// The SQS system attributes a column can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqsAttribute {
    MessageId,
    SentTimestamp,
    ApproximateReceiveCount,
    MessageGroupId,
}

/// A conversion applied to the value before its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Convert {
    Version,
    EpochMs,
    EpochS,
    Ip,
}

/// How a column's value is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    Token(MaskMode),
    Redact,
}

/// What the transform does with a value that looks personal inside an unmasked jsonb column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestPersonal {
    /// Replaced by the mapping's `rest_mask`.
    #[default]
    Mask,
    /// The message is quarantined as `personal_data:COLUMN`.
    Reject,
    /// Stored as sent: the mapping says so explicitly.
    Keep,
}

/// What happens to a document's top-level fields that no column takes (`unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    /// Not stored (counted, and named once in the log): the default.
    #[default]
    Ignore,
    /// Kept in the jsonb column `rest` (added when no column takes `rest`), scanned for
    /// personal data like any unmasked jsonb column.
    Rest,
    /// The message is quarantined as `unknown_field:NAME`: the mapping is a data contract.
    Reject,
}

/// How [`RestPersonal::Mask`] replaces a personal value inside a jsonb column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestMask {
    /// Its `hmac` token, keyed under the column's name: equal values stay joinable.
    #[default]
    Hmac,
    /// `null`: nothing of it is kept.
    Redact,
}

/// Which messages a mapping takes (`match`): a field of the message (a JSON pointer, after
/// the envelope) or an SQS message attribute (under an SNS envelope, the notification's
/// `MessageAttributes` too) that equals one of `values`. Evaluated on each document: an S3
/// notification's records are taken one by one.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub on: MatchOn,
    /// What the field or attribute must be, as text (a string as it is, another JSON value as
    /// JSON writes it: `3`, `true`).
    pub values: Vec<String>,
}

/// What a [`Match`] looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum MatchOn {
    /// A JSON pointer into the (unwrapped) message.
    Field(String),
    /// A field of the envelope (`eventbridge:detail-type`, `sns:Subject`, ...).
    Envelope(String),
    Attribute(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    field: Option<String>,
    attribute: Option<String>,
    equals: Option<toml::Value>,
    #[serde(rename = "in")]
    one_of: Option<Vec<toml::Value>>,
}

impl RawMatch {
    fn check(self) -> Result<Match, String> {
        let on =
            match (self.field, self.attribute) {
                (Some(field), None) => match source(&field) {
                    Ok(Source::Pointer(p)) => MatchOn::Field(p),
                    Ok(Source::Envelope(f)) => MatchOn::Envelope(f),
                    _ => {
                        return Err(format!(
                            "`field = \"{field}\"` is not a JSON pointer (`/type`) or a field of \
                             the envelope (`eventbridge:detail-type`, `sns:Subject`)"
                        ))
                    }
                },
                (None, Some(name)) if !name.is_empty() => MatchOn::Attribute(name),
                _ => return Err(
                    "give either `field` (a JSON pointer) or `attribute` (a message attribute's \
                     name)"
                        .into(),
                ),
            };
        let text = |v: toml::Value| match v {
            toml::Value::String(s) => Ok(s),
            toml::Value::Float(f) if !f.is_finite() => {
                Err("a value must be a finite number, a string or a boolean".into())
            }
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                serde_json::to_value(v)
                    .map(|j| j.to_string())
                    .map_err(|e| e.to_string())
            }
            other => Err(format!(
                "a {} is not a value a field can equal; use a string, number or boolean",
                other.type_str()
            )),
        };
        let values = match (self.equals, self.one_of) {
            (Some(v), None) => vec![text(v)?],
            (None, Some(vs)) if !vs.is_empty() => {
                vs.into_iter().map(text).collect::<Result<_, _>>()?
            }
            _ => return Err("give either `equals` (one value) or `in` (a list of values)".into()),
        };
        Ok(Match { on, values })
    }
}

/// One checked column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub source: Source,
    pub column_type: ColumnType,
    /// The field must be there: absent is `missing_field`, and null `null_field` unless
    /// `nullable`.
    pub required: bool,
    /// A required field may be null (present, but without a value).
    pub nullable: bool,
    pub max_length: Option<u32>,
    pub allowed: Option<Vec<String>>,
    /// Anchored: the whole value must match.
    pub pattern: Option<regex_lite::Regex>,
    pub min: Option<Bound>,
    pub max: Option<Bound>,
    pub convert: Option<Convert>,
    pub mask: Option<Mask>,
    pub mask_scope: String,
    /// The field the column takes is named as personal data is (`/customer/name`,
    /// `/contact_email`): in a scanned jsonb column, every value it holds is personal.
    pub named_personal: bool,
    /// The name its reason codes give (`missing_field:NAME`): the column's, or under
    /// `reason_names = "field"` the field its pointer names.
    pub reason_name: String,
    /// Codes of its own for some of its faults (`reasons`): `(what, code)`.
    pub reasons: Vec<(String, String)>,
}

/// The faults a column is refused for, by stage: what a message of several faults is refused
/// for is the first column's fault of the earliest stage (see `Column::stage`).
const REASONS_BY_STAGE: [&[&str]; 3] = [
    &[
        "missing_field",
        "null_field",
        "wrong_type",
        "duplicate_field",
    ],
    &["nul_character", "too_long", "not_allowed", "no_match"],
    &["invalid_value", "out_of_range", "personal_data"],
];

impl Column {
    /// The code of one of its faults (`what`: `missing_field`, `invalid_value`, ...).
    pub fn reason(&self, what: &str) -> String {
        match self.reasons.iter().find(|(w, _)| w == what) {
            Some((_, code)) => code.clone(),
            None => format!("{what}:{}", self.reason_name),
        }
    }

    /// The stage of one of its reason codes: 0 the form of the field (missing, null, of
    /// another type, given twice), 1 the value as sent, 2 what it makes.
    pub fn stage(&self, reason: &str) -> u8 {
        (0u8..)
            .zip(REASONS_BY_STAGE)
            .find(|(_, whats)| whats.iter().any(|what| self.reason(what) == reason))
            .map_or(2, |(stage, _)| stage)
    }
}

/// How reason codes name a column: by the column (`missing_field:masked_ip`), or by the field
/// its pointer names (`missing_field:ip`; a column of another source keeps its own name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonNames {
    #[default]
    Column,
    Field,
}

/// A `min` or `max`: its exact decimal text (what whole numbers and numerics are compared
/// with, digit by digit) and its nearest double (what real and double precision values are
/// compared with). A TOML integer is exact; a TOML float is the double it denotes (write a
/// bound of more than 15 significant digits as a string, `max = "12345678901234567.89"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    pub text: String,
    pub float: f64,
}

/// A bound as written: an integer, a float or a decimal string.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawBound {
    Integer(i64),
    Float(f64),
    Text(String),
}

impl RawBound {
    fn check(self) -> Result<Bound, String> {
        match self {
            RawBound::Integer(i) => Ok(Bound {
                text: i.to_string(),
                float: i as f64,
            }),
            RawBound::Float(f) if f.is_finite() => Ok(Bound {
                text: f.to_string(),
                float: f,
            }),
            RawBound::Float(_) => Err("a bound must be a finite number".into()),
            RawBound::Text(text) => {
                let plain = super::column::compare_decimals(&text, "0").is_some();
                match text.trim().parse::<f64>() {
                    Ok(float) if plain => Ok(Bound {
                        text: text.trim().to_owned(),
                        float,
                    }),
                    _ => Err(format!(
                        "`{text}` is not a plain decimal (digits, an optional sign and point)"
                    )),
                }
            }
        }
    }
}

/// A checked mapping: the target table and its columns, in the file's order.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// `schema.table` or `table`, as written.
    pub table: String,
    pub envelope: Envelope,
    pub columns: Vec<Column>,
    /// Which messages it takes (`match`); all of its queue's when `None`.
    pub matcher: Option<Match>,
    /// What happens to personal-looking values inside unmasked jsonb columns.
    pub rest_personal: RestPersonal,
    /// How they are masked under [`RestPersonal::Mask`].
    pub rest_mask: RestMask,
    /// How rows reach the table: appended, or resolved by key (`write`, `delete`).
    pub write: super::write::Write,
    /// The queue it reads (`queue`, a URL or a name, checked where settings are); the run's
    /// queue when `None`.
    pub queue: Option<String>,
    /// What happens to top-level fields no column takes.
    pub unknown: Unknown,
    /// Top-level keys some pointer starts with (what `rest` leaves out).
    pub(super) taken: HashSet<String>,
    /// The columns' indices in the order their faults are looked for (`check_order`, then
    /// the others in the file's order).
    pub(super) check_order: Vec<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    table: String,
    #[serde(default)]
    envelope: Envelope,
    #[serde(rename = "match")]
    matcher: Option<RawMatch>,
    #[serde(default)]
    rest_personal: RestPersonal,
    #[serde(default)]
    rest_mask: RestMask,
    #[serde(default)]
    unknown: Unknown,
    #[serde(default)]
    reason_names: ReasonNames,
    check_order: Option<Vec<String>>,
    write: Option<super::write::RawWrite>,
    delete: Option<RawMatch>,
    queue: Option<String>,
    columns: Vec<RawColumn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    name: String,
    #[serde(rename = "type")]
    column_type: String,
    from: Option<String>,
    value: Option<toml::Value>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    nullable: bool,
    max_length: Option<u32>,
    allowed: Option<Vec<String>>,
    pattern: Option<String>,
    min: Option<RawBound>,
    max: Option<RawBound>,
    convert: Option<Convert>,
    mask: Option<String>,
    mask_scope: Option<String>,
    #[serde(default)]
    reasons: std::collections::BTreeMap<String, String>,
}

/// A mistake in a mapping file: where, and what to do about it. Never holds a value from a
/// message (a mapping holds none), only the file's own text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MappingError(pub String);

/// PostgreSQL's longest identifier, in bytes.
const MAX_IDENTIFIER: usize = 63;

fn identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTIFIER
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl Mapping {
    /// Parses and checks a mapping file's text.
    pub fn parse(text: &str) -> Result<Mapping, MappingError> {
        let raw: RawMapping = toml::from_str(text)
            .map_err(|e| MappingError(crate::toml_error::describe(text, &e)))?;
        check_table(&raw.table)?;
        let matcher = check_match(raw.matcher, "match", raw.envelope)?;
        let delete = check_match(raw.delete, "delete", raw.envelope)?;
        if raw.columns.is_empty() {
            return Err(MappingError(
                "key `columns`: a mapping needs at least one column".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut columns = raw
            .columns
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.check(i, raw.envelope, &mut names))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(rest) = rest_column(raw.unknown, &columns, &names)? {
            columns.push(rest);
        }
        no_unmasked_copy(&columns)?;
        name_reasons(&mut columns, raw.reason_names);
        let check_order = check_order(raw.check_order, &columns)?;
        let write =
            super::write::RawWrite::check(raw.write, delete, &mut columns).map_err(MappingError)?;
        let taken = taken_fields(&columns, &matcher, &write.delete);
        Ok(Mapping {
            table: raw.table,
            envelope: raw.envelope,
            columns,
            matcher,
            rest_personal: raw.rest_personal,
            rest_mask: raw.rest_mask,
            unknown: raw.unknown,
            write,
            queue: raw
                .queue
                .map(|q| q.trim().to_owned())
                .filter(|q| !q.is_empty()),
            taken,
            check_order,
        })
    }

    /// Gives a token column another mode (the built-in login mapping's modes are the run's
    /// settings). The mode must fit the column, as the file's own would (an ipcrypt mode on
    /// an address only); `false` when no column of the name makes tokens.
    pub fn set_mask_mode(&mut self, column: &str, mode: MaskMode) -> bool {
        let Some(c) = self
            .columns
            .iter_mut()
            .find(|c| c.name == column && matches!(c.mask, Some(Mask::Token(_))))
        else {
            return false;
        };
        let fits = mask_fits(Some(Mask::Token(mode)), c.column_type, c.convert, &c.source);
        if fits.is_err() {
            return false;
        }
        c.mask = Some(Mask::Token(mode));
        true
    }

    /// The masked columns and their scopes (what the key bookkeeping records).
    pub fn masked(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.mask.is_some())
    }

    /// The unmasked jsonb columns whose values are scanned for personal data (none under
    /// `rest_personal = "keep"`).
    pub fn scanned(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(move |c| {
            self.rest_personal != RestPersonal::Keep
                && c.mask.is_none()
                && c.column_type == ColumnType::Jsonb
        })
    }
}

/// `table`: `schema.table` or `table`, in names sqs2pg writes to.
fn check_table(table: &str) -> Result<(), MappingError> {
    let table_ok = match table.split_once('.') {
        Some((schema, table)) => identifier(schema) && identifier(table),
        None => identifier(table),
    };
    if !table_ok {
        return Err(MappingError(format!(
            "key `table`: `{}` is not a table name sqs2pg writes to; use lower-case letters, \
             digits and `_`, as `schema.table` or `table`",
            table
        )));
    }
    Ok(())
}

/// `match` or `delete` (`key`), checked: an envelope field it names must be the envelope's.
fn check_match(
    raw: Option<RawMatch>,
    key: &str,
    envelope: Envelope,
) -> Result<Option<Match>, MappingError> {
    let matcher = raw
        .map(RawMatch::check)
        .transpose()
        .map_err(|e| MappingError(format!("key `{key}`: {e}")))?;
    if let Some(Match {
        on: MatchOn::Envelope(field),
        ..
    }) = &matcher
    {
        envelope_has(envelope, field).map_err(|wanted| {
            MappingError(format!(
                "key `{key}`: `{field}` is a field of the {wanted} envelope; set `envelope = \"{wanted}\"` or match on another field"
            ))
        })?;
    }
    Ok(matcher)
}

impl RawColumn {
    /// One column of the file, checked: its name (not one of `names`, the columns before it),
    /// type, source, mask, checks and conversion, each mistake named with the column's place.
    fn check(
        self,
        i: usize,
        envelope: Envelope,
        names: &mut HashSet<String>,
    ) -> Result<Column, MappingError> {
        let mut c = self;
        let at = format!("column {} (`{}`)", i + 1, c.name);
        let fail = |what: String| MappingError(format!("{at}: {what}"));
        if !identifier(&c.name) {
            return Err(fail(
                "key `name`: use lower-case letters, digits and `_` (at most 63 bytes), \
                 starting with a letter or `_`"
                    .into(),
            ));
        }
        if !names.insert(c.name.clone()) {
            return Err(fail("key `name`: this column is mapped twice".into()));
        }
        let column_type =
            ColumnType::parse(&c.column_type).map_err(|e| fail(format!("key `type`: {e}")))?;
        let source = c.source(envelope).map_err(fail)?;
        let mask = parse_mask(c.mask.as_deref()).map_err(fail)?;
        mask_fits(mask, column_type, c.convert, &source).map_err(fail)?;
        let (min, max) = c.bounds(column_type).map_err(fail)?;
        let pattern = match &c.pattern {
            None => None,
            Some(p) => Some(
                regex_lite::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| fail(format!("key `pattern`: {e}")))?,
            ),
        };
        convert_fits(c.convert, column_type).map_err(fail)?;
        check_scope(c.mask_scope.as_deref(), mask).map_err(fail)?;
        if c.nullable && !c.required {
            return Err(fail(
                "key `nullable`: a column that is not `required` takes null already; \
                 remove `nullable`, or add `required = true` for a field that must be \
                 present but may be null"
                    .into(),
            ));
        }
        let reasons = check_reasons(std::mem::take(&mut c.reasons)).map_err(fail)?;
        let mask_scope = c.mask_scope.unwrap_or_else(|| c.name.clone());
        // Any step of the pointer: `/address/lines` is an address's.
        let named_personal = match &source {
            Source::Pointer(p) => p
                .split('/')
                .skip(1)
                .any(|step| super::personal::name(&unescape(step))),
            _ => false,
        };
        Ok(Column {
            reason_name: c.name.clone(),
            name: c.name,
            source,
            column_type,
            required: c.required,
            nullable: c.nullable,
            max_length: c.max_length,
            allowed: c.allowed,
            pattern,
            min,
            max,
            convert: c.convert,
            mask,
            mask_scope,
            named_personal,
            reasons,
        })
    }

    /// `from` or `value`: exactly one, and an envelope field only of the file's envelope.
    fn source(&self, envelope: Envelope) -> Result<Source, String> {
        let source = match (&self.from, &self.value) {
            (Some(from), None) => source(from).map_err(|e| format!("key `from`: {e}"))?,
            (None, Some(value)) => Source::Constant(
                serde_json::to_value(value).map_err(|e| format!("key `value`: {e}"))?,
            ),
            _ => {
                return Err(
                    "give either `from` (where the value comes from) or `value` (a constant)"
                        .into(),
                )
            }
        };
        if let Source::Envelope(field) = &source {
            envelope_has(envelope, field).map_err(|wanted| {
                format!(
                    "key `from`: `{field}` is a field of the {wanted} envelope; set `envelope = \"{wanted}\"` or take another source"
                )
            })?;
        }
        Ok(source)
    }

    /// `min` and `max` (taken out of the column): only on numbers (or versions), and not crossed.
    fn bounds(
        &mut self,
        column_type: ColumnType,
    ) -> Result<(Option<Bound>, Option<Bound>), String> {
        if (self.min.is_some() || self.max.is_some())
            && !column_type.is_numeric()
            && self.convert != Some(Convert::Version)
        {
            return Err(format!(
                "keys `min` / `max` bound numbers; {column_type} is not a number type"
            ));
        }
        let check = |bound: Option<RawBound>, key: &str| {
            bound
                .map(RawBound::check)
                .transpose()
                .map_err(|e| format!("key `{key}`: {e}"))
        };
        let min = check(self.min.take(), "min")?;
        let max = check(self.max.take(), "max")?;
        if let (Some(min), Some(max)) = (&min, &max) {
            if super::column::compare_decimals(&min.text, &max.text)
                == Some(std::cmp::Ordering::Greater)
            {
                return Err("`min` is above `max`".into());
            }
        }
        Ok((min, max))
    }
}

/// A column's `reasons`: each a fault it can be refused for, given a code of its own (letters,
/// digits, `_` and `:`; it is stored and counted, so it holds nothing of a message).
fn check_reasons(
    reasons: std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, String> {
    let known: Vec<&str> = REASONS_BY_STAGE.concat();
    reasons
        .into_iter()
        .map(|(what, code)| {
            if !known.contains(&what.as_str()) {
                return Err(format!(
                    "key `reasons`: `{what}` is not a fault of a column; one of {}",
                    known.join(", ")
                ));
            }
            let plain = code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b':');
            if code.is_empty() || code.len() > 64 || !plain {
                return Err(format!(
                    "key `reasons`: `{what}` = `{code}` is not a reason code; use 1 to 64 \
                     lower-case letters, digits, `_` and `:`"
                ));
            }
            Ok((what, code))
        })
        .collect()
}

/// Under `reason_names = "field"`, each column's reason codes name the field its pointer
/// names (the pointer without its leading `/`); a column of another source keeps its name.
fn name_reasons(columns: &mut [Column], names: ReasonNames) {
    if names == ReasonNames::Column {
        return;
    }
    for column in columns {
        if let Source::Pointer(p) = &column.source {
            if let Some(field) = p.strip_prefix('/') {
                column.reason_name = field.to_owned();
            }
        }
    }
}

/// `check_order`: column names, each once, looked for first; the others follow in the file's
/// order.
fn check_order(names: Option<Vec<String>>, columns: &[Column]) -> Result<Vec<usize>, MappingError> {
    let mut order = Vec::with_capacity(columns.len());
    for name in names.unwrap_or_default() {
        let Some(at) = columns.iter().position(|c| c.name == name) else {
            return Err(MappingError(format!(
                "key `check_order`: `{name}` is not a column of this mapping; name columns \
                 by their `name`"
            )));
        };
        if order.contains(&at) {
            return Err(MappingError(format!(
                "key `check_order`: `{name}` is named twice; name each column once"
            )));
        }
        order.push(at);
    }
    let rest: Vec<usize> = (0..columns.len()).filter(|i| !order.contains(i)).collect();
    order.extend(rest);
    Ok(order)
}

/// `mask`: one of the masks sqs2pg knows.
fn parse_mask(mask: Option<&str>) -> Result<Option<Mask>, String> {
    Ok(match mask {
        None => None,
        Some("redact") => Some(Mask::Redact),
        Some("hmac") => Some(Mask::Token(MaskMode::Hmac)),
        Some("siv") => Some(Mask::Token(MaskMode::Siv)),
        Some("ipcrypt") => Some(Mask::Token(MaskMode::Ipcrypt)),
        Some("ipcrypt-pfx") => Some(Mask::Token(MaskMode::IpcryptPfx)),
        Some(other) => {
            return Err(format!(
                "key `mask`: `{other}` is not a mask; one of hmac, siv, ipcrypt, \
                 ipcrypt-pfx, redact"
            ))
        }
    })
}

/// A mask's tokens fit the column: IP-only modes on addresses, tokens in text wide enough,
/// `rest` only in jsonb, and no token of a value that is never text.
fn mask_fits(
    mask: Option<Mask>,
    column_type: ColumnType,
    convert: Option<Convert>,
    source: &Source,
) -> Result<(), String> {
    let is_ip = convert == Some(Convert::Ip) || column_type == ColumnType::Inet;
    match mask {
        Some(Mask::Token(mode)) if mode.is_ip_only() => {
            if !is_ip {
                return Err(format!(
                    "key `mask`: {mode} encrypts IP addresses only; add \
                     `convert = \"ip\"` or use hmac or siv"
                ));
            }
            if !(column_type.is_text() || column_type == ColumnType::Inet) {
                return Err(format!(
                    "key `type`: {mode} tokens are addresses: use inet, text or varchar"
                ));
            }
        }
        Some(Mask::Token(mode)) if !column_type.is_text() => {
            return Err(format!(
                "key `type`: {mode} tokens are text: use text or varchar(256)"
            ));
        }
        Some(Mask::Token(_)) => {
            if let ColumnType::Varchar(n) = column_type {
                if n < 256 {
                    return Err(format!(
                        "key `type`: tokens take up to 256 characters; varchar({n}) \
                         would refuse some, use varchar(256) or text"
                    ));
                }
            }
        }
        _ => {}
    }
    if *source == Source::Rest && column_type != ColumnType::Jsonb {
        return Err(format!(
            "key `type`: `rest` is an object of fields, which only jsonb holds; use \
             jsonb, not {column_type}"
        ));
    }
    let never_text = match source {
        Source::Sqs(SqsAttribute::SentTimestamp | SqsAttribute::ApproximateReceiveCount) => true,
        Source::Constant(value) => !value.is_string(),
        _ => false,
    };
    if matches!(mask, Some(Mask::Token(_))) && never_text {
        return Err(
            "key `mask`: tokens are made of the text as sent, and this value is a \
             number, never text, so every message would be refused; use `redact`, or \
             no mask"
                .into(),
        );
    }
    Ok(())
}

/// `convert`: epoch conversions make dates and timestamps, `version` an integer.
fn convert_fits(convert: Option<Convert>, column_type: ColumnType) -> Result<(), String> {
    if let Some(Convert::EpochMs | Convert::EpochS) = convert {
        if !matches!(
            column_type,
            ColumnType::Date | ColumnType::Timestamptz | ColumnType::Timestamp
        ) {
            return Err(
                "key `convert`: epoch_ms and epoch_s make dates and timestamps; \
                 use date, timestamptz or timestamp"
                    .into(),
            );
        }
    }
    if convert == Some(Convert::Version)
        && !matches!(column_type, ColumnType::Integer | ColumnType::BigInt)
    {
        return Err("key `convert`: version makes an integer; use integer or bigint".into());
    }
    Ok(())
}

/// `mask_scope`: a short name of safe characters, on a mask that makes tokens.
fn check_scope(scope: Option<&str>, mask: Option<Mask>) -> Result<(), String> {
    let Some(scope) = scope else { return Ok(()) };
    let ok = !scope.is_empty()
        && scope.len() <= 63
        && scope
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
    if !ok {
        return Err(
            "key `mask_scope`: use lower-case letters, digits, `_` and `-` (at most 63)".into(),
        );
    }
    if !matches!(mask, Some(Mask::Token(_))) {
        return Err("key `mask_scope` needs a `mask` that makes tokens".into());
    }
    Ok(())
}

/// Under `unknown = "rest"`, the jsonb column `rest` that keeps the unknown fields, when no
/// column takes `rest` already.
fn rest_column(
    unknown: Unknown,
    columns: &[Column],
    names: &HashSet<String>,
) -> Result<Option<Column>, MappingError> {
    // `unknown = "rest"` keeps them in a `rest` column: the one the mapping has, or one
    // added here.
    if unknown == Unknown::Rest && !columns.iter().any(|c| c.source == Source::Rest) {
        if names.contains("rest") {
            return Err(MappingError(
                "key `unknown`: \"rest\" keeps unknown fields in a jsonb column named `rest`, \
                 and column `rest` takes something else; add a column with `from = \"rest\"` \
                 under another name"
                    .into(),
            ));
        }
        return Ok(Some(Column {
            name: "rest".into(),
            source: Source::Rest,
            column_type: ColumnType::Jsonb,
            required: false,
            nullable: false,
            max_length: None,
            allowed: None,
            pattern: None,
            min: None,
            max: None,
            convert: None,
            mask: None,
            mask_scope: "rest".into(),
            named_personal: false,
            reason_name: "rest".into(),
            reasons: Vec::new(),
        }));
    }
    Ok(None)
}

/// No unmasked column may hold what a masked one masks: the whole body, or a parent of the
/// masked field.
fn no_unmasked_copy(columns: &[Column]) -> Result<(), MappingError> {
    for masked in columns.iter().filter(|c| c.mask.is_some()) {
        let Source::Pointer(inner) = &masked.source else {
            continue;
        };
        for other in columns.iter().filter(|c| c.mask.is_none()) {
            let holds = match &other.source {
                Source::Body => true,
                Source::Pointer(outer) => {
                    outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}/"))
                }
                _ => false,
            };
            if holds {
                return Err(MappingError(format!(
                    "column `{}`: key `from` would store, unmasked, what column `{}` masks; point below it, or mask this column too",
                    other.name, masked.name
                )));
            }
        }
    }
    Ok(())
}

/// The top-level fields some pointer starts with, the match's and the delete's included: not
/// `rest`, not unknown.
fn taken_fields(
    columns: &[Column],
    matcher: &Option<Match>,
    delete: &Option<Match>,
) -> HashSet<String> {
    let field_of = |m: &Option<Match>| match m {
        Some(Match {
            on: MatchOn::Field(p),
            ..
        }) => first_token(p),
        _ => None,
    };
    let match_field = field_of(matcher).into_iter().chain(field_of(delete));
    columns
        .iter()
        .filter_map(|c| match &c.source {
            Source::Pointer(p) => first_token(p),
            _ => None,
        })
        .chain(match_field)
        .collect()
}

/// Whether `envelope` has the field `field` (`sns:Subject`, `eventbridge:detail-type`); if
/// not, the envelope that has it.
fn envelope_has(envelope: Envelope, field: &str) -> Result<(), String> {
    let wanted = field.split(':').next().unwrap_or_default();
    let given = match envelope {
        Envelope::Sns => "sns",
        Envelope::Eventbridge => "eventbridge",
        Envelope::S3 | Envelope::None => "",
    };
    if wanted == given {
        Ok(())
    } else {
        Err(wanted.to_owned())
    }
}

/// The first reference token of a pointer, unescaped (`/a~1b/c` gives `a/b`).
fn first_token(pointer: &str) -> Option<String> {
    let rest = pointer.strip_prefix('/')?;
    let token = rest.split('/').next().unwrap_or(rest);
    Some(unescape(token))
}

/// A pointer's reference token as the key it names (`a~1b` is `a/b`, RFC 6901).
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn source(from: &str) -> Result<Source, String> {
    if from.is_empty() || from.starts_with('/') {
        let mut escapes = from.split('~').skip(1);
        if escapes.any(|after| !after.starts_with(['0', '1'])) {
            return Err(format!(
                "`{from}` is not a JSON pointer: `~` must be followed by 0 or 1"
            ));
        }
        return Ok(Source::Pointer(from.to_owned()));
    }
    match from {
        "body" => return Ok(Source::Body),
        "rest" => return Ok(Source::Rest),
        "sqs:MessageId" => return Ok(Source::Sqs(SqsAttribute::MessageId)),
        "sqs:SentTimestamp" => return Ok(Source::Sqs(SqsAttribute::SentTimestamp)),
        "sqs:ApproximateReceiveCount" => {
            return Ok(Source::Sqs(SqsAttribute::ApproximateReceiveCount))
        }
        "sqs:MessageGroupId" => return Ok(Source::Sqs(SqsAttribute::MessageGroupId)),
        _ => {}
    }
    if let Some(name) = from.strip_prefix("attr:").filter(|n| !n.is_empty()) {
        return Ok(Source::Attribute(name.to_owned()));
    }
    if let Some(field) = from.strip_prefix("sns:").filter(|f| SNS_FIELDS.contains(f)) {
        return Ok(Source::Envelope(format!("sns:{field}")));
    }
    if let Some(field) = from
        .strip_prefix("eventbridge:")
        .filter(|f| EVENTBRIDGE_FIELDS.contains(f))
    {
        return Ok(Source::Envelope(format!("eventbridge:{field}")));
    }
    Err(format!(
        "`{from}` is not a source; a JSON pointer (`/order/id`), `body`, `rest`, \
         `sqs:MessageId`, `sqs:SentTimestamp`, `sqs:ApproximateReceiveCount`, \
         `sqs:MessageGroupId`, `attr:NAME`, `sns:{{{}}}` or `eventbridge:{{{}}}`",
        SNS_FIELDS.join(","),
        EVENTBRIDGE_FIELDS.join(","),
    ))
}

#[cfg(test)]
mod tests;
