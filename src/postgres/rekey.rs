//! The SQL of `sqs2pg rekey`: which columns hold tokens, the writers lock taken exclusively,
//! addresses rewritten through a map in one transaction, `siv` tokens rewritten in ranges of
//! the table's blocks, and the key record handed from the old key to the new. What each token
//! becomes is the caller's to say (`app::rekey`, with the keys); this module only reads and
//! writes.

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Transaction};

use super::schema::{quote_ident, writers_lock_sql};
use super::TableName;

/// Retires key $2 on table $1 in favour of key $3: runs refuse to start under it there.
const RETIRE_KEY: &str =
    "UPDATE sqs2pg.mask_keys SET retired_to = $3 WHERE table_name = $1 AND key_id = $2";

/// Distinct addresses mapped per round trip while re-keying ipcrypt addresses.
const ADDRESS_CHUNK: i64 = 10_000;

/// A column that holds tokens, as the bookkeeping knows it.
#[derive(Debug, Clone)]
pub struct TokenColumn {
    /// Quoted for SQL.
    quoted: String,
    pub name: String,
    /// The scopes it was written under (one, unless a mapping changed it).
    pub scopes: Vec<String>,
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

/// The token columns of `table` that runs recorded, each with its scopes; `Err(name)` when a
/// recorded column is no longer in the table.
pub async fn token_columns(
    client: &Client,
    table: &TableName,
) -> Result<Result<Vec<TokenColumn>, String>, tokio_postgres::Error> {
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
        .await?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.get(0);
        let Some(sql_type) = row.get::<_, Option<String>>(2) else {
            return Ok(Err(name));
        };
        columns.push(TokenColumn {
            quoted: quote_ident(&name),
            name,
            scopes: row.get(1),
            sql_type,
        });
    }
    Ok(Ok(columns))
}

/// Takes the table's writers lock exclusively (for the session), without waiting: false when
/// runs hold it (shared) now.
pub async fn try_lock_writers(
    client: &Client,
    table: &TableName,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one(
            &writers_lock_sql("pg_try_advisory_lock"),
            &[&table.to_string()],
        )
        .await?
        .get(0))
}

/// A live key that wrote ipcrypt addresses into a column, as `sqs2pg.mask_columns` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressWriter {
    pub column: String,
    pub key_id: String,
    /// `ipcrypt` or `ipcrypt-pfx`.
    pub mode: String,
    pub scope: String,
}

/// Starts the address step's transaction: it blocks writers (readers go on) and gives up
/// after 30 s waiting for the table's lock.
pub async fn begin_address_rewrite<'a>(
    client: &'a mut Client,
    table: &TableName,
) -> Result<Transaction<'a>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '30s'; LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE",
        table.quoted()
    ))
    .await?;
    Ok(tx)
}

/// The live keys (not retired on `table`) that wrote ipcrypt addresses, per column.
pub async fn address_writers(
    tx: &Transaction<'_>,
    table: &TableName,
) -> Result<Vec<AddressWriter>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT DISTINCT c.column_name, c.key_id, c.mode, c.scope FROM sqs2pg.mask_columns c
              WHERE c.table_name = $1 AND c.mode IN ('ipcrypt', 'ipcrypt-pfx')
                AND NOT EXISTS (SELECT 1 FROM sqs2pg.mask_keys k
                                 WHERE k.table_name = c.table_name AND k.key_id = c.key_id
                                   AND k.retired_to IS NOT NULL)
              ORDER BY 1, 2, 3, 4",
            &[&table.to_string()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AddressWriter {
            column: r.get(0),
            key_id: r.get(1),
            mode: r.get(2),
            scope: r.get(3),
        })
        .collect())
}

/// Rewrites the addresses in `column`: the distinct ones are read through a cursor, each
/// mapped by `map` (its bare address, without an inet column's prefix length; `None` leaves
/// it), in chunks into a temporary table, and the column is updated in one statement, each row
/// matched on its value before the update (an address that is both an old and a new value is
/// never moved twice). Returns (rows updated, addresses mapped).
pub async fn rewrite_addresses(
    tx: &Transaction<'_>,
    table: &TableName,
    column: &TokenColumn,
    map: impl Fn(&str) -> Option<String>,
) -> Result<(u64, usize), tokio_postgres::Error> {
    let t = table.quoted();
    let c = column.text();
    // Only addresses: every other token holds a key id and `.h.` or `.s.`.
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS sqs2pg_rekey_map (old text PRIMARY KEY, new text NOT NULL) ON COMMIT DROP;
         TRUNCATE sqs2pg_rekey_map;
         DECLARE sqs2pg_addresses NO SCROLL CURSOR FOR
           SELECT DISTINCT {c} FROM {t} WHERE {c} ~ '^[0-9A-Fa-f:.]+(/[0-9]+)?$'"
    ))
    .await?;
    let mut mapped = 0usize;
    loop {
        let chunk = tx
            .query(&format!("FETCH {ADDRESS_CHUNK} FROM sqs2pg_addresses"), &[])
            .await?;
        if chunk.is_empty() {
            break;
        }
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for row in &chunk {
            let address: String = row.get(0);
            // An inet column's text carries its prefix length (`/32` for a host).
            let bare = address.split('/').next().unwrap_or(&address);
            if let Some(token) = map(bare) {
                new.push(token);
                old.push(address);
            }
        }
        mapped += old.len();
        tx.execute(
            "INSERT INTO sqs2pg_rekey_map SELECT * FROM unnest($1::text[], $2::text[])",
            &[&old, &new],
        )
        .await?;
    }
    tx.batch_execute("CLOSE sqs2pg_addresses").await?;
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
        .await?;
    Ok((updated, mapped))
}

