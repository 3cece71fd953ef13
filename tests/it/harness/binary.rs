//! The `sqs2pg` binary run as a user runs it, with a clean environment, and HTTP GETs to its
//! endpoint.

use std::process::Command;
use std::time::Duration;

/// `GET path` on 127.0.0.1:`port`: the status code and the body (or `None` if nothing answers).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// In a `/metrics` text, the sum of the series of `name` that carry every one of `labels`
/// (`None` when there is none): `metric(text, "sqs2pg_rows_loaded_total", &[("queue", "q")])`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let carries = |(k, v): &(&str, &str)| {
            series_labels
                .split(',')
                .any(|pair| pair == format!("{k}=\"{v}\""))
        };
        if series_name == name && labels.iter().all(carries) {
            if let Ok(v) = value.parse::<f64>() {
                *sum.get_or_insert(0.0) += v;
            }
        }
    }
    sum
}

/// The binary with a clean environment: PATH, HOME, test AWS credentials and region, then `env`.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqs2pg"));
    c.args(args).env_clear();
    for var in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(var) {
            c.env(var, v);
        }
    }
    c.envs([
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    c.envs(env.iter().copied());
    c
}

/// Runs the binary (see [`command`]) to its end.
pub fn sqs2pg(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    command(args, env).output().unwrap()
}

/// A finished process's stderr, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// No body, ip or device_id of the sample appears in `text`.
pub fn assert_no_personal_data(text: &str) {
    for body in super::sample_bodies() {
        assert!(!text.contains(&body), "a body was printed");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for field in ["ip", "device_id"] {
            if let Some(value) = v[field].as_str() {
                assert!(!text.contains(value), "a raw {field} was printed");
            }
        }
    }
}
