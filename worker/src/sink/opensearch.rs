//! The OpenSearch sink (also Elasticsearch, which speaks the same bulk API): each row indexed
//! as a JSON document under a deterministic id (its key fields and, for window results,
//! `window_start`, joined by `:`; or the configured `id` fields), in bulk requests of up to
//! `BULK_BYTES`. A replay after recovery indexes the same ids again, so the index converges to
//! the results of an exactly-once run (an idempotent upsert).
//!
//! Items the cluster refuses for a while (429, 5xx) are retried alone with backoff, the task
//! waiting meanwhile (backpressure); a request that fails as a whole (the cluster down) is
//! retried the same way. An item refused for good (a mapping conflict) stops the worker with
//! the document's id and the reason.

use std::sync::Arc;

use datafusion::arrow::array::BinaryArray;
use datafusion::arrow::record_batch::RecordBatch;
use weir_crds::OpenSearchSinkSpec;

use super::http::HttpClient;
use super::{append_key, key_columns, retrying, Failure, Result, Sink, SinkError};
use crate::codec::json::encode_json_lines;
use crate::metrics::Metrics;
use crate::value::Col;

/// A bulk request is sent when its body reaches this size (and at every epoch's end).
const BULK_BYTES: usize = 5 << 20;
/// OpenSearch refuses longer ids; longer keys are hashed.
const MAX_ID_BYTES: usize = 512;

pub struct OpenSearchSink {
    name: String,
    spec: OpenSearchSinkSpec,
    http: HttpClient,
    /// Bulk items not yet indexed: the action line and the document, each with its newline.
    items: Vec<(Vec<u8>, Vec<u8>)>,
    bytes: usize,
    metrics: Arc<Metrics>,
    retry_budget: std::time::Duration,
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// FNV-1a, 64 bits, as hex: a stable id for keys too long to be one.
fn hashed(bytes: &[u8]) -> String {
    format!("h{:016x}", crate::plan::fnv1a(bytes))
}

impl OpenSearchSink {
    /// Connects, checks the cluster answers, and creates the index with its mappings when they
    /// are given and it does not exist.
    pub fn new(name: &str, spec: &OpenSearchSinkSpec, metrics: Arc<Metrics>) -> Result<OpenSearchSink> {
        let err = |message: String| SinkError::Failed { sink: name.to_string(), message };
        let mut http = HttpClient::new(&spec.url).map_err(err)?;
        let root = http.request("GET", "/", "application/json", b"").map_err(err)?;
        if root.status != 200 {
            return Err(err(format!(
                "{} answered {} to GET /: {}",
                http.addr(),
                root.status,
                String::from_utf8_lossy(&root.body)
            )));
        }
        let mut sink = OpenSearchSink {
            name: name.to_string(),
            spec: spec.clone(),
            http,
            items: Vec::new(),
            bytes: 0,
            metrics,
            retry_budget: super::RETRY_BUDGET,
        };
        if !spec.mappings.is_empty() {
            sink.create_index()?;
        }
        Ok(sink)
    }

    fn err(&self, message: impl std::fmt::Display) -> SinkError {
        SinkError::Failed { sink: self.name.clone(), message: message.to_string() }
    }

    fn create_index(&mut self) -> Result<()> {
        let path = format!("/{}", self.spec.index);
        let head = self.http.request("HEAD", &path, "application/json", b"").map_err(|e| self.err(e))?;
        if head.status == 200 {
            return Ok(());
        }
        let properties: serde_json::Map<String, serde_json::Value> =
            self.spec.mappings.iter().map(|(f, t)| (f.clone(), serde_json::json!({ "type": t }))).collect();
        let body = serde_json::json!({ "mappings": { "properties": properties } }).to_string();
        let r = self.http.request("PUT", &path, "application/json", body.as_bytes()).map_err(|e| self.err(e))?;
        let text = String::from_utf8_lossy(&r.body);
        // Another worker may have created it in the meantime.
        if r.status == 200 || (r.status == 400 && text.contains("resource_already_exists_exception")) {
            return Ok(());
        }
        Err(self.err(format!("creating index {} answered {}: {text}", self.spec.index, r.status)))
    }

    fn push(&mut self, id: Option<&str>, doc: &[u8]) -> Result<()> {
        let index = json_str(&self.spec.index);
        let action = match id {
            Some(id) => format!("{{\"index\":{{\"_index\":{index},\"_id\":{}}}}}\n", json_str(id)),
            None => format!("{{\"index\":{{\"_index\":{index}}}}}\n"),
        };
        let mut doc = doc.to_vec();
        doc.push(b'\n');
        self.bytes += action.len() + doc.len();
        self.items.push((action.into_bytes(), doc));
        if self.bytes >= BULK_BYTES {
            self.send()?;
        }
        Ok(())
    }

