//! A partition-task: one partition of every source, its own state, watermark and operators.
//! It decodes records, assigns event times and per-row watermarks, pushes batches through the
//! steps, fires windows as its watermark advances, and commits its state with its input
//! positions at every epoch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, BinaryArray, Int64Array};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};

use crate::batch::Batch;
use crate::metrics::Metrics;
use crate::operators::join::JoinOp;
use crate::operators::window::WindowKind;
use crate::operators::{OpCtx, OpError, Operator, Rejected, SessionChanges};
use crate::plan::{state_prefix, Input, JobPlan, Target};
use crate::profile::{self, Op, Times};
use crate::sink::kafka::KafkaProducer;
use crate::sink::repartition::Marker;
use crate::sink::{dead_letter, Sink, SinkError};
use crate::source::Records;
use crate::state::{Ops, StateError, StateStore, StateTx};
use crate::table::TableStore;

/// What can stop a task.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("partition {partition}: {source}")]
    State { partition: u32, source: StateError },
    #[error("partition {partition}: the state does not fit this pipeline: {message}")]
    Incompatible { partition: u32, message: String },
    /// The source's records cannot be judged (their schemas' registry cannot be reached).
    #[error("source {input}: {message}")]
    Decode { input: String, message: String },
}

/// The sinks a task writes to: shared with the worker's other tasks, except that with
/// exactly-once its Kafka sinks write through its own transactional producer.
pub struct Sinks {
    pub sinks: Vec<Box<dyn Sink>>,
    pub names: Vec<String>,
    pub metrics: Arc<Metrics>,
    /// The task's transactional producer (exactly-once).
    pub txn: Option<Arc<KafkaProducer>>,
    /// Kafka output is dropped while the task replays input whose results are committed.
    pub muted: bool,
    /// Each sink's time writing and waiting for its system, since the last report.
    pub times: Times,
    /// The epoch in progress (exactly-once: one more than the last committed, whose number the
    /// input offsets' metadata carries).
    pub epoch: u64,
}

impl Sinks {
    pub fn new(
        sinks: Vec<Box<dyn Sink>>,
        names: Vec<String>,
        metrics: Arc<Metrics>,
        txn: Option<Arc<KafkaProducer>>,
    ) -> Sinks {
        let times = Times::new(sinks.len());
        Sinks { sinks, names, metrics, txn, muted: false, times, epoch: 1 }
    }

    fn skip(&self, i: usize) -> bool {
        self.muted && (self.sinks[i].is_kafka() || self.sinks[i].commits_with_epoch())
    }

    /// Whether any sink staged output for the epoch in progress.
    pub fn has_staged(&self) -> bool {
        self.sinks.iter().any(|s| s.has_staged())
    }

    /// At start, given the last epoch committed for this task: finishes what an earlier run
    /// staged, and numbers the next epoch.
    pub fn recover(&mut self, committed_epoch: Option<u64>) -> Result<(), SinkError> {
        for s in self.sinks.iter_mut() {
            s.recover(committed_epoch)?;
        }
        self.epoch = committed_epoch.map_or(1, |e| e + 1);
        Ok(())
    }

    /// The epoch in progress has committed: sinks publish what they staged for it.
    pub fn committed(&mut self) -> Result<(), SinkError> {
        for s in self.sinks.iter_mut() {
            s.committed()?;
        }
        self.epoch += 1;
        Ok(())
    }

    /// Runs `f` on sink `i`, its time split into work and waiting for its system.
    fn timed<T>(&mut self, i: usize, f: impl FnOnce(&mut dyn Sink) -> T) -> T {
        let started = Instant::now();
        let out = f(self.sinks[i].as_mut());
        let waited = self.sinks[i].take_waited();
        self.times.busy[i] += started.elapsed().saturating_sub(waited);
        self.times.blocked[i] += waited;
        out
    }

    fn write_rows(&mut self, i: usize, batch: &Batch, keys: &[usize]) -> Result<(), SinkError> {
        if self.skip(i) {
            return Ok(());
        }
        self.timed(i, |s| s.write_batch(batch, keys))?;
        self.metrics.records_out.with_label_values(&[&self.names[i]]).inc_by(batch.num_rows() as u64);
        Ok(())
    }

    pub fn write_records(&mut self, i: usize, records: &[Vec<u8>]) -> Result<(), SinkError> {
        if self.skip(i) {
            return Ok(());
        }
        self.timed(i, |s| s.write_records(records))?;
        self.metrics.records_out.with_label_values(&[&self.names[i]]).inc_by(records.len() as u64);
        Ok(())
    }

    /// Passes the watermark of the rows written to sink `i` (a repartition topic's markers).
    pub fn write_watermark(&mut self, i: usize, watermark: Option<i64>) -> Result<(), SinkError> {
        if self.skip(i) {
            return Ok(());
        }
        self.timed(i, |s| s.watermark(watermark))
    }

    /// Writes the open sessions that changed to sink `i` (`sessionState`).
    pub fn write_sessions(
        &mut self,
        i: usize,
        changes: &SessionChanges,
        keys: &[usize],
        expiry_ms: i64,
    ) -> Result<(), SinkError> {
        self.timed(i, |s| s.write_sessions(&changes.rows.rows, keys, &changes.closed, expiry_ms))?;
        self.metrics.records_out.with_label_values(&[&self.names[i]]).inc_by(changes.closed.len() as u64);
        Ok(())
    }

