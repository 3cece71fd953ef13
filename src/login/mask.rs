//! Masking of `ip` and `device_id`: keyed, deterministic tokens that keep duplicates visible to
//! analysts and reveal nothing to anyone without the key.
//!
//! An unkeyed hash of an IPv4 address (2^32 values) or a `ddd-dd-dddd` device id (10^9 values)
//! is reversed by enumeration in minutes, so every token here is an HMAC-SHA-256 under a secret
//! key. The operator's key is never used directly: HKDF-SHA-256 derives one subkey per field
//! (and one for the key id), so a token from one column never matches a token of the same value
//! in another column.
//!
//! Token format (fits `varchar(256)`; 55 characters): `{key_id}.h.{base64url(hmac)}`, where
//! `key_id` is 8 base64url characters derived from the key (not secret: it only says which key
//! wrote a row, so keys can be rotated later) and `h` names the mode (HMAC, one-way).
//!
//! Modes, chosen per field ([`MaskModes`]):
//! - `hmac` (default, `h`): HMAC-SHA-256, one-way. Nobody can recover the value, key holders
//!   included; they can only check a known value against a token.
//! - `siv` (`s`): deterministic authenticated encryption, AES-256-SIV (RustCrypto `aes-siv`), so
//!   key holders can recover the value (`sqs2pg unmask`) while equal values still give equal
//!   tokens. The field name is the associated data, so a token from one column does not open as
//!   the other. Token: `{key_id}.s.{base64url(tag || ciphertext)}`; to fit `varchar(256)` the
//!   value may be at most [`SIV_MAX_VALUE_BYTES`] bytes (an IP is at most 16).
//! - `ipcrypt` (`ip` only): the IETF ipcrypt draft's deterministic format-preserving encryption
//!   (crate `ipcrypt-rs`, AES-128 on the 16-byte address): `masked_ip` is still a valid IP
//!   address (an IPv4 address usually becomes an IPv6 one) for tools that expect one, and key
//!   holders can recover it. The token carries no key id (it must stay an address); the key id
//!   and mode of every run are kept in `sqs2pg.mask_keys`.
//! - `ipcrypt-pfx` (`ip` only): prefix-preserving: addresses that share a prefix share the
//!   encrypted prefix, so subnets can be analysed. That is also what it gives away: an
//!   attacker learns which addresses are in the same subnet.
//!
//! IP canonicalisation: the address is parsed, an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) is
//! turned into its IPv4 address, and the token is computed over the address bytes (4 for IPv4,
//! 16 for IPv6). So every spelling of one address (`::FFFF:1.2.3.4`, `0:0:0:0:0:ffff:102:304`,
//! `2001:DB8::1` vs `2001:db8:0::1`) gives one token.

use std::fmt;
use std::net::IpAddr;

use std::sync::Arc;

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

mod column;
mod unmask;
pub use column::ColumnMask;
pub use unmask::{rekey_token, UnmaskError, Unmasked, Unmasker};

type HmacSha256 = Hmac<Sha256>;

pub use crate::keys::{KeyError, MaskKey, MIN_KEY_BYTES};

/// A masked value as it goes into the database. Only [`Masker`] makes one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MaskedToken(String);

impl MaskedToken {
    /// The token text stored in the `masked_*` column.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MaskedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Tokens are not secret, but they are linkable: keep them out of debug output too.
        f.write_str("MaskedToken(..)")
    }
}

/// How a field is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MaskMode {
    /// One-way HMAC-SHA-256: duplicates stay visible, nobody can recover the value.
    #[default]
    Hmac,
    /// Deterministic AES-256-SIV: duplicates stay visible, key holders can recover the value.
    Siv,
    /// `ip` only: format-preserving encryption (ipcrypt deterministic): still an IP address.
    Ipcrypt,
    /// `ip` only: prefix-preserving encryption (ipcrypt-pfx): subnets stay subnets.
    IpcryptPfx,
}

impl MaskMode {
    /// True for the modes whose tokens are IP addresses (`ip` only).
    pub fn is_ip_only(self) -> bool {
        matches!(self, MaskMode::Ipcrypt | MaskMode::IpcryptPfx)
    }
}

impl fmt::Display for MaskMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MaskMode::Hmac => "hmac",
            MaskMode::Siv => "siv",
            MaskMode::Ipcrypt => "ipcrypt",
            MaskMode::IpcryptPfx => "ipcrypt-pfx",
        })
    }
}

/// The mode of each masked field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaskModes {
    pub ip: MaskMode,
    pub device_id: MaskMode,
}

/// The longest value `siv` can encrypt into a token that fits `varchar(256)`: 8 (key id) + 3
/// + base64url of (16-byte tag + value) <= 256.
pub const SIV_MAX_VALUE_BYTES: usize = 167;

/// A value too long for `siv` mode (see [`SIV_MAX_VALUE_BYTES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} bytes; siv mode fits at most {SIV_MAX_VALUE_BYTES} bytes into varchar(256)")]
pub struct TooLongToEncrypt(pub usize);

/// One field's masking: an HMAC, the 512-bit AES-SIV key, or an ipcrypt cipher.
#[derive(Clone)]
enum FieldMask {
    Hmac(HmacSha256),
    Siv(Arc<Zeroizing<[u8; 64]>>),
    Ipcrypt(Arc<ipcrypt_rs::Ipcrypt>),
    IpcryptPfx(Arc<ipcrypt_rs::IpcryptPfx>),
}

