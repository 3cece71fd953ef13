//! `sqs2pg rekey`: the tokens an old key wrote into a table re-encrypted under a new key, in
//! place, for every token column `sqs2pg.mask_columns` records for the table (the login
//! table's `masked_ip` and `masked_device_id`, or a mapping's columns), each under its own
//! scope; then the old key is retired there.

use super::AppError;
use crate::config::ConfigError;
use crate::login::{ColumnMask, MaskKey, MaskMode};
use crate::postgres::{self as pg, Database, TableName};

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

/// Retires key $2 on table $1 in favour of key $3: runs refuse to start under it there.
const RETIRE_KEY: &str =
    "UPDATE sqs2pg.mask_keys SET retired_to = $3 WHERE table_name = $1 AND key_id = $2";

/// Distinct addresses mapped per round trip while re-keying ipcrypt addresses.
const ADDRESS_CHUNK: i64 = 10_000;

/// A column that holds tokens, as the bookkeeping knows it.
struct TokenColumn {
    /// Quoted for SQL.
    quoted: String,
    name: String,
    /// The scopes it was written under (one, unless a mapping changed it).
    scopes: Vec<String>,
    /// Its type as `format_type` spells it (`inet` for addresses kept as addresses).
    sql_type: String,
}

impl TokenColumn {
    /// The column as text, for comparing and reading tokens whatever its type.
    fn text(&self) -> String {
        format!("{}::text", self.quoted)
    }

    /// A text expression cast back to the column's type.
    fn cast(&self, text: &str) -> String {
        format!("CAST({text} AS {})", self.sql_type)
    }
}

/// The token columns of `table` that runs recorded, each with its scopes.
async fn token_columns(
    client: &tokio_postgres::Client,
    table: &TableName,
) -> Result<Vec<TokenColumn>, AppError> {
    let rows = client
        .query(
            "SELECT c.column_name, array_agg(DISTINCT c.scope ORDER BY c.scope),
                    format_type(a.atttypid, a.atttypmod)
               FROM sqs2pg.mask_columns c
               LEFT JOIN pg_attribute a
                 ON a.attrelid = to_regclass($2) AND a.attname = c.column_name
                AND a.attnum > 0 AND NOT a.attisdropped
              WHERE c.table_name = $1
              GROUP BY c.column_name, a.atttypid, a.atttypmod
              ORDER BY c.column_name",
            &[&table.to_string(), &table.quoted()],
        )
        .await
        .map_err(AppError::Query)?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.get(0);
        let Some(sql_type) = row.get::<_, Option<String>>(2) else {
            return Err(AppError::Quarantine(format!(
                "{table} has no column {name}, which sqs2pg.mask_columns says runs wrote tokens into: restore it (or drop its records) and run rekey again; nothing was changed"
            )));
        };
        columns.push(TokenColumn {
            quoted: pg::schema::quote_ident(&name),
            name,
            scopes: row.get(1),
            sql_type,
        });
    }
    Ok(columns)
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
    let name = table.to_string();
    let locked: bool = client
        .query_one(
            &pg::schema::writers_lock_sql("pg_try_advisory_lock"),
            &[&name],
        )
        .await
        .map_err(AppError::Query)?
        .get(0);
    if !locked {
        return Err(AppError::Quarantine(format!(
            "runs are writing to {name} (they hold its writers lock): stop them, run rekey, then start them again under the new key"
        )));
    }
    let columns = token_columns(&client, table).await?;
    let mut report = RekeyReport {
        address_rows: rekey_addresses(&mut client, table, &columns, from, to).await?,
        ..RekeyReport::default()
    };
    let (rows, tokens, stuck) =
        rekey_siv(&mut client, table, &columns, from, to, batch_rows).await?;
    report.rows = rows;
    report.tokens = tokens;
    let t = table.quoted();
    // Compared as prefixes, not with LIKE: key ids are base64url, and `_` is a LIKE wildcard.
    let left = rows_with_token_prefix(&client, &t, &columns, &format!("{from_id}.s.")).await?;
    if left > 0 {
        return Err(AppError::Quarantine(format!(
            "{left} row(s) still hold siv tokens of key {from_id} ({stuck} that do not re-key: damaged, or another column's token in the column; the rest locked by another session): fix or unlock them and run rekey again"
        )));
    }
    // The old key is retired on this table, and the new key takes over its latest modes, so
    // the next run under it does not warn.
    let tx = client.transaction().await.map_err(AppError::Query)?;
    tx.execute(RETIRE_KEY, &[&name, &from_id, &to_id])
        .await
        .map_err(AppError::Query)?;
    tx.execute(
        "UPDATE sqs2pg.mask_keys SET retired_to = NULL WHERE table_name = $1 AND key_id = $2",
        &[&name, &to_id],
    )
    .await
    .map_err(AppError::Query)?;
    tx.execute(
        "INSERT INTO sqs2pg.mask_keys (table_name, key_id, ip_mode, device_id_mode)
         SELECT table_name, $3, ip_mode, device_id_mode FROM sqs2pg.mask_keys
          WHERE table_name = $1 AND key_id = $2 ORDER BY last_used DESC LIMIT 1
         ON CONFLICT (table_name, key_id, ip_mode, device_id_mode) DO UPDATE
            SET last_used = clock_timestamp()",
        &[&name, &from_id, &to_id],
    )
    .await
    .map_err(AppError::Query)?;
    tx.execute(
        "INSERT INTO sqs2pg.mask_columns (table_name, column_name, scope, mode, key_id)
         SELECT DISTINCT ON (column_name, scope) table_name, column_name, scope, mode, $3
           FROM sqs2pg.mask_columns
          WHERE table_name = $1 AND key_id = $2
          ORDER BY column_name, scope, last_used DESC
         ON CONFLICT (table_name, column_name, key_id, mode, scope) DO UPDATE
            SET last_used = clock_timestamp()",
        &[&name, &from_id, &to_id],
    )
    .await
    .map_err(AppError::Query)?;
    tx.commit().await.map_err(AppError::Query)?;
    report.one_way_left =
        rows_with_token_prefix(&client, &t, &columns, &format!("{from_id}.h.")).await?;
    Ok(report)
}

