//! [`MessageSource`] on the official AWS SDK (JSON protocol), plus `SendMessageBatch` for
//! `sqs2pg send`, queue creation for the quickstart and tests, and `GetQueueUrl`. The SDK's
//! configuration (credentials, region, endpoint, HTTP client) is built in [`super::queue`].

use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sqs::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;
use aws_smithy_types::retry::ErrorKind;

use super::name::is_fifo;
use super::{
    accept, batch_entry, delete_outcome, in_words, no_credentials, send_retries, AckHandle,
    BatchFailure, DeleteOutcome, MessageSource, Outgoing, QueueCounts, ReceiveRequest, Received,
    SourceError, SourceErrorKind, WireMessage, LEDGER_ID_ATTRIBUTE, SENT_TIMESTAMP_ATTRIBUTE,
    SQS_BATCH_LIMIT,
};

/// Asks every SQS response to keep the connection open (`Connection: keep-alive`). HTTP/1.1
/// keeps connections open by default, and real SQS does; LocalStack's gateway closes each one
/// after its response unless the request asks for keep-alive in so many words, which makes every
/// call open a new TCP connection (BENCHMARKS.md, run 2). Added after signing: it is a
/// hop-by-hop header, not part of the request SigV4 signs.
#[derive(Debug)]
pub struct KeepAlive;

impl Intercept for KeepAlive {
    fn name(&self) -> &'static str {
        "KeepAlive"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        context
            .request_mut()
            .headers_mut()
            .insert("connection", "keep-alive");
        Ok(())
    }
}

/// An SQS client on `config` that asks for connections to be kept open ([`KeepAlive`]).
pub fn client(config: &aws_config::SdkConfig) -> Client {
    Client::from_conf(
        aws_sdk_sqs::config::Builder::from(config)
            .interceptor(KeepAlive)
            .build(),
    )
}

/// An SQS queue reached through the AWS SDK (JSON protocol).
#[derive(Clone, Debug)]
pub struct SdkQueue {
    client: Client,
    queue_url: String,
}

impl SdkQueue {
    /// A client on the shared AWS configuration (see [`super::queue`]).
    pub fn new(config: &aws_config::SdkConfig, queue_url: String) -> Self {
        Self {
            client: client(config),
            queue_url,
        }
    }

    /// Points this client at another queue URL.
    pub fn set_queue_url(&mut self, url: String) {
        self.queue_url = url;
    }

    /// `CreateQueue` (idempotent): the URL of the queue named `name`.
    pub async fn create_queue(&self, name: &str) -> Result<String, SourceError> {
        let mut request = self.client.create_queue().queue_name(name);
        if is_fifo(name) {
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let out = request
            .send()
            .await
            .map_err(|e| classify("CreateQueue", e))?;
        out.queue_url
            .ok_or_else(|| missing("CreateQueue", "QueueUrl"))
    }

    /// `GetQueueUrl`: the URL of the queue named `name`.
    pub async fn get_queue_url(&self, name: &str) -> Result<String, SourceError> {
        let out = self
            .client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| classify("GetQueueUrl", e))?;
        out.queue_url
            .ok_or_else(|| missing("GetQueueUrl", "QueueUrl"))
    }

    /// `GetQueueAttributes` for `names` (`All` for every one), as name/value pairs.
    pub async fn attributes(&self, names: &[&str]) -> Result<Vec<(String, String)>, SourceError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .set_attribute_names(Some(
                names.iter().map(|n| QueueAttributeName::from(*n)).collect(),
            ))
            .send()
            .await
            .map_err(|e| classify("GetQueueAttributes", e))?;
        Ok(out
            .attributes
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), v))
            .collect())
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
                if let Some(fifo) = &m.fifo {
                    entry = entry
                        .message_group_id(&fifo.group_id)
                        .message_deduplication_id(&fifo.deduplication_id);
                }
                for (name, value) in &m.attributes {
                    entry = entry.message_attributes(name, string_attribute(value, "String"));
                }
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
        send_retries(messages, out.failed.iter().map(failure))
    }
}

