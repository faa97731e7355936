//! The writing half of a `repartition` step: every row goes to the partition of its new key in
//! the step's internal topic — Kafka's default partitioner (murmur2 of the message key, the
//! key fields encoded as a Kafka sink encodes them), so the topic is co-partitioned with
//! topics other clients key the same way — with its event time as the message timestamp.
//!
//! Watermarks travel with the rows: at every epoch's end the task writes its watermark for the
//! step's input to every partition of the topic as a record without a value whose key is
//! `weir.wm:<from partition>:<watermark>` (or `…:idle` while its input is idle). The reading
//! task's watermark is the least over every writing partition's latest one (idle ones left out),
//! as a Flink operator takes the least over its input channels. Rows and markers are written in
//! the task's transaction, so a reader sees both or neither, in the order they were written.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::BinaryArray;
use datafusion::arrow::record_batch::RecordBatch;

use super::kafka::{KafkaProducer, Outgoing};
use super::{message_key, Result, Sink, SinkError};
use crate::batch::Batch;
use crate::codec::encode_json_lines;

/// The key prefix of a watermark marker.
pub const MARKER: &[u8] = b"weir.wm:";

/// A watermark marker read back: the writing partition and its watermark (`None`: idle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub from: u32,
    pub watermark: Option<i64>,
}

impl Marker {
    pub fn key(&self) -> Vec<u8> {
        let mut k = MARKER.to_vec();
        match self.watermark {
            Some(wm) => k.extend_from_slice(format!("{}:{wm}", self.from).as_bytes()),
            None => k.extend_from_slice(format!("{}:idle", self.from).as_bytes()),
        }
        k
    }

    /// The marker a record without a value carries in its key, if any.
    pub fn parse(key: &[u8]) -> Option<Marker> {
        let rest = std::str::from_utf8(key.strip_prefix(MARKER)?).ok()?;
        let (from, wm) = rest.split_once(':')?;
        let watermark = match wm {
            "idle" => None,
            wm => Some(wm.parse().ok()?),
        };
        Some(Marker { from: from.parse().ok()?, watermark })
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), which its default
/// partitioner applies to a message's key.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= (b as u32) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner picks for `key` among `partitions`.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

pub struct RepartitionSink {
    name: String,
    topic: String,
    partitions: u32,
    /// The writing task's partition (named in its markers).
    from: u32,
    producer: Arc<KafkaProducer>,
    /// The last marker written, so that an unchanged watermark is not written again.
    last_marker: Option<Option<i64>>,
    waited: Duration,
}

impl RepartitionSink {
    pub fn new(name: &str, topic: &str, partitions: u32, from: u32, producer: Arc<KafkaProducer>) -> RepartitionSink {
        RepartitionSink {
            name: name.to_string(),
            topic: topic.to_string(),
            partitions,
            from,
            producer,
            last_marker: None,
            waited: Duration::ZERO,
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> SinkError {
        SinkError::Failed { sink: self.name.clone(), message: format!("topic {}: {e}", self.topic) }
    }

    fn send(&mut self, msg: Outgoing<'_>) -> Result<()> {
        self.waited += self.producer.send_to(&self.topic, msg).map_err(|e| self.err(e))?;
        Ok(())
    }
}

impl Sink for RepartitionSink {
    fn write_rows(&mut self, _rows: &RecordBatch, _keys: &[usize], _raw: Option<&BinaryArray>) -> Result<()> {
        Err(self.err("a repartition topic takes rows with their event times"))
    }

    fn write_batch(&mut self, batch: &Batch, keys: &[usize]) -> Result<()> {
        let key_cols: Vec<_> = keys.iter().map(|&i| batch.rows.column(i).clone()).collect();
        let lines = encode_json_lines(&batch.rows).map_err(|e| self.err(e))?;
        for (row, line) in lines.split(|b| *b == b'\n').take(batch.num_rows()).enumerate() {
            let key = message_key(&key_cols, row).unwrap_or_default();
            let partition = partition_of(&key, self.partitions) as i32;
            let timestamp = batch.event_time.value(row);
            self.send(Outgoing {
                key: Some(&key),
                payload: Some(line),
                partition: Some(partition),
                timestamp: Some(timestamp),
            })?;
        }
        Ok(())
    }

    fn write_records(&mut self, _records: &[Vec<u8>]) -> Result<()> {
        Err(self.err("a repartition topic takes rows, not late events or dead letters"))
    }

    fn watermark(&mut self, watermark: Option<i64>) -> Result<()> {
        if watermark == Some(i64::MIN) || self.last_marker == Some(watermark) {
            return Ok(());
        }
        let key = Marker { from: self.from, watermark }.key();
        for p in 0..self.partitions {
            self.send(Outgoing { key: Some(&key), partition: Some(p as i32), ..Outgoing::default() })?;
        }
        self.last_marker = Some(watermark);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        // A transactional producer's messages become durable when the task commits its epoch.
        if self.producer.is_transactional() {
            return Ok(());
        }
        self.producer.flush().map_err(|e| self.err(e))
    }

    fn is_kafka(&self) -> bool {
        true
    }

    fn take_waited(&mut self) -> Duration {
        std::mem::take(&mut self.waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // Values of org.apache.kafka.common.utils.Utils.murmur2 (kafka-clients 4.4.0).
        let java = [
            ("", 275_646_681i32),
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("card-07", 1_386_380_599),
            ("a-little-bit-long-string", -985_981_536),
            ("abc", 479_470_107),
        ];
        for (s, want) in java {
            assert_eq!(murmur2(s.as_bytes()) as i32, want, "{s:?}");
        }
        // And the partitions its default partitioner picks among 3.
        assert_eq!(partition_of(b"card-07", 3), 1);
        assert_eq!(partition_of(b"a-little-bit-long-string", 3), 2);
    }

    #[test]
    fn markers_round_trip() {
        for m in [Marker { from: 7, watermark: Some(-5) }, Marker { from: 0, watermark: None }] {
            assert_eq!(Marker::parse(&m.key()), Some(m));
        }
        assert_eq!(
            Marker::parse(b"weir.wm:3:1795564800000"),
            Some(Marker { from: 3, watermark: Some(1_795_564_800_000) })
        );
        assert_eq!(Marker::parse(b"card-1"), None);
        assert_eq!(Marker::parse(b"weir.wm:x:1"), None);
    }
}
