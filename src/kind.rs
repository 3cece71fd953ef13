//! The seam between the pipeline and what a message means: a [`MessageKind`] turns one
//! received [`Message`] into rows ready for the table ([`CopyRows`], already in PostgreSQL's
//! binary COPY form) or into a [`Rejection`] with a stable reason code; and what a load of
//! them did ([`LoadReport`]) or why it failed ([`LoadFailure`]), and a quarantined message as
//! the load records it ([`Reject`], with its [`Delivery`]). The pipeline, the batch,
//! the ledger and the loader know only these types; the login kind (`login::LoginKind`) and
//! declarative mappings (`mapping::Mapper`) are kinds.
//!
//! Rows are encoded where messages are transformed (the receivers, in parallel), so a kind owns
//! its table's columns and their encoding, and the loader only streams bytes. Only a kind's own
//! masked row types are encoded, so an unmasked value has no way into the table.

use std::fmt;
use std::time::SystemTime;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type};

use crate::keys::SealedBody;

/// One received message as a kind sees it. `sent_timestamp_ms` is normalised where messages
/// are received (LocalStack 0.14 sends seconds, SQS milliseconds).
#[derive(Clone, Copy)]
pub struct Message<'a> {
    pub body: &'a str,
    pub message_id: &'a str,
    /// Milliseconds since 1970.
    pub sent_timestamp_ms: i64,
    pub receive_count: i32,
    pub group_id: Option<&'a str>,
    /// Message attributes with a string value, by name.
    pub attributes: &'a [(String, String)],
}

impl<'a> Message<'a> {
    /// A first delivery with no group and no message attributes (what `mapping preview`,
    /// the benchmarks and the tests map).
    pub fn new(body: &'a str, message_id: &'a str, sent_timestamp_ms: i64) -> Self {
        Self {
            body,
            message_id,
            sent_timestamp_ms,
            receive_count: 1,
            group_id: None,
            attributes: &[],
        }
    }
}

/// A `SentTimestamp` in milliseconds since the epoch. SQS sends milliseconds; LocalStack 0.14
/// sends seconds. Any millisecond value after 1973-03-03 is above 10^11 and any second value
/// before the year 5138 is below it, so the magnitude tells the two apart unambiguously.
pub fn sent_millis(ts: i64) -> i128 {
    const SECONDS_BELOW: i64 = 100_000_000_000;
    if ts.abs() < SECONDS_BELOW {
        i128::from(ts) * 1_000
    } else {
        i128::from(ts)
    }
}

/// Why a message gives no row: a stable code (`missing_field:COL`, `not_json`, ...) and a
/// detail that names kinds, lengths and positions, never a value from the message, so it is
/// safe to log and to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub detail: Option<String>,
}

