//! StreamJob custom resource and pipeline spec types shared by the worker, the operator and
//! tools; validation with field paths; no Kubernetes runtime code.

mod aggregate;
pub mod avro;
mod duration;
mod job;
pub mod jsonschema;
mod manifest;
mod pipeline;
pub mod registry;
mod validate;

use std::collections::BTreeMap;

pub use aggregate::{parse_aggregate, AggregateCall, AggregateFn};
pub use duration::Duration;
pub use job::*;
pub use manifest::{Manifest, ManifestError, ManifestMeta};
pub use pipeline::*;
pub use validate::{source_fields, table_fields, topo_order, validate_spec, FieldError, ValidationErrors};

/// The fields of what a `datagen` kind generates.
pub fn datagen_schema(kind: DatagenKind) -> BTreeMap<String, FieldType> {
    use FieldType::{Double, Long, String as Str, Timestamp};
    let fields: &[(&str, FieldType)] = match kind {
        DatagenKind::Payments => &[
            ("id", Str),
            ("card_id", Str),
            ("merchant_id", Str),
            ("amount", Double),
            ("currency", Str),
            ("country", Str),
            ("channel", Str),
            ("device_id", Str),
            ("ip", Str),
            ("status", Str),
            ("ts", Timestamp),
        ],
        DatagenKind::Orders => {
            &[("order_id", Str), ("customer_id", Str), ("merchant_id", Str), ("total", Double), ("ts", Timestamp)]
        }
        DatagenKind::OrderPayments => {
            &[("payment_id", Str), ("order_id", Str), ("amount", Double), ("method", Str), ("ts", Timestamp)]
        }
        DatagenKind::Merchants => {
            &[("merchant_id", Str), ("name", Str), ("category", Str), ("country", Str), ("ts", Timestamp)]
        }
        DatagenKind::NexmarkPersons => &[
            ("id", Long),
            ("name", Str),
            ("email", Str),
            ("credit_card", Str),
            ("city", Str),
            ("state", Str),
            ("ts", Timestamp),
            ("extra", Str),
        ],
        DatagenKind::NexmarkAuctions => &[
            ("id", Long),
            ("item_name", Str),
            ("description", Str),
            ("initial_bid", Long),
            ("reserve", Long),
            ("ts", Timestamp),
            ("expires", Timestamp),
            ("seller", Long),
            ("category", Long),
            ("extra", Str),
        ],
        DatagenKind::NexmarkBids => &[
            ("auction", Long),
            ("bidder", Long),
            ("price", Long),
            ("channel", Str),
            ("url", Str),
            ("ts", Timestamp),
            ("extra", Str),
        ],
    };
    fields.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Epoch milliseconds from an integer string or an RFC 3339 time.
pub fn parse_timestamp_millis(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(t).ok().map(|d| d.timestamp_millis())
}

/// The Kafka consumer group of a job: a source's `kafka.group`, else `weir.<namespace>.<name>`
/// (`weir.<name>` without a namespace, in a local run).
pub fn consumer_group(pipeline: &PipelineSpec, name: &str, namespace: Option<&str>) -> String {
    if let Some(g) = pipeline.sources.values().find_map(|s| s.kafka.as_ref()?.group.clone()) {
        return g;
    }
    match namespace {
        Some(ns) => format!("weir.{ns}.{name}"),
        None => format!("weir.{name}"),
    }
}

/// The internal topic of repartition step `step` of a job whose consumer group is `group`.
pub fn repartition_topic(group: &str, step: &str) -> String {
    format!("{group}.{step}.repartition")
}

/// The internal topics of a job (its repartition steps'), with the brokers that hold them (the
/// first Kafka source's) and that source's client properties; none without repartition steps.
pub fn internal_topics(
    pipeline: &PipelineSpec,
    name: &str,
    namespace: Option<&str>,
) -> Option<(String, BTreeMap<String, String>, Vec<String>)> {
    let group = consumer_group(pipeline, name, namespace);
    let topics: Vec<String> =
        pipeline.streams.iter().filter(|(_, s)| s.repartition).map(|(n, _)| repartition_topic(&group, n)).collect();
    let kafka = pipeline.sources.values().find_map(|s| s.kafka.as_ref())?;
    (!topics.is_empty()).then(|| (kafka.brokers.clone(), kafka.properties.clone(), topics))
}

/// librdkafka properties that hold secrets: in a manifest (a ConfigMap, a Git repository) only as
/// `${env:NAME}`, the worker's environment variable, which `spec.env` takes from a Secret.
pub const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl.truststore.password",
];

/// The variable `NAME` of a property value `${env:NAME}`, or `None` for a literal value.
pub fn env_reference(value: &str) -> Option<&str> {
    value.strip_prefix("${env:")?.strip_suffix('}')
}

/// Whether `name` can be an environment variable's name (letters, digits, `_`; not a digit
/// first).
pub fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Client properties with every `${env:NAME}` value replaced by `lookup(NAME)`; an error naming
/// the property and the variable when one is not set.
pub fn resolve_properties(
    properties: &BTreeMap<String, String>,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    properties
        .iter()
        .map(|(k, v)| match env_reference(v) {
            None => Ok((k.clone(), v.clone())),
            Some(name) => lookup(name).map(|value| (k.clone(), value)).ok_or_else(|| {
                format!("property {k} is ${{env:{name}}}, and the environment variable {name} is not set (spec.env, from a Secret)")
            }),
        })
        .collect()
}

/// Standard base64 of `bytes` (HTTP basic authentication, binary records in dead letters).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The StreamJob CRD as YAML, as `crdgen` writes it to `crds/streamjob.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = StreamJob::crd();
    let yaml = serde_yaml::to_string(&crd).expect("the CRD serializes");
    format!("# Generated by `cargo run -p weir-crds --bin crdgen`; do not edit.\n{}", quote_yaml11_booleans(&yaml))
}

/// serde_yaml writes YAML 1.2, where `on` is a string; kubectl reads YAML 1.1, where `on`,
/// `off`, `yes`, `no`, `y` and `n` are booleans. Quotes such plain words where they stand as a
/// key or a list item (field names like a join's `on`).
fn quote_yaml11_booleans(yaml: &str) -> String {
    const WORDS: [&str; 12] = ["on", "off", "yes", "no", "y", "n", "On", "Off", "Yes", "No", "Y", "N"];
    let mut out = String::with_capacity(yaml.len() + 64);
    for line in yaml.lines() {
        let body = line.trim_start();
        let indent = &line[..line.len() - body.len()];
        let fixed = if let Some(item) = body.strip_prefix("- ").filter(|w| WORDS.contains(w)) {
            format!("{indent}- '{item}'")
        } else if let Some(key) = body.strip_suffix(':').filter(|w| WORDS.contains(w)) {
            format!("{indent}'{key}':")
        } else {
            line.to_string()
        };
        out.push_str(&fixed);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
