//! A first mapping drafted from sample bodies: the envelope recognised by its shape, one
//! column per leaf field with its type, nullability and length inferred, and a mask proposed
//! for fields whose values look personal, with a comment saying why. The draft is a valid
//! mapping as it stands (a test compiles and previews every draft it makes).
//!
//! What it reads from the samples: a field present and non-null in every sample is required;
//! strings that all parse as one thing (UUID, RFC 3339 timestamp, ISO date) get that type;
//! whole numbers are `integer` or `bigint` by their range, other numbers `double precision`;
//! arrays of strings are `text[]`; anything mixed or deeper is `jsonb`. Personal-looking:
//! IP addresses, e-mail addresses, phone numbers, card numbers (Luhn), IBANs, `ddd-dd-dddd`
//! ids, and fields whose names say so, part by part (`email`, `user_email`, `firstName`,
//! `dob`, `ssn`, `phone_number`, `device_id` and the like; [`super::personal`] decides both).
//! One personal value among the samples is enough to mask a field. What stays jsonb (arrays of
//! objects, objects keyed by data, an array of strings holding an address) is left to the
//! scan of jsonb values, which the draft turns on explicitly (`rest_personal = "mask"`) and
//! notes where the samples show it is needed; a draft never stores a sample's personal value
//! in clear (a test drafts, sets up and drains a nested sample and searches the table).

use serde_json::{Map, Value as Json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::personal::{self, Personal};

/// The kinds of personal content, in the order a field's reason names them.
const KINDS: [Personal; 7] = [
    Personal::Ip,
    Personal::Email,
    Personal::Card,
    Personal::Phone,
    Personal::IdNumber,
    Personal::Nino,
    Personal::Iban,
];

/// How the draft's comments name many values of a kind.
fn plural(kind: Personal) -> &'static str {
    match kind {
        Personal::Ip => "IP addresses",
        Personal::Email => "e-mail addresses",
        Personal::Card => "card numbers (they pass the Luhn check)",
        Personal::Phone => "phone numbers",
        Personal::IdNumber => "ddd-dd-dddd numbers, as social security numbers are written",
        Personal::Nino => "National Insurance numbers",
        Personal::Iban => "IBANs (their check digits hold)",
        Personal::Name => "named as personal data",
    }
}

/// What the samples showed of one field.
#[derive(Default)]
struct Seen {
    present: usize,
    nulls: usize,
    strings: usize,
    booleans: usize,
    integers: usize,
    numbers: usize,
    string_arrays: usize,
    others: usize,
    max_chars: usize,
    min_int: i64,
    max_int: i64,
    /// Of the strings: how many parse as each thing.
    uuids: usize,
    timestamps: usize,
    dates: usize,
    ips: usize,
    /// Of the values: how many look personal by their content ([`personal::content`], a card
    /// sent as a number too), by kind, in the order of [`KINDS`].
    personal: [usize; KINDS.len()],
    /// The first personal thing seen inside an object or array value (kept whole as jsonb),
    /// and where, array indexes written `*`.
    inner: Option<(Personal, String)>,
    /// The first personal kind seen among the elements of an array of strings.
    in_array: Option<Personal>,
}