impl Rejection {
    /// A rejection with a value-free detail.
    pub fn new(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            detail: Some(detail.into()),
        }
    }

    /// A rejection without detail.
    pub fn bare(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            detail: None,
        }
    }

    /// Text serde_json's reader refused, its detail `context` then what and where, never
    /// the text: `invalid_utf16_escape` for a string with a lone surrogate escape, `not_json`
    /// for anything else.
    pub fn unreadable_json(error: &serde_json::Error, context: &str) -> Self {
        Self::unreadable_json_at(error, context, error.line(), error.column())
    }

    /// [`Rejection::unreadable_json`], said to be at `line` and `column` (of a text the
    /// error's reader read part of).
    pub fn unreadable_json_at(
        error: &serde_json::Error,
        context: &str,
        line: usize,
        column: usize,
    ) -> Self {
        use serde_json::error::Category;
        // serde_json says "lone leading surrogate in hex escape", or "unexpected end of hex
        // escape" for a high surrogate not followed by a low one; its error codes are not
        // public, so the message (which never holds the input) tells.
        let text = error.to_string();
        if error.classify() == Category::Syntax
            && (text.contains("surrogate") || text.contains("hex escape"))
        {
            return Self::lone_surrogate(line, column);
        }
        let what = match error.classify() {
            Category::Eof => "truncated JSON",
            Category::Syntax => "JSON syntax error",
            Category::Data => "unexpected JSON data",
            Category::Io => "unreadable input",
        };
        Self::new(
            "not_json",
            format!("{context}{what} at line {line} column {column}"),
        )
    }

    /// A string with a lone surrogate escape (`"\ud800"`), which no string can hold: where
    /// serde_json's reader stops at it.
    pub fn lone_surrogate(line: usize, column: usize) -> Self {
        Self::new(
            "invalid_utf16_escape",
            format!("lone surrogate escape at line {line} column {column}"),
        )
    }

    /// The body is longer than `--max-body-bytes` (decided before any kind sees it).
    pub fn body_too_large(bytes: usize, limit: usize) -> Self {
        Self::new("body_too_large", format!("{bytes} bytes, limit {limit}"))
    }

    /// Received more often than the limit and still failing somewhere: kept aside.
    pub fn poison(detail: String) -> Self {
        Self::new("poison:receive_count", detail)
    }

    /// Processing it ended the process, again and again, before it could finish: kept aside
    /// unparsed.
    pub fn crashed(detail: String) -> Self {
        Self::new("poison:crashed", detail)
    }

    /// Loading it alone stalled the database, while the database took other work, on
    /// delivery after delivery: kept aside.
    pub fn stalled(detail: String) -> Self {
        Self::new("poison:stalled", detail)
    }

    /// The table refused the row for a data reason of its own (`rule`: the constraint's name,
    /// `not_null:COLUMN`, `no_partition`, or the SQLSTATE); `detail` names the SQLSTATE,
    /// constraint, table and column.
    pub fn table_refused(rule: &str, detail: String) -> Self {
        Self::new(format!("table_refused:{rule}"), detail)
    }
}

/// The rows one message gives (none, one, or several: an S3 notification has a row per
/// record; a message several mappings take has rows for each of their tables), each already
/// in PostgreSQL's binary COPY tuple form, and for which of the kind's tables (its *targets*,
/// in [`MessageKind::writes`] order). Debug shows counts only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CopyRows {
    bytes: BytesMut,
    rows: u32,
    /// Where rows for a target other than the first begin: `(target, byte offset)`, one per
    /// run of rows of one target. Empty when every row is the first target's (one table: no
    /// allocation).
    runs: Vec<(u16, usize)>,
}

/// Why a value could not be encoded for its column.
pub type EncodeError = Box<dyn std::error::Error + Sync + Send>;

