//! What Kafka says of a job's input topics: per partition the earliest and end offsets and the
//! consumer group's committed offset. Used by the REST API (`/consumer-groups/{group}/lag`) and
//! by the autoscaler. Blocking (librdkafka's admin calls); call it from `spawn_blocking`.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One partition's offsets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The earliest offset still stored.
    pub low: i64,
    /// The offset the next record will get.
    pub end: i64,
    /// The group's committed offset; `None` before it committed any there.
    pub committed: Option<i64>,
}

impl PartitionOffsets {
    /// Records the group has still to read: from its committed offset, or from the earliest
    /// stored one when it committed none.
    pub fn lag(&self) -> i64 {
        (self.end - self.committed.unwrap_or(self.low)).max(0)
    }
}

/// A consumer of `brokers` in `group` that never joins it: only reads offsets.
pub fn offsets_client(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?)
}

/// The offsets of every partition of `topic` for the consumer's group, by partition.
pub fn topic_offsets(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<PartitionOffsets>> {
    let timeout = Duration::from_secs(10);
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let Some(t) = md.topics().first() else { anyhow::bail!("no metadata for topic {topic}") };
    if let Some(e) = t.error() {
        anyhow::bail!("topic {topic}: {e:?}");
    }
    let count = t.partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..count {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    (0..count)
        .map(|p| {
            let (low, end) = consumer.fetch_watermarks(topic, p, timeout)?;
            let committed = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            Ok(PartitionOffsets { partition: p, low, end, committed })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_committed_or_the_earliest_offset() {
        let p = PartitionOffsets { partition: 0, low: 100, end: 1_000, committed: Some(900) };
        assert_eq!(p.lag(), 100);
        assert_eq!(PartitionOffsets { committed: None, ..p }.lag(), 900, "nothing committed: all that is stored");
        assert_eq!(PartitionOffsets { committed: Some(1_200), ..p }.lag(), 0, "never negative");
    }
}
