//! The transform alone, one core: parse + validate + mask per message, as the receivers run it
//! (`cargo bench --bench transform`; divan reports the time and the allocations per message). The bodies are the
//! 99 logins and the one bad message of the sample, cycled, so ips and device ids repeat and
//! 1 in 100 is invalid, as in the end-to-end benchmark.
//!
//! `transform_and_seal` adds what the pipeline also does for every message: sealing the body
//! (AES-256-SIV with a random nonce) so that a row the database refuses can be quarantined.

use std::hint::black_box;

use sqs2pg::login::{transform, BodySealer, MaskKey, MaskMode, MaskModes, Masker};

/// Counts allocations per message too (divan's allocation profiler).
#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

const SENT_MS: i64 = 1_764_072_000_000;

fn bodies() -> Vec<String> {
    include_str!("../examples/login-queue-sample.jsonl")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn key() -> MaskKey {
    MaskKey::from_base64("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpbXF1eX2A=").expect("a test key")
}

fn masker(mode: MaskMode) -> Masker {
    Masker::with_modes(
        &key(),
        MaskModes {
            ip: mode,
            device_id: if mode.is_ip_only() {
                MaskMode::Hmac
            } else {
                mode
            },
        },
    )
}

#[divan::bench(args = [MaskMode::Hmac, MaskMode::Siv, MaskMode::Ipcrypt])]
fn transform_one(bencher: divan::Bencher, mode: MaskMode) {
    let (bodies, masker) = (bodies(), masker(mode));
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 1) % bodies.len();
        black_box(transform(
            &masker,
            256 * 1024,
            black_box(&bodies[i]),
            SENT_MS,
        ))
    });
}

#[divan::bench]
fn transform_and_seal(bencher: divan::Bencher) {
    let (bodies, masker, sealer) = (bodies(), masker(MaskMode::Hmac), BodySealer::new(&key()));
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 1) % bodies.len();
        let body = black_box(&bodies[i]);
        black_box(sealer.seal("0a1b2c3d-message-id", body));
        black_box(transform(&masker, 256 * 1024, body, SENT_MS))
    });
}

/// The login pipeline as a declarative mapping (`examples/mappings/login.toml`): the same rows
/// and tokens as `transform_one(Hmac)`, through the generic engine (JSON tree, pointers, typed
/// values), for the price of generality.
#[divan::bench]
fn mapping_login(bencher: divan::Bencher) {
    use sqs2pg::mapping::{Mapper, Mapping, Message};
    let bodies = bodies();
    let mapper = Mapper::new(
        Mapping::parse(include_str!("../examples/mappings/login.toml")).expect("valid"),
        &key(),
    );
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 1) % bodies.len();
        let message = Message::new(black_box(&bodies[i]), "0a1b2c3d-message-id", SENT_MS);
        black_box(mapper.apply(&message))
    });
}

/// A wide mapping: 20 columns of every kind (text, numbers, numeric, timestamps, uuid, inet,
/// jsonb overflow, text[], two masks), one message of about 600 bytes.
#[divan::bench]
fn mapping_wide(bencher: divan::Bencher) {
    use sqs2pg::mapping::{Mapper, Mapping, Message};
    let mapping = Mapping::parse(
        r#"
table = "wide"
columns = [
  { name = "id", from = "/id", type = "uuid", required = true },
  { name = "kind", from = "/kind", type = "varchar(32)", allowed = ["a", "b", "c"] },
  { name = "user", from = "/user/id", type = "text", required = true },
  { name = "email", from = "/user/email", type = "varchar(256)", mask = "hmac" },
  { name = "ip", from = "/user/ip", type = "varchar(256)", convert = "ip", mask = "hmac" },
  { name = "country", from = "/user/country", type = "varchar(2)" },
  { name = "amount", from = "/amount", type = "numeric(12,2)", min = 0 },
  { name = "qty", from = "/qty", type = "integer" },
  { name = "big", from = "/big", type = "bigint" },
  { name = "ratio", from = "/ratio", type = "double precision" },
  { name = "flag", from = "/flag", type = "boolean" },
  { name = "at", from = "/at", type = "timestamptz", required = true },
  { name = "day", from = "/day", type = "date" },
  { name = "local", from = "/local", type = "timestamp" },
  { name = "host", from = "/host", type = "inet" },
  { name = "tags", from = "/tags", type = "text[]" },
  { name = "version", from = "/version", type = "integer", convert = "version" },
  { name = "code", from = "/code", type = "text", pattern = "[A-Z]{3}-[0-9]+" },
  { name = "sent", from = "sqs:SentTimestamp", type = "timestamptz" },
  { name = "extra", from = "rest", type = "jsonb" },
]
"#,
    )
    .expect("valid");
    let body = r#"{"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "kind": "b", "user": {"id": "u-42", "email": "ada@example.com", "ip": "203.0.113.7", "country": "GB"}, "amount": "1234.567", "qty": 3, "big": 9007199254740993, "ratio": 0.25, "flag": true, "at": "2026-12-04T10:00:00.123456+01:00", "day": "2026-12-04", "local": "2026-12-04 10:00:00", "host": "2001:db8::1", "tags": ["x", "y", "z"], "version": "2.3.1", "code": "ABC-123", "note": "free text", "meta": {"a": 1, "b": [1, 2]}}"#;
    let mapper = Mapper::new(mapping, &key());
    bencher.bench_local(|| {
        let message = Message::new(black_box(body), "0a1b2c3d-message-id", SENT_MS);
        black_box(mapper.apply(&message))
    });
}
