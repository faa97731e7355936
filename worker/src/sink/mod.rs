//! Sinks: `file` (JSON lines), Kafka (one JSON object per message, keyed by the key fields),
//! Redis (upserts under the key fields), Parquet (files published when their epoch commits),
//! OpenSearch (documents indexed under ids made of the key fields) and Cassandra (upserts on the
//! primary key made of the key fields and `window_start`).
//! Rows arrive as batches; late events and dead letters arrive as raw JSON records.

pub mod cassandra;
pub mod file;
pub mod http;
pub mod kafka;
pub mod opensearch;
pub mod parquet;
pub mod redis;
pub mod repartition;

use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, BinaryArray};
use datafusion::arrow::record_batch::RecordBatch;

use crate::value::{Col, Value};

/// Errors of sinks, with the sink's name.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {message}")]
    Failed { sink: String, message: String },
}

pub type Result<T> = std::result::Result<T, SinkError>;

/// An output.
pub trait Sink: Send {
    /// Writes rows; `keys` are the column indexes that form each message's key. When `raw`
    /// is given (rows not yet projected or aggregated), each row is written as read.
    fn write_rows(&mut self, rows: &RecordBatch, keys: &[usize], raw: Option<&BinaryArray>) -> Result<()>;
    /// Writes a batch of rows with their event times; most sinks take only the rows.
    fn write_batch(&mut self, batch: &crate::batch::Batch, keys: &[usize]) -> Result<()> {
        self.write_rows(&batch.rows, keys, batch.raw.as_ref())
    }
    /// The watermark of the rows written (`None`: their input is idle), at every epoch's end;
    /// only a repartition topic passes it on.
    fn watermark(&mut self, _watermark: Option<i64>) -> Result<()> {
        Ok(())
    }
    /// Writes records that are already JSON objects (late events, dead letters).
    fn write_records(&mut self, records: &[Vec<u8>]) -> Result<()>;
    /// Holds the open sessions of a session window (`sessionState`): upserts each changed open
    /// session under its key fields (`keys`), expiring after `expiry_ms`, and removes the keys
    /// whose session closed. Only a Redis sink can (the validation says so).
    fn write_sessions(
        &mut self,
        _rows: &RecordBatch,
        _keys: &[usize],
        _closed: &[bool],
        _expiry_ms: i64,
    ) -> Result<()> {
        Err(SinkError::Failed { sink: "sessionState".into(), message: "only a redis sink holds session state".into() })
    }
    /// Makes everything written so far durable; called before offsets are committed.
    fn flush(&mut self) -> Result<()>;
    /// Whether this sink writes to Kafka (muted while a task replays input whose results an
    /// earlier run already committed).
    fn is_kafka(&self) -> bool {
        false
    }
    /// Time spent waiting for the external system (a full producer queue) since the last call.
    fn take_waited(&mut self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// Whether this sink's output becomes visible when the epoch commits (a two-phase commit:
    /// `flush` stages it, `committed` publishes it); muted during replay as a Kafka sink is.
    fn commits_with_epoch(&self) -> bool {
        false
    }
    /// Whether output is staged for the epoch in progress (it must commit even if no input
    /// was read).
    fn has_staged(&self) -> bool {
        false
    }
    /// At start: finishes what an earlier run left staged, given the last epoch it committed.
    fn recover(&mut self, _committed_epoch: Option<u64>) -> Result<()> {
        Ok(())
    }
    /// The epoch whose output `flush` staged has committed: publishes it.
    fn committed(&mut self) -> Result<()> {
        Ok(())
    }
}

/// How long a sink keeps retrying a failing call before it gives up and stops the worker.
pub const RETRY_BUDGET: Duration = Duration::from_secs(600);

/// Why a call to a sink's system failed: `Transient` failures (the system is down, overloaded,
/// timing out) are retried; `Permanent` ones (the system refuses the request itself: a bad
/// statement, a missing permission) would fail again the same way, so they stop the worker at
/// once with the reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    Transient(String),
    Permanent(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Transient(message)
    }
}

