//! Prometheus metrics of a worker. Labels are bounded: `streamjob` (the job's name; not `job`,
//! which Prometheus sets to the scrape job's and would rename ours to `exported_job`),
//! source/sink/operator names from the manifest, and partition numbers.

use prometheus::{
    CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub late_records: IntCounterVec,
    pub rejected_rows: IntCounterVec,
    pub table_rows: IntCounterVec,
    pub watermark: IntGaugeVec,
    pub watermark_lag: IntGaugeVec,
    pub source_position: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub state_size: IntGaugeVec,
    pub cached_keys: IntGaugeVec,
    pub busy_ratio: Gauge,
    /// Records read per second over the last second.
    pub input_rate: Gauge,
    /// Records per second the worker would process if fully busy (rate / busy ratio).
    pub capacity: Gauge,
    /// Per operator (`operator`, `kind`: source, step, sink): share of the last second spent
    /// in its own work, and waiting for sinks it feeds (see `profile`).
    pub operator_busy: GaugeVec,
    pub operator_backpressure: GaugeVec,
    pub operator_busy_seconds: CounterVec,
    pub operator_backpressured_seconds: CounterVec,
    pub epoch_duration: Histogram,
    /// Epochs (results made visible), by phase: `flush` (the sinks' messages acknowledged),
    /// `commit` (the transactions with the input offsets committed).
    pub epoch_phase: HistogramVec,
    /// Exactly-once epoch transactions by partition and outcome (`committed`, `failed`: the
    /// worker then stops, and the next owner of the transactional id aborts it).
    pub transactions: IntCounterVec,
    /// Checkpoints by outcome: completed, failed, skipped (the previous one still uploading).
    pub checkpoints: IntCounterVec,
    pub checkpoint_bytes: IntCounterVec,
    pub checkpoint_duration: Histogram,
    pub last_checkpoint: IntGaugeVec,
    /// When the last checkpoint completed (Unix seconds): its age is `time() - this`.
    pub last_checkpoint_time: IntGaugeVec,
    /// Checkpoints that failed since the last one completed (0 when the last one completed):
    /// the operator's `Checkpointing` condition.
    pub checkpoints_failing: IntGauge,
    /// Files of file-writing sinks (Parquet) by outcome: `staged` (written, waiting for the
    /// epoch's commit), `published` (visible to readers), `discarded` (an epoch that never
    /// committed, removed at recovery).
    pub sink_files: IntCounterVec,
    /// Bytes written by sinks that count them (Parquet files).
    pub sink_bytes: IntCounterVec,
    /// Calls to a sink's system retried after a failure (the task waits meanwhile).
    pub sink_retries: IntCounterVec,
    /// Failed calls to a sink's system (each retried one, and the last one when it gives up).
    pub sink_errors: IntCounterVec,
    /// Time each sink takes to flush at an epoch's end (its writes made durable or staged).
    pub sink_flush: HistogramVec,
}

