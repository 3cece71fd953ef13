use super::*;

/// The pointers of the tests, in one plan.
const POINTERS: [&str; 15] = [
    "",
    "/1",
    "/a",
    "/a/b",
    "/a/b/c",
    "/list/0",
    "/list/1/x",
    "/list/01",
    "/list/+1",
    "/s~1t",
    "/m~0n",
    "/n",
    "/e",
    "/",
    "/a/list/2",
];

fn plan() -> (Plan, Vec<usize>) {
    let mut plan = Plan::default();
    let slots = POINTERS.iter().map(|p| plan.slot(p).unwrap()).collect();
    (plan, slots)
}

/// Every pointer finds, in the document read once, what `serde_json::Value::pointer` finds in
/// the document's tree.
fn same_as_the_tree(text: &str) {
    let (plan, slots) = plan();
    let doc = Document::read(&plan, text, "").unwrap();
    let tree: Json = serde_json::from_str(text).unwrap();
    for (pointer, slot) in POINTERS.iter().zip(slots) {
        let found = doc
            .get(slot)
            .map(|f| f.to_json().ok().unwrap().into_owned());
        assert_eq!(found.as_ref(), tree.pointer(pointer), "{pointer} in {text}");
    }
}

#[test]
fn pointers_find_what_the_tree_finds() {
    for text in [
        r#"{"a": {"b": {"c": 1.50e3}}, "n": null, "e": "x\"y"}"#,
        r#"{"a": {"b": "not an object"}, "list": [{"x": 1}, {"x": [true, false]}]}"#,
        r#"{"list": ["zero", {"x": {"deep": [1, 2]}}], "s/t": -0, "m~n": 12345678901234567890123}"#,
        r#"{"a": [1, 2, 3], "": "empty key", "list": {"0": "key zero", "01": 1, "+1": 2}}"#,
        r#"{"a": {"list": [0, 1, {"k": "v"}]}}"#,
        r#"[1, 2, 3]"#,
        r#""just a string""#,
        r#"12.5e-3"#,
        r#"null"#,
        "  {\"a\" : { \"b\" : [ 1 , 2 ] } }  ",
    ] {
        same_as_the_tree(text);
    }
}

