//! Kafka source: the low-level consumer with explicit partition assignment (partition `p`
//! belongs to worker `p % parallelism`), batched polling, `read_committed` isolation, and
//! positions restored from task state before the group's committed offsets and `startFrom`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use weir_crds::{KafkaSourceSpec, StartFrom};

use super::{Polled, Records, Result, Source, SourceError};

const META_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KafkaSource {
    /// The topic's partition count.
    count: u32,
    name: String,
    spec: KafkaSourceSpec,
    /// Declared before the consumer: its queues are released before the consumer is destroyed.
    fetch: Option<FetchQueue>,
    consumer: BaseConsumer,
    partitions: Vec<u32>,
    restored: BTreeMap<u32, i64>,
    assigned: bool,
    /// Next offset to read per partition, as far as this source has read.
    position: BTreeMap<u32, i64>,
    high_watermarks: BTreeMap<u32, i64>,
    lag_checked: Option<Instant>,
    /// With `bounded: true`, the end offsets found at start; the source finishes there.
    stop_at: Option<BTreeMap<u32, i64>>,
    /// The group's committed offsets where they are ahead of the restored positions.
    committed_ahead: Vec<(u32, i64)>,
    /// Per partition, the last epoch committed with the group's offset (its metadata).
    committed_epochs: Vec<(u32, u64)>,
    /// Exactly-once: the group's offsets were committed with results, so without restored
    /// state the task rebuilds it from `startFrom` up to them, never starts at them.
    exactly_once: bool,
    /// The mean size of the records last polled, to size the next batch's buffers.
    record_bytes: usize,
    /// When a transient consumer error was last logged (they repeat while a broker is away).
    warned: Option<Instant>,
}

