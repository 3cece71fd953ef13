//! The login pipeline as a message kind (`kind::MessageKind`): the analysts' seven columns of
//! `public.user_logins`, and each [`MaskedLogin`] encoded for them. The built-in kind when no
//! mapping is given; `examples/mappings/login.toml` spells the same table out as a mapping.

use tokio_postgres::types::{ToSql, Type};

use super::{transform, MaskedLogin, Masker};
use crate::kind::{self, CopyRows, Message, MessageKind, Transformed};

/// The table's columns, in the order rows are encoded.
pub const COLUMNS: [&str; 7] = [
    "user_id",
    "device_type",
    "masked_ip",
    "masked_device_id",
    "locale",
    "app_version",
    "create_date",
];

/// Their wire types.
const TYPES: [Type; 7] = [
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::VARCHAR,
    Type::INT4,
    Type::DATE,
];

/// Logins, masked by one [`Masker`].
pub struct LoginKind {
    masker: Masker,
}

impl LoginKind {
    pub fn new(masker: Masker) -> Self {
        Self { masker }
    }
}

impl From<super::Rejection> for kind::Rejection {
    fn from(r: super::Rejection) -> Self {
        Self {
            reason: r.reason.to_string(),
            detail: r.detail,
        }
    }
}

impl MaskedLogin {
    /// The row in COPY's binary form, for the seven [`COLUMNS`].
    pub fn encode(&self) -> CopyRows {
        let (ip, device_id) = (self.masked_ip.as_str(), self.masked_device_id.as_str());
        // Field count, seven lengths, the text, 4 bytes of integer and 4 of date.
        let text = self.user_id.len()
            + self.device_type.len()
            + ip.len()
            + device_id.len()
            + self.locale.as_ref().map_or(0, String::len);
        let mut rows = CopyRows::with_capacity(2 + 7 * 4 + text + 8);
        rows.push(
            &[
                &self.user_id as &(dyn ToSql + Sync),
                &self.device_type,
                &ip,
                &device_id,
                &self.locale,
                &self.app_version,
                &self.create_date,
            ],
            &TYPES,
        )
        .expect("strings, an int4 and a date always encode as varchar, int4 and date");
        rows
    }
}

impl MessageKind for LoginKind {
    fn name(&self) -> &str {
        "login"
    }

    fn writes(&self) -> Vec<crate::kind::TableWrite> {
        vec![crate::kind::TableWrite {
            columns: COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        }]
    }

    fn transform(&self, message: &Message<'_>) -> Transformed {
        // The body size is checked by the pipeline before any kind sees a body.
        let t = transform(
            &self.masker,
            usize::MAX,
            message.body,
            message.sent_timestamp_ms,
        );
        Transformed {
            outcome: t
                .outcome
                .map(|login| login.encode())
                .map_err(kind::Rejection::from),
            unknown_fields: t.unknown_fields,
            new_unknown: Vec::new(),
        }
    }
}
