//! Unit tests of `mapping::draft::schema`, on the shapes the JSON Schema test suite uses.

use super::*;
use crate::mapping::{Mapper, Mapping, Message};

fn mapping(schema: &str) -> (String, Mapping) {
    let text = draft_from_schema("public.users", schema).unwrap();
    let m = Mapping::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, m)
}

fn column<'a>(m: &'a Mapping, name: &str) -> &'a crate::mapping::file::Column {
    m.columns
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no column {name}: {:?}", names(m)))
}

/// The column names, sorted (the schema's properties may come in either order).
fn names(m: &Mapping) -> Vec<&str> {
    let mut names: Vec<&str> = m.columns.iter().map(|c| c.name.as_str()).collect();
    names.sort();
    names
}

/// The reason a message is quarantined with, or None when it maps.
fn reason(m: &Mapping, body: &str) -> Option<String> {
    let key = crate::keys::MaskKey::from_base64(&crate::keys::MaskKey::generate_base64().unwrap())
        .unwrap();
    let mapper = Mapper::new(m.clone(), &key);
    mapper
        .apply(&Message::new(body, "m", 1_700_000_000_000))
        .err()
        .map(|r| r.reason)
}

const USER_2020: &str = r##"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "user.updated",
  "type": "object",
  "required": ["id", "user", "version"],
  "properties": {
    "id": {"type": "string", "format": "uuid"},
    "version": {"type": "integer", "minimum": 0},
    "at": {"type": "string", "format": "date-time"},
    "user": {
      "type": "object",
      "required": ["email", "plan"],
      "properties": {
        "email": {"type": "string", "format": "email"},
        "firstName": {"type": "string", "maxLength": 64},
        "plan": {"$ref": "#/$defs/plan"},
        "ip": {"type": "string", "format": "ipv6"},
        "score": {"type": "number", "minimum": 0, "maximum": 99.5},
        "code": {"type": "string", "maxLength": 8, "pattern": "^[A-Z]{3}-[0-9]+$"},
        "born": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "devices": {"type": "array", "items": {"type": "object"}},
        "prefs": {"type": "object", "additionalProperties": {"type": "string"}},
        "active": {"type": "boolean"}
      }
    },
    "address": {
      "type": "object",
      "required": ["city"],
      "properties": {"city": {"type": "string"}}
    }
  },
  "$defs": {
    "plan": {"type": "string", "enum": ["free", "pro", "team"]}
  }
}"##;

#[test]
fn a_2020_12_schema_gives_flat_typed_checked_and_masked_columns() {
    let (text, m) = mapping(USER_2020);
    let ty = |name: &str| column(&m, name).column_type.to_string();
    assert_eq!(ty("id"), "uuid");
    assert_eq!(ty("version"), "bigint", "bounded below only");
    assert_eq!(ty("at"), "timestamptz");
    assert_eq!(ty("user_plan"), "text");
    assert_eq!(ty("user_score"), "numeric");
    assert_eq!(ty("user_code"), "varchar(8)");
    assert_eq!(ty("user_born"), "date");
    assert_eq!(ty("user_tags"), "text[]");
    assert_eq!(ty("user_devices"), "jsonb");
    assert_eq!(ty("user_prefs"), "jsonb");
    assert_eq!(ty("user_active"), "boolean");
    assert_eq!(ty("address_city"), "text");
    // Masks: by format (email, ip) and by name (firstName), each with its reason.
    let mut masked: Vec<&str> = m.masked().map(|c| c.name.as_str()).collect();
    masked.sort();
    assert_eq!(
        masked,
        [
            "masked_user_email",
            "masked_user_firstname",
            "masked_user_ip"
        ],
        "{text}"
    );
    assert!(text.contains("# Masked: its format is email."), "{text}");
    assert!(
        text.contains("# Masked: its format is an IP address."),
        "{text}"
    );
    assert!(
        text.contains("# Masked: its name says it may identify a person."),
        "{text}"
    );
    // Required only where every object above is required too.
    let mut required: Vec<&str> = m
        .columns
        .iter()
        .filter(|c| c.required)
        .map(|c| c.name.as_str())
        .collect();
    required.sort();
    assert_eq!(
        required,
        ["id", "masked_user_email", "user_plan", "version"],
        "address is optional, so address/city is not required: {text}"
    );
    // Checks.
    assert_eq!(
        column(&m, "user_plan").allowed.as_deref(),
        Some(&["free".to_owned(), "pro".to_owned(), "team".to_owned()][..])
    );
    assert_eq!(column(&m, "version").min.as_ref().unwrap().text, "0");
    assert_eq!(column(&m, "user_score").max.as_ref().unwrap().text, "99.5");
    assert!(column(&m, "user_code").pattern.is_some());
}

