//! The `StreamJob` custom resource (`weir.dev/v1alpha1`): job-level settings around a pipeline,
//! and the status the operator reports.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, PipelineSpec};

/// Default worker image when a manifest names none.
pub const DEFAULT_IMAGE: &str = "weir-worker:0.1.0";

/// A stream processing job: its pipeline and how to run it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    plural = "streamjobs",
    shortname = "sj",
    namespaced,
    status = "StreamJobStatus",
    scale = r#"{"specReplicasPath":".spec.parallelism","statusReplicasPath":".status.parallelism","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Parallelism","type":"integer","jsonPath":".status.parallelism"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#,
    printcolumn = r#"{"name":"Last-Savepoint","type":"string","jsonPath":".status.lastSavepoint.path"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.autoscaler) || !has(self.autoscaler.minParallelism) || !has(self.autoscaler.maxParallelism) || self.autoscaler.minParallelism <= self.autoscaler.maxParallelism",
        "message": "autoscaler.minParallelism must not be above autoscaler.maxParallelism"
    },
    {
        "rule": "!has(self.env) || self.env.all(e, !e.name.startsWith('WEIR_') && e.name != 'POD_NAME' && e.name != 'POD_IP')",
        "message": "env names WEIR_*, POD_NAME and POD_IP are set by the operator"
    },
    {
        "rule": "!has(self.env) || self.env.all(e, has(e.value) != has(e.valueFrom))",
        "message": "each env entry needs exactly one of value and valueFrom"
    }
]))]
pub struct StreamJobSpec {
    /// Worker container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Number of workers; never above the input partition count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub parallelism: Option<i32>,
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpointing: Option<CheckpointingSpec>,
    /// How often exactly-once transactions commit (default 100ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerSpec>,
    /// Change to restart every worker (they restore their last checkpoints, in every upgrade
    /// mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,
    /// Change to take a savepoint; the workers keep running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,
    /// A savepoint the job starts from when it is first deployed: its location as listed in a
    /// job's `status.savepoints` (e.g. the final savepoint of a deleted job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_savepoint: Option<String>,
    /// Take a savepoint when the StreamJob is deleted (a finalizer holds the deletion until it
    /// completes, fails, or 5 minutes pass); its location is in an Event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub savepoint_on_deletion: bool,
    /// Roll back to the last spec that ran when a changed one does not have every worker ready
    /// within this time (e.g. `5m`); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_after: Option<Duration>,
    /// `running` (the default) or `suspended`: the workers commit, checkpoint and stop; resuming
    /// restores their state from the last checkpoint.
    #[serde(default)]
    pub state: JobState,
    /// Extra environment of the workers (e.g. S3 credentials from a Secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvSpec>,
    /// CPU and memory of each worker, as Kubernetes quantities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,
    /// Start even though the restored state (a savepoint, checkpoint or the workers' own) holds
    /// steps that are no longer in the pipeline; their state is dropped. Without it such a
    /// restore fails, as in Flink.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_non_restored_state: bool,
    pub pipeline: PipelineSpec,
}

impl StreamJobSpec {
    /// `checkpointing.storage`, where checkpoints and savepoints go, if set.
    pub fn checkpoint_storage(&self) -> Option<&str> {
        self.checkpointing.as_ref()?.storage.as_deref()
    }
}

/// Whether the job's workers run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    #[default]
    Running,
    Suspended,
}

/// One environment variable of the workers: a value, or a key of a Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvSource {
    pub secret_key_ref: SecretKeyRef,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Requests and limits per worker, e.g. `{requests: {cpu: "1", memory: 2Gi}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourcesSpec {
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub requests: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub limits: std::collections::BTreeMap<String, String>,
}

/// How state crosses an upgrade.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeMode {
    Stateless,
    #[default]
    Savepoint,
    LastState,
}

/// Delivery guarantee for results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

/// Periodic state snapshots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckpointingSpec {
    #[serde(default = "default_checkpoint_interval")]
    pub interval: Duration,
    /// `s3://bucket/prefix` or `file:///path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// Completed checkpoints kept (older ones are garbage-collected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<u32>,
}

fn default_checkpoint_interval() -> Duration {
    Duration::from("30s")
}

/// Lag- and capacity-driven scaling of the worker count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscalerSpec {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_parallelism: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallelism: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_utilization: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<Duration>,
}

