//! Semantic validation of a StreamJob spec: every error at once, each with its field path
//! (`spec.pipeline.streams.per_card_minute.window`). Structural checks (types, unknown fields)
//! happen when the manifest is parsed; expression checks that need the engine happen in the
//! worker's planner, which reports in the same form.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::{
    datagen_schema, parse_aggregate, CheckpointingSpec, Duration, FieldType, Format, JoinSpec, KeyFormat, PipelineSpec,
    RegistrySpec, SinkSpec, SourceSpec, StreamJobSpec, StreamSpec, TableSpec,
};

/// One problem in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Every problem found in a manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was found.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the manifest has {} error(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Checks a whole spec; the paths start at `spec.`.
pub fn validate_spec(spec: &StreamJobSpec) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    if let Some(p) = spec.parallelism {
        if p < 1 {
            errs.push("spec.parallelism", format!("must be at least 1, got {p}"));
        }
    }
    if let Some(d) = &spec.epoch_interval {
        positive(&mut errs, "spec.epochInterval", d);
    }
    for (i, e) in spec.env.iter().enumerate() {
        let path = format!("spec.env[{i}]");
        let name_ok = e.name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && e.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            errs.push(format!("{path}.name"), format!("`{}` is not an environment variable name", e.name));
        }
        if e.name.starts_with("WEIR_") || e.name == "POD_NAME" || e.name == "POD_IP" {
            errs.push(format!("{path}.name"), format!("`{}` is set by the operator", e.name));
        }
        if e.value.is_some() == e.value_from.is_some() {
            errs.push(path, "needs exactly one of value and valueFrom");
        }
    }
    if let Some(r) = &spec.resources {
        for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (k, v) in map {
                if k != "cpu" && k != "memory" && k != "ephemeral-storage" {
                    errs.push(format!("spec.resources.{kind}.{k}"), "only cpu, memory and ephemeral-storage");
                }
                let quantity_ok = !v.is_empty()
                    && v.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse::<f64>().is_ok_and(|q| q >= 0.0);
                if !quantity_ok {
                    errs.push(
                        format!("spec.resources.{kind}.{k}"),
                        format!("`{v}` is not a quantity (e.g. 500m, 2Gi)"),
                    );
                }
            }
        }
    }
    if let Some(c) = &spec.checkpointing {
        check_checkpointing(&mut errs, c);
    }
    let storage = spec.checkpoint_storage().is_some();
    if let Some(d) = &spec.rollback_after {
        positive(&mut errs, "spec.rollbackAfter", d);
    }
    if let Some(sp) = &spec.initial_savepoint {
        if !sp.starts_with("s3://") && !sp.starts_with("file:///") {
            errs.push("spec.initialSavepoint", format!("`{sp}` is not a savepoint location (s3://… or file:///…)"));
        }
        if !storage {
            errs.push(
                "spec.initialSavepoint",
                "needs spec.checkpointing.storage (the restored state checkpoints there)",
            );
        }
    }
    if spec.savepoint_on_deletion && !storage {
        errs.push("spec.savepointOnDeletion", "needs spec.checkpointing.storage to write the savepoint to");
    }
    if let Some(a) = &spec.autoscaler {
        let (min, max) = (a.min_parallelism.unwrap_or(1), a.max_parallelism.unwrap_or(i32::MAX));
        if min < 1 {
            errs.push("spec.autoscaler.minParallelism", format!("must be at least 1, got {min}"));
        }
        if max < min {
            errs.push("spec.autoscaler.maxParallelism", format!("{max} is below minParallelism {min}"));
        }
        if let Some(u) = a.target_utilization {
            if !(u > 0.0 && u <= 1.0) {
                errs.push("spec.autoscaler.targetUtilization", format!("must be in (0, 1], got {u}"));
            }
        }
        for (field, d) in [("catchUpDuration", &a.catch_up_duration), ("scaleDownDelay", &a.scale_down_delay)] {
            if let Some(d) = d {
                duration(&mut errs, &format!("spec.autoscaler.{field}"), d);
            }
        }
    }
    validate_pipeline(&spec.pipeline, &mut errs);
    errs.into_result()
}

fn check_checkpointing(errs: &mut ValidationErrors, c: &CheckpointingSpec) {
    positive(errs, "spec.checkpointing.interval", &c.interval);
    if let Some(s) = &c.storage {
        let ok = s.strip_prefix("s3://").is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
            || s.strip_prefix("file://").is_some_and(|r| r.starts_with('/'));
        if !ok {
            errs.push(
                "spec.checkpointing.storage",
                format!("`{s}` is not a storage URL; use s3://bucket/prefix or file:///absolute/path"),
            );
        }
    }
    if c.retained == Some(0) {
        errs.push("spec.checkpointing.retained", "must keep at least 1 checkpoint");
    }
}

/// The fields a source's records carry (declared, or implied by a datagen kind).
/// A table's fields: its schema, or the generated rows' when a datagen table declares none.
pub fn table_fields(t: &TableSpec) -> BTreeMap<String, FieldType> {
    match (&t.datagen, t.schema.is_empty()) {
        (Some(d), true) => datagen_schema(d.kind),
        _ => t.schema.clone(),
    }
}

pub fn source_fields(src: &SourceSpec) -> BTreeMap<String, FieldType> {
    match (&src.datagen, src.schema.is_empty()) {
        (Some(d), true) => datagen_schema(d.kind),
        _ => src.schema.clone(),
    }
}