/// Re-keys the addresses that the `ipcrypt` modes write (into `masked_ip`, or a mapping's
/// address column). They carry no key id, so which key and mode wrote them comes from
/// `sqs2pg.mask_columns`: for each column where `from` is the only live key recorded with an
/// ipcrypt mode (under one mode and scope), its addresses are re-encrypted; if other keys or
/// modes wrote addresses into the same column too, they cannot be told apart, and rekey
/// refuses.
///
/// One transaction, which blocks writers (readers go on) and gives up after `lock_timeout`:
/// per column, the distinct addresses are read through a cursor, mapped in chunks into a
/// temporary table, and the column is updated in one statement, each row matched on its value
/// before the update (an address that is both an old and a new value is never moved twice).
/// The same transaction retires `from` on the table, so the work is done exactly once: a rerun
/// after a crash finds it undone and does it, or done and skips it.
async fn rekey_addresses(
    client: &mut tokio_postgres::Client,
    table: &TableName,
    columns: &[TokenColumn],
    from: &MaskKey,
    to: &MaskKey,
) -> Result<u64, AppError> {
    let (from_id, to_id) = (from.key_id(), to.key_id());
    let (name, t) = (table.to_string(), table.quoted());
    let tx = client.transaction().await.map_err(AppError::Query)?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '30s'; LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE"
    ))
    .await
    .map_err(AppError::Query)?;
    let writers = tx
        .query(
            "SELECT DISTINCT c.column_name, c.key_id, c.mode, c.scope FROM sqs2pg.mask_columns c
              WHERE c.table_name = $1 AND c.mode IN ('ipcrypt', 'ipcrypt-pfx')
                AND NOT EXISTS (SELECT 1 FROM sqs2pg.mask_keys k
                                 WHERE k.table_name = c.table_name AND k.key_id = c.key_id
                                   AND k.retired_to IS NOT NULL)
              ORDER BY 1, 2, 3, 4",
            &[&name],
        )
        .await
        .map_err(AppError::Query)?;
    let writers: Vec<(String, String, String, String)> = writers
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let mut rows = 0;
    let mut any = false;
    for column in columns {
        let here: Vec<_> = writers.iter().filter(|w| w.0 == column.name).collect();
        let Some((_, _, mode_name, scope)) = here.iter().find(|w| w.1 == from_id) else {
            continue;
        };
        if here.len() > 1 {
            let one_scope = here.iter().all(|w| w.3 == here[0].3);
            let listed: Vec<String> = here
                .iter()
                .map(|(_, k, m, s)| {
                    if one_scope {
                        format!("{k} ({m})")
                    } else {
                        format!("{k} ({m}, scope {s})")
                    }
                })
                .collect();
            return Err(AppError::Quarantine(format!(
                "{} in {name} holds ipcrypt addresses written under more than one key or mode (or scope) ({}, per sqs2pg.mask_columns); addresses carry no key id, so they cannot be told apart, and rekey changes nothing. Rotate ipcrypt in this order: stop the runs, rekey, then start the runs under the new key",
                column.name,
                listed.join(", ")
            )));
        }
        any = true;
        let mode = if mode_name == "ipcrypt" {
            MaskMode::Ipcrypt
        } else {
            MaskMode::IpcryptPfx
        };
        let (old_mask, new_mask) = (
            ColumnMask::new(from, mode, scope),
            ColumnMask::new(to, mode, scope),
        );
        let c = column.text();
        // Only addresses: every other token holds a key id and `.h.` or `.s.`.
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS sqs2pg_rekey_map (old text PRIMARY KEY, new text NOT NULL) ON COMMIT DROP;
             TRUNCATE sqs2pg_rekey_map;
             DECLARE sqs2pg_addresses NO SCROLL CURSOR FOR
               SELECT DISTINCT {c} FROM {t} WHERE {c} ~ '^[0-9A-Fa-f:.]+(/[0-9]+)?$'"
        ))
        .await
        .map_err(AppError::Query)?;
        let mut mapped = 0usize;
        loop {
            let chunk = tx
                .query(&format!("FETCH {ADDRESS_CHUNK} FROM sqs2pg_addresses"), &[])
                .await
                .map_err(AppError::Query)?;
            if chunk.is_empty() {
                break;
            }
            let (mut old, mut new) = (Vec::new(), Vec::new());
            for row in &chunk {
                let address: String = row.get(0);
                // An inet column's text carries its prefix length (`/32` for a host).
                let bare = address.split('/').next().unwrap_or(&address);
                if let Ok(token) = old_mask.rekey(&new_mask, bare) {
                    new.push(token.as_str().to_owned());
                    old.push(address);
                }
            }
            mapped += old.len();
            tx.execute(
                "INSERT INTO sqs2pg_rekey_map SELECT * FROM unnest($1::text[], $2::text[])",
                &[&old, &new],
            )
            .await
            .map_err(AppError::Query)?;
        }
        tx.batch_execute("CLOSE sqs2pg_addresses")
            .await
            .map_err(AppError::Query)?;
        let updated = tx
            .execute(
                &format!(
                    "UPDATE {t} AS t SET {q} = {new} FROM sqs2pg_rekey_map AS m
                      WHERE t.{q}::text = m.old",
                    q = column.quoted,
                    new = column.cast("m.new"),
                ),
                &[],
            )
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
    tx.execute(RETIRE_KEY, &[&name, &from_id, &to_id])
        .await
        .map_err(AppError::Query)?;
    tx.commit().await.map_err(AppError::Query)?;
    Ok(rows)
}

