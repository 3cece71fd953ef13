//! A mapping applied to one message: the envelope unwrapped, each column's value found,
//! converted, checked and masked, giving rows ([`MappedRow`], masked by construction) or one
//! [`Rejection`] with a stable reason code naming the column. Pure: no I/O, no clock.
//!
//! Reason codes: `not_json`, `invalid_utf16_escape` (a string a column or `match` reads holds a
//! lone surrogate escape; where serde_json's reader stops at it), `not_an_object` (a document
//! that is not an object, for a mapping that reads its fields), `not_an_envelope:{sns,
//! eventbridge,s3}`, `no_mapping` (the mapping's `match` takes none of the message's
//! documents), and per column `missing_field:COL`, `null_field:COL`, `wrong_type:COL`,
//! `duplicate_field:COL` (its field, or one above it, given twice), `invalid_value:COL`,
//! `out_of_range:COL`, `too_long:COL`, `nul_character:COL`, `not_allowed:COL`, `no_match:COL`,
//! `personal_data:COL` (something personal bound for a jsonb column under
//! `rest_personal = "reject"`; see `transform/scrub.rs`), and `unknown_field:NAME` (a top-level
//! field no column takes, under `unknown = "reject"`; `unknown_field` when the name looks like
//! data). COL is the column's name, or its field's under `reason_names = "field"`; a column's
//! `reasons` may give a code of its own instead. Details name kinds, lengths, bounds and
//! pointers, never a value from the message.
//!
//! A message of several faults is refused for one: the first, in the mapping's check order, of
//! the earliest stage (the field's form: missing, null, of another type, given twice; then the
//! value as sent; then what it makes; a mask's refusal last). So the built-in login mapping
//! gives the login pipeline's reasons, however its table's columns are laid out.
//!
//! A message is read, not parsed whole (`document`): what no column reads is only checked to
//! be JSON, so a field nested deeper than serde_json's recursion limit, or a string with an
//! unpaired surrogate escape, refuses the message only where it is read: as the column's
//! `invalid_value` where a column takes a deep value whole, as `invalid_utf16_escape` where a
//! column or a `match` reads such a string. The tree engine refused either anywhere as
//! `not_json`.
//!
//! It also counts the top-level fields no column's pointer takes (they go to `rest`, or
//! nowhere), and names each the first time it is seen, so the pipeline can log the names once.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value as Json};
use time::OffsetDateTime;

use super::column::{compare_decimals, ColumnType, Fault, Value};
use super::convert::{chars_beyond, convert_found, jsonb, text, unreadable};
use super::document::{self, Document, Found, Plan, Unreadable};
use super::file::{
    Bound, Column, Convert, Envelope, Mapping, MappingError, Mask, Match, MatchOn, RestPersonal,
    Source, SqsAttribute, Unknown, EVENTBRIDGE_FIELDS, SNS_FIELDS,
};
use crate::app_version::AppVersion;
use crate::app_version::AppVersionError;
use crate::keys::MaskKey;
use crate::kind::{CopyRows, Message, MessageKind, Rejection, Transformed};
use crate::mask::{ColumnMask, MaskMode};
use serde_json::value::RawValue;
use smallvec::{smallvec, SmallVec};

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
    /// Whether a document that is not an object is refused (`not_an_object`): the mapping
    /// reads fields of the document, and neither takes it whole nor reads an array's element.
    objects_only: bool,
    /// What it reads of a document (shared by the mappers of one queue), and where.
    plan: Arc<Plan>,
    slots: Slots,
    /// In column order: how a column's common value is made without the general path.
    shortcuts: Vec<Shortcut>,
    /// The unknown field names already reported, shared by the mapper's clones.
    reported: Arc<Mutex<HashSet<String>>>,
    /// Whether unknown fields are named (once each), or only counted.
    names_unknown: bool,
}

/// Where a mapper's pointers are in its plan's documents.
#[derive(Debug, Clone, Default)]
pub(super) struct Slots {
    /// In column order: the slot of a column whose value is the document's (a pointer, or
    /// the whole document).
    columns: Vec<Option<usize>>,
    matcher: Option<usize>,
    delete: Option<usize>,
}

impl Slots {
    fn of(mapping: &Mapping, plan: &mut Plan) -> Self {
        let mut field = |m: &Option<Match>| match m {
            Some(Match {
                on: MatchOn::Field(p),
                ..
            }) => plan.slot(p),
            _ => None,
        };
        let (matcher, delete) = (field(&mapping.matcher), field(&mapping.write.delete));
        let columns = mapping
            .columns
            .iter()
            .map(|c| match &c.source {
                Source::Pointer(p) => plan.slot(p),
                Source::Body => plan.slot(""),
                _ => None,
            })
            .collect();
        Self {
            columns,
            matcher,
            delete,
        }
    }
}

