//! Lifecycle steps beside the upgrade: savepoints asked for by `spec.savepointTriggerNonce`, the
//! final savepoint of a deleted job and the deletion of its internal topics (finalizers), and
//! the rollback to the last stable spec.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use weir_crds::{PendingSavepoint, SavepointInfo, StreamJob, StreamJobStatus, UpgradeMode};

use crate::build;
use crate::reconcile::{now, publish, set_status, Ctx, Error, FIELD_MANAGER};
use crate::workers::{self, TriggerError};

/// Held on a StreamJob with `spec.savepointOnDeletion` until its final savepoint is done.
pub const FINALIZER: &str = "weir.dev/final-savepoint";

/// Held on a StreamJob with repartition steps until its internal topics are deleted.
pub const TOPICS_FINALIZER: &str = "weir.dev/internal-topics";

/// How long a savepoint outside an upgrade may take.
const SAVEPOINT_DEADLINE: Duration = Duration::from_secs(300);

/// Phases in which every worker of the job runs (a rolled-back job runs the last stable spec).
pub fn all_running(phase: Option<&str>) -> bool {
    matches!(phase, Some("Running" | "RolledBack"))
}

fn has_storage(job: &StreamJob) -> bool {
    job.spec.checkpoint_storage().is_some()
}

fn has_finalizer(job: &StreamJob) -> bool {
    job.finalizers().iter().any(|f| f == FINALIZER)
}

/// The job's internal topics: their brokers, client properties and names.
fn internal_topics(job: &StreamJob) -> Option<(String, std::collections::BTreeMap<String, String>, Vec<String>)> {
    weir_crds::internal_topics(&job.spec.pipeline, &job.name_any(), Some(&namespace(job)))
}

fn namespace(job: &StreamJob) -> String {
    job.namespace().unwrap_or_else(|| "default".into())
}

/// The time `d` from now (RFC 3339).
pub fn deadline_after(d: Duration) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    (now + k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or_default()).to_string()
}

fn passed(time: &str) -> bool {
    time.parse::<k8s_openapi::jiff::Timestamp>().is_ok_and(|t| k8s_openapi::jiff::Timestamp::now() > t)
}

