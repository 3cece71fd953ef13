//! Schemas that change (issue 28): a mapped table evolved in place by `setup` for additive
//! changes (new nullable columns, a varchar widened), once even from two setups at once, and
//! recorded; everything else refused with the table unchanged; `setup --dry-run` and `mapping
//! diff` print the plan; and, end to end, a JSON Schema drafted, set up, drained, its next
//! version with two new optional fields diffed, set up and drained while a process still
//! running the old mapping keeps loading, and an incompatible version refused.

use std::process::Output;
use std::time::{Duration, Instant};

use sqs2pg::app::target::Target;
use sqs2pg::mapping::Mapping;
use sqs2pg::postgres::{Database, TableName};

use crate::harness::{command, count, sqs2pg, stderr, unique, TestDb, TestQueue};

fn mapping(table: &str, columns: &str) -> Mapping {
    Mapping::parse(&format!("table = \"{table}\"\ncolumns = [\n{columns}\n]")).unwrap()
}

async fn columns(db: &TestDb, table: &str) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT attname || ' ' || format_type(atttypid, atttypmod) || \
                    CASE WHEN attnotnull THEN ' not null' ELSE '' END
               FROM pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_adds_nullable_columns_and_widens_a_varchar_once_even_from_two_setups_at_once() {
    let db = TestDb::new().await;
    let database = Database::parse(&db.url).unwrap();
    let table = format!("public.{}", unique("evolve"));
    let name = TableName::parse(&table).unwrap();
    let v1 = mapping(
        &table,
        r#"{ name = "id", from = "/id", type = "text", required = true },
           { name = "name", from = "/name", type = "varchar(16)" },"#,
    );
    sqs2pg::app::setup_for(&database, &name, &Target::of_mapping(&v1).shape(false))
        .await
        .unwrap();
    db.client()
        .await
        .batch_execute(&format!("INSERT INTO {table} VALUES ('old', 'a name')"))
        .await
        .unwrap();
    let v2 = mapping(
        &table,
        r#"{ name = "id", from = "/id", type = "text", required = true },
           { name = "name", from = "/name", type = "varchar(64)" },
           { name = "plan", from = "/plan", type = "text" },
           { name = "score", from = "/score", type = "integer" },"#,
    );
    let shape = Target::of_mapping(&v2).shape(false);
    let client = db.client().await;
    let plan = sqs2pg::postgres::evolve::plan(&client, &name, &shape)
        .await
        .unwrap();
    let planned: Vec<&str> = plan.changes.iter().map(|c| c.column.as_str()).collect();
    assert_eq!(planned, ["name", "plan", "score"]);
    assert!(plan.refused.is_empty(), "{plan:?}");

    // Two setups at once: each change made once, no error.
    let (a, b) = tokio::join!(
        sqs2pg::app::evolve_for(&database, &name, &shape),
        sqs2pg::app::evolve_for(&database, &name, &shape)
    );
    let made = a.unwrap().len() + b.unwrap().len();
    assert_eq!(made, 3, "each change once");
    assert_eq!(
        columns(&db, &table).await,
        [
            "id text not null",
            "name character varying(64)",
            "plan text",
            "score integer"
        ]
    );
    // The row already there has NULL in the new columns.
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {table} WHERE id = 'old' AND plan IS NULL AND score IS NULL AND name = 'a name'")).await,
        1
    );
    // Recorded: table, the shape's hash, the statement.
    let recorded: Vec<String> = client
        .query(
            "SELECT mapping_hash || ' ' || statement FROM sqs2pg.schema_changes \
              WHERE target = $1 ORDER BY id",
            &[&name.quoted()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let hash = sqs2pg::postgres::evolve::shape_hash(&name, &shape);
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    assert!(
        recorded.iter().all(|r| r.starts_with(&hash)),
        "{recorded:?}"
    );
    assert!(
        recorded[0].contains("TYPE character varying(64)"),
        "{recorded:?}"
    );
    assert!(recorded[1].contains("ADD COLUMN IF NOT EXISTS \"plan\" text"));
    // Nothing left to do.
    assert!(sqs2pg::postgres::evolve::plan(&client, &name, &shape)
        .await
        .unwrap()
        .is_empty());
    // A process on the first mapping still starts: a wider varchar holds its values.
    sqs2pg::postgres::schema::check_shape(&client, &name, &Target::of_mapping(&v1).shape(false))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_names_what_a_run_would_refuse_and_notes_what_it_leaves() {
    let db = TestDb::new().await;
    let table = format!("public.{}", unique("plan"));
    let name = TableName::parse(&table).unwrap();
    let client = db.client().await;
    crate::harness::setup(&db).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id text, note text, extra integer NOT NULL)"
        ))
        .await
        .unwrap();
    let keyed = Mapping::parse(&format!(
        r#"table = "{table}"
write = {{ mode = "upsert", key = ["id"] }}
columns = [
  {{ name = "id", from = "/id", type = "text" }},
  {{ name = "note", from = "/note", type = "text", required = true }},
]"#
    ))
    .unwrap();
    let plan =
        sqs2pg::postgres::evolve::plan(&client, &name, &Target::of_mapping(&keyed).shape(false))
            .await
            .unwrap();
    let lines = plan.lines(&name).join("\n");
    assert!(
        lines.contains("column extra: refused: is NOT NULL without a default"),
        "{lines}"
    );
    assert!(
        lines.contains("column id: refused") && lines.contains("CREATE UNIQUE INDEX"),
        "{lines}"
    );
    assert!(plan.changes.is_empty());
    let notes = plan.note_lines(&name).join("\n");
    assert!(
        notes.contains("column note allows NULL and the mapping requires it"),
        "{notes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refuses_narrowing_type_changes_and_new_required_columns_and_changes_nothing() {
    let db = TestDb::new().await;
    let database = Database::parse(&db.url).unwrap();
    let table = format!("public.{}", unique("refuse"));
    let name = TableName::parse(&table).unwrap();
    let v1 = mapping(
        &table,
        r#"{ name = "id", from = "/id", type = "text" },
           { name = "name", from = "/name", type = "varchar(16)" },
           { name = "score", from = "/score", type = "integer" },"#,
    );
    sqs2pg::app::setup_for(&database, &name, &Target::of_mapping(&v1).shape(false))
        .await
        .unwrap();
    db.client()
        .await
        .batch_execute(&format!("ALTER TABLE {table} ALTER COLUMN id SET NOT NULL"))
        .await
        .unwrap();
    let before = columns(&db, &table).await;
    let incompatible = mapping(
        &table,
        r#"{ name = "id", from = "/id", type = "text" },
           { name = "name", from = "/name", type = "varchar(8)" },
           { name = "score", from = "/score", type = "bigint" },
           { name = "added", from = "/added", type = "text" },
           { name = "must", from = "/must", type = "text", required = true },"#,
    );
    let refused = sqs2pg::app::evolve_for(
        &database,
        &name,
        &Target::of_mapping(&incompatible).shape(false),
    )
    .await
    .unwrap_err()
    .to_string();
    for (column, sql) in [
        ("name", "TYPE character varying(8)"),
        ("score", "TYPE bigint USING \"score\"::bigint"),
        ("must", "SET NOT NULL"),
        ("id", "DROP NOT NULL"),
    ] {
        assert!(
            refused.contains(&format!("column {column}: refused")) && refused.contains(sql),
            "{column}: {refused}"
        );
    }
    // Nothing changed, not even the column that could have been added.
    assert_eq!(columns(&db, &table).await, before);
    assert_eq!(
        count(&db, "SELECT count(*) FROM sqs2pg.schema_changes").await,
        0
    );
}

