//! The schemas a pipeline takes from a Schema Registry: each `format: avro` (or
//! `json-schema`) source and table reads its subject's schema (a pinned version, else the
//! latest) before the manifest is validated. An omitted `schema` becomes the subject's fields; a declared one is checked to be
//! in the subject's schema with the same types, every mismatch reported with its path. The
//! version found is pinned in the spec, so that every worker, and a restart, reads with the
//! same schema until the manifest is applied again.
//!
//! Fetching is the caller's: the worker asks the registry directly, the operator from its own
//! runtime; both go through [`schema_lookups`] and [`apply_registry_schemas`].

use std::collections::BTreeMap;

use crate::avro::{type_name, AvroSchema};
use crate::{FieldType, Format, PipelineSpec, RegistrySpec, ValidationErrors};

/// One subject a source or table reads its schema from.
#[derive(Clone, Debug, PartialEq)]
pub struct SchemaLookup {
    /// The source's or table's path, e.g. `spec.pipeline.sources.payments`.
    pub path: String,
    pub registry: RegistrySpec,
    pub subject: String,
    /// `None`: the latest.
    pub version: Option<u32>,
    /// Avro or JSON Schema: how the subject's schema is read.
    pub format: Format,
}

/// A subject's version as the registry gave it.
#[derive(Clone, Debug, PartialEq)]
pub struct SubjectSchema {
    pub version: u32,
    /// The schema's JSON text.
    pub schema: String,
}

/// The subjects the pipeline's Avro inputs read, in path order.
pub fn schema_lookups(p: &PipelineSpec) -> Vec<SchemaLookup> {
    let inputs = p
        .sources
        .iter()
        .map(|(n, s)| (format!("spec.pipeline.sources.{n}"), s.format, &s.registry, s.kafka.as_ref()))
        .chain(
            p.tables
                .iter()
                .map(|(n, t)| (format!("spec.pipeline.tables.{n}"), t.format, &t.registry, t.kafka.as_ref())),
        );
    inputs
        .filter_map(|(path, format, registry, kafka)| {
            let (true, Some(r), Some(k)) = (format.uses_registry(), registry, kafka) else { return None };
            Some(SchemaLookup {
                path,
                registry: r.clone(),
                subject: r.subject_for(&k.topic),
                version: r.version,
                format,
            })
        })
        .collect()
}

