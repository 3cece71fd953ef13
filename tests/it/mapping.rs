//! `sqs2pg mapping check` and `sqs2pg mapping preview`, run as a user runs them, on the
//! example mappings.

use crate::harness::{key_file, sqs2pg, stderr};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_example_mapping_checks_and_a_mistake_names_its_line_and_key() {
    let mut checked = 0;
    for entry in std::fs::read_dir("examples/mappings").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let o = sqs2pg(&["mapping", "check", path.to_str().unwrap()], &[]);
            assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
            checked += 1;
        }
    }
    assert!(checked >= 2, "{checked} example mappings");
    let dir = std::env::temp_dir().join(crate::harness::unique("sqs2pg-mapping"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "table = \"public.t\"\n\n[[columns]]\nname = \"a\"\nfrom = \"/a\"\ntype = \"integer\"\nrequird = true\n",
    )
    .unwrap();
    let o = sqs2pg(&["mapping", "check", bad.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "a configuration mistake");
    let e = stderr(&o);
    assert!(e.contains("line 7") && e.contains("requird"), "{e}");
}

#[test]
fn preview_of_the_login_mapping_masks_the_sample_and_prints_no_personal_value() {
    let key = key_file(&sqs2pg::keys::MaskKey::generate_base64().unwrap());
    let run = || {
        sqs2pg(
            &[
                "mapping",
                "preview",
                "--mapping",
                "examples/mappings/login.toml",
                "--file",
                "examples/login-queue-sample.jsonl",
                "--mask-key-file",
                key.to_str().unwrap(),
            ],
            &[],
        )
    };
    let (first, second) = (run(), run());
    assert!(first.status.success(), "{}", stderr(&first));
    let out = stdout(&first);
    assert_eq!(out.lines().filter(|l| l.contains("\"row\"")).count(), 99);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("\"rejected\":\"missing_field:user_id\""))
            .count(),
        1
    );
    assert_eq!(out, stdout(&second), "the same key gives the same tokens");
    // No ip or device id of the sample is printed, only their tokens.
    let sample = std::fs::read_to_string("examples/login-queue-sample.jsonl").unwrap();
    for line in sample.lines() {
        let body: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["ip", "device_id"] {
            if let Some(value) = body.get(field).and_then(|v| v.as_str()) {
                assert!(!out.contains(value), "a raw {field} was printed");
            }
        }
    }
    assert!(stderr(&first).contains("100 message(s): 99 row(s), 1 rejected"));
}