impl MessageSource for SdkQueue {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Received>, SourceError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(request.max_messages)
            .wait_time_seconds(request.wait.as_secs() as i32)
            .set_visibility_timeout(request.visibility_timeout.map(|v| v.as_secs() as i32))
            .set_receive_request_attempt_id(
                is_fifo(&self.queue_url).then(|| request.attempt_id.clone()),
            )
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::MessageDeduplicationId)
            // Ours (for replays) and any a mapping takes (`attr:NAME`).
            .message_attribute_names("All")
            .customize()
            .config_override(one_attempt())
            .send()
            .await
            .map_err(|e| classify("ReceiveMessage", e))?;
        let wire = out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let mut attrs = m.attributes.unwrap_or_default();
                let mut custom = m.message_attributes.unwrap_or_default();
                let mut text = |name: &str| custom.remove(name).and_then(|v| v.string_value);
                let (replay_ledger_id, replay_sent_timestamp) =
                    (text(LEDGER_ID_ATTRIBUTE), text(SENT_TIMESTAMP_ATTRIBUTE));
                WireMessage {
                    replay_ledger_id,
                    replay_sent_timestamp,
                    group_id: attrs.remove(&MessageSystemAttributeName::MessageGroupId),
                    deduplication_id: attrs
                        .remove(&MessageSystemAttributeName::MessageDeduplicationId),
                    attributes: custom
                        .into_iter()
                        .filter_map(|(name, v)| Some((name, v.string_value?)))
                        .collect(),
                    message_id: m.message_id,
                    receipt_handle: m.receipt_handle,
                    body: m.body.unwrap_or_default(),
                    md5_of_body: m.md5_of_body,
                    sent_timestamp: attrs.remove(&MessageSystemAttributeName::SentTimestamp),
                    receive_count: attrs
                        .remove(&MessageSystemAttributeName::ApproximateReceiveCount),
                }
            })
            .collect();
        accept(wire)
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
            .customize()
            .config_override(one_attempt())
            .send()
            .await
            .map_err(|e| classify("DeleteMessageBatch", e))?;
        Ok(delete_outcome(
            acks,
            out.successful.len(),
            out.failed.iter().map(failure),
        ))
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
            .customize()
            .config_override(one_attempt())
            .send()
            .await
            .map_err(|e| classify("ChangeMessageVisibilityBatch", e))?;
        Ok(out
            .failed
            .iter()
            .filter_map(|f| batch_entry(acks, &f.id).cloned())
            .collect())
    }
}

/// The pipeline's own calls (receive, delete, change visibility) are sent once by the SDK:
/// the pipeline retries them under its own policy (`error::fate`, with backoff), so there is
/// one retry policy, not two stacked, and every request sent is one it counts (the SQS bill,
/// `pipeline::metered`). The query client never retries by itself either.
fn one_attempt() -> aws_sdk_sqs::config::Builder {
    aws_sdk_sqs::config::Builder::default()
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
}

/// The SDK's batch failure entry, as both clients read one.
fn failure(entry: &aws_sdk_sqs::types::BatchResultErrorEntry) -> BatchFailure<'_> {
    BatchFailure {
        id: &entry.id,
        code: &entry.code,
        sender_fault: entry.sender_fault,
    }
}