/// Runs `call` on a sink's system until it succeeds, retrying transient failures after 100 ms,
/// doubling up to 10 s between tries, for up to `budget`. The task waits meanwhile, so no input
/// is read (backpressure): an outage of the system stalls the job instead of stopping it.
pub fn retrying<T, E: Into<Failure>>(
    sink: &str,
    what: &str,
    metrics: &crate::metrics::Metrics,
    budget: Duration,
    mut call: impl FnMut() -> std::result::Result<T, E>,
) -> Result<T> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        let e = match call().map_err(Into::into) {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(sink, what, failures, waited = ?started.elapsed(), "sink call succeeded again");
                }
                return Ok(v);
            }
            Err(Failure::Permanent(e)) => {
                metrics.sink_errors.with_label_values(&[sink]).inc();
                return Err(SinkError::Failed {
                    sink: sink.to_string(),
                    message: format!("{what}: {e} (refused; not retried)"),
                });
            }
            Err(Failure::Transient(e)) => e,
        };
        metrics.sink_errors.with_label_values(&[sink]).inc();
        if started.elapsed() + pause > budget {
            return Err(SinkError::Failed {
                sink: sink.to_string(),
                message: format!("{what}: {e} (still failing after {failures} retries in {:?})", started.elapsed()),
            });
        }
        if failures == 0 {
            tracing::warn!(sink, what, error = %e, "sink call failed; retrying with backoff, the task waits");
        }
        failures += 1;
        metrics.sink_retries.with_label_values(&[sink]).inc();
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

/// One sink behind a lock, for several tasks.
pub type SharedSink = std::sync::Arc<std::sync::Mutex<Box<dyn Sink>>>;

/// A sink shared by several tasks.
pub struct Shared(pub SharedSink);

impl Sink for Shared {
    fn write_rows(&mut self, rows: &RecordBatch, keys: &[usize], raw: Option<&BinaryArray>) -> Result<()> {
        self.0.lock().expect("sink lock").write_rows(rows, keys, raw)
    }

    fn write_batch(&mut self, batch: &crate::batch::Batch, keys: &[usize]) -> Result<()> {
        self.0.lock().expect("sink lock").write_batch(batch, keys)
    }

    fn watermark(&mut self, watermark: Option<i64>) -> Result<()> {
        self.0.lock().expect("sink lock").watermark(watermark)
    }

    fn write_records(&mut self, records: &[Vec<u8>]) -> Result<()> {
        self.0.lock().expect("sink lock").write_records(records)
    }

    fn write_sessions(&mut self, rows: &RecordBatch, keys: &[usize], closed: &[bool], expiry_ms: i64) -> Result<()> {
        self.0.lock().expect("sink lock").write_sessions(rows, keys, closed, expiry_ms)
    }

    fn flush(&mut self) -> Result<()> {
        self.0.lock().expect("sink lock").flush()
    }

    fn is_kafka(&self) -> bool {
        self.0.lock().expect("sink lock").is_kafka()
    }

    fn take_waited(&mut self) -> std::time::Duration {
        self.0.lock().expect("sink lock").take_waited()
    }

    fn commits_with_epoch(&self) -> bool {
        self.0.lock().expect("sink lock").commits_with_epoch()
    }

    fn has_staged(&self) -> bool {
        self.0.lock().expect("sink lock").has_staged()
    }

    fn recover(&mut self, committed_epoch: Option<u64>) -> Result<()> {
        self.0.lock().expect("sink lock").recover(committed_epoch)
    }

    fn committed(&mut self) -> Result<()> {
        self.0.lock().expect("sink lock").committed()
    }
}

/// The message key of a row: one key field as its value as a string, several as a JSON array.
pub fn message_key(cols: &[ArrayRef], row: usize) -> Option<Vec<u8>> {
    let json = |v: Value| match v {
        Value::Null => serde_json::Value::Null,
        Value::Str(s) => serde_json::Value::String(s),
        Value::I64(x) => x.into(),
        Value::F64(x) => x.into(),
        Value::Bool(b) => b.into(),
    };
    match cols {
        [] => None,
        [one] => match Col::new(one)?.value(row) {
            Value::Null => None,
            Value::Str(s) => Some(s.into_bytes()),
            Value::I64(x) => Some(x.to_string().into_bytes()),
            Value::F64(x) => Some(x.to_string().into_bytes()),
            Value::Bool(b) => Some(b.to_string().into_bytes()),
        },
        many => {
            let vals: Vec<serde_json::Value> =
                many.iter().map(|c| Col::new(c).map_or(serde_json::Value::Null, |c| json(c.value(row)))).collect();
            Some(serde_json::to_vec(&vals).expect("JSON values serialize"))
        }
    }
}

