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
            stale.push(case);
        }
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
}

/// The body of `GET path` from `ip:port` with a bearer token: status code and body.
fn get(ip: &str, port: u16, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((ip, port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body.to_string())
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

#[test]
fn helm_installs_the_operator_which_runs_a_job_and_uninstalls() {
    require_port("kube-apiserver", 6443);
    require_port("Kafka", 9092);
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
    let operators = kubectl(&["-n", &system, "get", "pods", "-o", "jsonpath={.items[*].status.podIP}"]);
    let ips: Vec<&str> = operators.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "two operator replicas: {operators}");

    // A job in the watched namespace runs and commits its windows exactly once.
    let (input, output, late) = (format!("{jobs}-in"), format!("{jobs}-out"), format!("{jobs}-late"));
    create_topics(&[(&input, 2), (&output, 2), (&late, 1)]);
    let evs = events(2);
    produce(&producer(), &input, &evs);
    let job = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: per-card}}\nspec:\n  image: weir-worker:dev\n  parallelism: 2\n  epochInterval: 100ms\n  pipeline:\n{pipeline}    sinks:\n      results: {{from: per_card_minute, kafka: {{brokers: \"{b}\", topic: {output}}}}}\n      corrections: {{kafka: {{brokers: \"{b}\", topic: {late}}}}}\n",
        pipeline = window_job_pipeline(&input),
        b = kafka_brokers()
    );
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("helm-job")));
    std::fs::write(&file, job).unwrap();
    kubectl(&["-n", &jobs, "apply", "-f", file.to_str().unwrap()]);
    wait_until("the job Running under the installed operator", Duration::from_secs(180), || {
        let phase = kubectl(&["-n", &jobs, "get", "sj/per-card", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    });
    let (want, _) = reference(&evs, 2);
    let (got, _) = windows_of(&output, 2, want.len());
    assert_eq!(got, want, "every window equals the reference");
    // What Argo CD would show for it, with the example's health check.
    let obj: serde_json::Value =
        serde_json::from_str(&kubectl(&["-n", &jobs, "get", "sj/per-card", "-o", "json"])).unwrap();
    let (health, message) = argocd_health(&obj);
    assert_eq!((health.as_str(), message.as_str()), ("Healthy", "Running: 2 of 2 workers ready"), "{obj}");

    // The REST API takes Kubernetes tokens: a ServiceAccount allowed to read StreamJobs in the
    // namespace gets them; one without that right is refused.
    kubectl(&["-n", &jobs, "create", "serviceaccount", "reader"]);
    kubectl(&["-n", &jobs, "create", "role", "sj-reader", "--verb=get,list", "--resource=streamjobs.weir.dev"]);
    kubectl(&[
        "-n",
        &jobs,
        "create",
        "rolebinding",
        "sj-reader",
        "--role=sj-reader",
        &format!("--serviceaccount={jobs}:reader"),
    ]);
    let reader = kubectl(&["-n", &jobs, "create", "token", "reader"]);
    let nobody = kubectl(&["-n", &jobs, "create", "token", "default"]);
    let path = format!("/jobs?namespace={jobs}");
    let answered = |token: &str| ips.iter().map(|ip| get(ip, 8080, &path, token.trim())).collect::<Vec<_>>();
    assert!(
        answered(&reader).iter().all(|(code, body)| *code == 200 && body.contains("per-card")),
        "{:?}",
        answered(&reader)
    );
    assert!(answered(&nobody).iter().all(|(code, _)| *code == 403), "{:?}", answered(&nobody));

    helm(&["uninstall", &release, "--namespace", &system, "--wait"]);
    wait_until("the operator's Pods gone", Duration::from_secs(60), || {
        kubectl(&["-n", &system, "get", "pods", "-o", "name"]).trim().is_empty().then_some(())
    });
    let left = kubectl(&["get", "clusterroles", "-o", "name"]);
    assert!(!left.contains(&release), "the release's ClusterRole is gone: {left}");
    drop(cleanup);
}