fn validate_pipeline(p: &PipelineSpec, errs: &mut ValidationErrors) {
    let base = "spec.pipeline";
    if p.sources.is_empty() {
        errs.push(format!("{base}.sources"), "a pipeline needs at least one source");
    }
    if p.sinks.is_empty() {
        errs.push(format!("{base}.sinks"), "a pipeline needs at least one sink");
    }
    for (kind, names) in [
        ("sources", p.sources.keys().collect::<Vec<_>>()),
        ("tables", p.tables.keys().collect()),
        ("streams", p.streams.keys().collect()),
        ("sinks", p.sinks.keys().collect()),
    ] {
        for name in names {
            check_name(errs, &format!("{base}.{kind}.{name}"), name);
        }
    }
    for (name, s) in &p.sources {
        check_source(errs, &format!("{base}.sources.{name}"), s);
    }
    for (name, t) in &p.tables {
        let path = format!("{base}.tables.{name}");
        let kinds = [t.kafka.is_some(), t.file.is_some(), t.datagen.is_some(), t.redis.is_some()];
        let kinds = kinds.iter().filter(|b| **b).count();
        if kinds != 1 {
            errs.push(path.clone(), format!("a table needs exactly one of kafka, file, datagen, redis; found {kinds}"));
        }
        if let Some(k) = &t.kafka {
            check_properties(errs, &format!("{path}.kafka.properties"), &k.properties);
        }
        if let Some(r) = &t.redis {
            if !r.url.starts_with("redis://") || r.url.len() <= "redis://".len() {
                errs.push(format!("{path}.redis.url"), format!("`{}` is not a redis://host[:port][/db] URL", r.url));
            }
            duration(errs, &format!("{path}.redis.cacheTtl"), &r.cache_ttl);
            if t.versions.is_some() {
                errs.push(format!("{path}.versions"), "a Redis table holds one value per key: no versions");
            }
        }
        check_format(errs, &path, t.format, t.registry.as_ref(), t.kafka.is_some());
        let schema = table_fields(t);
        if schema.is_empty() {
            errs.push(format!("{path}.schema"), schema_needed("a table", t.format, t.registry.as_ref()));
        } else if !schema.contains_key(&t.key) {
            errs.push(format!("{path}.key"), format!("`{}` is not a field of the table's schema", t.key));
        }
        if let Some(v) = &t.versions {
            match schema.get(&v.field) {
                Some(FieldType::Timestamp | FieldType::Long) => {}
                Some(other) => errs.push(
                    format!("{path}.versions.field"),
                    format!("`{}` is a {other:?} field; versions need a timestamp (or long, epoch ms)", v.field),
                ),
                None if schema.is_empty() => {}
                None => errs.push(
                    format!("{path}.versions.field"),
                    format!("`{}` is not a field of the table's schema", v.field),
                ),
            }
            positive(errs, &format!("{path}.versions.retention"), &v.retention);
        }
    }
    let fields = stream_fields(p, errs);
    for (name, s) in &p.streams {
        check_stream(errs, p, &fields, name, s);
    }
    let late_targets: BTreeSet<&str> = p
        .streams
        .values()
        .flat_map(|s| s.late_output.as_deref().into_iter().chain(s.session_state.as_deref()))
        .collect();
    for (name, sink) in &p.sinks {
        check_sink(errs, p, name, sink, &late_targets);
    }
    if let Some(dl) = &p.dead_letter {
        match p.sinks.get(dl) {
            None => errs.push(format!("{base}.deadLetter"), format!("`{dl}` is not a sink")),
            Some(s) if s.from.is_some() => errs.push(
                format!("{base}.deadLetter"),
                format!("sink `{dl}` already reads `from` a stream; a dead-letter sink must have no `from`"),
            ),
            Some(_) => {}
        }
    }
}

fn check_name(errs: &mut ValidationErrors, path: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if !ok {
        errs.push(
            path,
            format!("name `{name}` must start with a lowercase letter and hold only a-z, 0-9, _ and - (at most 63)"),
        );
    }
}

fn check_source(errs: &mut ValidationErrors, path: &str, s: &SourceSpec) {
    let kinds = [s.kafka.is_some(), s.file.is_some(), s.datagen.is_some()].iter().filter(|b| **b).count();
    if kinds != 1 {
        errs.push(path, format!("a source needs exactly one of kafka, file, datagen; found {kinds}"));
    }
    if let Some(k) = &s.kafka {
        if k.brokers.trim().is_empty() {
            errs.push(format!("{path}.kafka.brokers"), "must list at least one host:port");
        }
        if k.topic.trim().is_empty() {
            errs.push(format!("{path}.kafka.topic"), "must not be empty");
        }
        check_properties(errs, &format!("{path}.kafka.properties"), &k.properties);
        match (k.start_from, &k.start_timestamp) {
            (crate::StartFrom::Timestamp, None) => errs.push(
                format!("{path}.kafka.startTimestamp"),
                "startFrom: timestamp needs startTimestamp (epoch ms or RFC 3339)",
            ),
            (crate::StartFrom::Timestamp, Some(t)) if crate::parse_timestamp_millis(t).is_none() => errs.push(
                format!("{path}.kafka.startTimestamp"),
                format!("`{t}` is neither epoch milliseconds nor an RFC 3339 time"),
            ),
            (sf, Some(_)) if sf != crate::StartFrom::Timestamp => {
                errs.push(format!("{path}.kafka.startTimestamp"), "only used with startFrom: timestamp")
            }
            _ => {}
        }
    }
    check_format(errs, path, s.format, s.registry.as_ref(), s.kafka.is_some());
    if s.datagen.is_none() && s.schema.is_empty() {
        errs.push(format!("{path}.schema"), schema_needed("a source", s.format, s.registry.as_ref()));
    }
    if let Some(d) = &s.datagen {
        if d.rate == Some(0) {
            errs.push(format!("{path}.datagen.rate"), "must be above 0 (omit it for unlimited)");
        }
        if d.event_rate == Some(0) {
            errs.push(format!("{path}.datagen.eventRate"), "must be above 0");
        }
        if d.keys == Some(0) {
            errs.push(format!("{path}.datagen.keys"), "must be above 0");
        }
    }
    if let Some(et) = &s.event_time {
        let fields = source_fields(s);
        match fields.get(&et.field) {
            None => {
                errs.push(format!("{path}.eventTime.field"), format!("`{}` is not a field of the schema", et.field))
            }
            Some(FieldType::Timestamp | FieldType::Long) => {}
            Some(t) => errs.push(
                format!("{path}.eventTime.field"),
                format!("`{}` is a {t:?} field; event time needs a timestamp or long field", et.field),
            ),
        }
        duration(errs, &format!("{path}.eventTime.maxOutOfOrderness"), &et.max_out_of_orderness);
        if let Some(d) = &et.idle_timeout {
            positive(errs, &format!("{path}.eventTime.idleTimeout"), d);
        }
    }
}

