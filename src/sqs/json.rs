//! [`MessageSource`] on the SQS **JSON protocol** (AWS JSON 1.0: a POST whose
//! `X-Amz-Target` names the call, JSON in and out), the one real SQS, LocalStack 1.0 and
//! later, and moto speak by default. It covers exactly the calls the pipeline, `send` and
//! replay make, over the request path it shares with the query client
//! ([`super::transport`], which says why it is ours and not the SDK's).
//!
//! Bodies are written and read with serde. Error answers are read the way the SDK reads an
//! SQS error: the query-compatible code in the `x-amzn-query-error` header when the server
//! sends one (`AWS.SimpleQueueService.NonExistentQueue`), else the `__type` of the JSON
//! body without its namespace (`QueueDoesNotExist`), else an XML error (moto answers
//! authentication errors in XML whatever the protocol).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::name::is_fifo;
use super::transport::Transport;
use super::{
    accept, batch_entry, delete_outcome, send_retries, AckHandle, BatchFailure, DeleteOutcome,
    MessageSource, Outgoing, QueueCounts, ReceiveRequest, Received, SourceError, SourceErrorKind,
    WireMessage, LEDGER_ID_ATTRIBUTE, SENT_TIMESTAMP_ATTRIBUTE, SQS_BATCH_LIMIT,
};

const CONTENT_TYPE: &str = "application/x-amz-json-1.0";
/// Asks for the query protocol's error codes in `x-amzn-query-error` (as the SDK does).
const QUERY_MODE: (HeaderName, &str) = (HeaderName::from_static("x-amzn-query-mode"), "true");

/// The system attributes every receive asks for.
const SYSTEM_ATTRIBUTES: [&str; 4] = [
    "SentTimestamp",
    "ApproximateReceiveCount",
    "MessageGroupId",
    "MessageDeduplicationId",
];

/// An SQS queue reached through the JSON protocol.
pub struct JsonQueue {
    transport: Arc<Transport>,
    queue_url: String,
}

