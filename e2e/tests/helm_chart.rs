//! The Helm chart (`charts/weir`), with the stack's Helm (built from its Go module): it passes
//! `helm lint --strict`; `helm template` of each case renders exactly its golden file under
//! `charts/weir/tests/golden/` (after an intended change: `WEIR_UPDATE_FIXTURES=1`, then read
//! the diff); bad values fail at install with a message that names them; the chart's CRD is the
//! one `make crds` generates. Then `helm install` on the stack's API server: the operator runs
//! as a Pod under its ServiceAccount (the node agent gives it a token of it, so the chart's RBAC
//! is what it may do), runs a StreamJob that commits its windows, serves the REST API to
//! Kubernetes tokens, and `helm uninstall` removes it.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use weir_e2e::gitops::argocd_health;
use weir_e2e::payments::{create_topics, events, produce, producer, reference, window_job_pipeline, windows_of};
use weir_e2e::{kafka_brokers, kubectl, kubectl_raw, repo_dir, require_port, unique, wait_until};

fn chart() -> PathBuf {
    repo_dir().join("charts/weir")
}

fn helm_raw(args: &[&str]) -> Output {
    Command::new(repo_dir().join("e2e/stack/helm.sh"))
        .arg("run")
        .args(args)
        .output()
        .expect("running e2e/stack/helm.sh")
}

