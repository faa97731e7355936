//! The Parquet sink: a warehouse table of Parquet files in a folder of S3 or a file system,
//! optionally in sub-folders named from a timestamp field (`date=2026-11-25/`).
//!
//! Each partition-task writes its own files. With exactly-once delivery a file becomes visible
//! only when the epoch that wrote it commits, as a two-phase commit:
//!
//! 1. During an epoch rows go to local files, one per folder, finished when they reach
//!    `maxFileSize`; at the end of the epoch (`flush`) every file is finished and uploaded
//!    under `_staging/<group>/p<partition>/`, with a `.pending` suffix no reader matches.
//! 2. The epoch commits in the task's Kafka transaction, whose input offsets carry the epoch's
//!    number (`weir:epoch=N` in the offset metadata): that commit is the decision.
//! 3. After it, `committed` moves the epoch's files to their final names
//!    (`part-<group>-p<partition>-e<epoch>-<seq>.parquet`).
//!
//! A worker that dies between 2 and 3 leaves staged files of a committed epoch: the next owner
//! of the partition publishes them (`recover`, the committed epoch read back from the offset
//! metadata). Files staged by an epoch that never committed are deleted; its input is read
//! again and its rows written again in a later epoch. Replayed input whose results are already
//! committed writes nothing (the sink is muted, as a Kafka sink is). So every row is in exactly
//! one published file, and a reader never sees a partial file.
//!
//! An upload or a move that fails is retried with backoff for up to ten minutes while the task
//! waits (the store being down stalls the job; nothing is lost), then stops the worker.
//!
//! At-least-once (no Kafka source, or `delivery: at-least-once`), files are published at every
//! epoch's end, under names that carry the worker's start time, so a run never overwrites the
//! files of another.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use weir_crds::{ParquetCompression, ParquetSinkSpec};

use super::{retrying, Result, Sink, SinkError};
use crate::checkpoint::storage::Storage;
use crate::metrics::Metrics;

/// Where staged files wait for their epoch's commit, under the table's folder.
const STAGING: &str = "_staging";
const PENDING: &str = ".pending";
/// Rows per row group: bounds the memory an open file holds.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// The folder of rows whose partition field is null (as Hive names it).
const NULL_FOLDER: &str = "__HIVE_DEFAULT_PARTITION__";

/// What the sink needs from the job around it.
pub struct ParquetContext {
    /// The job's consumer group: part of every file name, so jobs never overwrite each other.
    pub group: String,
    /// The partition-task this sink writes for.
    pub partition: u32,
    /// Integer fields written as timestamps (milliseconds, UTC).
    pub timestamps: Vec<String>,
    /// Files publish when their epoch commits (exactly-once), else at every epoch's end.
    pub exactly_once: bool,
    /// A local folder for files being written.
    pub scratch: PathBuf,
    pub metrics: Arc<Metrics>,
}

struct OpenFile {
    writer: ArrowWriter<std::fs::File>,
    local: PathBuf,
    /// Its final key, relative to the table's folder.
    key: String,
}

/// The schema files are written with, and the columns converted to timestamps.
struct Converted {
    input: SchemaRef,
    output: SchemaRef,
    timestamp_cols: Vec<usize>,
    partition_col: Option<usize>,
}

pub struct ParquetSink {
    name: String,
    storage: Arc<dyn Storage>,
    ctx: ParquetContext,
    /// `partitionBy`: the field and the strftime pattern of folder names.
    partition_by: Option<(String, String)>,
    max_bytes: u64,
    props: WriterProperties,
    /// The file name's middle: `<group>-p<partition>` and, at-least-once, the run.
    stem: String,
    /// The epoch being written (the one after the last committed).
    epoch: u64,
    /// Files of this epoch so far (names are unique within an epoch).
    seq: u32,
    open: BTreeMap<String, OpenFile>,
    /// Final keys of the files staged in this epoch, published when it commits.
    staged: Vec<String>,
    converted: Option<Converted>,
    /// How long a failing upload or publish is retried (the task waits meanwhile).
    retry_budget: std::time::Duration,
}

/// Keeps file names to characters every store and shell takes as they are.
fn safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
}

