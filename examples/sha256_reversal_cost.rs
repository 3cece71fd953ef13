//! How long it takes to reverse an unkeyed SHA-256 of an IPv4 address by enumeration, on this
//! machine, one core, against the keyed token sqs2pg stores. Run with
//! `cargo run --release --example sha256_reversal_cost`; the README quotes its output.
//!
//! It hashes 2^24 addresses (1/256 of the IPv4 space) both ways and extrapolates to all 2^32.

use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

fn main() {
    const SAMPLE: u32 = 1 << 24;
    // An unkeyed hash of some address: what an attacker holding the table would see.
    let target = Sha256::digest([203u8, 0, 113, 77]);
    let started = Instant::now();
    let mut found = None;
    for n in 0..SAMPLE {
        let ip = (0xCB00_0000u32 | n).to_be_bytes();
        if Sha256::digest(ip) == target {
            found = Some(ip);
        }
    }
    let unkeyed = started.elapsed().as_secs_f64();
    assert_eq!(found, Some([203, 0, 113, 77]), "found by enumeration");

    // The keyed token: the same enumeration needs the key. With the key (an insider), it costs
    // one HMAC per guess; without it, a guess at the 256-bit key as well.
    let mac = Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap();
    let started = Instant::now();
    let mut sink = 0u8;
    for n in 0..SAMPLE {
        let mut m = mac.clone();
        m.update(&n.to_be_bytes());
        sink ^= m.finalize().into_bytes()[0];
    }
    let keyed = started.elapsed().as_secs_f64();

    let scale = f64::from(u32::MAX) / f64::from(SAMPLE);
    println!("unkeyed SHA-256: {:.1} M hashes/s; all 2^32 IPv4 addresses in {:.0} s ({:.1} min) on one core",
        f64::from(SAMPLE) / unkeyed / 1e6, unkeyed * scale, unkeyed * scale / 60.0);
    println!("keyed HMAC-SHA-256 with the key: {:.1} M/s; all 2^32 in {:.0} s; without the key: a search of 2^256 keys per token (sink {sink})",
        f64::from(SAMPLE) / keyed / 1e6, keyed * scale);
}
