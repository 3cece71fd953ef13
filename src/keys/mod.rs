//! The operator's keys and what is derived from them for the whole machinery, whatever the
//! message kind: the masking key (`MaskKey`; every use goes through an HKDF subkey of its own),
//! key rings (`ring`: one key, or a file of several with one active), and the sealing of
//! quarantined bodies (`seal`). A leaf: it names nothing of ours. Masks (tokens per column)
//! are in the `mask` module, which builds on these keys.

pub mod ring;
pub mod seal;

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

pub use ring::{KeyRing, KeyText, RingKey};
pub use seal::{BodySealer, SealedBody};

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
pub struct MaskKey(pub(crate) Zeroizing<Vec<u8>>);

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
        self.derive(b"sqs2pg/v1/key-id", &mut id_bytes);
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
