//! A mapped table that exists, evolved in place for additive changes (`setup` with a mapping,
//! `mapping diff`): what the mapping's columns ask of the table, the changes that are safe to
//! make (a new nullable column, a varchar widened), and the ones that are not, refused by
//! column with the SQL a person could run instead (a type change or narrowing, a new NOT NULL
//! column, NOT NULL on a column the rows may leave NULL).
//!
//! Changes are made in one transaction under an advisory lock of the table, planned again
//! once the lock is held, each statement idempotent (`ADD COLUMN IF NOT EXISTS`): replicas
//! running `setup` at once apply each change once, without an error. Each change is recorded
//! in `sqs2pg.schema_changes` (table, the mapping's shape hash, statement, time). Nothing is
//! changed when anything is refused. A process still running the old mapping keeps working:
//! it names its columns in every statement, and a new column is nullable.

use sha2::{Digest, Sha256};
use tokio_postgres::{Client, GenericClient};

use super::schema::{quote_ident, TableName, TableShape};

/// A change `setup` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub column: String,
    /// What it does, in words (`add, character varying(64)`).
    pub what: String,
    pub sql: String,
}

/// A difference `setup` will not resolve by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub column: String,
    pub why: String,
    /// What a person could run instead (after reading it).
    pub sql: String,
}

/// What a mapping asks of an existing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub refused: Vec<Refusal>,
    /// Differences left as they are, harmless to the rows (a nullable column the mapping
    /// requires: its rows are checked before they are written).
    pub notes: Vec<String>,
}

impl Plan {
    /// Whether the table is as the mapping wants it.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.refused.is_empty()
    }

    /// The plan as lines for a person: each change and each refusal with its column (the
    /// notes are [`Plan::note_lines`]).
    pub fn lines(&self, table: &TableName) -> Vec<String> {
        let mut lines = Vec::new();
        for c in &self.changes {
            lines.push(format!(
                "{table}: column {}: {}: {}",
                c.column, c.what, c.sql
            ));
        }
        for r in &self.refused {
            lines.push(format!(
                "{table}: column {}: refused: {}; a person could run instead: {}",
                r.column, r.why, r.sql
            ));
        }
        lines
    }

    /// The differences left as they are, as lines.
    pub fn note_lines(&self, table: &TableName) -> Vec<String> {
        self.notes
            .iter()
            .map(|n| format!("{table}: left as it is: {n}"))
            .collect()
    }
}

/// Why `setup` changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum EvolveError {
    #[error("setup changes nothing in {table}: {}", .lines.join("; "))]
    Refused { table: String, lines: Vec<String> },
    #[error("{}", super::describe(.0))]
    Database(#[from] tokio_postgres::Error),
}

