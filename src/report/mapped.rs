//! `sqs2pg report` for a mapping's table, in aggregates only: rows, rows per day of the
//! mapping's first date or time column, and per token column the distinct tokens and how many
//! of them come back more than once (the login report's "distinct masked ips", for any
//! column). Counts, dates and column names only: never a token or a value.

use std::fmt::Write as _;

use serde::Serialize;
use tokio_postgres::Client;

use crate::postgres::schema::quote_ident;
use crate::postgres::TableName;

/// One token column's counts.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TokenColumn {
    pub name: String,
    pub distinct: i64,
    /// Tokens that appear in more than one row, and the rows they account for.
    pub repeated: i64,
    pub rows_with_repeated: i64,
}

/// The aggregates of a mapping's table.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MappedReport {
    pub table: String,
    pub rows: i64,
    /// The column rows are counted by day of (UTC for a timestamptz), if the mapping has one.
    pub day_column: Option<String>,
    /// (day, rows), oldest first; `None` for rows without a value.
    pub per_day: Vec<(Option<String>, i64)>,
    pub tokens: Vec<TokenColumn>,
    /// (reason, messages), most first.
    pub rejected: Vec<(String, i64)>,
}

/// Reads the aggregates of `table`: by day of `day_column` (its name, and whether it is a
/// timestamptz, whose day is taken in UTC), and for each of `token_columns`.
pub async fn build(
    client: &Client,
    table: &TableName,
    day_column: Option<(&str, bool)>,
    token_columns: &[String],
) -> Result<MappedReport, tokio_postgres::Error> {
    let t = table.quoted();
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await?
        .get(0);
    let per_day = match day_column {
        None => Vec::new(),
        Some((column, with_time_zone)) => {
            let c = quote_ident(column);
            let day = if with_time_zone {
                format!("({c} AT TIME ZONE 'UTC')::date")
            } else {
                format!("{c}::date")
            };
            client
                .query(
                    &format!(
                        "SELECT to_char({day}, 'YYYY-MM-DD') AS day, count(*)
                           FROM {t} GROUP BY day ORDER BY day NULLS LAST"
                    ),
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }
    };
    let mut tokens = Vec::with_capacity(token_columns.len());
    for name in token_columns {
        let c = quote_ident(name);
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT count(DISTINCT {c}) FROM {t}), count(*),
                            coalesce(sum(n), 0)::bigint
                       FROM (SELECT count(*) AS n FROM {t} WHERE {c} IS NOT NULL
                              GROUP BY {c} HAVING count(*) > 1) repeated"
                ),
                &[],
            )
            .await?;
        tokens.push(TokenColumn {
            name: name.clone(),
            distinct: row.get(0),
            repeated: row.get(1),
            rows_with_repeated: row.get(2),
        });
    }
    Ok(MappedReport {
        table: table.to_string(),
        rows,
        day_column: day_column.map(|(c, _)| c.to_owned()),
        per_day,
        tokens,
        rejected: super::rejections(client).await?,
    })
}

impl MappedReport {
    /// The report as text tables.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}: {} rows", self.table, self.rows);
        for c in &self.tokens {
            let _ = writeln!(
                out,
                "  distinct {:<24}{:>10}   seen more than once {:>8} (in {} rows)",
                c.name, c.distinct, c.repeated, c.rows_with_repeated
            );
        }
        if let Some(column) = &self.day_column {
            let _ = writeln!(out, "rows per day of {column}");
            for (day, n) in &self.per_day {
                let day = day.as_deref().unwrap_or("(none)");
                let _ = writeln!(out, "  {day:<12}{n:>10}");
            }
        }
        let total: i64 = self.rejected.iter().map(|(_, n)| n).sum();
        let _ = writeln!(out, "rejected messages: {total}");
        for (reason, n) in &self.rejected {
            let _ = writeln!(out, "  {reason:<32}{n:>10}");
        }
        out
    }
}
