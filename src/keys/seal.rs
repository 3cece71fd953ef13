//! Sealing quarantined bodies: the raw body of a rejected message is kept, encrypted, so key
//! holders can inspect or replay it and nobody else can read it.
//!
//! Cipher: AES-256-SIV (RustCrypto `aes-siv`) with a random 16-byte nonce and the SQS message id
//! as associated data, under a 512-bit subkey that HKDF derives from the masking key for this
//! purpose only. SIV stays safe even if a nonce were ever repeated (it would only reveal that
//! two sealed bodies are equal), so there is no per-key message limit to track, unlike GCM's
//! 2^32 random nonces. The message id as associated data means a sealed body cannot be moved to
//! another message's row and still open.
//!
//! Layout: `version (1 byte, = 1) || nonce (16) || ciphertext || tag (16)`.

use std::fmt;
use std::sync::Arc;

use aes_siv::aead::{Aead, KeyInit, Payload};
use aes_siv::{Aes256SivAead, Nonce};
use zeroize::Zeroizing;

use super::MaskKey;

const INFO_SEAL_BODY: &[u8] = b"sqs2pg/v1/seal/body";
const VERSION: u8 = 1;
const NONCE_BYTES: usize = 16;

/// An encrypted body, as stored in `sqs2pg.rejected_messages.body_sealed`.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBody(Vec<u8>);

impl SealedBody {
    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SealedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedBody({} bytes)", self.0.len())
    }
}

/// Why a sealed body could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("sealed with an unknown format version")]
    UnknownVersion,
    #[error(
        "not sealed under this key for this message (wrong key, wrong message id, or damaged)"
    )]
    Rejected,
}

/// Seals and opens bodies under one masking key. Cheap to clone.
#[derive(Clone)]
pub struct BodySealer {
    key_id: String,
    cipher: Arc<Aes256SivAead>,
}

impl fmt::Debug for BodySealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySealer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl BodySealer {
    /// Derives the sealing subkey from the masking key.
    pub fn new(key: &MaskKey) -> Self {
        let mut subkey = Zeroizing::new([0u8; 64]);
        key.derive(INFO_SEAL_BODY, subkey.as_mut_slice());
        Self {
            key_id: key.key_id(),
            cipher: Arc::new(
                Aes256SivAead::new_from_slice(subkey.as_slice())
                    .expect("AES-256-SIV takes a 64-byte key"),
            ),
        }
    }

    /// The public id of the key bodies are sealed under (same as the masking key's).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encrypts `body`, bound to `message_id`.
    pub fn seal(&self, message_id: &str, body: &str) -> SealedBody {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).expect("the operating system provides randomness");
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: body.as_bytes(),
                    aad: message_id.as_bytes(),
                },
            )
            .expect("AES-SIV encryption cannot fail for in-memory input");
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        SealedBody(out)
    }

    /// Decrypts a body sealed by [`BodySealer::seal`] under the same key and message id.
    pub fn open(&self, message_id: &str, sealed: &[u8]) -> Result<String, OpenError> {
        let (&version, rest) = sealed.split_first().ok_or(OpenError::UnknownVersion)?;
        if version != VERSION || rest.len() < NONCE_BYTES {
            return Err(OpenError::UnknownVersion);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: message_id.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Rejected)?;
        // Sealed from a &str, so valid UTF-8 unless forged, which the tag already excludes.
        String::from_utf8(plain).map_err(|_| OpenError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> BodySealer {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        BodySealer::new(&MaskKey::from_base64(&key).unwrap())
    }

    #[test]
    fn round_trip_bound_to_key_and_message() {
        let body = r#"{"ip": "199.172.111.135", "device_id": "593-47-5928"}"#;
        let s = sealer(1);
        let sealed = s.seal("m-1", body);
        assert_eq!(s.open("m-1", sealed.as_bytes()).unwrap(), body);
        // Nothing of the body shows in the sealed bytes.
        let text = String::from_utf8_lossy(sealed.as_bytes());
        assert!(!text.contains("199.172") && !text.contains("593-47"));
        // Random nonce: sealing twice gives different bytes.
        assert_ne!(s.seal("m-1", body), sealed);
        assert_eq!(s.open("m-2", sealed.as_bytes()), Err(OpenError::Rejected));
        assert_eq!(
            sealer(2).open("m-1", sealed.as_bytes()),
            Err(OpenError::Rejected)
        );
        let mut damaged = sealed.as_bytes().to_vec();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(s.open("m-1", &damaged), Err(OpenError::Rejected));
        assert_eq!(s.open("m-1", &[]), Err(OpenError::UnknownVersion));
        assert_eq!(s.key_id(), sealer(1).key_id());
    }
}