/// A hash of the shape (its DDL): which mapping asked for a change.
pub fn shape_hash(table: &TableName, shape: &TableShape) -> String {
    let digest = Sha256::digest(shape.ddl(table).as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a column of `actual` type holds every value of `expected` (equal, or a wider
/// varchar, or text for a varchar).
pub fn holds(actual: &str, expected: &str) -> bool {
    actual == expected
        || match (varchar_length(expected), varchar_length(actual)) {
            (Some(want), Some(have)) => have >= want,
            (Some(_), None) => actual == "text",
            _ => false,
        }
}

/// The length of a `character varying(n)`, when the type is one.
fn varchar_length(catalog_type: &str) -> Option<u32> {
    catalog_type
        .strip_prefix("character varying(")?
        .strip_suffix(')')?
        .parse()
        .ok()
}

/// What `shape` asks of `table` as it is now.
pub async fn plan(
    client: &impl GenericClient,
    table: &TableName,
    shape: &TableShape,
) -> Result<Plan, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT attname::text, format_type(atttypid, atttypmod), attnotnull,
                    attnotnull AND NOT atthasdef AND attidentity = '' AND attgenerated = ''
               FROM pg_attribute
              WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
            &[&table.quoted()],
        )
        .await?;
    let actual: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let quoted = table.quoted();
    let mut plan = Plan::default();
    // What the start-up check also refuses, so that a plan with nothing in it means a run
    // can start: a column the rows never fill that needs a value, and the key's index.
    for r in &rows {
        let name: String = r.get(0);
        if r.get::<_, bool>(3) && !shape.columns.iter().any(|c| c.name == name) {
            let column = quote_ident(&name);
            plan.refused.push(Refusal {
                column: name.clone(),
                why: "is NOT NULL without a default, and the mapping does not fill it".into(),
                sql: format!(
                    "ALTER TABLE {quoted} ALTER COLUMN {column} DROP NOT NULL (or SET DEFAULT \
                     ..., or map it)"
                ),
            });
        }
    }
    if !shape.key.is_empty() && !super::schema::has_unique_index(client, table, &shape.key).await? {
        plan.refused.push(Refusal {
            column: shape.key.join(", "),
            why: "the write mode's key has no unique index on exactly these columns".into(),
            sql: super::keyed::unique_index_fix(table, &shape.key),
        });
    }
    for c in &shape.columns {
        let column = quote_ident(&c.name);
        let wanted = &c.catalog_type;
        match actual.iter().find(|(n, _, _)| n == &c.name) {
            None if c.not_null => plan.refused.push(Refusal {
                column: c.name.clone(),
                why: "a new NOT NULL column (the mapping's column is required) has no value in \
                      the rows already there"
                    .into(),
                sql: format!(
                    "ALTER TABLE {quoted} ADD COLUMN {column} {wanted}; UPDATE {quoted} SET \
                     {column} = ...; ALTER TABLE {quoted} ALTER COLUMN {column} SET NOT NULL \
                     (or make the column not required)"
                ),
            }),
            None => plan.changes.push(Change {
                column: c.name.clone(),
                what: format!("add, {wanted}, nullable"),
                sql: format!("ALTER TABLE {quoted} ADD COLUMN IF NOT EXISTS {column} {wanted}"),
            }),
            Some((_, have, not_null)) => {
                if have != wanted {
                    let widened = match (varchar_length(have), varchar_length(wanted)) {
                        (Some(from), Some(to)) => to > from,
                        (Some(_), None) => wanted == "text",
                        _ => false,
                    };
                    if widened {
                        plan.changes.push(Change {
                            column: c.name.clone(),
                            what: format!("widen {have} to {wanted}"),
                            sql: format!(
                                "ALTER TABLE {quoted} ALTER COLUMN {column} TYPE {wanted}"
                            ),
                        });
                    } else {
                        plan.refused.push(Refusal {
                            column: c.name.clone(),
                            why: format!(
                                "is {have}, the mapping writes {wanted}: a type change or a \
                                 narrowing can fail on, or rewrite, the rows already there"
                            ),
                            sql: format!(
                                "ALTER TABLE {quoted} ALTER COLUMN {column} TYPE {wanted} USING \
                                 {column}::{wanted}"
                            ),
                        });
                    }
                }
                if !*not_null && c.not_null {
                    plan.notes.push(format!(
                        "column {} allows NULL and the mapping requires it (its rows are \
                         checked before they are written; SET NOT NULL is yours to run)",
                        c.name
                    ));
                }
                if *not_null && c.may_be_null {
                    plan.refused.push(Refusal {
                        column: c.name.clone(),
                        why: "is NOT NULL, and the mapping may leave it NULL (not required, or \
                              redacted)"
                            .into(),
                        sql: format!(
                            "ALTER TABLE {quoted} ALTER COLUMN {column} DROP NOT NULL (or make \
                             the column required)"
                        ),
                    });
                }
            }
        }
    }
    Ok(plan)
}

/// Makes the plan's changes, once, under the table's advisory lock; refuses (changing
/// nothing) when anything is refused. Answers the changes made (none when another process
/// made them first).
pub async fn evolve(
    client: &mut Client,
    table: &TableName,
    shape: &TableShape,
) -> Result<Vec<Change>, EvolveError> {
    let tx = client.transaction().await?;
    // One setup at a time per table (another waits here, then finds nothing left to do).
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('sqs2pg evolve ' || $1, 0))",
        &[&table.quoted()],
    )
    .await?;
    // An ALTER waits for the loads in flight, and new loads queue behind it: give up after
    // 10 s rather than stall them (setup can simply be run again).
    tx.batch_execute("SET LOCAL lock_timeout = '10s'").await?;
    // Planned again under the lock: another replica may have made the changes.
    let plan = plan(&tx, table, shape).await?;
    if !plan.refused.is_empty() {
        return Err(EvolveError::Refused {
            table: table.to_string(),
            lines: plan.lines(table),
        });
    }
    let hash = shape_hash(table, shape);
    for change in &plan.changes {
        tx.batch_execute(&change.sql).await?;
        tx.execute(
            "INSERT INTO sqs2pg.schema_changes (target, mapping_hash, statement) \
             VALUES ($1, $2, $3)",
            &[&table.quoted(), &hash, &change.sql],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(plan.changes)
}
