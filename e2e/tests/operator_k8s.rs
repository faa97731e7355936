//! The operator on the local stack's real API server: a StreamJob applied with kubectl becomes
//! a ConfigMap, a headless Service, a StatefulSet of workers (run by the node agent) and a
//! PodDisruptionBudget; the workers read Kafka and commit every window exactly once; the status
//! shows the phase and the Events tell what happened; an invalid StreamJob is reported with
//! every error and deploys nothing; deleting a StreamJob removes everything it created.
//! (kubectl reads YAML 1.1, where an unquoted key `n` is `false`: the manifests quote it.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weir_e2e::payments::{
    create_topics, events, events_of_cards, events_spaced, ordered_producer, produce, producer, read_all,
    recreate_topics, reference, repartition_job_pipeline, window_job_pipeline, windows_of, Ev,
};
use weir_e2e::{
    debug_bin, kafka_brokers, kubeconfig, kubectl, kubectl_raw, repo_dir, require_port, run_dir, s3_endpoint, unique,
    wait_until,
};

const PARTITIONS: i32 = 2;

/// Stops the operator and removes the test namespace however the test ends.
struct Cleanup {
    operators: Vec<Child>,
    namespace: String,
    /// More namespaces the test created.
    others: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for op in &mut self.operators {
            let _ = op.kill();
            let _ = op.wait();
        }
        for ns in std::iter::once(&self.namespace).chain(&self.others) {
            let _ = kubectl_raw(&["delete", "namespace", ns, "--wait=false"]);
        }
    }
}

fn get(ns: &str, what: &str, path: &str) -> String {
    let out = kubectl_raw(&["-n", ns, "get", what, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The reasons of the Events about `name`.
fn event_reasons(ns: &str, name: &str) -> String {
    let selector = format!("involvedObject.name={name}");
    kubectl(&["-n", ns, "get", "events", "--field-selector", &selector, "-o", "jsonpath={.items[*].reason}"])
}

fn apply(ns: &str, yaml: &str) {
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("sj")));
    std::fs::write(&file, yaml).unwrap();
    kubectl(&["-n", ns, "apply", "-f", file.to_str().unwrap()]);
}

/// Installs the CRD, creates a fresh namespace and starts an operator watching it; the
/// returned guard stops the operator and deletes the namespace.
fn setup(prefix: &str) -> (Cleanup, PathBuf, u16) {
    setup_with(prefix, &[])
}

/// [`setup`] with more arguments for the operator.
fn setup_with(prefix: &str, operator_args: &[&str]) -> (Cleanup, PathBuf, u16) {
    let (mut cleanup, log) = setup_without_operator(prefix);
    let (operator, api_port) = start_operator_with(&cleanup.namespace, &log, operator_args);
    cleanup.operators.push(operator);
    (cleanup, log, api_port)
}

/// [`setup`] but for the operator: the namespace, its guard and the operator's log path.
fn setup_without_operator(prefix: &str) -> (Cleanup, PathBuf) {
    let crd = repo_dir().join("crds/streamjob.yaml");
    kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crd.to_str().unwrap()]);
    kubectl(&["wait", "--for=condition=established", "crd/streamjobs.weir.dev", "--timeout=60s"]);
    let ns = unique(prefix);
    kubectl(&["create", "namespace", &ns]);
    let log = run_dir().join("logs").join(format!("e2e-operator-{ns}.log"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    (Cleanup { operators: Vec::new(), namespace: ns, others: Vec::new() }, log)
}

/// An operator watching `ns` (comma-separated namespaces; leader lease of 3 s), logging to
/// `log`; its REST API port.
fn start_operator(ns: &str, log: &std::path::Path) -> (Child, u16) {
    start_operator_with(ns, log, &[])
}

/// [`start_operator`] with more arguments (which may set another `--lease-seconds`).
fn start_operator_with(ns: &str, log: &std::path::Path, extra: &[&str]) -> (Child, u16) {
    spawn_operator(Command::new(debug_bin("weir-operator")), &kubeconfig(), ns, log, extra)
}

/// An operator as [`start_operator`] makes it, but running as user `uid` (so that traffic can be
/// told apart by its owner) from a copy of its binary and a self-contained kubeconfig in `dir`.
fn start_operator_as(uid: u32, dir: &std::path::Path, ns: &str, log: &std::path::Path) -> (Child, u16) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = dir.join("weir-operator");
    if std::fs::hard_link(debug_bin("weir-operator"), &program).is_err() {
        std::fs::copy(debug_bin("weir-operator"), &program).unwrap();
    }
    let config = dir.join("kubeconfig");
    std::fs::write(&config, kubectl(&["config", "view", "--raw", "--flatten"])).unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = Command::new("setpriv");
    command.args(["--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"]).arg(&program);
    command.env("HOME", dir);
    spawn_operator(command, &config, ns, log, &[])
}

/// Starts `command` (the operator's binary, or a launcher of it) with the tests' arguments.
fn spawn_operator(
    mut command: Command,
    kubeconfig: &std::path::Path,
    ns: &str,
    log: &std::path::Path,
    extra: &[&str],
) -> (Child, u16) {
    let api_port = weir_e2e::free_port();
    let operator = command
        .args(["--namespace", ns, "--api-addr", &format!("127.0.0.1:{api_port}")])
        .args(if extra.contains(&"--lease-seconds") { &[][..] } else { &["--lease-seconds", "3"][..] })
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("WEIR_API_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    (operator, api_port)
}

const TOKEN: &str = "e2e-token";

/// Every key under `prefix` in the stack's S3 bucket.
fn s3_keys(prefix: &str) -> Vec<String> {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(s3_endpoint())
                .credentials_provider(Credentials::new("weiradmin", "weirsecret", None, None, "weir-e2e"))
                .force_path_style(true)
                .build(),
        );
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page =
                s3.list_objects_v2().bucket("weir").prefix(prefix).set_continuation_token(token).send().await.unwrap();
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_string()),
                None => break keys,
            }
        }
    })
}

/// The answer to a GET without a token (health, metrics).
fn http_text(port: u16, path: &str) -> String {
    weir_e2e::http_raw(("127.0.0.1", port), "GET", path, None, "").unwrap()
}

/// One REST call to the operator: the status code and the JSON answer.
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let (code, body) = weir_e2e::http_call(("127.0.0.1", port), method, path, token, body).unwrap();
    (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// Checkpoints of a test's jobs in the stack's S3 server, with credentials from a Secret.
struct S3Checkpoints {
    /// Where in the bucket.
    prefix: String,
    /// The value of `spec.checkpointing`.
    checkpointing: String,
    /// The `spec.env` lines that give the workers the endpoint and the Secret's credentials.
    env: String,
}

/// Creates the Secret `s3` in `ns` and names a fresh prefix for its checkpoints.
fn s3_checkpoints(ns: &str) -> S3Checkpoints {
    require_port("S3", 7070);
    kubectl(&[
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "s3",
        "--from-literal=key=weiradmin",
        "--from-literal=secret=weirsecret",
    ]);
    let prefix = format!("e2e-{ns}");
    let checkpointing = format!("{{interval: 300ms, storage: \"s3://weir/{prefix}\"}}");
    let env = format!(
        "  env:\n  - {{name: AWS_ENDPOINT_URL, value: \"{}\"}}\n  - {{name: AWS_ACCESS_KEY_ID, valueFrom: {{secretKeyRef: {{name: s3, key: key}}}}}}\n  - {{name: AWS_SECRET_ACCESS_KEY, valueFrom: {{secretKeyRef: {{name: s3, key: secret}}}}}}\n",
        s3_endpoint()
    );
    S3Checkpoints { prefix, checkpointing, env }
}

/// The StreamJob `per-card`: the tests' window job on `input`, results to `output`, late events
/// to `corrections`.
fn window_job(parallelism: i32, checkpointing: &str, input: &str, output: &str, corrections: &str) -> String {
    format!(
        r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: per-card}}
spec:
  image: weir-worker:dev
  parallelism: {parallelism}
  epochInterval: 50ms
  checkpointing: {checkpointing}
  pipeline:
{pipeline}    sinks:
      results: {{from: per_card_minute, kafka: {{brokers: "{b}", topic: {output}}}}}
      corrections: {{kafka: {{brokers: "{b}", topic: {corrections}}}}}
"#,
        pipeline = window_job_pipeline(input),
        b = kafka_brokers()
    )
}

