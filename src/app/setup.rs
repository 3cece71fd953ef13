//! `sqs2pg setup`: the bookkeeping schema's migrations and the target table.

use super::AppError;
use crate::cli::SetupArgs;
use crate::postgres::schema::SetupReport;
use crate::postgres::{self as pg, Database, TableName};

/// `sqs2pg setup`, as the command line runs it: migrations, the table if missing (a mapped
/// table that exists evolved for additive changes), one line per table; or, with
/// `--dry-run`, the plan only.
pub async fn command(args: SetupArgs) -> Result<(), AppError> {
    let (database, table, mappings) = crate::config::target(&args.database)?;
    if args.dry_run {
        let client = database.connect().await?;
        for target in super::target::Target::of_run(&table, &mappings) {
            let (lines, notes) = plan_lines(&client, &target).await?;
            if lines.is_empty() {
                println!("{}: nothing to do", target.table);
            }
            for line in lines.iter().chain(&notes) {
                println!("{line}");
            }
        }
        return Ok(());
    }
    // With several mappings, one refused change stops them all before any table is touched.
    {
        let client = database.connect().await?;
        let mut refused = Vec::new();
        for target in super::target::Target::of_run(&table, &mappings) {
            let exists = pg::schema::table_exists(&client, &target.table)
                .await
                .map_err(AppError::Query)?;
            if exists && !target.is_login() {
                let plan = pg::evolve::plan(&client, &target.table, &target.shape(false))
                    .await
                    .map_err(AppError::Query)?;
                if !plan.refused.is_empty() {
                    refused.extend(plan.lines(&target.table));
                }
            }
        }
        if !refused.is_empty() {
            return Err(pg::evolve::EvolveError::Refused {
                table: "any table".into(),
                lines: refused,
            }
            .into());
        }
    }
    for target in super::target::Target::of_run(&table, &mappings) {
        let table = &target.table;
        let shape = target.shape(false);
        let report = setup_for(&database, table, &shape).await?;
        let applied = if report.applied.is_empty() {
            "schema sqs2pg already current".to_owned()
        } else {
            format!("applied migration(s) {:?}", report.applied)
        };
        let state = if report.table_created {
            "created".to_owned()
        } else if target.is_login() {
            // The analysts' contract: never altered (`check` compares it).
            "exists, left unchanged".to_owned()
        } else {
            let changes = evolve_for(&database, table, &shape).await?;
            if changes.is_empty() {
                "exists, as the mapping wants it".to_owned()
            } else {
                let made: Vec<String> = changes
                    .iter()
                    .map(|c| format!("column {}: {}", c.column, c.what))
                    .collect();
                format!("evolved ({})", made.join("; "))
            }
        };
        println!("setup done: {applied}; table {table} {state}");
    }
    Ok(())
}

/// What setup would do to a target's table, as lines for a person (`setup --dry-run`,
/// `mapping diff`): the changes and refusals (none when the table is as its kind wants it),
/// and the differences it leaves as they are.
pub(super) async fn plan_lines(
    client: &tokio_postgres::Client,
    target: &super::target::Target<'_>,
) -> Result<(Vec<String>, Vec<String>), AppError> {
    let table = &target.table;
    if !pg::schema::table_exists(client, table)
        .await
        .map_err(AppError::Query)?
    {
        let line = format!(
            "{table}: missing; setup would create it from the {}",
            if target.is_login() {
                "analysts' DDL"
            } else {
                "mapping"
            }
        );
        return Ok((vec![line], Vec::new()));
    }
    if target.is_login() {
        // Never altered by setup; `check` compares it.
        return Ok((Vec::new(), Vec::new()));
    }
    let plan = pg::evolve::plan(client, table, &target.shape(false))
        .await
        .map_err(AppError::Query)?;
    Ok((plan.lines(table), plan.note_lines(table)))
}

/// A mapped table that exists, evolved for additive changes ([`pg::evolve::evolve`]).
pub async fn evolve_for(
    database: &Database,
    table: &TableName,
    shape: &pg::schema::TableShape,
) -> Result<Vec<pg::evolve::Change>, AppError> {
    let mut client = database.connect().await?;
    Ok(pg::evolve::evolve(&mut client, table, shape).await?)
}

/// `sqs2pg setup`.
pub async fn setup(database: &Database, table: &TableName) -> Result<SetupReport, AppError> {
    setup_for(database, table, &pg::schema::TableShape::login()).await
}

/// `sqs2pg setup` for a table of the given shape (a mapping's).
pub async fn setup_for(
    database: &Database,
    table: &TableName,
    shape: &pg::schema::TableShape,
) -> Result<SetupReport, AppError> {
    let mut client = database.connect().await?;
    pg::setup(&mut client, table, shape)
        .await
        .map_err(AppError::Setup)
}
