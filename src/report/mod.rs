//! `sqs2pg report`: what the analysts' table holds, in aggregates only. It gives rows per
//! day and per device type, distinct masked ips and devices, how many of those come back more
//! than once, and rejections by reason. It prints text, or with `--html` a self-contained page
//! with charts ([`html`]). No masked token and no user id is ever shown: counts, dates, device
//! types and reason codes only.

pub mod html;
pub mod mapped;

use std::fmt::Write as _;

use serde::Serialize;
use tokio_postgres::Client;

use crate::postgres::aggregates::{self, Group};
use crate::postgres::TableName;

/// The aggregates.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub table: String,
    pub rows: i64,
    /// (day, rows), oldest first; `None` for rows without a date.
    pub per_day: Vec<(Option<String>, i64)>,
    /// (device_type, rows), most rows first.
    pub per_device_type: Vec<(Option<String>, i64)>,
    pub distinct_masked_ips: i64,
    pub distinct_masked_devices: i64,
    /// Masked ips (devices) that appear in more than one row, and the rows they account for.
    pub repeated_ips: i64,
    pub rows_with_repeated_ip: i64,
    pub repeated_devices: i64,
    pub rows_with_repeated_device: i64,
    /// (reason, messages), most first; empty when the bookkeeping schema is missing.
    pub rejected: Vec<(String, i64)>,
}

/// Reads the aggregates from `table` (and the reject table, when `sqs2pg setup` has run).
pub async fn build(client: &Client, table: &TableName) -> Result<Report, tokio_postgres::Error> {
    let (rows, distinct) =
        aggregates::totals(client, table, &["masked_ip", "masked_device_id"]).await?;
    let ips = aggregates::repeated(client, table, "masked_ip").await?;
    let devices = aggregates::repeated(client, table, "masked_device_id").await?;
    let per_day = aggregates::per_group(client, table, Group::Day("create_date")).await?;
    let per_device_type = aggregates::per_group(client, table, Group::Value("device_type")).await?;
    Ok(Report {
        table: table.to_string(),
        rows,
        per_day,
        per_device_type,
        distinct_masked_ips: distinct[0],
        distinct_masked_devices: distinct[1],
        repeated_ips: ips.0,
        rows_with_repeated_ip: ips.1,
        repeated_devices: devices.0,
        rows_with_repeated_device: devices.1,
        rejected: aggregates::rejections_by_reason(client).await?,
    })
}

impl Report {
    /// The report as text tables.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let label = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let _ = writeln!(out, "{}: {} rows", self.table, self.rows);
        let _ = writeln!(
            out,
            "  distinct masked ips      {:>10}   seen more than once {:>8} (in {} rows)",
            self.distinct_masked_ips, self.repeated_ips, self.rows_with_repeated_ip
        );
        let _ = writeln!(
            out,
            "  distinct masked devices  {:>10}   seen more than once {:>8} (in {} rows)",
            self.distinct_masked_devices, self.repeated_devices, self.rows_with_repeated_device
        );
        let _ = writeln!(out, "rows per day");
        for (day, n) in &self.per_day {
            let _ = writeln!(out, "  {:<12}{n:>10}", label(day));
        }
        let _ = writeln!(out, "rows per device type");
        for (device, n) in &self.per_device_type {
            let _ = writeln!(out, "  {:<32}{n:>10}", label(device));
        }
        let total: i64 = self.rejected.iter().map(|(_, n)| n).sum();
        let _ = writeln!(out, "rejected messages: {total}");
        for (reason, n) in &self.rejected {
            let _ = writeln!(out, "  {reason:<32}{n:>10}");
        }
        out
    }
}
