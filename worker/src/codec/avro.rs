//! Avro: schemas, their resolution against the pipeline's fields, and records in the Schema
//! Registry's wire format (a zero byte, the writer schema's id as 4 bytes big-endian, then the
//! record in Avro's binary encoding) decoded straight into the engine's columns.
//!
//! Every record names the schema it was written with; the columns are the reader's fields. A
//! writer schema is resolved against the reader once, by Avro's rules — fields matched by name
//! or by a reader field's alias; a writer field the reader lacks is skipped; a reader field the
//! writer lacks takes the reader's default (null for a field the pipeline declared itself), and
//! without one the writer's records are incompatible; int -> long -> double and float -> double
//! promotions, bytes as string, an enum as its symbol; a union by the branch each record took —
//! into a plan of steps that decoding follows without looking at a schema again. A record whose
//! schema cannot be resolved, or whose bytes do not follow it, is rejected with the reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{Field as ArrowField, Schema as ArrowSchema, SchemaRef};
use serde_json::Value as Json;
pub use weir_crds::avro::AvroSchema;
use weir_crds::avro::{type_name, IntKind, LongKind, Type, MAX_DEPTH};
use weir_crds::FieldType;

use super::json::{engine_type, Decoded};
use crate::source::Records;
use crate::value::{Col, ColumnBuilder, Value, ValueRef};

/// The reader a schema gives the pipeline's fields.
pub trait ReaderOf {
    /// The reader for `wanted` (the pipeline's fields) with this schema as the reader's schema:
    /// each field must be one of the record's with the same engine type, and takes its default.
    /// Every problem is listed.
    fn reader(&self, wanted: &[(String, FieldType)]) -> Result<Reader, Vec<String>>;
}

impl ReaderOf for AvroSchema {
    fn reader(&self, wanted: &[(String, FieldType)]) -> Result<Reader, Vec<String>> {
        let fields = self.record_fields().map_err(|e| vec![e])?;
        let mut out = Vec::with_capacity(wanted.len());
        let mut errors = Vec::new();
        for (name, t) in wanted {
            let Some(f) = fields.iter().find(|f| &f.name == name) else {
                errors.push(format!("`{name}` is not a field of the schema"));
                continue;
            };
            match self.engine_type(f.ty) {
                Some((have, _)) if have == *t => {}
                Some((have, _)) => {
                    errors.push(format!("`{name}` is {} in the schema, not {}", type_name(have), type_name(*t)));
                    continue;
                }
                None => {
                    let what = self.describe_type(&self.types[f.ty]);
                    errors.push(format!("`{name}` is {what} in the schema, which no column can hold"));
                    continue;
                }
            }
            let default = match &f.default {
                None => Default::Required,
                Some(Json::Null) => Default::Null,
                Some(j) => match default_value(j, *t) {
                    Some(v) => Default::Value(v),
                    None => {
                        errors.push(format!("`{name}` has a default `{j}` that is not {}", type_name(*t)));
                        continue;
                    }
                },
            };
            out.push(ReaderField { name: name.clone(), aliases: f.aliases.clone(), ty: *t, default });
        }
        match errors.is_empty() {
            true => Ok(Reader { fields: out }),
            false => Err(errors),
        }
    }
}

/// A reader field's default as a value of the column (Avro writes a union's default as its
/// first branch's value).
fn default_value(j: &Json, t: FieldType) -> Option<Value> {
    Some(match (t, j) {
        (FieldType::String, Json::String(s)) => Value::Str(s.clone()),
        (FieldType::Long | FieldType::Timestamp, j) => Value::I64(j.as_i64()?),
        (FieldType::Double, j) => Value::F64(j.as_f64()?),
        (FieldType::Boolean, Json::Bool(b)) => Value::Bool(*b),
        _ => return None,
    })
}

/// What a reader field the writer lacks gets.
#[derive(Clone, Debug, PartialEq)]
pub enum Default {
    Null,
    Value(Value),
    /// Nothing: records written without the field cannot be read.
    Required,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReaderField {
    pub name: String,
    pub aliases: Vec<String>,
    pub ty: FieldType,
    pub default: Default,
}

/// The columns decoding fills, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Reader {
    pub fields: Vec<ReaderField>,
}

impl Reader {
    /// The pipeline's own fields (no reader schema): a field the writer lacks is null.
    pub fn declared(fields: &[(String, FieldType)]) -> Reader {
        let fields = fields
            .iter()
            .map(|(name, ty)| ReaderField { name: name.clone(), aliases: Vec::new(), ty: *ty, default: Default::Null })
            .collect();
        Reader { fields }
    }
}

