//! The aggregate queries behind `sqs2pg report`: counts over a table, by group, and of values
//! that repeat, plus the quarantine by reason. Counts and group labels only; the `report`
//! module decides what to ask and renders the answers.

use tokio_postgres::Client;

use super::schema::quote_ident;
use super::TableName;

/// Rows of `table`, and the distinct non-NULL values of each of `columns`.
pub async fn totals(
    client: &Client,
    table: &TableName,
    columns: &[&str],
) -> Result<(i64, Vec<i64>), tokio_postgres::Error> {
    let t = table.quoted();
    let distinct: Vec<String> = columns
        .iter()
        .map(|c| format!(", count(DISTINCT {})", quote_ident(c)))
        .collect();
    let row = client
        .query_one(
            &format!("SELECT count(*){} FROM {t}", distinct.join("")),
            &[],
        )
        .await?;
    Ok((
        row.get(0),
        (1..=columns.len()).map(|i| row.get(i)).collect(),
    ))
}

/// The values of column `c` (quoted) of table `t` (quoted) that appear in more than one row,
/// with `n`, the rows each accounts for.
fn repeats_of(t: &str, c: &str) -> String {
    format!("SELECT count(*) AS n FROM {t} WHERE {c} IS NOT NULL GROUP BY {c} HAVING count(*) > 1")
}

/// Values of `column` that appear in more than one row, and the rows they account for.
pub async fn repeated(
    client: &Client,
    table: &TableName,
    column: &str,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let (t, c) = (table.quoted(), quote_ident(column));
    let repeats = repeats_of(&t, &c);
    let row = client
        .query_one(
            &format!("SELECT count(*), coalesce(sum(n), 0)::bigint FROM ({repeats}) repeated"),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// A token column's counts, in one statement (one snapshot): distinct values, values that
/// appear in more than one row, and the rows those account for.
pub async fn token_counts(
    client: &Client,
    table: &TableName,
    column: &str,
) -> Result<(i64, i64, i64), tokio_postgres::Error> {
    let (t, c) = (table.quoted(), quote_ident(column));
    let repeats = repeats_of(&t, &c);
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(DISTINCT {c}) FROM {t}), count(*),
                        coalesce(sum(n), 0)::bigint
                   FROM ({repeats}) repeated"
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// What rows are counted by in [`per_group`].
#[derive(Debug, Clone, Copy)]
pub enum Group<'a> {
    /// The day of a date column, oldest first.
    Day(&'a str),
    /// The day (UTC) of a timestamptz column, oldest first.
    DayUtc(&'a str),
    /// A column's value as text, most rows first.
    Value(&'a str),
}

/// Rows of `table` per group, `None` for rows without a value (last).
pub async fn per_group(
    client: &Client,
    table: &TableName,
    group: Group<'_>,
) -> Result<Vec<(Option<String>, i64)>, tokio_postgres::Error> {
    let t = table.quoted();
    let sql = match group {
        Group::Day(column) => {
            let c = quote_ident(column);
            format!(
                "SELECT to_char({c}::date, 'YYYY-MM-DD') AS day, count(*) FROM {t}
                  GROUP BY day ORDER BY day NULLS LAST"
            )
        }
        Group::DayUtc(column) => {
            let c = quote_ident(column);
            format!(
                "SELECT to_char(({c} AT TIME ZONE 'UTC')::date, 'YYYY-MM-DD') AS day, count(*)
                   FROM {t} GROUP BY day ORDER BY day NULLS LAST"
            )
        }
        Group::Value(column) => {
            let c = quote_ident(column);
            format!(
                "SELECT {c}::text, count(*) FROM {t}
                  GROUP BY {c} ORDER BY count(*) DESC, {c}"
            )
        }
    };
    Ok(client
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Quarantined messages by reason, most first; none when the bookkeeping schema is missing.
pub async fn rejections_by_reason(
    client: &Client,
) -> Result<Vec<(String, i64)>, tokio_postgres::Error> {
    let has_rejects: bool = client
        .query_one(
            "SELECT to_regclass('sqs2pg.rejected_messages') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !has_rejects {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            "SELECT reason, count(*) FROM sqs2pg.rejected_messages
              GROUP BY reason ORDER BY count(*) DESC, reason",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
