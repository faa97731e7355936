//! Join results checked against a separately written reference on randomized, out-of-order
//! inputs that interleave at random, with state committed, restarted and evicted along the way.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BinaryArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::state::{MemStore, RocksShared, RocksStore, StateStore, StateTx};

#[derive(Clone, Debug)]
struct Ev {
    key: String,
    /// Unique over both inputs.
    id: i64,
    ts: i64,
}

fn plan(kind: JoinKind, before: i64, after: i64) -> JoinPlan {
    plan_with(kind, before, after, None)
}

/// A join plan; with `window` (size, slide) a window join.
fn plan_with(kind: JoinKind, before: i64, after: i64, window: Option<(i64, i64)>) -> JoinPlan {
    let side = |v: &str| {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new(v, DataType::Int64, true)]))
    };
    let (left, right) = (side("lv"), side("rv"));
    let mut fields = vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("lv", DataType::Int64, true),
        Field::new("rv", DataType::Int64, true),
    ];
    if window.is_some() {
        fields.push(Field::new("window_start", DataType::Int64, true));
        fields.push(Field::new("window_end", DataType::Int64, true));
    }
    JoinPlan {
        kind,
        before,
        after,
        on: vec![(0, 0, DataType::Utf8)],
        out_schema: Arc::new(Schema::new(fields)),
        columns: vec![(false, 0), (false, 1), (true, 1)],
        window,
        left,
        right,
    }
}

/// An output row: key, left id, right id, event time, and a window join's window start.
type Out = (String, Option<i64>, Option<i64>, i64, Option<i64>);

/// The reference: which rows are late (each judged by its own input's watermark) and which
/// pairs and unmatched rows come out, written from the definition alone.
fn reference(inputs: &[Vec<Ev>; 2], kind: JoinKind, before: i64, after: i64, ooo: i64) -> (Vec<Out>, Vec<i64>) {
    reference_with(inputs, kind, before, after, ooo, None)
}

/// The starts of the windows (size, slide) that hold `t`, by brute force over a wide range.
fn windows_of(t: i64, (size, slide): (i64, i64)) -> Vec<i64> {
    let base = t - t.rem_euclid(slide);
    (0..size / slide).map(|i| base - i * slide).filter(|s| *s <= t && t < s + size).collect()
}

/// `reference`, or with `window` a window join's: a pair per window both rows are in, and (on
/// the outer sides of a tumbling join) an unmatched row in its window.
fn reference_with(
    inputs: &[Vec<Ev>; 2],
    kind: JoinKind,
    before: i64,
    after: i64,
    ooo: i64,
    window: Option<(i64, i64)>,
) -> (Vec<Out>, Vec<i64>) {
    let mut kept: [Vec<&Ev>; 2] = [Vec::new(), Vec::new()];
    let mut late = Vec::new();
    for (side, evs) in inputs.iter().enumerate() {
        let mut max_ts = i64::MIN;
        for e in evs {
            let wm = if max_ts == i64::MIN { i64::MIN } else { max_ts - ooo - 1 };
            if e.ts <= wm {
                late.push(e.id);
            } else {
                kept[side].push(e);
            }
            max_ts = max_ts.max(e.ts);
        }
    }
    let mut out = Vec::new();
    let mut matched: [Vec<bool>; 2] = [vec![false; kept[0].len()], vec![false; kept[1].len()]];
    for (i, l) in kept[0].iter().enumerate() {
        for (j, r) in kept[1].iter().enumerate() {
            if l.key != r.key {
                continue;
            }
            let shared: Vec<Option<i64>> = match window {
                Some(w) => {
                    let theirs = windows_of(r.ts, w);
                    windows_of(l.ts, w).into_iter().filter(|s| theirs.contains(s)).map(Some).collect()
                }
                None if r.ts >= l.ts - before && r.ts <= l.ts + after => vec![None],
                None => vec![],
            };
            for w in &shared {
                out.push((l.key.clone(), Some(l.id), Some(r.id), l.ts.max(r.ts), *w));
            }
            if !shared.is_empty() {
                matched[0][i] = true;
                matched[1][j] = true;
            }
        }
    }
    let outer = [matches!(kind, JoinKind::Left | JoinKind::Full), matches!(kind, JoinKind::Right | JoinKind::Full)];
    for side in 0..2 {
        if !outer[side] {
            continue;
        }
        for (_, e) in kept[side].iter().enumerate().filter(|(i, _)| !matched[side][*i]) {
            let (l, r) = if side == 0 { (Some(e.id), None) } else { (None, Some(e.id)) };
            out.push((e.key.clone(), l, r, e.ts, window.map(|w| windows_of(e.ts, w)[0])));
        }
    }
    out.sort();
    late.sort_unstable();
    (out, late)
}