/// The epoch in a file's key (`…-e<epoch>-<seq>.parquet[.pending]`).
fn epoch_of(key: &str) -> Option<u64> {
    let file = key.rsplit('/').next()?;
    let file = file.strip_suffix(PENDING).unwrap_or(file).strip_suffix(".parquet")?;
    let mut parts = file.rsplitn(3, '-');
    let _seq = parts.next()?;
    parts.next()?.strip_prefix('e')?.parse().ok()
}

impl ParquetSink {
    pub fn new(name: &str, spec: &ParquetSinkSpec, storage: Arc<dyn Storage>, ctx: ParquetContext) -> Result<Self> {
        let err = |message: String| SinkError::Failed { sink: name.to_string(), message };
        let compression = match spec.compression.unwrap_or_default() {
            ParquetCompression::Snappy => Compression::SNAPPY,
            ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
            ParquetCompression::None => Compression::UNCOMPRESSED,
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_created_by(format!("weir-worker {}", env!("CARGO_PKG_VERSION")))
            .build();
        let max_bytes = match &spec.max_file_size {
            Some(s) => weir_crds::parse_size(s).ok_or_else(|| err(format!("maxFileSize `{s}` is not a size")))?,
            None => 128 << 20,
        };
        let partition_by = spec.partition_by.as_ref().map(|p| {
            let format = p.format.clone().unwrap_or_else(|| "date=%Y-%m-%d".into());
            (p.field.clone(), format)
        });
        std::fs::remove_dir_all(&ctx.scratch).ok();
        std::fs::create_dir_all(&ctx.scratch)
            .map_err(|e| err(format!("creating the local folder {}: {e}", ctx.scratch.display())))?;
        let mut stem = format!("{}-p{}", safe(&ctx.group), ctx.partition);
        if !ctx.exactly_once {
            let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            stem.push_str(&format!("-r{}", started.as_millis()));
        }
        Ok(ParquetSink {
            name: name.to_string(),
            storage,
            ctx,
            partition_by,
            max_bytes,
            props,
            stem,
            epoch: 1,
            seq: 0,
            open: BTreeMap::new(),
            staged: Vec::new(),
            converted: None,
            retry_budget: super::RETRY_BUDGET,
        })
    }

    fn err(&self, message: impl std::fmt::Display) -> SinkError {
        SinkError::Failed { sink: self.name.clone(), message: message.to_string() }
    }

    /// This task's staging folder.
    fn staging(&self) -> String {
        format!("{STAGING}/{}/p{}/", safe(&self.ctx.group), self.ctx.partition)
    }

    fn count(&self, outcome: &str, n: usize) {
        self.ctx.metrics.sink_files.with_label_values(&[&self.name, outcome]).inc_by(n as u64);
    }

    /// The output schema for rows of `input`: the timestamp fields as timestamps.
    fn convert_schema(&self, input: &SchemaRef) -> Result<Converted> {
        let mut timestamp_cols = Vec::new();
        let fields: Vec<Field> = input
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if self.ctx.timestamps.iter().any(|t| t == f.name()) && f.data_type() == &DataType::Int64 {
                    timestamp_cols.push(i);
                    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
                    Field::new(f.name(), ts, f.is_nullable())
                } else {
                    f.as_ref().clone()
                }
            })
            .collect();
        let partition_col = match &self.partition_by {
            None => None,
            Some((field, _)) => match input.index_of(field) {
                Ok(i) if input.field(i).data_type() == &DataType::Int64 => Some(i),
                _ => return Err(self.err(format!("the rows have no timestamp field `{field}` to partition by"))),
            },
        };
        Ok(Converted { input: input.clone(), output: Arc::new(Schema::new(fields)), timestamp_cols, partition_col })
    }

    /// The folder of a row whose partition field is `ts`.
    fn folder(&self, ts: Option<i64>) -> String {
        let Some((_, format)) = &self.partition_by else { return String::new() };
        match ts.and_then(chrono::DateTime::from_timestamp_millis) {
            Some(t) => t.format(format).to_string(),
            None => NULL_FOLDER.to_string(),
        }
    }

    /// Appends `rows` (already converted) to the open file of `folder`.
    fn append(&mut self, folder: &str, rows: &RecordBatch) -> Result<()> {
        if !self.open.contains_key(folder) {
            self.seq += 1;
            let file = format!("part-{}-e{}-{:05}.parquet", self.stem, self.epoch, self.seq);
            let key = if folder.is_empty() { file.clone() } else { format!("{folder}/{file}") };
            let local = self.ctx.scratch.join(format!("{}.tmp", self.seq));
            let f =
                std::fs::File::create(&local).map_err(|e| self.err(format!("creating {}: {e}", local.display())))?;
            let writer = ArrowWriter::try_new(f, rows.schema(), Some(self.props.clone()))
                .map_err(|e| self.err(format!("starting a Parquet file: {e}")))?;
            self.open.insert(folder.to_string(), OpenFile { writer, local, key });
        }
        let file = self.open.get_mut(folder).expect("opened above");
        file.writer.write(rows).map_err(|e| SinkError::Failed {
            sink: self.name.clone(),
            message: format!("writing Parquet rows: {e}"),
        })?;
        if (file.writer.bytes_written() + file.writer.in_progress_size()) as u64 >= self.max_bytes {
            let file = self.open.remove(folder).expect("open");
            self.finish(file)?;
        }
        Ok(())
    }

    /// Finishes a file and uploads it: staged (exactly-once) or published.
    fn finish(&mut self, file: OpenFile) -> Result<()> {
        file.writer.close().map_err(|e| self.err(format!("finishing a Parquet file: {e}")))?;
        let bytes = std::fs::metadata(&file.local).map(|m| m.len()).unwrap_or(0);
        let target = match self.ctx.exactly_once {
            true => format!("{}{}{PENDING}", self.staging(), file.key),
            false => file.key.clone(),
        };
        let what = format!("uploading {}", self.storage.describe(&target));
        retrying(&self.name, &what, &self.ctx.metrics, self.retry_budget, || {
            self.storage.put_file(&target, &file.local).map_err(|e| e.to_string())
        })?;
        std::fs::remove_file(&file.local).ok();
        self.ctx.metrics.sink_bytes.with_label_values(&[&self.name]).inc_by(bytes);
        match self.ctx.exactly_once {
            true => {
                self.count("staged", 1);
                self.staged.push(file.key);
            }
            false => self.count("published", 1),
        }
        Ok(())
    }

    /// Publishes staged files (`keys` are final keys).
    fn publish(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            let staged = format!("{}{key}{PENDING}", self.staging());
            let what = format!("publishing {}", self.storage.describe(key));
            retrying(&self.name, &what, &self.ctx.metrics, self.retry_budget, || {
                self.storage.rename(&staged, key).map_err(|e| e.to_string())
            })?;
        }
        self.count("published", keys.len());
        Ok(())
    }
}

