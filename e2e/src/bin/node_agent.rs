//! weir-node-agent: a stand-in for the kubelet on the local stack, for tests only. It registers a
//! Node, keeps its Lease fresh, and runs every Pod scheduled to it as local processes: one per
//! container, with the container's env (fieldRef, Secret keys and `$(VAR)` expansion included), volume mount
//! paths rewritten to a folder per Pod, HTTP readiness probes, restarts with backoff, and
//! graceful termination when the Pod is deleted. Each Pod gets its own loopback IP. A
//! container's environment is its own (no variable of the agent's leaks in), and a Pod that
//! mounts its ServiceAccount token gets, instead of the in-cluster files, a `KUBECONFIG` with a
//! token of its ServiceAccount from the TokenRequest API: what it may do is what its RBAC allows. Pods stop
//! concurrently, as on a kubelet: taking 50 workers away waits for the slowest, not the sum.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::process::{Child, Command};

const MANAGER: &str = "weir-node-agent";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "weir-node-0")]
    node_name: String,
    /// Folder for Pod files and container logs.
    #[arg(long)]
    root: PathBuf,
    /// Image to local program, e.g. `weir-worker=/path/to/weir-worker` (the image's entrypoint).
    #[arg(long = "image", value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
}

fn parse_image(s: &str) -> Result<(String, PathBuf), String> {
    let (i, p) = s.split_once('=').ok_or("expected IMAGE=PATH")?;
    Ok((i.to_string(), PathBuf::from(p)))
}

struct Proc {
    child: Option<Child>,
    restarts: i32,
    next_start: Instant,
    started_at: Option<Time>,
    ready: bool,
}

