//! Aggregate accumulators: updated row by row from pre-downcast columns, merged when session
//! windows merge, encoded compactly for RocksDB, and turned into output values.
//! Nulls are ignored as in SQL; `first`/`last` are by event time (ties: first arrival wins
//! for `first`, last arrival for `last`), so they do not depend on arrival order.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;
use weir_crds::AggregateFn;

use crate::value::{Col, Value};

/// The running state of one aggregate in one window.
#[derive(Clone, Debug, PartialEq)]
pub enum Acc {
    Count(i64),
    SumI(Option<i64>),
    SumF(Option<f64>),
    Avg { sum: f64, n: i64 },
    Min(Option<Value>),
    Max(Option<Value>),
    First(Option<(i64, Value)>),
    Last(Option<(i64, Value)>),
    Distinct(BTreeSet<Vec<u8>>),
}

impl Acc {
    /// An empty accumulator for `func` over an argument of type `arg` (`None` for count(*)).
    pub fn new(func: AggregateFn, arg: Option<&DataType>) -> Acc {
        match func {
            AggregateFn::Count => Acc::Count(0),
            AggregateFn::Sum if arg == Some(&DataType::Int64) => Acc::SumI(None),
            AggregateFn::Sum => Acc::SumF(None),
            AggregateFn::Avg => Acc::Avg { sum: 0.0, n: 0 },
            AggregateFn::Min => Acc::Min(None),
            AggregateFn::Max => Acc::Max(None),
            AggregateFn::First => Acc::First(None),
            AggregateFn::Last => Acc::Last(None),
            AggregateFn::CountDistinct => Acc::Distinct(BTreeSet::new()),
        }
    }

    /// The output type for `func` over `arg`.
    pub fn output_type(func: AggregateFn, arg: Option<&DataType>) -> DataType {
        match func {
            AggregateFn::Count | AggregateFn::CountDistinct => DataType::Int64,
            AggregateFn::Avg => DataType::Float64,
            AggregateFn::Sum if arg == Some(&DataType::Int64) => DataType::Int64,
            AggregateFn::Sum => DataType::Float64,
            _ => arg.cloned().unwrap_or(DataType::Null),
        }
    }

    /// Adds row `row` of `col` (absent for count(*)) with event time `ts`.
    pub fn update(&mut self, col: Option<&Col>, row: usize, ts: i64) {
        let Some(col) = col else {
            if let Acc::Count(n) = self {
                *n += 1;
            }
            return;
        };
        if col.is_null(row) {
            return;
        }
        match self {
            Acc::Count(n) => *n += 1,
            Acc::SumI(s) => {
                if let Col::I64(a) = col {
                    *s = Some(s.unwrap_or(0).wrapping_add(a.value(row)));
                }
            }
            Acc::SumF(s) => *s = Some(s.unwrap_or(0.0) + as_f64(col, row)),
            Acc::Avg { sum, n } => {
                *sum += as_f64(col, row);
                *n += 1;
            }
            Acc::Min(m) => {
                if m.as_ref().is_none_or(|cur| less(col, row, cur)) {
                    *m = Some(col.value(row));
                }
            }
            Acc::Max(m) => {
                if m.as_ref().is_none_or(|cur| greater(col, row, cur)) {
                    *m = Some(col.value(row));
                }
            }
            Acc::First(f) => {
                if f.as_ref().is_none_or(|(t, _)| ts < *t) {
                    *f = Some((ts, col.value(row)));
                }
            }
            Acc::Last(l) => {
                if l.as_ref().is_none_or(|(t, _)| ts >= *t) {
                    *l = Some((ts, col.value(row)));
                }
            }
            Acc::Distinct(set) => {
                let mut k = Vec::new();
                col.encode_key(row, &mut k);
                set.insert(k);
            }
        }
    }

