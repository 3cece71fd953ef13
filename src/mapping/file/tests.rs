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
