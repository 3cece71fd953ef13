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
//! IP canonicalisation: the address is parsed, an IPv4-mapped IPv6 address (`::ffff:1.2.3.4`) is
//! turned into its IPv4 address, and the token is computed over the address bytes (4 for IPv4,
//! 16 for IPv6). So every spelling of one address (`::FFFF:1.2.3.4`, `0:0:0:0:0:ffff:102:304`,
//! `2001:DB8::1` vs `2001:db8:0::1`) gives one token.

use std::fmt;
use std::net::IpAddr;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

type HmacSha256 = Hmac<Sha256>;

/// The shortest key we accept, in bytes (256 bits, HMAC-SHA-256's security level).
pub const MIN_KEY_BYTES: usize = 32;

/// Why a key could not be loaded. Never carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not valid standard base64.
    #[error("the key is not valid base64 (make one with `sqs2pg keygen`)")]
    NotBase64,
    /// Decoded, but shorter than [`MIN_KEY_BYTES`].
    #[error("the key is {0} bytes long; at least {MIN_KEY_BYTES} are needed (make one with `sqs2pg keygen`)")]
    TooShort(usize),
}

/// The operator's masking key. Debug prints nothing of it; it is wiped from memory on drop.
#[derive(Clone)]
pub struct MaskKey(Zeroizing<Vec<u8>>);

impl MaskKey {
    /// Decodes a base64 key (surrounding whitespace, e.g. a file's trailing newline, is ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64)?;
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(bytes.len()));
        }
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// Fills `out` with the HKDF-SHA-256 subkey for `info`. Every use of the key goes through
    /// here with its own `info`, so no two purposes ever share key material.
    pub(crate) fn derive(&self, info: &[u8], out: &mut [u8]) {
        hkdf::Hkdf::<Sha256>::new(None, self.0.as_slice())
            .expand(info, out)
            .expect("subkeys are far below HKDF-SHA-256's output limit");
    }

    /// The short, public identifier of the key (8 base64url characters), derived from it.
    pub fn key_id(&self) -> String {
        let mut id_bytes = [0u8; 6];
        self.derive(INFO_KEY_ID, &mut id_bytes);
        URL_SAFE_NO_PAD.encode(id_bytes)
    }

    /// A fresh random key from the operating system, as base64 (what `sqs2pg keygen` prints).
    pub fn generate_base64() -> std::io::Result<String> {
        let mut bytes = [0u8; MIN_KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        let text = STANDARD.encode(bytes);
        bytes.zeroize();
        Ok(text)
    }
}

impl fmt::Debug for MaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaskKey(<redacted>)")
    }
}

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

/// Turns personal values into tokens under one key. Cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Masker {
    key_id: String,
    ip: HmacSha256,
    device_id: HmacSha256,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Which column a subkey is for; part of the HKDF `info`, so subkeys never coincide.
const INFO_IP: &[u8] = b"sqs2pg/v1/hmac/ip";
const INFO_DEVICE_ID: &[u8] = b"sqs2pg/v1/hmac/device_id";
const INFO_KEY_ID: &[u8] = b"sqs2pg/v1/key-id";

impl Masker {
    /// Derives the per-field subkeys and the key id from the operator's key.
    pub fn new(key: &MaskKey) -> Self {
        let subkey = |info: &[u8]| {
            let mut okm = Zeroizing::new([0u8; 32]);
            key.derive(info, okm.as_mut_slice());
            HmacSha256::new_from_slice(okm.as_slice()).expect("HMAC takes any key length")
        };
        Self {
            key_id: key.key_id(),
            ip: subkey(INFO_IP),
            device_id: subkey(INFO_DEVICE_ID),
        }
    }

    /// The short, public identifier of the key (8 base64url characters).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Masks an IP address after canonicalising it (see the module docs).
    pub fn mask_ip(&self, ip: IpAddr) -> MaskedToken {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.token(&self.ip, &v4.octets()),
            IpAddr::V6(v6) => self.token(&self.ip, &v6.octets()),
        }
    }

    /// Masks a device id exactly as sent (no normalisation: ids are opaque strings).
    pub fn mask_device_id(&self, device_id: &str) -> MaskedToken {
        self.token(&self.device_id, device_id.as_bytes())
    }

    fn token(&self, mac: &HmacSha256, value: &[u8]) -> MaskedToken {
        let mut mac = mac.clone();
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        let mut text = String::with_capacity(self.key_id.len() + 3 + 43);
        text.push_str(&self.key_id);
        text.push_str(".h.");
        URL_SAFE_NO_PAD.encode_string(digest, &mut text);
        MaskedToken(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    fn key(byte: u8) -> MaskKey {
        MaskKey(Zeroizing::new(vec![byte; 32]))
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
            ("593-47-5928", m.mask_device_id("593-47-5928")),
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
            m.mask_device_id("1.2.3.4").as_str().rsplit('.').next()
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
