//! [`MessageSource`] on the SQS **query protocol**: form-encoded POSTs with `Action=...`, XML
//! answers. Old LocalStack (0.14, the exercise's own image) speaks nothing else, and no crate
//! offers the query protocol for SQS (the official Rust SDK speaks only JSON), so this small
//! client is our own. It covers exactly the calls the pipeline, `send` and replay make.
//!
//! Requests go over the request path both of our clients share ([`super::transport`]);
//! answers are read with quick-xml (`super::xml`), including error answers and per-entry
//! batch failures.
//!
//! One job, one file: the calls the query protocol makes, each a few lines over the shared
//! request path.

use std::sync::Arc;
use std::time::Duration;

use super::name::is_fifo;
use super::transport::Transport;
use super::xml::Element;
use super::{
    accept, batch_entry, delete_outcome, send_retries, AckHandle, BatchFailure, DeleteOutcome,
    MessageSource, Outgoing, QueueCounts, ReceiveRequest, Received, SourceError, SourceErrorKind,
    WireMessage, LEDGER_ID_ATTRIBUTE, SENT_TIMESTAMP_ATTRIBUTE, SQS_BATCH_LIMIT,
};

/// The SQS API version every query request names.
const API_VERSION: &str = "2012-11-05";
/// An SQS queue reached through the query protocol.
pub struct QueryQueue {
    transport: Arc<Transport>,
    queue_url: String,
}

impl std::fmt::Debug for QueryQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryQueue")
            .field("transport", &self.transport)
            .field("queue_url", &self.queue_url)
            .finish()
    }
}

impl QueryQueue {
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
        let answer = self
            .transport
            .post(
                action,
                "application/x-www-form-urlencoded; charset=utf-8",
                &[],
                body.into_bytes(),
            )
            .await?;
        let (status, bytes) = (answer.status, answer.body);
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
                self.transport.note_error_code(&code).await;
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