#[test]
fn streamjob_runs_exactly_once_reports_and_cleans_up() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    let (cleanup, log, api) = setup("op");
    let ns = cleanup.namespace.clone();
    let (input, output, corrections) = (format!("{ns}-in"), format!("{ns}-out"), format!("{ns}-late"));
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS), (&corrections, 1)]);
    let evs = events(PARTITIONS);
    produce(&producer(), &input, &evs);
    apply(&ns, &window_job(PARTITIONS, "{interval: 1s}", &input, &output, &corrections));
    wait_until(&format!("phase Running (operator log: {})", log.display()), Duration::from_secs(120), || {
        (get(&ns, "sj/per-card", "{.status.phase}") == "Running").then_some(())
    });
    assert_eq!(get(&ns, "sj/per-card", "{.status.parallelism}"), PARTITIONS.to_string());
    assert_eq!(get(&ns, "sj/per-card", "{.status.selector}"), "weir.dev/job=per-card");
    let lag = get(&ns, "sj/per-card", "{.status.lag}");
    assert!(lag.parse::<i64>().is_ok_and(|l| l >= 0), "the consumer lag for kubectl get sj: {lag:?}");
    for kind in ["configmap", "service", "statefulset", "poddisruptionbudget"] {
        let owner = get(&ns, &format!("{kind}/per-card"), "{.metadata.ownerReferences[0].kind}");
        assert_eq!(owner, "StreamJob", "{kind} is owned by the StreamJob");
    }
    let (want, want_late) = reference(&evs, PARTITIONS);
    let (got, emitted) = windows_of(&output, PARTITIONS, want.len());
    assert_eq!(got, want, "every window equals the reference");
    assert_eq!(emitted, want.len(), "each window is committed once");
    assert_eq!(read_all(&corrections, 1).len(), want_late.len(), "each late event is committed once");
    let events = event_reasons(&ns, "per-card");
    assert!(events.contains("Running"), "a Running event: {events}");

    // The REST API sees the same job, its workers' figures and its consumer group's lag.
    assert_eq!(http(api, "GET", "/jobs", None, "").0, 401, "a token is required");
    assert!(http_text(api, "/openapi.json").contains(r#""openapi":"3.0.3""#), "the API describes itself");
    let metrics = http_text(api, "/metrics");
    assert!(
        metrics.contains(&format!(r#"weir_operator_job_phase{{name="per-card",namespace="{ns}",phase="Running"}} 1"#)),
        "{metrics}"
    );
    assert!(metrics.contains(r#"weir_operator_reconciles_total{outcome="ok"}"#), "{metrics}");
    assert_eq!(http(api, "GET", "/jobs", Some("wrong"), "").0, 401);
    let (code, jobs) = http(api, "GET", "/jobs", Some(TOKEN), "");
    assert_eq!(
        (code, jobs["jobs"][0]["name"].as_str(), jobs["jobs"][0]["phase"].as_str()),
        (200, Some("per-card"), Some("Running"))
    );
    let m = wait_until("metrics of both workers with all input read", Duration::from_secs(60), || {
        let (code, m) = http(api, "GET", "/jobs/per-card/metrics", Some(TOKEN), "");
        (code == 200 && m["recordsIn"].as_f64() == Some(evs.len() as f64)).then_some(m)
    });
    assert_eq!(m["workers"].as_array().unwrap().len(), PARTITIONS as usize, "{m}");
    assert!(m["workers"].as_array().unwrap().iter().all(|w| w["error"].is_null()), "{m}");
    assert_eq!(m["lateRecords"].as_f64(), Some(want_late.len() as f64), "{m}");
    // Busy and backpressure per operator, from every worker, in pipeline order.
    let ops = m["operators"].as_array().unwrap();
    let names: Vec<String> = ops.iter().map(|o| format!("{}:{}", o["kind"], o["name"]).replace('"', "")).collect();
    assert_eq!(names, ["source:payments", "step:per_card_minute", "sink:corrections", "sink:results"], "{m}");
    for o in ops {
        assert_eq!(o["workers"].as_array().unwrap().len(), PARTITIONS as usize, "{o}");
        for ratio in ["busyRatio", "backpressureRatio"] {
            assert!((0.0..=1.0).contains(&o[ratio].as_f64().unwrap()), "{o}");
        }
        assert!(["ok", "low", "high"].contains(&o["backpressureLevel"].as_str().unwrap()), "{o}");
    }
    let group = format!("weir.{ns}.per-card");
    let (code, lag) = http(api, "GET", &format!("/consumer-groups/{group}/lag"), Some(TOKEN), "");
    assert_eq!(code, 200, "{lag}");
    // Each partition's last offset may be a transaction marker the group never reads.
    assert!(lag["lag"].as_i64().unwrap() <= PARTITIONS as i64, "{lag}");
    assert_eq!(lag["topics"][0]["partitions"].as_array().unwrap().len(), PARTITIONS as usize);
    assert_eq!(http(api, "GET", "/consumer-groups/nobody/lag", Some(TOKEN), "").0, 404);
    assert_eq!(http(api, "GET", "/jobs/absent", Some(TOKEN), "").0, 404);
    let (code, err) = http(
        api,
        "POST",
        "/jobs",
        Some(TOKEN),
        "metadata: {name: bad}\nspec: {pipeline: {sources: {}, streams: {w: {from: x}}, sinks: {}}}",
    );
    assert_eq!(code, 400, "{err}");
    assert!(err["error"].as_str().unwrap().contains("spec.pipeline.streams.w.from"), "{err}");
    // An Avro source is checked against its registry subject (here one that does not exist),
    // with the spec's other errors.
    let subject = unique("no-such-topic");
    let avro = format!(
        "metadata: {{name: avro}}\nspec: {{pipeline: {{sources: {{p: {{kafka: {{brokers: \"{b}\", topic: {subject}}}, \
         format: avro, registry: {{url: \"http://127.0.0.1:8081/apis/ccompat/v7\"}}}}}}, sinks: {{o: {{from: q, file: {{path: o}}}}}}}}}}",
        b = kafka_brokers()
    );
    let (code, err) = http(api, "POST", "/jobs", Some(TOKEN), &avro);
    let err = err["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(code, 400, "{err}");
    assert!(err.contains(&format!("spec.pipeline.sources.p.registry.subject: the registry at http://127.0.0.1:8081/apis/ccompat/v7 has no subject `{subject}-value`")), "{err}");
    assert!(err.contains("spec.pipeline.sinks.o.from"), "{err}");
    let (code, dup) =
        http(api, "POST", "/jobs", Some(TOKEN), &window_job(1, "{interval: 1s}", &input, &output, &corrections));
    assert_eq!(code, 409, "the job exists: {dup}");
    let (code, err) = http(api, "POST", "/jobs/per-card/savepoints", Some(TOKEN), "");
    assert!(code == 409 && err["error"].as_str().unwrap().contains("checkpointing.storage"), "{err}");
    let other =
        window_job(1, "{interval: 1s}", &input, &output, &corrections).replace("name: per-card", "name: via-api");
    let (code, created) = http(api, "POST", "/jobs", Some(TOKEN), &other);
    assert_eq!((code, created["namespace"].as_str()), (201, Some(ns.as_str())), "{created}");
    assert_eq!(http(api, "GET", "/jobs/via-api", Some(TOKEN), "").0, 200);
    kubectl(&["-n", &ns, "delete", "sj", "via-api"]);

    // Invalid: every error is in the status and an Event; nothing is deployed.
    apply(
        &ns,
        r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: broken}
spec:
  pipeline:
    sources:
      p: {datagen: {kind: payments}}
    streams:
      w: {from: p, window: {tumbling: 1m}, aggregate: {n: "median(amount)"}}
    sinks:
      out: {from: nowhere, file: {path: out.jsonl}}
"#,
    );
    let message = wait_until("the broken job to be Failed", Duration::from_secs(60), || {
        (get(&ns, "sj/broken", "{.status.phase}") == "Failed")
            .then(|| get(&ns, "sj/broken", "{.status.conditions[?(@.type==\"Ready\")].message}"))
    });
    for needle in ["spec.pipeline.streams.w.window", "needs keyBy", "median", "spec.pipeline.sinks.out.from"] {
        assert!(message.contains(needle), "{needle:?} in {message}");
    }
    let events = event_reasons(&ns, "broken");
    assert!(events.contains("InvalidSpec"), "{events}");
    assert!(!kubectl_raw(&["-n", &ns, "get", "statefulset", "broken"]).status.success(), "nothing deployed");
    // What the API server can check itself (schema and CEL rules) never gets stored.
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("cel")));
    std::fs::write(
        &file,
        "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {name: cel}\nspec:\n  parallelism: 0\n  env: [{name: WEIR_X, value: a}, {name: OK}]\n  autoscaler: {minParallelism: 5, maxParallelism: 2}\n  pipeline: {sources: {}, sinks: {}}\n",
    )
    .unwrap();
    let out = kubectl_raw(&["-n", &ns, "apply", "-f", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for needle in [
        "spec.parallelism",
        "minParallelism must not be above",
        "set by the operator",
        "exactly one of value and valueFrom",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }

    // Deleting the StreamJob deletes what it owns (the garbage collector follows the owners).
    kubectl(&["-n", &ns, "delete", "sj", "per-card"]);
    wait_until("the job's objects to be gone", Duration::from_secs(120), || {
        let left: Vec<&str> = ["configmap", "service", "statefulset", "poddisruptionbudget"]
            .into_iter()
            .filter(|k| kubectl_raw(&["-n", &ns, "get", k, "per-card"]).status.success())
            .collect();
        let pods = get(&ns, "pods", "{.items[*].metadata.name}");
        (left.is_empty() && pods.is_empty()).then_some(())
    });
}

/// A rescale with a pipeline change while input flows: parallelism 2 -> 3 and a new step with
/// its own sink, through a savepoint; partitions move between the workers, each new owner
/// restores the partition from the savepoint, fences the old owner's producer and replays with
/// its output muted up to the committed offsets; the new step starts where the savepoint is. Then a suspend (no
/// workers; input waits in Kafka) and a resume from the checkpoints, which are in S3 (credentials
/// from a Secret through `spec.env`). Every window is still committed exactly once; a savepoint
/// of the resumed job completes.
#[test]
fn rescale_through_checkpoints_keeps_exactly_once() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    const P: i32 = 4;
    let (cleanup, log, api) = setup("rescale");
    let ns = cleanup.namespace.clone();
    let (input, output, corrections) = (format!("{ns}-in"), format!("{ns}-out"), format!("{ns}-late"));
    let large = format!("{ns}-large");
    create_topics(&[(&input, P), (&output, P), (&corrections, 1), (&large, 1)]);
    let evs = events(P);
    let third = evs.len() / 3;
    let (first, rest) = evs.split_at(third);
    let (second, last) = rest.split_at(third);
    let producer = producer();
    produce(&producer, &input, first);
    let S3Checkpoints { prefix, checkpointing, env } = s3_checkpoints(&ns);
    let job = |parallelism, state: &str| {
        let yaml = window_job(parallelism, &checkpointing, &input, &output, &corrections);
        yaml.replace("  epochInterval: 50ms\n", &format!("  epochInterval: 50ms\n  state: {state}\n{env}"))
    };
    // The changed pipeline: a new step, large payments, written to a new sink.
    let changed = |parallelism, state: &str| {
        job(parallelism, state)
            .replace(
                "        lateOutput: corrections\n",
                "        lateOutput: corrections\n      large:\n        from: payments\n        where: \"amount >= 900\"\n",
            )
            .replace(
                "    sinks:\n",
                &format!("    sinks:\n      large_out: {{from: large, kafka: {{brokers: \"{}\", topic: {large}}}}}\n", kafka_brokers()),
            )
    };
    let phase_is = |phase: &str, workers: &str| {
        get(&ns, "sj/per-card", "{.status.phase}") == phase
            && get(&ns, "sj/per-card", "{.status.parallelism}") == workers
    };
    apply(&ns, &job(2, "running"));
    wait_until(&format!("2 workers Running (operator log: {})", log.display()), Duration::from_secs(120), || {
        phase_is("Running", "2").then_some(())
    });
    wait_until("results of the first third", Duration::from_secs(60), || {
        (!read_all(&output, P).is_empty()).then_some(())
    });
    // Rescale while input flows: an upgrade through a savepoint, whose id is in the status
    // before the workers are asked for it.
    let deployed = get(&ns, "sj/per-card", "{.status.deployed}");
    assert!(!deployed.is_empty(), "status.deployed is recorded");
    apply(&ns, &changed(3, "running"));
    produce(&producer, &input, second);
    let upgrade = wait_until("the upgrade's savepoint in status", Duration::from_secs(30), || {
        let id = get(&ns, "sj/per-card", "{.status.upgrade.savepoint}");
        (!id.is_empty()).then_some(id)
    });
    assert!(upgrade.starts_with("upgrade-"), "{upgrade}");
    wait_until("3 workers Running", Duration::from_secs(180), || phase_is("Running", "3").then_some(()));
    assert_eq!(get(&ns, "sj/per-card", "{.status.restoredFrom}"), upgrade, "the workers restore the savepoint");
    assert_ne!(get(&ns, "sj/per-card", "{.status.deployed}"), deployed);
    let sts_env =
        get(&ns, "sts/per-card", "{.spec.template.spec.containers[0].env[?(@.name=='WEIR_RESTORE_SAVEPOINT')].value}");
    assert_eq!(sts_env, upgrade);
    let reasons = event_reasons(&ns, "per-card");
    assert!(reasons.contains("SavepointForUpgrade") && reasons.contains("Upgrading"), "{reasons}");
    assert!(s3_keys(&prefix).iter().any(|k| k.starts_with(&format!("{prefix}/savepoints/{upgrade}/"))));
    // Suspend: the workers commit, checkpoint and stop; input arriving meanwhile waits in Kafka.
    apply(&ns, &changed(3, "suspended"));
    wait_until("Suspended with no workers", Duration::from_secs(120), || {
        (phase_is("Suspended", "0") && get(&ns, "pods", "{.items[*].metadata.name}").is_empty()).then_some(())
    });
    produce(&producer, &input, last);
    std::thread::sleep(Duration::from_secs(1));
    let while_suspended = read_all(&output, P).len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read_all(&output, P).len(), while_suspended, "nothing runs while suspended");
    // Resume: state comes back from the checkpoints.
    apply(&ns, &changed(3, "running"));
    wait_until("3 workers Running again", Duration::from_secs(180), || phase_is("Running", "3").then_some(()));
    let (want, want_late) = reference(&evs, P);
    let (got, emitted) = windows_of(&output, P, want.len());
    assert_eq!(got, want, "every window equals the reference");
    assert_eq!(emitted, want.len(), "each window is committed once across the rescale, suspend and resume");
    assert_eq!(read_all(&corrections, 1).len(), want_late.len(), "each late event is committed once");
    // The new step: each large payment once, and every one produced after the change (the
    // input after the last window may still be in flight when the windows are all out).
    let is_large = |e: &Ev| e.amount >= 900;
    let after_change: BTreeSet<&str> = last.iter().filter(|(_, e)| is_large(e)).map(|(_, e)| e.id.as_str()).collect();
    let large_ids = wait_until("the large payments produced after the change", Duration::from_secs(60), || {
        let ids: Vec<String> = read_all(&large, 1).iter().map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
        after_change.iter().all(|id| ids.iter().any(|i| i == id)).then_some(ids)
    });
    let unique_ids: BTreeSet<&String> = large_ids.iter().collect();
    assert_eq!(unique_ids.len(), large_ids.len(), "no large payment twice");
    assert!(large_ids.iter().all(|id| evs.iter().any(|(_, e)| &e.id == id && is_large(e))), "only large payments");

    // A savepoint through the REST API: every worker stores its partitions, self-contained.
    let (code, sp) = http(api, "POST", "/jobs/per-card/savepoints", Some(TOKEN), "");
    assert_eq!(code, 202, "{sp}");
    let id = sp["id"].as_str().unwrap().to_string();
    let done = wait_until("the savepoint to complete", Duration::from_secs(60), || {
        let (code, st) = http(api, "GET", &format!("/jobs/per-card/savepoints/{id}"), Some(TOKEN), "");
        assert_eq!(code, 200, "{st}");
        assert_ne!(st["state"], "failed", "{st}");
        (st["state"] == "completed").then_some(st)
    });
    assert_eq!(done["workers"].as_array().unwrap().len(), 3, "{done}");
    let stored = s3_keys(&prefix);
    for p in 0..P {
        let manifest = format!("{prefix}/savepoints/{id}/p{p}/_manifest.json");
        assert!(stored.contains(&manifest), "partition {p} is in the savepoint: {stored:?}");
    }
    assert!(stored.iter().any(|k| k.contains("/chk-") && k.ends_with("_manifest.json")), "checkpoints in S3");
    let last = get(&ns, "sj/per-card", "{.status.lastSavepoint.path}");
    assert!(last.ends_with(&format!("savepoints/{id}")), "status.lastSavepoint: {last}");
    // The history lists the upgrades' savepoints (rescale, suspend) and this one, oldest first.
    let triggers = get(&ns, "sj/per-card", "{.status.savepoints[*].trigger}");
    assert!(triggers.starts_with("upgrade") && triggers.ends_with("api"), "status.savepoints triggers: {triggers}");
    let paths = get(&ns, "sj/per-card", "{.status.savepoints[*].path}");
    assert!(paths.contains(&format!("savepoints/{upgrade}")), "{paths}");
}

/// Events of the autoscaler's burst test: `BURST_EVENTS` 2 ms of event time apart, of which
/// the first fiftieth arrive before the burst.
const BURST_EVENTS: i64 = 800_000;

/// The built-in autoscaler: a job at 1 worker gets a burst far above one worker's capacity; the
/// operator scales it up (in status, not spec; the workers restore their last checkpoints, no
/// savepoint needed), the lag drains, and once the input stops it scales down after
/// `scaleDownDelay` (in one step, or two when the delay's window held the end of the burst): each
/// window committed once and equal to the reference.
#[test]
fn the_autoscaler_scales_up_for_a_burst_and_down_after_it() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    const P: i32 = 4;
    let (cleanup, log, api) = setup_with("autoscale", &["--autoscaler-period", "2"]);
    let ns = cleanup.namespace.clone();
    let (input, output, corrections) = (format!("{ns}-in"), format!("{ns}-out"), format!("{ns}-late"));
    create_topics(&[(&input, P), (&output, P), (&corrections, 1)]);
    let evs = events_spaced(P, BURST_EVENTS, 2);
    let (before, burst) = evs.split_at(evs.len() / 50);
    let producer = producer();
    produce(&producer, &input, before);
    let S3Checkpoints { checkpointing, env, .. } = s3_checkpoints(&ns);
    let autoscaler = "  autoscaler: {enabled: true, minParallelism: 1, maxParallelism: 4, targetUtilization: 0.7, \
                      catchUpDuration: 60s, scaleDownDelay: 20s}\n";
    let yaml = window_job(1, &checkpointing, &input, &output, &corrections)
        .replace("  epochInterval: 50ms\n", &format!("  epochInterval: 50ms\n{env}{autoscaler}"));
    apply(&ns, &yaml);
    let sj = |path: &str| get(&ns, "sj/per-card", path);
    let running_at = |workers: &str| sj("{.status.phase}") == "Running" && sj("{.status.parallelism}") == workers;
    wait_until(&format!("1 worker Running (operator log: {})", log.display()), Duration::from_secs(120), || {
        running_at("1").then_some(())
    });
    wait_until("the first results", Duration::from_secs(60), || (!read_all(&output, P).is_empty()).then_some(()));
    // Observed at low load for a few periods: no rescale.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(sj("{.status.autoscaler.rescales}"), "0", "no rescale at low load: {}", sj("{.status.autoscaler}"));

    let started = std::time::Instant::now();
    produce(&producer, &input, burst);
    eprintln!("burst of {} events produced in {:.1} s", burst.len(), started.elapsed().as_secs_f64());
    let up = wait_until("a scale-up", Duration::from_secs(90), || {
        let kinds = sj("{.status.autoscaler.decisions[*].kind}");
        kinds.contains("ScaleUp").then(|| sj("{.status.autoscaler.parallelism}"))
    });
    let up_at = started.elapsed();
    assert_ne!(up, "1", "{}", sj("{.status.autoscaler}"));
    assert_eq!(sj("{.spec.parallelism}"), "1", "the spec is left alone");
    wait_until(&format!("{up} workers Running"), Duration::from_secs(180), || running_at(&up).then_some(()));
    let rescaled_at = started.elapsed();
    let group = format!("weir.{ns}.per-card");
    let drained = wait_until("the lag drained", Duration::from_secs(180), || {
        let (code, lag) = http(api, "GET", &format!("/consumer-groups/{group}/lag"), Some(TOKEN), "");
        (code == 200 && lag["lag"] == 0).then(|| started.elapsed())
    });
    eprintln!(
        "scale-up to {up} decided {:.1} s after the burst began, {up} workers ready at {:.1} s, lag drained at {:.1} s; decisions: {}",
        up_at.as_secs_f64(),
        rescaled_at.as_secs_f64(),
        drained.as_secs_f64(),
        sj("{.status.autoscaler.decisions}")
    );
    assert!(drained - rescaled_at < Duration::from_secs(60), "the lag drains within catchUpDuration of the rescale");

    // The input stopped: back to 1 worker once the scale-down delay has passed.
    // In one step, or in two when the scale-down delay's window still held the end of the burst
    // (the autoscaler goes to the most workers any period of that window needed, as an HPA's
    // stabilization window does).
    let kinds = wait_until("back to 1 worker", Duration::from_secs(240), || {
        let kinds = sj("{.status.autoscaler.decisions[*].kind}");
        (kinds.contains("ScaleDown") && sj("{.status.autoscaler.parallelism}") == "1").then_some(kinds)
    });
    assert!(kinds == "ScaleUp ScaleDown" || kinds == "ScaleUp ScaleDown ScaleDown", "{}", sj("{.status.autoscaler}"));
    let rescales = kinds.split_whitespace().count();
    wait_until("1 worker Running again", Duration::from_secs(180), || running_at("1").then_some(()));
    let (want, want_late) = reference(&evs, P);
    let (got, emitted) = windows_of(&output, P, want.len());
    assert_eq!(got, want, "every window equals the reference");
    assert_eq!(emitted, want.len(), "each window is committed once across both rescales");
    assert_eq!(read_all(&corrections, 1).len(), want_late.len(), "each late event is committed once");
    // The rescales counted, each measured, in Events and metrics too.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(sj("{.status.autoscaler.rescales}"), rescales.to_string(), "{}", sj("{.status.autoscaler}"));
    let seconds = sj("{.status.autoscaler.decisions[*].rescaleSeconds}");
    eprintln!("rescales {kinds}, seconds: {seconds}");
    assert_eq!(seconds.split_whitespace().count(), rescales, "{}", sj("{.status.autoscaler}"));
    let reasons = event_reasons(&ns, "per-card");
    assert!(reasons.contains("ScaleUp") && reasons.contains("ScaleDown"), "{reasons}");
    assert!(!reasons.contains("ScalingIneffective"), "{reasons}");
    assert!(!reasons.contains("SavepointForUpgrade"), "a rescale restores the last checkpoints: {reasons}");
    let metrics = http_text(api, "/metrics");
    assert!(
        metrics.contains(&format!(
            "weir_operator_autoscaler_rescales_total{{direction=\"ScaleUp\",name=\"per-card\",namespace=\"{ns}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("weir_operator_desired_parallelism{{name=\"per-card\",namespace=\"{ns}\"}} 1")),
        "{metrics}"
    );
}

/// Two operators: one leads (holds the Lease) and reconciles; when it dies the other takes the
/// Lease over and reconciles in its place.
#[test]
fn one_of_two_operators_leads_and_the_other_takes_over() {
    require_port("kube-apiserver", 6443);
    let (mut cleanup, log_a, _) = setup("lead");
    let ns = cleanup.namespace.clone();
    let log_b = log_a.with_extension("second.log");
    let (b, _) = start_operator(&ns, &log_b);
    cleanup.operators.push(b);
    let pids: Vec<String> = cleanup.operators.iter().map(|c| c.id().to_string()).collect();
    let holder = wait_until("a leader", Duration::from_secs(30), || {
        let h = get(&ns, "lease/weir-operator", "{.spec.holderIdentity}");
        (!h.is_empty()).then_some(h)
    });
    let leader = pids.iter().position(|p| holder.ends_with(&format!("-{p}"))).expect("the holder is one of the two");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(get(&ns, "lease/weir-operator", "{.spec.holderIdentity}"), holder, "the leader keeps its lease");
    let logs = [&log_a, &log_b].map(|l| std::fs::read_to_string(l).unwrap());
    assert!(logs[leader].contains("leading") && !logs[1 - leader].contains("leading"), "only one leads: {logs:?}");

    cleanup.operators[leader].kill().unwrap();
    cleanup.operators[leader].wait().unwrap();
    let other = &pids[1 - leader];
    wait_until("the other operator to take the lease over", Duration::from_secs(30), || {
        get(&ns, "lease/weir-operator", "{.spec.holderIdentity}").ends_with(&format!("-{other}")).then_some(())
    });
    assert_eq!(get(&ns, "lease/weir-operator", "{.spec.leaseTransitions}"), "1");
    apply(
        &ns,
        r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: gen}
spec:
  image: weir-worker:dev
  pipeline:
    sources: {p: {datagen: {kind: payments, rate: 10}}}
    sinks: {o: {from: p, file: {path: out.jsonl}}}
"#,
    );
    wait_until("the new leader to reconcile", Duration::from_secs(60), || {
        (get(&ns, "sj/gen", "{.status.phase}") == "Running").then_some(())
    });
}

/// The operator holds no state of its own: one killed in the middle of an upgrade (its
/// savepoint recorded in status and requested from the workers), replaced by a new one, finishes
/// that upgrade: the job reaches its new spec (StatefulSet rolled, status observing the new
/// generation) restoring that same savepoint.
#[test]
fn a_restarted_operator_completes_a_change() {
    require_port("kube-apiserver", 6443);
    let (mut cleanup, log, _) = setup("restart");
    let ns = cleanup.namespace.clone();
    let storage = tempfile::tempdir().unwrap();
    let gen_job = |rate: u32| {
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: gen}}\nspec:\n  image: weir-worker:dev\n  checkpointing: {{interval: 1s, storage: \"file://{}\"}}\n  pipeline:\n    sources: {{p: {{datagen: {{kind: payments, rate: {rate}}}}}}}\n    sinks: {{o: {{from: p, file: {{path: out.jsonl}}}}}}\n",
            storage.path().display()
        )
    };
    apply(&ns, &gen_job(10));
    wait_until(&format!("Running (operator log: {})", log.display()), Duration::from_secs(60), || {
        (get(&ns, "sj/gen", "{.status.phase}") == "Running").then_some(())
    });
    let hash = |ns: &str| get(ns, "statefulset/gen", "{.spec.template.metadata.annotations.weir\\.dev/config-hash}");
    let before = hash(&ns);
    // The operator dies in the middle of an upgrade: the job changed, the savepoint's id is in
    // the status and the workers were asked for it (done here as the operator would have).
    for op in &mut cleanup.operators {
        op.kill().unwrap();
        op.wait().unwrap();
    }
    apply(&ns, &gen_job(20));
    let id = format!("upgrade-{}-1", get(&ns, "sj/gen", "{.metadata.generation}"));
    let upgrade = format!(
        r#"{{"status": {{"phase": "Upgrading", "upgrade": {{"savepoint": "{id}", "target": "-", "started": "2026-01-01T00:00:00Z", "deadline": "2100-01-01T00:00:00Z"}}}}}}"#
    );
    kubectl(&["-n", &ns, "patch", "sj/gen", "--subresource=status", "--type=merge", "-p", &upgrade]);
    // Only the holder of the job's admin token (the operator) may ask a worker for a savepoint.
    let token = kubectl(&["-n", &ns, "get", "secret", "gen-admin", "-o", "go-template={{.data.token | base64decode}}"]);
    for ip in get(&ns, "pods", "{.items[*].status.podIP}").split_whitespace() {
        assert!(worker_call(ip, "POST", &format!("/savepoints/{id}"), None).starts_with("HTTP/1.0 401"));
        assert!(worker_call(ip, "POST", &format!("/savepoints/{id}"), Some(&token)).starts_with("HTTP/1.0 202"));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(hash(&ns), before, "nothing acts without an operator");
    let (op, _) = start_operator(&ns, &log.with_extension("second.log"));
    cleanup.operators.push(op);
    wait_until("the new operator to complete the upgrade", Duration::from_secs(60), || {
        let generation = get(&ns, "sj/gen", "{.metadata.generation}");
        let observed = get(&ns, "sj/gen", "{.status.observedGeneration}");
        let running = get(&ns, "sj/gen", "{.status.phase}") == "Running";
        (running && generation == observed && hash(&ns) != before).then_some(())
    });
    assert_eq!(get(&ns, "sj/gen", "{.status.restoredFrom}"), id, "it restores the savepoint the first one asked for");
    assert!(get(&ns, "sj/gen", "{.status.upgrade}").is_empty());
}

/// The lifecycle beside upgrades, on one job (`upgradeMode: stateless`, datagen at 200/s, a
/// checkpoint a second): `savepointTriggerNonce` takes a savepoint without restarting anyone; a
/// changed pipeline starts from empty state in a new state folder; a spec whose workers never
/// become ready is rolled back after `rollbackAfter` to the last stable spec, which restores its
/// own last checkpoint; deleting the job takes a final savepoint (finalizer) that a new job
/// starts from with `initialSavepoint`.
#[test]
fn nonce_savepoint_stateless_upgrade_rollback_and_final_savepoint() {
    require_port("kube-apiserver", 6443);
    let (_cleanup, log, _) = setup("life");
    let ns = _cleanup.namespace.clone();
    let storage = tempfile::tempdir().unwrap();
    let job = |name: &str, rate: u32, nonce: u32, sink: &str, extra: &str| {
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: {name}}}\nspec:\n  image: weir-worker:dev\n  upgradeMode: stateless\n  savepointTriggerNonce: {nonce}\n  rollbackAfter: 10s\n{extra}  checkpointing: {{interval: 1s, storage: \"file://{}\"}}\n  pipeline:\n    sources: {{p: {{datagen: {{kind: payments, rate: {rate}}}}}}}\n    sinks: {{o: {{from: p, file: {{path: {sink}}}}}}}\n",
            storage.path().display()
        )
    };
    let on_delete = "  savepointOnDeletion: true\n";
    let phase = |name: &str| get(&ns, &format!("sj/{name}"), "{.status.phase}");
    let settled = |name: &str, want: &str| {
        let sj = format!("sj/{name}");
        phase(name) == want && get(&ns, &sj, "{.metadata.generation}") == get(&ns, &sj, "{.status.observedGeneration}")
    };
    // The next position of the datagen source, from the worker's metrics (0 while unknown).
    let position = || {
        let ip = get(&ns, "pods", "{.items[0].status.podIP}");
        if ip.is_empty() {
            return 0;
        }
        let metrics = try_worker_call(&ip, "GET", "/metrics", None).unwrap_or_default();
        metrics
            .lines()
            .find(|l| l.starts_with("weir_source_position{"))
            .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .unwrap_or(0.0) as i64
    };
    let folders = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(storage.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("state-"))
            .collect();
        v.sort();
        v
    };
    apply(&ns, &job("gen", 200, 1, "out.jsonl", on_delete));
    wait_until(&format!("Running (operator log: {})", log.display()), Duration::from_secs(60), || {
        settled("gen", "Running").then_some(())
    });
    assert_eq!(get(&ns, "sj/gen", "{.metadata.finalizers}"), r#"["weir.dev/final-savepoint"]"#);
    assert!(get(&ns, "sj/gen", "{.status.savepoints}").is_empty(), "a nonce set at creation takes no savepoint");

    // A new nonce: a savepoint, the same Pod still running.
    let pod_uid = get(&ns, "pods", "{.items[0].metadata.uid}");
    apply(&ns, &job("gen", 200, 2, "out.jsonl", on_delete));
    wait_until("the nonce's savepoint", Duration::from_secs(60), || {
        get(&ns, "sj/gen", "{.status.savepoints[*].trigger}").contains("nonce").then_some(())
    });
    assert_eq!(get(&ns, "pods", "{.items[0].metadata.uid}"), pod_uid, "no restart for a savepoint");
    let saved = get(&ns, "sj/gen", "{.status.lastSavepoint.path}");
    let saved = saved.strip_prefix("file://").unwrap();
    assert!(std::path::Path::new(saved).join("p0/_manifest.json").exists(), "{saved}");

    // A changed pipeline with upgradeMode stateless: empty state, in a new folder.
    let before = wait_until("2,000 records read", Duration::from_secs(60), || Some(position()).filter(|p| *p >= 2_000));
    apply(&ns, &job("gen", 201, 2, "out.jsonl", on_delete));
    wait_until("the stateless upgrade", Duration::from_secs(90), || {
        (settled("gen", "Running") && !get(&ns, "sj/gen", "{.status.stateGeneration}").is_empty()).then_some(())
    });
    let fresh =
        wait_until("the new worker's position", Duration::from_secs(30), || Some(position()).filter(|p| *p > 0));
    assert!(fresh < before, "started from empty state: position {fresh}, was {before}");
    let generation = get(&ns, "sj/gen", "{.status.stateGeneration}");
    let env = get(
        &ns,
        "statefulset/gen",
        "{.spec.template.spec.containers[0].env[?(@.name==\"WEIR_STATE_GENERATION\")].value}",
    );
    assert!(env.ends_with(&format!("-{generation}")), "{env}");
    wait_until("checkpoints in the new state folder", Duration::from_secs(30), || {
        (folders().len() == 2 && storage.path().join(&env).join("p0").exists()).then_some(())
    });

    // A spec whose workers cannot start (the sink cannot be created): rolled back after 10 s.
    let stable_hash = get(&ns, "statefulset/gen", "{.spec.template.metadata.annotations.weir\\.dev/config-hash}");
    let last = wait_until("1,000 more records", Duration::from_secs(60), || Some(position()).filter(|p| *p >= 1_000));
    apply(&ns, &job("gen", 202, 2, "/proc/weir-no-such-dir/out.jsonl", on_delete));
    wait_until("the rollback", Duration::from_secs(120), || settled("gen", "RolledBack").then_some(()));
    let reasons = event_reasons(&ns, "gen");
    assert!(reasons.contains("RollingBack") && reasons.contains("RolledBack"), "{reasons}");
    assert_eq!(
        get(&ns, "statefulset/gen", "{.spec.template.metadata.annotations.weir\\.dev/config-hash}"),
        stable_hash
    );
    assert_eq!(get(&ns, "sj/gen", "{.status.stateGeneration}"), generation, "back in the stable spec's folder");
    let resumed =
        wait_until("the restored worker's position", Duration::from_secs(30), || Some(position()).filter(|p| *p > 0));
    assert!(resumed >= last, "restored its last checkpoint: position {resumed}, was {last} before the failed upgrade");

    // Deletion: a final savepoint, then everything goes; a new job starts from that savepoint.
    let at_delete = position();
    kubectl(&["-n", &ns, "delete", "sj/gen", "--wait=false"]);
    let note = wait_until("the final savepoint's Event", Duration::from_secs(60), || {
        let sel = "involvedObject.name=gen,reason=FinalSavepoint";
        let note =
            kubectl(&["-n", &ns, "get", "events", "--field-selector", sel, "-o", "jsonpath={.items[*].message}"]);
        (!note.is_empty()).then_some(note)
    });
    wait_until("the StreamJob to go", Duration::from_secs(60), || {
        get(&ns, "streamjobs", "{.items[*].metadata.name}").is_empty().then_some(())
    });
    let path = note.split("initialSavepoint: ").nth(1).unwrap().trim().to_string();
    assert!(std::path::Path::new(path.strip_prefix("file://").unwrap()).join("p0/_manifest.json").exists(), "{note}");
    wait_until("the old workers to stop", Duration::from_secs(60), || {
        get(&ns, "pods", "{.items[*].metadata.name}").is_empty().then_some(())
    });
    apply(&ns, &job("gen-b", 201, 0, "out.jsonl", &format!("  initialSavepoint: \"{path}\"\n")));
    wait_until("the new job", Duration::from_secs(60), || settled("gen-b", "Running").then_some(()));
    assert!(event_reasons(&ns, "gen-b").contains("RestoringSavepoint"));
    let restored = wait_until("its position", Duration::from_secs(30), || Some(position()).filter(|p| *p > 0));
    assert!(restored >= at_delete, "the new job goes on from the final savepoint: {restored}, {at_delete}");
}

/// One operator watching two namespaces (`--namespace a,b`) runs the jobs of both and leaves a
/// third namespace's alone; its REST API serves only the watched ones.
#[test]
fn one_operator_watches_several_namespaces() {
    require_port("kube-apiserver", 6443);
    let (mut cleanup, log, _) = setup("multi");
    let a = cleanup.namespace.clone();
    let (b, c) = (format!("{a}-b"), format!("{a}-c"));
    for ns in [&b, &c] {
        kubectl(&["create", "namespace", ns]);
        cleanup.others.push(ns.clone());
    }
    for op in &mut cleanup.operators {
        op.kill().unwrap();
        op.wait().unwrap();
    }
    let (op, api) = start_operator(&format!("{a},{b}"), &log);
    cleanup.operators.push(op);
    let job = "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {name: gen}\nspec:\n  image: weir-worker:dev\n  pipeline:\n    sources: {p: {datagen: {kind: payments, rate: 10}}}\n    sinks: {o: {from: p, file: {path: out.jsonl}}}\n";
    for ns in [&a, &b, &c] {
        apply(ns, job);
    }
    wait_until(&format!("Running in {a} and {b} (operator log: {})", log.display()), Duration::from_secs(90), || {
        [&a, &b].iter().all(|ns| get(ns, "sj/gen", "{.status.phase}") == "Running").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get(&c, "sj/gen", "{.status.phase}"), "", "a namespace not watched is left alone");
    assert!(get(&c, "statefulsets", "{.items[*].metadata.name}").is_empty());
    let (code, jobs) = http(api, "GET", &format!("/jobs?namespace={b}"), Some(TOKEN), "");
    assert_eq!(code, 200, "{jobs}");
    let (code, err) = http(api, "GET", &format!("/jobs?namespace={c}"), Some(TOKEN), "");
    assert_eq!(code, 403, "{err}");
}

/// With `--api-token-review` the REST API takes Kubernetes tokens (a ServiceAccount's here) and
/// lets RBAC decide: a reader may list and get StreamJobs but not create them; a token the API
/// server does not know is refused; the configured token still works.
#[test]
fn the_rest_api_takes_kubernetes_tokens_and_rbac() {
    require_port("kube-apiserver", 6443);
    let (mut cleanup, log, _) = setup("tokens");
    let ns = cleanup.namespace.clone();
    for op in &mut cleanup.operators {
        op.kill().unwrap();
        op.wait().unwrap();
    }
    let (op, api) = start_operator_with(&ns, &log, &["--api-token-review"]);
    cleanup.operators.push(op);
    kubectl(&["-n", &ns, "create", "serviceaccount", "reader"]);
    kubectl(&["-n", &ns, "create", "role", "sj-reader", "--verb=get,list", "--resource=streamjobs.weir.dev"]);
    kubectl(&[
        "-n",
        &ns,
        "create",
        "rolebinding",
        "sj-reader",
        "--role=sj-reader",
        &format!("--serviceaccount={ns}:reader"),
    ]);
    let token = kubectl(&["-n", &ns, "create", "token", "reader"]).trim().to_string();
    wait_until("the operator's API", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", api)).ok().map(|_| ())
    });
    let (code, body) = http(api, "GET", "/jobs", Some(&token), "");
    assert_eq!(code, 200, "a reader lists StreamJobs: {body}");
    let job = "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {name: gen}\nspec:\n  pipeline:\n    sources: {p: {datagen: {kind: payments, rate: 10}}}\n    sinks: {o: {from: p, file: {path: out.jsonl}}}\n";
    let (code, body) = http(api, "POST", "/jobs", Some(&token), job);
    assert_eq!(code, 403, "{body}");
    let err = body["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(&format!("system:serviceaccount:{ns}:reader may not create streamjobs in namespace {ns}")),
        "{err}"
    );
    let (code, body) = http(api, "GET", "/jobs", Some("not-a-token"), "");
    assert_eq!(code, 401, "{body}");
    let (code, body) = http(api, "POST", "/jobs", Some(TOKEN), job);
    assert_eq!(code, 201, "the configured token still works: {body}");
}

/// The examples as written: `examples/payments-loader.yaml` run by the worker fills topic
/// `payments`; `kubectl apply -f examples/payments-kafka.yaml` runs the job on the cluster, and
/// its windows appear in `payments-per-card-minute` for a `read_committed` consumer;
/// `kubectl get sj` shows its columns and `kubectl describe` its Events.
#[test]
fn the_kafka_example_runs_as_written() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    let topics =
        [("payments", 6), ("payments-per-card-minute", 6), ("payments-corrections", 1), ("payments-dead-letters", 1)];
    // Afresh, as `make demo` does: an earlier run's workers may have left a transaction open
    // that would hold read_committed readers back until it times out.
    recreate_topics(&topics);
    let loader = Command::new(debug_bin("weir-worker"))
        .args(["run", "-f", repo_dir().join("examples/payments-loader.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(loader.status.success(), "the loader: {}", String::from_utf8_lossy(&loader.stderr));
    let (cleanup, log, _) = setup("example");
    let ns = cleanup.namespace.clone();
    kubectl(&["-n", &ns, "apply", "-f", repo_dir().join("examples/payments-kafka.yaml").to_str().unwrap()]);
    wait_until(&format!("Running (operator log: {})", log.display()), Duration::from_secs(120), || {
        (get(&ns, "sj/payments-kafka", "{.status.phase}") == "Running").then_some(())
    });
    let results = wait_until("the example's windows", Duration::from_secs(120), || {
        let all = read_all("payments-per-card-minute", 6);
        (!all.is_empty()).then_some(all)
    });
    let window = &results.last().unwrap().1;
    for field in ["card_id", "n", "total", "max_amount", "window_start", "window_end"] {
        assert!(!window[field].is_null(), "{field} in {window}");
    }
    let table = kubectl(&["-n", &ns, "get", "sj"]);
    for column in ["PHASE", "PARALLELISM", "LAG", "LAST-SAVEPOINT", "AGE", "payments-kafka", "Running"] {
        assert!(table.contains(column), "kubectl get sj shows {column}: {table}");
    }
    let described = kubectl(&["-n", &ns, "describe", "sj", "payments-kafka"]);
    let events = described.split_once("Events:").map(|(_, e)| e).unwrap_or_default();
    assert!(events.contains("Running"), "kubectl describe shows the Events: {described}");
    // The join example passes the API server's schema as written (a server-side dry run).
    let join = repo_dir().join("examples/orders-payments-join.yaml");
    let out = kubectl(&["-n", &ns, "apply", "--dry-run=server", "-f", join.to_str().unwrap()]);
    assert!(out.contains("created (server dry run)"), "{out}");
}

/// `method path` on a worker's admin server, with the job's admin token when given; the raw
/// answer.
fn worker_call(ip: &str, method: &str, path: &str, token: Option<&str>) -> String {
    try_worker_call(ip, method, path, token).unwrap()
}

/// [`worker_call`], or the error of a worker that cannot be reached.
fn try_worker_call(ip: &str, method: &str, path: &str, token: Option<&str>) -> std::io::Result<String> {
    weir_e2e::http_raw((ip, 9249), method, path, token, "")
}

/// Whether `topic` exists on the local Kafka.
fn topic_exists(topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    md.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
}

/// A job with a repartition step on the cluster: its workers create the internal topic, and
/// the operator holds a finalizer for it; deleting the StreamJob stops the workers, then deletes
/// the topic, then lets the job go.
#[test]
fn deleting_a_job_deletes_its_repartition_topic() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    let (cleanup, log, _) = setup("rpdel");
    let ns = cleanup.namespace.clone();
    let (input, output) = (format!("{ns}-in"), format!("{ns}-out"));
    create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS)]);
    apply(
        &ns,
        &format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: rekeyed}}
