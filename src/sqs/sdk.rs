//! [`MessageSource`] on the official AWS SDK (JSON protocol), plus `SendMessageBatch` for
//! `sqs2pg send` and queue creation for the quickstart and tests.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use crate::config::ConfigError;

use super::{
    AckHandle, DeleteOutcome, MessageSource, Outgoing, Received, SourceError, SourceErrorKind,
    LEDGER_ID_ATTRIBUTE, SENT_TIMESTAMP_ATTRIBUTE, SQS_BATCH_LIMIT,
};

/// Where and how to reach the queue.
#[derive(Debug, Clone)]
pub struct SqsSettings {
    pub queue_url: String,
    /// Endpoint override (`AWS_ENDPOINT_URL`); when unset and the queue URL is not an AWS one,
    /// the queue URL's origin is used, so `http://localhost:4566/000000000000/q` just works.
    pub endpoint_url: Option<String>,
}

/// An SQS queue reached through the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkQueue {
    client: Client,
    queue_url: String,
}

impl SdkQueue {
    /// Builds the SDK client: credentials, region and endpoint from the standard AWS chain, TLS
    /// through rustls with ring (one crypto provider for SQS and PostgreSQL).
    pub async fn connect(settings: &SqsSettings) -> Result<Self, ConfigError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        // Bounded calls: a connect that hangs, or a receive that never answers, fails and is
        // retried instead of stalling a receiver; the attempt limit is well above the longest
        // long poll (20 s).
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(60))
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts);
        if let Some(endpoint) = settings
            .endpoint_url
            .clone()
            .or_else(|| local_origin(&settings.queue_url))
        {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        let mut builder = aws_sdk_sqs::config::Builder::from(&config);
        if config.region().is_none() {
            match region_of(&settings.queue_url) {
                Some(region) => {
                    builder = builder.region(aws_sdk_sqs::config::Region::new(region));
                }
                None => {
                    return Err(ConfigError(
                        "no AWS region: set AWS_REGION (e.g. AWS_REGION=us-east-1), or use a queue URL of the form https://sqs.REGION.amazonaws.com/ACCOUNT/NAME".into(),
                    ))
                }
            }
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            queue_url: settings.queue_url.clone(),
        })
    }

    /// The queue's URL.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Creates the queue named by the last path segment of the URL if it does not exist
    /// (`CreateQueue` is idempotent) and points this client at the URL SQS returns.
    pub async fn create_queue(&mut self) -> Result<(), SourceError> {
        let name = self
            .queue_url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| SourceError {
                kind: SourceErrorKind::Permanent,
                operation: "CreateQueue",
                message: "the queue URL does not end in a queue name".into(),
            })?
            .to_owned();
        let out = self
            .client
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| classify("CreateQueue", e))?;
        if let Some(url) = out.queue_url {
            self.queue_url = url;
        }
        Ok(())
    }

    /// The queue's own `VisibilityTimeout`.
    pub async fn visibility_timeout(&self) -> Result<Duration, SourceError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| classify("GetQueueAttributes", e))?;
        let secs = out
            .attributes
            .unwrap_or_default()
            .get(&QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        Ok(Duration::from_secs(secs))
    }

    /// `ApproximateNumberOfMessages` + `ApproximateNumberOfMessagesNotVisible`.
    pub async fn approximate_depth(&self) -> Result<(u64, u64), SourceError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| classify("GetQueueAttributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |name: &QueueAttributeName| -> u64 {
            attrs.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        Ok((
            get(&QueueAttributeName::ApproximateNumberOfMessages),
            get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }

    /// Sends up to 10 bodies in one `SendMessageBatch`; returns the bodies SQS refused with a
    /// retryable error (the caller retries them), or an error for a permanent refusal.
    pub async fn send_batch(&self, messages: &[Outgoing]) -> Result<Vec<Outgoing>, SourceError> {
        debug_assert!(messages.len() <= SQS_BATCH_LIMIT);
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&m.body);
                if let Some(tag) = &m.replay {
                    entry = entry.message_attributes(
                        LEDGER_ID_ATTRIBUTE,
                        string_attribute(&tag.ledger_id, "String"),
                    );
                    if let Some(ts) = tag.sent_timestamp {
                        entry = entry.message_attributes(
                            SENT_TIMESTAMP_ATTRIBUTE,
                            string_attribute(&ts.to_string(), "Number"),
                        );
                    }
                }
                entry.build().expect("id and body are set")
            })
            .collect();
        let out = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify("SendMessageBatch", e))?;
        let mut retry = Vec::new();
        for failure in out.failed {
            if failure.sender_fault {
                return Err(SourceError {
                    kind: SourceErrorKind::Permanent,
                    operation: "SendMessageBatch",
                    message: format!("entry refused: {}", failure.code),
                });
            }
            if let Some(m) = entry(messages, &failure.id) {
                retry.push(m.clone());
            }
        }
        Ok(retry)
    }
}

