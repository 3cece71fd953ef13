//! A mapped column's PostgreSQL type and the typed value a JSON value converts to (the
//! conversion itself is in [`super::convert`]).

use std::fmt;
use std::net::IpAddr;

use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

/// A column type the mapping can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    /// `varchar(n)`: at most `n` characters.
    Varchar(u32),
    Boolean,
    SmallInt,
    Integer,
    BigInt,
    /// `numeric`, or `numeric(precision, scale)`.
    Numeric(Option<(u16, u16)>),
    Real,
    Double,
    Date,
    Timestamptz,
    Timestamp,
    Uuid,
    Inet,
    Jsonb,
    TextArray,
}

impl ColumnType {
    /// Parses a type as PostgreSQL spells it (`varchar(32)`, `character varying(32)`,
    /// `numeric(12,2)`, `timestamp with time zone`, `text[]`, ...); case and spacing are free.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let squeezed: String = lower.split_whitespace().collect::<Vec<_>>().join(" ");
        let (name, args) = match squeezed.split_once('(') {
            Some((name, rest)) => {
                let Some(args) = rest.strip_suffix(')') else {
                    return Err(format!("`{text}`: a `(` without its `)`"));
                };
                (name.trim().to_owned(), Some(args.replace(' ', "")))
            }
            None => (squeezed.clone(), None),
        };
        let number = |s: &str, what: &str| -> Result<u32, String> {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("`{text}`: {what} must be a positive whole number"))
        };
        let plain = |t: ColumnType| match &args {
            None => Ok(t),
            Some(_) => Err(format!("`{text}`: this type takes no `(…)`")),
        };
        match name.as_str() {
            "text" => plain(ColumnType::Text),
            "varchar" | "character varying" => match &args {
                Some(n) => Ok(ColumnType::Varchar(number(n, "the length")?)),
                None => Err(format!(
                    "`{text}`: give the length, as `varchar(32)`, or use `text`"
                )),
            },
            "boolean" | "bool" => plain(ColumnType::Boolean),
            "smallint" | "int2" => plain(ColumnType::SmallInt),
            "integer" | "int" | "int4" => plain(ColumnType::Integer),
            "bigint" | "int8" => plain(ColumnType::BigInt),
            "numeric" | "decimal" => match &args {
                None => Ok(ColumnType::Numeric(None)),
                Some(a) => {
                    let (p, s) = a.split_once(',').unwrap_or((a.as_str(), "0"));
                    let precision = number(p, "the precision")?;
                    let scale: u32 = s
                        .parse()
                        .map_err(|_| format!("`{text}`: the scale must be a whole number"))?;
                    if precision > 1000 || scale > precision {
                        return Err(format!(
                            "`{text}`: precision 1 to 1000, scale 0 to the precision"
                        ));
                    }
                    Ok(ColumnType::Numeric(Some((precision as u16, scale as u16))))
                }
            },
            "real" | "float4" => plain(ColumnType::Real),
            "double precision" | "float8" => plain(ColumnType::Double),
            "date" => plain(ColumnType::Date),
            "timestamptz" | "timestamp with time zone" => plain(ColumnType::Timestamptz),
            "timestamp" | "timestamp without time zone" => plain(ColumnType::Timestamp),
            "uuid" => plain(ColumnType::Uuid),
            "inet" => plain(ColumnType::Inet),
            "jsonb" => plain(ColumnType::Jsonb),
            "text[]" => plain(ColumnType::TextArray),
            _ => Err(format!(
                "`{text}` is not a type a mapping can write; one of text, varchar(n), boolean, \
                 smallint, integer, bigint, numeric(p,s), real, double precision, date, \
                 timestamptz, timestamp, uuid, inet, jsonb, text[]"
            )),
        }
    }

    /// True for the types whose values are numbers (where `min` and `max` apply).
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColumnType::SmallInt
                | ColumnType::Integer
                | ColumnType::BigInt
                | ColumnType::Numeric(_)
                | ColumnType::Real
                | ColumnType::Double
        )
    }

    /// The type as PostgreSQL's `format_type` spells it (what `check` compares a table's
    /// columns to; also valid in `CREATE TABLE`).
    pub fn catalog_name(self) -> String {
        match self {
            ColumnType::Varchar(n) => format!("character varying({n})"),
            ColumnType::Timestamptz => "timestamp with time zone".into(),
            ColumnType::Timestamp => "timestamp without time zone".into(),
            other => other.to_string(),
        }
    }

    /// True for the types whose values are text (where lengths, patterns and masks apply).
    pub fn is_text(self) -> bool {
        matches!(self, ColumnType::Text | ColumnType::Varchar(_))
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Text => f.write_str("text"),
            ColumnType::Varchar(n) => write!(f, "varchar({n})"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::SmallInt => f.write_str("smallint"),
            ColumnType::Integer => f.write_str("integer"),
            ColumnType::BigInt => f.write_str("bigint"),
            ColumnType::Numeric(None) => f.write_str("numeric"),
            ColumnType::Numeric(Some((p, s))) => write!(f, "numeric({p},{s})"),
            ColumnType::Real => f.write_str("real"),
            ColumnType::Double => f.write_str("double precision"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamptz => f.write_str("timestamptz"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Uuid => f.write_str("uuid"),
            ColumnType::Inet => f.write_str("inet"),
            ColumnType::Jsonb => f.write_str("jsonb"),
            ColumnType::TextArray => f.write_str("text[]"),
        }
    }
}

/// A value as it will be stored. Debug shows the kind only: values can be personal.
#[derive(Clone, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Boolean(bool),
    SmallInt(i16),
    Integer(i32),
    BigInt(i64),
    /// A decimal in PostgreSQL's text form, already rounded to the column's scale.
    Numeric(String),
    Real(f32),
    Double(f64),
    Date(Date),
    Timestamptz(OffsetDateTime),
    Timestamp(PrimitiveDateTime),
    Uuid(uuid::Uuid),
    Inet(IpAddr),
    /// Compact JSON text.
    Jsonb(String),
    TextArray(Vec<String>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Value::Null => "Null",
            Value::Text(_) => "Text(..)",
            Value::Boolean(_) => "Boolean(..)",
            Value::SmallInt(_) => "SmallInt(..)",
            Value::Integer(_) => "Integer(..)",
            Value::BigInt(_) => "BigInt(..)",
            Value::Numeric(_) => "Numeric(..)",
            Value::Real(_) => "Real(..)",
            Value::Double(_) => "Double(..)",
            Value::Date(_) => "Date(..)",
            Value::Timestamptz(_) => "Timestamptz(..)",
            Value::Timestamp(_) => "Timestamp(..)",
            Value::Uuid(_) => "Uuid(..)",
            Value::Inet(_) => "Inet(..)",
            Value::Jsonb(_) => "Jsonb(..)",
            Value::TextArray(_) => "TextArray(..)",
        })
    }
}

impl Value {
    /// The value as PostgreSQL's text input would take it (what `mapping preview` prints);
    /// `None` for NULL.
    pub fn to_text(&self) -> Option<String> {
        Some(match self {
            Value::Null => return None,
            Value::Text(s) | Value::Numeric(s) | Value::Jsonb(s) => s.clone(),
            Value::Boolean(b) => b.to_string(),
            Value::SmallInt(n) => n.to_string(),
            Value::Integer(n) => n.to_string(),
            Value::BigInt(n) => n.to_string(),
            Value::Real(x) => x.to_string(),
            Value::Double(x) => x.to_string(),
            Value::Date(d) => d.to_string(),
            Value::Timestamptz(t) => t
                .checked_to_offset(time::UtcOffset::UTC)
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default(),
            Value::Timestamp(t) => t
                .format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]"
                ))
                .unwrap_or_default(),
            Value::Uuid(u) => u.hyphenated().to_string(),
            Value::Inet(ip) => ip.to_string(),
            Value::TextArray(items) => serde_json::to_string(items).unwrap_or_default(),
        })
    }
}

pub use super::convert::{compare_decimals, convert, in_years, Fault};

#[cfg(test)]
mod tests;
