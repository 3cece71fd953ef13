//! Keyed write modes (`ignore`, `upsert`, `latest`) against real PostgreSQL: random streams of
//! (key, version, operation) messages, with resends under new message ids, equal versions and
//! send times, a key up to five times in one batch and delete, update, delete in one batch, cut
//! into random batches and loaded through the real loader, give the state and the
//! `duplicate_key` and `stale` counts a model computes; and a table without a unique index on
//! the key is refused with the SQL that fixes it.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use sqs2pg::kind::Delivery;
use sqs2pg::kind::{Message, MessageKind};
use sqs2pg::mapping::{Mapper, Mapping};
use sqs2pg::pipeline::batch::{Batch, HeldBody, Row};
use sqs2pg::pipeline::BatchLoader;
use sqs2pg::postgres::{Database, TableLoader, TableName};

use crate::harness::{unique, TestDb};

/// One message of the stream.
#[derive(Debug, Clone)]
struct Op {
    key: i32,
    version: i64,
    /// `None`: a delete.
    payload: Option<u8>,
    sent_ms: i64,
    message_id: String,
}

impl Op {
    fn body(&self) -> String {
        match self.payload {
            Some(p) => format!(
                r#"{{"type":"put","id":{},"version":{},"payload":"p{p}"}}"#,
                self.key, self.version
            ),
            None => format!(
                r#"{{"type":"del","id":{},"version":{}}}"#,
                self.key, self.version
            ),
        }
    }
}

fn mapping(table: &str, mode: &str) -> Mapping {
    let (write, delete) = match mode {
        "latest" => (
            r#"write = { mode = "latest", key = ["id"], version = "version" }"#,
            r#"delete = { field = "/type", equals = "del" }"#,
        ),
        "upsert" => (
            r#"write = { mode = "upsert", key = ["id"] }"#,
            r#"delete = { field = "/type", equals = "del" }"#,
        ),
        _ => (r#"write = { mode = "ignore", key = ["id"] }"#, ""),
    };
    Mapping::parse(&format!(
        r#"table = "{table}"
{write}
{delete}
[[columns]]
name = "id"
from = "/id"
type = "integer"
[[columns]]
name = "version"
from = "/version"
type = "bigint"
[[columns]]
name = "payload"
from = "/payload"
type = "text"
"#
    ))
    .unwrap()
}

/// What the table should hold and count, computed batch by batch as the modes are defined.
#[derive(Default)]
struct Model {
    /// key -> (version, payload) of the live row.
    rows: BTreeMap<i32, (i64, u8)>,
    /// latest: key -> (version, deletes, sent_ms, message id), live or tombstone.
    versions: BTreeMap<i32, (i64, bool, i64, String)>,
    /// upsert: each key's current state (None after a delete).
    current: BTreeMap<i32, Option<(i64, u8)>>,
    duplicate_keys: u64,
    stale: u64,
}

impl Model {
    fn load(&mut self, mode: &str, batch: &[Op]) {
        match mode {
            "ignore" => {
                for op in batch {
                    let payload = op.payload.expect("ignore streams have no deletes");
                    match self.rows.entry(op.key) {
                        std::collections::btree_map::Entry::Occupied(_) => self.duplicate_keys += 1,
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert((op.version, payload));
                        }
                    }
                }
            }
            "upsert" => {
                // Row by row in the order received: a row equal to its key's current state
                // is a resend; the key's last row is what the table ends with.
                for op in batch {
                    let state = op.payload.map(|p| (op.version, p));
                    let current = self.current.entry(op.key).or_default();
                    if state.is_some() && *current == state {
                        self.duplicate_keys += 1;
                        continue;
                    }
                    *current = state;
                    match state {
                        Some(row) => self.rows.insert(op.key, row),
                        None => self.rows.remove(&op.key),
                    };
                }
            }
            _ => {
                // A delete wins over an update of the same version.
                let order = |op: &Op| {
                    (
                        op.version,
                        op.payload.is_none(),
                        op.sent_ms,
                        op.message_id.clone(),
                    )
                };
                let mut best: BTreeMap<i32, &Op> = BTreeMap::new();
                for op in batch {
                    let better = best.get(&op.key).is_none_or(|b| order(op) > order(b));
                    if better {
                        best.insert(op.key, op);
                    }
                }
                let mut won = 0;
                for (key, op) in best {
                    if self.versions.get(&key).is_some_and(|v| order(op) <= *v) {
                        continue;
                    }
                    won += 1;
                    self.versions.insert(key, order(op));
                    match op.payload {
                        Some(p) => self.rows.insert(key, (op.version, p)),
                        None => self.rows.remove(&key),
                    };
                }
                self.stale += batch.len() as u64 - won;
            }
        }
    }
}

