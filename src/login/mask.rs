//! Masking of the login's `ip` and `device_id` ([`Masker`]): the two columns' masks, each a
//! [`ColumnMask`] under its field's name as scope, with the mode chosen per field
//! ([`MaskModes`]). The token code, the modes and the key derivation are `crate::mask`'s; this
//! module only says which two columns the login has (the built-in mapping masks them under the
//! same scopes). Opening tokens for key holders: [`Unmasker`].

use std::fmt;
use std::net::IpAddr;

use crate::keys::MaskKey;
use crate::mask::{ColumnMask, MaskMode, MaskedToken, TooLongToEncrypt};

mod unmask;
pub use unmask::{Unmasked, Unmasker};

/// The mode of each masked field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaskModes {
    pub ip: MaskMode,
    pub device_id: MaskMode,
}

/// The scopes of the login's two masked fields: each is its column's subkey name
/// (`sqs2pg/v1/{mode}/{scope}`) and its `siv` tokens' associated data.
pub(crate) const IP: &str = "ip";
pub(crate) const DEVICE_ID: &str = "device_id";

/// Turns the login's personal values into tokens under one key. Cheap to clone and share
/// between tasks.
#[derive(Clone)]
pub struct Masker {
    ip: ColumnMask,
    device_id: ColumnMask,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// Derives the per-field subkeys and the key id from the operator's key; `hmac` for both.
    pub fn new(key: &MaskKey) -> Self {
        Self::with_modes(key, MaskModes::default())
    }

    /// Like [`Masker::new`], with the given mode per field. The ipcrypt modes are for `ip` only
    /// (configuration refuses them for `device_id`; here that is a programming error).
    pub fn with_modes(key: &MaskKey, modes: MaskModes) -> Self {
        assert!(
            !modes.device_id.is_ip_only(),
            "ipcrypt modes are for ip only"
        );
        Self {
            ip: ColumnMask::new(key, modes.ip, IP),
            device_id: ColumnMask::new(key, modes.device_id, DEVICE_ID),
        }
    }

    /// The short, public identifier of the key (8 base64url characters).
    pub fn key_id(&self) -> &str {
        self.ip.key_id()
    }

    /// Masks an IP address after canonicalising it (see `crate::mask`).
    pub fn mask_ip(&self, ip: IpAddr) -> MaskedToken {
        self.ip.mask_ip(ip)
    }

    /// Masks a device id exactly as sent (no normalisation: ids are opaque strings). Fails only
    /// in `siv` mode, for an id longer than [`crate::mask::SIV_MAX_VALUE_BYTES`].
    pub fn mask_device_id(&self, device_id: &str) -> Result<MaskedToken, TooLongToEncrypt> {
        self.device_id.mask_bytes(device_id.as_bytes())
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod vectors;
