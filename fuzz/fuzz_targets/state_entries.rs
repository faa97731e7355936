//! The byte formats the worker keeps in RocksDB and reads back after a restore (key values,
//! worker/src/value.rs; window accumulators, worker/src/operators/window/acc.rs; compiled here as
//! they are in the worker): arbitrary bytes decode or are refused, never a panic; the readers that
//! skip a value or build a column from it agree with the full decoder on where it ends; and a
//! decoded value encodes to bytes that decode to the same encoding again.
#![no_main]

use datafusion::arrow::datatypes::DataType;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../worker/src/value.rs"]
mod value;

#[allow(dead_code)]
#[path = "../../worker/src/operators/window/acc.rs"]
mod acc;

use acc::Acc;
use value::{ColumnBuilder, Value};

fn encoded(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    values.iter().for_each(|v| v.encode(&mut out));
    out
}

fuzz_target!(|data: &[u8]| {
    // A key: a sequence of values.
    if let Some(values) = Value::decode_all(data) {
        let bytes = encoded(&values);
        let again = Value::decode_all(&bytes).expect("an encoded key decodes");
        assert_eq!(encoded(&again), bytes);
    }
    // One value: where it ends, three ways.
    let decoded = Value::decode(data).map(|(_, rest)| rest.len());
    if let Some(rest) = decoded {
        assert_eq!(Value::skip(data).map(<[u8]>::len), Some(rest), "skip and decode disagree");
    }
    for t in [DataType::Utf8, DataType::Int64, DataType::Float64, DataType::Boolean] {
        let mut column = ColumnBuilder::new(&t);
        let pushed = column.push_key(data).map(<[u8]>::len);
        assert_eq!(pushed, decoded, "push_key into {t} and decode disagree");
        assert_eq!(column.finish().len(), pushed.is_some() as usize);
    }
    // An accumulator.
    if let Some((acc, rest)) = Acc::decode(data) {
        assert_eq!(Acc::skip(data).map(<[u8]>::len), Some(rest.len()), "skip and decode disagree");
        let mut bytes = Vec::new();
        acc.encode(&mut bytes);
        let (again, tail) = Acc::decode(&bytes).expect("an encoded accumulator decodes");
        assert!(tail.is_empty());
        let mut bytes_again = Vec::new();
        again.encode(&mut bytes_again);
        assert_eq!(bytes_again, bytes);
    }
});
