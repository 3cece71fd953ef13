//! `sqs2pg setup`: the bookkeeping schema's migrations and the target table.

use super::AppError;
use crate::config::args::DatabaseArgs;
use crate::postgres::schema::SetupReport;
use crate::postgres::{self as pg, Database, TableName};

/// `sqs2pg setup`, as the command line runs it: migrations, the table if missing, one line.
pub async fn command(args: DatabaseArgs) -> Result<(), AppError> {
    let (database, table, mappings) = crate::config::target(&args)?;
    for target in super::target::Target::of_run(&table, &mappings) {
        let table = &target.table;
        let report = setup_for(&database, table, &target.shape(false)).await?;
        let applied = if report.applied.is_empty() {
            "schema sqs2pg already current".to_owned()
        } else {
            format!("applied migration(s) {:?}", report.applied)
        };
        let created = if report.table_created {
            "created"
        } else {
            "exists, left unchanged"
        };
        println!("setup done: {applied}; table {table} {created}");
    }
    Ok(())
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