impl Sink for ParquetSink {
    fn write_rows(&mut self, rows: &RecordBatch, _keys: &[usize], _raw: Option<&BinaryArray>) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let fits = self.converted.as_ref().is_some_and(|c| c.input == rows.schema());
        if !fits {
            self.converted = Some(self.convert_schema(&rows.schema())?);
        }
        let conv = self.converted.as_ref().expect("converted above");
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        for &c in &conv.timestamp_cols {
            let ts = columns[c].as_primitive::<Int64Type>().reinterpret_cast::<TimestampMillisecondType>();
            columns[c] = Arc::new(ts.with_timezone("UTC"));
        }
        let batch = RecordBatch::try_new(conv.output.clone(), columns).map_err(|e| self.err(e))?;
        let Some(col) = conv.partition_col else { return self.append("", &batch) };
        let ts = rows.column(col).as_primitive::<Int64Type>().clone();
        // Rows by folder, in order; most batches fall into one.
        // A folder is formatted once per run of rows with the same time, not once per row.
        let mut folders: Vec<(String, Vec<u32>)> = Vec::new();
        let mut last: Option<(Option<i64>, usize)> = None;
        for row in 0..ts.len() {
            let t = ts.is_valid(row).then(|| ts.value(row));
            let at = match last {
                Some((lt, at)) if lt == t => at,
                _ => {
                    let folder = self.folder(t);
                    let at = folders.iter().position(|(f, _)| *f == folder).unwrap_or_else(|| {
                        folders.push((folder, Vec::new()));
                        folders.len() - 1
                    });
                    last = Some((t, at));
                    at
                }
            };
            folders[at].1.push(row as u32);
        }
        if let [(folder, _)] = folders.as_slice() {
            return self.append(&folder.clone(), &batch);
        }
        for (folder, idx) in folders {
            let part = take_record_batch(&batch, &UInt32Array::from(idx)).map_err(|e| self.err(e))?;
            self.append(&folder, &part)?;
        }
        Ok(())
    }

    fn write_records(&mut self, _records: &[Vec<u8>]) -> Result<()> {
        Err(self.err("a Parquet sink takes rows, not late events or dead letters"))
    }

    fn flush(&mut self) -> Result<()> {
        for (_, file) in std::mem::take(&mut self.open) {
            self.finish(file)?;
        }
        if !self.ctx.exactly_once {
            self.epoch += 1;
            self.seq = 0;
        }
        Ok(())
    }

    fn commits_with_epoch(&self) -> bool {
        self.ctx.exactly_once
    }

    fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    fn recover(&mut self, committed: Option<u64>) -> Result<()> {
        if !self.ctx.exactly_once {
            return Ok(());
        }
        let staging = self.staging();
        // At start an unreachable store is an error at once (with where it is), not a wait.
        let keys =
            self.storage.list(&staging).map_err(|e| self.err(format!("the table folder cannot be read: {e}")))?;
        let (mut published, mut discarded) = (Vec::new(), 0);
        for staged in keys {
            let Some(key) = staged.strip_prefix(&staging).and_then(|k| k.strip_suffix(PENDING)) else { continue };
            match (epoch_of(key), committed) {
                (Some(e), Some(c)) if e <= c => published.push(key.to_string()),
                _ => {
                    self.storage.delete(&staged).map_err(|e| self.err(e))?;
                    discarded += 1;
                }
            }
        }
        if !published.is_empty() || discarded > 0 {
            tracing::info!(
                sink = self.name,
                partition = self.ctx.partition,
                published = published.len(),
                discarded,
                "finished the staged files of the last run: published those of committed epochs"
            );
        }
        self.publish(&published)?;
        self.count("discarded", discarded);
        self.epoch = committed.map_or(1, |c| c + 1);
        self.seq = 0;
        Ok(())
    }

    fn committed(&mut self) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        self.publish(&staged)?;
        self.epoch += 1;
        self.seq = 0;
        Ok(())
    }
}

