//! Mappings end to end: each example mapping in `examples/mappings/` set up, drained, its bad
//! bodies quarantined under their reasons and a refused row replayed, against real PostgreSQL
//! and a real SQS server; S3 fan-out exactly once across a lost delete; and the login mapping
//! giving the same table as the built-in login pipeline.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sqs2pg::app;
use sqs2pg::config;
use sqs2pg::pipeline::Mode;
use tokio_util::sync::CancellationToken;

use crate::faults::{DeleteFault, FaultySource};
use crate::harness::{count, fixture_on};
use crate::harness::{key_file, sqs2pg, stderr, unique, Sqs, TestDb, TestQueue};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mappings");

fn example(name: &str) -> PathBuf {
    Path::new(EXAMPLES).join(name)
}

fn bodies(name: &str) -> Vec<String> {
    std::fs::read_to_string(example(name))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The environment a user gives the binary for one mapping.
fn env<'a>(
    db: &'a TestDb,
    queue: &'a TestQueue,
    key: &'a str,
    protocol: &'a str,
    mapping: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("SQS2PG_MASK_KEY", key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        ("SQS2PG_SQS_PROTOCOL", protocol),
        ("AWS_ENDPOINT_URL", &queue.endpoint),
        ("SQS2PG_MAPPING", mapping),
    ]
}

/// What a test of one mapping starts from: a database and a queue on `sqs`, a fresh key, the
/// queue's protocol as `SQS2PG_SQS_PROTOCOL` spells it, and a directory of its own for files.
async fn case_on(sqs: Sqs, name: &str) -> (TestDb, TestQueue, String, String, PathBuf) {
    let (db, queue) = fixture_on(sqs).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let protocol = queue.protocol.to_string();
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    (db, queue, key, protocol, dir)
}

/// `rejects replay --reason table_refused` (every `table_refused:RULE`), which must succeed.
fn replay_refused(env: &[(&str, &str)]) -> Output {
    let replay = sqs2pg(&["rejects", "replay", "--reason", "table_refused"], env);
    assert!(replay.status.success(), "{}", stderr(&replay));
    replay
}

/// Reasons of the quarantined messages, sorted.
async fn reasons(db: &TestDb) -> Vec<String> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT reason FROM sqs2pg.rejected_messages ORDER BY reason",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// One example's run: `setup` (or the table made by hand), `check`, `drain`, then a row the
/// table refused replayed once the table takes it.
struct Case {
    sqs: Sqs,
    mapping: &'static str,
    bodies: &'static str,
    table: &'static str,
    /// DDL run before `setup` (a partitioned table `setup` does not make).
    ddl: Option<&'static str>,
    /// A CHECK that refuses exactly one valid message at first.
    refuse: &'static str,
    /// Rows in the end.
    rows: i64,
    /// Rows of the refused message.
    refused_rows: i64,
    reasons: &'static [&'static str],
    /// Text of the bodies that must not reach the table or the output.
    personal: &'static [&'static str],
    /// A query `unmask --mapping` runs after the drain, and what its output must show: a raw
    /// value behind a reversible token column.
    unmask: Option<(&'static str, &'static str)>,
    /// Lines `report` prints at the end, besides the row count.
    report: &'static [&'static str],
}

