//! `enrich`: adds a side-input table's fields to each row, looked up by the row's `by` field.
//!
//! The table is the worker's (see `table.rs`); the operator keeps no state of its own, so it
//! adds nothing to checkpoints. A row whose key the table lacks goes on with nulls, is dropped,
//! or goes to the dead-letter sink (`enrich.missing`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use weir_crds::MissingKey;

use super::{late_record, OpCtx, OpError, Operator, Rejected};
use crate::batch::Batch;
use crate::state::StateError;
use crate::table::{TablePlan, TableStore};
use crate::value::{Col, ColumnBuilder, Value};

/// A planned enrich step.
#[derive(Clone)]
pub struct EnrichPlan {
    /// Index of the table among the pipeline's tables.
    pub table: usize,
    /// Column of the key in the input.
    pub by: usize,
    /// Each added field: its column in the table's rows.
    pub columns: Vec<usize>,
    pub missing: MissingKey,
    pub out_schema: SchemaRef,
}

impl EnrichPlan {
    /// The input's fields, then each added field (`(output name, table field)`), nullable.
    pub fn output_schema(input: &Schema, table: &TablePlan, added: &[(String, String)]) -> SchemaRef {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        let ts = table.decoder.schema();
        for (out, f) in added {
            let t = ts
                .field_with_name(f)
                .map(|f| f.data_type().clone())
                .unwrap_or(datafusion::arrow::datatypes::DataType::Utf8);
            fields.push(Field::new(out, t, true));
        }
        Arc::new(Schema::new(fields))
    }
}

pub struct EnrichOp {
    name: String,
    plan: EnrichPlan,
    table: Arc<TableStore>,
    table_name: String,
    key: Vec<u8>,
    rejected: Rejected,
}

impl EnrichOp {
    pub fn new(name: &str, plan: EnrichPlan, table: Arc<TableStore>, table_name: &str) -> EnrichOp {
        EnrichOp {
            name: name.to_string(),
            plan,
            table,
            table_name: table_name.to_string(),
            key: Vec::new(),
            rejected: Rejected::default(),
        }
    }

    fn remote_failed(&self, e: String) -> OpError {
        OpError::External {
            operator: self.name.clone(),
            message: format!("looking keys up in table {}: {e}", self.table_name),
        }
    }

    fn corrupt(&self, e: String) -> OpError {
        OpError::state(&self.name, StateError::Corrupt(format!("table {}: {e}", self.table_name)))
    }
}

