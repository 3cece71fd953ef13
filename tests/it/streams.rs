//! Real streams (issue 26), end to end with real processes on LocalStack 4 and PostgreSQL: one
//! queue carrying users (latest, with deletes), orders (ignore, with producer retries), carts
//! (upsert, with resends), page views (append), types no mapping takes and bad bodies, in a
//! shuffled order, served by the four mappings of `examples/streams/` at once. Every table must
//! equal what the test computes from the stream itself; a dead-letter redrive (the same bodies
//! again under new message ids) must leave the keyed tables unchanged. (Each cart has one
//! state, so the order of a shuffled stream cannot matter to it: under `upsert` the last row
//! processed wins, and an older state redriven after a newer one would win too; what upsert
//! does with several states of a key, deletes and races is `keyed.rs`'s to test.)
//!
//! The slow tier runs it at 20,000 messages over two queues (orders and page views on the
//! second, named by their mappings' `queue`) with three concurrent drains, one of them killed
//! (SIGKILL) and started again; the fast tier at 1,000 messages on one queue with one drain,
//! and one `run` over two queues, one missing at first.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{command, sqs2pg, stderr, Sqs, TestDb, TestQueue};

const MAPPINGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/streams");

/// A stream of `scale` twentieths of 20,000 messages, shuffled; and what each table must hold.
struct Stream {
    bodies: Vec<String>,
    /// user id -> (version, plan) of the live row.
    users: BTreeMap<String, (i64, String)>,
    /// order id -> amount, as text with two decimals.
    orders: BTreeMap<String, String>,
    /// cart id -> items.
    carts: BTreeMap<String, i32>,
    page_views: usize,
    no_mapping: usize,
    invalid: usize,
    /// Bodies of the keyed types, for the redrive.
    keyed: Vec<String>,
}

/// A small deterministic generator (the test must know what it sent; no crate needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn stream(scale: usize) -> Stream {
    let n = |full: usize| full * scale / 20;
    let mut bodies = Vec::new();
    let mut keyed = Vec::new();
    let user = |id: usize, v: i64, plan: &str| {
        format!(
            r#"{{"type":"user.updated","version":{v},"user":{{"id":"u{id}","email":"u{id}@example.com","plan":"{plan}"}}}}"#
        )
    };
    // Users: ten versions each; the first half deleted at version 11, a fifth of those made
    // again at 12; the deleted ones also get a late update at version 3 (older than the delete).
    let (users, deleted, remade) = (n(500), n(250), n(50));
    let mut model_users = BTreeMap::new();
    for id in 0..users {
        for v in 1..=10 {
            keyed.push(user(id, v, &format!("plan-{v}")));
        }
        if id < deleted {
            keyed.push(format!(
                r#"{{"type":"user.deleted","version":11,"user":{{"id":"u{id}"}}}}"#
            ));
            keyed.push(user(id, 3, "late"));
        }
        if id < remade {
            keyed.push(user(id, 12, "back"));
            model_users.insert(format!("u{id}"), (12, "back".to_owned()));
        } else if id >= deleted {
            model_users.insert(format!("u{id}"), (10, "plan-10".to_owned()));
        }
    }
    // Orders: each once, and a producer's retries of some (the same order, sent again).
    let (orders, retried) = (n(3000), n(700));
    let order = |id: usize| {
        format!(
            r#"{{"type":"order.placed","order":{{"id":"o{id}","amount":{}.{:02},"customer":"c{}@example.com"}}}}"#,
            id % 500,
            id % 100,
            id % 97
        )
    };
    let mut model_orders = BTreeMap::new();
    for id in 0..orders {
        keyed.push(order(id));
        model_orders.insert(format!("o{id}"), format!("{}.{:02}", id % 500, id % 100));
    }
    for id in 0..retried {
        keyed.push(order(id * 3 % orders));
    }
    // Carts: one state each, some resent.
    let (carts, resent) = (n(1200), n(300));
    let cart = |id: usize| {
        format!(
            r#"{{"type":"cart.updated","cart":{{"id":"k{id}","items":{}}}}}"#,
            id % 13
        )
    };
    let mut model_carts = BTreeMap::new();
    for id in 0..carts {
        keyed.push(cart(id));
        model_carts.insert(format!("k{id}"), (id % 13) as i32);
    }
    for id in 0..resent {
        keyed.push(cart(id * 7 % carts));
    }
    bodies.extend(keyed.iter().cloned());
    // Page views: an event log.
    let page_views = n(9000);
    for i in 0..page_views {
        bodies.push(format!(
            r#"{{"type":"page.viewed","user":"u{}","path":"/p/{}","at":{}}}"#,
            i % 500,
            i % 37,
            1_700_000_000_000i64 + i as i64
        ));
    }
    // Types no mapping takes, and users without an id.
    let no_mapping = n(250);
    for i in 0..no_mapping {
        bodies.push(format!(r#"{{"type":"system.heartbeat","n":{i}}}"#));
    }
    let invalid = n(50);
    for i in 0..invalid {
        bodies.push(format!(
            r#"{{"type":"user.updated","version":{i},"user":{{"plan":"x"}}}}"#
        ));
    }
    // Shuffled (Fisher-Yates): versions arrive out of order, deletes before updates.
    let mut rng = Lcg(20_000 + scale as u64);
    for i in (1..bodies.len()).rev() {
        let j = rng.below(i + 1);
        bodies.swap(i, j);
    }
    Stream {
        bodies,
        users: model_users,
        orders: model_orders,
        carts: model_carts,
        page_views,
        no_mapping,
        invalid,
        keyed,
    }
}

fn env<'a>(
    db: &'a TestDb,
    queue: &'a TestQueue,
    key: &'a str,
    mappings: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("AWS_ENDPOINT_URL", &queue.endpoint),
        ("SQS2PG_MASK_KEY", key),
        ("SQS2PG_MAPPING", mappings),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        // Short: what a killed process held comes back within seconds.
        ("SQS2PG_VISIBILITY_TIMEOUT_SECS", "10"),
    ]
}

