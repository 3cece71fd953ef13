//! [`MessageSource`] on the SQS **query protocol**: form-encoded POSTs with `Action=...`, XML
//! answers. Old LocalStack (0.14, the exercise's own image) speaks nothing else, and the
//! official Rust SDK speaks only JSON, so this small client is our own: no crate offers the
//! query protocol for SQS. It covers exactly the calls the pipeline, `send` and replay make.
//!
//! Requests are signed with SigV4 by the official `aws-sigv4` crate, with credentials from the
//! same provider chain the SDK uses (so it works against real SQS too); answers are read with
//! quick-xml (`super::xml`), including error answers and per-entry batch failures. HTTP is
//! hyper with rustls on ring, the stack the SDK itself runs on.
//!
//! One job, one file of about 500 lines: the client (transport, signing, credentials) and the
//! calls it makes, each a few lines over the shared request path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::name::is_fifo;
use super::xml::Element;
use super::{
    accept, batch_entry, delete_outcome, in_words, no_credentials, send_retries, AckHandle,
    BatchFailure, DeleteOutcome, MessageSource, Outgoing, QueueCounts, ReceiveRequest, Received,
    SourceError, SourceErrorKind, WireMessage, LEDGER_ID_ATTRIBUTE, SENT_TIMESTAMP_ATTRIBUTE,
    SQS_BATCH_LIMIT,
};

