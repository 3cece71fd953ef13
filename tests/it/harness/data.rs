//! Test data: the sample file, synthetic logins, key files.

use std::path::PathBuf;

use super::*;

/// The sample file shipped in the repo: 99 logins and one malformed message.
pub const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/login-queue-sample.jsonl"
);

/// The 100 sample bodies shipped in the repo.
pub fn sample_bodies() -> Vec<String> {
    let text = std::fs::read_to_string(SAMPLE).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// A masking key file (mode 600) in a fresh temp dir; returns its path.
pub fn key_file(key_b64: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(unique("sqs2pg-key"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mask.key");
    std::fs::write(&path, key_b64).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `n` synthetic logins, one per line, each with its own user_id (`user-00000`, ...); ips and
/// devices repeat, as in real traffic. Written to a fresh file, whose path is returned.
pub fn synthetic_logins(n: usize) -> PathBuf {
    let bodies: String = (0..n)
        .map(|i| {
            format!(
                "{{\"user_id\": \"user-{i:05}\", \"app_version\": \"2.{}.{}\", \"device_type\": \"android\", \"ip\": \"10.0.{}.{}\", \"locale\": \"RU\", \"device_id\": \"{:03}-45-6789\"}}\n",
                i % 7,
                i % 11,
                i % 250,
                i % 200,
                i % 997
            )
        })
        .collect();
    let file = std::env::temp_dir()
        .join(unique("logins"))
        .with_extension("jsonl");
    std::fs::write(&file, bodies).unwrap();
    file
}
