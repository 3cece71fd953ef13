//! The transform alone, one core: read + check + mask per message, as the receivers run it
//! (`cargo bench --bench transform`; divan reports the time and the allocations per message). The bodies are the
//! 99 logins and the one bad message of the sample, cycled, so ips and device ids repeat and
//! 1 in 100 is invalid, as in the end-to-end benchmark. Since the login kind runs the mapping
//! engine (issue 29), `transform_one` is the engine on the built-in mapping under the login's
//! modes; until then it was the login pipeline's own parse, validate and mask.
//!
//! `transform_and_seal` adds what the pipeline also does for every message: sealing the body
//! (AES-256-SIV with a random nonce) so that a row the database refuses can be quarantined.

use std::hint::black_box;

use sqs2pg::keys::{BodySealer, MaskKey};
use sqs2pg::kind::Message;
use sqs2pg::login::{LoginKind, MaskModes};
use sqs2pg::mask::MaskMode;

/// The allocator the service runs on (`src/main.rs`: mimalloc), so the figures are what ships;
/// divan's profiler around it counts allocations per message too.
#[global_allocator]
static ALLOC: divan::AllocProfiler<mimalloc::MiMalloc> =
    divan::AllocProfiler::new(mimalloc::MiMalloc);

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

/// The login kind with `mode` for the address (and for the device id, but an ipcrypt mode,
/// which is for addresses only: hmac then).
fn login(mode: MaskMode) -> LoginKind {
    let device_id = if mode.is_ip_only() {
        MaskMode::Hmac
    } else {
        mode
    };
    LoginKind::new(
        &key(),
        MaskModes {
            ip: mode,
            device_id,
        },
    )
}

/// The login's rows as values (their encoding is `kind_transform`'s).
#[divan::bench(args = [MaskMode::Hmac, MaskMode::Siv, MaskMode::Ipcrypt])]
fn transform_one(bencher: divan::Bencher, mode: MaskMode) {
    let (bodies, login) = (bodies(), login(mode));
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 1) % bodies.len();
        let message = Message::new(black_box(&bodies[i]), "0a1b2c3d-message-id", SENT_MS);
        black_box(login.mapper().apply(&message))
    });
}

#[divan::bench]
fn transform_and_seal(bencher: divan::Bencher) {
    let (bodies, login, sealer) = (bodies(), login(MaskMode::Hmac), BodySealer::new(&key()));
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 1) % bodies.len();
        let body = black_box(&bodies[i]);
        black_box(sealer.seal("0a1b2c3d-message-id", body));
        let message = Message::new(body, "0a1b2c3d-message-id", SENT_MS);
        black_box(login.mapper().apply(&message))
    });
}

/// `examples/mappings/login.toml` as a mapping of its own: what `transform_one(Hmac)` runs,
/// from the file (the engine's number since its first version).
#[divan::bench]
fn mapping_login(bencher: divan::Bencher) {
    use sqs2pg::mapping::{Mapper, Mapping};
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

/// Reading alone: the login mapping's seven pointers found in a login body, no conversion
/// (what `mapping_login` spends before its columns).
#[divan::bench]
fn document_read(bencher: divan::Bencher) {
    use sqs2pg::mapping::document::{Document, Plan};
    let bodies = bodies();
    let mut plan = Plan::default();
    for pointer in [
        "/user_id",
        "/device_type",
        "/ip",
        "/device_id",
        "/locale",
        "/app_version",
    ] {
        plan.slot(pointer);
    }
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 1) % bodies.len();
        black_box(Document::read(&plan, black_box(&bodies[i]), "").map(|d| d.get(0).is_some()))
    });
}