/// Output field names of every source and step, where they can be known without the engine.
fn stream_fields(p: &PipelineSpec, errs: &mut ValidationErrors) -> BTreeMap<String, Option<BTreeSet<String>>> {
    let mut out: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    for (name, s) in &p.sources {
        out.insert(name.clone(), Some(source_fields(s).into_keys().collect()));
    }
    match topo_order(p) {
        Ok(order) => {
            for name in order {
                let s = &p.streams[&name];
                let fields = match &s.join {
                    Some(j) => match (out.get(&j.left).cloned().flatten(), out.get(&j.right).cloned().flatten()) {
                        (Some(l), Some(r)) => {
                            let (l, r): (Vec<String>, Vec<String>) = (l.into_iter().collect(), r.into_iter().collect());
                            let mut joined: BTreeSet<String> =
                                j.output_fields(&l, &r).into_iter().map(|(_, _, name)| name).collect();
                            if j.window.is_some() {
                                joined.extend(["window_start".to_string(), "window_end".to_string()]);
                            }
                            step_output_fields(p, s, Some(joined))
                        }
                        _ => None,
                    },
                    None => step_output_fields(p, s, out.get(&s.from).cloned().flatten()),
                };
                out.insert(name.clone(), fields);
            }
        }
        Err(cycle) => errs.push("spec.pipeline.streams", format!("the steps form a cycle: {}", cycle.join(" -> "))),
    }
    out
}

fn step_output_fields(p: &PipelineSpec, s: &StreamSpec, input: Option<BTreeSet<String>>) -> Option<BTreeSet<String>> {
    if let Some(agg) = &s.aggregate {
        let mut f: BTreeSet<String> = s.key_by.iter().flatten().cloned().collect();
        f.extend(["window_start".to_string(), "window_end".to_string()]);
        f.extend(agg.keys().cloned());
        return Some(f);
    }
    if let Some(pat) = &s.pattern {
        return Some(pat.emit.keys().cloned().collect());
    }
    if let Some(sel) = &s.select {
        return Some(sel.keys().cloned().collect());
    }
    let mut f = input?;
    if let Some(e) = &s.enrich {
        if let Some(t) = p.tables.get(&e.table) {
            let t = TableSpec { schema: table_fields(t), ..t.clone() };
            f.extend(e.added_fields(&t).into_iter().map(|(out, _)| out));
        }
    }
    Some(f)
}

