//! A first mapping drafted from the producer's JSON Schema (draft 2020-12 or draft-07): the
//! contract turned into columns, types and checks, with masks proposed as for samples.
//!
//! - Nested objects are flattened to pointers (`/user/email` becomes `user_email`); an object
//!   without `properties` (a map) and an array of anything but strings stay whole, as `jsonb`;
//!   an array of strings is `text[]`.
//! - `type` and `format` give the column type: `uuid`, `date-time` (`timestamptz`), `date`;
//!   `integer` is `integer` when its bounds fit, `bigint` otherwise; `number` is `numeric`
//!   (every digit kept); `string` is `varchar(maxLength)` or `text`.
//! - A property is `required` when it and every object above it are required and none of
//!   them may be null. `enum` gives `allowed`, `minimum`/`maximum` (and an integer's exclusive
//!   bounds) `min`/`max`, `pattern` the column's `pattern` (JSON Schema's are unanchored, a
//!   mapping's anchored: the draft keeps the meaning).
//! - The three ways to say "or null" are understood: `type: [T, "null"]`, and `oneOf` or
//!   `anyOf` of a schema and `{"type": "null"}`, in either order. A `oneOf`/`anyOf` of several
//!   object shapes has no flat mapping: the draft is refused, naming its pointer.
//! - `$ref` inside the file (`#/$defs/...`, `#/definitions/...`, any JSON pointer) is
//!   followed; a reference back into itself is stored whole (`jsonb`); a reference to another
//!   file is refused.
//! - Masks: formats `email`, `ipv4` and `ipv6` and personal names (`firstName`, `phone`,
//!   `dob`, ...) are masked, with the reason in a comment.

use serde_json::{Map, Value as Json};
use sha2::Digest as _;
use std::fmt::Write as _;

use super::{column_name, escape, push_sent_at, toml_string};
use crate::mapping::personal;

/// Why a JSON Schema gave no draft. Names places in the schema, never values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error("the schema is not JSON")]
    NotJson,
    #[error("the schema describes {0}, not an object: a mapping maps the fields of an object")]
    NotAnObject(String),
    #[error(
        "{0}: a oneOf/anyOf of several object shapes has no flat mapping; write one mapping per \
         shape (with `match`), or map the field whole with `type = \"jsonb\"`"
    )]
    SeveralShapes(String),
    #[error("{pointer}: `$ref` {reference} is not inside this file; only `#...` references are followed")]
    ExternalRef { pointer: String, reference: String },
    #[error("{pointer}: `$ref` {reference} names nothing in this file")]
    MissingRef { pointer: String, reference: String },
}

/// One leaf of the schema: a column to be.
struct Leaf {
    pointer: String,
    schema: Json,
    required: bool,
}

/// Whether a `oneOf`/`anyOf` option is "null": `{"type": "null"}`, `{"const": null}` or
/// `{"enum": [null]}`.
fn is_null_option(s: &Json) -> bool {
    s.get("type").and_then(Json::as_str) == Some("null")
        || s.get("const").is_some_and(Json::is_null)
        || s.get("enum")
            .and_then(Json::as_array)
            .is_some_and(|v| !v.is_empty() && v.iter().all(Json::is_null))
}