fn batch(evs: &[Ev], wms: Vec<i64>) -> Batch {
    let schema =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("v", DataType::Int64, true)]));
    Batch {
        rows: RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(evs.iter().map(|e| e.key.as_str()))),
                Arc::new(Int64Array::from_iter_values(evs.iter().map(|e| e.id))),
            ],
        )
        .unwrap(),
        event_time: Int64Array::from_iter_values(evs.iter().map(|e| e.ts)),
        watermark: Int64Array::from(wms),
        raw: Some(BinaryArray::from_iter_values(evs.iter().map(|e| e.id.to_string()))),
    }
}

fn collect(b: Option<Batch>, out: &mut Vec<Out>) {
    let Some(b) = b else { return };
    let k = b.rows.column(0).as_any().downcast_ref::<StringArray>().unwrap().clone();
    let l = b.rows.column(1).as_any().downcast_ref::<Int64Array>().unwrap().clone();
    let r = b.rows.column(2).as_any().downcast_ref::<Int64Array>().unwrap().clone();
    for i in 0..b.num_rows() {
        let ts = b.event_time.value(i);
        assert!(ts > b.watermark.value(i), "a joined row is never late downstream: {ts} <= {}", b.watermark.value(i));
        let opt = |a: &Int64Array| a.is_valid(i).then(|| a.value(i));
        let window = (b.rows.num_columns() > 3).then(|| {
            let start = b.rows.column(3).as_any().downcast_ref::<Int64Array>().unwrap().value(i);
            let end = b.rows.column(4).as_any().downcast_ref::<Int64Array>().unwrap().value(i);
            assert!(start <= ts && ts < end, "a joined row's time is in its window");
            start
        });
        out.push((k.value(i).to_string(), opt(&l), opt(&r), ts, window));
    }
}

/// Runs the join over `inputs`, interleaving random-sized batches of each at random, the
/// watermark given after each batch being the least of the two inputs'.
#[allow(clippy::too_many_arguments)]
fn run(
    inputs: &[Vec<Ev>; 2],
    plan: &JoinPlan,
    ooo: i64,
    rng: &mut StdRng,
    store: Box<dyn StateStore>,
    max_cached: usize,
) -> (Vec<Out>, Vec<i64>) {
    let mut tx = StateTx::new(store);
    let new_op = || JoinOp::new("j", vec![0, 9], plan.clone(), max_cached);
    let mut op = new_op();
    let (mut out, mut late) = (Vec::new(), Vec::new());
    let mut at = [0usize; 2];
    let mut max_ts = [i64::MIN; 2];
    let wm_of = |m: i64| if m == i64::MIN { i64::MIN } else { m - ooo - 1 };
    while at[0] < inputs[0].len() || at[1] < inputs[1].len() {
        let side = match (at[0] < inputs[0].len(), at[1] < inputs[1].len()) {
            (true, true) => rng.random_range(0..2),
            (true, false) => 0,
            _ => 1,
        };
        let n = rng.random_range(1..=40).min(inputs[side].len() - at[side]);
        let chunk = &inputs[side][at[side]..at[side] + n];
        let mut wms = Vec::with_capacity(n);
        for e in chunk {
            wms.push(wm_of(max_ts[side]));
            max_ts[side] = max_ts[side].max(e.ts);
        }
        at[side] += n;
        let mut ctx = OpCtx { state: &mut tx, late: &mut late };
        collect(op.on_input(side as u8, batch(chunk, wms), &mut ctx).unwrap(), &mut out);
        // An input that is done no longer holds the watermark back.
        let wm = |s: usize| if at[s] == inputs[s].len() { i64::MAX } else { wm_of(max_ts[s]) };
        collect(op.on_watermark(wm(0).min(wm(1)), &mut ctx).unwrap(), &mut out);
        if rng.random_bool(0.2) {
            op.before_commit(&mut ctx).unwrap();
            tx.commit([]).unwrap();
            if rng.random_bool(0.3) {
                op = new_op();
            }
        }
    }
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    collect(op.on_watermark(i64::MAX, &mut ctx).unwrap(), &mut out);
    op.before_commit(&mut ctx).unwrap();
    tx.commit([]).unwrap();
    let left = tx.scan(&[0, 9, b'k'], &[0, 9, b'u'], 10).unwrap();
    assert!(left.is_empty(), "every kept row and timer is gone at the end: {left:?}");
    out.sort();
    let mut late: Vec<i64> = late.iter().map(|r| String::from_utf8(r.clone()).unwrap().parse().unwrap()).collect();
    late.sort_unstable();
    (out, late)
}