/// Steps in an order where every step comes after the step it reads; `Err` names a cycle.
/// Steps that read an unknown name are placed first (reported separately).
pub fn topo_order(p: &PipelineSpec) -> Result<Vec<String>, Vec<String>> {
    let mut order = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = visiting, 2 = done
    fn visit<'a>(
        p: &'a PipelineSpec,
        name: &'a str,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(_) => {
                let at = stack.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle: Vec<String> = stack[at..].iter().map(|s| s.to_string()).collect();
                cycle.push(name.to_string());
                return Err(cycle);
            }
            None => {}
        }
        state.insert(name, 1);
        stack.push(name);
        for from in p.streams[name].inputs() {
            if p.streams.contains_key(from) {
                visit(p, from, state, stack, order)?;
            }
        }
        stack.pop();
        state.insert(name, 2);
        order.push(name.to_string());
        Ok(())
    }
    for name in p.streams.keys() {
        visit(p, name, &mut state, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// A repartition step only moves rows to the partition of their new key: anything else belongs
/// in a step before or after it. Its topic is created on the brokers of a Kafka source.
fn check_repartition(errs: &mut ValidationErrors, p: &PipelineSpec, path: &str, s: &StreamSpec) {
    if s.key_by.is_none() {
        errs.push(
            format!("{path}.keyBy"),
            "a repartition step needs keyBy: the fields whose partition each row moves to",
        );
    }
    let others = [
        ("where", s.filter.is_some()),
        ("select", s.select.is_some()),
        ("window", s.window.is_some()),
        ("allowedLateness", s.allowed_lateness.is_some()),
        ("aggregate", s.aggregate.is_some()),
        ("lateOutput", s.late_output.is_some()),
        ("sessionState", s.session_state.is_some()),
        ("stateTtl", s.state_ttl.is_some()),
        ("enrich", s.enrich.is_some()),
        ("pattern", s.pattern.is_some()),
        ("join", s.join.is_some()),
    ];
    for (field, _) in others.iter().filter(|(_, set)| *set) {
        errs.push(
            format!("{path}.{field}"),
            "a repartition step only re-keys its input (from, keyBy, repartition); put this in a step that reads it \
             or that it reads",
        );
    }
    if !p.sources.values().any(|src| src.kafka.is_some()) {
        errs.push(
            format!("{path}.repartition"),
            "a repartition step writes an internal Kafka topic on the brokers of the job's Kafka source; this job \
             has none (file and datagen sources are one partition, which needs no repartitioning)",
        );
    }
}

fn check_stream(
    errs: &mut ValidationErrors,
    p: &PipelineSpec,
    fields: &BTreeMap<String, Option<BTreeSet<String>>>,
    name: &str,
    s: &StreamSpec,
) {
    let path = format!("spec.pipeline.streams.{name}");
    let check_input = |errs: &mut ValidationErrors, at: String, input: &str| {
        if !p.sources.contains_key(input) && !p.streams.contains_key(input) {
            let hint = if p.sinks.contains_key(input) || p.tables.contains_key(input) {
                " (it is a sink or a table; a step reads a source or another step)"
            } else {
                ""
            };
            errs.push(at, format!("`{input}` is not a source or a step{hint}"));
        }
    };
    match &s.join {
        Some(j) => {
            if !s.from.is_empty() {
                errs.push(format!("{path}.from"), "a join step reads `join.left` and `join.right`; remove `from`");
            }
            check_join(errs, fields, &path, j, &check_input);
        }
        None if s.from.is_empty() => {
            errs.push(format!("{path}.from"), "every step needs `from` (a source or another step)")
        }
        None => check_input(errs, format!("{path}.from"), &s.from),
    }
    let input = fields.get(&s.from).cloned().flatten();
    if s.repartition {
        check_repartition(errs, p, &path, s);
    }
    let operators = [s.aggregate.is_some(), s.enrich.is_some(), s.pattern.is_some(), s.join.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if operators > 1 {
        errs.push(
            path.clone(),
            "a step has at most one of aggregate, enrich, pattern, join; split it into several steps",
        );
    }
    if s.join.is_some() && (s.key_by.is_some() || s.window.is_some()) {
        errs.push(
            path.clone(),
            "a join is keyed by `join.by` and bounded by `join.within`; keyBy and window belong in a step that reads the join",
        );
    }
    if let Some(f) = &s.filter {
        if f.trim().is_empty() {
            errs.push(format!("{path}.where"), "must not be empty");
        }
    }
    // kubectl reads YAML 1.1, where unquoted `y`, `n`, `yes`, `no`, `on` and `off` are booleans:
    // an output field named `n` arrives as `false`.
    for (kind, names) in [("select", s.select.as_ref()), ("aggregate", s.aggregate.as_ref())] {
        for out in names.into_iter().flat_map(|m| m.keys()).filter(|k| *k == "true" || *k == "false") {
            errs.push(
                format!("{path}.{kind}.{out}"),
                format!(
                    "an output field named `{out}` is most likely an unquoted y, n, yes, no, on or off that kubectl read as a boolean (YAML 1.1); quote the name, e.g. \"n\": count(*)"
                ),
            );
        }
    }
    if let Some(sel) = &s.select {
        if sel.is_empty() {
            errs.push(format!("{path}.select"), "must name at least one output field");
        }
        if s.aggregate.is_some() || s.pattern.is_some() {
            errs.push(format!("{path}.select"), "select cannot be combined with aggregate or pattern in one step");
        }
    }
    if let (Some(keys), Some(input)) = (&s.key_by, &input) {
        for k in keys {
            if !input.contains(k) {
                errs.push(format!("{path}.keyBy"), format!("`{k}` is not a field of `{}`", s.from));
            }
        }
    }
    if s.key_by.as_ref().is_some_and(|k| k.is_empty()) {
        errs.push(format!("{path}.keyBy"), "must name at least one field");
    }
    check_window(errs, &path, s);
    if let Some(agg) = &s.aggregate {
        if agg.is_empty() {
            errs.push(format!("{path}.aggregate"), "must name at least one output field");
        }
        for (out, call) in agg {
            if let Err(e) = parse_aggregate(call) {
                errs.push(format!("{path}.aggregate.{out}"), e);
            }
            if s.key_by.iter().flatten().any(|k| k == out) || out == "window_start" || out == "window_end" {
                errs.push(format!("{path}.aggregate.{out}"), format!("`{out}` clashes with a key or window field"));
            }
        }
    }
    if let Some(late) = &s.late_output {
        if s.window.is_none() && s.join.is_none() && s.pattern.is_none() {
            errs.push(format!("{path}.lateOutput"), "only a window, join or pattern step has late events");
        }
        match p.sinks.get(late) {
            None => errs.push(format!("{path}.lateOutput"), format!("`{late}` is not a sink")),
            Some(sink) if sink.from.is_some() => errs.push(
                format!("{path}.lateOutput"),
                format!("sink `{late}` already reads `from` a stream; a late-output sink must have no `from`"),
            ),
            Some(_) => {}
        }
    }
    if let Some(target) = &s.session_state {
        let at = format!("{path}.sessionState");
        if s.window.as_ref().is_none_or(|w| w.session.is_none()) {
            errs.push(at.clone(), "only a session window has open sessions to hold");
        }
        match p.sinks.get(target) {
            None => errs.push(at, format!("`{target}` is not a sink")),
            Some(sink) if sink.from.is_some() => errs.push(
                at,
                format!("sink `{target}` already reads `from` a stream; a session-state sink must have no `from`"),
            ),
            Some(sink) if sink.redis.is_none() => {
                errs.push(at, format!("sink `{target}` is not a redis sink; session state is kept in Redis"))
            }
            Some(_) => {}
        }
    }
    if let Some(ttl) = &s.state_ttl {
        positive(errs, &format!("{path}.stateTtl"), ttl);
        if s.enrich.is_none() {
            errs.push(
                format!("{path}.stateTtl"),
                "stateTtl applies to steps that keep keyed state open-endedly (enrich); a window's state is dropped \
                 when the window closes (window_end + allowedLateness), a join's when its bounds pass, a pattern's \
                 when its matches can no longer complete (within)",
            );
        }
    }
    if let Some(e) = &s.enrich {
        match p.tables.get(&e.table) {
            None => errs.push(format!("{path}.enrich.table"), format!("`{}` is not a table", e.table)),
            Some(t) => {
                let t = TableSpec { schema: table_fields(t), ..t.clone() };
                for f in &e.fields {
                    if !t.schema.contains_key(f) {
                        errs.push(
                            format!("{path}.enrich.fields"),
                            format!("`{f}` is not a field of table `{}`", e.table),
                        );
                    }
                }
                if let Some(input) = &input {
                    for (out, _) in e.added_fields(&t) {
                        if input.contains(&out) {
                            errs.push(
                                format!("{path}.enrich.fields"),
                                format!(
                                    "`{out}` is already a field of `{}`; set enrich.prefix (e.g. `{}_`) or list \
                                     the fields to add",
                                    s.from, e.table
                                ),
                            );
                        }
                    }
                }
            }
        }
        if let Some(input) = &input {
            if !input.contains(&e.by) {
                errs.push(format!("{path}.enrich.by"), format!("`{}` is not a field of `{}`", e.by, s.from));
            }
        }
        if e.missing == crate::MissingKey::DeadLetter && p.dead_letter.is_none() {
            errs.push(
                format!("{path}.enrich.missing"),
                "deadLetter needs spec.pipeline.deadLetter (the sink that receives the rows)",
            );
        }
    }
    if let Some(pat) = &s.pattern {
        if s.key_by.is_none() {
            errs.push(format!("{path}.keyBy"), "a pattern is matched per key; add keyBy");
        }
        positive(errs, &format!("{path}.pattern.within"), &pat.within);
        if pat.sequence.is_empty() {
            errs.push(format!("{path}.pattern.sequence"), "needs at least one step");
        }
        let mut seen = BTreeSet::new();
        for (i, st) in pat.sequence.iter().enumerate() {
            let at = format!("{path}.pattern.sequence[{i}]");
            if !seen.insert(st.name.as_str()) {
                errs.push(format!("{at}.name"), format!("`{}` is used twice", st.name));
            }
            if st.times == Some(0) {
                errs.push(format!("{at}.times"), "must be at least 1");
            }
            if st.times.is_some() && (st.min_times.is_some() || st.max_times.is_some()) {
                errs.push(format!("{at}.times"), "give either times (exactly) or minTimes/maxTimes (a range)");
            }
            if st.min_times == Some(0) {
                let (before, after) = (i.checked_sub(1).map(|b| &pat.sequence[b]), pat.sequence.get(i + 1));
                if !pat.sequence[i + 1..].iter().any(|s| !s.absent) {
                    errs.push(
                        format!("{at}.minTimes"),
                        "an optional step (minTimes: 0) cannot be the last step: the match would complete without \
                         waiting for it; end the sequence with a required step",
                    );
                } else if before.is_some_and(|s| s.absent) || after.is_some_and(|s| s.absent) {
                    errs.push(
                        format!("{at}.minTimes"),
                        "an optional step (minTimes: 0) cannot be next to a negative step: whether the absence \
                         applies when the optional step is skipped would be ambiguous; put a required step between",
                    );
                }
            }
            if let (Some(min), Some(max)) = (st.min_times, st.max_times) {
                if max < min {
                    errs.push(format!("{at}.maxTimes"), format!("{max} is below minTimes {min}"));
                }
            }
            if st.max_times == Some(0) {
                errs.push(format!("{at}.maxTimes"), "must be at least 1");
            }
            if st.absent {
                if i == 0 {
                    errs.push(
                        format!("{at}.absent"),
                        "a pattern cannot start with a negative step (an absence before anything happened matches at \
                         any time); put it after a step",
                    );
                }
                if st.times.is_some() || st.min_times.is_some() || st.max_times.is_some() || st.strict {
                    errs.push(format!("{at}.absent"), "a negative step has no times and no strict");
                }
                if pat.emit.values().any(|r| r.split_once('.').is_some_and(|(s, _)| s == st.name)) {
                    errs.push(
                        format!("{path}.pattern.emit"),
                        format!("`{}` is a negative step: it has no event to emit", st.name),
                    );
                }
            }
        }
    }
}

fn check_join(
    errs: &mut ValidationErrors,
    fields: &BTreeMap<String, Option<BTreeSet<String>>>,
    path: &str,
    j: &JoinSpec,
    check_input: &dyn Fn(&mut ValidationErrors, String, &str),
) {
    check_input(errs, format!("{path}.join.left"), &j.left);
    check_input(errs, format!("{path}.join.right"), &j.right);
    if j.left == j.right {
        errs.push(format!("{path}.join.right"), "a join needs two different inputs (a self-join is not supported)");
    }
    if j.by.is_empty() {
        errs.push(format!("{path}.join.by"), "must name at least one field of both inputs");
    }
    for (side, input) in [("left", &j.left), ("right", &j.right)] {
        if let Some(Some(have)) = fields.get(input.as_str()) {
            for f in j.by.iter().filter(|f| !have.contains(*f)) {
                errs.push(format!("{path}.join.by"), format!("`{f}` is not a field of `{input}` (the {side} input)"));
            }
        }
    }
    if let Some(w) = &j.window {
        let wpath = format!("{path}.join.window");
        if j.within.is_some() || j.before.is_some() || j.after.is_some() {
            errs.push(wpath.clone(), "a join has either a window or time bounds (within, before, after), not both");
        }
        match (&w.tumbling, &w.sliding, &w.session) {
            (Some(t), None, None) => {
                positive(errs, &format!("{wpath}.tumbling"), t);
            }
            (None, Some(sl), None) => {
                let size = positive(errs, &format!("{wpath}.sliding.size"), &sl.size);
                let slide = positive(errs, &format!("{wpath}.sliding.slide"), &sl.slide);
                if let (Some(size), Some(slide)) = (size, slide) {
                    if size % slide != 0 {
                        errs.push(
                            format!("{wpath}.sliding.slide"),
                            format!("{} does not divide the size {}", sl.slide, sl.size),
                        );
                    }
                }
                if j.kind != crate::JoinKind::Inner {
                    errs.push(
                        format!("{path}.join.type"),
                        "an outer window join needs tumbling windows (with sliding windows a row is in several)",
                    );
                }
            }
            _ => errs.push(wpath.clone(), "a window join needs exactly one of tumbling, sliding"),
        }
        for (side, input) in [("left", &j.left), ("right", &j.right)] {
            if let Some(Some(have)) = fields.get(input.as_str()) {
                for f in ["window_start", "window_end"].iter().filter(|f| have.contains(**f)) {
                    errs.push(
                        wpath.clone(),
                        format!("`{input}` (the {side} input) has a field `{f}`, which a window join adds"),
                    );
                }
            }
        }
        return;
    }
    let mut lengths = Vec::new();
    for (field, d) in [("within", &j.within), ("before", &j.before), ("after", &j.after)] {
        if let Some(d) = d {
            lengths.extend(duration(errs, &format!("{path}.join.{field}"), d));
        }
    }
    if j.within.is_none() && j.before.is_none() && j.after.is_none() {
        errs.push(
            format!("{path}.join.within"),
            "a join needs its time bounds: `within` (either way), or `before` and/or `after`; or a `window`",
        );
    } else if lengths.len() == [&j.within, &j.before, &j.after].iter().filter(|d| d.is_some()).count()
        && j.bounds_millis() == Some((0, 0))
    {
        errs.push(
            format!("{path}.join.within"),
            "the bounds are all zero: give `within`, `before` or `after` a length",
        );
    }
}

fn check_window(errs: &mut ValidationErrors, path: &str, s: &StreamSpec) {
    let Some(w) = &s.window else {
        if s.aggregate.is_some() {
            errs.push(format!("{path}.window"), "aggregate needs a window (tumbling, sliding or session)");
        }
        if s.allowed_lateness.is_some() {
            errs.push(format!("{path}.allowedLateness"), "only a windowed step has allowed lateness");
        }
        return;
    };
    let wpath = format!("{path}.window");
    let kinds = [w.tumbling.is_some(), w.sliding.is_some(), w.session.is_some()].iter().filter(|b| **b).count();
    if kinds != 1 {
        errs.push(wpath.clone(), format!("a window needs exactly one of tumbling, sliding, session; found {kinds}"));
    }
    if s.key_by.is_none() {
        errs.push(wpath.clone(), "a window needs keyBy (the fields results are grouped by)");
    }
    if s.aggregate.is_none() {
        errs.push(format!("{path}.aggregate"), "a window needs aggregate (what to compute per key and window)");
    }
    if let Some(t) = &w.tumbling {
        positive(errs, &format!("{wpath}.tumbling"), t);
    }
    if let Some(sl) = &w.sliding {
        let size = positive(errs, &format!("{wpath}.sliding.size"), &sl.size);
        let slide = positive(errs, &format!("{wpath}.sliding.slide"), &sl.slide);
        if let (Some(size), Some(slide)) = (size, slide) {
            if slide > size {
                errs.push(
                    format!("{wpath}.sliding.slide"),
                    format!("slide {} is larger than size {}", sl.slide, sl.size),
                );
            } else if !size.is_multiple_of(slide) {
                errs.push(
                    format!("{wpath}.sliding.slide"),
                    format!("slide {} does not divide size {}", sl.slide, sl.size),
                );
            }
        }
    }
    if let Some(se) = &w.session {
        positive(errs, &format!("{wpath}.session.gap"), &se.gap);
    }
    if let Some(l) = &s.allowed_lateness {
        duration(errs, &format!("{path}.allowedLateness"), l);
    }
}

fn check_cassandra(errs: &mut ValidationErrors, path: &str, c: &crate::CassandraSinkSpec) {
    let at = format!("{path}.cassandra");
    if c.contact_points.is_empty() {
        errs.push(format!("{at}.contactPoints"), "list at least one host:port");
    }
    for (i, cp) in c.contact_points.iter().enumerate() {
        if cp.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            errs.push(format!("{at}.contactPoints[{i}]"), format!("`{cp}` is not host:port"));
        }
    }
    let ident = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.len() <= 48
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    for (field, name) in [("keyspace", &c.keyspace), ("table", &c.table)] {
        if !ident(name) {
            errs.push(
                format!("{at}.{field}"),
                format!("`{name}` is not a Cassandra name: a letter, then letters, digits or _, at most 48"),
            );
        }
    }
    if let Some(ttl) = &c.ttl {
        positive(errs, &format!("{at}.ttl"), ttl);
    }
    if c.replication_factor == Some(0) {
        errs.push(format!("{at}.replicationFactor"), "must be at least 1");
    }
}

fn check_opensearch(errs: &mut ValidationErrors, path: &str, o: &crate::OpenSearchSinkSpec) {
    let at = format!("{path}.opensearch");
    match o.url.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() && !rest.starts_with('/') => {}
        Some(("https", _)) => errs.push(
            format!("{at}.url"),
            "https is not available in this version of the worker; use http:// (a node or proxy on the cluster network)",
        ),
        _ => errs.push(format!("{at}.url"), format!("`{}` is not an http://host[:port] URL", o.url)),
    }
    let bad = |c: char| c.is_ascii_uppercase() || c.is_whitespace() || "\\/*?\"<>|,#:".contains(c);
    if o.index.is_empty() || o.index.starts_with(['-', '_', '+']) || o.index.chars().any(bad) || o.index == "." {
        errs.push(
            format!("{at}.index"),
            format!(
                "`{}` is not an index name: lowercase, not starting with -, _ or +, without spaces or \\ / * ? \" < > | , # :",
                o.index
            ),
        );
    }
    if o.id.as_ref().is_some_and(Vec::is_empty) {
        errs.push(format!("{at}.id"), "list at least one field, or leave id out");
    }
    for (field, t) in &o.mappings {
        if t.trim().is_empty() {
            errs.push(format!("{at}.mappings.{field}"), "needs a field type, e.g. keyword, long, double or date");
        }
    }
}

fn check_parquet(errs: &mut ValidationErrors, path: &str, pq: &crate::ParquetSinkSpec) {
    let at = format!("{path}.parquet");
    let p = pq.path.trim();
    if p.is_empty() {
        errs.push(format!("{at}.path"), "must not be empty");
    } else if let Some(rest) = p.strip_prefix("s3://") {
        if rest.split('/').next().is_none_or(str::is_empty) {
            errs.push(format!("{at}.path"), format!("`{p}` has no bucket; expected s3://bucket/prefix"));
        }
    } else if let Some(rest) = p.strip_prefix("file://") {
        if !rest.starts_with('/') {
            errs.push(format!("{at}.path"), format!("`{p}` is not absolute; expected file:///path"));
        }
    } else if p.contains("://") {
        errs.push(format!("{at}.path"), format!("`{p}`: expected s3://bucket/prefix, file:///path or a path"));
    }
    if let Some(size) = &pq.max_file_size {
        match crate::parse_size(size) {
            Some(n) if n >= 1 << 10 => {}
            Some(_) => errs.push(format!("{at}.maxFileSize"), format!("`{size}` is below the least size, 1Ki")),
            None => errs.push(
                format!("{at}.maxFileSize"),
                format!("`{size}` is not a size: bytes, or a number with k, M, G, Ki, Mi or Gi"),
            ),
        }
    }
    if let Some(by) = &pq.partition_by {
        if by.field.trim().is_empty() {
            errs.push(format!("{at}.partitionBy.field"), "must name a timestamp field");
        }
        if let Some(f) = &by.format {
            let bad = chrono::format::StrftimeItems::new(f).any(|i| matches!(i, chrono::format::Item::Error));
            if bad || f.trim().is_empty() || f.starts_with('/') || f.split('/').any(|d| d == ".." || d.is_empty()) {
                errs.push(
                    format!("{at}.partitionBy.format"),
                    format!("`{f}` is not a folder pattern like date=%Y-%m-%d or %Y/%m/%d/%H"),
                );
            }
        }
    }
    if pq.timestamps.as_ref().is_some_and(|t| t.iter().any(|f| f.trim().is_empty())) {
        errs.push(format!("{at}.timestamps"), "field names must not be empty");
    }
}

fn check_sink(errs: &mut ValidationErrors, p: &PipelineSpec, name: &str, sink: &SinkSpec, late: &BTreeSet<&str>) {
    let path = format!("spec.pipeline.sinks.{name}");
    let kinds = [
        sink.kafka.is_some(),
        sink.file.is_some(),
        sink.redis.is_some(),
        sink.parquet.is_some(),
        sink.opensearch.is_some(),
        sink.cassandra.is_some(),
    ];
    let kinds = kinds.iter().filter(|b| **b).count();
    if kinds != 1 {
        errs.push(
            path.clone(),
            format!("a sink needs exactly one of kafka, file, redis, parquet, opensearch, cassandra; found {kinds}"),
        );
    }
    if let Some(o) = &sink.opensearch {
        check_opensearch(errs, &path, o);
    }
    if let Some(c) = &sink.cassandra {
        check_cassandra(errs, &path, c);
        if sink.from.is_none() {
            errs.push(
                format!("{path}.from"),
                "a cassandra sink writes the rows of a step or a source into typed columns; late events and dead \
                 letters are JSON records of any shape: send them to a kafka, file or redis sink",
            );
        }
    }
    if let Some(pq) = &sink.parquet {
        check_parquet(errs, &path, pq);
        if sink.from.is_none() {
            errs.push(
                format!("{path}.from"),
                "a parquet sink writes the rows of a step or a source; late events and dead letters are JSON \
                 records of any shape: send them to a kafka, file or redis sink",
            );
        }
    }
    if let Some(r) = &sink.redis {
        if !r.url.starts_with("redis://") || r.url.len() <= "redis://".len() {
            errs.push(format!("{path}.redis.url"), format!("`{}` is not a redis://host[:port][/db] URL", r.url));
        }
        if let Some(ttl) = &r.ttl {
            positive(errs, &format!("{path}.redis.ttl"), ttl);
        }
        if r.key.as_ref().is_some_and(Vec::is_empty) {
            errs.push(format!("{path}.redis.key"), "list at least one field, or leave key out");
        }
    }
    match &sink.from {
        Some(from) if !p.streams.contains_key(from) && !p.sources.contains_key(from) => {
            errs.push(format!("{path}.from"), format!("`{from}` is not a source or a step"));
        }
        None if !late.contains(name) && p.dead_letter.as_deref() != Some(name) => errs.push(
            format!("{path}.from"),
            "a sink needs `from`, unless a step names it as lateOutput or sessionState, or the pipeline as deadLetter",
        ),
        _ => {}
    }
    if let Some(k) = &sink.kafka {
        if k.topic.trim().is_empty() {
            errs.push(format!("{path}.kafka.topic"), "must not be empty");
        }
        if k.brokers.trim().is_empty() {
            errs.push(format!("{path}.kafka.brokers"), "must list at least one host:port");
        }
        check_properties(errs, &format!("{path}.kafka.properties"), &k.properties);
        let at = format!("{path}.kafka");
        check_registry_use(errs, &at, k.format, k.registry.as_ref(), "to register its schema in");
        if k.registry.as_ref().is_some_and(|r| r.version.is_some()) {
            errs.push(format!("{at}.registry.version"), "a sink registers its own schema; version is for sources");
        }
        if k.key_format == KeyFormat::Avro && k.format != Format::Avro {
            errs.push(format!("{at}.keyFormat"), "keyFormat: avro needs format: avro (and its registry)");
        }
        let raw = late.contains(name) || p.dead_letter.as_deref() == Some(name);
        if raw && k.format.uses_registry() {
            errs.push(
                format!("{at}.format"),
                format!(
                    "late records and dead letters are written as plain JSON: a lateOutput or deadLetter sink cannot \
                     be format: {}",
                    k.format.name()
                ),
            );
        }
    }
}

const REGISTRY_UNUSED: &str = "a registry is only used with format: avro or json-schema";

/// `format` and `registry` of a source or table: Avro and JSON Schema records come from Kafka
/// in the registry's wire format, so they need a Kafka topic and a registry.
fn check_format(errs: &mut ValidationErrors, path: &str, format: Format, registry: Option<&RegistrySpec>, kafka: bool) {
    check_registry_use(errs, path, format, registry, "that the records' schema ids refer to");
    if format.uses_registry() && !kafka {
        errs.push(
            format!("{path}.format"),
            format!(
                "format: {0} reads records in the Schema Registry's wire format from Kafka; only a kafka input can be {0}",
                format.name()
            ),
        );
    }
}

/// A `registry` at `path` exactly when `format` uses one (`what_for`: why it is needed), and
/// valid.
fn check_registry_use(
    errs: &mut ValidationErrors,
    path: &str,
    format: Format,
    registry: Option<&RegistrySpec>,
    what_for: &str,
) {
    match (format.uses_registry(), registry) {
        (true, None) => {
            errs.push(format!("{path}.registry"), format!("format: {} needs the registry {what_for}", format.name()))
        }
        (false, Some(_)) => errs.push(format!("{path}.registry"), REGISTRY_UNUSED),
        (_, Some(r)) => check_registry(errs, &format!("{path}.registry"), r),
        _ => {}
    }
}

fn check_registry(errs: &mut ValidationErrors, path: &str, r: &RegistrySpec) {
    let rest = r.url.strip_prefix("http://").unwrap_or("");
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        errs.push(
            format!("{path}.url"),
            format!("`{}` is not an http://host:port[/path] URL (credentials go in username and password)", r.url),
        );
    }
    if r.subject.as_deref().is_some_and(|s| s.trim().is_empty()) {
        errs.push(format!("{path}.subject"), "must not be empty (omit it for <topic>-value)");
    }
    if r.version == Some(0) {
        errs.push(format!("{path}.version"), "versions start at 1 (omit it for the latest)");
    }
    match r.password.as_deref().map(crate::env_reference) {
        Some(Some(name)) if !crate::is_env_name(name) => {
            errs.push(format!("{path}.password"), format!("`{name}` is not an environment variable name"))
        }
        Some(None) => errs.push(
            format!("{path}.password"),
            "a secret must not be written in the manifest (it would be in the job's ConfigMap): write `${env:NAME}` \
             and give the workers NAME from a Secret in spec.env",
        ),
        _ => {}
    }
    if r.password.is_some() != r.username.is_some() {
        errs.push(path, "username and password go together");
    }
}

