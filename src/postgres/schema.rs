//! The bookkeeping schema `sqs2pg` (versioned migrations) and the analysts' table.
//!
//! `setup` runs every migration not yet applied, in order, in one transaction that first takes a
//! transaction-scoped advisory lock, so two processes running it at once serialise instead of
//! racing on `CREATE SCHEMA`. It then creates the target table with exactly the analysts' DDL if
//! it does not exist; an existing table is never altered.

use std::fmt;

use tokio_postgres::Client;

/// Advisory lock key for migrations: the bytes of "sqs2pg:m" read as a big-endian i64, a value
/// unlikely to collide with another application's lock.
const MIGRATION_LOCK_KEY: i64 = i64::from_be_bytes(*b"sqs2pg:m");

/// The migrations, in order. Each runs once; its number is its version. Never edit a released
/// migration: add a new one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "ledger, rejects and app_version_text",
        r#"
CREATE TABLE sqs2pg.processed_messages (
    message_id   text        PRIMARY KEY,
    outcome      text        NOT NULL CHECK (outcome IN ('loaded', 'rejected')),
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processed_messages_processed_at ON sqs2pg.processed_messages (processed_at);
COMMENT ON TABLE sqs2pg.processed_messages IS
    'Ledger of SQS message ids whose fate was committed; makes redelivery idempotent.';

CREATE TABLE sqs2pg.rejected_messages (
    message_id    text        PRIMARY KEY,
    reason        text        NOT NULL,
    detail        text,
    received_at   timestamptz NOT NULL,
    receive_count integer     NOT NULL,
    rejected_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejected_messages_reason ON sqs2pg.rejected_messages (reason);
COMMENT ON TABLE sqs2pg.rejected_messages IS
    'Quarantined messages: reason code and value-free detail; no raw body or field value.';

CREATE FUNCTION sqs2pg.app_version_text(v integer) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT (v / 1000000)::text || '.' || (v / 1000 % 1000)::text || '.' || (v % 1000)::text $$;
COMMENT ON FUNCTION sqs2pg.app_version_text(integer) IS
    'Turns user_logins.app_version (major*1000000 + minor*1000 + patch) back into M.m.p.';
"#,
    ),
    (
        2,
        "sealed bodies of rejected messages",
        r#"
ALTER TABLE sqs2pg.rejected_messages
    ADD COLUMN body_sealed bytea,
    ADD COLUMN seal_key_id text;
COMMENT ON COLUMN sqs2pg.rejected_messages.body_sealed IS
    'The raw body, AES-256-SIV encrypted under a key derived from the masking key, bound to message_id.';
COMMENT ON TABLE sqs2pg.rejected_messages IS
    'Quarantined messages: reason code, value-free detail, and the body sealed for key holders only.';
"#,
    ),
    (
        3,
        "replay bookkeeping for rejected messages",
        r#"
ALTER TABLE sqs2pg.rejected_messages
    ADD COLUMN replayed_at timestamptz,
    ADD COLUMN replayed_to text;
"#,
    ),
    (
        4,
        "idempotent replays",
        r#"
ALTER TABLE sqs2pg.rejected_messages
    ADD COLUMN sent_timestamp bigint,
    ADD COLUMN replay_count integer NOT NULL DEFAULT 0;
COMMENT ON COLUMN sqs2pg.rejected_messages.replay_count IS
    'Replay ids issued so far; replay N is ledgered as message_id || ''#replay'' || N.';
"#,
    ),
    (
        5,
        "masking keys in use",
        r#"
CREATE TABLE sqs2pg.mask_keys (
    key_id         text        PRIMARY KEY,
    ip_mode        text        NOT NULL,
    device_id_mode text        NOT NULL,
    first_used     timestamptz NOT NULL DEFAULT now(),
    last_used      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE sqs2pg.mask_keys IS
    'Key ids (never keys) and masking modes that runs have written tokens with; a run under another key or mode than the last one warns, since tokens then stop matching.';
"#,
    ),
    (
        6,
        "masking keys per table",
        r#"
-- Rows from before this migration are taken to be the default table's.
ALTER TABLE sqs2pg.mask_keys ADD COLUMN table_name text NOT NULL DEFAULT 'public.user_logins';
ALTER TABLE sqs2pg.mask_keys ALTER COLUMN table_name DROP DEFAULT;
ALTER TABLE sqs2pg.mask_keys ADD COLUMN retired_to text;
ALTER TABLE sqs2pg.mask_keys DROP CONSTRAINT mask_keys_pkey;
ALTER TABLE sqs2pg.mask_keys ADD PRIMARY KEY (table_name, key_id, ip_mode, device_id_mode);
COMMENT ON TABLE sqs2pg.mask_keys IS
    'Per table, every key id (never a key) and pair of masking modes that runs have written tokens with. A run under another key or modes than the last one warns; rekey reads which keys wrote ipcrypt addresses from here.';
COMMENT ON COLUMN sqs2pg.mask_keys.retired_to IS
    'Set by rekey: this key''s tokens in the table were re-keyed to that key, so runs refuse to start under this one.';
"#,
    ),
    (
        7,
        "a cheaper ledger index",
        r#"
-- Message ids are compared byte by byte (no locale rules: they are opaque ASCII): the ledger
-- insert is most of the database's work per message (BENCHMARKS.md, loader alone). This
-- rebuilds the primary key under an exclusive lock: on a large ledger, run setup in a quiet
-- moment; it gives up rather than queue behind long transactions.
SET LOCAL lock_timeout = '60s';
ALTER TABLE sqs2pg.processed_messages ALTER COLUMN message_id TYPE text COLLATE "C";
"#,
    ),
    (
        8,
        "a ledger keyed by send time",
        r#"
-- The ledger's key leads with the message's SentTimestamp (milliseconds; SQS fixes it when the
-- message is first sent, so every delivery of a message carries the same one). Ids then arrive
-- in roughly key order: inserts land on the right edge of the index instead of all over it, so
-- its working set stays small however long the history, and pruning walks the key. Replays
-- (ids `...#replayN`) are kept at sent_ms 0, outside the time order, and never pruned.
-- An older sqs2pg still running must not add to the old ledger while its replay ids move:
SET LOCAL lock_timeout = '60s';
LOCK TABLE sqs2pg.processed_messages IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE sqs2pg.ledger (
    sent_ms      bigint      NOT NULL,
    message_id   text        COLLATE "C" NOT NULL,
    outcome      text        NOT NULL DEFAULT 'loaded' CHECK (outcome IN ('loaded', 'rejected')),
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sent_ms, message_id)
);
COMMENT ON TABLE sqs2pg.ledger IS
    'Ledger of SQS messages whose fate was committed, keyed by (SentTimestamp in ms, message id); makes redelivery idempotent. Replays are at sent_ms 0.';
INSERT INTO sqs2pg.ledger (sent_ms, message_id, outcome, processed_at)
SELECT 0, message_id, outcome, processed_at FROM sqs2pg.processed_messages
 WHERE message_id LIKE '%#replay%';
DELETE FROM sqs2pg.processed_messages WHERE message_id LIKE '%#replay%';
-- The old ledger keeps the ids of messages processed before this migration (with no send time
-- to key them by): loads still check it until pruning has emptied it. Nothing may add to it: a
-- run of an older sqs2pg still going would otherwise miss the new ledger's ids.
CREATE FUNCTION sqs2pg.refuse_legacy_ledger() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    RAISE EXCEPTION 'sqs2pg.processed_messages was replaced by sqs2pg.ledger (schema version 8): stop this older sqs2pg and run the current one';
END
$f$;
CREATE TRIGGER processed_messages_retired BEFORE INSERT OR UPDATE ON sqs2pg.processed_messages
    FOR EACH STATEMENT EXECUTE FUNCTION sqs2pg.refuse_legacy_ledger();
COMMENT ON TABLE sqs2pg.processed_messages IS
    'Retired ledger (schema version 8): ids processed before sqs2pg.ledger existed, checked by loads until pruned away.';
"#,
    ),
    (
        9,
        "masks recorded per column",
        r#"
-- Which key and mode wrote each masked column, under which scope: the login table's two
-- columns as before, and any mapping's token columns. The login table's records are carried
-- over from mask_keys (masked_ip under scope ip, masked_device_id under scope device_id).
CREATE TABLE sqs2pg.mask_columns (
    table_name  text        NOT NULL,
    column_name text        NOT NULL,
    scope       text        NOT NULL,
    mode        text        NOT NULL,
    key_id      text        NOT NULL,
    first_used  timestamptz NOT NULL DEFAULT now(),
    last_used   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, column_name, key_id, mode, scope)
);
INSERT INTO sqs2pg.mask_columns
       (table_name, column_name, scope, mode, key_id, first_used, last_used)
SELECT table_name, 'masked_ip', 'ip', ip_mode, key_id, min(first_used), max(last_used)
  FROM sqs2pg.mask_keys GROUP BY table_name, ip_mode, key_id
UNION ALL
SELECT table_name, 'masked_device_id', 'device_id', device_id_mode, key_id, min(first_used),
       max(last_used)
  FROM sqs2pg.mask_keys GROUP BY table_name, device_id_mode, key_id;
COMMENT ON TABLE sqs2pg.mask_columns IS
    'Per table and masked column: every key id (never a key), mode and scope that runs have written tokens with. Columns with one scope give equal tokens for equal values under one key.';
"#,
    ),
];

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