impl Mapper {
    /// Derives every masked column's subkey (per scope and mode) from `key`.
    pub fn new(mapping: Mapping, key: &MaskKey) -> Self {
        let mut plan = Plan::default();
        let mut mapper = Self::planned(mapping, key, &mut plan);
        mapper.plan = Arc::new(plan);
        mapper
    }

    /// A mapper whose pointers are added to `plan` (shared with other mappers: one reading of
    /// a message for all); its own plan is set by the caller once every mapper has been added.
    pub(super) fn planned(mapping: Mapping, key: &MaskKey, plan: &mut Plan) -> Self {
        let slots = Slots::of(&mapping, plan);
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
        let objects_only = !takes_all && reads_fields_only(&mapping);
        let mut types: Vec<_> = mapping
            .columns
            .iter()
            .map(|c| super::encode::wire_type(c.column_type))
            .collect();
        if mapping.write.keyed() {
            use tokio_postgres::types::Type;
            types.extend([Type::BOOL, Type::INT8, Type::TEXT]);
        }
        let shortcuts = mapping
            .columns
            .iter()
            .zip(&masks)
            .map(|(c, m): (&Column, &Option<ColumnMask>)| Shortcut::of(c, m.is_some()))
            .collect();
        Self {
            mapping,
            masks,
            types,
            takes_all,
            objects_only,
            plan: Arc::default(),
            slots,
            shortcuts,
            reported: Arc::default(),
            names_unknown: true,
        }
    }

    /// A mapper that counts unknown fields but names none (the built-in login's: its
    /// messages' extra keys could be data, and it never logged one).
    pub fn counting_unknown_only(mut self) -> Self {
        self.names_unknown = false;
        self
    }

    /// Gives it the plan its slots are in (see [`Mapper::planned`]).
    pub(super) fn set_plan(&mut self, plan: Arc<Plan>) {
        self.plan = plan;
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
        let rows = self.apply_to(message, |doc| {
            if !self.takes_all {
                self.count_unknown(doc, &mut unknown)
            }
        });
        (rows, unknown.0, unknown.1)
    }