/// Retires key `from` on `table` in favour of `to`: runs refuse to start under it there.
pub async fn retire_key(
    tx: &Transaction<'_>,
    table: &TableName,
    from: &str,
    to: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(RETIRE_KEY, &[&table.to_string(), &from, &to])
        .await
        .map(drop)
}

/// What [`rewrite_tokens`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    pub rows: u64,
    pub tokens: u64,
    /// Rows whose tokens `rewrite` could not move (left as they are).
    pub stuck: u64,
}

/// Rewrites the rows of `table` with a token in `columns` starting with `prefix`, in batches
/// of about `batch_rows` rows, each one transaction: `rewrite` gets a row's values of
/// `columns` (as text) and gives its new values and how many tokens it changed, or `None` when
/// one of them cannot be moved (the row is left and counted as stuck).
///
/// Batches are ranges of the table's blocks, so the table is read once in all: rewritten rows
/// may move to other blocks, but they no longer match, and no writer adds matching rows
/// meanwhile (the caller holds the writers lock). Rows locked by another session are skipped.
pub async fn rewrite_tokens(
    client: &mut Client,
    table: &TableName,
    columns: &[TokenColumn],
    prefix: &str,
    batch_rows: i64,
    mut rewrite: impl FnMut(&[Option<String>]) -> Option<(Vec<Option<String>>, u64)>,
) -> Result<Rewritten, tokio_postgres::Error> {
    let mut done = Rewritten::default();
    if columns.is_empty() {
        return Ok(done);
    }
    let t = table.quoted();
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
        .await?;
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
    let mut start = 0i64;
    while start < blocks {
        let end = start + step;
        let tx = client.transaction().await?;
        let rows = tx.query(&select, &[&prefix, &start, &end]).await?;
        let mut ids = Vec::new();
        let mut values: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.len()];
        let mut current: Vec<Option<String>> = Vec::with_capacity(columns.len());
        for row in &rows {
            let id: String = row.get(0);
            current.clear();
            current.extend((0..columns.len()).map(|i| row.get::<_, Option<String>>(i + 1)));
            let Some((new_row, count)) = rewrite(&current) else {
                tracing::warn!(row = %id, "rekey: a token of this row does not re-key (damaged, or in the wrong column); left as it is");
                done.stuck += 1;
                continue;
            };
            done.tokens += count;
            ids.push(id);
            for (column, value) in values.iter_mut().zip(new_row) {
                column.push(value);
            }
        }
        if !ids.is_empty() {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids];
            for column in &values {
                params.push(column);
            }
            tx.execute(&update, &params).await?;
        }
        tx.commit().await?;
        done.rows += ids.len() as u64;
        if !ids.is_empty() {
            tracing::info!(
                rows = done.rows,
                tokens = done.tokens,
                "rekey: batch committed"
            );
        }
        start = end;
    }
    Ok(done)
}

/// Hands `table`'s key record from `from` to `to`, in one transaction: `from` is retired
/// there, and `to` takes over `from`'s latest modes and token columns, so the next run under
/// it does not warn.
pub async fn hand_over_key(
    client: &mut Client,
    table: &TableName,
    from: &str,
    to: &str,
) -> Result<(), tokio_postgres::Error> {
    let name = table.to_string();
    let tx = client.transaction().await?;
    tx.execute(RETIRE_KEY, &[&name, &from, &to]).await?;
    tx.execute(
        "UPDATE sqs2pg.mask_keys SET retired_to = NULL WHERE table_name = $1 AND key_id = $2",
        &[&name, &to],
    )
    .await?;
    tx.execute(
        "INSERT INTO sqs2pg.mask_keys (table_name, key_id, ip_mode, device_id_mode)
         SELECT table_name, $3, ip_mode, device_id_mode FROM sqs2pg.mask_keys
          WHERE table_name = $1 AND key_id = $2 ORDER BY last_used DESC LIMIT 1
         ON CONFLICT (table_name, key_id, ip_mode, device_id_mode) DO UPDATE
            SET last_used = clock_timestamp()",
        &[&name, &from, &to],
    )
    .await?;
    tx.execute(
        "INSERT INTO sqs2pg.mask_columns (table_name, column_name, scope, mode, key_id)
         SELECT DISTINCT ON (column_name, scope) table_name, column_name, scope, mode, $3
           FROM sqs2pg.mask_columns
          WHERE table_name = $1 AND key_id = $2
          ORDER BY column_name, scope, last_used DESC
         ON CONFLICT (table_name, column_name, key_id, mode, scope) DO UPDATE
            SET last_used = clock_timestamp()",
        &[&name, &from, &to],
    )
    .await?;
    tx.commit().await
}

/// Rows of `table` with a token column starting with `prefix` (a key id and mode). Compared
/// as prefixes, not with LIKE: key ids are base64url, and `_` is a LIKE wildcard.
pub async fn rows_with_token_prefix(
    client: &Client,
    table: &TableName,
    columns: &[TokenColumn],
    prefix: &str,
) -> Result<i64, tokio_postgres::Error> {
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
            &format!("SELECT count(*) FROM {} WHERE {any}", table.quoted()),
            &[&prefix],
        )
        .await?
        .get(0))
}