/// How to read one writer value into a column.
#[derive(Clone, Debug, PartialEq)]
enum Read {
    Null,
    Bool,
    /// int or long (zig-zag varints alike) as a long; a timestamp in milliseconds.
    Long,
    /// A timestamp in this many units a millisecond.
    Scaled(i64),
    /// Days since the epoch, as a timestamp.
    Date,
    LongAsDouble,
    Float,
    Double,
    Str,
    Enum(Vec<String>),
    /// A union: per branch, how to read it or why it cannot be.
    Union(Vec<Result<Read, String>>),
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    /// Reads the writer's next field into column `.0`.
    Read(usize, Read),
    /// Skips the writer's next field, of this type.
    Skip(usize),
}

/// A writer schema resolved against the reader: the steps over the writer's fields, and the
/// values of the reader's fields the writer lacks.
#[derive(Clone, Debug)]
pub struct Plan {
    writer: AvroSchema,
    steps: Vec<Step>,
    defaults: Vec<Value>,
}

/// Resolves `writer` against `reader` (see the module's documentation).
pub fn resolve(writer: &AvroSchema, reader: &Reader) -> Result<Plan, String> {
    let fields = writer.record_fields()?;
    let mut steps = Vec::with_capacity(fields.len());
    let mut found = vec![false; reader.fields.len()];
    for f in fields {
        let col = reader.fields.iter().position(|r| r.name == f.name || r.aliases.contains(&f.name));
        match col {
            Some(c) if !found[c] => {
                let read = read_as(writer, f.ty, reader.fields[c].ty)
                    .map_err(|e| format!("field `{}`: {e}", reader.fields[c].name))?;
                found[c] = true;
                steps.push(Step::Read(c, read));
            }
            _ => steps.push(Step::Skip(f.ty)),
        }
    }
    let mut defaults = Vec::with_capacity(reader.fields.len());
    for (r, found) in reader.fields.iter().zip(found) {
        defaults.push(match (&r.default, found) {
            (_, true) | (Default::Null, false) => Value::Null,
            (Default::Value(v), false) => v.clone(),
            (Default::Required, false) => {
                return Err(format!("field `{}` is not in the writer's schema and has no default", r.name))
            }
        });
    }
    Ok(Plan { writer: writer.clone(), steps, defaults })
}

fn read_as(w: &AvroSchema, id: usize, t: FieldType) -> Result<Read, String> {
    use FieldType as F;
    Ok(match (&w.types[id], t) {
        (Type::Null, _) => Read::Null,
        (Type::Union(branches), _) => {
            let reads: Vec<Result<Read, String>> = branches.iter().map(|&b| read_as(w, b, t)).collect();
            if reads.iter().all(Result::is_err) {
                return Err(format!("written as {}, read as {}", w.describe(id), type_name(t)));
            }
            Read::Union(reads)
        }
        (Type::Boolean, F::Boolean) => Read::Bool,
        (
            Type::Int(IntKind::Plain | IntKind::TimeMillis) | Type::Long(LongKind::Plain | LongKind::TimeMicros),
            F::Long,
        ) => Read::Long,
        (Type::Long(LongKind::Plain) | Type::Long(LongKind::Timestamp(1)), F::Timestamp) => Read::Long,
        (Type::Long(LongKind::Timestamp(scale)), F::Timestamp) => Read::Scaled(*scale),
        (Type::Int(IntKind::Date), F::Timestamp) => Read::Date,
        (Type::Int(_) | Type::Long(_), F::Double) => Read::LongAsDouble,
        (Type::Float, F::Double) => Read::Float,
        (Type::Double, F::Double) => Read::Double,
        (Type::String | Type::Bytes, F::String) => Read::Str,
        (Type::Enum { symbols, .. }, F::String) => Read::Enum(symbols.clone()),
        _ => return Err(format!("written as {}, read as {}", w.describe(id), type_name(t))),
    })
}