spec:
  image: weir-worker:dev
  parallelism: 1
  pipeline:
{pipeline}    sinks:
      results: {{from: per_card_minute, kafka: {{brokers: "{b}", topic: {output}}}}}
      corrections: {{kafka: {{brokers: "{b}", topic: {output}}}}}
"#,
            b = kafka_brokers(),
            pipeline = repartition_job_pipeline(&input),
        ),
    );
    let topic = format!("weir.{ns}.rekeyed.by_card.repartition");
    wait_until(&format!("Running (operator log: {})", log.display()), Duration::from_secs(120), || {
        (get(&ns, "sj/rekeyed", "{.status.phase}") == "Running").then_some(())
    });
    wait_until("the internal topic", Duration::from_secs(60), || topic_exists(&topic).then_some(()));
    let finalizers = get(&ns, "sj/rekeyed", "{.metadata.finalizers}");
    assert!(finalizers.contains("weir.dev/internal-topics"), "{finalizers}");
    kubectl(&["-n", &ns, "delete", "sj", "rekeyed", "--wait=false"]);
    wait_until("the topic deleted and the job gone", Duration::from_secs(120), || {
        let gone = !kubectl_raw(&["-n", &ns, "get", "sj", "rekeyed"]).status.success();
        (gone && !topic_exists(&topic)).then_some(())
    });
    let reasons = event_reasons(&ns, "rekeyed");
    assert!(reasons.contains("TopicsDeleted"), "{reasons}");
}