impl MessageSource for SdkQueue {
    async fn receive(
        &self,
        max_messages: i32,
        wait: Duration,
        visibility_timeout: Option<Duration>,
    ) -> Result<Vec<Received>, SourceError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max_messages)
            .wait_time_seconds(wait.as_secs() as i32)
            .set_visibility_timeout(visibility_timeout.map(|v| v.as_secs() as i32))
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_attribute_names(LEDGER_ID_ATTRIBUTE)
            .message_attribute_names(SENT_TIMESTAMP_ATTRIBUTE)
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        let received_at = SystemTime::now();
        let mut messages = Vec::with_capacity(out.messages.as_ref().map_or(0, Vec::len));
        for m in out.messages.unwrap_or_default() {
            let (Some(message_id), Some(receipt_handle)) = (m.message_id, m.receipt_handle) else {
                // Every real SQS message has both; without them we could neither ledger nor
                // delete it, so leave it to come back (and be seen in the server's own metrics).
                tracing::warn!("received a message without id or receipt handle; skipped");
                continue;
            };
            let attrs = m.attributes.unwrap_or_default();
            // Asked for on every receive. Without it create_date is unknown; that is the
            // server's fault, not the message's, so stop rather than quarantine valid logins.
            let Some(sent_timestamp) =
                attribute(&attrs, &MessageSystemAttributeName::SentTimestamp)
            else {
                return Err(SourceError {
                    kind: SourceErrorKind::Permanent,
                    operation: "ReceiveMessage",
                    message: format!(
                        "message {message_id} came without a numeric SentTimestamp attribute; this SQS server does not support it"
                    ),
                });
            };
            // A replay is ledgered under its replay id and dated by its original send time.
            let custom = m.message_attributes.unwrap_or_default();
            let text = |name: &str| custom.get(name).and_then(|v| v.string_value.clone());
            let ledger_id = text(LEDGER_ID_ATTRIBUTE);
            let sent_timestamp = match (&ledger_id, text(SENT_TIMESTAMP_ATTRIBUTE)) {
                (Some(_), Some(original)) => original.parse().unwrap_or(sent_timestamp),
                _ => sent_timestamp,
            };
            messages.push(Received {
                ledger_id: ledger_id.unwrap_or_else(|| message_id.clone()),
                ack: AckHandle {
                    message_id,
                    receipt_handle,
                },
                body: m.body.unwrap_or_default(),
                sent_timestamp,
                receive_count: attribute(
                    &attrs,
                    &MessageSystemAttributeName::ApproximateReceiveCount,
                )
                .unwrap_or(1),
                received_at,
            });
        }
        Ok(messages)
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        self.change_visibility_batch(acks, timeout).await
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        debug_assert!(acks.len() <= SQS_BATCH_LIMIT);
        let entries = acks
            .iter()
            .enumerate()
            .map(|(i, ack)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&ack.receipt_handle)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify("DeleteMessageBatch", e))?;
        let mut outcome = DeleteOutcome {
            deleted: out.successful.len(),
            ..DeleteOutcome::default()
        };
        for failure in out.failed {
            let ack = entry(acks, &failure.id);
            match ack {
                Some(ack) if !failure.sender_fault => outcome.retryable.push(ack.clone()),
                _ => {
                    tracing::warn!(code = %failure.code, "delete refused by sqs; the message will come back and be deleted as a duplicate");
                    outcome.failed += 1;
                }
            }
        }
        Ok(outcome)
    }
}

