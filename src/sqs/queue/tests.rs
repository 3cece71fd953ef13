//! Unit tests of `sqs::queue`.

use super::*;
use crate::sqs::name::is_queue_name;

#[test]
fn every_url_spelling_users_paste() {
    let cases = [
        // (queue, local origin, region, name)
        (
            "http://localhost:4566/000000000000/login-queue",
            Some("http://localhost:4566"),
            None,
            Some("login-queue"),
        ),
        (
            "http://sqs.us-east-1.localhost.localstack.cloud:4566/000000000000/login-queue",
            Some("http://sqs.us-east-1.localhost.localstack.cloud:4566"),
            Some("us-east-1"),
            Some("login-queue"),
        ),
        (
            "https://sqs.eu-west-1.amazonaws.com/123456789012/login-queue",
            None,
            Some("eu-west-1"),
            Some("login-queue"),
        ),
        (
            "https://eu-central-1.queue.amazonaws.com/123456789012/q.fifo",
            None,
            Some("eu-central-1"),
            Some("q.fifo"),
        ),
        (
            "https://sqs.us-gov-west-1.amazonaws.com/1/q/",
            None,
            Some("us-gov-west-1"),
            Some("q"),
        ),
        ("login-queue", None, None, Some("login-queue")),
    ];
    for (queue, origin, region, name) in cases {
        assert_eq!(local_origin(queue).as_deref(), origin, "{queue}");
        assert_eq!(region_of(queue).as_deref(), region, "{queue}");
        assert_eq!(queue_name(queue), name, "{queue}");
    }
    assert_eq!(region_of("http://localhost:4566/0/q"), None);
    assert!(is_fifo("https://sqs.eu-west-1.amazonaws.com/1/q.fifo"));
    assert!(is_fifo("q.fifo"));
    assert!(!is_fifo("http://localhost:4566/0/q"));
    assert_eq!(region_of("https://sqs.amazonaws.com/0/q"), None);
}

#[test]
fn only_an_answer_in_query_counts_as_speaking_query() {
    let refused = |code: Option<&str>| -> Result<(), SourceError> {
        Err(SourceError {
            code: code.map(str::to_owned),
            ..SourceError::answered("ListQueues", 500, None, String::new())
        })
    };
    assert!(answered(&Ok::<(), SourceError>(())));
    assert!(answered(&refused(Some("AccessDenied"))));
    assert!(!answered(&refused(None)));
    let unreachable: Result<(), SourceError> = Err(SourceError::new(
        SourceErrorKind::Transient,
        "ListQueues",
        "connection refused",
    ));
    assert!(!answered(&unreachable));
}

#[test]
fn queue_names_follow_sqs_rules() {
    assert!(is_queue_name("login-queue"));
    assert!(is_queue_name("a_b-9.fifo"));
    assert!(!is_queue_name(".fifo"));
    assert!(!is_queue_name("has space"));
    assert!(!is_queue_name(&"x".repeat(81)));
    assert!(!is_queue_name(""));
}

#[test]
fn a_bare_name_goes_to_its_partitions_endpoint() {
    assert_eq!(
        regional_endpoint("eu-west-1"),
        "https://sqs.eu-west-1.amazonaws.com"
    );
    assert_eq!(
        regional_endpoint("cn-north-1"),
        "https://sqs.cn-north-1.amazonaws.com.cn"
    );
}

#[tokio::test(start_paused = true)]
async fn setup_calls_are_tried_three_times_and_only_when_worth_it() {
    use std::sync::atomic::AtomicU32;
    let calls = AtomicU32::new(0);
    let failing = |kind| {
        let calls = &calls;
        move || async move {
            calls.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(SourceError::new(kind, "GetQueueUrl", "no"))
        }
    };
    assert!(retried(failing(SourceErrorKind::Transient)).await.is_err());
    assert_eq!(calls.swap(0, Ordering::Relaxed), 3);
    assert!(retried(failing(SourceErrorKind::Permanent)).await.is_err());
    assert_eq!(calls.swap(0, Ordering::Relaxed), 1);
    let answer = retried(|| async {
        match calls.fetch_add(1, Ordering::Relaxed) {
            0 => Err(SourceError::new(
                SourceErrorKind::Transient,
                "GetQueueUrl",
                "blip",
            )),
            _ => Ok("url"),
        }
    })
    .await;
    assert_eq!(answer.unwrap(), "url");
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}