impl Metrics {
    pub fn new(job: &str) -> Metrics {
        let registry = Registry::new_custom(None, Some([("streamjob".to_string(), job.to_string())].into()))
            .expect("valid labels");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let busy = Gauge::with_opts(Opts::new(
            "weir_busy_ratio",
            "Share of wall time spent processing (not waiting for input)",
        ))
        .expect("valid metric");
        registry.register(Box::new(busy.clone())).expect("unique metric");
        let plain_gauge = |name: &str, help: &str| {
            let g = Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let input_rate = plain_gauge("weir_input_records_per_second", "Records read per second over the last second");
        let capacity = plain_gauge(
            "weir_capacity_records_per_second",
            "Records per second the worker would process if fully busy (input rate / busy ratio)",
        );
        let float_gauge = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["operator", "kind"]).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let float_counter = |name: &str, help: &str| {
            let c = CounterVec::new(Opts::new(name, help), &["operator", "kind"]).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let epoch = Histogram::with_opts(
            HistogramOpts::new(
                "weir_epoch_commit_duration_seconds",
                "Time to flush sinks and commit state and offsets",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(epoch.clone())).expect("unique metric");
        let epoch_phase = HistogramVec::new(
            HistogramOpts::new(
                "weir_epoch_seconds",
                "Time of each epoch's phase: flush of the sinks, transaction commit",
            )
            .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0]),
            &["phase"],
        )
        .expect("valid metric");
        registry.register(Box::new(epoch_phase.clone())).expect("unique metric");
        let sink_flush = HistogramVec::new(
            HistogramOpts::new("weir_sink_flush_seconds", "Time each sink takes to flush at an epoch's end")
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]),
            &["sink"],
        )
        .expect("valid metric");
        registry.register(Box::new(sink_flush.clone())).expect("unique metric");
        let checkpoint_duration = Histogram::with_opts(
            HistogramOpts::new(
                "weir_checkpoint_duration_seconds",
                "Time from a checkpoint's local snapshot to its manifest stored",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(checkpoint_duration.clone())).expect("unique metric");
        let checkpoints_failing = IntGauge::with_opts(Opts::new(
            "weir_checkpoint_consecutive_failures",
            "Checkpoints that failed since the last one completed",
        ))
        .expect("valid metric");
        registry.register(Box::new(checkpoints_failing.clone())).expect("unique metric");
        Metrics {
            checkpoints_failing,
            checkpoints: counter("weir_checkpoints_total", "Checkpoints by outcome", &["outcome"]),
            transactions: counter(
                "weir_transactions_total",
                "Exactly-once epoch transactions by outcome",
                &["partition", "outcome"],
            ),
            checkpoint_bytes: counter(
                "weir_checkpoint_uploaded_bytes_total",
                "Bytes uploaded by checkpoints",
                &["partition"],
            ),
            checkpoint_duration,
            last_checkpoint: gauge("weir_last_checkpoint_id", "Id of the last completed checkpoint", &["partition"]),
            last_checkpoint_time: gauge(
                "weir_last_checkpoint_timestamp_seconds",
                "When the last checkpoint completed (Unix time)",
                &["partition"],
            ),
            records_in: counter("weir_records_in_total", "Records read", &["source", "partition"]),
            records_out: counter("weir_records_out_total", "Records written", &["sink"]),
            sink_files: counter("weir_sink_files_total", "Files written by sinks, by outcome", &["sink", "outcome"]),
            sink_bytes: counter("weir_sink_bytes_total", "Bytes written by sinks", &["sink"]),
            sink_retries: counter("weir_sink_retries_total", "Sink calls retried after a failure", &["sink"]),
            sink_errors: counter("weir_sink_errors_total", "Failed sink calls", &["sink"]),
            sink_flush,
            dead_letters: counter("weir_dead_letters_total", "Records that failed to decode", &["source"]),
            late_records: counter(
                "weir_late_records_total",
                "Late events: too late for every window, or behind the watermark of a join or pattern input",
                &["operator"],
            ),
            rejected_rows: counter(
                "weir_rejected_rows_total",
                "Rows an operator turned away: an enrichment's rows whose key its table lacks (dropped or dead letter)",
                &["operator", "outcome"],
            ),
            table_rows: counter(
                "weir_table_rows_total",
                "Side-input table records read (applied or, failing to decode, skipped)",
                &["table", "outcome"],
            ),
            watermark: gauge("weir_watermark_ms", "Event-time watermark of a partition-task", &["partition"]),
            watermark_lag: gauge("weir_watermark_lag_ms", "Wall clock minus watermark", &["partition"]),
            source_position: gauge("weir_source_position", "Next position to read", &["source", "partition"]),
            consumer_lag: gauge("weir_consumer_lag", "Records not yet read", &["source", "partition"]),
            state_size: gauge("weir_state_size_bytes", "Approximate state size", &["partition"]),
            cached_keys: gauge("weir_state_cached_keys", "Keys held decoded in memory", &["operator", "partition"]),
            busy_ratio: busy,
            operator_busy: float_gauge(
                "weir_operator_busy_ratio",
                "Share of the last second an operator spent in its own work",
            ),
            operator_backpressure: float_gauge(
                "weir_operator_backpressure_ratio",
                "Share of the last second an operator waited for the sinks it feeds",
            ),
            operator_busy_seconds: float_counter(
                "weir_operator_busy_seconds_total",
                "Time an operator spent in its own work",
            ),
            operator_backpressured_seconds: float_counter(
                "weir_operator_backpressured_seconds_total",
                "Time an operator waited for the sinks it feeds",
            ),
            input_rate,
            capacity,
            epoch_duration: epoch,
            epoch_phase,
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut buf).expect("text encoding");
        buf
    }
}
