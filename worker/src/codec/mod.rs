//! Record encodings: JSON in (against the declared schema), JSON out.

pub mod json;
mod scan;

pub use json::{encode_json_lines, JsonDecoder};
