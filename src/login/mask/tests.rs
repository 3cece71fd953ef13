//! Unit tests of `login::mask` (and, through it, of `crate::mask`).

use super::*;
use crate::keys::KeyError;
use crate::mask::{UnmaskError, SIV_MAX_VALUE_BYTES};
use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use base64::engine::general_purpose::STANDARD;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::Digest;
use zeroize::Zeroizing;

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
    let ring = crate::keys::KeyRing::parse(&format!(
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
    assert!(from.rekey(&to, token.as_str()).unwrap() == new.mask_device_id("593-47-5928").unwrap());
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
    key(5).derive(b"sqs2pg/v1/siv/ip", wrong_field.as_mut_slice());
    assert!(Aes256Siv::new(wrong_field.as_slice().into())
        .decrypt([b"device_id"], &sealed)
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
