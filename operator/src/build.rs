//! The objects a StreamJob runs as, built as pure functions of the StreamJob: a ConfigMap with
//! the job's manifest, a headless Service, a StatefulSet of workers and a PodDisruptionBudget,
//! all owned by the StreamJob (deleting it deletes them).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecretKeySelector,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use weir_crds::{JobState, StreamJob, StreamJobSpec, UpgradeMode, DEFAULT_IMAGE};

/// The Secret holding the job's admin token (key `token`), which the workers' savepoint calls
/// need: `<job>-admin`, made by the operator with a random token and owned by the job.
pub fn admin_secret(job: &StreamJob) -> String {
    format!("{}-admin", job.name_any())
}

/// The key of the admin token in [`admin_secret`].
pub const ADMIN_TOKEN_KEY: &str = "token";

/// The name of the worker container in a worker Pod.
pub const WORKER_CONTAINER: &str = "worker";
/// The worker's admin port: metrics, health and readiness.
pub const ADMIN_PORT: i32 = 9249;
/// Where the job's manifest is mounted in a worker.
pub const CONFIG_DIR: &str = "/etc/weir";
pub const CONFIG_FILE: &str = "job.yaml";
/// Where a worker keeps its RocksDB state.
pub const STATE_DIR: &str = "/var/lib/weir/state";
/// The label that selects a job's Pods.
pub const JOB_LABEL: &str = "weir.dev/job";
/// A hash of the manifest on the Pod template: a changed job rolls its Pods.
pub const CONFIG_HASH: &str = "weir.dev/config-hash";
/// `spec.restartNonce` on the Pod template: changing it rolls the Pods.
pub const RESTART_NONCE: &str = "weir.dev/restart-nonce";

/// Everything a StreamJob runs as.
#[derive(Debug, Clone)]
pub struct Desired {
    pub config_map: ConfigMap,
    pub service: Service,
    pub stateful_set: StatefulSet,
    pub pdb: PodDisruptionBudget,
}

pub fn parallelism(job: &StreamJob) -> i32 {
    job.spec.parallelism.unwrap_or(1).max(0)
}

/// Workers the StatefulSet runs: none while the job is suspended.
pub fn replicas(job: &StreamJob) -> i32 {
    match job.spec.state {
        JobState::Suspended => 0,
        JobState::Running => parallelism(job),
    }
}

fn user_env(job: &StreamJob) -> impl Iterator<Item = EnvVar> + '_ {
    job.spec.env.iter().map(|e| match &e.value_from {
        Some(f) => secret_env(&e.name, &f.secret_key_ref.name, &f.secret_key_ref.key),
        None => EnvVar { name: e.name.clone(), value: e.value.clone(), ..EnvVar::default() },
    })
}

/// Variable `name` from key `key` of Secret `secret`.
fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The share of a worker's memory given to RocksDB (block cache and memtables), as Flink's
/// `taskmanager.memory.managed.fraction`; the rest is the worker's buffers, its decoded-key
/// caches and the Kafka clients.
const STATE_MEMORY_FRACTION: f64 = 0.4;

/// RocksDB's memory in MiB for the job's workers: [`STATE_MEMORY_FRACTION`] of the memory limit
/// (or, without one, the request), at least 16; `None` without either, when the worker keeps its
/// default (512 MiB). Without this a worker limited to 256 MiB would still size its caches for
/// 512 and be killed for it once its state grew.
fn state_memory_mib(job: &StreamJob) -> Option<u64> {
    let r = job.spec.resources.as_ref()?;
    let memory = r.limits.get("memory").or_else(|| r.requests.get("memory"))?;
    let bytes = quantity_bytes(memory)?;
    Some(((bytes * STATE_MEMORY_FRACTION) as u64 >> 20).max(16))
}