fn string_attribute(value: &str, data_type: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// Turns an SDK error into our error with a retry decision. Service errors are classified by
/// HTTP status and SQS error code; transport errors are transient.
fn classify<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    // The SDK's own detail is for RUST_LOG=debug only, and even there not its rendering of an
    // answer it could not read (the raw answer, which can hold message bodies); the error says
    // what happened in words.
    if matches!(err, SdkError::ResponseError(_)) {
        tracing::debug!(operation, causes = %causes(&err), "sqs call failed: unreadable answer");
    } else {
        tracing::debug!(operation, error = ?err, "sqs call failed");
    }
    let context = || in_words(&err);
    match &err {
        SdkError::TimeoutError(_) => {
            SourceError::new(SourceErrorKind::Transient, operation, context())
        }
        // An answer we could not read as a JSON SQS answer. Described by its status and the
        // parse error only: the SDK's own rendering prints the raw answer, which can hold
        // message bodies (personal data).
        SdkError::ResponseError(response) => {
            let status = response.raw().status().as_u16();
            let mut error = SourceError::answered(
                operation,
                status,
                None,
                format!("unreadable answer (HTTP {status}): {}", causes(&err)),
            );
            if cut_short(&err) {
                // The answer was lost on the way (a reset or a timeout while its body was
                // read: a load balancer, a NAT, a restarting server). The request may have
                // been served; receive, delete and visibility calls are safe to repeat.
                error.kind = SourceErrorKind::Transient;
            } else {
                error.query_only_hint = query_only_hint(status, None, false);
            }
            error
        }
        // Connection refused/reset and timeouts come back; "other" dispatch failures are ours
        // (no credentials could be loaded, a bad endpoint) and do not.
        SdkError::DispatchFailure(_) if credentials_error(&err).is_some() => {
            let chain_error = credentials_error(&err).expect("checked above");
            // The chain's own text lists every provider it tried, one per line; the first line
            // says what matters.
            let text = in_words(chain_error);
            let why = text
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end_matches("Attempted:")
                .trim_end()
                .to_owned();
            match chain_error.downcast_ref::<CredentialsError>() {
                // A provider that did not answer in time (instance metadata, STS) may next time.
                Some(CredentialsError::ProviderTimedOut(_)) => SourceError::new(
                    SourceErrorKind::Transient,
                    operation,
                    format!("AWS credentials: {why}"),
                ),
                _ => no_credentials(operation, Some(why)),
            }
        }
        // A connector error the client itself calls transient (a connection closed mid-request,
        // as by a restarting server) comes back too: the SDK's retries, which used to hide it,
        // are off for the pipeline's calls (see `one_attempt`).
        SdkError::DispatchFailure(failure) => SourceError::new(
            if failure.is_io()
                || failure.is_timeout()
                || failure.as_other().is_some_and(|kind| {
                    matches!(
                        kind,
                        ErrorKind::TransientError
                            | ErrorKind::ServerError
                            | ErrorKind::ThrottlingError
                    )
                })
            {
                SourceErrorKind::Transient
            } else {
                SourceErrorKind::Permanent
            },
            operation,
            context(),
        ),
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            // Some servers answer a JSON request's auth failure in XML (moto does); read it.
            let xml = service
                .raw()
                .body()
                .bytes()
                .filter(|b| b.starts_with(b"<"))
                .and_then(|b| super::xml::Element::parse(b).ok());
            let xml_error = xml.as_ref().and_then(|x| x.error_code());
            let code = service
                .err()
                .code()
                .or(xml_error.map(|(code, _)| code))
                .map(str::to_owned);
            let text = service
                .err()
                .message()
                .or(xml_error.map(|(_, text)| text))
                .unwrap_or("");
            let hint = query_only_hint(
                status,
                code.as_deref(),
                service.err().code().is_none() && xml_error.is_some(),
            );
            let mut message = format!(
                "{} (HTTP {status})",
                code.as_deref().unwrap_or("no error code")
            );
            if !text.is_empty() {
                message.push_str(": ");
                message.push_str(text);
            }
            let mut error = SourceError::answered(operation, status, code, message);
            error.query_only_hint = hint;
            error
        }
        _ => SourceError::new(SourceErrorKind::Permanent, operation, context()),
    }
}

fn missing(operation: &'static str, what: &str) -> SourceError {
    SourceError::new(
        SourceErrorKind::Permanent,
        operation,
        format!("the answer has no {what}"),
    )
}

/// Whether an error answer to a JSON request looks like a query-protocol-only server's:
/// LocalStack 0.14 (the exercise's image) answers 5xx with `{}`, no error code; other old
/// servers answer with an XML error (`InvalidAction`, `MissingAction`, ...). An XML
/// authentication error is not a sign: moto answers those in XML whatever the protocol.
fn query_only_hint(status: u16, code: Option<&str>, code_from_xml: bool) -> bool {
    const AUTH_CODES: [&str; 6] = [
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
        "AccessDenied",
        "AccessDeniedException",
        "ExpiredToken",
        "IncompleteSignature",
    ];
    match code {
        None => (500..600).contains(&status),
        Some(code) => code_from_xml && !AUTH_CODES.contains(&code),
    }
}

/// The causes of an error, joined, without its own (possibly verbose) rendering.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cause = err.source();
    while let Some(e) = cause {
        parts.push(e.to_string());
        cause = e.source();
    }
    if parts.is_empty() {
        "no detail".to_owned()
    } else {
        parts.join(": ")
    }
}

/// Whether reading an answer failed on the way rather than in its content: an I/O error or
/// an HTTP-level error (a reset, a closed connection, a body shorter than announced) anywhere
/// in the cause chain. A complete answer that is not SQS's is something else, and not
/// transient.
fn cut_short(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<std::io::Error>() || e.is::<hyper::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The credentials chain's error (it found nothing, or a provider failed), when one is in the
/// error's cause chain.
fn credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.downcast_ref::<CredentialsError>().is_some() {
            return Some(e);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