#[test]
fn preview_of_sns_wrapped_orders_gives_rows_and_reasons() {
    let o = sqs2pg(
        &[
            "mapping",
            "preview",
            "--mapping",
            "examples/mappings/orders-sns.toml",
            "--file",
            "examples/mappings/orders-sns.jsonl",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let reasons: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("rejected").map(|r| r.as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "out_of_range:amount",
            "invalid_value:order_id",
            "not_allowed:currency"
        ]
    );
    assert!(
        out.contains("\"amount\":\"100.00\""),
        "rounded to the scale"
    );
    assert!(!out.contains("ada@example.com") && !out.contains("203.0.113.7"));
    assert!(stderr(&o).contains("throwaway key"));
}

/// For every column type: values drawn at random (valid and not) convert or fail with a
/// fault, never a panic; every one that converts goes through binary COPY into a real
/// PostgreSQL column of that type and reads back equal.
#[tokio::test]
async fn every_type_round_trips_through_binary_copy_into_postgresql() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use serde_json::{json, Value as Json};
    use sqs2pg::mapping::column::convert;
    use sqs2pg::mapping::ColumnType;

    let digits = |n: usize| proptest::string::string_regex(&format!("-?[0-9]{{1,{n}}}")).unwrap();
    // Mostly printable text; now and then one with U+0000, which must be refused.
    let text = || {
        prop_oneof![
            9 => proptest::string::string_regex("\\PC{0,12}").unwrap(),
            1 => proptest::string::string_regex("\\PC{0,3}\\x00\\PC{0,3}").unwrap(),
        ]
    };
    let strategies: Vec<(&str, BoxedStrategy<Json>)> = vec![
        ("text", text().prop_map(Json::from).boxed()),
        ("varchar(8)", text().prop_map(Json::from).boxed()),
        ("boolean", any::<bool>().prop_map(Json::from).boxed()),
        (
            "smallint",
            prop_oneof![
                any::<i64>().prop_map(Json::from),
                (-40_000i64..40_000).prop_map(Json::from),
                digits(6).prop_map(Json::from)
            ]
            .boxed(),
        ),
        (
            "integer",
            prop_oneof![
                any::<i64>().prop_map(Json::from),
                any::<i32>().prop_map(Json::from),
                digits(11).prop_map(Json::from)
            ]
            .boxed(),
        ),
        (
            "bigint",
            prop_oneof![
                any::<i64>().prop_map(Json::from),
                any::<u64>().prop_map(Json::from),
                digits(20).prop_map(Json::from)
            ]
            .boxed(),
        ),
        (
            "numeric(12,2)",
            prop_oneof![
                (-1e11f64..1e11).prop_map(Json::from),
                proptest::string::string_regex("-?[0-9]{1,11}(\\.[0-9]{0,6})?")
                    .unwrap()
                    .prop_map(Json::from),
            ]
            .boxed(),
        ),
        (
            "numeric",
            proptest::string::string_regex("-?[0-9]{1,40}(\\.[0-9]{0,40})?")
                .unwrap()
                .prop_map(Json::from)
                .boxed(),
        ),
        ("real", (-1e30f64..1e30).prop_map(Json::from).boxed()),
        (
            "double precision",
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Json::from)
                .boxed(),
        ),
        (
            "date",
            (1i32..9999, 1u8..13, 1u8..32)
                .prop_map(|(y, m, d)| json!(format!("{y:04}-{m:02}-{d:02}")))
                .boxed(),
        ),
        (
            "timestamptz",
            (
                1i32..9999,
                1u8..13,
                1u8..29,
                0u8..24,
                0u8..60,
                0u32..1_000_000_000,
                -14i8..15,
            )
                .prop_map(|(y, mo, d, h, mi, ns, off)| {
                    let sign = if off < 0 { '-' } else { '+' };
                    json!(format!(
                        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:07.{ns:09}{sign}{:02}:00",
                        off.unsigned_abs()
                    ))
                })
                .boxed(),
        ),
        (
            "timestamp",
            (1i32..9999, 1u8..13, 1u8..29, 0u8..24, 0u32..1_000_000)
                .prop_map(|(y, mo, d, h, us)| {
                    json!(format!("{y:04}-{mo:02}-{d:02} {h:02}:30:00.{us:06}"))
                })
                .boxed(),
        ),
        (
            "uuid",
            any::<[u8; 16]>()
                .prop_map(|b| {
                    json!(uuid::Uuid::from_bytes(b)
                        .hyphenated()
                        .to_string()
                        .to_uppercase())
                })
                .boxed(),
        ),
        (
            "inet",
            prop_oneof![
                any::<[u8; 4]>().prop_map(|b| json!(std::net::IpAddr::from(b).to_string())),
                any::<[u8; 16]>().prop_map(|b| json!(std::net::IpAddr::from(b).to_string())),
            ]
            .boxed(),
        ),
        (
            "jsonb",
            proptest::collection::hash_map(
                "[a-z]{1,5}",
                prop_oneof![
                    any::<i32>().prop_map(Json::from),
                    text().prop_map(Json::from),
                    any::<bool>().prop_map(Json::from)
                ],
                0..5,
            )
            .prop_map(|m| Json::Object(m.into_iter().collect()))
            .boxed(),
        ),
        (
            "text[]",
            proptest::collection::vec(text(), 0..4)
                .prop_map(|v| json!(v))
                .boxed(),
        ),
    ];
    let db = crate::harness::TestDb::new().await;
    let mut client = db.client().await;
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for (type_name, strategy) in strategies {
        let column_type = ColumnType::parse(type_name).unwrap();
        let (mut stored, mut refused) = (Vec::new(), 0);
        for _ in 0..300 {
            let input = strategy.new_tree(&mut runner).unwrap().current();
            match convert(&input, column_type) {
                Ok(value) => stored.push(value),
                Err(_) => refused += 1,
            }
        }
        assert!(
            stored.len() >= 50,
            "{type_name}: only {} of 300 converted",
            stored.len()
        );
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS rt; CREATE TABLE rt (n integer, v {type_name})"
            ))
            .await
            .unwrap();
        copy_into_rt(&mut client, column_type, &stored, type_name).await;
        let rows = client
            .query("SELECT v, v::text FROM rt ORDER BY n", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), stored.len());
        for (row, value) in rows.iter().zip(&stored) {
            let as_text: String = row.get(1);
            let back = read_back(row, 0, &as_text, column_type);
            assert!(
                back == canonical(value),
                "{type_name}: sent {:?}, read back {as_text:?}",
                value.to_text()
            );
        }
        println!(
            "{type_name}: {} stored and read back equal, {refused} refused",
            stored.len()
        );
    }
}