/// The SQS API version every query request names.
const API_VERSION: &str = "2012-11-05";
/// Longest a call may take, answer included; well above the longest long poll (20 s), like the
/// SDK client's attempt timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Credentials with an expiry are fetched again this long before it.
const CREDENTIALS_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// An SQS queue reached through the query protocol.
pub struct QueryQueue {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Where requests go: the endpoint's root.
    endpoint: Uri,
    host: HeaderValue,
    queue_url: String,
    region: String,
    provider: Option<SharedCredentialsProvider>,
    /// The provider's last answer (the SDK caches in its own runtime; we cache here).
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl std::fmt::Debug for QueryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryQueue")
            .field("endpoint", &self.endpoint)
            .field("queue_url", &self.queue_url)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl QueryQueue {
    /// A client that POSTs to `endpoint` (`scheme://host[:port]`), signing for `region`.
    pub fn new(
        endpoint: &str,
        region: String,
        provider: Option<SharedCredentialsProvider>,
        queue_url: String,
    ) -> Result<Self, String> {
        let endpoint: Uri = format!("{}/", endpoint.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
        let host = endpoint
            .authority()
            .ok_or_else(|| format!("endpoint {endpoint} has no host"))?
            .as_str()
            .parse::<HeaderValue>()
            .map_err(|e| format!("endpoint {endpoint}: {e}"))?;
        let provider_ring = Arc::new(rustls::crypto::ring::default_provider());
        // The operating system's roots (as the SDK client uses), and Mozilla's as a fallback
        // for minimal images without a CA bundle.
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(provider_ring)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Self {
            http,
            endpoint,
            host,
            queue_url,
            region,
            provider,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// Points this client at another queue URL.
    pub fn set_queue_url(&mut self, url: String) {
        self.queue_url = url;
    }

    /// `CreateQueue` (idempotent): the URL of the queue named `name`.
    pub async fn create_queue(&self, name: &str) -> Result<String, SourceError> {
        self.queue_url_call("CreateQueue", name).await
    }

    /// `GetQueueUrl`: the URL of the queue named `name`.
    pub async fn get_queue_url(&self, name: &str) -> Result<String, SourceError> {
        self.queue_url_call("GetQueueUrl", name).await
    }

    async fn queue_url_call(
        &self,
        action: &'static str,
        name: &str,
    ) -> Result<String, SourceError> {
        let mut params = vec![("QueueName".into(), name.into())];
        if action == "CreateQueue" && is_fifo(name) {
            params.push(("Attribute.1.Name".into(), "FifoQueue".into()));
            params.push(("Attribute.1.Value".into(), "true".into()));
        }
        let result = self.call(action, params, false).await?;
        result
            .text_of("QueueUrl")
            .map(str::to_owned)
            .ok_or_else(|| unreadable(action, "no QueueUrl in the answer"))
    }

    /// A harmless call that any query-protocol SQS answers: `ListQueues` for this queue's name.
    pub async fn probe(&self) -> Result<(), SourceError> {
        let prefix = super::name::queue_name(&self.queue_url).unwrap_or("sqs2pg");
        self.call(
            "ListQueues",
            vec![("QueueNamePrefix".into(), prefix.to_owned())],
            false,
        )
        .await
        .map(drop)
    }

    /// `GetQueueAttributes` for `names` (`All` for every one), as name/value pairs.
    pub async fn attributes(&self, names: &[&str]) -> Result<Vec<(String, String)>, SourceError> {
        let params = names
            .iter()
            .enumerate()
            .map(|(i, name)| (format!("AttributeName.{}", i + 1), (*name).to_owned()))
            .collect();
        let result = self.call("GetQueueAttributes", params, true).await?;
        Ok(result
            .name_values("Attribute")
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect())
    }

    /// Sends up to 10 bodies in one `SendMessageBatch`; returns the bodies SQS refused with a
    /// retryable error (the caller retries them), or an error for a permanent refusal.
    pub async fn send_batch(&self, messages: &[Outgoing]) -> Result<Vec<Outgoing>, SourceError> {
        debug_assert!(messages.len() <= SQS_BATCH_LIMIT);
        let mut params = Vec::with_capacity(messages.len() * 2);
        for (i, m) in messages.iter().enumerate() {
            let entry = format!("SendMessageBatchRequestEntry.{}", i + 1);
            params.push((format!("{entry}.Id"), i.to_string()));
            params.push((format!("{entry}.MessageBody"), m.body.clone()));
            if let Some(fifo) = &m.fifo {
                params.push((format!("{entry}.MessageGroupId"), fifo.group_id.clone()));
                params.push((
                    format!("{entry}.MessageDeduplicationId"),
                    fifo.deduplication_id.clone(),
                ));
            }
            let mut attributes: Vec<(&str, &str, String)> = m
                .attributes
                .iter()
                .map(|(name, value)| (name.as_str(), "String", value.clone()))
                .collect();
            if let Some(tag) = &m.replay {
                attributes.push((LEDGER_ID_ATTRIBUTE, "String", tag.ledger_id.clone()));
                if let Some(ts) = tag.sent_timestamp {
                    attributes.push((SENT_TIMESTAMP_ATTRIBUTE, "Number", ts.to_string()));
                }
            }
            for (j, (name, data_type, value)) in attributes.into_iter().enumerate() {
                let attribute = format!("{entry}.MessageAttribute.{}", j + 1);
                params.push((format!("{attribute}.Name"), name.to_owned()));
                params.push((format!("{attribute}.Value.DataType"), data_type.to_owned()));
                params.push((format!("{attribute}.Value.StringValue"), value));
            }
        }
        let result = self.call("SendMessageBatch", params, true).await?;
        send_retries(messages, failures(&result))
    }

    /// One signed call; returns the `{Action}Result` element of a successful answer.
    async fn call(
        &self,
        action: &'static str,
        params: Vec<(String, String)>,
        with_queue_url: bool,
    ) -> Result<Element, SourceError> {
        let body = {
            // The serializer is not `Send`: built and finished before any await.
            let mut form = form_urlencoded::Serializer::new(String::with_capacity(256));
            form.append_pair("Action", action);
            form.append_pair("Version", API_VERSION);
            if with_queue_url {
                form.append_pair("QueueUrl", &self.queue_url);
            }
            for (name, value) in &params {
                form.append_pair(name, value);
            }
            form.finish()
        };
        let mut request = http::Request::post(self.endpoint.clone())
            .header(HOST, self.host.clone())
            .header(
                CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(())
            .map_err(|e| SourceError::new(SourceErrorKind::Permanent, action, e.to_string()))?;
        self.sign(action, &mut request, body.as_bytes()).await?;
        // After signing, as in the SDK client (see `sdk::KeepAlive`): LocalStack closes every
        // connection unless asked not to.
        request
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        let request = request.map(|()| Full::new(Bytes::from(body)));

        let exchange = async {
            let response = self.http.request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                // A certificate that fails its check does not fix itself; anything else on the
                // way (refused, reset, DNS) does.
                let kind = if crate::tls::is_tls_failure(e.as_ref()) {
                    SourceErrorKind::Permanent
                } else {
                    SourceErrorKind::Transient
                };
                return Err(SourceError::new(
                    kind,
                    action,
                    format!("{}: {}", self.endpoint, in_words(e.as_ref())),
                ));
            }
            Err(_) => {
                return Err(SourceError::new(
                    SourceErrorKind::Transient,
                    action,
                    format!("no answer from {} within {CALL_TIMEOUT:?}", self.endpoint),
                ))
            }
        };
        let status = status.as_u16();
        let root = Element::parse(&bytes);
        if (200..300).contains(&status) {
            let root = root.map_err(|e| unreadable(action, &format!("answer is not XML: {e}")))?;
            let result_name = format!("{action}Result");
            // Every action we call answers with its result element, even when empty; an answer
            // without one is not from SQS (and must not pass for an empty queue).
            return root
                .child(&result_name)
                .cloned()
                .ok_or_else(|| unreadable(action, &format!("no <{result_name}> in the answer")));
        }
        // <ErrorResponse><Error><Type/><Code/><Message/></Error>...</ErrorResponse>
        let error = root.ok().and_then(|r| {
            r.error_code()
                .map(|(code, text)| (code.to_owned(), text.to_owned()))
        });
        Err(match error {
            Some((code, text)) => {
                if matches!(
                    code.as_str(),
                    "ExpiredToken" | "InvalidClientTokenId" | "RequestExpired"
                ) {
                    // Fetch credentials afresh next time (a rotated or expired session).
                    *self.cached.lock().await = None;
                }
                let mut message = format!("{code} (HTTP {status})");
                if !text.is_empty() {
                    message.push_str(": ");
                    message.push_str(&text);
                }
                SourceError::answered(action, status, Some(code), message)
            }
            None => SourceError::answered(
                action,
                status,
                None,
                format!("HTTP {status} with no SQS error in the answer"),
            ),
        })
    }

    /// Adds the SigV4 headers (`Authorization`, `X-Amz-Date`, and the session token if any).
    async fn sign(
        &self,
        action: &'static str,
        request: &mut http::Request<()>,
        body: &[u8],
    ) -> Result<(), SourceError> {
        let credentials = self.credentials(action).await?;
        let identity = credentials.into();
        let failed = |e: &dyn std::fmt::Display| {
            SourceError::new(SourceErrorKind::Permanent, action, format!("signing: {e}"))
        };
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("sqs")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let instructions = {
            let uri = request.uri().to_string();
            let headers = request
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
            let signable = SignableRequest::new("POST", uri, headers, SignableBody::Bytes(body))
                .map_err(|e| failed(&e))?;
            sign(signable, &params)
                .map_err(|e| failed(&e))?
                .into_parts()
                .0
        };
        instructions.apply_to_request_http1x(request);
        Ok(())
    }

    async fn credentials(&self, action: &'static str) -> Result<Credentials, SourceError> {
        let Some(provider) = &self.provider else {
            return Err(no_credentials(action, None));
        };
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let fresh_until = SystemTime::now() + CREDENTIALS_REFRESH_MARGIN;
            if c.expiry().is_none_or(|expiry| expiry > fresh_until) {
                return Ok(c.clone());
            }
        }
        let credentials = provider.provide_credentials().await.map_err(|e| match e {
            CredentialsError::CredentialsNotLoaded(_) => no_credentials(action, None),
            CredentialsError::InvalidConfiguration(_) => SourceError::new(
                SourceErrorKind::Permanent,
                action,
                format!("AWS credentials: {}", in_words(&e)),
            ),
            _ => SourceError::new(
                SourceErrorKind::Transient,
                action,
                format!("AWS credentials: {}", in_words(&e)),
            ),
        })?;
        *cached = Some(credentials.clone());
        Ok(credentials)
    }

    async fn change_visibility_batch(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        debug_assert!(acks.len() <= SQS_BATCH_LIMIT);
        let mut params = Vec::with_capacity(acks.len() * 3);
        for (i, ack) in acks.iter().enumerate() {
            let entry = format!("ChangeMessageVisibilityBatchRequestEntry.{}", i + 1);
            params.push((format!("{entry}.Id"), i.to_string()));
            params.push((format!("{entry}.ReceiptHandle"), ack.receipt_handle.clone()));
            params.push((
                format!("{entry}.VisibilityTimeout"),
                timeout.as_secs().to_string(),
            ));
        }
        let result = self
            .call("ChangeMessageVisibilityBatch", params, true)
            .await?;
        Ok(failures(&result)
            .filter_map(|f| batch_entry(acks, f.id).cloned())
            .collect())
    }
}

impl MessageSource for QueryQueue {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Received>, SourceError> {
        let mut params = vec![
            (
                "MaxNumberOfMessages".into(),
                request.max_messages.to_string(),
            ),
            ("WaitTimeSeconds".into(), request.wait.as_secs().to_string()),
            ("AttributeName.1".into(), "SentTimestamp".into()),
            ("AttributeName.2".into(), "ApproximateReceiveCount".into()),
            ("AttributeName.3".into(), "MessageGroupId".into()),
            ("AttributeName.4".into(), "MessageDeduplicationId".into()),
            // Ours (for replays) and any a mapping takes (`attr:NAME`).
            ("MessageAttributeName.1".into(), "All".into()),
        ];
        if let Some(v) = request.visibility_timeout {
            params.push(("VisibilityTimeout".into(), v.as_secs().to_string()));
        }
        if is_fifo(&self.queue_url) {
            params.push(("ReceiveRequestAttemptId".into(), request.attempt_id.clone()));
        }
        let result = self.call("ReceiveMessage", params, true).await?;
        accept(messages_of(&result))
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        debug_assert!(acks.len() <= SQS_BATCH_LIMIT);
        let mut params = Vec::with_capacity(acks.len() * 2);
        for (i, ack) in acks.iter().enumerate() {
            let entry = format!("DeleteMessageBatchRequestEntry.{}", i + 1);
            params.push((format!("{entry}.Id"), i.to_string()));
            params.push((format!("{entry}.ReceiptHandle"), ack.receipt_handle.clone()));
        }
        let result = self.call("DeleteMessageBatch", params, true).await?;
        Ok(delete_outcome(
            acks,
            result.children("DeleteMessageBatchResultEntry").count(),
            failures(&result),
        ))
    }

    async fn counts(&self) -> Result<QueueCounts, SourceError> {
        Ok(QueueCounts::from_attributes(
            &self.attributes(&QueueCounts::ATTRIBUTES).await?,
        ))
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        self.change_visibility_batch(acks, timeout).await
    }
}

/// The messages of a `ReceiveMessageResult`.
fn messages_of(result: &Element) -> Vec<WireMessage> {
    result
        .children("Message")
        .map(|m| {
            let attribute = |wanted: &str| {
                m.name_values("Attribute")
                    .find(|(name, _)| *name == wanted)
                    .map(|(_, v)| v.to_owned())
            };
            let mut replay = (None, None);
            let mut attributes = Vec::new();
            for a in m.children("MessageAttribute") {
                let (Some(name), Some(value)) = (
                    a.text_of("Name"),
                    a.child("Value").and_then(|v| v.text_of("StringValue")),
                ) else {
                    continue;
                };
                match name {
                    LEDGER_ID_ATTRIBUTE => replay.0 = Some(value.to_owned()),
                    SENT_TIMESTAMP_ATTRIBUTE => replay.1 = Some(value.to_owned()),
                    _ => attributes.push((name.to_owned(), value.to_owned())),
                }
            }
            WireMessage {
                message_id: m.text_of("MessageId").map(str::to_owned),
                receipt_handle: m.text_of("ReceiptHandle").map(str::to_owned),
                body: m.text_of("Body").unwrap_or_default().to_owned(),
                md5_of_body: m.text_of("MD5OfBody").map(str::to_owned),
                sent_timestamp: attribute("SentTimestamp"),
                receive_count: attribute("ApproximateReceiveCount"),
                group_id: attribute("MessageGroupId"),
                deduplication_id: attribute("MessageDeduplicationId"),
                replay_ledger_id: replay.0,
                replay_sent_timestamp: replay.1,
                attributes,
            }
        })
        .collect()
}

/// The `BatchResultErrorEntry` elements of a batch result.
fn failures(result: &Element) -> impl Iterator<Item = BatchFailure<'_>> {
    result
        .children("BatchResultErrorEntry")
        .map(|e| BatchFailure {
            id: e.text_of("Id").unwrap_or(""),
            code: e.text_of("Code").unwrap_or("unknown"),
            sender_fault: e
                .text_of("SenderFault")
                .is_some_and(|f| f.trim().eq_ignore_ascii_case("true")),
        })
}

/// A 2xx answer we cannot read: the server is not speaking SQS's query protocol.
fn unreadable(action: &'static str, why: &str) -> SourceError {
    SourceError::new(
        SourceErrorKind::Permanent,
        action,
        format!("the server's answer is not an SQS query-protocol answer ({why})"),
    )
}

#[cfg(test)]
mod tests;
