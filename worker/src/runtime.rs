//! Runs a planned job in this process: opens sources and sinks, restores each partition-task
//! from its state, and drives the loop of poll -> process, flushing the sinks every epoch and
//! committing state with input positions every commit interval (`checkpointing.interval`, or
//! earlier when an operator's memory budget is full), until the bounded sources are done or a
//! shutdown is requested (SIGTERM ends the current epoch, commits it, flushes the sinks and
//! returns). At-least-once: positions are committed only after the sinks flushed everything
//! produced before them, so a crash replays from the last commit and loses nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::checkpoint::storage::{self, Storage};
use crate::checkpoint::{self, Checkpointer, Savepoints};
use crate::metrics::Metrics;
use crate::plan::JobPlan;
use crate::profile::Profile;
use crate::sink::cassandra::CassandraSink;
use crate::sink::kafka::{register_schemas, KafkaProducer, KafkaSink, SchemaIds};
use crate::sink::opensearch::OpenSearchSink;
use crate::sink::parquet::{ParquetContext, ParquetSink};
use crate::sink::repartition::RepartitionSink;
use crate::sink::{file::FileSink, redis::RedisSink, Shared, SharedSink, Sink};
use crate::source::{datagen::DatagenSource, file::FileSource, kafka::KafkaSource, Source};
use crate::state::{RocksShared, RocksStore};
use crate::table::Table;
use crate::task::{Sinks, Task};

/// Records read per poll across a source's partitions.
pub(crate) const MAX_POLL: usize = 8_192;
/// The longest a poll of a Kafka source waits for a record to arrive.
const MAX_WAIT: Duration = Duration::from_millis(20);

/// Where this worker sits in the job.
#[derive(Clone, Debug)]
pub struct WorkerIdentity {
    pub ordinal: u32,
    pub parallelism: u32,
}

/// How to run.
pub struct RuntimeConfig {
    pub identity: WorkerIdentity,
    /// Folder of the partition-tasks' RocksDB state.
    pub state_dir: PathBuf,
    /// Shared RocksDB block cache and write-buffer budget.
    pub state_memory_bytes: usize,
    /// Savepoints requested through the admin server, and their progress.
    pub savepoints: Savepoints,
    /// Partitions without local state start from this savepoint (else the newest checkpoint):
    /// an id under the storage's `savepoints/`, or a location.
    pub restore_savepoint: Option<String>,
    /// The folder of the checkpoint storage this deployment's checkpoints go to (a stateless
    /// upgrade starts a new one); the storage's root when absent.
    pub state_generation: Option<String>,
}

pub struct Runtime {
    plan: Arc<JobPlan>,
    sources: Vec<Box<dyn Source>>,
    tasks: BTreeMap<u32, Task>,
    /// Each task's sinks (the same shared sinks, except transactional Kafka ones).
    sinks: BTreeMap<u32, Sinks>,
    metrics: Arc<Metrics>,
    ended: Vec<bool>,
    /// Exactly-once: every task commits a Kafka transaction per epoch.
    transactional: bool,
    /// Positions each task committed in its last transaction (idle tasks skip empty ones).
    txn_positions: BTreeMap<u32, Vec<(usize, i64)>>,
    checkpointer: Option<Checkpointer>,
    last_checkpoint: Instant,
    savepoints: Savepoints,
    profile: Profile,
    /// Side-input tables, loaded before the first stream record and followed as they change.
    tables: Vec<Table>,
}

