//! The container image as a user runs it (slow tier, after `scripts/container.sh build`; run
//! by `scripts/container.sh test`): `--version` names the commit, the process runs as a user
//! of its own, and `setup` then `drain` against the tests' PostgreSQL and SQS server over the
//! host network load the 100 sample messages as 99 rows and 1 rejection.
//!
//! The engine is `SQS2PG_CONTAINER_ENGINE` (podman unless said; `container.sh` says which it
//! built with), the image `SQS2PG_IMAGE` (default `localhost/sqs2pg:latest`).

use std::process::{Command, Output};

use crate::harness::{assert_no_personal_data, sqs2pg, stderr, TestDb, TestQueue};

/// The AWS settings every test container gets (the test servers take any credentials).
const TEST_AWS: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// A URL of a server on this machine's loopback as a container with a network of its own
/// (slirp4netns, `allow_host_loopback`) reaches it: at 10.0.2.2.
fn from_pod(url: &str) -> String {
    url.replace("127.0.0.1", "10.0.2.2")
        .replace("localhost", "10.0.2.2")
}

fn engine() -> String {
    std::env::var("SQS2PG_CONTAINER_ENGINE").unwrap_or_else(|_| "podman".into())
}

fn image() -> String {
    std::env::var("SQS2PG_IMAGE").unwrap_or_else(|_| "localhost/sqs2pg:latest".into())
}

/// `ENGINE run --rm --network=host` of the image with `env` and `args`.
fn run_image(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(engine());
    c.args(["run", "--rm", "--network=host"]);
    for (name, value) in env {
        c.arg("-e").arg(format!("{name}={value}"));
    }
    c.arg(image()).args(args);
    c.output()
        .unwrap_or_else(|e| panic!("{} could not start: {e}", engine()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: needs the image (scripts/container.sh test)"]
async fn the_image_sets_up_and_drains_the_sample_as_a_user_of_its_own() {
    let version = run_image(&["--version"], &[]);
    assert!(version.status.success(), "{}", stderr(&version));
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    // `sqs2pg 0.1.0 (commit <40 hex digits>)`, the commit the image was built from.
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("no commit in {version:?}"));
    assert!(
        commit.len() == 40 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{version:?}"
    );
    assert!(version.starts_with(&format!("sqs2pg {} ", env!("CARGO_PKG_VERSION"))));

    // Not root: the image's own user.
    let user = Command::new(engine())
        .args(["image", "inspect", "--format", "{{.Config.User}}"])
        .arg(image())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "10001:10001");

    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let mut env: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("SQS2PG_QUEUE_URL", &queue.url),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
    ];
    env.extend(TEST_AWS);
    // The messages go in with the binary under test; the image does the rest.
    let send = sqs2pg(&["send", "--file", crate::harness::SAMPLE], &env);
    assert!(send.status.success(), "{}", stderr(&send));

    let setup = run_image(&["setup"], &env);
    assert!(setup.status.success(), "{}", stderr(&setup));
    assert!(
        String::from_utf8_lossy(&setup.stdout).contains("table public.user_logins created"),
        "{}",
        String::from_utf8_lossy(&setup.stdout)
    );
    let drain = run_image(&["drain"], &env);
    let (out, err) = (String::from_utf8_lossy(&drain.stdout), stderr(&drain));
    assert!(drain.status.success(), "{err}");
    assert_no_personal_data(&out);
    assert_no_personal_data(&err);
    let count = |label: &str| -> String {
        out.lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in {out}"))
            .split_whitespace()
            .last()
            .unwrap()
            .to_owned()
    };
    assert_eq!(count("loaded"), "99");
    assert_eq!(count("rejected"), "1");
    let client = db.client().await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM public.user_logins", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 99);
    assert_eq!(queue.queue.approximate_depth().await.unwrap(), (0, 0));
}