/// A random stream for `mode`, cut into batches: keys 0..4, versions 0..6, send times from a
/// small range (so equal versions and equal times happen), a fifth of the messages resent
/// later under a new id, and a delete, update, delete of one key pushed into one batch.
fn stream(mode: &str, tag: &str, runner: &mut proptest::test_runner::TestRunner) -> Vec<Vec<Op>> {
    let deletes = mode != "ignore";
    let op = (0..4i32, 0..6i64, 0..4u8, 0..8i64, 0..5u8);
    let ops = proptest::collection::vec(op, 10..40)
        .new_tree(runner)
        .unwrap()
        .current();
    let mut all: Vec<Op> = Vec::new();
    let mut next_id = 0;
    let mut id = || {
        next_id += 1;
        // Ids in an order of their own, not the send order: the tie-break is by id text.
        format!("{tag}-{:04x}", (next_id * 7919) % 65536)
    };
    for (key, version, payload, sent, kind) in ops {
        let payload = if deletes && kind == 0 {
            None
        } else {
            Some(payload)
        };
        let op = Op {
            key,
            version,
            payload,
            sent_ms: 1_700_000_000_000 + sent,
            message_id: id(),
        };
        if kind == 1 {
            // A producer's resend (or a redrive): the same body under a new id, later.
            let mut again = op.clone();
            again.message_id = id();
            again.sent_ms += 3;
            all.push(op);
            all.push(again);
        } else {
            all.push(op);
        }
    }
    // Cut into batches of 1 to 8.
    let cuts = proptest::collection::vec(1..9usize, 40)
        .new_tree(runner)
        .unwrap()
        .current();
    let mut batches = Vec::new();
    let mut rest = all.as_slice();
    for cut in cuts {
        if rest.is_empty() {
            break;
        }
        let n = cut.min(rest.len());
        batches.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        batches.push(rest.to_vec());
    }
    // One key five times in one batch, and delete -> update -> delete in one batch.
    let mut crowded: Vec<Op> = (0..5)
        .map(|i| Op {
            key: 3,
            version: 2 + i % 3,
            payload: Some(i as u8),
            sent_ms: 1_700_000_000_010,
            message_id: id(),
        })
        .collect();
    if deletes {
        for (version, payload) in [(7, None), (8, Some(1)), (9, None)] {
            crowded.push(Op {
                key: 2,
                version,
                payload,
                sent_ms: 1_700_000_000_020,
                message_id: id(),
            });
        }
    }
    let at = batches.len() / 2;
    batches.insert(at, crowded);
    // A state, another, the first again; a state, a delete, the state again; a delete and an
    // update of one version: each in batches of their own.
    let mut op = |key, version, payload: Option<u8>| Op {
        key,
        version,
        payload,
        sent_ms: 1_700_000_000_030,
        message_id: id(),
    };
    let mut tail = vec![
        vec![op(1, 20, Some(1))],
        vec![op(1, 21, Some(2))],
        vec![op(1, 20, Some(1))],
    ];
    if deletes {
        tail.extend([
            vec![op(0, 30, Some(3))],
            vec![op(0, 31, None)],
            vec![op(0, 30, Some(3))],
            vec![op(2, 40, Some(1)), op(2, 40, None)],
            vec![op(2, 40, Some(2))],
        ]);
    }
    batches.extend(tail);
    batches
}

fn batch_of(mapper: &Mapper, ops: &[Op]) -> Batch {
    let rows = ops
        .iter()
        .enumerate()
        .map(|(ack_index, op)| {
            let body = op.body();
            let message = Message::new(&body, &op.message_id, op.sent_ms);
            Row {
                ack_index,
                suspect: false,
                message_id: op.message_id.clone(),
                rows: mapper.transform(&message).outcome.unwrap(),
                delivery: Delivery {
                    received_at: std::time::SystemTime::now(),
                    receive_count: 1,
                    sent_timestamp: op.sent_ms,
                    ledger_ms: op.sent_ms,
                },
                body: HeldBody::new(body, Default::default()),
            }
        })
        .collect();
    Batch::part(rows, Vec::new())
}