impl Runtime {
    /// Opens everything and restores every task; fails with what could not be opened.
    pub fn open(plan: Arc<JobPlan>, cfg: &RuntimeConfig, metrics: Arc<Metrics>) -> anyhow::Result<Runtime> {
        let id = &cfg.identity;
        let transactional = Self::transactional(&plan)?;
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        for (i, sp) in plan.sources.iter().enumerate() {
            if sp.markers {
                // A repartition topic: created with its input's partition count (its upstream
                // sources come first, so they are open).
                let writer = plan.sinks.iter().find(|s| s.repartition.as_ref().is_some_and(|r| r.source == i));
                let writer = writer.expect("a repartition topic has its writing sink");
                let rp = writer.repartition.as_ref().expect("found by it");
                let partitions = rp.roots.iter().map(|&r| sources[r].partition_count()).max().unwrap_or(1);
                let k = sp.spec.kafka.as_ref().expect("a repartition topic is a Kafka topic");
                crate::source::kafka::ensure_repartition_topic(&k.brokers, &k.properties, &k.topic, partitions)
                    .map_err(|e| anyhow::anyhow!("step {}: {e}", writer.name))?;
            }
            let s: Box<dyn Source> = if let Some(k) = &sp.spec.kafka {
                Box::new(
                    KafkaSource::new(&sp.name, k, &plan.group, id.ordinal, id.parallelism)?.exactly_once(transactional),
                )
            } else if id.parallelism > 1 {
                bail!("source {} is a file or datagen source, which runs on one worker; set parallelism to 1", sp.name);
            } else if let Some(f) = &sp.spec.file {
                Box::new(FileSource::new(&sp.name, plan.resolve(&f.path)))
            } else if let Some(d) = &sp.spec.datagen {
                Box::new(DatagenSource::new(d.clone()))
            } else {
                bail!("source {} has no kind", sp.name);
            };
            sources.push(s);
        }
        Self::check_co_partitioned(&plan, &sources)?;
        let shared = RocksShared::new(cfg.state_memory_bytes, cfg.state_memory_bytes / 4);
        let mut tables = Vec::new();
        for t in &plan.tables {
            let mut table = Table::open(t.clone(), &cfg.state_dir.join("tables").join(&t.name), &shared, &plan)?;
            table.load(&plan.group)?;
            Self::count_table_rows(&metrics, &mut table);
            tables.push(table);
        }
        let stores: Vec<_> = tables.iter().map(|t| t.store.clone()).collect();
        let mut partitions: Vec<u32> = sources.iter().flat_map(|s| s.partitions()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut tasks = BTreeMap::new();
        // Savepoints at the root of the storage, checkpoints under the state generation's folder.
        let storage_root: Option<Arc<dyn Storage>> = match &plan.checkpoint_storage {
            Some(url) => Some(Arc::from(storage::open(url)?)),
            None => None,
        };
        let checkpoint_storage: Option<Arc<dyn Storage>> = match (&storage_root, &cfg.state_generation) {
            (Some(root), Some(g)) => Some(Arc::new(storage::Scoped::new(root.clone(), g))),
            (root, _) => root.clone(),
        };
        let savepoint: Option<Arc<dyn Storage>> = match (&storage_root, &cfg.restore_savepoint) {
            (Some(root), Some(sp)) => Some(checkpoint::savepoint_storage(root, sp)?),
            _ => None,
        };
        for p in partitions {
            let dir = cfg.state_dir.join(format!("p{p}"));
            if let (Some(storage), false) = (&checkpoint_storage, dir.join("CURRENT").exists()) {
                // No local state (a new node, a lost volume, a partial restore): the newest
                // checkpoint, if any.
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
                }
                let from_savepoint = match &savepoint {
                    Some(sp) => checkpoint::restore_savepoint(sp.as_ref(), storage.as_ref(), p, &dir)?,
                    None => None,
                };
                if let (Some(id), Some(m)) = (&cfg.restore_savepoint, &from_savepoint) {
                    tracing::info!(partition = p, savepoint = %id, bytes = m.bytes, "restored state from savepoint");
                } else if let Some(m) = checkpoint::restore(storage.as_ref(), p, &dir)? {
                    if m.fingerprint != plan.fingerprint {
                        tracing::warn!(
                            partition = p,
                            checkpoint = m.id,
                            "restoring state written by a different pipeline (fingerprint {} , now {})",
                            m.fingerprint,
                            plan.fingerprint
                        );
                    }
                    tracing::info!(partition = p, checkpoint = m.id, bytes = m.bytes, "restored state from checkpoint");
                }
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating state folder {}", dir.display()))?;
            let store = RocksStore::open(&dir, &shared)?;
            let mut task = Task::open(plan.clone(), p, Box::new(store), metrics.clone(), &stores)?;
            for (i, sp) in plan.sources.iter().enumerate() {
                if sp.markers {
                    task.set_writers(i, sources[i].partition_count());
                }
            }
            for (i, s) in sources.iter_mut().enumerate() {
                if let Some(pos) = task.restored_position(i) {
                    if s.partitions().contains(&p) {
                        s.seek(p, pos)?;
                    }
                }
            }
            tasks.insert(p, task);
        }
        // A job resuming from restored positions appends to its files.
        let resumed = tasks.values().any(|t: &Task| (0..plan.sources.len()).any(|i| t.restored_position(i).is_some()));
        let mut shared: Vec<Option<SharedSink>> = Vec::new();
        // Each Parquet sink's table folder, opened once for all tasks.
        let mut tables_out: BTreeMap<usize, Arc<dyn Storage>> = BTreeMap::new();
        for (i, s) in plan.sinks.iter().enumerate() {
            let Some(pq) = &s.spec.parquet else { continue };
            let url = match pq.path.contains("://") {
                true => pq.path.clone(),
                false => format!("file://{}", std::path::absolute(plan.resolve(&pq.path))?.display()),
            };
            tables_out.insert(i, Arc::from(storage::open(&url).with_context(|| format!("sink {}", s.name))?));
        }
        // Avro and JSON Schema sinks' schemas, registered once for all tasks.
        let mut registered: BTreeMap<usize, SchemaIds> = BTreeMap::new();
        for (i, s) in plan.sinks.iter().enumerate() {
            if let (Some(k), Some(a)) = (&s.spec.kafka, &s.registered) {
                registered.insert(i, register_schemas(&s.name, k, a)?);
            }
        }
        for (i, s) in plan.sinks.iter().enumerate() {
            let sink: Box<dyn Sink> = if let Some(k) = &s.spec.kafka {
                if transactional || s.repartition.is_some() {
                    shared.push(None); // one per task, below
                    continue;
                }
                Box::new(KafkaSink::new(&s.name, k, registered.get(&i).copied())?)
            } else if let Some(f) = &s.spec.file {
                let path = match (id.parallelism, plan.resolve(&f.path)) {
                    (1, p) => p,
                    // Several workers never write one file: each writes its own.
                    (_, p) => p.with_extension(format!("{}.jsonl", id.ordinal)),
                };
                Box::new(FileSink::create(&s.name, &path, resumed)?)
            } else if let Some(r) = &s.spec.redis {
                Box::new(RedisSink::new(&s.name, r, metrics.clone())?)
            } else if let Some(o) = &s.spec.opensearch {
                Box::new(OpenSearchSink::new(&s.name, o, metrics.clone())?)
            } else if let Some(c) = &s.spec.cassandra {
                Box::new(CassandraSink::new(&s.name, c, s.timestamps.clone(), metrics.clone())?)
            } else if s.spec.parquet.is_some() {
                shared.push(None); // one per task, below
                continue;
            } else {
                bail!("sink {} has no kind", s.name);
            };
            shared.push(Some(Arc::new(std::sync::Mutex::new(sink))));
        }
        let names: Vec<String> = plan.sinks.iter().map(|s| s.name.clone()).collect();
        let mut task_sinks = BTreeMap::new();
        let mut repartition_producer: Option<Arc<KafkaProducer>> = None;
        for (i, &p) in tasks.keys().enumerate() {
            let txn = match transactional {
                true => Some(Arc::new(Self::task_producer(&plan, p).map_err(anyhow::Error::msg)?)),
                false => None,
            };
            if let (0, Some(txn)) = (i, &txn) {
                for s in &plan.sinks {
                    if let Some(k) = &s.spec.kafka {
                        txn.check_topic(&k.topic).map_err(|e| anyhow::anyhow!("sink {}: {e}", s.name))?;
                    }
                }
            }
            let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
            for (sink_index, (s, sh)) in plan.sinks.iter().zip(&shared).enumerate() {
                match (sh, &s.spec.kafka, &txn, &s.spec.parquet) {
                    (Some(sh), _, _, _) => sinks.push(Box::new(Shared(sh.clone()))),
                    (None, Some(k), txn, _) if s.repartition.is_some() => {
                        let rp = s.repartition.as_ref().expect("checked");
                        // At-least-once, a worker's tasks share one idempotent producer.
                        let producer = match txn {
                            Some(txn) => txn.clone(),
                            None => match &repartition_producer {
                                Some(p) => p.clone(),
                                None => {
                                    let p = Arc::new(
                                        KafkaProducer::new(&k.brokers, &k.properties, None)
                                            .map_err(anyhow::Error::msg)?,
                                    );
                                    repartition_producer.insert(p).clone()
                                }
                            },
                        };
                        let partitions = sources[rp.source].partition_count();
                        sinks.push(Box::new(RepartitionSink::new(&s.name, &rp.topic, partitions, p, producer)))
                    }
                    (None, Some(k), Some(txn), _) => sinks.push(Box::new(KafkaSink::with_producer(
                        &s.name,
                        k,
                        txn.clone(),
                        registered.get(&sink_index).copied(),
                    ))),
                    (None, _, _, Some(pq)) => {
                        let ctx = ParquetContext {
                            group: plan.group.clone(),
                            partition: p,
                            timestamps: s.timestamps.clone(),
                            exactly_once: transactional,
                            scratch: cfg.state_dir.join("sinks").join(&s.name).join(format!("p{p}")),
                            metrics: metrics.clone(),
                        };
                        sinks.push(Box::new(ParquetSink::new(&s.name, pq, tables_out[&sink_index].clone(), ctx)?))
                    }
                    _ => bail!("sink {} has no writer", s.name),
                }
            }
            task_sinks.insert(p, Sinks::new(sinks, names.clone(), metrics.clone(), txn));
        }
        let mut committed_epochs: BTreeMap<u32, u64> = BTreeMap::new();
        for (i, s) in sources.iter_mut().enumerate() {
            s.start()?;
            for (p, e) in s.committed_epochs() {
                let at = committed_epochs.entry(p).or_default();
                *at = (*at).max(e);
            }
            if transactional {
                for (p, committed) in s.committed_ahead() {
                    if let Some(t) = tasks.get_mut(&p) {
                        tracing::info!(
                            partition = p,
                            until = committed,
                            "replaying input whose results are committed, with Kafka output muted"
                        );
                        t.replay_until(i, committed);
                    }
                }
            }
        }
        // What an earlier run staged for an epoch is published if the epoch committed, else
        // discarded (its input is read again).
        for (p, sinks) in task_sinks.iter_mut() {
            sinks.recover(committed_epochs.get(p).copied())?;
        }
        let ended = vec![false; sources.len()];
        let checkpointer = checkpoint_storage.zip(storage_root).map(|(st, root)| {
            Checkpointer::new(
                root,
                st,
                plan.checkpoints_retained,
                cfg.state_dir.join("checkpoints"),
                metrics.clone(),
                cfg.savepoints.clone(),
            )
        });
        Ok(Runtime {
            sinks: task_sinks,
            profile: Profile::new(&plan),
            plan,
            sources,
            tasks,
            metrics,
            ended,
            transactional,
            txn_positions: BTreeMap::new(),
            checkpointer,
            savepoints: cfg.savepoints.clone(),
            last_checkpoint: Instant::now(),
            tables,
        })
    }

    /// Publishes the rows table `t` read since the last call.
    fn count_table_rows(metrics: &Metrics, t: &mut Table) {
        let (rows, bad) = t.take_counts();
        metrics.table_rows.with_label_values(&[&t.plan.name, "applied"]).inc_by(rows - bad);
        metrics.table_rows.with_label_values(&[&t.plan.name, "bad"]).inc_by(bad);
    }

    /// Exactly-once needs a Kafka source (its offsets go into the transactions) and Kafka sinks
    /// on the same cluster, or Parquet sinks (their files publish when the transaction carrying
    /// the epoch's offsets commits); other sinks are at-least-once (Redis: idempotent upserts).
    fn transactional(plan: &JobPlan) -> anyhow::Result<bool> {
        let source = plan.sources.iter().find_map(|s| s.spec.kafka.as_ref());
        let sinks: Vec<_> = plan.sinks.iter().filter_map(|s| Some((&s.name, s.spec.kafka.as_ref()?))).collect();
        let staged = plan.sinks.iter().any(|s| s.spec.parquet.is_some());
        let (Some(source), true, true) = (source, !sinks.is_empty() || staged, plan.exactly_once) else {
            return Ok(false);
        };
        for (name, k) in &sinks {
            if k.brokers != source.brokers {
                bail!(
                    "exactly-once delivery commits the output of sink {name} ({}) with the input offsets of topic {} ({}) in one Kafka transaction, so they must be on the same brokers; use one cluster or set delivery: at-least-once",
                    k.brokers, source.topic, source.brokers
                );
            }
        }
        Ok(true)
    }

    /// A join's inputs must be co-partitioned: a partition-task joins partition `p` of one input
    /// with partition `p` of the other, so their sources need the same partition count (and
    /// records keyed by the join fields, which only their producers can ensure).
    fn check_co_partitioned(plan: &JobPlan, sources: &[Box<dyn Source>]) -> anyhow::Result<()> {
        for n in plan.nodes.iter().filter(|n| n.join.is_some()) {
            let counts: Vec<(String, u32)> =
                n.root_sources.iter().map(|&s| (plan.sources[s].name.clone(), sources[s].partition_count())).collect();
            if counts.windows(2).any(|w| w[0].1 != w[1].1) {
                let list: Vec<String> = counts.iter().map(|(name, c)| format!("{name} has {c}")).collect();
                bail!(
                    "step {} joins inputs that are not co-partitioned ({}): give the topics the same partition count, each keyed by the join fields (a repartition step re-keys a stream by them: {{from: X, keyBy: [...], repartition: true}})",
                    n.name,
                    list.join(", ")
                );
            }
        }
        Ok(())
    }

    /// The transactional producer of partition-task `p`: id `<group>.p<partition>`, so a
    /// restarted or duplicate owner of the partition fences the previous one.
    fn task_producer(plan: &JobPlan, p: u32) -> Result<KafkaProducer, String> {
        let mut properties = BTreeMap::new();
        // Without Kafka sinks, the transactions carry only the input offsets.
        let mut brokers =
            plan.sources.iter().find_map(|s| Some(s.spec.kafka.as_ref()?.brokers.clone())).unwrap_or_default();
        for k in plan.sinks.iter().filter_map(|s| s.spec.kafka.as_ref()) {
            properties.extend(k.properties.iter().map(|(a, b)| (a.clone(), b.clone())));
            brokers.clone_from(&k.brokers);
        }
        KafkaProducer::new(&brokers, &properties, Some(&format!("{}.p{p}", plan.group)))
    }

    /// Runs until bounded sources end or `shutdown` is set; commits before returning.
    pub fn run(&mut self, shutdown: &AtomicBool) -> anyhow::Result<()> {
        let epoch = Duration::from_millis(self.plan.epoch_interval_ms);
        let commit_interval = Duration::from_millis(self.plan.commit_interval_ms);
        let (mut last_commit, mut last_flush) = (Instant::now(), Instant::now());
        let (mut busy, mut window_start) = (Duration::ZERO, Instant::now());
        let (mut first_record, mut records) = (None, 0u64);
        let mut records_at_window = 0u64;
        // Whether the epoch after the external sources ended ran: it publishes the last rows
        // (and the final watermark) of repartition topics, which their readers wait for.
        let mut upstream_end_flushed = false;
        loop {
            // Table changes first: the stream records read next see them.
            for t in self.tables.iter_mut() {
                let started = Instant::now();
                if t.poll(Duration::ZERO)? > 0 {
                    Self::count_table_rows(&self.metrics, t);
                    busy += started.elapsed();
                }
            }
            for i in 0..self.sources.len() {
                if self.ended[i] {
                    continue;
                }
                // Local sources never wait; Kafka waits briefly for records to arrive, never past
                // the next epoch's start (which would delay its results).
                let wait = match self.plan.sources[i].spec.kafka {
                    Some(_) => (last_flush + epoch).saturating_duration_since(Instant::now()).min(MAX_WAIT),
                    None => Duration::ZERO,
                };
                let polled = self.sources[i].poll(MAX_POLL, wait)?;
                let started = Instant::now();
                for (p, recs) in polled.batches {
                    first_record.get_or_insert(started);
                    records += recs.len() as u64;
                    let (Some(task), Some(sinks)) = (self.tasks.get_mut(&p), self.sinks.get_mut(&p)) else {
                        bail!("source returned partition {p}, which this worker does not own");
                    };
                    task.process(i, recs, sinks)?;
                }
                // A repartition topic ends when every writer's watermark has: their rows came
                // before it.
                let drained = self.plan.sources[i].markers
                    && !self.tasks.is_empty()
                    && self.tasks.values().all(|t| t.watermark(i) == i64::MAX);
                if drained || self.sources[i].finished() {
                    self.ended[i] = true;
                    for (p, task) in self.tasks.iter_mut() {
                        task.end_source(i, self.sinks.get_mut(p).expect("every task has sinks"))?;
                    }
                }
                busy += started.elapsed();
            }
            let done = self.ended.iter().all(|e| *e);
            let stopping = shutdown.load(Ordering::Relaxed);
            let started = Instant::now();
            let upstream_ended = self.ended.iter().zip(&self.plan.sources).all(|(e, s)| *e || s.markers);
            let flush_upstream_end = upstream_ended && !upstream_end_flushed;
            upstream_end_flushed |= upstream_ended;
            if done
                || stopping
                || last_commit.elapsed() >= commit_interval
                || self.tasks.values().any(Task::wants_commit)
            {
                self.commit()?;
                (last_commit, last_flush) = (Instant::now(), Instant::now());
                // A checkpoint per interval, and a last one when stopping (an upgrade restores it).
                if done || stopping || self.last_checkpoint.elapsed() >= commit_interval {
                    self.checkpoint(done || stopping)?;
                }
            } else if last_flush.elapsed() >= epoch || flush_upstream_end {
                // Results become visible every epoch; state is committed less often. Epochs start
                // at a steady cadence: the next one is due an interval after this one started,
                // not after its commit ended (which would stretch every epoch by the commit).
                self.epoch()?;
                last_flush = started;
            }
            let requested = self.savepoints.lock().expect("savepoint status").requested.take();
            if let Some(name) = requested {
                self.commit()?;
                (last_commit, last_flush) = (Instant::now(), Instant::now());
                self.savepoint(&name)?;
            }
            busy += started.elapsed();
            if window_start.elapsed() >= Duration::from_secs(1) {
                let secs = window_start.elapsed().as_secs_f64();
                self.metrics.busy_ratio.set((busy.as_secs_f64() / secs).min(1.0));
                // Input rate over the last second, and what the worker could do fully busy.
                let rate = (records - records_at_window) as f64 / secs;
                self.metrics.input_rate.set(rate);
                if busy.as_secs_f64() > 0.01 {
                    self.metrics.capacity.set(rate * secs / busy.as_secs_f64());
                }
                self.report_lag();
                for (p, task) in self.tasks.iter_mut() {
                    task.tick(self.sinks.get_mut(p).expect("every task has sinks"))?;
                    self.profile.add(&mut task.times);
                    self.profile.add_sinks(&mut self.sinks.get_mut(p).expect("every task has sinks").times);
                }
                self.profile.publish(&self.metrics, window_start.elapsed());
                (busy, window_start, records_at_window) = (Duration::ZERO, Instant::now(), records);
            }
            if done || stopping {
                if let Some(cp) = self.checkpointer.as_mut() {
                    cp.finish();
                }
                // From the first record read to everything processed and committed.
                let secs = first_record.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64());
                let rate = if secs > 0.0 { records as f64 / secs } else { 0.0 };
                tracing::info!(records, seconds = secs, records_per_second = rate as u64, "processed");
                eprintln!("weir-worker: processed {records} records in {secs:.3} s ({rate:.0} records/s)");
                return Ok(());
            }
        }
    }

