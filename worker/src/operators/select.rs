//! Stateless steps: `where` (a predicate) and `select` (a projection), both compiled once.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::{OpCtx, OpError, Operator};
use crate::batch::Batch;
use crate::expr::CompiledExpr;

/// Keeps rows where the predicate is true.
pub struct Filter {
    pub name: String,
    pub predicate: CompiledExpr,
}

impl Operator for Filter {
    fn on_batch(&mut self, batch: Batch, _: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        let mask = self.predicate.eval_predicate(&batch.rows).map_err(|source| OpError::Eval {
            operator: self.name.clone(),
            expr: self.predicate.text.clone(),
            source,
        })?;
        if mask.true_count() == batch.num_rows() {
            return Ok(Some(batch));
        }
        let out = batch.filter(&mask).map_err(|source| OpError::Arrow { operator: self.name.clone(), source })?;
        Ok((out.num_rows() > 0).then_some(out))
    }
}

/// Computes new columns from expressions.
pub struct Project {
    pub name: String,
    pub exprs: Vec<(String, CompiledExpr)>,
    pub schema: SchemaRef,
}

impl Project {
    pub fn new(name: String, exprs: Vec<(String, CompiledExpr)>) -> Project {
        let fields: Vec<Field> = exprs.iter().map(|(n, e)| Field::new(n, e.data_type.clone(), true)).collect();
        Project { name, exprs, schema: Arc::new(Schema::new(fields)) }
    }
}

impl Operator for Project {
    fn on_batch(&mut self, batch: Batch, _: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        let cols = self
            .exprs
            .iter()
            .map(|(_, e)| {
                e.eval(&batch.rows).map_err(|source| OpError::Eval {
                    operator: self.name.clone(),
                    expr: e.text.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rows = RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(|source| OpError::Arrow { operator: self.name.clone(), source })?;
        Ok(Some(Batch { raw: None, ..batch.with_rows(rows) }))
    }
}
