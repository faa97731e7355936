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

use crate::metrics::Metrics;
use crate::plan::JobPlan;
use crate::sink::{file::FileSink, kafka::KafkaSink, Sink};
use crate::source::{datagen::DatagenSource, file::FileSource, kafka::KafkaSource, Source};
use crate::state::{RocksShared, RocksStore};
use crate::task::{Sinks, Task};

/// Records read per poll across a source's partitions.
const MAX_POLL: usize = 8_192;

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
}

pub struct Runtime {
    plan: Arc<JobPlan>,
    sources: Vec<Box<dyn Source>>,
    tasks: BTreeMap<u32, Task>,
    sinks: Sinks,
    metrics: Arc<Metrics>,
    ended: Vec<bool>,
}

impl Runtime {
    /// Opens everything and restores every task; fails with what could not be opened.
    pub fn open(plan: Arc<JobPlan>, cfg: &RuntimeConfig, metrics: Arc<Metrics>) -> anyhow::Result<Runtime> {
        let id = &cfg.identity;
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        for sp in &plan.sources {
            let s: Box<dyn Source> = if let Some(k) = &sp.spec.kafka {
                Box::new(KafkaSource::new(&sp.name, k, &plan.group, id.ordinal, id.parallelism)?)
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
        let shared = RocksShared::new(cfg.state_memory_bytes, cfg.state_memory_bytes / 4);
        let mut partitions: Vec<u32> = sources.iter().flat_map(|s| s.partitions()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut tasks = BTreeMap::new();
        for p in partitions {
            let dir = cfg.state_dir.join(format!("p{p}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating state folder {}", dir.display()))?;
            let store = RocksStore::open(&dir, &shared)?;
            let task = Task::open(plan.clone(), p, Box::new(store), metrics.clone())?;
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
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        for s in &plan.sinks {
            let sink: Box<dyn Sink> = if let Some(k) = &s.spec.kafka {
                Box::new(KafkaSink::new(&s.name, k)?)
            } else if let Some(f) = &s.spec.file {
                let path = match (id.parallelism, plan.resolve(&f.path)) {
                    (1, p) => p,
                    // Several workers never write one file: each writes its own.
                    (_, p) => p.with_extension(format!("{}.jsonl", id.ordinal)),
                };
                Box::new(FileSink::create(&s.name, &path, resumed)?)
            } else {
                bail!("sink {} has no kind", s.name);
            };
            sinks.push(sink);
        }
        let names = plan.sinks.iter().map(|s| s.name.clone()).collect();
        let ended = vec![false; sources.len()];
        Ok(Runtime { sinks: Sinks { sinks, names, metrics: metrics.clone() }, plan, sources, tasks, metrics, ended })
    }

    /// Runs until bounded sources end or `shutdown` is set; commits before returning.
    pub fn run(&mut self, shutdown: &AtomicBool) -> anyhow::Result<()> {
        let epoch = Duration::from_millis(self.plan.epoch_interval_ms);
        let commit_interval = Duration::from_millis(self.plan.commit_interval_ms);
        let (mut last_commit, mut last_flush) = (Instant::now(), Instant::now());
        let (mut busy, mut window_start) = (Duration::ZERO, Instant::now());
        let (mut first_record, mut records) = (None, 0u64);
        loop {
            for i in 0..self.sources.len() {
                if self.ended[i] {
                    continue;
                }
                // Local sources never wait; Kafka waits briefly for records to arrive.
                let wait =
                    if self.plan.sources[i].spec.kafka.is_some() { Duration::from_millis(20) } else { Duration::ZERO };
                let polled = self.sources[i].poll(MAX_POLL, wait)?;
                let started = Instant::now();
                for (p, recs) in polled.batches {
                    first_record.get_or_insert(started);
                    records += recs.len() as u64;
                    let task = self
                        .tasks
                        .get_mut(&p)
                        .with_context(|| format!("source returned partition {p}, which this worker does not own"))?;
                    task.process(i, recs, &mut self.sinks)?;
                }
                if self.sources[i].finished() {
                    self.ended[i] = true;
                    for task in self.tasks.values_mut() {
                        task.end_source(i, &mut self.sinks)?;
                    }
                }
                busy += started.elapsed();
            }
            let done = self.ended.iter().all(|e| *e);
            let stopping = shutdown.load(Ordering::Relaxed);
            let started = Instant::now();
            if done
                || stopping
                || last_commit.elapsed() >= commit_interval
                || self.tasks.values().any(Task::wants_commit)
            {
                self.commit()?;
                (last_commit, last_flush) = (Instant::now(), Instant::now());
            } else if last_flush.elapsed() >= epoch {
                // Results become visible every epoch; state is committed less often.
                self.sinks.flush()?;
                last_flush = Instant::now();
            }
            busy += started.elapsed();
            if window_start.elapsed() >= Duration::from_secs(1) {
                let ratio = busy.as_secs_f64() / window_start.elapsed().as_secs_f64();
                self.metrics.busy_ratio.set(ratio.min(1.0));
                self.report_lag();
                (busy, window_start) = (Duration::ZERO, Instant::now());
            }
            if done || stopping {
                // From the first record read to everything processed and committed.
                let secs = first_record.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64());
                let rate = if secs > 0.0 { records as f64 / secs } else { 0.0 };
                tracing::info!(records, seconds = secs, records_per_second = rate as u64, "processed");
                eprintln!("weir-worker: processed {records} records in {secs:.3} s ({rate:.0} records/s)");
                return Ok(());
            }
        }
    }

    /// One epoch: operator state into the transactions, sinks flushed, then state and
    /// positions committed together, then positions committed upstream.
    fn commit(&mut self) -> anyhow::Result<()> {
        let timer = self.metrics.epoch_duration.start_timer();
        for t in self.tasks.values_mut() {
            t.prepare_commit()?;
        }
        self.sinks.flush()?;
        let mut upstream: Vec<Vec<(u32, i64)>> = vec![Vec::new(); self.sources.len()];
        for t in self.tasks.values_mut() {
            for (src, pos) in t.commit()? {
                upstream[src].push((t.partition, pos));
                let label = [self.plan.sources[src].name.as_str(), &t.partition.to_string()];
                self.metrics.source_position.with_label_values(&label).set(pos);
            }
        }
        for (s, positions) in self.sources.iter_mut().zip(upstream) {
            s.commit(&positions)?;
        }
        timer.observe_duration();
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
