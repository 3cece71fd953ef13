//! Unit tests of `mapping::file`.

use super::*;

fn error(text: &str) -> String {
    Mapping::parse(text).unwrap_err().0
}

#[test]
fn a_small_mapping_compiles_with_its_defaults() {
    let m = Mapping::parse(
        r#"
table = "public.orders"
envelope = "sns"
columns = [
  { name = "order_id", from = "/order/id", type = "uuid", required = true },
  { name = "email_token", from = "/customer/email", type = "varchar(256)", mask = "hmac" },
  { name = "amount", from = "/order/amount", type = "numeric(12,2)", min = 0 },
  { name = "sent_at", from = "sqs:SentTimestamp", type = "timestamptz" },
  { name = "extra", from = "rest", type = "jsonb" },
  { name = "origin", value = "shop", type = "text" },
]
"#,
    )
    .unwrap();
    assert_eq!(m.envelope, Envelope::Sns);
    assert_eq!(m.columns.len(), 6);
    assert_eq!(m.columns[1].mask, Some(Mask::Token(MaskMode::Hmac)));
    assert_eq!(m.columns[1].mask_scope, "email_token");
    assert_eq!(m.columns[5].source, Source::Constant("shop".into()));
    assert!(m.taken.contains("order") && m.taken.contains("customer"));
    assert_eq!(m.masked().count(), 1);
}

#[test]
fn mistakes_name_the_line_or_the_column_and_the_key() {
    let e = error("table = \"t\"\ncolumns = [\n { name = \"a\", from = \"/a\", type = \"text\", colour = 1 },\n]\n");
    assert!(e.starts_with("line 3") && e.contains("colour"), "{e}");
    let e = error("table = \"t\"\n[[columns]]\nname = \"a\"\nfrom = \"/a\"\ntype = \"money\"\n");
    assert!(
        e.contains("column 1 (`a`): key `type`") && e.contains("money"),
        "{e}"
    );
    let e = error("table = \"t\"\n[[columns]]\nname = \"a\"\nfrom = \"a\"\ntype = \"text\"\n");
    assert!(
        e.contains("key `from`") && e.contains("JSON pointer"),
        "{e}"
    );
    let e = error("table = \"t\"\n[[columns]]\nname = \"a\"\nfrom = \"/a\"\ntype = \"varchar(64)\"\nmask = \"siv\"\n");
    assert!(e.contains("varchar(256)"), "{e}");
    let e = error("table = \"t\"\n[[columns]]\nname = \"a\"\nfrom = \"/a\"\ntype = \"text\"\nmask = \"ipcrypt\"\n");
    assert!(
        e.contains("convert = \\\"ip\\\"") || e.contains("convert = \"ip\""),
        "{e}"
    );
    let e = error(
        "table = \"t\"\n[[columns]]\nname = \"a\"\nfrom = \"/a\"\ntype = \"text\"\nmin = 1\n",
    );
    assert!(e.contains("`min` / `max`"), "{e}");
    let e = error("table = \"t\"\n[[columns]]\nname = \"a\"\nfrom = \"/a\"\ntype = \"text\"\npattern = \"(\"\n");
    assert!(e.contains("key `pattern`"), "{e}");
    let e = error(
        "table = \"Orders; DROP\"\ncolumns = [{ name = \"a\", from = \"/a\", type = \"text\" }]\n",
    );
    assert!(e.starts_with("key `table`"), "{e}");
    let e = error("table = \"t\"\ncolumns = [{ name = \"a\", from = \"/a\", type = \"text\" }, { name = \"a\", from = \"/b\", type = \"text\" }]\n");
    assert!(e.contains("mapped twice"), "{e}");
    let e = error("table = \"t\"\ncolumns = [{ name = \"a\", type = \"text\" }]\n");
    assert!(e.contains("either `from`"), "{e}");
    let e = error("table = \"t\"\ncolumns = [{ name = \"a\", from = \"/c/email\", type = \"text\", mask = \"hmac\" }, { name = \"b\", from = \"/c\", type = \"jsonb\" }]\n");
    assert!(e.contains("column `b`") && e.contains("unmasked"), "{e}");
    let e = error(
        "table = \"t\"\ncolumns = [{ name = \"a\", from = \"sns:MessageId\", type = \"text\" }]\n",
    );
    assert!(
        e.contains("envelope = \\\"sns\\\"") || e.contains("sns envelope"),
        "{e}"
    );
}

/// The keys that shape reasons (`reason_names`, `check_order`, a column's `reasons` and
/// `nullable`) are checked when the mapping is read, each mistake naming the key and the fix.
#[test]
fn the_keys_that_shape_reasons_are_checked() {
    let column = |extra: &str| {
        format!("table = \"t\"\ncolumns = [{{ name = \"a\", from = \"/x/a\", type = \"text\"{extra} }}, {{ name = \"b\", from = \"sqs:MessageId\", type = \"text\" }}]\n")
    };
    let e = error(&column(", nullable = true"));
    assert!(
        e.contains("column 1 (`a`): key `nullable`") && e.contains("required = true"),
        "{e}"
    );
    let e = error(&column(", reasons = { invalid = \"x\" }"));
    assert!(
        e.contains("key `reasons`") && e.contains("invalid_value"),
        "{e}"
    );
    let e = error(&column(", reasons = { invalid_value = \"Bad Code\" }"));
    assert!(
        e.contains("key `reasons`") && e.contains("lower-case"),
        "{e}"
    );
    let e = error(&format!("check_order = [\"c\"]\n{}", column("")));
    assert!(e.contains("key `check_order`") && e.contains("`c`"), "{e}");
    let e = error(&format!("check_order = [\"a\", \"a\"]\n{}", column("")));
    assert!(
        e.contains("key `check_order`") && e.contains("twice"),
        "{e}"
    );
    let e = error(&format!("reason_names = \"both\"\n{}", column("")));
    assert!(e.contains("reason_names"), "{e}");
    let e = error("table = \"t\"\nwrite = { mode = \"upsert\", key = [\"a\"] }\ncolumns = [{ name = \"a\", from = \"/a\", type = \"text\", required = true, nullable = true }]\n");
    assert!(e.contains("nullable") && e.contains("key"), "{e}");

    let m = Mapping::parse(&format!(
        "reason_names = \"field\"\ncheck_order = [\"b\"]\n{}",
        column(", required = true, nullable = true, reasons = { too_long = \"long_a\" }")
    ))
    .unwrap();
    assert_eq!(m.check_order, [1, 0]);
    let a = &m.columns[0];
    assert!(a.required && a.nullable);
    // The field's pointer names it; a column of another source keeps its own name.
    assert_eq!(a.reason("missing_field"), "missing_field:x/a");
    assert_eq!(a.reason("too_long"), "long_a");
    assert_eq!(m.columns[1].reason("wrong_type"), "wrong_type:b");
    assert_eq!(a.stage("wrong_type:x/a"), 0);
    assert_eq!(a.stage("long_a"), 1);
    assert_eq!(a.stage("invalid_value:x/a"), 2);
    let plain = Mapping::parse(&column("")).unwrap();
    assert_eq!(plain.columns[0].reason("missing_field"), "missing_field:a");
    assert_eq!(plain.check_order, [0, 1]);
}