/// Writes the finalizer list (a merge patch carrying the resourceVersion, so a concurrent
/// change makes it fail and the reconcile retry).
async fn set_finalizers(ctx: &Ctx, job: &StreamJob, finalizers: Vec<String>) -> Result<(), Error> {
    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace(job));
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": job.resource_version()}
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch(&job.name_any(), &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Adds or removes the finalizers as the spec says: the final savepoint's with
/// `spec.savepointOnDeletion`, the internal topics' with repartition steps.
pub async fn keep_finalizer(ctx: &Ctx, job: &StreamJob) -> Result<(), Error> {
    let ours = [FINALIZER, TOPICS_FINALIZER];
    let want: Vec<&str> =
        [(FINALIZER, job.spec.savepoint_on_deletion), (TOPICS_FINALIZER, internal_topics(job).is_some())]
            .into_iter()
            .filter_map(|(f, on)| on.then_some(f))
            .collect();
    let has: Vec<&str> = ours.into_iter().filter(|f| job.finalizers().iter().any(|g| g == f)).collect();
    if want == has {
        return Ok(());
    }
    let mut list: Vec<String> = job.finalizers().iter().filter(|f| !ours.contains(&f.as_str())).cloned().collect();
    list.extend(want.into_iter().map(String::from));
    set_finalizers(ctx, job, list).await
}

/// Where a savepoint stands.
pub enum Outcome {
    Completed(String),
    Waiting,
    Failed(String),
}

/// Asks the job's workers how savepoint `id` stands; still in progress past `deadline` (RFC
/// 3339) is a failure.
pub async fn poll(ctx: &Ctx, job: &StreamJob, id: &str, deadline: &str) -> Result<Outcome, Error> {
    let pods = workers::pods(&ctx.client, &namespace(job), job).await?;
    let token = workers::admin_token(&ctx.client, &namespace(job), job).await?;
    let progress = workers::savepoint_progress(&pods, id, token.as_deref()).await;
    Ok(match progress.state {
        "completed" => Outcome::Completed(progress.location.unwrap_or_default()),
        "in-progress" if !passed(deadline) => Outcome::Waiting,
        "in-progress" => Outcome::Failed("did not complete by its deadline".into()),
        state => Outcome::Failed(format!("is {state}")),
    })
}

/// Records savepoint `id` as pending (before asking, so that a restarted operator polls it),
/// then asks every worker for it; the reason when they could not be asked.
async fn trigger(
    ctx: &Ctx,
    job: &StreamJob,
    status: &mut StreamJobStatus,
    id: String,
    why: &str,
) -> Result<Option<String>, Error> {
    status.pending_savepoint =
        Some(PendingSavepoint { id: id.clone(), trigger: why.into(), deadline: deadline_after(SAVEPOINT_DEADLINE) });
    set_status(ctx, job, status.clone()).await?;
    let pods = workers::pods(&ctx.client, &namespace(job), job).await?;
    let token = workers::admin_token(&ctx.client, &namespace(job), job).await?;
    match workers::trigger_savepoint(&pods, &id, token.as_deref()).await {
        Ok(answers) => {
            let note = format!("savepoint {id} ({why}) requested from {} workers", answers.len());
            publish(ctx, job, EventType::Normal, "SavepointRequested", note).await;
            Ok(None)
        }
        Err(TriggerError::Refused(m) | TriggerError::Unreachable(m)) => {
            status.pending_savepoint = None;
            Ok(Some(m))
        }
    }
}

/// A new savepoint id: `<kind>-<n>-<epoch ms>`.
pub fn savepoint_id(kind: &str, n: i64) -> String {
    format!("{kind}-{n}-{}", k8s_openapi::jiff::Timestamp::now().as_millisecond())
}

/// `spec.savepointTriggerNonce`: a changed nonce takes a savepoint while the workers keep
/// running (once they all run); a pending one is polled. When to look again, if at all.
pub async fn nonce_savepoint(
    ctx: &Ctx,
    job: &StreamJob,
    status: &mut StreamJobStatus,
) -> Result<Option<Duration>, Error> {
    if let Some(p) = status.pending_savepoint.clone().filter(|p| p.trigger == "nonce") {
        match poll(ctx, job, &p.id, &p.deadline).await? {
            Outcome::Waiting => return Ok(Some(Duration::from_secs(2))),
            Outcome::Completed(path) => {
                publish(ctx, job, EventType::Normal, "SavepointCompleted", format!("savepoint {} at {path}", p.id))
                    .await;
                status.record_savepoint(SavepointInfo { path, time: Some(now()), trigger: Some("nonce".into()) });
            }
            Outcome::Failed(why) => {
                let note = format!("savepoint {} (savepointTriggerNonce) {why}; change the nonce to try again", p.id);
                publish(ctx, job, EventType::Warning, "SavepointFailed", note).await;
            }
        }
        status.pending_savepoint = None;
        return Ok(None);
    }
    let Some(nonce) = job.spec.savepoint_trigger_nonce else { return Ok(None) };
    if status.savepoint_trigger_nonce == Some(nonce) || status.pending_savepoint.is_some() {
        return Ok(None);
    }
    if !has_storage(job) {
        let note = "savepointTriggerNonce changed, but savepoints need spec.checkpointing.storage".to_string();
        publish(ctx, job, EventType::Warning, "SavepointFailed", note).await;
        status.savepoint_trigger_nonce = Some(nonce);
        return Ok(None);
    }
    if !all_running(status.phase.as_deref()) {
        // Taken once every worker runs.
        return Ok(Some(Duration::from_secs(5)));
    }
    status.savepoint_trigger_nonce = Some(nonce);
    match trigger(ctx, job, status, savepoint_id("nonce", nonce), "nonce").await? {
        None => Ok(Some(Duration::from_secs(2))),
        Some(why) => {
            let note = format!("savepoint for savepointTriggerNonce {nonce} could not be requested: {why}");
            publish(ctx, job, EventType::Warning, "SavepointFailed", note).await;
            Ok(None)
        }
    }
}

/// A StreamJob being deleted while it holds the finalizer: takes the final savepoint if every
/// worker runs, waits for it (at most [`SAVEPOINT_DEADLINE`]), says where it is in an Event,
/// then lets the deletion go on (the owned objects go with it).
pub async fn finalize(ctx: &Ctx, job: &StreamJob) -> Result<Action, Error> {
    if has_finalizer(job) {
        return final_savepoint(ctx, job).await;
    }
    if job.finalizers().iter().any(|f| f == TOPICS_FINALIZER) {
        return delete_internal_topics(ctx, job).await;
    }
    Ok(Action::await_change())
}

/// A deleted job's internal topics go once its workers have stopped (a worker still running
/// would write them again): the StatefulSet is scaled to 0, and when no worker Pod is left the
/// topics are deleted and the finalizer released. A cluster that refuses is retried every 30 s
/// with a Warning Event (removing the finalizer by hand leaves the topics).
async fn delete_internal_topics(ctx: &Ctx, job: &StreamJob) -> Result<Action, Error> {
    let ns = namespace(job);
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(s) = sts.get_opt(&job.name_any()).await? {
        if s.spec.as_ref().and_then(|s| s.replicas) != Some(0) {
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
            let patch = serde_json::json!({"spec": {"replicas": 0}});
            sts.patch(&job.name_any(), &params, &Patch::Merge(&patch)).await?;
        }
    }
    if !workers::pods(&ctx.client, &ns, job).await?.is_empty() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if let Some((brokers, properties, topics)) = internal_topics(job) {
        let resolved = crate::kafka::resolve(&ctx.client, &ns, job, &properties).await;
        match async { delete_topics(&brokers, &resolved?, &topics).await }.await {
            Ok(()) => {
                let note = format!("deleted the internal topics {}", topics.join(", "));
                publish(ctx, job, EventType::Normal, "TopicsDeleted", note).await;
            }
            Err(e) => {
                let note = format!(
                    "deleting the internal topics on {brokers}: {e}; retrying in 30 s (removing the finalizer \
                     {TOPICS_FINALIZER} by hand leaves them)"
                );
                publish(ctx, job, EventType::Warning, "TopicCleanupFailed", note).await;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
        }
    }
    release(ctx, job, TOPICS_FINALIZER).await?;
    Ok(Action::await_change())
}

/// Deletes `topics` on `brokers`; one that does not exist is already gone.
async fn delete_topics(
    brokers: &str,
    properties: &std::collections::BTreeMap<String, String>,
    topics: &[String],
) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let mut cfg = rdkafka::ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        cfg.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = cfg.create().map_err(|e| e.to_string())?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.delete_topics(&names, &options).await.map_err(|e| e.to_string())? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(format!("topic {topic}: {code}")),
        }
    }
    Ok(())
}