impl CopyRows {
    /// Room for about `bytes` bytes of rows.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: BytesMut::with_capacity(bytes),
            rows: 0,
            runs: Vec::new(),
        }
    }

    /// The target the next row goes to is `target`: opens a run when it changes.
    fn route(&mut self, target: u16) {
        let current = self.runs.last().map_or(0, |r| r.0);
        if current != target {
            self.runs.push((target, self.bytes.len()));
        }
    }

    /// Appends `other`'s rows (all of its first target's) as rows of `target`.
    pub fn append_to(&mut self, target: u16, other: &CopyRows) {
        if other.rows == 0 {
            return;
        }
        self.route(target);
        self.bytes.extend_from_slice(&other.bytes);
        self.rows += other.rows;
    }

    /// The encoded tuples of each run of rows, with its target, in order.
    pub fn parts(&self) -> impl Iterator<Item = (u16, &[u8])> + '_ {
        let first_end = self.runs.first().map_or(self.bytes.len(), |r| r.1);
        let first = (first_end > 0).then(|| (0u16, &self.bytes[..first_end]));
        let rest = self
            .runs
            .iter()
            .enumerate()
            .map(move |(i, &(target, start))| {
                let end = self.runs.get(i + 1).map_or(self.bytes.len(), |r| r.1);
                (target, &self.bytes[start..end])
            });
        first.into_iter().chain(rest)
    }

    /// Appends one row: each value encoded as its column's `types` entry, as tokio-postgres's
    /// `BinaryCopyInWriter` does (we encode here, ahead of the COPY, so the framing is ours:
    /// a field count, then per field its length, -1 for NULL, and its bytes).
    pub fn push(
        &mut self,
        values: &[&(dyn ToSql + Sync)],
        types: &[Type],
    ) -> Result<(), EncodeError> {
        assert_eq!(values.len(), types.len(), "one type per value");
        let start = self.bytes.len();
        let fields = i16::try_from(values.len()).map_err(|_| "too many columns")?;
        self.bytes.put_i16(fields);
        for (value, ty) in values.iter().zip(types) {
            let at = self.bytes.len();
            self.bytes.put_i32(0);
            match value.to_sql_checked(ty, &mut self.bytes) {
                Ok(IsNull::Yes) => {
                    self.bytes[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
                }
                Ok(IsNull::No) => {
                    let len = i32::try_from(self.bytes.len() - at - 4)
                        .map_err(|_| "a value over 2 GiB")?;
                    self.bytes[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
                Err(e) => {
                    self.bytes.truncate(start);
                    return Err(e);
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// How many rows.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// The encoded tuples, back to back, of every target: what the loader writes between
    /// COPY's header and trailer when the kind has one table.
    pub fn encoded(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for CopyRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CopyRows({} rows, {} bytes)",
            self.rows,
            self.bytes.len()
        )
    }
}

/// What a kind made of one message, and how many of its fields it did not know (a hint that
/// producers send more than the table keeps).
#[derive(Debug)]
pub struct Transformed {
    pub outcome: Result<CopyRows, Rejection>,
    pub unknown_fields: u32,
    /// The unknown fields' names that this kind had not reported before (each is named once
    /// per process, so the log says which fields, never their values): usually empty.
    pub new_unknown: Vec<String>,
}

impl Transformed {
    /// An outcome with no unknown field.
    pub fn of(outcome: Result<CopyRows, Rejection>) -> Self {
        Self {
            outcome,
            unknown_fields: 0,
            new_unknown: Vec::new(),
        }
    }
}

/// How rows reach a table: appended, or resolved by key (see `mapping::write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Every row is inserted.
    #[default]
    Append,
    /// The first row for a key stays; a later one is a `duplicate_key`.
    Ignore,
    /// The last row processed for a key replaces it; a row already applied once is a
    /// `duplicate_key`.
    Upsert,
    /// The greatest version wins (then SentTimestamp, then message id); a loser is `stale`.
    Latest,
}

impl WriteMode {
    /// As the mapping file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Append => "append",
            WriteMode::Ignore => "ignore",
            WriteMode::Upsert => "upsert",
            WriteMode::Latest => "latest",
        }
    }
}

/// What a `latest` version column holds, which says how it is ordered as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionOrder {
    /// An integer or numeric.
    Number,
    /// A timestamp (with or without time zone): ordered by its epoch seconds.
    Timestamp,
    /// A date: ordered by its days since 1970.
    Date,
}

/// How a kind's rows reach one of its tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableWrite {
    /// The columns each row fills, in order, as named in the table (the loader quotes them).
    pub columns: Vec<String>,
    /// Under upsert, the columns that tell a changed row from a resend: those the producer
    /// sent, not the delivery's own (its SQS message id and send time...), which differ on
    /// every retry. Empty: all of them.
    pub compared: Vec<String>,
    pub mode: WriteMode,
    /// The key's columns (none under append), each with whether it is numeric (its text form
    /// is normalised: `1.0` and `1.00` are one key).
    pub key: Vec<(String, bool)>,
    /// The version column, under latest.
    pub version: Option<(String, VersionOrder)>,
}

/// Under a keyed write mode each row carries, after its columns: whether it deletes its key,
/// its message's SentTimestamp (milliseconds) and its message id (the tie-breaks of latest).
pub const KEYED_FIELDS: [&str; 3] = ["_deleted", "_sent_ms", "_message_id"];