/// `sqs2pg run` in the image, as the Deployment runs it: its probes answer on the port and
/// paths the manifest names, it loads what arrives, and a stop (SIGTERM, as `podman stop` and
/// Kubernetes send) ends it cleanly with no message left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: needs the image (scripts/container.sh test)"]
async fn the_image_serves_its_probes_loads_and_stops_on_sigterm_holding_nothing() {
    use crate::harness::{free_port, http_get, metric, wait_until};
    use std::time::Duration;

    let (db, queue) = (TestDb::new().await, TestQueue::new().await);
    crate::harness::setup(&db).await;
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    // The Deployment's container: where it serves metrics and what its probes ask.
    let manifest = yaml_rust2::YamlLoader::load_from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/sqs2pg.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let deployment = manifest
        .iter()
        .find(|d| d["kind"].as_str() == Some("Deployment"))
        .unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let metrics_addr = container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some("SQS2PG_METRICS_ADDR"))
        .and_then(|e| e["value"].as_str())
        .unwrap()
        .to_owned();
    let container_port = container["ports"][0]["containerPort"].as_i64().unwrap();
    let (liveness, readiness) = (
        container["livenessProbe"]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_owned(),
        container["readinessProbe"]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    // A network of its own, as a pod has (the host's loopback at 10.0.2.2), with the
    // container's port published on a free one here.
    let port = free_port();
    let (database_url, queue_url) = (from_pod(&db.url), from_pod(&queue.url));
    let name = crate::harness::unique("sqs2pg-run");
    let mut c = Command::new(engine());
    c.args([
        "run",
        "-d",
        "--network=slirp4netns:allow_host_loopback=true",
        "--name",
        &name,
    ]);
    c.arg("-p")
        .arg(format!("127.0.0.1:{port}:{container_port}"));
    for (var, value) in [
        ("DATABASE_URL", database_url.as_str()),
        ("SQS2PG_QUEUE_URL", &queue_url),
        ("SQS2PG_MASK_KEY", &key),
        ("SQS2PG_WAIT_TIME_SECS", "1"),
        ("SQS2PG_METRICS_ADDR", &metrics_addr),
        ("SQS2PG_SHUTDOWN_TIMEOUT_SECS", "25"),
        ("SQS2PG_LOG_FORMAT", "json"),
    ]
    .into_iter()
    .chain(TEST_AWS)
    {
        c.arg("-e").arg(format!("{var}={value}"));
    }
    let started = c.arg(image()).arg("run").output().unwrap();
    assert!(started.status.success(), "{}", stderr(&started));
    // Removed however the test ends.
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Command::new(engine()).args(["rm", "-f", &self.0]).output();
        }
    }
    let _remove = Remove(name.clone());

    wait_until(
        "the readiness probe answers 200",
        Duration::from_secs(60),
        || http_get(port, &readiness).is_some_and(|(status, _)| status == 200),
    )
    .await;
    assert_eq!(http_get(port, &liveness).map(|(s, _)| s), Some(200));

    queue.send(&crate::harness::sample_bodies()).await;
    wait_until("99 rows and 1 rejection", Duration::from_secs(120), || {
        http_get(port, "/metrics").is_some_and(|(_, text)| {
            metric(&text, "sqs2pg_rows_loaded_total", &[]) == Some(99.0)
                && metric(&text, "sqs2pg_messages_rejected_total", &[]) == Some(1.0)
        })
    })
    .await;
    let rows: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM public.user_logins", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 99);

    // SIGTERM, up to 30 s before SIGKILL (the manifest's grace period).
    let stop = Command::new(engine())
        .args(["stop", "-t", "30", &name])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{}", stderr(&stop));
    let exit = Command::new(engine())
        .args(["inspect", "--format", "{{.State.ExitCode}}", &name])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&exit.stdout).trim(), "0");
    let logs = Command::new(engine())
        .args(["logs", &name])
        .output()
        .unwrap();
    let logs = format!("{}{}", String::from_utf8_lossy(&logs.stdout), stderr(&logs));
    assert_no_personal_data(&logs);
    // Nothing held: every message was deleted, none is in flight.
    assert_eq!(queue.queue.approximate_depth().await.unwrap(), (0, 0));
}