impl KafkaSource {
    /// Connects, reads the topic's partition count and picks this worker's partitions.
    pub fn new(name: &str, spec: &KafkaSourceSpec, group: &str, ordinal: u32, parallelism: u32) -> Result<KafkaSource> {
        let err = |message: String| SourceError::Failed { source_name: name.to_string(), message };
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &spec.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .set("fetch.min.bytes", "1")
            .set("queued.max.messages.kbytes", "65536")
            // librdkafka pauses a partition's fetching for this long once its local queue is
            // full (default 1 s); the worker drains the queue in milliseconds, so a long pause
            // leaves it idle (1 M events: 6.3 s at the default, 2.3 s at 10 ms).
            .set("fetch.queue.backoff.ms", "10")
            .set("enable.partition.eof", "false");
        for (k, v) in client_properties(&spec.properties).map_err(err)? {
            cfg.set(k, v);
        }
        let consumer: BaseConsumer = cfg.create().map_err(|e| err(format!("creating the Kafka consumer: {e}")))?;
        let md = consumer
            .fetch_metadata(Some(&spec.topic), META_TIMEOUT)
            .map_err(|e| err(format!("reading metadata of topic {} from {}: {e}", spec.topic, spec.brokers)))?;
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == spec.topic)
            .ok_or_else(|| err(format!("topic {} not found on {}", spec.topic, spec.brokers)))?;
        if let Some(e) = topic.error() {
            return Err(err(format!("topic {} is not readable: {e:?}; create it first", spec.topic)));
        }
        let count = topic.partitions().len() as u32;
        if count == 0 {
            return Err(err(format!("topic {} has no partitions; create it first", spec.topic)));
        }
        if parallelism > count {
            return Err(err(format!(
                "parallelism {parallelism} is above the {count} partitions of topic {}; workers beyond {count} would be idle",
                spec.topic
            )));
        }
        let partitions = (0..count).filter(|p| p % parallelism == ordinal).collect();
        Ok(KafkaSource {
            count,
            name: name.to_string(),
            spec: spec.clone(),
            fetch: None,
            consumer,
            partitions,
            restored: BTreeMap::new(),
            assigned: false,
            position: BTreeMap::new(),
            high_watermarks: BTreeMap::new(),
            lag_checked: None,
            stop_at: None,
            committed_ahead: Vec::new(),
            committed_epochs: Vec::new(),
            exactly_once: false,
            record_bytes: 512,
            warned: None,
        })
    }

    /// Positions follow exactly-once recovery (see the field).
    pub fn exactly_once(mut self, on: bool) -> KafkaSource {
        self.exactly_once = on;
        self
    }

    fn err(&self, message: String) -> SourceError {
        SourceError::Failed { source_name: self.name.clone(), message }
    }

    /// A consumer error: librdkafka recovers from most by itself (a broker down, a partition's
    /// leader moving, a coordinator changing: a failover in a replicated cluster), so those are
    /// logged, at most every 10 s, and polling goes on. The source stops on a fatal error and on
    /// those that need someone to act: the topic gone, access refused, an offset out of range.
    fn consumer_error(&mut self, code: Option<RDKafkaErrorCode>, text: &str) -> Result<()> {
        let fatal = self.consumer.client().fatal_error();
        if fatal.is_some() || code.is_none_or(needs_action) {
            let detail = fatal.map(|(_, why)| format!(" (fatal: {why})")).unwrap_or_default();
            return Err(self.err(format!("polling {}: {text}{detail}", self.spec.topic)));
        }
        if self.warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            self.warned = Some(Instant::now());
            tracing::warn!(source = %self.name, topic = %self.spec.topic, "consumer error, retrying: {text}");
        }
        Ok(())
    }

    /// Starting offsets: restored state, else the group's committed offset, else `startFrom`.
    fn assign(&mut self) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for &p in &self.partitions {
            tpl.add_partition(&self.spec.topic, p as i32);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl.clone(), META_TIMEOUT)
            .map_err(|e| self.err(format!("reading committed offsets: {e}")))?;
        let mut start = TopicPartitionList::new();
        let ts = self.spec.start_timestamp.as_deref().and_then(weir_crds::parse_timestamp_millis);
        for &p in &self.partitions {
            let elem = committed.find_partition(&self.spec.topic, p as i32);
            if let Some(epoch) = elem.as_ref().and_then(|e| crate::source::epoch_from_metadata(e.metadata())) {
                self.committed_epochs.push((p, epoch));
            }
            let group_offset = elem.and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
            if let Some(g) = group_offset {
                if self.restored.get(&p).is_none_or(|&r| g > r) {
                    self.committed_ahead.push((p, g));
                }
            }
            // Exactly-once without restored state, the state is rebuilt from `startFrom` with the
            // output muted up to the group's offset; but never from later than that offset
            // (`latest`, or a timestamp past it), which would skip input.
            let offset = match (self.restored.get(&p), group_offset, self.spec.start_from) {
                (Some(&o), _, _) => Offset::Offset(o),
                (None, Some(o), _) if !self.exactly_once => Offset::Offset(o),
                (None, Some(o), StartFrom::Latest) => Offset::Offset(o),
                (None, None, StartFrom::Latest) => Offset::End,
                (None, g, StartFrom::Timestamp) => {
                    let at = self.offset_for_time(p, ts.unwrap_or(0))?;
                    Offset::Offset(g.map_or(at, |g| at.min(g)))
                }
                (None, _, StartFrom::Committed | StartFrom::Earliest) => Offset::Beginning,
            };
            if let Offset::Offset(o) = offset {
                self.position.insert(p, o);
            }
            start
                .add_partition_offset(&self.spec.topic, p as i32, offset)
                .map_err(|e| self.err(format!("partition {p}: {e}")))?;
        }
        if self.spec.bounded {
            let mut stop = BTreeMap::new();
            for &p in &self.partitions {
                let (_, hi) = self
                    .consumer
                    .fetch_watermarks(&self.spec.topic, p as i32, META_TIMEOUT)
                    .map_err(|e| self.err(format!("reading the end offset of partition {p}: {e}")))?;
                stop.insert(p, hi);
            }
            self.stop_at = Some(stop);
        }
        // Split the partitions' queues off before assigning, so that no message lands in the
        // consumer's queue.
        self.fetch = Some(
            FetchQueue::new(&self.consumer, &self.spec.topic, &self.partitions)
                .ok_or_else(|| self.err("creating the fetch queue".into()))?,
        );
        self.consumer.assign(&start).map_err(|e| self.err(format!("assigning partitions: {e}")))?;
        self.assigned = true;
        Ok(())
    }

    fn offset_for_time(&self, p: u32, ts: i64) -> Result<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.spec.topic, p as i32, Offset::Offset(ts))
            .map_err(|e| self.err(e.to_string()))?;
        let found = self
            .consumer
            .offsets_for_times(tpl, META_TIMEOUT)
            .map_err(|e| self.err(format!("looking up offsets for time {ts}: {e}")))?;
        let o = found.find_partition(&self.spec.topic, p as i32).map(|e| e.offset());
        match o {
            Some(Offset::Offset(o)) => Ok(o),
            // No record at or after the time: start at the end.
            _ => Ok(self
                .consumer
                .fetch_watermarks(&self.spec.topic, p as i32, META_TIMEOUT)
                .map(|(_, hi)| hi)
                .unwrap_or(0)),
        }
    }

    /// The consumer's fetch position of each partition that has one (it steps over
    /// transaction markers, which are never returned as records).
    fn fetch_positions(&self) -> BTreeMap<u32, i64> {
        let Ok(pos) = self.consumer.position() else { return BTreeMap::new() };
        self.partitions
            .iter()
            .filter_map(|&p| match pos.find_partition(&self.spec.topic, p as i32)?.offset() {
                Offset::Offset(o) => Some((p, o)),
                _ => None,
            })
            .collect()
    }

    fn refresh_high_watermarks(&mut self) {
        if self.lag_checked.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return;
        }
        self.lag_checked = Some(Instant::now());
        // Partitions that have returned no record yet: their start is the consumer's position.
        for (p, o) in self.fetch_positions() {
            self.position.entry(p).or_insert(o);
        }
        for &p in &self.partitions {
            if let Ok((_, hi)) = self.consumer.fetch_watermarks(&self.spec.topic, p as i32, Duration::from_millis(500))
            {
                self.high_watermarks.insert(p, hi);
            }
        }
    }
}