/// The ipcrypt ciphers for `ip`, from their own HKDF subkeys.
fn ipcrypt_ciphers(key: &MaskKey) -> (ipcrypt_rs::Ipcrypt, ipcrypt_rs::IpcryptPfx) {
    let mut k16 = Zeroizing::new([0u8; 16]);
    key.derive(INFO_IPCRYPT_IP, k16.as_mut_slice());
    let mut k32 = Zeroizing::new([0u8; 32]);
    key.derive(INFO_IPCRYPT_PFX_IP, k32.as_mut_slice());
    (
        ipcrypt_rs::Ipcrypt::new(*k16),
        ipcrypt_rs::IpcryptPfx::new(*k32),
    )
}

/// Turns personal values into tokens under one key. Cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Masker {
    key_id: String,
    ip: FieldMask,
    device_id: FieldMask,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Which column (and mode) a subkey is for; part of the HKDF `info`, so subkeys never coincide.
const INFO_IP: &[u8] = b"sqs2pg/v1/hmac/ip";
const INFO_DEVICE_ID: &[u8] = b"sqs2pg/v1/hmac/device_id";
const INFO_SIV_IP: &[u8] = b"sqs2pg/v1/siv/ip";
const INFO_SIV_DEVICE_ID: &[u8] = b"sqs2pg/v1/siv/device_id";
const INFO_IPCRYPT_IP: &[u8] = b"sqs2pg/v1/ipcrypt/ip";
const INFO_IPCRYPT_PFX_IP: &[u8] = b"sqs2pg/v1/ipcrypt-pfx/ip";
/// Associated data of `siv` tokens: the field they belong to.
const AD_IP: &[u8] = b"ip";
const AD_DEVICE_ID: &[u8] = b"device_id";

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
        let field = |mode, hmac_info: &[u8], siv_info: &[u8]| match mode {
            MaskMode::Hmac => {
                let mut okm = Zeroizing::new([0u8; 32]);
                key.derive(hmac_info, okm.as_mut_slice());
                FieldMask::Hmac(
                    <HmacSha256 as Mac>::new_from_slice(okm.as_slice())
                        .expect("HMAC takes any key length"),
                )
            }
            MaskMode::Siv => {
                let mut okm = Zeroizing::new([0u8; 64]);
                key.derive(siv_info, okm.as_mut_slice());
                FieldMask::Siv(Arc::new(okm))
            }
            // Configuration refuses these for device_id; `mask_device_id` would refuse too.
            MaskMode::Ipcrypt => FieldMask::Ipcrypt(Arc::new(ipcrypt_ciphers(key).0)),
            MaskMode::IpcryptPfx => FieldMask::IpcryptPfx(Arc::new(ipcrypt_ciphers(key).1)),
        };
        Self {
            key_id: key.key_id(),
            ip: field(modes.ip, INFO_IP, INFO_SIV_IP),
            device_id: field(modes.device_id, INFO_DEVICE_ID, INFO_SIV_DEVICE_ID),
        }
    }

    /// The short, public identifier of the key (8 base64url characters).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Masks an IP address after canonicalising it (see the module docs).
    pub fn mask_ip(&self, ip: IpAddr) -> MaskedToken {
        ip_token(&self.key_id, &self.ip, AD_IP, ip)
    }

    /// Masks a device id exactly as sent (no normalisation: ids are opaque strings). Fails only
    /// in `siv` mode, for an id longer than [`SIV_MAX_VALUE_BYTES`].
    pub fn mask_device_id(&self, device_id: &str) -> Result<MaskedToken, TooLongToEncrypt> {
        token(
            &self.key_id,
            &self.device_id,
            AD_DEVICE_ID,
            device_id.as_bytes(),
        )
    }
}

/// The token of an IP address: an address again for the ipcrypt modes, else the token of its
/// canonical bytes.
fn ip_token(key_id: &str, field: &FieldMask, ad: &[u8], ip: IpAddr) -> MaskedToken {
    match field {
        FieldMask::Ipcrypt(cipher) => {
            return MaskedToken(cipher.encrypt_ipaddr(ip.to_canonical()).to_string())
        }
        FieldMask::IpcryptPfx(cipher) => {
            return MaskedToken(cipher.encrypt_ipaddr(ip.to_canonical()).to_string())
        }
        FieldMask::Hmac(_) | FieldMask::Siv(_) => {}
    }
    let token = match ip.to_canonical() {
        IpAddr::V4(v4) => token(key_id, field, ad, &v4.octets()),
        IpAddr::V6(v6) => token(key_id, field, ad, &v6.octets()),
    };
    token.expect("an IP address is at most 16 bytes")
}

/// `{key_id}.{mode}.{base64url(...)}` for the `hmac` and `siv` modes.
fn token(
    key_id: &str,
    field: &FieldMask,
    ad: &[u8],
    value: &[u8],
) -> Result<MaskedToken, TooLongToEncrypt> {
    let mut text = String::with_capacity(key_id.len() + 3 + 43);
    text.push_str(key_id);
    match field {
        FieldMask::Hmac(mac) => {
            let mut mac = mac.clone();
            mac.update(value);
            text.push_str(".h.");
            URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut text);
        }
        FieldMask::Siv(key) => {
            if value.len() > SIV_MAX_VALUE_BYTES {
                return Err(TooLongToEncrypt(value.len()));
            }
            // The cipher is not `Clone` and needs `&mut`: one per call (a key schedule).
            let sealed = Aes256Siv::new(key.as_slice().into())
                .encrypt([ad], value)
                .expect("AES-SIV encrypts any length");
            text.push_str(".s.");
            URL_SAFE_NO_PAD.encode_string(sealed, &mut text);
        }
        FieldMask::Ipcrypt(_) | FieldMask::IpcryptPfx(_) => {
            unreachable!("ipcrypt modes are for ip only; configuration refuses them elsewhere")
        }
    }
    Ok(MaskedToken(text))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod vectors;
