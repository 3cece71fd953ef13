//! The record of which keys and modes runs masked a table with (`sqs2pg.mask_keys`,
//! `sqs2pg.mask_columns`), checked at every run's start, and the table's writers lock that
//! keeps `rekey` and runs apart.

use tokio_postgres::Client;

/// A column a run writes tokens into: its name, the scope its subkeys are derived for, and
/// its mode (`hmac`, `siv`, `ipcrypt`, `ipcrypt-pfx`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedColumn {
    pub column: String,
    pub scope: String,
    pub mode: String,
}

/// What the last run before this one masked with, when it differs from this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    pub previous_key_id: String,
    pub previous_modes: (String, String),
}

/// What [`record_mask_key`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The same key and modes as the table's last run (or the table's first run).
    Unchanged,
    /// Another key or other modes than the table's last run.
    Changed(KeyChange),
    /// `rekey` moved this key's tokens in the table to the key named: writing under it again
    /// would mix keys (nothing was recorded).
    Retired { to: String },
}

/// The advisory lock id of "runs writing to `table`": runs hold it shared while they run,
/// `rekey` takes it exclusively.
pub fn writers_lock_sql(function: &str) -> String {
    format!("SELECT {function}(hashtext('sqs2pg.writers:' || $1))")
}

/// Takes `table`'s writers lock shared, for the session (waiting while a `rekey` holds it):
/// a run holds it while it writes to the table.
pub async fn lock_writers_shared(
    client: &Client,
    table: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(&writers_lock_sql("pg_advisory_lock_shared"), &[&table])
        .await
        .map(drop)
}

/// Records that a run masks `table` with `key_id` and these modes (and, per column, mode and
/// scope in `sqs2pg.mask_columns`), and says whether that differs from the table's most recent
/// run. Runs starting at once (replicas) take turns under
/// a transaction-scoped advisory lock, so each compares against the one before it.
pub async fn record_mask_key(
    client: &mut Client,
    table: &str,
    key_id: &str,
    ip_mode: &str,
    device_id_mode: &str,
    columns: &[MaskedColumn],
) -> Result<KeyCheck, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('sqs2pg.mask_keys'))",
        &[],
    )
    .await?;
    let retired = tx
        .query_opt(
            "SELECT retired_to FROM sqs2pg.mask_keys
              WHERE table_name = $1 AND key_id = $2 AND retired_to IS NOT NULL LIMIT 1",
            &[&table, &key_id],
        )
        .await?;
    if let Some(row) = retired {
        return Ok(KeyCheck::Retired { to: row.get(0) });
    }
    let last = tx
        .query_opt(
            "SELECT key_id, ip_mode, device_id_mode FROM sqs2pg.mask_keys
              WHERE table_name = $1 ORDER BY last_used DESC LIMIT 1",
            &[&table],
        )
        .await?;
    tx.execute(
        "INSERT INTO sqs2pg.mask_keys (table_name, key_id, ip_mode, device_id_mode)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (table_name, key_id, ip_mode, device_id_mode) DO UPDATE
            SET last_used = clock_timestamp()",
        &[&table, &key_id, &ip_mode, &device_id_mode],
    )
    .await?;
    for c in columns {
        tx.execute(
            "INSERT INTO sqs2pg.mask_columns (table_name, column_name, scope, mode, key_id)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (table_name, column_name, key_id, mode, scope) DO UPDATE
                SET last_used = clock_timestamp()",
            &[&table, &c.column, &c.scope, &c.mode, &key_id],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(match last {
        Some(row) => {
            let (id, ip, device): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            if id != key_id || ip != ip_mode || device != device_id_mode {
                KeyCheck::Changed(KeyChange {
                    previous_key_id: id,
                    previous_modes: (ip, device),
                })
            } else {
                KeyCheck::Unchanged
            }
        }
        None => KeyCheck::Unchanged,
    })
}
