//! The Cassandra sink (the scylla driver, which speaks CQL to Apache Cassandra): each row upserted
//! into a table whose primary key is the stream's key fields (partition key) and, for window
//! results, `window_start` (clustering column), e.g. `((card_id), window_start)`, optionally
//! `USING TTL`. A replay after recovery writes the same primary keys again, so the table
//! converges to the results of an exactly-once run and never double-counts.
//!
//! Rows are grouped by partition key into unlogged batches (one partition each: a single
//! mutation on the replicas) of at most `BATCH_ROWS`, sent at every epoch's end with up to
//! `CONCURRENCY` in flight; batches that fail are retried with backoff while the task waits.
//! With `createTable` the keyspace (SimpleStrategy) and the table are created from the rows'
//! fields; else the existing table must have every field.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::BinaryArray;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue};
use weir_crds::CassandraSinkSpec;

use super::{append_key, retrying, Result, Sink, SinkError};
use crate::metrics::Metrics;
use crate::value::{Col, Value};

/// Rows per unlogged batch (all of one partition).
const BATCH_ROWS: usize = 100;
/// Batches in flight at once.
const CONCURRENCY: usize = 32;
/// Rows buffered before they are sent without waiting for the epoch's end.
const MAX_PENDING: usize = 50_000;

type CqlRow = Vec<Option<CqlValue>>;

/// The table's layout for the rows' schema.
struct Layout {
    schema: SchemaRef,
    insert: PreparedStatement,
    /// Column indexes of the partition key.
    partition: Vec<usize>,
    timestamps: Vec<bool>,
}

pub struct CassandraSink {
    name: String,
    spec: CassandraSinkSpec,
    rt: tokio::runtime::Runtime,
    session: Session,
    layout: Option<Layout>,
    /// Rows to write, by partition key.
    pending: BTreeMap<Vec<u8>, Vec<CqlRow>>,
    pending_rows: usize,
    timestamps: Vec<String>,
    metrics: Arc<Metrics>,
    retry_budget: std::time::Duration,
}

/// The CQL type of an engine column.
fn cql_type(t: &DataType, timestamp: bool) -> &'static str {
    match t {
        DataType::Utf8 => "text",
        DataType::Int64 if timestamp => "timestamp",
        DataType::Int64 => "bigint",
        DataType::Float64 => "double",
        DataType::Boolean => "boolean",
        _ => "blob",
    }
}

impl CassandraSink {
    /// Connects to the contact points; a cluster that cannot be reached is an error naming them.
    pub fn new(
        name: &str,
        spec: &CassandraSinkSpec,
        timestamps: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Result<CassandraSink> {
        let err = |message: String| SinkError::Failed { sink: name.to_string(), message };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| err(format!("starting the Cassandra client's runtime: {e}")))?;
        let session = rt
            .block_on(SessionBuilder::new().known_nodes(&spec.contact_points).build())
            .map_err(|e| err(format!("connecting to Cassandra at {}: {e}", spec.contact_points.join(", "))))?;
        Ok(CassandraSink {
            name: name.to_string(),
            spec: spec.clone(),
            rt,
            session,
            layout: None,
            pending: BTreeMap::new(),
            pending_rows: 0,
            timestamps,
            metrics,
            retry_budget: super::RETRY_BUDGET,
        })
    }

    fn err(&self, message: impl std::fmt::Display) -> SinkError {
        SinkError::Failed { sink: self.name.clone(), message: message.to_string() }
    }

    fn table(&self) -> String {
        format!("{}.{}", self.spec.keyspace, self.spec.table)
    }