    /// Flushes every sink; the time is waiting for their systems.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        for i in 0..self.sinks.len() {
            let started = Instant::now();
            let flushed = self.sinks[i].flush();
            let took = started.elapsed();
            self.times.blocked[i] += took;
            self.metrics.sink_flush.with_label_values(&[&self.names[i]]).observe(took.as_secs_f64());
            if flushed.is_err() {
                self.metrics.sink_errors.with_label_values(&[&self.names[i]]).inc();
            }
            flushed?;
        }
        Ok(())
    }

    /// Charges the time of the task's transaction commit to its Kafka sinks, in equal parts
    /// (they wait for it together).
    pub fn waited_for_commit(&mut self, took: Duration) {
        let kafka: Vec<usize> = (0..self.sinks.len()).filter(|&i| self.sinks[i].is_kafka()).collect();
        for &i in &kafka {
            self.times.blocked[i] += took / kafka.len() as u32;
        }
    }
}

struct SourceState {
    max_ts: i64,
    /// Next position to read; `None` until a record was read or restored.
    next_position: Option<i64>,
    ended: bool,
    /// When a record of this partition was last read (idleness, `eventTime.idleTimeout`).
    last_read: Instant,
    /// A repartition topic: the latest watermark marker of each writing partition, and
    /// whether it is idle.
    writers_wm: BTreeMap<u32, (i64, bool)>,
    /// How many partitions write the repartition topic (its partition count).
    writers: u32,
    /// The watermark the markers give (never moves back).
    marker_wm: i64,
}

impl SourceState {
    /// Applies a marker from writing partition `from`: its watermark (`None`: idle).
    fn apply_marker(&mut self, m: Marker) {
        let entry = self.writers_wm.entry(m.from).or_insert((i64::MIN, false));
        match m.watermark {
            Some(wm) => *entry = (entry.0.max(wm), false),
            None => entry.1 = true,
        }
        // The least over the active writers once every writer has reported; unchanged while
        // every one is idle.
        if self.writers_wm.len() as u32 >= self.writers && self.writers > 0 {
            let active = self.writers_wm.values().filter(|(_, idle)| !idle).map(|(wm, _)| *wm).min();
            if let Some(wm) = active {
                self.marker_wm = self.marker_wm.max(wm);
            }
        }
    }

    fn writers_idle(&self) -> bool {
        !self.writers_wm.is_empty() && self.writers_wm.values().all(|(_, idle)| *idle)
    }
}

/// What a step's watermark is, for the steps after it and for repartition markers.
struct StepWatermarks {
    /// Each step's own watermark.
    own: Vec<i64>,
    /// The watermark each step passes on (a join holds it back by its bounds).
    passed: Vec<i64>,
    /// Whether every input of the step is idle.
    idle: Vec<bool>,
}

pub struct Task {
    pub partition: u32,
    plan: Arc<JobPlan>,
    state: StateTx,
    nodes: Vec<Vec<Box<dyn Operator>>>,
    sources: Vec<SourceState>,
    late: Vec<Vec<u8>>,
    metrics: Arc<Metrics>,
    partition_label: String,
    /// When late events without a lateOutput were last logged (bounded-rate warning).
    late_logged: Option<std::time::Instant>,
    /// Per source: input before this position was processed by an earlier run whose Kafka
    /// output is committed; it only rebuilds state (exactly-once recovery).
    replay_until: Vec<Option<i64>>,
    /// Time in each source's decoding and each step's operators since the last report.
    pub times: Times,
    /// Input read while another source still replays committed input (see `process`).
    held: Vec<(usize, Records)>,
}

const META: &[u8] = &[0, 0];

/// A source's metadata, by the source's name (so that adding or removing another source
/// keeps it).
fn meta_key(kind: &[u8], source: &str) -> Vec<u8> {
    let mut k = META.to_vec();
    k.extend_from_slice(kind);
    k.push(b':');
    k.extend_from_slice(source.as_bytes());
    k
}

/// The stateful steps whose state the store holds, with their state signatures (JSON).
const STATE_STEPS: &[u8] = &[0, 0, b'o', b'p', b's'];

/// Checks the state's stateful steps against the plan's, like Flink matching operator state by
/// uid: a step keeps its state when its name and state signature match; a step with a changed
/// signature is an error (its state cannot be carried over); a step no longer in the pipeline
/// is an error unless `allowNonRestoredState`, which drops its state. Then records the plan's
/// steps.
fn reconcile_state_steps(store: &dyn StateStore, plan: &JobPlan, partition: u32) -> Result<(), TaskError> {
    let err = |source| TaskError::State { partition, source };
    let want = plan.state_signatures();
    let stored: Option<BTreeMap<String, String>> =
        store.get(STATE_STEPS).map_err(err)?.and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(stored) = &stored {
        let mut problems = Vec::new();
        let mut dropped = Vec::new();
        for (name, sig) in stored {
            match want.get(name) {
                Some(w) if w == sig => {}
                Some(w) => problems.push(format!(
                    "step `{name}` holds state for `{sig}` but is now `{w}`; that state cannot be carried over: \
                     give the changed step a new name to start it empty (its old state then needs \
                     allowNonRestoredState: true)"
                )),
                None if plan.allow_non_restored_state => dropped.push(name.clone()),
                None => problems.push(format!(
                    "step `{name}` holds state but is no longer in the pipeline; set \
                     allowNonRestoredState: true to start without it (its state is dropped)"
                )),
            }
        }
        if !problems.is_empty() {
            return Err(TaskError::Incompatible { partition, message: problems.join("; ") });
        }
        for name in dropped {
            let removed = drop_prefix(store, &state_prefix(&name)).map_err(err)?;
            tracing::warn!(partition, step = %name, entries = removed, "dropped the state of a removed step (allowNonRestoredState)");
        }
    }
    if stored.as_ref() != Some(&want) {
        let mut ops = Ops::default();
        ops.insert(STATE_STEPS.to_vec(), Some(serde_json::to_vec(&want).expect("a map of strings serializes")));
        store.write(&ops).map_err(err)?;
    }
    Ok(())
}

