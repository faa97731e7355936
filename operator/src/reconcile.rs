//! The StreamJob controller: validate the spec (every error into a condition and an Event),
//! server-side apply the desired objects with one field manager, and report status.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_crds::{Condition, JobState, SavepointInfo, StreamJob, StreamJobStatus, UpgradeMode, UpgradeStatus};

use crate::build::{self, Desired};
use crate::lifecycle::{self, Outcome};
use crate::metrics::Metrics;
use crate::scaling::{self, Scaling};
use crate::workers::{self, TriggerError};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "weir-operator";

/// What a reconcile can fail with; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("reading random bytes for the job's admin token: {0}")]
    Random(#[from] std::io::Error),
}

pub struct Ctx {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub scaling: Arc<Scaling>,
}

/// Runs the controller for StreamJobs in `namespaces` (all when empty): one controller per
/// namespace, each watching only its own objects (a namespaced Role suffices), until they end.
pub async fn run(client: Client, namespaces: Vec<String>, metrics: Arc<Metrics>, scaling: Arc<Scaling>) {
    if namespaces.is_empty() {
        return run_in(client, None, metrics, scaling).await;
    }
    let controllers =
        namespaces.into_iter().map(|ns| run_in(client.clone(), Some(ns), metrics.clone(), scaling.clone()));
    futures::future::join_all(controllers).await;
}

/// The controller for StreamJobs in `namespace` (all when `None`).
async fn run_in(client: Client, namespace: Option<String>, metrics: Arc<Metrics>, scaling: Arc<Scaling>) {
    let api = |c: &Client| -> Api<StreamJob> {
        match &namespace {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    };
    fn owned<K>(c: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        match ns {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    }
    let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let ctx =
        Arc::new(Ctx { client: client.clone(), recorder: Recorder::new(client.clone(), reporter), metrics, scaling });
    let cfg = watcher::Config::default();
    Controller::new(api(&client), cfg.clone())
        .owns(owned::<StatefulSet>(&client, &namespace), cfg.clone())
        .owns(owned::<ConfigMap>(&client, &namespace), cfg.clone())
        .owns(owned::<Service>(&client, &namespace), cfg)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!("reconcile: {e}");
            }
        })
        .await;
}

fn error_policy(job: Arc<StreamJob>, e: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    tracing::warn!(job = %job.name_any(), "reconcile failed: {e}");
    Action::requeue(Duration::from_secs(5))
}

pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// `conditions` with `c` set, keeping the transition time when the status did not change.
pub(crate) fn with_condition(conditions: &[Condition], mut c: Condition) -> Vec<Condition> {
    let mut out: Vec<Condition> = conditions.iter().filter(|x| x.type_ != c.type_).cloned().collect();
    let previous = conditions.iter().find(|x| x.type_ == c.type_);
    c.last_transition_time = match previous {
        Some(p) if p.status == c.status => p.last_transition_time.clone(),
        _ => Some(now()),
    };
    out.push(c);
    out
}

fn condition(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: None,
    }
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await?;
    Ok(())
}

