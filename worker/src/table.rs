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
//!
//! A table with `versions` keeps each key's rows by the time they take effect, and a lookup
//! takes the row in effect at the looking-up event's time (a temporal join, as Flink's
//! `FOR SYSTEM_TIME AS OF`), without waiting for rows that have not arrived yet.
//!
//! A Redis table is not loaded: the keys a batch needs are fetched from Redis together (see
//! [`TableStore::prefetch`]) and reused for the table's `cacheTtl`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use datafusion::arrow::datatypes::DataType;
use rustc_hash::FxHashMap;
use weir_crds::{FieldType, KafkaSourceSpec, TableSpec};

use crate::codec::Decoder;
use crate::plan::JobPlan;
use crate::sink::redis::{Connection, Reply};
use crate::source::datagen::DatagenSource;
use crate::source::file::FileSource;
use crate::source::kafka::KafkaSource;
use crate::source::{Records, Source};
use crate::state::{Ops, RocksShared, RocksStore, StateStore};
use crate::value::{Col, Value};

/// A table as planned: its decoder and where its key is.
pub struct TablePlan {
    pub name: String,
    pub spec: TableSpec,
    pub fields: BTreeMap<String, FieldType>,
    pub decoder: Arc<Decoder>,
    /// Column of the key in decoded rows, and its type.
    pub key_col: usize,
    pub key_type: DataType,
    /// `versions`: the column of their time, and their retention (ms).
    pub time_col: Option<usize>,
    pub retention: Option<i64>,
}

impl TablePlan {
    /// The plan of table `name`; `Err` when its schema cannot be read from its registry.
    pub fn new(name: &str, spec: &TableSpec) -> Result<TablePlan, String> {
        let fields = weir_crds::table_fields(spec);
        let decoder = Arc::new(Decoder::new(spec.format, spec.registry.as_ref(), spec.kafka.as_ref(), &fields)?);
        let key_col = decoder.schema().index_of(&spec.key).unwrap_or(0);
        let key_type = decoder.schema().field(key_col).data_type().clone();
        let time_col = spec.versions.as_ref().and_then(|v| decoder.schema().index_of(&v.field).ok());
        let retention = spec.versions.as_ref().map(|v| v.retention.millis().unwrap_or(0) as i64);
        Ok(TablePlan {
            name: name.to_string(),
            spec: spec.clone(),
            fields,
            decoder,
            key_col,
            key_type,
            time_col,
            retention,
        })
    }

    /// Column of field `name` in the stored rows (every field, in schema order).
    pub fn column(&self, name: &str) -> Option<usize> {
        self.decoder.schema().index_of(name).ok()
    }
}

/// A table's rows on one worker: key (the engine's key encoding) to the row's values, with
/// the rows (and absences) looked up recently decoded in memory in front. A versioned table
/// stores each row under its key and time (`key|time`, times in order).
pub struct TableStore {
    /// Where a loaded table's rows are; none for a Redis table.
    store: Option<RocksStore>,
    versioned: bool,
    /// A Redis table: keys looked up there, not in `store`.
    remote: Option<RedisLookup>,
    /// Each key's rows, and when they were fetched from Redis (cached copies of a Redis table
    /// expire; a local table's are dropped when it writes the key).
    cache: Mutex<FxHashMap<Vec<u8>, Cached>>,
    cache_max: usize,
}

/// A key's rows as cached, and when they were fetched from Redis.
type Cached = (Option<Versions>, Option<Instant>);

/// Where a Redis table's keys are looked up.
struct RedisLookup {
    conn: Mutex<Connection>,
    prefix: String,
    ttl: Duration,
    decoder: Arc<Decoder>,
    table: String,
}

/// Keys asked of Redis in one pipeline at most (the bound on requests in flight).
const REDIS_BATCH: usize = 1_000;

/// A table row: every field in schema order.
pub type Row = Arc<[Value]>;

/// A key's rows by the time they take effect, oldest first (one at `i64::MIN` when the table
/// keeps no versions).
pub type Versions = Arc<[(i64, Row)]>;

/// `key|time`: where a versioned table keeps the row of `key` taking effect at `time` (the
/// time's sign bit flipped, so that byte order is time order).
fn version_key(key: &[u8], time: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 8);
    k.extend_from_slice(key);
    k.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// The time of a `key|time` entry.
