//! Opening the login's tokens for key holders ([`Unmasker`], `sqs2pg unmask`), through the two
//! columns' [`ColumnMask`]s.

use std::fmt;
use std::net::IpAddr;

use super::{DEVICE_ID, IP};
use crate::keys::{KeyRing, MaskKey};
use crate::mask::{ColumnMask, MaskMode, UnmaskError};

/// A value recovered from a `siv` token.
#[derive(PartialEq, Eq)]
pub enum Unmasked {
    Ip(IpAddr),
    DeviceId(String),
}

impl Unmasked {
    /// The value alone, as text.
    pub fn value(&self) -> String {
        match self {
            Unmasked::Ip(ip) => ip.to_string(),
            Unmasked::DeviceId(id) => id.clone(),
        }
    }
}

impl fmt::Display for Unmasked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmasked::Ip(ip) => write!(f, "ip {ip}"),
            Unmasked::DeviceId(id) => write!(f, "device_id {id}"),
        }
    }
}

impl fmt::Debug for Unmasked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Personal data: not even in debug output.
        f.write_str("Unmasked(..)")
    }
}

/// Recovers values from `siv` tokens (and, told the mode, from `ipcrypt` addresses), for key
/// holders (`sqs2pg unmask`), under one key or every key of a ring: a `siv` token names its key.
pub struct Unmasker {
    keys: Vec<KeyUnmasker>,
    /// The key for tokens that are bare addresses (they carry no key id).
    address_key: usize,
    /// The mode `ip` was masked with, for tokens that are bare addresses.
    ip_mode: MaskMode,
}

/// One key's masks for opening tokens: `siv` for both fields, and the two ipcrypt modes for
/// addresses (which carry no mode).
struct KeyUnmasker {
    ip: ColumnMask,
    device_id: ColumnMask,
    ipcrypt: ColumnMask,
    ipcrypt_pfx: ColumnMask,
}

impl KeyUnmasker {
    fn new(key: &MaskKey) -> Self {
        Self {
            ip: ColumnMask::new(key, MaskMode::Siv, IP),
            device_id: ColumnMask::new(key, MaskMode::Siv, DEVICE_ID),
            ipcrypt: ColumnMask::new(key, MaskMode::Ipcrypt, IP),
            ipcrypt_pfx: ColumnMask::new(key, MaskMode::IpcryptPfx, IP),
        }
    }

    fn key_id(&self) -> &str {
        self.ip.key_id()
    }
}

impl Unmasker {
    pub fn new(key: &MaskKey) -> Self {
        Self::with_ip_mode(key, MaskMode::Siv)
    }

    /// Like [`Unmasker::new`]; addresses (tokens of the ipcrypt modes) are decrypted with
    /// `ip_mode`.
    pub fn with_ip_mode(key: &MaskKey, ip_mode: MaskMode) -> Self {
        Self {
            keys: vec![KeyUnmasker::new(key)],
            address_key: 0,
            ip_mode,
        }
    }

    /// Every key of `ring`; bare addresses are decrypted under `address_key` (the ring's active
    /// key if `None`). `None` back if the ring has no such key.
    pub fn for_ring(ring: &KeyRing, ip_mode: MaskMode, address_key: Option<&str>) -> Option<Self> {
        let wanted = address_key.unwrap_or(ring.active_id());
        let keys: Vec<KeyUnmasker> = ring
            .keys()
            .iter()
            .map(|k| KeyUnmasker::new(&k.key))
            .collect();
        let address_key = keys.iter().position(|k| k.key_id() == wanted)?;
        Some(Self {
            keys,
            address_key,
            ip_mode,
        })
    }

    /// The id of the key bare addresses are decrypted under (with one key: that key's id).
    pub fn key_id(&self) -> &str {
        self.keys[self.address_key].key_id()
    }

    /// The value behind a token, and which field it belongs to.
    pub fn unmask(&self, token: &str) -> Result<Unmasked, UnmaskError> {
        let address = |text: String| {
            text.parse::<IpAddr>()
                .map(Unmasked::Ip)
                .map_err(|_| UnmaskError::Rejected)
        };
        if token.trim().parse::<IpAddr>().is_ok() {
            let key = &self.keys[self.address_key];
            return match self.ip_mode {
                MaskMode::Ipcrypt => address(key.ipcrypt.unmask(token, true)?),
                MaskMode::IpcryptPfx => address(key.ipcrypt_pfx.unmask(token, true)?),
                MaskMode::Hmac | MaskMode::Siv => Err(UnmaskError::AddressNeedsMode),
            };
        }
        // `KEYID.MODE.VALUE`: the key it names first, then that key's masks open it.
        let parts: Vec<&str> = token.trim().splitn(3, '.').collect();
        let [key_id, _, _] = parts[..] else {
            return Err(UnmaskError::NotAToken);
        };
        let Some(key) = self.keys.iter().find(|k| k.key_id() == key_id) else {
            let given: Vec<&str> = self.keys.iter().map(KeyUnmasker::key_id).collect();
            return Err(UnmaskError::OtherKey {
                token: key_id.to_owned(),
                given: given.join(", "),
            });
        };
        // An `ip` token, or else a `device_id` one (each opens only under its own scope).
        match key.ip.unmask(token, true) {
            Err(UnmaskError::Rejected) => {
                key.device_id.unmask(token, false).map(Unmasked::DeviceId)
            }
            opened => address(opened?),
        }
    }
}
