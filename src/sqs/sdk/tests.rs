//! Unit tests of `sqs::sdk`.

/// The SDK's HTTP seam: records each request's `Connection` header, answers `{}`.
#[derive(Debug, Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>);

impl aws_smithy_runtime_api::client::http::HttpConnector for Capture {
    fn call(
        &self,
        request: aws_sdk_sqs::config::http::HttpRequest,
    ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
        let connection = request.headers().get("connection").map(str::to_owned);
        self.0.lock().unwrap().push(connection);
        let response = HttpResponse::new(
            200.try_into().unwrap(),
            aws_smithy_types::body::SdkBody::from("{}"),
        );
        aws_smithy_runtime_api::client::http::HttpConnectorFuture::ready(Ok(response))
    }
}

impl aws_smithy_runtime_api::client::http::HttpClient for Capture {
    fn http_connector(
        &self,
        _: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
        aws_smithy_runtime_api::client::http::SharedHttpConnector::new(self.clone())
    }
}

#[tokio::test]
async fn every_call_asks_to_keep_the_connection_open() {
    let capture = Capture::default();
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::for_tests(),
            ),
        )
        .endpoint_url("http://127.0.0.1:1")
        .http_client(capture.clone())
        .build();
    let sqs = client(&config);
    let _ = sqs.get_queue_url().queue_name("q").send().await;
    let _ = sqs
        .delete_message_batch()
        .queue_url("http://127.0.0.1:1/000000000000/q")
        .send()
        .await;
    let seen = capture.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|c| c.as_deref() == Some("keep-alive")),
        "{seen:?}"
    );
    // Without the interceptor, the SDK asks nothing (and LocalStack closes).
    let plain = Client::new(&config);
    let _ = plain.get_queue_url().queue_name("q").send().await;
    assert_eq!(capture.0.lock().unwrap().last(), Some(&None));
}

use super::*;

#[test]
fn what_looks_like_a_query_only_server() {
    // LocalStack 0.14: HTTP 500, body `{}`.
    assert!(query_only_hint(500, None, false));
    // An XML error to a JSON request, from a server that wants `Action=`.
    assert!(query_only_hint(400, Some("InvalidAction"), true));
    // moto's XML signature errors, and ordinary errors, are not.
    assert!(!query_only_hint(403, Some("SignatureDoesNotMatch"), true));
    assert!(!query_only_hint(403, None, false));
    assert!(!query_only_hint(500, Some("InternalError"), false));
    assert!(!query_only_hint(
        400,
        Some("AWS.SimpleQueueService.NonExistentQueue"),
        false
    ));
}