#[test]
fn integers_are_integer_when_their_bounds_fit_and_bigint_otherwise() {
    let schema = |props: &str| format!(r#"{{"type": "object", "properties": {props}}}"#);
    let (_, m) = mapping(&schema(
        r#"{"a": {"type": "integer", "minimum": 0, "maximum": 100},
            "b": {"type": "integer"},
            "c": {"type": "integer", "minimum": 0, "maximum": 3000000000},
            "d": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
            "e": {"type": "integer", "minimum": 0, "exclusiveMinimum": 5, "maximum": 9.5},
            "f": {"type": "integer", "minimum": 1.5, "exclusiveMaximum": 7.5}}"#,
    ));
    let ty = |name: &str| column(&m, name).column_type.to_string();
    assert_eq!(
        (ty("a"), ty("b"), ty("c"), ty("d")),
        (
            "integer".into(),
            "bigint".into(),
            "bigint".into(),
            "integer".into()
        )
    );
    // Exclusive integer bounds become inclusive ones a step inside.
    assert_eq!(column(&m, "d").min.as_ref().unwrap().text, "1");
    assert_eq!(column(&m, "d").max.as_ref().unwrap().text, "9");
    // The tightest bound wins; fractional bounds round inwards.
    let bounds = |name: &str| {
        let c = column(&m, name);
        (
            c.min.as_ref().unwrap().text.clone(),
            c.max.as_ref().unwrap().text.clone(),
        )
    };
    assert_eq!(bounds("e"), ("6".into(), "9".into()));
    assert_eq!(bounds("f"), ("2".into(), "7".into()));
}

#[test]
fn every_spelling_of_or_null_in_either_order_makes_a_column_nullable() {
    let spellings = [
        r#"{"type": ["string", "null"]}"#,
        r#"{"type": ["null", "string"]}"#,
        r#"{"oneOf": [{"type": "string"}, {"type": "null"}]}"#,
        r#"{"oneOf": [{"type": "null"}, {"type": "string"}]}"#,
        r#"{"anyOf": [{"type": "string"}, {"type": "null"}]}"#,
        r##"{"anyOf": [{"type": "null"}, {"$ref": "#/$defs/s"}]}"##,
    ];
    for spelling in spellings {
        let schema = format!(
            r##"{{"type": "object", "required": ["colour"],
                 "properties": {{"colour": {spelling}}},
                 "$defs": {{"s": {{"type": "string"}}}}}}"##
        );
        let (text, m) = mapping(&schema);
        let c = column(&m, "colour");
        assert_eq!(c.column_type.to_string(), "text", "{spelling}: {text}");
        assert!(!c.required, "{spelling}: null is allowed, so not required");
        assert_eq!(reason(&m, r#"{"colour": null}"#), None, "{spelling}");
    }
    // Without the null, the required field is required.
    let (_, m) = mapping(
        r#"{"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}}"#,
    );
    assert!(column(&m, "a").required);
}

#[test]
fn a_oneof_of_several_object_shapes_is_refused_by_its_pointer() {
    let schema = r##"{"type": "object", "properties": {"payload": {"type": "object",
        "properties": {"shape": {"oneOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}},
            {"$ref": "#/definitions/b"}
        ]}}}},
        "definitions": {"b": {"type": "object", "properties": {"b": {"type": "integer"}}}}}"##;
    let refused = draft_from_schema("public.t", schema).unwrap_err();
    assert_eq!(refused, SchemaError::SeveralShapes("/payload/shape".into()));
    assert!(refused
        .to_string()
        .starts_with("/payload/shape: a oneOf/anyOf of several object shapes"));
    // One object shape or null is a nested object like any other.
    let one = r#"{"type": "object", "properties": {"p": {"oneOf": [{"type": "null"},
        {"type": "object", "properties": {"a": {"type": "string"}}}]}}}"#;
    let (_, m) = mapping(one);
    assert_eq!(names(&m), ["p_a", "sent_at"]);
}

