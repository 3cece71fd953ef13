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