/// A copy of `deploy/kubernetes/sqs2pg.yaml` for `podman kube play`, and the differences from
/// the shipped file: the image; the queue URL (the test's server, reached from each pod's own
/// network at 10.0.2.2, slirp4netns's address for the host's loopback; sqs2pg takes the
/// endpoint from a queue URL that is not AWS's); the database URL and the key as plain values,
/// and test AWS credentials in place of the ServiceAccount's role (podman 4.3 takes no
/// `secretKeyRef`). Two more that podman 4.3 forces (both tried): it plays no Job ("does not
/// contain any supported kube kind"), so the setup Job's pod is a Pod of its own; and it
/// publishes every `containerPort` on the host, where the replicas collide ("address already
/// in use"), so the ports go and the probes name the port by number. Answers (the setup Pod's
/// YAML, the Deployment's YAML).
fn played_manifest(queue_url: &str, database_url: &str, key: &str) -> (String, String) {
    use yaml_rust2::yaml::Hash;
    use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/sqs2pg.yaml"),
    )
    .unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let s = |v: &str| Yaml::String(v.to_owned());
    let env_var = |name: &str, value: &str| {
        let mut h = Hash::new();
        h.insert(s("name"), s(name));
        h.insert(s("value"), s(value));
        Yaml::Hash(h)
    };
    // Each container: the image, and every value the test gives.
    let adapt = |spec: &mut Yaml| {
        let Yaml::Hash(spec) = spec else {
            panic!("a pod spec")
        };
        let Some(Yaml::Array(containers)) = spec.get_mut(&s("containers")) else {
            panic!("containers")
        };
        for container in containers {
            let Yaml::Hash(c) = container else {
                panic!("a container")
            };
            c.insert(s("image"), s(&image()));
            // podman publishes every containerPort on the host, so the replicas of one
            // Deployment would collide on it (Kubernetes gives each pod its own address):
            // the ports go, and the probes name the port by number instead of by name.
            if let Some(Yaml::Array(ports)) = c.remove(&s("ports")) {
                let number = ports[0]["containerPort"].clone();
                for probe in ["livenessProbe", "readinessProbe"] {
                    if let Some(Yaml::Hash(p)) = c.get_mut(&s(probe)) {
                        if let Some(Yaml::Hash(get)) = p.get_mut(&s("httpGet")) {
                            get.insert(s("port"), number.clone());
                        }
                    }
                }
            }
            let Some(Yaml::Array(env)) = c.get_mut(&s("env")) else {
                panic!("env")
            };
            for var in env.iter_mut() {
                let name = var["name"].as_str().unwrap().to_owned();
                let value = match name.as_str() {
                    "DATABASE_URL" => from_pod(database_url),
                    "SQS2PG_MASK_KEY" => key.to_owned(),
                    "SQS2PG_QUEUE_URL" => from_pod(queue_url),
                    _ => continue,
                };
                *var = env_var(&name, &value);
            }
            for (name, value) in TEST_AWS {
                env.push(env_var(name, value));
            }
        }
    };
    let emit = |doc: &Yaml| {
        let mut out = String::new();
        YamlEmitter::new(&mut out).dump(doc).unwrap();
        out
    };
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    // The Job's pod template as a Pod.
    let job = of_kind("Job");
    let mut pod_spec = job["spec"]["template"]["spec"].clone();
    adapt(&mut pod_spec);
    let mut metadata = Hash::new();
    metadata.insert(s("name"), s("sqs2pg-setup"));
    let mut pod = Hash::new();
    pod.insert(s("apiVersion"), s("v1"));
    pod.insert(s("kind"), s("Pod"));
    pod.insert(s("metadata"), Yaml::Hash(metadata));
    pod.insert(s("spec"), pod_spec);
    let mut deployment = of_kind("Deployment");
    if let Yaml::Hash(d) = &mut deployment {
        let Some(Yaml::Hash(spec)) = d.get_mut(&s("spec")) else {
            panic!("spec")
        };
        let Some(Yaml::Hash(template)) = spec.get_mut(&s("template")) else {
            panic!("template")
        };
        adapt(template.get_mut(&s("spec")).unwrap());
    }
    (emit(&Yaml::Hash(pod)), emit(&deployment))
}

