//! Masks: keyed, deterministic tokens for personal values, one column at a time
//! ([`ColumnMask`]), for every message kind (the login pipeline's two fields and a mapping's
//! columns alike). A leaf beside `keys`: it names nothing of ours but the key.
//!
//! An unkeyed hash of an IPv4 address (2^32 values) or a `ddd-dd-dddd` device id (10^9 values)
//! is reversed by enumeration in minutes, so every token here is an HMAC-SHA-256 under a secret
//! key. The operator's key is never used directly: HKDF-SHA-256 derives one subkey per column
//! scope and mode (`sqs2pg/v1/{mode}/{scope}`, and one for the key id), so a token from one
//! scope never matches a token of the same value in another.
//!
//! Token format (fits `varchar(256)`; 55 characters): `{key_id}.h.{base64url(hmac)}`, where
//! `key_id` is 8 base64url characters derived from the key (not secret: it only says which key
//! wrote a row, so keys can be rotated later) and `h` names the mode (HMAC, one-way).
//!
//! Modes ([`MaskMode`]):
//! - `hmac` (default, `h`): HMAC-SHA-256, one-way. Nobody can recover the value, key holders
//!   included; they can only check a known value against a token.
//! - `siv` (`s`): deterministic authenticated encryption, AES-256-SIV (RustCrypto `aes-siv`), so
//!   key holders can recover the value (`sqs2pg unmask`) while equal values still give equal
//!   tokens. The scope is the associated data, so a token from one column does not open as
//!   another. Token: `{key_id}.s.{base64url(tag || ciphertext)}`; to fit `varchar(256)` the
//!   value may be at most [`SIV_MAX_VALUE_BYTES`] bytes (an IP is at most 16).
//! - `ipcrypt` (addresses only): the IETF ipcrypt draft's deterministic format-preserving
//!   encryption (crate `ipcrypt-rs`, AES-128 on the 16-byte address): the token is still a
//!   valid IP address (an IPv4 address usually becomes an IPv6 one) for tools that expect one,
//!   and key holders can recover it. It carries no key id (it must stay an address); the key
//!   id and mode of every run are kept in `sqs2pg.mask_keys`.
//! - `ipcrypt-pfx` (addresses only): prefix-preserving: addresses that share a prefix share the
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
pub use column::ColumnMask;

type HmacSha256 = Hmac<Sha256>;

/// A masked value as it goes into the database. Only a [`ColumnMask`] makes one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MaskedToken(String);

impl MaskedToken {
    /// The token text stored in the `masked_*` column.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token text, taken.
    pub fn into_string(self) -> String {
        self.0
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