fn version_time(entry: &[u8]) -> Option<i64> {
    let t: [u8; 8] = entry.get(entry.len().checked_sub(8)?..)?.try_into().ok()?;
    Some((u64::from_be_bytes(t) ^ (1 << 63)) as i64)
}

impl TableStore {
    fn new(store: Option<RocksStore>, versioned: bool, remote: Option<RedisLookup>, cache_max: usize) -> TableStore {
        TableStore { store, versioned, remote, cache: Mutex::new(FxHashMap::default()), cache_max: cache_max.max(1) }
    }

    /// A loaded table's RocksDB store: only loaded tables are written and read there.
    fn local(&self) -> &RocksStore {
        self.store.as_ref().expect("a loaded table has a store")
    }

    /// Whether lookups go to Redis (and a batch's keys should be fetched first, together).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// A Redis table: fetches the keys that the cache lacks or holds expired, in pipelines of
    /// at most [`REDIS_BATCH`]; a local table has nothing to fetch.
    pub fn prefetch<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Result<(), String> {
        let Some(r) = &self.remote else { return Ok(()) };
        let mut wanted: Vec<&[u8]> = {
            let cache = self.cache.lock().expect("table cache");
            let fresh = |k: &[u8]| cache.get(k).is_some_and(|(_, at)| at.is_some_and(|t| t.elapsed() < r.ttl));
            keys.into_iter().filter(|k| !fresh(k)).collect()
        };
        wanted.sort_unstable();
        wanted.dedup();
        for chunk in wanted.chunks(REDIS_BATCH) {
            // The Redis key: the prefix and the key's value as text.
            let text = |key: &[u8]| match Value::decode(key) {
                Some((Value::Str(s), _)) => s,
                Some((Value::I64(n), _)) => n.to_string(),
                Some((other, _)) => format!("{other:?}"),
                None => String::new(),
            };
            let names: Vec<String> = chunk.iter().map(|k| format!("{}{}", r.prefix, text(k))).collect();
            let replies = {
                let mut conn = r.conn.lock().expect("redis connection");
                for name in &names {
                    conn.send(&[b"GET", name.as_bytes()])?;
                }
                conn.replies()?
            };
            // The values found, decoded together against the table's schema.
            let mut recs = Records::default();
            let mut found = Vec::new();
            let mut rows: Vec<Option<Versions>> = vec![None; chunk.len()];
            for (i, reply) in replies.into_iter().enumerate() {
                match reply {
                    Reply::Bulk(Some(v)) => {
                        recs.push(&v, i as i64, 0);
                        found.push(i);
                    }
                    Reply::Bulk(None) => {}
                    Reply::Error(e) => return Err(format!("Redis: {e}")),
                    other => return Err(format!("Redis answered GET with {other:?}")),
                }
            }
            let decoded = r.decoder.decode(&recs)?;
            if let Some((i, e)) = decoded.errors.first() {
                tracing::warn!(table = %r.table, key = %names[found[*i as usize]],
                    "{} Redis value(s) are not JSON objects of the table's schema (taken as missing); first: {e}",
                    decoded.errors.len());
            }
            let cols: Vec<Col> = decoded.rows.columns().iter().map(|a| Col::new(a).expect("engine types")).collect();
            let kept: Vec<u32> = decoded.kept.unwrap_or_else(|| (0..recs.len() as u32).collect());
            for (row, &rec) in kept.iter().enumerate() {
                let values: Row = cols.iter().map(|c| c.value(row)).collect::<Vec<_>>().into();
                rows[found[rec as usize]] = Some(Arc::from([(i64::MIN, values)]));
            }
            let now = Some(Instant::now());
            let mut cache = self.cache.lock().expect("table cache");
            if cache.len() + chunk.len() > self.cache_max {
                cache.clear();
            }
            for (key, versions) in chunk.iter().zip(rows) {
                cache.insert(key.to_vec(), (versions, now));
            }
        }
        Ok(())
    }