async fn table_state(db: &TestDb, table: &str) -> BTreeMap<i32, (i64, u8)> {
    db.client()
        .await
        .query(&format!("SELECT id, version, payload FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let payload: String = r.get(2);
            (
                r.get::<_, i32>(0),
                (r.get::<_, i64>(1), payload[1..].parse().unwrap()),
            )
        })
        .collect()
}

async fn property_holds(mode: &str, cases: usize) {
    let db = TestDb::new().await;
    let database = Database::parse(&db.url).unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for case in 0..cases {
        let table = format!("public.{}", unique(mode));
        let mapping = mapping(&table, mode);
        let name = TableName::parse(&table).unwrap();
        sqs2pg::app::setup_for(
            &database,
            &name,
            &sqs2pg::app::target::Target::of_mapping(&mapping).shape(false),
        )
        .await
        .unwrap();
        let key =
            sqs2pg::keys::MaskKey::from_base64(&sqs2pg::keys::MaskKey::generate_base64().unwrap())
                .unwrap();
        let mapper = Mapper::new(mapping, &key);
        let targets: Vec<_> = mapper
            .writes()
            .into_iter()
            .map(|w| (name.clone(), w))
            .collect();
        let mut loader = TableLoader::new(database.clone(), &targets, "k".into());
        let mut model = Model::default();
        let (mut duplicate_keys, mut stale) = (0, 0);
        for ops in stream(mode, name.name(), &mut runner) {
            let report = loader.load(&batch_of(&mapper, &ops)).await.unwrap();
            assert_eq!(report.loaded, ops.len() as u64, "every message is new");
            duplicate_keys += report.duplicate_keys;
            stale += report.stale;
            model.load(mode, &ops);
        }
        assert_eq!(
            table_state(&db, &table).await,
            model.rows,
            "{mode}, case {case}: the table is the model's state"
        );
        assert_eq!(
            (duplicate_keys, stale),
            (model.duplicate_keys, model.stale),
            "{mode}, case {case}: duplicate_key and stale counts"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_keeps_the_greatest_version_whatever_the_batches() {
    property_holds("latest", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_keeps_the_last_row_processed_and_skips_resends() {
    property_holds("upsert", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_keeps_the_first_row_of_each_key() {
    property_holds("ignore", 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_table_needs_a_unique_index_on_its_key() {
    let db = TestDb::new().await;
    let database = Database::parse(&db.url).unwrap();
    let table = format!("public.{}", unique("nokey"));
    let mapping = mapping(&table, "latest");
    let name = TableName::parse(&table).unwrap();
    let shape = sqs2pg::app::target::Target::of_mapping(&mapping).shape(false);
    // Made by hand, without a key.
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id integer, version bigint, payload text)"
        ))
        .await
        .unwrap();
    sqs2pg::app::setup_for(&database, &name, &shape)
        .await
        .unwrap();
    let client = db.client().await;
    let refused = sqs2pg::postgres::schema::check_shape(&client, &name, &shape)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("no unique index on exactly (id)")
            && refused.contains(&format!("CREATE UNIQUE INDEX \"{}_id_key\"", name.name())),
        "{refused}"
    );
    // The SQL it names fixes it; a partial index would not have.
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE UNIQUE INDEX partial ON {table} (id) WHERE id > 0"
        ))
        .await
        .unwrap();
    assert!(
        sqs2pg::postgres::schema::check_shape(&client, &name, &shape)
            .await
            .is_err()
    );
    db.client()
        .await
        .batch_execute(&sqs2pg::postgres::keyed::unique_index_fix(
            &name,
            &["id".to_owned()],
        ))
        .await
        .unwrap();
    sqs2pg::postgres::schema::check_shape(&client, &name, &shape)
        .await
        .unwrap();
    // And `setup` makes a new keyed table with the key as its primary key.
    let fresh = TableName::parse(&format!("public.{}", unique("withkey"))).unwrap();
    sqs2pg::app::setup_for(&database, &fresh, &shape)
        .await
        .unwrap();
    sqs2pg::postgres::schema::check_shape(&client, &fresh, &shape)
        .await
        .unwrap();
}

/// Under `latest` the outcome never depends on which replica wins a race: two loaders on their
/// own connections load alternate batches of one stream at once (updates and deletes of the
/// same few keys crossing), and the table ends as the greatest version of each key says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_holds_with_two_loaders_racing_on_the_same_keys() {
    let db = TestDb::new().await;
    let database = Database::parse(&db.url).unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let key =
        sqs2pg::keys::MaskKey::from_base64(&sqs2pg::keys::MaskKey::generate_base64().unwrap())
            .unwrap();
    for case in 0..30 {
        let table = format!("public.{}", unique("race"));
        let mapping = mapping(&table, "latest");
        let name = TableName::parse(&table).unwrap();
        sqs2pg::app::setup_for(
            &database,
            &name,
            &sqs2pg::app::target::Target::of_mapping(&mapping).shape(false),
        )
        .await
        .unwrap();
        let mapper = Mapper::new(mapping, &key);
        let targets: Vec<_> = mapper
            .writes()
            .into_iter()
            .map(|w| (name.clone(), w))
            .collect();
        let batches = stream("latest", name.name(), &mut runner);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (i, batch) in batches.iter().enumerate() {
            if i % 2 == 0 {
                a.push(batch_of(&mapper, batch));
            } else {
                b.push(batch_of(&mapper, batch));
            }
        }
        let load = |part: Vec<Batch>| {
            let mut loader = TableLoader::new(database.clone(), &targets, "k".into());
            async move {
                for batch in &part {
                    // A deadlock or lock wait is the pipeline's to retry; here, once more.
                    if loader.load(batch).await.is_err() {
                        loader.load(batch).await.unwrap();
                    }
                }
            }
        };
        tokio::join!(load(a), load(b));
        let mut model = Model::default();
        model.load("latest", &batches.concat());
        assert_eq!(
            table_state(&db, &table).await,
            model.rows,
            "case {case}: the greatest version of each key, whoever loaded it"
        );
    }
}

/// Under `upsert` two replicas racing on the same keys leave, for each key, the last row one
/// of them wrote (the last operation of one loader on that key: nothing torn, nothing from an
/// older batch). A deadlock PostgreSQL finds between them (an insert and a delete of two keys
/// crossing: deletes run after the key-ordered writes) is retried as a whole load, as the
/// pipeline retries it; nothing else may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_holds_with_two_loaders_racing_on_the_same_keys() {
    let db = TestDb::new().await;
    let database = Database::parse(&db.url).unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let key =
        sqs2pg::keys::MaskKey::from_base64(&sqs2pg::keys::MaskKey::generate_base64().unwrap())
            .unwrap();
    for case in 0..30 {
        let table = format!("public.{}", unique("uprace"));
        let mapping = mapping(&table, "upsert");
        let name = TableName::parse(&table).unwrap();
        sqs2pg::app::setup_for(
            &database,
            &name,
            &sqs2pg::app::target::Target::of_mapping(&mapping).shape(false),
        )
        .await
        .unwrap();
        let mapper = Mapper::new(mapping, &key);
        let targets: Vec<_> = mapper
            .writes()
            .into_iter()
            .map(|w| (name.clone(), w))
            .collect();
        let batches = stream("upsert", name.name(), &mut runner);
        let (a, b): (Vec<_>, Vec<_>) = batches.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let ops = |part: &[(usize, &Vec<Op>)]| -> Vec<Op> {
            part.iter()
                .flat_map(|(_, ops)| ops.iter().cloned())
                .collect()
        };
        let (ops_a, ops_b) = (ops(&a), ops(&b));
        let load = |part: Vec<(usize, &Vec<Op>)>| {
            let mut loader = TableLoader::new(database.clone(), &targets, "k".into());
            let part: Vec<Batch> = part.iter().map(|(_, ops)| batch_of(&mapper, ops)).collect();
            async move {
                for batch in &part {
                    let mut attempts = 0;
                    loop {
                        match loader.load(batch).await {
                            Ok(_) => break,
                            Err(e) => {
                                // Only a deadlock is the pipeline's to retry here.
                                let deadlock = e.server.as_ref().is_some_and(|s| {
                                    s.sqlstate
                                        == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                                            .code()
                                });
                                attempts += 1;
                                assert!(deadlock && attempts < 20, "{e}");
                            }
                        }
                    }
                }
            }
        };
        tokio::join!(load(a), load(b));
        // Each loader's own last word on each key.
        let last = |ops: &[Op]| -> BTreeMap<i32, Option<(i64, u8)>> {
            ops.iter()
                .map(|op| (op.key, op.payload.map(|p| (op.version, p))))
                .collect()
        };
        let (last_a, last_b) = (last(&ops_a), last(&ops_b));
        let state = table_state(&db, &table).await;
        for k in last_a.keys().chain(last_b.keys()) {
            let row = state.get(k).copied();
            let candidates = [last_a.get(k).copied(), last_b.get(k).copied()];
            assert!(
                candidates.contains(&Some(row)),
                "case {case}, key {k}: {row:?} is neither loader's last word {candidates:?}"
            );
        }
        assert!(
            state
                .keys()
                .all(|k| last_a.contains_key(k) || last_b.contains_key(k)),
            "case {case}: a row for a key nobody sent"
        );
    }
}

/// Under `upsert` a producer's retry is a resend even though SQS gives it a new message id
/// and send time (columns of the delivery are not compared), over a key of two columns, one
/// of them numeric (`1.0` and `1.00` are one key); a changed value replaces the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upsert_retry_with_a_new_message_id_and_send_time_changes_nothing() {
    let db = TestDb::new().await;
    let database = Database::parse(&db.url).unwrap();
    let table = format!("public.{}", unique("retry"));
    let mapping = Mapping::parse(&format!(
        r#"
table = "{table}"
write = {{ mode = "upsert", key = ["store", "sku"] }}
[[columns]]
name = "store"
from = "/store"
type = "numeric"
[[columns]]
name = "sku"
from = "/sku"
type = "text"
[[columns]]
name = "price"
from = "/price"
type = "numeric"
[[columns]]
name = "sent_at"
from = "sqs:SentTimestamp"
type = "timestamptz"
[[columns]]
name = "message_id"
from = "sqs:MessageId"
type = "text"
"#
    ))
    .unwrap();
    let name = TableName::parse(&table).unwrap();
    sqs2pg::app::setup_for(
        &database,
        &name,
        &sqs2pg::app::target::Target::of_mapping(&mapping).shape(false),
    )
    .await
    .unwrap();
    let key =
        sqs2pg::keys::MaskKey::from_base64(&sqs2pg::keys::MaskKey::generate_base64().unwrap())
            .unwrap();
    let mapper = Mapper::new(mapping, &key);
    let targets: Vec<_> = mapper
        .writes()
        .into_iter()
        .map(|w| (name.clone(), w))
        .collect();
    let mut loader = TableLoader::new(database.clone(), &targets, "k".into());
    let batch = |body: &str, id: &str, sent_ms: i64| {
        let message = Message::new(body, id, sent_ms);
        Batch::part(
            vec![Row {
                ack_index: 0,
                suspect: false,
                message_id: id.to_owned(),
                rows: mapper.transform(&message).outcome.unwrap(),
                delivery: Delivery {
                    received_at: std::time::SystemTime::now(),
                    receive_count: 1,
                    sent_timestamp: sent_ms,
                    ledger_ms: sent_ms,
                },
                body: HeldBody::new(body.to_owned(), Default::default()),
            }],
            Vec::new(),
        )
    };
    let first = loader
        .load(&batch(
            r#"{"store": 1.0, "sku": "a", "price": 5}"#,
            "m1",
            1_700_000_000_000,
        ))
        .await
        .unwrap();
    assert_eq!((first.loaded, first.duplicate_keys), (1, 0));
    // The producer's retry: new id, later send time, the key spelled 1.00.
    let retry = loader
        .load(&batch(
            r#"{"store": 1.00, "sku": "a", "price": 5}"#,
            "m2",
            1_700_000_005_000,
        ))
        .await
        .unwrap();
    assert_eq!((retry.loaded, retry.duplicate_keys), (1, 1));
    let row = |sql: &str| {
        let db = &db;
        let sql = sql.to_owned();
        async move {
            db.client()
                .await
                .query_one(&sql, &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let select =
        format!("SELECT message_id || ' ' || price || ' ' || count(*) OVER () FROM {table}");
    assert_eq!(
        row(&select).await,
        "m1 5 1",
        "the first delivery's row stays"
    );
    // A changed price replaces it, whoever delivered it.
    let change = loader
        .load(&batch(
            r#"{"store": 1, "sku": "a", "price": 6}"#,
            "m3",
            1_700_000_009_000,
        ))
        .await
        .unwrap();
    assert_eq!((change.loaded, change.duplicate_keys), (1, 0));
    assert_eq!(row(&select).await, "m3 6 1");
}
