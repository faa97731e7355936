//! Kafka sink: one JSON object per message, keyed by the key fields, idempotent producer with
//! `acks=all`; `flush` waits for every message to be acknowledged and fails on any error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{Array, BinaryArray};
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use weir_crds::KafkaSinkSpec;

use super::{message_key, Result, Sink, SinkError};
use crate::codec::encode_json_lines;

/// Remembers the first delivery failure so that `flush` can report it.
#[derive(Clone, Default)]
struct Deliveries {
    first_error: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            let mut first = self.first_error.lock().expect("delivery lock");
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

pub struct KafkaSink {
    name: String,
    topic: String,
    producer: ThreadedProducer<Deliveries>,
    deliveries: Deliveries,
}

impl KafkaSink {
    pub fn new(name: &str, spec: &KafkaSinkSpec) -> Result<KafkaSink> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &spec.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.kbytes", "262144");
        for (k, v) in &spec.properties {
            cfg.set(k, v);
        }
        let deliveries = Deliveries::default();
        let producer = cfg.create_with_context(deliveries.clone()).map_err(|e| SinkError::Failed {
            sink: name.to_string(),
            message: format!("creating the Kafka producer for {}: {e}", spec.brokers),
        })?;
        Ok(KafkaSink { name: name.to_string(), topic: spec.topic.clone(), producer, deliveries })
    }

    fn err(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Failed { sink: self.name.clone(), message: e.to_string() }
    }

    fn send(&self, payload: &[u8], key: Option<&[u8]>) -> Result<()> {
        loop {
            let mut rec = BaseRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
            if let Some(k) = key {
                rec = rec.key(k);
            }
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Backpressure: wait for deliveries to drain the local queue.
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(self.err(format!("producing to {}: {e}", self.topic))),
            }
        }
    }
}

impl Sink for KafkaSink {
    fn write_rows(&mut self, rows: &RecordBatch, keys: &[usize], raw: Option<&BinaryArray>) -> Result<()> {
        let key_cols: Vec<_> = keys.iter().map(|&i| rows.column(i).clone()).collect();
        if let Some(raw) = raw {
            for row in 0..raw.len() {
                self.send(raw.value(row), message_key(&key_cols, row).as_deref())?;
            }
            return Ok(());
        }
        let lines = encode_json_lines(rows).map_err(|e| self.err(e))?;
        for (row, line) in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            self.send(line, message_key(&key_cols, row).as_deref())?;
        }
        Ok(())
    }

    fn write_records(&mut self, records: &[Vec<u8>]) -> Result<()> {
        for r in records {
            self.send(r, None)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|e| self.err(format!("flushing to {}: {e}", self.topic)))?;
        if let Some(e) = self.deliveries.first_error.lock().expect("delivery lock").take() {
            return Err(self.err(format!("a message to {} was not delivered: {e}", self.topic)));
        }
        Ok(())
    }
}