impl Source for KafkaSource {
    fn partitions(&self) -> Vec<u32> {
        self.partitions.clone()
    }

    fn partition_count(&self) -> u32 {
        self.count
    }

    fn seek(&mut self, partition: u32, position: i64) -> Result<()> {
        self.restored.insert(partition, position);
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        if !self.assigned {
            self.assign()?;
        }
        Ok(())
    }

    fn committed_ahead(&self) -> Vec<(u32, i64)> {
        self.committed_ahead.clone()
    }

    fn committed_epochs(&self) -> Vec<(u32, u64)> {
        self.committed_epochs.clone()
    }

    fn transactional_offsets(&self) -> Option<(String, rdkafka::consumer::ConsumerGroupMetadata)> {
        Some((self.spec.topic.clone(), self.consumer.group_metadata()?))
    }

    fn poll(&mut self, max: usize, wait: Duration) -> Result<Polled> {
        self.start()?;
        let mut by_partition: BTreeMap<u32, Records> = BTreeMap::new();
        // The consumer's own queue has only events now (commit results, errors); serve them.
        match self.consumer.poll(Duration::ZERO) {
            None => {}
            Some(Err(e)) => self.consumer_error(e.rdkafka_error_code(), &e.to_string())?,
            Some(Ok(m)) => {
                let ts = m.timestamp().to_millis().unwrap_or(0);
                by_partition.entry(m.partition() as u32).or_default().push(
                    m.payload().unwrap_or_default(),
                    m.offset(),
                    ts,
                );
            }
        }
        let fetch = self.fetch.as_mut().expect("started");
        let mut n = 0;
        // The first message carrying an error instead of a record (it is skipped).
        let mut error = None;
        while n < max {
            // What is fetched already, without waiting: librdkafka's batch call waits for all
            // of `max` until its timeout, which held every record of a quiet topic back for the
            // whole wait. Only when nothing is there, wait for the first record alone.
            let mut got = fetch.consume(Duration::ZERO, max - n);
            if got == 0 && n == 0 && !wait.is_zero() {
                got = fetch.consume(wait, 1);
            }
            if got == 0 {
                break;
            }
            for m in fetch.messages() {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        error.get_or_insert(e);
                        continue;
                    }
                };
                let recs = match by_partition.last_entry() {
                    Some(e) if *e.key() == m.partition => e.into_mut(),
                    // Sized for the rest of the batch, so that it never grows by copying.
                    _ => by_partition
                        .entry(m.partition)
                        .or_insert_with(|| Records::with_capacity(max - n, (max - n) * self.record_bytes)),
                };
                match m.tombstone_key {
                    Some(key) => recs.push_tombstone(key, m.offset, m.timestamp),
                    None => recs.push(m.payload, m.offset, m.timestamp),
                }
            }
            n += got;
            if error.is_some() {
                break;
            }
        }
        if let Some((code, text)) = error {
            self.consumer_error(Some(code), &text)?;
        }
        let (count, bytes) = by_partition.values().fold((0, 0), |(c, b), r| (c + r.len(), b + r.data.len()));
        if count > 0 {
            self.record_bytes = bytes.div_ceil(count).max(16);
        }
        for (p, recs) in &by_partition {
            if let Some(last) = recs.positions.last() {
                self.position.insert(*p, last + 1);
            }
        }
        self.refresh_high_watermarks();
        Ok(Polled { batches: by_partition.into_iter().collect() })
    }

    fn finished(&self) -> bool {
        let Some(stop) = self.stop_at.as_ref() else { return false };
        // Transaction markers occupy offsets but are never returned as records, so the
        // consumer's own fetch position (which steps over them) decides.
        let fetched = self.fetch_positions();
        stop.iter().all(|(p, end)| {
            let here = fetched.get(p).or_else(|| self.position.get(p)).copied().unwrap_or(0);
            here >= *end
        })
    }

    fn commit(&mut self, positions: &[(u32, i64)]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in positions {
            tpl.add_partition_offset(&self.spec.topic, p as i32, Offset::Offset(o))
                .map_err(|e| self.err(e.to_string()))?;
        }
        if tpl.count() > 0 {
            self.consumer.commit(&tpl, CommitMode::Async).map_err(|e| self.err(format!("committing offsets: {e}")))?;
        }
        Ok(())
    }

    fn next_positions(&self) -> Vec<(u32, i64)> {
        self.position.iter().map(|(p, o)| (*p, *o)).collect()
    }

    fn lag(&self) -> Vec<(u32, i64)> {
        self.partitions
            .iter()
            .filter_map(|p| Some((*p, (self.high_watermarks.get(p)? - self.position.get(p)?).max(0))))
            .collect()
    }
}