impl std::fmt::Debug for JsonQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonQueue")
            .field("transport", &self.transport)
            .field("queue_url", &self.queue_url)
            .finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct QueueName<'a> {
    queue_name: &'a str,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    attributes: HashMap<&'static str, &'static str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueueUrlAnswer {
    queue_url: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveBody<'a> {
    queue_url: &'a str,
    max_number_of_messages: i32,
    wait_time_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receive_request_attempt_id: Option<&'a str>,
    message_system_attribute_names: [&'static str; 4],
    /// Ours (for replays) and any a mapping takes (`attr:NAME`).
    message_attribute_names: [&'static str; 1],
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ReceiveAnswer {
    #[serde(deserialize_with = "null_as_default")]
    messages: Vec<JsonMessage>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct JsonMessage {
    message_id: Option<String>,
    receipt_handle: Option<String>,
    #[serde(rename = "MD5OfBody")]
    md5_of_body: Option<String>,
    body: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    attributes: HashMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    message_attributes: HashMap<String, AttributeValue>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct AttributeValue {
    #[serde(skip_serializing_if = "Option::is_none")]
    string_value: Option<String>,
    #[serde(deserialize_with = "null_as_default")]
    data_type: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Entries<'a, E> {
    queue_url: &'a str,
    entries: Vec<E>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HandleEntry<'a> {
    id: String,
    receipt_handle: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    visibility_timeout: Option<u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SendEntry<'a> {
    id: String,
    message_body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_deduplication_id: Option<&'a str>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    message_attributes: HashMap<&'a str, AttributeValue>,
}

/// The answer to a batch call: the entries done and the entries refused.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct BatchAnswer {
    #[serde(deserialize_with = "null_as_default")]
    successful: Vec<serde::de::IgnoredAny>,
    #[serde(deserialize_with = "null_as_default")]
    failed: Vec<FailedEntry>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct FailedEntry {
    #[serde(deserialize_with = "null_as_default")]
    id: String,
    #[serde(deserialize_with = "null_as_default")]
    code: String,
    #[serde(deserialize_with = "null_as_default")]
    sender_fault: bool,
}

impl BatchAnswer {
    fn failures(&self) -> impl Iterator<Item = BatchFailure<'_>> {
        self.failed.iter().map(|f| BatchFailure {
            id: &f.id,
            code: &f.code,
            sender_fault: f.sender_fault,
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AttributesBody<'a> {
    queue_url: &'a str,
    attribute_names: &'a [&'a str],
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct AttributesAnswer {
    #[serde(deserialize_with = "null_as_default")]
    attributes: HashMap<String, String>,
}

/// An error answer's JSON body (`__type`, and `message` or `Message`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorBody {
    #[serde(rename = "__type", alias = "code")]
    kind: Option<String>,
    #[serde(alias = "Message")]
    message: Option<String>,
}

impl JsonQueue {
    /// A client for `queue_url` over `transport`.
    pub fn new(transport: Arc<Transport>, queue_url: String) -> Self {
        Self {
            transport,
            queue_url,
        }
    }

    /// Points this client at another queue URL.
    pub fn set_queue_url(&mut self, url: String) {
        self.queue_url = url;
    }

    /// `CreateQueue` (idempotent): the URL of the queue named `name`.
    pub async fn create_queue(&self, name: &str) -> Result<String, SourceError> {
        let mut attributes = HashMap::new();
        if is_fifo(name) {
            attributes.insert("FifoQueue", "true");
        }
        let body = QueueName {
            queue_name: name,
            attributes,
        };
        let answer: QueueUrlAnswer = self.call("CreateQueue", &body).await?;
        answer
            .queue_url
            .ok_or_else(|| unreadable("CreateQueue", "no QueueUrl in the answer"))
    }

    /// `GetQueueUrl`: the URL of the queue named `name`.
    pub async fn get_queue_url(&self, name: &str) -> Result<String, SourceError> {
        let body = QueueName {
            queue_name: name,
            attributes: HashMap::new(),
        };
        let answer: QueueUrlAnswer = self.call("GetQueueUrl", &body).await?;
        answer
            .queue_url
            .ok_or_else(|| unreadable("GetQueueUrl", "no QueueUrl in the answer"))
    }

    /// `GetQueueAttributes` for `names` (`All` for every one), as name/value pairs.
    pub async fn attributes(&self, names: &[&str]) -> Result<Vec<(String, String)>, SourceError> {
        let body = AttributesBody {
            queue_url: &self.queue_url,
            attribute_names: names,
        };
        let answer: AttributesAnswer = self.call("GetQueueAttributes", &body).await?;
        Ok(answer.attributes.into_iter().collect())
    }

    /// Sends up to 10 bodies in one `SendMessageBatch`; returns the bodies SQS refused with a
    /// retryable error (the caller retries them), or an error for a permanent refusal.
    pub async fn send_batch(&self, messages: &[Outgoing]) -> Result<Vec<Outgoing>, SourceError> {
        debug_assert!(messages.len() <= SQS_BATCH_LIMIT);
        let entries = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut attributes: HashMap<&str, AttributeValue> = m
                    .attributes
                    .iter()
                    .map(|(name, value)| (name.as_str(), string_attribute(value, "String")))
                    .collect();
                if let Some(tag) = &m.replay {
                    attributes.insert(
                        LEDGER_ID_ATTRIBUTE,
                        string_attribute(&tag.ledger_id, "String"),
                    );
                    if let Some(ts) = tag.sent_timestamp {
                        attributes.insert(
                            SENT_TIMESTAMP_ATTRIBUTE,
                            string_attribute(&ts.to_string(), "Number"),
                        );
                    }
                }
                SendEntry {
                    id: i.to_string(),
                    message_body: &m.body,
                    message_group_id: m.fifo.as_ref().map(|f| f.group_id.as_str()),
                    message_deduplication_id: m.fifo.as_ref().map(|f| f.deduplication_id.as_str()),
                    message_attributes: attributes,
                }
            })
            .collect();
        let body = Entries {
            queue_url: &self.queue_url,
            entries,
        };
        let answer: BatchAnswer = self.call("SendMessageBatch", &body).await?;
        send_retries(messages, answer.failures())
    }

    /// One signed call of `AmazonSQS.{action}` with `body`; the answer read as `T`.
    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        action: &'static str,
        body: &B,
    ) -> Result<T, SourceError> {
        let body = serde_json::to_vec(body).map_err(|e| {
            SourceError::new(SourceErrorKind::Permanent, action, format!("request: {e}"))
        })?;
        let target = target(action);
        let answer = self
            .transport
            .post(
                action,
                CONTENT_TYPE,
                &[
                    (HeaderName::from_static("x-amz-target"), target),
                    QUERY_MODE,
                ],
                body,
            )
            .await?;
        let status = answer.status;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&answer.body).map_err(|e| {
                // Said by its place and kind only: serde's own text can quote the answer,
                // which can hold message bodies.
                let why = format!(
                    "{:?} at line {} column {}",
                    e.classify(),
                    e.line(),
                    e.column()
                );
                if e.is_eof() {
                    // The answer stops short (a body that ends when its connection closes,
                    // cut on the way): the call may have been served, and is safe to repeat.
                    SourceError::new(
                        SourceErrorKind::Transient,
                        action,
                        format!("the answer stops short ({why})"),
                    )
                } else {
                    unreadable(action, &why)
                }
            });
        }
        let (code, text, code_from_xml) = error_of(answer.query_error.as_ref(), &answer.body);
        if let Some(code) = &code {
            self.transport.note_error_code(code).await;
        }
        let mut message = format!(
            "{} (HTTP {status})",
            code.as_deref().unwrap_or("no error code")
        );
        if !text.is_empty() {
            message.push_str(": ");
            message.push_str(&text);
        }
        let hint = query_only_hint(status, code.as_deref(), code_from_xml);
        let mut error = SourceError::answered(action, status, code, message);
        error.query_only_hint = hint;
        Err(error)
    }

    async fn handles_call(
        &self,
        action: &'static str,
        acks: &[AckHandle],
        timeout: Option<Duration>,
    ) -> Result<BatchAnswer, SourceError> {
        debug_assert!(acks.len() <= SQS_BATCH_LIMIT);
        let body = Entries {
            queue_url: &self.queue_url,
            entries: acks
                .iter()
                .enumerate()
                .map(|(i, ack)| HandleEntry {
                    id: i.to_string(),
                    receipt_handle: &ack.receipt_handle,
                    visibility_timeout: timeout.map(|t| t.as_secs()),
                })
                .collect(),
        };
        self.call(action, &body).await
    }
}

