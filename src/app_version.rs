//! `app_version` strings ("2.3.0", "0.96", "3.7") turned into one `integer` column value.
//!
//! Encoding: `major * 1_000_000 + minor * 1_000 + patch`, with missing parts read as 0, so "2.3"
//! and "2.3.0" are the same version (and the same integer). Minor and patch are at most 999 and
//! major at most 2146, so every encoded value fits PostgreSQL's `integer` (the largest is
//! 2_146_999_999 < 2^31 - 1). Within those bounds the map is injective (no two different versions
//! share a value) and strictly increasing in version order, so `ORDER BY app_version` is version
//! order. Parts are decimal digits only; leading zeros are read numerically ("1.01" is 1.1.0).
//! `sqs2pg.app_version_text(integer)` in the database turns a value back into "M.m.p".

use std::fmt;

/// Largest accepted major part: `2147 * 1_000_000` plus a minor/patch of up to 999_999 would
/// overflow `integer`, so 2146 is the last major that always fits.
pub const MAX_MAJOR: u32 = 2146;
/// Largest accepted minor or patch part (three decimal digits in the encoding).
pub const MAX_MINOR_PATCH: u32 = 999;

/// Why an `app_version` string could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppVersionError {
    /// Not one to three dot-separated unsigned decimal integers.
    Invalid,
    /// Well formed, but a part is above [`MAX_MAJOR`] / [`MAX_MINOR_PATCH`].
    OutOfRange,
}

/// A parsed, in-range application version; only [`AppVersion::parse`] creates one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppVersion {
    major: u32,
    minor: u32,
    patch: u32,
}

impl AppVersion {
    /// Parses "M", "M.m" or "M.m.p" (decimal digits only, no signs, spaces or empty parts).
    pub fn parse(text: &str) -> Result<Self, AppVersionError> {
        let mut parts = [0u32; 3];
        let mut out_of_range = false;
        for (count, part) in text.split('.').enumerate() {
            if count == 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(AppVersionError::Invalid);
            }
            // All digits: the only way `parse` fails now is overflow, which is out of range.
            match part.parse::<u32>() {
                Ok(value) => parts[count] = value,
                Err(_) => out_of_range = true,
            }
        }
        let [major, minor, patch] = parts;
        if out_of_range || major > MAX_MAJOR || minor > MAX_MINOR_PATCH || patch > MAX_MINOR_PATCH {
            return Err(AppVersionError::OutOfRange);
        }
        Ok(Self {
            major,
            minor,
            patch,
        })
    }

    /// The column value: `major * 1_000_000 + minor * 1_000 + patch`.
    pub fn encode(self) -> i32 {
        // Cannot overflow: bounded by MAX_MAJOR / MAX_MINOR_PATCH in `parse`.
        (self.major * 1_000_000 + self.minor * 1_000 + self.patch) as i32
    }

    /// The inverse of [`AppVersion::encode`] (the SQL function `sqs2pg.app_version_text` is the
    /// one analysts use; this one checks the encoding in tests).
    #[cfg(test)]
    pub fn decode(value: i32) -> Option<Self> {
        let value = u32::try_from(value).ok()?;
        let version = Self {
            major: value / 1_000_000,
            minor: value / 1_000 % 1_000,
            patch: value % 1_000,
        };
        (version.major <= MAX_MAJOR).then_some(version)
    }
}

impl fmt::Display for AppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl fmt::Debug for AppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppVersion({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sample_shapes_encode() {
        assert_eq!(AppVersion::parse("2.3.0").unwrap().encode(), 2_003_000);
        assert_eq!(AppVersion::parse("0.96").unwrap().encode(), 96_000);
        assert_eq!(AppVersion::parse("3.7").unwrap().encode(), 3_007_000);
        assert_eq!(AppVersion::parse("5").unwrap().encode(), 5_000_000);
        assert_eq!(
            AppVersion::parse("2.3").unwrap(),
            AppVersion::parse("2.3.0").unwrap()
        );
        assert_eq!(
            AppVersion::parse("1.01").unwrap(),
            AppVersion::parse("1.1").unwrap()
        );
    }

    #[test]
    fn malformed_shapes_are_invalid() {
        for bad in [
            "", ".", "1.", ".1", "1..2", "1.2.3.4", "v1.2", "1.2-beta", " 1.2", "1.2 ", "-1", "+1",
            "1,2", "1.2.x", "١.٢", "0x10", "1e3",
        ] {
            assert_eq!(
                AppVersion::parse(bad),
                Err(AppVersionError::Invalid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bounds_are_exact() {
        assert_eq!(
            AppVersion::parse("2146.999.999").unwrap().encode(),
            2_146_999_999
        );
        for over in [
            "2147",
            "1.1000",
            "1.0.1000",
            "99999999999999999999",
            "1.4294967296",
        ] {
            assert_eq!(
                AppVersion::parse(over),
                Err(AppVersionError::OutOfRange),
                "{over}"
            );
        }
    }

    fn version() -> impl Strategy<Value = (u32, u32, u32)> {
        (0..=MAX_MAJOR, 0..=MAX_MINOR_PATCH, 0..=MAX_MINOR_PATCH)
    }

    proptest! {
        #[test]
        fn encoding_is_injective_and_ordered(a in version(), b in version()) {
            let va = AppVersion::parse(&format!("{}.{}.{}", a.0, a.1, a.2)).unwrap();
            let vb = AppVersion::parse(&format!("{}.{}.{}", b.0, b.1, b.2)).unwrap();
            // Same order as the tuples (version order), equal only when the versions are equal.
            prop_assert_eq!(a.cmp(&b), va.encode().cmp(&vb.encode()));
        }

        #[test]
        fn decode_inverts_encode(a in version()) {
            let v = AppVersion::parse(&format!("{}.{}.{}", a.0, a.1, a.2)).unwrap();
            prop_assert_eq!(AppVersion::decode(v.encode()), Some(v));
            prop_assert_eq!(v.to_string(), format!("{}.{}.{}", a.0, a.1, a.2));
        }

        #[test]
        fn short_forms_equal_zero_padded(major in 0..=MAX_MAJOR, minor in 0..=MAX_MINOR_PATCH) {
            let short = AppVersion::parse(&format!("{major}.{minor}")).unwrap();
            let long = AppVersion::parse(&format!("{major}.{minor}.0")).unwrap();
            prop_assert_eq!(short.encode(), long.encode());
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,24}") {
            let _ = AppVersion::parse(&s);
        }
    }
}