struct RunningPod {
    uid: String,
    ip: String,
    dir: PathBuf,
    /// Values of the Secret keys the Pod's env refers to: (secret, key) -> value.
    secrets: BTreeMap<(String, String), String>,
    procs: BTreeMap<String, Proc>,
    last_status: serde_json::Value,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    // Both rustls back ends are linked into the workspace (kube: ring, AWS SDK: aws-lc);
    // name one, or the first TLS connection panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let client = Client::try_default().await.context("connecting to the API server (KUBECONFIG)")?;
    register_node(&client, &args.node_name).await?;
    tracing::info!(node = %args.node_name, "registered");
    let pods: Api<Pod> = Api::all(client.clone());
    let mut running: HashMap<String, RunningPod> = HashMap::new();
    // Pods being stopped in the background: their IP, and the task stopping them.
    let mut stopping: HashMap<String, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut next_ip = 0u32;
    let mut last_heartbeat = Instant::now() - Duration::from_secs(60);
    loop {
        if last_heartbeat.elapsed() > Duration::from_secs(10) {
            if let Err(e) = heartbeat(&client, &args.node_name).await {
                tracing::warn!("heartbeat failed: {e:#}");
            }
            last_heartbeat = Instant::now();
        }
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", args.node_name));
        let list = match pods.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("listing pods: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        stopping.retain(|_, (_, task)| !task.is_finished());
        let mut seen = Vec::new();
        for pod in list.items {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let key = format!("{ns}/{name}");
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            seen.push(key.clone());
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let at_once = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
            if pod.metadata.deletion_timestamp.is_some() {
                if let Some(rp) = running.remove(&key) {
                    let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
                    let ip = rp.ip.clone();
                    let task = tokio::spawn(async move {
                        stop_pod(rp, Duration::from_secs(grace.max(0) as u64)).await;
                        let _ = api.delete(&name, &at_once).await;
                    });
                    stopping.insert(key, (ip, task));
                } else if !stopping.contains_key(&key) {
                    let _ = api.delete(&name, &at_once).await;
                }
                continue;
            }
            if running.get(&key).is_some_and(|r| r.uid != uid) {
                let old = running.remove(&key).expect("checked");
                in_background(&mut stopping, key.clone(), old, Duration::from_secs(5));
            }
            if stopping.contains_key(&key) {
                // A Pod of this name still stops, in the same folder: start this one after it.
                continue;
            }
            if !running.contains_key(&key) {
                let held = |ip: &str| running.values().any(|r| r.ip == ip) || stopping.values().any(|(i, _)| i == ip);
                let ip = free_ip(&mut next_ip, held);
                let dir = args.root.join(&ns).join(&name);
                match prepare_pod(&client, &pod, &dir).await {
                    Ok(secrets) => {
                        running.insert(
                            key.clone(),
                            RunningPod { uid, ip, dir, secrets, procs: BTreeMap::new(), last_status: json!(null) },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(pod = %key, "cannot start: {e:#}");
                        continue;
                    }
                }
            }
            let rp = running.get_mut(&key).expect("inserted");
            sync_pod(&args, &pod, rp).await;
            let status = pod_status(&pod, rp);
            if status != rp.last_status {
                let patch = Patch::Merge(json!({ "status": status }));
                match api.patch_status(&name, &PatchParams::default(), &patch).await {
                    Ok(_) => rp.last_status = status,
                    Err(e) => tracing::warn!(pod = %key, "status update failed: {e}"),
                }
            }
        }
        let gone: Vec<String> = running.keys().filter(|k| !seen.contains(k)).cloned().collect();
        for k in gone {
            if let Some(rp) = running.remove(&k) {
                in_background(&mut stopping, k, rp, Duration::from_secs(5));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The next loopback address in 127.1.0.1-127.1.250.254 that `held` says no Pod has (the
/// stack's servers listen on 127.0.0.1).
fn free_ip(next: &mut u32, held: impl Fn(&str) -> bool) -> String {
    loop {
        *next = *next % (250 << 8) + 1;
        let (high, low) = (*next >> 8, *next & 255);
        let ip = format!("127.1.{high}.{low}");
        if low != 0 && low != 255 && !held(&ip) {
            return ip;
        }
    }
}

/// Stops `rp` (the Pod `key`) in a task of its own, recorded in `stopping`.
fn in_background(
    stopping: &mut HashMap<String, (String, tokio::task::JoinHandle<()>)>,
    key: String,
    rp: RunningPod,
    grace: Duration,
) {
    let ip = rp.ip.clone();
    stopping.insert(key, (ip, tokio::spawn(stop_pod(rp, grace))));
}

async fn register_node(client: &Client, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
    }))?;
    nodes
        .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&node))
        .await
        .context("registering the Node")?;
    heartbeat(client, name).await
}

async fn heartbeat(client: &Client, name: &str) -> anyhow::Result<()> {
    let now = now_rfc3339();
    let nodes: Api<Node> = Api::all(client.clone());
    let status = json!({"status": {
        "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110"},
        "allocatable": {"cpu": "16", "memory": "64Gi", "pods": "110"},
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "WeirNodeAgentReady",
                        "message": "weir-node-agent runs Pods as local processes", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"kubeletVersion": "weir-node-agent", "operatingSystem": "linux", "architecture": "amd64",
                     "containerRuntimeVersion": "process://", "kernelVersion": "", "osImage": "", "kubeProxyVersion": "",
                     "machineID": "", "systemUUID": "", "bootID": ""}
    }});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.context("updating Node status")?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now())}
    }))?;
    match leases.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease)).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let _ = leases.create(&PostParams::default(), &lease).await;
            Err(e).context("renewing the node Lease")
        }
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Writes the Pod's ConfigMap volumes into its folder; reads the Secret keys its env uses.
async fn prepare_pod(client: &Client, pod: &Pod, dir: &Path) -> anyhow::Result<BTreeMap<(String, String), String>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    std::fs::create_dir_all(dir)?;
    let spec = pod.spec.as_ref().context("Pod without spec")?;
    for v in spec.volumes.iter().flatten() {
        let vdir = dir.join("volumes").join(&v.name);
        std::fs::create_dir_all(&vdir)?;
        if let Some(cm) = &v.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let cm = api.get(&cm.name).await.with_context(|| format!("ConfigMap {} of volume {}", cm.name, v.name))?;
            for (k, val) in cm.data.unwrap_or_default() {
                std::fs::write(vdir.join(k), val)?;
            }
        }
    }
    let mut secrets = BTreeMap::new();
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    for c in &spec.containers {
        for r in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref()) {
            let secret = api.get(&r.name).await.with_context(|| format!("Secret {} of env", r.name))?;
            let value =
                secret.data.as_ref().and_then(|d| d.get(&r.key)).map(|b| String::from_utf8_lossy(&b.0).into_owned());
            let value = value.with_context(|| format!("Secret {} has no key {}", r.name, r.key))?;
            secrets.insert((r.name.clone(), r.key.clone()), value);
        }
    }
    if spec.automount_service_account_token != Some(false) {
        let account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
        write_service_account_kubeconfig(client, pod, &account, &dir.join(SA_KUBECONFIG)).await?;
    }
    Ok(secrets)
}

/// Where in a Pod's folder its ServiceAccount's kubeconfig is.
const SA_KUBECONFIG: &str = "serviceaccount.kubeconfig";

