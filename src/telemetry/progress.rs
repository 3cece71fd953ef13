//! The live progress line `drain` shows on a terminal: loaded, rejected, rate, what is left in
//! the queue and an ETA, redrawn a few times a second on stderr (indicatif). Nothing is drawn
//! when stderr is not a terminal. The run updates the live counts ([`Progress`]) at every
//! COMMIT.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

/// Live counts of a run, for a progress display; updated at every COMMIT.
#[derive(Debug, Default)]
pub struct Progress {
    pub received: AtomicU64,
    pub loaded: AtomicU64,
    pub rejected: AtomicU64,
    pub duplicates: AtomicU64,
    /// `drain`: messages it waits for that it does not hold (in flight under another
    /// consumer, or delayed); 0 when it waits for none.
    pub waiting_elsewhere: AtomicU64,
}

impl Progress {
    /// (received, loaded, rejected, duplicates) now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            get(&self.received),
            get(&self.loaded),
            get(&self.rejected),
            get(&self.duplicates),
        )
    }

    pub(crate) fn add(&self, received: u64, loaded: u64, rejected: u64, duplicates: u64) {
        self.received.fetch_add(received, Ordering::Relaxed);
        self.loaded.fetch_add(loaded, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
        self.duplicates.fetch_add(duplicates, Ordering::Relaxed);
    }
}

/// How often the line is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(250);

/// Draws the line until `done`; `depth` is polled now and then for what is left.
pub async fn show<F, Fut>(progress: Arc<Progress>, mut depth: F, done: CancellationToken)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<u64>>,
{
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let started = Instant::now();
    let mut left: Option<u64> = None;
    let mut last_poll: Option<Instant> = None;
    let mut tick = tokio::time::interval(REDRAW_EVERY);
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = tick.tick() => {}
        }
        if last_poll.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
            last_poll = Some(Instant::now());
            left = depth().await.or(left);
        }
        let (received, loaded, rejected, _) = progress.snapshot();
        let mut text = line(received, loaded, rejected, left, started.elapsed());
        let waiting = progress.waiting_elsewhere.load(Ordering::Relaxed);
        if waiting > 0 {
            text.push_str(&waiting_line(waiting));
        }
        bar.set_message(text);
        bar.tick();
    }
    bar.finish_and_clear();
}

/// The text of the line.
fn line(received: u64, loaded: u64, rejected: u64, left: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        received as f64 / secs
    } else {
        0.0
    };
    let mut text = format!("{loaded} loaded, {rejected} rejected, {rate:.0} msg/s");
    if let Some(left) = left {
        text.push_str(&format!(", ~{left} left in the queue"));
        if rate >= 1.0 && left > 0 {
            let eta = Duration::from_secs_f64(left as f64 / rate);
            text.push_str(&format!(", ETA {}s", eta.as_secs()));
        }
    }
    text
}

/// What a drain that found the queue empty of visible messages still waits for.
fn waiting_line(waiting: u64) -> String {
    format!(", waiting for ~{waiting} held by another consumer or delayed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_what_is_done_and_what_is_left() {
        let text = line(1_000, 990, 10, Some(5_000), Duration::from_secs(10));
        assert_eq!(
            text,
            "990 loaded, 10 rejected, 100 msg/s, ~5000 left in the queue, ETA 50s"
        );
        assert_eq!(
            line(0, 0, 0, None, Duration::ZERO),
            "0 loaded, 0 rejected, 0 msg/s"
        );
        assert_eq!(
            waiting_line(10),
            ", waiting for ~10 held by another consumer or delayed"
        );
    }
}
