//! Unit tests of `postgres::schema`.

use super::*;

#[test]
fn table_names_are_parsed_and_quoted() {
    assert_eq!(
        TableName::parse("user_logins").unwrap().quoted(),
        r#""public"."user_logins""#
    );
    assert_eq!(TableName::parse("a.B").unwrap().quoted(), r#""a"."B""#);
    for bad in [
        "",
        ".",
        "a.",
        "a.b.c",
        "x\"; DROP TABLE y; --",
        &"x".repeat(64),
    ] {
        assert!(TableName::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(MIGRATION_LOCK_KEY, 0x7371_7332_7067_3a6d);
}