/// The assigned partitions' fetched messages, forwarded into one queue of the source's own and
/// read in batches (`rd_kafka_consume_batch_queue`): one call and one clock read per batch
/// instead of several per message through the consumer's event poll, which cost about a tenth
/// of the worker's time at a million messages a second. The consumer's own queue keeps the
/// events (commit results, errors).
struct FetchQueue {
    queue: *mut rd::rd_kafka_queue_t,
    partitions: Vec<*mut rd::rd_kafka_queue_t>,
    /// Messages of the last batch, owned until the next one (or drop).
    batch: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: librdkafka queues and messages may be used from any thread; the source owns them.
unsafe impl Send for FetchQueue {}

/// One fetched message, borrowed from its batch.
struct Fetched<'a> {
    partition: u32,
    offset: i64,
    timestamp: i64,
    payload: &'a [u8],
    /// The message key, for a message without a value (a tombstone).
    tombstone_key: Option<&'a [u8]>,
}

/// A source's or sink's client properties, each `${env:NAME}` (a secret) read from the
/// worker's environment.
pub fn client_properties(
    properties: &BTreeMap<String, String>,
) -> std::result::Result<BTreeMap<String, String>, String> {
    weir_crds::resolve_properties(properties, |name| std::env::var(name).ok())
}

/// Consumer errors that retrying cannot mend.
fn needs_action(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        UnknownTopic
            | UnknownTopicOrPartition
            | TopicAuthorizationFailed
            | GroupAuthorizationFailed
            | ClusterAuthorizationFailed
            | SaslAuthenticationFailed
            | Authentication
            | OffsetOutOfRange
            | Fatal
    )
}

impl FetchQueue {
    fn new(consumer: &BaseConsumer, topic: &str, partitions: &[u32]) -> Option<FetchQueue> {
        let rk = consumer.client().native_ptr();
        let topic = std::ffi::CString::new(topic).ok()?;
        // SAFETY: `rk` is a live consumer handle; every queue obtained here is released in drop.
        unsafe {
            let queue = rd::rd_kafka_queue_new(rk);
            if queue.is_null() {
                return None;
            }
            let mut q = FetchQueue { queue, partitions: Vec::new(), batch: Vec::new() };
            for &p in partitions {
                let pq = rd::rd_kafka_queue_get_partition(rk, topic.as_ptr(), p as i32);
                if pq.is_null() {
                    return None;
                }
                rd::rd_kafka_queue_forward(pq, queue);
                q.partitions.push(pq);
            }
            Some(q)
        }
    }

    /// Takes up to `max` messages, waiting up to `timeout` for all of them (librdkafka returns
    /// early only with `max` messages); the count taken.
    fn consume(&mut self, timeout: Duration, max: usize) -> usize {
        self.release();
        self.batch.reserve(max);
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: the array has room for `max` pointers; librdkafka fills the first `n`.
        unsafe {
            let n = rd::rd_kafka_consume_batch_queue(self.queue, ms, self.batch.as_mut_ptr(), max).max(0) as usize;
            self.batch.set_len(n);
            n
        }
    }