    /// The row of `key` in effect at `time`: the latest one taking effect at or before it (any
    /// time when the table keeps no versions); `None` when there is none.
    pub fn lookup(&self, key: &[u8], time: i64) -> Result<Option<Row>, String> {
        let Some(versions) = self.versions(key)? else { return Ok(None) };
        let at = versions.partition_point(|(t, _)| *t <= time);
        Ok(at.checked_sub(1).map(|i| versions[i].1.clone()))
    }

    /// Every row of `key`, oldest first.
    fn versions(&self, key: &[u8]) -> Result<Option<Versions>, String> {
        if self.remote.is_some() {
            for _ in 0..2 {
                if let Some((v, _)) = self.cache.lock().expect("table cache").get(key) {
                    return Ok(v.clone());
                }
                // Not fetched with its batch (the cache started again meanwhile): alone.
                self.prefetch([key])?;
            }
            return Err("a key fetched from Redis did not stay in the cache".into());
        }
        let mut cache = self.cache.lock().expect("table cache");
        if let Some((v, _)) = cache.get(key) {
            return Ok(v.clone());
        }
        let decode = |bytes: &[u8]| -> Result<Row, String> {
            Ok(Row::from(Value::decode_all(bytes).ok_or("a stored table row is corrupt")?))
        };
        let versions: Option<Versions> = if self.versioned {
            let stored = self.stored_versions(key)?;
            let rows = stored
                .iter()
                .map(|(k, v)| Ok((version_time(k).ok_or("a stored table key is corrupt")?, decode(v)?)))
                .collect::<Result<Vec<_>, String>>()?;
            (!rows.is_empty()).then(|| rows.into())
        } else {
            match self.local().get(key).map_err(|e| e.to_string())? {
                None => None,
                Some(bytes) => Some(Arc::from([(i64::MIN, decode(&bytes)?)])),
            }
        };
        if cache.len() >= self.cache_max {
            // Bounded: start again (the keys in use come back first).
            cache.clear();
        }
        cache.insert(key.to_vec(), (versions.clone(), None));
        Ok(versions)
    }

    /// The stored `key|time` entries of `key`, in time order.
    fn stored_versions(&self, key: &[u8]) -> Result<Vec<Entry>, String> {
        let mut end = key.to_vec();
        end.extend_from_slice(&[0xff; 9]);
        self.local().scan(key, &end, usize::MAX).map_err(|e| e.to_string())
    }

    /// Applies `ops` (`None`: deleted) on `keys`, whose cached copies go.
    fn write(&self, ops: &Ops, keys: impl IntoIterator<Item = Vec<u8>>) -> crate::state::Result<()> {
        self.local().write(ops)?;
        let mut cache = self.cache.lock().expect("table cache");
        for k in keys {
            cache.remove(&k);
        }
        Ok(())
    }
}

/// A stored `key|time` entry and its row's bytes.
type Entry = (Vec<u8>, Vec<u8>);

/// One table record's effect on its key.
enum Change {
    Put(i64, Vec<u8>),
    DeleteAll,
}