/// The schema version this build expects.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// The analysts' contract, column by column: name and `format_type` spelling.
pub const EXPECTED_COLUMNS: [(&str, &str); 7] = [
    ("user_id", "character varying(128)"),
    ("device_type", "character varying(32)"),
    ("masked_ip", "character varying(256)"),
    ("masked_device_id", "character varying(256)"),
    ("locale", "character varying(32)"),
    ("app_version", "integer"),
    ("create_date", "date"),
];

/// One column a message kind writes: its name, its type as `format_type` spells it (what
/// `check` compares), and whether `setup` creates it NOT NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeColumn {
    pub name: String,
    pub catalog_type: String,
    pub not_null: bool,
}

/// The columns a message kind writes into its table (`check` compares a table to it, `setup`
/// creates a missing table from it). Other columns of the table get their default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub columns: Vec<ShapeColumn>,
}

impl TableShape {
    /// The analysts' login table.
    pub fn login() -> Self {
        Self {
            columns: EXPECTED_COLUMNS
                .iter()
                .map(|(name, ty)| ShapeColumn {
                    name: (*name).to_owned(),
                    catalog_type: (*ty).to_owned(),
                    not_null: false,
                })
                .collect(),
        }
    }

    /// `CREATE TABLE IF NOT EXISTS` for it (`format_type` spellings are valid DDL).
    pub fn ddl(&self, table: &TableName) -> String {
        let columns: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}{}",
                    quote_ident(&c.name),
                    c.catalog_type,
                    if c.not_null { " NOT NULL" } else { "" }
                )
            })
            .collect();
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            table.quoted(),
            columns.join(", ")
        )
    }
}