/// jsonb keeps what the message says: JSON text drawn at random (numbers of any size,
/// precision and exponent, nested arrays and objects, any printable unicode in keys and
/// strings) is parsed as a body is, converted, copied into a real jsonb column and compared
/// there, as jsonb, with the text as sent: every value equal, every digit kept.
#[tokio::test]
async fn jsonb_stores_every_digit_and_character_the_message_sent() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use sqs2pg::mapping::column::convert;
    use sqs2pg::mapping::ColumnType;

    let quoted = |s: String| serde_json::to_string(&s).unwrap();
    let leaf = prop_oneof![
        4 => "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,40})?([eE][-+]?[0-9]{1,3})?",
        2 => "\\PC{0,8}".prop_map(quoted),
        1 => Just("true".to_owned()),
        1 => Just("null".to_owned()),
    ];
    let document = leaf.prop_recursive(4, 32, 5, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(","))),
            proptest::collection::vec(("\\PC{1,6}".prop_map(quoted), inner), 0..5).prop_map(
                |fields| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }
            ),
        ]
    });
    let db = crate::harness::TestDb::new().await;
    let mut client = db.client().await;
    client
        .batch_execute("CREATE TABLE rt (n integer, v jsonb)")
        .await
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut sent = Vec::new();
    let mut stored = Vec::new();
    for _ in 0..400 {
        let text = document.new_tree(&mut runner).unwrap().current();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        let value = convert(&parsed, ColumnType::Jsonb)
            .unwrap_or_else(|f| panic!("{text}: refused, {f:?}"));
        sent.push(text);
        stored.push(value);
    }
    let long = sent
        .iter()
        .filter(|t| t.bytes().filter(u8::is_ascii_digit).count() > 17)
        .count();
    assert!(long > 100, "only {long} documents with long numbers");
    copy_into_rt(&mut client, ColumnType::Jsonb, &stored, "jsonb").await;
    // Compared in PostgreSQL: jsonb equality is numeric equality for numbers (1E3 = 1000,
    // 20.0 <> 19.999999999999999999), and keys as jsonb keeps them (the last of duplicates).
    let differ: Vec<i32> = client
        .query(
            "SELECT rt.n FROM rt JOIN unnest($1::text[]) WITH ORDINALITY AS s(sent, i) \
             ON rt.n = s.i - 1 WHERE rt.v IS DISTINCT FROM s.sent::jsonb ORDER BY rt.n",
            &[&sent],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        differ.is_empty(),
        "{} of {} differ, the first sent as {}",
        differ.len(),
        sent.len(),
        differ.first().map_or("", |n| sent[*n as usize].as_str())
    );
    println!(
        "jsonb: {} documents stored and read back equal, {long} with long numbers",
        sent.len()
    );
}

