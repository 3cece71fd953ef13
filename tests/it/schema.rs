//! `setup` and the readiness check against a real PostgreSQL.

use sqs2pg::app;
use sqs2pg::postgres::schema::NotReady;
use sqs2pg::postgres::{check_ready, Database, TableName};

use crate::harness::TestDb;

const ANALYSTS_DDL: &str =
    "CREATE TABLE public.user_logins(user_id varchar(128), device_type varchar(32),
      masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32),
      app_version integer, create_date date)";

async fn columns(client: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_is_idempotent_concurrent_and_leaves_an_existing_table_alone() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute(ANALYSTS_DDL).await.unwrap();
    client
        .batch_execute("INSERT INTO public.user_logins (user_id) VALUES ('kept')")
        .await
        .unwrap();
    let before = columns(&client, "public.user_logins").await;
    let table = TableName::parse("public.user_logins").unwrap();

    // Not ready before setup, and it says what to do.
    let err = check_ready(&client, &table).await.unwrap_err();
    assert!(
        matches!(err, NotReady::SchemaBehind { found: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("sqs2pg setup"));

    let database = Database::parse(&db.url).unwrap();
    let runs: Vec<_> = (0..4).map(|_| app::setup(&database, &table)).collect();
    let reports = futures_util::future::join_all(runs).await;
    let appliers: Vec<&Vec<i32>> = reports
        .iter()
        .map(|r| &r.as_ref().unwrap().applied)
        .filter(|a| !a.is_empty())
        .collect();
    let all: Vec<i32> = (1..=sqs2pg::postgres::schema::latest_version()).collect();
    assert_eq!(
        appliers,
        vec![&all],
        "exactly one process applies the migrations, in order"
    );
    assert!(reports.iter().all(|r| !r.as_ref().unwrap().table_created));

    assert_eq!(columns(&client, "public.user_logins").await, before);
    let kept: i64 = client
        .query_one(
            "SELECT count(*) FROM public.user_logins WHERE user_id = 'kept'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
    check_ready(&client, &table).await.unwrap();
    let v: String = client
        .query_one("SELECT sqs2pg.app_version_text(2003000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "2.3.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_the_exact_ddl_and_a_quoted_custom_table() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let database = Database::parse(&db.url).unwrap();
    let table = TableName::parse("public.user_logins").unwrap();
    assert!(app::setup(&database, &table).await.unwrap().table_created);

    // Compare with a table made from the analysts' DDL verbatim.
    client
        .batch_execute(&ANALYSTS_DDL.replace("public.user_logins", "public.reference"))
        .await
        .unwrap();
    assert_eq!(
        columns(&client, "public.user_logins").await,
        columns(&client, "public.reference").await
    );

    let odd = TableName::parse("public.Odd Name; DROP TABLE x").unwrap();
    assert!(app::setup(&database, &odd).await.unwrap().table_created);
    check_ready(&client, &odd).await.unwrap();
    assert_eq!(
        columns(&client, "\"public\".\"Odd Name; DROP TABLE x\"")
            .await
            .len(),
        7
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_columns_that_differ() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let database = Database::parse(&db.url).unwrap();
    let table = TableName::parse("public.user_logins").unwrap();
    client
        .batch_execute("CREATE TABLE public.user_logins(user_id text, device_type varchar(32))")
        .await
        .unwrap();
    app::setup(&database, &table).await.unwrap();
    let err = check_ready(&client, &table).await.unwrap_err().to_string();
    assert!(
        err.contains("column user_id is text, expected character varying(128)"),
        "{err}"
    );
    assert!(err.contains("column masked_ip is missing"), "{err}");

    // Extra columns are allowed, unless they need a value we never give.
    let other = TableName::parse("public.with_extras").unwrap();
    client
        .batch_execute(
            "CREATE TABLE public.with_extras(user_id varchar(128), device_type varchar(32),
               masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32),
               app_version integer, create_date date,
               id bigint GENERATED ALWAYS AS IDENTITY, loaded_at timestamptz NOT NULL DEFAULT now(),
               note text)",
        )
        .await
        .unwrap();
    check_ready(&client, &other).await.unwrap();
    client
        .batch_execute("ALTER TABLE public.with_extras ADD COLUMN batch text NOT NULL")
        .await
        .unwrap();
    let err = check_ready(&client, &other).await.unwrap_err().to_string();
    assert!(
        err.contains("extra column batch is NOT NULL without a default"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_honoured_as_libpq_does() {
    use sqs2pg::error::{fate, Fate, Outcome};
    let s = crate::harness::servers();
    // The server certificate names `localhost` only and is signed by the harness's own CA.
    let by_ip = format!("postgres://postgres@127.0.0.1:{}/postgres", s.pg_port);
    let by_name = format!("postgres://postgres@localhost:{}/postgres", s.pg_port);
    let ca = s.pg_ca.display().to_string();
    async fn uses_tls(url: &str) -> Result<bool, sqs2pg::postgres::ConnectError> {
        let client = sqs2pg::postgres::connect(url).await?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        Ok(row.get(0))
    }
    let ok = |q: String| async move { uses_tls(&q).await.unwrap_or_else(|e| panic!("{q}: {e}")) };
    assert!(!ok(format!("{by_ip}?sslmode=disable")).await);
    // prefer (the default) and require encrypt without checking the certificate.
    assert!(ok(by_ip.clone()).await);
    assert!(ok(format!("{by_ip}?sslmode=require")).await);
    // verify-ca checks the chain but not the name; verify-full checks both.
    assert!(ok(format!("{by_ip}?sslmode=verify-ca&sslrootcert={ca}")).await);
    assert!(ok(format!("{by_ip}?sslmode=require&sslrootcert={ca}")).await);
    assert!(ok(format!("{by_name}?sslmode=verify-full&sslrootcert={ca}")).await);
    for refused in [
        format!("{by_ip}?sslmode=verify-full&sslrootcert={ca}"), // wrong name
        format!("{by_name}?sslmode=verify-full"),                // untrusted CA
        format!("{by_name}?sslmode=verify-ca"),                  // untrusted CA
    ] {
        let err = uses_tls(&refused).await.expect_err(&refused);
        // A certificate problem is configuration: stop, do not retry forever.
        let pg = err.postgres().expect("a connection error");
        assert_eq!(fate(Outcome::Postgres(pg)), Fate::Stop, "{refused}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_pruned_past_its_horizon_but_replay_ids_are_kept() {
    let db = TestDb::new().await;
    let database = Database::parse(&db.url).unwrap();
    app::setup(&database, &TableName::parse("public.user_logins").unwrap())
        .await
        .unwrap();
    let client = db.client().await;
    // The ledger by send time; the retired ledger (written before schema version 8, which now
    // refuses writes: the trigger is set aside to fill it) by processing time.
    client
        .batch_execute(
            "INSERT INTO sqs2pg.ledger (sent_ms, message_id)
             SELECT (extract(epoch FROM now() - interval '31 days') * 1000)::bigint + i,
                    'old-' || i
               FROM generate_series(1, 25) i;
             INSERT INTO sqs2pg.ledger (sent_ms, message_id) VALUES
                 ((extract(epoch FROM now() - interval '29 days') * 1000)::bigint, 'recent'),
                 (0, 'm#replay1');
             ALTER TABLE sqs2pg.processed_messages DISABLE TRIGGER processed_messages_retired;
             INSERT INTO sqs2pg.processed_messages (message_id, outcome, processed_at)
             SELECT 'retired-' || i, 'loaded', now() - interval '31 days'
               FROM generate_series(1, 12) i;
             INSERT INTO sqs2pg.processed_messages (message_id, outcome, processed_at)
                 VALUES ('retired-recent', 'loaded', now() - interval '29 days');
             ALTER TABLE sqs2pg.processed_messages ENABLE TRIGGER processed_messages_retired;
             -- Keyed tables' bookkeeping: tombstones past the horizon go, a recent one and
             -- live entries stay.
             INSERT INTO sqs2pg.row_versions (target, key, version, sent_ms, message_id, deleted_at)
             SELECT 'public.users', 'old-' || i, 1, 1, 'm' || i, now() - interval '31 days'
               FROM generate_series(1, 3) i;
             INSERT INTO sqs2pg.row_versions (target, key, version, sent_ms, message_id, deleted_at)
                 VALUES ('public.users', 'recent', 1, 1, 'm', now() - interval '29 days'),
                        ('public.users', 'live', 1, 1, 'm', NULL);",
        )
        .await
        .unwrap();
    let thirty_days = std::time::Duration::from_secs(30 * 86_400);
    // Small statements: 25 + 12 + 3 old rows in batches of 10.
    let pruned = sqs2pg::postgres::ledger::prune(&client, thirty_days, 10)
        .await
        .unwrap();
    assert_eq!(pruned, 40);
    let left = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect::<Vec<String>>()
        }
    };
    assert_eq!(
        left("SELECT message_id FROM sqs2pg.ledger ORDER BY 1").await,
        ["m#replay1", "recent"]
    );
    assert_eq!(
        left("SELECT message_id FROM sqs2pg.processed_messages ORDER BY 1").await,
        ["retired-recent"]
    );
    assert_eq!(
        left("SELECT key FROM sqs2pg.row_versions ORDER BY 1").await,
        ["live", "recent"]
    );
    assert_eq!(
        sqs2pg::postgres::ledger::prune(&client, thirty_days, 10)
            .await
            .unwrap(),
        0
    );
}

/// Migration 9 turns each run record of `sqs2pg.mask_keys` (a key and the two login modes)
/// into one record per masked column, with the scope its tokens are keyed under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_tables_key_records_become_per_column_records() {
    use sqs2pg::postgres::schema::{setup_up_to, TableShape};
    let db = TestDb::new().await;
    let mut client = db.client().await;
    let table = TableName::parse("public.user_logins").unwrap();
    setup_up_to(&mut client, &table, &TableShape::login(), 8)
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO sqs2pg.mask_keys (table_name, key_id, ip_mode, device_id_mode)
             VALUES ('public.user_logins', 'k1', 'ipcrypt', 'siv'),
                    ('public.user_logins', 'k1', 'hmac', 'siv'),
                    ('public.other', 'k2', 'hmac', 'hmac')",
        )
        .await
        .unwrap();
    let report = setup_up_to(&mut client, &table, &TableShape::login(), 9)
        .await
        .unwrap();
    assert_eq!(report.applied, [9]);
    let rows = client
        .query(
            "SELECT table_name, column_name, scope, mode, key_id FROM sqs2pg.mask_columns
              ORDER BY 1, 2, 4",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            (0..5)
                .map(|i| r.get::<_, String>(i))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(
        got,
        [
            "public.other masked_device_id device_id hmac k2",
            "public.other masked_ip ip hmac k2",
            "public.user_logins masked_device_id device_id siv k1",
            "public.user_logins masked_ip ip hmac k1",
            "public.user_logins masked_ip ip ipcrypt k1",
        ]
    );
}
