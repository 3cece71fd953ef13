//! `sqs2pg unmask`: the values behind reversible tokens, for key holders: given tokens, or the
//! token columns of a query's result (the login table's, or a mapping's).

use super::AppError;
use crate::cli::UnmaskArgs;
use crate::postgres::{self as pg, Database};

/// `sqs2pg unmask`, as the command line runs it.
pub async fn command(args: UnmaskArgs) -> Result<(), AppError> {
    if !args.mapping.mapping.is_empty() {
        mapped(args).await
    } else {
        login(args).await
    }
}

/// With `--mapping`: a query's result, the mapping's reversible token columns unmasked.
async fn mapped(args: UnmaskArgs) -> Result<(), AppError> {
    let ring = crate::config::key_ring(&args.key)?;
    let mappings: Vec<_> = crate::config::mapping_files(&args.mapping.mapping)?
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    if let Some(column) = super::mapping::ambiguous_token_column(&mappings) {
        return Err(crate::config::ConfigError(format!(
            "unmask --mapping: two of the mappings mask column {column} differently (mode or scope), so a query's {column} cannot be told apart; give the one mapping whose table the query reads"
        ))
        .into());
    }
    let unmasker = super::mapping::MappedUnmasker::new(&mappings, &ring, args.key_id.as_deref())
        .ok_or_else(|| {
            crate::config::ConfigError(format!(
                "unmask --key-id: no such key in the ring (ids: {})",
                ring.ids()
            ))
        })?;
    let (Some(query), true) = (&args.query, args.tokens.is_empty()) else {
        return Err(crate::config::ConfigError(
            "unmask --mapping works on --query: a token alone does not say which column (so which scope and mode) it belongs to".into(),
        )
        .into());
    };
    if unmasker.is_empty() {
        eprintln!("note: the mapping has no reversible token column (siv, ipcrypt, ipcrypt-pfx); hmac tokens are one-way");
    }
    let database = unmask_database(args.connection.database_url.as_deref())?;
    eprintln!("warning: the values below are personal data (the mapping's token columns)");
    for line in query_unmasked(&database, query, |c, v| unmasker.cell(c, v)).await? {
        println!("{line}");
    }
    Ok(())
}

/// The login table's tokens: given ones, or those in a query's result.
async fn login(args: UnmaskArgs) -> Result<(), AppError> {
    let ring = crate::config::key_ring(&args.key)?;
    let unmasker = crate::login::Unmasker::for_ring(&ring, args.ip.ip_mask, args.key_id.as_deref())
        .ok_or_else(|| {
            crate::config::ConfigError(format!(
                "unmask --key-id: no such key in the ring (ids: {})",
                ring.ids()
            ))
        })?;
    eprintln!("warning: the values below are personal data (ip, device_id)");
    let mut failed = 0;
    if let Some(query) = &args.query {
        let database = unmask_database(args.connection.database_url.as_deref())?;
        for line in unmask_query(&database, &unmasker, query).await? {
            println!("{line}");
        }
    }
    for token in &args.tokens {
        match unmasker.unmask(token) {
            Ok(value) => println!("{token}\t{value}"),
            Err(e) => {
                failed += 1;
                eprintln!("{token}: {e}");
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(AppError::Quarantine(format!(
            "{failed} token(s) could not be unmasked"
        )))
    }
}

/// The database `unmask --query` reads.
fn unmask_database(url: Option<&str>) -> Result<Database, crate::config::ConfigError> {
    let url = url.ok_or_else(|| {
        crate::config::ConfigError("unmask --query needs DATABASE_URL (--database-url)".into())
    })?;
    crate::postgres::Database::parse(url).map_err(|e| crate::config::ConfigError(e.to_string()))
}

/// `sqs2pg unmask --query`: runs one read-only SELECT and returns its rows as tab-separated
/// lines (a header first). Values in `masked_ip` / `masked_device_id` columns that are tokens of
/// this key, for that column's field, are replaced by what they hide; everything else is shown
/// as it is (an `hmac` token stays a token).
///
/// The query runs as one statement of the extended protocol (which refuses several statements
/// in one string), wrapped as a subquery (so it must be a SELECT), in a read-only transaction
/// with a statement timeout: it cannot change the database. Prefer a SELECT-only role anyway.
pub async fn unmask_query(
    database: &Database,
    unmasker: &crate::login::Unmasker,
    query: &str,
) -> Result<Vec<String>, AppError> {
    query_unmasked(database, query, |column, value| {
        unmask_cell(unmasker, column, value)
    })
    .await
}

/// Runs `query` as [`unmask_query`] does, each non-NULL cell through
/// `unmask_cell(column, value)`.
pub async fn query_unmasked(
    database: &Database,
    query: &str,
    unmask_cell: impl Fn(&str, String) -> String,
) -> Result<Vec<String>, AppError> {
    let mut client = database.connect().await?;
    pg::inspect::select_as_text(&mut client, query, unmask_cell)
        .await
        .map_err(AppError::Query)
}

/// A cell of `unmask --query`: unmasked only in a token column, and only to that column's field.
fn unmask_cell(unmasker: &crate::login::Unmasker, column: &str, value: String) -> String {
    use crate::login::mask::Unmasked;
    match (column, unmasker.unmask(&value)) {
        ("masked_ip", Ok(Unmasked::Ip(ip))) => ip.to_string(),
        ("masked_device_id", Ok(Unmasked::DeviceId(id))) => id,
        _ => value,
    }
}