/// The `siv` step of [`rekey`]: (rows, tokens, rows that do not re-key).
async fn rekey_siv(
    client: &mut tokio_postgres::Client,
    table: &TableName,
    columns: &[TokenColumn],
    from: &MaskKey,
    to: &MaskKey,
    batch_rows: i64,
) -> Result<(u64, u64, u64), AppError> {
    // Per column, its masks under each scope it was written with: a token opens under one.
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
    if columns.is_empty() {
        return Ok((0, 0, 0));
    }
    let t = table.quoted();
    let old = format!("{}.s.", from.key_id());
    // Batches are ranges of the table's blocks, so the table is read once in all: re-keyed
    // rows may move to other blocks, but they no longer match, and no writer adds old-key rows
    // meanwhile (rekey holds the writers lock). Rows locked by another session are skipped and
    // counted by the caller.
    let shape = client
        .query_one(
            &format!(
                "SELECT (pg_relation_size('{t}') / current_setting('block_size')::int)::bigint,
                        (SELECT CASE WHEN relpages > 0 AND reltuples > 0
                                     THEN reltuples / relpages ELSE 40 END
                           FROM pg_class WHERE oid = '{t}'::regclass)::float8",
                t = t.replace('\'', "''")
            ),
            &[],
        )
        .await
        .map_err(AppError::Query)?;
    let (blocks, rows_per_block): (i64, f64) = (shape.get(0), shape.get(1));
    let step = ((batch_rows as f64 / rows_per_block.max(1.0)).ceil() as i64).max(1);
    let texts: Vec<String> = columns.iter().map(TokenColumn::text).collect();
    let select = format!(
        "SELECT ctid::text, {list} FROM {t}
          WHERE ctid >= format('(%s,0)', $2::bigint)::tid
            AND ctid < format('(%s,0)', $3::bigint)::tid
            AND ({any})
          FOR UPDATE SKIP LOCKED",
        list = texts.join(", "),
        any = texts
            .iter()
            .map(|c| format!("starts_with({c}, $1)"))
            .collect::<Vec<_>>()
            .join(" OR "),
    );
    let update = format!(
        "UPDATE {t} AS t SET {sets}
           FROM unnest($1::text[], {arrays}) AS u(id, {names})
          WHERE t.ctid = u.id::tid",
        sets = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = {}", c.quoted, c.cast(&format!("u.c{i}"))))
            .collect::<Vec<_>>()
            .join(", "),
        arrays = (0..columns.len())
            .map(|i| format!("${}::text[]", i + 2))
            .collect::<Vec<_>>()
            .join(", "),
        names = (0..columns.len())
            .map(|i| format!("c{i}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let (mut rows_done, mut tokens, mut stuck) = (0u64, 0u64, 0u64);
    let mut start = 0i64;
    while start < blocks {
        let end = start + step;
        let tx = client.transaction().await.map_err(AppError::Query)?;
        let rows = tx
            .query(&select, &[&old, &start, &end])
            .await
            .map_err(AppError::Query)?;
        let mut ids = Vec::new();
        let mut values: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.len()];
        for row in &rows {
            let id: String = row.get(0);
            let mut new_row = Vec::with_capacity(columns.len());
            let mut count = 0;
            let mut ok = true;
            for (i, scopes) in masks.iter().enumerate() {
                let token: Option<String> = row.get(i + 1);
                match token {
                    Some(t) if t.starts_with(&old) => {
                        match scopes.iter().find_map(|(from, to)| from.rekey(to, &t).ok()) {
                            Some(m) => {
                                count += 1;
                                new_row.push(Some(m.as_str().to_owned()));
                            }
                            None => {
                                ok = false;
                                break;
                            }
                        }
                    }
                    other => new_row.push(other),
                }
            }
            if !ok {
                tracing::warn!(row = %id, "rekey: a token of this row does not re-key (damaged, or in the wrong column); left as it is");
                stuck += 1;
                continue;
            }
            tokens += count;
            ids.push(id);
            for (column, value) in values.iter_mut().zip(new_row) {
                column.push(value);
            }
        }
        if !ids.is_empty() {
            let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&ids];
            for column in &values {
                params.push(column);
            }
            tx.execute(&update, &params)
                .await
                .map_err(AppError::Query)?;
        }
        tx.commit().await.map_err(AppError::Query)?;
        rows_done += ids.len() as u64;
        if !ids.is_empty() {
            tracing::info!(rows = rows_done, tokens, "rekey: batch committed");
        }
        start = end;
    }
    Ok((rows_done, tokens, stuck))
}

/// Rows of `table` (quoted) with a token column starting with `prefix` (a key id and mode).
async fn rows_with_token_prefix(
    client: &tokio_postgres::Client,
    table: &str,
    columns: &[TokenColumn],
    prefix: &str,
) -> Result<i64, AppError> {
    if columns.is_empty() {
        return Ok(0);
    }
    let any = columns
        .iter()
        .map(|c| format!("starts_with({}, $1)", c.text()))
        .collect::<Vec<_>>()
        .join(" OR ");
    Ok(client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE {any}"),
            &[&prefix],
        )
        .await
        .map_err(AppError::Query)?
        .get(0))
}
