//! Key management commands: `keygen --ring` (a new key into a ring file) and `rekey` (tokens
//! of an old key re-encrypted under a new one, in the table, in place).

use std::path::Path;

use super::{rfc3339, AppError};
use crate::config::ConfigError;
use crate::login::mask::Unmasked;
use crate::login::{MaskKey, MaskMode, MaskModes, Masker, Unmasker};
use crate::postgres::{self as pg, Database, TableName};

/// `sqs2pg keygen --ring FILE [--activate]`: adds a new random key to the ring file (created
/// with mode 600 if missing) and returns its id. Existing keys and comments are kept.
///
/// `FILE.new` is created exclusively (mode 600) before the ring is read, so two keygens never
/// both read the same ring and one of them lose the other's key; the new text is written there,
/// synced, and renamed over the ring, and the directory is synced, so a crash leaves the old
/// ring or the new one.
pub fn keygen_ring(path: &Path, activate: bool) -> Result<String, AppError> {
    use std::io::Write as _;
    let shown = path.display().to_string();
    let file_error = |path: &str, error| AppError::File {
        path: path.to_owned(),
        error,
    };
    let temp = format!("{shown}.new");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            AppError::Quarantine(format!(
                "{temp} exists: another keygen is writing this ring, or one was interrupted (then remove {temp})"
            ))
        } else {
            file_error(&temp, e)
        }
    })?;
    let result = (|| {
        let existing = match path.try_exists() {
            Ok(true) => Some(crate::config::read_key_file(
                path,
                &format!("key ring {shown}"),
            )?),
            Ok(false) => None,
            Err(e) => return Err(file_error(&shown, e)),
        };
        let key_text = zeroize::Zeroizing::new(
            MaskKey::generate_base64().map_err(|e| file_error("the OS random source", e))?,
        );
        let key = MaskKey::from_base64(&key_text).expect("a fresh key decodes");
        let created = rfc3339(std::time::SystemTime::now());
        let (text, id) = crate::login::keyring::add_key(
            existing.as_deref().map(String::as_str),
            &key,
            &key_text,
            &created,
            activate,
        )
        .map_err(|e| ConfigError(format!("key ring {shown}: {e}")))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&temp, path))
            .map_err(|e| file_error(&shown, e))?;
        let directory = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(dir) = std::fs::File::open(directory) {
            let _ = dir.sync_all();
        }
        Ok(id)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// What `sqs2pg rekey` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Rows whose `siv` tokens were re-encrypted.
    pub rows: u64,
    pub tokens: u64,
    /// Tokens of the old key that are one-way (`hmac`) and stay as they are.
    pub one_way_left: i64,
    /// Rows whose `masked_ip` (an address: `ipcrypt` / `ipcrypt-pfx`) was re-encrypted.
    pub address_rows: u64,
}

/// Retires key $2 on table $1 in favour of key $3: runs refuse to start under it there.
const RETIRE_KEY: &str =
    "UPDATE sqs2pg.mask_keys SET retired_to = $3 WHERE table_name = $1 AND key_id = $2";

/// Distinct addresses mapped per round trip while re-keying ipcrypt addresses.
const ADDRESS_CHUNK: i64 = 10_000;

