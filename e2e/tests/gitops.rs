//! The GitOps examples (`examples/gitops/`): the Argo CD health check of StreamJobs, run in Lua
//! 5.1 (Argo CD's dialect) on a StreamJob in each phase; and every example object that the
//! local API server knows the kind of (Argo CD's and Flux's CRDs, from their Go modules, the
//! HelmRelease one generated from its API types:
//! `e2e/stack/gitops.sh install`) accepted by a server-side dry run.

use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};
use weir_e2e::gitops::argocd_health as health;
use weir_e2e::{kubectl, kubectl_raw, repo_dir, require_port};

fn job(phase: Option<&str>, generation: i64, observed: i64) -> Value {
    let mut j = json!({
        "apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob",
        "metadata": {"name": "per-card", "generation": generation},
        "spec": {"parallelism": 2},
    });
    if let Some(p) = phase {
        j["status"] = json!({
            "phase": p, "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": if p == "Running" { "True" } else { "False" }, "message": "2 of 2 workers ready"}],
        });
    }
    j
}

#[test]
fn argocd_health_follows_the_phase() {
    for (phase, want) in [
        ("Running", "Healthy"),
        ("Deploying", "Progressing"),
        ("Upgrading", "Progressing"),
        ("Suspending", "Progressing"),
        ("Suspended", "Suspended"),
        ("Failed", "Degraded"),
        ("RollingBack", "Degraded"),
        ("RolledBack", "Degraded"),
    ] {
        let (status, message) = health(&job(Some(phase), 3, 3));
        assert_eq!(status, want, "{phase}");
        assert_eq!(message, format!("{phase}: 2 of 2 workers ready"));
    }
    assert_eq!(health(&job(None, 1, 0)).0, "Progressing", "no status yet");
    let (status, message) = health(&job(Some("Running"), 4, 3));
    assert_eq!(status, "Progressing", "a spec the operator has not acted on: {message}");
}

#[test]
fn the_gitops_examples_pass_a_server_side_dry_run() {
    require_port("kube-apiserver", 6443);
    let out = Command::new(repo_dir().join("e2e/stack/gitops.sh")).arg("dir").output().unwrap();
    let crds = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(crds.join("done").exists(), "run e2e/stack/gitops.sh install");
    for crd in
        ["argocd-application.yaml", "flux-gitrepository.yaml", "flux-kustomization.yaml", "flux-helmrelease.yaml"]
    {
        kubectl(&["apply", "--server-side", "--force-conflicts", "-f", crds.join(crd).to_str().unwrap()]);
    }
    for name in [
        "applications.argoproj.io",
        "gitrepositories.source.toolkit.fluxcd.io",
        "kustomizations.kustomize.toolkit.fluxcd.io",
        "helmreleases.helm.toolkit.fluxcd.io",
    ] {
        kubectl(&["wait", "--for=condition=established", &format!("crd/{name}"), "--timeout=60s"]);
    }
    for ns in ["argocd", "flux-system"] {
        let _ = kubectl_raw(&["create", "namespace", ns]);
    }
    let mut checked = 0;
    for file in ["argocd/weir-operator.yaml", "argocd/streamjobs.yaml", "flux/weir.yaml"] {
        let text = std::fs::read_to_string(repo_dir().join("examples/gitops").join(file)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let obj = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            assert!(!kind.is_empty(), "{file}: every object has a kind");
            if kind == "HelmRelease" {
                assert_eq!(obj["spec"]["chart"]["spec"]["chart"], "./charts/weir", "{file}");
            }
            let path = std::env::temp_dir().join(format!("{}.yaml", weir_e2e::unique("gitops")));
            std::fs::write(&path, serde_yaml::to_string(&obj).unwrap()).unwrap();
            let out = kubectl(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
            assert!(out.contains("(server dry run)"), "{file} {kind}: {out}");
            checked += 1;
        }
    }
    assert_eq!(checked, 6, "two Applications, two GitRepositories, a HelmRelease, a Kustomization");
}
