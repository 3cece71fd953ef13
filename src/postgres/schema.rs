//! The bookkeeping schema `sqs2pg` (versioned migrations) and the analysts' table.
//!
//! `setup` runs every migration not yet applied, in order, in one transaction that first takes a
//! transaction-scoped advisory lock, so two processes running it at once serialise instead of
//! racing on `CREATE SCHEMA`. It then creates the target table with exactly the analysts' DDL if
//! it does not exist; an existing table is never altered.

use std::fmt;

use tokio_postgres::Client;

pub use super::mask_record::{
    lock_writers_shared, record_mask_key, writers_lock_sql, KeyChange, KeyCheck, MaskedColumn,
};
pub use super::migrations::latest_version;
use super::migrations::{MIGRATIONS, MIGRATION_LOCK_KEY};

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
/// `check` compares), whether `setup` creates it NOT NULL, and whether the kind may write NULL
/// into it (what `check` compares with the table's NOT NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeColumn {
    pub name: String,
    pub catalog_type: String,
    pub not_null: bool,
    pub may_be_null: bool,
}

/// The columns a message kind writes into its table (`check` compares a table to it, `setup`
/// creates a missing table from it). Other columns of the table get their default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub columns: Vec<ShapeColumn>,
    /// The columns a keyed write mode names rows by: `setup` makes them the primary key, and
    /// `check` and start-up want a unique index on exactly them. Empty under append.
    pub key: Vec<String>,
    /// Rows are replaced in place (write modes upsert and latest): `setup` leaves half of each
    /// page free (`fillfactor = 50`), so a batch that replaces every row of a page keeps each
    /// new version on its page (a HOT update: no new index entry, no growth until vacuum).
    pub replaced: bool,
    /// Types must match exactly (the analysts' contract); otherwise a wider varchar, or text,
    /// where the kind writes a varchar, fits too (a table `setup` widened for a newer mapping).
    pub exact_types: bool,
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
                    // The analysts' DDL has no NOT NULL; a login leaves only its locale NULL.
                    not_null: false,
                    may_be_null: *name == "locale",
                })
                .collect(),
            key: Vec::new(),
            replaced: false,
            exact_types: true,
        }
    }

    /// `CREATE TABLE IF NOT EXISTS` for it (`format_type` spellings are valid DDL).
    pub fn ddl(&self, table: &TableName) -> String {
        let mut columns: Vec<String> = self
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
        if !self.key.is_empty() {
            columns.push(format!(
                "PRIMARY KEY ({})",
                self.key
                    .iter()
                    .map(|k| quote_ident(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}){}",
            table.quoted(),
            columns.join(", "),
            if self.replaced {
                " WITH (fillfactor = 50)"
            } else {
                ""
            }
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
    /// The table's own name, without its schema.
    pub fn name(&self) -> &str {
        &self.table
    }

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
    #[error("table {table} is written by key with rows replaced in place (write mode upsert or latest), which needs PostgreSQL 14 or later; the server is {version}: upgrade it, or use write mode ignore or append")]
    ServerTooOld { table: String, version: String },
    #[error("table {table} does not have the columns sqs2pg writes (the analysts' DDL, or the mapping's): {differences}")]
    WrongColumns { table: String, differences: String },
    #[error("{}", super::describe(.0))]
    Database(#[from] tokio_postgres::Error),
}

/// The privileges a run needs that the current user lacks, as readable phrases: INSERT on the
/// target table (and by write mode: SELECT for `ignore`; UPDATE and DELETE too for `upsert`;
/// and all four on `sqs2pg.row_versions` for `latest`) and the bookkeeping tables, SELECT and DELETE (pruning) on the ledgers,
/// SELECT, INSERT, UPDATE and DELETE on the attempts at suspects, and
/// TEMP on the database (rekey's address map). Objects that do not exist are left to
/// [`check_ready`].
pub async fn missing_privileges(
    client: &Client,
    table: &TableName,
    mode: crate::kind::WriteMode,
) -> Result<Vec<String>, tokio_postgres::Error> {
    // Which modes need each: every mode (`append` and up); the keyed ones (their staging
    // table is made from the table's definition: SELECT); those that replace and delete rows
    // (`upsert`, `latest`); `latest` alone keeps versions and tombstones.
    let rows = client
        .query(
            "SELECT object || ': ' || privilege
               FROM (VALUES ($1::text, 'INSERT', 'append'),
                            ($1::text, 'SELECT', 'ignore'),
                            ($1::text, 'UPDATE', 'upsert'),
                            ($1::text, 'DELETE', 'upsert'),
                            ('sqs2pg.row_versions', 'SELECT', 'latest'),
                            ('sqs2pg.row_versions', 'INSERT', 'latest'),
                            ('sqs2pg.row_versions', 'UPDATE', 'latest'),
                            ('sqs2pg.row_versions', 'DELETE', 'latest'),
                            ('sqs2pg.ledger', 'INSERT', 'append'),
                            ('sqs2pg.ledger', 'SELECT', 'append'),
                            ('sqs2pg.ledger', 'DELETE', 'append'),
                            ('sqs2pg.processed_messages', 'SELECT', 'append'),
                            ('sqs2pg.processed_messages', 'DELETE', 'append'),
                            ('sqs2pg.rejected_messages', 'INSERT', 'append'),
                            ('sqs2pg.attempts', 'SELECT', 'append'),
                            ('sqs2pg.attempts', 'INSERT', 'append'),
                            ('sqs2pg.attempts', 'UPDATE', 'append'),
                            ('sqs2pg.attempts', 'DELETE', 'append'))
                    AS needed(object, privilege, from_mode)
              WHERE array_position(ARRAY['append', 'ignore', 'upsert', 'latest'], from_mode)
                    <= array_position(ARRAY['append', 'ignore', 'upsert', 'latest'], $2::text)
                AND to_regclass(object) IS NOT NULL
                AND NOT has_table_privilege(object, privilege)
             UNION
             SELECT 'database ' || current_database() || ': TEMP'
              WHERE NOT has_database_privilege(current_database(), 'TEMP')",
            &[&table.quoted(), &mode.as_str()],
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
    if shape.replaced {
        // `hash_record_extended` (upsert's digests) and what `latest` uses came with 14.
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
                &[],
            )
            .await?;
        if row.get::<_, i32>(0) < 140_000 {
            return Err(NotReady::ServerTooOld {
                table: table.to_string(),
                version: row.get(1),
            });
        }
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
                // A wider varchar (or text) holds every value a narrower one does: a process on
                // a mapping older than the table's last widening still fits.
                Some((_, t, _))
                    if t != ty && (shape.exact_types || !super::evolve::holds(t, ty)) =>
                {
                    Some(format!("column {name} is {t}, expected {ty}"))
                }
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
    if differences.is_empty()
        && !shape.key.is_empty()
        && !has_unique_index(client, table, &shape.key).await?
    {
        differences.push(format!(
            "no unique index on exactly ({}), which rows are written by (write mode key); add one: {}",
            shape.key.join(", "),
            super::keyed::unique_index_fix(table, &shape.key)
        ));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(NotReady::WrongColumns {
            table: table.to_string(),
            differences: differences.join("; "),
        })
    }
}

/// Whether `table` has a unique index (or primary key) on exactly the columns `key`, in any
/// order (INCLUDE columns aside), valid, not deferrable, not partial and without expressions:
/// what `INSERT ... ON CONFLICT (key)` takes as its arbiter.
pub async fn has_unique_index(
    client: &impl tokio_postgres::GenericClient,
    table: &TableName,
    key: &[String],
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (
                SELECT 1 FROM pg_index i
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid
                   AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL
                   AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)
                          FROM pg_attribute a
                         WHERE a.attrelid = i.indrelid
                           AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]))
                       = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k)
                   AND i.indnkeyatts = cardinality($2::text[]))",
            &[&table.quoted(), &key],
        )
        .await?;
    Ok(row.get(0))
}

