//! The test process's own log lines, captured so tests can assert what was (and was not)
//! logged.

use std::sync::{Arc, Mutex, OnceLock};

/// Every log line of this test process, as the binary's filter would pass them but with our
/// own crate at `trace`.
pub static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A global subscriber, not a scoped one: tracing caches per-callsite interest process-wide, so
// a thread-local subscriber can miss events whose callsites another test thread hit first.
pub fn capture_logs() {
    let buffer = LOGS.get_or_init(Arc::default).clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{},sqs2pg=trace",
            sqs2pg::telemetry::DEFAULT_FILTER
        )))
        .with_writer(move || Captured(buffer.clone()))
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
}

/// The captured log text so far.
pub fn captured_logs() -> String {
    let buffer = LOGS.get().expect("servers() starts the capture");
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}
