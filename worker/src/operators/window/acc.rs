//! Aggregate accumulators: updated row by row from pre-downcast columns, merged when session
//! windows merge, encoded compactly for RocksDB, and turned into output values.
//! Nulls are ignored as in SQL; `first`/`last` are by event time (ties: first arrival wins
//! for `first`, last arrival for `last`), so they do not depend on arrival order.

use std::collections::BTreeSet;

use datafusion::arrow::datatypes::DataType;
use weir_crds::AggregateFn;

use crate::value::{Col, Value};

/// The running state of one aggregate in one window: 24 bytes, so that a key's windows stay
/// inline in its cache entry (the window operator is bound by memory latency over many keys).
/// Payloads that are large or rare are boxed.
#[derive(Clone, Debug, PartialEq)]
pub enum Acc {
    Count(i64),
    SumI(Option<i64>),
    SumF(Option<f64>),
    Avg { sum: f64, n: i64 },
    Min(Extreme),
    Max(Extreme),
    First(Option<Box<(i64, Value)>>),
    Last(Option<Box<(i64, Value)>>),
    Distinct(Box<BTreeSet<Vec<u8>>>),
}

/// The smallest or largest value so far (`None` before the first non-null one).
#[derive(Clone, Debug, PartialEq)]
pub enum Extreme {
    None,
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(Box<String>),
}

impl Extreme {
    fn of(col: &Col, row: usize) -> Extreme {
        match col {
            Col::Str(a) => Extreme::Str(Box::new(a.value(row).to_string())),
            Col::I64(a) => Extreme::I64(a.value(row)),
            Col::F64(a) => Extreme::F64(a.value(row)),
            Col::Bool(a) => Extreme::Bool(a.value(row)),
        }
    }

    pub(crate) fn from_value(v: Value) -> Extreme {
        match v {
            Value::Null => Extreme::None,
            Value::Str(s) => Extreme::Str(Box::new(s)),
            Value::I64(x) => Extreme::I64(x),
            Value::F64(x) => Extreme::F64(x),
            Value::Bool(x) => Extreme::Bool(x),
        }
    }

    fn value(&self) -> Value {
        match self {
            Extreme::None => Value::Null,
            Extreme::Str(s) => Value::Str(String::clone(s)),
            Extreme::I64(x) => Value::I64(*x),
            Extreme::F64(x) => Value::F64(*x),
            Extreme::Bool(x) => Value::Bool(*x),
        }
    }

    /// How row `row` of `col` compares with this value; `None` when there is none yet (or the
    /// types differ, which a checked pipeline never has).
    fn cmp_row(&self, col: &Col, row: usize) -> Option<std::cmp::Ordering> {
        match (col, self) {
            (Col::Str(a), Extreme::Str(s)) => Some(a.value(row).cmp(s.as_str())),
            (Col::I64(a), Extreme::I64(v)) => Some(a.value(row).cmp(v)),
            (Col::F64(a), Extreme::F64(v)) => a.value(row).partial_cmp(v),
            (Col::Bool(a), Extreme::Bool(v)) => Some(a.value(row).cmp(v)),
            _ => None,
        }
    }

    /// Keeps `other` if it is the better one (`want`: Less for min, Greater for max).
    fn keep(&mut self, other: Extreme, want: std::cmp::Ordering) {
        if matches!(other, Extreme::None) {
            return;
        }
        let better = match (&other, &*self) {
            (_, Extreme::None) => true,
            (Extreme::Str(a), Extreme::Str(b)) => a.cmp(b) == want,
            (Extreme::I64(a), Extreme::I64(b)) => a.cmp(b) == want,
            (Extreme::F64(a), Extreme::F64(b)) => a.partial_cmp(b) == Some(want),
            (Extreme::Bool(a), Extreme::Bool(b)) => a.cmp(b) == want,
            _ => false,
        };
        if better {
            *self = other;
        }
    }
}