/// A kubeconfig for the local API server that authenticates as ServiceAccount `account` of the
/// Pod's namespace, with a token bound to the Pod (as the kubelet's projected token).
async fn write_service_account_kubeconfig(
    client: &Client,
    pod: &Pod,
    account: &str,
    path: &Path,
) -> anyhow::Result<()> {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(24 * 3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let answer: TokenRequest = accounts
        .create_subresource::<_, TokenRequest>("token", account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("a token of ServiceAccount {ns}/{account}"))?;
    let token = answer.status.context("TokenRequest without status")?.token;
    // The agent's own kubeconfig names the server and its CA.
    let own = std::env::var_os("KUBECONFIG").context("the node agent runs with KUBECONFIG")?;
    let own = kube::config::Kubeconfig::read_from(&own)?;
    let cluster = own.clusters.first().and_then(|c| c.cluster.clone()).context("no cluster in KUBECONFIG")?;
    let server = cluster.server.context("no server in KUBECONFIG")?;
    let ca = match (cluster.certificate_authority, cluster.certificate_authority_data) {
        (Some(file), _) => format!("certificate-authority: {file:?}"),
        (None, Some(data)) => format!("certificate-authority-data: {data}"),
        (None, None) => anyhow::bail!("no CA in KUBECONFIG"),
    };
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: {server:?}, {ca}}}\n\
         users:\n- name: {account}\n  user: {{token: {token:?}}}\ncontexts:\n- name: local\n  context: {{cluster: local, user: {account}, namespace: {ns:?}}}\n\
         current-context: local\n"
    );
    std::fs::write(path, config)?;
    Ok(())
}

/// Starts containers that are not running (with backoff) and probes readiness.
async fn sync_pod(args: &Args, pod: &Pod, rp: &mut RunningPod) {
    let Some(spec) = pod.spec.as_ref() else { return };
    for c in &spec.containers {
        let p = rp.procs.entry(c.name.clone()).or_insert(Proc {
            child: None,
            restarts: 0,
            next_start: Instant::now(),
            started_at: None,
            ready: false,
        });
        if let Some(child) = p.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                tracing::warn!(container = %c.name, "exited with {status}");
                p.child = None;
                p.ready = false;
                p.restarts += 1;
                let backoff = Duration::from_secs((1u64 << p.restarts.min(5)).min(30));
                p.next_start = Instant::now() + backoff;
            }
        }
        if p.child.is_none() && Instant::now() >= p.next_start {
            match spawn(args, pod, c, &rp.dir, &rp.ip, &rp.secrets) {
                Ok(child) => {
                    p.child = Some(child);
                    p.started_at = Some(Time(k8s_openapi::jiff::Timestamp::now()));
                }
                Err(e) => {
                    tracing::warn!(container = %c.name, "cannot start: {e:#}");
                    p.next_start = Instant::now() + Duration::from_secs(5);
                }
            }
        }
        p.ready = p.child.is_some()
            && match c.readiness_probe.as_ref().and_then(|r| r.http_get.as_ref()) {
                None => true,
                Some(h) => {
                    let port = match &h.port {
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => *i as u16,
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => c
                            .ports
                            .iter()
                            .flatten()
                            .find(|p| p.name.as_deref() == Some(name))
                            .map_or(0, |p| p.container_port as u16),
                    };
                    http_ok(&rp.ip, port, h.path.as_deref().unwrap_or("/")).await
                }
            };
    }
}

