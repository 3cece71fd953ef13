//! Keys from the command line: `keygen`, and `unmask` of siv and ipcrypt tokens for key
//! holders only.

use base64::Engine as _;

use crate::harness::{key_file, sqs2pg, stderr};

#[test]
fn keygen_prints_a_fresh_32_byte_base64_key() {
    let keys: Vec<String> = (0..2)
        .map(|_| {
            let out = sqs2pg(&["keygen"], &[]);
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
        .collect();
    for k in &keys {
        let bytes = base64::engine::general_purpose::STANDARD.decode(k).unwrap();
        assert_eq!(bytes.len(), 32);
    }
    assert_ne!(keys[0], keys[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siv_masked_rows_unmask_for_key_holders_only() {
    let (db, queue) = crate::harness::fixture().await;
    let bodies = crate::harness::sample_bodies();
    queue.send(&bodies).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let mut args = crate::harness::args(&db, &queue, key_file(&key));
    args.ip.ip_mask = sqs2pg::mask::MaskMode::Siv;
    args.device_id_mask = sqs2pg::mask::MaskMode::Siv;
    let summary = crate::harness::drain(&args).await;
    assert_eq!(summary.loaded, 99);

    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    let row = db
        .client()
        .await
        .query_one(
            "SELECT masked_ip, masked_device_id FROM public.user_logins WHERE user_id = $1",
            &[&first["user_id"].as_str().unwrap()],
        )
        .await
        .unwrap();
    let (ip_token, device_token): (String, String) = (row.get(0), row.get(1));
    assert!(ip_token.contains(".s.") && !ip_token.contains(first["ip"].as_str().unwrap()));
    // Duplicates stay visible: the same device id gives the same token in every row.
    let same_device = crate::harness::count(
        &db,
        &format!(
            "SELECT count(*) FROM public.user_logins WHERE masked_device_id = '{device_token}'"
        ),
    )
    .await;
    let expected = bodies
        .iter()
        .filter(|b| b.contains(first["device_id"].as_str().unwrap()))
        .count() as i64;
    assert_eq!(same_device, expected);

    let out = sqs2pg(
        &["unmask", "--", &ip_token, &device_token],
        &[("SQS2PG_MASK_KEY", key.as_str())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("{ip_token}\tip {}", first["ip"].as_str().unwrap())),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{device_token}\tdevice_id {}",
            first["device_id"].as_str().unwrap()
        )),
        "{text}"
    );
    assert!(stderr(&out).contains("personal data"));

    // A query's result, unmasked.
    let user_id = first["user_id"].as_str().unwrap();
    let query = format!(
        "SELECT user_id, masked_ip, masked_device_id FROM public.user_logins WHERE user_id = '{user_id}'"
    );
    let env = [
        ("SQS2PG_MASK_KEY", key.as_str()),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let out = sqs2pg(&["unmask", "--query", &query], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "user_id\tmasked_ip\tmasked_device_id\n{user_id}\t{}\t{}\n",
            first["ip"].as_str().unwrap(),
            first["device_id"].as_str().unwrap()
        )
    );
    // ...and only ever read: neither a write, nor a second statement, nor a way out of the
    // read-only transaction gets through.
    for attack in [
        "DELETE FROM public.user_logins",
        "COMMIT; DELETE FROM public.user_logins",
        "SET TRANSACTION READ WRITE; DELETE FROM public.user_logins",
        "SELECT 1) AS x; COMMIT; DELETE FROM public.user_logins; SELECT * FROM (SELECT 1",
        "WITH d AS (DELETE FROM public.user_logins RETURNING 1) SELECT * FROM d",
    ] {
        let out = sqs2pg(&["unmask", "--query", attack], &env);
        assert_eq!(out.status.code(), Some(1), "{attack}: {}", stderr(&out));
    }
    assert_eq!(
        crate::harness::count(&db, "SELECT count(*) FROM public.user_logins").await,
        99
    );

    // Another key: refused, naming the key ids; an hmac token: refused as one-way.
    let other = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let out = sqs2pg(
        &["unmask", "--", &ip_token],
        &[("SQS2PG_MASK_KEY", other.as_str())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("written under key"),
        "{}",
        stderr(&out)
    );
    let masker = sqs2pg::login::Masker::new(&sqs2pg::keys::MaskKey::from_base64(&key).unwrap());
    let hmac = masker.mask_device_id("593-47-5928").unwrap();
    let out = sqs2pg(
        &["unmask", "--", hmac.as_str()],
        &[("SQS2PG_MASK_KEY", key.as_str())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("one-way"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipcrypt_masked_ips_are_addresses_in_the_table_and_unmask_with_the_mode() {
    for mode in [
        sqs2pg::mask::MaskMode::Ipcrypt,
        sqs2pg::mask::MaskMode::IpcryptPfx,
    ] {
        let (db, queue) = crate::harness::fixture().await;
        let bodies = crate::harness::sample_bodies();
        queue.send(&bodies[..20]).await;
        let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
        let mut args = crate::harness::args(&db, &queue, key_file(&key));
        args.ip.ip_mask = mode;
        crate::harness::drain(&args).await;
        let rows = db
            .client()
            .await
            .query("SELECT user_id, masked_ip FROM public.user_logins", &[])
            .await
            .unwrap();
        assert!(rows.len() >= 19, "{mode}");
        let originals: std::collections::HashMap<String, String> = bodies[..20]
            .iter()
            .filter_map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).ok()?;
                Some((
                    v["user_id"].as_str()?.to_owned(),
                    v["ip"].as_str()?.to_owned(),
                ))
            })
            .collect();
        let tokens: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
        for token in &tokens {
            assert!(
                token.parse::<std::net::IpAddr>().is_ok(),
                "{mode}: {token} is an address"
            );
        }
        let out = sqs2pg(
            &["unmask", "--ip-mask", &mode.to_string(), "--", &tokens[0]],
            &[("SQS2PG_MASK_KEY", key.as_str())],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let user: String = rows[0].get(0);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("ip {}", originals[&user])),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ip_mode: String =
            crate::harness::one(&db, "SELECT ip_mode FROM sqs2pg.mask_keys").await;
        assert_eq!(ip_mode, mode.to_string(), "the mode is on record");
    }
}
