//! The unit that moves through a task's dataflow: typed columns plus, per row, the event time,
//! the watermark in effect when the row arrived, and (while it is still a source record) the
//! record exactly as read, so that late events can be routed unchanged.

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, BooleanArray, Int64Array};
use datafusion::arrow::compute::filter;
use datafusion::arrow::record_batch::RecordBatch;

/// Rows of one partition-task.
#[derive(Clone, Debug)]
pub struct Batch {
    pub rows: RecordBatch,
    /// Event time of each row (epoch ms).
    pub event_time: Int64Array,
    /// Watermark computed from the records before each row (PIPELINE.md: a record is judged
    /// against the watermark of the records before it).
    pub watermark: Int64Array,
    /// The source record of each row; absent once rows are derived (window results).
    pub raw: Option<BinaryArray>,
}

impl Batch {
    pub fn num_rows(&self) -> usize {
        self.rows.num_rows()
    }

    /// Keeps the rows where `mask` is true, in every column and side array.
    pub fn filter(&self, mask: &BooleanArray) -> Result<Batch, datafusion::arrow::error::ArrowError> {
        let rows = datafusion::arrow::compute::filter_record_batch(&self.rows, mask)?;
        let keep = |a: &dyn Array| filter(a, mask);
        Ok(Batch {
            rows,
            event_time: downcast_i64(keep(&self.event_time)?),
            watermark: downcast_i64(keep(&self.watermark)?),
            raw: match &self.raw {
                Some(r) => {
                    Some(keep(r)?.as_any().downcast_ref::<BinaryArray>().expect("filter keeps the array type").clone())
                }
                None => None,
            },
        })
    }

    /// The same rows and side arrays with new columns.
    pub fn with_rows(&self, rows: RecordBatch) -> Batch {
        Batch { rows, event_time: self.event_time.clone(), watermark: self.watermark.clone(), raw: self.raw.clone() }
    }
}

fn downcast_i64(a: ArrayRef) -> Int64Array {
    a.as_any().downcast_ref::<Int64Array>().expect("filter keeps the array type").clone()
}