pub(crate) async fn publish(ctx: &Ctx, job: &StreamJob, type_: EventType, reason: &str, note: String) {
    let ev = Event { type_, reason: reason.into(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &job.object_ref(&())).await {
        tracing::warn!(job = %job.name_any(), "cannot publish event {reason}: {e}");
    }
}

/// Writes the status fields that differ from `job`'s (as read when the reconcile began), with
/// a merge patch, or nothing when none differ: fields others wrote meanwhile (the REST API's
/// `lastSavepoint`) are left alone unless this reconcile changed them too.
pub(crate) async fn set_status(ctx: &Ctx, job: &StreamJob, status: StreamJobStatus) -> Result<(), Error> {
    let diff = status_diff(&job.status.clone().unwrap_or_default(), &status);
    if diff.is_empty() {
        return Ok(());
    }
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({ "status": diff });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch_status(&job.name_any(), &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The top-level status fields of `new` that differ from `old`; removed ones as `null`.
fn status_diff(old: &StreamJobStatus, new: &StreamJobStatus) -> serde_json::Map<String, serde_json::Value> {
    let as_map = |s: &StreamJobStatus| match serde_json::to_value(s) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (as_map(old), as_map(new));
    let mut diff: serde_json::Map<String, serde_json::Value> =
        new.iter().filter(|(k, v)| old.get(*k) != Some(v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        diff.insert(k.clone(), serde_json::Value::Null);
    }
    diff
}

/// One pass: invalid specs are reported and nothing is deployed; valid ones are applied and
/// their phase follows the StatefulSet (Deploying until every worker is ready, then Running).
pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let timer = ctx.metrics.duration.start_timer();
    let result = reconcile_job(&job, &ctx).await;
    timer.observe_duration();
    result
}

async fn reconcile_job(job: &StreamJob, ctx: &Ctx) -> Result<Action, Error> {
    if job.metadata.deletion_timestamp.is_some() {
        ctx.scaling.forget(job);
        return lifecycle::finalize(ctx, job).await;
    }
    lifecycle::keep_finalizer(ctx, job).await?;
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let mut old = job.status.clone().unwrap_or_default();
    ctx.scaling.track(job, &mut old);
    let generation = job.metadata.generation;
    // A spec with Avro inputs is checked against its registry subjects once per generation
    // (the registry is not asked at every pass, nor does its outage stop the job's management).
    let avro = !weir_crds::registry::schema_lookups(&job.spec.pipeline).is_empty();
    let accepted = old.observed_generation == generation && old.phase.as_deref() != Some("Failed");
    let valid = match avro && accepted {
        true => Ok(()),
        false => match crate::registry::validate(&ctx.client, &ns, job).await {
            Ok(valid) => valid,
            Err(crate::registry::Unreachable(e)) => {
                publish(ctx, job, EventType::Warning, "SchemaRegistryUnreachable", e).await;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
        },
    };
    if let Err(errs) = valid {
        let message = errs.to_string();
        if old.observed_generation != generation || old.phase.as_deref() != Some("Failed") {
            publish(ctx, job, EventType::Warning, "InvalidSpec", message.clone()).await;
        }
        ctx.metrics.reconciles.with_label_values(&["invalid"]).inc();
        ctx.metrics.set_phase(&ns, &job.name_any(), "Failed");
        let status = StreamJobStatus {
            phase: Some("Failed".into()),
            observed_generation: generation,
            conditions: with_condition(&old.conditions, condition("Ready", false, "InvalidSpec", message)),
            ..old.clone()
        };
        set_status(ctx, job, status).await?;
        // A subject registered later, or changed, may make the spec valid.
        return Ok(if avro { Action::requeue(Duration::from_secs(60)) } else { Action::await_change() });
    }
    // With the autoscaler on, the job runs at the parallelism it chose (in status, not spec).
    let scaled = scaling::autoscaled(job, &old);
    // A rolled-back spec stays rolled back (the last stable one runs) until the spec changes.
    let spec_hash = build::deployed_hash(&scaled);
    let effective = lifecycle::effective(&scaled, &old);
    let job = &effective;
    let target = build::deployed_hash(job);
    let base = match upgrade(job, ctx, &old, &target).await? {
        Upgrade::Deploy(mut status) => {
            if old.deployed != status.deployed {
                status.rollout_started = Some(now());
            }
            if status.rolled_back.is_some() && status.rolled_back != Some(spec_hash) {
                // The spec changed since it was rolled back.
                status.rolled_back = None;
            }
            status.deployed_code = Some(build::code_hash(job));
            status
        }
        Upgrade::Wait(status, action) => {
            set_status(ctx, job, status).await?;
            ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
            ctx.metrics.set_phase(&ns, &job.name_any(), "Upgrading");
            return Ok(action);
        }
    };
    // The objects are built with the status that names the savepoint the workers restore.
    let with_status = StreamJob { status: Some(base.clone()), ..job.clone() };
    let Desired { config_map, service, stateful_set, pdb } = build::desired(&with_status);
    workers::ensure_admin_secret(&ctx.client, &ns, job).await?;
    apply(&ctx.client, &ns, &config_map).await?;
    apply(&ctx.client, &ns, &service).await?;
    apply::<StatefulSet>(&ctx.client, &ns, &stateful_set).await?;
    apply::<PodDisruptionBudget>(&ctx.client, &ns, &pdb).await?;
    if old.phase.as_deref() == Some("RollingBack") {
        // Workers of the failed spec that never became ready are replaced now (a StatefulSet
        // waits for a broken Pod to become ready before it rolls it).
        workers::delete_unready(&ctx.client, &ns, job).await?;
    }

    let want = build::replicas(job);
    let suspended = job.spec.state == JobState::Suspended;
    let sts: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let current = sts.get_opt(&job.name_any()).await?;
    let ready = current.as_ref().and_then(|s| s.status.as_ref()?.ready_replicas).unwrap_or(0);
    let updated = current.as_ref().is_some_and(|s| {
        let st = s.status.as_ref();
        st.and_then(|st| st.observed_generation) == s.metadata.generation
            && st.and_then(|st| st.updated_replicas).unwrap_or(0) == want
    });
    let running = ready == want && updated;
    if !running && !suspended {
        let restarted = workers::restart_rescaled(&ctx.client, &ns, job, want).await?;
        if restarted > 0 {
            let note = format!("restarting {restarted} workers at once for the rescale to {want}");
            publish(ctx, job, EventType::Normal, "Restarting", note).await;
        }
    }
    let rolled_back = base.rolled_back.is_some();
    let phase = match (suspended, running) {
        (true, true) => "Suspended",
        (true, false) => "Suspending",
        (false, true) if rolled_back => "RolledBack",
        (false, true) => "Running",
        (false, false) => "Deploying",
    };
    if old.phase.as_deref() != Some(phase) {
        let note = match (suspended, running) {
            (true, true) => "every worker committed, checkpointed and stopped".to_string(),
            (true, false) => format!("stopping {ready} workers"),
            (false, true) if rolled_back => format!("all {want} workers run the last stable spec"),
            (false, true) => format!("all {want} workers are ready"),
            (false, false) => format!("{ready} of {want} workers ready"),
        };
        publish(ctx, job, EventType::Normal, phase, note).await;
    }
    let message = format!("{ready} of {want} workers ready");
    let reason = match (suspended, running) {
        (true, _) => "Suspended",
        (false, true) if rolled_back => "RolledBack",
        (false, true) => "WorkersReady",
        (false, false) => "WorkersStarting",
    };
    let mut status = StreamJobStatus {
        phase: Some(phase.into()),
        observed_generation: generation,
        parallelism: Some(ready),
        selector: Some(build::selector(job)),
        conditions: with_condition(&base.conditions, condition("Ready", running && !suspended, reason, message)),
        ..base
    };
    ctx.metrics.desired_parallelism.with_label_values(&[&ns, &job.name_any()]).set(i64::from(want));
    ctx.metrics.ready_parallelism.with_label_values(&[&ns, &job.name_any()]).set(i64::from(ready));
    let mut again = Duration::from_secs(if running { 60 } else { 5 });
    if running && !suspended {
        // For `kubectl get sj` (the Lag column); the REST API gives it per partition.
        let pods = workers::pods(&ctx.client, &ns, job).await?;
        let scraped = workers::scrape(&pods).await;
        if scraped.is_err() {
            // To see them again soon.
            again = again.min(Duration::from_secs(10));
        }
        reachable(ctx, job, &mut status, scraped.as_ref().err()).await;
        if let Some(lag) = scraped.as_deref().ok().and_then(workers::consumer_lag) {
            status.lag = Some(lag);
        }
        if let (Some(_), Ok(metrics)) = (job.spec.checkpoint_storage(), scraped.as_deref()) {
            let failing = workers::failing_checkpoints(&pods, metrics);
            if !failing.is_empty() {
                // To see them complete again soon.
                again = again.min(Duration::from_secs(10));
            }
            checkpointing(ctx, job, &mut status, failing).await;
        }
        if scaling::enabled(job) && !rolled_back {
            scaling::rescale_done(ctx, &mut status, ready);
            again = again.min(ctx.scaling.run(ctx, job, &mut status, &scraped).await);
        }
        // What runs now is what a rollback returns to.
        status.last_stable_spec = serde_json::to_string(&job.spec).ok();
        status.stable_state_generation = status.state_generation;
        status.rollout_started = None;
    } else if !suspended {
        if let Some(note) = lifecycle::rollback(job, &mut status) {
            publish(ctx, job, EventType::Warning, "RollingBack", note).await;
            again = Duration::from_secs(1);
        }
    }
    if old.deployed.is_none() {
        // A nonce set at creation takes no savepoint.
        status.savepoint_trigger_nonce = job.spec.savepoint_trigger_nonce;
    }
    if let Some(d) = lifecycle::nonce_savepoint(ctx, job, &mut status).await? {
        again = again.min(d);
    }
    let phase = status.phase.clone().unwrap_or_default();
    set_status(ctx, job, status).await?;
    ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
    ctx.metrics.set_phase(&ns, &job.name_any(), &phase);
    Ok(Action::requeue(again))
}

/// The `Checkpointing` condition: False while some worker's checkpoints fail (the storage is
/// down or refuses them; processing goes on, but a restart would replay from the last completed
/// checkpoint and, past the input's retention, lose data), with a Warning Event when they start
/// failing and a Normal one when they complete again.
async fn checkpointing(ctx: &Ctx, job: &StreamJob, status: &mut StreamJobStatus, failing: Vec<(String, i64)>) {
    let was_failing = status.conditions.iter().any(|c| c.type_ == "Checkpointing" && c.status == "False");
    let c = if failing.is_empty() {
        if was_failing {
            let note = "checkpoints complete again on every worker".to_string();
            publish(ctx, job, EventType::Normal, "CheckpointsRecovered", note).await;
        }
        condition("Checkpointing", true, "CheckpointsCompleting", "every worker's last checkpoint completed".into())
    } else {
        let workers: Vec<String> = failing.iter().map(|(pod, n)| format!("{pod} ({n} in a row)")).collect();
        let message = format!(
            "checkpoints are failing on {}; processing goes on, and a restarted worker replays from its last completed checkpoint (see the worker's log for the storage's error)",
            workers.join(", ")
        );
        if !was_failing {
            publish(ctx, job, EventType::Warning, "CheckpointsFailing", message.clone()).await;
        }
        condition("Checkpointing", false, "CheckpointsFailing", message)
    };
    status.conditions = with_condition(&status.conditions, c);
}

/// The `Reachable` condition: False while the operator cannot read some worker's admin port (a
/// network partition, a NetworkPolicy, a hung worker). The workers go on processing and
/// committing without the operator, but what needs it waits: savepoints, upgrades (the running
/// workers keep the previous spec until a savepoint completes), the autoscaler's decisions and
/// the `Checkpointing` condition. A Warning Event when it starts, a Normal one when it ends.
async fn reachable(ctx: &Ctx, job: &StreamJob, status: &mut StreamJobStatus, error: Option<&anyhow::Error>) {
    let was = status.conditions.iter().find(|c| c.type_ == "Reachable").map(|c| c.status == "True");
    let c = match error {
        None => {
            if was == Some(false) {
                let note = "the operator reaches every worker again".to_string();
                publish(ctx, job, EventType::Normal, "WorkersReachable", note).await;
            }
            condition("Reachable", true, "WorkersReachable", "the operator reads every worker's admin port".into())
        }
        Some(e) => {
            let message = format!(
                "the operator cannot reach a worker ({e:#}); the workers go on processing, but savepoints, upgrades and \
                 autoscaling wait until it can"
            );
            if was != Some(false) {
                publish(ctx, job, EventType::Warning, "WorkersUnreachable", message.clone()).await;
            }
            condition("Reachable", false, "WorkersUnreachable", message)
        }
    };
    status.conditions = with_condition(&status.conditions, c);
}

/// How long the workers have to complete a savepoint before an upgrade.
const UPGRADE_SAVEPOINT_DEADLINE: Duration = Duration::from_secs(300);

/// Where a spec change stands: deploy now with this status, or wait (the running workers keep
/// the previous spec) and reconcile again.
enum Upgrade {
    Deploy(StreamJobStatus),
    Wait(StreamJobStatus, Action),
}

/// The savepoint-before-upgrade lifecycle. A spec whose [`build::deployed_hash`] differs from
/// `status.deployed` is an upgrade. With `upgradeMode: savepoint` (the default) and checkpoint
/// storage, and every worker running: the savepoint's id and deadline go into
/// `status.upgrade` first, then every worker is asked for it, and later reconciles poll it
/// (never blocking); once complete, the new spec rolls out with the workers restoring it
/// (`status.restoredFrom`). A failed or late savepoint leaves the running workers alone, with
/// a Warning, and is retried. Otherwise (`last-state`, no storage, workers not running) the new
/// spec rolls out at once and the workers restore their last checkpoints, which is said in an
/// Event, never silently. `stateless` starts a new state folder (empty state, sources at their
/// `startFrom`) when what the workers compute changed ([`build::code_hash`]); a rescale,
/// suspend/resume or restart keeps the state in every mode.
async fn upgrade(job: &StreamJob, ctx: &Ctx, old: &StreamJobStatus, target: &str) -> Result<Upgrade, Error> {
    let mut status = old.clone();
    if old.deployed.as_deref() == Some(target) && old.upgrade.is_none() {
        return Ok(Upgrade::Deploy(status));
    }
    let Some(deployed) = old.deployed.as_deref() else {
        // The first deployment.
        status.deployed = Some(target.to_string());
        if let Some(sp) = &job.spec.initial_savepoint {
            let note = format!("the workers start from savepoint {sp} (spec.initialSavepoint)");
            publish(ctx, job, EventType::Normal, "RestoringSavepoint", note).await;
            status.restored_from = Some(sp.clone());
        }
        return Ok(Upgrade::Deploy(status));
    };
    // A rescale by the autoscaler alone needs no savepoint: the stopped workers checkpoint on
    // their way out and the new owners restore those incremental checkpoints, which is faster.
    let rescale = scaling::is_rescale_only(job, old);
    let savepoints =
        job.spec.upgrade_mode == UpgradeMode::Savepoint && job.spec.checkpoint_storage().is_some() && !rescale;
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let Some(up) = old.upgrade.clone() else {
        if !savepoints || !lifecycle::all_running(old.phase.as_deref()) {
            let code = build::code_hash(job);
            let fresh = job.spec.upgrade_mode == UpgradeMode::Stateless
                && old.deployed_code.as_deref().is_some_and(|c| c != code);
            let note = if fresh {
                let generation = lifecycle::new_state_generation(old);
                status.state_generation = Some(generation);
                format!(
                    "rolling out {target} (was {deployed}) from empty state (upgradeMode stateless, state generation \
                     {generation}): the sources start at their startFrom"
                )
            } else {
                let why = if rescale {
                    "an autoscaler rescale".to_string()
                } else if !savepoints {
                    format!("upgradeMode {:?} without a savepoint", job.spec.upgrade_mode)
                } else {
                    let phase = old.phase.as_deref().unwrap_or("-");
                    format!("no savepoint, as not every worker is running (phase {phase})")
                };
                format!("rolling out {target} (was {deployed}), {why}: the workers restore their last checkpoints")
            };
            publish(ctx, job, EventType::Normal, "Upgrading", note).await;
            status.deployed = Some(target.to_string());
            // Restoring an earlier savepoint again would go back in time.
            status.restored_from = None;
            return Ok(Upgrade::Deploy(status));
        }
        // Recorded before the workers are asked, so that a restarted operator finds it.
        let id = lifecycle::savepoint_id("upgrade", job.metadata.generation.unwrap_or(0));
        status.upgrade = Some(UpgradeStatus {
            savepoint: id.clone(),
            target: target.to_string(),
            started: now(),
            deadline: lifecycle::deadline_after(UPGRADE_SAVEPOINT_DEADLINE),
        });
        status.phase = Some("Upgrading".into());
        set_status(ctx, job, status.clone()).await?;
        let pods = workers::pods(&ctx.client, &ns, job).await?;
        let token = workers::admin_token(&ctx.client, &ns, job).await?;
        return Ok(match workers::trigger_savepoint(&pods, &id, token.as_deref()).await {
            Ok(answers) => {
                let note =
                    format!("savepoint {id} requested from {} workers before rolling out {target}", answers.len());
                publish(ctx, job, EventType::Normal, "SavepointForUpgrade", note).await;
                Upgrade::Wait(status, Action::requeue(Duration::from_secs(2)))
            }
            Err(TriggerError::Refused(m) | TriggerError::Unreachable(m)) => {
                let note = format!("savepoint {id} before the upgrade could not be requested: {m}; retrying");
                publish(ctx, job, EventType::Warning, "SavepointFailed", note).await;
                status.upgrade = None;
                status.phase = old.phase.clone();
                Upgrade::Wait(status, Action::requeue(Duration::from_secs(10)))
            }
        });
    };
    match lifecycle::poll(ctx, job, &up.savepoint, &up.deadline).await? {
        Outcome::Completed(location) => {
            let note = format!(
                "savepoint {} completed ({location}); rolling out {target} with the workers restoring it",
                up.savepoint
            );
            publish(ctx, job, EventType::Normal, "Upgrading", note).await;
            status.upgrade = None;
            // The spec may have changed again meanwhile: the savepoint holds the state for
            // whatever is rolled out now.
            status.deployed = Some(target.to_string());
            status.restored_from = Some(up.savepoint);
            status.record_savepoint(SavepointInfo {
                path: location,
                time: Some(now()),
                trigger: Some("upgrade".into()),
            });
            Ok(Upgrade::Deploy(status))
        }
        Outcome::Waiting => {
            status.phase = Some("Upgrading".into());
            Ok(Upgrade::Wait(status, Action::requeue(Duration::from_secs(2))))
        }
        Outcome::Failed(why) => {
            let note = format!(
                "savepoint {} before the upgrade {why}; the workers keep running the previous spec; retrying",
                up.savepoint
            );
            publish(ctx, job, EventType::Warning, "SavepointFailed", note).await;
            // Back to Running (what the workers do), so the retry takes a new savepoint.
            status.upgrade = None;
            status.phase = Some("Running".into());
            Ok(Upgrade::Wait(status, Action::requeue(Duration::from_secs(15))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_writes_carry_only_what_changed() {
        let old = StreamJobStatus {
            phase: Some("Upgrading".into()),
            upgrade: Some(UpgradeStatus { savepoint: "u1".into(), ..Default::default() }),
            parallelism: Some(2),
            ..Default::default()
        };
        let new = StreamJobStatus { phase: Some("Running".into()), parallelism: Some(2), ..Default::default() };
        let diff = status_diff(&old, &new);
        assert_eq!(serde_json::Value::Object(diff), serde_json::json!({"phase": "Running", "upgrade": null}));
        assert!(status_diff(&new, &new).is_empty());
    }
}
