//! Unit tests of `sqs::transport`: what goes on the wire, read by a listener on loopback.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::sqs::json::JsonQueue;
use crate::sqs::query::QueryQueue;
use crate::sqs::MessageSource;

/// Answers each of `answers` calls with `body` (status 200) and hands back each request's
/// head, lower-cased.
async fn listener(
    body: &'static str,
    answers: usize,
) -> (String, tokio::task::JoinHandle<Vec<String>>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", socket.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut stream, _) = socket.accept().await.unwrap();
        let mut heads = Vec::new();
        let mut buffer = Vec::new();
        while heads.len() < answers {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed the connection");
            buffer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buffer).to_string();
            let Some(end) = text.find("\r\n\r\n") else {
                continue;
            };
            let head = text[..end].to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buffer.len() < end + 4 + length {
                continue;
            }
            buffer.drain(..end + 4 + length);
            heads.push(head);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
        }
        heads
    });
    (endpoint, server)
}

fn provider() -> Option<SharedCredentialsProvider> {
    Some(SharedCredentialsProvider::new(Credentials::new(
        "AKIDTEST",
        "not-a-secret",
        None,
        None,
        "tests",
    )))
}

#[tokio::test]
async fn a_json_call_is_signed_named_and_asks_to_keep_the_connection() {
    let (endpoint, server) = listener(r#"{"Successful":[],"Failed":[]}"#, 2).await;
    let transport = Transport::new(&endpoint, "us-east-1".into(), provider()).unwrap();
    let queue = JsonQueue::new(transport, format!("{endpoint}/000000000000/q"));
    let ack = crate::sqs::AckHandle {
        message_id: "m".into(),
        receipt_handle: "h".into(),
    };
    for _ in 0..2 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            queue.delete(std::slice::from_ref(&ack)),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(outcome.deleted, 0);
    }
    // Both calls came over one connection (the listener accepts only one).
    let heads = server.await.unwrap();
    for head in &heads {
        assert!(head.contains("connection: keep-alive"), "{head}");
        assert!(
            head.contains("x-amz-target: amazonsqs.deletemessagebatch"),
            "{head}"
        );
        assert!(
            head.contains("content-type: application/x-amz-json-1.0"),
            "{head}"
        );
        assert!(
            head.contains("authorization: aws4-hmac-sha256 credential="),
            "{head}"
        );
        assert!(head.contains("/us-east-1/sqs/aws4_request"), "{head}");
        // The hop-by-hop header is not signed.
        let signed = head
            .lines()
            .find_map(|l| l.split("signedheaders=").nth(1))
            .unwrap();
        assert!(!signed.contains("connection"), "{signed}");
        assert!(signed.contains("x-amz-target"), "{signed}");
    }
}

#[tokio::test]
async fn a_query_call_is_a_signed_form_post() {
    let (endpoint, server) = listener(
        "<ListQueuesResponse><ListQueuesResult/></ListQueuesResponse>",
        1,
    )
    .await;
    let transport = Transport::new(&endpoint, "eu-west-1".into(), provider()).unwrap();
    let queue = QueryQueue::new(transport, format!("{endpoint}/000000000000/q"));
    tokio::time::timeout(Duration::from_secs(10), queue.probe())
        .await
        .unwrap()
        .unwrap();
    let heads = server.await.unwrap();
    let head = &heads[0];
    assert!(head.contains("connection: keep-alive"), "{head}");
    assert!(
        head.contains("content-type: application/x-www-form-urlencoded"),
        "{head}"
    );
    assert!(head.contains("/eu-west-1/sqs/aws4_request"), "{head}");
    assert!(!head.contains("x-amz-target"), "{head}");
}

#[tokio::test]
async fn no_credentials_is_said_before_anything_is_sent() {
    let transport = Transport::new("http://127.0.0.1:1", "us-east-1".into(), None).unwrap();
    let error = transport
        .post("ReceiveMessage", "text/plain", &[], Vec::new())
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind, SourceErrorKind::Permanent);
    assert_eq!(error.status, None);
    assert!(error.message.contains("no AWS credentials"), "{error}");
}

#[tokio::test]
async fn an_answer_that_stops_short_is_transient_and_quotes_nothing() {
    // A 200 whose JSON ends early with the connection: the call may have been served.
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", socket.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut stream, _) = socket.accept().await.unwrap();
        let mut chunk = [0u8; 8192];
        let _ = stream.read(&mut chunk).await.unwrap();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"Messages\":[{\"Body\":\"secret-ip 10.1.2.3")
            .await
            .unwrap();
    });
    let transport = Transport::new(&endpoint, "us-east-1".into(), provider()).unwrap();
    let queue = JsonQueue::new(transport, format!("{endpoint}/000000000000/q"));
    let request = crate::sqs::ReceiveRequest::new(10, Duration::from_secs(1), None);
    let error = tokio::time::timeout(Duration::from_secs(10), queue.receive(&request))
        .await
        .unwrap()
        .err()
        .unwrap();
    server.await.unwrap();
    assert_eq!(error.kind, SourceErrorKind::Transient, "{error}");
    assert!(!error.to_string().contains("10.1.2.3"), "{error}");
}
