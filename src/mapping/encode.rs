//! Mapped values in PostgreSQL's binary COPY format: each [`ColumnType`]'s wire type, and the
//! encoding of each [`Value`]. Most types use tokio-postgres's own encoders; `numeric`, `uuid`
//! and `jsonb` are written here (their encoders sit behind features that would pull in more
//! crates, and each is a few lines of a documented format).

use std::error::Error;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::{ColumnType, Value};

/// The wire type a column of `column_type` is copied as.
pub fn wire_type(column_type: ColumnType) -> Type {
    match column_type {
        ColumnType::Text => Type::TEXT,
        ColumnType::Varchar(_) => Type::VARCHAR,
        ColumnType::Boolean => Type::BOOL,
        ColumnType::SmallInt => Type::INT2,
        ColumnType::Integer => Type::INT4,
        ColumnType::BigInt => Type::INT8,
        ColumnType::Numeric(_) => Type::NUMERIC,
        ColumnType::Real => Type::FLOAT4,
        ColumnType::Double => Type::FLOAT8,
        ColumnType::Date => Type::DATE,
        ColumnType::Timestamptz => Type::TIMESTAMPTZ,
        ColumnType::Timestamp => Type::TIMESTAMP,
        ColumnType::Uuid => Type::UUID,
        ColumnType::Inet => Type::INET,
        ColumnType::Jsonb => Type::JSONB,
        ColumnType::TextArray => Type::TEXT_ARRAY,
    }
}

/// `numeric`'s binary form: digit count, weight (of the first base-10000 digit), sign, display
/// scale, then the base-10000 digits, most significant first, without leading or trailing
/// zero digits. `text` is a plain decimal as [`Value::Numeric`] holds it (`-12.50`).
fn numeric(text: &str, out: &mut BytesMut) -> Result<(), Box<dyn Error + Sync + Send>> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err("a numeric value that is not a plain decimal".into());
    }
    let scale = u16::try_from(frac.len()).map_err(|_| "numeric scale too large")?;
    // Pad the integer part on the left and the fraction on the right to whole groups of 4.
    let int = int.trim_start_matches('0');
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let digits: Vec<u8> = std::iter::repeat_n(b'0', int_pad)
        .chain(int.bytes())
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad))
        .map(|b| b - b'0')
        .collect();
    let mut groups: Vec<i16> = digits
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |n, d| n * 10 + i16::from(*d)))
        .collect();
    let int_groups = (int.len() + int_pad) / 4;
    let mut weight = int_groups as i32 - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= leading as i32;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let count = i16::try_from(groups.len()).map_err(|_| "numeric value too long")?;
    let weight = i16::try_from(weight).map_err(|_| "numeric value too large")?;
    out.put_i16(count);
    out.put_i16(weight);
    out.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0x0000
    });
    out.put_u16(scale);
    for g in groups {
        out.put_i16(g);
    }
    Ok(())
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Value::Null => return Ok(IsNull::Yes),
            Value::Text(s) => return s.to_sql(ty, out),
            Value::Boolean(b) => return b.to_sql(ty, out),
            Value::SmallInt(n) => return n.to_sql(ty, out),
            Value::Integer(n) => return n.to_sql(ty, out),
            Value::BigInt(n) => return n.to_sql(ty, out),
            Value::Real(x) => return x.to_sql(ty, out),
            Value::Double(x) => return x.to_sql(ty, out),
            Value::Date(d) => return d.to_sql(ty, out),
            Value::Timestamptz(t) => return t.to_sql(ty, out),
            Value::Timestamp(t) => return t.to_sql(ty, out),
            Value::Inet(ip) => return ip.to_sql(ty, out),
            Value::TextArray(items) => return items.to_sql(ty, out),
            Value::Numeric(text) => numeric(text, out)?,
            Value::Uuid(u) => out.put_slice(u.as_bytes()),
            Value::Jsonb(text) => {
                // jsonb's binary form: a version byte (1), then the JSON text.
                out.put_u8(1);
                out.put_slice(text.as_bytes());
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::TEXT,
            Type::VARCHAR,
            Type::BOOL,
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::NUMERIC,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::DATE,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMP,
            Type::UUID,
            Type::INET,
            Type::JSONB,
            Type::TEXT_ARRAY,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(text: &str) -> Vec<i16> {
        let mut out = BytesMut::new();
        numeric(text, &mut out).unwrap();
        out.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numerics_are_base_10000_digits_with_weight_sign_and_scale() {
        // count, weight, sign, scale, digits...
        assert_eq!(encoded("0"), [0, 0, 0, 0]);
        assert_eq!(encoded("-0.00"), [0, 0, 0, 2]);
        assert_eq!(encoded("12345.678"), [3, 1, 0, 3, 1, 2345, 6780]);
        assert_eq!(encoded("-0.0001"), [1, -1, 0x4000, 4, 1]);
        assert_eq!(encoded("10000"), [1, 1, 0, 0, 1]);
        assert_eq!(encoded("0.5"), [1, -1, 0, 1, 5000]);
    }
}
