//! Side-input tables (`spec.pipeline.tables`): the latest row per key of a compacted topic (or
//! a file, or generated rows), held in RocksDB by every worker and read by `enrich` steps.
//!
//! A table is global, as a Kafka Streams `GlobalKTable`: every worker reads every partition of
//! the topic from the beginning into its own store, so a stream needs no repartitioning to look
//! a key up, whatever it is keyed by. The store is rebuilt at start (the topic is the table's
//! log; nothing of it goes into checkpoints), and streams wait until it has caught up with the
//! end of the topic. After that the worker applies new table rows between its stream batches,
//! so a lookup sees the latest row the worker has read (processing-time semantics: a replay
//! after recovery sees the table as it is then, not as it was the first time).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use datafusion::arrow::datatypes::DataType;
use weir_crds::{FieldType, KafkaSourceSpec, TableSpec};

use crate::codec::json::JsonDecoder;
use crate::plan::JobPlan;
use crate::source::datagen::DatagenSource;
use crate::source::file::FileSource;
use crate::source::kafka::KafkaSource;
use crate::source::{Records, Source};

use crate::state::{Ops, RocksShared, RocksStore, StateStore};
use crate::value::{Col, Value};
use rustc_hash::FxHashMap;

/// A table as planned: its decoder and where its key is.
pub struct TablePlan {
    pub name: String,
    pub spec: TableSpec,
    pub fields: BTreeMap<String, FieldType>,
    pub decoder: Arc<JsonDecoder>,
    /// Column of the key in decoded rows, and its type.
    pub key_col: usize,
    pub key_type: DataType,
}

impl TablePlan {
    pub fn new(name: &str, spec: &TableSpec) -> TablePlan {
        let fields = weir_crds::table_fields(spec);
        let decoder = Arc::new(JsonDecoder::new(&fields));
        let key_col = decoder.schema().index_of(&spec.key).unwrap_or(0);
        let key_type = decoder.schema().field(key_col).data_type().clone();
        TablePlan { name: name.to_string(), spec: spec.clone(), fields, decoder, key_col, key_type }
    }

    /// Column of field `name` in the stored rows (every field, in schema order).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.decoder.schema().index_of(name).ok()
    }
}

/// A table's rows on one worker: key (the engine's key encoding) to the row's values, with
/// the rows (and absences) looked up recently decoded in memory in front.
pub struct TableStore {
    store: RocksStore,
    cache: Mutex<FxHashMap<Vec<u8>, Option<Row>>>,
    cache_max: usize,
}

/// A table row: every field in schema order.
pub type Row = Arc<[Value]>;

impl TableStore {
    fn new(store: RocksStore, cache_max: usize) -> TableStore {
        TableStore { store, cache: Mutex::new(FxHashMap::default()), cache_max: cache_max.max(1) }
    }

    /// The row for `key`; `None` when the table has no such key.
    pub fn get(&self, key: &[u8]) -> Result<Option<Row>, String> {
        let mut cache = self.cache.lock().expect("table cache");
        if let Some(row) = cache.get(key) {
            return Ok(row.clone());
        }
        let row = match self.store.get(key).map_err(|e| e.to_string())? {
            None => None,
            Some(bytes) => Some(Row::from(Value::decode_all(&bytes).ok_or("a stored table row is corrupt")?)),
        };
        if cache.len() >= self.cache_max {
            // Bounded: start again (the keys in use come back first).
            cache.clear();
        }
        cache.insert(key.to_vec(), row.clone());
        Ok(row)
    }

    /// Stores rows (`None`: deleted); their cached copies go.
    fn write(&self, ops: &Ops) -> crate::state::Result<()> {
        self.store.write(ops)?;
        let mut cache = self.cache.lock().expect("table cache");
        for k in ops.keys() {
            cache.remove(k);
        }
        Ok(())
    }
}

/// A table being loaded and followed: its source and its store.
pub struct Table {
    pub plan: Arc<TablePlan>,
    source: Box<dyn Source>,
    pub store: Arc<TableStore>,
    /// Rows read and rows that failed to decode (logged, counted, never stored).
    pub rows: u64,
    pub bad: u64,
    ended: bool,
}