#[test]
fn a_draft_written_to_a_file_previews_as_it_stands_and_is_never_written_over() {
    let dir = std::env::temp_dir().join(crate::harness::unique("sqs2pg-draft"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("orders.toml");
    let draft = |path: &std::path::Path| {
        sqs2pg(
            &[
                "mapping",
                "draft",
                "--file",
                "examples/mappings/orders-sns.jsonl",
                "--table",
                "public.orders",
                "--output",
                path.to_str().unwrap(),
            ],
            &[],
        )
    };
    let o = draft(&out);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("envelope = \"sns\"") && text.contains("# Masked:"),
        "{text}"
    );
    assert!(
        !text.contains("ada@example.com"),
        "no sample value in the draft"
    );
    let o = sqs2pg(
        &[
            "mapping",
            "preview",
            "--mapping",
            out.to_str().unwrap(),
            "--file",
            "examples/mappings/orders-sns.jsonl",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("5 message(s): 5 row(s), 0 rejected"),
        "{}",
        stderr(&o)
    );
    let again = draft(&out);
    assert!(!again.status.success(), "an existing file is kept");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
}

/// Column `at` of `row`, of `column_type`, as a [`Value`]; `as_text` is the same column cast
/// to text (numeric, uuid and jsonb are read through it).
fn read_back(
    row: &tokio_postgres::Row,
    at: usize,
    as_text: &str,
    column_type: sqs2pg::mapping::ColumnType,
) -> sqs2pg::mapping::Value {
    use sqs2pg::mapping::{ColumnType, Value};
    if row.get::<_, Option<String>>(at + 1).is_none() {
        return Value::Null;
    }
    match column_type {
        ColumnType::Text | ColumnType::Varchar(_) => Value::Text(row.get(at)),
        ColumnType::Boolean => Value::Boolean(row.get(at)),
        ColumnType::SmallInt => Value::SmallInt(row.get(at)),
        ColumnType::Integer => Value::Integer(row.get(at)),
        ColumnType::BigInt => Value::BigInt(row.get(at)),
        ColumnType::Numeric(_) => Value::Numeric(as_text.to_owned()),
        ColumnType::Real => Value::Real(row.get(at)),
        ColumnType::Double => Value::Double(row.get(at)),
        ColumnType::Date => Value::Date(row.get(at)),
        ColumnType::Timestamptz => Value::Timestamptz(row.get(at)),
        ColumnType::Timestamp => Value::Timestamp(row.get(at)),
        ColumnType::Uuid => Value::Uuid(as_text.parse().unwrap()),
        ColumnType::Inet => Value::Inet(row.get(at)),
        ColumnType::Jsonb => canonical(&Value::Jsonb(as_text.to_owned())),
        ColumnType::TextArray => Value::TextArray(row.get(at)),
    }
}

/// jsonb compared as JSON (PostgreSQL spaces and orders it its own way); anything else as is.
fn canonical(value: &sqs2pg::mapping::Value) -> sqs2pg::mapping::Value {
    match value {
        sqs2pg::mapping::Value::Jsonb(text) => sqs2pg::mapping::Value::Jsonb(
            serde_json::from_str::<serde_json::Value>(text)
                .unwrap()
                .to_string(),
        ),
        other => other.clone(),
    }
}

/// Rows made by a mapping (converted, then masked: addresses as text, tokens, ipcrypt
/// addresses, epochs, versions) go through binary COPY into real columns and read back equal.
#[tokio::test]
async fn mapped_rows_with_masks_and_conversions_round_trip_through_binary_copy() {
    use sqs2pg::mapping::{Mapper, Mapping, Message};
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    let mapping = Mapping::parse(
        r#"
table = "public.mapped"
columns = [
  { name = "ip_text", from = "/host", type = "varchar(45)", convert = "ip" },
  { name = "ip_token", from = "/ip", type = "varchar(256)", convert = "ip", mask = "hmac", mask_scope = "ip" },
  { name = "ip_addr", from = "/ip", type = "inet", mask = "ipcrypt-pfx" },
  { name = "email", from = "/email", type = "text", mask = "siv" },
  { name = "gone", from = "/email", type = "text", mask = "redact" },
  { name = "sent", from = "sqs:SentTimestamp", type = "timestamptz" },
  { name = "day", from = "sqs:SentTimestamp", type = "date" },
  { name = "version", from = "/v", type = "integer", convert = "version" },
  { name = "local", from = "/ms", type = "timestamp", convert = "epoch_ms" },
  { name = "tags", from = "/tags", type = "text[]" },
]
"#,
    )
    .unwrap();
    let key =
        sqs2pg::keys::MaskKey::from_base64(&sqs2pg::keys::MaskKey::generate_base64().unwrap())
            .unwrap();
    let mapper = Mapper::new(mapping, &key);
    let bodies = [
        r#"{"host": "::ffff:10.1.2.3", "ip": "::ffff:10.9.9.9", "email": "ada@example.com", "v": "2.3.1", "ms": 1700000000123, "tags": ["a"]}"#,
        r#"{"host": "2001:DB8::1", "ip": "2001:DB8::1", "email": null, "v": "0.96", "ms": -86400000, "tags": []}"#,
        r#"{"ip": "203.0.113.7", "v": "2146.999.999", "ms": 253402300799999}"#,
    ];
    let mut rows = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let message = Message::new(body, "m", 1_700_000_000_000 + i as i64 * 86_400_000);
        rows.extend(
            mapper
                .apply(&message)
                .unwrap_or_else(|r| panic!("{body}: {r:?}")),
        );
    }
    let columns = &mapper.mapping().columns;
    let db = crate::harness::TestDb::new().await;
    let mut client = db.client().await;
    let ddl: Vec<String> = columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.column_type))
        .collect();
    client
        .batch_execute(&format!(
            "SET TimeZone = 'UTC'; CREATE TABLE mapped (n integer, {})",
            ddl.join(", ")
        ))
        .await
        .unwrap();
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let tx = client.transaction().await.unwrap();
    let sink = tx
        .copy_in(&format!(
            "COPY mapped (n, {}) FROM STDIN (FORMAT binary)",
            names.join(", ")
        ))
        .await
        .unwrap();
    let mut types = vec![tokio_postgres::types::Type::INT4];
    types.extend(
        columns
            .iter()
            .map(|c| sqs2pg::mapping::encode::wire_type(c.column_type)),
    );
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
    for (n, row) in rows.iter().enumerate() {
        let n = n as i32;
        let mut fields: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&n];
        fields.extend(
            row.values()
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        writer.as_mut().write(&fields).await.unwrap();
    }
    writer.finish().await.unwrap();
    tx.commit().await.unwrap();
    let select: Vec<String> = names.iter().map(|n| format!("{n}, {n}::text")).collect();
    let read = client
        .query(
            &format!("SELECT {} FROM mapped ORDER BY n", select.join(", ")),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(read.len(), bodies.len());
    for (row, sent) in read.iter().zip(&rows) {
        for (i, (column, value)) in columns.iter().zip(sent.values()).enumerate() {
            let as_text: Option<String> = row.get(2 * i + 1);
            let back = read_back(
                row,
                2 * i,
                as_text.as_deref().unwrap_or_default(),
                column.column_type,
            );
            assert!(
                back == canonical(value),
                "{}: sent {:?}, read back {as_text:?}",
                column.name,
                value.to_text()
            );
        }
    }
    // What the columns hold is what the mapping promised: tokens, not the values.
    let first = &read[0];
    assert_eq!(
        first.get::<_, String>(1),
        "10.1.2.3",
        "the canonical address"
    );
    assert!(first.get::<_, String>(2).contains(".h."), "an hmac token");
    assert!(
        first.get::<_, String>(6).contains(".s.") && !first.get::<_, String>(6).contains("ada")
    );
    assert_eq!(first.get::<_, Option<String>>(8), None, "redacted");
    assert_eq!(first.get::<_, i32>(14), 2_003_001);
}

/// Writes `values` into `rt (n integer, v)` by binary COPY, numbered from 0, in one transaction,
/// as the loader writes rows; a failure names `what`.
async fn copy_into_rt(
    client: &mut tokio_postgres::Client,
    column_type: sqs2pg::mapping::ColumnType,
    values: &[sqs2pg::mapping::Value],
    what: &str,
) {
    let tx = client.transaction().await.unwrap();
    let sink = tx
        .copy_in("COPY rt (n, v) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let types = [
        tokio_postgres::types::Type::INT4,
        sqs2pg::mapping::encode::wire_type(column_type),
    ];
    let mut writer = std::pin::pin!(tokio_postgres::binary_copy::BinaryCopyInWriter::new(
        sink, &types
    ));
    for (n, value) in values.iter().enumerate() {
        writer
            .as_mut()
            .write(&[&(n as i32), value])
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    writer
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    tx.commit().await.unwrap();
}