/// The final savepoint of a deleted job with `spec.savepointOnDeletion`, then its finalizer
/// released.
async fn final_savepoint(ctx: &Ctx, job: &StreamJob) -> Result<Action, Error> {
    let mut status = job.status.clone().unwrap_or_default();
    if let Some(p) = status.pending_savepoint.clone().filter(|p| p.trigger == "deletion") {
        match poll(ctx, job, &p.id, &p.deadline).await? {
            Outcome::Waiting => return Ok(Action::requeue(Duration::from_secs(2))),
            Outcome::Completed(path) => {
                let note = format!(
                    "final savepoint {} at {path}; a new StreamJob starts from it with spec.initialSavepoint: {path}",
                    p.id
                );
                // The job goes: the Event keeps where the savepoint is.
                publish(ctx, job, EventType::Normal, "FinalSavepoint", note).await;
            }
            Outcome::Failed(why) => {
                let note = format!("final savepoint {} {why}; deleting without it", p.id);
                publish(ctx, job, EventType::Warning, "SavepointFailed", note).await;
            }
        }
        release(ctx, job, FINALIZER).await?;
        return Ok(Action::await_change());
    }
    if has_storage(job) && all_running(status.phase.as_deref()) {
        let id = savepoint_id("final", job.metadata.generation.unwrap_or(0));
        match trigger(ctx, job, &mut status, id, "deletion").await? {
            None => return Ok(Action::requeue(Duration::from_secs(2))),
            Some(why) => {
                let note = format!("final savepoint could not be requested: {why}; deleting without it");
                publish(ctx, job, EventType::Warning, "SavepointFailed", note).await;
            }
        }
    } else {
        let note = format!(
            "no final savepoint: the workers are not all running (phase {}); their last checkpoints stay in storage",
            status.phase.as_deref().unwrap_or("-")
        );
        publish(ctx, job, EventType::Warning, "SavepointSkipped", note).await;
    }
    release(ctx, job, FINALIZER).await?;
    Ok(Action::await_change())
}