fn send(bodies: &[String], env: &[(&str, &str)]) {
    let file = std::env::temp_dir().join(crate::harness::unique("stream"));
    std::fs::write(&file, bodies.join("\n") + "\n").unwrap();
    let sent = sqs2pg(&["send", "--file", file.to_str().unwrap()], env);
    assert!(sent.status.success(), "{}", stderr(&sent));
    let _ = std::fs::remove_file(&file);
}

/// Everything the four tables hold, as text, for comparing before and after a redrive.
async fn snapshot(db: &TestDb) -> Vec<String> {
    let client = db.client().await;
    let mut all = Vec::new();
    for sql in [
        "SELECT user_id || ':' || version || ':' || plan || ':' || email FROM public.users ORDER BY 1",
        "SELECT order_id || ':' || amount || ':' || customer FROM public.orders ORDER BY 1",
        "SELECT cart_id || ':' || items FROM public.carts ORDER BY 1",
        "SELECT count(*)::text FROM public.page_views",
    ] {
        for row in client.query(sql, &[]).await.unwrap() {
            all.push(row.get::<_, String>(0));
        }
    }
    all
}

/// Each table equals the model; the quarantine holds exactly the unmatched and bad bodies.
async fn assert_tables(db: &TestDb, s: &Stream) {
    let client = db.client().await;
    let users: BTreeMap<String, (i64, String)> = client
        .query("SELECT user_id, version, plan FROM public.users", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(users.len(), s.users.len(), "live users");
    assert_eq!(
        users, s.users,
        "every user at its greatest version, deletes kept"
    );
    let tokens_only: i64 = client
        .query_one(
            "SELECT count(*) FROM public.users WHERE email LIKE '%@%' OR length(email) < 20",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tokens_only, 0, "emails are tokens");
    let orders: BTreeMap<String, String> = client
        .query("SELECT order_id, amount::text FROM public.orders", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(orders, s.orders, "each order once");
    let carts: BTreeMap<String, i32> = client
        .query("SELECT cart_id, items FROM public.carts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(carts, s.carts, "each cart's state");
    let views: i64 = client
        .query_one("SELECT count(*) FROM public.page_views", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(views as usize, s.page_views, "every page view once");
    let reasons: BTreeMap<String, i64> = client
        .query(
            "SELECT reason, count(*) FROM sqs2pg.rejected_messages GROUP BY reason",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected = BTreeMap::new();
    if s.no_mapping > 0 {
        expected.insert("no_mapping".to_owned(), s.no_mapping as i64);
    }
    if s.invalid > 0 {
        expected.insert("missing_field:user_id".to_owned(), s.invalid as i64);
    }
    assert_eq!(
        reasons, expected,
        "only the unmatched and the bad are quarantined"
    );
    let ledger: i64 = client
        .query_one("SELECT count(*) FROM sqs2pg.ledger", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        ledger as usize,
        s.bodies.len(),
        "one ledger entry per message"
    );
}

/// A number from a summary line (`  stale versions   12`), summed over the outputs.
fn summed(outputs: &[&Output], label: &str) -> u64 {
    outputs
        .iter()
        .filter_map(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                let rest = l.trim().strip_prefix(label)?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
        })
        .sum()
}

/// Whether a body goes to the second queue, when there are two: orders and page views.
fn second_queue(body: &str) -> bool {
    body.contains("order.placed") || body.contains("page.viewed")
}

/// Sends each body to its queue: the second's (orders and page views, whose mappings name it)
/// when there is one, else the run's.
fn send_all(bodies: &[String], env: &[(&str, &str)], second: Option<&TestQueue>) {
    let Some(second) = second else {
        return send(bodies, env);
    };
    let (there, here): (Vec<String>, Vec<String>) =
        bodies.iter().cloned().partition(|b| second_queue(b));
    send(&here, env);
    let mut to_second: Vec<(&str, &str)> = env.to_vec();
    to_second.retain(|(k, _)| *k != "SQS2PG_QUEUE_URL");
    to_second.push(("SQS2PG_QUEUE_URL", &second.url));
    send(&there, &to_second);
}

async fn served(scale: usize, drains: usize, kill: bool, two_queues: bool) {
    let (db, queue) = (TestDb::new().await, TestQueue::on(Sqs::LocalStack4).await);
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    // With two queues: the orders and page views mappings name the second (`queue`); the
    // users and carts mappings read the run's.
    let second = if two_queues {
        Some(TestQueue::on(Sqs::LocalStack4).await)
    } else {
        None
    };
    let mappings = match &second {
        None => MAPPINGS.to_owned(),
        Some(second) => {
            let dir = std::env::temp_dir().join(crate::harness::unique("streams"));
            std::fs::create_dir_all(&dir).unwrap();
            for entry in std::fs::read_dir(MAPPINGS).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                let text = std::fs::read_to_string(&path).unwrap();
                let text = if name.contains("orders") || name.contains("page-views") {
                    format!("queue = \"{}\"\n{text}", second.url)
                } else {
                    text
                };
                std::fs::write(dir.join(name), text).unwrap();
            }
            dir.to_str().unwrap().to_owned()
        }
    };
    let env = env(&db, &queue, &key, &mappings);
    let setup = sqs2pg(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    let check = sqs2pg(&["check"], &env);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let s = stream(scale);
    send_all(&s.bodies, &env, second.as_ref());

    let started = Instant::now();
    let spawn = || {
        command(&["drain"], &env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children: Vec<_> = (0..drains).map(|_| spawn()).collect();
    if kill {
        // Once a quarter is in, one drain is killed mid-flight and another takes its place.
        let deadline = Instant::now() + Duration::from_secs(300);
        while crate::harness::count(&db, "SELECT count(*) FROM sqs2pg.ledger").await
            < (s.bodies.len() / 4) as i64
        {
            assert!(Instant::now() < deadline, "no progress");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut victim = children.remove(0);
        victim.kill().unwrap();
        victim.wait().unwrap();
        children.push(spawn());
    }
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let took = started.elapsed();
    for out in &outputs {
        assert!(out.status.success(), "{}", stderr(out));
    }
    assert_eq!(queue.depth().await, 0, "the queue is empty");
    if let Some(second) = &second {
        assert_eq!(second.depth().await, 0, "the second queue is empty");
    }
    assert_tables(&db, &s).await;
    let all: Vec<&Output> = outputs.iter().collect();
    println!(
        "{} messages over {} queue(s), {drains} drain(s){}: {:.1} s; duplicate keys {}, stale {} (as the surviving drains counted them)",
        s.bodies.len(),
        if two_queues { 2 } else { 1 },
        if kill { ", one killed and replaced" } else { "" },
        took.as_secs_f64(),
        summed(&all, "duplicate keys"),
        summed(&all, "stale versions"),
    );

    // A dead-letter redrive: a fifth of the keyed bodies again, under new message ids.
    let before = snapshot(&db).await;
    let again: Vec<String> = s.keyed.iter().step_by(5).cloned().collect();
    send_all(&again, &env, second.as_ref());
    let out = sqs2pg(&["drain"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        snapshot(&db).await,
        before,
        "the redrive changed no keyed table"
    );
    let redrive = [&out];
    assert_eq!(
        summed(&redrive, "loaded") as usize,
        again.len(),
        "the redriven messages are new messages to the ledger"
    );
    // Every order and cart again is a duplicate key (a key held; each cart's current state);
    // a user again is stale, or wins again with what the row already holds.
    let orders_and_carts = again
        .iter()
        .filter(|b| b.contains("order.placed") || b.contains("cart.updated"))
        .count() as u64;
    assert_eq!(summed(&redrive, "duplicate keys"), orders_and_carts);
    assert!(summed(&redrive, "stale versions") <= again.len() as u64 - orders_and_carts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_stream_fills_each_table_as_its_mode_says() {
    served(1, 1, false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: scripts/test.sh runs it"]
async fn twenty_thousand_mixed_messages_over_two_queues_three_drains_one_killed() {
    served(20, 3, true, true).await;
}

/// Waits (bounded) until `sql` counts `n`.
async fn until_count(db: &TestDb, sql: &str, n: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let have = crate::harness::count(db, sql).await;
        if have == n {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {have}, expected {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One `run` serves two queues, each named by its mapping (`queue`): users from one, orders
/// from the other. The second queue does not exist when the run starts: it is reported as
/// degraded and tried again while the first loads, and served once it exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_serves_two_queues_and_a_missing_one_is_degraded_then_served() {
    let db = TestDb::new().await;
    let users_queue = TestQueue::on(Sqs::LocalStack4).await;
    let orders_name = crate::harness::unique("qorders").replace('_', "-");
    let orders_url = format!("{}/000000000000/{orders_name}", users_queue.endpoint);
    let dir = std::env::temp_dir().join(crate::harness::unique("two-queues"));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, queue) in [
        ("10-users.toml", &users_queue.url),
        ("20-orders.toml", &orders_url),
    ] {
        let text = std::fs::read_to_string(format!("{MAPPINGS}/{file}")).unwrap();
        std::fs::write(dir.join(file), format!("queue = \"{queue}\"\n{text}")).unwrap();
    }
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let dir_text = dir.to_str().unwrap().to_owned();
    // No SQS2PG_QUEUE_URL: every mapping names its queue.
    let env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("AWS_ENDPOINT_URL", &users_queue.endpoint),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_MAPPING", &dir_text),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
    ];
    let setup = sqs2pg(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    let users: Vec<String> = (0..30)
        .map(|i| {
            format!(
                r#"{{"type":"user.updated","version":{},"user":{{"id":"u{}","email":"u{i}@example.com","plan":"p{i}"}}}}"#,
                i % 3,
                i / 3
            )
        })
        .collect();
    let to = |url: &str| -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain([("SQS2PG_QUEUE_URL".to_owned(), url.to_owned())])
            .collect()
    };
    let users_env = to(&users_queue.url);
    let users_env: Vec<(&str, &str)> = users_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send(&users, &users_env);

    let log = dir.join("run.log");
    // One metrics endpoint for both queues.
    let port = crate::harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut run_env = env.clone();
    run_env.push(("SQS2PG_METRICS_ADDR", &addr));
    let mut run = command(&["run"], &run_env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The users load although the orders' queue is missing.
    until_count(
        &db,
        "SELECT count(*) FROM public.users",
        10,
        Duration::from_secs(60),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("queue degraded")
    {
        assert!(Instant::now() < deadline, "no degraded queue reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The endpoint says so too: not ready, naming the queue; each queue's series apart.
    let users_queue_name = users_queue.url.rsplit('/').next().unwrap().to_owned();
    let scrape = || {
        crate::harness::http_get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let metric =
        |name: &str, labels: &[(&str, &str)]| crate::harness::metric(&scrape(), name, labels);
    crate::harness::wait_until(
        "/readyz to name the missing queue",
        Duration::from_secs(30),
        || {
            crate::harness::http_get(port, "/readyz")
                .is_some_and(|(status, body)| status == 503 && body.contains(&orders_name))
        },
    )
    .await;
    crate::harness::wait_until(
        "the users' messages to be counted",
        Duration::from_secs(30),
        || {
            metric(
                "sqs2pg_messages_loaded_total",
                &[("queue", &users_queue_name)],
            ) == Some(30.0)
        },
    )
    .await;
    assert!(
        metric("sqs2pg_queue_degraded_total", &[("queue", &orders_name)]).unwrap_or(0.0) >= 1.0
    );
    assert_eq!(
        metric(
            "sqs2pg_rows_loaded_total",
            &[("queue", &users_queue_name), ("mapping", "public.orders")]
        ),
        None,
        "the users' queue writes no orders"
    );
    // The queue appears, and its orders load in the same run.
    let orders_queue = TestQueue::at(&users_queue.endpoint, &orders_name).await;
    let orders: Vec<String> = (0..12)
        .map(|i| {
            format!(
                r#"{{"type":"order.placed","order":{{"id":"o{}","amount":{i}.50,"customer":"c{i}@example.com"}}}}"#,
                i % 8
            )
        })
        .collect();
    let orders_env = to(&orders_queue.url);
    let orders_env: Vec<(&str, &str)> = orders_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send(&orders, &orders_env);
    until_count(
        &db,
        "SELECT count(*) FROM public.orders",
        8,
        Duration::from_secs(120),
    )
    .await;
    crate::harness::wait_until("/readyz to turn 200", Duration::from_secs(30), || {
        crate::harness::http_get(port, "/readyz").is_some_and(|(status, _)| status == 200)
    })
    .await;
    crate::harness::wait_until("the orders to be counted", Duration::from_secs(30), || {
        metric("sqs2pg_messages_loaded_total", &[("queue", &orders_name)]) == Some(12.0)
    })
    .await;
    let orders_table = [
        ("queue", orders_name.as_str()),
        ("mapping", "public.orders"),
    ];
    assert_eq!(metric("sqs2pg_rows_loaded_total", &orders_table), Some(8.0));
    let duplicate_keys = [
        orders_table[0],
        orders_table[1],
        ("outcome", "duplicate_key"),
    ];
    assert_eq!(
        metric("sqs2pg_keyed_rows_skipped_total", &duplicate_keys),
        Some(4.0),
        "8 orders, 4 sent again under new message ids"
    );
    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = run.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(run.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        out.contains(&format!("queue {users_queue_name}: received 30, loaded 30")),
        "{out}"
    );
    assert!(
        out.contains(&format!("queue {orders_name}: received 12, loaded 12")),
        "{out}"
    );
    assert_eq!(
        crate::harness::count(&db, "SELECT count(*) FROM sqs2pg.ledger").await,
        42
    );
    assert_eq!(users_queue.depth().await + orders_queue.depth().await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