/// The columns that name a row in an upserting sink (a Redis key, a document id): the
/// `configured` fields, else the stream's key fields and, for window results, `window_start`.
/// `option` names the setting in messages.
pub fn key_columns(
    rows: &RecordBatch,
    keys: &[usize],
    configured: Option<&[String]>,
    option: &str,
) -> std::result::Result<Vec<usize>, String> {
    let schema = rows.schema();
    match configured {
        Some(fields) => fields
            .iter()
            .map(|f| schema.index_of(f).map_err(|_| format!("the rows have no field `{f}` for {option}")))
            .collect(),
        None => {
            let mut cols = keys.to_vec();
            if let Ok(w) = schema.index_of("window_start") {
                if !cols.contains(&w) {
                    cols.push(w);
                }
            }
            match cols.is_empty() {
                true => Err(format!("the rows have no key fields; set {option}")),
                false => Ok(cols),
            }
        }
    }
}

/// Appends the values of `cols` at `row`, joined by `:`, to `out`.
pub fn append_key(cols: &[Col], row: usize, out: &mut Vec<u8>) {
    for (i, c) in cols.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        match c.value(row) {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Str(s) => out.extend_from_slice(s.as_bytes()),
            Value::I64(x) => out.extend_from_slice(x.to_string().as_bytes()),
            Value::F64(x) => out.extend_from_slice(x.to_string().as_bytes()),
            Value::Bool(b) => out.extend_from_slice(b.to_string().as_bytes()),
        }
    }
}

/// A dead-letter record: what failed, where it came from, and the record as read. A record that
/// is not UTF-8 text (binary, or broken) is also given exactly, in base64 (`record_base64`), as
/// `record` can only show it with replacement characters.
pub fn dead_letter(source: &str, partition: u32, position: i64, error: &str, record: &[u8]) -> Vec<u8> {
    let mut letter = serde_json::json!({
        "source": source,
        "partition": partition,
        "position": position,
        "error": error,
        "record": String::from_utf8_lossy(record),
    });
    if std::str::from_utf8(record).is_err() {
        letter["record_base64"] = http::base64(record).into();
    }
    serde_json::to_vec(&letter).expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn calls_are_retried_until_they_succeed_or_the_budget_is_spent() {
        let metrics = crate::metrics::Metrics::new("t");
        let mut calls = 0;
        let got = retrying("s", "uploading", &metrics, Duration::from_secs(5), || {
            calls += 1;
            if calls < 3 {
                Err(format!("down {calls}"))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(got.unwrap(), 3);
        assert_eq!(metrics.sink_retries.with_label_values(&["s"]).get(), 2);
        assert_eq!(metrics.sink_errors.with_label_values(&["s"]).get(), 2);
        let err = retrying("s", "uploading", &metrics, Duration::from_millis(250), || Err::<(), _>("down".to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sink s: uploading: down (still failing after "), "{err}");
        let mut calls = 0;
        let err = retrying("s", "writing", &metrics, Duration::from_secs(5), || {
            calls += 1;
            Err::<(), _>(Failure::Permanent("no such table".into()))
        })
        .unwrap_err()
        .to_string();
        assert_eq!(calls, 1, "a refused request is not retried");
        assert_eq!(err, "sink s: writing: no such table (refused; not retried)");
    }

    #[test]
    fn keys_follow_the_contract() {
        let a: ArrayRef = Arc::new(StringArray::from(vec!["card-1"]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![60_000]));
        assert_eq!(message_key(std::slice::from_ref(&a), 0), Some(b"card-1".to_vec()));
        assert_eq!(message_key(&[a, b], 0), Some(br#"["card-1",60000]"#.to_vec()));
        assert_eq!(message_key(&[], 0), None);
    }

    #[test]
    fn a_dead_letter_keeps_the_exact_bytes_of_a_record_that_is_not_text() {
        let letter: serde_json::Value = serde_json::from_slice(&dead_letter("p", 2, 41, "bad", b"{\"a\": 1")).unwrap();
        assert_eq!(letter["record"], "{\"a\": 1");
        assert!(letter.get("record_base64").is_none());
        let binary = [0u8, 0, 0, 0, 7, 0xff, b'x'];
        let letter: serde_json::Value = serde_json::from_slice(&dead_letter("p", 2, 42, "bad", &binary)).unwrap();
        assert_eq!(letter["record_base64"], "AAAAAAf/eA==");
        assert_eq!((letter["partition"].as_u64(), letter["position"].as_i64()), (Some(2), Some(42)));
    }
}