    /// Creates or checks the table for rows of `schema`, and prepares the upsert.
    fn layout(&mut self, schema: &SchemaRef, keys: &[usize]) -> Result<Layout> {
        let mut partition: Vec<usize> = keys.to_vec();
        let window = schema.index_of("window_start").ok();
        if partition.is_empty() {
            return Err(self.err("the rows have no key fields for the partition key; write a keyed step (keyBy)"));
        }
        partition.retain(|c| Some(*c) != window);
        let timestamps: Vec<bool> = schema.fields().iter().map(|f| self.timestamps.contains(f.name())).collect();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        if self.spec.create_table {
            let rf = self.spec.replication_factor.unwrap_or(1);
            let ks = format!(
                "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}",
                self.spec.keyspace
            );
            let columns: Vec<String> = schema
                .fields()
                .iter()
                .zip(&timestamps)
                .map(|(f, &ts)| format!("{} {}", f.name(), cql_type(f.data_type(), ts)))
                .collect();
            let pk: Vec<&str> = partition.iter().map(|&c| names[c]).collect();
            let key = match window {
                Some(w) => format!("(({}), {})", pk.join(", "), names[w]),
                None => format!("(({}))", pk.join(", ")),
            };
            let table =
                format!("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY {key})", self.table(), columns.join(", "));
            for cql in [ks, table] {
                self.rt
                    .block_on(self.session.query_unpaged(cql.as_str(), &[]))
                    .map_err(|e| self.err(format!("{cql}: {e}")))?;
            }
            self.rt.block_on(self.session.await_schema_agreement()).map_err(|e| self.err(e))?;
        }
        let mut insert = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.table(),
            names.join(", "),
            vec!["?"; names.len()].join(", ")
        );
        if let Some(ttl) = &self.spec.ttl {
            insert.push_str(&format!(" USING TTL {}", ttl.millis().unwrap_or(0) / 1000));
        }
        // Preparing checks the table has every column with a fitting type.
        let insert = self.rt.block_on(self.session.prepare(insert.as_str())).map_err(|e| {
            self.err(format!(
                "table {} does not fit the rows ({}): {e}; set createTable or create it",
                self.table(),
                names.join(", ")
            ))
        })?;
        Ok(Layout { schema: schema.clone(), insert, partition, timestamps })
    }

    /// Sends every pending row; batches that fail stay pending and are retried.
    fn send(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (name, metrics, budget) = (self.name.clone(), self.metrics.clone(), self.retry_budget);
        retrying(&name, "writing to Cassandra", &metrics, budget, || self.try_send())?;
        self.pending_rows = 0;
        Ok(())
    }

    fn try_send(&mut self) -> std::result::Result<(), String> {
        let Some(layout) = &self.layout else { return Ok(()) };
        let mut batches: Vec<(Vec<u8>, Vec<CqlRow>)> = Vec::new();
        for (key, mut rows) in std::mem::take(&mut self.pending) {
            // Moved into batches of BATCH_ROWS, the last first (rows of a key commute: upserts of
            // distinct primary keys, or of one key in a batch's order).
            while rows.len() > BATCH_ROWS {
                let tail = rows.split_off(rows.len() - BATCH_ROWS);
                batches.push((key.clone(), tail));
            }
            batches.push((key, rows));
        }
        let session = &self.session;
        let insert = &layout.insert;
        let outcomes: Vec<(Vec<u8>, Vec<CqlRow>, Option<String>)> = self.rt.block_on(
            futures::stream::iter(batches)
                .map(|(key, rows)| async move {
                    let mut batch = Batch::new(BatchType::Unlogged);
                    for _ in &rows {
                        batch.append_statement(insert.clone());
                    }
                    let failed = session.batch(&batch, &rows).await.err().map(|e| e.to_string());
                    (key, rows, failed)
                })
                .buffer_unordered(CONCURRENCY)
                .collect(),
        );
        let mut first = None;
        for (key, rows, failed) in outcomes {
            if let Some(e) = failed {
                first.get_or_insert(e);
                self.pending.entry(key).or_default().extend(rows);
            }
        }
        match first {
            None => Ok(()),
            Some(e) => Err(format!("{} partitions not written: {e}", self.pending.len())),
        }
    }
}

impl Sink for CassandraSink {
    fn write_rows(&mut self, rows: &RecordBatch, keys: &[usize], _raw: Option<&BinaryArray>) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        if self.layout.as_ref().is_none_or(|l| l.schema != rows.schema()) {
            self.layout = Some(self.layout(&rows.schema(), keys)?);
        }
        let layout = self.layout.as_ref().expect("laid out above");
        let cols: Vec<Col> = rows.columns().iter().map(|c| Col::new(c).expect("engine types")).collect();
        let part: Vec<Col> = layout.partition.iter().map(|&c| cols[c]).collect();
        let mut key = Vec::new();
        for row in 0..rows.num_rows() {
            let values: CqlRow = cols
                .iter()
                .zip(&layout.timestamps)
                .map(|(c, &ts)| match c.value(row) {
                    Value::Null => None,
                    Value::Str(s) => Some(CqlValue::Text(s)),
                    Value::I64(x) if ts => Some(CqlValue::Timestamp(CqlTimestamp(x))),
                    Value::I64(x) => Some(CqlValue::BigInt(x)),
                    Value::F64(x) => Some(CqlValue::Double(x)),
                    Value::Bool(b) => Some(CqlValue::Boolean(b)),
                })
                .collect();
            key.clear();
            append_key(&part, row, &mut key);
            self.pending.entry(key.clone()).or_default().push(values);
            self.pending_rows += 1;
        }
        if self.pending_rows >= MAX_PENDING {
            self.send()?;
        }
        Ok(())
    }

    fn write_records(&mut self, _records: &[Vec<u8>]) -> Result<()> {
        Err(self.err("a Cassandra sink takes rows, not late events or dead letters"))
    }

    fn flush(&mut self) -> Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_types_map_to_cql_types() {
        assert_eq!(cql_type(&DataType::Int64, true), "timestamp");
        assert_eq!(cql_type(&DataType::Int64, false), "bigint");
        assert_eq!(cql_type(&DataType::Utf8, false), "text");
        assert_eq!(cql_type(&DataType::Float64, false), "double");
        assert_eq!(cql_type(&DataType::Boolean, false), "boolean");
    }
}