    /// Maps one message: unwraps its envelope, reads its documents and takes them (see
    /// [`Mapper::take`]); a message none of whose documents the `match` takes is `no_mapping`.
    fn apply_to(
        &self,
        message: &Message<'_>,
        seen: impl FnMut(&Document<'_>),
    ) -> Result<Vec<MappedRow>, Rejection> {
        let (texts, fields) = unwrap(self.mapping.envelope, message.body)?;
        let documents = read(&self.plan, self.mapping.envelope, &texts)?;
        self.take(&documents, &fields, message, seen)?
            .ok_or_else(|| self.mapping.not_taken())
    }

    /// The plan its slots are in.
    pub(super) fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    fn count_unknown(&self, doc: &Document<'_>, (count, new): &mut (u32, Vec<String>)) {
        if !self.names_unknown {
            *count += doc.unknown(&self.mapping.taken).len() as u32;
            return;
        }
        let mut reported = None;
        for key in doc.unknown(&self.mapping.taken) {
            *count += 1;
            let reported = reported.get_or_insert_with(|| {
                self.reported
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            });
            // Looked up before inserting: a name seen before costs no allocation.
            if reported.len() < UNKNOWN_NAMES_REMEMBERED
                && !reported.contains(key)
                && reported.insert(key.to_owned())
            {
                // A key that is itself data (an address, an id) is counted, never named.
                new.push(if scrub::safe_name(key) {
                    key.to_owned()
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
        documents: &[Document<'_>],
        fields: &EnvelopeFields,
        message: &Message<'_>,
    ) -> Result<Option<Vec<MappedRow>>, Rejection> {
        self.take(documents, fields, message, |_| {})
    }

    /// The rows of the documents its mapping's `match` takes (all when it has none), each
    /// converted, checked and masked; all or none: one bad document rejects the message.
    /// `None` when there were documents and it took none of them (an S3 test event has none
    /// and gives no row). `seen` is shown each document taken for its values.
    fn take(
        &self,
        documents: &[Document<'_>],
        fields: &EnvelopeFields,
        message: &Message<'_>,
        mut seen: impl FnMut(&Document<'_>),
    ) -> Result<Option<Vec<MappedRow>>, Rejection> {
        let mapping = &self.mapping;
        let slots = &self.slots;
        let deletes = |doc: &Document<'_>| {
            mapping
                .write
                .delete
                .as_ref()
                .is_some_and(|d| takes(d, slots.delete, doc, fields, message))
        };
        let mut rows = Vec::with_capacity(documents.len());
        for doc in documents {
            self.compared_readable(doc)?;
            let delete = deletes(doc);
            // A document the `delete` takes is the mapping's even if its `match` does not
            // name the delete's type.
            if !delete
                && !mapping
                    .matcher
                    .as_ref()
                    .is_none_or(|m| takes(m, slots.matcher, doc, fields, message))
            {
                continue;
            }
            // Refused once taken: another mapping of the queue may take it whole.
            if let Some(kind) = doc.not_object().filter(|_| self.objects_only) {
                return Err(Rejection::new(
                    "not_an_object",
                    format!("top-level value is {kind}"),
                ));
            }
            let columns = mapping.columns.iter().zip(&self.masks).zip(&slots.columns);
            if delete {
                // Only the key and the version name what is deleted; the rest is not read.
                let values = columns
                    .enumerate()
                    .map(|(i, ((column, mask), slot))| {
                        if mapping.write.key.contains(&i) || mapping.write.version == Some(i) {
                            let found = mapping.find(column, *slot, doc, fields, message);
                            mapping.value(column, found, mask.as_ref())
                        } else {
                            Ok(Value::Null)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                rows.push(MappedRow(values, true));
                continue;
            }
            seen(doc);
            self.fields_readable(doc)?;
            if mapping.unknown == Unknown::Reject {
                mapping.refuse_unknown(doc)?;
            }
            // Sized once: a collect through `Result` would start small and grow.
            let mut values = Vec::with_capacity(mapping.columns.len());
            for (((column, mask), slot), shortcut) in columns.zip(&self.shortcuts) {
                // A field's value as the document holds it, for the shortcut (another
                // source's is the general path's).
                let field = slot.and_then(|slot| doc.get(slot));
                let value = match shortcut.make(column, mask.as_ref(), field) {
                    Some(value) => value,
                    None => {
                        let found = mapping.find(column, *slot, doc, fields, message);
                        match mapping.value(column, found, mask.as_ref()) {
                            Ok(value) => value,
                            Err(fault) => return Err(self.first_fault(doc, fields, message, fault)),
                        }
                    }
                };
                values.push(value);
            }
            rows.push(MappedRow(values, false));
        }
        Ok((!rows.is_empty() || documents.is_empty()).then_some(rows))
    }

    /// What a `match` or `delete` compares must be one readable value: a lone surrogate
    /// escape there (or too deep a value) would otherwise quietly be no match, and a delete
    /// an upsert; a field given twice, either.
    fn compared_readable(&self, doc: &Document<'_>) -> Result<(), Rejection> {
        if self.slots.matcher.is_none() && self.slots.delete.is_none() {
            return Ok(());
        }
        let compared = [self.slots.matcher, self.slots.delete]
            .into_iter()
            .flatten();
        if let Some(lone) = doc.lone_surrogate(compared.clone()) {
            return Err(lone);
        }
        for slot in compared {
            match doc.get(slot) {
                Some(Found::Repeated(_)) => {
                    let pointer = self.plan.pointer(slot);
                    return Err(Rejection::new(
                        format!(
                            "duplicate_field:{}",
                            pointer.strip_prefix('/').unwrap_or(pointer)
                        ),
                        "the field is given more than once",
                    ));
                }
                Some(found) => {
                    if let Some(why) = found.unreadable() {
                        return Err(Rejection::new(
                            "not_json",
                            format!("the field a `match` or `delete` compares: {why}"),
                        ));
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// The fields its columns read, before any is judged: a lone surrogate escape (the first
    /// in the text, where serde_json's reader would stop), then a field given twice (the
    /// one given again first in the text).
    #[inline]
    fn fields_readable(&self, doc: &Document<'_>) -> Result<(), Rejection> {
        // One look at each slot: the common document has neither.
        let mut faulty = false;
        for slot in self.slots.columns.iter().flatten() {
            faulty |= matches!(
                doc.get(*slot),
                Some(Found::BadEscape(_) | Found::Repeated(_))
            );
        }
        match faulty {
            true => Err(self.unreadable_field(doc)),
            false => Ok(()),
        }
    }

    /// Which of [`Mapper::fields_readable`]'s faults a document has.
    #[cold]
    fn unreadable_field(&self, doc: &Document<'_>) -> Rejection {
        let slots = &self.slots.columns;
        if let Some(lone) = doc.lone_surrogate(slots.iter().flatten().copied()) {
            return lone;
        }
        let first = (slots.iter().enumerate())
            .filter_map(|(i, slot)| match slot.and_then(|slot| doc.get(slot)) {
                Some(Found::Repeated(at)) => Some((*at, i)),
                _ => None,
            })
            .min();
        let (_, i) = first.expect("a slot held a lone surrogate escape or a repeated field");
        repeated(&self.mapping.columns[i])
    }

    /// The fault a message with a faulty column is refused for (`fault`, the first column's
    /// in the file, when it is the only one): of every column's, in the mapping's check
    /// order, the first fault of the form (a field missing, null or of the wrong type), else
    /// the first of the value as sent (U+0000, too long, not allowed, no match), else the
    /// first of any other kind. A message of several faults is refused for the same one
    /// however its columns are laid out in the table.
    #[cold]
    fn first_fault(
        &self,
        doc: &Document<'_>,
        fields: &EnvelopeFields,
        message: &Message<'_>,
        fault: Rejection,
    ) -> Rejection {
        let mapping = &self.mapping;
        let mut first: Option<(u8, Rejection)> = None;
        for &i in &mapping.check_order {
            let column = &mapping.columns[i];
            let found = mapping.find(column, self.slots.columns[i], doc, fields, message);
            let Err((stage, rejection)) = mapping.staged(column, found, self.masks[i].as_ref())
            else {
                continue;
            };
            if stage == 0 {
                return rejection;
            }
            if first.as_ref().is_none_or(|(before, _)| stage < *before) {
                first = Some((stage, rejection));
            }
        }
        first.map_or(fault, |(_, rejection)| rejection)
    }

    /// What the router asks of each mapping: the encoded rows of the documents it takes of an
    /// unwrapped message (`None`: it takes none), counting the fields it does not know into
    /// `unknown`.
    pub(super) fn take_from(
        &self,
        documents: &[Document<'_>],
        fields: &EnvelopeFields,
        message: &Message<'_>,
        unknown: &mut (u32, Vec<String>),
    ) -> Result<Option<CopyRows>, Rejection> {
        let rows = self.take(documents, fields, message, |doc| {
            if !self.takes_all {
                self.count_unknown(doc, unknown)
            }
        })?;
        rows.map(|rows| self.encode(&rows, message)).transpose()
    }
}

/// How a column's value is made when it is the common case, without the general path's
/// checks that do not apply to the column (see [`Mapping::value`], which makes every other
/// value, and every fault: a shortcut that does not apply gives `None`, and the general path
/// decides). What a shortcut makes is what the general path makes of the same value, as the
/// tests hold it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shortcut {
    /// None: the general path.
    General,
    /// A string stored as text (`max`: the tighter of `max_length` and `varchar(n)`).
    Text { max: Option<u32> },
    /// A version string (`1.2.3`) stored as its integer.
    Version { bigint: bool },
    /// A string's token (of the address it holds, for `ip`) stored as text (`max`: the
    /// `varchar(n)` the token must fit).
    Token { ip: bool, max: Option<u32> },
    /// Any value made into the column's type by its conversion alone (a column with no
    /// check, mask or `convert`, of a type that is neither jsonb nor inet).
    Convert(ColumnType),
}

impl Shortcut {
    fn of(column: &Column, masked: bool) -> Self {
        let checked = column.allowed.is_some()
            || column.pattern.is_some()
            || column.min.is_some()
            || column.max.is_some();
        let varchar = match column.column_type {
            ColumnType::Varchar(n) => Some(n),
            _ => None,
        };
        let text = matches!(
            column.column_type,
            ColumnType::Text | ColumnType::Varchar(_)
        );
        match (column.convert, column.mask) {
            _ if checked => Shortcut::General,
            // The tighter of `max_length` and `varchar(n)` bounds the text.
            (None, None) if text && !masked => Shortcut::Text {
                max: match (column.max_length, varchar) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
            },
            (Some(Convert::Version), None)
                if column.max_length.is_none()
                    && matches!(column.column_type, ColumnType::Integer | ColumnType::BigInt) =>
            {
                Shortcut::Version {
                    bigint: column.column_type == ColumnType::BigInt,
                }
            }
            (convert @ (None | Some(Convert::Ip)), Some(Mask::Token(_))) if text => {
                Shortcut::Token {
                    ip: convert.is_some(),
                    max: varchar,
                }
            }
            (None, None)
                if !masked
                    && column.max_length.is_none()
                    && !matches!(column.column_type, ColumnType::Jsonb | ColumnType::Inet) =>
            {
                Shortcut::Convert(column.column_type)
            }
            _ => Shortcut::General,
        }
    }

    /// The value of a found value, when this shortcut applies to it: `None` leaves it (and
    /// any fault) to the general path.
    #[inline]
    fn make(
        self,
        column: &Column,
        mask: Option<&ColumnMask>,
        found: Option<&Found<'_>>,
    ) -> Option<Value> {
        let within =
            |text: &str, max: Option<u32>| max.is_none_or(|max| text.len() <= max as usize);
        match (self, found?) {
            (Shortcut::General, _) => None,
            // Null (perhaps refused) and an unreadable string are the general path's.
            (Shortcut::Convert(_), Found::Null | Found::BadEscape(_) | Found::Repeated(_)) => None,
            (Shortcut::Convert(column_type), found) => convert_found(found, column_type).ok(),
            (Shortcut::Text { max }, found) => text(found, max).ok().map(Value::Text),
            (Shortcut::Version { bigint }, Found::Str(s)) => {
                let encoded = AppVersion::parse(s).ok()?.encode();
                Some(match bigint {
                    true => Value::BigInt(encoded.into()),
                    false => Value::Integer(encoded),
                })
            }
            (Shortcut::Token { ip, max }, Found::Str(s)) => {
                // `max_length` is on the value as sent, `varchar(n)` on the token. U+0000 is
                // refused in any text as sent; a document's string borrowed from its text
                // has no escape, so none (JSON text holds no raw control character).
                let nul = matches!(s, Cow::Owned(owned) if owned.contains('\0'));
                if !within(s, column.max_length) || nul {
                    return None;
                }
                let token = match ip {
                    true => mask?.mask_ip(s.parse::<IpAddr>().ok()?.to_canonical()),
                    false => mask?.mask_bytes(s.as_bytes()).ok()?,
                };
                let token = token.into_string();
                within(&token, max).then_some(Value::Text(token))
            }
            (Shortcut::Version { .. } | Shortcut::Token { .. }, _) => None,
        }
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

/// Whether `matcher` takes `doc`: the field's (at `slot`) or attribute's value as text (a
/// string as it is, another JSON value as JSON writes it) is one of its values. A missing one
/// takes nothing.
fn takes(
    matcher: &Match,
    slot: Option<usize>,
    doc: &Document<'_>,
    fields: &EnvelopeFields,
    message: &Message<'_>,
) -> bool {
    let is_one = |text: &str| matcher.values.iter().any(|v| v == text);
    match &matcher.on {
        MatchOn::Field(_) => slot
            .and_then(|slot| doc.get(slot))
            .and_then(Found::as_text)
            .is_some_and(|t| is_one(&t)),
        MatchOn::Envelope(field) => fields
            .get(field)
            .map(Found::from_json)
            .is_some_and(|f| f.as_text().is_some_and(|t| is_one(&t))),
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
fn take_fields(
    outer: &[(Cow<'_, str>, &RawValue)],
    kind: &str,
    names: &[&str],
) -> Result<EnvelopeFields, Rejection> {
    names
        .iter()
        .filter_map(|k| document::field(outer, k).map(|v| (k, v)))
        .map(|(k, v)| Ok((format!("{kind}:{k}"), tree(v)?)))
        .collect()
}

/// An envelope's field as a tree (too deep a one is not JSON the tree engine read).
fn tree(raw: &RawValue) -> Result<Json, Rejection> {
    document::tree(raw.get()).map_err(|e| Rejection::unreadable_json(&e, "an envelope field: "))
}

/// The message's body as an object's fields (`None`: another JSON value), or `not_json` with
/// where it stops being JSON.
fn outer(body: &str) -> Result<Option<document::Fields<'_>>, Rejection> {
    document::top_level(body).map_err(|e| Rejection::unreadable_json(&e, ""))
}

/// The texts of the documents an envelope holds (the body, an SNS notification's `Message`,
/// an EventBridge event's `detail`, an S3 notification's records) and its own fields. The
/// body of a bare message is read (and so checked) with its documents.
pub(super) fn unwrap(
    envelope: Envelope,
    body: &str,
) -> Result<(Texts<'_>, EnvelopeFields), Rejection> {
    let not = |what: &str, detail: &str| Rejection::new(format!("not_an_envelope:{what}"), detail);
    match envelope {
        Envelope::None => Ok((smallvec![Cow::Borrowed(body)], Map::new())),
        Envelope::Sns => {
            let Some(outer) = outer(body)? else {
                return Err(not("sns", "the body is not an object"));
            };
            let inner = match document::field(&outer, "Message").map(Found::from_raw) {
                Some(Found::Str(inner)) => inner,
                Some(Found::BadEscape(_)) => {
                    return Err(Rejection::new(
                        "not_json",
                        "the SNS `Message`: a lone surrogate escape",
                    ))
                }
                _ => return Err(not("sns", "no `Message` string")),
            };
            let mut fields = take_fields(&outer, "sns", &SNS_FIELDS)?;
            // The notification's own message attributes, for `match = { attribute = ... }`.
            if let Some(attributes) = document::field(&outer, "MessageAttributes") {
                fields.insert(SNS_ATTRIBUTES.to_owned(), tree(attributes)?);
            }
            Ok((smallvec![inner], fields))
        }
        Envelope::Eventbridge => {
            let Some(outer) = outer(body)? else {
                return Err(not("eventbridge", "the body is not an object"));
            };
            let Some(detail) = document::field(&outer, "detail") else {
                return Err(not("eventbridge", "no `detail`"));
            };
            Ok((
                smallvec![Cow::Borrowed(detail.get())],
                take_fields(&outer, "eventbridge", &EVENTBRIDGE_FIELDS)?,
            ))
        }
        Envelope::S3 => {
            let Some(outer) = outer(body)? else {
                return Err(not("s3", "the body is not an object"));
            };
            if document::field(&outer, "Event")
                .map(Found::from_raw)
                .is_some_and(|e| e.as_str() == Some("s3:TestEvent"))
            {
                return Ok((Texts::new(), Map::new()));
            }
            let records = document::field(&outer, "Records")
                .and_then(|r| serde_json::from_str::<Vec<&RawValue>>(r.get()).ok());
            match records {
                Some(records) => Ok((
                    records
                        .into_iter()
                        .map(|r| Cow::Borrowed(r.get()))
                        .collect(),
                    Map::new(),
                )),
                None => Err(not("s3", "no `Records` array")),
            }
        }
    }
}

/// The texts of an unwrapped message's documents: one but for an S3 notification's.
pub(super) type Texts<'a> = SmallVec<[Cow<'a, str>; 1]>;

/// The documents of an unwrapped message, read as `plan` says.
pub(super) fn read<'t>(
    plan: &Plan,
    envelope: Envelope,
    texts: &'t [Cow<'_, str>],
) -> Result<SmallVec<[Document<'t>; 1]>, Rejection> {
    let context = match envelope {
        Envelope::Sns => "the SNS `Message`: ",
        _ => "",
    };
    // Pushed one by one: a document is a few hundred bytes, which a collect through
    // `Result` would move more than once.
    let mut documents = SmallVec::new();
    for text in texts {
        documents.push(Document::read(plan, text, context)?);
    }
    Ok(documents)
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
            let (nothing, no_fields) = (Document::empty(), Map::new());
            let found = self.find(column, None, &nothing, &no_fields, &probe);
            if let Err(rejection) = self.value(column, found, None) {
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

    /// Under `unknown = "reject"`: the first top-level field of `doc` no column takes, as
    /// `unknown_field:NAME` (a name that looks like data is not written into the reason).
    fn refuse_unknown(&self, doc: &Document<'_>) -> Result<(), Rejection> {
        let takes_all = self.columns.iter().any(|c| {
            matches!(&c.source, Source::Body) || c.source == Source::Pointer(String::new())
        });
        match doc.unknown(&self.taken).first() {
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

    /// A column's found value (see [`Mapping::find`]) converted, checked and masked
    /// ([`Mapping::convert_column`]), and what it makes checked against a `varchar(n)` (an
    /// address written as text, a token) as PostgreSQL would.
    fn value(
        &self,
        column: &Column,
        found: Option<Found<'_>>,
        mask: Option<&ColumnMask>,
    ) -> Result<Value, Rejection> {
        self.staged(column, found, mask).map_err(|(_, r)| r)
    }

    /// [`Mapping::value`], a fault with its stage (see `Column::stage`; a mask's refusal,
    /// which comes once every check has passed, is of the last).
    fn staged(
        &self,
        column: &Column,
        found: Option<Found<'_>>,
        mask: Option<&ColumnMask>,
    ) -> Result<Value, (u8, Rejection)> {
        let value = match self.convert_column(column, found, mask) {
            Ok(value) => value,
            Err(Refusal::Checked(r)) => return Err((column.stage(&r.reason), r)),
            Err(Refusal::Masked(r)) => return Err((MASK_STAGE, r)),
        };
        // Text converted from text is checked by the conversion; a token's or an address's
        // is made here.
        let made = column.mask.is_some() || column.convert == Some(Convert::Ip);
        if let (ColumnType::Varchar(max), Value::Text(text), true) =
            (column.column_type, &value, made)
        {
            if let Some(chars) = chars_beyond(text, max) {
                return Err((
                    MADE_STAGE,
                    Rejection::new(
                        code(column, "too_long"),
                        format!("{chars} characters, limit {max}"),
                    ),
                ));
            }
        }
        Ok(value)
    }

    /// One column's value: present (or null), checked as sent, then made into what the
    /// column holds: a date from an epoch, a version's integer, a token, an address, or the
    /// column's type (jsonb scanned for personal data first), within its bounds.
    fn convert_column(
        &self,
        column: &Column,
        found: Option<Found<'_>>,
        mask: Option<&ColumnMask>,
    ) -> Result<Value, Refusal> {
        let Some(value) = present(column, found)? else {
            return Ok(Value::Null);
        };
        let value = &value;
        as_sent(column, value)?;
        if let Some(ms_per_unit) = epoch_unit(column) {
            return Ok(from_epoch(column, value, ms_per_unit)?);
        }
        if column.convert == Some(Convert::Version) {
            return Ok(self.version(column, value)?);
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
        let converted = match column.column_type {
            ColumnType::Jsonb => {
                let tree = self.scrubbed(column, mask, value)?;
                jsonb(tree.as_ref())
            }
            other => convert_found(value, other),
        }
        .map_err(|f| rejected(column, f))?;
        // Whole numbers and numerics are compared with the bounds digit by digit (an f64 would
        // round a long numeric onto its bound); real and double precision as the floats they are.
        let number = match &converted {
            _ if column.min.is_none() && column.max.is_none() => None,
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

    /// Where the column's value is (`slot`: where its pointer is in the document), borrowed
    /// from the document where it can be: only what a column makes is allocated.
    #[inline]
    fn find<'a>(
        &self,
        column: &'a Column,
        slot: Option<usize>,
        doc: &'a Document<'_>,
        fields: &'a EnvelopeFields,
        message: &Message<'a>,
    ) -> Option<Found<'a>> {
        match &column.source {
            Source::Pointer(_) | Source::Body => slot.and_then(|s| doc.get(s)).map(Found::borrowed),
            Source::Rest => Some(match doc.rest(&self.taken) {
                Some(rest) => Found::Tree(Box::new(Cow::Owned(rest))),
                // The conversion names the column.
                None => Found::TooDeep,
            }),
            Source::Sqs(SqsAttribute::MessageId) => {
                Some(Found::Str(Cow::Borrowed(message.message_id)))
            }
            Source::Sqs(SqsAttribute::SentTimestamp) => Some(Found::Int(message.sent_timestamp_ms)),
            Source::Sqs(SqsAttribute::ApproximateReceiveCount) => {
                Some(Found::Int(message.receive_count.into()))
            }
            Source::Sqs(SqsAttribute::MessageGroupId) => {
                message.group_id.map(|g| Found::Str(Cow::Borrowed(g)))
            }
            Source::Attribute(a) => message
                .attributes
                .iter()
                .find(|(k, _)| k == a)
                .map(|(_, v)| Found::Str(Cow::Borrowed(v.as_str()))),
            Source::Envelope(f) => fields.get(f).map(Found::from_json),
            Source::Constant(v) => Some(Found::from_json(v)),
        }
    }

    /// A version (`1.2.3`) as its integer, within the column's bounds.
    fn version(&self, column: &Column, value: &Found<'_>) -> Result<Value, Rejection> {
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
        if column.min.is_some() || column.max.is_some() {
            self.bounds(column, Number::Exact(encoded.to_string()))
                .map_err(|f| rejected(column, f))?;
        }
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
        found: &'v Found<'_>,
    ) -> Result<Cow<'v, Json>, Rejection> {
        let value = found
            .to_json()
            .map_err(|why| rejected(column, unreadable(why)))?;
        if column.column_type != ColumnType::Jsonb || column.mask.is_some() {
            return Ok(value);
        }
        match self.rest_personal {
            RestPersonal::Keep => Ok(value),
            RestPersonal::Reject => match scrub::first(
                &value,
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
                None => Ok(value),
            },
            RestPersonal::Mask => Ok(match (mask, value) {
                (Some(mask), Cow::Borrowed(value)) => {
                    scrub::masked(value, column.named_personal, mask, self.rest_mask)
                }
                (Some(mask), Cow::Owned(value)) => {
                    match scrub::masked(&value, column.named_personal, mask, self.rest_mask) {
                        Cow::Owned(masked) => Cow::Owned(masked),
                        Cow::Borrowed(_) => Cow::Owned(value),
                    }
                }
                // A constant checked when the mapping is read: the mapping's own text.
                (None, value) => value,
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

/// Whether every pointer of the mapping (its columns', `match`'s and `delete`'s) names an
/// object's field, and there is at least one: then a document that is not an object has
/// nothing it reads. A first token that is an array index may name an element.
fn reads_fields_only(mapping: &Mapping) -> bool {
    let columns = mapping.columns.iter().filter_map(|c| match &c.source {
        Source::Pointer(p) => Some(p.as_str()),
        _ => None,
    });
    let compared = [&mapping.matcher, &mapping.write.delete]
        .into_iter()
        .filter_map(|m| match m {
            Some(Match {
                on: MatchOn::Field(p),
                ..
            }) => Some(p.as_str()),
            _ => None,
        });
    let mut pointers = columns.chain(compared).peekable();
    pointers.peek().is_some()
        && pointers.all(|p| {
            let first = p.trim_start_matches('/').split('/').next().unwrap_or("");
            first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Why a column's value was refused: by a check (its stage told by its code), or by its mask
/// (a value too long for `siv`), which comes last.
enum Refusal {
    Checked(Rejection),
    Masked(Rejection),
}

impl From<Rejection> for Refusal {
    fn from(rejection: Rejection) -> Self {
        Refusal::Checked(rejection)
    }
}

/// The stage of a fault in what a column makes (see `Column::stage`).
const MADE_STAGE: u8 = 2;

/// The stage of a mask's refusal: after every other fault of every column (the login
/// pipeline masked once all was checked).
const MASK_STAGE: u8 = 3;

/// A column's reason code: `what:NAME` (the column's or its field's name, as the mapping's
/// `reason_names` says), or the code the column's `reasons` gives instead.
fn code(column: &Column, what: &str) -> String {
    column.reason(what)
}

/// A column's field given more than once (see `Found::Repeated`).
fn repeated(column: &Column) -> Rejection {
    Rejection::new(
        code(column, "duplicate_field"),
        "the field is given more than once",
    )
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
fn present<'d>(column: &Column, found: Option<Found<'d>>) -> Result<Option<Found<'d>>, Rejection> {
    match found {
        None if column.required => Err(Rejection {
            reason: code(column, "missing_field"),
            detail: None,
        }),
        Some(v) if v.is_null() && column.required && !column.nullable => Err(Rejection {
            reason: code(column, "null_field"),
            detail: None,
        }),
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        // Valid JSON text, but no string: what the tree engine refused as `not_json`.
        Some(Found::BadEscape(_)) => Err(rejected(column, unreadable(Unreadable::LoneSurrogate))),
        Some(Found::Repeated(_)) => Err(repeated(column)),
        Some(_) if column.mask == Some(Mask::Redact) => Ok(None),
        Some(v) => Ok(Some(v)),
    }
}

/// The value as text, or `wrong_type`.
#[inline]
fn string<'v>(column: &Column, value: &'v Found<'_>) -> Result<&'v str, Rejection> {
    value.as_str().ok_or_else(|| {
        rejected(
            column,
            Fault::WrongType {
                expected: "string",
                got: value.kind(),
            },
        )
    })
}

/// The checks on the value as sent: no U+0000 in a string (PostgreSQL's text has none; an
/// address or a token of one would hide it), `max_length`, `allowed`, `pattern`.
#[inline]
fn as_sent(column: &Column, value: &Found<'_>) -> Result<(), Rejection> {
    if let Found::Str(s) = value {
        if s.contains('\0') {
            return Err(rejected(column, Fault::NulCharacter));
        }
    }
    if let (Some(max), Found::Str(s)) = (column.max_length, value) {
        if let Some(chars) = chars_beyond(s, max) {
            return Err(rejected(column, Fault::TooLong { chars, max }));
        }
    }
    if let Some(allowed) = &column.allowed {
        let found = value
            .as_text()
            .is_some_and(|text| allowed.iter().any(|a| *a == text));
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
        None if matches!(column.source, Source::Sqs(SqsAttribute::SentTimestamp))
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
fn from_epoch(column: &Column, value: &Found<'_>, ms_per_unit: i64) -> Result<Value, Rejection> {
    let units = value.as_i64().ok_or_else(|| {
        rejected(
            column,
            Fault::WrongType {
                expected: "whole number",
                got: value.kind(),
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
fn address(column: &Column, value: &Found<'_>) -> Result<Option<IpAddr>, Rejection> {
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
    value: &Found<'_>,
) -> Result<Value, Refusal> {
    let token = match ip {
        Some(ip) => mask.mask_ip(ip),
        None => mask
            .mask_bytes(string(column, value)?.as_bytes())
            .map_err(|e| {
                Refusal::Masked(Rejection::new(code(column, "too_long"), e.to_string()))
            })?,
    };
    Ok(match column.column_type {
        ColumnType::Inet => Value::Inet(
            token
                .as_str()
                .parse()
                .expect("ipcrypt tokens are addresses (the mapping checks the mode)"),
        ),
        _ => Value::Text(token.into_string()),
    })
}

#[cfg(test)]
mod tests;
