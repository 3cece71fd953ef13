//! Unit tests of `sqs::json`.

use super::*;

#[test]
fn a_receive_answer_reads_into_messages() {
    let json = br#"{"Messages":[
        {"MessageId":"id-1","ReceiptHandle":"rh-1","MD5OfBody":"abc","Body":"{\"a\": 1}\r",
         "Attributes":{"SentTimestamp":"1700000000000","ApproximateReceiveCount":"3",
                       "MessageGroupId":"g","MessageDeduplicationId":"d"},
         "MessageAttributes":{
            "sqs2pg-ledger-id":{"StringValue":"old#replay1","DataType":"String"},
            "sqs2pg-sent-timestamp":{"StringValue":"1583020799999","DataType":"Number"},
            "tenant":{"StringValue":"t-9","DataType":"String"},
            "blob":{"BinaryValue":"AAE=","DataType":"Binary"}}},
        {"MessageId":"id-2","ReceiptHandle":"rh-2","Body":""}]}"#;
    let answer: ReceiveAnswer = serde_json::from_slice(json).unwrap();
    let messages: Vec<WireMessage> = answer.messages.into_iter().map(wire_message).collect();
    assert_eq!(messages.len(), 2);
    let m = &messages[0];
    assert_eq!(m.message_id.as_deref(), Some("id-1"));
    assert_eq!(m.receipt_handle.as_deref(), Some("rh-1"));
    assert_eq!(m.body, "{\"a\": 1}\r");
    assert_eq!(m.md5_of_body.as_deref(), Some("abc"));
    assert_eq!(m.sent_timestamp.as_deref(), Some("1700000000000"));
    assert_eq!(m.receive_count.as_deref(), Some("3"));
    assert_eq!(m.group_id.as_deref(), Some("g"));
    assert_eq!(m.deduplication_id.as_deref(), Some("d"));
    assert_eq!(m.replay_ledger_id.as_deref(), Some("old#replay1"));
    assert_eq!(m.replay_sent_timestamp.as_deref(), Some("1583020799999"));
    // Ours are taken out; a binary attribute has no string to give a mapping.
    assert_eq!(m.attributes, [("tenant".to_owned(), "t-9".to_owned())]);
    let empty = &messages[1];
    assert_eq!(empty.body, "");
    assert_eq!(empty.md5_of_body, None);
    assert_eq!(empty.sent_timestamp, None);
    // An empty queue answers `{}`.
    let none: ReceiveAnswer = serde_json::from_slice(b"{}").unwrap();
    assert!(none.messages.is_empty());
}

#[test]
fn requests_are_written_as_sqs_reads_them() {
    let receive = ReceiveBody {
        queue_url: "http://q/1/a.fifo",
        max_number_of_messages: 10,
        wait_time_seconds: 20,
        visibility_timeout: Some(30),
        receive_request_attempt_id: Some("attempt"),
        message_system_attribute_names: SYSTEM_ATTRIBUTES,
        message_attribute_names: ["All"],
    };
    let value: serde_json::Value = serde_json::to_value(&receive).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "QueueUrl": "http://q/1/a.fifo", "MaxNumberOfMessages": 10, "WaitTimeSeconds": 20,
            "VisibilityTimeout": 30, "ReceiveRequestAttemptId": "attempt",
            "MessageSystemAttributeNames": ["SentTimestamp", "ApproximateReceiveCount",
                                            "MessageGroupId", "MessageDeduplicationId"],
            "MessageAttributeNames": ["All"]})
    );
    let delete = Entries {
        queue_url: "u",
        entries: vec![HandleEntry {
            id: "0".into(),
            receipt_handle: "h",
            visibility_timeout: None,
        }],
    };
    assert_eq!(
        serde_json::to_value(&delete).unwrap(),
        serde_json::json!({"QueueUrl": "u", "Entries": [{"Id": "0", "ReceiptHandle": "h"}]})
    );
    let send = SendEntry {
        id: "0".into(),
        message_body: "b",
        message_group_id: Some("g"),
        message_deduplication_id: None,
        message_attributes: HashMap::from([("n", string_attribute("1", "Number"))]),
    };
    assert_eq!(
        serde_json::to_value(&send).unwrap(),
        serde_json::json!({"Id": "0", "MessageBody": "b", "MessageGroupId": "g",
            "MessageAttributes": {"n": {"StringValue": "1", "DataType": "Number"}}})
    );
}