/// What the operator observed and decided.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Label selector of the job's Pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Total consumer lag in records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointInfo>,
    /// The last completed savepoints, oldest first (at most [`SAVEPOINT_HISTORY`]); the
    /// savepoints themselves stay in storage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoints: Vec<SavepointInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Hash of what the workers run (pipeline, parallelism, image, env...): a spec whose hash
    /// differs is an upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<String>,
    /// An upgrade waiting for its savepoint (recorded before the workers are asked for it, so
    /// a restarted operator picks it up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeStatus>,
    /// The savepoint the running workers started from (partitions without newer checkpoints
    /// restore it): an id, or a location (`spec.initialSavepoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// Hash of what the workers compute (manifest and image, not how many run or whether): a
    /// `stateless` upgrade starts from empty state only when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_code: Option<String>,
    /// The state folder the workers checkpoint to, per StreamJob uid and generation: a new
    /// generation (the time it began, epoch ms) starts with each `stateless` upgrade and each
    /// rollback that restores a savepoint, so a fresh start never restores older state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_generation: Option<i64>,
    /// The state generation of the last stable spec, where a rollback returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_state_generation: Option<i64>,
    /// The `spec.savepointTriggerNonce` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savepoint_trigger_nonce: Option<i64>,
    /// A savepoint in progress that is not part of an upgrade (`savepointTriggerNonce`, or the
    /// final one on deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_savepoint: Option<PendingSavepoint>,
    /// The last spec whose workers all became ready (JSON), what a rollback returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_spec: Option<String>,
    /// A spec that was rolled back (its `deployed` hash): it is not tried again until the spec
    /// changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
    /// When the rollout of the current spec started (RFC 3339), for `spec.rollbackAfter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_started: Option<String>,
    /// What the built-in autoscaler runs the job at and why (`spec.autoscaler.enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// The built-in autoscaler's state. It never writes the spec: the parallelism it chose lives
/// here, so a GitOps tool owning the spec does not fight it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// The workers the job runs with (instead of `spec.parallelism`).
    pub parallelism: i32,
    /// `spec.parallelism` when the autoscaler chose `parallelism`: a different spec value (a
    /// `kubectl scale`, an edit) is a new starting point the autoscaler goes on from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_parallelism: Option<i32>,
    /// Rescales the autoscaler made.
    #[serde(default)]
    pub rescales: i64,
    /// The last decisions that changed something or found a rescale ineffective, oldest first
    /// (at most [`SCALING_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<ScalingDecision>,
}

/// One decision of the built-in autoscaler with the figures behind it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingDecision {
    /// When it was made (RFC 3339).
    pub time: String,
    /// `ScaleUp`, `ScaleDown` or `Ineffective` (the last scale-up did not raise throughput).
    pub kind: String,
    pub from: i32,
    pub to: i32,
    /// Records per second arriving, lag in records, and one worker's capacity (records per
    /// second when fully busy) when it was made.
    pub input_rate: f64,
    pub lag: i64,
    pub worker_capacity: f64,
    pub reason: String,
    /// Seconds from the decision until every worker of the new parallelism was ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescale_seconds: Option<f64>,
}

/// Decisions listed in `status.autoscaler.decisions`.
pub const SCALING_HISTORY: usize = 10;

impl AutoscalerStatus {
    /// Records a decision (the oldest beyond [`SCALING_HISTORY`] leave the list).
    pub fn record(&mut self, decision: ScalingDecision) {
        self.decisions.push(decision);
        let excess = self.decisions.len().saturating_sub(SCALING_HISTORY);
        self.decisions.drain(..excess);
    }
}

/// A savepoint outside an upgrade, polled until it completes or its deadline passes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingSavepoint {
    pub id: String,
    /// `nonce` (savepointTriggerNonce) or `deletion`.
    pub trigger: String,
    pub deadline: String,
}

/// A savepoint-before-upgrade in progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// The savepoint's id (the trigger id given to every worker).
    pub savepoint: String,
    /// `StreamJobStatus::deployed` of the spec being rolled out.
    pub target: String,
    /// When it was triggered and by when it must complete (RFC 3339); past the deadline the
    /// upgrade is abandoned with a Warning and retried, the running workers untouched.
    pub started: String,
    pub deadline: String,
}

/// A completed savepoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SavepointInfo {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// What asked for it: `upgrade` (before rolling out a changed spec) or `api` (the REST API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// Savepoints listed in `status.savepoints`.
pub const SAVEPOINT_HISTORY: usize = 10;

impl StreamJobStatus {
    /// Records a completed savepoint: the last one, and the newest of the history (the oldest
    /// beyond [`SAVEPOINT_HISTORY`] leave the list). Recording the same path again does nothing;
    /// whether it was recorded.
    pub fn record_savepoint(&mut self, info: SavepointInfo) -> bool {
        if self.savepoints.iter().any(|s| s.path == info.path) {
            return false;
        }
        self.savepoints.push(info.clone());
        let excess = self.savepoints.len().saturating_sub(SAVEPOINT_HISTORY);
        self.savepoints.drain(..excess);
        self.last_savepoint = Some(info);
        true
    }
}

/// A status condition in the Kubernetes convention.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}