impl Table {
    /// Records read and records skipped since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.rows), std::mem::take(&mut self.bad))
    }

    /// Opens table `plan` with an empty store in `dir` (anything there is from an earlier run).
    pub fn open(plan: Arc<TablePlan>, dir: &Path, shared: &RocksShared, job: &JobPlan) -> anyhow::Result<Table> {
        let (name, spec, group) = (&plan.name, &plan.spec, &job.group);
        let source: Box<dyn Source> = if let Some(k) = &spec.kafka {
            // Every partition, from the beginning, up to the end offsets found now; then
            // followed from there (`follow`).
            Box::new(KafkaSource::new(name, &Self::kafka_spec(k, group, name, true), group, 0, 1)?)
        } else if let Some(f) = &spec.file {
            Box::new(FileSource::new(name, job.resolve(&f.path)))
        } else if let Some(d) = &spec.datagen {
            Box::new(DatagenSource::new(d.clone()))
        } else {
            bail!("table {name} has no kind");
        };
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let store = RocksStore::open(dir, shared)?;
        let store = Arc::new(TableStore::new(store, job.max_cached_keys));
        Ok(Table { plan, source, store, rows: 0, bad: 0, ended: false })
    }

    /// A table's topic read by its own consumer group, which never commits: the topic is the
    /// table, read from the beginning at every start.
    fn kafka_spec(k: &KafkaSourceSpec, group: &str, name: &str, bounded: bool) -> KafkaSourceSpec {
        KafkaSourceSpec {
            start_from: weir_crds::StartFrom::Earliest,
            bounded,
            group: Some(format!("{group}.table.{name}")),
            ..k.clone()
        }
    }

    /// Reads until the table has caught up with its source (the end of a file or generated
    /// rows, or every partition's end offset as found at start), before streams may look it
    /// up; a Kafka table is then followed from there.
    pub fn load(&mut self, group: &str) -> anyhow::Result<()> {
        self.source.start()?;
        let started = Instant::now();
        let mut last_log = Instant::now();
        while !self.ended {
            self.poll(Duration::from_millis(50))?;
            if last_log.elapsed() >= Duration::from_secs(10) {
                last_log = Instant::now();
                tracing::info!(table = %self.plan.name, rows = self.rows, "loading table");
            }
        }
        tracing::info!(table = %self.plan.name, rows = self.rows, bad = self.bad,
            seconds = started.elapsed().as_secs_f64(), "table loaded");
        if let Some(k) = &self.plan.spec.kafka {
            let name = &self.plan.name;
            let mut follow = KafkaSource::new(name, &Self::kafka_spec(k, group, name, false), group, 0, 1)?;
            for (p, pos) in self.source.next_positions() {
                follow.seek(p, pos)?;
            }
            follow.start()?;
            self.source = Box::new(follow);
            self.ended = false;
        }
        Ok(())
    }

    /// Applies what the source has now (waiting at most `wait`); returns the records read.
    pub fn poll(&mut self, wait: Duration) -> anyhow::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        let polled = self.source.poll(crate::runtime::MAX_POLL, wait)?;
        let mut n = 0;
        for (_, recs) in polled.batches {
            n += recs.len();
            self.apply(&recs)?;
        }
        if self.source.finished() {
            self.ended = true;
        }
        Ok(n)
    }

    fn apply(&mut self, recs: &Records) -> anyhow::Result<()> {
        let decoded = self.plan.decoder.decode(recs);
        // A tombstone is an empty record, which does not decode: its key says what to delete.
        let tombstones: FxHashMap<u32, &[u8]> = recs.tombstones.iter().map(|(i, k)| (*i, k.as_slice())).collect();
        let errors: Vec<&(u32, String)> = decoded.errors.iter().filter(|(i, _)| !tombstones.contains_key(i)).collect();
        if let Some((i, e)) = errors.first() {
            self.bad += errors.len() as u64;
            tracing::warn!(table = %self.plan.name, position = recs.positions[*i as usize],
                "{} table record(s) failed to decode and were skipped; first error: {e}", errors.len());
        }
        let rows = &decoded.rows;
        let cols: Vec<Col> =
            rows.columns().iter().map(|a| Col::new(a).expect("decoded columns have engine types")).collect();
        let key_col = cols[self.plan.key_col];
        // Each record's row (records that failed to decode have none), to apply them in order.
        let mut row_of: Vec<Option<usize>> = vec![None; recs.len()];
        match &decoded.kept {
            Some(kept) => kept.iter().enumerate().for_each(|(row, &i)| row_of[i as usize] = Some(row)),
            None => row_of.iter_mut().enumerate().for_each(|(i, r)| *r = Some(i)),
        }
        let mut ops = Ops::default();
        let mut value = Vec::new();
        for (i, row) in row_of.into_iter().enumerate() {
            if let Some(k) = tombstones.get(&(i as u32)) {
                match self.tombstone_key(k) {
                    Some(key) => {
                        ops.insert(key, None);
                    }
                    None => {
                        self.bad += 1;
                        tracing::warn!(table = %self.plan.name, position = recs.positions[i],
                            "a tombstone's message key is not a {} key; skipped", self.plan.key_type);
                    }
                }
                continue;
            }
            let Some(row) = row else { continue };
            if key_col.is_null(row) {
                self.bad += 1;
                continue;
            }
            let mut key = Vec::new();
            key_col.encode_key(row, &mut key);
            value.clear();
            for c in &cols {
                c.value(row).encode(&mut value);
            }
            ops.insert(key, Some(value.clone()));
        }
        self.rows += recs.len() as u64;
        self.store.write(&ops).map_err(|e| anyhow::anyhow!("table {}: {e}", self.plan.name))?;
        Ok(())
    }

    /// The stored key of a tombstone's message key: the key field's value as text, as a Kafka
    /// sink writes it (and as a compacted topic is usually keyed).
    fn tombstone_key(&self, message_key: &[u8]) -> Option<Vec<u8>> {
        let text = std::str::from_utf8(message_key).ok()?;
        let value = match self.plan.key_type {
            DataType::Utf8 => Value::Str(text.to_string()),
            DataType::Int64 => Value::I64(text.trim().parse().ok()?),
            _ => return None,
        };
        let mut key = Vec::new();
        value.encode(&mut key);
        Some(key)
    }
}