    /// Folds `other` (a window merged into this one) into `self`.
    pub fn merge(&mut self, other: Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::SumI(a), Acc::SumI(b)) => *a = opt2(*a, b, |x, y| x.wrapping_add(y)),
            (Acc::SumF(a), Acc::SumF(b)) => *a = opt2(*a, b, |x, y| x + y),
            (Acc::Avg { sum, n }, Acc::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (Acc::Min(a), Acc::Min(b)) => {
                if let Some(b) = b {
                    if a.as_ref().is_none_or(|x| b < *x) {
                        *a = Some(b);
                    }
                }
            }
            (Acc::Max(a), Acc::Max(b)) => {
                if let Some(b) = b {
                    if a.as_ref().is_none_or(|x| b > *x) {
                        *a = Some(b);
                    }
                }
            }
            (Acc::First(a), Acc::First(b)) => {
                if let Some(b) = b {
                    if a.as_ref().is_none_or(|x| b.0 < x.0) {
                        *a = Some(b);
                    }
                }
            }
            (Acc::Last(a), Acc::Last(b)) => {
                if let Some(b) = b {
                    if a.as_ref().is_none_or(|x| b.0 >= x.0) {
                        *a = Some(b);
                    }
                }
            }
            (Acc::Distinct(a), Acc::Distinct(b)) => a.extend(b),
            (a, b) => debug_assert!(false, "merging different accumulators {a:?} and {b:?}"),
        }
    }

    /// The result value.
    pub fn result(&self) -> Value {
        match self {
            Acc::Count(n) => Value::I64(*n),
            Acc::SumI(s) => s.map_or(Value::Null, Value::I64),
            Acc::SumF(s) => s.map_or(Value::Null, Value::F64),
            Acc::Avg { sum, n } => {
                if *n == 0 {
                    Value::Null
                } else {
                    Value::F64(sum / *n as f64)
                }
            }
            Acc::Min(v) | Acc::Max(v) => v.clone().unwrap_or(Value::Null),
            Acc::First(v) | Acc::Last(v) => v.as_ref().map_or(Value::Null, |(_, v)| v.clone()),
            Acc::Distinct(s) => Value::I64(s.len() as i64),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let opt_val = |out: &mut Vec<u8>, v: &Option<Value>| v.as_ref().unwrap_or(&Value::Null).encode(out);
        match self {
            Acc::Count(n) => {
                out.push(0);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Acc::SumI(s) => {
                out.push(1);
                s.map_or(Value::Null, Value::I64).encode(out);
            }
            Acc::SumF(s) => {
                out.push(2);
                s.map_or(Value::Null, Value::F64).encode(out);
            }
            Acc::Avg { sum, n } => {
                out.push(3);
                out.extend_from_slice(&sum.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
            Acc::Min(v) => {
                out.push(4);
                opt_val(out, v);
            }
            Acc::Max(v) => {
                out.push(5);
                opt_val(out, v);
            }
            Acc::First(v) | Acc::Last(v) => {
                out.push(if matches!(self, Acc::First(_)) { 6 } else { 7 });
                match v {
                    None => out.push(0),
                    Some((t, v)) => {
                        out.push(1);
                        out.extend_from_slice(&t.to_le_bytes());
                        v.encode(out);
                    }
                }
            }
            Acc::Distinct(s) => {
                out.push(8);
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                for k in s {
                    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                    out.extend_from_slice(k);
                }
            }
        }
    }

    pub fn decode(b: &[u8]) -> Option<(Acc, &[u8])> {
        let (&tag, r) = b.split_first()?;
        let i64le = |r: &[u8]| Some(i64::from_le_bytes(r.get(..8)?.try_into().ok()?));
        let u32le = |r: &[u8]| Some(u32::from_le_bytes(r.get(..4)?.try_into().ok()?) as usize);
        Some(match tag {
            0 => (Acc::Count(i64le(r)?), &r[8..]),
            1 | 2 | 4 | 5 => {
                let (v, rest) = Value::decode(r)?;
                let acc = match (tag, v) {
                    (1, Value::I64(x)) => Acc::SumI(Some(x)),
                    (1, _) => Acc::SumI(None),
                    (2, Value::F64(x)) => Acc::SumF(Some(x)),
                    (2, _) => Acc::SumF(None),
                    (4, Value::Null) => Acc::Min(None),
                    (4, v) => Acc::Min(Some(v)),
                    (_, Value::Null) => Acc::Max(None),
                    (_, v) => Acc::Max(Some(v)),
                };
                (acc, rest)
            }
            3 => (Acc::Avg { sum: f64::from_bits(i64le(r)? as u64), n: i64le(r.get(8..)?)? }, &r[16..]),
            6 | 7 => {
                let (&some, r) = r.split_first()?;
                let (v, rest) = if some == 0 {
                    (None, r)
                } else {
                    let t = i64le(r)?;
                    let (v, rest) = Value::decode(&r[8..])?;
                    (Some((t, v)), rest)
                };
                (if tag == 6 { Acc::First(v) } else { Acc::Last(v) }, rest)
            }
            8 => {
                let n = u32le(r)?;
                let mut r = &r[4..];
                let mut set = BTreeSet::new();
                for _ in 0..n {
                    let len = u32le(r)?;
                    set.insert(r.get(4..4 + len)?.to_vec());
                    r = &r[4 + len..];
                }
                (Acc::Distinct(set), r)
            }
            _ => return None,
        })
    }
}

fn opt2<T: Copy>(a: Option<T>, b: Option<T>, f: impl Fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(f(x, y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn as_f64(col: &Col, row: usize) -> f64 {
    match col {
        Col::F64(a) => a.value(row),
        Col::I64(a) => a.value(row) as f64,
        _ => 0.0,
    }
}

fn less(col: &Col, row: usize, cur: &Value) -> bool {
    match (col, cur) {
        (Col::Str(a), Value::Str(s)) => a.value(row) < s.as_str(),
        (Col::I64(a), Value::I64(v)) => a.value(row) < *v,
        (Col::F64(a), Value::F64(v)) => a.value(row) < *v,
        (Col::Bool(a), Value::Bool(v)) => !a.value(row) & *v,
        _ => false,
    }
}

fn greater(col: &Col, row: usize, cur: &Value) -> bool {
    match (col, cur) {
        (Col::Str(a), Value::Str(s)) => a.value(row) > s.as_str(),
        (Col::I64(a), Value::I64(v)) => a.value(row) > *v,
        (Col::F64(a), Value::F64(v)) => a.value(row) > *v,
        (Col::Bool(a), Value::Bool(v)) => a.value(row) & !*v,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn update_merge_and_encode_round_trip() {
        let nums: ArrayRef = Arc::new(Float64Array::from(vec![Some(3.0), None, Some(1.0), Some(7.5)]));
        let strs: ArrayRef = Arc::new(StringArray::from(vec!["b", "a", "c", "a"]));
        let (n, s) = (Col::new(&nums).unwrap(), Col::new(&strs).unwrap());
        let f64t = Some(&DataType::Float64);
        let mut accs = vec![
            (Acc::new(AggregateFn::Count, None), None),
            (Acc::new(AggregateFn::Count, f64t), Some(n)),
            (Acc::new(AggregateFn::Sum, f64t), Some(n)),
            (Acc::new(AggregateFn::Avg, f64t), Some(n)),
            (Acc::new(AggregateFn::Min, f64t), Some(n)),
            (Acc::new(AggregateFn::Max, Some(&DataType::Utf8)), Some(s)),
            (Acc::new(AggregateFn::First, f64t), Some(n)),
            (Acc::new(AggregateFn::Last, Some(&DataType::Utf8)), Some(s)),
            (Acc::new(AggregateFn::CountDistinct, Some(&DataType::Utf8)), Some(s)),
        ];
        // Event times out of order: first/last follow event time, not arrival.
        for (row, ts) in [(0, 20), (1, 5), (2, 10), (3, 30)] {
            for (acc, col) in accs.iter_mut() {
                acc.update(col.as_ref(), row, ts);
            }
        }
        let results: Vec<Value> = accs.iter().map(|(a, _)| a.result()).collect();
        assert_eq!(
            results,
            vec![
                Value::I64(4),
                Value::I64(3),
                Value::F64(11.5),
                Value::F64(11.5 / 3.0),
                Value::F64(1.0),
                Value::Str("c".into()),
                Value::F64(1.0),
                Value::Str("a".into()),
                Value::I64(3),
            ]
        );
        for (acc, _) in &accs {
            let mut buf = Vec::new();
            acc.encode(&mut buf);
            let (back, rest) = Acc::decode(&buf).unwrap();
            assert!(rest.is_empty());
            assert_eq!(&back, acc);
            let mut merged = back.clone();
            merged.merge(Acc::new(AggregateFn::Count, None).clone_like(acc));
            assert_eq!(merged.result(), acc.result(), "merging an empty accumulator changes nothing");
        }
    }

    impl Acc {
        fn clone_like(&self, like: &Acc) -> Acc {
            match like {
                Acc::Count(_) => Acc::Count(0),
                Acc::SumI(_) => Acc::SumI(None),
                Acc::SumF(_) => Acc::SumF(None),
                Acc::Avg { .. } => Acc::Avg { sum: 0.0, n: 0 },
                Acc::Min(_) => Acc::Min(None),
                Acc::Max(_) => Acc::Max(None),
                Acc::First(_) => Acc::First(None),
                Acc::Last(_) => Acc::Last(None),
                Acc::Distinct(_) => Acc::Distinct(BTreeSet::new()),
            }
        }
    }
}
