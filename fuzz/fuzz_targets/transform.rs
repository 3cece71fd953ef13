//! Fuzz target over the login kind's whole pure transform (the mapping engine on the built-in
//! mapping: read, check, mask): no input may panic, and whatever is accepted must fit the
//! analysts' columns.
//!
//!     cargo fuzz run transform fuzz/corpus/transform fuzz/seeds/transform -- -max_total_time=600

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sqs2pg::keys::MaskKey;
use sqs2pg::kind::Message;
use sqs2pg::login::{LoginKind, MaskModes};
use sqs2pg::mapping::Value;

static LOGIN: OnceLock<LoginKind> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let login = LOGIN.get_or_init(|| {
        let key = MaskKey::from_base64(&"A".repeat(44)).expect("valid key");
        LoginKind::new(&key, MaskModes::default())
    });
    match login.mapper().apply(&Message::new(body, "m-1", 1_700_000_000_000)) {
        Ok(rows) => {
            assert_eq!(rows.len(), 1);
            let text: Vec<Option<String>> = rows[0].values().iter().map(Value::to_text).collect();
            let chars = |i: usize| text[i].as_ref().map_or(0, |t| t.chars().count());
            // user_id, device_type, masked_ip, masked_device_id, locale, app_version.
            for (i, max) in [(0, 128), (1, 32), (2, 256), (3, 256), (4, 32)] {
                assert!(chars(i) <= max);
                assert!(!text[i].as_ref().is_some_and(|t| t.contains('\0')));
            }
            assert!(text[5].as_ref().is_some_and(|v| v.parse::<i32>().is_ok_and(|v| v >= 0)));
        }
        Err(rejection) => assert!(!rejection.reason.is_empty()),
    }
});
