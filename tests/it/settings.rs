//! Settings as a user meets them: a missing or bad one fails at start naming it, a config
//! file under environment and flags, secrets never printed, logs as JSON lines.

use crate::harness::{key_file, sqs2pg, stderr};

#[test]
fn missing_or_bad_settings_fail_at_start_naming_the_setting() {
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let db = "postgres://postgres@127.0.0.1:1/x?sslmode=disable";
    let q = "http://127.0.0.1:1/000000000000/q";
    /// (environment, extra flags, text the error must contain)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        (&[], &[], "DATABASE_URL"),
        (&[("DATABASE_URL", db)], &[], "SQS2PG_QUEUE_URL"),
        (
            &[("DATABASE_URL", db), ("SQS2PG_QUEUE_URL", "not a url")],
            &[],
            "SQS2PG_QUEUE_URL",
        ),
        (
            &[("DATABASE_URL", db), ("SQS2PG_QUEUE_URL", q)],
            &[],
            "sqs2pg keygen",
        ),
        (
            &[
                ("DATABASE_URL", db),
                ("SQS2PG_QUEUE_URL", q),
                ("SQS2PG_MASK_KEY", "c2hvcnQ="),
            ],
            &[],
            "SQS2PG_MASK_KEY",
        ),
        (
            &[
                ("DATABASE_URL", "mysql://x"),
                ("SQS2PG_QUEUE_URL", q),
                ("SQS2PG_MASK_KEY", &key),
            ],
            &[],
            "DATABASE_URL",
        ),
        (
            &[
                ("DATABASE_URL", db),
                ("SQS2PG_QUEUE_URL", q),
                ("SQS2PG_MASK_KEY", &key),
            ],
            &["--wait-time-secs", "30"],
            "--wait-time-secs (SQS2PG_WAIT_TIME_SECS)",
        ),
        (
            &[
                ("DATABASE_URL", db),
                ("SQS2PG_QUEUE_URL", q),
                ("SQS2PG_MASK_KEY", &key),
            ],
            &["--table", "a.b.c"],
            "--table",
        ),
    ];
    for (env, extra, expected) in cases {
        let mut args = vec!["drain"];
        args.extend_from_slice(extra);
        let out = sqs2pg(&args, env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{env:?} {extra:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(expected), "{env:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains(&key), "the key was printed");
    }

    // A key file readable by others is refused with the fix.
    let path = key_file(&key);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = sqs2pg(
        &["drain", "--mask-key-file", path.to_str().unwrap()],
        &[("DATABASE_URL", db), ("SQS2PG_QUEUE_URL", q)],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}

#[test]
fn a_config_file_is_overridden_by_environment_and_flags() {
    let dir = std::env::temp_dir().join(crate::harness::unique("config"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sqs2pg.toml");
    std::fs::write(
        &file,
        "[database]\nurl = \"postgres://u:s3cret@db.example/x\"\n[pipeline]\nreceivers = 3\nbatch_max_rows = 200\n",
    )
    .unwrap();
    let print = |env: &[(&str, &str)], flags: &[&str]| {
        let mut args = vec!["--config", file.to_str().unwrap(), "config", "print"];
        args.extend_from_slice(flags);
        let out = sqs2pg(&args, env);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let from_file = print(&[], &[]);
    assert!(
        from_file.contains("receivers = 3\n") && from_file.contains("batch_max_rows = 200\n"),
        "{from_file}"
    );
    assert!(
        from_file.contains("postgres://u:****@db.example/x"),
        "{from_file}"
    );
    assert!(
        !from_file.contains("s3cret"),
        "the password is never printed"
    );
    let from_env = print(&[("SQS2PG_RECEIVERS", "5")], &[]);
    assert!(
        from_env.contains("receivers = 5\n") && from_env.contains("batch_max_rows = 200\n"),
        "{from_env}"
    );
    let from_flag = print(&[("SQS2PG_RECEIVERS", "5")], &["--receivers", "7"]);
    assert!(from_flag.contains("receivers = 7\n"), "{from_flag}");
    // The printed settings are a valid file themselves.
    std::fs::write(dir.join("printed.toml"), &from_flag).unwrap();
    let again = sqs2pg(
        &[
            "--config",
            dir.join("printed.toml").to_str().unwrap(),
            "config",
            "print",
        ],
        &[],
    );
    assert!(again.status.success(), "{}", stderr(&again));

    // An unknown key stops everything at start, naming the key and the file.
    std::fs::write(&file, "[pipeline]\nrecievers = 3\n").unwrap();
    let out = sqs2pg(&["--config", file.to_str().unwrap(), "drain"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("recievers") && stderr(&out).contains("sqs2pg.toml"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_command_prints_the_database_password() {
    // The password in the URL's user part (from the file) and as a parameter (from the
    // environment); nothing listens on the port, so every command that connects fails.
    let port = crate::harness::free_port();
    let dir = std::env::temp_dir().join(crate::harness::unique("secret"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sqs2pg.toml");
    std::fs::write(
        &file,
        format!(
            "[database]\nurl = \"postgres://app:Fi1e-pa55word@127.0.0.1:{port}/db?sslmode=disable\"\n"
        ),
    )
    .unwrap();
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let config = file.to_str().unwrap();
    let in_env =
        format!("postgres://app@127.0.0.1:{port}/db?sslmode=disable&password=Env-pa55word");
    let base: Vec<(&str, &str)> = vec![
        ("SQS2PG_QUEUE_URL", "http://127.0.0.1:9/000000000000/q"),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_MAX_ATTEMPTS", "1"),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
    ];
    let with_url: Vec<(&str, &str)> = base
        .iter()
        .copied()
        .chain([("DATABASE_URL", in_env.as_str())])
        .collect();
    let mut commands: Vec<Vec<&str>> = ["drain", "run", "check", "setup", "report", "rekey"]
        .iter()
        .map(|c| vec!["--config", config, c, "--help"])
        .collect();
    commands.push(vec!["--config", config, "--help"]);
    commands.push(vec!["--config", config, "rejects", "list", "--help"]);
    commands.push(vec!["--config", config, "config", "print"]);
    for failing in ["setup", "check", "drain", "report"] {
        commands.push(vec!["--config", config, failing]);
    }
    for env in [&base, &with_url] {
        for args in &commands {
            let out = sqs2pg(args, env);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!text.is_empty(), "{args:?} printed nothing");
            for password in ["Fi1e-pa55word", "Env-pa55word"] {
                assert!(
                    !text.contains(password),
                    "{args:?} printed a password:\n{text}"
                );
            }
        }
    }
    // The failing commands did fail (so their errors were seen), and help still says where
    // the setting comes from.
    let out = sqs2pg(&["--config", config, "setup"], &base);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let help = sqs2pg(&["--config", config, "drain", "--help"], &base);
    assert!(String::from_utf8_lossy(&help.stdout).contains("--database-url"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let out = sqs2pg(
        &["--log-format", "json", "drain"],
        &[
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/x?sslmode=disable",
            ),
            ("SQS2PG_QUEUE_URL", "http://127.0.0.1:1/000000000000/q"),
            ("SQS2PG_MASK_KEY", &key),
            ("SQS2PG_MAX_ATTEMPTS", "2"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let retry = events
        .iter()
        .find(|e| e["fields"]["message"] == "cannot read the queue's visibility timeout; retrying")
        .unwrap_or_else(|| panic!("no retry event in {text}"));
    assert_eq!(retry["level"], "WARN");
    assert_eq!(retry["fields"]["attempt"], 1);
}

#[test]
fn several_mappings_come_from_repeated_flags_commas_and_the_file() {
    use clap::{CommandFactory, FromArgMatches};
    use sqs2pg::cli::{Cli, Command};
    let mappings = |command: clap::Command, args: &[&str]| {
        let matches = command
            .try_get_matches_from(["sqs2pg", "drain"].iter().chain(args))
            .unwrap();
        match Cli::from_arg_matches(&matches).unwrap().command {
            Command::Drain(args) => args.database.mapping_file.mapping,
            _ => unreachable!("drain"),
        }
    };
    let paths = |names: &[&str]| -> Vec<std::path::PathBuf> {
        names.iter().map(std::path::PathBuf::from).collect()
    };
    assert_eq!(
        mappings(
            Cli::command(),
            &["--mapping", "a.toml", "--mapping", "b.toml"]
        ),
        paths(&["a.toml", "b.toml"])
    );
    assert_eq!(
        mappings(Cli::command(), &["--mapping", "a.toml,b.toml"]),
        paths(&["a.toml", "b.toml"])
    );
    assert!(mappings(Cli::command(), &[]).is_empty());
    // The file's list becomes the flag's default, split the same way; a flag replaces it.
    let file =
        sqs2pg::config::file::FileSettings::parse("[mapping]\nfile = [\"x.toml\", \"y.toml\"]\n")
            .unwrap();
    let with_file = || sqs2pg::config::file::apply(Cli::command(), &file.defaults());
    assert_eq!(mappings(with_file(), &[]), paths(&["x.toml", "y.toml"]));
    assert_eq!(
        mappings(with_file(), &["--mapping", "a.toml"]),
        paths(&["a.toml"])
    );
    let e = sqs2pg::config::file::FileSettings::parse("[mapping]\nfile = [1]\n").unwrap_err();
    assert!(e.contains("a string or a list of strings"), "{e}");
}