/// The operator's process figures: CPU seconds used so far and peak resident memory in MiB
/// (from /proc).
fn process_figures(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (ticks / 100.0, hwm_kib / 1024.0)
}

/// Which worker reads each input partition, from every worker's `weir_consumer_lag` and
/// `weir_source_position` series: partition -> the Pods reading it. `None` while a worker
/// cannot be read.
fn partition_owners(ns: &str) -> Option<std::collections::BTreeMap<i32, Vec<String>>> {
    let mut owners: std::collections::BTreeMap<i32, Vec<String>> = Default::default();
    let pods = get(ns, "pods", "{range .items[*]}{.metadata.name} {.status.podIP}{\"\\n\"}{end}");
    for line in pods.lines() {
        let (pod, ip) = line.split_once(' ')?;
        let metrics = try_worker_call(ip, "GET", "/metrics", None).ok()?;
        let mut read = BTreeSet::new();
        for l in
            metrics.lines().filter(|l| l.starts_with("weir_consumer_lag{") || l.starts_with("weir_source_position{"))
        {
            read.insert(l.split("partition=\"").nth(1)?.split('"').next()?.parse::<i32>().ok()?);
        }
        for p in read {
            owners.entry(p).or_default().push(pod.to_string());
        }
    }
    Some(owners)
}

