//! `sqs2pg check`: every dependency of a run (key, queue, database, table, privileges), checked
//! without processing anything.

use super::{open_queue, AppError};
use crate::config::args::PipelineArgs;
use crate::config::Settings;
use crate::login::Masker;
use crate::pipeline::Mode;
use crate::postgres as pg;
use crate::sqs::queue::SqsSettings;

/// `sqs2pg check`, as the command line runs it: the pass/fail list; fails if any check failed.
pub async fn command(args: PipelineArgs) -> Result<(), AppError> {
    let settings = crate::config::pipeline(&args, Mode::Run)?;
    let items = check(&settings).await;
    for item in &items {
        let mark = if item.ok { " ok " } else { "FAIL" };
        println!("[{mark}] {:<17} {}", item.name, item.detail);
    }
    let failed = items.iter().filter(|i| !i.ok).count();
    if failed == 0 {
        println!("all {} checks passed", items.len());
        Ok(())
    } else {
        Err(AppError::Check(failed))
    }
}

/// One line of `sqs2pg check`.
#[derive(Debug, Clone)]
pub struct CheckItem {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// `sqs2pg check`: every dependency of a run, checked without processing anything. Each check
/// runs whatever the others found, so one run shows everything that needs fixing.
pub async fn check(settings: &Settings) -> Vec<CheckItem> {
    let mut items = vec![CheckItem {
        name: "masking key".into(),
        ok: true,
        detail: format!(
            "loads; key id {} (tokens written now start with it)",
            Masker::new(&settings.mask_key).key_id()
        ),
    }];
    // Every queue the run reads: the mappings' own, else the run's.
    let mut queues: Vec<String> = settings
        .mappings
        .iter()
        .map(|m| {
            m.queue
                .clone()
                .unwrap_or_else(|| settings.sqs.queue_url.clone())
        })
        .collect();
    if queues.is_empty() {
        queues.push(settings.sqs.queue_url.clone());
    }
    let several = {
        let mut distinct = queues.clone();
        distinct.sort();
        distinct.dedup();
        distinct.len() > 1
    };
    let mut seen = Vec::new();
    for queue_url in queues {
        if seen.contains(&queue_url) {
            continue;
        }
        let sqs = SqsSettings {
            queue_url: queue_url.clone(),
            ..settings.sqs.clone()
        };
        let mut item = check_queue(&sqs).await;
        if several {
            item.name = format!("SQS queue ({})", crate::sqs::name::queue_label(&queue_url));
        }
        items.push(item);
        seen.push(queue_url);
    }
    items.extend(check_database(settings).await);
    items
}

async fn check_queue(sqs: &SqsSettings) -> CheckItem {
    let item = |ok, detail| CheckItem {
        name: "SQS queue".into(),
        ok,
        detail,
    };
    let queue = match open_queue(sqs).await {
        Ok(queue) => queue,
        Err(e) => return item(false, e.to_string()),
    };
    let attrs = match queue.attributes(&["All"]).await {
        Ok(attrs) => attrs,
        Err(e) => return item(false, e.to_string()),
    };
    let get = |name: &str| {
        attrs
            .iter()
            .find(|(n, _)| n == name)
            .map_or("?", |(_, v)| v.as_str())
    };
    let redrive = match attrs.iter().find(|(n, _)| n == "RedrivePolicy") {
        Some((_, policy)) => format!("redrive policy {policy}"),
        None => {
            "no redrive policy (poison messages are quarantined after --max-receive-count)".into()
        }
    };
    item(
        true,
        format!(
            "{} readable over {}: {} visible, {} in flight; visibility timeout {} s; {redrive}",
            queue.queue_url(),
            queue.protocol_in_use(),
            get("ApproximateNumberOfMessages"),
            get("ApproximateNumberOfMessagesNotVisible"),
            get("VisibilityTimeout"),
        ),
    )
}

async fn check_database(settings: &Settings) -> Vec<CheckItem> {
    let item = |name: &str, ok, detail| CheckItem {
        name: name.to_owned(),
        ok,
        detail,
    };
    let client = match settings.database.connect().await {
        Ok(client) => client,
        Err(e) => {
            return vec![item("PostgreSQL", false, e.to_string())];
        }
    };
    let mut items = vec![item(
        "PostgreSQL",
        true,
        match pg::inspect::identity(&client).await {
            Ok((user, version)) => format!("connected as {user}: {version}"),
            Err(e) => format!("connected ({})", pg::describe(&e)),
        },
    )];
    let fifo = crate::sqs::name::is_fifo(&settings.sqs.queue_url);
    let targets = super::target::Target::of_run(&settings.table, &settings.mappings);
    let several = targets.len() > 1;
    for target in targets {
        let table = &target.table;
        let shape = target.shape(fifo);
        // With several tables, each item names its table.
        let name = |what: &str| -> String {
            if several {
                format!("{what} ({table})")
            } else {
                what.to_owned()
            }
        };
        items.push(match pg::check_shape(&client, table, &shape).await {
            Ok(()) => item(&name("schema and table"), true, target.fits(&shape)),
            Err(e) => item(&name("schema and table"), false, e.to_string()),
        });
        items.push(
            match pg::schema::table_rules(&client, table, &shape).await {
                Ok(rules) => {
                    let mut rules = rules_item(&rules);
                    rules.name = name(&rules.name);
                    rules
                }
                Err(e) => item(&name("table rules"), false, pg::describe(&e)),
            },
        );
        let mode = target.write_mode();
        items.push(
            match pg::schema::missing_privileges(&client, table, mode).await {
                Ok(missing) if missing.is_empty() => item(
                    &name("privileges"),
                    true,
                    match mode {
                        crate::kind::WriteMode::Append => "INSERT on the table, the ledger and the reject table; TEMP on the database",
                        crate::kind::WriteMode::Ignore => "INSERT and SELECT on the table; INSERT on the ledger and the reject table; TEMP on the database",
                        crate::kind::WriteMode::Upsert => "INSERT, UPDATE, DELETE and SELECT on the table; INSERT on the ledger and the reject table; TEMP on the database",
                        crate::kind::WriteMode::Latest => "INSERT, UPDATE, DELETE and SELECT on the table and sqs2pg.row_versions; INSERT on the ledger and the reject table; TEMP on the database",
                    }
                    .into(),
                ),
                Ok(missing) => item(
                    &name("privileges"),
                    false,
                    format!("missing: {}; GRANT them to this user", missing.join(", ")),
                ),
                Err(e) => item(&name("privileges"), false, pg::describe(&e)),
            },
        );
    }
    items
}

/// The table's rules: a NOT NULL column the rows may leave NULL fails (those messages would
/// all be quarantined); the rules no check can prove are listed, since a row that breaks one
/// is quarantined as `table_refused:RULE` at run time and the run goes on.
fn rules_item(rules: &pg::schema::TableRules) -> CheckItem {
    let mut parts = Vec::new();
    for column in &rules.nullable_into_not_null {
        parts.push(format!(
            "column {column} is NOT NULL but the rows may leave it NULL (a mapping column \
             without `required = true`, or redacted): those messages would be quarantined as \
             table_refused:not_null:{column}; make the column required or DROP NOT NULL"
        ));
    }
    if !rules.unproven.is_empty() {
        parts.push(format!(
            "rules no check can prove every message meets (a row that breaks one is \
             quarantined as table_refused:RULE, and the run goes on): {}",
            rules.unproven.join("; ")
        ));
    }
    CheckItem {
        name: "table rules".into(),
        ok: rules.nullable_into_not_null.is_empty(),
        detail: if parts.is_empty() {
            "no NOT NULL, CHECK, key, partition or trigger rule beyond the columns' types".into()
        } else {
            parts.join("; ")
        },
    }
}