/// A table being loaded and followed: its source and its store.
pub struct Table {
    pub plan: Arc<TablePlan>,
    /// What the table is read from; none for a Redis table (looked up, never loaded).
    source: Option<Box<dyn Source>>,
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
        let mut remote = None;
        let source: Option<Box<dyn Source>> = if let Some(k) = &spec.kafka {
            // Every partition, from the beginning, up to the end offsets found now; then
            // followed from there (`follow`).
            Some(Box::new(KafkaSource::new(name, &Self::kafka_spec(k, group, name, true), group, 0, 1)?))
        } else if let Some(f) = &spec.file {
            Some(Box::new(FileSource::new(name, job.resolve(&f.path))))
        } else if let Some(d) = &spec.datagen {
            Some(Box::new(DatagenSource::new(d.clone())))
        } else if let Some(r) = &spec.redis {
            let conn = Connection::open(&r.url).map_err(|e| anyhow::anyhow!("table {name}: {e}"))?;
            remote = Some(RedisLookup {
                conn: Mutex::new(conn),
                prefix: r.key_prefix.clone().unwrap_or_default(),
                ttl: Duration::from_millis(r.cache_ttl.millis().unwrap_or(0)),
                decoder: plan.decoder.clone(),
                table: name.clone(),
            });
            None
        } else {
            bail!("table {name} has no kind");
        };
        // A loaded table's store, in `dir` (emptied first); a Redis table keeps nothing here.
        let store = match remote {
            Some(_) => None,
            None => {
                if dir.exists() {
                    std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
                }
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                Some(RocksStore::open(dir, shared)?)
            }
        };
        let store = Arc::new(TableStore::new(store, spec.versions.is_some(), remote, job.max_cached_keys));
        let ended = source.is_none();
        Ok(Table { plan, source, store, rows: 0, bad: 0, ended })
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
        let Some(source) = self.source.as_mut() else { return Ok(()) };
        source.start()?;
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
            for (p, pos) in self.source.as_ref().map(|s| s.next_positions()).unwrap_or_default() {
                follow.seek(p, pos)?;
            }
            follow.start()?;
            self.source = Some(Box::new(follow));
            self.ended = false;
        }
        Ok(())
    }

    /// Applies what the source has now (waiting at most `wait`); returns the records read.
    pub fn poll(&mut self, wait: Duration) -> anyhow::Result<usize> {
        let Some(source) = self.source.as_mut().filter(|_| !self.ended) else { return Ok(0) };
        let polled = source.poll(crate::runtime::MAX_POLL, wait)?;
        let finished = source.finished();
        let mut n = 0;
        for (_, recs) in polled.batches {
            n += recs.len();
            self.apply(&recs)?;
        }
        if finished {
            self.ended = true;
        }
        Ok(n)
    }

    fn apply(&mut self, recs: &Records) -> anyhow::Result<()> {
        let decoded = self.plan.decoder.decode(recs).map_err(|e| anyhow::anyhow!("table {}: {e}", self.plan.name))?;
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
        let time_col = self.plan.time_col.map(|c| cols[c]);
        // Each key's changes, in record order.
        let mut changes: FxHashMap<Vec<u8>, Vec<Change>> = FxHashMap::default();
        for (i, row) in row_of.into_iter().enumerate() {
            if let Some(k) = tombstones.get(&(i as u32)) {
                match self.tombstone_key(k) {
                    Some(key) => changes.entry(key).or_default().push(Change::DeleteAll),
                    None => {
                        self.bad += 1;
                        tracing::warn!(table = %self.plan.name, position = recs.positions[i],
                            "a tombstone's message key is not a {} key; skipped", self.plan.key_type);
                    }
                }
                continue;
            }
            let Some(row) = row else { continue };
            let time = match time_col {
                None => i64::MIN,
                Some(c) if c.is_null(row) => {
                    self.bad += 1;
                    continue;
                }
                Some(Col::I64(a)) => a.value(row),
                Some(_) => {
                    // Validation allows only timestamp and long fields.
                    self.bad += 1;
                    continue;
                }
            };
            if key_col.is_null(row) {
                self.bad += 1;
                continue;
            }
            let mut key = Vec::new();
            key_col.encode_key(row, &mut key);
            let mut value = Vec::new();
            for c in &cols {
                c.value(row).encode(&mut value);
            }
            changes.entry(key).or_default().push(Change::Put(time, value));
        }
        self.rows += recs.len() as u64;
        let mut ops = Ops::default();
        for (key, changes) in &changes {
            match self.plan.retention {
                None => Self::latest(key, changes, &mut ops),
                Some(retention) => self.versioned(key, changes, retention, &mut ops)?,
            }
        }
        self.store.write(&ops, changes.into_keys()).map_err(|e| anyhow::anyhow!("table {}: {e}", self.plan.name))?;
        Ok(())
    }

    /// A table without versions: the key's last change wins.
    fn latest(key: &[u8], changes: &[Change], ops: &mut Ops) {
        match changes.last() {
            Some(Change::Put(_, v)) => ops.insert(key.to_vec(), Some(v.clone())),
            Some(Change::DeleteAll) => ops.insert(key.to_vec(), None),
            None => None,
        };
    }

    /// A versioned table: the key's stored rows and `changes` merged (a tombstone deletes every
    /// row of the key), then the rows `retention` or more older than the newest dropped, except
    /// the last of them (so that a lookup up to `retention` before the newest row finds the
    /// row in effect then).
    fn versioned(&self, key: &[u8], changes: &[Change], retention: i64, ops: &mut Ops) -> anyhow::Result<()> {
        let stored = self.store.stored_versions(key).map_err(|e| anyhow::anyhow!("table {}: {e}", self.plan.name))?;
        // Time -> the new row, or `None` for a stored row left as it is.
        let mut rows: BTreeMap<i64, Option<&Vec<u8>>> =
            stored.iter().filter_map(|(k, _)| version_time(k)).map(|t| (t, None)).collect();
        let stored_times: Vec<i64> = rows.keys().copied().collect();
        for c in changes {
            match c {
                Change::Put(t, v) => {
                    rows.insert(*t, Some(v));
                }
                Change::DeleteAll => rows.clear(),
            }
        }
        if let Some(&newest) = rows.keys().next_back() {
            let horizon = newest.saturating_sub(retention);
            // Lookups at or after the horizon need only the last row at or before it.
            let old: Vec<i64> = rows.range(..=horizon).map(|(t, _)| *t).collect();
            for t in old.iter().rev().skip(1) {
                rows.remove(t);
            }
        }
        for t in stored_times.iter().filter(|t| !rows.contains_key(t)) {
            ops.insert(version_key(key, *t), None);
        }
        for (t, v) in rows {
            if let Some(v) = v {
                ops.insert(version_key(key, t), Some(v.clone()));
            }
        }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::value::Col;

    #[test]
    fn versioned_lookups_equal_a_reference_over_many_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // 30,000 rows (several polls of the file) for 20 keys at random times, some times
        // repeated (the later row replaces the earlier one).
        let mut lines = String::new();
        let mut reference: BTreeMap<i64, BTreeMap<i64, i64>> = BTreeMap::new();
        for n in 0..30_000i64 {
            let (k, t) = (rng.random_range(0..20i64), rng.random_range(0..100_000i64));
            lines.push_str(&format!("{{\"k\": {k}, \"t\": {t}, \"n\": {n}}}\n"));
            reference.entry(k).or_default().insert(t, n);
        }
        std::fs::write(dir.path().join("t.jsonl"), lines).unwrap();
        let retention = 20_000;
        for rows in reference.values_mut() {
            let horizon = rows.keys().next_back().unwrap() - retention;
            let old: Vec<i64> = rows.range(..=horizon).map(|(t, _)| *t).collect();
            for t in old.iter().rev().skip(1) {
                rows.remove(t);
            }
        }
        let job = r#"
spec:
  pipeline:
    sources: {s: {file: {path: unused.jsonl}, schema: {k: long}}}
    tables:
      t:
        file: {path: t.jsonl}
        key: k
        schema: {k: long, t: long, n: long}
        versions: {field: t, retention: 20s}
    sinks: {out: {from: s, file: {path: o.jsonl}}}
"#;
        let m = weir_crds::Manifest::from_yaml(job, "t").unwrap();
        let plan = JobPlan::new(&m, dir.path()).unwrap();
        let shared = RocksShared::new(1 << 20, 1 << 20);
        let mut table = Table::open(plan.tables[0].clone(), &dir.path().join("store"), &shared, &plan).unwrap();
        table.load(&plan.group).unwrap();
        let store = Arc::clone(&table.store);
        let n_col = plan.tables[0].column("n").unwrap();
        for _ in 0..20_000 {
            let (k, at) = (rng.random_range(0..21i64), rng.random_range(-1_000..110_000i64));
            let want = reference.get(&k).and_then(|rows| rows.range(..=at).next_back().map(|(_, n)| *n));
            let mut key = Vec::new();
            let arr: datafusion::arrow::array::ArrayRef = Arc::new(datafusion::arrow::array::Int64Array::from(vec![k]));
            Col::new(&arr).unwrap().encode_key(0, &mut key);
            let got = store.lookup(&key, at).unwrap().map(|row| match row[n_col] {
                Value::I64(n) => n,
                ref other => panic!("n is {other:?}"),
            });
            assert_eq!(got, want, "key {k} at {at}");
        }
        let stored = store.local().scan(&[], &[0xff; 16], usize::MAX).unwrap().len();
        let kept: usize = reference.values().map(BTreeMap::len).sum();
        assert_eq!(stored, kept, "rows past the retention are dropped");
    }
}
