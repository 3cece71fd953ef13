//! `sqs2pg report` for a mapping's table, in aggregates only: rows, rows per day of the
//! mapping's first date or time column, and per token column the distinct tokens and how many
//! of them come back more than once (the login report's "distinct masked ips", for any
//! column). Counts, dates and column names only: never a token or a value.

use std::fmt::Write as _;

use serde::Serialize;
use tokio_postgres::Client;

use crate::postgres::aggregates::{self, Group};
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
    /// The queue its mapping reads, when it names one (its name), for a run over several.
    pub queue: Option<String>,
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
    let (rows, _) = aggregates::totals(client, table, &[]).await?;
    let per_day = match day_column {
        None => Vec::new(),
        Some((column, true)) => aggregates::per_group(client, table, Group::DayUtc(column)).await?,
        Some((column, false)) => aggregates::per_group(client, table, Group::Day(column)).await?,
    };
    let mut tokens = Vec::with_capacity(token_columns.len());
    for name in token_columns {
        let (distinct, repeated, rows_with_repeated) =
            aggregates::token_counts(client, table, name).await?;
        tokens.push(TokenColumn {
            name: name.clone(),
            distinct,
            repeated,
            rows_with_repeated,
        });
    }
    Ok(MappedReport {
        table: table.to_string(),
        queue: None,
        rows,
        day_column: day_column.map(|(c, _)| c.to_owned()),
        per_day,
        tokens,
        rejected: aggregates::rejections_by_reason(client).await?,
    })
}

impl MappedReport {
    /// The report as text tables.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match &self.queue {
            Some(queue) => {
                let _ = writeln!(out, "{}: {} rows (queue {queue})", self.table, self.rows);
            }
            None => {
                let _ = writeln!(out, "{}: {} rows", self.table, self.rows);
            }
        }
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
