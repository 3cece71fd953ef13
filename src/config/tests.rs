//! Unit tests of `config`.

use super::*;

#[test]
fn key_sources_are_exclusive_and_named() {
    let e = mask_key(None, None).unwrap_err().to_string();
    assert!(e.contains("SQS2PG_MASK_KEY") && e.contains("keygen"), "{e}");
    let e = mask_key(Some("x"), Some(Path::new("/k")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("keep only one"), "{e}");
    let e = mask_key(Some("c2hvcnQ="), None).unwrap_err().to_string();
    assert!(
        e.contains("SQS2PG_MASK_KEY") && e.contains("5 bytes"),
        "{e}"
    );
}

#[test]
fn drain_needs_a_long_poll() {
    use super::args::DatabaseArgs;
    let args = PipelineArgs {
        database: DatabaseArgs {
            connection: crate::config::args::ConnectionArgs {
                database_url: Some("postgres://u@localhost/db".into()),
            },
            table: "user_logins".into(),
            mapping_file: crate::config::args::MappingFileArgs::default(),
        },
        queue: QueueArgs {
            queue_url: Some("http://localhost:4566/000000000000/q".into()),
            endpoint_url: None,
            sqs_protocol: crate::sqs::Protocol::Auto,
        },
        key: KeyArgs {
            mask_key: Some("A".repeat(44).parse().unwrap()),
            mask_key_file: None,
            mask_key_ring: None,
        },
        receivers: DEFAULT_RECEIVERS,
        loaders: DEFAULT_LOADERS,
        wait_time_secs: 0,
        visibility_timeout_secs: None,
        batch_max_rows: DEFAULT_BATCH_MAX_ROWS,
        batch_max_age_ms: DEFAULT_BATCH_MAX_AGE_MS,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        max_attempts: DEFAULT_MAX_ATTEMPTS,
        max_receive_count: DEFAULT_MAX_RECEIVE_COUNT,
        max_crashes: DEFAULT_MAX_CRASHES,
        ledger_retention_days: DEFAULT_LEDGER_RETENTION_DAYS,
        shutdown_timeout_secs: DEFAULT_SHUTDOWN_TIMEOUT_SECS,
        max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
        max_in_flight_messages: DEFAULT_MAX_IN_FLIGHT_MESSAGES,
        metrics_addr: None,
        ip: crate::config::args::IpMaskArgs {
            ip_mask: crate::mask::MaskMode::Hmac,
        },
        device_id_mask: crate::mask::MaskMode::Hmac,
        key_rotation_intended: false,
    };
    let e = pipeline(&args, Mode::Drain).unwrap_err().to_string();
    assert!(
        e.contains("--wait-time-secs (SQS2PG_WAIT_TIME_SECS)"),
        "{e}"
    );
    let run = pipeline(&args, Mode::Run).unwrap();
    assert_eq!(
        run.pipeline.load_retry.max_attempts, None,
        "run retries forever"
    );
    let short_ledger = PipelineArgs {
        wait_time_secs: 1,
        ledger_retention_days: 28,
        ..args.clone()
    };
    let e = pipeline(&short_ledger, Mode::Run).unwrap_err().to_string();
    assert!(
        e.contains("--ledger-retention-days (SQS2PG_LEDGER_RETENTION_DAYS)"),
        "{e}"
    );
    let drain = pipeline(
        &PipelineArgs {
            wait_time_secs: 1,
            ..args
        },
        Mode::Drain,
    )
    .unwrap();
    assert_eq!(
        drain.pipeline.load_retry.max_attempts,
        Some(DEFAULT_MAX_ATTEMPTS)
    );
    assert_eq!(drain.ledger_retention, Duration::from_secs(30 * 86_400));
}

#[test]
fn queue_url_is_checked() {
    let args = |u: &str| QueueArgs {
        queue_url: Some(u.into()),
        endpoint_url: None,
        sqs_protocol: crate::sqs::Protocol::Query,
    };
    let ok = queue(&args("http://localhost:4566/000000000000/login-queue")).unwrap();
    assert_eq!(ok.protocol, crate::sqs::Protocol::Query);
    assert_eq!(
        queue(&args("login-queue")).unwrap().queue_url,
        "login-queue"
    );
    for bad in ["login queue", "ftp://x/y", "http://localhost:4566", "q/x"] {
        let e = queue(&args(bad)).unwrap_err().to_string();
        assert!(e.contains("SQS2PG_QUEUE_URL"), "{bad}: {e}");
    }
    let e = queue(&QueueArgs {
        queue_url: None,
        endpoint_url: None,
        sqs_protocol: crate::sqs::Protocol::Auto,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("is not set"), "{e}");
}

#[test]
fn every_declared_file_key_has_its_value_and_secrets_are_hidden() {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct Run {
        #[command(flatten)]
        args: PipelineArgs,
    }
    let run = Run::try_parse_from([
        "run",
        "--database-url",
        "postgres://u:s3cret@h/db",
        "--receivers",
        "7",
        "--mask-key-file",
        "/k",
    ])
    .unwrap();
    let settings = run.args.file_settings();
    assert_eq!(settings.len(), PipelineArgs::FILE_KEYS.len());
    let value = |group: &[setting::FileSetting], key: &str| {
        group
            .iter()
            .find(|s| s.key.key == key)
            .map(|s| s.value.clone())
    };
    use setting::FileText::{Bare, Quoted};
    assert_eq!(value(&settings, "receivers"), Some(Some(Bare("7".into()))));
    assert_eq!(
        value(&run.args.ip.file_settings(), "ip_mask"),
        Some(Some(Quoted("hmac".into())))
    );
    assert_eq!(value(&settings, "visibility_timeout_secs"), Some(None));
    let database = run.args.database.connection.file_settings();
    assert_eq!(
        value(&database, "url"),
        Some(Some(Quoted("postgres://u:****@h/db".into())))
    );
    let key = run.args.key.file_settings();
    assert_eq!(value(&key, "key_file"), Some(Some(Quoted("/k".into()))));
    // The key itself has no file key, so it can never be printed from the file's settings.
    assert!(args::file_keys().all(|k| k.id != "mask_key"));
    // Every file key names a real setting, once.
    let mut ids: Vec<&str> = args::file_keys().map(|k| k.id).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before);
}

#[test]
fn every_setting_a_message_names_is_declared_and_named_as_declared() {
    // The checks name settings by id (`args::flag("receivers")`, `range("receivers", ...)`);
    // an id that is not declared would only panic on that error's path, so every one is
    // resolved here.
    let source = include_str!("mod.rs");
    let mut ids = Vec::new();
    for marker in ["args::flag(\"", "args::variable(\""] {
        for part in source.split(marker).skip(1) {
            ids.push(part.split('"').next().unwrap().to_owned());
        }
    }
    for part in source.split("range(\n").skip(1) {
        ids.push(
            part.trim_start()
                .trim_start_matches('"')
                .split('"')
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(ids.len() >= 25, "{ids:?}");
    for id in &ids {
        let named = args::flag(id);
        let (flag, variable) = named.split_once(" (").unwrap();
        assert_eq!(flag, format!("--{}", id.replace('_', "-")), "{id}");
        assert!(
            variable.ends_with(')') && variable.len() > 2,
            "{id}: {named}"
        );
    }
    assert_eq!(args::flag("receivers"), "--receivers (SQS2PG_RECEIVERS)");
    assert_eq!(
        args::variable("database_url"),
        "DATABASE_URL (--database-url)"
    );
}

#[test]
fn a_directory_of_mappings_is_read_in_name_order_and_one_table_has_one_mapping() {
    let dir = std::env::temp_dir().join(format!("sqs2pg-mappings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mapping = |table: &str| {
        format!(
            "table = \"{table}\"\ncolumns = [{{ name = \"a\", from = \"/a\", type = \"text\" }}]\n"
        )
    };
    std::fs::write(dir.join("20-b.toml"), mapping("public.b")).unwrap();
    std::fs::write(dir.join("10-a.toml"), mapping("public.a")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a mapping").unwrap();
    let read = super::mapping_files(std::slice::from_ref(&dir)).unwrap();
    let tables: Vec<&str> = read.iter().map(|(_, m)| m.table.as_str()).collect();
    assert_eq!(tables, ["public.a", "public.b"]);
    // The same table twice: refused, naming both files.
    std::fs::write(dir.join("30-a-again.toml"), mapping("public.a")).unwrap();
    let args = super::args::DatabaseArgs {
        connection: super::args::ConnectionArgs {
            database_url: Some("postgres://u@localhost/db".into()),
        },
        table: super::DEFAULT_TABLE.into(),
        mapping_file: super::args::MappingFileArgs {
            mapping: vec![dir.clone()],
        },
    };
    let e = super::target(&args).unwrap_err().to_string();
    assert!(
        e.contains("10-a.toml") && e.contains("30-a-again.toml") && e.contains("public.a"),
        "{e}"
    );
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = super::mapping_files(&[empty]).unwrap_err().to_string();
    assert!(e.contains("without mapping files"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
