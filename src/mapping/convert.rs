//! The conversion of a JSON value to a column's typed value: what each type accepts, and the
//! fault when a value does not fit.
//!
//! Conversions are strict where a guess could store something else than was sent: a number
//! is never read from a string for an integer column unless it is all digits, a date must be
//! ISO 8601, a timestamp with time zone must carry its offset (RFC 3339). A JSON number keeps
//! its text as sent (serde_json's `arbitrary_precision`): `numeric` and `jsonb` store its every
//! digit, never a trip through `f64`; only `real` and `double precision` round, as their types
//! do.

use std::borrow::Cow;
use std::net::IpAddr;

use serde_json::Value as Json;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use super::column::{ColumnType, Value};
use super::document::{Found, Unreadable};

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

fn wrong(expected: &'static str, got: &Found<'_>) -> Fault {
    Fault::WrongType {
        expected,
        got: got.kind(),
    }
}

/// The text of a string that PostgreSQL can store (no U+0000).
fn string<'v>(value: &'v Found<'_>) -> Result<&'v str, Fault> {
    let s = value.as_str().ok_or_else(|| wrong("string", value))?;
    if s.contains('\0') {
        return Err(Fault::NulCharacter);
    }
    Ok(s)
}

/// How many characters `text` has, if more than `max`; counted only past `max` bytes (a text
/// of no more bytes than the limit has no more characters).
pub(super) fn chars_beyond(text: &str, max: u32) -> Option<usize> {
    if text.len() <= max as usize {
        return None;
    }
    let chars = text.chars().count();
    (chars > max as usize).then_some(chars)
}

/// A string as text of at most `max` characters.
pub(super) fn text(value: &Found<'_>, max: Option<u32>) -> Result<String, Fault> {
    let s = string(value)?;
    if let Some((chars, max)) = max.and_then(|max| Some((chars_beyond(s, max)?, max))) {
        return Err(Fault::TooLong { chars, max });
    }
    Ok(s.to_owned())
}