/// A field a pointer names (or one above it) given twice holds no value, by either reader:
/// which one is meant cannot be told. One no pointer reads is the last one given.
#[test]
fn a_field_given_twice_is_repeated() {
    let (plan, slots) = plan();
    let at = |p: &str| slots[POINTERS.iter().position(|q| *q == p).unwrap()];
    for (text, repeated, not) in [
        (
            r#"{"a": {"b": {"c": 1}}, "a": {"x": 2}}"#,
            &["/a", "/a/b", "/a/b/c"][..],
            &[][..],
        ),
        (r#"{"a": {"b": 1, "b": 2}}"#, &["/a/b"], &["/a"]),
        (
            r#"{"a": {"b": {"c": 1}}, "a": "flat"}"#,
            &["/a", "/a/b", "/a/b/c"],
            &[],
        ),
        (
            r#"{"list": [{"x": 1}, {"x": 2}], "list": []}"#,
            &["/list/0", "/list/1/x"],
            &[],
        ),
        (r#"{"n": 1, "e": "x", "n": 2}"#, &["/n"], &["/e"]),
        (r#"{"n": "\ud800", "n": 2}"#, &[], &["/n"]),
    ] {
        for read in [Document::read, Document::read_with_serde] {
            let doc = read(&plan, text, "").unwrap();
            for p in repeated {
                assert!(
                    matches!(doc.get(at(p)), Some(Found::Repeated(_))),
                    "{p} in {text}"
                );
            }
            for p in not {
                assert!(
                    !matches!(doc.get(at(p)), Some(Found::Repeated(_))),
                    "{p} in {text}"
                );
            }
        }
    }
    // A lone surrogate escape stays, whichever of the two holds it.
    for text in [r#"{"n": "\ud800", "n": 2}"#, r#"{"n": 2, "n": "\ud800"}"#] {
        let doc = Document::read(&plan, text, "").unwrap();
        assert!(
            matches!(doc.get(at("/n")), Some(Found::BadEscape(_))),
            "{text}"
        );
    }
    let doc = Document::read(&plan, r#"{"z": 1, "a": 2, "z": 3, "b": 4}"#, "").unwrap();
    let taken = ["a".to_owned()].into_iter().collect();
    assert_eq!(doc.unknown(&taken), ["b", "z"]);
    assert_eq!(
        doc.rest(&taken).unwrap(),
        serde_json::json!({"b": 4, "z": 3})
    );
}

/// A top-level value that is not an object is told by its kind; an object is not.
#[test]
fn a_document_knows_when_it_is_not_an_object() {
    let (plan, _) = plan();
    for (text, kind) in [
        ("[1, 2]", Some("array")),
        ("\"s\"", Some("string")),
        ("12.5", Some("number")),
        ("-1e400", Some("number")),
        ("true", Some("boolean")),
        ("null", Some("null")),
        ("{}", None),
        (r#"{"a": 1}"#, None),
        (r#"{"a\u0062": 1}"#, None),
    ] {
        assert_eq!(
            Document::read(&plan, text, "").unwrap().not_object(),
            kind,
            "{text}"
        );
    }
}

/// Where serde_json's reader of the whole text would stop at a lone surrogate escape: the
/// first one in the text of those the given slots hold, on any line.
#[test]
fn a_lone_surrogate_escape_is_placed_where_a_reader_stops_at_it() {
    let (plan, slots) = plan();
    let (n, e) = (slots[11], slots[12]);
    for text in [
        r#"{"n": "\ud800", "e": "x\udc00"}"#,
        "{\n  \"e\": \"ok\",\n  \"n\": \"ab\\ud83d\",\n  \"e\": \"\\udc00\"\n}",
        r#"{"e": "\ud800\u0041", "n": "\ud800"}"#,
    ] {
        let doc = Document::read(&plan, text, "").unwrap();
        let rejection = doc.lone_surrogate([n, e].into_iter()).unwrap();
        let serde = serde_json::from_str::<Json>(text).unwrap_err();
        assert_eq!(rejection.reason, "invalid_utf16_escape");
        assert_eq!(
            rejection.detail.unwrap(),
            format!(
                "lone surrogate escape at line {} column {}",
                serde.line(),
                serde.column()
            ),
            "{text}"
        );
    }
    let doc = Document::read(&plan, r#"{"n": 1, "e": "x"}"#, "").unwrap();
    assert!(doc.lone_surrogate([n, e].into_iter()).is_none());
}

#[test]
fn numbers_keep_their_text_and_strings_are_borrowed_unless_escaped() {
    let (plan, slots) = plan();
    let doc = Document::read(
        &plan,
        r#"{"n": 1.0E+2, "e": "plain", "a": "esc\u00e9aped"}"#,
        "",
    )
    .unwrap();
    assert!(matches!(
        doc.get(slots[11]),
        Some(Found::Number(Cow::Borrowed("1.0E+2")))
    ));
    assert!(matches!(
        doc.get(slots[12]),
        Some(Found::Str(Cow::Borrowed("plain")))
    ));
    assert!(matches!(doc.get(slots[2]), Some(Found::Str(Cow::Owned(s))) if s == "escéaped"));
}

#[test]
fn a_lone_surrogate_is_found_as_such_and_nesting_beyond_the_limit_is_skipped() {
    let (plan, slots) = plan();
    let doc = Document::read(&plan, r#"{"e": "\ud800", "x": "\udc00"}"#, "").unwrap();
    assert!(matches!(doc.get(slots[12]), Some(Found::BadEscape(_))));
    let deep = format!(
        r#"{{"x": {}1{}, "n": 5}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let doc = Document::read(&plan, &deep, "").unwrap();
    assert_eq!(doc.get(slots[11]).and_then(Found::as_i64), Some(5));
    // Read whole, it is too deep for a tree.
    assert!(doc.get(slots[0]).unwrap().to_json().is_err());
    assert!(doc.rest(&HashSet::new()).is_none());
}

#[test]
fn text_that_is_not_one_json_value_is_not_json_with_where_it_stops() {
    let (plan, _) = plan();
    for (text, at) in [
        ("{", "truncated JSON at line 1 column 1"),
        (
            "{\"a\": 1} trailing",
            "JSON syntax error at line 1 column 10",
        ),
        ("{\"a\":\n tru}", "JSON syntax error at line 2 column 5"),
        ("", "truncated JSON at line 1 column 0"),
    ] {
        let rejection = Document::read(&plan, text, "ctx: ").err().unwrap();
        assert_eq!(rejection.reason, "not_json");
        assert_eq!(rejection.detail.as_deref(), Some(&*format!("ctx: {at}")));
        let tree = serde_json::from_str::<Json>(text).unwrap_err();
        assert!(
            at.ends_with(&format!("line {} column {}", tree.line(), tree.column())),
            "{at}"
        );
    }
}

#[test]
fn a_pointer_not_starting_with_a_slash_has_no_slot() {
    let mut plan = Plan::default();
    assert_eq!(plan.slot("a/b"), None);
    assert_eq!(plan.slot("/a"), Some(0));
    assert_eq!(plan.slot("/a"), Some(0));
}

#[test]
fn a_number_compares_as_the_tree_wrote_it() {
    for text in [
        "1",
        "-0",
        "1.50",
        "1e5",
        "1E5",
        "1e+5",
        "1E-5",
        "-2.5e-0",
        "12345678901234567890123",
    ] {
        let tree: Json = serde_json::from_str(text).unwrap();
        let found = Found::Number(Cow::Borrowed(text));
        assert_eq!(found.as_text().unwrap(), tree.to_string(), "{text}");
        assert_eq!(*found.to_json().ok().unwrap(), tree, "{text}");
    }
}

mod generated {
    use super::*;
    use proptest::prelude::*;

    /// JSON text over a few keys (so pointers hit and fields repeat), nested a few levels,
    /// spaced and escaped here and there.
    fn text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec!["a", "b", "0", "1", "s/t", "m~n", "é", "a\\u0062"]);
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("\"x\\\"y\"".to_owned()),
            Just("\"plain\"".to_owned()),
            Just("\"a longer string, é and ü, read eight bytes at a time\"".to_owned()),
            Just("\"a long one with a tab \\t and a quote \\\" past the eighth byte\"".to_owned()),
            Just("-1.5E+3".to_owned()),
            Just("12345678901234567890".to_owned()),
            Just("0".to_owned()),
        ];
        leaf.prop_recursive(4, 32, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(", "))),
                prop::collection::vec((key.clone(), inner), 0..6).prop_map(|fields| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\" : {v}"))
                        .collect();
                    format!("{{ {} }}", fields.join(","))
                }),
            ]
        })
    }

    /// Whether some object of `text` (JSON) names a key twice.
    fn repeats_a_key(text: &str) -> bool {
        struct Repeats(bool);
        struct Look;
        impl<'de> de::Deserialize<'de> for Repeats {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(Look).map(Repeats)
            }
        }
        impl<'de> Visitor<'de> for Look {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            scalars_are_nothing!(false);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
                let mut repeats = false;
                while let Some(Repeats(r)) = seq.next_element()? {
                    repeats |= r;
                }
                Ok(repeats)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
                let (mut seen, mut repeats) = (HashSet::new(), false);
                while let Some(key) = map.next_key::<String>()? {
                    repeats |= !seen.insert(key);
                    repeats |= map.next_value::<Repeats>()?.0;
                }
                Ok(repeats)
            }
        }
        serde_json::from_str::<Repeats>(text).is_ok_and(|r| r.0)
    }

    fn pointer() -> impl Strategy<Value = String> {
        let token = prop::sample::select(vec![
            "a",
            "b",
            "ab",
            "0",
            "1",
            "01",
            "s~1t",
            "m~0n",
            "é",
            "list",
            "e",
            "n",
            "a_rather_long_key",
        ]);
        prop::collection::vec(token, 0..4)
            .prop_map(|tokens| tokens.iter().map(|t| format!("/{t}")).collect::<String>())
    }

    /// An object at the top (what the shortcut reads), or any text.
    fn top() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "a",
            "b",
            "0",
            "list",
            "s/t",
            "é",
            "e",
            "n",
            "a_rather_long_key",
            "a_rather_long_kez",
        ]);
        prop_oneof![
            3 => prop::collection::vec((key, text()), 0..6).prop_map(|fields| {
                let fields: Vec<String> =
                    fields.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", fields.join(", "))
            }),
            1 => text(),
        ]
    }

    /// A text with an edit or two at character boundaries (a JSON character put in, put in
    /// place of another, or taken out, or the rest cut off): often no longer JSON.
    fn edited() -> impl Strategy<Value = String> {
        let put = prop::sample::select(vec![
            "\"", "\\", ",", "}", "]", "{", "[", ":", "0", "00", "01", "-", "e", ".", " ", "\u{1}",
            "\u{1f}", "\u{c}", "\u{7f}", "\t", "\n", "\r", "x", "u", "n", "\\u00", "\\ud800", "+",
        ]);
        let edit = (any::<prop::sample::Index>(), 0..4u8, put);
        (top(), prop::collection::vec(edit, 1..3)).prop_map(|(mut text, edits)| {
            for (at, how, put) in edits {
                let boundaries: Vec<usize> = text
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain([text.len()])
                    .collect();
                let at = boundaries[at.index(boundaries.len())];
                match how {
                    0 => text.insert_str(at, put),
                    1 | 2 if at < text.len() => {
                        text.remove(at);
                        if how == 2 {
                            text.insert_str(at, put);
                        }
                    }
                    _ => text.truncate(at),
                }
            }
            text
        })
    }

    /// What a document holds, comparable: each slot's value and the fields kept.
    pub(super) fn held(doc: &Document<'_>) -> (Vec<Option<String>>, Vec<(String, String)>) {
        let slots = doc
            .found
            .iter()
            .map(|f| {
                f.as_ref().map(|f| match f {
                    Found::Null => "null".to_owned(),
                    Found::Bool(b) => format!("bool {b}"),
                    Found::Number(t) => format!("number {t}"),
                    Found::Int(n) => format!("int {n}"),
                    Found::Str(s) => format!("string {s}"),
                    Found::BadEscape(t) => format!(
                        "bad escape {t} at {}",
                        t.as_ptr() as usize - doc.text.as_ptr() as usize
                    ),
                    Found::Repeated(at) => {
                        format!("repeated at {}", at - doc.text.as_ptr() as usize)
                    }
                    Found::Raw(t) => format!("raw {t}"),
                    Found::Tree(t) => format!("tree {t}"),
                    Found::TooDeep => "too deep".to_owned(),
                })
            })
            .collect();
        let fields = doc
            .fields
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).to_owned()))
            .collect();
        (slots, fields)
    }

    /// The shortcut reads what serde's reader reads, or leaves the text to it: it never takes
    /// text serde refuses, nor reads a value differently.
    fn the_shortcut_agrees(
        text: &str,
        pointers: &[String],
        shared: bool,
    ) -> Result<(), TestCaseError> {
        let mut plan = Plan::default();
        for p in pointers {
            plan.slot(p);
        }
        if shared {
            plan.share();
        }
        let by_serde = Document::read_with_serde(&plan, text, "");
        if let Some(doc) = scan::read(&plan, text) {
            let by_serde = by_serde.map_err(|r| {
                TestCaseError::fail(format!(
                    "serde refuses ({:?}) what the shortcut read: {text}",
                    r.detail
                ))
            })?;
            prop_assert_eq!(held(&doc), held(&by_serde), "{}", text);
        }
        Ok(())
    }

    proptest! {
        /// A key of up to eight bytes is known by its order alone (how a lookup finds it).
        #[test]
        fn a_short_key_is_known_by_its_order(a in "[ab\u{e9}~]{0,8}", b in "[ab\u{e9}~]{0,8}") {
            prop_assume!(a.len() <= 8 && b.len() <= 8);
            prop_assert_eq!(order(&a) == order(&b), a == b);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn the_shortcut_reads_what_serde_reads(
            text in top(),
            pointers in prop::collection::vec(pointer(), 1..6),
            shared in any::<bool>(),
        ) {
            the_shortcut_agrees(&text, &pointers, shared)?;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8192))]

        #[test]
        fn the_shortcut_never_takes_what_serde_refuses(
            text in edited(),
            pointers in prop::collection::vec(pointer(), 1..6),
            shared in any::<bool>(),
        ) {
            the_shortcut_agrees(&text, &pointers, shared)?;
        }
    }

    proptest! {
        /// Whatever the document and pointers, a pointer finds what the tree's finds, or, when
        /// a field is given twice, nothing it could mistake for one of the two.
        #[test]
        fn every_pointer_finds_what_the_tree_finds(
            text in text(),
            pointers in prop::collection::vec(pointer(), 1..6),
        ) {
            let mut plan = Plan::default();
            let slots: Vec<usize> = pointers.iter().map(|p| plan.slot(p).unwrap()).collect();
            let doc = Document::read(&plan, &text, "").unwrap();
            let tree: Json = serde_json::from_str(&text).unwrap();
            for (pointer, slot) in pointers.iter().zip(slots) {
                if let Some(Found::Repeated(_)) = doc.get(slot) {
                    prop_assert!(repeats_a_key(&text), "{} in {}", pointer, text);
                    continue;
                }
                let found = doc.get(slot).map(|f| f.to_json().ok().unwrap().into_owned());
                prop_assert_eq!(found.as_ref(), tree.pointer(pointer), "{} in {}", pointer, text);
            }
        }
    }
}

