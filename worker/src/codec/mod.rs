//! Record encodings: JSON in (against the declared schema), JSON out.

pub mod avro;
pub mod json;
pub mod registry;
mod scan;

pub use json::{encode_json_lines, JsonDecoder};