/// The control plane at 100 workers (the slow tier: `make test-scale`): one StreamJob of 100
/// workers over a 300-partition topic at a low event rate and 128 MiB per worker; every
/// partition is read by exactly one worker, then the job rescales 100 -> 50 -> 100 (through a
/// savepoint each, every worker restarted at once) with input arriving in between, and every
/// window is still committed exactly once and equal to the reference. Prints how long each
/// step took and the operator's CPU time and peak memory.
#[test]
#[ignore = "the slow tier, `make test-scale`: 100 workers"]
fn a_hundred_workers_share_300_partitions_and_rescale_to_50_and_back() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    const P: i32 = 300;
    const OUT: i32 = 6;
    let (cleanup, log, _) = setup("scale");
    let ns = cleanup.namespace.clone();
    let operator = cleanup.operators[0].id();
    let (input, output, corrections) = (format!("{ns}-in"), format!("{ns}-out"), format!("{ns}-late"));
    create_topics(&[(&input, P), (&output, OUT), (&corrections, 1)]);
    // 600 cards, two per partition, 120 events per partition a minute of event time apart.
    let evs = events_of_cards(600, P, 36_000, 200);
    let third = evs.len() / 3;
    let (first, rest) = evs.split_at(third);
    let (second, last) = rest.split_at(third);
    let producer = ordered_producer();
    produce(&producer, &input, first);
    let S3Checkpoints { checkpointing, env, .. } = s3_checkpoints(&ns);
    let checkpointing = checkpointing.replace("interval: 300ms", "interval: 10s");
    let job = |parallelism| {
        window_job(parallelism, &checkpointing, &input, &output, &corrections).replace(
            "  epochInterval: 50ms\n",
            &format!(
                "  epochInterval: 1s\n  resources: {{requests: {{cpu: 10m, memory: 64Mi}}, limits: {{memory: 128Mi}}}}\n{env}"
            ),
        )
    };
    let sj = |path: &str| get(&ns, "sj/per-card", path);
    let running_at = |workers: &str| sj("{.status.phase}") == "Running" && sj("{.status.parallelism}") == workers;
    let owned_once = |workers: usize| {
        wait_until("every partition read by exactly one worker", Duration::from_secs(120), || {
            let owners = partition_owners(&ns)?;
            let pods: BTreeSet<&String> = owners.values().flatten().collect();
            let once = owners.len() == P as usize && owners.values().all(|o| o.len() == 1) && pods.len() == workers;
            if !once {
                std::thread::sleep(Duration::from_secs(2));
            }
            once.then_some(())
        })
    };
    let mut steps = Vec::new();
    for (i, workers) in [100, 50, 100].into_iter().enumerate() {
        let started = std::time::Instant::now();
        apply(&ns, &job(workers));
        wait_until(
            &format!("{workers} workers Running (operator log: {})", log.display()),
            Duration::from_secs(600),
            || running_at(&workers.to_string()).then_some(()),
        );
        let took = started.elapsed();
        owned_once(workers as usize);
        let (cpu, rss) = process_figures(operator);
        eprintln!(
            "step {i}: {workers} workers Running after {:.1} s; operator so far: {cpu:.1} s CPU, peak {rss:.0} MiB",
            took.as_secs_f64()
        );
        steps.push((workers, took, cpu, rss));
        // Input arriving at each parallelism.
        produce(&producer, &input, [second, last].get(i).copied().unwrap_or_default());
    }
    let (want, want_late) = reference(&evs, P);
    let (got, emitted) = windows_of(&output, OUT, want.len());
    assert_eq!(got, want, "every window equals the reference");
    assert_eq!(emitted, want.len(), "each window is committed once across both rescales");
    assert_eq!(read_all(&corrections, 1).len(), want_late.len(), "each late event is committed once");
    let reasons = event_reasons(&ns, "per-card");
    assert!(reasons.contains("SavepointForUpgrade") && reasons.contains("Restarting"), "{reasons}");
    assert!(steps.iter().all(|s| s.3 < 512.0), "the operator's memory stays small: {steps:?}");
}