/// The wide mapping's one message of about 600 bytes (`benches/wide.toml`).
const WIDE_BODY: &str = r#"{"id": "6f9619ff-8b86-d011-b42d-00c04fc964ff", "kind": "b", "user": {"id": "u-42", "email": "ada@example.com", "ip": "203.0.113.7", "country": "GB"}, "amount": "1234.567", "qty": 3, "big": 9007199254740993, "ratio": 0.25, "flag": true, "at": "2026-12-04T10:00:00.123456+01:00", "day": "2026-12-04", "local": "2026-12-04 10:00:00", "host": "2001:db8::1", "tags": ["x", "y", "z"], "version": "2.3.1", "code": "ABC-123", "note": "free text", "meta": {"a": 1, "b": [1, 2]}}"#;

fn wide_mapper() -> sqs2pg::mapping::Mapper {
    use sqs2pg::mapping::{Mapper, Mapping};
    Mapper::new(
        Mapping::parse(include_str!("wide.toml")).expect("valid"),
        &key(),
    )
}

/// A wide mapping: 20 columns of every kind (text, numbers, numeric, timestamps, uuid, inet,
/// jsonb overflow, text[], two masks), one message of about 600 bytes.
#[divan::bench]
fn mapping_wide(bencher: divan::Bencher) {
    use sqs2pg::mapping::Message;
    let mapper = wide_mapper();
    bencher.bench_local(|| {
        let message = Message::new(black_box(WIDE_BODY), "0a1b2c3d-message-id", SENT_MS);
        black_box(mapper.apply(&message))
    });
}

/// What the receivers run per message since the pipeline is generic over message kinds
/// (`kind::MessageKind::transform`): the transform and the row's binary COPY encoding, which
/// the loader did before. `login` is `transform_one(Hmac)` plus the encoding (and the unknown
/// fields counted).
/// The wide body with each of three kinds, for one mapping and four (`four_mappings`).
fn wide_bodies() -> Vec<String> {
    ["a", "b", "c"]
        .iter()
        .map(|k| WIDE_BODY.replace(r#""kind": "b""#, &format!(r#""kind": "{k}""#)))
        .collect()
}

/// Four copies of the wide mapping on one queue, each taking one `kind` (`a` to `d`): the
/// router parses a message once and asks each mapping's `match`; one maps it.
fn four_wide_mappings() -> sqs2pg::mapping::Router {
    use sqs2pg::mapping::{Mapping, Router};
    let mappings = ["a", "b", "c", "d"]
        .iter()
        .map(|k| {
            Mapping::parse(&include_str!("wide.toml").replace(
                r#"table = "public.wide_events""#,
                &format!(
                    "table = \"public.wide_{k}\"\nmatch = {{ field = \"/kind\", equals = \"{k}\" }}"
                ),
            ))
            .expect("valid")
        })
        .collect();
    Router::new(mappings, &key()).expect("four tables")
}

#[divan::bench(args = ["login", "mapping_login", "mapping_wide", "wide_one_of_one", "wide_one_of_four"])]
fn kind_transform(bencher: divan::Bencher, kind: &str) {
    use sqs2pg::kind::MessageKind;
    use sqs2pg::mapping::{Mapper, Mapping};
    let (bodies, kind): (Vec<String>, Box<dyn MessageKind>) = match kind {
        "login" => (bodies(), Box::new(login(MaskMode::Hmac))),
        "mapping_login" => (
            bodies(),
            Box::new(Mapper::new(
                Mapping::parse(include_str!("../examples/mappings/login.toml")).expect("valid"),
                &key(),
            )),
        ),
        "mapping_wide" => (vec![WIDE_BODY.to_owned()], Box::new(wide_mapper())),
        "wide_one_of_one" => (wide_bodies(), Box::new(wide_mapper())),
        _ => (wide_bodies(), Box::new(four_wide_mappings())),
    };
    let mut i = 0usize;
    bencher.bench_local(|| {
        i = (i + 1) % bodies.len();
        let message = Message::new(black_box(&bodies[i]), "0a1b2c3d-message-id", SENT_MS);
        black_box(kind.transform(&message))
    });
}
