//! The Cassandra sink (the scylla driver, which speaks CQL to Apache Cassandra): each row upserted
//! into a table whose primary key is the stream's key fields (partition key) and, for window
//! results, `window_start` (clustering column), e.g. `((card_id), window_start)`, optionally
//! `USING TTL`. A replay after recovery writes the same primary keys again, so the table
//! converges to the results of an exactly-once run and never double-counts.
//!
//! Rows are grouped by partition key into unlogged batches (one partition each: a single
//! mutation on the replicas) of at most `BATCH_ROWS`, sent at every epoch's end with up to
//! `CONCURRENCY` in flight; batches that fail for a transient reason (a node down, overloaded,
//! timing out) are retried with backoff while the task waits, and a request Cassandra refuses
//! (an invalid statement, no permission) stops the worker with the reason. Rows of one primary
//! key written again before they are sent (a window result updated within an epoch) replace the
//! pending row, so a key is written once per send and the latest result wins: two writes of one
//! key in a batch or in concurrent batches could otherwise land in either order.
//! With `createTable` the keyspace (SimpleStrategy) and the table are created from the rows'
//! fields; an existing table must have every field and the expected primary key.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::BinaryArray;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue};
use weir_crds::CassandraSinkSpec;

use super::{append_key, retrying, Failure, Result, Sink, SinkError};
use crate::metrics::Metrics;
use crate::value::{Col, Value};

/// Rows per unlogged batch (all of one partition).
const BATCH_ROWS: usize = 100;
/// Batches in flight at once.
const CONCURRENCY: usize = 32;
/// Rows buffered before they are sent without waiting for the epoch's end.
const MAX_PENDING: usize = 50_000;

type CqlRow = Vec<Option<CqlValue>>;
/// A partition key and rows of it, each with its clustering value.
type PartitionRows = (Vec<u8>, Vec<(i64, CqlRow)>);

/// The table's layout for the rows' schema.
struct Layout {
    schema: SchemaRef,
    insert: PreparedStatement,
    /// Column indexes of the partition key.
    partition: Vec<usize>,
    /// The clustering column (`window_start`), if any.
    clustering: Option<usize>,
    timestamps: Vec<bool>,
}