/// Deletes every entry under `prefix`, in bounded batches; the count deleted.
fn drop_prefix(store: &dyn StateStore, prefix: &[u8]) -> Result<usize, StateError> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            break;
        }
    }
    let mut removed = 0;
    loop {
        let batch = store.scan(prefix, &end, 10_000)?;
        if batch.is_empty() {
            return Ok(removed);
        }
        removed += batch.len();
        let ops: Ops = batch.into_iter().map(|(k, _)| (k, None)).collect();
        store.write(&ops)?;
    }
}

/// Takes the watermark markers (records without a value whose key is a marker) out of `recs`:
/// each with the index, among the records left, of the record that followed it.
fn take_markers(recs: &mut Records) -> Vec<(usize, Marker)> {
    let found: Vec<(usize, Marker)> =
        recs.tombstones.iter().filter_map(|(i, key)| Some((*i as usize, Marker::parse(key)?))).collect();
    if found.is_empty() {
        return Vec::new();
    }
    let mut kept = Records::with_capacity(recs.len() - found.len(), recs.data.len());
    let mut markers = Vec::with_capacity(found.len());
    let mut next = found.iter().peekable();
    for i in 0..recs.len() {
        if let Some((_, m)) = next.next_if(|(at, _)| *at == i) {
            markers.push((kept.len(), *m));
            continue;
        }
        match recs.tombstones.binary_search_by_key(&(i as u32), |(at, _)| *at) {
            Ok(t) => kept.push_tombstone(&recs.tombstones[t].1, recs.positions[i], recs.timestamps[i]),
            Err(_) => kept.push(recs.payload(i), recs.positions[i], recs.timestamps[i]),
        }
    }
    *recs = kept;
    markers
}

fn read_i64(v: Option<Vec<u8>>) -> Option<i64> {
    Some(i64::from_be_bytes(v?.as_slice().try_into().ok()?))
}

impl Task {
    /// Opens the task over its state, restoring positions and watermarks.
    pub fn open(
        plan: Arc<JobPlan>,
        partition: u32,
        store: Box<dyn StateStore>,
        metrics: Arc<Metrics>,
        tables: &[Arc<TableStore>],
    ) -> Result<Task, TaskError> {
        reconcile_state_steps(store.as_ref(), &plan, partition)?;
        let state = StateTx::new(store);
        let err = |source| TaskError::State { partition, source };
        let mut sources = Vec::new();
        for src in &plan.sources {
            let writers_wm: BTreeMap<u32, (i64, bool)> = state
                .get(&meta_key(b"uwm", &src.name))
                .map_err(err)?
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            sources.push(SourceState {
                max_ts: read_i64(state.get(&meta_key(b"mts", &src.name)).map_err(err)?).unwrap_or(i64::MIN),
                next_position: read_i64(state.get(&meta_key(b"pos", &src.name)).map_err(err)?),
                ended: false,
                last_read: Instant::now(),
                writers_wm,
                writers: 0,
                marker_wm: read_i64(state.get(&meta_key(b"mwm", &src.name)).map_err(err)?).unwrap_or(i64::MIN),
            });
        }
        let nodes = (0..plan.nodes.len()).map(|i| plan.instantiate(i, tables)).collect();
        Ok(Task {
            partition,
            state,
            nodes,
            sources,
            late: Vec::new(),
            metrics,
            partition_label: partition.to_string(),
            late_logged: None,
            replay_until: vec![None; plan.sources.len()],
            times: Times::new(profile::operators(&plan).len()),
            held: Vec::new(),
            plan,
        })
    }

    /// The restored position of a source, to seek to.
    pub fn restored_position(&self, source: usize) -> Option<i64> {
        self.sources[source].next_position
    }

    /// The watermark of `source` in this partition.
    pub fn watermark(&self, source: usize) -> i64 {
        let s = &self.sources[source];
        if s.ended {
            i64::MAX
        } else if self.plan.sources[source].markers {
            s.marker_wm
        } else if s.max_ts == i64::MIN {
            i64::MIN
        } else {
            s.max_ts - self.plan.sources[source].max_out_of_orderness - 1
        }
    }

    /// Source `src` is a repartition topic that `writers` partitions write.
    pub fn set_writers(&mut self, src: usize, writers: u32) {
        self.sources[src].writers = writers;
    }

    /// Input of source `src` before `position` is replayed with Kafka output muted.
    pub fn replay_until(&mut self, src: usize, position: i64) {
        self.replay_until[src] = Some(position);
    }

    /// The next position to read of every source that has one.
    pub fn positions(&self) -> Vec<(usize, i64)> {
        self.sources.iter().enumerate().filter_map(|(i, s)| Some((i, s.next_position?))).collect()
    }