/// Runs the stack's helm; panics with its output when it fails.
fn helm(args: &[&str]) -> String {
    let out = helm_raw(args);
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The Kubernetes version `helm template` renders for (without a cluster it assumes an old one,
/// below the chart's `kubeVersion`).
const KUBE: &str = "v1.37.2";

/// `kubectl apply --server-side -f deploy/weir.yaml`: the chart's default rendering, cluster-wide,
/// in namespace weir-system, for users without Helm.
fn plain_manifest() -> PathBuf {
    repo_dir().join("deploy/weir.yaml")
}

const PLAIN_HEADER: &str =
    "# The Weir operator for `kubectl apply --server-side -f deploy/weir.yaml`: the Helm chart's\n\
# default values (two replicas, every namespace) rendered into namespace weir-system. Generated\n\
# by e2e/tests/helm_chart.rs (WEIR_UPDATE_FIXTURES=1); change charts/weir, not this file.\n\
apiVersion: v1\nkind: Namespace\nmetadata:\n  name: weir-system\n";

/// The cases of the golden files: name and `--set` values.
const CASES: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("namespaced", &["watchNamespaces={payments,fraud}", "replicaCount=3", "api.tokenSecret.name=weir-api"]),
    (
        "monitoring",
        &[
            "serviceMonitor.enabled=true",
            "podMonitor.enabled=true",
            "prometheusRule.enabled=true",
            "grafanaDashboard.enabled=true",
        ],
    ),
];

#[test]
fn the_chart_lints_and_renders_its_golden_files() {
    let path = chart();
    let chart = path.to_str().unwrap();
    let lint = helm(&["lint", "--strict", chart]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let update = std::env::var_os("WEIR_UPDATE_FIXTURES").is_some();
    let mut stale = Vec::new();
    for (case, sets) in CASES {
        let mut args =
            vec!["template", "weir", chart, "--namespace", "weir-system", "--include-crds", "--kube-version", KUBE];
        for s in *sets {
            args.extend(["--set", s]);
        }
        let rendered = helm(&args);
        let golden = path.join("tests/golden").join(format!("{case}.yaml"));
        if update {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &rendered).unwrap();
        } else if std::fs::read_to_string(&golden).ok().as_deref() != Some(rendered.as_str()) {
            stale.push(*case);
        }
    }
    // The plain-kubectl install (deploy/weir.yaml) is the default case in namespace weir-system.
    let plain = format!("{PLAIN_HEADER}{}", std::fs::read_to_string(path.join("tests/golden/default.yaml")).unwrap());
    if update {
        std::fs::write(plain_manifest(), &plain).unwrap();
    } else if std::fs::read_to_string(plain_manifest()).ok().as_deref() != Some(plain.as_str()) {
        stale.push("deploy/weir.yaml");
    }
    assert!(stale.is_empty(), "helm template differs from the golden files of {stale:?}; if intended, rerun with WEIR_UPDATE_FIXTURES=1 and review the diff");
    let crd = std::fs::read_to_string(path.join("crds/streamjob.yaml")).unwrap();
    assert_eq!(crd, std::fs::read_to_string(repo_dir().join("crds/streamjob.yaml")).unwrap(), "run `make crds`");
}

#[test]
fn bad_values_fail_with_a_message_that_names_them() {
    let path = chart();
    let chart = path.to_str().unwrap();
    for (set, says) in [
        ("replicaCount=0", "replicaCount"),
        ("watchNamespaces={Not_A_Namespace}", "watchNamespaces"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("replicas=2", "replicas"),
        ("api.tokenReview=false", "api.tokenReview"),
    ] {
        let out = helm_raw(&["template", "weir", chart, "--kube-version", KUBE, "--set", set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} is refused");
        assert!(err.contains(says), "the error for {set} names {says}: {err}");
    }
    let out = helm_raw(&["template", "weir", chart, "--kube-version", "v1.28.9"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(">=1.29.0-0"), "a cluster below 1.29 is refused: {err}");
}

/// The status code and body of `GET path` from `ip:port` with a bearer token.
fn get(ip: &str, port: u16, path: &str, token: &str) -> (u16, String) {
    weir_e2e::http_call((ip, port), "GET", path, Some(token), "").unwrap()
}

/// Deletes the test's namespaces and uninstalls the release however the test ends.
struct Cleanup {
    release: String,
    namespaces: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = helm_raw(&["uninstall", &self.release, "--namespace", &self.namespaces[0], "--wait"]);
        for ns in &self.namespaces {
            let _ = kubectl_raw(&["delete", "namespace", ns, "--wait=false"]);
        }
    }
}

/// The live installs share one API server and port 8080 on its node: one at a time.
static LIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_live_install() -> std::sync::MutexGuard<'static, ()> {
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn helm_installs_the_operator_which_runs_a_job_and_uninstalls() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    let _live = one_live_install();
    let (system, jobs) = (unique("weir-system"), unique("jobs"));
    let release = unique("weir");
    for ns in [&system, &jobs] {
        kubectl(&["create", "namespace", ns]);
    }
    let cleanup = Cleanup { release: release.clone(), namespaces: vec![system.clone(), jobs.clone()] };
    // Pods of the node agent share the host's network: each API binds its own Pod IP.
    let out = helm(&[
        "install",
        &release,
        chart().to_str().unwrap(),
        "--namespace",
        &system,
        "--set",
        &format!("watchNamespaces={{{jobs}}}"),
        "--set",
        "api.bindAddress=$(POD_IP)",
        "--set",
        "leaseSeconds=3",
        "--wait",
        "--timeout",
        "180s",
    ]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    the_installed_operator_runs_a_job(&system, &jobs);

    helm(&["uninstall", &release, "--namespace", &system, "--wait"]);
    wait_until("the operator's Pods gone", Duration::from_secs(60), || {
        kubectl(&["-n", &system, "get", "pods", "-o", "name"]).trim().is_empty().then_some(())
    });
    let left = kubectl(&["get", "clusterroles", "-o", "name"]);
    assert!(!left.contains(&release), "the release's ClusterRole is gone: {left}");
    drop(cleanup);
}

/// Removes what deploy/weir.yaml made, but its CRD (deleting it would delete every StreamJob
/// of the API server, other tests' too).
struct PlainCleanup {
    jobs: String,
}

impl Drop for PlainCleanup {
    fn drop(&mut self) {
        for what in [
            ["delete", "namespace", "weir-system", "--wait=false"],
            ["delete", "clusterrolebinding", "weir-cluster", "--ignore-not-found"],
            ["delete", "clusterrole", "weir-cluster", "--ignore-not-found"],
            ["delete", "namespace", &self.jobs, "--wait=false"],
        ] {
            let _ = kubectl_raw(&what);
        }
    }
}

#[test]
fn kubectl_applies_the_plain_install_which_runs_a_job() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
    let _live = one_live_install();
    let jobs = unique("jobs");
    wait_until("no namespace weir-system left from an earlier run", Duration::from_secs(120), || {
        let out = kubectl_raw(&["get", "namespace", "weir-system"]);
        (!out.status.success()).then_some(())
    });
    kubectl(&["create", "namespace", &jobs]);
    let cleanup = PlainCleanup { jobs: jobs.clone() };
    // As written, but that the node agent's Pods share the host's network, so each of the two
    // replicas binds its own Pod IP rather than 0.0.0.0 (the chart's api.bindAddress).
    let text = std::fs::read_to_string(plain_manifest()).unwrap();
    let bind = "value: \"0.0.0.0:8080\"";
    assert_eq!(text.matches(bind).count(), 1, "deploy/weir.yaml sets the API address once");
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("plain-install")));
    std::fs::write(&file, text.replace(bind, "value: \"$(POD_IP):8080\"")).unwrap();
    kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    kubectl(&["-n", "weir-system", "rollout", "status", "deployment/weir", "--timeout=180s"]);
    the_installed_operator_runs_a_job("weir-system", &jobs);
    drop(cleanup);
}

