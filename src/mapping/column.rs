//! A mapped column's PostgreSQL type, the typed value a JSON value converts to, and the
//! conversion itself: what each type accepts, and the fault when a value does not fit.
//!
//! Conversions are strict where a guess could store something else than was sent: a number
//! is never read from a string for an integer column unless it is all digits, a date must be
//! ISO 8601, a timestamp with time zone must carry its offset (RFC 3339). JSON numbers arrive
//! through `f64` for `numeric`, `real` and `double precision` (17 significant digits); a
//! `numeric` sent as a string keeps every digit.

use std::fmt;
use std::net::IpAddr;

use serde_json::Value as Json;
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

/// Why a JSON value does not convert. Carries kinds, lengths and bounds, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The JSON kind cannot be this type at all (an object for an integer).
    WrongType {
        expected: &'static str,
        got: &'static str,
    },
    /// The right kind, but not a value of the type (a string that is not a date).
    Invalid(String),
    /// A number outside what the type (or the column's bounds) holds.
    OutOfRange(String),
    /// Text longer than the column allows.
    TooLong { chars: usize, max: u32 },
    /// Text holding U+0000, which PostgreSQL text cannot store.
    NulCharacter,
}

/// The kind of a JSON value, as named in faults.
pub fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

fn wrong(expected: &'static str, got: &Json) -> Fault {
    Fault::WrongType {
        expected,
        got: kind(got),
    }
}

fn text(value: &Json, max: Option<u32>) -> Result<String, Fault> {
    let s = match value {
        Json::String(s) => s.clone(),
        other => return Err(wrong("string", other)),
    };
    if s.contains('\0') {
        return Err(Fault::NulCharacter);
    }
    if let Some(max) = max {
        let chars = s.chars().count();
        if chars > max as usize {
            return Err(Fault::TooLong { chars, max });
        }
    }
    Ok(s)
}

/// A whole number from a JSON integer, or from a string of ASCII digits with an optional sign.
fn whole(value: &Json) -> Result<i128, Fault> {
    match value {
        Json::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .ok_or_else(|| Fault::Invalid("not a whole number".into())),
        Json::String(s) => {
            let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
            if digits.is_empty() || digits.len() > 30 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(Fault::Invalid("not a whole number".into()));
            }
            s.parse::<i128>()
                .map_err(|_| Fault::Invalid("not a whole number".into()))
        }
        other => Err(wrong("number", other)),
    }
}

fn bounded<T: TryFrom<i128>>(n: i128, type_name: &str) -> Result<T, Fault> {
    T::try_from(n).map_err(|_| Fault::OutOfRange(format!("beyond {type_name}")))
}

fn float(value: &Json) -> Result<f64, Fault> {
    let x = finite_or_not(value)?;
    if !x.is_finite() {
        return Err(Fault::OutOfRange("beyond double precision".into()));
    }
    Ok(x)
}

fn finite_or_not(value: &Json) -> Result<f64, Fault> {
    match value {
        Json::Number(n) => n
            .as_f64()
            .ok_or_else(|| Fault::Invalid("not a number".into())),
        Json::String(s) => decimal_parts(s)
            .and_then(|_| s.trim().parse::<f64>().ok())
            .ok_or_else(|| Fault::Invalid("not a number".into())),
        other => Err(wrong("number", other)),
    }
}

/// Sign, integer digits and fraction digits of a plain decimal (`-12.50`, `3`, `1e3` is not).
fn decimal_parts(s: &str) -> Option<(bool, &str, &str)> {
    let s = s.trim();
    let (negative, unsigned) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    Some((negative, int, frac))
}

