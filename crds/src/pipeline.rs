//! The pipeline spec: sources, side-input tables, named stream steps and sinks (PIPELINE.md).
//! Component kinds are optional fields rather than enums so that a manifest naming none or two
//! of them gets a validation error with its path instead of an opaque parse error.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// The dataflow of a job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PipelineSpec {
    /// Input streams by name.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSpec>,
    /// Side inputs looked up by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, TableSpec>,
    /// Named steps; each reads `from` a source or another step.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamSpec>,
    /// Outputs by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSpec>,
    /// The sink that receives records that fail to decode, with the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

/// One input stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSourceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagen: Option<DatagenSpec>,
    #[serde(default)]
    pub format: Format,
    /// The Schema Registry that `format: avro` records name their schemas in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
    /// Field name to type. Optional for `datagen`, whose kind implies it, and for
    /// `format: avro`, which takes it from the registry subject's schema.
    #[serde(default)]
    pub schema: BTreeMap<String, FieldType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTimeSpec>,
}

/// Record encoding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per record.
    #[default]
    Json,
    /// Avro in the Schema Registry's wire format: a zero byte, the schema's id (4 bytes, big
    /// endian), the record in Avro's binary encoding. Needs `registry`.
    Avro,
    /// A JSON object in the Schema Registry's wire format (a zero byte, the JSON Schema's id,
    /// then the object), as Confluent's JSON Schema serializer writes it. Needs `registry`.
    #[serde(rename = "json-schema")]
    JsonSchema,
}

impl Format {
    /// Whether records name their schema in a Schema Registry.
    pub fn uses_registry(self) -> bool {
        self != Format::Json
    }

    /// As the manifest spells it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::JsonSchema => "json-schema",
        }
    }
}

/// A Schema Registry (its Confluent-compatible API: Confluent's registry, Apicurio Registry's
/// `/apis/ccompat/v7`, Karapace, Redpanda).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrySpec {
    /// `http://host:port[/path]`, e.g. `http://registry:8080/apis/ccompat/v7`.
    pub url: String,
    /// The subject: a source's or table's schema (when `schema` is omitted, its fields; else
    /// checked to hold them), a Kafka sink's place to register its schema. Default
    /// `<topic>-value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The subject's version a source or table reads with; default the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Basic authentication's user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Basic authentication's password: only as `${env:NAME}`, from a Secret through spec.env.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl RegistrySpec {
    /// The subject, `<topic>-value` unless one is named.
    pub fn subject_for(&self, topic: &str) -> String {
        self.subject.clone().unwrap_or_else(|| format!("{topic}-value"))
    }
}

/// How a Kafka sink writes message keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyFormat {
    /// One key field as its text, several as a JSON array.
    #[default]
    String,
    /// An Avro record of the key fields in the wire format, its schema registered under
    /// `<topic>-key`. Needs `format: avro`'s `registry`.
    Avro,
}

/// Field types a schema can declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    #[serde(alias = "int", alias = "bigint")]
    Long,
    #[serde(alias = "float")]
    Double,
    #[serde(alias = "bool")]
    Boolean,
    /// Epoch milliseconds (integer) or an RFC 3339 string.
    Timestamp,
}

/// Where a record's event time comes from, and how out of order records may be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTimeSpec {
    pub field: String,
    #[serde(default = "zero")]
    pub max_out_of_orderness: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

fn is_json(f: &Format) -> bool {
    *f == Format::Json
}

fn is_string_key(f: &KeyFormat) -> bool {
    *f == KeyFormat::String
}

fn zero() -> Duration {
    Duration::from("0s")
}

/// A Kafka topic read as a source or a table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSourceSpec {
    pub brokers: String,
    pub topic: String,
    #[serde(default)]
    pub start_from: StartFrom,
    /// With `startFrom: timestamp`: epoch milliseconds or RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<String>,
    /// Read up to the end offsets found at start, then finish (backfills, benchmarks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bounded: bool,
    /// Consumer group; defaults to `weir.<namespace>.<job>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Extra librdkafka properties (security settings and tuning).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// Where a Kafka source starts when it restores no state and its group has no offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    #[default]
    Committed,
    Earliest,
    Latest,
    Timestamp,
}

/// A local JSON-lines file (a bounded source, or a sink).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
}

/// Generated events for demos and benchmarks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DatagenSpec {
    pub kind: DatagenKind,
    /// Events per second of wall-clock time; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// Events per second of event time (spacing of `ts`); `rate`, else 10,000, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_rate: Option<u64>,
    #[serde(default)]
    pub seed: u64,
    /// Number of events; the source is unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Number of distinct cards (keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
    /// Event time of the first event (epoch ms); the wall clock at start when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
}