/// The fault-injection suite's cases on the cluster (see e2e/tests/faults.rs for the worker's):
/// a job with S3 checkpoints survives a worker Pod deleted by hand (recreated and restored), a
/// restart of the kube-apiserver (the workers never need it; the operator reconnects) and the
/// S3 server down (the `Checkpointing` condition goes False with a Warning Event and back to
/// True with a Normal one); every window is committed exactly once through all of it.
#[test]
fn a_deleted_pod_an_api_server_restart_and_a_storage_outage_lose_and_repeat_nothing() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    require_port("S3", 7070);
    let (mut cleanup, log, _) = setup("faults");
    let ns = cleanup.namespace.clone();
    let case = QuarteredJob::apply(&ns);
    let ready = || get(&ns, "sj/per-card", "{.status.phase}") == "Running" && ready_workers(&ns) == PARTITIONS;
    wait_until(&format!("Running (operator log: {})", log.display()), Duration::from_secs(120), || {
        ready().then_some(())
    });
    case.wait_for_results();

    // A Pod deleted by hand: its StatefulSet makes it again; it restores its state.
    let uid = get(&ns, "pod/per-card-0", "{.metadata.uid}");
    let deleted = std::time::Instant::now();
    kubectl(&["-n", &ns, "delete", "pod", "per-card-0", "--wait=false"]);
    wait_until("the deleted Pod back and ready", Duration::from_secs(120), || {
        let back = get(&ns, "pod/per-card-0", "{.metadata.uid}");
        (!back.is_empty() && back != uid && ready_workers(&ns) == PARTITIONS).then_some(())
    });
    let pod_back = deleted.elapsed();
    case.produce(1);

    // The API server restarted (about 20 s here): the workers go on without it. The operator,
    // past its lease's renew deadline, exits and is started again, as its Deployment would.
    let restarted = std::time::Instant::now();
    weir_e2e::stack("k8s.sh", &["restart_apiserver"]);
    let api_back = restarted.elapsed();
    if cleanup.operators[0].try_wait().unwrap().is_some() {
        let (op, _) = start_operator(&ns, &log.with_extension("after-restart.log"));
        cleanup.operators.push(op);
    }
    case.produce(2);

    // The checkpoint store down: a condition and an Event, then back.
    let condition = || get(&ns, "sj/per-card", "{.status.conditions[?(@.type=='Checkpointing')].status}");
    let start_again = weir_e2e::StartAgain("s3.sh", &["start"]);
    weir_e2e::stack("s3.sh", &["stop"]);
    let down = std::time::Instant::now();
    wait_until("Checkpointing False", Duration::from_secs(180), || (condition() == "False").then_some(()));
    let noticed = down.elapsed();
    let message = get(&ns, "sj/per-card", "{.status.conditions[?(@.type=='Checkpointing')].message}");
    assert!(message.contains("checkpoints are failing on per-card-"), "{message}");
    assert!(event_reasons(&ns, "per-card").contains("CheckpointsFailing"));
    assert_eq!(get(&ns, "sj/per-card", "{.status.phase}"), "Running", "processing goes on");
    weir_e2e::stack("s3.sh", &["start"]);
    drop(start_again);
    wait_until("Checkpointing True again", Duration::from_secs(180), || (condition() == "True").then_some(()));
    assert!(event_reasons(&ns, "per-card").contains("CheckpointsRecovered"));
    case.produce(3);

    case.check();
    println!(
        "faults on the cluster: the deleted Pod ready again in {:.1} s; the API server back in {:.1} s; the storage outage shown after {:.0} s; lost 0, duplicated 0",
        pod_back.as_secs_f64(),
        api_back.as_secs_f64(),
        noticed.as_secs_f64()
    );
}

