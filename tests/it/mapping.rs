//! `sqs2pg mapping check` and `sqs2pg mapping preview`, run as a user runs them, on the
//! example mappings.

use crate::harness::{key_file, sqs2pg, stderr};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_example_mapping_checks_and_a_mistake_names_its_line_and_key() {
    let mut checked = 0;
    for entry in std::fs::read_dir("examples/mappings").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let o = sqs2pg(&["mapping", "check", path.to_str().unwrap()], &[]);
            assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
            checked += 1;
        }
    }
    assert!(checked >= 2, "{checked} example mappings");
    let dir = std::env::temp_dir().join(crate::harness::unique("sqs2pg-mapping"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "table = \"public.t\"\n\n[[columns]]\nname = \"a\"\nfrom = \"/a\"\ntype = \"integer\"\nrequird = true\n",
    )
    .unwrap();
    let o = sqs2pg(&["mapping", "check", bad.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "a configuration mistake");
    let e = stderr(&o);
    assert!(e.contains("line 7") && e.contains("requird"), "{e}");
}

#[test]
fn preview_of_the_login_mapping_masks_the_sample_and_prints_no_personal_value() {
    let key = key_file(&sqs2pg::login::MaskKey::generate_base64().unwrap());
    let run = || {
        sqs2pg(
            &[
                "mapping",
                "preview",
                "--mapping",
                "examples/mappings/login.toml",
                "--file",
                "examples/login-queue-sample.jsonl",
                "--mask-key-file",
                key.to_str().unwrap(),
            ],
            &[],
        )
    };
    let (first, second) = (run(), run());
    assert!(first.status.success(), "{}", stderr(&first));
    let out = stdout(&first);
    assert_eq!(out.lines().filter(|l| l.contains("\"row\"")).count(), 99);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("\"rejected\":\"missing_field:user_id\""))
            .count(),
        1
    );
    assert_eq!(out, stdout(&second), "the same key gives the same tokens");
    // No ip or device id of the sample is printed, only their tokens.
    let sample = std::fs::read_to_string("examples/login-queue-sample.jsonl").unwrap();
    for line in sample.lines() {
        let body: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["ip", "device_id"] {
            if let Some(value) = body.get(field).and_then(|v| v.as_str()) {
                assert!(!out.contains(value), "a raw {field} was printed");
            }
        }
    }
    assert!(stderr(&first).contains("100 message(s): 99 row(s), 1 rejected"));
}

#[test]
fn preview_of_sns_wrapped_orders_gives_rows_and_reasons() {
    let o = sqs2pg(
        &[
            "mapping",
            "preview",
            "--mapping",
            "examples/mappings/orders-sns.toml",
            "--file",
            "examples/mappings/orders-sns.jsonl",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let reasons: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("rejected").map(|r| r.as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "out_of_range:amount",
            "invalid_value:order_id",
            "not_allowed:currency"
        ]
    );
    assert!(
        out.contains("\"amount\":\"100.00\""),
        "rounded to the scale"
    );
    assert!(!out.contains("ada@example.com") && !out.contains("203.0.113.7"));
    assert!(stderr(&o).contains("throwaway key"));
}