/// Avro's binary encoding, read from the front.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> usize {
        self.b.len() - self.pos
    }

    fn long(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos).ok_or("the record ends inside a number")?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                if shift == 63 && byte > 1 {
                    break;
                }
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err("a number longer than 64 bits".into())
    }

    fn int(&mut self) -> Result<i64, String> {
        let v = self.long()?;
        i32::try_from(v).map(i64::from).map_err(|_| format!("{v} is too large for an int"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.rest() {
            return Err(format!("the record ends {} bytes into a value of {n}", self.rest()));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| format!("a negative length {n}"))
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| "a string that is not UTF-8".to_string())
    }

    fn bool(&mut self) -> Result<bool, String> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(format!("{b} is not a boolean")),
        }
    }

    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn f64(&mut self) -> Result<f64, String> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn branch(&mut self, n: usize) -> Result<usize, String> {
        let i = self.long()?;
        usize::try_from(i).ok().filter(|&i| i < n).ok_or_else(|| format!("union branch {i} of {n}"))
    }

    fn read(&mut self, r: &'a Read) -> Result<ValueRef<'a>, String> {
        Ok(match r {
            Read::Null => ValueRef::Null,
            Read::Bool => ValueRef::Bool(self.bool()?),
            Read::Long => ValueRef::I64(self.long()?),
            Read::Scaled(scale) => ValueRef::I64(self.long()?.div_euclid(*scale)),
            Read::Date => ValueRef::I64(self.int()? * 86_400_000),
            Read::LongAsDouble => ValueRef::F64(self.long()? as f64),
            Read::Float => ValueRef::F64(f64::from(self.f32()?)),
            Read::Double => ValueRef::F64(self.f64()?),
            Read::Str => ValueRef::Str(self.str()?),
            Read::Enum(symbols) => {
                let i = self.int()?;
                let s = usize::try_from(i).ok().and_then(|i| symbols.get(i));
                ValueRef::Str(s.ok_or_else(|| format!("enum symbol {i} of {}", symbols.len()))?)
            }
            Read::Union(branches) => match &branches[self.branch(branches.len())?] {
                Ok(r) => self.read(r)?,
                Err(e) => return Err(e.clone()),
            },
        })
    }

    /// Skips a value of type `id` of `s`.
    fn skip(&mut self, s: &AvroSchema, id: usize, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH}"));
        }
        match &s.types[id] {
            Type::Null => {}
            Type::Boolean => {
                self.bool()?;
            }
            Type::Int(_) | Type::Long(_) | Type::Enum { .. } => {
                self.long()?;
            }
            Type::Float => {
                self.take(4)?;
            }
            Type::Double => {
                self.take(8)?;
            }
            Type::Bytes | Type::String => {
                let n = self.len()?;
                self.take(n)?;
            }
            Type::Fixed { size, .. } => {
                self.take(*size)?;
            }
            Type::Record { fields, .. } => {
                for f in fields {
                    self.skip(s, f.ty, depth + 1)?;
                }
            }
            Type::Union(branches) => {
                let b = self.branch(branches.len())?;
                self.skip(s, branches[b], depth + 1)?;
            }
            Type::Array(items) => self.skip_blocks(s, *items, false, depth)?,
            Type::Map(values) => self.skip_blocks(s, *values, true, depth)?,
        }
        Ok(())
    }

    /// Skips the blocks of an array (`keyed` false) or a map (each item a string key, then the
    /// value) of items of type `items`. A block may give its size in bytes, skipped at once.
    fn skip_blocks(&mut self, s: &AvroSchema, items: usize, keyed: bool, depth: usize) -> Result<(), String> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                let bytes = self.len()?;
                self.take(bytes)?;
                continue;
            }
            // An item of at least a byte ends the loop with the record; empty ones are bounded.
            if !keyed && may_be_empty(s, items, 0) && count > MAX_EMPTY_ITEMS {
                return Err(format!("a block of {count} items"));
            }
            for _ in 0..count {
                if keyed {
                    self.str()?;
                }
                self.skip(s, items, depth + 1)?;
            }
        }
    }
}

/// The most items of no bytes (nulls, empty records) a block may hold.
const MAX_EMPTY_ITEMS: i64 = 1 << 20;

/// Whether a value of type `id` of `s` may take no bytes.
fn may_be_empty(s: &AvroSchema, id: usize, depth: usize) -> bool {
    match &s.types[id] {
        Type::Null => true,
        Type::Fixed { size, .. } => *size == 0,
        Type::Record { fields, .. } => depth < MAX_DEPTH && fields.iter().all(|f| may_be_empty(s, f.ty, depth + 1)),
        _ => false,
    }
}

/// The magic byte and schema id at the front of a record in the registry's wire format.
pub fn schema_id(record: &[u8]) -> Result<u32, String> {
    match record {
        [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [0, ..] => Err(format!("a record of {} bytes, too short for the Schema Registry's header", record.len())),
        [first, ..] => Err(format!(
            "not in the Schema Registry's wire format (first byte 0x{first:02x}, not 0: the record is not Avro from a registry client)"
        )),
        [] => Err("an empty record".into()),
    }
}

impl Plan {
    /// Decodes `body` (a record without its header) into `out`, one value per reader field.
    pub fn decode<'a>(&'a self, body: &'a [u8], out: &mut Vec<ValueRef<'a>>) -> Result<(), String> {
        out.clear();
        out.extend(self.defaults.iter().map(ValueRef::from));
        let mut c = Cursor { b: body, pos: 0 };
        for step in &self.steps {
            match step {
                Step::Read(col, read) => out[*col] = c.read(read)?,
                Step::Skip(ty) => c.skip(&self.writer, *ty, 0)?,
            }
        }
        match c.rest() {
            0 => Ok(()),
            n => Err(format!("{n} bytes after the end of the record")),
        }
    }
}