    /// Indexes every pending item; those refused for a while are retried alone, with backoff.
    fn send(&mut self) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        let bytes = self.bytes as u64;
        let (name, metrics, budget) = (self.name.clone(), self.metrics.clone(), self.retry_budget);
        retrying(&name, "indexing into OpenSearch", &metrics, budget, || self.try_send())?;
        self.metrics.sink_bytes.with_label_values(&[&self.name]).inc_by(bytes);
        self.bytes = 0;
        Ok(())
    }

    /// One bulk request of the pending items. Items indexed leave the list; a transient failure
    /// (to retry) while some are refused for a while or the request failed; a permanent one names
    /// an item or a request refused for good.
    fn try_send(&mut self) -> std::result::Result<(), Failure> {
        let mut body = Vec::with_capacity(self.bytes);
        for (a, d) in &self.items {
            body.extend_from_slice(a);
            body.extend_from_slice(d);
        }
        let r = self.http.request("POST", "/_bulk", "application/x-ndjson", &body)?;
        let text = || String::from_utf8_lossy(&r.body).chars().take(500).collect::<String>();
        if r.status == 429 || r.status >= 500 {
            return Err(Failure::Transient(format!("the bulk request answered {}: {}", r.status, text())));
        }
        if r.status != 200 {
            return Err(Failure::Permanent(format!("the bulk request answered {}: {}", r.status, text())));
        }
        let reply: serde_json::Value =
            serde_json::from_slice(&r.body).map_err(|e| format!("the bulk reply is not JSON ({e}): {}", text()))?;
        if reply["errors"] != serde_json::Value::Bool(true) {
            self.items.clear();
            return Ok(());
        }
        let statuses: Vec<(u64, &serde_json::Value)> = reply["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| i.as_object().and_then(|o| o.values().next()).unwrap_or(&serde_json::Value::Null))
                    .map(|i| (i["status"].as_u64().unwrap_or(0), i))
                    .collect()
            })
            .unwrap_or_default();
        if statuses.len() != self.items.len() {
            return Err(Failure::Transient(format!(
                "the bulk reply has {} items for {} sent",
                statuses.len(),
                self.items.len()
            )));
        }
        let mut again = Vec::new();
        let mut first_retry = None;
        for ((status, item), pending) in statuses.iter().zip(std::mem::take(&mut self.items)) {
            match status {
                200..=299 => {}
                429 | 500.. => {
                    first_retry.get_or_insert_with(|| item["error"].to_string());
                    again.push(pending);
                }
                _ => {
                    return Err(Failure::Permanent(format!(
                        "OpenSearch refused document {} in index {}: {}",
                        item["_id"], self.spec.index, item["error"]
                    )))
                }
            }
        }
        self.bytes = again.iter().map(|(a, d)| a.len() + d.len()).sum();
        self.items = again;
        match first_retry {
            None => Ok(()),
            Some(e) => Err(Failure::Transient(format!("{} items refused for now: {e}", self.items.len()))),
        }
    }
}

impl Sink for OpenSearchSink {
    fn write_rows(&mut self, rows: &RecordBatch, keys: &[usize], raw: Option<&BinaryArray>) -> Result<()> {
        let id_cols = key_columns(rows, keys, self.spec.id.as_deref(), "opensearch.id").map_err(|e| self.err(e))?;
        let cols: Vec<Col> = id_cols.iter().map(|&c| Col::new(rows.column(c)).expect("engine types")).collect();
        let lines = match raw {
            Some(_) => Vec::new(),
            None => encode_json_lines(rows).map_err(|e| self.err(e))?,
        };
        let mut json = lines.split(|b| *b == b'\n');
        let mut id = Vec::new();
        for row in 0..rows.num_rows() {
            let doc = match raw {
                Some(r) => r.value(row),
                None => json.next().unwrap_or_default(),
            };
            id.clear();
            append_key(&cols, row, &mut id);
            let id = match id.len() <= MAX_ID_BYTES {
                true => String::from_utf8_lossy(&id).into_owned(),
                false => hashed(&id),
            };
            self.push(Some(&id), doc)?;
        }
        Ok(())
    }

    fn write_records(&mut self, records: &[Vec<u8>]) -> Result<()> {
        // Late events and dead letters have no key fields: documents with ids OpenSearch picks.
        for r in records {
            self.push(None, r)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_key_or_a_hash_of_it() {
        assert_eq!(json_str("card-1:1795564800000"), "\"card-1:1795564800000\"");
        assert_eq!(hashed(b"abc"), hashed(b"abc"));
        assert_ne!(hashed(b"abc"), hashed(b"abd"));
        assert_eq!(hashed(b"x").len(), 17);
    }
}