/// A Kubernetes quantity (`512Mi`, `1.5Gi`, `2G`, `1e9`, `1073741824`) in bytes.
fn quantity_bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ]
    .iter()
    .find_map(|(suffix, mult)| q.strip_suffix(suffix).map(|n| (n, *mult as f64)))
    .unwrap_or((q, 1.0));
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some(n * mult)
}

fn resources(job: &StreamJob) -> Option<ResourceRequirements> {
    let r = job.spec.resources.as_ref()?;
    let q = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
    };
    Some(ResourceRequirements { requests: q(&r.requests), limits: q(&r.limits), ..ResourceRequirements::default() })
}

/// Labels on every object of the job; the selector is `weir.dev/job=<name>`.
pub fn labels(job: &StreamJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "weir-worker".to_string()),
        ("app.kubernetes.io/instance".to_string(), job.name_any()),
        ("app.kubernetes.io/managed-by".to_string(), "weir-operator".to_string()),
        (JOB_LABEL.to_string(), job.name_any()),
    ])
}

pub fn selector(job: &StreamJob) -> String {
    format!("{JOB_LABEL}={}", job.name_any())
}

/// The manifest the workers read: the StreamJob's name, namespace and spec.
pub fn manifest_yaml(job: &StreamJob) -> String {
    // What the workers read: not how many of them run, whether, in which image, nor what only
    // the operator acts on (nonces, upgrade mode, rollback, savepoints), so that changing
    // those changes no more than it has to.
    let spec = StreamJobSpec {
        image: None,
        parallelism: None,
        upgrade_mode: UpgradeMode::default(),
        autoscaler: None,
        restart_nonce: None,
        savepoint_trigger_nonce: None,
        initial_savepoint: None,
        savepoint_on_deletion: false,
        rollback_after: None,
        state: JobState::default(),
        env: Vec::new(),
        resources: None,
        ..job.spec.clone()
    };
    let doc = serde_json::json!({
        "apiVersion": "weir.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": job.name_any(), "namespace": job.namespace().unwrap_or_else(|| "default".into())},
        "spec": spec,
    });
    serde_yaml::to_string(&doc).expect("a StreamJob serializes")
}

fn meta(job: &StreamJob) -> ObjectMeta {
    ObjectMeta { name: Some(job.name_any()), ..owned_meta(job) }
}

