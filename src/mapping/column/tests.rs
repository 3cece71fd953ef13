//! Unit tests of `mapping::column`.

use serde_json::Value as Json;

use super::*;
use serde_json::json;

fn to_text(value: Json, column: &str) -> Result<Option<String>, Fault> {
    convert(&value, ColumnType::parse(column).unwrap()).map(|v| v.to_text())
}

#[test]
fn types_parse_as_postgresql_spells_them() {
    for (text, parsed) in [
        ("varchar(32)", ColumnType::Varchar(32)),
        ("Character Varying ( 8 )", ColumnType::Varchar(8)),
        ("numeric(12, 2)", ColumnType::Numeric(Some((12, 2)))),
        ("numeric(5)", ColumnType::Numeric(Some((5, 0)))),
        ("timestamp with time zone", ColumnType::Timestamptz),
        ("double   precision", ColumnType::Double),
        ("text[]", ColumnType::TextArray),
    ] {
        assert_eq!(ColumnType::parse(text), Ok(parsed), "{text}");
        assert_eq!(ColumnType::parse(&parsed.to_string()), Ok(parsed));
    }
    for bad in [
        "varchar",
        "varchar(0)",
        "numeric(2,3)",
        "integer(4)",
        "money",
    ] {
        assert!(ColumnType::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn values_convert_to_their_types_or_fail_with_a_fault() {
    assert_eq!(
        to_text(json!("héllo"), "varchar(5)"),
        Ok(Some("héllo".into()))
    );
    assert_eq!(
        to_text(json!("héllo!"), "varchar(5)"),
        Err(Fault::TooLong { chars: 6, max: 5 })
    );
    assert_eq!(to_text(json!("a\u{0}b"), "text"), Err(Fault::NulCharacter));
    assert_eq!(
        to_text(json!(5), "text"),
        Err(Fault::WrongType {
            expected: "string",
            got: "number"
        })
    );
    assert_eq!(to_text(json!("-42"), "smallint"), Ok(Some("-42".into())));
    assert!(matches!(
        to_text(json!(40000), "smallint"),
        Err(Fault::OutOfRange(_))
    ));
    assert!(matches!(
        to_text(json!(1.5), "integer"),
        Err(Fault::Invalid(_))
    ));
    assert!(matches!(
        to_text(json!("1e3"), "bigint"),
        Err(Fault::Invalid(_))
    ));
    assert_eq!(
        to_text(json!(9_007_199_254_740_993_i64), "bigint"),
        Ok(Some("9007199254740993".into()))
    );
    assert_eq!(to_text(json!(true), "boolean"), Ok(Some("true".into())));
    assert_eq!(
        to_text(json!("2026-12-04"), "date"),
        Ok(Some("2026-12-04".into()))
    );
    assert!(matches!(
        to_text(json!("04/12/2026"), "date"),
        Err(Fault::Invalid(_))
    ));
    assert_eq!(
        to_text(json!("2026-12-04T10:00:00+02:00"), "timestamptz"),
        Ok(Some("2026-12-04T08:00:00Z".into()))
    );
    assert!(matches!(
        to_text(json!("2026-12-04T10:00:00"), "timestamptz"),
        Err(Fault::Invalid(_))
    ));
    assert_eq!(
        to_text(json!("2026-12-04 10:00:00.25"), "timestamp"),
        Ok(Some("2026-12-04 10:00:00.25".into()))
    );
    assert_eq!(
        to_text(json!("6F9619FF-8B86-D011-B42D-00C04FC964FF"), "uuid"),
        Ok(Some("6f9619ff-8b86-d011-b42d-00c04fc964ff".into()))
    );
    assert_eq!(
        to_text(json!("2001:DB8::1"), "inet"),
        Ok(Some("2001:db8::1".into()))
    );
    assert_eq!(
        to_text(json!({"a": [1, "x"]}), "jsonb"),
        Ok(Some(r#"{"a":[1,"x"]}"#.into()))
    );
    assert_eq!(
        to_text(json!(["a", "b"]), "text[]"),
        Ok(Some(r#"["a","b"]"#.into()))
    );
    assert!(to_text(json!(["a", 1]), "text[]").is_err());
    assert_eq!(
        to_text(json!({"k": "back\\u0000slash"}), "jsonb"),
        Ok(Some(r#"{"k":"back\\u0000slash"}"#.into())),
        "a backslash is not a NUL"
    );
    assert_eq!(
        to_text(json!({"k": "a\u{0}"}), "jsonb"),
        Err(Fault::NulCharacter)
    );
    for (late, column) in [
        ("9999-12-31T23:00:00-05:00", "timestamptz"),
        ("0000-01-01T00:00:00Z", "timestamptz"),
        ("-0001-01-01", "date"),
    ] {
        assert!(
            matches!(
                to_text(json!(late), column),
                Err(Fault::OutOfRange(_) | Fault::Invalid(_))
            ),
            "{late}"
        );
    }
    assert!(matches!(
        to_text(json!("9".repeat(400)), "double precision"),
        Err(Fault::OutOfRange(_))
    ));
}

#[test]
fn numerics_round_half_away_from_zero_to_their_scale_and_keep_their_precision() {
    for (input, column, want) in [
        (json!("12.345"), "numeric(12,2)", "12.35"),
        (json!("-12.345"), "numeric(12,2)", "-12.35"),
        (json!("99.995"), "numeric(5,2)", "100.00"),
        (json!(12.5), "numeric(12,0)", "13"),
        (json!("-0.001"), "numeric(4,2)", "0.00"),
        (json!(7), "numeric(4,2)", "7.00"),
        (json!("0012.5000"), "numeric", "12.5000"),
        (json!("-0.000"), "numeric", "0.000"),
        (
            json!("123456789012345678901234567890.5"),
            "numeric",
            "123456789012345678901234567890.5",
        ),
    ] {
        assert_eq!(
            to_text(input, column),
            Ok(Some(want.into())),
            "{column} {want}"
        );
    }
    assert!(matches!(
        to_text(json!("999.995"), "numeric(5,2)"),
        Err(Fault::OutOfRange(_))
    ));
    assert!(matches!(
        to_text(json!("1e3"), "numeric"),
        Err(Fault::Invalid(_))
    ));
    assert!(matches!(
        to_text(json!("."), "numeric"),
        Err(Fault::Invalid(_))
    ));
}

/// A value parsed from a body's text, numbers as sent.
fn sent(text: &str) -> Json {
    serde_json::from_str(text).unwrap()
}

#[test]
fn numbers_keep_every_digit_they_were_sent_with() {
    let numeric =
        |text: &str, column: &str| convert(&sent(text), ColumnType::parse(column).unwrap());
    let text = |text: &str, column: &str| numeric(text, column).map(|v| v.to_text().unwrap());
    for (body, stored) in [
        (
            "123456789012345678901234567890",
            "123456789012345678901234567890",
        ),
        ("19.999999999999999999", "19.999999999999999999"),
        ("-0.000000000000000000001", "-0.000000000000000000001"),
        ("1.50e1", "15.0"),
        ("-5E-4", "-0.0005"),
        ("25e+2", "2500"),
        ("0.0e5", "0"),
    ] {
        assert_eq!(text(body, "numeric").as_deref(), Ok(stored), "{body}");
    }
    assert_eq!(
        text("1e400", "numeric").unwrap(),
        format!("1{}", "0".repeat(400))
    );
    assert_eq!(text("1.005e2", "numeric(12,2)").as_deref(), Ok("100.50"));
    // Rounds to 100000000000.00: twelve digits before the point, one more than numeric(13,2)
    // holds (PostgreSQL refuses it too: numeric field overflow).
    assert!(matches!(
        numeric("99999999999.995", "numeric(13,2)"),
        Err(Fault::OutOfRange(_))
    ));
    assert_eq!(
        text("99999999999.994", "numeric(13,2)").as_deref(),
        Ok("99999999999.99")
    );
    assert!(matches!(
        numeric("1e200000", "numeric"),
        Err(Fault::OutOfRange(_))
    ));
    assert!(matches!(
        numeric("1e-20000", "numeric"),
        Err(Fault::OutOfRange(_))
    ));
    // jsonb: the digits as sent, at any depth; a number beyond numeric is refused, as
    // PostgreSQL would refuse the row.
    let doc = r#"{"big":123456789012345678901234,"deep":[{"x":19.999999999999999999}],"e":1e400,"ü":"😀"}"#;
    let stored = text(doc, "jsonb").unwrap();
    // serde_json writes an exponent with its sign (`1e+400`): the same number to PostgreSQL.
    for digits in [
        "123456789012345678901234",
        "19.999999999999999999",
        "1e+400",
        "😀",
    ] {
        assert!(stored.contains(digits), "{digits} in {stored}");
    }
    assert!(matches!(
        numeric(r#"[1, {"a": 1e999999}]"#, "jsonb"),
        Err(Fault::OutOfRange(_))
    ));
    // PostgreSQL's numeric text input refuses a written exponent beyond 1000, even of zero.
    for refused in ["1e1001", "0e5000", "0.5e-1001"] {
        assert!(
            matches!(numeric(refused, "jsonb"), Err(Fault::OutOfRange(_))),
            "{refused}"
        );
    }
    assert!(numeric("1e1000", "jsonb").is_ok());
    // A whole number as long as numeric's integer part holds, and one digit more.
    let at_limit = "9".repeat(131_072);
    assert!(numeric(&at_limit, "jsonb").is_ok());
    assert!(matches!(
        numeric(&format!("-1{at_limit}"), "jsonb"),
        Err(Fault::OutOfRange(_))
    ));
    // Zero with an exponent no memory holds is zero, not a string of that many digits.
    assert_eq!(text("0e+99999999999", "numeric").as_deref(), Ok("0"));
    assert_eq!(
        text("-0.00e99999999999", "numeric(5,2)").as_deref(),
        Ok("0.00")
    );
    // A number no f64 holds is beyond double precision, not malformed.
    assert!(matches!(
        numeric("1e400", "double precision"),
        Err(Fault::OutOfRange(_))
    ));
    assert_eq!(text("123456789012345678901", "integer").ok(), None);
}

#[test]
fn decimals_compare_digit_by_digit() {
    use std::cmp::Ordering::*;
    for (a, b, order) in [
        ("1", "1", Equal),
        ("1.0000000000000000001", "1", Greater),
        ("-1.0000000000000000001", "-1", Less),
        ("0.1", "0.10", Equal),
        ("-0", "0.000", Equal),
        ("-3", "2", Less),
        ("100", "99.999", Greater),
        ("007", "7", Equal),
        (
            "123456789012345678901234567890",
            "123456789012345678901234567891",
            Less,
        ),
    ] {
        assert_eq!(compare_decimals(a, b), Some(order), "{a} {b}");
        assert_eq!(compare_decimals(b, a), Some(order.reverse()), "{b} {a}");
    }
    assert_eq!(compare_decimals("1e3", "1"), None);
}