/// Lets the deletion go on: the finalizer leaves the list, provided the list is still the one
/// read (a JSON patch `test`; status writes meanwhile do not matter, unlike a resourceVersion).
async fn release(ctx: &Ctx, job: &StreamJob, finalizer: &str) -> Result<(), Error> {
    let rest: Vec<String> = job.finalizers().iter().filter(|f| *f != finalizer).cloned().collect();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "test", "path": "/metadata/finalizers", "value": job.finalizers()},
        {"op": "replace", "path": "/metadata/finalizers", "value": rest},
    ]))
    .expect("a valid JSON patch");
    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &namespace(job));
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch(&job.name_any(), &params, &Patch::<()>::Json(patch)).await?;
    Ok(())
}

/// A state generation never used before by this job: the time, epoch ms (after any earlier).
pub fn new_state_generation(status: &StreamJobStatus) -> i64 {
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    now.max(status.state_generation.unwrap_or(0) + 1)
}

/// The job to deploy: its own spec, or the last stable one while the spec that was rolled back
/// is unchanged.
pub fn effective(job: &StreamJob, status: &StreamJobStatus) -> StreamJob {
    let stable = status.rolled_back.as_deref().filter(|failed| *failed == build::deployed_hash(job)).and_then(|_| {
        let spec = serde_json::from_str(status.last_stable_spec.as_deref()?).ok()?;
        Some(StreamJob { spec, ..job.clone() })
    });
    stable.unwrap_or_else(|| job.clone())
}

