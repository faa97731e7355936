//! Record encodings: JSON, and Avro and JSON in the Schema Registry's wire format, in (against
//! the pipeline's fields); the same out.

pub mod avro;
pub mod json;
pub mod registry;
mod scan;

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::SchemaRef;
pub use json::{encode_json_lines, Decoded, JsonDecoder};
use weir_crds::{FieldType, Format, KafkaSourceSpec, RegistrySpec};

use crate::source::Records;
use avro::{AvroDecoder, AvroSchema, ReaderOf};
use registry::Registry;

/// An input's decoder, by its `format`.
pub enum Decoder {
    Json(JsonDecoder),
    Avro(AvroDecoder),
    JsonSchema(RegistryJsonDecoder),
}

/// JSON objects in the registry's wire format (`format: json-schema`): each record's header
/// names a schema the registry must hold; the object after it is decoded against the pipeline's
/// fields as plain JSON is.
pub struct RegistryJsonDecoder {
    json: JsonDecoder,
    source: Box<dyn avro::SchemaSource>,
}

impl RegistryJsonDecoder {
    pub fn new(json: JsonDecoder, source: Box<dyn avro::SchemaSource>) -> RegistryJsonDecoder {
        RegistryJsonDecoder { json, source }
    }

    /// Decodes `recs`; a record not in the wire format, or naming a schema the registry does
    /// not hold, is set aside with the reason, as one whose object does not decode. `Err` when
    /// the registry cannot be asked.
    pub fn decode(&self, recs: &Records) -> Result<Decoded, String> {
        let mut bodies = Records::with_capacity(recs.len(), recs.data.len());
        // The record each body came from.
        let mut from: Vec<u32> = Vec::with_capacity(recs.len());
        let mut errors = Vec::new();
        for i in 0..recs.len() {
            let record = recs.payload(i);
            let id = match avro::schema_id(record) {
                Ok(id) => id,
                Err(e) => {
                    errors.push((i as u32, e));
                    continue;
                }
            };
            match self.source.schema(id)? {
                Some(_) => {
                    bodies.push(&record[5..], recs.positions[i], recs.timestamps[i]);
                    from.push(i as u32);
                }
                None => errors.push((i as u32, format!("schema id {id} is not in the registry"))),
            }
        }
        let d = self.json.decode(&bodies);
        errors.extend(d.errors.into_iter().map(|(b, e)| (from[b as usize], e)));
        let kept: Vec<u32> = match d.kept {
            Some(k) => k.iter().map(|&b| from[b as usize]).collect(),
            None => from,
        };
        errors.sort_by_key(|(i, _)| *i);
        Ok(Decoded { rows: d.rows, kept: (!errors.is_empty()).then_some(kept), errors })
    }
}

impl Decoder {
    /// The decoder of an input with `fields`, read from `kafka`. Avro reads with its registry
    /// subject's schema (the subject of `kafka`'s topic, its pinned `version`) as the reader's
    /// schema, so fields the writer lacks take that schema's defaults.
    pub fn new(
        format: Format,
        registry: Option<&RegistrySpec>,
        kafka: Option<&KafkaSourceSpec>,
        fields: &BTreeMap<String, FieldType>,
    ) -> Result<Decoder, String> {
        let (registry, kafka) = match (format, registry, kafka) {
            (Format::Json, _, _) => return Ok(Decoder::Json(JsonDecoder::new(fields))),
            (_, Some(r), Some(k)) => (r, k),
            _ => return Err(format!("format: {} needs a registry and a Kafka topic", format.name())),
        };
        let subject = registry.subject_for(&kafka.topic);
        let client = Registry::for_spec(registry)?;
        if format == Format::JsonSchema {
            // The subject's schema gave (or checked) the fields; records are JSON objects.
            return Ok(Decoder::JsonSchema(RegistryJsonDecoder::new(JsonDecoder::new(fields), Box::new(client))));
        }
        let v = client.version(&subject, registry.version)?.ok_or_else(|| {
            let which = registry.version.map_or("any version".to_string(), |v| format!("version {v}"));
            format!("the registry at {} has no {which} of subject `{subject}`", registry.url)
        })?;
        let wanted: Vec<(String, FieldType)> = fields.iter().map(|(n, t)| (n.clone(), *t)).collect();
        let schema =
            AvroSchema::parse(&v.schema).map_err(|e| format!("subject `{subject}` version {}: {e}", v.version))?;
        let reader = schema
            .reader(&wanted)
            .map_err(|e| format!("subject `{subject}` version {}: {}", v.version, e.join("; ")))?;
        Ok(Decoder::Avro(AvroDecoder::new(reader, Box::new(client))))
    }

    /// The rows' schema: the fields in name order.
    pub fn schema(&self) -> &SchemaRef {
        match self {
            Decoder::Json(d) => d.schema(),
            Decoder::Avro(d) => d.schema(),
            Decoder::JsonSchema(d) => d.json.schema(),
        }
    }

    /// Decodes `recs`; a bad record is set aside with its reason. `Err` when the records cannot
    /// be judged (the registry holding their schemas cannot be reached).
    pub fn decode(&self, recs: &Records) -> Result<Decoded, String> {
        match self {
            Decoder::Json(d) => Ok(d.decode(recs)),
            Decoder::Avro(d) => d.decode(recs),
            Decoder::JsonSchema(d) => d.decode(recs),
        }
    }

    /// Whether records are JSON objects: only then can a record go on as read to a JSON sink.
    pub fn is_json(&self) -> bool {
        matches!(self, Decoder::Json(_))
    }
}