pub struct CassandraSink {
    name: String,
    spec: CassandraSinkSpec,
    rt: tokio::runtime::Runtime,
    session: Session,
    layout: Option<Layout>,
    /// Rows to write, by partition key, then by clustering value (the latest row of a primary
    /// key replaces earlier ones).
    pending: BTreeMap<Vec<u8>, BTreeMap<i64, CqlRow>>,
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

/// Whether a failed request could succeed if tried again: not when Cassandra refused the
/// request itself.
fn failure(e: ExecutionError) -> Failure {
    let permanent = match &e {
        ExecutionError::BadQuery(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::SyntaxError
                | DbError::Invalid
                | DbError::AlreadyExists { .. }
                | DbError::FunctionFailure { .. }
                | DbError::AuthenticationError
                | DbError::Unauthorized
                | DbError::ConfigError
                | DbError::ProtocolError
        ),
        ExecutionError::LastAttemptError(RequestAttemptError::SerializationError(_)) => true,
        _ => false,
    };
    match permanent {
        true => Failure::Permanent(e.to_string()),
        false => Failure::Transient(e.to_string()),
    }
}

/// The primary key of a table as `((partition, ...), clustering, ...)`.
fn describe_key<S: AsRef<str>>(partition: &[S], clustering: &[S]) -> String {
    let partition: Vec<&str> = partition.iter().map(AsRef::as_ref).collect();
    let mut key = format!("(({})", partition.join(", "));
    for c in clustering {
        key.push_str(", ");
        key.push_str(c.as_ref());
    }
    key.push(')');
    key
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
        // The driver's own tasks (reconnecting pools, reading the cluster's topology) must run
        // between requests too, so they get a thread of their own: on a current-thread runtime
        // they would only run inside a request, and a node that went away would never be
        // reconnected.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("weir-cassandra-{name}"))
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
        partition.retain(|c| Some(*c) != window);
        if partition.is_empty() {
            return Err(self.err("the rows have no key fields for the partition key; write a keyed step (keyBy)"));
        }
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
            let key = describe_key(&pk, &window.map(|w| names[w]).into_iter().collect::<Vec<_>>());
            let table =
                format!("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY {key})", self.table(), columns.join(", "));
            for cql in [ks, table] {
                self.rt
                    .block_on(self.session.query_unpaged(cql.as_str(), &[]))
                    .map_err(|e| self.err(format!("{cql}: {e}")))?;
            }
            self.rt.block_on(self.session.await_schema_agreement()).map_err(|e| self.err(e))?;
        }
        self.check_primary_key(&partition.iter().map(|&c| names[c]).collect::<Vec<_>>(), window.map(|w| names[w]))?;
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
        Ok(Layout { schema: schema.clone(), insert, partition, clustering: window, timestamps })
    }

    /// Checks that the table exists with the primary key the rows need: a table keyed
    /// differently would merge or split results silently.
    fn check_primary_key(&self, partition: &[&str], clustering: Option<&str>) -> Result<()> {
        let query = "SELECT column_name, kind, position FROM system_schema.columns \
                     WHERE keyspace_name = ? AND table_name = ?";
        let columns: Vec<(String, String, i32)> = self
            .rt
            .block_on(async {
                let result = self.session.query_unpaged(query, (&self.spec.keyspace, &self.spec.table)).await?;
                let rows = result.into_rows_result()?;
                let columns = rows.rows::<(String, String, i32)>()?.collect::<std::result::Result<Vec<_>, _>>()?;
                Ok::<_, Box<dyn std::error::Error>>(columns)
            })
            .map_err(|e| self.err(format!("reading the columns of table {}: {e}", self.table())))?;
        if columns.is_empty() {
            return Err(self.err(format!(
                "table {} does not exist; set createTable: true or create it with PRIMARY KEY {}",
                self.table(),
                describe_key(partition, &clustering.into_iter().collect::<Vec<_>>())
            )));
        }
        let of_kind = |kind: &str| {
            let mut cols: Vec<(i32, String)> =
                columns.iter().filter(|c| c.1 == kind).map(|c| (c.2, c.0.clone())).collect();
            cols.sort();
            cols.into_iter().map(|c| c.1).collect::<Vec<String>>()
        };
        let (has_partition, has_clustering) = (of_kind("partition_key"), of_kind("clustering"));
        let lower = |names: &[&str]| names.iter().map(|n| n.to_lowercase()).collect::<Vec<String>>();
        let want_clustering: Vec<&str> = clustering.into_iter().collect();
        if has_partition != lower(partition) || has_clustering != lower(&want_clustering) {
            return Err(self.err(format!(
                "table {} has PRIMARY KEY {}, but the rows need PRIMARY KEY {} (the stream's key fields, \
                 then window_start); results would merge or split; recreate the table or write to another",
                self.table(),
                describe_key(&has_partition, &has_clustering),
                describe_key(partition, &want_clustering)
            )));
        }
        Ok(())
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

    fn try_send(&mut self) -> std::result::Result<(), Failure> {
        let Some(layout) = &self.layout else { return Ok(()) };
        let mut batches: Vec<PartitionRows> = Vec::new();
        for (key, rows) in std::mem::take(&mut self.pending) {
            // Moved into batches of BATCH_ROWS; rows of a partition commute, as each primary key
            // is written once.
            let mut rows = rows.into_iter().collect::<Vec<_>>();
            while rows.len() > BATCH_ROWS {
                let tail = rows.split_off(rows.len() - BATCH_ROWS);
                batches.push((key.clone(), tail));
            }
            batches.push((key, rows));
        }
        let session = &self.session;
        let insert = &layout.insert;
        let outcomes: Vec<(PartitionRows, Option<Failure>)> = self.rt.block_on(
            futures::stream::iter(batches)
                .map(|(key, rows)| async move {
                    let mut batch = Batch::new(BatchType::Unlogged);
                    for _ in &rows {
                        batch.append_statement(insert.clone());
                    }
                    let values: Vec<&CqlRow> = rows.iter().map(|(_, row)| row).collect();
                    let failed = session.batch(&batch, &values).await.err().map(failure);
                    ((key, rows), failed)
                })
                .buffer_unordered(CONCURRENCY)
                .collect(),
        );
        let mut worst: Option<Failure> = None;
        for ((key, rows), failed) in outcomes {
            if let Some(f) = failed {
                if !matches!(worst, Some(Failure::Permanent(_))) {
                    worst = Some(f);
                }
                self.pending.entry(key).or_default().extend(rows);
            }
        }
        let not_written = self.pending.len();
        match worst {
            None => Ok(()),
            Some(Failure::Transient(e)) => {
                Err(Failure::Transient(format!("{not_written} partitions not written: {e}")))
            }
            Some(Failure::Permanent(e)) => {
                Err(Failure::Permanent(format!("{not_written} partitions not written: {e}")))
            }
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
        let clustering = layout.clustering.map(|c| cols[c]);
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
            let at = match clustering.map(|c| c.value(row)) {
                Some(Value::I64(x)) => x,
                _ => 0,
            };
            if self.pending.entry(key.clone()).or_default().insert(at, values).is_none() {
                self.pending_rows += 1;
            }
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
