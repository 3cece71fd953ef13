//! The conversion of a JSON value to a column's typed value: what each type accepts, and the
//! fault when a value does not fit.
//!
//! Conversions are strict where a guess could store something else than was sent: a number
//! is never read from a string for an integer column unless it is all digits, a date must be
//! ISO 8601, a timestamp with time zone must carry its offset (RFC 3339). JSON numbers arrive
//! through `f64` for `numeric`, `real` and `double precision` (17 significant digits); a
//! `numeric` sent as a string keeps every digit.

use std::net::IpAddr;

use serde_json::Value as Json;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use super::column::{ColumnType, Value};

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