#[test]
fn batch_failures_name_their_entries() {
    let json = br#"{"Successful":[{"Id":"0"}],"Failed":[
        {"Id":"1","Code":"ReceiptHandleIsInvalid","SenderFault":true,"Message":"m"},
        {"Id":"2","Code":"InternalError","SenderFault":false}]}"#;
    let answer: BatchAnswer = serde_json::from_slice(json).unwrap();
    assert_eq!(answer.successful.len(), 1);
    let failures: Vec<(&str, &str, bool)> = answer
        .failures()
        .map(|f| (f.id, f.code, f.sender_fault))
        .collect();
    assert_eq!(
        failures,
        [
            ("1", "ReceiptHandleIsInvalid", true),
            ("2", "InternalError", false)
        ]
    );
}

#[test]
fn error_codes_are_read_as_the_sdk_reads_them() {
    let header = http::HeaderValue::from_static("AWS.SimpleQueueService.NonExistentQueue;Sender");
    let body = br#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"gone"}"#;
    // The query-compatible code wins; else the type without its namespace.
    assert_eq!(
        error_of(Some(&header), body),
        (
            Some("AWS.SimpleQueueService.NonExistentQueue".into()),
            "gone".into(),
            false
        )
    );
    assert_eq!(
        error_of(None, body),
        (Some("QueueDoesNotExist".into()), "gone".into(), false)
    );
    let with_url =
        br#"{"__type":"InvalidParameterValue:http://internal.amazon.com/","Message":"bad"}"#;
    assert_eq!(
        error_of(None, with_url),
        (Some("InvalidParameterValue".into()), "bad".into(), false)
    );
    // moto's XML authentication error, and LocalStack 0.14's `{}`.
    let xml = b"<ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error></Errors></ErrorResponse>";
    assert_eq!(
        error_of(None, xml),
        (Some("SignatureDoesNotMatch".into()), "no".into(), true)
    );
    assert_eq!(error_of(None, b"{}"), (None, String::new(), false));
    assert_eq!(
        error_of(None, b"<html>502</html>"),
        (None, String::new(), false)
    );
    assert_eq!(error_of(None, b"not json"), (None, String::new(), false));
}

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

#[test]
fn nulls_read_as_empty_as_the_sdk_reads_them() {
    let json = br#"{"Messages":[{"MessageId":"id","ReceiptHandle":"rh","Body":"b",
        "Attributes":null,"MessageAttributes":{"a":{"StringValue":"v","DataType":null}}}]}"#;
    let answer: ReceiveAnswer = serde_json::from_slice(json).unwrap();
    let m = wire_message(answer.messages.into_iter().next().unwrap());
    assert_eq!(m.sent_timestamp, None);
    assert_eq!(m.attributes, [("a".to_owned(), "v".to_owned())]);
    let none: ReceiveAnswer = serde_json::from_slice(br#"{"Messages":null}"#).unwrap();
    assert!(none.messages.is_empty());
    let batch: BatchAnswer =
        serde_json::from_slice(br#"{"Successful":null,"Failed":null}"#).unwrap();
    assert!(batch.successful.is_empty() && batch.failed.is_empty());
}

#[test]
fn a_code_keeps_its_name_when_a_hash_follows_the_colon() {
    let body = br#"{"__type":"aws.sqs#TooManyEntriesInBatchRequest:http://x/#frag"}"#;
    assert_eq!(
        error_of(None, body).0.as_deref(),
        Some("TooManyEntriesInBatchRequest")
    );
    let code = br#"{"code":"QueueDoesNotExist"}"#;
    assert_eq!(error_of(None, code).0.as_deref(), Some("QueueDoesNotExist"));
}
