//! The SQL of keyed writes (`ignore`, `upsert`, `latest`): each batch's rows for such a table
//! are copied into a temporary staging table of the connection, then one statement resolves
//! them by key, inside the load's transaction.
//!
//! - Inside the batch, a key given several times is resolved first (`DISTINCT ON`): `ignore`
//!   keeps the first received, `upsert` the last received, `latest` the greatest (version,
//!   SentTimestamp, message id). So no statement touches a row twice (PostgreSQL's "ON
//!   CONFLICT DO UPDATE command cannot affect row a second time" cannot happen).
//! - Rows are written in key order, so two replicas writing the same keys wait for each other
//!   instead of deadlocking (a deadlock PostgreSQL still finds is retried as a whole load).
//! - `latest` decides against `sqs2pg.row_versions`, which keeps the winning version per key,
//!   and a tombstone for a delete: an older update that arrives later is `stale`.
//! - `upsert` records a digest of each row applied in `sqs2pg.applied_rows`: a resend (a
//!   producer's retry, a dead-letter redrive under a new message id) is a `duplicate_key`.
//!   Deletes carry only their key, so two deletes of one key look alike and are always
//!   applied (under upsert, a redriven delete deletes again; `latest` orders deletes safely).
//!
//! Each statement answers (rows that won, rows deleted); the loader counts the difference
//! from the rows it staged as `duplicate_key` (`ignore`, `upsert`) or `stale` (`latest`).

use super::schema::{quote_ident, TableName};
use crate::kind::{TableWrite, VersionOrder, WriteMode, KEYED_FIELDS};

/// The statements of one keyed table on one connection.
#[derive(Debug, Clone)]
pub(super) struct KeyedSql {
    pub mode: WriteMode,
    /// Creates the staging table (once per connection).
    pub create_stage: String,
    /// `COPY` into the staging table.
    pub copy: String,
    /// Resolves the staged rows into the table; `$1` is the table's name. Answers one row:
    /// the rows that won and the rows deleted (int8).
    pub resolve: String,
}

