//! The SQL of keyed writes (`ignore`, `upsert`, `latest`): each batch's rows for such a table
//! are copied into a temporary staging table of the connection, then resolved by key inside
//! the load's transaction: one statement decides and writes, and for the modes with deletes a
//! second one deletes (a statement of its own, so it sees the rows other loaders committed
//! while the first waited for their keys).
//!
//! - Inside the batch, a key given several times is resolved first (`DISTINCT ON`): `ignore`
//!   keeps the first received, `upsert` the last received, `latest` the greatest (version; a
//!   delete before an update of the same version; SentTimestamp; message id). So no statement
//!   touches a row twice (PostgreSQL's "ON CONFLICT DO UPDATE command cannot affect row a
//!   second time" cannot happen).
//! - `latest` decides against `sqs2pg.row_versions`, which keeps the winning version per key,
//!   and a tombstone for a delete: an older update that arrives later is `stale`. Its entries
//!   are locked in key order before any row of the table, so replicas writing the same keys
//!   wait for each other instead of deadlocking.
//! - `upsert` writes the last row received per key unless the key's row in the table holds the
//!   same values already (`ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT FROM`, over the
//!   columns the producer sent: `TableWrite::compared`): a row equal to the one before it for
//!   its key (a producer's retry, a dead-letter redrive of the current row under a new message
//!   id) changes nothing and is a `duplicate_key`; any other row replaces the key's row, so
//!   the last processed wins (A, B, then A again ends with A; an older state redriven after a
//!   newer one wins too). No bookkeeping: the
//!   table is the state. A delete always applies; a state sent again after it is inserted
//!   again. Rows are written in key order; a deadlock PostgreSQL still finds between replicas
//!   (an insert and a delete of two keys crossing) is retried as a whole load.
//!
//! Each resolving statement answers (rows that won, rows written, staged deletes); the loader
//! runs the deleting statement only when there are staged deletes, and counts the
//! difference between the rows it staged and the winners as `duplicate_key` (`ignore`,
//! `upsert`) or `stale` (`latest`).

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
    /// the rows that won and the rows written into the table (int8), and the staged rows
    /// (`_ord`, int8[]) the delete statement is for, NULL when none.
    pub resolve: String,
    /// Then, for the modes with deletes and only when the resolve named staged rows, the
    /// statement that deletes (`$1`: the table's name, `$2`: those staged rows).
    pub delete: Option<String>,
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
        let qualified_keys = |alias: &str| {
            keys.iter()
                .map(|k| format!("{alias}.{k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // The key as one text (row_versions' `key`): one column's text, or a
        // JSON array of several (unambiguous); numerics without trailing zeros (1.0 = 1.00).
        // The loader's sessions run in UTC, so a timestamp's text does not move.
        let key_text = |alias: &str| {
            let parts: Vec<String> = write
                .key
                .iter()
                .map(|(k, numeric)| {
                    let k = format!("{alias}.{}", quote_ident(k));
                    if *numeric {
                        format!("trim_scale({k})")
                    } else {
                        k
                    }
                })
                .collect();
            match parts.as_slice() {
                [one] => format!("({one}::text COLLATE \"C\")"),
                _ => format!(
                    "(jsonb_build_array({})::text COLLATE \"C\")",
                    parts.join(", ")
                ),
            }
        };
        // Each resolve answers (rows that won, rows written into the table, the staged rows
        // the delete is for: `_ord`s, NULL when none); each delete, run as a statement of its
        // own (so it sees rows other loaders committed meanwhile) and only when there are
        // such rows, the rows it deleted. The delete joins `unnest($2)` (a hash join): a
        // generic plan's `= ANY($2)` would scan the array once per staged row.
        let (resolve, delete) = match write.mode {
            WriteMode::Append => (String::new(), None),
            WriteMode::Ignore => (
                format!(
                    "WITH s AS (SELECT DISTINCT ON ({key_list}) {col_list} FROM {stage} \
                                ORDER BY {key_list}, _ord),
                          ins AS (INSERT INTO {target} ({col_list}) SELECT {col_list} FROM s \
                                  ORDER BY {key_list} ON CONFLICT ({key_list}) DO NOTHING RETURNING 1)
                     SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM ins), NULL::int8[]
                      WHERE $1::text IS NOT NULL"
                ),
                None,
            ),
            WriteMode::Upsert => {
                // A 64-bit hash of a row's values (each type's own hash: no text output per
                // value), NULL for a delete: how rows of one key in one batch are compared
                // (PostgreSQL 14 or later).
                // Compared: the columns the producer sent (a retry's SQS message id and send
                // time differ, and do not make it a change).
                let compared: Vec<String> = if write.compared.is_empty() {
                    cols.clone()
                } else {
                    write.compared.iter().map(|c| quote_ident(c)).collect()
                };
                let of = |alias: &str| {
                    compared
                        .iter()
                        .map(|c| format!("{alias}.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let digest = |alias: &str| {
                    format!("int8send(hash_record_extended(ROW({}), 0))", of(alias))
                };
                let changed = format!("({}) IS DISTINCT FROM ({})", of("t"), of("EXCLUDED"));
                let on_conflict_changed = if set_all.is_empty() {
                    on_conflict_update.clone()
                } else {
                    format!("{on_conflict_update} WHERE {changed}")
                };
                (
                    // The key's last row received is what the table ends with: inserted, or
                    // replacing the key's row unless that row holds the same values already
                    // (decided on the row as committed, after waiting for any other loader
                    // writing the key). Counts: when every key came once (the common batch),
                    // the rows written and the deletes; otherwise (and only then is `l`
                    // computed) a key that came once counts by whether it was written, and each
                    // row of a key that came more often by the row before it (`_prev`: the one
                    // received before it in the batch, or for the first the key's row in the
                    // table as the statement found it).
                    format!(
                        "WITH d AS (SELECT st.*, CASE WHEN st._deleted THEN NULL ELSE {dst} END \
                                           AS _digest FROM {stage} st),
                              s AS (SELECT DISTINCT ON ({key_list}) * FROM d \
                                    ORDER BY {key_list}, _ord DESC),
                              ins AS (INSERT INTO {target} AS t ({col_list}) \
                                      SELECT {col_list} FROM s WHERE NOT s._deleted \
                                      ORDER BY {key_list} {on_conflict_changed} \
                                      RETURNING {key_list}),
                              l AS (SELECT d.*, lag(_digest) OVER o AS _prev, \
                                           lag(_ord) OVER o IS NULL AS _first, \
                                           lead(_ord) OVER o IS NULL AS _last \
                                      FROM d WINDOW o AS (PARTITION BY {key_list} ORDER BY _ord))
                         SELECT CASE WHEN (SELECT count(*) FROM d) = (SELECT count(*) FROM s) \
                                     THEN (SELECT count(*) FROM ins) \
                                          + (SELECT count(*) FROM s WHERE _deleted) \
                                     ELSE (SELECT count(*) FROM l \
                                            WHERE l._first AND l._last \
                                              AND (l._deleted OR EXISTS \
                                                   (SELECT 1 FROM ins WHERE {l_ins}))) \
                                        + (SELECT count(*) FROM l LEFT JOIN {target} cur \
                                                  ON {l_cur} AND l._first \
                                            WHERE NOT (l._first AND l._last) \
                                              AND (l._deleted OR l._digest IS DISTINCT FROM \
                                                   CASE WHEN l._first \
                                                        AND cur.{first_key} IS NOT NULL \
                                                        THEN {dcur} ELSE l._prev END)) \
                                END, \
                                (SELECT count(*) FROM ins), \
                                (SELECT array_agg(_ord) FROM s WHERE _deleted) \
                          WHERE $1::text IS NOT NULL",
                        dst = digest("st"),
                        dcur = digest("cur"),
                        l_ins = same_key("ins", "l"),
                        l_cur = same_key("cur", "l"),
                        first_key = keys[0],
                    ),
                    // The keys whose last row deletes ($2, their staged rows): the row goes
                    // (a state sent again later is inserted again).
                    Some(format!(
                        "DELETE FROM {target} t \
                          USING (SELECT {sk} FROM {stage} st \
                                  JOIN unnest($2::int8[]) AS o(ord) ON st._ord = o.ord) s \
                         WHERE {del_on} AND $1::text IS NOT NULL",
                        sk = qualified_keys("st"),
                        del_on = same_key("t", "s"),
                    )),
                )
            }
            WriteMode::Latest => {
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
                (
                    // Order: version, then a delete before an update of the same version,
                    // then SentTimestamp, then message id.
                    format!(
                        "WITH x AS (SELECT st.*, {kt} AS _k, {version_number} AS _v FROM {stage} st),
                              s AS (SELECT DISTINCT ON (_k) * FROM x ORDER BY _k, _v DESC, \
                                    _deleted DESC, _sent_ms DESC, _message_id DESC, _ord DESC),
                              won AS (INSERT INTO sqs2pg.row_versions AS r \
                                          (target, key, version, sent_ms, message_id, deleted_at)
                                      SELECT $1::text, _k, _v, _sent_ms, _message_id, \
                                             CASE WHEN _deleted THEN now() END FROM s ORDER BY _k
                                      ON CONFLICT (target, key) DO UPDATE \
                                         SET version = EXCLUDED.version, sent_ms = EXCLUDED.sent_ms, \
                                             message_id = EXCLUDED.message_id, \
                                             deleted_at = EXCLUDED.deleted_at
                                       WHERE (r.version, r.deleted_at IS NOT NULL, r.sent_ms, \
                                              r.message_id) \
                                           < (EXCLUDED.version, EXCLUDED.deleted_at IS NOT NULL, \
                                              EXCLUDED.sent_ms, EXCLUDED.message_id)
                                      RETURNING key),
                              w AS (SELECT s.* FROM s JOIN won ON won.key = s._k),
                              ins AS (INSERT INTO {target} ({col_list}) SELECT {col_list} FROM w \
                                      WHERE NOT w._deleted ORDER BY {key_list} {on_conflict_update} \
                                      RETURNING 1)
                         SELECT (SELECT count(*) FROM w), (SELECT count(*) FROM ins), \
                                (SELECT array_agg(_ord) FROM x WHERE _deleted)",
                        kt = key_text("st"),
                    ),
                    // The staged deletes ($2) whose key's entry is now a tombstone (this
                    // batch's, or one already there): their rows go.
                    Some(format!(
                        "DELETE FROM {target} t \
                          USING (SELECT DISTINCT {sk}, {kt} AS _k FROM {stage} st \
                                  JOIN unnest($2::int8[]) AS o(ord) ON st._ord = o.ord) d \
                           JOIN sqs2pg.row_versions r ON r.target = $1::text AND r.key = d._k \
                         WHERE r.deleted_at IS NOT NULL AND {del_on}",
                        sk = qualified_keys("st"),
                        kt = key_text("st"),
                        del_on = same_key("t", "d"),
                    )),
                )
            }
        };
        Self {
            mode: write.mode,
            create_stage,
            copy,
            resolve,
            delete,
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