impl Operator for EnrichOp {
    fn on_batch(&mut self, batch: Batch, _: &mut OpCtx) -> Result<Option<Batch>, OpError> {
        let n = batch.num_rows();
        let by_array = batch.rows.column(self.plan.by).clone();
        let by = Col::new(&by_array).expect("input columns have engine types");
        let out_fields = self.plan.out_schema.fields();
        let first_added = batch.rows.num_columns();
        let mut builders: Vec<ColumnBuilder> =
            out_fields[first_added..].iter().map(|f| ColumnBuilder::new(f.data_type())).collect();
        let mut keep: Vec<bool> = Vec::with_capacity(n);
        // Every row's key once, back to back (`None`: a null key).
        self.key.clear();
        let spans: Vec<Option<(usize, usize)>> = (0..n)
            .map(|row| {
                (!by.is_null(row)).then(|| {
                    let start = self.key.len();
                    by.encode_key(row, &mut self.key);
                    (start, self.key.len())
                })
            })
            .collect();
        let keys = &self.key;
        if self.table.is_remote() {
            // A Redis table: the batch's keys fetched together, in pipelines.
            let wanted = spans.iter().flatten().map(|&(s, e)| &keys[s..e]);
            self.table.prefetch(wanted).map_err(|e| self.remote_failed(e))?;
        }
        for (row, span) in spans.iter().enumerate() {
            let found = match span {
                None => None,
                Some((s, e)) => {
                    let found = self.table.lookup(&keys[*s..*e], batch.event_time.value(row));
                    found.map_err(|e| if self.table.is_remote() { self.remote_failed(e) } else { self.corrupt(e) })?
                }
            };
            match found {
                Some(values) => {
                    for (b, &c) in builders.iter_mut().zip(&self.plan.columns) {
                        b.push(values.get(c).ok_or_else(|| self.corrupt("a stored row is too short".into()))?);
                    }
                    keep.push(true);
                }
                None if self.plan.missing == MissingKey::Null => {
                    for b in builders.iter_mut() {
                        b.push(&Value::Null);
                    }
                    keep.push(true);
                }
                None => {
                    if self.plan.missing == MissingKey::DeadLetter {
                        let reason = match by.value(row) {
                            Value::Null => format!(
                                "`{}` is null: no key to look up in table {}",
                                self.plan.out_schema.field(self.plan.by).name(),
                                self.table_name
                            ),
                            Value::Str(s) => format!("table {} has no row for key {s:?}", self.table_name),
                            Value::I64(n) => format!("table {} has no row for key {n}", self.table_name),
                            other => format!("table {} has no row for key {other:?}", self.table_name),
                        };
                        self.rejected.dead.push((reason, late_record(&self.name, &batch, row)?));
                    } else {
                        self.rejected.dropped += 1;
                    }
                    keep.push(false);
                }
            }
        }
        let kept = keep.iter().filter(|k| **k).count();
        let arrow = |source| OpError::Arrow { operator: self.name.clone(), source };
        let batch = match kept == n {
            true => batch,
            false => batch.filter(&BooleanArray::from(keep)).map_err(arrow)?,
        };
        if kept == 0 {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = batch.rows.columns().to_vec();
        columns.extend(builders.iter_mut().map(ColumnBuilder::finish));
        debug_assert!(columns.iter().all(|c| c.len() == kept));
        let rows = RecordBatch::try_new(self.plan.out_schema.clone(), columns).map_err(arrow)?;
        // The rows are derived now: sinks write them, not the records as read.
        Ok(Some(Batch { raw: None, ..batch.with_rows(rows) }))
    }

    fn take_rejected(&mut self) -> Option<Rejected> {
        let empty = self.rejected.dead.is_empty() && self.rejected.dropped == 0;
        (!empty).then(|| std::mem::take(&mut self.rejected))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::metrics::Metrics;
    use crate::plan::JobPlan;
    use crate::sink::file::FileSink;
    use crate::source::Records;
    use crate::state::{MemStore, RocksShared};
    use crate::table::Table;
    use crate::task::{Sinks, Task};

    /// Runs `records` through a job whose `enriched` step reads table `merchants` (a file of
    /// `table` lines) with `missing`; returns the output and dead-letter lines.
    fn run(table: &str, records: &[&str], missing: &str) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        run_with(table, "", records, missing)
    }

    /// `run`, with `versions` (`{field: ..}` or empty) on the table.
    fn run_with(
        table: &str,
        versions: &str,
        records: &[&str],
        missing: &str,
    ) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("merchants.jsonl"), table).unwrap();
        let job = format!(
            r#"
spec:
  pipeline:
    sources:
      payments:
        file: {{path: unused.jsonl}}
        schema: {{id: string, mid: long, ts: timestamp}}
        eventTime: {{field: ts}}
    tables:
      merchants:
        file: {{path: merchants.jsonl}}
        key: mid
        schema: {{mid: long, name: string, risk: double, from: timestamp}}
        {versions}
    streams:
      enriched:
        from: payments
        enrich: {{table: merchants, on: mid, missing: {missing}}}
    deadLetter: dead
    sinks:
      out: {{from: enriched, file: {{path: out.jsonl}}}}
      dead: {{file: {{path: dead.jsonl}}}}
"#
        );
        let m = weir_crds::Manifest::from_yaml(&job, "enrich").unwrap();
        let plan = Arc::new(JobPlan::new(&m, dir.path()).unwrap());
        let mut t =
            Table::open(plan.tables[0].clone(), &dir.path().join("t"), &RocksShared::new(1 << 20, 1 << 20), &plan)
                .unwrap();
        t.load(&plan.group).unwrap();
        let metrics = Arc::new(Metrics::new("enrich"));
        let mut task = Task::open(plan, 0, Box::new(MemStore::default()), metrics.clone(), &[t.store.clone()]).unwrap();
        let sink = |name: &str| -> Box<dyn crate::sink::Sink> {
            Box::new(FileSink::create(name, &dir.path().join(format!("{name}.jsonl")), false).unwrap())
        };
        let mut sinks = Sinks::new(vec![sink("dead"), sink("out")], vec!["dead".into(), "out".into()], metrics, None);
        let mut recs = Records::default();
        for (i, r) in records.iter().enumerate() {
            recs.push(r.as_bytes(), i as i64, 0);
        }
        task.process(0, recs, &mut sinks).unwrap();
        task.end_source(0, &mut sinks).unwrap();
        sinks.flush().unwrap();
        let read = |name: &str| -> Vec<serde_json::Value> {
            let text = std::fs::read_to_string(dir.path().join(format!("{name}.jsonl"))).unwrap_or_default();
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        };
        (read("out"), read("dead"))
    }

    const TABLE: &str = r#"{"mid": 1, "name": "old", "risk": 0.5}
{"mid": 2, "name": "two"}
not json
{"name": "no key"}
{"mid": 1, "name": "one", "risk": 0.25}
"#;
    const PAYMENTS: [&str; 4] = [
        r#"{"id": "a", "mid": 1, "ts": 1000}"#,
        r#"{"id": "b", "mid": 3, "ts": 1001}"#,
        r#"{"id": "c", "mid": 2, "ts": 1002}"#,
        r#"{"id": "d", "ts": 1003}"#,
    ];

    #[test]
    fn rows_get_the_latest_table_row_and_missing_keys_go_on_with_nulls() {
        let (out, dead) = run(TABLE, &PAYMENTS, "null");
        let row = |id: &str, mid: serde_json::Value, name: serde_json::Value, risk: serde_json::Value| {
            let mut o = serde_json::json!({"id": id, "ts": 1000 + (id.as_bytes()[0] - b'a') as i64});
            for (k, v) in [("mid", mid), ("name", name), ("risk", risk)] {
                if !v.is_null() {
                    o[k] = v;
                }
            }
            o
        };
        use serde_json::{json, Value::Null};
        assert_eq!(
            out,
            [
                row("a", json!(1), json!("one"), json!(0.25)),
                row("b", json!(3), Null, Null),
                row("c", json!(2), json!("two"), Null),
                row("d", Null, Null, Null),
            ]
        );
        assert!(dead.is_empty());
    }

    #[test]
    fn a_versioned_table_answers_as_of_each_events_time() {
        // Rows of merchant 1 taking effect at 500, 1000 and 2000 (read out of order), of
        // merchant 2 at 100 and 4000 (then 100 is more than the 3 s retention behind 4000, but
        // the last row before that horizon stays).
        let table = r#"{"mid": 1, "name": "b", "from": 1000}
{"mid": 1, "name": "c", "from": 2000}
{"mid": 1, "name": "a", "from": 500}
{"mid": 2, "name": "x", "from": 100}
{"mid": 2, "name": "y", "from": 4000}
{"mid": 2, "name": "no time"}
"#;
        let at = |id: &str, mid: u32, ts: i64| format!(r#"{{"id": "{id}", "mid": {mid}, "ts": {ts}}}"#);
        let payments = [
            at("p1", 1, 400),
            at("p2", 1, 500),
            at("p3", 1, 1999),
            at("p4", 1, 9000),
            at("p5", 2, 150),
            at("p6", 2, 4000),
        ];
        let payments: Vec<&str> = payments.iter().map(String::as_str).collect();
        let (out, _) = run_with(table, "versions: {field: from, retention: 3s}", &payments, "null");
        let names: Vec<(&str, Option<&str>)> =
            out.iter().map(|r| (r["id"].as_str().unwrap(), r["name"].as_str())).collect();
        assert_eq!(
            names,
            [
                ("p1", None),
                ("p2", Some("a")),
                ("p3", Some("b")),
                ("p4", Some("c")),
                ("p5", Some("x")),
                ("p6", Some("y"))
            ]
        );
        // Retention: merchant 1's rows at 500 and 1000 go once a row at 5000 comes; the row at
        // 2000, the last at or before the horizon (5000 - 3 s), stays.
        let table = format!("{table}{}\n", r#"{"mid": 1, "name": "d", "from": 5000}"#);
        let (out, _) = run_with(&table, "versions: {field: from, retention: 3s}", &payments[..4], "null");
        let names: Vec<Option<&str>> = out.iter().map(|r| r["name"].as_str()).collect();
        assert_eq!(names, [None, None, None, Some("d")]);
        let p3 = &out[2];
        assert!(p3["name"].is_null(), "the rows before 2000 were dropped: {p3}");
    }

    #[test]
    fn missing_keys_are_dropped_or_sent_to_the_dead_letter_with_the_reason() {
        let (out, dead) = run(TABLE, &PAYMENTS, "drop");
        let ids: Vec<&str> = out.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert!(dead.is_empty());
        let (out, dead) = run(TABLE, &PAYMENTS, "deadLetter");
        assert_eq!(out.len(), 2);
        let reasons: Vec<&str> = dead.iter().map(|d| d["error"].as_str().unwrap()).collect();
        assert_eq!(
            reasons,
            ["table merchants has no row for key 3", "`mid` is null: no key to look up in table merchants"]
        );
        assert_eq!(dead[0]["record"], PAYMENTS[1], "the record as read");
        assert_eq!(dead[0]["source"], "enriched");
    }
}
