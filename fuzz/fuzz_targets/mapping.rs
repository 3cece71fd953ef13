//! Fuzz target over the mapping transform: every body, through each example mapping (bare,
//! SNS, EventBridge and S3 envelopes, every column type), maps or is rejected, never panics;
//! whatever is accepted fits its columns. The first byte picks the mapping.
//!
//!     cargo fuzz run mapping fuzz/corpus/mapping -- -max_total_time=600

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sqs2pg::keys::MaskKey;
use sqs2pg::mapping::{ColumnType, Mapper, Mapping, Message, Value};

const MAPPINGS: [&str; 3] = [
    include_str!("../../examples/mappings/login.toml"),
    include_str!("../../examples/mappings/orders-sns.toml"),
    r#"
table = "everything"
envelope = "s3"
columns = [
  { name = "t", from = "/t", type = "varchar(8)", pattern = "[a-z]*" },
  { name = "b", from = "/b", type = "boolean" },
  { name = "s", from = "/s", type = "smallint", min = -5, max = 5 },
  { name = "i", from = "/i", type = "integer" },
  { name = "l", from = "/l", type = "bigint" },
  { name = "n", from = "/n", type = "numeric(6,3)" },
  { name = "r", from = "/r", type = "real" },
  { name = "d", from = "/d", type = "double precision" },
  { name = "day", from = "/day", type = "date" },
  { name = "at", from = "/at", type = "timestamptz" },
  { name = "local", from = "/local", type = "timestamp" },
  { name = "u", from = "/u", type = "uuid" },
  { name = "ip", from = "/ip", type = "inet", mask = "ipcrypt" },
  { name = "j", from = "rest", type = "jsonb" },
  { name = "tags", from = "/tags", type = "text[]" },
  { name = "v", from = "/v", type = "integer", convert = "version" },
  { name = "ms", from = "/ms", type = "timestamptz", convert = "epoch_ms" },
  { name = "token", from = "/token", type = "text", mask = "siv", allowed = ["a", "b"] },
]
"#,
];

static READY: OnceLock<Vec<Mapper>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(body) = std::str::from_utf8(rest) else {
        return;
    };
    let ready = READY.get_or_init(|| {
        let key = MaskKey::from_base64(&"A".repeat(44)).expect("valid key");
        MAPPINGS
            .iter()
            .map(|text| Mapper::new(Mapping::parse(text).expect("the mappings are valid"), &key))
            .collect()
    });
    let mapper = &ready[usize::from(pick) % ready.len()];
    let mapping = mapper.mapping();
    let message = Message::new(body, "fuzz", 1_700_000_000_000);
    if let Ok(rows) = mapper.apply(&message) {
        for row in rows {
            for (column, value) in mapping.columns.iter().zip(row.values()) {
                if let (ColumnType::Varchar(n), Value::Text(s)) = (column.column_type, value) {
                    assert!(s.chars().count() <= n as usize, "{}", column.name);
                }
                if let Value::Text(s) = value {
                    assert!(!s.contains('\0'));
                }
                if column.required {
                    assert!(*value != Value::Null, "{}", column.name);
                }
                // What preview prints and what COPY sends must not panic either.
                let _ = value.to_text();
                let mut out = bytes::BytesMut::new();
                let _ = tokio_postgres::types::ToSql::to_sql(
                    value,
                    &sqs2pg::mapping::encode::wire_type(column.column_type),
                    &mut out,
                );
            }
        }
    }
    // The mapping parser takes any text without panicking, too.
    let _ = Mapping::parse(body);
});