/// The namespace, labels and controlling owner (the job) of an object the operator makes for
/// `job`, without its name.
pub fn owned_meta(job: &StreamJob) -> ObjectMeta {
    ObjectMeta {
        namespace: job.namespace(),
        labels: Some(labels(job)),
        owner_references: job.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// FNV-1a of the manifest, in hex.
fn hash(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..ObjectFieldSelector::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// What the workers run, as a hash of the objects built from the spec alone (not the savepoint
/// they restore from): a different hash is an upgrade.
pub fn deployed_hash(job: &StreamJob) -> String {
    let bare = StreamJob { status: None, ..job.clone() };
    let d = desired(&bare);
    let text = serde_json::to_string(&(&d.config_map.data, &d.stateful_set.spec)).unwrap_or_default();
    hash(&text)
}

/// What the workers compute (their manifest and image), not how many run or whether: a
/// `stateless` upgrade starts from empty state only when this changes.
pub fn code_hash(job: &StreamJob) -> String {
    hash(&format!("{}\n{}", manifest_yaml(job), job.spec.image.as_deref().unwrap_or(DEFAULT_IMAGE)))
}

/// The folder of the checkpoint storage the workers checkpoint to: one per StreamJob (by uid,
/// so a job deleted and created again starts afresh) and state generation (bumped by each
/// `stateless` upgrade). Savepoints stay at the storage's root.
pub fn state_folder(job: &StreamJob) -> String {
    let uid = job.metadata.uid.as_deref().unwrap_or("none");
    let generation = job.status.as_ref().and_then(|s| s.state_generation).unwrap_or(0);
    format!("state-{}-{generation}", &uid[..uid.len().min(8)])
}

/// The objects for `job`; the workers restore `status.restoredFrom` when set.
pub fn desired(job: &StreamJob) -> Desired {
    let name = job.name_any();
    let manifest = manifest_yaml(job);
    let config_map = ConfigMap {
        metadata: meta(job),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), manifest.clone())])),
        ..ConfigMap::default()
    };
    let match_labels = BTreeMap::from([(JOB_LABEL.to_string(), name.clone())]);
    let service = Service {
        metadata: meta(job),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(match_labels.clone()),
            ports: Some(vec![ServicePort {
                name: Some("admin".into()),
                port: ADMIN_PORT,
                target_port: Some(IntOrString::String("admin".into())),
                ..ServicePort::default()
            }]),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let worker = Container {
        name: WORKER_CONTAINER.into(),
        image: Some(job.spec.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.into())),
        args: Some(vec!["pod".into()]),
        env: Some(
            [
                env_field("POD_NAME", "metadata.name"),
                env_field("POD_IP", "status.podIP"),
                env("WEIR_PARALLELISM", &parallelism(job).to_string()),
                env("WEIR_CONFIG", &format!("{CONFIG_DIR}/{CONFIG_FILE}")),
                env("WEIR_STATE_DIR", STATE_DIR),
                env("WEIR_ADMIN_ADDR", &format!("$(POD_IP):{ADMIN_PORT}")),
                env("WEIR_STATE_GENERATION", &state_folder(job)),
            ]
            .into_iter()
            .chain(state_memory_mib(job).map(|mib| env("WEIR_STATE_MEMORY_MIB", &mib.to_string())))
            .chain(std::iter::once(secret_env("WEIR_ADMIN_TOKEN", &admin_secret(job), ADMIN_TOKEN_KEY)))
            .chain(
                job.status
                    .as_ref()
                    .and_then(|st| st.restored_from.as_deref())
                    .map(|id| env("WEIR_RESTORE_SAVEPOINT", id)),
            )
            .chain(user_env(job))
            .collect(),
        ),
        resources: resources(job),
        ports: Some(vec![ContainerPort {
            name: Some("admin".into()),
            container_port: ADMIN_PORT,
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 2, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount { name: "state".into(), mount_path: STATE_DIR.into(), ..VolumeMount::default() },
        ]),
        ..Container::default()
    };
    let mut template_labels = labels(job);
    template_labels.extend(match_labels.clone());
    let stateful_set = StatefulSet {
        metadata: meta(job),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas(job)),
            service_name: Some(name.clone()),
            // Workers start and stop together: ordinals carry no start order.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(match_labels.clone()), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(
                        [(CONFIG_HASH.to_string(), hash(&manifest))]
                            .into_iter()
                            .chain(job.spec.restart_nonce.map(|n| (RESTART_NONCE.to_string(), n.to_string())))
                            .collect(),
                    ),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![worker],
                    // SIGTERM: the worker ends its epoch, commits, checkpoints and exits.
                    termination_grace_period_seconds: Some(60),
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: name.clone(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "state".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    let pdb = PodDisruptionBudget {
        metadata: meta(job),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(match_labels), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    Desired { config_map, service, stateful_set, pdb }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(yaml: &str) -> StreamJob {
        let mut j: StreamJob = serde_yaml::from_str(yaml).unwrap();
        j.metadata.uid = Some("uid-1".into());
        j
    }

    const FIXTURE: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: card-fraud, namespace: payments}
spec:
  image: registry.example/weir-worker:1.2.3
  parallelism: 3
  pipeline:
    sources:
      payments:
        kafka: {brokers: "kafka:9092", topic: payments}
        schema: {card_id: string, amount: double, ts: timestamp}
        eventTime: {field: ts}
    streams:
      w: {from: payments, keyBy: [card_id], window: {tumbling: 1m}, aggregate: {n: "count(*)"}}
    sinks:
      out: {from: w, kafka: {brokers: "kafka:9092", topic: out}}
"#;

    #[test]
    fn objects_are_owned_labelled_and_select_the_job_pods() {
        let j = job(FIXTURE);
        let d = desired(&j);
        for m in [&d.config_map.metadata, &d.service.metadata, &d.stateful_set.metadata, &d.pdb.metadata] {
            assert_eq!((m.name.as_deref(), m.namespace.as_deref()), (Some("card-fraud"), Some("payments")));
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("StreamJob", "uid-1", Some(true)));
            assert_eq!(m.labels.as_ref().unwrap()[JOB_LABEL], "card-fraud");
        }
        let sts = d.stateful_set.spec.unwrap();
        assert_eq!((sts.replicas, sts.service_name.as_deref()), (Some(3), Some("card-fraud")));
        let pod_labels = sts.template.metadata.as_ref().unwrap().labels.clone().unwrap();
        for (k, v) in sts.selector.match_labels.unwrap() {
            assert_eq!(pod_labels.get(&k), Some(&v), "the selector selects the Pods");
        }
        assert_eq!(selector(&j), "weir.dev/job=card-fraud");
        assert_eq!(d.service.spec.unwrap().cluster_ip.as_deref(), Some("None"));
        assert_eq!(d.pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn the_worker_container_runs_the_mounted_manifest_as_its_ordinal() {
        let d = desired(&job(FIXTURE));
        let pod = d.stateful_set.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example/weir-worker:1.2.3"));
        assert_eq!(c.args.as_deref(), Some(&["pod".to_string()][..]));
        let env: BTreeMap<&str, &EnvVar> = c.env.iter().flatten().map(|e| (e.name.as_str(), e)).collect();
        assert_eq!(env["WEIR_PARALLELISM"].value.as_deref(), Some("3"));
        assert_eq!(env["WEIR_CONFIG"].value.as_deref(), Some("/etc/weir/job.yaml"));
        assert_eq!(env["WEIR_ADMIN_ADDR"].value.as_deref(), Some("$(POD_IP):9249"));
        let pod_name = env["POD_NAME"].value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
        assert_eq!(pod_name.field_path, "metadata.name");
        assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
        let mounts: Vec<&str> = c.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
        assert_eq!(mounts, ["/etc/weir", "/var/lib/weir/state"]);
        let volumes = pod.volumes.unwrap();
        assert_eq!(volumes[0].config_map.as_ref().unwrap().name, "card-fraud");
    }

    #[test]
    fn the_config_map_holds_a_manifest_the_worker_reads_and_changes_roll_the_pods() {
        let j = job(FIXTURE);
        let d = desired(&j);
        let text = &d.config_map.data.as_ref().unwrap()[CONFIG_FILE];
        let m = weir_crds::Manifest::from_yaml(text, "x").unwrap();
        assert_eq!((m.metadata.name.as_str(), m.metadata.namespace.as_deref()), ("card-fraud", Some("payments")));
        assert_eq!(m.spec.pipeline, j.spec.pipeline);
        assert_eq!((m.spec.parallelism, m.spec.image), (None, None), "what only the operator reads is left out");
        let hash_of = |d: &Desired| {
            d.stateful_set.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.clone().unwrap()
                [CONFIG_HASH]
                .clone()
        };
        let mut changed = j.clone();
        changed.spec.pipeline.streams.get_mut("w").unwrap().window = serde_yaml::from_str("{tumbling: 5m}").unwrap();
        assert_ne!(hash_of(&d), hash_of(&desired(&changed)));
        assert_eq!(hash_of(&d), hash_of(&desired(&j.clone())), "the same job builds the same objects");
    }

    #[test]
    fn env_resources_and_suspension_reach_the_statefulset() {
        let mut j = job(FIXTURE);
        j.spec.env = serde_yaml::from_str(
            "[{name: AWS_REGION, value: eu-west-1}, {name: AWS_SECRET_ACCESS_KEY, valueFrom: {secretKeyRef: {name: s3, key: secret}}}]",
        )
        .unwrap();
        j.spec.resources =
            Some(serde_yaml::from_str("{requests: {cpu: 500m, memory: 1Gi}, limits: {memory: 2Gi}}").unwrap());
        let sts = desired(&j).stateful_set.spec.unwrap();
        assert_eq!(sts.replicas, Some(3));
        let c = &sts.template.spec.unwrap().containers[0];
        let env: BTreeMap<&str, &EnvVar> = c.env.iter().flatten().map(|e| (e.name.as_str(), e)).collect();
        assert_eq!(env["AWS_REGION"].value.as_deref(), Some("eu-west-1"));
        let secret = env["AWS_SECRET_ACCESS_KEY"].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("s3", "secret"));
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["cpu"], Quantity("500m".into()));
        assert_eq!(r.limits.as_ref().unwrap()["memory"], Quantity("2Gi".into()));
        assert_eq!(env["WEIR_STATE_MEMORY_MIB"].value.as_deref(), Some("819"), "RocksDB gets 40 % of the limit");
        j.spec.state = JobState::Suspended;
        assert_eq!(desired(&j).stateful_set.spec.unwrap().replicas, Some(0), "suspended: no workers");
    }

    #[test]
    fn rocksdb_memory_follows_the_memory_limit_or_request() {
        let mut j = job(FIXTURE);
        assert_eq!(state_memory_mib(&j), None, "no resources: the worker's default");
        let with = |r: &str| Some(serde_yaml::from_str(r).unwrap());
        j.spec.resources = with("{requests: {memory: 512Mi}}");
        assert_eq!(state_memory_mib(&j), Some(204), "the request without a limit");
        j.spec.resources = with("{requests: {memory: 512Mi}, limits: {memory: 1.5Gi}}");
        assert_eq!(state_memory_mib(&j), Some(614), "the limit over the request");
        j.spec.resources = with("{limits: {memory: 20M}}");
        assert_eq!(state_memory_mib(&j), Some(16), "at least 16 MiB");
        j.spec.resources = with("{limits: {cpu: '1'}}");
        assert_eq!(state_memory_mib(&j), None, "no memory figure");
        assert_eq!(quantity_bytes("1073741824"), Some(1073741824.0));
        assert_eq!(quantity_bytes("2G"), Some(2e9));
        assert_eq!(quantity_bytes("1e9"), Some(1e9));
        assert_eq!(quantity_bytes("lots"), None);
        assert_eq!(quantity_bytes("-1Gi"), None);
    }

    #[test]
    fn a_restore_savepoint_is_in_the_env_but_not_in_the_deployed_hash() {
        let mut j = job(FIXTURE);
        let before = deployed_hash(&j);
        j.status = Some(weir_crds::StreamJobStatus { restored_from: Some("upgrade-2-1".into()), ..Default::default() });
        let sts = desired(&j).stateful_set.spec.unwrap();
        let env = sts.template.spec.unwrap().containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "WEIR_RESTORE_SAVEPOINT" && e.value.as_deref() == Some("upgrade-2-1")));
        assert_eq!(deployed_hash(&j), before);
        j.spec.parallelism = Some(2);
        assert_ne!(deployed_hash(&j), before, "a rescale is an upgrade");
    }

    #[test]
    fn stateless_upgrades_follow_what_the_workers_compute_not_how_many_run() {
        let j = job(FIXTURE);
        let code = code_hash(&j);
        let mut same = j.clone();
        same.spec.parallelism = Some(1);
        same.spec.state = JobState::Suspended;
        same.spec.restart_nonce = Some(7);
        same.spec.savepoint_trigger_nonce = Some(3);
        same.spec.rollback_after = Some("5m".into());
        assert_eq!(code_hash(&same), code, "rescale, suspend, restart and nonces keep the state");
        let mut image = j.clone();
        image.spec.image = Some("registry.example/weir-worker:1.2.4".into());
        let mut pipeline = j.clone();
        pipeline.spec.pipeline.streams.get_mut("w").unwrap().window = serde_yaml::from_str("{tumbling: 5m}").unwrap();
        assert!(code_hash(&image) != code && code_hash(&pipeline) != code);
        // A restart rolls the Pods (a new template) without changing the manifest.
        let mut restart = j.clone();
        restart.spec.restart_nonce = Some(1);
        assert_ne!(deployed_hash(&restart), deployed_hash(&j));
        let template = desired(&restart).stateful_set.spec.unwrap().template.metadata.unwrap();
        assert_eq!(template.annotations.unwrap()[RESTART_NONCE], "1");
        assert_eq!(desired(&restart).config_map.data, desired(&j).config_map.data);
    }

    #[test]
    fn checkpoints_go_to_a_folder_per_job_and_state_generation() {
        let mut j = job(FIXTURE);
        let folder = |j: &StreamJob| {
            let c = desired(j).stateful_set.spec.unwrap().template.spec.unwrap().containers[0].clone();
            c.env.unwrap().into_iter().find(|e| e.name == "WEIR_STATE_GENERATION").unwrap().value.unwrap()
        };
        assert_eq!(folder(&j), "state-uid-1-0");
        let before = deployed_hash(&j);
        j.status = Some(weir_crds::StreamJobStatus { state_generation: Some(2), ..Default::default() });
        assert_eq!(folder(&j), "state-uid-1-2");
        assert_eq!(deployed_hash(&j), before, "the generation is status, not spec");
        j.metadata.uid = Some("0f3c9a2e-1111-2222".into());
        assert_eq!(folder(&j), "state-0f3c9a2e-2", "a job created again has a new uid, so starts afresh");
    }

    #[test]
    fn defaults_fill_what_the_job_leaves_out() {
        let j = job("metadata: {name: small}\nspec:\n  pipeline:\n    sources: {}\n    sinks: {}\n");
        let d = desired(&j);
        let sts = d.stateful_set.spec.unwrap();
        assert_eq!(sts.replicas, Some(1));
        assert_eq!(sts.template.spec.unwrap().containers[0].image.as_deref(), Some(DEFAULT_IMAGE));
        assert_eq!(d.config_map.metadata.namespace, None);
    }

    /// The objects built for each `fixtures/<name>.streamjob.yaml` are exactly
    /// `fixtures/<name>.objects.yaml`, so every change to what the operator deploys shows in a
    /// review. After an intended change: `WEIR_UPDATE_FIXTURES=1 cargo test --workspace
    /// fixtures` rewrites them; read the diff.
    #[test]
    fn built_objects_match_the_yaml_fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let update = std::env::var_os("WEIR_UPDATE_FIXTURES").is_some();
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".streamjob.yaml"))
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 3, "fixtures in {}", dir.display());
        let mut stale = Vec::new();
        for input in inputs {
            let j: StreamJob = serde_yaml::from_str(&std::fs::read_to_string(&input).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
            let d = desired(&j);
            let docs = [
                serde_yaml::to_string(&d.config_map),
                serde_yaml::to_string(&d.service),
                serde_yaml::to_string(&d.stateful_set),
                serde_yaml::to_string(&d.pdb),
            ];
            let built: Vec<String> = docs.into_iter().map(|doc| doc.unwrap()).collect();
            let built = format!(
                "# Built from {} by build::desired.\n{}",
                input.file_name().unwrap().to_string_lossy(),
                built.join("---\n")
            );
            let expected =
                input.with_file_name(input.file_name().unwrap().to_string_lossy().replace(".streamjob.", ".objects."));
            if update {
                std::fs::write(&expected, &built).unwrap();
            } else if std::fs::read_to_string(&expected).ok().as_deref() != Some(built.as_str()) {
                stale.push(expected.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "the built objects differ from {stale:?}; if the change is intended, rerun with WEIR_UPDATE_FIXTURES=1 and review the diff"
        );
    }
}