impl MessageSource for JsonQueue {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Received>, SourceError> {
        let body = ReceiveBody {
            queue_url: &self.queue_url,
            max_number_of_messages: request.max_messages,
            wait_time_seconds: request.wait.as_secs(),
            visibility_timeout: request.visibility_timeout.map(|v| v.as_secs()),
            receive_request_attempt_id: is_fifo(&self.queue_url)
                .then_some(request.attempt_id.as_str()),
            message_system_attribute_names: SYSTEM_ATTRIBUTES,
            message_attribute_names: ["All"],
        };
        let answer: ReceiveAnswer = self.call("ReceiveMessage", &body).await?;
        accept(answer.messages.into_iter().map(wire_message).collect())
    }

    async fn counts(&self) -> Result<QueueCounts, SourceError> {
        Ok(QueueCounts::from_attributes(
            &self.attributes(&QueueCounts::ATTRIBUTES).await?,
        ))
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        let answer = self.handles_call("DeleteMessageBatch", acks, None).await?;
        Ok(delete_outcome(
            acks,
            answer.successful.len(),
            answer.failures(),
        ))
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        let answer = self
            .handles_call("ChangeMessageVisibilityBatch", acks, Some(timeout))
            .await?;
        Ok(answer
            .failures()
            .filter_map(|f| batch_entry(acks, f.id).cloned())
            .collect())
    }
}