    /// Ends an epoch: every task's sinks flushed; exactly-once, every task that read or wrote
    /// anything commits its transaction with its input offsets.
    fn epoch(&mut self) -> anyhow::Result<()> {
        // Each Kafka source's topic and consumer group, read once per epoch (exactly-once only).
        let kafka: Vec<_> = match self.transactional {
            true => self.sources.iter().map(|s| s.transactional_offsets()).collect(),
            false => Vec::new(),
        };
        let group = kafka.iter().flatten().map(|(_, g)| g).next();
        // The transactions to commit: (partition, producer, input offsets, positions).
        let mut commits = Vec::new();
        let flush = self.metrics.epoch_phase.with_label_values(&["flush"]).start_timer();
        for (p, task) in self.tasks.iter_mut() {
            let sinks = self.sinks.get_mut(p).expect("every task has sinks");
            task.drain_sessions(sinks)?;
            task.emit_watermarks(sinks)?;
            sinks.flush()?;
            let (Some(txn), Some(_)) = (&sinks.txn, group) else { continue };
            let positions = task.positions();
            if self.txn_positions.get(p) == Some(&positions) && !txn.has_open_transaction() && !sinks.has_staged() {
                continue;
            }
            let mut offsets = rdkafka::TopicPartitionList::new();
            let metadata = crate::source::epoch_metadata(sinks.epoch);
            for &(src, pos) in &positions {
                if let Some((topic, _)) = &kafka[src] {
                    offsets.add_partition_offset(topic, *p as i32, rdkafka::Offset::Offset(pos))?;
                    if let Some(mut e) = offsets.find_partition(topic, *p as i32) {
                        e.set_metadata(&metadata);
                    }
                }
            }
            commits.push((*p, txn.clone(), offsets, positions));
        }
        flush.observe_duration();
        let Some(group) = group else { return Ok(()) };
        // Each task's transaction is its own producer's: they commit side by side, so an epoch
        // takes one commit's round trips however many partitions the worker owns.
        let commit = |txn: &KafkaProducer, offsets: &rdkafka::TopicPartitionList| txn.commit_epoch(offsets, group);
        let started = Instant::now();
        let outcomes: Vec<Result<(), String>> = match commits.as_slice() {
            [(_, txn, offsets, _)] => vec![commit(txn, offsets)],
            _ => std::thread::scope(|scope| {
                let handles: Vec<_> =
                    commits.iter().map(|(_, txn, offsets, _)| scope.spawn(move || commit(txn, offsets))).collect();
                let joined = handles.into_iter().map(|h| h.join());
                joined.map(|r| r.unwrap_or_else(|_| Err("the commit thread panicked".into()))).collect()
            }),
        };
        // The worker waited this long for all of them: each task's sinks get their share.
        let waited = started.elapsed();
        if !commits.is_empty() {
            self.metrics.epoch_phase.with_label_values(&["commit"]).observe(waited.as_secs_f64());
        }
        let share = waited / commits.len().max(1) as u32;
        let mut failed = None;
        for ((p, _, _, positions), committed) in commits.into_iter().zip(outcomes) {
            self.sinks.get_mut(&p).expect("every task has sinks").waited_for_commit(share);
            let outcome = if committed.is_ok() { "committed" } else { "failed" };
            self.metrics.transactions.with_label_values(&[&p.to_string(), outcome]).inc();
            match committed {
                Ok(()) => {
                    self.txn_positions.insert(p, positions);
                    // The epoch is decided: what it staged becomes visible.
                    self.sinks.get_mut(&p).expect("every task has sinks").committed()?;
                }
                Err(e) => failed = failed.or(Some(anyhow::anyhow!("partition {p}: {e}"))),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// A state commit: operator state into the tasks' transactions, the epoch ended (sinks
    /// flushed or transactions committed), then state and positions committed together, then
    /// (at-least-once) the positions committed to the consumer group.
    fn commit(&mut self) -> anyhow::Result<()> {
        let timer = self.metrics.epoch_duration.start_timer();
        for t in self.tasks.values_mut() {
            t.prepare_commit()?;
        }
        self.epoch()?;
        crate::fault::point("epoch-committed");
        let mut upstream: Vec<Vec<(u32, i64)>> = vec![Vec::new(); self.sources.len()];
        for t in self.tasks.values_mut() {
            for (src, pos) in t.commit()? {
                upstream[src].push((t.partition, pos));
                let label = [self.plan.sources[src].name.as_str(), &t.partition.to_string()];
                self.metrics.source_position.with_label_values(&label).set(pos);
            }
        }
        if !self.transactional {
            for (s, positions) in self.sources.iter_mut().zip(upstream) {
                s.commit(&positions)?;
            }
        }
        timer.observe_duration();
        Ok(())
    }

    /// Snapshots every task's committed state and queues the uploads; skipped while the
    /// previous checkpoint still uploads, unless this is the last one before stopping.
    fn checkpoint(&mut self, last: bool) -> anyhow::Result<()> {
        let Some(cp) = self.checkpointer.as_mut() else { return Ok(()) };
        if cp.busy() && !last {
            cp.skipped();
            tracing::debug!("checkpoint skipped: the previous one is still uploading");
            return Ok(());
        }
        for (&p, task) in &self.tasks {
            cp.checkpoint(p, &self.plan.fingerprint, |dir| Ok(task.checkpoint(dir)?))?;
        }
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Takes savepoint `name` of every task's just-committed state; its upload runs in the
    /// background and its progress is visible through the admin server.
    fn savepoint(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(cp) = self.checkpointer.as_mut() else { return Ok(()) };
        {
            let mut st = self.savepoints.lock().expect("savepoint status");
            let progress = st.progress.entry(name.to_string()).or_default();
            progress.partitions = self.tasks.keys().copied().collect();
            progress.location = cp.savepoint_location(name);
        }
        for (&p, task) in &self.tasks {
            cp.savepoint(p, &self.plan.fingerprint, name, |dir| Ok(task.checkpoint(dir)?))?;
        }
        tracing::info!(savepoint = name, "savepoint taken; uploading");
        Ok(())
    }

    fn report_lag(&self) {
        for (i, s) in self.sources.iter().enumerate() {
            for (p, lag) in s.lag() {
                self.metrics.consumer_lag.with_label_values(&[&self.plan.sources[i].name, &p.to_string()]).set(lag);
            }
        }
    }
}