/// The window job on S3 checkpoints as the cluster fault cases run it, its input in quarters
/// produced one at a time between the faults: applied with the first quarter produced.
struct QuarteredJob {
    input: String,
    output: String,
    events: Vec<(i32, Ev)>,
    producer: rdkafka::producer::BaseProducer,
    /// The StreamJob as applied.
    yaml: String,
}

impl QuarteredJob {
    fn apply(ns: &str) -> QuarteredJob {
        let (input, output, corrections) = (format!("{ns}-in"), format!("{ns}-out"), format!("{ns}-late"));
        create_topics(&[(&input, PARTITIONS), (&output, PARTITIONS), (&corrections, 1)]);
        let S3Checkpoints { checkpointing, env, .. } = s3_checkpoints(ns);
        let yaml = window_job(PARTITIONS, &checkpointing, &input, &output, &corrections)
            .replace("  epochInterval: 50ms\n", &format!("  epochInterval: 50ms\n{env}"));
        let case = QuarteredJob { input, output, events: events(PARTITIONS), producer: producer(), yaml };
        case.produce(0);
        apply(ns, &case.yaml);
        case
    }

    /// Produces quarter `q` (0-3) of the events.
    fn produce(&self, q: usize) {
        let quarter = self.events.chunks(self.events.len().div_ceil(4)).nth(q).unwrap();
        produce(&self.producer, &self.input, quarter);
    }

    fn wait_for_results(&self) {
        wait_until("first results", Duration::from_secs(60), || {
            (!read_all(&self.output, PARTITIONS).is_empty()).then_some(())
        });
    }

    /// Every window equal to the reference and committed once.
    fn check(&self) {
        let (want, _) = reference(&self.events, PARTITIONS);
        let (got, emitted) = windows_of(&self.output, PARTITIONS, want.len());
        assert_eq!(got, want, "every window equals the reference");
        assert_eq!(emitted, want.len(), "each window committed once");
    }
}

/// Ready workers of the test's job, as the StatefulSet counts them.
fn ready_workers(ns: &str) -> i32 {
    get(ns, "statefulset/per-card", "{.status.readyReplicas}").parse().unwrap_or(0)
}

/// The REST API against its own OpenAPI document, with Schemathesis (property-based: generated
/// valid and invalid paths, queries and bodies, a fixed seed): no answer is a server error, every
/// status code and content type is documented, every answer matches its schema, invalid input is
/// refused with a 4xx and a JSON reason, and a missing or wrong token is refused. Schema-valid
/// manifests the API rejects are allowed (`positive_data_acceptance` is left out): a StreamJob's
/// rules (cross-field references, types through the pipeline) go beyond a JSON schema.
#[test]
fn the_rest_api_holds_to_its_openapi_document() {
    require_port("kube-apiserver", 6443);
    let (cleanup, log, api) = setup("api-schema");
    let ns = cleanup.namespace.clone();
    wait_until(&format!("the REST API (log: {})", log.display()), Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", api)).ok()
    });
    let out = Command::new(repo_dir().join("e2e/stack/schemathesis.sh"))
        .args(["run", "run", &format!("http://127.0.0.1:{api}/openapi.json")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "30", "--workers", "1", "--seed", "7", "--no-color"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures in namespace {ns}:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(" passed"), "{report}");
}

