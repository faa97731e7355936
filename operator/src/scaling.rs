//! The built-in autoscaler in the reconciler. Every period (`--autoscaler-period`) a running job
//! with `spec.autoscaler.enabled` is observed (its input partitions' end and committed offsets
//! from Kafka, its workers' processed rate and capacity from their metrics) and the [`Scaler`]
//! decides. A rescale is recorded in `status.autoscaler`, never in the spec (which a GitOps tool
//! may own); [`autoscaled`] makes it the parallelism the job is deployed with, so it rolls out
//! through the upgrade path, without a savepoint ([`is_rescale_only`]: the workers restore their
//! last incremental checkpoints). Decisions go to the status (the last ten, with their figures),
//! to Events and to the operator's metrics. A changed `spec.parallelism` (an edit, `kubectl scale`) is a new
//! starting point the autoscaler goes on from.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::events::EventType;
use kube::ResourceExt;
use weir_crds::{AutoscalerSpec, AutoscalerStatus, Condition, ScalingDecision, StreamJob, StreamJobStatus};

use crate::autoscaler::{Decision, Observation, Offsets, Scaler, Settings, WorkerFigures};
use crate::reconcile::{self, Ctx};
use crate::workers::{total, Series};
use crate::{build, kafka};

/// Defaults of the `spec.autoscaler` fields.
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.7;
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(300);
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(600);

/// The autoscaler's memory of every job it observes (by uid): what it saw recently and what
/// it decided. Lost when the operator restarts: the next leader observes afresh (a few
/// periods) before it decides.
pub struct Scaling {
    period: Duration,
    started: Instant,
    jobs: Mutex<HashMap<String, JobScaling>>,
}

#[derive(Default)]
struct JobScaling {
    scaler: Scaler,
    /// The last offsets read, against which the next ones give the input rates.
    offsets: Option<Offsets>,
}

/// What one period found, taken out of the lock.
struct Found {
    decision: Decision,
    input: f64,
    lag: i64,
    capacity: f64,
    /// An ineffective scale-up still holds the job (see [`Scaler::limited`]).
    limited: bool,
}

