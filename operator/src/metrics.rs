//! The operator's Prometheus metrics, served at `/metrics` beside the REST API.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

/// `metric`, registered in `registry`.
fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

/// A gauge by namespace and name of a StreamJob, registered.
fn job_gauge(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), &["namespace", "name"]).expect("valid metric"))
}

/// Every phase a StreamJob can be in.
pub const PHASES: [&str; 8] =
    ["Deploying", "Running", "Upgrading", "Suspending", "Suspended", "RollingBack", "RolledBack", "Failed"];

pub struct Metrics {
    registry: Registry,
    /// Reconciles by outcome (`ok`, `invalid`, `error`).
    pub reconciles: IntCounterVec,
    pub duration: Histogram,
    /// StreamJobs by namespace, name and phase (1 for the current phase).
    pub phase: IntGaugeVec,
    /// Workers each job should run (its spec's, or its autoscaler's choice) and has ready.
    pub desired_parallelism: IntGaugeVec,
    pub ready_parallelism: IntGaugeVec,
    /// The autoscaler's rescales by job and direction (`ScaleUp`, `ScaleDown`).
    pub rescales: IntCounterVec,
    /// Time from an autoscaler's decision until every worker at the new parallelism is ready.
    pub rescale_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = registered(
            &registry,
            IntCounterVec::new(Opts::new("weir_operator_reconciles_total", "Reconciles by outcome"), &["outcome"])
                .expect("valid metric"),
        );
        let duration = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new("weir_operator_reconcile_duration_seconds", "Time of one reconcile")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            )
            .expect("valid metric"),
        );
        let phase = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new("weir_operator_job_phase", "1 for the current phase of each StreamJob"),
                &["namespace", "name", "phase"],
            )
            .expect("valid metric"),
        );
        let desired_parallelism = job_gauge(
            &registry,
            "weir_operator_desired_parallelism",
            "Workers each StreamJob should run (spec, or the autoscaler's choice)",
        );
        let ready_parallelism =
            job_gauge(&registry, "weir_operator_ready_parallelism", "Ready workers of each StreamJob");
        let rescales = registered(
            &registry,
            IntCounterVec::new(
                Opts::new("weir_operator_autoscaler_rescales_total", "Rescales the autoscaler made"),
                &["namespace", "name", "direction"],
            )
            .expect("valid metric"),
        );
        let rescale_duration = registered(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "weir_operator_rescale_duration_seconds",
                    "Time from an autoscaler decision until every worker at the new parallelism is ready",
                )
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0]),
            )
            .expect("valid metric"),
        );
        Metrics {
            registry,
            reconciles,
            duration,
            phase,
            desired_parallelism,
            ready_parallelism,
            rescales,
            rescale_duration,
        }
    }

    /// Records the phase of a job (clearing its other phases).
    pub fn set_phase(&self, namespace: &str, name: &str, phase: &str) {
        for p in PHASES {
            self.phase.with_label_values(&[namespace, name, p]).set(i64::from(p == phase));
        }
    }

    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut buf).expect("text encoding");
        buf
    }
}