    /// Adds the time since `started` to `op`'s busy time.
    fn charge(&mut self, op: Op, started: Instant) {
        self.times.busy[profile::index(&self.plan, op)] += started.elapsed();
    }

    /// Processes records read from partition `self.partition` of source `src`.
    pub fn process(&mut self, src: usize, mut recs: Records, sinks: &mut Sinks) -> Result<(), TaskError> {
        if let Some(until) = self.replay_until[src] {
            // Cut exactly at `until`: what the replayed part fires is what the earlier run
            // committed, since results never depend on where batches are cut.
            let split = recs.positions.partition_point(|&p| p < until);
            let tail = recs.split_off(split);
            // `until` is one past the last record the earlier run processed, so reading that
            // record ends the replay (what follows it may be transaction markers only, which
            // a read_committed consumer never returns).
            let done = !tail.is_empty() || recs.positions.last().is_some_and(|&p| p + 1 >= until);
            if !recs.is_empty() {
                sinks.muted = true;
                let replayed = self.process_records(src, recs, sinks);
                sinks.muted = false;
                replayed?;
            }
            if !done {
                return Ok(());
            }
            self.replay_until[src] = None;
            tracing::info!(partition = self.partition, position = until, "replay of committed input done");
            recs = tail;
        }
        if self.replay_until.iter().any(Option::is_some) {
            // Another input still replays input whose results are committed: everything read
            // before the last commit is processed before anything read after it, as in the run
            // that committed it, so that a join emits the same pairs on the same side of the
            // commit whatever the order its inputs arrive in.
            self.held.push((src, recs));
            return Ok(());
        }
        for (s, held) in std::mem::take(&mut self.held) {
            self.process_records(s, held, sinks)?;
        }
        if recs.is_empty() {
            return Ok(());
        }
        self.process_records(src, recs, sinks)
    }

    fn process_records(&mut self, src: usize, mut recs: Records, sinks: &mut Sinks) -> Result<(), TaskError> {
        let mut started = Instant::now();
        let plan = self.plan.clone();
        let sp = &plan.sources[src];
        self.metrics.records_in.with_label_values(&[&sp.name, &self.partition_label]).inc_by(recs.len() as u64);
        if let Some(last) = recs.positions.last() {
            self.sources[src].next_position = Some(last + 1);
        }
        // A repartition topic's watermark markers, taken out (with the index of the record
        // each comes before).
        let markers = match sp.markers && !recs.tombstones.is_empty() {
            true => take_markers(&mut recs),
            false => Vec::new(),
        };
        let decoded = sp.decoder.decode(&recs).map_err(|e| TaskError::Decode { input: sp.name.clone(), message: e })?;
        let mut bad: Vec<(u32, String)> = decoded.errors;
        let mut kept: Vec<u32> = decoded.kept.unwrap_or_else(|| (0..recs.len() as u32).collect());
        let mut rows = decoded.rows;
        let event_times: Vec<Option<i64>> = match sp.event_time_col {
            Some(c) => {
                let col =
                    rows.column(c).as_any().downcast_ref::<Int64Array>().expect("timestamps decode to Int64").clone();
                (0..col.len()).map(|i| col.is_valid(i).then(|| col.value(i))).collect()
            }
            None => kept.iter().map(|&i| Some(recs.timestamps[i as usize])).collect(),
        };
        if event_times.iter().any(Option::is_none) {
            let field = sp.spec.event_time.as_ref().map_or("", |e| e.field.as_str());
            let mask: datafusion::arrow::array::BooleanArray = event_times.iter().map(|t| Some(t.is_some())).collect();
            for (j, t) in event_times.iter().enumerate() {
                if t.is_none() {
                    bad.push((kept[j], format!("the event time field `{field}` is missing or null")));
                }
            }
            rows = datafusion::arrow::compute::filter_record_batch(&rows, &mask)
                .map_err(|source| OpError::Arrow { operator: sp.name.clone(), source })?;
            kept = kept.iter().zip(&event_times).filter(|(_, t)| t.is_some()).map(|(k, _)| *k).collect();
        }
        if !bad.is_empty() {
            // Dead letters are the sink's time.
            self.charge(Op::Source(src), started);
            self.dead_letters(src, &recs, &mut bad, sinks)?;
            started = Instant::now();
        }
        let times: Vec<i64> = event_times.into_iter().flatten().collect();
        let mut wms = Vec::with_capacity(times.len());
        if sp.markers {
            // Each row is judged against the markers before it.
            let source = &mut self.sources[src];
            let mut pending = markers.into_iter().peekable();
            for &k in &kept {
                while let Some((_, m)) = pending.next_if(|(at, _)| *at <= k as usize) {
                    source.apply_marker(m);
                }
                wms.push(source.marker_wm);
            }
            pending.for_each(|(_, m)| source.apply_marker(m));
        } else {
            let ooo = sp.max_out_of_orderness;
            let mut max_ts = self.sources[src].max_ts;
            for &t in &times {
                wms.push(if max_ts == i64::MIN { i64::MIN } else { max_ts - ooo - 1 });
                max_ts = max_ts.max(t);
            }
            self.sources[src].max_ts = max_ts;
        }
        // Only JSON records can go on as read (to a JSON sink, a late output); others are
        // written from their rows.
        let raw = if !sp.decoder.is_json() {
            None
        } else if kept.len() == recs.len() {
            // The records' buffer becomes the raw column as it is, without a copy.
            let offsets: Vec<i32> = std::iter::once(0).chain(recs.ends.iter().map(|&e| e as i32)).collect();
            let data = std::mem::take(&mut recs.data);
            Some(BinaryArray::new(OffsetBuffer::new(ScalarBuffer::from(offsets)), Buffer::from_vec(data), None))
        } else {
            Some(BinaryArray::from_iter_values(kept.iter().map(|&i| recs.payload(i as usize))))
        };
        self.charge(Op::Source(src), started);
        if rows.num_rows() > 0 {
            let batch = Batch { rows, event_time: Int64Array::from(times), watermark: Int64Array::from(wms), raw };
            for t in sp.children.clone() {
                self.dispatch(t, batch.clone(), sinks)?;
            }
        }
        self.advance(Some(src), sinks)
    }

