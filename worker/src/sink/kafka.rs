//! Kafka sink: one JSON object per message, keyed by the key fields, idempotent producer with
//! `acks=all`. At-least-once, each sink has its own producer and `flush` waits for every message
//! to be acknowledged. Exactly-once, the Kafka sinks of a partition-task share its transactional
//! producer and the task commits the transaction, with its input offsets, at every epoch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, BinaryArray};
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, TopicPartitionList};
use weir_crds::KafkaSinkSpec;

use super::{message_key, Result, Sink, SinkError};
use crate::codec::avro::encode_rows;
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

/// A message to send: its key, value (none: a record without a value), partition (none: the
/// partitioner's choice by key) and timestamp (none: now).
#[derive(Clone, Copy, Debug, Default)]
pub struct Outgoing<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub partition: Option<i32>,
    pub timestamp: Option<i64>,
}

/// A Kafka producer shared by the Kafka sinks of a task (exactly-once: one transaction per
/// epoch holds every sink's messages and the task's input offsets) or owned by one sink.
pub struct KafkaProducer {
    producer: ThreadedProducer<Deliveries>,
    deliveries: Deliveries,
    brokers: String,
    /// `Some` for a transactional producer: whether a transaction is open.
    txn: Option<Mutex<bool>>,
}

/// Transactions time out on the broker after this long without a commit (unless the sink's
/// `transaction.timeout.ms` property says otherwise).
pub const TRANSACTION_TIMEOUT_MS: u64 = 60_000;
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a flush waits for every message in flight to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