/// The columns of `table` it computes itself (generated columns).
pub async fn generated_columns(
    client: &Client,
    table: &TableName,
) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(
            "SELECT attname::text FROM pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
                AND attgenerated <> ''",
            &[&table.quoted()],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What a table asks of each row beyond its columns' types, which `check` cannot prove every
/// message meets: a row that breaks one is quarantined as `table_refused:RULE` at run time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    /// Columns the table declares NOT NULL that the kind may leave NULL.
    pub nullable_into_not_null: Vec<String>,
    /// The other rules, one line each: `CHECK name: definition`, unique keys, foreign keys,
    /// exclusion constraints, partitioning without a default partition, triggers.
    pub unproven: Vec<String>,
}

/// [`TableRules`] of `table` for the rows of `shape`.
pub async fn table_rules(
    client: &Client,
    table: &TableName,
    shape: &TableShape,
) -> Result<TableRules, tokio_postgres::Error> {
    let name = table.quoted();
    let not_null = client
        .query(
            "SELECT attname::text FROM pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attnotnull
              ORDER BY attnum",
            &[&name],
        )
        .await?;
    let nullable_into_not_null = not_null
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|n| shape.columns.iter().any(|c| &c.name == n && c.may_be_null))
        .collect();
    let mut unproven: Vec<String> = client
        .query(
            "SELECT CASE contype WHEN 'c' THEN 'CHECK ' WHEN 'u' THEN 'unique key '
                                 WHEN 'p' THEN 'primary key ' WHEN 'f' THEN 'foreign key '
                                 ELSE 'exclusion constraint ' END
                    || conname || ': ' || pg_get_constraintdef(oid)
               FROM pg_constraint
              WHERE conrelid = to_regclass($1) AND contype IN ('c', 'u', 'p', 'f', 'x')
              ORDER BY conname",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Unique indexes made without a constraint (`CREATE UNIQUE INDEX`).
    unproven.extend(
        client
            .query(
                "SELECT 'unique index ' || c.relname || ': ' || pg_get_indexdef(i.indexrelid)
                   FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                  WHERE i.indrelid = to_regclass($1) AND i.indisunique
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
                  ORDER BY c.relname",
                &[&name],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0)),
    );
    let partitioning = client
        .query_one(
            "SELECT pg_get_partkeydef(to_regclass($1)),
                    EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                             WHERE i.inhparent = to_regclass($1)
                               AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'),
                    (SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass($1))",
            &[&name],
        )
        .await?;
    if let Some(key) = partitioning.get::<_, Option<String>>(0) {
        let (default, partitions): (bool, i64) = (partitioning.get(1), partitioning.get(2));
        if !default {
            // The bounds, so the operator sees which rows no partition takes.
            let bounds: Vec<String> = client
                .query(
                    "SELECT c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid)
                       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                      WHERE i.inhparent = to_regclass($1) ORDER BY 1 LIMIT 12",
                    &[&name],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            unproven.push(format!(
                "partitioned by {key} into {partitions} partition(s) and no DEFAULT partition: a \
                 row no partition takes is refused (table_refused:no_partition); {}{}",
                bounds.join(", "),
                if partitions > 12 { ", ..." } else { "" }
            ));
        }
    }
    unproven.extend(
        client
            .query(
                "SELECT 'trigger ' || tgname FROM pg_trigger
                  WHERE tgrelid = to_regclass($1) AND NOT tgisinternal ORDER BY tgname",
                &[&name],
            )
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0)),
    );
    Ok(TableRules {
        nullable_into_not_null,
        unproven,
    })
}

#[cfg(test)]
mod tests;