/// Why an empty schema is an error.
fn schema_needed(what: &str, format: Format, registry: Option<&RegistrySpec>) -> String {
    match (format.uses_registry(), registry) {
        (true, Some(_)) => format!(
            "{what} needs a schema (field: type); with format: {} it is taken from the registry subject when \
             omitted, and that subject's schema has no field a column can hold",
            format.name()
        ),
        _ => format!("{what} needs a schema (field: type)"),
    }
}

/// Client properties: a secret only as `${env:NAME}` (a literal one would sit in the job's
/// ConfigMap and in Git), and every `${env:NAME}` a valid variable name.
fn check_properties(errs: &mut ValidationErrors, path: &str, properties: &BTreeMap<String, String>) {
    for (k, v) in properties {
        match crate::env_reference(v) {
            Some(name) if !crate::is_env_name(name) => {
                errs.push(format!("{path}.{k}"), format!("`{name}` is not an environment variable name"))
            }
            Some(_) => {}
            None if crate::SECRET_PROPERTIES.contains(&k.as_str()) => errs.push(
                format!("{path}.{k}"),
                "a secret must not be written in the manifest (it would be in the job's ConfigMap): \
                 write `${env:NAME}` and give the workers NAME from a Secret in spec.env",
            ),
            None => {}
        }
    }
}

fn duration(errs: &mut ValidationErrors, path: &str, d: &Duration) -> Option<u64> {
    d.millis().map_err(|e| errs.push(path, e)).ok()
}

fn positive(errs: &mut ValidationErrors, path: &str, d: &Duration) -> Option<u64> {
    match duration(errs, path, d)? {
        0 => {
            errs.push(path, format!("must be above zero, got {d}"));
            None
        }
        ms => Some(ms),
    }
}
