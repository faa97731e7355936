//! `make bench`'s decode figure (bench/run.sh runs it first): records per second, on one core, of the JSON decoder and the
//! Avro decoder on the same payment events (datagen's: 15 fields, about 480 bytes as JSON), into
//! the 7 columns of the engine benchmark's schema (bench/run.sh). The Avro records are those
//! events in the Schema Registry's wire format, written with a schema of all 15 fields (an array
//! of strings among them), so both decoders skip what the pipeline does not use. Batches of 1,024
//! records, as a source hands them over; the best of 5 passes over the data.
//! Env: BENCH_DECODE_EVENTS (default 200000).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value as Json;
use weir_crds::{DatagenKind, DatagenSpec, FieldType};
use weir_worker::codec::avro::{self, AvroDecoder, AvroSchema, ReaderOf, SchemaSource};
use weir_worker::codec::JsonDecoder;
use weir_worker::source::datagen::DatagenSource;
use weir_worker::source::Records;

/// The schema the payments are written with.
const WRITER: &str = r#"{"type": "record", "name": "Payment", "namespace": "weir.bench", "fields": [
    {"name": "id", "type": "string"},
    {"name": "card_id", "type": "string"},
    {"name": "merchant_id", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "currency", "type": "string"},
    {"name": "country", "type": "string"},
    {"name": "channel", "type": "string"},
    {"name": "device_id", "type": "string"},
    {"name": "ip", "type": "string"},
    {"name": "status", "type": "string"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "user_agent", "type": "string"},
    {"name": "session_ref", "type": "string"},
    {"name": "risk_flags", "type": {"type": "array", "items": "string"}},
    {"name": "schema_version", "type": "int"}
]}"#;

struct One(String);

impl SchemaSource for One {
    fn schema(&self, id: u32) -> Result<Option<String>, String> {
        Ok((id == 1).then(|| self.0.clone()))
    }
}

/// A payment event (JSON) as a record of [`WRITER`] in the wire format.
fn to_avro(event: &Json) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0, 1];
    let s = |name: &str, out: &mut Vec<u8>| avro::write_str(event[name].as_str().unwrap().as_bytes(), out);
    for name in ["id", "card_id", "merchant_id"] {
        s(name, &mut out);
    }
    out.extend_from_slice(&event["amount"].as_f64().unwrap().to_le_bytes());
    for name in ["currency", "country", "channel", "device_id", "ip", "status"] {
        s(name, &mut out);
    }
    avro::write_long(event["ts"].as_i64().unwrap(), &mut out);
    for name in ["user_agent", "session_ref"] {
        s(name, &mut out);
    }
    let flags = event["risk_flags"].as_array().unwrap();
    avro::write_long(flags.len() as i64, &mut out);
    for f in flags {
        avro::write_str(f.as_str().unwrap().as_bytes(), &mut out);
    }
    avro::write_long(0, &mut out);
    avro::write_long(event["schema_version"].as_i64().unwrap(), &mut out);
    out
}

/// The best of 5 passes of `decode` over every batch: records per second.
fn best(batches: &[Records], decode: impl Fn(&Records) -> usize) -> f64 {
    let records: usize = batches.iter().map(Records::len).sum();
    let mut fastest = f64::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let rows: usize = batches.iter().map(&decode).sum();
        assert_eq!(rows, records, "every record decodes");
        fastest = fastest.min(started.elapsed().as_secs_f64());
    }
    records as f64 / fastest
}

fn main() {
    let events: u64 = std::env::var("BENCH_DECODE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    let spec = DatagenSpec {
        kind: DatagenKind::Payments,
        rate: None,
        event_rate: Some(2_000),
        seed: 11,
        count: Some(events),
        keys: Some(100_000),
        start_time: Some(1_795_564_800_000),
    };
    let gen = DatagenSource::new(spec);
    let (mut json, mut avro) = (Vec::new(), Vec::new());
    let (mut json_bytes, mut avro_bytes) = (0, 0);
    let (mut j, mut a) = (Records::default(), Records::default());
    let mut buf = Vec::new();
    for i in 0..events {
        buf.clear();
        if !gen.event(i, &mut buf) {
            continue;
        }
        let record = to_avro(&serde_json::from_slice(&buf).unwrap());
        (json_bytes, avro_bytes) = (json_bytes + buf.len(), avro_bytes + record.len());
        j.push(&buf, i as i64, 0);
        a.push(&record, i as i64, 0);
        if j.len() == 1024 {
            json.push(std::mem::take(&mut j));
            avro.push(std::mem::take(&mut a));
        }
    }
    json.push(j);
    avro.push(a);
    let fields: BTreeMap<String, FieldType> = [
        ("id", FieldType::String),
        ("card_id", FieldType::String),
        ("merchant_id", FieldType::String),
        ("amount", FieldType::Double),
        ("status", FieldType::String),
        ("country", FieldType::String),
        ("ts", FieldType::Timestamp),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect();
    let json_decoder = JsonDecoder::new(&fields);
    let wanted: Vec<(String, FieldType)> = fields.into_iter().collect();
    let reader = AvroSchema::parse(WRITER).unwrap().reader(&wanted).unwrap();
    let avro_decoder = AvroDecoder::new(reader, Box::new(One(WRITER.to_string())));
    let json_rate = best(&json, |r| json_decoder.decode(r).rows.num_rows());
    let avro_rate = best(&avro, |r| avro_decoder.decode(r).unwrap().rows.num_rows());
    let n = events as f64;
    println!(
        "decode, one core, {events} payments into 7 columns: JSON {:.0} records/s ({:.0} bytes each, {:.0} MB/s); Avro {:.0} records/s ({:.0} bytes each, {:.0} MB/s); Avro/JSON {:.2}",
        json_rate,
        json_bytes as f64 / n,
        json_rate * json_bytes as f64 / n / 1e6,
        avro_rate,
        avro_bytes as f64 / n,
        avro_rate * avro_bytes as f64 / n / 1e6,
        avro_rate / json_rate
    );
}