async fn drains_end_to_end(case: Case) -> TestDb {
    let (db, queue) = fixture_on(case.sqs).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let protocol = queue.protocol.to_string();
    let mapping = example(case.mapping).display().to_string();
    let env = env(&db, &queue, &key, &protocol, &mapping);
    let client = db.client().await;
    if let Some(ddl) = case.ddl {
        client.batch_execute(ddl).await.unwrap();
    }
    let setup = sqs2pg(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    let made = if case.ddl.is_some() {
        // A table made by hand (partitioned) that has the mapping's columns: nothing to do.
        "exists, as the mapping wants it"
    } else {
        "created"
    };
    assert!(
        stdout(&setup).contains(&format!("table {} {made}", case.table)),
        "{}",
        stdout(&setup)
    );
    let check = sqs2pg(&["check"], &env);
    assert!(
        stdout(&check).contains("has the mapping's columns"),
        "{}\n{}",
        stdout(&check),
        stderr(&check)
    );
    client.batch_execute(case.refuse).await.unwrap();

    queue.send(&bodies(case.bodies)).await;
    let drain = sqs2pg(&["drain"], &env);
    assert!(drain.status.success(), "{}", stderr(&drain));
    let table_rows = format!("SELECT count(*) FROM {}", case.table);
    assert_eq!(count(&db, &table_rows).await, case.rows - case.refused_rows);
    let mut expected: Vec<String> = case.reasons.iter().map(|r| (*r).to_owned()).collect();
    // The rule's name, from `ADD CONSTRAINT name ...`.
    let rule = case
        .refuse
        .split_whitespace()
        .skip_while(|w| *w != "CONSTRAINT")
        .nth(1)
        .unwrap();
    expected.push(format!("table_refused:{rule}"));
    expected.sort();
    assert_eq!(reasons(&db).await, expected);
    let messages = case.bodies_count();
    assert_eq!(
        count(&db, "SELECT count(*) FROM sqs2pg.ledger").await,
        messages,
        "every message is in the ledger once, rows or not"
    );
    for output in [&setup, &check, &drain] {
        for value in case.personal {
            assert!(!stdout(output).contains(value) && !stderr(output).contains(value));
        }
    }
    let table_text = format!(
        "SELECT coalesce(string_agg(t::text, ' '), '') FROM {} t",
        case.table
    );
    let stored: String = crate::harness::one(&db, &table_text).await;
    for value in case.personal {
        assert!(!stored.contains(value), "a raw value reached the table");
    }

    // The operator lets the refused row in and replays it: it loads, once.
    let constraint = case.refuse.split_whitespace().nth(5).unwrap();
    client
        .batch_execute(&format!(
            "ALTER TABLE {} DROP CONSTRAINT {constraint}",
            case.table
        ))
        .await
        .unwrap();
    let replay = replay_refused(&env);
    assert!(
        stdout(&replay).contains("replayed 1 message(s)"),
        "{}",
        stdout(&replay)
    );
    let again = sqs2pg(&["drain"], &env);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(count(&db, &table_rows).await, case.rows);
    assert_eq!(queue.depth().await, 0);

    // The report counts rows, days and tokens, and shows no value.
    let report = sqs2pg(&["report"], &env);
    assert!(report.status.success(), "{}", stderr(&report));
    let text = stdout(&report);
    assert!(
        text.contains(&format!("{}: {} rows", case.table, case.rows)),
        "{text}"
    );
    for line in case.report {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    for value in case.personal {
        assert!(!text.contains(value), "{text}");
    }

    // Key holders recover what the mapping's reversible columns hide, and only those.
    if let Some((query, shown)) = case.unmask {
        let unmask = sqs2pg(&["unmask", "--query", query], &env);
        assert!(unmask.status.success(), "{}", stderr(&unmask));
        assert!(stdout(&unmask).contains(shown), "{}", stdout(&unmask));
        assert!(stderr(&unmask).contains("personal data"));
        for value in case.personal.iter().filter(|p| !shown.contains(**p)) {
            assert!(
                !stdout(&unmask).contains(value),
                "a one-way token was opened"
            );
        }
        let before: String = crate::harness::one(&db, &table_text).await;
        assert!(!before.contains(shown), "the table itself holds tokens");
    }
    db
}

impl Case {
    fn bodies_count(&self) -> i64 {
        bodies(self.bodies).len() as i64
    }
}

fn orders(sqs: Sqs) -> Case {
    Case {
        sqs,
        mapping: "orders-sns.toml",
        bodies: "orders-sns.jsonl",
        table: "public.orders",
        ddl: None,
        refuse: "ALTER TABLE public.orders ADD CONSTRAINT small_orders CHECK (amount < 50)",
        rows: 2,
        refused_rows: 1,
        reasons: &[
            "invalid_value:order_id",
            "not_allowed:currency",
            "out_of_range:amount",
        ],
        personal: &["@example.com"],
        unmask: Some((
            "SELECT order_id, client_ip, email_token FROM public.orders",
            "203.0.113.7",
        )),
        report: &[
            "distinct email_token",
            "rows per day of placed_at",
            "2026-12-01",
        ],
    }
}

/// The SentTimestamp of every row, as the column `sent_at` holds it, is the send time: within
/// the last hour (LocalStack 0.14 sends seconds, SQS milliseconds; both are made milliseconds
/// where messages are received).
async fn sent_just_now(db: &TestDb) {
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM public.orders
              WHERE sent_at NOT BETWEEN now() - interval '1 hour' AND now() + interval '1 minute'"
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_wrapped_orders_from_the_exercises_localstack_drain_with_reasons_and_replay() {
    let db = drains_end_to_end(orders(Sqs::LocalStack014)).await;
    sent_just_now(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_wrapped_orders_drain_into_their_table_with_reasons_and_replay() {
    let db = drains_end_to_end(orders(Sqs::MotoJson)).await;
    sent_just_now(&db).await;
    // Each token column is recorded with its scope and mode (redacted columns keep nothing).
    let rows = db
        .client()
        .await
        .query(
            "SELECT column_name, scope, mode FROM sqs2pg.mask_columns
              WHERE table_name = 'public.orders' ORDER BY column_name",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        recorded,
        [
            ("client_ip".into(), "client_ip".into(), "ipcrypt-pfx".into()),
            ("email_token".into(), "email".into(), "hmac".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_signups_drain_into_their_table_with_reasons_and_replay() {
    drains_end_to_end(Case {
        sqs: Sqs::MotoJson,
        mapping: "signups-eventbridge.toml",
        bodies: "signups-eventbridge.jsonl",
        table: "public.signups",
        ddl: None,
        refuse: "ALTER TABLE public.signups ADD CONSTRAINT no_free_plans CHECK (plan <> 'free')",
        rows: 2,
        refused_rows: 1,
        reasons: &[
            "missing_field:user_id",
            "not_allowed:plan",
            "not_an_envelope:eventbridge",
        ],
        personal: &["@example.com", "+44 20"],
        unmask: None,
        report: &[
            "distinct email_token",
            "rows per day of occurred_at",
            "2026-12-01",
        ],
    })
    .await;
}

/// The S3 example's partitioned table.
const S3_DDL: &str = "CREATE TABLE public.s3_objects (
       event_time timestamptz NOT NULL, event_name varchar(64) NOT NULL, bucket text NOT NULL,
       object_key text NOT NULL, size bigint, source_ip inet, sqs_message_id text
   ) PARTITION BY RANGE (event_time);
   CREATE TABLE public.s3_objects_2026_12 PARTITION OF public.s3_objects
       FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');
   CREATE TABLE public.s3_objects_other PARTITION OF public.s3_objects DEFAULT;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_notifications_fan_out_into_a_partitioned_table_with_reasons_and_replay() {
    let db = drains_end_to_end(Case {
        sqs: Sqs::LocalStack4,
        mapping: "s3-objects.toml",
        bodies: "s3-objects.jsonl",
        table: "public.s3_objects",
        ddl: Some(S3_DDL),
        // The 5-record message is refused whole (all its rows or none), then replayed.
        refuse: "ALTER TABLE public.s3_objects ADD CONSTRAINT no_photos CHECK (object_key NOT LIKE 'photos/%')",
        rows: 5,
        refused_rows: 5,
        reasons: &["not_an_envelope:s3", "out_of_range:size"],
        personal: &["203.0.113."],
        unmask: Some(("SELECT object_key, source_ip FROM public.s3_objects", "203.0.113.10")),
        report: &["distinct source_ip", "rows per day of event_time"],
    })
    .await;
    // The replayed message's rows carry the id of the message it replays, not the replay's.
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT sqs_message_id) FROM public.s3_objects"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.s3_objects s JOIN sqs2pg.ledger l
                ON l.message_id = s.sqs_message_id"
        )
        .await,
        5,
        "the rows name the original message, which the ledger knows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_message_of_five_records_redelivered_after_a_lost_delete_still_gives_five_rows() {
    let (db, queue) = fixture_on(Sqs::MotoJson).await;
    db.client().await.batch_execute(S3_DDL).await.unwrap();
    let five = bodies("s3-objects.jsonl").remove(0);
    assert_eq!(five.matches("ObjectCreated").count(), 5);
    queue.send(&[five]).await;
    let mut a = crate::harness::args(
        &db,
        &queue,
        key_file(&sqs2pg::keys::MaskKey::generate_base64().unwrap()),
    );
    a.database.mapping_file.mapping = vec![example("s3-objects.toml")];
    a.visibility_timeout_secs = Some(1);
    // The first delete is lost (a crash between COMMIT and delete): SQS hands the message out
    // again after its 1 s visibility timeout.
    let lossy = Arc::new(FaultySource::new(queue.queue.clone()).deletes(DeleteFault::LoseFirst));
    let total = crate::harness::drain_until_empty(&a, &lossy, &queue).await;
    assert_eq!(lossy.swallowed.load(Ordering::SeqCst), 1);
    assert_eq!((total.loaded, total.rows), (1, 5), "{total:?}");
    assert!(
        total.duplicates + total.redelivered_while_held >= 1,
        "the message came back: {total:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.s3_objects").await,
        5
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(DISTINCT object_key) FROM public.s3_objects"
        )
        .await,
        5
    );
    assert_eq!(count(&db, "SELECT count(*) FROM sqs2pg.ledger").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_mapping_file_gives_the_same_table_as_the_built_in_pipeline() {
    let (db, queue) = fixture_on(Sqs::MotoJson).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let protocol = queue.protocol.to_string();
    // The example, pointed at a second table.
    let text = std::fs::read_to_string(example("login.toml")).unwrap();
    assert!(text.contains("table = \"public.user_logins\""));
    let dir = std::env::temp_dir().join(unique("sqs2pg-login-mapping"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("login.toml");
    std::fs::write(
        &file,
        text.replace("public.user_logins", "public.user_logins_mapped"),
    )
    .unwrap();
    let file = file.display().to_string();

    let samples = crate::harness::sample_bodies();
    queue.send(&samples).await;
    let mut built_in = env(&db, &queue, &key, &protocol, "");
    built_in.pop();
    let out = sqs2pg(&["drain"], &built_in);
    assert!(out.status.success(), "{}", stderr(&out));
    let client = db.client().await;
    // The same messages again, as the same SentTimestamps and ids cannot be sent twice: the
    // mapped copy is compared on everything but create_date's source, which is the send day.
    client
        .batch_execute("DELETE FROM sqs2pg.ledger; DELETE FROM sqs2pg.rejected_messages")
        .await
        .unwrap();
    let mapped = env(&db, &queue, &key, &protocol, &file);
    let setup = sqs2pg(&["setup"], &mapped);
    assert!(setup.status.success(), "{}", stderr(&setup));
    queue.send(&samples).await;
    let out = sqs2pg(&["drain"], &mapped);
    assert!(out.status.success(), "{}", stderr(&out));

    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins_mapped").await,
        99
    );
    let differ = count(
        &db,
        "SELECT count(*) FROM (
             (SELECT * FROM public.user_logins EXCEPT ALL SELECT * FROM public.user_logins_mapped)
             UNION ALL
             (SELECT * FROM public.user_logins_mapped EXCEPT ALL SELECT * FROM public.user_logins)
         ) d",
    )
    .await;
    assert_eq!(differ, 0, "the same rows, tokens byte for byte");
    assert_eq!(reasons(&db).await, ["missing_field:user_id"]);

    // Through the mapping, a login the table refuses is quarantined and replayed like any.
    let more: Vec<String> = samples
        .iter()
        .filter(|b| b.contains("device_id"))
        .take(10)
        .cloned()
        .collect();
    let first: serde_json::Value = serde_json::from_str(&more[0]).unwrap();
    let user = first["user_id"].as_str().unwrap();
    client
        .batch_execute(&format!(
            "ALTER TABLE public.user_logins_mapped
               ADD CONSTRAINT not_this_one CHECK (user_id <> '{user}') NOT VALID"
        ))
        .await
        .unwrap();
    queue.send(&more).await;
    let out = sqs2pg(&["drain"], &mapped);
    assert!(out.status.success(), "{}", stderr(&out));
    let refused = count(
        &db,
        "SELECT count(*) FROM sqs2pg.rejected_messages WHERE reason = 'table_refused:not_this_one'",
    )
    .await;
    let rows_of_user = more.iter().filter(|b| b.contains(user)).count() as i64;
    assert_eq!(refused, rows_of_user);
    client
        .batch_execute("ALTER TABLE public.user_logins_mapped DROP CONSTRAINT not_this_one")
        .await
        .unwrap();
    replay_refused(&mapped);
    let out = sqs2pg(&["drain"], &mapped);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_logins_mapped").await,
        99 + more.len() as i64
    );
}

/// Message attributes and the FIFO group id reach a mapping's `attr:` and `sqs:` columns, in
/// both protocols; a message without a required attribute is quarantined, naming the column.
async fn attributes_and_group_ids_reach_their_columns(sqs: Sqs) {
    use sqs2pg::sqs::Outgoing;
    let (db, queue) = (TestDb::new().await, TestQueue::fifo_on(sqs).await);
    crate::harness::setup(&db).await;
    let dir = std::env::temp_dir().join(unique("sqs2pg-attr-mapping"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tenants.toml");
    std::fs::write(
        &file,
        r#"table = "public.tenant_events"
columns = [
  { name = "id",       from = "/id",                         type = "integer", required = true },
  { name = "tenant",   from = "attr:tenant",                 type = "text", required = true },
  { name = "grp",      from = "sqs:MessageGroupId",          type = "text", required = true },
  { name = "msg",      from = "sqs:MessageId",               type = "text", required = true },
  { name = "receives", from = "sqs:ApproximateReceiveCount", type = "integer" },
  { name = "sent",     from = "sqs:SentTimestamp",           type = "timestamptz" },
]
"#,
    )
    .unwrap();
    let mut a = crate::harness::args(
        &db,
        &queue,
        key_file(&sqs2pg::keys::MaskKey::generate_base64().unwrap()),
    );
    a.database.mapping_file.mapping = vec![file];
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let shape = app::target::Target::of_mapping(&settings.mappings[0]).shape(false);
    app::setup_for(&settings.database, &settings.table, &shape)
        .await
        .unwrap();
    let mut messages: Vec<Outgoing> = (1..=3)
        .map(|i| {
            let mut m = Outgoing::new(format!(r#"{{"id": {i}}}"#));
            m.attributes = vec![("tenant".into(), "acme".into())];
            m
        })
        .collect();
    messages.push(Outgoing::new(r#"{"id": 4}"#.into()));
    // One of another tenant in a group of its own, which the table refuses at first.
    let mut refused = Outgoing::new(r#"{"id": 5}"#.into()).in_group("g-b", "dedup-5");
    refused.attributes = vec![("tenant".into(), "globex".into())];
    messages.push(refused);
    assert!(queue.queue.send_batch(&messages).await.unwrap().is_empty());
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE public.tenant_events ADD CONSTRAINT no_five CHECK (id <> 5)")
        .await
        .unwrap();

    let summary = app::process(settings, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(summary.loaded, 3, "{summary:?}");
    assert_eq!(
        summary.rejected.get("missing_field:tenant"),
        Some(&1),
        "{summary:?}"
    );
    assert_eq!(
        summary.rejected.get("table_refused:no_five"),
        Some(&1),
        "{summary:?}"
    );
    let rows = db
        .client()
        .await
        .query(
            "SELECT id, tenant, grp, msg, receives, sent > now() - interval '1 hour'
               FROM public.tenant_events ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.get::<_, i32>(0), i as i32 + 1);
        assert_eq!(row.get::<_, String>(1), "acme");
        assert_eq!(row.get::<_, String>(2), sqs2pg::sqs::queue::FIFO_SEND_GROUP);
        assert!(!row.get::<_, String>(3).is_empty());
        assert_eq!(row.get::<_, i32>(4), 1);
        assert!(row.get::<_, bool>(5), "sent within the hour");
    }

    // Replayed once the table takes it, the refused message is the message it replays: its
    // attribute, its group and its id reach the row (before, the replay carried no attribute,
    // so it was quarantined again as missing_field:tenant, in the sender's fixed group).
    let (original, sealed): (String, Vec<u8>) = {
        let row = client
            .query_one(
                "SELECT message_id, envelope_sealed FROM sqs2pg.rejected_messages
                  WHERE reason = 'table_refused:no_five'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(
        !String::from_utf8_lossy(&sealed).contains("globex"),
        "sealed"
    );
    client
        .batch_execute("ALTER TABLE public.tenant_events DROP CONSTRAINT no_five")
        .await
        .unwrap();
    let protocol = queue.protocol.to_string();
    let replay = sqs2pg(
        &["rejects", "replay", "--reason", "table_refused"],
        &[
            ("DATABASE_URL", &db.url),
            ("SQS2PG_QUEUE_URL", &queue.url),
            (
                "SQS2PG_MASK_KEY_FILE",
                &a.key.mask_key_file.as_ref().unwrap().display().to_string(),
            ),
            ("SQS2PG_SQS_PROTOCOL", &protocol),
            ("AWS_ENDPOINT_URL", &queue.endpoint),
        ],
    );
    assert!(replay.status.success(), "{}", stderr(&replay));
    let settings = config::pipeline(&a, Mode::Drain).unwrap();
    let summary = app::process(settings, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(summary.loaded, 1, "{summary:?}");
    let row = client
        .query_one(
            "SELECT tenant, grp, msg, receives FROM public.tenant_events WHERE id = 5",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "globex");
    assert_eq!(row.get::<_, String>(1), "g-b");
    assert_eq!(row.get::<_, String>(2), original);
    assert_eq!(row.get::<_, i32>(3), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_and_group_ids_reach_their_columns_over_json() {
    attributes_and_group_ids_reach_their_columns(Sqs::MotoJson).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_and_group_ids_reach_their_columns_over_query() {
    attributes_and_group_ids_reach_their_columns(Sqs::MotoQuery).await;
}

/// The newcomer's path of the README's "Your own messages": a draft from sample bodies, used
/// unedited, creates its table with `setup` and loads every sample it was drafted from, with
/// the values it found personal masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_used_unedited_sets_up_its_table_and_loads_its_samples() {
    let (db, queue, key, protocol, dir) = case_on(Sqs::MotoJson, "sqs2pg-draft").await;
    let file = dir.join("orders.toml");
    let samples = example("orders-sns.jsonl").display().to_string();
    let draft = sqs2pg(
        &[
            "mapping",
            "draft",
            "--file",
            &samples,
            "--table",
            "public.drafted_orders",
            "--output",
            &file.display().to_string(),
        ],
        &[],
    );
    assert!(draft.status.success(), "{}", stderr(&draft));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("envelope = \"sns\""), "{text}");
    assert!(text.contains("mask = "), "a mask is proposed: {text}");

    let file = file.display().to_string();
    let env = env(&db, &queue, &key, &protocol, &file);
    let setup = sqs2pg(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    assert!(
        stdout(&setup).contains("table public.drafted_orders created"),
        "{}",
        stdout(&setup)
    );
    let bodies = bodies("orders-sns.jsonl");
    queue.send(&bodies).await;
    let drain = sqs2pg(&["drain"], &env);
    assert!(drain.status.success(), "{}", stderr(&drain));
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.drafted_orders").await,
        bodies.len() as i64,
        "every sample loads under the draft made from it"
    );
    assert!(reasons(&db).await.is_empty());
    let stored: String = crate::harness::one(
        &db,
        "SELECT coalesce(string_agg(t::text, ' '), '') FROM public.drafted_orders t",
    )
    .await;
    assert!(
        !stored.contains("@example.com"),
        "e-mail addresses are masked"
    );
}

/// What a mapping did not foresee reaches `rest` (or any jsonb column) masked: a field named
/// `Email` where the mapping masks `/email`, a producer's new `contact_email`, phone numbers
/// in an array of objects, an object keyed by e-mail addresses. Under `rest_personal =
/// "reject"` such a message is quarantined as `personal_data:rest` instead; under `"keep"` it
/// is stored as sent (what every mapping did before). Unknown fields are counted in the
/// summary and named once each in the log, their values never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_no_column_foresaw_never_reaches_rest_in_clear() {
    let (db, queue, key, protocol, dir) = case_on(Sqs::MotoJson, "sqs2pg-rest").await;
    let personal = [
        "Ann.Lee@example.com",
        "ann.work@example.org",
        "+44 20 7946 0958",
        "bob@example.net",
        "203.0.113.77",
        "Okonkwo-Baptiste",
    ];
    let bodies: Vec<String> = vec![
        // The mapped field, and the same address under another spelling of its name.
        r#"{"id":1,"email":"ann@example.com","Email":"Ann.Lee@example.com","amount":12.50}"#,
        r#"{"id":2,"contact_email":"ann.work@example.org","amount":1e400,"seen_from":"203.0.113.77"}"#,
        r#"{"id":3,"contacts":[{"kind":"home","phone":"+44 20 7946 0958"}],"lastName":"Okonkwo-Baptiste"}"#,
        r#"{"id":4,"visits":{"bob@example.net":3}}"#,
        r#"{"id":5,"note":"nothing personal","tags":["a","b"]}"#,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let mapping = |table: &str, policy: &str| {
        let file = dir.join(format!("{table}.toml"));
        std::fs::write(
            &file,
            format!(
                r#"table = "public.{table}"
{policy}
[[columns]]
name = "id"
from = "/id"
type = "integer"
required = true

[[columns]]
name = "masked_email"
from = "/email"
type = "varchar(256)"
mask = "hmac"

[[columns]]
name = "rest"
from = "rest"
type = "jsonb"
"#
            ),
        )
        .unwrap();
        file.display().to_string()
    };
    let stored = |table: &'static str| {
        let db = &db;
        async move {
            crate::harness::one::<String>(
                db,
                &format!(
                    "SELECT coalesce(string_agg(t::text, ' ' ORDER BY id), '') FROM public.{table} t"
                ),
            )
            .await
        }
    };

    // The default: masked.
    let masked = mapping("rest_masked", "");
    let env_masked = env(&db, &queue, &key, &protocol, &masked);
    let setup = sqs2pg(&["setup"], &env_masked);
    assert!(setup.status.success(), "{}", stderr(&setup));
    queue.send(&bodies).await;
    let drain = sqs2pg(&["drain"], &env_masked);
    assert!(drain.status.success(), "{}", stderr(&drain));
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.rest_masked").await,
        5
    );
    let text = stored("rest_masked").await;
    for raw in personal {
        assert!(!text.contains(raw), "{raw} stored in clear: {text}");
        assert!(!stderr(&drain).contains(raw), "{raw} in the log");
    }
    // What is not personal is kept exactly, digits and all.
    let rests: String = crate::harness::one(
        &db,
        "SELECT string_agg(rest::text, ' ' ORDER BY id) FROM public.rest_masked",
    )
    .await;
    for kept in [
        "\"amount\": 12.50",
        "\"note\": \"nothing personal\"",
        "\"kind\": \"home\"",
        "\"visits\": {",
        "\"tags\": [\"a\", \"b\"]",
    ] {
        assert!(rests.contains(kept), "{kept} kept: {rests}");
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.rest_masked WHERE rest->'amount' = '1e400'::jsonb"
        )
        .await,
        1
    );
    // The same address gives one token under the column's scope: the two spellings of
    // `Email` join.
    let same: i64 = count(
        &db,
        "SELECT count(*) FROM public.rest_masked WHERE id = 1 AND rest->>'Email' <> masked_email AND length(rest->>'Email') > 20",
    )
    .await;
    assert_eq!(same, 1, "the rest token is a token, under its own scope");
    // Unknown fields: counted, and named once each, never their values.
    let log = stderr(&drain);
    for name in [
        "Email",
        "contact_email",
        "contacts",
        "lastName",
        "visits",
        "seen_from",
    ] {
        assert_eq!(
            log.matches(&format!("field={name} ")).count()
                + log.matches(&format!("field={name}\n")).count()
                + log.matches(&format!("field=\"{name}\"")).count(),
            1,
            "{name} named once: {log}"
        );
    }
    let summary_unknown: u64 = stdout(&drain)
        .lines()
        .find(|l| l.trim_start().starts_with("unknown fields"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no unknown fields line: {}", stdout(&drain)));
    // amount x2, Email, contact_email, seen_from, contacts, lastName, visits, note, tags.
    assert_eq!(summary_unknown, 10, "{}", stdout(&drain));

    // Reject: the four messages with personal data are quarantined, the fifth loads.
    let rejecting = mapping("rest_rejecting", "rest_personal = \"reject\"");
    let env_rejecting = env(&db, &queue, &key, &protocol, &rejecting);
    let setup = sqs2pg(&["setup"], &env_rejecting);
    assert!(setup.status.success(), "{}", stderr(&setup));
    queue.send(&bodies).await;
    let drain = sqs2pg(&["drain"], &env_rejecting);
    assert!(drain.status.success(), "{}", stderr(&drain));
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.rest_rejecting").await,
        1
    );
    assert_eq!(reasons(&db).await, vec!["personal_data:rest"; 4]);
    let details: String = crate::harness::one(
        &db,
        "SELECT string_agg(detail, ' | ' ORDER BY detail) FROM sqs2pg.rejected_messages",
    )
    .await;
    assert!(details.contains("at `/contacts/0/phone`"), "{details}");
    assert!(details.contains("at `/visits/*`"), "{details}");
    for raw in personal {
        assert!(!details.contains(raw), "{raw} in a detail: {details}");
    }

    // Keep: the explicit opt-out stores what was sent.
    let keeping = mapping("rest_kept", "rest_personal = \"keep\"");
    let env_keeping = env(&db, &queue, &key, &protocol, &keeping);
    let setup = sqs2pg(&["setup"], &env_keeping);
    assert!(setup.status.success(), "{}", stderr(&setup));
    queue.send(&bodies).await;
    let drain = sqs2pg(&["drain"], &env_keeping);
    assert!(drain.status.success(), "{}", stderr(&drain));
    let text = stored("rest_kept").await;
    assert!(text.contains("Ann.Lee@example.com"), "{text}");
}

/// A table whose rules some rows break never stops the run: a row no partition takes and a
/// second row with an appended table's unique key are found by bisection and quarantined as
/// `table_refused:no_partition` and `table_refused:CONSTRAINT`, the rest load, and `check`
/// listed both rules beforehand. (Before, a batch all of whose rows broke such rules stopped
/// the run; one that only partly did quarantined them as `rejected_by_database`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_no_partition_takes_and_repeated_unique_keys_are_quarantined_and_the_rest_load() {
    let (db, queue, key, protocol, dir) = case_on(Sqs::MotoJson, "sqs2pg-rules").await;
    let file = dir.join("events.toml");
    std::fs::write(
        &file,
        r#"table = "public.events"
columns = [
  { name = "id", from = "/id", type = "integer", required = true },
  { name = "at", from = "/at", type = "timestamptz", required = true },
  { name = "ref", from = "/ref", type = "text" },
]
"#,
    )
    .unwrap();
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE public.events (id integer NOT NULL, at timestamptz NOT NULL, ref text,
                 CONSTRAINT one_event_per_ref UNIQUE (ref, at)) PARTITION BY RANGE (at);
             CREATE TABLE public.events_2026_12 PARTITION OF public.events
                 FOR VALUES FROM ('2026-12-01') TO ('2027-01-01');
             CREATE UNIQUE INDEX events_id_at ON public.events (id, at);",
        )
        .await
        .unwrap();
    let file = file.display().to_string();
    let env = env(&db, &queue, &key, &protocol, &file);
    let setup = sqs2pg(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    let check = sqs2pg(&["check"], &env);
    let said = stdout(&check);
    assert!(check.status.success(), "{said}");
    assert!(
        said.contains("partitioned by RANGE (at) into 1 partition(s) and no DEFAULT partition"),
        "{said}"
    );
    assert!(
        said.contains("unique key one_event_per_ref: UNIQUE (ref, at)"),
        "{said}"
    );
    assert!(said.contains("events_2026_12 FOR VALUES FROM ("), "{said}");
    assert!(
        said.contains("unique index events_id_at: CREATE UNIQUE INDEX"),
        "{said}"
    );
    // 40 events: three dated outside every partition, two repeating an earlier event's key.
    let bodies: Vec<String> = (1..=40)
        .map(|i| {
            let (day, reference) = match i {
                7 | 19 | 33 => ("2025-06-01".to_owned(), format!("r{i}")),
                12 => ("2026-12-06".to_owned(), "r5".to_owned()),
                28 => ("2026-12-21".to_owned(), "r20".to_owned()),
                _ => (format!("2026-12-{:02}", i % 28 + 1), format!("r{i}")),
            };
            format!(r#"{{"id":{i},"at":"{day}T00:00:00Z","ref":"{reference}"}}"#)
        })
        .collect();
    queue.send(&bodies).await;
    let drain = sqs2pg(&["drain"], &env);
    assert!(drain.status.success(), "{}", stderr(&drain));
    assert_eq!(count(&db, "SELECT count(*) FROM public.events").await, 35);
    let mut expected = vec!["table_refused:no_partition"; 3];
    // PostgreSQL names the partition's own copy of the key, as the reason does.
    expected.extend(["table_refused:events_2026_12_ref_at_key"; 2]);
    expected.sort();
    assert_eq!(reasons(&db).await, expected);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.events WHERE id IN (7, 19, 33)"
        )
        .await,
        0,
        "no partition takes these"
    );
    // Of two events with one key, one loads (which one depends on the order they arrive in).
    for pair in ["5, 12", "20, 28"] {
        assert_eq!(
            count(
                &db,
                &format!("SELECT count(*) FROM public.events WHERE id IN ({pair})")
            )
            .await,
            1,
            "{pair}"
        );
    }
}

/// A draft is safe as it stands: drafted from nested samples (personal fields named by their
/// parts, an array of contact objects, an object keyed by IP addresses, an array of strings
/// holding an address, an IBAN, a social security number), set up and drained unedited, it
/// leaves no raw personal value of the samples anywhere in the table, the draft or the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_of_nested_personal_data_stores_none_of_it_in_clear() {
    let (db, queue, key, protocol, dir) = case_on(Sqs::MotoJson, "sqs2pg-nested-draft").await;
    let people = [
        (
            "Ada",
            "Lovelace",
            "1815-12-10",
            "+44 20 7946 0958",
            "203.0.113.7",
            "GB82 WEST 1234 5698 7654 32",
        ),
        (
            "Grace",
            "Hopper",
            "1906-12-09",
            "+1 (212) 555-0142",
            "198.51.100.23",
            "DE89370400440532013000",
        ),
        (
            "Katherine",
            "Johnson",
            "1918-08-26",
            "+1 757 555 0187",
            "192.0.2.200",
            "FR1420041010050500013M02606",
        ),
        (
            "Hedy",
            "Lamarr",
            "1914-11-09",
            "+43 1 555 0199",
            "2001:db8::77",
            "NL91ABNA0417164300",
        ),
    ];
    let mut personal: Vec<String> = Vec::new();
    let bodies: Vec<String> = people
        .iter()
        .enumerate()
        .map(|(i, (first, last, dob, phone, ip, iban))| {
            let user = format!("{}_{}", first.to_lowercase(), last.to_lowercase());
            let email = format!("{user}@example.com");
            let work = format!("{}@work.example.org", last.to_lowercase());
            let ssn = format!("{:03}-45-67{:02}", 120 + i, 10 + i);
            personal.extend([
                first.to_string(),
                last.to_string(),
                dob.to_string(),
                phone.to_string(),
                ip.to_string(),
                iban.to_string(),
                user.clone(),
                email.clone(),
                work.clone(),
                ssn.clone(),
            ]);
            serde_json::json!({
                "id": format!("6f9619ff-8b86-d011-b42d-00c04fc964{:02x}", i),
                "profile": {
                    "firstName": first, "lastName": last, "user_email": email, "dob": dob,
                    "username": user, "email_verified": i % 2 == 0
                },
                "contacts": [{"kind": "work", "phone": phone, "email": work}],
                "visits_by_ip": {*ip: i + 1},
                "aliases": [work, "the countess"],
                "ssn": ssn,
                "iban": iban,
                "amount": 12.5 + i as f64,
                "note": "nothing to see"
            })
            .to_string()
        })
        .collect();
    let samples = dir.join("people.jsonl");
    std::fs::write(&samples, bodies.join("\n")).unwrap();
    let file = dir.join("people.toml");
    let draft = sqs2pg(
        &[
            "mapping",
            "draft",
            "--file",
            &samples.display().to_string(),
            "--table",
            "public.people",
            "--output",
            &file.display().to_string(),
        ],
        &[],
    );
    assert!(draft.status.success(), "{}", stderr(&draft));
    let text = std::fs::read_to_string(&file).unwrap();
    for (field, masked) in [
        ("profile_firstname", true),
        ("profile_lastname", true),
        ("profile_user_email", true),
        ("profile_dob", true),
        ("profile_username", true),
        ("ssn", true),
        ("iban", true),
        ("profile_email_verified", false),
        ("amount", false),
    ] {
        let name = if masked {
            format!("name = \"masked_{field}\"")
        } else {
            format!("name = \"{field}\"")
        };
        assert!(text.contains(&name), "{name} in {text}");
    }
    assert!(text.contains("# Scanned: "), "{text}");
    assert!(text.contains("at /*/email"), "{text}");
    assert!(text.contains("the values are IBANs"), "{text}");

    let file = file.display().to_string();
    let env = env(&db, &queue, &key, &protocol, &file);
    let setup = sqs2pg(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    queue.send(&bodies).await;
    let drain = sqs2pg(&["drain"], &env);
    assert!(drain.status.success(), "{}", stderr(&drain));
    assert_eq!(count(&db, "SELECT count(*) FROM public.people").await, 4);
    assert!(reasons(&db).await.is_empty());
    let stored: String =
        crate::harness::one(&db, "SELECT string_agg(t::text, ' ') FROM public.people t").await;
    assert!(
        stored.contains("the countess") && stored.contains("nothing to see"),
        "{stored}"
    );
    for raw in &personal {
        assert!(
            !stored.contains(raw.as_str()),
            "{raw} stored in clear: {stored}"
        );
        assert!(!text.contains(raw.as_str()), "{raw} in the draft");
        assert!(!stderr(&drain).contains(raw.as_str()), "{raw} in the log");
    }
}

/// A mapping with `match` on a mixed stream takes its event type only: the others are
/// quarantined as `no_mapping`, value-free, and once the mapping takes them too, a replay
/// loads them (those no mapping takes are quarantined again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_takes_its_event_types_and_no_mapping_messages_replay_once_taken() {
    let (db, queue, key, protocol, dir) = case_on(Sqs::LocalStack4, "sqs2pg-match").await;
    let file = dir.join("events.toml");
    let mapping = |types: &str| {
        format!(
            r#"table = "public.user_events"
match = {{ field = "/type", in = [{types}] }}
columns = [
  {{ name = "id", from = "/id", type = "integer", required = true }},
  {{ name = "type", from = "/type", type = "text", required = true }},
]
"#
        )
    };
    std::fs::write(&file, mapping(r#""user.updated""#)).unwrap();
    let bodies: Vec<String> = (0..300)
        .map(|i| match i % 5 {
            0..=2 => format!(r#"{{"id": {i}, "type": "user.updated"}}"#),
            3 => format!(r#"{{"id": {i}, "type": "page.viewed", "secret": "s-{i}"}}"#),
            _ => format!(r#"{{"id": {i}}}"#),
        })
        .collect();
    let file = file.display().to_string();
    let env = env(&db, &queue, &key, &protocol, &file);
    let setup = sqs2pg(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    queue.send(&bodies).await;
    let drain = sqs2pg(&["drain"], &env);
    assert!(drain.status.success(), "{}", stderr(&drain));
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_events").await,
        180
    );
    assert_eq!(reasons(&db).await, vec!["no_mapping"; 120]);
    let details: String = crate::harness::one(
        &db,
        "SELECT string_agg(DISTINCT detail, ' | ') FROM sqs2pg.rejected_messages",
    )
    .await;
    assert_eq!(
        details,
        "the mapping for public.user_events takes messages whose field /type is one of 1 value(s)"
    );

    // The mapping takes page views too now: a replay loads them; the untyped stay out.
    std::fs::write(&file, mapping(r#""user.updated", "page.viewed""#)).unwrap();
    let replay = sqs2pg(&["rejects", "replay", "--reason", "no_mapping"], &env);
    assert!(replay.status.success(), "{}", stderr(&replay));
    let drain = sqs2pg(&["drain"], &env);
    assert!(drain.status.success(), "{}", stderr(&drain));
    assert_eq!(
        count(&db, "SELECT count(*) FROM public.user_events").await,
        240
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM public.user_events WHERE type = 'page.viewed'"
        )
        .await,
        60
    );
    assert_eq!(queue.depth().await, 0);
}

/// `rekey` re-encrypts a mapping's reversible columns under the new key, each under its own
/// scope: `siv` tokens in a text column and `ipcrypt-pfx` addresses in an inet column give back
/// the same values under the new key, and the old key is retired on the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_moves_a_mappings_siv_and_ipcrypt_columns_to_the_new_key() {
    use sqs2pg::keys::MaskKey;
    use sqs2pg::mask::{ColumnMask, MaskMode};
    let (db, queue) = fixture_on(Sqs::MotoJson).await;
    let (old_text, new_text) = (
        MaskKey::generate_base64().unwrap(),
        MaskKey::generate_base64().unwrap(),
    );
    let (old, new) = (
        MaskKey::from_base64(&old_text).unwrap(),
        MaskKey::from_base64(&new_text).unwrap(),
    );
    let protocol = queue.protocol.to_string();
    let text = std::fs::read_to_string(example("orders-sns.toml")).unwrap();
    let siv = text.replace(
        r#"mask = "hmac", mask_scope = "email""#,
        r#"mask = "siv", mask_scope = "email""#,
    );
    assert_ne!(siv, text);
    let dir = std::env::temp_dir().join(unique("sqs2pg-rekey-mapping"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("orders.toml");
    std::fs::write(&file, siv).unwrap();
    let file = file.display().to_string();
    let env = env(&db, &queue, &old_text, &protocol, &file);
    assert!(sqs2pg(&["setup"], &env).status.success());
    queue.send(&bodies("orders-sns.jsonl")).await;
    let drain = sqs2pg(&["drain"], &env);
    assert!(drain.status.success(), "{}", stderr(&drain));

    let values = |key: &MaskKey| {
        (
            ColumnMask::new(key, MaskMode::Siv, "email"),
            ColumnMask::new(key, MaskMode::IpcryptPfx, "client_ip"),
        )
    };
    let read = || async {
        db.client()
            .await
            .query(
                "SELECT email_token, host(client_ip) FROM public.orders ORDER BY order_id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect::<Vec<_>>()
    };
    let open = |key: &MaskKey, rows: &[(String, String)]| {
        let (email, ip) = values(key);
        rows.iter()
            .map(|(e, i)| (email.unmask(e, false).unwrap(), ip.unmask(i, true).unwrap()))
            .collect::<Vec<_>>()
    };
    let before = read().await;
    assert_eq!(before.len(), 2);
    let plain = open(&old, &before);

    let database = sqs2pg::postgres::Database::parse(&db.url).unwrap();
    let table = sqs2pg::postgres::TableName::parse("public.orders").unwrap();
    let report = app::rekey(&database, &table, &old, &new, 1000)
        .await
        .unwrap();
    assert_eq!((report.rows, report.tokens, report.address_rows), (2, 2, 2));
    let after = read().await;
    assert!(after
        .iter()
        .all(|(e, _)| e.starts_with(&format!("{}.s.", new.key_id()))));
    assert!(
        after.iter().zip(&before).all(|(a, b)| a.1 != b.1),
        "addresses moved"
    );
    assert_eq!(
        open(&new, &after),
        plain,
        "the same values under the new key"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM sqs2pg.mask_keys
              WHERE table_name = 'public.orders' AND retired_to IS NOT NULL"
        )
        .await,
        1
    );
    // A run under the old key now refuses to start.
    let refused = sqs2pg(&["drain"], &env);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("retired"), "{}", stderr(&refused));
}

/// `check` and the runs refuse a table with a NOT NULL column, without a default, that the
/// mapping leaves out (no row could be inserted), and a column of another type; both named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_column_the_mapping_cannot_fill_and_one_of_another_type() {
    let (db, queue) = fixture_on(Sqs::MotoJson).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let protocol = queue.protocol.to_string();
    let mapping = example("orders-sns.toml").display().to_string();
    let env = env(&db, &queue, &key, &protocol, &mapping);
    assert!(sqs2pg(&["setup"], &env).status.success());
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE public.orders ADD COLUMN region text NOT NULL;
             ALTER TABLE public.orders ALTER COLUMN currency TYPE varchar(2)",
        )
        .await
        .unwrap();
    let check = sqs2pg(&["check"], &env);
    assert!(!check.status.success());
    let text = stdout(&check);
    assert!(
        text.contains("extra column region is NOT NULL without a default"),
        "{text}"
    );
    assert!(
        text.contains("column currency is character varying(2), expected character varying(3)"),
        "{text}"
    );
    let drain = sqs2pg(&["drain"], &env);
    assert_eq!(drain.status.code(), Some(1), "{}", stderr(&drain));
    assert!(stderr(&drain).contains("region"), "{}", stderr(&drain));
}
