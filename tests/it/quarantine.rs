//! The quarantine from the command line: `rejects list`, `show` and `replay`, on every SQS
//! server.

use std::process::Output;

use crate::harness::{assert_no_personal_data, key_file, sqs2pg, stderr};

on_every_sqs!(rejects_list_show_and_replay);
async fn rejects_list_show_and_replay(sqs: crate::harness::Sqs) {
    let (db, queue) = crate::harness::fixture_on(sqs).await;
    let client = db.client().await;
    client
        .batch_execute(
            "ALTER TABLE public.user_logins ADD CONSTRAINT no_old_android
                 CHECK (device_type <> 'android' OR app_version >= 1000000)",
        )
        .await
        .unwrap();
    queue.send(&crate::harness::sample_bodies()).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let summary = crate::harness::drain(&crate::harness::args(&db, &queue, key_file(&key))).await;
    let refused = summary.rejected["table_refused:no_old_android"];
    assert!(refused > 0);
    let protocol = queue.protocol.to_string();
    let env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        ("SQS2PG_SQS_PROTOCOL", &protocol),
        // LocalStack 4 hands out sqs.REGION.localhost.localstack.cloud URLs, which need public
        // DNS; the endpoint says where the server really is.
        ("AWS_ENDPOINT_URL", &queue.endpoint),
    ];

    // list: counts by reason and ids, never values.
    let list = sqs2pg(&["rejects", "list"], &env);
    assert!(list.status.success(), "{}", stderr(&list));
    let text = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        text.contains(&format!("rejected messages: {}", refused + 1)),
        "{text}"
    );
    assert!(text.contains("missing_field:user_id"), "{text}");
    assert!(
        text.contains("SQLSTATE 23514, constraint no_old_android"),
        "{text}"
    );
    assert_no_personal_data(&text);

    // show: the original body, with a warning.
    let id: String = client
        .query_one(
            "SELECT message_id FROM sqs2pg.rejected_messages WHERE reason = 'missing_field:user_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let show = sqs2pg(&["rejects", "show", &id], &env);
    assert!(show.status.success(), "{}", stderr(&show));
    assert_eq!(
        String::from_utf8_lossy(&show.stdout).trim(),
        r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#
    );
    assert!(stderr(&show).contains("personal data"));
    let wrong_key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let mut other = env.clone();
    other[2] = ("SQS2PG_MASK_KEY", &wrong_key);
    let refused_show = sqs2pg(&["rejects", "show", &id], &other);
    assert_eq!(refused_show.status.code(), Some(1));
    assert!(
        stderr(&refused_show).contains("sealed under key"),
        "{}",
        stderr(&refused_show)
    );

    // replay: the operator drops the rule, replays what it refused, and drains again.
    client
        .batch_execute(
            "ALTER TABLE public.user_logins DROP CONSTRAINT no_old_android;
             -- as if they had been sent on a leap day: replays keep their original date
             UPDATE sqs2pg.rejected_messages SET sent_timestamp = 1583020799999
              WHERE reason = 'table_refused:no_old_android';",
        )
        .await
        .unwrap();
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let none = sqs2pg(&["rejects", "replay"], &env);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        stderr(&none).contains("--reason CODE, --id ID or --all"),
        "{}",
        stderr(&none)
    );
    // A family name takes every code of the family.
    let replay_refused = ["rejects", "replay", "--reason", "table_refused"];
    let replay = sqs2pg(&replay_refused, &env);
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert!(
        stdout(&replay).contains(&format!("replayed {refused} message(s)")),
        "{}",
        stdout(&replay)
    );
    // Not again by accident...
    let again = sqs2pg(&replay_refused, &env);
    assert!(
        stdout(&again).contains("replayed 0 message(s)"),
        "{}",
        stdout(&again)
    );
    // ...and on purpose before the first copies were loaded: sent again under the same replay
    // ids, so each login still loads once.
    let mut forced = replay_refused.to_vec();
    forced.push("--again");
    let twice = sqs2pg(&forced, &env);
    assert!(
        stdout(&twice).contains(&format!("replayed {refused} message(s)")),
        "{}",
        stdout(&twice)
    );
    let out = sqs2pg(&["drain"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = crate::harness::count(&db, "SELECT count(*) FROM public.user_logins").await;
    assert_eq!(rows, 99, "every refused login is in after the replay, once");
    let leap = crate::harness::count(
        &db,
        "SELECT count(*) FROM public.user_logins WHERE create_date = '2020-02-29'",
    )
    .await;
    assert_eq!(
        leap as u64, refused,
        "replays keep their original SentTimestamp"
    );
    // Once loaded, even --again leaves them alone.
    let after = sqs2pg(&forced, &env);
    assert!(
        stdout(&after).contains("replayed 0 message(s)"),
        "{}",
        stdout(&after)
    );
    assert!(
        stderr(&after).contains("already loaded by replay 1"),
        "{}",
        stderr(&after)
    );
    let list = sqs2pg(&["rejects", "list"], &env);
    assert!(String::from_utf8_lossy(&list.stdout).contains("[replayed]"));
}