impl Seen {
    fn add(&mut self, value: &Json) {
        self.present += 1;
        match value {
            Json::Null => self.nulls += 1,
            Json::Bool(_) => self.booleans += 1,
            Json::Number(n) if personal::number_is_card(n) => {
                self.count_personal(Personal::Card);
                self.present -= 1;
                self.add_number(n);
            }
            Json::Number(n) => {
                self.present -= 1;
                self.add_number(n);
            }
            Json::String(s) => {
                self.strings += 1;
                self.max_chars = self.max_chars.max(s.chars().count());
                self.uuids += usize::from(uuid::Uuid::try_parse(s).is_ok());
                let rfc3339 =
                    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339);
                self.timestamps += usize::from(rfc3339.is_ok());
                let date =
                    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"));
                self.dates += usize::from(date.is_ok());
                self.ips += usize::from(personal::is_ip(s));
                if let Some(kind) = personal::content(s) {
                    self.count_personal(kind);
                }
            }
            Json::Array(items) if items.iter().all(Json::is_string) => {
                self.string_arrays += 1;
                if self.in_array.is_none() {
                    self.in_array = items
                        .iter()
                        .find_map(|i| i.as_str().and_then(personal::content));
                }
            }
            _ => {
                self.others += 1;
                if self.inner.is_none() {
                    self.inner = personal::first_in(value, false, true, false);
                }
            }
        }
    }

    /// A number: its kind and range (counted as present).
    fn add_number(&mut self, n: &serde_json::Number) {
        self.present += 1;
        match n.as_i64() {
            Some(i) => {
                if self.integers == 0 {
                    (self.min_int, self.max_int) = (i, i);
                }
                self.integers += 1;
                self.min_int = self.min_int.min(i);
                self.max_int = self.max_int.max(i);
            }
            None => self.numbers += 1,
        }
    }

    fn count_personal(&mut self, kind: Personal) {
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            self.personal[i] += 1;
        }
    }

    fn values(&self) -> usize {
        self.present - self.nulls
    }

    /// The type to store, and whether the values are IP addresses.
    fn column_type(&self) -> (String, bool) {
        let n = self.values();
        if n == 0 || self.others > 0 {
            return ("jsonb".into(), false);
        }
        if self.strings == n {
            if self.uuids == n {
                return ("uuid".into(), false);
            }
            if self.timestamps == n {
                return ("timestamptz".into(), false);
            }
            if self.dates == n {
                return ("date".into(), false);
            }
            if self.ips == n {
                return ("inet".into(), true);
            }
            // Room to grow: twice the longest seen, in steps, or text past 256.
            let room = (self.max_chars * 2).max(16);
            return match [32, 64, 128, 256].into_iter().find(|&c| c >= room) {
                Some(c) => (format!("varchar({c})"), false),
                None => ("text".into(), false),
            };
        }
        if self.booleans == n {
            return ("boolean".into(), false);
        }
        if self.integers == n {
            let fits = i32::try_from(self.min_int).is_ok() && i32::try_from(self.max_int).is_ok();
            return (if fits { "integer" } else { "bigint" }.into(), false);
        }
        if self.integers + self.numbers == n {
            return ("double precision".into(), false);
        }
        if self.string_arrays == n {
            // An array holding personal values goes to jsonb, where they are stored as tokens.
            if self.in_array.is_some() {
                return ("jsonb".into(), false);
            }
            return ("text[]".into(), false);
        }
        ("jsonb".into(), false)
    }

    /// Why the values look personal, if they do. One personal value among the samples is
    /// enough: a field that is sometimes an address is masked (the draft is safe as it stands).
    fn personal(&self, name: &str) -> Option<String> {
        let n = self.values();
        if n > 0 && self.booleans == n {
            // True or false identifies no one (`email_verified`).
            return None;
        }
        // The content first, whatever the type (a card sent as a number is redacted, since a
        // value that is not text is not tokenised); the name when the content says nothing.
        let by_content = KINDS
            .iter()
            .zip(self.personal)
            .find(|(_, count)| *count > 0)
            .map(|(kind, count)| match count == n {
                true => format!("the values are {}", plural(*kind)),
                false => format!("{count} of {n} values are {}", plural(*kind)),
            });
        by_content.or_else(|| Self::personal_name(name).map(str::to_owned))
    }

    /// Why a jsonb column is worth a note: what personal data the samples hold inside it,
    /// which the scan of jsonb values stores as tokens.
    fn scanned(&self) -> Option<String> {
        if let Some((why, at)) = &self.inner {
            return Some(format!("the samples hold {why} inside it (at {at})"));
        }
        self.in_array
            .map(|why| format!("some of its elements look personal ({why})"))
    }

    /// Whether the field's own name (the pointer's last part) says it is personal, matched
    /// by its parts (`firstName`, `user_email`, `dob`).
    fn personal_name(name: &str) -> Option<&'static str> {
        let last = name.rsplit('/').next().unwrap_or(name);
        personal::name(last).then_some("its name says it may identify a person")
    }
}