/// Copies into `into` the keywords of `from` it does not have; `properties` and `required`
/// are united.
fn merge_absent(into: &mut Json, from: &Json, skip: &str) {
    let (Json::Object(m), Json::Object(other)) = (into, from) else {
        return;
    };
    for (k, v) in other {
        if k == skip {
            continue;
        }
        match (k.as_str(), m.get_mut(k), v) {
            ("properties", Some(Json::Object(mine)), Json::Object(theirs)) => {
                for (name, sub) in theirs {
                    mine.entry(name.clone()).or_insert_with(|| sub.clone());
                }
            }
            ("required", Some(Json::Array(mine)), Json::Array(theirs)) => {
                for r in theirs {
                    if !mine.contains(r) {
                        mine.push(r.clone());
                    }
                }
            }
            (_, None, _) => {
                m.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}

/// A subschema with its references followed, its `allOf` merged and its "or null" taken off:
/// the schema, and whether null is allowed. Every reference followed is added to `refs` (what
/// the walk looks for cycles by).
fn resolve(
    root: &Json,
    schema: &Json,
    at: &str,
    depth: usize,
    refs: &mut Vec<String>,
) -> Result<(Json, bool), SchemaError> {
    if depth > 16 {
        // Options nested in options past any sensible schema (a cycle through `oneOf` or
        // `allOf`): stored whole.
        return Ok((serde_json::json!({"type": "jsonb-any"}), false));
    }
    let mut schema = schema.clone();
    let mut nullable = false;
    // References (a chain of them, bounded: a cycle is stored whole by the caller).
    for _ in 0..32 {
        let Some(reference) = schema.get("$ref").and_then(Json::as_str).map(str::to_owned) else {
            break;
        };
        let Some(pointer) = reference.strip_prefix('#') else {
            return Err(SchemaError::ExternalRef {
                pointer: at.to_owned(),
                reference,
            });
        };
        let mut target = root
            .pointer(pointer)
            .ok_or_else(|| SchemaError::MissingRef {
                pointer: at.to_owned(),
                reference: reference.clone(),
            })?
            .clone();
        refs.push(reference);
        // Keywords beside `$ref` (2020-12 applies both) add to the target; the target's own
        // come first.
        merge_absent(&mut target, &schema, "$ref");
        schema = target;
    }
    // `allOf`: every part applies, so their keywords are merged (properties and required
    // united).
    if let Some(Json::Array(parts)) = schema.get("allOf").cloned() {
        if let Json::Object(m) = &mut schema {
            m.remove("allOf");
        }
        for part in &parts {
            let (part, part_null) = resolve(root, part, at, depth + 1, refs)?;
            // Null is allowed only if every part allows it; keep it simple: any part that
            // forbids it (the usual case) forbids it.
            let _ = part_null;
            merge_absent(&mut schema, &part, "");
        }
    }
    // `type: [T, "null"]`.
    if let Some(Json::Array(types)) = schema.get("type") {
        let others: Vec<Json> = types
            .iter()
            .filter(|t| t.as_str() != Some("null"))
            .cloned()
            .collect();
        if others.len() < types.len() {
            nullable = true;
            let rest = match others.as_slice() {
                [one] => one.clone(),
                _ => Json::Array(others),
            };
            schema["type"] = rest;
        }
    }
    // `oneOf`/`anyOf` with a null option, in either order.
    for keyword in ["oneOf", "anyOf"] {
        let Some(Json::Array(options)) = schema.get(keyword).cloned() else {
            continue;
        };
        let non_null: Vec<&Json> = options.iter().filter(|s| !is_null_option(s)).collect();
        if non_null.len() < options.len() {
            nullable = true;
        }
        let shapes = non_null
            .iter()
            .filter(|s| {
                resolve(root, s, at, depth + 1, &mut Vec::new()).is_ok_and(|(r, _)| is_object(&r))
            })
            .count();
        if shapes > 1 {
            return Err(SchemaError::SeveralShapes(display_pointer(at)));
        }
        if let [one] = non_null.as_slice() {
            let (mut inner, inner_null) = resolve(root, one, at, depth + 1, refs)?;
            nullable |= inner_null;
            // The option's keywords, then the ones written beside `oneOf` (a description).
            merge_absent(&mut inner, &schema, keyword);
            schema = inner;
        } else if non_null.len() > 1 {
            // Several scalar types: kept whole.
            schema = serde_json::json!({"type": "jsonb-any"});
        }
    }
    // `enum` with null in it allows null too.
    if let Some(Json::Array(values)) = schema.get("enum") {
        if values.iter().any(Json::is_null) {
            nullable = true;
        }
    }
    Ok((schema, nullable))
}

fn is_object(schema: &Json) -> bool {
    schema.get("type").and_then(Json::as_str) == Some("object")
        || (schema.get("type").is_none() && schema.get("properties").is_some())
}

/// A pointer as messages name it (`/` for the document itself).
fn display_pointer(at: &str) -> String {
    if at.is_empty() {
        "/".to_owned()
    } else {
        at.to_owned()
    }
}

/// The properties of an object schema (its `allOf` already merged by [`resolve`]) and the
/// names it requires.
fn properties(schema: &Json) -> (Map<String, Json>, Vec<String>) {
    let props = schema
        .get("properties")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    let required: Vec<String> = schema
        .get("required")
        .and_then(Json::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Json::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    (props, required)
}

/// How deep objects are flattened: deeper ones are stored whole.
const MAX_DEPTH: usize = 32;

/// Every leaf under the object `schema` at `at`. `seen_refs`: the references being expanded
/// above (a property that leads back into one is stored whole, however it gets there: a bare
/// `$ref`, one inside `anyOf` with null, or `allOf`).
fn walk(
    root: &Json,
    schema: &Json,
    at: &str,
    required_above: bool,
    seen_refs: &mut Vec<String>,
    leaves: &mut Vec<Leaf>,
) -> Result<(), SchemaError> {
    let (props, required) = properties(schema);
    for (name, sub) in props {
        let pointer = format!("{at}/{}", escape(&name));
        let whole = |pointer: String| Leaf {
            pointer,
            schema: serde_json::json!({"type": "jsonb-any"}),
            required: false,
        };
        let mut refs = Vec::new();
        let (mut resolved, nullable) = resolve(root, &sub, &pointer, 0, &mut refs)?;
        if refs.iter().any(|r| seen_refs.contains(r)) || pointer.matches('/').count() > MAX_DEPTH {
            leaves.push(whole(pointer));
            continue;
        }
        let is_required = required_above && !nullable && required.contains(&name);
        let has_properties = resolved
            .get("properties")
            .and_then(Json::as_object)
            .is_some_and(|p| !p.is_empty());
        if is_object(&resolved) && has_properties {
            let depth = seen_refs.len();
            seen_refs.extend(refs);
            walk(root, &resolved, &pointer, is_required, seen_refs, leaves)?;
            seen_refs.truncate(depth);
        } else {
            // An array's items, resolved too (a `$ref` to a string type is still a string).
            if let Some(items) = resolved.get("items").cloned() {
                let (items, _) = resolve(root, &items, &pointer, 0, &mut Vec::new())?;
                resolved["items"] = items;
            }
            leaves.push(Leaf {
                pointer,
                schema: resolved,
                required: is_required,
            });
        }
    }
    Ok(())
}

/// A number keyword as the exact decimal text it was written with.
fn number_text(schema: &Json, keyword: &str) -> Option<String> {
    schema
        .get(keyword)
        .and_then(|v| v.as_number())
        .map(|n| n.to_string())
}

/// An integer keyword, when it is one.
fn integer(schema: &Json, keyword: &str) -> Option<i64> {
    let n = schema.get(keyword)?.as_number()?;
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
            .map(|f| f as i64)
    })
}

/// The mapping's lines for one leaf (after `from`): type, checks, mask; and the comment above
/// it. Answers (comment, masked, lines).
fn column_lines(leaf: &Leaf) -> (Option<String>, bool, Vec<String>) {
    let s = &leaf.schema;
    let kind = s.get("type").and_then(Json::as_str).unwrap_or("");
    let format = s.get("format").and_then(Json::as_str).unwrap_or("");
    let last = leaf.pointer.rsplit('/').next().unwrap_or("");
    let mut lines = Vec::new();
    let mut notes = Vec::new();
    let by_format = match format {
        "email" => Some("its format is email"),
        "ipv4" | "ipv6" => Some("its format is an IP address"),
        _ => None,
    };
    let by_name = personal::name(last).then_some("its name says it may identify a person");
    let personal_reason = match kind {
        "string" | "" => by_format.or(by_name),
        "boolean" => None,
        _ => by_name,
    };
    let mut masked = false;
    let mut scanned = None;
    match kind {
        "string" => {
            let column_type = match format {
                "uuid" => "uuid".to_owned(),
                "date-time" => "timestamptz".to_owned(),
                "date" => "date".to_owned(),
                _ if personal_reason.is_some() => "varchar(256)".to_owned(),
                _ => match integer(s, "maxLength") {
                    Some(n) if (1..=10_485_760).contains(&n) => format!("varchar({n})"),
                    _ => "text".to_owned(),
                },
            };
            let typed = matches!(format, "uuid" | "date-time" | "date");
            if personal_reason.is_some() && !typed {
                lines.push(format!("type = \"{column_type}\""));
                if matches!(format, "ipv4" | "ipv6") {
                    lines.push("convert = \"ip\"".to_owned());
                }
                lines.push("mask = \"hmac\"".to_owned());
                masked = true;
                // The token is not the value: a length or pattern of the value is checked
                // before masking only when written; keep the schema's.
                if let Some(n) = integer(s, "maxLength") {
                    lines.push(format!("max_length = {n}"));
                }
            } else {
                lines.push(format!("type = \"{column_type}\""));
                if personal_reason.is_some() {
                    lines.push("mask = \"redact\"".to_owned());
                    masked = true;
                }
            }
            if let Some(pattern) = s.get("pattern").and_then(Json::as_str) {
                let anchored = anchored_pattern(pattern);
                if regex_lite::Regex::new(&format!("^(?:{anchored})$")).is_ok() {
                    lines.push(format!("pattern = {}", toml_string(&anchored)));
                } else {
                    notes.push(format!(
                        "its pattern uses syntax a mapping's patterns lack ({}), so it is not checked",
                        "lookaround or back-references"
                    ));
                }
            }
        }
        "integer" => {
            // The tightest of the inclusive and exclusive bounds, as whole numbers (a bound of
            // 1.5 on an integer is 2 from below, 1 from above).
            let bound = |keyword: &str, round: fn(f64) -> f64| -> Option<i64> {
                let n = s.get(keyword)?.as_number()?;
                n.as_i64().or_else(|| {
                    n.as_f64()
                        .map(round)
                        .filter(|f| f.abs() < 9.0e18)
                        .map(|f| f as i64)
                })
            };
            let tightest = |a: Option<i64>, b: Option<i64>, pick: fn(i64, i64) -> i64| match (a, b)
            {
                (Some(a), Some(b)) => Some(pick(a, b)),
                (a, b) => a.or(b),
            };
            let exclusive_min = |n: f64| (n + 1.0).floor();
            let exclusive_max = |n: f64| (n - 1.0).ceil();
            let min = tightest(
                bound("minimum", f64::ceil),
                bound("exclusiveMinimum", exclusive_min).map(|m| {
                    if s["exclusiveMinimum"].is_i64() {
                        m.saturating_add(1)
                    } else {
                        m
                    }
                }),
                i64::max,
            );
            let max = tightest(
                bound("maximum", f64::floor),
                bound("exclusiveMaximum", exclusive_max).map(|m| {
                    if s["exclusiveMaximum"].is_i64() {
                        m.saturating_sub(1)
                    } else {
                        m
                    }
                }),
                i64::min,
            );
            let fits = |v: Option<i64>| v.is_some_and(|v| i32::try_from(v).is_ok());
            let column_type = if fits(min) && fits(max) {
                "integer"
            } else {
                "bigint"
            };
            lines.push(format!("type = \"{column_type}\""));
            if let Some(m) = min {
                lines.push(format!("min = {m}"));
            }
            if let Some(m) = max {
                lines.push(format!("max = {m}"));
            }
            if personal_reason.is_some() {
                lines.push("mask = \"redact\"".to_owned());
                masked = true;
            }
        }
        "number" => {
            lines.push("type = \"numeric\"".to_owned());
            if let Some(m) = number_text(s, "minimum") {
                lines.push(format!("min = {}", toml_string(&m)));
            }
            if let Some(m) = number_text(s, "maximum") {
                lines.push(format!("max = {}", toml_string(&m)));
            }
            if s.get("exclusiveMinimum").is_some_and(Json::is_number)
                || s.get("exclusiveMaximum").is_some_and(Json::is_number)
            {
                notes.push(
                    "its exclusive bounds are not checked (a mapping's bounds include their ends)"
                        .to_owned(),
                );
            }
            if personal_reason.is_some() {
                lines.push("mask = \"redact\"".to_owned());
                masked = true;
            }
        }
        "boolean" => lines.push("type = \"boolean\"".to_owned()),
        "array" => {
            let items = s.get("items").cloned().unwrap_or(Json::Null);
            // Items that are personal by their format: stored as jsonb, whose values the
            // transform scans and stores as tokens (a text[] is not scanned).
            let personal_items = match items.get("format").and_then(Json::as_str) {
                Some("email") => Some("e-mail addresses"),
                Some("ipv4" | "ipv6") => Some("IP addresses"),
                _ => None,
            };
            let strings = items.get("type").and_then(Json::as_str) == Some("string")
                && personal_items.is_none();
            lines.push(format!(
                "type = \"{}\"",
                if strings { "text[]" } else { "jsonb" }
            ));
            if personal_reason.is_some() {
                lines.push("mask = \"redact\"".to_owned());
                masked = true;
            } else if let Some(what) = personal_items {
                scanned = Some(format!(
                    "Scanned: its items are {what}; stored as tokens there (rest_personal, above)."
                ));
            }
        }
        _ => {
            // An object without properties (a map), several types, or no type at all.
            lines.push("type = \"jsonb\"".to_owned());
            if personal_reason.is_some() {
                lines.push("mask = \"redact\"".to_owned());
                masked = true;
            }
        }
    }
    if let Some(Json::Array(values)) = s.get("enum") {
        let allowed: Vec<String> = values
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| match v {
                Json::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect();
        if !allowed.is_empty() && !masked {
            let list: Vec<String> = allowed.iter().map(|a| toml_string(a)).collect();
            lines.push(format!("allowed = [{}]", list.join(", ")));
        }
    }
    if leaf.required {
        lines.push("required = true".to_owned());
    }
    let comment = match (masked, personal_reason) {
        (true, Some(why)) => Some(format!("Masked: {why}.")),
        _ => scanned,
    };
    let comment = match (comment, notes.is_empty()) {
        (c, true) => c,
        (Some(c), false) => Some(format!("{c}\n# Note: {}.", notes.join("; "))),
        (None, false) => Some(format!("Note: {}.", notes.join("; "))),
    };
    (comment, masked, lines)
}

/// A JSON Schema pattern (unanchored: it may match anywhere) as a mapping's (anchored: the
/// whole value): as written when it is anchored at both ends without alternatives, otherwise
/// allowed to match anywhere.
fn anchored_pattern(pattern: &str) -> String {
    let both_ends = pattern.starts_with('^')
        && pattern.ends_with('$')
        && !pattern.ends_with("\\$")
        && !pattern.contains('|');
    if both_ends {
        pattern[1..pattern.len() - 1].to_owned()
    } else {
        format!("(?s:.*)(?:{pattern})(?s:.*)")
    }
}

/// Drafts a mapping for `table` from a JSON Schema's text.
pub fn draft_from_schema(table: &str, text: &str) -> Result<String, SchemaError> {
    let root: Json = crate::mapping::document::tree(text).map_err(|_| SchemaError::NotJson)?;
    let (top, _) = resolve(&root, &root, "", 0, &mut Vec::new())?;
    if !is_object(&top) {
        let what = match top.get("type") {
            Some(Json::String(t)) => format!("type {t}"),
            _ => "no object".to_owned(),
        };
        return Err(SchemaError::NotAnObject(what));
    }
    let mut leaves = Vec::new();
    walk(&root, &top, "", true, &mut Vec::new(), &mut leaves)?;
    let title = root
        .get("title")
        .and_then(Json::as_str)
        .map(|t| format!(" ({})", t.replace(['\n', '\r'], " ")))
        .unwrap_or_default();
    let dialect = match root.get("$schema").and_then(Json::as_str) {
        Some(s) if s.contains("draft-07") => "draft-07",
        Some(s) if s.contains("2020-12") => "draft 2020-12",
        _ => "JSON Schema",
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Drafted by `sqs2pg mapping draft --schema` from a {dialect} schema{title}. Read it\n\
         # through: types, checks and `required` come from the schema; masks are proposed.\n\
         # Try it with `sqs2pg mapping preview`.\n\
         table = {}\n\
         envelope = \"none\"\n\
         # What looks personal inside a jsonb column is stored as an hmac token.\n\
         rest_personal = \"mask\"",
        toml_string(table)
    );
    // Column names: from the pointer; where two pointers give one name, each gets a suffix
    // of its own pointer's hash, so a name never moves to another field when a later version
    // of the schema adds one (the first column keeps its source, or gets a new name).
    let drafted: Vec<_> = leaves.iter().map(column_lines).collect();
    let wanted: Vec<String> = leaves
        .iter()
        .zip(&drafted)
        .map(|(leaf, (_, masked, lines))| {
            let prefix = if *masked && lines.iter().any(|l| l == "mask = \"hmac\"") {
                "masked_"
            } else {
                ""
            };
            format!("{prefix}{}", column_name(&leaf.pointer))
        })
        .collect();
    let mut names = std::collections::HashSet::new();
    for ((leaf, (comment, _, lines)), want) in leaves.iter().zip(drafted).zip(&wanted) {
        let shared = wanted.iter().filter(|w| *w == want).count() > 1 || want == "sent_at";
        let name = if shared {
            let digest = sha2::Sha256::digest(leaf.pointer.as_bytes());
            let suffix = format!("_{:02x}{:02x}", digest[0], digest[1]);
            let keep = want.len().min(63 - suffix.len());
            format!("{}{suffix}", &want[..keep])
        } else {
            want.chars().take(63).collect()
        };
        names.insert(name.clone());
        out.push('\n');
        if let Some(c) = comment {
            let _ = writeln!(out, "# {c}");
        }
        let _ = writeln!(out, "[[columns]]\nname = \"{name}\"");
        let _ = writeln!(out, "from = {}", toml_string(&leaf.pointer));
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
    push_sent_at(&mut out, &names);
    Ok(out)
}

#[cfg(test)]
mod tests;