    fn dead_letters(
        &mut self,
        src: usize,
        recs: &Records,
        bad: &mut [(u32, String)],
        sinks: &mut Sinks,
    ) -> Result<(), TaskError> {
        let name = &self.plan.sources[src].name;
        self.metrics.dead_letters.with_label_values(&[name]).inc_by(bad.len() as u64);
        bad.sort_by_key(|b| b.0);
        match self.plan.dead_letter {
            Some(d) => {
                let records: Vec<Vec<u8>> = bad
                    .iter()
                    .map(|(i, e)| {
                        dead_letter(name, self.partition, recs.positions[*i as usize], e, recs.payload(*i as usize))
                    })
                    .collect();
                sinks.write_records(d, &records)?;
            }
            None => {
                let (i, e) = &bad[0];
                tracing::warn!(source = %name, partition = self.partition, position = recs.positions[*i as usize],
                    "{} record(s) failed to decode and no deadLetter sink is set; first error: {e}", bad.len());
            }
        }
        Ok(())
    }

    /// Runs a batch through step `target` (or into a sink) and everything downstream of it.
    fn dispatch(&mut self, target: Target, batch: Batch, sinks: &mut Sinks) -> Result<(), TaskError> {
        match target {
            Target::Sink(s) => {
                sinks.write_rows(s, &batch, &self.plan.sinks[s].key_cols)?;
                Ok(())
            }
            Target::Node(i, port) => self.run_ops(i, 0, port, batch, sinks),
        }
    }

    /// Runs `batch` (of input `port` of the step) through the operators of step `i` from
    /// operator `from` on.
    fn run_ops(&mut self, i: usize, from: usize, port: u8, batch: Batch, sinks: &mut Sinks) -> Result<(), TaskError> {
        let mut cur = Some(batch);
        for j in from..self.nodes[i].len() {
            let Some(b) = cur.take() else { return Ok(()) };
            let started = Instant::now();
            let mut ctx = OpCtx { state: &mut self.state, late: &mut self.late };
            cur = match j {
                0 => self.nodes[i][j].on_input(port, b, &mut ctx)?,
                _ => self.nodes[i][j].on_batch(b, &mut ctx)?,
            };
            self.charge(Op::Step(i), started);
            self.route_late(i, sinks)?;
            if let Some(r) = self.nodes[i][j].take_rejected() {
                self.route_rejected(i, r, sinks)?;
            }
        }
        if let Some(b) = cur {
            for t in self.plan.nodes[i].children.clone() {
                self.dispatch(t, b.clone(), sinks)?;
            }
        }
        Ok(())
    }

    /// Rows step `i` turned away: counted, and the dead ones to the dead-letter sink.
    fn route_rejected(&mut self, i: usize, r: Rejected, sinks: &mut Sinks) -> Result<(), TaskError> {
        let name = &self.plan.nodes[i].name;
        let counter = |outcome: &str| self.metrics.rejected_rows.with_label_values(&[name, outcome]);
        counter("dropped").inc_by(r.dropped);
        if r.dead.is_empty() {
            return Ok(());
        }
        counter("dead_letter").inc_by(r.dead.len() as u64);
        match self.plan.dead_letter {
            Some(d) => {
                // The row has no source position any more: -1.
                let records: Vec<Vec<u8>> =
                    r.dead.iter().map(|(e, rec)| dead_letter(name, self.partition, -1, e, rec)).collect();
                sinks.write_records(d, &records)?;
            }
            None => tracing::warn!(operator = %name, partition = self.partition,
                "{} row(s) turned away and no deadLetter sink is set; first: {}", r.dead.len(), r.dead[0].0),
        }
        Ok(())
    }

