//! `sqs2pg report`: what the table holds, in aggregates (the login table's, with an optional
//! HTML page of charts, or a mapping's).

use super::target::TableReport;
use super::AppError;
use crate::cli::ReportArgs;
use crate::postgres::{Database, TableName};

/// `sqs2pg report`, as the command line runs it: each table of the run (the login table, or
/// each mapping's), and `--html` for the login table's charts.
pub async fn command(args: ReportArgs) -> Result<(), AppError> {
    let (database, table, mappings) = crate::config::target(&args.database)?;
    let targets = super::target::Target::of_run(&table, &mappings);
    if args.html.is_some() && !targets.iter().all(super::target::Target::is_login) {
        return Err(crate::config::ConfigError(
            "report --html draws the login table's charts; for a mapping's table, drop --html (the text report covers it)".into(),
        )
        .into());
    }
    for target in targets {
        let report = target.report(&database).await?;
        print!("{}", report.to_text());
        if let (Some(path), TableReport::Login(report)) = (&args.html, &report) {
            std::fs::write(path, crate::report::html::render(report)).map_err(|error| {
                AppError::File {
                    path: path.display().to_string(),
                    error,
                }
            })?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// `sqs2pg report`: the table's aggregates.
pub async fn report(
    database: &Database,
    table: &TableName,
) -> Result<crate::report::Report, AppError> {
    let client = database.connect().await?;
    crate::report::build(&client, table)
        .await
        .map_err(AppError::Query)
}
