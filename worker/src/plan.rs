//! From a validated manifest to an executable plan: schemas flow through the steps, every
//! expression is compiled against its input schema, and each error is reported with its
//! manifest path, all at once. Operators are instantiated per partition-task from the plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use weir_crds::{
    parse_aggregate, source_fields, topo_order, FieldType, Manifest, SourceSpec, StreamSpec, TableSpec,
    ValidationErrors,
};

use crate::codec::json::{engine_type, JsonDecoder};
use crate::codec::Decoder;
use crate::expr::{CompiledExpr, ExprCompiler};
use crate::operators::enrich::{EnrichOp, EnrichPlan};
use crate::operators::join::JoinOp;
use crate::operators::pattern::{PatternOp, PatternPlan, StepPlan};
use crate::operators::select::{Filter, Project};
use crate::operators::window::{AggSpec, WindowConfig, WindowKind, WindowOp};
use crate::operators::Operator;
use crate::table::{TablePlan, TableStore};

/// Where a source's or step's output goes: a step's input (0, or 1 for a join's right input)
/// or a sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Node(usize, u8),
    Sink(usize),
}

/// A source and how its records get event times.
pub struct SourcePlan {
    pub name: String,
    pub spec: SourceSpec,
    pub fields: BTreeMap<String, FieldType>,
    pub decoder: Arc<Decoder>,
    /// Column of the event time, or `None` to use the record's source timestamp.
    pub event_time_col: Option<usize>,
    pub max_out_of_orderness: i64,
    /// `eventTime.idleTimeout`: a partition without records this long stops holding back the
    /// watermark of steps with several inputs.
    pub idle_timeout: Option<std::time::Duration>,
    /// The internal topic of a repartition step: records carry their event times as
    /// timestamps, and the watermark comes from the writing partitions' markers.
    pub markers: bool,
    pub children: Vec<Target>,
}

/// A repartition step's internal topic, as its writing sink sees it.
#[derive(Clone, Debug)]
pub struct RepartitionPlan {
    pub topic: String,
    /// What the step reads: the markers carry its watermark.
    pub input: Input,
    /// The sources upstream of the step: the topic gets their partition count.
    pub roots: Vec<usize>,
    /// The source that reads the topic back.
    pub source: usize,
}

/// A compiled window step.
pub struct WindowPlan {
    pub kind: WindowKind,
    pub allowed_lateness: i64,
    pub keys: Vec<(usize, String, DataType)>,
    pub aggs: Vec<AggSpec>,
}

/// What a step reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Source(usize),
    Node(usize),
}

/// A compiled interval join.
#[derive(Clone)]
pub struct JoinPlan {
    pub kind: weir_crds::JoinKind,
    /// The right row at most this much earlier than the left row (ms).
    pub before: i64,
    /// The right row at most this much later than the left row (ms).
    pub after: i64,
    /// The `by` fields: column in the left input, column in the right input, type.
    pub on: Vec<(usize, usize, DataType)>,
    pub left: SchemaRef,
    pub right: SchemaRef,
    /// Each output column: from the right input?, its column there.
    pub columns: Vec<(bool, usize)>,
    /// A window join's (size, slide) in ms; its output ends with `window_start`, `window_end`.
    pub window: Option<(i64, i64)>,
    pub out_schema: SchemaRef,
}

/// A compiled step.
pub struct NodePlan {
    pub name: String,
    /// The sources whose watermarks drive this step (two for a join of two sources): its
    /// watermark is the least of theirs.
    pub root_sources: Vec<usize>,
    /// What it reads, in port order.
    pub inputs: Vec<Input>,
    pub join: Option<JoinPlan>,
    pub pattern: Option<PatternPlan>,
    pub filter: Option<CompiledExpr>,
    pub project: Option<Vec<(String, CompiledExpr)>>,
    pub window: Option<WindowPlan>,
    pub enrich: Option<EnrichPlan>,
    pub out_schema: SchemaRef,
    /// Output columns that form a Kafka message key.
    pub key_cols: Vec<usize>,
    pub late_sink: Option<usize>,
    /// `sessionState`: the sink that holds the open sessions of this session window.
    pub session_sink: Option<usize>,
    pub children: Vec<Target>,
}

/// A sink and what feeds it.
pub struct SinkPlan {
    pub name: String,
    pub spec: weir_crds::SinkSpec,
    pub key_cols: Vec<usize>,
    /// Parquet and Cassandra: the integer fields written as timestamps.
    pub timestamps: Vec<String>,
    /// An internal sink: the writing half of a repartition step.
    pub repartition: Option<RepartitionPlan>,
    /// A `format: avro` or `json-schema` Kafka sink's schemas.
    pub registered: Option<RegisteredSinkPlan>,
}

/// The schemas (text) a Kafka sink registers and writes with: its rows' (Avro: every field
/// nullable with default null, timestamps as `timestamp-millis`; JSON Schema: every property
/// optional and nullable), and with `keyFormat: avro` its key fields' Avro record.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisteredSinkPlan {
    pub format: weir_crds::Format,
    pub value_subject: String,
    pub value_schema: String,
    /// `<topic>-key` and the key record's schema.
    pub key: Option<(String, String)>,
}

/// The schemas of Kafka sink `sink` writing rows of `schema` keyed by `key_cols`.
fn registered_sink(
    sink: &str,
    k: &weir_crds::KafkaSinkSpec,
    schema: &SchemaRef,
    key_cols: &[usize],
    timestamps: &[String],
) -> Result<RegisteredSinkPlan, String> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            let t = match f.data_type() {
                DataType::Int64 if timestamps.contains(f.name()) => FieldType::Timestamp,
                other => field_type(other).ok_or_else(|| {
                    format!("field `{}` has type {other}, which {} output cannot hold", f.name(), k.format.name())
                })?,
            };
            Ok((f.name().clone(), t))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let record = format!("weir.{}", sink.replace('-', "_"));
    let value_schema = match k.format {
        weir_crds::Format::JsonSchema => weir_crds::jsonschema::json_schema_for(&format!("{record}.Row"), &fields),
        _ => crate::codec::avro::schema_for(&format!("{record}.Row"), &fields)?,
    };
    let key = match (k.key_format, key_cols.is_empty()) {
        (weir_crds::KeyFormat::Avro, false) => {
            let key_fields: Vec<_> = key_cols.iter().map(|&c| fields[c].clone()).collect();
            Some((format!("{}-key", k.topic), crate::codec::avro::schema_for(&format!("{record}.Key"), &key_fields)?))
        }
        _ => None,
    };
    let value_subject = k.registry.as_ref().map_or_else(|| format!("{}-value", k.topic), |r| r.subject_for(&k.topic));
    Ok(RegisteredSinkPlan { format: k.format, value_subject, value_schema, key })
}

