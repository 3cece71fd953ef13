//! Unit tests of `sqs::query`.

use super::*;

#[test]
fn a_receive_answer_reads_into_messages() {
    let xml = br#"<?xml version="1.0"?>
<ReceiveMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><ReceiveMessageResult>
<Message><MessageId>id-1</MessageId><ReceiptHandle>rh-1</ReceiptHandle>
<MD5OfBody>abc</MD5OfBody><Body>{&quot;a&quot;: 1}&#xD;</Body>
<Attribute><Name>SentTimestamp</Name><Value>1700000000</Value></Attribute>
<Attribute><Name>ApproximateReceiveCount</Name><Value>3</Value></Attribute>
<MessageAttribute><Name>sqs2pg-ledger-id</Name><Value><StringValue>old#replay1</StringValue><DataType>String</DataType></Value></MessageAttribute>
<MessageAttribute><Name>sqs2pg-sent-timestamp</Name><Value><StringValue>1583020799999</StringValue><DataType>Number</DataType></Value></MessageAttribute>
</Message>
<Message><MessageId>id-2</MessageId><ReceiptHandle>rh-2</ReceiptHandle><Body></Body></Message>
</ReceiveMessageResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></ReceiveMessageResponse>"#;
    let root = Element::parse(xml).unwrap();
    let messages = messages_of(root.child("ReceiveMessageResult").unwrap());
    assert_eq!(messages.len(), 2);
    let m = &messages[0];
    assert_eq!(m.message_id.as_deref(), Some("id-1"));
    assert_eq!(m.receipt_handle.as_deref(), Some("rh-1"));
    assert_eq!(m.body, "{\"a\": 1}\r");
    assert_eq!(m.md5_of_body.as_deref(), Some("abc"));
    assert_eq!(m.sent_timestamp.as_deref(), Some("1700000000"));
    assert_eq!(m.receive_count.as_deref(), Some("3"));
    assert_eq!(m.replay_ledger_id.as_deref(), Some("old#replay1"));
    assert_eq!(m.replay_sent_timestamp.as_deref(), Some("1583020799999"));
    let empty = &messages[1];
    assert_eq!(empty.body, "");
    assert_eq!(empty.md5_of_body, None);
    assert_eq!(empty.sent_timestamp, None);
}

#[test]
fn batch_failures_name_their_entries() {
    let xml = b"<DeleteMessageBatchResult>\
        <DeleteMessageBatchResultEntry><Id>0</Id></DeleteMessageBatchResultEntry>\
        <BatchResultErrorEntry><Id>1</Id><Code>ReceiptHandleIsInvalid</Code><SenderFault>true</SenderFault></BatchResultErrorEntry>\
        <BatchResultErrorEntry><Id>2</Id><Code>InternalError</Code><SenderFault>false</SenderFault></BatchResultErrorEntry>\
        </DeleteMessageBatchResult>";
    let result = Element::parse(xml).unwrap();
    let failures: Vec<(&str, &str, bool)> = failures(&result)
        .map(|f| (f.id, f.code, f.sender_fault))
        .collect();
    assert_eq!(
        failures,
        [
            ("1", "ReceiptHandleIsInvalid", true),
            ("2", "InternalError", false)
        ]
    );
    assert_eq!(batch_entry(&["a", "b", "c"], "2"), Some(&"c"));
    assert_eq!(batch_entry(&["a"], "x"), None);
}

#[test]
fn a_stale_handle_is_superseded_not_failed() {
    let acks: Vec<AckHandle> = (0..4)
        .map(|i| AckHandle {
            message_id: format!("m{i}"),
            receipt_handle: format!("h{i}"),
        })
        .collect();
    let failures = [
        ("1", "ReceiptHandleIsInvalid", true),
        ("2", "InternalError", false),
        ("3", "AccessDenied", true),
    ];
    let outcome = crate::sqs::delete_outcome(
        &acks,
        1,
        failures
            .iter()
            .map(|&(id, code, sender_fault)| crate::sqs::BatchFailure {
                id,
                code,
                sender_fault,
            }),
    );
    assert_eq!(outcome.deleted, 1);
    assert_eq!(outcome.superseded, [acks[1].clone()]);
    assert_eq!(outcome.retryable, [acks[2].clone()]);
    assert_eq!(
        (outcome.failed, outcome.refused),
        (1, vec![acks[3].clone()])
    );
}