/// `sqs2pg rekey`: moves the tokens written under `from` in `table` to `to`, then retires
/// `from` there (runs refuse to start under it again).
///
/// - It holds the table's writers lock exclusively, so it refuses while a run writes to the
///   table (runs hold the lock shared), and runs starting meanwhile wait for it.
/// - `ipcrypt` addresses first (see [`rekey_addresses`]), in one transaction.
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
    pg::check_ready(&client, table).await?;
    let name = table.to_string();
    // Token columns a mapping wrote besides the login pair (or under other scopes): rekey does
    // not know them, and retiring the key would strand their tokens.
    let others: Option<String> = client
        .query_one(
            "SELECT string_agg(DISTINCT column_name || ' (scope ' || scope || ')', ', ')
               FROM sqs2pg.mask_columns
              WHERE table_name = $1
                AND NOT ((column_name = 'masked_ip' AND scope = 'ip')
                      OR (column_name = 'masked_device_id' AND scope = 'device_id'))",
            &[&name],
        )
        .await
        .map_err(AppError::Query)?
        .get(0);
    if let Some(others) = others {
        return Err(AppError::Quarantine(format!(
            "rekey serves the login table's masked_ip and masked_device_id, and {name} also has token columns a mapping wrote: {others}; rekey changed nothing (re-keying a mapping's columns is not supported yet)"
        )));
    }
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
    let mut report = RekeyReport {
        address_rows: rekey_addresses(&mut client, table, from, to).await?,
        ..RekeyReport::default()
    };
    let (rows, tokens, stuck) = rekey_siv(&mut client, table, from, to, batch_rows).await?;
    report.rows = rows;
    report.tokens = tokens;
    let t = table.quoted();
    // Compared as prefixes, not with LIKE: key ids are base64url, and `_` is a LIKE wildcard.
    let left = rows_with_token_prefix(&client, &t, &format!("{from_id}.s.")).await?;
    if left > 0 {
        return Err(AppError::Quarantine(format!(
            "{left} row(s) still hold siv tokens of key {from_id} ({stuck} that do not re-key: damaged, or another field's token in the column; the rest locked by another session): fix or unlock them and run rekey again"
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
         SELECT DISTINCT ON (column_name) table_name, column_name, scope, mode, $3
           FROM sqs2pg.mask_columns
          WHERE table_name = $1 AND key_id = $2
          ORDER BY column_name, last_used DESC
         ON CONFLICT (table_name, column_name, key_id, mode, scope) DO UPDATE
            SET last_used = clock_timestamp()",
        &[&name, &from_id, &to_id],
    )
    .await
    .map_err(AppError::Query)?;
    tx.commit().await.map_err(AppError::Query)?;
    report.one_way_left = rows_with_token_prefix(&client, &t, &format!("{from_id}.h.")).await?;
    Ok(report)
}

/// Re-keys the addresses that the `ipcrypt` modes write into `masked_ip`. They carry no key
/// id, so which key and mode wrote them comes from `sqs2pg.mask_keys`: if `from` is the only
/// live key recorded with an ipcrypt mode on this table (under one mode), its addresses are
/// re-encrypted; if other keys or modes wrote addresses too, they cannot be told apart, and
/// rekey refuses.
///
/// One transaction, which blocks writers (readers go on) and gives up after `lock_timeout`:
/// the distinct addresses are read through a cursor, mapped in chunks into a temporary table,
/// and the table is updated in one statement, each row matched on its value before the update
/// (an address that is both an old and a new value is never moved twice). The same
/// transaction retires `from` on the table, so the work is done exactly once: a rerun after a
/// crash finds it undone and does it, or done and skips it.
async fn rekey_addresses(
    client: &mut tokio_postgres::Client,
    table: &TableName,
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
            "SELECT DISTINCT c.key_id, c.mode FROM sqs2pg.mask_columns c
              WHERE c.table_name = $1 AND c.column_name = 'masked_ip' AND c.scope = 'ip'
                AND c.mode IN ('ipcrypt', 'ipcrypt-pfx')
                AND NOT EXISTS (SELECT 1 FROM sqs2pg.mask_keys k
                                 WHERE k.table_name = c.table_name AND k.key_id = c.key_id
                                   AND k.retired_to IS NOT NULL)
              ORDER BY 1, 2",
            &[&name],
        )
        .await
        .map_err(AppError::Query)?;
    let writers: Vec<(String, String)> = writers.iter().map(|r| (r.get(0), r.get(1))).collect();
    let Some((_, mode_name)) = writers.iter().find(|(id, _)| *id == from_id) else {
        return Ok(0);
    };
    if writers.len() > 1 {
        let listed: Vec<String> = writers.iter().map(|(k, m)| format!("{k} ({m})")).collect();
        return Err(AppError::Quarantine(format!(
            "masked_ip in {name} holds ipcrypt addresses written under more than one key or mode ({}, per sqs2pg.mask_keys); addresses carry no key id, so they cannot be told apart, and rekey changes nothing. Rotate ipcrypt in this order: stop the runs, rekey, then start the runs under the new key",
            listed.join(", ")
        )));
    }
    let mode = if mode_name == "ipcrypt" {
        MaskMode::Ipcrypt
    } else {
        MaskMode::IpcryptPfx
    };
    let unmasker = Unmasker::with_ip_mode(from, mode);
    let masker = Masker::with_modes(
        to,
        MaskModes {
            ip: mode,
            device_id: MaskMode::Hmac,
        },
    );
    // Only addresses: every other token holds a key id and `.h.` or `.s.`.
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE sqs2pg_rekey_map (old text PRIMARY KEY, new text NOT NULL) ON COMMIT DROP;
         DECLARE sqs2pg_addresses NO SCROLL CURSOR FOR
           SELECT DISTINCT masked_ip FROM {t} WHERE masked_ip ~ '^[0-9A-Fa-f:.]+$'"
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
            if let Ok(Unmasked::Ip(ip)) = unmasker.unmask(&address) {
                new.push(masker.mask_ip(ip).as_str().to_owned());
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
    let rows = tx
        .execute(
            &format!(
                "UPDATE {t} AS t SET masked_ip = m.new FROM sqs2pg_rekey_map AS m
                  WHERE t.masked_ip = m.old"
            ),
            &[],
        )
        .await
        .map_err(AppError::Query)?;
    tx.execute(RETIRE_KEY, &[&name, &from_id, &to_id])
        .await
        .map_err(AppError::Query)?;
    tx.commit().await.map_err(AppError::Query)?;
    tracing::info!(
        rows,
        addresses = mapped,
        "rekey: ipcrypt addresses re-encrypted"
    );
    Ok(rows)
}

/// The `siv` step of [`rekey`]: (rows, tokens, rows that do not re-key).
async fn rekey_siv(
    client: &mut tokio_postgres::Client,
    table: &TableName,
    from: &MaskKey,
    to: &MaskKey,
    batch_rows: i64,
) -> Result<(u64, u64, u64), AppError> {
    let unmasker = Unmasker::new(from);
    let masker = Masker::with_modes(
        to,
        MaskModes {
            ip: MaskMode::Siv,
            device_id: MaskMode::Siv,
        },
    );
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
    let (mut rows_done, mut tokens, mut stuck) = (0u64, 0u64, 0u64);
    let mut start = 0i64;
    while start < blocks {
        let end = start + step;
        let tx = client.transaction().await.map_err(AppError::Query)?;
        let rows = tx
            .query(
                &format!(
                    "SELECT ctid::text, masked_ip, masked_device_id FROM {t}
                      WHERE ctid >= format('(%s,0)', $2::bigint)::tid
                        AND ctid < format('(%s,0)', $3::bigint)::tid
                        AND (starts_with(masked_ip, $1) OR starts_with(masked_device_id, $1))
                      FOR UPDATE SKIP LOCKED"
                ),
                &[&old, &start, &end],
            )
            .await
            .map_err(AppError::Query)?;
        let (mut ids, mut ips, mut devices) = (Vec::new(), Vec::new(), Vec::new());
        for row in &rows {
            let id: String = row.get(0);
            let again = |token: Option<String>, field: crate::login::Field| match token {
                Some(t) if t.starts_with(&old) => {
                    crate::login::mask::rekey_token(&unmasker, &masker, &t, field)
                        .map(|m| (Some(m.as_str().to_owned()), 1))
                        .ok()
                }
                other => Some((other, 0)),
            };
            match (
                again(row.get(1), crate::login::Field::Ip),
                again(row.get(2), crate::login::Field::DeviceId),
            ) {
                (Some((ip, a)), Some((device, b))) => {
                    tokens += a + b;
                    ids.push(id);
                    ips.push(ip);
                    devices.push(device);
                }
                _ => {
                    tracing::warn!(row = %id, "rekey: a token of this row does not re-key (damaged, or in the wrong column); left as it is");
                    stuck += 1;
                }
            }
        }
        if !ids.is_empty() {
            tx.execute(
                &format!(
                    "UPDATE {t} AS t SET masked_ip = u.ip, masked_device_id = u.device
                       FROM unnest($1::text[], $2::text[], $3::text[]) AS u(id, ip, device)
                      WHERE t.ctid = u.id::tid"
                ),
                &[&ids, &ips, &devices],
            )
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

/// Rows of `table` (quoted) with a masked column starting with `prefix` (a key id and mode).
async fn rows_with_token_prefix(
    client: &tokio_postgres::Client,
    table: &str,
    prefix: &str,
) -> Result<i64, AppError> {
    Ok(client
        .query_one(
            &format!(
                "SELECT count(*) FROM {table}
                  WHERE starts_with(masked_ip, $1) OR starts_with(masked_device_id, $1)"
            ),
            &[&prefix],
        )
        .await
        .map_err(AppError::Query)?
        .get(0))
}