impl KafkaProducer {
    /// An idempotent producer (`acks=all`); transactional with `transactional_id`, which fences
    /// any earlier producer with the same id (a zombie worker can then commit nothing).
    pub fn new(
        brokers: &str,
        properties: &std::collections::BTreeMap<String, String>,
        transactional_id: Option<&str>,
    ) -> std::result::Result<KafkaProducer, String> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Keyed messages go where a Java producer (Kafka's default partitioner) puts them,
            // so topics Weir writes are co-partitioned with ones other clients write by the same
            // key; librdkafka's own default (CRC32) would put them elsewhere.
            .set("partitioner", "murmur2_random")
            .set("compression.type", "lz4")
            .set("queue.buffering.max.kbytes", "262144");
        for (k, v) in crate::source::kafka::client_properties(properties)? {
            cfg.set(k, v);
        }
        // A timeout set in the sink's properties wins; the broker refuses one above its
        // transaction.max.timeout.ms when transactions are initialized, below.
        let timeout_ms =
            properties.get("transaction.timeout.ms").cloned().unwrap_or(TRANSACTION_TIMEOUT_MS.to_string());
        if let Some(id) = transactional_id {
            cfg.set("transactional.id", id).set("transaction.timeout.ms", &timeout_ms);
            // An epoch's transaction begins right after the last one's commit, often before
            // the coordinator has written its markers: the coordinator then answers
            // CONCURRENT_TRANSACTIONS and the call is retried after this backoff (doubling up
            // to retry.backoff.max.ms). librdkafka's 100 ms default stalled such epochs for
            // 100 ms; Java's producer uses 20 ms for these retries.
            if !properties.contains_key("retry.backoff.ms") {
                cfg.set("retry.backoff.ms", "10");
            }
        }
        let deliveries = Deliveries::default();
        let producer: ThreadedProducer<Deliveries> = cfg
            .create_with_context(deliveries.clone())
            .map_err(|e| format!("creating the Kafka producer for {brokers}: {e}"))?;
        if let Some(id) = transactional_id {
            producer.init_transactions(TXN_CALL_TIMEOUT).map_err(|e| {
                let hint = match e.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::InvalidTransactionTimeout) => format!(
                        "; the worker's transaction.timeout.ms is {timeout_ms} ms, above the brokers' \
                         transaction.max.timeout.ms: raise that to at least {timeout_ms}, or lower the \
                         sink's transaction.timeout.ms property"
                    ),
                    _ => String::new(),
                };
                format!("initializing transactions for transactional id {id} on {brokers}: {e}{hint}")
            })?;
        }
        let txn = transactional_id.map(|_| Mutex::new(false));
        Ok(KafkaProducer { producer, deliveries, brokers: brokers.to_string(), txn })
    }

    fn begin_if_needed(&self) -> std::result::Result<(), String> {
        if let Some(open) = &self.txn {
            let mut open = open.lock().expect("transaction lock");
            if !*open {
                self.producer.begin_transaction().map_err(|e| format!("beginning a transaction: {e}"))?;
                *open = true;
            }
        }
        Ok(())
    }

    /// Sends one message; the time spent waiting for room in the producer's queue.
    fn send(&self, topic: &str, payload: &[u8], key: Option<&[u8]>) -> std::result::Result<Duration, String> {
        self.send_to(topic, Outgoing { key, payload: Some(payload), ..Outgoing::default() })
    }

    /// Sends one message as `msg` says: to a chosen partition, with a timestamp, or without a
    /// value.
    pub fn send_to(&self, topic: &str, msg: Outgoing<'_>) -> std::result::Result<Duration, String> {
        self.begin_if_needed()?;
        let mut waiting: Option<Instant> = None;
        loop {
            let mut rec = BaseRecord::<[u8], [u8]>::to(topic);
            if let Some(p) = msg.payload {
                rec = rec.payload(p);
            }
            if let Some(k) = msg.key {
                rec = rec.key(k);
            }
            if let Some(p) = msg.partition {
                rec = rec.partition(p);
            }
            if let Some(t) = msg.timestamp {
                rec = rec.timestamp(t);
            }
            match self.producer.send(rec) {
                Ok(()) => return Ok(waiting.map_or(Duration::ZERO, |t| t.elapsed())),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // Backpressure: wait for deliveries to drain the local queue.
                    waiting.get_or_insert_with(Instant::now);
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(format!("producing to {topic}: {e}")),
            }
        }
    }

    /// Waits until every message sent so far is acknowledged; fails on any delivery error.
    ///
    /// Not `BaseProducer::flush`: rust-rdkafka's producer `poll` serves events until its whole
    /// timeout has passed, and its `flush` polls in 100 ms slices, so every flush with messages
    /// in flight took at least 100 ms (all of the epoch commit's time). Here the delivery
    /// reports are served 1 ms at a time until none is outstanding.
    pub fn flush(&self) -> std::result::Result<(), String> {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        if self.producer.in_flight_count() > 0 {
            // librdkafka's own flush sends what `linger.ms` holds back at once (it overrides
            // the linger while it runs), so an epoch's last messages do not wait 5 ms for it.
            // SAFETY: the handle is this producer's, alive for the call.
            unsafe {
                rdkafka::bindings::rd_kafka_flush(
                    self.producer.client().native_ptr(),
                    FLUSH_TIMEOUT.as_millis() as i32,
                );
            }
        }
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(format!(
                    "flushing to {}: {} message(s) not acknowledged within {FLUSH_TIMEOUT:?}",
                    self.brokers,
                    self.producer.in_flight_count()
                ));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        if let Some(e) = self.deliveries.first_error.lock().expect("delivery lock").take() {
            return Err(format!("a message was not delivered: {e}"));
        }
        Ok(())
    }

    /// Commits the epoch's transaction with the input `offsets` of the consumer group: the
    /// messages become visible to `read_committed` consumers and the offsets committed, or
    /// neither. Any failure is returned; the worker then stops and recovers from its state.
    pub fn commit_epoch(
        &self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> std::result::Result<(), String> {
        let Some(open) = &self.txn else { return self.flush() };
        self.begin_if_needed()?;
        self.flush()?;
        crate::fault::point("epoch-flushed");
        if offsets.count() > 0 {
            self.producer
                .send_offsets_to_transaction(offsets, group, TXN_CALL_TIMEOUT)
                .map_err(|e| format!("adding input offsets to the transaction: {e}"))?;
        }
        self.producer.commit_transaction(TXN_CALL_TIMEOUT).map_err(|e| format!("committing the transaction: {e}"))?;
        *open.lock().expect("transaction lock") = false;
        Ok(())
    }

    /// Fails with what to do when `topic` does not exist (topics are never auto-created, and a
    /// message to a missing topic would otherwise wait for `message.timeout.ms` before failing).
    pub fn check_topic(&self, topic: &str) -> std::result::Result<(), String> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| format!("reading metadata of topic {topic} from {}: {e}", self.brokers))?;
        match md.topics().iter().find(|t| t.name() == topic) {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            _ => Err(format!("topic {topic} does not exist on {}; create it first", self.brokers)),
        }
    }

    pub fn has_open_transaction(&self) -> bool {
        self.txn.as_ref().is_some_and(|open| *open.lock().expect("transaction lock"))
    }

    pub fn is_transactional(&self) -> bool {
        self.txn.is_some()
    }
}

/// Writes one stream to one topic through a producer.
pub struct KafkaSink {
    name: String,
    topic: String,
    producer: Arc<KafkaProducer>,
    /// Time waiting for room in the producer's queue since the last `take_waited`.
    waited: Duration,
    registered: Option<SchemaIds>,
    /// Encoded records and where each ends (reused).
    buf: Vec<u8>,
    ends: Vec<usize>,
}

/// The registry ids of a `format: avro` or `json-schema` sink's schemas: its rows', and with
/// `keyFormat: avro` its keys'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchemaIds {
    pub format: weir_crds::Format,
    pub value: u32,
    pub key: Option<u32>,
}