/// Runs the binary and returns its output; `code` is the exit code it must give.
fn expect(args: &[&str], env: &[(&str, &str)], code: i32) -> Output {
    let out = sqs2pg(args, env);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    out
}

fn refs(e: &[(String, String)]) -> Vec<(&str, &str)> {
    e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn until(db: &TestDb, sql: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = count(db, sql).await;
        if have == n {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {have}, expected {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn schema(extra: &str, score_type: &str) -> String {
    format!(
        r##"{{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "order.placed",
  "type": "object",
  "required": ["order_id", "amount"],
  "properties": {{
    "order_id": {{"type": "string", "format": "uuid"}},
    "amount": {{"type": "number", "minimum": 0}},
    "score": {{"type": "{score_type}"}},
    "customer": {{"type": "object", "properties": {{
      "email": {{"type": "string", "format": "email"}}{extra}
    }}}}
  }}
}}"##
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_schema_drafted_set_up_drained_then_evolved_while_the_old_mapping_runs() {
    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    let dir = std::env::temp_dir().join(unique("evolve-e2e"));
    std::fs::create_dir_all(&dir).unwrap();
    let table = format!("public.{}", unique("orders"));
    let draft = |schema_text: &str, file: &str| -> String {
        let schema_path = dir.join(format!("{file}.json"));
        std::fs::write(&schema_path, schema_text).unwrap();
        let out = dir.join(format!("{file}.toml"));
        let drafted = sqs2pg(
            &[
                "mapping",
                "draft",
                "--schema",
                schema_path.to_str().unwrap(),
                "--table",
                &table,
                "--output",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(drafted.status.success(), "{}", stderr(&drafted));
        out.to_str().unwrap().to_owned()
    };
    let v1 = draft(&schema("", "integer"), "v1");
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let env = |mapping: &str| -> Vec<(String, String)> {
        [
            ("DATABASE_URL", db.url.as_str()),
            ("SQS2PG_QUEUE_URL", queue.url.as_str()),
            ("AWS_ENDPOINT_URL", queue.endpoint.as_str()),
            ("SQS2PG_MASK_KEY", key.as_str()),
            ("SQS2PG_MAPPING", mapping),
            ("SQS2PG_WAIT_TIME_SECS", "1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
    };
    let env1 = env(&v1);
    let send = |bodies: Vec<String>, env: &[(&str, &str)]| {
        let file = dir.join(unique("bodies"));
        std::fs::write(&file, bodies.join("\n") + "\n").unwrap();
        expect(&["send", "--file", file.to_str().unwrap()], env, 0);
    };
    let order = |i: usize, extra: &str| {
        format!(
            r#"{{"order_id": "00000000-0000-4000-8000-{i:012}", "amount": {i}.5, "score": {i}, "customer": {{"email": "c{i}@example.com"{extra}}}}}"#
        )
    };

    // The first version: drafted, set up, drained.
    expect(&["setup"], &refs(&env1), 0);
    send((0..20).map(|i| order(i, "")).collect(), &refs(&env1));
    expect(&["drain"], &refs(&env1), 0);
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM {table}")).await,
        20
    );
    let masked: i64 = count(
        &db,
        &format!("SELECT count(*) FROM {table} WHERE masked_customer_email LIKE '%example.com%'"),
    )
    .await;
    assert_eq!(masked, 0, "the e-mail is masked, as the draft proposed");
    expect(&["mapping", "diff"], &refs(&env1), 0);

    // A process still running the first version's mapping.
    let mut old = command(&["run"], &refs(&env1))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // The next version: two new optional fields.
    let v2 = draft(
        &schema(
            r#", "tier": {"type": "string", "maxLength": 16}, "vip": {"type": "boolean"}"#,
            "integer",
        ),
        "v2",
    );
    let env2 = env(&v2);
    let diff = expect(&["mapping", "diff"], &refs(&env2), 1);
    let plan = stdout(&diff);
    assert!(
        plan.contains("column customer_tier: add, character varying(16), nullable")
            && plan.contains("column customer_vip: add, boolean, nullable")
            && !plan.contains("refused"),
        "{plan}"
    );
    let dry = expect(&["setup", "--dry-run"], &refs(&env2), 0);
    assert!(stdout(&dry).contains("customer_tier"), "{}", stdout(&dry));
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM information_schema.columns WHERE table_name = '{}' AND column_name = 'customer_tier'", table.trim_start_matches("public."))).await,
        0,
        "--dry-run changes nothing"
    );
    let setup = expect(&["setup"], &refs(&env2), 0);
    assert!(stdout(&setup).contains("evolved"), "{}", stdout(&setup));
    expect(&["mapping", "diff"], &refs(&env2), 0);

    // The old process keeps loading after the new columns appeared.
    send((20..30).map(|i| order(i, "")).collect(), &refs(&env1));
    until(&db, &format!("SELECT count(*) FROM {table}"), 30).await;
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &old.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "the old process exits cleanly: {status:?}"
    );

    // New messages through the new mapping; old rows are NULL in the new columns.
    send(
        (30..40)
            .map(|i| order(i, r#", "tier": "gold", "vip": true"#))
            .collect(),
        &refs(&env2),
    );
    expect(&["drain"], &refs(&env2), 0);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM {table} WHERE customer_tier IS NULL AND customer_vip IS NULL"
            )
        )
        .await,
        30
    );
    assert_eq!(
        count(
            &db,
            &format!("SELECT count(*) FROM {table} WHERE customer_tier = 'gold' AND customer_vip")
        )
        .await,
        10
    );

    // An incompatible version (score becomes a string): refused, the table unchanged.
    let v3 = draft(
        &schema(
            r#", "tier": {"type": "string", "maxLength": 16}, "vip": {"type": "boolean"}"#,
            "string",
        ),
        "v3",
    );
    let env3 = env(&v3);
    let before = columns(&db, &table).await;
    let diff = expect(&["mapping", "diff"], &refs(&env3), 1);
    assert!(
        stdout(&diff).contains("column score: refused"),
        "{}",
        stdout(&diff)
    );
    let refused = expect(&["setup"], &refs(&env3), 1);
    assert!(
        stderr(&refused).contains("column score: refused") && stderr(&refused).contains("USING"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(columns(&db, &table).await, before);
    // A mistake (a mapping file that does not exist) is exit 2.
    let missing = dir.join("missing.toml");
    expect(
        &["mapping", "diff"],
        &refs(&env(missing.to_str().unwrap())),
        2,
    );
}

/// With several mappings, `setup` refuses before touching any table when one of them asks
/// for a change it refuses: the other's column is not added either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_mapping_stops_setup_before_any_table_changes() {
    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    let dir = std::env::temp_dir().join(unique("evolve-two"));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (
        format!("public.{}", unique("ta")),
        format!("public.{}", unique("tb")),
    );
    let write = |file: &str, table: &str, columns: &str| {
        std::fs::write(
            dir.join(file),
            format!("table = \"{table}\"\ncolumns = [\n{columns}\n]\n"),
        )
        .unwrap();
    };
    write(
        "1-a.toml",
        &a,
        r#"{ name = "id", from = "/id", type = "text" },"#,
    );
    write(
        "2-b.toml",
        &b,
        r#"{ name = "n", from = "/n", type = "integer" },"#,
    );
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let dir_text = dir.to_str().unwrap().to_owned();
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("SQS2PG_QUEUE_URL", queue.url.as_str()),
        ("SQS2PG_MASK_KEY", key.as_str()),
        ("SQS2PG_MAPPING", dir_text.as_str()),
    ];
    expect(&["setup"], &env, 0);
    let before = (columns(&db, &a).await, columns(&db, &b).await);
    // a adds a column (fine alone); b changes a type (refused).
    write(
        "1-a.toml",
        &a,
        r#"{ name = "id", from = "/id", type = "text" }, { name = "more", from = "/more", type = "text" },"#,
    );
    write(
        "2-b.toml",
        &b,
        r#"{ name = "n", from = "/n", type = "text" },"#,
    );
    let refused = expect(&["setup"], &env, 1);
    assert!(
        stderr(&refused).contains("column n: refused"),
        "{}",
        stderr(&refused)
    );
    assert_eq!((columns(&db, &a).await, columns(&db, &b).await), before);
}
