//! The tables a run writes, each with the kind of message that fills it: the analysts' login
//! table (the built-in login pipeline) or a mapping's. The choice is made here, once:
//! [`Target::of_run`] for the tables and [`kind_of`] for the transform. `setup`, `check`,
//! `report`, `rekey` and the run ask a [`Target`] for its shape, token columns, queue and
//! report; none of them looks at whether a mapping was given. A new kind of table is a new
//! variant here, and nowhere else in `app`.

use super::AppError;
use crate::keys::MaskKey;
use crate::login::MaskModes;
use crate::mapping::{Mapper, Mapping};
use crate::postgres::schema::{MaskedColumn, ShapeColumn, TableShape};
use crate::postgres::{Database, TableName};

/// One table a run writes and what fills it.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The table (a mapping's is checked when the mapping is read, see `config::target`).
    pub table: TableName,
    source: Source<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// The built-in login pipeline into the analysts' table.
    Login,
    /// A mapping file's table.
    Mapping(&'a Mapping),
}

/// What `report` found in one table: the login table's aggregates (which `--html` can draw)
/// or a mapping's.
pub enum TableReport {
    Login(crate::report::Report),
    Mapped(crate::report::mapped::MappedReport),
}

impl TableReport {
    /// The report as text, as `sqs2pg report` prints it.
    pub fn to_text(&self) -> String {
        match self {
            Self::Login(report) => report.to_text(),
            Self::Mapped(report) => report.to_text(),
        }
    }
}

impl<'a> Target<'a> {
    /// The tables of a run: each mapping's, or `table` for the built-in login pipeline when
    /// there is none.
    pub fn of_run(table: &TableName, mappings: &'a [Mapping]) -> Vec<Self> {
        if mappings.is_empty() {
            return vec![Self {
                table: table.clone(),
                source: Source::Login,
            }];
        }
        mappings.iter().map(Self::of_mapping).collect()
    }

    /// A mapping's table.
    pub fn of_mapping(mapping: &'a Mapping) -> Self {
        Self {
            table: TableName::parse(&mapping.table)
                .expect("a mapping's table is checked when the mapping is read"),
            source: Source::Mapping(mapping),
        }
    }

    /// Whether this is the analysts' login table (what `report --html` draws).
    pub fn is_login(&self) -> bool {
        matches!(self.source, Source::Login)
    }

    /// Whether rows are written by key (write modes `ignore`, `upsert`, `latest`).
    pub fn keyed(&self) -> bool {
        self.write_mode() != crate::kind::WriteMode::Append
    }

    /// How rows reach the table (what privileges the run needs on it).
    pub fn write_mode(&self) -> crate::kind::WriteMode {
        match self.source {
            Source::Login => crate::kind::WriteMode::Append,
            Source::Mapping(m) => m.write.mode,
        }
    }

    /// What `check` says of a table that fits.
    pub fn fits(&self, shape: &TableShape) -> String {
        match self.source {
            Source::Login => format!(
                "sqs2pg schema current; {} matches the analysts' DDL",
                self.table
            ),
            Source::Mapping(_) => format!(
                "sqs2pg schema current; {} has the mapping's columns{}",
                self.table,
                if shape.key.is_empty() {
                    String::new()
                } else {
                    format!(" and a unique index on its key ({})", shape.key.join(", "))
                }
            ),
        }
    }

    /// The queue the table's messages come from, when its mapping names one (as logs and
    /// metrics label it).
    pub fn queue_label(&self) -> Option<String> {
        match self.source {
            Source::Login => None,
            Source::Mapping(m) => m
                .queue
                .as_deref()
                .map(|url| crate::sqs::name::queue_label(url).to_owned()),
        }
    }

    /// The columns the run writes (a mapping's required one is created NOT NULL), the key of
    /// a keyed write, and whether rows are replaced in place. On a FIFO queue every message has
    /// a group id, so a column that takes it is never NULL (what `check` compares with NOT NULL).
    pub fn shape(&self, fifo: bool) -> TableShape {
        use crate::mapping::file::{Mask, Source as From, SqsAttribute};
        let Source::Mapping(m) = self.source else {
            return TableShape::login();
        };
        TableShape {
            columns: m
                .columns
                .iter()
                .map(|c| {
                    let redacted = c.mask == Some(Mask::Redact);
                    let never_null = match c.source {
                        // (A body of `null` stores NULL: not `body`.)
                        From::Constant(_)
                        | From::Rest
                        | From::Sqs(
                            SqsAttribute::MessageId
                            | SqsAttribute::SentTimestamp
                            | SqsAttribute::ApproximateReceiveCount,
                        ) => true,
                        From::Sqs(SqsAttribute::MessageGroupId) => fifo,
                        _ => false,
                    };
                    ShapeColumn {
                        name: c.name.clone(),
                        catalog_type: c.column_type.catalog_name(),
                        // A redacted column always stores NULL, required or not; so
                        // does a required one that may be null, when it is.
                        not_null: c.required && !c.nullable && !redacted,
                        may_be_null: redacted || c.nullable || !(c.required || never_null),
                    }
                })
                .collect(),
            key: m
                .write
                .key
                .iter()
                .map(|&i| m.columns[i].name.clone())
                .collect(),
            replaced: matches!(
                m.write.mode,
                crate::kind::WriteMode::Upsert | crate::kind::WriteMode::Latest
            ),
            exact_types: false,
        }
    }

