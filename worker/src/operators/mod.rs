//! Operators of a task's dataflow. Each step of the pipeline compiles to a chain of them.

pub mod select;
pub mod window;

use crate::batch::Batch;
use crate::state::{StateError, StateTx};

/// What an operator can fail with while processing.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{operator}: evaluating `{expr}`: {source}")]
    Eval { operator: String, expr: String, source: datafusion::error::DataFusionError },
    #[error("{operator}: {source}")]
    State { operator: String, source: StateError },
    #[error("{operator}: building output: {source}")]
    Arrow { operator: String, source: datafusion::arrow::error::ArrowError },
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
}