/// A whole number from a JSON integer, or from a string of ASCII digits with an optional sign.
fn whole(value: &Found<'_>) -> Result<i128, Fault> {
    match value {
        // As `serde_json::Number::as_i64` and `as_u64` read its text.
        Found::Number(n) => n
            .parse::<i64>()
            .map(i128::from)
            .or_else(|_| n.parse::<u64>().map(i128::from))
            .map_err(|_| Fault::Invalid("not a whole number".into())),
        Found::Int(n) => Ok(i128::from(*n)),
        Found::Str(s) => {
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

fn float(value: &Found<'_>) -> Result<f64, Fault> {
    let x = finite_or_not(value)?;
    if !x.is_finite() {
        return Err(Fault::OutOfRange("beyond double precision".into()));
    }
    Ok(x)
}

fn finite_or_not(value: &Found<'_>) -> Result<f64, Fault> {
    match value {
        // A JSON number that no f64 holds (1e400) is beyond the type, not malformed (as
        // `serde_json::Number::as_f64` reads its text).
        Found::Number(n) => n
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| Fault::OutOfRange("beyond double precision".into())),
        Found::Int(n) => Ok(*n as f64),
        Found::Str(s) => decimal_parts(s)
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

/// PostgreSQL's limits for numeric (and so for a jsonb number): digits before the point, and
/// after it.
const NUMERIC_INT_DIGITS: u64 = 131_072;
const NUMERIC_SCALE: u64 = 16_383;
/// The largest written exponent PostgreSQL's numeric text input takes (`NUMERIC_MAX_PRECISION`).
const NUMERIC_TEXT_EXPONENT: u64 = 1_000;

/// A JSON number's text (`-12.5e-3`) in parts: sign, integer digits, fraction digits and the
/// exponent (saturated: beyond any limit either way).
struct JsonNumber<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    exponent: i64,
}

impl<'a> JsonNumber<'a> {
    /// `None` unless `text` is a JSON number (as serde_json kept it).
    fn parse(text: &'a str) -> Option<Self> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], &unsigned[at + 1..]),
            None => (unsigned, "0"),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        let (exp_negative, exp_digits) = match exponent.as_bytes().first()? {
            b'-' => (true, &exponent[1..]),
            b'+' => (false, &exponent[1..]),
            _ => (false, exponent),
        };
        if int.is_empty()
            || !digits(int)
            || !digits(frac)
            || exp_digits.is_empty()
            || !digits(exp_digits)
        {
            return None;
        }
        let magnitude = exp_digits.bytes().fold(0i64, |n, b| {
            n.saturating_mul(10).saturating_add(i64::from(b - b'0'))
        });
        Some(Self {
            negative,
            int,
            frac,
            exponent: if exp_negative { -magnitude } else { magnitude },
        })
    }

    /// Where the point falls in `int` + `frac` once the exponent is applied.
    fn point(&self) -> i64 {
        (self.int.len() as i64).saturating_add(self.exponent)
    }

    /// Digits before the point (leading zeros not counted) and after it (the scale
    /// PostgreSQL's numeric input gives it: `1.50e1` is `15.0`), once the exponent is applied.
    fn shape(&self) -> (u64, u64) {
        let all = || self.int.bytes().chain(self.frac.bytes());
        let leading_zeros = all().take_while(|b| *b == b'0').count() as i64;
        let int_digits = match all().any(|b| b != b'0') {
            true => self.point().saturating_sub(leading_zeros).max(0) as u64,
            false => 0,
        };
        let scale = (self.frac.len() as i64)
            .saturating_sub(self.exponent)
            .max(0) as u64;
        (int_digits, scale)
    }

    /// True if PostgreSQL's numeric (and so jsonb) can hold it.
    fn fits_numeric(&self) -> bool {
        let (int_digits, scale) = self.shape();
        int_digits <= NUMERIC_INT_DIGITS && scale <= NUMERIC_SCALE
    }

    /// True if PostgreSQL's numeric text input (what reads a jsonb number) takes its written
    /// exponent: at most 1000 either way, whatever the digits (`0e5000` is refused).
    fn exponent_readable(&self) -> bool {
        self.exponent.unsigned_abs() <= NUMERIC_TEXT_EXPONENT
    }

    /// True if every digit is zero: the number is zero, whatever its exponent.
    fn is_zero(&self) -> bool {
        self.int.bytes().chain(self.frac.bytes()).all(|b| b == b'0')
    }

    /// The number as a plain decimal: sign, integer digits, fraction digits (call only once
    /// it [fits](Self::fits_numeric): the strings are as long as the digits say).
    fn plain(&self) -> (bool, String, String) {
        if self.is_zero() {
            // `0e99999999999` is 0: its exponent must not size the strings.
            return (
                self.negative,
                "0".to_owned(),
                "0".repeat(self.shape().1 as usize),
            );
        }
        let all: String = [self.int, self.frac].concat();
        let point = self.point();
        let (int, frac) = if point <= 0 {
            (
                "0".to_owned(),
                "0".repeat(point.unsigned_abs() as usize) + &all,
            )
        } else if point as usize >= all.len() {
            (
                all.clone() + &"0".repeat(point as usize - all.len()),
                String::new(),
            )
        } else {
            (
                all[..point as usize].to_owned(),
                all[point as usize..].to_owned(),
            )
        };
        (self.negative, int, frac)
    }
}

/// Compares two plain decimals (`-12.50`, `3`; as [`Value::Numeric`] and integers print, and
/// as Rust prints an `f64`) exactly, digit by digit; `None` if either is not one.
pub fn compare_decimals(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    let (a_negative, a_int, a_frac) = decimal_parts(a)?;
    let (b_negative, b_int, b_frac) = decimal_parts(b)?;
    let zero = |int: &str, frac: &str| int.bytes().chain(frac.bytes()).all(|d| d == b'0');
    let sign = |negative: bool, int: &str, frac: &str| match (zero(int, frac), negative) {
        (true, _) => 0,
        (false, true) => -1,
        (false, false) => 1,
    };
    let (a_sign, b_sign) = (
        sign(a_negative, a_int, a_frac),
        sign(b_negative, b_int, b_frac),
    );
    if a_sign != b_sign || a_sign == 0 {
        return Some(a_sign.cmp(&b_sign));
    }
    // Same sign: compare the magnitudes, then flip for negatives.
    let (a_int, b_int) = (a_int.trim_start_matches('0'), b_int.trim_start_matches('0'));
    let width = a_frac.len().max(b_frac.len());
    let padded = |frac: &str| format!("{frac:0<width$}");
    let magnitude = a_int
        .len()
        .cmp(&b_int.len())
        .then_with(|| a_int.cmp(b_int))
        .then_with(|| padded(a_frac).cmp(&padded(b_frac)));
    Some(match a_sign {
        1 => magnitude,
        _ => magnitude.reverse(),
    })
}

/// True if every number in `value` fits PostgreSQL's numeric, as a jsonb number must.
fn numbers_fit(value: &Json) -> bool {
    match value {
        Json::Number(n) => {
            // A whole number written without point or exponent fits if its digits do.
            let text = n.as_str();
            let digits = text.strip_prefix('-').unwrap_or(text);
            let plain = !digits.is_empty()
                && digits.len() <= NUMERIC_INT_DIGITS as usize
                && digits.bytes().all(|b| b.is_ascii_digit());
            plain
                || JsonNumber::parse(text)
                    .is_some_and(|n| n.fits_numeric() && n.exponent_readable())
        }
        Json::Array(items) => items.iter().all(numbers_fit),
        Json::Object(map) => map.values().all(numbers_fit),
        _ => true,
    }
}

/// A decimal rounded half away from zero to `scale` digits (as PostgreSQL rounds numeric
/// input), checked against `precision`. A JSON number keeps every digit it was sent with,
/// its exponent applied; a string must be a plain decimal.
fn numeric(value: &Found<'_>, spec: Option<(u16, u16)>) -> Result<String, Fault> {
    let too_many = || Fault::OutOfRange("more digits than numeric holds".into());
    let (negative, int, frac) = match value {
        Found::Number(text) => {
            let number = JsonNumber::parse(text)
                .ok_or_else(|| Fault::Invalid("not a plain decimal number".into()))?;
            if !number.fits_numeric() {
                return Err(too_many());
            }
            number.plain()
        }
        Found::Int(n) => (*n < 0, n.unsigned_abs().to_string(), String::new()),
        Found::Str(s) => {
            let Some((negative, int, frac)) = decimal_parts(s) else {
                return Err(Fault::Invalid("not a plain decimal number".into()));
            };
            (negative, int.to_owned(), frac.to_owned())
        }
        other => return Err(wrong("number", other)),
    };
    let (int, frac) = (int.as_str(), frac.as_str());
    // PostgreSQL's own limits for numeric.
    if int.trim_start_matches('0').len() as u64 > NUMERIC_INT_DIGITS
        || frac.len() as u64 > NUMERIC_SCALE
    {
        return Err(too_many());
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

fn date(value: &Found<'_>) -> Result<Date, Fault> {
    let s = string(value)?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let d = Date::parse(s, format).map_err(|_| Fault::Invalid("not a date (YYYY-MM-DD)".into()))?;
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

fn timestamptz(value: &Found<'_>) -> Result<OffsetDateTime, Fault> {
    let s = string(value)?;
    let t = OffsetDateTime::parse(s, &Rfc3339)
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

fn timestamp(value: &Found<'_>) -> Result<PrimitiveDateTime, Fault> {
    let s = string(value)?;
    let with_t = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let with_space = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day] [hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let invalid = || Fault::Invalid("not a timestamp (YYYY-MM-DDTHH:MM:SS)".into());
    let t = PrimitiveDateTime::parse(s, with_t)
        .or_else(|_| PrimitiveDateTime::parse(s, with_space))
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
    convert_found(&Found::from_json(value), column)
}

/// Why a found value has no tree, as a fault.
pub fn unreadable(why: Unreadable) -> Fault {
    Fault::Invalid(why.to_string())
}

/// A JSON value (found in a message, never null) converted to the column's type.
pub fn convert_found(value: &Found<'_>, column: ColumnType) -> Result<Value, Fault> {
    Ok(match column {
        ColumnType::Text => Value::Text(text(value, None)?),
        ColumnType::Varchar(n) => Value::Text(text(value, Some(n))?),
        ColumnType::Boolean => match value {
            Found::Bool(b) => Value::Boolean(*b),
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
            uuid::Uuid::try_parse(string(value)?)
                .map_err(|_| Fault::Invalid("not a UUID".into()))?,
        ),
        ColumnType::Inet => Value::Inet(
            string(value)?
                .parse::<IpAddr>()
                .map_err(|_| Fault::Invalid("not an IP address".into()))?,
        ),
        ColumnType::Jsonb => {
            let tree = value.to_json().map_err(unreadable)?;
            jsonb(tree.as_ref())?
        }
        ColumnType::TextArray => match value {
            Found::Raw(_) | Found::Tree(_) if value.kind() == "array" => {
                let tree = value.to_json().map_err(unreadable)?;
                let mut texts = Vec::new();
                match tree {
                    // Parsed for this column: its strings are moved, not copied.
                    Cow::Owned(Json::Array(items)) => {
                        texts.reserve(items.len());
                        for item in items {
                            texts.push(match item {
                                Json::String(s) if !s.contains('\0') => s,
                                other => text(&Found::from_json(&other), None)?,
                            });
                        }
                    }
                    Cow::Borrowed(Json::Array(items)) => {
                        texts.reserve(items.len());
                        for item in items {
                            texts.push(text(&Found::from_json(item), None)?);
                        }
                    }
                    _ => unreachable!("an array's tree is an array"),
                }
                Value::TextArray(texts)
            }
            other => return Err(wrong("array of strings", other)),
        },
    })
}

/// A tree as a jsonb value: refused if PostgreSQL's jsonb cannot hold it.
pub fn jsonb(value: &Json) -> Result<Value, Fault> {
    if holds_nul(value) {
        return Err(Fault::NulCharacter);
    }
    if !numbers_fit(value) {
        return Err(Fault::OutOfRange(
            "a number with more digits (or a larger written exponent) than jsonb holds".into(),
        ));
    }
    // Numbers as sent, every digit (`arbitrary_precision`); serialized directly rather than
    // through `Display`, which goes by way of a formatter.
    Ok(Value::Jsonb(
        serde_json::to_string(value).expect("a JSON value always serializes"),
    ))
}