fn spawn(
    args: &Args,
    pod: &Pod,
    c: &Container,
    dir: &Path,
    ip: &str,
    secrets: &BTreeMap<(String, String), String>,
) -> anyhow::Result<Child> {
    let mounts: Vec<(String, PathBuf)> =
        c.volume_mounts.iter().flatten().map(|m| (m.mount_path.clone(), dir.join("volumes").join(&m.name))).collect();
    let rewrite = |s: &str| -> String {
        for (mp, local) in &mounts {
            if let Some(rest) = s.strip_prefix(mp.as_str()) {
                return format!("{}{rest}", local.display());
            }
        }
        s.to_string()
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c.env.iter().flatten() {
        let val = if let Some(v) = &e.value {
            expand(v, &env)
        } else if let Some(r) = e.value_from.as_ref().and_then(|vf| vf.secret_key_ref.as_ref()) {
            secrets.get(&(r.name.clone(), r.key.clone())).cloned().unwrap_or_default()
        } else if let Some(f) = e.value_from.as_ref().and_then(|vf| vf.field_ref.as_ref()) {
            match f.field_path.as_str() {
                "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
                "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                "status.podIP" | "status.hostIP" => ip.to_string(),
                "spec.nodeName" => args.node_name.clone(),
                other => {
                    let label = other.strip_prefix("metadata.labels['").and_then(|s| s.strip_suffix("']"));
                    label.and_then(|l| pod.metadata.labels.as_ref()?.get(l).cloned()).unwrap_or_default()
                }
            }
        } else {
            String::new()
        };
        env.push((e.name.clone(), rewrite(&val)));
    }
    let image = c.image.clone().unwrap_or_default();
    let image_name = image.split(':').next().unwrap_or_default().rsplit('/').next().unwrap_or_default();
    let entry = args.images.iter().find(|(i, _)| i == image_name).map(|(_, p)| p.clone());
    let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
    argv.extend(c.args.clone().unwrap_or_default());
    let argv: Vec<String> = argv.iter().map(|a| rewrite(&expand(a, &env))).collect();
    let (program, rest) = match (entry, c.command.as_ref()) {
        (Some(p), None) => (p, argv),
        (Some(p), Some(cmd)) if cmd.first().is_some_and(|c0| Path::new(c0).file_name() == p.file_name()) => {
            (p, argv[1..].to_vec())
        }
        (_, _) if !argv.is_empty() => (PathBuf::from(&argv[0]), argv[1..].to_vec()),
        _ => anyhow::bail!(
            "image {image} has no local program (pass --image {image_name}=PATH) and the container has no command"
        ),
    };
    let log = std::fs::File::create(dir.join(format!("{}.log", c.name)))?;
    let sa_kubeconfig = dir.join(SA_KUBECONFIG);
    if sa_kubeconfig.exists() && !env.iter().any(|(k, _)| k == "KUBECONFIG") {
        env.push(("KUBECONFIG".into(), sa_kubeconfig.display().to_string()));
    }
    let mut cmd = Command::new(&program);
    // Logging and backtrace settings of the agent's caller carry over; nothing else does.
    let debugging = ["RUST_LOG", "RUST_BACKTRACE"].into_iter().filter_map(|k| Some((k, std::env::var(k).ok()?)));
    cmd.args(&rest)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .envs(debugging)
        .envs(env)
        .env("HOSTNAME", pod.metadata.name.clone().unwrap_or_default())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .process_group(0);
    cmd.spawn().with_context(|| format!("starting {}", program.display()))
}

/// `$(VAR)` expansion as the kubelet does it, from earlier variables.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// Signals a container's process group (the container's processes are one group).
fn signal_group(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill").args(["-s", signal, "--", &format!("-{pid}")]).status();
}

async fn stop_pod(mut rp: RunningPod, grace: Duration) {
    for p in rp.procs.values_mut() {
        if let Some(pid) = p.child.as_ref().and_then(Child::id) {
            signal_group(pid, "TERM");
        }
    }
    let deadline = Instant::now() + grace;
    for p in rp.procs.values_mut() {
        if let Some(mut child) = p.child.take() {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                if let Some(pid) = child.id() {
                    signal_group(pid, "KILL");
                }
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
    let _ = std::fs::remove_dir_all(rp.dir.join("volumes"));
}

fn pod_status(pod: &Pod, rp: &RunningPod) -> serde_json::Value {
    let spec = pod.spec.as_ref();
    let containers: Vec<serde_json::Value> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let p = rp.procs.get(&c.name);
            let running = p.is_some_and(|p| p.child.is_some());
            let state = match p.and_then(|p| p.started_at.clone()) {
                Some(t) if running => json!({"running": {"startedAt": t}}),
                _ => json!({"waiting": {"reason": if p.is_some_and(|p| p.restarts > 0) { "CrashLoopBackOff" } else { "ContainerCreating" }}}),
            };
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": p.is_some_and(|p| p.ready),
                   "started": running, "restartCount": p.map_or(0, |p| p.restarts), "state": state})
        })
        .collect();
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c["ready"] == json!(true));
    let any_running = containers.iter().any(|c| c["started"] == json!(true));
    let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }});
    json!({
        "phase": if any_running { "Running" } else { "Pending" },
        "podIP": rp.ip, "podIPs": [{"ip": rp.ip}], "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
        "conditions": [cond("PodScheduled", true), cond("Initialized", true), cond("ContainersReady", all_ready), cond("Ready", all_ready)],
        "containerStatuses": containers,
    })
}

/// An HTTP GET for readiness probes: true on a 2xx or 3xx answer within a second.
async fn http_ok(host: &str, port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(Duration::from_secs(1), probe).await.ok().flatten().unwrap_or(false)
}