/// The manifest's type of an engine column type, if it is one.
fn field_type(t: &DataType) -> Option<FieldType> {
    Some(match t {
        DataType::Utf8 => FieldType::String,
        DataType::Int64 => FieldType::Long,
        DataType::Float64 => FieldType::Double,
        DataType::Boolean => FieldType::Boolean,
        _ => return None,
    })
}

/// A Parquet sink's timestamp fields (`timestamps`, else `window_start`, `window_end` and the
/// sources' timestamp fields that the rows have), each checked to be an integer of the rows,
/// as `partitionBy.field` is.
fn parquet_timestamps(
    errs: &mut ValidationErrors,
    sink: &str,
    pq: &weir_crds::ParquetSinkSpec,
    schema: &SchemaRef,
    sources: &[SourcePlan],
) -> Vec<String> {
    let at = format!("spec.pipeline.sinks.{sink}.parquet");
    let is_int = |f: &str| schema.field_with_name(f).is_ok_and(|f| f.data_type() == &DataType::Int64);
    let fields: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if let Some(by) = &pq.partition_by {
        if !is_int(&by.field) {
            errs.push(
                format!("{at}.partitionBy.field"),
                format!(
                    "`{}` is not a timestamp field of the rows written (they have {})",
                    by.field,
                    fields.join(", ")
                ),
            );
        }
    }
    match &pq.timestamps {
        Some(list) => {
            for f in list.iter().filter(|f| !is_int(f)) {
                errs.push(
                    format!("{at}.timestamps"),
                    format!("`{f}` is not an integer field of the rows written (they have {})", fields.join(", ")),
                );
            }
            list.clone()
        }
        None => {
            let declared = sources.iter().flat_map(|s| s.fields.iter()).filter(|(_, t)| **t == FieldType::Timestamp);
            let mut names: Vec<String> = ["window_start", "window_end"].iter().map(|s| s.to_string()).collect();
            names.extend(declared.map(|(n, _)| n.clone()));
            names.sort();
            names.dedup();
            names.retain(|n| is_int(n));
            names
        }
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn fingerprint(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// Where a step keeps its state: derived from the step's name, not its position, so a job
/// changed by adding or removing other steps finds each step's state where it left it.
pub fn state_prefix(step: &str) -> Vec<u8> {
    let mut p = vec![1u8];
    p.extend_from_slice(&fnv1a(step.as_bytes()).to_be_bytes());
    p
}

/// Everything needed to run a job.
pub struct JobPlan {
    pub name: String,
    pub group: String,
    pub sources: Vec<SourcePlan>,
    /// Side-input tables, in name order.
    pub tables: Vec<Arc<TablePlan>>,
    /// Steps in an order where each comes after the step it reads.
    pub nodes: Vec<NodePlan>,
    pub sinks: Vec<SinkPlan>,
    pub dead_letter: Option<usize>,
    pub epoch_interval_ms: u64,
    /// How often state and input positions are committed together (`checkpointing.interval`).
    pub commit_interval_ms: u64,
    /// `delivery: exactly-once` (the default).
    pub exactly_once: bool,
    /// `checkpointing.storage`: where checkpoints go (`file:///…` or `s3://…`).
    pub checkpoint_storage: Option<String>,
    /// Completed checkpoints kept per partition.
    pub checkpoints_retained: usize,
    /// Hash of the pipeline, recorded with checkpoints.
    pub fingerprint: String,
    /// Folder of the manifest, for relative paths.
    pub base_dir: PathBuf,
    pub max_cached_keys: usize,
    /// `allowNonRestoredState`: start without the state of steps no longer in the pipeline.
    pub allow_non_restored_state: bool,
}

impl JobPlan {
    /// Plans a validated manifest; every expression error is reported with its path.
    pub fn new(m: &Manifest, base_dir: &Path) -> Result<JobPlan, ValidationErrors> {
        let p = &m.spec.pipeline;
        let mut errs = ValidationErrors::default();
        let compiler = ExprCompiler::default();
        let group = weir_crds::consumer_group(p, &m.metadata.name, m.metadata.namespace.as_deref());
        let source_index: BTreeMap<&str, usize> = p.sources.keys().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let sink_index: BTreeMap<&str, usize> = p.sinks.keys().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut sources: Vec<SourcePlan> = p
            .sources
            .iter()
            .map(|(name, s)| {
                let fields = source_fields(s);
                let decoder =
                    Decoder::new(s.format, s.registry.as_ref(), s.kafka.as_ref(), &fields).unwrap_or_else(|e| {
                        errs.push(format!("spec.pipeline.sources.{name}.registry"), e);
                        Decoder::Json(JsonDecoder::new(&fields))
                    });
                let decoder = Arc::new(decoder);
                let (event_time_col, ooo) = match &s.event_time {
                    Some(et) => (
                        decoder.schema().index_of(&et.field).ok(),
                        et.max_out_of_orderness.millis().unwrap_or(0) as i64,
                    ),
                    None => (None, 0),
                };
                SourcePlan {
                    name: name.clone(),
                    spec: s.clone(),
                    fields,
                    decoder,
                    event_time_col,
                    max_out_of_orderness: ooo,
                    idle_timeout: s
                        .event_time
                        .as_ref()
                        .and_then(|e| e.idle_timeout.as_ref()?.millis().ok())
                        .map(std::time::Duration::from_millis),
                    markers: false,
                    children: Vec::new(),
                }
            })
            .collect();
        let tables: Vec<Arc<TablePlan>> = p
            .tables
            .iter()
            .map(|(n, t)| {
                Arc::new(TablePlan::new(n, t).unwrap_or_else(|e| {
                    errs.push(format!("spec.pipeline.tables.{n}.registry"), e);
                    TablePlan::new(n, &TableSpec { format: weir_crds::Format::Json, ..t.clone() })
                        .expect("a JSON table plans")
                }))
            })
            .collect();
        let order = topo_order(p).map_err(|cycle| {
            let mut e = ValidationErrors::default();
            e.push("spec.pipeline.streams", format!("the steps form a cycle: {}", cycle.join(" -> ")));
            e
        })?;
        let node_index: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut nodes: Vec<NodePlan> = Vec::with_capacity(order.len());
        // The writing halves of repartition steps, after the manifest's sinks.
        let mut internal_sinks: Vec<SinkPlan> = Vec::new();
        // A source's or planned step's output schema and root sources.
        let input_of = |sources: &[SourcePlan], nodes: &[NodePlan], input: &str| -> Option<(SchemaRef, Vec<usize>)> {
            if let Some(&i) = source_index.get(input) {
                Some((sources[i].decoder.schema().clone(), vec![i]))
            } else {
                let &i = node_index.get(input)?;
                let n = nodes.get(i)?;
                Some((n.out_schema.clone(), n.root_sources.clone()))
            }
        };
        let input_ref = |input: &str| match source_index.get(input) {
            Some(&i) => Input::Source(i),
            None => Input::Node(node_index[input]),
        };
        for name in &order {
            let s = &p.streams[name];
            let path = format!("spec.pipeline.streams.{name}");
            let (input, roots, join) = match &s.join {
                Some(j) => match (input_of(&sources, &nodes, &j.left), input_of(&sources, &nodes, &j.right)) {
                    (Some((l, mut roots)), Some((r, more))) => {
                        roots.extend(more);
                        roots.sort_unstable();
                        roots.dedup();
                        let Some(jp) = plan_join(j, &path, l, r, &mut errs) else { continue };
                        (jp.out_schema.clone(), roots, Some(jp))
                    }
                    _ => continue, // an unknown input: reported by validation
                },
                None if s.repartition => {
                    let Some((schema, roots)) = input_of(&sources, &nodes, &s.from) else { continue };
                    let Some((src, sink)) = plan_repartition(
                        name,
                        &path,
                        s,
                        &schema,
                        &roots,
                        input_ref(&s.from),
                        &group,
                        &mut sources,
                        &mut errs,
                    ) else {
                        continue;
                    };
                    internal_sinks.push(sink);
                    (sources[src].decoder.schema().clone(), vec![src], None)
                }
                None => match input_of(&sources, &nodes, &s.from) {
                    Some((schema, roots)) => (schema, roots, None),
                    None => {
                        errs.push(format!("{path}.from"), format!("`{}` is not a source or a step", s.from));
                        continue;
                    }
                },
            };
            let mut node = plan_node(&compiler, name, &path, s, input, roots, &sink_index, &tables, &mut errs);
            node.join = join;
            node.inputs = match s.repartition {
                true => node.root_sources.iter().map(|&r| Input::Source(r)).collect(),
                false => s.inputs().into_iter().map(input_ref).collect(),
            };
            nodes.push(node);
        }
        // Wire every step and sink to what it reads; a repartition step reads its topic.
        let user_sinks = p.sinks.len();
        for (k, sink) in internal_sinks.iter().enumerate() {
            let rp = sink.repartition.as_ref().expect("internal sinks repartition");
            let target = Target::Sink(user_sinks + k);
            match rp.input {
                Input::Source(s) => sources[s].children.push(target),
                Input::Node(n) => nodes[n].children.push(target),
            }
            let at = node_index[sink.name.as_str()];
            sources[rp.source].children.push(Target::Node(at, 0));
        }
        for (i, name) in order.iter().enumerate() {
            if p.streams[name].repartition {
                continue;
            }
            for (port, from) in p.streams[name].inputs().into_iter().enumerate() {
                if let Some(&s) = source_index.get(from) {
                    sources[s].children.push(Target::Node(i, port as u8));
                } else if let Some(&n) = node_index.get(from) {
                    nodes[n].children.push(Target::Node(i, port as u8));
                }
            }
        }
        let mut sinks = Vec::new();
        for (i, (name, sink)) in p.sinks.iter().enumerate() {
            let mut key_cols = Vec::new();
            let mut schema = None;
            if let Some(from) = &sink.from {
                if let Some(&s) = source_index.get(from.as_str()) {
                    sources[s].children.push(Target::Sink(i));
                    schema = Some(sources[s].decoder.schema().clone());
                } else if let Some(&n) = node_index.get(from.as_str()) {
                    nodes[n].children.push(Target::Sink(i));
                    key_cols = nodes[n].key_cols.clone();
                    schema = Some(nodes[n].out_schema.clone());
                }
            }
            let registered = sink.kafka.as_ref().filter(|k| k.format.uses_registry());
            let timestamps = match (&sink.parquet, &sink.cassandra, &schema) {
                (Some(pq), _, Some(schema)) => parquet_timestamps(&mut errs, name, pq, schema, &sources),
                // Cassandra and Avro: the default timestamp fields become timestamps (in JSON
                // Schema they stay integers).
                (None, cassandra, Some(schema)) if cassandra.is_some() || registered.is_some() => {
                    parquet_timestamps(&mut errs, name, &Default::default(), schema, &sources)
                }
                _ => Vec::new(),
            };
            let registered = match (registered, &schema) {
                (Some(k), Some(schema)) => registered_sink(name, k, schema, &key_cols, &timestamps)
                    .map_err(|e| errs.push(format!("spec.pipeline.sinks.{name}.kafka.format"), e))
                    .ok(),
                _ => None,
            };
            sinks.push(SinkPlan {
                name: name.clone(),
                spec: sink.clone(),
                key_cols,
                timestamps,
                repartition: None,
                registered,
            });
        }
        sinks.extend(internal_sinks);
        if nodes.len() != order.len() {
            // A step was left out; the indexes of the ones after it would not match.
            if errs.is_empty() {
                errs.push("spec.pipeline.streams", "a step could not be planned; run the validation for details");
            }
            return Err(errs);
        }
        for (name, s) in &p.streams {
            if s.enrich.is_some() && s.state_ttl.is_some() {
                errs.push(
                    format!("spec.pipeline.streams.{name}.stateTtl"),
                    "a table keeps the latest row of every key (a tombstone-free compacted topic); expiring its \
                     rows is not available in this version of the worker",
                );
            }
        }
        errs.clone().into_result()?;
        Ok(JobPlan {
            name: m.metadata.name.clone(),
            group,
            sources,
            tables,
            nodes,
            sinks,
            dead_letter: p.dead_letter.as_deref().and_then(|d| sink_index.get(d).copied()),
            epoch_interval_ms: m.spec.epoch_interval.as_ref().and_then(|d| d.millis().ok()).unwrap_or(100).max(1),
            commit_interval_ms: m
                .spec
                .checkpointing
                .as_ref()
                .and_then(|c| c.interval.millis().ok())
                .unwrap_or(30_000)
                .max(1),
            exactly_once: m.spec.delivery == weir_crds::Delivery::ExactlyOnce,
            checkpoint_storage: m.spec.checkpoint_storage().map(str::to_string),
            checkpoints_retained: m.spec.checkpointing.as_ref().and_then(|c| c.retained).unwrap_or(3).max(1) as usize,
            fingerprint: fingerprint(&serde_json::to_vec(&m.spec.pipeline).unwrap_or_default()),
            base_dir: base_dir.to_path_buf(),
            max_cached_keys: 100_000,
            allow_non_restored_state: m.spec.allow_non_restored_state,
        })
    }

    /// True when every source ends by itself (the job exits when they are done; a
    /// repartition topic ends after its writers).
    pub fn bounded(&self) -> bool {
        self.sources.iter().filter(|s| !s.markers).all(|s| {
            s.spec.file.is_some()
                || s.spec.datagen.as_ref().is_some_and(|d| d.bounded())
                || s.spec.kafka.as_ref().is_some_and(|k| k.bounded)
        })
    }

    /// A relative path in the manifest, resolved from the manifest's folder.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The stateful steps by name, each with what its state's layout depends on: the window,
    /// the key types and the aggregates in order (accumulators are stored by position, in the
    /// order of the output names). Lateness, filters and renaming an output in place do not
    /// change it, and a restored state survives them.
    pub fn state_signatures(&self) -> BTreeMap<String, String> {
        self.nodes
            .iter()
            .filter_map(|n| {
                if let Some(j) = &n.join {
                    // Buffered rows are stored as each input's columns in order.
                    let cols = |s: &SchemaRef| -> Vec<String> {
                        s.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect()
                    };
                    let on: Vec<String> =
                        j.on.iter().map(|(l, _, t)| format!("{}: {t}", j.left.field(*l).name())).collect();
                    let sig = format!(
                        "join on [{}] of [{}] and [{}]",
                        on.join(", "),
                        cols(&j.left).join(", "),
                        cols(&j.right).join(", ")
                    );
                    return Some((n.name.clone(), sig));
                }
                if let Some(p) = &n.pattern {
                    let steps: Vec<String> = p
                        .steps
                        .iter()
                        .map(|st| {
                            format!("{} x{}-{} not {:b}", p.conditions[st.bit as usize].text, st.min, st.max, st.forbid)
                        })
                        .collect();
                    let kept: Vec<String> = p.kept.iter().map(|c| c.to_string()).collect();
                    let sig = format!("pattern [{}] keeping [{}]", steps.join(", "), kept.join(", "));
                    return Some((n.name.clone(), sig));
                }
                let w = n.window.as_ref()?;
                let keys: Vec<String> = w.keys.iter().map(|(_, name, t)| format!("{name}: {t}")).collect();
                let aggs: Vec<String> = w
                    .aggs
                    .iter()
                    .map(|a| match &a.arg {
                        Some(e) => format!("{:?}({}): {}", a.func, e.text, e.data_type),
                        None => format!("{:?}(*)", a.func),
                    })
                    .collect();
                let sig = format!("{:?} by [{}] of [{}]", w.kind, keys.join(", "), aggs.join(", "));
                Some((n.name.clone(), sig))
            })
            .collect()
    }

    /// Fresh operators of step `i` for one task, reading the worker's `tables`.
    pub fn instantiate(&self, i: usize, tables: &[Arc<TableStore>]) -> Vec<Box<dyn Operator>> {
        let n = &self.nodes[i];
        let mut ops: Vec<Box<dyn Operator>> = Vec::new();
        if let Some(j) = &n.join {
            ops.push(Box::new(JoinOp::new(&n.name, state_prefix(&n.name), j.clone(), self.max_cached_keys)));
        }
        if let Some(f) = &n.filter {
            ops.push(Box::new(Filter { name: n.name.clone(), predicate: f.clone() }));
        }
        if let Some(e) = &n.enrich {
            let table = tables.get(e.table).expect("the runtime opens every table of the plan").clone();
            ops.push(Box::new(EnrichOp::new(&n.name, e.clone(), table, &self.tables[e.table].name)));
        }
        if let Some(p) = &n.project {
            ops.push(Box::new(Project::new(n.name.clone(), p.clone())));
        }
        if let Some(p) = &n.pattern {
            ops.push(Box::new(PatternOp::new(&n.name, state_prefix(&n.name), p.clone(), self.max_cached_keys)));
        }
        if let Some(w) = &n.window {
            ops.push(Box::new(WindowOp::new(WindowConfig {
                name: n.name.clone(),
                state_prefix: state_prefix(&n.name),
                kind: w.kind,
                allowed_lateness: w.allowed_lateness,
                keys: w.keys.clone(),
                aggs: w.aggs.clone(),
                max_cached_keys: self.max_cached_keys,
                session_state: n.session_sink.is_some(),
            })));
        }
        ops
    }
}

/// The internal topic of repartition step `name`: a source that reads it back (its rows typed
/// as the step's input, event times from the record timestamps, watermarks from the writers'
/// markers) and the sink that writes it, keyed by the `keyBy` fields. The source's index and
/// the sink; `None` after reporting why it cannot be planned.
#[allow(clippy::too_many_arguments)]
fn plan_repartition(
    name: &str,
    path: &str,
    s: &StreamSpec,
    input: &SchemaRef,
    roots: &[usize],
    from: Input,
    group: &str,
    sources: &mut Vec<SourcePlan>,
    errs: &mut ValidationErrors,
) -> Option<(usize, SinkPlan)> {
    if !roots.iter().any(|&r| sources[r].spec.kafka.is_some()) {
        errs.push(
            format!("{path}.repartition"),
            format!("`{}` reads no Kafka source, whose partitions to follow", s.from),
        );
        return None;
    }
    // The topic lives on the brokers of the job's first Kafka source (where the operator
    // deletes it with the job).
    let kafka = sources.iter().find_map(|s| s.spec.kafka.clone()).expect("a root reads Kafka");
    let mut key_cols = Vec::new();
    for k in s.key_by.iter().flatten() {
        match input.index_of(k) {
            Ok(c) => key_cols.push(c),
            Err(_) => errs.push(format!("{path}.keyBy"), format!("`{k}` is not a field of `{}`", s.from)),
        }
    }
    let mut fields = BTreeMap::new();
    for f in input.fields() {
        let Some(t) = field_type(f.data_type()) else {
            errs.push(
                path.to_string(),
                format!("field `{}` has type {}, which a topic cannot carry", f.name(), f.data_type()),
            );
            return None;
        };
        fields.insert(f.name().clone(), t);
    }
    let topic = weir_crds::repartition_topic(group, name);
    let spec = SourceSpec {
        kafka: Some(weir_crds::KafkaSourceSpec {
            topic: topic.clone(),
            start_from: weir_crds::StartFrom::Earliest,
            start_timestamp: None,
            bounded: false,
            ..kafka.clone()
        }),
        schema: fields.clone(),
        ..Default::default()
    };
    let decoder = Arc::new(Decoder::Json(JsonDecoder::new(&fields)));
    let source = sources.len();
    let sink = SinkPlan {
        name: name.to_string(),
        spec: weir_crds::SinkSpec {
            kafka: Some(weir_crds::KafkaSinkSpec {
                brokers: kafka.brokers.clone(),
                topic: topic.clone(),
                properties: kafka.properties.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        key_cols,
        timestamps: Vec::new(),
        repartition: Some(RepartitionPlan { topic, input: from, roots: roots.to_vec(), source }),
        registered: None,
    };
    sources.push(SourcePlan {
        name: format!("{name}.repartition"),
        spec,
        fields,
        decoder,
        event_time_col: None,
        max_out_of_orderness: 0,
        idle_timeout: None,
        markers: true,
        children: Vec::new(),
    });
    Some((source, sink))
}

#[allow(clippy::too_many_arguments)]
fn plan_node(
    compiler: &ExprCompiler,
    name: &str,
    path: &str,
    s: &StreamSpec,
    input: SchemaRef,
    root_sources: Vec<usize>,
    sink_index: &BTreeMap<&str, usize>,
    tables: &[Arc<TablePlan>],
    errs: &mut ValidationErrors,
) -> NodePlan {
    let filter = s.filter.as_ref().and_then(|w| match compiler.compile(w, &input) {
        Ok(e) if e.data_type == DataType::Boolean => Some(e),
        Ok(e) => {
            errs.push(format!("{path}.where"), format!("`{w}` is a {} expression, not a condition", e.data_type));
            None
        }
        Err(e) => {
            errs.push(format!("{path}.where"), e);
            None
        }
    });
    let enrich = s.enrich.as_ref().and_then(|e| plan_enrich(e, path, &input, tables, errs));
    let input = enrich.as_ref().map_or(input, |e| e.out_schema.clone());
    let mut schema = input.clone();
    let project = s.select.as_ref().map(|sel| {
        let exprs: Vec<(String, CompiledExpr)> = sel
            .iter()
            .filter_map(|(out, text)| match compiler.compile(text, &input) {
                Ok(e) if is_engine_type(&e.data_type) => Some((out.clone(), e)),
                Ok(e) => {
                    errs.push(
                        format!("{path}.select.{out}"),
                        format!("`{text}` has type {}, which a stream cannot carry", e.data_type),
                    );
                    None
                }
                Err(e) => {
                    errs.push(format!("{path}.select.{out}"), e);
                    None
                }
            })
            .collect();
        schema = Project::new(name.to_string(), exprs.clone()).schema;
        exprs
    });
    let mut key_cols = Vec::new();
    let window = s.window.as_ref().and_then(|w| {
        let ms = |d: &weir_crds::Duration| d.millis().unwrap_or(1).max(1) as i64;
        let kind = if let Some(t) = &w.tumbling {
            WindowKind::Tumbling { size: ms(t) }
        } else if let Some(sl) = &w.sliding {
            WindowKind::Sliding { size: ms(&sl.size), slide: ms(&sl.slide) }
        } else {
            WindowKind::Session { gap: ms(&w.session.as_ref()?.gap) }
        };
        let keys: Vec<(usize, String, DataType)> = s
            .key_by
            .iter()
            .flatten()
            .filter_map(|k| match schema.index_of(k) {
                Ok(i) => Some((i, k.clone(), schema.field(i).data_type().clone())),
                Err(_) => {
                    errs.push(format!("{path}.keyBy"), format!("`{k}` is not a field of the step's input"));
                    None
                }
            })
            .collect();
        let aggs = s
            .aggregate
            .iter()
            .flatten()
            .filter_map(|(out, text)| {
                let call = parse_aggregate(text).map_err(|e| errs.push(format!("{path}.aggregate.{out}"), e)).ok()?;
                let arg = match &call.arg {
                    None => None,
                    Some(a) => match compiler.compile(a, &schema) {
                        Ok(e)
                            if numeric_only(call.func)
                                && !matches!(e.data_type, DataType::Int64 | DataType::Float64) =>
                        {
                            errs.push(
                                format!("{path}.aggregate.{out}"),
                                format!("`{a}` is {}, but {text} needs a number", e.data_type),
                            );
                            return None;
                        }
                        Ok(e) => Some(e),
                        Err(e) => {
                            errs.push(format!("{path}.aggregate.{out}"), e);
                            return None;
                        }
                    },
                };
                Some(AggSpec { name: out.clone(), func: call.func, arg })
            })
            .collect();
        key_cols = (0..keys.len()).collect();
        Some(WindowPlan {
            kind,
            allowed_lateness: s.allowed_lateness.as_ref().and_then(|d| d.millis().ok()).unwrap_or(0) as i64,
            keys,
            aggs,
        })
    });
    let pattern = s.pattern.as_ref().and_then(|p| plan_pattern(compiler, path, p, s.key_by.as_deref(), &schema, errs));
    if let Some(p) = &pattern {
        key_cols = p.emit_keys.clone();
    }
    // Without a window or a pattern, `keyBy` keys the step's output rows (a Kafka sink's message
    // key, a Redis sink's default key).
    if let (None, None, Some(keys)) = (&window, &pattern, &s.key_by) {
        key_cols = keys
            .iter()
            .filter_map(|k| match schema.index_of(k) {
                Ok(i) => Some(i),
                Err(_) => {
                    errs.push(format!("{path}.keyBy"), format!("`{k}` is not a field of the step's output"));
                    None
                }
            })
            .collect();
    }
    let out_schema = match (&window, &pattern) {
        (Some(w), _) => WindowOp::output_schema(&w.keys, &w.aggs),
        (None, Some(p)) => p.plan.out_schema.clone(),
        (None, None) => schema,
    };
    NodePlan {
        name: name.to_string(),
        root_sources,
        inputs: Vec::new(),
        join: None,
        pattern: pattern.map(|p| p.plan),
        filter,
        project,
        window,
        enrich,
        out_schema,
        key_cols,
        late_sink: s.late_output.as_deref().and_then(|l| sink_index.get(l).copied()),
        session_sink: s.session_state.as_deref().and_then(|l| sink_index.get(l).copied()),
        children: Vec::new(),
    }
}

/// Plans an enrichment of rows of `input` from its table; the key types must agree.
fn plan_enrich(
    e: &weir_crds::EnrichSpec,
    path: &str,
    input: &SchemaRef,
    tables: &[Arc<TablePlan>],
    errs: &mut ValidationErrors,
) -> Option<EnrichPlan> {
    let table_index = tables.iter().position(|t| t.name == e.table)?;
    let table = &tables[table_index];
    let by = input.index_of(&e.by).ok()?;
    let by_type = input.field(by).data_type();
    if *by_type != table.key_type {
        errs.push(
            format!("{path}.enrich.by"),
            format!(
                "`{}` is {by_type}, but the key `{}` of table `{}` is {}; the two must have one type",
                e.by, table.spec.key, e.table, table.key_type
            ),
        );
        return None;
    }
    let spec = TableSpec { schema: table.fields.clone(), ..table.spec.clone() };
    let added = e.added_fields(&spec);
    let columns = added.iter().map(|(_, f)| table.column(f)).collect::<Option<Vec<usize>>>()?;
    Some(EnrichPlan {
        table: table_index,
        by,
        columns,
        missing: e.missing,
        out_schema: EnrichPlan::output_schema(input, table, &added),
    })
}

/// A planned pattern and which of its output columns are the key fields.
struct PlannedPattern {
    plan: PatternPlan,
    emit_keys: Vec<usize>,
}

/// Plans a pattern over input `schema`: its conditions compiled, the fields `emit` reads.
fn plan_pattern(
    compiler: &ExprCompiler,
    path: &str,
    p: &weir_crds::PatternSpec,
    key_by: Option<&[String]>,
    schema: &SchemaRef,
    errs: &mut ValidationErrors,
) -> Option<PlannedPattern> {
    let keys: Vec<usize> = key_by?.iter().filter_map(|k| schema.index_of(k).ok()).collect();
    let mut conditions = Vec::new();
    let mut steps: Vec<StepPlan> = Vec::new();
    let mut forbid = 0u64;
    for (i, st) in p.sequence.iter().enumerate() {
        let bit = conditions.len() as u32;
        match compiler.compile(&st.condition, schema) {
            Ok(e) if e.data_type == DataType::Boolean => conditions.push(e),
            Ok(e) => errs.push(
                format!("{path}.pattern.sequence[{i}].where"),
                format!("`{}` is a {} expression, not a condition", st.condition, e.data_type),
            ),
            Err(e) => errs.push(format!("{path}.pattern.sequence[{i}].where"), e),
        }
        if bit >= 64 {
            continue;
        }
        if st.absent {
            forbid |= 1 << bit;
        } else {
            let (min, max) = st.bounds();
            steps.push(StepPlan { bit, min, max, forbid: std::mem::take(&mut forbid), strict: st.strict });
        }
    }
    if p.sequence.len() > 64 {
        errs.push(format!("{path}.pattern.sequence"), "at most 64 steps");
    }
    // Steps by name, negative ones left out (they have no event).
    let positive: Vec<&weir_crds::PatternStep> = p.sequence.iter().filter(|st| !st.absent).collect();
    let mut kept: Vec<usize> = Vec::new();
    let mut emit = Vec::new();
    let mut fields = Vec::new();
    let mut emit_keys = Vec::new();
    for (out, reference) in &p.emit {
        let (step, field) = match reference.split_once('.') {
            Some((st, f)) => match positive.iter().position(|x| x.name == st) {
                Some(i) => (Some(i), f),
                None => {
                    errs.push(format!("{path}.pattern.emit.{out}"), format!("`{st}` is not a step of the sequence"));
                    continue;
                }
            },
            None => (None, reference.as_str()),
        };
        let Ok(col) = schema.index_of(field) else {
            errs.push(format!("{path}.pattern.emit.{out}"), format!("`{field}` is not a field of the step's input"));
            continue;
        };
        let at = kept.iter().position(|&c| c == col).unwrap_or_else(|| {
            kept.push(col);
            kept.len() - 1
        });
        if step.is_none() && key_by.is_some_and(|k| k.iter().any(|k| k == field)) {
            emit_keys.push(emit.len());
        }
        emit.push((step, at));
        fields.push(Field::new(out, schema.field(col).data_type().clone(), true));
    }
    if conditions.len() != p.sequence.len() || p.sequence.len() > 64 || emit.len() != p.emit.len() || steps.is_empty() {
        return None;
    }
    let within = p.within.millis().ok()? as i64;
    let keep_all = steps.iter().any(|st| st.strict);
    let plan = PatternPlan {
        keys,
        conditions,
        steps,
        keep_all,
        trailing_forbid: forbid,
        within,
        kept,
        emit,
        out_schema: Arc::new(Schema::new(fields)),
    };
    Some(PlannedPattern { plan, emit_keys })
}

/// Plans a join of inputs with schemas `left` and `right`; `None` (with errors) when its `on`
/// fields are missing or differ in type.
fn plan_join(
    j: &weir_crds::JoinSpec,
    path: &str,
    left: SchemaRef,
    right: SchemaRef,
    errs: &mut ValidationErrors,
) -> Option<JoinPlan> {
    let mut on = Vec::new();
    for f in &j.by {
        match (left.index_of(f), right.index_of(f)) {
            (Ok(l), Ok(r)) if left.field(l).data_type() == right.field(r).data_type() => {
                on.push((l, r, left.field(l).data_type().clone()));
            }
            (Ok(l), Ok(r)) => errs.push(
                format!("{path}.join.by"),
                format!(
                    "`{f}` is {} in `{}` but {} in `{}`; joined fields need one type",
                    left.field(l).data_type(),
                    j.left,
                    right.field(r).data_type(),
                    j.right
                ),
            ),
            _ => {} // a missing field: reported by validation
        }
    }
    let (before, after) = j.bounds_millis()?;
    let window = match &j.window {
        Some(_) => Some(j.window_millis().filter(|&(size, slide)| slide > 0 && size >= slide)?),
        None => None,
    };
    if on.len() != j.by.len() || on.is_empty() {
        return None;
    }
    let names = |s: &SchemaRef| s.fields().iter().map(|f| f.name().clone()).collect::<Vec<String>>();
    let (l, r) = (names(&left), names(&right));
    let mut columns = Vec::new();
    let mut fields = Vec::new();
    for (from_right, input, out) in j.output_fields(&l, &r) {
        let schema = if from_right { &right } else { &left };
        let i = schema.index_of(input).ok()?;
        columns.push((from_right, i));
        // Outer joins leave the other side's fields null.
        fields.push(Field::new(out, schema.field(i).data_type().clone(), true));
    }
    if window.is_some() {
        fields.push(Field::new("window_start", DataType::Int64, true));
        fields.push(Field::new("window_end", DataType::Int64, true));
    }
    Some(JoinPlan {
        kind: j.kind,
        before: before as i64,
        after: after as i64,
        on,
        left,
        right,
        columns,
        window: window.map(|(size, slide)| (size as i64, slide as i64)),
        out_schema: Arc::new(Schema::new(fields)),
    })
}

fn numeric_only(f: weir_crds::AggregateFn) -> bool {
    matches!(f, weir_crds::AggregateFn::Sum | weir_crds::AggregateFn::Avg)
}

fn is_engine_type(t: &DataType) -> bool {
    [FieldType::String, FieldType::Long, FieldType::Double, FieldType::Boolean].iter().any(|f| &engine_type(*f) == t)
}

#[cfg(test)]
mod state_prefix_tests {
    use super::state_prefix;

    #[test]
    fn prefixes_follow_step_names_and_never_change() {
        // Stored state depends on these bytes: a change here orphans every job's state.
        assert_eq!(state_prefix("per_card_minute"), [1, 145, 170, 109, 174, 117, 50, 222, 164].to_vec());
        assert_ne!(state_prefix("a"), state_prefix("b"));
        assert_ne!(state_prefix("a")[..2], [0, 0], "task metadata lives under [0, 0]");
    }
}

#[cfg(test)]
mod key_tests {
    use super::JobPlan;

    fn plan(stream: &str) -> Result<JobPlan, String> {
        let yaml = format!(
            r#"
metadata: {{name: keyed}}
spec:
  pipeline:
    sources:
      p: {{file: {{path: in.jsonl}}, schema: {{id: string, card_id: string, amount: double}}}}
    streams:
      s: {stream}
    sinks:
      out: {{from: s, file: {{path: out.jsonl}}}}
"#
        );
        let m = weir_crds::Manifest::from_yaml(&yaml, "keyed").map_err(|e| e.to_string())?;
        JobPlan::new(&m, std::path::Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn key_by_without_a_window_keys_the_output_rows() {
        let p = plan("{from: p, keyBy: [card_id], select: {amount: amount, card_id: card_id}}").unwrap();
        let out = &p.sinks[0];
        assert_eq!(out.key_cols.len(), 1);
        let step = p.nodes.iter().find(|n| n.name == "s").unwrap();
        assert_eq!(step.out_schema.field(out.key_cols[0]).name(), "card_id");
        assert!(plan("{from: p}").unwrap().sinks[0].key_cols.is_empty(), "no keyBy, no key");
    }

    #[test]
    fn key_by_a_field_the_select_drops_is_an_error() {
        let Err(err) = plan("{from: p, keyBy: [card_id], select: {amount: amount}}") else { panic!("accepted") };
        assert!(err.contains("spec.pipeline.streams.s.keyBy") && err.contains("`card_id` is not a field"), "{err}");
    }
}

#[cfg(test)]
mod parquet_tests {
    use super::JobPlan;

    fn plan(sink: &str) -> Result<JobPlan, String> {
        let yaml = format!(
            r#"
metadata: {{name: pq}}
spec:
  pipeline:
    sources:
      p: {{file: {{path: in.jsonl}}, schema: {{card_id: string, amount: double, ts: timestamp, n: long}}}}
    streams:
      w: {{from: p, keyBy: [card_id], window: {{tumbling: 1m}}, aggregate: {{total: sum(amount)}}}}
    sinks:
      out: {sink}
"#
        );
        let m = weir_crds::Manifest::from_yaml(&yaml, "pq").map_err(|e| e.to_string())?;
        JobPlan::new(&m, std::path::Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn timestamp_fields_default_to_windows_and_declared_timestamps() {
        let p = plan("{from: w, parquet: {path: t, partitionBy: {field: window_start}}}").unwrap();
        assert_eq!(p.sinks[0].timestamps, ["window_end", "window_start"]);
        let p = plan("{from: p, parquet: {path: t}}").unwrap();
        assert_eq!(p.sinks[0].timestamps, ["ts"]);
        let p = plan("{from: p, parquet: {path: t, timestamps: [n]}}").unwrap();
        assert_eq!(p.sinks[0].timestamps, ["n"]);
    }

    #[test]
    fn fields_the_rows_lack_are_errors_naming_the_fields_they_have() {
        let Err(e) = plan("{from: w, parquet: {path: t, partitionBy: {field: ts}, timestamps: [total]}}") else {
            panic!("accepted")
        };
        assert!(
            e.contains("sinks.out.parquet.partitionBy.field") && e.contains("`ts` is not a timestamp field"),
            "{e}"
        );
        assert!(e.contains("they have card_id, window_start"), "{e}");
        assert!(e.contains("sinks.out.parquet.timestamps") && e.contains("`total` is not an integer field"), "{e}");
    }

    #[test]
    fn an_avro_sink_derives_its_schemas_from_the_rows() {
        let kafka = |extra: &str| {
            format!("{{from: w, kafka: {{brokers: \"k:9092\", topic: t, format: avro, registry: {{url: \"http://r:1\"{extra}}}}}}}")
        };
        let p = plan(&kafka("}, keyFormat: avro, properties: {a: b")).unwrap();
        let a = p.sinks[0].registered.as_ref().unwrap();
        assert_eq!(a.value_subject, "t-value");
        let value: serde_json::Value = serde_json::from_str(&a.value_schema).unwrap();
        assert_eq!(value["name"], "weir.out.Row");
        let ts = serde_json::json!(["null", {"type": "long", "logicalType": "timestamp-millis"}]);
        let fields: Vec<(&str, &serde_json::Value)> =
            value["fields"].as_array().unwrap().iter().map(|f| (f["name"].as_str().unwrap(), &f["type"])).collect();
        assert_eq!(
            fields,
            [
                ("card_id", &serde_json::json!(["null", "string"])),
                ("window_start", &ts),
                ("window_end", &ts),
                ("total", &serde_json::json!(["null", "double"])),
            ]
        );
        let (key_subject, key) = a.key.as_ref().unwrap();
        assert_eq!(key_subject, "t-key");
        assert!(key.contains("\"weir.out.Key\"") && key.contains("card_id") && !key.contains("total"), "{key}");
        let p = plan(&kafka(", subject: totals")).unwrap();
        let a = p.sinks[0].registered.as_ref().unwrap();
        assert_eq!((a.value_subject.as_str(), a.key.is_none()), ("totals", true), "string keys by default");
    }
}

#[cfg(test)]
mod repartition_tests {
    use super::{Input, JobPlan, Target};

    #[test]
    fn a_repartition_step_writes_its_topic_and_reads_it_back() {
        let yaml = r#"
metadata: {name: rp, namespace: team}
spec:
  pipeline:
    sources:
      p:
        kafka: {brokers: "127.0.0.1:9092", topic: payments, properties: {client.rack: r1}}
        schema: {id: string, merchant_id: string, amount: double, ts: timestamp}
        eventTime: {field: ts}
    streams:
      large: {from: p, where: "amount > 10"}
      by_merchant: {from: large, keyBy: [merchant_id], repartition: true}
      per_merchant: {from: by_merchant, keyBy: [merchant_id], window: {tumbling: 1m}, aggregate: {n: "count(*)"}}
    sinks:
      out: {from: per_merchant, file: {path: out.jsonl}}
"#;
        let m = weir_crds::Manifest::from_yaml(yaml, "rp").unwrap();
        let p = JobPlan::new(&m, std::path::Path::new(".")).unwrap();
        assert_eq!(p.sources.len(), 2, "the payments and the internal topic");
        let topic = &p.sources[1];
        assert!(topic.markers && topic.event_time_col.is_none(), "event times and watermarks come with the records");
        let k = topic.spec.kafka.as_ref().unwrap();
        assert_eq!(k.topic, "weir.team.rp.by_merchant.repartition");
        assert_eq!(k.properties["client.rack"], "r1", "the input's client settings");
        let node = |name: &str| p.nodes.iter().position(|n| n.name == name).unwrap();
        let (large, by_merchant) = (node("large"), node("by_merchant"));
        assert_eq!(p.sinks.len(), 2, "the manifest's sink, then the internal one");
        let writer = &p.sinks[1];
        let rp = writer.repartition.as_ref().unwrap();
        assert_eq!((rp.input, rp.source, rp.topic.as_str()), (Input::Node(large), 1, k.topic.as_str()));
        assert_eq!(p.nodes[large].children, [Target::Sink(1)], "`large` feeds only the topic");
        assert_eq!(p.nodes[large].out_schema.field(writer.key_cols[0]).name(), "merchant_id");
        assert_eq!(topic.children, [Target::Node(by_merchant, 0)]);
        assert_eq!(p.nodes[by_merchant].root_sources, [1]);
        assert_eq!(p.nodes[node("per_merchant")].root_sources, [1], "windows fire on the topic's watermark");
    }
}