impl DatagenSpec {
    /// Whether the rows end: a `count`, or merchants (one row per key).
    pub fn bounded(&self) -> bool {
        self.count.is_some() || self.kind == DatagenKind::Merchants
    }
}

/// What `datagen` generates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DatagenKind {
    /// Card payments (about 500 bytes, skewed cards, some out of order and late).
    Payments,
    /// Shop orders `o-<n>` by skewed customers at merchants `m-<n>`.
    Orders,
    /// The payments for the orders of the same seed, start time and event rate, each 1 to 60
    /// seconds after its order (so up to a minute out of order); one order in 25 is never paid.
    OrderPayments,
    /// The merchants `m-00000` to `m-<keys - 1>` (a side-input table), once each.
    Merchants,
    /// Nexmark's people (the online auction benchmark's sellers and bidders): one in 50 events
    /// of the Nexmark stream; `eventRate` counts all three Nexmark kinds, so the persons,
    /// auctions and bids of one seed, start time and event rate fit together.
    NexmarkPersons,
    /// Nexmark's auctions (three in 50 events), each by a person that exists by then (mostly a
    /// few hot sellers).
    NexmarkAuctions,
    /// Nexmark's bids (46 in 50 events), each on one of the last 100 auctions (half of them on
    /// a hot auction) by a person that exists by then; 10 % out of order by up to 2 s.
    NexmarkBids,
}

/// A side input: every record of a compacted topic (or a file, or generated rows), kept as
/// the latest row per key in RocksDB on every worker, and read by `enrich` steps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TableSpec {
    /// Read from the beginning by every worker, all partitions, and followed as it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSourceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datagen: Option<DatagenSpec>,
    /// Not loaded: each key looked up in Redis when a row needs it (JSON values, as the Redis
    /// sink writes them), with a bounded cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisTableSpec>,
    /// The key field: a later row with the same key replaces the earlier one (unless the
    /// table keeps `versions`).
    pub key: String,
    /// Keep each key's rows by a time field, so that a lookup sees the row as of the looking-up
    /// event's time (a temporal join) instead of the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<TableVersionsSpec>,
    #[serde(default)]
    pub format: Format,
    /// The Schema Registry that `format: avro` records name their schemas in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
    #[serde(default)]
    pub schema: BTreeMap<String, FieldType>,
}

/// `tables.NAME.redis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisTableSpec {
    /// `redis://[:password@]host[:port][/db]`.
    pub url: String,
    /// Put before the key's value to make the Redis key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// How long a looked-up value (or its absence) is used again before Redis is asked again.
    /// Default 1m.
    #[serde(default = "one_minute")]
    pub cache_ttl: Duration,
}

fn one_minute() -> Duration {
    Duration::from("1m")
}

/// `tables.NAME.versions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TableVersionsSpec {
    /// The time a row takes effect: a `timestamp` (or `long`, epoch ms) field.
    pub field: String,
    /// How far behind a key's newest row lookups see the rows then in effect: older rows go,
    /// except the last one at or before that horizon. Default 1h.
    #[serde(default = "one_hour")]
    pub retention: Duration,
}

fn one_hour() -> Duration {
    Duration::from("1h")
}

/// A named step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamSpec {
    /// The source or step this one reads.
    #[serde(default)]
    pub from: String,
    /// A filter: a SQL boolean expression over the input fields.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// A projection: output field to SQL expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_by: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_lateness: Option<Duration>,
    /// Output field to aggregate call, e.g. `total: sum(amount)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<BTreeMap<String, String>>,
    /// The sink that receives events too late for every window they belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_output: Option<String>,
    /// A Redis sink (without `from`) that holds each key's open session of a session window:
    /// written as events arrive (every epoch), expiring after the gap, removed when the
    /// session closes and its result is emitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_state: Option<String>,
    /// How long a key's state lives without updates (like Flink's StateTtlConfig).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<PatternSpec>,
    /// An interval join of two inputs (then the step has no `from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinSpec>,
    /// Moves every row to the partition of its `keyBy` fields, through an internal Kafka topic
    /// (`<group>.<step>.repartition`) with the input's partition count, written in the task's
    /// transaction; event times and watermarks travel with the rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repartition: bool,
}

