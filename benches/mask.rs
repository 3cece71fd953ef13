//! Tokens per second per masking mode, one core: `cargo bench --bench mask`.
//! (A plain timing loop, not a harness: under `cargo test` it does nothing.)

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use sqs2pg::keys::MaskKey;
use sqs2pg::login::{MaskModes, Masker};
use sqs2pg::mask::MaskMode;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let key = MaskKey::from_base64(&MaskKey::generate_base64().unwrap()).unwrap();
    const N: u32 = 1_000_000;
    let ips: Vec<IpAddr> = (0..N)
        .map(|i| IpAddr::from(i.wrapping_mul(2_654_435_761).to_be_bytes()))
        .collect();
    let ids: Vec<String> = (0..N)
        .map(|i| format!("{:03}-{:02}-{:04}", i % 1000, i % 100, i % 10_000))
        .collect();
    println!("| mode | ip tokens/s | device_id tokens/s |");
    println!("|---|---|---|");
    for mode in [
        MaskMode::Hmac,
        MaskMode::Siv,
        MaskMode::Ipcrypt,
        MaskMode::IpcryptPfx,
    ] {
        let device_mode = if mode.is_ip_only() {
            MaskMode::Hmac
        } else {
            mode
        };
        let masker = Masker::with_modes(
            &key,
            MaskModes {
                ip: mode,
                device_id: device_mode,
            },
        );
        let started = Instant::now();
        for ip in &ips {
            black_box(masker.mask_ip(*ip));
        }
        let ip_rate = f64::from(N) / started.elapsed().as_secs_f64();
        let device = if mode.is_ip_only() {
            "-".to_owned()
        } else {
            let started = Instant::now();
            for id in &ids {
                black_box(masker.mask_device_id(id).unwrap());
            }
            format!(
                "{:.2} M",
                f64::from(N) / started.elapsed().as_secs_f64() / 1e6
            )
        };
        println!("| {mode} | {:.2} M | {device} |", ip_rate / 1e6);
    }
}
