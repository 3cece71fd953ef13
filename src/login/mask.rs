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

/// One column's mask under a *scope*, for mappings: the generic form of [`Masker`]'s two
/// fields. The scope names the subkeys (`sqs2pg/v1/{mode}/{scope}`) and is the associated
/// data of `siv` tokens, so columns that share a scope give equal tokens for equal values (they
/// can be joined) and columns with different scopes never do. The login fields are the scopes
/// `ip` and `device_id`: under them a column's tokens are the login pipeline's, byte for byte.
#[derive(Clone)]
pub struct ColumnMask {
    key_id: String,
    mode: MaskMode,
    field: FieldMask,
    ad: Box<[u8]>,
}

impl fmt::Debug for ColumnMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnMask")
            .field("key_id", &self.key_id)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ColumnMask {
    /// Derives the scope's subkey for `mode` from the operator's key.
    pub fn new(key: &MaskKey, mode: MaskMode, scope: &str) -> Self {
        let info = |mode: &str| format!("sqs2pg/v1/{mode}/{scope}").into_bytes();
        let field = match mode {
            MaskMode::Hmac => {
                let mut okm = Zeroizing::new([0u8; 32]);
                key.derive(&info("hmac"), okm.as_mut_slice());
                FieldMask::Hmac(
                    <HmacSha256 as Mac>::new_from_slice(okm.as_slice())
                        .expect("HMAC takes any key length"),
                )
            }
            MaskMode::Siv => {
                let mut okm = Zeroizing::new([0u8; 64]);
                key.derive(&info("siv"), okm.as_mut_slice());
                FieldMask::Siv(Arc::new(okm))
            }
            MaskMode::Ipcrypt => {
                let mut k16 = Zeroizing::new([0u8; 16]);
                key.derive(&info("ipcrypt"), k16.as_mut_slice());
                FieldMask::Ipcrypt(Arc::new(ipcrypt_rs::Ipcrypt::new(*k16)))
            }
            MaskMode::IpcryptPfx => {
                let mut k32 = Zeroizing::new([0u8; 32]);
                key.derive(&info("ipcrypt-pfx"), k32.as_mut_slice());
                FieldMask::IpcryptPfx(Arc::new(ipcrypt_rs::IpcryptPfx::new(*k32)))
            }
        };
        Self {
            key_id: key.key_id(),
            mode,
            field,
            ad: scope.as_bytes().into(),
        }
    }

    /// The mode this column masks with.
    pub fn mode(&self) -> MaskMode {
        self.mode
    }

    /// Masks an IP address after canonicalising it, as [`Masker::mask_ip`] does.
    pub fn mask_ip(&self, ip: IpAddr) -> MaskedToken {
        ip_token(&self.key_id, &self.field, &self.ad, ip)
    }

    /// The value behind one of this column's tokens, for key holders (`sqs2pg unmask
    /// --mapping`): an `ipcrypt` address decrypted, or a `siv` token opened under this key and
    /// scope (`ip` says the column masked addresses, whose tokens hold their bytes). An `hmac`
    /// token is one-way; a token of another key, scope or column does not open.
    pub fn unmask(&self, token: &str, ip: bool) -> Result<String, UnmaskError> {
        if let Some(address) = self.open_address(token)? {
            return Ok(address.to_string());
        }
        let bytes = self.open(token)?;
        if ip {
            return match bytes.len() {
                4 => Ok(
                    IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).expect("4 bytes"))
                        .to_string(),
                ),
                16 => Ok(
                    IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).expect("16 bytes"))
                        .to_string(),
                ),
                _ => Err(UnmaskError::Rejected),
            };
        }
        String::from_utf8(bytes).map_err(|_| UnmaskError::Rejected)
    }

    /// The same value's token under `to` (the same column's mask under another key, for
    /// `sqs2pg rekey`): an address re-encrypted, or a `siv` token's bytes sealed again. The
    /// value is never interpreted, so a column's tokens re-key whatever they hold.
    pub fn rekey(&self, to: &ColumnMask, token: &str) -> Result<MaskedToken, UnmaskError> {
        if let Some(address) = self.open_address(token)? {
            return Ok(to.mask_ip(address));
        }
        let bytes = Zeroizing::new(self.open(token)?);
        to.mask_bytes(&bytes).map_err(|_| UnmaskError::Rejected)
    }

    /// An ipcrypt mode's address, decrypted; `None` for the other modes.
    fn open_address(&self, token: &str) -> Result<Option<IpAddr>, UnmaskError> {
        let decrypt = |f: &dyn Fn(IpAddr) -> IpAddr| -> Result<Option<IpAddr>, UnmaskError> {
            let address: IpAddr = token.trim().parse().map_err(|_| UnmaskError::NotAToken)?;
            Ok(Some(f(address).to_canonical()))
        };
        match &self.field {
            FieldMask::Ipcrypt(cipher) => decrypt(&|a| cipher.decrypt_ipaddr(a)),
            FieldMask::IpcryptPfx(cipher) => decrypt(&|a| cipher.decrypt_ipaddr(a)),
            FieldMask::Hmac(_) | FieldMask::Siv(_) => Ok(None),
        }
    }

    /// The bytes a `siv` token of this key and scope seals.
    fn open(&self, token: &str) -> Result<Vec<u8>, UnmaskError> {
        let mut parts = token.trim().splitn(3, '.');
        let (Some(key_id), Some(mode), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(UnmaskError::NotAToken);
        };
        if key_id != self.key_id {
            return Err(UnmaskError::OtherKey {
                token: key_id.to_owned(),
                given: self.key_id.clone(),
            });
        }
        match mode {
            "s" => {}
            "h" => return Err(UnmaskError::OneWay),
            other => return Err(UnmaskError::UnknownMode(other.to_owned())),
        }
        let FieldMask::Siv(key) = &self.field else {
            // A siv token, but this column masks with another mode.
            return Err(UnmaskError::Rejected);
        };
        let sealed = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| UnmaskError::NotAToken)?;
        Aes256Siv::new(key.as_slice().into())
            .decrypt([&self.ad[..]], &sealed)
            .map_err(|_| UnmaskError::Rejected)
    }

    /// The id of the key the column masks under.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Masks a value exactly as given. Fails in `siv` mode for a value longer than
    /// [`SIV_MAX_VALUE_BYTES`]; the ipcrypt modes take addresses only (the mapping refuses them
    /// for other columns), so they are a programming error here.
    pub fn mask_bytes(&self, value: &[u8]) -> Result<MaskedToken, TooLongToEncrypt> {
        token(&self.key_id, &self.field, &self.ad, value)
    }
}

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
    field: super::Field,
) -> Result<MaskedToken, UnmaskError> {
    match (from.unmask(token)?, field) {
        (Unmasked::Ip(ip), super::Field::Ip) => Ok(to.mask_ip(ip)),
        (Unmasked::DeviceId(id), super::Field::DeviceId) => {
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
        ring: &super::KeyRing,
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use sha2::Digest;

    fn key(byte: u8) -> MaskKey {
        MaskKey(Zeroizing::new(vec![byte; 32]))
    }

    #[test]
    fn a_ring_unmasker_opens_each_token_with_the_key_it_names() {
        let siv = MaskModes {
            ip: MaskMode::Siv,
            device_id: MaskMode::Siv,
        };
        let (a, b, c) = (key(1), key(2), key(3));
        let ring = crate::login::KeyRing::parse(&format!(
            "active = \"{}\"\n[[keys]]\nid = \"{}\"\nkey = \"{}\"\n[[keys]]\nid = \"{}\"\nkey = \"{}\"\n",
            b.key_id(),
            a.key_id(),
            STANDARD.encode([1u8; 32]),
            b.key_id(),
            STANDARD.encode([2u8; 32]),
        ))
        .unwrap();
        let unmasker = Unmasker::for_ring(&ring, MaskMode::Ipcrypt, None).unwrap();
        assert_eq!(
            unmasker.key_id(),
            b.key_id(),
            "addresses under the active key"
        );
        let ip: IpAddr = "199.172.111.135".parse().unwrap();
        for k in [&a, &b] {
            let token = Masker::with_modes(k, siv).mask_ip(ip);
            assert!(unmasker.unmask(token.as_str()) == Ok(Unmasked::Ip(ip)));
        }
        let address = |k: &MaskKey| {
            Masker::with_modes(
                k,
                MaskModes {
                    ip: MaskMode::Ipcrypt,
                    device_id: MaskMode::Hmac,
                },
            )
            .mask_ip(ip)
        };
        assert!(unmasker.unmask(address(&b).as_str()) == Ok(Unmasked::Ip(ip)));
        let by_a = Unmasker::for_ring(&ring, MaskMode::Ipcrypt, Some(&a.key_id())).unwrap();
        assert!(by_a.unmask(address(&a).as_str()) == Ok(Unmasked::Ip(ip)));
        assert!(Unmasker::for_ring(&ring, MaskMode::Ipcrypt, Some("nope")).is_none());
        let foreign = Masker::with_modes(&c, siv).mask_ip(ip);
        match unmasker.unmask(foreign.as_str()) {
            Err(UnmaskError::OtherKey { token, given }) => {
                assert_eq!(token, c.key_id());
                assert!(given.contains(&a.key_id()) && given.contains(&b.key_id()));
            }
            _ => panic!("a token of a key outside the ring must be refused"),
        }
    }

    #[test]
    fn a_column_mask_under_the_login_scopes_gives_the_login_tokens_byte_for_byte() {
        let k = key(7);
        let ip: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        for mode in [MaskMode::Hmac, MaskMode::Siv] {
            let login = Masker::with_modes(
                &k,
                MaskModes {
                    ip: mode,
                    device_id: mode,
                },
            );
            let (ip_col, device_col) = (
                ColumnMask::new(&k, mode, "ip"),
                ColumnMask::new(&k, mode, "device_id"),
            );
            assert!(ip_col.mask_ip(ip) == login.mask_ip(ip), "{mode}");
            assert!(
                device_col.mask_bytes(b"593-47-5928") == login.mask_device_id("593-47-5928"),
                "{mode}"
            );
            // Another scope is another key: the tokens cannot be joined.
            assert!(ColumnMask::new(&k, mode, "email").mask_ip(ip) != login.mask_ip(ip));
        }
        for mode in [MaskMode::Ipcrypt, MaskMode::IpcryptPfx] {
            let login = Masker::with_modes(
                &k,
                MaskModes {
                    ip: mode,
                    device_id: MaskMode::Hmac,
                },
            );
            assert!(ColumnMask::new(&k, mode, "ip").mask_ip(ip) == login.mask_ip(ip));
        }
    }

    #[test]
    fn a_column_mask_unmasks_its_own_reversible_tokens_only() {
        let (k, other) = (key(1), key(2));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        for mode in [MaskMode::Siv, MaskMode::Ipcrypt, MaskMode::IpcryptPfx] {
            let column = ColumnMask::new(&k, mode, "client_ip");
            let token = column.mask_ip(ip);
            assert_eq!(
                column.unmask(token.as_str(), true).unwrap(),
                "10.1.2.3",
                "{mode}"
            );
        }
        let email = ColumnMask::new(&k, MaskMode::Siv, "email");
        let token = email.mask_bytes(b"ada@example.com").unwrap();
        assert_eq!(
            email.unmask(token.as_str(), false).unwrap(),
            "ada@example.com"
        );
        // Another scope, another key, or a one-way token: nothing comes out.
        let phone = ColumnMask::new(&k, MaskMode::Siv, "phone");
        assert!(matches!(
            phone.unmask(token.as_str(), false),
            Err(UnmaskError::Rejected)
        ));
        let elsewhere = ColumnMask::new(&other, MaskMode::Siv, "email");
        assert!(matches!(
            elsewhere.unmask(token.as_str(), false),
            Err(UnmaskError::OtherKey { .. })
        ));
        let hmac = ColumnMask::new(&k, MaskMode::Hmac, "email");
        let one_way = hmac.mask_bytes(b"ada@example.com").unwrap();
        assert!(matches!(
            hmac.unmask(one_way.as_str(), false),
            Err(UnmaskError::OneWay)
        ));
        assert!(matches!(
            email.unmask("plain text", false),
            Err(UnmaskError::NotAToken)
        ));
    }

    #[test]
    fn a_column_mask_re_keys_its_tokens_as_the_new_key_would_make_them() {
        let (k, other) = (key(1), key(2));
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        for mode in [MaskMode::Siv, MaskMode::Ipcrypt, MaskMode::IpcryptPfx] {
            let (from, to) = (
                ColumnMask::new(&k, mode, "ip"),
                ColumnMask::new(&other, mode, "ip"),
            );
            assert!(from.rekey(&to, from.mask_ip(ip).as_str()).unwrap() == to.mask_ip(ip));
        }
        // The login pipeline's siv tokens re-key under their scopes, byte for byte.
        let siv = MaskModes {
            ip: MaskMode::Siv,
            device_id: MaskMode::Siv,
        };
        let (old, new) = (Masker::with_modes(&k, siv), Masker::with_modes(&other, siv));
        let (from, to) = (
            ColumnMask::new(&k, MaskMode::Siv, "device_id"),
            ColumnMask::new(&other, MaskMode::Siv, "device_id"),
        );
        let token = old.mask_device_id("593-47-5928").unwrap();
        assert!(
            from.rekey(&to, token.as_str()).unwrap() == new.mask_device_id("593-47-5928").unwrap()
        );
        // A token of another scope does not re-key.
        let ip_token = old.mask_ip(ip);
        assert!(matches!(
            from.rekey(&to, ip_token.as_str()),
            Err(UnmaskError::Rejected)
        ));
    }

    #[test]
    fn deterministic_per_key_and_different_across_keys() {
        let a = Masker::new(&key(1));
        let b = Masker::new(&key(2));
        let ip: IpAddr = "199.172.111.135".parse().unwrap();
        assert_eq!(a.mask_ip(ip), Masker::new(&key(1)).mask_ip(ip));
        assert_ne!(a.mask_ip(ip), b.mask_ip(ip));
        assert_eq!(
            a.mask_device_id("593-47-5928"),
            a.mask_device_id("593-47-5928")
        );
        assert_ne!(
            a.mask_device_id("593-47-5928"),
            a.mask_device_id("593-47-5929")
        );
        assert_ne!(
            a.mask_device_id("593-47-5928"),
            b.mask_device_id("593-47-5928")
        );
        assert_ne!(a.key_id(), b.key_id());
    }

    #[test]
    fn token_is_neither_the_value_nor_its_plain_sha256() {
        let m = Masker::new(&key(7));
        for (value, token) in [
            (
                "199.172.111.135",
                m.mask_ip("199.172.111.135".parse().unwrap()),
            ),
            ("593-47-5928", m.mask_device_id("593-47-5928").unwrap()),
        ] {
            let t = token.as_str();
            assert!(!t.contains(value));
            let octets = match value.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => v4.octets().to_vec(),
                _ => Vec::new(),
            };
            for plain in [
                sha2::Sha256::digest(value.as_bytes()),
                sha2::Sha256::digest(&octets),
            ] {
                for encoded in [
                    URL_SAFE_NO_PAD.encode(plain),
                    STANDARD.encode(plain),
                    plain.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                ] {
                    assert!(!t.contains(&encoded), "token carries the unkeyed SHA-256");
                }
            }
            assert!(t.len() <= 256);
            assert!(t.starts_with(&format!("{}.h.", m.key_id())));
        }
    }

    #[test]
    fn ip_spellings_of_one_address_share_a_token() {
        let m = Masker::new(&key(3));
        let v4 = m.mask_ip("1.2.3.4".parse().unwrap());
        for spelling in ["::ffff:1.2.3.4", "::FFFF:102:304", "0:0:0:0:0:ffff:1.2.3.4"] {
            assert_eq!(m.mask_ip(spelling.parse().unwrap()), v4, "{spelling}");
        }
        assert_eq!(
            m.mask_ip("2001:DB8:0::1".parse().unwrap()),
            m.mask_ip("2001:db8::1".parse().unwrap())
        );
        assert_ne!(m.mask_ip("1.2.3.5".parse().unwrap()), v4);
    }

    #[test]
    fn same_value_in_different_fields_gives_different_tokens() {
        let m = Masker::new(&key(4));
        let ip: IpAddr = "1.2.3.4".parse().unwrap();
        assert_ne!(
            m.mask_ip(ip).as_str().rsplit('.').next(),
            // The very same bytes as the address, under the device_id subkey.
            m.mask_device_id(std::str::from_utf8(&[1, 2, 3, 4]).unwrap())
                .unwrap()
                .as_str()
                .rsplit('.')
                .next()
        );
    }

    #[test]
    fn siv_tokens_open_for_key_holders_only_and_keep_duplicates_equal() {
        let modes = MaskModes {
            ip: MaskMode::Siv,
            device_id: MaskMode::Siv,
        };
        let m = Masker::with_modes(&key(5), modes);
        let unmasker = Unmasker::new(&key(5));
        for ip in ["199.172.111.135", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let token = m.mask_ip(ip);
            assert!(token.as_str().starts_with(&format!("{}.s.", m.key_id())));
            assert!(!token.as_str().contains(&ip.to_string()));
            assert_eq!(token, m.mask_ip(ip), "deterministic");
            assert!(unmasker.unmask(token.as_str()) == Ok(Unmasked::Ip(ip)));
        }
        // Every spelling of an address opens as its canonical form.
        let mapped = m.mask_ip("::ffff:1.2.3.4".parse().unwrap());
        assert!(unmasker.unmask(mapped.as_str()) == Ok(Unmasked::Ip("1.2.3.4".parse().unwrap())));
        let device = m.mask_device_id("593-47-5928").unwrap();
        assert!(unmasker.unmask(device.as_str()) == Ok(Unmasked::DeviceId("593-47-5928".into())));
        assert_ne!(device, m.mask_device_id("593-47-5929").unwrap());
        // The longest value that fits still fits varchar(256); one more byte is refused.
        let longest = "x".repeat(SIV_MAX_VALUE_BYTES);
        assert!(m.mask_device_id(&longest).unwrap().as_str().len() <= 256);
        assert_eq!(
            m.mask_device_id(&format!("{longest}x")),
            Err(TooLongToEncrypt(SIV_MAX_VALUE_BYTES + 1))
        );
        // Another key cannot open them, and says so by key id.
        assert!(matches!(
            Unmasker::new(&key(6)).unmask(device.as_str()),
            Err(UnmaskError::OtherKey { .. })
        ));
        // A token moved to the other field's subkey does not open (the field is bound in).
        let body = device.as_str().rsplit('.').next().unwrap();
        let sealed = URL_SAFE_NO_PAD.decode(body).unwrap();
        let mut wrong_field = Zeroizing::new([0u8; 64]);
        key(5).derive(INFO_SIV_IP, wrong_field.as_mut_slice());
        assert!(Aes256Siv::new(wrong_field.as_slice().into())
            .decrypt([AD_DEVICE_ID], &sealed)
            .is_err());
        // hmac tokens are one-way, and say so.
        let hmac = Masker::new(&key(5)).mask_device_id("593-47-5928").unwrap();
        assert_eq!(unmasker.unmask(hmac.as_str()), Err(UnmaskError::OneWay));
        assert_eq!(unmasker.unmask("garbage"), Err(UnmaskError::NotAToken));
        let mut tampered = device.as_str().to_owned();
        tampered.pop();
        tampered.push(if device.as_str().ends_with('A') {
            'B'
        } else {
            'A'
        });
        assert_eq!(unmasker.unmask(&tampered), Err(UnmaskError::Rejected));
    }

    #[test]
    fn ipcrypt_tokens_are_addresses_that_key_holders_can_decrypt() {
        for mode in [MaskMode::Ipcrypt, MaskMode::IpcryptPfx] {
            let m = Masker::with_modes(
                &key(8),
                MaskModes {
                    ip: mode,
                    device_id: MaskMode::Hmac,
                },
            );
            let unmasker = Unmasker::with_ip_mode(&key(8), mode);
            for ip in ["199.172.111.135", "10.0.0.1", "2001:db8::1"] {
                let ip: IpAddr = ip.parse().unwrap();
                let token = m.mask_ip(ip);
                let as_address: IpAddr = token.as_str().parse().expect("still an IP address");
                assert_ne!(as_address, ip, "{mode}");
                assert_eq!(m.mask_ip(ip), token, "deterministic");
                assert!(
                    unmasker.unmask(token.as_str()) == Ok(Unmasked::Ip(ip)),
                    "{mode}"
                );
            }
            // Another key decrypts to something else (there is no tag to refuse it).
            let other = Unmasker::with_ip_mode(&key(9), mode);
            let token = m.mask_ip("10.0.0.1".parse().unwrap());
            assert!(other.unmask(token.as_str()) != Ok(Unmasked::Ip("10.0.0.1".parse().unwrap())));
        }
        // Prefix preservation: two addresses of one /24 share their encrypted /24 prefix.
        let pfx = Masker::with_modes(
            &key(8),
            MaskModes {
                ip: MaskMode::IpcryptPfx,
                device_id: MaskMode::Hmac,
            },
        );
        let (a, b) = (
            pfx.mask_ip("192.0.2.10".parse().unwrap()),
            pfx.mask_ip("192.0.2.200".parse().unwrap()),
        );
        let prefix = |t: &MaskedToken| t.as_str().rsplit_once('.').unwrap().0.to_owned();
        assert_eq!(prefix(&a), prefix(&b));
        // Without the mode, an address token is not guessed at.
        assert_eq!(
            Unmasker::new(&key(8)).unmask(a.as_str()),
            Err(UnmaskError::AddressNeedsMode)
        );
    }

    #[test]
    fn keys_are_checked_and_never_printed() {
        assert_eq!(
            MaskKey::from_base64("not base64!").unwrap_err(),
            KeyError::NotBase64
        );
        assert_eq!(
            MaskKey::from_base64(&STANDARD.encode([1u8; 16])).unwrap_err(),
            KeyError::TooShort(16)
        );
        let text = MaskKey::generate_base64().unwrap();
        let k = MaskKey::from_base64(&format!("{text}\n")).unwrap();
        assert_eq!(k.0.len(), 32);
        assert_ne!(text, MaskKey::generate_base64().unwrap());
        let shown = format!("{k:?} {:?}", Masker::new(&k));
        assert!(!shown.contains(&text) && shown.contains("redacted"));
    }
}

#[cfg(test)]
mod vectors {
    //! Fixed vectors: a known key and inputs give these exact tokens, so the token format (and
    //! every stored token's meaning) can never change silently between versions. They were
    //! checked against an independent implementation: Python's `hmac`/`hashlib` for HKDF and
    //! HMAC, and pyca/cryptography's `AESSIV` for the `siv` tokens.

    use proptest::prelude::*;

    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn key() -> MaskKey {
        MaskKey::from_base64(&STANDARD.encode((0u8..32).collect::<Vec<u8>>())).unwrap()
    }

    fn siv() -> Masker {
        Masker::with_modes(
            &key(),
            MaskModes {
                ip: MaskMode::Siv,
                device_id: MaskMode::Siv,
            },
        )
    }

    #[test]
    fn known_key_and_inputs_give_known_tokens() {
        let ip: IpAddr = "199.172.111.135".parse().unwrap();
        let hmac = Masker::new(&key());
        assert_eq!(key().key_id(), "LW8Ob-y2");
        assert_eq!(
            hmac.mask_ip(ip).as_str(),
            "LW8Ob-y2.h.2XMZzjkn3XX3PvNRLhJ7Dv1JN4xIM1InlkmaET5R7Fc"
        );
        assert_eq!(
            hmac.mask_device_id("593-47-5928").unwrap().as_str(),
            "LW8Ob-y2.h.m80_x-T_6AGSIB1Iuk5aRgNnZ90worit4Ryh5o_jsps"
        );
        assert_eq!(
            siv().mask_ip(ip).as_str(),
            "LW8Ob-y2.s.s5wQBe-xRT5xXG_WQE5SBZedL_Y"
        );
        assert_eq!(
            siv().mask_ip("2001:db8::1".parse().unwrap()).as_str(),
            "LW8Ob-y2.s.4w7bh6Wi6nLOozOTxP4SrSlmezfIulhCSX4lJ3IJNxA"
        );
        assert_eq!(
            siv().mask_device_id("593-47-5928").unwrap().as_str(),
            "LW8Ob-y2.s.iUfkdxbInGCVMGQxChtOZXHzjaAyMoseMqDM"
        );
    }

    #[test]
    fn known_key_and_addresses_give_known_ipcrypt_addresses() {
        let ipcrypt = |mode| {
            Masker::with_modes(
                &key(),
                MaskModes {
                    ip: mode,
                    device_id: MaskMode::Hmac,
                },
            )
        };
        let got: Vec<String> = [MaskMode::Ipcrypt, MaskMode::IpcryptPfx]
            .into_iter()
            .flat_map(|mode| {
                ["199.172.111.135", "199.172.111.1", "2001:db8::1"].map(|ip| {
                    ipcrypt(mode)
                        .mask_ip(ip.parse().unwrap())
                        .as_str()
                        .to_owned()
                })
            })
            .collect();
        // The `ipcrypt` ones were checked with pyca/cryptography's AES-128 on the IPv4-mapped
        // address under the HKDF subkey; the `ipcrypt-pfx` ones rest on ipcrypt-rs, which
        // checks the draft's own vectors. Prefix preservation shows in the two IPv4 ones.
        assert_eq!(
            got,
            [
                "b83a:85e2:c349:59e1:1d4c:5b44:afd8:32e9",
                "2eae:67bd:f244:e95a:2dc:1f76:7b18:dcd2",
                "9bb2:ddf4:3d6:51cd:a359:6eb5:f314:791d",
                "231.52.146.113",
                "231.52.146.184",
                "c240:4885:7cb3:c90a:ae20:194:65e6:4d73",
            ]
        );
    }

    proptest! {
        #[test]
        fn ipcrypt_modes_round_trip_every_address(octets in any::<[u8; 16]>(), v4 in any::<bool>()) {
            let ip = if v4 { IpAddr::from([octets[0], octets[1], octets[2], octets[3]]) } else { IpAddr::from(octets) };
            for mode in [MaskMode::Ipcrypt, MaskMode::IpcryptPfx] {
                let masker = Masker::with_modes(&key(), MaskModes { ip: mode, device_id: MaskMode::Hmac });
                let token = masker.mask_ip(ip);
                prop_assert!(token.as_str().parse::<IpAddr>().is_ok());
                prop_assert!(
                    Unmasker::with_ip_mode(&key(), mode).unmask(token.as_str())
                        == Ok(Unmasked::Ip(ip.to_canonical()))
                );
            }
        }

        #[test]
        fn siv_round_trips_every_ipv4(octets in any::<[u8; 4]>()) {
            let ip = IpAddr::from(octets);
            let token = siv().mask_ip(ip);
            prop_assert!(Unmasker::new(&key()).unmask(token.as_str()) == Ok(Unmasked::Ip(ip)));
        }

        #[test]
        fn siv_round_trips_every_ipv6_and_mapped_form(octets in any::<[u8; 16]>()) {
            let ip = IpAddr::from(octets);
            let token = siv().mask_ip(ip);
            let canonical = ip.to_canonical();
            prop_assert!(Unmasker::new(&key()).unmask(token.as_str()) == Ok(Unmasked::Ip(canonical)));
        }

        #[test]
        fn siv_round_trips_device_ids(id in "\\PC{0,40}") {
            let token = siv().mask_device_id(&id).unwrap();
            prop_assert!(token.as_str().len() <= 256);
            prop_assert!(Unmasker::new(&key()).unmask(token.as_str()) == Ok(Unmasked::DeviceId(id)));
        }
    }
}