/// An interval join: a left and a right row with equal `by` fields join when the right row's
/// event time is within `within` of the left row's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinSpec {
    /// The left input: a source or a step.
    pub left: String,
    /// The right input: a source or a step.
    pub right: String,
    /// Fields present in both inputs with the same type, equal in joined rows. (Not `on`:
    /// kubectl reads YAML 1.1, where an unquoted key `on` is the boolean `true`.)
    pub by: Vec<String>,
    /// How far apart in event time joined rows may be, either way: `within: 5m` is
    /// `before: 5m, after: 5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Duration>,
    /// How much earlier than the left row the right row may be (default `within`, else 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Duration>,
    /// How much later than the left row the right row may be (default `within`, else 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Duration>,
    /// A window join instead of an interval join: rows join when they fall in the same
    /// tumbling or sliding window (one joined row per window they share), which the output
    /// names in `window_start` and `window_end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    #[serde(default, rename = "type")]
    pub kind: JoinKind,
}

impl StreamSpec {
    /// The sources or steps this step reads: `join.left` and `join.right`, or `from`.
    pub fn inputs(&self) -> Vec<&str> {
        match &self.join {
            Some(j) => vec![j.left.as_str(), j.right.as_str()],
            None => vec![self.from.as_str()],
        }
    }
}

impl JoinSpec {
    /// (before, after) in milliseconds; `None` when a duration does not parse.
    pub fn bounds_millis(&self) -> Option<(u64, u64)> {
        let side = |d: &Option<Duration>| match d.as_ref().or(self.within.as_ref()) {
            Some(d) => d.millis().ok(),
            None => Some(0),
        };
        Some((side(&self.before)?, side(&self.after)?))
    }

    /// The joined row's fields, in order: (from the right input?, input field, output field).
    /// Every left field keeps its name, then every right field but the `by` fields (equal to
    /// the left's); a right field whose name the left already has is named `<right>_<field>`.
    pub fn output_fields<'a>(&self, left: &'a [String], right: &'a [String]) -> Vec<(bool, &'a str, String)> {
        let mut out: Vec<(bool, &str, String)> = left.iter().map(|f| (false, f.as_str(), f.clone())).collect();
        for f in right {
            if self.by.contains(f) {
                continue;
            }
            let name = if left.contains(f) { format!("{}_{f}", self.right) } else { f.clone() };
            out.push((true, f.as_str(), name));
        }
        out
    }

    /// A window join's windows as (size, slide) in ms: tumbling windows slide by their size.
    pub fn window_millis(&self) -> Option<(u64, u64)> {
        let w = self.window.as_ref()?;
        match (&w.tumbling, &w.sliding) {
            (Some(t), None) => t.millis().ok().map(|ms| (ms, ms)),
            (None, Some(s)) => Some((s.size.millis().ok()?, s.slide.millis().ok()?)),
            _ => None,
        }
    }
}

/// Which unmatched rows a join also emits (with the other side's fields null), when no row
/// can match them any more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JoinKind {
    #[default]
    Inner,
    Left,
    Right,
    Full,
}

/// One window kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WindowSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding: Option<SlidingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlidingSpec {
    pub size: Duration,
    pub slide: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionSpec {
    pub gap: Duration,
}

/// Enrichment from a side-input table: each row gets the table's fields for the key in its
/// `by` field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrichSpec {
    pub table: String,
    /// The input field holding the table's key. `on` is accepted too, as in PIPELINE.md, in
    /// manifests that are not read as YAML 1.1 (kubectl reads a bare `on` as `true`).
    #[serde(alias = "on")]
    pub by: String,
    /// The table's fields to add; all but its key when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Put before each added field's name (to tell `country` of the table from the input's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// What happens to a row whose key the table does not hold.
    #[serde(default)]
    pub missing: MissingKey,
}

/// `enrich.missing`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MissingKey {
    /// The row goes on with the table's fields null (a left join).
    #[default]
    Null,
    /// The row is dropped (an inner join), and counted.
    Drop,
    /// The row goes to the pipeline's `deadLetter` sink with the reason.
    DeadLetter,
}

impl EnrichSpec {
    /// The table fields added, in order, and their names in the output.
    pub fn added_fields(&self, table: &TableSpec) -> Vec<(String, String)> {
        let fields: Vec<String> = match self.fields.is_empty() {
            true => table.schema.keys().filter(|f| **f != table.key).cloned().collect(),
            false => self.fields.clone(),
        };
        let prefix = self.prefix.as_deref().unwrap_or("");
        fields.into_iter().map(|f| (format!("{prefix}{f}"), f)).collect()
    }
}

/// A sequence of conditions matched per key within a time bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatternSpec {
    pub within: Duration,
    pub sequence: Vec<PatternStep>,
    /// Output field to a reference such as `hit.amount` or a key field.
    pub emit: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatternStep {
    pub name: String,
    #[serde(rename = "where")]
    pub condition: String,
    /// Exactly this many events (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// At least this many events (`minTimes: 1` alone: one or more; `minTimes: 0`: optional,
    /// the match may skip the step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_times: Option<u32>,
    /// At most this many events (default: no limit when `minTimes` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_times: Option<u32>,
    /// A negative step ("not followed by"): a match fails when an event meets this condition
    /// after the step before it and before the step after it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub absent: bool,
    /// Strict contiguity: this step's events must each follow the match's previous event
    /// directly (no other event of the key in between), as Flink's `next`/`consecutive`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
}

