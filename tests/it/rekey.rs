//! Key rotation from the command line: `rekey` re-encrypts siv tokens and ipcrypt addresses
//! in place, explains what hmac tokens cannot do, and works with key rings.

use crate::harness::{key_file, sqs2pg, stderr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_reencrypts_every_siv_token_in_place_and_explains_hmac() {
    let (db, queue) = crate::harness::fixture().await;
    let bodies = crate::harness::sample_bodies();
    queue.send(&bodies).await;
    let old_key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let new_key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let old_file = key_file(&old_key);
    let mut args = crate::harness::args(&db, &queue, old_file.clone());
    args.ip.ip_mask = sqs2pg::mask::MaskMode::Siv;
    args.device_id_mask = sqs2pg::mask::MaskMode::Siv;
    crate::harness::drain(&args).await;
    // Ten more rows under the old key in hmac mode: one-way, they cannot be re-keyed.
    let late: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"user_id": "hmac-{i}", "app_version": "1.0", "device_type": "ios", "ip": "10.9.9.{i}", "locale": null, "device_id": "999-00-000{i}"}}"#))
        .collect();
    queue.send(&late).await;
    let mut hmac = crate::harness::args(&db, &queue, old_file.clone());
    hmac.key_rotation_intended = true;
    crate::harness::drain(&hmac).await;

    let snapshot = |sql: &'static str| {
        let db = &db;
        async move { crate::harness::count(db, sql).await }
    };
    let distinct_before = (
        snapshot("SELECT count(DISTINCT masked_ip) FROM public.user_logins").await,
        snapshot("SELECT count(DISTINCT masked_device_id) FROM public.user_logins").await,
    );
    let rekey = |batch: &str| {
        sqs2pg(
            &[
                "rekey",
                "--from-key-file",
                old_file.to_str().unwrap(),
                "--batch-rows",
                batch,
            ],
            &[
                ("DATABASE_URL", db.url.as_str()),
                ("SQS2PG_MASK_KEY", new_key.as_str()),
            ],
        )
    };
    // One row holds its device token in masked_ip too (a bad copy): that row does not re-key,
    // the rest does, and rekey says so and fails.
    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    let first_user = first["user_id"].as_str().unwrap();
    let client = db.client().await;
    let good_ip: String = client
        .query_one(
            "SELECT masked_ip FROM public.user_logins WHERE user_id = $1",
            &[&first_user],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "UPDATE public.user_logins SET masked_ip = masked_device_id WHERE user_id = $1",
            &[&first_user],
        )
        .await
        .unwrap();
    let out = rekey("7");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("1 row(s) still hold siv tokens")
            && stderr(&out).contains("1 that do not re-key"),
        "{}",
        stderr(&out)
    );
    // Put the right token back: the rerun does just that row.
    client
        .execute(
            "UPDATE public.user_logins SET masked_ip = $2 WHERE user_id = $1",
            &[&first_user, &good_ip],
        )
        .await
        .unwrap();
    let out = rekey("7");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("2 token(s) in 1 row(s)"), "{text}");
    // The new key took over the old key's record (no false warning on the next run).
    let new_id_recorded = crate::harness::count(
        &db,
        &format!(
            "SELECT count(*) FROM sqs2pg.mask_keys WHERE key_id = '{}'",
            sqs2pg::keys::MaskKey::from_base64(&new_key)
                .unwrap()
                .key_id()
        ),
    )
    .await;
    assert_eq!(new_id_recorded, 1);
    assert!(
        text.contains("10 row(s) hold hmac tokens") && text.contains("cannot be re-keyed"),
        "{text}"
    );

    // Every siv token now belongs to the new key, rows and duplicates are as they were, and
    // the new key opens them to the original values.
    let new_id = sqs2pg::keys::MaskKey::from_base64(&new_key)
        .unwrap()
        .key_id();
    let new_prefix = format!("{new_id}.s.");
    let rows = db
        .client()
        .await
        .query(
            "SELECT user_id, masked_ip, masked_device_id FROM public.user_logins WHERE user_id NOT LIKE 'hmac-%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 99);
    let unmasker =
        sqs2pg::login::Unmasker::new(&sqs2pg::keys::MaskKey::from_base64(&new_key).unwrap());
    let originals: std::collections::HashMap<String, serde_json::Value> = bodies
        .iter()
        .filter_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).ok()?;
            Some((v["user_id"].as_str()?.to_owned(), v))
        })
        .collect();
    for row in &rows {
        let (user, ip, device): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert!(ip.starts_with(&new_prefix) && device.starts_with(&new_prefix));
        assert_eq!(
            unmasker.unmask(&ip).unwrap().value(),
            originals[&user]["ip"].as_str().unwrap()
        );
        assert_eq!(
            unmasker.unmask(&device).unwrap().value(),
            originals[&user]["device_id"].as_str().unwrap()
        );
    }
    assert_eq!(
        snapshot("SELECT count(*) FROM public.user_logins").await,
        109
    );
    assert_eq!(
        (
            snapshot("SELECT count(DISTINCT masked_ip) FROM public.user_logins").await,
            snapshot("SELECT count(DISTINCT masked_device_id) FROM public.user_logins").await,
        ),
        distinct_before,
        "duplicates are kept"
    );
    // Resumable and idempotent: nothing is left to do.
    let again = rekey("1000");
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 token(s) in 0 row(s)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_ring_rotates_keys_and_rekey_moves_siv_tokens_and_ipcrypt_addresses() {
    use sqs2pg::keys::KeyRing;
    use sqs2pg::login::Unmasker;
    use sqs2pg::mask::MaskMode;
    use std::os::unix::fs::PermissionsExt;
    let (db, queue) = crate::harness::fixture().await;
    let bodies = crate::harness::sample_bodies();
    queue.send(&bodies).await;
    let dir = std::env::temp_dir().join(crate::harness::unique("sqs2pg-ring"));
    std::fs::create_dir_all(&dir).unwrap();
    let ring = dir.join("ring.toml");
    let ring_path = ring.to_str().unwrap();
    let read_ring = || KeyRing::parse(&std::fs::read_to_string(&ring).unwrap()).unwrap();

    // keygen --ring makes the ring (mode 600) with its first key active, and prints only the id.
    let out = sqs2pg(&["keygen", "--ring", ring_path], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let k1 = read_ring().active_id().to_owned();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("added key {k1} to {ring_path}")
    );
    let k1_text = read_ring().keys()[0].key.clone();
    assert_eq!(
        std::fs::metadata(&ring).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Runs under K1: ip as ipcrypt addresses, device_id as siv tokens.
    let mut args = crate::harness::args(&db, &queue, dir.join("unused"));
    args.key.mask_key_file = None;
    args.key.mask_key_ring = Some(ring.clone());
    args.ip.ip_mask = MaskMode::Ipcrypt;
    args.device_id_mask = MaskMode::Siv;
    assert_eq!(crate::harness::drain(&args).await.loaded, 99);
    let snapshot = || async {
        let rows = db
            .client()
            .await
            .query(
                "SELECT user_id, masked_ip, masked_device_id FROM public.user_logins ORDER BY user_id, masked_ip, masked_device_id",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect::<Vec<(String, String, String)>>()
    };
    let before = snapshot().await;

    // A second key, made active; K1 stays in the ring, so its tokens still unmask.
    let out = sqs2pg(&["keygen", "--ring", ring_path, "--activate"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let k2 = read_ring().active_id().to_owned();
    assert_ne!(k1, k2);
    assert!(read_ring().get(&k1).is_some(), "K1 kept");
    let ring_env = [("SQS2PG_MASK_KEY_RING", ring_path)];
    let (_, ip1, device1) = &before[0];
    let out = sqs2pg(
        &[
            "unmask",
            "--ip-mask",
            "ipcrypt",
            "--key-id",
            &k1,
            "--",
            ip1,
            device1,
        ],
        &ring_env,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let first_user = &before[0].0;
    let original: serde_json::Value = bodies
        .iter()
        .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap())
        .find(|v| v["user_id"].as_str() == Some(first_user))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("{ip1}\tip {}", original["ip"].as_str().unwrap()))
            && text.contains(&format!(
                "{device1}\tdevice_id {}",
                original["device_id"].as_str().unwrap()
            )),
        "{text}"
    );

    // rekey --from K1 moves both the siv tokens and the addresses to the active key (K2).
    let env = [
        ("SQS2PG_MASK_KEY_RING", ring_path),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let out = sqs2pg(&["rekey", "--from", &k1, "--batch-rows", "40"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("99 row(s) with ipcrypt addresses re-encrypted")
            && text.contains("99 token(s) in 99 row(s)"),
        "{text}"
    );
    let after = snapshot().await;
    assert_eq!(after.len(), before.len());
    let k2_only = Unmasker::for_ring(
        &KeyRing::single(read_ring().get(&k2).unwrap().clone()),
        MaskMode::Ipcrypt,
        None,
    )
    .unwrap();
    let k1_only = Unmasker::with_ip_mode(&k1_text, MaskMode::Ipcrypt);
    for ((user, old_ip, old_device), (same_user, ip, device)) in before.iter().zip(&after) {
        assert_eq!(user, same_user);
        assert_ne!(old_ip, ip, "every address changed");
        assert!(device.starts_with(&format!("{k2}.s.")), "{device}");
        assert_eq!(
            k2_only.unmask(ip).unwrap().value(),
            k1_only.unmask(old_ip).unwrap().value()
        );
        assert_eq!(
            k2_only.unmask(device).unwrap().value(),
            k1_only.unmask(old_device).unwrap().value()
        );
    }
    let distinct = |rows: &[(String, String, String)]| {
        let ips: std::collections::HashSet<&String> = rows.iter().map(|r| &r.1).collect();
        let devices: std::collections::HashSet<&String> = rows.iter().map(|r| &r.2).collect();
        (ips.len(), devices.len())
    };
    assert_eq!(distinct(&before), distinct(&after), "duplicates are kept");
    let records = db
        .client()
        .await
        .query(
            "SELECT key_id, ip_mode, device_id_mode, coalesce(retired_to, '-') FROM sqs2pg.mask_keys ORDER BY key_id",
            &[],
        )
        .await
        .unwrap();
    let records: std::collections::HashMap<String, (String, String, String)> = records
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    assert_eq!(
        records[&k2],
        ("ipcrypt".into(), "siv".into(), "-".into()),
        "K2 takes over K1's modes"
    );
    assert_eq!(records[&k1], ("ipcrypt".into(), "siv".into(), k2.clone()));

    // K1 is retired on this table: a run under it again is refused before it touches a
    // message, naming the key to use.
    let k1_file = {
        let text = std::fs::read_to_string(&ring).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("key = "))
            .unwrap()
            .to_owned();
        key_file(line.trim_start_matches("key = ").trim_matches('"'))
    };
    queue.send(&bodies[..1]).await;
    let mut old_key_run = crate::harness::args(&db, &queue, k1_file);
    old_key_run.ip.ip_mask = MaskMode::Ipcrypt;
    old_key_run.device_id_mask = MaskMode::Siv;
    let settings = sqs2pg::config::pipeline(&old_key_run, sqs2pg::pipeline::Mode::Drain).unwrap();
    let e = sqs2pg::app::process(settings, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("{k1} was retired")) && e.contains(&format!("run with key {k2}")),
        "{e}"
    );
    assert_eq!(
        snapshot().await,
        after,
        "nothing written under the retired key"
    );

    // While a run writes to the table (it holds the writers lock shared), rekey refuses.
    let run = db.client().await;
    run.execute(
        "SELECT pg_advisory_lock_shared(hashtext('sqs2pg.writers:' || 'public.user_logins'))",
        &[],
    )
    .await
    .unwrap();
    let out = sqs2pg(&["rekey", "--from", &k2, "--to", &k1], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("runs are writing"),
        "{}",
        stderr(&out)
    );
    drop(run);

    // Done exactly once: a rerun (as after a crash) re-encrypts nothing a second time.
    let out = sqs2pg(&["rekey", "--from", &k1], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 token(s) in 0 row(s)")
            && !String::from_utf8_lossy(&out.stdout).contains("addresses"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(snapshot().await, after);

    // Addresses written under two modes (or keys) cannot be told apart: once K2 has also
    // written ipcrypt-pfx addresses, rekey refuses, says the order to rotate in, and changes
    // nothing.
    queue.send(&bodies[1..2]).await;
    let mut pfx = args.clone();
    pfx.ip.ip_mask = MaskMode::IpcryptPfx;
    crate::harness::drain(&pfx).await;
    let after = snapshot().await;
    let out = sqs2pg(&["rekey", "--from", &k2, "--to", &k1], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("more than one key or mode")
            && stderr(&out).contains(&format!("{k2} (ipcrypt-pfx)"))
            && stderr(&out).contains("stop the runs, rekey, then start"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot().await, after);

    // keygen refuses while another keygen's FILE.new exists, and keeps the ring as it was.
    let pending = dir.join("ring.toml.new");
    std::fs::write(&pending, "").unwrap();
    let out = sqs2pg(&["keygen", "--ring", ring_path], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("another keygen"), "{}", stderr(&out));
    assert_eq!(read_ring().keys().len(), 2);
    std::fs::remove_file(&pending).unwrap();

    // The malformed sample body was sealed under K1; with K2 active the ring still opens it.
    let rejected: String =
        crate::harness::one(&db, "SELECT message_id FROM sqs2pg.rejected_messages").await;
    let out = sqs2pg(&["rejects", "show", &rejected], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(bodies.contains(&shown), "{shown}");

    // A ring others can read is refused by every command, naming the fix.
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o640)).unwrap();
    for command in [
        vec!["keygen", "--ring", ring_path],
        vec!["unmask", "--", device1.as_str()],
    ] {
        let out = sqs2pg(&command, &ring_env);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    }
    // No key material in anything printed.
    let ring_text = std::fs::read_to_string(&ring).unwrap();
    for line in ring_text.lines().filter(|l| l.starts_with("key = ")) {
        let key = line.trim_start_matches("key = ").trim_matches('"');
        assert!(!text.contains(key) && !stderr(&out).contains(key));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
