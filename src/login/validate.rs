//! From wire shape to [`ValidLogin`]: every field checked against the analysts' column limits,
//! `app_version` encoded, `create_date` taken from SQS's `SentTimestamp`.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use time::{Date, OffsetDateTime};

use super::reject::{Field, JsonKind, Reason, Rejection};
use super::wire::{LoginEvent, Scalar};
use crate::app_version::{AppVersion, AppVersionError};

/// Column limits of `public.user_logins`, in characters (PostgreSQL's `varchar(n)` counts
/// characters, not bytes, so a multibyte string at the limit fits).
pub const USER_ID_MAX_CHARS: usize = 128;
/// `device_type varchar(32)`.
pub const DEVICE_TYPE_MAX_CHARS: usize = 32;
/// `locale varchar(32)`.
pub const LOCALE_MAX_CHARS: usize = 32;
/// No column holds the raw device id (it is masked), but an unbounded one is not a device id.
pub const DEVICE_ID_MAX_CHARS: usize = 256;
/// The longest IPv6 text with an embedded IPv4 part is 45 characters.
const IP_MAX_CHARS: usize = 45;

/// A raw IP address. Personal data: its `Debug` prints nothing of it.
#[derive(Clone, Copy)]
pub struct PersonalIp(pub(super) IpAddr);

impl fmt::Debug for PersonalIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonalIp(<redacted>)")
    }
}

/// A raw device id. Personal data: its `Debug` prints nothing of it.
#[derive(Clone)]
pub struct DeviceId(pub(super) String);

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceId(<redacted>)")
    }
}

/// A login whose every field has been checked. Only [`validate`] makes one, and it still holds
/// personal data: it must be masked (`ValidLogin::mask`) before the loader will take it.
#[derive(Debug, Clone)]
pub struct ValidLogin {
    pub(super) user_id: String,
    pub(super) device_type: String,
    pub(super) ip: PersonalIp,
    pub(super) device_id: DeviceId,
    pub(super) locale: Option<String>,
    pub(super) app_version: AppVersion,
    pub(super) create_date: Date,
}

/// Checks a parsed body. `sent_timestamp` is SQS's `SentTimestamp` attribute.
pub fn validate(mut event: LoginEvent<'_>, sent_timestamp: i64) -> Result<ValidLogin, Rejection> {
    if let Some(field) = event.duplicate {
        return Err(Rejection::with_detail(
            Reason::DuplicateField(field),
            "the field is given more than once".into(),
        ));
    }
    // Pull every field first so that a body missing several fields reports the first in order.
    let user_id = required(&mut event, Field::UserId)?;
    let app_version = required(&mut event, Field::AppVersion)?;
    let device_type = required(&mut event, Field::DeviceType)?;
    let ip = required(&mut event, Field::Ip)?;
    let locale = optional(&mut event, Field::Locale)?;
    let device_id = required(&mut event, Field::DeviceId)?;

    let user_id = bounded(Field::UserId, user_id, USER_ID_MAX_CHARS)?;
    let app_version = bounded(Field::AppVersion, app_version, usize::MAX)?;
    let device_type = bounded(Field::DeviceType, device_type, DEVICE_TYPE_MAX_CHARS)?;
    let ip = bounded(Field::Ip, ip, IP_MAX_CHARS)?;
    let locale = locale
        .map(|l| bounded(Field::Locale, l, LOCALE_MAX_CHARS))
        .transpose()?;
    let device_id = bounded(Field::DeviceId, device_id, DEVICE_ID_MAX_CHARS)?;

    let app_version = AppVersion::parse(&app_version).map_err(|e| match e {
        AppVersionError::Invalid => Rejection::with_detail(
            Reason::InvalidAppVersion,
            "not one to three dot-separated whole numbers".into(),
        ),
        AppVersionError::OutOfRange => Rejection::with_detail(
            Reason::AppVersionOutOfRange,
            "a part beyond the version encoding's bounds".into(),
        ),
    })?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| Rejection::with_detail(Reason::InvalidIp, "not an IP address".into()))?;
    let create_date = sent_date(sent_timestamp)?;

    Ok(ValidLogin {
        user_id: user_id.into_owned(),
        device_type: device_type.into_owned(),
        ip: PersonalIp(ip),
        device_id: DeviceId(device_id.into_owned()),
        locale: locale.map(Cow::into_owned),
        app_version,
        create_date,
    })
}

pub use crate::kind::sent_millis;

/// The UTC day of a `SentTimestamp` (see [`sent_millis`]).
fn sent_date(ts: i64) -> Result<Date, Rejection> {
    let nanos = sent_millis(ts) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(|t| t.date())
        .map_err(|_| {
            Rejection::with_detail(
                Reason::InvalidSentTimestamp,
                "outside the years 1 to 9999".into(),
            )
        })
}

fn required<'a>(event: &mut LoginEvent<'a>, field: Field) -> Result<Cow<'a, str>, Rejection> {
    match event.take(field) {
        None => Err(Rejection::new(Reason::MissingField(field))),
        Some(Scalar::Str(s)) => Ok(s),
        Some(Scalar::NotString(JsonKind::Null)) => Err(Rejection::new(Reason::NullField(field))),
        Some(Scalar::NotString(kind)) => Err(wrong_type(field, kind)),
    }
}

/// `locale` may be null (the sample has 29 such), but not absent and not another type.
fn optional<'a>(
    event: &mut LoginEvent<'a>,
    field: Field,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    match event.take(field) {
        None => Err(Rejection::new(Reason::MissingField(field))),
        Some(Scalar::Str(s)) => Ok(Some(s)),
        Some(Scalar::NotString(JsonKind::Null)) => Ok(None),
        Some(Scalar::NotString(kind)) => Err(wrong_type(field, kind)),
    }
}

fn wrong_type(field: Field, kind: JsonKind) -> Rejection {
    Rejection::with_detail(
        Reason::WrongType(field),
        format!("expected string, got {}", kind.name()),
    )
}

fn bounded(field: Field, s: Cow<'_, str>, max_chars: usize) -> Result<Cow<'_, str>, Rejection> {
    if s.contains('\0') {
        return Err(Rejection::with_detail(
            Reason::NulCharacter(field),
            "U+0000 in the text".into(),
        ));
    }
    // Bytes bound characters from above, so most values skip the character count.
    if s.len() > max_chars {
        let chars = s.chars().count();
        if chars > max_chars {
            return Err(Rejection::with_detail(
                Reason::TooLong(field),
                format!("{chars} characters, limit {max_chars}"),
            ));
        }
    }
    Ok(s)
}