/// With `spec.rollbackAfter`, a rollout whose workers are not all ready in time goes back to
/// the last stable spec: `status` is changed to deploy it and the Event's note returned. With
/// `upgradeMode: savepoint` the workers restore the savepoint taken before the failed upgrade
/// (in a new state folder, so nothing the failed spec checkpointed is restored); otherwise the
/// last checkpoints of the stable spec's state folder (after a `stateless` upgrade that is the
/// folder the failed spec left; with `last-state` they share it).
pub fn rollback(job: &StreamJob, status: &mut StreamJobStatus) -> Option<String> {
    let after = Duration::from_millis(job.spec.rollback_after.as_ref()?.millis().ok()?);
    let started = status.rollout_started.as_deref()?;
    let stable: weir_crds::StreamJobSpec = serde_json::from_str(status.last_stable_spec.as_deref()?).ok()?;
    let failing = build::deployed_hash(job);
    let stable_job = StreamJob { spec: stable, status: None, ..job.clone() };
    let stable_hash = build::deployed_hash(&stable_job);
    let deadline = started.parse::<k8s_openapi::jiff::Timestamp>().ok()?
        + k8s_openapi::jiff::SignedDuration::try_from(after).ok()?;
    if stable_hash == failing || status.rolled_back.is_some() || k8s_openapi::jiff::Timestamp::now() < deadline {
        return None;
    }
    status.rolled_back = Some(failing.clone());
    status.deployed = Some(stable_hash.clone());
    status.deployed_code = Some(build::code_hash(&stable_job));
    status.rollout_started = None;
    let restore = match (&status.restored_from, job.spec.upgrade_mode) {
        (Some(sp), UpgradeMode::Savepoint) => {
            status.state_generation = Some(new_state_generation(status));
            format!("restoring savepoint {sp}")
        }
        _ => {
            status.state_generation = status.stable_state_generation;
            "the workers restore its last checkpoints".to_string()
        }
    };
    status.phase = Some("RollingBack".into());
    Some(format!(
        "the workers of {failing} were not all ready within {}; rolling back to the last stable spec {stable_hash}, {restore}",
        job.spec.rollback_after.as_ref().map(|d| d.to_string()).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(window: &str, rollback_after: Option<&str>) -> StreamJob {
        let yaml = format!(
            r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: j, namespace: ns, uid: uid-1}}
spec:
  checkpointing: {{storage: "s3://weir/j"}}
  pipeline:
    sources:
      p: {{kafka: {{brokers: "kafka:9092", topic: p}}, schema: {{card_id: string, ts: timestamp}}, eventTime: {{field: ts}}}}
    streams:
      w: {{from: p, keyBy: [card_id], window: {{tumbling: {window}}}, aggregate: {{n: "count(*)"}}}}
"#
        );
        let mut j: StreamJob = serde_yaml::from_str(&yaml).unwrap();
        j.spec.rollback_after = rollback_after.map(Into::into);
        j
    }

    fn ago(seconds: i64) -> String {
        (k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(seconds)).to_string()
    }

    #[test]
    fn a_rollout_not_ready_in_time_goes_back_to_the_last_stable_spec() {
        let stable = job("1m", Some("2m"));
        let failing = job("5m", Some("2m"));
        let mut status = StreamJobStatus {
            last_stable_spec: serde_json::to_string(&stable.spec).ok(),
            deployed: Some(build::deployed_hash(&failing)),
            rollout_started: Some(ago(60)),
            restored_from: Some("upgrade-2-1".into()),
            ..Default::default()
        };
        assert!(rollback(&failing, &mut status.clone()).is_none(), "within the deadline");
        assert!(rollback(&job("5m", None), &mut status.clone()).is_none(), "without rollbackAfter");
        status.rollout_started = Some(ago(121));
        let note = rollback(&failing, &mut status).unwrap();
        assert!(note.contains("restoring savepoint upgrade-2-1"), "{note}");
        assert_eq!(status.rolled_back, Some(build::deployed_hash(&failing)));
        assert_eq!(status.deployed, Some(build::deployed_hash(&stable)));
        assert!(
            status.state_generation.unwrap() > 1_700_000_000_000,
            "a new state folder: nothing of the failed spec is restored"
        );
        assert_eq!(status.phase.as_deref(), Some("RollingBack"));
        // While the spec is the one rolled back, the stable one is deployed; never twice.
        assert_eq!(effective(&failing, &status).spec, stable.spec);
        assert!(rollback(&failing, &mut status.clone()).is_none());
        // A new spec is deployed as it is.
        let next = job("10m", Some("2m"));
        assert_eq!(effective(&next, &status).spec, next.spec);
    }

    #[test]
    fn without_a_savepoint_a_rollback_returns_to_the_stable_state_folder() {
        let stable = job("1m", Some("2m"));
        let mut failing = job("5m", Some("2m"));
        failing.spec.upgrade_mode = UpgradeMode::Stateless;
        let mut status = StreamJobStatus {
            last_stable_spec: serde_json::to_string(&stable.spec).ok(),
            rollout_started: Some(ago(300)),
            state_generation: Some(20),
            stable_state_generation: Some(10),
            ..Default::default()
        };
        let note = rollback(&failing, &mut status).unwrap();
        assert!(note.contains("restore its last checkpoints"), "{note}");
        assert_eq!(status.state_generation, Some(10));
        assert!(
            new_state_generation(&StreamJobStatus { state_generation: Some(i64::MAX - 1), ..Default::default() })
                == i64::MAX
        );
    }

    #[test]
    fn the_stable_spec_itself_is_never_rolled_back() {
        let stable = job("1m", Some("1s"));
        let mut status = StreamJobStatus {
            last_stable_spec: serde_json::to_string(&stable.spec).ok(),
            rollout_started: Some(ago(600)),
            ..Default::default()
        };
        assert!(rollback(&stable, &mut status).is_none());
        assert!(all_running(Some("RolledBack")) && !all_running(Some("Deploying")));
    }
}
