//! The worker's JSON decoder (worker/src/codec/scan.rs, compiled here as it is in the worker) on
//! arbitrary records against a schema of every field type: each record is a row or an error,
//! never a panic or a hang, and a rejected record appends nothing, so every column of a batch
//! has exactly one row per accepted record.
#![no_main]

use datafusion::arrow::array::Array;
use libfuzzer_sys::fuzz_target;
use weir_crds::FieldType;

#[allow(dead_code)]
#[path = "../../worker/src/codec/scan.rs"]
mod scan;

fuzz_target!(|data: &[u8]| {
    let mut decoder = scan::ObjectDecoder::new([
        ("id", FieldType::String),
        ("n", FieldType::Long),
        ("amount", FieldType::Double),
        ("ok", FieldType::Boolean),
        ("ts", FieldType::Timestamp),
    ]);
    decoder.reserve(16);
    let mut accepted = 0;
    for record in data.split(|&b| b == b'\n') {
        if decoder.push(record).is_ok() {
            accepted += 1;
        }
    }
    let columns = decoder.finish();
    assert_eq!(columns.len(), 5);
    for c in &columns {
        assert_eq!(c.len(), accepted, "one row per accepted record in every column");
    }
});