/// Registers the schemas of a sink's `plan` with the registry of `spec` (or finds them there):
/// their ids. The registry's refusal (an incompatible change) is the error.
pub fn register_schemas(sink: &str, spec: &KafkaSinkSpec, plan: &crate::plan::RegisteredSinkPlan) -> Result<SchemaIds> {
    let failed = |message: String| SinkError::Failed { sink: sink.to_string(), message };
    let r = spec.registry.as_ref().ok_or_else(|| failed(format!("format: {} needs a registry", spec.format.name())))?;
    let registry = crate::codec::registry::Registry::for_spec(r).map_err(failed)?;
    let kind = match plan.format {
        weir_crds::Format::JsonSchema => "JSON",
        _ => "AVRO",
    };
    let value = registry.register(&plan.value_subject, &plan.value_schema, kind).map_err(failed)?;
    let key = match &plan.key {
        Some((subject, schema)) => Some(registry.register(subject, schema, "AVRO").map_err(failed)?),
        None => None,
    };
    Ok(SchemaIds { format: plan.format, value, key })
}

impl KafkaSink {
    /// A sink with its own idempotent (not transactional) producer; checks that its topic exists.
    pub fn new(name: &str, spec: &KafkaSinkSpec, registered: Option<SchemaIds>) -> Result<KafkaSink> {
        let failed = |message| SinkError::Failed { sink: name.to_string(), message };
        let producer = KafkaProducer::new(&spec.brokers, &spec.properties, None).map_err(failed)?;
        producer.check_topic(&spec.topic).map_err(failed)?;
        Ok(KafkaSink::with_producer(name, spec, Arc::new(producer), registered))
    }

    /// A sink writing through `producer` (a task's transactional producer); in the registry's
    /// wire format with the schemas of `registered` (by [`register_schemas`]), else JSON.
    pub fn with_producer(
        name: &str,
        spec: &KafkaSinkSpec,
        producer: Arc<KafkaProducer>,
        registered: Option<SchemaIds>,
    ) -> KafkaSink {
        KafkaSink {
            name: name.to_string(),
            topic: spec.topic.clone(),
            producer,
            waited: Duration::ZERO,
            registered,
            buf: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// Writes `rows` in the registry's wire format: each row's Avro record or JSON object,
    /// keyed by its key fields' Avro record (Avro keys) or text.
    fn write_registered(&mut self, ids: SchemaIds, rows: &RecordBatch, keys: &[usize]) -> Result<()> {
        let (mut buf, mut ends) = (std::mem::take(&mut self.buf), std::mem::take(&mut self.ends));
        buf.clear();
        ends.clear();
        match ids.format {
            weir_crds::Format::JsonSchema => {
                let lines = encode_json_lines(rows).map_err(|e| self.err(e))?;
                for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    buf.push(0);
                    buf.extend_from_slice(&ids.value.to_be_bytes());
                    buf.extend_from_slice(line);
                    ends.push(buf.len());
                }
            }
            _ => encode_rows(ids.value, rows, &mut buf, &mut ends).map_err(|e| self.err(e))?,
        }
        let values = ends.len();
        if let (Some(key_id), false) = (ids.key, keys.is_empty()) {
            let key_rows = rows.project(keys).map_err(|e| self.err(e))?;
            encode_rows(key_id, &key_rows, &mut buf, &mut ends).map_err(|e| self.err(e))?;
        }
        let key_cols: Vec<_> = keys.iter().map(|&i| rows.column(i).clone()).collect();
        let mut start = 0;
        let mut result = Ok(());
        for row in 0..values {
            let value = &buf[start..ends[row]];
            start = ends[row];
            let key = match ends.get(values + row) {
                Some(&end) => Some(buf[ends[values + row - 1]..end].to_vec()),
                None => message_key(&key_cols, row),
            };
            if let Err(e) = self.send(value, key.as_deref()) {
                result = Err(e);
                break;
            }
        }
        (self.buf, self.ends) = (buf, ends);
        result
    }

    fn err(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Failed { sink: self.name.clone(), message: e.to_string() }
    }

    fn send(&mut self, payload: &[u8], key: Option<&[u8]>) -> Result<()> {
        self.waited += self.producer.send(&self.topic, payload, key).map_err(|e| self.err(e))?;
        Ok(())
    }
}

impl Sink for KafkaSink {
    fn write_rows(&mut self, rows: &RecordBatch, keys: &[usize], raw: Option<&BinaryArray>) -> Result<()> {
        if let Some(ids) = self.registered {
            return self.write_registered(ids, rows, keys);
        }
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
        // A transactional producer's messages become durable when the task commits its epoch.
        if self.producer.is_transactional() {
            return Ok(());
        }
        self.producer.flush().map_err(|e| self.err(format!("topic {}: {e}", self.topic)))
    }

    fn is_kafka(&self) -> bool {
        true
    }

    fn take_waited(&mut self) -> Duration {
        std::mem::take(&mut self.waited)
    }
}