/// The operator killed in the middle of a rescale: the autoscaler's new worker count is in the
/// status (it is written there before anything rolls out) and the operator dies before acting
/// on it. A new operator finishes the rescale from the status alone: 2 -> 3 workers restoring
/// their checkpoints, and every window is still committed exactly once.
#[test]
fn a_restarted_operator_completes_a_rescale() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    require_port("S3", 7070);
    let (mut cleanup, log, _) = setup("rescale-restart");
    let ns = cleanup.namespace.clone();
    let (input, output, corrections) = (format!("{ns}-in"), format!("{ns}-out"), format!("{ns}-late"));
    create_topics(&[(&input, 6), (&output, 6), (&corrections, 1)]);
    let evs = events(6);
    let (first, second) = evs.split_at(evs.len() / 2);
    let producer = producer();
    produce(&producer, &input, first);
    let S3Checkpoints { checkpointing, env, .. } = s3_checkpoints(&ns);
    let autoscaler = "  autoscaler: {enabled: true, minParallelism: 1, maxParallelism: 6, scaleDownDelay: 10m}\n";
    let yaml = window_job(2, &checkpointing, &input, &output, &corrections)
        .replace("  epochInterval: 50ms\n", &format!("  epochInterval: 50ms\n{env}{autoscaler}"));
    apply(&ns, &yaml);
    let running_at = |n: &str| {
        get(&ns, "sj/per-card", "{.status.phase}") == "Running" && get(&ns, "sj/per-card", "{.status.parallelism}") == n
    };
    wait_until(&format!("2 workers Running (operator log: {})", log.display()), Duration::from_secs(120), || {
        running_at("2").then_some(())
    });
    wait_until("first results", Duration::from_secs(60), || (!read_all(&output, 6).is_empty()).then_some(()));
    for op in &mut cleanup.operators {
        op.kill().unwrap();
        op.wait().unwrap();
    }
    let decided = r#"{"status": {"autoscaler": {"parallelism": 3, "specParallelism": 2}}}"#;
    kubectl(&["-n", &ns, "patch", "sj/per-card", "--subresource=status", "--type=merge", "-p", decided]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(get(&ns, "sts/per-card", "{.spec.replicas}"), "2", "nothing acts without an operator");
    let (op, _) = start_operator(&ns, &log.with_extension("second.log"));
    cleanup.operators.push(op);
    let restarted = std::time::Instant::now();
    wait_until("the new operator to complete the rescale", Duration::from_secs(180), || {
        (running_at("3") && get(&ns, "sts/per-card", "{.spec.replicas}") == "3").then_some(())
    });
    let took = restarted.elapsed();
    produce(&producer, &input, second);
    let (want, _) = reference(&evs, 6);
    let (got, emitted) = windows_of(&output, 6, want.len());
    assert_eq!(got, want, "every window equals the reference");
    assert_eq!(emitted, want.len(), "each window committed once");
    println!("a restarted operator completed the rescale 2 -> 3 in {:.1} s; lost 0, duplicated 0", took.as_secs_f64());
}

/// The user the partition case runs its operator as (`nobody`): the cut matches its traffic alone.
const CUT_UID: u32 = 65534;

/// A network partition between the operator and every worker, leaving everything else whole. The
/// node agent gives each Pod a loopback address in 127.1.0.0/16, so the cut is a policy-routing
/// rule for the operator's user alone ([`CUT_UID`]): its packets to Pods go to a gateway behind a
/// veth whose peer is down, where they vanish, and its connections time out as across a real
/// partition; the kubelet's probes, the workers' Kafka and S3 traffic and the operator's API
/// server calls go on. Needs root and iproute2. Undone on drop.
struct OperatorCut;

impl OperatorCut {
    fn create() -> OperatorCut {
        OperatorCut::remove();
        // The kernel consults the local table first (rule 0), which would deliver to 127.1.x.y
        // before any rule of ours is read: it moves to 10, after the cut's 5.
        weir_e2e::ip("rule add pref 10 lookup local");
        weir_e2e::ip("rule del pref 0");
        for cmd in [
            "link add weircut-a type veth peer name weircut-b",
            "link set weircut-a up",
            "neigh replace 10.213.3.2 lladdr 02:00:00:00:00:01 dev weircut-a nud permanent",
            "route replace 127.1.0.0/16 via 10.213.3.2 dev weircut-a onlink table 213",
        ] {
            weir_e2e::ip(cmd);
        }
        OperatorCut
    }

    fn cut(&self) {
        weir_e2e::ip(&format!("rule add pref 5 uidrange {CUT_UID}-{CUT_UID} to 127.1.0.0/16 lookup 213"));
    }

    fn heal(&self) {
        weir_e2e::ip("rule del pref 5");
    }

    /// Back to the host's own routing, whatever state a previous run left.
    fn remove() {
        let ip =
            |args: &str| Command::new("ip").args(args.split_whitespace()).output().is_ok_and(|o| o.status.success());
        while ip("rule del pref 5") {}
        let _ = ip("link del weircut-a");
        let rules = Command::new("ip").args(["rule", "list"]).output().map(|o| o.stdout).unwrap_or_default();
        if !String::from_utf8_lossy(&rules).lines().any(|l| l.starts_with("0:") && l.ends_with("lookup local")) {
            let _ = ip("rule add pref 0 lookup local");
        }
        while ip("rule del pref 10 lookup local") {}
    }
}

impl Drop for OperatorCut {
    fn drop(&mut self) {
        OperatorCut::remove();
    }
}

/// The operator cut off from its workers (see [`OperatorCut`]) while a job runs: the workers go on
/// processing and committing without it; the job shows `Reachable=False` and a Warning
/// `WorkersUnreachable`; a spec change made meanwhile cannot take its savepoint, so the running
/// workers keep the previous spec (Warning `SavepointFailed`, retried) and nothing is restarted;
/// once the network heals the upgrade completes from a savepoint, the job is `Reachable` again,
/// and every window is committed exactly once.
#[test]
fn an_operator_cut_off_from_its_workers_holds_an_upgrade_until_it_reaches_them() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    require_port("S3", 7070);
    let net = OperatorCut::create();
    // Outside root's home, which the operator's user cannot enter; removed after the operator.
    let home = tempfile::tempdir().unwrap();
    let (mut cleanup, log) = setup_without_operator("cut");
    let ns = cleanup.namespace.clone();
    let (operator, _) = start_operator_as(CUT_UID, home.path(), &ns, &log);
    cleanup.operators.push(operator);
    let case = QuarteredJob::apply(&ns);
    let reachable = || get(&ns, "sj/per-card", "{.status.conditions[?(@.type=='Reachable')].status}");
    wait_until(&format!("Running and Reachable (operator log: {})", log.display()), Duration::from_secs(120), || {
        (get(&ns, "sj/per-card", "{.status.phase}") == "Running" && reachable() == "True").then_some(())
    });
    case.wait_for_results();
    let hash = || get(&ns, "statefulset/per-card", "{.spec.template.metadata.annotations.weir\\.dev/config-hash}");
    let (hash_before, pods_before) = (hash(), get(&ns, "pods", "{.items[*].metadata.uid}"));

    net.cut();
    let cut = std::time::Instant::now();
    case.produce(1);
    wait_until("Reachable False", Duration::from_secs(120), || (reachable() == "False").then_some(()));
    let noticed = cut.elapsed();
    let message = get(&ns, "sj/per-card", "{.status.conditions[?(@.type=='Reachable')].message}");
    assert!(message.contains("worker per-card-") && message.contains("timed out"), "{message}");
    assert!(event_reasons(&ns, "per-card").contains("WorkersUnreachable"));
    // A change of the job meanwhile: its savepoint cannot be asked for, so nothing rolls.
    apply(&ns, &case.yaml.replace("epochInterval: 50ms", "epochInterval: 60ms"));
    wait_until("a failed savepoint", Duration::from_secs(60), || {
        event_reasons(&ns, "per-card").contains("SavepointFailed").then_some(())
    });
    case.produce(2);
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(hash(), hash_before, "the running workers keep the previous spec");
    assert_eq!(get(&ns, "pods", "{.items[*].metadata.uid}"), pods_before, "no worker restarted");
    assert_eq!(get(&ns, "sts/per-card", "{.status.readyReplicas}"), PARTITIONS.to_string());

    net.heal();
    let healed = std::time::Instant::now();
    wait_until("the upgrade done from a savepoint", Duration::from_secs(180), || {
        let generation = get(&ns, "sj/per-card", "{.metadata.generation}");
        let observed = get(&ns, "sj/per-card", "{.status.observedGeneration}");
        let running = get(&ns, "sj/per-card", "{.status.phase}") == "Running";
        (running && generation == observed && hash() != hash_before).then_some(())
    });
    let upgraded = healed.elapsed();
    assert!(get(&ns, "sj/per-card", "{.status.restoredFrom}").starts_with("upgrade-"));
    wait_until("Reachable True", Duration::from_secs(90), || (reachable() == "True").then_some(()));
    assert!(event_reasons(&ns, "per-card").contains("WorkersReachable"));
    case.produce(3);
    case.check();
    drop(net);
    println!(
        "operator cut off from its workers: Reachable=False {:.0} s after the cut, the upgrade held; done {:.1} s after the heal from a savepoint; lost 0, duplicated 0",
        noticed.as_secs_f64(),
        upgraded.as_secs_f64()
    );
}
