//! `sqs2pg rekey`: the tokens an old key wrote into a table re-encrypted under a new key, in
//! place, for every token column `sqs2pg.mask_columns` records for the table (the login
//! table's `masked_ip` and `masked_device_id`, or a mapping's columns), each under its own
//! scope; then the old key is retired there.

use super::AppError;
use crate::config::ConfigError;
use crate::keys::MaskKey;
use crate::mask::{ColumnMask, MaskMode};
use crate::postgres::rekey::{self as sql, TokenColumn};
use crate::postgres::{self as pg, Database, TableName};

/// `sqs2pg rekey`, as the command line runs it: the keys picked from the ring (or a key
/// file), the table re-encrypted, a summary printed.
pub async fn command(args: crate::cli::RekeyArgs) -> Result<(), AppError> {
    // With a mapping, its table (rekey finds the token columns in the bookkeeping).
    let (database, table, mappings) = crate::config::target(&args.database)?;
    let ring = crate::config::key_ring(&args.key)?;
    let in_ring = |id: &str, flag: &str| {
        ring.get(id).cloned().ok_or_else(|| {
            crate::config::ConfigError(format!(
                "rekey {flag} {id}: no such key in the ring (ids: {})",
                ring.ids()
            ))
        })
    };
    let to = match &args.to {
        Some(id) => in_ring(id, "--to")?,
        None => ring.active().clone(),
    };
    let from = match (&args.from, &args.from_key_file) {
        (Some(id), _) => in_ring(id, "--from")?,
        (None, Some(file)) => crate::config::mask_key(None, Some(file))?,
        (None, None) => {
            return Err(crate::config::ConfigError(
                "rekey: say which key the tokens were written under: --from KEY_ID (a key of the ring in SQS2PG_MASK_KEY_RING) or --from-key-file FILE".into(),
            )
            .into())
        }
    };
    for target in super::target::Target::of_run(&table, &mappings) {
        let table = &target.table;
        let report = rekey(&database, table, &from, &to, args.batch_rows.max(1)).await?;
        if report.address_rows > 0 {
            println!(
                "rekey {table}: {} row(s) with ipcrypt addresses re-encrypted",
                report.address_rows
            );
        }
        println!(
            "rekey done on {table}: {} token(s) in {} row(s) re-encrypted under key {}",
            report.tokens,
            report.rows,
            crate::login::Masker::new(&to).key_id()
        );
        if report.one_way_left > 0 {
            println!(
                "{} row(s) hold hmac tokens of the old key: one-way tokens cannot be re-keyed (nobody can recover their values); keep the old key for comparisons across the change, or let those rows age out",
                report.one_way_left
            );
        }
    }
    Ok(())
}

/// What `sqs2pg rekey` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Rows whose `siv` tokens were re-encrypted.
    pub rows: u64,
    pub tokens: u64,
    /// Tokens of the old key that are one-way (`hmac`) and stay as they are.
    pub one_way_left: i64,
    /// Rows whose addresses (`ipcrypt` / `ipcrypt-pfx`) were re-encrypted, over all columns.
    pub address_rows: u64,
}

/// `sqs2pg rekey`: moves the tokens written under `from` in `table` to `to`, then retires
/// `from` there (runs refuse to start under it again).
///
/// - It holds the table's writers lock exclusively, so it refuses while a run writes to the
///   table (runs hold the lock shared), and runs starting meanwhile wait for it.
/// - `ipcrypt` addresses first (see `rekey_addresses`), in one transaction.
/// - Then every `siv` token, in batches of about `batch_rows` rows, each one transaction,
///   walking the table's blocks once: a committed batch is done (its tokens carry the new key
///   id), and a rerun does what is left. `hmac` tokens are one-way and stay, counted.
pub async fn rekey(
    database: &Database,
    table: &TableName,
    from: &MaskKey,
    to: &MaskKey,
    batch_rows: i64,
) -> Result<RekeyReport, AppError> {
    let (from_id, to_id) = (from.key_id(), to.key_id());
    if from_id == to_id {
        return Err(ConfigError(
            "rekey: the old and the new key are the same key; give the new one with --to, or as the ring's active key or SQS2PG_MASK_KEY(_FILE)".into(),
        )
        .into());
    }
    let mut client = database.connect().await?;
    pg::check_ready_schema(&client).await?;
    if !pg::schema::table_exists(&client, table)
        .await
        .map_err(AppError::Query)?
    {
        return Err(pg::schema::NotReady::NoTable(table.to_string()).into());
    }
    if !sql::try_lock_writers(&client, table)
        .await
        .map_err(AppError::Query)?
    {
        return Err(AppError::Quarantine(format!(
            "runs are writing to {table} (they hold its writers lock): stop them, run rekey, then start them again under the new key"
        )));
    }
    let columns = sql::token_columns(&client, table)
        .await
        .map_err(AppError::Query)?
        .map_err(|name| AppError::Quarantine(format!(
            "{table} has no column {name}, which sqs2pg.mask_columns says runs wrote tokens into: restore it (or drop its records) and run rekey again; nothing was changed"
        )))?;
    let mut report = RekeyReport {
        address_rows: rekey_addresses(&mut client, table, &columns, from, to).await?,
        ..RekeyReport::default()
    };
    let siv = rekey_siv(&mut client, table, &columns, from, to, batch_rows).await?;
    report.rows = siv.rows;
    report.tokens = siv.tokens;
    let left = sql::rows_with_token_prefix(&client, table, &columns, &format!("{from_id}.s."))
        .await
        .map_err(AppError::Query)?;
    if left > 0 {
        return Err(AppError::Quarantine(format!(
            "{left} row(s) still hold siv tokens of key {from_id} ({} that do not re-key: damaged, or another column's token in the column; the rest locked by another session): fix or unlock them and run rekey again",
            siv.stuck
        )));
    }
    // The old key is retired on this table, and the new key takes over its latest modes, so
    // the next run under it does not warn.
    sql::hand_over_key(&mut client, table, &from_id, &to_id)
        .await
        .map_err(AppError::Query)?;
    report.one_way_left =
        sql::rows_with_token_prefix(&client, table, &columns, &format!("{from_id}.h."))
            .await
            .map_err(AppError::Query)?;
    Ok(report)
}

