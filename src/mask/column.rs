//! One column's mask under a scope ([`ColumnMask`]): the login pipeline's fields, a mapping's
//! columns, `rekey` and `unmask` all mask through it.

use std::fmt;
use std::net::IpAddr;

use std::sync::Arc;

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::Mac;
use zeroize::Zeroizing;

use super::*;
use crate::keys::MaskKey;

/// One column's mask under a *scope*. The scope names the subkeys (`sqs2pg/v1/{mode}/{scope}`) and is the associated
/// data of `siv` tokens, so columns that share a scope give equal tokens for equal values (they
/// can be joined) and columns with different scopes never do. The login fields are the scopes
/// `ip` and `device_id`: under them a mapping column's tokens are the login pipeline's, byte for
/// byte.
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

    /// Masks an IP address after canonicalising it, as the module docs say.
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