/// The Kubernetes manifest played by podman: the setup Job's pod, then the Deployment's
/// replicas on 20,000 messages in LocalStack 4.0.3. Stopped with SIGTERM and the manifest's
/// grace period in the middle, they exit 0 and leave no message held; torn down with no grace
/// (`podman kube down`) and played again, they load the rest: exactly one row each, each
/// replica of each play within its memory limit (peak measured by its cgroup), none killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: needs the image (scripts/container.sh test)"]
async fn the_kubernetes_manifest_plays_its_replicas_over_20000_messages() {
    use crate::harness::{synthetic_logins, Sqs};
    use std::time::{Duration, Instant};
    const MESSAGES: i64 = 20_000;
    // Bounded waits on a condition, polled every half second.
    async fn wait(what: &str, limit: Duration, mut ready: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ready().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let (db, queue) = (TestDb::new().await, TestQueue::on(Sqs::LocalStack4).await);
    let file = synthetic_logins(MESSAGES as usize);
    let sent = sqs2pg(
        &["send", "--file", file.to_str().unwrap()],
        &[
            ("SQS2PG_QUEUE_URL", &queue.url),
            ("AWS_ENDPOINT_URL", &queue.endpoint),
        ],
    );
    assert!(sent.status.success(), "{}", stderr(&sent));
    let _ = std::fs::remove_file(&file);
    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    // The queue's path-style URL on the test server (LocalStack 4 answers CreateQueue with a
    // `sqs.REGION.localhost.localstack.cloud` host, which a pod cannot resolve): sqs2pg takes
    // the endpoint from it, as from any queue URL that is not AWS's.
    let name = queue.url.rsplit('/').next().unwrap();
    let queue_url = format!("{}/000000000000/{name}", queue.endpoint);
    let (pod, deployment) = played_manifest(&queue_url, &db.url, &key);
    let dir = std::env::temp_dir().join(crate::harness::unique("sqs2pg-kube"));
    std::fs::create_dir_all(&dir).unwrap();
    let (pod_file, deployment_file) = (dir.join("setup.yaml"), dir.join("sqs2pg.yaml"));
    std::fs::write(&pod_file, pod).unwrap();
    std::fs::write(&deployment_file, deployment).unwrap();
    let podman = |args: &[&str]| -> Output { Command::new(engine()).args(args).output().unwrap() };
    let network = "--network=slirp4netns:allow_host_loopback=true";
    // Whatever happens, the pods go.
    // (The files stay until then: `kube down` reads the pods' names from them.)
    struct Down(Vec<std::path::PathBuf>, std::path::PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            for file in &self.0 {
                let _ = Command::new(engine())
                    .args(["kube", "down"])
                    .arg(file)
                    .output();
            }
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _down = Down(vec![pod_file.clone(), deployment_file.clone()], dir.clone());
    // Pods of these names left by an earlier run that was killed go first.
    for file in [&pod_file, &deployment_file] {
        let _ = podman(&["kube", "down", file.to_str().unwrap()]);
    }

    let played = podman(&["kube", "play", network, pod_file.to_str().unwrap()]);
    assert!(played.status.success(), "{}", stderr(&played));
    let setup_container = "sqs2pg-setup-setup";
    wait(
        "the setup pod to finish",
        Duration::from_secs(120),
        async || {
            let state = podman(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.ExitCode}}",
                setup_container,
            ]);
            String::from_utf8_lossy(&state.stdout).trim() == "exited 0"
        },
    )
    .await;
    // Done, as a completed Job is; removed.
    let removed = podman(&["kube", "down", pod_file.to_str().unwrap()]);
    assert!(removed.status.success(), "{}", stderr(&removed));

    let client = db.client().await;
    let rows = async || -> i64 {
        client
            .query_one("SELECT count(*) FROM public.user_logins", &[])
            .await
            .unwrap()
            .get(0)
    };
    let play = || {
        let played = podman(&["kube", "play", network, deployment_file.to_str().unwrap()]);
        assert!(played.status.success(), "{}", stderr(&played));
    };
    // `podman kube down` (4.3) stops a pod with no grace at all (SIGKILL at once, where
    // Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds): so a graceful stop is
    // `podman stop -t GRACE` of the replicas first, then `kube down` to remove them.
    let grace =
        yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(&deployment_file).unwrap())
            .unwrap()[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap()
            .to_string();
    let replica_containers = || -> Vec<String> {
        let names = podman(&["ps", "-a", "--format", "{{.Names}}"]);
        String::from_utf8_lossy(&names.stdout)
            .lines()
            .filter(|n| n.starts_with("sqs2pg-pod") && !n.ends_with("-infra"))
            .map(str::to_owned)
            .collect()
    };
    let stop_gracefully = || {
        // The replicas' containers, not their pods: `pod stop` stops the infra container that
        // holds the pod's network at the same time, and a replica finishing its shutdown finds
        // the network gone (Kubernetes keeps it until the containers have exited).
        let names = replica_containers();
        let mut stop = vec!["stop", "-t", &grace];
        stop.extend(names.iter().map(String::as_str));
        let stopped = podman(&stop);
        assert!(stopped.status.success(), "{}", stderr(&stopped));
        for name in names {
            let exit = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
            if String::from_utf8_lossy(&exit.stdout).trim() != "0" {
                let logs = podman(&["logs", "--tail", "15", &name]);
                panic!(
                    "{name} exited {}: {}{}",
                    String::from_utf8_lossy(&exit.stdout).trim(),
                    String::from_utf8_lossy(&logs.stdout),
                    stderr(&logs)
                );
            }
        }
    };
    let down = || {
        let down = podman(&["kube", "down", deployment_file.to_str().unwrap()]);
        assert!(down.status.success(), "{}", stderr(&down));
    };
    let nothing_held = async |when: &str| {
        let loaded = rows().await;
        let (visible, in_flight) = queue.queue.approximate_depth().await.unwrap();
        assert_eq!(
            in_flight, 0,
            "held {when} ({loaded} rows, {visible} visible)"
        );
        assert_eq!(
            visible as i64 + loaded,
            MESSAGES,
            "{when}: {loaded} rows, {visible} visible"
        );
        loaded
    };

    // Each play's replicas, as many as the manifest asks for, each within its memory limit:
    // the peak of its cgroup's memory (cgroup v1 here; v2 names the file memory.peak), read
    // while it runs, just before it is stopped, so every play is measured; and none killed
    // for memory.
    let deployment_doc =
        &yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(&deployment_file).unwrap())
            .unwrap()[0];
    let replicas = deployment_doc["spec"]["replicas"].as_i64().unwrap();
    let limit = deployment_doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        ["memory"]
        .as_str()
        .unwrap()
        .strip_suffix("Mi")
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let within_limits = |play: &str| {
        let names: Vec<String> = replica_containers();
        assert_eq!(names.len() as i64, replicas, "{play}: {names:?}");
        for name in &names {
            let state = podman(&[
                "inspect",
                "--format",
                "{{.State.Status}} {{.State.OOMKilled}} {{.RestartCount}} {{.State.CgroupPath}}",
                name,
            ]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
            let mut fields = state.split(' ');
            let (status, oom_killed, restarts, path) = (
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
            );
            // Running, never killed for memory, never restarted (a restart would start its
            // peak afresh).
            assert_eq!(
                (status, oom_killed, restarts),
                ("running", "false", "0"),
                "{play}: {name}"
            );
            // The manifest's limit is the container's (cgroup v1 here; v2 names it
            // memory.max).
            let cgroup_file = |names: [&str; 3]| {
                names.iter().find_map(|f| {
                    std::fs::read_to_string(format!(
                        "/sys/fs/cgroup/{}",
                        f.replace("{}", path.trim_start_matches('/'))
                    ))
                    .ok()
                })
            };
            let applied = cgroup_file([
                "memory/{}/memory.limit_in_bytes",
                "unified/{}/memory.max",
                "{}/memory.max",
            ])
            .unwrap_or_else(|| panic!("no memory limit for {name} in cgroup {path:?}"));
            assert_eq!(
                applied.trim().parse::<u64>().ok(),
                Some(limit * 1024 * 1024),
                "{play}: {name}: the limit applied"
            );
            let peak = cgroup_file([
                "memory/{}/memory.max_usage_in_bytes",
                "unified/{}/memory.peak",
                "{}/memory.peak",
            ])
            .unwrap_or_else(|| panic!("no memory peak for {name} in cgroup {path:?}"));
            let peak_mib = peak.trim().parse::<u64>().unwrap() / (1024 * 1024);
            eprintln!("{play}: {name}: peak memory {peak_mib} MiB (limit {limit} MiB)");
            assert!(peak_mib < limit, "{play}: {name}: {peak_mib} MiB");
        }
    };

    // Stopped (SIGTERM to every replica) in the middle of the work: each commits what it has,
    // deletes it and releases the rest, exits 0, and nothing stays held.
    play();
    wait("5,000 rows", Duration::from_secs(600), async || {
        rows().await >= 5_000
    })
    .await;
    within_limits("first play");
    stop_gracefully();
    let loaded = nothing_held("after SIGTERM").await;
    assert!(
        loaded < MESSAGES,
        "stopped after the work was done: nothing shown"
    );
    down();

    // Torn down with no grace (what `kube down` does here), then played again: the messages
    // the killed replicas held come back after their visibility timeout, and load once.
    play();
    wait("10,000 rows", Duration::from_secs(600), async || {
        rows().await >= 10_000
    })
    .await;
    within_limits("second play");
    down();
    play();
    wait("20,000 rows", Duration::from_secs(600), async || {
        rows().await >= MESSAGES
    })
    .await;
    within_limits("third play");
    stop_gracefully();
    nothing_held("at the end").await;
    down();
    assert_eq!(rows().await, MESSAGES);
    // One ledger entry per message: exactly one row each, none twice.
    let ledgered: i64 = client
        .query_one("SELECT count(DISTINCT message_id) FROM sqs2pg.ledger", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ledgered, MESSAGES);
    assert_eq!(queue.queue.approximate_depth().await.unwrap(), (0, 0));
}