    fn route_late(&mut self, i: usize, sinks: &mut Sinks) -> Result<(), TaskError> {
        if self.late.is_empty() {
            return Ok(());
        }
        let node = &self.plan.nodes[i];
        self.metrics.late_records.with_label_values(&[&node.name]).inc_by(self.late.len() as u64);
        match node.late_sink {
            Some(s) => sinks.write_records(s, &self.late)?,
            None => {
                if self.late_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    self.late_logged = Some(std::time::Instant::now());
                    tracing::warn!(operator = %node.name, partition = self.partition,
                        "{} late event(s) not written: the step has no lateOutput (counted in weir_late_records_total)", self.late.len());
                }
            }
        }
        self.late.clear();
        Ok(())
    }

    /// Whether source `src` counts as idle: no record for its `idleTimeout` (wall clock).
    fn idle(&self, src: usize) -> bool {
        let s = &self.sources[src];
        if self.plan.sources[src].markers {
            return !s.ended && s.writers_idle();
        }
        let timeout = self.plan.sources[src].idle_timeout;
        !s.ended && timeout.is_some_and(|t| s.last_read.elapsed() >= t)
    }

    /// Each step's watermark, in plan order: the least of its inputs' — a source's own, a
    /// step's as passed on (a join holds it back by its bounds) — leaving out idle inputs while
    /// another input is active (PIPELINE.md).
    fn step_watermarks(&self) -> StepWatermarks {
        let n = self.plan.nodes.len();
        let (mut wms, mut passed, mut idle) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for node in &self.plan.nodes {
            let inputs: Vec<(i64, bool)> = node
                .inputs
                .iter()
                .map(|inp| match *inp {
                    Input::Source(s) => (self.watermark(s), self.idle(s)),
                    Input::Node(p) => (passed[p], idle[p]),
                })
                .collect();
            let active = inputs.iter().filter(|(_, idle)| !idle).map(|(wm, _)| *wm).min();
            let wm = active.or_else(|| inputs.iter().map(|(wm, _)| *wm).min()).unwrap_or(i64::MIN);
            wms.push(wm);
            idle.push(!inputs.is_empty() && inputs.iter().all(|(_, idle)| *idle));
            passed.push(match &node.join {
                Some(j) if wm != i64::MIN && wm != i64::MAX => wm.saturating_sub(JoinOp::delay(j)),
                _ => wm,
            });
        }
        StepWatermarks { own: wms, passed, idle }
    }

    /// Passes the watermarks to the steps that source `src` drives (every step with `None`),
    /// in pipeline order.
    fn advance(&mut self, src: Option<usize>, sinks: &mut Sinks) -> Result<(), TaskError> {
        if let Some(src) = src {
            let wm = self.watermark(src);
            if wm == i64::MIN {
                return Ok(());
            }
            self.metrics.watermark.with_label_values(&[&self.partition_label]).set(wm.min(i64::MAX - 1));
            if wm != i64::MAX {
                let lag = chrono::Utc::now().timestamp_millis().saturating_sub(wm);
                self.metrics.watermark_lag.with_label_values(&[&self.partition_label]).set(lag);
            }
        }
        let wms = self.step_watermarks().own;
        for (i, &wm) in wms.iter().enumerate() {
            if wm == i64::MIN || src.is_some_and(|s| !self.plan.nodes[i].root_sources.contains(&s)) {
                continue;
            }
            for j in 0..self.nodes[i].len() {
                let started = Instant::now();
                let mut ctx = OpCtx { state: &mut self.state, late: &mut self.late };
                let fired = self.nodes[i][j].on_watermark(wm, &mut ctx)?;
                self.charge(Op::Step(i), started);
                if let Some(out) = fired {
                    self.run_ops(i, j + 1, 0, out, sinks)?;
                }
            }
        }
        Ok(())
    }

    /// Steps with several inputs, some of which may have become idle, catch up their
    /// watermarks (called periodically).
    pub fn tick(&mut self, sinks: &mut Sinks) -> Result<(), TaskError> {
        if self.plan.sources.iter().any(|s| s.idle_timeout.is_some()) {
            self.advance(None, sinks)?;
        }
        Ok(())
    }

    /// A bounded source ended: its watermark jumps to +infinity and every open window fires.
    pub fn end_source(&mut self, src: usize, sinks: &mut Sinks) -> Result<(), TaskError> {
        self.sources[src].ended = true;
        self.advance(Some(src), sinks)
    }

    /// A copy of the task's committed state into the new folder `dir`.
    pub fn checkpoint(&self, dir: &std::path::Path) -> Result<(), TaskError> {
        self.state.checkpoint(dir).map_err(|source| TaskError::State { partition: self.partition, source })
    }

    /// True when an operator needs a commit to bound its memory.
    pub fn wants_commit(&self) -> bool {
        self.nodes.iter().flatten().any(|op| op.wants_commit())
    }

    /// Session windows with `sessionState`: writes the open sessions that changed since the last
    /// call to their sinks (at every epoch's end, before the sinks flush).
    pub fn drain_sessions(&mut self, sinks: &mut Sinks) -> Result<(), TaskError> {
        for i in 0..self.nodes.len() {
            let node = &self.plan.nodes[i];
            let (Some(sink), Some(WindowKind::Session { gap })) =
                (node.session_sink, node.window.as_ref().map(|w| w.kind))
            else {
                continue;
            };
            for op in self.nodes[i].iter_mut() {
                let mut ctx = OpCtx { state: &mut self.state, late: &mut self.late };
                if let Some(changes) = op.drain_sessions(&mut ctx)? {
                    sinks.write_sessions(sink, &changes, &node.key_cols, gap)?;
                }
            }
        }
        Ok(())
    }

    /// Repartition steps: writes the watermark of each one's input to its topic (at every
    /// epoch's end, before the sinks flush), for the partitions that read it.
    pub fn emit_watermarks(&mut self, sinks: &mut Sinks) -> Result<(), TaskError> {
        if !self.plan.sinks.iter().any(|s| s.repartition.is_some()) {
            return Ok(());
        }
        let steps = self.step_watermarks();
        for (k, sink) in self.plan.sinks.iter().enumerate() {
            let Some(rp) = &sink.repartition else { continue };
            let (wm, idle) = match rp.input {
                Input::Source(s) => (self.watermark(s), self.idle(s)),
                Input::Node(n) => (steps.passed[n], steps.idle[n]),
            };
            sinks.write_watermark(k, (!idle).then_some(wm))?;
        }
        Ok(())
    }

    /// Writes cached operator state into the epoch's transaction (before sinks flush).
    pub fn prepare_commit(&mut self) -> Result<(), TaskError> {
        for i in 0..self.nodes.len() {
            let started = Instant::now();
            for op in self.nodes[i].iter_mut() {
                let mut ctx = OpCtx { state: &mut self.state, late: &mut self.late };
                op.before_commit(&mut ctx)?;
            }
            self.charge(Op::Step(i), started);
        }
        Ok(())
    }

    /// Commits state with positions and watermarks; returns the positions to commit upstream.
    pub fn commit(&mut self) -> Result<Vec<(usize, i64)>, TaskError> {
        let mut extra = Vec::new();
        let mut positions = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if let Some(p) = s.next_position {
                extra.push((meta_key(b"pos", &self.plan.sources[i].name), p.to_be_bytes().to_vec()));
                positions.push((i, p));
            }
            if s.max_ts != i64::MIN {
                extra.push((meta_key(b"mts", &self.plan.sources[i].name), s.max_ts.to_be_bytes().to_vec()));
            }
            if !s.writers_wm.is_empty() {
                let name = &self.plan.sources[i].name;
                let writers = serde_json::to_vec(&s.writers_wm).expect("a map of numbers serializes");
                extra.push((meta_key(b"uwm", name), writers));
                extra.push((meta_key(b"mwm", name), s.marker_wm.to_be_bytes().to_vec()));
            }
        }
        self.state.commit(extra).map_err(|source| TaskError::State { partition: self.partition, source })?;
        self.metrics.state_size.with_label_values(&[&self.partition_label]).set(self.state.size_bytes() as i64);
        for (i, ops) in self.nodes.iter().enumerate() {
            let cached: usize = ops.iter().map(|o| o.cached_keys()).sum();
            self.metrics
                .cached_keys
                .with_label_values(&[&self.plan.nodes[i].name, &self.partition_label])
                .set(cached as i64);
        }
        Ok(positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::file::FileSink;
    use crate::state::MemStore;

    #[test]
    fn markers_are_taken_out_of_a_repartition_topics_records() {
        let mut recs = Records::default();
        recs.push_tombstone(&Marker { from: 1, watermark: Some(50) }.key(), 10, 0);
        recs.push(b"{\"a\":1}", 11, 100);
        recs.push_tombstone(&Marker { from: 0, watermark: None }.key(), 12, 0);
        recs.push_tombstone(b"not-a-marker", 13, 0);
        recs.push(b"{\"a\":2}", 14, 200);
        let markers = take_markers(&mut recs);
        assert_eq!(
            markers,
            [(0, Marker { from: 1, watermark: Some(50) }), (1, Marker { from: 0, watermark: None })],
            "each marker with the index of the record after it"
        );
        assert_eq!((recs.len(), recs.payload(0), recs.payload(2)), (3, &b"{\"a\":1}"[..], &b"{\"a\":2}"[..]));
        assert_eq!(recs.positions, [11, 13, 14]);
        assert_eq!(recs.tombstones, [(1, b"not-a-marker".to_vec())], "other records without a value stay");
    }

    #[test]
    fn the_marker_watermark_is_the_least_of_the_active_writers_once_all_reported() {
        let mut s = SourceState {
            max_ts: i64::MIN,
            next_position: None,
            ended: false,
            last_read: Instant::now(),
            writers_wm: BTreeMap::new(),
            writers: 3,
            marker_wm: i64::MIN,
        };
        let m = |from, watermark| Marker { from, watermark };
        s.apply_marker(m(0, Some(100)));
        s.apply_marker(m(1, Some(300)));
        assert_eq!(s.marker_wm, i64::MIN, "a writer has not reported yet");
        s.apply_marker(m(2, Some(200)));
        assert_eq!(s.marker_wm, 100);
        s.apply_marker(m(0, Some(90)));
        assert_eq!(s.writers_wm[&0], (100, false), "a writer's watermark never moves back");
        s.apply_marker(m(0, None));
        assert_eq!(s.marker_wm, 200, "an idle writer holds nothing back");
        s.apply_marker(m(1, None));
        s.apply_marker(m(2, None));
        assert!(s.writers_idle());
        assert_eq!(s.marker_wm, 200, "all idle: unchanged");
        s.apply_marker(m(1, Some(150)));
        assert_eq!(s.marker_wm, 300, "writer 1 is active again, at its own watermark (which never moved back)");
    }

    const JOB: &str = r#"
spec:
  pipeline:
    sources:
      orders:
        file: {path: o.jsonl}
        schema: {order_id: string, ts: timestamp}
        eventTime: {field: ts, maxOutOfOrderness: 1s}
      payments:
        file: {path: p.jsonl}
        schema: {order_id: string, ts: timestamp}
        eventTime: {field: ts, maxOutOfOrderness: 1s, idleTimeout: 20ms}
    streams:
      paid:
        join: {left: orders, right: payments, by: [order_id], after: 1m, type: left}
    sinks:
      out: {from: paid, file: {path: out.jsonl}}
"#;

    /// A task of the `JOB` join over in-memory state, its sinks being `sink`.
    fn join_task(sink: Box<dyn Sink>) -> (tempfile::TempDir, Task, Sinks) {
        let dir = tempfile::tempdir().unwrap();
        let m = weir_crds::Manifest::from_yaml(JOB, "join").unwrap();
        let plan = Arc::new(JobPlan::new(&m, dir.path()).unwrap());
        let metrics = Arc::new(Metrics::new("join"));
        let task = Task::open(plan, 0, Box::new(MemStore::default()), metrics.clone(), &[]).unwrap();
        let sinks = Sinks::new(vec![sink], vec!["out".into()], metrics, None);
        (dir, task, sinks)
    }

    /// A task of the `JOB` join whose output is recorded (as a Kafka sink's) in the vector.
    fn recorded_join_task() -> (tempfile::TempDir, Task, Sinks, Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (dir, task, sinks) = join_task(Box::new(Recorder(seen.clone())));
        (dir, task, sinks, seen)
    }

    fn records(lines: &[(&str, i64)], first: i64) -> Records {
        let mut r = Records::default();
        for (i, (id, ts)) in lines.iter().enumerate() {
            r.push(format!(r#"{{"order_id": "{id}", "ts": {ts}}}"#).as_bytes(), first + i as i64, 0);
        }
        r
    }

    /// Records what reaches it, and counts as a Kafka sink (its output is muted during replay).
    struct Recorder(Arc<std::sync::Mutex<Vec<String>>>);

    impl Sink for Recorder {
        fn write_rows(
            &mut self,
            rows: &datafusion::arrow::record_batch::RecordBatch,
            _keys: &[usize],
            _raw: Option<&BinaryArray>,
        ) -> Result<(), SinkError> {
            let text = String::from_utf8(crate::codec::encode_json_lines(rows).unwrap()).unwrap();
            self.0.lock().unwrap().extend(text.lines().map(str::to_string));
            Ok(())
        }
        fn write_records(&mut self, _records: &[Vec<u8>]) -> Result<(), SinkError> {
            Ok(())
        }
        fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        fn is_kafka(&self) -> bool {
            true
        }
    }

    /// After a crash, input whose results are committed is replayed with Kafka output muted.
    /// An order read after the commit (o2) must still join a payment read before it (p2),
    /// although the orders' replay ends before the payments' does: the order waits until
    /// every committed input is replayed, as in the run that committed it.
    #[test]
    fn replay_processes_all_committed_input_before_new_input() {
        let (_dir, mut task, mut sinks, seen) = recorded_join_task();
        let (orders, payments) = (0, 1);
        // Committed before the crash: orders up to position 1 (o1), payments up to 2 (p1, p2).
        task.replay_until(orders, 1);
        task.replay_until(payments, 2);
        task.process(orders, records(&[("o1", 1_000), ("o2", 2_000)], 0), &mut sinks).unwrap();
        task.process(payments, records(&[("o1", 1_500), ("o2", 2_500), ("o3", 3_000)], 0), &mut sinks).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "o1-p1 was committed before the crash; o2-p2 comes out once: {seen:?}");
        assert!(task.replay_until.iter().all(Option::is_none) && task.held.is_empty());
        assert!(seen[0].contains(r#""order_id":"o2""#) && seen[0].contains(r#""payments_ts":2500"#), "{seen:?}");
    }

    /// A replay ends with the last committed record itself, even when nothing follows it (a
    /// quiet partition, or only transaction markers): input of the other source is not held.
    #[test]
    fn a_replay_ends_at_its_last_committed_record() {
        let (_dir, mut task, mut sinks, seen) = recorded_join_task();
        let (orders, payments) = (0, 1);
        task.replay_until(payments, 2);
        // Payments up to position 1 were processed before the crash; nothing comes after.
        task.process(payments, records(&[("o1", 1_500), ("o2", 2_500)], 0), &mut sinks).unwrap();
        task.process(orders, records(&[("o2", 2_000)], 0), &mut sinks).unwrap();
        assert!(task.held.is_empty(), "the payments' replay is over");
        assert_eq!(seen.lock().unwrap().len(), 1, "o2 joins p2 at once");
    }

    #[test]
    fn an_idle_input_stops_holding_back_a_join() {
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("out.jsonl");
        let (_dir, mut task, mut sinks) = join_task(Box::new(FileSink::create("out", &out, false).unwrap()));
        let (orders, payments) = (0, 1);
        // o1 is never paid; orders move on by ten minutes; payments stop at one for o9.
        task.process(payments, records(&[("o9", 5_000)], 0), &mut sinks).unwrap();
        task.process(orders, records(&[("o1", 1_000), ("o2", 600_000)], 0), &mut sinks).unwrap();
        task.tick(&mut sinks).unwrap();
        sinks.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "", "payments hold the join's watermark at ~4 s");
        // Once payments have been idle for their idleTimeout, the orders' watermark alone
        // moves the join: o1 can match nothing any more and comes out unpaid.
        std::thread::sleep(std::time::Duration::from_millis(40));
        task.tick(&mut sinks).unwrap();
        sinks.flush().unwrap();
        let rows: Vec<serde_json::Value> =
            std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows, [serde_json::json!({"order_id": "o1", "ts": 1_000})]);
        // A payment arriving after that is judged by the payments' own watermark: o2 still
        // joins it.
        task.process(payments, records(&[("o2", 600_500)], 1), &mut sinks).unwrap();
        sinks.flush().unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.lines().nth(1).is_some_and(|l| l.contains(r#""payments_ts":600500"#)), "{text}");
    }
}