fn events(rng: &mut StdRng, first_id: i64, n: usize, keys: u32) -> Vec<Ev> {
    let jitter = rng.random_range(0..20_000);
    let step = rng.random_range(10..1_000);
    (0..n)
        .map(|i| {
            let mut ts = 1_700_000_000_000 + i as i64 * step + rng.random_range(-jitter..=jitter);
            if rng.random_bool(0.03) {
                ts -= rng.random_range(0..300_000); // very late
            }
            Ev { key: format!("k{}", rng.random_range(0..keys)), id: first_id + i as i64, ts }
        })
        .collect()
}

#[test]
fn interval_joins_match_the_reference() {
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let kind = [JoinKind::Inner, JoinKind::Left, JoinKind::Right, JoinKind::Full][seed as usize % 4];
        let (before, after) = (rng.random_range(0..4) * 5_000, rng.random_range(0..4) * 5_000);
        let ooo = rng.random_range(0..10) * 1_000;
        let keys = rng.random_range(1..12);
        let (nl, nr) = (rng.random_range(0..400), rng.random_range(0..400));
        let inputs = [events(&mut rng, 0, nl, keys), events(&mut rng, 1_000_000, nr, keys)];
        let p = plan(kind, before, after);
        let (want, want_late) = reference(&inputs, kind, before, after, ooo);
        let cached = rng.random_range(1..20);
        let (got, late) = run(&inputs, &p, ooo, &mut rng, Box::new(MemStore::default()), cached);
        assert_eq!(late, want_late, "late rows: seed {seed} {kind:?} before {before} after {after} ooo {ooo}");
        assert_eq!(got, want, "results: seed {seed} {kind:?} before {before} after {after} ooo {ooo}");
    }
}

#[test]
fn a_join_larger_than_its_cache_on_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let shared = RocksShared::new(64 << 10, 256 << 10);
    let mut rng = StdRng::seed_from_u64(7);
    let inputs = [events(&mut rng, 0, 5_000, 2_000), events(&mut rng, 1_000_000, 5_000, 2_000)];
    let p = plan(JoinKind::Full, 10_000, 30_000);
    let (want, want_late) = reference(&inputs, JoinKind::Full, 10_000, 30_000, 2_000);
    let store = Box::new(RocksStore::open(dir.path(), &shared).unwrap());
    let (got, late) = run(&inputs, &p, 2_000, &mut rng, store, 50);
    assert_eq!(late, want_late);
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

#[test]
fn outer_rows_carry_the_key_of_the_side_they_have() {
    let p = plan(JoinKind::Right, 0, 1_000);
    let mut op = JoinOp::new("j", vec![0, 9], p, 100);
    let mut tx = StateTx::new(Box::new(MemStore::default()));
    let mut late = Vec::new();
    let mut ctx = OpCtx { state: &mut tx, late: &mut late };
    let r = [Ev { key: "card-1".into(), id: 5, ts: 10_000 }];
    assert!(op.on_input(1, batch(&r, vec![i64::MIN]), &mut ctx).unwrap().is_none());
    let mut out = Vec::new();
    collect(op.on_watermark(i64::MAX, &mut ctx).unwrap(), &mut out);
    assert_eq!(out, [("card-1".to_string(), None, Some(5), 10_000, None)]);
}

#[test]
fn window_joins_match_the_reference() {
    let mut pairs = 0;
    for seed in 0..200u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let slide = rng.random_range(1..6) * 5_000;
        let tumbling = rng.random_bool(0.5);
        let size = if tumbling { slide } else { slide * rng.random_range(1..5) };
        // Outer window joins need tumbling windows.
        let kind = match tumbling {
            true => [JoinKind::Inner, JoinKind::Left, JoinKind::Right, JoinKind::Full][seed as usize % 4],
            false => JoinKind::Inner,
        };
        let ooo = rng.random_range(0..10) * 1_000;
        let keys = rng.random_range(1..12);
        let (nl, nr) = (rng.random_range(0..400), rng.random_range(0..400));
        let inputs = [events(&mut rng, 0, nl, keys), events(&mut rng, 1_000_000, nr, keys)];
        let p = plan_with(kind, 0, 0, Some((size, slide)));
        let (want, want_late) = reference_with(&inputs, kind, 0, 0, ooo, Some((size, slide)));
        let cached = rng.random_range(1..20);
        let (got, late) = run(&inputs, &p, ooo, &mut rng, Box::new(MemStore::default()), cached);
        let case = format!("seed {seed} {kind:?} size {size} slide {slide} ooo {ooo}");
        assert_eq!(late, want_late, "late rows: {case}");
        assert_eq!(got, want, "results: {case}");
        pairs += want.iter().filter(|o| o.1.is_some() && o.2.is_some()).count();
    }
    assert!(pairs > 10_000, "the cases have pairs to compare: {pairs}");
}