/// The envelope the samples are in, recognised by shape (every sample must agree).
fn envelope_of(body: &Json) -> &'static str {
    let Json::Object(o) = body else {
        return "none";
    };
    if o.get("Type").and_then(Json::as_str) == Some("Notification")
        && o.get("Message").is_some_and(Json::is_string)
        && o.contains_key("TopicArn")
    {
        return "sns";
    }
    if o.contains_key("detail") && o.contains_key("detail-type") && o.contains_key("source") {
        return "eventbridge";
    }
    if o.get("Records").is_some_and(|r| {
        r.as_array().is_some_and(|items| {
            items
                .iter()
                .all(|i| i.get("eventSource").and_then(Json::as_str) == Some("aws:s3"))
        })
    }) {
        return "s3";
    }
    "none"
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Walks an object, recording each leaf by pointer; objects nest, everything else is a leaf.
fn walk(
    prefix: &str,
    object: &Map<String, Json>,
    keyed_by_data: &HashSet<String>,
    fields: &mut BTreeMap<String, Seen>,
) {
    for (key, value) in object {
        let pointer = format!("{prefix}/{}", escape(key));
        match value {
            // An object whose keys are data (ids, addresses, numbers, or keys that change from
            // sample to sample, such as user names) is one jsonb leaf: its keys must not become
            // column names, which the draft prints and `setup` puts in the table.
            Json::Object(inner)
                if !inner.is_empty()
                    && prefix.matches('/').count() < 4
                    && !inner.keys().any(|k| key_is_data(k))
                    && !keyed_by_data.contains(&pointer) =>
            {
                walk(&pointer, inner, keyed_by_data, fields)
            }
            _ => fields.entry(pointer).or_default().add(value),
        }
    }
}

/// How often an object was seen under a pointer, and how often each of its keys.
#[derive(Default)]
struct KeysSeen {
    objects: usize,
    keys: HashMap<String, usize>,
}

/// Records every nested object's keys, by pointer.
fn count_keys(prefix: &str, object: &Map<String, Json>, seen: &mut HashMap<String, KeysSeen>) {
    for (key, value) in object {
        if let Json::Object(inner) = value {
            let pointer = format!("{prefix}/{}", escape(key));
            let entry = seen.entry(pointer.clone()).or_default();
            entry.objects += 1;
            for k in inner.keys() {
                *entry.keys.entry(k.clone()).or_default() += 1;
            }
            count_keys(&pointer, inner, seen);
        }
    }
}

/// The nested objects whose keys are data by how they vary: four or more distinct keys, each
/// present on average in at most half of the objects (a map keyed by user names or ids;
/// a record's fields recur). With one sample nothing varies, so nothing is found this way.
fn keyed_by_data(seen: &HashMap<String, KeysSeen>) -> HashSet<String> {
    seen.iter()
        .filter(|(_, s)| {
            let distinct = s.keys.len();
            let mentions: usize = s.keys.values().sum();
            distinct >= 4 && mentions * 2 <= distinct * s.objects
        })
        .map(|(pointer, _)| pointer.clone())
        .collect()
}

/// A key that is a value rather than a name: one [`personal::safe_name`] would not show (an
/// address, an id, mostly digits, long), or one with characters names do not have.
fn key_is_data(key: &str) -> bool {
    !personal::safe_name(key)
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b' '))
}

/// A column name from a pointer: lower case, `_` between parts and for anything else.
fn column_name(pointer: &str) -> String {
    let mut name: String = pointer
        .trim_start_matches('/')
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        name.insert(0, '_');
    }
    name.truncate(55);
    name
}

/// Why no draft could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DraftError {
    #[error("no sample body to learn from")]
    Empty,
    /// Line numbers (1-based) only: never the body.
    #[error("line {0} is not JSON")]
    NotJson(usize),
    #[error("the samples are in different envelopes (line 1: {first}, line {line}: {other})")]
    MixedEnvelopes {
        first: &'static str,
        line: usize,
        other: &'static str,
    },
}

