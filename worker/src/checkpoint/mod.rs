//! Incremental checkpoints of the partition-tasks' RocksDB state to `checkpointing.storage`.
//!
//! At a checkpoint each task takes a RocksDB checkpoint (hard links into a local folder, taken
//! right after a state commit, so it holds the state with its input positions and watermark);
//! a background thread then uploads the SST files storage does not have yet (SST files are
//! immutable and uniquely named, so unchanged state is never uploaded twice), the small files
//! that describe the database, and last a manifest: a checkpoint exists once its manifest does.
//! Processing goes on meanwhile; a checkpoint due while the previous one still uploads is
//! skipped. The newest `retained` checkpoints are kept; older manifests go first, then every
//! file no kept manifest references.
//!
//! Layout under the storage location: `p<partition>/sst/<file>.sst` and
//! `p<partition>/chk-<id>/{MANIFEST-*, CURRENT, OPTIONS-*, _manifest.json}`.
//!
//! A task whose local state folder is empty (a new node, a lost volume) restores the newest
//! checkpoint before it opens.

pub mod manifest;
pub mod storage;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

pub use self::manifest::CheckpointManifest;
use self::storage::{Storage, StorageError};
use crate::metrics::Metrics;
use serde::Serialize;

const MANIFEST: &str = "_manifest.json";

fn chk_prefix(partition: u32, id: u64) -> String {
    format!("p{partition}/chk-{id:020}/")
}

fn sst_key(partition: u32, name: &str) -> String {
    format!("p{partition}/sst/{name}")
}

/// Ids of the completed checkpoints of `partition`, oldest first.
fn completed(storage: &dyn Storage, partition: u32) -> Result<Vec<u64>, StorageError> {
    let prefix = format!("p{partition}/chk-");
    Ok(storage
        .list(&prefix)?
        .iter()
        .filter_map(|k| k.strip_suffix(&format!("/{MANIFEST}"))?.strip_prefix(&prefix)?.parse().ok())
        .collect())
}

fn read_manifest(storage: &dyn Storage, partition: u32, id: u64) -> Result<CheckpointManifest, StorageError> {
    let key = format!("{}{MANIFEST}", chk_prefix(partition, id));
    let bytes = storage.get_bytes(&key)?;
    CheckpointManifest::parse(&bytes, partition, Some(id))
        .map_err(|message| StorageError { location: storage.describe(&key), message })
}

/// Downloads the newest completed checkpoint of `partition` into the empty folder `dir`;
/// returns its manifest, or `None` when there is none. A checkpoint that cannot be restored (an
/// unreadable manifest, a missing file, a file of the wrong size) is reported and the one
/// before it is tried: an older state replays more input, with the same results. It fails,
/// naming every checkpoint's problem, only when none can be restored.
pub fn restore(storage: &dyn Storage, partition: u32, dir: &Path) -> Result<Option<CheckpointManifest>, StorageError> {
    let ids = completed(storage, partition)?;
    let mut failures = Vec::new();
    for &id in ids.iter().rev() {
        match restore_one(storage, partition, id, dir) {
            Ok(m) => {
                if !failures.is_empty() {
                    tracing::warn!(partition, checkpoint = id, "restored an older checkpoint: {}", failures.join("; "));
                }
                return Ok(Some(m));
            }
            Err(e) => {
                tracing::warn!(
                    partition,
                    checkpoint = id,
                    "cannot restore checkpoint {id}: {e}; trying the one before"
                );
                failures.push(format!("checkpoint {id}: {e}"));
            }
        }
    }
    match failures.is_empty() {
        true => Ok(None),
        false => Err(StorageError {
            location: storage.describe(&format!("p{partition}/")),
            message: format!("no checkpoint of partition {partition} can be restored: {}", failures.join("; ")),
        }),
    }
}

/// Downloads checkpoint `id` into `dir` (emptied first) and checks every file's size.
fn restore_one(storage: &dyn Storage, partition: u32, id: u64, dir: &Path) -> Result<CheckpointManifest, StorageError> {
    let m = read_manifest(storage, partition, id)?;
    let local = |e: std::io::Error| StorageError { location: dir.display().to_string(), message: e.to_string() };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(local)?;
    }
    std::fs::create_dir_all(dir).map_err(local)?;
    let keys = m.sst.iter().map(|n| (n, sst_key(partition, n)));
    let keys = keys.chain(m.files.iter().map(|n| (n, format!("{}{n}", chk_prefix(partition, id)))));
    for (name, key) in keys {
        let path = dir.join(name);
        storage.get_to_file(&key, &path)?;
        if let Some(&want) = m.sizes.get(name) {
            let got = std::fs::metadata(&path).map_err(local)?.len();
            if got != want {
                return Err(StorageError {
                    location: storage.describe(&key),
                    message: format!("{got} bytes where the checkpoint recorded {want}"),
                });
            }
        }
    }
    Ok(m)
}