impl Scaling {
    pub fn new(period: Duration) -> Self {
        Scaling { period: period.max(Duration::from_secs(1)), started: Instant::now(), jobs: Mutex::default() }
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobScaling>> {
        // A panic elsewhere cannot leave the map inconsistent (each entry is replaced whole).
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what was observed of a job (deleted, its autoscaler off, its spec rescaled).
    pub fn forget(&self, job: &StreamJob) {
        self.jobs().remove(&job.uid().unwrap_or_default());
    }

    /// `status.autoscaler` as it stands for `job`'s spec: none when the autoscaler is off; a
    /// fresh start at `spec.parallelism` when that changed since the autoscaler last chose
    /// (forgetting what was observed at the old one).
    pub fn track(&self, job: &StreamJob, status: &mut StreamJobStatus) {
        if !enabled(job) {
            if status.autoscaler.take().is_some() {
                self.forget(job);
            }
            return;
        }
        let spec = job.spec.parallelism;
        if let Some(a) = &status.autoscaler {
            if a.spec_parallelism == spec {
                return;
            }
            self.forget(job);
        }
        // Decisions and rescales stay listed across a new start.
        let a = status.autoscaler.get_or_insert_with(AutoscalerStatus::default);
        a.parallelism = build::parallelism(job);
        a.spec_parallelism = spec;
    }

    /// One period for a running job (every worker of `job`, as [`autoscaled`], ready, their
    /// metrics just `scraped`): observe it, decide, and record a rescale or an ineffective one in
    /// `status` with an Event. When to come back: at once after a rescale (which rolls out
    /// next), else at the next period.
    pub async fn run(
        &self,
        ctx: &Ctx,
        job: &StreamJob,
        status: &mut StreamJobStatus,
        scraped: &anyhow::Result<Vec<Vec<Series>>>,
    ) -> Duration {
        let Some(spec) = job.spec.autoscaler.as_ref().filter(|a| a.enabled) else { return self.period };
        let uid = job.uid().unwrap_or_default();
        let last = self.jobs().get(&uid).and_then(|j| Some(j.offsets.as_ref()?.at));
        if let Some(last) = last {
            let wait = self.period.as_secs_f64() - (self.now() - last);
            if wait > 0.2 {
                return Duration::from_secs_f64(wait);
            }
        }
        let inputs = match inputs(ctx, job).await {
            Ok(inputs) if !inputs.is_empty() => inputs,
            Ok(_) => return self.period,
            Err(e) => {
                tracing::warn!(job = %job.name_any(), "autoscaler: {e}");
                return self.period;
            }
        };
        let group = weir_crds::consumer_group(&job.spec.pipeline, &job.name_any(), job.namespace().as_deref());
        let read = tokio::task::spawn_blocking(move || read_offsets(&inputs, &group)).await;
        let (partitions, counts) = match read {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(job = %job.name_any(), "autoscaler: reading the input offsets: {e:#}");
                return self.period;
            }
            Err(e) => {
                tracing::warn!(job = %job.name_any(), "autoscaler: {e}");
                return self.period;
            }
        };
        let offsets = Offsets { at: self.now(), partitions };
        let figures = match scraped {
            Ok(workers) => workers.iter().map(|rows| worker_figures(rows)).collect::<Vec<_>>(),
            Err(e) => {
                tracing::debug!(job = %job.name_any(), "autoscaler: {e:#}");
                return self.period;
            }
        };
        let settings = settings(spec, counts.into_iter().max().unwrap_or(1));
        let parallelism = build::parallelism(job).max(1) as u32;
        let found = {
            let mut jobs = self.jobs();
            let js = jobs.entry(uid).or_default();
            let observation =
                js.offsets.as_ref().and_then(|prev| Observation::from_offsets(prev, &offsets, &figures, parallelism));
            js.offsets = Some(offsets);
            observation.map(|o| {
                js.scaler.observe(o, &settings);
                let decision = js.scaler.decide(&settings);
                let latest = js.scaler.latest();
                Found {
                    decision,
                    input: latest.map_or(0.0, Observation::input_rate),
                    lag: latest.map_or(0, Observation::lag),
                    capacity: js.scaler.worker_capacity().unwrap_or(0.0),
                    limited: js.scaler.limited(),
                }
            })
        };
        let Some(Found { decision, input, lag, capacity, limited: held }) = found else { return self.period };
        let was_limited = status.conditions.iter().any(|c| c.type_ == "ScalingLimited" && c.status == "True");
        if was_limited && !held {
            let why = "the input rate changed since the ineffective scale-up; the autoscaler decides afresh";
            status.conditions = reconcile::with_condition(&status.conditions, limited(false, "InputChanged", why));
        }
        let from = parallelism as i32;
        let record = |kind: &str, to: i32, reason: &str| ScalingDecision {
            time: reconcile::now(),
            kind: kind.into(),
            from,
            to,
            input_rate: input.round(),
            lag,
            worker_capacity: capacity.round(),
            reason: reason.into(),
            rescale_seconds: None,
        };
        let (ns, name) = (job.namespace().unwrap_or_default(), job.name_any());
        match decision {
            Decision::Keep { reason } => {
                tracing::debug!(job = %name, "autoscaler keeps {from} workers: {reason}");
                self.period
            }
            Decision::Scale { to, reason } => {
                let to = to as i32;
                let kind = if to > from { "ScaleUp" } else { "ScaleDown" };
                let a = status.autoscaler.get_or_insert_with(AutoscalerStatus::default);
                a.parallelism = to;
                a.rescales += 1;
                a.record(record(kind, to, &reason));
                let note = format!("scaling from {from} to {to} workers: {reason}");
                tracing::info!(job = %name, "{note}");
                reconcile::publish(ctx, job, EventType::Normal, kind, note).await;
                ctx.metrics.rescales.with_label_values(&[&ns, &name, kind]).inc();
                if to > from {
                    status.conditions =
                        reconcile::with_condition(&status.conditions, limited(false, "ScaledUp", &reason));
                }
                Duration::from_secs(1)
            }
            Decision::Ineffective { reason } => {
                if let Some(a) = status.autoscaler.as_mut() {
                    a.record(record("Ineffective", from, &reason));
                }
                reconcile::publish(ctx, job, EventType::Warning, "ScalingIneffective", reason.clone()).await;
                status.conditions =
                    reconcile::with_condition(&status.conditions, limited(true, "IneffectiveScaleUp", &reason));
                self.period
            }
        }
    }
}

/// The `ScalingLimited` condition: true while a scale-up that did not raise throughput holds
/// the job (until the input rate changes or it scales up again).
fn limited(on: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: "ScalingLimited".into(),
        status: if on { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: None,
    }
}

pub fn enabled(job: &StreamJob) -> bool {
    job.spec.autoscaler.as_ref().is_some_and(|a| a.enabled)
}

/// The job as it is deployed: with the autoscaler on, at the parallelism it chose.
pub fn autoscaled(job: &StreamJob, status: &StreamJobStatus) -> StreamJob {
    let mut out = job.clone();
    if let Some(a) = status.autoscaler.as_ref().filter(|_| enabled(job)) {
        out.spec.parallelism = Some(a.parallelism);
    }
    out
}

/// Whether `d` is a rescale that has not completed yet.
fn pending(d: &ScalingDecision) -> bool {
    d.kind != "Ineffective" && d.rescale_seconds.is_none()
}

/// Whether rolling out `job` (as [`autoscaled`]) only changes the worker count to what the
/// autoscaler's pending decision chose: the job at the decision's `from` is what is deployed.
pub fn is_rescale_only(job: &StreamJob, status: &StreamJobStatus) -> bool {
    let Some(d) = status.autoscaler.as_ref().and_then(|a| a.decisions.last()) else { return false };
    if !pending(d) || job.spec.parallelism != Some(d.to) {
        return false;
    }
    let mut before = job.clone();
    before.spec.parallelism = Some(d.from);
    status.deployed.as_deref() == Some(build::deployed_hash(&before).as_str())
}

/// Once every worker of a rescale is ready: how long it took, into the decision and the
/// metrics.
pub fn rescale_done(ctx: &Ctx, status: &mut StreamJobStatus, ready: i32) {
    let Some(d) = status.autoscaler.as_mut().and_then(|a| a.decisions.last_mut()) else { return };
    if !pending(d) || d.to != ready {
        return;
    }
    let Ok(then) = d.time.parse::<k8s_openapi::jiff::Timestamp>() else { return };
    let secs = (k8s_openapi::jiff::Timestamp::now() - then).total(k8s_openapi::jiff::Unit::Second).unwrap_or(0.0);
    d.rescale_seconds = Some((secs * 10.0).round() / 10.0);
    ctx.metrics.rescale_duration.observe(secs);
}

/// The autoscaler's settings for a job whose inputs have `partitions` partitions (the most of
/// any input: worker `w` owns partitions `p % parallelism == w` of each).
pub fn settings(spec: &AutoscalerSpec, partitions: u32) -> Settings {
    let secs = |d: &Option<weir_crds::Duration>, default: Duration| {
        d.as_ref().and_then(|d| d.millis().ok()).map_or(default.as_secs_f64(), |ms| ms as f64 / 1000.0)
    };
    let partitions = partitions.max(1);
    Settings {
        min: spec.min_parallelism.map_or(1, |m| m.max(1) as u32),
        max: spec.max_parallelism.map_or(partitions, |m| m.max(1) as u32),
        partitions,
        target_utilization: spec.target_utilization.unwrap_or(DEFAULT_TARGET_UTILIZATION),
        catch_up_secs: secs(&spec.catch_up_duration, DEFAULT_CATCH_UP),
        scale_down_delay_secs: secs(&spec.scale_down_delay, DEFAULT_SCALE_DOWN_DELAY),
    }
}

/// The job's partitioned Kafka inputs: brokers and topic of each source (tables are read whole
/// by every worker and do not count).
async fn inputs(ctx: &Ctx, job: &StreamJob) -> Result<Vec<Input>, String> {
    let ns = job.namespace().unwrap_or_default();
    let mut inputs = Vec::new();
    for k in job.spec.pipeline.sources.values().filter_map(|s| s.kafka.as_ref()) {
        let properties = kafka::resolve(&ctx.client, &ns, job, &k.properties).await?;
        inputs.push((k.brokers.clone(), k.topic.clone(), properties));
    }
    Ok(inputs)
}

/// A Kafka input: brokers, topic, resolved client properties.
type Input = (String, String, std::collections::BTreeMap<String, String>);

/// Every input partition's offsets (the sources in order) and each source's partition count.
fn read_offsets(inputs: &[Input], group: &str) -> anyhow::Result<(Vec<kafka::PartitionOffsets>, Vec<u32>)> {
    let mut partitions = Vec::new();
    let mut counts = Vec::new();
    for (brokers, topic, properties) in inputs {
        let found = kafka::topic_offsets(&kafka::offsets_client(brokers, group, properties)?, topic)?;
        counts.push(found.len() as u32);
        partitions.extend(found);
    }
    Ok((partitions, counts))
}

/// A worker's processed rate and capacity from its metrics.
fn worker_figures(rows: &[Series]) -> WorkerFigures {
    WorkerFigures {
        input_rate: total(rows, "weir_input_records_per_second"),
        capacity: total(rows, "weir_capacity_records_per_second"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(yaml_autoscaler: &str, parallelism: Option<i32>) -> StreamJob {
        let mut j: StreamJob = serde_yaml::from_str(&format!(
            "apiVersion: weir.dev/v1alpha1\nkind: StreamJob\nmetadata: {{name: j, namespace: n, uid: u1}}\nspec:\n  \
             autoscaler: {yaml_autoscaler}\n  pipeline:\n    sources:\n      pay: {{kafka: {{brokers: b, topic: t}}}}\n    \
             sinks:\n      out: {{from: pay, kafka: {{brokers: b, topic: o}}}}\n"
        ))
        .unwrap();
        j.spec.parallelism = parallelism;
        j
    }

    #[test]
    fn settings_take_the_defaults_and_the_partition_count() {
        let j = job("{enabled: true}", None);
        let s = settings(j.spec.autoscaler.as_ref().unwrap(), 12);
        assert_eq!((s.min, s.max, s.partitions), (1, 12, 12));
        assert_eq!((s.target_utilization, s.catch_up_secs, s.scale_down_delay_secs), (0.7, 300.0, 600.0));
        let j = job("{enabled: true, minParallelism: 2, maxParallelism: 6, targetUtilization: 0.5, catchUpDuration: 30s, scaleDownDelay: 2m}", None);
        let s = settings(j.spec.autoscaler.as_ref().unwrap(), 12);
        assert_eq!(
            (s.min, s.max, s.target_utilization, s.catch_up_secs, s.scale_down_delay_secs),
            (2, 6, 0.5, 30.0, 120.0)
        );
    }

    #[test]
    fn the_chosen_parallelism_lives_in_status_and_a_spec_change_restarts_from_it() {
        let scaling = Scaling::new(Duration::from_secs(15));
        let j = job("{enabled: true}", Some(2));
        let mut status = StreamJobStatus::default();
        scaling.track(&j, &mut status);
        assert_eq!(status.autoscaler.as_ref().map(|a| (a.parallelism, a.spec_parallelism)), Some((2, Some(2))));
        status.autoscaler.as_mut().unwrap().parallelism = 5;
        assert_eq!(autoscaled(&j, &status).spec.parallelism, Some(5), "deployed at the autoscaler's choice");
        assert_eq!(j.spec.parallelism, Some(2), "the spec is untouched");
        scaling.track(&j, &mut status);
        assert_eq!(status.autoscaler.as_ref().unwrap().parallelism, 5, "same spec: the choice stays");
        // `kubectl scale sj/j --replicas=3`: a new starting point.
        let scaled = job("{enabled: true}", Some(3));
        scaling.track(&scaled, &mut status);
        assert_eq!(status.autoscaler.as_ref().map(|a| (a.parallelism, a.spec_parallelism)), Some((3, Some(3))));
        assert_eq!(autoscaled(&scaled, &status).spec.parallelism, Some(3));
        // A pending rescale from 2 to 5 of the deployed job is only a rescale; with another
        // change too, or once done, it is not.
        let deployed = autoscaled(&j, &StreamJobStatus { autoscaler: None, ..status.clone() });
        let mut pending = StreamJobStatus { deployed: Some(build::deployed_hash(&deployed)), ..status.clone() };
        let a = pending.autoscaler.as_mut().unwrap();
        (a.parallelism, a.spec_parallelism) = (5, Some(2));
        a.record(ScalingDecision { kind: "ScaleUp".into(), from: 2, to: 5, ..ScalingDecision::default() });
        let target = autoscaled(&j, &pending);
        assert!(is_rescale_only(&target, &pending));
        let mut changed = target.clone();
        changed.spec.image = Some("other:1".into());
        assert!(!is_rescale_only(&changed, &pending), "a changed image needs the savepoint");
        pending.autoscaler.as_mut().unwrap().decisions[0].rescale_seconds = Some(3.0);
        assert!(!is_rescale_only(&target, &pending), "the rescale is done");
        // Off: the spec's parallelism, and no autoscaler status.
        let off = job("{enabled: false}", Some(3));
        scaling.track(&off, &mut status);
        assert_eq!(status.autoscaler, None);
        assert_eq!(autoscaled(&off, &status).spec.parallelism, Some(3));
    }
}