/// Re-keys the addresses that the `ipcrypt` modes write (into `masked_ip`, or a mapping's
/// address column). They carry no key id, so which key and mode wrote them comes from
/// `sqs2pg.mask_columns`: for each column where `from` is the only live key recorded with an
/// ipcrypt mode (under one mode and scope), its addresses are re-encrypted; if other keys or
/// modes wrote addresses into the same column too, they cannot be told apart, and rekey
/// refuses.
///
/// One transaction (see `postgres::rekey::rewrite_addresses`), which also retires `from` on
/// the table, so the work is done exactly once: a rerun after a crash finds it undone and
/// does it, or done and skips it.
async fn rekey_addresses(
    client: &mut tokio_postgres::Client,
    table: &TableName,
    columns: &[TokenColumn],
    from: &MaskKey,
    to: &MaskKey,
) -> Result<u64, AppError> {
    let (from_id, to_id) = (from.key_id(), to.key_id());
    let tx = sql::begin_address_rewrite(client, table)
        .await
        .map_err(AppError::Query)?;
    let writers = sql::address_writers(&tx, table)
        .await
        .map_err(AppError::Query)?;
    let mut rows = 0;
    let mut any = false;
    for column in columns {
        let here: Vec<_> = writers.iter().filter(|w| w.column == column.name).collect();
        let Some(writer) = here.iter().find(|w| w.key_id == from_id) else {
            continue;
        };
        if here.len() > 1 {
            let one_scope = here.iter().all(|w| w.scope == here[0].scope);
            let listed: Vec<String> = here
                .iter()
                .map(|w| {
                    if one_scope {
                        format!("{} ({})", w.key_id, w.mode)
                    } else {
                        format!("{} ({}, scope {})", w.key_id, w.mode, w.scope)
                    }
                })
                .collect();
            return Err(AppError::Quarantine(format!(
                "{} in {table} holds ipcrypt addresses written under more than one key or mode (or scope) ({}, per sqs2pg.mask_columns); addresses carry no key id, so they cannot be told apart, and rekey changes nothing. Rotate ipcrypt in this order: stop the runs, rekey, then start the runs under the new key",
                column.name,
                listed.join(", ")
            )));
        }
        any = true;
        let mode = if writer.mode == "ipcrypt" {
            MaskMode::Ipcrypt
        } else {
            MaskMode::IpcryptPfx
        };
        let (old_mask, new_mask) = (
            ColumnMask::new(from, mode, &writer.scope),
            ColumnMask::new(to, mode, &writer.scope),
        );
        let (updated, mapped) = sql::rewrite_addresses(&tx, table, column, |address| {
            old_mask
                .rekey(&new_mask, address)
                .ok()
                .map(|token| token.as_str().to_owned())
        })
        .await
        .map_err(AppError::Query)?;
        tracing::info!(
            column = %column.name,
            rows = updated,
            addresses = mapped,
            "rekey: ipcrypt addresses re-encrypted"
        );
        rows += updated;
    }
    if !any {
        return Ok(0);
    }
    sql::retire_key(&tx, table, &from_id, &to_id)
        .await
        .map_err(AppError::Query)?;
    tx.commit().await.map_err(AppError::Query)?;
    Ok(rows)
}

/// The `siv` step of [`rekey`]: every token of `from` re-encrypted under `to`, in its column's
/// scope (a token opens under one of the scopes its column was written with).
async fn rekey_siv(
    client: &mut tokio_postgres::Client,
    table: &TableName,
    columns: &[TokenColumn],
    from: &MaskKey,
    to: &MaskKey,
    batch_rows: i64,
) -> Result<sql::Rewritten, AppError> {
    let masks: Vec<Vec<(ColumnMask, ColumnMask)>> = columns
        .iter()
        .map(|c| {
            c.scopes
                .iter()
                .map(|s| {
                    (
                        ColumnMask::new(from, MaskMode::Siv, s),
                        ColumnMask::new(to, MaskMode::Siv, s),
                    )
                })
                .collect()
        })
        .collect();
    let old = format!("{}.s.", from.key_id());
    sql::rewrite_tokens(client, table, columns, &old, batch_rows, |row| {
        let mut new_row = Vec::with_capacity(row.len());
        let mut count = 0;
        for (token, scopes) in row.iter().zip(&masks) {
            match token {
                Some(t) if t.starts_with(&old) => {
                    let moved = scopes
                        .iter()
                        .find_map(|(from, to)| from.rekey(to, t).ok())?;
                    count += 1;
                    new_row.push(Some(moved.as_str().to_owned()));
                }
                other => new_row.push(other.clone()),
            }
        }
        Some((new_row, count))
    })
    .await
    .map_err(AppError::Query)
}