/// A JSON `null` read as the type's default (an empty list or map), as the SDK reads one.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `AmazonSQS.{action}` for the calls we make.
fn target(action: &'static str) -> &'static str {
    match action {
        "ReceiveMessage" => "AmazonSQS.ReceiveMessage",
        "DeleteMessageBatch" => "AmazonSQS.DeleteMessageBatch",
        "ChangeMessageVisibilityBatch" => "AmazonSQS.ChangeMessageVisibilityBatch",
        "GetQueueAttributes" => "AmazonSQS.GetQueueAttributes",
        "SendMessageBatch" => "AmazonSQS.SendMessageBatch",
        "CreateQueue" => "AmazonSQS.CreateQueue",
        "GetQueueUrl" => "AmazonSQS.GetQueueUrl",
        other => unreachable!("no JSON target for {other}"),
    }
}

/// One received message as [`accept`] checks it.
fn wire_message(m: JsonMessage) -> WireMessage {
    let JsonMessage {
        message_id,
        receipt_handle,
        md5_of_body,
        body,
        mut attributes,
        mut message_attributes,
    } = m;
    let mut text = |name: &str| message_attributes.remove(name).and_then(|v| v.string_value);
    let (replay_ledger_id, replay_sent_timestamp) =
        (text(LEDGER_ID_ATTRIBUTE), text(SENT_TIMESTAMP_ATTRIBUTE));
    WireMessage {
        replay_ledger_id,
        replay_sent_timestamp,
        group_id: attributes.remove("MessageGroupId"),
        deduplication_id: attributes.remove("MessageDeduplicationId"),
        sent_timestamp: attributes.remove("SentTimestamp"),
        receive_count: attributes.remove("ApproximateReceiveCount"),
        attributes: message_attributes
            .into_iter()
            .filter_map(|(name, v)| Some((name, v.string_value?)))
            .collect(),
        message_id,
        receipt_handle,
        body: body.unwrap_or_default(),
        md5_of_body,
    }
}

fn string_attribute(value: &str, data_type: &str) -> AttributeValue {
    AttributeValue {
        string_value: Some(value.to_owned()),
        data_type: data_type.to_owned(),
    }
}

/// An error answer's code, its text, and whether the code came from an XML body.
fn error_of(
    query_error: Option<&http::HeaderValue>,
    body: &[u8],
) -> (Option<String>, String, bool) {
    // `AWS.SimpleQueueService.NonExistentQueue;Sender`
    let header_code = query_error
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .filter(|code| !code.is_empty())
        .map(str::to_owned);
    if body.starts_with(b"<") {
        let xml = super::xml::Element::parse(body).ok();
        let xml_error = xml.as_ref().and_then(|x| x.error_code());
        return match (header_code, xml_error) {
            (Some(code), xml_error) => (
                Some(code),
                xml_error.map(|(_, t)| t.to_owned()).unwrap_or_default(),
                false,
            ),
            (None, Some((code, text))) => (Some(code.to_owned()), text.to_owned(), true),
            (None, None) => (None, String::new(), false),
        };
    }
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    // `com.amazonaws.sqs#QueueDoesNotExist`, sometimes with `:http://...` after it: what is
    // after a colon goes first, then the namespace (as the SDK reads it).
    let body_code = parsed.kind.as_deref().map(|kind| {
        let name = kind.split(':').next().unwrap_or(kind);
        name.rsplit('#').next().unwrap_or(name).to_owned()
    });
    (
        header_code.or(body_code.filter(|c| !c.is_empty())),
        parsed.message.unwrap_or_default(),
        false,
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

/// A 2xx answer we cannot read: the server is not speaking SQS's JSON protocol.
fn unreadable(action: &'static str, why: &str) -> SourceError {
    SourceError::new(
        SourceErrorKind::Permanent,
        action,
        format!("the server's answer is not an SQS JSON-protocol answer ({why})"),
    )
}

#[cfg(test)]
mod tests;