/// `docker-compose.yml` started as compose starts it, in the order its `depends_on` conditions
/// give, on the exercise's two images (pulled, or the stand-ins `scripts/container.sh test`
/// builds from tests/containers/ where no registry answers), with podman. Debian's
/// podman-compose (1.0.3) ignores the conditions, so the test is the compose engine: it starts
/// each service once its dependencies are healthy (the service's own healthcheck, run at its
/// interval), started, or completed successfully, and nothing may need a restart. The
/// differences from compose: the services share one pod (each reaches the others by service
/// name through `--add-host`), `build: .` is the image built here, and only sqs2pg's metrics
/// port is published (on a free port), so nothing collides with the machine's own servers.
/// sqs2pg must then load the 100 sample messages as 99 rows and 1 rejection, and stop on
/// SIGTERM within the file's grace period with exit 0 and no message held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow tier: needs the images (scripts/container.sh test)"]
async fn the_compose_file_starts_in_its_order_and_loads_the_sample() {
    use crate::harness::{free_port, http_get, metric, wait_until};
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};
    use yaml_rust2::{Yaml, YamlLoader};

    let compose = YamlLoader::load_from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"),
        )
        .unwrap(),
    )
    .unwrap()
    .remove(0);
    let services: Vec<(String, Yaml)> = compose["services"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(name, spec)| (name.as_str().unwrap().to_owned(), spec.clone()))
        .collect();
    let depends_on = |service: &Yaml| -> Vec<(String, String)> {
        service["depends_on"]
            .as_hash()
            .map(|h| {
                h.iter()
                    .map(|(name, c)| {
                        (
                            name.as_str().unwrap().to_owned(),
                            c["condition"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // The order the file documents: PostgreSQL healthy, then setup to completion, then sqs2pg
    // once LocalStack is healthy too.
    let spec = |name: &str| &services.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(
        depends_on(spec("sqs2pg-setup")),
        [("postgres".to_owned(), "service_healthy".to_owned())]
    );
    let mut run_deps = depends_on(spec("sqs2pg"));
    run_deps.sort();
    assert_eq!(
        run_deps,
        [
            ("localstack", "service_healthy"),
            ("postgres", "service_healthy"),
            ("sqs2pg-setup", "service_completed_successfully"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );

    let podman = |args: &[&str]| -> Output { Command::new(engine()).args(args).output().unwrap() };
    let pod = crate::harness::unique("sqs2pg-compose");
    struct RemovePod(String);
    impl Drop for RemovePod {
        fn drop(&mut self) {
            let _ = Command::new(engine())
                .args(["pod", "rm", "-f", "-t", "0", &self.0])
                .output();
        }
    }
    let _remove = RemovePod(pod.clone());
    let metrics_port = spec("sqs2pg")["ports"][0]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let port = free_port();
    let mut create = vec![
        "pod".to_owned(),
        "create".to_owned(),
        "--name".to_owned(),
        pod.clone(),
        "-p".to_owned(),
        format!("127.0.0.1:{port}:{metrics_port}"),
    ];
    for (name, _) in &services {
        create.extend(["--add-host".to_owned(), format!("{name}:127.0.0.1")]);
    }
    let created = Command::new(engine()).args(&create).output().unwrap();
    assert!(created.status.success(), "{}", stderr(&created));

    let key = sqs2pg::keys::MaskKey::generate_base64().unwrap();
    let container = |service: &str| format!("{pod}-{service}");
    // `podman run` of a service as compose would run it.
    let start = |name: &str, service: &Yaml| {
        let mut c = Command::new(engine());
        c.args(["run", "-d", "--pod", &pod, "--name", &container(name)]);
        if let Some(policy) = service["restart"].as_str() {
            c.arg(format!("--restart={policy}"));
        }
        if let Some(env) = service["environment"].as_hash() {
            for (var, value) in env {
                let value = value.as_str().unwrap();
                // `${SQS2PG_MASK_KEY:?...}`: compose's interpolation of the one it requires.
                let value = if value.starts_with("${SQS2PG_MASK_KEY") {
                    key.as_str()
                } else {
                    value
                };
                c.arg("-e")
                    .arg(format!("{}={value}", var.as_str().unwrap()));
            }
        }
        if !service["build"].is_badvalue() {
            c.arg(image());
        } else {
            c.arg(service["image"].as_str().unwrap());
        }
        if let Some(command) = service["command"].as_vec() {
            c.args(command.iter().map(|a| a.as_str().unwrap()));
        }
        let started = c.output().unwrap();
        assert!(started.status.success(), "{name}: {}", stderr(&started));
    };
    let seconds = |v: &Yaml| -> Duration {
        Duration::from_secs(
            v.as_str()
                .and_then(|s| s.strip_suffix('s'))
                .map_or(0, |s| s.parse().unwrap()),
        )
    };
    let state = |name: &str| -> String {
        let s = podman(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &container(name),
        ]);
        String::from_utf8_lossy(&s.stdout).trim().to_owned()
    };

    // The compose engine: start what has no unmet condition, check health at each service's
    // interval, until every service has started.
    let mut started: Vec<String> = Vec::new();
    let mut healthy: Vec<String> = Vec::new();
    let mut last_check: BTreeMap<String, Instant> = BTreeMap::new();
    let began = Instant::now();
    while started.len() < services.len() {
        for (name, service) in &services {
            if started.contains(name) {
                continue;
            }
            let met = depends_on(service).iter().all(|(dep, condition)| {
                started.contains(dep)
                    && match condition.as_str() {
                        "service_started" => true,
                        "service_healthy" => healthy.contains(dep),
                        "service_completed_successfully" => state(dep) == "exited 0",
                        other => panic!("condition {other} of {name}"),
                    }
            });
            if met {
                start(name, service);
                eprintln!("compose: {name} started at {:?}", began.elapsed());
                started.push(name.clone());
            }
        }
        for (name, service) in &services {
            let check = &service["healthcheck"];
            if !started.contains(name) || healthy.contains(name) || check.is_badvalue() {
                continue;
            }
            let interval = seconds(&check["interval"]);
            if last_check
                .get(name)
                .is_some_and(|at| at.elapsed() < interval)
            {
                continue;
            }
            last_check.insert(name.clone(), Instant::now());
            let test: Vec<&str> = check["test"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            let mut exec = vec!["exec".to_owned(), container(name)];
            match test.as_slice() {
                ["CMD-SHELL", line] => {
                    exec.extend(["sh".to_owned(), "-c".to_owned(), (*line).to_owned()])
                }
                ["CMD", argv @ ..] => exec.extend(argv.iter().map(|a| (*a).to_owned())),
                other => panic!("healthcheck {other:?} of {name}"),
            }
            if Command::new(engine())
                .args(&exec)
                .output()
                .unwrap()
                .status
                .success()
            {
                eprintln!("compose: {name} healthy at {:?}", began.elapsed());
                healthy.push(name.clone());
            } else {
                // Unhealthy after start_period + retries x interval: compose would give up.
                let limit = seconds(&check["start_period"])
                    + interval * check["retries"].as_i64().unwrap() as u32;
                assert!(began.elapsed() < limit, "{name} never became healthy");
            }
        }
        assert!(
            began.elapsed() < Duration::from_secs(600),
            "started {started:?}, healthy {healthy:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        started,
        ["localstack", "postgres", "sqs2pg-setup", "sqs2pg"],
        "the order the conditions gave"
    );
    assert_eq!(state("sqs2pg-setup"), "exited 0");

    wait_until("99 rows and 1 rejection", Duration::from_secs(180), || {
        http_get(port, "/metrics").is_some_and(|(_, text)| {
            metric(&text, "sqs2pg_rows_loaded_total", &[]) == Some(99.0)
                && metric(&text, "sqs2pg_messages_rejected_total", &[]) == Some(1.0)
        })
    })
    .await;
    let rows = podman(&[
        "exec",
        "-e",
        "PGPASSWORD=postgres",
        &container("postgres"),
        "psql",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-tAc",
        "SELECT count(*) FROM public.user_logins",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&rows.stdout).trim(),
        "99",
        "{}",
        stderr(&rows)
    );
    // It started once: nothing relied on a restart.
    let restarts = podman(&[
        "inspect",
        "--format",
        "{{.RestartCount}}",
        &container("sqs2pg"),
    ]);
    assert_eq!(String::from_utf8_lossy(&restarts.stdout).trim(), "0");

    // Stopped within the file's grace period: exit 0, nothing held.
    let grace = seconds(&spec("sqs2pg")["stop_grace_period"])
        .as_secs()
        .to_string();
    let stop = podman(&["stop", "-t", &grace, &container("sqs2pg")]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert_eq!(state("sqs2pg"), "exited 0");
    let logs = podman(&["logs", &container("sqs2pg")]);
    assert_no_personal_data(&format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        stderr(&logs)
    ));
    let queue_url = spec("sqs2pg")["environment"]["SQS2PG_QUEUE_URL"]
        .as_str()
        .unwrap()
        .to_owned();
    let attributes = podman(&[
        "exec",
        &container("localstack"),
        "awslocal",
        "sqs",
        "get-queue-attributes",
        "--queue-url",
        &queue_url,
        "--attribute-names",
        "All",
    ]);
    assert!(attributes.status.success(), "{}", stderr(&attributes));
    let attributes: serde_json::Value = serde_json::from_slice(&attributes.stdout).unwrap();
    assert_eq!(
        (
            &attributes["Attributes"]["ApproximateNumberOfMessages"],
            &attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
        ),
        (&serde_json::json!("0"), &serde_json::json!("0")),
        "nothing left or held"
    );
}