/// Where writer schemas come from, by id (the Schema Registry).
pub trait SchemaSource: Send + Sync {
    /// The schema text with `id`; `Ok(None)` when the registry has none, `Err` when it cannot be
    /// asked (the caller retries: no record is rejected for an unreachable registry).
    fn schema(&self, id: u32) -> Result<Option<String>, String>;
}

/// Decodes Avro records of one source into batches of the reader's fields.
pub struct AvroDecoder {
    reader: Reader,
    schema: SchemaRef,
    source: Box<dyn SchemaSource>,
    /// Each writer schema seen, resolved against the reader (or why it cannot be).
    plans: Mutex<HashMap<u32, Arc<Result<Plan, String>>>>,
}

impl AvroDecoder {
    pub fn new(reader: Reader, source: Box<dyn SchemaSource>) -> AvroDecoder {
        let fields: Vec<ArrowField> =
            reader.fields.iter().map(|f| ArrowField::new(&f.name, engine_type(f.ty), true)).collect();
        AvroDecoder { reader, schema: Arc::new(ArrowSchema::new(fields)), source, plans: Mutex::new(HashMap::new()) }
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The plan for writer schema `id`, fetched and resolved the first time it is seen; `Err`
    /// when the registry cannot be asked.
    fn plan(&self, id: u32) -> Result<Arc<Result<Plan, String>>, String> {
        if let Some(p) = self.plans.lock().expect("plans").get(&id) {
            return Ok(p.clone());
        }
        let plan = match self.source.schema(id)? {
            None => Err(format!("schema id {id} is not in the registry")),
            Some(text) => AvroSchema::parse(&text)
                .and_then(|w| resolve(&w, &self.reader))
                .map_err(|e| format!("schema id {id} cannot be read as the pipeline's fields: {e}")),
        };
        if let Err(e) = &plan {
            tracing::warn!("{e}; its records go to the dead letter");
        }
        let plan = Arc::new(plan);
        self.plans.lock().expect("plans").insert(id, plan.clone());
        Ok(plan)
    }

    /// Decodes every record; a record that fails is reported with its index and reason. `Err`
    /// only when the registry cannot be asked for a schema (nothing is decoded then).
    pub fn decode(&self, recs: &Records) -> Result<Decoded, String> {
        let n = recs.len();
        let mut columns: Vec<ColumnBuilder> =
            self.reader.fields.iter().map(|f| ColumnBuilder::new(&engine_type(f.ty))).collect();
        let (mut errors, mut kept) = (Vec::new(), Vec::new());
        // The plans of this batch's schemas; the last one used.
        let mut plans: Vec<(u32, Arc<Result<Plan, String>>)> = Vec::new();
        let mut last = usize::MAX;
        let mut scratch: Vec<ValueRef<'static>> = Vec::with_capacity(columns.len());
        for i in 0..n {
            let record = recs.payload(i);
            let id = schema_id(record);
            if let Ok(id) = id {
                if plans.get(last).is_none_or(|(l, _)| *l != id) {
                    last = match plans.iter().position(|(l, _)| *l == id) {
                        Some(at) => at,
                        None => {
                            plans.push((id, self.plan(id)?));
                            plans.len() - 1
                        }
                    };
                }
            }
            let mut values = recycle(scratch);
            let decoded = id.and_then(|id| match plans[last].1.as_ref() {
                Ok(plan) => plan
                    .decode(&record[5..], &mut values)
                    .map_err(|e| format!("the record does not follow its schema (id {id}): {e}")),
                Err(e) => Err(e.clone()),
            });
            match decoded {
                Ok(()) => {
                    for (c, v) in columns.iter_mut().zip(&values) {
                        c.push_ref(v);
                    }
                    if !errors.is_empty() {
                        kept.push(i as u32);
                    }
                }
                Err(e) => {
                    if errors.is_empty() {
                        kept.extend(0..i as u32);
                    }
                    errors.push((i as u32, e));
                }
            }
            scratch = recycle(values);
        }
        let cols = columns.iter_mut().map(ColumnBuilder::finish).collect();
        let rows = RecordBatch::try_new_with_options(
            self.schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(n - errors.len())),
        )
        .expect("decoded columns match the schema");
        Ok(Decoded { rows, kept: (!errors.is_empty()).then_some(kept), errors })
    }
}

/// The scratch vector of one record's values, emptied and lent to the next record (whose values
/// borrow from another record): collecting an empty vector into one of the same layout keeps
/// its allocation, so no record allocates.
fn recycle<'b>(mut v: Vec<ValueRef<'_>>) -> Vec<ValueRef<'b>> {
    v.clear();
    v.into_iter().map(|_| ValueRef::Null).collect()
}