/// A decimal rounded half away from zero to `scale` digits (as PostgreSQL rounds numeric
/// input), checked against `precision`.
fn numeric(value: &Json, spec: Option<(u16, u16)>) -> Result<String, Fault> {
    let written = match value {
        // Rust prints the shortest text that reads back as the same f64.
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.to_string(),
            (_, Some(u)) => u.to_string(),
            _ => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if !x.is_finite() {
                    return Err(Fault::Invalid("not a finite number".into()));
                }
                format!("{x}")
            }
        },
        Json::String(s) => s.trim().to_owned(),
        other => return Err(wrong("number", other)),
    };
    let Some((negative, int, frac)) = decimal_parts(&written) else {
        return Err(Fault::Invalid("not a plain decimal number".into()));
    };
    // PostgreSQL's own limits for numeric.
    if int.len() > 131_072 || frac.len() > 16_383 {
        return Err(Fault::OutOfRange("more digits than numeric holds".into()));
    }
    let Some((precision, scale)) = spec else {
        let int = int.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let zero = int == "0" && frac.bytes().all(|b| b == b'0');
        let sign = if negative && !zero { "-" } else { "" };
        return Ok(match frac.is_empty() {
            true => format!("{sign}{int}"),
            false => format!("{sign}{int}.{frac}"),
        });
    };
    let scale = scale as usize;
    // Digits as one integer string, rounded at `scale`.
    let mut digits: Vec<u8> = int.bytes().map(|b| b - b'0').collect();
    let kept = frac.len().min(scale);
    digits.extend(frac.bytes().take(kept).map(|b| b - b'0'));
    digits.extend(std::iter::repeat_n(0, scale - kept));
    if frac.len() > scale && frac.as_bytes()[scale] >= b'5' {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, 1);
                break;
            }
            i -= 1;
            if digits[i] == 9 {
                digits[i] = 0;
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let split = digits.len() - scale;
    let int_digits: String = digits[..split]
        .iter()
        .map(|d| char::from(b'0' + d))
        .collect::<String>()
        .trim_start_matches('0')
        .to_owned();
    if int_digits.len() > (precision - scale as u16) as usize {
        return Err(Fault::OutOfRange(format!(
            "more than {} digits before the point for numeric({precision},{scale})",
            precision - scale as u16
        )));
    }
    let frac_digits: String = digits[split..]
        .iter()
        .map(|d| char::from(b'0' + d))
        .collect();
    let int_digits = if int_digits.is_empty() {
        "0".into()
    } else {
        int_digits
    };
    let zero = int_digits == "0" && frac_digits.bytes().all(|b| b == b'0');
    let sign = if negative && !zero { "-" } else { "" };
    Ok(match scale {
        0 => format!("{sign}{int_digits}"),
        _ => format!("{sign}{int_digits}.{frac_digits}"),
    })
}

fn date(value: &Json) -> Result<Date, Fault> {
    let s = text(value, None)?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let d =
        Date::parse(&s, format).map_err(|_| Fault::Invalid("not a date (YYYY-MM-DD)".into()))?;
    if s.starts_with(['-', '+']) {
        return Err(Fault::Invalid("not a date (YYYY-MM-DD)".into()));
    }
    in_years(d.year())?;
    Ok(d)
}

/// PostgreSQL keeps microseconds; finer digits are cut, as its binary input does.
fn to_micros(nanosecond: u32) -> u32 {
    nanosecond / 1_000 * 1_000
}

fn timestamptz(value: &Json) -> Result<OffsetDateTime, Fault> {
    let s = text(value, None)?;
    let t = OffsetDateTime::parse(&s, &Rfc3339)
        .map_err(|_| Fault::Invalid("not an RFC 3339 timestamp with an offset".into()))?;
    let utc = t
        .checked_to_offset(time::UtcOffset::UTC)
        .ok_or_else(out_of_years)?;
    in_years(utc.year())?;
    utc.replace_nanosecond(to_micros(utc.nanosecond()))
        .map_err(|_| Fault::Invalid("not an RFC 3339 timestamp with an offset".into()))
}

fn out_of_years() -> Fault {
    Fault::OutOfRange("outside the years 1 to 9999".into())
}

/// Years 1 to 9999: what every type here and PostgreSQL agree on (no BC dates, whose text
/// forms differ).
pub fn in_years(year: i32) -> Result<(), Fault> {
    match (1..=9999).contains(&year) {
        true => Ok(()),
        false => Err(out_of_years()),
    }
}

fn timestamp(value: &Json) -> Result<PrimitiveDateTime, Fault> {
    let s = text(value, None)?;
    let with_t = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let with_space = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let invalid = || Fault::Invalid("not a timestamp (YYYY-MM-DDTHH:MM:SS)".into());
    let t = PrimitiveDateTime::parse(&s, with_t)
        .or_else(|_| PrimitiveDateTime::parse(&s, with_space))
        .map_err(|_| invalid())?;
    if s.starts_with(['-', '+']) {
        return Err(invalid());
    }
    in_years(t.year())?;
    t.replace_nanosecond(to_micros(t.nanosecond()))
        .map_err(|_| invalid())
}

