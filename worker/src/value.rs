//! Scalar values of the engine's four column types, and the byte encoding of key values used
//! as state keys (type-tagged, so that keys of different types never collide).

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;

/// One value of a row.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
pub enum Value {
    Null,
    Str(String),
    I64(i64),
    F64(f64),
    Bool(bool),
}

/// A value borrowed from where it was read (a record being decoded), to build columns from
/// without allocating.
#[derive(Clone, Debug, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Str(&'a str),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(v: &'a Value) -> ValueRef<'a> {
        match v {
            Value::Null => ValueRef::Null,
            Value::Str(s) => ValueRef::Str(s),
            Value::I64(x) => ValueRef::I64(*x),
            Value::F64(x) => ValueRef::F64(*x),
            Value::Bool(b) => ValueRef::Bool(*b),
        }
    }
}

/// A column borrowed with its concrete type, downcast once per batch.
#[derive(Clone, Copy)]
pub enum Col<'a> {
    Str(&'a StringArray),
    I64(&'a Int64Array),
    F64(&'a Float64Array),
    Bool(&'a BooleanArray),
}

impl<'a> Col<'a> {
    /// Borrows an array of one of the engine's types; `None` for any other type.
    pub fn new(a: &'a ArrayRef) -> Option<Col<'a>> {
        let any = a.as_any();
        Some(match a.data_type() {
            DataType::Utf8 => Col::Str(any.downcast_ref()?),
            DataType::Int64 => Col::I64(any.downcast_ref()?),
            DataType::Float64 => Col::F64(any.downcast_ref()?),
            DataType::Boolean => Col::Bool(any.downcast_ref()?),
            _ => return None,
        })
    }

    pub fn is_null(&self, row: usize) -> bool {
        match self {
            Col::Str(a) => a.is_null(row),
            Col::I64(a) => a.is_null(row),
            Col::F64(a) => a.is_null(row),
            Col::Bool(a) => a.is_null(row),
        }
    }

    pub fn value(&self, row: usize) -> Value {
        if self.is_null(row) {
            return Value::Null;
        }
        match self {
            Col::Str(a) => Value::Str(a.value(row).to_string()),
            Col::I64(a) => Value::I64(a.value(row)),
            Col::F64(a) => Value::F64(a.value(row)),
            Col::Bool(a) => Value::Bool(a.value(row)),
        }
    }

    /// Appends the key encoding of the value at `row` to `out` without allocating a Value.
    pub fn encode_key(&self, row: usize, out: &mut Vec<u8>) {
        if self.is_null(row) {
            out.push(TAG_NULL);
            return;
        }
        match self {
            Col::Str(a) => encode_str(a.value(row), out),
            Col::I64(a) => {
                out.push(TAG_I64);
                out.extend_from_slice(&a.value(row).to_be_bytes());
            }
            Col::F64(a) => {
                out.push(TAG_F64);
                out.extend_from_slice(&a.value(row).to_bits().to_be_bytes());
            }
            Col::Bool(a) => {
                out.push(TAG_BOOL);
                out.push(a.value(row) as u8);
            }
        }
    }
}

const TAG_NULL: u8 = 0;
const TAG_STR: u8 = 1;
const TAG_I64: u8 = 2;
const TAG_F64: u8 = 3;
const TAG_BOOL: u8 = 4;

fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(TAG_STR);
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Value {
    /// Appends this value's key encoding (the same bytes [`Col::encode_key`] writes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.push(TAG_NULL),
            Value::Str(s) => encode_str(s, out),
            Value::I64(v) => {
                out.push(TAG_I64);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::F64(v) => {
                out.push(TAG_F64);
                out.extend_from_slice(&v.to_bits().to_be_bytes());
            }
            Value::Bool(b) => {
                out.push(TAG_BOOL);
                out.push(*b as u8);
            }
        }
    }

    /// Reads one value from the front of `bytes`, returning it and the rest.
    pub fn decode(bytes: &[u8]) -> Option<(Value, &[u8])> {
        let (&tag, rest) = bytes.split_first()?;
        let take8 = |r: &[u8]| -> Option<([u8; 8], usize)> { Some((r.get(..8)?.try_into().ok()?, 8)) };
        Some(match tag {
            TAG_NULL => (Value::Null, rest),
            TAG_STR => {
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                let s = std::str::from_utf8(rest.get(4..4 + len)?).ok()?;
                (Value::Str(s.to_string()), &rest[4 + len..])
            }
            TAG_I64 => {
                let (b, n) = take8(rest)?;
                (Value::I64(i64::from_be_bytes(b)), &rest[n..])
            }
            TAG_F64 => {
                let (b, n) = take8(rest)?;
                (Value::F64(f64::from_bits(u64::from_be_bytes(b))), &rest[n..])
            }
            TAG_BOOL => (Value::Bool(*rest.first()? != 0), &rest[1..]),
            _ => return None,
        })
    }

    /// The bytes after the encoded value at the start of `bytes`, without decoding it.
    pub fn skip(bytes: &[u8]) -> Option<&[u8]> {
        let (&tag, rest) = bytes.split_first()?;
        let n = match tag {
            TAG_NULL => 0,
            TAG_STR => 4 + u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
            TAG_I64 | TAG_F64 => 8,
            TAG_BOOL => 1,
            _ => return None,
        };
        rest.get(n..)
    }

    /// Decodes a whole key (a sequence of values).
    pub fn decode_all(mut bytes: &[u8]) -> Option<Vec<Value>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (v, rest) = Value::decode(bytes)?;
            out.push(v);
            bytes = rest;
        }
        Some(out)
    }
}

/// Builds a column of one of the engine's types from values.
pub enum ColumnBuilder {
    Str(datafusion::arrow::array::StringBuilder),
    I64(datafusion::arrow::array::Int64Builder),
    F64(datafusion::arrow::array::Float64Builder),
    Bool(datafusion::arrow::array::BooleanBuilder),
}

impl ColumnBuilder {
    pub fn new(t: &DataType) -> ColumnBuilder {
        use datafusion::arrow::array::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
        match t {
            DataType::Utf8 => ColumnBuilder::Str(StringBuilder::new()),
            DataType::Float64 => ColumnBuilder::F64(Float64Builder::new()),
            DataType::Boolean => ColumnBuilder::Bool(BooleanBuilder::new()),
            _ => ColumnBuilder::I64(Int64Builder::new()),
        }
    }

    /// Appends `v`; a value of another type appends null.
    pub fn push(&mut self, v: &Value) {
        self.push_ref(&ValueRef::from(v))
    }

    /// [`ColumnBuilder::push`] of a borrowed value.
    pub fn push_ref(&mut self, v: &ValueRef) {
        match (self, v) {
            (ColumnBuilder::Str(b), ValueRef::Str(s)) => b.append_value(s),
            (ColumnBuilder::I64(b), ValueRef::I64(x)) => b.append_value(*x),
            (ColumnBuilder::F64(b), ValueRef::F64(x)) => b.append_value(*x),
            (ColumnBuilder::F64(b), ValueRef::I64(x)) => b.append_value(*x as f64),
            (ColumnBuilder::Bool(b), ValueRef::Bool(x)) => b.append_value(*x),
            (ColumnBuilder::Str(b), _) => b.append_null(),
            (ColumnBuilder::I64(b), _) => b.append_null(),
            (ColumnBuilder::F64(b), _) => b.append_null(),
            (ColumnBuilder::Bool(b), _) => b.append_null(),
        }
    }

    /// Appends the first value of a key encoding (as [`Col::encode_key`] writes it) without
    /// allocating; returns the rest of the key, or `None` when the bytes are not a key.
    pub fn push_key<'k>(&mut self, bytes: &'k [u8]) -> Option<&'k [u8]> {
        let (&tag, rest) = bytes.split_first()?;
        let take8 = |r: &[u8]| -> Option<[u8; 8]> { r.get(..8)?.try_into().ok() };
        match (tag, self) {
            (TAG_NULL, b) => {
                b.push(&Value::Null);
                Some(rest)
            }
            (TAG_STR, ColumnBuilder::Str(b)) => {
                let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                b.append_value(std::str::from_utf8(rest.get(4..4 + len)?).ok()?);
                Some(&rest[4 + len..])
            }
            (TAG_I64, ColumnBuilder::I64(b)) => {
                b.append_value(i64::from_be_bytes(take8(rest)?));
                Some(&rest[8..])
            }
            (TAG_F64, ColumnBuilder::F64(b)) => {
                b.append_value(f64::from_bits(u64::from_be_bytes(take8(rest)?)));
                Some(&rest[8..])
            }
            (TAG_BOOL, ColumnBuilder::Bool(b)) => {
                b.append_value(*rest.first()? != 0);
                Some(&rest[1..])
            }
            // A value of another type than the column's.
            (_, b) => {
                let (v, rest) = Value::decode(bytes)?;
                b.push(&v);
                Some(rest)
            }
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        use std::sync::Arc;
        match self {
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
            ColumnBuilder::I64(b) => Arc::new(b.finish()),
            ColumnBuilder::F64(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn key_encoding_round_trips_and_matches_columns() {
        let vals = vec![Value::Str("card-7".into()), Value::I64(-3), Value::F64(2.5), Value::Bool(true), Value::Null];
        let mut buf = Vec::new();
        for v in &vals {
            v.encode(&mut buf);
        }
        assert_eq!(Value::decode_all(&buf).unwrap(), vals);

        let arr: ArrayRef = Arc::new(StringArray::from(vec![Some("card-7"), None]));
        let col = Col::new(&arr).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        col.encode_key(0, &mut a);
        Value::Str("card-7".into()).encode(&mut b);
        assert_eq!(a, b);
        let mut n = Vec::new();
        col.encode_key(1, &mut n);
        assert_eq!(Value::decode_all(&n).unwrap(), vec![Value::Null]);
    }

    #[test]
    fn keys_append_to_builders_as_their_values() {
        let vals = [Value::Str("héllo".into()), Value::I64(-7), Value::Null, Value::F64(2.5), Value::Bool(true)];
        let mut key = Vec::new();
        vals.iter().for_each(|v| v.encode(&mut key));
        let types = [DataType::Utf8, DataType::Int64, DataType::Utf8, DataType::Float64, DataType::Boolean];
        let mut builders: Vec<ColumnBuilder> = types.iter().map(ColumnBuilder::new).collect();
        let mut rest = key.as_slice();
        for b in builders.iter_mut() {
            rest = b.push_key(rest).unwrap();
        }
        assert!(rest.is_empty());
        let cols: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
        let back: Vec<Value> = cols.iter().map(|c| Col::new(c).unwrap().value(0)).collect();
        assert_eq!(back, vals);
        assert!(ColumnBuilder::new(&DataType::Int64).push_key(&[TAG_STR, 0, 0]).is_none(), "truncated key");
    }

    #[test]
    fn different_types_never_collide() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        Value::I64(1).encode(&mut a);
        Value::F64(f64::from_bits(1)).encode(&mut b);
        assert_ne!(a, b);
        assert!(Value::decode_all(&[9, 1, 2]).is_none(), "an unknown tag is an error, not a value");
    }
}
