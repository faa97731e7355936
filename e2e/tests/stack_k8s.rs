//! The local Kubernetes control plane is real: a StatefulSet of 2 replicas becomes 2 Pods that
//! the node agent runs as processes and reports Running; deleting it stops the processes.

use std::time::Duration;

use weir_e2e::{kubectl, kubectl_raw, require_port, unique, wait_until};

fn pids_of(marker: &str) -> Vec<u32> {
    let out = std::process::Command::new("pgrep").args(["-f", marker]).output().expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn statefulset_pods_run_as_processes_and_stop_on_delete() {
    require_port("kube-apiserver", 6443);
    let name = unique("sts").replace('_', "-");
    // A marker in the command line identifies this test's processes.
    let marker = format!("{name}-marker");
    let manifest = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{clusterIP: None, selector: {{app: {name}}}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}}}
spec:
  serviceName: {name}
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: main
        image: busybox:1.36
        command: ["/bin/sh", "-c", "echo $(POD_NAME) started; while true; do sleep 1; done", "{marker}"]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
"#
    );
    let file = std::env::temp_dir().join(format!("{name}.yaml"));
    std::fs::write(&file, manifest).unwrap();
    kubectl(&["apply", "-f", file.to_str().unwrap()]);

    let phases = wait_until("2 Running pods", Duration::from_secs(120), || {
        let out = kubectl(&["get", "pods", "-l", &format!("app={name}"), "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.phase}={.status.conditions[?(@.type==\"Ready\")].status} {end}"]);
        let pods: Vec<String> = out.split_whitespace().map(str::to_string).collect();
        (pods.len() == 2 && pods.iter().all(|p| p.ends_with("=Running=True"))).then_some(pods)
    });
    assert!(phases[0].starts_with(&format!("{name}-0=")) && phases[1].starts_with(&format!("{name}-1=")), "{phases:?}");
    let pids = wait_until("2 processes", Duration::from_secs(10), || {
        let p = pids_of(&marker);
        (p.len() == 2).then_some(p)
    });
    assert_eq!(pids.len(), 2);
    let sts = kubectl(&["get", "statefulset", &name, "-o", "jsonpath={.status.readyReplicas}"]);
    assert_eq!(sts.trim(), "2", "the StatefulSet controller sees both replicas ready");

    kubectl(&["delete", "statefulset", &name, "--wait=false"]);
    wait_until("the processes to stop", Duration::from_secs(60), || pids_of(&marker).is_empty().then_some(()));
    wait_until("the pods to be gone", Duration::from_secs(60), || {
        let out = kubectl_raw(&["get", "pods", "-l", &format!("app={name}"), "-o", "name"]);
        String::from_utf8_lossy(&out.stdout).trim().is_empty().then_some(())
    });
    kubectl(&["delete", "service", &name]);
}
