//! JSON records decoded into Arrow batches against a declared schema, and batches encoded back
//! to JSON objects. A record that does not decode is isolated and reported, never fatal.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::{writer::LineDelimitedWriter, WriterBuilder};
use weir_crds::FieldType;

use super::scan::ObjectDecoder;
use crate::source::Records;

/// The engine's column type for a declared field type (timestamps are epoch-ms integers).
pub fn engine_type(t: FieldType) -> DataType {
    match t {
        FieldType::String => DataType::Utf8,
        FieldType::Long | FieldType::Timestamp => DataType::Int64,
        FieldType::Double => DataType::Float64,
        FieldType::Boolean => DataType::Boolean,
    }
}

/// Decodes JSON records of one source.
pub struct JsonDecoder {
    fields: Vec<(String, FieldType)>,
    schema: SchemaRef,
    /// Decoders keep their scratch buffers between batches; one per concurrent caller.
    pool: Mutex<Vec<ObjectDecoder>>,
}

/// The rows that decoded, which record each came from, and the records that did not.
#[derive(Debug)]
pub struct Decoded {
    pub rows: RecordBatch,
    /// Index into the input records of each row; `None` when every record decoded.
    pub kept: Option<Vec<u32>>,
    pub errors: Vec<(u32, String)>,
}