impl SdkQueue {
    async fn change_visibility_batch(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        debug_assert!(acks.len() <= SQS_BATCH_LIMIT);
        let entries = acks
            .iter()
            .enumerate()
            .map(|(i, ack)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&ack.receipt_handle)
                    .visibility_timeout(timeout.as_secs() as i32)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| classify("ChangeMessageVisibilityBatch", e))?;
        Ok(out
            .failed
            .iter()
            .filter_map(|f| entry(acks, &f.id).cloned())
            .collect())
    }
}

/// The request item a batch result entry names: entries are sent with their index as id.
fn entry<'a, T>(items: &'a [T], id: &str) -> Option<&'a T> {
    id.parse::<usize>().ok().and_then(|i| items.get(i))
}

fn string_attribute(value: &str, data_type: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .expect("data type is set")
}

fn attribute<T: std::str::FromStr>(
    attrs: &HashMap<MessageSystemAttributeName, String>,
    name: &MessageSystemAttributeName,
) -> Option<T> {
    attrs.get(name).and_then(|v| v.parse().ok())
}

/// Turns an SDK error into our error with a retry decision. Service errors are classified by
/// HTTP status and SQS error code; transport errors are transient.
fn classify<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (kind, message) = match &err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => (
            SourceErrorKind::Transient,
            aws_sdk_sqs::error::DisplayErrorContext(&err).to_string(),
        ),
        // Connection refused/reset and timeouts come back; "other" dispatch failures are ours
        // (no credentials could be loaded, a bad endpoint) and do not.
        SdkError::DispatchFailure(_) if lacks_credentials(&err) => (
            SourceErrorKind::Permanent,
            "no AWS credentials could be loaded: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
             (any values for LocalStack or moto), or AWS_PROFILE, or run with an IAM role"
                .to_owned(),
        ),
        SdkError::DispatchFailure(failure) => (
            if failure.is_io() || failure.is_timeout() {
                SourceErrorKind::Transient
            } else {
                SourceErrorKind::Permanent
            },
            aws_sdk_sqs::error::DisplayErrorContext(&err).to_string(),
        ),
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown");
            let status = service.raw().status().as_u16();
            let transient = status >= 500
                || status == 429
                || matches!(
                    code,
                    "ThrottlingException"
                        | "RequestThrottled"
                        | "ServiceUnavailable"
                        | "InternalError"
                        | "InternalFailure"
                        | "KmsThrottled"
                );
            let text = service.err().message().unwrap_or("");
            (
                if transient {
                    SourceErrorKind::Transient
                } else {
                    SourceErrorKind::Permanent
                },
                format!("{code} (HTTP {status}): {text}"),
            )
        }
        _ => (
            SourceErrorKind::Permanent,
            aws_sdk_sqs::error::DisplayErrorContext(&err).to_string(),
        ),
    };
    SourceError {
        kind,
        operation,
        message,
    }
}

/// True when the credentials chain found nothing (somewhere in the error's cause chain).
fn lacks_credentials(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(CredentialsError::CredentialsNotLoaded(_)) =
            e.downcast_ref::<CredentialsError>()
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `scheme://host[:port]` of a queue URL that is not on amazonaws.com (LocalStack, moto, ...).
fn local_origin(queue_url: &str) -> Option<String> {
    let (scheme, rest) = queue_url.split_once("://")?;
    let host_port = rest.split('/').next()?;
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    (!host.ends_with(".amazonaws.com") && !host.is_empty())
        .then(|| format!("{scheme}://{host_port}"))
}

/// The region in `https://sqs.REGION.amazonaws.com/...` or `...sqs.REGION.localhost.localstack.cloud`.
fn region_of(queue_url: &str) -> Option<String> {
    let host = queue_url.split_once("://")?.1.split(['/', ':']).next()?;
    let mut labels = host.split('.');
    (labels.next()? == "sqs")
        .then(|| labels.next())
        .flatten()
        .filter(|r| r.contains('-'))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_and_region_from_queue_url() {
        assert_eq!(
            local_origin("http://localhost:4566/000000000000/login-queue").as_deref(),
            Some("http://localhost:4566")
        );
        assert_eq!(
            local_origin("https://sqs.eu-west-1.amazonaws.com/1/q"),
            None
        );
        assert_eq!(
            region_of("https://sqs.eu-west-1.amazonaws.com/1/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region_of("http://sqs.us-east-1.localhost.localstack.cloud:4566/0/q").as_deref(),
            Some("us-east-1")
        );
        assert_eq!(region_of("http://localhost:4566/0/q"), None);
    }
}
