//! Why a message was rejected: stable reason codes (`missing_field:ip`, `not_json`, ...) that the
//! summary, the reject table and (later) metrics count by. A rejection carries field names and
//! positions only, never a value from the message.

use std::fmt;

/// The six fields of a login body, in the order they are checked and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    UserId,
    AppVersion,
    DeviceType,
    Ip,
    Locale,
    DeviceId,
}

impl Field {
    /// Every field, in check order.
    pub const ALL: [Field; 6] = [
        Field::UserId,
        Field::AppVersion,
        Field::DeviceType,
        Field::Ip,
        Field::Locale,
        Field::DeviceId,
    ];

    /// The JSON key (and the name used in reason codes).
    pub fn name(self) -> &'static str {
        match self {
            Field::UserId => "user_id",
            Field::AppVersion => "app_version",
            Field::DeviceType => "device_type",
            Field::Ip => "ip",
            Field::Locale => "locale",
            Field::DeviceId => "device_id",
        }
    }

    /// The field for a JSON key, if the key is one of ours.
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The kind of a JSON value, for `wrong_type` details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

impl JsonKind {
    /// Lower-case JSON type name.
    pub fn name(self) -> &'static str {
        match self {
            JsonKind::Null => "null",
            JsonKind::Bool => "boolean",
            JsonKind::Number => "number",
            JsonKind::String => "string",
            JsonKind::Array => "array",
            JsonKind::Object => "object",
        }
    }
}

/// The reason a message is quarantined instead of loaded. `Display` gives the stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The body is longer than the configured maximum.
    BodyTooLarge,
    /// The body is not (complete, well-formed) JSON.
    NotJson,
    /// Valid JSON, but not an object.
    NotAnObject,
    /// The object names one of our fields twice.
    DuplicateField(Field),
    /// A required field is absent.
    MissingField(Field),
    /// A field that must be a string is null.
    NullField(Field),
    /// A field has a JSON type other than string (or null for `locale`).
    WrongType(Field),
    /// A string is longer (in characters) than its column allows.
    TooLong(Field),
    /// A string contains U+0000, which PostgreSQL text cannot store.
    NulCharacter(Field),
    /// `ip` is not an IPv4 or IPv6 address.
    InvalidIp,
    /// `app_version` is not one to three dot-separated unsigned decimal integers.
    InvalidAppVersion,
    /// `app_version` is well formed but a part exceeds the encoding's bounds.
    AppVersionOutOfRange,
    /// SQS's `SentTimestamp` is beyond the dates PostgreSQL and we can represent.
    InvalidSentTimestamp,
    /// A `\uXXXX` escape is a lone UTF-16 surrogate, which no string can hold.
    InvalidUtf16Escape,
    /// The message was received more often than the configured limit: it keeps failing
    /// somewhere, so it is kept aside instead of looping forever.
    PoisonReceiveCount,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::BodyTooLarge => f.write_str("body_too_large"),
            Reason::NotJson => f.write_str("not_json"),
            Reason::NotAnObject => f.write_str("not_an_object"),
            Reason::DuplicateField(x) => write!(f, "duplicate_field:{}", x.name()),
            Reason::MissingField(x) => write!(f, "missing_field:{}", x.name()),
            Reason::NullField(x) => write!(f, "null_field:{}", x.name()),
            Reason::WrongType(x) => write!(f, "wrong_type:{}", x.name()),
            Reason::TooLong(x) => write!(f, "too_long:{}", x.name()),
            Reason::NulCharacter(x) => write!(f, "nul_character:{}", x.name()),
            Reason::InvalidIp => f.write_str("invalid_ip"),
            Reason::InvalidAppVersion => f.write_str("invalid_app_version"),
            Reason::AppVersionOutOfRange => f.write_str("app_version_out_of_range"),
            Reason::InvalidSentTimestamp => f.write_str("invalid_sent_timestamp"),
            Reason::InvalidUtf16Escape => f.write_str("invalid_utf16_escape"),
            Reason::PoisonReceiveCount => f.write_str("poison:receive_count"),
        }
    }
}

/// A reason plus an optional detail. The detail names types, lengths and positions, never a
/// value taken from the message, so it is safe to log and to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: Option<String>,
}

impl Rejection {
    /// A rejection without detail.
    pub fn new(reason: Reason) -> Self {
        Self {
            reason,
            detail: None,
        }
    }

    /// A rejection with a value-free detail.
    pub fn with_detail(reason: Reason, detail: String) -> Self {
        Self {
            reason,
            detail: Some(detail),
        }
    }
}
