//! Record encodings: JSON and Avro (Schema Registry wire format) in, against the pipeline's
//! fields; JSON and Avro out.

pub mod avro;
pub mod json;
pub mod registry;
mod scan;

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::SchemaRef;
pub use json::{encode_json_lines, Decoded, JsonDecoder};
use weir_crds::{FieldType, Format, RegistrySpec};

use crate::source::Records;
use avro::{AvroDecoder, AvroSchema, ReaderOf};
use registry::Registry;

/// An input's decoder, by its `format`.
pub enum Decoder {
    Json(JsonDecoder),
    Avro(AvroDecoder),
}

impl Decoder {
    /// The decoder of an input with `fields`. Avro reads with the registry subject's schema
    /// (`subject`, its pinned `version`) as the reader's schema, so fields the writer lacks
    /// take that schema's defaults.
    pub fn new(
        format: Format,
        registry: Option<&RegistrySpec>,
        subject: &str,
        fields: &BTreeMap<String, FieldType>,
    ) -> Result<Decoder, String> {
        let registry = match (format, registry) {
            (Format::Json, _) => return Ok(Decoder::Json(JsonDecoder::new(fields))),
            (Format::Avro, Some(r)) => r,
            (Format::Avro, None) => return Err("format: avro needs a registry".into()),
        };
        let client = Registry::for_spec(registry)?;
        let v = client.version(subject, registry.version)?.ok_or_else(|| {
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
        }
    }

    /// Decodes `recs`; a bad record is set aside with its reason. `Err` when the records cannot
    /// be judged (the registry holding their schemas cannot be reached).
    pub fn decode(&self, recs: &Records) -> Result<Decoded, String> {
        match self {
            Decoder::Json(d) => Ok(d.decode(recs)),
            Decoder::Avro(d) => d.decode(recs),
        }
    }

    /// Whether records are JSON objects: only then can a record go on as read to a JSON sink.
    pub fn is_json(&self) -> bool {
        matches!(self, Decoder::Json(_))
    }
}
