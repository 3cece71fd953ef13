//! What a queue's URL or name says by itself: its name, whether it is a FIFO queue, and whether
//! a name is one SQS takes. A leaf: both protocols' clients and the queue use it, and it uses
//! nothing of theirs.

/// The queue as logs, metric labels and summaries name it: its name, or the string as given
/// when it has none (a URL without a path).
pub fn queue_label(queue: &str) -> &str {
    queue_name(queue).unwrap_or(queue)
}

/// A URL (`scheme://...`) rather than a bare queue name.
pub(crate) fn is_url(queue: &str) -> bool {
    queue.contains("://")
}

/// The queue name: the URL's last path segment, or the whole string when it is a name.
pub fn queue_name(queue: &str) -> Option<&str> {
    if !is_url(queue) {
        return Some(queue).filter(|n| !n.is_empty());
    }
    let path = queue.split_once("://")?.1.split_once('/')?.1;
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
}

/// True for a FIFO queue (its name, or its URL's last segment, ends in `.fifo`).
pub fn is_fifo(queue: &str) -> bool {
    queue_name(queue).is_some_and(|n| n.ends_with(".fifo"))
}

/// True when `name` is a valid SQS queue name: 1 to 80 of `A-Za-z0-9_-`, with an optional
/// `.fifo` suffix for FIFO queues.
pub fn is_queue_name(name: &str) -> bool {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    (1..=80).contains(&name.len())
        && !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