/// Appends `v` in Avro's encoding of int and long: a zig-zag varint.
pub fn write_long(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Appends a string (or bytes): its length, then its bytes.
pub fn write_str(s: &[u8], out: &mut Vec<u8>) {
    write_long(s.len() as i64, out);
    out.extend_from_slice(s);
}

/// True for an Avro name: a letter or `_`, then letters, digits or `_`.
fn is_avro_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The Avro schema (JSON text) of rows of `fields`: a record named `name` (a full name, its
/// dotted prefix the namespace) whose every field may be null (a union of null and the field's
/// type, default null, so that fields can be added and removed compatibly); timestamps are
/// `timestamp-millis`. Field names must be Avro names.
pub fn schema_for(name: &str, fields: &[(String, FieldType)]) -> Result<String, String> {
    if !name.split('.').all(is_avro_name) {
        return Err(format!("`{name}` is not an Avro record name"));
    }
    let mut out = Vec::with_capacity(fields.len());
    for (field, t) in fields {
        if !is_avro_name(field) {
            return Err(format!(
                "field `{field}` is not an Avro name (a letter or _, then letters, digits or _); rename it with a projection"
            ));
        }
        let ty = match t {
            FieldType::String => serde_json::json!("string"),
            FieldType::Long => serde_json::json!("long"),
            FieldType::Double => serde_json::json!("double"),
            FieldType::Boolean => serde_json::json!("boolean"),
            FieldType::Timestamp => serde_json::json!({"type": "long", "logicalType": "timestamp-millis"}),
        };
        out.push(serde_json::json!({"name": field, "type": ["null", ty], "default": null}));
    }
    Ok(serde_json::json!({"type": "record", "name": name, "fields": out}).to_string())
}

/// Encodes every row of `batch` (columns of the engine's types, in the order of the schema from
/// [`schema_for`]) as a record in the registry's wire format with schema id `id`, appended to
/// `out`; `ends` gets where each record ends.
pub fn encode_rows(id: u32, batch: &RecordBatch, out: &mut Vec<u8>, ends: &mut Vec<usize>) -> Result<(), String> {
    let cols = batch
        .columns()
        .iter()
        .zip(batch.schema().fields())
        .map(|(a, f)| {
            Col::new(a)
                .ok_or_else(|| format!("field `{}` is {}, which Avro output cannot hold", f.name(), a.data_type()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for row in 0..batch.num_rows() {
        out.push(0);
        out.extend_from_slice(&id.to_be_bytes());
        for c in &cols {
            if c.is_null(row) {
                write_long(0, out);
                continue;
            }
            write_long(1, out);
            match c {
                Col::Str(a) => write_str(a.value(row).as_bytes(), out),
                Col::I64(a) => write_long(a.value(row), out),
                Col::F64(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
                Col::Bool(a) => out.push(a.value(row) as u8),
            }
        }
        ends.push(out.len());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn long(v: i64, out: &mut Vec<u8>) {
        write_long(v, out)
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        write_str(s.as_bytes(), out)
    }

    const V1: &str = r#"{"type": "record", "name": "Payment", "namespace": "weir.test", "fields": [
        {"name": "card_id", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}
    ]}"#;

    /// V1 with a field added (with a default), a field's type widened, and nested values the
    /// reader skips.
    const V2: &str = r#"{"type": "record", "name": "Payment", "namespace": "weir.test", "fields": [
        {"name": "card_id", "type": "string"},
        {"name": "tags", "type": {"type": "map", "values": {"type": "array", "items": "string"}}},
        {"name": "amount", "type": "float"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "merchant", "type": ["null", "string"], "default": null},
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["WEB", "POS"]}, "default": "WEB"},
        {"name": "next", "type": ["null", "Payment"], "default": null}
    ]}"#;

    fn fields(list: &[(&str, FieldType)]) -> Vec<(String, FieldType)> {
        list.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    fn v1(card: &str, amount: f64, ts: i64) -> Vec<u8> {
        let mut b = Vec::new();
        string(card, &mut b);
        b.extend_from_slice(&amount.to_le_bytes());
        long(ts, &mut b);
        b
    }

    fn v2(card: &str, amount: f32, ts_micros: i64, merchant: Option<&str>, channel: i64) -> Vec<u8> {
        let mut b = Vec::new();
        string(card, &mut b);
        // tags: one block of one entry, "k" -> ["a", "b"], then a block given with its size.
        long(1, &mut b);
        string("k", &mut b);
        long(2, &mut b);
        string("a", &mut b);
        string("b", &mut b);
        long(0, &mut b);
        let mut sized = Vec::new();
        string("z", &mut sized);
        long(0, &mut sized);
        long(-1, &mut b);
        long(sized.len() as i64, &mut b);
        b.extend_from_slice(&sized);
        long(0, &mut b);
        b.extend_from_slice(&amount.to_le_bytes());
        long(ts_micros, &mut b);
        match merchant {
            None => long(0, &mut b),
            Some(m) => {
                long(1, &mut b);
                string(m, &mut b);
            }
        }
        long(channel, &mut b);
        // next: a nested Payment of V2 (recursive), then null inside it.
        long(1, &mut b);
        string("inner", &mut b);
        long(0, &mut b);
        b.extend_from_slice(&1.5f32.to_le_bytes());
        long(7, &mut b);
        long(0, &mut b);
        long(1, &mut b);
        long(0, &mut b);
        b
    }

    #[test]
    fn records_of_two_schema_versions_decode_into_the_same_columns() {
        let reader_schema = AvroSchema::parse(V2).unwrap();
        let wanted = fields(&[
            ("card_id", FieldType::String),
            ("amount", FieldType::Double),
            ("ts", FieldType::Timestamp),
            ("merchant", FieldType::String),
            ("channel", FieldType::String),
        ]);
        let reader = reader_schema.reader(&wanted).unwrap();
        let old = resolve(&AvroSchema::parse(V1).unwrap(), &reader).unwrap();
        let new = resolve(&reader_schema, &reader).unwrap();
        let mut out = Vec::new();
        let rec = v1("card-1", 12.5, 1_764_201_600_000);
        old.decode(&rec, &mut out).unwrap();
        assert_eq!(
            out,
            [
                ValueRef::Str("card-1"),
                ValueRef::F64(12.5),
                ValueRef::I64(1_764_201_600_000),
                ValueRef::Null,
                ValueRef::Str("WEB")
            ]
        );
        let rec = v2("card-2", 2.25, 1_764_201_600_123_456, Some("m-9"), 1);
        new.decode(&rec, &mut out).unwrap();
        assert_eq!(
            out,
            [
                ValueRef::Str("card-2"),
                ValueRef::F64(2.25),
                ValueRef::I64(1_764_201_600_123),
                ValueRef::Str("m-9"),
                ValueRef::Str("POS")
            ]
        );
    }

    #[test]
    fn the_pipelines_own_fields_take_null_where_the_writer_has_none() {
        let reader = Reader::declared(&fields(&[("card_id", FieldType::String), ("merchant", FieldType::String)]));
        let plan = resolve(&AvroSchema::parse(V1).unwrap(), &reader).unwrap();
        let mut out = Vec::new();
        let rec = v1("c", 1.0, 5);
        plan.decode(&rec, &mut out).unwrap();
        assert_eq!(out, [ValueRef::Str("c"), ValueRef::Null]);
    }

    #[test]
    fn incompatible_writers_are_refused_saying_why() {
        let reader_schema = AvroSchema::parse(V2).unwrap();
        let reader = reader_schema.reader(&fields(&[("card_id", FieldType::String), ("tags_n", FieldType::Long)]));
        assert_eq!(reader.unwrap_err(), ["`tags_n` is not a field of the schema"]);
        let e = reader_schema.reader(&fields(&[("tags", FieldType::String), ("amount", FieldType::Long)])).unwrap_err();
        assert_eq!(
            e,
            ["`tags` is a map in the schema, which no column can hold", "`amount` is double in the schema, not long"]
        );
        // A reader field without a default that the writer lacks.
        let strict = AvroSchema::parse(
            r#"{"type": "record", "name": "P", "fields": [{"name": "card_id", "type": "string"}, {"name": "merchant", "type": "string"}]}"#,
        )
        .unwrap();
        let reader = strict.reader(&fields(&[("merchant", FieldType::String)])).unwrap();
        let e = resolve(&AvroSchema::parse(V1).unwrap(), &reader).unwrap_err();
        assert_eq!(e, "field `merchant` is not in the writer's schema and has no default");
        // A field whose type changed beyond promotion.
        let reader = Reader::declared(&fields(&[("amount", FieldType::Long)]));
        let e = resolve(&AvroSchema::parse(V1).unwrap(), &reader).unwrap_err();
        assert_eq!(e, "field `amount`: written as double, read as long");
    }

    #[test]
    fn a_union_branch_the_reader_cannot_take_rejects_only_records_that_took_it() {
        let w = AvroSchema::parse(
            r#"{"type": "record", "name": "P", "fields": [{"name": "x", "type": ["null", "long", "string"]}]}"#,
        )
        .unwrap();
        let plan = resolve(&w, &Reader::declared(&fields(&[("x", FieldType::Long)]))).unwrap();
        let mut out = Vec::new();
        let mut b = Vec::new();
        long(1, &mut b);
        long(-42, &mut b);
        plan.decode(&b, &mut out).unwrap();
        assert_eq!(out, [ValueRef::I64(-42)]);
        let mut b = Vec::new();
        long(2, &mut b);
        string("x", &mut b);
        assert_eq!(plan.decode(&b, &mut out).unwrap_err(), "written as string, read as long");
    }

    #[test]
    fn corrupt_bodies_are_errors_never_panics() {
        let reader = Reader::declared(&fields(&[("card_id", FieldType::String), ("ts", FieldType::Timestamp)]));
        let plan = resolve(&AvroSchema::parse(V2).unwrap(), &reader).unwrap();
        let good = v2("card-2", 2.25, 1_764_201_600_123_456, Some("m"), 0);
        let mut out = Vec::new();
        plan.decode(&good, &mut out).unwrap();
        for cut in 0..good.len() {
            assert!(plan.decode(&good[..cut], &mut out).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(plan.decode(&longer, &mut out).unwrap_err(), "1 bytes after the end of the record");
        // A huge block count of empty items, a varint of 11 bytes, an invalid boolean.
        let w = AvroSchema::parse(
            r#"{"type": "record", "name": "P", "fields": [{"name": "n", "type": {"type": "array", "items": "null"}}]}"#,
        )
        .unwrap();
        let plan = resolve(&w, &Reader::declared(&[])).unwrap();
        let mut b = Vec::new();
        long(i64::MAX, &mut b);
        assert!(plan.decode(&b, &mut out).unwrap_err().contains("a block of"));
        assert!(plan.decode(&[0xff; 11], &mut out).unwrap_err().contains("longer than 64 bits"));
        let w = AvroSchema::parse(r#"{"type": "record", "name": "P", "fields": [{"name": "b", "type": "boolean"}]}"#)
            .unwrap();
        let plan = resolve(&w, &Reader::declared(&fields(&[("b", FieldType::Boolean)]))).unwrap();
        assert_eq!(plan.decode(&[2], &mut out).unwrap_err(), "2 is not a boolean");
    }

    #[test]
    fn schemas_are_parsed_with_names_namespaces_and_logical_types() {
        let s = AvroSchema::parse(V2).unwrap();
        assert_eq!(
            s.engine_fields().unwrap(),
            fields(&[
                ("card_id", FieldType::String),
                ("amount", FieldType::Double),
                ("ts", FieldType::Timestamp),
                ("merchant", FieldType::String),
                ("channel", FieldType::String),
            ])
        );
        for (bad, why) in [
            ("{", "not a schema"),
            (r#""nothing""#, "unknown type `nothing`"),
            (r#"{"type": "record", "name": "P"}"#, "record P has no `fields`"),
            (
                r#"{"type": "record", "name": "P", "fields": [{"name": "a", "type": "int"}, {"name": "a", "type": "int"}]}"#,
                "field `a` twice",
            ),
            (r#"[["int"]]"#, "a union directly inside a union"),
        ] {
            let e = AvroSchema::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            AvroSchema::parse(r#""long""#).unwrap().engine_fields().unwrap_err(),
            "the schema is long, not a record"
        );
        let mut deep = String::new();
        for _ in 0..100 {
            deep.push_str(r#"{"type": "array", "items": "#);
        }
        deep.push_str(r#""int""#);
        deep.push_str(&"}".repeat(100));
        assert!(AvroSchema::parse(&deep).unwrap_err().contains("deeper than"));
    }

    #[test]
    fn the_wire_formats_header_names_the_schema() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Ok(258));
        assert!(schema_id(&[0, 0, 1]).unwrap_err().contains("too short"));
        assert!(schema_id(b"{\"a\": 1}").unwrap_err().contains("first byte 0x7b"));
        assert_eq!(schema_id(&[]).unwrap_err(), "an empty record");
    }

    /// Schemas by id, as a registry would serve them.
    struct Schemas(HashMap<u32, String>, bool);

    impl SchemaSource for Schemas {
        fn schema(&self, id: u32) -> Result<Option<String>, String> {
            match self.1 {
                true => Err("connecting to 127.0.0.1:1: connection refused".into()),
                false => Ok(self.0.get(&id).cloned()),
            }
        }
    }

    fn framed(id: u32, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0];
        r.extend_from_slice(&id.to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn a_batch_of_mixed_schemas_decodes_and_bad_records_are_set_aside() {
        use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
        let reader = AvroSchema::parse(V2).unwrap().reader(&fields(&[
            ("card_id", FieldType::String),
            ("amount", FieldType::Double),
            ("ts", FieldType::Timestamp),
            ("merchant", FieldType::String),
        ]));
        let source = Schemas([(1, V1.to_string()), (2, V2.to_string()), (3, r#""long""#.to_string())].into(), false);
        let decoder = AvroDecoder::new(reader.unwrap(), Box::new(source));
        let mut recs = Records::default();
        let truncated = framed(1, &v1("x", 1.0, 1)[..4]);
        for (i, r) in [
            framed(1, &v1("a", 1.5, 10)),
            framed(2, &v2("b", 2.5, 20_000, Some("m"), 0)),
            b"{\"card_id\": \"json\"}".to_vec(),
            framed(9, &v1("c", 1.0, 1)),
            framed(3, &[2]),
            truncated,
            framed(1, &v1("d", 4.0, 40)),
        ]
        .iter()
        .enumerate()
        {
            recs.push(r, i as i64, 0);
        }
        let d = decoder.decode(&recs).unwrap();
        assert_eq!(d.rows.num_rows(), 3);
        assert_eq!(d.kept, Some(vec![0, 1, 6]));
        let col = |i: usize| d.rows.column(i).clone();
        let cards = col(0);
        let cards = cards.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(cards.iter().collect::<Vec<_>>(), [Some("a"), Some("b"), Some("d")]);
        let amounts = col(1);
        assert_eq!(amounts.as_any().downcast_ref::<Float64Array>().unwrap().values().to_vec(), [1.5, 2.5, 4.0]);
        let ts = col(2);
        assert_eq!(ts.as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec(), [10, 20, 40]);
        let merchants = col(3);
        assert_eq!(merchants.null_count(), 2);
        let reasons: Vec<(u32, &str)> = d.errors.iter().map(|(i, e)| (*i, e.as_str())).collect();
        assert_eq!(reasons[0].0, 2);
        assert!(reasons[0].1.contains("first byte 0x7b"), "{reasons:?}");
        assert_eq!(reasons[1], (3, "schema id 9 is not in the registry"));
        assert_eq!(
            reasons[2],
            (4, "schema id 3 cannot be read as the pipeline's fields: the schema is long, not a record")
        );
        assert_eq!(reasons[3].0, 5);
        assert!(reasons[3].1.contains("the record ends"), "{reasons:?}");
    }

    #[test]
    fn an_unreachable_registry_fails_the_batch_instead_of_rejecting_records() {
        let decoder = AvroDecoder::new(
            Reader::declared(&fields(&[("card_id", FieldType::String)])),
            Box::new(Schemas(HashMap::new(), true)),
        );
        let mut recs = Records::default();
        recs.push(&framed(1, &v1("a", 1.0, 1)), 0, 0);
        assert!(decoder.decode(&recs).unwrap_err().contains("connection refused"));
    }

    #[test]
    fn the_scratch_vector_is_lent_without_allocating() {
        let v: Vec<ValueRef<'static>> = Vec::with_capacity(8);
        let at = v.as_ptr() as usize;
        let lent: Vec<ValueRef<'_>> = recycle(v);
        assert_eq!((lent.as_ptr() as usize, lent.capacity()), (at, 8));
    }

    #[test]
    fn rows_encode_to_records_their_schema_reads_back() {
        use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
        let f = fields(&[
            ("card_id", FieldType::String),
            ("n", FieldType::Long),
            ("amount", FieldType::Double),
            ("ok", FieldType::Boolean),
            ("window_start", FieldType::Timestamp),
        ]);
        let text = schema_for("weir.out.per_card", &f).unwrap();
        let schema = AvroSchema::parse(&text).unwrap();
        assert_eq!(schema.engine_fields().unwrap(), f);
        let arrow = Arc::new(ArrowSchema::new(
            f.iter().map(|(n, t)| ArrowField::new(n, engine_type(*t), true)).collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(
            arrow,
            vec![
                Arc::new(StringArray::from(vec![Some("c-1"), None])),
                Arc::new(Int64Array::from(vec![Some(-3), Some(i64::MAX)])),
                Arc::new(Float64Array::from(vec![Some(2.5), None])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
                Arc::new(Int64Array::from(vec![Some(1_764_201_600_000), None])),
            ],
        )
        .unwrap();
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        encode_rows(7, &batch, &mut out, &mut ends).unwrap();
        let decoder =
            AvroDecoder::new(schema.reader(&f).unwrap(), Box::new(Schemas([(7, text.clone())].into(), false)));
        let mut recs = Records::default();
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            recs.push(&out[start..end], i as i64, 0);
            start = end;
        }
        let d = decoder.decode(&recs).unwrap();
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(d.rows, batch.with_schema(decoder.schema().clone()).unwrap());
        assert!(schema_for("out", &fields(&[("merchant-id", FieldType::String)]))
            .unwrap_err()
            .contains("not an Avro name"));
        assert!(schema_for("9out", &[]).is_err());
    }
}