#[test]
fn draft_07_definitions_and_a_reference_back_into_itself() {
    let schema = r##"{
      "$schema": "http://json-schema.org/draft-07/schema#",
      "type": "object",
      "required": ["node"],
      "properties": {"node": {"$ref": "#/definitions/node"}},
      "definitions": {
        "node": {"type": "object", "required": ["label"], "properties": {
          "label": {"type": "string"},
          "child": {"$ref": "#/definitions/node"}
        }}
      }
    }"##;
    let (text, m) = mapping(schema);
    assert!(text.contains("from a draft-07 schema"), "{text}");
    assert_eq!(names(&m), ["node_child", "node_label", "sent_at"]);
    assert_eq!(column(&m, "node_child").column_type.to_string(), "jsonb");
    assert!(column(&m, "node_label").required);
    // A reference to another file, or to nothing here, is refused by name.
    let external = r#"{"type": "object", "properties": {"a": {"$ref": "other.json#/x"}}}"#;
    assert_eq!(
        draft_from_schema("public.t", external).unwrap_err(),
        SchemaError::ExternalRef {
            pointer: "/a".into(),
            reference: "other.json#/x".into()
        }
    );
    let missing = r##"{"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}}"##;
    assert!(matches!(
        draft_from_schema("public.t", missing).unwrap_err(),
        SchemaError::MissingRef { .. }
    ));
    assert_eq!(
        draft_from_schema("public.t", r#"{"type": "array"}"#).unwrap_err(),
        SchemaError::NotAnObject("type array".into())
    );
    assert_eq!(
        draft_from_schema("public.t", "{not json").unwrap_err(),
        SchemaError::NotJson
    );
}

#[test]
fn messages_that_break_the_schema_are_quarantined_with_the_existing_reasons() {
    let (_, m) = mapping(USER_2020);
    let good = r#"{"id": "0b7f3c1e-2a4d-4c5e-9f00-123456789abc", "version": 3,
        "user": {"email": "a@example.com", "plan": "pro", "code": "ABC-12", "score": 99.5}}"#;
    assert_eq!(reason(&m, good), None);
    let broken = [
        (
            r#""plan": "pro""#,
            r#""plan": "gold""#,
            "not_allowed:user_plan",
        ),
        (
            r#""version": 3"#,
            r#""version": -1"#,
            "out_of_range:version",
        ),
        (
            r#""code": "ABC-12""#,
            r#""code": "abc-12""#,
            "no_match:user_code",
        ),
        (
            r#""code": "ABC-12""#,
            r#""code": "ABC-12345""#,
            "too_long:user_code",
        ),
        (
            r#""score": 99.5"#,
            r#""score": 99.51"#,
            "out_of_range:user_score",
        ),
        (r#""version": 3,"#, "", "missing_field:version"),
    ];
    for (from, to, expected) in broken {
        let body = good.replace(from, to);
        assert_ne!(body, good);
        assert_eq!(reason(&m, &body).as_deref(), Some(expected), "{body}");
    }
}

