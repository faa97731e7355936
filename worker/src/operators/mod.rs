//! Operators of a task's dataflow. Each step of the pipeline compiles to a chain of them.

pub mod enrich;
pub mod join;
pub mod keyed;
pub mod pattern;
pub mod select;
pub mod timers;
pub mod window;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::batch::Batch;
use crate::state::{StateError, StateTx};
use crate::value::ColumnBuilder;

/// What an operator can fail with while processing.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{operator}: evaluating `{expr}`: {source}")]
    Eval { operator: String, expr: String, source: datafusion::error::DataFusionError },
    #[error("{operator}: {source}")]
    State { operator: String, source: StateError },
    #[error("{operator}: building output: {source}")]
    Arrow { operator: String, source: datafusion::arrow::error::ArrowError },
    /// An external system the operator reads (a Redis table) failed.
    #[error("{operator}: {message}")]
    External { operator: String, message: String },
}

impl OpError {
    pub fn state(operator: &str, source: StateError) -> OpError {
        OpError::State { operator: operator.to_string(), source }
    }

    /// Stored state that does not decode: `what` of `operator`.
    pub fn corrupt(operator: &str, what: &str) -> OpError {
        Self::state(operator, StateError::Corrupt(format!("{what} of {operator}")))
    }
}

/// Result rows being built, column by column, with their event times.
pub struct Output {
    pub builders: Vec<ColumnBuilder>,
    pub event_time: Vec<i64>,
}

impl Output {
    pub fn new(schema: &Schema) -> Output {
        Output {
            builders: schema.fields().iter().map(|f| ColumnBuilder::new(f.data_type())).collect(),
            event_time: Vec::new(),
        }
    }

    /// The rows built, as a batch of `schema` whose rows all carry watermark `wm`.
    pub fn into_batch(mut self, schema: &SchemaRef, operator: &str, wm: i64) -> Result<Batch, OpError> {
        let cols: Vec<ArrayRef> = self.builders.iter_mut().map(ColumnBuilder::finish).collect();
        let rows = RecordBatch::try_new(schema.clone(), cols)
            .map_err(|source| OpError::Arrow { operator: operator.to_string(), source })?;
        let n = rows.num_rows();
        Ok(Batch {
            rows,
            event_time: Int64Array::from(self.event_time),
            watermark: Int64Array::from(vec![wm; n]),
            raw: None,
        })
    }
}

/// Row `row` of `batch` as it goes to a late output: the record as read, or the row as JSON
/// once rows are derived (or when the records were not JSON).
pub fn late_record(operator: &str, batch: &Batch, row: usize) -> Result<Vec<u8>, OpError> {
    if let Some(raw) = &batch.raw {
        return Ok(raw.value(row).to_vec());
    }
    let mut line = crate::codec::encode_json_lines(&batch.rows.slice(row, 1))
        .map_err(|source| OpError::Arrow { operator: operator.to_string(), source })?;
    while line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(line)
}

/// `prefix|k|key`: where a keyed operator stores a key's entry.
pub fn entry_key(prefix: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 1 + key.len());
    k.extend_from_slice(prefix);
    k.push(b'k');
    k.extend_from_slice(key);
    k
}

/// Where an operator sends what it produces besides its main output.
pub struct OpCtx<'a> {
    pub state: &'a mut StateTx,
    /// Source records too late for every window they belong to, unchanged.
    pub late: &'a mut Vec<Vec<u8>>,
}

/// One operator. Lifecycle hooks have no-op defaults.
pub trait Operator: Send {
    /// Processes a batch; returns the rows to pass downstream, if any.
    fn on_batch(&mut self, batch: Batch, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError>;

    /// Processes a batch of input `port` (a join's left input is 0, its right 1).
    fn on_input(&mut self, _port: u8, batch: Batch, ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        self.on_batch(batch, ctx)
    }

    /// The task's watermark advanced to `wm`; returns results that became final.
    fn on_watermark(&mut self, _wm: i64, _ctx: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        Ok(None)
    }

    /// Writes cached state into the epoch's transaction before it commits.
    fn before_commit(&mut self, _ctx: &mut OpCtx) -> Result<(), OpError> {
        Ok(())
    }

    /// True when the operator holds more uncommitted state in memory than its budget allows;
    /// the runtime then commits early, after which the operator can drop what it wrote.
    fn wants_commit(&self) -> bool {
        false
    }

    /// Entries held in memory (for metrics).
    fn cached_keys(&self) -> usize {
        0
    }

    /// Rows the operator turned away since the last call (an enrichment's missing keys).
    fn take_rejected(&mut self) -> Option<Rejected> {
        None
    }

    /// A session window with `sessionState`: the keys whose open session changed since the last
    /// call, each with its latest open session, or closed.
    fn drain_sessions(&mut self, _ctx: &mut OpCtx) -> Result<Option<SessionChanges>, OpError> {
        Ok(None)
    }
}

/// Open sessions that changed: one row per key (the step's result schema: key fields, the
/// session's bounds so far, its aggregates so far), and whether the key has no open session
/// any more (its last one closed and was emitted).
pub struct SessionChanges {
    pub rows: Batch,
    pub closed: Vec<bool>,
}

/// Rows an operator turned away: to the dead-letter sink with a reason, or dropped (counted).
#[derive(Debug, Default)]
pub struct Rejected {
    /// The reason and the row (the record as read, or the row as JSON).
    pub dead: Vec<(String, Vec<u8>)>,
    pub dropped: u64,
}
