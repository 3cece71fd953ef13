//! Unit tests of `mapping::transform`.

use super::*;

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
    let body = serde_json::json!({"Records": [record("a"), record("b"), record("c")]}).to_string();
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

/// Bounds and `rest` see a number's every digit as it was sent.
#[test]
fn bounds_and_rest_see_every_digit_sent() {
    let mapping = r#"
table = "public.t"
columns = [
  { name = "amount", from = "/amount", type = "numeric", max = 1 },
  { name = "count", from = "/count", type = "bigint", min = -9007199254740992 },
  { name = "rest", from = "rest", type = "jsonb" },
]
"#;
    // Through an f64 both would be exactly on their bound and pass.
    let over = apply(mapping, r#"{"amount": 1.0000000000000000001, "count": 1}"#).unwrap_err();
    assert_eq!(over.reason, "out_of_range:amount");
    let under = apply(mapping, r#"{"amount": 1, "count": -9007199254740993}"#).unwrap_err();
    assert_eq!(under.reason, "out_of_range:count");
    let rows = apply(
        mapping,
        r#"{"amount": 0.99999999999999999999, "count": 9007199254740993, "id": 123456789012345678901234, "big": 1e400}"#,
    )
    .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("0.99999999999999999999"));
    assert_eq!(rows[0][1].as_deref(), Some("9007199254740993"));
    assert_eq!(
        rows[0][2].as_deref(),
        // serde_json writes the exponent's sign: the same number to PostgreSQL.
        Some(r#"{"big":1e+400,"id":123456789012345678901234}"#)
    );
}

/// A bound with more digits than a double keeps, written as a decimal string, is compared
/// exactly; one that is not a decimal is refused when the mapping is read.
#[test]
fn bounds_written_as_decimal_strings_keep_every_digit() {
    let mapping = r#"
table = "public.t"
columns = [
  { name = "amount", from = "/amount", type = "numeric(20,2)", min = "-0.01", max = "12345678901234567.89" },
]
"#;
    assert!(apply(mapping, r#"{"amount": 12345678901234567.89}"#).is_ok());
    assert!(apply(mapping, r#"{"amount": -0.01}"#).is_ok());
    // Through an f64 the bound is 12345678901234568: this would pass.
    let over = apply(mapping, r#"{"amount": 12345678901234567.90}"#).unwrap_err();
    assert_eq!(over.reason, "out_of_range:amount");
    assert_eq!(
        over.detail.as_deref(),
        Some("outside the column's bounds (min -0.01, max 12345678901234567.89)")
    );
    let under = apply(mapping, r#"{"amount": -0.02}"#).unwrap_err();
    assert_eq!(under.reason, "out_of_range:amount");
    for (bad, says) in [
        (r#"max = "1e3""#, "key `max`: `1e3` is not a plain decimal"),
        (r#"min = "2", max = "1.5""#, "`min` is above `max`"),
    ] {
        let text = format!(
            "table = \"public.t\"\ncolumns = [\n  {{ name = \"n\", from = \"/n\", type = \"numeric\", {bad} }},\n]\n"
        );
        let error = crate::mapping::parse(&text).unwrap_err().0;
        assert!(error.contains(says), "{bad}: {error}");
    }
}

/// A column whose value is fixed (a constant, an SQS field) and can never convert would
/// quarantine every message: the mapping is refused when it is read, naming the column.
#[test]
fn columns_that_can_never_convert_are_refused_when_the_mapping_is_read() {
    let with = |column: &str| {
        crate::mapping::parse(&format!(
            "table = \"public.t\"\ncolumns = [\n  {{ name = \"id\", from = \"/id\", type = \"text\" }},\n  {column},\n]\n"
        ))
        .map(|_| ())
        .map_err(|e| e.0)
    };
    for refused in [
        r#"{ name = "n", value = "abc", type = "integer" }"#,
        r#"{ name = "n", value = 3.5, type = "integer" }"#,
        r#"{ name = "n", value = 40000, type = "smallint" }"#,
        r#"{ name = "n", value = "x", type = "date" }"#,
        r#"{ name = "n", value = "toolong", type = "varchar(3)" }"#,
        r#"{ name = "n", from = "sqs:SentTimestamp", type = "integer" }"#,
        r#"{ name = "n", from = "sqs:MessageGroupId", type = "uuid" }"#,
        r#"{ name = "n", from = "sqs:MessageId", type = "boolean" }"#,
        r#"{ name = "n", from = "rest", type = "text" }"#,
        r#"{ name = "n", from = "sqs:SentTimestamp", type = "text", mask = "hmac" }"#,
        r#"{ name = "n", value = 7, type = "text", mask = "siv" }"#,
    ] {
        let error = with(refused).expect_err(refused);
        assert!(
            error.starts_with("column 2 (`n`):")
                && (error.contains("can never be stored as")
                    || error.contains("only jsonb holds")
                    || error.contains("every message would be refused")),
            "{refused}: {error}"
        );
    }
    for accepted in [
        r#"{ name = "n", value = "7", type = "integer" }"#,
        r#"{ name = "n", value = "123456789012345678901234567890", type = "numeric" }"#,
        r#"{ name = "n", from = "sqs:SentTimestamp", type = "bigint" }"#,
        r#"{ name = "n", from = "sqs:SentTimestamp", type = "timestamptz" }"#,
        r#"{ name = "n", from = "sqs:MessageId", type = "uuid" }"#,
        r#"{ name = "n", from = "sqs:ApproximateReceiveCount", type = "smallint" }"#,
        r#"{ name = "n", from = "sqs:MessageGroupId", type = "varchar(128)" }"#,
    ] {
        assert_eq!(with(accepted), Ok(()), "{accepted}");
    }
}

/// `match` takes the messages whose field or attribute is one of its values, on each document
/// after the envelope; a message none of whose documents it takes is `no_mapping`.
#[test]
fn match_takes_messages_by_field_or_attribute_and_the_rest_are_no_mapping() {
    let by_field = r#"
table = "public.users"
match = { field = "/type", in = ["user.updated", "user.created"] }
columns = [{ name = "id", from = "/id", type = "integer", required = true }]
"#;
    assert!(apply(by_field, r#"{"type": "user.updated", "id": 1}"#).is_ok());
    assert!(apply(by_field, r#"{"type": "user.created", "id": 2}"#).is_ok());
    for other in [
        r#"{"type": "page.viewed", "id": 3}"#,
        r#"{"id": 4}"#,
        r#"{"type": null, "id": 5}"#,
    ] {
        let refused = apply(by_field, other).unwrap_err();
        assert_eq!(refused.reason, "no_mapping", "{other}");
        let detail = refused.detail.unwrap();
        assert!(
            detail.contains("field /type is one of 2 value(s)") && !detail.contains("page"),
            "{detail}"
        );
    }
    // A number or boolean is compared as JSON writes it.
    let by_number = r#"
table = "public.t"
match = { field = "/v", equals = 2 }
columns = [{ name = "id", from = "/id", type = "integer" }]
"#;
    assert!(apply(by_number, r#"{"v": 2, "id": 1}"#).is_ok());
    assert_eq!(
        apply(by_number, r#"{"v": "3", "id": 1}"#)
            .unwrap_err()
            .reason,
        "no_mapping"
    );
    // An SQS message attribute, or under SNS one of the notification's MessageAttributes.
    let by_attribute = r#"
table = "public.audit"
envelope = "sns"
match = { attribute = "kind", equals = "audit" }
columns = [{ name = "id", from = "/id", type = "integer" }]
"#;
    let m = Mapper::new(Mapping::parse(by_attribute).unwrap(), &key());
    let notification = |attributes: serde_json::Value| {
        serde_json::json!({
            "Type": "Notification", "MessageId": "sns-1", "TopicArn": "arn:aws:sns:t",
            "Message": "{\"id\": 7}", "MessageAttributes": attributes
        })
        .to_string()
    };
    let sns_audit = notification(serde_json::json!({"kind": {"Type": "String", "Value": "audit"}}));
    assert_eq!(m.apply(&message(&sns_audit)).unwrap().len(), 1);
    let sns_other = notification(serde_json::json!({"kind": {"Type": "String", "Value": "x"}}));
    assert_eq!(
        m.apply(&message(&sns_other)).unwrap_err().reason,
        "no_mapping"
    );
    let plain = notification(serde_json::json!({}));
    let attributes = [("kind".to_owned(), "audit".to_owned())];
    let with_sqs_attribute = Message {
        attributes: &attributes,
        ..message(&plain)
    };
    assert_eq!(m.apply(&with_sqs_attribute).unwrap().len(), 1);
    // S3: records are taken one by one.
    let s3 = r#"
table = "public.created"
envelope = "s3"
match = { field = "/eventName", equals = "ObjectCreated:Put" }
columns = [{ name = "key", from = "/s3/object/key", type = "text" }]
"#;
    let records = r#"{"Records": [
        {"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "a"}}},
        {"eventName": "ObjectRemoved:Delete", "s3": {"object": {"key": "b"}}},
        {"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "c"}}}]}"#;
    assert_eq!(apply(s3, records).unwrap().len(), 2);
    let removed =
        r#"{"Records": [{"eventName": "ObjectRemoved:Delete", "s3": {"object": {"key": "b"}}}]}"#;
    assert_eq!(apply(s3, removed).unwrap_err().reason, "no_mapping");
    assert_eq!(apply(s3, r#"{"Event": "s3:TestEvent"}"#).unwrap().len(), 0);
    // A field of the envelope: EventBridge's detail-type.
    let by_detail_type = r#"
table = "public.signups"
envelope = "eventbridge"
match = { field = "eventbridge:detail-type", equals = "Signup" }
columns = [{ name = "id", from = "/id", type = "integer" }]
"#;
    let event = |kind: &str| {
        serde_json::json!({"id": "e-1", "source": "app", "detail-type": kind, "detail": {"id": 1}})
            .to_string()
    };
    assert_eq!(apply(by_detail_type, &event("Signup")).unwrap().len(), 1);
    assert_eq!(
        apply(by_detail_type, &event("Login")).unwrap_err().reason,
        "no_mapping"
    );
    // The match's field is the mapping's: not `rest`'s, not unknown.
    let with_rest = r#"
table = "public.t"
match = { field = "/type", equals = "a" }
columns = [
  { name = "id", from = "/id", type = "integer" },
  { name = "rest", from = "rest", type = "jsonb" },
]
"#;
    let m = Mapper::new(Mapping::parse(with_rest).unwrap(), &key());
    let (rows, unknown, _) = m.apply_counting(&message(r#"{"type": "a", "id": 1, "x": 2}"#));
    assert_eq!(
        rows.unwrap()[0].values()[1].to_text().as_deref(),
        Some(r#"{"x":2}"#)
    );
    assert_eq!(unknown, 1);
    // Mistakes are named.
    for (bad, says) in [
        (
            r#"match = { field = "/t", equals = nan }"#,
            "a finite number",
        ),
        (
            r#"match = { field = "sns:Subject", equals = "a" }"#,
            "is a field of the sns envelope",
        ),
        (
            r#"match = { field = "type", equals = "a" }"#,
            "is not a JSON pointer",
        ),
        (r#"match = { field = "/t" }"#, "give either `equals`"),
        (
            r#"match = { attribute = "k", field = "/t", equals = "a" }"#,
            "give either `field`",
        ),
        (
            r#"match = { field = "/t", in = [] }"#,
            "give either `equals`",
        ),
    ] {
        let text = format!(
            "table = \"public.t\"\n{bad}\ncolumns = [{{ name = \"id\", from = \"/id\", type = \"integer\" }}]\n"
        );
        let error = Mapping::parse(&text).unwrap_err().0;
        assert!(
            error.starts_with("key `match`: ") && error.contains(says),
            "{bad}: {error}"
        );
    }
}

/// A jsonb column whose field sits under a personal name anywhere on its pointer is personal
/// whole; below the message, the keys of the column's own value may be data, never shown.
#[test]
fn a_jsonb_column_under_a_personal_name_is_masked_whole_and_its_keys_stay_unshown() {
    let mapping = r#"
table = "public.t"
columns = [
  { name = "lines", from = "/address/lines", type = "jsonb" },
  { name = "scores", from = "/scores", type = "jsonb" },
]
"#;
    let rows = apply(
        mapping,
        r#"{"address": {"lines": ["1 Main St", "Springfield"]}, "scores": {"ada": 1}}"#,
    )
    .unwrap();
    let lines = rows[0][0].clone().unwrap();
    assert!(
        !lines.contains("Main St") && !lines.contains("Springfield"),
        "{lines}"
    );
    assert_eq!(rows[0][1].as_deref(), Some(r#"{"ada":1}"#));
    let rejecting = mapping.replace(
        "table = \"public.t\"",
        "table = \"public.t\"\nrest_personal = \"reject\"",
    );
    let refused = apply(
        &rejecting,
        r#"{"address": {"lines": []}, "scores": {"ada_lovelace": {"email": "a@b.org"}}}"#,
    )
    .unwrap_err();
    assert_eq!(refused.reason, "personal_data:scores");
    let detail = refused.detail.unwrap();
    assert!(
        detail.contains("at `/*/email`") && !detail.contains("lovelace"),
        "{detail}"
    );
}

const CONTRACT: &str = r#"
table = "public.t"
columns = [
  { name = "id", from = "/id", type = "text" },
  { name = "amount", from = "/order/amount", type = "numeric" },
]"#;

#[test]
fn unknown_reject_quarantines_a_field_no_column_takes_by_its_name() {
    let mapping = format!("unknown = \"reject\"\n{CONTRACT}");
    assert!(apply(
        &mapping,
        r#"{"id": "a", "order": {"amount": 1, "note": "x"}}"#
    )
    .is_ok());
    let refused = apply(&mapping, r#"{"id": "a", "coupon": "X1"}"#).unwrap_err();
    assert_eq!(refused.reason, "unknown_field:coupon");
    // A name that is data (an address) is not written into the reason.
    let refused = apply(&mapping, r#"{"id": "a", "jo@example.com": 1}"#).unwrap_err();
    assert_eq!(refused.reason, "unknown_field");
    assert!(!refused.detail.unwrap().contains("example"));
    // Ignore (the default) stores what the columns take and nothing else.
    assert_eq!(
        apply(CONTRACT, r#"{"id": "a", "coupon": "X1"}"#).unwrap(),
        [[Some("a".to_owned()), None]]
    );
    // A column that takes the whole message leaves nothing unknown.
    let whole = "unknown = \"reject\"\ntable = \"public.t\"\ncolumns = [{ name = \"doc\", from = \"body\", type = \"jsonb\" }]";
    assert!(apply(whole, r#"{"coupon": "X1"}"#).is_ok());
}

#[test]
fn unknown_rest_keeps_unknown_fields_in_a_rest_column_scanned_for_personal_data() {
    let mapping = format!("unknown = \"rest\"\n{CONTRACT}");
    let parsed = Mapping::parse(&mapping).unwrap();
    let rest = parsed.columns.last().unwrap();
    assert_eq!(
        (rest.name.as_str(), rest.column_type.to_string()),
        ("rest", "jsonb".to_owned())
    );
    let rows = apply(
        &mapping,
        r#"{"id": "a", "coupon": "X1", "contact": "jo@example.com"}"#,
    )
    .unwrap();
    let stored = rows[0][2].clone().unwrap();
    assert!(
        stored.contains(r#""coupon": "X1""#) || stored.contains(r#""coupon":"X1""#),
        "{stored}"
    );
    assert!(!stored.contains("jo@example.com"), "{stored}");
    // A mapping that has a `rest` column keeps it; one whose `rest` takes something else is
    // told how to fix it.
    let own = "unknown = \"rest\"\ntable = \"public.t\"\ncolumns = [{ name = \"extra\", from = \"rest\", type = \"jsonb\" }]";
    assert_eq!(Mapping::parse(own).unwrap().columns.len(), 1);
    let clash = "unknown = \"rest\"\ntable = \"public.t\"\ncolumns = [{ name = \"rest\", from = \"/rest\", type = \"text\" }]";
    let e = Mapping::parse(clash).unwrap_err().to_string();
    assert!(
        e.contains("key `unknown`") && e.contains("from = \"rest\""),
        "{e}"
    );
}

/// The engine reads only what the mapping names: nesting beyond serde_json's recursion limit
/// in a field no column reads maps; in one a column takes whole, that column is
/// `invalid_value` (a tree of it cannot be made), never a silent drop. A lone surrogate escape
/// likewise: refused where read, as `invalid_utf16_escape` where serde_json's reader stops.
#[test]
fn what_no_column_reads_is_skipped_and_what_one_reads_is_refused_by_that_column() {
    const FLAT: &str = r#"
table = "public.t"
columns = [
  { name = "id", from = "/id", type = "integer", required = true },
  { name = "note", from = "/note", type = "text" },
]
"#;
    let deep = format!("{}1{}", "[".repeat(1_000), "]".repeat(1_000));
    let body = format!(r#"{{"id": 7, "skipped": {deep}, "also": "\ud800"}}"#);
    assert_eq!(apply(FLAT, &body).unwrap()[0][0].as_deref(), Some("7"));
    let note = r#"{"id": 7, "note": "\ud800"}"#;
    let bad = apply(FLAT, note).unwrap_err();
    assert_eq!(bad.reason, "invalid_utf16_escape");
    let serde = serde_json::from_str::<serde_json::Value>(note).unwrap_err();
    assert_eq!(
        bad.detail.unwrap(),
        format!("lone surrogate escape at line 1 column {}", serde.column())
    );

    const REST: &str = r#"
table = "public.t"
rest_personal = "keep"
columns = [
  { name = "id", from = "/id", type = "integer", required = true },
  { name = "extra", from = "rest", type = "jsonb" },
]
"#;
    let rejection = apply(REST, &body).unwrap_err();
    assert_eq!(rejection.reason, "invalid_value:extra");
    assert!(rejection.detail.unwrap().contains("nested more than 128"));
    // Not deep: the rest is kept, numbers as sent.
    let rows = apply(REST, r#"{"id": 7, "n": 1.50e3, "s": "x"}"#).unwrap();
    // (serde_json writes an exponent signed, as the tree engine stored it.)
    assert_eq!(rows[0][1].as_deref(), Some(r#"{"n":1.50e+3,"s":"x"}"#));
}

/// One reading of a message serves every mapping of a queue: a field one mapping takes is
/// still the other's `rest` and unknown.
#[test]
fn mappings_sharing_a_queue_each_see_their_own_rest() {
    let a = Mapping::parse(
        r#"
table = "public.a"
rest_personal = "keep"
match = { field = "/type", equals = "x" }
columns = [
  { name = "id", from = "/id", type = "integer" },
  { name = "extra", from = "rest", type = "jsonb" },
]
"#,
    )
    .unwrap();
    let b = Mapping::parse(
        r#"
table = "public.b"
match = { field = "/type", equals = "x" }
columns = [
  { name = "qty", from = "/order/qty", type = "integer" },
]
"#,
    )
    .unwrap();
    let router = super::super::Router::new(vec![a, b], &key()).unwrap();
    let routed = router
        .apply(&message(
            r#"{"type": "x", "id": 1, "order": {"qty": 5}, "z": true}"#,
        ))
        .unwrap();
    let texts = |i: usize| -> Vec<Option<String>> {
        routed[i].1[0].values().iter().map(Value::to_text).collect()
    };
    assert_eq!(
        texts(0),
        [
            Some("1".into()),
            Some(r#"{"order":{"qty":5},"z":true}"#.into())
        ]
    );
    assert_eq!(texts(1), [Some("5".into())]);
    let (_, unknown, names) = router.mappers()[1].apply_counting(&message(
        r#"{"type": "x", "id": 1, "order": {"qty": 5}, "z": true}"#,
    ));
    assert_eq!((unknown, names), (2, vec!["id".to_owned(), "z".to_owned()]));
}

/// What a `match` or `delete` compares must be readable: a lone surrogate there is not quietly
/// no match (nor a delete an upsert).
#[test]
fn an_unreadable_match_field_refuses_the_message() {
    const MATCHED: &str = r#"
table = "public.t"
match = { field = "/type", equals = "a" }
columns = [ { name = "id", from = "/id", type = "integer" } ]
"#;
    let rejection = apply(MATCHED, r#"{"type": "\ud800", "id": 1}"#).unwrap_err();
    assert_eq!(rejection.reason, "invalid_utf16_escape");
    assert!(rejection.detail.unwrap().contains("lone surrogate"));
    let rejection = apply(MATCHED, r#"{"type": "a", "type": "a", "id": 1}"#).unwrap_err();
    assert_eq!(rejection.reason, "duplicate_field:type");
    assert_eq!(
        apply(MATCHED, r#"{"type": "a", "id": 1}"#).unwrap().len(),
        1
    );
    assert_eq!(
        apply(MATCHED, r#"{"type": "b", "id": 1}"#)
            .unwrap_err()
            .reason,
        "no_mapping"
    );
}

/// A column's shortcut makes what the general path makes of the same value, or leaves the
/// value to it; the general path alone refuses.
#[test]
fn a_shortcut_makes_what_the_general_path_makes_or_leaves_it_to_it() {
    let mapper = Mapper::new(
        Mapping::parse(
            r#"
table = "t"
columns = [
  { name = "plain", from = "/a", type = "text" },
  { name = "short", from = "/b", type = "varchar(4)" },
  { name = "sent_limit", from = "/c", type = "varchar(10)", max_length = 3 },
  { name = "version", from = "/d", type = "integer", convert = "version" },
  { name = "big_version", from = "/e", type = "bigint", convert = "version" },
  { name = "ip_token", from = "/f", type = "varchar(256)", convert = "ip", mask = "hmac", mask_scope = "ip" },
  { name = "token", from = "/g", type = "varchar(256)", mask = "hmac", max_length = 5 },
  { name = "siv_token", from = "/i", type = "text", mask = "siv" },
  { name = "small", from = "/l", type = "smallint" },
  { name = "int", from = "/m", type = "integer" },
  { name = "big", from = "/n", type = "bigint" },
  { name = "real", from = "/o", type = "real" },
  { name = "double", from = "/p", type = "double precision" },
  { name = "numeric", from = "/q", type = "numeric(6,2)" },
  { name = "flag", from = "/r", type = "boolean" },
  { name = "id", from = "/s", type = "uuid" },
  { name = "day", from = "/t", type = "date" },
  { name = "at", from = "/u", type = "timestamptz" },
  { name = "local", from = "/v", type = "timestamp" },
  { name = "tags", from = "/w", type = "text[]" },
  { name = "checked", from = "/j", type = "text", pattern = "[a-z]+" },
  { name = "redacted", from = "/k", type = "text", mask = "redact" },
  { name = "bounded", from = "/x", type = "integer", min = 0 },
  { name = "host", from = "/y", type = "inet" },
  { name = "doc", from = "/z", type = "jsonb" },
  { name = "listed", from = "/aa", type = "text", allowed = ["abc", "7"] },
  { name = "capped", from = "/ab", type = "integer", max = 10 },
  { name = "address", from = "/ac", type = "text", convert = "ip" },
  { name = "epoch", from = "/ad", type = "date", convert = "epoch_ms" },
  { name = "sent_cap", from = "/ae", type = "text", max_length = 3 },
]
"#,
        )
        .unwrap(),
        &key(),
    );
    let general = mapper.shortcuts.iter().filter(|s| **s == Shortcut::General);
    // A pattern, a redaction, bounds, inet, jsonb, an allowed list, an unmasked address and
    // an epoch take the general path.
    assert_eq!(general.count(), 9);
    let strings = [
        "",
        "abc",
        "abcd",
        "abcde",
        "äbc",
        "ää",
        "a\0b",
        "1.2.3",
        "7",
        "-12",
        "1.2.3.4",
        "1.x",
        "99999.0.0",
        "203.0.113.7",
        "::ffff:203.0.113.7",
        "2001:db8::1",
        "not an address",
        "true",
        "6f9619ff-8b86-d011-b42d-00c04fc964ff",
        "2026-12-04",
        "2026-12-04T10:00:00.123456+01:00",
        "2026-12-04 10:00:00",
        "1234.567",
        "NaN",
    ];
    let others = [
        Found::Null,
        Found::BadEscape(r#""\ud800""#),
        Found::Repeated(0),
        Found::Bool(true),
        Found::Int(1_700_000_000_000),
        Found::Raw(r#"["x", "y"]"#),
        Found::Raw(r#"[1, 2]"#),
        Found::Raw(r#"{"a": 1}"#),
    ];
    let numbers = [
        "1",
        "-0",
        "1.5",
        "1e3",
        "1E400",
        "32768",
        "12345678901234567890",
        "1234.567",
    ];
    // As a document holds them: a string with U+0000 came escaped, so it is owned (one
    // borrowed from the text has no escape, hence no control character).
    let found = strings
        .iter()
        .map(|s| match s.contains('\0') {
            true => Found::Str(Cow::Owned(s.to_string())),
            false => Found::Str(Cow::Borrowed(*s)),
        })
        .chain(numbers.iter().map(|n| Found::Number(Cow::Borrowed(*n))))
        .chain(others);
    let found: Vec<Found<'_>> = found.collect();
    let mut shortcuts_taken = 0;
    for (i, column) in mapper.mapping.columns.iter().enumerate() {
        let mask = mapper.masks[i].as_ref();
        for value in &found {
            let general = mapper.mapping.value(column, Some(value.clone()), mask);
            let Some(made) = mapper.shortcuts[i].make(column, mask, Some(value)) else {
                continue;
            };
            // Null, missing and unreadable values are the general path's.
            assert!(!matches!(
                value,
                Found::Null | Found::BadEscape(_) | Found::Repeated(_)
            ));
            shortcuts_taken += 1;
            match general {
                Ok(general) => assert_eq!(made, general, "{} of a {}", column.name, value.kind()),
                Err(r) => panic!("{}: the general path refuses ({})", column.name, r.reason),
            }
        }
        assert!(mapper.shortcuts[i].make(column, mask, None).is_none());
    }
    assert!(shortcuts_taken > 80, "{shortcuts_taken}");
}

/// What the built-in login mapping needs of the engine, on a mapping of its own: codes named
/// by field, a column's own codes, a field that must be present but may be null, a document
/// that is not an object, a field given twice, and a message of several faults refused for
/// the first of the earliest stage in the check order.
#[test]
fn reasons_name_fields_and_faults_are_found_in_stages() {
    const SHAPED: &str = r#"
table = "public.t"
reason_names = "field"
check_order = ["v", "id"]
columns = [
  { name = "id", from = "/i", type = "varchar(4)", required = true },
  { name = "note", from = "/n", type = "text", required = true, nullable = true },
  { name = "v", from = "/ver", type = "integer", convert = "version", reasons = { invalid_value = "bad_version" } },
  { name = "at", from = "sqs:SentTimestamp", type = "date" },
]
"#;
    let reason = |body: &str| match apply(SHAPED, body) {
        Ok(_) => "ok".to_owned(),
        Err(r) => r.reason,
    };
    assert_eq!(reason(r#"{"i": "a", "n": null, "ver": "1.2"}"#), "ok");
    assert_eq!(reason(r#"{"i": "a", "ver": "1.2"}"#), "missing_field:n");
    assert_eq!(reason(r#"{"i": 7, "n": null}"#), "wrong_type:i");
    assert_eq!(reason(r#"{"i": "a", "n": "x", "ver": "x"}"#), "bad_version");
    // Form before value, whatever the columns' order: a long id against a missing note.
    assert_eq!(reason(r#"{"i": "abcdef", "ver": "1"}"#), "missing_field:n");
    // Of one stage, the first in the check order: the version before the id.
    assert_eq!(reason(r#"{"i": 1, "n": null, "ver": 1}"#), "wrong_type:ver");
    // The value as sent before what it makes.
    assert_eq!(
        reason(r#"{"i": "abcdef", "n": null, "ver": "x"}"#),
        "too_long:i"
    );
    assert_eq!(
        reason(r#"{"i": "a\u0000", "n": null, "ver": "1"}"#),
        "nul_character:i"
    );
    // A field given twice: the one given again first in the text, before any other fault.
    assert_eq!(
        reason(r#"{"n": 1, "ver": "1", "n": 2, "i": 1, "ver": "2"}"#),
        "duplicate_field:n"
    );
    assert_eq!(
        reason(r#"{"ver": "1", "n": 1, "ver": "2", "n": 2}"#),
        "duplicate_field:ver"
    );
    let rejection = apply(SHAPED, "[1, 2]").unwrap_err();
    assert_eq!(
        (rejection.reason.as_str(), rejection.detail.as_deref()),
        ("not_an_object", Some("top-level value is array"))
    );
    // A mapping that reads no field of the document, or reads it whole, takes any value.
    const WHOLE: &str = r#"
table = "public.t"
columns = [ { name = "body", from = "body", type = "jsonb", required = true } ]
"#;
    assert!(apply(WHOLE, "[1, 2]").is_ok());
    const ELEMENT: &str = r#"
table = "public.t"
columns = [ { name = "first", from = "/0", type = "integer" } ]
"#;
    assert_eq!(
        apply(ELEMENT, "[1, 2]").unwrap()[0][0].as_deref(),
        Some("1")
    );
}