impl PatternStep {
    /// (at least, at most) events.
    pub fn bounds(&self) -> (u32, u32) {
        match (self.times, self.min_times, self.max_times) {
            (Some(n), _, _) => (n, n),
            (None, None, None) => (1, 1),
            (None, min, max) => (min.unwrap_or(1), max.unwrap_or(u32::MAX)),
        }
    }
}

/// One output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkSpec {
    /// The step or source written; absent for late-output and dead-letter sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<ParquetSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opensearch: Option<OpenSearchSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cassandra: Option<CassandraSinkSpec>,
}

/// Rows upserted into a Cassandra table whose primary key is the stream's key fields (the
/// partition key) and, for window results, `window_start` (clustering): replays overwrite.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CassandraSinkSpec {
    /// `host:port` of one or more nodes.
    pub contact_points: Vec<String>,
    pub keyspace: String,
    pub table: String,
    /// Each row expires this long after its write (`USING TTL`); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Create the keyspace and the table from the rows' fields when they do not exist (else
    /// an existing table is checked to have every field and the primary key the rows need).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_table: bool,
    /// The keyspace's replication factor when it is created (SimpleStrategy); 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<u32>,
}

/// Rows indexed into OpenSearch (or Elasticsearch) with the bulk API, one document per row under
/// a deterministic id, so a replay after recovery overwrites the same documents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenSearchSinkSpec {
    /// `http://[user:password@]host[:port]`.
    pub url: String,
    /// The index written.
    pub index: String,
    /// The fields whose values, joined by `:`, make a document's id; by default the stream's key
    /// fields and, for window results, `window_start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Vec<String>>,
    /// Field types (`keyword`, `long`, `double`, `date`, ...) the index is created with when it
    /// does not exist; without them OpenSearch maps the fields as it sees them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mappings: BTreeMap<String, String>,
}

/// Rows written as Parquet files (a warehouse table), published when the epoch that wrote them
/// commits: a reader never sees a partial file, nor one whose rows a recovery writes again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParquetSinkSpec {
    /// The table's folder: `s3://bucket/prefix`, `file:///absolute/path`, or a path relative to
    /// the manifest.
    pub path: String,
    /// Files go into sub-folders named from this timestamp field, e.g. `date=2026-11-25/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<PartitionBy>,
    /// A file is finished at every commit, or before when it reaches this size (`64Mi`,
    /// `1Gi`, `500M` or bytes); 128Mi when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<String>,
    /// Column compression; snappy when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<ParquetCompression>,
    /// Integer fields written as Parquet timestamps (milliseconds, UTC); by default
    /// `window_start`, `window_end` and every field a source declares as a timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<Vec<String>>,
}

/// `parquet.partitionBy`: the folder of a row from one of its timestamp fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartitionBy {
    /// A timestamp field of the rows (milliseconds since the epoch).
    pub field: String,
    /// The folder name, strftime-style in UTC (`%Y`, `%m`, `%d`, `%H`, ...); `/` nests folders.
    /// `date=%Y-%m-%d` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// `parquet.compression`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParquetCompression {
    #[default]
    Snappy,
    Zstd,
    None,
}

/// A size: bytes, or a number with a Kubernetes-style suffix (`k`, `M`, `G` in powers of ten;
/// `Ki`, `Mi`, `Gi` in powers of two).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Rows upserted into Redis as JSON strings, under a key made of their key fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSinkSpec {
    /// `redis://[:password@]host[:port][/db]`.
    pub url: String,
    /// The fields whose values, joined by `:`, make a row's key; by default the stream's key
    /// fields and, for window results, `window_start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<String>>,
    /// Put before every key (and names the list that late events and dead letters go to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Each key expires this long after its last write (`SET ... PX`); never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

/// A Kafka topic written with one JSON object per message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSinkSpec {
    pub brokers: String,
    pub topic: String,
    /// `avro` or `json-schema`: values in the registry's wire format, with a schema derived from
    /// the stream and registered under `registry.subject` (default `<topic>-value`).
    #[serde(default, skip_serializing_if = "is_json")]
    pub format: Format,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
    #[serde(default, skip_serializing_if = "is_string_key")]
    pub key_format: KeyFormat,
    /// Extra librdkafka properties.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}
