//! Fuzz target over the whole pure transform (size check, parse, validate, mask): no input may
//! panic, and whatever is accepted must fit the analysts' columns.
//!
//!     cargo fuzz run transform fuzz/corpus/transform fuzz/seeds/transform -- -max_total_time=600

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sqs2pg::login::{transform, Masker};
use sqs2pg::keys::MaskKey;

static MASKER: OnceLock<Masker> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let masker = MASKER
        .get_or_init(|| Masker::new(&MaskKey::from_base64(&"A".repeat(44)).expect("valid key")));
    let t = transform(masker, 256 * 1024, body, 1_700_000_000_000);
    match t.outcome {
        Ok(row) => {
            assert!(row.user_id.chars().count() <= 128);
            assert!(row.device_type.chars().count() <= 32);
            assert!(row.locale.as_ref().is_none_or(|l| l.chars().count() <= 32));
            assert!(row.masked_ip.as_str().len() <= 256);
            assert!(row.masked_device_id.as_str().len() <= 256);
            assert!(!row.user_id.contains('\0') && !row.device_type.contains('\0'));
            assert!(row.app_version >= 0);
        }
        Err(rejection) => assert!(!rejection.reason.to_string().is_empty()),
    }
});