/// Drafts a mapping for `table` from sample bodies.
pub fn draft<'a>(
    table: &str,
    bodies: impl IntoIterator<Item = &'a str>,
) -> Result<String, DraftError> {
    let mut fields: BTreeMap<String, Seen> = BTreeMap::new();
    let mut keys: HashMap<String, KeysSeen> = HashMap::new();
    let mut docs: Vec<Json> = Vec::new();
    let mut envelope = None;
    let mut documents = 0;
    for (i, body) in bodies.into_iter().enumerate() {
        let parsed: Json = super::document::tree(body).map_err(|_| DraftError::NotJson(i + 1))?;
        let kind = envelope_of(&parsed);
        match envelope {
            None => envelope = Some(kind),
            Some(first) if first != kind => {
                return Err(DraftError::MixedEnvelopes {
                    first,
                    line: i + 1,
                    other: kind,
                })
            }
            Some(_) => {}
        }
        let inner: Vec<Json> = match (kind, parsed) {
            ("sns", Json::Object(mut o)) => {
                let text = o.remove("Message").unwrap_or_default();
                vec![super::document::tree(text.as_str().unwrap_or_default())
                    .map_err(|_| DraftError::NotJson(i + 1))?]
            }
            ("eventbridge", Json::Object(mut o)) => vec![o.remove("detail").unwrap_or_default()],
            ("s3", Json::Object(mut o)) => match o.remove("Records") {
                Some(Json::Array(records)) => records,
                _ => Vec::new(),
            },
            (_, other) => vec![other],
        };
        for doc in inner {
            documents += 1;
            if let Json::Object(o) = &doc {
                count_keys("", o, &mut keys);
            }
            docs.push(doc);
        }
    }
    let keyed = keyed_by_data(&keys);
    for doc in &docs {
        if let Json::Object(o) = doc {
            walk("", o, &keyed, &mut fields);
        }
    }
    let envelope = envelope.ok_or(DraftError::Empty)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Drafted by `sqs2pg mapping draft` from {documents} sample message(s). Read it through:\n\
         # types, lengths and `required` come from the samples only; try it with\n\
         # `sqs2pg mapping preview`.\n\
         table = \"{table}\"\n\
         envelope = \"{envelope}\"\n\
         # What looks personal inside a jsonb column (an address, a phone number, anything\n\
         # under a key such as `email` or `firstName`) is stored as an hmac token.\n\
         rest_personal = \"mask\""
    );
    let mut names = HashSet::new();
    for (pointer, seen) in &fields {
        let (column_type, is_ip) = seen.column_type();
        let personal = seen.personal(pointer);
        let base = column_name(pointer);
        let mut name = match personal {
            Some(_) => format!("masked_{base}"),
            None => base,
        };
        while !names.insert(name.clone()) {
            name.push('_');
        }
        let required = seen.present == documents && seen.nulls == 0;
        out.push('\n');
        if let Some(why) = &personal {
            let _ = writeln!(out, "# Masked: {why}.");
        } else if let Some(why) = seen.scanned().filter(|_| column_type == "jsonb") {
            let _ = writeln!(
                out,
                "# Scanned: {why}; stored as tokens there (rest_personal, above)."
            );
        }
        let _ = writeln!(out, "[[columns]]\nname = \"{name}\"");
        let _ = writeln!(out, "from = {}", toml_string(pointer));
        let text = seen.values() > 0 && seen.strings == seen.values();
        match personal {
            Some(_) if text => {
                let _ = writeln!(out, "type = \"varchar(256)\"");
                if is_ip {
                    let _ = writeln!(out, "convert = \"ip\"");
                }
                let _ = writeln!(out, "mask = \"hmac\"");
            }
            Some(_) => {
                // Not text: a token would depend on how the value is spelled; keep nothing.
                let _ = writeln!(out, "type = \"{column_type}\"");
                let _ = writeln!(out, "mask = \"redact\"");
            }
            None => {
                let _ = writeln!(out, "type = \"{column_type}\"");
            }
        }
        if required {
            let _ = writeln!(out, "required = true");
        }
    }
    push_sent_at(&mut out, &names);
    Ok(out)
}

/// The draft's last column, when SQS received the message, under a name no field took.
fn push_sent_at(out: &mut String, names: &HashSet<String>) {
    let mut sent = "sent_at".to_owned();
    while names.contains(&sent) {
        sent.push('_');
    }
    let _ = writeln!(
        out,
        "\n# When SQS received the message.\n[[columns]]\nname = \"{sent}\"\nfrom = \"sqs:SentTimestamp\"\ntype = \"timestamptz\""
    );
}

/// A TOML basic string: JSON's escapes are TOML's, except that TOML also escapes DEL.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s)
        .expect("a string serialises")
        .replace('\u{7f}', "\\u007F")
}

pub mod schema;

#[cfg(test)]
mod tests;