impl KeyedSql {
    /// The statements for `write` into `table`, staged in `pg_temp.sqs2pg_stage_{index}`.
    pub fn new(table: &TableName, write: &TableWrite, index: usize) -> Self {
        let stage = format!("pg_temp.sqs2pg_stage_{index}");
        let target = table.quoted();
        let cols: Vec<String> = write.columns.iter().map(|c| quote_ident(c)).collect();
        let col_list = cols.join(", ");
        let keys: Vec<String> = write.key.iter().map(|(k, _)| quote_ident(k)).collect();
        let key_list = keys.join(", ");
        let create_stage = format!(
            "CREATE TEMP TABLE sqs2pg_stage_{index} ON COMMIT DELETE ROWS AS \
             SELECT {col_list} FROM {target} WITH NO DATA; \
             ALTER TABLE {stage} ADD COLUMN _deleted boolean, ADD COLUMN _sent_ms bigint, \
             ADD COLUMN _message_id text COLLATE \"C\", \
             ADD COLUMN _ord bigint GENERATED ALWAYS AS IDENTITY"
        );
        let copy = format!(
            "COPY {stage} ({col_list}, {}) FROM STDIN (FORMAT binary)",
            KEYED_FIELDS.join(", ")
        );
        let set_all = cols
            .iter()
            .filter(|c| !keys.contains(c))
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect::<Vec<_>>();
        let on_conflict_update = if set_all.is_empty() {
            // Every column is the key: the row is already what it would become.
            format!("ON CONFLICT ({key_list}) DO NOTHING")
        } else {
            format!(
                "ON CONFLICT ({key_list}) DO UPDATE SET {}",
                set_all.join(", ")
            )
        };
        let same_key = |a: &str, b: &str| {
            keys.iter()
                .map(|k| format!("{a}.{k} = {b}.{k}"))
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let qualified = |alias: &str| {
            cols.iter()
                .map(|c| format!("{alias}.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let resolve = match write.mode {
            WriteMode::Append => String::new(),
            WriteMode::Ignore => format!(
                "WITH s AS (SELECT DISTINCT ON ({key_list}) {col_list} FROM {stage} \
                              ORDER BY {key_list}, _ord),
                      ins AS (INSERT INTO {target} ({col_list}) SELECT {col_list} FROM s \
                              ORDER BY {key_list} ON CONFLICT ({key_list}) DO NOTHING RETURNING 1)
                 SELECT (SELECT count(*) FROM ins), 0::int8 WHERE $1::text IS NOT NULL"
            ),
            WriteMode::Upsert => {
                let digest = |alias: &str| {
                    format!(
                        "decode(md5(ROW({}, {alias}._deleted)::text), 'hex')",
                        qualified(alias)
                    )
                };
                format!(
                    "WITH d AS (SELECT st.*, {dg} AS _digest FROM {stage} st),
                          fresh AS (INSERT INTO sqs2pg.applied_rows (target, digest)
                                    SELECT DISTINCT $1::text, _digest FROM d \
                                     WHERE NOT _deleted ORDER BY 2
                                    ON CONFLICT (target, digest) DO NOTHING RETURNING digest),
                          f AS (SELECT d.* FROM d \
                                 WHERE d._deleted OR d._digest IN (SELECT digest FROM fresh)),
                          s AS (SELECT DISTINCT ON ({key_list}) * FROM f \
                                ORDER BY {key_list}, _ord DESC),
                          del AS (DELETE FROM {target} t USING s WHERE s._deleted AND {del_on} \
                                  RETURNING 1),
                          ins AS (INSERT INTO {target} ({col_list}) SELECT {col_list} FROM s \
                                  WHERE NOT s._deleted ORDER BY {key_list} {on_conflict_update} \
                                  RETURNING 1)
                     SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM del)",
                    dg = digest("st"),
                    del_on = same_key("t", "s"),
                )
            }
            WriteMode::Latest => {
                let parts: Vec<String> = write
                    .key
                    .iter()
                    .map(|(k, numeric)| {
                        let k = format!("st.{}", quote_ident(k));
                        if *numeric {
                            format!("trim_scale({k})")
                        } else {
                            k
                        }
                    })
                    .collect();
                // One column: its text; several: a JSON array of them (unambiguous).
                let key_text = match parts.as_slice() {
                    [one] => format!("{one}::text"),
                    _ => format!("jsonb_build_array({})::text", parts.join(", ")),
                };
                let (version, order) = write
                    .version
                    .as_ref()
                    .expect("a latest write has a version (checked with the mapping)");
                let v = format!("st.{}", quote_ident(version));
                let version_number = match order {
                    VersionOrder::Number => format!("{v}::numeric"),
                    VersionOrder::Timestamp => format!("extract(epoch FROM {v})"),
                    VersionOrder::Date => format!("({v} - date '1970-01-01')::numeric"),
                };
                format!(
                    "WITH x AS (SELECT st.*, ({key_text}) COLLATE \"C\" AS _k, \
                                       {version_number} AS _v FROM {stage} st),
                          s AS (SELECT DISTINCT ON (_k) * FROM x \
                                ORDER BY _k, _v DESC, _sent_ms DESC, _message_id DESC, _ord DESC),
                          won AS (INSERT INTO sqs2pg.row_versions AS r \
                                      (target, key, version, sent_ms, message_id, deleted_at)
                                  SELECT $1::text, _k, _v, _sent_ms, _message_id, \
                                         CASE WHEN _deleted THEN now() END FROM s ORDER BY _k
                                  ON CONFLICT (target, key) DO UPDATE \
                                     SET version = EXCLUDED.version, sent_ms = EXCLUDED.sent_ms, \
                                         message_id = EXCLUDED.message_id, \
                                         deleted_at = EXCLUDED.deleted_at
                                   WHERE (r.version, r.sent_ms, r.message_id) \
                                       < (EXCLUDED.version, EXCLUDED.sent_ms, EXCLUDED.message_id)
                                  RETURNING key),
                          w AS (SELECT s.* FROM s JOIN won ON won.key = s._k),
                          del AS (DELETE FROM {target} t USING w WHERE w._deleted AND {del_on} \
                                  RETURNING 1),
                          ins AS (INSERT INTO {target} ({col_list}) SELECT {col_list} FROM w \
                                  WHERE NOT w._deleted ORDER BY {key_list} {on_conflict_update} \
                                  RETURNING 1)
                     SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM del)",
                    del_on = same_key("t", "w"),
                )
            }
        };
        Self {
            mode: write.mode,
            create_stage,
            copy,
            resolve,
        }
    }
}

/// The SQL that makes `table` fit a keyed write on `key`, for messages that say what to fix.
pub fn unique_index_fix(table: &TableName, key: &[String]) -> String {
    let name = format!("{}_{}_key", table.name(), key.join("_"));
    let name: String = name.chars().take(63).collect();
    format!(
        "CREATE UNIQUE INDEX {} ON {} ({})",
        quote_ident(&name),
        table.quoted(),
        key.iter()
            .map(|k| quote_ident(k))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
