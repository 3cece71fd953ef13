//! The packaging and deployment files are checked like code: every YAML document parses and
//! carries the fields that matter (probes on the right port, limits, a non-root user, the key
//! from a Secret, a grace period longer than the shutdown deadline, a scaler aimed at the
//! Deployment),
//! and the Grafana dashboard only queries metrics that sqs2pg exports.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn docs(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The value of the env var `name` of a container.
fn env_value<'a>(container: &'a Yaml, name: &str) -> Option<&'a str> {
    container["env"]
        .as_vec()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))?["value"]
        .as_str()
}

#[test]
fn the_kubernetes_deployment_is_probed_limited_and_keyed_from_a_secret() {
    let docs = docs("deploy/kubernetes/sqs2pg.yaml");
    for doc in &docs {
        assert!(doc["apiVersion"].as_str().is_some() && doc["kind"].as_str().is_some());
        assert!(doc["metadata"]["name"].as_str().is_some());
    }
    let deployment = of_kind(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0].as_str(), Some("run"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // Probes hit the endpoint sqs2pg serves, on the port it listens on.
    let addr = env_value(container, "SQS2PG_METRICS_ADDR").expect("metrics address");
    let port: i64 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(container["ports"][0]["containerPort"].as_i64(), Some(port));
    assert_eq!(container["ports"][0]["name"].as_str(), Some("metrics"));
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["port"].as_str(),
            Some("metrics")
        );
    }
    for kind in ["cpu", "memory"] {
        assert!(
            !container["resources"]["limits"][kind].is_badvalue(),
            "no {kind} limit"
        );
        assert!(
            !container["resources"]["requests"][kind].is_badvalue(),
            "no {kind} request"
        );
    }

    // The grace period outlasts the shutdown deadline.
    let deadline: i64 = env_value(container, "SQS2PG_SHUTDOWN_TIMEOUT_SECS")
        .unwrap()
        .parse()
        .unwrap();
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > deadline);

    // The key and the database URL come from the Secret, never as literals.
    let secret = of_kind(&docs, "Secret");
    for (var, key) in [
        ("SQS2PG_MASK_KEY", "mask.key"),
        ("DATABASE_URL", "database-url"),
    ] {
        let entry = container["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(var))
            .unwrap_or_else(|| panic!("no {var}"));
        assert!(entry["value"].is_badvalue(), "{var} is not a literal");
        let from = &entry["valueFrom"]["secretKeyRef"];
        assert_eq!(from["name"], secret["metadata"]["name"]);
        assert_eq!(from["key"].as_str(), Some(key));
        assert!(
            !secret["stringData"][key].is_badvalue(),
            "the Secret has {key}"
        );
    }

    // Setup runs as a Job; metrics are scraped through the Service.
    assert_eq!(
        of_kind(&docs, "Job")["spec"]["template"]["spec"]["containers"][0]["args"][0].as_str(),
        Some("setup")
    );
    let monitor = of_kind(&docs, "ServiceMonitor");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["path"].as_str(),
        Some("/metrics")
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"].as_str(),
        Some("metrics")
    );
    let service = of_kind(&docs, "Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn keda_scales_the_deployment_on_queue_depth() {
    let deployment_docs = docs("deploy/kubernetes/sqs2pg.yaml");
    let deployment = of_kind(&deployment_docs, "Deployment");
    let docs = docs("deploy/kubernetes/keda-scaledobject.yaml");
    let scaled = of_kind(&docs, "ScaledObject");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("aws-sqs-queue"));
    let queue = trigger["metadata"]["queueURL"].as_str().unwrap();
    assert_eq!(
        Some(queue),
        env_value(
            &deployment["spec"]["template"]["spec"]["containers"][0],
            "SQS2PG_QUEUE_URL"
        ),
        "the scaler watches the queue the replicas drain"
    );
    // What the README says it does: one replica per 2,000 messages waiting or in flight
    // (KEDA counts in-flight messages unless `scaleOnInFlight` is "false"), 1 to 10.
    let per_replica: u64 = trigger["metadata"]["queueLength"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        trigger["metadata"]["scaleOnInFlight"].as_str(),
        Some("false")
    );
    let (min, max) = (
        scaled["spec"]["minReplicaCount"].as_i64().unwrap(),
        scaled["spec"]["maxReplicaCount"].as_i64().unwrap(),
    );
    assert!(min >= 1);
    let readme = read("README.md");
    let said = format!(
        "one per {},{:03} messages waiting or in flight",
        per_replica / 1000,
        per_replica % 1000
    );
    assert!(readme.contains(&said), "README: {said:?}");
    assert!(
        readme.contains(&format!("{min} to {max})")),
        "README: {min} to {max}"
    );
    // The region the scaler asks is the queue's.
    assert!(queue.contains(&format!(
        ".{}.",
        trigger["metadata"]["awsRegion"].as_str().unwrap()
    )));
    let auth = of_kind(&docs, "TriggerAuthentication");
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/sqs2pg-dashboard.json")).unwrap();
    // Every metric name the code defines (as a string literal starting with sqs2pg_).
    let sources = read("src/telemetry/metrics.rs") + &read("src/sqs/mod.rs");
    let defined: Vec<&str> = sources
        .split('"')
        .filter(|s| s.starts_with("sqs2pg_") && !s.contains(' '))
        .collect();
    let mut used = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("sqs2pg_") {
                    continue;
                }
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .filter(|b| defined.contains(b))
                    .unwrap_or(word);
                assert!(defined.contains(&base), "{word} is not exported");
                used += 1;
            }
        }
    }
    assert!(used >= 10, "the dashboard shows the metrics");
}

#[test]
fn the_image_is_multi_stage_and_runs_as_a_user() {
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count()
            >= 2
    );
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert_ne!(user.trim(), "0");
    assert_ne!(user.trim(), "root");
    let compose = docs("docker-compose.yml");
    let services = &compose[0]["services"];
    for name in ["localstack", "postgres", "sqs2pg-setup", "sqs2pg"] {
        assert!(!services[name].is_badvalue(), "no {name} service");
    }
    assert_eq!(
        services["sqs2pg-setup"]["command"][0].as_str(),
        Some("setup")
    );
    // Compose brings the services up in order on the first try: each dependency carries the
    // condition that makes the dependant wait, and a service waited on for health has a
    // healthcheck to report it.
    for (service, dependency, condition) in [
        ("sqs2pg-setup", "postgres", "service_healthy"),
        ("sqs2pg", "postgres", "service_healthy"),
        ("sqs2pg", "localstack", "service_healthy"),
        ("sqs2pg", "sqs2pg-setup", "service_completed_successfully"),
    ] {
        assert_eq!(
            services[service]["depends_on"][dependency]["condition"].as_str(),
            Some(condition),
            "{service} waits for {dependency}"
        );
        if condition == "service_healthy" {
            assert!(
                !services[dependency]["healthcheck"]["test"].is_badvalue(),
                "{dependency} has no healthcheck"
            );
        }
    }
    assert!(
        services["sqs2pg-setup"]["restart"].is_badvalue(),
        "setup must not depend on restarts to wait for PostgreSQL"
    );
}