/// Fills or checks each Avro input's schema with `fetch`'s answer for its lookup (`Ok(None)`:
/// the registry has no such subject or version), and pins the version read. Every problem is
/// returned, at the input's path.
pub fn apply_registry_schemas(
    p: &mut PipelineSpec,
    mut fetch: impl FnMut(&SchemaLookup) -> Result<Option<SubjectSchema>, String>,
) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::default();
    for l in schema_lookups(p) {
        let at = |what: &str| format!("{}.{what}", l.path);
        let which = match l.version {
            Some(v) => format!("subject `{}` version {v}", l.subject),
            None => format!("subject `{}`", l.subject),
        };
        let found = match fetch(&l) {
            Ok(Some(found)) => found,
            Ok(None) => {
                errs.push(at("registry.subject"), format!("the registry at {} has no {which}", l.registry.url));
                continue;
            }
            Err(e) => {
                errs.push(at("registry"), format!("reading {which}: {e}"));
                continue;
            }
        };
        let which = format!("subject `{}` version {}", l.subject, found.version);
        let fields = match schema_fields(l.format, &found.schema) {
            Ok(f) => f,
            Err(e) => {
                errs.push(at("registry.subject"), format!("{which}: {e}"));
                continue;
            }
        };
        let (schema, registry) = input_mut(p, &l.path);
        if schema.is_empty() {
            schema.extend(fields);
        } else {
            let theirs: BTreeMap<&str, FieldType> = fields.iter().map(|(n, t)| (n.as_str(), *t)).collect();
            for (name, t) in schema.iter() {
                match theirs.get(name.as_str()) {
                    Some(have) if have == t => {}
                    Some(have) => errs.push(
                        at(&format!("schema.{name}")),
                        format!("`{name}` is {} in {which}, not {}", type_name(*have), type_name(*t)),
                    ),
                    None => errs.push(
                        at(&format!("schema.{name}")),
                        format!(
                            "`{name}` is not a field of {which} that a column can hold; it has {}",
                            fields
                                .iter()
                                .map(|(n, t)| format!("{n}: {}", type_name(*t)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                }
            }
        }
        registry.version = Some(found.version);
    }
    errs.into_result()
}

/// The fields a column can hold of a subject's schema (Avro or JSON Schema, by `format`).
pub fn schema_fields(format: Format, text: &str) -> Result<Vec<(String, FieldType)>, String> {
    match format {
        Format::JsonSchema => crate::jsonschema::json_schema_fields(text),
        _ => AvroSchema::parse(text).and_then(|s| s.engine_fields()),
    }
}

/// A subject as a URL path segment (percent-encoded but for unreserved characters).
pub fn subject_path(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for b in subject.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The schema and the registry of the source or table at `path` (one [`schema_lookups`] gave).
fn input_mut<'a>(p: &'a mut PipelineSpec, path: &str) -> (&'a mut BTreeMap<String, FieldType>, &'a mut RegistrySpec) {
    let missing = "a lookup's path names an Avro input with a registry";
    if let Some(name) = path.strip_prefix("spec.pipeline.sources.") {
        let s = p.sources.get_mut(name).expect(missing);
        (&mut s.schema, s.registry.as_mut().expect(missing))
    } else {
        let name = path.strip_prefix("spec.pipeline.tables.").expect(missing);
        let t = p.tables.get_mut(name).expect(missing);
        (&mut t.schema, t.registry.as_mut().expect(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> PipelineSpec {
        serde_yaml::from_str(
            r#"
sources:
  payments:
    kafka: {brokers: "k:9092", topic: payments}
    format: avro
    registry: {url: "http://r:8081"}
  refunds:
    kafka: {brokers: "k:9092", topic: refunds}
    format: avro
    registry: {url: "http://r:8081", subject: money, version: 2}
    schema: {id: string, amount: long, when: timestamp, gone: string}
  plain:
    kafka: {brokers: "k:9092", topic: plain}
    schema: {id: string}
tables:
  cards:
    kafka: {brokers: "k:9092", topic: cards}
    key: card
    format: avro
    registry: {url: "http://r:8081"}
sinks:
  out: {from: payments, file: {path: out.jsonl}}
"#,
        )
        .unwrap()
    }

    const PAYMENT: &str = r#"{"type": "record", "name": "P", "fields": [
        {"name": "id", "type": "string"},
        {"name": "amount", "type": ["null", "double"], "default": null},
        {"name": "when", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tags", "type": {"type": "array", "items": "string"}}]}"#;

    #[test]
    fn subjects_default_to_the_topic_and_versions_to_the_latest() {
        let l = schema_lookups(&pipeline());
        let got: Vec<(&str, &str, Option<u32>)> =
            l.iter().map(|l| (l.path.as_str(), l.subject.as_str(), l.version)).collect();
        assert_eq!(
            got,
            [
                ("spec.pipeline.sources.payments", "payments-value", None),
                ("spec.pipeline.sources.refunds", "money", Some(2)),
                ("spec.pipeline.tables.cards", "cards-value", None),
            ]
        );
    }

    #[test]
    fn omitted_schemas_are_filled_declared_ones_checked_and_versions_pinned() {
        let mut p = pipeline();
        let errs = apply_registry_schemas(&mut p, |l| match l.subject.as_str() {
            "payments-value" => Ok(Some(SubjectSchema { version: 7, schema: PAYMENT.into() })),
            "money" => Ok(Some(SubjectSchema { version: 2, schema: PAYMENT.into() })),
            _ => Ok(None),
        })
        .unwrap_err()
        .to_string();
        let s = &p.sources["payments"];
        let want: BTreeMap<String, FieldType> =
            [("id", FieldType::String), ("amount", FieldType::Double), ("when", FieldType::Timestamp)]
                .map(|(n, t)| (n.to_string(), t))
                .into();
        assert_eq!(s.schema, want, "arrays are left out");
        assert_eq!(s.registry.as_ref().unwrap().version, Some(7));
        assert!(errs.contains("spec.pipeline.sources.refunds.schema.amount: `amount` is double in subject `money` version 2, not long"), "{errs}");
        assert!(errs.contains("spec.pipeline.sources.refunds.schema.gone: `gone` is not a field of subject `money` version 2 that a column can hold; it has id: string, amount: double, when: timestamp"), "{errs}");
        assert!(errs.contains("spec.pipeline.tables.cards.registry.subject: the registry at http://r:8081 has no subject `cards-value`"), "{errs}");
        assert!(!errs.contains("refunds.schema.id"), "{errs}");
    }

    #[test]
    fn a_json_schema_source_takes_its_fields_from_a_json_schema() {
        let mut p: PipelineSpec = serde_yaml::from_str(
            r#"
sources:
  p: {kafka: {brokers: "k:9092", topic: p}, format: json-schema, registry: {url: "http://r:8081"}}
sinks:
  out: {from: p, file: {path: out.jsonl}}
"#,
        )
        .unwrap();
        let lookups = schema_lookups(&p);
        assert_eq!(lookups[0].format, Format::JsonSchema);
        let schema = r#"{"type": "object", "properties": {"id": {"type": "string"}, "n": {"type": "integer"}}}"#;
        apply_registry_schemas(&mut p, |_| Ok(Some(SubjectSchema { version: 3, schema: schema.into() }))).unwrap();
        let want: BTreeMap<String, FieldType> =
            [("id".to_string(), FieldType::String), ("n".to_string(), FieldType::Long)].into();
        assert_eq!(p.sources["p"].schema, want);
        // An Avro schema under a JSON Schema source's subject is not an object's schema.
        let mut p2 = p.clone();
        p2.sources.get_mut("p").unwrap().schema.clear();
        let e = apply_registry_schemas(&mut p2, |_| Ok(Some(SubjectSchema { version: 1, schema: r#""long""#.into() })))
            .unwrap_err()
            .to_string();
        assert!(e.contains("subject `p-value` version 1: the JSON Schema is not of an object"), "{e}");
    }

    #[test]
    fn an_unreachable_registry_and_a_bad_schema_are_reported() {
        let mut p = pipeline();
        let errs = apply_registry_schemas(&mut p, |l| match l.subject.as_str() {
            "payments-value" => Err("connecting to r:8081: refused".into()),
            _ => Ok(Some(SubjectSchema { version: 1, schema: r#""long""#.into() })),
        })
        .unwrap_err()
        .to_string();
        assert!(errs.contains("spec.pipeline.sources.payments.registry: reading subject `payments-value`: connecting to r:8081: refused"), "{errs}");
        assert!(errs.contains("spec.pipeline.tables.cards.registry.subject: subject `cards-value` version 1: the schema is long, not a record"), "{errs}");
    }
}