impl Acc {
    /// An empty accumulator for `func` over an argument of type `arg` (`None` for count(*)).
    pub fn new(func: AggregateFn, arg: Option<&DataType>) -> Acc {
        match func {
            AggregateFn::Count => Acc::Count(0),
            AggregateFn::Sum if arg == Some(&DataType::Int64) => Acc::SumI(None),
            AggregateFn::Sum => Acc::SumF(None),
            AggregateFn::Avg => Acc::Avg { sum: 0.0, n: 0 },
            AggregateFn::Min => Acc::Min(Extreme::None),
            AggregateFn::Max => Acc::Max(Extreme::None),
            AggregateFn::First => Acc::First(None),
            AggregateFn::Last => Acc::Last(None),
            AggregateFn::CountDistinct => Acc::Distinct(Box::default()),
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
                if matches!(m, Extreme::None) || m.cmp_row(col, row) == Some(std::cmp::Ordering::Less) {
                    *m = Extreme::of(col, row);
                }
            }
            Acc::Max(m) => {
                if matches!(m, Extreme::None) || m.cmp_row(col, row) == Some(std::cmp::Ordering::Greater) {
                    *m = Extreme::of(col, row);
                }
            }
            Acc::First(f) => match f {
                Some(b) if ts >= b.0 => {}
                Some(b) => **b = (ts, col.value(row)),
                None => *f = Some(Box::new((ts, col.value(row)))),
            },
            Acc::Last(l) => match l {
                Some(b) if ts < b.0 => {}
                Some(b) => **b = (ts, col.value(row)),
                None => *l = Some(Box::new((ts, col.value(row)))),
            },
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
            (Acc::Min(a), Acc::Min(b)) => a.keep(b, std::cmp::Ordering::Less),
            (Acc::Max(a), Acc::Max(b)) => a.keep(b, std::cmp::Ordering::Greater),
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
            (Acc::Distinct(a), Acc::Distinct(b)) => a.extend(*b),
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
            Acc::Min(v) | Acc::Max(v) => v.value(),
            Acc::First(v) | Acc::Last(v) => v.as_ref().map_or(Value::Null, |b| b.1.clone()),
            Acc::Distinct(s) => Value::I64(s.len() as i64),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
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
            Acc::Min(v) | Acc::Max(v) => {
                out.push(if matches!(self, Acc::Min(_)) { 4 } else { 5 });
                v.value().encode(out);
            }
            Acc::First(v) | Acc::Last(v) => {
                out.push(if matches!(self, Acc::First(_)) { 6 } else { 7 });
                match v {
                    None => out.push(0),
                    Some(b) => {
                        out.push(1);
                        out.extend_from_slice(&b.0.to_le_bytes());
                        b.1.encode(out);
                    }
                }
            }
            Acc::Distinct(s) => {
                out.push(8);
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                for k in s.iter() {
                    out.extend_from_slice(&(k.len() as u32).to_le_bytes());
                    out.extend_from_slice(k);
                }
            }
        }
    }

    /// The bytes after the encoded accumulator at the start of `b`, without decoding it (no
    /// allocation: rebuilding the timer index reads only the windows' bounds).
    pub fn skip(b: &[u8]) -> Option<&[u8]> {
        let (&tag, r) = b.split_first()?;
        let u32le = |r: &[u8]| Some(u32::from_le_bytes(r.get(..4)?.try_into().ok()?) as usize);
        match tag {
            0 => r.get(8..),
            1 | 2 | 4 | 5 => Value::skip(r),
            3 => r.get(16..),
            6 | 7 => {
                let (&some, r) = r.split_first()?;
                if some == 0 {
                    Some(r)
                } else {
                    Value::skip(r.get(8..)?)
                }
            }
            8 => {
                let n = u32le(r)?;
                let mut r = r.get(4..)?;
                for _ in 0..n {
                    let len = u32le(r)?;
                    r = r.get(4 + len..)?;
                }
                Some(r)
            }
            _ => {
                // Whatever else there is, decoded (and dropped) to find its end.
                Acc::decode(b).map(|(_, rest)| rest)
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
                    (4, v) => Acc::Min(Extreme::from_value(v)),
                    (_, v) => Acc::Max(Extreme::from_value(v)),
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
                    (Some(Box::new((t, v))), rest)
                };
                (if tag == 6 { Acc::First(v) } else { Acc::Last(v) }, rest)
            }
            8 => {
                let n = u32le(r)?;
                let mut r = &r[4..];
                let mut set = Box::<BTreeSet<Vec<u8>>>::default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn accumulators_stay_small() {
        assert!(std::mem::size_of::<Acc>() <= 24, "{} bytes", std::mem::size_of::<Acc>());
    }

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
                Acc::Min(_) => Acc::Min(Extreme::None),
                Acc::Max(_) => Acc::Max(Extreme::None),
                Acc::First(_) => Acc::First(None),
                Acc::Last(_) => Acc::Last(None),
                Acc::Distinct(_) => Acc::Distinct(Box::default()),
            }
        }
    }
}