#[test]
fn a_key_is_always_a_key_in_a_tree() {
    // serde_json's `Value`, with the `raw_value` feature, would read this object as `[1]`.
    let text = r#"{"$serde_json::private::RawValue": "[1]"}"#;
    assert_eq!(
        tree(text).unwrap(),
        Json::Object(
            [(
                "$serde_json::private::RawValue".to_owned(),
                Json::from("[1]")
            )]
            .into_iter()
            .collect()
        )
    );
    // Numbers keep their text; a field given twice is the last.
    assert_eq!(
        tree(r#"{"n": 1.50, "n": 2E3}"#).unwrap().to_string(),
        r#"{"n":2e+3}"#
    );
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(tree(&deep).is_err());
    let (plan, _) = plan();
    let doc = Document::read(
        &plan,
        r#"{"z": {"$serde_json::private::RawValue": "{\"a\":1}"}}"#,
        "",
    )
    .unwrap();
    assert_eq!(
        doc.rest(&HashSet::new()).unwrap().to_string(),
        r#"{"z":{"$serde_json::private::RawValue":"{\"a\":1}"}}"#
    );
}

#[test]
fn the_shortcut_reads_the_common_message_and_leaves_the_rest_to_serde() {
    let (plan, slots) = plan();
    for body in include_str!("../../../examples/login-queue-sample.jsonl").lines() {
        let by_serde = Document::read_with_serde(&plan, body, "");
        match scan::read(&plan, body) {
            Some(doc) => assert_eq!(
                generated::held(&doc),
                generated::held(&by_serde.unwrap()),
                "{body}"
            ),
            // The sample's one bad message is not JSON.
            None => assert!(by_serde.is_err(), "{body}"),
        }
    }
    let read = |text: &str| scan::read(&plan, text).map(|doc| doc.get(slots[2]).is_some());
    assert_eq!(
        read(r#" {"a": {"b": {"c": [1, {"x": "\n"}]}}, "z": -0.5e+3} "#),
        Some(true)
    );
    // An escaped string where a pointer goes below it: serde reads it, and refuses this one.
    let lone = r#"{"a": "\ud800"}"#;
    assert!(read(lone).is_none());
    assert!(Document::read_with_serde(&plan, lone, "").is_err());
    // What it leaves to serde: another top-level value, an escaped key, an array below a
    // pointer, deep nesting, serde's number token.
    for text in [
        "[1]",
        r#"{"\u0061": 1}"#,
        r#"{"list": [1, 2]}"#,
        &format!(r#"{{"x": {}{}}}"#, "[".repeat(200), "]".repeat(200)),
        r#"{"$serde_json::private::Number": "1"}"#,
    ] {
        assert!(read(text).is_none(), "{text}");
        assert!(Document::read_with_serde(&plan, text, "").is_ok(), "{text}");
    }
    // And text that is not JSON.
    for text in [
        r#"{"a": 01}"#,
        r#"{"a": 1,}"#,
        r#"{"a": [1,]}"#,
        r#"{"a": "\x"}"#,
        "{\"a\": \"\u{1}\"}",
        r#"{"a": tru}"#,
        r#"{"a": 1.}"#,
        r#"{"a": 1e}"#,
        r#"{"a": -}"#,
        r#"{"a" 1}"#,
        r#"{"a": 1} x"#,
    ] {
        assert!(read(text).is_none(), "{text}");
        assert!(
            Document::read_with_serde(&plan, text, "").is_err(),
            "{text}"
        );
    }
}

#[test]
fn a_node_of_many_children_and_long_keys_alike_finds_each_one() {
    let pointers = [
        "/a",
        "/b",
        "/c",
        "/d",
        "/e",
        "/f",
        "/g",
        "/h",
        "/i",
        "/j",
        "/a_rather_long_key",
        "/a_rather_long_kez",
        "/a_rather_long_key_too",
        "/a_rather",
        "/a_rathe",
        "/x/a_rather_long_key",
        "/x/a_rather_long_kez",
        "/x/a",
        "/x/b",
        "/x/c",
        "/x/d",
        "/x/e",
        "/x/f",
        "/x/g",
        "/x/h",
        "/x/i",
    ];
    let mut plan = Plan::default();
    let slots: Vec<usize> = pointers.iter().map(|p| plan.slot(p).unwrap()).collect();
    let text = r#"{"j": 10, "a_rather_long_kez": "kez", "i": 9, "a_rather_long_key": "key",
        "a_rather": 8, "a_rathe": 7, "a_rather_long_key_too": "too", "a": 1, "c": 3, "e": 5,
        "g": 7, "zz": 0, "a_rather_long_kex": "kex",
        "x": {"a_rather_long_kez": 2, "i": 1, "a_rather_long_key": 3, "h": 0, "a": -1}}"#;
    let tree: Json = serde_json::from_str(text).unwrap();
    let by_serde = Document::read_with_serde(&plan, text, "").unwrap();
    let doc = scan::read(&plan, text).expect("an object with plain keys");
    assert_eq!(generated::held(&doc), generated::held(&by_serde));
    for (pointer, slot) in pointers.iter().zip(slots) {
        let found = doc
            .get(slot)
            .map(|f| f.to_json().ok().unwrap().into_owned());
        assert_eq!(found.as_ref(), tree.pointer(pointer), "{pointer}");
    }
    // The fields no pointer starts with are kept, by both readers.
    let kept: Vec<&str> = doc.fields.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(kept, ["zz", "a_rather_long_kex"]);
}

#[test]
fn the_shortcut_reads_objects_of_every_kind_of_value() {
    let (plan, _) = plan();
    for text in [
        r#"{"a": {"b": {"c": 1.50e3}}, "n": null, "e": "x\"y"}"#,
        r#"{"a": {"b": "not an object"}, "z": [{"x": 1}, {"x": [true, false]}]}"#,
        "{\"s/t\": -0, \"m~n\": 12345678901234567890123, \"1\": \"\u{7f}é\"}",
        "\t{\r\n\"a\" : { \"b\" : { \"c\" : [ 1 , 2 ] } } }\n",
        r#"{"": "empty key", "n": "a long string of more than eight bytes", "e": {}}"#,
    ] {
        let doc = scan::read(&plan, text).expect(text);
        let by_serde = Document::read_with_serde(&plan, text, "").unwrap();
        assert_eq!(generated::held(&doc), generated::held(&by_serde), "{text}");
    }
}