    /// The columns the run writes tokens into, with their scopes and modes: the login table's
    /// two, or a mapping's token columns (`redact` keeps nothing, so it is not a token column).
    pub fn masked_columns(&self, modes: MaskModes) -> Vec<MaskedColumn> {
        let column = |column: &str, scope: &str, mode: crate::mask::MaskMode| MaskedColumn {
            column: column.to_owned(),
            scope: scope.to_owned(),
            mode: mode.to_string(),
        };
        match self.source {
            Source::Login => vec![
                column("masked_ip", "ip", modes.ip),
                column("masked_device_id", "device_id", modes.device_id),
            ],
            Source::Mapping(m) => m
                .columns
                .iter()
                .filter_map(|c| match c.mask {
                    Some(crate::mapping::file::Mask::Token(mode)) => {
                        Some(column(&c.name, &c.mask_scope, mode))
                    }
                    _ => None,
                })
                .collect(),
        }
    }

    /// `sqs2pg report` for the table: the login table's aggregates, or a mapping's by day of
    /// its first date or time column and per token column.
    pub async fn report(&self, database: &Database) -> Result<TableReport, AppError> {
        use crate::mapping::column::ColumnType;
        use crate::mapping::file::Mask;
        let client = database.connect().await?;
        let m = match self.source {
            Source::Login => {
                return crate::report::build(&client, &self.table)
                    .await
                    .map(TableReport::Login)
                    .map_err(AppError::Query)
            }
            Source::Mapping(m) => m,
        };
        let day = m
            .columns
            .iter()
            .find(|c| {
                matches!(
                    c.column_type,
                    ColumnType::Date | ColumnType::Timestamptz | ColumnType::Timestamp
                )
            })
            .map(|c| (c.name.as_str(), c.column_type == ColumnType::Timestamptz));
        let tokens: Vec<String> = m
            .columns
            .iter()
            .filter(|c| matches!(c.mask, Some(Mask::Token(_))))
            .map(|c| c.name.clone())
            .collect();
        let mut report = crate::report::mapped::build(&client, &self.table, day, &tokens)
            .await
            .map_err(AppError::Query)?;
        report.queue = self.queue_label();
        Ok(TableReport::Mapped(report))
    }
}

/// The message kind of a run: the built-in login pipeline without a mapping, the mapping's
/// when there is one, a router over several.
pub fn kind_of(
    mappings: Vec<Mapping>,
    key: &MaskKey,
    modes: MaskModes,
) -> Result<Box<dyn crate::kind::MessageKind>, AppError> {
    Ok(match mappings.len() {
        0 => Box::new(crate::login::LoginKind::new(key, modes)),
        1 => Box::new(Mapper::new(
            mappings.into_iter().next().expect("one mapping"),
            key,
        )),
        _ => Box::new(
            crate::mapping::Router::new(mappings, key)
                .map_err(|e| AppError::Config(crate::config::ConfigError(e.to_string())))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_may_be_null_follows_the_source_and_the_queue() {
        let mapping = Mapping::parse(
            r#"table = "t"
columns = [
  { name = "a", from = "/a", type = "text" },
  { name = "b", from = "/b", type = "text", required = true },
  { name = "c", from = "/c", type = "text", required = true, nullable = true },
  { name = "rest", from = "rest", type = "jsonb" },
  { name = "grp", from = "sqs:MessageGroupId", type = "text" },
  { name = "id", from = "sqs:MessageId", type = "text" },
  { name = "k", value = "x", type = "text" },
]"#,
        )
        .unwrap();
        let nullable = |fifo| -> Vec<String> {
            Target::of_mapping(&mapping)
                .shape(fifo)
                .columns
                .into_iter()
                .filter(|c| c.may_be_null)
                .map(|c| c.name)
                .collect()
        };
        assert_eq!(nullable(false), ["a", "c", "grp"]);
        assert_eq!(nullable(true), ["a", "c"]);
    }

    #[test]
    fn setup_makes_required_columns_not_null_unless_they_are_redacted() {
        let mapping = Mapping::parse(
            r#"table = "t"
columns = [
  { name = "id",    from = "/id",    type = "integer", required = true },
  { name = "phone", from = "/phone", type = "text", required = true, mask = "redact" },
  { name = "note",  from = "/note",  type = "varchar(8)" },
  { name = "tag",   from = "/tag",   type = "text", required = true, nullable = true },
]
"#,
        )
        .unwrap();
        let shape = Target::of_mapping(&mapping).shape(false);
        let got: Vec<(&str, &str, bool)> = shape
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.catalog_type.as_str(), c.not_null))
            .collect();
        assert_eq!(
            got,
            [
                ("id", "integer", true),
                // Always NULL: a NOT NULL column would refuse every row.
                ("phone", "text", false),
                ("note", "character varying(8)", false),
                // Present in every message, but null in some.
                ("tag", "text", false),
            ]
        );
    }

    #[test]
    fn tables_that_replace_rows_leave_room_on_each_page() {
        let ddl = |mode: &str| {
            let mapping = Mapping::parse(&format!(
                r#"table = "public.users"
write = {{ mode = "{mode}", key = ["id"] }}
columns = [{{ name = "id", from = "/id", type = "bigint", required = true }}]"#
            ))
            .unwrap();
            Target::of_mapping(&mapping)
                .shape(false)
                .ddl(&TableName::parse("public.users").unwrap())
        };
        assert!(ddl("upsert").ends_with("PRIMARY KEY (\"id\")) WITH (fillfactor = 50)"));
        assert!(ddl("ignore").ends_with("PRIMARY KEY (\"id\"))"));
        let login = Target::of_run(&TableName::parse("public.user_logins").unwrap(), &[]);
        assert!(login[0].is_login() && !login[0].keyed());
        assert!(!login[0]
            .shape(false)
            .ddl(&login[0].table)
            .contains("fillfactor"));
    }
}