/// What a committed batch (or part of one) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Messages whose rows were inserted into the target table (each recorded in the ledger).
    pub loaded: u64,
    /// Rows inserted into the target table: one per loaded message for logins; none or several
    /// for a mapping (an S3 test event, an S3 notification's records).
    pub rows: u64,
    /// Reason codes of the rejections inserted (one entry per rejected message).
    pub rejected: Vec<String>,
    /// Messages skipped because the ledger already held their id.
    pub duplicates: u64,
    /// Rows of keyed tables that changed nothing: a key already held, or a later row of the
    /// same key in the batch (`ignore`); a row equal to the key's row before it (`upsert`).
    pub duplicate_keys: u64,
    /// Rows of `latest` tables that lost to a greater version (or a tombstone).
    pub stale: u64,
    /// Rows deleted from keyed tables.
    pub deleted: u64,
    /// Per target table, in the kind's order: rows written, and rows that changed nothing as
    /// `duplicate_key` and as `stale` (the metrics' `mapping` label).
    pub targets: Vec<(u64, u64, u64)>,
}

impl LoadReport {
    /// Adds another part's report to this one.
    pub fn merge(&mut self, other: LoadReport) {
        self.loaded += other.loaded;
        self.rows += other.rows;
        self.rejected.extend(other.rejected);
        self.duplicates += other.duplicates;
        self.duplicate_keys += other.duplicate_keys;
        self.stale += other.stale;
        self.deleted += other.deleted;
        if self.targets.len() < other.targets.len() {
            self.targets.resize(other.targets.len(), (0, 0, 0));
        }
        for (mine, theirs) in self.targets.iter_mut().zip(other.targets) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
            mine.2 += theirs.2;
        }
    }

    /// Counts `rows` written to target `index`, and its keyed rows that changed nothing.
    pub fn count_target(&mut self, index: usize, rows: u64, duplicate_keys: u64, stale: u64) {
        self.rows += rows;
        self.duplicate_keys += duplicate_keys;
        self.stale += stale;
        if self.targets.len() <= index {
            self.targets.resize(index + 1, (0, 0, 0));
        }
        let target = &mut self.targets[index];
        target.0 += rows;
        target.1 += duplicate_keys;
        target.2 += stale;
    }
}

/// A load that did not commit, in the pipeline's words: nothing of the batch is in the
/// database, and nothing of it may be deleted. The sink's adapter makes one from its own error
/// (`pipeline::sink`), the policy (`error::fate`) decides by its [`LoadClass`], and its text is
/// what the sink said (never the server's message about a row, which can quote it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LoadFailure {
    pub class: LoadClass,
    /// What the database server said, where it said something: its codes and names only
    /// (boxed: a failure travels in `Result`s, and is rare).
    pub server: Option<Box<ServerError>>,
    message: String,
}

impl LoadFailure {
    /// A failure of `class`, described by `message`.
    pub fn new(class: LoadClass, message: impl Into<String>) -> Self {
        Self {
            class,
            server: None,
            message: message.into(),
        }
    }

    /// With what the database server said.
    pub fn with_server(self, server: Option<ServerError>) -> Self {
        Self {
            server: server.map(Box::new),
            ..self
        }
    }

    /// A load that did not finish within `bound` (its connection is dropped).
    pub fn timed_out(bound: std::time::Duration) -> Self {
        Self::new(
            LoadClass::TimedOut,
            format!("the load did not finish within {} s", bound.as_secs()),
        )
    }
}

/// What kind of failure a load's is, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadClass {
    /// The table refused a row for a data reason of its own (NOT NULL, CHECK, a unique key, no
    /// partition): some row of the batch is to blame.
    RowRefused,
    /// Waiting for a lock timed out: someone else holds the table or a row (no row is to
    /// blame).
    LockWait,
    /// It may work if tried again (a connection lost, the server restarting or overloaded).
    Transient,
    /// It will not work again by itself (a missing column or privilege, a bad URL).
    Permanent,
    /// It did not finish in the time the pipeline gave it.
    TimedOut,
}