impl JsonDecoder {
    pub fn new(fields: &BTreeMap<String, FieldType>) -> JsonDecoder {
        let engine: Vec<Field> = fields.iter().map(|(n, t)| Field::new(n, engine_type(*t), true)).collect();
        JsonDecoder {
            fields: fields.iter().map(|(n, t)| (n.clone(), *t)).collect(),
            schema: Arc::new(Schema::new(engine)),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes every record; a record that fails is reported with its index and reason.
    pub fn decode(&self, recs: &Records) -> Decoded {
        let n = recs.len();
        let pooled = self.pool.lock().expect("decoder pool").pop();
        let mut dec = pooled.unwrap_or_else(|| ObjectDecoder::new(self.fields.iter().map(|(n, t)| (n.as_str(), *t))));
        dec.reserve(n);
        let mut errors = Vec::new();
        let mut kept = Vec::new();
        for i in 0..n {
            match dec.push(recs.payload(i)) {
                Ok(()) if !errors.is_empty() => kept.push(i as u32),
                Ok(()) => {}
                Err(e) => {
                    if errors.is_empty() {
                        kept.extend(0..i as u32);
                    }
                    errors.push((i as u32, e));
                }
            }
        }
        let cols = dec.finish();
        self.pool.lock().expect("decoder pool").push(dec);
        let rows_ok = n - errors.len();
        let rows = RecordBatch::try_new_with_options(
            self.schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(rows_ok)),
        )
        .expect("decoded columns match the schema");
        Decoded { rows, kept: (!errors.is_empty()).then_some(kept), errors }
    }
}

/// Encodes every row as one JSON object per line (nulls omitted, timestamps as integers).
pub fn encode_json_lines(batch: &RecordBatch) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let mut buf = Vec::with_capacity(batch.num_rows() * 128);
    {
        let mut w: LineDelimitedWriter<&mut Vec<u8>> = WriterBuilder::new().build(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};

    fn fields() -> BTreeMap<String, FieldType> {
        [("card_id", FieldType::String), ("amount", FieldType::Double), ("ts", FieldType::Timestamp)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn records(lines: &[&str]) -> Records {
        let mut r = Records::default();
        for (i, l) in lines.iter().enumerate() {
            r.push(l.as_bytes(), i as i64, 0);
        }
        r
    }

    #[test]
    fn decodes_both_timestamp_forms_and_ignores_extra_fields() {
        let d = JsonDecoder::new(&fields());
        let out = d.decode(&records(&[
            r#"{"card_id":"c1","amount":10,"ts":1000,"extra":true}"#,
            r#"{"card_id":"c2","amount":2.5,"ts":"1970-01-01T00:00:02Z"}"#,
        ]));
        assert!(out.errors.is_empty());
        assert!(out.kept.is_none());
        let ts = out.rows.column_by_name("ts").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        assert_eq!(ts.values(), &[1000, 2000]);
        let amt = out.rows.column_by_name("amount").unwrap().as_any().downcast_ref::<Float64Array>().unwrap().clone();
        assert_eq!(amt.values(), &[10.0, 2.5]);
    }

    #[test]
    fn isolates_bad_records() {
        let d = JsonDecoder::new(&fields());
        let out = d.decode(&records(&[
            r#"{"card_id":"c1","amount":1,"ts":1}"#,
            r#"{"card_id":"c2","amount":"#,
            r#"{"card_id":"c3","amount":"lots","ts":3}"#,
            r#"[1,2]"#,
            r#"{"card_id":"c5","amount":5,"ts":5}"#,
        ]));
        assert_eq!(out.kept, Some(vec![0, 4]));
        let bad: Vec<u32> = out.errors.iter().map(|e| e.0).collect();
        assert_eq!(bad, vec![1, 2, 3]);
        let ids = out.rows.column_by_name("card_id").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        assert_eq!(ids.iter().flatten().collect::<Vec<_>>(), vec!["c1", "c5"]);
    }

    #[test]
    fn poison_records_are_isolated_each_with_its_reason() {
        let d = JsonDecoder::new(&fields());
        let big = format!(r#"{{"card_id":"{}","amount":2,"ts":2}}"#, "x".repeat(10 << 20));
        let mut recs = Records::default();
        let payloads: [&[u8]; 9] = [
            br#"{"card_id":"c0","amount":1,"ts":1}"#,
            b"{\"card_id\":\"\xff\xfe\",\"amount\":1,\"ts\":1}",
            big.as_bytes(),
            b"",
            b"null",
            br#"{"card_id":"c5","amount":true,"ts":1}"#,
            br#"{"card_id":"c6","amount":1,"ts":"yesterday"}"#,
            br#"{"card_id":"c7","amount":1e999,"ts":1}"#,
            br#"{"card_id":"c8","amount":8,"ts":8}"#,
        ];
        for (i, p) in payloads.iter().enumerate() {
            recs.push(p, i as i64, 0);
        }
        let out = d.decode(&recs);
        assert_eq!(out.kept, Some(vec![0, 2, 8]), "{:?}", out.errors);
        let bad: Vec<u32> = out.errors.iter().map(|e| e.0).collect();
        assert_eq!(bad, vec![1, 3, 4, 5, 6, 7]);
        assert!(out.errors.iter().all(|(_, why)| !why.is_empty()), "{:?}", out.errors);
        let ids = out.rows.column_by_name("card_id").unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        assert_eq!(ids.value(1).len(), 10 << 20, "a 10 MiB record decodes whole");
    }

    #[test]
    fn large_batches_and_reuse_after_a_bad_batch_decode_every_record() {
        let d = JsonDecoder::new(&fields());
        let n = 20_017;
        let lines: Vec<String> = (0..n).map(|i| format!(r#"{{"card_id":"c{i}","amount":{i},"ts":{i}}}"#)).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        for _ in 0..2 {
            let out = d.decode(&records(&refs));
            assert!(out.kept.is_none() && out.errors.is_empty());
            let ts = out.rows.column_by_name("ts").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
            assert!(ts.values().iter().copied().eq(0..n as i64));
            let bad = d.decode(&records(&[r#"{"card_id":"x","ts":1}"#, r#"{"card_id":"#]));
            assert_eq!(bad.kept, Some(vec![0]));
        }
    }

    #[test]
    fn encodes_objects_per_line() {
        let d = JsonDecoder::new(&fields());
        let out = d.decode(&records(&[r#"{"card_id":"c1","amount":1.5,"ts":7}"#, r#"{"card_id":"c2","ts":8}"#]));
        let text = String::from_utf8(encode_json_lines(&out.rows).unwrap()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0], serde_json::json!({"card_id":"c1","amount":1.5,"ts":7}));
        assert_eq!(lines[1], serde_json::json!({"card_id":"c2","ts":8}));
    }
}