/// With the operator installed in `system` and watching `jobs`: a StreamJob applied with kubectl
/// runs and commits its windows exactly once, Argo CD's health check calls it Healthy, and the
/// REST API of each replica answers a ServiceAccount with RBAC on StreamJobs and refuses one
/// without.
fn the_installed_operator_runs_a_job(system: &str, jobs: &str) {
    let operators = kubectl(&["-n", system, "get", "pods", "-o", "jsonpath={.items[*].status.podIP}"]);
    let ips: Vec<&str> = operators.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "two operator replicas: {operators}");

    let (input, output, late) = (format!("{jobs}-in"), format!("{jobs}-out"), format!("{jobs}-late"));
    create_topics(&[(&input, 2), (&output, 2), (&late, 1)]);
    let evs = events(2);
    produce(&producer(), &input, &evs);
    let job = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: per-card}}\nspec:\n  image: weir-worker:dev\n  parallelism: 2\n  epochInterval: 100ms\n  pipeline:\n{pipeline}    sinks:\n      results: {{from: per_card_minute, kafka: {{brokers: \"{b}\", topic: {output}}}}}\n      corrections: {{kafka: {{brokers: \"{b}\", topic: {late}}}}}\n",
        pipeline = window_job_pipeline(&input),
        b = kafka_brokers()
    );
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("installed-job")));
    std::fs::write(&file, job).unwrap();
    kubectl(&["-n", jobs, "apply", "-f", file.to_str().unwrap()]);
    wait_until("the job Running under the installed operator", Duration::from_secs(180), || {
        let phase = kubectl(&["-n", jobs, "get", "sj/per-card", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    });
    let (want, _) = reference(&evs, 2);
    let (got, _) = windows_of(&output, 2, want.len());
    assert_eq!(got, want, "every window equals the reference");
    // What Argo CD would show for it, with the example's health check.
    let obj: serde_json::Value =
        serde_json::from_str(&kubectl(&["-n", jobs, "get", "sj/per-card", "-o", "json"])).unwrap();
    let (health, message) = argocd_health(&obj);
    assert_eq!((health.as_str(), message.as_str()), ("Healthy", "Running: 2 of 2 workers ready"), "{obj}");

    kubectl(&["-n", jobs, "create", "serviceaccount", "reader"]);
    kubectl(&["-n", jobs, "create", "role", "sj-reader", "--verb=get,list", "--resource=streamjobs.weir.dev"]);
    kubectl(&[
        "-n",
        jobs,
        "create",
        "rolebinding",
        "sj-reader",
        "--role=sj-reader",
        &format!("--serviceaccount={jobs}:reader"),
    ]);
    let reader = kubectl(&["-n", jobs, "create", "token", "reader"]);
    let nobody = kubectl(&["-n", jobs, "create", "token", "default"]);
    let path = format!("/jobs?namespace={jobs}");
    let answered = |token: &str| ips.iter().map(|ip| get(ip, 8080, &path, token.trim())).collect::<Vec<_>>();
    assert!(
        answered(&reader).iter().all(|(code, body)| *code == 200 && body.contains("per-card")),
        "{:?}",
        answered(&reader)
    );
    assert!(answered(&nobody).iter().all(|(code, _)| *code == 403), "{:?}", answered(&nobody));
    // The job goes with its namespace; wait for it so the operator is not removed under it.
    kubectl(&["-n", jobs, "delete", "sj/per-card", "--wait=true", "--timeout=120s"]);
}

/// The stack's promtool (built from Prometheus' Go module: `e2e/stack/promtool.sh install`).
fn promtool(args: &[&str]) -> Output {
    Command::new(repo_dir().join("e2e/stack/promtool.sh")).arg("run").args(args).output().expect("running promtool.sh")
}

/// `files/alerts.yaml` is a valid rule file (`promtool check rules`) and its alerts fire as
/// `tests/alerts_test.yaml` says, with their labels and annotations (`promtool test rules`).
#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = chart().join("files/alerts.yaml");
    let out = promtool(&["check", "rules", rules.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS: 10 rules found"), "{text}");
    let tests = chart().join("tests/alerts_test.yaml");
    let out = promtool(&["test", "rules", tests.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("SUCCESS"), "{text}");
}

/// Every metric the alerts and the Grafana dashboard query is one the worker or the operator
/// exports (a histogram by its `_bucket`, `_sum` or `_count` series).
#[test]
fn the_alerts_and_the_dashboard_query_only_metrics_weir_exports() {
    fn read_rust(dir: &std::path::Path, into: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                read_rust(&path, into);
            } else if path.extension().is_some_and(|e| e == "rs") {
                into.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut exported = String::new();
    for dir in ["worker/src", "operator/src"] {
        read_rust(&repo_dir().join(dir), &mut exported);
    }
    let mut queried = std::collections::BTreeSet::new();
    for file in ["files/alerts.yaml", "files/dashboard.json"] {
        let text = std::fs::read_to_string(chart().join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("weir_") {
            let name: String =
                rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            rest = &rest[i + name.len()..];
            queried.insert((file, name));
        }
    }
    assert!(queried.len() > 20, "{queried:?}");
    let unknown: Vec<_> = queried
        .iter()
        .filter(|(_, name)| {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            !exported.contains(&format!("\"{base}\"")) && !exported.contains(&format!("\"{name}\""))
        })
        .collect();
    assert!(unknown.is_empty(), "queried but not exported: {unknown:?}");
}