/// True if a string or key anywhere in `value` holds U+0000 (which jsonb cannot store).
fn holds_nul(value: &Json) -> bool {
    match value {
        Json::String(s) => s.contains('\0'),
        Json::Array(items) => items.iter().any(holds_nul),
        Json::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Converts a JSON value (never null: the caller handles absence) to the column's type.
pub fn convert(value: &Json, column: ColumnType) -> Result<Value, Fault> {
    Ok(match column {
        ColumnType::Text => Value::Text(text(value, None)?),
        ColumnType::Varchar(n) => Value::Text(text(value, Some(n))?),
        ColumnType::Boolean => match value {
            Json::Bool(b) => Value::Boolean(*b),
            other => return Err(wrong("boolean", other)),
        },
        ColumnType::SmallInt => Value::SmallInt(bounded(whole(value)?, "smallint")?),
        ColumnType::Integer => Value::Integer(bounded(whole(value)?, "integer")?),
        ColumnType::BigInt => Value::BigInt(bounded(whole(value)?, "bigint")?),
        ColumnType::Numeric(spec) => Value::Numeric(numeric(value, spec)?),
        ColumnType::Real => {
            let x = float(value)? as f32;
            if !x.is_finite() {
                return Err(Fault::OutOfRange("beyond real".into()));
            }
            Value::Real(x)
        }
        ColumnType::Double => Value::Double(float(value)?),
        ColumnType::Date => Value::Date(date(value)?),
        ColumnType::Timestamptz => Value::Timestamptz(timestamptz(value)?),
        ColumnType::Timestamp => Value::Timestamp(timestamp(value)?),
        ColumnType::Uuid => Value::Uuid(
            uuid::Uuid::try_parse(&text(value, None)?)
                .map_err(|_| Fault::Invalid("not a UUID".into()))?,
        ),
        ColumnType::Inet => Value::Inet(
            text(value, None)?
                .parse::<IpAddr>()
                .map_err(|_| Fault::Invalid("not an IP address".into()))?,
        ),
        ColumnType::Jsonb => {
            if holds_nul(value) {
                return Err(Fault::NulCharacter);
            }
            Value::Jsonb(value.to_string())
        }
        ColumnType::TextArray => match value {
            Json::Array(items) => Value::TextArray(
                items
                    .iter()
                    .map(|item| text(item, None))
                    .collect::<Result<_, _>>()?,
            ),
            other => return Err(wrong("array of strings", other)),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn to_text(value: Json, column: &str) -> Result<Option<String>, Fault> {
        convert(&value, ColumnType::parse(column).unwrap()).map(|v| v.to_text())
    }

    #[test]
    fn types_parse_as_postgresql_spells_them() {
        for (text, parsed) in [
            ("varchar(32)", ColumnType::Varchar(32)),
            ("Character Varying ( 8 )", ColumnType::Varchar(8)),
            ("numeric(12, 2)", ColumnType::Numeric(Some((12, 2)))),
            ("numeric(5)", ColumnType::Numeric(Some((5, 0)))),
            ("timestamp with time zone", ColumnType::Timestamptz),
            ("double   precision", ColumnType::Double),
            ("text[]", ColumnType::TextArray),
        ] {
            assert_eq!(ColumnType::parse(text), Ok(parsed), "{text}");
            assert_eq!(ColumnType::parse(&parsed.to_string()), Ok(parsed));
        }
        for bad in [
            "varchar",
            "varchar(0)",
            "numeric(2,3)",
            "integer(4)",
            "money",
        ] {
            assert!(ColumnType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_convert_to_their_types_or_fail_with_a_fault() {
        assert_eq!(
            to_text(json!("héllo"), "varchar(5)"),
            Ok(Some("héllo".into()))
        );
        assert_eq!(
            to_text(json!("héllo!"), "varchar(5)"),
            Err(Fault::TooLong { chars: 6, max: 5 })
        );
        assert_eq!(to_text(json!("a\u{0}b"), "text"), Err(Fault::NulCharacter));
        assert_eq!(
            to_text(json!(5), "text"),
            Err(Fault::WrongType {
                expected: "string",
                got: "number"
            })
        );
        assert_eq!(to_text(json!("-42"), "smallint"), Ok(Some("-42".into())));
        assert!(matches!(
            to_text(json!(40000), "smallint"),
            Err(Fault::OutOfRange(_))
        ));
        assert!(matches!(
            to_text(json!(1.5), "integer"),
            Err(Fault::Invalid(_))
        ));
        assert!(matches!(
            to_text(json!("1e3"), "bigint"),
            Err(Fault::Invalid(_))
        ));
        assert_eq!(
            to_text(json!(9_007_199_254_740_993_i64), "bigint"),
            Ok(Some("9007199254740993".into()))
        );
        assert_eq!(to_text(json!(true), "boolean"), Ok(Some("true".into())));
        assert_eq!(
            to_text(json!("2026-12-04"), "date"),
            Ok(Some("2026-12-04".into()))
        );
        assert!(matches!(
            to_text(json!("04/12/2026"), "date"),
            Err(Fault::Invalid(_))
        ));
        assert_eq!(
            to_text(json!("2026-12-04T10:00:00+02:00"), "timestamptz"),
            Ok(Some("2026-12-04T08:00:00Z".into()))
        );
        assert!(matches!(
            to_text(json!("2026-12-04T10:00:00"), "timestamptz"),
            Err(Fault::Invalid(_))
        ));
        assert_eq!(
            to_text(json!("2026-12-04 10:00:00.25"), "timestamp"),
            Ok(Some("2026-12-04 10:00:00.25".into()))
        );
        assert_eq!(
            to_text(json!("6F9619FF-8B86-D011-B42D-00C04FC964FF"), "uuid"),
            Ok(Some("6f9619ff-8b86-d011-b42d-00c04fc964ff".into()))
        );
        assert_eq!(
            to_text(json!("2001:DB8::1"), "inet"),
            Ok(Some("2001:db8::1".into()))
        );
        assert_eq!(
            to_text(json!({"a": [1, "x"]}), "jsonb"),
            Ok(Some(r#"{"a":[1,"x"]}"#.into()))
        );
        assert_eq!(
            to_text(json!(["a", "b"]), "text[]"),
            Ok(Some(r#"["a","b"]"#.into()))
        );
        assert!(to_text(json!(["a", 1]), "text[]").is_err());
        assert_eq!(
            to_text(json!({"k": "back\\u0000slash"}), "jsonb"),
            Ok(Some(r#"{"k":"back\\u0000slash"}"#.into())),
            "a backslash is not a NUL"
        );
        assert_eq!(
            to_text(json!({"k": "a\u{0}"}), "jsonb"),
            Err(Fault::NulCharacter)
        );
        for (late, column) in [
            ("9999-12-31T23:00:00-05:00", "timestamptz"),
            ("0000-01-01T00:00:00Z", "timestamptz"),
            ("-0001-01-01", "date"),
        ] {
            assert!(
                matches!(
                    to_text(json!(late), column),
                    Err(Fault::OutOfRange(_) | Fault::Invalid(_))
                ),
                "{late}"
            );
        }
        assert!(matches!(
            to_text(json!("9".repeat(400)), "double precision"),
            Err(Fault::OutOfRange(_))
        ));
    }

    #[test]
    fn numerics_round_half_away_from_zero_to_their_scale_and_keep_their_precision() {
        for (input, column, want) in [
            (json!("12.345"), "numeric(12,2)", "12.35"),
            (json!("-12.345"), "numeric(12,2)", "-12.35"),
            (json!("99.995"), "numeric(5,2)", "100.00"),
            (json!(12.5), "numeric(12,0)", "13"),
            (json!("-0.001"), "numeric(4,2)", "0.00"),
            (json!(7), "numeric(4,2)", "7.00"),
            (json!("0012.5000"), "numeric", "12.5000"),
            (json!("-0.000"), "numeric", "0.000"),
            (
                json!("123456789012345678901234567890.5"),
                "numeric",
                "123456789012345678901234567890.5",
            ),
        ] {
            assert_eq!(
                to_text(input, column),
                Ok(Some(want.into())),
                "{column} {want}"
            );
        }
        assert!(matches!(
            to_text(json!("999.995"), "numeric(5,2)"),
            Err(Fault::OutOfRange(_))
        ));
        assert!(matches!(
            to_text(json!("1e3"), "numeric"),
            Err(Fault::Invalid(_))
        ));
        assert!(matches!(
            to_text(json!("."), "numeric"),
            Err(Fault::Invalid(_))
        ));
    }
}