fn savepoint_prefix(id: &str, partition: u32) -> String {
    format!("savepoints/{id}/p{partition}/")
}

/// Savepoint `savepoint` as a storage of its own (keys `p<partition>/…`): a location
/// (`s3://…/savepoints/<id>`, as listed in a job's status) or the id of one under `root`.
pub fn savepoint_storage(root: &Arc<dyn Storage>, savepoint: &str) -> Result<Arc<dyn Storage>, StorageError> {
    if savepoint.contains("://") {
        Ok(Arc::from(storage::open(savepoint)?))
    } else {
        Ok(Arc::new(storage::Scoped::new(root.clone(), &format!("savepoints/{savepoint}"))))
    }
}

/// Downloads the savepoint in `savepoint` (see [`savepoint_storage`]) of `partition` into the
/// empty folder `dir`; `None` when the savepoint has no such partition, or when a checkpoint of
/// the partition in `checkpoints` is newer (taken after the restore, by a worker that then
/// failed, or by the previous deployment after the savepoint before it stopped): restoring the
/// newest state replays the least input, and exactly-once recovery makes either give the same
/// results.
pub fn restore_savepoint(
    savepoint: &dyn Storage,
    checkpoints: &dyn Storage,
    partition: u32,
    dir: &Path,
) -> Result<Option<CheckpointManifest>, StorageError> {
    let prefix = format!("p{partition}/");
    let key = format!("{prefix}{MANIFEST}");
    if !savepoint.list(&key)?.contains(&key) {
        return Ok(None);
    }
    let bytes = savepoint.get_bytes(&key)?;
    let m = CheckpointManifest::parse(&bytes, partition, None)
        .map_err(|message| StorageError { location: savepoint.describe(&key), message })?;
    if let Some(&newest) = completed(checkpoints, partition)?.last() {
        if read_manifest(checkpoints, partition, newest)?.created_ms > m.created_ms {
            return Ok(None);
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| StorageError { location: dir.display().to_string(), message: e.to_string() })?;
    for name in m.sst.iter().chain(&m.files) {
        let (key, path) = (format!("{prefix}{name}"), dir.join(name));
        savepoint.get_to_file(&key, &path)?;
        let got = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if m.sizes.get(name).is_some_and(|&want| want != got) {
            return Err(StorageError {
                location: savepoint.describe(&key),
                message: format!("{got} bytes where the savepoint recorded {}", m.sizes[name]),
            });
        }
    }
    Ok(Some(m))
}

/// Progress of the savepoints a worker was asked for: per id, the partitions done, and the
/// first error.
#[derive(Default)]
pub struct SavepointStatus {
    pub requested: Option<String>,
    pub progress: BTreeMap<String, SavepointProgress>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SavepointProgress {
    pub partitions: Vec<u32>,
    pub done: Vec<u32>,
    pub error: Option<String>,
    pub location: String,
}

impl SavepointProgress {
    pub fn state(&self) -> &'static str {
        match (&self.error, self.done.len() >= self.partitions.len() && !self.partitions.is_empty()) {
            (Some(_), _) => "failed",
            (None, true) => "completed",
            (None, false) => "in-progress",
        }
    }
}

pub type Savepoints = Arc<std::sync::Mutex<SavepointStatus>>;

struct Job {
    partition: u32,
    id: u64,
    /// A savepoint: every file copied under `savepoints/<id>/`, never garbage-collected.
    savepoint: Option<String>,
    dir: PathBuf,
    created_ms: i64,
    started: Instant,
    fingerprint: String,
}

/// Takes checkpoints and uploads them in the background.
pub struct Checkpointer {
    /// The storage root, where savepoints go.
    root: Arc<dyn Storage>,
    /// Where checkpoints go.
    storage: Arc<dyn Storage>,
    local: PathBuf,
    next_id: BTreeMap<u32, u64>,
    in_flight: Arc<AtomicUsize>,
    jobs: Option<mpsc::Sender<Job>>,
    uploader: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

impl Checkpointer {
    /// Checkpoints to `storage`, keeping the newest `retained`, and savepoints under
    /// `savepoints/` of `root`; local snapshots go under `local`.
    pub fn new(
        root: Arc<dyn Storage>,
        storage: Arc<dyn Storage>,
        retained: usize,
        local: PathBuf,
        metrics: Arc<Metrics>,
        savepoints: Savepoints,
    ) -> Checkpointer {
        let (tx, rx) = mpsc::channel::<Job>();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut up = Uploader {
            root: root.clone(),
            storage: storage.clone(),
            retained: retained.max(1),
            uploaded: BTreeMap::new(),
        };
        let (flight, m, sp) = (in_flight.clone(), metrics.clone(), savepoints);
        let uploader = std::thread::Builder::new()
            .name("weir-checkpoint".into())
            .spawn(move || {
                for job in rx {
                    let (partition, id, started) = (job.partition, job.id, job.started);
                    if let Some(name) = job.savepoint.clone() {
                        let result = up.upload_savepoint(job);
                        let mut st = sp.lock().expect("savepoint status");
                        let progress = st.progress.entry(name.clone()).or_default();
                        match result {
                            Ok(()) => progress.done.push(partition),
                            Err(e) => {
                                tracing::warn!(partition, savepoint = %name, "savepoint failed: {e:#}");
                                progress.error.get_or_insert_with(|| format!("partition {partition}: {e:#}"));
                            }
                        }
                        if progress.state() == "completed" {
                            tracing::info!(savepoint = %name, "savepoint completed");
                        }
                        flight.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    match up.upload(job, &m) {
                        Ok(()) => {
                            m.checkpoints.with_label_values(&["completed"]).inc();
                            m.checkpoints_failing.set(0);
                            m.checkpoint_duration.observe(started.elapsed().as_secs_f64());
                            m.last_checkpoint.with_label_values(&[&partition.to_string()]).set(id as i64);
                            let now = chrono::Utc::now().timestamp();
                            m.last_checkpoint_time.with_label_values(&[&partition.to_string()]).set(now);
                            tracing::info!(partition, id, "checkpoint completed");
                        }
                        Err(e) => {
                            m.checkpoints.with_label_values(&["failed"]).inc();
                            m.checkpoints_failing.inc();
                            tracing::warn!(partition, id, "checkpoint failed: {e}");
                        }
                    }
                    flight.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .expect("spawning the checkpoint uploader");
        Checkpointer {
            root,
            storage,
            local,
            next_id: BTreeMap::new(),
            in_flight,
            jobs: Some(tx),
            uploader: Some(uploader),
            metrics,
        }
    }

    /// Whether the previous checkpoint is still uploading.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// Takes the local snapshot of `partition` with `snapshot` (which must create the folder it
    /// is given) and queues its upload.
    pub fn checkpoint(
        &mut self,
        partition: u32,
        fingerprint: &str,
        snapshot: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.queue(partition, fingerprint, None, snapshot)
    }

    /// Like a checkpoint, but a savepoint `name`: self-contained and kept.
    pub fn savepoint(
        &mut self,
        partition: u32,
        fingerprint: &str,
        name: &str,
        snapshot: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.queue(partition, fingerprint, Some(name.to_string()), snapshot)
    }

    /// Where savepoint `name` is stored.
    pub fn savepoint_location(&self, name: &str) -> String {
        self.root.describe(&format!("savepoints/{name}"))
    }

    fn queue(
        &mut self,
        partition: u32,
        fingerprint: &str,
        savepoint: Option<String>,
        snapshot: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let id = match (&savepoint, self.next_id.get(&partition)) {
            (Some(_), _) => 0,
            (None, Some(&id)) => id,
            (None, None) => completed(self.storage.as_ref(), partition)?.last().map_or(1, |last| last + 1),
        };
        if savepoint.is_none() {
            self.next_id.insert(partition, id + 1);
        }
        let tag = savepoint.as_deref().map_or_else(|| format!("chk-{id}"), |n| format!("sp-{n}"));
        let dir = self.local.join(format!("p{partition}-{tag}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&self.local)?;
        snapshot(&dir)?;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let job = Job {
            partition,
            id,
            savepoint,
            dir,
            created_ms: chrono::Utc::now().timestamp_millis(),
            started,
            fingerprint: fingerprint.to_string(),
        };
        if self.jobs.as_ref().is_none_or(|tx| tx.send(job).is_err()) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            anyhow::bail!("the checkpoint uploader stopped");
        }
        Ok(())
    }

    /// Counts a checkpoint that was due but skipped (the previous one still uploading).
    pub fn skipped(&self) {
        self.metrics.checkpoints.with_label_values(&["skipped"]).inc();
    }

    /// Waits until every queued checkpoint is uploaded (or failed).
    pub fn finish(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.uploader.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.finish();
    }
}

struct Uploader {
    /// Where savepoints go (under `savepoints/`).
    root: Arc<dyn Storage>,
    /// Where checkpoints go.
    storage: Arc<dyn Storage>,
    retained: usize,
    /// SST files known to be in storage, per partition (listed once, then kept up to date).
    uploaded: BTreeMap<u32, BTreeSet<String>>,
}

impl Uploader {
    fn upload(&mut self, job: Job, metrics: &Metrics) -> anyhow::Result<()> {
        let p = job.partition;
        if !self.uploaded.contains_key(&p) {
            let prefix = format!("p{p}/sst/");
            let listed = self.storage.list(&prefix)?;
            let have = listed.iter().filter_map(|k| Some(k.strip_prefix(&prefix)?.to_string())).collect();
            self.uploaded.insert(p, have);
        }
        let mut names: Vec<(String, u64)> = Vec::new();
        for entry in std::fs::read_dir(&job.dir)? {
            let entry = entry?;
            names.push((entry.file_name().to_string_lossy().into_owned(), entry.metadata()?.len()));
        }
        names.sort();
        let (mut sst, mut files, mut bytes, mut sent) = (Vec::new(), Vec::new(), 0u64, 0u64);
        let sizes: BTreeMap<String, u64> = names.iter().cloned().collect();
        for (name, len) in names {
            let path = job.dir.join(&name);
            bytes += len;
            if name.ends_with(".sst") {
                let have = self.uploaded.get_mut(&p).expect("listed above");
                if !have.contains(&name) {
                    self.storage.put_file(&sst_key(p, &name), &path)?;
                    have.insert(name.clone());
                    sent += len;
                }
                sst.push(name);
            } else {
                self.storage.put_file(&format!("{}{name}", chk_prefix(p, job.id)), &path)?;
                sent += len;
                files.push(name);
            }
        }
        metrics.checkpoint_bytes.with_label_values(&[&p.to_string()]).inc_by(sent);
        crate::fault::point("checkpoint-uploading");
        let manifest = CheckpointManifest {
            id: job.id,
            partition: p,
            created_ms: job.created_ms,
            sst,
            files,
            bytes,
            fingerprint: job.fingerprint,
            sizes,
        };
        let body = serde_json::to_vec_pretty(&manifest)?;
        self.storage.put_bytes(&format!("{}{MANIFEST}", chk_prefix(p, job.id)), body)?;
        std::fs::remove_dir_all(&job.dir)?;
        self.collect_garbage(p)
    }

    /// Copies every file of the snapshot under `savepoints/<name>/p<partition>/`, manifest last.
    fn upload_savepoint(&mut self, job: Job) -> anyhow::Result<()> {
        let name = job.savepoint.clone().expect("a savepoint job");
        let prefix = savepoint_prefix(&name, job.partition);
        let mut files: Vec<(String, u64)> = Vec::new();
        for entry in std::fs::read_dir(&job.dir)? {
            let entry = entry?;
            files.push((entry.file_name().to_string_lossy().into_owned(), entry.metadata()?.len()));
        }
        files.sort();
        for (f, _) in &files {
            self.root.put_file(&format!("{prefix}{f}"), &job.dir.join(f))?;
        }
        let (sst, other): (Vec<_>, Vec<_>) = files.iter().partition(|(f, _)| f.ends_with(".sst"));
        let manifest = CheckpointManifest {
            id: 0,
            partition: job.partition,
            created_ms: job.created_ms,
            sst: sst.iter().map(|(f, _)| f.clone()).collect(),
            files: other.iter().map(|(f, _)| f.clone()).collect(),
            bytes: files.iter().map(|(_, n)| n).sum(),
            fingerprint: job.fingerprint,
            sizes: files.iter().cloned().collect(),
        };
        self.root.put_bytes(&format!("{prefix}{MANIFEST}"), serde_json::to_vec_pretty(&manifest)?)?;
        std::fs::remove_dir_all(&job.dir)?;
        Ok(())
    }

    /// Drops checkpoints beyond the newest `retained`, then SST files no kept one references.
    fn collect_garbage(&mut self, p: u32) -> anyhow::Result<()> {
        let ids = completed(self.storage.as_ref(), p)?;
        let keep = ids.len().saturating_sub(self.retained);
        for &old in &ids[..keep] {
            let prefix = chk_prefix(p, old);
            // The manifest first: a half-deleted checkpoint is never taken for a complete one.
            self.storage.delete(&format!("{prefix}{MANIFEST}"))?;
            for key in self.storage.list(&prefix)? {
                self.storage.delete(&key)?;
            }
        }
        let mut referenced = BTreeSet::new();
        for &id in &ids[keep..] {
            referenced.extend(read_manifest(self.storage.as_ref(), p, id)?.sst);
        }
        let have = self.uploaded.entry(p).or_default();
        for name in have.clone() {
            if !referenced.contains(&name) {
                self.storage.delete(&sst_key(p, &name))?;
                have.remove(&name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Ops, RocksShared, RocksStore, StateStore};

    fn put(store: &RocksStore, from: u32, to: u32) {
        let ops: Ops = (from..to).map(|i| (format!("key-{i:06}").into_bytes(), Some(vec![b'v'; 200]))).collect();
        store.write(&ops).unwrap();
    }

    fn checkpoint(cp: &mut Checkpointer, store: &RocksStore) {
        cp.checkpoint(0, "f1", |dir| Ok(store.checkpoint(dir)?)).unwrap();
        // One upload at a time, as the runtime does.
        while cp.busy() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn incremental_uploads_retention_and_restore() {
        let (state, remote, local) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let url = format!("file://{}", remote.path().display());
        let root: Arc<dyn Storage> = Arc::from(storage::open(&url).unwrap());
        // Checkpoints in a state generation's folder, savepoints at the root.
        let st: Arc<dyn Storage> = Arc::new(storage::Scoped::new(root.clone(), "gen-a"));
        let metrics = Arc::new(Metrics::new("t"));
        let shared = RocksShared::new(1 << 20, 1 << 20);
        let store = RocksStore::open(state.path(), &shared).unwrap();
        let savepoints = Savepoints::default();
        let mut cp = Checkpointer::new(
            root.clone(),
            st.clone(),
            2,
            local.path().to_path_buf(),
            metrics.clone(),
            savepoints.clone(),
        );
        let mut ssts: Vec<BTreeSet<String>> = Vec::new();
        for round in 0..4 {
            put(&store, round * 1_000, (round + 1) * 1_000);
            checkpoint(&mut cp, &store);
            let ids = completed(st.as_ref(), 0).unwrap();
            let m = read_manifest(st.as_ref(), 0, *ids.last().unwrap()).unwrap();
            assert_eq!((m.id, m.fingerprint.as_str()), (round as u64 + 1, "f1"));
            ssts.push(m.sst.iter().cloned().collect());
        }
        // The second checkpoint references the first one's SST file again (not uploaded twice).
        assert!(ssts[0].is_subset(&ssts[1]) && ssts[1].len() > ssts[0].len(), "{ssts:?}");
        let uploaded = metrics.checkpoint_bytes.with_label_values(&["0"]).get();
        let referenced: u64 = read_manifest(st.as_ref(), 0, 4).unwrap().bytes;
        assert!(
            uploaded < referenced * 2,
            "uploads are incremental: {uploaded} bytes sent, last checkpoint {referenced}"
        );
        // Two kept; nothing in storage that they do not reference.
        assert_eq!(completed(st.as_ref(), 0).unwrap(), vec![3, 4]);
        let age = chrono::Utc::now().timestamp() - metrics.last_checkpoint_time.with_label_values(&["0"]).get();
        assert!((0..60).contains(&age), "the last checkpoint's time is recorded: {age} s ago");
        let kept: BTreeSet<String> =
            [3, 4].iter().flat_map(|&id| read_manifest(st.as_ref(), 0, id).unwrap().sst).collect();
        let stored: BTreeSet<String> =
            st.list("p0/sst/").unwrap().iter().map(|k| k.trim_start_matches("p0/sst/").to_string()).collect();
        assert_eq!(stored, kept);
        assert!(st.list("p0/chk-00000000000000000001/").unwrap().is_empty());
        // Written after the last checkpoint: not in the restored state.
        put(&store, 10_000, 10_010);
        let restored = tempfile::tempdir().unwrap();
        let into = restored.path().join("p0");
        let m = restore(st.as_ref(), 0, &into).unwrap().unwrap();
        assert_eq!(m.id, 4);
        let back = RocksStore::open(&into, &shared).unwrap();
        assert_eq!(back.scan(b"key-", b"key-\xff", 100_000).unwrap().len(), 4_000);
        assert!(back.get(b"key-010000").unwrap().is_none());
        drop(back);
        // The newest checkpoint damaged (a file cut short in storage): the one before it is
        // restored; both damaged: an error that names each problem.
        let remote_file = |id: u64, name: &str| remote.path().join("gen-a").join(chk_prefix(0, id)).join(name);
        let current4 =
            read_manifest(st.as_ref(), 0, 4).unwrap().files.into_iter().find(|f| f.starts_with("MANIFEST")).unwrap();
        let bytes = std::fs::read(remote_file(4, &current4)).unwrap();
        std::fs::write(remote_file(4, &current4), &bytes[..bytes.len() / 2]).unwrap();
        let m = restore(st.as_ref(), 0, &into).unwrap().unwrap();
        assert_eq!(m.id, 3, "the checkpoint before the damaged one");
        let back = RocksStore::open(&into, &shared).unwrap();
        assert_eq!(back.scan(b"key-", b"key-\xff", 100_000).unwrap().len(), 3_000);
        drop(back);
        std::fs::write(remote_file(3, MANIFEST), b"{not json").unwrap();
        let e = restore(st.as_ref(), 0, &into).unwrap_err().to_string();
        assert!(e.contains("no checkpoint of partition 0 can be restored"), "{e}");
        assert!(e.contains("checkpoint 4:") && e.contains("bytes where the checkpoint recorded"), "{e}");
        assert!(e.contains("checkpoint 3:") && e.contains("unreadable manifest"), "{e}");
        std::fs::write(remote_file(4, &current4), &bytes).unwrap();
        assert_eq!(restore(st.as_ref(), 0, &into).unwrap().unwrap().id, 4, "repaired, the newest again");
        assert!(local.path().read_dir().unwrap().next().is_none(), "local snapshots are removed after upload");
        // A savepoint is self-contained and outlives checkpoint retention.
        savepoints
            .lock()
            .unwrap()
            .progress
            .insert("sp1".into(), SavepointProgress { partitions: vec![0], ..Default::default() });
        cp.savepoint(0, "f1", "sp1", |dir| Ok(store.checkpoint(dir)?)).unwrap();
        while cp.busy() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(savepoints.lock().unwrap().progress["sp1"].state(), "completed");
        for _ in 0..3 {
            checkpoint(&mut cp, &store);
        }
        assert!(root.list("gen-a/p0/chk-").unwrap().len() > 1 && root.list("savepoints/sp1/p0/").unwrap().len() > 1);
        let back = tempfile::tempdir().unwrap();
        let sp1 = savepoint_storage(&root, "sp1").unwrap();
        // Checkpoints newer than the savepoint hold newer state: they are restored instead.
        assert!(restore_savepoint(sp1.as_ref(), st.as_ref(), 0, &back.path().join("p0")).unwrap().is_none());
        // Without them (another job's storage, or all expired), the savepoint alone suffices.
        for key in st.list("p0/").unwrap() {
            st.delete(&key).unwrap();
        }
        let m = restore_savepoint(sp1.as_ref(), st.as_ref(), 0, &back.path().join("p0")).unwrap().unwrap();
        assert_eq!(m.fingerprint, "f1");
        // The same savepoint by its location, as a job's status lists it.
        let location = cp.savepoint_location("sp1");
        assert_eq!(location, format!("{url}/savepoints/sp1"));
        let by_location = savepoint_storage(&root, &location).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let m = restore_savepoint(by_location.as_ref(), st.as_ref(), 0, elsewhere.path()).unwrap().unwrap();
        assert_eq!(m.fingerprint, "f1");
        let sp = RocksStore::open(&back.path().join("p0"), &shared).unwrap();
        assert_eq!(sp.scan(b"key-", b"key-\xff", 100_000).unwrap().len(), 4_010, "the state when it was taken");
        let nope = savepoint_storage(&root, "nope").unwrap();
        assert!(restore_savepoint(nope.as_ref(), st.as_ref(), 0, &back.path().join("x")).unwrap().is_none());
        assert!(restore(st.as_ref(), 1, &restored.path().join("p1")).unwrap().is_none());
    }

    #[test]
    fn storage_locations_are_checked() {
        for (url, needle) in [
            ("file://relative/path", "absolute path"),
            ("s3://", "needs a bucket"),
            ("gs://bucket", "expected file:///path or s3://bucket/prefix"),
        ] {
            let e = storage::open(url).err().unwrap().to_string();
            assert!(e.contains(needle), "{url}: {e}");
        }
    }
}