    /// The messages of the last batch, in order; a message carrying an error yields it.
    fn messages(&self) -> impl Iterator<Item = std::result::Result<Fetched<'_>, (RDKafkaErrorCode, String)>> {
        self.batch.iter().map(|&m| {
            // SAFETY: the batch's messages stay valid until `release`, which needs `&mut self`.
            unsafe {
                let msg = &*m;
                if msg.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    let text = std::ffi::CStr::from_ptr(rd::rd_kafka_err2str(msg.err)).to_string_lossy();
                    let text = format!("{text} (partition {}, offset {})", msg.partition, msg.offset);
                    return Err((RDKafkaErrorCode::from(msg.err), text));
                }
                let (payload, tombstone_key) = if msg.payload.is_null() {
                    let key = match msg.key.is_null() {
                        true => None,
                        false => Some(std::slice::from_raw_parts(msg.key as *const u8, msg.key_len)),
                    };
                    (&[][..], key)
                } else {
                    (std::slice::from_raw_parts(msg.payload as *const u8, msg.len), None)
                };
                let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
                let ts = rd::rd_kafka_message_timestamp(m, &mut kind);
                let (partition, offset, timestamp) = (msg.partition as u32, msg.offset, ts.max(0));
                Ok(Fetched { partition, offset, timestamp, payload, tombstone_key })
            }
        })
    }

    fn release(&mut self) {
        for m in self.batch.drain(..) {
            // SAFETY: each message came from `rd_kafka_consume_batch_queue` and is freed once.
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        self.release();
        // SAFETY: the queues were obtained in `new` and are released once; forwarding is undone
        // first so that the partitions deliver to the consumer again.
        unsafe {
            for &pq in &self.partitions {
                rd::rd_kafka_queue_forward(pq, std::ptr::null_mut());
                rd::rd_kafka_queue_destroy(pq);
            }
            rd::rd_kafka_queue_destroy(self.queue);
        }
    }
}

/// How long rows wait in a repartition topic for the reading task: as long as the input's
/// replay horizon (7 days of retention).
const REPARTITION_RETENTION_MS: &str = "604800000";

/// Creates a repartition step's internal `topic` with `partitions` partitions (the input's
/// count) if it does not exist, or checks that the existing one has that many: records keep
/// the timestamps they are written with (their event times, however old); a replication
/// factor of up to 3, as the cluster allows.
pub fn ensure_repartition_topic(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
    partitions: u32,
) -> std::result::Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::error::RDKafkaErrorCode;

    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in client_properties(properties)? {
        cfg.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        cfg.create().map_err(|e| format!("creating a Kafka admin client for {brokers}: {e}"))?;
    let existing = |admin: &AdminClient<DefaultClientContext>| -> std::result::Result<(Option<u32>, usize), String> {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), META_TIMEOUT)
            .map_err(|e| format!("reading metadata of topic {topic} from {brokers}: {e}"))?;
        let count = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as u32);
        Ok((count, md.brokers().len()))
    };
    let (count, brokers_up) = existing(&admin)?;
    if count.is_none() {
        let replication = brokers_up.clamp(1, 3) as i32;
        let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "delete")
            .set("retention.ms", REPARTITION_RETENTION_MS)
            .set("message.timestamp.type", "CreateTime")
            .set("message.timestamp.before.max.ms", "9223372036854775807")
            .set("message.timestamp.after.max.ms", "9223372036854775807");
        let created = futures::executor::block_on(admin.create_topics(&[new], &AdminOptions::new()))
            .map_err(|e| format!("creating topic {topic} on {brokers}: {e}"))?;
        for r in created {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, e)) => return Err(format!("creating topic {topic} on {brokers}: {e}")),
            }
        }
        tracing::info!(topic, partitions, replication, "created the repartition topic");
    }
    // The new topic's partitions appear in the metadata shortly.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match existing(&admin)?.0 {
            Some(n) if n == partitions => return Ok(()),
            Some(n) => {
                return Err(format!(
                    "the repartition topic {topic} has {n} partitions, but the step's input has {partitions}; it \
                     holds only rows in flight between this job's tasks: delete it (with the job stopped) to have \
                     it created again"
                ))
            }
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => return Err(format!("topic {topic} was created but does not appear on {brokers}")),
        }
    }
}
