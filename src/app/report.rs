//! `sqs2pg report`: what the table holds, in aggregates (the login table's, with an optional
//! HTML page of charts, or a mapping's).

use super::AppError;
use crate::cli::ReportArgs;
use crate::postgres::{Database, TableName};

/// `sqs2pg report`, as the command line runs it.
pub async fn command(args: ReportArgs) -> Result<(), AppError> {
    if !args.database.mapping_file.mapping.is_empty() {
        mapped(args).await
    } else {
        login(args).await
    }
}

async fn mapped(args: ReportArgs) -> Result<(), AppError> {
    let (database, table, mappings) = crate::config::target(&args.database)?;
    if args.html.is_some() {
        return Err(crate::config::ConfigError(
            "report --html draws the login table's charts; for a mapping's table, drop --html (the text report covers it)".into(),
        )
        .into());
    }
    for (table, mapping) in super::mapping::run_tables(&table, &mappings) {
        let mapping = mapping.expect("--mapping is set");
        let mut report = super::mapping::report(&database, &table, mapping).await?;
        report.queue = mapping
            .queue
            .as_deref()
            .map(|url| crate::sqs::name::queue_label(url).to_owned());
        print!("{}", report.to_text());
    }
    Ok(())
}

async fn login(args: ReportArgs) -> Result<(), AppError> {
    let (database, table) = crate::config::database(&args.database)?;
    let report = report(&database, &table).await?;
    print!("{}", report.to_text());
    if let Some(path) = &args.html {
        std::fs::write(path, crate::report::html::render(&report)).map_err(|error| {
            AppError::File {
                path: path.display().to_string(),
                error,
            }
        })?;
        println!("wrote {}", path.display());
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
