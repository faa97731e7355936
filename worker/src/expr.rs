//! SQL expressions (`where`, `select`, aggregate arguments) compiled once into DataFusion
//! physical expressions and evaluated over whole batches.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

/// A compiled expression and the type it produces.
#[derive(Clone, Debug)]
pub struct CompiledExpr {
    pub text: String,
    pub expr: Arc<dyn PhysicalExpr>,
    pub data_type: DataType,
}

/// Compiles expressions against input schemas; holds the function registry.
pub struct ExprCompiler {
    ctx: SessionContext,
}

impl Default for ExprCompiler {
    fn default() -> Self {
        ExprCompiler { ctx: SessionContext::new() }
    }
}

impl ExprCompiler {
    /// Parses and plans `sql` over `schema`, with type coercion; the error says what is wrong.
    pub fn compile(&self, sql: &str, schema: &SchemaRef) -> Result<CompiledExpr, String> {
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let logical = self.ctx.parse_sql_expr(sql, &df_schema).map_err(|e| clean(e.to_string()))?;
        let expr = self.ctx.create_physical_expr(logical, &df_schema).map_err(|e| clean(e.to_string()))?;
        let data_type = expr.data_type(schema.as_ref()).map_err(|e| clean(e.to_string()))?;
        let data_type = match data_type {
            // Integer literals and arithmetic widen to the engine's column types.
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => DataType::Int64,
            DataType::Float32 => DataType::Float64,
            DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
            t => t,
        };
        Ok(CompiledExpr { text: sql.to_string(), expr, data_type })
    }
}

impl CompiledExpr {
    /// Evaluates over every row of `batch`, cast to the engine's column type.
    pub fn eval(&self, batch: &RecordBatch) -> datafusion::error::Result<ArrayRef> {
        let arr = self.expr.evaluate(batch)?.into_array(batch.num_rows())?;
        if arr.data_type() == &self.data_type {
            Ok(arr)
        } else {
            Ok(datafusion::arrow::compute::cast(&arr, &self.data_type)?)
        }
    }

    /// Evaluates a predicate; null counts as false.
    pub fn eval_predicate(&self, batch: &RecordBatch) -> datafusion::error::Result<BooleanArray> {
        let arr = self.eval(batch)?;
        let b = arr
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| datafusion::error::DataFusionError::Plan(format!("`{}` is not a boolean", self.text)))?;
        Ok(if b.null_count() > 0 { datafusion::arrow::compute::prep_null_mask_filter(b) } else { b.clone() })
    }
}

use datafusion::arrow::array::Array;

/// DataFusion errors carry a kind prefix that says nothing to a manifest author.
fn clean(msg: String) -> String {
    msg.trim_start_matches("Error during planning: ")
        .trim_start_matches("Schema error: ")
        .trim_start_matches("SQL error: ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("amount", DataType::Float64, true),
            Field::new("card_id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![Some(50.0), Some(150.0), None])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn predicate_with_coercion_and_nulls() {
        let b = batch();
        let c = ExprCompiler::default();
        let e = c.compile("amount > 100", &b.schema()).unwrap();
        let mask = e.eval_predicate(&b).unwrap();
        assert_eq!(mask, BooleanArray::from(vec![false, true, false]));
    }

    #[test]
    fn projection_types() {
        let b = batch();
        let c = ExprCompiler::default();
        let e = c.compile("n * 2 + 1", &b.schema()).unwrap();
        assert_eq!(e.data_type, DataType::Int64);
        let out = e.eval(&b).unwrap();
        assert_eq!(out.as_any().downcast_ref::<Int64Array>().unwrap().values(), &[3, 5, 7]);
        let u = c.compile("upper(card_id)", &b.schema()).unwrap();
        assert_eq!(u.data_type, DataType::Utf8);
    }

    #[test]
    fn unknown_column_is_a_clear_error() {
        let b = batch();
        let err = ExprCompiler::default().compile("amout > 1", &b.schema()).unwrap_err();
        assert!(err.contains("amout"), "{err}");
    }
}
