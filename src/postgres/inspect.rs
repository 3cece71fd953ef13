//! Read-only questions to the database: a person's SELECT run safely (`unmask --query`),
//! who the run is connected as (`check`), and whether the server answers (`/readyz`).

use tokio_postgres::Client;

/// Runs `query` (one SELECT) in a read-only transaction with a 60 s statement timeout, and
/// returns its rows as tab-separated lines, a header first; each non-NULL cell goes through
/// `cell(column, value)` as text, NULL is shown as `NULL`. The query runs as one statement of
/// the extended protocol (which refuses several statements in one string), wrapped as a
/// subquery (so it must be a SELECT): it cannot change the database.
pub async fn select_as_text(
    client: &mut Client,
    query: &str,
    cell: impl Fn(&str, String) -> String,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let tx = client.build_transaction().read_only(true).start().await?;
    tx.batch_execute("SET LOCAL statement_timeout = '60s'")
        .await?;
    let query = query.trim().trim_end_matches(';');
    let inner = format!("SELECT * FROM ({query}) AS q");
    let statement = tx.prepare(&inner).await?;
    let names: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    // Every value as text, in column order, row by row, whatever the column types.
    let cells = tx
        .query(
            &format!(
                "SELECT r.n, j.value FROM
                   (SELECT row_number() OVER () AS n, row_to_json(q) AS doc FROM ({query}) AS q) AS r,
                   LATERAL json_each_text(r.doc) WITH ORDINALITY AS j(key, value, k)
                 ORDER BY r.n, j.k"
            ),
            &[],
        )
        .await?;
    let mut lines = vec![names.join("\t")];
    let mut row: Vec<String> = Vec::with_capacity(names.len());
    let mut current = None;
    let flush = |row: &mut Vec<String>, lines: &mut Vec<String>| {
        if !row.is_empty() {
            lines.push(row.join("\t"));
            row.clear();
        }
    };
    for answer in &cells {
        let n: i64 = answer.get(0);
        if current != Some(n) {
            flush(&mut row, &mut lines);
            current = Some(n);
        }
        let column = names.get(row.len()).map_or("", String::as_str);
        let value: Option<String> = answer.get(1);
        row.push(match value {
            None => "NULL".to_owned(),
            Some(value) => cell(column, value),
        });
    }
    flush(&mut row, &mut lines);
    tx.rollback().await?;
    Ok(lines)
}

/// The user the connection runs as and the server's version string.
pub async fn identity(client: &Client) -> Result<(String, String), tokio_postgres::Error> {
    let row = client
        .query_one("SELECT current_user::text, version()", &[])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Whether the server answers a query at all.
pub async fn ping(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.simple_query("SELECT 1").await.map(drop)
}
