//! Opening tokens for key holders ([`Unmasker`], `sqs2pg unmask`) and moving a token to
//! another key ([`rekey_token`]).

use std::fmt;
use std::net::IpAddr;

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::*;

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

/// Why a token could not be unmasked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnmaskError {
    #[error("not a sqs2pg token (KEYID.MODE.VALUE)")]
    NotAToken,
    #[error("written under key {token}, which is not among the keys given ({given})")]
    OtherKey { token: String, given: String },
    #[error("an hmac token is one-way: the value cannot be recovered by anyone, key holders included; to check a guess, mask the known value under the same key and compare")]
    OneWay,
    #[error("unknown mode {0:?}")]
    UnknownMode(String),
    #[error("does not open under this key (damaged, or made for another purpose)")]
    Rejected,
    #[error("an address as token comes from an ipcrypt mode: say which with --ip-mask ipcrypt or --ip-mask ipcrypt-pfx")]
    AddressNeedsMode,
}

/// Re-encrypts a `siv` token of `field`'s column under another key (for `sqs2pg rekey`): same
/// field, same value.
pub fn rekey_token(
    from: &Unmasker,
    to: &Masker,
    token: &str,
    field: crate::login::Field,
) -> Result<MaskedToken, UnmaskError> {
    match (from.unmask(token)?, field) {
        (Unmasked::Ip(ip), crate::login::Field::Ip) => Ok(to.mask_ip(ip)),
        (Unmasked::DeviceId(id), crate::login::Field::DeviceId) => {
            to.mask_device_id(&id).map_err(|_| UnmaskError::Rejected)
        }
        // A token of the other field, copied into this column: refused.
        _ => Err(UnmaskError::Rejected),
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

/// One key's subkeys for opening tokens.
struct KeyUnmasker {
    key_id: String,
    ip: Zeroizing<[u8; 64]>,
    device_id: Zeroizing<[u8; 64]>,
    ipcrypt: (ipcrypt_rs::Ipcrypt, ipcrypt_rs::IpcryptPfx),
}

impl KeyUnmasker {
    fn new(key: &MaskKey) -> Self {
        let mut ip = Zeroizing::new([0u8; 64]);
        key.derive(INFO_SIV_IP, ip.as_mut_slice());
        let mut device_id = Zeroizing::new([0u8; 64]);
        key.derive(INFO_SIV_DEVICE_ID, device_id.as_mut_slice());
        Self {
            key_id: key.key_id(),
            ip,
            device_id,
            ipcrypt: ipcrypt_ciphers(key),
        }
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
    pub fn for_ring(
        ring: &crate::login::KeyRing,
        ip_mode: MaskMode,
        address_key: Option<&str>,
    ) -> Option<Self> {
        let wanted = address_key.unwrap_or(ring.active_id());
        let keys: Vec<KeyUnmasker> = ring
            .keys()
            .iter()
            .map(|k| KeyUnmasker::new(&k.key))
            .collect();
        let address_key = keys.iter().position(|k| k.key_id == wanted)?;
        Some(Self {
            keys,
            address_key,
            ip_mode,
        })
    }

    /// The id of the key bare addresses are decrypted under (with one key: that key's id).
    pub fn key_id(&self) -> &str {
        &self.keys[self.address_key].key_id
    }

    /// The value behind a token, and which field it belongs to.
    pub fn unmask(&self, token: &str) -> Result<Unmasked, UnmaskError> {
        if let Ok(address) = token.trim().parse::<IpAddr>() {
            let (ipcrypt, pfx) = &self.keys[self.address_key].ipcrypt;
            return match self.ip_mode {
                MaskMode::Ipcrypt => {
                    Ok(Unmasked::Ip(ipcrypt.decrypt_ipaddr(address).to_canonical()))
                }
                MaskMode::IpcryptPfx => {
                    Ok(Unmasked::Ip(pfx.decrypt_ipaddr(address).to_canonical()))
                }
                MaskMode::Hmac | MaskMode::Siv => Err(UnmaskError::AddressNeedsMode),
            };
        }
        let mut parts = token.trim().splitn(3, '.');
        let (Some(key_id), Some(mode), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(UnmaskError::NotAToken);
        };
        let Some(key) = self.keys.iter().find(|k| k.key_id == key_id) else {
            let given: Vec<&str> = self.keys.iter().map(|k| k.key_id.as_str()).collect();
            return Err(UnmaskError::OtherKey {
                token: key_id.to_owned(),
                given: given.join(", "),
            });
        };
        match mode {
            "s" => {}
            "h" => return Err(UnmaskError::OneWay),
            other => return Err(UnmaskError::UnknownMode(other.to_owned())),
        }
        let sealed = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| UnmaskError::NotAToken)?;
        let open = |key: &[u8; 64], ad: &[u8]| {
            Aes256Siv::new(key.as_slice().into())
                .decrypt([ad], &sealed)
                .ok()
        };
        if let Some(bytes) = open(&key.ip, AD_IP) {
            let ip = match bytes.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).expect("4 bytes")),
                16 => IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).expect("16 bytes")),
                _ => return Err(UnmaskError::Rejected),
            };
            return Ok(Unmasked::Ip(ip));
        }
        let bytes = open(&key.device_id, AD_DEVICE_ID).ok_or(UnmaskError::Rejected)?;
        String::from_utf8(bytes)
            .map(Unmasked::DeviceId)
            .map_err(|_| UnmaskError::Rejected)
    }
}