/// A schema-qualified table name, always quoted as identifiers when put into SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: String,
    table: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`). Names are taken literally (case kept,
    /// no quotes needed or allowed); anything else fails with a message for `--table`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (schema, table) = text.split_once('.').unwrap_or(("public", text));
        let ok = |s: &str| !s.is_empty() && s.len() <= 63 && !s.contains(['"', '.', '\0']);
        if !ok(schema) || !ok(table) {
            return Err(format!(
                "--table (SQS2PG_TABLE) must be `table` or `schema.table`, each part 1 to 63 characters without quotes or dots; got {text:?}"
            ));
        }
        Ok(Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// `"schema"."table"`, with embedded quotes doubled (none can occur after `parse`).
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// `s` as a quoted SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// What `setup` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SetupReport {
    pub applied: Vec<i32>,
    pub table_created: bool,
}

/// Applies pending migrations and creates the target table if missing. Idempotent and safe to
/// run from several processes at once.
pub async fn setup(
    client: &mut Client,
    table: &TableName,
    shape: &TableShape,
) -> Result<SetupReport, tokio_postgres::Error> {
    migrate(client, table, shape, latest_version()).await
}

/// [`setup`] with the migrations up to version `last` only: an older build's schema, for
/// upgrade tests (test support only).
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub async fn setup_up_to(
    client: &mut Client,
    table: &TableName,
    shape: &TableShape,
    last: i32,
) -> Result<SetupReport, tokio_postgres::Error> {
    migrate(client, table, shape, last).await
}

/// The migrations up to version `last`, then the target table if missing.
async fn migrate(
    client: &mut Client,
    table: &TableName,
    shape: &TableShape,
    last: i32,
) -> Result<SetupReport, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS sqs2pg;
         CREATE TABLE IF NOT EXISTS sqs2pg.schema_migrations (
             version     integer     PRIMARY KEY,
             description text        NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now());",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM sqs2pg.schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let mut report = SetupReport::default();
    for (version, description, sql) in MIGRATIONS.iter().filter(|m| m.0 > current && m.0 <= last) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO sqs2pg.schema_migrations (version, description) VALUES ($1, $2)",
            &[version, description],
        )
        .await?;
        report.applied.push(*version);
    }
    let existed = table_exists(&tx, table).await?;
    if !existed {
        tx.batch_execute(&shape.ddl(table)).await?;
    }
    report.table_created = !existed;
    tx.commit().await?;
    Ok(report)
}

/// Whether `table` exists (a plain or a partitioned table, or any relation of that name).
pub async fn table_exists(
    client: &impl tokio_postgres::GenericClient,
    table: &TableName,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
        .await?;
    Ok(row.get(0))
}

/// Why the database is not ready for `drain` or `run`.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("the sqs2pg schema is at version {found}, this build needs {expected}: run `sqs2pg setup` first")]
    SchemaBehind { found: i32, expected: i32 },
    #[error("the sqs2pg schema is at version {found}, newer than this build ({expected}): upgrade sqs2pg")]
    SchemaAhead { found: i32, expected: i32 },
    #[error(
        "table {0} does not exist: run `sqs2pg setup` to create it, or name the right one (--table, or the mapping's `table`)"
    )]
    NoTable(String),
    #[error("table {table} does not have the columns sqs2pg writes (the analysts' DDL, or the mapping's): {differences}")]
    WrongColumns { table: String, differences: String },
    #[error("{}", super::describe(.0))]
    Database(#[from] tokio_postgres::Error),
}

/// The privileges a run needs that the current user lacks, as readable phrases: INSERT on the
/// target table and the bookkeeping tables, SELECT and DELETE (pruning) on the ledgers, and
/// TEMP on the database (rekey's address map). Objects that do not exist are left to
/// [`check_ready`].
pub async fn missing_privileges(
    client: &Client,
    table: &TableName,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT object || ': ' || privilege
               FROM (VALUES ($1::text, 'INSERT'),
                            ('sqs2pg.ledger', 'INSERT'),
                            ('sqs2pg.ledger', 'SELECT'),
                            ('sqs2pg.ledger', 'DELETE'),
                            ('sqs2pg.processed_messages', 'SELECT'),
                            ('sqs2pg.processed_messages', 'DELETE'),
                            ('sqs2pg.rejected_messages', 'INSERT')) AS needed(object, privilege)
              WHERE to_regclass(object) IS NOT NULL
                AND NOT has_table_privilege(object, privilege)
             UNION ALL
             SELECT 'database ' || current_database() || ': TEMP'
              WHERE NOT has_database_privilege(current_database(), 'TEMP')",
            &[&table.quoted()],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Checks that the bookkeeping schema is at the version this build expects.
pub async fn check_ready_schema(client: &Client) -> Result<(), NotReady> {
    let has_migrations: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables
                             WHERE schemaname = 'sqs2pg' AND tablename = 'schema_migrations')",
            &[],
        )
        .await?
        .get(0);
    let found: i32 = if has_migrations {
        client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM sqs2pg.schema_migrations",
                &[],
            )
            .await?
            .get(0)
    } else {
        0
    };
    let expected = latest_version();
    if found < expected {
        return Err(NotReady::SchemaBehind { found, expected });
    }
    if found > expected {
        return Err(NotReady::SchemaAhead { found, expected });
    }
    Ok(())
}

/// Checks, before any message is touched, that migrations are current and the target table has
/// the analysts' columns with their types (extra columns are allowed: they stay NULL/default).
pub async fn check_ready(client: &Client, table: &TableName) -> Result<(), NotReady> {
    check_shape(client, table, &TableShape::login()).await
}

/// [`check_ready`] for the columns of any message kind: each must be there with its type, and
/// no other column may need a value the rows never give.
pub async fn check_shape(
    client: &Client,
    table: &TableName,
    shape: &TableShape,
) -> Result<(), NotReady> {
    check_ready_schema(client).await?;
    if !table_exists(client, table).await? {
        return Err(NotReady::NoTable(table.to_string()));
    }
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod),
                    attnotnull AND NOT atthasdef AND attidentity = '' AND attgenerated = ''
               FROM pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
            &[&table.quoted()],
        )
        .await?;
    let actual: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut differences: Vec<String> = shape
        .columns
        .iter()
        .filter_map(|c| {
            let (name, ty) = (&c.name, &c.catalog_type);
            match actual.iter().find(|(n, _, _)| n == name) {
                None => Some(format!("column {name} is missing")),
                Some((_, t, _)) if t != ty => Some(format!("column {name} is {t}, expected {ty}")),
                Some(_) => None,
            }
        })
        .collect();
    // Extra columns are fine (they get their default), unless they need a value we never give.
    differences.extend(
        actual
            .iter()
            .filter(|(n, _, needs_value)| {
                *needs_value && !shape.columns.iter().any(|c| &c.name == n)
            })
            .map(|(n, _, _)| {
                format!(
                    "extra column {n} is NOT NULL without a default, so no row could be inserted"
                )
            }),
    );
    if differences.is_empty() {
        Ok(())
    } else {
        Err(NotReady::WrongColumns {
            table: table.to_string(),
            differences: differences.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_parsed_and_quoted() {
        assert_eq!(
            TableName::parse("user_logins").unwrap().quoted(),
            r#""public"."user_logins""#
        );
        assert_eq!(TableName::parse("a.B").unwrap().quoted(), r#""a"."B""#);
        for bad in [
            "",
            ".",
            "a.",
            "a.b.c",
            "x\"; DROP TABLE y; --",
            &"x".repeat(64),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(MIGRATION_LOCK_KEY, 0x7371_7332_7067_3a6d);
    }
}