/// A database server's error as the pipeline may see it: the SQLSTATE and the names the server
/// gives, never its message or DETAIL (those can quote row values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The five-character SQLSTATE (`23502`: NOT NULL violated).
    pub sqlstate: String,
    pub constraint: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
}

/// A message kind: a pure transform (no I/O, no clock) from a received message to rows of its
/// tables, or a rejection; and how each table is written, in the order rows name them.
pub trait MessageKind: Send + Sync + 'static {
    /// What the kind is called in metrics and logs: `login`, or a mapping's table.
    fn name(&self) -> &str;

    /// How each of its tables is written (the columns the rows fill, in order, and the mode);
    /// a row's target is its index here.
    fn writes(&self) -> Vec<TableWrite>;

    /// Transforms one message. Never panics on any body (fuzzed); the pipeline catches a
    /// panic anyway for a message that keeps coming back.
    fn transform(&self, message: &Message<'_>) -> Transformed;
}

/// When and how a message was delivered, as a rejection records it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub received_at: SystemTime,
    pub receive_count: i32,
    /// The SentTimestamp the message was dated by, so a replay keeps its `create_date`.
    pub sent_timestamp: i64,
    /// The time half of the message's ledger key (see `pipeline::batch::ledger_ms`).
    pub ledger_ms: i64,
}

/// A quarantined message: its id, why, how it was delivered, and its body sealed (encrypted)
/// so only key holders can read it. No field values in the clear.
#[derive(Debug)]
pub struct Reject {
    pub message_id: String,
    pub rejection: Rejection,
    pub delivery: Delivery,
    pub sealed_body: SealedBody,
    /// What SQS carried besides the body (attributes, FIFO ids), sealed; `None` when nothing.
    pub sealed_envelope: Option<SealedBody>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_framed_as_binary_copy_tuples_with_nulls_as_minus_one() {
        let mut rows = CopyRows::default();
        rows.push(
            &[&"ab", &None::<i32>, &7i32],
            &[Type::TEXT, Type::INT4, Type::INT4],
        )
        .unwrap();
        assert_eq!(rows.rows(), 1);
        assert_eq!(
            rows.encoded(),
            [
                &3i16.to_be_bytes()[..],
                &2i32.to_be_bytes(),
                b"ab",
                &(-1i32).to_be_bytes(),
                &4i32.to_be_bytes(),
                &7i32.to_be_bytes(),
            ]
            .concat()
        );
        // A value its type refuses leaves nothing half-written.
        let before = rows.encoded().to_vec();
        assert!(rows
            .push(&[&"x", &"not an int"], &[Type::TEXT, Type::INT4])
            .is_err());
        assert_eq!(rows.encoded(), before);
        assert_eq!(rows.rows(), 1);
        assert_eq!(format!("{rows:?}"), "CopyRows(1 rows, 20 bytes)");
    }

    #[test]
    fn rows_for_several_targets_come_back_in_runs_by_target() {
        let row = |v: i32| {
            let mut r = CopyRows::default();
            r.push(&[&v], &[Type::INT4]).unwrap();
            r
        };
        let mut all = CopyRows::default();
        // The first target's rows need no run of their own.
        all.append_to(0, &row(1));
        assert!(all.runs.is_empty());
        all.append_to(2, &row(2));
        all.append_to(2, &row(3));
        all.append_to(0, &CopyRows::default());
        all.append_to(1, &row(4));
        assert_eq!(all.rows(), 4);
        let parts: Vec<(u16, usize)> = all.parts().map(|(t, b)| (t, b.len())).collect();
        assert_eq!(parts, [(0, 10), (2, 20), (1, 10)]);
        // Rows of a later target only: no empty first part.
        let mut later = CopyRows::default();
        later.append_to(1, &row(5));
        assert_eq!(later.parts().map(|p| p.0).collect::<Vec<_>>(), [1]);
    }
}
