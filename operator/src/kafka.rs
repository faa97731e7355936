//! What Kafka says of a job's input topics: per partition the earliest and end offsets and the
//! consumer group's committed offset. Used by the REST API (`/consumer-groups/{group}/lag`) and
//! by the autoscaler. Blocking (librdkafka's admin calls); call it from `spawn_blocking`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use weir_crds::StreamJob;

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

/// A consumer of `brokers` in `group` that never joins it: only reads offsets. `properties`:
/// the source's client properties, resolved ([`resolve`]).
pub fn offsets_client(
    brokers: &str,
    group: &str,
    properties: &BTreeMap<String, String>,
) -> anyhow::Result<BaseConsumer> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers).set("group.id", group).set("enable.auto.commit", "false");
    for (k, v) in properties {
        cfg.set(k, v);
    }
    Ok(cfg.create()?)
}

/// A job's client properties as its workers resolve them: each `${env:NAME}` (a secret) from
/// the job's `spec.env`, a value or a key of a Secret in its namespace. The values stay in
/// memory: never logged, never written to a status.
pub async fn resolve(
    client: &Client,
    ns: &str,
    job: &StreamJob,
    properties: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    for name in properties.values().filter_map(|v| weir_crds::env_reference(v)) {
        let Some(env) = job.spec.env.iter().find(|e| e.name == name) else { continue };
        let value = match (&env.value, &env.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let r = &from.secret_key_ref;
                let secret = Api::<Secret>::namespaced(client.clone(), ns)
                    .get(&r.name)
                    .await
                    .map_err(|e| format!("reading Secret {ns}/{} for {name}: {e}", r.name))?;
                let bytes = secret.data.and_then(|mut d| d.remove(&r.key)).map(|b| b.0);
                let bytes = bytes.ok_or_else(|| format!("Secret {ns}/{} has no key {} (for {name})", r.name, r.key))?;
                String::from_utf8(bytes).map_err(|_| format!("Secret {ns}/{} key {} is not text", r.name, r.key))?
            }
            (None, None) => continue,
        };
        values.insert(name.to_string(), value);
    }
    weir_crds::resolve_properties(properties, |n| values.get(n).cloned())
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