impl Drop for ParquetSink {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.ctx.scratch).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::storage;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::path::Path;

    fn sink(root: &Path, exactly_once: bool, spec: ParquetSinkSpec) -> ParquetSink {
        let storage: Arc<dyn Storage> = storage::open(&format!("file://{}", root.display())).unwrap().into();
        let ctx = ParquetContext {
            group: "weir.jobs/x".into(),
            partition: 3,
            timestamps: vec!["window_start".into()],
            exactly_once,
            scratch: root.join("../scratch").join(root.file_name().unwrap()),
            metrics: Arc::new(Metrics::new("t")),
        };
        ParquetSink::new("out", &spec, storage, ctx).unwrap()
    }

    fn rows(cards: &[&str], starts: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("card_id", DataType::Utf8, true),
            Field::new("window_start", DataType::Int64, true),
        ]));
        let cols: Vec<ArrayRef> =
            vec![Arc::new(StringArray::from(cards.to_vec())), Arc::new(Int64Array::from(starts.to_vec()))];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    /// Every published file under `root` with its rows (card, window_start).
    fn published(root: &Path) -> BTreeMap<String, Vec<(String, i64)>> {
        let st = storage::open(&format!("file://{}", root.display())).unwrap();
        let mut out = BTreeMap::new();
        for key in st.list("").unwrap().into_iter().filter(|k| k.ends_with(".parquet")) {
            let f = std::fs::File::open(root.join(&key)).unwrap();
            let mut got = Vec::new();
            for b in ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap() {
                let b = b.unwrap();
                let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
                assert_eq!(b.schema().field(1).data_type(), &ts, "window_start is a timestamp");
                let cards = b.column(0).as_string::<i32>();
                let starts = b.column(1).as_primitive::<TimestampMillisecondType>();
                got.extend((0..b.num_rows()).map(|i| (cards.value(i).to_string(), starts.value(i))));
            }
            out.insert(key, got);
        }
        out
    }

    fn daily() -> ParquetSinkSpec {
        ParquetSinkSpec {
            path: "unused".into(),
            partition_by: Some(weir_crds::PartitionBy { field: "window_start".into(), format: None }),
            ..Default::default()
        }
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn files_appear_in_their_date_folder_only_when_the_epoch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("table");
        let mut s = sink(&root, true, daily());
        s.recover(None).unwrap();
        s.write_rows(&rows(&["a", "b", "c"], &[0, DAY + 5, 60_000]), &[], None).unwrap();
        s.flush().unwrap();
        assert!(s.has_staged());
        assert!(published(&root).is_empty(), "nothing is visible before the commit");
        s.committed().unwrap();
        let files = published(&root);
        let keys: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "date=1970-01-01/part-weir.jobs_x-p3-e1-00001.parquet",
                "date=1970-01-02/part-weir.jobs_x-p3-e1-00002.parquet"
            ]
        );
        assert_eq!(files[keys[0]], [("a".to_string(), 0), ("c".to_string(), 60_000)]);
        assert!(!s.has_staged());
        // The next epoch's files carry its number.
        s.write_rows(&rows(&["d"], &[7]), &[], None).unwrap();
        s.flush().unwrap();
        s.committed().unwrap();
        assert!(published(&root).contains_key("date=1970-01-01/part-weir.jobs_x-p3-e2-00001.parquet"));
    }

    #[test]
    fn recovery_publishes_committed_epochs_and_discards_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("table");
        let mut s = sink(&root, true, daily());
        s.recover(Some(4)).unwrap();
        s.write_rows(&rows(&["a"], &[0]), &[], None).unwrap();
        s.flush().unwrap(); // epoch 5 staged; the worker dies before publishing
        drop(s);
        let mut again = sink(&root, true, daily());
        again.recover(Some(5)).unwrap(); // epoch 5 committed
        assert_eq!(published(&root).len(), 1);
        again.recover(Some(5)).unwrap(); // recovering twice changes nothing
        assert_eq!(published(&root).len(), 1);
        again.write_rows(&rows(&["b"], &[0]), &[], None).unwrap();
        again.flush().unwrap(); // epoch 6 staged, never committed
        drop(again);
        let mut third = sink(&root, true, daily());
        third.recover(Some(5)).unwrap();
        let files = published(&root);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files.values().next().unwrap(), &[("a".to_string(), 0)]);
        let st = storage::open(&format!("file://{}", root.display())).unwrap();
        assert!(st.list("_staging/").unwrap().is_empty(), "the uncommitted epoch's file is gone");
        assert_eq!(third.epoch, 6, "epoch 6 is written again");
    }

    #[test]
    fn files_roll_at_the_size_limit_and_at_least_once_publishes_at_flush() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("table");
        let spec = ParquetSinkSpec { max_file_size: Some("1Ki".into()), ..Default::default() };
        let mut s = sink(&root, false, spec);
        for i in 0..40 {
            let cards: Vec<String> = (0..50).map(|j| format!("card-{i}-{j}-{}", "x".repeat(20))).collect();
            let refs: Vec<&str> = cards.iter().map(String::as_str).collect();
            s.write_rows(&rows(&refs, &[i; 50]), &[], None).unwrap();
        }
        s.flush().unwrap();
        let files = published(&root);
        assert!(files.len() > 2, "rolled by size: {}", files.len());
        assert_eq!(files.values().map(Vec::len).sum::<usize>(), 2000);
        assert!(files.keys().all(|k| k.starts_with("part-weir.jobs_x-p3-r")), "{files:?}");
    }

    #[test]
    fn epochs_read_from_file_names() {
        assert_eq!(epoch_of("date=x/part-g-1-p3-e12-00001.parquet.pending"), Some(12));
        assert_eq!(epoch_of("part-a-e-p0-e7-00002.parquet"), Some(7));
        assert_eq!(epoch_of("part-x.parquet"), None);
    }

    #[test]
    fn rows_without_the_partition_field_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = daily();
        spec.partition_by.as_mut().unwrap().field = "ts".into();
        let mut s = sink(&dir.path().join("t"), true, spec);
        let e = s.write_rows(&rows(&["a"], &[0]), &[], None).unwrap_err().to_string();
        assert!(e.contains("no timestamp field `ts`"), "{e}");
    }
}