#[test]
fn patterns_keep_their_meaning_anchored_or_not() {
    assert_eq!(anchored_pattern("^[a-z]+$"), "[a-z]+");
    assert_eq!(anchored_pattern("abc"), "(?s:.*)(?:abc)(?s:.*)");
    assert_eq!(anchored_pattern("^a|b$"), "(?s:.*)(?:^a|b$)(?s:.*)");
    let schema = r#"{"type": "object", "properties": {
        "contains": {"type": "string", "pattern": "ab+c"},
        "lookahead": {"type": "string", "pattern": "^(?=x)x$"}}}"#;
    let (text, m) = mapping(schema);
    assert_eq!(reason(&m, r#"{"contains": "xxabbcxx"}"#), None);
    // JSON Schema's `.` aside, an unanchored pattern matches across lines too.
    assert_eq!(reason(&m, r#"{"contains": "line\nabbc\nline"}"#), None);
    assert_eq!(
        reason(&m, r#"{"contains": "xxacxx"}"#).as_deref(),
        Some("no_match:contains")
    );
    // What a mapping's patterns cannot say is left unchecked, with a note.
    assert!(column(&m, "lookahead").pattern.is_none());
    assert!(text.contains("# Note: its pattern uses syntax"), "{text}");
}

#[test]
fn a_cycle_through_any_of_or_all_of_is_stored_whole_not_followed_forever() {
    let schema = r##"{"type": "object", "properties": {"node": {"$ref": "#/$defs/node"}},
      "$defs": {"node": {"type": "object", "properties": {
        "label": {"type": "string"},
        "parent": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
        "twin": {"type": "object", "allOf": [{"$ref": "#/$defs/node"}]}
      }}}}"##;
    let (text, m) = mapping(schema);
    assert_eq!(
        names(&m),
        ["node_label", "node_parent", "node_twin", "sent_at"],
        "{text}"
    );
    assert_eq!(column(&m, "node_parent").column_type.to_string(), "jsonb");
    assert_eq!(column(&m, "node_twin").column_type.to_string(), "jsonb");
}

#[test]
fn all_of_parts_and_refs_keep_their_types_and_checks() {
    let schema = r##"{"allOf": [
        {"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "format": "uuid"}}},
        {"properties": {
           "plan": {"allOf": [{"$ref": "#/$defs/plan"}], "description": "the plan"},
           "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}},
           "state": {"oneOf": [{"const": null}, {"type": "string", "enum": ["on", "off"]}]}
        }}],
      "$defs": {"plan": {"type": "string", "enum": ["free", "pro"]},
                "tag": {"type": "string"}}}"##;
    let (text, m) = mapping(schema);
    assert_eq!(column(&m, "id").column_type.to_string(), "uuid", "{text}");
    assert!(column(&m, "id").required);
    assert_eq!(column(&m, "plan").column_type.to_string(), "text");
    assert_eq!(
        column(&m, "plan").allowed.as_deref(),
        Some(&["free".to_owned(), "pro".to_owned()][..])
    );
    assert_eq!(column(&m, "tags").column_type.to_string(), "text[]");
    assert_eq!(column(&m, "state").column_type.to_string(), "text");
    assert!(!column(&m, "state").required);
}

#[test]
fn arrays_of_addresses_are_scanned_jsonb_never_a_clear_text_array() {
    let schema = r#"{"type": "object", "properties": {
        "recipients": {"type": "array", "items": {"type": "string", "format": "email"}},
        "hops": {"type": "array", "items": {"type": "string", "format": "ipv4"}}}}"#;
    let (text, m) = mapping(schema);
    for name in ["recipients", "hops"] {
        assert_eq!(column(&m, name).column_type.to_string(), "jsonb", "{text}");
    }
    assert!(
        text.contains("# Scanned: its items are e-mail addresses"),
        "{text}"
    );
    // Stored as tokens: the scan of jsonb values finds them.
    let key = crate::keys::MaskKey::from_base64(&crate::keys::MaskKey::generate_base64().unwrap())
        .unwrap();
    let rows = Mapper::new(m, &key)
        .apply(&Message::new(
            r#"{"recipients": ["jo@example.com"], "hops": ["10.1.2.3"]}"#,
            "m",
            1,
        ))
        .unwrap();
    let stored = format!("{:?}", rows[0].values());
    assert!(
        !stored.contains("jo@example.com") && !stored.contains("10.1.2.3"),
        "{stored}"
    );
}

#[test]
fn colliding_names_take_a_suffix_of_their_own_pointer_so_no_name_changes_field() {
    let v1 = r#"{"type": "object", "properties": {"a_b": {"type": "string"}}}"#;
    let v2 = r#"{"type": "object", "properties": {"a_b": {"type": "string"},
        "a": {"type": "object", "properties": {"b": {"type": "integer"}}}}}"#;
    let (_, m1) = mapping(v1);
    let (text, m2) = mapping(v2);
    let source = |m: &Mapping, pointer: &str| -> String {
        m.columns
            .iter()
            .find(|c| c.source == crate::mapping::file::Source::Pointer(pointer.into()))
            .unwrap()
            .name
            .clone()
    };
    assert_eq!(source(&m1, "/a_b"), "a_b");
    let (flat, nested) = (source(&m2, "/a_b"), source(&m2, "/a/b"));
    assert_ne!(flat, nested, "{text}");
    assert!(
        flat.starts_with("a_b_") && nested.starts_with("a_b_"),
        "{text}"
    );
    // No column of v2 is named as v1's with another source.
    assert!(!names(&m2).contains(&"a_b"), "{text}");
    // Long names still fit PostgreSQL's 63 bytes with the prefix and suffix.
    let long = "x".repeat(80);
    let schema = format!(
        r#"{{"type": "object", "properties": {{"{long}": {{"type": "string", "format": "email"}}, "{long}_": {{"type": "string", "format": "email"}}}}}}"#
    );
    let (text, m) = mapping(&schema);
    assert!(m.columns.iter().all(|c| c.name.len() <= 63), "{text}");
}
